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

struct Shadow {
    bucket_shift: u32,
    buckets: Vec<Vec<(u32, u32)>>,
}

impl Shadow {
    fn new(bytes: u64, min_shift: u32) -> Self {
        let mut shift = min_shift;
        while (bytes >> shift) > (1 << 20) {
            shift += 1;
        }
        Shadow { bucket_shift: shift, buckets: vec![Vec::new(); ((bytes >> shift) + 1) as usize] }
    }

    fn range(&self, lo: i64, hi: i64) -> std::ops::RangeInclusive<usize> {
        let last = self.buckets.len() - 1;
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

impl RaceChecker {
    pub fn new(hbm_bytes: u64, cores: usize, sbuf_bpp: u64, psum_bpp: u64) -> Self {
        RaceChecker {
            records: Vec::new(),
            free: Vec::new(),
            hbm: Shadow::new(hbm_bytes, 16),
            sbuf: (0..cores).map(|_| Shadow::new(sbuf_bpp, 11)).collect(),
            psum: (0..cores).map(|_| Shadow::new(psum_bpp, 11)).collect(),
        }
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
        for b in range.clone() {
            let bucket = &mut shadow.buckets[b];
            let mut k = 0;
            while k < bucket.len() {
                let (id, generation) = bucket[k];
                let id = id as usize;
                let r = &mut self.records[id];
                if !r.alive || r.generation != generation {
                    bucket.swap_remove(k);
                    continue;
                }
                k += 1;
                if r.p1 <= p0 || p1 <= r.p0 || r.hi <= lo || hi <= r.lo || r.inst == inst {
                    continue;
                }
                let ordered = clock.get(r.unit as usize).is_some_and(|&c| c >= r.seq);
                if !ordered {
                    if (r.write || write) && exact_overlap(&r.ap, ap) {
                        let space = match ap.space {
                            Space::Hbm => "hbm".to_string(),
                            s => format!("{s} of core {core}"),
                        };
                        return Err(Box::new(Conflict { earlier: r.clone(), space }));
                    }
                    continue;
                }
                // Retire records this access makes redundant: a covering write
                // after them, or a covering read of the same unit after a read.
                let covered = covers_box && p0 <= r.p0 && r.p1 <= p1 && lo <= r.lo && r.hi <= hi;
                if covered && (write || (!r.write && r.unit == unit)) {
                    r.alive = false;
                    self.free.push(id as u32);
                }
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
        for b in range {
            shadow.buckets[b].push((id, generation));
        }
        Ok(())
    }
}
