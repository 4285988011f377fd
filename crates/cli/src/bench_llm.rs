//! `trainyard bench llm`: wall time of building and simulating (timed-only) the LLM steps that
//! the speed targets name — a Llama-3.1-8B decode step (batch 1, 2,048 context) on one trn2 chip
//! and a Llama-3.1-70B decode step on 64 NeuronCores (8 trn2 chips) — measured in this run.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use trainyard_arch::{ChipSpec, DType};
use trainyard_compiler::llm::program::{DecoderSpec, MoeRouting, Phase};
use trainyard_compiler::llm::LlmConfig;

use crate::llm::serve::run_phase_extrapolated;

/// One measured case.
#[derive(Debug, Serialize)]
struct Case {
    name: String,
    model: String,
    chip: String,
    chips: u32,
    tp: u32,
    batch: usize,
    context: usize,
    instructions: u64,
    instructions_simulated: u64,
    build_s: f64,
    sim_s: f64,
    wall_s: f64,
    target_wall_s: f64,
    simulated_ms: f64,
    sim_minst_per_s: f64,
    notes: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn case(
    name: &str,
    model: &str,
    chip: &str,
    chips: u32,
    batch: usize,
    context: usize,
    target_wall_s: f64,
) -> Result<Case> {
    let cfg = LlmConfig::bundled(model)?;
    let base = ChipSpec::by_name(chip)?;
    let spec_chip = base.with_chips(chips)?;
    let tp = chips * base.chip.cores;
    let spec = DecoderSpec {
        phase: Phase::Decode { context },
        batch,
        dtype: DType::Bf16,
        tp,
        moe: MoeRouting::Uniform,
        expert_parallel: false,
        reuse_layers: true,
        layer_barriers: false,
    };
    let t0 = Instant::now();
    let (dp, run, phase) = run_phase_extrapolated(&cfg, &spec_chip, &spec, false)?;
    let wall_s = t0.elapsed().as_secs_f64();
    Ok(Case {
        name: name.to_string(),
        model: cfg.source().to_string(),
        chip: chip.to_string(),
        chips,
        tp,
        batch,
        context,
        instructions: phase.instructions,
        build_s: phase.build_s,
        sim_s: phase.sim_s,
        wall_s,
        target_wall_s,
        simulated_ms: phase.total_ns / 1e6,
        instructions_simulated: run.instructions,
        sim_minst_per_s: run.instructions as f64 / phase.sim_s.max(1e-9) / 1e6,
        notes: phase.note.iter().chain(&dp.notes).cloned().collect(),
    })
}

/// Runs the benchmark (`quick`: the 8B case only).
pub fn llm(json: bool, quick: bool) -> Result<()> {
    let mut cases = vec![case("llama-3.1-8b decode, 1 trn2 chip", "llama-3.1-8b", "trn2", 1, 1, 2048, 2.0)?];
    if !quick {
        cases.push(case("llama-3.1-70b decode, 64 cores (8 trn2 chips)", "llama-3.1-70b", "trn2", 8, 1, 2048, 10.0)?);
    }
    if json {
        say!("{}", serde_json::to_string_pretty(&cases)?);
        return Ok(());
    }
    say!(
        "LLM decode step, timed-only, race check off, layers extrapolated (wall = build + simulate, this machine, \
         this run):"
    );
    for c in &cases {
        say!(
            "  {:<46} TP {:>2}: {:>9} instructions ({} simulated), build {:.2} s + simulate {:.2} s = {:.2} s wall \
             (target <= {:.0} s, {}); simulated step {:.3} ms; {:.1} M inst/s",
            c.name,
            c.tp,
            c.instructions,
            c.instructions_simulated,
            c.build_s,
            c.sim_s,
            c.wall_s,
            c.target_wall_s,
            if c.wall_s <= c.target_wall_s { "met" } else { "missed" },
            c.simulated_ms,
            c.sim_minst_per_s
        );
        for n in &c.notes {
            say!("      note: {n}");
        }
    }
    Ok(())
}
