//! Lowering: a [`Graph`] to one device [`Program`](trainyard_isa::Program) built from the kernel library.
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
//!    elementwise routine; reshapes are free (aliases); slicing, padding, gathers and
//!    resizes are DMA access patterns; a concatenation whose pieces are contiguous gets
//!    them written in place by their producers. A node the device cannot run is a
//!    [`LowerError::Unsupported`] naming it and its op type, at compile time.
//! 2. **HBM plan.** Graph inputs, weights and graph outputs get their own tensors;
//!    values sharing bytes (reshapes, in-place concatenation pieces) form one buffer;
//!    every other intermediate buffer (and every step's scratch) is a region of one
//!    arena, placed by liveness ([`hbm::place`]). The peak HBM use is reported in
//!    [`HbmReport`]; above the chip's HBM it is [`LowerError::HbmOverflow`], naming
//!    the tensor.
//! 3. **Cores.** With `cores > 1`, a model whose every step acts on each image of
//!    the batch separately runs *data-parallel*: each core computes a slice of the
//!    batch through the whole model (the steps are emitted once per core on batch
//!    slices of the same tensors). Otherwise each step splits its own work over the
//!    cores.
//! 4. **Program.** Steps are emitted in order into one builder (dependencies follow
//!    addresses, so arena reuse is ordered), each recorded as an [`OpSpan`] for
//!    per-op time. Consecutive convolutions take alternate halves of the SBUF, so the
//!    next one's weights load while this one computes.
//!
//! [`Compiled`] holds the program, how graph inputs and outputs map to program
//! tensors ([`IoTensor`], converted by [`io`]), the weight values to bind, the spans
//! and the HBM report; [`Manifest`] is its serializable description (what
//! `trainyard compile` writes beside a `.tyb`).

mod compiled;
mod conv;
mod elementwise;
mod emit;
mod error;
mod ew_program;
pub mod hbm;
pub mod io;
mod linalg;
mod movement;
mod nn;
mod plan;
mod prepare;
mod resize;
mod rows;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use trainyard_arch::{ChipSpec, DType};
use trainyard_kernels::{BuildError, HbmTensor, KernelBuilder, ALIGN};

pub use compiled::{
    bind_inputs, device_shape, read_output, Compiled, DeviceTensor, HbmReport, IoTensor, Manifest, ManifestIo, OpSpan,
    Parallelism, Weight,
};
pub use elementwise::{Arg, EwOp, EwProgram};
pub use error::LowerError;

use crate::graph::{Graph, Node, ValueId};
use emit::{Cx, Io, StepKind};
use prepare::{
    batch_split, batched_values, data_parallel, detach_outputs, drop_empty, fold_empty, resolve_aliases, Home,
};

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
    let dev = |v: ValueId| io::device_dtype(g.value(v).ty.dtype, opts.dtype);
    let bytes_of = |v: ValueId| (device_shape(&g.value(v).ty.shape).iter().product::<usize>() * dev(v).size()) as u64;
    let homes = resolve_aliases(&g, &mut steps, bytes_of);

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
        let at = homes.offset(v);
        if at == 0 && t.bytes() == bytes_of(v) {
            return t.reshaped(&device_shape(&g.value(v).ty.shape)).map_err(LowerError::from);
        }
        t.region(&g.value(v).name, at, &device_shape(&g.value(v).ty.shape), dev(v)).map_err(LowerError::from)
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

/// The node as given, for messages.
pub(crate) fn unsupported(node: &Node, reason: impl Into<String>) -> LowerError {
    LowerError::Unsupported { node: node.name.clone(), op_type: node.op_type.clone(), reason: reason.into() }
}
