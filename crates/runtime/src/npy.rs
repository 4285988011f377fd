//! NumPy `.npy` files: versions 1.0, 2.0 and 3.0, little-endian, C order.
//!
//! Reading never panics: every malformed or truncated file is a
//! [`RuntimeError::Npy`] naming the file and what is wrong.

use std::path::Path;

use trainyard_arch::DType;

use crate::fsutil::write_atomic;
use crate::tensor::{elements_of, ElemType, HostTensor, RawArray};
use crate::RuntimeError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads an `.npy` file into a [`HostTensor`].
///
/// Supported dtypes: `<f4 <f2 <f8 |i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8 |b1`.
/// Types the device lacks are narrowed: float64 rounds to f32 (nearest even),
/// int64/uint64 become i32/u32 when every value fits (an error names the first
/// that does not), bool becomes u8. [`crate::Session::bind_file`] instead
/// converts straight to the bound tensor's dtype.
pub fn read_npy(path: &Path) -> Result<HostTensor, RuntimeError> {
    let raw = read_npy_raw(path)?;
    raw.into_host(&path.display().to_string())
}

pub(crate) fn read_npy_raw(path: &Path) -> Result<RawArray, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    parse_npy(&bytes).map_err(|m| RuntimeError::npy(path, m))
}

/// Writes `t` as an `.npy` file (version 1.0, or 2.0 for huge headers),
/// atomically (temporary file, then rename).
///
/// f32, f16 and the integer types are written natively; bf16 and fp8, which
/// numpy lacks, are widened exactly to float32.
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), RuntimeError> {
    t.check(&path.display().to_string())?;
    write_atomic(path, &npy_bytes(t))
}

/// The numpy dtype a device dtype is saved as; `None` when it is widened to `<f4`.
pub(crate) fn native_descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::Bf16 | DType::F8E4M3 | DType::F8E5M2 => return None,
    })
}

/// The complete file contents for `t`, whose data must match its shape.
pub(crate) fn npy_bytes(t: &HostTensor) -> Vec<u8> {
    let (descr, widened);
    let data: &[u8] = match native_descr(t.dtype) {
        Some(d) => {
            descr = d;
            &t.data
        }
        None => {
            descr = "<f4";
            widened = t.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
            &widened
        }
    };
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!("({})", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // The header (preamble + dict + padding + newline) is a multiple of 64 bytes.
    let pad_to = |preamble: usize| (preamble + dict.len() + 1).div_ceil(64) * 64 - preamble;
    let (version, preamble) = if pad_to(10) <= u16::MAX as usize { (1u8, 10) } else { (2u8, 12) };
    let header_len = pad_to(preamble);
    let mut out = Vec::with_capacity(preamble + header_len + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(preamble + header_len - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// Parses a complete `.npy` file.
pub(crate) fn parse_npy(bytes: &[u8]) -> Result<RawArray, String> {
    if bytes.len() < 10 {
        return Err(format!("file is {} bytes, too short for an npy header", bytes.len()));
    }
    if &bytes[..6] != MAGIC {
        return Err("not an npy file (missing the \\x93NUMPY magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_start, header_len) = match major {
        1 => (10usize, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated header length")?;
            (12usize, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        _ => return Err(format!("unsupported npy version {major}.{minor} (supported: 1.0, 2.0, 3.0)")),
    };
    let header_end = header_start.checked_add(header_len).ok_or("header length overflows")?;
    let header_bytes = bytes.get(header_start..header_end).ok_or_else(|| {
        format!(
            "truncated header: it declares {header_len} bytes, the file has {} after the preamble",
            bytes.len() - header_start
        )
    })?;
    let header: String = if major == 3 {
        std::str::from_utf8(header_bytes).map_err(|e| format!("header is not UTF-8: {e}"))?.to_string()
    } else {
        // Versions 1 and 2 encode the header in latin-1.
        header_bytes.iter().map(|&b| b as char).collect()
    };
    let h = parse_header(&header)?;
    let elements = h.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let need = elements.checked_mul(h.elem.size() as u64).ok_or("data size overflows")?;
    let data = &bytes[header_end..];
    let have = data.len() as u64;
    if have < need {
        return Err(format!(
            "truncated data: shape {:?} of {} needs {need} bytes, the file has {have}",
            h.shape, h.descr
        ));
    }
    if have > need {
        return Err(format!("{} unexpected bytes after the data of shape {:?} of {}", have - need, h.shape, h.descr));
    }
    debug_assert_eq!(elements_of(&h.shape), elements);
    Ok(RawArray { elem: h.elem, shape: h.shape, data: data.to_vec() })
}

struct Header {
    descr: String,
    elem: ElemType,
    shape: Vec<u64>,
}

#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    List,
}

fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser { chars: text.chars().collect(), pos: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect('{')?;
    loop {
        p.skip_ws();
        if p.eat('}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(':')?;
        let value = p.value()?;
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", Value::List) => return Err("structured dtypes (a list `descr`) are not supported".into()),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(format!("header key `{key}` has a bad value {v:?}"))
            }
            _ => {}
        }
        p.skip_ws();
        if !p.eat(',') {
            p.skip_ws();
            p.expect('}')?;
            break;
        }
    }
    let descr = descr.ok_or("header lacks `descr`")?;
    let shape = shape.ok_or("header lacks `shape`")?;
    match fortran {
        None => return Err("header lacks `fortran_order`".into()),
        Some(true) => {
            return Err("fortran_order arrays are not supported; save a C-ordered array (np.ascontiguousarray)".into())
        }
        Some(false) => {}
    }
    let elem = parse_descr(&descr)?;
    Ok(Header { descr, elem, shape })
}

fn parse_descr(descr: &str) -> Result<ElemType, String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let elem = match code {
        "f2" => ElemType::Dev(DType::F16),
        "f4" => ElemType::Dev(DType::F32),
        "f8" => ElemType::F64,
        "i1" => ElemType::Dev(DType::I8),
        "i2" => ElemType::Dev(DType::I16),
        "i4" => ElemType::Dev(DType::I32),
        "i8" => ElemType::I64,
        "u1" => ElemType::Dev(DType::U8),
        "u2" => ElemType::Dev(DType::U16),
        "u4" => ElemType::Dev(DType::U32),
        "u8" => ElemType::U64,
        "b1" | "?" => ElemType::Bool,
        _ => {
            return Err(format!(
                "unsupported dtype `{descr}` (supported: <f2 <f4 <f8 |i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8 |b1)"
            ))
        }
    };
    // `=` (native) is treated as little-endian: numpy itself writes `<` or `|`.
    if order == '>' && elem.size() > 1 {
        return Err(format!("big-endian dtype `{descr}` is not supported; save with a little-endian dtype"));
    }
    Ok(elem)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.skip_ws();
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{c}`")))
        }
    }

    fn unexpected(&self, what: &str) -> String {
        match self.peek() {
            Some(c) => format!("bad header: expected {what} at character {}, found `{}`", self.pos, c.escape_debug()),
            None => format!("bad header: expected {what}, found the end of the header"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.unexpected("a quoted string")),
        };
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(self.unexpected(&format!("a closing {quote}"))),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn word(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
            s.push(c);
            self.pos += 1;
        }
        s
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        match self.peek() {
            Some('\'' | '"') => Ok(Value::Str(self.string()?)),
            Some('(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(')') {
                        return Ok(Value::Tuple(dims));
                    }
                    let w = self.word();
                    // Python 2 wrote longs with an `L` suffix.
                    let digits = w.strip_suffix('L').unwrap_or(&w);
                    let d = digits.parse::<u64>().map_err(|_| {
                        if w.is_empty() {
                            self.unexpected("a dimension")
                        } else {
                            format!("bad header: shape dimension `{w}` is not a non-negative integer")
                        }
                    })?;
                    dims.push(d);
                    self.skip_ws();
                    if !self.eat(',') {
                        self.skip_ws();
                        if !self.eat(')') {
                            return Err(self.unexpected("`,` or `)` in the shape"));
                        }
                        return Ok(Value::Tuple(dims));
                    }
                }
            }
            Some('[') => Ok(Value::List),
            Some(c) if c.is_ascii_alphabetic() => match self.word().as_str() {
                "True" => Ok(Value::Bool(true)),
                "False" => Ok(Value::Bool(false)),
                w => Err(format!("bad header: unexpected word `{w}`")),
            },
            _ => Err(self.unexpected("a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hand_built(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        let header = format!("{dict}\n");
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_hand_built_v1_and_v2_and_v3() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        for v in [1u8, 2, 3] {
            let f = hand_built(v, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &data);
            let a = parse_npy(&f).unwrap();
            assert_eq!(a.shape, vec![2, 3]);
            assert_eq!(a.elem, ElemType::Dev(DType::F32));
            assert_eq!(a.data, data);
        }
        // Double quotes, no trailing comma, keys in another order, Python 2 longs.
        let f = hand_built(1, "{\"shape\": (3L,), \"fortran_order\": False, \"descr\": \"|u1\"}", &[7, 8, 9]);
        let a = parse_npy(&f).unwrap();
        assert_eq!((a.shape, a.elem, a.data), (vec![3], ElemType::Dev(DType::U8), vec![7, 8, 9]));
        // Scalars have shape ().
        let f = hand_built(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &2.5f64.to_le_bytes());
        let a = parse_npy(&f).unwrap();
        assert!(a.shape.is_empty());
        assert_eq!(a.clone().into_host("s").unwrap().to_f32(), vec![2.5]);
    }

    #[test]
    fn header_is_64_byte_aligned() {
        let t = HostTensor::from_f32(vec![2, 3], DType::F32, &[0.0; 6]);
        let b = npy_bytes(&t);
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(b[10 + hl - 1], b'\n');
        assert_eq!(b.len(), 10 + hl + 24);
    }

    #[test]
    fn named_errors() {
        let data = f32_bytes(&[1.0; 4]);
        let cases: &[(&[u8], &str)] = &[
            (&hand_built(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", &data), "fortran_order"),
            (&hand_built(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", &data), "big-endian"),
            (&hand_built(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 2), }", &data), "unsupported dtype"),
            (&hand_built(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &data), "truncated data"),
            (&hand_built(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &data), "unexpected bytes"),
            (&hand_built(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", &data), "structured"),
            (&hand_built(1, "{'descr': '<f4', 'shape': (4,), }", &data), "fortran_order"),
            (&hand_built(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", &data), "dimension"),
            (&hand_built(7, "{}", &data), "version 7"),
            (b"\x93NUMPY\x01\x00\xff\x00{'descr'", "truncated header"),
            (b"PK\x03\x04 this is a zip", "magic"),
            (b"\x93NUM", "too short"),
        ];
        for (bytes, want) in cases {
            let e = parse_npy(bytes).err().unwrap_or_default();
            assert!(e.contains(want), "expected `{want}` in `{e}`");
        }
        let huge =
            hand_built(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }", &[]);
        assert!(parse_npy(&huge).unwrap_err().contains("overflow"));
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("trainyard-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.npy");
        std::fs::write(&p, b"garbage!!garbage").unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains("magic"), "{e}");
        let e = read_npy(&dir.join("missing.npy")).unwrap_err().to_string();
        assert!(e.contains("missing.npy"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn dtype_strategy() -> impl Strategy<Value = DType> {
        proptest::sample::select(DType::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn round_trip_every_dtype(
            dtype in dtype_strategy(),
            shape in proptest::collection::vec(0u64..4, 0..4),
            seed in any::<u64>(),
        ) {
            let n = elements_of(&shape) as usize;
            let mut rng = trainyard_arch::SplitMix64::new(seed);
            let mut data = vec![0u8; n * dtype.size()];
            for b in data.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            let t = HostTensor { dtype, shape: shape.clone(), data };
            let back = parse_npy(&npy_bytes(&t)).unwrap().into_host("t").unwrap();
            prop_assert_eq!(&back.shape, &shape);
            if native_descr(dtype).is_some() {
                prop_assert_eq!(back, t);
            } else {
                prop_assert_eq!(back.dtype, DType::F32);
                // Exact widening: every value (NaN aside) survives.
                for (a, b) in t.to_f32().iter().zip(back.to_f32()) {
                    prop_assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_npy(&bytes);
            let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse_npy(&with_magic);
        }

        #[test]
        fn truncation_is_an_error(cut in 0usize..100) {
            let t = HostTensor::from_f32(vec![3, 3], DType::F32, &[1.5; 9]);
            let full = npy_bytes(&t);
            let cut = cut.min(full.len() - 1);
            prop_assert!(parse_npy(&full[..cut]).is_err());
        }

        #[test]
        fn header_garbage_never_panics(header in "[ -~]{0,80}") {
            let _ = parse_npy(&hand_built(1, &header, &[0; 16]));
            let _ = parse_npy(&hand_built(3, &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {header}}}"), &[0; 16]));
        }
    }
}
