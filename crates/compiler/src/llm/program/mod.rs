//! Decoder programs built from the kernel library: one prefill or one decode step of a
//! Llama-family model, tensor-parallel over cores, as one [`Program`].
//!
//! [`build_decoder`] emits, for a [`DecoderSpec`] (phase, batch, dtype, TP degree):
//!
//! * **prefill** of `batch` prompts of `len` tokens (`T = batch·len` rows, sequence-major):
//!   embedding gather → per layer [RMSNorm, q/k/v projections (+ bias), q/k RMSNorm (Qwen3),
//!   RoPE, K/V written into the cache `[B, Hkv, len, D]`, q re-laid to `[B, Hq, len, D]`,
//!   causal flash attention (GQA) reading the cache, output re-laid to `[T, Hq·D]`, o
//!   projection, all-reduce, residual add, RMSNorm, MLP (fused gate/up/SiLU/down, or separate
//!   matmuls and SwiGLU when the MLP has biases), all-reduce, residual add] → the last row of
//!   each sequence → final RMSNorm → LM head → logits → arg-max;
//! * **decode** of one token per sequence at context `C` (the new token is position `C − 1`):
//!   the same, with the new K/V written at position `C − 1` of caches `[B, Hkv, C, D]` that
//!   the program updates in place, and decode attention over all `C` positions.
//!
//! **Tensors.** Weights are HBM inputs named by their Hugging Face names (see
//! [`weights`](crate::llm::weights)); with `tp > 1` each core's shard is `NAME.shard{r}`.
//! Projection matrices are stored as `[in, out]`, the transpose of the checkpoint's
//! `[out, in]`, as an inference compiler lays them out when it loads a model, so the matmul
//! streams weights without transposing them on the device; [`WeightSlice::extract`] makes a
//! device tensor from the checkpoint tensor. Norm weights and the embedding table are held
//! once per chip (every core of a chip reads the same HBM). With tied embeddings the LM
//! head is a transposed copy of the embedding. Other inputs: `input_ids [T]` i32 and the RoPE
//! tables `rope.cos` / `rope.sin` `[T, D/2]` at the step's positions. The KV cache of layer
//! `l` is `cache.{l}.key` / `cache.{l}.value` (`.shard{r}`) `[B, kv heads of the core, L,
//! D]`: outputs of a prefill (`L = len`), inputs of a decode step (`L = C`) that the step
//! updates in place at position `C − 1` (the caller carries positions `0..C−1` over from the
//! previous step). Outputs: `logits [B, V]` f32 of each sequence's last position and
//! `next_token [B]` u32, their arg-max (first index on ties).
//!
//! **Op spans.** Every kernel call is recorded as an [`OpSpan`] (label, [`OpCategory`],
//! layer, instruction range) so a run's time can be split per op and per collective.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Serialize;
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::Program;
use trainyard_kernels::BuildError;

use super::config::LlmConfig;
use super::reference::HostWeight;

mod emit;
mod host;
mod replicate;
pub mod shard;

pub use host::HostCache;
pub use shard::{shards, Shard};

/// Which step a program computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// The prompts, `len` tokens each, from empty caches.
    Prefill {
        /// Tokens per prompt.
        len: usize,
    },
    /// One new token per sequence; `context` counts it (the caches hold `context − 1` tokens before).
    Decode {
        /// Tokens per sequence after the step.
        context: usize,
    },
}

impl Phase {
    /// Rows the step processes per sequence.
    pub fn rows_per_sequence(&self) -> usize {
        match *self {
            Phase::Prefill { len } => len,
            Phase::Decode { .. } => 1,
        }
    }

    /// Positions in the KV cache after the step.
    pub fn cache_len(&self) -> usize {
        match *self {
            Phase::Prefill { len } => len,
            Phase::Decode { context } => context,
        }
    }

    /// Positions of the rows of one sequence.
    pub fn positions(&self) -> Range<u64> {
        match *self {
            Phase::Prefill { len } => 0..len as u64,
            Phase::Decode { context } => context as u64 - 1..context as u64,
        }
    }
}

/// What to build.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    /// Prefill or decode.
    pub phase: Phase,
    /// Sequences in flight (all of the same length).
    pub batch: usize,
    /// Element type of weights, activations and the KV cache (logits are f32).
    pub dtype: DType,
    /// Tensor-parallel degree: ranks `0..tp` run on cores `0..tp` (chip `r / cores per chip`).
    pub tp: u32,
    /// How MoE layers route tokens (ignored for dense models).
    pub moe: MoeRouting,
    /// MoE experts spread over the ranks (`E/tp` whole experts each) instead of every rank
    /// holding a `1/tp` column slice of every expert.
    pub expert_parallel: bool,
    /// Emit layers 0–2 through the builder and copy layer 2's instructions for the others
    /// when that is exact (see `replicate`); `false` emits every layer.
    pub reuse_layers: bool,
    /// A barrier ([`KernelBuilder::barrier`](trainyard_kernels::KernelBuilder::barrier))
    /// before every layer and before the head, so that each layer starts on an idle
    /// machine and its time does not depend on the layers before it (timing by
    /// extrapolation, see [`with_layers`]).
    pub layer_barriers: bool,
}

/// How a mixture-of-experts layer sends tokens to experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeRouting {
    /// Every expert on every token, gated by the top-k renormalised router probabilities
    /// (zero outside the top k): exact, `E/k` times the expert work (functional runs).
    Dense,
    /// `⌈T·k/E⌉` token slots per expert, filled round-robin (slot `t·k + j` to expert
    /// `(t·k + j) mod E`): the load of uniform routing, not data-dependent (timed-only runs).
    Uniform,
}

/// What an op does, for time shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpCategory {
    /// Token embedding gather.
    Embedding,
    /// RMSNorm.
    Norm,
    /// Projections and the LM head.
    Matmul,
    /// Flash or decode attention.
    Attention,
    /// RoPE, residual adds, SwiGLU.
    Elementwise,
    /// Writing new keys and values into the cache.
    KvCache,
    /// Re-laying tensors between kernels (`[T, H, D]` ↔ `[B, H, S, D]`, last rows).
    Layout,
    /// MLP (fused) or MoE experts.
    Mlp,
    /// MoE router and top-k.
    Router,
    /// All-reduce, all-gather, all-to-all.
    Collective,
    /// Arg-max of the logits.
    Sampling,
    /// Barriers at layer boundaries ([`DecoderSpec::layer_barriers`]).
    Barrier,
}

impl OpCategory {
    /// The snake-case name (as in JSON).
    pub const fn name(self) -> &'static str {
        match self {
            OpCategory::Embedding => "embedding",
            OpCategory::Norm => "norm",
            OpCategory::Matmul => "matmul",
            OpCategory::Attention => "attention",
            OpCategory::Elementwise => "elementwise",
            OpCategory::KvCache => "kv_cache",
            OpCategory::Layout => "layout",
            OpCategory::Mlp => "mlp",
            OpCategory::Router => "router",
            OpCategory::Collective => "collective",
            OpCategory::Sampling => "sampling",
            OpCategory::Barrier => "barrier",
        }
    }
}

impl fmt::Display for OpCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One op of the program: a contiguous range of instructions (over all the cores it runs on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpSpan {
    /// Op name without the layer (`q_proj`, `attention`, `all_reduce.mlp`, ...).
    pub label: String,
    /// Category.
    pub category: OpCategory,
    /// Layer, `None` outside the layers.
    pub layer: Option<u32>,
    /// Instruction ids `[start, end)`.
    pub insts: Range<u32>,
}

/// Rows, columns and orientation of a device tensor cut from a checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum WeightSlice {
    /// The whole tensor as stored.
    Whole,
    /// Elements `range` of a 1-D tensor.
    Range(Range<usize>),
    /// `(W[rows, cols])ᵀ` of a 2-D `[out, in]` tensor, zero-padded to `width` columns
    /// (device shape `[cols.len(), width]`).
    Transposed {
        /// Checkpoint rows (outputs) taken.
        rows: Range<usize>,
        /// Checkpoint columns (inputs) taken.
        cols: Range<usize>,
        /// Device columns (≥ `rows.len()`).
        width: usize,
    },
}

impl WeightSlice {
    /// The device values of this slice of `w`, or why `w` does not have them.
    pub fn extract(&self, name: &str, w: &HostWeight) -> Result<Vec<f32>, ProgramError> {
        let bad = |why: String| ProgramError::WeightSlice { name: name.to_string(), why };
        let count: usize = w.shape.iter().product();
        if w.values.len() != count {
            return Err(bad(format!("{} values for shape {:?}", w.values.len(), w.shape)));
        }
        match self {
            WeightSlice::Whole => Ok(w.values.clone()),
            WeightSlice::Range(r) => match (w.shape.as_slice(), w.values.get(r.clone())) {
                ([_], Some(v)) => Ok(v.to_vec()),
                _ => Err(bad(format!("elements {r:?} of shape {:?}", w.shape))),
            },
            WeightSlice::Transposed { rows, cols, width } => {
                let [out, inp] = <[usize; 2]>::try_from(w.shape.as_slice())
                    .map_err(|_| bad(format!("a 2-D tensor is needed, found shape {:?}", w.shape)))?;
                if rows.end > out || cols.end > inp || *width < rows.len() {
                    return Err(bad(format!("rows {rows:?} × cols {cols:?} (width {width}) of [{out}, {inp}]")));
                }
                let mut v = vec![0.0f32; cols.len() * width];
                for (j, r) in rows.clone().enumerate() {
                    for (i, c) in cols.clone().enumerate() {
                        v[i * width + j] = w.values[r * inp + c];
                    }
                }
                Ok(v)
            }
        }
    }
}

/// What the caller binds to an input of a decoder program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TensorSource {
    /// A slice of the checkpoint weight `name` (Hugging Face name).
    Weight {
        /// Checkpoint tensor.
        name: String,
        /// Which part, in which layout.
        slice: WeightSlice,
    },
    /// Token ids `[T]` (i32), sequence-major.
    TokenIds,
    /// `cos` of the RoPE table at each row's position `[T, D/2]`.
    RopeCos,
    /// `sin` of the RoPE table `[T, D/2]`.
    RopeSin,
    /// A KV cache updated in place (decode).
    Cache(CacheTensor),
    /// Several checkpoint weights (experts) cut alike and stacked along a new leading axis.
    Stacked {
        /// Checkpoint tensors, in stacking order.
        names: Vec<String>,
        /// The cut of each.
        slice: WeightSlice,
    },
    /// MoE dispatch `[n·cap]` (i32): the token of each slot of experts `experts`
    /// ([`MoeRouting::Uniform`]).
    MoeDispatch {
        /// The experts whose slots these are.
        experts: Range<usize>,
    },
    /// MoE combine `[T·k]` (i32): the slot (among those of `experts`) of each token's `j`-th
    /// expert, 0 when that expert is not among them.
    MoeCombine {
        /// The experts whose slots are gathered.
        experts: Range<usize>,
    },
    /// MoE `[T, k, 1]`: 1 where a token's `j`-th expert is among `experts`, else 0.
    MoeLocal {
        /// The experts of the rank.
        experts: Range<usize>,
    },
    /// Token-split expert parallelism, rank `rank`: the token of each slot it sends, by
    /// destination rank `[n·c]` (its tokens are `rank·T/n..`; slot `s = t·k + j` of its
    /// `t`-th token goes to rank `s mod n` as that rank's `(s / n)`-th from it).
    MoeSendIds {
        /// The rank.
        rank: u32,
    },
    /// Token-split expert parallelism: where each of the rank's tokens' `k` slots comes back
    /// `[T/n·k]` (row `(s mod n)·c + s / n`).
    MoeReturnIds {
        /// The rank.
        rank: u32,
    },
}

/// One KV-cache tensor `[B, kv_heads.len(), L, D]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheTensor {
    /// Device tensor name.
    pub name: String,
    /// Layer.
    pub layer: u32,
    /// Values (else keys).
    pub value: bool,
    /// The model's KV heads it holds.
    pub kv_heads: Range<usize>,
}

/// A built decoder step.
#[derive(Clone, Debug)]
pub struct DecoderProgram {
    /// What was built.
    pub spec: DecoderSpec,
    /// The program.
    pub program: Program,
    /// Its ops, in emission order.
    pub ops: Vec<OpSpan>,
    /// What each input holds.
    pub inputs: BTreeMap<String, TensorSource>,
    /// The KV caches (prefill: outputs; decode: inputs updated in place).
    pub caches: Vec<CacheTensor>,
    /// Statements about how the program was built that a reader of its figures needs.
    pub notes: Vec<String>,
}

/// Output holding the logits `[B, V]` (f32).
pub const LOGITS: &str = "logits";
/// Output holding the next token of each sequence `[B]` (u32).
pub const NEXT_TOKEN: &str = "next_token";
/// Input holding the token ids `[T]` (i32).
pub const INPUT_IDS: &str = "input_ids";

/// Why a decoder program could not be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProgramError {
    /// The TP degree does not split the model.
    #[error("tp={tp}: {why}")]
    Sharding {
        /// The TP degree.
        tp: u32,
        /// Why not.
        why: String,
    },
    /// The request is outside what the programs support.
    #[error("{what} is not supported: {why}")]
    Unsupported {
        /// The feature.
        what: String,
        /// Why, and what is.
        why: String,
    },
    /// A batch, length or context of zero, or a context beyond the model's.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A kernel could not be emitted.
    #[error("{op}: {source}")]
    Build {
        /// The op being emitted (`layers.3.q_proj`).
        op: String,
        /// The builder's error.
        source: BuildError,
    },
    /// A checkpoint tensor does not have the slice a device tensor needs.
    #[error("weight `{name}`: {why}")]
    WeightSlice {
        /// Checkpoint tensor.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// `cfg` with only its first `layers` decoder layers (at least 1), for timing a model from
/// a few of its layers: every layer of a config has the same shape, so layer `l` of the cut
/// model is layer `l` of the whole one.
pub fn with_layers(cfg: &LlmConfig, layers: u32) -> LlmConfig {
    LlmConfig { num_layers: layers.max(1), ..cfg.clone() }
}

/// Builds the program of one prefill or decode step (see the [module docs](self)).
pub fn build_decoder(cfg: &LlmConfig, chip: &ChipSpec, spec: &DecoderSpec) -> Result<DecoderProgram, ProgramError> {
    emit::build(cfg, chip, spec)
}

#[cfg(test)]
mod tests;
