//! Lowering: a [`Graph`] to one device [`Program`] built from the kernel library.
//!
//! [`compile`] runs the optimization passes ([`crate::passes::optimize`]: constant
//! folding — every shape computation and every op on constants is done here, on the
//! host —, dead code, fusion), then:
//!
//! 1. **Steps.** Each node, or fused group of nodes, becomes a step with a lowering:
//!    Conv(+BatchNorm)(+Add)(+activation) → `conv2d` with the weights packed and the
//!    batch norm folded in at compile time; MatMul/Gemm → `matmul`; pooling → `pool2d`;
//!    LRN → `lrn`; softmax and norms → `softmax`, `layernorm`, `rmsnorm` (with
//!    transposes when the axis is not the last); reductions → `reduce`; arg-max →
//!    `argmax`; any elementwise function, chain, broadcast or cast → one tiled
//!    elementwise routine; reshapes are free (aliases); concatenation, slicing,
//!    padding, gathers and resizes are DMA access patterns. A node the device cannot
//!    run is a [`LowerError::Unsupported`] naming it and its op type, at compile time.
//! 2. **HBM plan.** Graph inputs, weights and graph outputs get their own tensors;
//!    every intermediate (and every step's scratch) is a region of one arena, placed
//!    by liveness ([`hbm::place`]). The peak HBM use is reported in [`HbmReport`];
//!    above the chip's HBM it is [`LowerError::HbmOverflow`], naming the tensor.
//! 3. **Cores.** With `cores > 1`, a model whose every step acts on each image of
//!    the batch separately runs *data-parallel*: each core computes a slice of the
//!    batch through the whole model (the steps are emitted once per core on batch
//!    slices of the same tensors). Otherwise each step splits its own work over the
//!    cores.
//! 4. **Program.** Steps are emitted in order into one builder (dependencies follow
//!    addresses, so arena reuse is ordered), each recorded as an [`OpSpan`] for
//!    per-op time.
//!
//! [`Compiled`] holds the program, how graph inputs and outputs map to program
//! tensors ([`IoTensor`], converted by [`io`]), the weight values to bind, the spans
//! and the HBM report; [`Manifest`] is its serializable description (what
//! `trainyard compile` writes beside a `.tyb`).

mod elementwise;
mod emit;
mod error;
pub mod hbm;
pub mod io;
mod linalg;
mod movement;
mod nn;
mod plan;
mod resize;
mod rows;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::Program;
use trainyard_kernels::{BuildError, HbmTensor, KernelBuilder, ALIGN};

pub use elementwise::{Arg, EwOp, EwProgram};
pub use error::LowerError;

use crate::graph::{DataType, Graph, Node, Op, Tensor, TensorType, ValueId};
use emit::{Cx, Io, Step, StepKind};

/// Options of [`compile`].
#[derive(Clone, Debug, PartialEq)]
pub struct LowerOptions {
    /// NeuronCores to use (1..=the chip's).
    pub cores: u16,
    /// Element type floats compute and are stored in (`f32` or `bf16`).
    pub dtype: DType,
    /// Run the optimization passes first (constant folding, dead code, fusion).
    pub optimize: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions { cores: 1, dtype: DType::F32, optimize: true }
    }
}

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

/// What kind of tensor holds a class of aliased values.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Home {
    Input(ValueId),
    Weight(ValueId),
    Output(usize),
    Arena,
}

/// Compiles `graph` for `chip`.
pub fn compile(graph: &Graph, chip: &ChipSpec, opts: &LowerOptions) -> Result<Compiled, LowerError> {
    if opts.cores == 0 || opts.cores as u32 > chip.chip.cores {
        return Err(LowerError::Options(format!(
            "--cores {} is outside 1..={} for {}",
            opts.cores, chip.chip.cores, chip.name
        )));
    }
    if !matches!(opts.dtype, DType::F32 | DType::Bf16) {
        return Err(LowerError::Options(format!("--dtype {}: the device computes models in f32 or bf16", opts.dtype)));
    }
    let mut g = graph.clone();
    if opts.optimize {
        crate::passes::optimize(&mut g)?;
    }
    if fold_empty(&mut g)? > 0 {
        crate::passes::fold_constants(&mut g)?;
    }
    let output_names: Vec<String> = g.outputs.iter().map(|&v| g.value(v).name.clone()).collect();
    detach_outputs(&mut g);
    let steps = plan::plan(&mut g, opts.dtype)?;
    let mut steps = drop_empty(&g, steps)?;
    let homes = resolve_aliases(&g, &mut steps);
    let dev = |v: ValueId| io::device_dtype(g.value(v).ty.dtype, opts.dtype);
    let bytes_of = |v: ValueId| (device_shape(&g.value(v).ty.shape).iter().product::<usize>() * dev(v).size()) as u64;

    // Liveness of the arena classes and of every step's scratch.
    let mut lives: Vec<hbm::Live> = Vec::new();
    let mut class_live: HashMap<ValueId, usize> = HashMap::new();
    let mut temp_live: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
    for (k, s) in steps.iter().enumerate() {
        for &v in s.inputs.iter().chain(&s.outputs) {
            let root = homes.root(v);
            if homes.home(root) == &Home::Arena {
                let i = *class_live.entry(root).or_insert_with(|| {
                    lives.push(hbm::Live { bytes: bytes_of(root), first: k, last: k });
                    lives.len() - 1
                });
                lives[i].first = lives[i].first.min(k);
                lives[i].last = lives[i].last.max(k);
            }
        }
        let mut mine = Vec::new();
        if let StepKind::Emit(e) = &s.kind {
            for (shape, dtype) in e.temps() {
                let b = (device_shape(&shape).iter().product::<usize>() * dtype.size()) as u64;
                lives.push(hbm::Live { bytes: b, first: k, last: k });
                mine.push(lives.len() - 1);
            }
        }
        temp_live.push(mine);
    }
    let (offsets, arena) = hbm::place(&lives, ALIGN);

    // Program tensors and the HBM report.
    let mut kb = KernelBuilder::new(&g.name, chip);
    let mut names = Names::default();
    let mut tensors: HashMap<ValueId, HbmTensor> = HashMap::new();
    let mut report =
        HbmReport { arena, live_peak: hbm::peak_live(&lives), capacity: chip.chip.hbm_bytes, ..Default::default() };
    let mut inputs = Vec::new();
    let mut weights = Vec::new();
    let mut outputs: Vec<Option<IoTensor>> = vec![None; g.outputs.len()];
    let mut used: Vec<bool> = vec![false; g.values.len()];
    for s in &steps {
        for &v in s.inputs.iter().chain(&s.outputs) {
            used[homes.root(v).0 as usize] = true;
        }
    }
    let mut roots: Vec<ValueId> =
        (0..g.values.len() as u32).map(ValueId).filter(|v| used[v.0 as usize] && homes.root(*v) == *v).collect();
    roots.retain(|v| matches!(homes.home(*v), Home::Weight(_)));
    report.weights = roots.iter().map(|&v| bytes_of(v)).sum();
    let io_bytes = |v: &ValueId| if g.value(*v).ty.numel() == 0 { 0 } else { bytes_of(*v) };
    report.inputs = g.inputs.iter().map(io_bytes).sum();
    report.outputs = g.outputs.iter().map(io_bytes).sum();
    report.peak = report.weights + report.inputs + report.outputs + report.arena;
    let report = report;
    let mut placed = 0u64;
    let mut declare = |kb: &mut KernelBuilder, name: &str, v: ValueId, output: bool| -> Result<HbmTensor, LowerError> {
        let shape = device_shape(&g.value(v).ty.shape);
        placed = placed.div_ceil(ALIGN) * ALIGN + bytes_of(v);
        if placed > chip.chip.hbm_bytes {
            return Err(overflow(name, chip, &report, arena));
        }
        let r = if output { kb.hbm_output(name, &shape, dev(v)) } else { kb.hbm_input(name, &shape, dev(v)) };
        r.map_err(LowerError::from)
    };
    // Graph inputs and outputs keep their names where they can.
    for &v in &g.inputs {
        if g.value(v).ty.numel() == 0 {
            inputs.push(IoTensor {
                name: g.value(v).name.clone(),
                tensor: String::new(),
                ty: g.value(v).ty.clone(),
                dtype: dev(v),
            });
            continue;
        }
        let name = names.unique(&g.value(v).name);
        let t = declare(&mut kb, &name, v, false)?;
        inputs.push(IoTensor { name: g.value(v).name.clone(), tensor: name, ty: g.value(v).ty.clone(), dtype: dev(v) });
        tensors.insert(homes.root(v), t);
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        if g.value(v).ty.numel() == 0 {
            let ty = g.value(v).ty.clone();
            outputs[i] = Some(IoTensor { name: output_names[i].clone(), tensor: String::new(), ty, dtype: dev(v) });
            continue;
        }
        let name = names.unique(&output_names[i]);
        let t = declare(&mut kb, &name, v, true)?;
        outputs[i] =
            Some(IoTensor { name: output_names[i].clone(), tensor: name, ty: g.value(v).ty.clone(), dtype: dev(v) });
        tensors.insert(homes.root(v), t);
    }
    for &v in &roots {
        let name = names.unique(&format!("w.{}", g.value(v).name));
        let t = declare(&mut kb, &name, v, false)?;
        if let Some(value) = g.value(v).constant.clone() {
            weights.push(Weight { tensor: name, dtype: dev(v), value });
        }
        tensors.insert(v, t);
    }
    let placed = placed;
    let arena_t = if arena > 0 {
        if placed.div_ceil(ALIGN) * ALIGN + arena > chip.chip.hbm_bytes {
            // Name the intermediate whose placement crosses the capacity.
            let free = chip.chip.hbm_bytes.saturating_sub(placed.div_ceil(ALIGN) * ALIGN);
            let worst = class_live
                .iter()
                .filter(|(_, &i)| offsets[i] + lives[i].bytes > free)
                .min_by_key(|(_, &i)| offsets[i])
                .map(|(v, _)| g.value(*v).name.clone())
                .unwrap_or_else(|| "arena".into());
            return Err(overflow(&worst, chip, &report, arena));
        }
        Some(kb.hbm_scratch("arena", &[arena as usize], DType::U8).map_err(LowerError::from)?)
    } else {
        None
    };
    for (&root, &i) in &class_live {
        if let Some(a) = &arena_t {
            let t = a
                .region(
                    &names.unique(&g.value(root).name),
                    offsets[i],
                    &device_shape(&g.value(root).ty.shape),
                    dev(root),
                )
                .map_err(LowerError::from)?;
            tensors.insert(root, t);
        }
    }
    let tensor_of = |v: ValueId| -> Result<HbmTensor, LowerError> {
        let root = homes.root(v);
        let t = tensors.get(&root).ok_or_else(|| {
            LowerError::from(BuildError::Kernel {
                kernel: "lowering".into(),
                message: format!("value `{}` has no device tensor", g.value(v).name),
            })
        })?;
        t.reshaped(&device_shape(&g.value(v).ty.shape)).map_err(LowerError::from)
    };

    // Cores: data-parallel when every step that reads the batch can be split by it.
    let parallelism = data_parallel(&g, &steps, opts.cores);
    let mut ops = Vec::new();
    let temp_tensor = |k: usize, j: usize, shape: &[usize], dtype: DType| -> Result<HbmTensor, LowerError> {
        let i = temp_live[k][j];
        let a = arena_t.as_ref().ok_or_else(|| {
            LowerError::from(BuildError::Kernel {
                kernel: "lowering".into(),
                message: "scratch without an arena".into(),
            })
        })?;
        a.region(&format!("tmp{k}.{j}"), offsets[i], &device_shape(shape), dtype).map_err(LowerError::from)
    };
    let batched = batched_values(&g, &steps, &parallelism);
    let mut alternate = false;
    for (k, s) in steps.iter().enumerate() {
        let StepKind::Emit(e) = &s.kind else { continue };
        // Steps that fit half the SBUF take alternate halves, so each one's first loads
        // overlap the previous one's work.
        let upper = e.half_sbuf() && alternate;
        if e.half_sbuf() {
            alternate = !alternate;
        }
        let full = Io {
            inputs: s.inputs.iter().map(|&v| tensor_of(v)).collect::<Result<_, _>>()?,
            outputs: s.outputs.iter().map(|&v| tensor_of(v)).collect::<Result<_, _>>()?,
            temps: e
                .temps()
                .iter()
                .enumerate()
                .map(|(j, (shape, dtype))| temp_tensor(k, j, shape, *dtype))
                .collect::<Result<_, _>>()?,
        };
        let start = kb.next_id().0;
        let wrap = |source: BuildError| LowerError::Kernel {
            node: s.node.clone(),
            op_type: s.op_type.clone(),
            kernel: e.kernels(),
            source: Box::new(source),
        };
        let split = match &parallelism {
            Parallelism::DataParallel { cores, batch } if s.inputs.iter().any(|v| batched[v.0 as usize]) => {
                Some((*cores, *batch))
            }
            _ => None,
        };
        match split {
            Some((cores, batch)) => {
                for (c, range) in batch_split(batch, cores).into_iter().enumerate() {
                    kb.set_core_window(c as u16, 1).map_err(wrap)?;
                    let slice = |t: &HbmTensor, is_batched: bool| -> Result<HbmTensor, BuildError> {
                        if !is_batched || t.shape().first() != Some(&batch) {
                            return Ok(t.clone());
                        }
                        let row = t.bytes() / batch as u64;
                        let mut shape = t.shape().to_vec();
                        shape[0] = range.len();
                        t.region(
                            &format!("{}[{}:{}]", t.name(), range.start, range.end),
                            row * range.start as u64,
                            &shape,
                            t.dtype(),
                        )
                    };
                    let lower_half = if upper { Some(reserve_half(&mut kb, 1).map_err(wrap)?) } else { None };
                    let io = Io {
                        inputs: s
                            .inputs
                            .iter()
                            .zip(&full.inputs)
                            .map(|(v, t)| slice(t, batched[v.0 as usize]))
                            .collect::<Result<_, _>>()
                            .map_err(wrap)?,
                        outputs: full.outputs.iter().map(|t| slice(t, true)).collect::<Result<_, _>>().map_err(wrap)?,
                        temps: full.temps.iter().map(|t| slice(t, true)).collect::<Result<_, _>>().map_err(wrap)?,
                    };
                    e.emit(&mut Cx { kb: &mut kb, cores: 1 }, &io).map_err(wrap)?;
                    if let Some(tiles) = lower_half {
                        release(&mut kb, tiles).map_err(wrap)?;
                    }
                }
            }
            None => {
                let cores = match &parallelism {
                    Parallelism::PerStep { cores, .. } => *cores,
                    Parallelism::DataParallel { .. } => 1,
                };
                kb.set_core_window(0, cores).map_err(wrap)?;
                let lower_half = if upper { Some(reserve_half(&mut kb, cores).map_err(wrap)?) } else { None };
                e.emit(&mut Cx { kb: &mut kb, cores }, &full).map_err(wrap)?;
                if let Some(tiles) = lower_half {
                    release(&mut kb, tiles).map_err(wrap)?;
                }
            }
        }
        let end = kb.next_id().0;
        if end > start {
            ops.push(OpSpan {
                node: s.node.clone(),
                op_type: s.op_type.clone(),
                kernel: e.kernels(),
                insts: start..end,
            });
        }
    }
    kb.clear_core_window();
    let program = kb.finish().map_err(LowerError::from)?;
    let mut report = report;
    report.workspace = program
        .tensors
        .iter()
        .filter(|t| t.kind == trainyard_isa::TensorKind::Scratch && t.name != "arena")
        .map(|t| t.bytes())
        .sum();
    report.peak += report.workspace;
    let outputs = outputs.into_iter().flatten().collect();
    Ok(Compiled { program, inputs, outputs, weights, ops, hbm: report, parallelism, graph: g })
}

/// Takes the lower half of the SBUF of cores `0..cores` of the window (so the next
/// step allocates in the upper half), leaving core 0 current.
fn reserve_half(kb: &mut KernelBuilder, cores: u16) -> Result<Vec<trainyard_kernels::Tile>, BuildError> {
    let half = kb.chip().core.sbuf.bytes_per_partition as usize / 2;
    let p = kb.chip().core.sbuf.partitions as usize;
    let mut tiles = Vec::with_capacity(cores as usize);
    for c in 0..cores {
        kb.core(c)?;
        tiles.push(kb.sbuf_tile(&[p, half], DType::U8)?);
    }
    kb.core(0)?;
    Ok(tiles)
}

fn release(kb: &mut KernelBuilder, tiles: Vec<trainyard_kernels::Tile>) -> Result<(), BuildError> {
    tiles.into_iter().try_for_each(|t| kb.free(t))
}

fn overflow(tensor: &str, chip: &ChipSpec, r: &HbmReport, arena: u64) -> LowerError {
    LowerError::HbmOverflow {
        tensor: tensor.to_string(),
        needed: r.weights + r.inputs + r.outputs + arena,
        weights: r.weights,
        io: r.inputs + r.outputs,
        arena,
        chip: chip.name.clone(),
        capacity: chip.chip.hbm_bytes,
    }
}

/// Unique program tensor names.
#[derive(Default)]
struct Names {
    taken: std::collections::HashSet<String>,
}

impl Names {
    fn unique(&mut self, want: &str) -> String {
        let base: String = want.chars().map(|c| if c.is_ascii_graphic() && c != '"' { c } else { '_' }).collect();
        let base = if base.is_empty() { "t".to_string() } else { base };
        let mut name = base.clone();
        let mut k = 1;
        while !self.taken.insert(name.clone()) {
            name = format!("{base}.{k}");
            k += 1;
        }
        name
    }
}

/// Evaluates on the host every node that reads a zero-element value and otherwise only
/// constants (a reduction over an empty set is a constant), so the device never sees
/// it. Returns how many were folded.
fn fold_empty(g: &mut Graph) -> Result<usize, LowerError> {
    let mut folded: Vec<(usize, Vec<(ValueId, Tensor)>)> = Vec::new();
    let empty = |v: &ValueId| g.value(*v).ty.numel() == 0;
    for (k, node) in g.nodes.iter().enumerate() {
        if !node.inputs.iter().any(empty) || node.outputs.iter().all(empty) {
            continue;
        }
        let consts: Option<Vec<Arc<Tensor>>> = node
            .inputs
            .iter()
            .map(|&v| {
                let val = g.value(v);
                val.constant
                    .clone()
                    .or_else(|| empty(&v).then(|| Arc::new(Tensor::zeros(val.ty.dtype, val.ty.shape.clone()))))
            })
            .collect();
        let Some(consts) = consts else { continue };
        let refs: Vec<&Tensor> = consts.iter().map(|c| c.as_ref()).collect();
        let tys: Vec<TensorType> = node.outputs.iter().map(|&o| g.value(o).ty.clone()).collect();
        let results = crate::interp::eval(&node.op, &refs, &tys).map_err(|reason| LowerError::Unsupported {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            reason: format!("evaluating it on its empty input: {reason}"),
        })?;
        folded.push((k, node.outputs.iter().copied().zip(results).collect()));
    }
    let mut keep = vec![true; g.nodes.len()];
    for (k, outs) in &folded {
        keep[*k] = false;
        for (o, t) in outs {
            g.value_mut(*o).constant = Some(Arc::new(t.clone()));
        }
    }
    if !folded.is_empty() {
        crate::passes::compact(g, &keep);
    }
    Ok(folded.len())
}

/// Removes zero-element values: steps whose outputs are all empty are dropped, empty
/// outputs of the others (a split piece) and empty inputs of steps that skip them
/// (concatenation) are left out; any other step reading an empty value is refused.
fn drop_empty(g: &Graph, steps: Vec<Step>) -> Result<Vec<Step>, LowerError> {
    let empty = |v: &ValueId| g.value(*v).ty.numel() == 0;
    let mut kept = Vec::with_capacity(steps.len());
    for mut s in steps {
        s.outputs.retain(|v| !empty(v));
        if s.outputs.is_empty() {
            continue;
        }
        if s.inputs.iter().any(empty) {
            let skips = matches!(&s.kind, StepKind::Emit(e) if e.skips_empty_inputs());
            if !skips {
                return Err(LowerError::Unsupported {
                    node: s.node.clone(),
                    op_type: s.op_type.clone(),
                    reason: "an input has no elements".into(),
                });
            }
            s.inputs.retain(|v| !empty(v));
        }
        kept.push(s);
    }
    Ok(kept)
}

/// Graph outputs that no node computes (graph inputs, constants) or that are listed
/// twice get an `Identity` node of their own, so each output has its own tensor.
fn detach_outputs(g: &mut Graph) {
    let mut seen = std::collections::HashSet::new();
    for i in 0..g.outputs.len() {
        let v = g.outputs[i];
        if g.value(v).producer.is_some() && seen.insert(v) {
            continue;
        }
        let name = format!("{}:copy{i}", g.value(v).name);
        let ty = g.value(v).ty.clone();
        let out = g.push_node(&name, "Identity", Op::Identity, vec![v], vec![name.clone()], vec![ty]);
        g.outputs[i] = out[0];
        seen.insert(out[0]);
    }
}

/// Classes of values sharing bytes (aliases), and where each class lives.
struct Homes {
    parent: Vec<ValueId>,
    home: HashMap<ValueId, Home>,
}

impl Homes {
    fn root(&self, mut v: ValueId) -> ValueId {
        while self.parent[v.0 as usize] != v {
            v = self.parent[v.0 as usize];
        }
        v
    }

    fn home(&self, root: ValueId) -> &Home {
        self.home.get(&root).unwrap_or(&Home::Arena)
    }
}

/// Joins alias steps' outputs to their inputs' classes, turning an alias into a copy
/// where the class would hold two graph tensors (an input or weight and an output, or
/// two outputs).
fn resolve_aliases(g: &Graph, steps: &mut [Step]) -> Homes {
    let mut h = Homes { parent: (0..g.values.len() as u32).map(ValueId).collect(), home: HashMap::new() };
    for &v in &g.inputs {
        h.home.insert(v, Home::Input(v));
    }
    for (i, v) in g.values.iter().enumerate() {
        if v.constant.is_some() {
            h.home.insert(ValueId(i as u32), Home::Weight(ValueId(i as u32)));
        }
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        h.home.entry(v).or_insert(Home::Output(i));
    }
    for s in steps.iter_mut() {
        if !matches!(s.kind, StepKind::Alias) {
            continue;
        }
        let (Some(&x), Some(&y)) = (s.inputs.first(), s.outputs.first()) else { continue };
        let rx = h.root(x);
        let pinned_x = h.home(rx) != &Home::Arena;
        let pinned_y = h.home(y) != &Home::Arena;
        if pinned_x && pinned_y {
            s.kind = StepKind::Emit(Box::new(emit::Copy));
            continue;
        }
        h.parent[y.0 as usize] = rx;
        if let Some(home) = h.home.remove(&y) {
            h.home.insert(rx, home);
        }
    }
    h
}

/// The batch split over `cores`: contiguous ranges of images.
fn batch_split(batch: usize, cores: u16) -> Vec<Range<usize>> {
    let cores = (cores as usize).clamp(1, batch.max(1));
    (0..cores).map(|c| c * batch / cores..(c + 1) * batch / cores).filter(|r| !r.is_empty()).collect()
}

/// Which values carry the batch on axis 0 in a data-parallel program.
fn batched_values(g: &Graph, steps: &[Step], p: &Parallelism) -> Vec<bool> {
    let mut b = vec![false; g.values.len()];
    let Parallelism::DataParallel { batch, .. } = p else { return b };
    for &v in &g.inputs {
        b[v.0 as usize] = g.value(v).ty.shape.first() == Some(batch);
    }
    for s in steps {
        if s.inputs.iter().any(|v| b[v.0 as usize]) {
            for &o in &s.outputs {
                b[o.0 as usize] = true;
            }
        }
    }
    b
}

/// Data-parallel when the graph inputs share a batch ≥ 2 and every step that reads
/// batched values can be split by the batch.
fn data_parallel(g: &Graph, steps: &[Step], cores: u16) -> Parallelism {
    let per_step = |reason: String| Parallelism::PerStep { cores, reason };
    if cores == 1 {
        return per_step(String::new());
    }
    let batch = match g.inputs.first().and_then(|&v| g.value(v).ty.shape.first().copied()) {
        Some(n) if n >= 2 => n,
        _ => return per_step("the batch is 1".into()),
    };
    let mut b = vec![false; g.values.len()];
    for &v in &g.inputs {
        b[v.0 as usize] = g.value(v).ty.shape.first() == Some(&batch);
    }
    for s in steps {
        let flags: Vec<bool> = s.inputs.iter().map(|v| b[v.0 as usize]).collect();
        if !flags.iter().any(|&f| f) {
            continue;
        }
        let shapes: Vec<Vec<usize>> = s.inputs.iter().map(|&v| g.value(v).ty.shape.clone()).collect();
        let out: Vec<usize> = s.outputs.first().map(|&o| g.value(o).ty.shape.clone()).unwrap_or_default();
        let ok = out.first() == Some(&batch)
            && s.outputs.iter().all(|&o| g.value(o).ty.shape.first() == Some(&batch))
            && match &s.kind {
                StepKind::Alias => flags[0] && shapes[0].first() == Some(&batch),
                StepKind::Emit(e) => e.batch_separable(&flags, &shapes, &out),
            };
        if !ok {
            return per_step(format!("node `{}` ({}) mixes the batch", s.node, s.op_type));
        }
        for &o in &s.outputs {
            b[o.0 as usize] = true;
        }
    }
    Parallelism::DataParallel { cores: cores.min(batch.min(u16::MAX as usize) as u16), batch }
}

/// The node as given, for messages.
pub(crate) fn unsupported(node: &Node, reason: impl Into<String>) -> LowerError {
    LowerError::Unsupported { node: node.name.clone(), op_type: node.op_type.clone(), reason: reason.into() }
}
