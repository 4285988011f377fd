//! `config.json` text → [`LlmConfig`]: typed reads with errors that name the key, the
//! family defaults Hugging Face applies to absent keys, and validation.
//!
//! Required keys: `architectures` or `model_type`, `hidden_size`, `intermediate_size`,
//! `num_hidden_layers`, `num_attention_heads`, `vocab_size`, `max_position_embeddings`, and
//! for Mixtral `num_local_experts` and `num_experts_per_tok`. Absent optional keys take the
//! defaults of the family's `transformers` config class:
//!
//! | key | default |
//! |---|---|
//! | `num_key_value_heads` | `num_attention_heads` (multi-head attention) |
//! | `head_dim` | 128 for Qwen3, otherwise `hidden_size / num_attention_heads` |
//! | `rms_norm_eps` | 1e-5 for Mixtral, otherwise 1e-6 |
//! | `rope_theta` | 1e6 for Mixtral, otherwise 1e4 |
//! | `tie_word_embeddings`, `attention_bias`, `mlp_bias`, `use_sliding_window` | false |
//! | `sliding_window` | 4096 for Mistral and Qwen (when `use_sliding_window`), none for Mixtral |
//! | `max_window_layers` | 28 (Qwen: layers at index ≥ this use the window) |
//!
//! A JSON `null` counts as absent for optional keys, except `sliding_window`, where null
//! means "no window" as in `transformers`. Keys that only matter to training
//! (`initializer_range`, `router_aux_loss_coef`, dropout), to tokenisation
//! (`bos_token_id`, ...) or to reproducing a TP-sharded pretraining (`pretraining_tp`) are
//! ignored. Keys that would change the math in ways not modelled are errors:
//! `quantization_config`, `hidden_act` other than `silu`, `partial_rotary_factor` ≠ 1,
//! `use_mrope`, logit soft-capping, unknown `rope_scaling` types or fields.

use serde_json::{Map, Value};
use trainyard_arch::DType;

use super::accounting::{param_parts, Shard};
use super::config::{AttentionBias, Family, LlmConfig, Moe, RopeScaling, SlidingWindow};
use super::error::{ConfigError, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES};

type Result<T> = std::result::Result<T, ConfigError>;

/// The largest parameter count accepted. It keeps every `u64` count and byte total
/// (parameters × 4 bytes × a few) far from overflow, and is ~2000× Llama-3.1-405B.
pub const MAX_PARAMS: u64 = 1 << 50;

/// The rope types [`RopeScaling`] models, as error messages list them.
const SUPPORTED_ROPE_TYPES: &str = "default, linear, dynamic, yarn, llama3";

/// Parses and validates one `config.json`.
pub(super) fn parse(text: &str, file: &str) -> Result<LlmConfig> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ConfigError::Json { file: file.to_string(), message: e.to_string() })?;
    let Some(map) = value.as_object() else {
        return Err(ConfigError::NotAnObject {
            file: file.to_string(),
            key: "(top level)".to_string(),
            found: describe(&value),
        });
    };
    let top = Obj { file, map, prefix: String::new() };
    let family = family(&top)?;
    reject_unsupported(&top)?;

    let hidden_size = top.req_size("hidden_size")?;
    let intermediate_size = top.req_size("intermediate_size")?;
    let num_layers = top.req_size("num_hidden_layers")?;
    let num_heads = top.req_size("num_attention_heads")?;
    let vocab_size = top.req_size("vocab_size")?;
    let max_position_embeddings = top.req_u64("max_position_embeddings")?;
    if max_position_embeddings == 0 {
        return Err(top.invalid("max_position_embeddings", "must be greater than 0"));
    }
    let num_kv_heads = match top.opt_u32("num_key_value_heads")? {
        Some(n) => top.nonzero("num_key_value_heads", n)?,
        None => num_heads,
    };
    if num_kv_heads > num_heads || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(top.inconsistent(
            "num_key_value_heads",
            format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"),
        ));
    }
    let (head_dim, head_dim_explicit) = match top.opt_u32("head_dim")? {
        Some(d) => (top.nonzero("head_dim", d)?, true),
        None if family == Family::Qwen3 => (128, true),
        None if !hidden_size.is_multiple_of(num_heads) => {
            return Err(top.inconsistent(
                "num_attention_heads",
                format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads} and there is no \
                     head_dim"
                ),
            ))
        }
        None => (hidden_size / num_heads, false),
    };
    if !head_dim.is_multiple_of(2) {
        return Err(top.invalid("head_dim", format!("{head_dim} must be even: RoPE rotates pairs of dimensions")));
    }

    let eps_default = if family == Family::Mixtral { 1e-5 } else { 1e-6 };
    let rms_norm_eps = top.opt_f64("rms_norm_eps")?.unwrap_or(eps_default);
    top.positive("rms_norm_eps", rms_norm_eps)?;
    let (rope_theta, rope_scaling) = rope(&top, family)?;
    let tie_word_embeddings = top.opt_bool("tie_word_embeddings")?.unwrap_or(false);

    let moe = if family == Family::Mixtral {
        let num_experts = top.req_size("num_local_experts")?;
        let experts_per_token = top.req_size("num_experts_per_tok")?;
        if experts_per_token > num_experts {
            return Err(top.inconsistent(
                "num_experts_per_tok",
                format!("{experts_per_token} experts per token but only {num_experts} num_local_experts"),
            ));
        }
        Some(Moe { num_experts, experts_per_token })
    } else {
        None
    };
    let sliding_window = sliding_window(&top, family, num_layers)?;
    let attention_bias = match family {
        Family::Llama | Family::Qwen3 => {
            let b = top.opt_bool("attention_bias")?.unwrap_or(false);
            AttentionBias { qkv: b, o: b }
        }
        Family::Qwen2 => AttentionBias { qkv: true, o: false },
        Family::Mistral | Family::Mixtral => AttentionBias::default(),
    };
    let mlp_bias = family == Family::Llama && top.opt_bool("mlp_bias")?.unwrap_or(false);
    let torch_dtype = match top.opt_str("torch_dtype")? {
        Some(name) => dtype(&top, "torch_dtype", name)?,
        None => match top.opt_str("dtype")? {
            Some(name) => dtype(&top, "dtype", name)?,
            None => None,
        },
    };

    let cfg = LlmConfig {
        source: file.to_string(),
        family,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        head_dim_explicit,
        vocab_size,
        max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings,
        moe,
        sliding_window,
        qk_norm: family == Family::Qwen3,
        attention_bias,
        mlp_bias,
        torch_dtype,
    };
    let experts = u64::from(moe.map_or(1, |m| m.num_experts));
    let params = param_parts(&cfg, Shard::full(&cfg), experts).total();
    if params > MAX_PARAMS {
        return Err(top.invalid(
            "num_hidden_layers",
            format!("the sizes describe {params} parameters, more than the {MAX_PARAMS} this planner accepts"),
        ));
    }
    Ok(cfg)
}

/// The family from `architectures` and `model_type`, which must agree when both are present.
fn family(top: &Obj<'_>) -> Result<Family> {
    let mut from_arch = None;
    match top.present("architectures") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Some(name) = item.as_str() else {
                    return Err(top.wrong(&format!("architectures[{i}]"), "a string", item));
                };
                let Some(f) = Family::from_architecture(name) else {
                    return Err(ConfigError::UnsupportedArchitecture {
                        file: top.file.to_string(),
                        found: clip(name),
                        supported: SUPPORTED_ARCHITECTURES,
                    });
                };
                if from_arch.is_some_and(|prev| prev != f) {
                    return Err(top.inconsistent("architectures", "lists architectures of two families".to_string()));
                }
                from_arch = Some(f);
            }
        }
        Some(v) => return Err(top.wrong("architectures", "an array of strings", v)),
    }
    let from_type = match top.opt_str("model_type")? {
        None => None,
        Some(t) => Some(Family::from_model_type(t).ok_or_else(|| ConfigError::UnsupportedModelType {
            file: top.file.to_string(),
            found: clip(t),
            supported: SUPPORTED_MODEL_TYPES,
        })?),
    };
    match (from_arch, from_type) {
        (Some(a), Some(t)) if a != t => Err(top.inconsistent(
            "model_type",
            format!("`architectures` says {} but model_type is `{}`", a.architecture(), t.model_type()),
        )),
        (Some(f), _) | (None, Some(f)) => Ok(f),
        (None, None) => Err(top.missing("architectures")),
    }
}

/// Keys that change the math in ways the accounting does not model.
fn reject_unsupported(top: &Obj<'_>) -> Result<()> {
    if let Some(v) = top.present("quantization_config") {
        return Err(top.unsupported(
            "quantization_config",
            v,
            "pre-quantized checkpoints are not modelled; plan with an explicit weight dtype instead",
        ));
    }
    if let Some(act) = top.opt_str("hidden_act")? {
        if act != "silu" && act != "swish" {
            return Err(top.unsupported(
                "hidden_act",
                &Value::String(act.to_string()),
                "the MLP is modelled as SwiGLU (`silu`)",
            ));
        }
    }
    if let Some(f) = top.opt_f64("partial_rotary_factor")? {
        if f != 1.0 {
            return Err(top.unsupported("partial_rotary_factor", &Value::from(f), "RoPE on part of a head"));
        }
    }
    if top.opt_bool("use_mrope")? == Some(true) {
        return Err(top.unsupported("use_mrope", &Value::Bool(true), "multimodal RoPE (Qwen2-VL) is not modelled"));
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(v) = top.present(key) {
            return Err(top.unsupported(key, v, "logit soft-capping is not modelled"));
        }
    }
    Ok(())
}

/// `rope_theta` and the scaling, from `rope_parameters` (newer files) or
/// `rope_theta` + `rope_scaling`.
fn rope(top: &Obj<'_>, family: Family) -> Result<(f64, Option<RopeScaling>)> {
    let theta_default = if family == Family::Mixtral { 1e6 } else { 1e4 };
    let (theta, scaling) = if let Some(v) = top.present("rope_parameters") {
        let params = top.child("rope_parameters", v)?;
        if let Some(f) = params.opt_f64("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(params.unsupported("partial_rotary_factor", &Value::from(f), "RoPE on part of a head"));
            }
        }
        let theta = match params.opt_f64("rope_theta")? {
            Some(t) => {
                params.positive("rope_theta", t)?;
                t
            }
            None => top.opt_f64("rope_theta")?.unwrap_or(theta_default),
        };
        (theta, rope_scaling(&params, &["rope_theta", "partial_rotary_factor"])?)
    } else {
        let scaling = match top.present("rope_scaling") {
            None => None,
            Some(v) => rope_scaling(&top.child("rope_scaling", v)?, &[])?,
        };
        (top.opt_f64("rope_theta")?.unwrap_or(theta_default), scaling)
    };
    top.positive("rope_theta", theta)?;
    Ok((theta, scaling))
}

/// One `rope_scaling` object; `extra` lists further keys allowed beside the type's own.
fn rope_scaling(obj: &Obj<'_>, extra: &[&str]) -> Result<Option<RopeScaling>> {
    let rope_type = match (obj.opt_str("rope_type")?, obj.opt_str("type")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(obj.inconsistent("type", format!("`rope_type` is `{a}` but `type` is `{b}`")));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(obj.missing("rope_type")),
    };
    let own: &[&str] = match rope_type {
        "default" => return Ok(None),
        "linear" => &["factor"],
        "dynamic" => &["factor", "original_max_position_embeddings"],
        "yarn" => &["factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor"],
        "llama3" => &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
        other => {
            let key = if obj.map.contains_key("rope_type") { "rope_type" } else { "type" };
            return Err(obj.unsupported(
                key,
                &Value::String(other.to_string()),
                &format!("supported rope types: {SUPPORTED_ROPE_TYPES}"),
            ));
        }
    };
    for (key, v) in obj.map {
        let known = own.contains(&key.as_str()) || extra.contains(&key.as_str()) || key == "rope_type" || key == "type";
        if !known && !v.is_null() {
            return Err(obj.unsupported(key, v, &format!("not a parameter of rope_type `{rope_type}`")));
        }
    }
    let factor = obj.req_f64("factor")?;
    obj.positive("factor", factor)?;
    let original = |obj: &Obj<'_>| -> Result<Option<u64>> {
        match obj.opt_u64("original_max_position_embeddings")? {
            Some(0) => Err(obj.invalid("original_max_position_embeddings", "must be greater than 0")),
            o => Ok(o),
        }
    };
    Ok(Some(match rope_type {
        "linear" => RopeScaling::Linear { factor },
        "dynamic" => RopeScaling::Dynamic { factor, original_max_position_embeddings: original(obj)? },
        "yarn" => {
            let beta_fast = obj.opt_f64("beta_fast")?.unwrap_or(32.0);
            let beta_slow = obj.opt_f64("beta_slow")?.unwrap_or(1.0);
            obj.positive("beta_fast", beta_fast)?;
            obj.positive("beta_slow", beta_slow)?;
            if beta_fast <= beta_slow {
                return Err(
                    obj.inconsistent("beta_slow", format!("beta_fast {beta_fast} must exceed beta_slow {beta_slow}"))
                );
            }
            let attention_factor = obj.opt_f64("attention_factor")?;
            if let Some(a) = attention_factor {
                obj.positive("attention_factor", a)?;
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original(obj)?,
                beta_fast,
                beta_slow,
                attention_factor,
            }
        }
        _ => {
            let low_freq_factor = obj.req_f64("low_freq_factor")?;
            let high_freq_factor = obj.req_f64("high_freq_factor")?;
            obj.positive("low_freq_factor", low_freq_factor)?;
            if high_freq_factor <= low_freq_factor {
                return Err(obj.inconsistent(
                    "high_freq_factor",
                    format!("high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"),
                ));
            }
            let Some(original_max_position_embeddings) = original(obj)? else {
                return Err(obj.missing("original_max_position_embeddings"));
            };
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }
        }
    }))
}

/// Sliding-window attention from `layer_types` when present, else the family's keys.
fn sliding_window(top: &Obj<'_>, family: Family, num_layers: u32) -> Result<Option<SlidingWindow>> {
    // `sliding_window: null` means "no window"; an absent key takes the family default.
    let window = |default: Option<u64>| -> Result<Option<u64>> {
        let size = match top.map.get("sliding_window") {
            None => default,
            Some(Value::Null) => None,
            Some(v) => Some(top.u64_of("sliding_window", v)?),
        };
        match size {
            Some(0) => Err(top.invalid("sliding_window", "must be greater than 0 (null means no window)")),
            s => Ok(s),
        }
    };
    if let Some(v) = top.present("layer_types") {
        let Some(items) = v.as_array() else {
            return Err(top.wrong("layer_types", "an array of strings", v));
        };
        if items.len() != num_layers as usize {
            return Err(top.inconsistent(
                "layer_types",
                format!("{} entries but num_hidden_layers is {num_layers}", items.len()),
            ));
        }
        let mut sliding = 0u32;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some("full_attention") => {}
                Some("sliding_attention") => sliding += 1,
                Some(_) => {
                    return Err(top.unsupported(
                        &format!("layer_types[{i}]"),
                        item,
                        "layer types are full_attention or sliding_attention",
                    ))
                }
                None => return Err(top.wrong(&format!("layer_types[{i}]"), "a string", item)),
            }
        }
        if sliding == 0 {
            return Ok(None);
        }
        let Some(size) = window(None)? else {
            return Err(top.inconsistent(
                "sliding_window",
                "layer_types has sliding_attention layers but sliding_window is absent or null".to_string(),
            ));
        };
        return Ok(Some(SlidingWindow { size, layers: sliding }));
    }
    let (size, layers) = match family {
        Family::Llama => return Ok(None),
        Family::Mistral => (window(Some(4096))?, num_layers),
        Family::Mixtral => (window(None)?, num_layers),
        Family::Qwen2 | Family::Qwen3 => {
            if !top.opt_bool("use_sliding_window")?.unwrap_or(false) {
                return Ok(None);
            }
            let full_layers = top.opt_u32("max_window_layers")?.unwrap_or(28);
            (window(Some(4096))?, num_layers.saturating_sub(full_layers))
        }
    };
    Ok(size.filter(|_| layers > 0).map(|size| SlidingWindow { size, layers }))
}

/// A `torch_dtype` string; `auto` means unknown.
fn dtype(top: &Obj<'_>, key: &str, name: &str) -> Result<Option<DType>> {
    Ok(Some(match name {
        "auto" => return Ok(None),
        "bfloat16" => DType::Bf16,
        "float16" | "half" => DType::F16,
        "float32" | "float" => DType::F32,
        "float8_e4m3fn" => DType::F8E4M3,
        "float8_e5m2" => DType::F8E5M2,
        _ => {
            return Err(top.unsupported(
                key,
                &Value::String(name.to_string()),
                "known: bfloat16, float16, float32, float8_e4m3fn, float8_e5m2, auto",
            ))
        }
    }))
}

/// A JSON object being read, with the key prefix errors use (`rope_scaling.`).
struct Obj<'a> {
    file: &'a str,
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Obj<'a> {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value of `key`, `None` when absent or null.
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn child(&self, key: &str, v: &'a Value) -> Result<Obj<'a>> {
        match v.as_object() {
            Some(map) => Ok(Obj { file: self.file, map, prefix: format!("{}.", self.key(key)) }),
            None => {
                Err(ConfigError::NotAnObject { file: self.file.to_string(), key: self.key(key), found: describe(v) })
            }
        }
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey { file: self.file.to_string(), key: self.key(key) }
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> ConfigError {
        ConfigError::WrongType { file: self.file.to_string(), key: self.key(key), expected, found: describe(v) }
    }

    fn invalid(&self, key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_string(), key: self.key(key), why: why.into() }
    }

    fn inconsistent(&self, key: &str, why: String) -> ConfigError {
        ConfigError::Inconsistent { file: self.file.to_string(), key: self.key(key), why }
    }

    fn unsupported(&self, key: &str, v: &Value, why: &str) -> ConfigError {
        let value = clip(&serde_json::to_string(v).unwrap_or_default());
        ConfigError::Unsupported { file: self.file.to_string(), key: self.key(key), value, why: why.to_string() }
    }

    fn u64_of(&self, key: &str, v: &Value) -> Result<u64> {
        v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    fn req_u64(&self, key: &str) -> Result<u64> {
        match self.map.get(key) {
            None => Err(self.missing(key)),
            Some(v) => self.u64_of(key, v),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.present(key).map(|v| self.u64_of(key, v)).transpose()
    }

    fn narrow(&self, key: &str, v: u64) -> Result<u32> {
        u32::try_from(v).map_err(|_| self.invalid(key, format!("{v} does not fit in 32 bits")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.opt_u64(key)?.map(|v| self.narrow(key, v)).transpose()
    }

    fn nonzero(&self, key: &str, v: u32) -> Result<u32> {
        if v == 0 {
            Err(self.invalid(key, "must be greater than 0"))
        } else {
            Ok(v)
        }
    }

    /// A required size: a non-zero integer that fits in 32 bits.
    fn req_size(&self, key: &str) -> Result<u32> {
        let v = self.narrow(key, self.req_u64(key)?)?;
        self.nonzero(key, v)
    }

    fn f64_of(&self, key: &str, v: &Value) -> Result<f64> {
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    fn req_f64(&self, key: &str) -> Result<f64> {
        match self.map.get(key) {
            None => Err(self.missing(key)),
            Some(v) => self.f64_of(key, v),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.present(key).map(|v| self.f64_of(key, v)).transpose()
    }

    fn positive(&self, key: &str, v: f64) -> Result<()> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(self.invalid(key, format!("{v} must be a positive number")))
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.present(key).map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "true or false", v))).transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.present(key).map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v))).transpose()
    }
}

/// A short description of a JSON value for "found ..." in messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {:?}", clip(s)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_string(),
    }
}

/// At most 60 characters of user text in a message.
fn clip(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        s.chars().take(MAX).chain("…".chars()).collect()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
