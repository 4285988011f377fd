//! Functional generation: a model with real weights from a `.safetensors` checkpoint run on
//! the simulated chip step by step (prefill, then decode steps feeding back the greedy
//! token), compared with the host reference.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::Serialize;

use super::breakdown::Breakdown;
use trainyard_arch::{ChipSpec, DType};
use trainyard_compiler::llm::program::{build_decoder, DecoderSpec, HostCache, MoeRouting, Phase, LOGITS, NEXT_TOKEN};
use trainyard_compiler::llm::reference::{greedy, HostWeight, WeightMap};
use trainyard_compiler::llm::LlmConfig;
use trainyard_isa::TensorKind;
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::SimOptions;

/// Reads every tensor of a checkpoint as f32.
pub fn read_checkpoint(path: &Path) -> Result<WeightMap> {
    let tensors = trainyard_runtime::read_safetensors(path)?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            (name, HostWeight { shape, values: t.to_f32() })
        })
        .collect())
}

/// Writes `weights` as an f32 `.safetensors` file (via a temporary file, then renamed).
pub fn write_checkpoint(path: &Path, weights: &WeightMap) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, w)| (name.clone(), w.shape.clone(), w.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let data = safetensors::serialize(views, None)?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// How the functional run is spread over cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parallel {
    /// Tensor-parallel degree.
    pub tp: u32,
    /// MoE experts spread over the cores.
    pub expert_parallel: bool,
}

/// One generated step on the device, next to the reference.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratedStep {
    /// `prefill` or `decode`.
    pub phase: &'static str,
    /// Context after the step.
    pub context: usize,
    /// Next token of each sequence from the simulated chip.
    pub tokens: Vec<u32>,
    /// The host reference's next tokens.
    pub reference: Vec<u32>,
    /// Largest |device − reference| over the step's logits.
    pub max_logit_diff: f64,
    /// Simulated time of the step, ns.
    pub sim_ns: f64,
}

/// A functional generation.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Device dtype.
    pub dtype: String,
    /// Every step.
    pub steps: Vec<GeneratedStep>,
    /// Every device token equals the reference's.
    pub matches: bool,
    /// Time shares of the prefill.
    pub prefill: Breakdown,
    /// Time shares of the last decode step, if any.
    pub last_decode: Option<Breakdown>,
}

/// Runs `steps` greedy steps (a prefill of `prompts`, then decode steps) on the simulated
/// chip with weights `weights` and compares every step with the host reference (which uses
/// the weights rounded to `dtype`, as the device holds them).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    cfg: &LlmConfig,
    chip: &ChipSpec,
    par: Parallel,
    dtype: DType,
    weights: &WeightMap,
    prompts: &[Vec<u32>],
    steps: usize,
    check_races: bool,
    trace: Option<&Path>,
) -> Result<Generation> {
    let Some(len) = prompts.first().map(Vec::len) else { bail!("no prompt to generate from") };
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        bail!("every prompt needs the same, non-zero number of tokens (the batch runs in lockstep)");
    }
    let rounded: WeightMap = weights
        .iter()
        .map(|(n, w)| {
            let values = w.values.iter().map(|&v| dtype.round(v)).collect();
            (n.clone(), HostWeight { shape: w.shape.clone(), values })
        })
        .collect();
    let want = greedy(cfg, &rounded, prompts, steps)?;
    let batch = prompts.len();
    let mut cache = HostCache::new(cfg, batch);
    let mut tokens: Vec<u32> = prompts.iter().flatten().copied().collect();
    let mut out = Vec::with_capacity(steps);
    let mut shares = Vec::with_capacity(steps);
    let mut traced = Vec::new();
    for (i, reference) in want.iter().enumerate() {
        let phase = if i == 0 { Phase::Prefill { len } } else { Phase::Decode { context: len + i } };
        let spec = DecoderSpec {
            phase,
            batch,
            dtype,
            tp: par.tp,
            moe: MoeRouting::Dense,
            expert_parallel: par.expert_parallel,
            reuse_layers: true,
            layer_barriers: false,
        };
        let dp = build_decoder(cfg, chip, &spec)?;
        let opts = SimOptions { check_races, record_events: true, ..SimOptions::default() };
        let mut session = Session::new(chip, &dp.program, opts)?;
        for t in dp.program.tensors.iter().filter(|t| t.kind == TensorKind::Input) {
            let values = dp.input_values(cfg, &t.name, weights, &tokens, &cache)?;
            session.bind(&t.name, &HostTensor::from_f32(t.shape.clone(), t.dtype, &values))?;
        }
        let profile = session.run()?;
        shares.push(session.result().map(|r| Breakdown::of_run(&dp.ops, r)).unwrap_or_default());
        let read = |name: &str| -> Result<Vec<f32>> { Ok(session.output(name)?.to_f32()) };
        let cache_len = phase.cache_len();
        for c in &dp.caches {
            cache.store(c, &read(&c.name)?, cache_len)?;
        }
        cache.set_len(cache_len);
        let next: Vec<u32> = read(NEXT_TOKEN)?.into_iter().map(|x| x as u32).collect();
        let logits = read(LOGITS)?;
        let max_logit_diff = logits
            .chunks(cfg.vocab_size() as usize)
            .zip(&reference.logits)
            .flat_map(|(g, w)| g.iter().zip(w).map(|(&a, &b)| (f64::from(a) - b).abs()))
            .fold(0.0, f64::max);
        out.push(GeneratedStep {
            phase: if i == 0 { "prefill" } else { "decode" },
            context: cache_len,
            tokens: next.clone(),
            reference: reference.tokens.clone(),
            max_logit_diff,
            sim_ns: profile.total_ns,
        });
        tokens = next;
        if trace.is_some() {
            if let Some(run) = session.result().cloned() {
                drop(session);
                traced.push((if i == 0 { "prefill".to_string() } else { format!("decode {i}") }, dp, run));
            }
        }
    }
    if let Some(path) = trace {
        let steps: Vec<(&str, &_, &_)> = traced.iter().map(|(n, dp, run)| (n.as_str(), dp, run)).collect();
        super::trace::write(path, chip, &steps)?;
    }
    let matches = out.iter().all(|s| s.tokens == s.reference);
    let prefill = shares.first().cloned().unwrap_or_default();
    let last_decode = if shares.len() > 1 { shares.pop() } else { None };
    Ok(Generation { tp: par.tp, dtype: dtype.name().to_string(), steps: out, matches, prefill, last_decode })
}
