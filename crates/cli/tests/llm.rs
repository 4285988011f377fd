//! End-to-end tests of `trainyard llm`: the commands of the LLM feature as a user types them,
//! the JSON contract, functional generation from a checkpoint file, and clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(env!("CARGO_BIN_EXE_trainyard")).args(args).current_dir(root).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked") && err.starts_with("error: "), "{err}");
    err
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainyard-llm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn timed_only_json_has_the_contract_keys() {
    let args = [
        "llm",
        "--model",
        "tiny-qwen2",
        "--chip",
        "trn2",
        "--tp",
        "2",
        "--batch",
        "2",
        "--input-len",
        "33",
        "--output-len",
        "4",
        "--timed-only",
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    for key in ["ttft_ms", "tpot_ms", "tokens_per_s", "hbm_bytes_per_core", "breakdown"] {
        assert!(v.get(key).is_some(), "missing `{key}` in {v}");
    }
    assert!(v["ttft_ms"].as_f64().unwrap() > 0.0 && v["tpot_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["tp"], 2);
    let decode = &v["breakdown"]["decode"];
    assert!(decode["by_category"]["matmul"].as_f64().unwrap() > 0.0, "{decode}");
    assert!(decode["collectives"]["all_reduce.mlp"].as_f64().is_some(), "{decode}");
}

#[test]
fn functional_generation_from_an_initialised_checkpoint_matches_the_reference() {
    let dir = scratch("ckpt");
    let ckpt = dir.join("tiny.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let out = ok(&["llm", "init-checkpoint", "--model", "tiny-llama", "--seed", "5", "-o", ckpt]);
    assert!(out.contains("wrote") && out.contains("seed 5"), "{out}");
    let args = ["llm", "--config", "models/tiny-llama/config.json", "--checkpoint", ckpt, "--prompt", "1,2,3"];
    let text = ok(&[&args[..], &["--generate", "3", "--tp", "2"]].concat());
    assert!(text.contains("every generated token matches the host reference"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&[&args[..], &["--generate", "2", "--json"]].concat())).unwrap();
    assert_eq!(v["matches_reference"], true);
    assert_eq!(v["steps"].as_array().unwrap().len(), 2);
    assert_eq!(v["steps"][0]["tokens"], v["steps"][0]["reference"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_one_clear_line() {
    let e = fails(&["llm", "--model", "llama-3.1-8b", "--chip", "trn2", "--tp", "1", "--timed-only"]);
    assert!(e.contains("over by") && e.contains("GiB"), "{e}");
    let e = fails(&["llm", "--model", "llama-3.1-8b", "--timed-only", "--tp", "3"]);
    assert!(e.contains("tp=3"), "{e}");
    let e = fails(&["llm", "--model", "llama-3.1-8b"]);
    assert!(e.contains("--checkpoint") || e.contains("--timed-only"), "{e}");
    let e = fails(&["llm", "--model", "tiny-llama", "--prompt", "1,x"]);
    assert!(e.contains("`x`"), "{e}");
    let e = fails(&["llm", "--model", "tiny-llama", "--prompt", "1,2", "--prompt", "3"]);
    assert!(e.contains("same"), "{e}");
    let e = fails(&["llm", "--model", "no-such-model", "--timed-only"]);
    assert!(e.contains("no-such-model"), "{e}");
}
