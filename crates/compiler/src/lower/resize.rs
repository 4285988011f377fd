//! `Resize` (nearest, linear, cubic; every coordinate transform) as separable passes:
//! one per resized axis, in order.
//!
//! The taps come from the interpreter ([`crate::interp::resize_taps`]), so both
//! sample the same positions. Along an axis, output index `i` is `Σ_k w_k[i] ·
//! x[src_k[i]]` (plus the extrapolation value where `tf_crop_and_resize` samples
//! outside the crop). Each tap `k` is a *gather*: copies of whole slabs from
//! `src_k[i]` to `i`, as strided DMAs — one per arithmetic run of the index map, and
//! a map with a period (×2 nearest: 0,0,1,1,…) splits into one run per phase. Nearest
//! resizing is gathers only; linear and cubic add one elementwise pass
//! `Σ_k g_k · w_k (+ b)` with the weights as constants broadcast along the other axes.

use trainyard_arch::DType;
use trainyard_isa::AluOp;
use trainyard_kernels::{BuildError, HbmTensor};

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{fit, Cx, Emitter, Io, Step};
use super::movement::{copy_strided, Side};
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{Node, Op, Tensor};

/// One resized axis.
#[derive(Clone, Debug, PartialEq)]
struct AxisPass {
    axis: usize,
    out_len: usize,
    /// Per tap: the source index of each output index.
    srcs: Vec<Vec<usize>>,
    /// Step inputs holding each tap's weights (none: one tap of weight 1).
    weights: Vec<usize>,
    /// Step input holding the extrapolation term, if any.
    bias: Option<usize>,
}

struct ResizeStep {
    passes: Vec<AxisPass>,
    shape: Vec<usize>,
    dtype: DType,
}

/// Output runs of an index map: (first output, output step, first source, source
/// step, count).
pub fn runs(src: &[usize]) -> Vec<(usize, usize, usize, i64, usize)> {
    let n = src.len();
    let ap = |idx: &[usize]| -> Option<i64> {
        let step = if idx.len() > 1 { src[idx[1]] as i64 - src[idx[0]] as i64 } else { 0 };
        idx.windows(2).all(|w| src[w[1]] as i64 - src[w[0]] as i64 == step).then_some(step)
    };
    for q in 1..=8.min(n.max(1)) {
        let phases: Vec<Vec<usize>> = (0..q.min(n)).map(|a| (a..n).step_by(q).collect()).collect();
        if let Some(steps) = phases.iter().map(|p| ap(p)).collect::<Option<Vec<i64>>>() {
            return phases.iter().zip(steps).map(|(p, s)| (p[0], q, src[p[0]], s, p.len())).collect();
        }
    }
    // Greedy consecutive runs.
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let step = if i + 1 < n { src[i + 1] as i64 - src[i] as i64 } else { 0 };
        let mut len = 1;
        while i + len < n && src[i + len] as i64 - src[i + len - 1] as i64 == step {
            len += 1;
        }
        out.push((i, 1, src[i], step, len));
        i += len;
    }
    out
}

/// `dst` (axis `axis` of length `src_idx.len()`) ← slabs of `src` picked by `src_idx`.
fn gather(cx: &mut Cx, dst: &HbmTensor, src: &HbmTensor, axis: usize, src_idx: &[usize]) -> Result<(), BuildError> {
    let s = src.shape();
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let (n_in, n_out) = (s[axis], src_idx.len());
    for (o0, oq, s0, ss, len) in runs(src_idx) {
        let d = Side { offset: (o0 * inner) as i64, strides: vec![(n_out * inner) as i64, (oq * inner) as i64, 1] };
        let r = Side { offset: (s0 * inner) as i64, strides: vec![(n_in * inner) as i64, ss * inner as i64, 1] };
        copy_strided(cx, dst, &d, src, &r, &[outer, len, inner])?;
    }
    Ok(())
}

pub fn plan(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let Op::Resize(r) = &node.op else { return Err(unsupported(node, "not a resize")) };
    let x = node.inputs[0];
    let y = node.outputs[0];
    let (xs, ys) = (p.shape(x), p.shape(y));
    let float = p.dtype_of(x).is_float();
    let mut inputs = vec![x];
    let mut passes = Vec::new();
    for d in 0..xs.len() {
        let taps = crate::interp::resize_taps(r, d, xs[d], ys[d]);
        let identity = xs[d] == ys[d] && taps.iter().enumerate().all(|(i, t)| t.as_deref() == Some(&[(i, 1.0)][..]));
        if identity {
            continue;
        }
        let n = taps.iter().map(|t| t.as_ref().map_or(0, Vec::len)).max().unwrap_or(0).max(1);
        let extrap = taps.iter().any(Option::is_none);
        let mut srcs = vec![vec![0usize; ys[d]]; n];
        let mut ws = vec![vec![0.0f64; ys[d]]; n];
        for (i, t) in taps.iter().enumerate() {
            for (k, &(s, w)) in t.iter().flatten().enumerate() {
                srcs[k][i] = s;
                ws[k][i] = w;
            }
        }
        let plain = n == 1 && !extrap && ws[0].iter().all(|&w| w == 1.0);
        let mut pass = AxisPass { axis: d, out_len: ys[d], srcs, weights: vec![], bias: None };
        if !plain {
            if !float {
                return Err(unsupported(node, "interpolating integer data"));
            }
            let wshape: Vec<usize> = std::iter::once(ys[d]).chain(std::iter::repeat_n(1, xs.len() - d - 1)).collect();
            let dt = p.dtype_of(x);
            for (k, w) in ws.into_iter().enumerate() {
                let t = Tensor::from_f64(dt, wshape.clone(), w).map_err(|e| unsupported(node, e))?;
                inputs.push(p.add_constant(&format!("{}.w{d}.{k}", node.name), t));
                pass.weights.push(inputs.len() - 1);
            }
            if extrap {
                let b: Vec<f64> = taps.iter().map(|t| if t.is_none() { r.extrapolation_value } else { 0.0 }).collect();
                let t = Tensor::from_f64(dt, wshape, b).map_err(|e| unsupported(node, e))?;
                inputs.push(p.add_constant(&format!("{}.b{d}", node.name), t));
                pass.bias = Some(inputs.len() - 1);
            }
        }
        passes.push(pass);
    }
    if passes.is_empty() {
        return Ok(Step {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            inputs: vec![x],
            outputs: vec![y],
            kind: super::emit::StepKind::Alias,
        });
    }
    let e = ResizeStep { passes, shape: xs, dtype: p.dev(x) };
    Ok(step(node, &node.op_type.clone(), inputs, vec![y], e))
}

impl ResizeStep {
    /// The shape after each pass, from input shape `s`.
    fn shapes(&self, s: &[usize]) -> Vec<Vec<usize>> {
        let mut cur = s.to_vec();
        self.passes
            .iter()
            .map(|p| {
                cur[p.axis] = p.out_len;
                cur.clone()
            })
            .collect()
    }
}

impl Emitter for ResizeStep {
    fn kernels(&self) -> String {
        if self.passes.iter().any(|p| !p.weights.is_empty()) {
            "dma_copy+elementwise".into()
        } else {
            "dma_copy".into()
        }
    }

    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        let shapes = self.shapes(&self.shape);
        let mut v = Vec::new();
        for (j, (p, s)) in self.passes.iter().zip(&shapes).enumerate() {
            for _ in 0..p.weights.len() {
                v.push((s.clone(), self.dtype));
            }
            if j + 1 < self.passes.len() {
                v.push((s.clone(), self.dtype));
            }
        }
        v
    }

    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true) && self.passes.iter().all(|p| p.axis != 0) && !batched[1..].iter().any(|&b| b)
    }

    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let shapes = self.shapes(x.shape());
        let mut temps = io.temps.iter();
        let mut next_temp = |shape: &[usize]| -> Result<HbmTensor, BuildError> {
            let t = temps
                .next()
                .ok_or_else(|| BuildError::Kernel { kernel: "resize".into(), message: "scratch missing".into() })?;
            fit(t, shape)
        };
        let mut cur = x.clone();
        for (j, (p, shape)) in self.passes.iter().zip(&shapes).enumerate() {
            let last = j + 1 == self.passes.len();
            if p.weights.is_empty() {
                let dst = if last { y.clone() } else { next_temp(shape)? };
                gather(cx, &dst, &cur, p.axis, &p.srcs[0])?;
                cur = dst;
                continue;
            }
            let mut gathered = Vec::with_capacity(p.weights.len());
            for src in &p.srcs {
                let g = next_temp(shape)?;
                gather(cx, &g, &cur, p.axis, src)?;
                gathered.push(g);
            }
            let dst = if last { y.clone() } else { next_temp(shape)? };
            let n = gathered.len();
            let mut prog = EwProgram::new(Arg::In(0));
            let mut acc = prog.alu(AluOp::Mul, Arg::In(0), Arg::In(n));
            for k in 1..n {
                let t = prog.alu(AluOp::Mul, Arg::In(k), Arg::In(n + k));
                acc = prog.alu(AluOp::Add, acc, t);
            }
            let mut inputs = gathered;
            for &w in &p.weights {
                inputs.push(io.input(w)?.clone());
            }
            if let Some(b) = p.bias {
                inputs.push(io.input(b)?.clone());
                acc = prog.alu(AluOp::Add, acc, Arg::In(2 * n));
            }
            prog.result = acc;
            Elementwise::new(prog).emit(cx, &Io { inputs, outputs: vec![dst.clone()], temps: vec![] })?;
            cur = dst;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_maps_split_into_few_runs() {
        assert_eq!(runs(&[0, 0, 1, 1, 2, 2]), vec![(0, 2, 0, 1, 3), (1, 2, 0, 1, 3)]);
        assert_eq!(runs(&[0, 2, 4, 6]), vec![(0, 1, 0, 2, 4)]);
        assert_eq!(runs(&[3]), vec![(0, 1, 3, 0, 1)]);
        let irregular = [0, 1, 3, 4, 5, 7, 8, 9, 10, 12, 13, 15, 16, 17, 18];
        let r = runs(&irregular);
        let covered: usize = r.iter().map(|x| x.4).sum();
        assert_eq!(covered, irregular.len());
        for (o0, oq, s0, ss, len) in r {
            for t in 0..len {
                assert_eq!(irregular[o0 + t * oq] as i64, s0 as i64 + t as i64 * ss);
            }
        }
    }
}
