//! The ONNX backend node tests and light CNN models of the `onnx` 1.22.0 wheel, run on
//! the reference interpreter. The data comes from `scripts/fetch-onnx-data.sh` (run by
//! CI); without it these tests fail and say so.

use std::path::PathBuf;

use trainyard_compiler::onnx::conformance::{run_dir, run_light_model, Interpreter, OptimizedInterpreter, Outcome};
use trainyard_compiler::onnx::supported_ops;

/// Features of supported ops that the interpreter does not implement, each with the
/// reason; a case whose ops are all supported may only be "unsupported" for one of these.
const KNOWN_GAPS: &[(&str, &str)] = &[
    ("unsupported type float8", "fp8 element types other than the device's are not modelled"),
    ("unsupported type float4e2m1", "4-bit floats are not modelled"),
    ("unsupported type int4", "4-bit integers are not modelled"),
    ("unsupported type uint4", "4-bit integers are not modelled"),
    ("unsupported type int2", "2-bit integers are not modelled"),
    ("unsupported type uint2", "2-bit integers are not modelled"),
    ("`to` = float8", "fp8 element types are not modelled"),
    ("`to` = float4e2m1", "4-bit floats are not modelled"),
    ("`to` = int4", "4-bit integers are not modelled"),
    ("`to` = uint4", "4-bit integers are not modelled"),
    ("`to` = int2", "2-bit integers are not modelled"),
    ("`to` = uint2", "2-bit integers are not modelled"),
    ("unsupported type string", "string tensors are not modelled"),
    ("unsupported type a sequence", "sequence values are not modelled"),
    ("unsupported type an optional", "optional values are not modelled"),
    ("training-mode Dropout", "random masks cannot match the reference's generator"),
];

fn data_dir() -> PathBuf {
    let dir = match std::env::var_os("ONNX_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.data/onnx"),
    };
    assert!(
        dir.join("node").is_dir() && dir.join("light").is_dir(),
        "ONNX backend test data missing under {}: run scripts/fetch-onnx-data.sh",
        dir.display()
    );
    dir
}

#[test]
fn node_tests_on_the_interpreter() {
    let report = run_dir(&data_dir().join("node"), &Interpreter).expect("node test directory");
    let totals = report.totals();
    let supported = supported_ops();
    let mut gaps = std::collections::BTreeMap::<&str, usize>::new();
    let mut problems = vec![];
    for case in &report.cases {
        let all_supported = !case.ops.is_empty() && case.ops.iter().all(|o| supported.contains(&o.as_str()));
        match &case.outcome {
            Outcome::Passed => {}
            Outcome::Failed(why) => problems.push(format!("FAILED {}: {why}", case.name)),
            Outcome::Unsupported(why) if all_supported => match KNOWN_GAPS.iter().find(|(k, _)| why.contains(k)) {
                Some((k, _)) => *gaps.entry(k).or_default() += 1,
                None => problems.push(format!("UNSUPPORTED with supported ops {}: {why}", case.name)),
            },
            Outcome::Unsupported(_) => {}
        }
    }
    println!(
        "ONNX node tests on the interpreter: {} passed, {} failed, {} unsupported (of {})",
        totals.passed,
        totals.failed,
        totals.unsupported,
        totals.total()
    );
    for (k, n) in &gaps {
        println!("  {n} cases with supported ops unsupported for a known gap: {k}");
    }
    assert_eq!(totals.total(), 1765, "the onnx 1.22.0 wheel has 1765 node test cases");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(totals.passed >= 1378, "fewer node tests pass than before: {totals:?}");
}

#[test]
fn node_tests_after_the_optimization_passes() {
    let plain = run_dir(&data_dir().join("node"), &Interpreter).expect("node test directory");
    let optimized = run_dir(&data_dir().join("node"), &OptimizedInterpreter).expect("node test directory");
    let (p, o) = (plain.totals(), optimized.totals());
    println!(
        "after fold / dead code / fusion / layouts: {} passed, {} failed, {} unsupported",
        o.passed, o.failed, o.unsupported
    );
    let failures: Vec<String> = optimized
        .cases
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Failed(why) => Some(format!("{}: {why}", c.name)),
            _ => None,
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(p, o);
}

#[test]
fn light_models_on_the_interpreter() {
    let dir = data_dir().join("light");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("light model directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    assert_eq!(models.len(), 9, "the onnx 1.22.0 wheel has nine light models");
    for m in models {
        let start = std::time::Instant::now();
        let r = run_light_model(&m, &Interpreter);
        println!("{}: {:?} in {:.2?}", r.name, r.outcome, start.elapsed());
        assert_eq!(r.outcome, Outcome::Passed, "{}", r.name);
    }
}
