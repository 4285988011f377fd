//! Graph passes: constant folding, identity and dead-code removal, fusion of
//! elementwise chains and of MatMul+Add(+activation), and the choice of each value's
//! partition axis.
//!
//! Each pass rewrites a [`Graph`] in place, keeps the invariants [`Graph::verify`]
//! checks, and returns how many rewrites it made. [`optimize`] runs them all in order
//! and verifies the graph after each. Passes never change results: the conformance
//! suite runs every node test through [`optimize`] and compares with the reference.
//!
//! ```
//! use trainyard_compiler::graph::{Binary, DataType, Graph, Op, TensorType, Unary};
//! use trainyard_compiler::passes;
//!
//! let mut g = Graph::new("chain");
//! let x = g.add_input("x", TensorType::new(DataType::F32, vec![4, 8]));
//! let y = g.add_node("relu", "Relu", Op::Unary(Unary::Relu), vec![x])?[0];
//! let z = g.add_node("neg", "Neg", Op::Unary(Unary::Neg), vec![y])?[0];
//! g.outputs.push(z);
//! let report = passes::optimize(&mut g)?;
//! assert_eq!(g.nodes.len(), 1);
//! assert_eq!(g.nodes[0].op_type, "Relu+Neg");
//! assert!(report.iter().any(|(name, n)| *name == "fuse-elementwise" && *n == 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod fold;
mod fuse;
mod layout;

pub use fold::{fold_constants, remove_dead_code, remove_identities};
pub use fuse::{fuse_conv, fuse_elementwise, fuse_matmul};
pub use layout::choose_layouts;

use crate::graph::{Graph, GraphError, NodeId, ValueId};

/// Why a pass failed (a constant that could not be evaluated, or a broken invariant).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PassError {
    /// Evaluating a node with constant inputs failed.
    #[error("pass `{pass}`: node `{node}` ({op_type}): {reason}")]
    Eval {
        /// Pass name.
        pass: &'static str,
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// The evaluation error.
        reason: String,
    },
    /// The graph failed verification after the pass.
    #[error("after pass `{pass}`: {source}")]
    Verify {
        /// Pass name.
        pass: &'static str,
        /// The broken invariant.
        source: GraphError,
    },
}

/// Runs every pass in order (fold, identities, dead code, MatMul fusion, Conv
/// fusion, elementwise fusion, dead code, layouts), verifying the graph after each. Returns `(pass, rewrites)` pairs.
pub fn optimize(g: &mut Graph) -> Result<Vec<(&'static str, usize)>, PassError> {
    type PassFn = fn(&mut Graph) -> Result<usize, PassError>;
    let pipeline: [(&'static str, PassFn); 8] = [
        ("fold-constants", fold_constants),
        ("remove-identities", |g| Ok(remove_identities(g))),
        ("remove-dead-code", |g| Ok(remove_dead_code(g))),
        ("fuse-matmul", |g| Ok(fuse_matmul(g))),
        ("fuse-conv", |g| Ok(fuse_conv(g))),
        ("fuse-elementwise", |g| Ok(fuse_elementwise(g))),
        ("remove-dead-code", |g| Ok(remove_dead_code(g))),
        ("choose-layouts", |g| Ok(choose_layouts(g))),
    ];
    let mut report = vec![];
    for (name, pass) in pipeline {
        let n = pass(g)?;
        g.verify().map_err(|source| PassError::Verify { pass: name, source })?;
        report.push((name, n));
    }
    Ok(report)
}

/// Keeps the nodes with `keep[i]` and the values still referenced (by a kept node, a
/// graph input or output), renumbering both and fixing producers.
pub(crate) fn compact(g: &mut Graph, keep: &[bool]) {
    let nodes = std::mem::take(&mut g.nodes);
    let mut used = vec![false; g.values.len()];
    for &i in g.inputs.iter().chain(&g.outputs) {
        used[i.0 as usize] = true;
    }
    let kept: Vec<_> = nodes.into_iter().zip(keep).filter(|(_, &k)| k).map(|(n, _)| n).collect();
    for n in &kept {
        for &v in n.inputs.iter().chain(&n.outputs) {
            used[v.0 as usize] = true;
        }
    }
    let mut remap = vec![None; g.values.len()];
    let mut values = Vec::with_capacity(g.values.len());
    for (i, v) in std::mem::take(&mut g.values).into_iter().enumerate() {
        if used[i] {
            remap[i] = Some(ValueId(values.len() as u32));
            values.push(v);
        }
    }
    let map = |v: ValueId| remap[v.0 as usize].expect("referenced values are kept");
    g.values = values;
    for v in &mut g.values {
        v.producer = None;
    }
    g.nodes = kept;
    for (k, n) in g.nodes.iter_mut().enumerate() {
        for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
            *v = map(*v);
        }
        for &o in &n.outputs {
            g.values[o.0 as usize].producer = Some(NodeId(k as u32));
        }
    }
    g.inputs = g.inputs.iter().map(|&v| map(v)).collect();
    g.outputs = g.outputs.iter().map(|&v| map(v)).collect();
}

#[cfg(test)]
mod tests;
