//! Timed-only serving figures of a model on simulated chips: one prefill and one decode step
//! built from the kernel library and simulated without values (synthetic weights).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use trainyard_arch::{ChipSpec, DType};
use trainyard_compiler::llm::program::{
    build_decoder, with_layers, DecoderProgram, DecoderSpec, MoeRouting, OpCategory, Phase,
};
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

/// How the layers of a timed-only step are simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerSim {
    /// Every layer (no barriers): the program as a compiler would emit it.
    Full,
    /// Barriers at layer boundaries; the model cut to [`EXTRAPOLATE_FROM`] layers is simulated
    /// and the later layers are timed as its last one (exact for the barriered program).
    #[default]
    Extrapolate,
}

impl std::str::FromStr for LayerSim {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<LayerSim> {
        match s {
            "full" => Ok(LayerSim::Full),
            "extrapolate" => Ok(LayerSim::Extrapolate),
            other => bail!("--layer-sim {other}: expected `full` or `extrapolate`"),
        }
    }
}

/// Layers simulated by [`LayerSim::Extrapolate`]: layers 0–2 may differ in time from the
/// others (layer 0 follows the embedding; layer 2 is the last emitted through the builder),
/// layer 3 is timed and stands for every later one.
pub const EXTRAPOLATE_FROM: u32 = 4;

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
    /// Every layer simulated, or later layers timed from the first few.
    pub layer_sim: LayerSim,
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
    /// Layers of the model.
    pub layers: u32,
    /// Layers actually simulated (fewer than `layers` when extrapolated).
    pub layers_simulated: u32,
    /// How the step's layers were timed, when not all were simulated.
    pub note: Option<String>,
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
    let layers = cfg.num_layers();
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
        layers,
        layers_simulated: layers,
        note: None,
    };
    Ok((dp, run, phase))
}

/// Times one step of the barriered program ([`DecoderSpec::layer_barriers`]) of all `L`
/// layers from a simulation of its first [`EXTRAPOLATE_FROM`] layers.
///
/// With a barrier before every layer and before the head, each layer starts when every
/// engine and DMA queue of every core is idle, so its time depends only on its own
/// instructions and the state its predecessor leaves (which is no queue's occupancy, only
/// which instruction ran last on each unit). Layers ≥ 2 are the same instruction stream at
/// shifted addresses (the layer-reuse check proves it) and no cost rule reads addresses,
/// so every layer from 3 on takes layer 3's time `Δ` (end of its barrier to the end of the
/// head's barrier): `T(L) = T(4) + (L − 4)·Δ`, to the picosecond. The per-op breakdown and
/// instruction counts weight layer 3's ops by `L − 3`. Models of at most 4 layers are
/// simulated whole (with barriers).
pub fn run_phase_extrapolated(
    cfg: &LlmConfig,
    chip: &ChipSpec,
    spec: &DecoderSpec,
    check_races: bool,
) -> Result<(DecoderProgram, RunResult, PhaseRun)> {
    let spec = DecoderSpec { layer_barriers: true, ..spec.clone() };
    let layers = cfg.num_layers();
    if layers <= EXTRAPOLATE_FROM {
        let (dp, run, mut phase) = run_phase(cfg, chip, &spec, check_races)?;
        phase.note = Some(format!("all {layers} layers simulated, with barriers at layer boundaries"));
        return Ok((dp, run, phase));
    }
    let cut = with_layers(cfg, EXTRAPOLATE_FROM);
    let (mut dp, run, mut phase) = run_phase(&cut, chip, &spec, check_races)?;
    let last = EXTRAPOLATE_FROM - 1;
    let barrier_end = |layer: Option<u32>| {
        let op = dp.ops.iter().find(|o| o.category == OpCategory::Barrier && o.layer == layer)?;
        run.events.get(op.insts.start as usize).map(|e| e.end_ps)
    };
    let (Some(from), Some(to)) = (barrier_end(Some(last)), barrier_end(None)) else {
        bail!("{}: the barriers of layer {last} and of the head were not found", dp.program.name);
    };
    let extra = u64::from(layers - EXTRAPOLATE_FROM);
    let layer_ps = to.saturating_sub(from);
    let total_ps = run.total_ps + extra * layer_ps;
    let weight = |o: &trainyard_compiler::llm::program::OpSpan| if o.layer == Some(last) { 1 + extra } else { 1 };
    let layer_insts: u64 =
        dp.ops.iter().filter(|o| o.layer == Some(last)).map(|o| u64::from(o.insts.end - o.insts.start)).sum();
    phase.total_ns = total_ps as f64 / 1000.0;
    phase.instructions = run.instructions + extra * layer_insts;
    phase.breakdown = Breakdown::of_run_weighted(&dp.ops, &run, weight);
    phase.instructions_by_op = dp.ops.iter().fold(Default::default(), |mut m, o| {
        *m.entry(o.label.clone()).or_default() += weight(o) * u64::from(o.insts.end - o.insts.start);
        m
    });
    // The builder's layer-reuse note speaks of the cut model, whose layers are all simulated.
    dp.notes.retain(|n| !n.contains("every layer is simulated"));
    phase.layers = layers;
    phase.layers_simulated = EXTRAPOLATE_FROM;
    phase.note = Some(format!(
        "layers {EXTRAPOLATE_FROM}-{} timed as layer {last} ({:.3} us each) with barriers at layer boundaries: \
         the model cut to {EXTRAPOLATE_FROM} layers was simulated (exact for the barriered program: each layer \
         starts on an idle machine and layers >= 2 are one instruction stream at shifted addresses; `--layer-sim \
         full` simulates every layer without barriers)",
        layers - 1,
        layer_ps as f64 / 1e6
    ));
    Ok((dp, run, phase))
}

/// [`run_phase`] or [`run_phase_extrapolated`], as `mode` says.
pub fn run_phase_as(
    mode: LayerSim,
    cfg: &LlmConfig,
    chip: &ChipSpec,
    spec: &DecoderSpec,
    check_races: bool,
) -> Result<(DecoderProgram, RunResult, PhaseRun)> {
    match mode {
        LayerSim::Full => run_phase(cfg, chip, spec, check_races),
        LayerSim::Extrapolate => run_phase_extrapolated(cfg, chip, spec, check_races),
    }
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
        layer_barriers: false,
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
    let (pdp, prun, prefill) = run_phase_as(w.layer_sim, &w.cfg, &chip, &prefill_spec, w.check_races)?;
    let kept = trace.map(|_| (pdp, prun));
    let (ddp, drun, decode) = run_phase_as(w.layer_sim, &w.cfg, &chip, &decode_spec, w.check_races)?;
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
    for (name, p) in [("prefill", &prefill), ("decode", &decode)] {
        if let Some(n) = &p.note {
            notes.push(format!("{name}: {n}"));
        }
    }
    if trace.is_some() && w.layer_sim == LayerSim::Extrapolate && decode.layers_simulated < decode.layers {
        notes.push(format!("the trace shows the {} simulated layers", decode.layers_simulated));
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
            layer_sim: LayerSim::Full,
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

    /// A 6-layer model small enough to simulate whole, with heads for TP 4.
    fn six_layers() -> LlmConfig {
        let json = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
            "intermediate_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
            "num_hidden_layers": 6, "vocab_size": 512, "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#;
        LlmConfig::from_json_str(json, "six-layers").unwrap()
    }

    #[test]
    fn extrapolated_layers_time_the_barriered_program_exactly() {
        let cfg = six_layers();
        // TP 1 and 2 on one trn2 chip; TP 4 over two 2-core trn1 chips.
        for (chip, chips, tp) in [("trn2", 1, 1), ("trn2", 1, 2), ("trn1", 2, 4)] {
            let chip = ChipSpec::by_name(chip).unwrap().with_chips(chips).unwrap();
            for phase in [Phase::Prefill { len: 160 }, Phase::Decode { context: 200 }] {
                let spec = DecoderSpec {
                    phase,
                    batch: 2,
                    dtype: DType::Bf16,
                    tp,
                    moe: MoeRouting::Uniform,
                    expert_parallel: false,
                    reuse_layers: true,
                    layer_barriers: true,
                };
                let (_, full_run, full) = run_phase(&cfg, &chip, &spec, false).unwrap();
                let (dp, _, ext) = run_phase_extrapolated(&cfg, &chip, &spec, false).unwrap();
                let what = format!("{} tp {tp} {phase:?}", chip.name);
                assert_eq!((ext.layers, ext.layers_simulated, full.layers_simulated), (6, 4, 6), "{what}");
                assert_eq!(ext.total_ns * 1000.0, full_run.total_ps as f64, "{what}");
                assert_eq!(ext.instructions, full.instructions, "{what}");
                assert_eq!(ext.instructions_by_op, full.instructions_by_op, "{what}");
                for (op, share) in &full.breakdown.by_op {
                    let got = ext.breakdown.by_op.get(op).copied().unwrap_or(0.0);
                    assert!((got - share).abs() < 1e-9, "{what}: {op} {got} vs {share}");
                }
                assert!(dp.ops.iter().any(|o| o.category == OpCategory::Barrier), "{what}");
                assert!(ext.note.as_deref().unwrap().contains("layers 4-5 timed as layer 3"), "{what}");
            }
        }
    }
}
