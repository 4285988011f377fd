//! The event-driven scheduler: in-order queues per engine and DMA queue,
//! dependency tracking, the DMA fluid model, functional execution, race and
//! deadlock detection, and the statistics of a run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use trainyard_arch::{ChipSpec, SplitMix64};
use trainyard_isa::{InstId, Program, Role, Unit};

use crate::dma::{Fluid, TransferShape};
use crate::exec::Executor;
use crate::mem::{Memory, Rounder};
use crate::plan::Plan;
use crate::race::RaceChecker;
use crate::{AccessSite, Mode, SimError, SimOptions};

/// Timing of one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InstEvent {
    /// When it started occupying its unit (DMA: when its data started moving), ps.
    pub start_ps: u64,
    /// When it finished, ps.
    pub end_ps: u64,
    /// The instruction whose completion decided this one's start (its unit
    /// predecessor or a dependency); `None` if it started at time 0.
    pub critical_pred: Option<InstId>,
}

/// Activity of one unit (engine or DMA queue) of one core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStats {
    /// Core.
    pub core: u16,
    /// Engine or DMA queue.
    pub unit: Unit,
    /// Time spent executing (DMA: moving data), ps.
    pub busy_ps: u64,
    /// Instructions executed.
    pub instructions: u64,
    /// Bytes moved (DMA queues).
    pub bytes: u64,
}

/// What a run produced besides memory contents.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// End of the last instruction, ps.
    pub total_ps: u64,
    /// Per unit activity, sorted by core then unit.
    pub units: Vec<UnitStats>,
    /// Per instruction timing (if recorded), indexed by instruction id.
    pub events: Vec<InstEvent>,
    /// The chain of instructions that decided the total time, first to last
    /// (if events were recorded).
    pub critical_path: Vec<InstId>,
    /// Instructions executed.
    pub instructions: u64,
    /// FLOPs performed (2·K·M·N per matmul, one per output element elsewhere).
    pub flops: u64,
    /// Bytes moved by DMA.
    pub dma_bytes: u64,
    /// Bytes read from or written to HBM by DMA.
    pub hbm_bytes: u64,
    /// Bytes carried over chip-to-chip links, summed over every link crossed
    /// (a 2-hop transfer counts twice); 0 on one chip.
    pub link_bytes: u64,
    /// Per directed link that carried data (multi-chip runs), by link id.
    pub links: Vec<LinkStats>,
}

/// Traffic of one directed chip-to-chip link (or switch port) over a run.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkStats {
    /// Dense link id of the system ([`trainyard_arch::SystemLayout::link`]).
    pub id: u32,
    /// Name, e.g. `chip0.x+`.
    pub name: String,
    /// Bandwidth, bytes/ns.
    pub gbps: f64,
    /// Bytes carried.
    pub bytes: u64,
    /// Time with at least one transfer moving data over it, ps.
    pub busy_ps: u64,
}

struct UnitState {
    head: usize,
    free_at: u64,
    last: Option<u32>,
    /// The DMA transfer in flight on this queue: its shape index and data start time.
    in_flight: Option<(u32, u64)>,
    seq: u32,
    clock: Vec<u32>,
    busy_ps: u64,
    bytes: u64,
}

/// How often (in dispatched instructions) the race checker's horizon is updated.
const HORIZON_EVERY: u64 = 256;

/// Simulates one program on one chip.
pub struct Simulator<'p> {
    chip: ChipSpec,
    program: &'p Program,
    /// On a multi-chip system: `program` with every HBM address moved from the
    /// system's sparse address space (chip `c` at `c·hbm_bytes`) to a dense
    /// one holding each chip's used extent, one after the other.
    translated: Option<Program>,
    opts: SimOptions,
    plan: Plan,
    exec: Option<Executor>,
}

/// `program` with HBM addresses packed: chip `c`'s window `[c·hbm_bytes, ..)`
/// starts right after the extent chips `0..c` use (validation guarantees no
/// tensor or access pattern spans two windows, so each moves by one constant).
fn compact_hbm(chip: &ChipSpec, program: &Program) -> Program {
    let chips = chip.chips() as usize;
    let mut extent = vec![0u64; chips];
    for t in &program.tensors {
        if let Some(c) = chip.chip_of_hbm(t.offset) {
            let (base, _) = chip.hbm_window(c);
            extent[c as usize] = extent[c as usize].max((t.span().1 - base).div_ceil(64) * 64);
        }
    }
    let mut start = vec![0u64; chips];
    for c in 1..chips {
        start[c] = start[c - 1] + extent[c - 1];
    }
    let moved = |addr: u64, anchor: u64| -> u64 {
        let c = chip.chip_of_hbm(anchor).unwrap_or(0);
        addr - chip.hbm_window(c).0 + start[c as usize]
    };
    let mut out = program.clone();
    for t in &mut out.tensors {
        t.offset = moved(t.offset, t.offset);
    }
    for inst in &mut out.insts {
        for ap in inst.op.operands_mut().into_iter().filter(|a| a.space == trainyard_isa::Space::Hbm) {
            let anchor = ap.byte_span().map_or(ap.offset, |(lo, _)| lo.max(0) as u64);
            ap.offset = moved(ap.offset, anchor);
        }
    }
    out
}

impl<'p> Simulator<'p> {
    /// Validates `program` for `chip` and prepares memory (functional mode).
    /// A chip with a system ([`ChipSpec::with_chips`]) simulates all its chips
    /// on one clock; each chip's HBM holds only the extent the program uses
    /// inside that chip's window.
    pub fn new(chip: &ChipSpec, program: &'p Program, opts: SimOptions) -> Result<Self, SimError> {
        crate::check_program(program, chip)?;
        let translated = (chip.chips() > 1).then(|| compact_hbm(chip, program));
        let exec = match opts.mode {
            Mode::TimedOnly => None,
            Mode::Functional => {
                let mut used = vec![false; program.cores_used() as usize];
                for inst in &program.insts {
                    used[inst.core as usize] = true;
                }
                let k = &chip.core;
                let hbm_extent = translated.as_ref().unwrap_or(program).hbm_extent();
                let mem = Memory::new(
                    hbm_extent as usize,
                    &used,
                    (k.sbuf.partitions * k.sbuf.bytes_per_partition) as usize,
                    (k.psum.partitions * k.psum.bytes_per_partition) as usize,
                    k.sbuf.bytes_per_partition as usize,
                    k.psum.bytes_per_partition as usize,
                );
                let rounder = if opts.stochastic_rounding {
                    Rounder::Stochastic(SplitMix64::new(opts.seed))
                } else {
                    Rounder::NearestEven
                };
                Some(Executor::new(mem, rounder))
            }
        };
        let plan = Plan::new(chip, program);
        Ok(Simulator { chip: chip.clone(), program, translated, opts, plan, exec })
    }

    /// The program as memory sees it: HBM addresses compacted on multi-chip systems.
    fn memory_program(&self) -> &Program {
        self.translated.as_ref().unwrap_or(self.program)
    }

    /// Copies raw little-endian element bytes into a program tensor.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), SimError> {
        let t = self.program.tensor(name).ok_or_else(|| SimError::UnknownTensor(name.to_string()))?;
        if bytes.len() as u64 != t.bytes() {
            return Err(SimError::TensorSize { name: name.into(), expected: t.bytes(), got: bytes.len() as u64 });
        }
        let t = self.memory_program().tensor(name).unwrap_or(t);
        let (a, b) = t.span();
        let exec = self.exec.as_mut().ok_or(SimError::NoValues)?;
        exec.mem.hbm.bytes_mut()[a as usize..b as usize].copy_from_slice(bytes);
        Ok(())
    }

    /// The raw little-endian bytes of a program tensor.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>, SimError> {
        let t = self.memory_program().tensor(name).ok_or_else(|| SimError::UnknownTensor(name.to_string()))?;
        let exec = self.exec.as_ref().ok_or(SimError::NoValues)?;
        let (a, b) = t.span();
        Ok(exec.mem.hbm.bytes()[a as usize..b as usize].to_vec())
    }

    /// The chip being simulated.
    pub fn chip(&self) -> &ChipSpec {
        &self.chip
    }

    /// Runs the program to completion.
    pub fn run(&mut self) -> Result<RunResult, SimError> {
        // Every run starts the stochastic-rounding stream from the seed, so a
        // rerun repeats its results.
        if let Some(e) = self.exec.as_mut().filter(|_| self.opts.stochastic_rounding) {
            e.rounder = Rounder::Stochastic(SplitMix64::new(self.opts.seed));
        }
        let program = self.translated.as_ref().unwrap_or(self.program);
        let mut run = Run::new(&self.chip, program, &self.plan, &self.opts);
        run.go(self.exec.as_mut())?;
        Ok(run.finish())
    }
}

struct Run<'a> {
    chip: &'a ChipSpec,
    program: &'a Program,
    plan: &'a Plan,
    record_events: bool,
    units: Vec<UnitState>,
    remaining: Vec<u32>,
    done: Vec<u64>,
    events: Vec<InstEvent>,
    clocks: Vec<Option<Box<[u32]>>>,
    clock_refs: Vec<u32>,
    /// Freed clocks, reused to avoid an allocation per instruction.
    spare_clocks: Vec<Box<[u32]>>,
    races: Option<RaceChecker>,
    fluid: Fluid,
    starts: BinaryHeap<Reverse<(u64, u32)>>,
    dispatched: u64,
    worklist: Vec<u32>,
    dma_bytes: u64,
    hbm_bytes: u64,
    executed: u64,
    total_ps: u64,
}

impl<'a> Run<'a> {
    fn new(chip: &'a ChipSpec, program: &'a Program, plan: &'a Plan, opts: &SimOptions) -> Self {
        let n = program.insts.len();
        let unit_count = plan.units.len();
        let remaining = (0..n).map(|i| plan.deps_start[i + 1] - plan.deps_start[i]).collect();
        let units = (0..unit_count)
            .map(|_| UnitState {
                head: 0,
                free_at: 0,
                last: None,
                in_flight: None,
                seq: 0,
                clock: if opts.check_races { vec![0; unit_count] } else { Vec::new() },
                busy_ps: 0,
                bytes: 0,
            })
            .collect();
        let k = &chip.core;
        let races = opts.check_races.then(|| {
            RaceChecker::new(
                program.hbm_extent().max(1),
                program.cores_used() as usize,
                k.sbuf.bytes_per_partition as u64,
                k.psum.bytes_per_partition as u64,
            )
        });
        Run {
            program,
            plan,
            record_events: opts.record_events,
            worklist: (0..unit_count as u32).collect(),
            units,
            remaining,
            done: vec![u64::MAX; n],
            events: if opts.record_events { vec![InstEvent::default(); n] } else { Vec::new() },
            clocks: if opts.check_races { vec![None; n] } else { Vec::new() },
            clock_refs: if opts.check_races {
                (0..n).map(|i| plan.dependents_start[i + 1] - plan.dependents_start[i]).collect()
            } else {
                Vec::new()
            },
            spare_clocks: Vec::new(),
            races,
            fluid: Fluid::new(chip, plan.routes.clone()),
            chip,
            starts: BinaryHeap::new(),
            dispatched: 0,
            dma_bytes: 0,
            hbm_bytes: 0,
            executed: 0,
            total_ps: 0,
        }
    }

    fn go(&mut self, mut exec: Option<&mut Executor>) -> Result<(), SimError> {
        self.drain_worklist(&mut exec)?;
        loop {
            let next_start = self.starts.peek().map(|r| r.0);
            let next_finish = self.fluid.next_finish();
            // Completions before starts at the same instant: a finishing transfer
            // frees bandwidth for the one starting.
            let take_finish = match (next_finish, next_start) {
                (None, None) => break,
                (Some(f), Some(s)) => f.0 <= s.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if take_finish {
                let Some((t, inst)) = next_finish else { break };
                self.fluid.advance(t);
                self.fluid.remove(inst);
                self.finish_dma(inst, t, &mut exec)?;
            } else {
                let Some(Reverse((t, inst))) = self.starts.pop() else { break };
                self.fluid.advance(t);
                let u = self.plan.unit_of[inst as usize] as usize;
                let Some((shape, _)) = self.units[u].in_flight else { continue };
                let core = self.plan.units[u].core;
                let s = shape as usize;
                self.fluid.add(inst, core, &self.plan.shapes[s], &self.plan.placements[s], self.plan.work_ns[s]);
            }
            self.drain_worklist(&mut exec)?;
        }
        if self.executed < self.program.insts.len() as u64 {
            return Err(self.deadlock());
        }
        Ok(())
    }

    fn finish_dma(&mut self, i: u32, t: u64, exec: &mut Option<&mut Executor>) -> Result<(), SimError> {
        let inst = &self.program.insts[i as usize];
        if let Some(e) = exec.as_deref_mut() {
            e.exec(InstId(i), inst.core as usize, &inst.op)?;
        }
        let u = self.plan.unit_of[i as usize] as usize;
        let unit = &mut self.units[u];
        let (shape, data_start) = match unit.in_flight.take() {
            Some((s, start)) => (self.plan.shapes[s as usize], start),
            None => (TransferShape { bytes: 0, descriptors: 0, max_engines: 1, hbm_sides: 0 }, t),
        };
        unit.free_at = t;
        unit.busy_ps += t - data_start;
        unit.bytes += shape.bytes;
        self.dma_bytes += shape.bytes;
        self.hbm_bytes += shape.bytes * shape.hbm_sides as u64;
        if self.record_events {
            self.events[i as usize].end_ps = t;
        }
        self.complete(i, t);
        self.worklist.push(u as u32);
        Ok(())
    }

    /// Marks `i` as finishing at `t` and wakes its dependents.
    fn complete(&mut self, i: u32, t: u64) {
        self.done[i as usize] = t;
        self.executed += 1;
        self.total_ps = self.total_ps.max(t);
        for &j in self.plan.dependents_of(i as usize) {
            let j = j as usize;
            self.remaining[j] -= 1;
            if self.remaining[j] == 0 {
                self.worklist.push(self.plan.unit_of[j]);
            }
        }
    }

    fn drain_worklist(&mut self, exec: &mut Option<&mut Executor>) -> Result<(), SimError> {
        while let Some(u) = self.worklist.pop() {
            self.try_dispatch(u as usize, exec)?;
        }
        Ok(())
    }

    fn try_dispatch(&mut self, u: usize, exec: &mut Option<&mut Executor>) -> Result<(), SimError> {
        let plan = self.plan;
        let queue = &plan.units[u].queue;
        loop {
            let unit = &self.units[u];
            let Some(&i) = queue.get(unit.head) else { return Ok(()) };
            if self.remaining[i as usize] > 0 || unit.in_flight.is_some() {
                return Ok(());
            }
            // Ready time: latest dependency completion (+ semaphore latency
            // across units, HW-SYNC-COST) and the critical predecessor.
            let mut ready = 0u64;
            let mut pred: Option<u32> = None;
            for &d in plan.deps_of(i as usize) {
                let t = self.done[d as usize];
                let t = if plan.unit_of[d as usize] as usize == u { t } else { t + plan.sem_ps };
                if t > ready || (pred.is_none() && t >= ready) {
                    ready = t;
                    pred = Some(d);
                }
            }
            let unit_free = unit.free_at;
            let unit_last = unit.last;
            if unit_free >= ready && unit_last.is_some() {
                pred = unit_last;
            }
            self.check_races(u, i)?;
            let shape = plan.shape_of[i as usize];
            if shape == u32::MAX {
                let start = unit_free.max(ready);
                let dur = plan.cost_ps[i as usize];
                let end = start + dur;
                if let Some(e) = exec.as_deref_mut() {
                    let inst = &self.program.insts[i as usize];
                    e.exec(InstId(i), inst.core as usize, &inst.op)?;
                }
                let unit = &mut self.units[u];
                unit.free_at = end;
                unit.busy_ps += dur;
                unit.last = Some(i);
                unit.head += 1;
                if self.record_events {
                    self.events[i as usize] =
                        InstEvent { start_ps: start, end_ps: end, critical_pred: pred.map(InstId) };
                }
                self.complete(i, end);
            } else {
                // The trigger latency overlaps the previous transfer of the queue (HW-DEF-DMA).
                // Each link crossed adds its hop latency to the fixed latency (assumption, HW-GAP-LIST).
                let data_start = (ready + plan.fixed_dma_ps + plan.hop_ps[shape as usize]).max(unit_free);
                self.starts.push(Reverse((data_start, i)));
                let unit = &mut self.units[u];
                unit.in_flight = Some((shape, data_start));
                unit.last = Some(i);
                unit.head += 1;
                if self.record_events {
                    self.events[i as usize] =
                        InstEvent { start_ps: data_start, end_ps: data_start, critical_pred: pred.map(InstId) };
                }
                return Ok(());
            }
        }
    }

    /// Computes `i`'s vector clock and checks its accesses for races.
    fn check_races(&mut self, u: usize, i: u32) -> Result<(), SimError> {
        if self.races.is_none() {
            return Ok(());
        }
        self.dispatched += 1;
        if self.dispatched.is_multiple_of(HORIZON_EVERY) {
            self.update_horizon();
        }
        let Some(races) = self.races.as_mut() else { return Ok(()) };
        let inst = &self.program.insts[i as usize];
        let mut clock = std::mem::take(&mut self.units[u].clock);
        for d in &inst.deps {
            let d = d.0 as usize;
            if let Some(Some(c)) = self.clocks.get(d) {
                for (a, b) in clock.iter_mut().zip(c.iter()) {
                    *a = (*a).max(*b);
                }
            }
            if let Some(r) = self.clock_refs.get_mut(d) {
                *r = r.saturating_sub(1);
                if *r == 0 {
                    if let Some(spare) = self.clocks[d].take() {
                        self.spare_clocks.push(spare);
                    }
                }
            }
        }
        let unit = &mut self.units[u];
        unit.seq += 1;
        clock[u] = unit.seq;
        let seq = unit.seq;
        let core = inst.core as usize;
        for (name, ap, role) in inst.op.operands() {
            let write = role == Role::Write;
            if let Err(conflict) = races.access(core, i, name, u as u32, seq, &clock, ap, write) {
                let conflict = *conflict;
                let earlier = &conflict.earlier;
                let site = |inst_id: u32, operand: &'static str, unit: usize, write: bool| AccessSite {
                    inst: InstId(inst_id),
                    mnemonic: self.program.insts[inst_id as usize].op.mnemonic(),
                    operand,
                    core: self.plan.units[unit].core,
                    unit: self.plan.units[unit].unit,
                    write,
                };
                let a = site(earlier.inst, earlier.operand, earlier.unit as usize, earlier.write);
                let b = site(i, name, u, write);
                // Report in program order, whichever was simulated first.
                let (first, second) = if a.inst <= b.inst { (a, b) } else { (b, a) };
                return Err(SimError::Race { space: conflict.space, first, second });
            }
        }
        if self.clock_refs[i as usize] > 0 {
            let boxed = match self.spare_clocks.pop() {
                Some(mut b) => {
                    b.copy_from_slice(&clock);
                    b
                }
                None => clock.clone().into_boxed_slice(),
            };
            self.clocks[i as usize] = Some(boxed);
        }
        self.units[u].clock = clock;
        Ok(())
    }

    /// Lets the race checker retire records that every unit still running has seen.
    fn update_horizon(&mut self) {
        let n = self.units.len();
        let mut horizon = vec![u32::MAX; n];
        for (u, _) in
            self.units.iter().zip(&self.plan.units).filter(|(u, p)| u.head < p.queue.len() || u.in_flight.is_some())
        {
            for (h, &c) in horizon.iter_mut().zip(&u.clock) {
                *h = (*h).min(c);
            }
        }
        if let Some(r) = self.races.as_mut() {
            r.set_horizon(horizon);
        }
    }

    /// Finds a cycle of waits among the instructions that never ran.
    fn deadlock(&self) -> SimError {
        let n = self.program.insts.len();
        let stuck = |i: usize| self.done[i] == u64::MAX;
        // Each stuck instruction waits on a stuck dependency or, if it is not
        // at the head of its queue, on its queue predecessor.
        let mut position = vec![0usize; n];
        for unit in &self.plan.units {
            for (k, &i) in unit.queue.iter().enumerate() {
                position[i as usize] = k;
            }
        }
        let waits_on = |i: usize| -> Option<usize> {
            let unit = &self.plan.units[self.plan.unit_of[i] as usize];
            let pos = position[i];
            if pos > 0 && stuck(unit.queue[pos - 1] as usize) {
                return Some(unit.queue[pos - 1] as usize);
            }
            self.program.insts[i].deps.iter().map(|d| d.0 as usize).find(|&d| d < n && stuck(d))
        };
        let Some(mut cur) = (0..n).find(|&i| stuck(i)) else {
            return SimError::Deadlock { cycle: Vec::new() };
        };
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut path = Vec::new();
        loop {
            if let Some(&at) = seen.get(&cur) {
                let cycle = path[at..]
                    .iter()
                    .map(|&i: &usize| {
                        let u = &self.plan.units[self.plan.unit_of[i] as usize];
                        (InstId(i as u32), format!("core {} {}", u.core, u.unit))
                    })
                    .collect();
                return SimError::Deadlock { cycle };
            }
            seen.insert(cur, path.len());
            path.push(cur);
            match waits_on(cur) {
                Some(next) => cur = next,
                None => {
                    return SimError::Deadlock { cycle: vec![(InstId(cur as u32), "an unfinished dependency".into())] }
                }
            }
        }
    }

    fn finish(self) -> RunResult {
        let mut units: Vec<UnitStats> = self
            .units
            .iter()
            .zip(&self.plan.units)
            .map(|(u, p)| UnitStats {
                core: p.core,
                unit: p.unit,
                busy_ps: u.busy_ps,
                instructions: p.queue.len() as u64,
                bytes: u.bytes,
            })
            .collect();
        units.sort_by_key(|u| (u.core, u.unit));
        let mut critical_path = Vec::new();
        if self.record_events {
            if let Some(last) = (0..self.done.len()).max_by_key(|&i| (self.done[i], std::cmp::Reverse(i))) {
                let mut cur = Some(InstId(last as u32));
                while let Some(c) = cur {
                    critical_path.push(c);
                    cur = self.events[c.0 as usize].critical_pred;
                    if critical_path.len() > self.done.len() {
                        break;
                    }
                }
                critical_path.reverse();
            }
        }
        let (link_bytes, link_busy) = self.fluid.link_stats();
        let links: Vec<LinkStats> = self
            .chip
            .system
            .iter()
            .flat_map(|s| (0..s.link_count() as u32).filter_map(|id| s.link(id)))
            .filter(|l| link_bytes.get(l.id as usize).is_some_and(|&b| b > 0))
            .map(|l| LinkStats {
                id: l.id,
                bytes: link_bytes[l.id as usize],
                busy_ps: link_busy.get(l.id as usize).copied().unwrap_or(0),
                name: l.name,
                gbps: l.gbps,
            })
            .collect();
        RunResult {
            link_bytes: links.iter().map(|l| l.bytes).sum(),
            links,
            total_ps: self.total_ps,
            units,
            events: self.events,
            critical_path,
            instructions: self.executed,
            flops: self.plan.flops,
            dma_bytes: self.dma_bytes,
            hbm_bytes: self.hbm_bytes,
        }
    }
}
