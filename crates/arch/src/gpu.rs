//! GPU comparison points: published peaks, memory, NVLink, power, instance
//! prices, and the achievable fractions of peak an analytic roofline model
//! needs, loaded and validated from `chips/{a100,h100,h200,b200}.toml`.
//!
//! The simulator never runs these; they exist so that reports can set a
//! Neuron chip against the GPUs people would otherwise rent.
//!
//! ```
//! use trainyard_arch::{GpuSpec, PriceKind};
//! let h100 = GpuSpec::by_name("h100").unwrap();
//! // Ring all-reduce bus bandwidth: per-direction NVLink times the measured fraction.
//! assert!((h100.allreduce_bus_gbps() - 450.0 * 0.822).abs() < 1e-9);
//! assert!(h100.min_usd_per_gpu_hour(PriceKind::CapacityBlock).is_some());
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chip::{invalid, min_usd_per_chip_hour, InstanceSpec, PowerSpec, PriceKind, SpecError};

/// Published dense peak TFLOPS of one GPU (no 2:4 sparsity).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuPeakTflops {
    /// BF16/FP16 tensor cores.
    pub bf16: f64,
    /// FP8 tensor cores; absent on GPUs without FP8 (A100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8: Option<f64>,
    /// TF32 tensor cores.
    pub tf32: f64,
    /// FP32 on the CUDA cores.
    pub fp32: f64,
}

/// Device memory of one GPU.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuMemory {
    /// HBM capacity, bytes.
    pub hbm_bytes: u64,
    /// Published HBM bandwidth, GB/s.
    pub hbm_gbps: f64,
}

/// GPU-to-GPU links inside one server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuInterconnect {
    /// Published NVLink bandwidth per GPU, GB/s, both directions together
    /// (NVIDIA's convention: 900 for H100 = 450 each way).
    pub nvlink_gbps: f64,
    /// GPUs in one NVLink/NVSwitch server.
    pub gpus_per_server: u32,
}

/// Achievable fractions of a published peak, each calibrated in the TOML
/// file to a public measurement (measured / peak). All lie in (0, 1].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuEfficiency {
    /// Large BF16 GEMM: fraction of `peak_tflops.bf16`.
    pub gemm: f64,
    /// Large FP8 GEMM: fraction of `peak_tflops.fp8`; present exactly when that peak is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemm_fp8: Option<f64>,
    /// Fused attention forward (prefill), BF16, head dim 128, long sequences:
    /// fraction of `peak_tflops.bf16`.
    pub attention_prefill: f64,
    /// Streaming HBM bandwidth (what memory-bound decode sees): fraction of `memory.hbm_gbps`.
    pub hbm_decode: f64,
    /// Ring all-reduce bus bandwidth (NCCL `busBw`): fraction of the
    /// per-direction NVLink rate `interconnect.nvlink_gbps / 2`.
    pub nvlink_allreduce: f64,
}

/// A complete, validated GPU description.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Short name (`a100`, `h100`, ...).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Published dense peaks.
    pub peak_tflops: GpuPeakTflops,
    /// Device memory.
    pub memory: GpuMemory,
    /// NVLink and server size.
    pub interconnect: GpuInterconnect,
    /// Power; `tdp_watts` is required for a GPU (HW-PWR-GPU).
    pub power: PowerSpec,
    /// Roofline efficiency factors.
    pub efficiency: GpuEfficiency,
    /// Cloud instances with their published prices (may be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceSpec>,
}

/// The GPU files bundled into the binary, like [`crate::BUNDLED_CHIPS`].
pub const BUNDLED_GPUS: &[(&str, &str)] = &[
    ("a100", include_str!("../../../chips/a100.toml")),
    ("h100", include_str!("../../../chips/h100.toml")),
    ("h200", include_str!("../../../chips/h200.toml")),
    ("b200", include_str!("../../../chips/b200.toml")),
];

impl crate::chip::SpecFile for GpuSpec {
    fn check(&self, path: &Path) -> Result<(), SpecError> {
        self.validate(path)
    }
}

impl GpuSpec {
    /// Parses and validates a GPU spec; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, SpecError> {
        crate::chip::parse_spec(text, path)
    }

    /// Reads, parses and validates a GPU file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        crate::chip::load_spec(path)
    }

    /// A bundled GPU by name (case-insensitive), or a GPU file if `name_or_path` ends in `.toml`.
    pub fn by_name(name_or_path: &str) -> Result<Self, SpecError> {
        crate::chip::named_spec(BUNDLED_GPUS, name_or_path)
    }

    /// All bundled GPUs.
    pub fn bundled() -> Result<Vec<Self>, SpecError> {
        BUNDLED_GPUS.iter().map(|(n, _)| Self::by_name(n)).collect()
    }

    /// Checks every value's range; the error names the file and the offending key.
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let positive = |key: &str, v: f64| -> Result<(), SpecError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(path, key, format!("must be a positive number, got {v}")))
            }
        };
        let fraction = |key: &str, v: f64| -> Result<(), SpecError> {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(invalid(path, key, format!("must be a fraction of peak in (0, 1], got {v}")))
            }
        };
        if self.name.trim().is_empty() {
            return Err(invalid(path, "name", "must not be empty".into()));
        }
        let p = &self.peak_tflops;
        positive("peak_tflops.bf16", p.bf16)?;
        positive("peak_tflops.tf32", p.tf32)?;
        positive("peak_tflops.fp32", p.fp32)?;
        if let Some(fp8) = p.fp8 {
            positive("peak_tflops.fp8", fp8)?;
        }
        positive("memory.hbm_bytes", self.memory.hbm_bytes as f64)?;
        positive("memory.hbm_gbps", self.memory.hbm_gbps)?;
        positive("interconnect.nvlink_gbps", self.interconnect.nvlink_gbps)?;
        positive("interconnect.gpus_per_server", self.interconnect.gpus_per_server as f64)?;
        self.power.validate(path)?;
        if self.power.tdp_watts.is_none() {
            return Err(invalid(path, "power.tdp_watts", "required for a GPU (HW-PWR-GPU publishes one)".into()));
        }
        let e = &self.efficiency;
        fraction("efficiency.gemm", e.gemm)?;
        fraction("efficiency.attention_prefill", e.attention_prefill)?;
        fraction("efficiency.hbm_decode", e.hbm_decode)?;
        fraction("efficiency.nvlink_allreduce", e.nvlink_allreduce)?;
        match (e.gemm_fp8, p.fp8) {
            (Some(f), Some(_)) => fraction("efficiency.gemm_fp8", f)?,
            (Some(_), None) => {
                return Err(invalid(path, "efficiency.gemm_fp8", "given but peak_tflops.fp8 is absent".into()));
            }
            (None, Some(_)) => {
                return Err(invalid(path, "efficiency.gemm_fp8", "required when peak_tflops.fp8 is given".into()));
            }
            (None, None) => {}
        }
        for (i, inst) in self.instances.iter().enumerate() {
            inst.validate(path, i)?;
        }
        Ok(())
    }

    /// Achievable large-GEMM TFLOPS in BF16.
    pub fn gemm_tflops_bf16(&self) -> f64 {
        self.peak_tflops.bf16 * self.efficiency.gemm
    }

    /// Achievable large-GEMM TFLOPS in FP8; `None` without FP8 tensor cores.
    pub fn gemm_tflops_fp8(&self) -> Option<f64> {
        Some(self.peak_tflops.fp8? * self.efficiency.gemm_fp8?)
    }

    /// Achievable fused-attention (prefill) TFLOPS in BF16.
    pub fn attention_tflops(&self) -> f64 {
        self.peak_tflops.bf16 * self.efficiency.attention_prefill
    }

    /// Achievable streaming HBM bandwidth, GB/s.
    pub fn decode_hbm_gbps(&self) -> f64 {
        self.memory.hbm_gbps * self.efficiency.hbm_decode
    }

    /// NVLink bandwidth in one direction, GB/s (half the published figure).
    pub fn nvlink_gbps_per_direction(&self) -> f64 {
        self.interconnect.nvlink_gbps / 2.0
    }

    /// Achievable ring all-reduce bus bandwidth, GB/s: an all-reduce of `B`
    /// bytes over `n` GPUs takes about `2 (n-1)/n * B / this`.
    pub fn allreduce_bus_gbps(&self) -> f64 {
        self.nvlink_gbps_per_direction() * self.efficiency.nvlink_allreduce
    }

    /// Lowest price per GPU-hour of one kind over this GPU's instances.
    pub fn min_usd_per_gpu_hour(&self, kind: PriceKind) -> Option<f64> {
        min_usd_per_chip_hour(&self.instances, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100_text() -> &'static str {
        BUNDLED_GPUS[1].1
    }

    fn err_of(text: &str) -> String {
        GpuSpec::from_toml_str(text, Path::new("g.toml")).unwrap_err().to_string()
    }

    #[test]
    fn bundled_gpus_load_and_validate() {
        let gpus = GpuSpec::bundled().unwrap();
        let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["a100", "h100", "h200", "b200"]);
        for g in &gpus {
            assert!(g.power.tdp_watts.unwrap() >= 400.0, "{}", g.name);
            assert_eq!(g.interconnect.gpus_per_server, 8, "{}", g.name);
        }
        let a100 = GpuSpec::by_name("A100").unwrap();
        assert!(a100.peak_tflops.fp8.is_none() && a100.gemm_tflops_fp8().is_none());
        let h200 = GpuSpec::by_name("h200").unwrap();
        let h100 = GpuSpec::by_name("h100").unwrap();
        assert_eq!(h200.peak_tflops, h100.peak_tflops, "H200 has H100's compute (HW-GPU-H200)");
        assert!(h200.memory.hbm_bytes > h100.memory.hbm_bytes);
    }

    #[test]
    fn derived_rates_follow_the_factors() {
        let h100 = GpuSpec::by_name("h100").unwrap();
        assert!((h100.gemm_tflops_bf16() - 989.4 * 0.699).abs() < 1e-9);
        assert!((h100.gemm_tflops_fp8().unwrap() - 1979.0 * 0.625).abs() < 1e-9);
        assert!((h100.attention_tflops() - 989.4 * 0.498).abs() < 1e-9);
        assert!((h100.decode_hbm_gbps() - 3350.0 * 0.866).abs() < 1e-9);
        assert_eq!(h100.nvlink_gbps_per_direction(), 450.0);
        let b200 = GpuSpec::by_name("b200").unwrap();
        assert!(b200.allreduce_bus_gbps() > h100.allreduce_bus_gbps());
        assert!(b200.instances.is_empty() && b200.min_usd_per_gpu_hour(PriceKind::OnDemand).is_none());
    }

    #[test]
    fn gpu_prices_per_gpu_hour() {
        let a100 = GpuSpec::by_name("a100").unwrap();
        let od = a100.min_usd_per_gpu_hour(PriceKind::OnDemand).unwrap();
        assert!((od - 32.77 / 8.0).abs() < 1e-9, "{od}");
        let cb = a100.min_usd_per_gpu_hour(PriceKind::CapacityBlock).unwrap();
        assert!((cb - 14.75 / 8.0).abs() < 1e-9, "{cb}");
        let h100 = GpuSpec::by_name("h100").unwrap();
        assert!(h100.min_usd_per_gpu_hour(PriceKind::OnDemand).is_none(), "HW-PRICE-P5-OD defaults to unknown");
    }

    #[test]
    fn unknown_gpu_is_named() {
        let err = GpuSpec::by_name("v100").unwrap_err().to_string();
        assert!(err.contains("v100") && err.contains("h100"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = err_of(&h100_text().replace("hbm_gbps = ", "hbm_gbs = "));
        assert!(err.contains("g.toml") && err.contains("hbm_gbs"), "{err}");
        let err = err_of(&h100_text().replace("attention_prefill = ", "# attention_prefill = "));
        assert!(err.contains("attention_prefill"), "{err}");
    }

    #[test]
    fn bad_efficiency_is_rejected() {
        for (from, to) in
            [("gemm = 0.699", "gemm = 1.2"), ("gemm = 0.699", "gemm = 0.0"), ("gemm = 0.699", "gemm = -0.5")]
        {
            let err = err_of(&h100_text().replacen(from, to, 1));
            assert!(err.contains("g.toml") && err.contains("efficiency.gemm") && err.contains("(0, 1]"), "{err}");
        }
        let err = err_of(&h100_text().replacen("hbm_decode = 0.866", "hbm_decode = 1.01", 1));
        assert!(err.contains("efficiency.hbm_decode"), "{err}");
        // Exactly 1.0 is a legal (if optimistic) factor.
        GpuSpec::from_toml_str(&h100_text().replacen("gemm = 0.699", "gemm = 1.0", 1), Path::new("g.toml")).unwrap();
    }

    #[test]
    fn fp8_factor_must_match_fp8_peak() {
        let err = err_of(&h100_text().replacen("fp8 = 1979.0", "", 1));
        assert!(err.contains("efficiency.gemm_fp8") && err.contains("absent"), "{err}");
        let err = err_of(&h100_text().replacen("gemm_fp8 = 0.625", "", 1));
        assert!(err.contains("efficiency.gemm_fp8") && err.contains("required"), "{err}");
    }

    #[test]
    fn gpu_needs_a_tdp() {
        let err = err_of(&h100_text().replacen("tdp_watts = 700.0", "", 1));
        assert!(err.contains("power.tdp_watts"), "{err}");
    }

    #[test]
    fn bad_instance_in_gpu_file_is_named() {
        let err = err_of(&h100_text().replacen("chips = 8", "chips = 0", 1));
        assert!(err.contains("instances[0].chips") && err.contains("p5.48xlarge"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        for g in GpuSpec::bundled().unwrap() {
            let text = toml::to_string(&g).unwrap();
            assert_eq!(GpuSpec::from_toml_str(&text, Path::new("rt.toml")).unwrap(), g);
        }
    }
}

/// Cheap checks that the vendored Hugging Face configs under `models/` hold
/// the numbers their README claims (arch has no JSON parser; a later task
/// writes one).
#[cfg(test)]
mod model_configs {
    /// (directory, file text, [(key, expected number)]).
    type Expected = (&'static str, &'static str, &'static [(&'static str, f64)]);

    /// Every vendored config and the numbers `models/README.md` lists for it.
    const CONFIGS: &[Expected] = &[
        (
            "llama-3.2-1b",
            include_str!("../../../models/llama-3.2-1b/config.json"),
            &[
                ("hidden_size", 2048.0),
                ("intermediate_size", 8192.0),
                ("num_attention_heads", 32.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 16.0),
                ("head_dim", 64.0),
                ("vocab_size", 128256.0),
                ("rope_theta", 500000.0),
                ("factor", 32.0),
            ],
        ),
        (
            "llama-3.1-8b",
            include_str!("../../../models/llama-3.1-8b/config.json"),
            &[
                ("hidden_size", 4096.0),
                ("intermediate_size", 14336.0),
                ("num_attention_heads", 32.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 32.0),
                ("vocab_size", 128256.0),
                ("rope_theta", 500000.0),
                ("factor", 8.0),
            ],
        ),
        (
            "llama-3.1-70b",
            include_str!("../../../models/llama-3.1-70b/config.json"),
            &[
                ("hidden_size", 8192.0),
                ("intermediate_size", 28672.0),
                ("num_attention_heads", 64.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 80.0),
                ("vocab_size", 128256.0),
                ("factor", 8.0),
            ],
        ),
        (
            "llama-3.1-405b",
            include_str!("../../../models/llama-3.1-405b/config.json"),
            &[
                ("hidden_size", 16384.0),
                ("intermediate_size", 53248.0),
                ("num_attention_heads", 128.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 126.0),
                ("vocab_size", 128256.0),
                ("factor", 8.0),
            ],
        ),
        (
            "mistral-7b-v0.1",
            include_str!("../../../models/mistral-7b-v0.1/config.json"),
            &[
                ("hidden_size", 4096.0),
                ("intermediate_size", 14336.0),
                ("num_attention_heads", 32.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 32.0),
                ("vocab_size", 32000.0),
                ("rope_theta", 10000.0),
                ("sliding_window", 4096.0),
            ],
        ),
        (
            "mixtral-8x7b-v0.1",
            include_str!("../../../models/mixtral-8x7b-v0.1/config.json"),
            &[
                ("hidden_size", 4096.0),
                ("intermediate_size", 14336.0),
                ("num_attention_heads", 32.0),
                ("num_key_value_heads", 8.0),
                ("num_hidden_layers", 32.0),
                ("num_local_experts", 8.0),
                ("num_experts_per_tok", 2.0),
                ("vocab_size", 32000.0),
                ("rope_theta", 1000000.0),
            ],
        ),
        (
            "qwen2.5-7b",
            include_str!("../../../models/qwen2.5-7b/config.json"),
            &[
                ("hidden_size", 3584.0),
                ("intermediate_size", 18944.0),
                ("num_attention_heads", 28.0),
                ("num_key_value_heads", 4.0),
                ("num_hidden_layers", 28.0),
                ("vocab_size", 152064.0),
                ("rope_theta", 1000000.0),
            ],
        ),
    ];

    /// The number after `"key":` (first occurrence), if any.
    fn number(text: &str, key: &str) -> Option<f64> {
        let needle = format!("\"{key}\":");
        let start = text.find(&needle)? + needle.len();
        let rest = text.get(start..)?.trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
            .unwrap_or(rest.len());
        rest.get(..end)?.parse().ok()
    }

    #[test]
    fn vendored_configs_hold_the_readme_numbers() {
        for (name, text, expected) in CONFIGS {
            for (key, want) in *expected {
                assert_eq!(number(text, key), Some(*want), "models/{name}/config.json: {key}");
            }
            let tie = text.contains("\"tie_word_embeddings\": true");
            assert_eq!(tie, *name == "llama-3.2-1b", "models/{name}/config.json: tie_word_embeddings");
        }
    }

    #[test]
    fn vendored_configs_are_balanced_json_objects() {
        for (name, text, _) in CONFIGS {
            let t = text.trim();
            assert!(t.starts_with('{') && t.ends_with('}'), "models/{name}/config.json");
            assert_eq!(t.matches('{').count(), t.matches('}').count(), "models/{name}/config.json");
            assert_eq!(t.matches('[').count(), t.matches(']').count(), "models/{name}/config.json");
        }
    }

    #[test]
    fn number_finder_handles_exponents_and_missing_keys() {
        assert_eq!(number(r#"{"rms_norm_eps": 1e-05, "x": 3}"#, "rms_norm_eps"), Some(1e-5));
        assert_eq!(number(r#"{"x": 3}"#, "y"), None);
        assert_eq!(number(r#"{"x": null}"#, "x"), None);
    }
}
