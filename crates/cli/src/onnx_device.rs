//! ONNX models on the simulated chip: `trainyard compile` (a model to a `.tyb` program
//! with its weights and manifest beside it), `trainyard run MODEL.onnx|MODEL.tyb`
//! (compile if needed, bind, run; per-op times; `--check` against the interpreter), and
//! the device backend of `trainyard onnx-conformance --device`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::TensorView;
use serde::Serialize;
use serde_json::{json, Value};
use trainyard_arch::{ChipSpec, DType};
use trainyard_compiler::graph::{Graph, Tensor};
use trainyard_compiler::interp;
use trainyard_compiler::lower::{self, Compiled, IoTensor, LowerOptions, Manifest, OpSpan};
use trainyard_compiler::onnx::conformance::import_for;
use trainyard_compiler::onnx::Model;
use trainyard_isa::Program;
use trainyard_runtime::{output_file_name, read_npy, read_safetensors, write_npy, HostTensor, Profile, Session};
use trainyard_sim::{Mode, RunResult, SimOptions};

mod conformance;

pub(crate) use conformance::conformance;

use crate::onnx::{names, seeded_input, split_binding, to_graph_tensor, to_host};
use crate::RunArgs;

/// Key of the manifest in the weights file's metadata.
const MANIFEST_KEY: &str = "trainyard.manifest";

/// Arguments of `trainyard compile`.
#[derive(clap::Args)]
pub(crate) struct CompileArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Chip name or chip TOML file.
    #[arg(long, default_value = trainyard_arch::DEFAULT_CHIP)]
    chip: String,
    /// NeuronCores to use.
    #[arg(long, default_value_t = 1)]
    cores: u16,
    /// Float element type on the device: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Shape of an input with symbolic dimensions: NAME=D1,D2,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=D1,D2")]
    input_shapes: Vec<String>,
    /// The program (`.tyb` binary, `.tys` text); the weights and manifest go to
    /// `<stem>.weights.safetensors` beside it.
    #[arg(short, long)]
    output: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Where the weights and manifest of a compiled program live.
pub(crate) fn weights_path(program: &Path) -> PathBuf {
    program.with_extension("weights.safetensors")
}

fn parse_dtype(s: &str) -> Result<DType> {
    let d: DType = s.parse().map_err(|e| anyhow!("--dtype {s}: {e}"))?;
    if !matches!(d, DType::F32 | DType::Bf16) {
        bail!("--dtype {s}: models run in f32 or bf16");
    }
    Ok(d)
}

fn parse_shapes(specs: &[String]) -> Result<HashMap<String, Vec<usize>>> {
    let mut shapes = HashMap::new();
    for s in specs {
        let (name, dims) = split_binding(s, "--input-shape")?;
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse().map_err(|_| anyhow!("--input-shape {name}: `{d}` is not a dimension")))
            .collect::<Result<_>>()?;
        shapes.insert(name.to_string(), dims);
    }
    Ok(shapes)
}

/// The model's inputs: bound from files, or seeded values of the declared (or given)
/// shapes when `random` (floats uniform in [0, 1), integers 0, as `trainyard interpret`).
fn model_inputs(
    model: &Model,
    bindings: &[String],
    shapes: &HashMap<String, Vec<usize>>,
    random: bool,
    seed: u64,
    notes: &mut Vec<String>,
) -> Result<HashMap<String, Tensor>> {
    let declared = model.inputs();
    let mut inputs = HashMap::new();
    for b in bindings {
        let (name, file) = split_binding(b, "--input")?;
        let info = declared
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("--input {name}: the model has no input `{name}` (inputs: {})", names(&declared)))?;
        let want = info.dtype.clone().map_err(|t| anyhow!("input `{name}` has unsupported type {t}"))?;
        let host = read_npy(Path::new(file)).with_context(|| format!("--input {name}"))?;
        inputs.insert(name.to_string(), to_graph_tensor(&host, want, &format!("input `{name}` ({file})"))?);
    }
    let mut missing = vec![];
    for (k, info) in declared.iter().enumerate() {
        if inputs.contains_key(&info.name) {
            continue;
        }
        let dtype = info.dtype.clone().map_err(|t| anyhow!("input `{}` has unsupported type {t}", info.name))?;
        let shape: Option<Vec<usize>> =
            shapes.get(&info.name).cloned().or_else(|| info.dims.iter().copied().collect::<Option<Vec<usize>>>());
        match (random, shape) {
            (true, Some(shape)) => {
                inputs.insert(info.name.clone(), seeded_input(dtype, shape, seed.wrapping_add(k as u64))?);
                notes.push(format!("input `{}`: seeded values (seed {})", info.name, seed.wrapping_add(k as u64)));
            }
            (true, None) => {
                bail!("input `{}` has symbolic dimensions: give --input-shape {}=...", info.name, info.name)
            }
            (false, _) => missing.push(info.name.clone()),
        }
    }
    if !missing.is_empty() {
        bail!("inputs not bound: {} (use --input NAME=FILE.npy, or --random-inputs)", missing.join(", "));
    }
    Ok(inputs)
}

/// Replaces every float constant of more than one element by seeded values: tensors of
/// rank ≥ 2 (weights) uniform in ±1/√fan-in, vectors (biases, norm parameters) in
/// [0.5, 1.5) so variances stay positive. For checking a model whose published weights
/// are placeholders (the ONNX test suite's "light" models hold constant weights).
fn randomize_weights(g: &mut Graph, seed: u64) -> Result<usize> {
    let mut rng = trainyard_arch::SplitMix64::new(seed);
    let mut n = 0;
    for v in g.values.iter_mut() {
        let Some(t) = &v.constant else { continue };
        if !t.dtype().is_float() || t.len() <= 1 {
            continue;
        }
        let shape = t.shape().to_vec();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let (lo, width) = if shape.len() >= 2 {
            let a = 1.0 / (fan_in as f64).sqrt();
            (-a, 2.0 * a)
        } else {
            (0.5, 1.0)
        };
        let values: Vec<f64> = (0..t.len()).map(|_| lo + width * rng.next_f64()).collect();
        v.constant = Some(std::sync::Arc::new(Tensor::from_f64(t.dtype(), shape, values).map_err(|e| anyhow!(e))?));
        n += 1;
    }
    Ok(n)
}

/// The graph inputs of `graph` among `inputs` (the importer makes shape-deciding
/// inputs constants).
fn runtime_inputs(graph: &Graph, inputs: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    graph
        .inputs
        .iter()
        .filter_map(|&i| inputs.get_key_value(&graph.value(i).name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Imports `model` for input shapes only (no values), for `compile`.
fn import_shapes(model: &Model, shapes: &HashMap<String, Vec<usize>>) -> Result<Graph> {
    let mut opts = trainyard_compiler::onnx::ImportOptions::default();
    for info in model.inputs() {
        let shape = shapes
            .get(&info.name)
            .cloned()
            .or_else(|| info.dims.iter().copied().collect::<Option<Vec<usize>>>())
            .ok_or_else(|| {
                anyhow!("input `{}` has symbolic dimensions: give --input-shape {}=...", info.name, info.name)
            })?;
        opts.input_shapes.insert(info.name.clone(), shape);
    }
    Ok(model.import(&opts)?)
}

pub(crate) fn compile(args: CompileArgs) -> Result<()> {
    let chip = ChipSpec::by_name(&args.chip)?;
    let dtype = parse_dtype(&args.dtype)?;
    let model = Model::load(&args.model)?;
    let graph = import_shapes(&model, &parse_shapes(&args.input_shapes)?)?;
    let start = Instant::now();
    let opts = LowerOptions { cores: args.cores, dtype, optimize: true };
    let compiled = lower::compile(&graph, &chip, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut manifest = compiled.manifest(&chip, dtype);
    manifest.source = Some(args.model.display().to_string());
    write_program(&args.output, &compiled.program)?;
    let wpath = weights_path(&args.output);
    write_weights(&wpath, &compiled, &manifest)?;
    if args.json {
        let v = json!({
            "model": args.model.display().to_string(),
            "program": args.output.display().to_string(),
            "weights": wpath.display().to_string(),
            "chip": chip.name,
            "instructions": compiled.program.insts.len(),
            "steps": compiled.ops.len(),
            "hbm": compiled.hbm,
            "parallelism": compiled.parallelism,
            "compile_seconds": seconds,
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!(
            "{}: {} nodes → {} steps, {} instructions for {} in {seconds:.2}s",
            args.model.display(),
            compiled.graph.nodes.len(),
            compiled.ops.len(),
            compiled.program.insts.len(),
            chip.name
        );
        say!("{}", hbm_line(&compiled.hbm));
        say!("{}", parallelism_line(&compiled.parallelism));
        say!("wrote {} and {}", args.output.display(), wpath.display());
    }
    Ok(())
}

fn hbm_line(h: &lower::HbmReport) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    format!(
        "HBM peak {:.2} MiB of {:.0} GiB: weights {:.2} MiB, inputs {:.2} MiB, outputs {:.2} MiB, intermediates {:.2} MiB \
         (liveness-planned; {:.2} MiB live at most), kernel workspace {:.2} MiB",
        mib(h.peak),
        h.capacity as f64 / (1u64 << 30) as f64,
        mib(h.weights),
        mib(h.inputs),
        mib(h.outputs),
        mib(h.arena),
        mib(h.live_peak),
        mib(h.workspace)
    )
}

fn parallelism_line(p: &lower::Parallelism) -> String {
    match p {
        lower::Parallelism::DataParallel { cores, batch } => {
            format!("data-parallel: the batch of {batch} split over {cores} cores")
        }
        lower::Parallelism::PerStep { cores, reason } if *cores > 1 => {
            format!("{cores} cores, each step split over them (not data-parallel: {reason})")
        }
        lower::Parallelism::PerStep { .. } => "1 core".to_string(),
    }
}

fn write_program(path: &Path, program: &Program) -> Result<()> {
    let bytes =
        if path.extension().is_some_and(|e| e == "tys") { program.to_text().into_bytes() } else { program.to_bytes() };
    let tmp = path.with_extension("tmp-trainyard");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::F32 => S::F32,
        DType::Bf16 => S::BF16,
        DType::F16 => S::F16,
        DType::F8E4M3 => S::F8_E4M3,
        DType::F8E5M2 => S::F8_E5M2,
        DType::I8 => S::I8,
        DType::I16 => S::I16,
        DType::I32 => S::I32,
        DType::U8 => S::U8,
        DType::U16 => S::U16,
        DType::U32 => S::U32,
    }
}

/// Writes the weights (device layout and types) and the manifest in the metadata.
fn write_weights(path: &Path, c: &Compiled, manifest: &Manifest) -> Result<()> {
    let tensors = c.weight_bytes()?;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| Ok((t.tensor.clone(), TensorView::new(st_dtype(t.dtype), t.shape.clone(), &t.bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([(MANIFEST_KEY.to_string(), serde_json::to_string(manifest)?)]);
    let data = safetensors::serialize(views, Some(meta))?;
    let tmp = path.with_extension("tmp-trainyard");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the manifest stored with a compiled program, if there is one.
fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let wpath = weights_path(path);
    if !wpath.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&wpath).with_context(|| format!("cannot read {}", wpath.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: {e}", wpath.display()))?;
    let Some(text) = meta.metadata().as_ref().and_then(|m| m.get(MANIFEST_KEY)) else { return Ok(None) };
    Ok(Some(serde_json::from_str(text).with_context(|| format!("{}: manifest", wpath.display()))?))
}

/// One output as the model's type, from a finished session.
fn read_output(s: &Session, o: &IoTensor) -> Result<Tensor> {
    if o.tensor.is_empty() {
        return Ok(lower::read_output(o, None)?);
    }
    let host = s.output(&o.tensor)?;
    Ok(lower::read_output(o, Some(&host.data))?)
}

fn bind_device(s: &mut Session, t: &lower::DeviceTensor) -> Result<()> {
    let shape = t.shape.iter().map(|&d| d as u64).collect();
    s.bind(&t.tensor, &HostTensor { dtype: t.dtype, shape, data: t.bytes.clone() })?;
    Ok(())
}

/// Per-step time: the run's critical path split over the steps (each step of the path
/// is charged from the end of the previous one), so the shares sum to the total.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OpTime {
    /// Node name.
    name: String,
    /// ONNX op type (fused groups joined by `+`).
    op_type: String,
    /// Kernels.
    kernel: String,
    /// Critical-path time, ns.
    ns: f64,
    /// Share of the total, percent.
    pct: f64,
    /// Instructions.
    instructions: u32,
}

pub(crate) fn op_times(ops: &[OpSpan], run: &RunResult) -> Vec<OpTime> {
    let mut ps = vec![0u64; ops.len()];
    let mut prev_end = 0u64;
    for id in &run.critical_path {
        let Some(ev) = run.events.get(id.0 as usize) else { continue };
        let seg = ev.end_ps.saturating_sub(prev_end.min(ev.end_ps));
        prev_end = prev_end.max(ev.end_ps);
        let i = ops.partition_point(|o| o.insts.end <= id.0);
        if ops.get(i).is_some_and(|o| o.insts.contains(&id.0)) {
            ps[i] += seg;
        }
    }
    let total = run.total_ps.max(1) as f64;
    ops.iter()
        .zip(ps)
        .map(|(o, p)| OpTime {
            name: o.node.clone(),
            op_type: o.op_type.clone(),
            kernel: o.kernel.clone(),
            ns: p as f64 / 1e3,
            pct: 100.0 * p as f64 / total,
            instructions: o.insts.len() as u32,
        })
        .collect()
}

/// Device results against the interpreter.
#[derive(Clone, Debug, Serialize)]
struct Check {
    max_abs_err: f64,
    max_rel_err: f64,
    /// Allowed: |device − reference| ≤ atol + rtol·|reference|.
    atol: f64,
    rtol: f64,
    passed: bool,
    outputs: Vec<Value>,
}

/// The tolerance of a model run in `dtype`: f32 accumulates in a different order than
/// the interpreter's f64 (relative 1e-3 of the output's scale); bf16 stores every
/// intermediate with 8 significant bits.
fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::Bf16 => (5e-2, 5e-2),
        _ => (1e-3, 1e-3),
    }
}

fn compare(outputs: &[IoTensor], got: &[Tensor], want: &[(String, Tensor)], dtype: DType) -> Check {
    let (atol_rel, rtol) = tolerance(dtype);
    let mut c = Check { max_abs_err: 0.0, max_rel_err: 0.0, atol: 0.0, rtol, passed: true, outputs: vec![] };
    for ((o, g), (_, w)) in outputs.iter().zip(got).zip(want) {
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = wv.iter().fold(0.0f64, |m, x| if x.is_finite() { m.max(x.abs()) } else { m });
        let atol = atol_rel * scale.max(1e-6);
        c.atol = c.atol.max(atol);
        let (mut abs, mut rel, mut ok) = (0.0f64, 0.0f64, g.shape() == w.shape());
        for (&a, &b) in gv.iter().zip(&wv) {
            if (a.is_nan() && b.is_nan()) || a == b {
                continue;
            }
            let e = (a - b).abs();
            let e = if e.is_nan() { f64::INFINITY } else { e };
            abs = abs.max(e);
            if b.abs() >= 1e-3 * scale && b != 0.0 {
                rel = rel.max(e / b.abs());
            }
            ok &= e <= atol + rtol * b.abs();
        }
        c.max_abs_err = c.max_abs_err.max(abs);
        c.max_rel_err = c.max_rel_err.max(rel);
        c.passed &= ok;
        c.outputs.push(json!({"name": o.name, "max_abs_err": abs, "max_rel_err": rel, "scale": scale, "passed": ok}));
    }
    c
}

/// `trainyard run` of an ONNX model or of a compiled program with a manifest.
pub(crate) fn run(args: RunArgs) -> Result<()> {
    let chip = ChipSpec::by_name(&args.chip)?;
    let is_onnx = args.program.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    let mode = if args.timed_only { Mode::TimedOnly } else { Mode::Functional };
    if args.timed_only && (args.out.is_some() || !args.inputs.is_empty() || args.check) {
        bail!("--timed-only computes no values: --input, --out and --check cannot be used with it");
    }
    let mut notes: Vec<String> = Vec::new();
    let start = Instant::now();
    // The compiled model, the inputs by graph name, and the graph for --check.
    let (compiled, manifest, inputs, graph): (Option<Compiled>, Manifest, HashMap<String, Tensor>, Option<Graph>);
    let program: Program;
    let dtype;
    if is_onnx {
        dtype = parse_dtype(&args.dtype)?;
        let model = Model::load(&args.program)?;
        let shapes = parse_shapes(&args.input_shapes)?;
        let random = args.random_inputs || args.timed_only;
        let all = model_inputs(&model, &args.inputs, &shapes, random, args.seed, &mut notes)?;
        let mut g = import_for(&model, &all)?;
        if let Some(seed) = args.random_weights {
            let n = randomize_weights(&mut g, seed)?;
            notes.push(format!("{n} weight tensors replaced by seeded values (seed {seed})"));
        }
        let c = lower::compile(&g, &chip, &LowerOptions { cores: args.cores, dtype, optimize: true })?;
        let mut m = c.manifest(&chip, dtype);
        m.source = Some(args.program.display().to_string());
        manifest = m;
        inputs = runtime_inputs(&g, &all);
        program = c.program.clone();
        graph = Some(g);
        compiled = Some(c);
    } else {
        let Some(m) = read_manifest(&args.program)? else {
            bail!("{}: no manifest beside it", args.program.display());
        };
        if m.chip != chip.name {
            bail!("{} was compiled for {}; run it with --chip {}", args.program.display(), m.chip, m.chip);
        }
        dtype = m.dtype.parse().map_err(|e| anyhow!("manifest dtype: {e}"))?;
        program = crate::load_program(&args.program)?;
        let source = m.source.as_ref().map(PathBuf::from).filter(|p| p.is_file());
        let model = match &source {
            Some(p) => Some(Model::load(p)?),
            None if args.check => bail!("--check needs the ONNX model, which is no longer at {:?}", m.source),
            None => None,
        };
        let mut all = HashMap::new();
        let random = args.random_inputs || args.timed_only;
        if let Some(model) = &model {
            all = model_inputs(model, &args.inputs, &parse_shapes(&args.input_shapes)?, random, args.seed, &mut notes)?;
            graph = Some(import_for(model, &all)?);
        } else {
            graph = None;
            for b in &args.inputs {
                let (name, file) = split_binding(b, "--input")?;
                let io = m
                    .inputs
                    .iter()
                    .find(|i| i.name == name)
                    .ok_or_else(|| anyhow!("--input {name}: the model has no such input"))?;
                let io = io.io_tensor().map_err(|e| anyhow!(e))?;
                let host = read_npy(Path::new(file)).with_context(|| format!("--input {name}"))?;
                all.insert(name.to_string(), to_graph_tensor(&host, io.ty.dtype, &format!("input `{name}`"))?);
            }
        }
        inputs = all;
        manifest = m;
        compiled = None;
    }
    let compile_seconds = start.elapsed().as_secs_f64();
    let io_inputs: Vec<IoTensor> =
        manifest.inputs.iter().map(|i| i.io_tensor()).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?;
    let io_outputs: Vec<IoTensor> =
        manifest.outputs.iter().map(|i| i.io_tensor()).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?;
    let opts = SimOptions {
        mode,
        check_races: !args.no_race_check,
        record_events: true,
        stochastic_rounding: args.stochastic_rounding,
        seed: args.seed,
    };
    let mut session = Session::new(&chip, &program, opts)?;
    if mode == Mode::Functional {
        let bytes = bind_bytes(&io_inputs, &inputs)?;
        for t in &bytes {
            bind_device(&mut session, t)?;
        }
        match &compiled {
            Some(c) => {
                for t in c.weight_bytes()? {
                    bind_device(&mut session, &t)?;
                }
            }
            None => {
                for (name, t) in read_safetensors(&weights_path(&args.program))? {
                    session.bind(&name, &t)?;
                }
            }
        }
    }
    let sim_start = Instant::now();
    let profile = session.run()?;
    let sim_seconds = sim_start.elapsed().as_secs_f64();
    let result = session.result().cloned().ok_or_else(|| anyhow!("the run left no result"))?;
    let times = op_times(&manifest.ops, &result);
    let mut outputs: Vec<Tensor> = Vec::new();
    if mode == Mode::Functional {
        for o in &io_outputs {
            outputs.push(read_output(&session, o)?);
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (o, t) in io_outputs.iter().zip(&outputs) {
            let (host, note) = to_host(t, &o.name)?;
            notes.extend(note);
            let p = dir.join(output_file_name(&o.name));
            write_npy(&p, &host)?;
            if !args.json {
                say!("wrote {}", p.display());
            }
        }
    }
    let check = if args.check {
        let g = graph.as_ref().ok_or_else(|| anyhow!("--check needs the ONNX model"))?;
        let want = interp::run(g, &inputs)?;
        Some(compare(&io_outputs, &outputs, &want, dtype))
    } else {
        None
    };
    if let Some(trace) = &args.trace {
        crate::onnx_device::write_trace(trace, &chip, &program, &result, &manifest.ops)?;
        if !args.json {
            say!("wrote trace {} (open in https://ui.perfetto.dev)", trace.display());
        }
    }
    notes.extend(session.notes().iter().cloned());
    if args.json {
        let mut v = serde_json::to_value(&profile)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("notes".into(), json!(notes));
            obj.insert("model".into(), json!(manifest.model));
            obj.insert("ops".into(), serde_json::to_value(&times)?);
            obj.insert("op_types".into(), json!(by_op_type(&times)));
            obj.insert("hbm".into(), serde_json::to_value(manifest.hbm)?);
            obj.insert("parallelism".into(), serde_json::to_value(&manifest.parallelism)?);
            obj.insert("dtype".into(), json!(dtype.name()));
            obj.insert("compile_seconds".into(), json!(compile_seconds));
            obj.insert("simulate_seconds".into(), json!(sim_seconds));
            let outs: Vec<Value> = io_outputs
                .iter()
                .map(|o| json!({"name": o.name, "dtype": o.ty.dtype.name(), "shape": o.ty.shape}))
                .collect();
            obj.insert("outputs".into(), json!(outs));
            if let Some(c) = &check {
                obj.insert("max_abs_err".into(), json!(c.max_abs_err));
                obj.insert("max_rel_err".into(), json!(c.max_rel_err));
                obj.insert("check".into(), serde_json::to_value(c)?);
            }
        }
        say!("{}", serde_json::to_string(&v)?);
    } else {
        print_run(
            &manifest,
            &profile,
            &times,
            &notes,
            check.as_ref(),
            &io_outputs,
            &outputs,
            compile_seconds,
            sim_seconds,
        );
    }
    if check.as_ref().is_some_and(|c| !c.passed) {
        bail!("the device results differ from the interpreter's beyond the tolerance");
    }
    Ok(())
}

fn bind_bytes(io_inputs: &[IoTensor], values: &HashMap<String, Tensor>) -> Result<Vec<lower::DeviceTensor>> {
    Ok(lower::bind_inputs(io_inputs, values)?)
}

/// Time per op type: (op type, ns, percent, steps), largest first.
fn by_op_type(times: &[OpTime]) -> Vec<Value> {
    let mut m: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    for t in times {
        let e = m.entry(&t.op_type).or_default();
        e.0 += t.ns;
        e.1 += t.pct;
        e.2 += 1;
    }
    let mut v: Vec<(&str, (f64, f64, usize))> = m.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    v.into_iter().map(|(k, (ns, pct, n))| json!({"op_type": k, "ns": ns, "pct": pct, "steps": n})).collect()
}

#[allow(clippy::too_many_arguments)]
fn print_run(
    m: &Manifest,
    profile: &Profile,
    times: &[OpTime],
    notes: &[String],
    check: Option<&Check>,
    io_outputs: &[IoTensor],
    outputs: &[Tensor],
    compile_seconds: f64,
    sim_seconds: f64,
) {
    say!(
        "{} on {} ({}): {:.3} ms simulated, {} instructions, {:.2} TFLOPS; compiled in {compile_seconds:.2}s, simulated in {sim_seconds:.2}s",
        m.model,
        profile.chip,
        m.dtype,
        profile.total_ns / 1e6,
        profile.instructions,
        profile.achieved_tflops
    );
    say!("{}", hbm_line(&m.hbm));
    say!("{}", parallelism_line(&m.parallelism));
    let mut ranked: Vec<&OpTime> = times.iter().collect();
    ranked.sort_by(|a, b| b.ns.total_cmp(&a.ns));
    say!("\ntime per op (critical path; {} steps, the 20 longest):", times.len());
    say!("{:<36} {:<32} {:<20} {:>11} {:>7}", "node", "op type", "kernel", "time (us)", "%");
    for t in ranked.iter().take(20) {
        say!(
            "{:<36} {:<32} {:<20} {:>11.2} {:>6.1}%",
            clip(&t.name, 36),
            clip(&t.op_type, 32),
            clip(&t.kernel, 20),
            t.ns / 1e3,
            t.pct
        );
    }
    say!("\ntime per op type:");
    for v in by_op_type(times) {
        say!(
            "{:<40} {:>11.2} us {:>6.1}% ({} steps)",
            clip(v["op_type"].as_str().unwrap_or_default(), 40),
            v["ns"].as_f64().unwrap_or(0.0) / 1e3,
            v["pct"].as_f64().unwrap_or(0.0),
            v["steps"]
        );
    }
    for (o, t) in io_outputs.iter().zip(outputs) {
        let v = t.to_f64_vec();
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.6}")).collect();
        say!(
            "\noutput {}: {}{:?} [{}{}]",
            o.name,
            t.dtype(),
            t.shape(),
            head.join(", "),
            if v.len() > 6 { ", ..." } else { "" }
        );
    }
    if let Some(c) = check {
        say!(
            "\ncheck against the interpreter: max |device − reference| = {:.3e}, max relative {:.3e} ({}; tolerance {:.1e} + {:.0e}·|ref|)",
            c.max_abs_err,
            c.max_rel_err,
            if c.passed { "within tolerance" } else { "OUT OF TOLERANCE" },
            c.atol,
            c.rtol
        );
    }
    for n in notes {
        say!("note: {n}");
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

/// The engine and DMA tracks of the run plus an `ops` track: one slice per step.
pub(crate) fn write_trace(
    path: &Path,
    chip: &ChipSpec,
    program: &Program,
    run: &RunResult,
    ops: &[OpSpan],
) -> Result<()> {
    let mut v = trainyard_runtime::try_trace_json(chip, program, run)?;
    let ops_pid = 1u64 << 20;
    let mut extra = vec![json!({"ph": "M", "name": "process_name", "pid": ops_pid, "tid": 0, "args": {"name": "ops"}})];
    for (k, op) in ops.iter().enumerate() {
        let (start, end) = op
            .insts
            .clone()
            .filter_map(|id| run.events.get(id as usize))
            .fold((u64::MAX, 0u64), |(s, e), ev| (s.min(ev.start_ps), e.max(ev.end_ps)));
        if start > end {
            continue;
        }
        let common = json!({"cat": op.op_type, "name": format!("{} ({})", op.node, op.kernel), "id": k, "pid": ops_pid, "tid": 0});
        let (mut b, mut e) = (common.clone(), common);
        b["ph"] = json!("b");
        b["ts"] = json!(start as f64 / 1e6);
        e["ph"] = json!("e");
        e["ts"] = json!(end as f64 / 1e6);
        extra.extend([b, e]);
    }
    if let Some(events) = v["traceEvents"].as_array_mut() {
        events.extend(extra);
    }
    std::fs::write(path, serde_json::to_vec(&v)?).with_context(|| format!("cannot write trace {}", path.display()))
}
