//! Data movement as DMA access patterns: Transpose, Concat, Split, Slice, Pad, Gather,
//! Tile, DepthToSpace / SpaceToDepth, and the helpers other lowerings share (filling a
//! tensor, strided HBM-to-HBM copies, transposes).
//!
//! A strided copy describes both sides as (element offset, per-axis strides) over the
//! same sizes; axes contiguous on both sides merge, size-1 axes drop, and what is left
//! becomes one DMA per five axes (a partition axis and four free ones), looping over
//! any axes beyond. Negative strides (reversed slices) are access patterns too.
//! Transposes of float tensors with up to four axes after merging use the library
//! `transpose`; others fall back to a strided copy.

use trainyard_arch::DType;
use trainyard_isa::{AluOp, Ap, Dim, Engine, Space};
use trainyard_kernels::library::KernelArgs;
use trainyard_kernels::{BuildError, HbmTensor};

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{copy_flat, Cx, Emitter, Io, Step};
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{strides_of, Node, Op, PadMode};

/// Fills `t` with `value` from a constant SBUF tile.
pub fn fill(cx: &mut Cx, t: &HbmTensor, value: f64) -> Result<(), BuildError> {
    const F: usize = 2048;
    let p = cx.kb.chip().core.sbuf.partitions as usize;
    let n: usize = t.shape().iter().product();
    let cols = n.div_ceil(p).clamp(1, F);
    let tile = cx.kb.sbuf_tile(&[p, cols], t.dtype())?;
    cx.kb.memset(Engine::GpSimd, &tile, value)?;
    let flat = t.view().reshape(&[n]);
    let mut start = 0;
    while start < n {
        let rem = n - start;
        let (rows, w) = if rem >= p * cols {
            (p, cols)
        } else if rem >= cols {
            (rem / cols, cols)
        } else {
            (1, rem)
        };
        let dst = flat.slice(0, start..start + rows * w).reshape(&[rows, w]);
        cx.kb.dma(dst, tile.part(0..rows).cols(0..w))?;
        start += rows * w;
    }
    cx.kb.free(tile)
}

/// One side of a strided copy: element offset and per-axis strides.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    /// Element offset of the first element.
    pub offset: i64,
    /// Stride of each axis, in elements.
    pub strides: Vec<i64>,
}

impl Side {
    /// The row-major layout of `shape` from offset 0.
    pub fn dense(shape: &[usize]) -> Side {
        Side { offset: 0, strides: strides_of(shape).into_iter().map(|s| s as i64).collect() }
    }
}

fn merged(sizes: &[usize], sides: [&Side; 2]) -> (Vec<usize>, [Vec<i64>; 2]) {
    let mut dims: Vec<usize> = Vec::new();
    let mut st: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for (k, &n) in sizes.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let can = !dims.is_empty() && (0..2).all(|s| st[s].last() == Some(&(sides[s].strides[k] * n as i64)));
        if can {
            if let Some(d) = dims.last_mut() {
                *d *= n;
            }
            for s in 0..2 {
                if let Some(x) = st[s].last_mut() {
                    *x = sides[s].strides[k];
                }
            }
        } else {
            dims.push(n);
            for s in 0..2 {
                st[s].push(sides[s].strides[k]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        st = [vec![1], vec![1]];
    }
    (dims, st)
}

fn ap(t: &HbmTensor, offset: i64, dims: &[usize], strides: &[i64]) -> Ap {
    let es = t.dtype().size() as i64;
    let (p, ps) = (dims[0], strides[0]);
    let free: Vec<Dim> = if dims.len() == 1 {
        vec![Dim { stride: 1, size: 1 }]
    } else {
        dims[1..].iter().zip(&strides[1..]).map(|(&n, &s)| Dim { stride: s, size: n as u32 }).collect()
    };
    Ap::new(Space::Hbm, 0, p as u32, ps, (t.offset() as i64 + offset * es) as u64, &free, t.dtype())
}

/// Copies `sizes` elements between the patterns `d` (of `dst`) and `s` (of `src`).
pub fn copy_strided(
    cx: &mut Cx,
    dst: &HbmTensor,
    d: &Side,
    src: &HbmTensor,
    s: &Side,
    sizes: &[usize],
) -> Result<(), BuildError> {
    if sizes.contains(&0) {
        return Ok(());
    }
    let (dims, [ds, ss]) = merged(sizes, [d, s]);
    // A single long row: spread it over partitions so more DMA engines take part.
    if dims.len() == 1 && dims[0] >= 4096 && ds[0] == 1 && ss[0] == 1 {
        let n = dims[0];
        let rows = (n / 2048).clamp(1, 128);
        let per = n / rows;
        let (rd, rs) = (vec![rows, per], vec![per as i64, 1]);
        cx.kb.dma(ap(dst, d.offset, &rd, &rs), ap(src, s.offset, &rd, &rs))?;
        let done = rows * per;
        if done < n {
            let tail = [n - done];
            cx.kb.dma(ap(dst, d.offset + done as i64, &tail, &[1]), ap(src, s.offset + done as i64, &tail, &[1]))?;
        }
        return Ok(());
    }
    let outer = dims.len().saturating_sub(5);
    let n_outer: usize = dims[..outer].iter().product();
    for mut o in 0..n_outer {
        let (mut od, mut os) = (d.offset, s.offset);
        for k in (0..outer).rev() {
            let i = (o % dims[k]) as i64;
            o /= dims[k];
            od += i * ds[k];
            os += i * ss[k];
        }
        cx.kb.dma(ap(dst, od, &dims[outer..], &ds[outer..]), ap(src, os, &dims[outer..], &ss[outer..]))?;
    }
    Ok(())
}

/// `y = x` with axes permuted (`y` axis `i` is `x` axis `perm[i]`).
pub fn transpose(cx: &mut Cx, x: &HbmTensor, y: &HbmTensor, perm: &[usize]) -> Result<(), BuildError> {
    let xs = x.shape().to_vec();
    // Merge x axes that stay adjacent and in order in y; drop size-1 axes.
    let kept: Vec<usize> = perm.iter().copied().filter(|&a| xs[a] != 1).collect();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &a in &kept {
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|&l| l + 1 == a) => g.push(a),
            _ => groups.push(vec![a]),
        }
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| groups[i][0]);
    let shape: Vec<usize> = order.iter().map(|&i| groups[i].iter().map(|&a| xs[a]).product()).collect();
    let gperm: Vec<usize> = (0..groups.len()).map(|i| order.iter().position(|&o| o == i).unwrap_or(0)).collect();
    if gperm.iter().enumerate().all(|(i, &p)| i == p) {
        return copy_flat(cx.kb, y, x);
    }
    let float = matches!(x.dtype(), DType::F32 | DType::Bf16 | DType::F16);
    if float && shape.len() <= 4 {
        let out: Vec<usize> = gperm.iter().map(|&p| shape[p]).collect();
        let perm_s = gperm.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let args = KernelArgs::new(&shape, x.dtype()).with("perm", &perm_s);
        return cx.library("transpose", args, &[("x", &x.reshaped(&shape)?), ("y", &y.reshaped(&out)?)]);
    }
    let xst: Vec<i64> = strides_of(&shape).into_iter().map(|s| s as i64).collect();
    let sizes: Vec<usize> = gperm.iter().map(|&p| shape[p]).collect();
    let src = Side { offset: 0, strides: gperm.iter().map(|&p| xst[p]).collect() };
    copy_strided(cx, y, &Side::dense(&sizes), x, &src, &sizes)
}

/// Plans the data-movement ops.
pub fn plan(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let x = *node.inputs.first().ok_or_else(|| unsupported(node, "no input"))?;
    let xs = p.shape(x);
    let kind = match &node.op {
        Op::Transpose { perm } => Move::Transpose(perm.clone()),
        Op::Concat { axis } => Move::Concat(*axis),
        Op::Split { axis, .. } => Move::Split(*axis),
        Op::Slice { axes } => {
            let mut starts = vec![0i64; xs.len()];
            let mut steps = vec![1i64; xs.len()];
            for a in axes {
                starts[a.axis] = a.start;
                steps[a.axis] = a.step;
            }
            Move::Slice { starts, steps }
        }
        Op::Pad { mode, pads, value } => Move::Pad { mode: *mode, pads: pads.clone(), value: *value },
        Op::Gather { axis } => {
            let idx = node.inputs.get(1).copied().ok_or_else(|| unsupported(node, "no indices"))?;
            match p.constant(idx) {
                Some(t) => {
                    let n = xs.get(*axis).copied().unwrap_or(1) as i64;
                    let idx: Vec<i64> = t.to_i64_vec().into_iter().map(|i| if i < 0 { i + n } else { i }).collect();
                    if idx.iter().any(|&i| i < 0 || i >= n) {
                        return Err(unsupported(node, "an index is out of range"));
                    }
                    Move::GatherConst { axis: *axis, idx: idx.into_iter().map(|i| i as usize).collect() }
                }
                None => {
                    if !p.dtype_of(x).is_float() {
                        return Err(unsupported(node, "gathers of non-float data by run-time indices"));
                    }
                    let n = xs.get(*axis).copied().unwrap_or(1);
                    let e = GatherRows { axis: *axis, n, idx_shape: p.shape(idx) };
                    return Ok(step(node, &node.op_type.clone(), vec![x, idx], node.outputs.clone(), e));
                }
            }
        }
        Op::Tile { repeats } => Move::Tile(repeats.clone()),
        Op::DepthToSpace { block, crd } => Move::DepthToSpace { block: *block, crd: *crd },
        Op::SpaceToDepth { block } => Move::SpaceToDepth { block: *block },
        _ => return Err(unsupported(node, "not a data-movement op")),
    };
    let inputs = match kind {
        Move::Concat(_) => node.inputs.clone(),
        _ => vec![x],
    };
    Ok(step(node, &node.op_type.clone(), inputs, node.outputs.clone(), kind))
}

/// A data-movement step.
enum Move {
    Transpose(Vec<usize>),
    Concat(usize),
    Split(usize),
    Slice { starts: Vec<i64>, steps: Vec<i64> },
    Pad { mode: PadMode, pads: Vec<(i64, i64)>, value: f64 },
    GatherConst { axis: usize, idx: Vec<usize> },
    Tile(Vec<usize>),
    DepthToSpace { block: usize, crd: bool },
    SpaceToDepth { block: usize },
}

/// `[outer, n, inner]` around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape.get(axis).copied().unwrap_or(1), inner)
}

impl Move {
    fn pad(
        cx: &mut Cx,
        x: &HbmTensor,
        y: &HbmTensor,
        mode: PadMode,
        pads: &[(i64, i64)],
        value: f64,
    ) -> Result<(), BuildError> {
        let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
        let (xst, yst) = (strides_of(&xs), strides_of(&ys));
        if mode == PadMode::Constant && pads.iter().any(|&(b, e)| b > 0 || e > 0) {
            fill(cx, y, value)?;
        }
        // The interior: crop where pads are negative.
        let mut s = Side { offset: 0, strides: xst.iter().map(|&v| v as i64).collect() };
        let mut d = Side { offset: 0, strides: yst.iter().map(|&v| v as i64).collect() };
        let mut sizes = Vec::with_capacity(xs.len());
        for (k, &(b, e)) in pads.iter().enumerate() {
            let (cb, ce) = ((-b).max(0) as usize, (-e).max(0) as usize);
            s.offset += (cb * xst[k]) as i64;
            d.offset += (b.max(0) as usize * yst[k]) as i64;
            sizes.push(xs[k] - cb - ce);
        }
        copy_strided(cx, y, &d, x, &s, &sizes)?;
        if mode == PadMode::Constant {
            return Ok(());
        }
        // Edge, reflect and wrap: fill each axis's pads from y itself, axis by axis, so
        // corners take the values already padded along earlier axes.
        for (k, &(b, e)) in pads.iter().enumerate() {
            let (b, e) = (b.max(0) as usize, e.max(0) as usize);
            let len = ys[k] - b - e;
            let mut slab: Vec<usize> = ys.clone();
            slab[k] = 1;
            let row = |i: usize| Side { offset: (i * yst[k]) as i64, strides: yst.iter().map(|&v| v as i64).collect() };
            let source = |i: isize| -> usize {
                // i: position relative to the interior start (negative: before it).
                let l = len as isize;
                let j = match mode {
                    PadMode::Edge => i.clamp(0, l - 1),
                    PadMode::Reflect => {
                        let period = (2 * (l - 1)).max(1);
                        let m = i.rem_euclid(period);
                        if m < l {
                            m
                        } else {
                            period - m
                        }
                    }
                    _ => i.rem_euclid(l),
                };
                (j + b as isize) as usize
            };
            for i in 0..b {
                let src = source(i as isize - b as isize);
                copy_strided(cx, y, &row(i), y, &row(src), &slab)?;
            }
            for i in 0..e {
                let src = source((len + i) as isize);
                copy_strided(cx, y, &row(b + len + i), y, &row(src), &slab)?;
            }
        }
        Ok(())
    }
}

impl Emitter for Move {
    fn skips_empty_inputs(&self) -> bool {
        matches!(self, Move::Concat(_))
    }

    fn concat_axis(&self) -> Option<usize> {
        match self {
            Move::Concat(a) => Some(*a),
            _ => None,
        }
    }

    fn kernels(&self) -> String {
        match self {
            Move::Transpose(_) | Move::DepthToSpace { .. } | Move::SpaceToDepth { .. } => "transpose".into(),
            _ => "dma_copy".into(),
        }
    }

    fn batch_separable(&self, batched: &[bool], shapes: &[Vec<usize>], out: &[usize]) -> bool {
        let n = out.first().copied();
        let all_batched = batched.iter().zip(shapes).all(|(&b, s)| b && s.first().copied() == n);
        all_batched
            && match self {
                Move::Transpose(perm) => perm.first() == Some(&0),
                Move::Concat(a) | Move::Split(a) => *a != 0,
                Move::Slice { starts, steps } => starts.first() == Some(&0) && steps.first() == Some(&1),
                Move::Pad { pads, .. } => pads.first() == Some(&(0, 0)),
                Move::GatherConst { axis, .. } => *axis != 0,
                Move::Tile(r) => r.first() == Some(&1),
                Move::DepthToSpace { .. } | Move::SpaceToDepth { .. } => true,
            }
    }

    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let x = io.input(0)?;
        match self {
            Move::Transpose(perm) => transpose(cx, x, io.output(0)?, perm),
            Move::Concat(axis) => {
                let y = io.output(0)?;
                let (outer, total, inner) = around(y.shape(), *axis);
                let mut at = 0;
                let es = y.dtype().size() as u64;
                for t in &io.inputs {
                    let len = t.shape().get(*axis).copied().unwrap_or(1);
                    // A piece the compiler placed in the output already is not copied.
                    let in_place = outer == 1 && t.offset() == y.offset() + (at * inner) as u64 * es;
                    if in_place {
                        at += len;
                        continue;
                    }
                    let d = Side { offset: (at * inner) as i64, strides: vec![(total * inner) as i64, 1] };
                    let s = Side::dense(&[outer, len * inner]);
                    copy_strided(cx, y, &d, t, &s, &[outer, len * inner])?;
                    at += len;
                }
                Ok(())
            }
            Move::Split(axis) => {
                let (outer, total, inner) = around(x.shape(), *axis);
                let mut at = 0;
                for y in &io.outputs {
                    let len = y.shape().get(*axis).copied().unwrap_or(1);
                    let s = Side { offset: (at * inner) as i64, strides: vec![(total * inner) as i64, 1] };
                    copy_strided(cx, y, &Side::dense(&[outer, len * inner]), x, &s, &[outer, len * inner])?;
                    at += len;
                }
                Ok(())
            }
            Move::Slice { starts, steps } => {
                let y = io.output(0)?;
                let xst = strides_of(x.shape());
                let offset = starts.iter().zip(&xst).map(|(&s, &st)| s * st as i64).sum();
                let strides = steps.iter().zip(&xst).map(|(&s, &st)| s * st as i64).collect();
                let sizes = y.shape().to_vec();
                copy_strided(cx, y, &Side::dense(&sizes), x, &Side { offset, strides }, &sizes)
            }
            Move::Pad { mode, pads, value } => Move::pad(cx, x, io.output(0)?, *mode, pads, *value),
            Move::GatherConst { axis, idx } => {
                let y = io.output(0)?;
                let (outer, n, inner) = around(x.shape(), *axis);
                let m = idx.len();
                // Runs of indices in arithmetic progression become one copy each.
                let mut j = 0;
                while j < m {
                    let step = if j + 1 < m { idx[j + 1] as i64 - idx[j] as i64 } else { 1 };
                    let mut len = 1;
                    while j + len < m && idx[j + len] as i64 - idx[j + len - 1] as i64 == step {
                        len += 1;
                    }
                    let d = Side { offset: (j * inner) as i64, strides: vec![(m * inner) as i64, inner as i64, 1] };
                    let s = Side {
                        offset: (idx[j] * inner) as i64,
                        strides: vec![(n * inner) as i64, step * inner as i64, 1],
                    };
                    copy_strided(cx, y, &d, x, &s, &[outer, len, inner])?;
                    j += len;
                }
                Ok(())
            }
            Move::Tile(repeats) => {
                let y = io.output(0)?;
                let xs = x.shape().to_vec();
                let (xst, yst) = (strides_of(&xs), strides_of(y.shape()));
                // Per axis: (repeat, stride 0 in x) then the axis itself.
                let mut sizes = Vec::new();
                let mut ds = Vec::new();
                let mut ss = Vec::new();
                for k in 0..xs.len() {
                    sizes.extend([repeats[k], xs[k]]);
                    ds.extend([(xs[k] * yst[k]) as i64, yst[k] as i64]);
                    ss.extend([0, xst[k] as i64]);
                }
                copy_strided(cx, y, &Side { offset: 0, strides: ds }, x, &Side { offset: 0, strides: ss }, &sizes)
            }
            Move::DepthToSpace { block, crd } => {
                let y = io.output(0)?;
                let s = x.shape();
                let (n, c, h, w, b) = (s[0], s[1], s[2], s[3], *block);
                let oc = c / (b * b);
                // DCR: [N, b, b, C', H, W] → [N, C', H, b, W, b]; CRD: [N, C', b, b, H, W] → same.
                let (shape, perm) = if *crd {
                    (vec![n, oc, b, b, h, w], vec![0, 1, 4, 2, 5, 3])
                } else {
                    (vec![n, b, b, oc, h, w], vec![0, 3, 4, 1, 5, 2])
                };
                let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                transpose(cx, &x.reshaped(&shape)?, &y.reshaped(&out)?, &perm)
            }
            Move::SpaceToDepth { block } => {
                let y = io.output(0)?;
                let s = x.shape();
                let (n, c, h, w, b) = (s[0], s[1], s[2], s[3], *block);
                let shape = vec![n, c, h / b, b, w / b, b];
                let perm = vec![0, 3, 5, 1, 2, 4];
                let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                transpose(cx, &x.reshaped(&shape)?, &y.reshaped(&out)?, &perm)
            }
        }
    }
}

/// `Gather` by run-time indices: rows of `[outer, n, inner]` data picked by an
/// indirect DMA (the library `embedding`), per outer index.
struct GatherRows {
    axis: usize,
    /// Length of the indexed axis (negative indices count from it).
    n: usize,
    idx_shape: Vec<usize>,
}

impl Emitter for GatherRows {
    fn kernels(&self) -> String {
        "elementwise+embedding".into()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        // Rows of a table picked by batched indices, or batched data indexed along a later axis.
        match (batched.first(), batched.get(1)) {
            (Some(false), Some(true)) => self.axis == 0,
            (Some(true), Some(false)) => self.axis > 0,
            _ => false,
        }
    }
    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        vec![(self.idx_shape.clone(), DType::I32)]
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, idx, y) = (io.input(0)?, io.input(1)?, io.output(0)?);
        let (outer, n, inner) = around(x.shape(), self.axis);
        let t: usize = idx.shape().iter().product();
        if idx.dtype() != DType::I32 {
            return Err(BuildError::Kernel {
                kernel: "embedding".into(),
                message: "indices must be 32-bit integers".into(),
            });
        }
        // Negative indices count from the end: i + n·(i < 0).
        let ids = super::emit::fit(io.temp(0)?, &[t])?;
        let mut wrap = EwProgram::new(Arg::In(0));
        let neg = wrap.alu(AluOp::Lt, Arg::In(0), Arg::Imm(0.0));
        let off = wrap.ts(neg, (AluOp::Mul, self.n as f32), None);
        wrap.result = wrap.alu(AluOp::Add, Arg::In(0), off);
        let pass = Io { inputs: vec![idx.reshaped(&[t])?], outputs: vec![ids.clone()], temps: vec![] };
        Elementwise::new(wrap).emit(cx, &pass)?;
        let es = x.dtype().size() as u64;
        for o in 0..outer {
            let table = x.region(&format!("{}[{o}]", x.name()), (o * n * inner) as u64 * es, &[n, inner], x.dtype())?;
            let out = y.region(&format!("{}[{o}]", y.name()), (o * t * inner) as u64 * es, &[t, inner], y.dtype())?;
            let args = KernelArgs::new(&[t, n, inner], x.dtype());
            cx.library("embedding", args, &[("ids", &ids), ("table", &table), ("y", &out)])?;
        }
        Ok(())
    }
}
