//! MatMul, Gemm and fused MatMul + bias + activation → the library `matmul`.
//!
//! `MatMul` with a 2-D right operand (weights) flattens the left operand's batch axes
//! into rows: one matmul of `[B·M, K]` by `[K, N]`. Equal batch axes use the kernel's
//! `batch` option; broadcast batches emit one matmul per output matrix on regions of
//! the operands. `Gemm` maps `transA`/`transB` to the kernel's transposed inputs and
//! `alpha` to its scale. A bias that is one row (`[N]`) is added by the kernel; any
//! other addend (`beta·C` of another shape) and a fused activation run afterwards as
//! an elementwise pass over the product in place.

use trainyard_kernels::library::KernelArgs;
use trainyard_kernels::{BuildError, HbmTensor};

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{Cx, Emitter, Io, Step};
use super::plan::{step, Planner};
use super::{unsupported, LowerError};
use crate::graph::{Node, Op, Tensor};

/// `Gemm`'s transposes and scale.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GemmOpts {
    alpha: f64,
    trans_a: bool,
    trans_b: bool,
}

/// A product, optionally with the kernel's row bias (step input 2) and an
/// elementwise pass over the result whose `In(0)` is the product and `In(i ≥ 1)`
/// step input `post_inputs[i − 1]`.
struct MatMulStep {
    gemm: Option<GemmOpts>,
    kernel_bias: bool,
    post: Option<(EwProgram, Vec<usize>)>,
}

pub fn plan(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let (&a, &b) = match node.inputs.as_slice() {
        [a, b, ..] => (a, b),
        _ => return Err(unsupported(node, "needs two operands")),
    };
    let out = node.outputs.first().copied().ok_or_else(|| unsupported(node, "no output"))?;
    for v in [a, b] {
        if !p.dtype_of(v).is_float() {
            return Err(unsupported(node, format!("{} operands: the Tensor engine multiplies floats", p.dtype_of(v))));
        }
    }
    let out_shape = p.shape(out);
    let n = out_shape.last().copied().unwrap_or(1);
    let mut inputs = vec![a, b];
    let (gemm, addend, activation) = match &node.op {
        Op::MatMul => (None, None, None),
        Op::FusedMatMul { activation } => (None, node.inputs.get(2).map(|&c| (c, 1.0)), activation.clone()),
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            if p.shape(a).len() != 2 || p.shape(b).len() != 2 {
                return Err(unsupported(node, "Gemm operands must be 2-D"));
            }
            let c = node.inputs.get(2).copied().filter(|_| *beta != 0.0).map(|c| (c, *beta));
            (Some(GemmOpts { alpha: *alpha, trans_a: *trans_a, trans_b: *trans_b }), c, None)
        }
        _ => return Err(unsupported(node, "not a matrix product")),
    };
    let mut kernel_bias = false;
    let mut post = EwProgram::new(Arg::In(0));
    let mut post_inputs: Vec<usize> = Vec::new();
    let mut acc = Arg::In(0);
    if let Some((c, beta)) = addend {
        let row = p.g.value(c).ty.numel() == n && p.shape(c).last() == Some(&n) && p.dtype_of(c) == p.dtype_of(a);
        match (p.constant(c), p.scalar(c)) {
            (_, Some(s)) if p.g.value(c).ty.numel() == 1 => {
                acc = post.alu(trainyard_isa::AluOp::Add, acc, Arg::Imm((s * beta) as f32));
            }
            (Some(t), _) if row => {
                // Fold beta into a constant row bias.
                let v: Vec<f64> = t.to_f64_vec().into_iter().map(|x| x * beta).collect();
                let t = Tensor::from_f64(t.dtype(), vec![n], v).map_err(|e| unsupported(node, e))?;
                inputs.push(p.add_constant(&format!("{}.bias", node.name), t));
                kernel_bias = true;
            }
            (None, _) if row && beta == 1.0 => {
                inputs.push(c);
                kernel_bias = true;
            }
            _ => {
                inputs.push(c);
                post_inputs.push(inputs.len() - 1);
                let cv = Arg::In(post_inputs.len());
                let scaled = if beta == 1.0 { cv } else { post.ts(cv, (trainyard_isa::AluOp::Mul, beta as f32), None) };
                acc = post.alu(trainyard_isa::AluOp::Add, acc, scaled);
            }
        }
    }
    if let Some(u) = &activation {
        acc = post.unary(u, acc, false).map_err(|e| unsupported(node, e))?;
    }
    post.result = acc;
    let post = (acc != Arg::In(0)).then_some((post, post_inputs));
    let mm = MatMulStep { gemm, kernel_bias, post };
    Ok(step(node, &node.op_type.clone(), inputs, node.outputs.clone(), mm))
}

/// `[.., M, K]` with 1-D operands promoted as numpy does.
fn as_matrix(shape: &[usize], left: bool) -> Vec<usize> {
    match shape.len() {
        0 => vec![1, 1],
        1 if left => vec![1, shape[0]],
        1 => vec![shape[0], 1],
        _ => shape.to_vec(),
    }
}

fn row_major_index(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + if n == 1 { 0 } else { i })
}

impl MatMulStep {
    fn product(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (a, b, c) = (io.input(0)?, io.input(1)?, io.output(0)?);
        let dtype = a.dtype();
        let base = |shape: &[usize]| KernelArgs::new(shape, dtype).with("out", c.dtype().name());
        let bias = if self.kernel_bias { Some(io.input(2)?) } else { None };
        if let Some(g) = self.gemm {
            let (sa, sb) = (a.shape(), b.shape());
            let (m, k) = if g.trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
            let n = if g.trans_b { sb[0] } else { sb[1] };
            let mut args = base(&[m, k, n])
                .with("transpose_a", &g.trans_a.to_string())
                .with("transpose_b", &g.trans_b.to_string())
                .with("scale_a", &format!("{}", g.alpha));
            let c2 = c.reshaped(&[m, n])?;
            let mut bind: Vec<(&str, &HbmTensor)> = vec![("a", a), ("b", b), ("c", &c2)];
            let bias_t;
            if let Some(t) = bias {
                args = args.with("bias", "true");
                bias_t = t.reshaped(&[n])?;
                bind.push(("bias", &bias_t));
            }
            return cx.library("matmul", args, &bind);
        }
        let (sa, sb) = (as_matrix(a.shape(), true), as_matrix(b.shape(), false));
        let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let (na, nb): (usize, usize) = (ba.iter().product(), bb.iter().product());
        let bias_t = bias.map(|t| t.reshaped(&[n])).transpose()?;
        let with_bias = |args: KernelArgs| if bias_t.is_some() { args.with("bias", "true") } else { args };
        let bind_bias = |bind: &mut Vec<(&str, HbmTensor)>| {
            if let Some(t) = &bias_t {
                bind.push(("bias", t.clone()));
            }
        };
        let run = |cx: &mut Cx, args: KernelArgs, bind: Vec<(&str, HbmTensor)>| {
            let refs: Vec<(&str, &HbmTensor)> = bind.iter().map(|(k, t)| (*k, t)).collect();
            cx.library("matmul", args, &refs)
        };
        if nb == 1 {
            let rows = na * m;
            let mut bind =
                vec![("a", a.reshaped(&[rows, k])?), ("b", b.reshaped(&[k, n])?), ("c", c.reshaped(&[rows, n])?)];
            bind_bias(&mut bind);
            return run(cx, with_bias(base(&[rows, k, n])), bind);
        }
        if ba == bb {
            let mut bind =
                vec![("a", a.reshaped(&[na, m, k])?), ("b", b.reshaped(&[nb, k, n])?), ("c", c.reshaped(&[na, m, n])?)];
            bind_bias(&mut bind);
            return run(cx, with_bias(base(&[m, k, n]).with("batch", &na.to_string())), bind);
        }
        // Broadcast batches: one product per output matrix.
        let rank = ba.len().max(bb.len());
        let pad = |s: &[usize]| {
            let mut v = vec![1; rank - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (pa, pb) = (pad(ba), pad(bb));
        let out_b: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
        let total: usize = out_b.iter().product();
        let es = |t: &HbmTensor| t.dtype().size() as u64;
        for o in 0..total {
            let mut idx = vec![0; rank];
            let mut r = o;
            for d in (0..rank).rev() {
                idx[d] = r % out_b[d];
                r /= out_b[d];
            }
            let (ia, ib) = (row_major_index(&idx, &pa), row_major_index(&idx, &pb));
            let ra = a.region(&format!("{}[{ia}]", a.name()), (ia * m * k) as u64 * es(a), &[m, k], a.dtype())?;
            let rb = b.region(&format!("{}[{ib}]", b.name()), (ib * k * n) as u64 * es(b), &[k, n], b.dtype())?;
            let rc = c.region(&format!("{}[{o}]", c.name()), (o * m * n) as u64 * es(c), &[m, n], c.dtype())?;
            let mut bind = vec![("a", ra), ("b", rb), ("c", rc)];
            bind_bias(&mut bind);
            run(cx, with_bias(base(&[m, k, n])), bind)?;
        }
        Ok(())
    }
}

impl Emitter for MatMulStep {
    fn kernels(&self) -> String {
        if self.post.is_some() {
            "matmul+elementwise".into()
        } else {
            "matmul".into()
        }
    }

    fn batch_separable(&self, batched: &[bool], shapes: &[Vec<usize>], _out: &[usize]) -> bool {
        let (a, b) = (batched.first() == Some(&true), batched.get(1) == Some(&true));
        let extra_ok = batched.iter().zip(shapes).skip(2).all(|(&f, s)| f || s.len() < 2 || s.first() == Some(&1));
        match self.gemm {
            Some(g) => a && !b && !g.trans_a && extra_ok,
            None => a && extra_ok && (!b || shapes.first().map(|s| s.len()) == shapes.get(1).map(|s| s.len())),
        }
    }

    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        self.product(cx, io)?;
        if let Some((prog, extra)) = &self.post {
            let c = io.output(0)?.clone();
            let mut inputs = vec![c.clone()];
            for &i in extra {
                inputs.push(io.input(i)?.clone());
            }
            let pass = Io { inputs, outputs: vec![c], temps: vec![] };
            Elementwise::new(prog.clone()).emit(cx, &pass)?;
        }
        Ok(())
    }
}
