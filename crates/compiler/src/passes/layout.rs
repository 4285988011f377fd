//! The partition-axis choice: which axis of each value a lowering maps to the 128 SBUF
//! partitions.
//!
//! The Tensor engine contracts over the partition axis, so matrix-product operands put
//! the contraction axis there (A: its last axis, B: its second-to-last) and a product
//! comes out with its rows (M) on partitions; convolutions put channels there. Ops that
//! reduce along an axis (softmax, norms, reductions, arg-reductions, top-k, cumulative
//! sums) need that axis free, so they put their outermost other axis on partitions.
//! Elementwise ops and data movement keep their first input's choice. A value read by
//! ops that want different axes gets the choice of its producer; the lowering pays a
//! transpose at those readers.

use crate::graph::{Graph, Op, ValueId};

/// The outermost axis of a rank-`rank` value other than `avoid` (0 for scalars).
fn other_axis(rank: usize, avoid: &[usize]) -> usize {
    (0..rank).find(|a| !avoid.contains(a)).unwrap_or(0)
}

/// Sets [`crate::graph::Value::partition_axis`] of every value; returns how many
/// values read by some node want a different axis than they were given (each costs
/// the lowering a transpose).
pub fn choose_layouts(g: &mut Graph) -> usize {
    let mut want: Vec<Vec<usize>> = vec![vec![]; g.values.len()];
    let mut set: Vec<Option<usize>> = vec![None; g.values.len()];
    let rank = |g: &Graph, v: ValueId| g.value(v).ty.rank();
    for n in &g.nodes {
        let out = n.outputs.first().copied();
        let (ins, outp): (Vec<Option<usize>>, Option<usize>) = match &n.op {
            Op::MatMul | Op::FusedMatMul { .. } => {
                let (ra, rb) = (rank(g, n.inputs[0]), rank(g, n.inputs[1]));
                let ro = out.map_or(0, |o| rank(g, o));
                (vec![Some(ra.saturating_sub(1)), Some(rb.saturating_sub(2))], Some(ro.saturating_sub(2)))
            }
            Op::Gemm { trans_a, trans_b, .. } => {
                (vec![Some(if *trans_a { 0 } else { 1 }), Some(if *trans_b { 1 } else { 0 })], Some(0))
            }
            // Convolutions contract over input channels: X's axis 1 and the weight's
            // axis 1 (Conv, M×C×k…) or 0 (ConvTranspose, C×M×k…).
            Op::Conv(_) => (vec![Some(1), Some(1)], Some(1)),
            Op::ConvTranspose(_) => (vec![Some(1), Some(0)], Some(1)),
            Op::Pool(_) | Op::GlobalPool(_) | Op::BatchNorm { .. } | Op::Lrn { .. } => (vec![Some(1)], Some(1)),
            Op::Softmax { axis, .. }
            | Op::LpNorm { axis, .. }
            | Op::CumSum { axis, .. }
            | Op::ArgReduce { axis, .. }
            | Op::TopK { axis, .. } => {
                let r = rank(g, n.inputs[0]);
                let a = other_axis(r, &[*axis]);
                (vec![Some(a)], Some(a.min(out.map_or(0, |o| rank(g, o)).saturating_sub(1))))
            }
            Op::Attention(a) => {
                // Sequence rows on partitions (the flash-attention kernel's layout).
                let s = if a.packed { 1 } else { 2 };
                (vec![Some(s), Some(s), Some(s)], Some(s))
            }
            Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } => {
                let r = rank(g, n.inputs[0]);
                let a = other_axis(r, &(*axis..r).collect::<Vec<_>>());
                (vec![Some(a)], Some(a))
            }
            Op::Reduce { axes, keepdims, .. } => {
                let r = rank(g, n.inputs[0]);
                let a = other_axis(r, axes);
                let o = if *keepdims { a } else { a - axes.iter().filter(|&&x| x < a).count().min(a) };
                (vec![Some(a)], Some(o.min(out.map_or(0, |v| rank(g, v)).saturating_sub(1))))
            }
            _ => {
                // Keep the first input's choice where the output has that axis.
                let first = n.inputs.first().and_then(|&i| set[i.0 as usize]);
                let ro = out.map_or(0, |o| rank(g, o));
                (vec![], Some(first.filter(|&a| a < ro).unwrap_or(0)))
            }
        };
        for (&i, w) in n.inputs.iter().zip(&ins) {
            if let Some(w) = w {
                want[i.0 as usize].push(*w);
                if set[i.0 as usize].is_none() && g.value(i).producer.is_none() {
                    set[i.0 as usize] = Some(*w);
                }
            } else if set[i.0 as usize].is_none() && g.value(i).producer.is_none() {
                set[i.0 as usize] = Some(0);
            }
        }
        for &o in &n.outputs {
            set[o.0 as usize] = Some(outp.unwrap_or(0).min(rank(g, o).saturating_sub(1)));
        }
    }
    let mut conflicts = 0;
    for (k, v) in g.values.iter_mut().enumerate() {
        let axis = set[k].unwrap_or(0).min(v.ty.rank().saturating_sub(1));
        v.partition_axis = Some(axis);
        conflicts += want[k].iter().filter(|&&w| w != axis).count();
    }
    conflicts
}
