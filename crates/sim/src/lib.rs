//! `trainyard-sim`: the NeuronCore in software.
//!
//! [`Simulator`] runs a [`Program`] on one chip (all the cores the program
//! uses, sharing HBM and its bandwidth), or on several chips of a system
//! ([`trainyard_arch::ChipSpec::with_chips`]) on one clock, in one of two [`Mode`]s:
//! *functional + timed* (values and time) or *timed only* (time without
//! values). Both give identical cycle counts: no cost rule looks at values.
//!
//! Timing is event-driven: every engine and DMA queue runs its own in-order
//! stream; an instruction starts when its unit is free and the instructions it
//! waits for have finished, and occupies its unit for the cost given by a named
//! rule in [`cost`] (each citing its `shared/hw` fact). DMA transfers share
//! their core's DMA engines, each chip's HBM bandwidth and, between chips,
//! the chip-to-chip links of the route as a fluid model ([`dma`]).
//!
//! The simulator also checks what the hardware would not: conflicting
//! accesses not ordered by dependencies ([`SimError::Race`]), a cycle of waits
//! ([`SimError::Deadlock`]), and out-of-bounds operands.
//!
//! ```
//! use trainyard_arch::{ChipSpec, DType};
//! use trainyard_isa::{Ap, Inst, Op, Program, TensorDecl, TensorKind};
//! use trainyard_sim::{Mode, SimOptions, Simulator};
//!
//! let chip = ChipSpec::by_name("trn2").unwrap();
//! let mut p = Program::new("copy");
//! p.tensors.push(TensorDecl { name: "x".into(), kind: TensorKind::Input, dtype: DType::F32, shape: vec![4, 8], offset: 0 });
//! p.tensors.push(TensorDecl { name: "y".into(), kind: TensorKind::Output, dtype: DType::F32, shape: vec![4, 8], offset: 128 });
//! let load = p.push(Inst::new(Op::DmaCopy { queue: 0, dst: Ap::sbuf(0, 4, 0, &[8], DType::F32), src: Ap::hbm(0, 4, &[8], DType::F32) }));
//! let mut store = Inst::new(Op::DmaCopy { queue: 1, dst: Ap::hbm(128, 4, &[8], DType::F32), src: Ap::sbuf(0, 4, 0, &[8], DType::F32) });
//! store.deps.push(load);
//! p.push(store);
//! let mut sim = Simulator::new(&chip, &p, SimOptions::default()).unwrap();
//! let x: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! sim.write_tensor("x", &x).unwrap();
//! let result = sim.run().unwrap();
//! assert_eq!(sim.read_tensor("y").unwrap(), x);
//! assert!(result.total_ps > 0);
//! ```
#![deny(missing_docs)]

pub mod cost;
pub mod dma;
mod exec;
mod mem;
mod plan;
mod race;
mod sched;

pub use sched::{InstEvent, LinkStats, RunResult, Simulator, UnitStats};

use trainyard_isa::{InstId, Program, Unit};

/// What the simulator computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Values and time.
    #[default]
    Functional,
    /// Time only: no memory is allocated and no values are computed.
    TimedOnly,
}

/// Options of one simulation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Functional or timed only.
    pub mode: Mode,
    /// Detect conflicting accesses not ordered by dependencies.
    pub check_races: bool,
    /// Record one event per instruction (start, end, unit, critical
    /// predecessor) for traces and the critical path.
    pub record_events: bool,
    /// Round stores stochastically instead of to nearest even (HW-NC-ROUND).
    pub stochastic_rounding: bool,
    /// Seed of the stochastic-rounding generator.
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            mode: Mode::Functional,
            check_races: true,
            record_events: true,
            stochastic_rounding: false,
            seed: 0,
        }
    }
}

/// Where in a program an access happened (for race reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessSite {
    /// The instruction.
    pub inst: InstId,
    /// Its mnemonic.
    pub mnemonic: &'static str,
    /// The operand name.
    pub operand: &'static str,
    /// Core and unit that ran it.
    pub core: u16,
    /// Unit (engine or DMA queue).
    pub unit: Unit,
    /// True for a write.
    pub write: bool,
}

impl std::fmt::Display for AccessSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} `{}` on core {} {})",
            self.inst,
            self.mnemonic,
            if self.write { "writes" } else { "reads" },
            self.operand,
            self.core,
            self.unit
        )
    }
}

/// A fault found while loading or running a program.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The program does not validate against the chip.
    #[error("invalid program: {0}")]
    Invalid(String),
    /// Two conflicting accesses are not ordered by dependencies.
    #[error("race on {space}: {first} and {second} are not ordered by dependencies")]
    Race {
        /// Memory space (with core for SRAM).
        space: String,
        /// The access of the instruction that comes first in program order.
        first: AccessSite,
        /// The access of the instruction that comes later in program order.
        second: AccessSite,
    },
    /// A cycle of waits: none of these instructions can ever start.
    #[error("deadlock: cycle of waits {}", format_cycle(.cycle))]
    Deadlock {
        /// The instructions of the cycle with their units, each waiting on the next.
        cycle: Vec<(InstId, String)>,
    },
    /// An operand lies outside its memory.
    #[error("{inst} {mnemonic}: operand `{operand}` out of bounds: {message}")]
    OutOfBounds {
        /// The instruction.
        inst: InstId,
        /// Its mnemonic.
        mnemonic: &'static str,
        /// The operand.
        operand: &'static str,
        /// Details.
        message: String,
    },
    /// An indirect DMA index is out of range.
    #[error("{inst} dma_gather: index {index} at partition {partition} is outside the table's {rows} rows")]
    GatherIndex {
        /// The instruction.
        inst: InstId,
        /// The partition holding the bad index.
        partition: u32,
        /// The index value.
        index: i64,
        /// Rows in the table.
        rows: u32,
    },
    /// No such tensor in the program.
    #[error("no tensor named `{0}` in the program")]
    UnknownTensor(String),
    /// Host data of the wrong size for a tensor.
    #[error("tensor `{name}` needs {expected} bytes, got {got}")]
    TensorSize {
        /// Tensor name.
        name: String,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// Values were requested from a timed-only simulation.
    #[error("tensor values are not available in timed-only mode")]
    NoValues,
}

fn format_cycle(cycle: &[(InstId, String)]) -> String {
    let mut s: Vec<String> = cycle.iter().map(|(i, u)| format!("{i} on {u}")).collect();
    if let Some(first) = cycle.first() {
        s.push(format!("{} on {}", first.0, first.1));
    }
    s.join(" waits for ")
}

/// Checks that a program is well formed for `chip` before simulation. (A
/// cycle of waits is not searched for here: the run reports it as
/// [`SimError::Deadlock`].)
pub fn check_program(program: &Program, chip: &trainyard_arch::ChipSpec) -> Result<(), SimError> {
    match trainyard_isa::validate_static(program, chip).into_iter().next() {
        Some(e) => Err(SimError::Invalid(e.to_string())),
        None => Ok(()),
    }
}
