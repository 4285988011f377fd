//! Parsing the text form.

use std::str::FromStr;

use trainyard_arch::DType;

use super::*;
use crate::ap::{Ap, Dim, Space, MAX_FREE_DIMS};
use crate::inst::{Inst, InstId, Operand};
use crate::ops::{ActFn, AluOp, Engine};
use crate::program::{TensorDecl, TensorKind};

// ---------------------------------------------------------------------------
// Lexing: a line is whitespace-separated words; `;` or `#` outside a quoted
// string starts a comment.

pub(super) struct Word<'a> {
    /// 1-based column of the first character.
    pub(super) col: usize,
    pub(super) text: &'a str,
}

pub(super) fn split_words(line: &str) -> Result<Vec<Word<'_>>, (usize, String)> {
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
pub(super) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(24).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Values: a small cursor over one word. Errors carry the byte position in the word.

pub(super) type PErr = (usize, ValueError);

pub(super) struct Cur<'a> {
    pub(super) s: &'a str,
    pub(super) pos: usize,
}

impl<'a> Cur<'a> {
    pub(super) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    pub(super) fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub(super) fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    pub(super) fn take_while(&mut self, f: impl Fn(char) -> bool) -> (usize, &'a str) {
        let start = self.pos;
        let rest = self.rest();
        let len = rest.char_indices().find(|&(_, c)| !f(c)).map_or(rest.len(), |(i, _)| i);
        self.pos += len;
        (start, rest.get(..len).unwrap_or(""))
    }

    pub(super) fn take_rest(&mut self) -> &'a str {
        let r = self.rest();
        self.pos = self.s.len();
        r
    }

    pub(super) fn found(&self) -> String {
        match self.rest() {
            "" => "end of value".to_string(),
            r => format!("`{}`", clip(r)),
        }
    }

    pub(super) fn expected(&self, what: impl Into<String>) -> PErr {
        (self.pos, ValueError::Expected { expected: what.into(), found: self.found() })
    }

    pub(super) fn expect(&mut self, c: char, what: &str) -> Result<(), PErr> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.expected(format!("`{c}` {what}")))
        }
    }

    pub(super) fn ident(&mut self) -> (usize, &'a str) {
        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    pub(super) fn int<T: TryFrom<i128>>(&mut self, expected: &'static str) -> Result<T, PErr> {
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
    pub(super) fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T, PErr>) -> Result<Vec<T>, PErr> {
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

pub(super) fn parse_int<T: TryFrom<i128>>(tok: &str, expected: &'static str) -> Result<T, ValueError> {
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

pub(super) fn is_decimal(s: &str) -> bool {
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
pub(super) fn float_special(s: &str, hex_digits: usize) -> Result<Option<FloatSpecial>, ValueError> {
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

pub(super) enum FloatSpecial {
    Inf(bool),
    Nan,
    Bits(u64),
}

pub(super) fn not_nan(s: &str) -> ValueError {
    ValueError::Invalid(format!("`{}` is not a NaN bit pattern", clip(s)))
}

pub(super) fn parse_f32(s: &str) -> Result<f32, ValueError> {
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

pub(super) fn parse_f64(s: &str) -> Result<f64, ValueError> {
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

pub(super) fn parse_name(c: &mut Cur) -> Result<String, PErr> {
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
pub(super) fn full<T>(s: &str, f: impl FnOnce(&mut Cur) -> Result<T, PErr>) -> Result<T, PErr> {
    let mut c = Cur { s, pos: 0 };
    let v = f(&mut c)?;
    if c.pos < s.len() {
        return Err((c.pos, ValueError::Trailing(clip(c.rest()))));
    }
    Ok(v)
}

pub(super) fn ap(c: &mut Cur) -> Result<Ap, PErr> {
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

pub(super) fn boolean(c: &mut Cur) -> Result<bool, PErr> {
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

pub(super) fn engine(c: &mut Cur) -> Result<Engine, PErr> {
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

pub(super) fn named<T: Copy>(
    c: &mut Cur,
    what: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, PErr> {
    let (at, w) = c.ident();
    all.iter().copied().find(|&v| name(v) == w).ok_or_else(|| {
        let expected = all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", ");
        (at, ValueError::UnknownName { what, text: clip(w), expected })
    })
}

pub(super) fn alu_op(c: &mut Cur) -> Result<AluOp, PErr> {
    named(c, "AluOp", AluOp::ALL, AluOp::name)
}

pub(super) fn act_fn(c: &mut Cur) -> Result<ActFn, PErr> {
    named(c, "ActFn", ActFn::ALL, ActFn::name)
}

pub(super) fn operand(c: &mut Cur) -> Result<Operand, PErr> {
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

pub(super) fn steps(c: &mut Cur) -> Result<[i32; 4], PErr> {
    let at = c.pos;
    let v: Vec<i32> = c.list(|c| c.int("a signed 32-bit integer"))?;
    if v.is_empty() || v.len() > 4 {
        return Err((at, ValueError::Invalid(format!("expected 1 to 4 steps, found {}", v.len()))));
    }
    let mut out = [0; 4];
    out.iter_mut().zip(&v).for_each(|(o, s)| *o = *s);
    Ok(out)
}

pub(super) fn dep(c: &mut Cur) -> Result<InstId, PErr> {
    c.expect('%', "before an instruction id")?;
    c.int("an instruction id (unsigned 32-bit)").map(InstId)
}

// ---------------------------------------------------------------------------
// Lines.

/// The `key=value` fields of one instruction.
pub(super) struct Fields<'a> {
    pub(super) line: usize,
    /// Column of the mnemonic, for errors about absent fields.
    pub(super) col: usize,
    pub(super) context: &'static str,
    pub(super) items: Vec<(&'a str, &'a str, usize)>,
}

impl Fields<'_> {
    pub(super) fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.items.iter().find(|(k, _, _)| *k == key).map(|&(_, v, col)| (v, col))
    }

    pub(super) fn err(&self, column: usize, kind: TextErrorKind) -> TextError {
        TextError { line: self.line, column, kind }
    }

    pub(super) fn opt<T>(
        &self,
        key: &'static str,
        f: impl FnOnce(&mut Cur) -> Result<T, PErr>,
    ) -> Result<Option<T>, TextError> {
        let Some((value, col)) = self.get(key) else { return Ok(None) };
        full(value, f).map(Some).map_err(|(pos, error)| {
            let column = col + value.get(..pos).map_or(0, |s| s.chars().count());
            self.err(column, TextErrorKind::BadField { context: self.context, field: key, error })
        })
    }

    pub(super) fn req<T>(
        &self,
        key: &'static str,
        f: impl FnOnce(&mut Cur) -> Result<T, PErr>,
    ) -> Result<T, TextError> {
        self.opt(key, f)?
            .ok_or_else(|| self.err(self.col, TextErrorKind::MissingField { context: self.context, field: key }))
    }

    /// `key` only makes sense together with `needs`.
    pub(super) fn forbid(&self, key: &'static str, needs: &str) -> Result<(), TextError> {
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

pub(super) fn parse_inst(line: usize, words: &[Word], index: usize) -> Result<Inst, TextError> {
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
pub(super) fn directive_args<'w, 'a, const N: usize>(
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

pub(super) fn word_value<T>(
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

pub(super) fn parse_tensor(line: usize, words: &[Word]) -> Result<TensorDecl, TextError> {
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
