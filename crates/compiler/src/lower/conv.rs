//! Conv (with BatchNormalization, bias, residual add and activation fused) and
//! ConvTranspose → the library `conv2d`.

use trainyard_arch::DType;
use trainyard_isa::ActFn;
use trainyard_kernels::library::cnn::{ConvGeometry, ConvPacking, Window2d};
use trainyard_kernels::library::KernelArgs;
use trainyard_kernels::{BuildError, HbmTensor};

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{fit, Cx, Emitter, Io, Step};
use super::movement::{copy_strided, fill, Side};
use super::nn::{nchw, window2d};
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{Binary, FusedArg, FusedStep, Node, Op, Tensor, Unary, ValueId};

/// Per-channel epilogue state of a convolution being fused.
struct Epilogue {
    /// Per output channel: weights are multiplied by `scale`, then `shift` is added.
    scale: Vec<f64>,
    shift: Vec<f64>,
    /// A bias exists (given or folded).
    bias: bool,
    /// The bias is known at compile time (so more may be folded into it).
    const_bias: bool,
    residual: Option<ValueId>,
    act: Option<ActFn>,
    clip: Option<(f64, f64)>,
}

impl Epilogue {
    /// Applies an activation-like unary after what is already fused, if it can.
    fn unary(&mut self, u: &Unary) -> bool {
        let act = match u {
            Unary::Relu => ActFn::Relu,
            Unary::Sigmoid => ActFn::Sigmoid,
            Unary::Tanh => ActFn::Tanh,
            Unary::Gelu { tanh: false } => ActFn::GeluErf,
            Unary::Gelu { tanh: true } => ActFn::GeluTanh,
            Unary::Softplus => ActFn::Softplus,
            Unary::Swish(a) if *a == 1.0 => ActFn::Silu,
            Unary::Clip { min, max } if self.clip.is_none() => {
                self.clip = Some((*min, *max));
                return true;
            }
            _ => return false,
        };
        if self.act.is_some() || self.clip.is_some() {
            return false;
        }
        self.act = Some(act);
        true
    }
}

/// The values of constant `v` when it holds one value per channel (axis 1) of a
/// rank-`rank` tensor with `m` channels, or one value for all.
fn per_channel(p: &Planner, v: ValueId, m: usize, rank: usize) -> Option<Vec<f64>> {
    let t = p.constant(v)?;
    if t.len() == 1 {
        return Some(vec![t.to_f64_vec()[0]; m]);
    }
    let s = t.shape();
    if t.len() != m || s.len() > rank {
        return None;
    }
    let aligned = rank - s.len();
    s.iter().enumerate().all(|(i, &d)| if aligned + i == 1 { d == m } else { d == 1 }).then(|| t.to_f64_vec())
}

/// Matches an elementwise reader of `cur`: an optional `Add` of another value, then
/// unaries. Returns (the other addend, the unaries).
fn epilogue_ops(node: &Node, cur: ValueId) -> Option<(Option<ValueId>, Vec<Unary>)> {
    let other = |a: &ValueId, b: &ValueId| {
        if *a == cur {
            Some(*b)
        } else if *b == cur {
            Some(*a)
        } else {
            None
        }
    };
    match &node.op {
        Op::Unary(u) if node.inputs.first() == Some(&cur) => Some((None, vec![u.clone()])),
        Op::Binary(Binary::Add) if node.inputs.len() == 2 && node.inputs[0] != node.inputs[1] => {
            Some((Some(other(&node.inputs[0], &node.inputs[1])?), vec![]))
        }
        Op::FusedElementwise(steps) => {
            let input = |a: &FusedArg| match a {
                FusedArg::Input(i) => node.inputs.get(*i).copied(),
                FusedArg::Step(_) => None,
            };
            let mut it = steps.iter().enumerate();
            let mut addend = None;
            let mut unaries = Vec::new();
            let mut prev: Option<usize> = None;
            if let Some(FusedStep::Binary(Binary::Add, a, b, _)) = steps.first() {
                let (a, b) = (input(a)?, input(b)?);
                if a == b {
                    return None;
                }
                addend = Some(other(&a, &b)?);
                it.next();
                prev = Some(0);
            }
            for (i, s) in it {
                match s {
                    FusedStep::Unary(u, FusedArg::Step(j), _) if Some(*j) == prev => unaries.push(u.clone()),
                    FusedStep::Unary(u, a, _) if prev.is_none() && input(a) == Some(cur) => unaries.push(u.clone()),
                    _ => return None,
                }
                prev = Some(i);
            }
            Some((addend, unaries))
        }
        _ => None,
    }
}

/// `Conv`, with the BatchNormalization, per-channel Add, residual Add and activation
/// that follow it (each the only reader of the value before) fused.
pub fn conv(p: &mut Planner, k: usize, node: &Node) -> Result<Step, LowerError> {
    let Op::Conv(c) = &node.op else { return Err(unsupported(node, "not a convolution")) };
    let (x, w) = match node.inputs.as_slice() {
        [x, w, ..] => (*x, *w),
        _ => return Err(unsupported(node, "needs X and W")),
    };
    if !p.dtype_of(x).is_float() {
        return Err(unsupported(node, "integer convolutions"));
    }
    let xs = p.shape(x);
    if !(3..=4).contains(&xs.len()) {
        return Err(unsupported(node, format!("{}-D convolutions: the device lowers 1-D and 2-D ones", xs.len() - 2)));
    }
    let window = window2d(node, &c.window)?;
    let wt = p.constant(w);
    let m = p.shape(w).first().copied().unwrap_or(0);
    let [n, ch, h, wd] = nchw(&xs);
    let g = ConvGeometry { n, c: ch, h, w: wd, m, groups: c.group, window };
    let taps = window.kernel[0] * window.kernel[1];
    if p.g.value(w).ty.numel() != m * (ch / c.group.max(1)) * taps || !p.dtype_of(w).is_float() {
        return Err(unsupported(node, format!("weights {:?} do not match the input's {ch} channels", p.shape(w))));
    }
    let mut ep = Epilogue {
        scale: vec![1.0; m],
        shift: vec![0.0; m],
        bias: false,
        const_bias: true,
        residual: None,
        act: None,
        clip: None,
    };
    let mut runtime_bias = None;
    if let Some(&b) = node.inputs.get(2) {
        ep.bias = true;
        match p.constant(b) {
            Some(t) => ep.shift = t.to_f64_vec(),
            None => {
                ep.const_bias = false;
                runtime_bias = Some(b);
            }
        }
    }
    // An activation the graph passes fused into the Conv: in the epilogue when the
    // kernel has it, else an elementwise pass after; nothing more fuses after it.
    let mut post = None;
    if let Some(u) = &c.activation {
        if !ep.unary(u) {
            let mut prog = EwProgram::new(Arg::In(0));
            prog.result = prog.unary(u, Arg::In(0), false).map_err(|e| unsupported(node, e))?;
            post = Some(prog);
        }
    }
    let mut cur = node.outputs[0];
    let mut types = vec![node.op_type.clone()];
    while let Some(r) = p.sole_reader(cur).filter(|_| post.is_none() && c.activation.is_none()) {
        let rn = p.g.nodes[r].clone();
        let rank = p.shape(cur).len();
        let fused = match &rn.op {
            Op::BatchNorm { epsilon, momentum: None }
                if rn.inputs.first() == Some(&cur)
                    && wt.is_some()
                    && ep.const_bias
                    && ep.residual.is_none()
                    && ep.act.is_none()
                    && ep.clip.is_none() =>
            {
                let params: Option<Vec<Vec<f64>>> = rn.inputs[1..]
                    .iter()
                    .map(|&v| p.constant(v).filter(|t| t.len() == m).map(|t| t.to_f64_vec()))
                    .collect();
                match params.as_deref() {
                    Some([gamma, beta, mean, var]) => {
                        for i in 0..m {
                            let s = gamma[i] / (var[i] + epsilon).sqrt();
                            ep.scale[i] *= s;
                            ep.shift[i] = (ep.shift[i] - mean[i]) * s + beta[i];
                        }
                        ep.bias = true;
                        true
                    }
                    _ => false,
                }
            }
            _ => match epilogue_ops(&rn, cur) {
                Some((addend, unaries)) if ep.act.is_none() && ep.clip.is_none() => {
                    let mut trial = Epilogue { scale: vec![], shift: ep.shift.clone(), ..ep };
                    let mut ok = true;
                    if let Some(a) = addend {
                        if let Some(v) = per_channel(p, a, m, rank).filter(|_| trial.const_bias) {
                            for (s, x) in trial.shift.iter_mut().zip(v) {
                                *s += x;
                            }
                            trial.bias = true;
                        } else if trial.residual.is_none()
                            && p.shape(a) == p.shape(cur)
                            && p.ready_before(a, k)
                            && p.constant(a).is_none()
                            && p.dtype_of(a) == p.dtype_of(cur)
                        {
                            trial.residual = Some(a);
                        } else {
                            ok = false;
                        }
                    }
                    for u in &unaries {
                        ok = ok && trial.unary(u);
                    }
                    let scale = std::mem::take(&mut ep.scale);
                    if ok {
                        ep = Epilogue { scale, ..trial };
                    } else {
                        ep.scale = scale;
                    }
                    ok
                }
                _ => false,
            },
        };
        if !fused {
            break;
        }
        p.consumed[r] = true;
        types.push(rn.op_type.clone());
        cur = rn.outputs[0];
    }
    // Weights with the batch norm's scale folded in, packed for the device (at run
    // time when they are a graph input).
    let pack = ConvPacking::new(&g, 128);
    let wdt = p.dtype_of(w);
    let (wp, runtime) = match &wt {
        Some(wt) => {
            let mut onnx = wt.to_f64_vec();
            let per_m = onnx.len() / m.max(1);
            for (i, v) in onnx.iter_mut().enumerate() {
                *v *= ep.scale[i / per_m.max(1)];
            }
            let packed = pack.pack(&g, &onnx).map_err(|e| unsupported(node, e))?;
            let t = Tensor::from_f64(wdt, vec![packed.len()], packed).map_err(|e| unsupported(node, e))?;
            (p.add_constant(&format!("{}.w", node.name), t), None)
        }
        None => (
            w,
            Some(RuntimePack {
                pack,
                cg: ch / c.group.max(1),
                mg: m / c.group.max(1),
                kernel: window.kernel,
                transposed: false,
                dtype: p.dev(w),
            }),
        ),
    };
    let mut inputs = vec![x, wp];
    if let Some(b) = runtime_bias {
        inputs.push(b);
    } else if ep.bias {
        let b = Tensor::from_f64(wdt, vec![m], ep.shift.clone()).map_err(|e| unsupported(node, e))?;
        inputs.push(p.add_constant(&format!("{}.b", node.name), b));
    }
    if let Some(r) = ep.residual {
        inputs.push(r);
    }
    let e = ConvStep {
        window,
        groups: c.group,
        m,
        act: ep.act.unwrap_or(ActFn::Identity),
        clip: ep.clip,
        bias: ep.bias,
        residual: ep.residual.is_some(),
        upsample: None,
        runtime,
        post,
    };
    Ok(step(node, &types.join("+"), inputs, vec![cur], e))
}

/// A convolution step; `upsample`: the input is first spread over a zero tensor with
/// these strides (a transposed convolution, the temporary of [`Emitter::temps`]).
struct ConvStep {
    window: Window2d,
    groups: usize,
    m: usize,
    act: ActFn,
    clip: Option<(f64, f64)>,
    bias: bool,
    residual: bool,
    upsample: Option<UpSample>,
    /// Weights given at run time, packed on the device first.
    runtime: Option<RuntimePack>,
    /// An activation the kernel's epilogue has no form for, applied after (in place).
    post: Option<EwProgram>,
}

/// Packing weights that are a graph input: one strided copy per (output block, input
/// chunk, group), into a zeroed scratch tensor.
struct RuntimePack {
    pack: ConvPacking,
    cg: usize,
    mg: usize,
    kernel: [usize; 2],
    /// ConvTranspose weights `[C, M/G, KH, KW]`, flipped and swapped while packing.
    transposed: bool,
    dtype: DType,
}

impl RuntimePack {
    fn emit(&self, cx: &mut Cx, packed: &HbmTensor, w: &HbmTensor) -> Result<(), BuildError> {
        let [kh, kw] = self.kernel;
        let taps = kh * kw;
        let (cg, mg) = (self.cg, self.mg);
        let groups = self.pack.chunks.iter().map(|c| c.end).max().unwrap_or(0) / cg.max(1);
        if groups > 1 {
            fill(cx, packed, 0.0)?;
        }
        let meet = |a: &std::ops::Range<usize>, b: std::ops::Range<usize>| a.start.max(b.start)..a.end.min(b.end);
        for b in &self.pack.blocks {
            let mo = b.m.len();
            for part in &b.parts {
                let ch = &self.pack.chunks[part.chunk];
                for g in 0..groups.max(1) {
                    let (mr, cr) = (meet(&b.m, g * mg..(g + 1) * mg), meet(ch, g * cg..(g + 1) * cg));
                    if mr.is_empty() || cr.is_empty() {
                        continue;
                    }
                    let (mi0, ci0) = (mr.start - b.m.start, cr.start - ch.start);
                    let dst = Side {
                        offset: (part.offset + ci0 * taps * mo + mi0) as i64,
                        strides: vec![1, (taps * mo) as i64, (kw * mo) as i64, mo as i64],
                    };
                    let (ml0, cl0) = (mr.start - g * mg, cr.start - g * cg);
                    let src = if self.transposed {
                        // W[c, m_l, kh−1−i, kw−1−j].
                        Side {
                            offset: ((cr.start * mg + ml0) * taps + (kh - 1) * kw + (kw - 1)) as i64,
                            strides: vec![taps as i64, (mg * taps) as i64, -(kw as i64), -1],
                        }
                    } else {
                        Side {
                            offset: ((mr.start * cg + cl0) * taps) as i64,
                            strides: vec![(cg * taps) as i64, taps as i64, kw as i64, 1],
                        }
                    };
                    copy_strided(cx, packed, &dst, w, &src, &[mr.len(), cr.len(), kh, kw])?;
                }
            }
        }
        Ok(())
    }
}

/// Zero-insertion of a transposed convolution.
#[derive(Clone, Copy)]
struct UpSample {
    stride: [usize; 2],
    /// `[N, C, Hu, Wu]` of the full batch.
    shape: [usize; 4],
    dtype: DType,
}

impl ConvStep {
    fn args(&self, x: [usize; 4], dtype: DType) -> KernelArgs {
        let [n, c, h, w] = x;
        let mut a = KernelArgs::new(&[n, c, h, w, self.m, self.window.kernel[0], self.window.kernel[1]], dtype)
            .with("groups", &self.groups.to_string())
            .with("bias", &self.bias.to_string())
            .with("residual", &self.residual.to_string())
            .with("act", self.act.name());
        if let Some((lo, hi)) = self.clip {
            a = a.with("clip", &format!("{lo},{hi}"));
        }
        self.window.with_options(a)
    }
}

impl Emitter for ConvStep {
    fn half_sbuf(&self) -> bool {
        true
    }

    fn kernels(&self) -> String {
        let mut k = if self.upsample.is_some() { "dma_copy+conv2d" } else { "conv2d" }.to_string();
        if self.post.is_some() {
            k.push_str("+elementwise");
        }
        k
    }

    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        let up = self.upsample.iter().map(|u| (u.shape.to_vec(), u.dtype));
        up.chain(self.runtime.iter().map(|r| (vec![r.pack.len], r.dtype))).collect()
    }

    fn batch_separable(&self, batched: &[bool], _shapes: &[Vec<usize>], _out: &[usize]) -> bool {
        let res_ok = !self.residual || batched.last() == Some(&true);
        batched.first() == Some(&true) && batched.get(1) != Some(&true) && res_ok
    }

    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        let mut x4 = x.reshaped(&nchw(x.shape()))?;
        if let Some(u) = &self.upsample {
            let [n, c, h, w] = nchw(x.shape());
            let (hu, wu) = ((h - 1) * u.stride[0] + 1, (w - 1) * u.stride[1] + 1);
            let up = fit(io.temp(0)?, &[n, c, hu, wu])?;
            fill(cx, &up, 0.0)?;
            for i in 0..n {
                let dst = up.view().at(0, i).slice_step(1, 0..hu, u.stride[0]).slice_step(2, 0..wu, u.stride[1]);
                cx.kb.dma(dst, x4.view().at(0, i))?;
            }
            x4 = up;
        }
        let shape = [x4.shape()[0], x4.shape()[1], x4.shape()[2], x4.shape()[3]];
        let y4 = y.reshaped(&nchw(y.shape()))?;
        let mut w = io.input(1)?.clone();
        if let Some(r) = &self.runtime {
            let packed = fit(io.temp(usize::from(self.upsample.is_some()))?, &[r.pack.len])?;
            r.emit(cx, &packed, &w)?;
            w = packed;
        }
        let mut bind: Vec<(&str, HbmTensor)> = vec![("x", x4.clone()), ("w", w)];
        let mut next = 2;
        if self.bias {
            bind.push(("bias", io.input(next)?.reshaped(&[self.m])?));
            next += 1;
        }
        if self.residual {
            bind.push(("r", io.input(next)?.reshaped(y4.shape())?));
        }
        bind.push(("y", y4));
        let refs: Vec<(&str, &HbmTensor)> = bind.iter().map(|(k, t)| (*k, t)).collect();
        cx.library("conv2d", self.args(shape, x.dtype()), &refs)?;
        if let Some(prog) = &self.post {
            Elementwise::new(prog.clone())
                .emit(cx, &Io { inputs: vec![y.clone()], outputs: vec![y.clone()], temps: vec![] })?;
        }
        Ok(())
    }
}

/// `ConvTranspose` as a convolution of the input spread with zeros (stride − 1 zeros
/// between elements) by the flipped, channel-swapped kernel.
pub fn conv_transpose(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let Op::ConvTranspose(ct) = &node.op else { return Err(unsupported(node, "not a transposed convolution")) };
    let (x, w) = match node.inputs.as_slice() {
        [x, w, ..] => (*x, *w),
        _ => return Err(unsupported(node, "needs X and W")),
    };
    let xs = p.shape(x);
    if !(3..=4).contains(&xs.len()) || !p.dtype_of(x).is_float() {
        return Err(unsupported(node, "only 1-D and 2-D float transposed convolutions"));
    }
    let win = window2d(node, &ct.window)?;
    let g = ct.group.max(1);
    let [n, c, h, wd] = nchw(&xs);
    let mg = p.shape(w).get(1).copied().unwrap_or(0);
    let (m, cg) = (mg * g, c / g);
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let op: [usize; 2] = match ct.output_padding.as_slice() {
        [] => [0, 0],
        [a] => [0, *a],
        [a, b, ..] => [*a, *b],
    };
    let reach = |a: usize| win.dilation[a] * (win.kernel[a] - 1);
    let pad = |a: usize, begin: usize, extra: usize| -> Result<usize, LowerError> {
        (reach(a) + extra)
            .checked_sub(begin)
            .ok_or_else(|| unsupported(node, format!("padding {begin} beyond the kernel's reach {}", reach(a))))
    };
    let conv_win = Window2d {
        kernel: win.kernel,
        stride: [1, 1],
        dilation: win.dilation,
        pads: [
            pad(0, win.pads[0], 0)?,
            pad(1, win.pads[1], 0)?,
            pad(0, win.pads[2], op[0])?,
            pad(1, win.pads[3], op[1])?,
        ],
    };
    let (hu, wu) = ((h - 1) * win.stride[0] + 1, (wd - 1) * win.stride[1] + 1);
    let geom = ConvGeometry { n, c, h: hu, w: wu, m, groups: g, window: conv_win };
    let pack = ConvPacking::new(&geom, 128);
    if p.g.value(w).ty.numel() != c * mg * kh * kw || !p.dtype_of(w).is_float() {
        return Err(unsupported(node, format!("weights {:?} do not match the input's {c} channels", p.shape(w))));
    }
    let (wp, runtime) = match p.constant(w) {
        Some(wt) => {
            // W'[m, c, i, j] = W[c, m, kh−1−i, kw−1−j] within each group.
            let src = wt.to_f64_vec();
            let mut conv_w = vec![0.0; m * cg * kh * kw];
            for gi in 0..g {
                for ml in 0..mg {
                    for cl in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let from = (((gi * cg + cl) * mg + ml) * kh + (kh - 1 - i)) * kw + (kw - 1 - j);
                                conv_w[(((gi * mg + ml) * cg + cl) * kh + i) * kw + j] = src[from];
                            }
                        }
                    }
                }
            }
            let packed = pack.pack(&geom, &conv_w).map_err(|e| unsupported(node, e))?;
            let t = Tensor::from_f64(wt.dtype(), vec![packed.len()], packed).map_err(|e| unsupported(node, e))?;
            (p.add_constant(&format!("{}.w", node.name), t), None)
        }
        None => (w, Some(RuntimePack { pack, cg, mg, kernel: win.kernel, transposed: true, dtype: p.dev(w) })),
    };
    let mut inputs = vec![x, wp];
    if let Some(&b) = node.inputs.get(2) {
        inputs.push(b);
    }
    let upsample =
        (win.stride != [1, 1]).then_some(UpSample { stride: win.stride, shape: [n, c, hu, wu], dtype: p.dev(x) });
    let e = ConvStep {
        window: conv_win,
        groups: g,
        m,
        act: ActFn::Identity,
        clip: None,
        bias: node.inputs.len() > 2,
        residual: false,
        upsample,
        runtime,
        post: None,
    };
    Ok(step(node, &node.op_type.clone(), inputs, node.outputs.clone(), e))
}
