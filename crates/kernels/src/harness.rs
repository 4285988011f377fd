//! Runs a library kernel in the simulator and checks it against its host
//! reference (feature `harness`; always available in this crate's tests).

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::TensorKind;
use trainyard_runtime::{HostTensor, Profile, RuntimeError, Session};
use trainyard_sim::{Mode, RunResult, SimOptions};

use crate::library::{self, Built, HostTensors, Kernel, KernelArgs, Tolerance};
use crate::BuildError;

/// Why a kernel run failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The kernel could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The simulation failed (race, bounds, ...).
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
}

impl From<RuntimeError> for HarnessError {
    fn from(e: RuntimeError) -> Self {
        HarnessError::Runtime(Box::new(e))
    }
}

/// Device results against the host reference.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// Largest |device − reference|.
    pub max_abs_err: f64,
    /// Largest |device − reference| / |reference| over elements whose
    /// reference magnitude is at least 1e-3 of the tensor's largest.
    pub max_rel_err: f64,
    /// The worst element against the tolerance: (tensor, flat index, device, reference).
    pub worst: Option<(String, usize, f64, f64)>,
    /// The tolerance applied.
    pub tolerance: Tolerance,
    /// Every element within tolerance (NaN never is, unless both are NaN).
    pub passed: bool,
}

/// A built and simulated kernel.
pub struct KernelRun {
    /// What was built.
    pub built: Built,
    /// Profile of the run.
    pub profile: Profile,
    /// Raw simulator result.
    pub result: Option<RunResult>,
    /// Comparison with the reference (functional runs only).
    pub check: Option<CheckReport>,
}

fn seed_for(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0x5EED, |h, b| h.wrapping_mul(0x100_0000_01B3).wrapping_add(b as u64))
}

/// Builds `kernel`, runs it with seeded inputs, and (in functional mode)
/// compares every output with the reference.
pub fn run_kernel(
    kernel: &dyn Kernel,
    chip: &ChipSpec,
    args: &KernelArgs,
    opts: SimOptions,
    seed: u64,
) -> Result<KernelRun, HarnessError> {
    let built = library::build(kernel, chip, args)?;
    let functional = opts.mode == Mode::Functional;
    let program = &built.program;
    let mut session = Session::new(chip, program, opts)?;
    if functional {
        for t in program.tensors.iter().filter(|t| t.kind == TensorKind::Input) {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let n = t.elements() as usize;
            let values = kernel
                .input_values(args, &t.name, &shape, seed_for(seed, &t.name))
                .unwrap_or_else(|| library::uniform(n, seed_for(seed, &t.name)));
            let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            session.bind(&t.name, &HostTensor::from_f32(t.shape.clone(), t.dtype, &f))?;
        }
    }
    let profile = session.run()?;
    let check = if functional { Some(check_outputs(kernel, args, &session)?) } else { None };
    let result = session.result().cloned();
    Ok(KernelRun { built: built.clone(), profile, result, check })
}

fn tensors(session: &Session, kind: TensorKind) -> Result<HostTensors, HarnessError> {
    let mut out = HostTensors::new();
    for t in session.program().tensors.iter().filter(|t| t.kind == kind) {
        let v = session.output(&t.name)?;
        let shape = t.shape.iter().map(|&d| d as usize).collect();
        out.insert(t.name.clone(), (shape, v.to_f32().into_iter().map(f64::from).collect()));
    }
    Ok(out)
}

fn check_outputs(kernel: &dyn Kernel, args: &KernelArgs, session: &Session) -> Result<CheckReport, HarnessError> {
    let inputs = tensors(session, TensorKind::Input)?;
    let outputs = tensors(session, TensorKind::Output)?;
    let expected = kernel.reference(args, &inputs)?;
    let tolerance = kernel.tolerance(args);
    Ok(compare(&outputs, &expected, tolerance))
}

/// Compares device outputs with reference outputs (by name).
pub fn compare(got: &HostTensors, want: &HostTensors, tolerance: Tolerance) -> CheckReport {
    let mut report = CheckReport { max_abs_err: 0.0, max_rel_err: 0.0, worst: None, tolerance, passed: true };
    let mut worst_excess = f64::NEG_INFINITY;
    for (name, (_, w)) in want {
        let Some((_, g)) = got.get(name) else {
            report.passed = false;
            report.worst = Some((format!("{name} (missing output)"), 0, f64::NAN, f64::NAN));
            continue;
        };
        if g.len() != w.len() {
            report.passed = false;
            report.worst = Some((format!("{name} (length {} vs {})", g.len(), w.len()), 0, f64::NAN, f64::NAN));
            continue;
        }
        let scale = w.iter().fold(0.0f64, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
        for (i, (&d, &r)) in g.iter().zip(w).enumerate() {
            let both_nan = d.is_nan() && r.is_nan();
            let same_inf = d.is_infinite() && d == r;
            let err = if both_nan || same_inf { 0.0 } else { (d - r).abs() };
            let err = if err.is_nan() { f64::INFINITY } else { err };
            report.max_abs_err = report.max_abs_err.max(err);
            if r.abs() >= 1e-3 * scale && r != 0.0 {
                report.max_rel_err = report.max_rel_err.max(err / r.abs());
            }
            let excess = err - (tolerance.atol + tolerance.rtol * r.abs());
            if excess > 0.0 {
                report.passed = false;
            }
            if excess > worst_excess {
                worst_excess = excess;
                report.worst = Some((name.clone(), i, d, r));
            }
        }
    }
    report
}

/// Rounds host values to `dtype` (what the device stores).
pub fn round_to(dtype: DType, values: &[f64]) -> Vec<f64> {
    values.iter().map(|&v| dtype.round(v as f32) as f64).collect()
}
