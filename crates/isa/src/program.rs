use std::fmt;

use serde::{Deserialize, Serialize};
use trainyard_arch::DType;

use crate::inst::{Inst, InstId};

/// Role of an HBM tensor in a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorKind {
    /// Bound by the caller before the run.
    Input,
    /// Read back after the run.
    Output,
    /// Scratch space owned by the program (zero-filled at start).
    Scratch,
}

impl TensorKind {
    /// Text name.
    pub const fn name(self) -> &'static str {
        match self {
            TensorKind::Input => "input",
            TensorKind::Output => "output",
            TensorKind::Scratch => "scratch",
        }
    }

    /// Parses a text name.
    pub fn parse(s: &str) -> Option<Self> {
        [TensorKind::Input, TensorKind::Output, TensorKind::Scratch].into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for TensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A named, row-major tensor in the chip's HBM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDecl {
    /// Name used to bind inputs and read outputs.
    pub name: String,
    /// Role.
    pub kind: TensorKind,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Byte address in HBM.
    pub offset: u64,
}

impl TensorDecl {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.elements() * self.dtype.size() as u64
    }

    /// `[offset, offset + bytes)`.
    pub fn span(&self) -> (u64, u64) {
        (self.offset, self.offset + self.bytes())
    }
}

/// Version of the program format (text header and binary form).
pub const PROGRAM_VERSION: u32 = 1;

/// A complete program for one chip: HBM tensors and the instructions of all
/// its cores. Instruction ids are indices into `insts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Program {
    /// Name (for reports).
    pub name: String,
    /// HBM tensors.
    pub tensors: Vec<TensorDecl>,
    /// Instructions, in per-queue issue order.
    pub insts: Vec<Inst>,
}

impl Program {
    /// An empty program.
    pub fn new(name: impl Into<String>) -> Self {
        Program { name: name.into(), tensors: Vec::new(), insts: Vec::new() }
    }

    /// Appends an instruction and returns its id.
    pub fn push(&mut self, inst: Inst) -> InstId {
        self.insts.push(inst);
        InstId(self.insts.len() as u32 - 1)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorDecl> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes of HBM the program's tensors occupy (highest end address).
    pub fn hbm_extent(&self) -> u64 {
        self.tensors.iter().map(|t| t.span().1).max().unwrap_or(0)
    }

    /// Number of cores used (highest core index + 1).
    pub fn cores_used(&self) -> u32 {
        self.insts.iter().map(|i| i.core as u32 + 1).max().unwrap_or(1)
    }
}
