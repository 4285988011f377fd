//! Where a step's time goes: the critical path of a run split over the ops of its program.
//!
//! The simulator records, for every instruction, the one whose completion let it start
//! (`critical_pred`); following those links back from the last instruction gives the chain
//! that decided the total time. Each step of the chain accounts for the time from the end
//! of the previous step (or its own start, if later) to its end, and any gap before it
//! (semaphore or DMA trigger latency) is charged to it too, so the shares of all ops sum to
//! the step's total. An op that overlaps entirely with others on the critical path gets no
//! share: the shares say what to speed up, not what keeps engines busy.

use std::collections::BTreeMap;

use serde::Serialize;
use trainyard_compiler::llm::program::{OpCategory, OpSpan};
use trainyard_sim::RunResult;

/// Shares (fractions of the step's time, summing to 1) per category, op and collective.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// Per op category (`matmul`, `attention`, `collective`, ...).
    pub by_category: BTreeMap<String, f64>,
    /// Per op label (`q_proj`, `attention`, `all_reduce.mlp`, ...), summed over layers.
    pub by_op: BTreeMap<String, f64>,
    /// Per collective op label (the `collective` category's ops).
    pub collectives: BTreeMap<String, f64>,
}

impl Breakdown {
    /// The critical-path shares of `run` over `ops` (instruction ranges in order).
    pub fn of_run(ops: &[OpSpan], run: &RunResult) -> Breakdown {
        Breakdown::of_run_weighted(ops, run, |_| 1)
    }

    /// [`Breakdown::of_run`] with each op's critical-path time counted `weight(op)` times
    /// (an op standing for that many identical ones, as a timed layer for later layers).
    pub fn of_run_weighted(ops: &[OpSpan], run: &RunResult, weight: impl Fn(&OpSpan) -> u64) -> Breakdown {
        let mut ns_by_op: Vec<u64> = vec![0; ops.len()];
        let mut prev_end = 0u64;
        for id in &run.critical_path {
            let Some(ev) = run.events.get(id.0 as usize) else { continue };
            let seg = ev.end_ps.saturating_sub(prev_end.min(ev.end_ps));
            prev_end = prev_end.max(ev.end_ps);
            if let Some(i) = op_of(ops, id.0) {
                ns_by_op[i] += seg;
            }
        }
        for (ps, op) in ns_by_op.iter_mut().zip(ops) {
            *ps *= weight(op);
        }
        let total: u64 = ns_by_op.iter().sum();
        let mut b = Breakdown::default();
        if total == 0 {
            return b;
        }
        for (op, &ps) in ops.iter().zip(&ns_by_op) {
            let share = ps as f64 / total as f64;
            *b.by_category.entry(op.category.name().to_string()).or_default() += share;
            *b.by_op.entry(op.label.clone()).or_default() += share;
            if op.category == OpCategory::Collective {
                *b.collectives.entry(op.label.clone()).or_default() += share;
            }
        }
        b
    }

    /// The entries of `map` largest first.
    pub fn ranked(map: &BTreeMap<String, f64>) -> Vec<(&str, f64)> {
        let mut v: Vec<(&str, f64)> = map.iter().map(|(k, &s)| (k.as_str(), s)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// The op whose instruction range holds `inst` (ops are sorted and disjoint).
fn op_of(ops: &[OpSpan], inst: u32) -> Option<usize> {
    let i = ops.partition_point(|o| o.insts.end <= inst);
    ops.get(i).filter(|o| o.insts.contains(&inst)).map(|_| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_isa::InstId;
    use trainyard_sim::InstEvent;

    fn span(label: &str, category: OpCategory, insts: std::ops::Range<u32>) -> OpSpan {
        OpSpan { label: label.into(), category, layer: None, insts }
    }

    #[test]
    fn critical_path_time_is_split_over_ops() {
        let ops = [
            span("q_proj", OpCategory::Matmul, 0..2),
            span("all_reduce.attn", OpCategory::Collective, 2..3),
            span("mlp", OpCategory::Mlp, 3..4),
        ];
        let ev = |start_ps, end_ps| InstEvent { start_ps, end_ps, critical_pred: None };
        let run = RunResult {
            total_ps: 1000,
            events: vec![ev(0, 100), ev(0, 300), ev(350, 600), ev(600, 1000)],
            critical_path: vec![InstId(1), InstId(2), InstId(3)],
            ..RunResult::default()
        };
        let b = Breakdown::of_run(&ops, &run);
        // q_proj 300 ps, the collective 300 (its 50 ps wait included), mlp 400.
        assert!((b.by_op["q_proj"] - 0.3).abs() < 1e-12);
        assert!((b.collectives["all_reduce.attn"] - 0.3).abs() < 1e-12);
        assert!((b.by_category["mlp"] - 0.4).abs() < 1e-12);
        assert!((b.by_category.values().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(Breakdown::ranked(&b.by_op)[0].0, "mlp");
        assert_eq!(op_of(&ops, 2), Some(1));
        assert_eq!(op_of(&ops, 9), None);
    }
}
