//! Decoder-only LLMs described by a Hugging Face `config.json`.
//!
//! * [`LlmConfig`] — the typed, validated config ([`LlmConfig::bundled`] for the files under
//!   `models/`, [`LlmConfig::load`] for any other); import errors are [`ConfigError`]s that
//!   name the file and the key. Parsing rules and defaults are in [`parse`].
//! * [`accounting`] — parameter counts, FLOPs per token, KV-cache and weight bytes.
//! * [`memory`] — per-core weights + KV cache + activations under tensor parallelism,
//!   [`plan_memory`] and [`smallest_tp`].
//! * [`weights`] — the checkpoint tensors of a config (Hugging Face names, shapes, roles).
//! * [`program`] — prefill and decode-step programs built from the kernel library,
//!   tensor- and expert-parallel over cores and chips ([`program::build_decoder`]).
//! * [`reference`](mod@reference) — the same model in f64 on the host, with greedy decoding; [`rope`] —
//!   RoPE tables with the config's scaling; [`checkpoint`] — random checkpoints of small configs.

pub mod accounting;
pub mod checkpoint;
mod config;
mod error;
pub mod memory;
pub mod parse;
pub mod program;
pub mod reference;
pub mod rope;
pub mod weights;

pub use accounting::ParamCounts;
pub use config::{bundled_names, AttentionBias, Family, LlmConfig, Moe, RopeScaling, SlidingWindow};
pub use error::{ConfigError, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES};
pub use memory::{plan_memory, smallest_tp, MemoryError, MemoryPart, MemoryPlan, PREFILL_CHUNK_TOKENS, TP_CANDIDATES};
pub use parse::MAX_PARAMS;
