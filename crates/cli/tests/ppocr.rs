//! `trainyard interpret` on the PP-OCR models of the `rapidocr-onnxruntime` 1.4.4 wheel:
//! the `.npy` outputs it writes must match onnxruntime's. The models and references come
//! from `scripts/fetch-ppocr.sh` (run by CI); without them this test fails and says so.

use std::path::PathBuf;
use std::process::Command;

use trainyard_runtime::{output_file_name, read_npy};

/// Same tolerance as crates/compiler/tests/ppocr.rs (f32 on both sides, sums in another order).
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-3;

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

#[test]
fn interpret_reproduces_onnxruntime_on_the_ppocr_models() {
    let dir = data_dir();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let models = manifest["models"].as_array().expect("manifest: `models`");
    assert_eq!(models.len(), 3, "the wheel ships the det, cls and rec models");
    let out_root = std::env::temp_dir().join(format!("ty-ppocr-cli-{}", std::process::id()));
    for m in models {
        let name = m["name"].as_str().unwrap();
        let out = out_root.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainyard"));
        cmd.arg("interpret").arg(dir.join(m["model"].as_str().unwrap())).arg("--out").arg(&out);
        for input in m["inputs"].as_array().unwrap() {
            let file = dir.join(input["file"].as_str().unwrap());
            cmd.arg("--input").arg(format!("{}={}", input["name"].as_str().unwrap(), file.display()));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        print!("{}", String::from_utf8_lossy(&o.stdout));
        for output in m["outputs"].as_array().unwrap() {
            let output_name = output["name"].as_str().unwrap();
            let got = read_npy(&out.join(output_file_name(output_name))).unwrap();
            let want = read_npy(&dir.join(output["file"].as_str().unwrap())).unwrap();
            assert_eq!(got.shape, want.shape, "{name} `{output_name}`");
            let (mut max_abs, mut outside) = (0f32, 0usize);
            for (a, b) in got.to_f32().into_iter().zip(want.to_f32()) {
                let d = (a - b).abs();
                max_abs = max_abs.max(d);
                outside += usize::from(d.is_nan() || d > ATOL + RTOL * b.abs());
            }
            println!("{name} `{output_name}`: max abs error {max_abs:.3e} vs onnxruntime");
            assert_eq!(outside, 0, "{name} `{output_name}`: {outside} elements off (max abs error {max_abs:e})");
        }
    }
    std::fs::remove_dir_all(&out_root).unwrap();
}
