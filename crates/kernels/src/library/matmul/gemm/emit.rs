//! Emission of one core's matmul program: the main loop over steps, the
//! loads (direct or through Tensor-engine transposes), PSUM evacuation and
//! stores.

use std::collections::VecDeque;

use trainyard_arch::DType;
use trainyard_isa::{ActFn, AluOp, Engine};

use super::super::{per_partition, Balancer, Queues};
use super::{
    err, tr_free, Block, Gemm, Plan, Schedule, A_QUEUES, BIAS_QUEUES, BT_BUFS, B_BUFS, B_QUEUES, C_QUEUES, RAW_A_AHEAD,
    RAW_B_BUFS, TR_BUFS,
};
use crate::{BuildError, HbmTensor, KernelBuilder, Tile, TilePool, View};

/// The HBM tensors of the kernel.
pub(super) struct Tensors {
    pub a: HbmTensor,
    pub b: HbmTensor,
    pub bias: Option<HbmTensor>,
    pub c: HbmTensor,
}

/// The view of batch `i` of a tensor (the whole tensor when not batched).
fn batch_view(t: &HbmTensor, batched: bool, i: usize) -> View {
    if batched {
        t.at(0, i)
    } else {
        t.view()
    }
}

/// Every tile of one core's stream. Allocated in one fixed order (PSUM
/// transpose tiles first, so the accumulators get whole banks), and freed
/// together when the stream ends or fails, so that the builder's memory is
/// as the caller left it.
#[derive(Default)]
struct Buffers {
    tr: Option<TilePool>,
    acc: Option<TilePool>,
    out: Option<TilePool>,
    b_pool: Option<TilePool>,
    raw_b: Option<TilePool>,
    bt: Option<TilePool>,
    raw_a: Option<TilePool>,
    bias_pool: Option<TilePool>,
    tmp: Option<TilePool>,
    ring: Option<Tile>,
}

impl Buffers {
    /// Allocates the buffers `g` needs; on an error, what was allocated
    /// stays in `self` for [`Buffers::free`].
    fn fill(&mut self, kb: &mut KernelBuilder, g: &Gemm, p: &Plan) -> Result<(), BuildError> {
        let (kta, mta, ntw) = (p.kt.min(g.k), p.mt.min(g.m), p.nt.min(g.n));
        let w = (p.mb * p.mt).min(g.m);
        if !g.ta || g.tb {
            self.tr = Some(kb.psum_pool(&[p.kt, tr_free(p.nt, p.mt)], g.dtype, TR_BUFS)?);
        }
        self.acc = Some(kb.psum_pool(&[mta, ntw], DType::F32, p.acc_bufs)?);
        self.out = Some(kb.sbuf_pool(&[mta, ntw], g.out, p.out_bufs)?);
        if g.tb {
            let shape = [p.mt.min(g.n), ntw.div_ceil(p.mt), (p.b_group * p.kt).min(g.k)];
            self.raw_b = Some(kb.sbuf_pool(&shape, g.dtype, RAW_B_BUFS)?);
            self.bt = Some(kb.sbuf_pool(&[kta, ntw], g.dtype, BT_BUFS)?);
        } else {
            self.b_pool = Some(kb.sbuf_pool(&[kta, p.b_group, ntw], g.dtype, B_BUFS)?);
        }
        if !g.ta {
            self.raw_a = Some(kb.sbuf_pool(&[mta, (p.a_group * p.kt).min(g.k)], g.dtype, (RAW_A_AHEAD + 1) * p.mb)?);
        }
        if let Some(d) = g.bias {
            self.bias_pool = Some(kb.sbuf_pool(&[mta, ntw], d, 2)?);
            if g.scale != 1.0 {
                self.tmp = Some(kb.sbuf_pool(&[mta, ntw], DType::F32, 2)?);
            }
        }
        self.ring = Some(kb.sbuf_tile(&[kta, p.ring, w], g.dtype)?);
        Ok(())
    }

    /// Frees every buffer allocated.
    fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        if let Some(ring) = self.ring {
            kb.free(ring)?;
        }
        [self.tr, self.acc, self.out, self.b_pool, self.raw_b, self.bt, self.raw_a, self.bias_pool, self.tmp]
            .into_iter()
            .flatten()
            .try_for_each(|pool| kb.free_pool(pool))
    }
}

/// Emits the work of one core.
pub(super) struct Emitter<'a> {
    kb: &'a mut KernelBuilder,
    g: &'a Gemm,
    p: &'a Plan,
    t: &'a Tensors,
    blocks: &'a [Block],
    s: Schedule,
    bal: Balancer,
    qa: Queues,
    qb: Queues,
    qc: Queues,
    qbias: Queues,
    /// The Aᵀ ring (freed with the pools at the end) and its view.
    ring_tile: Tile,
    ring: View,
    acc: TilePool,
    out: TilePool,
    b_pool: Option<TilePool>,
    raw_a: Option<TilePool>,
    raw_b: Option<TilePool>,
    bt: Option<TilePool>,
    tr: Option<TilePool>,
    bias_pool: Option<TilePool>,
    tmp: Option<TilePool>,
    /// Next Aᵀ group to emit, next group whose raw rows to load, their views.
    a_next: usize,
    a_raw_next: usize,
    a_raw: Vec<Vec<View>>,
    /// Aᵀ items whose last reader has been emitted.
    released: usize,
    /// B: next raw group to load, raw views per group, transposed tiles ahead.
    b_raw_next: usize,
    b_raw: Vec<Vec<View>>,
    bt_ready: VecDeque<View>,
    b_tile: Option<View>,
}

impl<'a> Emitter<'a> {
    pub fn new(
        kb: &'a mut KernelBuilder,
        g: &'a Gemm,
        p: &'a Plan,
        t: &'a Tensors,
        blocks: &'a [Block],
    ) -> Result<Self, BuildError> {
        let chip = kb.chip().clone();
        let mut bufs = Buffers::default();
        if let Err(e) = bufs.fill(kb, g, p) {
            bufs.free(kb)?;
            return Err(e);
        }
        let Buffers {
            tr,
            acc: Some(acc),
            out: Some(out),
            b_pool,
            raw_b,
            bt,
            raw_a,
            bias_pool,
            tmp,
            ring: Some(ring_tile),
        } = bufs
        else {
            return Err(err("internal: a buffer was not allocated"));
        };
        let ring = ring_tile.view();
        let s = Schedule::new(g, p, blocks);
        let (na, nb) = (s.a_groups.len(), s.b_groups.len());
        Ok(Emitter {
            kb,
            g,
            p,
            t,
            blocks,
            s,
            bal: Balancer::new(&chip),
            qa: Queues::new(&chip, A_QUEUES),
            qb: Queues::new(&chip, B_QUEUES),
            qc: Queues::new(&chip, C_QUEUES),
            qbias: Queues::new(&chip, BIAS_QUEUES),
            ring_tile,
            ring,
            acc,
            out,
            b_pool,
            raw_a,
            raw_b,
            bt,
            tr,
            bias_pool,
            tmp,
            a_next: 0,
            a_raw_next: 0,
            a_raw: vec![Vec::new(); na],
            released: 0,
            b_raw_next: 0,
            b_raw: vec![Vec::new(); nb],
            bt_ready: VecDeque::new(),
            b_tile: None,
        })
    }

    /// Emits the stream, then frees every buffer (also when emission fails).
    pub fn run(mut self) -> Result<(), BuildError> {
        let done = self.steps();
        let freed = self.release();
        done.and(freed)
    }

    fn steps(&mut self) -> Result<(), BuildError> {
        let (p, g) = (self.p, self.g);
        // Loads that only wait for buffers go out at once; Tensor-engine
        // transposes are paced so they interleave with the matmuls.
        let paced = !g.ta;
        let mut acc: Vec<View> = Vec::new();
        let mut bias: Option<View> = None;
        for si in 0..self.s.steps.len() {
            let st = self.s.steps[si];
            let blk = self.blocks[st.blk];
            let (n0, ns) = (st.n0, st.ns);
            if st.kt == 0 {
                acc = (0..blk.tiles(p.mt)).map(|_| self.acc.next()).collect();
                bias = self.load_bias(n0, ns)?;
            }
            if g.tb {
                if si == 0 {
                    self.bt_prep(0)?;
                }
                if si + 1 < self.s.steps.len() {
                    self.bt_prep(si + 1)?;
                }
            } else if st.b_local == 0 {
                self.b_load(st.b_group)?;
            }
            self.a_pump(Some(st.a_item), paced)?;
            let moving = if g.tb {
                self.bt_ready.pop_front().ok_or_else(|| err("internal: transposed B tile missing"))?
            } else {
                let tile = self.b_tile.as_ref().ok_or_else(|| err("internal: B tile missing"))?;
                tile.at(1, st.b_local)
            };
            let ks = p.ks(g, st.kt);
            let slot = st.a_item % p.ring;
            let stationary = self.ring.part(0..ks).at(1, slot);
            let moving = moving.part(0..ks).cols(0..ns);
            let last = st.kt + 1 == p.k_tiles;
            for (mi, ps) in acc.iter().enumerate() {
                let ms = p.mt.min(blk.rows - mi * p.mt);
                let st_tile = stationary.cols(mi * p.mt..mi * p.mt + ms);
                self.kb.matmul(ps.part(0..ms).cols(0..ns), &st_tile, &moving, st.kt == 0, last)?;
            }
            if !p.resident || st.last_chunk {
                self.released = st.a_item + 1;
            }
            self.a_pump(None, paced)?;
            if last {
                for (mi, ps) in acc.iter().enumerate() {
                    let ms = p.mt.min(blk.rows - mi * p.mt);
                    let out = self.out.next().part(0..ms).cols(0..ns);
                    self.evacuate(&out, &ps.part(0..ms).cols(0..ns), bias.as_ref().map(|b| b.part(0..ms)))?;
                    let m0 = blk.m0 + mi * p.mt;
                    let dst = batch_view(&self.t.c, g.batched, blk.batch).rows(m0..m0 + ms).cols(n0..n0 + ns);
                    let q = self.qc.next();
                    self.kb.dma_on(q, dst, &out)?;
                }
            }
        }
        Ok(())
    }

    /// Frees the ring and every pool, so that another kernel can follow on
    /// this core (the builder orders its reuse after this kernel's accesses).
    fn release(self) -> Result<(), BuildError> {
        let bufs = Buffers {
            tr: self.tr,
            acc: Some(self.acc),
            out: Some(self.out),
            b_pool: self.b_pool,
            raw_b: self.raw_b,
            bt: self.bt,
            raw_a: self.raw_a,
            bias_pool: self.bias_pool,
            tmp: self.tmp,
            ring: Some(self.ring_tile),
        };
        bufs.free(self.kb)
    }

    /// The bias chunk `[n0, n0+ns)` broadcast to every partition (an HBM
    /// pattern with partition stride 0).
    fn load_bias(&mut self, n0: usize, ns: usize) -> Result<Option<View>, BuildError> {
        let (Some(pool), Some(bias)) = (self.bias_pool.as_mut(), self.t.bias.as_ref()) else { return Ok(None) };
        let tile = pool.next().cols(0..ns);
        let rows = tile.shape()[0];
        let src = bias.view().reshape(&[1, self.g.n]).broadcast(0, rows).cols(n0..n0 + ns);
        let q = self.qbias.next();
        self.kb.dma_on(q, &tile, src)?;
        Ok(Some(tile))
    }

    /// PSUM → SBUF with the scale and the bias applied.
    fn evacuate(&mut self, out: &View, ps: &View, bias: Option<View>) -> Result<(), BuildError> {
        let scale = self.g.scale;
        let n = per_partition(ps);
        match bias {
            None => self.bal.copy(self.kb, out, ps, scale),
            Some(b) if scale == 1.0 => {
                self.bal.vector_work(n);
                self.kb.tensor_tensor(Engine::Vector, AluOp::Add, out, ps, &b).map(|_| ())
            }
            Some(b) => {
                let pool = self.tmp.as_mut().ok_or_else(|| err("internal: no scale buffer"))?;
                let tmp = pool.next().part(0..out.shape()[0]).cols(0..n);
                self.bal.scalar_work(n);
                self.kb.activation(ActFn::Identity, &tmp, ps, scale, None, None)?;
                self.bal.vector_work(2 * n);
                self.kb.tensor_tensor(Engine::Vector, AluOp::Add, out, &tmp, &b).map(|_| ())
            }
        }
    }

    /// Loads B group `gi` (`[K tiles, N chunk]`, row-major B) into the next buffer.
    fn b_load(&mut self, gi: usize) -> Result<(), BuildError> {
        let (p, g) = (self.p, self.g);
        let grp = self.s.b_groups[gi];
        let blk = self.blocks[grp.blk];
        let (n0, ns) = (grp.n0, grp.ns);
        let k0 = grp.kt0 * p.kt;
        let pool = self.b_pool.as_mut().ok_or_else(|| err("internal: no B pool"))?;
        let tile = pool.next();
        let b = batch_view(&self.t.b, g.batched, blk.batch);
        let (dst, src) = if grp.count == 1 {
            (tile.part(0..grp.ks).slice(1, 0..1).cols(0..ns), b.rows(k0..k0 + grp.ks).cols(n0..n0 + ns))
        } else {
            let src = b.rows(k0..k0 + grp.count * p.kt).cols(n0..n0 + ns).reshape(&[grp.count, p.kt, ns]);
            (tile.slice(1, 0..grp.count).cols(0..ns), src.permute(&[1, 0, 2]))
        };
        let q = self.qb.next();
        self.kb.dma_on(q, &dst, &src)?;
        self.b_tile = Some(tile);
        Ok(())
    }

    /// Loads the rows of `[N,K]` B for raw group `gi`: one transfer per
    /// 128-row N block, each row a contiguous run of the group's K columns.
    fn b_raw_load(&mut self, gi: usize) -> Result<(), BuildError> {
        let (p, g) = (self.p, self.g);
        let grp = self.s.b_groups[gi];
        let blk = self.blocks[grp.blk];
        let (n0, ns) = (grp.n0, grp.ns);
        let k0 = grp.kt0 * p.kt;
        let kw = (grp.count - 1) * p.kt + grp.ks;
        let pool = self.raw_b.as_mut().ok_or_else(|| err("internal: no raw B pool"))?;
        let tile = pool.next();
        let b = batch_view(&self.t.b, g.batched, blk.batch);
        for nb in 0..ns.div_ceil(p.mt) {
            let r0 = n0 + nb * p.mt;
            let rows = p.mt.min(n0 + ns - r0);
            let q = self.qb.next();
            self.kb.dma_on(q, tile.part(0..rows).at(1, nb).cols(0..kw), b.rows(r0..r0 + rows).cols(k0..k0 + kw))?;
        }
        self.b_raw[gi] = vec![tile];
        Ok(())
    }

    /// Transposes the B tile of step `si` (`transpose_b=true`): each 128-row N
    /// block of the raw rows through PSUM, then one copy to SBUF.
    fn bt_prep(&mut self, si: usize) -> Result<(), BuildError> {
        let p = self.p;
        let st = self.s.steps[si];
        let grp = self.s.b_groups[st.b_group];
        // Raw rows load one group ahead of their transposes.
        let upto = (st.b_group + 2).min(self.s.b_groups.len());
        while self.b_raw_next < upto {
            self.b_raw_load(self.b_raw_next)?;
            self.b_raw_next += 1;
        }
        let raw = self.b_raw[st.b_group].first().cloned().ok_or_else(|| err("internal: raw B missing"))?;
        if st.b_local + 1 == grp.count {
            self.b_raw[st.b_group].clear();
        }
        let ns = st.ns;
        let ks = grp.ks;
        let tr_pool = self.tr.as_mut().ok_or_else(|| err("internal: no transpose pool"))?;
        let tr = tr_pool.next();
        let c0 = st.b_local * p.kt;
        for nb in 0..ns.div_ceil(p.mt) {
            let rows = p.mt.min(ns - nb * p.mt);
            let src = raw.part(0..rows).at(1, nb).cols(c0..c0 + ks);
            self.kb.transpose(Engine::Tensor, tr.part(0..ks).cols(nb * p.mt..nb * p.mt + rows), &src)?;
        }
        let bt_pool = self.bt.as_mut().ok_or_else(|| err("internal: no B tile pool"))?;
        let bt = bt_pool.next();
        self.bal.copy(self.kb, &bt.part(0..ks).cols(0..ns), &tr.part(0..ks).cols(0..ns), 1.0)?;
        self.bt_ready.push_back(bt);
        Ok(())
    }

    /// Emits Aᵀ groups whose ring slots are free: all of them (`paced` off),
    /// or one per call plus whatever item `need` requires.
    fn a_pump(&mut self, need: Option<usize>, paced: bool) -> Result<(), BuildError> {
        let mut emitted = 0;
        while let Some(&grp) = self.s.a_groups.get(self.a_next) {
            let needed = need.is_some_and(|i| i >= grp.first);
            let fits = grp.first + grp.count <= self.released + self.p.ring;
            if !needed && (!fits || (paced && emitted > 0)) {
                break;
            }
            if !fits {
                return Err(err("internal: Aᵀ ring slot needed before it is free"));
            }
            if self.g.ta {
                self.a_load(self.a_next)?;
            } else {
                self.a_transpose(self.a_next)?;
            }
            self.a_next += 1;
            emitted += 1;
        }
        Ok(())
    }

    /// Loads Aᵀ group `gi` from `[K,M]` straight into its ring slots.
    fn a_load(&mut self, gi: usize) -> Result<(), BuildError> {
        let (p, g) = (self.p, self.g);
        let grp = self.s.a_groups[gi];
        let blk = self.blocks[grp.blk];
        let slot = grp.first % p.ring;
        let k0 = grp.kt0 * p.kt;
        let at = batch_view(&self.t.a, g.batched, blk.batch);
        let cols = blk.m0..blk.m0 + blk.rows;
        let (dst, src) = if grp.count == 1 {
            (self.ring.part(0..grp.ks).slice(1, slot..slot + 1).cols(0..blk.rows), at.rows(k0..k0 + grp.ks).cols(cols))
        } else {
            let src = at.rows(k0..k0 + grp.count * p.kt).cols(cols).reshape(&[grp.count, p.kt, blk.rows]);
            (self.ring.slice(1, slot..slot + grp.count).cols(0..blk.rows), src.permute(&[1, 0, 2]))
        };
        let q = self.qa.next();
        self.kb.dma_on(q, &dst, &src)?;
        Ok(())
    }

    /// Loads the `[M,K]` rows of A group `gi`, one transfer per M tile.
    fn a_raw_load(&mut self, gi: usize) -> Result<(), BuildError> {
        let (p, g) = (self.p, self.g);
        let grp = self.s.a_groups[gi];
        let blk = self.blocks[grp.blk];
        let k0 = grp.kt0 * p.kt;
        let kw = (grp.count - 1) * p.kt + grp.ks;
        let a = batch_view(&self.t.a, g.batched, blk.batch);
        let mut views = Vec::new();
        for mi in 0..blk.tiles(p.mt) {
            let ms = p.mt.min(blk.rows - mi * p.mt);
            let m0 = blk.m0 + mi * p.mt;
            let pool = self.raw_a.as_mut().ok_or_else(|| err("internal: no raw A pool"))?;
            let tile = pool.next();
            let q = self.qa.next();
            self.kb.dma_on(q, tile.part(0..ms).cols(0..kw), a.rows(m0..m0 + ms).cols(k0..k0 + kw))?;
            views.push(tile);
        }
        self.a_raw[gi] = views;
        Ok(())
    }

    /// Transposes A group `gi` into its ring slots: 128×128 blocks through
    /// PSUM (four per tile), copied out to the slots' columns of each M tile.
    fn a_transpose(&mut self, gi: usize) -> Result<(), BuildError> {
        let p = self.p;
        let upto = (gi + 1 + RAW_A_AHEAD).min(self.s.a_groups.len());
        while self.a_raw_next < upto {
            self.a_raw_load(self.a_raw_next)?;
            self.a_raw_next += 1;
        }
        let grp = self.s.a_groups[gi];
        let blk = self.blocks[grp.blk];
        let raws = std::mem::take(&mut self.a_raw[gi]);
        let per_tr = tr_free(p.nt, p.mt) / p.mt;
        let ks = grp.ks;
        for (mi, raw) in raws.iter().enumerate() {
            let ms = p.mt.min(blk.rows - mi * p.mt);
            for c0 in (0..grp.count).step_by(per_tr) {
                let cnt = per_tr.min(grp.count - c0);
                let tr_pool = self.tr.as_mut().ok_or_else(|| err("internal: no transpose pool"))?;
                let tr = tr_pool.next().reshape_free(&[per_tr, p.mt]);
                for j in 0..cnt {
                    let col = (c0 + j) * p.kt;
                    let src = raw.part(0..ms).cols(col..col + ks);
                    self.kb.transpose(Engine::Tensor, tr.part(0..ks).at(1, j).cols(0..ms), &src)?;
                }
                let slot = (grp.first + c0) % p.ring;
                let dst = self.ring.part(0..ks).slice(1, slot..slot + cnt).cols(mi * p.mt..mi * p.mt + ms);
                let src = tr.part(0..ks).slice(1, 0..cnt).cols(0..ms);
                self.bal.copy(self.kb, &dst, &src, 1.0)?;
            }
        }
        Ok(())
    }
}
