//! Fusion: MatMul + Add (+ activation) into one node, and chains of elementwise ops into
//! one [`Op::FusedElementwise`] whose steps round to each intermediate's type exactly as
//! the separate nodes did.

use super::compact;
use crate::graph::{infer, FusedArg, FusedStep, Graph, Node, Op, Unary, ValueId};

/// The single node reading `v` (exactly once), when `v` is not a graph output.
fn sole_reader(g: &Graph, uses: &[usize], v: ValueId) -> Option<usize> {
    if uses[v.0 as usize] != 1 || g.outputs.contains(&v) {
        return None;
    }
    g.nodes.iter().position(|n| n.inputs.contains(&v))
}

fn is_activation(u: &Unary) -> bool {
    use Unary::*;
    matches!(
        u,
        Relu | LeakyRelu(_)
            | Sigmoid
            | Tanh
            | Gelu { .. }
            | HardSigmoid { .. }
            | HardSwish
            | Clip { .. }
            | Elu(_)
            | Selu { .. }
            | Celu(_)
            | Softplus
            | Mish
            | Swish(_)
    )
}

/// Fuses `MatMul` whose only reader is an `Add` of a bias that broadcasts to the product
/// (`FusedMatMul`), then a `FusedMatMul` whose only reader is an activation. The fused
/// node takes the place of the last node it absorbs and the name of the MatMul.
pub fn fuse_matmul(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let uses = g.use_counts();
        let mut change = None;
        for (k, n) in g.nodes.iter().enumerate() {
            let Some(&out) = n.outputs.first() else { continue };
            let Some(r) = sole_reader(g, &uses, out) else { continue };
            let reader = &g.nodes[r];
            let out_ty = &g.value(out).ty;
            match (&n.op, &reader.op) {
                (Op::MatMul, Op::Binary(crate::graph::Binary::Add)) => {
                    let Some(bias) = reader.inputs.iter().copied().find(|&i| i != out) else { continue };
                    let bias_ty = &g.value(bias).ty;
                    if reader.inputs.iter().filter(|&&i| i == out).count() != 1
                        || bias_ty.dtype != out_ty.dtype
                        || infer::broadcast(&out_ty.shape, &bias_ty.shape).ok().as_ref() != Some(&out_ty.shape)
                    {
                        continue;
                    }
                    let node = Node {
                        name: n.name.clone(),
                        op_type: format!("{}+{}", n.op_type, reader.op_type),
                        op: Op::FusedMatMul { activation: None },
                        inputs: vec![n.inputs[0], n.inputs[1], bias],
                        outputs: reader.outputs.clone(),
                    };
                    change = Some((k, r, node));
                    break;
                }
                (Op::FusedMatMul { activation: None }, Op::Unary(u)) if is_activation(u) => {
                    let node = Node {
                        name: n.name.clone(),
                        op_type: format!("{}+{}", n.op_type, reader.op_type),
                        op: Op::FusedMatMul { activation: Some(u.clone()) },
                        inputs: n.inputs.clone(),
                        outputs: reader.outputs.clone(),
                    };
                    change = Some((k, r, node));
                    break;
                }
                _ => {}
            }
        }
        let Some((first, last, node)) = change else { return fused };
        g.nodes[last] = node;
        let mut keep = vec![true; g.nodes.len()];
        keep[first] = false;
        compact(g, &keep);
        fused += 1;
    }
}

/// The steps of an elementwise node over its own inputs.
fn steps_of(g: &Graph, n: &Node) -> Option<Vec<FusedStep>> {
    let dt = g.value(*n.outputs.first()?).ty.dtype;
    match &n.op {
        Op::Unary(u) => Some(vec![FusedStep::Unary(u.clone(), FusedArg::Input(0), dt)]),
        Op::Binary(b) => Some(vec![FusedStep::Binary(*b, FusedArg::Input(0), FusedArg::Input(1), dt)]),
        Op::FusedElementwise(s) => Some(s.clone()),
        _ => None,
    }
}

/// Longest fused chain made.
const MAX_STEPS: usize = 32;

/// Merges an elementwise node into its only reader when that is elementwise too, until
/// no pair is left. Returns the number of merges.
pub fn fuse_elementwise(g: &mut Graph) -> usize {
    let mut merges = 0;
    loop {
        let uses = g.use_counts();
        let mut change = None;
        for (k, a) in g.nodes.iter().enumerate() {
            if !a.op.is_elementwise() || a.outputs.len() != 1 {
                continue;
            }
            let out = a.outputs[0];
            let Some(r) = sole_reader(g, &uses, out) else { continue };
            let b = &g.nodes[r];
            let (Some(sa), Some(sb)) = (steps_of(g, a), steps_of(g, b)) else { continue };
            if sa.len() + sb.len() > MAX_STEPS {
                continue;
            }
            let j = b.inputs.iter().position(|&i| i == out).unwrap_or(0);
            let mut inputs = a.inputs.clone();
            let mut map = vec![FusedArg::Input(0); b.inputs.len()];
            for (t, &v) in b.inputs.iter().enumerate() {
                map[t] = if t == j {
                    FusedArg::Step(sa.len() - 1)
                } else {
                    inputs.push(v);
                    FusedArg::Input(inputs.len() - 1)
                };
            }
            let shift = |arg: &FusedArg| match *arg {
                FusedArg::Input(t) => map[t],
                FusedArg::Step(s) => FusedArg::Step(s + sa.len()),
            };
            let mut steps = sa.clone();
            for s in &sb {
                steps.push(match s {
                    FusedStep::Unary(u, x, dt) => FusedStep::Unary(u.clone(), shift(x), *dt),
                    FusedStep::Binary(op, x, y, dt) => FusedStep::Binary(*op, shift(x), shift(y), *dt),
                });
            }
            let node = Node {
                name: a.name.clone(),
                op_type: format!("{}+{}", a.op_type, b.op_type),
                op: Op::FusedElementwise(steps),
                inputs,
                outputs: b.outputs.clone(),
            };
            change = Some((k, r, node));
            break;
        }
        let Some((first, last, node)) = change else { return merges };
        g.nodes[last] = node;
        let mut keep = vec![true; g.nodes.len()];
        keep[first] = false;
        compact(g, &keep);
        merges += 1;
    }
}

/// A rewrite: the node removed, the node replaced, its replacement and the new
/// constants it reads (appended to its inputs).
type Rewrite = (usize, usize, Node, Vec<(String, crate::graph::Tensor)>);

/// Folds an inference `BatchNormalization` into the `Conv` before it when the weights,
/// bias and statistics are constants (`w' = w·γ/σ`, `b' = (b − μ)·γ/σ + β` per
/// output channel, `σ = √(var + ε)`), then fuses a `Conv` whose only reader is an
/// activation. Returns the number of rewrites. Folding changes rounding (the result is
/// one convolution instead of two steps) but not the mathematics.
pub fn fuse_conv(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let uses = g.use_counts();
        let mut change: Option<Rewrite> = None;
        for (k, n) in g.nodes.iter().enumerate() {
            let Op::Conv(conv) = &n.op else { continue };
            let Some(&out) = n.outputs.first() else { continue };
            let Some(r) = sole_reader(g, &uses, out) else { continue };
            let reader = &g.nodes[r];
            match &reader.op {
                Op::BatchNorm { epsilon, momentum: None } if conv.activation.is_none() && reader.inputs[0] == out => {
                    let konst = |v: ValueId| g.value(v).constant.clone();
                    let (Some(w), Some(params)) =
                        (konst(n.inputs[1]), reader.inputs[1..5].iter().map(|&v| konst(v)).collect::<Option<Vec<_>>>())
                    else {
                        continue;
                    };
                    let bias = match n.inputs.get(2) {
                        Some(&b) => match konst(b) {
                            Some(b) => b.to_f64_vec(),
                            None => continue,
                        },
                        None => vec![0.0; w.shape()[0]],
                    };
                    let p: Vec<Vec<f64>> = params.iter().map(|t| t.to_f64_vec()).collect();
                    let m = w.shape()[0];
                    let per = w.len() / m.max(1);
                    let factor: Vec<f64> = (0..m).map(|c| p[0][c] / (p[3][c] + epsilon).sqrt()).collect();
                    let wv: Vec<f64> =
                        w.to_f64_vec().iter().enumerate().map(|(i, &x)| x * factor[i / per.max(1)]).collect();
                    let bv: Vec<f64> = (0..m).map(|c| (bias[c] - p[2][c]) * factor[c] + p[1][c]).collect();
                    let (Ok(wt), Ok(bt)) = (
                        crate::graph::Tensor::from_f64(w.dtype(), w.shape().to_vec(), wv),
                        crate::graph::Tensor::from_f64(w.dtype(), vec![m], bv),
                    ) else {
                        continue;
                    };
                    let node = Node {
                        name: n.name.clone(),
                        op_type: format!("{}+{}", n.op_type, reader.op_type),
                        op: n.op.clone(),
                        inputs: vec![n.inputs[0]],
                        outputs: reader.outputs.clone(),
                    };
                    let names = vec![(format!("{}:folded_w", n.name), wt), (format!("{}:folded_b", n.name), bt)];
                    change = Some((k, r, node, names));
                    break;
                }
                Op::Unary(u) if conv.activation.is_none() && is_activation(u) => {
                    let mut c = conv.clone();
                    c.activation = Some(u.clone());
                    let node = Node {
                        name: n.name.clone(),
                        op_type: format!("{}+{}", n.op_type, reader.op_type),
                        op: Op::Conv(c),
                        inputs: n.inputs.clone(),
                        outputs: reader.outputs.clone(),
                    };
                    change = Some((k, r, node, vec![]));
                    break;
                }
                _ => {}
            }
        }
        let Some((first, last, mut node, constants)) = change else { return fused };
        for (name, t) in constants {
            node.inputs.push(g.add_constant(&name, t));
        }
        g.nodes[last] = node;
        let mut keep = vec![true; g.nodes.len()];
        keep[first] = false;
        compact(g, &keep);
        fused += 1;
    }
}
