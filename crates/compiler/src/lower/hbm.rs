//! HBM planning by liveness: intermediates share one scratch arena, each placed at an
//! offset that no other intermediate live at the same time uses.
//!
//! Every buffer is live over an inclusive range of steps (from the step that writes it
//! to the last that reads it). Placement is greedy by size: the largest buffers are
//! placed first, each at the lowest aligned offset that does not overlap a placed
//! buffer whose live range meets its own (the "greedy by size" offset planner of
//! inference runtimes). The arena's size is the highest end offset; it is never below
//! the peak of simultaneously live bytes, and usually close to it.

/// A buffer to place: its size and the steps it is live over (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// Bytes.
    pub bytes: u64,
    /// First step it is live in (written).
    pub first: usize,
    /// Last step it is live in (read).
    pub last: usize,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Offsets of `bufs` (in their order) and the arena size; offsets are multiples of `align`.
pub fn place(bufs: &[Live], align: u64) -> (Vec<u64>, u64) {
    let align = align.max(1);
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    order.sort_by(|&a, &b| bufs[b].bytes.cmp(&bufs[a].bytes).then(bufs[a].first.cmp(&bufs[b].first)).then(a.cmp(&b)));
    let mut offsets = vec![0u64; bufs.len()];
    // Placed buffers: (offset, end, index).
    let mut placed: Vec<(u64, u64, usize)> = Vec::with_capacity(bufs.len());
    let mut size = 0;
    for i in order {
        let b = bufs[i];
        let bytes = align_up(b.bytes.max(1), align);
        let mut conflicts: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&(_, _, j)| bufs[j].first <= b.last && b.first <= bufs[j].last)
            .map(|&(o, e, _)| (o, e))
            .collect();
        conflicts.sort_unstable();
        let mut at = 0u64;
        for (o, e) in conflicts {
            if at + bytes <= o {
                break;
            }
            at = at.max(align_up(e, align));
        }
        offsets[i] = at;
        placed.push((at, at + bytes, i));
        size = size.max(at + bytes);
    }
    (offsets, size)
}

/// The largest number of bytes live at one step.
pub fn peak_live(bufs: &[Live]) -> u64 {
    let steps = bufs.iter().map(|b| b.last + 1).max().unwrap_or(0);
    let mut delta = vec![0i128; steps + 1];
    for b in bufs {
        delta[b.first] += b.bytes as i128;
        delta[b.last + 1] -= b.bytes as i128;
    }
    let (mut live, mut peak) = (0i128, 0i128);
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn disjoint_lifetimes_share_bytes() {
        let bufs = [
            Live { bytes: 100, first: 0, last: 1 },
            Live { bytes: 100, first: 2, last: 3 },
            Live { bytes: 50, first: 1, last: 2 },
        ];
        let (off, size) = place(&bufs, 64);
        assert_eq!(off[0], off[1], "the first and second never live together");
        assert_ne!(off[2], off[0]);
        assert_eq!(size, 128 + 64);
        assert_eq!(peak_live(&bufs), 150);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn live_buffers_never_overlap(spec in proptest::collection::vec((1u64..5000, 0usize..20, 0usize..6), 1..40)) {
            let bufs: Vec<Live> = spec.iter().map(|&(bytes, first, len)| Live { bytes, first, last: first + len }).collect();
            let (off, size) = place(&bufs, 64);
            for (i, a) in bufs.iter().enumerate() {
                prop_assert_eq!(off[i] % 64, 0);
                prop_assert!(off[i] + a.bytes <= size);
                for (j, b) in bufs.iter().enumerate().skip(i + 1) {
                    if a.first <= b.last && b.first <= a.last {
                        prop_assert!(off[i] + a.bytes <= off[j] || off[j] + b.bytes <= off[i], "{i} and {j} overlap");
                    }
                }
            }
            prop_assert!(size >= peak_live(&bufs));
        }
    }
}
