//! One Perfetto trace of several steps (prefill, then decode): each step's engine and DMA
//! tracks as `runtime::trace_json` makes them, shifted to follow the previous step, plus an
//! `ops` track per step with one slice per op (label, category, layer).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use trainyard_arch::ChipSpec;
use trainyard_compiler::llm::program::DecoderProgram;
use trainyard_sim::RunResult;

/// Process ids of step `i` start at `i · PID_STRIDE` (the runtime numbers cores from 1).
const PID_STRIDE: u64 = 1 << 16;

/// Writes the steps `(name, program, run)` one after another into a trace at `path`.
pub fn write(path: &Path, chip: &ChipSpec, steps: &[(&str, &DecoderProgram, &RunResult)]) -> Result<()> {
    let mut events: Vec<Value> = Vec::new();
    let mut offset_us = 0.0;
    for (i, (name, dp, run)) in steps.iter().enumerate() {
        let base = i as u64 * PID_STRIDE;
        let v = trainyard_runtime::try_trace_json(chip, &dp.program, run)?;
        for mut e in v["traceEvents"].as_array().cloned().unwrap_or_default() {
            if let Some(pid) = e["pid"].as_u64() {
                e["pid"] = json!(pid + base);
            }
            if let Some(ts) = e["ts"].as_f64() {
                e["ts"] = json!(ts + offset_us);
            }
            if e["name"] == "process_name" {
                let old = e["args"]["name"].as_str().unwrap_or_default().to_string();
                e["args"]["name"] = json!(format!("{name}: {old}"));
            }
            events.push(e);
        }
        // The ops track: one async slice per op, from its first start to its last end.
        let ops_pid = base + PID_STRIDE - 1;
        events.push(json!({"ph": "M", "name": "process_name", "pid": ops_pid, "tid": 0,
            "args": {"name": format!("{name}: ops")}}));
        for (k, op) in dp.ops.iter().enumerate() {
            let evs = op.insts.clone().filter_map(|id| run.events.get(id as usize));
            let (start, end) = evs.fold((u64::MAX, 0u64), |(s, e), ev| (s.min(ev.start_ps), e.max(ev.end_ps)));
            if start > end {
                continue;
            }
            let label = match op.layer {
                Some(l) => format!("{}[{l}]", op.label),
                None => op.label.clone(),
            };
            let common = json!({"cat": op.category.name(), "name": label, "id": k, "pid": ops_pid, "tid": 0});
            let mut b = common.clone();
            b["ph"] = json!("b");
            b["ts"] = json!(start as f64 / 1e6 + offset_us);
            let mut e = common;
            e["ph"] = json!("e");
            e["ts"] = json!(end as f64 / 1e6 + offset_us);
            events.push(b);
            events.push(e);
        }
        offset_us += run.total_ps as f64 / 1e6;
    }
    let v = json!({"traceEvents": events, "displayTimeUnit": "ns"});
    let text = serde_json::to_vec(&v)?;
    std::fs::write(path, text).with_context(|| format!("cannot write trace {}", path.display()))
}
