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

use std::fmt::Write as _;
use std::str::FromStr;

use trainyard_arch::DType;

use crate::ap::{Ap, Dim, Space, MAX_FREE_DIMS};
use crate::inst::{Inst, InstId, Op, Operand, ScalarStage};
use crate::ops::{ActFn, AluOp, Engine};
use crate::program::{Program, TensorDecl, TensorKind, PROGRAM_VERSION};

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

// ---------------------------------------------------------------------------
// Printing.

/// Formats an access pattern in the text syntax
/// (`sbuf[START:END,SIZE@STRIDE,...]+OFFSET:DTYPE`, see `docs/isa.md`).
pub fn format_ap(ap: &Ap) -> String {
    let dims = &ap.dims[..(ap.ndims as usize).min(MAX_FREE_DIMS)];
    let defaults = default_strides(dims.iter().map(|d| d.size));
    let mut s = String::with_capacity(40);
    s.push_str(ap.space.name());
    s.push('[');
    let end = ap.start_partition as u64 + ap.partitions as u64;
    if ap.space == Space::Hbm && ap.start_partition == 0 {
        let _ = write!(s, "{end}");
    } else {
        let _ = write!(s, "{}:{end}", ap.start_partition);
    }
    if Some(ap.partition_stride) != default_partition_stride(ap.space, dims.iter().map(|d| d.size)) {
        let _ = write!(s, "@{}", ap.partition_stride);
    }
    for (d, default) in dims.iter().zip(defaults) {
        let _ = write!(s, ",{}", d.size);
        if Some(d.stride) != default {
            let _ = write!(s, "@{}", d.stride);
        }
    }
    s.push(']');
    if ap.offset != 0 {
        let _ = write!(s, "+{}", ap.offset);
    }
    s.push(':');
    s.push_str(ap.dtype.name());
    s
}

/// Row-major strides for the given sizes (innermost 1), `None` where the
/// product overflows `i64` (such strides are always printed).
fn default_strides(sizes: impl DoubleEndedIterator<Item = u32>) -> Vec<Option<i64>> {
    let mut out: Vec<Option<i64>> = Vec::with_capacity(MAX_FREE_DIMS);
    let mut acc = Some(1i64);
    for size in sizes.rev() {
        out.push(acc);
        acc = acc.and_then(|a| a.checked_mul(size as i64));
    }
    out.reverse();
    out
}

/// SBUF/PSUM have no partition stride (0); HBM rows are row-major over the free sizes.
fn default_partition_stride(space: Space, mut sizes: impl Iterator<Item = u32>) -> Option<i64> {
    match space {
        Space::Hbm => sizes.try_fold(1i64, |acc, s| acc.checked_mul(s as i64)),
        Space::Sbuf | Space::Psum => Some(0),
    }
}

fn format_f32(x: f32) -> String {
    if x.is_nan() {
        if x.to_bits() == f32::NAN.to_bits() {
            "nan".to_string()
        } else {
            format!("nan:0x{:08x}", x.to_bits())
        }
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        // Debug prints the shortest decimal that reads back to the same bits.
        format!("{x:?}")
    }
}

fn format_f64(x: f64) -> String {
    if x.is_nan() {
        if x.to_bits() == f64::NAN.to_bits() {
            "nan".to_string()
        } else {
            format!("nan:0x{:016x}", x.to_bits())
        }
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{x:?}")
    }
}

fn format_operand(o: &Operand) -> String {
    match o {
        Operand::Imm(x) => format_f32(*x),
        Operand::PerPartition(ap) => format_ap(ap),
    }
}

fn is_bare_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

/// A name as written: bare when it is an identifier, otherwise a quoted string.
fn format_name(s: &str) -> String {
    if is_bare_name(s) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds one instruction line field by field.
struct LineWriter(String);

impl LineWriter {
    fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, " {key}={value}");
        self
    }
    fn ap(&mut self, key: &str, ap: &Ap) -> &mut Self {
        self.field(key, format_ap(ap))
    }
    fn stage(&mut self, n: u8, s: &ScalarStage) -> &mut Self {
        self.field(&format!("op{n}"), s.op.name())
            .field(&format!("operand{n}"), format_operand(&s.operand))
            .field(&format!("reverse{n}"), s.reverse)
    }
}

fn format_list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = items.iter().map(f).collect();
    format!("[{}]", parts.join(","))
}

/// Formats one instruction as a text line (`%N: mnemonic key=value ...`,
/// no trailing newline).
pub fn format_inst(id: InstId, inst: &Inst) -> String {
    let mut w = LineWriter(format!("%{}: {}", id.0, inst.op.mnemonic()));
    match &inst.op {
        Op::MatMul { dst, stationary, moving, start, stop } => {
            w.ap("dst", dst).ap("stationary", stationary).ap("moving", moving).field("start", start).field("stop", stop)
        }
        Op::Transpose { engine, dst, src } | Op::Copy { engine, dst, src } => {
            w.field("engine", engine.name()).ap("dst", dst).ap("src", src)
        }
        Op::TensorTensor { engine, op, dst, in0, in1 } => {
            w.field("engine", engine.name()).field("op", op.name()).ap("dst", dst).ap("in0", in0).ap("in1", in1)
        }
        Op::TensorScalar { engine, dst, src, first, second } => {
            w.field("engine", engine.name()).ap("dst", dst).ap("src", src).stage(0, first);
            match second {
                Some(s) => w.stage(1, s),
                None => &mut w,
            }
        }
        Op::TensorReduce { engine, op, dst, src, axes, negate } => w
            .field("engine", engine.name())
            .field("op", op.name())
            .ap("dst", dst)
            .ap("src", src)
            .field("axes", axes)
            .field("negate", negate),
        Op::Activation { func, dst, src, scale, bias, acc } => {
            w.field("func", func.name()).ap("dst", dst).ap("src", src).field("scale", format_operand(scale));
            if let Some(b) = bias {
                w.ap("bias", b);
            }
            if let Some(a) = acc {
                w.ap("acc", a);
            }
            &mut w
        }
        Op::Select { engine, dst, pred, on_true, on_false } => w
            .field("engine", engine.name())
            .ap("dst", dst)
            .ap("pred", pred)
            .ap("on_true", on_true)
            .ap("on_false", on_false),
        Op::Iota { dst, base, channel_multiplier, steps } => {
            // Trailing zero steps are implied, so 1-D iotas read `steps=[1]`.
            let used = steps.iter().rposition(|&s| s != 0).map_or(1, |i| i + 1);
            w.ap("dst", dst)
                .field("base", base)
                .field("channel_multiplier", channel_multiplier)
                .field("steps", format_list(steps.get(..used).unwrap_or(steps), |s| s.to_string()))
        }
        Op::Memset { engine, dst, value } => {
            w.field("engine", engine.name()).ap("dst", dst).field("value", format_f64(*value))
        }
        Op::PartitionReduce { op, dst, src } => w.field("op", op.name()).ap("dst", dst).ap("src", src),
        Op::PartitionBroadcast { dst, src } => w.ap("dst", dst).ap("src", src),
        Op::PartitionShuffle { dst, src, perm } => {
            w.ap("dst", dst).ap("src", src).field("perm", format_list(perm, |p| p.to_string()))
        }
        Op::DmaCopy { queue, dst, src } => w.field("queue", queue).ap("dst", dst).ap("src", src),
        Op::DmaGather { queue, dst, table, index } => {
            w.field("queue", queue).ap("dst", dst).ap("table", table).ap("index", index)
        }
    };
    if inst.core != 0 {
        w.field("core", inst.core);
    }
    if !inst.deps.is_empty() {
        w.field("deps", format_list(&inst.deps, |d| d.to_string()));
    }
    w.0
}

impl Program {
    /// The canonical text form (see `docs/isa.md`); [`Program::parse`] reads it back exactly.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(64 + self.tensors.len() * 48 + self.insts.len() * 128);
        let _ = writeln!(out, ".version {PROGRAM_VERSION}");
        let _ = writeln!(out, ".program {}", format_name(&self.name));
        for t in &self.tensors {
            let shape = format_list(&t.shape, |d| d.to_string());
            let _ =
                writeln!(out, ".tensor {} {} {} {shape} @{}", format_name(&t.name), t.kind, t.dtype.name(), t.offset);
        }
        for (i, inst) in self.insts.iter().enumerate() {
            out.push_str(&format_inst(InstId(i as u32), inst));
            out.push('\n');
        }
        out
    }

    /// Parses the text form. Errors name the line, column, instruction and field.
    pub fn parse(text: &str) -> Result<Program, TextError> {
        let mut version_seen = false;
        let mut program: Option<Program> = None;
        let mut last_line = 1;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            last_line = line;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let words = split_words(raw).map_err(|(column, msg)| TextError {
                line,
                column,
                kind: TextErrorKind::Syntax(msg),
            })?;
            let Some(first) = words.first() else { continue };
            let err = |column: usize, kind: TextErrorKind| TextError { line, column, kind };
            if !version_seen && first.text != ".version" {
                return Err(err(first.col, TextErrorKind::MissingVersion));
            }
            match first.text {
                ".version" => {
                    if version_seen {
                        return Err(err(first.col, TextErrorKind::DuplicateDirective(".version")));
                    }
                    let [v] = directive_args::<1>(line, ".version", &words, &["version"])?;
                    if parse_int::<u32>(v.text, "a version number").ok() != Some(PROGRAM_VERSION) {
                        return Err(err(v.col, TextErrorKind::Version(clip(v.text))));
                    }
                    version_seen = true;
                }
                ".program" => {
                    if program.is_some() {
                        return Err(err(first.col, TextErrorKind::DuplicateDirective(".program")));
                    }
                    let [name] = directive_args::<1>(line, ".program", &words, &["name"])?;
                    let name = word_value(line, ".program", "name", name, parse_name)?;
                    program = Some(Program::new(name));
                }
                ".tensor" => {
                    let p = program.as_mut().ok_or(err(first.col, TextErrorKind::MissingProgram("`.tensor`")))?;
                    p.tensors.push(parse_tensor(line, &words)?);
                }
                w if w.starts_with('%') => {
                    let p = program.as_mut().ok_or(err(first.col, TextErrorKind::MissingProgram("instructions")))?;
                    let inst = parse_inst(line, &words, p.insts.len())?;
                    p.insts.push(inst);
                }
                w if w.starts_with('.') => return Err(err(first.col, TextErrorKind::UnknownDirective(clip(w)))),
                w => {
                    return Err(err(
                        first.col,
                        TextErrorKind::Syntax(format!(
                            "expected a directive (`.tensor`, ...) or an instruction `%N: ...`, found `{}`",
                            clip(w)
                        )),
                    ))
                }
            }
        }
        if !version_seen {
            return Err(TextError { line: 1, column: 1, kind: TextErrorKind::MissingVersion });
        }
        program.ok_or(TextError {
            line: last_line,
            column: 1,
            kind: TextErrorKind::MissingProgram("the end of the text"),
        })
    }
}

// ---------------------------------------------------------------------------
// Lexing: a line is whitespace-separated words; `;` or `#` outside a quoted
// string starts a comment.

struct Word<'a> {
    /// 1-based column of the first character.
    col: usize,
    text: &'a str,
}

fn split_words(line: &str) -> Result<Vec<Word<'_>>, (usize, String)> {
    let mut words = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte, col)
    let mut quote: Option<usize> = None; // col of the opening quote
    let mut escaped = false;
    let mut col = 0;
    let mut end_byte = line.len();
    for (b, c) in line.char_indices() {
        col += 1;
        if quote.is_some() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quote = None;
            }
            continue;
        }
        if c == ';' || c == '#' {
            end_byte = b;
            break;
        }
        if c.is_whitespace() {
            if let Some((sb, sc)) = start.take() {
                words.push(Word { col: sc, text: line.get(sb..b).unwrap_or("") });
            }
            continue;
        }
        if start.is_none() {
            start = Some((b, col));
        }
        if c == '"' {
            quote = Some(col);
        }
    }
    if let Some(qcol) = quote {
        return Err((qcol, "unterminated string (missing closing `\"`)".to_string()));
    }
    if let Some((sb, sc)) = start {
        words.push(Word { col: sc, text: line.get(sb..end_byte).unwrap_or("") });
    }
    Ok(words)
}

/// At most 24 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(24).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Values: a small cursor over one word. Errors carry the byte position in the word.

type PErr = (usize, ValueError);

struct Cur<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cur<'a> {
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> (usize, &'a str) {
        let start = self.pos;
        let rest = self.rest();
        let len = rest.char_indices().find(|&(_, c)| !f(c)).map_or(rest.len(), |(i, _)| i);
        self.pos += len;
        (start, rest.get(..len).unwrap_or(""))
    }

    fn take_rest(&mut self) -> &'a str {
        let r = self.rest();
        self.pos = self.s.len();
        r
    }

    fn found(&self) -> String {
        match self.rest() {
            "" => "end of value".to_string(),
            r => format!("`{}`", clip(r)),
        }
    }

    fn expected(&self, what: impl Into<String>) -> PErr {
        (self.pos, ValueError::Expected { expected: what.into(), found: self.found() })
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), PErr> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.expected(format!("`{c}` {what}")))
        }
    }

    fn ident(&mut self) -> (usize, &'a str) {
        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn int<T: TryFrom<i128>>(&mut self, expected: &'static str) -> Result<T, PErr> {
        let start = self.pos;
        if !self.eat('-') {
            self.eat('+');
        }
        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
        let tok = self.s.get(start..self.pos).unwrap_or("");
        if tok.is_empty() {
            return Err(self.expected(expected));
        }
        parse_int(tok, expected).map_err(|e| (start, e))
    }

    /// `[a,b,...]`, possibly empty.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T, PErr>) -> Result<Vec<T>, PErr> {
        self.expect('[', "to open a list")?;
        let mut out = Vec::new();
        if self.eat(']') {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat(']') {
                return Ok(out);
            }
            self.expect(',', "or `]` in a list")?;
        }
    }
}

fn parse_int<T: TryFrom<i128>>(tok: &str, expected: &'static str) -> Result<T, ValueError> {
    let bad = || ValueError::BadNumber { text: clip(tok), expected };
    let (neg, body) = match tok.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, tok.strip_prefix('+').unwrap_or(tok)),
    };
    let (radix, digits) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(d) => (16, d),
        None => (10, body),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let magnitude = i128::from_str_radix(digits, radix).map_err(|_| bad())?;
    T::try_from(if neg { -magnitude } else { magnitude }).map_err(|_| bad())
}

fn is_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let s = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - s
    };
    let mut n = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Classifies a float literal; `Ok(None)` for a decimal to hand to `str::parse`.
fn float_special(s: &str, hex_digits: usize) -> Result<Option<FloatSpecial>, ValueError> {
    let bad = || ValueError::BadNumber {
        text: clip(s),
        expected: "a float (decimal, `inf`, `-inf`, `nan` or `nan:0x` and the bits)",
    };
    match s {
        "inf" | "+inf" => return Ok(Some(FloatSpecial::Inf(false))),
        "-inf" => return Ok(Some(FloatSpecial::Inf(true))),
        "nan" => return Ok(Some(FloatSpecial::Nan)),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("nan:0x") {
        if hex.is_empty() || hex.len() > hex_digits || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return u64::from_str_radix(hex, 16).map(|b| Some(FloatSpecial::Bits(b))).map_err(|_| bad());
    }
    if is_decimal(s) {
        Ok(None)
    } else {
        Err(bad())
    }
}

enum FloatSpecial {
    Inf(bool),
    Nan,
    Bits(u64),
}

fn not_nan(s: &str) -> ValueError {
    ValueError::Invalid(format!("`{}` is not a NaN bit pattern", clip(s)))
}

fn parse_f32(s: &str) -> Result<f32, ValueError> {
    match float_special(s, 8)? {
        Some(FloatSpecial::Inf(neg)) => Ok(if neg { f32::NEG_INFINITY } else { f32::INFINITY }),
        Some(FloatSpecial::Nan) => Ok(f32::NAN),
        Some(FloatSpecial::Bits(b)) => {
            let x = f32::from_bits(b as u32);
            if x.is_nan() {
                Ok(x)
            } else {
                Err(not_nan(s))
            }
        }
        // Parsed straight to f32 (correctly rounded, no double rounding through f64).
        None => s.parse::<f32>().map_err(|_| ValueError::BadNumber { text: clip(s), expected: "a float" }),
    }
}

fn parse_f64(s: &str) -> Result<f64, ValueError> {
    match float_special(s, 16)? {
        Some(FloatSpecial::Inf(neg)) => Ok(if neg { f64::NEG_INFINITY } else { f64::INFINITY }),
        Some(FloatSpecial::Nan) => Ok(f64::NAN),
        Some(FloatSpecial::Bits(b)) => {
            let x = f64::from_bits(b);
            if x.is_nan() {
                Ok(x)
            } else {
                Err(not_nan(s))
            }
        }
        None => s.parse::<f64>().map_err(|_| ValueError::BadNumber { text: clip(s), expected: "a float" }),
    }
}

fn parse_name(c: &mut Cur) -> Result<String, PErr> {
    if !c.eat('"') {
        let (start, name) = c.take_while(|ch| !ch.is_whitespace());
        if is_bare_name(name) {
            return Ok(name.to_string());
        }
        return Err((
            start,
            ValueError::Invalid(format!(
                "bad name `{}`: a bare name is a letter or `_` then letters, digits, `_`, `.`, `-`, `/`; quote others",
                clip(name)
            )),
        ));
    }
    let mut out = String::new();
    loop {
        let at = c.pos;
        match c.peek() {
            None => return Err(c.expected("a closing `\"`")),
            Some('"') => {
                c.eat('"');
                return Ok(out);
            }
            Some('\\') => {
                c.eat('\\');
                let esc = c.peek();
                c.pos += esc.map_or(0, char::len_utf8);
                match esc {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        c.expect('{', "after `\\u`")?;
                        let (hs, hex) = c.take_while(|ch| ch.is_ascii_hexdigit());
                        let ch = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                        let Some(ch) = ch else {
                            return Err((
                                hs,
                                ValueError::Invalid(format!("bad unicode escape `\\u{{{}}}`", clip(hex))),
                            ));
                        };
                        c.expect('}', "to close `\\u{`")?;
                        out.push(ch);
                    }
                    _ => {
                        return Err((
                            at,
                            ValueError::Invalid("bad escape in string (use \\\" \\\\ \\n \\t \\r \\u{HEX})".into()),
                        ))
                    }
                }
            }
            Some(ch) => {
                c.pos += ch.len_utf8();
                out.push(ch);
            }
        }
    }
}

/// Parses an access pattern written by [`format_ap`].
pub fn parse_ap(s: &str) -> Result<Ap, ValueError> {
    full(s, ap).map_err(|(_, e)| e)
}

impl FromStr for Ap {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Ap, ValueError> {
        parse_ap(s)
    }
}

/// Runs `f` on the whole of `s`; text left over is an error.
fn full<T>(s: &str, f: impl FnOnce(&mut Cur) -> Result<T, PErr>) -> Result<T, PErr> {
    let mut c = Cur { s, pos: 0 };
    let v = f(&mut c)?;
    if c.pos < s.len() {
        return Err((c.pos, ValueError::Trailing(clip(c.rest()))));
    }
    Ok(v)
}

fn ap(c: &mut Cur) -> Result<Ap, PErr> {
    let (at, name) = c.ident();
    let space = match name {
        "sbuf" => Space::Sbuf,
        "psum" => Space::Psum,
        "hbm" => Space::Hbm,
        "" => return Err(c.expected("an access pattern (`sbuf[...]`, `psum[...]` or `hbm[...]`)")),
        other => {
            return Err((
                at,
                ValueError::UnknownName {
                    what: "memory space",
                    text: clip(other),
                    expected: "sbuf, psum, hbm".to_string(),
                },
            ))
        }
    };
    c.expect('[', "after the memory space")?;
    let range_at = c.pos;
    let first: u64 = c.int("a partition number")?;
    let (start, end) = if c.eat(':') { (first, c.int("a partition number")?) } else { (0, first) };
    let bad_range = |msg: String| (range_at, ValueError::Invalid(msg));
    let start_partition =
        u32::try_from(start).map_err(|_| bad_range(format!("start partition {start} does not fit 32 bits")))?;
    let count = end
        .checked_sub(start)
        .ok_or_else(|| bad_range(format!("partition range {start}:{end} ends before it starts")))?;
    let partitions =
        u32::try_from(count).map_err(|_| bad_range(format!("partition count {count} does not fit 32 bits")))?;
    let pstride: Option<i64> = if c.eat('@') { Some(c.int("a partition stride (signed 64-bit)")?) } else { None };
    let mut dims: Vec<(u32, Option<i64>)> = Vec::with_capacity(MAX_FREE_DIMS);
    while c.eat(',') {
        let dim_at = c.pos;
        if dims.len() == MAX_FREE_DIMS {
            return Err((dim_at, ValueError::Invalid(format!("at most {MAX_FREE_DIMS} free dimensions"))));
        }
        let size: u32 = c.int("a dimension size (unsigned 32-bit)")?;
        let stride = if c.eat('@') { Some(c.int("a stride (signed 64-bit)")?) } else { None };
        dims.push((size, stride));
    }
    c.expect(']', "or `,` after the partitions and dimensions")?;
    let offset: u64 = if c.eat('+') { c.int("a byte offset (unsigned 64-bit)")? } else { 0 };
    c.expect(':', "before the dtype")?;
    let (dt_at, dt) = c.ident();
    let dtype = DType::from_str(dt).map_err(|e| (dt_at, ValueError::BadDType(e)))?;
    let no_default =
        || (range_at, ValueError::Invalid("a stride is too large to be implied; write it with `@`".into()));
    let defaults = default_strides(dims.iter().map(|d| d.0));
    let mut d = [Dim::default(); MAX_FREE_DIMS];
    for (slot, (&(size, stride), default)) in d.iter_mut().zip(dims.iter().zip(defaults)) {
        *slot = Dim { size, stride: stride.or(default).ok_or_else(no_default)? };
    }
    let partition_stride =
        pstride.or(default_partition_stride(space, dims.iter().map(|d| d.0))).ok_or_else(no_default)?;
    Ok(Ap { space, start_partition, partitions, partition_stride, offset, dims: d, ndims: dims.len() as u8, dtype })
}

fn boolean(c: &mut Cur) -> Result<bool, PErr> {
    let (at, w) = c.ident();
    match w {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => {
            c.pos = at;
            Err(c.expected("`true` or `false`"))
        }
    }
}

fn engine(c: &mut Cur) -> Result<Engine, PErr> {
    let (at, w) = c.ident();
    Engine::parse(w).ok_or_else(|| {
        let names: Vec<&str> = Engine::ALL.iter().map(|e| e.name()).collect();
        let prefixes: Vec<&str> = Engine::ALL.iter().map(|e| e.prefix()).collect();
        (
            at,
            ValueError::UnknownName {
                what: "engine",
                text: clip(w),
                expected: format!("{} (or {})", names.join(", "), prefixes.join(", ")),
            },
        )
    })
}

fn named<T: Copy>(c: &mut Cur, what: &'static str, all: &[T], name: fn(T) -> &'static str) -> Result<T, PErr> {
    let (at, w) = c.ident();
    all.iter().copied().find(|&v| name(v) == w).ok_or_else(|| {
        let expected = all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", ");
        (at, ValueError::UnknownName { what, text: clip(w), expected })
    })
}

fn alu_op(c: &mut Cur) -> Result<AluOp, PErr> {
    named(c, "AluOp", AluOp::ALL, AluOp::name)
}

fn act_fn(c: &mut Cur) -> Result<ActFn, PErr> {
    named(c, "ActFn", ActFn::ALL, ActFn::name)
}

fn operand(c: &mut Cur) -> Result<Operand, PErr> {
    // An access pattern starts with a space name and `[`; anything else is an immediate.
    let is_ap = {
        let rest = c.rest();
        let ident_len = rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).unwrap_or(rest.len());
        ident_len > 0 && rest.get(ident_len..).is_some_and(|r| r.starts_with('['))
    };
    if is_ap {
        ap(c).map(Operand::PerPartition)
    } else {
        parse_f32(c.take_rest()).map(Operand::Imm).map_err(|e| (0, e))
    }
}

fn steps(c: &mut Cur) -> Result<[i32; 4], PErr> {
    let at = c.pos;
    let v: Vec<i32> = c.list(|c| c.int("a signed 32-bit integer"))?;
    if v.is_empty() || v.len() > 4 {
        return Err((at, ValueError::Invalid(format!("expected 1 to 4 steps, found {}", v.len()))));
    }
    let mut out = [0; 4];
    out.iter_mut().zip(&v).for_each(|(o, s)| *o = *s);
    Ok(out)
}

fn dep(c: &mut Cur) -> Result<InstId, PErr> {
    c.expect('%', "before an instruction id")?;
    c.int("an instruction id (unsigned 32-bit)").map(InstId)
}

// ---------------------------------------------------------------------------
// Lines.

/// The `key=value` fields of one instruction.
struct Fields<'a> {
    line: usize,
    /// Column of the mnemonic, for errors about absent fields.
    col: usize,
    context: &'static str,
    items: Vec<(&'a str, &'a str, usize)>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.items.iter().find(|(k, _, _)| *k == key).map(|&(_, v, col)| (v, col))
    }

    fn err(&self, column: usize, kind: TextErrorKind) -> TextError {
        TextError { line: self.line, column, kind }
    }

    fn opt<T>(&self, key: &'static str, f: impl FnOnce(&mut Cur) -> Result<T, PErr>) -> Result<Option<T>, TextError> {
        let Some((value, col)) = self.get(key) else { return Ok(None) };
        full(value, f).map(Some).map_err(|(pos, error)| {
            let column = col + value.get(..pos).map_or(0, |s| s.chars().count());
            self.err(column, TextErrorKind::BadField { context: self.context, field: key, error })
        })
    }

    fn req<T>(&self, key: &'static str, f: impl FnOnce(&mut Cur) -> Result<T, PErr>) -> Result<T, TextError> {
        self.opt(key, f)?
            .ok_or_else(|| self.err(self.col, TextErrorKind::MissingField { context: self.context, field: key }))
    }

    /// `key` only makes sense together with `needs`.
    fn forbid(&self, key: &'static str, needs: &str) -> Result<(), TextError> {
        match self.get(key) {
            None => Ok(()),
            Some((_, col)) => Err(self.err(
                col,
                TextErrorKind::BadField {
                    context: self.context,
                    field: key,
                    error: ValueError::Invalid(format!("given without `{needs}`")),
                },
            )),
        }
    }
}

fn parse_inst(line: usize, words: &[Word], index: usize) -> Result<Inst, TextError> {
    let err = |column: usize, kind: TextErrorKind| TextError { line, column, kind };
    let Some(label) = words.first() else {
        return Err(err(1, TextErrorKind::Syntax("empty instruction".into())));
    };
    let found = label
        .text
        .strip_prefix('%')
        .and_then(|s| s.strip_suffix(':'))
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| err(label.col, TextErrorKind::BadLabel(clip(label.text))))?;
    if found != index as u64 {
        return Err(err(label.col, TextErrorKind::LabelMismatch { found, expected: index }));
    }
    let Some(m) = words.get(1) else {
        return Err(err(
            label.col,
            TextErrorKind::Syntax(format!("missing instruction mnemonic after `{}`", label.text)),
        ));
    };
    let spec = SPECS
        .iter()
        .find(|s| s.mnemonic == m.text)
        .ok_or_else(|| err(m.col, TextErrorKind::UnknownMnemonic(clip(m.text))))?;
    let context = spec.mnemonic;
    let mut fields = Fields { line, col: m.col, context, items: Vec::with_capacity(words.len()) };
    for w in words.get(2..).unwrap_or(&[]) {
        let Some((key, value)) = w.text.split_once('=') else {
            return Err(err(
                w.col,
                TextErrorKind::Syntax(format!("{context}: expected `field=value`, found `{}`", clip(w.text))),
            ));
        };
        if !spec.fields.contains(&key) && !COMMON_FIELDS.contains(&key) {
            let expected = spec.fields.iter().chain(&COMMON_FIELDS).copied().collect::<Vec<_>>().join(", ");
            return Err(err(w.col, TextErrorKind::UnknownField { context, field: clip(key), expected }));
        }
        if fields.get(key).is_some() {
            return Err(err(w.col, TextErrorKind::DuplicateField { context, field: key.to_string() }));
        }
        fields.items.push((key, value, w.col + key.chars().count() + 1));
    }
    let op = (spec.parse)(&fields)?;
    let core = fields.opt("core", |c| c.int("an unsigned 16-bit core index"))?.unwrap_or(0);
    let deps = fields.opt("deps", |c| c.list(dep))?.unwrap_or_default();
    Ok(Inst { op, core, deps })
}

/// Exactly `N` arguments after the directive word; `names` name them for errors.
fn directive_args<'w, 'a, const N: usize>(
    line: usize,
    context: &'static str,
    words: &'w [Word<'a>],
    names: &[&'static str; N],
) -> Result<[&'w Word<'a>; N], TextError> {
    let args = words.get(1..).unwrap_or(&[]);
    if let Some(extra) = args.get(N) {
        return Err(TextError {
            line,
            column: extra.col,
            kind: TextErrorKind::TrailingGarbage { context, text: clip(extra.text) },
        });
    }
    let end_col = words.last().map_or(1, |w| w.col + w.text.chars().count());
    let mut out: Vec<&Word> = Vec::with_capacity(N);
    for (i, field) in names.iter().enumerate() {
        match args.get(i) {
            Some(w) => out.push(w),
            None => {
                return Err(TextError { line, column: end_col, kind: TextErrorKind::MissingField { context, field } })
            }
        }
    }
    out.try_into().map_err(|_| TextError { line, column: 1, kind: TextErrorKind::Syntax("internal arity".into()) })
}

fn word_value<T>(
    line: usize,
    context: &'static str,
    field: &'static str,
    w: &Word,
    f: impl FnOnce(&mut Cur) -> Result<T, PErr>,
) -> Result<T, TextError> {
    full(w.text, f).map_err(|(pos, error)| TextError {
        line,
        column: w.col + w.text.get(..pos).map_or(0, |s| s.chars().count()),
        kind: TextErrorKind::BadField { context, field, error },
    })
}

fn parse_tensor(line: usize, words: &[Word]) -> Result<TensorDecl, TextError> {
    const CTX: &str = ".tensor";
    let [name, kind, dtype, shape, offset] =
        directive_args::<5>(line, CTX, words, &["name", "kind", "dtype", "shape", "offset"])?;
    Ok(TensorDecl {
        name: word_value(line, CTX, "name", name, parse_name)?,
        kind: word_value(line, CTX, "kind", kind, |c| {
            named(c, "tensor kind", &[TensorKind::Input, TensorKind::Output, TensorKind::Scratch], TensorKind::name)
        })?,
        dtype: word_value(line, CTX, "dtype", dtype, |c| {
            let text = c.take_rest();
            DType::from_str(text).map_err(|e| (0, ValueError::BadDType(e)))
        })?,
        shape: word_value(line, CTX, "shape", shape, |c| c.list(|c| c.int("a dimension (unsigned 64-bit)")))?,
        offset: word_value(line, CTX, "offset", offset, |c| {
            c.expect('@', "before the HBM byte offset")?;
            c.int("a byte offset (unsigned 64-bit)")
        })?,
    })
}

/// Proptest strategies for arbitrary programs, shared by the crate's tests.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::strategy::Union;

    use super::*;

    /// Any dtype.
    pub(crate) fn dtype() -> impl Strategy<Value = DType> {
        select(DType::ALL.to_vec())
    }

    /// Any compute engine.
    pub(crate) fn engine() -> impl Strategy<Value = Engine> {
        select(Engine::ALL.to_vec())
    }

    /// Any ALU operator.
    pub(crate) fn alu_op() -> impl Strategy<Value = AluOp> {
        select(AluOp::ALL.to_vec())
    }

    /// Any activation function.
    pub(crate) fn act_fn() -> impl Strategy<Value = ActFn> {
        select(ActFn::ALL.to_vec())
    }

    fn small_or_any_u32() -> impl Strategy<Value = u32> {
        prop_oneof![3 => 0u32..=130, 1 => any::<u32>()]
    }

    fn small_or_any_i64() -> impl Strategy<Value = i64> {
        prop_oneof![3 => -4i64..=1024, 1 => any::<i64>()]
    }

    /// Any access pattern built by [`Ap::new`] (unused dims zeroed), over the
    /// full range of every field; strides are often the row-major default.
    pub(crate) fn ap() -> impl Strategy<Value = Ap> {
        let space = select(vec![Space::Sbuf, Space::Psum, Space::Hbm]);
        let dims = vec((small_or_any_u32(), prop::option::weighted(0.3, small_or_any_i64())), 1..=MAX_FREE_DIMS);
        let offset = prop_oneof![Just(0u64), 0u64..1 << 20, any::<u64>()];
        (
            space,
            small_or_any_u32(),
            small_or_any_u32(),
            prop::option::weighted(0.3, small_or_any_i64()),
            offset,
            dims,
            dtype(),
        )
            .prop_map(|(space, start, partitions, pstride, offset, dims, dtype)| {
                let defaults = default_strides(dims.iter().map(|d| d.0));
                let dims: Vec<Dim> = dims
                    .iter()
                    .zip(defaults)
                    .map(|(&(size, stride), default)| Dim { size, stride: stride.or(default).unwrap_or(-7) })
                    .collect();
                let default_ps = default_partition_stride(space, dims.iter().map(|d| d.size)).unwrap_or(3);
                Ap::new(space, start, partitions, pstride.unwrap_or(default_ps), offset, &dims, dtype)
            })
    }

    /// Any f32 (all bit patterns, plus the special values), NaNs only if `nan`.
    pub(crate) fn f32_value(nan: bool) -> impl Strategy<Value = f32> {
        let specials = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            0.1,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(0x7f_ffff),
            f32::MAX,
            f32::MIN,
            f32::NAN,
            f32::from_bits(0xffc0_0001),
        ];
        prop_oneof![any::<u32>().prop_map(f32::from_bits), select(specials)]
            .prop_filter("no NaN wanted", move |x| nan || !x.is_nan())
    }

    /// Any f64 (all bit patterns, plus the special values), NaNs only if `nan`.
    pub(crate) fn f64_value(nan: bool) -> impl Strategy<Value = f64> {
        let specials = vec![0.0, -0.0, 1.5, f64::INFINITY, f64::NEG_INFINITY, f64::from_bits(1), f64::NAN, -f64::NAN];
        prop_oneof![any::<u64>().prop_map(f64::from_bits), select(specials)]
            .prop_filter("no NaN wanted", move |x| nan || !x.is_nan())
    }

    /// An immediate or a per-partition operand.
    pub(crate) fn operand(nan: bool) -> impl Strategy<Value = Operand> {
        prop_oneof![f32_value(nan).prop_map(Operand::Imm), ap().prop_map(Operand::PerPartition)]
    }

    fn stage(nan: bool) -> impl Strategy<Value = ScalarStage> {
        (alu_op(), operand(nan), any::<bool>()).prop_map(|(op, operand, reverse)| ScalarStage { op, operand, reverse })
    }

    /// Any operation (every variant, every field).
    pub(crate) fn op(nan: bool) -> impl Strategy<Value = Op> {
        Union::new(vec![
            (ap(), ap(), ap(), any::<bool>(), any::<bool>())
                .prop_map(|(dst, stationary, moving, start, stop)| Op::MatMul { dst, stationary, moving, start, stop })
                .boxed(),
            (engine(), ap(), ap()).prop_map(|(engine, dst, src)| Op::Transpose { engine, dst, src }).boxed(),
            (engine(), alu_op(), ap(), ap(), ap())
                .prop_map(|(engine, op, dst, in0, in1)| Op::TensorTensor { engine, op, dst, in0, in1 })
                .boxed(),
            (engine(), ap(), ap(), stage(nan), prop::option::of(stage(nan)))
                .prop_map(|(engine, dst, src, first, second)| Op::TensorScalar { engine, dst, src, first, second })
                .boxed(),
            (engine(), alu_op(), ap(), ap(), any::<u8>(), any::<bool>())
                .prop_map(|(engine, op, dst, src, axes, negate)| Op::TensorReduce {
                    engine,
                    op,
                    dst,
                    src,
                    axes,
                    negate,
                })
                .boxed(),
            (act_fn(), ap(), ap(), operand(nan), prop::option::of(ap()), prop::option::of(ap()))
                .prop_map(|(func, dst, src, scale, bias, acc)| Op::Activation { func, dst, src, scale, bias, acc })
                .boxed(),
            (engine(), ap(), ap()).prop_map(|(engine, dst, src)| Op::Copy { engine, dst, src }).boxed(),
            (engine(), ap(), ap(), ap(), ap())
                .prop_map(|(engine, dst, pred, on_true, on_false)| Op::Select { engine, dst, pred, on_true, on_false })
                .boxed(),
            (ap(), any::<i32>(), any::<i32>(), prop_oneof![any::<[i32; 4]>(), (-3i32..3).prop_map(|s| [s, 0, 0, 0])])
                .prop_map(|(dst, base, channel_multiplier, steps)| Op::Iota { dst, base, channel_multiplier, steps })
                .boxed(),
            (engine(), ap(), f64_value(nan)).prop_map(|(engine, dst, value)| Op::Memset { engine, dst, value }).boxed(),
            (alu_op(), ap(), ap()).prop_map(|(op, dst, src)| Op::PartitionReduce { op, dst, src }).boxed(),
            (ap(), ap()).prop_map(|(dst, src)| Op::PartitionBroadcast { dst, src }).boxed(),
            (ap(), ap(), vec(any::<u8>(), 0..6))
                .prop_map(|(dst, src, perm)| Op::PartitionShuffle { dst, src, perm })
                .boxed(),
            (any::<u8>(), ap(), ap()).prop_map(|(queue, dst, src)| Op::DmaCopy { queue, dst, src }).boxed(),
            (any::<u8>(), ap(), ap(), ap())
                .prop_map(|(queue, dst, table, index)| Op::DmaGather { queue, dst, table, index })
                .boxed(),
        ])
    }

    /// Any instruction: an operation, a core and dependencies.
    pub(crate) fn inst(nan: bool) -> impl Strategy<Value = Inst> {
        let core = prop_oneof![Just(0u16), any::<u16>()];
        let deps = vec(prop_oneof![0u32..16, any::<u32>()].prop_map(InstId), 0..4);
        (op(nan), core, deps).prop_map(|(op, core, deps)| Inst { op, core, deps })
    }

    /// Any name: identifiers, strings with characters that need quoting, any unicode.
    pub(crate) fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z_][a-zA-Z0-9_./-]{0,12}",
            "[ a-z\"\\\\;#%=\\[\\]\n\r\t\u{0}\u{7f}\u{85}\u{2028}é]{0,10}",
            any::<String>(),
        ]
    }

    /// Any tensor declaration.
    pub(crate) fn tensor() -> impl Strategy<Value = TensorDecl> {
        let kind = select(vec![TensorKind::Input, TensorKind::Output, TensorKind::Scratch]);
        (name(), kind, dtype(), vec(prop_oneof![0u64..1024, any::<u64>()], 0..4), any::<u64>())
            .prop_map(|(name, kind, dtype, shape, offset)| TensorDecl { name, kind, dtype, shape, offset })
    }

    /// Any program of up to 4 tensors and 8 instructions; NaN immediates only if `nan`.
    pub(crate) fn program(nan: bool) -> impl Strategy<Value = Program> {
        (name(), vec(tensor(), 0..4), vec(inst(nan), 0..8)).prop_map(|(name, tensors, insts)| Program {
            name,
            tensors,
            insts,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::strategies::{ap as any_ap, inst, program};
    use super::*;

    const HEADER: &str = ".version 1\n.program t\n";

    fn parse_err(body: &str) -> TextError {
        Program::parse(&format!("{HEADER}{body}")).expect_err("text should not parse")
    }

    fn field_err(body: &str) -> (usize, usize, &'static str, &'static str, ValueError) {
        let e = parse_err(body);
        match e.kind {
            TextErrorKind::BadField { context, field, error } => (e.line, e.column, context, field, error),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn one_inst(line: &str) -> Op {
        let p = Program::parse(&format!("{HEADER}{line}\n")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.insts.len(), 1);
        p.insts[0].op.clone()
    }

    proptest! {
        #[test]
        fn text_round_trip(p in program(false)) {
            let text = p.to_text();
            let q = Program::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(&q, &p);
            prop_assert_eq!(q.to_bytes(), p.to_bytes(), "bit-exact (signed zeros)");
            prop_assert_eq!(q.to_text(), text);
        }

        #[test]
        fn text_round_trip_keeps_nan_bits(p in program(true)) {
            let text = p.to_text();
            let q = Program::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            // postcard stores floats as raw bits: equal bytes = bit-identical programs.
            prop_assert_eq!(q.to_bytes(), p.to_bytes());
            prop_assert_eq!(q.to_text(), text);
        }

        #[test]
        fn every_inst_line_parses_alone(i in inst(true)) {
            let line = format_inst(InstId(0), &i);
            prop_assert!(!line.contains('\n'));
            let q = Program::parse(&format!("{HEADER}{line}")).map_err(|e| TestCaseError::fail(format!("{e}\n{line}")))?;
            prop_assert_eq!(q.insts.len(), 1);
            prop_assert_eq!(format_inst(InstId(0), &q.insts[0]), line);
        }

        #[test]
        fn ap_round_trip(a in any_ap()) {
            let s = format_ap(&a);
            prop_assert_eq!(parse_ap(&s), Ok(a));
            prop_assert_eq!(s.parse::<Ap>(), Ok(a));
            prop_assert_eq!(a.to_string(), s);
        }

        #[test]
        fn binary_round_trip(p in program(false)) {
            let q = Program::from_bytes(&p.to_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&q, &p);
            prop_assert_eq!(q.to_bytes(), p.to_bytes());
        }

        #[test]
        fn truncated_binary_is_an_error(p in program(true)) {
            let b = p.to_bytes();
            prop_assert!(Program::from_bytes(&b).is_ok());
            for n in 0..b.len() {
                prop_assert!(Program::from_bytes(&b[..n]).is_err(), "prefix of {} of {} bytes decoded", n, b.len());
            }
        }

        #[test]
        fn garbled_binary_does_not_panic(
            p in program(true),
            flips in vec((any::<Index>(), 1u8..), 1..8),
            tail in vec(any::<u8>(), 0..32),
            body in vec(any::<u8>(), 0..128),
        ) {
            let mut b = p.to_bytes();
            for (i, x) in flips {
                let i = i.index(b.len());
                b[i] ^= x;
            }
            let _ = Program::from_bytes(&b);
            b.extend(tail);
            let _ = Program::from_bytes(&b);
            let mut raw = p.to_bytes()[..8].to_vec();
            raw.extend(body);
            let _ = Program::from_bytes(&raw);
        }

        #[test]
        fn arbitrary_text_never_panics(s in any::<String>(), b in vec(any::<u8>(), 0..256)) {
            let _ = Program::parse(&s);
            let _ = Program::parse(&format!("{HEADER}{s}"));
            let _ = Program::parse(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn grammar_noise_never_panics(s in "[%0-9a-z_=:@+,\\[\\]. \n\"\\\\;-]{0,160}") {
            if let Err(e) = Program::parse(&format!("{HEADER}%0: {s}")) {
                prop_assert!(e.line >= 3 && e.column >= 1);
            }
        }

        #[test]
        fn mutated_programs_never_panic(p in program(true), edits in vec((any::<Index>(), any::<char>(), 0u8..3), 1..6)) {
            let mut chars: Vec<char> = p.to_text().chars().collect();
            for (at, c, how) in edits {
                let i = at.index(chars.len() + 1);
                match how {
                    0 if i < chars.len() => { chars.remove(i); }
                    1 if i < chars.len() => chars[i] = c,
                    _ => chars.insert(i, c),
                }
            }
            let text: String = chars.iter().collect();
            if let Err(e) = Program::parse(&text) {
                prop_assert!(e.line >= 1 && e.line <= text.split('\n').count() + 1 && e.column >= 1, "{}", e);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn access_pattern_syntax() {
        let t = Ap::sbuf(0, 128, 1024, &[4, 512], DType::Bf16);
        assert_eq!(format_ap(&t), "sbuf[0:128,4,512]+1024:bf16");
        assert_eq!(format_ap(&Ap::psum(32, 32, 0, &[512], DType::F32)), "psum[32:64,512]:f32");
        assert_eq!(format_ap(&Ap::hbm(4096, 128, &[512], DType::F32)), "hbm[128,512]+4096:f32");
        let strided = Ap::new(Space::Hbm, 0, 128, 1024, 0, &[Dim { stride: -1, size: 512 }], DType::U8);
        assert_eq!(format_ap(&strided), "hbm[128@1024,512@-1]:u8");
        let bcast =
            Ap::new(Space::Sbuf, 64, 32, 0, 8, &[Dim { stride: 0, size: 7 }, Dim { stride: 1, size: 3 }], DType::I32);
        assert_eq!(format_ap(&bcast), "sbuf[64:96,7@0,3]+8:i32");
        // Hand-written forms the printer never uses.
        assert_eq!(parse_ap("sbuf[0x40:96,7@0,3@1]+0x8:int32"), Ok(bcast));
        assert_eq!(parse_ap("hbm[0:128@1024,512@-1]+0:uint8"), Ok(strided));
        assert_eq!(parse_ap("sbuf[0:128]:f32").map(|a| a.ndims), Ok(0));
        // Non-canonical fields still round-trip.
        let odd =
            Ap::new(Space::Hbm, 3, u32::MAX, 5, u64::MAX, &[Dim { stride: i64::MIN, size: u32::MAX }], DType::F8E4M3);
        assert_eq!(
            format_ap(&odd),
            format!("hbm[3:{}@5,{}@{}]+{}:f8e4m3", 3 + u32::MAX as u64, u32::MAX, i64::MIN, u64::MAX)
        );
        assert_eq!(parse_ap(&format_ap(&odd)), Ok(odd));
    }

    #[test]
    fn access_pattern_errors() {
        let e = |s: &str| parse_ap(s).expect_err(s).to_string();
        assert!(e("sram[0:1,1]:f32").contains("unknown memory space `sram`"));
        assert!(e("sbuf[0:1,1]:bf17").contains("unknown dtype `bf17`"));
        assert!(e("sbuf[4:2,1]:f32").contains("ends before it starts"));
        assert!(e("sbuf[0:1,1,1,1,1,1]:f32").contains("at most 4 free dimensions"));
        assert!(e("sbuf[0:1,1x]:f32").contains("bad number `1x`"));
        assert!(e("sbuf[0:1,4294967296]:f32").contains("unsigned 32-bit"));
        assert!(e("sbuf[0:1,1]:f32]").contains("trailing garbage `]`"));
        assert!(e("sbuf[0:1,1]").contains("expected `:` before the dtype, found end of value"));
        assert!(e("sbuf[0:1,2,4294967295,4294967295,4294967295]:f32").contains("too large to be implied"));
        assert!(e("").contains("expected an access pattern"));
    }

    #[test]
    fn floats_round_trip_bit_exactly() {
        let f32s =
            [-0.0f32, 0.0, f32::from_bits(1), f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, 0.1];
        let nans = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffff_ffff)];
        for x in f32s.into_iter().chain(nans) {
            let s = format_f32(x);
            assert_eq!(parse_f32(&s).map(f32::to_bits), Ok(x.to_bits()), "{s}");
        }
        assert_eq!(format_f32(-0.0), "-0.0");
        assert_eq!(format_f32(f32::from_bits(1)), "1e-45");
        assert_eq!(format_f32(f32::NAN), "nan");
        assert_eq!(format_f32(f32::from_bits(0x7f80_0001)), "nan:0x7f800001");
        for x in [-0.0f64, f64::from_bits(1), f64::MAX, -f64::NAN, f64::from_bits(0x7ff0_0000_0000_0001), 1e300] {
            let s = format_f64(x);
            assert_eq!(parse_f64(&s).map(f64::to_bits), Ok(x.to_bits()), "{s}");
        }
        assert!(parse_f32("nan:0x3f800000").unwrap_err().to_string().contains("not a NaN"));
        assert!(parse_f32("nan:0x123456789").is_err());
        assert!(parse_f32("1.5.2").is_err());
        assert!(parse_f32("infinity").is_err());
        assert_eq!(parse_f32("2"), Ok(2.0));
        assert_eq!(parse_f32("-.5e1"), Ok(-5.0));

        // Through whole instructions: an f32 operand, an f32 scale and an f64 memset value.
        let mut p = Program::new("nan");
        let dst = Ap::sbuf(0, 1, 0, &[1], DType::F32);
        let nan = f32::from_bits(0xffc0_1234);
        let stage = ScalarStage { op: AluOp::Add, operand: Operand::Imm(nan), reverse: false };
        p.push(Inst::new(Op::TensorScalar { engine: Engine::Vector, dst, src: dst, first: stage, second: None }));
        let act = Op::Activation { func: ActFn::Exp, dst, src: dst, scale: Operand::Imm(-0.0), bias: None, acc: None };
        p.push(Inst::new(act));
        p.push(Inst::new(Op::Memset { engine: Engine::GpSimd, dst, value: f64::from_bits(0x7ff8_0000_0000_0042) }));
        let q = Program::parse(&p.to_text()).unwrap();
        let Op::TensorScalar { first, .. } = &q.insts[0].op else { panic!() };
        assert!(matches!(first.operand, Operand::Imm(x) if x.to_bits() == 0xffc0_1234));
        assert!(
            matches!(q.insts[1].op, Op::Activation { scale: Operand::Imm(x), .. } if x.to_bits() == (-0.0f32).to_bits())
        );
        assert!(matches!(q.insts[2].op, Op::Memset { value, .. } if value.to_bits() == 0x7ff8_0000_0000_0042));
    }

    #[test]
    fn names_are_quoted_when_needed() {
        assert_eq!(format_name("layer.0/w_q-1"), "layer.0/w_q-1");
        assert_eq!(format_name(""), "\"\"");
        assert_eq!(format_name("a b;\"c\"\n\u{1}"), "\"a b;\\\"c\\\"\\n\\u{1}\"");
        assert_eq!(format_name("1x"), "\"1x\"");
        let p = Program { name: "tiny # not a comment".into(), tensors: vec![], insts: vec![] };
        assert_eq!(Program::parse(&p.to_text()), Ok(p));
        let e = Program::parse(".version 1\n.program a b ; c\n").expect_err("extra word");
        assert_eq!(e.line, 2);
        let e = Program::parse(".version 1\n.program \"abc\n").expect_err("unterminated");
        assert_eq!((e.line, e.column), (2, 10));
        assert!(e.to_string().contains("unterminated string"), "{e}");
        let e = Program::parse(".version 1\n.program \"a\\qb\"\n").expect_err("bad escape");
        assert!(e.to_string().contains("bad escape"), "{e}");
    }

    #[test]
    fn header_errors() {
        let e = Program::parse("").unwrap_err();
        assert_eq!((e.line, e.kind), (1, TextErrorKind::MissingVersion));
        let e = Program::parse("; comment\n\n.program x\n").unwrap_err();
        assert_eq!((e.line, e.kind), (3, TextErrorKind::MissingVersion));
        let e = Program::parse(".version 2\n").unwrap_err();
        assert_eq!((e.line, e.column, e.kind), (1, 10, TextErrorKind::Version("2".into())));
        let e = Program::parse(".version 1\n.version 1\n").unwrap_err();
        assert_eq!((e.line, e.kind), (2, TextErrorKind::DuplicateDirective(".version")));
        let e = Program::parse(".version 1\n").unwrap_err();
        assert_eq!(e.kind, TextErrorKind::MissingProgram("the end of the text"));
        let e = Program::parse(".version 1\n%0: copy\n").unwrap_err();
        assert_eq!((e.line, e.kind), (2, TextErrorKind::MissingProgram("instructions")));
        let e = Program::parse(".version 1\n.tensor a input f32 [1] @0\n").unwrap_err();
        assert_eq!(e.kind, TextErrorKind::MissingProgram("`.tensor`"));
        let e = parse_err(".program u\n");
        assert_eq!((e.line, e.kind), (3, TextErrorKind::DuplicateDirective(".program")));
        let e = parse_err("  .tensr a input f32 [1] @0\n");
        assert_eq!((e.line, e.column, e.kind), (3, 3, TextErrorKind::UnknownDirective(".tensr".into())));
        let e = parse_err("matmul dst=x\n");
        assert!(matches!(e.kind, TextErrorKind::Syntax(ref m) if m.contains("found `matmul`")), "{e}");
        let e = Program::parse(".version 1 2\n").unwrap_err();
        assert_eq!(e.kind, TextErrorKind::TrailingGarbage { context: ".version", text: "2".into() });
        let e = Program::parse(".version\n").unwrap_err();
        assert_eq!(e.kind, TextErrorKind::MissingField { context: ".version", field: "version" });
    }

    #[test]
    fn tensor_errors() {
        let e = parse_err(".tensor a input f33 [4] @0\n");
        assert_eq!((e.line, e.column), (3, 17));
        assert!(matches!(
            e.kind,
            TextErrorKind::BadField { context: ".tensor", field: "dtype", error: ValueError::BadDType(_) }
        ));
        assert!(e.to_string().starts_with("line 3, column 17: .tensor: field `dtype`: unknown dtype `f33`"), "{e}");
        let e = parse_err(".tensor a weights f32 [4] @0\n");
        assert!(
            e.to_string()
                .contains("field `kind`: unknown tensor kind `weights` (expected one of: input, output, scratch)"),
            "{e}"
        );
        let e = parse_err(".tensor a input f32 [4,x] @0\n");
        assert_eq!((e.column, e.to_string().contains("field `shape`: bad number `x`")), (24, true), "{e}");
        let e = parse_err(".tensor a input f32 [4] 0\n");
        assert!(e.to_string().contains("field `offset`: expected `@` before the HBM byte offset, found `0`"), "{e}");
        let e = parse_err(".tensor a input f32 [4]\n");
        assert_eq!(e.kind, TextErrorKind::MissingField { context: ".tensor", field: "offset" });
        let e = parse_err(".tensor a input f32 [4] @0 extra\n");
        assert_eq!(
            (e.column, e.kind),
            (28, TextErrorKind::TrailingGarbage { context: ".tensor", text: "extra".into() })
        );
        let e = parse_err(".tensor 9a input f32 [4] @0\n");
        assert!(e.to_string().contains("field `name`: bad name `9a`"), "{e}");
    }

    #[test]
    fn instruction_errors() {
        let tile = "sbuf[0:128,512]:f32";
        let e = parse_err(&format!("%0: matmull dst={tile}\n"));
        assert_eq!((e.line, e.column, e.kind.clone()), (3, 5, TextErrorKind::UnknownMnemonic("matmull".into())));
        assert!(e.to_string().contains("expected one of: matmul, transpose,"), "{e}");

        let e = parse_err(&format!("%0: copy engine=vector dst={tile}\n"));
        assert_eq!((e.line, e.column, e.kind), (3, 5, TextErrorKind::MissingField { context: "copy", field: "src" }));

        let e = parse_err(&format!("%0: copy engine=vector dst={tile} src={tile} dst={tile}\n"));
        assert_eq!(e.kind, TextErrorKind::DuplicateField { context: "copy", field: "dst".into() });
        assert_eq!(e.column, 72);

        let e = parse_err(&format!("%0: copy engine=vector dst={tile} source={tile}\n"));
        assert!(
            matches!(&e.kind, TextErrorKind::UnknownField { context: "copy", field, expected }
            if field == "source" && expected == "engine, dst, src, core, deps"),
            "{e}"
        );

        let (line, col, ctx, field, err) =
            field_err(&format!("%0: tensor_tensor engine=vector op=addd dst={tile} in0={tile} in1={tile}\n"));
        assert_eq!((line, col, ctx, field), (3, 36, "tensor_tensor", "op"));
        assert!(err.to_string().starts_with("unknown AluOp `addd` (expected one of: add, sub, mul"), "{err}");
        let e = parse_err(&format!("%0: tensor_tensor engine=vector op=addd dst={tile} in0={tile} in1={tile}\n"));
        assert!(e.to_string().starts_with("line 3, column 36: tensor_tensor: field `op`: unknown AluOp `addd`"), "{e}");

        let (_, col, _, field, err) =
            field_err(&format!("%0: tensor_reduce engine=vector op=add dst={tile} src={tile} axes=3x negate=false\n"));
        assert_eq!((field, col), ("axes", 93));
        assert_eq!(err, ValueError::BadNumber { text: "3x".into(), expected: "an unsigned 8-bit integer" });
        let (_, _, _, field, err) = field_err(&format!("%0: dma_copy queue=300 dst={tile} src={tile}\n"));
        assert_eq!((field, err.to_string().contains("bad number `300`")), ("queue", true));

        let (_, col, _, field, err) =
            field_err("%0: copy engine=vector dst=sbuf[0:128,512]:bf17 src=sbuf[0:1,1]:f32\n");
        assert_eq!((field, col), ("dst", 44), "the column points at the dtype");
        assert!(matches!(err, ValueError::BadDType(_)));

        let (_, _, _, field, err) = field_err(&format!("%0: copy engine=vector dst={tile}] src={tile}\n"));
        assert_eq!((field, err), ("dst", ValueError::Trailing("]".into())));

        let (_, _, _, field, err) = field_err(&format!("%0: copy engine=vpu dst={tile} src={tile}\n"));
        assert_eq!(field, "engine");
        assert!(err.to_string().contains("unknown engine `vpu`"), "{err}");

        let (_, _, _, field, err) =
            field_err(&format!("%0: matmul dst={tile} stationary={tile} moving={tile} start=yes stop=true\n"));
        assert_eq!(field, "start");
        assert!(err.to_string().contains("expected `true` or `false`, found `yes`"), "{err}");

        let (_, _, _, field, err) = field_err(&format!(
            "%0: tensor_scalar engine=vector dst={tile} src={tile} op0=mul operand0=2 reverse0=false operand1=3\n"
        ));
        assert_eq!((field, err.to_string()), ("operand1", "given without `op1`".to_string()));

        let (_, _, _, field, _) = field_err(&format!("%0: copy engine=vector dst={tile} src={tile} deps=[%1,2]\n"));
        assert_eq!(field, "deps");
        let (_, _, _, field, _) = field_err(&format!("%0: copy engine=vector dst={tile} src={tile} core=-1\n"));
        assert_eq!(field, "core");
        let (_, _, _, field, err) =
            field_err(&format!("%0: iota dst={tile} base=0 channel_multiplier=1 steps=[1,2,3,4,5]\n"));
        assert_eq!((field, err.to_string()), ("steps", "expected 1 to 4 steps, found 5".to_string()));

        let e = parse_err(&format!("%1: copy engine=vector dst={tile} src={tile}\n"));
        assert_eq!((e.line, e.column, e.kind), (3, 1, TextErrorKind::LabelMismatch { found: 1, expected: 0 }));
        let e = parse_err(&format!("%0 copy engine=vector dst={tile} src={tile}\n"));
        assert_eq!(e.kind, TextErrorKind::BadLabel("%0".into()));
        let e = parse_err("%0:\n");
        assert!(matches!(e.kind, TextErrorKind::Syntax(ref m) if m.contains("missing instruction mnemonic")));
        let e = parse_err(&format!("%0: copy engine=vector dst={tile} src\n"));
        assert!(e.to_string().contains("copy: expected `field=value`, found `src`"), "{e}");
    }

    #[test]
    fn hand_written_forms() {
        // Engine prefixes, hex numbers, steps shorter than 4, comments after fields.
        let op = one_inst("%0: iota dst=sbuf[0:128,64]:i32 base=-0x10 channel_multiplier=64 steps=[1] ; row index");
        assert_eq!(
            op,
            Op::Iota {
                dst: Ap::sbuf(0, 128, 0, &[64], DType::I32),
                base: -16,
                channel_multiplier: 64,
                steps: [1, 0, 0, 0]
            }
        );
        let op = one_inst("%0: copy engine=pool dst=sbuf[0:1,1]:f32 src=sbuf[0:1,1]:f32 # pool = gpsimd");
        assert!(matches!(op, Op::Copy { engine: Engine::GpSimd, .. }));
    }

    const GOLDEN: &str = "\
; relu(a @ b) for one 128x128x512 tile, then a scaled, shifted copy on core 1
.version 1
.program \"tiny matmul\"
.tensor a input bf16 [128,128] @0
.tensor b input bf16 [128,512] @32768
.tensor y output f32 [128,512] @163840

%0: dma_copy queue=0 dst=sbuf[0:128,128]:bf16 src=hbm[128,128]:bf16
%1: dma_copy queue=1 dst=sbuf[0:128,512]+256:bf16 src=hbm[128,512]+32768:bf16
%2: matmul dst=psum[0:128,512]:f32 stationary=sbuf[0:128,128]:bf16 moving=sbuf[0:128,512]+256:bf16 start=true stop=true deps=[%0,%1]
%3: activation func=relu dst=sbuf[0:128,512]+1280:f32 src=psum[0:128,512]:f32 scale=1.0 deps=[%2]   # fused ReLU
%4: dma_copy queue=0 dst=hbm[128,512]+163840:f32 src=sbuf[0:128,512]+1280:f32 deps=[%3]
%5: tensor_scalar engine=vector dst=sbuf[0:128,2,256@2]+4096:bf16 src=sbuf[0:128,512]+1280:f32 op0=mul operand0=sbuf[0:128,1]+8192:f32 reverse0=false op1=add operand1=-0.5 reverse1=true core=1 deps=[%3]
";

    #[test]
    fn golden_program() {
        let p = Program::parse(GOLDEN).unwrap_or_else(|e| panic!("{e}"));
        let a = Ap::sbuf(0, 128, 0, &[128], DType::Bf16);
        let b = Ap::sbuf(0, 128, 256, &[512], DType::Bf16);
        let acc = Ap::psum(0, 128, 0, &[512], DType::F32);
        let y = Ap::sbuf(0, 128, 1280, &[512], DType::F32);
        let even = Ap::new(
            Space::Sbuf,
            0,
            128,
            0,
            4096,
            &[Dim { stride: 256, size: 2 }, Dim { stride: 2, size: 256 }],
            DType::Bf16,
        );
        let scale = Ap::sbuf(0, 128, 8192, &[1], DType::F32);
        let dep = |ids: &[u32]| ids.iter().map(|&i| InstId(i)).collect::<Vec<_>>();
        let tensor = |name: &str, kind, dtype, shape: &[u64], offset| TensorDecl {
            name: name.into(),
            kind,
            dtype,
            shape: shape.to_vec(),
            offset,
        };
        let expected = Program {
            name: "tiny matmul".into(),
            tensors: vec![
                tensor("a", TensorKind::Input, DType::Bf16, &[128, 128], 0),
                tensor("b", TensorKind::Input, DType::Bf16, &[128, 512], 32768),
                tensor("y", TensorKind::Output, DType::F32, &[128, 512], 163840),
            ],
            insts: vec![
                Inst::new(Op::DmaCopy { queue: 0, dst: a, src: Ap::hbm(0, 128, &[128], DType::Bf16) }),
                Inst::new(Op::DmaCopy { queue: 1, dst: b, src: Ap::hbm(32768, 128, &[512], DType::Bf16) }),
                Inst {
                    op: Op::MatMul { dst: acc, stationary: a, moving: b, start: true, stop: true },
                    core: 0,
                    deps: dep(&[0, 1]),
                },
                Inst {
                    op: Op::Activation {
                        func: ActFn::Relu,
                        dst: y,
                        src: acc,
                        scale: Operand::Imm(1.0),
                        bias: None,
                        acc: None,
                    },
                    core: 0,
                    deps: dep(&[2]),
                },
                Inst {
                    op: Op::DmaCopy { queue: 0, dst: Ap::hbm(163840, 128, &[512], DType::F32), src: y },
                    core: 0,
                    deps: dep(&[3]),
                },
                Inst {
                    op: Op::TensorScalar {
                        engine: Engine::Vector,
                        dst: even,
                        src: y,
                        first: ScalarStage { op: AluOp::Mul, operand: Operand::PerPartition(scale), reverse: false },
                        second: Some(ScalarStage { op: AluOp::Add, operand: Operand::Imm(-0.5), reverse: true }),
                    },
                    core: 1,
                    deps: dep(&[3]),
                },
            ],
        };
        assert_eq!(p, expected);
        // The printer gives the same text without comments, blank lines and extra spaces.
        let canonical: String = GOLDEN
            .lines()
            .map(|l| l.split([';', '#']).next().unwrap_or("").trim_end())
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(p.to_text(), canonical);
    }

    #[test]
    fn every_mnemonic_is_in_the_table_once() {
        for (i, s) in SPECS.iter().enumerate() {
            assert!(SPECS[i + 1..].iter().all(|t| t.mnemonic != s.mnemonic), "{}", s.mnemonic);
            assert!(s.fields.iter().all(|f| !COMMON_FIELDS.contains(f)));
        }
        assert_eq!(SPECS.len(), 15, "one entry per Op variant");
    }

    #[test]
    fn reference_examples_parse_and_are_canonical() {
        let doc = include_str!("../../../docs/isa.md");
        let mut examples = 0;
        for line in doc.lines().filter(|l| l.starts_with('%')) {
            let (_, rest) = line.split_once(": ").unwrap_or_else(|| panic!("bad example {line}"));
            let line0 = format!("%0: {rest}");
            let p = Program::parse(&format!("{HEADER}{line0}\n")).unwrap_or_else(|e| panic!("{e}\n{line}"));
            assert_eq!(format_inst(InstId(0), &p.insts[0]), line0, "docs/isa.md example is not canonical");
            examples += 1;
        }
        assert!(examples >= SPECS.len(), "one example per instruction");
        let mnemonics: Vec<&str> =
            doc.lines().filter(|l| l.starts_with('%')).filter_map(|l| l.split_whitespace().nth(1)).collect();
        for s in SPECS {
            assert!(mnemonics.contains(&s.mnemonic), "docs/isa.md has no example of {}", s.mnemonic);
        }
        // The complete example program.
        let start = doc.find("; relu(a @ b)").expect("example program");
        let text = doc.get(start..).and_then(|t| t.split("```").next()).unwrap_or("");
        let p = Program::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.tensors.len(), p.insts.len()), (3, 5));
    }

    #[test]
    fn crlf_and_windows_line_ends() {
        let text = GOLDEN.replace('\n', "\r\n");
        assert_eq!(Program::parse(&text), Program::parse(GOLDEN));
    }
}
