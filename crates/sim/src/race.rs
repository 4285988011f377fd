//! Race detection with vector clocks.
//!
//! Every unit (engine or DMA queue of a core) is one clock component. An
//! instruction's clock joins its unit predecessor's and its dependencies'
//! clocks. Access `a` happens before `b` iff `b`'s clock has seen `a`'s unit at
//! `a`'s sequence number. Shadow records of recent accesses are kept in
//! buckets by byte address; two conflicting (at least one write), overlapping
//! accesses with neither before the other are a race. A write that covers
//! older records and happens after them retires them, which keeps the shadow
//! small.

use trainyard_isa::{Ap, Space};

/// One access remembered in the shadow memory.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub inst: u32,
    pub operand: &'static str,
    pub unit: u32,
    pub seq: u32,
    pub write: bool,
    pub p0: u32,
    pub p1: u32,
    pub lo: i64,
    pub hi: i64,
    pub ap: Ap,
    alive: bool,
    generation: u32,
}

/// Bucketed records of one memory. Reads and writes are kept apart: a read
/// only has to be checked against writes.
struct Shadow {
    bucket_shift: u32,
    reads: Vec<Vec<(u32, u32)>>,
    writes: Vec<Vec<(u32, u32)>>,
}

impl Shadow {
    fn new(bytes: u64, min_shift: u32) -> Self {
        let mut shift = min_shift;
        while (bytes >> shift) > (1 << 20) {
            shift += 1;
        }
        let n = ((bytes >> shift) + 1) as usize;
        Shadow { bucket_shift: shift, reads: vec![Vec::new(); n], writes: vec![Vec::new(); n] }
    }

    fn range(&self, lo: i64, hi: i64) -> std::ops::RangeInclusive<usize> {
        let last = self.writes.len() - 1;
        let a = ((lo.max(0) as u64) >> self.bucket_shift) as usize;
        let b = (((hi - 1).max(0) as u64) >> self.bucket_shift) as usize;
        a.min(last)..=b.min(last)
    }
}

/// A detected race: the earlier record and the access that conflicts with it.
pub(crate) struct Conflict {
    pub earlier: Record,
    pub space: String,
}

pub(crate) struct RaceChecker {
    /// Per unit: the lowest sequence number of that unit's accesses that some
    /// still-running unit may not have seen yet, minus one.
    horizon: Vec<u32>,
    records: Vec<Record>,
    free: Vec<u32>,
    hbm: Shadow,
    sbuf: Vec<Shadow>,
    psum: Vec<Shadow>,
}

/// Byte runs `(partition, lo, hi)` of an access pattern, sorted.
fn runs(ap: &Ap) -> Vec<(u32, i64, i64)> {
    let es = ap.dtype.size() as i64;
    let dims = ap.free_dims();
    let (outer, inner) = dims.split_at(dims.len() - 1);
    let inner = inner[0];
    let mut out = Vec::new();
    for p in 0..ap.partitions {
        let (part, base) = match ap.space {
            Space::Hbm => (0, ap.offset as i64 + p as i64 * ap.partition_stride * es),
            _ => (ap.start_partition + p, ap.offset as i64),
        };
        trainyard_isa::for_each_offset(outer, |o| {
            let start = base + o * es;
            if inner.stride == 1 {
                out.push((part, start, start + inner.size as i64 * es));
            } else {
                for i in 0..inner.size as i64 {
                    let a = start + i * inner.stride * es;
                    out.push((part, a, a + es));
                }
            }
        });
    }
    out.sort_unstable();
    out
}

/// Exact test: do two patterns share a byte?
fn exact_overlap(a: &Ap, b: &Ap) -> bool {
    let (ra, rb) = (runs(a), runs(b));
    let (mut i, mut j) = (0, 0);
    while i < ra.len() && j < rb.len() {
        let (pa, la, ha) = ra[i];
        let (pb, lb, hb) = rb[j];
        if pa == pb && la < hb && lb < ha {
            return true;
        }
        if (pa, ha) <= (pb, hb) {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

/// True if the pattern touches every byte of its bounding box (per partition).
fn dense(ap: &Ap, lo: i64, hi: i64) -> bool {
    let (runs, len) = ap.contiguous_runs();
    runs == 1 && len == (hi - lo) as u64
}

/// The access being checked.
struct Probe<'a> {
    inst: u32,
    core: usize,
    clock: &'a [u32],
    ap: &'a Ap,
    write: bool,
    covers_box: bool,
    p0: u32,
    p1: u32,
    lo: i64,
    hi: i64,
}

/// Checks `probe` against the records in `range` of one bucket list,
/// dropping stale entries and retiring records the probe makes redundant.
fn scan_buckets(
    records: &mut [Record],
    free: &mut Vec<u32>,
    horizon: &[u32],
    list: &mut [Vec<(u32, u32)>],
    range: std::ops::RangeInclusive<usize>,
    x: &Probe,
) -> Option<Box<Conflict>> {
    for b in range {
        let bucket = &mut list[b];
        let mut k = 0;
        while k < bucket.len() {
            let (id, generation) = bucket[k];
            let r = &mut records[id as usize];
            if !r.alive || r.generation != generation {
                bucket.swap_remove(k);
                continue;
            }
            // Every unit that will run again has seen this access: retire it.
            if horizon.get(r.unit as usize).is_some_and(|&h| h >= r.seq) {
                r.alive = false;
                free.push(id);
                bucket.swap_remove(k);
                continue;
            }
            k += 1;
            if r.p1 <= x.p0 || x.p1 <= r.p0 || r.hi <= x.lo || x.hi <= r.lo || r.inst == x.inst {
                continue;
            }
            let ordered = x.clock.get(r.unit as usize).is_some_and(|&c| c >= r.seq);
            if !ordered {
                if exact_overlap(&r.ap, x.ap) {
                    let space = match x.ap.space {
                        Space::Hbm => "hbm".to_string(),
                        s => format!("{s} of core {}", x.core),
                    };
                    return Some(Box::new(Conflict { earlier: r.clone(), space }));
                }
                continue;
            }
            // A covering write after older accesses makes them redundant.
            let covered = x.covers_box && x.p0 <= r.p0 && r.p1 <= x.p1 && x.lo <= r.lo && r.hi <= x.hi;
            if covered && x.write {
                r.alive = false;
                free.push(id);
            }
        }
    }
    None
}

impl RaceChecker {
    pub fn new(hbm_bytes: u64, cores: usize, sbuf_bpp: u64, psum_bpp: u64) -> Self {
        RaceChecker {
            horizon: Vec::new(),
            records: Vec::new(),
            free: Vec::new(),
            hbm: Shadow::new(hbm_bytes, 16),
            sbuf: (0..cores).map(|_| Shadow::new(sbuf_bpp, 11)).collect(),
            psum: (0..cores).map(|_| Shadow::new(psum_bpp, 11)).collect(),
        }
    }

    /// Sets the horizon: `horizon[u]` = the smallest clock entry for unit `u`
    /// over every unit that still has instructions to run. Records at or below
    /// it can never race again.
    pub fn set_horizon(&mut self, horizon: Vec<u32>) {
        self.horizon = horizon;
    }

    /// Checks one access against the shadow and records it.
    ///
    /// `clock` is the accessing instruction's vector clock; `clock[r.unit] >=
    /// r.seq` means record `r` happens before it.
    #[allow(clippy::too_many_arguments)]
    pub fn access(
        &mut self,
        core: usize,
        inst: u32,
        operand: &'static str,
        unit: u32,
        seq: u32,
        clock: &[u32],
        ap: &Ap,
        write: bool,
    ) -> Result<(), Box<Conflict>> {
        let Some((lo, hi)) = ap.byte_span() else { return Ok(()) };
        let (p0, p1) = match ap.space {
            Space::Hbm => (0, 1),
            _ => ap.partition_range(),
        };
        let covers_box = dense(ap, lo, hi);
        let shadow = match ap.space {
            Space::Hbm => &mut self.hbm,
            Space::Sbuf => &mut self.sbuf[core],
            Space::Psum => &mut self.psum[core],
        };
        let range = shadow.range(lo, hi);
        let probe = Probe { inst, core, clock, ap, write, covers_box, p0, p1, lo, hi };
        let mut scan = |list: &mut Vec<Vec<(u32, u32)>>| {
            scan_buckets(&mut self.records, &mut self.free, &self.horizon, list, range.clone(), &probe)
        };
        // A read conflicts only with writes; a write with both.
        if let Some(c) = scan(&mut shadow.writes) {
            return Err(c);
        }
        if write {
            if let Some(c) = scan(&mut shadow.reads) {
                return Err(c);
            }
        }
        let mut rec = Record { inst, operand, unit, seq, write, p0, p1, lo, hi, ap: *ap, alive: true, generation: 0 };
        let id = match self.free.pop() {
            Some(id) => {
                // Stale bucket entries of the retired record carry the old generation.
                rec.generation = self.records[id as usize].generation.wrapping_add(1);
                self.records[id as usize] = rec;
                id
            }
            None => {
                self.records.push(rec);
                self.records.len() as u32 - 1
            }
        };
        let generation = self.records[id as usize].generation;
        let target = if write { &mut shadow.writes } else { &mut shadow.reads };
        for b in range {
            let bucket = &mut target[b];
            // Purge entries that can never matter again while we are here, so
            // lists that are rarely scanned (reads of inputs) stay short.
            if bucket.len() >= 8 {
                let mut k = 0;
                while k < bucket.len() {
                    let (rid, g) = bucket[k];
                    let r = &mut self.records[rid as usize];
                    let stale = !r.alive || r.generation != g;
                    if !stale && self.horizon.get(r.unit as usize).is_some_and(|&h| h >= r.seq) {
                        r.alive = false;
                        if rid != id {
                            self.free.push(rid);
                        }
                    }
                    if stale || !r.alive {
                        bucket.swap_remove(k);
                    } else {
                        k += 1;
                    }
                }
            }
            bucket.push((id, generation));
        }
        Ok(())
    }
}
