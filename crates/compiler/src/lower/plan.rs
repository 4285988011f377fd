//! Choosing a lowering for every node: the op-by-op dispatch, fused groups, and the
//! elementwise translations.

use std::sync::Arc;

use trainyard_arch::DType;

use super::elementwise::{Arg, Elementwise, EwProgram};
use super::emit::{Emitter, Step, StepKind};
use super::{conv, io, linalg, movement, nn, resize, rows, unsupported, LowerError};
use crate::graph::{DataType, FusedArg, FusedStep, Graph, Node, Op, Tensor, ValueId};

/// Planning state: the graph (constants derived at compile time are added to it),
/// the device float type, and which nodes were absorbed into earlier steps.
pub struct Planner<'a> {
    /// The graph being lowered.
    pub g: &'a mut Graph,
    /// Device float type.
    pub dtype: DType,
    /// Nodes already part of an earlier step.
    pub consumed: Vec<bool>,
    uses: Vec<usize>,
    fresh: usize,
}

impl Planner<'_> {
    /// The device type of value `v`.
    pub fn dev(&self, v: ValueId) -> DType {
        io::device_dtype(self.g.value(v).ty.dtype, self.dtype)
    }

    /// The shape of `v`.
    pub fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.value(v).ty.shape.clone()
    }

    /// The element type of `v`.
    pub fn dtype_of(&self, v: ValueId) -> DataType {
        self.g.value(v).ty.dtype
    }

    /// The value of `v` when it is a constant.
    pub fn constant(&self, v: ValueId) -> Option<Arc<Tensor>> {
        self.g.value(v).constant.clone()
    }

    /// The value of `v` when it is a constant with one element.
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        self.g.value(v).constant.as_ref().filter(|t| t.len() == 1).map(|t| t.to_f64_vec()[0])
    }

    /// Adds a constant computed at compile time (a packed or folded weight).
    pub fn add_constant(&mut self, hint: &str, t: Tensor) -> ValueId {
        self.fresh += 1;
        let mut name = format!("{hint}#{}", self.fresh);
        while self.g.values.iter().any(|v| v.name == name) {
            self.fresh += 1;
            name = format!("{hint}#{}", self.fresh);
        }
        self.g.add_constant(&name, t)
    }

    /// The index of the only node reading `v` (exactly once), when `v` is not a graph
    /// output.
    pub fn sole_reader(&self, v: ValueId) -> Option<usize> {
        if self.uses.get(v.0 as usize) != Some(&1) || self.g.outputs.contains(&v) {
            return None;
        }
        self.g.nodes.iter().position(|n| n.inputs.contains(&v))
    }

    /// True when `v` is available before node `k` runs (an input, a constant, or an
    /// output of an earlier node).
    pub fn ready_before(&self, v: ValueId, k: usize) -> bool {
        match self.g.value(v).producer {
            None => true,
            Some(p) => (p.0 as usize) < k,
        }
    }
}

/// A step that emits `e` over `inputs` → `outputs`.
pub fn step(
    node: &Node,
    op_type: &str,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    e: impl Emitter + 'static,
) -> Step {
    Step { node: node.name.clone(), op_type: op_type.to_string(), inputs, outputs, kind: StepKind::Emit(Box::new(e)) }
}

/// Plans every node of `g` in order.
pub fn plan(g: &mut Graph, dtype: DType) -> Result<Vec<Step>, LowerError> {
    let uses = g.use_counts();
    let n = g.nodes.len();
    let mut p = Planner { g, dtype, consumed: vec![false; n], uses, fresh: 0 };
    let mut steps = Vec::with_capacity(n);
    for k in 0..n {
        if p.consumed[k] {
            continue;
        }
        let node = p.g.nodes[k].clone();
        steps.push(plan_node(&mut p, k, &node)?);
    }
    Ok(steps)
}

fn plan_node(p: &mut Planner, k: usize, node: &Node) -> Result<Step, LowerError> {
    match &node.op {
        Op::Identity | Op::Reshape { .. } => Ok(Step {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            inputs: node.inputs.clone(),
            outputs: node.outputs.clone(),
            kind: StepKind::Alias,
        }),
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::FusedElementwise(_) | Op::Expand { .. } => {
            elementwise(p, node)
        }
        Op::Trilu { upper, k } => trilu(p, node, *upper, *k),
        Op::MatMul | Op::Gemm { .. } | Op::FusedMatMul { .. } => linalg::plan(p, node),
        Op::Conv(_) => conv::conv(p, k, node),
        Op::ConvTranspose(_) => conv::conv_transpose(p, node),
        Op::Pool(_) | Op::GlobalPool(_) => nn::pool(p, node),
        Op::Resize(_) => resize::plan(p, node),
        Op::BatchNorm { .. } | Op::InstanceNorm { .. } | Op::GroupNorm { .. } => nn::norm(p, node),
        Op::Lrn { .. } => nn::lrn(p, node),
        Op::Softmax { .. }
        | Op::LayerNorm { .. }
        | Op::RmsNorm { .. }
        | Op::Reduce { .. }
        | Op::ArgReduce { .. }
        | Op::LpNorm { .. } => rows::plan(p, node),
        Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Gather { .. }
        | Op::Tile { .. }
        | Op::DepthToSpace { .. }
        | Op::SpaceToDepth { .. } => movement::plan(p, node),
        other => Err(unsupported(node, format!("{} has no device lowering", op_name(other)))),
    }
}

/// A short name of an op for messages.
fn op_name(op: &Op) -> String {
    let s = format!("{op:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("op").to_string()
}

/// The program arguments of `node`'s inputs: constant scalars become immediates, the
/// others step inputs (in `inputs`).
fn args_of(p: &Planner, node: &Node, inputs: &mut Vec<ValueId>) -> Vec<Arg> {
    node.inputs
        .iter()
        .map(|&v| match p.scalar(v) {
            Some(x) if p.g.value(v).ty.numel() == 1 => Arg::Imm(x as f32),
            _ => {
                let i = inputs.iter().position(|&u| u == v).unwrap_or_else(|| {
                    inputs.push(v);
                    inputs.len() - 1
                });
                Arg::In(i)
            }
        })
        .collect()
}

/// Elementwise ops, their fused chains, casts and broadcasts.
fn elementwise(p: &mut Planner, node: &Node) -> Result<Step, LowerError> {
    let mut inputs = Vec::new();
    let args = args_of(p, node, &mut inputs);
    let arg = |i: usize| args.get(i).copied().ok_or_else(|| unsupported(node, format!("input {i} is missing")));
    let in_type = |i: usize| node.inputs.get(i).map(|&v| p.dtype_of(v)).unwrap_or(DataType::F32);
    let out = node.outputs.first().copied().ok_or_else(|| unsupported(node, "no output"))?;
    let out_type = p.dtype_of(out);
    let mut prog = EwProgram::new(Arg::Imm(0.0));
    let bad = |e: String| unsupported(node, e);
    let result = match &node.op {
        Op::Unary(u) => prog.unary(u, arg(0)?, !in_type(0).is_float()).map_err(bad)?,
        Op::Binary(b) => prog.binary(*b, arg(0)?, arg(1)?, !in_type(0).is_float()).map_err(bad)?,
        Op::Where => prog.select(arg(0)?, arg(1)?, arg(2)?),
        Op::Expand { .. } => arg(0)?,
        Op::Cast { to: DataType::F8E4M3 | DataType::F8E5M2, saturate: false } => {
            return Err(unsupported(node, "a non-saturating cast to fp8 (the device saturates)"));
        }
        Op::Cast { to, .. } => cast(&mut prog, arg(0)?, in_type(0), *to, p.dtype).map_err(bad)?,
        Op::FusedElementwise(fsteps) => {
            let mut vals: Vec<Arg> = Vec::with_capacity(fsteps.len());
            let get = |a: &FusedArg, vals: &[Arg]| -> Result<Arg, LowerError> {
                match *a {
                    FusedArg::Input(i) => arg(i),
                    FusedArg::Step(s) => vals.get(s).copied().ok_or_else(|| unsupported(node, "bad fused step")),
                }
            };
            for s in fsteps {
                let v = match s {
                    FusedStep::Unary(u, a, dt) => prog.unary(u, get(a, &vals)?, !dt.is_float()).map_err(bad)?,
                    FusedStep::Binary(b, x, y, dt) => {
                        let int = !dt.is_float() && !b.is_comparison();
                        prog.binary(*b, get(x, &vals)?, get(y, &vals)?, int).map_err(bad)?
                    }
                };
                vals.push(v);
            }
            vals.last().copied().ok_or_else(|| unsupported(node, "empty fused chain"))?
        }
        _ => return Err(unsupported(node, "not elementwise")),
    };
    let _ = out_type;
    prog.result = result;
    Ok(step(node, &node.op_type.clone(), inputs, node.outputs.clone(), Elementwise::new(prog)))
}

/// `Trilu`: the kept triangle selected by a constant 0/1 mask over the last two axes.
fn trilu(p: &mut Planner, node: &Node, upper: bool, k: i64) -> Result<Step, LowerError> {
    let x = node.inputs[0];
    let xs = p.shape(x);
    if xs.len() < 2 {
        return Err(unsupported(node, "needs at least two axes"));
    }
    let (r, c) = (xs[xs.len() - 2], xs[xs.len() - 1]);
    let keep: Vec<i128> = (0..r * c)
        .map(|i| {
            let d = (i % c) as i64 - (i / c) as i64;
            i128::from(if upper { d >= k } else { d <= k })
        })
        .collect();
    let mask = Tensor::from_i128(DataType::Bool, vec![r, c], keep).map_err(|e| unsupported(node, e))?;
    let m = p.add_constant(&format!("{}.mask", node.name), mask);
    let mut prog = EwProgram::new(Arg::In(0));
    prog.result = prog.select(Arg::In(1), Arg::In(0), Arg::Imm(0.0));
    Ok(step(node, &node.op_type.clone(), vec![x, m], node.outputs.clone(), Elementwise::new(prog)))
}

/// `Cast` from `from` to `to`: values are f32 on the device; floats round on the
/// store, casts to integers truncate, to bool compare with 0.
fn cast(prog: &mut EwProgram, x: Arg, from: DataType, to: DataType, float: DType) -> Result<Arg, String> {
    if to == DataType::Bool {
        return Ok(if from == DataType::Bool { x } else { prog.alu(trainyard_isa::AluOp::Ne, x, Arg::Imm(0.0)) });
    }
    if to.is_float() || from == DataType::Bool {
        return Ok(x);
    }
    if from.is_float() {
        return Ok(prog.trunc(x));
    }
    // Integer to integer: the device saturates where ONNX wraps, so only widening casts.
    let (dfrom, dto) = (io::device_dtype(from, float), io::device_dtype(to, float));
    match (dfrom.int_range(), dto.int_range()) {
        (Some((a, b)), Some((c, d))) if c <= a && b <= d => Ok(x),
        _ => Err(format!("Cast from {from} to {to} wraps values the device's {} cannot hold", dto.name())),
    }
}
