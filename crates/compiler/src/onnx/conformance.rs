//! The ONNX backend node-test runner: each case directory holds `model.onnx` and
//! `test_data_set_*/{input,output}_N.pb`. A case passes when every data set's outputs
//! match (floats within `rtol = 1e-3, atol = 1e-7` as in ONNX's own runner, NaN equal
//! to NaN; integers and bools exactly; element types and shapes exactly). It is
//! unsupported when the importer or the backend names something not implemented, and
//! failed otherwise. The same runner serves every backend ([`Backend`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{decode_tensor, ImportOptions, Model, OnnxError};
use crate::graph::{Data, Graph, Tensor};

/// Relative tolerance of float comparisons (ONNX's backend test default).
pub const RTOL: f64 = 1e-3;
/// Absolute tolerance of float comparisons (ONNX's backend test default).
pub const ATOL: f64 = 1e-7;

/// Why a backend did not produce outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunFailure {
    /// The backend does not implement something the graph needs (named).
    Unsupported(String),
    /// The backend failed.
    Failed(String),
}

/// Something that runs a graph: the reference interpreter, a simulated device.
pub trait Backend {
    /// A short name for reports.
    fn name(&self) -> &str;
    /// Runs `graph`; returns its outputs in order.
    fn run(&self, graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunFailure>;
}

/// The reference interpreter as a [`Backend`].
pub struct Interpreter;

impl Backend for Interpreter {
    fn name(&self) -> &str {
        "interpreter"
    }

    fn run(&self, graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunFailure> {
        crate::interp::run(graph, inputs)
            .map(|v| v.into_iter().map(|(_, t)| t).collect())
            .map_err(|e| RunFailure::Failed(e.to_string()))
    }
}

/// The reference interpreter run on the graph after [`crate::passes::optimize`]: checks
/// that the passes keep every result.
pub struct OptimizedInterpreter;

impl Backend for OptimizedInterpreter {
    fn name(&self) -> &str {
        "interpreter (optimized graph)"
    }

    fn run(&self, graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunFailure> {
        let mut g = graph.clone();
        crate::passes::optimize(&mut g).map_err(|e| RunFailure::Failed(e.to_string()))?;
        Interpreter.run(&g, inputs)
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every output matched.
    Passed,
    /// Wrong results or an error (the reason).
    Failed(String),
    /// Something not implemented (named).
    Unsupported(String),
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case directory name.
    pub name: String,
    /// Op types of the model (domain-qualified outside the default domain).
    pub ops: Vec<String>,
    /// Outcome.
    pub outcome: Outcome,
}

/// Counts of a set of cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Unsupported.
    pub unsupported: usize,
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Unsupported(_) => self.unsupported += 1,
        }
    }

    /// All cases.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.unsupported
    }
}

/// Results of a directory of cases.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every case, sorted by name.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// Totals over all cases.
    pub fn totals(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.cases {
            c.add(&r.outcome);
        }
        c
    }

    /// Counts per op type: a case counts once under each op type its model uses.
    pub fn per_op(&self) -> BTreeMap<String, Counts> {
        let mut m: BTreeMap<String, Counts> = BTreeMap::new();
        for r in &self.cases {
            for op in &r.ops {
                m.entry(op.clone()).or_default().add(&r.outcome);
            }
        }
        m
    }
}

fn read_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_tensor(&bytes, &path.display().to_string()).map(|(_, t)| t).map_err(|e| e.to_string())
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v = vec![];
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        v.push(p);
    }
    v
}

/// Compares an output with its expected value; `None` when they match.
pub fn compare(name: &str, got: &Tensor, want: &Tensor) -> Option<String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Some(format!(
            "output `{name}`: got {}{:?}, expected {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    match (got.data(), want.data()) {
        (Data::Float(g), Data::Float(w)) => {
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                let same = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= ATOL + RTOL * b.abs();
                if !same {
                    return Some(format!("output `{name}`: element {i} is {a}, expected {b}"));
                }
            }
            None
        }
        (Data::Int(g), Data::Int(w)) => g
            .iter()
            .zip(w)
            .position(|(a, b)| a != b)
            .map(|i| format!("output `{name}`: element {i} is {}, expected {}", g[i], w[i])),
        _ => Some(format!("output `{name}`: storage kinds differ")),
    }
}

/// Imports `model` for the given input values: shapes from the values, and inputs
/// that decide shapes bound as constants (the importer says which).
pub fn import_for(model: &Model, inputs: &HashMap<String, Tensor>) -> Result<Graph, OnnxError> {
    let mut opts = ImportOptions::default();
    for (k, v) in inputs {
        opts.input_shapes.insert(k.clone(), v.shape().to_vec());
    }
    loop {
        match model.import(&opts) {
            Err(OnnxError::NeedsValue { input, node, op_type, opset }) => {
                let bind: Vec<String> = match inputs.get(&input) {
                    Some(_) if !opts.input_values.contains_key(&input) => vec![input.clone()],
                    // A value computed from graph inputs: bind every integer input not yet bound.
                    _ => inputs
                        .iter()
                        .filter(|(k, v)| !v.dtype().is_float() && !opts.input_values.contains_key(*k))
                        .map(|(k, _)| k.clone())
                        .collect(),
                };
                if bind.is_empty() {
                    return Err(OnnxError::NeedsValue { input, node, op_type, opset });
                }
                for k in bind {
                    opts.input_shapes.remove(&k);
                    opts.input_values.insert(k.clone(), inputs[&k].clone());
                }
            }
            other => return other,
        }
    }
}

/// Runs one case directory on `backend`.
pub fn run_case(dir: &Path, backend: &dyn Backend) -> CaseResult {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let model = match Model::load(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return CaseResult { name, ops: vec![], outcome: Outcome::Failed(e.to_string()) },
    };
    let ops: Vec<String> = model.op_types().into_iter().map(|(o, _)| o).collect();
    let outcome = run_model(&model, dir, backend);
    CaseResult { name, ops, outcome }
}

fn run_model(model: &Model, dir: &Path, backend: &dyn Backend) -> Outcome {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")));
    sets.sort();
    if sets.is_empty() {
        return Outcome::Failed("no test_data_set_* directory".into());
    }
    let declared = model.inputs();
    if let Some((name, Err(what))) = declared.iter().map(|i| (&i.name, &i.dtype)).find(|(_, d)| d.is_err()) {
        return Outcome::Unsupported(format!("graph input `{name}`: unsupported type {what}"));
    }
    let outputs: Vec<String> = model.proto.graph.iter().flat_map(|g| &g.output).map(|o| o.name.clone()).collect();
    for set in sets {
        let mut inputs = HashMap::new();
        for (i, p) in numbered(&set, "input").iter().enumerate() {
            let Some(info) = declared.get(i) else {
                return Outcome::Failed(format!("{} has no matching graph input", p.display()));
            };
            match read_pb(p) {
                Ok(t) => inputs.insert(info.name.clone(), t),
                Err(e) if e.contains("unsupported element type") => return Outcome::Unsupported(e),
                Err(e) => return Outcome::Failed(e),
            };
        }
        let graph = match import_for(model, &inputs) {
            Ok(g) => g,
            Err(e) if e.is_unsupported() => return Outcome::Unsupported(e.to_string()),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Inputs the graph was specialized to are constants now, no longer bound.
        let runtime: HashMap<String, Tensor> = graph
            .inputs
            .iter()
            .filter_map(|&i| inputs.get_key_value(&graph.value(i).name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let got = match backend.run(&graph, &runtime) {
            Ok(v) => v,
            Err(RunFailure::Unsupported(e)) => return Outcome::Unsupported(e),
            Err(RunFailure::Failed(e)) => return Outcome::Failed(e),
        };
        let expected = numbered(&set, "output");
        if expected.len() != got.len() {
            return Outcome::Failed(format!("{} outputs, {} expected", got.len(), expected.len()));
        }
        for (k, (g, p)) in got.iter().zip(&expected).enumerate() {
            let want = match read_pb(p) {
                Ok(t) => t,
                Err(e) if e.contains("unsupported element type") => return Outcome::Unsupported(e),
                Err(e) => return Outcome::Failed(e),
            };
            let oname = outputs.get(k).cloned().unwrap_or_else(|| format!("#{k}"));
            if let Some(why) = compare(&oname, g, &want) {
                return Outcome::Failed(why);
            }
        }
    }
    Outcome::Passed
}

/// Runs every case directory (those holding a `model.onnx`) under `dir`, sorted by name.
pub fn run_dir(dir: &Path, backend: &dyn Backend) -> Result<Report, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cases: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("model.onnx").is_file()).collect();
    cases.sort();
    if cases.is_empty() {
        return Err(format!("{}: no case directories (*/model.onnx)", dir.display()));
    }
    Ok(Report { cases: cases.iter().map(|c| run_case(c, backend)).collect() })
}

/// The input ONNX's backend runner feeds a "light" model (`onnx/backend/test/data/light`):
/// `arange(n) / n` in float32, reshaped to the input's declared shape (unknown dims 1).
pub fn light_model_input(info: &super::InputInfo) -> Result<Tensor, String> {
    let shape: Vec<usize> = info.dims.iter().map(|d| d.unwrap_or(1)).collect();
    let n = crate::graph::numel(&shape);
    let v: Vec<f64> = (0..n).map(|i| ((i as f64 / n as f64) as f32) as f64).collect();
    Tensor::new(crate::graph::DataType::F32, shape, Data::Float(v))
}

/// Runs one light model `NAME.onnx` against `NAME_output_0.pb` beside it.
pub fn run_light_model(path: &Path, backend: &dyn Backend) -> CaseResult {
    let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => return CaseResult { name, ops: vec![], outcome: Outcome::Failed(e.to_string()) },
    };
    let ops: Vec<String> = model.op_types().into_iter().map(|(o, _)| o).collect();
    let outcome = (|| {
        let mut inputs = HashMap::new();
        for info in model.inputs() {
            inputs.insert(info.name.clone(), light_model_input(&info).map_err(Outcome::Failed)?);
        }
        let graph = import_for(&model, &inputs).map_err(|e| {
            if e.is_unsupported() {
                Outcome::Unsupported(e.to_string())
            } else {
                Outcome::Failed(e.to_string())
            }
        })?;
        let got = backend.run(&graph, &inputs).map_err(|e| match e {
            RunFailure::Unsupported(e) => Outcome::Unsupported(e),
            RunFailure::Failed(e) => Outcome::Failed(e),
        })?;
        let expected = path.with_file_name(format!("{name}_output_0.pb"));
        let want = read_pb(&expected).map_err(Outcome::Failed)?;
        let first = got.first().ok_or_else(|| Outcome::Failed("no output".into()))?;
        match compare("output 0", first, &want) {
            Some(why) => Err(Outcome::Failed(why)),
            None => Ok(Outcome::Passed),
        }
    })()
    .unwrap_or_else(|o| o);
    CaseResult { name, ops, outcome }
}
