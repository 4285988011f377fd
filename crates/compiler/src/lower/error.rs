//! Why a graph could not be lowered, or a compiled model not bound or read back.

use trainyard_kernels::BuildError;

use crate::passes::PassError;

/// A lowering, binding or read-back failure; every message names the node, op type or
/// tensor at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowerError {
    /// A node the device cannot run (an op, attribute, dtype or shape the lowering
    /// does not implement).
    #[error("node `{node}` ({op_type}) cannot run on the device: {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// What is not supported.
        reason: String,
    },
    /// A graph input or output whose element type the device cannot hold.
    #[error("{what} `{name}` has element type {dtype}, which the device cannot hold")]
    Dtype {
        /// `graph input`, `graph output` or `constant`.
        what: &'static str,
        /// Value name.
        name: String,
        /// ONNX element type name.
        dtype: String,
    },
    /// The tensors do not fit the chip's HBM.
    #[error(
        "HBM overflow at tensor `{tensor}`: the model needs {needed} bytes at its peak ({weights} of weights, {io} \
         of inputs and outputs, {arena} of intermediates), the {chip} has {capacity}"
    )]
    HbmOverflow {
        /// The tensor whose placement crosses the capacity.
        tensor: String,
        /// Peak HBM use, bytes.
        needed: u64,
        /// Weight bytes.
        weights: u64,
        /// Graph input and output bytes.
        io: u64,
        /// Peak bytes of intermediates (the liveness-planned arena).
        arena: u64,
        /// Chip name.
        chip: String,
        /// HBM bytes of the chip.
        capacity: u64,
    },
    /// A kernel could not be emitted for a node (an argument or SBUF limit of the kernel).
    #[error("node `{node}` ({op_type}): kernel {kernel}: {source}")]
    Kernel {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// The kernel or device routine.
        kernel: String,
        /// The builder's error.
        source: Box<BuildError>,
    },
    /// The program failed validation after emission.
    #[error("the lowered program is invalid: {0}")]
    Invalid(Box<BuildError>),
    /// An optimization pass failed.
    #[error(transparent)]
    Pass(#[from] Box<PassError>),
    /// A host tensor does not match a graph input (name, type, shape or values).
    #[error("input `{name}`: {reason}")]
    Binding {
        /// Graph input name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Options out of range (cores, dtype).
    #[error("{0}")]
    Options(String),
}

impl From<BuildError> for LowerError {
    fn from(e: BuildError) -> Self {
        LowerError::Invalid(Box::new(e))
    }
}

impl From<PassError> for LowerError {
    fn from(e: PassError) -> Self {
        LowerError::Pass(Box::new(e))
    }
}
