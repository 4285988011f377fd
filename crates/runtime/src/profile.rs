//! The profile of a run: a flat, diffable summary of time, work, engine and
//! DMA activity and the critical path.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use trainyard_arch::ChipSpec;
use trainyard_isa::{Engine, Program, Unit};
use trainyard_sim::{Mode, RunResult};

/// Most critical-path steps kept in a [`Profile`] (the last ones).
pub const CRITICAL_PATH_CAP: usize = 1000;

/// Key of the time on the critical path spent between an instruction's
/// predecessor finishing and the instruction starting (semaphore and DMA
/// trigger latency) in [`Profile::critical_path_ns_by_unit`].
pub const WAIT_KEY: &str = "wait";

/// Activity of one compute engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineProfile {
    /// Time spent executing, ns.
    pub busy_ns: f64,
    /// `busy_ns / total_ns`, in [0, 1].
    pub utilization: f64,
    /// Instructions executed.
    pub instructions: u64,
}

/// Activity of one DMA queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueProfile {
    /// Time spent moving data, ns.
    pub busy_ns: f64,
    /// `busy_ns / total_ns`, in [0, 1].
    pub utilization: f64,
    /// Transfers executed.
    pub transfers: u64,
    /// Bytes moved.
    pub bytes: u64,
}

/// DMA activity of the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DmaProfile {
    /// Bytes moved by all queues.
    pub bytes: u64,
    /// Bytes read from or written to HBM.
    pub hbm_bytes: u64,
    /// Achieved DMA bandwidth, `bytes / total_ns` (GB/s).
    pub gbps: f64,
    /// Per queue, keyed `core0.q3`.
    pub queues: BTreeMap<String, QueueProfile>,
    /// Bytes carried over chip-to-chip links, counted once per link crossed (0 on one chip).
    #[serde(default)]
    pub link_bytes: u64,
}

/// Traffic of one chip-to-chip link (multi-chip runs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkProfile {
    /// Link bandwidth, GB/s.
    pub gbps: f64,
    /// Bytes carried.
    pub bytes: u64,
    /// Time with data moving over it, ns.
    pub busy_ns: f64,
    /// `busy_ns / total_ns`, in [0, 1].
    pub utilization: f64,
    /// `bytes / total_ns`, GB/s.
    pub achieved_gbps: f64,
}

/// One instruction on the critical path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CriticalStep {
    /// Instruction id.
    pub inst: u32,
    /// Its mnemonic.
    pub mnemonic: String,
    /// Its unit, `core0.tensor` or `core0.q3`.
    pub unit: String,
    /// Start, ns.
    pub start_ns: f64,
    /// End, ns.
    pub end_ns: f64,
}

/// What a run cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Chip name.
    pub chip: String,
    /// Program name.
    pub program: String,
    /// `functional` or `timed-only`.
    pub mode: String,
    /// End of the last instruction, ns.
    pub total_ns: f64,
    /// `total_ns` in Tensor-engine clock cycles (`total_ns · tensor_ghz`, rounded).
    pub cycles: u64,
    /// Instructions executed.
    pub instructions: u64,
    /// FLOPs performed (2·K·M·N per matmul, one per output element elsewhere).
    pub flops: u64,
    /// `flops / total_ns / 1000`.
    pub achieved_tflops: f64,
    /// Dense bf16 peak of the cores the program used, TFLOPS.
    pub peak_tflops: f64,
    /// Per compute engine of every core used, keyed `core0.tensor`,
    /// `core0.vector`, `core0.scalar`, `core0.gpsimd` (idle engines included).
    pub engines: BTreeMap<String, EngineProfile>,
    /// DMA activity.
    pub dma: DmaProfile,
    /// Chips simulated (1 unless the chip spec spans a system).
    #[serde(default = "one")]
    pub chips: u32,
    /// Per chip-to-chip link that carried data, keyed by link name (`chip0.x+`);
    /// empty on one chip.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, LinkProfile>,
    /// The chain of instructions that decided the total time, first to last
    /// (the last [`CRITICAL_PATH_CAP`] of them; empty without recorded events).
    pub critical_path: Vec<CriticalStep>,
    /// True when `critical_path` lost its first steps to the cap.
    pub critical_path_truncated: bool,
    /// Length of the whole critical path, instructions.
    pub critical_path_len: u64,
    /// How much of the critical path (whole, not only the kept steps) each
    /// unit accounts for, ns; [`WAIT_KEY`] holds the latency between steps.
    /// The values sum to `total_ns`.
    pub critical_path_ns_by_unit: BTreeMap<String, f64>,
}

/// The profile key of a unit: `core0.tensor`, `core0.q3`.
pub fn unit_key(core: u16, unit: Unit) -> String {
    match unit {
        Unit::Engine(e) => format!("core{core}.{}", e.name()),
        Unit::Dma(q) => format!("core{core}.q{q}"),
    }
}

fn one() -> u32 {
    1
}

fn ns(ps: u64) -> f64 {
    ps as f64 / 1000.0
}

impl Profile {
    /// Summarizes a run of `program` on `chip`.
    pub fn from_run(chip: &ChipSpec, program: &Program, mode: Mode, r: &RunResult) -> Self {
        let total_ns = ns(r.total_ps);
        let util = |busy: f64| if total_ns > 0.0 { (busy / total_ns).clamp(0.0, 1.0) } else { 0.0 };
        let mut engines = BTreeMap::new();
        for core in 0..program.cores_used() {
            for e in Engine::ALL {
                engines.insert(
                    unit_key(core as u16, Unit::Engine(e)),
                    EngineProfile { busy_ns: 0.0, utilization: 0.0, instructions: 0 },
                );
            }
        }
        let mut queues = BTreeMap::new();
        for u in &r.units {
            let busy_ns = ns(u.busy_ps);
            match u.unit {
                Unit::Engine(_) => {
                    engines.insert(
                        unit_key(u.core, u.unit),
                        EngineProfile { busy_ns, utilization: util(busy_ns), instructions: u.instructions },
                    );
                }
                Unit::Dma(_) => {
                    queues.insert(
                        unit_key(u.core, u.unit),
                        QueueProfile { busy_ns, utilization: util(busy_ns), transfers: u.instructions, bytes: u.bytes },
                    );
                }
            }
        }
        let (critical_path, critical_path_ns_by_unit) = critical_path(program, r);
        let truncated = critical_path.len() > CRITICAL_PATH_CAP;
        let kept = critical_path[critical_path.len().saturating_sub(CRITICAL_PATH_CAP)..].to_vec();
        Profile {
            chip: chip.name.clone(),
            program: program.name.clone(),
            mode: match mode {
                Mode::Functional => "functional",
                Mode::TimedOnly => "timed-only",
            }
            .to_string(),
            total_ns,
            cycles: (r.total_ps as f64 * chip.core.clocks.tensor_ghz / 1000.0).round() as u64,
            instructions: r.instructions,
            flops: r.flops,
            achieved_tflops: if total_ns > 0.0 { r.flops as f64 / total_ns / 1000.0 } else { 0.0 },
            peak_tflops: chip.core_peak_tflops_bf16() * program.cores_used() as f64,
            engines,
            dma: DmaProfile {
                bytes: r.dma_bytes,
                hbm_bytes: r.hbm_bytes,
                gbps: if total_ns > 0.0 { r.dma_bytes as f64 / total_ns } else { 0.0 },
                queues,
                link_bytes: r.link_bytes,
            },
            chips: chip.chips(),
            links: r
                .links
                .iter()
                .map(|l| {
                    let busy_ns = ns(l.busy_ps);
                    let achieved = if total_ns > 0.0 { l.bytes as f64 / total_ns } else { 0.0 };
                    let p = LinkProfile {
                        gbps: l.gbps,
                        bytes: l.bytes,
                        busy_ns,
                        utilization: util(busy_ns),
                        achieved_gbps: achieved,
                    };
                    (l.name.clone(), p)
                })
                .collect(),
            critical_path_len: critical_path.len() as u64,
            critical_path: kept,
            critical_path_truncated: truncated,
            critical_path_ns_by_unit,
        }
    }

    /// A readable multi-line table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let pct = |u: f64| format!("{:5.1}%", u * 100.0);
        let _ = writeln!(s, "program   {} on {} ({})", self.program, self.chip, self.mode);
        let _ = writeln!(s, "time      {} ({} tensor-engine cycles)", fmt_ns(self.total_ns), self.cycles);
        let peak = if self.peak_tflops > 0.0 { self.achieved_tflops / self.peak_tflops } else { 0.0 };
        let _ = writeln!(
            s,
            "compute   {} instructions, {} FLOPs, {:.3} TFLOPS ({} of the {:.1} TFLOPS bf16 peak)",
            self.instructions,
            self.flops,
            self.achieved_tflops,
            pct(peak).trim(),
            self.peak_tflops
        );
        let _ = writeln!(s, "\n{:<18} {:>12} {:>7} {:>12}", "engine", "busy", "util", "instructions");
        for (k, e) in &self.engines {
            let _ = writeln!(s, "{k:<18} {:>12} {:>7} {:>12}", fmt_ns(e.busy_ns), pct(e.utilization), e.instructions);
        }
        let _ = writeln!(
            s,
            "\ndma       {} moved ({} to/from HBM), {:.2} GB/s",
            fmt_bytes(self.dma.bytes),
            fmt_bytes(self.dma.hbm_bytes),
            self.dma.gbps
        );
        if !self.dma.queues.is_empty() {
            let _ = writeln!(s, "{:<18} {:>12} {:>7} {:>12} {:>12}", "queue", "busy", "util", "transfers", "bytes");
            for (k, q) in &self.dma.queues {
                let _ = writeln!(
                    s,
                    "{k:<18} {:>12} {:>7} {:>12} {:>12}",
                    fmt_ns(q.busy_ns),
                    pct(q.utilization),
                    q.transfers,
                    fmt_bytes(q.bytes)
                );
            }
        }
        if !self.links.is_empty() {
            let _ = writeln!(
                s,
                "\nlinks     {} chips, {} carried over chip-to-chip links",
                self.chips,
                fmt_bytes(self.dma.link_bytes)
            );
            let _ = writeln!(s, "{:<18} {:>12} {:>7} {:>12} {:>12}", "link", "busy", "util", "bytes", "GB/s");
            for (k, l) in &self.links {
                let _ = writeln!(
                    s,
                    "{k:<18} {:>12} {:>7} {:>12} {:>12.1}",
                    fmt_ns(l.busy_ns),
                    pct(l.utilization),
                    fmt_bytes(l.bytes),
                    l.achieved_gbps
                );
            }
        }
        if self.critical_path_len == 0 {
            let _ = writeln!(s, "\ncritical path: not recorded (events were off)");
            return s;
        }
        let _ = writeln!(s, "\ncritical path: {} instructions", self.critical_path_len);
        let mut by: Vec<(&String, &f64)> = self.critical_path_ns_by_unit.iter().collect();
        by.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        for (k, v) in by {
            let share = if self.total_ns > 0.0 { v / self.total_ns } else { 0.0 };
            let _ = writeln!(s, "{k:<18} {:>12} {:>7}", fmt_ns(*v), pct(share));
        }
        s
    }
}

fn fmt_ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.3} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

fn fmt_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if f >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.2} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// The whole critical path and each unit's share of it.
fn critical_path(program: &Program, r: &RunResult) -> (Vec<CriticalStep>, BTreeMap<String, f64>) {
    let mut steps = Vec::with_capacity(r.critical_path.len());
    let mut by_unit: BTreeMap<String, f64> = BTreeMap::new();
    let mut prev_end = 0u64;
    for id in &r.critical_path {
        let (Some(ev), Some(inst)) = (r.events.get(id.0 as usize), program.insts.get(id.0 as usize)) else {
            continue;
        };
        let unit = unit_key(inst.core, inst.op.unit());
        let seg_start = ev.start_ps.max(prev_end);
        let wait = ev.start_ps.saturating_sub(prev_end);
        if wait > 0 {
            *by_unit.entry(WAIT_KEY.to_string()).or_default() += ns(wait);
        }
        *by_unit.entry(unit.clone()).or_default() += ns(ev.end_ps.saturating_sub(seg_start));
        prev_end = prev_end.max(ev.end_ps);
        steps.push(CriticalStep {
            inst: id.0,
            mnemonic: inst.op.mnemonic().to_string(),
            unit,
            start_ns: ns(ev.start_ps),
            end_ns: ns(ev.end_ps),
        });
    }
    (steps, by_unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::chip;
    use trainyard_arch::DType;
    use trainyard_isa::{Ap, Inst, Op};
    use trainyard_sim::{SimOptions, Simulator};

    #[test]
    fn long_critical_path_keeps_the_last_steps() {
        let mut chip = chip();
        chip.core.elementwise.semaphore_ns = 10.0;
        let mut p = Program::new("chain");
        let n = CRITICAL_PATH_CAP as u32 + 50;
        for i in 0..n {
            let mut inst = Inst::new(Op::Memset {
                engine: if i % 2 == 0 { Engine::Vector } else { Engine::GpSimd },
                dst: Ap::sbuf(0, 1, 0, &[4], DType::F32),
                value: i as f64,
            });
            if i > 0 {
                inst.deps.push(trainyard_isa::InstId(i - 1));
            }
            p.push(inst);
        }
        let opts = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
        let r = Simulator::new(&chip, &p, opts).unwrap().run().unwrap();
        let prof = Profile::from_run(&chip, &p, Mode::TimedOnly, &r);
        assert!(prof.critical_path_truncated);
        assert_eq!(prof.critical_path_len, n as u64);
        assert_eq!(prof.critical_path.len(), CRITICAL_PATH_CAP);
        assert_eq!(prof.critical_path.last().map(|s| s.inst), Some(n - 1));
        assert_eq!(prof.critical_path.first().map(|s| s.inst), Some(50));
        let sum: f64 = prof.critical_path_ns_by_unit.values().sum();
        assert!((sum - prof.total_ns).abs() < 1e-6 * prof.total_ns);
        assert!(prof.critical_path_ns_by_unit[WAIT_KEY] > 0.0, "cross-engine semaphores cost time");
        assert_eq!(prof.engines.len(), 4);
        assert!(prof.dma.queues.is_empty() && prof.dma.gbps == 0.0);
        assert_eq!(prof.flops, 0);
    }

    #[test]
    fn empty_run_has_no_nans() {
        let chip = chip();
        let p = Program::new("empty");
        let prof = Profile::from_run(&chip, &p, Mode::Functional, &RunResult::default());
        assert_eq!((prof.total_ns, prof.achieved_tflops, prof.dma.gbps), (0.0, 0.0, 0.0));
        assert!(prof.engines.values().all(|e| e.utilization == 0.0));
        assert!(!prof.to_table().contains("NaN"));
    }
}
