use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ap::Ap;
use crate::ops::{ActFn, AluOp, Engine};

/// Index of an instruction in its [`crate::Program`] (printed `%12`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct InstId(pub u32);

impl fmt::Display for InstId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// A scalar operand of `tensor_scalar` / `activation`: an immediate or one
/// value per partition (a `[P, 1]` access pattern broadcast along the free axis).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    /// An FP32 immediate.
    Imm(f32),
    /// A `[P, 1]` tile, one value per partition.
    PerPartition(Ap),
}

/// One stage of `tensor_scalar`: `x op operand` (or `operand op x` when reversed).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalarStage {
    /// The operator.
    pub op: AluOp,
    /// The scalar operand.
    pub operand: Operand,
    /// Swap the operand order.
    pub reverse: bool,
}

/// What an instruction does. Semantics follow the NKI ISA (`shared/hw/isa.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `dst[M,N] (+)= stationary[K,M]ᵀ · moving[K,N]` on the Tensor engine
    /// (HW-ISA-MATMUL). `start` overwrites the PSUM region (first matmul of an
    /// accumulation group), otherwise it accumulates; `stop` marks the last.
    MatMul {
        /// PSUM destination `[M, N]`, FP32 (BF16 allowed on v4).
        dst: Ap,
        /// SBUF `[K, M]`, cached in the array.
        stationary: Ap,
        /// SBUF `[K, N]`, streamed.
        moving: Ap,
        /// Overwrite instead of accumulate.
        start: bool,
        /// Last matmul of the accumulation group.
        stop: bool,
    },
    /// `dst[F,P] = src[P,F]ᵀ` (HW-ISA-TRANSPOSE): Tensor engine (SBUF → PSUM,
    /// ≤ 128×128) or Vector engine (≤ 32×32).
    Transpose {
        /// Engine that runs it.
        engine: Engine,
        /// Destination `[F, P]`.
        dst: Ap,
        /// Source `[P, F]`.
        src: Ap,
    },
    /// `dst = in0 op in1` elementwise (HW-ISA-TT).
    TensorTensor {
        /// Vector or GpSimd.
        engine: Engine,
        /// Operator.
        op: AluOp,
        /// Destination.
        dst: Ap,
        /// First input.
        in0: Ap,
        /// Second input.
        in1: Ap,
    },
    /// `dst = (src op0 operand0) op1 operand1` (HW-ISA-TS).
    TensorScalar {
        /// Vector, Scalar or GpSimd.
        engine: Engine,
        /// Destination.
        dst: Ap,
        /// Input.
        src: Ap,
        /// First stage.
        first: ScalarStage,
        /// Optional second stage.
        second: Option<ScalarStage>,
    },
    /// Reduce the innermost `axes` free dimensions with `op` (HW-ISA-TREDUCE).
    TensorReduce {
        /// Vector or GpSimd.
        engine: Engine,
        /// Reduction operator (must be a legal reduction).
        op: AluOp,
        /// Destination: the source shape without the reduced dimensions.
        dst: Ap,
        /// Source.
        src: Ap,
        /// How many innermost free dims to reduce (1..=ndims).
        axes: u8,
        /// Negate the result.
        negate: bool,
    },
    /// `dst = func(src · scale + bias)`, optionally `acc[p] = Σ_f dst[p, f]`
    /// (HW-ISA-ACTIVATION, HW-ISA-ACT-REDUCE). Scalar engine.
    Activation {
        /// Function.
        func: ActFn,
        /// Destination.
        dst: Ap,
        /// Input.
        src: Ap,
        /// Multiplier (immediate or per partition).
        scale: Operand,
        /// Per-partition `[P, 1]` bias.
        bias: Option<Ap>,
        /// Per-partition `[P, 1]` sum of the outputs.
        acc: Option<Ap>,
    },
    /// `dst = src` with a dtype cast (HW-ISA-COPY).
    Copy {
        /// Vector, Scalar or GpSimd.
        engine: Engine,
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
    },
    /// `dst = pred != 0 ? on_true : on_false` elementwise (HW-ISA-SELECT).
    Select {
        /// Vector or GpSimd.
        engine: Engine,
        /// Destination.
        dst: Ap,
        /// Predicate.
        pred: Ap,
        /// Value where the predicate holds.
        on_true: Ap,
        /// Value elsewhere.
        on_false: Ap,
    },
    /// `dst[p, i…] = base + p·channel_multiplier + Σ steps[d]·i_d` in int32,
    /// then cast (HW-ISA-IOTA). GpSimd.
    Iota {
        /// Destination (SBUF).
        dst: Ap,
        /// Constant term.
        base: i32,
        /// Multiplier of the partition index.
        channel_multiplier: i32,
        /// Multiplier of each free index (one per free dim of `dst`).
        steps: [i32; 4],
    },
    /// Fill `dst` with `value` (HW-ISA-COPY, memset).
    Memset {
        /// Vector or GpSimd.
        engine: Engine,
        /// Destination.
        dst: Ap,
        /// Fill value (converted to the destination dtype).
        value: f64,
    },
    /// `dst[0, f] = op over p of src[p, f]` (GpSimd, HW-ISA-TREDUCE partition reduce).
    PartitionReduce {
        /// Reduction operator.
        op: AluOp,
        /// Destination `[1, F]`.
        dst: Ap,
        /// Source `[P, F]`.
        src: Ap,
    },
    /// `dst[p, f] = src[0, f]` for every destination partition (GpSimd).
    PartitionBroadcast {
        /// Destination `[P, F]`.
        dst: Ap,
        /// Source `[1, F]`.
        src: Ap,
    },
    /// `dst[i, f] = src[perm[i], f]` (GpSimd; a general form of
    /// `nc_stream_shuffle`, HW-ISA-SHUFFLE).
    PartitionShuffle {
        /// Destination `[P, F]`.
        dst: Ap,
        /// Source `[P', F]`.
        src: Ap,
        /// Source partition (relative to `src`) of each destination partition.
        perm: Vec<u8>,
    },
    /// DMA `dst = src` between any spaces, casting via FP32 if dtypes differ
    /// (HW-ISA-DMACOPY). Runs on DMA queue `queue` of the issuing core.
    DmaCopy {
        /// DMA queue (0..16).
        queue: u8,
        /// Destination.
        dst: Ap,
        /// Source.
        src: Ap,
    },
    /// Indirect DMA: `dst[p, :] = table[index[p], :]` (HW-ISA-DMACOPY
    /// `vector_offset`, software DGE). Out-of-range indices are an error.
    DmaGather {
        /// DMA queue (0..16).
        queue: u8,
        /// Destination `[P, F]` (SBUF).
        dst: Ap,
        /// HBM table: `partitions` rows of `partition_stride` elements, free dims = one row.
        table: Ap,
        /// `[P, 1]` int32/uint32 row indices (SBUF).
        index: Ap,
    },
}

/// Where an instruction runs on its core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// A compute engine's in-order queue.
    Engine(Engine),
    /// A DMA queue.
    Dma(u8),
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Engine(e) => f.write_str(e.name()),
            Unit::Dma(q) => write!(f, "dma.q{q}"),
        }
    }
}

/// The operands of one instruction (at most [`MAX_OPERANDS`]), as a slice of
/// `(name, access pattern, role)`.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    items: [(&'static str, &'a Ap, Role); MAX_OPERANDS],
    len: usize,
}

/// Most memory operands any instruction has.
pub const MAX_OPERANDS: usize = 6;

static NO_OPERAND: Ap = Ap {
    space: crate::Space::Sbuf,
    start_partition: 0,
    partitions: 0,
    partition_stride: 0,
    offset: 0,
    dims: [crate::Dim { stride: 0, size: 0 }; crate::MAX_FREE_DIMS],
    ndims: 0,
    dtype: trainyard_arch::DType::F32,
};

impl Default for Operands<'_> {
    fn default() -> Self {
        Operands { items: [("", &NO_OPERAND, Role::Read); MAX_OPERANDS], len: 0 }
    }
}

impl<'a> Operands<'a> {
    fn push(&mut self, item: (&'static str, &'a Ap, Role)) {
        // Every variant has at most MAX_OPERANDS operands.
        if self.len < MAX_OPERANDS {
            self.items[self.len] = item;
            self.len += 1;
        }
    }

    fn extend<const N: usize>(&mut self, items: [(&'static str, &'a Ap, Role); N]) {
        for item in items {
            self.push(item);
        }
    }
}

impl<'a> std::ops::Deref for Operands<'a> {
    type Target = [(&'static str, &'a Ap, Role)];
    fn deref(&self) -> &Self::Target {
        &self.items[..self.len]
    }
}

impl<'a> IntoIterator for Operands<'a> {
    type Item = (&'static str, &'a Ap, Role);
    type IntoIter = std::iter::Take<std::array::IntoIter<(&'static str, &'a Ap, Role), MAX_OPERANDS>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().take(self.len)
    }
}

impl<'a, 'b> IntoIterator for &'b Operands<'a> {
    type Item = &'b (&'static str, &'a Ap, Role);
    type IntoIter = std::slice::Iter<'b, (&'static str, &'a Ap, Role)>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::fmt::Debug for Operands<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// How an instruction uses an operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read only.
    Read,
    /// Written (PSUM accumulation also reads, but the write dominates ordering).
    Write,
}

/// One instruction: what it does, which core runs it, and which instructions
/// it waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inst {
    /// The operation.
    pub op: Op,
    /// Core (within the chip) that runs it.
    pub core: u16,
    /// Instructions that must complete before this one starts (semaphore waits).
    pub deps: Vec<InstId>,
}

impl Inst {
    /// An instruction on core 0 with no dependencies.
    pub fn new(op: Op) -> Self {
        Inst { op, core: 0, deps: Vec::new() }
    }
}

impl Op {
    /// The text mnemonic (`matmul`, `tensor_tensor`, `dma_copy`, ...).
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::MatMul { .. } => "matmul",
            Op::Transpose { .. } => "transpose",
            Op::TensorTensor { .. } => "tensor_tensor",
            Op::TensorScalar { .. } => "tensor_scalar",
            Op::TensorReduce { .. } => "tensor_reduce",
            Op::Activation { .. } => "activation",
            Op::Copy { .. } => "copy",
            Op::Select { .. } => "select",
            Op::Iota { .. } => "iota",
            Op::Memset { .. } => "memset",
            Op::PartitionReduce { .. } => "partition_reduce",
            Op::PartitionBroadcast { .. } => "partition_broadcast",
            Op::PartitionShuffle { .. } => "partition_shuffle",
            Op::DmaCopy { .. } => "dma_copy",
            Op::DmaGather { .. } => "dma_gather",
        }
    }

    /// The unit whose queue runs this instruction.
    pub fn unit(&self) -> Unit {
        match self {
            Op::MatMul { .. } => Unit::Engine(Engine::Tensor),
            Op::Activation { .. } => Unit::Engine(Engine::Scalar),
            Op::Iota { .. }
            | Op::PartitionReduce { .. }
            | Op::PartitionBroadcast { .. }
            | Op::PartitionShuffle { .. } => Unit::Engine(Engine::GpSimd),
            Op::Transpose { engine, .. }
            | Op::TensorTensor { engine, .. }
            | Op::TensorScalar { engine, .. }
            | Op::TensorReduce { engine, .. }
            | Op::Copy { engine, .. }
            | Op::Select { engine, .. }
            | Op::Memset { engine, .. } => Unit::Engine(*engine),
            Op::DmaCopy { queue, .. } | Op::DmaGather { queue, .. } => Unit::Dma(*queue),
        }
    }

    /// Every memory operand with its name and role, destination(s) first.
    /// (No heap allocation: this runs once per simulated instruction.)
    pub fn operands(&self) -> Operands<'_> {
        use Role::*;
        let mut v = Operands::default();
        match self {
            Op::MatMul { dst, stationary, moving, .. } => {
                v.extend([("dst", dst, Write), ("stationary", stationary, Read), ("moving", moving, Read)])
            }
            Op::Transpose { dst, src, .. } | Op::Copy { dst, src, .. } | Op::PartitionBroadcast { dst, src } => {
                v.extend([("dst", dst, Write), ("src", src, Read)])
            }
            Op::TensorTensor { dst, in0, in1, .. } => {
                v.extend([("dst", dst, Write), ("in0", in0, Read), ("in1", in1, Read)])
            }
            Op::TensorScalar { dst, src, first, second, .. } => {
                v.extend([("dst", dst, Write), ("src", src, Read)]);
                if let Operand::PerPartition(ap) = &first.operand {
                    v.push(("operand0", ap, Read));
                }
                if let Some(ScalarStage { operand: Operand::PerPartition(ap), .. }) = second {
                    v.push(("operand1", ap, Read));
                }
            }
            Op::TensorReduce { dst, src, .. }
            | Op::PartitionReduce { dst, src, .. }
            | Op::PartitionShuffle { dst, src, .. } => v.extend([("dst", dst, Write), ("src", src, Read)]),
            Op::Activation { dst, src, scale, bias, acc, .. } => {
                v.push(("dst", dst, Write));
                if let Some(acc) = acc {
                    v.push(("acc", acc, Write));
                }
                v.push(("src", src, Read));
                if let Operand::PerPartition(ap) = scale {
                    v.push(("scale", ap, Read));
                }
                if let Some(b) = bias {
                    v.push(("bias", b, Read));
                }
            }
            Op::Select { dst, pred, on_true, on_false, .. } => v.extend([
                ("dst", dst, Write),
                ("pred", pred, Read),
                ("on_true", on_true, Read),
                ("on_false", on_false, Read),
            ]),
            Op::Iota { dst, .. } | Op::Memset { dst, .. } => v.push(("dst", dst, Write)),
            Op::DmaCopy { dst, src, .. } => v.extend([("dst", dst, Write), ("src", src, Read)]),
            Op::DmaGather { dst, table, index, .. } => {
                v.extend([("dst", dst, Write), ("table", table, Read), ("index", index, Read)])
            }
        }
        v
    }

    /// Mutable access to every memory operand, same order as [`Op::operands`].
    pub fn operands_mut(&mut self) -> Vec<&mut Ap> {
        let mut v: Vec<&mut Ap> = Vec::with_capacity(4);
        match self {
            Op::MatMul { dst, stationary, moving, .. } => v.extend([dst, stationary, moving]),
            Op::Transpose { dst, src, .. } | Op::Copy { dst, src, .. } | Op::PartitionBroadcast { dst, src } => {
                v.extend([dst, src])
            }
            Op::TensorTensor { dst, in0, in1, .. } => v.extend([dst, in0, in1]),
            Op::TensorScalar { dst, src, first, second, .. } => {
                v.extend([dst, src]);
                if let Operand::PerPartition(ap) = &mut first.operand {
                    v.push(ap);
                }
                if let Some(ScalarStage { operand: Operand::PerPartition(ap), .. }) = second {
                    v.push(ap);
                }
            }
            Op::TensorReduce { dst, src, .. }
            | Op::PartitionReduce { dst, src, .. }
            | Op::PartitionShuffle { dst, src, .. } => v.extend([dst, src]),
            Op::Activation { dst, src, scale, bias, acc, .. } => {
                v.push(dst);
                if let Some(acc) = acc {
                    v.push(acc);
                }
                v.push(src);
                if let Operand::PerPartition(ap) = scale {
                    v.push(ap);
                }
                if let Some(b) = bias {
                    v.push(b);
                }
            }
            Op::Select { dst, pred, on_true, on_false, .. } => v.extend([dst, pred, on_true, on_false]),
            Op::Iota { dst, .. } | Op::Memset { dst, .. } => v.push(dst),
            Op::DmaCopy { dst, src, .. } => v.extend([dst, src]),
            Op::DmaGather { dst, table, index, .. } => v.extend([dst, table, index]),
        }
        v
    }

    /// FLOPs this instruction performs (2·K·M·N for matmul, one per output
    /// element otherwise; 0 for data movement).
    pub fn flops(&self) -> u64 {
        match self {
            Op::MatMul { stationary, moving, .. } => {
                2 * stationary.partitions as u64 * stationary.free_size() * moving.free_size()
            }
            Op::TensorTensor { dst, .. } | Op::Activation { dst, .. } | Op::Select { dst, .. } => dst.elements(),
            Op::TensorScalar { dst, second, .. } => dst.elements() * if second.is_some() { 2 } else { 1 },
            Op::TensorReduce { src, .. } | Op::PartitionReduce { src, .. } => src.elements(),
            _ => 0,
        }
    }
}
