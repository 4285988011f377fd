//! ModelProto → Graph: value resolution, topological order, op parsing, inference.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::ctx::{Ctx, InInfo, Parsed};
use super::proto::{DimValue, GraphProto, NodeProto, ValueInfoProto};
use super::tensor::tensor_from_proto;
use super::{ops, ImportOptions, InputInfo, Model, OnnxError, MAX_OPSET, MIN_OPSET};
use crate::graph::{infer, DataType, Graph, Tensor, TensorType, ValueId};

/// Nodes whose inputs are all known and whose outputs have at most this many elements
/// are evaluated during import, so shape arguments computed from shapes resolve.
const EVAL_LIMIT: usize = 1 << 16;

/// The main graph (`Model::decode` refuses models without one; a hand-made `Model`
/// may still lack it, which reads as an empty graph and fails on its outputs).
fn graph_of(model: &Model) -> &GraphProto {
    static EMPTY: std::sync::OnceLock<GraphProto> = std::sync::OnceLock::new();
    model.proto.graph.as_ref().unwrap_or_else(|| EMPTY.get_or_init(GraphProto::default))
}

fn io_err(kind: &'static str, name: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Interface { kind, name: name.to_string(), reason: reason.into() }
}

fn declared(vi: &ValueInfoProto) -> InputInfo {
    let mut info = InputInfo { name: vi.name.clone(), dtype: Err("no type".into()), dims: vec![], symbols: vec![] };
    let Some(ty) = &vi.r#type else { return info };
    let Some(tt) = &ty.tensor_type else {
        let kind = if ty.sequence_type.is_some() {
            "a sequence"
        } else if ty.optional_type.is_some() {
            "an optional"
        } else if ty.map_type.is_some() {
            "a map"
        } else if ty.sparse_tensor_type.is_some() {
            "a sparse tensor"
        } else {
            "not a tensor"
        };
        info.dtype = Err(kind.to_string());
        return info;
    };
    info.dtype = DataType::from_onnx(tt.elem_type);
    if let Some(shape) = &tt.shape {
        for d in &shape.dim {
            match &d.value {
                Some(DimValue::DimValue(v)) if *v >= 0 => {
                    info.dims.push(Some(*v as usize));
                    info.symbols.push(String::new());
                }
                Some(DimValue::DimParam(p)) => {
                    info.dims.push(None);
                    info.symbols.push(p.clone());
                }
                _ => {
                    info.dims.push(None);
                    info.symbols.push(String::new());
                }
            }
        }
    }
    info
}

pub(super) fn runtime_inputs(model: &Model) -> Vec<InputInfo> {
    let g = graph_of(model);
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input.iter().filter(|i| !inits.contains(i.name.as_str())).map(declared).collect()
}

fn check_opsets(model: &Model) -> Result<(), OnnxError> {
    let imports_default = model.proto.opset_import.iter().any(|o| o.domain.is_empty() || o.domain == "ai.onnx");
    let uses_default = graph_of(model).node.iter().any(|n| n.domain.is_empty() || n.domain == "ai.onnx");
    if uses_default && !imports_default {
        return Err(OnnxError::Model {
            what: model.source.clone(),
            reason: "the graph has ai.onnx nodes but the model imports no ai.onnx opset".into(),
        });
    }
    for o in &model.proto.opset_import {
        if (o.domain.is_empty() || o.domain == "ai.onnx") && !(MIN_OPSET..=MAX_OPSET).contains(&o.version) {
            return Err(OnnxError::Opset {
                domain: "ai.onnx".into(),
                version: o.version,
                supported: format!("{MIN_OPSET} to {MAX_OPSET}"),
            });
        }
    }
    Ok(())
}

/// A topological order of the nodes (stable: file order among ready nodes).
fn topo_order(g: &GraphProto, defined: &HashSet<&str>) -> Result<Vec<usize>, OnnxError> {
    let node_name = |i: usize| {
        let n = &g.node[i];
        if n.name.is_empty() {
            format!("{}#{i}", n.op_type)
        } else {
            n.name.clone()
        }
    };
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o.as_str()) {
                return Err(OnnxError::Duplicate {
                    value: o.clone(),
                    first: "a graph input or initializer".into(),
                    second: format!("node `{}`", node_name(i)),
                });
            }
            if let Some(&j) = producer.get(o.as_str()) {
                return Err(OnnxError::Duplicate {
                    value: o.clone(),
                    first: format!("node `{}`", node_name(j)),
                    second: format!("node `{}`", node_name(i)),
                });
            }
            producer.insert(o, i);
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![vec![]; g.node.len()];
    let mut users: Vec<Vec<usize>> = vec![vec![]; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(inp.as_str()) {
                Some(&p) => {
                    deps[i].push(p);
                    users[p].push(i);
                }
                None if defined.contains(inp.as_str()) => {}
                None => {
                    return Err(OnnxError::Undefined {
                        node: node_name(i),
                        op_type: n.op_type.clone(),
                        value: inp.clone(),
                    })
                }
            }
        }
    }
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..g.node.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < g.node.len() {
        // Walk back along unscheduled producers until a node repeats: that is a cycle.
        let start = (0..g.node.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
        let mut path = vec![start];
        let mut at = start;
        while let Some(&next) = deps[at].iter().find(|&&d| waiting[d] > 0) {
            if let Some(pos) = path.iter().position(|&p| p == next) {
                // path[pos..] lists each node before the one it reads from: reverse it
                // into producer → consumer order and close the loop.
                let mut cycle: Vec<String> = path[pos..].iter().rev().map(|&i| node_name(i)).collect();
                cycle.push(cycle[0].clone());
                return Err(OnnxError::Cycle { nodes: cycle });
            }
            path.push(next);
            at = next;
        }
        return Err(OnnxError::Cycle { nodes: path.iter().map(|&i| node_name(i)).collect() });
    }
    Ok(order)
}

pub(super) fn import(model: &Model, opts: &ImportOptions) -> Result<Graph, OnnxError> {
    if model.proto.graph.is_none() {
        return Err(OnnxError::Model { what: model.source.clone(), reason: "the model has no graph".into() });
    }
    check_opsets(model)?;
    let opset = model.opset();
    let g = graph_of(model);
    let base_dir = model.base_dir.as_deref();
    let mut graph = Graph::new(if g.name.is_empty() { "main" } else { &g.name });
    let mut ids: HashMap<String, ValueId> = HashMap::new();
    let mut known: HashMap<ValueId, Arc<Tensor>> = HashMap::new();

    if let Some(s) = g.sparse_initializer.first() {
        let name = s.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
        return Err(OnnxError::Tensor { tensor: name, reason: "sparse initializers are not supported".into() });
    }
    for t in &g.initializer {
        let tensor = tensor_from_proto(t, base_dir)?;
        if ids.contains_key(&t.name) {
            return Err(OnnxError::Duplicate {
                value: t.name.clone(),
                first: "an initializer".into(),
                second: "an initializer".into(),
            });
        }
        let id = graph.add_constant(&t.name, tensor);
        known.insert(id, graph.value(id).constant.clone().expect("just added"));
        ids.insert(t.name.clone(), id);
    }

    let runtime = runtime_inputs(model);
    for name in opts.input_shapes.keys().chain(opts.input_values.keys()) {
        if !runtime.iter().any(|i| &i.name == name) {
            return Err(io_err("input", name, "is not an input of the model (or it has an initializer)"));
        }
    }
    for info in &runtime {
        let dtype = info.dtype.clone().map_err(|what| OnnxError::UnsupportedType { name: info.name.clone(), what })?;
        let shape: Vec<usize> = if let Some(v) = opts.input_values.get(&info.name) {
            v.shape().to_vec()
        } else if let Some(s) = opts.input_shapes.get(&info.name) {
            s.clone()
        } else {
            let mut s = vec![];
            for (d, sym) in info.dims.iter().zip(&info.symbols) {
                s.push(d.ok_or_else(|| {
                    let what = if sym.is_empty() {
                        "an unknown dimension".to_string()
                    } else {
                        format!("symbolic dimension `{sym}`")
                    };
                    io_err("input", &info.name, format!("has {what}: give its shape"))
                })?);
            }
            s
        };
        if crate::graph::checked_numel(&shape).is_none_or(|n| n > crate::graph::infer::MAX_ELEMENTS) {
            return Err(io_err("input", &info.name, format!("shape {shape:?} exceeds the limit of 2^32 elements")));
        }
        // A shape declared without dims (no `shape` field) accepts any shape.
        let declared_shape = !info.dims.is_empty() || graph_input_has_shape(g, &info.name);
        if declared_shape
            && (info.dims.len() != shape.len() || info.dims.iter().zip(&shape).any(|(d, s)| d.is_some_and(|d| d != *s)))
        {
            return Err(io_err(
                "input",
                &info.name,
                format!("declared shape {} does not admit {shape:?}", dims_text(&info.dims)),
            ));
        }
        let id = if let Some(v) = opts.input_values.get(&info.name) {
            if v.dtype() != dtype {
                return Err(io_err("input", &info.name, format!("declared {dtype}, bound to a {} value", v.dtype())));
            }
            let id = graph.add_constant(&info.name, v.clone());
            known.insert(id, graph.value(id).constant.clone().expect("just added"));
            id
        } else {
            graph.add_input(&info.name, TensorType::new(dtype, shape))
        };
        ids.insert(info.name.clone(), id);
    }

    let defined: HashSet<&str> = ids.keys().map(String::as_str).collect();
    let order = topo_order(g, &defined)?;
    for i in order {
        translate_node(model, opset, i, &g.node[i], &mut graph, &mut ids, &mut known)?;
    }

    for o in &g.output {
        let id = *ids
            .get(&o.name)
            .ok_or_else(|| io_err("output", &o.name, "is not computed by any node, input or initializer"))?;
        let decl = declared(o);
        let ty = &graph.value(id).ty;
        if let Ok(dt) = decl.dtype {
            if dt != ty.dtype {
                return Err(io_err("output", &o.name, format!("declared {dt}, computed {ty}")));
            }
        }
        if !decl.dims.is_empty()
            && (decl.dims.len() != ty.rank()
                || decl.dims.iter().zip(&ty.shape).any(|(d, s)| d.is_some_and(|d| d != *s)))
        {
            return Err(io_err("output", &o.name, format!("declared shape {}, computed {ty}", dims_text(&decl.dims))));
        }
        graph.outputs.push(id);
    }
    graph.verify().map_err(|e| OnnxError::Model { what: model.source.clone(), reason: e.to_string() })?;
    Ok(graph)
}

/// `[2, ?, 3]`: declared dimensions, unknown ones as `?`.
fn dims_text(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.map_or("?".to_string(), |d| d.to_string())).collect();
    format!("[{}]", d.join(", "))
}

fn graph_input_has_shape(g: &GraphProto, name: &str) -> bool {
    g.input
        .iter()
        .find(|i| i.name == name)
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| t.tensor_type.as_ref())
        .is_some_and(|t| t.shape.is_some())
}

fn translate_node(
    model: &Model,
    opset: i64,
    index: usize,
    node: &NodeProto,
    graph: &mut Graph,
    ids: &mut HashMap<String, ValueId>,
    known: &mut HashMap<ValueId, Arc<Tensor>>,
) -> Result<(), OnnxError> {
    let name = if node.name.is_empty() { format!("{}#{index}", node.op_type) } else { node.name.clone() };
    let default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
    let unsupported = || {
        let domain_opset = model
            .proto
            .opset_import
            .iter()
            .find(|o| o.domain == node.domain || (default_domain && (o.domain.is_empty() || o.domain == "ai.onnx")))
            .map_or(0, |o| o.version);
        OnnxError::UnsupportedOp {
            node: name.clone(),
            op_type: node.op_type.clone(),
            domain: if default_domain { "ai.onnx".into() } else { node.domain.clone() },
            opset: domain_opset,
        }
    };
    if !default_domain {
        return Err(unsupported());
    }
    let def = ops::lookup(&node.op_type).ok_or_else(unsupported)?;
    let version = *def.versions.iter().rev().find(|&&v| v <= opset).ok_or_else(unsupported)?;

    let mut inputs = Vec::with_capacity(node.input.len());
    for inp in &node.input {
        if inp.is_empty() {
            inputs.push(None);
            continue;
        }
        let id = *ids.get(inp).ok_or_else(|| OnnxError::Undefined {
            node: name.clone(),
            op_type: node.op_type.clone(),
            value: inp.clone(),
        })?;
        inputs.push(Some(InInfo {
            id,
            name: inp.clone(),
            ty: graph.value(id).ty.clone(),
            known: known.get(&id).cloned(),
        }));
    }
    let ctx = Ctx { node, name: &name, version, opset, inputs, base_dir: model.base_dir.as_deref() };
    let out_name = |i: usize| match node.output.get(i) {
        Some(o) if !o.is_empty() => o.clone(),
        _ => format!("{name}:{i}"),
    };
    let add_const = |graph: &mut Graph,
                     ids: &mut HashMap<String, ValueId>,
                     known: &mut HashMap<ValueId, Arc<Tensor>>,
                     i: usize,
                     t: Tensor| {
        let id = graph.add_constant(&out_name(i), t);
        known.insert(id, graph.value(id).constant.clone().expect("just added"));
        ids.insert(out_name(i), id);
    };
    match (def.parse)(&ctx)? {
        Parsed::Constants(ts) => {
            for (i, t) in ts.into_iter().enumerate() {
                add_const(graph, ids, known, i, t);
            }
        }
        Parsed::Op { op, inputs: which, extra } => {
            let mut in_ids = Vec::with_capacity(which.len());
            let mut in_tys = Vec::with_capacity(which.len());
            for &w in &which {
                let info = ctx.req(w, "operand")?;
                in_ids.push(info.id);
                in_tys.push(info.ty.clone());
            }
            let out_tys = infer::output_types(&op, &in_tys).map_err(|reason| ctx.type_err(reason))?;
            let names: Vec<String> = (0..out_tys.len()).map(out_name).collect();
            let values: Option<Vec<Arc<Tensor>>> = in_ids.iter().map(|id| known.get(id).cloned()).collect();
            let small = out_tys.iter().map(TensorType::numel).sum::<usize>() <= EVAL_LIMIT;
            let outs = graph.push_node(&name, &node.op_type, op.clone(), in_ids, names.clone(), out_tys.clone());
            for (n, &id) in names.iter().zip(&outs) {
                ids.insert(n.clone(), id);
            }
            if let (Some(values), true) = (values, small) {
                let refs: Vec<&Tensor> = values.iter().map(|v| v.as_ref()).collect();
                let results = crate::interp::eval(&op, &refs, &out_tys).map_err(|reason| ctx.type_err(reason))?;
                for (&id, t) in outs.iter().zip(results) {
                    known.insert(id, Arc::new(t));
                }
            }
            for (i, t) in extra {
                add_const(graph, ids, known, i, t);
            }
        }
    }
    Ok(())
}
