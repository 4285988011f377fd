//! `trainyard-compiler`: from models to device programs.
//!
//! [`onnx`] imports ONNX models into the [`graph`] IR (static shapes and types, shape
//! inference), [`interp`] runs a graph on the host (the reference for every device
//! test) and [`passes`] folds constants, removes dead code, fuses elementwise chains
//! and MatMul+Add(+activation) and chooses partition-axis layouts. [`lower`] compiles a
//! graph into one device program of kernel-library calls (HBM planned by liveness,
//! data-parallel over cores, per-op spans).
//!
//! [`llm`] holds Hugging Face `config.json` import for the Llama, Mistral, Mixtral
//! and Qwen2/Qwen3 families, parameter / FLOP / KV-cache accounting, a per-core memory
//! plan for tensor-parallel inference (`--tp auto`), the decoder programs of prefill and
//! decode steps built from the kernel library ([`llm::program`]) and their host reference
//! ([`llm::reference`]).
//!
//! ```
//! use trainyard_arch::DType;
//! use trainyard_compiler::llm::{plan_memory, smallest_tp, LlmConfig, MemoryError, TP_CANDIDATES};
//!
//! let cfg = LlmConfig::bundled("llama-3.1-8b")?;
//! assert_eq!(cfg.param_counts().total, 8_030_261_248);
//! assert_eq!(cfg.kv_cache_bytes_per_token(DType::Bf16), 128 * 1024);
//!
//! // Trainium2: 96 GiB of HBM over 8 NeuronCores.
//! let hbm_per_core = 96u64 << 30 >> 3;
//! let plan = plan_memory(&cfg, DType::Bf16, 2, 1, 8192, hbm_per_core, 8)?;
//! assert!(plan.total <= hbm_per_core);
//! let too_small = plan_memory(&cfg, DType::Bf16, 1, 1, 8192, hbm_per_core, 8);
//! assert!(matches!(too_small, Err(MemoryError::DoesNotFit { .. })));
//! assert_eq!(smallest_tp(&cfg, DType::Bf16, 1, 8192, hbm_per_core, 8, &TP_CANDIDATES)?, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod graph;
pub mod interp;
pub mod llm;
pub mod lower;
pub mod onnx;
pub mod passes;
