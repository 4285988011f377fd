//! Timed-only serving figures of a model on simulated chips: one prefill and one decode step
//! built from the kernel library and simulated without values (synthetic weights).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use trainyard_arch::{ChipSpec, DType};
use trainyard_compiler::llm::program::{build_decoder, DecoderProgram, DecoderSpec, MoeRouting, Phase};
use trainyard_compiler::llm::{plan_memory, smallest_tp, LlmConfig, MemoryPlan, TP_CANDIDATES};
use trainyard_sim::{Mode, RunResult, SimOptions, Simulator};

use super::breakdown::Breakdown;

/// The tensor-parallel degree: a number, or the smallest of
/// [`TP_CANDIDATES`] whose memory plan fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpChoice {
    /// `--tp auto`.
    Auto,
    /// `--tp N`.
    Fixed(u32),
}

/// A serving workload to simulate.
#[derive(Clone, Debug)]
pub struct LlmWorkload {
    /// The model.
    pub cfg: LlmConfig,
    /// The chip.
    pub chip: ChipSpec,
    /// Chips available (their cores are numbered chip by chip).
    pub chips: u32,
    /// Tensor-parallel degree.
    pub tp: TpChoice,
    /// Sequences in flight.
    pub batch: u32,
    /// Prompt tokens per sequence.
    pub input_len: u64,
    /// Generated tokens per sequence.
    pub output_len: u64,
    /// Weights, activations and KV cache.
    pub dtype: DType,
    /// Run the simulator's race checker (slower).
    pub check_races: bool,
    /// Spread MoE experts over the cores (`--ep`) instead of slicing every expert.
    pub expert_parallel: bool,
}

impl LlmWorkload {
    /// The context of the decode step whose time is TPOT: halfway through the output,
    /// `input_len + max(1, output_len / 2)`.
    pub fn decode_context(&self) -> u64 {
        self.input_len + (self.output_len / 2).max(1)
    }

    /// HBM bytes of one core (the chip's HBM shared evenly by its cores).
    pub fn hbm_per_core(&self) -> u64 {
        self.chip.chip.hbm_bytes / u64::from(self.chip.chip.cores.max(1))
    }

    /// The memory plan at the chosen TP degree (`--tp auto`: the smallest that fits), for the
    /// whole context `input_len + output_len`; a plan that does not fit is an error saying
    /// by how much.
    pub fn plan(&self) -> Result<MemoryPlan> {
        let cores = self.chips * self.chip.chip.cores;
        let context = self.input_len + self.output_len;
        let per_core = self.hbm_per_core();
        let tp = match self.tp {
            TpChoice::Fixed(tp) => tp,
            TpChoice::Auto => smallest_tp(&self.cfg, self.dtype, self.batch, context, per_core, cores, &TP_CANDIDATES)
                .with_context(|| {
                    format!("--tp auto: no TP degree fits {} on {} × {}", self.cfg.source(), self.chips, self.chip.name)
                })?,
        };
        plan_memory(&self.cfg, self.dtype, tp, self.batch, context, per_core, cores)
            .with_context(|| format!("{} on {} × {}", self.cfg.source(), self.chips, self.chip.name))
    }
}

/// One simulated step.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRun {
    /// Program name.
    pub program: String,
    /// Simulated time, ns.
    pub total_ns: f64,
    /// Instructions.
    pub instructions: u64,
    /// Wall time to build the program, s.
    pub build_s: f64,
    /// Wall time to simulate it, s.
    pub sim_s: f64,
    /// Where the time goes.
    pub breakdown: Breakdown,
    /// Instructions per op label, summed over layers.
    pub instructions_by_op: std::collections::BTreeMap<String, u64>,
}

/// The figures of a workload.
#[derive(Clone, Debug, Serialize)]
pub struct LlmReport {
    /// Config source.
    pub model: String,
    /// Chip name.
    pub chip: String,
    /// Chips the program runs on.
    pub chips: u32,
    /// Tensor-parallel degree (cores used).
    pub tp: u32,
    /// Weight/activation/cache dtype.
    pub dtype: String,
    /// Sequences in flight.
    pub batch: u32,
    /// Prompt tokens.
    pub input_len: u64,
    /// Generated tokens.
    pub output_len: u64,
    /// Context of the timed decode step.
    pub decode_context: u64,
    /// Time to first token of the whole batch: the prefill, ms (all `prefill_runs` runs).
    pub ttft_ms: f64,
    /// Back-to-back prefill runs (1 = batched; `batch` = one prompt at a time, see [`prefill_runs`]).
    pub prefill_runs: u32,
    /// Time per output token: the decode step at `decode_context`, ms.
    pub tpot_ms: f64,
    /// Decode throughput, `batch / TPOT`.
    pub tokens_per_s: f64,
    /// HBM per core the memory plan needs (weights + KV cache + activations).
    pub hbm_bytes_per_core: u64,
    /// The memory plan.
    pub memory: MemoryPlan,
    /// The prefill run.
    pub prefill: PhaseRun,
    /// The decode-step run.
    pub decode: PhaseRun,
    /// What the reader of the figures needs to know.
    pub notes: Vec<String>,
}

/// Builds and simulates one step; returns the program, the run and its summary.
pub fn run_phase(
    cfg: &LlmConfig,
    chip: &ChipSpec,
    spec: &DecoderSpec,
    check_races: bool,
) -> Result<(DecoderProgram, RunResult, PhaseRun)> {
    let t0 = Instant::now();
    let dp = build_decoder(cfg, chip, spec)?;
    let build_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let opts = SimOptions { mode: Mode::TimedOnly, check_races, record_events: true, ..SimOptions::default() };
    let mut sim = Simulator::new(chip, &dp.program, opts)?;
    let run = sim.run().with_context(|| format!("simulating {}", dp.program.name))?;
    let sim_s = t1.elapsed().as_secs_f64();
    let phase = PhaseRun {
        program: dp.program.name.clone(),
        total_ns: run.total_ps as f64 / 1000.0,
        instructions: run.instructions,
        build_s,
        sim_s,
        breakdown: Breakdown::of_run(&dp.ops, &run),
        instructions_by_op: dp.ops.iter().fold(Default::default(), |mut m, o| {
            *m.entry(o.label.clone()).or_default() += u64::from(o.insts.end - o.insts.start);
            m
        }),
    };
    Ok((dp, run, phase))
}

/// Prompt tokens a batched prefill may hold; larger batches are prefilled one prompt at a time.
pub const PREFILL_BATCH_TOKENS: u64 = 8192;

/// How many back-to-back prefill runs serve `batch` prompts of `input_len` tokens: 1 (batched)
/// when they hold at most [`PREFILL_BATCH_TOKENS`] tokens together, else one per prompt.
pub fn prefill_runs(batch: u32, input_len: u64) -> u32 {
    if u64::from(batch) * input_len <= PREFILL_BATCH_TOKENS {
        1
    } else {
        batch
    }
}

/// Simulates the prefill of `input_len` tokens and one decode step at
/// [`LlmWorkload::decode_context`] in timed-only mode; writes a Perfetto trace of both to `trace`.
pub fn simulate_llm(w: &LlmWorkload, trace: Option<&Path>) -> Result<LlmReport> {
    if w.batch == 0 || w.input_len == 0 {
        bail!("--batch and --input-len must be at least 1");
    }
    let plan = w.plan()?;
    let tp = plan.tp;
    let chips = tp.div_ceil(w.chip.chip.cores.max(1));
    let chip = w.chip.with_chips(chips)?;
    let spec = |phase| DecoderSpec {
        phase,
        batch: w.batch as usize,
        dtype: w.dtype,
        tp,
        moe: MoeRouting::Uniform,
        expert_parallel: w.expert_parallel,
        reuse_layers: true,
    };
    // A batch whose prompts together exceed PREFILL_BATCH_TOKENS is prefilled one prompt after
    // another: the B programs are identical up to tensor addresses and no cost rule looks at
    // addresses, so B back-to-back runs (each starting on an idle machine after the previous one
    // ends) take exactly B times one run; one is simulated. Batched prefill of that many tokens
    // would gain little (its matmuls already fill the Tensor engine) and its program would not fit
    // in a laptop's memory (~600 bytes per simulated instruction).
    let runs = prefill_runs(w.batch, w.input_len);
    let mut prefill_spec = spec(Phase::Prefill { len: w.input_len as usize });
    prefill_spec.batch = (w.batch / runs) as usize;
    let decode_spec = spec(Phase::Decode { context: w.decode_context() as usize });
    // Large programs take gigabytes: the prefill's is dropped before the decode step is
    // built unless the trace needs both.
    let (pdp, prun, prefill) = run_phase(&w.cfg, &chip, &prefill_spec, w.check_races)?;
    let kept = trace.map(|_| (pdp, prun));
    let (ddp, drun, decode) = run_phase(&w.cfg, &chip, &decode_spec, w.check_races)?;
    if let (Some(path), Some((pdp, prun))) = (trace, &kept) {
        super::trace::write(path, &chip, &[("prefill", pdp, prun), ("decode", &ddp, &drun)])?;
    }
    let mut notes = vec![format!(
        "TTFT is the simulated prefill of {} tokens per sequence; TPOT is one simulated decode step at context {} \
         (input + output/2); tokens/s = batch / TPOT",
        w.input_len,
        w.decode_context()
    )];
    if runs > 1 {
        notes.push(format!(
            "prefill runs the {} prompts one after another ({} tokens together exceed {PREFILL_BATCH_TOKENS}): one \
             prompt's prefill is simulated and TTFT is {} times its time (exact: the runs are identical up to \
             addresses and start on an idle machine); the first prompt's first token comes after {:.3} ms",
            w.batch,
            u64::from(w.batch) * w.input_len,
            runs,
            prefill.total_ns / 1e6
        ));
    }
    notes.extend([
        "timed-only: synthetic weights, no values computed".to_string(),
        format!(
            "time shares are of the critical path of each step (see docs/llm.md); race checking {}",
            if w.check_races { "on" } else { "off (--race-check turns it on)" }
        ),
    ]);
    notes.extend(ddp.notes.iter().cloned());
    let tpot_ms = decode.total_ns / 1e6;
    Ok(LlmReport {
        model: w.cfg.source().to_string(),
        chip: w.chip.name.clone(),
        chips,
        tp,
        dtype: w.dtype.name().to_string(),
        batch: w.batch,
        input_len: w.input_len,
        output_len: w.output_len,
        decode_context: w.decode_context(),
        ttft_ms: prefill.total_ns * f64::from(runs) / 1e6,
        prefill_runs: runs,
        tpot_ms,
        tokens_per_s: if tpot_ms > 0.0 { f64::from(w.batch) * 1e3 / tpot_ms } else { 0.0 },
        hbm_bytes_per_core: plan.total,
        memory: plan,
        prefill,
        decode,
        notes,
    })
}

#[cfg(test)]
mod prefill_tests {
    use super::*;

    #[test]
    fn big_batches_prefill_one_prompt_at_a_time() {
        assert_eq!(prefill_runs(1, 2048), 1);
        assert_eq!(prefill_runs(4, 2048), 1);
        assert_eq!(prefill_runs(5, 2048), 5);
        assert_eq!(prefill_runs(32, 2048), 32);
        assert_eq!(prefill_runs(64, 128), 1);
    }

    #[test]
    fn sequential_prefill_is_batch_times_one_prompt() {
        let w = |batch| LlmWorkload {
            cfg: LlmConfig::load(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny-llama/config.json"
            )))
            .unwrap(),
            chip: ChipSpec::by_name("trn2").unwrap(),
            chips: 1,
            tp: TpChoice::Fixed(2),
            expert_parallel: false,
            batch,
            input_len: 1024,
            output_len: 4,
            dtype: DType::Bf16,
            check_races: false,
        };
        let one = simulate_llm(&w(1), None).unwrap();
        let three = simulate_llm(&w(9), None).unwrap();
        assert_eq!(three.prefill_runs, 9);
        assert!(
            (three.ttft_ms - 9.0 * one.ttft_ms).abs() < 1e-9 * one.ttft_ms.max(1.0),
            "{} {}",
            three.ttft_ms,
            one.ttft_ms
        );
    }
}
