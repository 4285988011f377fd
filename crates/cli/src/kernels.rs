//! `trainyard kernels`, `trainyard kernel bench|emit` and `trainyard bench kernels`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;
use trainyard_arch::{ChipSpec, DType};
use trainyard_kernels::harness::{run_kernel, KernelRun};
use trainyard_kernels::library::{self, Kernel, KernelArgs};
use trainyard_sim::{Mode, SimOptions};

/// Parses `4096,8192,8192` or `4096x8192x8192`.
pub fn parse_dims(s: &str) -> Result<Vec<usize>> {
    let dims: Vec<usize> = s
        .split([',', 'x', 'X'])
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("shape `{s}`: expected sizes like 4096,8192,8192"))?;
    if dims.is_empty() {
        bail!("shape `{s}` is empty");
    }
    Ok(dims)
}

fn find(name: &str) -> Result<Box<dyn Kernel>> {
    library::find(name).with_context(|| {
        let names: Vec<&str> = library::registry().iter().map(|k| k.name()).collect();
        format!("no kernel named `{name}` (known: {})", names.join(", "))
    })
}

/// Kernel, chip and arguments from the command line.
pub struct Selection {
    pub kernel: Box<dyn Kernel>,
    pub chip: ChipSpec,
    pub args: KernelArgs,
}

pub fn select(
    name: &str,
    chip: &str,
    shape: Option<&str>,
    dtype: &str,
    cores: u16,
    opts: &[String],
) -> Result<Selection> {
    let kernel = find(name)?;
    let chip = ChipSpec::by_name(chip)?;
    let dtype: DType = dtype.parse()?;
    let shape = match shape {
        Some(s) => parse_dims(s)?,
        None => kernel.default_shape(),
    };
    let mut args = KernelArgs::new(&shape, dtype);
    args.cores = cores;
    for o in opts {
        let (k, v) = o.split_once('=').with_context(|| format!("--opt `{o}`: expected KEY=VALUE"))?;
        args.options.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(Selection { kernel, chip, args })
}

pub fn list(json_out: bool) -> Result<()> {
    let reg = library::registry();
    if json_out {
        let v: Vec<_> = reg
            .iter()
            .map(|k| {
                json!({
                    "name": k.name(),
                    "family": k.family(),
                    "summary": k.summary(),
                    "shape": k.shape_help(),
                    "default_shape": k.default_shape(),
                    "dtypes": k.dtypes().iter().map(|d| d.name()).collect::<Vec<_>>(),
                    "options": k.options_help().iter().map(|(o, d)| json!({"name": o, "help": d})).collect::<Vec<_>>(),
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for k in &reg {
        say!("{:<18} [{}] {}", k.name(), k.family(), k.summary());
        say!(
            "{:<18} shape {}  dtypes {}",
            "",
            k.shape_help(),
            k.dtypes().iter().map(|d| d.name()).collect::<Vec<_>>().join(",")
        );
        for (o, d) in k.options_help() {
            say!("{:<18}   --opt {o}=…  {d}", "");
        }
    }
    Ok(())
}

/// Figures of one kernel run, with the contract's JSON keys.
pub fn figures(sel: &Selection, run: &KernelRun) -> serde_json::Value {
    let chip = &sel.chip;
    let cores = sel.args.cores;
    let total_ns = run.profile.total_ns;
    let peak_dtype = run.built.peak_dtype.unwrap_or(sel.args.dtype);
    let peak = library::peak_flops(chip, peak_dtype, cores);
    let achieved = if total_ns > 0.0 { run.built.flops as f64 / (total_ns * 1e-9) } else { 0.0 };
    let roofline_ns = library::roofline_ns(chip, &run.built, cores);
    let engines: serde_json::Map<String, serde_json::Value> = run
        .profile
        .engines
        .iter()
        .map(|(k, e)| {
            (k.clone(), json!({"utilization": e.utilization, "busy_ns": e.busy_ns, "instructions": e.instructions}))
        })
        .collect();
    let mut v = json!({
        "kernel": sel.kernel.name(),
        "chip": chip.name,
        "shape": sel.args.shape,
        "dtype": sel.args.dtype.name(),
        "cores": cores,
        "options": sel.args.options,
        "mode": run.profile.mode,
        "instructions": run.profile.instructions,
        "total_ns": total_ns,
        "flops": run.built.flops,
        "bytes_hbm": run.built.bytes_hbm,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_dtype": peak_dtype.name(),
        "pct_of_peak": 100.0 * achieved / peak,
        "roofline_ns": roofline_ns,
        "roofline_bound": if run.built.peak_dtype.is_some() && run.built.flops as f64 / peak * 1e9 >= run.built.bytes_hbm as f64 / library::memory_bandwidth(chip, cores) * 1e9 { "compute" } else { "memory" },
        "pct_of_roofline": if total_ns > 0.0 { 100.0 * roofline_ns / total_ns } else { 0.0 },
        "dma_gbps": run.profile.dma.gbps,
        "engines": engines,
    });
    if let Some(obj) = v.as_object_mut() {
        obj.insert("chips".into(), json!(chip.chips()));
        if let Some(system) = &chip.system {
            obj.insert("system".into(), json!(system.spec.name));
        }
        if let Some(c) = sel.kernel.collective_size(&sel.args) {
            let algbw = if total_ns > 0.0 { c.bytes as f64 / total_ns } else { 0.0 };
            obj.insert(
                "collective".into(),
                json!({
                    "participants": c.participants,
                    "message_bytes": c.bytes,
                    "algbw_gbps": algbw,
                    "busbw_gbps": algbw * c.bus_factor,
                    "bus_factor": c.bus_factor,
                }),
            );
        }
        obj.insert("link_bytes".into(), json!(run.profile.dma.link_bytes));
        obj.insert("links".into(), serde_json::to_value(&run.profile.links).unwrap_or_default());
    }
    if let (Some(check), Some(obj)) = (&run.check, v.as_object_mut()) {
        obj.insert("max_abs_err".into(), json!(check.max_abs_err));
        obj.insert("max_rel_err".into(), json!(check.max_rel_err));
        obj.insert("tolerance".into(), json!({"atol": check.tolerance.atol, "rtol": check.tolerance.rtol}));
        obj.insert("check_passed".into(), json!(check.passed));
        if let Some((t, i, d, r)) = &check.worst {
            obj.insert("worst".into(), json!({"tensor": t, "index": i, "device": d, "reference": r}));
        }
    }
    v
}

fn print_figures(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    say!(
        "{} on {} ({} core{}) shape {} {} [{}]",
        v["kernel"].as_str().unwrap_or(""),
        v["chip"].as_str().unwrap_or(""),
        v["cores"],
        if v["cores"].as_u64() == Some(1) { "" } else { "s" },
        v["shape"],
        v["dtype"].as_str().unwrap_or(""),
        v["mode"].as_str().unwrap_or("")
    );
    say!("  time        {:.3} us simulated, {} instructions", f("total_ns") / 1e3, v["instructions"]);
    say!(
        "  compute     {:.2} TFLOPS = {:.1}% of the {:.1} TFLOPS {} peak",
        f("achieved_tflops"),
        f("pct_of_peak"),
        f("peak_tflops"),
        v["peak_dtype"].as_str().unwrap_or("")
    );
    say!(
        "  roofline    {:.3} us ({}-bound) = {:.1}% of roofline",
        f("roofline_ns") / 1e3,
        v["roofline_bound"].as_str().unwrap_or(""),
        f("pct_of_roofline")
    );
    say!("  memory      {} bytes compulsory HBM traffic, DMA {:.1} GB/s achieved", v["bytes_hbm"], f("dma_gbps"));
    if let Some(c) = v.get("collective") {
        let g = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
        say!(
            "  collective  {} participants on {} chip(s), {} bytes: algorithm bandwidth {:.1} GB/s, bus bandwidth {:.1} GB/s",
            c["participants"],
            v["chips"],
            c["message_bytes"],
            g("algbw_gbps"),
            g("busbw_gbps")
        );
    }
    if let Some(links) = v["links"].as_object().filter(|l| !l.is_empty()) {
        let busiest = links
            .iter()
            .map(|(k, l)| (k, l["achieved_gbps"].as_f64().unwrap_or(0.0), l["utilization"].as_f64().unwrap_or(0.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((name, gbps, util)) = busiest {
            say!(
                "  links       {} bytes over {} links; busiest {name}: {gbps:.1} GB/s, busy {:.0}% of the time",
                v["link_bytes"],
                links.len(),
                100.0 * util
            );
        }
    }
    if let Some(engines) = v["engines"].as_object() {
        let parts: Vec<String> = engines
            .iter()
            .filter(|(_, e)| e["instructions"].as_u64().unwrap_or(0) > 0)
            .map(|(k, e)| format!("{k} {:.0}%", 100.0 * e["utilization"].as_f64().unwrap_or(0.0)))
            .collect();
        say!("  engines     {}", parts.join(", "));
    }
    if v.get("max_abs_err").is_some() {
        say!(
            "  check       max abs err {:.3e}, max rel err {:.3e} (tolerance atol {} rtol {}): {}",
            f("max_abs_err"),
            f("max_rel_err"),
            v["tolerance"]["atol"],
            v["tolerance"]["rtol"],
            if v["check_passed"].as_bool() == Some(true) { "ok" } else { "FAILED" }
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn bench(
    sel: Selection,
    timed_only: bool,
    json_out: bool,
    seed: u64,
    trace: Option<&Path>,
    no_race_check: bool,
) -> Result<()> {
    let opts = SimOptions {
        mode: if timed_only { Mode::TimedOnly } else { Mode::Functional },
        check_races: !no_race_check,
        record_events: trace.is_some(),
        ..SimOptions::default()
    };
    let run = run_kernel(sel.kernel.as_ref(), &sel.chip, &sel.args, opts, seed)?;
    if let Some(path) = trace {
        let result = run.result.as_ref().context("no run result to trace")?;
        trainyard_runtime::write_trace(path, &sel.chip, &run.built.program, result)?;
    }
    let v = figures(&sel, &run);
    if json_out {
        say!("{}", serde_json::to_string(&v)?);
    } else {
        print_figures(&v);
        if let Some(path) = trace {
            say!("  trace       {}", path.display());
        }
    }
    if run.check.as_ref().is_some_and(|c| !c.passed) {
        bail!("{}: results differ from the host reference beyond tolerance", sel.kernel.name());
    }
    Ok(())
}

pub fn emit(sel: Selection, out: &Path) -> Result<()> {
    let built = library::build(sel.kernel.as_ref(), &sel.chip, &sel.args)?;
    let bytes = if out.extension().is_some_and(|e| e == "tyb") {
        built.program.to_bytes()
    } else {
        built.program.to_text().into_bytes()
    };
    let tmp = out.with_extension("tmp-trainyard");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    say!(
        "wrote {} ({} instructions, inputs: {})",
        out.display(),
        built.program.insts.len(),
        built
            .program
            .tensors
            .iter()
            .filter(|t| t.kind == trainyard_isa::TensorKind::Input)
            .map(|t| format!("{} {}{:?}", t.name, t.dtype, t.shape))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// One benchmark of the suite: (kernel, chip, shape, dtype, options, target).
type SuiteEntry = (&'static str, &'static str, &'static str, &'static str, &'static [&'static str], &'static str);

/// The fixed benchmark suite.
const SUITE: &[SuiteEntry] = &[
    ("matmul", "trn1", "4096,8192,8192", "bf16", &["transpose_a=true"], "pct_of_peak >= 85"),
    ("matmul", "trn2", "4096,8192,8192", "bf16", &["transpose_a=true"], ""),
    ("flash_attention", "trn2", "1,32,4096,128", "bf16", &["causal=false"], "pct_of_peak >= 60"),
    ("flash_attention", "trn2", "1,32,4096,128", "bf16", &["causal=true"], "pct_of_peak >= 60"),
    ("layernorm", "trn2", "4096,8192", "bf16", &[], "pct_of_roofline >= 70"),
    ("rmsnorm", "trn2", "4096,8192", "bf16", &[], "pct_of_roofline >= 70"),
    ("softmax", "trn2", "4096,8192", "bf16", &[], "pct_of_roofline >= 70"),
    ("decode_attention", "trn2", "1,32,2048,128", "bf16", &["kv_heads=8"], ""),
    ("mlp", "trn2", "512,4096,14336", "bf16", &[], ""),
];

const QUICK_SUITE: &[SuiteEntry] = &[
    ("matmul", "trn1", "512,1024,1024", "bf16", &["transpose_a=true"], ""),
    ("flash_attention", "trn2", "1,2,512,128", "bf16", &["causal=false"], ""),
    ("layernorm", "trn2", "512,8192", "bf16", &[], ""),
    ("rmsnorm", "trn2", "512,8192", "bf16", &[], ""),
    ("softmax", "trn2", "512,8192", "bf16", &[], ""),
];

pub fn bench_suite(json_out: bool, quick: bool) -> Result<()> {
    let suite = if quick { QUICK_SUITE } else { SUITE };
    let mut rows = Vec::new();
    for (name, chip, shape, dtype, opts, target) in suite {
        if library::find(name).is_none() {
            rows.push(json!({"kernel": name, "chip": chip, "shape": shape, "error": "not in this build's library"}));
            continue;
        }
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        let sel = select(name, chip, Some(shape), dtype, 1, &opts)?;
        let run_opts =
            SimOptions { mode: Mode::TimedOnly, check_races: false, record_events: false, ..SimOptions::default() };
        let wall = std::time::Instant::now();
        let row = match run_kernel(sel.kernel.as_ref(), &sel.chip, &sel.args, run_opts, 0) {
            Ok(run) => {
                let mut v = figures(&sel, &run);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("target".into(), json!(target));
                    obj.insert("wall_s".into(), json!(wall.elapsed().as_secs_f64()));
                }
                v
            }
            Err(e) => json!({"kernel": name, "chip": chip, "shape": shape, "error": e.to_string()}),
        };
        rows.push(row);
    }
    if json_out {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    say!("trainyard bench kernels (timed-only simulation, one NeuronCore each)");
    say!(
        "| kernel | chip | shape | dtype | options | sim time | TFLOPS | % of peak | % of roofline | bound | target | wall |"
    );
    say!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        if let Some(e) = r.get("error") {
            say!(
                "| {} | {} | {} | | | error: {} | | | | | | |",
                r["kernel"].as_str().unwrap_or(""),
                r["chip"].as_str().unwrap_or(""),
                r["shape"].as_str().unwrap_or(""),
                e.as_str().unwrap_or("")
            );
            continue;
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        // Kernels that do not use the Tensor engine have no compute peak to compare with.
        let pct_peak = if r["roofline_bound"] == "memory" && f("achieved_tflops") < 0.05 * f("peak_tflops") {
            "-".to_string()
        } else {
            format!("{:.1}%", f("pct_of_peak"))
        };
        let opts: Vec<String> = r["options"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        say!(
            "| {} | {} | {} | {} | {} | {:.1} us | {:.1} | {} | {:.1}% | {} | {} | {:.2} s |",
            r["kernel"].as_str().unwrap_or(""),
            r["chip"].as_str().unwrap_or(""),
            r["shape"]
                .as_array()
                .map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x"))
                .unwrap_or_default(),
            r["dtype"].as_str().unwrap_or(""),
            opts.join(" "),
            f("total_ns") / 1e3,
            f("achieved_tflops"),
            pct_peak,
            f("pct_of_roofline"),
            r["roofline_bound"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            f("wall_s"),
        );
    }
    Ok(())
}
