//! Automatic dependencies: which earlier instructions a new one must wait for.
//!
//! The tracker keeps *access records* (instruction, unit, read/write, access
//! pattern) per memory: one HBM for the chip, one SBUF and one PSUM per core.
//! A new instruction waits for every earlier overlapping write (RAW, WAW) and,
//! when it writes, for every earlier overlapping read (WAR).
//!
//! Cheapness comes from three rules:
//! * records are found through an interval index on their byte span, so a
//!   query costs about the number of records near the new access;
//! * a dense write that covers a record replaces it (whoever waits for the new
//!   write also, transitively, waits for the old access), and a dense read
//!   covers older reads of the same unit (in-order issue) — so only the last
//!   writer per region and the readers since survive;
//! * overlap is decided on bounding boxes; only when both boxes intersect and
//!   one pattern is strided are the exact byte runs compared, so interleaved
//!   views (even/odd columns) are not ordered.
//!
//! Redundant dependencies are dropped with a per-instruction *clock*: for each
//! unit (engine queue or DMA queue of a core), the latest instruction known to
//! have finished before this one starts. Same-unit predecessors are implied by
//! in-order issue (HW-SYNC-QUEUES, HW-DMA-QUEUE); a candidate already in the
//! clock of a kept dependency is implied transitively.

use std::collections::{BTreeSet, HashMap};

use trainyard_isa::{Ap, Dim, InstId, Role, Space, Unit};

/// Most contiguous runs enumerated per pattern in the exact overlap test; beyond
/// it the test answers "overlap", which only costs a dependency.
const EXACT_RUN_LIMIT: u64 = 1 << 16;

/// An engine or DMA queue of one core, as one number.
fn unit_key(core: u16, unit: Unit) -> u32 {
    let idx = match unit {
        Unit::Engine(e) => e as u32,
        Unit::Dma(q) => 16 + q as u32,
    };
    (core as u32) << 16 | idx
}

/// For each unit, the latest instruction known to be complete (sorted by unit).
#[derive(Clone, Debug, Default)]
struct Clock(Vec<(u32, u32)>);

impl Clock {
    fn get(&self, unit: u32) -> Option<u32> {
        self.0.binary_search_by_key(&unit, |&(u, _)| u).ok().map(|i| self.0[i].1)
    }

    fn raise(&mut self, unit: u32, inst: u32) {
        match self.0.binary_search_by_key(&unit, |&(u, _)| u) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(inst),
            Err(i) => self.0.insert(i, (unit, inst)),
        }
    }

    fn merge(&mut self, other: &Clock) {
        for &(u, i) in &other.0 {
            self.raise(u, i);
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
}

/// One operand of one instruction, ready for overlap tests.
#[derive(Clone, Debug)]
struct Access {
    domain: DomainKey,
    write: bool,
    /// Partition range (SBUF/PSUM); `(0, 1)` for HBM, whose partitions are part of the span.
    parts: (u32, u32),
    span: (i64, i64),
    /// The byte set equals the span (per partition for SBUF/PSUM).
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

    fn overlaps(&self, other: &Access) -> bool {
        self.parts.0 < other.parts.1
            && other.parts.0 < self.parts.1
            && self.span.0 < other.span.1
            && other.span.0 < self.span.1
            && ((self.dense && other.dense) || exact_overlap(&self.ap, &other.ap))
    }

    /// Every byte of `other` is also a byte of `self`.
    fn covers(&self, other: &Access) -> bool {
        self.dense
            && self.parts.0 <= other.parts.0
            && other.parts.1 <= self.parts.1
            && self.span.0 <= other.span.0
            && other.span.1 <= self.span.1
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
    domains: HashMap<DomainKey, Domain>,
    records: Vec<Option<Record>>,
    free_records: Vec<u32>,
    /// Per instruction: its unit and its clock at start.
    units: Vec<u32>,
    clocks: Vec<Clock>,
    last_on_unit: HashMap<u32, u32>,
}

impl DepTracker {
    /// Registers the next instruction (id = number registered so far) and
    /// returns the instructions it must wait for, ascending.
    pub(crate) fn add(&mut self, core: u16, unit: Unit, operands: &[(Ap, Role)]) -> Vec<InstId> {
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

        // Reads first, so a write of the same instruction may replace them.
        let (reads, writes): (Vec<Access>, Vec<Access>) = accesses.into_iter().partition(|a| !a.write);
        for a in reads.into_iter().chain(writes) {
            self.record(inst, uk, a);
        }
        self.units.push(uk);
        self.clocks.push(clock);
        self.last_on_unit.insert(uk, inst);
        deps
    }

    fn record(&mut self, inst: u32, uk: u32, a: Access) {
        let dom = self.domains.entry(a.domain).or_default();
        if a.dense {
            let mut victims = Vec::new();
            let mut visit = |id: u32| {
                if let Some(Some(r)) = self.records.get(id as usize) {
                    let replaceable = a.write || (!r.access.write && r.unit == uk);
                    if replaceable && a.covers(&r.access) {
                        victims.push(id);
                    }
                }
            };
            dom.reads.candidates(a.span, &mut visit);
            if a.write {
                dom.writes.candidates(a.span, &mut visit);
            }
            for id in victims {
                if let Some(r) = self.records.get_mut(id as usize).and_then(Option::take) {
                    let index = if r.access.write { &mut dom.writes } else { &mut dom.reads };
                    index.remove(r.access.span, id);
                    self.free_records.push(id);
                }
            }
        }
        let index = if a.write { &mut dom.writes } else { &mut dom.reads };
        let rec = Record { inst, unit: uk, access: a };
        let id = match self.free_records.pop() {
            Some(id) => {
                self.records[id as usize] = Some(rec);
                id
            }
            None => {
                self.records.push(Some(rec));
                self.records.len() as u32 - 1
            }
        };
        if let Some(Some(r)) = self.records.get(id as usize) {
            index.insert(r.access.span, id);
        }
    }

    /// Number of live access records (for tests of the pruning rules).
    #[cfg(test)]
    pub(crate) fn live_records(&self) -> usize {
        self.records.iter().filter(|r| r.is_some()).count()
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
/// if there are more than [`EXACT_RUN_LIMIT`].
fn byte_runs(ap: &Ap, window: (i64, i64)) -> Option<Vec<(i64, i64)>> {
    let (dims, run) = outer_dims_and_run(ap);
    let count = dims.iter().fold(1u64, |acc, d| acc.saturating_mul(d.size as u64));
    if count > EXACT_RUN_LIMIT {
        return None;
    }
    let es = ap.dtype.size() as i64;
    let len = run * es;
    let mut out = Vec::new();
    let mut idx = vec![0u32; dims.len()];
    let mut off = 0i64;
    loop {
        let start = ap.offset as i64 + off * es;
        if start < window.1 && start + len > window.0 {
            out.push((start, start + len));
        }
        // Odometer over the outer dims, innermost fastest.
        let mut k = dims.len();
        loop {
            if k == 0 {
                out.sort_unstable();
                return Some(out);
            }
            k -= 1;
            idx[k] += 1;
            off += dims[k].stride;
            if idx[k] < dims[k].size {
                break;
            }
            off -= dims[k].stride * dims[k].size as i64;
            idx[k] = 0;
        }
    }
}

/// Whether two patterns (whose partition ranges intersect) share a byte.
fn exact_overlap(a: &Ap, b: &Ap) -> bool {
    let (Some(sa), Some(sb)) = (a.byte_span(), b.byte_span()) else { return false };
    let window = (sa.0.max(sb.0), sa.1.min(sb.1));
    let (Some(ra), Some(rb)) = (byte_runs(a, window), byte_runs(b, window)) else { return true };
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
mod tests {
    use super::*;
    use trainyard_arch::DType;
    use trainyard_isa::Engine;

    const VEC: Unit = Unit::Engine(Engine::Vector);
    const ACT: Unit = Unit::Engine(Engine::Scalar);
    const POOL: Unit = Unit::Engine(Engine::GpSimd);

    fn cols(c0: u32, n: u32, step: i64) -> Ap {
        Ap::new(Space::Sbuf, 0, 128, 0, c0 as u64 * 4, &[Dim { stride: step, size: n }], DType::F32)
    }

    fn ids(v: &[u32]) -> Vec<InstId> {
        v.iter().map(|&i| InstId(i)).collect()
    }

    #[test]
    fn exact_test_separates_even_and_odd_columns() {
        let even = cols(0, 64, 2);
        let odd = cols(1, 64, 2);
        assert!(!exact_overlap(&even, &odd));
        assert!(exact_overlap(&even, &cols(0, 128, 1)));
        assert!(exact_overlap(&odd, &cols(63, 1, 1)));
        assert!(!exact_overlap(&odd, &cols(64, 1, 1)));
    }

    #[test]
    fn hbm_runs_include_the_row_axis() {
        // Columns 0..4 and 4..8 of an 8-wide matrix: boxes intersect, bytes do not.
        let left = Ap::new(Space::Hbm, 0, 4, 8, 0, &[Dim { stride: 1, size: 4 }], DType::F32);
        let right = Ap::new(Space::Hbm, 0, 4, 8, 16, &[Dim { stride: 1, size: 4 }], DType::F32);
        assert!(!exact_overlap(&left, &right));
        let mut t = DepTracker::default();
        t.add(0, Unit::Dma(0), &[(left, Role::Write)]);
        assert_eq!(t.add(1, Unit::Dma(0), &[(right, Role::Write)]), vec![]);
        assert_eq!(t.add(1, Unit::Dma(1), &[(right, Role::Read)]), ids(&[1]));
    }

    #[test]
    fn clock_prunes_transitive_and_same_unit_deps() {
        let mut t = DepTracker::default();
        let a = cols(0, 64, 1);
        let b = cols(64, 64, 1);
        assert!(t.add(0, VEC, &[(a, Role::Write)]).is_empty()); // 0
        assert_eq!(t.add(0, ACT, &[(b, Role::Write), (a, Role::Read)]), ids(&[0])); // 1
                                                                                    // Reads a and b: 1 already waited for 0.
        assert_eq!(t.add(0, POOL, &[(cols(0, 128, 1), Role::Read)]), ids(&[1])); // 2
                                                                                 // Same unit as 1: the WAR on 1 is implied, but 2 is on another engine.
        assert_eq!(t.add(0, ACT, &[(b, Role::Write)]), ids(&[2])); // 3
    }

    #[test]
    fn covering_writes_and_reads_replace_records() {
        let mut t = DepTracker::default();
        let whole = cols(0, 128, 1);
        for _ in 0..10 {
            t.add(0, VEC, &[(whole, Role::Write)]);
            t.add(0, ACT, &[(cols(0, 64, 1), Role::Read)]);
            t.add(0, ACT, &[(whole, Role::Read)]);
        }
        // The last write and the last covering read of the scalar engine.
        assert_eq!(t.live_records(), 2);
    }

    #[test]
    fn other_cores_sram_is_separate_but_hbm_is_shared() {
        let mut t = DepTracker::default();
        let tile = cols(0, 16, 1);
        let h = Ap::hbm(0, 4, &[16], DType::F32);
        t.add(0, Unit::Dma(0), &[(tile, Role::Write), (h, Role::Read)]);
        assert!(t.add(1, Unit::Dma(0), &[(tile, Role::Write)]).is_empty());
        assert_eq!(t.add(1, Unit::Dma(0), &[(h, Role::Write), (tile, Role::Read)]), ids(&[0]));
    }
}
