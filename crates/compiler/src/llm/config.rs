//! The typed, validated form of a Hugging Face decoder-only LLM `config.json`.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use trainyard_arch::DType;

use super::error::ConfigError;
use super::parse;

/// A model family: the `architectures` / `model_type` pair of the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Family {
    /// Llama 2, 3, 3.1, 3.2, 3.3 (`LlamaForCausalLM`, `llama`).
    Llama,
    /// Mistral (`MistralForCausalLM`, `mistral`).
    Mistral,
    /// Mixtral sparse mixture of experts (`MixtralForCausalLM`, `mixtral`).
    Mixtral,
    /// Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`, `qwen2`): q/k/v projections carry a bias.
    Qwen2,
    /// Qwen3 dense (`Qwen3ForCausalLM`, `qwen3`): RMSNorm on q and k per head.
    Qwen3,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 5] = [Family::Llama, Family::Mistral, Family::Mixtral, Family::Qwen2, Family::Qwen3];

    /// The `architectures` entry of the family.
    pub const fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The `model_type` of the family.
    pub const fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Mixtral => "mixtral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The family of an `architectures` entry (exact match, as Hugging Face does).
    pub fn from_architecture(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.architecture() == name)
    }

    /// The family of a `model_type` value.
    pub fn from_model_type(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == name)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.architecture())
    }
}

/// RoPE frequency scaling (`rope_scaling`, or `rope_parameters` in newer files).
/// `rope_type: "default"` and a null/absent key both mean no scaling (`None` in
/// [`LlmConfig::rope_scaling`]). Scaling changes no sizes; it is kept so kernels can apply it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Position interpolation: positions divided by `factor`.
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows with the sequence length past the original window.
    Dynamic {
        /// Scaling factor.
        factor: f64,
        /// The pre-extension window, if given (else `max_position_embeddings`).
        original_max_position_embeddings: Option<u64>,
    },
    /// YaRN (Qwen2.5 long-context configs).
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// The pre-extension window, if given (else `max_position_embeddings`).
        original_max_position_embeddings: Option<u64>,
        /// High-frequency boundary in rotations (default 32).
        beta_fast: f64,
        /// Low-frequency boundary in rotations (default 1).
        beta_slow: f64,
        /// Attention temperature; `None` means YaRN's `0.1·ln(factor) + 1`.
        attention_factor: Option<f64>,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scaling factor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-extension window (8192 for Llama 3.1).
        original_max_position_embeddings: u64,
    },
}

impl RopeScaling {
    /// The `rope_type` string of the variant.
    pub const fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }

    /// The scaling factor.
    pub const fn factor(&self) -> f64 {
        match *self {
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Yarn { factor, .. }
            | RopeScaling::Llama3 { factor, .. } => factor,
        }
    }
}

/// Sparse mixture-of-experts MLP (Mixtral): every layer has `num_experts` SwiGLU
/// experts of `intermediate_size` and a linear router; each token uses `experts_per_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Moe {
    /// `num_local_experts`.
    pub num_experts: u32,
    /// `num_experts_per_tok` (top-k).
    pub experts_per_token: u32,
}

/// Sliding-window attention: `layers` of the layers attend to the last `size` tokens only,
/// so their KV cache holds at most `size` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SlidingWindow {
    /// Window in tokens.
    pub size: u64,
    /// How many layers use it (all for Mistral; those at index ≥ `max_window_layers` for Qwen).
    pub layers: u32,
}

/// Which attention projections carry a bias vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttentionBias {
    /// q, k and v projections (Qwen2 always; Llama/Qwen3 with `attention_bias`).
    pub qkv: bool,
    /// Output projection (Llama/Qwen3 with `attention_bias`).
    pub o: bool,
}

/// A validated decoder-only transformer config (pre-norm RMSNorm, RoPE, grouped-query
/// attention, SwiGLU MLP or MoE of SwiGLU experts).
///
/// Build one with [`LlmConfig::from_json_str`], [`LlmConfig::load`] or
/// [`LlmConfig::bundled`]; every constructor validates, so a value of this type always has
/// non-zero sizes, `num_heads % num_kv_heads == 0` and an even `head_dim`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmConfig {
    pub(super) source: String,
    pub(super) family: Family,
    pub(super) hidden_size: u32,
    pub(super) intermediate_size: u32,
    pub(super) num_layers: u32,
    pub(super) num_heads: u32,
    pub(super) num_kv_heads: u32,
    pub(super) head_dim: u32,
    pub(super) head_dim_explicit: bool,
    pub(super) vocab_size: u32,
    pub(super) max_position_embeddings: u64,
    pub(super) rms_norm_eps: f64,
    pub(super) rope_theta: f64,
    pub(super) rope_scaling: Option<RopeScaling>,
    pub(super) tie_word_embeddings: bool,
    pub(super) moe: Option<Moe>,
    pub(super) sliding_window: Option<SlidingWindow>,
    pub(super) qk_norm: bool,
    pub(super) attention_bias: AttentionBias,
    pub(super) mlp_bias: bool,
    pub(super) torch_dtype: Option<DType>,
}

impl LlmConfig {
    /// Parses and validates the text of a `config.json`; `source` names it in errors.
    pub fn from_json_str(text: &str, source: &str) -> Result<LlmConfig, ConfigError> {
        parse::parse(text, source)
    }

    /// Reads, parses and validates a `config.json` file.
    pub fn load(path: &Path) -> Result<LlmConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io { file: file.clone(), err })?;
        LlmConfig::from_json_str(&text, &file)
    }

    /// A config bundled from `models/<name>/config.json`. `name` is a directory name
    /// (`llama-3.1-8b`), a short alias (`mistral-7b`) or a Hugging Face repository id
    /// (`meta-llama/Llama-3.1-8B`), matched case-insensitively.
    pub fn bundled(name: &str) -> Result<LlmConfig, ConfigError> {
        let wanted = name.trim().to_ascii_lowercase();
        let short = wanted.rsplit('/').next().unwrap_or(&wanted);
        BUNDLED
            .iter()
            .find(|b| b.name == short || b.aliases.contains(&short))
            .ok_or_else(|| ConfigError::UnknownModel { name: name.to_string(), known: bundled_names().join(", ") })
            .and_then(|b| LlmConfig::from_json_str(b.text, &format!("models/{}/config.json", b.name)))
    }

    /// Where the config came from (file path or `models/<name>/config.json`).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The model family.
    pub fn family(&self) -> Family {
        self.family
    }
    /// Model width `d` (`hidden_size`).
    pub fn hidden_size(&self) -> u32 {
        self.hidden_size
    }
    /// MLP inner width (`intermediate_size`; per expert for MoE).
    pub fn intermediate_size(&self) -> u32 {
        self.intermediate_size
    }
    /// Decoder layers (`num_hidden_layers`).
    pub fn num_layers(&self) -> u32 {
        self.num_layers
    }
    /// Query heads (`num_attention_heads`).
    pub fn num_heads(&self) -> u32 {
        self.num_heads
    }
    /// Key/value heads (`num_key_value_heads`; equal to `num_heads` when absent).
    pub fn num_kv_heads(&self) -> u32 {
        self.num_kv_heads
    }
    /// Query heads per KV head (the GQA group size).
    pub fn kv_group_size(&self) -> u32 {
        self.num_heads / self.num_kv_heads
    }
    /// Per-head width (`head_dim`, or `hidden_size / num_attention_heads` when absent).
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }
    /// True when the file gave `head_dim` (or the family default applied) rather than it being derived.
    pub fn head_dim_explicit(&self) -> bool {
        self.head_dim_explicit
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    /// Longest context the model supports (`max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> u64 {
        self.max_position_embeddings
    }
    /// RMSNorm epsilon.
    pub fn rms_norm_eps(&self) -> f64 {
        self.rms_norm_eps
    }
    /// RoPE base.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
    }
    /// RoPE scaling, `None` for plain RoPE.
    pub fn rope_scaling(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref()
    }
    /// True when the LM head reuses the embedding matrix.
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }
    /// The mixture of experts, `None` for a dense MLP.
    pub fn moe(&self) -> Option<Moe> {
        self.moe
    }
    /// Sliding-window attention, `None` when every layer attends to the whole context.
    pub fn sliding_window(&self) -> Option<SlidingWindow> {
        self.sliding_window
    }
    /// True when q and k are RMS-normalised per head before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.qk_norm
    }
    /// Which attention projections carry a bias.
    pub fn attention_bias(&self) -> AttentionBias {
        self.attention_bias
    }
    /// True when the MLP projections carry biases (Llama `mlp_bias`).
    pub fn mlp_bias(&self) -> bool {
        self.mlp_bias
    }
    /// The checkpoint's dtype (`torch_dtype` or `dtype`), `None` when absent or `auto`.
    pub fn torch_dtype(&self) -> Option<DType> {
        self.torch_dtype
    }
}

/// One bundled config.
struct Bundled {
    name: &'static str,
    aliases: &'static [&'static str],
    text: &'static str,
}

/// The files under `models/`, embedded so `--model NAME` works offline.
const BUNDLED: &[Bundled] = &[
    Bundled { name: "llama-3.2-1b", aliases: &[], text: include_str!("../../../../models/llama-3.2-1b/config.json") },
    Bundled { name: "llama-3.1-8b", aliases: &[], text: include_str!("../../../../models/llama-3.1-8b/config.json") },
    Bundled { name: "llama-3.1-70b", aliases: &[], text: include_str!("../../../../models/llama-3.1-70b/config.json") },
    Bundled {
        name: "llama-3.1-405b",
        aliases: &[],
        text: include_str!("../../../../models/llama-3.1-405b/config.json"),
    },
    Bundled {
        name: "mistral-7b-v0.1",
        aliases: &["mistral-7b"],
        text: include_str!("../../../../models/mistral-7b-v0.1/config.json"),
    },
    Bundled {
        name: "mixtral-8x7b-v0.1",
        aliases: &["mixtral-8x7b"],
        text: include_str!("../../../../models/mixtral-8x7b-v0.1/config.json"),
    },
    Bundled { name: "qwen2.5-7b", aliases: &[], text: include_str!("../../../../models/qwen2.5-7b/config.json") },
    // Tiny random-weight test models (models/README.md, "Tiny test models").
    Bundled { name: "tiny-llama", aliases: &[], text: include_str!("../../../../models/tiny-llama/config.json") },
    Bundled { name: "tiny-qwen2", aliases: &[], text: include_str!("../../../../models/tiny-qwen2/config.json") },
    Bundled { name: "tiny-mixtral", aliases: &[], text: include_str!("../../../../models/tiny-mixtral/config.json") },
];

/// The names [`LlmConfig::bundled`] knows (the `models/` directory names), in a fixed order.
pub fn bundled_names() -> Vec<&'static str> {
    BUNDLED.iter().map(|b| b.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> LlmConfig {
        match LlmConfig::bundled(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// One row of the models/README.md "Key numbers" table.
    struct Row {
        name: &'static str,
        family: Family,
        /// hidden, intermediate, heads, kv heads, head_dim, layers, vocab.
        sizes: [u32; 7],
        rope_theta: f64,
        /// (factor, original_max_position_embeddings) of llama3 scaling.
        llama3: Option<(f64, u64)>,
        sliding_window: Option<SlidingWindow>,
        tied: bool,
        experts: Option<(u32, u32)>,
    }

    const README: &[Row] = &[
        Row {
            name: "llama-3.2-1b",
            family: Family::Llama,
            sizes: [2048, 8192, 32, 8, 64, 16, 128256],
            rope_theta: 500000.0,
            llama3: Some((32.0, 8192)),
            sliding_window: None,
            tied: true,
            experts: None,
        },
        Row {
            name: "llama-3.1-8b",
            family: Family::Llama,
            sizes: [4096, 14336, 32, 8, 128, 32, 128256],
            rope_theta: 500000.0,
            llama3: Some((8.0, 8192)),
            sliding_window: None,
            tied: false,
            experts: None,
        },
        Row {
            name: "llama-3.1-70b",
            family: Family::Llama,
            sizes: [8192, 28672, 64, 8, 128, 80, 128256],
            rope_theta: 500000.0,
            llama3: Some((8.0, 8192)),
            sliding_window: None,
            tied: false,
            experts: None,
        },
        Row {
            name: "llama-3.1-405b",
            family: Family::Llama,
            sizes: [16384, 53248, 128, 8, 128, 126, 128256],
            rope_theta: 500000.0,
            llama3: Some((8.0, 8192)),
            sliding_window: None,
            tied: false,
            experts: None,
        },
        Row {
            name: "mistral-7b-v0.1",
            family: Family::Mistral,
            sizes: [4096, 14336, 32, 8, 128, 32, 32000],
            rope_theta: 10000.0,
            llama3: None,
            sliding_window: Some(SlidingWindow { size: 4096, layers: 32 }),
            tied: false,
            experts: None,
        },
        Row {
            name: "mixtral-8x7b-v0.1",
            family: Family::Mixtral,
            sizes: [4096, 14336, 32, 8, 128, 32, 32000],
            rope_theta: 1000000.0,
            llama3: None,
            sliding_window: None,
            tied: false,
            experts: Some((8, 2)),
        },
        Row {
            name: "qwen2.5-7b",
            family: Family::Qwen2,
            sizes: [3584, 18944, 28, 4, 128, 28, 152064],
            rope_theta: 1000000.0,
            llama3: None,
            sliding_window: None,
            tied: false,
            experts: None,
        },
    ];

    #[test]
    fn bundled_configs_match_the_readme() {
        let real: Vec<&str> = bundled_names().into_iter().filter(|n| !n.starts_with("tiny-")).collect();
        assert_eq!(real, README.iter().map(|r| r.name).collect::<Vec<_>>());
        for row in README {
            let c = cfg(row.name);
            let sizes = [
                c.hidden_size(),
                c.intermediate_size(),
                c.num_heads(),
                c.num_kv_heads(),
                c.head_dim(),
                c.num_layers(),
                c.vocab_size(),
            ];
            assert_eq!(sizes, row.sizes, "{}", row.name);
            assert_eq!(c.family(), row.family, "{}", row.name);
            assert_eq!(c.rope_theta(), row.rope_theta, "{}", row.name);
            let llama3 = match c.rope_scaling() {
                None => None,
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }) => {
                    assert_eq!((*low_freq_factor, *high_freq_factor), (1.0, 4.0), "{}", row.name);
                    Some((*factor, *original_max_position_embeddings))
                }
                Some(other) => panic!("{}: unexpected {other:?}", row.name),
            };
            assert_eq!(llama3, row.llama3, "{}", row.name);
            assert_eq!(c.sliding_window(), row.sliding_window, "{}", row.name);
            assert_eq!(c.tie_word_embeddings(), row.tied, "{}", row.name);
            assert_eq!(c.moe().map(|m| (m.num_experts, m.experts_per_token)), row.experts, "{}", row.name);
            assert_eq!(c.torch_dtype(), Some(DType::Bf16), "{}", row.name);
            assert_eq!(c.source(), format!("models/{}/config.json", row.name));
            assert_eq!(c.head_dim_explicit(), row.name == "llama-3.2-1b", "{}", row.name);
        }
    }

    #[test]
    fn family_specific_fields() {
        let q = cfg("qwen2.5-7b");
        assert_eq!(q.attention_bias(), AttentionBias { qkv: true, o: false });
        assert_eq!(q.rms_norm_eps(), 1e-6);
        assert_eq!(q.max_position_embeddings(), 131072);
        assert!(!q.qk_norm());
        let l = cfg("llama-3.1-8b");
        assert_eq!(l.attention_bias(), AttentionBias::default());
        assert!(!l.mlp_bias());
        assert_eq!(l.kv_group_size(), 4);
        assert_eq!(l.rope_scaling().map(|r| (r.rope_type(), r.factor())), Some(("llama3", 8.0)));
    }

    #[test]
    fn bundled_names_are_forgiving() {
        for name in ["llama-3.1-8b", "LLAMA-3.1-8B", " meta-llama/Llama-3.1-8B ", "Llama-3.1-8B"] {
            assert_eq!(cfg(name).hidden_size(), 4096, "{name}");
        }
        assert_eq!(cfg("mistral-7b").family(), Family::Mistral);
        assert_eq!(cfg("mistralai/Mixtral-8x7B-v0.1").family(), Family::Mixtral);
        assert_eq!(cfg("Qwen/Qwen2.5-7B").family(), Family::Qwen2);
        match LlmConfig::bundled("gpt-2") {
            Err(e @ ConfigError::UnknownModel { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("`gpt-2`") && msg.contains("llama-3.1-8b, llama-3.1-70b"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_reads_files_and_names_missing_ones() {
        let dir = std::env::temp_dir().join(format!("trainyard-llmcfg-{}", std::process::id()));
        let path = dir.join("config.json");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&path, include_str!("../../../../models/mistral-7b-v0.1/config.json")));
        assert!(written.is_ok(), "{written:?}");
        let loaded = LlmConfig::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        match loaded {
            Ok(c) => {
                assert_eq!(c.family(), Family::Mistral);
                assert_eq!(c.source(), path.display().to_string());
            }
            Err(e) => panic!("{e}"),
        }
        match LlmConfig::load(&dir.join("absent.json")) {
            Err(e @ ConfigError::Io { .. }) => assert!(e.to_string().contains("absent.json"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn families_round_trip_their_names() {
        for f in Family::ALL {
            assert_eq!(Family::from_architecture(f.architecture()), Some(f));
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            assert_eq!(f.to_string(), f.architecture());
        }
        assert_eq!(Family::from_architecture("llamaforcausallm"), None);
    }
}
