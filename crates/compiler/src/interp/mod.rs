//! The reference interpreter: runs a [`Graph`] on the host.
//!
//! Floats are computed in `f64` and rounded to the value's element type on every
//! store (so float16/bfloat16/float32 results are what one rounding of the exact
//! result gives); integers are exact and wrap like C casts; matrix products and
//! convolutions use the `gemm` crate in `f64`. It is the oracle for every device test.
//!
//! ```
//! use std::collections::HashMap;
//! use trainyard_compiler::graph::{Binary, DataType, Graph, Op, Tensor, TensorType};
//! use trainyard_compiler::interp;
//!
//! let mut g = Graph::new("add");
//! let ty = TensorType::new(DataType::F32, vec![2]);
//! let (a, b) = (g.add_input("a", ty.clone()), g.add_input("b", ty));
//! let y = g.add_node("add0", "Add", Op::Binary(Binary::Add), vec![a, b])?;
//! g.outputs.push(y[0]);
//! let inputs = HashMap::from([
//!     ("a".to_string(), Tensor::from_f32(vec![2], &[1.0, 2.0])?),
//!     ("b".to_string(), Tensor::from_f32(vec![2], &[0.5, 0.25])?),
//! ]);
//! let out = interp::run(&g, &inputs)?;
//! assert_eq!(out[0].1.to_f32_vec(), vec![1.5, 2.25]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attention;
mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quant;
mod scatter;

use std::collections::HashMap;
use std::sync::Arc;

use crate::graph::{Graph, Op, Tensor, TensorType};

/// Why a graph could not be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// A graph input was not bound.
    #[error("graph input `{name}` ({ty}) is not bound")]
    MissingInput {
        /// Input name.
        name: String,
        /// Its type.
        ty: TensorType,
    },
    /// A binding names no graph input.
    #[error("`{name}` is not an input of the graph (inputs: {inputs})")]
    UnknownInput {
        /// The name bound.
        name: String,
        /// The graph's inputs.
        inputs: String,
    },
    /// A bound tensor's type differs from the input's.
    #[error("graph input `{name}` is {expected}, the bound tensor is {dtype}{shape:?}")]
    InputType {
        /// Input name.
        name: String,
        /// The input's type.
        expected: TensorType,
        /// The bound element type.
        dtype: crate::graph::DataType,
        /// The bound shape.
        shape: Vec<usize>,
    },
    /// The graph breaks an IR invariant (see [`Graph::verify`]).
    #[error("{0}")]
    Invalid(#[from] crate::graph::GraphError),
    /// An op failed on its values (e.g. an index out of range).
    #[error("node `{node}` ({op_type}): {reason}")]
    Node {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// What went wrong.
        reason: String,
    },
}

/// Evaluates one op on host tensors whose types the op accepts; `out` are the output
/// types [`crate::graph::infer::output_types`] gives. Errors describe bad values.
pub fn eval(op: &Op, inputs: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    let x = inputs.first().copied().ok_or("no input")?;
    let o = out.first().ok_or("no output type")?;
    let one = |t: Result<Tensor, String>| t.map(|t| vec![t]);
    match op {
        Op::Unary(u) => one(elementwise::unary(u, x, o)),
        Op::Binary(b) => one(elementwise::binary(*b, x, inputs.get(1).ok_or("missing operand")?, o)),
        Op::Where => one(elementwise::where_(inputs, o)),
        Op::Cast { saturate, .. } => one(elementwise::cast(x, *saturate, o)),
        Op::FusedElementwise(steps) => one(elementwise::fused(steps, inputs, o)),
        Op::Attention(a) => attention::attention(a, inputs, out),
        Op::QuantizeLinear { axis, block, saturate, precision, .. } => {
            one(quant::quantize(inputs, *axis, *block, *saturate, *precision, o))
        }
        Op::DequantizeLinear { axis, block, .. } => one(quant::dequantize(inputs, *axis, *block, o)),
        Op::Einsum { inputs: terms, output } => one(quant::einsum(terms, output, inputs, o)),
        Op::BitCast(_) => one(quant::bit_cast(x, o)),
        Op::RotaryEmbedding { interleaved, num_heads, rotary_dim, .. } => {
            one(attention::rotary(inputs, *interleaved, *num_heads, *rotary_dim, o))
        }
        Op::ScatterElements { axis, reduction } => one(scatter::scatter_elements(inputs, *axis, *reduction, o)),
        Op::ScatterNd { reduction } => one(scatter::scatter_nd(inputs, *reduction, o)),
        Op::ReverseSequence { batch_axis, time_axis } => {
            one(scatter::reverse_sequence(inputs, *batch_axis, *time_axis, o))
        }
        Op::Loss { softmax, reduction, ignore_index, .. } => {
            scatter::loss(inputs, *softmax, *reduction, *ignore_index, out)
        }
        Op::MatMul => one(linalg::matmul(x, inputs.get(1).ok_or("missing B")?, None, None, o)),
        Op::FusedMatMul { activation } => {
            one(linalg::matmul(x, inputs.get(1).ok_or("missing B")?, inputs.get(2).copied(), activation.as_ref(), o))
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => one(linalg::gemm(inputs, *alpha, *beta, *trans_a, *trans_b, o)),
        Op::Conv(c) => one(linalg::conv(c, inputs, o)),
        Op::ConvTranspose(c) => one(linalg::conv_transpose(c, inputs, o)),
        Op::Pool(p) => nn::pool(p, x, out),
        Op::GlobalPool(kind) => one(nn::global_pool(*kind, x, o)),
        Op::BatchNorm { epsilon, momentum } => nn::batch_norm(inputs, *epsilon, *momentum, out),
        Op::LayerNorm { axis, epsilon, .. } => nn::layer_norm(inputs, *axis, *epsilon, false, out),
        Op::RmsNorm { axis, epsilon } => nn::layer_norm(inputs, *axis, *epsilon, true, out),
        Op::InstanceNorm { epsilon } => one(nn::group_norm(inputs, None, *epsilon, o)),
        Op::GroupNorm { groups, epsilon } => one(nn::group_norm(inputs, Some(*groups), *epsilon, o)),
        Op::Lrn { size, alpha, beta, bias } => one(nn::lrn(x, *size, *alpha, *beta, *bias, o)),
        Op::LpNorm { axis, p } => one(nn::lp_norm(x, *axis, *p, o)),
        Op::MeanVarianceNorm { axes } => one(nn::mean_variance_norm(x, axes, o)),
        Op::Softmax { kind, axis, coerce_2d } => one(nn::softmax(*kind, x, *axis, *coerce_2d, o)),
        Op::Reduce { kind, axes, .. } => one(nn::reduce(*kind, x, axes, o)),
        Op::ArgReduce { max, axis, last_index, .. } => one(nn::arg_reduce(x, *max, *axis, *last_index, o)),
        Op::CumSum { product, axis, exclusive, reverse } => {
            one(nn::cum_sum(x, *product, *axis, *exclusive, *reverse, o))
        }
        Op::TopK { axis, k, largest } => nn::top_k(x, *axis, *k, *largest, out),
        Op::Reshape { .. } | Op::Identity => one(x.clone().reshaped(o.shape.clone())),
        Op::Transpose { perm } => one(movement::transpose(x, perm, o)),
        Op::Concat { axis } => one(movement::concat(inputs, *axis, o)),
        Op::Split { axis, .. } => movement::split(x, *axis, out),
        Op::Slice { axes } => one(movement::slice(x, axes, o)),
        Op::Gather { axis } => one(movement::gather(x, inputs.get(1).ok_or("missing indices")?, *axis, o)),
        Op::GatherElements { axis } => {
            one(movement::gather_elements(x, inputs.get(1).ok_or("missing indices")?, *axis, o))
        }
        Op::GatherNd { batch_dims } => {
            one(movement::gather_nd(x, inputs.get(1).ok_or("missing indices")?, *batch_dims, o))
        }
        Op::Expand { .. } => one(movement::broadcast_to(x, o)),
        Op::Tile { .. } => one(movement::tile(x, o)),
        Op::Pad { mode, pads, value } => one(movement::pad(x, *mode, pads, *value, o)),
        Op::Resize(r) => one(movement::resize(x, r, o)),
        Op::DepthToSpace { block, crd } => one(movement::depth_to_space(x, *block, *crd, o)),
        Op::SpaceToDepth { block } => one(movement::space_to_depth(x, *block, o)),
        Op::Trilu { upper, k } => one(movement::trilu(x, *upper, *k, o)),
        Op::OneHot { axis, depth, off, on, .. } => one(movement::one_hot(x, *axis, *depth, *off, *on, o)),
    }
}

/// The taps of `Resize` `r` along `axis` (input length `in_len`, output `out_len`): for
/// each output index, the input indices and weights it sums, or `None` where
/// `tf_crop_and_resize` extrapolates. Lowerings use it to resize exactly as here.
pub fn resize_taps(
    r: &crate::graph::Resize,
    axis: usize,
    in_len: usize,
    out_len: usize,
) -> Vec<Option<Vec<(usize, f64)>>> {
    let identity = in_len == out_len
        && r.scales.get(axis) == Some(&1.0)
        && r.coordinate != crate::graph::CoordinateMode::TfCropAndResize;
    if identity {
        return (0..out_len).map(|i| Some(vec![(i, 1.0)])).collect();
    }
    movement::axis_taps(r, axis, in_len, out_len)
}

/// Runs `graph` with its inputs bound by name; returns every graph output by name.
///
/// The graph is verified first, so a hand-built graph with inconsistent types is an
/// error rather than a panic.
pub fn run(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, InterpError> {
    graph.verify()?;
    let mut env: Vec<Option<Arc<Tensor>>> = graph.values.iter().map(|v| v.constant.clone()).collect();
    for name in inputs.keys() {
        if !graph.inputs.iter().any(|&i| &graph.value(i).name == name) {
            let names: Vec<&str> = graph.inputs.iter().map(|&i| graph.value(i).name.as_str()).collect();
            return Err(InterpError::UnknownInput { name: name.clone(), inputs: names.join(", ") });
        }
    }
    for &i in &graph.inputs {
        let v = graph.value(i);
        let t =
            inputs.get(&v.name).ok_or_else(|| InterpError::MissingInput { name: v.name.clone(), ty: v.ty.clone() })?;
        if t.dtype() != v.ty.dtype || t.shape() != v.ty.shape.as_slice() {
            return Err(InterpError::InputType {
                name: v.name.clone(),
                expected: v.ty.clone(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
            });
        }
        env[i.0 as usize] = Some(Arc::new(t.clone()));
    }
    // Free each value after its last reader, so big models fit in memory.
    let mut last_use = vec![usize::MAX; graph.values.len()];
    for (k, n) in graph.nodes.iter().enumerate() {
        for &i in &n.inputs {
            last_use[i.0 as usize] = k;
        }
    }
    for &o in &graph.outputs {
        last_use[o.0 as usize] = usize::MAX;
    }
    for (k, node) in graph.nodes.iter().enumerate() {
        let fail =
            |reason: String| InterpError::Node { node: node.name.clone(), op_type: node.op_type.clone(), reason };
        if node.outputs.iter().all(|o| env[o.0 as usize].is_some()) {
            continue;
        }
        let args: Vec<Arc<Tensor>> = node
            .inputs
            .iter()
            .map(|i| env[i.0 as usize].clone().ok_or_else(|| fail(format!("input {i} has no value"))))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor> = args.iter().map(|a| a.as_ref()).collect();
        let tys: Vec<TensorType> = node.outputs.iter().map(|&o| graph.value(o).ty.clone()).collect();
        let results = eval(&node.op, &refs, &tys).map_err(fail)?;
        for (&o, t) in node.outputs.iter().zip(results) {
            env[o.0 as usize] = Some(Arc::new(t));
        }
        drop(args);
        for &i in &node.inputs {
            if last_use[i.0 as usize] == k && graph.value(i).constant.is_none() {
                env[i.0 as usize] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|&o| {
            let v = graph.value(o);
            let t = env[o.0 as usize].as_ref().ok_or_else(|| InterpError::Node {
                node: "<graph>".into(),
                op_type: "output".into(),
                reason: format!("output `{}` was never computed", v.name),
            })?;
            Ok((v.name.clone(), t.as_ref().clone()))
        })
        .collect()
}
