//! Emitting a decoder step: tensors, kernel calls per TP rank, op spans.

use std::collections::BTreeMap;

use trainyard_arch::{ChipSpec, DType};
use trainyard_kernels::library::{self, collective, Bindings, Kernel, KernelArgs};
use trainyard_kernels::{BuildError, HbmTensor, KernelBuilder, View};

use super::replicate::{splice, Built, Decl};
use super::shard::{chip_name, shard_name, shards, Shard};
use super::{
    CacheTensor, DecoderProgram, DecoderSpec, MoeRouting, OpCategory, OpSpan, Phase, ProgramError, TensorSource,
    WeightSlice, INPUT_IDS, LOGITS, NEXT_TOKEN,
};

mod attention;
mod comm;
mod head;
mod mlp;
mod moe;

use crate::llm::weights::{weight_name, Proj, WeightRole};
use crate::llm::LlmConfig;
use moe::MoeBufs;

/// The library kernels a decoder uses, looked up once.
struct Kernels {
    matmul: Box<dyn Kernel>,
    rmsnorm: Box<dyn Kernel>,
    rotary: Box<dyn Kernel>,
    flash: Box<dyn Kernel>,
    decode: Box<dyn Kernel>,
    mlp: Box<dyn Kernel>,
    swiglu: Box<dyn Kernel>,
    binary: Box<dyn Kernel>,
    embedding: Box<dyn Kernel>,
    argmax: Box<dyn Kernel>,
    topk: Box<dyn Kernel>,
    softmax: Box<dyn Kernel>,
    reduce: Box<dyn Kernel>,
}

impl Kernels {
    fn load() -> Result<Kernels, ProgramError> {
        let get = |name: &str| {
            library::find(name).ok_or_else(|| ProgramError::Unsupported {
                what: format!("kernel `{name}`"),
                why: "it is not in the kernel library".into(),
            })
        };
        Ok(Kernels {
            matmul: get("matmul")?,
            rmsnorm: get("rmsnorm")?,
            rotary: get("rotary")?,
            flash: get("flash_attention")?,
            decode: get("decode_attention")?,
            mlp: get("mlp")?,
            swiglu: get("swiglu")?,
            binary: get("binary")?,
            embedding: get("embedding")?,
            argmax: get("argmax")?,
            topk: get("topk")?,
            softmax: get("softmax")?,
            reduce: get("reduce")?,
        })
    }
}

/// The activations of one TP rank (HBM scratch on its chip, reused by every layer).
struct Rank {
    shard: Shard,
    core: u16,
    chip: u32,
    /// Residual stream `[T, h]`.
    x: HbmTensor,
    /// Normalised input of a block `[T, h]`.
    xn: HbmTensor,
    q: HbmTensor,
    k: HbmTensor,
    v: HbmTensor,
    /// Attention output `[T, hq·D]`.
    attn: HbmTensor,
    /// Partial sums of the o and down projections `[T, h]`, all-reduced in place.
    y: HbmTensor,
    /// Prefill: q and the attention output as `[B, hq, S, D]`.
    qt: Option<HbmTensor>,
    ot: Option<HbmTensor>,
    /// Gate and up activations `[T, I_r]` when the MLP is not fused.
    gate: Option<HbmTensor>,
    up: Option<HbmTensor>,
    /// Last row of each sequence `[B, h]` and its logits shard `[B, Vw]` (f32).
    last: HbmTensor,
    logits: HbmTensor,
    /// Every rank's logits shard `[tp·B, Vw]` after the all-gather (`tp > 1`; with a
    /// hierarchy only the first rank of each chip has it).
    gathered: Option<HbmTensor>,
    /// The logits shards of the rank's chip `[P·B, Vw]` (hierarchy only).
    chip_logits: Option<HbmTensor>,
    /// MoE scratch (MoE models).
    moe: Option<MoeBufs>,
    /// Its segment `[1, T·h/P]` of a hierarchical all-reduce (several chips, `P` ranks each).
    seg: Option<HbmTensor>,
}

/// Inputs every core of one chip reads.
struct ChipInputs {
    ids: HbmTensor,
    cos: HbmTensor,
    sin: HbmTensor,
    embed: HbmTensor,
    /// MoE slot assignment (uniform routing).
    dispatch: Option<HbmTensor>,
    combine: Option<HbmTensor>,
}

/// Sizes of the step.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    t: usize,
    h: usize,
    d: usize,
    v: usize,
    cache: usize,
}

struct Emitter<'a> {
    cfg: &'a LlmConfig,
    spec: &'a DecoderSpec,
    dims: Dims,
    kb: KernelBuilder,
    ks: Kernels,
    ranks: Vec<Rank>,
    chip_inputs: Vec<ChipInputs>,
    chips: u32,
    ops: Vec<OpSpan>,
    inputs: BTreeMap<String, TensorSource>,
    caches: Vec<CacheTensor>,
    /// Every tensor declared so far, by name.
    declared: BTreeMap<String, HbmTensor>,
    /// The op being emitted, for error messages.
    op: String,
    /// MLP as one fused kernel (no MLP biases).
    fused_mlp: bool,
    /// Declare tensors but emit no instructions (layers whose instructions are copied).
    skip_emit: bool,
    /// The layer being emitted, and the tensors each layer declared.
    current_layer: Option<usize>,
    layer_decls: Vec<Vec<Decl>>,
    /// The gathered logits `[B, V]` (`tp > 1`; rank 0's shard is the output otherwise).
    logits_out: Option<HbmTensor>,
    /// Cores per chip.
    per_chip: u32,
}

pub(super) fn build(cfg: &LlmConfig, chip: &ChipSpec, spec: &DecoderSpec) -> Result<DecoderProgram, ProgramError> {
    let dims = check(cfg, spec)?;
    let shards = shards(cfg, spec.tp)?;
    let per_chip = chip.chip.cores.max(1);
    let chips = spec.tp.div_ceil(per_chip);
    if chips > chip.chips() {
        return Err(ProgramError::Unsupported {
            what: format!("tp={} on {} × {}", spec.tp, chip.chips(), chip.name),
            why: format!(
                "a {} chip has {per_chip} cores: tp={} needs {chips} chips (a multi-chip system, `--chips {chips}`)",
                chip.name, spec.tp
            ),
        });
    }
    let mut e = Emitter {
        cfg,
        spec,
        dims,
        kb: KernelBuilder::new(&program_name(cfg, spec), chip),
        ks: Kernels::load()?,
        ranks: Vec::new(),
        chip_inputs: Vec::new(),
        chips,
        ops: Vec::new(),
        inputs: BTreeMap::new(),
        caches: Vec::new(),
        declared: BTreeMap::new(),
        op: "declarations".into(),
        fused_mlp: !cfg.mlp_bias,
        skip_emit: false,
        current_layer: None,
        layer_decls: Vec::new(),
        logits_out: None,
        per_chip,
    };
    e.declare(shards, per_chip)?;
    e.embedding()?;
    let layers = cfg.num_layers as usize;
    let reuse = spec.reuse_layers && layers > 3;
    let mut ranges = Vec::with_capacity(3);
    for l in 0..layers {
        e.current_layer = Some(l);
        e.layer_decls.push(Vec::new());
        e.skip_emit = reuse && l >= 3;
        let start = e.kb.next_id().0;
        e.barrier(Some(l as u32))?;
        e.layer(l as u32)?;
        ranges.push(start..e.kb.next_id().0);
    }
    e.current_layer = None;
    e.skip_emit = false;
    e.barrier(None)?;
    e.head()?;
    let Emitter { mut kb, mut ops, inputs, caches, layer_decls, .. } = e;
    kb.clear_core_window();
    let mut notes =
        vec!["projection weights are stored [in, out] (the checkpoint's [out, in] transposed at load)".to_string()];
    if cfg.tie_word_embeddings {
        notes.push("the tied LM head is a transposed copy of the embedding".into());
    }
    match (cfg.moe, spec.moe) {
        (Some(m), MoeRouting::Uniform) => notes.push(format!(
            "MoE routing is not data-dependent: every expert gets ⌈T·{k}/{e}⌉ token slots (uniform load); the \
             router and top-{k} run but the slots are a program input",
            k = m.experts_per_token,
            e = m.num_experts
        )),
        (Some(_), MoeRouting::Dense) => notes.push(
            "MoE experts run densely on every token, gated by the renormalised top-k router probabilities (exact)"
                .into(),
        ),
        (None, _) => {}
    }
    let program = if reuse {
        // Validated before the copies: they are the validated layer 2 at addresses shifted with
        // the tensors they access, so they pass the same checks.
        let mut program = kb.finish().map_err(|source| ProgramError::Build { op: "validation".into(), source })?;
        let built = Built { layers: [ranges[0].clone(), ranges[1].clone(), ranges[2].clone()], decls: layer_decls };
        if !splice(&mut program, &mut ops, &built, layers) {
            // Not periodic: emit every layer instead.
            let mut full = spec.clone();
            full.reuse_layers = false;
            let mut dp = build(cfg, chip, &full)?;
            dp.spec.reuse_layers = true;
            dp.notes.push("layer reuse did not apply (layer 2 is not layer 1 shifted): every layer was emitted".into());
            return Ok(dp);
        }
        notes.push(format!(
            "layers 3-{} reuse layer 2's instruction stream (the layer's weights and caches at a fixed address \
             stride, dependencies at a fixed distance), exact because the builder emitted layer 2 as layer 1 \
             shifted; every layer is simulated",
            layers - 1
        ));
        program
    } else {
        kb.finish().map_err(|source| ProgramError::Build { op: "validation".into(), source })?
    };
    Ok(DecoderProgram { spec: spec.clone(), program, ops, inputs, caches, notes })
}

fn program_name(cfg: &LlmConfig, spec: &DecoderSpec) -> String {
    let phase = match spec.phase {
        Phase::Prefill { len } => format!("prefill_b{}_s{len}", spec.batch),
        Phase::Decode { context } => format!("decode_b{}_c{context}", spec.batch),
    };
    format!("{}_{phase}_tp{}", cfg.family().model_type(), spec.tp)
}

/// Checks the request and returns its sizes.
fn check(cfg: &LlmConfig, spec: &DecoderSpec) -> Result<Dims, ProgramError> {
    if spec.batch == 0 {
        return Err(ProgramError::Invalid { what: "batch", why: "at least one sequence is needed".into() });
    }
    let cache = spec.phase.cache_len();
    if cache == 0 {
        return Err(ProgramError::Invalid { what: "length", why: "sequences need at least one token".into() });
    }
    if cache as u64 > cfg.max_position_embeddings {
        return Err(ProgramError::Invalid {
            what: "context",
            why: format!("{cache} tokens exceed max_position_embeddings {}", cfg.max_position_embeddings),
        });
    }
    if !matches!(spec.dtype, DType::F32 | DType::Bf16 | DType::F16) {
        return Err(ProgramError::Unsupported {
            what: format!("dtype {}", spec.dtype),
            why: "decoder programs run in f32, bf16 or f16".into(),
        });
    }
    if let Some(sw) = cfg.sliding_window.filter(|sw| (sw.size as usize) < cache) {
        return Err(ProgramError::Unsupported {
            what: format!("a context of {cache} tokens with a {}-token sliding window", sw.size),
            why: "the attention kernels attend to the whole context; keep the context within the window".into(),
        });
    }
    if spec.expert_parallel {
        let Some(m) = cfg.moe else {
            return Err(ProgramError::Unsupported {
                what: "expert parallelism".into(),
                why: format!("{} has no experts", cfg.source()),
            });
        };
        if !m.num_experts.is_multiple_of(spec.tp) {
            return Err(ProgramError::Sharding {
                tp: spec.tp,
                why: format!("expert parallelism needs tp to divide the {} experts", m.num_experts),
            });
        }
    }
    let s = spec.phase.rows_per_sequence();
    Ok(Dims {
        b: spec.batch,
        s,
        t: spec.batch * s,
        h: cfg.hidden_size as usize,
        d: cfg.head_dim as usize,
        v: cfg.vocab_size as usize,
        cache,
    })
}

/// Arguments of a kernel instance on one core.
fn args(shape: &[usize], dtype: DType) -> KernelArgs {
    KernelArgs::new(shape, dtype)
}

fn bind(pairs: &[(&str, &HbmTensor)]) -> Bindings {
    pairs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect()
}

impl Emitter<'_> {
    fn err(&self, source: BuildError) -> ProgramError {
        ProgramError::Build { op: self.op.clone(), source }
    }

    /// Declares an HBM tensor on `chip`.
    fn tensor(
        &mut self,
        chip: u32,
        kind: trainyard_isa::TensorKind,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<HbmTensor, ProgramError> {
        let t = match kind {
            trainyard_isa::TensorKind::Input => self.kb.hbm_input_on(chip, name, shape, dtype),
            trainyard_isa::TensorKind::Output => self.kb.hbm_output_on(chip, name, shape, dtype),
            trainyard_isa::TensorKind::Scratch => self.kb.hbm_scratch_on(chip, name, shape, dtype),
        };
        let t = t.map_err(|e| self.err(e))?;
        self.declared.insert(name.to_string(), t.clone());
        if let (Some(_), Some(decls)) = (self.current_layer, self.layer_decls.last_mut()) {
            decls.push(Decl { chip, offset: t.offset(), bytes: t.bytes() });
        }
        Ok(t)
    }

    fn input(
        &mut self,
        chip: u32,
        name: &str,
        shape: &[usize],
        dtype: DType,
        source: TensorSource,
    ) -> Result<HbmTensor, ProgramError> {
        let t = self.tensor(chip, trainyard_isa::TensorKind::Input, name, shape, dtype)?;
        self.inputs.insert(name.to_string(), source);
        Ok(t)
    }

    fn scratch(&mut self, chip: u32, name: &str, shape: &[usize], dtype: DType) -> Result<HbmTensor, ProgramError> {
        self.tensor(chip, trainyard_isa::TensorKind::Scratch, name, shape, dtype)
    }

    /// A weight of TP rank `r` (sharded), or of its chip (`sharded == false`: one copy per chip).
    fn weight(
        &mut self,
        r: usize,
        sharded: bool,
        hf: &str,
        shape: &[usize],
        slice: WeightSlice,
    ) -> Result<HbmTensor, ProgramError> {
        self.weight_from(r, sharded, hf, shape, TensorSource::Weight { name: hf.to_string(), slice })
    }

    /// [`Emitter::weight`] for any source: device tensor `base` (with the rank's or chip's suffix).
    fn weight_from(
        &mut self,
        r: usize,
        sharded: bool,
        base: &str,
        shape: &[usize],
        source: TensorSource,
    ) -> Result<HbmTensor, ProgramError> {
        let chip = self.ranks[r].chip;
        let name = if sharded { shard_name(base, self.spec.tp, r as u32) } else { chip_name(base, self.chips, chip) };
        if let Some(t) = self.declared.get(&name) {
            return Ok(t.clone());
        }
        self.input(chip, &name, shape, self.spec.dtype, source)
    }
}

/// Hugging Face name of the embedding table.
const EMBED: &str = "model.embed_tokens.weight";

impl Emitter<'_> {
    /// Declares the per-chip inputs and every rank's scratch.
    fn declare(&mut self, shards: Vec<Shard>, per_chip: u32) -> Result<(), ProgramError> {
        let Dims { b, s, t, h, d, v, .. } = self.dims;
        let (dt, tp, chips) = (self.spec.dtype, self.spec.tp, self.chips);
        for chip in 0..chips {
            let name = |base: &str| chip_name(base, chips, chip);
            let ids = self.input(chip, &name(INPUT_IDS), &[t], DType::I32, TensorSource::TokenIds)?;
            let cos = self.input(chip, &name("rope.cos"), &[t, d / 2], dt, TensorSource::RopeCos)?;
            let sin = self.input(chip, &name("rope.sin"), &[t, d / 2], dt, TensorSource::RopeSin)?;
            let source = TensorSource::Weight { name: EMBED.into(), slice: WeightSlice::Whole };
            let embed = self.input(chip, &name(EMBED), &[v, h], dt, source)?;
            // Uniform MoE slots shared by the chip's ranks (with expert parallelism each rank has its own).
            let (dispatch, combine) = match self.cfg.moe {
                Some(m) if self.spec.moe == MoeRouting::Uniform && !self.spec.expert_parallel => {
                    let (e, k) = (m.num_experts as usize, m.experts_per_token as usize);
                    let slots = e * moe::capacity(t, k, e);
                    let all = 0..e;
                    let d = TensorSource::MoeDispatch { experts: all.clone() };
                    let c = TensorSource::MoeCombine { experts: all };
                    (
                        Some(self.input(chip, &name("moe.dispatch"), &[slots], DType::I32, d)?),
                        Some(self.input(chip, &name("moe.combine"), &[t * k], DType::I32, c)?),
                    )
                }
                _ => (None, None),
            };
            self.chip_inputs.push(ChipInputs { ids, cos, sin, embed, dispatch, combine });
        }
        if tp > 1 {
            self.logits_out = Some(self.tensor(0, trainyard_isa::TensorKind::Output, LOGITS, &[b, v], DType::F32)?);
        }
        let prefill = matches!(self.spec.phase, Phase::Prefill { .. });
        // Several chips with the same number of ranks each reduce in a hierarchy.
        let hierarchical = chips > 1 && per_chip > 1 && tp % per_chip == 0 && (t * h) % per_chip as usize == 0;
        self.per_chip = per_chip;
        for shard in shards {
            let r = shard.rank;
            let chip = r / per_chip;
            let name = |base: &str| shard_name(base, tp, r);
            let (hq, hkv, i, vw) = (shard.q_heads.len(), shard.kv_heads.len(), shard.inter.len(), shard.vocab_width);
            let x = self.scratch(chip, &name("x"), &[t, h], dt)?;
            let xn = self.scratch(chip, &name("xn"), &[t, h], dt)?;
            let q = self.scratch(chip, &name("q"), &[t, hq * d], dt)?;
            let k = self.scratch(chip, &name("k"), &[t, hkv * d], dt)?;
            let vv = self.scratch(chip, &name("v"), &[t, hkv * d], dt)?;
            let attn = self.scratch(chip, &name("attn"), &[t, hq * d], dt)?;
            let y = self.scratch(chip, &name("y"), &[t, h], dt)?;
            let (qt, ot) = if prefill {
                (
                    Some(self.scratch(chip, &name("q_bhsd"), &[b, hq, s, d], dt)?),
                    Some(self.scratch(chip, &name("o_bhsd"), &[b, hq, s, d], dt)?),
                )
            } else {
                (None, None)
            };
            let (gate, up) = if self.fused_mlp {
                (None, None)
            } else {
                (
                    Some(self.scratch(chip, &name("gate"), &[t, i], dt)?),
                    Some(self.scratch(chip, &name("up"), &[t, i], dt)?),
                )
            };
            let last = self.scratch(chip, &name("last"), &[b, h], dt)?;
            let moe = if self.cfg.moe.is_some() { Some(self.declare_moe(chip, &name, &shard)?) } else { None };
            let seg = if hierarchical {
                Some(self.scratch(chip, &name("ar_segment"), &[1, t * h / per_chip as usize], dt)?)
            } else {
                None
            };
            let (logits, gathered, chip_logits) = if tp == 1 {
                (self.tensor(chip, trainyard_isa::TensorKind::Output, LOGITS, &[b, v], DType::F32)?, None, None)
            } else {
                let shard = self.scratch(chip, &name("logits_shard"), &[b, vw], DType::F32)?;
                let leader = !hierarchical || r % per_chip == 0;
                let rows = tp as usize * b;
                let all = if leader {
                    Some(self.scratch(chip, &name("logits_gathered"), &[rows, vw], DType::F32)?)
                } else {
                    None
                };
                let local = if hierarchical {
                    Some(self.scratch(chip, &name("logits_chip"), &[per_chip as usize * b, vw], DType::F32)?)
                } else {
                    None
                };
                (shard, all, local)
            };
            self.ranks.push(Rank {
                shard,
                core: r as u16,
                chip,
                x,
                xn,
                q,
                k,
                v: vv,
                attn,
                y,
                qt,
                ot,
                gate,
                up,
                last,
                logits,
                gathered,
                chip_logits,
                seg,
                moe,
            });
        }
        Ok(())
    }

    /// Records the instructions `body` emits as one op.
    fn op(
        &mut self,
        label: &str,
        category: OpCategory,
        layer: Option<u32>,
        body: impl FnOnce(&mut Self) -> Result<(), ProgramError>,
    ) -> Result<(), ProgramError> {
        self.op = match layer {
            Some(l) => format!("layers.{l}.{label}"),
            None => label.to_string(),
        };
        let start = self.kb.next_id().0;
        body(self)?;
        let end = self.kb.next_id().0;
        if end > start && !self.skip_emit {
            self.ops.push(OpSpan { label: label.to_string(), category, layer, insts: start..end });
        }
        Ok(())
    }

    /// [`Emitter::op`] with `body` run for every rank.
    fn each_rank(
        &mut self,
        label: &str,
        category: OpCategory,
        layer: Option<u32>,
        mut body: impl FnMut(&mut Self, usize) -> Result<(), ProgramError>,
    ) -> Result<(), ProgramError> {
        self.op(label, category, layer, |e| (0..e.ranks.len()).try_for_each(|r| body(e, r)))
    }

    /// A barrier on rank 0's core when the spec asks for layer barriers.
    fn barrier(&mut self, layer: Option<u32>) -> Result<(), ProgramError> {
        if !self.spec.layer_barriers {
            return Ok(());
        }
        self.op("barrier", OpCategory::Barrier, layer, |e| {
            if e.skip_emit {
                return Ok(());
            }
            let core = e.ranks.first().map_or(0, |r| r.core);
            e.enter(core)?;
            e.kb.barrier().map(|_| ()).map_err(|err| e.err(err))
        })
    }

    /// Sends the following instructions to `core` alone: library kernels emitted with
    /// `cores = 1` then run there.
    fn enter(&mut self, core: u16) -> Result<(), ProgramError> {
        if self.skip_emit {
            return Ok(());
        }
        self.kb.set_core_window(core, 1).map_err(|e| self.err(e))
    }

    /// Emits library kernel `which` on rank `r`'s core.
    fn run(
        &mut self,
        r: usize,
        which: fn(&Kernels) -> &dyn Kernel,
        args: &KernelArgs,
        io: &[(&str, &HbmTensor)],
    ) -> Result<(), ProgramError> {
        if self.skip_emit {
            return Ok(());
        }
        self.enter(self.ranks[r].core)?;
        let kernel = which(&self.ks);
        let done = kernel.emit(&mut self.kb, args, &bind(io));
        done.map(|_| ()).map_err(|e| self.err(e))
    }

    /// A DMA on queue `queue` of rank `r`'s core (fixed queues: every layer issues the same stream).
    fn dma(&mut self, r: usize, queue: u8, dst: View, src: View) -> Result<(), ProgramError> {
        if self.skip_emit {
            return Ok(());
        }
        self.enter(self.ranks[r].core)?;
        let done = self.kb.dma_on(queue, dst, src);
        done.map(|_| ()).map_err(|e| self.err(e))
    }

    fn reshaped(&self, t: &HbmTensor, shape: &[usize]) -> Result<HbmTensor, ProgramError> {
        t.reshaped(shape).map_err(|e| self.err(e))
    }

    fn rmsnorm(
        &mut self,
        r: usize,
        gamma: &HbmTensor,
        x: &HbmTensor,
        y: &HbmTensor,
        rows: usize,
    ) -> Result<(), ProgramError> {
        let cols = gamma.shape().iter().product();
        let a = args(&[rows, cols], self.spec.dtype).with("eps", &self.cfg.rms_norm_eps.to_string());
        self.run(r, |k| &*k.rmsnorm, &a, &[("x", x), ("gamma", gamma), ("y", y)])
    }

    /// `c[m, n] = a[m, k] · b[k, n] (+ bias)` in `out`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        r: usize,
        a: &HbmTensor,
        b: &HbmTensor,
        bias: Option<&HbmTensor>,
        c: &HbmTensor,
        [m, k, n]: [usize; 3],
        out: DType,
    ) -> Result<(), ProgramError> {
        let mut margs = args(&[m, k, n], self.spec.dtype).with("out", out.name());
        let mut io = vec![("a", a), ("b", b), ("c", c)];
        if let Some(bias) = bias {
            margs = margs.with("bias", "true");
            io.push(("bias", bias));
        }
        self.run(r, |k| &*k.matmul, &margs, &io)
    }

    /// A per-chip norm weight of rank `r`.
    fn norm_weight(&mut self, r: usize, role: WeightRole, layer: u32, width: usize) -> Result<HbmTensor, ProgramError> {
        self.weight(r, false, &weight_name(role, layer, None), &[width], WeightSlice::Whole)
    }

    /// One decoder layer.
    fn layer(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { t, h, d, .. } = self.dims;
        let at = Some(l);
        self.each_rank("input_norm", OpCategory::Norm, at, |e, r| {
            let gamma = e.norm_weight(r, WeightRole::InputNorm, l, h)?;
            let (x, xn) = (e.ranks[r].x.clone(), e.ranks[r].xn.clone());
            e.rmsnorm(r, &gamma, &x, &xn, t)
        })?;
        for p in [Proj::Q, Proj::K, Proj::V] {
            self.each_rank(&format!("{}_proj", p.letter()), OpCategory::Matmul, at, |e, r| e.qkv(r, l, p))?;
        }
        if self.cfg.qk_norm {
            for p in [Proj::Q, Proj::K] {
                self.each_rank(&format!("{}_norm", p.letter()), OpCategory::Norm, at, |e, r| {
                    let gamma = e.norm_weight(r, WeightRole::QkNorm(p), l, d)?;
                    let x = if p == Proj::Q { e.ranks[r].q.clone() } else { e.ranks[r].k.clone() };
                    let rows = t * x.shape()[1] / d;
                    let x = e.reshaped(&x, &[rows, d])?;
                    e.rmsnorm(r, &gamma, &x, &x, rows)
                })?;
            }
        }
        for p in [Proj::Q, Proj::K] {
            self.each_rank(&format!("rotary_{}", p.letter()), OpCategory::Elementwise, at, |e, r| {
                let x = if p == Proj::Q { e.ranks[r].q.clone() } else { e.ranks[r].k.clone() };
                let heads = x.shape()[1] / d;
                let x = e.reshaped(&x, &[t, heads, d])?;
                let chip = &e.chip_inputs[e.ranks[r].chip as usize];
                let (cos, sin) = (chip.cos.clone(), chip.sin.clone());
                let a = args(&[t, heads, d], e.spec.dtype);
                e.run(r, |k| &*k.rotary, &a, &[("x", &x), ("cos", &cos), ("sin", &sin), ("y", &x)])
            })?;
        }
        self.attention(l)?;
        self.each_rank("o_proj", OpCategory::Matmul, at, |e, r| {
            let hq = e.ranks[r].shard.q_heads.clone();
            let rows = hq.start * d..hq.end * d;
            let hf = weight_name(WeightRole::OWeight, l, None);
            let slice = WeightSlice::Transposed { rows: 0..h, cols: rows.clone(), width: h };
            let w = e.weight(r, true, &hf, &[rows.len(), h], slice)?;
            // The bias is added once, by rank 0, before the partial sums are reduced.
            let bias = if e.cfg.attention_bias.o && r == 0 {
                Some(e.weight(r, true, &weight_name(WeightRole::OBias, l, None), &[h], WeightSlice::Whole)?)
            } else {
                None
            };
            let (attn, y) = (e.ranks[r].attn.clone(), e.ranks[r].y.clone());
            e.matmul(r, &attn, &w, bias.as_ref(), &y, [t, rows.len(), h], e.spec.dtype)
        })?;
        self.reduce_and_add("attn", l)?;
        self.each_rank("post_attn_norm", OpCategory::Norm, at, |e, r| {
            let gamma = e.norm_weight(r, WeightRole::PostAttnNorm, l, h)?;
            let (x, xn) = (e.ranks[r].x.clone(), e.ranks[r].xn.clone());
            e.rmsnorm(r, &gamma, &x, &xn, t)
        })?;
        if self.cfg.moe.is_some() {
            self.moe(l)?;
        } else {
            self.mlp(l)?;
        }
        self.reduce_and_add("mlp", l)
    }

    /// q, k or v of rank `r`: its heads' columns of the projection (+ bias).
    fn qkv(&mut self, r: usize, l: u32, p: Proj) -> Result<(), ProgramError> {
        let Dims { t, h, d, .. } = self.dims;
        let shard = &self.ranks[r].shard;
        let heads = if p == Proj::Q { shard.q_heads.clone() } else { shard.kv_heads.clone() };
        let cols = heads.start * d..heads.end * d;
        let n = cols.len();
        let hf = weight_name(WeightRole::QkvWeight(p), l, None);
        let w =
            self.weight(r, true, &hf, &[h, n], WeightSlice::Transposed { rows: cols.clone(), cols: 0..h, width: n })?;
        let bias = if self.cfg.attention_bias.qkv {
            let hf = weight_name(WeightRole::QkvBias(p), l, None);
            Some(self.weight(r, true, &hf, &[n], WeightSlice::Range(cols))?)
        } else {
            None
        };
        let rank = &self.ranks[r];
        let (xn, out) = (
            rank.xn.clone(),
            match p {
                Proj::Q => rank.q.clone(),
                Proj::K => rank.k.clone(),
                Proj::V => rank.v.clone(),
            },
        );
        self.matmul(r, &xn, &w, bias.as_ref(), &out, [t, h, n], self.spec.dtype)
    }
}

fn missing(what: &str) -> BuildError {
    BuildError::Kernel { kernel: "decoder".into(), message: format!("{what} were not declared") }
}
