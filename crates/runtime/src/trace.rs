//! Chrome / Perfetto trace-event JSON of a run: one process per core, one
//! track per engine and DMA queue, one complete event per instruction.
//! Opens in <https://ui.perfetto.dev> and `chrome://tracing`.

use std::path::Path;

use serde_json::{json, Map, Value};
use trainyard_arch::ChipSpec;
use trainyard_isa::{Engine, Program, Unit};
use trainyard_sim::RunResult;

use crate::fsutil::write_atomic_with;
use crate::RuntimeError;

/// Track id of a unit within its core's process: engines first, then queues.
fn tid(unit: Unit) -> u64 {
    match unit {
        Unit::Engine(e) => 1 + Engine::ALL.iter().position(|&x| x == e).unwrap_or(0) as u64,
        Unit::Dma(q) => 16 + q as u64,
    }
}

fn pid(core: u16) -> u64 {
    core as u64 + 1
}

fn track_name(unit: Unit) -> String {
    match unit {
        Unit::Engine(e) => e.name().to_string(),
        Unit::Dma(q) => format!("dma.q{q}"),
    }
}

/// The trace of `r` (a run of `program` on `chip`), or [`RuntimeError::NoEvents`]
/// when the run did not record per-instruction events.
pub fn try_trace_json(chip: &ChipSpec, program: &Program, r: &RunResult) -> Result<Value, RuntimeError> {
    if r.events.len() != program.insts.len() {
        return Err(RuntimeError::NoEvents);
    }
    Ok(trace_json(chip, program, r))
}

/// The trace of `r` as trace-event JSON: `{"traceEvents": [...], "displayTimeUnit": "ns"}`.
///
/// Timestamps and durations are in microseconds (floats, picosecond
/// resolution). Each instruction is an `X` event named by its mnemonic with
/// args `id`, `deps`, `operands` (the text of each operand) and `flops` or
/// `bytes`. Without recorded events only the track metadata is present; use
/// [`try_trace_json`] to get an error instead.
pub fn trace_json(chip: &ChipSpec, program: &Program, r: &RunResult) -> Value {
    let mut events: Vec<Value> = Vec::with_capacity(program.insts.len() + 16);
    let mut units: Vec<(u16, Unit)> = r.units.iter().map(|u| (u.core, u.unit)).collect();
    units.extend(program.insts.iter().map(|i| (i.core, i.op.unit())));
    units.sort();
    units.dedup();
    let mut cores: Vec<u16> = units.iter().map(|u| u.0).collect();
    cores.dedup();
    for &core in &cores {
        events.push(json!({"ph": "M", "name": "process_name", "pid": pid(core), "tid": 0,
            "args": {"name": format!("{} core {core}", chip.name)}}));
        events.push(json!({"ph": "M", "name": "process_sort_index", "pid": pid(core), "tid": 0,
            "args": {"sort_index": core}}));
    }
    for &(core, unit) in &units {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": pid(core), "tid": tid(unit),
            "args": {"name": track_name(unit)}}));
        events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid(core), "tid": tid(unit),
            "args": {"sort_index": tid(unit)}}));
    }
    // Per track in start order, so every track is monotonic.
    let mut order: Vec<usize> = (0..program.insts.len().min(r.events.len())).collect();
    order.sort_by_key(|&i| {
        let inst = &program.insts[i];
        (inst.core, tid(inst.op.unit()), r.events[i].start_ps, i)
    });
    for i in order {
        let (inst, ev) = (&program.insts[i], &r.events[i]);
        let unit = inst.op.unit();
        let mut operands = Map::new();
        for (name, ap, _) in inst.op.operands() {
            operands.insert(name.to_string(), Value::String(format!("{ap}")));
        }
        let mut args = Map::new();
        args.insert("id".into(), json!(i));
        args.insert("deps".into(), json!(inst.deps.iter().map(|d| d.0).collect::<Vec<_>>()));
        args.insert("operands".into(), Value::Object(operands));
        match unit {
            Unit::Dma(_) => {
                // The size the timing model moved (the wider of the two element sizes).
                let bytes = trainyard_sim::dma::transfer_shape(chip, &inst.op).map_or(0, |t| t.bytes);
                args.insert("bytes".into(), json!(bytes));
            }
            Unit::Engine(_) => {
                args.insert("flops".into(), json!(inst.op.flops()));
            }
        }
        events.push(json!({
            "ph": "X",
            "name": inst.op.mnemonic(),
            "cat": if matches!(unit, Unit::Dma(_)) { "dma" } else { "engine" },
            "pid": pid(inst.core),
            "tid": tid(unit),
            "ts": ev.start_ps as f64 / 1e6,
            "dur": ev.end_ps.saturating_sub(ev.start_ps) as f64 / 1e6,
            "args": Value::Object(args),
        }));
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"chip": chip.name, "program": program.name, "total_ns": r.total_ps as f64 / 1000.0},
    })
}

/// Writes the trace of `r` to `path` atomically (temporary file, then rename).
/// Errors if the run did not record events.
pub fn write_trace(path: &Path, chip: &ChipSpec, program: &Program, r: &RunResult) -> Result<(), RuntimeError> {
    let v = try_trace_json(chip, program, r)?;
    write_atomic_with(path, |w| serde_json::to_writer(w, &v).map_err(std::io::Error::other))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{affine, chip, temp_dir};
    use crate::Session;
    use std::collections::HashMap;
    use trainyard_sim::SimOptions;

    #[test]
    fn one_complete_event_per_instruction_on_monotonic_tracks() {
        let (chip, p) = (chip(), affine());
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        s.bind_defaults(0).unwrap();
        s.run().unwrap();
        let dir = temp_dir("trace");
        let path = dir.join("t.json");
        s.write_trace(&path).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["displayTimeUnit"], "ns");
        let events = v["traceEvents"].as_array().unwrap();
        let xs: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(xs.len(), p.insts.len());
        let mut ids: Vec<u64> = xs.iter().map(|e| e["args"]["id"].as_u64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (0..p.insts.len() as u64).collect::<Vec<_>>());
        let mut last: HashMap<(u64, u64), f64> = HashMap::new();
        for e in &xs {
            let track = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
            let ts = e["ts"].as_f64().unwrap();
            assert!(e["dur"].as_f64().unwrap() >= 0.0);
            assert!(last.get(&track).is_none_or(|&prev| prev <= ts), "track {track:?} goes back in time");
            last.insert(track, ts);
        }
        let ts_op = xs.iter().find(|e| e["name"] == "tensor_scalar").unwrap();
        assert_eq!(ts_op["args"]["deps"], serde_json::json!([0]));
        assert_eq!(ts_op["args"]["flops"], 64);
        assert!(ts_op["args"]["operands"]["dst"].as_str().unwrap().contains("sbuf"));
        let store = xs.iter().find(|e| e["args"]["id"] == 3).unwrap();
        // f32 SBUF → bf16 HBM moves the wider element size, as the queue statistics count it.
        assert_eq!(store["args"]["bytes"], 128);
        // Every X event's track is named.
        let named: Vec<(u64, u64)> = events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
            .map(|e| (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()))
            .collect();
        assert!(last.keys().all(|k| named.contains(k)));
        assert!(events.iter().any(|e| e["name"] == "thread_name" && e["args"]["name"] == "dma.q2"));
        assert!(events.iter().any(|e| e["name"] == "process_name" && e["args"]["name"] == "trn2 core 0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_events_is_a_clear_error() {
        let (chip, p) = (chip(), affine());
        let opts = SimOptions { record_events: false, ..SimOptions::default() };
        let mut s = Session::new(&chip, &p, opts).unwrap();
        s.bind_defaults(0).unwrap();
        let prof = s.run().unwrap();
        assert!(prof.critical_path.is_empty() && prof.to_table().contains("not recorded"));
        let dir = temp_dir("noevents");
        let e = s.write_trace(&dir.join("t.json")).unwrap_err().to_string();
        assert!(e.contains("record_events"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
