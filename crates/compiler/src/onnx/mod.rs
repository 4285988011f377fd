//! ONNX import: protobuf decoding (pure Rust, `prost`, messages declared in [`proto`]),
//! initializers inline or in external data files, and translation to the [`crate::graph`] IR
//! with static shapes.
//!
//! Import is two steps: [`Model::load`] / [`Model::decode`] read the protobuf, and
//! [`Model::import`] builds a [`Graph`] for concrete input shapes. Symbolic input
//! dimensions (`batch`, `seq`) must be given in [`ImportOptions::input_shapes`]. Inputs
//! that decide shapes (a `Reshape` shape fed by a graph input, say) can be bound to
//! values with [`ImportOptions::input_values`]: the graph is then specialized to them.
//!
//! Ops are looked up in a registry ([`supported_ops`]) by op type; each entry lists the
//! opset versions where the op's definition changed and parses every one of them.
//! Default-domain opsets [`MIN_OPSET`]..=[`MAX_OPSET`] are accepted. Anything
//! else — an unknown op, domain or opset, a malformed file — is an [`OnnxError`]
//! naming the node, op type, opset, attribute or tensor.
//!
//! `Shape`, `Size`, `Constant`, `ConstantOfShape`, `Range` and `EyeLike` become
//! constants on import (shapes are static); every other node becomes one IR node.

pub mod builder;
pub mod conformance;
mod ctx;
mod error;
mod import;
mod ops;
pub mod proto;
mod tensor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

pub use error::OnnxError;
pub use ops::supported_ops;
pub use tensor::{decode_tensor, encode_tensor, tensor_from_proto, tensor_to_proto};

use crate::graph::{DataType, Graph, Tensor};
use proto::ModelProto;

/// The lowest default-domain opset accepted.
pub const MIN_OPSET: i64 = 1;
/// The highest default-domain opset accepted (the last one `onnx` 1.22 defines).
pub const MAX_OPSET: i64 = 27;

/// A decoded ONNX model, not yet translated.
#[derive(Clone, Debug)]
pub struct Model {
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// Where the model was read from (for messages).
    pub source: String,
    /// The model's directory, for external data.
    pub base_dir: Option<PathBuf>,
}

/// What a graph input declares.
#[derive(Clone, Debug, PartialEq)]
pub struct InputInfo {
    /// Name.
    pub name: String,
    /// Element type, or the ONNX name of an unsupported one.
    pub dtype: Result<DataType, String>,
    /// Dimensions: `Some(n)` fixed, `None` symbolic or unknown.
    pub dims: Vec<Option<usize>>,
    /// Symbol names of the symbolic dimensions (`""` for unnamed ones).
    pub symbols: Vec<String>,
}

/// Options of [`Model::import`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Shapes of graph inputs (required where a dimension is symbolic).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Graph inputs bound to values at compile time (they become constants).
    pub input_values: HashMap<String, Tensor>,
}

impl Model {
    /// Reads and decodes an `.onnx` file.
    pub fn load(path: &Path) -> Result<Model, OnnxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| OnnxError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        Model::decode(&bytes, &path.display().to_string(), path.parent().map(Path::to_path_buf))
    }

    /// Decodes model bytes; `source` names them in errors, `base_dir` is where
    /// external data files are found.
    pub fn decode(bytes: &[u8], source: &str, base_dir: Option<PathBuf>) -> Result<Model, OnnxError> {
        let proto = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
            what: source.to_string(),
            message: "ModelProto",
            reason: e.to_string(),
        })?;
        if proto.graph.is_none() {
            return Err(OnnxError::Model { what: source.to_string(), reason: "the model has no graph".into() });
        }
        Ok(Model { proto, source: source.to_string(), base_dir })
    }

    /// The default-domain opset version the model imports (1 when it imports none).
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(1)
    }

    /// The graph inputs a caller must bind (those without an initializer).
    pub fn inputs(&self) -> Vec<InputInfo> {
        import::runtime_inputs(self)
    }

    /// The op types used by the main graph, with how often each occurs.
    pub fn op_types(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for n in self.proto.graph.iter().flat_map(|g| &g.node) {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            };
            *m.entry(key).or_insert(0usize) += 1;
        }
        m.into_iter().collect()
    }

    /// Translates the model to a [`Graph`] with static shapes.
    pub fn import(&self, opts: &ImportOptions) -> Result<Graph, OnnxError> {
        import::import(self, opts)
    }
}

#[cfg(test)]
mod tests;
