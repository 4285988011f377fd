//! `trainyard interpret` and `trainyard onnx-conformance` end to end, on models built here.

use std::path::{Path, PathBuf};
use std::process::Command;

use trainyard_arch::DType;
use trainyard_compiler::graph::{DataType, Tensor};
use trainyard_compiler::onnx::builder::{attr_int, ModelBuilder};
use trainyard_compiler::onnx::encode_tensor;
use trainyard_runtime::{read_npy, write_npy, HostTensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ty-onnx-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// y = Softmax(x·w + b) over the last axis; z = ArgMax(y).
fn classifier() -> ModelBuilder {
    let w = Tensor::from_f32(vec![3, 4], &[1.0, 0.0, -1.0, 0.5, 0.0, 2.0, 1.0, -0.5, 1.0, 1.0, 0.0, 0.0]).unwrap();
    let b = Tensor::from_f32(vec![4], &[0.1, 0.2, 0.3, 0.4]).unwrap();
    ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1, 3])
        .initializer("w", &w)
        .initializer("b", &b)
        .node("MatMul", "mm", &["x", "w"], &["xw"], vec![])
        .node("Add", "bias", &["xw", "b"], &["logits"], vec![])
        .node("Softmax", "sm", &["logits"], &["y"], vec![attr_int("axis", -1)])
        .node("ArgMax", "am", &["y"], &["z"], vec![attr_int("axis", 1), attr_int("keepdims", 0)])
        .output("y", DataType::F32, &[-1, 4])
        .output("z", DataType::I64, &[-1])
}

fn write_pb(path: &Path, t: &Tensor) {
    std::fs::write(path, encode_tensor("", t)).unwrap();
}

#[test]
fn interpret_binds_npy_inputs_and_writes_outputs() {
    let dir = scratch("interpret");
    let model = dir.join("clf.onnx");
    std::fs::write(&model, classifier().encode()).unwrap();
    let x = HostTensor::from_f32(vec![2, 3], DType::F32, &[1.0, 2.0, 3.0, -1.0, 0.0, 4.0]);
    write_npy(&dir.join("x.npy"), &x).unwrap();
    let out = dir.join("out");
    let o = bin()
        .args(["interpret", model.to_str().unwrap(), "--input"])
        .arg(format!("x={}", dir.join("x.npy").display()))
        .args(["--out", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let outs = v["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["name"], "y");
    assert_eq!(outs[0]["shape"], serde_json::json!([2, 4]));
    let y: Vec<f64> = outs[0]["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!((y[..4].iter().sum::<f64>() - 1.0).abs() < 1e-6);
    // logits row 0: [1+0+3+0.1, 0+4+3+0.2, -1+2+0+0.3, 0.5-1+0+0.4] -> class 1.
    assert_eq!(outs[1]["values"], serde_json::json!([1, 1]));
    let z = read_npy(&out.join("z.npy")).unwrap();
    assert_eq!((z.dtype, z.shape.clone()), (DType::I32, vec![2]));
    let y_file = read_npy(&out.join("y.npy")).unwrap();
    assert_eq!(y_file.shape, vec![2, 4]);

    // Unbound inputs are named; --random-inputs needs a shape for the symbolic batch.
    let o = bin().args(["interpret", model.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("x (float32[?, 3])"));
    let o = bin()
        .args([
            "interpret",
            model.to_str().unwrap(),
            "--random-inputs",
            "--input-shape",
            "x=5,3",
            "--optimize",
            "--print-graph",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("z: int64[5]"), "{text}");
    // The passes fused MatMul + Add; the layout pass put the rows on partitions.
    assert!(text.contains("mm: MatMul+Add(x, w, b) -> logits float32[5, 4] p0"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn onnx_conformance_counts_passed_failed_and_unsupported() {
    let dir = scratch("conformance");
    let x = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, -1.0, 0.0, 4.0]).unwrap();
    let relu = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 4.0]).unwrap();
    let case = |name: &str, model: ModelBuilder, expected: &Tensor| {
        let d = dir.join(name);
        std::fs::create_dir_all(d.join("test_data_set_0")).unwrap();
        std::fs::write(d.join("model.onnx"), model.encode()).unwrap();
        write_pb(&d.join("test_data_set_0/input_0.pb"), &x);
        write_pb(&d.join("test_data_set_0/output_0.pb"), expected);
    };
    let unary = |op: &str| {
        ModelBuilder::new(13).input("x", DataType::F32, &[2, 3]).node(op, "n", &["x"], &["y"], vec![]).output(
            "y",
            DataType::F32,
            &[2, 3],
        )
    };
    case("test_relu", unary("Relu"), &relu);
    case("test_relu_wrong", unary("Relu"), &x);
    case("test_frobnicate", unary("Frobnicate"), &x);
    let o = bin().args(["onnx-conformance", dir.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(!o.status.success(), "a failing case makes the command fail");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64(), v["unsupported"].as_u64(), v["total"].as_u64()),
        (Some(1), Some(1), Some(1), Some(3))
    );
    assert_eq!(v["ops"]["Relu"]["passed"], 1);
    assert_eq!(v["ops"]["Frobnicate"]["unsupported"], 1);
    let failed = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == "test_relu_wrong").unwrap();
    assert!(failed["reason"].as_str().unwrap().contains("element 3"), "{failed}");
    std::fs::remove_dir_all(dir.join("test_relu_wrong")).unwrap();
    let o = bin().args(["onnx-conformance", dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("1 passed, 0 failed, 1 unsupported (of 2 cases"), "{text}");
    assert!(text.contains("unsupported op Frobnicate"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tiny models `scripts/export_tiny_models.py` writes to `models/` (once committed):
/// each must reproduce its PyTorch sample output on the interpreter.
#[test]
fn bundled_tiny_models_match_their_pytorch_samples() {
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut found = 0;
    for name in ["tiny-gpt2", "tiny-llama", "tiny-cnn"] {
        let model = models_dir.join(format!("{name}.onnx"));
        if !model.exists() {
            println!("{} is not there yet: scripts/export_tiny_models.py writes it", model.display());
            continue;
        }
        found += 1;
        let files: Vec<PathBuf> =
            std::fs::read_dir(&models_dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
        let pick = |kind: &str| -> Vec<(String, PathBuf)> {
            let prefix = format!("{name}.{kind}.");
            files
                .iter()
                .filter_map(|p| {
                    let f = p.file_name()?.to_str()?;
                    Some((f.strip_prefix(&prefix)?.strip_suffix(".npy")?.to_string(), p.clone()))
                })
                .collect()
        };
        let out = scratch(name);
        let mut cmd = bin();
        cmd.args(["interpret", model.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        for (input, path) in pick("in") {
            cmd.arg("--input").arg(format!("{input}={}", path.display()));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let expected = pick("out");
        assert!(!expected.is_empty(), "{name}: no sample outputs");
        for (output, path) in expected {
            let (got, want) = (read_npy(&out.join(format!("{output}.npy"))).unwrap(), read_npy(&path).unwrap());
            assert_eq!(got.shape, want.shape, "{name} {output}");
            for (i, (a, b)) in got.to_f32().iter().zip(want.to_f32()).enumerate() {
                assert!((a - b).abs() <= 1e-4 + 1e-3 * b.abs(), "{name} {output}[{i}]: {a} vs {b}");
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!("{found} tiny models checked against their samples");
}
