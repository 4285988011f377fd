//! The graph IR: typed ops with static shapes, values as edges, weights as constants.
//!
//! A [`Graph`] is a list of [`Value`]s (the edges, indexed by [`ValueId`]) and a list
//! of [`Node`]s (indexed by [`NodeId`]) kept in a topological order: a node only reads
//! values that are graph inputs, constants, or outputs of earlier nodes. Every value
//! has a static [`TensorType`] (element type and shape); weights, initializers and
//! everything the importer could compute ahead of time carry their data in
//! [`Value::constant`]. Each node keeps the name and ONNX `op_type` of the node it came
//! from, for error messages and per-op reports, and an [`Op`] whose attributes and
//! shape arguments are fully resolved (no shape is computed at run time).
//!
//! The importer ([`crate::onnx`]) builds graphs, [`infer`] gives each op's output
//! types, [`crate::interp`] runs them on the host and [`crate::passes`] rewrites them.
//! [`Graph::verify`] checks the invariants above; every pass keeps them.
//!
//! ```
//! use trainyard_compiler::graph::{DataType, Graph, Op, TensorType, Unary};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.add_input("x", TensorType::new(DataType::F32, vec![2, 3]));
//! let y = g.add_node("relu0", "Relu", Op::Unary(Unary::Relu), vec![x])?;
//! g.outputs.push(y[0]);
//! g.verify()?;
//! assert_eq!(g.value(y[0]).ty, TensorType::new(DataType::F32, vec![2, 3]));
//! # Ok::<(), trainyard_compiler::graph::GraphError>(())
//! ```

mod dtype;
pub mod infer;
pub(crate) mod infer_attention;
pub(crate) mod infer_quant;
mod op;
mod tensor;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

pub use dtype::{onnx_type_name, DataType};
pub use op::*;
pub use tensor::{checked_numel, float_to_int, numel, strides_of, Data, Tensor};

/// Index of a value in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Index of a node in [`Graph::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Element type and static shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DataType,
    /// Shape, outermost first (`[]` is a scalar).
    pub shape: Vec<usize>,
}

impl TensorType {
    /// A type from parts.
    pub fn new(dtype: DataType, shape: Vec<usize>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// An edge of the graph: a tensor with a static type.
#[derive(Clone, Debug)]
pub struct Value {
    /// The ONNX name (unique in the graph).
    pub name: String,
    /// Element type and shape.
    pub ty: TensorType,
    /// The data, when known before run time (weights, folded constants).
    pub constant: Option<Arc<Tensor>>,
    /// The node computing it; `None` for graph inputs and constants.
    pub producer: Option<NodeId>,
    /// The axis a lowering should map to SBUF partitions, chosen by
    /// [`crate::passes::choose_layouts`]; `None` until then.
    pub partition_axis: Option<usize>,
}

/// An operation applied to values.
#[derive(Clone, Debug)]
pub struct Node {
    /// The ONNX node name (or a generated `op_type#index` when the model gave none).
    pub name: String,
    /// The ONNX `op_type` it came from (fused nodes: e.g. `MatMul+Add+Relu`).
    pub op_type: String,
    /// The operation with resolved attributes.
    pub op: Op,
    /// Inputs (data inputs only; shape arguments are inside `op`).
    pub inputs: Vec<ValueId>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
}

/// Why a graph could not be built or failed verification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// An op cannot take inputs of these types (shape mismatch, wrong dtype, bad rank).
    #[error("node `{node}` ({op_type}): {reason}")]
    Type {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// What is wrong, with the shapes and types involved.
        reason: String,
    },
    /// A graph invariant does not hold.
    #[error("graph `{graph}` is malformed: {reason}")]
    Invalid {
        /// Graph name.
        graph: String,
        /// The invariant and where it fails.
        reason: String,
    },
}

/// A dataflow graph with static types, nodes in topological order.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Every value; indexed by [`ValueId`].
    pub values: Vec<Value>,
    /// Nodes in a topological order; indexed by [`NodeId`].
    pub nodes: Vec<Node>,
    /// Values bound by the caller at run time.
    pub inputs: Vec<ValueId>,
    /// Values returned to the caller.
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), values: vec![], nodes: vec![], inputs: vec![], outputs: vec![] }
    }

    /// The value `id`. Ids come from this graph, so they are in range.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    /// The value `id`, mutably.
    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.0 as usize]
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// Adds a value without producer.
    pub fn add_value(&mut self, name: &str, ty: TensorType, constant: Option<Arc<Tensor>>) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name: name.to_string(), ty, constant, producer: None, partition_axis: None });
        id
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name, ty, None);
        self.inputs.push(id);
        id
    }

    /// Adds a constant value.
    pub fn add_constant(&mut self, name: &str, t: Tensor) -> ValueId {
        let ty = TensorType::new(t.dtype(), t.shape().to_vec());
        self.add_value(name, ty, Some(Arc::new(t)))
    }

    /// Appends a node whose output types come from [`infer::output_types`]; its outputs
    /// are named `name:i`. Returns the output ids.
    pub fn add_node(
        &mut self,
        name: &str,
        op_type: &str,
        op: Op,
        inputs: Vec<ValueId>,
    ) -> Result<Vec<ValueId>, GraphError> {
        let tys: Vec<TensorType> = inputs.iter().map(|&i| self.value(i).ty.clone()).collect();
        let out = infer::output_types(&op, &tys).map_err(|reason| GraphError::Type {
            node: name.to_string(),
            op_type: op_type.to_string(),
            reason,
        })?;
        let names: Vec<String> = (0..out.len()).map(|i| format!("{name}:{i}")).collect();
        Ok(self.push_node(name, op_type, op, inputs, names, out))
    }

    /// Appends a node with given output names and types (already inferred).
    pub fn push_node(
        &mut self,
        name: &str,
        op_type: &str,
        op: Op,
        inputs: Vec<ValueId>,
        output_names: Vec<String>,
        output_types: Vec<TensorType>,
    ) -> Vec<ValueId> {
        let nid = NodeId(self.nodes.len() as u32);
        let outputs: Vec<ValueId> = output_names
            .iter()
            .zip(output_types)
            .map(|(n, t)| {
                let v = self.add_value(n, t, None);
                self.value_mut(v).producer = Some(nid);
                v
            })
            .collect();
        self.nodes.push(Node {
            name: name.to_string(),
            op_type: op_type.to_string(),
            op,
            inputs,
            outputs: outputs.clone(),
        });
        outputs
    }

    /// How many nodes and graph outputs read each value.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0usize; self.values.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                uses[i.0 as usize] += 1;
            }
        }
        for &o in &self.outputs {
            uses[o.0 as usize] += 1;
        }
        uses
    }

    /// Checks the IR invariants:
    /// 1. every id is in range; value names are unique;
    /// 2. nodes are in topological order: each input is a graph input, a constant or
    ///    an output of an earlier node; each value has at most one producer, and
    ///    `Value::producer` agrees;
    /// 3. graph inputs have no data and no producer;
    /// 4. each node's output types are what [`infer::output_types`] gives for its inputs;
    /// 5. constants' data matches their type.
    pub fn verify(&self) -> Result<(), GraphError> {
        let bad = |reason: String| GraphError::Invalid { graph: self.name.clone(), reason };
        let nv = self.values.len();
        let in_range = |v: ValueId| (v.0 as usize) < nv;
        let mut names = HashSet::new();
        for v in &self.values {
            if !names.insert(v.name.as_str()) {
                return Err(bad(format!("two values are named `{}`", v.name)));
            }
            if let Some(c) = &v.constant {
                if c.dtype() != v.ty.dtype || c.shape() != v.ty.shape.as_slice() {
                    return Err(bad(format!("constant `{}` holds {:?} but its type is {}", v.name, c, v.ty)));
                }
            }
        }
        let mut defined = vec![false; nv];
        for &i in &self.inputs {
            if !in_range(i) {
                return Err(bad(format!("graph input {i} is not a value")));
            }
            let v = self.value(i);
            if v.constant.is_some() || v.producer.is_some() {
                return Err(bad(format!("graph input `{}` has data or a producer", v.name)));
            }
            defined[i.0 as usize] = true;
        }
        for (k, v) in self.values.iter().enumerate() {
            if v.constant.is_some() {
                defined[k] = true;
            }
        }
        for (k, n) in self.nodes.iter().enumerate() {
            for &i in &n.inputs {
                if !in_range(i) || !defined[i.0 as usize] {
                    return Err(bad(format!("node `{}` reads {i}, which is not defined before it", n.name)));
                }
            }
            let tys: Vec<TensorType> = n.inputs.iter().map(|&i| self.value(i).ty.clone()).collect();
            let expect = infer::output_types(&n.op, &tys).map_err(|reason| GraphError::Type {
                node: n.name.clone(),
                op_type: n.op_type.clone(),
                reason,
            })?;
            if expect.len() != n.outputs.len() {
                return Err(bad(format!(
                    "node `{}` has {} outputs, its op gives {}",
                    n.name,
                    n.outputs.len(),
                    expect.len()
                )));
            }
            for (&o, t) in n.outputs.iter().zip(&expect) {
                if !in_range(o) || defined[o.0 as usize] {
                    return Err(bad(format!("node `{}` writes {o}, which is already defined", n.name)));
                }
                let v = self.value(o);
                if v.producer != Some(NodeId(k as u32)) {
                    return Err(bad(format!("value `{}` does not name node `{}` as its producer", v.name, n.name)));
                }
                if &v.ty != t {
                    return Err(bad(format!(
                        "node `{}` output `{}` is typed {} but computes {t}",
                        n.name, v.name, v.ty
                    )));
                }
                defined[o.0 as usize] = true;
            }
        }
        for &o in &self.outputs {
            if !in_range(o) || !defined[o.0 as usize] {
                return Err(bad(format!("graph output {o} is never defined")));
            }
        }
        Ok(())
    }

    /// Bytes of constant data (weights and folded values), as stored in ONNX.
    pub fn constant_bytes(&self) -> usize {
        self.values.iter().filter_map(|v| v.constant.as_ref()).map(|c| c.len() * c.dtype().size()).sum()
    }

    /// Number of nodes per op type, sorted by name (for reports).
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for n in &self.nodes {
            *m.entry(n.op_type.clone()).or_insert(0usize) += 1;
        }
        m.into_iter().collect()
    }
}

/// The text form: one line per input, constant and node, with types and (after the
/// layout pass) partition axes, e.g.
/// `n3 conv0: Conv(x, w, b) -> c float32[1, 64, 112, 112] p1`.
impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |v: ValueId| &self.value(v).name;
        let ty = |v: ValueId| {
            let val = self.value(v);
            match val.partition_axis {
                Some(p) => format!("{} p{p}", val.ty),
                None => val.ty.to_string(),
            }
        };
        writeln!(f, "graph {} ({} nodes, {} bytes of constants)", self.name, self.nodes.len(), self.constant_bytes())?;
        for &i in &self.inputs {
            writeln!(f, "  input {}: {}", name(i), ty(i))?;
        }
        for (k, v) in self.values.iter().enumerate() {
            if v.constant.is_some() && self.nodes.iter().any(|n| n.inputs.contains(&ValueId(k as u32))) {
                writeln!(f, "  const {}: {}", v.name, ty(ValueId(k as u32)))?;
            }
        }
        for (k, n) in self.nodes.iter().enumerate() {
            let ins: Vec<&str> = n.inputs.iter().map(|&i| name(i).as_str()).collect();
            let outs: Vec<String> = n.outputs.iter().map(|&o| format!("{} {}", name(o), ty(o))).collect();
            writeln!(f, "  n{k} {}: {}({}) -> {}", n.name, n.op_type, ins.join(", "), outs.join(", "))?;
        }
        let outs: Vec<&str> = self.outputs.iter().map(|&o| name(o).as_str()).collect();
        writeln!(f, "  outputs: {}", outs.join(", "))
    }
}
