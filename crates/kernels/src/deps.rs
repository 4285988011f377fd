//! Automatic dependencies: which earlier instructions a new one must wait for.
//!
//! The tracker keeps *access records* (instruction, unit, read/write, access
//! pattern, and a box the record is clipped to) per memory: one HBM for the
//! chip, one SBUF and one PSUM per core. A record stands for the bytes of its
//! pattern inside its box: `[partition range] × [byte span]` (HBM: the span
//! alone). A new instruction waits for every earlier overlapping write (RAW,
//! WAW) and, when it writes, for every earlier overlapping read (WAR).
//!
//! Cheapness comes from three rules:
//! * records are found through an interval index on their byte span, so a
//!   query costs about the number of records near the new access;
//! * a record gives up the bytes that a newer access covers when whoever will
//!   conflict with those bytes must also wait for the newer access, which
//!   implies the old one: a write takes them from every older record (it is
//!   ordered after each one it overlaps), a read only from older reads that
//!   finished before it started (its clock says so). A dense access covers
//!   its box; a strided one only earlier records of the same pattern (found
//!   by pattern, without a scan). Covered entirely, the record is retired;
//!   covered in part by a dense access, its box shrinks to what is left
//!   (split in up to four boxes, each tightened to the bytes it still holds).
//!   So with dense or repeated overwrites, however they are cut, only the
//!   last writer of each byte and the readers since survive;
//! * overlap is decided on boxes; only when two boxes intersect and one
//!   pattern is strided are its byte runs in the intersection looked at, so
//!   interleaved views (even/odd columns) are not ordered. Runs are walked
//!   only where they can reach the intersection, and against a dense box
//!   only their extent matters, which one-dim patterns give without a walk.
//!
//! Retiring a record never changes the answer: a later access that overlaps
//! its bytes overlaps the newer record that took them, which is ordered after
//! the old one, so the old one would have been dropped as implied anyway.
//!
//! Redundant dependencies are dropped with a per-instruction *clock*: for each
//! unit (engine queue or DMA queue of a core), the latest instruction known to
//! have finished before this one starts. Same-unit predecessors are implied by
//! in-order issue (HW-SYNC-QUEUES, HW-DMA-QUEUE); a candidate already in the
//! clock of a kept dependency is implied transitively.
//!
//! There is no "horizon" (retire what every unit has waited for, as the
//! simulator's race checker does): a builder does not know which units will
//! issue again, and the first instruction of a unit not used yet waits for
//! nothing by in-order issue, so every record would stay live for it.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use trainyard_isa::{Ap, Dim, InstId, Role, Space, Unit};

/// Most indices walked per pattern in the exact overlap test; beyond it the
/// test answers "overlap", which only costs a dependency (and a cut record
/// keeps its box untightened).
const EXACT_RUN_LIMIT: usize = 1 << 16;

/// A multiply-rotate hash for the tracker's maps, hashed several times per
/// access: their keys are small and not chosen by an adversary, and SipHash
/// showed in profiles.
#[derive(Default)]
struct QuickHasher(u64);

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, x: u8) {
        self.write_u64(x.into());
    }

    fn write_u16(&mut self, x: u16) {
        self.write_u64(x.into());
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(x.into());
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn write_i64(&mut self, x: i64) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type QuickMap<K, V> = HashMap<K, V, BuildHasherDefault<QuickHasher>>;

/// An engine or DMA queue of one core, as one number.
fn unit_key(core: u16, unit: Unit) -> u32 {
    let idx = match unit {
        Unit::Engine(e) => e as u32,
        Unit::Dma(q) => 16 + q as u32,
    };
    (core as u32) << 16 | idx
}

/// For each unit, the latest instruction known to be complete.
///
/// Kept per core, each core's entries (sorted by unit) in a shared chunk: an
/// instruction's clock is its unit predecessor's plus a few raised entries,
/// so cloning shares every untouched core's chunk instead of copying it
/// (after a collective over many cores a clock names units of all of them,
/// and one flat copy per instruction dominated build time and memory).
#[derive(Clone, Debug, Default)]
struct Clock(Vec<Option<CoreClock>>);

/// One core's part of a [`Clock`]: `(unit index on the core, instruction)`, sorted, shared.
type CoreClock = Arc<Vec<(u16, u32)>>;

impl Clock {
    fn split(unit: u32) -> (usize, u16) {
        ((unit >> 16) as usize, (unit & 0xffff) as u16)
    }

    fn get(&self, unit: u32) -> Option<u32> {
        let (core, idx) = Clock::split(unit);
        let chunk = self.0.get(core)?.as_ref()?;
        chunk.binary_search_by_key(&idx, |&(u, _)| u).ok().map(|i| chunk[i].1)
    }

    fn raise(&mut self, unit: u32, inst: u32) {
        let (core, idx) = Clock::split(unit);
        if self.0.len() <= core {
            self.0.resize(core + 1, None);
        }
        let chunk = self.0[core].get_or_insert_with(Default::default);
        match chunk.binary_search_by_key(&idx, |&(u, _)| u) {
            Ok(i) if chunk[i].1 >= inst => {}
            Ok(i) => Arc::make_mut(chunk)[i].1 = inst,
            Err(i) => Arc::make_mut(chunk).insert(i, (idx, inst)),
        }
    }

    fn merge(&mut self, other: &Clock) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), None);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            let Some(theirs) = theirs else { continue };
            match mine {
                None => *mine = Some(Arc::clone(theirs)),
                Some(m) if Arc::ptr_eq(m, theirs) => {}
                Some(m) => {
                    for &(idx, inst) in theirs.iter() {
                        match m.binary_search_by_key(&idx, |&(u, _)| u) {
                            Ok(i) if m[i].1 >= inst => {}
                            Ok(i) => Arc::make_mut(m)[i].1 = inst,
                            Err(i) => Arc::make_mut(m).insert(i, (idx, inst)),
                        }
                    }
                }
            }
        }
    }
}

/// Records indexed by byte span. Spans are bucketed by the power of two of
/// their length, so a query scans, per bucket, only records starting less than
/// one bucket-length before the queried range.
#[derive(Debug, Default)]
struct IntervalIndex {
    classes: Vec<BTreeSet<(i64, u32)>>,
    used: u64,
}

fn class_of(span: (i64, i64)) -> usize {
    let len = (span.1 - span.0).max(1) as u64;
    (63 - len.leading_zeros()) as usize
}

impl IntervalIndex {
    fn insert(&mut self, span: (i64, i64), id: u32) {
        let c = class_of(span);
        if self.classes.len() <= c {
            self.classes.resize_with(c + 1, BTreeSet::new);
        }
        self.classes[c].insert((span.0, id));
        self.used |= 1 << c;
    }

    fn remove(&mut self, span: (i64, i64), id: u32) {
        let c = class_of(span);
        if let Some(set) = self.classes.get_mut(c) {
            set.remove(&(span.0, id));
            if set.is_empty() {
                self.used &= !(1 << c);
            }
        }
    }

    /// Calls `f` with every record whose start lies close enough to `span` to
    /// overlap it (a superset of the overlapping ones).
    fn candidates(&self, span: (i64, i64), mut f: impl FnMut(u32)) {
        let mut used = self.used;
        while used != 0 {
            let c = used.trailing_zeros() as usize;
            used &= used - 1;
            let longest = 1i64.checked_shl(c as u32 + 1).unwrap_or(i64::MAX);
            let from = span.0.saturating_sub(longest).saturating_add(1);
            for &(_, id) in self.classes[c].range((from, 0)..(span.1, 0)) {
                f(id);
            }
        }
    }
}

type DomainKey = (Space, u16);

#[derive(Debug, Default)]
struct Domain {
    reads: IntervalIndex,
    writes: IntervalIndex,
    /// Strided records by pattern: a strided access only ever stands in for
    /// repeats of its own pattern, found here without a scan.
    strided: QuickMap<Ap, Vec<u32>>,
}

impl Domain {
    fn index(&mut self, write: bool) -> &mut IntervalIndex {
        if write {
            &mut self.writes
        } else {
            &mut self.reads
        }
    }

    fn link(&mut self, id: u32, a: &Access) {
        self.index(a.write).insert(a.span, id);
        if !a.dense {
            self.strided.entry(a.ap).or_default().push(id);
        }
    }

    fn unlink(&mut self, id: u32, a: &Access) {
        self.index(a.write).remove(a.span, id);
        if !a.dense {
            if let Some(ids) = self.strided.get_mut(&a.ap) {
                ids.retain(|&x| x != id);
                if ids.is_empty() {
                    self.strided.remove(&a.ap);
                }
            }
        }
    }
}

/// One operand of one instruction, or what is left of it: the bytes of `ap`
/// inside the box `parts × span`.
#[derive(Clone, Debug)]
struct Access {
    domain: DomainKey,
    write: bool,
    /// Partition range (SBUF/PSUM); `(0, 1)` for HBM, whose partitions are part of the span.
    parts: (u32, u32),
    span: (i64, i64),
    /// The byte set fills the box (per partition for SBUF/PSUM).
    dense: bool,
    ap: Ap,
}

impl Access {
    fn new(ap: &Ap, role: Role, core: u16) -> Option<Access> {
        let span = ap.byte_span()?;
        let (domain, parts) = match ap.space {
            Space::Hbm => ((Space::Hbm, 0), (0, 1)),
            s => ((s, core), ap.partition_range()),
        };
        let dense = outer_dims_and_run(ap).0.is_empty();
        Some(Access { domain, write: role == Role::Write, parts, span, dense, ap: *ap })
    }

    fn boxes_meet(&self, other: &Access) -> bool {
        self.parts.0 < other.parts.1
            && other.parts.0 < self.parts.1
            && self.span.0 < other.span.1
            && other.span.0 < self.span.1
    }

    fn overlaps(&self, other: &Access) -> bool {
        if !self.boxes_meet(other) {
            return false;
        }
        // A dense box shares a byte with a pattern iff the pattern has one in the boxes' intersection.
        let window = (self.span.0.max(other.span.0), self.span.1.min(other.span.1));
        match (self.dense, other.dense) {
            (true, true) => true,
            (true, false) => run_extent(&other.ap, window) != Some(None),
            (false, true) => run_extent(&self.ap, window) != Some(None),
            (false, false) => exact_overlap(self, other),
        }
    }

    /// Every byte of `other` is also a byte of `self`. Besides box
    /// containment for a dense `self`, a repeated strided pattern counts
    /// (`self` is never clipped: it is the new access).
    fn covers(&self, other: &Access) -> bool {
        let inside = self.parts.0 <= other.parts.0
            && other.parts.1 <= self.parts.1
            && self.span.0 <= other.span.0
            && other.span.1 <= self.span.1;
        inside && (self.dense || self.ap == other.ap)
    }

    /// What is left of this box outside the dense `cut`, as up to four boxes:
    /// the partitions outside `cut`'s (whole span), then the span on either
    /// side of `cut`'s within the shared partitions. Each is tightened to the
    /// bytes of the pattern in it, and dropped when it holds none.
    fn minus(&self, cut: &Access) -> Vec<Access> {
        let shared = (self.parts.0.max(cut.parts.0), self.parts.1.min(cut.parts.1));
        let boxes = [
            ((self.parts.0, shared.0), self.span),
            ((shared.1, self.parts.1), self.span),
            (shared, (self.span.0, cut.span.0.min(self.span.1))),
            (shared, (cut.span.1.max(self.span.0), self.span.1)),
        ];
        let mut out = Vec::new();
        for (parts, span) in boxes {
            if parts.0 >= parts.1 || span.0 >= span.1 {
                continue;
            }
            let span = if self.dense {
                span
            } else {
                match run_extent(&self.ap, span) {
                    Some(Some((lo, hi))) => (span.0.max(lo), span.1.min(hi)),
                    Some(None) => continue,
                    None => span,
                }
            };
            out.push(Access { parts, span, ..self.clone() });
        }
        out
    }
}

#[derive(Debug)]
struct Record {
    inst: u32,
    unit: u32,
    access: Access,
}

/// The dependency tracker of one kernel.
#[derive(Debug, Default)]
pub(crate) struct DepTracker {
    domains: QuickMap<DomainKey, Domain>,
    records: Vec<Option<Record>>,
    free_records: Vec<u32>,
    /// Per instruction: its unit and its clock at start.
    units: Vec<u32>,
    clocks: Vec<Clock>,
    last_on_unit: QuickMap<u32, u32>,
    /// The latest join ([`DepTracker::add_join`]): every later instruction waits for it.
    fence: Option<u32>,
}

impl DepTracker {
    /// Registers the next instruction (id = number registered so far) and
    /// returns the instructions it must wait for, ascending.
    pub(crate) fn add(&mut self, core: u16, unit: Unit, operands: &[(Ap, Role)]) -> Vec<InstId> {
        self.add_waiting(core, unit, operands, &[])
    }

    /// Registers a join: the next instruction, which also waits for the last instruction of
    /// every unit so far, and which every later instruction then waits for (directly, or
    /// through an earlier instruction of its unit). Its clock holds every unit's last
    /// instruction, so later waits on anything before it are dropped as implied.
    pub(crate) fn add_join(&mut self, core: u16, unit: Unit, operands: &[(Ap, Role)]) -> Vec<InstId> {
        let mut lasts: Vec<u32> = self.last_on_unit.values().copied().collect();
        lasts.sort_unstable();
        let inst = self.units.len() as u32;
        let deps = self.add_waiting(core, unit, operands, &lasts);
        self.fence = Some(inst);
        deps
    }

    /// [`DepTracker::add`] with `extra` instructions to wait for besides the memory conflicts.
    fn add_waiting(&mut self, core: u16, unit: Unit, operands: &[(Ap, Role)], extra: &[u32]) -> Vec<InstId> {
        let inst = self.units.len() as u32;
        let uk = unit_key(core, unit);
        let accesses: Vec<Access> = operands.iter().filter_map(|(ap, role)| Access::new(ap, *role, core)).collect();

        let mut found = Vec::new();
        for a in &accesses {
            let Some(dom) = self.domains.get(&a.domain) else { continue };
            let mut visit = |id: u32| {
                if let Some(Some(r)) = self.records.get(id as usize) {
                    if r.access.overlaps(a) {
                        found.push(r.inst);
                    }
                }
            };
            dom.writes.candidates(a.span, &mut visit);
            if a.write {
                dom.reads.candidates(a.span, &mut visit);
            }
        }

        found.extend_from_slice(extra);
        found.extend(self.fence);
        // Latest first: an earlier instruction can never imply a later one.
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.dedup();
        let mut clock = match self.last_on_unit.get(&uk) {
            Some(&prev) => {
                let mut c = self.clocks[prev as usize].clone();
                c.raise(uk, prev);
                c
            }
            None => Clock::default(),
        };
        let mut deps = Vec::new();
        for d in found {
            let du = self.units[d as usize];
            if clock.get(du).is_some_and(|k| k >= d) {
                continue;
            }
            deps.push(InstId(d));
            clock.merge(&self.clocks[d as usize]);
            clock.raise(du, d);
        }
        deps.reverse();

        // Reads first, so a write of the same instruction may take their bytes.
        let (reads, writes): (Vec<Access>, Vec<Access>) = accesses.into_iter().partition(|a| !a.write);
        for a in reads.into_iter().chain(writes) {
            self.record(inst, uk, &clock, a);
        }
        self.units.push(uk);
        self.clocks.push(clock);
        self.last_on_unit.insert(uk, inst);
        deps
    }

    /// Adds the record of `a` (by `inst` on unit `uk`, which starts after
    /// everything in `clock`), first taking from older records the bytes it
    /// stands in for.
    fn record(&mut self, inst: u32, uk: u32, clock: &Clock, a: Access) {
        let dom = self.domains.entry(a.domain).or_default();
        // (record, whether `a` covers all of it)
        let mut hits: Vec<(u32, bool)> = Vec::new();
        let mut visit = |id: u32| {
            let Some(Some(r)) = self.records.get(id as usize) else { return };
            // A write is ordered after every record whose bytes it shares (and
            // a box holding none of a record's bytes can be cut away freely);
            // a read only stands in for older reads it is known to follow.
            let stands_in =
                a.write || (!r.access.write && (r.inst == inst || clock.get(r.unit).is_some_and(|k| k >= r.inst)));
            if stands_in && a.boxes_meet(&r.access) {
                if a.covers(&r.access) {
                    hits.push((id, true));
                } else if a.dense {
                    hits.push((id, false));
                }
            }
        };
        if a.dense {
            dom.reads.candidates(a.span, &mut visit);
            if a.write {
                dom.writes.candidates(a.span, &mut visit);
            }
        } else if let Some(ids) = dom.strided.get(&a.ap) {
            ids.iter().for_each(|&id| visit(id));
        }
        for (id, covered) in hits {
            let Some(r) = self.records.get_mut(id as usize).and_then(Option::take) else { continue };
            dom.unlink(id, &r.access);
            self.free_records.push(id);
            if !covered {
                for rest in r.access.minus(&a) {
                    let piece = Record { inst: r.inst, unit: r.unit, access: rest };
                    insert(&mut self.records, &mut self.free_records, dom, piece);
                }
            }
        }
        insert(&mut self.records, &mut self.free_records, dom, Record { inst, unit: uk, access: a });
    }

    /// Number of live access records (for tests of the pruning rules).
    #[cfg(test)]
    pub(crate) fn live_records(&self) -> usize {
        self.records.iter().filter(|r| r.is_some()).count()
    }
}

/// Stores `rec` in a free slot and indexes it in `dom`.
fn insert(records: &mut Vec<Option<Record>>, free: &mut Vec<u32>, dom: &mut Domain, rec: Record) {
    let id = free.pop().unwrap_or(records.len() as u32);
    dom.link(id, &rec.access);
    match records.get_mut(id as usize) {
        Some(slot) => *slot = Some(rec),
        None => records.push(Some(rec)),
    }
}

/// The pattern as outer dims over contiguous runs: `(outer dims, run length in
/// elements)`. HBM's partition axis counts as the outermost dim. No outer dims
/// means the pattern is one contiguous block.
fn outer_dims_and_run(ap: &Ap) -> (Vec<Dim>, i64) {
    let mut dims: Vec<Dim> = Vec::with_capacity(5);
    if ap.space == Space::Hbm {
        dims.push(Dim { stride: ap.partition_stride, size: ap.partitions });
    }
    dims.extend(ap.free_dims().iter().copied());
    dims.retain(|d| d.size > 1);
    let mut run = 1i64;
    while let Some(d) = dims.last() {
        if d.stride != run {
            break;
        }
        run *= d.size as i64;
        dims.pop();
    }
    (dims, run)
}

/// Sorted byte runs `[start, end)` of a pattern that touch `window`, or `None`
/// past [`EXACT_RUN_LIMIT`] steps.
fn byte_runs(ap: &Ap, window: (i64, i64)) -> Option<Vec<(i64, i64)>> {
    let mut runs = RunWalk::new(ap, window, true).walk()?.runs;
    runs.sort_unstable();
    Some(runs)
}

/// The lowest start and highest end of the byte runs of a pattern that touch
/// `window` (`Some(None)`: there are none), or `None` past [`EXACT_RUN_LIMIT`] steps.
fn run_extent(ap: &Ap, window: (i64, i64)) -> Option<Option<(i64, i64)>> {
    Some(RunWalk::new(ap, window, false).walk()?.extent)
}

/// A walk over the runs of a pattern that touch a window. Each dim only walks
/// the indices whose sub-pattern can reach the window, and when only the
/// extent is wanted the innermost dim is not walked at all, so a narrow
/// window of a long pattern, or the extent of a one-dim pattern, is cheap.
struct RunWalk {
    /// Outer dims as (byte stride, size), outermost first.
    dims: Vec<(i64, u32)>,
    /// `inner[k]`: lowest and highest run start reached by dims `k..`, relative to their base.
    inner: Vec<(i64, i64)>,
    base: i64,
    len: i64,
    window: (i64, i64),
    collect: bool,
    runs: Vec<(i64, i64)>,
    extent: Option<(i64, i64)>,
    steps: usize,
}

impl RunWalk {
    fn new(ap: &Ap, window: (i64, i64), collect: bool) -> RunWalk {
        let (outer, run) = outer_dims_and_run(ap);
        let es = ap.dtype.size() as i64;
        let dims: Vec<(i64, u32)> = outer.iter().map(|d| (d.stride * es, d.size)).collect();
        let mut inner = vec![(0i64, 0i64); dims.len() + 1];
        for k in (0..dims.len()).rev() {
            let (s, n) = dims[k];
            let reach = s * (n as i64 - 1);
            inner[k] = (inner[k + 1].0 + reach.min(0), inner[k + 1].1 + reach.max(0));
        }
        let base = ap.offset as i64;
        RunWalk { dims, inner, base, len: run * es, window, collect, runs: Vec::new(), extent: None, steps: 0 }
    }

    fn walk(mut self) -> Option<RunWalk> {
        self.level(0, self.base)?;
        Some(self)
    }

    fn note(&mut self, lo: i64, hi: i64) {
        self.extent = Some(self.extent.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }

    /// Runs of dims `k..` from byte `base`; `None` past the step limit.
    fn level(&mut self, k: usize, base: i64) -> Option<()> {
        let Some(&(s, n)) = self.dims.get(k) else {
            if base < self.window.1 && base + self.len > self.window.0 {
                if self.collect {
                    self.runs.push((base, base + self.len));
                } else {
                    self.note(base, base + self.len);
                }
            }
            return Some(());
        };
        let (lo, hi) = self.inner[k + 1];
        // Index i reaches `[base + i·s + lo, base + i·s + hi + len)`, which must meet the window.
        let below = self.window.0 - base - hi - self.len; // i·s > below
        let above = self.window.1 - base - lo; // i·s < above
        let (first, end) = if s == 0 {
            // Repeats of the same runs: one is enough.
            (0, i64::from(below < 0 && 0 < above))
        } else if s > 0 {
            (below.div_euclid(s) + 1, (above - 1).div_euclid(s) + 1)
        } else {
            let t = -s; // i·t < -below and i·t > -above
            ((-above).div_euclid(t) + 1, (-below - 1).div_euclid(t) + 1)
        };
        let (first, end) = (first.max(0), end.min(n as i64));
        if first >= end {
            return Some(());
        }
        if !self.collect && k + 1 == self.dims.len() {
            // Every index in range is a run touching the window.
            let (a, b) = (base + first * s, base + (end - 1) * s);
            self.note(a.min(b), a.max(b) + self.len);
            return Some(());
        }
        self.steps += (end - first) as usize;
        if self.steps > EXACT_RUN_LIMIT {
            return None;
        }
        for i in first..end {
            self.level(k + 1, base + i * s)?;
        }
        Some(())
    }
}

/// Whether two strided accesses (whose boxes intersect) share a byte.
fn exact_overlap(a: &Access, b: &Access) -> bool {
    let window = (a.span.0.max(b.span.0), a.span.1.min(b.span.1));
    let (Some(ra), Some(rb)) = (byte_runs(&a.ap, window), byte_runs(&b.ap, window)) else { return true };
    let (mut i, mut j) = (0, 0);
    while i < ra.len() && j < rb.len() {
        if ra[i].1 <= rb[j].0 {
            i += 1;
        } else if rb[j].1 <= ra[i].0 {
            j += 1;
        } else {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
