//! `c = a op b` with numpy broadcasting of `b` to the shape of `a`.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Engine, TensorKind};

use super::common::{
    alu_op, any_shape, blocks, bound, check_emit, chunks, input, kernel_err, numel, output, partitions, per_partition,
    sig, split, Allocs, Block, Q_AUX, Q_LOAD, Q_LOAD2, Q_STORE,
};
use super::stream::{f_max, flat_map, BUFS};
use crate::builder::{HbmTensor, KernelBuilder};
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::view::View;

/// `c = a op b`, `b` broadcast to the shape of `a` (numpy rules).
///
/// Tiling: the shapes are reduced to merged groups of axes that `b` either
/// shares with `a` or broadcasts, and the cheapest form is chosen; no
/// broadcast copy is ever written to HBM:
/// * same shape: both tensors stream as flat `[128, F]` blocks, one
///   `tensor_tensor` per block;
/// * scalar `b`: `b` is loaded once into a `[128, 1]` tile by a partition
///   stride-0 DMA and applied as a per-partition `tensor_scalar` operand;
/// * row vector (`b` = the last axes of `a`, e.g. `1,4096`): `b` is loaded once
///   per core into a `[128, C]` tile (stride-0 partition DMA); rows of `a` go on
///   partitions, and when `C` is small several rows share a partition with `b`
///   repeated along the free axis by a stride-0 view;
/// * column vector (`b` = the leading axes of `a`, e.g. `4096,1`): one `b`
///   value per row; a per-partition `tensor_scalar` operand when rows are
///   long, a stride-0 free-axis view when several short rows share a partition;
/// * anything else (e.g. `1,C,1` against `N,C,HW`): rows of `a` on partitions,
///   and the `b` rows of each block loaded by one DMA per run of rows along
///   the innermost outer axis.
///
/// `pow` runs on the GpSimd engine (HW-OP-ARITH), everything else on the
/// Vector engine (16-bit perf mode on trn2+). Bitwise operators need integer
/// data and are refused.
pub(crate) struct Binary;

const OPTIONS: &[(&str, &str)] = &[
    (
        "op",
        "operator (default add): add, sub, mul, div, max, min, pow, abs_max, abs_min, eq, ne, lt, le, gt, ge, \
         logical_and, logical_or, logical_xor",
    ),
    ("b_shape", "shape of b, comma-separated, broadcastable to the shape of a (default: the shape of a)"),
];

/// How `b` maps onto `a`.
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// Same element order: flat.
    Same,
    /// One value.
    Scalar,
    /// `a` is `[rows, cols]`, `b` is `[cols]`.
    Row { rows: usize, cols: usize },
    /// `a` is `[rows, cols]`, `b` is `[rows]`.
    Col { rows: usize, cols: usize },
    /// `a` is `[Π sizes of outer, cols]`; `outer` holds each outer axis's size
    /// and `b`'s element stride along it (0 when broadcast); `inner_same`: `b`
    /// varies along `cols` (else it is constant there).
    General { outer: Vec<(usize, usize)>, cols: usize, inner_same: bool },
}

fn parse_b_shape(kernel: &str, args: &KernelArgs, a: &[usize]) -> Result<Vec<usize>, BuildError> {
    let Some(text) = args.options.get("b_shape") else { return Ok(a.to_vec()) };
    let dims: Result<Vec<usize>, _> = text.split(',').map(|s| s.trim().parse::<usize>()).collect();
    match dims {
        Ok(d) if !d.is_empty() && !d.contains(&0) => Ok(d),
        _ => Err(kernel_err(kernel, format!("option `b_shape={text}`: expected positive sizes like 1,4096"))),
    }
}

/// `b` padded on the left with 1s to the rank of `a`, checked broadcastable.
fn aligned_b(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let extra = b.len().saturating_sub(a.len());
    if b[..extra].iter().any(|&d| d != 1) {
        return Err(format!("b_shape {b:?} has more elements than a {a:?} along leading axes"));
    }
    let b = &b[extra..];
    let mut out = vec![1; a.len() - b.len()];
    out.extend_from_slice(b);
    for (i, (&ad, &bd)) in a.iter().zip(&out).enumerate() {
        if bd != ad && bd != 1 {
            return Err(format!("b_shape {b:?} does not broadcast to {a:?} (axis {i}: {bd} vs {ad})"));
        }
    }
    Ok(out)
}

fn plan(a: &[usize], b: &[usize]) -> Result<Plan, String> {
    let b = aligned_b(a, b)?;
    // Merged groups (shared?, size), skipping axes of size 1 in `a`.
    let mut groups: Vec<(bool, usize)> = Vec::new();
    for (&ad, &bd) in a.iter().zip(&b) {
        if ad == 1 {
            continue;
        }
        let same = bd == ad;
        match groups.last_mut() {
            Some((s, n)) if *s == same => *n *= ad,
            _ => groups.push((same, ad)),
        }
    }
    Ok(match groups.as_slice() {
        [] | [(true, _)] => Plan::Same,
        [(false, _)] => Plan::Scalar,
        [(false, rows), (true, cols)] => Plan::Row { rows: *rows, cols: *cols },
        [(true, rows), (false, cols)] => Plan::Col { rows: *rows, cols: *cols },
        [outer @ .., (inner_same, cols)] => {
            let mut stride = if *inner_same { *cols } else { 1 };
            let mut dims: Vec<(usize, usize)> = Vec::with_capacity(outer.len());
            for &(same, n) in outer.iter().rev() {
                dims.push((n, if same { stride } else { 0 }));
                if same {
                    stride *= n;
                }
            }
            dims.reverse();
            Plan::General { outer: dims, cols: *cols, inner_same: *inner_same }
        }
    })
}

fn engine_for(op: AluOp) -> Engine {
    if op == AluOp::Pow {
        Engine::GpSimd
    } else {
        Engine::Vector
    }
}

struct Args {
    op: AluOp,
    a: Vec<usize>,
    b: Vec<usize>,
    plan: Plan,
}

fn parse(kernel: &str, args: &KernelArgs) -> Result<Args, BuildError> {
    let op = alu_op(kernel, "op", args.string("op", "add"))?;
    if op.is_bitwise() || op == AluOp::Bypass {
        return Err(kernel_err(kernel, format!("option `op={op}`: not an arithmetic or comparison operator")));
    }
    let a = any_shape(kernel, args)?;
    let b = parse_b_shape(kernel, args, &a)?;
    numel(kernel, &b)?;
    let plan = plan(&a, &b).map_err(|m| kernel_err(kernel, m))?;
    Ok(Args { op, a, b, plan })
}

/// The second operand of one block.
enum Operand {
    /// Same shape as the data tile.
    Tensor(View),
    /// One value per partition.
    Column(View),
}

/// Emits the row-wise plans: rows of `a` (`[rows, cols]`) on partitions.
struct Rows<'a> {
    chip: &'a ChipSpec,
    dtype: DType,
    op: AluOp,
    a2: View,
    b_flat: View,
    c2: View,
    rows: usize,
    cols: usize,
}

impl<'a> Rows<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        chip: &'a ChipSpec,
        dtype: DType,
        op: AluOp,
        (a, b, c): (&HbmTensor, &HbmTensor, &HbmTensor),
        rows: usize,
        cols: usize,
        nb: usize,
    ) -> Rows<'a> {
        Rows {
            chip,
            dtype,
            op,
            a2: a.view().reshape(&[rows, cols]),
            b_flat: b.view().reshape(&[nb]),
            c2: c.view().reshape(&[rows, cols]),
            rows,
            cols,
        }
    }

    /// Rows per partition and column chunk width: short rows share a partition.
    fn tiling(&self, range_rows: usize) -> (usize, usize) {
        let (p, fmax) = (partitions(self.chip), f_max(self.dtype, 2));
        if self.cols > fmax {
            return (1, fmax);
        }
        let per = per_partition(range_rows, p, (512 / self.cols).max(1), (fmax / self.cols).max(1));
        (per, self.cols)
    }

    fn block_view(&self, v: &View, b: &Block, c: &Range<usize>) -> View {
        if b.per > 1 {
            v.rows(b.range()).reshape(&[b.parts, b.per * self.cols])
        } else {
            v.rows(b.range()).cols(c.clone())
        }
    }

    fn apply(&self, kb: &mut KernelBuilder, t: &View, operand: Operand) -> Result<(), BuildError> {
        let engine = engine_for(self.op);
        match operand {
            Operand::Tensor(v) => kb.tensor_tensor(engine, self.op, t, t, &v).map(|_| ()),
            Operand::Column(v) => kb.tensor_scalar(engine, t, t, Stage::new(self.op, v), None).map(|_| ()),
        }
    }

    /// `b` a row vector of `cols`: loaded once per core and column chunk.
    fn row(&self, kb: &mut KernelBuilder, cores: u16) -> Result<(), BuildError> {
        let p = partitions(self.chip);
        let brow = self.b_flat.reshape(&[1, self.cols]);
        for (core, range) in split(self.rows, cores as usize, p).into_iter().enumerate() {
            kb.core(core as u16)?;
            let (per, cw) = self.tiling(range.len());
            let mut pool = kb.sbuf_pool(&[p, per * cw], self.dtype, BUFS)?;
            let mut bpool = kb.sbuf_pool(&[p, cw], self.dtype, 2)?;
            for c in chunks(self.cols, cw) {
                let bt = bpool.next().cols(0..c.len());
                kb.dma_on(Q_AUX, &bt, brow.cols(c.clone()).broadcast(0, p))?;
                for b in blocks(range.clone(), p, per, false) {
                    let t = pool.next().part(0..b.parts).cols(0..b.per * c.len());
                    kb.dma_on(Q_LOAD, &t, self.block_view(&self.a2, &b, &c))?;
                    let bv = bt.part(0..b.parts);
                    let (t3, b3) = if b.per > 1 {
                        (t.reshape_free(&[b.per, c.len()]), bv.reshape_free(&[1, c.len()]).broadcast(1, b.per))
                    } else {
                        (t.clone(), bv)
                    };
                    self.apply(kb, &t3, Operand::Tensor(b3))?;
                    kb.dma_on(Q_STORE, self.block_view(&self.c2, &b, &c), &t)?;
                }
            }
            // Nothing else is allocated on this core.
            kb.free_pool(pool)?;
            kb.free_pool(bpool)?;
        }
        Ok(())
    }

    /// `b` a column vector of `rows`: one value per row.
    fn col(&self, kb: &mut KernelBuilder, cores: u16) -> Result<(), BuildError> {
        let p = partitions(self.chip);
        for (core, range) in split(self.rows, cores as usize, p).into_iter().enumerate() {
            kb.core(core as u16)?;
            let (per, cw) = self.tiling(range.len());
            let mut pool = kb.sbuf_pool(&[p, per * cw], self.dtype, BUFS)?;
            let mut bpool = kb.sbuf_pool(&[p, per], self.dtype, BUFS)?;
            for b in blocks(range.clone(), p, per, false) {
                let bt = bpool.next().part(0..b.parts).cols(0..b.per);
                kb.dma_on(Q_LOAD2, &bt, self.b_flat.slice(0, b.range()).reshape(&[b.parts, b.per]))?;
                for c in chunks(self.cols, cw) {
                    let t = pool.next().part(0..b.parts).cols(0..b.per * c.len());
                    kb.dma_on(Q_LOAD, &t, self.block_view(&self.a2, &b, &c))?;
                    if b.per > 1 {
                        let t3 = t.reshape_free(&[b.per, c.len()]);
                        let b3 = bt.reshape_free(&[b.per, 1]).broadcast(2, c.len());
                        self.apply(kb, &t3, Operand::Tensor(b3))?;
                    } else {
                        self.apply(kb, &t, Operand::Column(bt.clone()))?;
                    }
                    kb.dma_on(Q_STORE, self.block_view(&self.c2, &b, &c), &t)?;
                }
            }
            kb.free_pool(pool)?;
            kb.free_pool(bpool)?;
        }
        Ok(())
    }

    /// Any other broadcast: the `b` rows of each block come in runs along the
    /// innermost outer axis. Merged groups alternate between shared and
    /// broadcast axes, so within a run `b` repeats one row (`inner_same`: that
    /// outer axis is broadcast, stride 0) or walks one value per row.
    fn general(
        &self,
        kb: &mut KernelBuilder,
        cores: u16,
        outer: &[(usize, usize)],
        inner_same: bool,
    ) -> Result<(), BuildError> {
        let p = partitions(self.chip);
        let cw = self.cols.min(f_max(self.dtype, 2));
        let Some(&(last, last_stride)) = outer.last() else { return Err(kernel_err("binary", "no outer axes")) };
        if inner_same && last_stride != 0 {
            return Err(kernel_err("binary", "unmerged broadcast groups"));
        }
        let b_offset = |mut r: usize| -> usize {
            let mut off = 0;
            for &(n, stride) in outer.iter().rev() {
                off += (r % n) * stride;
                r /= n;
            }
            off
        };
        for (core, range) in split(self.rows, cores as usize, p).into_iter().enumerate() {
            kb.core(core as u16)?;
            let mut pool = kb.sbuf_pool(&[p, cw], self.dtype, BUFS)?;
            let mut bpool = kb.sbuf_pool(&[p, if inner_same { cw } else { 1 }], self.dtype, BUFS)?;
            for b in blocks(range.clone(), p, 1, false) {
                for c in chunks(self.cols, cw) {
                    let width = if inner_same { c.len() } else { 1 };
                    let bt = bpool.next().part(0..b.parts).cols(0..width);
                    let mut r = b.start;
                    while r < b.range().end {
                        let len = ((r / last + 1) * last - r).min(b.range().end - r);
                        let off = b_offset(r);
                        let src = if inner_same {
                            self.b_flat.slice(0, off + c.start..off + c.end).reshape(&[1, c.len()]).broadcast(0, len)
                        } else if last_stride == 0 {
                            self.b_flat.slice(0, off..off + 1).reshape(&[1, 1]).broadcast(0, len)
                        } else {
                            let end = off + (len - 1) * last_stride + 1;
                            self.b_flat.slice_step(0, off..end, last_stride).reshape(&[len, 1])
                        };
                        kb.dma_on(Q_LOAD2, bt.part(r - b.start..r - b.start + len), src)?;
                        r += len;
                    }
                    let t = pool.next().part(0..b.parts).cols(0..c.len());
                    kb.dma_on(Q_LOAD, &t, self.block_view(&self.a2, &b, &c))?;
                    let operand = if inner_same { Operand::Tensor(bt) } else { Operand::Column(bt) };
                    self.apply(kb, &t, operand)?;
                    kb.dma_on(Q_STORE, self.block_view(&self.c2, &b, &c), &t)?;
                }
            }
            kb.free_pool(pool)?;
            kb.free_pool(bpool)?;
        }
        Ok(())
    }
}

impl Kernel for Binary {
    fn name(&self) -> &'static str {
        "binary"
    }
    fn family(&self) -> &'static str {
        "elementwise"
    }
    fn summary(&self) -> &'static str {
        "c = a op b with numpy broadcasting of b (inputs a, b; output c)"
    }
    fn shape_help(&self) -> &'static str {
        "shape d0,d1,... of a and c (b: option b_shape)"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let Args { a, b, .. } = parse(self.name(), args)?;
        Ok(vec![
            sig("a", TensorKind::Input, &a, args.dtype),
            sig("b", TensorKind::Input, &b, args.dtype),
            sig("c", TensorKind::Output, &a, args.dtype),
        ])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        check_emit(self, kb, args, io)?;
        let Args { op, a: ashape, b: bshape, plan } = parse(self.name(), args)?;
        let (n, nb) = (numel(self.name(), &ashape)?, numel(self.name(), &bshape)?);
        let (a, b, c) = (bound(self.name(), io, "a")?, bound(self.name(), io, "b")?, bound(self.name(), io, "c")?);
        let (chip, home) = (kb.chip().clone(), kb.current_core());
        let chip = &chip;
        let dtype = args.dtype;
        let engine = engine_for(op);
        let (cores, abc) = (args.cores, (a, b, c));
        match plan {
            Plan::Same => {
                flat_map(kb, chip, cores, n, dtype, &[a, b], c, &mut |kb, _, t| {
                    kb.tensor_tensor(engine, op, &t[0], &t[0], &t[1])?;
                    Ok(t[0].clone())
                })?;
            }
            Plan::Scalar => {
                let p = partitions(chip);
                let mut allocs = Allocs::default();
                let mut cols = Vec::new();
                for core in 0..split(n, cores as usize, p).len() {
                    kb.core(core as u16)?;
                    let t = allocs.sbuf(kb, &[p, 1], dtype)?;
                    kb.dma_on(Q_AUX, &t, b.view().reshape(&[1, 1]).broadcast(0, p))?;
                    cols.push(t);
                }
                flat_map(kb, chip, cores, n, dtype, &[a], c, &mut |kb, core, t| {
                    let t = &t[0];
                    let s = cols.get(core as usize).map(|v| v.part(0..t.shape()[0]));
                    let s = s.ok_or_else(|| kernel_err("binary", format!("no scalar tile on core {core}")))?;
                    kb.tensor_scalar(engine, t, t, Stage::new(op, s), None)?;
                    Ok(t.clone())
                })?;
                allocs.free(kb)?;
            }
            Plan::Row { rows, cols } => Rows::new(chip, dtype, op, abc, rows, cols, nb).row(kb, cores)?,
            Plan::Col { rows, cols } => Rows::new(chip, dtype, op, abc, rows, cols, nb).col(kb, cores)?,
            Plan::General { outer, cols, inner_same } => {
                let rows = outer.iter().map(|d| d.0).product();
                Rows::new(chip, dtype, op, abc, rows, cols, nb).general(kb, cores, &outer, inner_same)?
            }
        }
        kb.core(home)?;
        let bytes = (2 * n + nb) as u64 * dtype.size() as u64;
        Ok(Cost { flops: n as u64, bytes_hbm: bytes, peak_dtype: None })
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let Args { op, a: ashape, b: bshape, .. } = parse(self.name(), args)?;
        let a = input(self.name(), inputs, "a")?;
        let b = input(self.name(), inputs, "b")?;
        let bal = aligned_b(&ashape, &bshape).map_err(|m| kernel_err(self.name(), m))?;
        // Element strides of `b` along each axis of `a` (0 where broadcast).
        let mut strides = vec![0usize; ashape.len()];
        let mut s = 1;
        for i in (0..ashape.len()).rev() {
            if bal[i] != 1 {
                strides[i] = s;
            }
            s *= bal[i];
        }
        let mut out = Vec::with_capacity(a.len());
        let mut idx = vec![0usize; ashape.len()];
        for &av in a {
            let bi: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out.push(apply(op, av, b.get(bi).copied().unwrap_or(f64::NAN)));
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < ashape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Ok(output("c", ashape, out))
    }
    fn input_values(&self, args: &KernelArgs, name: &str, shape: &[usize], seed: u64) -> Option<Vec<f64>> {
        // pow of a negative base is NaN: test it on positive bases.
        (name == "a" && args.string("op", "add") == "pow")
            .then(|| super::unary::positive_inputs(shape.iter().product(), seed))
    }
}

/// The operator in f64 (the reference side): the ISA's definition.
fn apply(op: AluOp, a: f64, b: f64) -> f64 {
    op.apply_f64(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::elementwise::tests::{check, chips};
    use proptest::prelude::*;
    use trainyard_isa::Op;

    #[test]
    fn plans() {
        assert_eq!(plan(&[4, 8], &[4, 8]), Ok(Plan::Same));
        assert_eq!(plan(&[4, 8], &[1]), Ok(Plan::Scalar));
        assert_eq!(plan(&[4, 8], &[1, 1]), Ok(Plan::Scalar));
        assert_eq!(plan(&[4, 8], &[8]), Ok(Plan::Row { rows: 4, cols: 8 }));
        assert_eq!(plan(&[4, 8], &[4, 1]), Ok(Plan::Col { rows: 4, cols: 8 }));
        assert_eq!(plan(&[2, 3, 4], &[3, 4]), Ok(Plan::Row { rows: 2, cols: 12 }));
        assert_eq!(plan(&[2, 1, 4], &[1, 1, 4]), Ok(Plan::Row { rows: 2, cols: 4 }));
        assert_eq!(
            plan(&[2, 3, 4], &[1, 3, 1]),
            Ok(Plan::General { outer: vec![(2, 0), (3, 1)], cols: 4, inner_same: false })
        );
        assert_eq!(
            plan(&[2, 3, 4, 5], &[2, 1, 4, 1]),
            Ok(Plan::General { outer: vec![(2, 4), (3, 0), (4, 1)], cols: 5, inner_same: false })
        );
        assert_eq!(
            plan(&[2, 3, 4], &[2, 1, 4]),
            Ok(Plan::General { outer: vec![(2, 4), (3, 0)], cols: 4, inner_same: true })
        );
        assert!(plan(&[4, 8], &[3]).is_err());
        assert!(plan(&[4, 8], &[2, 4, 8]).is_err());
        assert_eq!(plan(&[4, 8], &[1, 4, 8]), Ok(Plan::Same));
    }

    fn args(a: &[usize], b: &str, op: &str, dtype: DType) -> KernelArgs {
        KernelArgs::new(a, dtype).with("b_shape", b).with("op", op)
    }

    #[test]
    fn broadcasts_on_odd_shapes() {
        for chip in chips() {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                for (a, b) in [
                    (&[1usize, 1][..], "1"),
                    (&[3, 1000], "3,1000"),
                    (&[3, 1000], "1,1000"),
                    (&[3, 1000], "3,1"),
                    (&[129, 257], "257"),
                    (&[129, 257], "129,1"),
                    (&[129, 257], "1"),
                    (&[200, 3], "1,3"),
                    (&[200, 3], "200,1"),
                    (&[4, 5, 6], "1,5,1"),
                    (&[4, 5, 6], "4,1,6"),
                    (&[3, 4, 5, 6], "3,1,5,1"),
                    (&[2, 130, 3], "2,1,3"),
                ] {
                    check(&Binary, &chip, &args(a, b, "sub", dtype));
                }
            }
        }
    }

    #[test]
    fn every_operator() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for &op in AluOp::ALL.iter().filter(|o| !o.is_bitwise() && **o != AluOp::Bypass) {
            check(&Binary, &chip, &args(&[130, 40], "1,40", op.name(), DType::F32));
            check(&Binary, &chip, &args(&[130, 40], "130,40", op.name(), DType::Bf16));
        }
    }

    #[test]
    fn row_vector_is_loaded_once_per_core_with_stride_zero() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let mut a = args(&[1000, 700], "700", "mul", DType::Bf16);
        a.cores = 2;
        let run = check(&Binary, &chip, &a);
        let b_offset = run.built.program.tensor("b").unwrap().offset;
        let b_loads: Vec<_> = run
            .built
            .program
            .insts
            .iter()
            .filter_map(|i| match &i.op {
                Op::DmaCopy { src, .. } if src.offset == b_offset => Some(*src),
                _ => None,
            })
            .collect();
        assert_eq!(b_loads.len(), 2);
        assert!(b_loads.iter().all(|s| s.partition_stride == 0 && s.partitions == 128));
        // Wide column vector: per-partition scalars, no tensor_tensor.
        let run = check(&Binary, &chip, &args(&[300, 2000], "300,1", "div", DType::F32));
        assert!(run.built.program.insts.iter().any(|i| matches!(i.op, Op::TensorScalar { .. })));
        assert!(!run.built.program.insts.iter().any(|i| matches!(i.op, Op::TensorTensor { .. })));
    }

    #[test]
    fn wide_rows_are_chunked_and_cores_split() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for b in ["3,20000", "1,20000", "3,1", "1"] {
            let mut a = args(&[3, 20000], b, "max", DType::F32);
            a.cores = 2;
            check(&Binary, &chip, &a);
        }
        let mut a = args(&[5, 3, 9000], "5,1,9000", "add", DType::Bf16);
        a.cores = 2;
        check(&Binary, &chip, &a);
    }

    #[test]
    fn argument_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for (a, why) in [
            (args(&[4, 8], "3", "add", DType::F32), "b_shape"),
            (args(&[4, 8], "0,8", "add", DType::F32), "b_shape"),
            (args(&[4, 8], "x", "add", DType::F32), "b_shape"),
            (args(&[4, 8], "8", "bit_and", DType::F32), "bit_and"),
            (args(&[4, 8], "8", "nope", DType::F32), "nope"),
        ] {
            let e = crate::library::build(&Binary, &chip, &a).unwrap_err().to_string();
            assert!(e.contains("binary") && e.contains(why), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// Random shapes with random broadcast masks.
        #[test]
        fn random_broadcasts(
            dims in proptest::collection::vec(1usize..20, 1..4), mask in 0u32..16, drop in 0usize..3, dt in 0usize..3
        ) {
            let chip = ChipSpec::by_name("trn2").unwrap();
            let mut dims = dims;
            dims[0] *= 7;
            let b: Vec<String> = dims.iter().enumerate().skip(drop.min(dims.len() - 1))
                .map(|(i, &d)| if mask >> i & 1 == 1 { "1".to_string() } else { d.to_string() }).collect();
            let dtype = [DType::F32, DType::Bf16, DType::F16][dt];
            check(&Binary, &chip, &args(&dims, &b.join(","), "mul", dtype));
        }
    }
}
