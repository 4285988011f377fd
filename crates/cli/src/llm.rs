//! `trainyard llm`: LLM decoder programs built from the kernel library, run on simulated
//! chips — timed-only serving figures (TTFT, TPOT, tokens/s, HBM per core, time shares) with
//! synthetic weights, or functional greedy generation from a `.safetensors` checkpoint checked
//! against the host reference; `trainyard llm init-checkpoint` writes a random checkpoint.

pub mod breakdown;
pub mod functional;
pub mod serve;
mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use trainyard_arch::{ChipSpec, DType, SplitMix64, DEFAULT_CHIP};
use trainyard_compiler::llm::checkpoint::random_checkpoint;
use trainyard_compiler::llm::LlmConfig;

pub use breakdown::Breakdown;
pub use functional::{generate, read_checkpoint, write_checkpoint, Parallel};
pub use serve::{simulate_llm, LayerSim, LlmReport, LlmWorkload, PhaseRun, TpChoice};

/// Options of `trainyard llm`.
#[derive(Args)]
pub struct LlmArgs {
    #[command(subcommand)]
    action: Option<LlmAction>,
    /// Bundled model name (see models/), e.g. llama-3.1-8b or tiny-llama.
    #[arg(long)]
    model: Option<String>,
    /// Any Hugging Face config.json (Llama, Mistral, Mixtral, Qwen2, Qwen3).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Chip name or chip TOML file.
    #[arg(long, default_value = DEFAULT_CHIP)]
    chip: String,
    /// Chips available; their cores are numbered chip by chip.
    #[arg(long, default_value_t = 1)]
    chips: u32,
    /// Tensor-parallel degree (cores), or `auto`: the smallest that fits the memory plan.
    #[arg(long, default_value = "auto")]
    tp: String,
    /// Sequences in flight.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Prompt tokens per sequence (default 2048; 8 in functional mode without --prompt).
    #[arg(long)]
    input_len: Option<u64>,
    /// Generated tokens per sequence (default 256; 8 in functional mode).
    #[arg(long)]
    output_len: Option<u64>,
    /// Time only, with synthetic weights (no values): for real model sizes.
    #[arg(long)]
    timed_only: bool,
    /// Write a Perfetto trace of the simulated steps (timed-only: prefill and decode; functional: every step).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Weight, activation and KV-cache dtype (default bf16 timed-only, f32 functional).
    #[arg(long)]
    dtype: Option<String>,
    /// Functional: the weights (`.safetensors`, Hugging Face names); default a random checkpoint of --seed.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Functional: a prompt as comma-separated token ids (repeat for a batch of equal-length prompts).
    #[arg(long = "prompt", value_name = "IDS")]
    prompts: Vec<String>,
    /// Functional: tokens to generate (default --output-len).
    #[arg(long)]
    generate: Option<usize>,
    /// Seed of the random checkpoint and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MoE: spread the experts over the cores (expert parallelism) instead of slicing each one.
    #[arg(long)]
    ep: bool,
    /// Timed-only: run the simulator's race checker too (slower).
    #[arg(long)]
    race_check: bool,
    /// Functional: skip the race checker.
    #[arg(long)]
    no_race_check: bool,
    /// Timed-only: `extrapolate` (barriers at layer boundaries; 4 layers simulated, later
    /// layers timed as layer 3, exact for that program) or `full` (every layer, no barriers).
    #[arg(long, default_value = "extrapolate", value_name = "full|extrapolate")]
    layer_sim: LayerSim,
}

#[derive(Subcommand)]
enum LlmAction {
    /// Write a deterministic random `.safetensors` checkpoint of a small config.
    InitCheckpoint {
        /// A config.json.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A bundled model name.
        #[arg(long)]
        model: Option<String>,
        /// Seed of the values.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// The config named by `--model` or `--config`.
fn load_config(model: Option<&str>, config: Option<&Path>) -> Result<LlmConfig> {
    Ok(match (model, config) {
        (_, Some(path)) => LlmConfig::load(path)?,
        (Some(name), None) => LlmConfig::bundled(name)?,
        (None, None) => bail!(
            "give --model NAME or --config FILE (bundled: {})",
            trainyard_compiler::llm::bundled_names().join(", ")
        ),
    })
}

fn parse_tp(text: &str) -> Result<TpChoice> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(TpChoice::Auto);
    }
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(TpChoice::Fixed(n)),
        _ => bail!("--tp `{text}`: expected a positive number or `auto`"),
    }
}

fn parse_prompt(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|s| s.trim().parse::<u32>().with_context(|| format!("--prompt `{text}`: `{s}` is not a token id")))
        .collect()
}

/// Runs `trainyard llm`.
pub fn llm(args: LlmArgs) -> Result<()> {
    if let Some(LlmAction::InitCheckpoint { config, model, seed, output }) = &args.action {
        let cfg = load_config(model.as_deref(), config.as_deref())?;
        let weights = random_checkpoint(&cfg, *seed)?;
        write_checkpoint(output, &weights)?;
        let params: usize = weights.values().map(|w| w.values.len()).sum();
        say!("wrote {} ({} tensors, {params} parameters, f32, seed {seed})", output.display(), weights.len());
        return Ok(());
    }
    let cfg = load_config(args.model.as_deref(), args.config.as_deref())?;
    let chip = ChipSpec::by_name(&args.chip)?;
    if args.chips == 0 {
        bail!("--chips must be at least 1");
    }
    let tp = parse_tp(&args.tp)?;
    if args.timed_only {
        if args.checkpoint.is_some() || !args.prompts.is_empty() || args.generate.is_some() {
            bail!("--timed-only uses synthetic weights: --checkpoint, --prompt and --generate need functional mode");
        }
        timed(&args, cfg, chip, tp)
    } else {
        functional(&args, cfg, chip, tp)
    }
}

fn dtype_or(args: &LlmArgs, default: DType) -> Result<DType> {
    Ok(match &args.dtype {
        Some(d) => d.parse()?,
        None => default,
    })
}

fn timed(args: &LlmArgs, cfg: LlmConfig, chip: ChipSpec, tp: TpChoice) -> Result<()> {
    let w = LlmWorkload {
        cfg,
        chip,
        chips: args.chips,
        tp,
        batch: args.batch,
        input_len: args.input_len.unwrap_or(2048),
        output_len: args.output_len.unwrap_or(256),
        dtype: dtype_or(args, DType::Bf16)?,
        check_races: args.race_check,
        expert_parallel: args.ep,
        layer_sim: args.layer_sim,
    };
    let r = simulate_llm(&w, args.trace.as_deref())?;
    if args.json {
        let v = timed_json(&r);
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "{} on {} × {}, tp={}{}, {}, batch {}, {} in / {} out (timed-only, synthetic weights)",
        r.model,
        r.chips,
        r.chip,
        r.tp,
        if tp == TpChoice::Auto { " (auto)" } else { "" },
        r.dtype,
        r.batch,
        r.input_len,
        r.output_len
    );
    print_figures(&r);
    print_shares(&[("prefill", &r.prefill.breakdown), ("decode", &r.decode.breakdown)]);
    for n in &r.notes {
        say!("note: {n}");
    }
    if let Some(t) = &args.trace {
        say!("wrote trace {} (open in https://ui.perfetto.dev)", t.display());
    }
    Ok(())
}

/// The `--json` object of a timed-only run.
fn timed_json(r: &LlmReport) -> serde_json::Value {
    json!({
        "mode": "timed-only",
        "model": r.model, "chip": r.chip, "chips": r.chips, "tp": r.tp, "dtype": r.dtype,
        "batch": r.batch, "input_len": r.input_len, "output_len": r.output_len,
        "decode_context": r.decode_context,
        "ttft_ms": r.ttft_ms, "tpot_ms": r.tpot_ms, "tokens_per_s": r.tokens_per_s,
        "hbm_bytes_per_core": r.hbm_bytes_per_core,
        "memory": r.memory,
        "breakdown": {
            "method": "critical_path",
            "prefill": r.prefill.breakdown,
            "decode": r.decode.breakdown,
        },
        "prefill": phase_json(&r.prefill),
        "decode": phase_json(&r.decode),
        "notes": r.notes,
    })
}

fn phase_json(p: &PhaseRun) -> serde_json::Value {
    json!({
        "program": p.program, "total_ns": p.total_ns, "instructions": p.instructions,
        "build_s": p.build_s, "sim_s": p.sim_s, "instructions_by_op": p.instructions_by_op,
        "layers": p.layers, "layers_simulated": p.layers_simulated,
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_figures(r: &LlmReport) {
    let phase = |p: &PhaseRun| {
        format!("{} instructions, built in {:.2} s, simulated in {:.2} s", p.instructions, p.build_s, p.sim_s)
    };
    say!("TTFT        {:>10.3} ms   prefill of {} tokens ({})", r.ttft_ms, r.input_len, phase(&r.prefill));
    say!("TPOT        {:>10.3} ms   decode step at context {} ({})", r.tpot_ms, r.decode_context, phase(&r.decode));
    say!("tokens/s    {:>10.1}", r.tokens_per_s);
    let m = &r.memory;
    say!(
        "HBM / core  {:>13}   of {} (weights {}, KV cache {}, activations {})",
        gib(r.hbm_bytes_per_core),
        gib(m.available),
        gib(m.weights),
        gib(m.kv_cache),
        gib(m.activations)
    );
}

/// Time shares per category, the largest ops, and the collectives, one column per step.
fn print_shares(steps: &[(&str, &Breakdown)]) {
    let pct = |m: &BTreeMap<String, f64>, k: &str| m.get(k).map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let header: String = steps.iter().map(|(n, _)| format!("{n:>10}")).collect();
    let section = |title: &str, pick: &dyn Fn(&Breakdown) -> &BTreeMap<String, f64>, limit: usize| {
        let mut keys: Vec<String> = Vec::new();
        for (_, b) in steps {
            for (k, _) in Breakdown::ranked(pick(b)) {
                if !keys.iter().any(|x| x == k) {
                    keys.push(k.to_string());
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        say!("\n{title:<34}{header}");
        for k in keys.iter().take(limit) {
            let cols: String = steps.iter().map(|(_, b)| format!("{:>10}", pct(pick(b), k))).collect();
            say!("  {k:<32}{cols}");
        }
    };
    section("time share (critical path)", &|b| &b.by_category, usize::MAX);
    section("largest ops", &|b| &b.by_op, 12);
    section("collectives", &|b| &b.collectives, usize::MAX);
    say!("");
}

/// Deterministic prompts of `len` tokens.
fn random_prompts(vocab: u32, batch: u32, len: u64, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64::new(seed ^ 0x7072_6f6d_7074);
    (0..batch).map(|_| (0..len).map(|_| (rng.next_u64() % u64::from(vocab)) as u32).collect()).collect()
}

fn functional(args: &LlmArgs, cfg: LlmConfig, chip: ChipSpec, tp: TpChoice) -> Result<()> {
    let dtype = dtype_or(args, DType::F32)?;
    let (weights, source) = match &args.checkpoint {
        Some(path) => (read_checkpoint(path)?, path.display().to_string()),
        None => {
            let w = random_checkpoint(&cfg, args.seed).with_context(|| {
                "functional mode needs weights: pass --checkpoint FILE, or --timed-only for synthetic weights"
            })?;
            (w, format!("random checkpoint, seed {}", args.seed))
        }
    };
    let prompts = if args.prompts.is_empty() {
        random_prompts(cfg.vocab_size(), args.batch, args.input_len.unwrap_or(8), args.seed)
    } else {
        args.prompts.iter().map(|p| parse_prompt(p)).collect::<Result<Vec<_>>>()?
    };
    let steps = args.generate.unwrap_or(args.output_len.unwrap_or(8) as usize).max(1);
    let input_len = prompts.first().map_or(0, Vec::len) as u64;
    let w = LlmWorkload {
        cfg,
        chip,
        chips: args.chips,
        tp,
        batch: prompts.len() as u32,
        input_len,
        output_len: steps as u64,
        dtype,
        check_races: !args.no_race_check,
        expert_parallel: args.ep,
        layer_sim: LayerSim::Full,
    };
    let plan = w.plan()?;
    let par = Parallel { tp: plan.tp, expert_parallel: args.ep };
    let g = generate(&w.cfg, &w.chip, par, dtype, &weights, &prompts, steps, w.check_races, args.trace.as_deref())?;
    let ttft_ms = g.steps.first().map_or(0.0, |s| s.sim_ns / 1e6);
    let decode: Vec<f64> = g.steps.iter().skip(1).map(|s| s.sim_ns / 1e6).collect();
    let tpot_ms = if decode.is_empty() { 0.0 } else { decode.iter().sum::<f64>() / decode.len() as f64 };
    let tokens_per_s = if tpot_ms > 0.0 { prompts.len() as f64 * 1e3 / tpot_ms } else { 0.0 };
    if args.json {
        let v = json!({
            "mode": "functional",
            "model": w.cfg.source(), "weights": source, "chip": w.chip.name, "tp": plan.tp, "dtype": dtype.name(),
            "batch": prompts.len(), "prompts": prompts,
            "ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "tokens_per_s": tokens_per_s,
            "hbm_bytes_per_core": plan.total,
            "breakdown": {"method": "critical_path", "prefill": g.prefill, "decode": g.last_decode},
            "steps": g.steps,
            "matches_reference": g.matches,
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!(
            "{} with {source} on {}, tp={}, {}, {} prompt(s) of {input_len} tokens (functional, race check {})",
            w.cfg.source(),
            w.chip.name,
            plan.tp,
            dtype,
            prompts.len(),
            if w.check_races { "on" } else { "off" }
        );
        say!(
            "{:<8} {:>8} {:>12}  {:<24} {:<24} {:>10}",
            "step",
            "context",
            "sim time",
            "device",
            "reference",
            "max |Δlogit|"
        );
        for s in &g.steps {
            say!(
                "{:<8} {:>8} {:>9.3} us  {:<24} {:<24} {:>10.2e}",
                s.phase,
                s.context,
                s.sim_ns / 1e3,
                format!("{:?}", s.tokens),
                format!("{:?}", s.reference),
                s.max_logit_diff
            );
        }
        say!("TTFT {ttft_ms:.4} ms, TPOT {tpot_ms:.4} ms (mean of the decode steps), {tokens_per_s:.1} tokens/s, HBM / core {}", gib(plan.total));
        let mut shares = vec![("prefill", &g.prefill)];
        if let Some(d) = &g.last_decode {
            shares.push(("decode", d));
        }
        print_shares(&shares);
    }
    if !g.matches {
        bail!("the simulated tokens differ from the host reference");
    }
    if !args.json {
        say!("every generated token matches the host reference");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> LlmConfig {
        LlmConfig::bundled(name).unwrap()
    }

    fn workload(model: &str, tp: TpChoice, batch: u32, input_len: u64, output_len: u64) -> LlmWorkload {
        LlmWorkload {
            cfg: cfg(model),
            chip: ChipSpec::by_name("trn2").unwrap(),
            chips: 1,
            tp,
            batch,
            input_len,
            output_len,
            dtype: DType::Bf16,
            check_races: true,
            expert_parallel: false,
            layer_sim: LayerSim::Full,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trainyard-llm-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A checkpoint written by `init-checkpoint` and read back drives a functional run whose
    /// greedy tokens equal the host reference's, at TP=1 and TP=2.
    #[test]
    fn checkpoint_file_round_trip_generates_the_reference_tokens() {
        let c = cfg("tiny-llama");
        let dir = temp("ckpt");
        let path = dir.join("tiny.safetensors");
        write_checkpoint(&path, &random_checkpoint(&c, 3).unwrap()).unwrap();
        let weights = read_checkpoint(&path).unwrap();
        assert_eq!(weights, random_checkpoint(&c, 3).unwrap());
        let chip = ChipSpec::by_name("trn2").unwrap();
        let prompts = vec![vec![1, 2, 3, 4], vec![300, 20, 7, 99]];
        for tp in [1, 2] {
            let par = Parallel { tp, expert_parallel: false };
            let trace = (tp == 2).then(|| dir.join("functional.json"));
            let g = generate(&c, &chip, par, DType::F32, &weights, &prompts, 3, true, trace.as_deref()).unwrap();
            assert!(g.matches, "tp={tp}: {:?}", g.steps);
            assert_eq!(g.steps.len(), 3);
            assert!(g.steps.iter().all(|s| s.max_logit_diff < 1e-3 && s.sim_ns > 0.0));
        }
        let t: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("functional.json")).unwrap()).unwrap();
        let text = t.to_string();
        assert!(text.contains("decode 2: ops") && text.contains("prefill: trn2 core 1"), "trace names its steps");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_plan_errors_say_by_how_much() {
        // 8B in bf16 on one 12 GiB core: 15.4 GiB needed.
        let e = workload("llama-3.1-8b", TpChoice::Fixed(1), 1, 2048, 256).plan().unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("over by") && msg.contains("GiB") && msg.contains("weights is the largest part"), "{msg}");
        // --tp auto takes the smallest degree that fits.
        assert_eq!(workload("llama-3.1-8b", TpChoice::Auto, 1, 2048, 256).plan().unwrap().tp, 2);
        // 405B does not fit one chip at any degree: the closest miss is reported.
        let e = workload("llama-3.1-405b", TpChoice::Auto, 1, 2048, 256).plan().unwrap_err();
        assert!(format!("{e:#}").contains("tp=8: needs"), "{e:#}");
    }

    /// Timed-only figures of a small model over 2 cores: the JSON keys of the contract, shares
    /// that add up, collectives among them, and a trace with both steps and their ops.
    #[test]
    fn timed_report_has_the_contract_keys() {
        let w = workload("tiny-llama", TpChoice::Fixed(2), 2, 40, 8);
        let dir = temp("trace");
        let trace = dir.join("t.json");
        let r = simulate_llm(&w, Some(&trace)).unwrap();
        assert_eq!((r.tp, r.chips, r.decode_context), (2, 1, 44));
        assert!(r.ttft_ms > r.tpot_ms && r.tpot_ms > 0.0);
        assert!((r.tokens_per_s - 2.0 * 1e3 / r.tpot_ms).abs() < 1e-9);
        let v = timed_json(&r);
        for key in ["ttft_ms", "tpot_ms", "tokens_per_s", "hbm_bytes_per_core", "breakdown"] {
            assert!(v.get(key).is_some(), "missing `{key}`");
        }
        assert_eq!(v["hbm_bytes_per_core"], r.memory.total);
        for phase in [&r.prefill.breakdown, &r.decode.breakdown] {
            assert!((phase.by_category.values().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!((phase.by_op.values().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(phase.collectives.contains_key("all_reduce.attn"), "{:?}", phase.collectives);
        }
        let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
        let names: Vec<&str> = t["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "process_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert!(names.contains(&"prefill: ops") && names.contains(&"decode: trn2 core 1"), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(parse_tp("auto").unwrap(), TpChoice::Auto);
        assert_eq!(parse_tp("8").unwrap(), TpChoice::Fixed(8));
        assert!(parse_tp("0").is_err() && parse_tp("x").is_err());
        assert_eq!(parse_prompt("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_prompt("1,a").unwrap_err().to_string().contains("`a`"));
        let p = random_prompts(384, 2, 5, 1);
        assert_eq!((p.len(), p[0].len()), (2, 5));
        assert!(p.iter().flatten().all(|&t| t < 384));
        assert_eq!(p, random_prompts(384, 2, 5, 1));
    }
}
