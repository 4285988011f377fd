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
    chip: &ChipSpec,
    cfg: &LlmConfig,
    weights: &WeightMap,
    spec: &DecoderSpec,
    tokens: &[u32],
    cache: &mut HostCache,
) -> DeviceStep {
    let dp = build_decoder(cfg, chip, spec).unwrap_or_else(|e| panic!("{e}"));
    let mut session = Session::new(chip, &dp.program, SimOptions::default()).unwrap_or_else(|e| panic!("{e}"));
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
fn generate(
    chip: &ChipSpec,
    cfg: &LlmConfig,
    weights: &WeightMap,
    prompts: &[Vec<u32>],
    steps: usize,
    tp: u32,
) -> Vec<DeviceStep> {
    generate_ep(chip, cfg, weights, prompts, steps, tp, false)
}

/// [`generate`], optionally with the MoE experts spread over the ranks.
fn generate_ep(
    chip: &ChipSpec,
    cfg: &LlmConfig,
    weights: &WeightMap,
    prompts: &[Vec<u32>],
    steps: usize,
    tp: u32,
    expert_parallel: bool,
) -> Vec<DeviceStep> {
    let batch = prompts.len();
    let len = prompts[0].len();
    let mut cache = HostCache::new(cfg, batch);
    let mut out = Vec::new();
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let spec = DecoderSpec {
        phase: Phase::Prefill { len },
        batch,
        dtype: DType::F32,
        tp,
        moe: MoeRouting::Dense,
        expert_parallel,
        reuse_layers: true,
        layer_barriers: false,
    };
    out.push(run_step(chip, cfg, weights, &spec, &flat, &mut cache));
    for step in 1..steps {
        let spec = DecoderSpec {
            phase: Phase::Decode { context: len + step },
            batch,
            dtype: DType::F32,
            tp,
            moe: MoeRouting::Dense,
            expert_parallel,
            reuse_layers: true,
            layer_barriers: false,
        };
        let prev = out[step - 1].tokens.clone();
        out.push(run_step(chip, cfg, weights, &spec, &prev, &mut cache));
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
    let got = generate(&chip(), &cfg, &weights, &prompts, steps, 1);
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
    let spec = DecoderSpec {
        phase: Phase::Decode { context: 9 },
        batch: 2,
        dtype: DType::Bf16,
        tp: 1,
        moe: MoeRouting::Dense,
        expert_parallel: false,
        reuse_layers: true,
        layer_barriers: false,
    };
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
        build_decoder(
            &c,
            &chip(),
            &DecoderSpec {
                phase,
                batch,
                dtype: DType::Bf16,
                tp,
                moe: MoeRouting::Dense,
                expert_parallel: false,
                reuse_layers: true,
                layer_barriers: false,
            },
        )
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
            moe: MoeRouting::Dense,
            expert_parallel: false,
            reuse_layers: true,
            layer_barriers: false,
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
    let trn1 = ChipSpec::by_name("trn1").and_then(|t| t.with_chips(2)).unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (chip(), 1, Phase::Prefill { len: 130 }),
        (chip(), 1, Phase::Decode { context: 300 }),
        (chip(), 2, Phase::Decode { context: 40 }),
        (trn1, 4, Phase::Prefill { len: 20 }),
    ];
    for ((chip, tp, phase), layer_barriers) in cases.into_iter().flat_map(|c| [(c.clone(), false), (c, true)]) {
        let spec = DecoderSpec {
            phase,
            batch: 2,
            dtype: DType::Bf16,
            tp,
            moe: MoeRouting::Dense,
            expert_parallel: false,
            reuse_layers: true,
            layer_barriers,
        };
        let reused = build_decoder(&c, &chip, &spec).unwrap_or_else(|e| panic!("{e}"));
        let full = build_decoder(&c, &chip, &DecoderSpec { reuse_layers: false, ..spec.clone() })
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
        assert!(trainyard_isa::validate(&reused.program, &chip).is_ok());
        // A barrier before each layer and before the head, each one instruction.
        let barriers: Vec<&OpSpan> = reused.ops.iter().filter(|o| o.category == OpCategory::Barrier).collect();
        assert_eq!(barriers.len(), if layer_barriers { 7 } else { 0 }, "{phase:?}");
        assert!(barriers.iter().all(|o| o.insts.len() == 1), "{phase:?}");
    }
}

/// TP=2 and TP=4 (KV heads replicated: 2 KV heads on 4 cores), on one trn2 chip and over
/// two trn1 chips (2 cores each: the all-reduces and the logits all-gather cross a link),
/// give the tokens of TP=1, and logits within f32 summation-order error.
#[test]
fn tensor_parallel_runs_match_tp1() {
    let c = cfg("tiny-llama");
    let weights = random_checkpoint(&c, 11).unwrap_or_else(|e| panic!("{e}"));
    let prompts = prompts(&c, 2, 6);
    let one = generate(&chip(), &c, &weights, &prompts, 3, 1);
    let trn1 = ChipSpec::by_name("trn1").and_then(|t| t.with_chips(2)).unwrap_or_else(|e| panic!("{e}"));
    for (chip, tp) in [(chip(), 2), (chip(), 4), (trn1, 4)] {
        let got = generate(&chip, &c, &weights, &prompts, 3, tp);
        for (i, (g, w)) in got.iter().zip(&one).enumerate() {
            assert_eq!(g.tokens, w.tokens, "{} tp={tp} step {i}", chip.name);
            for (gl, wl) in g.logits.iter().zip(&w.logits) {
                let worst = gl.iter().zip(wl).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-4, "{} tp={tp} step {i}: logits differ by {worst}", chip.name);
            }
        }
    }
}

#[test]
fn tiny_mixtral_dense_routing_matches_the_reference() {
    check_against_reference("tiny-mixtral", 2, 5, 3);
}

/// The uniform (timed-only) MoE dataflow builds for a real model and spreads the slots evenly.
#[test]
fn uniform_moe_programs_build_with_even_slots() {
    let c = cfg("tiny-mixtral");
    let spec = DecoderSpec {
        phase: Phase::Prefill { len: 9 },
        batch: 2,
        dtype: DType::Bf16,
        tp: 2,
        moe: MoeRouting::Uniform,
        expert_parallel: false,
        reuse_layers: true,
        layer_barriers: false,
    };
    let dp = build_decoder(&c, &chip(), &spec).unwrap_or_else(|e| panic!("{e}"));
    assert!(dp.ops.iter().any(|o| o.label == "experts" && o.category == OpCategory::Mlp));
    let cache = HostCache::new(&c, 2);
    let w = WeightMap::new();
    let dispatch = dp.input_values(&c, "moe.dispatch", &w, &[], &cache).unwrap_or_else(|e| panic!("{e}"));
    let combine = dp.input_values(&c, "moe.combine", &w, &[], &cache).unwrap_or_else(|e| panic!("{e}"));
    // 18 tokens × 2 experts each over 4 experts: 9 slots per expert, every slot of every token once.
    assert_eq!((dispatch.len(), combine.len()), (36, 36));
    for (slot, &at) in combine.iter().enumerate() {
        assert_eq!(dispatch[at as usize] as usize, slot / 2, "slot {slot}");
    }
    let m = LlmConfig::bundled("mixtral-8x7b").unwrap_or_else(|e| panic!("{e}"));
    let big = DecoderSpec { phase: Phase::Decode { context: 64 }, batch: 4, tp: 8, ..spec };
    assert!(build_decoder(&m, &chip(), &big).is_ok());
}

/// Mixtral with the experts sliced over 2 cores, or spread whole over 2 and 4 cores (expert
/// parallelism; 4 experts), gives the tokens of one core.
#[test]
fn expert_parallel_moe_matches_one_core() {
    let c = cfg("tiny-mixtral");
    let weights = random_checkpoint(&c, 13).unwrap_or_else(|e| panic!("{e}"));
    let prompts = prompts(&c, 2, 4);
    let one = generate(&chip(), &c, &weights, &prompts, 2, 1);
    for (tp, ep) in [(2, false), (2, true), (4, true)] {
        let got = generate_ep(&chip(), &c, &weights, &prompts, 2, tp, ep);
        for (i, (g, w)) in got.iter().zip(&one).enumerate() {
            assert_eq!(g.tokens, w.tokens, "tp={tp} ep={ep} step {i}");
        }
    }
    let spec = DecoderSpec {
        phase: Phase::Decode { context: 8 },
        batch: 3,
        dtype: DType::Bf16,
        tp: 3,
        moe: MoeRouting::Uniform,
        expert_parallel: true,
        reuse_layers: true,
        layer_barriers: false,
    };
    assert!(matches!(build_decoder(&c, &chip(), &spec), Err(ProgramError::Sharding { .. })));
    let dense = DecoderSpec { tp: 2, ..spec.clone() };
    assert!(matches!(build_decoder(&cfg("tiny-llama"), &chip(), &dense), Err(ProgramError::Unsupported { .. })));
    let uniform = build_decoder(&c, &chip(), &DecoderSpec { tp: 4, ..spec }).unwrap_or_else(|e| panic!("{e}"));
    assert!(uniform.inputs.contains_key("moe.local.shard3"));
}

/// Token-split expert parallelism (uniform routing, tokens that split evenly): two
/// all-to-alls and an all-gather instead of an all-reduce; the slot tables send every slot of
/// every token once and bring it back to its token; the program runs race-free.
#[test]
fn token_split_expert_parallelism_routes_every_slot_home() {
    let c = cfg("tiny-mixtral"); // 4 experts, 2 per token
    let (n, k) = (2usize, 2usize);
    let spec = DecoderSpec {
        phase: Phase::Prefill { len: 4 },
        batch: 2,
        dtype: DType::F32,
        tp: n as u32,
        moe: MoeRouting::Uniform,
        expert_parallel: true,
        reuse_layers: true,
        layer_barriers: false,
    };
    let dp = build_decoder(&c, &chip(), &spec).unwrap_or_else(|e| panic!("{e}"));
    let labels: Vec<&str> = dp.ops.iter().filter(|o| o.layer == Some(1)).map(|o| o.label.as_str()).collect();
    for want in ["all_to_all.dispatch", "experts", "all_to_all.combine", "all_gather.moe"] {
        assert!(labels.contains(&want), "{labels:?}");
    }
    assert!(!labels.contains(&"all_reduce.mlp") && labels.contains(&"all_reduce.attn"), "{labels:?}");
    // Follow the slot tables through the all-to-all: rank r sends chunk d to rank d, which
    // returns it in place, so local slot s of rank r comes back from row (s mod n)·c + s / n.
    let (t, cache, w) = (8usize, HostCache::new(&c, 2), WeightMap::new());
    let tl = t / n;
    let ids = |name: &str| dp.input_values(&c, name, &w, &[], &cache).unwrap_or_else(|e| panic!("{name}: {e}"));
    for r in 0..n {
        let send = ids(&format!("moe.send_ids.shard{r}"));
        let back = ids(&format!("moe.return_ids.shard{r}"));
        assert_eq!((send.len(), back.len()), (tl * k, tl * k));
        let mut seen = vec![0; tl];
        for (slot, &row) in back.iter().enumerate() {
            let token = send[row as usize] as usize;
            assert_eq!(token, r * tl + slot / k, "rank {r} slot {slot}");
            seen[token - r * tl] += 1;
        }
        assert!(seen.iter().all(|&x| x == k), "{seen:?}");
    }
    // Race-checked functional run with random weights.
    let weights = random_checkpoint(&c, 3).unwrap_or_else(|e| panic!("{e}"));
    let mut session = Session::new(&chip(), &dp.program, SimOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let tokens: Vec<u32> = (0..t as u32).collect();
    for decl in dp.program.tensors.iter().filter(|d| d.kind == trainyard_isa::TensorKind::Input) {
        let v = dp.input_values(&c, &decl.name, &weights, &tokens, &cache).unwrap_or_else(|e| panic!("{e}"));
        session
            .bind(&decl.name, &HostTensor::from_f32(decl.shape.clone(), decl.dtype, &v))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    session.run().unwrap_or_else(|e| panic!("{e}"));
    let next = session.output(NEXT_TOKEN).unwrap_or_else(|e| panic!("{e}")).to_f32();
    assert!(next.iter().all(|&x| x >= 0.0 && x < c.vocab_size() as f32));
}
