//! The one error type of the builder.

use trainyard_isa::{Space, ValidationError};

/// Why a kernel could not be built. Every message names the instruction,
/// operand, tile or tensor at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// The SBUF of a core has no free block large enough.
    #[error(
        "out of SBUF on core {core}: {tile} needs {requested} bytes per partition, \
         {free} free (largest free block {largest})"
    )]
    OutOfSbuf {
        /// Core whose SBUF is full.
        core: u16,
        /// The tile being allocated.
        tile: String,
        /// Bytes per partition requested (after alignment).
        requested: u64,
        /// Bytes per partition free in total.
        free: u64,
        /// Largest free block, bytes per partition.
        largest: u64,
    },
    /// The PSUM of a core has no free block large enough (or none that respects the bank rule).
    #[error(
        "out of PSUM on core {core}: {tile} needs {requested} bytes per partition, \
         {free} free (largest free block {largest})"
    )]
    OutOfPsum {
        /// Core whose PSUM is full.
        core: u16,
        /// The tile being allocated.
        tile: String,
        /// Bytes per partition requested (after alignment).
        requested: u64,
        /// Bytes per partition free in total.
        free: u64,
        /// Largest free block, bytes per partition.
        largest: u64,
    },
    /// A chip's HBM cannot hold another tensor.
    #[error(
        "out of HBM on chip {chip}: tensor `{tensor}` needs {requested} bytes, {free} free ({} over)",
        requested.saturating_sub(*free)
    )]
    OutOfHbm {
        /// The tensor being declared.
        tensor: String,
        /// The chip whose HBM is full.
        chip: u32,
        /// Its size in bytes.
        requested: u64,
        /// Bytes left.
        free: u64,
    },
    /// A tile asks for more partitions than the memory has, or for none.
    #[error("{tile}: {partitions} partitions requested, the memory has 1..={max}")]
    BadPartitions {
        /// The tile being allocated.
        tile: String,
        /// Partitions asked for.
        partitions: usize,
        /// Partitions of the memory.
        max: u32,
    },
    /// Two HBM tensors with one name.
    #[error("tensor `{name}` is declared twice")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor or tile shape that cannot be used (empty, zero-sized, too large).
    #[error("{what}: bad shape {shape:?}: {message}")]
    BadShape {
        /// Tensor or tile.
        what: String,
        /// The shape given.
        shape: Vec<usize>,
        /// What is wrong with it.
        message: String,
    },
    /// `core(c)` with a core the chip (or system) does not have.
    #[error("core {core} does not exist ({cores} cores over all chips)")]
    NoSuchCore {
        /// Requested core.
        core: u16,
        /// Cores of the chip.
        cores: u32,
    },
    /// `core(c)` outside the core window set by `set_core_window`.
    #[error("core {core} is outside the core window (cores {base}..{} as 0..{count})", *base as u32 + *count as u32)]
    OutsideCoreWindow {
        /// Requested core, relative to the window.
        core: u16,
        /// First absolute core of the window.
        base: u16,
        /// Cores in the window.
        count: u16,
    },
    /// A core window that is empty or runs past the last core.
    #[error("core window {base}..{} is empty or past the last core ({cores} cores)", *base as u32 + *count as u32)]
    BadCoreWindow {
        /// First absolute core.
        base: u16,
        /// Cores in the window.
        count: u16,
        /// Cores of the system.
        cores: u32,
    },
    /// A tensor placed on a chip the system does not have.
    #[error("tensor `{tensor}`: chip {chip} does not exist (the system has {chips} chips)")]
    NoSuchChip {
        /// The tensor being declared.
        tensor: String,
        /// Requested chip.
        chip: u32,
        /// Chips of the system.
        chips: u32,
    },
    /// A DMA queue the core does not have.
    #[error("DMA queue {queue} does not exist (a core has {queues} queues)")]
    NoSuchQueue {
        /// Requested queue.
        queue: u32,
        /// Queues per core.
        queues: u32,
    },
    /// An instruction uses a tile that lives on another core.
    #[error("{inst}: operand `{operand}` is {tile} on core {tile_core}, but instructions go to core {core}")]
    WrongCore {
        /// Instruction (`matmul %12`).
        inst: String,
        /// Operand name.
        operand: &'static str,
        /// The tile.
        tile: String,
        /// Core holding the tile.
        tile_core: u16,
        /// Current core of the builder.
        core: u16,
    },
    /// A view operation that does not fit the viewed tensor or tile.
    #[error("{view}: {message}")]
    View {
        /// The view expression at fault (`sbuf#3.cols(0..600)`).
        view: String,
        /// What is wrong.
        message: String,
    },
    /// An operand whose view could not be turned into an access pattern.
    #[error("{inst}: operand `{operand}`: {source}")]
    Operand {
        /// Instruction (`matmul %12`).
        inst: String,
        /// Operand name.
        operand: &'static str,
        /// The underlying error.
        source: Box<BuildError>,
    },
    /// An operand in a memory space the instruction cannot use.
    #[error("{inst}: operand `{operand}` is in {got}, expected {expected}")]
    WrongSpace {
        /// Instruction (`matmul %12`).
        inst: String,
        /// Operand name.
        operand: &'static str,
        /// Its space.
        got: Space,
        /// The space(s) allowed.
        expected: &'static str,
    },
    /// Operand shapes that do not agree.
    #[error("{inst}: {message}")]
    Shape {
        /// Instruction (`matmul %12`).
        inst: String,
        /// The mismatch, with the shapes.
        message: String,
    },
    /// `free` of a tile that is not allocated (freed twice, or from another builder).
    #[error("{tile} is not allocated on core {core} (freed twice?)")]
    NotAllocated {
        /// The tile.
        tile: String,
        /// Its core.
        core: u16,
    },
    /// An instruction uses a view of a tile that was freed.
    #[error("{inst}: operand `{operand}` views {tile}, which was freed")]
    FreedTile {
        /// Instruction (`copy %3`).
        inst: String,
        /// Operand name.
        operand: &'static str,
        /// The tile.
        tile: String,
    },
    /// More instructions than an instruction id can number.
    #[error("program has more than {max} instructions")]
    TooManyInstructions {
        /// The limit.
        max: u64,
    },
    /// The finished program breaks an ISA rule of the chip (found by
    /// `trainyard_isa::validate`, which names the instruction and rule).
    #[error("program fails validation: {0}")]
    Invalid(#[from] ValidationError),
    /// A library kernel cannot be built for these arguments.
    #[error("kernel `{kernel}`: {message}")]
    Kernel {
        /// The kernel.
        kernel: String,
        /// What is wrong.
        message: String,
    },
}
