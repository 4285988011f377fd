//! `trainyard compare`: one serving workload on every chip — the Neuron chips
//! simulated (prefill and one decode step built from the kernel library and
//! run timed-only), the GPUs from the analytic model — on the fewest chips
//! that fit (tensor parallelism over all their cores; for GPUs the smallest
//! fitting TP), priced with one kind of published price
//! and compared against the H100.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use trainyard_arch::{ChipSpec, DType, GpuSpec, PriceKind};
use trainyard_compiler::llm::LlmConfig;
use trainyard_report::{gpu_serving, smallest_gpu_tp, ChipPrice, Label, Row, ServingEstimate, Table};

use crate::llm::{simulate_llm, LayerSim, LlmReport, LlmWorkload, TpChoice};
use crate::model::workload;

/// The simulated chips, in report order.
pub const SIMULATED: [&str; 4] = ["trn1", "inf2", "trn2", "trn3"];

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareRequest {
    /// The model.
    pub cfg: LlmConfig,
    /// Sequences in flight.
    pub batch: u32,
    /// Prompt tokens per sequence.
    pub input_len: u64,
    /// Generated tokens per sequence.
    pub output_len: u64,
    /// Weights, activations and KV cache.
    pub dtype: DType,
    /// The one kind of price every row uses.
    pub price: PriceKind,
    /// Chips to include (names); empty = all.
    pub only: Vec<String>,
}

/// One chip that could not be compared, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// Chip name.
    pub chip: String,
    /// The reason (e.g. the memory plan's error, saying by how much it does not fit).
    pub reason: String,
}

/// The comparison: the priced table plus the simulated runs behind its Neuron rows.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Config source.
    pub model: String,
    /// Sequences in flight.
    pub batch: u32,
    /// Prompt tokens.
    pub input_len: u64,
    /// Generated tokens.
    pub output_len: u64,
    /// Dtype of weights and cache.
    pub dtype: String,
    /// The table (rows, prices, ratios against h100).
    pub table: Table,
    /// The simulated runs, one per Neuron chip that fits.
    pub simulated: Vec<LlmReport>,
    /// Chips left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// Wall time of the whole comparison, s.
    pub wall_s: f64,
}

fn wanted(req: &CompareRequest, chip: &str) -> bool {
    req.only.is_empty() || req.only.iter().any(|c| c.eq_ignore_ascii_case(chip))
}

/// The largest system a chip file lists (chips linked in one instance or UltraServer), or 1.
fn largest_system(chip: &ChipSpec) -> u32 {
    chip.systems.iter().map(|s| s.chips()).max().map_or(1, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// The workload on the fewest chips whose memory plan fits, with tensor parallelism over every
/// core of those chips (`chips × cores per chip`). A chip, not a core, is what is rented and what
/// one GPU is compared with; leaving cores of a rented chip idle would understate it. Chip counts
/// tried: powers of two up to the largest system the chip file lists.
fn smallest_fitting_chips(req: &CompareRequest, chip: &ChipSpec) -> Result<LlmWorkload> {
    let most = largest_system(chip);
    let mut chips = 1u32;
    let mut last_err = None;
    while chips <= most {
        let w = LlmWorkload {
            cfg: req.cfg.clone(),
            chips,
            chip: chip.clone(),
            tp: TpChoice::Fixed(chips * chip.chip.cores),
            batch: req.batch,
            input_len: req.input_len,
            output_len: req.output_len,
            dtype: req.dtype,
            check_races: false,
            expert_parallel: false,
            layer_sim: LayerSim::Extrapolate,
        };
        match w.plan() {
            Ok(_) => return Ok(w),
            Err(e) => last_err = Some(e),
        }
        chips *= 2;
    }
    match last_err {
        Some(e) => Err(e.context(format!("does not fit on {most} {} chips (its largest system)", chip.name))),
        None => bail!("{} lists no system to place the model on", chip.name),
    }
}

/// Runs the comparison.
pub fn compare(req: &CompareRequest) -> Result<Comparison> {
    if req.batch == 0 || req.input_len == 0 {
        bail!("--batch and --input-len must be at least 1");
    }
    if req.output_len < 2 {
        bail!("--output-len must be at least 2 (TPOT needs a decode step after the first token)");
    }
    let t0 = Instant::now();
    let mut table = Table::new("h100", req.price);
    let mut simulated = Vec::new();
    let mut skipped = Vec::new();

    for name in SIMULATED.into_iter().filter(|c| wanted(req, c)) {
        let chip = ChipSpec::by_name(name)?;
        let w = match smallest_fitting_chips(req, &chip) {
            Ok(w) => w,
            Err(e) => {
                skipped.push(Skipped { chip: name.to_string(), reason: format!("{e:#}") });
                continue;
            }
        };
        match simulate_llm(&w, None) {
            Ok(report) => {
                let est = ServingEstimate::from_latencies(
                    Label::Simulated,
                    report.chips,
                    report.tp,
                    req.batch,
                    req.output_len,
                    report.ttft_ms / 1e3,
                    report.tpot_ms / 1e3,
                )?;
                table.push(Row::new(
                    name,
                    &est,
                    &ChipPrice::of_chip(&chip, req.price),
                    chip.power.as_ref().and_then(|p| p.tdp_watts),
                ))?;
                simulated.push(report);
            }
            Err(e) => skipped.push(Skipped { chip: name.to_string(), reason: format!("{e:#}") }),
        }
    }

    let work = workload(&req.cfg, req.dtype, req.batch, req.input_len, req.output_len);
    let kv_total = f64::from(req.batch) * req.cfg.kv_cache_bytes(req.dtype, req.input_len + req.output_len) as f64;
    for gpu in GpuSpec::bundled()?.into_iter().filter(|g| wanted(req, &g.name)) {
        let tp = smallest_gpu_tp(&gpu, req.cfg.weight_bytes(req.dtype) as f64, kv_total, work.decode.activation_bytes)?;
        let Some(tp) = tp else {
            skipped.push(Skipped {
                chip: gpu.name.clone(),
                reason: format!("does not fit in one {}-GPU server", gpu.interconnect.gpus_per_server),
            });
            continue;
        };
        match gpu_serving(&gpu, &work, tp, req.dtype) {
            Ok(est) => {
                table.push(Row::new(&gpu.name, &est, &ChipPrice::of_gpu(&gpu, req.price), gpu.power.tdp_watts))?
            }
            Err(e) => skipped.push(Skipped { chip: gpu.name.clone(), reason: e.to_string() }),
        }
    }

    Ok(Comparison {
        model: req.cfg.source().to_string(),
        batch: req.batch,
        input_len: req.input_len,
        output_len: req.output_len,
        dtype: req.dtype.name().to_string(),
        table,
        simulated,
        skipped,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// Prints a comparison as text.
pub fn print(c: &Comparison) {
    say!(
        "{}: batch {}, {} tokens in / {} out, {}; each chip kind on the fewest chips that fit (Neuron: TP over all \
         their cores; GPU: smallest fitting TP)",
        c.model,
        c.batch,
        c.input_len,
        c.output_len,
        c.dtype
    );
    say!("{}", c.table.render_text().trim_end());
    say!(
        "tokens/s counts output tokens over the whole run: batch × output / (TTFT + (output − 1) × TPOT); \
         `vs h100` is tokens/s per $/h against h100's"
    );
    for r in &c.simulated {
        say!(
            "simulated {}: TP {} on {} chip(s), prefill {} instructions ({:.2} s to build + simulate), \
             decode step at context {} {} instructions ({:.2} s); HBM per core {:.2} GiB",
            r.chip,
            r.tp,
            r.chips,
            r.prefill.instructions,
            r.prefill.build_s + r.prefill.sim_s,
            r.decode_context,
            r.decode.instructions,
            r.decode.build_s + r.decode.sim_s,
            r.hbm_bytes_per_core as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(notes) = c.simulated.first().map(|r| &r.notes) {
        for n in notes {
            say!("note (simulated): {n}");
        }
    }
    for s in &c.skipped {
        say!("not compared: {}: {}", s.chip, s.reason);
    }
    say!("wall time: {:.1} s", c.wall_s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(only: &[&str]) -> CompareRequest {
        CompareRequest {
            cfg: LlmConfig::bundled("llama-3.2-1b").unwrap(),
            batch: 1,
            input_len: 128,
            output_len: 16,
            dtype: DType::Bf16,
            price: PriceKind::CapacityBlock,
            only: only.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn gpus_only_are_analytic_and_priced_against_h100() {
        let c = compare(&request(&["h100", "a100", "h200"])).unwrap();
        assert!(c.simulated.is_empty());
        let names: Vec<&str> = c.table.rows.iter().map(|r| r.chip.as_str()).collect();
        assert_eq!(names, ["a100", "h100", "h200"]);
        assert!(c.table.rows.iter().all(|r| r.label == Label::Analytic));
        let h100 = c.table.rows.iter().find(|r| r.chip == "h100").unwrap();
        assert_eq!(h100.ratio_vs_baseline, Some(1.0));
        // H200 has H100's compute and faster HBM: never slower per token.
        let h200 = c.table.rows.iter().find(|r| r.chip == "h200").unwrap();
        assert!(h200.tpot_ms <= h100.tpot_ms);
    }

    #[test]
    fn bad_workloads_are_refused() {
        let mut r = request(&["h100"]);
        r.output_len = 1;
        assert!(compare(&r).unwrap_err().to_string().contains("output-len"));
        r.output_len = 16;
        r.batch = 0;
        assert!(compare(&r).unwrap_err().to_string().contains("batch"));
    }
}
