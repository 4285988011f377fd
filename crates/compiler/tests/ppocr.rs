//! The PP-OCR classifier, recognizer and detector that the `rapidocr-onnxruntime` 1.4.4
//! wheel ships, imported and run on the reference interpreter (as written, and after the
//! optimization passes), against onnxruntime 1.22.1's outputs on the same inputs. The
//! models, inputs and outputs come from `scripts/fetch-ppocr.sh` (run by CI); without
//! them these tests fail and say so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use trainyard_compiler::graph::Tensor;
use trainyard_compiler::onnx::conformance::import_for;
use trainyard_compiler::onnx::Model;
use trainyard_compiler::{interp, passes};
use trainyard_runtime::read_npy;

/// Largest allowed |trainyard − onnxruntime| per element, on top of [`RTOL`]·|onnxruntime|.
/// The outputs are softmax or sigmoid probabilities in [0, 1]; both sides compute in f32
/// and differ only by the order of their sums (tens of convolutions and matmuls deep): the
/// errors measured here are at most about 1e-5 (the detector), ten times below this.
const ATOL: f32 = 1e-4;
/// Relative part of the tolerance.
const RTOL: f32 = 1e-3;

/// The models the wheel ships, by file stem.
const MODELS: [&str; 3] = ["ch_ppocr_mobile_v2.0_cls_infer", "ch_PP-OCRv4_rec_infer", "ch_PP-OCRv4_det_infer"];

fn data_dir() -> PathBuf {
    let dir = match std::env::var_os("PPOCR_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.data/ppocr"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "PP-OCR models and onnxruntime references missing under {}: run scripts/fetch-ppocr.sh",
        dir.display()
    );
    dir
}

/// One model of the manifest: its file, input files and reference output files.
struct Case {
    name: String,
    model: PathBuf,
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
}

fn manifest(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let files = |e: &serde_json::Value, key: &str| -> Vec<(String, PathBuf)> {
        e[key]
            .as_array()
            .unwrap_or_else(|| panic!("manifest: `{key}` is not a list"))
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_string(), dir.join(f["file"].as_str().unwrap())))
            .collect()
    };
    v["models"]
        .as_array()
        .expect("manifest: `models` is not a list")
        .iter()
        .map(|e| Case {
            name: e["name"].as_str().unwrap().to_string(),
            model: dir.join(e["model"].as_str().unwrap()),
            inputs: files(e, "inputs"),
            outputs: files(e, "outputs"),
        })
        .collect()
}

/// How far one output is from its reference.
#[derive(Debug, Default)]
struct Error {
    max_abs: f32,
    /// Largest |got − want| / |want| over elements with |want| ≥ 1e-3 (smaller ones are
    /// judged by the absolute error).
    max_rel: f32,
    /// Elements outside `ATOL + RTOL·|want|`.
    outside: usize,
}

fn error(got: &[f32], want: &[f32]) -> Error {
    let mut e = Error::default();
    for (&a, &b) in got.iter().zip(want) {
        let d = (a - b).abs();
        e.max_abs = e.max_abs.max(d);
        if b.abs() >= 1e-3 {
            e.max_rel = e.max_rel.max(d / b.abs());
        }
        if d.is_nan() || d > ATOL + RTOL * b.abs() {
            e.outside += 1;
        }
    }
    e
}

/// Index of the largest element of each row of `width` values.
fn argmax_rows(v: &[f32], width: usize) -> Vec<usize> {
    v.chunks_exact(width)
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best }))
        .collect()
}

/// Runs one model on the interpreter (optionally after the passes) and checks every
/// output against onnxruntime's; returns the outputs.
fn check(case: &Case, optimize: bool) -> Vec<Vec<f32>> {
    let model = Model::load(&case.model).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut inputs = HashMap::new();
    for (name, file) in &case.inputs {
        let h = read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shape = h.shape.iter().map(|&d| d as usize).collect();
        inputs.insert(name.clone(), Tensor::from_f32(shape, &h.to_f32()).unwrap());
    }
    let start = Instant::now();
    let mut graph = import_for(&model, &inputs).unwrap_or_else(|e| panic!("{}: import: {e}", case.name));
    let mut nodes = format!("{} nodes", graph.nodes.len());
    if optimize {
        passes::optimize(&mut graph).unwrap_or_else(|e| panic!("{}: passes: {e}", case.name));
        nodes = format!("{nodes} ({} after the passes)", graph.nodes.len());
    }
    let imported = start.elapsed();
    let outputs = interp::run(&graph, &inputs).unwrap_or_else(|e| panic!("{}: interpreter: {e}", case.name));
    let ran = start.elapsed() - imported;
    assert_eq!(outputs.len(), case.outputs.len(), "{}: number of outputs", case.name);
    let mut values = vec![];
    for ((got_name, got), (want_name, file)) in outputs.iter().zip(&case.outputs) {
        assert_eq!(got_name, want_name, "{}: output order", case.name);
        let want = read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let want_shape: Vec<usize> = want.shape.iter().map(|&d| d as usize).collect();
        assert_eq!(got.shape(), want_shape.as_slice(), "{} `{got_name}`: shape", case.name);
        let (g, w) = (got.to_f32_vec(), want.to_f32());
        let e = error(&g, &w);
        println!(
            "{}: {nodes}, imported in {imported:.2?}, interpreted in {ran:.2?}; `{got_name}` {:?}: \
             max abs error {:.3e}, max rel error {:.3e}",
            case.name,
            got.shape(),
            e.max_abs,
            e.max_rel
        );
        assert_eq!(
            e.outside,
            0,
            "{} `{got_name}`: {} of {} elements differ from onnxruntime by more than {ATOL} + {RTOL}·|x| ({e:?})",
            case.name,
            e.outside,
            w.len()
        );
        values.push(g);
    }
    values
}

#[test]
fn the_wheel_ships_the_three_models_with_their_ops() {
    let dir = data_dir();
    let cases = manifest(&dir);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, MODELS);
    for case in &cases {
        let model = Model::load(&case.model).unwrap();
        let ops: Vec<String> = model.op_types().into_iter().map(|(op, n)| format!("{op}×{n}")).collect();
        println!("{}: opset {}, {}", case.name, model.opset(), ops.join(" "));
        let supported = trainyard_compiler::onnx::supported_ops();
        let missing: Vec<String> =
            model.op_types().into_iter().map(|(op, _)| op).filter(|op| !supported.contains(&op.as_str())).collect();
        assert!(missing.is_empty(), "{}: ops the importer does not support: {missing:?}", case.name);
    }
}

#[test]
fn classifier_matches_onnxruntime() {
    let dir = data_dir();
    let case = manifest(&dir).into_iter().find(|c| c.name == MODELS[0]).unwrap();
    for optimize in [false, true] {
        let out = check(&case, optimize);
        let want = read_npy(&case.outputs[0].1).unwrap().to_f32();
        // Same orientation decision (0° or 180°) as onnxruntime.
        assert_eq!(argmax_rows(&out[0], 2), argmax_rows(&want, 2));
    }
}

#[test]
fn recognizer_matches_onnxruntime() {
    let dir = data_dir();
    let case = manifest(&dir).into_iter().find(|c| c.name == MODELS[1]).unwrap();
    for optimize in [false, true] {
        let out = check(&case, optimize);
        let want = read_npy(&case.outputs[0].1).unwrap();
        // Same character (of 6625 classes) at every time step: the CTC decode agrees.
        let width = *want.shape.last().unwrap() as usize;
        assert_eq!(argmax_rows(&out[0], width), argmax_rows(&want.to_f32(), width));
    }
}

#[test]
fn detector_matches_onnxruntime() {
    let dir = data_dir();
    let case = manifest(&dir).into_iter().find(|c| c.name == MODELS[2]).unwrap();
    for optimize in [false, true] {
        let out = check(&case, optimize);
        let want = read_npy(&case.outputs[0].1).unwrap().to_f32();
        // The text map PP-OCR thresholds at 0.3 is the same pixel for pixel, and not empty
        // (the synthetic page has text lines).
        let text = |v: &[f32]| v.iter().map(|&p| p > 0.3).collect::<Vec<bool>>();
        assert_eq!(text(&out[0]), text(&want));
        assert!(want.iter().filter(|&&p| p > 0.3).count() > want.len() / 20);
    }
}
