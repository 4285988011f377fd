//! Convolutional-network ops besides convolutions (in `conv`): pooling, BatchNorm /
//! InstanceNorm / GroupNorm, LRN.

use trainyard_arch::DType;
use trainyard_isa::{ActFn, AluOp};
use trainyard_kernels::library::cnn::Window2d;
use trainyard_kernels::library::KernelArgs;
use trainyard_kernels::BuildError;

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{Cx, Emitter, Io, Step};
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{Node, Op, PoolKind, Tensor, Window};

/// The `Window2d` of a 1-D or 2-D graph window (1-D: one row).
pub(super) fn window2d(node: &Node, w: &Window) -> Result<Window2d, LowerError> {
    match w.kernel.len() {
        2 => Ok(Window2d {
            kernel: [w.kernel[0], w.kernel[1]],
            stride: [w.strides[0], w.strides[1]],
            dilation: [w.dilations[0], w.dilations[1]],
            pads: [w.pads[0].0, w.pads[1].0, w.pads[0].1, w.pads[1].1],
        }),
        1 => Ok(Window2d {
            kernel: [1, w.kernel[0]],
            stride: [1, w.strides[0]],
            dilation: [1, w.dilations[0]],
            pads: [0, w.pads[0].0, 0, w.pads[0].1],
        }),
        n => Err(unsupported(node, format!("{n}-D windows: the device lowers 1-D and 2-D ones"))),
    }
}

/// `[N, C, H, W]` of an NCHW or NCW shape.
pub(super) fn nchw(shape: &[usize]) -> [usize; 4] {
    match shape {
        [n, c, w] => [*n, *c, 1, *w],
        [n, c, h, w, ..] => [*n, *c, *h, *w],
        _ => [1, 1, 1, 1],
    }
}

/// Windowed and global pooling.
pub fn pool(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let x = node.inputs[0];
    if !p.dtype_of(x).is_float() {
        return Err(unsupported(node, "integer pooling"));
    }
    match &node.op {
        Op::Pool(pl) => {
            if pl.with_indices && node.outputs.len() > 1 && p.g.use_counts()[node.outputs[1].0 as usize] > 0 {
                return Err(unsupported(node, "MaxPool's indices output"));
            }
            let kind = match pl.kind {
                PoolKind::Max => "max",
                PoolKind::Average { .. } => "avg",
                PoolKind::Lp(_) => return Err(unsupported(node, "Lp pooling")),
            };
            let include = matches!(pl.kind, PoolKind::Average { count_include_pad: true });
            if !(3..=4).contains(&p.shape(x).len()) {
                return Err(unsupported(node, "only 1-D and 2-D pooling"));
            }
            let e = PoolStep { kind, window: window2d(node, &pl.window)?, ceil: pl.ceil_mode, include_pad: include };
            Ok(step(node, &node.op_type.clone(), vec![x], vec![node.outputs[0]], e))
        }
        Op::GlobalPool(kind) => {
            let op = match kind {
                PoolKind::Max => "max",
                PoolKind::Average { .. } => "mean",
                PoolKind::Lp(_) => return Err(unsupported(node, "global Lp pooling")),
            };
            Ok(step(node, &node.op_type.clone(), vec![x], node.outputs.clone(), GlobalPoolStep { op }))
        }
        _ => Err(unsupported(node, "not a pooling op")),
    }
}

struct PoolStep {
    kind: &'static str,
    window: Window2d,
    ceil: bool,
    include_pad: bool,
}

impl Emitter for PoolStep {
    fn kernels(&self) -> String {
        "pool2d".into()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let s = nchw(x.shape());
        let k = self.window.kernel;
        let args = KernelArgs::new(&s, x.dtype())
            .with("kind", self.kind)
            .with("kernel", &format!("{},{}", k[0], k[1]))
            .with("ceil_mode", &self.ceil.to_string())
            .with("count_include_pad", &self.include_pad.to_string());
        let (x4, y4) = (x.reshaped(&s)?, y.reshaped(&nchw(y.shape()))?);
        cx.library("pool2d", self.window.with_options(args), &[("x", &x4), ("y", &y4)])
    }
}

struct GlobalPoolStep {
    op: &'static str,
}

impl Emitter for GlobalPoolStep {
    fn kernels(&self) -> String {
        "reduce".into()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let s = x.shape();
        let planes = s[0] * s.get(1).copied().unwrap_or(1);
        let spatial: usize = s.iter().skip(2).product();
        let args = KernelArgs::new(&[planes, spatial], x.dtype()).with("axis", "1").with("op", self.op);
        cx.library("reduce", args, &[("x", &x.reshaped(&[planes, spatial])?), ("y", &y.reshaped(&[planes])?)])
    }
}

/// BatchNormalization (inference), InstanceNormalization, GroupNormalization.
pub fn norm(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let x = node.inputs[0];
    let xs = p.shape(x);
    if xs.len() < 2 || !p.dtype_of(x).is_float() {
        return Err(unsupported(node, "needs a float N×C×... input"));
    }
    let c = xs[1];
    let channel_shape: Vec<usize> = std::iter::once(c).chain(std::iter::repeat_n(1, xs.len() - 2)).collect();
    match &node.op {
        Op::BatchNorm { momentum: Some(_), .. } => Err(unsupported(node, "training-mode batch normalization")),
        Op::BatchNorm { epsilon, momentum: None } => {
            let params: Option<Vec<Vec<f64>>> = node.inputs[1..]
                .iter()
                .map(|&v| p.constant(v).filter(|t| t.len() == c).map(|t| t.to_f64_vec()))
                .collect();
            let Some([gamma, beta, mean, var]) = params.as_deref() else {
                // Parameters given at run time: (x − μ)·γ·rsqrt(σ² + ε) + β per channel.
                if node.inputs[1..].iter().any(|&v| p.g.value(v).ty.numel() != c) {
                    return Err(unsupported(node, "scale, bias, mean and variance need one value per channel"));
                }
                let mut prog = EwProgram::new(Arg::In(0));
                let d = prog.alu(AluOp::Sub, Arg::In(0), Arg::In(3));
                let r = prog.act(ActFn::Rsqrt, Arg::In(4), 1.0, *epsilon as f32);
                let t = prog.alu(AluOp::Mul, d, r);
                let t = prog.alu(AluOp::Mul, t, Arg::In(1));
                prog.result = prog.alu(AluOp::Add, t, Arg::In(2));
                let e = PerChannel { prog, channel_shape };
                return Ok(step(node, &node.op_type.clone(), node.inputs[..5].to_vec(), vec![node.outputs[0]], e));
            };
            let s: Vec<f64> = (0..c).map(|i| gamma[i] / (var[i] + epsilon).sqrt()).collect();
            let t: Vec<f64> = (0..c).map(|i| beta[i] - mean[i] * s[i]).collect();
            let dt = p.dtype_of(x);
            let sv = p.add_constant(
                &format!("{}.scale", node.name),
                Tensor::from_f64(dt, channel_shape.clone(), s).map_err(|e| unsupported(node, e))?,
            );
            let tv = p.add_constant(
                &format!("{}.shift", node.name),
                Tensor::from_f64(dt, channel_shape, t).map_err(|e| unsupported(node, e))?,
            );
            let mut prog = EwProgram::new(Arg::In(0));
            let y = prog.alu(AluOp::Mul, Arg::In(0), Arg::In(1));
            prog.result = prog.alu(AluOp::Add, y, Arg::In(2));
            Ok(step(node, &node.op_type.clone(), vec![x, sv, tv], vec![node.outputs[0]], Elementwise::new(prog)))
        }
        Op::InstanceNorm { epsilon } | Op::GroupNorm { epsilon, .. } => {
            let groups = match node.op {
                Op::GroupNorm { groups, .. } => groups,
                _ => c,
            };
            if groups == 0 || !c.is_multiple_of(groups) {
                return Err(unsupported(node, format!("{groups} groups do not divide {c} channels")));
            }
            let spatial: usize = xs[2..].iter().product();
            let cols = c / groups * spatial;
            let dt = p.dtype_of(x);
            let ones = p.add_constant(
                "ones",
                Tensor::from_f64(dt, vec![cols], vec![1.0; cols]).map_err(|e| unsupported(node, e))?,
            );
            let zeros = p.add_constant("zeros", Tensor::zeros(dt, vec![cols]));
            let (scale, bias) = (node.inputs[1], node.inputs[2]);
            if p.g.value(scale).ty.numel() != c || p.g.value(bias).ty.numel() != c {
                return Err(unsupported(node, "scale and bias must have one value per channel"));
            }
            let e = ChannelNorm { epsilon: *epsilon, dtype: p.dev(x), shape: xs.clone() };
            Ok(step(node, &node.op_type.clone(), vec![x, ones, zeros, scale, bias], vec![node.outputs[0]], e))
        }
        _ => Err(unsupported(node, "not a normalization")),
    }
}

/// An elementwise program whose inputs after the first hold one value per channel
/// (axis 1): they are viewed as `[C, 1, …]` so they broadcast along the positions.
struct PerChannel {
    prog: EwProgram,
    channel_shape: Vec<usize>,
}

impl Emitter for PerChannel {
    fn kernels(&self) -> String {
        "elementwise".into()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true) && !batched[1..].iter().any(|&b| b)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let mut inputs = vec![io.input(0)?.clone()];
        for t in &io.inputs[1..] {
            inputs.push(t.reshaped(&self.channel_shape)?);
        }
        Elementwise::new(self.prog.clone()).emit(cx, &Io { inputs, outputs: io.outputs.clone(), temps: vec![] })
    }
}

/// Normalization over channel groups × positions (`layernorm` with unit gamma), then a
/// per-channel scale and shift.
struct ChannelNorm {
    epsilon: f64,
    dtype: DType,
    shape: Vec<usize>,
}

impl Emitter for ChannelNorm {
    fn kernels(&self) -> String {
        "layernorm+elementwise".into()
    }
    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        vec![(self.shape.clone(), self.dtype)]
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true) && !batched[1..].iter().any(|&b| b)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let s = x.shape().to_vec();
        let c = s[1];
        let cols = io.input(1)?.shape()[0];
        let rows = s.iter().product::<usize>() / cols;
        let t = super::emit::fit(io.temp(0)?, &s)?;
        let args = KernelArgs::new(&[rows, cols], x.dtype()).with("eps", &format!("{}", self.epsilon));
        cx.library(
            "layernorm",
            args,
            &[
                ("x", &x.reshaped(&[rows, cols])?),
                ("gamma", io.input(1)?),
                ("beta", io.input(2)?),
                ("y", &t.reshaped(&[rows, cols])?),
            ],
        )?;
        let per_channel: Vec<usize> = std::iter::once(c).chain(std::iter::repeat_n(1, s.len() - 2)).collect();
        let mut prog = EwProgram::new(Arg::In(0));
        let v = prog.alu(AluOp::Mul, Arg::In(0), Arg::In(1));
        prog.result = prog.alu(AluOp::Add, v, Arg::In(2));
        let pass = Io {
            inputs: vec![t, io.input(3)?.reshaped(&per_channel)?, io.input(4)?.reshaped(&per_channel)?],
            outputs: vec![y.clone()],
            temps: vec![],
        };
        Elementwise::new(prog).emit(cx, &pass)
    }
}

/// Local response normalization.
pub fn lrn(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let Op::Lrn { size, alpha, beta, bias } = node.op else { return Err(unsupported(node, "not LRN")) };
    let x = node.inputs[0];
    if p.shape(x).len() < 2 || !p.dtype_of(x).is_float() {
        return Err(unsupported(node, "needs a float N×C×... input"));
    }
    if bias <= 0.0 {
        return Err(unsupported(node, "bias must be positive (the device takes its logarithm)"));
    }
    Ok(step(node, &node.op_type.clone(), vec![x], vec![node.outputs[0]], LrnStep { size, alpha, beta, bias }))
}

struct LrnStep {
    size: usize,
    alpha: f64,
    beta: f64,
    bias: f64,
}

impl Emitter for LrnStep {
    fn kernels(&self) -> String {
        "lrn".into()
    }
    fn batch_separable(&self, batched: &[bool], _: &[Vec<usize>], _: &[usize]) -> bool {
        batched.first() == Some(&true)
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let s = x.shape();
        let shape = [s[0], s[1], s[2..].iter().product()];
        let args = KernelArgs::new(&shape, x.dtype())
            .with("size", &self.size.to_string())
            .with("alpha", &format!("{}", self.alpha))
            .with("beta", &format!("{}", self.beta))
            .with("bias", &format!("{}", self.bias));
        cx.library("lrn", args, &[("x", &x.reshaped(&shape)?), ("y", &y.reshaped(&shape)?)])
    }
}
