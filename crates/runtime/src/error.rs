//! The one error type of the runtime.

use std::path::PathBuf;

use trainyard_arch::DType;
use trainyard_sim::SimError;

/// Why a runtime operation failed. Every message names the file, tensor or
/// key at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The simulator refused the program or faulted while running it.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// A file or directory could not be read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A malformed or unsupported `.npy` file.
    #[error("{}: npy: {message}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A malformed or unsupported `.safetensors` file.
    #[error("{}: safetensors: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file whose extension names no format the runtime reads.
    #[error("{}: unknown tensor file format (expected `.npy` or `.safetensors`)", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// No tensor of that name in a safetensors file.
    #[error("{}: no tensor `{key}` in the file (it holds: {available})", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The requested tensor name.
        key: String,
        /// Comma-separated names the file holds.
        available: String,
    },
    /// No tensor of that name in the program.
    #[error("no tensor `{name}` in program `{program}` (inputs: {inputs})")]
    UnknownTensor {
        /// The requested name.
        name: String,
        /// The program.
        program: String,
        /// Comma-separated input names.
        inputs: String,
    },
    /// Only input tensors can be bound.
    #[error("tensor `{name}` is an {kind} tensor; only inputs can be bound")]
    NotAnInput {
        /// The tensor.
        name: String,
        /// Its kind (`output` or `scratch`).
        kind: String,
    },
    /// Host data of another shape than the tensor's.
    #[error("tensor `{tensor}`: shape mismatch: the program declares {expected:?}, {source_desc} has {given:?}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Declared shape.
        expected: Vec<u64>,
        /// Shape of the host data.
        given: Vec<u64>,
        /// Where the host data came from (`float32 npy`, `host tensor`, ...).
        source_desc: String,
    },
    /// Host data whose byte length does not match its own shape and dtype.
    #[error("tensor `{tensor}`: host data has {got} bytes, its shape {shape:?} of {dtype} needs {expected}")]
    DataSize {
        /// The tensor.
        tensor: String,
        /// Shape of the host data.
        shape: Vec<u64>,
        /// Dtype of the host data.
        dtype: String,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// Host data of an incompatible dtype (float into int or the reverse).
    #[error("tensor `{tensor}`: cannot bind {given} data to a {expected} tensor ({reason})")]
    DType {
        /// The tensor.
        tensor: String,
        /// The tensor's dtype.
        expected: DType,
        /// The host data's dtype and origin.
        given: String,
        /// Why it is refused.
        reason: String,
    },
    /// An integer value that the tensor's dtype cannot hold.
    #[error("tensor `{tensor}`: value {value} at flat index {index} does not fit in {dtype} [{min}, {max}]")]
    OutOfRange {
        /// The tensor.
        tensor: String,
        /// Row-major index of the first offending value.
        index: u64,
        /// The value.
        value: i128,
        /// The target dtype.
        dtype: String,
        /// Smallest value of the target dtype.
        min: i64,
        /// Largest value of the target dtype.
        max: i64,
    },
    /// Inputs without values when running in functional mode.
    #[error("unbound input(s): {} (bind them, or fill them with bind_defaults)", quoted(names))]
    UnboundInputs {
        /// The unbound input names, in declaration order.
        names: Vec<String>,
    },
    /// Results were requested before a successful run.
    #[error("no results: the session has not run successfully yet")]
    NotRun,
    /// Values were requested from a timed-only session.
    #[error("tensor `{0}`: values are not available in timed-only mode")]
    NoValues(String),
    /// A trace was requested from a run that did not record events.
    #[error("the run recorded no per-instruction events (SimOptions.record_events was off); traces need them")]
    NoEvents,
    /// An output directory that cannot receive files.
    #[error("{}: cannot write outputs here: {message}", path.display())]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

impl RuntimeError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        RuntimeError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn npy(path: &std::path::Path, message: impl Into<String>) -> Self {
        RuntimeError::Npy { path: path.to_path_buf(), message: message.into() }
    }
}
