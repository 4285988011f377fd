//! The timing plan: everything about a program's timing that does not depend
//! on the run, computed once when a program is loaded.
//!
//! Queue order is fixed by the program, so the previous instruction of each
//! unit is known in advance; every cost rule depends only on shapes and on
//! that predecessor (background LoadStationary, same-engine RAW penalty), so
//! each compute instruction's occupancy and each DMA transfer's shape can be
//! precomputed. A run then touches only these compact arrays.

use trainyard_arch::ChipSpec;
use trainyard_isa::{Op, Program, Role, Space, Unit};

use crate::cost;
use crate::dma::{self, Placement, Routes, TransferShape};

/// One unit (engine or DMA queue of a core) and its instruction queue.
pub(crate) struct UnitPlan {
    pub core: u16,
    pub unit: Unit,
    pub queue: Vec<u32>,
}

pub(crate) struct Plan {
    pub units: Vec<UnitPlan>,
    pub unit_of: Vec<u32>,
    /// Unique dependencies of each instruction, CSR.
    pub deps_start: Vec<u32>,
    pub deps: Vec<u32>,
    /// Instructions waiting on each instruction, CSR.
    pub dependents_start: Vec<u32>,
    pub dependents: Vec<u32>,
    /// Occupancy of compute instructions, ps (0 for DMA).
    pub cost_ps: Vec<u64>,
    /// Index into `shapes` of DMA instructions (`u32::MAX` for compute).
    pub shape_of: Vec<u32>,
    pub shapes: Vec<TransferShape>,
    /// Chips and route of each DMA shape.
    pub placements: Vec<Placement>,
    /// Per-hop latency of each DMA shape's route, ps (0 on one chip).
    pub hop_ps: Vec<u64>,
    /// The distinct chip-to-chip routes.
    pub routes: Routes,
    /// Engine-ns of work per DMA shape.
    pub work_ns: Vec<f64>,
    pub flops: u64,
    pub fixed_dma_ps: u64,
    pub sem_ps: u64,
}

impl Plan {
    pub fn new(chip: &ChipSpec, program: &Program) -> Plan {
        let n = program.insts.len();
        // Dense unit index: (core, 4 engines + 256 DMA queue ids).
        const SLOTS: usize = 4 + 256;
        let slot = |unit: Unit| match unit {
            Unit::Engine(e) => e as usize,
            Unit::Dma(q) => 4 + q as usize,
        };
        let mut index: Vec<u32> = vec![u32::MAX; program.cores_used() as usize * SLOTS];
        let mut units: Vec<UnitPlan> = Vec::new();
        let mut unit_of = Vec::with_capacity(n);
        let mut cost_ps = vec![0u64; n];
        let mut shape_of = vec![u32::MAX; n];
        let mut shapes = Vec::new();
        let mut placements = Vec::new();
        let mut hop_ps = Vec::new();
        let mut routes = Routes::default();
        let hop_latency_ns = chip.system.as_ref().map_or(0.0, |s| s.spec.hop_latency_ns);
        let multi_chip = chip.chips() > 1;
        let mut work_ns = Vec::new();
        let mut flops = 0u64;
        for (i, inst) in program.insts.iter().enumerate() {
            let unit = inst.op.unit();
            let at = inst.core as usize * SLOTS + slot(unit);
            if index[at] == u32::MAX {
                index[at] = units.len() as u32;
                units.push(UnitPlan { core: inst.core, unit, queue: Vec::new() });
            }
            let u = index[at] as usize;
            let prev = units[u].queue.last().map(|&p| &program.insts[p as usize].op);
            units[u].queue.push(i as u32);
            unit_of.push(u as u32);
            flops += inst.op.flops();
            match unit {
                Unit::Engine(engine) => {
                    let loaded = matches!((prev, &inst.op),
                        (Some(Op::MatMul { stationary: a, .. }), Op::MatMul { stationary: b, .. }) if a == b);
                    let cycles = cost::engine_cost(chip, &inst.op, loaded).map(|c| c.cycles).unwrap_or(0);
                    let penalty = match prev {
                        Some(p) if reads_what_wrote(&inst.op, p) => cost::same_engine_dep_cycles(chip, engine),
                        _ => 0,
                    };
                    cost_ps[i] = cost::cycles_to_ps(chip, engine, cycles + penalty);
                }
                Unit::Dma(_) => {
                    if let Some(shape) = dma::transfer_shape(chip, &inst.op) {
                        shape_of[i] = shapes.len() as u32;
                        work_ns.push(dma::transfer_work_ns(chip, &shape));
                        let placement = match multi_chip {
                            true => dma::placement(chip, inst.core, &inst.op, &mut routes),
                            false => None,
                        };
                        let placement = placement.unwrap_or(Placement::local(shape.hbm_sides));
                        // assumption: every link crossed adds the system's per-hop latency (HW-GAP-LIST).
                        hop_ps.push((placement.hops as f64 * hop_latency_ns * 1000.0).round() as u64);
                        placements.push(placement);
                        shapes.push(shape);
                    }
                }
            }
        }
        // Unique dependencies and their reverse, in CSR form.
        let mut deps_start = Vec::with_capacity(n + 1);
        let mut deps = Vec::new();
        let mut counts = vec![0u32; n + 1];
        deps_start.push(0u32);
        for (i, inst) in program.insts.iter().enumerate() {
            let from = deps.len();
            deps.extend(inst.deps.iter().map(|x| x.0).filter(|&x| (x as usize) < n && x as usize != i));
            deps[from..].sort_unstable();
            let mut w = from;
            for r in from..deps.len() {
                if r == from || deps[r] != deps[w - 1] {
                    deps[w] = deps[r];
                    w += 1;
                }
            }
            deps.truncate(w);
            for &d in &deps[from..] {
                counts[d as usize + 1] += 1;
            }
            deps_start.push(deps.len() as u32);
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut dependents = vec![0u32; counts[n] as usize];
        for i in 0..n {
            for &d in &deps[deps_start[i] as usize..deps_start[i + 1] as usize] {
                dependents[fill[d as usize] as usize] = i as u32;
                fill[d as usize] += 1;
            }
        }
        Plan {
            units,
            unit_of,
            deps_start,
            deps,
            dependents_start: counts,
            dependents,
            cost_ps,
            shape_of,
            shapes,
            placements,
            hop_ps,
            routes,
            work_ns,
            flops,
            fixed_dma_ps: (chip.core.dma.fixed_latency_ns * 1000.0).round() as u64,
            sem_ps: (chip.core.elementwise.semaphore_ns * 1000.0).round() as u64,
        }
    }

    /// Unique dependencies of instruction `i`.
    #[inline]
    pub fn deps_of(&self, i: usize) -> &[u32] {
        &self.deps[self.deps_start[i] as usize..self.deps_start[i + 1] as usize]
    }

    /// Instructions that wait on `i`.
    #[inline]
    pub fn dependents_of(&self, i: usize) -> &[u32] {
        &self.dependents[self.dependents_start[i] as usize..self.dependents_start[i + 1] as usize]
    }
}

/// Whether `op` reads SRAM that `prev` wrote (a RAW hazard through SRAM on
/// the same engine, which costs the dependency penalty, HW-DEF-DEP).
fn reads_what_wrote(op: &Op, prev: &Op) -> bool {
    let prev_ops = prev.operands();
    let ops = op.operands();
    ops.iter().filter(|(_, _, r)| *r == Role::Read).any(|(_, a, _)| {
        prev_ops.iter().filter(|(_, _, r)| *r == Role::Write).any(|(_, w, _)| {
            w.space == a.space
                && a.space != Space::Hbm
                && w.start_partition < a.start_partition + a.partitions
                && a.start_partition < w.start_partition + w.partitions
                && match (w.byte_span(), a.byte_span()) {
                    (Some((wl, wh)), Some((al, ah))) => wl < ah && al < wh,
                    _ => false,
                }
        })
    })
}
