//! `trainyard compile`, `trainyard run MODEL.onnx|MODEL.tyb` and
//! `trainyard onnx-conformance --device` end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trainyard_arch::DType;
use trainyard_compiler::graph::{DataType, Tensor};
use trainyard_compiler::onnx::builder::{attr_int, attr_ints, ModelBuilder};
use trainyard_runtime::{read_npy, write_npy, HostTensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ty-onnx-device-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn data_dir() -> PathBuf {
    let dir = match std::env::var_os("ONNX_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.data/onnx"),
    };
    assert!(
        dir.join("node").is_dir(),
        "ONNX backend test data missing under {}: run scripts/fetch-onnx-data.sh",
        dir.display()
    );
    dir
}

/// A small CNN: Conv → BatchNorm → Relu → MaxPool → Conv (+ residual) → Relu →
/// GlobalAveragePool → Flatten → Gemm → Softmax, batch `n`.
fn cnn(n: i64) -> ModelBuilder {
    let t = |shape: Vec<usize>, seed: u64| {
        let len: usize = shape.iter().product();
        let v: Vec<f32> =
            (0..len).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 1000.0 - 0.5) * 0.6).collect();
        Tensor::from_f32(shape, &v).unwrap()
    };
    let pos = |len: usize| Tensor::from_f32(vec![len], &vec![1.2; len]).unwrap();
    ModelBuilder::new(17)
        .input("x", DataType::F32, &[n, 3, 12, 12])
        .initializer("w1", &t(vec![8, 3, 3, 3], 1))
        .initializer("b1", &t(vec![8], 2))
        .initializer("g", &pos(8))
        .initializer("beta", &t(vec![8], 3))
        .initializer("mean", &t(vec![8], 4))
        .initializer("var", &pos(8))
        .initializer("w2", &t(vec![8, 8, 3, 3], 5))
        .initializer("fc", &t(vec![10, 8], 6))
        .initializer("fcb", &t(vec![10], 7))
        .node("Conv", "conv1", &["x", "w1", "b1"], &["c1"], vec![attr_ints("pads", &[1, 1, 1, 1])])
        .node("BatchNormalization", "bn", &["c1", "g", "beta", "mean", "var"], &["n1"], vec![])
        .node("Relu", "relu1", &["n1"], &["r1"], vec![])
        .node(
            "MaxPool",
            "pool",
            &["r1"],
            &["p1"],
            vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
        )
        .node("Conv", "conv2", &["p1", "w2"], &["c2"], vec![attr_ints("pads", &[1, 1, 1, 1])])
        .node("Add", "res", &["c2", "p1"], &["a2"], vec![])
        .node("Relu", "relu2", &["a2"], &["r2"], vec![])
        .node("GlobalAveragePool", "gap", &["r2"], &["g2"], vec![])
        .node("Flatten", "flat", &["g2"], &["f"], vec![attr_int("axis", 1)])
        .node("Gemm", "fc", &["f", "fc", "fcb"], &["logits"], vec![attr_int("transB", 1)])
        .node("Softmax", "sm", &["logits"], &["y"], vec![attr_int("axis", 1)])
        .output("y", DataType::F32, &[n, 10])
}

fn input(dir: &Path, n: usize) -> PathBuf {
    let len = n * 3 * 12 * 12;
    let v: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.5).collect();
    let p = dir.join("x.npy");
    write_npy(&p, &HostTensor::from_f32(vec![n as u64, 3, 12, 12], DType::F32, &v)).unwrap();
    p
}

#[test]
fn run_onnx_checks_against_the_interpreter_with_per_op_times() {
    let dir = scratch("run");
    let model = dir.join("cnn.onnx");
    std::fs::write(&model, cnn(4).encode()).unwrap();
    let x = input(&dir, 4);
    for (chip, cores) in [("trn2", "1"), ("trn1", "2")] {
        let o = bin()
            .args(["run", model.to_str().unwrap(), "--chip", chip, "--cores", cores, "--check", "--json", "--input"])
            .arg(format!("x={}", x.display()))
            .output()
            .unwrap();
        let v = json(&o);
        assert!(v["total_ns"].as_f64().unwrap() > 0.0);
        assert!(v["max_abs_err"].as_f64().unwrap() < 1e-5, "{}", v["check"]);
        assert_eq!(v["check"]["passed"], true);
        let ops = v["ops"].as_array().unwrap();
        let conv = ops.iter().find(|o| o["name"] == "conv1").unwrap();
        assert_eq!(conv["op_type"], "Conv+BatchNormalization+Relu");
        assert_eq!(conv["kernel"], "conv2d");
        assert!(ops.iter().any(|o| o["op_type"] == "Conv+Add+Relu"), "residual add and ReLU fused");
        let pct: f64 = ops.iter().map(|o| o["pct"].as_f64().unwrap()).sum();
        assert!((pct - 100.0).abs() < 1.0, "the critical path is split over the ops: {pct}");
        assert!(v["hbm"]["peak"].as_u64().unwrap() >= v["hbm"]["weights"].as_u64().unwrap());
        if cores == "2" {
            assert_eq!(v["parallelism"]["kind"], "data_parallel");
            assert!(v["engines"].as_object().unwrap().keys().any(|k| k.starts_with("core1.")));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_writes_a_program_that_runs_like_the_model() {
    let dir = scratch("compile");
    let model = dir.join("cnn.onnx");
    std::fs::write(&model, cnn(2).encode()).unwrap();
    let x = input(&dir, 2);
    let tyb = dir.join("cnn.tyb");
    let o = bin()
        .args(["compile", model.to_str().unwrap(), "--chip", "trn2", "-o", tyb.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v = json(&o);
    assert!(v["instructions"].as_u64().unwrap() > 0);
    assert!(tyb.is_file() && dir.join("cnn.weights.safetensors").is_file());
    let o = bin().args(["check", tyb.to_str().unwrap(), "--chip", "trn2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = |path: &Path, out: &Path| {
        let o = bin()
            .args([
                "run",
                path.to_str().unwrap(),
                "--chip",
                "trn2",
                "--json",
                "--check",
                "--out",
                out.to_str().unwrap(),
                "--input",
            ])
            .arg(format!("x={}", x.display()))
            .output()
            .unwrap();
        json(&o)
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let va = run(&model, &a);
    let vb = run(&tyb, &b);
    assert_eq!(va["total_ns"], vb["total_ns"], "the same program");
    assert_eq!(vb["ops"].as_array().unwrap().len(), va["ops"].as_array().unwrap().len());
    assert_eq!(read_npy(&a.join("y.npy")).unwrap(), read_npy(&b.join("y.npy")).unwrap());
    // A compiled program runs only on its chip.
    let o = bin().args(["run", tyb.to_str().unwrap(), "--chip", "trn1", "--random-inputs"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("compiled for trn2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_ops_fail_at_compile_time_naming_node_and_op() {
    let dir = scratch("unsupported");
    let model = dir.join("sin.onnx");
    let m = ModelBuilder::new(17)
        .input("x", DataType::F32, &[4])
        .node("Sin", "the_sine", &["x"], &["y"], vec![])
        .output("y", DataType::F32, &[4]);
    std::fs::write(&model, m.encode()).unwrap();
    let o =
        bin().args(["compile", model.to_str().unwrap(), "-o", dir.join("sin.tyb").to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("node `the_sine` (Sin) cannot run on the device"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every ONNX backend node test that compiles for the device passes on it, on both
/// chip generations; the count only grows.
#[test]
fn node_tests_on_the_device() {
    let node = data_dir().join("node");
    for chip in ["trn2", "trn1"] {
        let o = bin()
            .args(["onnx-conformance", node.to_str().unwrap(), "--device", "--chip", chip, "--json"])
            .output()
            .unwrap();
        let v = json(&o);
        let failed: Vec<&Value> = v["cases"].as_array().unwrap().iter().filter(|c| c["outcome"] == "failed").collect();
        assert!(failed.is_empty(), "{chip}: {failed:?}");
        let passed = v["device"]["passed"].as_u64().unwrap();
        println!("{chip}: {passed} node tests pass on the device, {} unsupported", v["device"]["unsupported"]);
        assert!(passed >= 1026, "{chip}: fewer node tests pass on the device than before: {passed}");
        for op in ["Conv", "ConvTranspose", "MaxPool", "Resize", "LayerNormalization", "Softmax", "Gemm", "Pad"] {
            assert!(v["ops"][op]["device"]["passed"].as_u64().unwrap() > 0, "{op}");
        }
    }
}

#[test]
fn light_squeezenet_on_the_device() {
    let model = data_dir().join("light/light_squeezenet.onnx");
    let o = bin()
        .args([
            "run",
            model.to_str().unwrap(),
            "--chip",
            "trn2",
            "--random-inputs",
            "--random-weights",
            "3",
            "--check",
            "--json",
        ])
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["check"]["passed"], true, "{}", v["check"]);
    assert!(v["ops"].as_array().unwrap().iter().any(|o| o["kernel"] == "conv2d"));
}

/// The tiny models of `scripts/export_tiny_models.py` (once in `models/`): on the device
/// they match the interpreter and their PyTorch samples.
#[test]
fn bundled_tiny_models_on_the_device() {
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    for name in ["tiny-gpt2", "tiny-llama", "tiny-cnn"] {
        let model = models_dir.join(format!("{name}.onnx"));
        if !model.exists() {
            println!("{} is not there yet: scripts/export_tiny_models.py writes it", model.display());
            continue;
        }
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
        cmd.args([
            "run",
            model.to_str().unwrap(),
            "--chip",
            "trn2",
            "--check",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]);
        for (input, path) in pick("in") {
            cmd.arg("--input").arg(format!("{input}={}", path.display()));
        }
        let v = json(&cmd.output().unwrap());
        assert_eq!(v["check"]["passed"], true, "{name}: {}", v["check"]);
        for (output, path) in pick("out") {
            let (got, want) = (read_npy(&out.join(format!("{output}.npy"))).unwrap(), read_npy(&path).unwrap());
            for (i, (a, b)) in got.to_f32().iter().zip(want.to_f32()).enumerate() {
                assert!((a - b).abs() <= 1e-3 + 1e-2 * b.abs(), "{name} {output}[{i}]: {a} vs {b}");
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// The PP-OCR classifier, recognizer and detector (`scripts/fetch-ppocr.sh`) on the
/// device: they match the interpreter and onnxruntime's outputs.
#[test]
fn ppocr_models_on_the_device() {
    let dir = match std::env::var_os("PPOCR_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.data/ppocr"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "PP-OCR models missing under {}: run scripts/fetch-ppocr.sh",
        dir.display()
    );
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for m in manifest["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let out = scratch(name);
        let mut cmd = bin();
        cmd.arg("run").arg(dir.join(m["model"].as_str().unwrap()));
        cmd.args(["--chip", "trn2", "--check", "--json", "--out", out.to_str().unwrap()]);
        for input in m["inputs"].as_array().unwrap() {
            let file = dir.join(input["file"].as_str().unwrap());
            cmd.arg("--input").arg(format!("{}={}", input["name"].as_str().unwrap(), file.display()));
        }
        let v = json(&cmd.output().unwrap());
        assert_eq!(v["check"]["passed"], true, "{name}: {}", v["check"]);
        for output in m["outputs"].as_array().unwrap() {
            let o = output["name"].as_str().unwrap();
            let got = read_npy(&out.join(trainyard_runtime::output_file_name(o))).unwrap();
            let want = read_npy(&dir.join(output["file"].as_str().unwrap())).unwrap();
            assert_eq!(got.shape, want.shape, "{name} `{o}`");
            let max = got.to_f32().iter().zip(want.to_f32()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{name} `{o}`: max abs error {max:.3e} vs onnxruntime");
            assert!(max <= 2e-3, "{name} `{o}`: {max}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Data-parallel scaling figures (printed, not asserted): a residual block (two 3×3
/// 64→64 convolutions, a residual add, a 1×1 stride-2 64→128 convolution, a global
/// pool) at batch 16, 56×56, f32, timed-only, on 1 to 8 cores.
#[test]
#[ignore = "a benchmark: prints figures (cargo test -p trainyard-cli --test onnx_device_cli -- --ignored --nocapture)"]
fn data_parallel_scaling_figures() {
    let n = 16i64;
    let t = |shape: Vec<usize>, seed: u64| {
        let len: usize = shape.iter().product();
        let v: Vec<f32> =
            (0..len).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect();
        Tensor::from_f32(shape, &v).unwrap()
    };
    let m = ModelBuilder::new(17)
        .input("x", DataType::F32, &[n, 64, 56, 56])
        .initializer("w1", &t(vec![64, 64, 3, 3], 1))
        .initializer("w2", &t(vec![64, 64, 3, 3], 2))
        .initializer("w3", &t(vec![128, 64, 1, 1], 3))
        .node("Conv", "c1", &["x", "w1"], &["a"], vec![attr_ints("pads", &[1, 1, 1, 1])])
        .node("Relu", "r1", &["a"], &["b"], vec![])
        .node("Conv", "c2", &["b", "w2"], &["c"], vec![attr_ints("pads", &[1, 1, 1, 1])])
        .node("Add", "res", &["c", "x"], &["d"], vec![])
        .node("Relu", "r2", &["d"], &["e"], vec![])
        .node("Conv", "c3", &["e", "w3"], &["f"], vec![attr_ints("strides", &[2, 2])])
        .node("GlobalAveragePool", "gap", &["f"], &["y"], vec![])
        .output("y", DataType::F32, &[n, 128, 1, 1]);
    let dir = scratch("dp");
    let model = dir.join("block.onnx");
    std::fs::write(&model, m.encode()).unwrap();
    for (chip, cores) in [("trn1", &["1", "2"][..]), ("trn2", &["1", "2", "4", "8"][..])] {
        for c in cores {
            let o = bin()
                .args(["run", model.to_str().unwrap(), "--chip", chip, "--cores", c, "--timed-only", "--json"])
                .output()
                .unwrap();
            let v = json(&o);
            println!(
                "{chip}, {c} core(s): {:.1} us, {:.2} TFLOPS, {}",
                v["total_ns"].as_f64().unwrap() / 1e3,
                v["achieved_tflops"].as_f64().unwrap(),
                v["parallelism"]
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
