//! Ops along one axis: Softmax / LogSoftmax, LayerNormalization, RMSNormalization,
//! reductions, ArgMax / ArgMin, LpNormalization.
//!
//! The library kernels work on the last axis (`softmax`, `layernorm`, `rmsnorm`,
//! `argmax`) or any one axis (`reduce`); an op over another axis transposes its input
//! into a scratch tensor first (and its output back). Reductions over several axes
//! merge adjacent ones and reduce the rest one after the other through scratch
//! tensors. Compositions: LogSoftmax = `x − max − ln Σ e^(x−max)` (reduce, elementwise,
//! reduce, elementwise), ReduceL1/L2/SumSquare/LogSum/LogSumExp wrap `reduce` in
//! elementwise passes, ArgMin is the arg-max of `−x`.

use trainyard_arch::DType;
use trainyard_isa::{ActFn, AluOp};
use trainyard_kernels::library::KernelArgs;
use trainyard_kernels::{BuildError, HbmTensor};

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{fit, Cx, Emitter, Io, Step, StepKind};
use super::movement::transpose;
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{Node, Op, ReduceKind, SoftmaxKind, Tensor, ValueId};

/// Moves `axis` of a rank-`r` shape to the end: the permutation and its inverse.
fn to_last(r: usize, axis: usize) -> (Vec<usize>, Vec<usize>) {
    let perm: Vec<usize> = (0..r).filter(|&a| a != axis).chain([axis]).collect();
    let mut inv = vec![0; r];
    for (i, &a) in perm.iter().enumerate() {
        inv[a] = i;
    }
    (perm, inv)
}

fn permuted(shape: &[usize], perm: &[usize]) -> Vec<usize> {
    perm.iter().map(|&a| shape[a]).collect()
}

/// What a row step computes over `[rows, cols]` (the last axis, after an optional
/// transpose).
#[derive(Clone, Debug, PartialEq)]
enum RowOp {
    Softmax,
    LogSoftmax,
    LayerNorm { eps: f64 },
    RmsNorm { eps: f64 },
    ArgMax { negate: bool },
}

struct RowStep {
    op: RowOp,
    /// Input shape (full batch) and the transpose to bring the axis last.
    shape: Vec<usize>,
    perm: Option<(Vec<usize>, Vec<usize>)>,
    /// Rows and columns over the last axis (after the transpose).
    cols: usize,
    dtype: DType,
    /// Leading axes that are batch (kept in place by the transpose).
    batch_ok: bool,
}

impl RowStep {
    fn temp_shapes(&self) -> Vec<(Vec<usize>, DType)> {
        let mut v = Vec::new();
        let n: usize = self.shape.iter().product();
        let rows = n / self.cols.max(1);
        if let Some((perm, _)) = &self.perm {
            v.push((permuted(&self.shape, perm), self.dtype));
            if !matches!(self.op, RowOp::ArgMax { .. }) {
                v.push((permuted(&self.shape, perm), self.dtype));
            }
        }
        match self.op {
            RowOp::LogSoftmax => {
                v.push((vec![rows], self.dtype));
                v.push((vec![rows, self.cols], self.dtype));
                v.push((vec![rows], self.dtype));
            }
            RowOp::ArgMax { negate: true } => v.push((vec![rows, self.cols], self.dtype)),
            _ => {}
        }
        v
    }

    /// The op on `[rows, cols]` tensors `x` → `y`, with scratch `extra` and the
    /// step's other inputs (gamma, beta).
    fn rows(
        &self,
        cx: &mut Cx,
        x: &HbmTensor,
        y: &HbmTensor,
        extra: &[HbmTensor],
        params: &[HbmTensor],
    ) -> Result<(), BuildError> {
        let n: usize = x.shape().iter().product();
        let (rows, cols) = (n / self.cols.max(1), self.cols);
        let x2 = x.reshaped(&[rows, cols])?;
        let params: Vec<HbmTensor> = params.iter().map(|t| t.reshaped(&[cols])).collect::<Result<_, _>>()?;
        let base = KernelArgs::new(&[rows, cols], x.dtype());
        match &self.op {
            RowOp::Softmax => cx.library("softmax", base, &[("x", &x2), ("y", &y.reshaped(&[rows, cols])?)]),
            RowOp::LayerNorm { eps } => cx.library(
                "layernorm",
                base.with("eps", &format!("{eps}")),
                &[("x", &x2), ("gamma", &params[0]), ("beta", &params[1]), ("y", &y.reshaped(&[rows, cols])?)],
            ),
            RowOp::RmsNorm { eps } => cx.library(
                "rmsnorm",
                base.with("eps", &format!("{eps}")),
                &[("x", &x2), ("gamma", &params[0]), ("y", &y.reshaped(&[rows, cols])?)],
            ),
            RowOp::LogSoftmax => {
                let (m, t, s) = (fit(&extra[0], &[rows])?, fit(&extra[1], &[rows, cols])?, fit(&extra[2], &[rows])?);
                let (m, t, s) = (&m, &t, &s);
                cx.library("reduce", base.clone().with("op", "max").with("axis", "1"), &[("x", &x2), ("y", m)])?;
                // t = x − max (the max broadcast along the row).
                let mut sub = EwProgram::new(Arg::In(0));
                sub.result = sub.alu(AluOp::Sub, Arg::In(0), Arg::In(1));
                let pass =
                    Io { inputs: vec![x2.clone(), m.reshaped(&[rows, 1])?], outputs: vec![t.clone()], temps: vec![] };
                Elementwise::new(sub).emit(cx, &pass)?;
                let mut exp = EwProgram::new(Arg::In(0));
                exp.result = exp.act(ActFn::Exp, Arg::In(0), 1.0, 0.0);
                let y2 = y.reshaped(&[rows, cols])?;
                Elementwise::new(exp)
                    .emit(cx, &Io { inputs: vec![t.clone()], outputs: vec![y2.clone()], temps: vec![] })?;
                cx.library("reduce", base.with("op", "sum").with("axis", "1"), &[("x", &y2), ("y", s)])?;
                let mut fin = EwProgram::new(Arg::In(0));
                let l = fin.act(ActFn::Log, Arg::In(1), 1.0, 0.0);
                fin.result = fin.alu(AluOp::Sub, Arg::In(0), l);
                let pass = Io { inputs: vec![t.clone(), s.reshaped(&[rows, 1])?], outputs: vec![y2], temps: vec![] };
                Elementwise::new(fin).emit(cx, &pass)
            }
            RowOp::ArgMax { negate } => {
                let src = if *negate {
                    let neg = fit(&extra[0], &[rows, cols])?;
                    let mut p = EwProgram::new(Arg::In(0));
                    p.result = p.ts(Arg::In(0), (AluOp::Mul, -1.0), None);
                    Elementwise::new(p)
                        .emit(cx, &Io { inputs: vec![x2.clone()], outputs: vec![neg.clone()], temps: vec![] })?;
                    neg
                } else {
                    x2
                };
                let args = base.with("index", "i32");
                cx.library("argmax", args, &[("x", &src), ("idx", &y.reshaped(&[rows])?)])
            }
        }
    }
}

impl Emitter for RowStep {
    fn kernels(&self) -> String {
        let k = match self.op {
            RowOp::Softmax => "softmax",
            RowOp::LogSoftmax => "reduce+elementwise",
            RowOp::LayerNorm { .. } => "layernorm",
            RowOp::RmsNorm { .. } => "rmsnorm",
            RowOp::ArgMax { negate: false } => "argmax",
            RowOp::ArgMax { negate: true } => "elementwise+argmax",
        };
        if self.perm.is_some() {
            format!("transpose+{k}")
        } else {
            k.to_string()
        }
    }
    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        self.temp_shapes()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        self.batch_ok && batched.first() == Some(&true) && !batched[1..].iter().any(|&b| b)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let params: Vec<HbmTensor> = io.inputs[1..].to_vec();
        let mut temps = io.temps.clone();
        match &self.perm {
            None => self.rows(cx, x, y, &temps, &params),
            Some((perm, inv)) => {
                let xt_shape = permuted(x.shape(), perm);
                let xt = fit(&temps.remove(0), &xt_shape)?;
                transpose(cx, x, &xt, perm)?;
                if let RowOp::ArgMax { .. } = self.op {
                    return self.rows(cx, &xt, y, &temps, &params);
                }
                let yt = fit(&temps.remove(0), &xt_shape)?;
                self.rows(cx, &xt, &yt, &temps, &params)?;
                transpose(cx, &yt, y, inv)
            }
        }
    }
}

/// Reductions over one or more axes: `reduce` per merged group of reduced axes, with
/// elementwise passes before (|x|, x², e^x) and after (√, ln).
struct ReduceStep {
    op: &'static str,
    pre: Option<EwProgram>,
    post: Option<EwProgram>,
    /// The input shape merged into groups: (size, reduced).
    groups: Vec<(usize, bool)>,
    dtype: DType,
}

impl ReduceStep {
    /// Shapes of the tensors between reductions (the last is the output's).
    fn chain(&self) -> Vec<Vec<usize>> {
        let mut shape: Vec<(usize, bool)> = self.groups.clone();
        let mut out = Vec::new();
        while let Some(k) = shape.iter().rposition(|g| g.1) {
            shape.remove(k);
            out.push(shape.iter().map(|g| g.0).collect::<Vec<usize>>());
        }
        out
    }
}

impl Emitter for ReduceStep {
    fn kernels(&self) -> String {
        let mut k = String::new();
        if self.pre.is_some() {
            k.push_str("elementwise+");
        }
        k.push_str("reduce");
        if self.post.is_some() {
            k.push_str("+elementwise");
        }
        k
    }
    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        let mut v = Vec::new();
        if self.pre.is_some() {
            v.push((self.groups.iter().map(|g| g.0).collect(), self.dtype));
        }
        let chain = self.chain();
        for s in chain.iter().take(chain.len().saturating_sub(1)) {
            v.push((s.clone(), self.dtype));
        }
        v
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true) && self.groups.first().is_some_and(|g| !g.1)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        // The batch slice may be smaller than planned: scale the leading group.
        let mut groups = self.groups.clone();
        let n: usize = x.shape().iter().product();
        let planned: usize = groups.iter().map(|g| g.0).product();
        if n != planned {
            if let Some(first) = groups.first_mut() {
                first.0 = first.0 * n / planned.max(1);
            }
        }
        let shape: Vec<usize> = groups.iter().map(|g| g.0).collect();
        let mut temps = io.temps.iter();
        let mut cur = x.reshaped(&shape)?;
        if let Some(pre) = &self.pre {
            let t = fit(temps.next().ok_or_else(|| kernel_err("scratch missing"))?, &shape)?;
            Elementwise::new(pre.clone())
                .emit(cx, &Io { inputs: vec![cur.clone()], outputs: vec![t.clone()], temps: vec![] })?;
            cur = t;
        }
        let mut g = groups;
        while let Some(k) = g.iter().rposition(|x| x.1) {
            let in_shape: Vec<usize> = g.iter().map(|x| x.0).collect();
            g.remove(k);
            let out_shape: Vec<usize> = g.iter().map(|x| x.0).collect();
            let last = !g.iter().any(|x| x.1);
            let dst = if last {
                y.reshaped(&super::device_shape(&out_shape))?
            } else {
                fit(temps.next().ok_or_else(|| kernel_err("scratch missing"))?, &out_shape)?
            };
            let args = KernelArgs::new(&in_shape, x.dtype()).with("op", self.op).with("axis", &k.to_string());
            cx.library("reduce", args, &[("x", &cur.reshaped(&in_shape)?), ("y", &dst)])?;
            cur = dst;
        }
        if let Some(post) = &self.post {
            Elementwise::new(post.clone())
                .emit(cx, &Io { inputs: vec![y.clone()], outputs: vec![y.clone()], temps: vec![] })?;
        }
        Ok(())
    }
}

fn kernel_err(m: &str) -> BuildError {
    BuildError::Kernel { kernel: "reduce".into(), message: m.into() }
}

/// A constant of `n` values of `dt`, broadcast from `t` (given for the trailing axes).
fn expand_param(
    p: &mut Planner,
    node: &Node,
    v: ValueId,
    trailing: &[usize],
    hint: &str,
) -> Result<ValueId, LowerError> {
    let n: usize = trailing.iter().product();
    if p.g.value(v).ty.numel() == n {
        return Ok(v);
    }
    let t = p
        .constant(v)
        .ok_or_else(|| unsupported(node, format!("{hint} must have the normalized axes' shape or be a constant")))?;
    let src = t.to_f64_vec();
    let ts = t.shape().to_vec();
    let out =
        broadcast_host(&src, &ts, trailing).ok_or_else(|| unsupported(node, format!("{hint} does not broadcast")))?;
    let c = Tensor::from_f64(t.dtype(), vec![n], out).map_err(|e| unsupported(node, e))?;
    Ok(p.add_constant(&format!("{}.{hint}", node.name), c))
}

/// Host values of shape `from` broadcast to `to` (numpy rules), or `None`.
fn broadcast_host(v: &[f64], from: &[usize], to: &[usize]) -> Option<Vec<f64>> {
    if from.len() > to.len() {
        return None;
    }
    let pad = to.len() - from.len();
    let fs = crate::graph::strides_of(from);
    let n: usize = to.iter().product();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rem, mut at) = (i, 0);
        for k in (0..to.len()).rev() {
            let c = rem % to[k];
            rem /= to[k];
            if k >= pad {
                let d = from[k - pad];
                if d != 1 && d != to[k] {
                    return None;
                }
                if d != 1 {
                    at += c * fs[k - pad];
                }
            }
        }
        out.push(*v.get(at)?);
    }
    Some(out)
}

pub fn plan(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let x = *node.inputs.first().ok_or_else(|| unsupported(node, "no input"))?;
    if !p.dtype_of(x).is_float() {
        return Err(unsupported(node, format!("{} input: the device computes these in floats", p.dtype_of(x))));
    }
    let xs = p.shape(x);
    let dtype = p.dev(x);
    let uses = p.g.use_counts();
    let used = |v: &ValueId| uses[v.0 as usize] > 0 || p.g.outputs.contains(v);
    if node.outputs.iter().skip(1).any(used) {
        return Err(unsupported(node, "the mean / inverse standard deviation outputs"));
    }
    let row = |op: RowOp, axis: usize, cols: usize, coerce: bool| -> RowStep {
        let perm = (!coerce && axis + 1 < xs.len()).then(|| to_last(xs.len(), axis));
        RowStep { op, shape: xs.clone(), perm, cols, dtype, batch_ok: axis > 0 }
    };
    let outputs = vec![node.outputs[0]];
    match &node.op {
        Op::Softmax { kind, axis, coerce_2d } => {
            let op = match kind {
                SoftmaxKind::Softmax => RowOp::Softmax,
                SoftmaxKind::LogSoftmax => RowOp::LogSoftmax,
                SoftmaxKind::Hardmax => return Err(unsupported(node, "Hardmax")),
            };
            let cols = if *coerce_2d { xs[*axis..].iter().product() } else { xs.get(*axis).copied().unwrap_or(1) };
            Ok(step(node, &node.op_type.clone(), vec![x], outputs, row(op, *axis, cols, *coerce_2d)))
        }
        Op::LayerNorm { axis, epsilon, .. } | Op::RmsNorm { axis, epsilon } => {
            let trailing = &xs[*axis..];
            let cols: usize = trailing.iter().product();
            let gamma = expand_param(p, node, node.inputs[1], trailing, "scale")?;
            let mut inputs = vec![x, gamma];
            let op = if matches!(node.op, Op::LayerNorm { .. }) {
                let beta = match node.inputs.get(2) {
                    Some(&b) => expand_param(p, node, b, trailing, "bias")?,
                    None => p.add_constant(&format!("{}.bias", node.name), Tensor::zeros(p.dtype_of(x), vec![cols])),
                };
                inputs.push(beta);
                RowOp::LayerNorm { eps: *epsilon }
            } else {
                RowOp::RmsNorm { eps: *epsilon }
            };
            for &v in &inputs[1..] {
                if p.dtype_of(v) != p.dtype_of(x) {
                    return Err(unsupported(node, "scale and bias must have the input's element type"));
                }
            }
            // The normalized axes are the trailing ones: no transpose.
            let st = RowStep { op, shape: xs.clone(), perm: None, cols, dtype, batch_ok: *axis > 0 };
            Ok(step(node, &node.op_type.clone(), inputs, outputs, st))
        }
        Op::ArgReduce { max, axis, last_index, .. } => {
            if *last_index {
                return Err(unsupported(node, "select_last_index"));
            }
            let st = row(RowOp::ArgMax { negate: !max }, *axis, xs.get(*axis).copied().unwrap_or(1), false);
            Ok(step(node, &node.op_type.clone(), vec![x], outputs, st))
        }
        Op::Reduce { kind, axes, .. } => {
            if axes.is_empty() {
                return Ok(Step {
                    node: node.name.clone(),
                    op_type: node.op_type.clone(),
                    inputs: vec![x],
                    outputs,
                    kind: StepKind::Alias,
                });
            }
            let mut groups: Vec<(usize, bool)> = Vec::new();
            for (k, &n) in xs.iter().enumerate() {
                if n == 1 {
                    continue;
                }
                let red = axes.contains(&k);
                match groups.last_mut() {
                    Some(g) if g.1 == red => g.0 *= n,
                    _ => groups.push((n, red)),
                }
            }
            if !groups.iter().any(|g| g.1) {
                // Every reduced axis has length 1: a copy (the shapes differ by 1s).
                groups.push((1, true));
            }
            let act = |f: ActFn| {
                let mut p = EwProgram::new(Arg::In(0));
                p.result = p.act(f, Arg::In(0), 1.0, 0.0);
                Some(p)
            };
            let (op, pre, post) = match kind {
                ReduceKind::Sum => ("sum", None, None),
                ReduceKind::Mean => ("mean", None, None),
                ReduceKind::Max => ("max", None, None),
                ReduceKind::Min => ("min", None, None),
                ReduceKind::L1 => ("sum", act(ActFn::Abs), None),
                ReduceKind::SumSquare => ("sum", act(ActFn::Square), None),
                ReduceKind::L2 => ("sum", act(ActFn::Square), act(ActFn::Sqrt)),
                ReduceKind::LogSum => ("sum", None, act(ActFn::Log)),
                ReduceKind::LogSumExp => ("sum", act(ActFn::Exp), act(ActFn::Log)),
                ReduceKind::Prod => return Err(unsupported(node, "ReduceProd")),
            };
            Ok(step(node, &node.op_type.clone(), vec![x], outputs, ReduceStep { op, pre, post, groups, dtype }))
        }
        Op::LpNorm { .. } => Err(unsupported(node, "LpNormalization is not lowered yet")),
        _ => Err(unsupported(node, "not a row op")),
    }
}
