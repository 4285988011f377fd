//! `trainyard-report`: how chips compare when serving an LLM, and at what price.
//!
//! * [`analytic`] — a roofline model of one serving step on a GPU we do not
//!   simulate: compute, HBM and NVLink all-reduce terms, each scaled by an
//!   efficiency factor that `chips/*.toml` calibrates to a cited measurement.
//!   A model-agnostic [`Workload`] (prefill and decode [`Phase`]s) goes in, a
//!   [`ServingEstimate`] (TTFT, TPOT, tokens/s) comes out.
//! * [`price`] — $/hour, $ per million output tokens, tokens/s per $/h, the
//!   price-performance ratio against a baseline and energy per token at TDP.
//!   A missing price gives `None`, printed `n/p`, never a guess.
//! * [`table`] — the comparison table, as plain text or JSON (serde).
//!
//! Every figure carries a [`Label`]: `analytic` (this crate's model) or
//! `simulated` (the trainyard simulator's timing).
//!
//! ```
//! use trainyard_arch::{DType, GpuSpec, PriceKind};
//! use trainyard_report::{gpu_serving, ChipPrice, Phase, Row, Table, Workload};
//!
//! // A 1B-parameter bf16 model, batch 1, 512 prompt tokens, 128 output tokens.
//! let params = 1.0e9;
//! let kv_per_token = 32_768.0; // bytes of K and V per token, all layers
//! let workload = Workload {
//!     prefill: Phase {
//!         gemm_flops: 2.0 * params * 512.0,
//!         weight_bytes: 2.0 * params,
//!         kv_bytes: kv_per_token * 512.0,
//!         ..Phase::default()
//!     },
//!     // The decode step at context `input_len`; KV bytes grow with context.
//!     decode: Phase { gemm_flops: 2.0 * params, weight_bytes: 2.0 * params, kv_bytes: kv_per_token * 512.0, ..Phase::default() },
//!     batch: 1,
//!     input_len: 512,
//!     output_len: 128,
//! };
//! let h100 = GpuSpec::by_name("h100").unwrap();
//! let est = gpu_serving(&h100, &workload, 1, DType::Bf16).unwrap();
//! assert!(est.tpot_s > 0.0 && est.ttft_s > 0.0);
//!
//! let kind = PriceKind::CapacityBlock;
//! let mut table = Table::new("h100", kind);
//! table.push(Row::new("h100", &est, &ChipPrice::of_gpu(&h100, kind), h100.power.tdp_watts)).unwrap();
//! let text = table.render_text();
//! assert!(text.contains("analytic") && text.contains("$/hour"));
//! ```
#![deny(missing_docs)]

pub mod analytic;
pub mod price;
pub mod table;

use serde::{Deserialize, Serialize};

pub use analytic::{
    gpu_serving, gpu_serving_with, gpu_step_time, gpu_step_time_with, smallest_gpu_tp, smallest_gpu_tp_with,
    AnalyticParams, Bound, Phase, ServingEstimate, StepTime, Workload,
};
pub use price::{
    joules_per_token, price_performance_vs, tokens_per_s_per_dollar_hour, usd_per_hour, usd_per_million_output_tokens,
    ChipPrice, PricedFigures,
};
pub use table::{Row, Table};

/// Where a performance figure comes from. Reports always print it next to the figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Timed by the trainyard simulator (Neuron chips).
    Simulated,
    /// Estimated by the roofline model in [`analytic`] (GPUs).
    Analytic,
}

impl Label {
    /// `simulated` or `analytic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Simulated => "simulated",
            Label::Analytic => "analytic",
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong when building a report. Messages name the
/// GPU, the phase and field, or the parameter at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// A tensor-parallel degree of 0.
    #[error("{gpu}: tensor-parallel degree must be at least 1, got 0")]
    ZeroTp {
        /// GPU name.
        gpu: String,
    },
    /// TP wider than one NVLink server: the model has no inter-server links.
    #[error("{gpu}: TP {tp} exceeds the {per_server} GPUs of one NVLink server (the analytic model has no inter-server links)")]
    TpBeyondServer {
        /// GPU name.
        gpu: String,
        /// Requested degree.
        tp: u32,
        /// `interconnect.gpus_per_server`.
        per_server: u32,
    },
    /// A compute dtype without a calibrated GEMM efficiency.
    #[error("{gpu}: no calibrated GEMM efficiency for {dtype} (the model knows bf16, f16, f8e4m3, f8e5m2)")]
    UnsupportedDType {
        /// GPU name.
        gpu: String,
        /// The dtype's name.
        dtype: &'static str,
    },
    /// A phase quantity that is negative, NaN or infinite.
    #[error("{phase}.{field} must be a finite number >= 0, got {value}")]
    BadPhase {
        /// `prefill`, `decode` or `phase`.
        phase: &'static str,
        /// The field name.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A workload or latency figure out of range.
    #[error("workload.{field}: {message}")]
    BadWorkload {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A model parameter out of range.
    #[error("parameter {name}: {message}")]
    BadParam {
        /// The parameter name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A row priced with another [`trainyard_arch::PriceKind`] than its table.
    #[error("row `{chip}` is priced {row} but the table is priced {table}: price kinds are never mixed")]
    MixedPriceKind {
        /// Chip of the row.
        chip: String,
        /// The row's price kind.
        row: &'static str,
        /// The table's price kind.
        table: &'static str,
    },
}
