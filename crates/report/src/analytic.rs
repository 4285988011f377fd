//! The analytic roofline model of LLM serving on a GPU (label `analytic`).
//!
//! One step of a model on a tensor-parallel group of `tp` GPUs costs
//!
//! ```text
//! compute    = gemm_flops / (tp · peak(dtype) · eff_gemm(dtype))
//!            + attention_flops / (tp · peak_bf16 · eff_attention)
//! memory     = (weight + kv + activation bytes) / (tp · hbm · eff_hbm)
//! collective = count · (latency + 2 (tp−1)/tp · bytes / (nvlink_per_direction · eff_allreduce))
//! total      = max(compute, memory) + collective
//! ```
//!
//! Every `eff_*` is a field of [`GpuSpec::efficiency`], calibrated in its
//! `chips/*.toml` file to a cited public measurement. The two named
//! assumptions of this module are [`AnalyticParams`] fields with their
//! reasons: the fixed all-reduce latency and the usable share of HBM.
//!
//! **Why collectives are added, not overlapped.** Megatron-style tensor
//! parallelism all-reduces the output of each attention and MLP block before
//! the next block's norm can start, so the all-reduce sits on the critical
//! path of the same layer's compute; inference engines do not hide it behind
//! other work at the batch sizes of serving. [`AnalyticParams::overlap_collectives`]
//! switches to `max(compute, memory, collective)` to bound what perfect overlap
//! would gain.

use serde::{Deserialize, Serialize};
use trainyard_arch::{DType, GpuSpec};

use crate::{Label, ReportError};

/// Fixed cost of one small all-reduce inside an NVLink server, seconds.
///
/// Assumption: NVIDIA/nccl issue #1259 measures ~6 µs for a small all-reduce
/// on 2 GPUs of an HGX H100 with CUDA graphs, rising with the GPU count; 8 µs
/// stands for TP 2..8. It dominates the collective term of batch-1 decode.
pub const DEFAULT_ALLREDUCE_LATENCY_S: f64 = 8e-6;

/// Share of a GPU's HBM that weights, KV cache and activations may use.
///
/// Assumption: vLLM's default `gpu_memory_utilization = 0.9`; the other 10%
/// holds the CUDA context, cuBLAS/NCCL workspaces, CUDA graphs and fragmentation.
pub const DEFAULT_USABLE_HBM_FRACTION: f64 = 0.9;

/// The model's assumptions that are not properties of a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalyticParams {
    /// Fixed cost of each all-reduce, seconds ([`DEFAULT_ALLREDUCE_LATENCY_S`]).
    pub allreduce_latency_s: f64,
    /// `false` (default): `total = max(compute, memory) + collective`;
    /// `true`: `total = max(compute, memory, collective)` (see the module doc).
    pub overlap_collectives: bool,
    /// Share of HBM usable for weights, KV and activations ([`DEFAULT_USABLE_HBM_FRACTION`]).
    pub usable_hbm_fraction: f64,
}

impl Default for AnalyticParams {
    fn default() -> Self {
        AnalyticParams {
            allreduce_latency_s: DEFAULT_ALLREDUCE_LATENCY_S,
            overlap_collectives: false,
            usable_hbm_fraction: DEFAULT_USABLE_HBM_FRACTION,
        }
    }
}

impl AnalyticParams {
    fn validate(&self) -> Result<(), ReportError> {
        let l = self.allreduce_latency_s;
        if !(l.is_finite() && l >= 0.0) {
            return Err(ReportError::BadParam {
                name: "allreduce_latency_s",
                message: format!("must be a finite number of seconds >= 0, got {l}"),
            });
        }
        let f = self.usable_hbm_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(ReportError::BadParam {
                name: "usable_hbm_fraction",
                message: format!("must lie in (0, 1], got {f}"),
            });
        }
        Ok(())
    }
}

/// What one step of a model does, summed over the whole model and over the
/// whole tensor-parallel group (the model divides by `tp`, assuming an even
/// split; anything replicated across the group, such as KV heads when
/// `tp` exceeds their count, is counted once per copy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// FLOPs of the dense matmuls (projections, MLP, LM head), 2 per multiply-add.
    pub gemm_flops: f64,
    /// FLOPs of the attention score and value products, 2 per multiply-add.
    pub attention_flops: f64,
    /// Weight bytes read from HBM.
    pub weight_bytes: f64,
    /// KV-cache bytes read and written.
    pub kv_bytes: f64,
    /// Other activation bytes read and written in HBM.
    pub activation_bytes: f64,
    /// Size of the buffer each GPU all-reduces in one all-reduce, bytes.
    pub allreduce_bytes_per_gpu: f64,
    /// All-reduces per step (2 per layer for Megatron-style TP; ignored at TP 1).
    pub allreduce_count: u64,
}

impl Phase {
    fn validate(&self, phase: &'static str) -> Result<(), ReportError> {
        let fields = [
            ("gemm_flops", self.gemm_flops),
            ("attention_flops", self.attention_flops),
            ("weight_bytes", self.weight_bytes),
            ("kv_bytes", self.kv_bytes),
            ("activation_bytes", self.activation_bytes),
            ("allreduce_bytes_per_gpu", self.allreduce_bytes_per_gpu),
        ];
        for (field, value) in fields {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ReportError::BadPhase { phase, field, value });
            }
        }
        Ok(())
    }
}

/// An LLM serving run: one batch of `batch` sequences, each with an
/// `input_len`-token prompt and `output_len` generated tokens.
///
/// `decode` describes the decode step **at context `input_len`** (each
/// sequence attends over `input_len` cached tokens). Its `kv_bytes` and
/// `attention_flops` must be proportional to the context; the model scales
/// them for each later step (see [`gpu_serving_with`]). Sliding-window
/// attention, whose KV stops growing, is not expressible.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// The prefill step over the whole prompt (it also produces the first output token).
    pub prefill: Phase,
    /// One decode step at context `input_len`.
    pub decode: Phase,
    /// Sequences served together.
    pub batch: u32,
    /// Prompt tokens per sequence (at least 1).
    pub input_len: u64,
    /// Generated tokens per sequence (at least 2: one from prefill, one or more decode steps).
    pub output_len: u64,
}

impl Workload {
    fn validate(&self) -> Result<(), ReportError> {
        self.prefill.validate("prefill")?;
        self.decode.validate("decode")?;
        if self.batch == 0 {
            return Err(ReportError::BadWorkload { field: "batch", message: "must be at least 1, got 0".into() });
        }
        if self.input_len == 0 {
            return Err(ReportError::BadWorkload {
                field: "input_len",
                message: "must be at least 1: the decode phase is given at context input_len".into(),
            });
        }
        if self.output_len < 2 {
            return Err(ReportError::BadWorkload {
                field: "output_len",
                message: format!("must be at least 2 for TPOT to exist (one decode step), got {}", self.output_len),
            });
        }
        Ok(())
    }
}

/// Which term of a step is largest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Tensor-core FLOPs.
    Compute,
    /// HBM bytes.
    Memory,
    /// NVLink all-reduces exceed both compute and memory.
    Collective,
}

/// The time of one step and its parts, seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    /// GEMM plus attention time.
    pub compute_s: f64,
    /// HBM time.
    pub memory_s: f64,
    /// All-reduce time (0 at TP 1).
    pub collective_s: f64,
    /// The step: `max(compute, memory) + collective` (or the overlapped form).
    pub total_s: f64,
    /// The largest term.
    pub bound: Bound,
}

/// Latency and throughput of serving one [`Workload`] on `chips_used` chips.
///
/// `tokens_per_s` is output tokens over the whole run of the batch,
/// `batch · output_len / (ttft + (output_len − 1) · tpot)`, so that prefill
/// is paid for in $ per million output tokens. Simulated chips build theirs
/// with [`ServingEstimate::from_latencies`] so both use this definition.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingEstimate {
    /// `analytic` or `simulated`.
    pub label: Label,
    /// Chips (GPUs) the run occupies.
    pub chips_used: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Sequences served together.
    pub batch: u32,
    /// Generated tokens per sequence.
    pub output_len: u64,
    /// Time to first token: the prefill step, seconds.
    pub ttft_s: f64,
    /// Time per output token: the mean decode step, seconds.
    pub tpot_s: f64,
    /// Output tokens per second of the whole run, all sequences together.
    pub tokens_per_s: f64,
}

impl ServingEstimate {
    /// Builds an estimate from TTFT and TPOT (as a simulator measures them),
    /// deriving `tokens_per_s` by the definition above.
    pub fn from_latencies(
        label: Label,
        chips_used: u32,
        tp: u32,
        batch: u32,
        output_len: u64,
        ttft_s: f64,
        tpot_s: f64,
    ) -> Result<Self, ReportError> {
        let bad = |field: &'static str, message: String| Err(ReportError::BadWorkload { field, message });
        if chips_used == 0 || tp == 0 || batch == 0 {
            return bad("chips_used/tp/batch", format!("must all be >= 1, got {chips_used}/{tp}/{batch}"));
        }
        if output_len < 2 {
            return bad("output_len", format!("must be at least 2, got {output_len}"));
        }
        if !(ttft_s.is_finite() && ttft_s > 0.0) {
            return bad("ttft_s", format!("must be a positive number of seconds, got {ttft_s}"));
        }
        if !(tpot_s.is_finite() && tpot_s > 0.0) {
            return bad("tpot_s", format!("must be a positive number of seconds, got {tpot_s}"));
        }
        let run_s = ttft_s + (output_len - 1) as f64 * tpot_s;
        let tokens_per_s = batch as f64 * output_len as f64 / run_s;
        Ok(ServingEstimate { label, chips_used, tp, batch, output_len, ttft_s, tpot_s, tokens_per_s })
    }

    /// Steady-state decode throughput, `batch / tpot` (no prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.batch as f64 / self.tpot_s
    }
}

/// The separate parts of one step, seconds; context-proportional parts apart
/// so that decode steps at other contexts scale them.
#[derive(Clone, Copy, Debug)]
struct Terms {
    gemm_s: f64,
    attention_s: f64,
    fixed_bytes_s: f64,
    kv_s: f64,
    collective_s: f64,
    overlap: bool,
}

impl Terms {
    /// The step with attention and KV scaled by `context_scale`.
    fn at(&self, context_scale: f64) -> StepTime {
        let compute_s = self.gemm_s + self.attention_s * context_scale;
        let memory_s = self.fixed_bytes_s + self.kv_s * context_scale;
        let collective_s = self.collective_s;
        let roof = compute_s.max(memory_s);
        let total_s = if self.overlap { roof.max(collective_s) } else { roof + collective_s };
        let bound = if collective_s > roof {
            Bound::Collective
        } else if compute_s >= memory_s {
            Bound::Compute
        } else {
            Bound::Memory
        };
        StepTime { compute_s, memory_s, collective_s, total_s, bound }
    }
}

fn check_tp(gpu: &GpuSpec, tp: u32) -> Result<(), ReportError> {
    if tp == 0 {
        return Err(ReportError::ZeroTp { gpu: gpu.name.clone() });
    }
    let per_server = gpu.interconnect.gpus_per_server;
    if tp > per_server {
        return Err(ReportError::TpBeyondServer { gpu: gpu.name.clone(), tp, per_server });
    }
    Ok(())
}

/// Achievable GEMM rate for a compute dtype, FLOP/s. FP8 uses the FP8 peak
/// and `gemm_fp8` where the GPU has FP8 tensor cores; without them (A100) an
/// FP8 model runs weight-only (FP8 weights, BF16 math), so the BF16 rate applies.
fn gemm_flops_per_s(gpu: &GpuSpec, dtype: DType) -> Result<f64, ReportError> {
    let tflops = match dtype {
        DType::Bf16 | DType::F16 => gpu.gemm_tflops_bf16(),
        DType::F8E4M3 | DType::F8E5M2 => gpu.gemm_tflops_fp8().unwrap_or_else(|| gpu.gemm_tflops_bf16()),
        other => return Err(ReportError::UnsupportedDType { gpu: gpu.name.clone(), dtype: other.name() }),
    };
    Ok(tflops * 1e12)
}

fn terms(
    gpu: &GpuSpec,
    phase: &Phase,
    name: &'static str,
    tp: u32,
    dtype: DType,
    params: &AnalyticParams,
) -> Result<Terms, ReportError> {
    params.validate()?;
    check_tp(gpu, tp)?;
    phase.validate(name)?;
    let n = tp as f64;
    let gemm = n * gemm_flops_per_s(gpu, dtype)?;
    // Attention runs in BF16 whatever the GEMM dtype: the only calibrated
    // attention factor (`attention_prefill`) is a BF16 measurement.
    let attention = n * gpu.attention_tflops() * 1e12;
    let hbm = n * gpu.decode_hbm_gbps() * 1e9;
    let collective_s = if tp > 1 {
        let ring = 2.0 * (n - 1.0) / n * phase.allreduce_bytes_per_gpu / (gpu.allreduce_bus_gbps() * 1e9);
        phase.allreduce_count as f64 * (params.allreduce_latency_s + ring)
    } else {
        0.0
    };
    Ok(Terms {
        gemm_s: phase.gemm_flops / gemm,
        attention_s: phase.attention_flops / attention,
        fixed_bytes_s: (phase.weight_bytes + phase.activation_bytes) / hbm,
        kv_s: phase.kv_bytes / hbm,
        collective_s,
        overlap: params.overlap_collectives,
    })
}

/// One step of `phase` on `tp` GPUs with GEMMs in `dtype`, under the default [`AnalyticParams`].
pub fn gpu_step_time(gpu: &GpuSpec, phase: &Phase, tp: u32, dtype: DType) -> Result<StepTime, ReportError> {
    gpu_step_time_with(gpu, phase, tp, dtype, &AnalyticParams::default())
}

/// One step of `phase` on `tp` GPUs with GEMMs in `dtype` (see the module doc for the formula).
pub fn gpu_step_time_with(
    gpu: &GpuSpec,
    phase: &Phase,
    tp: u32,
    dtype: DType,
    params: &AnalyticParams,
) -> Result<StepTime, ReportError> {
    Ok(terms(gpu, phase, "phase", tp, dtype, params)?.at(1.0))
}

/// Serving `workload` on `tp` GPUs, under the default [`AnalyticParams`].
pub fn gpu_serving(gpu: &GpuSpec, workload: &Workload, tp: u32, dtype: DType) -> Result<ServingEstimate, ReportError> {
    gpu_serving_with(gpu, workload, tp, dtype, &AnalyticParams::default())
}

/// Serving `workload` on `tp` GPUs (label `analytic`, `chips_used = tp`).
///
/// TTFT is the prefill step. TPOT is the exact mean of the `output_len − 1`
/// decode steps: step `k` (1-based) attends over `c = input_len + k` tokens,
/// so its attention and KV terms are the decode phase's times `c / input_len`.
/// A step's time is the maximum of lines in `c` plus a constant, so the mean
/// is summed in closed form piece by piece (no per-step loop, exact for any
/// `output_len`), rather than taken at the mean context, which would be wrong
/// where the run crosses from memory- to compute-bound.
pub fn gpu_serving_with(
    gpu: &GpuSpec,
    workload: &Workload,
    tp: u32,
    dtype: DType,
    params: &AnalyticParams,
) -> Result<ServingEstimate, ReportError> {
    workload.validate()?;
    let ttft_s = terms(gpu, &workload.prefill, "prefill", tp, dtype, params)?.at(1.0).total_s;
    let t = terms(gpu, &workload.decode, "decode", tp, dtype, params)?;
    let per_token = 1.0 / workload.input_len as f64;
    let compute = (t.gemm_s, t.attention_s * per_token);
    let memory = (t.fixed_bytes_s, t.kv_s * per_token);
    let lo = workload.input_len + 1;
    let hi = workload.input_len + workload.output_len - 1;
    let tpot_s = if t.overlap {
        mean_of_max_linear(&[compute, memory, (t.collective_s, 0.0)], lo, hi)
    } else {
        mean_of_max_linear(&[compute, memory], lo, hi) + t.collective_s
    };
    ServingEstimate::from_latencies(Label::Analytic, tp, tp, workload.batch, workload.output_len, ttft_s, tpot_s)
}

/// Mean over the integers `c` in `lo..=hi` of `max_i (a_i + b_i c)` for the
/// lines `(a_i, b_i)`. The maximum is convex and piecewise linear, so the
/// range splits at the integer floors of the pairwise crossings into pieces
/// on each of which one line is the maximum; each piece is an arithmetic sum.
fn mean_of_max_linear(lines: &[(f64, f64)], lo: u64, hi: u64) -> f64 {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let mut cuts: Vec<u64> = Vec::new();
    for (i, &(a1, b1)) in lines.iter().enumerate() {
        for &(a2, b2) in lines.iter().skip(i + 1) {
            let x = (a2 - a1) / (b1 - b2);
            if x.is_finite() && x >= lo as f64 && x < hi as f64 {
                cuts.push(x.floor() as u64);
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    let max_at = |c: f64| lines.iter().map(|&(a, b)| a + b * c).fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    let mut start = lo;
    for end in cuts.into_iter().chain(std::iter::once(hi)) {
        if end < start {
            continue;
        }
        let (s, e) = (start as f64, end as f64);
        // No crossing lies strictly inside [s, e), so the line that is largest
        // at the midpoint is largest on the whole piece (ties at `e` are equal).
        let mid = (s + e) / 2.0;
        let &(a, b) = lines.iter().find(|&&(a, b)| a + b * mid >= max_at(mid)).unwrap_or(&(0.0, 0.0));
        let count = e - s + 1.0;
        sum += count * (a + b * mid);
        start = end + 1;
    }
    sum / (hi - lo + 1) as f64
}

/// The smallest TP degree whose GPUs hold the weights and KV cache, under the
/// default [`AnalyticParams`]; `None` when even one full server is too small.
pub fn smallest_gpu_tp(
    gpu: &GpuSpec,
    weight_bytes: f64,
    kv_bytes: f64,
    activation_bytes: f64,
) -> Result<Option<u32>, ReportError> {
    smallest_gpu_tp_with(gpu, weight_bytes, kv_bytes, activation_bytes, &AnalyticParams::default())
}

/// The smallest TP degree in 1, 2, 4, ... up to `gpus_per_server` with
/// `(weight_bytes + kv_bytes) / tp + activation_bytes ≤ usable_hbm_fraction · hbm_bytes`.
///
/// `weight_bytes` and `kv_bytes` are totals for the whole model and the whole
/// batch (split evenly over the group); `activation_bytes` is the peak
/// activation footprint of one GPU, not divided by TP because the residual
/// stream is replicated. Only powers of two are tried: Llama-class head and
/// KV-head counts (32, 64, 8) divide evenly only by them.
pub fn smallest_gpu_tp_with(
    gpu: &GpuSpec,
    weight_bytes: f64,
    kv_bytes: f64,
    activation_bytes: f64,
    params: &AnalyticParams,
) -> Result<Option<u32>, ReportError> {
    params.validate()?;
    for (field, value) in
        [("weight_bytes", weight_bytes), ("kv_bytes", kv_bytes), ("activation_bytes", activation_bytes)]
    {
        if !(value.is_finite() && value >= 0.0) {
            return Err(ReportError::BadPhase { phase: "memory", field, value });
        }
    }
    let usable = params.usable_hbm_fraction * gpu.memory.hbm_bytes as f64;
    let mut tp = 1u32;
    while tp <= gpu.interconnect.gpus_per_server {
        if (weight_bytes + kv_bytes) / tp as f64 + activation_bytes <= usable {
            return Ok(Some(tp));
        }
        tp = match tp.checked_mul(2) {
            Some(t) => t,
            None => break,
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h100() -> GpuSpec {
        GpuSpec::by_name("h100").unwrap()
    }

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// Batch-1 decode of a 1 GB model: 1 GFLOP against 1 GB of weights.
    fn tiny_decode() -> Phase {
        Phase { gemm_flops: 1e9, weight_bytes: 1e9, kv_bytes: 1e6, ..Phase::default() }
    }

    /// Prefill of 4096 tokens through the same model: 4096 times the FLOPs, same bytes.
    fn big_prefill() -> Phase {
        Phase { gemm_flops: 4096.0 * 1e9, attention_flops: 1e12, weight_bytes: 1e9, kv_bytes: 1e6, ..Phase::default() }
    }

    #[test]
    fn memory_bound_decode_is_weights_over_bandwidth() {
        let g = h100();
        let s = gpu_step_time(&g, &tiny_decode(), 1, DType::Bf16).unwrap();
        let hbm = 3350e9 * g.efficiency.hbm_decode;
        assert!(rel(s.memory_s, (1e9 + 1e6) / hbm) < 1e-12, "{s:?}");
        assert!(rel(s.compute_s, 1e9 / (989.4e12 * g.efficiency.gemm)) < 1e-12, "{s:?}");
        assert_eq!(s.bound, Bound::Memory);
        assert_eq!(s.collective_s, 0.0);
        assert_eq!(s.total_s, s.memory_s);
    }

    #[test]
    fn big_prefill_is_compute_bound() {
        let g = h100();
        let s = gpu_step_time(&g, &big_prefill(), 1, DType::Bf16).unwrap();
        let want = 4096e9 / (989.4e12 * g.efficiency.gemm) + 1e12 / (989.4e12 * g.efficiency.attention_prefill);
        assert!(rel(s.compute_s, want) < 1e-12, "{s:?}");
        assert_eq!(s.bound, Bound::Compute);
        assert_eq!(s.total_s, s.compute_s);
    }

    #[test]
    fn tp_halves_compute_and_memory_and_adds_collectives() {
        let g = h100();
        let mut p = big_prefill();
        p.allreduce_bytes_per_gpu = 4096.0 * 4096.0 * 2.0;
        p.allreduce_count = 64;
        let one = gpu_step_time(&g, &p, 1, DType::Bf16).unwrap();
        let two = gpu_step_time(&g, &p, 2, DType::Bf16).unwrap();
        assert!(rel(two.compute_s, one.compute_s / 2.0) < 1e-12);
        assert!(rel(two.memory_s, one.memory_s / 2.0) < 1e-12);
        assert_eq!(one.collective_s, 0.0);
        // Ring all-reduce at TP 2: 2 (2-1)/2 = 1 times the buffer over 450 GB/s * 0.822.
        let per = DEFAULT_ALLREDUCE_LATENCY_S + p.allreduce_bytes_per_gpu / (450e9 * 0.822);
        assert!(rel(two.collective_s, 64.0 * per) < 1e-12, "{two:?}");
        assert!(rel(two.total_s, two.compute_s + two.collective_s) < 1e-12);
        let eight = gpu_step_time(&g, &p, 8, DType::Bf16).unwrap();
        let per8 = DEFAULT_ALLREDUCE_LATENCY_S + 2.0 * 7.0 / 8.0 * p.allreduce_bytes_per_gpu / (450e9 * 0.822);
        assert!(rel(eight.collective_s, 64.0 * per8) < 1e-12);
    }

    #[test]
    fn overlap_takes_the_max_and_reports_collective_bound() {
        let g = h100();
        let p = Phase { allreduce_bytes_per_gpu: 1e9, allreduce_count: 4, ..tiny_decode() };
        let serial = gpu_step_time(&g, &p, 8, DType::Bf16).unwrap();
        assert_eq!(serial.bound, Bound::Collective);
        let params = AnalyticParams { overlap_collectives: true, ..AnalyticParams::default() };
        let over = gpu_step_time_with(&g, &p, 8, DType::Bf16, &params).unwrap();
        assert_eq!(over.total_s, over.collective_s);
        assert!(over.total_s < serial.total_s);
    }

    #[test]
    fn fp8_uses_the_fp8_peak_and_factor() {
        let g = h100();
        let p = Phase { gemm_flops: 1e15, ..Phase::default() };
        let bf16 = gpu_step_time(&g, &p, 1, DType::Bf16).unwrap();
        let fp8 = gpu_step_time(&g, &p, 1, DType::F8E4M3).unwrap();
        assert!(rel(bf16.compute_s, 1e15 / (989.4e12 * g.efficiency.gemm)) < 1e-12);
        assert!(rel(fp8.compute_s, 1e15 / (1979e12 * g.efficiency.gemm_fp8.unwrap())) < 1e-12);
        assert_eq!(gpu_step_time(&g, &p, 1, DType::F8E5M2).unwrap(), fp8);
        // A100 has no FP8 tensor cores: FP8 weights, BF16 math.
        let a100 = GpuSpec::by_name("a100").unwrap();
        let a_fp8 = gpu_step_time(&a100, &p, 1, DType::F8E4M3).unwrap();
        let a_bf16 = gpu_step_time(&a100, &p, 1, DType::Bf16).unwrap();
        assert_eq!(a_fp8, a_bf16);
    }

    #[test]
    fn bad_inputs_are_named() {
        let g = h100();
        let err = gpu_step_time(&g, &tiny_decode(), 1, DType::F32).unwrap_err().to_string();
        assert!(err.contains("h100") && err.contains("f32"), "{err}");
        let err = gpu_step_time(&g, &tiny_decode(), 0, DType::Bf16).unwrap_err().to_string();
        assert!(err.contains("h100") && err.contains("got 0"), "{err}");
        let err = gpu_step_time(&g, &tiny_decode(), 16, DType::Bf16).unwrap_err().to_string();
        assert!(err.contains("TP 16") && err.contains('8'), "{err}");
        let p = Phase { kv_bytes: -1.0, ..tiny_decode() };
        let err = gpu_step_time(&g, &p, 1, DType::Bf16).unwrap_err().to_string();
        assert!(err.contains("phase.kv_bytes"), "{err}");
        let mut w = llama8b_like(1);
        w.decode.gemm_flops = f64::NAN;
        let err = gpu_serving(&g, &w, 1, DType::Bf16).unwrap_err().to_string();
        assert!(err.contains("decode.gemm_flops"), "{err}");
        for (field, mut w) in
            [("batch", llama8b_like(0)), ("input_len", llama8b_like(1)), ("output_len", llama8b_like(1))]
        {
            match field {
                "input_len" => w.input_len = 0,
                "output_len" => w.output_len = 1,
                _ => {}
            }
            let err = gpu_serving(&g, &w, 1, DType::Bf16).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let params = AnalyticParams { usable_hbm_fraction: 1.5, ..AnalyticParams::default() };
        let err = gpu_step_time_with(&g, &tiny_decode(), 1, DType::Bf16, &params).unwrap_err().to_string();
        assert!(err.contains("usable_hbm_fraction"), "{err}");
    }

    /// Llama-3.1-8B-like: 8.03e9 parameters in bf16, 32 layers, 8 KV heads of 128.
    fn llama8b_like(batch: u32) -> Workload {
        let params = 8.03e9;
        let kv_per_token = 32.0 * 2.0 * 8.0 * 128.0 * 2.0;
        let (input, b) = (128.0, batch as f64);
        Workload {
            prefill: Phase {
                gemm_flops: 2.0 * params * input * b,
                attention_flops: 2.0 * 2.0 * 32.0 * 4096.0 * input * input / 2.0 * b,
                weight_bytes: 2.0 * params,
                kv_bytes: kv_per_token * input * b,
                ..Phase::default()
            },
            decode: Phase {
                gemm_flops: 2.0 * params * b,
                attention_flops: 2.0 * 2.0 * 32.0 * 4096.0 * input * b,
                weight_bytes: 2.0 * params,
                kv_bytes: kv_per_token * input * b,
                ..Phase::default()
            },
            batch,
            input_len: 128,
            output_len: 128,
        }
    }

    #[test]
    fn llama8b_batch1_decode_matches_hand_roofline() {
        let g = h100();
        let est = gpu_serving(&g, &llama8b_like(1), 1, DType::Bf16).unwrap();
        // Weights over achievable HBM bandwidth: ~16 GB / (3.35 TB/s * 0.887) ~ 5.4 ms.
        let want = 2.0 * 8.03e9 / (g.memory.hbm_gbps * 1e9 * g.efficiency.hbm_decode);
        assert!(rel(est.tpot_s, want) < 0.10, "tpot {} ms vs hand {} ms", est.tpot_s * 1e3, want * 1e3);
        assert_eq!(est.label, Label::Analytic);
        assert_eq!((est.tp, est.chips_used), (1, 1));
        let run = est.ttft_s + 127.0 * est.tpot_s;
        assert!(rel(est.tokens_per_s, 128.0 / run) < 1e-12);
        // 128 prompt tokens are 128 FLOP per weight byte, below the H100 ridge
        // (794 TFLOPS / 2.97 TB/s ~ 267): prefill is weight-bound too.
        let prefill = gpu_step_time(&g, &llama8b_like(1).prefill, 1, DType::Bf16).unwrap();
        assert_eq!(prefill.bound, Bound::Memory);
        assert!(rel(est.ttft_s, want) < 0.10, "ttft {} ms vs hand {} ms", est.ttft_s * 1e3, want * 1e3);
    }

    #[test]
    fn tpot_grows_with_context_between_first_and_last_step() {
        let g = h100();
        let mut w = llama8b_like(64);
        w.output_len = 4096;
        let est = gpu_serving(&g, &w, 1, DType::Bf16).unwrap();
        let first = gpu_step_time(&g, &w.decode, 1, DType::Bf16).unwrap().total_s;
        let mut last = w.decode;
        let scale = (128.0 + 4095.0) / 128.0;
        last.kv_bytes *= scale;
        last.attention_flops *= scale;
        let last = gpu_step_time(&g, &last, 1, DType::Bf16).unwrap().total_s;
        assert!(first < est.tpot_s && est.tpot_s < last, "{first} {} {last}", est.tpot_s);
        // Memory-bound throughout and linear in context: the mean is the step at the mean context.
        let mut mid = w.decode;
        let mean_scale = (128.0 + 2048.0) / 128.0;
        mid.kv_bytes *= mean_scale;
        mid.attention_flops *= mean_scale;
        let mid = gpu_step_time(&g, &mid, 1, DType::Bf16).unwrap();
        assert_eq!(mid.bound, Bound::Memory);
        assert!(rel(est.tpot_s, mid.total_s) < 1e-9, "{} vs {}", est.tpot_s, mid.total_s);
    }

    #[test]
    fn smallest_tp_fits_memory() {
        let g = h100(); // 80 GB, 72 GB usable
        assert_eq!(smallest_gpu_tp(&g, 16e9, 4e9, 1e9).unwrap(), Some(1));
        assert_eq!(smallest_gpu_tp(&g, 141e9, 0.0, 1e9).unwrap(), Some(2)); // 70.5 + 1 <= 72
        assert_eq!(smallest_gpu_tp(&g, 141e9, 2e9, 1e9).unwrap(), Some(4));
        assert_eq!(smallest_gpu_tp(&g, 810e9, 0.0, 1e9).unwrap(), None); // 405B bf16 needs > 8 x H100
        let h200 = GpuSpec::by_name("h200").unwrap();
        assert_eq!(smallest_gpu_tp(&h200, 810e9, 0.0, 1e9).unwrap(), Some(8));
        let err = smallest_gpu_tp(&g, -1.0, 0.0, 0.0).unwrap_err().to_string();
        assert!(err.contains("weight_bytes"), "{err}");
    }

    #[test]
    fn from_latencies_checks_and_derives_throughput() {
        let e = ServingEstimate::from_latencies(Label::Simulated, 1, 1, 4, 11, 0.5, 0.05).unwrap();
        assert!(rel(e.tokens_per_s, 44.0 / 1.0) < 1e-12);
        assert!(rel(e.decode_tokens_per_s(), 80.0) < 1e-12);
        assert!(ServingEstimate::from_latencies(Label::Simulated, 1, 1, 4, 11, 0.0, 0.05).is_err());
        assert!(ServingEstimate::from_latencies(Label::Simulated, 0, 1, 4, 11, 0.5, 0.05).is_err());
    }

    fn brute_mean(lines: &[(f64, f64)], lo: u64, hi: u64) -> f64 {
        let sum: f64 =
            (lo..=hi).map(|c| lines.iter().map(|&(a, b)| a + b * c as f64).fold(f64::NEG_INFINITY, f64::max)).sum();
        sum / (hi - lo + 1) as f64
    }

    #[test]
    fn mean_of_max_handles_a_crossing() {
        // 10 below c = 10, c above: mean over 1..=20 = (10*10 + (11+..+20)) / 20.
        let m = mean_of_max_linear(&[(10.0, 0.0), (0.0, 1.0)], 1, 20);
        assert!((m - (100.0 + 155.0) / 20.0).abs() < 1e-12);
        assert_eq!(mean_of_max_linear(&[(3.0, 0.5)], 4, 4), 5.0);
    }

    proptest! {
        #[test]
        fn mean_of_max_matches_brute_force(
            lines in proptest::collection::vec((0.0f64..100.0, -2.0f64..2.0), 1..4),
            lo in 1u64..200,
            len in 0u64..300,
        ) {
            let hi = lo + len;
            let want = brute_mean(&lines, lo, hi);
            let got = mean_of_max_linear(&lines, lo, hi);
            prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{got} vs {want}");
        }
    }
}
