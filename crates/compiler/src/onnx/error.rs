//! Why an ONNX model could not be imported. Every message names what is at fault:
//! the file, the node (name, op type and opset), the attribute, input or tensor.

/// An ONNX model that could not be read, decoded or translated to the graph IR.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The bytes are not a valid protobuf of the expected message (truncated, corrupt,
    /// wrong wire type).
    #[error("{what}: not a valid ONNX {message} (truncated or corrupt protobuf): {reason}")]
    Decode {
        /// The file or data decoded.
        what: String,
        /// The protobuf message expected (`ModelProto`, `TensorProto`).
        message: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A model without a graph, or with model-local functions.
    #[error("{what}: {reason}")]
    Model {
        /// The file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The model imports an opset version the importer does not know.
    #[error("model imports opset {version} of domain `{domain}`; supported: {supported}")]
    Opset {
        /// Domain (`ai.onnx` for the default domain).
        domain: String,
        /// Version imported.
        version: i64,
        /// The supported versions.
        supported: String,
    },
    /// An op type (or an op version) the importer does not support.
    #[error("node `{node}`: unsupported op {op_type} (domain `{domain}`, opset {opset})")]
    UnsupportedOp {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Domain.
        domain: String,
        /// Opset version of the domain.
        opset: i64,
    },
    /// A supported op used with an attribute value, mode or type the importer does not support.
    #[error("node `{node}` ({op_type}, opset {opset}): unsupported: {what}")]
    UnsupportedFeature {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Opset version.
        opset: i64,
        /// The unsupported feature.
        what: String,
    },
    /// A graph input of a type the compiler does not handle (strings, sequences, fp8, ...).
    #[error("graph input `{name}`: unsupported type {what}")]
    UnsupportedType {
        /// Input name.
        name: String,
        /// The type.
        what: String,
    },
    /// A malformed attribute.
    #[error("node `{node}` ({op_type}, opset {opset}): attribute `{attr}`: {reason}")]
    Attribute {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Opset version.
        opset: i64,
        /// Attribute name.
        attr: String,
        /// What is wrong.
        reason: String,
    },
    /// A required node input is absent.
    #[error("node `{node}` ({op_type}, opset {opset}): missing required input {index} ({what})")]
    MissingInput {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Opset version.
        opset: i64,
        /// Input position.
        index: usize,
        /// The input's role.
        what: String,
    },
    /// A node reads a value that no node, graph input or initializer defines.
    #[error("node `{node}` ({op_type}) reads `{value}`, which no node, graph input or initializer defines")]
    Undefined {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// The value name.
        value: String,
    },
    /// Two producers for one value name.
    #[error("value `{value}` is defined twice (by {first} and by {second})")]
    Duplicate {
        /// The value name.
        value: String,
        /// First definition.
        first: String,
        /// Second definition.
        second: String,
    },
    /// The nodes form a cycle.
    #[error("the graph has a cycle through nodes {}", nodes.join(" -> "))]
    Cycle {
        /// Names of the nodes on the cycle.
        nodes: Vec<String>,
    },
    /// A tensor (initializer, attribute, test data) is malformed.
    #[error("tensor `{tensor}`: {reason}")]
    Tensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A graph input or output whose type cannot be used.
    #[error("graph {kind} `{name}`: {reason}")]
    Interface {
        /// `input` or `output`.
        kind: &'static str,
        /// Value name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A shape argument (Reshape's shape, Slice's starts, ...) that is not known before run time.
    #[error(
        "node `{node}` ({op_type}, opset {opset}): input `{input}` decides the output shape but is not known \
         before run time (bind graph input `{input}` to a value, or make it an initializer)"
    )]
    NeedsValue {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Opset version.
        opset: i64,
        /// The input's value name.
        input: String,
    },
    /// Inputs of the wrong types or shapes for the op.
    #[error("node `{node}` ({op_type}, opset {opset}): {reason}")]
    Type {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// Opset version.
        opset: i64,
        /// The mismatch, with the shapes and types involved.
        reason: String,
    },
}

impl OnnxError {
    /// True when the error means "this model uses something not implemented" rather
    /// than "this model is broken" (conformance reports count these as unsupported).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            OnnxError::UnsupportedOp { .. }
                | OnnxError::UnsupportedFeature { .. }
                | OnnxError::UnsupportedType { .. }
                | OnnxError::Opset { .. }
        )
    }
}
