//! Test oracle: a brute-force byte-level race checker, independent of the
//! tracker's indexes and pruning, for small programs.

use std::collections::{HashMap, HashSet};

use trainyard_isa::{Ap, Program, Role, Space};

type Cell = (Space, u16, u32, i64);

fn cells(ap: &Ap, core: u16) -> Vec<Cell> {
    let es = ap.dtype.size() as i64;
    let mut out = Vec::new();
    for p in 0..ap.partitions {
        for o in ap.free_offsets() {
            let (core, part, at) = match ap.space {
                Space::Hbm => (0, 0, ap.offset as i64 + (p as i64 * ap.partition_stride + o) * es),
                _ => (core, ap.start_partition + p, ap.offset as i64 + o * es),
            };
            out.extend((0..es).map(|b| (ap.space, core, part, at + b)));
        }
    }
    out
}

/// Instructions that finish before each instruction starts (deps, same-unit
/// predecessors, and everything before those), as bitsets.
fn happens_before(p: &Program) -> Vec<Vec<u64>> {
    let n = p.insts.len();
    let words = n.div_ceil(64);
    let mut hb: Vec<Vec<u64>> = Vec::with_capacity(n);
    let mut last: HashMap<(u16, trainyard_isa::Unit), usize> = HashMap::new();
    for (i, inst) in p.insts.iter().enumerate() {
        let mut set = vec![0u64; words];
        let prev = last.insert((inst.core, inst.op.unit()), i);
        for d in inst.deps.iter().map(|d| d.0 as usize).chain(prev) {
            assert!(d < i, "instruction {i} depends on later {d}");
            for (w, &x) in set.iter_mut().zip(&hb[d]) {
                *w |= x;
            }
            set[d / 64] |= 1 << (d % 64);
        }
        hb.push(set);
    }
    hb
}

fn has(set: &[u64], i: usize) -> bool {
    set[i / 64] >> (i % 64) & 1 == 1
}

/// Panics unless every pair of conflicting accesses is ordered, every
/// dependency is a real conflict, and no dependency is implied by the others.
pub(crate) fn assert_race_free(p: &Program) {
    assert_race_free_with_joins(p, &[]);
}

/// [`assert_race_free`] for a program with barriers: waits for and by the join
/// instructions `joins` need no conflict (they order everything by design).
pub(crate) fn assert_race_free_with_joins(p: &Program, joins: &[usize]) {
    let hb = happens_before(p);
    let mut by_cell: HashMap<Cell, Vec<(usize, bool)>> = HashMap::new();
    for (i, inst) in p.insts.iter().enumerate() {
        for (_, ap, role) in inst.op.operands() {
            for c in cells(ap, inst.core) {
                by_cell.entry(c).or_default().push((i, role == Role::Write));
            }
        }
    }
    let mut conflicts: HashSet<(usize, usize)> = HashSet::new();
    for accesses in by_cell.values() {
        for (x, &(i, wi)) in accesses.iter().enumerate() {
            for &(j, wj) in &accesses[x + 1..] {
                if i != j && (wi || wj) {
                    conflicts.insert((i.min(j), i.max(j)));
                }
            }
        }
    }
    for &(i, j) in &conflicts {
        assert!(has(&hb[j], i), "race: {} and {} are not ordered\n{:?}\n{:?}", i, j, p.insts[i], p.insts[j]);
    }
    let mut last: HashMap<(u16, trainyard_isa::Unit), usize> = HashMap::new();
    for (j, inst) in p.insts.iter().enumerate() {
        let prev = last.insert((inst.core, inst.op.unit()), j);
        for d in &inst.deps {
            let d = d.0 as usize;
            let join = joins.contains(&d) || joins.contains(&j);
            assert!(join || conflicts.contains(&(d, j)), "{j} waits for {d} without a conflict");
            let implied = prev.is_some_and(|q| q == d || has(&hb[q], d))
                || inst.deps.iter().map(|e| e.0 as usize).any(|e| e != d && has(&hb[e], d));
            assert!(!implied, "{j}: dependency on {d} is implied by another");
        }
    }
}
