//! The text form of programs: a line-oriented assembly language (grammar and
//! per-instruction reference in `docs/isa.md`).
//!
//! The printer is canonical: for every program `p` whose access patterns keep
//! their unused free dims zeroed (as [`Ap::new`] does),
//! `Program::parse(&p.to_text()) == Ok(p)`, with floats kept bit-exact (NaN
//! payloads, `-0.0`, subnormals). The parser accepts a little more than the
//! printer writes (hex integers, engine prefixes, omitted default strides).
//!
//! ```
//! use trainyard_isa::{Ap, Program};
//! use trainyard_arch::DType;
//! let ap: Ap = "sbuf[0:128,4,512@2]+1024:bf16".parse().unwrap();
//! assert_eq!(ap.free_shape(), vec![4, 512]);
//! assert_eq!(ap.to_string(), "sbuf[0:128,4,512@2]+1024:bf16");
//! let text = ".version 1\n.program demo\n%0: memset engine=vector dst=sbuf[0:128,512]:f32 value=0.0\n";
//! let p = Program::parse(text).unwrap();
//! assert_eq!(p.to_text(), text);
//! ```

use crate::inst::{Op, ScalarStage};
use crate::program::PROGRAM_VERSION;

/// Why one value (the right-hand side of `key=value`, or a directive
/// argument) could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A malformed or out-of-range number.
    #[error("bad number `{text}` (expected {expected})")]
    BadNumber {
        /// The offending text.
        text: String,
        /// What was expected (`an unsigned 32-bit integer`, ...).
        expected: &'static str,
    },
    /// An unknown element type.
    #[error("{0}")]
    BadDType(#[from] trainyard_arch::UnknownDType),
    /// An unknown name of an enumeration (engine, AluOp, ActFn, space, kind).
    #[error("unknown {what} `{text}` (expected one of: {expected})")]
    UnknownName {
        /// The enumeration.
        what: &'static str,
        /// The offending text.
        text: String,
        /// The accepted names.
        expected: String,
    },
    /// Something else was expected here.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar wants.
        expected: String,
        /// What is there (quoted), or `end of value`.
        found: String,
    },
    /// The value parsed but text follows it.
    #[error("trailing garbage `{0}` after the value")]
    Trailing(String),
    /// Well-formed but not a legal value (range end before start, too many dims, ...).
    #[error("{0}")]
    Invalid(String),
}

/// What is wrong with a program text (see [`TextError`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextErrorKind {
    /// A lexical or structural problem (unterminated string, missing `=`, ...).
    #[error("{0}")]
    Syntax(String),
    /// The first directive is not `.version`.
    #[error("the program must start with `.version {}`", PROGRAM_VERSION)]
    MissingVersion,
    /// `.version` names a version this build cannot read.
    #[error("program text version `{0}` is not supported (this build reads version {v})", v = PROGRAM_VERSION)]
    Version(String),
    /// `.tensor` or an instruction comes before `.program NAME`, or it is absent.
    #[error("missing `.program NAME` before {0}")]
    MissingProgram(&'static str),
    /// `.version` or `.program` given twice.
    #[error("duplicate `{0}` directive")]
    DuplicateDirective(&'static str),
    /// A line starts with an unknown `.directive`.
    #[error("unknown directive `{0}` (expected .version, .program or .tensor)")]
    UnknownDirective(String),
    /// The first word of an instruction is not `%N:`.
    #[error("bad instruction label `{0}` (expected `%N:`)")]
    BadLabel(String),
    /// The label `%N:` does not equal the instruction's index.
    #[error("instruction label `%{found}:` does not match its index (expected `%{expected}:`)")]
    LabelMismatch {
        /// Number in the label.
        found: u64,
        /// Index of the instruction.
        expected: usize,
    },
    /// An unknown instruction mnemonic.
    #[error("unknown instruction `{0}` (expected one of: {list})", list = mnemonic_list())]
    UnknownMnemonic(String),
    /// A required field is absent.
    #[error("{context}: missing field `{field}`")]
    MissingField {
        /// Instruction mnemonic or directive.
        context: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A field is given twice.
    #[error("{context}: duplicate field `{field}`")]
    DuplicateField {
        /// Instruction mnemonic or directive.
        context: &'static str,
        /// Field name.
        field: String,
    },
    /// A field the instruction does not have.
    #[error("{context}: unknown field `{field}` (expected one of: {expected})")]
    UnknownField {
        /// Instruction mnemonic or directive.
        context: &'static str,
        /// Field name.
        field: String,
        /// The fields the instruction accepts.
        expected: String,
    },
    /// A field whose value cannot be read.
    #[error("{context}: field `{field}`: {error}")]
    BadField {
        /// Instruction mnemonic or directive.
        context: &'static str,
        /// Field name.
        field: &'static str,
        /// What is wrong with the value.
        error: ValueError,
    },
    /// Words after the last argument of a directive.
    #[error("{context}: trailing garbage `{text}`")]
    TrailingGarbage {
        /// Directive.
        context: &'static str,
        /// The first extra word.
        text: String,
    },
}

/// A program text that cannot be parsed, with the 1-based line and column
/// (in characters) of the offending token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {kind}")]
pub struct TextError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
    /// What is wrong.
    pub kind: TextErrorKind,
}

// ---------------------------------------------------------------------------
// The instruction table: mnemonic, fields in printed order, parser.

/// Fields every instruction accepts, after its own (both optional).
const COMMON_FIELDS: [&str; 2] = ["core", "deps"];

struct Spec {
    mnemonic: &'static str,
    fields: &'static [&'static str],
    parse: fn(&Fields) -> Result<Op, TextError>,
}

const SPECS: &[Spec] = &[
    Spec {
        mnemonic: "matmul",
        fields: &["dst", "stationary", "moving", "start", "stop"],
        parse: |f| {
            Ok(Op::MatMul {
                dst: f.req("dst", ap)?,
                stationary: f.req("stationary", ap)?,
                moving: f.req("moving", ap)?,
                start: f.req("start", boolean)?,
                stop: f.req("stop", boolean)?,
            })
        },
    },
    Spec {
        mnemonic: "transpose",
        fields: &["engine", "dst", "src"],
        parse: |f| {
            Ok(Op::Transpose { engine: f.req("engine", engine)?, dst: f.req("dst", ap)?, src: f.req("src", ap)? })
        },
    },
    Spec {
        mnemonic: "tensor_tensor",
        fields: &["engine", "op", "dst", "in0", "in1"],
        parse: |f| {
            Ok(Op::TensorTensor {
                engine: f.req("engine", engine)?,
                op: f.req("op", alu_op)?,
                dst: f.req("dst", ap)?,
                in0: f.req("in0", ap)?,
                in1: f.req("in1", ap)?,
            })
        },
    },
    Spec {
        mnemonic: "tensor_scalar",
        fields: &["engine", "dst", "src", "op0", "operand0", "reverse0", "op1", "operand1", "reverse1"],
        parse: |f| {
            let first = ScalarStage {
                op: f.req("op0", alu_op)?,
                operand: f.req("operand0", operand)?,
                reverse: f.req("reverse0", boolean)?,
            };
            let second = match f.opt("op1", alu_op)? {
                Some(op) => {
                    Some(ScalarStage { op, operand: f.req("operand1", operand)?, reverse: f.req("reverse1", boolean)? })
                }
                None => {
                    f.forbid("operand1", "op1")?;
                    f.forbid("reverse1", "op1")?;
                    None
                }
            };
            Ok(Op::TensorScalar {
                engine: f.req("engine", engine)?,
                dst: f.req("dst", ap)?,
                src: f.req("src", ap)?,
                first,
                second,
            })
        },
    },
    Spec {
        mnemonic: "tensor_reduce",
        fields: &["engine", "op", "dst", "src", "axes", "negate"],
        parse: |f| {
            Ok(Op::TensorReduce {
                engine: f.req("engine", engine)?,
                op: f.req("op", alu_op)?,
                dst: f.req("dst", ap)?,
                src: f.req("src", ap)?,
                axes: f.req("axes", |c| c.int("an unsigned 8-bit integer"))?,
                negate: f.req("negate", boolean)?,
            })
        },
    },
    Spec {
        mnemonic: "activation",
        fields: &["func", "dst", "src", "scale", "bias", "acc"],
        parse: |f| {
            Ok(Op::Activation {
                func: f.req("func", act_fn)?,
                dst: f.req("dst", ap)?,
                src: f.req("src", ap)?,
                scale: f.req("scale", operand)?,
                bias: f.opt("bias", ap)?,
                acc: f.opt("acc", ap)?,
            })
        },
    },
    Spec {
        mnemonic: "copy",
        fields: &["engine", "dst", "src"],
        parse: |f| Ok(Op::Copy { engine: f.req("engine", engine)?, dst: f.req("dst", ap)?, src: f.req("src", ap)? }),
    },
    Spec {
        mnemonic: "select",
        fields: &["engine", "dst", "pred", "on_true", "on_false"],
        parse: |f| {
            Ok(Op::Select {
                engine: f.req("engine", engine)?,
                dst: f.req("dst", ap)?,
                pred: f.req("pred", ap)?,
                on_true: f.req("on_true", ap)?,
                on_false: f.req("on_false", ap)?,
            })
        },
    },
    Spec {
        mnemonic: "iota",
        fields: &["dst", "base", "channel_multiplier", "steps"],
        parse: |f| {
            Ok(Op::Iota {
                dst: f.req("dst", ap)?,
                base: f.req("base", |c| c.int("a signed 32-bit integer"))?,
                channel_multiplier: f.req("channel_multiplier", |c| c.int("a signed 32-bit integer"))?,
                steps: f.req("steps", steps)?,
            })
        },
    },
    Spec {
        mnemonic: "memset",
        fields: &["engine", "dst", "value"],
        parse: |f| {
            Ok(Op::Memset {
                engine: f.req("engine", engine)?,
                dst: f.req("dst", ap)?,
                value: f.req("value", |c| parse_f64(c.take_rest()).map_err(|e| (0, e)))?,
            })
        },
    },
    Spec {
        mnemonic: "partition_reduce",
        fields: &["op", "dst", "src"],
        parse: |f| Ok(Op::PartitionReduce { op: f.req("op", alu_op)?, dst: f.req("dst", ap)?, src: f.req("src", ap)? }),
    },
    Spec {
        mnemonic: "partition_broadcast",
        fields: &["dst", "src"],
        parse: |f| Ok(Op::PartitionBroadcast { dst: f.req("dst", ap)?, src: f.req("src", ap)? }),
    },
    Spec {
        mnemonic: "partition_shuffle",
        fields: &["dst", "src", "perm"],
        parse: |f| {
            Ok(Op::PartitionShuffle {
                dst: f.req("dst", ap)?,
                src: f.req("src", ap)?,
                perm: f.req("perm", |c| c.list(|c| c.int("an unsigned 8-bit integer")))?,
            })
        },
    },
    Spec {
        mnemonic: "dma_copy",
        fields: &["queue", "dst", "src"],
        parse: |f| {
            Ok(Op::DmaCopy {
                queue: f.req("queue", |c| c.int("an unsigned 8-bit integer"))?,
                dst: f.req("dst", ap)?,
                src: f.req("src", ap)?,
            })
        },
    },
    Spec {
        mnemonic: "dma_gather",
        fields: &["queue", "dst", "table", "index"],
        parse: |f| {
            Ok(Op::DmaGather {
                queue: f.req("queue", |c| c.int("an unsigned 8-bit integer"))?,
                dst: f.req("dst", ap)?,
                table: f.req("table", ap)?,
                index: f.req("index", ap)?,
            })
        },
    },
];

fn mnemonic_list() -> String {
    SPECS.iter().map(|s| s.mnemonic).collect::<Vec<_>>().join(", ")
}

mod parse;
mod print;

pub use parse::parse_ap;
#[allow(unused_imports)]
use parse::*;
#[allow(unused_imports)]
use print::*;
pub use print::{format_ap, format_inst};

/// Proptest strategies for arbitrary programs, shared by the crate's tests.
#[cfg(test)]
pub(crate) mod strategies;

#[cfg(test)]
mod tests;
