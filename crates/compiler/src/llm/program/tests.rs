//! Decoder programs against the host reference: functional simulation (race-checked) of
//! tiny random models, greedy tokens compared exactly.

use trainyard_arch::{ChipSpec, DType};
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::SimOptions;

use super::*;
use crate::llm::checkpoint::random_checkpoint;
use crate::llm::reference::{greedy, WeightMap};

fn cfg(name: &str) -> LlmConfig {
    LlmConfig::bundled(name).unwrap_or_else(|e| panic!("{e}"))
}

fn chip() -> ChipSpec {
    ChipSpec::by_name("trn2").unwrap_or_else(|e| panic!("{e}"))
}

/// One simulated step: its next tokens and logits `[B][V]`.
struct DeviceStep {
    tokens: Vec<u32>,
    logits: Vec<Vec<f64>>,
}

/// Runs one step functionally with the race checker on; stores the caches in `cache`.
fn run_step(
    cfg: &LlmConfig,
    weights: &WeightMap,
    spec: &DecoderSpec,
    tokens: &[u32],
    cache: &mut HostCache,
) -> DeviceStep {
    let chip = chip();
    let dp = build_decoder(cfg, &chip, spec).unwrap_or_else(|e| panic!("{e}"));
    let mut session = Session::new(&chip, &dp.program, SimOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    for t in dp.program.tensors.iter().filter(|t| t.kind == trainyard_isa::TensorKind::Input) {
        let values = dp.input_values(cfg, &t.name, weights, tokens, cache).unwrap_or_else(|e| panic!("{e}"));
        let host = HostTensor::from_f32(t.shape.clone(), t.dtype, &values);
        session.bind(&t.name, &host).unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
    session.run().unwrap_or_else(|e| panic!("{e}"));
    let read = |name: &str| session.output(name).unwrap_or_else(|e| panic!("{e}")).to_f32();
    let len = spec.phase.cache_len();
    for c in &dp.caches {
        cache.store(c, &read(&c.name), len).unwrap_or_else(|e| panic!("{e}"));
    }
    cache.set_len(len);
    let v = cfg.vocab_size() as usize;
    DeviceStep {
        tokens: read(NEXT_TOKEN).into_iter().map(|x| x as u32).collect(),
        logits: read(LOGITS).chunks(v).map(|row| row.iter().map(|&x| f64::from(x)).collect()).collect(),
    }
}

/// Greedy generation on the device: prefill of `prompts`, then `steps − 1` decode steps.
fn generate(cfg: &LlmConfig, weights: &WeightMap, prompts: &[Vec<u32>], steps: usize, tp: u32) -> Vec<DeviceStep> {
    let batch = prompts.len();
    let len = prompts[0].len();
    let mut cache = HostCache::new(cfg, batch);
    let mut out = Vec::new();
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let spec = DecoderSpec { phase: Phase::Prefill { len }, batch, dtype: DType::F32, tp, reuse_layers: true };
    out.push(run_step(cfg, weights, &spec, &flat, &mut cache));
    for step in 1..steps {
        let spec = DecoderSpec {
            phase: Phase::Decode { context: len + step },
            batch,
            dtype: DType::F32,
            tp,
            reuse_layers: true,
        };
        let prev = out[step - 1].tokens.clone();
        out.push(run_step(cfg, weights, &spec, &prev, &mut cache));
    }
    out
}

fn prompts(cfg: &LlmConfig, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let v = cfg.vocab_size();
    (0..batch).map(|b| (0..len).map(|i| ((b * 7919 + i * 104_729 + 13) as u32) % v).collect()).collect()
}

/// Device tokens equal the reference's; logits agree to f32 accuracy.
fn check_against_reference(name: &str, batch: usize, len: usize, steps: usize) {
    let cfg = cfg(name);
    let weights = random_checkpoint(&cfg, 7).unwrap_or_else(|e| panic!("{e}"));
    let prompts = prompts(&cfg, batch, len);
    let want = greedy(&cfg, &weights, &prompts, steps).unwrap_or_else(|e| panic!("{e}"));
    let got = generate(&cfg, &weights, &prompts, steps, 1);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for (gl, wl) in g.logits.iter().zip(&w.logits) {
            let worst = gl.iter().zip(wl).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-3, "{name} step {i}: logits differ by {worst}");
        }
        assert_eq!(g.tokens, w.tokens, "{name} step {i}");
    }
    // The sequences do not all repeat one token: the comparison means something.
    let distinct: std::collections::BTreeSet<u32> = want.iter().flat_map(|s| s.tokens.clone()).collect();
    assert!(distinct.len() > 1, "{name}: {distinct:?}");
}

#[test]
fn tiny_llama_greedy_tokens_match_the_reference() {
    check_against_reference("tiny-llama", 2, 5, 3);
}

#[test]
fn tiny_qwen2_with_bias_and_tied_head_matches_the_reference() {
    check_against_reference("tiny-qwen2", 2, 4, 3);
}

#[test]
fn programs_record_their_ops() {
    let c = cfg("tiny-llama");
    let spec =
        DecoderSpec { phase: Phase::Decode { context: 9 }, batch: 2, dtype: DType::Bf16, tp: 1, reuse_layers: true };
    let dp = build_decoder(&c, &chip(), &spec).unwrap_or_else(|e| panic!("{e}"));
    let n = dp.program.insts.len() as u32;
    // Spans are disjoint, in order, and cover every instruction.
    let mut next = 0;
    for op in &dp.ops {
        assert_eq!(op.insts.start, next, "{op:?}");
        next = op.insts.end;
    }
    assert_eq!(next, n);
    let labels: Vec<&str> = dp.ops.iter().filter(|o| o.layer == Some(1)).map(|o| o.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "input_norm",
            "q_proj",
            "k_proj",
            "v_proj",
            "rotary_q",
            "rotary_k",
            "kv_cache_write",
            "attention",
            "o_proj",
            "residual.attn",
            "post_attn_norm",
            "mlp",
            "residual.mlp"
        ]
    );
    assert_eq!(dp.caches.len(), 4);
    assert!(matches!(dp.inputs.get("cache.1.value"), Some(TensorSource::Cache(_))));
    let q = dp.inputs.get("model.layers.0.self_attn.q_proj.weight");
    assert!(matches!(q, Some(TensorSource::Weight { slice: WeightSlice::Transposed { .. }, .. })), "{q:?}");
}

#[test]
fn bad_requests_are_named_errors() {
    let c = cfg("tiny-llama");
    let build = |phase, batch, tp| {
        build_decoder(&c, &chip(), &DecoderSpec { phase, batch, dtype: DType::Bf16, tp, reuse_layers: true })
    };
    assert!(matches!(build(Phase::Prefill { len: 4 }, 0, 1), Err(ProgramError::Invalid { what: "batch", .. })));
    assert!(matches!(build(Phase::Decode { context: 0 }, 1, 1), Err(ProgramError::Invalid { .. })));
    assert!(matches!(build(Phase::Decode { context: 4096 }, 1, 1), Err(ProgramError::Invalid { what: "context", .. })));
    assert!(matches!(build(Phase::Prefill { len: 4 }, 1, 3), Err(ProgramError::Sharding { tp: 3, .. })));
    let m = cfg("mistral-7b");
    let e = build_decoder(
        &m,
        &chip(),
        &DecoderSpec {
            phase: Phase::Decode { context: 5000 },
            batch: 1,
            dtype: DType::Bf16,
            tp: 8,
            reuse_layers: true,
        },
    );
    assert!(matches!(e, Err(ProgramError::Unsupported { .. })), "{e:?}");
}

/// `tiny-llama` with `layers` layers.
fn deep_tiny(layers: u32) -> LlmConfig {
    let text = include_str!("../../../../../models/tiny-llama/config.json")
        .replace("\"num_hidden_layers\": 2", &format!("\"num_hidden_layers\": {layers}"));
    LlmConfig::from_json_str(&text, "tiny-llama-deep").unwrap_or_else(|e| panic!("{e}"))
}

/// Layer reuse gives exactly the program a full build gives (instructions, dependencies,
/// tensors, op spans), and says so.
#[test]
fn reused_layers_equal_a_full_build() {
    let c = deep_tiny(6);
    for phase in [Phase::Prefill { len: 130 }, Phase::Decode { context: 300 }] {
        let spec = DecoderSpec { phase, batch: 2, dtype: DType::Bf16, tp: 1, reuse_layers: true };
        let reused = build_decoder(&c, &chip(), &spec).unwrap_or_else(|e| panic!("{e}"));
        let full = build_decoder(&c, &chip(), &DecoderSpec { reuse_layers: false, ..spec.clone() })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(reused.notes.iter().any(|n| n.contains("layers 3-5 reuse")), "{phase:?}: {:?}", reused.notes);
        assert_eq!(reused.program.tensors, full.program.tensors, "{phase:?}");
        assert_eq!(reused.program.insts.len(), full.program.insts.len(), "{phase:?}");
        for (i, (a, b)) in reused.program.insts.iter().zip(&full.program.insts).enumerate() {
            assert_eq!(a, b, "{phase:?}: instruction {i}");
        }
        assert_eq!(reused.ops, full.ops, "{phase:?}");
        assert_eq!(reused.inputs, full.inputs, "{phase:?}");
        assert_eq!(reused.caches, full.caches, "{phase:?}");
    }
}
