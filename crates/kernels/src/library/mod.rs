//! The kernel library: tiled kernels over HBM tensors of any size, registered
//! by name, each with a host reference, a tolerance and its FLOP and HBM-byte
//! counts for roofline analysis.
//!
//! A kernel is a [`Kernel`]: `build` emits a [`Program`] for a shape and
//! dtype ([`KernelArgs`]); `reference` computes the same outputs on the host
//! in f64 from the inputs as the device sees them (already rounded to their
//! dtypes). [`registry`] lists every kernel; `trainyard kernels` prints it.

use std::collections::BTreeMap;

use trainyard_arch::{ChipSpec, DType, SplitMix64};
use trainyard_isa::{Program, TensorKind};

use crate::builder::{HbmTensor, KernelBuilder};

use crate::error::BuildError;

pub mod attention;
pub mod cnn;
pub mod collective;
pub mod elementwise;
pub mod matmul;
pub mod misc;
pub mod norms;

/// The parameters of one kernel instance.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelArgs {
    /// Problem shape; its meaning is the kernel's [`Kernel::shape_help`].
    pub shape: Vec<usize>,
    /// Element type of the inputs (and outputs unless an option says otherwise).
    pub dtype: DType,
    /// NeuronCores to spread the work over.
    pub cores: u16,
    /// Kernel-specific options (`key=value`), see [`Kernel::options_help`].
    pub options: BTreeMap<String, String>,
}

impl KernelArgs {
    /// Arguments with no options on one core.
    pub fn new(shape: &[usize], dtype: DType) -> Self {
        KernelArgs { shape: shape.to_vec(), dtype, cores: 1, options: BTreeMap::new() }
    }

    /// Adds an option.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.options.insert(key.to_string(), value.to_string());
        self
    }

    /// The shape, checked to have `n` positive dims; `what` names them (e.g. `M,K,N`).
    pub fn dims<const N: usize>(&self, kernel: &str, what: &str) -> Result<[usize; N], BuildError> {
        match <[usize; N]>::try_from(self.shape.as_slice()) {
            Ok(d) if d.iter().all(|&x| x > 0) => Ok(d),
            _ => Err(BuildError::Kernel {
                kernel: kernel.to_string(),
                message: format!("shape must be {N} positive sizes {what}, got {:?}", self.shape),
            }),
        }
    }

    /// A boolean option (`true`/`false`/`1`/`0`), or `default`.
    pub fn flag(&self, kernel: &str, key: &str, default: bool) -> Result<bool, BuildError> {
        match self.options.get(key).map(String::as_str) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(bad_option(kernel, key, v, "true or false")),
        }
    }

    /// An unsigned integer option, or `default`.
    pub fn usize(&self, kernel: &str, key: &str, default: usize) -> Result<usize, BuildError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| bad_option(kernel, key, v, "an unsigned integer")),
        }
    }

    /// A float option, or `default`.
    pub fn f64(&self, kernel: &str, key: &str, default: f64) -> Result<f64, BuildError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| bad_option(kernel, key, v, "a number")),
        }
    }

    /// A string option, or `default`.
    pub fn string<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.options.get(key).map(String::as_str).unwrap_or(default)
    }

    /// A dtype option (e.g. `out=f32`), or `default`.
    pub fn dtype_opt(&self, kernel: &str, key: &str, default: DType) -> Result<DType, BuildError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| bad_option(kernel, key, v, "a dtype (f32, bf16, f16, f8e4m3, ...)")),
        }
    }

    /// Errors on options the kernel does not know (so typos are not ignored).
    pub fn check_options(&self, kernel: &dyn Kernel) -> Result<(), BuildError> {
        let known: Vec<&str> = kernel.options_help().iter().map(|(k, _)| *k).collect();
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(BuildError::Kernel {
                kernel: kernel.name().to_string(),
                message: format!(
                    "unknown option `{k}` (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            }),
        }
    }
}

fn bad_option(kernel: &str, key: &str, value: &str, expected: &str) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message: format!("option `{key}={value}`: expected {expected}") }
}

/// A built kernel and what it costs at minimum.
#[derive(Clone, Debug)]
pub struct Built {
    /// The program.
    pub program: Program,
    /// Useful floating-point operations (2 per multiply-add).
    pub flops: u64,
    /// Compulsory HBM traffic: every input read once and every output written once, bytes.
    pub bytes_hbm: u64,
    /// Dtype whose Tensor-engine peak bounds the kernel (`None` for kernels
    /// that do not use the Tensor engine: their roofline is memory only).
    pub peak_dtype: Option<DType>,
}

/// How close device results must be to the host reference:
/// `|device - reference| <= atol + rtol * |reference|` for every element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute term.
    pub atol: f64,
    /// Relative term.
    pub rtol: f64,
}

impl Tolerance {
    /// Default tolerance for results stored in `dtype` after f32 arithmetic:
    /// a few units of the dtype's last place.
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype {
            DType::F32 => Tolerance { atol: 1e-5, rtol: 1e-4 },
            DType::Bf16 => Tolerance { atol: 1e-2, rtol: 2e-2 },
            DType::F16 => Tolerance { atol: 2e-3, rtol: 4e-3 },
            DType::F8E4M3 => Tolerance { atol: 0.1, rtol: 0.15 },
            DType::F8E5M2 => Tolerance { atol: 0.2, rtol: 0.3 },
            _ => Tolerance { atol: 0.0, rtol: 0.0 },
        }
    }
}

/// Named host tensors: shape and values (f64).
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// One HBM tensor a kernel instance reads or writes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSig {
    /// Name in the kernel's contract (`a`, `b`, `c`, `x`, ...).
    pub name: String,
    /// Input (read) or Output (written).
    pub kind: TensorKind,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

/// HBM tensors bound to the names of a kernel's signature.
pub type Bindings = BTreeMap<String, HbmTensor>;

/// What an emitted kernel costs at minimum (see [`Built`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Useful floating-point operations.
    pub flops: u64,
    /// Compulsory HBM traffic, bytes.
    pub bytes_hbm: u64,
    /// Dtype whose Tensor-engine peak bounds the kernel, if any.
    pub peak_dtype: Option<DType>,
}

/// Builds a standalone program for a composable kernel: declares its
/// signature's tensors (inputs with `hbm_input`, outputs with `hbm_output`)
/// and emits it.
pub fn standalone(kernel: &dyn Kernel, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
    let mut kb = KernelBuilder::new(kernel.name(), chip);
    let mut io = Bindings::new();
    for sig in kernel.signature(chip, args)? {
        let t = match sig.kind {
            TensorKind::Output => kb.hbm_output(&sig.name, &sig.shape, sig.dtype)?,
            _ => kb.hbm_input(&sig.name, &sig.shape, sig.dtype)?,
        };
        io.insert(sig.name, t);
    }
    let cost = kernel.emit(&mut kb, args, &io)?;
    Ok(Built { program: kb.finish()?, flops: cost.flops, bytes_hbm: cost.bytes_hbm, peak_dtype: cost.peak_dtype })
}

/// Checks that `io` binds every tensor of `kernel`'s signature with the right
/// shape and dtype (for callers composing kernels into a larger program).
pub fn check_bindings(
    kernel: &dyn Kernel,
    chip: &ChipSpec,
    args: &KernelArgs,
    io: &Bindings,
) -> Result<(), BuildError> {
    for sig in kernel.signature(chip, args)? {
        let t = io.get(&sig.name).ok_or_else(|| BuildError::Kernel {
            kernel: kernel.name().to_string(),
            message: format!("tensor `{}` is not bound", sig.name),
        })?;
        if t.shape() != sig.shape.as_slice() || t.dtype() != sig.dtype {
            return Err(BuildError::Kernel {
                kernel: kernel.name().to_string(),
                message: format!(
                    "tensor `{}` must be {}{:?}, the bound tensor `{}` is {}{:?}",
                    sig.name,
                    sig.dtype,
                    sig.shape,
                    t.name(),
                    t.dtype(),
                    t.shape()
                ),
            });
        }
    }
    Ok(())
}

/// A kernel of the library.
///
/// Kernels are composable: [`Kernel::emit`] appends the kernel to any
/// [`KernelBuilder`], reading and writing HBM tensors the caller binds by the
/// names of [`Kernel::signature`] (inputs, outputs or scratch of a larger
/// program), and frees every tile it allocates, so several kernels can follow
/// each other in one program with dependencies between them computed by the
/// builder. [`Kernel::build`] makes a standalone program ([`standalone`]).
pub trait Kernel: Send + Sync {
    /// Registry name (`matmul`, `softmax`, ...).
    fn name(&self) -> &'static str;
    /// Family (module) it belongs to.
    fn family(&self) -> &'static str;
    /// One-line description.
    fn summary(&self) -> &'static str;
    /// What the shape means, e.g. `M,K,N`.
    fn shape_help(&self) -> &'static str;
    /// Options as `(key, description)`.
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Dtypes the kernel accepts.
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::Bf16, DType::F16]
    }
    /// A small default shape (used by `kernel bench` without `--shape`).
    fn default_shape(&self) -> Vec<usize>;
    /// The HBM tensors of an instance: inputs, then outputs.
    fn signature(&self, _chip: &ChipSpec, _args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        Err(BuildError::Kernel { kernel: self.name().to_string(), message: "not composable yet".into() })
    }
    /// Appends the kernel's instructions to `kb` over the bound tensors `io`
    /// (checked with [`check_bindings`]) on cores `0..args.cores`, freeing
    /// every tile it allocates.
    fn emit(&self, _kb: &mut KernelBuilder, _args: &KernelArgs, _io: &Bindings) -> Result<Cost, BuildError> {
        Err(BuildError::Kernel { kernel: self.name().to_string(), message: "not composable yet".into() })
    }
    /// A standalone program for these arguments.
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError>;
    /// Host reference in f64 from the program's inputs (values as stored on the device).
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError>;
    /// For collectives: the message size and bus-bandwidth factor that turn
    /// a run's time into algorithm and bus bandwidth. `None` for other kernels.
    fn collective_size(&self, _args: &KernelArgs) -> Option<collective::CollectiveSize> {
        None
    }
    /// Accepted error against the reference.
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        Tolerance::for_dtype(args.dtype)
    }
    /// Values for an input (e.g. in-range indices); `None` = uniform in [-1, 1).
    fn input_values(&self, _args: &KernelArgs, _name: &str, _shape: &[usize], _seed: u64) -> Option<Vec<f64>> {
        None
    }
}

/// Every kernel of the library, in display order.
pub fn registry() -> Vec<Box<dyn Kernel>> {
    let mut all: Vec<Box<dyn Kernel>> = Vec::new();
    all.extend(matmul::kernels());
    all.extend(elementwise::kernels());
    all.extend(norms::kernels());
    all.extend(attention::kernels());
    all.extend(misc::kernels());
    all.extend(cnn::kernels());
    all.extend(collective::kernels());
    all
}

/// The kernel named `name`.
pub fn find(name: &str) -> Option<Box<dyn Kernel>> {
    registry().into_iter().find(|k| k.name() == name)
}

/// Checks a kernel's options, dtype and core count against the chip (what
/// [`build`] and every [`Kernel::emit`] check before emitting anything).
pub fn check_args(kernel: &dyn Kernel, chip: &ChipSpec, args: &KernelArgs) -> Result<(), BuildError> {
    args.check_options(kernel)?;
    if !kernel.dtypes().contains(&args.dtype) {
        return Err(BuildError::Kernel {
            kernel: kernel.name().to_string(),
            message: format!(
                "dtype {} is not supported (supported: {})",
                args.dtype,
                kernel.dtypes().iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let cores = chip.total_cores();
    if args.cores == 0 || args.cores as u32 > cores {
        return Err(BuildError::Kernel {
            kernel: kernel.name().to_string(),
            message: format!("--cores {} is outside 1..={cores} for {} x {}", args.cores, chip.chips(), chip.name),
        });
    }
    Ok(())
}

/// The tensor bound to `name` (present once [`check_bindings`] passed).
pub fn bound<'a>(kernel: &str, io: &'a Bindings, name: &str) -> Result<&'a HbmTensor, BuildError> {
    io.get(name).ok_or_else(|| BuildError::Kernel {
        kernel: kernel.to_string(),
        message: format!("tensor `{name}` is not bound"),
    })
}

/// Builds a kernel after checking its options, dtype and cores.
pub fn build(kernel: &dyn Kernel, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
    check_args(kernel, chip, args)?;
    kernel.build(chip, args)
}

/// Uniform values in [-1, 1) from a seed (the default kernel inputs).
pub fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
}

/// Peak Tensor-engine FLOP/s of `cores` NeuronCores for `dtype` inputs,
/// derived from the array size and clock (HW-CHIP-PEAK-CHECK), ×4 slower for
/// FP32 (HW-PE-FP32), ×`fp8_speedup` for fp8 (HW-PE-FP8X2-V3).
pub fn peak_flops(chip: &ChipSpec, dtype: DType, cores: u16) -> f64 {
    let t = &chip.core.tensor;
    let base = chip.core_peak_tflops_bf16() * 1e12 * cores as f64;
    match dtype {
        DType::F32 => base / t.fp32_factor as f64,
        d if d.is_fp8() => base * t.fp8_speedup as f64,
        _ => base,
    }
}

/// Memory bandwidth available to `cores` cores, bytes/s: their DMA engines,
/// capped by the HBM of the chips they span (HW-DMA-BW-EFF, HW-CHIP-*-HBM, HW-HBM-SHARE).
pub fn memory_bandwidth(chip: &ChipSpec, cores: u16) -> f64 {
    let chips = (cores as u32).div_ceil(chip.chip.cores.max(1)).max(1);
    (chip.core_dma_gbps() * cores as f64).min(chip.chip.hbm_gbps * chips as f64) * 1e9
}

/// The roofline bound in ns: the larger of compute time at peak and
/// compulsory HBM traffic at full bandwidth.
pub fn roofline_ns(chip: &ChipSpec, built: &Built, cores: u16) -> f64 {
    let compute = match built.peak_dtype {
        Some(d) => built.flops as f64 / peak_flops(chip, d, cores),
        None => 0.0,
    };
    let memory = built.bytes_hbm as f64 / memory_bandwidth(chip, cores);
    compute.max(memory) * 1e9
}
