//! Reductions along one axis: `sum`, `max`, `min`, `mean`.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::common::{
    any_shape, blocks, bound, check_emit, chunks, input, kernel_err, numel, output, partitions, per_partition, sig,
    split, Allocs, Block, Q_AUX, Q_LOAD, Q_STORE,
};
use super::stream::{f_max, BUFS};
use crate::builder::{HbmTensor, KernelBuilder};
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;

/// `y = op over axis of x` for `op` in sum, max, min, mean; `y` has `x`'s
/// shape without that axis (`[1]` when nothing is left).
///
/// `x` is seen as `[A, K, B]` (K = the reduced axis) and one of three tilings
/// is chosen:
/// * **rows** (`A > 1`, e.g. the last axis): rows of `A` on partitions, the
///   `K·B` elements of a row along the free axis, reduced by one
///   `tensor_reduce` over the innermost axis of a permuted view `[B, K]`
///   (no copy). Short rows are folded several per partition; long rows are
///   cut into chunks whose partial results are combined with
///   `tensor_tensor`. Blocks alternate between the Vector and GpSimd engines.
/// * **columns** (`A = 1`, `B > 1`, e.g. axis 0 of a 2-D input): a partition
///   reduction. `sum`/`mean` multiply a ones vector (stationary `[K, 1]`)
///   with `[128, ≤512]` blocks of `x` on the Tensor engine, accumulating all
///   of `K` in one PSUM bank (exact products, f32 accumulation, and the PE is
///   otherwise idle); `max`/`min` have no matmul form, so 128-column slices
///   are transposed on the Tensor engine into PSUM (eight row blocks side by
///   side per bank) and reduced along the free axis by the Vector engine.
/// * **all** (`A = B = 1`, a 1-D input): the elements are spread over all
///   partitions, reduced per partition, then across partitions with one PE
///   transpose and a free-axis reduce; with several cores each core's partial
///   goes through a small HBM scratch tensor to core 0.
///
/// Sums accumulate in f32 and round once to the output dtype.
pub(crate) struct Reduce;

const OPTIONS: &[(&str, &str)] = &[
    ("op", "sum (default), max, min or mean"),
    ("axis", "axis to reduce (default: the last; negative counts from the end)"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Sum,
    Max,
    Min,
    Mean,
}

impl Op {
    fn alu(self) -> AluOp {
        match self {
            Op::Sum | Op::Mean => AluOp::Add,
            Op::Max => AluOp::Max,
            Op::Min => AluOp::Min,
        }
    }

    /// Dtype of partial results: sums in f32, extrema exactly in the data dtype.
    fn acc_dtype(self, dtype: DType) -> DType {
        match self {
            Op::Sum | Op::Mean => DType::F32,
            _ => dtype,
        }
    }
}

struct Args {
    op: Op,
    shape: Vec<usize>,
    /// `[A, K, B]`.
    akb: [usize; 3],
    out_shape: Vec<usize>,
}

fn parse(kernel: &str, args: &KernelArgs) -> Result<Args, BuildError> {
    let shape = any_shape(kernel, args)?;
    let op = match args.string("op", "sum") {
        "sum" => Op::Sum,
        "max" => Op::Max,
        "min" => Op::Min,
        "mean" => Op::Mean,
        v => return Err(kernel_err(kernel, format!("option `op={v}`: expected sum, max, min or mean"))),
    };
    let rank = shape.len() as i64;
    let axis = match args.options.get("axis").map(String::as_str) {
        None | Some("last") => rank - 1,
        Some(v) => {
            let a: i64 =
                v.parse().map_err(|_| kernel_err(kernel, format!("option `axis={v}`: expected an integer")))?;
            if a < -rank || a >= rank {
                return Err(kernel_err(kernel, format!("option `axis={v}`: out of range for rank {rank}")));
            }
            a.rem_euclid(rank)
        }
    } as usize;
    let a = numel(kernel, &shape[..axis])?;
    let b = numel(kernel, &shape[axis + 1..])?;
    let mut out_shape: Vec<usize> = shape.iter().enumerate().filter(|&(i, _)| i != axis).map(|(_, &d)| d).collect();
    if out_shape.is_empty() {
        out_shape.push(1);
    }
    Ok(Args { op, akb: [a, shape[axis], b], shape, out_shape })
}

/// Emission context shared by the three tilings.
struct Ctx<'a> {
    chip: &'a ChipSpec,
    dtype: DType,
    op: Op,
    k: usize,
    cores: u16,
}

impl Ctx<'_> {
    fn p(&self) -> usize {
        partitions(self.chip)
    }

    /// `dst = src` converted to the output dtype, divided by K for a mean.
    fn finish(&self, kb: &mut KernelBuilder, engine: Engine, dst: &View, src: &View) -> Result<(), BuildError> {
        if self.op == Op::Mean {
            kb.tensor_scalar(engine, dst, src, Stage::new(AluOp::Mul, 1.0 / self.k as f32), None)?;
        } else {
            kb.copy(engine, dst, src)?;
        }
        Ok(())
    }

    /// Rows of `A` on partitions; `x3 = [A, K, B]`, `y2 = [A, B]`.
    fn rows(&self, kb: &mut KernelBuilder, x3: &View, y2: &View, [a, k, b]: [usize; 3]) -> Result<(), BuildError> {
        let p = self.p();
        let fmax = f_max(self.dtype, 1);
        let row = k * b;
        let acc_dt = self.op.acc_dtype(self.dtype);
        let mut turn = 0usize;
        for (core, range) in split(a, self.cores as usize, p).into_iter().enumerate() {
            kb.core(core as u16)?;
            if row <= fmax {
                // Whole rows, several per partition when short.
                let per = per_partition(range.len(), p, (512 / row).max(1), fmax / row);
                let mut xin = kb.sbuf_pool(&[p, per * row], self.dtype, BUFS)?;
                let mut acc = kb.sbuf_pool(&[p, per * b], acc_dt, BUFS)?;
                let mut out = kb.sbuf_pool(&[p, per * b], self.dtype, BUFS)?;
                for blk in blocks(range.clone(), p, per, false) {
                    let engine = if turn.is_multiple_of(2) { Engine::Vector } else { Engine::GpSimd };
                    turn += 1;
                    let t = xin.next().part(0..blk.parts).cols(0..blk.per * row);
                    kb.dma_on(Q_LOAD, &t, x3.rows(blk.range()).reshape(&[blk.parts, blk.per * row]))?;
                    let src = t.reshape_free(&[blk.per, k, b]).permute(&[0, 1, 3, 2]);
                    let dst = out.next().part(0..blk.parts).cols(0..blk.per * b);
                    if acc_dt == self.dtype && self.op != Op::Mean {
                        kb.tensor_reduce(engine, self.op.alu(), &dst, &src, 1, false)?;
                    } else {
                        let r = acc.next().part(0..blk.parts).cols(0..blk.per * b);
                        kb.tensor_reduce(engine, self.op.alu(), &r, &src, 1, false)?;
                        self.finish(kb, engine, &dst, &r)?;
                    }
                    kb.dma_on(Q_STORE, y2.rows(blk.range()).reshape(&[blk.parts, blk.per * b]), &dst)?;
                }
                // Nothing else is allocated on this core.
                for pool in [xin, acc, out] {
                    kb.free_pool(pool)?;
                }
            } else {
                // Long rows: chunks of B (as wide as K allows), then of K, combined.
                let bc = (fmax / k).clamp(1, b);
                let kc = (fmax / bc).clamp(1, k);
                let mut xin = kb.sbuf_pool(&[p, kc * bc], self.dtype, BUFS)?;
                let mut part = kb.sbuf_pool(&[p, bc], acc_dt, BUFS)?;
                let mut acc = kb.sbuf_pool(&[p, bc], acc_dt, 2)?;
                let mut out = kb.sbuf_pool(&[p, bc], self.dtype, 2)?;
                for blk in blocks(range.clone(), p, 1, false) {
                    for bs in chunks(b, bc) {
                        let total = acc.next().part(0..blk.parts).cols(0..bs.len());
                        for (i, ks) in chunks(k, kc).into_iter().enumerate() {
                            let engine = if turn.is_multiple_of(2) { Engine::Vector } else { Engine::GpSimd };
                            turn += 1;
                            let t = xin.next().part(0..blk.parts).cols(0..ks.len() * bs.len());
                            let src = x3.rows(blk.range()).slice(1, ks.clone()).slice(2, bs.clone());
                            kb.dma_on(Q_LOAD, t.reshape_free(&[ks.len(), bs.len()]), src)?;
                            let view = t.reshape_free(&[ks.len(), bs.len()]).permute(&[0, 2, 1]);
                            if i == 0 {
                                kb.tensor_reduce(engine, self.op.alu(), &total, &view, 1, false)?;
                            } else {
                                let r = part.next().part(0..blk.parts).cols(0..bs.len());
                                kb.tensor_reduce(engine, self.op.alu(), &r, &view, 1, false)?;
                                kb.tensor_tensor(engine, self.op.alu(), &total, &total, &r)?;
                            }
                        }
                        let dst = out.next().part(0..blk.parts).cols(0..bs.len());
                        self.finish(kb, Engine::Vector, &dst, &total)?;
                        kb.dma_on(Q_STORE, y2.rows(blk.range()).cols(bs), &dst)?;
                    }
                }
                for pool in [xin, part, acc, out] {
                    kb.free_pool(pool)?;
                }
            }
        }
        Ok(())
    }

    /// Partition reduction of `x2 = [K, B]` into `y = [B]`.
    fn columns(&self, kb: &mut KernelBuilder, x2: &View, y: &View, b: usize) -> Result<(), BuildError> {
        let p = self.p();
        // 4 KiB per partition per load (HW-DMA-SIZE: saturates); sums take
        // one 512-column matmul per PSUM bank, four banks per buffer.
        let width = match self.op {
            Op::Sum | Op::Mean => (4096 / self.dtype.size()).clamp(512, 2048),
            Op::Max | Op::Min => (2048 / self.dtype.size()).clamp(p, 8 * p) / p * p,
        };
        for (core, range) in split(b, self.cores as usize, p).into_iter().enumerate() {
            kb.core(core as u16)?;
            let mut xin = kb.sbuf_pool(&[p, width], self.dtype, BUFS + 1)?;
            match self.op {
                Op::Sum | Op::Mean => self.columns_sum(kb, x2, y, range, width, &mut xin)?,
                Op::Max | Op::Min => self.columns_extremum(kb, x2, y, range, width, &mut xin)?,
            }
            kb.free_pool(xin)?;
        }
        Ok(())
    }

    fn k_blocks(&self) -> Vec<Range<usize>> {
        chunks(self.k, self.p())
    }

    fn columns_sum(
        &self,
        kb: &mut KernelBuilder,
        x2: &View,
        y: &View,
        range: Range<usize>,
        width: usize,
        xin: &mut crate::builder::TilePool,
    ) -> Result<(), BuildError> {
        let p = self.p();
        let mm = self.chip.core.tensor.moving_fmax as usize;
        let ones = kb.sbuf_tile(&[p, 1], self.dtype)?;
        kb.memset(Engine::Vector, &ones, 1.0)?;
        let mut ps = kb.psum_pool(&[1, width], DType::F32, 2)?;
        let mut out = kb.sbuf_pool(&[1, width], self.dtype, 2)?;
        let kblocks = self.k_blocks();
        for (g, cols) in chunks(range.len(), width).into_iter().enumerate() {
            let cols = range.start + cols.start..range.start + cols.end;
            let acc = ps.next().cols(0..cols.len());
            for (i, ks) in kblocks.iter().enumerate() {
                let t = xin.next().part(0..ks.len()).cols(0..cols.len());
                kb.dma_on(Q_LOAD, &t, x2.rows(ks.clone()).cols(cols.clone()))?;
                for sub in chunks(cols.len(), mm) {
                    let (first, last) = (i == 0, i + 1 == kblocks.len());
                    kb.matmul(acc.cols(sub.clone()), ones.part(0..ks.len()), t.cols(sub), first, last)?;
                }
            }
            let o = out.next().cols(0..cols.len());
            // Alternate the PSUM evacuation between the Scalar and Vector engines.
            if g % 2 == 1 {
                let scale = if self.op == Op::Mean { 1.0 / self.k as f32 } else { 1.0 };
                kb.activation(ActFn::Identity, &o, &acc, scale, None, None)?;
            } else {
                self.finish(kb, Engine::Vector, &o, &acc)?;
            }
            kb.dma_on(Q_STORE, y.slice(0, cols.clone()).reshape(&[1, cols.len()]), &o)?;
        }
        // The caller allocates nothing more on this core.
        kb.free(ones)?;
        kb.free_pool(ps)?;
        kb.free_pool(out)
    }

    fn columns_extremum(
        &self,
        kb: &mut KernelBuilder,
        x2: &View,
        y: &View,
        range: Range<usize>,
        width: usize,
        xin: &mut crate::builder::TilePool,
    ) -> Result<(), BuildError> {
        let p = self.p();
        let subs = width.div_ceil(p);
        // Row blocks transposed side by side, one PSUM tile per 128-column
        // slice, double-buffered across the whole PSUM (within one bank each).
        let psum = self.chip.core.psum.bytes_per_partition as usize;
        let tile = (self.chip.psum_bank_bytes() as usize).min(psum / (2 * subs));
        let slots = (tile / (p * self.dtype.size())).max(1);
        let kblocks = self.k_blocks();
        let groups = kblocks.len().div_ceil(slots);
        let mut ps = kb.psum_pool(&[p, slots * p], self.dtype, 2 * subs)?;
        let mut partials = kb.sbuf_pool(&[p, groups], self.dtype, 2 * subs)?;
        let mut out = kb.sbuf_pool(&[p, 1], self.dtype, 2 * subs)?;
        for cols in chunks(range.len(), width) {
            let cols = range.start + cols.start..range.start + cols.end;
            let slices = chunks(cols.len(), p);
            let parts: Vec<View> = slices.iter().map(|s| partials.next().part(0..s.len())).collect();
            let mut pst: Vec<View> = Vec::new();
            for (i, ks) in kblocks.iter().enumerate() {
                let slot = i % slots;
                if slot == 0 {
                    pst = slices.iter().map(|s| ps.next().part(0..s.len())).collect();
                }
                let t = xin.next().part(0..ks.len()).cols(0..cols.len());
                kb.dma_on(Q_LOAD, &t, x2.rows(ks.clone()).cols(cols.clone()))?;
                for (j, s) in slices.iter().enumerate() {
                    kb.transpose(Engine::Tensor, pst[j].cols(slot * p..slot * p + ks.len()), t.cols(s.clone()))?;
                }
                if slot + 1 == slots || i + 1 == kblocks.len() {
                    let g = i / slots;
                    for (j, _) in slices.iter().enumerate() {
                        let filled = slot * p + ks.len();
                        kb.tensor_reduce(
                            Engine::Vector,
                            self.op.alu(),
                            parts[j].cols(g..g + 1),
                            pst[j].cols(0..filled),
                            1,
                            false,
                        )?;
                    }
                }
            }
            for (j, s) in slices.iter().enumerate() {
                let o = out.next().part(0..s.len());
                kb.tensor_reduce(Engine::GpSimd, self.op.alu(), &o, &parts[j], 1, false)?;
                let at = cols.start + s.start;
                kb.dma_on(Q_STORE, y.slice(0, at..at + s.len()).reshape(&[s.len(), 1]), &o)?;
            }
        }
        for pool in [ps, partials, out] {
            kb.free_pool(pool)?;
        }
        Ok(())
    }

    /// A 1-D input reduced to one value. Core 0 allocates again after its
    /// own partial (to combine the cores'), so everything is freed at the end.
    fn all(&self, kb: &mut KernelBuilder, x: &View, y: &View, n: usize) -> Result<(), BuildError> {
        let p = self.p();
        let fmax = f_max(self.dtype, 1);
        let ranges = split(n, self.cores as usize, p);
        let scratch = if ranges.len() > 1 { Some(partials_scratch(kb, ranges.len())?) } else { None };
        let alu = self.op.alu();
        let mut allocs = Allocs::default();
        for (core, range) in ranges.iter().enumerate() {
            kb.core(core as u16)?;
            let per = per_partition(range.len(), p, 512, fmax);
            let bl: Vec<Block> = blocks(range.clone(), p, per, true);
            let partial = allocs.sbuf(kb, &[p, bl.len()], DType::F32)?;
            let identity = match self.op {
                Op::Max => f64::NEG_INFINITY,
                Op::Min => f64::INFINITY,
                _ => 0.0,
            };
            kb.memset(Engine::GpSimd, &partial, identity)?;
            let width = bl.iter().map(|b| b.per).max().unwrap_or(1);
            let mut xin = kb.sbuf_pool(&[p, width], self.dtype, BUFS)?;
            for (j, blk) in bl.iter().enumerate() {
                let engine = if j.is_multiple_of(2) { Engine::Vector } else { Engine::GpSimd };
                let t = xin.next().part(0..blk.parts).cols(0..blk.per);
                kb.dma_on(Q_LOAD, &t, x.slice(0, blk.range()).reshape(&[blk.parts, blk.per]))?;
                kb.tensor_reduce(engine, alu, partial.part(0..blk.parts).cols(j..j + 1), &t, 1, false)?;
            }
            allocs.keep_pool(xin);
            let col = allocs.sbuf(kb, &[p, 1], DType::F32)?;
            kb.tensor_reduce(Engine::Vector, alu, &col, &partial, 1, false)?;
            let row = allocs.psum(kb, &[1, p], DType::F32)?;
            kb.transpose(Engine::Tensor, &row, &col)?;
            let one = allocs.sbuf(kb, &[1, 1], DType::F32)?;
            kb.tensor_reduce(Engine::Vector, alu, &one, &row, 1, false)?;
            match &scratch {
                Some(s) => {
                    kb.dma_on(Q_STORE, s.slice(0, core..core + 1).reshape(&[1, 1]), &one)?;
                }
                None => {
                    let o = allocs.sbuf(kb, &[1, 1], self.dtype)?;
                    self.finish(kb, Engine::Vector, &o, &one)?;
                    kb.dma_on(Q_STORE, y.reshape(&[1, 1]), &o)?;
                }
            }
        }
        if let Some(s) = scratch {
            kb.core(0)?;
            let all = allocs.sbuf(kb, &[1, ranges.len()], DType::F32)?;
            kb.dma_on(Q_AUX, &all, s.view().reshape(&[1, ranges.len()]))?;
            let one = allocs.sbuf(kb, &[1, 1], DType::F32)?;
            kb.tensor_reduce(Engine::Vector, alu, &one, &all, 1, false)?;
            let o = allocs.sbuf(kb, &[1, 1], self.dtype)?;
            self.finish(kb, Engine::Vector, &o, &one)?;
            kb.dma_on(Q_STORE, y.reshape(&[1, 1]), &o)?;
        }
        allocs.free(kb)
    }
}

/// The HBM scratch tensor through which the cores' partials reach core 0:
/// `partials`, or `partials.N` when an earlier kernel of the same program
/// took that name.
fn partials_scratch(kb: &mut KernelBuilder, n: usize) -> Result<HbmTensor, BuildError> {
    let mut i = 0usize;
    loop {
        let name = if i == 0 { "partials".to_string() } else { format!("partials.{i}") };
        match kb.hbm_scratch(&name, &[n], DType::F32) {
            Err(BuildError::DuplicateTensor { .. }) => i += 1,
            r => return r,
        }
    }
}

impl Kernel for Reduce {
    fn name(&self) -> &'static str {
        "reduce"
    }
    fn family(&self) -> &'static str {
        "elementwise"
    }
    fn summary(&self) -> &'static str {
        "y = sum/max/min/mean of x along one axis (input x, output y without that axis)"
    }
    fn shape_help(&self) -> &'static str {
        "any shape d0,d1,... of x"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let Args { shape, out_shape, .. } = parse(self.name(), args)?;
        Ok(vec![sig("x", TensorKind::Input, &shape, args.dtype), sig("y", TensorKind::Output, &out_shape, args.dtype)])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        check_emit(self, kb, args, io)?;
        let Args { op, akb, .. } = parse(self.name(), args)?;
        let (x, y) = (bound(self.name(), io, "x")?, bound(self.name(), io, "y")?);
        let [a, k, b] = akb;
        let dtype = args.dtype;
        let (chip, home) = (kb.chip().clone(), kb.current_core());
        let ctx = Ctx { chip: &chip, dtype, op, k, cores: args.cores };
        let n = a * k * b;
        let yflat = y.view().reshape(&[a * b]);
        if a > 1 {
            ctx.rows(kb, &x.view().reshape(&[a, k, b]), &yflat.reshape(&[a, b]), akb)?;
        } else if b > 1 {
            ctx.columns(kb, &x.view().reshape(&[k, b]), &yflat, b)?;
        } else {
            ctx.all(kb, &x.view().reshape(&[k]), &yflat, k)?;
        }
        kb.core(home)?;
        let bytes = (n + a * b) as u64 * dtype.size() as u64;
        Ok(Cost { flops: n as u64, bytes_hbm: bytes, peak_dtype: None })
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let Args { op, akb: [a, k, b], out_shape, .. } = parse(self.name(), args)?;
        let x = input(self.name(), inputs, "x")?;
        let mut y = Vec::with_capacity(a * b);
        for i in 0..a {
            for j in 0..b {
                let vals = (0..k).map(|kk| x.get((i * k + kk) * b + j).copied().unwrap_or(f64::NAN));
                y.push(match op {
                    Op::Sum => vals.sum(),
                    Op::Mean => vals.sum::<f64>() / k as f64,
                    Op::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                    Op::Min => vals.fold(f64::INFINITY, f64::min),
                });
            }
        }
        Ok(output("y", out_shape, y))
    }
    /// Sums of K terms accumulate f32 rounding: about K·2⁻²⁴ of the partial
    /// sums' magnitude (≤ K for inputs in [-1, 1)), so the absolute term grows
    /// with K; means divide it back by K. Extrema are exact.
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        let base = Tolerance::for_dtype(args.dtype);
        match parse(self.name(), args) {
            Ok(Args { op: Op::Sum, akb: [_, k, _], .. }) => {
                Tolerance { atol: base.atol + k as f64 * f32::EPSILON as f64 * 8.0, rtol: base.rtol }
            }
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::elementwise::tests::{check, chips};
    use proptest::prelude::*;

    fn args(shape: &[usize], op: &str, axis: Option<&str>, dtype: DType) -> KernelArgs {
        let a = KernelArgs::new(shape, dtype).with("op", op);
        match axis {
            Some(ax) => a.with("axis", ax),
            None => a,
        }
    }

    #[test]
    fn last_axis_on_odd_shapes() {
        for chip in chips() {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                for shape in [&[1usize, 1][..], &[3, 1000], &[129, 257], &[200, 3], &[2, 3, 5]] {
                    for op in ["sum", "max", "min", "mean"] {
                        check(&Reduce, &chip, &args(shape, op, None, dtype));
                    }
                }
            }
        }
    }

    #[test]
    fn axis_zero_uses_the_tensor_engine() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            for shape in [&[1usize, 1][..], &[3, 1000], &[129, 257], &[200, 3], &[300, 600]] {
                for op in ["sum", "max", "min", "mean"] {
                    let run = check(&Reduce, &chip, &args(shape, op, Some("0"), dtype));
                    if shape[1] > 1 {
                        let pe = run
                            .built
                            .program
                            .insts
                            .iter()
                            .filter(|i| i.op.unit() == trainyard_isa::Unit::Engine(Engine::Tensor));
                        assert!(pe.count() > 0, "{shape:?} {op}");
                    }
                }
            }
        }
    }

    #[test]
    fn middle_axes_whole_tensors_and_cores() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for (shape, axis) in [
            (&[4usize, 5, 6][..], "1"),
            (&[4, 5, 6], "-2"),
            (&[4, 5, 6], "0"),
            (&[1000], "0"),
            (&[7], "last"),
            (&[3, 20000], "1"),
            (&[3, 9000, 2], "1"),
            (&[130, 2, 3], "1"),
        ] {
            for op in ["sum", "max", "min", "mean"] {
                for cores in [1, 2] {
                    let mut a = args(shape, op, Some(axis), DType::Bf16);
                    a.cores = cores;
                    check(&Reduce, &chip, &a);
                }
            }
        }
        let run = check(&Reduce, &chip, &args(&[5, 6], "sum", Some("1"), DType::F32));
        assert_eq!(run.built.program.tensor("y").unwrap().shape, vec![5]);
        let run = check(&Reduce, &chip, &args(&[6], "max", None, DType::F32));
        assert_eq!(run.built.program.tensor("y").unwrap().shape, vec![1]);
    }

    #[test]
    fn argument_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for (a, why) in [
            (args(&[4, 8], "prod", None, DType::F32), "prod"),
            (args(&[4, 8], "sum", Some("2"), DType::F32), "axis"),
            (args(&[4, 8], "sum", Some("-3"), DType::F32), "axis"),
            (args(&[4, 8], "sum", Some("x"), DType::F32), "axis"),
        ] {
            let e = crate::library::build(&Reduce, &chip, &a).unwrap_err().to_string();
            assert!(e.contains("reduce") && e.contains(why), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes_and_axes(dims in proptest::collection::vec(1usize..40, 1..4), ax in 0usize..3, op in 0usize..4, dt in 0usize..3) {
            let chip = ChipSpec::by_name("trn2").unwrap();
            let axis = (ax % dims.len()).to_string();
            let dtype = [DType::F32, DType::Bf16, DType::F16][dt];
            check(&Reduce, &chip, &args(&dims, ["sum", "max", "min", "mean"][op], Some(&axis), dtype));
        }
    }
}
