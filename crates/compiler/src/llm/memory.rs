//! Per-core memory plan of tensor-parallel inference: does a model fit, and at which TP degree.
//!
//! **Sharding** (Megatron-style tensor parallelism of degree `tp`; notation of
//! [`accounting`](super::accounting)):
//!
//! * q/k/v are split by heads (column-parallel): `Hq/tp` query heads per core, so `tp` must
//!   divide `Hq`. KV heads: `Hkv/tp` per core when `tp ≤ Hkv` (`tp` must divide `Hkv`);
//!   when `tp > Hkv` every core holds the one KV head its query heads read, so each KV head
//!   (its k/v weights and its cache) is replicated `tp/Hkv` times (`tp` must be a multiple of
//!   `Hkv`). The o projection is row-parallel; its bias is replicated.
//! * The MLP, and each expert of a MoE, splits gate/up by columns and down by rows:
//!   `⌈I/tp⌉` per core (the largest shard when `tp` does not divide `I`); the down bias is
//!   replicated. Every core holds a slice of every expert (no expert parallelism); the router
//!   is replicated.
//! * Embedding and LM head are split by vocabulary rows: `⌈V/tp⌉` per core.
//! * RMSNorm weights are replicated.
//!
//! **KV cache** per core: `2·Σ_layers keys·Hkv_core·D·bytes·batch` with `keys = context_len`,
//! or `min(context_len, W)` on a sliding-window layer.
//!
//! **Activations** per core (inference keeps nothing for a backward pass, so one layer's
//! working set is live at a time; attention is flash-style, with no `T × context` score
//! matrix):
//!
//! * `T = min(batch·context_len, max(PREFILL_CHUNK_TOKENS, batch))` tokens per step: prefill
//!   runs in chunks of [`PREFILL_CHUNK_TOKENS`], a decode step has `batch` tokens.
//! * Per token: `2·h` (residual stream and normed input, replicated) plus the larger of
//!   attention `2·Hq_core·D + 2·Hkv_core·D + h` (q, attention output, new k and v, the o
//!   partial sum before all-reduce) and MLP `k·2·⌈I/tp⌉ + h` (gate and up of each routed
//!   expert, the down partial sum), in `dtype`.
//! * Logits of the last position of each sequence: `batch·⌈V/tp⌉·4` bytes (f32).

use std::fmt;

use serde::Serialize;
use trainyard_arch::DType;

use super::accounting::{param_parts, Shard};
use super::config::LlmConfig;

/// Most tokens one prefill step processes (chunked prefill), the `T` of the activation estimate.
pub const PREFILL_CHUNK_TOKENS: u64 = 2048;

/// TP degrees `--tp auto` tries, smallest first.
pub const TP_CANDIDATES: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// One of the three things that take HBM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MemoryPart {
    /// Model weights.
    Weights,
    /// KV cache.
    KvCache,
    /// Activations of the layer in flight and the logits.
    Activations,
}

impl fmt::Display for MemoryPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryPart::Weights => "weights",
            MemoryPart::KvCache => "KV cache",
            MemoryPart::Activations => "activations",
        })
    }
}

/// Per-core HBM use of one model at one TP degree (bytes; see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Tensor-parallel degree (cores used).
    pub tp: u32,
    /// Element type of weights, KV cache and activations.
    pub dtype: DType,
    /// Sequences in flight.
    pub batch: u32,
    /// Tokens per sequence (prompt and generated).
    pub context_len: u64,
    /// Query heads per core.
    pub q_heads_per_core: u32,
    /// KV heads per core.
    pub kv_heads_per_core: u32,
    /// Cores holding each KV head (1 unless `tp` exceeds the KV heads).
    pub kv_replication: u32,
    /// Weight bytes per core.
    pub weights: u64,
    /// KV-cache bytes per core.
    pub kv_cache: u64,
    /// Activation bytes per core.
    pub activations: u64,
    /// `weights + kv_cache + activations`.
    pub total: u64,
    /// HBM bytes per core.
    pub available: u64,
}

impl MemoryPlan {
    /// The largest of the three parts.
    pub fn dominant(&self) -> MemoryPart {
        dominant(self.weights, self.kv_cache, self.activations)
    }

    /// Bytes left on each core.
    pub fn headroom(&self) -> u64 {
        self.available.saturating_sub(self.total)
    }
}

fn dominant(weights: u64, kv_cache: u64, activations: u64) -> MemoryPart {
    if weights >= kv_cache && weights >= activations {
        MemoryPart::Weights
    } else if kv_cache >= activations {
        MemoryPart::KvCache
    } else {
        MemoryPart::Activations
    }
}

/// Bytes as `N bytes (X.XX GiB)`.
fn gib(bytes: &u64) -> String {
    format!("{bytes} bytes ({:.2} GiB)", *bytes as f64 / (1u64 << 30) as f64)
}

/// Why a model cannot be planned at a TP degree.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MemoryError {
    /// `tp` is 0.
    #[error("the tensor-parallel degree must be at least 1")]
    ZeroTp,
    /// More cores asked for than there are.
    #[error("tp={tp} needs {tp} cores but only {cores} are available")]
    NotEnoughCores {
        /// The TP degree.
        tp: u32,
        /// Cores available.
        cores: u32,
    },
    /// Attention heads cannot be split evenly.
    #[error("tp={tp} does not divide the {heads} attention heads")]
    HeadsNotDivisible {
        /// The TP degree.
        tp: u32,
        /// Query heads.
        heads: u32,
    },
    /// KV heads can be neither split nor replicated evenly.
    #[error(
        "tp={tp} and the {kv_heads} KV heads: one must divide the other (KV heads are split when tp ≤ {kv_heads}, \
         replicated when tp is a multiple of {kv_heads})"
    )]
    KvHeadsIndivisible {
        /// The TP degree.
        tp: u32,
        /// KV heads.
        kv_heads: u32,
    },
    /// `batch` is 0.
    #[error("the batch must be at least 1 sequence")]
    ZeroBatch,
    /// `context_len` is 0.
    #[error("the context length must be at least 1 token")]
    ZeroContext,
    /// The context is longer than the model supports.
    #[error("context length {context_len} exceeds the model's max_position_embeddings {max}")]
    ContextTooLong {
        /// Requested tokens.
        context_len: u64,
        /// The model's limit.
        max: u64,
    },
    /// A byte count does not fit in 64 bits.
    #[error("the {part} bytes per core do not fit in 64 bits (batch or context too large)")]
    Overflow {
        /// Which part overflowed.
        part: MemoryPart,
    },
    /// The plan needs more HBM per core than there is.
    #[error(
        "tp={tp}: needs {} per core but a core has {}: over by {}; {dominant} is the largest part (weights {}, KV \
         cache {}, activations {})",
        gib(.needed), gib(.available), gib(.by), gib(.weights), gib(.kv_cache), gib(.activations)
    )]
    DoesNotFit {
        /// The TP degree.
        tp: u32,
        /// Bytes per core needed.
        needed: u64,
        /// Bytes per core available.
        available: u64,
        /// `needed - available`.
        by: u64,
        /// Weight bytes per core.
        weights: u64,
        /// KV-cache bytes per core.
        kv_cache: u64,
        /// Activation bytes per core.
        activations: u64,
        /// The largest part.
        dominant: MemoryPart,
    },
    /// `smallest_tp` got no candidates.
    #[error("no tensor-parallel degrees to try")]
    NoCandidates,
    /// No candidate TP degree can split the model over the available cores.
    #[error("no usable tensor-parallel degree among {candidates:?}: {reasons}")]
    NoUsableTp {
        /// The degrees tried.
        candidates: Vec<u32>,
        /// Why each was rejected, `; `-separated.
        reasons: String,
    },
}

/// Checked product in `u128`.
fn product(xs: &[u128]) -> Option<u128> {
    xs.iter().try_fold(1u128, |a, &b| a.checked_mul(b))
}

fn to_u64(v: Option<u128>, part: MemoryPart) -> Result<u64, MemoryError> {
    v.and_then(|v| u64::try_from(v).ok()).ok_or(MemoryError::Overflow { part })
}

/// Plans the per-core HBM of `cfg` served with tensor parallelism `tp`: weights, KV cache of
/// `batch` sequences of `context_len` tokens, and activations, all in `dtype`.
///
/// Errors: a `tp` that cannot split the heads or exceeds `cores`, a zero batch or context, a
/// context over `max_position_embeddings`, or [`MemoryError::DoesNotFit`] with the bytes
/// over `hbm_bytes_per_core`.
pub fn plan_memory(
    cfg: &LlmConfig,
    dtype: DType,
    tp: u32,
    batch: u32,
    context_len: u64,
    hbm_bytes_per_core: u64,
    cores: u32,
) -> Result<MemoryPlan, MemoryError> {
    check_request(cfg, batch, context_len)?;
    let (q_heads_per_core, kv_heads_per_core, kv_replication) = split_heads(cfg, tp, cores)?;
    let tp64 = u64::from(tp);
    let shard = Shard {
        q_heads: u64::from(q_heads_per_core),
        kv_heads: u64::from(kv_heads_per_core),
        intermediate: u64::from(cfg.intermediate_size).div_ceil(tp64),
        vocab: u64::from(cfg.vocab_size).div_ceil(tp64),
    };
    let size = dtype.size() as u128;
    let experts = u64::from(cfg.moe.map_or(1, |m| m.num_experts));
    let params = param_parts(cfg, shard, experts).total();
    let weights = to_u64(product(&[u128::from(params), size]), MemoryPart::Weights)?;

    let kv_cache = to_u64(
        product(&[2, cfg.layer_keys(context_len), shard.kv_heads.into(), cfg.head_dim.into(), size, batch.into()]),
        MemoryPart::KvCache,
    )?;

    let h = u128::from(cfg.hidden_size);
    let d = u128::from(cfg.head_dim);
    let k = u128::from(cfg.moe.map_or(1, |m| m.experts_per_token));
    let attention = 2 * u128::from(shard.q_heads) * d + 2 * u128::from(shard.kv_heads) * d + h;
    let mlp = k * 2 * u128::from(shard.intermediate) + h;
    let per_token = 2 * h + attention.max(mlp);
    let all_tokens = u128::from(batch) * u128::from(context_len);
    let tokens = all_tokens.min(u128::from(PREFILL_CHUNK_TOKENS.max(u64::from(batch))));
    let logits = product(&[batch.into(), shard.vocab.into(), 4]);
    let activations = to_u64(
        product(&[tokens, per_token, size]).zip(logits).and_then(|(a, b)| a.checked_add(b)),
        MemoryPart::Activations,
    )?;

    let total = u128::from(weights) + u128::from(kv_cache) + u128::from(activations);
    let needed = to_u64(Some(total), dominant(weights, kv_cache, activations))?;
    if needed > hbm_bytes_per_core {
        return Err(MemoryError::DoesNotFit {
            tp,
            needed,
            available: hbm_bytes_per_core,
            by: needed - hbm_bytes_per_core,
            weights,
            kv_cache,
            activations,
            dominant: dominant(weights, kv_cache, activations),
        });
    }
    Ok(MemoryPlan {
        tp,
        dtype,
        batch,
        context_len,
        q_heads_per_core,
        kv_heads_per_core,
        kv_replication,
        weights,
        kv_cache,
        activations,
        total: needed,
        available: hbm_bytes_per_core,
    })
}

/// Errors that do not depend on `tp`.
fn check_request(cfg: &LlmConfig, batch: u32, context_len: u64) -> Result<(), MemoryError> {
    if batch == 0 {
        return Err(MemoryError::ZeroBatch);
    }
    if context_len == 0 {
        return Err(MemoryError::ZeroContext);
    }
    if context_len > cfg.max_position_embeddings {
        return Err(MemoryError::ContextTooLong { context_len, max: cfg.max_position_embeddings });
    }
    Ok(())
}

/// `(query heads per core, KV heads per core, KV replication)` at `tp`.
fn split_heads(cfg: &LlmConfig, tp: u32, cores: u32) -> Result<(u32, u32, u32), MemoryError> {
    if tp == 0 {
        return Err(MemoryError::ZeroTp);
    }
    if tp > cores {
        return Err(MemoryError::NotEnoughCores { tp, cores });
    }
    if !cfg.num_heads.is_multiple_of(tp) {
        return Err(MemoryError::HeadsNotDivisible { tp, heads: cfg.num_heads });
    }
    let kv = cfg.num_kv_heads;
    if tp <= kv {
        if !kv.is_multiple_of(tp) {
            return Err(MemoryError::KvHeadsIndivisible { tp, kv_heads: kv });
        }
        Ok((cfg.num_heads / tp, kv / tp, 1))
    } else {
        if !tp.is_multiple_of(kv) {
            return Err(MemoryError::KvHeadsIndivisible { tp, kv_heads: kv });
        }
        Ok((cfg.num_heads / tp, 1, tp / kv))
    }
}

/// The smallest TP degree among `candidates` whose plan fits (for `--tp auto`; see
/// [`TP_CANDIDATES`]). Degrees that cannot split the model or exceed `cores` are skipped.
/// When none fits, the error is the [`MemoryError::DoesNotFit`] of the largest usable degree
/// (the closest miss), or [`MemoryError::NoUsableTp`] listing why each degree was skipped.
pub fn smallest_tp(
    cfg: &LlmConfig,
    dtype: DType,
    batch: u32,
    context_len: u64,
    hbm_bytes_per_core: u64,
    cores: u32,
    candidates: &[u32],
) -> Result<u32, MemoryError> {
    check_request(cfg, batch, context_len)?;
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return Err(MemoryError::NoCandidates);
    }
    let mut closest = None;
    let mut skipped = Vec::new();
    for &tp in &sorted {
        match plan_memory(cfg, dtype, tp, batch, context_len, hbm_bytes_per_core, cores) {
            Ok(plan) => return Ok(plan.tp),
            Err(e @ (MemoryError::DoesNotFit { .. } | MemoryError::Overflow { .. })) => closest = Some(e),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Err(closest.unwrap_or(MemoryError::NoUsableTp { candidates: sorted, reasons: skipped.join("; ") }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop_oneof};

    use super::*;

    const GIB: u64 = 1 << 30;
    /// Trainium2: 96 GiB HBM shared by 8 NeuronCores.
    const TRN2_CORE_HBM: u64 = 96 * GIB / 8;
    /// trn2.48xlarge: 16 chips × 8 cores.
    const TRN2_48XL_CORES: u32 = 128;

    fn cfg(name: &str) -> LlmConfig {
        match LlmConfig::bundled(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn llama_70b_on_trn2_needs_tp16() {
        let c = cfg("llama-3.1-70b");
        let tp = smallest_tp(&c, DType::Bf16, 1, 8192, TRN2_CORE_HBM, TRN2_48XL_CORES, &TP_CANDIDATES);
        assert_eq!(tp, Ok(16));
        let plan = match plan_memory(&c, DType::Bf16, 16, 1, 8192, TRN2_CORE_HBM, TRN2_48XL_CORES) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((plan.q_heads_per_core, plan.kv_heads_per_core, plan.kv_replication), (4, 1, 2));
        // Per layer: q+o 2·8192·512, k+v 2·8192·128, MLP 3·8192·1792, norms 2·8192;
        // embedding and head 8016·8192 each; final norm 8192.
        let layer = 2 * 8192 * 512 + 2 * 8192 * 128 + 3 * 8192 * 1792 + 2 * 8192;
        let params = 80 * layer + 2 * 8016 * 8192 + 8192;
        assert_eq!(plan.weights, 2 * params);
        assert_eq!(plan.kv_cache, 2 * 80 * 128 * 2 * 8192);
        assert_eq!(plan.dominant(), MemoryPart::Weights);
        assert!(plan.total <= TRN2_CORE_HBM);
        assert_eq!(plan.headroom(), TRN2_CORE_HBM - plan.total);
    }

    #[test]
    fn llama_70b_tp8_does_not_fit_by_exact_bytes() {
        let c = cfg("llama-3.1-70b");
        let err = plan_memory(&c, DType::Bf16, 8, 1, 8192, TRN2_CORE_HBM, TRN2_48XL_CORES);
        // Weights: 8 q heads, 1 KV head, 3584 MLP columns, 16032 vocab rows per core.
        let layer: u64 = 2 * 8192 * 1024 + 2 * 8192 * 128 + 3 * 8192 * 3584 + 2 * 8192;
        let weights = 2 * (80 * layer + 2 * 16032 * 8192 + 8192);
        assert_eq!(weights, 17_640_734_720);
        let kv_cache = 2 * 80 * 128 * 2 * 8192;
        // T = 2048 tokens; per token 2·8192 + max(2·1024 + 2·128 + 8192, 2·3584 + 8192) elements.
        let activations = 2048 * (2 * 8192 + 15360) * 2 + 16032 * 4;
        let needed = weights + kv_cache + activations;
        assert_eq!(needed, 18_106_366_592);
        let want = MemoryError::DoesNotFit {
            tp: 8,
            needed,
            available: 12_884_901_888,
            by: 5_221_464_704,
            weights,
            kv_cache,
            activations,
            dominant: MemoryPart::Weights,
        };
        assert_eq!(err, Err(want));
        let msg = match err {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert!(msg.contains("over by 5221464704 bytes (4.86 GiB)"), "{msg}");
        assert!(msg.contains("weights is the largest part"), "{msg}");
    }

    #[test]
    fn smallest_tp_reports_the_closest_miss() {
        let c = cfg("llama-3.1-405b");
        // One trn2 chip (8 cores) cannot hold 405B in bf16: the tp=8 miss is reported.
        match smallest_tp(&c, DType::Bf16, 1, 4096, TRN2_CORE_HBM, 8, &TP_CANDIDATES) {
            Err(MemoryError::DoesNotFit { tp, by, .. }) => {
                assert_eq!(tp, 8);
                assert!(by > 80 * GIB, "{by}");
            }
            other => panic!("{other:?}"),
        }
        // With 128 cores it fits; fp8 halves the weights and needs fewer cores.
        let bf16 = smallest_tp(&c, DType::Bf16, 1, 4096, TRN2_CORE_HBM, 128, &TP_CANDIDATES);
        let fp8 = smallest_tp(&c, DType::F8E4M3, 1, 4096, TRN2_CORE_HBM, 128, &TP_CANDIDATES);
        assert_eq!(bf16, Ok(128));
        assert_eq!(fp8, Ok(64));
    }

    #[test]
    fn kv_heads_are_replicated_past_their_count() {
        let c = cfg("llama-3.1-8b");
        let plan = |tp| plan_memory(&c, DType::Bf16, tp, 4, 4096, 1 << 40, 64);
        let (p8, p16) = match (plan(8), plan(16)) {
            (Ok(a), Ok(b)) => (a, b),
            other => panic!("{other:?}"),
        };
        assert_eq!((p8.kv_heads_per_core, p8.kv_replication), (1, 1));
        assert_eq!((p16.kv_heads_per_core, p16.kv_replication), (1, 2));
        // Replicated KV heads: the per-core cache does not shrink past tp = kv_heads.
        assert_eq!(p8.kv_cache, p16.kv_cache);
        assert_eq!(p8.kv_cache, c.kv_cache_bytes(DType::Bf16, 4096) * 4 / 8);
        let p1 = match plan(1) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p1.weights, c.weight_bytes(DType::Bf16));
    }

    #[test]
    fn request_errors() {
        let c = cfg("llama-3.1-8b");
        let plan = |tp, batch, ctx, cores| plan_memory(&c, DType::Bf16, tp, batch, ctx, 1 << 40, cores);
        assert_eq!(plan(0, 1, 1, 8), Err(MemoryError::ZeroTp));
        assert_eq!(plan(16, 1, 1, 8), Err(MemoryError::NotEnoughCores { tp: 16, cores: 8 }));
        assert_eq!(plan(3, 1, 1, 8), Err(MemoryError::HeadsNotDivisible { tp: 3, heads: 32 }));
        assert_eq!(plan(1, 0, 1, 8), Err(MemoryError::ZeroBatch));
        assert_eq!(plan(1, 1, 0, 8), Err(MemoryError::ZeroContext));
        assert_eq!(plan(1, 1, 131_073, 8), Err(MemoryError::ContextTooLong { context_len: 131_073, max: 131_072 }));
        let q = cfg("qwen2.5-7b"); // 28 heads, 4 KV heads: tp=14 divides 28, not 4.
        assert_eq!(
            plan_memory(&q, DType::Bf16, 14, 1, 1, 1 << 40, 64),
            Err(MemoryError::KvHeadsIndivisible { tp: 14, kv_heads: 4 })
        );
        assert_eq!(smallest_tp(&c, DType::Bf16, 1, 1, 1 << 40, 8, &[]), Err(MemoryError::NoCandidates));
        match smallest_tp(&c, DType::Bf16, 1, 1, 1 << 40, 2, &[3, 5, 4]) {
            Err(MemoryError::NoUsableTp { candidates, reasons }) => {
                assert_eq!(candidates, vec![3, 4, 5]);
                assert!(reasons.contains("tp=4 needs 4 cores"), "{reasons}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sliding_window_caps_the_cache() {
        let m = cfg("mistral-7b");
        let plan = |ctx| plan_memory(&m, DType::Bf16, 8, 1, ctx, 1 << 40, 8).map(|p| p.kv_cache);
        assert_eq!(plan(32768), plan(4096));
        assert_eq!(plan(4096), Ok(2 * 32 * 128 * 2 * 4096));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_parts_add_up(tp in 0u32..300, batch in prop_oneof![0u32..1024, any::<u32>()],
                                         ctx in prop_oneof![0u64..200_000, any::<u64>()],
                                         hbm in any::<u64>(), name_idx in 0usize..7) {
            let names = crate::llm::bundled_names();
            let c = cfg(names[name_idx % names.len()]);
            if let Ok(p) = plan_memory(&c, DType::F32, tp, batch, ctx, hbm, 512) {
                proptest::prop_assert_eq!(p.total, p.weights + p.kv_cache + p.activations);
                proptest::prop_assert!(p.total <= hbm);
            }
        }

        #[test]
        fn more_tp_never_needs_more_per_core(batch in 1u32..64, ctx in 1u64..32768) {
            let c = cfg("llama-3.1-70b");
            let mut last = u64::MAX;
            for tp in [1u32, 2, 4, 8, 16, 32, 64] {
                let p = plan_memory(&c, DType::Bf16, tp, batch, ctx, u64::MAX, 64);
                let total = match p { Ok(p) => p.total, Err(e) => panic!("{e}") };
                proptest::prop_assert!(total <= last, "tp={} {} > {}", tp, total, last);
                last = total;
            }
        }
    }
}
