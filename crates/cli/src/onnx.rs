//! `trainyard interpret` (the reference interpreter on an ONNX model) and
//! `trainyard onnx-conformance` (an ONNX backend test directory on the interpreter).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use trainyard_compiler::graph::{DataType, Tensor};
use trainyard_compiler::onnx::conformance::{
    import_for, run_case, run_light_model, Backend, CaseResult, Interpreter, OptimizedInterpreter, Outcome, Report,
};
use trainyard_compiler::onnx::Model;
use trainyard_compiler::{interp, passes};
use trainyard_runtime::{output_file_name, read_npy, write_npy, HostTensor};

/// Arguments of `trainyard interpret`.
#[derive(clap::Args)]
pub(crate) struct InterpretArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Bind an input: NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Shape of an unbound input with symbolic dimensions: NAME=D1,D2,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=D1,D2")]
    input_shapes: Vec<String>,
    /// Fill unbound inputs with seeded values (floats uniform in [0, 1), integers 0).
    #[arg(long)]
    random_inputs: bool,
    /// Seed of --random-inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the graph passes (folding, dead code, fusion, layouts) before interpreting.
    #[arg(long)]
    optimize: bool,
    /// Print the graph IR (after --optimize's passes) before running it.
    #[arg(long)]
    print_graph: bool,
    /// Write every output as DIR/NAME.npy.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print one JSON object with every output's values.
    #[arg(long)]
    json: bool,
}

/// Arguments of `trainyard onnx-conformance`.
#[derive(clap::Args)]
pub(crate) struct ConformanceArgs {
    /// A node-test directory (`*/model.onnx` + `test_data_set_*/`) or a light-model
    /// directory (`NAME.onnx` + `NAME_output_0.pb`).
    dir: PathBuf,
    /// Run each graph through the optimization passes first.
    #[arg(long)]
    optimize: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also run every case on the simulated chip (compiled by the lowering).
    #[arg(long)]
    device: bool,
    /// Chip of --device.
    #[arg(long, default_value = trainyard_arch::DEFAULT_CHIP)]
    chip: String,
    /// Cores of --device.
    #[arg(long, default_value_t = 1)]
    cores: u16,
}

/// A host tensor read from `.npy`, converted to the element type the model declares.
pub(crate) fn to_graph_tensor(h: &HostTensor, want: DataType, what: &str) -> Result<Tensor> {
    let shape: Vec<usize> = h.shape.iter().map(|&d| d as usize).collect();
    let size = h.dtype.size();
    if h.dtype.is_float() {
        if !want.is_float() {
            bail!("{what}: the model wants {want}, the file holds floats ({})", h.dtype.name());
        }
        return Tensor::from_f64(want, shape, h.to_f32().iter().map(|&v| v as f64).collect())
            .map_err(|e| anyhow!("{what}: {e}"));
    }
    if want.is_float() {
        bail!("{what}: the model wants {want}, the file holds integers ({})", h.dtype.name());
    }
    let (lo, hi) = want.int_range().unwrap_or((0, 0));
    let mut v = Vec::with_capacity(h.data.len() / size.max(1));
    for (i, c) in h.data.chunks_exact(size).enumerate() {
        let x = h.dtype.decode_int(h.dtype.load_bits(c)) as i128;
        if x < lo || x > hi {
            bail!("{what}: element {i} = {x} does not fit {want}");
        }
        v.push(x);
    }
    Tensor::from_i128(want, shape, v).map_err(|e| anyhow!("{what}: {e}"))
}

/// A graph tensor as a host tensor `.npy` can hold; returns a note when it was narrowed.
pub(crate) fn to_host(t: &Tensor, name: &str) -> Result<(HostTensor, Option<String>)> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    if let Some(d) = t.dtype().device_dtype() {
        return Ok((HostTensor { dtype: d, shape, data: t.to_le_bytes() }, None));
    }
    let (dtype, note) = match t.dtype() {
        DataType::F64 => (trainyard_arch::DType::F32, "float64 written as float32"),
        DataType::Bool => (trainyard_arch::DType::U8, "bool written as uint8"),
        DataType::I64 => (trainyard_arch::DType::I32, "int64 written as int32"),
        _ => (trainyard_arch::DType::U32, "uint64 written as uint32"),
    };
    let host = if dtype.is_float() {
        HostTensor::from_f32(shape, dtype, &t.to_f32_vec())
    } else {
        let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
        let mut data = Vec::with_capacity(t.len() * 4);
        for (i, &v) in t.to_i128_vec().iter().enumerate() {
            if v < lo as i128 || v > hi as i128 {
                bail!("output `{name}`: element {i} = {v} does not fit {}", dtype.name());
            }
            data.extend_from_slice(&(v as i64 as u32).to_le_bytes()[..dtype.size()]);
        }
        HostTensor { dtype, shape, data }
    };
    Ok((host, Some(format!("output `{name}`: {note}"))))
}

pub(crate) fn split_binding<'a>(s: &'a str, flag: &str) -> Result<(&'a str, &'a str)> {
    s.split_once('=').ok_or_else(|| anyhow!("{flag} `{s}`: expected NAME=VALUE"))
}

pub(crate) fn seeded_input(dtype: DataType, shape: Vec<usize>, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if !dtype.is_float() {
        return Ok(Tensor::zeros(dtype, shape));
    }
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
    let v = (0..n)
        .map(|_| {
            // splitmix64
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    Tensor::from_f64(dtype, shape, v).map_err(|e| anyhow!(e))
}

pub(crate) fn interpret(args: InterpretArgs) -> Result<()> {
    let model = Model::load(&args.model)?;
    let declared = model.inputs();
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    let mut notes = vec![];
    for b in &args.inputs {
        let (name, file) = split_binding(b, "--input")?;
        let info = declared
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("--input {name}: the model has no input `{name}` (inputs: {})", names(&declared)))?;
        let want = info.dtype.clone().map_err(|t| anyhow!("input `{name}` has unsupported type {t}"))?;
        let host = read_npy(Path::new(file)).with_context(|| format!("--input {name}"))?;
        let t = to_graph_tensor(&host, want, &format!("input `{name}` ({file})"))?;
        if want.is_float() && want.device_dtype() != Some(host.dtype) {
            notes.push(format!("input `{name}`: {} data rounded to {want}", host.dtype.name()));
        }
        inputs.insert(name.to_string(), t);
    }
    let mut shapes = HashMap::new();
    for s in &args.input_shapes {
        let (name, dims) = split_binding(s, "--input-shape")?;
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse().map_err(|_| anyhow!("--input-shape {name}: `{d}` is not a dimension")))
            .collect::<Result<_>>()?;
        shapes.insert(name.to_string(), dims);
    }
    let mut missing = vec![];
    for (k, info) in declared.iter().enumerate() {
        if inputs.contains_key(&info.name) {
            continue;
        }
        if !args.random_inputs {
            let dims: Vec<String> = info.dims.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
            let ty = info.dtype.as_ref().map_or("?", |t| t.name());
            missing.push(format!("{} ({ty}[{}])", info.name, dims.join(", ")));
            continue;
        }
        let dtype = info.dtype.clone().map_err(|t| anyhow!("input `{}` has unsupported type {t}", info.name))?;
        let shape = match shapes.get(&info.name) {
            Some(s) => s.clone(),
            None => info
                .dims
                .iter()
                .map(|d| {
                    d.ok_or_else(|| {
                        anyhow!("input `{}` has symbolic dimensions: give --input-shape {}=...", info.name, info.name)
                    })
                })
                .collect::<Result<_>>()?,
        };
        inputs.insert(info.name.clone(), seeded_input(dtype, shape, args.seed.wrapping_add(k as u64))?);
    }
    if !missing.is_empty() {
        bail!(
            "unbound model inputs: {} (bind them with --input NAME=FILE.npy, or use --random-inputs)",
            missing.join(", ")
        );
    }
    let start = Instant::now();
    let mut graph = import_for(&model, &inputs)?;
    if args.optimize {
        passes::optimize(&mut graph)?;
    }
    if args.print_graph {
        say!("{graph}");
    }
    let compiled = start.elapsed();
    let runtime: HashMap<String, Tensor> = graph
        .inputs
        .iter()
        .filter_map(|&i| inputs.get_key_value(&graph.value(i).name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let outputs = interp::run(&graph, &runtime)?;
    let ran = start.elapsed() - compiled;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, t) in &outputs {
            let (host, note) = to_host(t, name)?;
            notes.extend(note);
            write_npy(&dir.join(output_file_name(name)), &host)?;
        }
    }
    if args.json {
        let outs: Vec<Value> = outputs
            .iter()
            .map(|(name, t)| {
                let values: Vec<Value> = if t.dtype().is_float() {
                    t.to_f64_vec().into_iter().map(|v| json!(v)).collect()
                } else {
                    t.to_i64_vec().into_iter().map(|v| json!(v)).collect()
                };
                json!({"name": name, "dtype": t.dtype().name(), "shape": t.shape(), "values": values})
            })
            .collect();
        let v = json!({
            "model": args.model.display().to_string(),
            "nodes": graph.nodes.len(),
            "compile_seconds": compiled.as_secs_f64(),
            "run_seconds": ran.as_secs_f64(),
            "outputs": outs,
            "notes": notes,
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "{}: {} nodes, imported in {:.2?}, interpreted in {:.2?}",
        args.model.display(),
        graph.nodes.len(),
        compiled,
        ran
    );
    for (name, t) in &outputs {
        let v = t.to_f64_vec();
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let head: Vec<String> = v.iter().take(8).map(|x| format!("{x:.6}")).collect();
        say!(
            "  {name}: {}{:?}  min {lo:.6}  max {hi:.6}  mean {mean:.6}  [{}{}]",
            t.dtype(),
            t.shape(),
            head.join(", "),
            if v.len() > 8 { ", ..." } else { "" }
        );
    }
    for n in notes {
        say!("note: {n}");
    }
    Ok(())
}

pub(crate) fn names(declared: &[trainyard_compiler::onnx::InputInfo]) -> String {
    declared.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Strips the node name from a reason so that equal causes group together.
fn cause(reason: &str) -> String {
    for prefix in ["node `", "graph input `"] {
        if let Some(rest) = reason.strip_prefix(prefix).and_then(|r| r.find('`').map(|i| &r[i + 1..])) {
            let rest = rest.trim_start_matches(':').trim_start();
            return if prefix == "node `" { rest.to_string() } else { format!("graph input: {rest}") };
        }
    }
    reason.to_string()
}

pub(crate) fn conformance(args: ConformanceArgs) -> Result<()> {
    if args.device {
        return crate::onnx_device::conformance(&args.dir, &args.chip, args.cores, args.json);
    }
    let backend: &dyn Backend = if args.optimize { &OptimizedInterpreter } else { &Interpreter };
    let rd = std::fs::read_dir(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let cases: Vec<&PathBuf> = entries.iter().filter(|p| p.join("model.onnx").is_file()).collect();
    let models: Vec<&PathBuf> = entries.iter().filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    let start = Instant::now();
    let results: Vec<CaseResult> = if !cases.is_empty() {
        cases.iter().map(|c| run_case(c, backend)).collect()
    } else if !models.is_empty() {
        models.iter().map(|m| run_light_model(m, backend)).collect()
    } else {
        bail!("{}: no test cases (*/model.onnx) and no models (*.onnx)", args.dir.display());
    };
    let report = Report { cases: results };
    let totals = report.totals();
    let per_op = report.per_op();
    if args.json {
        let ops: BTreeMap<&String, Value> = per_op
            .iter()
            .map(|(op, c)| (op, json!({"passed": c.passed, "failed": c.failed, "unsupported": c.unsupported})))
            .collect();
        let cases: Vec<Value> = report
            .cases
            .iter()
            .map(|c| {
                let (outcome, reason) = match &c.outcome {
                    Outcome::Passed => ("passed", None),
                    Outcome::Failed(r) => ("failed", Some(r.clone())),
                    Outcome::Unsupported(r) => ("unsupported", Some(r.clone())),
                };
                json!({"name": c.name, "ops": c.ops, "outcome": outcome, "reason": reason})
            })
            .collect();
        let v = json!({
            "dir": args.dir.display().to_string(),
            "backend": backend.name(),
            "passed": totals.passed,
            "failed": totals.failed,
            "unsupported": totals.unsupported,
            "total": totals.total(),
            "seconds": start.elapsed().as_secs_f64(),
            "ops": ops,
            "cases": cases,
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("{:<34} {:>7} {:>7} {:>12}", "op", "passed", "failed", "unsupported");
        for (op, c) in &per_op {
            say!("{op:<34} {:>7} {:>7} {:>12}", c.passed, c.failed, c.unsupported);
        }
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        for c in &report.cases {
            match &c.outcome {
                Outcome::Failed(r) => say!("FAILED {}: {r}", c.name),
                Outcome::Unsupported(r) => *causes.entry(cause(r)).or_default() += 1,
                Outcome::Passed => {}
            }
        }
        say!("\nunsupported, by cause:");
        let mut by_count: Vec<(&String, &usize)> = causes.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (r, n) in by_count {
            say!("  {n:>4}  {r}");
        }
        say!(
            "\n{}: {} passed, {} failed, {} unsupported (of {} cases, {} backend, {:.1?})",
            args.dir.display(),
            totals.passed,
            totals.failed,
            totals.unsupported,
            totals.total(),
            backend.name(),
            start.elapsed()
        );
    }
    if totals.failed > 0 {
        bail!("{} of {} cases failed", totals.failed, totals.total());
    }
    Ok(())
}
