//! What the row-wise normalisations share: the `[rows, cols]` view of the
//! input, the SBUF budget that decides between keeping whole rows resident
//! and streaming them in column chunks, and the software pipeline that emits
//! the statistics of the next row block before the normalisation of the
//! current one, so that the in-order engine queues overlap blocks.

use std::collections::VecDeque;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, Engine};

use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::library::elementwise::common::{any_shape, chunks, kernel_err, numel, Allocs, Block, Q_AUX};
use crate::library::KernelArgs;
use crate::view::View;

/// SBUF bytes per partition a norm kernel may plan for (of 192–224 KiB),
/// leaving room for small statistics tiles.
pub(crate) const SBUF_BUDGET: usize = 180 * 1024;

/// Column chunk width when rows are too long to stay resident.
pub(crate) const CHUNK: usize = 4096;

/// How many row blocks the statistics run ahead of the normalisation.
pub(crate) const AHEAD: usize = 2;

/// `[rows, cols]`: the last axis is normalised, the others are rows.
pub(crate) fn rows_cols(kernel: &str, args: &KernelArgs) -> Result<(usize, usize), BuildError> {
    let shape = any_shape(kernel, args)?;
    let cols = *shape.last().ok_or_else(|| kernel_err(kernel, "empty shape"))?;
    Ok((numel(kernel, &shape[..shape.len() - 1])?, cols))
}

/// Buffers of the resident row pool that fit next to `fixed` bytes of other
/// tiles per partition: 4 when possible (load, two in compute, store), 3 at
/// least; `None` when whole rows do not fit and must be streamed.
pub(crate) fn resident_bufs(cols: usize, dtype: DType, fixed: usize) -> Option<usize> {
    let row = cols * dtype.size();
    (3..=6).rev().find(|&n| n * row + fixed <= SBUF_BUDGET)
}

/// The two halves of a row-block pipeline.
pub(crate) trait Stages {
    /// What the first half hands the second.
    type State;
    /// Loads a block and computes its statistics.
    fn front(&mut self, kb: &mut KernelBuilder, block: &Block) -> Result<Self::State, BuildError>;
    /// Normalises a block and stores it.
    fn back(&mut self, kb: &mut KernelBuilder, state: Self::State) -> Result<(), BuildError>;
}

/// Emits `front` of block `i + AHEAD` before `back` of block `i`: the
/// Vector/Scalar/GpSimd queues are in order, so this keeps the statistics of
/// one block from waiting behind the normalisation of the previous one.
pub(crate) fn pipelined<S: Stages>(kb: &mut KernelBuilder, stages: &mut S, blocks: &[Block]) -> Result<(), BuildError> {
    let mut pending = VecDeque::with_capacity(AHEAD + 1);
    for b in blocks {
        pending.push_back(stages.front(kb, b)?);
        if pending.len() > AHEAD {
            if let Some(s) = pending.pop_front() {
                stages.back(kb, s)?;
            }
        }
    }
    while let Some(s) = pending.pop_front() {
        stages.back(kb, s)?;
    }
    Ok(())
}

/// The chip's partitions (rows per block).
pub(crate) fn partitions(chip: &ChipSpec) -> usize {
    chip.core.sbuf.partitions as usize
}

/// `[P, cols]` tiles holding HBM vectors (`[cols]` each) on every
/// partition, without reading them once per partition: one DMA of each row
/// into its staging view (`[1, cols]`), then per 512 columns a K = 1 matmul
/// of the `ones` row (`[1, P]`) with it on the otherwise idle Tensor engine
/// (exact) and a PSUM-to-SBUF copy on the vector's engine (Vector copy or
/// Scalar identity activation), two banks per copy. The vectors' matmuls are
/// interleaved so their copies run on their engines concurrently. A stride-0
/// broadcast DMA would move `P` times the bytes through the DMA engines and
/// HBM. The tiles go to `allocs`, freed when the kernel ends: reusing this
/// PSUM or the staging rows earlier would order later work behind these reads.
pub(crate) fn replicate(
    kb: &mut KernelBuilder,
    vectors: &[(&View, View, Engine)],
    ones: &View,
    dtype: DType,
    allocs: &mut Allocs,
) -> Result<Vec<View>, BuildError> {
    let p = partitions(kb.chip());
    let n = (kb.chip().core.tensor.moving_fmax as usize).min(kb.chip().psum_bank_bytes() as usize / 4);
    let wide = 2 * n;
    let mut outs = Vec::with_capacity(vectors.len());
    let mut pools = Vec::with_capacity(vectors.len());
    let mut cols = 0;
    for (v, row, _) in vectors {
        cols = row.shape().get(1).copied().unwrap_or(1);
        kb.dma_on(Q_AUX, row, v.reshape(&[1, cols]))?;
        outs.push(allocs.sbuf(kb, &[p, cols], dtype)?);
        pools.push(kb.psum_pool(&[p, wide], DType::F32, 2)?);
    }
    for c in chunks(cols, wide) {
        for (((_, row, engine), out), ps) in vectors.iter().zip(&outs).zip(pools.iter_mut()) {
            let acc = ps.next().cols(0..c.len());
            for s in chunks(c.len(), n) {
                kb.matmul(acc.cols(s.clone()), ones, row.cols(c.start + s.start..c.start + s.end), true, true)?;
            }
            if *engine == Engine::Scalar {
                kb.activation(ActFn::Identity, out.cols(c.clone()), &acc, 1.0, None, None)?;
            } else {
                kb.copy(*engine, out.cols(c.clone()), &acc)?;
            }
        }
    }
    pools.into_iter().for_each(|pool| allocs.keep_pool(pool));
    Ok(outs)
}
