//! Building ONNX models in code: for tests, tools and small generated models.
//!
//! ```
//! use trainyard_compiler::graph::DataType;
//! use trainyard_compiler::onnx::builder::{attr_int, ModelBuilder};
//! use trainyard_compiler::onnx::{ImportOptions, Model};
//!
//! let bytes = ModelBuilder::new(17)
//!     .input("x", DataType::F32, &[2, 3])
//!     .node("Softmax", "sm", &["x"], &["y"], vec![attr_int("axis", 1)])
//!     .output("y", DataType::F32, &[2, 3])
//!     .encode();
//! let graph = Model::decode(&bytes, "built", None)?.import(&ImportOptions::default())?;
//! assert_eq!(graph.nodes.len(), 1);
//! # Ok::<(), trainyard_compiler::onnx::OnnxError>(())
//! ```

use prost::Message;

use super::proto::{
    attr_type, AttributeProto, DimValue, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use super::tensor_to_proto;
use crate::graph::{DataType, Tensor};

/// A model under construction (one graph, default-domain opset).
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    /// The model so far.
    pub proto: ModelProto,
}

fn value_info(name: &str, dtype: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d >= 0 { DimValue::DimValue(d) } else { DimValue::DimParam(format!("d{}", -d)) }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: dtype.onnx_code(), shape: Some(TensorShapeProto { dim }) }),
            ..Default::default()
        }),
    }
}

impl ModelBuilder {
    /// An empty model importing default-domain opset `opset`.
    pub fn new(opset: i64) -> ModelBuilder {
        ModelBuilder {
            proto: ModelProto {
                ir_version: 8,
                opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
                producer_name: "trainyard".into(),
                graph: Some(GraphProto { name: "built".into(), ..Default::default() }),
                ..Default::default()
            },
        }
    }

    fn graph(&mut self) -> &mut GraphProto {
        self.proto.graph.get_or_insert_with(GraphProto::default)
    }

    /// Adds a graph input; negative dims are symbolic (`-1` is `d1`).
    pub fn input(mut self, name: &str, dtype: DataType, dims: &[i64]) -> Self {
        self.graph().input.push(value_info(name, dtype, dims));
        self
    }

    /// Adds a graph output.
    pub fn output(mut self, name: &str, dtype: DataType, dims: &[i64]) -> Self {
        self.graph().output.push(value_info(name, dtype, dims));
        self
    }

    /// Adds an initializer.
    pub fn initializer(mut self, name: &str, t: &Tensor) -> Self {
        self.graph().initializer.push(tensor_to_proto(name, t));
        self
    }

    /// Adds a node.
    pub fn node(
        mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Self {
        self.graph().node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: name.to_string(),
            op_type: op_type.to_string(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// The serialized model.
    pub fn encode(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::INT, i: v, ..Default::default() }
}

/// A float attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::FLOAT, f: v, ..Default::default() }
}

/// An integer list attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::INTS, ints: v.to_vec(), ..Default::default() }
}

/// A string attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::STRING, s: v.as_bytes().to_vec(), ..Default::default() }
}

/// A tensor attribute.
pub fn attr_tensor(name: &str, t: &Tensor) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::TENSOR,
        t: Some(tensor_to_proto("", t)),
        ..Default::default()
    }
}
