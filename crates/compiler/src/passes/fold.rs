//! Constant folding and dead-code removal.

use std::sync::Arc;

use super::{compact, PassError};
use crate::graph::{Graph, TensorType};

/// Evaluates every node whose inputs are all constants and turns its outputs into
/// constants; the node is removed. Returns the number of nodes folded.
pub fn fold_constants(g: &mut Graph) -> Result<usize, PassError> {
    let mut keep = vec![true; g.nodes.len()];
    for (k, node) in g.nodes.iter().enumerate() {
        let consts: Option<Vec<Arc<_>>> =
            node.inputs.iter().map(|&i| g.values[i.0 as usize].constant.clone()).collect();
        let Some(consts) = consts else { continue };
        let refs: Vec<&_> = consts.iter().map(|c| c.as_ref()).collect();
        let tys: Vec<TensorType> = node.outputs.iter().map(|&o| g.values[o.0 as usize].ty.clone()).collect();
        let results = crate::interp::eval(&node.op, &refs, &tys).map_err(|reason| PassError::Eval {
            pass: "fold-constants",
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            reason,
        })?;
        for (&o, t) in node.outputs.iter().zip(results) {
            g.values[o.0 as usize].constant = Some(Arc::new(t));
        }
        keep[k] = false;
    }
    let folded = keep.iter().filter(|k| !**k).count();
    if folded > 0 {
        compact(g, &keep);
    }
    Ok(folded)
}

/// Removes nodes none of whose outputs reach a graph output. Returns how many.
pub fn remove_dead_code(g: &mut Graph) -> usize {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o.0 as usize] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (k, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| live[o.0 as usize]) {
            keep[k] = true;
            for &i in &n.inputs {
                live[i.0 as usize] = true;
            }
        }
    }
    let removed = keep.iter().filter(|k| !**k).count();
    // Compacting also drops constants nothing reads any more.
    compact(g, &keep);
    removed
}

/// Removes `Identity` nodes (and reshapes to the same shape), pointing their readers at
/// the input instead; an identity whose output is a graph output stays, so output
/// names do not change. Returns how many were removed.
pub fn remove_identities(g: &mut Graph) -> usize {
    let mut keep = vec![true; g.nodes.len()];
    let mut replace: Vec<Option<crate::graph::ValueId>> = vec![None; g.values.len()];
    for (k, n) in g.nodes.iter().enumerate() {
        let same_shape =
            |i: crate::graph::ValueId, o: crate::graph::ValueId| g.values[i.0 as usize].ty == g.values[o.0 as usize].ty;
        let is_identity = match &n.op {
            crate::graph::Op::Identity => true,
            crate::graph::Op::Reshape { .. } => same_shape(n.inputs[0], n.outputs[0]),
            _ => false,
        };
        if !is_identity || n.outputs.len() != 1 || g.outputs.contains(&n.outputs[0]) {
            continue;
        }
        // Chains resolve to the first real value.
        let mut src = n.inputs[0];
        while let Some(s) = replace[src.0 as usize] {
            src = s;
        }
        replace[n.outputs[0].0 as usize] = Some(src);
        keep[k] = false;
    }
    let removed = keep.iter().filter(|k| !**k).count();
    if removed > 0 {
        for n in &mut g.nodes {
            for i in &mut n.inputs {
                if let Some(s) = replace[i.0 as usize] {
                    *i = s;
                }
            }
        }
        compact(g, &keep);
    }
    removed
}
