//! End-to-end tests of the `trainyard` binary: the commands a user types,
//! their JSON contracts, and clear errors (never a panic) on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use trainyard_arch::DType;
use trainyard_runtime::{read_npy, write_npy, HostTensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainyard-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    bin().args(args).current_dir(root()).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with a one-line readable message, never a panic.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn chips_lists_every_bundled_chip() {
    let v: serde_json::Value = serde_json::from_str(&ok(&["chips", "--json"])).unwrap();
    let names: Vec<&str> = v["simulated"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["trn1", "inf2", "trn2", "trn3"]);
    let gpus: Vec<&str> = v["analytic"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(gpus, ["a100", "h100", "h200", "b200"]);
    let table = ok(&["chips"]);
    assert!(table.contains("trn3") && table.contains("HBM"));
}

#[test]
fn check_accepts_the_example_and_names_bad_lines() {
    let out = ok(&["check", "examples/tiny_matmul.tys", "--chip", "trn1"]);
    assert!(out.contains("ok for trn1"), "{out}");
    let dir = scratch("check");
    let bad = dir.join("bad.tys");
    std::fs::write(&bad, ".version 1\n.program p\n%0: matmull dst=x\n").unwrap();
    let err = fails(&["check", bad.to_str().unwrap()]);
    assert!(err.contains("line 3") && err.contains("matmull"), "{err}");
    // Valid syntax, invalid for the chip: moving free size 640 > 512 on trn2.
    let text = std::fs::read_to_string(root().join("examples/tiny_matmul.tys"))
        .unwrap()
        .replace("moving=sbuf[0:128,512]", "moving=sbuf[0:128,640]");
    let wide = dir.join("wide.tys");
    std::fs::write(&wide, text).unwrap();
    let err = fails(&["check", wide.to_str().unwrap(), "--chip", "trn2"]);
    assert!(err.contains("matmul") && err.contains("moving"), "{err}");
    fails(&["check", dir.join("missing.tys").to_str().unwrap()]);
}

#[test]
fn run_with_inputs_writes_outputs_and_reports_the_contract_keys() {
    let dir = scratch("run");
    let a: Vec<f32> = (0..128 * 128).map(|i| ((i % 7) as f32 - 3.0) / 8.0).collect();
    let b: Vec<f32> = (0..128 * 512).map(|i| ((i % 5) as f32 - 2.0) / 4.0).collect();
    write_npy(&dir.join("a.npy"), &HostTensor::from_f32(vec![128, 128], DType::F32, &a)).unwrap();
    write_npy(&dir.join("b.npy"), &HostTensor::from_f32(vec![128, 512], DType::F32, &b)).unwrap();
    let out_dir = dir.join("out");
    let trace = dir.join("t.json");
    let stdout = ok(&[
        "run",
        "examples/tiny_matmul.tys",
        "--chip",
        "trn1",
        "--input",
        &format!("a={}", dir.join("a.npy").display()),
        "--input",
        &format!("b={}", dir.join("b.npy").display()),
        "--out",
        out_dir.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["total_ns", "cycles", "engines", "dma", "instructions"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    let pe = &v["engines"]["core0.tensor"];
    for key in ["busy_ns", "utilization", "instructions"] {
        assert!(pe.get(key).is_some(), "engine misses {key}");
    }
    assert!(v["dma"]["bytes"].as_u64().unwrap() > 0 && v["dma"]["gbps"].as_f64().unwrap() > 0.0);
    assert_eq!(v["instructions"].as_u64(), Some(5));
    // The output matches relu(aᵀ·b) computed here.
    let y = read_npy(&out_dir.join("y.npy")).unwrap().to_f32();
    for (i, j) in [(0, 0), (5, 17), (127, 511)] {
        let want: f32 = (0..128).map(|k| a[k * 128 + i] * b[k * 512 + j]).sum::<f32>().max(0.0);
        assert!((y[i * 512 + j] - want).abs() < 1e-3, "y[{i},{j}] = {} vs {want}", y[i * 512 + j]);
    }
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(trace).unwrap()).unwrap();
    assert!(t["traceEvents"].as_array().unwrap().len() >= 5);
    // Timed-only gives the same cycles.
    let timed: serde_json::Value = serde_json::from_str(
        ok(&["run", "examples/tiny_matmul.tys", "--chip", "trn1", "--timed-only", "--json"]).trim(),
    )
    .unwrap();
    assert_eq!(timed["cycles"], v["cycles"]);
}

#[test]
fn run_reports_bad_inputs_clearly() {
    let dir = scratch("bad-inputs");
    let err = fails(&["run", "examples/tiny_matmul.tys"]);
    assert!(err.contains("a") && err.contains("--input"), "{err}");
    let wrong = dir.join("wrong.npy");
    write_npy(&wrong, &HostTensor::from_f32(vec![3, 3], DType::F32, &[0.0; 9])).unwrap();
    let err =
        fails(&["run", "examples/tiny_matmul.tys", "--input", &format!("a={}", wrong.display()), "--random-inputs"]);
    assert!(err.contains("`a`") || err.contains(" a"), "{err}");
    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, b"\x93NUMPY\x01\x00garbage").unwrap();
    let err = fails(&["run", "examples/tiny_matmul.tys", "--input", &format!("a={}", garbage.display())]);
    assert!(err.contains("garbage.npy"), "{err}");
    let err = fails(&["run", "examples/tiny_matmul.tys", "--input", "nonsense"]);
    assert!(err.contains("NAME=FILE"), "{err}");
    let err = fails(&["run", "examples/tiny_matmul.tys", "--chip", "tpu9", "--random-inputs"]);
    assert!(err.contains("tpu9"), "{err}");
}

#[test]
fn races_are_reported_with_both_instructions() {
    let err = fails(&["run", "examples/racy.tys", "--random-inputs"]);
    assert!(err.contains("race") && err.contains("%0 dma_copy") && err.contains("%1 activation"), "{err}");
}

#[test]
fn convert_round_trips_text_and_binary() {
    let dir = scratch("convert");
    let bin_path = dir.join("p.tyb");
    let txt_path = dir.join("p.tys");
    ok(&["convert", "examples/tiny_matmul.tys", "-o", bin_path.to_str().unwrap()]);
    ok(&["convert", bin_path.to_str().unwrap(), "-o", txt_path.to_str().unwrap()]);
    let a = ok(&["run", bin_path.to_str().unwrap(), "--timed-only", "--json"]);
    let b = ok(&["run", txt_path.to_str().unwrap(), "--timed-only", "--json"]);
    assert_eq!(a, b);
    let truncated = dir.join("t.tyb");
    let bytes = std::fs::read(&bin_path).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["run", truncated.to_str().unwrap(), "--timed-only"]);
    assert!(err.contains("t.tyb"), "{err}");
}

#[test]
fn demo_runs_and_checks_itself() {
    let dir = scratch("demo");
    let trace = dir.join("demo.json");
    let out = ok(&["demo", "--matmul", "--shape", "128x256x512", "--trace", trace.to_str().unwrap()]);
    assert!(out.contains("check: max |C - reference|") && out.contains("core0.tensor"), "{out}");
    assert!(trace.exists());
}

#[test]
fn model_reports_memory_plans_and_labelled_gpu_estimates() {
    let v: serde_json::Value = serde_json::from_str(&ok(&["model", "--model", "llama-3.1-8b", "--json"])).unwrap();
    assert_eq!(v["params_total"].as_u64(), Some(8_030_261_248));
    let trn2 = v["trainium_memory_plan"].as_array().unwrap().iter().find(|r| r["chip"] == "trn2").unwrap().clone();
    assert!(trn2["total_bytes_per_core"].as_u64().unwrap() <= trn2["hbm_bytes_per_core"].as_u64().unwrap());
    let rows = v["gpu_analytic"]["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["label"] == "analytic"), "{rows:?}");
    let text = ok(&["model", "--model", "llama-3.1-405b"]);
    assert!(text.contains("over by") && text.contains("trn1"), "{text}");
    let err = fails(&["model", "--model", "gpt2"]);
    assert!(err.contains("gpt2") && err.contains("llama-3.1-8b"), "{err}");
    let err = fails(&["run", "examples/tiny_matmul.tys", "--chip", "/nonexistent/chip.toml"]);
    assert!(err.contains("/nonexistent/chip.toml"), "{err}");
}

#[test]
fn compare_prices_gpus_against_h100_in_json() {
    let out = ok(&[
        "compare",
        "--model",
        "llama-3.2-1b",
        "--input-len",
        "64",
        "--output-len",
        "8",
        "--chip",
        "h100",
        "--chip",
        "a100",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["table"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let h100 = rows.iter().find(|r| r["chip"] == "h100").unwrap();
    assert_eq!(h100["ratio_vs_baseline"].as_f64(), Some(1.0));
    for key in
        ["ttft_ms", "tpot_ms", "tokens_per_s", "usd_per_hour", "usd_per_m_output_tokens", "tokens_per_s_per_usd_hour"]
    {
        assert!(h100[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {h100}");
    }
    assert!(fails(&["compare", "--model", "llama-3.2-1b", "--price", "cheap"]).contains("--price"));
}

#[test]
fn collectives_span_chips_and_report_bandwidth() {
    let out = ok(&[
        "kernel",
        "bench",
        "all_reduce",
        "--chip",
        "trn2",
        "--chips",
        "2",
        "--cores",
        "4",
        "--shape",
        "1000",
        "--dtype",
        "bf16",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["chips"].as_u64(), v["check_passed"].as_bool()), (Some(2), Some(true)), "{v}");
    assert_eq!(v["system"], "trn2.48xlarge");
    let c = &v["collective"];
    assert!(c["algbw_gbps"].as_f64().unwrap() > 0.0 && c["busbw_gbps"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["link_bytes"].as_u64().unwrap() > 0 && v["links"].as_object().is_some_and(|l| !l.is_empty()), "{v}");
    // A program spanning chips is emitted, checked and run with the same --chips.
    let dir = scratch("collective");
    let file = dir.join("ar.tys");
    let f = file.to_str().unwrap();
    ok(&["kernel", "emit", "all_gather", "--chip", "trn1", "--chips", "2", "--cores", "2", "--shape", "8,4", "-o", f]);
    assert!(ok(&["check", f, "--chip", "trn1", "--chips", "2"]).contains("ok for trn1"));
    assert!(fails(&["check", f, "--chip", "trn1"]).contains("exceed"));
    let out = ok(&["run", f, "--chip", "trn1", "--chips", "2", "--random-inputs", "--json"]);
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["chips"].as_u64(), Some(2));
    assert!(p["links"].as_object().is_some_and(|l| !l.is_empty()), "{p}");
    let err = fails(&["kernel", "bench", "all_reduce", "--chip", "trn2", "--chips", "65", "--cores", "65"]);
    assert!(err.contains("no system of 65 chips"), "{err}");
    let err = fails(&["kernel", "bench", "all_reduce", "--chip", "trn2", "--chips", "2", "--cores", "3"]);
    assert!(err.contains("--cores 3"), "{err}");
}
