//! `trainyard model`: what an LLM needs (parameters, memory per core, the
//! smallest tensor-parallel degree per chip) and the analytic GPU estimates.
//!
//! Simulated Trainium serving times come from `trainyard llm` (decoder
//! programs built from the kernel library); this command points there rather
//! than estimating them.

use anyhow::Result;
use serde_json::json;
use trainyard_arch::{ChipSpec, DType, GpuSpec, PriceKind};
use trainyard_compiler::llm::{plan_memory, smallest_tp, LlmConfig, MemoryError, TP_CANDIDATES};
use trainyard_report::{gpu_serving, smallest_gpu_tp, ChipPrice, Phase, Row, Table, Workload};

/// Chips per instance used for the Trainium memory plan (trn1/trn2 16-chip
/// instances, HW-INST-TRN1 / HW-INST-TRN2; inf2.48xlarge 12 chips, HW-INST-INF2;
/// a 64-chip Trn3 UltraServer, HW-INST-TRN3).
fn chips_per_instance(chip: &str) -> u32 {
    match chip {
        "inf2" => 12,
        "trn3" => 64,
        _ => 16,
    }
}

/// The serving workload of `cfg` for the analytic model.
///
/// Prefill: every weight read once, `batch·input_len` tokens of GEMM
/// (logits for the last token only), attention FLOPs the rest of
/// `prefill_flops`, the KV cache written, and the residual stream read and
/// written around both blocks of every layer (activation estimate, an
/// assumption). Decode step at context `input_len`: one token per sequence;
/// for MoE the expected fraction of experts a batch touches,
/// `1 − (1 − k/E)^batch`, of the expert weights is read (uniform routing, an
/// assumption). Tensor parallelism all-reduces the hidden state twice per
/// layer (after attention and after the MLP).
pub(crate) fn workload(cfg: &LlmConfig, dtype: DType, batch: u32, input_len: u64, output_len: u64) -> Workload {
    let b = f64::from(batch);
    let bytes = dtype.size() as f64;
    let hidden = f64::from(cfg.hidden_size());
    let layers = f64::from(cfg.num_layers());
    let head = f64::from(cfg.vocab_size()) * hidden;
    let mm = cfg.matmul_params_per_token() as f64;
    let counts = cfg.param_counts();
    let weights = cfg.weight_bytes(dtype) as f64;
    let touched = match cfg.moe() {
        Some(m) => {
            let coverage = 1.0 - (1.0 - f64::from(m.experts_per_token) / f64::from(m.num_experts)).powf(b);
            (counts.total - counts.mlp) as f64 * bytes + counts.mlp as f64 * bytes * coverage
        }
        None => weights,
    };
    let kv = b * cfg.kv_cache_bytes(dtype, input_len) as f64;
    let tokens = b * input_len as f64;
    let prefill_gemm = b * (2.0 * (mm - head) * input_len as f64 + 2.0 * head);
    let prefill = Phase {
        gemm_flops: prefill_gemm,
        attention_flops: (b * cfg.prefill_flops(input_len) - prefill_gemm).max(0.0),
        weight_bytes: weights,
        kv_bytes: kv,
        activation_bytes: 4.0 * layers * tokens * hidden * bytes,
        allreduce_bytes_per_gpu: tokens * hidden * bytes,
        allreduce_count: 2 * u64::from(cfg.num_layers()),
    };
    let decode = Phase {
        gemm_flops: b * 2.0 * mm,
        attention_flops: b * (cfg.decode_flops_per_token(input_len) - 2.0 * mm).max(0.0),
        weight_bytes: touched,
        kv_bytes: kv,
        activation_bytes: 4.0 * layers * b * hidden * bytes,
        allreduce_bytes_per_gpu: b * hidden * bytes,
        allreduce_count: 2 * u64::from(cfg.num_layers()),
    };
    Workload { prefill, decode, batch, input_len, output_len }
}

/// Runs `trainyard model`.
#[allow(clippy::too_many_arguments)]
pub fn model(
    name: Option<&str>,
    config: Option<&std::path::Path>,
    dtype: &str,
    batch: u32,
    input_len: u64,
    output_len: u64,
    json_out: bool,
) -> Result<()> {
    let cfg = match (name, config) {
        (_, Some(path)) => LlmConfig::load(path)?,
        (Some(n), None) => LlmConfig::bundled(n)?,
        (None, None) => anyhow::bail!(
            "give --model NAME or --config FILE (bundled: {})",
            trainyard_compiler::llm::bundled_names().join(", ")
        ),
    };
    let dtype: DType = dtype.parse()?;
    let context = input_len + output_len;
    let counts = cfg.param_counts();

    // Trainium: memory plan per core at the smallest TP that fits one instance.
    let mut trainium = Vec::new();
    for chip in ChipSpec::bundled()? {
        let per_core = chip.chip.hbm_bytes / u64::from(chip.chip.cores);
        let cores = chips_per_instance(&chip.name) * chip.chip.cores;
        let row = match smallest_tp(&cfg, dtype, batch, context, per_core, cores, &TP_CANDIDATES) {
            Ok(tp) => {
                let plan = plan_memory(&cfg, dtype, tp, batch, context, per_core, cores)?;
                json!({
                    "chip": chip.name, "cores_per_instance": cores, "tp": tp,
                    "chips": tp.div_ceil(chip.chip.cores),
                    "weights_bytes_per_core": plan.weights, "kv_bytes_per_core": plan.kv_cache,
                    "activation_bytes_per_core": plan.activations, "total_bytes_per_core": plan.total,
                    "hbm_bytes_per_core": plan.available,
                })
            }
            Err(e @ MemoryError::DoesNotFit { .. }) => {
                json!({"chip": chip.name, "cores_per_instance": cores, "error": e.to_string()})
            }
            Err(e) => json!({"chip": chip.name, "cores_per_instance": cores, "error": e.to_string()}),
        };
        trainium.push(row);
    }

    // GPUs: analytic estimates at the smallest TP that fits one server.
    let work = workload(&cfg, dtype, batch, input_len, output_len);
    let kind = PriceKind::CapacityBlock;
    let mut table = Table::new("h100", kind);
    let mut gpu_notes = Vec::new();
    let kv_total = f64::from(batch) * cfg.kv_cache_bytes(dtype, context) as f64;
    for gpu in GpuSpec::bundled()? {
        let tp = smallest_gpu_tp(&gpu, cfg.weight_bytes(dtype) as f64, kv_total, work.decode.activation_bytes)?;
        let Some(tp) = tp else {
            gpu_notes
                .push(format!("{}: does not fit in one {}-GPU server", gpu.name, gpu.interconnect.gpus_per_server));
            continue;
        };
        match gpu_serving(&gpu, &work, tp, dtype) {
            Ok(est) => table.push(Row::new(&gpu.name, &est, &ChipPrice::of_gpu(&gpu, kind), gpu.power.tdp_watts))?,
            Err(e) => gpu_notes.push(format!("{}: {e}", gpu.name)),
        }
    }

    if json_out {
        let v = json!({
            "model": cfg.source(),
            "family": cfg.family().to_string(),
            "params_total": counts.total,
            "params_active": counts.active,
            "layers": cfg.num_layers(),
            "hidden_size": cfg.hidden_size(),
            "heads": cfg.num_heads(),
            "kv_heads": cfg.num_kv_heads(),
            "head_dim": cfg.head_dim(),
            "vocab_size": cfg.vocab_size(),
            "dtype": dtype.name(),
            "weight_bytes": cfg.weight_bytes(dtype),
            "kv_bytes_per_token": cfg.kv_cache_bytes_per_token(dtype),
            "batch": batch, "input_len": input_len, "output_len": output_len,
            "trainium_memory_plan": trainium,
            "gpu_analytic": table,
            "gpu_notes": gpu_notes,
            "simulated": "see `trainyard llm` (simulated prefill and decode programs) and `trainyard compare`",
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "{} ({}): {:.2} B parameters ({:.2} B active), {} layers, hidden {}, {} heads / {} KV heads of {}, vocab {}",
        cfg.source(),
        cfg.family(),
        counts.total as f64 / 1e9,
        counts.active as f64 / 1e9,
        cfg.num_layers(),
        cfg.hidden_size(),
        cfg.num_heads(),
        cfg.num_kv_heads(),
        cfg.head_dim(),
        cfg.vocab_size()
    );
    say!(
        "{}: weights {:.2} GB, KV cache {} bytes per token; workload batch {batch}, {input_len} in / {output_len} out",
        dtype,
        cfg.weight_bytes(dtype) as f64 / 1e9,
        cfg.kv_cache_bytes_per_token(dtype)
    );
    say!("\nTrainium memory plan (weights + KV cache + activations per NeuronCore, smallest TP in one instance):");
    say!(
        "{:<6} {:>6} {:>5} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "chip",
        "cores",
        "TP",
        "chips",
        "weights/core",
        "KV/core",
        "act/core",
        "total/core",
        "HBM/core"
    );
    let gib = |v: &serde_json::Value| {
        v.as_u64().map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_default()
    };
    for r in &trainium {
        if let Some(e) = r.get("error") {
            say!(
                "{:<6} {:>6} {}",
                r["chip"].as_str().unwrap_or(""),
                r["cores_per_instance"].to_string(),
                e.as_str().unwrap_or("")
            );
            continue;
        }
        say!(
            "{:<6} {:>6} {:>5} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}",
            r["chip"].as_str().unwrap_or(""),
            r["cores_per_instance"].to_string(),
            r["tp"].to_string(),
            r["chips"].to_string(),
            gib(&r["weights_bytes_per_core"]),
            gib(&r["kv_bytes_per_core"]),
            gib(&r["activation_bytes_per_core"]),
            gib(&r["total_bytes_per_core"]),
            gib(&r["hbm_bytes_per_core"]),
        );
    }
    say!("(simulated serving times on Trainium: `trainyard llm --timed-only`, or `trainyard compare` for every chip)");
    say!(
        "\nGPU comparison points (analytic roofline, efficiency factors cited in chips/*.toml; capacity-block prices):"
    );
    say!("{}", table.render_text().trim_end());
    for n in &gpu_notes {
        say!("note: {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_terms_follow_the_config() {
        let cfg = LlmConfig::bundled("llama-3.1-8b").unwrap();
        let w = workload(&cfg, DType::Bf16, 1, 2048, 256);
        // Dense decode reads every weight once.
        assert_eq!(w.decode.weight_bytes, cfg.weight_bytes(DType::Bf16) as f64);
        assert_eq!(w.decode.gemm_flops, 2.0 * cfg.matmul_params_per_token() as f64);
        // GEMM plus attention add up to the config's prefill FLOPs.
        assert!((w.prefill.gemm_flops + w.prefill.attention_flops - cfg.prefill_flops(2048)).abs() < 1.0);
        // MoE at batch 1 reads only the routed experts' share.
        let moe = LlmConfig::bundled("mixtral-8x7b-v0.1").unwrap();
        let m = workload(&moe, DType::Bf16, 1, 128, 16);
        assert!(m.decode.weight_bytes < 0.35 * moe.weight_bytes(DType::Bf16) as f64);
        let big = workload(&moe, DType::Bf16, 64, 128, 16);
        assert!(big.decode.weight_bytes > 0.99 * moe.weight_bytes(DType::Bf16) as f64);
    }
}
