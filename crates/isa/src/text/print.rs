//! Printing programs in the text form.

use std::fmt::Write as _;

use super::*;
use crate::ap::{Ap, Space, MAX_FREE_DIMS};
use crate::inst::{Inst, InstId, Op, Operand, ScalarStage};
use crate::program::{Program, PROGRAM_VERSION};

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
pub(super) fn default_strides(sizes: impl DoubleEndedIterator<Item = u32>) -> Vec<Option<i64>> {
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
pub(super) fn default_partition_stride(space: Space, mut sizes: impl Iterator<Item = u32>) -> Option<i64> {
    match space {
        Space::Hbm => sizes.try_fold(1i64, |acc, s| acc.checked_mul(s as i64)),
        Space::Sbuf | Space::Psum => Some(0),
    }
}

pub(super) fn format_f32(x: f32) -> String {
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

pub(super) fn format_f64(x: f64) -> String {
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

pub(super) fn format_operand(o: &Operand) -> String {
    match o {
        Operand::Imm(x) => format_f32(*x),
        Operand::PerPartition(ap) => format_ap(ap),
    }
}

pub(super) fn is_bare_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

/// A name as written: bare when it is an identifier, otherwise a quoted string.
pub(super) fn format_name(s: &str) -> String {
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
pub(super) struct LineWriter(String);

impl LineWriter {
    pub(super) fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, " {key}={value}");
        self
    }
    pub(super) fn ap(&mut self, key: &str, ap: &Ap) -> &mut Self {
        self.field(key, format_ap(ap))
    }
    pub(super) fn stage(&mut self, n: u8, s: &ScalarStage) -> &mut Self {
        self.field(&format!("op{n}"), s.op.name())
            .field(&format!("operand{n}"), format_operand(&s.operand))
            .field(&format!("reverse{n}"), s.reverse)
    }
}

pub(super) fn format_list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
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
