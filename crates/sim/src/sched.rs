//! The event-driven scheduler: in-order queues per engine and DMA queue,
//! dependency tracking, the DMA fluid model, functional execution, race and
//! deadlock detection, and the statistics of a run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use trainyard_arch::{ChipSpec, SplitMix64};
use trainyard_isa::{Ap, InstId, Op, Program, Role, Space, Unit};

use crate::cost;
use crate::dma::{self, Fluid, TransferShape};
use crate::exec::Executor;
use crate::mem::{Memory, Rounder};
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
}

struct UnitState {
    core: u16,
    unit: Unit,
    queue: Vec<u32>,
    head: usize,
    free_at: u64,
    last: Option<u32>,
    in_flight: bool,
    seq: u32,
    clock: Vec<u32>,
    busy_ps: u64,
    bytes: u64,
}

/// Simulates one program on one chip.
pub struct Simulator<'p> {
    chip: ChipSpec,
    program: &'p Program,
    opts: SimOptions,
    exec: Option<Executor>,
}

impl<'p> Simulator<'p> {
    /// Validates `program` for `chip` and prepares memory (functional mode).
    pub fn new(chip: &ChipSpec, program: &'p Program, opts: SimOptions) -> Result<Self, SimError> {
        crate::check_program(program, chip)?;
        let exec = match opts.mode {
            Mode::TimedOnly => None,
            Mode::Functional => {
                let cores = program.cores_used() as usize;
                let k = &chip.core;
                let mem = Memory::new(
                    program.hbm_extent() as usize,
                    cores,
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
        Ok(Simulator { chip: chip.clone(), program, opts, exec })
    }

    /// Copies raw little-endian element bytes into a program tensor.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), SimError> {
        let t = self.program.tensor(name).ok_or_else(|| SimError::UnknownTensor(name.to_string()))?;
        if bytes.len() as u64 != t.bytes() {
            return Err(SimError::TensorSize { name: name.into(), expected: t.bytes(), got: bytes.len() as u64 });
        }
        let exec = self.exec.as_mut().ok_or(SimError::NoValues)?;
        let (a, b) = t.span();
        exec.mem.hbm.bytes_mut()[a as usize..b as usize].copy_from_slice(bytes);
        Ok(())
    }

    /// The raw little-endian bytes of a program tensor.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>, SimError> {
        let t = self.program.tensor(name).ok_or_else(|| SimError::UnknownTensor(name.to_string()))?;
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
        let mut run = Run::new(&self.chip, self.program, &self.opts);
        run.go(self.exec.as_mut())?;
        Ok(run.finish())
    }
}

struct Run<'a> {
    chip: &'a ChipSpec,
    program: &'a Program,
    record_events: bool,
    units: Vec<UnitState>,
    unit_of: Vec<u32>,
    remaining: Vec<u32>,
    dependents_start: Vec<u32>,
    dependents: Vec<u32>,
    done: Vec<u64>,
    events: Vec<InstEvent>,
    clocks: Vec<Option<Box<[u32]>>>,
    clock_refs: Vec<u32>,
    races: Option<RaceChecker>,
    fluid: Fluid,
    starts: BinaryHeap<Reverse<(u64, u32)>>,
    shapes: HashMap<u32, (TransferShape, u64)>,
    worklist: Vec<u32>,
    sem_ps: u64,
    flops: u64,
    dma_bytes: u64,
    hbm_bytes: u64,
    executed: u64,
    total_ps: u64,
}

impl<'a> Run<'a> {
    fn new(chip: &'a ChipSpec, program: &'a Program, opts: &SimOptions) -> Self {
        let n = program.insts.len();
        let mut index: HashMap<(u16, Unit), u32> = HashMap::new();
        let mut units: Vec<UnitState> = Vec::new();
        let mut unit_of = Vec::with_capacity(n);
        for (i, inst) in program.insts.iter().enumerate() {
            let key = (inst.core, inst.op.unit());
            let u = *index.entry(key).or_insert_with(|| {
                units.push(UnitState {
                    core: key.0,
                    unit: key.1,
                    queue: Vec::new(),
                    head: 0,
                    free_at: 0,
                    last: None,
                    in_flight: false,
                    seq: 0,
                    clock: Vec::new(),
                    busy_ps: 0,
                    bytes: 0,
                });
                units.len() as u32 - 1
            });
            units[u as usize].queue.push(i as u32);
            unit_of.push(u);
        }
        // Dependents in CSR form; duplicate deps count once.
        let mut remaining = vec![0u32; n];
        let mut counts = vec![0u32; n + 1];
        let mut deps_unique: Vec<Vec<u32>> = Vec::with_capacity(n);
        for (i, inst) in program.insts.iter().enumerate() {
            let mut d: Vec<u32> =
                inst.deps.iter().map(|x| x.0).filter(|&x| (x as usize) < n && x as usize != i).collect();
            d.sort_unstable();
            d.dedup();
            remaining[i] = d.len() as u32;
            for &x in &d {
                counts[x as usize + 1] += 1;
            }
            deps_unique.push(d);
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut dependents = vec![0u32; counts[n] as usize];
        for (i, d) in deps_unique.iter().enumerate() {
            for &x in d {
                dependents[fill[x as usize] as usize] = i as u32;
                fill[x as usize] += 1;
            }
        }
        let unit_count = units.len();
        for u in &mut units {
            u.clock = vec![0; unit_count];
        }
        let clock_refs: Vec<u32> = (0..n).map(|i| counts[i + 1] - counts[i]).collect();
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
            chip,
            program,
            record_events: opts.record_events,
            worklist: (0..units.len() as u32).collect(),
            units,
            unit_of,
            remaining,
            dependents_start: counts,
            dependents,
            done: vec![u64::MAX; n],
            events: if opts.record_events { vec![InstEvent::default(); n] } else { Vec::new() },
            clocks: if opts.check_races { vec![None; n] } else { Vec::new() },
            clock_refs,
            races,
            fluid: Fluid::new(chip),
            starts: BinaryHeap::new(),
            shapes: HashMap::new(),
            sem_ps: (k.elementwise.semaphore_ns * 1000.0).round() as u64,
            flops: 0,
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
                let (shape, _) = self.shapes[&inst];
                let work = dma::transfer_work_ns(self.chip, &shape);
                self.fluid.add(inst, self.program.insts[inst as usize].core, &shape, work);
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
        let (shape, data_start) = self
            .shapes
            .remove(&i)
            .unwrap_or((TransferShape { bytes: 0, descriptors: 0, max_engines: 1, hbm_sides: 0 }, t));
        let u = self.unit_of[i as usize] as usize;
        let unit = &mut self.units[u];
        unit.in_flight = false;
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
        let (a, b) = (self.dependents_start[i as usize] as usize, self.dependents_start[i as usize + 1] as usize);
        for k in a..b {
            let j = self.dependents[k] as usize;
            self.remaining[j] -= 1;
            if self.remaining[j] == 0 {
                self.worklist.push(self.unit_of[j]);
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
        loop {
            let unit = &self.units[u];
            let Some(&i) = unit.queue.get(unit.head) else { return Ok(()) };
            if self.remaining[i as usize] > 0 || unit.in_flight {
                return Ok(());
            }
            let inst = &self.program.insts[i as usize];
            // Ready time: latest dependency completion (+ semaphore latency
            // across units, HW-SYNC-COST) and the critical predecessor.
            let mut ready = 0u64;
            let mut pred: Option<u32> = None;
            for d in &inst.deps {
                let Some(&t) = self.done.get(d.0 as usize) else { continue };
                let t = if self.unit_of[d.0 as usize] as usize == u { t } else { t + self.sem_ps };
                if t > ready || (pred.is_none() && t >= ready) {
                    ready = t;
                    pred = Some(d.0);
                }
            }
            let unit_free = self.units[u].free_at;
            let unit_last = self.units[u].last;
            if unit_free >= ready && unit_last.is_some() {
                pred = unit_last;
            }
            self.check_races(u, i)?;
            self.flops += inst.op.flops();
            match inst.op.unit() {
                Unit::Engine(engine) => {
                    let loaded = matches!(unit_last.map(|l| &self.program.insts[l as usize].op),
                        Some(Op::MatMul { stationary: prev, .. }) if matches!(&inst.op, Op::MatMul { stationary, .. } if stationary == prev));
                    let c = cost::engine_cost(self.chip, &inst.op, loaded).map(|c| c.cycles).unwrap_or(0);
                    let penalty = match unit_last {
                        Some(l) if reads_what_wrote(&inst.op, &self.program.insts[l as usize].op) => {
                            cost::same_engine_dep_cycles(self.chip, engine)
                        }
                        _ => 0,
                    };
                    let start = unit_free.max(ready);
                    let dur = cost::cycles_to_ps(self.chip, engine, c + penalty);
                    let end = start + dur;
                    if let Some(e) = exec.as_deref_mut() {
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
                }
                Unit::Dma(_) => {
                    let Some(shape) = dma::transfer_shape(self.chip, &inst.op) else { return Ok(()) };
                    let fixed = (self.chip.core.dma.fixed_latency_ns * 1000.0).round() as u64;
                    // The trigger latency overlaps the previous transfer of the queue (HW-DEF-DMA).
                    let data_start = (ready + fixed).max(unit_free);
                    self.shapes.insert(i, (shape, data_start));
                    self.starts.push(Reverse((data_start, i)));
                    let unit = &mut self.units[u];
                    unit.in_flight = true;
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
    }

    /// Computes `i`'s vector clock and checks its accesses for races.
    fn check_races(&mut self, u: usize, i: u32) -> Result<(), SimError> {
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
                    self.clocks[d] = None;
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
                    core: self.units[unit].core,
                    unit: self.units[unit].unit,
                    write,
                };
                return Err(SimError::Race {
                    space: conflict.space,
                    first: site(earlier.inst, earlier.operand, earlier.unit as usize, earlier.write),
                    second: site(i, name, u, write),
                });
            }
        }
        if self.clock_refs[i as usize] > 0 {
            self.clocks[i as usize] = Some(clock.clone().into_boxed_slice());
        }
        self.units[u].clock = clock;
        Ok(())
    }

    /// Finds a cycle of waits among the instructions that never ran.
    fn deadlock(&self) -> SimError {
        let n = self.program.insts.len();
        let stuck = |i: usize| self.done[i] == u64::MAX;
        // Each stuck instruction waits on a stuck dependency or, if it is not
        // at the head of its queue, on its queue predecessor.
        let mut position = vec![0usize; n];
        for unit in &self.units {
            for (k, &i) in unit.queue.iter().enumerate() {
                position[i as usize] = k;
            }
        }
        let waits_on = |i: usize| -> Option<usize> {
            let unit = &self.units[self.unit_of[i] as usize];
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
                        let u = &self.units[self.unit_of[i] as usize];
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
            .map(|u| UnitStats {
                core: u.core,
                unit: u.unit,
                busy_ps: u.busy_ps,
                instructions: u.queue.len() as u64,
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
        RunResult {
            total_ps: self.total_ps,
            units,
            events: self.events,
            critical_path,
            instructions: self.executed,
            flops: self.flops,
            dma_bytes: self.dma_bytes,
            hbm_bytes: self.hbm_bytes,
        }
    }
}

/// Whether `op` reads SRAM that `prev` wrote (a RAW hazard through SRAM on
/// the same engine, which costs the dependency penalty, HW-DEF-DEP).
fn reads_what_wrote(op: &Op, prev: &Op) -> bool {
    let prev_ops = prev.operands();
    let writes: Vec<&Ap> = prev_ops.iter().filter(|(_, _, r)| *r == Role::Write).map(|(_, a, _)| *a).collect();
    op.operands().iter().filter(|(_, _, r)| *r == Role::Read).any(|(_, a, _)| {
        writes.iter().any(|w| {
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
