//! `trainyard onnx-conformance DIR --device`: the simulated chip as a conformance
//! backend, run beside the interpreter.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use trainyard_arch::ChipSpec;
use trainyard_compiler::graph::{Graph, Tensor};
use trainyard_compiler::lower::{self, LowerError, LowerOptions};
use trainyard_compiler::onnx::conformance::{
    run_case, run_light_model, Backend, CaseResult, Counts, Interpreter, Outcome, Report, RunFailure,
};
use trainyard_runtime::Session;
use trainyard_sim::SimOptions;

use super::{bind_device, clip, read_output};

/// The simulated device as a conformance backend: compile (errors that name an op
/// the device cannot run are "unsupported"), bind, run functionally with race checks,
/// read back.
pub(crate) struct Device {
    pub chip: ChipSpec,
    pub cores: u16,
}

impl Backend for Device {
    fn name(&self) -> &str {
        "device"
    }

    fn run(&self, graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunFailure> {
        let opts = LowerOptions { cores: self.cores, ..Default::default() };
        let c = lower::compile(graph, &self.chip, &opts).map_err(|e| match e {
            LowerError::Unsupported { .. } | LowerError::Dtype { .. } => RunFailure::Unsupported(e.to_string()),
            e => RunFailure::Failed(e.to_string()),
        })?;
        let fail = |e: String| RunFailure::Failed(e);
        let bytes = c.bind_inputs(inputs).map_err(|e| match e {
            LowerError::Binding { .. } => RunFailure::Unsupported(e.to_string()),
            e => fail(e.to_string()),
        })?;
        let mut s = Session::new(&self.chip, &c.program, SimOptions::default()).map_err(|e| fail(e.to_string()))?;
        for t in bytes.iter().chain(&c.weight_bytes().map_err(|e| fail(e.to_string()))?) {
            bind_device(&mut s, t).map_err(|e| fail(e.to_string()))?;
        }
        s.run().map_err(|e| fail(e.to_string()))?;
        c.outputs.iter().map(|o| read_output(&s, o).map_err(|e| fail(e.to_string()))).collect()
    }
}

/// `onnx-conformance DIR --device`: every case on the interpreter and on the device;
/// per op and in total, the device's passed / failed / unsupported next to the
/// interpreter's.
pub(crate) fn conformance(dir: &Path, chip: &str, cores: u16, json_out: bool) -> Result<()> {
    let device = Device { chip: ChipSpec::by_name(chip)?, cores };
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let cases: Vec<&PathBuf> = entries.iter().filter(|p| p.join("model.onnx").is_file()).collect();
    let models: Vec<&PathBuf> = entries.iter().filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    let start = Instant::now();
    let run = |b: &dyn Backend| -> Result<Vec<CaseResult>> {
        Ok(if !cases.is_empty() {
            cases.iter().map(|c| run_case(c, b)).collect()
        } else if !models.is_empty() {
            models.iter().map(|m| run_light_model(m, b)).collect()
        } else {
            bail!("{}: no test cases (*/model.onnx) and no models (*.onnx)", dir.display());
        })
    };
    let interp = Report { cases: run(&Interpreter)? };
    let dev = Report { cases: run(&device)? };
    let (it, dt) = (interp.totals(), dev.totals());
    let (iop, dop) = (interp.per_op(), dev.per_op());
    let counts = |c: &Counts| json!({"passed": c.passed, "failed": c.failed, "unsupported": c.unsupported});
    if json_out {
        let ops: BTreeMap<&String, Value> = dop
            .iter()
            .map(|(op, c)| (op, json!({"device": counts(c), "interpreter": iop.get(op).map(counts)})))
            .collect();
        let list: Vec<Value> = dev
            .cases
            .iter()
            .map(|c| {
                let (outcome, reason) = outcome(&c.outcome);
                json!({"name": c.name, "ops": c.ops, "outcome": outcome, "reason": reason})
            })
            .collect();
        let v = json!({
            "dir": dir.display().to_string(),
            "chip": device.chip.name,
            "device": counts(&dt),
            "interpreter": counts(&it),
            "total": dt.total(),
            "seconds": start.elapsed().as_secs_f64(),
            "ops": ops,
            "cases": list,
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("{:<34} {:>21}   {:>21}", "", "device", "interpreter");
        say!("{:<34} {:>6} {:>6} {:>7}   {:>6} {:>6} {:>7}", "op", "pass", "fail", "unsup", "pass", "fail", "unsup");
        for (op, c) in &dop {
            let i = iop.get(op).copied().unwrap_or_default();
            say!(
                "{:<34} {:>6} {:>6} {:>7}   {:>6} {:>6} {:>7}",
                clip(op, 34),
                c.passed,
                c.failed,
                c.unsupported,
                i.passed,
                i.failed,
                i.unsupported
            );
        }
        for c in &dev.cases {
            if let Outcome::Failed(r) = &c.outcome {
                say!("FAILED on the device {}: {r}", c.name);
            }
        }
        say!(
            "\n{}: device {} passed, {} failed, {} unsupported; interpreter {} passed, {} failed, {} unsupported (of {} cases, {}, {:.1?})",
            dir.display(),
            dt.passed,
            dt.failed,
            dt.unsupported,
            it.passed,
            it.failed,
            it.unsupported,
            dt.total(),
            device.chip.name,
            start.elapsed()
        );
    }
    if dt.failed > 0 {
        bail!("{} of {} cases failed on the device", dt.failed, dt.total());
    }
    Ok(())
}

fn outcome(o: &Outcome) -> (&'static str, Option<String>) {
    match o {
        Outcome::Passed => ("passed", None),
        Outcome::Failed(r) => ("failed", Some(r.clone())),
        Outcome::Unsupported(r) => ("unsupported", Some(r.clone())),
    }
}
