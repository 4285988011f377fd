//! Hand-written configs for each error and for the families the bundled files do not cover.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const LLAMA_8B: &str = include_str!("../../../../models/llama-3.1-8b/config.json");
const MIXTRAL: &str = include_str!("../../../../models/mixtral-8x7b-v0.1/config.json");
const QWEN25: &str = include_str!("../../../../models/qwen2.5-7b/config.json");

/// `base` with `edits` applied: a null value in `edits` removes the key (write
/// `Value::Null` through `set_null` to keep an explicit null).
fn edited(base: &str, edits: Value) -> String {
    let mut v: Value = match serde_json::from_str(base) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    if let (Some(obj), Some(edits)) = (v.as_object_mut(), edits.as_object()) {
        for (k, e) in edits {
            if e.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), e.clone());
            }
        }
    }
    v.to_string()
}

fn parse_ok(text: &str) -> LlmConfig {
    match parse(text, "test.json") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text, "test.json") {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

/// The error's message, checked to name the file and the key.
fn message_naming(e: &ConfigError, key: &str) -> String {
    let msg = e.to_string();
    assert!(msg.starts_with("test.json: "), "{msg}");
    assert!(msg.contains(&format!("`{key}`")), "no `{key}` in: {msg}");
    msg
}

#[test]
fn not_json_or_not_an_object() {
    assert!(matches!(parse_err("{\"hidden_size\": 4096,"), ConfigError::Json { .. }));
    let e = parse_err("[1, 2]");
    assert!(matches!(e, ConfigError::NotAnObject { .. }));
    assert!(e.to_string().contains("an array of 2 items"), "{e}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let e = parse_err(&edited(LLAMA_8B, json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})));
    assert_eq!(
        e.to_string(),
        "test.json: `architectures`: GPT2LMHeadModel is not supported; supported: LlamaForCausalLM, \
         MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
    );
    let e = parse_err(&edited(LLAMA_8B, json!({"architectures": null, "model_type": "gemma2"})));
    assert!(matches!(e, ConfigError::UnsupportedModelType { ref found, .. } if found == "gemma2"), "{e}");
    let e = parse_err(&edited(LLAMA_8B, json!({"architectures": ["Qwen3MoeForCausalLM"]})));
    assert!(matches!(e, ConfigError::UnsupportedArchitecture { .. }), "{e}");
}

#[test]
fn architecture_and_model_type_must_agree() {
    let e = parse_err(&edited(LLAMA_8B, json!({"model_type": "mistral"})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }), "{e}");
    message_naming(&e, "model_type");
    // model_type alone is enough; neither is an error naming `architectures`.
    assert_eq!(parse_ok(&edited(LLAMA_8B, json!({"architectures": null}))).family(), Family::Llama);
    let e = parse_err(&edited(LLAMA_8B, json!({"architectures": null, "model_type": null})));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    message_naming(&e, "architectures");
    let e = parse_err(&edited(LLAMA_8B, json!({"architectures": "LlamaForCausalLM"})));
    assert!(matches!(e, ConfigError::WrongType { .. }));
}

#[test]
fn missing_and_wrongly_typed_keys() {
    let e = parse_err(&edited(LLAMA_8B, json!({"hidden_size": null})));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    assert_eq!(e.to_string(), "test.json: missing key `hidden_size`");
    let e = parse_err(&edited(LLAMA_8B, json!({"hidden_size": "4096"})));
    assert!(matches!(e, ConfigError::WrongType { .. }));
    let msg = message_naming(&e, "hidden_size");
    assert!(msg.contains("a non-negative integer") && msg.contains("\"4096\""), "{msg}");
    for bad in [json!(-1), json!(4096.5), json!([4096])] {
        let e = parse_err(&edited(LLAMA_8B, json!({ "num_hidden_layers": bad })));
        assert!(matches!(e, ConfigError::WrongType { .. }), "{e}");
    }
    let e = parse_err(&edited(LLAMA_8B, json!({"tie_word_embeddings": "no"})));
    message_naming(&e, "tie_word_embeddings");
    let e = parse_err(&edited(LLAMA_8B, json!({"rms_norm_eps": "1e-5"})));
    message_naming(&e, "rms_norm_eps");
}

#[test]
fn out_of_range_values() {
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"] {
        let e = parse_err(&edited(LLAMA_8B, json!({ key: 0 })));
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
        assert!(message_naming(&e, key).contains("greater than 0"));
    }
    let e = parse_err(&edited(LLAMA_8B, json!({"num_key_value_heads": 0})));
    message_naming(&e, "num_key_value_heads");
    let e = parse_err(&edited(LLAMA_8B, json!({"num_hidden_layers": 1u64 << 33})));
    assert!(message_naming(&e, "num_hidden_layers").contains("32 bits"));
    for eps in [json!(0.0), json!(-1e-5)] {
        let e = parse_err(&edited(LLAMA_8B, json!({ "rms_norm_eps": eps })));
        message_naming(&e, "rms_norm_eps");
    }
    let e = parse_err(&edited(LLAMA_8B, json!({"head_dim": 65})));
    assert!(message_naming(&e, "head_dim").contains("even"));
    // Sizes whose product is absurd are refused instead of overflowing later.
    let huge = json!({"hidden_size": 4_000_000_000u64, "intermediate_size": 4_000_000_000u64, "head_dim": 128});
    let e = parse_err(&edited(LLAMA_8B, huge));
    assert!(e.to_string().contains("parameters"), "{e}");
}

#[test]
fn inconsistent_head_counts() {
    let e = parse_err(&edited(LLAMA_8B, json!({"num_key_value_heads": 5})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }));
    assert!(message_naming(&e, "num_key_value_heads").contains("32 is not a multiple of"));
    let e = parse_err(&edited(LLAMA_8B, json!({"num_key_value_heads": 64})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }));
    let e = parse_err(&edited(LLAMA_8B, json!({"hidden_size": 4100})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }));
    message_naming(&e, "num_attention_heads");
    // An explicit head_dim makes hidden_size free.
    let c = parse_ok(&edited(LLAMA_8B, json!({"hidden_size": 4100, "head_dim": 128})));
    assert_eq!((c.hidden_size(), c.head_dim()), (4100, 128));
    // Absent KV heads mean multi-head attention.
    assert_eq!(parse_ok(&edited(LLAMA_8B, json!({"num_key_value_heads": null}))).num_kv_heads(), 32);
}

#[test]
fn rope_scaling_types() {
    let e = parse_err(&edited(LLAMA_8B, json!({"rope_scaling": {"type": "longrope", "factor": 4.0}})));
    assert!(matches!(e, ConfigError::Unsupported { .. }));
    let msg = message_naming(&e, "rope_scaling.type");
    assert!(msg.contains("\"longrope\"") && msg.contains("default, linear, dynamic, yarn, llama3"), "{msg}");
    let e = parse_err(&edited(LLAMA_8B, json!({"rope_scaling": {"rope_type": "su"}})));
    message_naming(&e, "rope_scaling.rope_type");
    let e = parse_err(&edited(LLAMA_8B, json!({"rope_scaling": {"factor": 4.0}})));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    message_naming(&e, "rope_scaling.rope_type");
    let e =
        parse_err(&edited(LLAMA_8B, json!({"rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2}})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }));
    let e = parse_err(&edited(LLAMA_8B, json!({"rope_scaling": "llama3"})));
    assert!(matches!(e, ConfigError::NotAnObject { .. }));
    message_naming(&e, "rope_scaling");

    let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192});
    let e = parse_err(&edited(LLAMA_8B, json!({ "rope_scaling": llama3 })));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    message_naming(&e, "rope_scaling.low_freq_factor");
    let extra = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "short_factor": [1.0]});
    let e = parse_err(&edited(LLAMA_8B, json!({ "rope_scaling": extra })));
    assert!(matches!(e, ConfigError::Unsupported { .. }));
    message_naming(&e, "rope_scaling.short_factor");
    let flipped = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192});
    let e = parse_err(&edited(LLAMA_8B, json!({ "rope_scaling": flipped })));
    message_naming(&e, "rope_scaling.high_freq_factor");
    let e = parse_err(&edited(LLAMA_8B, json!({"rope_scaling": {"type": "linear", "factor": 0}})));
    message_naming(&e, "rope_scaling.factor");

    let c = parse_ok(&edited(LLAMA_8B, json!({"rope_scaling": {"type": "linear", "factor": 2}})));
    assert_eq!(c.rope_scaling(), Some(&RopeScaling::Linear { factor: 2.0 }));
    let c = parse_ok(&edited(LLAMA_8B, json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})));
    assert_eq!(c.rope_scaling(), Some(&RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: None }));
    for default in [json!(null), json!({"rope_type": "default"})] {
        assert_eq!(parse_ok(&edited(LLAMA_8B, json!({ "rope_scaling": default }))).rope_scaling(), None);
    }
    // Qwen2.5's long-context recipe.
    let yarn = json!({"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"});
    let c = parse_ok(&edited(QWEN25, json!({ "rope_scaling": yarn })));
    assert_eq!(
        c.rope_scaling(),
        Some(&RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: Some(32768),
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None
        })
    );
}

#[test]
fn rope_parameters_of_newer_files() {
    let params = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let c = parse_ok(&edited(LLAMA_8B, json!({"rope_scaling": null, "rope_theta": null, "rope_parameters": params})));
    assert_eq!(c.rope_theta(), 500000.0);
    assert_eq!(c.rope_scaling().map(RopeScaling::factor), Some(32.0));
    let partial = json!({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5});
    let e = parse_err(&edited(LLAMA_8B, json!({ "rope_parameters": partial })));
    message_naming(&e, "rope_parameters.partial_rotary_factor");
}

#[test]
fn math_changing_keys_are_refused() {
    let cases = [
        (json!({"quantization_config": {"quant_method": "awq", "bits": 4}}), "quantization_config"),
        (json!({"hidden_act": "gelu"}), "hidden_act"),
        (json!({"partial_rotary_factor": 0.5}), "partial_rotary_factor"),
        (json!({"use_mrope": true}), "use_mrope"),
        (json!({"final_logit_softcapping": 30.0}), "final_logit_softcapping"),
        (json!({"torch_dtype": "int4"}), "torch_dtype"),
    ];
    for (edit, key) in cases {
        let e = parse_err(&edited(LLAMA_8B, edit));
        assert!(matches!(e, ConfigError::Unsupported { .. }), "{e}");
        message_naming(&e, key);
    }
    // Harmless values of the same keys pass.
    let fine = json!({"hidden_act": "swish", "partial_rotary_factor": 1.0, "use_mrope": false,
                      "final_logit_softcapping": null, "torch_dtype": "float16", "pretraining_tp": 2});
    assert_eq!(parse_ok(&edited(LLAMA_8B, fine)).torch_dtype(), Some(DType::F16));
    let c = parse_ok(&edited(LLAMA_8B, json!({"torch_dtype": null, "dtype": "auto"})));
    assert_eq!(c.torch_dtype(), None);
}

#[test]
fn mixtral_expert_keys() {
    let e = parse_err(&edited(MIXTRAL, json!({"num_experts_per_tok": 9})));
    assert!(matches!(e, ConfigError::Inconsistent { .. }));
    message_naming(&e, "num_experts_per_tok");
    let e = parse_err(&edited(MIXTRAL, json!({"num_local_experts": null})));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    message_naming(&e, "num_local_experts");
    let e = parse_err(&edited(MIXTRAL, json!({"num_experts_per_tok": 0})));
    message_naming(&e, "num_experts_per_tok");
    // Mixtral's defaults differ from Llama's.
    let c = parse_ok(&edited(MIXTRAL, json!({"rope_theta": null, "rms_norm_eps": null})));
    assert_eq!((c.rope_theta(), c.rms_norm_eps()), (1e6, 1e-5));
}

#[test]
fn sliding_windows() {
    // Mistral without the key takes transformers' default window; null means none.
    let mistral = include_str!("../../../../models/mistral-7b-v0.1/config.json");
    let c = parse_ok(&edited(mistral, json!({"sliding_window": null})));
    assert_eq!(c.sliding_window(), Some(SlidingWindow { size: 4096, layers: 32 }));
    let no_window = mistral.replace("\"sliding_window\": 4096", "\"sliding_window\": null");
    assert_eq!(parse_ok(&no_window).sliding_window(), None);
    let e = parse_err(&edited(mistral, json!({"sliding_window": 0})));
    message_naming(&e, "sliding_window");
    // Qwen: only with use_sliding_window, and only layers at index >= max_window_layers.
    let c = parse_ok(&edited(QWEN25, json!({"use_sliding_window": true, "max_window_layers": 21})));
    assert_eq!(c.sliding_window(), Some(SlidingWindow { size: 131072, layers: 7 }));
    let c = parse_ok(&edited(QWEN25, json!({"use_sliding_window": true})));
    assert_eq!(c.sliding_window(), None, "max_window_layers 28 = all layers full");
    // layer_types decides when present.
    let mut types = vec![json!("full_attention"); 28];
    types[27] = json!("sliding_attention");
    let c = parse_ok(&edited(QWEN25, json!({"layer_types": types.clone(), "sliding_window": 4096})));
    assert_eq!(c.sliding_window(), Some(SlidingWindow { size: 4096, layers: 1 }));
    let e = parse_err(&edited(QWEN25, json!({"layer_types": types[1..].to_vec()})));
    message_naming(&e, "layer_types");
    types[3] = json!("linear_attention");
    let e = parse_err(&edited(QWEN25, json!({ "layer_types": types })));
    message_naming(&e, "layer_types[3]");
}

#[test]
fn qwen3_and_llama2() {
    // Qwen/Qwen3-8B config.json (architecture keys).
    let qwen3 = json!({
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 12288, "max_position_embeddings": 40960,
        "max_window_layers": 36, "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
        "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "use_sliding_window": false, "vocab_size": 151936
    });
    let c = parse_ok(&qwen3.to_string());
    assert_eq!(c.family(), Family::Qwen3);
    assert!(c.qk_norm());
    assert_eq!(c.attention_bias(), AttentionBias::default());
    assert_eq!(c.param_counts().total, 8_190_735_360);
    // Qwen3's transformers default head_dim is 128, not hidden / heads.
    let c = parse_ok(&edited(&qwen3.to_string(), json!({"head_dim": null, "hidden_size": 2048})));
    assert_eq!(c.head_dim(), 128);

    // meta-llama/Llama-2-7b-hf: multi-head attention, no rope scaling.
    let llama2 = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16",
        "vocab_size": 32000
    });
    let c = parse_ok(&llama2.to_string());
    assert_eq!(c.param_counts().total, 6_738_415_616);
    assert_eq!(c.rope_theta(), 10000.0);
    // Llama with attention_bias and mlp_bias.
    let c = parse_ok(&edited(&llama2.to_string(), json!({"attention_bias": true, "mlp_bias": true})));
    let extra = c.param_counts().total - 6_738_415_616;
    assert_eq!(extra, 32 * ((3 * 4096 + 4096) + (2 * 11008 + 4096)));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[a-z_0-9]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every key some file above uses.
const KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "num_local_experts",
    "num_experts_per_tok",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "attention_bias",
    "mlp_bias",
    "torch_dtype",
    "hidden_act",
    "quantization_config",
];

proptest! {
    #[test]
    fn garbage_text_never_panics(text in ".{0,200}") {
        let _ = parse(&text, "garbage.json");
    }

    #[test]
    fn truncated_files_never_panic(cut in 0usize..1200) {
        let end = LLAMA_8B.char_indices().map(|(i, _)| i).find(|&i| i >= cut).unwrap_or(LLAMA_8B.len());
        let r = parse(&LLAMA_8B[..end], "cut.json");
        // Only cutting whitespace after the closing brace leaves valid JSON.
        prop_assert!(LLAMA_8B[..end].trim_end() == LLAMA_8B.trim_end() || r.is_err());
    }

    #[test]
    fn any_value_under_any_key_is_a_result(base in 0usize..3, key in 0usize..KEYS.len(), v in arb_json()) {
        let text = edited([LLAMA_8B, MIXTRAL, QWEN25][base], json!({ KEYS[key]: v }));
        if let Ok(c) = parse(&text, "mutated.json") {
            // Whatever got through is valid and its accounting does not panic.
            prop_assert!(c.num_heads() % c.num_kv_heads() == 0);
            prop_assert!(c.head_dim() % 2 == 0 && c.head_dim() > 0);
            prop_assert!(c.param_counts().total <= MAX_PARAMS);
            let _ = c.decode_flops_per_token(c.max_position_embeddings());
            let _ = c.prefill_flops(c.max_position_embeddings());
            let _ = c.kv_cache_bytes(DType::F32, u64::MAX);
        }
    }

    #[test]
    fn random_sizes_validate_or_fail_cleanly(hidden in 0u64..1u64 << 34, heads in 0u64..300, kv in 0u64..300,
                                             layers in 0u64..1u64 << 33, vocab in 0u64..1u64 << 33) {
        let edits = json!({"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv,
                           "num_hidden_layers": layers, "vocab_size": vocab});
        if let Ok(c) = parse(&edited(LLAMA_8B, edits), "sizes.json") {
            prop_assert_eq!(u64::from(c.head_dim()) * heads, hidden);
            prop_assert!(c.param_counts().total <= MAX_PARAMS);
        }
    }
}
