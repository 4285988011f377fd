//! Preparing the graph and the steps for emission: zero-element values, graph outputs
//! that need their own tensor, alias classes and where each lives, and the choice of a
//! data-parallel batch split.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::emit::{Copy, Step, StepKind};
use super::{LowerError, Parallelism};
use crate::graph::{Graph, Op, Tensor, TensorType, ValueId};

/// What kind of tensor holds a class of aliased values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Home {
    Input(ValueId),
    Weight(ValueId),
    Output(usize),
    Arena,
}

/// Evaluates on the host every node that reads a zero-element value and otherwise only
/// constants (a reduction over an empty set is a constant), so the device never sees
/// it. Returns how many were folded.
pub(super) fn fold_empty(g: &mut Graph) -> Result<usize, LowerError> {
    let mut folded: Vec<(usize, Vec<(ValueId, Tensor)>)> = Vec::new();
    let empty = |v: &ValueId| g.value(*v).ty.numel() == 0;
    for (k, node) in g.nodes.iter().enumerate() {
        if !node.inputs.iter().any(empty) || node.outputs.iter().all(empty) {
            continue;
        }
        let consts: Option<Vec<Arc<Tensor>>> = node
            .inputs
            .iter()
            .map(|&v| {
                let val = g.value(v);
                val.constant
                    .clone()
                    .or_else(|| empty(&v).then(|| Arc::new(Tensor::zeros(val.ty.dtype, val.ty.shape.clone()))))
            })
            .collect();
        let Some(consts) = consts else { continue };
        let refs: Vec<&Tensor> = consts.iter().map(|c| c.as_ref()).collect();
        let tys: Vec<TensorType> = node.outputs.iter().map(|&o| g.value(o).ty.clone()).collect();
        let results = crate::interp::eval(&node.op, &refs, &tys).map_err(|reason| LowerError::Unsupported {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            reason: format!("evaluating it on its empty input: {reason}"),
        })?;
        folded.push((k, node.outputs.iter().copied().zip(results).collect()));
    }
    let mut keep = vec![true; g.nodes.len()];
    for (k, outs) in &folded {
        keep[*k] = false;
        for (o, t) in outs {
            g.value_mut(*o).constant = Some(Arc::new(t.clone()));
        }
    }
    if !folded.is_empty() {
        crate::passes::compact(g, &keep);
    }
    Ok(folded.len())
}

/// Removes zero-element values: steps whose outputs are all empty are dropped, empty
/// outputs of the others (a split piece) and empty inputs of steps that skip them
/// (concatenation) are left out; any other step reading an empty value is refused.
pub(super) fn drop_empty(g: &Graph, steps: Vec<Step>) -> Result<Vec<Step>, LowerError> {
    let empty = |v: &ValueId| g.value(*v).ty.numel() == 0;
    let mut kept = Vec::with_capacity(steps.len());
    for mut s in steps {
        s.outputs.retain(|v| !empty(v));
        if s.outputs.is_empty() {
            continue;
        }
        if s.inputs.iter().any(empty) {
            let skips = matches!(&s.kind, StepKind::Emit(e) if e.skips_empty_inputs());
            if !skips {
                return Err(LowerError::Unsupported {
                    node: s.node.clone(),
                    op_type: s.op_type.clone(),
                    reason: "an input has no elements".into(),
                });
            }
            s.inputs.retain(|v| !empty(v));
        }
        kept.push(s);
    }
    Ok(kept)
}

/// Graph outputs that no node computes (graph inputs, constants) or that are listed
/// twice get an `Identity` node of their own, so each output has its own tensor.
pub(super) fn detach_outputs(g: &mut Graph) {
    let mut seen = std::collections::HashSet::new();
    for i in 0..g.outputs.len() {
        let v = g.outputs[i];
        if g.value(v).producer.is_some() && seen.insert(v) {
            continue;
        }
        let name = format!("{}:copy{i}", g.value(v).name);
        let ty = g.value(v).ty.clone();
        let out = g.push_node(&name, "Identity", Op::Identity, vec![v], vec![name.clone()], vec![ty]);
        g.outputs[i] = out[0];
        seen.insert(out[0]);
    }
}

/// Classes of values sharing bytes (aliases), and where each class lives.
pub(super) struct Homes {
    parent: Vec<ValueId>,
    /// Byte offset of each value within its parent.
    offset: Vec<u64>,
    home: HashMap<ValueId, Home>,
}

impl Homes {
    pub(super) fn root(&self, mut v: ValueId) -> ValueId {
        while self.parent[v.0 as usize] != v {
            v = self.parent[v.0 as usize];
        }
        v
    }

    /// Byte offset of `v` within its class's root.
    pub(super) fn offset(&self, mut v: ValueId) -> u64 {
        let mut at = 0;
        while self.parent[v.0 as usize] != v {
            at += self.offset[v.0 as usize];
            v = self.parent[v.0 as usize];
        }
        at
    }

    pub(super) fn home(&self, root: ValueId) -> &Home {
        self.home.get(&root).unwrap_or(&Home::Arena)
    }
}

/// Joins alias steps' outputs to their inputs' classes, turning an alias into a copy
/// where the class would hold two graph tensors (an input or weight and an output, or
/// two outputs). Concatenations whose pieces are contiguous in the output (all axes
/// before the concatenated one of length 1) place each piece that is an intermediate of
/// its own in the output's bytes, so its producer writes it there and the concatenation
/// copies nothing for it.
pub(super) fn resolve_aliases(g: &Graph, steps: &mut [Step], bytes: impl Fn(ValueId) -> u64) -> Homes {
    let mut h = Homes {
        parent: (0..g.values.len() as u32).map(ValueId).collect(),
        offset: vec![0; g.values.len()],
        home: HashMap::new(),
    };
    for &v in &g.inputs {
        h.home.insert(v, Home::Input(v));
    }
    for (i, v) in g.values.iter().enumerate() {
        if v.constant.is_some() {
            h.home.insert(ValueId(i as u32), Home::Weight(ValueId(i as u32)));
        }
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        h.home.entry(v).or_insert(Home::Output(i));
    }
    for s in steps.iter_mut() {
        let (Some(&x), Some(&y)) = (s.inputs.first(), s.outputs.first()) else { continue };
        let concat = match &s.kind {
            StepKind::Alias => None,
            StepKind::Emit(e) => match e.concat_axis() {
                Some(axis) => Some(axis),
                None => continue,
            },
        };
        if let Some(axis) = concat {
            let contiguous = g.value(y).ty.shape[..axis].iter().all(|&d| d == 1);
            if !contiguous {
                continue;
            }
            let mut at = 0;
            for &xi in &s.inputs {
                let rx = h.root(xi);
                let whole = h.offset(xi) == 0 && bytes(rx) == bytes(xi);
                if whole && h.home(rx) == &Home::Arena && rx != h.root(y) {
                    h.parent[rx.0 as usize] = y;
                    h.offset[rx.0 as usize] = at;
                }
                at += bytes(xi);
            }
            continue;
        }
        let rx = h.root(x);
        let pinned_x = h.home(rx) != &Home::Arena;
        let pinned_y = h.home(y) != &Home::Arena;
        // A graph output holds its own bytes: it cannot be a piece of a larger class.
        let whole_x = h.offset(x) == 0 && bytes(rx) == bytes(x);
        if pinned_y && (pinned_x || !whole_x) {
            s.kind = StepKind::Emit(Box::new(Copy));
            continue;
        }
        h.parent[y.0 as usize] = x;
        if let Some(home) = h.home.remove(&y) {
            h.home.insert(rx, home);
        }
    }
    h
}

/// The batch split over `cores`: contiguous ranges of images.
pub(super) fn batch_split(batch: usize, cores: u16) -> Vec<Range<usize>> {
    let cores = (cores as usize).clamp(1, batch.max(1));
    (0..cores).map(|c| c * batch / cores..(c + 1) * batch / cores).filter(|r| !r.is_empty()).collect()
}

/// Which values carry the batch on axis 0 in a data-parallel program.
pub(super) fn batched_values(g: &Graph, steps: &[Step], p: &Parallelism) -> Vec<bool> {
    let mut b = vec![false; g.values.len()];
    let Parallelism::DataParallel { batch, .. } = p else { return b };
    for &v in &g.inputs {
        b[v.0 as usize] = g.value(v).ty.shape.first() == Some(batch);
    }
    for s in steps {
        if s.inputs.iter().any(|v| b[v.0 as usize]) {
            for &o in &s.outputs {
                b[o.0 as usize] = true;
            }
        }
    }
    b
}

/// Data-parallel when the graph inputs share a batch ≥ 2 and every step that reads
/// batched values can be split by the batch.
pub(super) fn data_parallel(g: &Graph, steps: &[Step], cores: u16) -> Parallelism {
    let per_step = |reason: String| Parallelism::PerStep { cores, reason };
    if cores == 1 {
        return per_step(String::new());
    }
    let batch = match g.inputs.first().and_then(|&v| g.value(v).ty.shape.first().copied()) {
        Some(n) if n >= 2 => n,
        _ => return per_step("the batch is 1".into()),
    };
    let mut b = vec![false; g.values.len()];
    for &v in &g.inputs {
        b[v.0 as usize] = g.value(v).ty.shape.first() == Some(&batch);
    }
    for s in steps {
        let flags: Vec<bool> = s.inputs.iter().map(|v| b[v.0 as usize]).collect();
        if !flags.iter().any(|&f| f) {
            continue;
        }
        let shapes: Vec<Vec<usize>> = s.inputs.iter().map(|&v| g.value(v).ty.shape.clone()).collect();
        let out: Vec<usize> = s.outputs.first().map(|&o| g.value(o).ty.shape.clone()).unwrap_or_default();
        let ok = out.first() == Some(&batch)
            && s.outputs.iter().all(|&o| g.value(o).ty.shape.first() == Some(&batch))
            && match &s.kind {
                StepKind::Alias => flags[0] && shapes[0].first() == Some(&batch),
                StepKind::Emit(e) => e.batch_separable(&flags, &shapes, &out),
            };
        if !ok {
            return per_step(format!("node `{}` ({}) mixes the batch", s.node, s.op_type));
        }
        for &o in &s.outputs {
            b[o.0 as usize] = true;
        }
    }
    Parallelism::DataParallel { cores: cores.min(batch.min(u16::MAX as usize) as u16), batch }
}
