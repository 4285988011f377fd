//! What compiling produces: the program with its inputs, outputs and weights, the op
//! spans, the HBM report, and the serializable [`Manifest`] written beside a `.tyb`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::Program;

use super::{io, LowerError};
use crate::graph::{DataType, Graph, Tensor, TensorType};

/// A graph input or output and the program tensor holding it (none — an empty name —
/// for a tensor without elements).
#[derive(Clone, Debug, PartialEq)]
pub struct IoTensor {
    /// The graph's name.
    pub name: String,
    /// The program tensor.
    pub tensor: String,
    /// Graph type.
    pub ty: TensorType,
    /// Device element type.
    pub dtype: DType,
}

/// A weight: a program input whose value is known at compile time.
#[derive(Clone, Debug)]
pub struct Weight {
    /// The program tensor.
    pub tensor: String,
    /// Device element type.
    pub dtype: DType,
    /// The value (already in the device layout).
    pub value: Arc<Tensor>,
}

/// One step of the program: a node or fused group, its kernels and its instructions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSpan {
    /// Node name (the first node of a fused group).
    pub node: String,
    /// ONNX op type (`Conv+BatchNormalization+Relu` for a fused group).
    pub op_type: String,
    /// Library kernels or device routines.
    pub kernel: String,
    /// Instruction ids `[start, end)`.
    pub insts: Range<u32>,
}

/// Where HBM goes, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HbmReport {
    /// Weights (program inputs with compile-time values).
    pub weights: u64,
    /// Graph inputs.
    pub inputs: u64,
    /// Graph outputs.
    pub outputs: u64,
    /// The intermediates' arena (liveness-planned).
    pub arena: u64,
    /// Scratch the kernels keep for themselves (e.g. a padded copy of a convolution's
    /// input), one per core and kind, reused by every step.
    #[serde(default)]
    pub workspace: u64,
    /// The most intermediate bytes live at one step (a lower bound of `arena`).
    pub live_peak: u64,
    /// Peak HBM use: everything above.
    pub peak: u64,
    /// The chip's HBM.
    pub capacity: u64,
}

/// How the work is spread over the cores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Parallelism {
    /// Each core computes a slice of the batch through the whole model.
    DataParallel {
        /// Cores used.
        cores: u16,
        /// Batch size split.
        batch: usize,
    },
    /// Each step splits its own work over the cores.
    PerStep {
        /// Cores used.
        cores: u16,
        /// Why the batch was not split (empty with one core).
        reason: String,
    },
}

/// A compiled model.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The program.
    pub program: Program,
    /// Graph inputs, in the graph's order.
    pub inputs: Vec<IoTensor>,
    /// Graph outputs, in the graph's order.
    pub outputs: Vec<IoTensor>,
    /// Weights to bind before a run.
    pub weights: Vec<Weight>,
    /// Steps with their instruction ranges, in program order.
    pub ops: Vec<OpSpan>,
    /// HBM use.
    pub hbm: HbmReport,
    /// Core use.
    pub parallelism: Parallelism,
    /// The graph after the optimization passes (what was lowered).
    pub graph: Graph,
}

/// A graph input or output in a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestIo {
    /// Graph name.
    pub name: String,
    /// Program tensor.
    pub tensor: String,
    /// ONNX element type code.
    pub onnx_type: i32,
    /// Shape.
    pub shape: Vec<usize>,
    /// Device element type name.
    pub dtype: String,
}

/// What a program needs besides its instructions to be run as the model: the
/// mapping of graph inputs and outputs, the weight tensors, the op spans and the HBM
/// report (serialized beside a compiled `.tyb`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model (graph) name.
    pub model: String,
    /// Chip compiled for.
    pub chip: String,
    /// Float element type on the device.
    pub dtype: String,
    /// Graph inputs.
    pub inputs: Vec<ManifestIo>,
    /// Graph outputs.
    pub outputs: Vec<ManifestIo>,
    /// Program tensors holding weights.
    pub weights: Vec<String>,
    /// Op spans.
    pub ops: Vec<OpSpan>,
    /// HBM use.
    pub hbm: HbmReport,
    /// Core use.
    pub parallelism: Parallelism,
    /// The ONNX model compiled (for `--check` against the interpreter).
    #[serde(default)]
    pub source: Option<String>,
}

impl ManifestIo {
    fn of(t: &IoTensor) -> ManifestIo {
        ManifestIo {
            name: t.name.clone(),
            tensor: t.tensor.clone(),
            onnx_type: t.ty.dtype.onnx_code(),
            shape: t.ty.shape.clone(),
            dtype: t.dtype.name().to_string(),
        }
    }

    /// The graph input or output it describes.
    pub fn io_tensor(&self) -> Result<IoTensor, String> {
        let dtype = DataType::from_onnx(self.onnx_type)?;
        let dev: DType = self.dtype.parse().map_err(|e| format!("`{}`: {e}", self.name))?;
        Ok(IoTensor {
            name: self.name.clone(),
            tensor: self.tensor.clone(),
            ty: TensorType::new(dtype, self.shape.clone()),
            dtype: dev,
        })
    }
}

impl Compiled {
    /// The serializable description of the compiled model.
    pub fn manifest(&self, chip: &ChipSpec, dtype: DType) -> Manifest {
        Manifest {
            model: self.graph.name.clone(),
            chip: chip.name.clone(),
            dtype: dtype.name().to_string(),
            inputs: self.inputs.iter().map(ManifestIo::of).collect(),
            outputs: self.outputs.iter().map(ManifestIo::of).collect(),
            weights: self.weights.iter().map(|w| w.tensor.clone()).collect(),
            ops: self.ops.clone(),
            hbm: self.hbm,
            parallelism: self.parallelism.clone(),
            source: None,
        }
    }

    /// The device bytes of each graph input in `values` (see [`bind_inputs`]).
    pub fn bind_inputs(&self, values: &HashMap<String, Tensor>) -> Result<Vec<DeviceTensor>, LowerError> {
        bind_inputs(&self.inputs, values)
    }

    /// The device bytes of every weight.
    pub fn weight_bytes(&self) -> Result<Vec<DeviceTensor>, LowerError> {
        self.weights
            .iter()
            .map(|w| {
                let bytes = io::to_device(&w.value, w.dtype)
                    .map_err(|reason| LowerError::Binding { name: w.tensor.clone(), reason })?;
                Ok(DeviceTensor {
                    tensor: w.tensor.clone(),
                    dtype: w.dtype,
                    shape: device_shape(w.value.shape()),
                    bytes,
                })
            })
            .collect()
    }
}

/// Bytes for one program tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceTensor {
    /// Program tensor name.
    pub tensor: String,
    /// Device element type.
    pub dtype: DType,
    /// Device shape (scalars are `[1]`).
    pub shape: Vec<usize>,
    /// Little-endian elements.
    pub bytes: Vec<u8>,
}

/// The device bytes of each graph input of `inputs` found in `values` (by graph
/// name), as (program tensor, dtype, shape, bytes); every input must be given with its
/// declared type and shape (inputs without elements have no tensor and are skipped).
pub fn bind_inputs(inputs: &[IoTensor], values: &HashMap<String, Tensor>) -> Result<Vec<DeviceTensor>, LowerError> {
    inputs
        .iter()
        .filter(|i| !i.tensor.is_empty())
        .map(|i| {
            let t = values.get(&i.name).ok_or_else(|| LowerError::Binding {
                name: i.name.clone(),
                reason: format!("not given (the model's inputs: {})", names(inputs)),
            })?;
            if t.dtype() != i.ty.dtype || t.shape() != i.ty.shape.as_slice() {
                return Err(LowerError::Binding {
                    name: i.name.clone(),
                    reason: format!("expected {}, got {}{:?}", i.ty, t.dtype(), t.shape()),
                });
            }
            let bytes =
                io::to_device(t, i.dtype).map_err(|reason| LowerError::Binding { name: i.name.clone(), reason })?;
            Ok(DeviceTensor { tensor: i.tensor.clone(), dtype: i.dtype, shape: device_shape(&i.ty.shape), bytes })
        })
        .collect()
}

/// The value of graph output `o` from the bytes of its program tensor (`None` for an
/// output without elements, which has none).
pub fn read_output(o: &IoTensor, bytes: Option<&[u8]>) -> Result<Tensor, LowerError> {
    let bad = |reason: String| LowerError::Binding { name: o.name.clone(), reason };
    match bytes {
        _ if o.tensor.is_empty() => Ok(Tensor::zeros(o.ty.dtype, o.ty.shape.clone())),
        Some(b) => io::from_device(b, o.dtype, &o.ty).map_err(bad),
        None => Err(bad("no values read back".into())),
    }
}

fn names(v: &[IoTensor]) -> String {
    v.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// The shape a value has on the device: scalars become `[1]`.
pub fn device_shape(shape: &[usize]) -> Vec<usize> {
    if shape.is_empty() {
        vec![1]
    } else {
        shape.to_vec()
    }
}
