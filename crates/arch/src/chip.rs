//! The chip specification: every hardware constant the simulator, validator and
//! reports use, loaded from `chips/*.toml` and validated on load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::system::{SystemLayout, SystemSpec};

/// A chip spec that could not be read, parsed or validated. The message names
/// the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: cannot read chip spec: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, so not also a `source`).
        error: std::io::Error,
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
    /// No `[[systems]]` entry of the chip has that many chips.
    #[error("chip `{chip}` has no system of {chips} chips: {largest}")]
    NoSystem {
        /// The chip.
        chip: String,
        /// Chips asked for.
        chips: u32,
        /// The largest system listed (or why none fits).
        largest: String,
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
    /// Cloud instances built from this chip, with their published prices (HW-INST-*, HW-PRICE-*).
    /// Empty when the file lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceSpec>,
    /// Power facts (HW-PWR-*), when the file states them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerSpec>,
    /// Multi-chip systems (instances, UltraServers) built from this chip, with
    /// their topology and links. Empty when the file lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<SystemSpec>,
    /// The system a run spans, set by [`ChipSpec::with_chips`]; `None` = one chip.
    /// Never read from or written to a chip file.
    #[serde(skip)]
    pub system: Option<SystemLayout>,
}

/// How an instance-hour is paid for. Prices differ severalfold between kinds
/// (trn1.32xlarge: $21.50 on demand vs $8.197 reserved), so they are never mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PriceKind {
    /// Pay-as-you-go list price.
    OnDemand,
    /// Effective hourly rate of a reservation or savings plan.
    Reserved,
    /// EC2 Capacity Block (reserved GPU/Trainium time slots) effective hourly rate.
    CapacityBlock,
}

impl PriceKind {
    /// All kinds, in a fixed order.
    pub const ALL: [PriceKind; 3] = [PriceKind::OnDemand, PriceKind::Reserved, PriceKind::CapacityBlock];

    /// The TOML key holding this kind of price.
    pub fn key(self) -> &'static str {
        match self {
            PriceKind::OnDemand => "on_demand_usd_per_hour",
            PriceKind::Reserved => "reserved_usd_per_hour",
            PriceKind::CapacityBlock => "capacity_block_usd_per_hour",
        }
    }
}

/// One `[[instances]]` entry: an instance type and the prices of one quote.
///
/// Prices from different sources or dates go in separate entries with the
/// same `name`, so that every price keeps its own `price_date` and
/// `price_source` (prices are volatile; an undated price is useless).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Instance type, e.g. `trn1.32xlarge`.
    pub name: String,
    /// Chips (or GPUs) per instance.
    pub chips: u32,
    /// On-demand price of the whole instance, USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_usd_per_hour: Option<f64>,
    /// Reserved / savings-plan effective price of the whole instance, USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_usd_per_hour: Option<f64>,
    /// Capacity Block effective price of the whole instance, USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_block_usd_per_hour: Option<f64>,
    /// AWS region the quote applies to, when the source names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// When the quote was published or seen: `YYYY-MM` or `YYYY-MM-DD`.
    /// Required when any price is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_date: Option<String>,
    /// Fact id and a short label, e.g. `HW-PRICE-CB-2024: EC2 Capacity Blocks pricing page`.
    /// Required when any price is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_source: Option<String>,
}

impl InstanceSpec {
    /// The instance-hour price of one kind, if this entry quotes it.
    pub fn price(&self, kind: PriceKind) -> Option<f64> {
        match kind {
            PriceKind::OnDemand => self.on_demand_usd_per_hour,
            PriceKind::Reserved => self.reserved_usd_per_hour,
            PriceKind::CapacityBlock => self.capacity_block_usd_per_hour,
        }
    }

    /// On-demand price per chip-hour (instance price / chips); `None` when no
    /// on-demand price is quoted. Use [`InstanceSpec::usd_per_chip_hour_of`] for
    /// reserved or Capacity Block prices.
    pub fn usd_per_chip_hour(&self) -> Option<f64> {
        self.usd_per_chip_hour_of(PriceKind::OnDemand)
    }

    /// Price per chip-hour of one kind; `None` when not quoted (or `chips` is 0,
    /// which validation rejects).
    pub fn usd_per_chip_hour_of(&self, kind: PriceKind) -> Option<f64> {
        let price = self.price(kind)?;
        (self.chips > 0).then(|| price / self.chips as f64)
    }

    /// Checks names, chip count, prices and dates; `index` places the entry in
    /// messages as `instances[index]`.
    pub fn validate(&self, path: &Path, index: usize) -> Result<(), SpecError> {
        let key = |field: &str| format!("instances[{index}].{field}");
        let bad = |field: &str, message: String| invalid(path, &key(field), message);
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if self.chips == 0 {
            return Err(bad("chips", format!("`{}` must hold at least one chip, got 0", self.name)));
        }
        let mut priced = false;
        for kind in PriceKind::ALL {
            if let Some(v) = self.price(kind) {
                priced = true;
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(
                        kind.key(),
                        format!("`{}`: price must be a positive number of USD, got {v}", self.name),
                    ));
                }
            }
        }
        if let Some(date) = &self.price_date {
            check_date(date).map_err(|m| bad("price_date", format!("`{}`: {m}", self.name)))?;
        } else if priced {
            return Err(bad("price_date", format!("`{}`: required when a price is given", self.name)));
        }
        match &self.price_source {
            Some(s) if s.trim().is_empty() => return Err(bad("price_source", "must not be empty".into())),
            None if priced => {
                return Err(bad("price_source", format!("`{}`: required when a price is given", self.name)));
            }
            _ => {}
        }
        if matches!(&self.region, Some(r) if r.trim().is_empty()) {
            return Err(bad("region", "must not be empty when given".into()));
        }
        Ok(())
    }
}

/// The lowest price per chip-hour of one kind over a set of instance entries.
pub fn min_usd_per_chip_hour(instances: &[InstanceSpec], kind: PriceKind) -> Option<f64> {
    instances.iter().filter_map(|i| i.usd_per_chip_hour_of(kind)).min_by(f64::total_cmp)
}

/// Power facts of a chip. `tdp_watts` is absent where no TDP is published
/// (HW-PWR-NEURON); reports must then treat energy as an explicit assumption.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// Published maximum board/chip power, watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdp_watts: Option<f64>,
    /// Fact id and label backing the value, or stating that none is published.
    pub source: String,
}

impl PowerSpec {
    /// Checks the TDP (positive when given) and the source (not empty).
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        if let Some(w) = self.tdp_watts {
            if !(w.is_finite() && w > 0.0) {
                return Err(invalid(path, "power.tdp_watts", format!("must be a positive number, got {w}")));
            }
        }
        if self.source.trim().is_empty() {
            return Err(invalid(path, "power.source", "must not be empty".into()));
        }
        Ok(())
    }
}

pub(crate) fn invalid(path: &Path, key: &str, message: String) -> SpecError {
    SpecError::Invalid { path: path.to_path_buf(), key: key.to_string(), message }
}

/// Accepts `YYYY-MM` or `YYYY-MM-DD` with a real month and day.
fn check_date(s: &str) -> Result<(), String> {
    let bad = || format!("must be YYYY-MM or YYYY-MM-DD, got `{s}`");
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| -> Option<u32> {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok()).flatten()
    };
    let (year, month, day) = match parts.as_slice() {
        [y, m] => (num(y, 4).ok_or_else(bad)?, num(m, 2).ok_or_else(bad)?, None),
        [y, m, d] => (num(y, 4).ok_or_else(bad)?, num(m, 2).ok_or_else(bad)?, Some(num(d, 2).ok_or_else(bad)?)),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} out of range in `{s}`"));
    }
    if let Some(day) = day {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if day == 0 || day > days {
            return Err(format!("day {day} out of range in `{s}`"));
        }
    }
    Ok(())
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

/// A spec file kind (chip or GPU): parsed from TOML, then range-checked.
pub(crate) trait SpecFile: serde::de::DeserializeOwned {
    /// Checks every value's range; the error names the file and the key.
    fn check(&self, path: &Path) -> Result<(), SpecError>;
}

/// Parses and validates a spec; `path` is only used in messages.
pub(crate) fn parse_spec<T: SpecFile>(text: &str, path: &Path) -> Result<T, SpecError> {
    let spec: T = toml::from_str(text)
        .map_err(|e| SpecError::Parse { path: path.to_path_buf(), message: e.to_string().trim_end().to_string() })?;
    spec.check(path)?;
    Ok(spec)
}

/// Reads, parses and validates a spec file.
pub(crate) fn load_spec<T: SpecFile>(path: &Path) -> Result<T, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|error| SpecError::Io { path: path.to_path_buf(), error })?;
    parse_spec(&text, path)
}

/// A bundled spec of `table` by name (case-insensitive), or a spec file if
/// `name_or_path` ends in `.toml`.
pub(crate) fn named_spec<T: SpecFile>(table: &[(&str, &str)], name_or_path: &str) -> Result<T, SpecError> {
    if name_or_path.ends_with(".toml") {
        return load_spec(Path::new(name_or_path));
    }
    let lower = name_or_path.to_ascii_lowercase();
    match table.iter().find(|(n, _)| *n == lower) {
        Some((n, text)) => parse_spec(text, Path::new(&format!("chips/{n}.toml"))),
        None => Err(SpecError::Unknown {
            name: name_or_path.to_string(),
            known: table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}

impl SpecFile for ChipSpec {
    fn check(&self, path: &Path) -> Result<(), SpecError> {
        self.validate(path)
    }
}

impl ChipSpec {
    /// Parses and validates a chip spec; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, SpecError> {
        parse_spec(text, path)
    }

    /// Reads, parses and validates a chip file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        load_spec(path)
    }

    /// A bundled chip by name, or a chip file if `name_or_path` ends in `.toml`.
    pub fn by_name(name_or_path: &str) -> Result<Self, SpecError> {
        named_spec(BUNDLED_CHIPS, name_or_path)
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
        for (i, inst) in self.instances.iter().enumerate() {
            inst.validate(path, i)?;
        }
        if let Some(p) = &self.power {
            p.validate(path)?;
        }
        for (i, system) in self.systems.iter().enumerate() {
            system.validate(self, path, i)?;
            if self.systems[..i].iter().any(|s| s.name == system.name) {
                return Err(bad(&format!("systems[{i}].name"), format!("`{}` is listed twice", system.name)));
            }
        }
        Ok(())
    }

    /// Lowest price per chip-hour of one kind over this chip's instances.
    pub fn min_usd_per_chip_hour(&self, kind: PriceKind) -> Option<f64> {
        min_usd_per_chip_hour(&self.instances, kind)
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

    fn trn1_text() -> &'static str {
        BUNDLED_CHIPS[0].1
    }

    fn err_of(text: &str) -> String {
        ChipSpec::from_toml_str(text, Path::new("x.toml")).unwrap_err().to_string()
    }

    #[test]
    fn neuron_chips_carry_instances_and_no_tdp() {
        for chip in ChipSpec::bundled().unwrap() {
            assert!(!chip.instances.is_empty(), "{}", chip.name);
            let power = chip.power.as_ref().unwrap();
            assert!(power.tdp_watts.is_none() && power.source.contains("HW-PWR-NEURON"), "{}", chip.name);
            for inst in &chip.instances {
                let priced = PriceKind::ALL.iter().any(|k| inst.price(*k).is_some());
                assert_eq!(priced, inst.price_date.is_some(), "{} {}", chip.name, inst.name);
            }
        }
        let trn2 = ChipSpec::by_name("trn2").unwrap();
        assert!(PriceKind::ALL.iter().all(|k| trn2.min_usd_per_chip_hour(*k).is_none()), "no Trn2 price is published");
        let trn3 = ChipSpec::by_name("trn3").unwrap();
        assert_eq!(trn3.instances.iter().map(|i| i.chips).collect::<Vec<_>>(), [64, 144]);
    }

    #[test]
    fn chips_round_trip_through_toml() {
        for chip in ChipSpec::bundled().unwrap() {
            let text = toml::to_string(&chip).unwrap();
            assert_eq!(ChipSpec::from_toml_str(&text, Path::new("rt.toml")).unwrap(), chip);
        }
    }

    #[test]
    fn usd_per_chip_hour_divides_by_chips() {
        let trn1 = ChipSpec::by_name("trn1").unwrap();
        let od: Vec<f64> = trn1.instances.iter().filter_map(InstanceSpec::usd_per_chip_hour).collect();
        assert_eq!(od.len(), 1);
        assert!((od[0] - 21.50 / 16.0).abs() < 1e-12, "{od:?}");
        // trn1.2xlarge's 0.512 per chip beats trn1.32xlarge's 8.197 / 16 = 0.5123.
        let ri = trn1.min_usd_per_chip_hour(PriceKind::Reserved).unwrap();
        assert!((ri - 0.512).abs() < 1e-12, "{ri}");
        let cb = trn1.min_usd_per_chip_hour(PriceKind::CapacityBlock).unwrap();
        assert!((cb - 15.49 / 16.0).abs() < 1e-12, "{cb}");
        let inf2 = ChipSpec::by_name("inf2").unwrap();
        assert!(inf2.min_usd_per_chip_hour(PriceKind::OnDemand).is_none());
        let bare = InstanceSpec {
            name: "x".into(),
            chips: 4,
            on_demand_usd_per_hour: None,
            reserved_usd_per_hour: None,
            capacity_block_usd_per_hour: Some(10.0),
            region: None,
            price_date: Some("2024-12".into()),
            price_source: Some("s".into()),
        };
        assert_eq!(bare.usd_per_chip_hour(), None);
        assert_eq!(bare.usd_per_chip_hour_of(PriceKind::CapacityBlock), Some(2.5));
    }

    #[test]
    fn negative_price_is_named() {
        let err = err_of(&trn1_text().replacen("reserved_usd_per_hour = 8.197", "reserved_usd_per_hour = -8.197", 1));
        assert!(
            err.contains("x.toml")
                && err.contains("instances[1].reserved_usd_per_hour")
                && err.contains("trn1.32xlarge"),
            "{err}"
        );
        let err = err_of(&trn1_text().replacen("on_demand_usd_per_hour = 21.50", "on_demand_usd_per_hour = 0.0", 1));
        assert!(err.contains("instances[2].on_demand_usd_per_hour"), "{err}");
    }

    #[test]
    fn zero_chips_is_named() {
        let err = err_of(&trn1_text().replacen("chips = 16", "chips = 0", 1));
        assert!(err.contains("x.toml") && err.contains("instances[1].chips"), "{err}");
    }

    #[test]
    fn bad_dates_are_named() {
        for bad in ["2024-13", "2025-02-29", "24-12", "2024/12", "2024-12-1", "2024-12-00", "december"] {
            let err = err_of(&trn1_text().replacen("price_date = \"2024-12\"", &format!("price_date = \"{bad}\""), 1));
            assert!(err.contains("x.toml") && err.contains("instances[3].price_date"), "{bad}: {err}");
        }
        for good in ["2024-02-29", "2026-06", "2025-10-31"] {
            assert!(check_date(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn price_needs_date_and_source() {
        let err = err_of(&trn1_text().replacen("price_date = \"2024-12\"", "", 1));
        assert!(err.contains("instances[3].price_date") && err.contains("required"), "{err}");
        let text = trn1_text().replacen(
            "price_source = \"HW-PRICE-CB-2024: aws.amazon.com/ec2/capacityblocks/pricing/\"",
            "",
            1,
        );
        let err = err_of(&text);
        assert!(err.contains("instances[3].price_source"), "{err}");
    }

    #[test]
    fn unknown_instance_key_is_named() {
        let err = err_of(&trn1_text().replacen("reserved_usd_per_hour = 0.512", "spot_usd_per_hour = 0.512", 1));
        assert!(err.contains("x.toml") && err.contains("spot_usd_per_hour"), "{err}");
    }

    #[test]
    fn bad_tdp_is_named() {
        let text = trn1_text().replacen("\n[power]\n", "\n[power]\ntdp_watts = -5.0\n", 1);
        let err = err_of(&text);
        assert!(err.contains("power.tdp_watts"), "{err}");
    }

    #[test]
    fn chips_without_instances_still_load() {
        // Instances and power are optional: a file without them is a valid chip.
        let cut = trn1_text().find("\n# Instances and prices").unwrap();
        let chip = ChipSpec::from_toml_str(&trn1_text()[..cut], Path::new("x.toml")).unwrap();
        assert!(chip.instances.is_empty() && chip.power.is_none());
    }

    #[test]
    fn bad_value_is_named() {
        let text = BUNDLED_CHIPS[0].1.replacen("partitions = 128", "partitions = 256", 1);
        let err = ChipSpec::from_toml_str(&text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("core.sbuf.partitions"), "{err}");
    }
}
