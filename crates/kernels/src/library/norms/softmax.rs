//! Numerically stable softmax over the last axis, optionally causal.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::rows::{partitions, pipelined, resident_bufs, rows_cols, Stages, CHUNK};
use crate::builder::{KernelBuilder, TilePool};
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{
    blocks, bound, check_emit, chunks, input, kernel_err, output, sig, Allocs, Block, Q_AUX, Q_LOAD, Q_STORE,
};
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::view::View;

/// `y = softmax(x)` along the last axis of `x` (`[rows, cols]`; leading axes
/// are rows), computed as `exp(x − max) / Σ exp(x − max)`.
///
/// Tiling: 128 rows per block on the partitions. When whole rows fit in SBUF
/// (up to ~30K columns for 16-bit data) each block is loaded once as one
/// `[128, cols]` DMA (16 KiB per partition at 8192 bf16 columns) into a pool
/// of three to six buffers and processed in place: the Vector engine finds
/// `−max` (`tensor_reduce` with negate, exact in the data dtype and at half
/// cost for bf16), the Scalar engine computes `exp(x − max)` with the `−max`
/// column as the activation's bias and the row sums in its accumulator in the
/// same pass, and the Vector engine takes the reciprocal and scales the block
/// (a per-partition `tensor_scalar` in 16-bit perf mode); then one DMA stores
/// it. The statistics run two blocks ahead of the scaling
/// (`rows::pipelined`) so the in-order Vector queue never waits on the
/// Scalar engine.
/// Longer rows stream in 4096-column chunks twice: the first pass keeps a
/// (max, sum) pair per chunk, rescaled to the row maximum afterwards (online
/// softmax), the second recomputes `exp` and scales.
///
/// `mask=causal` masks column `j > row i`, where `i` is the row's index along
/// the second-to-last axis (so `[batch, heads, q, k]` scores are masked per
/// matrix; row blocks never straddle two matrices): only columns `0..=i` of a block
/// are loaded (blocks right of the diagonal are skipped and stored as zeros
/// from a zero tile), and the 128-column diagonal piece gets an additive
/// `−3e38` upper-triangular mask built once per core with `iota`.
pub(crate) struct Softmax;

const OPTIONS: &[(&str, &str)] = &[("mask", "none (default) or causal (column j > row i is masked out)")];

/// Added to masked logits: far below any real value, finite in f32 and
/// bf16 (f16 rounds it to −inf); `exp` of it is 0.
const MASKED: f32 = -3.0e38;

/// Width of the zero tile stores of the masked region come from.
const ZERO_COLS: usize = 2048;

fn causal(kernel: &str, args: &KernelArgs) -> Result<bool, BuildError> {
    match args.string("mask", "none") {
        "none" => Ok(false),
        "causal" => Ok(true),
        v => Err(kernel_err(kernel, format!("option `mask={v}`: expected none or causal"))),
    }
}

/// Rows per matrix: the size of the second-to-last axis (1 for a vector).
fn period(args: &KernelArgs) -> usize {
    let n = args.shape.len();
    if n >= 2 {
        args.shape[n - 2].max(1)
    } else {
        1
    }
}

/// Per-core constants of the causal mask.
struct Mask {
    /// `[P, P]` f32: `MASKED` where column > partition, else 0.
    tri: View,
    /// `[P, ZERO_COLS]` zeros of the data dtype.
    zeros: View,
}

/// Everything one core's blocks need.
struct Core<'a> {
    x2: &'a View,
    y2: &'a View,
    cols: usize,
    /// Rows per matrix (the second-to-last axis) for the causal mask.
    period: usize,
    mask: Option<Mask>,
    xin: TilePool,
    /// `[P, 1]` −max in the data dtype (bf16 reductions run at half cost).
    nmax: TilePool,
    /// `[P, 2]` f32: sum, 1/sum.
    stats: TilePool,
}

impl Core<'_> {
    /// Row positions within their matrix (what the causal mask compares).
    fn positions(&self, rows: &Range<usize>) -> Range<usize> {
        let first = rows.start % self.period;
        first..first + rows.len()
    }

    /// Valid (unmasked) columns of a block of rows.
    fn valid(&self, rows: &Range<usize>) -> usize {
        if self.mask.is_some() {
            self.positions(rows).end.min(self.cols)
        } else {
            self.cols
        }
    }

    /// Adds the causal mask to the part of `x` (columns `cols` of rows
    /// `rows`) that crosses the diagonal.
    fn mask_diagonal(
        &self,
        kb: &mut KernelBuilder,
        x: &View,
        rows: &Range<usize>,
        cols: &Range<usize>,
    ) -> Result<(), BuildError> {
        let Some(m) = &self.mask else { return Ok(()) };
        let pos = self.positions(rows);
        let (j0, j1) = (cols.start.max(pos.start), cols.end.min(pos.end));
        if j0 < j1 {
            let xs = x.cols(j0 - cols.start..j1 - cols.start);
            let ms = m.tri.part(0..rows.len()).cols(j0 - pos.start..j1 - pos.start);
            kb.tensor_tensor(Engine::Vector, AluOp::Add, &xs, &xs, &ms)?;
        }
        Ok(())
    }

    /// Stores zeros into the masked columns `valid..cols` of `rows`.
    fn store_zeros(&self, kb: &mut KernelBuilder, rows: &Range<usize>, valid: usize) -> Result<(), BuildError> {
        let Some(m) = &self.mask else { return Ok(()) };
        for c in chunks(self.cols - valid, ZERO_COLS) {
            let dst = self.y2.rows(rows.clone()).cols(valid + c.start..valid + c.end);
            kb.dma_on(Q_AUX, dst, m.zeros.part(0..rows.len()).cols(0..c.len()))?;
        }
        Ok(())
    }

    /// Rows too long for SBUF: two passes over column chunks.
    fn streamed(&mut self, kb: &mut KernelBuilder, b: &Block) -> Result<(), BuildError> {
        let rows = b.range();
        let p = rows.len();
        let valid = self.valid(&rows);
        let cs = chunks(valid, CHUNK);
        let n = cs.len();
        let negm = kb.sbuf_tile(&[partitions(kb.chip()), n], DType::F32)?;
        let sums = kb.sbuf_tile(&[partitions(kb.chip()), n], DType::F32)?;
        let (negm_v, sums_v) = (negm.part(0..p), sums.part(0..p));
        for (j, c) in cs.iter().enumerate() {
            let x = self.xin.next().part(0..p).cols(0..c.len());
            kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()).cols(c.clone()))?;
            self.mask_diagonal(kb, &x, &rows, c)?;
            kb.tensor_reduce(Engine::Vector, AluOp::Max, negm_v.cols(j..j + 1), &x, 1, true)?;
            let (bias, acc) = (negm_v.cols(j..j + 1), sums_v.cols(j..j + 1));
            kb.activation(ActFn::Exp, &x, &x, 1.0, Some(&bias), Some(&acc))?;
        }
        // Row max M = max_j m_j; total = Σ_j sum_j · exp(m_j − M).
        let st = self.stats.next().part(0..p);
        let neg_max = kb.sbuf_tile(&[partitions(kb.chip()), 1], DType::F32)?;
        let nm = neg_max.part(0..p);
        kb.tensor_reduce(Engine::Vector, AluOp::Min, &nm, &negm_v, 1, false)?;
        kb.activation(ActFn::Exp, &negm_v, &negm_v, -1.0, Some(&nm), None)?;
        kb.tensor_tensor(Engine::Vector, AluOp::Mul, &sums_v, &sums_v, &negm_v)?;
        kb.tensor_reduce(Engine::Vector, AluOp::Add, st.cols(0..1), &sums_v, 1, false)?;
        kb.tensor_scalar(Engine::Vector, st.cols(1..2), st.cols(0..1), Stage::new(AluOp::Div, 1.0).reversed(), None)?;
        for c in &cs {
            let x = self.xin.next().part(0..p).cols(0..c.len());
            kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()).cols(c.clone()))?;
            self.mask_diagonal(kb, &x, &rows, c)?;
            kb.activation(ActFn::Exp, &x, &x, 1.0, Some(&nm), None)?;
            kb.tensor_scalar(Engine::Vector, &x, &x, Stage::new(AluOp::Mul, st.cols(1..2)), None)?;
            kb.dma_on(Q_STORE, self.y2.rows(rows.clone()).cols(c.clone()), &x)?;
        }
        self.store_zeros(kb, &rows, valid)?;
        for t in [negm, sums, neg_max] {
            kb.free(t)?;
        }
        Ok(())
    }
}

/// A block between its statistics and its scaling.
struct Pending {
    x: View,
    st: View,
    rows: Range<usize>,
    valid: usize,
}

impl Stages for Core<'_> {
    type State = Pending;

    fn front(&mut self, kb: &mut KernelBuilder, b: &Block) -> Result<Pending, BuildError> {
        let rows = b.range();
        let p = rows.len();
        let valid = self.valid(&rows);
        let x = self.xin.next().part(0..p).cols(0..valid);
        kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()).cols(0..valid))?;
        self.mask_diagonal(kb, &x, &rows, &(0..valid))?;
        let nmax = self.nmax.next().part(0..p);
        kb.tensor_reduce(Engine::Vector, AluOp::Max, &nmax, &x, 1, true)?;
        let st = self.stats.next().part(0..p);
        kb.activation(ActFn::Exp, &x, &x, 1.0, Some(&nmax), Some(&st.cols(0..1)))?;
        Ok(Pending { x, st, rows, valid })
    }

    fn back(&mut self, kb: &mut KernelBuilder, s: Pending) -> Result<(), BuildError> {
        let Pending { x, st, rows, valid } = s;
        kb.tensor_scalar(Engine::Vector, st.cols(1..2), st.cols(0..1), Stage::new(AluOp::Div, 1.0).reversed(), None)?;
        kb.tensor_scalar(Engine::Vector, &x, &x, Stage::new(AluOp::Mul, st.cols(1..2)), None)?;
        kb.dma_on(Q_STORE, self.y2.rows(rows.clone()).cols(0..valid), &x)?;
        self.store_zeros(kb, &rows, valid)
    }
}

/// Builds the `[P, P]` causal mask and the zero tile on the current core
/// (kept in `allocs`).
fn mask_tiles(kb: &mut KernelBuilder, p: usize, dtype: DType, allocs: &mut Allocs) -> Result<Mask, BuildError> {
    let idx = kb.sbuf_tile(&[p, p], DType::I32)?;
    // idx[q, t] = t − q: positive right of the diagonal.
    kb.iota(&idx, 0, -1, &[1])?;
    let tri = allocs.sbuf(kb, &[p, p], DType::F32)?;
    kb.tensor_scalar(Engine::Vector, &tri, &idx, Stage::new(AluOp::Gt, 0.0), Some(Stage::new(AluOp::Mul, MASKED)))?;
    kb.free(idx)?;
    let zeros = allocs.sbuf(kb, &[p, ZERO_COLS], dtype)?;
    kb.memset(Engine::GpSimd, &zeros, 0.0)?;
    Ok(Mask { tri, zeros })
}

impl Kernel for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn family(&self) -> &'static str {
        "norms"
    }
    fn summary(&self) -> &'static str {
        "y = softmax(x) over the last axis, numerically stable, optional causal mask (input x, output y)"
    }
    fn shape_help(&self) -> &'static str {
        "rows,cols (leading axes are rows; the last axis is normalised)"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![4096, 8192]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        rows_cols(self.name(), args)?;
        causal(self.name(), args)?;
        Ok(vec![
            sig("x", TensorKind::Input, &args.shape, args.dtype),
            sig("y", TensorKind::Output, &args.shape, args.dtype),
        ])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        check_emit(self, kb, args, io)?;
        let (nrows, cols) = rows_cols(self.name(), args)?;
        let causal = causal(self.name(), args)?;
        let dtype = args.dtype;
        let home = kb.current_core();
        let p = partitions(kb.chip());
        let (x, y) = (bound(self.name(), io, "x")?, bound(self.name(), io, "y")?);
        let (x2, y2) = (x.view().reshape(&[nrows, cols]), y.view().reshape(&[nrows, cols]));
        let fixed = if causal { p * 4 + ZERO_COLS * dtype.size() } else { 0 };
        let bufs = resident_bufs(cols, dtype, fixed);
        let nmax_dtype = if dtype == DType::Bf16 { DType::Bf16 } else { DType::F32 };
        let period = period(args);
        // Causal blocks stay within one matrix, and are dealt to the cores in
        // turn: their cost grows along the diagonal, so runs would unbalance.
        let span = if causal { period } else { nrows };
        let all: Vec<Block> = (0..nrows / span).flat_map(|m| blocks(m * span..(m + 1) * span, p, 1, false)).collect();
        let ncores = (args.cores.max(1) as usize).min(all.len());
        let mut allocs = Allocs::default();
        for core in 0..ncores {
            let bl: Vec<Block> = all.iter().skip(core).step_by(ncores).copied().collect();
            kb.core(core as u16)?;
            let mask = if causal { Some(mask_tiles(kb, p, dtype, &mut allocs)?) } else { None };
            let width = if bufs.is_some() { cols } else { cols.min(CHUNK) };
            let mut c = Core {
                x2: &x2,
                y2: &y2,
                cols,
                period,
                mask,
                xin: kb.sbuf_pool(&[p, width], dtype, bufs.unwrap_or(3))?,
                nmax: kb.sbuf_pool(&[p, 1], nmax_dtype, 4)?,
                stats: kb.sbuf_pool(&[p, 2], DType::F32, 4)?,
            };
            if bufs.is_some() {
                pipelined(kb, &mut c, &bl)?;
            } else {
                for b in &bl {
                    c.streamed(kb, b)?;
                }
            }
            for pool in [c.xin, c.nmax, c.stats] {
                allocs.keep_pool(pool);
            }
        }
        allocs.free(kb)?;
        kb.core(home)?;
        let es = dtype.size() as u64;
        let elements = (nrows * cols) as u64;
        let read = if causal { (0..nrows).map(|i| (i % period + 1).min(cols) as u64).sum() } else { elements };
        Ok(Cost { flops: 4 * elements, bytes_hbm: (read + elements) * es, peak_dtype: None })
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let (nrows, cols) = rows_cols(self.name(), args)?;
        let causal = causal(self.name(), args)?;
        let x = input(self.name(), inputs, "x")?;
        let period = period(args);
        let mut y = vec![0.0; nrows * cols];
        for (i, (row, out)) in x.chunks(cols).zip(y.chunks_mut(cols)).enumerate() {
            let valid = if causal { (i % period + 1).min(cols) } else { cols };
            let m = row[..valid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row[..valid].iter().map(|v| (v - m).exp()).sum();
            for (o, v) in out[..valid].iter_mut().zip(&row[..valid]) {
                *o = (v - m).exp() / sum;
            }
        }
        Ok(output("y", args.shape.clone(), y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::elementwise::tests::{check, chips};
    use proptest::prelude::*;

    fn args(shape: &[usize], mask: &str, dtype: DType) -> KernelArgs {
        KernelArgs::new(shape, dtype).with("mask", mask)
    }

    #[test]
    fn odd_shapes_dtypes_and_masks() {
        for chip in chips() {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                for shape in [&[1usize, 1][..], &[3, 1000], &[129, 257], &[200, 3], &[2, 3, 40]] {
                    for mask in ["none", "causal"] {
                        check(&Softmax, &chip, &args(shape, mask, dtype));
                    }
                }
            }
        }
    }

    #[test]
    fn causal_rows_see_only_their_prefix() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let run = check(&Softmax, &chip, &args(&[300, 200], "causal", DType::F32));
        // Right of the diagonal nothing is read: 300·200 − (200·199/2) elements.
        let want = (300 * 200 - 200 * 199 / 2 + 300 * 200) * 4;
        assert_eq!(run.built.bytes_hbm, want as u64);
        let loaded: u64 = run
            .built
            .program
            .insts
            .iter()
            .filter_map(|i| match &i.op {
                trainyard_isa::Op::DmaCopy { src, .. } if src.space == trainyard_isa::Space::Hbm => Some(src.bytes()),
                _ => None,
            })
            .sum();
        // Only whole 128-row blocks up to the diagonal are read.
        assert!(loaded < 300 * 200 * 4, "{loaded}");
    }

    #[test]
    fn long_rows_stream_in_chunks_and_cores_split() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for mask in ["none", "causal"] {
            let mut a = args(&[130, 30000], mask, DType::F32);
            a.cores = 2;
            check(&Softmax, &chip, &a);
        }
        let mut a = args(&[260, 5000], "causal", DType::Bf16);
        a.cores = 2;
        check(&Softmax, &chip, &a);
    }

    #[test]
    fn argument_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for a in [args(&[4, 4], "diag", DType::F32), KernelArgs::new(&[4, 0], DType::F32)] {
            let e = crate::library::build(&Softmax, &chip, &a).unwrap_err().to_string();
            assert!(e.contains("softmax"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes(r in 1usize..300, c in 1usize..300, causal: bool, dt in 0usize..3) {
            let chip = ChipSpec::by_name("trn2").unwrap();
            let dtype = [DType::F32, DType::Bf16, DType::F16][dt];
            check(&Softmax, &chip, &args(&[r, c], if causal { "causal" } else { "none" }, dtype));
        }
    }
}
