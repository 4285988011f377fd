//! Memory allocators: a first-fit free list over the bytes of one partition
//! (SBUF and PSUM, per core) and a bump allocator for HBM.
//!
//! A tile always spans partitions `0..P` of its byte range, like NKI tiles; the
//! allocators therefore work on bytes per partition only.

/// Alignment of every tile start and size in SBUF/PSUM and of every HBM tensor.
pub const ALIGN: u64 = 64;

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Free byte ranges `[start, end)` of one partition, sorted and coalesced.
#[derive(Clone, Debug)]
pub(crate) struct FreeList {
    free: Vec<(u64, u64)>,
}

impl FreeList {
    pub(crate) fn new(capacity: u64) -> Self {
        FreeList { free: if capacity > 0 { vec![(0, capacity)] } else { Vec::new() } }
    }

    /// First fit: `place(block_start)` gives the first acceptable start at or
    /// after `block_start` for a `size`-byte block.
    pub(crate) fn alloc(&mut self, size: u64, place: impl Fn(u64) -> u64) -> Option<u64> {
        let (i, s, e, at) = self.free.iter().enumerate().find_map(|(i, &(s, e))| {
            let at = place(s);
            (at >= s && at.checked_add(size)? <= e).then_some((i, s, e, at))
        })?;
        let mut pieces = Vec::with_capacity(2);
        if at > s {
            pieces.push((s, at));
        }
        if at + size < e {
            pieces.push((at + size, e));
        }
        self.free.splice(i..=i, pieces);
        Some(at)
    }

    /// Returns `[start, start + size)`; false (and no change) if any of it is already free.
    pub(crate) fn release(&mut self, start: u64, size: u64) -> bool {
        let end = start + size;
        let i = self.free.partition_point(|&(s, _)| s < start);
        let overlaps_prev = i > 0 && self.free[i - 1].1 > start;
        let overlaps_next = self.free.get(i).is_some_and(|&(s, _)| s < end);
        if size == 0 || overlaps_prev || overlaps_next {
            return false;
        }
        self.free.insert(i, (start, end));
        if self.free.get(i + 1).is_some_and(|&(s, _)| s == end) {
            self.free[i].1 = self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].1 == start {
            self.free[i - 1].1 = self.free[i].1;
            self.free.remove(i);
        }
        true
    }

    pub(crate) fn free_bytes(&self) -> u64 {
        self.free.iter().map(|&(s, e)| e - s).sum()
    }

    pub(crate) fn largest(&self) -> u64 {
        self.free.iter().map(|&(s, e)| e - s).max().unwrap_or(0)
    }
}

/// Where a PSUM tile of `size` bytes per partition may start in a free block
/// starting at `s`. Before NeuronCore-v4 a matmul writes one 2 KiB bank
/// (HW-ISA-MATMUL), so a tile that fits a bank never straddles two and a
/// larger one starts on a bank boundary.
pub(crate) fn psum_place(s: u64, size: u64, bank: u64, generation: u32) -> u64 {
    let at = align_up(s, ALIGN);
    if generation >= 4 || bank == 0 {
        return at;
    }
    if size > bank {
        return align_up(s, bank);
    }
    if at / bank != (at + size - 1) / bank {
        align_up(at, bank)
    } else {
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_fit_and_coalesce() {
        let mut f = FreeList::new(1024);
        let a = f.alloc(256, |s| s).unwrap();
        let b = f.alloc(256, |s| s).unwrap();
        let c = f.alloc(256, |s| s).unwrap();
        assert_eq!((a, b, c), (0, 256, 512));
        assert!(f.release(b, 256));
        assert!(!f.release(b, 256), "double free is refused");
        assert_eq!(f.alloc(128, |s| s), Some(256));
        assert!(f.release(256, 128));
        assert!(f.release(a, 256));
        assert!(f.release(c, 256));
        assert_eq!((f.free_bytes(), f.largest()), (1024, 1024));
        assert_eq!(f.alloc(2048, |s| s), None);
    }

    #[test]
    fn psum_bank_rule() {
        assert_eq!(psum_place(1024, 1536, 2048, 3), 2048);
        assert_eq!(psum_place(1024, 1024, 2048, 3), 1024);
        assert_eq!(psum_place(1024, 1536, 2048, 4), 1024);
        assert_eq!(psum_place(64, 4096, 2048, 2), 2048);
    }

    proptest! {
        /// Random alloc/free sequences never hand out overlapping blocks and
        /// give all memory back at the end.
        #[test]
        fn no_overlap(ops in proptest::collection::vec((1u64..300, any::<bool>()), 1..60)) {
            let mut f = FreeList::new(4096);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (size, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (s, n) = live.remove(size as usize % live.len());
                    prop_assert!(f.release(s, n));
                } else if let Some(s) = f.alloc(size, |s| align_up(s, ALIGN)) {
                    prop_assert!(live.iter().all(|&(t, n)| s + size <= t || t + n <= s));
                    prop_assert_eq!(s % ALIGN, 0);
                    live.push((s, size));
                }
            }
            for (s, n) in live {
                prop_assert!(f.release(s, n));
            }
            prop_assert_eq!(f.largest(), 4096);
        }
    }
}
