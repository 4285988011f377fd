//! Layer reuse: the instruction streams of layers `3..L` copied from layer 2's instead of
//! being emitted through the kernel builder (whose dependency tracking dominates the build
//! time of large models).
//!
//! Every decoder layer emits the same kernels over the same scratch tensors; only its
//! weights and caches differ, and those are declared layer after layer in the same order and
//! sizes, so on each chip layer `l + 1`'s tensors are layer `l`'s shifted by a fixed stride.
//! The builder itself is deterministic: what it emits for a layer depends on the layer's
//! calls and on the records of the last accesses to each address, which after layer `l`
//! come from layer `l` (or from before layer 0, for addresses no layer touches again) and
//! are layer `l − 1`'s shifted. So the copy is exact when the builder emitted layer 2 as
//! layer 1 shifted — same instructions on the same cores, addresses of the layer's own
//! tensors moved by the stride, dependencies on instructions of layers ≥ 0 moved by one
//! layer's length and dependencies on earlier instructions kept — which [`splice`] checks
//! before copying anything (`false` when not: the caller then builds every layer). The
//! instructions after the layers (final norm, LM head) move by the inserted length, their
//! dependencies likewise. The tests compare reused and fully built programs instruction by
//! instruction.

use std::ops::Range;

use trainyard_isa::{Ap, Inst, Program, Space};

use super::OpSpan;

/// One HBM tensor a layer declared: its chip and bytes `[offset, offset + bytes)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Decl {
    pub chip: u32,
    pub offset: u64,
    pub bytes: u64,
}

/// What the emitter recorded while building layers 0, 1, 2 (and declaring the rest).
pub(super) struct Built {
    /// Instruction ranges of layers 0, 1, 2.
    pub layers: [Range<u32>; 3],
    /// Tensors each layer declared, in order (every layer, emitted or not).
    pub decls: Vec<Vec<Decl>>,
}

/// Per-chip address strides between consecutive layers, as `(region of layer 1, stride)`.
struct Strides {
    /// `(start, end, stride)` of layer 1's tensors on each chip that has any.
    regions: Vec<(u64, u64, u64)>,
}

impl Strides {
    /// Strides from layers 1 and 2 if every layer's declarations are layer 1's shifted.
    fn new(decls: &[Vec<Decl>]) -> Option<Strides> {
        let (one, two) = (decls.get(1)?, decls.get(2)?);
        let mut regions: Vec<(u32, u64, u64, u64)> = Vec::new();
        if one.len() != two.len() {
            return None;
        }
        for (a, b) in one.iter().zip(two) {
            if a.chip != b.chip || a.bytes != b.bytes || b.offset < a.offset {
                return None;
            }
            let stride = b.offset - a.offset;
            match regions.iter_mut().find(|r| r.0 == a.chip) {
                Some(r) if r.3 != stride => return None,
                Some(r) => {
                    r.1 = r.1.min(a.offset);
                    r.2 = r.2.max(a.offset + a.bytes);
                }
                None => regions.push((a.chip, a.offset, a.offset + a.bytes, stride)),
            }
        }
        // A layer's region must not reach into the next one's.
        if regions.iter().any(|r| r.2 - r.1 > r.3) {
            return None;
        }
        let strides = Strides { regions: regions.iter().map(|r| (r.1, r.2, r.3)).collect() };
        for (l, layer) in decls.iter().enumerate().skip(3) {
            if layer.len() != one.len() {
                return None;
            }
            for (a, b) in one.iter().zip(layer) {
                if a.chip != b.chip || a.bytes != b.bytes || strides.shifted(a.offset, 1, l - 1)? != b.offset {
                    return None;
                }
            }
        }
        Some(strides)
    }

    /// `addr` moved from layer `from` by `by` layers if it lies in layer `from`'s tensors;
    /// `None` if it lies in no layer's region of a chip (then it is not moved).
    fn shifted(&self, addr: u64, from: usize, by: usize) -> Option<u64> {
        self.regions.iter().find_map(|&(start, end, stride)| {
            let base = start.checked_add(stride.checked_mul(from.checked_sub(1)? as u64)?)?;
            let top = end + stride * (from - 1) as u64;
            (base..top).contains(&addr).then(|| addr + stride * by as u64)
        })
    }
}

/// `inst` of layer `from` moved by `by` layers: its own tensors' addresses by the strides,
/// dependencies on instructions from `first` (layer 0's start) on by `by · len`.
fn moved(inst: &Inst, s: &Strides, from: usize, by: usize, first: u32, len: u32) -> Option<Inst> {
    let mut out = inst.clone();
    for ap in out.op.operands_mut() {
        move_ap(ap, s, from, by);
    }
    for d in &mut out.deps {
        if d.0 >= first {
            d.0 = d.0.checked_add(len.checked_mul(by as u32)?)?;
        }
    }
    Some(out)
}

fn move_ap(ap: &mut Ap, s: &Strides, from: usize, by: usize) {
    if ap.space == Space::Hbm {
        if let Some(a) = s.shifted(ap.offset, from, by) {
            ap.offset = a;
        }
    }
}

/// Inserts layers `3..layers` into a program whose builder emitted layers 0–2 (and the
/// head after them), if layer 2 is layer 1 shifted; returns `false` (program untouched)
/// otherwise. `ops` (spans in instruction order) are updated to match.
pub(super) fn splice(program: &mut Program, ops: &mut Vec<OpSpan>, built: &Built, layers: usize) -> bool {
    let [l0, l1, l2] = &built.layers;
    let len = l1.end - l1.start;
    if l2.end - l2.start != len || l1.start != l0.end || l2.start != l1.end || layers <= 3 {
        return false;
    }
    let Some(strides) = Strides::new(&built.decls) else { return false };
    let first = l0.start;
    let insts = &program.insts;
    // Layer 2 must be layer 1 moved by one layer.
    for i in l1.clone() {
        let (a, b) = (&insts[i as usize], &insts[(i + len) as usize]);
        if moved(a, &strides, 1, 1, first, len).as_ref() != Some(b) {
            return false;
        }
    }
    // The head must not touch any layer's tensors.
    let mut spans: Vec<(u64, u64)> =
        built.decls.iter().take(3).flatten().map(|d| (d.offset, d.offset + d.bytes)).collect();
    spans.sort_unstable();
    let in_layers = |addr: u64| {
        let i = spans.partition_point(|s| s.0 <= addr);
        i > 0 && addr < spans[i - 1].1
    };
    let head = l2.end as usize..insts.len();
    for inst in &insts[head.clone()] {
        if inst.op.operands().into_iter().any(|(_, ap, _)| ap.space == Space::Hbm && in_layers(ap.offset)) {
            return false;
        }
    }
    let extra = layers - 3;
    let Some(insert) = (len as usize).checked_mul(extra) else { return false };
    let mut out: Vec<Inst> = Vec::with_capacity(insts.len() + insert);
    out.extend_from_slice(&insts[..l2.end as usize]);
    for by in 1..=extra {
        for inst in &insts[l2.start as usize..l2.end as usize] {
            match moved(inst, &strides, 2, by, first, len) {
                // Waits point backwards, as the builder's do (so no cycle of waits appears).
                Some(m) if m.deps.iter().all(|d| (d.0 as usize) < out.len()) => out.push(m),
                _ => return false,
            }
        }
    }
    for inst in &insts[head] {
        let mut m = inst.clone();
        for d in &mut m.deps {
            if d.0 >= first {
                d.0 += len * extra as u32;
            }
        }
        out.push(m);
    }
    program.insts = out;
    // Spans: layer 2's copied per inserted layer, the head's moved.
    let shift = len * extra as u32;
    let mut spans: Vec<OpSpan> = Vec::with_capacity(ops.len() + extra * ops.len() / 4);
    let (before, after): (Vec<OpSpan>, Vec<OpSpan>) = ops.drain(..).partition(|o| o.insts.start < l2.end);
    let layer2: Vec<OpSpan> = before.iter().filter(|o| o.insts.start >= l2.start).cloned().collect();
    spans.extend(before);
    for by in 1..=extra {
        for o in &layer2 {
            let d = len * by as u32;
            spans.push(OpSpan {
                label: o.label.clone(),
                category: o.category,
                layer: o.layer.map(|l| l + by as u32),
                insts: o.insts.start + d..o.insts.end + d,
            });
        }
    }
    spans.extend(after.into_iter().map(|o| OpSpan { insts: o.insts.start + shift..o.insts.end + shift, ..o }));
    *ops = spans;
    true
}
