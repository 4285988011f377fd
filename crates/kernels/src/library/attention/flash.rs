//! `flash_attention`: prefill attention streamed over key blocks.
//!
//! For each 128-row query block the kernel walks key blocks of `KB` keys
//! (1024 for 16-bit inputs, 512 for f32) and keeps, per query row, a running
//! (negated, scaled) max `nb` and an f32 accumulator `O' = [Σ p·v | Σ p]`:
//!
//! 1. **A** (PE) `S = Q·Kᵀ` into PSUM, stationary `Qᵀ [D, 128]`, moving
//!    `Kᵀ [D, ≤512]`; on the causal diagonal a second matmul adds a `-1e30`
//!    upper-triangular mask (identity × mask), so no other engine touches it.
//! 2. **B** (Vector) row max of `S` read as bf16 — the high half of each f32,
//!    a bitcast view — which halves the reduce cost (HW-COST-TREDUCE); the
//!    max only has to be close to the true one, the result does not depend
//!    on it. GpSimd folds it into the running `nb = min(nb, -scale·max)`.
//! 3. **C** (Scalar) `P = exp(scale·S + nb)` in the input dtype, and
//!    `α = exp(nb_new - nb_old)`.
//! 4. **D** (PE) 128×128 transposes `P → Pᵀ` into PSUM; **E** copies them to
//!    SBUF (Vector in 2× 16-bit mode, part on Scalar).
//! 5. **F** (PE) `O_blk = P·[V | 1]`: stationary `Pᵀ [128 keys, 128 q]`,
//!    moving `[V | 1] [128 keys, D+1]`; the ones column gives the row sums.
//! 6. **G** GpSimd rescales `O' ← α·O'`, Vector adds `O_blk`; **H** (GpSimd)
//!    divides by the sum column and the row block is stored.
//!
//! `Kᵀ` and `[V | 1]` of a kv head stay in SBUF for all query heads of its
//! group (GQA) and all query blocks; `Kᵀ` comes from PE transposes of
//! naturally loaded key blocks, so every DMA moves ≥ 256-byte rows. The
//! stages are emitted as a software pipeline: block `t`'s stage `X` is
//! emitted in "tick" `t + lag(X)`, so each in-order engine queue interleaves
//! several blocks and no engine waits for the one before it in the chain.
//! Score tiles, `P`, `Pᵀ` and `O_blk` rotate over small buffer rings sized
//! so that a buffer's next writer is always emitted after its last reader.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::{
    attend_row, bound, check_args, check_head_dim, kernel_err, kv_heads, on_cores, scalar_copy, softmax_scale,
    with_arena, Arena, FLOAT_DTYPES,
};
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::{BuildError, HbmTensor, KernelBuilder, Stage, View};

use plan::{schedule, Plan, Row, Task};

mod plan;

const NAME: &str = "flash_attention";

/// Query rows per block: the PSUM partitions of a score tile.
const QB: usize = 128;
/// Keys per transpose and per PV matmul: the partitions of `Pᵀ`.
const KS: usize = 128;
/// Largest moving free size of one matmul (one PSUM bank of f32).
const MM_N: usize = 512;
/// Pᵀ sub-blocks per half block that Scalar copies (Vector copies the rest at
/// twice Scalar's 16-bit rate; Scalar also runs every exp).
const E_SCALAR_SUBS: usize = 1;
/// Additive mask above the causal diagonal: exp of it underflows to 0 for any positive scale.
const MASK: f64 = -1.0e30;

/// Pipeline lags, in ticks (one tick = one key block through the PE).
const LAG_B: i64 = 1;
const LAG_C: i64 = 2;
const LAG_D: i64 = 3;
const LAG_E: i64 = 4;
const LAG_F: i64 = 5;
const LAG_G: i64 = 6;
const LAG_H: i64 = 7;

/// `o[b, h] = softmax(scale · q[b, h] · k[b, h/G]ᵀ (+ causal mask)) · v[b, h/G]`
/// (see the module docs for the tiling and pipeline).
pub struct FlashAttention;

/// The problem, parsed and checked.
#[derive(Clone, Copy, Debug)]
struct Problem {
    b: usize,
    h: usize,
    s: usize,
    d: usize,
    kvh: usize,
    causal: bool,
    scale: f32,
    dtype: DType,
}

impl Problem {
    fn parse(chip: &ChipSpec, args: &KernelArgs) -> Result<Problem, BuildError> {
        check_args(&FlashAttention, args)?;
        let [b, h, s, d] = args.dims::<4>(NAME, "B,H,S,D")?;
        check_head_dim(NAME, chip, d)?;
        let kvh = kv_heads(NAME, args, h)?;
        let causal = args.flag(NAME, "causal", true)?;
        let scale = softmax_scale(NAME, args, d)?;
        Ok(Problem { b, h, s, d, kvh, causal, scale, dtype: args.dtype })
    }

    /// Keys per block: 2 f32 PSUM banks of scores for 16-bit inputs, 1 for f32
    /// (whose transposes and PV operands are twice as large).
    fn kb(&self) -> usize {
        if self.dtype == DType::F32 {
            512
        } else {
            1024
        }
    }

    /// Key blocks of 128 in one sequence.
    fn nkb(&self) -> usize {
        self.s.div_ceil(KS)
    }

    /// Useful FLOPs: 2 per MAC of `q·kᵀ` and of `p·v` over the keys each query sees.
    fn flops(&self) -> u64 {
        let s = self.s as u64;
        let pairs = if self.causal { s * (s + 1) / 2 } else { s * s };
        4 * (self.b * self.h * self.d) as u64 * pairs
    }

    fn bytes(&self) -> u64 {
        let per = (self.s * self.d * self.dtype.size()) as u64;
        per * (2 * self.b * self.h + 2 * self.b * self.kvh) as u64
    }
}

/// Everything one core allocates (views of tiles its [`Arena`] owns).
struct Bufs {
    s: Vec<View>,
    ptp: Vec<View>,
    ob: Vec<View>,
    prep: Vec<View>,
    kt: Vec<View>,
    vp: Vec<View>,
    kn: Vec<View>,
    qs: Vec<View>,
    qt: Vec<View>,
    p: Vec<View>,
    pts: Vec<View>,
    nbm: Vec<View>,
    nbm_min: Vec<View>,
    nb: Vec<View>,
    alpha: Vec<View>,
    oacc: Vec<View>,
    out: Vec<View>,
    ident: Option<View>,
    mask: Option<View>,
}

/// Ring sizes (see the lifetime argument in each use).
const N_S: usize = 3;
const N_P: usize = 2;
const N_PTS: usize = 2;
const N_OB: usize = 3;
const N_QS: usize = 4;
const N_QT: usize = 3;
const N_NB: usize = 4;
const N_ALPHA: usize = 8;
const N_ROW: usize = 3;
const N_KN: usize = 16;
const N_PREP: usize = 3;

impl Bufs {
    fn new(kb: &mut KernelBuilder, arena: &mut Arena, p: &Problem) -> Result<Bufs, BuildError> {
        let (dt, d, kbk) = (p.dtype, p.d, p.kb());
        let half = kbk / KS / 2;
        let s = arena.ring(kb, N_S, &[QB, kbk], DType::F32, true)?;
        let ptp = arena.ring(kb, 2, &[KS, half, QB], dt, true)?;
        let ob = arena.ring(kb, N_OB, &[QB, d + 1], DType::F32, true)?;
        // Kᵀ and Qᵀ transposes: a ring of 128×128 buffers in what PSUM has left.
        let mut prep = Vec::new();
        while prep.len() < N_PREP {
            match arena.psum(kb, &[KS, QB], dt) {
                Ok(t) => prep.push(t),
                Err(_) if !prep.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        let kn = arena.ring(kb, N_KN, &[KS, d], dt, false)?;
        let qs = arena.ring(kb, N_QS, &[QB, d], dt, false)?;
        let qt = arena.ring(kb, N_QT, &[d, QB], dt, false)?;
        let pt = arena.ring(kb, N_P, &[QB, kbk], dt, false)?;
        let pts = arena.ring(kb, N_PTS, &[KS, kbk / KS, QB], dt, false)?;
        let nbm = arena.ring(kb, N_NB, &[QB, kbk / MM_N], DType::Bf16, false)?;
        let nbm_min = arena.ring(kb, N_NB, &[QB, 1], DType::Bf16, false)?;
        let nb = arena.ring(kb, N_NB, &[QB, 1], DType::F32, false)?;
        let alpha = arena.ring(kb, N_ALPHA, &[QB, 1], DType::F32, false)?;
        let oacc = arena.ring(kb, N_ROW, &[QB, d + 1], DType::F32, false)?;
        let out = arena.ring(kb, N_ROW, &[QB, d], dt, false)?;
        // bf16 holds -1e30 (f16 would make it -inf, and 0·inf in the matmul NaN);
        // f32 inputs pair only with f32 (HW-ISA-MATMUL-DT).
        let mdt = if dt == DType::F32 { DType::F32 } else { DType::Bf16 };
        let (ident, mask) = if p.causal {
            (Some(arena.sbuf(kb, &[QB, QB], mdt)?), Some(arena.sbuf(kb, &[QB, QB], mdt)?))
        } else {
            (None, None)
        };
        // Two sets of resident Kᵀ / [V | 1] overlap one head's preparation with
        // the previous head's blocks; one set still works, with a stall per head.
        let per_head = |x: usize| x.div_ceil(64) * 64;
        let need = per_head(p.s * dt.size()) + per_head(p.nkb() * (d + 1) * dt.size());
        let head_bufs = if kb.sbuf_free_bytes() >= 2 * need as u64 { 2 } else { 1 };
        if kb.sbuf_free_bytes() < need as u64 {
            return Err(kernel_err(
                NAME,
                format!("S={} does not fit: Kᵀ and [V | 1] of one head need {need} bytes per partition", p.s),
            ));
        }
        let kt = arena.ring(kb, head_bufs, &[d, p.s], dt, false)?;
        let vp = arena.ring(kb, head_bufs, &[KS, p.nkb(), d + 1], dt, false)?;
        let bufs =
            Bufs { s, ptp, ob, prep, kt, vp, kn, qs, qt, p: pt, pts, nbm, nbm_min, nb, alpha, oacc, out, ident, mask };
        Ok(bufs)
    }
}

/// DMA queues: query loads, key chunks, value heads, output stores (separate
/// so that a store waiting for compute or a large V load never holds up a
/// small load that the PE is about to need).
const Q_QUEUES: [u8; 2] = [0, 1];
const K_QUEUES: [u8; 2] = [2, 3];
const O_QUEUES: [u8; 2] = [4, 5];
const V_QUEUES: [u8; 2] = [6, 7];

/// The tensors and the per-core plan and buffers, for the stage emitters.
struct Ctx<'a> {
    p: &'a Problem,
    q: &'a HbmTensor,
    k: &'a HbmTensor,
    v: &'a HbmTensor,
    o: &'a HbmTensor,
    plan: &'a Plan,
    bufs: &'a Bufs,
}

impl Ctx<'_> {
    fn head_buf(&self, head: usize) -> usize {
        head % self.bufs.kt.len()
    }

    /// The last prep buffer is Qᵀ's (when there are two or more), the rest rotate over Kᵀ chunks.
    fn q_prep_buf(&self) -> &View {
        &self.bufs.prep[self.bufs.prep.len() - 1]
    }

    fn k_prep_buf(&self, u: usize) -> &View {
        let n = self.bufs.prep.len();
        &self.bufs.prep[u % (n - 1).max(1)]
    }

    fn row_of(&self, t: usize) -> &Row {
        &self.plan.rows[self.plan.blocks[t].row]
    }

    /// 128-key sub-blocks of block `t`, split into the two halves that share
    /// one PSUM transpose buffer each: `(half, first sub-block, count)`.
    fn halves(&self, t: usize) -> [(usize, usize, usize); 2] {
        let n = self.plan.blocks[t].kw.div_ceil(KS);
        let h0 = n.div_ceil(2);
        [(0, 0, h0), (1, h0, n - h0)]
    }

    /// Keys in sub-block `i` of block `t`.
    fn sub_keys(&self, t: usize, i: usize) -> usize {
        KS.min(self.plan.blocks[t].kw - i * KS)
    }

    fn emit(&self, kb: &mut KernelBuilder, task: Task) -> Result<(), BuildError> {
        match task {
            Task::Init => self.init(kb),
            Task::KLoad(u) => self.k_load(kb, u),
            Task::KPrep(u) => self.k_prep(kb, u),
            Task::VLoad(n) => self.v_load(kb, n),
            Task::QLoad(r) => self.q_load(kb, r),
            Task::QPrep(r) => self.q_prep(kb, r),
            Task::A(t) => self.scores(kb, t),
            Task::B(t) => self.row_max(kb, t),
            Task::C(t) => self.exp(kb, t),
            Task::D(t) => self.transpose_p(kb, t),
            Task::E(t) => self.copy_pt(kb, t),
            Task::F(t) => self.pv(kb, t),
            Task::G1(t) => self.rescale(kb, t),
            Task::G2(t) => self.accumulate(kb, t),
            Task::H(r) => self.finish_row(kb, r),
        }
    }

    /// Identity and causal mask (iota on GpSimd), and the ones column of [V | 1].
    fn init(&self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        if let (Some(ident), Some(mask)) = (&self.bufs.ident, &self.bufs.mask) {
            let idx = kb.sbuf_tile(&[QB, QB], DType::F32)?;
            // idx[q, k] = k - q
            kb.iota(&idx, 0, -1, &[1])?;
            kb.tensor_scalar(Engine::GpSimd, ident, &idx, Stage::new(AluOp::Eq, 0.0), None)?;
            kb.tensor_scalar(
                Engine::GpSimd,
                mask,
                &idx,
                Stage::new(AluOp::Gt, 0.0),
                Some(Stage::new(AluOp::Mul, MASK as f32)),
            )?;
            kb.free(idx)?;
        }
        let d = self.p.d;
        for vp in &self.bufs.vp {
            kb.memset(Engine::GpSimd, vp.slice(2, d..d + 1), 1.0)?;
        }
        Ok(())
    }

    /// Natural `[kc keys, D]` load of one key block.
    fn k_load(&self, kb: &mut KernelBuilder, u: usize) -> Result<(), BuildError> {
        let c = self.plan.chunks[u];
        let hd = self.plan.heads[c.head];
        let k0 = c.blk * KS;
        let kc = KS.min(self.p.s - k0);
        let src = self.k.view().at(0, hd.b).at(0, hd.kv).rows(k0..k0 + kc);
        kb.dma_on(K_QUEUES[u % 2], self.bufs.kn[u % N_KN].part(0..kc), src)?;
        Ok(())
    }

    /// PE transpose of one key block, then a copy into the head's Kᵀ.
    fn k_prep(&self, kb: &mut KernelBuilder, u: usize) -> Result<(), BuildError> {
        let c = self.plan.chunks[u];
        let d = self.p.d;
        let k0 = c.blk * KS;
        let kc = KS.min(self.p.s - k0);
        let staged = self.k_prep_buf(u).part(0..d).cols(0..kc);
        kb.transpose(Engine::Tensor, &staged, self.bufs.kn[u % N_KN].part(0..kc))?;
        let (src, dst) = (staged, self.bufs.kt[self.head_buf(c.head)].part(0..d).cols(k0..k0 + kc));
        if u.is_multiple_of(2) {
            kb.copy(Engine::Vector, dst, src)?;
        } else {
            scalar_copy(kb, dst, src)?;
        }
        Ok(())
    }

    /// `[V | 1]` rows of one head (the ones column is set once in `init`).
    fn v_load(&self, kb: &mut KernelBuilder, n: usize) -> Result<(), BuildError> {
        let hd = self.plan.heads[n];
        let (s, d) = (self.p.s, self.p.d);
        let src = self.v.view().at(0, hd.b).at(0, hd.kv);
        let dst = &self.bufs.vp[self.head_buf(n)];
        let full = s / KS;
        // Two transfers on two queues for the full blocks: they run side by side.
        let mid = full / 2;
        for (i, (a, z)) in [(0, mid), (mid, full)].into_iter().enumerate() {
            if z > a {
                let rows = src.rows(a * KS..z * KS).reshape(&[z - a, KS, d]).permute(&[1, 0, 2]);
                kb.dma_on(V_QUEUES[i], dst.slice(1, a..z).slice(2, 0..d), rows)?;
            }
        }
        if full * KS < s {
            let tail = s - full * KS;
            kb.dma_on(V_QUEUES[1], dst.part(0..tail).at(1, full).cols(0..d), src.rows(s - tail..s))?;
        }
        Ok(())
    }

    fn q_load(&self, kb: &mut KernelBuilder, r: usize) -> Result<(), BuildError> {
        let row = self.plan.rows[r];
        let src = self.q.view().at(0, row.b).at(0, row.h).rows(row.q0..row.q0 + row.qr);
        kb.dma_on(Q_QUEUES[r % 2], self.bufs.qs[r % N_QS].part(0..row.qr), src)?;
        Ok(())
    }

    /// `Qᵀ [D, qr]` through one PE transpose.
    fn q_prep(&self, kb: &mut KernelBuilder, r: usize) -> Result<(), BuildError> {
        let row = self.plan.rows[r];
        let (d, qr) = (self.p.d, row.qr);
        let staged = self.q_prep_buf().part(0..d).cols(0..qr);
        kb.transpose(Engine::Tensor, &staged, self.bufs.qs[r % N_QS].part(0..qr))?;
        kb.copy(Engine::Vector, self.bufs.qt[r % N_QT].cols(0..qr), &staged)?;
        Ok(())
    }

    /// A: `S = Q·Kᵀ` (+ the causal mask on the diagonal tile).
    fn scores(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        let row = *self.row_of(t);
        let (d, qr) = (self.p.d, row.qr);
        let s = &self.bufs.s[t % N_S];
        let qt = self.bufs.qt[blk.row % N_QT].cols(0..qr);
        let kt = &self.bufs.kt[self.head_buf(row.head)];
        // The diagonal tile: query rows q0.. against keys q0.. (last block only).
        let diag = (self.p.causal && blk.k0 + blk.kw == row.q0 + row.qr).then(|| row.q0 - blk.k0);
        for c0 in (0..blk.kw).step_by(MM_N) {
            let c1 = (c0 + MM_N).min(blk.kw);
            let masked = diag.filter(|&x| (c0..c1).contains(&x));
            let dst = s.part(0..qr).cols(c0..c1);
            let keys = kt.part(0..d).cols(blk.k0 + c0..blk.k0 + c1);
            kb.matmul(&dst, &qt, keys, true, masked.is_none())?;
            if let (Some(x), Some(ident), Some(mask)) = (masked, &self.bufs.ident, &self.bufs.mask) {
                let id = ident.part(0..qr).cols(0..qr);
                kb.matmul(s.part(0..qr).cols(x..x + qr), id, mask.part(0..qr).cols(0..qr), false, true)?;
            }
        }
        Ok(())
    }

    /// B: `nbm = -max(S)` over the bf16 high halves; `nb = min(nb_prev, scale·nbm)`.
    ///
    /// One reduce per 512-column chunk, the chunk an A matmul writes: the next
    /// write of the chunk then covers (and retires) the strided read, which
    /// keeps dependency tracking linear in the program length.
    fn row_max(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        let qr = self.row_of(t).qr;
        let nbm = &self.bufs.nbm[t % N_NB];
        let chunks = blk.kw.div_ceil(MM_N);
        for c in 0..chunks {
            let (c0, c1) = (c * MM_N, (c * MM_N + MM_N).min(blk.kw));
            let s = self.bufs.s[t % N_S].part(0..qr).cols(c0..c1);
            let hi = s.bitcast(DType::Bf16).slice_step(1, 1..2 * (c1 - c0), 2);
            kb.tensor_reduce(Engine::Vector, AluOp::Max, nbm.part(0..qr).cols(c..c + 1), hi, 1, true)?;
        }
        let neg_max = if chunks > 1 {
            let both = self.bufs.nbm_min[t % N_NB].part(0..qr);
            kb.tensor_reduce(Engine::GpSimd, AluOp::Min, &both, nbm.part(0..qr).cols(0..chunks), 1, false)?;
            both
        } else {
            nbm.part(0..qr).cols(0..1)
        };
        let nb = self.bufs.nb[t % N_NB].part(0..qr);
        let scale = Stage::new(AluOp::Mul, self.p.scale);
        let fold = (blk.j > 0).then(|| Stage::new(AluOp::Min, self.bufs.nb[(t + N_NB - 1) % N_NB].part(0..qr)));
        kb.tensor_scalar(Engine::GpSimd, &nb, &neg_max, scale, fold)?;
        Ok(())
    }

    /// C: `P = exp(scale·S + nb)` per half block, and `α = exp(nb - nb_prev)`.
    fn exp(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        let qr = self.row_of(t).qr;
        let nb = self.bufs.nb[t % N_NB].part(0..qr);
        for (_, i0, n) in self.halves(t) {
            let (c0, c1) = (i0 * KS, (i0 * KS + n * KS).min(blk.kw));
            if c1 > c0 {
                let src = self.bufs.s[t % N_S].part(0..qr).cols(c0..c1);
                let dst = self.bufs.p[t % N_P].part(0..qr).cols(c0..c1);
                kb.activation(ActFn::Exp, dst, src, self.p.scale, Some(&nb), None)?;
            }
        }
        if blk.j > 0 {
            let prev = self.bufs.nb[(t + N_NB - 1) % N_NB].part(0..qr);
            let alpha = self.bufs.alpha[t % N_ALPHA].part(0..qr);
            kb.activation(ActFn::Exp, alpha, prev, -1.0, Some(&nb), None)?;
        }
        Ok(())
    }

    /// D: 128×128 PE transposes of P into the two half-block PSUM buffers.
    fn transpose_p(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let qr = self.row_of(t).qr;
        let p = &self.bufs.p[t % N_P];
        for (half, i0, n) in self.halves(t) {
            for i in i0..i0 + n {
                let kc = self.sub_keys(t, i);
                let dst = self.bufs.ptp[half].part(0..kc).at(1, i - i0).cols(0..qr);
                kb.transpose(Engine::Tensor, dst, p.part(0..qr).cols(i * KS..i * KS + kc))?;
            }
        }
        Ok(())
    }

    /// E: Pᵀ from PSUM to SBUF; Vector takes the first sub-blocks of each
    /// half (2× in 16-bit mode), Scalar the last.
    fn copy_pt(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let qr = self.row_of(t).qr;
        let pts = &self.bufs.pts[t % N_PTS];
        for (half, i0, n) in self.halves(t) {
            let ptp = &self.bufs.ptp[half];
            // Full sub-blocks copy together; a short last one on its own.
            let full = (0..n).take_while(|&i| self.sub_keys(t, i0 + i) == KS).count();
            let on_scalar = if n >= 2 && full == n { E_SCALAR_SUBS } else { 0 };
            let split = full - on_scalar.min(full);
            let parts = [(0, split, Engine::Vector), (split, full, Engine::Scalar)];
            for (a, z, engine) in parts.into_iter().filter(|(a, z, _)| z > a) {
                let src = ptp.slice(1, a..z).slice(2, 0..qr);
                let dst = pts.slice(1, i0 + a..i0 + z).slice(2, 0..qr);
                if engine == Engine::Vector {
                    kb.copy(Engine::Vector, dst, src)?;
                } else {
                    scalar_copy(kb, dst, src)?;
                }
            }
            if full < n {
                let kc = self.sub_keys(t, i0 + full);
                let src = ptp.part(0..kc).at(1, full).cols(0..qr);
                kb.copy(Engine::Vector, pts.part(0..kc).at(1, i0 + full).cols(0..qr), src)?;
            }
        }
        Ok(())
    }

    /// F: `O_blk = P·[V | 1]`, accumulated over the block's 128-key sub-blocks.
    fn pv(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        let row = *self.row_of(t);
        let qr = row.qr;
        let n = blk.kw.div_ceil(KS);
        let ob = self.bufs.ob[t % N_OB].part(0..qr);
        let vp = &self.bufs.vp[self.head_buf(row.head)];
        for i in 0..n {
            let kc = self.sub_keys(t, i);
            let st = self.bufs.pts[t % N_PTS].part(0..kc).at(1, i).cols(0..qr);
            let mv = vp.part(0..kc).at(1, blk.k0 / KS + i);
            kb.matmul(&ob, st, mv, i == 0, i + 1 == n)?;
        }
        Ok(())
    }

    /// G1: `O' ← α·O'` on GpSimd (SBUF only) before this block's add.
    fn rescale(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        if blk.j == 0 {
            return Ok(());
        }
        let qr = self.row_of(t).qr;
        let oacc = self.bufs.oacc[blk.row % N_ROW].part(0..qr);
        let alpha = self.bufs.alpha[t % N_ALPHA].part(0..qr);
        kb.tensor_scalar(Engine::GpSimd, &oacc, &oacc, Stage::new(AluOp::Mul, alpha), None)?;
        Ok(())
    }

    /// G2: `O' += O_blk` (Vector, one operand in PSUM), or `O' = O_blk` first.
    fn accumulate(&self, kb: &mut KernelBuilder, t: usize) -> Result<(), BuildError> {
        let blk = self.plan.blocks[t];
        let qr = self.row_of(t).qr;
        let oacc = self.bufs.oacc[blk.row % N_ROW].part(0..qr);
        let ob = self.bufs.ob[t % N_OB].part(0..qr);
        if blk.j == 0 {
            kb.copy(Engine::Vector, &oacc, &ob)?;
        } else {
            kb.tensor_tensor(Engine::Vector, AluOp::Add, &oacc, &ob, &oacc)?;
        }
        Ok(())
    }

    /// H: `o = O'[:, :D] / O'[:, D]` and the store.
    fn finish_row(&self, kb: &mut KernelBuilder, r: usize) -> Result<(), BuildError> {
        let row = self.plan.rows[r];
        let (d, qr) = (self.p.d, row.qr);
        let oacc = &self.bufs.oacc[r % N_ROW];
        let out = self.bufs.out[r % N_ROW].part(0..qr);
        let sum = oacc.part(0..qr).cols(d..d + 1);
        kb.tensor_scalar(Engine::GpSimd, &out, oacc.part(0..qr).cols(0..d), Stage::new(AluOp::Div, sum), None)?;
        let dst = self.o.view().at(0, row.b).at(0, row.h).rows(row.q0..row.q0 + qr);
        kb.dma_on(O_QUEUES[r % 2], dst, &out)?;
        Ok(())
    }
}

impl Kernel for FlashAttention {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "attention"
    }
    fn summary(&self) -> &'static str {
        "softmax(scale·q·kᵀ [causal]) · v, streamed over key blocks (inputs q, k, v; output o)"
    }
    fn shape_help(&self) -> &'static str {
        "B,H,S,D (batch, query heads, sequence, head dim ≤ 128); q [B,H,S,D], k/v [B,KVH,S,D]"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("kv_heads", "KV heads (default H; must divide H): query head h reads kv head h/(H/KVH)"),
            ("causal", "mask keys after the query (default true)"),
            ("scale", "softmax scale (default 1/sqrt(D))"),
        ]
    }
    fn dtypes(&self) -> &'static [DType] {
        FLOAT_DTYPES
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1, 2, 256, 64]
    }

    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let p = Problem::parse(chip, args)?;
        let sig = |name: &str, kind, heads| TensorSig {
            name: name.to_string(),
            kind,
            shape: vec![p.b, heads, p.s, p.d],
            dtype: p.dtype,
        };
        Ok(vec![
            sig("q", TensorKind::Input, p.h),
            sig("k", TensorKind::Input, p.kvh),
            sig("v", TensorKind::Input, p.kvh),
            sig("o", TensorKind::Output, p.h),
        ])
    }

    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        let p = Problem::parse(kb.chip(), args)?;
        let [q, k, v, o] = ["q", "k", "v", "o"].map(|name| bound(NAME, io, name));
        let (q, k, v, o) = (q?, k?, v?, o?);
        let total_rows = p.b * p.h * p.s.div_ceil(QB);
        let cores = (args.cores as usize).min(total_rows).max(1);
        on_cores(kb, cores, |kb, c| {
            with_arena(kb, |kb, arena| {
                let bufs = Bufs::new(kb, arena, &p)?;
                let range = c * total_rows / cores..(c + 1) * total_rows / cores;
                let mut plan = Plan::new(&p, range);
                plan.schedule_chunks(bufs.kt.len());
                let ctx = Ctx { p: &p, q, k, v, o, plan: &plan, bufs: &bufs };
                schedule(&plan, bufs.kt.len()).into_iter().try_for_each(|task| ctx.emit(kb, task))
            })
        })?;
        Ok(Cost { flops: p.flops(), bytes_hbm: p.bytes(), peak_dtype: Some(p.dtype) })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let [b, h, s, d] = args.dims::<4>(NAME, "B,H,S,D")?;
        let kvh = kv_heads(NAME, args, h)?;
        let causal = args.flag(NAME, "causal", true)?;
        let scale = softmax_scale(NAME, args, d)? as f64;
        let get = |name: &str| {
            inputs.get(name).map(|(_, v)| v).ok_or_else(|| kernel_err(NAME, format!("missing input `{name}`")))
        };
        let (q, k, v) = (get("q")?, get("k")?, get("v")?);
        let mut o = vec![0.0; b * h * s * d];
        let group = h / kvh;
        for bi in 0..b {
            for hi in 0..h {
                let kv = (bi * kvh + hi / group) * s * d;
                let base = (bi * h + hi) * s * d;
                for i in 0..s {
                    let keys = if causal { i + 1 } else { s };
                    let out = &mut o[base + i * d..base + i * d + d];
                    attend_row(&q[base + i * d..base + i * d + d], &k[kv..], &v[kv..], keys, d, scale, out);
                }
            }
        }
        Ok(HostTensors::from([("o".to_string(), (vec![b, h, s, d], o))]))
    }
}

#[cfg(test)]
mod tests;
