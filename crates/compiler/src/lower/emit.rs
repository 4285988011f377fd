//! What a lowered step is and how it is emitted: the [`Emitter`] trait, the tensors a
//! step reads and writes ([`Io`]), and the emission context ([`Cx`]).

use trainyard_arch::DType;
use trainyard_kernels::library::{self, Bindings, KernelArgs};
use trainyard_kernels::{BuildError, HbmTensor, KernelBuilder};

use crate::graph::ValueId;

/// The builder and the cores a step may use.
pub struct Cx<'a> {
    /// The program's builder; its core window is the step's cores.
    pub kb: &'a mut KernelBuilder,
    /// Cores of the window (kernels split their work over `0..cores`).
    pub cores: u16,
}

impl Cx<'_> {
    /// Emits library kernel `name` with `args` (its `cores` set to the window's) over
    /// `bind` (signature name → tensor).
    pub fn library(&mut self, name: &str, args: KernelArgs, bind: &[(&str, &HbmTensor)]) -> Result<(), BuildError> {
        let kernel = library::find(name).ok_or_else(|| BuildError::Kernel {
            kernel: name.to_string(),
            message: "not in the kernel library".into(),
        })?;
        let args = KernelArgs { cores: self.cores, ..args };
        let io: Bindings = bind.iter().map(|(k, t)| (k.to_string(), (*t).clone())).collect();
        kernel.emit(self.kb, &args, &io)?;
        Ok(())
    }
}

/// The device tensors of one step, in the order of its inputs, outputs and temporaries.
pub struct Io {
    /// Inputs (graph values read, constants included).
    pub inputs: Vec<HbmTensor>,
    /// Outputs.
    pub outputs: Vec<HbmTensor>,
    /// Scratch tensors asked for by [`Emitter::temps`].
    pub temps: Vec<HbmTensor>,
}

fn missing(what: &str, i: usize) -> BuildError {
    BuildError::Kernel { kernel: "lowering".into(), message: format!("{what} {i} is not bound") }
}

impl Io {
    /// Input `i`.
    pub fn input(&self, i: usize) -> Result<&HbmTensor, BuildError> {
        self.inputs.get(i).ok_or_else(|| missing("input", i))
    }
    /// Output `i`.
    pub fn output(&self, i: usize) -> Result<&HbmTensor, BuildError> {
        self.outputs.get(i).ok_or_else(|| missing("output", i))
    }
    /// Temporary `i`.
    pub fn temp(&self, i: usize) -> Result<&HbmTensor, BuildError> {
        self.temps.get(i).ok_or_else(|| missing("temporary", i))
    }
}

/// How one step becomes instructions.
pub trait Emitter {
    /// The library kernels or device routines used, for reports (`conv2d`, `matmul+elementwise`).
    fn kernels(&self) -> String;
    /// Scratch tensors the step needs, as (shape, dtype), for the full batch.
    fn temps(&self) -> Vec<(Vec<usize>, DType)> {
        Vec::new()
    }
    /// Whether the step computes each index of axis 0 of its outputs from the same index
    /// of the `batched` inputs alone (and all of the others), so a data-parallel program
    /// can give each core a slice of the batch. `shapes` are the inputs', `out` the first
    /// output's.
    fn batch_separable(&self, _batched: &[bool], _shapes: &[Vec<usize>], _out: &[usize]) -> bool {
        false
    }
    /// Whether the step stays under half of each core's SBUF, so the compiler may place
    /// consecutive such steps in alternate halves: a step's first loads (weights) then
    /// need not wait for the previous step to release its tiles.
    fn half_sbuf(&self) -> bool {
        false
    }
    /// The axis of a concatenation (its inputs may be placed in its output's bytes,
    /// where it then need not copy them).
    fn concat_axis(&self) -> Option<usize> {
        None
    }
    /// Whether inputs without elements may be left out of the step (a concatenation).
    fn skips_empty_inputs(&self) -> bool {
        false
    }
    /// Appends the step's instructions. Shapes come from `io` (a batch slice in
    /// data-parallel programs).
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError>;
}

/// What a step does.
pub enum StepKind {
    /// The output is the input's bytes under another shape (no instructions).
    Alias,
    /// Instructions.
    Emit(Box<dyn Emitter>),
}

/// One lowered node, or a fused group of nodes.
pub struct Step {
    /// Name of the (first) node.
    pub node: String,
    /// ONNX op type; fused groups join them with `+`.
    pub op_type: String,
    /// Values read on the device.
    pub inputs: Vec<ValueId>,
    /// Values written.
    pub outputs: Vec<ValueId>,
    /// How.
    pub kind: StepKind,
}

/// The first bytes of scratch tensor `t` seen as `shape` (scratch is sized for the
/// whole batch; a data-parallel slice uses less of it).
pub fn fit(t: &HbmTensor, shape: &[usize]) -> Result<HbmTensor, BuildError> {
    t.region(t.name(), 0, &super::device_shape(shape), t.dtype())
}

/// A plain copy between tensors of the same element count (DMA, HBM to HBM).
pub struct Copy;

impl Emitter for Copy {
    fn kernels(&self) -> String {
        "dma_copy".into()
    }
    fn batch_separable(&self, batched: &[bool], shapes: &[Vec<usize>], out: &[usize]) -> bool {
        batched.first() == Some(&true) && shapes.first().and_then(|s| s.first()) == out.first()
    }
    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let (src, dst) = (io.input(0)?, io.output(0)?);
        copy_flat(cx.kb, dst, src)
    }
}

/// Copies `src` into `dst` (same element count) as contiguous DMAs of ≤ 2^20 elements.
pub fn copy_flat(kb: &mut KernelBuilder, dst: &HbmTensor, src: &HbmTensor) -> Result<(), BuildError> {
    let n: usize = src.shape().iter().product();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(1 << 20);
        let d = dst.view().reshape(&[n]).slice(0, start..start + len);
        let s = src.view().reshape(&[n]).slice(0, start..start + len);
        kb.dma(d, s)?;
        start += len;
    }
    Ok(())
}
