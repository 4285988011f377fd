//! Tests of the dependency tracker, against hand-worked cases and the brute-force race checker.

use super::*;
use crate::builder::KernelBuilder;
use crate::check::assert_race_free;
use proptest::prelude::*;
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Engine, Program};

const VEC: Unit = Unit::Engine(Engine::Vector);
const ACT: Unit = Unit::Engine(Engine::Scalar);
const POOL: Unit = Unit::Engine(Engine::GpSimd);

fn cols(c0: u32, n: u32, step: i64) -> Ap {
    Ap::new(Space::Sbuf, 0, 128, 0, c0 as u64 * 4, &[Dim { stride: step, size: n }], DType::F32)
}

fn ids(v: &[u32]) -> Vec<InstId> {
    v.iter().map(|&i| InstId(i)).collect()
}

fn overlap(a: &Ap, b: &Ap) -> bool {
    let (Some(a), Some(b)) = (Access::new(a, Role::Read, 0), Access::new(b, Role::Read, 0)) else { return false };
    a.overlaps(&b)
}

/// Replays a built program through a fresh tracker: the same dependencies
/// come out, and the tracker is left for inspection.
fn replay(p: &Program) -> DepTracker {
    let mut t = DepTracker::default();
    for (i, inst) in p.insts.iter().enumerate() {
        let ops: Vec<(Ap, Role)> = inst.op.operands().into_iter().map(|(_, ap, role)| (*ap, role)).collect();
        assert_eq!(t.add(inst.core, inst.op.unit(), &ops), inst.deps, "instruction {i}");
    }
    t
}

#[test]
fn exact_test_separates_even_and_odd_columns() {
    let even = cols(0, 64, 2);
    let odd = cols(1, 64, 2);
    assert!(!overlap(&even, &odd));
    assert!(overlap(&even, &cols(0, 128, 1)));
    assert!(overlap(&odd, &cols(63, 1, 1)));
    assert!(!overlap(&odd, &cols(64, 1, 1)));
}

#[test]
fn hbm_runs_include_the_row_axis() {
    // Columns 0..4 and 4..8 of an 8-wide matrix: boxes intersect, bytes do not.
    let left = Ap::new(Space::Hbm, 0, 4, 8, 0, &[Dim { stride: 1, size: 4 }], DType::F32);
    let right = Ap::new(Space::Hbm, 0, 4, 8, 16, &[Dim { stride: 1, size: 4 }], DType::F32);
    assert!(!overlap(&left, &right));
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

#[test]
fn partial_writes_shrink_and_split_records() {
    let mut t = DepTracker::default();
    let strided = cols(0, 64, 2); // even columns of 0..128
    t.add(0, VEC, &[(strided, Role::Read)]); // 0
                                             // Interior: the read splits in two; the edges are tightened to its bytes.
    assert_eq!(t.add(0, POOL, &[(cols(40, 20, 1), Role::Write)]), ids(&[0])); // 1
    assert_eq!(t.live_records(), 3);
    // Only partitions 0..64 of the left part: what is left of it splits again.
    let top = Ap::new(Space::Sbuf, 0, 64, 0, 0, &[Dim { stride: 1, size: 40 }], DType::F32);
    assert_eq!(t.add(0, POOL, &[(top, Role::Write)]), vec![]); // 2, after 0 through 1
    assert_eq!(t.live_records(), 4);
    // The right part still holds column 64: a write there waits for the read, and splits it.
    assert_eq!(t.add(0, ACT, &[(cols(64, 1, 1), Role::Write)]), ids(&[0])); // 3
    assert_eq!(t.live_records(), 6);
    // Odd columns: no byte of what is left of the read.
    assert_eq!(t.add(0, ACT, &[(cols(65, 30, 2), Role::Write)]), vec![]); // 4
                                                                          // A write over all columns retires everything.
    t.add(0, VEC, &[(cols(0, 128, 1), Role::Write)]);
    assert_eq!(t.live_records(), 1);
}

#[test]
fn cuts_keep_sub_element_bytes() {
    let byte = |at: u64| Ap::new(Space::Sbuf, 0, 128, 0, at, &[Dim { stride: 1, size: 1 }], DType::U8);
    let mut t = DepTracker::default();
    // The bf16 high halves of f32 columns 0..8: bytes 2..4, 6..8, ..., 30..32.
    let hi = Ap::new(Space::Sbuf, 0, 128, 0, 2, &[Dim { stride: 2, size: 8 }], DType::Bf16);
    t.add(0, VEC, &[(hi, Role::Read)]); // 0
    assert_eq!(t.add(0, POOL, &[(cols(0, 2, 1), Role::Write)]), ids(&[0])); // 1: what is left is 10..32
    assert_eq!(t.add(0, ACT, &[(byte(9), Role::Write)]), vec![]);
    assert_eq!(t.add(0, ACT, &[(byte(8), Role::Write)]), vec![]);
    assert_eq!(t.add(0, Unit::Dma(0), &[(byte(10), Role::Write)]), ids(&[0]));
    assert_eq!(t.add(0, Unit::Dma(1), &[(byte(31), Role::Write)]), ids(&[0]));
}

#[test]
fn reads_stand_in_only_for_reads_they_follow() {
    let mut t = DepTracker::default();
    let whole = cols(0, 128, 1);
    t.add(0, VEC, &[(whole, Role::Write)]); // 0
    t.add(0, ACT, &[(cols(0, 64, 2), Role::Read)]); // 1
                                                    // POOL does not follow 1: both reads stay.
    t.add(0, POOL, &[(whole, Role::Read)]); // 2
    assert_eq!(t.live_records(), 3);
    // A covering read on ACT follows 1 (same queue), not 2.
    t.add(0, ACT, &[(whole, Role::Read)]); // 3: retires 1 only
    assert_eq!(t.live_records(), 3);
    assert_eq!(t.add(0, VEC, &[(whole, Role::Write)]), ids(&[2, 3])); // 4
    assert_eq!(t.live_records(), 1);
    // A repeated strided read of one unit replaces the last.
    for _ in 0..5 {
        t.add(0, ACT, &[(cols(1, 64, 2), Role::Read)]);
    }
    assert_eq!(t.live_records(), 2);
    // A repeated strided write replaces the last access of its pattern, on any unit: it waits for it.
    for u in [VEC, ACT, POOL] {
        assert_eq!(t.add(0, u, &[(cols(1, 64, 2), Role::Write)]).len(), 1);
        assert_eq!(t.live_records(), 2);
    }
}

/// The flash-attention pattern: a strided read of a whole tile, then
/// dense writes that each cover an eighth of it, over and over. Every
/// read is retired by the last write of its round, so the number of
/// records (and the cost of each query) stays flat.
#[test]
fn strided_reads_overwritten_piecewise_stay_bounded() {
    let mut t = DepTracker::default();
    let hi = Ap::new(Space::Sbuf, 0, 128, 0, 2, &[Dim { stride: 2, size: 4096 }], DType::Bf16);
    let red = Ap::sbuf(0, 128, 1 << 15, &[1], DType::F32);
    let chunk = |c: u32| Ap::sbuf(0, 128, c as u64 * 2048, &[512], DType::F32);
    let mut most = 0;
    for round in 0..2000u32 {
        let read = t.add(0, VEC, &[(hi, Role::Read), (red, Role::Write)]);
        for c in 0..8 {
            let deps = t.add(0, POOL, &[(chunk(c), Role::Write)]);
            // The first chunk waits for this round's read; the rest follow through in-order issue.
            assert_eq!(deps.len(), usize::from(c == 0), "round {round} chunk {c}");
            most = most.max(t.live_records());
        }
        if round > 0 {
            assert_eq!(read.len(), 1, "round {round}: RAW on the last chunk write only");
        }
    }
    // The reduce's output, the read while it lasts, eight chunk writes.
    assert!(most <= 10, "{most} live records");
    assert_eq!(t.live_records(), 9);
}

#[test]
fn piecewise_overwrites_build_race_free_and_replay() {
    let mut kb = KernelBuilder::new("t", &ChipSpec::by_name("trn2").unwrap());
    let s = kb.sbuf_tile(&[64, 32], DType::F32).unwrap();
    let ps = kb.psum_tile(&[64, 32], DType::F32).unwrap();
    let red = kb.sbuf_tile(&[64, 1], DType::F32).unwrap();
    let src = kb.sbuf_tile(&[64, 4], DType::F32).unwrap();
    for round in 0..24 {
        let hi = s.view().bitcast(DType::Bf16).slice_step(1, 1..64, 2);
        kb.tensor_reduce(Engine::Vector, AluOp::Max, &red, hi, 1, false).unwrap();
        kb.copy(Engine::Scalar, &ps, &s).unwrap();
        for c in 0..8 {
            let e = if (round + c) % 3 == 0 { Engine::Vector } else { Engine::GpSimd };
            kb.copy(e, s.cols(c * 4..c * 4 + 4), &src).unwrap();
        }
        // A write cutting across the chunks: half the partitions, half the columns.
        let half = if round % 2 == 0 { 0..16 } else { 16..32 };
        kb.memset(Engine::Vector, s.part(32..64).cols(half), 0.0).unwrap();
    }
    let p = kb.finish().unwrap();
    assert_race_free(&p);
    let t = replay(&p);
    // The reduce's output, the PSUM copy, eight chunks (four of them cut by
    // the last memset), the memset, and the last read of `src` per engine.
    assert!(t.live_records() <= 13, "{} live records", t.live_records());
}

/// Bytes of `ap` in `window`, one by one.
fn brute_bytes(ap: &Ap, window: (i64, i64)) -> BTreeSet<i64> {
    let es = ap.dtype.size() as i64;
    let rows = if ap.space == Space::Hbm { ap.partitions } else { 1 };
    let mut out = BTreeSet::new();
    for r in 0..rows as i64 {
        for o in ap.free_offsets() {
            let at = ap.offset as i64 + (r * ap.partition_stride + o) * es;
            out.extend((at..at + es).filter(|b| (window.0..window.1).contains(b)));
        }
    }
    out
}

fn any_ap() -> impl Strategy<Value = Ap> {
    let dim = (-6i64..7, 1u32..5).prop_map(|(stride, size)| Dim { stride, size });
    (any::<bool>(), 1u32..4, -8i64..9, proptest::collection::vec(dim, 1..4), 0usize..3).prop_map(
        |(hbm, parts, pstride, dims, dt)| {
            let dtype = [DType::U8, DType::Bf16, DType::F32][dt];
            let (space, pstride) = if hbm { (Space::Hbm, pstride) } else { (Space::Sbuf, 0) };
            // Far enough from 0 that negative strides stay in memory.
            Ap::new(space, 0, parts, pstride, 512, &dims, dtype)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// The windowed run walk yields exactly the pattern's bytes in the window, and their extent.
    #[test]
    fn byte_runs_match_brute_force(ap in any_ap(), lo in 400i64..700, len in 1i64..200) {
        let window = (lo, lo + len);
        let runs = byte_runs(&ap, window).unwrap();
        let mut got = BTreeSet::new();
        for &(a, b) in &runs {
            prop_assert!(a < window.1 && b > window.0, "run {a}..{b} outside {window:?}");
            got.extend((a.max(window.0)..b.min(window.1)).collect::<Vec<_>>());
        }
        let want = brute_bytes(&ap, window);
        let extent = run_extent(&ap, window).unwrap().map(|(lo, hi)| (lo.max(window.0), hi.min(window.1)));
        prop_assert_eq!(extent, want.first().zip(want.last()).map(|(&lo, &hi)| (lo, hi + 1)));
        prop_assert_eq!(got, want);
    }
}

/// One random instruction over views of a `[16, 32]` f32 SBUF tile, an HBM
/// tensor of the same shape, and a flat HBM buffer for loads and stores.
#[derive(Clone, Debug)]
enum Step {
    /// Between two of the `[8, 8]` views.
    Copy {
        engine: usize,
        dst: usize,
        src: usize,
    },
    Memset {
        engine: usize,
        dst: usize,
    },
    /// Between an `[8, 8]` view of the tile and one of the HBM tensor.
    Dma {
        queue: u8,
        dst: usize,
        src: usize,
        load: bool,
    },
    /// Between any view of the tile and the flat buffer.
    Flat {
        queue: u8,
        view: usize,
        load: bool,
    },
}

/// The first `SQUARE` views are `[8, 8]`; the others are narrow, odd or sub-element.
const SQUARE: usize = 12;
const VIEWS: usize = 20;

fn step() -> impl Strategy<Value = Step> {
    let (sq, v) = (0usize..SQUARE, 0usize..VIEWS);
    prop_oneof![
        (0usize..3, sq.clone(), sq.clone()).prop_map(|(engine, dst, src)| Step::Copy { engine, dst, src }),
        (0usize..3, v.clone()).prop_map(|(engine, dst)| Step::Memset { engine, dst }),
        (0u8..2, sq.clone(), sq, any::<bool>()).prop_map(|(queue, dst, src, load)| Step::Dma { queue, dst, src, load }),
        (0u8..2, v, any::<bool>()).prop_map(|(queue, view, load)| Step::Flat { queue, view, load }),
    ]
}

/// Views that cut each other every which way.
fn views(x: &crate::View) -> Vec<crate::View> {
    let v = vec![
        x.rows(0..8).cols(0..8),
        x.rows(0..8).cols(8..16),
        x.rows(4..12).cols(4..12),
        x.rows(8..16).cols(0..8),
        x.rows(2..10).cols(20..28),
        x.rows(0..8).slice_step(1, 0..16, 2),
        x.rows(0..8).slice_step(1, 1..16, 2),
        x.rows(6..14).slice_step(1, 8..32, 3),
        x.rows(0..8).cols(0..8).bitcast(DType::Bf16).slice_step(1, 1..16, 2),
        x.rows(8..16).cols(16..32).reshape_free(&[4, 4]).slice_step(1, 0..4, 2),
        x.rows(0..8).cols(24..25).broadcast_free(8),
        x.rows(8..16).cols(8..16),
        x.cols(7..8),
        x.cols(8..9),
        x.rows(0..4),
        x.rows(4..8).cols(3..5),
        x.bitcast(DType::Bf16).cols(15..17),
        x.rows(2..16).bitcast(DType::U8).cols(29..35),
        x.slice_step(1, 3..32, 4),
        x.rows(12..16).cols(16..17),
    ];
    assert_eq!(v.len(), VIEWS);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// Random programs of partial overwrites: every conflicting pair is
    /// ordered, every dependency is a real conflict and none is implied.
    #[test]
    fn random_partial_overwrites_are_race_free_and_minimal(steps in proptest::collection::vec(step(), 1..60)) {
        let mut kb = KernelBuilder::new("t", &ChipSpec::by_name("trn2").unwrap());
        let s = kb.sbuf_tile(&[16, 32], DType::F32).unwrap();
        let h = kb.hbm_scratch("h", &[16, 32], DType::F32).unwrap();
        let flat = kb.hbm_scratch("flat", &[1, 2048], DType::U8).unwrap();
        let sv = views(&s.view());
        let hv = views(&h.view());
        let engines = [Engine::Vector, Engine::Scalar, Engine::GpSimd];
        for st in steps {
            let r = match st {
                Step::Copy { engine, dst, src } => kb.copy(engines[engine], &sv[dst], &sv[src]),
                Step::Memset { engine, dst } => kb.memset(engines[engine], &sv[dst], 0.0),
                Step::Dma { queue, dst, src, load: true } => kb.dma_on(queue, &sv[dst], &hv[src]),
                Step::Dma { queue, dst, src, load: false } => kb.dma_on(queue, &hv[dst], &sv[src]),
                Step::Flat { queue, view, load } => {
                    let dtype = sv[view].dtype();
                    let f = flat.cols(0..sv[view].elements() as usize * dtype.size()).bitcast(dtype);
                    if load { kb.dma_on(queue, &sv[view], f) } else { kb.dma_on(queue, f, &sv[view]) }
                }
            };
            prop_assert!(r.is_ok(), "{:?}", r);
        }
        assert_race_free(&kb.finish_unchecked());
    }
}
