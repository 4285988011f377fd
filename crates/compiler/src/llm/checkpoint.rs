//! Deterministic random checkpoints for small models (functional tests and demos).
//!
//! Every tensor of [`LlmConfig::weights`] is filled from a SplitMix64 stream seeded with the
//! seed and the tensor's name, so a tensor's values do not depend on the others:
//!
//! * linear weights `[out, in]`: uniform in `±1/√in` (unit-variance inputs give outputs of
//!   variance 1/3, so activations stay O(1) through the layers);
//! * biases: uniform in `±0.1`;
//! * norm weights: `1 +` uniform in `±0.1`;
//! * the embedding: uniform in `±1`.

use trainyard_arch::SplitMix64;

use super::config::LlmConfig;
use super::reference::{HostWeight, WeightMap};
use super::weights::WeightRole;

/// The most parameters [`random_checkpoint`] makes (it is meant for small test models).
pub const MAX_RANDOM_PARAMS: u64 = 64 << 20;

/// Why no checkpoint was made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CheckpointError {
    /// The model is too large for a random checkpoint held in memory.
    #[error("{config} has {params} parameters; random checkpoints are limited to {max} (use a small config)")]
    TooLarge {
        /// The config.
        config: String,
        /// Its parameters.
        params: u64,
        /// [`MAX_RANDOM_PARAMS`].
        max: u64,
    },
}

/// Seed of one tensor's stream.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// A random checkpoint of `cfg` (f32 values), the same for the same seed.
pub fn random_checkpoint(cfg: &LlmConfig, seed: u64) -> Result<WeightMap, CheckpointError> {
    let params = cfg.param_counts().total;
    if params > MAX_RANDOM_PARAMS {
        return Err(CheckpointError::TooLarge { config: cfg.source().to_string(), params, max: MAX_RANDOM_PARAMS });
    }
    let mut out = WeightMap::new();
    for w in cfg.weights() {
        let n: usize = w.shape.iter().product();
        let mut rng = SplitMix64::new(tensor_seed(seed, &w.name));
        let mut uniform = |a: f64| (rng.next_f64() * 2.0 - 1.0) * a;
        let values: Vec<f32> = match w.role {
            WeightRole::Embedding => (0..n).map(|_| uniform(1.0) as f32).collect(),
            WeightRole::InputNorm | WeightRole::PostAttnNorm | WeightRole::FinalNorm | WeightRole::QkNorm(_) => {
                (0..n).map(|_| (1.0 + uniform(0.1)) as f32).collect()
            }
            WeightRole::QkvBias(_)
            | WeightRole::OBias
            | WeightRole::GateBias
            | WeightRole::UpBias
            | WeightRole::DownBias => (0..n).map(|_| uniform(0.1) as f32).collect(),
            _ => {
                let fan_in = w.shape.last().copied().unwrap_or(1).max(1) as f64;
                let a = 1.0 / fan_in.sqrt();
                (0..n).map(|_| uniform(a) as f32).collect()
            }
        };
        out.insert(w.name, HostWeight { shape: w.shape, values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let cfg = LlmConfig::bundled("tiny-llama").unwrap_or_else(|e| panic!("{e}"));
        let a = random_checkpoint(&cfg, 1).unwrap_or_default();
        let b = random_checkpoint(&cfg, 1).unwrap_or_default();
        let c = random_checkpoint(&cfg, 2).unwrap_or_default();
        assert_eq!(a, b);
        assert_ne!(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"]);
        assert_eq!(a.len(), cfg.weights().len());
        let q = &a["model.layers.0.self_attn.q_proj.weight"];
        assert!(q.values.iter().all(|v| v.abs() <= 0.125) && q.values.iter().any(|v| v.abs() > 0.1));
        let big = LlmConfig::bundled("llama-3.1-8b").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(random_checkpoint(&big, 1), Err(CheckpointError::TooLarge { .. })));
    }
}
