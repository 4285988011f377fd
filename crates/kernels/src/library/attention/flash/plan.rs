//! The per-core work list of `flash_attention` and its software-pipeline schedule.

use super::{Problem, LAG_B, LAG_C, LAG_D, LAG_E, LAG_F, LAG_G, LAG_H, N_KN, QB};

/// One 128-row query block of one head.
#[derive(Clone, Copy, Debug)]
pub(super) struct Row {
    pub(super) b: usize,
    pub(super) h: usize,
    pub(super) q0: usize,
    pub(super) qr: usize,
    /// Index into the core's head list.
    pub(super) head: usize,
    /// Its first block (global index on the core) and block count.
    pub(super) first: usize,
    pub(super) nblk: usize,
}

/// One kv head (of one batch) whose Kᵀ and [V | 1] are resident.
#[derive(Clone, Copy, Debug)]
pub(super) struct Head {
    pub(super) b: usize,
    pub(super) kv: usize,
    pub(super) first: usize,
    pub(super) last: usize,
    /// First Kᵀ preparation chunk (global index on the core).
    pub(super) chunk0: usize,
}

/// One (query block, key block) step.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block {
    pub(super) row: usize,
    pub(super) j: usize,
    pub(super) k0: usize,
    pub(super) kw: usize,
}

/// One 128-key block loaded and transposed into Kᵀ.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub(super) head: usize,
    pub(super) blk: usize,
    pub(super) tick: i64,
}

/// The work of one core.
pub(super) struct Plan {
    pub(super) rows: Vec<Row>,
    pub(super) heads: Vec<Head>,
    pub(super) blocks: Vec<Block>,
    pub(super) chunks: Vec<Chunk>,
}

impl Plan {
    /// Rows `(b, kv, g, qb)` in order, keeping those in `range`.
    pub(super) fn new(p: &Problem, range: std::ops::Range<usize>) -> Plan {
        let kb = p.kb();
        let group = p.h / p.kvh;
        let qblocks = p.s.div_ceil(QB);
        let mut plan = Plan { rows: Vec::new(), heads: Vec::new(), blocks: Vec::new(), chunks: Vec::new() };
        let mut index = 0usize;
        for b in 0..p.b {
            for kv in 0..p.kvh {
                for g in 0..group {
                    for qb in 0..qblocks {
                        let here = range.contains(&index);
                        index += 1;
                        if !here {
                            continue;
                        }
                        let new_head = plan.heads.last().is_none_or(|hd| (hd.b, hd.kv) != (b, kv));
                        if new_head {
                            let first = plan.blocks.len();
                            let chunk0 = plan.chunks.len();
                            plan.heads.push(Head { b, kv, first, last: first, chunk0 });
                            let head = plan.heads.len() - 1;
                            plan.chunks.extend((0..p.nkb()).map(|blk| Chunk { head, blk, tick: 0 }));
                        }
                        let q0 = qb * QB;
                        let qr = QB.min(p.s - q0);
                        let keys = if p.causal { q0 + qr } else { p.s };
                        let first = plan.blocks.len();
                        let row = plan.rows.len();
                        for (j, k0) in (0..keys).step_by(kb).enumerate() {
                            plan.blocks.push(Block { row, j, k0, kw: kb.min(keys - k0) });
                        }
                        let nblk = plan.blocks.len() - first;
                        let head = plan.heads.len() - 1;
                        plan.rows.push(Row { b, h: kv * group + g, q0, qr, head, first, nblk });
                        if let Some(hd) = plan.heads.last_mut() {
                            hd.last = plan.blocks.len() - 1;
                        }
                    }
                }
            }
        }
        plan
    }

    /// Spreads each head's Kᵀ chunks over the ticks before its first block,
    /// never before the last block of the head that used the same buffers.
    pub(super) fn schedule_chunks(&mut self, head_bufs: usize) {
        for (n, hd) in self.heads.iter().enumerate() {
            let lower = n.checked_sub(head_bufs).map(|m| self.heads[m].last as i64 + 1).unwrap_or(i64::MIN / 4);
            let count = self.heads.get(n + 1).map(|x| x.chunk0).unwrap_or(self.chunks.len()) - hd.chunk0;
            for g in 0..count {
                let ideal = hd.first as i64 - 2 * (count - g) as i64;
                self.chunks[hd.chunk0 + g].tick = ideal.max(lower).min(hd.first as i64);
            }
        }
    }
}

/// Work emitted at some tick of the pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) enum Task {
    Init,
    KLoad(usize),
    KPrep(usize),
    VLoad(usize),
    QLoad(usize),
    QPrep(usize),
    A(usize),
    B(usize),
    C(usize),
    D(usize),
    E(usize),
    F(usize),
    G1(usize),
    G2(usize),
    H(usize),
}

/// Emission order within a tick. Loads and preparations first; E before D
/// (D of the next block reuses the PSUM that E of this block reads), and the
/// PE runs F and A between them so the copies have time to drain; GpSimd's
/// rescale (G1) early so that Vector's add (G2) never waits on it.
pub(super) fn order(task: &Task) -> u8 {
    match task {
        Task::Init => 0,
        Task::VLoad(_) | Task::QLoad(_) => 1,
        Task::KLoad(_) | Task::KPrep(_) => 2,
        Task::QPrep(_) => 3,
        Task::G1(_) => 4,
        Task::H(_) => 5,
        Task::E(_) => 6,
        Task::F(_) => 7,
        Task::A(_) => 8,
        Task::B(_) => 9,
        Task::C(_) => 10,
        Task::D(_) => 11,
        Task::G2(_) => 12,
    }
}

/// The tasks of one core with their ticks, in emission order.
pub(super) fn schedule(plan: &Plan, head_bufs: usize) -> Vec<Task> {
    let mut tasks: Vec<(i64, u8, usize, Task)> = Vec::new();
    let mut push = |tick: i64, seq: usize, task: Task| tasks.push((tick, order(&task), seq, task));
    push(i64::MIN, 0, Task::Init);
    for (u, c) in plan.chunks.iter().enumerate() {
        // After the chunk that last used this staging buffer, ideally 3 ticks ahead.
        let after = u.checked_sub(N_KN).map(|w| plan.chunks[w].tick + 1).unwrap_or(i64::MIN / 4);
        let tick = (c.tick - 3).max(after).min(c.tick);
        push(tick, 2 * u, Task::KLoad(u));
        push(c.tick, 2 * u + 1, Task::KPrep(u));
    }
    for (n, hd) in plan.heads.iter().enumerate() {
        // After the last PV matmul of the head that used this buffer.
        let after = n.checked_sub(head_bufs).map(|m| plan.heads[m].last as i64 + LAG_F + 1).unwrap_or(i64::MIN / 4);
        let tick = (hd.first as i64 - 8).max(after).min(hd.first as i64 + LAG_F);
        push(tick, n, Task::VLoad(n));
    }
    // Qᵀ and Kᵀ transposes may share one PSUM buffer: keep them in different ticks.
    let chunk_ticks: std::collections::HashSet<i64> = plan.chunks.iter().map(|c| c.tick).collect();
    for (r, row) in plan.rows.iter().enumerate() {
        let first = row.first as i64;
        let last = (row.first + row.nblk - 1) as i64;
        let prep = if chunk_ticks.contains(&(first - 1)) { first - 2 } else { first - 1 };
        push(first - 4, r, Task::QLoad(r));
        push(prep, r, Task::QPrep(r));
        push(last + LAG_H, r, Task::H(r));
    }
    for t in 0..plan.blocks.len() {
        let tick = t as i64;
        for (lag, task) in [
            (0, Task::A(t)),
            (LAG_B, Task::B(t)),
            (LAG_C, Task::C(t)),
            (LAG_D, Task::D(t)),
            (LAG_E, Task::E(t)),
            (LAG_F, Task::F(t)),
            (LAG_G, Task::G1(t)),
            (LAG_G, Task::G2(t)),
        ] {
            push(tick + lag, t, task);
        }
    }
    tasks.sort_by_key(|&(tick, ord, seq, _)| (tick, ord, seq));
    tasks.into_iter().map(|(_, _, _, task)| task).collect()
}
