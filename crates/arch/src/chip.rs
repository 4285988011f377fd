//! The chip specification: every hardware constant the simulator, validator and
//! reports use, loaded from `chips/*.toml` and validated on load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A chip spec that could not be read, parsed or validated. The message names
/// the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{path}: cannot read chip spec: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, a missing key, an unknown key or a wrongly typed value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of its legal range.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `core.sbuf.partitions`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No bundled or on-disk chip with that name.
    #[error("unknown chip `{name}` (known: {known})")]
    Unknown {
        /// The requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
}

/// Engine clocks in GHz (HW-CLK-*).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Clocks {
    /// Tensor engine (PE array).
    pub tensor_ghz: f64,
    /// Vector engine.
    pub vector_ghz: f64,
    /// Scalar (activation) engine.
    pub scalar_ghz: f64,
    /// GpSimd engine.
    pub gpsimd_ghz: f64,
}

/// Tensor engine geometry and cost parameters (HW-PE-*).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Systolic array rows (= max contraction partitions).
    pub rows: u32,
    /// Systolic array columns (= max stationary free size / PSUM partitions written).
    pub cols: u32,
    /// Max moving free size per matmul.
    pub moving_fmax: u32,
    /// Minimum MultiplyMoving initiation interval in PE cycles (MM_INIT_LATENCY).
    pub mm_init_cycles: u32,
    /// LoadStationary speedup over a same-size MM (LS cycles = N_stationary / this).
    pub ls_divisor: u32,
    /// Cost multiplier of FP32 inputs.
    pub fp32_factor: u32,
    /// Throughput multiplier of fp8 inputs (2 where double-row fp8 exists).
    pub fp8_speedup: u32,
}

/// One on-chip SRAM (SBUF or PSUM).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SramSpec {
    /// Partitions (rows).
    pub partitions: u32,
    /// Bytes per partition.
    pub bytes_per_partition: u32,
    /// Accumulation banks per partition (PSUM only; 0 for SBUF).
    #[serde(default)]
    pub banks: u32,
}

/// Vector / Scalar / GpSimd cost parameters (HW-VE-*, HW-DEF-VE).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ElementwiseSpec {
    /// Minimum initiation interval of an instruction, engine cycles.
    pub min_ii_cycles: u32,
    /// Extra cycles when an instruction depends on the previous one on the same engine.
    pub dep_penalty_cycles: u32,
    /// GpSimd start-up cycles added to every GpSimd instruction.
    pub gpsimd_start_cycles: u32,
    /// Innermost stride (bytes) above which SRAM bandwidth halves.
    pub stride_penalty_bytes: u32,
    /// VectorE perf-mode speedup for 16-bit, all-SBUF, contiguous copy/tensor_scalar (1 = none).
    pub vector_perf_16bit: u32,
    /// VectorE speedup for tensor_tensor with 16-bit SBUF inputs (1 = none).
    pub vector_tt_16bit: u32,
    /// ScalarE speedup for 16-bit copy/tensor_scalar (1 = none).
    pub scalar_perf_16bit: u32,
    /// ScalarE cycles to read out the accumulator after a reducing activation.
    pub act_read_acc_cycles: u32,
    /// Latency from a semaphore signal on one engine to a wake-up on another (ns).
    pub semaphore_ns: f64,
}

/// DMA engines of one core (HW-DMA-*, HW-DEF-DMA).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DmaSpec {
    /// DMA engines paired with one core.
    pub engines: u32,
    /// Queues per engine.
    pub queues: u32,
    /// Streaming rate of one DMA engine, bytes per ns.
    pub engine_bytes_per_ns: f64,
    /// SBUF partitions served by one engine in a spread transfer.
    pub partitions_per_engine: u32,
    /// Trigger/semaphore-to-start latency of one transfer, ns.
    pub fixed_latency_ns: f64,
    /// Per-descriptor (contiguous chunk) overhead on an engine, ns.
    pub descriptor_ns: f64,
}

/// Chip-level resources shared by all cores.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChipResources {
    /// NeuronCores per chip.
    pub cores: u32,
    /// HBM capacity, bytes.
    pub hbm_bytes: u64,
    /// HBM bandwidth, GB/s (= bytes/ns).
    pub hbm_gbps: f64,
    /// DMA engines per chip.
    pub dma_engines: u32,
    /// Collective-communication cores.
    pub cc_cores: u32,
    /// Chip-to-chip links.
    pub links: u32,
    /// Chip-to-chip bandwidth per chip, GB/s, all links together.
    pub link_gbps: f64,
}

/// Published peak dense TFLOPS per chip (for reports and sanity checks only).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeakTflops {
    /// BF16/FP16.
    pub bf16: f64,
    /// FP8.
    pub fp8: f64,
    /// FP32.
    pub fp32: f64,
}

/// Everything about one NeuronCore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoreSpec {
    /// Engine clocks.
    pub clocks: Clocks,
    /// Tensor engine.
    pub tensor: TensorSpec,
    /// State buffer.
    pub sbuf: SramSpec,
    /// Partial-sum buffer.
    pub psum: SramSpec,
    /// Vector/Scalar/GpSimd cost parameters.
    pub elementwise: ElementwiseSpec,
    /// DMA engines of this core.
    pub dma: DmaSpec,
}

/// A complete, validated chip description.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChipSpec {
    /// Short name (`trn1`, `trn2`, ...).
    pub name: String,
    /// Human description.
    pub description: String,
    /// NeuronCore generation (2 = NC-v2, 3 = NC-v3, 4 = NC-v4).
    pub generation: u32,
    /// Chip-level resources.
    pub chip: ChipResources,
    /// Per-core resources.
    pub core: CoreSpec,
    /// Published peaks.
    pub peak_tflops: PeakTflops,
}

/// The chip files bundled into the binary, so `--chip trn2` works anywhere.
pub const BUNDLED_CHIPS: &[(&str, &str)] = &[
    ("trn1", include_str!("../../../chips/trn1.toml")),
    ("inf2", include_str!("../../../chips/inf2.toml")),
    ("trn2", include_str!("../../../chips/trn2.toml")),
    ("trn3", include_str!("../../../chips/trn3.toml")),
];

/// The chip used when none is named.
pub const DEFAULT_CHIP: &str = "trn2";

impl ChipSpec {
    /// Parses and validates a chip spec; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, SpecError> {
        let spec: ChipSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// Reads, parses and validates a chip file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpecError::Io { path: path.to_path_buf(), source })?;
        Self::from_toml_str(&text, path)
    }

    /// A bundled chip by name, or a chip file if `name_or_path` ends in `.toml`.
    pub fn by_name(name_or_path: &str) -> Result<Self, SpecError> {
        if name_or_path.ends_with(".toml") {
            return Self::load(Path::new(name_or_path));
        }
        let lower = name_or_path.to_ascii_lowercase();
        match BUNDLED_CHIPS.iter().find(|(n, _)| *n == lower) {
            Some((n, text)) => Self::from_toml_str(text, Path::new(&format!("chips/{n}.toml"))),
            None => Err(SpecError::Unknown {
                name: name_or_path.to_string(),
                known: BUNDLED_CHIPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// All bundled chips.
    pub fn bundled() -> Result<Vec<Self>, SpecError> {
        BUNDLED_CHIPS.iter().map(|(n, _)| Self::by_name(n)).collect()
    }

    /// Checks every value's range; the error names the offending key.
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let bad =
            |key: &str, message: String| SpecError::Invalid { path: path.to_path_buf(), key: key.to_string(), message };
        let positive = |key: &str, v: f64| -> Result<(), SpecError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(key, format!("must be a positive number, got {v}")))
            }
        };
        if self.name.is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if !(2..=4).contains(&self.generation) {
            return Err(bad("generation", format!("must be 2, 3 or 4 (NeuronCore-v2..v4), got {}", self.generation)));
        }
        let c = &self.chip;
        positive("chip.cores", c.cores as f64)?;
        positive("chip.hbm_bytes", c.hbm_bytes as f64)?;
        positive("chip.hbm_gbps", c.hbm_gbps)?;
        positive("chip.dma_engines", c.dma_engines as f64)?;
        positive("chip.link_gbps", c.link_gbps)?;
        let k = &self.core;
        positive("core.clocks.tensor_ghz", k.clocks.tensor_ghz)?;
        positive("core.clocks.vector_ghz", k.clocks.vector_ghz)?;
        positive("core.clocks.scalar_ghz", k.clocks.scalar_ghz)?;
        positive("core.clocks.gpsimd_ghz", k.clocks.gpsimd_ghz)?;
        for (key, v) in [("core.tensor.rows", k.tensor.rows), ("core.tensor.cols", k.tensor.cols)] {
            if v == 0 || v > 128 {
                return Err(bad(key, format!("must be in 1..=128, got {v}")));
            }
        }
        positive("core.tensor.moving_fmax", k.tensor.moving_fmax as f64)?;
        positive("core.tensor.ls_divisor", k.tensor.ls_divisor as f64)?;
        positive("core.tensor.fp32_factor", k.tensor.fp32_factor as f64)?;
        positive("core.tensor.fp8_speedup", k.tensor.fp8_speedup as f64)?;
        for (name, s) in [("sbuf", &k.sbuf), ("psum", &k.psum)] {
            if s.partitions == 0 || s.partitions > 128 {
                return Err(bad(
                    &format!("core.{name}.partitions"),
                    format!("must be in 1..=128, got {}", s.partitions),
                ));
            }
            positive(&format!("core.{name}.bytes_per_partition"), s.bytes_per_partition as f64)?;
        }
        if k.psum.banks == 0 || !k.psum.bytes_per_partition.is_multiple_of(k.psum.banks) {
            return Err(bad(
                "core.psum.banks",
                format!(
                    "must be positive and divide bytes_per_partition ({}), got {}",
                    k.psum.bytes_per_partition, k.psum.banks
                ),
            ));
        }
        if k.tensor.moving_fmax as u64 * 4 > k.psum.bytes_per_partition as u64 {
            return Err(bad("core.tensor.moving_fmax", "an fp32 moving tile must fit in PSUM".into()));
        }
        let e = &k.elementwise;
        for (key, v) in [
            ("core.elementwise.vector_perf_16bit", e.vector_perf_16bit),
            ("core.elementwise.vector_tt_16bit", e.vector_tt_16bit),
            ("core.elementwise.scalar_perf_16bit", e.scalar_perf_16bit),
        ] {
            positive(key, v as f64)?;
        }
        if !(e.semaphore_ns.is_finite() && e.semaphore_ns >= 0.0) {
            return Err(bad("core.elementwise.semaphore_ns", "must be ≥ 0".into()));
        }
        let d = &k.dma;
        positive("core.dma.engines", d.engines as f64)?;
        positive("core.dma.queues", d.queues as f64)?;
        positive("core.dma.engine_bytes_per_ns", d.engine_bytes_per_ns)?;
        positive("core.dma.partitions_per_engine", d.partitions_per_engine as f64)?;
        for (key, v) in [("core.dma.fixed_latency_ns", d.fixed_latency_ns), ("core.dma.descriptor_ns", d.descriptor_ns)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(key, format!("must be ≥ 0, got {v}")));
            }
        }
        positive("peak_tflops.bf16", self.peak_tflops.bf16)?;
        positive("peak_tflops.fp8", self.peak_tflops.fp8)?;
        positive("peak_tflops.fp32", self.peak_tflops.fp32)?;
        Ok(())
    }

    /// Size of one PSUM bank per partition, bytes.
    pub fn psum_bank_bytes(&self) -> u32 {
        self.core.psum.bytes_per_partition / self.core.psum.banks
    }

    /// Per-core peak dense TFLOPS of the Tensor engine for 16-bit inputs,
    /// derived from the array size and clock (HW-CHIP-PEAK-CHECK).
    pub fn core_peak_tflops_bf16(&self) -> f64 {
        let t = &self.core.tensor;
        t.rows as f64 * t.cols as f64 * 2.0 * self.core.clocks.tensor_ghz / 1000.0
    }

    /// Per-core DMA streaming bandwidth, GB/s (all engines of the core).
    pub fn core_dma_gbps(&self) -> f64 {
        self.core.dma.engines as f64 * self.core.dma.engine_bytes_per_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_chips_load_and_validate() {
        let chips = ChipSpec::bundled().unwrap();
        assert_eq!(chips.len(), 4);
        let trn1 = ChipSpec::by_name("trn1").unwrap();
        assert_eq!(trn1.chip.cores, 2);
        assert!((trn1.core_peak_tflops_bf16() - 91.75).abs() < 0.1);
        assert_eq!(trn1.psum_bank_bytes(), 2048);
        let trn2 = ChipSpec::by_name("TRN2").unwrap();
        assert_eq!(trn2.chip.cores, 8);
    }

    #[test]
    fn unknown_chip_is_named() {
        let err = ChipSpec::by_name("tpu9").unwrap_err().to_string();
        assert!(err.contains("tpu9") && err.contains("trn2"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let text = BUNDLED_CHIPS[0].1.replace("hbm_gbps", "hbm_gbps_typo");
        let err = ChipSpec::from_toml_str(&text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("hbm_gbps"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = BUNDLED_CHIPS[0].1.replacen("partitions = 128", "partitions = 256", 1);
        let err = ChipSpec::from_toml_str(&text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("core.sbuf.partitions"), "{err}");
    }
}
