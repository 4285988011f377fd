//! `decode_attention`: one new query token per sequence against a KV cache.
//!
//! Memory-bound: every cache byte is read once, in transfers of one kv head
//! × one context chunk whose per-partition slices are contiguous (partition
//! `p` holds keys `p·n … p·n+n-1` of the chunk; attention does not care about
//! key order as long as K and V agree). All query heads of a *pass* (one
//! batch, up to 128 heads) share one score tile `S [heads, keys]` in PSUM:
//! kv head `j` adds `Qⱼᵀ · Kⱼᵀ` with a stationary `Qⱼᵀ [D, heads]` that is
//! zero outside its group's columns, so one accumulation group fills every
//! row with its own kv head's scores — GQA reads each kv head once, and the
//! softmax runs once over all heads (Vector max over the bf16 high halves of
//! the f32 scores, Scalar exp with the row sums in its accumulator).
//! `Kᵀ` comes from PE transposes; `Oᵀ [D, heads]` accumulates
//! `Vⱼ[keys, D]ᵀ · Pᵀ[keys, group]` per 128-key block (the group is the short
//! moving operand) and is transposed back for a row-contiguous store.
//! Contexts longer than one chunk (2048 keys, 1024 for f32) are combined
//! with a running max and rescaled accumulators.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::{
    attend_row, bound, check_args, check_head_dim, kernel_err, kv_heads, on_cores, scalar_copy, softmax_scale,
    with_arena, Arena, FLOAT_DTYPES,
};
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::{BuildError, HbmTensor, KernelBuilder, Stage, View};

const NAME: &str = "decode_attention";

/// Keys per transpose / PV block (partitions of `Pᵀ` and of a cache slice).
const KS: usize = 128;
/// Score columns per matmul and per reduce (one PSUM bank of f32).
const MM_N: usize = 512;
/// Blocks per `Kᵀ` / `Pᵀ` PSUM staging buffer.
const GROUP: usize = 4;
/// Largest number of query heads in one pass (PSUM partitions).
const MAX_HEADS: usize = 128;
/// DMA queues. Cache loads go through one queue: each spreads over all 16
/// engines anyway, so they stream back to back at full rate and arrive one at
/// a time, leaving only the last kv head's PV after the last byte.
const KV_QUEUE: u8 = 0;
const Q_QUEUE: u8 = 2;
const O_QUEUE: u8 = 3;

/// `o[b, h] = softmax(scale · q[b, h] · k_cache[b, h/G]ᵀ) · v_cache[b, h/G]` for one query token.
pub struct DecodeAttention;

#[derive(Clone, Copy, Debug)]
struct Problem {
    b: usize,
    h: usize,
    l: usize,
    d: usize,
    kvh: usize,
    scale: f32,
    dtype: DType,
}

impl Problem {
    fn parse(chip: &ChipSpec, args: &KernelArgs) -> Result<Problem, BuildError> {
        check_args(&DecodeAttention, args)?;
        let [b, h, l, d] = args.dims::<4>(NAME, "B,H,L,D")?;
        check_head_dim(NAME, chip, d)?;
        let kvh = kv_heads(NAME, args, h)?;
        let scale = softmax_scale(NAME, args, d)?;
        let g = h / kvh;
        if g > MAX_HEADS {
            return Err(kernel_err(NAME, format!("{g} query heads per kv head exceed the {MAX_HEADS} of one pass")));
        }
        Ok(Problem { b, h, l, d, kvh, scale, dtype: args.dtype })
    }

    fn group(&self) -> usize {
        self.h / self.kvh
    }

    /// Keys per context chunk: the score tile `[heads, chunk]` f32 takes 4
    /// PSUM banks (2 for f32, whose staging buffers are twice as large).
    fn chunk(&self) -> usize {
        if self.dtype == DType::F32 {
            1024
        } else {
            2048
        }
    }
}

/// A context chunk: `n` full 128-key slices per partition, then `tail` keys.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    c0: usize,
    n: usize,
    tail: usize,
}

impl Chunk {
    fn keys(&self) -> usize {
        self.n * KS + self.tail
    }

    fn blocks(&self) -> usize {
        self.n + usize::from(self.tail > 0)
    }

    /// Keys (partitions) of block `j`.
    fn block_keys(&self, j: usize) -> usize {
        if j < self.n {
            KS
        } else {
            self.tail
        }
    }
}

/// One batch's kv heads `kv0..kv1` (and their query heads), processed together.
#[derive(Clone, Copy, Debug)]
struct Pass {
    b: usize,
    kv0: usize,
    kv1: usize,
}

/// Everything one core allocates (views of tiles its [`Arena`] owns).
struct Bufs {
    s: View,
    kps: Vec<View>,
    pps: Vec<View>,
    ot: View,
    o_ps: View,
    kn: Vec<View>,
    vn: Vec<View>,
    kt: Vec<View>,
    qs: View,
    qm: View,
    p: View,
    pts: View,
    nbm: View,
    nbm_min: View,
    nb: [View; 2],
    alpha: View,
    lsum: View,
    l: [View; 2],
    ot_sb: View,
    oacc: View,
    out: View,
}

/// Ring depths of the per-kv-head buffers: the cache slices of a pass stay
/// resident when they fit (all loads then stream back to back), otherwise
/// they rotate and later loads wait for the buffer's last reader.
fn ring_depth(kb: &mut KernelBuilder, kv_per_pass: usize, bytes_each: usize) -> usize {
    let budget = (kb.sbuf_free_bytes() as usize).saturating_sub(16 * 1024);
    (budget / bytes_each.max(1)).clamp(2, kv_per_pass.max(2))
}

impl Bufs {
    fn new(
        kb: &mut KernelBuilder,
        a: &mut Arena,
        p: &Problem,
        heads: usize,
        kv_per_pass: usize,
    ) -> Result<Bufs, BuildError> {
        let (dt, d, lc) = (p.dtype, p.d, p.chunk());
        let nb = lc / KS;
        let s = a.psum(kb, &[heads, lc], DType::F32)?;
        let kps = a.ring(kb, 2, &[d, GROUP, KS], dt, true)?;
        let pps = a.ring(kb, 2, &[KS, GROUP, heads], dt, true)?;
        let ot = a.psum(kb, &[d, heads], DType::F32)?;
        let o_ps = a.psum(kb, &[heads, d], DType::F32)?;
        let qs = a.sbuf(kb, &[heads, d], dt)?;
        let qm = a.sbuf(kb, &[d, kv_per_pass, heads], dt)?;
        let pt = a.sbuf(kb, &[heads, lc], dt)?;
        let pts = a.sbuf(kb, &[KS, nb + 1, heads], dt)?;
        let pieces = lc / MM_N;
        let nbm = a.sbuf(kb, &[heads, pieces], DType::Bf16)?;
        let nbm_min = a.sbuf(kb, &[heads, 1], DType::Bf16)?;
        let nbs = [a.sbuf(kb, &[heads, 1], DType::F32)?, a.sbuf(kb, &[heads, 1], DType::F32)?];
        let alpha = a.sbuf(kb, &[heads, 1], DType::F32)?;
        let lsum = a.sbuf(kb, &[heads, pieces], DType::F32)?;
        let l = [a.sbuf(kb, &[heads, 1], DType::F32)?, a.sbuf(kb, &[heads, 1], DType::F32)?];
        let ot_sb = a.sbuf(kb, &[d, heads], DType::F32)?;
        let oacc = a.sbuf(kb, &[heads, d], DType::F32)?;
        let out = a.sbuf(kb, &[heads, d], dt)?;
        let slice = (nb + 1) * d * dt.size();
        let kt_bytes = lc * dt.size();
        let depth = ring_depth(kb, kv_per_pass, 2 * slice + kt_bytes);
        let kn = a.ring(kb, depth, &[KS, nb + 1, d], dt, false)?;
        let vn = a.ring(kb, depth, &[KS, nb + 1, d], dt, false)?;
        let kt = a.ring(kb, depth, &[d, lc], dt, false)?;
        Ok(Bufs {
            s,
            kps,
            pps,
            ot,
            o_ps,
            kn,
            vn,
            kt,
            qs,
            qm,
            p: pt,
            pts,
            nbm,
            nbm_min,
            nb: nbs,
            alpha,
            lsum,
            l,
            ot_sb,
            oacc,
            out,
        })
    }
}

struct Ctx<'a> {
    p: &'a Problem,
    q: &'a HbmTensor,
    k: &'a HbmTensor,
    v: &'a HbmTensor,
    o: &'a HbmTensor,
    bufs: &'a Bufs,
}

impl Ctx<'_> {
    /// `[keys, D]` slices of one kv head's chunk (`src` is its `[L, D]` cache) in the permuted layout.
    fn load(&self, kb: &mut KernelBuilder, src: View, dst: &View, ch: &Chunk) -> Result<(), BuildError> {
        let d = self.p.d;
        if ch.n > 0 {
            let rows = src.rows(ch.c0..ch.c0 + ch.n * KS).reshape(&[KS, ch.n, d]);
            kb.dma_on(KV_QUEUE, dst.slice(1, 0..ch.n), rows)?;
        }
        if ch.tail > 0 {
            let t0 = ch.c0 + ch.n * KS;
            kb.dma_on(KV_QUEUE, dst.part(0..ch.tail).at(1, ch.n), src.rows(t0..t0 + ch.tail))?;
        }
        Ok(())
    }

    /// `Qⱼᵀ` for every kv head `j` of the pass: `Qᵀ` restricted to group `j`'s columns (zeros elsewhere).
    fn queries(&self, kb: &mut KernelBuilder, pass: &Pass) -> Result<(), BuildError> {
        let (d, g) = (self.p.d, self.p.group());
        let heads = (pass.kv1 - pass.kv0) * g;
        let h0 = pass.kv0 * g;
        let src = self.q.view().at(0, pass.b).rows(h0..h0 + heads);
        kb.dma_on(Q_QUEUE, self.bufs.qs.part(0..heads), src)?;
        let staged = self.bufs.kps[0].part(0..d).reshape_free(&[GROUP * KS]).cols(0..heads);
        kb.transpose(Engine::Tensor, &staged, self.bufs.qs.part(0..heads))?;
        for j in 0..pass.kv1 - pass.kv0 {
            let dst = self.bufs.qm.part(0..d).at(1, j).cols(j * g..j * g + g);
            let src = staged.cols(j * g..j * g + g);
            if j % 2 == 0 {
                kb.copy(Engine::Vector, dst, src)?;
            } else {
                scalar_copy(kb, dst, src)?;
            }
        }
        Ok(())
    }

    /// `Kᵀ` of one kv head's chunk through PE transposes, then `S += Qⱼᵀ·Kⱼᵀ`.
    fn scores(&self, kb: &mut KernelBuilder, pass: &Pass, j: usize, ch: &Chunk, n: usize) -> Result<(), BuildError> {
        let d = self.p.d;
        let heads = (pass.kv1 - pass.kv0) * self.p.group();
        let kn = &self.bufs.kn[n % self.bufs.kn.len()];
        let kt = &self.bufs.kt[n % self.bufs.kt.len()];
        for (gi, b0) in (0..ch.blocks()).step_by(GROUP).enumerate() {
            let staging = &self.bufs.kps[gi % 2];
            let b1 = (b0 + GROUP).min(ch.blocks());
            for blk in b0..b1 {
                let kc = ch.block_keys(blk);
                kb.transpose(
                    Engine::Tensor,
                    staging.part(0..d).at(1, blk - b0).cols(0..kc),
                    kn.part(0..kc).at(1, blk),
                )?;
            }
            let cols = (b1 - b0 - 1) * KS + ch.block_keys(b1 - 1);
            let src = staging.part(0..d).slice(1, 0..b1 - b0).reshape_free(&[(b1 - b0) * KS]).cols(0..cols);
            let dst = kt.part(0..d).cols(b0 * KS..b0 * KS + cols);
            if gi % 2 == 0 {
                kb.copy(Engine::Vector, dst, src)?;
            } else {
                scalar_copy(kb, dst, src)?;
            }
        }
        let last = pass.kv1 - pass.kv0 - 1;
        for c0 in (0..ch.keys()).step_by(MM_N) {
            let c1 = (c0 + MM_N).min(ch.keys());
            let st = self.bufs.qm.part(0..d).at(1, j).cols(0..heads);
            kb.matmul(self.bufs.s.part(0..heads).cols(c0..c1), st, kt.part(0..d).cols(c0..c1), j == 0, j == last)?;
        }
        Ok(())
    }

    /// Softmax of the chunk's scores: `nb = -scale·max`, `P = exp(scale·S + nb)`
    /// with row sums, `α = exp(nb - nb_prev)` after the first chunk; then `Pᵀ`.
    fn softmax(&self, kb: &mut KernelBuilder, heads: usize, ch: &Chunk, ci: usize) -> Result<(), BuildError> {
        let b = self.bufs;
        let keys = ch.keys();
        let pieces = keys.div_ceil(MM_N);
        for c in 0..pieces {
            let (c0, c1) = (c * MM_N, (c * MM_N + MM_N).min(keys));
            let hi = b.s.part(0..heads).cols(c0..c1).bitcast(DType::Bf16).slice_step(1, 1..2 * (c1 - c0), 2);
            kb.tensor_reduce(Engine::Vector, AluOp::Max, b.nbm.part(0..heads).cols(c..c + 1), hi, 1, true)?;
        }
        let neg_max = if pieces > 1 {
            let all = b.nbm.part(0..heads).cols(0..pieces);
            kb.tensor_reduce(Engine::GpSimd, AluOp::Min, b.nbm_min.part(0..heads), all, 1, false)?;
            b.nbm_min.part(0..heads)
        } else {
            b.nbm.part(0..heads).cols(0..1)
        };
        let (nb, prev) = (b.nb[ci % 2].part(0..heads), b.nb[(ci + 1) % 2].part(0..heads));
        let fold = (ci > 0).then(|| Stage::new(AluOp::Min, prev.clone()));
        kb.tensor_scalar(Engine::GpSimd, &nb, &neg_max, Stage::new(AluOp::Mul, self.p.scale), fold)?;
        for c in 0..pieces {
            let (c0, c1) = (c * MM_N, (c * MM_N + MM_N).min(keys));
            let (dst, src) = (b.p.part(0..heads).cols(c0..c1), b.s.part(0..heads).cols(c0..c1));
            let acc = b.lsum.part(0..heads).cols(c..c + 1);
            kb.activation(ActFn::Exp, dst, src, self.p.scale, Some(&nb), Some(&acc))?;
        }
        let l = b.l[ci % 2].part(0..heads);
        kb.tensor_reduce(Engine::GpSimd, AluOp::Add, &l, b.lsum.part(0..heads).cols(0..pieces), 1, false)?;
        if ci > 0 {
            kb.activation(ActFn::Exp, b.alpha.part(0..heads), &prev, -1.0, Some(&nb), None)?;
        }
        for (gi, b0) in (0..ch.blocks()).step_by(GROUP).enumerate() {
            let staging = &b.pps[gi % 2];
            let b1 = (b0 + GROUP).min(ch.blocks());
            for blk in b0..b1 {
                let kc = ch.block_keys(blk);
                let src = b.p.part(0..heads).cols(blk * KS..blk * KS + kc);
                kb.transpose(Engine::Tensor, staging.part(0..kc).at(1, blk - b0).cols(0..heads), src)?;
            }
            let full = (b0..b1).take_while(|&blk| ch.block_keys(blk) == KS).count();
            if full > 0 {
                let src = staging.slice(1, 0..full).slice(2, 0..heads);
                kb.copy(Engine::Vector, b.pts.slice(1, b0..b0 + full).slice(2, 0..heads), src)?;
            }
            if b0 + full < b1 {
                let kc = ch.block_keys(b0 + full);
                let src = staging.part(0..kc).at(1, full).cols(0..heads);
                kb.copy(Engine::Vector, b.pts.part(0..kc).at(1, b0 + full).cols(0..heads), src)?;
            }
        }
        Ok(())
    }

    /// `Oᵀ[:, group j] = Σ_blocks Vⱼ[keys, D]ᵀ · Pᵀ[keys, group j]`.
    fn pv(&self, kb: &mut KernelBuilder, j: usize, ch: &Chunk, n: usize) -> Result<(), BuildError> {
        let (d, g) = (self.p.d, self.p.group());
        let vn = &self.bufs.vn[n % self.bufs.vn.len()];
        let dst = self.bufs.ot.part(0..d).cols(j * g..j * g + g);
        for blk in 0..ch.blocks() {
            let kc = ch.block_keys(blk);
            let mv = self.bufs.pts.part(0..kc).at(1, blk).cols(j * g..j * g + g);
            kb.matmul(&dst, vn.part(0..kc).at(1, blk), mv, blk == 0, blk + 1 == ch.blocks())?;
        }
        Ok(())
    }

    /// `O = (Oᵀ)ᵀ` for the chunk, folded into the running accumulator.
    fn combine(&self, kb: &mut KernelBuilder, heads: usize, ci: usize, last: bool) -> Result<(), BuildError> {
        let b = self.bufs;
        let d = self.p.d;
        kb.copy(Engine::Vector, b.ot_sb.cols(0..heads), b.ot.cols(0..heads))?;
        let o = b.o_ps.part(0..heads);
        kb.transpose(Engine::Tensor, &o, b.ot_sb.part(0..d).cols(0..heads))?;
        let oacc = b.oacc.part(0..heads);
        let l = b.l[ci % 2].part(0..heads);
        if ci == 0 && last {
            kb.tensor_scalar(Engine::Vector, b.out.part(0..heads), &o, Stage::new(AluOp::Div, l), None)?;
            return Ok(());
        }
        if ci == 0 {
            kb.copy(Engine::Vector, &oacc, &o)?;
        } else {
            let alpha = b.alpha.part(0..heads);
            let prev_l = b.l[(ci + 1) % 2].part(0..heads);
            // l_acc = α·l_prev + l_chunk, kept in this chunk's slot.
            kb.tensor_scalar(
                Engine::GpSimd,
                &l,
                &prev_l,
                Stage::new(AluOp::Mul, alpha.clone()),
                Some(Stage::new(AluOp::Add, l.clone())),
            )?;
            kb.tensor_scalar(Engine::GpSimd, &oacc, &oacc, Stage::new(AluOp::Mul, alpha), None)?;
            kb.tensor_tensor(Engine::Vector, AluOp::Add, &oacc, &o, &oacc)?;
        }
        if last {
            kb.tensor_scalar(Engine::GpSimd, b.out.part(0..heads), &oacc, Stage::new(AluOp::Div, l), None)?;
        }
        Ok(())
    }

    fn run_pass(&self, kb: &mut KernelBuilder, pass: &Pass, chunks: &[Chunk]) -> Result<(), BuildError> {
        let (kvp, g) = (pass.kv1 - pass.kv0, self.p.group());
        let heads = kvp * g;
        let ring = self.bufs.kn.len();
        // Every (chunk, kv head) gets a sequence number n for ring slots and queues.
        let seq = |ci: usize, j: usize| ci * kvp + j;
        let total = chunks.len() * kvp;
        let slot = |n: usize| (n / kvp, n % kvp);
        // K loads run ahead by the ring depth, V loads follow them in the same queues.
        let mut k_next = 0;
        let mut v_next = 0;
        let issue_k = |kb: &mut KernelBuilder, upto: usize, next: &mut usize| -> Result<(), BuildError> {
            while *next < upto.min(total) {
                let (ci, j) = slot(*next);
                let src = self.k.view().at(0, pass.b).at(0, pass.kv0 + j);
                self.load(kb, src, &self.bufs.kn[*next % ring], &chunks[ci])?;
                *next += 1;
            }
            Ok(())
        };
        let issue_v = |kb: &mut KernelBuilder, upto: usize, next: &mut usize| -> Result<(), BuildError> {
            while *next < upto.min(total) {
                let (ci, j) = slot(*next);
                let src = self.v.view().at(0, pass.b).at(0, pass.kv0 + j);
                self.load(kb, src, &self.bufs.vn[*next % ring], &chunks[ci])?;
                *next += 1;
            }
            Ok(())
        };
        issue_k(kb, ring, &mut k_next)?;
        issue_v(kb, ring, &mut v_next)?;
        self.queries(kb, pass)?;
        for (ci, ch) in chunks.iter().enumerate() {
            for j in 0..kvp {
                let n = seq(ci, j);
                self.scores(kb, pass, j, ch, n)?;
                issue_k(kb, n + 1 + ring, &mut k_next)?;
            }
            self.softmax(kb, heads, ch, ci)?;
            for j in 0..kvp {
                let n = seq(ci, j);
                self.pv(kb, j, ch, n)?;
                issue_v(kb, n + 1 + ring, &mut v_next)?;
            }
            self.combine(kb, heads, ci, ci + 1 == chunks.len())?;
        }
        let dst: View = self.o.view().at(0, pass.b).rows(pass.kv0 * g..pass.kv0 * g + heads);
        kb.dma_on(O_QUEUE, dst, self.bufs.out.part(0..heads))?;
        Ok(())
    }
}

impl Kernel for DecodeAttention {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "attention"
    }
    fn summary(&self) -> &'static str {
        "one query token per sequence against a KV cache (inputs q, k_cache, v_cache; output o)"
    }
    fn shape_help(&self) -> &'static str {
        "B,H,L,D (batch, query heads, cached length, head dim ≤ 128); q [B,H,D], k_cache/v_cache [B,KVH,L,D]"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("kv_heads", "KV heads (default H; must divide H): query head h reads kv head h/(H/KVH)"),
            ("scale", "softmax scale (default 1/sqrt(D))"),
        ]
    }
    fn dtypes(&self) -> &'static [DType] {
        FLOAT_DTYPES
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1, 8, 512, 64]
    }

    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let p = Problem::parse(chip, args)?;
        let sig =
            |name: &str, kind, shape: Vec<usize>| TensorSig { name: name.to_string(), kind, shape, dtype: p.dtype };
        Ok(vec![
            sig("q", TensorKind::Input, vec![p.b, p.h, p.d]),
            sig("k_cache", TensorKind::Input, vec![p.b, p.kvh, p.l, p.d]),
            sig("v_cache", TensorKind::Input, vec![p.b, p.kvh, p.l, p.d]),
            sig("o", TensorKind::Output, vec![p.b, p.h, p.d]),
        ])
    }

    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        let p = Problem::parse(kb.chip(), args)?;
        let g = p.group();
        let [q, k, v, o] = ["q", "k_cache", "v_cache", "o"].map(|name| bound(NAME, io, name));
        let (q, k, v, o) = (q?, k?, v?, o?);
        let chunks: Vec<Chunk> = (0..p.l)
            .step_by(p.chunk())
            .map(|c0| {
                let len = p.chunk().min(p.l - c0);
                Chunk { c0, n: len / KS, tail: len % KS }
            })
            .collect();
        let units = p.b * p.kvh;
        let cores = (args.cores as usize).min(units).max(1);
        let kv_max = MAX_HEADS / g;
        on_cores(kb, cores, |kb, c| {
            // Core c's (b, kv) units, cut into passes of one batch and ≤ 128 query heads.
            let mut passes: Vec<Pass> = Vec::new();
            for u in c * units / cores..(c + 1) * units / cores {
                let (b, kv) = (u / p.kvh, u % p.kvh);
                match passes.last_mut() {
                    Some(ps) if ps.b == b && ps.kv1 == kv && ps.kv1 - ps.kv0 < kv_max => ps.kv1 += 1,
                    _ => passes.push(Pass { b, kv0: kv, kv1: kv + 1 }),
                }
            }
            let kv_per_pass = passes.iter().map(|ps| ps.kv1 - ps.kv0).max().unwrap_or(1);
            with_arena(kb, |kb, arena| {
                let bufs = Bufs::new(kb, arena, &p, kv_per_pass * g, kv_per_pass)?;
                kb.memset(Engine::GpSimd, &bufs.qm, 0.0)?;
                let ctx = Ctx { p: &p, q, k, v, o, bufs: &bufs };
                passes.iter().try_for_each(|pass| ctx.run_pass(kb, pass, &chunks))
            })
        })?;
        let cache = (p.b * p.kvh * p.l * p.d * p.dtype.size()) as u64;
        let qo = (p.b * p.h * p.d * p.dtype.size()) as u64;
        let flops = 4 * (p.b * p.h * p.l * p.d) as u64;
        Ok(Cost { flops, bytes_hbm: 2 * cache + 2 * qo, peak_dtype: None })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let [b, h, l, d] = args.dims::<4>(NAME, "B,H,L,D")?;
        let kvh = kv_heads(NAME, args, h)?;
        let scale = softmax_scale(NAME, args, d)? as f64;
        let get = |name: &str| {
            inputs.get(name).map(|(_, v)| v).ok_or_else(|| kernel_err(NAME, format!("missing input `{name}`")))
        };
        let (q, k, v) = (get("q")?, get("k_cache")?, get("v_cache")?);
        let mut o = vec![0.0; b * h * d];
        let g = h / kvh;
        for bi in 0..b {
            for hi in 0..h {
                let kv = (bi * kvh + hi / g) * l * d;
                let row = (bi * h + hi) * d;
                attend_row(&q[row..row + d], &k[kv..], &v[kv..], l, d, scale, &mut o[row..row + d]);
            }
        }
        Ok(HostTensors::from([("o".to_string(), (vec![b, h, d], o))]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library;
    use proptest::prelude::*;
    use trainyard_sim::SimOptions;

    fn check(a: &KernelArgs) {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let run = run_kernel(&DecodeAttention, &chip, a, SimOptions::default(), 11).unwrap();
        let c = run.check.unwrap();
        assert!(c.passed, "{:?} {} {:?}: max abs {} worst {:?}", a.shape, a.dtype, a.options, c.max_abs_err, c.worst);
    }

    fn args(shape: &[usize], dtype: DType, kvh: usize) -> KernelArgs {
        KernelArgs::new(shape, dtype).with("kv_heads", &kvh.to_string())
    }

    #[test]
    fn odd_context_lengths() {
        for l in [1, 129, 300] {
            check(&args(&[1, 4, l, 64], DType::Bf16, 2));
        }
        check(&args(&[2, 2, 129, 128], DType::F16, 1));
        check(&args(&[1, 4, 300, 128], DType::F32, 1));
    }

    #[test]
    fn long_context_combines_chunks() {
        // 2100 keys: two chunks (bf16) / three (f32), with a running max.
        check(&args(&[1, 2, 2100, 64], DType::Bf16, 1));
        check(&args(&[1, 2, 2100, 64], DType::F32, 2));
    }

    #[test]
    fn many_heads_and_cores() {
        // 160 heads in two passes (128 + 32) on core 0, a second batch on core 1.
        let mut a = args(&[2, 160, 64, 64], DType::Bf16, 160);
        a.cores = 2;
        let chip = ChipSpec::by_name("trn2").unwrap();
        let run = run_kernel(&DecodeAttention, &chip, &a, SimOptions::default(), 5).unwrap();
        assert!(run.check.unwrap().passed);
        assert_eq!(run.built.program.cores_used(), 2);
    }

    #[test]
    fn counts_and_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let built = library::build(&DecodeAttention, &chip, &args(&[1, 8, 100, 64], DType::Bf16, 2)).unwrap();
        assert_eq!(built.bytes_hbm, 2 * (2 * 100 * 64 * 2) + 2 * (8 * 64 * 2));
        assert_eq!(built.flops, 4 * 8 * 100 * 64);
        assert_eq!(built.peak_dtype, None);
        let err = |a: KernelArgs| library::build(&DecodeAttention, &chip, &a).unwrap_err().to_string();
        assert!(err(args(&[1, 8, 100, 64], DType::Bf16, 3)).contains("kv_heads=3"));
        assert!(err(args(&[1, 8, 100, 256], DType::Bf16, 1)).contains("D=256"));
        assert!(err(args(&[1, 256, 100, 64], DType::Bf16, 1)).contains("256 query heads"));
        assert!(err(args(&[1, 8, 100], DType::Bf16, 1)).contains("B,H,L,D"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        #[test]
        fn random_small_shapes(b in 1usize..3, kvh in 1usize..4, g in 1usize..4, l in 1usize..400, d in prop_oneof![Just(64usize), Just(128)]) {
            check(&args(&[b, kvh * g, l, d], DType::Bf16, kvh));
        }
    }
}
