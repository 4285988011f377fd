//! The streaming driver of the elementwise kernels: same-shape operands are
//! contiguous row-major tensors, so any rank is tiled as one flat array of
//! elements (tiny last dimensions cost nothing extra: rows are folded into
//! the free axis). Blocks of `[128, F]` elements rotate through tile pools
//! (one per input, three buffers) so the load of the next block, the compute
//! of this one and the store of the previous one overlap; loads, second
//! loads and stores use separate DMA queues.

use trainyard_arch::{ChipSpec, DType};

use super::common::{blocks, hbm_block, partitions, per_partition, split, Q_LOAD, Q_LOAD2, Q_STORE};
use crate::builder::{HbmTensor, KernelBuilder};
use crate::error::BuildError;
use crate::view::View;

/// Buffers per input pool: load, compute and store in flight at once.
pub(crate) const BUFS: usize = 3;

/// SBUF bytes per partition the pools of one kernel may take.
const POOL_BUDGET: usize = 96 * 1024;

/// Largest free size of one block (elements per partition).
const F_MAX: usize = 8192;

/// Smallest free size worth a block of its own (≥ 1 KiB per partition for 16-bit).
const F_MIN: usize = 512;

/// Largest free size per block for `inputs` pools of `dtype`.
pub(crate) fn f_max(dtype: DType, inputs: usize) -> usize {
    let f = POOL_BUDGET / (inputs.max(1) * BUFS * dtype.size());
    (f / 64 * 64).clamp(64, F_MAX)
}

/// The compute of one block: `(builder, core, input tiles [parts, per])` →
/// the view to store.
pub(crate) type BlockBody<'a> = dyn FnMut(&mut KernelBuilder, u16, &[View]) -> Result<View, BuildError> + 'a;

/// Streams `inputs` (all with `numel` elements of `dtype`) through SBUF
/// block by block over `cores` cores; `body` emits the compute of one block
/// and returns the view to store into `output`. The pools are freed when
/// each core's blocks are issued.
#[allow(clippy::too_many_arguments)]
pub(crate) fn flat_map(
    kb: &mut KernelBuilder,
    chip: &ChipSpec,
    cores: u16,
    numel: usize,
    dtype: DType,
    inputs: &[&HbmTensor],
    output: &HbmTensor,
    body: &mut BlockBody<'_>,
) -> Result<(), BuildError> {
    let p = partitions(chip);
    let fmax = f_max(dtype, inputs.len());
    let flats: Vec<View> = inputs.iter().map(|t| t.view().reshape(&[numel])).collect();
    let out = output.view().reshape(&[numel]);
    for (core, range) in split(numel, cores as usize, p).into_iter().enumerate() {
        let core = core as u16;
        kb.core(core)?;
        let per = per_partition(range.len(), p, F_MIN, fmax);
        let bl = blocks(range, p, per, true);
        // The one-partition tail may be wider than the blocks before it.
        let width = bl.iter().map(|b| b.per).max().unwrap_or(1);
        let mut pools = Vec::with_capacity(inputs.len());
        for _ in inputs {
            pools.push(kb.sbuf_pool(&[p, width], dtype, BUFS)?);
        }
        for b in bl {
            let mut views = Vec::with_capacity(inputs.len());
            for (i, (pool, src)) in pools.iter_mut().zip(&flats).enumerate() {
                let t = pool.next().part(0..b.parts).cols(0..b.per);
                kb.dma_on(if i == 0 { Q_LOAD } else { Q_LOAD2 }, &t, hbm_block(src, &b, 1))?;
                views.push(t);
            }
            let result = body(kb, core, &views)?;
            kb.dma_on(Q_STORE, hbm_block(&out, &b, 1), &result)?;
        }
        // Nothing else is allocated on this core by the stream.
        pools.into_iter().try_for_each(|p| kb.free_pool(p))?;
    }
    Ok(())
}
