//! Kernels of the `collective` family: all-reduce, all-gather, reduce-scatter
//! and all-to-all as real programs over HBM tensors that live on several
//! cores and chips. Data between chips moves by DMA over the system's
//! modelled links ([`trainyard_arch::SystemLayout`]); the issuing core's DMA
//! engines do the work, so the per-core DMA rate, each chip's HBM and the
//! links all bound a collective's time.
//!
//! * [`all_reduce`] — reduce-scatter by direct pulls, each participant then
//!   pushing its total from SBUF to every other (in place).
//! * [`reduce_scatter`] — the first half alone.
//! * [`all_gather`] — a ring: each participant pulls the next segment from
//!   its ring predecessor, pipelined piece by piece.
//! * [`all_to_all`] — every participant pulls its chunk of every input.
//!
//! Reduce-scatter: participant `i` owns segment `i` (sizes differ by at most
//! one element, so any element count works) and sums it over every
//! participant's input: per piece of `[≤128, ≤512]`, one load per source into
//! SBUF and, for bf16/f16, a Tensor-engine matmul of each against the
//! identity accumulating in an f32 PSUM bank (exact), or for f32 a chain of
//! Vector adds into a PSUM accumulator; the total is rounded once to the
//! dtype. When the participants span several chips with the same number
//! (≥ 2) on each, the reduction is hierarchical: within each chip over HBM
//! into an f32 workspace, then across chips between counterparts, so each
//! element crosses the links once (as an f32 partial sum) instead of once
//! per participant; the all-reduce's totals go to each counterpart once and
//! are forwarded within its chip.
//!
//! Rings and pull orders follow the participants' chips along a
//! boustrophedon walk of the system's coordinates, then their cores, so ring
//! neighbours are one link apart on a torus and the pulls of one moment use
//! different links. Loads and stores use separate halves of a core's 16 DMA
//! queues, so a store waiting for its sum never holds up the next loads.

#[cfg(test)]
mod tests;

use trainyard_arch::{ChipSpec, DType, Topology};
use trainyard_isa::{ActFn, AluOp, Ap, Engine, TensorKind};

use super::{check_args, check_bindings, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::builder::{HbmTensor, KernelBuilder, TilePool};
use crate::error::BuildError;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(AllReduce), Box::new(AllGather), Box::new(ReduceScatter), Box::new(AllToAll)]
}

/// Free elements per partition of one piece: an f32 partial sum of
/// `[128, 512]` is one 2 KiB PSUM bank; a bf16 piece is 128 KiB, large
/// enough that per-transfer costs are small.
const PIECE_COLS: usize = 512;
/// Buffers per SBUF pool of sums: the add of the next piece overlaps the store of this one.
const BUFS: usize = 3;
/// Buffers per SBUF pool of loaded sources: loads run ahead of the chain of adds.
const INPUT_BUFS: usize = 16;
/// PSUM buffers of partial sums: one piece's chain runs while the next starts.
const PSUM_BUFS: usize = 2;
/// HBM→HBM copies are cut into at least this many pieces: one contiguous
/// piece is one descriptor, served by one DMA engine (HW-DMA-STRUCT), so a
/// core needs 16 in flight to use its 16 engines.
const MIN_COPY_PIECES: usize = 16;
/// Largest HBM→HBM copy piece, bytes (pipelining granularity of all-gather).
const MAX_COPY_PIECE: usize = 256 * 1024;
/// Smallest HBM→HBM copy piece, bytes.
const MIN_COPY_PIECE: usize = 2048;

fn err(kernel: &str, message: String) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message }
}

/// The participants of one collective: who they are and in which ring order.
struct Group {
    kernel: &'static str,
    cores: Vec<u16>,
    /// Ring position → participant index.
    order: Vec<usize>,
    dtype: DType,
}

impl Group {
    /// Checks `cores` (distinct, existing, one per tensor) and that `tensors[i]`
    /// lives in the HBM of `cores[i]`'s chip with one shape and dtype.
    fn new(
        kernel: &'static str,
        kb: &KernelBuilder,
        tensors: &[HbmTensor],
        cores: &[u16],
    ) -> Result<Group, BuildError> {
        let chip = kb.chip();
        if cores.is_empty() || cores.len() != tensors.len() {
            return Err(err(
                kernel,
                format!("{} tensors but {} cores: one tensor per core", tensors.len(), cores.len()),
            ));
        }
        let total = chip.total_cores();
        for (i, &c) in cores.iter().enumerate() {
            if c as u32 >= total {
                return Err(err(kernel, format!("core {c} does not exist ({total} cores over all chips)")));
            }
            if cores[..i].contains(&c) {
                return Err(err(kernel, format!("core {c} is listed twice")));
            }
        }
        let first = &tensors[0];
        let dtype = first.dtype();
        if !matches!(dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return Err(err(kernel, format!("dtype {dtype} is not supported (f32, bf16, f16)")));
        }
        for (t, &c) in tensors.iter().zip(cores) {
            if t.dtype() != dtype {
                return Err(err(
                    kernel,
                    format!("tensor `{}` is {} but `{}` is {}", t.name(), t.dtype(), first.name(), dtype),
                ));
            }
            let home = chip.chip_of_core(c as u32);
            if chip.chip_of_hbm(t.offset()) != Some(home) {
                return Err(err(
                    kernel,
                    format!(
                        "tensor `{}` is not in the HBM of chip {home}, where its core {c} is (declare it with hbm_*_on({home}, ..))",
                        t.name()
                    ),
                ));
            }
        }
        let mut order: Vec<usize> = (0..cores.len()).collect();
        order.sort_by_key(|&i| (ring_rank(chip, chip.chip_of_core(cores[i] as u32)), cores[i]));
        Ok(Group { kernel, cores: cores.to_vec(), order, dtype })
    }

    fn n(&self) -> usize {
        self.cores.len()
    }

    /// The participant at ring position `p` (wrapping).
    fn at(&self, p: usize) -> usize {
        self.order[p % self.n()]
    }

    /// The segment handled under ring label `r`: labels are chosen so that
    /// the participant at position `p` starts the ring all-gather holding its
    /// own segment (`at(p)`), which it owns under label `p + 1`.
    fn segment(&self, r: usize) -> usize {
        self.at(r + self.n() - 1)
    }

    fn same_shape(&self, what: &str, tensors: &[HbmTensor], shape: &[usize]) -> Result<(), BuildError> {
        match tensors.iter().find(|t| t.shape() != shape || t.dtype() != self.dtype) {
            Some(t) => Err(err(
                self.kernel,
                format!("{what} `{}` is {}{:?}, expected {}{shape:?}", t.name(), t.dtype(), t.shape(), self.dtype),
            )),
            None => Ok(()),
        }
    }
}

/// Rank of `chip` on a walk of the system that moves one link at a time: a
/// boustrophedon (every odd slice of a dimension walks the inner dimensions
/// backwards), a snake through a 2-D torus closed by a wrap-around link.
fn ring_rank(chip: &ChipSpec, c: u32) -> u64 {
    let Some(s) = chip.system.as_ref() else { return 0 };
    if s.spec.topology == Topology::Switch {
        return c as u64;
    }
    let (mut rank, mut size) = (0u64, 1u64);
    for (&x, &n) in s.coords(c).iter().zip(&s.spec.shape).rev() {
        let inner = if x % 2 == 1 { size - 1 - rank } else { rank };
        rank = x as u64 * size + inner;
        size *= n as u64;
    }
    rank
}

/// Element bounds of `n` segments of `len` elements whose sizes differ by at most one.
fn bounds(len: usize, n: usize) -> Vec<usize> {
    (0..=n).map(|s| s * (len / n) + s.min(len % n)).collect()
}

/// Cuts `len` contiguous elements into `(start, rows, cols)` pieces with
/// rows ≤ 128 and cols ≤ `cols`: full `[128, cols]` blocks, then one block
/// of as many full rows as fit, then a one-row tail.
fn pieces(len: usize, parts: usize, cols: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    let block = parts * cols;
    while len - at >= block {
        out.push((at, parts, cols));
        at += block;
    }
    let rest = len - at;
    if rest > 0 {
        let q = rest.div_ceil(parts).min(cols);
        let p = rest / q;
        out.push((at, p, q));
        at += p * q;
        if len > at {
            out.push((at, 1, len - at));
        }
    }
    out
}

/// A contiguous `[rows, cols]` HBM pattern starting at byte `offset`.
fn hbm(offset: u64, rows: usize, cols: usize, dtype: DType) -> Ap {
    Ap::hbm(offset, rows as u32, &[cols as u32], dtype)
}

/// Which DMA queues a transfer goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Loads of sources: the first half of the queues.
    Load,
    /// Stores of totals (which wait for their adds) and HBM→HBM copies: the
    /// second half, so that a store never holds up the next piece's loads
    /// in an in-order queue.
    Store,
}

/// Round-robin DMA queues per core and lane: collectives spread transfers
/// over every queue so that up to 16 are in flight per core.
struct QueueTurns {
    queues: usize,
    turn: Vec<[usize; 2]>,
}

impl QueueTurns {
    fn new(chip: &ChipSpec) -> Self {
        QueueTurns {
            queues: chip.core.dma.queues.clamp(1, 256) as usize,
            turn: vec![[0; 2]; chip.total_cores() as usize],
        }
    }

    fn next(&mut self, core: u16, lane: Lane) -> u8 {
        let half = (self.queues / 2).max(1);
        let (base, count) = match lane {
            Lane::Load => (0, half),
            Lane::Store => (self.queues - half, half),
        };
        let t = self.turn.get_mut(core as usize).map_or(0, |t| {
            let slot = &mut t[lane as usize];
            *slot += 1;
            *slot - 1
        });
        (base + t % count) as u8
    }
}

/// Runs `body` with the core window cleared (collectives name absolute
/// cores), restoring the caller's window and core afterwards, error or not.
fn absolute<T>(
    kb: &mut KernelBuilder,
    body: impl FnOnce(&mut KernelBuilder) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let saved = kb.save_cores();
    kb.clear_core_window();
    let out = body(kb);
    kb.restore_cores(saved);
    out
}

/// What a pool of SBUF pieces holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// A loaded source.
    Input,
    /// A partial sum (f32, in PSUM: an add reading one input from PSUM and the
    /// other from SBUF costs N cycles instead of 2N, HW-COST-TTENSOR).
    Partial,
    /// The last sum, in the destination's dtype.
    Total,
}

/// SBUF pools per core, slot and dtype, and identity matrices per core and
/// dtype, made on first use.
#[derive(Default)]
struct Pools {
    pools: Vec<(u16, Slot, DType, TilePool)>,
    identities: Vec<(u16, DType, crate::builder::Tile)>,
}

impl Pools {
    /// The next `[rows, cols]` buffer of `core`'s pool for `slot` and `dtype`
    /// (the builder must be on `core`).
    fn next(
        &mut self,
        kb: &mut KernelBuilder,
        core: u16,
        slot: Slot,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<crate::view::View, BuildError> {
        let k = match self.pools.iter().position(|(c, s, d, _)| (*c, *s, *d) == (core, slot, dtype)) {
            Some(k) => k,
            None => {
                let parts = kb.chip().core.sbuf.partitions as usize;
                let pool = match slot {
                    Slot::Input => kb.sbuf_pool(&[parts, PIECE_COLS], dtype, INPUT_BUFS)?,
                    Slot::Partial => kb.psum_pool(&[parts, PIECE_COLS], dtype, PSUM_BUFS)?,
                    Slot::Total => kb.sbuf_pool(&[parts, PIECE_COLS], dtype, BUFS)?,
                };
                self.pools.push((core, slot, dtype, pool));
                self.pools.len() - 1
            }
        };
        Ok(self.pools[k].3.next().part(0..rows).cols(0..cols))
    }

    /// A `[rows, rows]` identity in `dtype` on `core` (the builder must be on
    /// `core`): the Tensor engine sums sources as `I · x` into PSUM.
    fn identity(
        &mut self,
        kb: &mut KernelBuilder,
        core: u16,
        dtype: DType,
        rows: usize,
    ) -> Result<crate::view::View, BuildError> {
        if let Some((_, _, t)) = self.identities.iter().find(|(c, d, _)| (*c, *d) == (core, dtype)) {
            return Ok(t.part(0..rows).cols(0..rows));
        }
        let parts = kb.chip().core.sbuf.partitions as usize;
        let offsets = kb.sbuf_tile(&[parts, parts], DType::I32)?;
        let ident = kb.sbuf_tile(&[parts, parts], dtype);
        let made = ident.and_then(|ident| {
            // offsets[p, i] = i - p; the identity is where it is 0.
            kb.iota(&offsets, 0, -1, &[1])?;
            kb.tensor_scalar(Engine::Vector, &ident, &offsets, crate::Stage::new(AluOp::Eq, 0.0), None)?;
            Ok(ident)
        });
        kb.free(offsets)?;
        let ident = made?;
        let view = ident.part(0..rows).cols(0..rows);
        self.identities.push((core, dtype, ident));
        Ok(view)
    }

    fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        for (core, _, _, pool) in self.pools {
            kb.core(core)?;
            kb.free_pool(pool)?;
        }
        for (core, _, tile) in self.identities {
            kb.core(core)?;
            kb.free(tile)?;
        }
        Ok(())
    }
}

/// One reduction: the f32 sum of `sources` (`len` contiguous elements each,
/// at a byte address, in a dtype), rounded once to the dtype of `dst` and
/// stored there and at every address of `copies` (pushed from SBUF, so the
/// copies cost no HBM read).
struct ReduceJob {
    core: u16,
    len: usize,
    sources: Vec<(u64, DType)>,
    dst: (u64, DType),
    copies: Vec<u64>,
}

/// Emits `jobs` in order: per piece, one load per source into SBUF, a chain
/// of Vector-engine adds into an f32 PSUM accumulator (the first add sums
/// two sources, the last writes the rounded total to SBUF), and the stores.
/// Returns the adds performed.
fn run_reduce_jobs(kb: &mut KernelBuilder, jobs: &[ReduceJob], queues: &mut QueueTurns) -> Result<u64, BuildError> {
    let mut pools = Pools::default();
    let out = emit_reduce_jobs(kb, jobs, queues, &mut pools);
    pools.free(kb)?;
    out
}

/// The add chain of one piece being built.
struct Chain {
    at: usize,
    rows: usize,
    cols: usize,
    first: Option<crate::view::View>,
    acc: Option<crate::view::View>,
}

fn emit_reduce_jobs(
    kb: &mut KernelBuilder,
    jobs: &[ReduceJob],
    queues: &mut QueueTurns,
    pools: &mut Pools,
) -> Result<u64, BuildError> {
    let parts = kb.chip().core.sbuf.partitions as usize;
    let mut adds = 0u64;
    for job in jobs.iter().filter(|j| j.len > 0 && !j.sources.is_empty()) {
        let core = job.core;
        kb.core(core)?;
        let (dst, dst_dtype) = job.dst;
        if let [(src, dtype)] = job.sources[..] {
            for to in std::iter::once(dst).chain(job.copies.iter().copied()) {
                copy_pieces(kb, queues, core, to, src, job.len, (dtype, dst_dtype), Lane::Store)?;
            }
            continue;
        }
        let last = job.sources.len() - 1;
        let dtype = job.sources[0].1;
        if matches!(dtype, DType::Bf16 | DType::F16) && job.sources.iter().all(|s| s.1 == dtype) {
            adds += emit_tensor_sum(kb, job, queues, pools)?;
            continue;
        }
        // Two pieces' chains in lockstep: consecutive adds on the Vector engine
        // then never read what the one before wrote (no same-engine RAW
        // penalty, HW-DEF-DEP), and each pool buffer's reader is emitted
        // before the buffer is loaded again.
        for pair in pieces(job.len, parts, PIECE_COLS).chunks(2) {
            let mut chains: Vec<Chain> =
                pair.iter().map(|&(at, rows, cols)| Chain { at, rows, cols, first: None, acc: None }).collect();
            for (k, &(src, dtype)) in job.sources.iter().enumerate() {
                let mut tiles = Vec::with_capacity(chains.len());
                for c in &chains {
                    let tile = pools.next(kb, core, Slot::Input, dtype, c.rows, c.cols)?;
                    let from = hbm(src + (c.at * dtype.size()) as u64, c.rows, c.cols, dtype);
                    kb.dma_on(queues.next(core, Lane::Load), &tile, from)?;
                    tiles.push(tile);
                }
                for (c, tile) in chains.iter_mut().zip(tiles) {
                    let Some(prev) = c.acc.take().or_else(|| c.first.take()) else {
                        c.first = Some(tile);
                        continue;
                    };
                    let into = match (k == last, prev.space()) {
                        (true, _) => pools.next(kb, core, Slot::Total, dst_dtype, c.rows, c.cols)?,
                        (false, trainyard_isa::Space::Psum) => prev.clone(),
                        (false, _) => pools.next(kb, core, Slot::Partial, DType::F32, c.rows, c.cols)?,
                    };
                    kb.tensor_tensor(Engine::Vector, AluOp::Add, &into, &prev, &tile)?;
                    adds += (c.rows * c.cols) as u64;
                    c.acc = Some(into);
                }
            }
            for c in &chains {
                let Some(total) = &c.acc else { continue };
                for to in std::iter::once(dst).chain(job.copies.iter().copied()) {
                    let to = hbm(to + (c.at * dst_dtype.size()) as u64, c.rows, c.cols, dst_dtype);
                    kb.dma_on(queues.next(core, Lane::Store), to, total)?;
                }
            }
        }
    }
    Ok(adds)
}

/// One 16-bit reduction on the Tensor engine: every source piece is the
/// moving operand of a matmul against the identity, accumulating in f32 in
/// one PSUM bank (exact: each product is `x · 1`), and the Scalar engine
/// copies the total out of PSUM (an identity activation), rounding once. A `[128, 512]` matmul takes
/// 512 PE cycles (HW-PE-MM-II) against 512 Vector cycles for an add, at 2.5×
/// the clock, and leaves the Vector engine free.
fn emit_tensor_sum(
    kb: &mut KernelBuilder,
    job: &ReduceJob,
    queues: &mut QueueTurns,
    pools: &mut Pools,
) -> Result<u64, BuildError> {
    let (core, parts) = (job.core, kb.chip().core.sbuf.partitions as usize);
    let (dst, dst_dtype) = job.dst;
    let last = job.sources.len() - 1;
    let mut adds = 0u64;
    for (at, rows, cols) in pieces(job.len, parts, PIECE_COLS) {
        let ident = pools.identity(kb, core, job.sources[0].1, rows)?;
        let acc = pools.next(kb, core, Slot::Partial, DType::F32, rows, cols)?;
        for (k, &(src, dtype)) in job.sources.iter().enumerate() {
            let tile = pools.next(kb, core, Slot::Input, dtype, rows, cols)?;
            let from = hbm(src + (at * dtype.size()) as u64, rows, cols, dtype);
            kb.dma_on(queues.next(core, Lane::Load), &tile, from)?;
            kb.matmul(&acc, &ident, &tile, k == 0, k == last)?;
        }
        adds += (rows * cols * last) as u64;
        let total = pools.next(kb, core, Slot::Total, dst_dtype, rows, cols)?;
        kb.activation(ActFn::Identity, &total, &acc, 1.0, None, None)?;
        for to in std::iter::once(dst).chain(job.copies.iter().copied()) {
            let to = hbm(to + (at * dst_dtype.size()) as u64, rows, cols, dst_dtype);
            kb.dma_on(queues.next(core, Lane::Store), to, &total)?;
        }
    }
    Ok(adds)
}

/// Reduce-scatter as direct pulls: participant `i` ends having stored the
/// sum over all participants of elements `ranges[i]` at `total(i, ..)`,
/// reading element `a` of participant `j` at `input(j, a)`. With
/// `broadcast`, every participant also ends with every other's total at
/// `total(j, ..)` (the all-gather half of an all-reduce, pushed from SBUF).
///
/// When the participants span several chips with the same number (≥ 2) on
/// each, the reduction is hierarchical so that each element crosses the
/// links once instead of once per participant: first every participant
/// sums, over its own chip's participants (through HBM), the ranges of its
/// counterparts (same place in their chips' order) on every chip, into an
/// f32 workspace; then it sums its own range over its counterparts'
/// workspaces across the chips, and (broadcast) pushes the total to its
/// chip's participants and to its counterparts, which forward it to theirs.
/// Otherwise each participant pulls its range from every participant
/// directly, starting with its ring successors so that the pulls of one
/// moment use different links, and pushes the total to every participant.
fn reduce_scatter_direct(
    kb: &mut KernelBuilder,
    g: &Group,
    ranges: &[(usize, usize)],
    input: &dyn Fn(usize, usize) -> u64,
    total: &dyn Fn(usize, usize) -> u64,
    broadcast: bool,
    queues: &mut QueueTurns,
) -> Result<u64, BuildError> {
    let n = g.n();
    let dtype = g.dtype;
    let chip = kb.chip().clone();
    // Participants per chip, in ring order.
    let mut by_chip: Vec<(u32, Vec<usize>)> = Vec::new();
    for p in 0..n {
        let i = g.at(p);
        let c = chip.chip_of_core(g.cores[i] as u32);
        match by_chip.iter_mut().find(|(k, _)| *k == c) {
            Some((_, members)) => members.push(i),
            None => by_chip.push((c, vec![i])),
        }
    }
    let m = by_chip[0].1.len();
    let hierarchical = by_chip.len() > 1 && m > 1 && by_chip.iter().all(|(_, v)| v.len() == m);
    let mut position = vec![0; n];
    for p in 0..n {
        position[g.at(p)] = p;
    }
    if !hierarchical {
        let jobs: Vec<ReduceJob> = (0..n)
            .map(|i| {
                let (lo, hi) = ranges[i];
                let sources = (0..n).map(|d| (input(g.at(position[i] + d), lo), dtype)).collect();
                let copies = match broadcast {
                    true => (1..n).map(|d| total(g.at(position[i] + d), lo)).collect(),
                    false => Vec::new(),
                };
                ReduceJob { core: g.cores[i], len: hi - lo, sources, dst: (total(i, lo), dtype), copies }
            })
            .collect();
        return run_reduce_jobs(kb, &jobs, queues);
    }
    let c = by_chip.len();
    let len = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let mut ws = vec![0u64; n];
    for (on, members) in &by_chip {
        for &i in members {
            let key = format!("collective.core{}", g.cores[i]);
            ws[i] = kb.hbm_workspace(*on, &key, len as u64 * 4)?.offset();
        }
    }
    // The participant at place `l` of the `dk`-th chip after chip `k`.
    let member = |k: usize, dk: usize, l: usize| by_chip[(k + dk) % c].1[l % m];
    let mut jobs = Vec::new();
    for (k, (_, members)) in by_chip.iter().enumerate() {
        for (l, &i) in members.iter().enumerate() {
            // Ranges other chips wait for first, this participant's own last.
            for dk in (1..c).chain([0]) {
                let (lo, hi) = ranges[member(k, dk, l)];
                let sources = (0..m).map(|d| (input(member(k, 0, l + d), lo), dtype)).collect();
                let dst = (ws[i] + lo as u64 * 4, DType::F32);
                jobs.push(ReduceJob { core: g.cores[i], len: hi - lo, sources, dst, copies: Vec::new() });
            }
        }
    }
    let mut adds = run_reduce_jobs(kb, &jobs, queues)?;
    let mut jobs = Vec::new();
    for (k, (_, members)) in by_chip.iter().enumerate() {
        for (l, &i) in members.iter().enumerate() {
            let (lo, hi) = ranges[i];
            let sources = (0..c).map(|dk| (ws[member(k, dk, l)] + lo as u64 * 4, DType::F32)).collect();
            let mut copies = Vec::new();
            if broadcast {
                copies.extend((1..m).map(|d| total(member(k, 0, l + d), lo)));
                copies.extend((1..c).map(|dk| total(member(k, dk, l), lo)));
            }
            jobs.push(ReduceJob { core: g.cores[i], len: hi - lo, sources, dst: (total(i, lo), dtype), copies });
        }
    }
    adds += run_reduce_jobs(kb, &jobs, queues)?;
    if broadcast {
        // Each counterpart forwards what it received to its chip's other
        // participants, on the load queues (idle by now) so that the copies
        // start as the pushes land instead of after this core's own stores.
        for (k, (_, members)) in by_chip.iter().enumerate() {
            for (l, &i) in members.iter().enumerate() {
                kb.core(g.cores[i])?;
                for dk in 1..c {
                    let (lo, hi) = ranges[member(k, dk, l)];
                    for d in 1..m {
                        let (to, from) = (total(member(k, 0, l + d), lo), total(i, lo));
                        copy_pieces(kb, queues, g.cores[i], to, from, hi - lo, (dtype, dtype), Lane::Load)?;
                    }
                }
            }
        }
    }
    Ok(adds)
}

/// Copies `len` elements from byte `src` to byte `dst` in HBM on `core`'s DMA
/// queues, cut into pieces so that several engines work at once: at least
/// [`MIN_COPY_PIECES`] (more when pieces would exceed [`MAX_COPY_PIECE`]
/// bytes), but none under [`MIN_COPY_PIECE`] bytes.
#[allow(clippy::too_many_arguments)]
fn copy_pieces(
    kb: &mut KernelBuilder,
    queues: &mut QueueTurns,
    core: u16,
    dst: u64,
    src: u64,
    len: usize,
    (dtype, dst_dtype): (DType, DType),
    lane: Lane,
) -> Result<(), BuildError> {
    let (es, ed) = (dtype.size(), dst_dtype.size());
    let bytes = len * es.max(ed);
    let wanted = MIN_COPY_PIECES.max(bytes.div_ceil(MAX_COPY_PIECE));
    let count = wanted.min(bytes.div_ceil(MIN_COPY_PIECE)).clamp(1, len.max(1));
    for (a, b) in (0..count).map(|i| (i * len / count, (i + 1) * len / count)).filter(|(a, b)| b > a) {
        let (d, s) = (dst + (a * ed) as u64, src + (a * es) as u64);
        kb.dma_on(queues.next(core, lane), hbm(d, 1, b - a, dst_dtype), hbm(s, 1, b - a, dtype))?;
    }
    Ok(())
}

/// Ring all-gather: participant at ring position `p` starts with segment
/// `at(p)` and pulls the others from its predecessor; `src(i, seg, a)` is
/// where participant `i` holds element `a` of segment `seg`, `dst(i, a)`
/// where it stores it.
fn ring_all_gather(
    kb: &mut KernelBuilder,
    g: &Group,
    bounds: &[usize],
    src: &dyn Fn(usize, usize, usize) -> u64,
    dst: &dyn Fn(usize, usize) -> u64,
    queues: &mut QueueTurns,
) -> Result<(), BuildError> {
    let n = g.n();
    for k in 0..n - 1 {
        for p in 0..n {
            let (me, prev) = (g.at(p), g.at(p + n - 1));
            let seg = g.segment(p + n - k);
            let a = bounds[seg];
            let core = g.cores[me];
            kb.core(core)?;
            copy_pieces(
                kb,
                queues,
                core,
                dst(me, a),
                src(prev, seg, a),
                bounds[seg + 1] - a,
                (g.dtype, g.dtype),
                Lane::Store,
            )?;
        }
    }
    Ok(())
}

fn elements(t: &HbmTensor) -> usize {
    t.shape().iter().product()
}

/// In-place sum: after it, every `parts[i]` holds the elementwise sum of all
/// parts. `parts[i]` lives in the HBM of the chip of `cores[i]`; `cores[i]`
/// issues its share of the work. Cores are absolute (the core window is
/// ignored and restored). Ring reduce-scatter, then ring all-gather; f32
/// accumulation, one rounding per element for bf16/f16.
pub fn all_reduce(kb: &mut KernelBuilder, parts: &[HbmTensor], cores: &[u16]) -> Result<Cost, BuildError> {
    all_reduce_into(kb, "all_reduce", parts, parts, cores)
}

/// `outputs[i] = Σ inputs` (the in-place [`all_reduce`] when they are the same tensors).
fn all_reduce_into(
    kb: &mut KernelBuilder,
    kernel: &'static str,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new(kernel, kb, inputs, cores)?;
    let shape = inputs[0].shape().to_vec();
    g.same_shape("tensor", inputs, &shape)?;
    Group::new(kernel, kb, outputs, cores)?.same_shape("output", outputs, &shape)?;
    let (n, len, dtype) = (g.n(), elements(&inputs[0]), g.dtype);
    let es = dtype.size() as u64;
    let bounds = bounds(len, n);
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        let input = |i: usize, a: usize| inputs[i].offset() + a as u64 * es;
        let output = |i: usize, a: usize| outputs[i].offset() + a as u64 * es;
        let ranges: Vec<(usize, usize)> = (0..n).map(|i| (bounds[i], bounds[i + 1])).collect();
        let adds = reduce_scatter_direct(kb, &g, &ranges, &input, &output, true, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: adds, bytes_hbm: 2 * bytes, peak_dtype: None })
    })
}

/// `outputs[i]` = concatenation over `j` of `inputs[j]` along the outermost
/// axis (ring all-gather; each participant first copies its own input into
/// place).
pub fn all_gather(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("all_gather", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    let mut out_shape = shape.clone();
    out_shape[0] *= n;
    Group::new("all_gather", kb, outputs, cores)?.same_shape("output", outputs, &out_shape)?;
    let (len, es) = (elements(&inputs[0]), g.dtype.size() as u64);
    let bounds: Vec<usize> = (0..=n).map(|s| s * len).collect();
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        let input = |i: usize, a: usize| inputs[i].offset() + (a - bounds[i]) as u64 * es;
        let output = |i: usize, a: usize| outputs[i].offset() + a as u64 * es;
        for i in 0..n {
            kb.core(cores[i])?;
            copy_pieces(
                kb,
                &mut queues,
                cores[i],
                output(i, bounds[i]),
                input(i, bounds[i]),
                len,
                (g.dtype, g.dtype),
                Lane::Load,
            )?;
        }
        // A participant's own segment is read from its input, so the first
        // ring step need not wait for the local copy.
        let src = |i: usize, seg: usize, a: usize| if seg == i { input(i, a) } else { output(i, a) };
        ring_all_gather(kb, &g, &bounds, &src, &output, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: 0, bytes_hbm: bytes + bytes * n as u64, peak_dtype: None })
    })
}

/// `outputs[i]` = chunk `i` (of `n` equal chunks along the outermost axis) of
/// the sum of all `inputs` (ring reduce-scatter; f32 accumulation).
pub fn reduce_scatter(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("reduce_scatter", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    if !shape[0].is_multiple_of(n) {
        return Err(err(
            "reduce_scatter",
            format!("the outermost axis ({}) does not split into {n} equal chunks", shape[0]),
        ));
    }
    let mut out_shape = shape.clone();
    out_shape[0] /= n;
    Group::new("reduce_scatter", kb, outputs, cores)?.same_shape("output", outputs, &out_shape)?;
    let (len, dtype) = (elements(&inputs[0]), g.dtype);
    let es = dtype.size() as u64;
    let chunk = len / n;
    let bounds: Vec<usize> = (0..=n).map(|s| s * chunk).collect();
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        let input = |i: usize, a: usize| inputs[i].offset() + a as u64 * es;
        let total = |i: usize, a: usize| outputs[i].offset() + (a - bounds[i]) as u64 * es;
        let ranges: Vec<(usize, usize)> = (0..n).map(|i| (bounds[i], bounds[i + 1])).collect();
        let adds = reduce_scatter_direct(kb, &g, &ranges, &input, &total, false, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: adds, bytes_hbm: bytes + bytes / n as u64, peak_dtype: None })
    })
}

/// Chunk `j` (of `n` equal chunks along the outermost axis) of `inputs[i]`
/// goes to chunk `i` of `outputs[j]`: every participant pulls its chunk of
/// every input, starting with its ring successor's so that the pulls of one
/// round use different links.
pub fn all_to_all(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("all_to_all", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    if !shape[0].is_multiple_of(n) {
        return Err(err(
            "all_to_all",
            format!("the outermost axis ({}) does not split into {n} equal chunks", shape[0]),
        ));
    }
    Group::new("all_to_all", kb, outputs, cores)?.same_shape("output", outputs, &shape)?;
    let (len, es) = (elements(&inputs[0]), g.dtype.size() as u64);
    let chunk = len / n;
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        for round in 0..n {
            for p in 0..n {
                let (j, i) = (g.at(p), g.at(p + round));
                kb.core(cores[j])?;
                let dst = outputs[j].offset() + (i * chunk) as u64 * es;
                let src = inputs[i].offset() + (j * chunk) as u64 * es;
                copy_pieces(kb, &mut queues, cores[j], dst, src, chunk, (g.dtype, g.dtype), Lane::Store)?;
            }
        }
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: 0, bytes_hbm: 2 * bytes, peak_dtype: None })
    })
}

// ---------------------------------------------------------------------------
// The registered kernels.

/// The participants of a standalone collective: `cores` spread evenly over
/// the chips of the system, the first `cores / chips` cores of each chip.
pub fn spread_cores(chip: &ChipSpec, kernel: &str, cores: u16) -> Result<Vec<u16>, BuildError> {
    let chips = chip.chips();
    let per_chip = chip.chip.cores;
    if !(cores as u32).is_multiple_of(chips) || (cores as u32) < chips || cores as u32 / chips > per_chip {
        return Err(err(
            kernel,
            format!(
                "--cores {cores} must be a multiple of --chips {chips} with at most {per_chip} cores per chip \
                 (participants are spread evenly over the chips)"
            ),
        ));
    }
    let per = cores as u32 / chips;
    Ok((0..chips).flat_map(|c| (0..per).map(move |k| (c * per_chip + k) as u16)).collect())
}

/// Which collective a registered kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    AllReduce,
    AllGather,
    ReduceScatter,
    AllToAll,
}

/// Message size and bus-bandwidth factor of a collective (NCCL's conventions):
/// algorithm bandwidth = `bytes` / time, bus bandwidth = that × `bus_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CollectiveSize {
    /// Bytes of the message: the buffer (all-reduce), the whole output
    /// (all-gather) or the whole input (reduce-scatter, all-to-all) of one participant.
    pub bytes: u64,
    /// `2(n-1)/n` for all-reduce, `(n-1)/n` for the others.
    pub bus_factor: f64,
    /// Participants.
    pub participants: usize,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::AllReduce => "all_reduce",
            Which::AllGather => "all_gather",
            Which::ReduceScatter => "reduce_scatter",
            Which::AllToAll => "all_to_all",
        }
    }

    /// Input and output shapes per participant for shape `s` and `n` participants.
    fn shapes(self, s: &[usize], n: usize) -> Result<(Vec<usize>, Vec<usize>), BuildError> {
        if s.is_empty() || s.contains(&0) {
            return Err(err(self.name(), format!("shape must be positive sizes, got {s:?}")));
        }
        let mut out = s.to_vec();
        match self {
            Which::AllReduce => {}
            Which::AllGather => out[0] *= n,
            Which::ReduceScatter | Which::AllToAll if !s[0].is_multiple_of(n) => {
                return Err(err(
                    self.name(),
                    format!("the outermost axis of {s:?} does not split into {n} equal chunks"),
                ))
            }
            Which::ReduceScatter => out[0] /= n,
            Which::AllToAll => {}
        }
        Ok((s.to_vec(), out))
    }

    fn emit(self, kb: &mut KernelBuilder, x: &[HbmTensor], y: &[HbmTensor], cores: &[u16]) -> Result<Cost, BuildError> {
        match self {
            Which::AllReduce => all_reduce_into(kb, "all_reduce", x, y, cores),
            Which::AllGather => all_gather(kb, x, y, cores),
            Which::ReduceScatter => reduce_scatter(kb, x, y, cores),
            Which::AllToAll => all_to_all(kb, x, y, cores),
        }
    }

    /// Host reference: `y{i}` from the `x{j}` in f64.
    fn reference(self, xs: &[Vec<f64>], n: usize) -> Vec<Vec<f64>> {
        let len = xs.first().map_or(0, Vec::len);
        let sum: Vec<f64> = (0..len).map(|e| xs.iter().map(|x| x[e]).sum()).collect();
        match self {
            Which::AllReduce => vec![sum; n],
            Which::AllGather => vec![xs.concat(); n],
            Which::ReduceScatter => sum.chunks(len / n.max(1)).map(<[f64]>::to_vec).collect(),
            Which::AllToAll => {
                (0..n).map(|j| (0..n).flat_map(|i| xs[i][j * len / n..(j + 1) * len / n].to_vec()).collect()).collect()
            }
        }
    }
}

macro_rules! collective_kernel {
    ($ty:ident, $which:expr, $summary:literal) => {
        #[doc = $summary]
        pub struct $ty;

        impl Kernel for $ty {
            fn name(&self) -> &'static str {
                $which.name()
            }
            fn family(&self) -> &'static str {
                "collective"
            }
            fn summary(&self) -> &'static str {
                $summary
            }
            fn shape_help(&self) -> &'static str {
                "per-participant input shape (participants = --cores, spread evenly over --chips)"
            }
            fn default_shape(&self) -> Vec<usize> {
                vec![4096, 256]
            }
            fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
                check_args(self, chip, args)?;
                let n = spread_cores(chip, self.name(), args.cores)?.len();
                let (xs, ys) = $which.shapes(&args.shape, n)?;
                let sig = |name: String, kind, shape: &[usize]| TensorSig {
                    name,
                    kind,
                    shape: shape.to_vec(),
                    dtype: args.dtype,
                };
                let mut sigs: Vec<TensorSig> = (0..n).map(|i| sig(format!("x{i}"), TensorKind::Input, &xs)).collect();
                sigs.extend((0..n).map(|i| sig(format!("y{i}"), TensorKind::Output, &ys)));
                Ok(sigs)
            }
            /// Runs over the tensors bound to `x{i}` / `y{i}` with participants
            /// spread over the chips ([`spread_cores`]): tensor `i` must be in
            /// the HBM of participant `i`'s chip.
            fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
                check_bindings(self, kb.chip(), args, io)?;
                let cores = spread_cores(kb.chip(), self.name(), args.cores)?;
                let get = |name: String| super::bound(self.name(), io, &name).cloned();
                let x = (0..cores.len()).map(|i| get(format!("x{i}"))).collect::<Result<Vec<_>, _>>()?;
                let y = (0..cores.len()).map(|i| get(format!("y{i}"))).collect::<Result<Vec<_>, _>>()?;
                $which.emit(kb, &x, &y, &cores)
            }
            fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
                build_standalone(self, $which, chip, args)
            }
            fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
                let n = inputs.keys().filter(|k| k.starts_with('x')).count();
                let xs = (0..n)
                    .map(|i| inputs.get(&format!("x{i}")).map(|(_, v)| v.clone()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err(self.name(), "reference: inputs must be x0..x{n-1}".into()))?;
                let (_, ys) = $which.shapes(&args.shape, n)?;
                Ok($which
                    .reference(&xs, n)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("y{i}"), (ys.clone(), v)))
                    .collect())
            }
            fn collective_size(&self, args: &KernelArgs) -> Option<CollectiveSize> {
                let n = args.cores.max(1) as usize;
                let input: usize = args.shape.iter().product::<usize>() * args.dtype.size();
                let nf = n as f64;
                Some(match $which {
                    Which::AllReduce => {
                        CollectiveSize { bytes: input as u64, bus_factor: 2.0 * (nf - 1.0) / nf, participants: n }
                    }
                    Which::AllGather => {
                        CollectiveSize { bytes: (input * n) as u64, bus_factor: (nf - 1.0) / nf, participants: n }
                    }
                    _ => CollectiveSize { bytes: input as u64, bus_factor: (nf - 1.0) / nf, participants: n },
                })
            }
        }
    };
}

collective_kernel!(
    AllReduce,
    Which::AllReduce,
    "y_i = sum of all x_j, ring reduce-scatter + all-gather over the chips' links (f32 accumulation)"
);
collective_kernel!(AllGather, Which::AllGather, "y_i = concat of all x_j along axis 0, ring all-gather");
collective_kernel!(
    ReduceScatter,
    Which::ReduceScatter,
    "y_i = chunk i (axis 0) of the sum of all x_j, ring reduce-scatter (f32 accumulation)"
);
collective_kernel!(AllToAll, Which::AllToAll, "chunk j (axis 0) of x_i goes to chunk i of y_j, direct pulls");

/// A standalone program: `x{i}` and `y{i}` declared in the HBM of participant
/// `i`'s chip, then the collective.
fn build_standalone(
    kernel: &dyn Kernel,
    which: Which,
    chip: &ChipSpec,
    args: &KernelArgs,
) -> Result<Built, BuildError> {
    check_args(kernel, chip, args)?;
    let cores = spread_cores(chip, kernel.name(), args.cores)?;
    let (xs, ys) = which.shapes(&args.shape, cores.len())?;
    let mut kb = KernelBuilder::new(kernel.name(), chip);
    let mut x = Vec::with_capacity(cores.len());
    let mut y = Vec::with_capacity(cores.len());
    for (i, &c) in cores.iter().enumerate() {
        let on = chip.chip_of_core(c as u32);
        x.push(kb.hbm_input_on(on, &format!("x{i}"), &xs, args.dtype)?);
    }
    for (i, &c) in cores.iter().enumerate() {
        let on = chip.chip_of_core(c as u32);
        y.push(kb.hbm_output_on(on, &format!("y{i}"), &ys, args.dtype)?);
    }
    let cost = which.emit(&mut kb, &x, &y, &cores)?;
    Ok(Built { program: kb.finish()?, flops: cost.flops, bytes_hbm: cost.bytes_hbm, peak_dtype: None })
}
