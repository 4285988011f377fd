//! Host tensors and the conversions applied when host data is bound to a
//! program tensor of another dtype.

use trainyard_arch::{DType, Rounding};

use crate::RuntimeError;

/// A dense, row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first (`[]` is a scalar).
    pub shape: Vec<u64>,
    /// Raw little-endian elements of `dtype`, row-major.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// Encodes `values` into `dtype`, rounding to nearest even (integers
    /// round to nearest even and saturate). `values` should hold
    /// `shape.iter().product()` elements; a tensor whose data does not match
    /// its shape is refused by [`crate::Session::bind`] and [`crate::write_npy`].
    pub fn from_f32(shape: Vec<u64>, dtype: DType, values: &[f32]) -> Self {
        let size = dtype.size();
        let mut data = vec![0u8; values.len() * size];
        for (chunk, &v) in data.chunks_exact_mut(size).zip(values) {
            dtype.store_bits(dtype.encode(v, Rounding::NearestEven), chunk);
        }
        HostTensor { dtype, shape, data }
    }

    /// Every element decoded to `f32` (integers by value; 32-bit integers may round).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.chunks_exact(self.dtype.size()).map(|c| self.dtype.decode(self.dtype.load_bits(c))).collect()
    }

    /// Number of elements the shape describes (saturating on absurd shapes).
    pub fn elements(&self) -> u64 {
        elements_of(&self.shape)
    }

    /// Bytes the shape and dtype need (saturating).
    pub fn expected_bytes(&self) -> u64 {
        self.elements().saturating_mul(self.dtype.size() as u64)
    }

    /// Errors if `data` is not exactly `elements() · dtype.size()` bytes long.
    pub fn check(&self, what: &str) -> Result<(), RuntimeError> {
        if self.data.len() as u64 != self.expected_bytes() {
            return Err(RuntimeError::DataSize {
                tensor: what.to_string(),
                shape: self.shape.clone(),
                dtype: self.dtype.name().to_string(),
                expected: self.expected_bytes(),
                got: self.data.len() as u64,
            });
        }
        Ok(())
    }
}

pub(crate) fn elements_of(shape: &[u64]) -> u64 {
    shape.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// The element type of host data as read from a file: every device dtype plus
/// the file-only types that are converted on binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ElemType {
    Dev(DType),
    F64,
    I64,
    U64,
    Bool,
}

impl ElemType {
    pub(crate) fn size(self) -> usize {
        match self {
            ElemType::Dev(d) => d.size(),
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
            ElemType::Bool => 1,
        }
    }

    pub(crate) fn is_float(self) -> bool {
        match self {
            ElemType::Dev(d) => d.is_float(),
            ElemType::F64 => true,
            _ => false,
        }
    }

    /// The numpy-style name used in notes and errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ElemType::Dev(DType::F32) => "float32",
            ElemType::Dev(DType::F16) => "float16",
            ElemType::Dev(DType::Bf16) => "bfloat16",
            ElemType::Dev(DType::F8E4M3) => "float8_e4m3",
            ElemType::Dev(DType::F8E5M2) => "float8_e5m2",
            ElemType::Dev(DType::I8) => "int8",
            ElemType::Dev(DType::I16) => "int16",
            ElemType::Dev(DType::I32) => "int32",
            ElemType::Dev(DType::U8) => "uint8",
            ElemType::Dev(DType::U16) => "uint16",
            ElemType::Dev(DType::U32) => "uint32",
            ElemType::F64 => "float64",
            ElemType::I64 => "int64",
            ElemType::U64 => "uint64",
            ElemType::Bool => "bool",
        }
    }

    /// Element `i` of `data` as a float (only for float types).
    fn float_at(self, data: &[u8], i: usize) -> f64 {
        let s = self.size();
        let b = &data[i * s..i * s + s];
        match self {
            ElemType::Dev(d) => d.decode(d.load_bits(b)) as f64,
            ElemType::F64 => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            _ => 0.0,
        }
    }

    /// Element `i` of `data` as an exact integer (only for integer types).
    fn int_at(self, data: &[u8], i: usize) -> i128 {
        let s = self.size();
        let b = &data[i * s..i * s + s];
        match self {
            ElemType::Dev(d) => d.decode_int(d.load_bits(b)) as i128,
            ElemType::I64 => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as i128,
            ElemType::U64 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as i128,
            ElemType::Bool => (b[0] != 0) as i128,
            ElemType::F64 => 0,
        }
    }
}

/// Host data as read from a file, before conversion to a device dtype.
#[derive(Clone, Debug)]
pub(crate) struct RawArray {
    pub elem: ElemType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl RawArray {
    /// The natural device dtype of this data: itself for device dtypes,
    /// f32 for f64, i32/u32 for 64-bit integers, u8 for bool.
    pub(crate) fn natural_dtype(&self) -> DType {
        match self.elem {
            ElemType::Dev(d) => d,
            ElemType::F64 => DType::F32,
            ElemType::I64 => DType::I32,
            ElemType::U64 => DType::U32,
            ElemType::Bool => DType::U8,
        }
    }

    /// Converts to a [`HostTensor`] of [`RawArray::natural_dtype`]; `what`
    /// names the data in errors.
    pub(crate) fn into_host(self, what: &str) -> Result<HostTensor, RuntimeError> {
        let dtype = self.natural_dtype();
        if self.elem == ElemType::Dev(dtype) {
            return Ok(HostTensor { dtype, shape: self.shape, data: self.data });
        }
        let (data, _) = convert(what, self.elem, &self.data, dtype)?;
        Ok(HostTensor { dtype, shape: self.shape, data })
    }
}

/// Converts `data` (elements of `src`) to `dst` following the binding rules:
/// float → float rounds to nearest even; int → int is exact or an error naming
/// the first value out of range; float ↔ int is refused. Returns the bytes
/// and the number of values whose value changed (floats only).
pub(crate) fn convert(tensor: &str, src: ElemType, data: &[u8], dst: DType) -> Result<(Vec<u8>, u64), RuntimeError> {
    let n = data.len() / src.size();
    let size = dst.size();
    let mut out = vec![0u8; n * size];
    if src.is_float() != dst.is_float() {
        let (from, to) = if src.is_float() { ("float", "integer") } else { ("integer", "float") };
        return Err(RuntimeError::DType {
            tensor: tensor.to_string(),
            expected: dst,
            given: src.name().to_string(),
            reason: format!("{from} data is never converted to an {to} tensor implicitly; convert it on the host"),
        });
    }
    let mut changed = 0u64;
    if dst.is_float() {
        for (i, chunk) in out.chunks_exact_mut(size).enumerate() {
            let x = src.float_at(data, i);
            let bits = encode_f64(dst, x);
            let y = dst.decode(bits) as f64;
            if !(y == x || (y.is_nan() && x.is_nan())) {
                changed += 1;
            }
            dst.store_bits(bits, chunk);
        }
    } else {
        let (lo, hi) = dst.int_range().unwrap_or((0, 0));
        for (i, chunk) in out.chunks_exact_mut(size).enumerate() {
            let v = src.int_at(data, i);
            if v < lo as i128 || v > hi as i128 {
                return Err(RuntimeError::OutOfRange {
                    tensor: tensor.to_string(),
                    index: i as u64,
                    value: v,
                    dtype: dst.name().to_string(),
                    min: lo,
                    max: hi,
                });
            }
            dst.store_bits(dst.encode_int(v as i64), chunk);
        }
    }
    Ok((out, changed))
}

/// Rounds `x` to the float dtype `dst` once, to nearest even.
///
/// Going through `f32` with round-to-nearest would round twice; rounding to
/// `f32` *to odd* first keeps the final nearest-even rounding exact, because
/// `f32` carries more than two extra bits over every narrower device format.
pub(crate) fn encode_f64(dst: DType, x: f64) -> u32 {
    if dst == DType::F32 {
        return (x as f32).to_bits();
    }
    dst.encode(f64_to_f32_round_to_odd(x), Rounding::NearestEven)
}

fn f64_to_f32_round_to_odd(x: f64) -> f32 {
    let f = x as f32;
    if x.is_nan() || f as f64 == x {
        return f;
    }
    // Truncate toward zero, then mark inexactness in the last bit.
    let t = if (f as f64).abs() > x.abs() { f32::from_bits(f.to_bits() - 1) } else { f };
    f32::from_bits(t.to_bits() | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn from_f32_and_back() {
        let t = HostTensor::from_f32(vec![2, 2], DType::Bf16, &[1.0, -2.5, 0.1, 3.0]);
        assert_eq!(t.data.len(), 8);
        assert_eq!(t.elements(), 4);
        assert_eq!(t.to_f32(), vec![1.0, -2.5, DType::Bf16.round(0.1), 3.0]);
        t.check("t").unwrap();
        let bad = HostTensor { dtype: DType::F32, shape: vec![3], data: vec![0; 8] };
        let e = bad.check("w").unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("12") && e.contains('8'), "{e}");
    }

    #[test]
    fn float_int_mismatch_is_refused() {
        let e = convert("x", ElemType::Dev(DType::F32), &[0; 4], DType::I32).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("float32") && e.contains("i32"), "{e}");
        assert!(convert("x", ElemType::I64, &[0; 8], DType::Bf16).is_err());
    }

    #[test]
    fn int_out_of_range_names_first_value() {
        let data: Vec<u8> = [1i64, 300, -5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = convert("idx", ElemType::I64, &data, DType::U8).unwrap_err().to_string();
        assert!(e.contains("300") && e.contains("index 1") && e.contains("u8"), "{e}");
        let (ok, _) = convert("idx", ElemType::I64, &data, DType::I16).unwrap();
        assert_eq!(ok, [1i16, 300, -5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }

    #[test]
    fn f64_rounds_once() {
        // Just above the midpoint between bf16 neighbours 1 and 1+2^-7: a
        // double rounding through f32 would land on the midpoint and tie to 1.
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(DType::Bf16.decode(encode_f64(DType::Bf16, x)), 1.0 + 2f32.powi(-7));
        assert_eq!(DType::Bf16.decode(DType::Bf16.encode(x as f32, Rounding::NearestEven)), 1.0);
        assert_eq!(DType::F16.decode(encode_f64(DType::F16, 1e300)), f32::INFINITY);
        assert_eq!(DType::F8E4M3.decode(encode_f64(DType::F8E4M3, -1e300)), -448.0);
        assert!(DType::Bf16.decode(encode_f64(DType::Bf16, f64::NAN)).is_nan());
    }

    proptest! {
        #[test]
        fn f64_conversion_is_nearest(x in -6.0e4f64..6.0e4) {
            for d in [DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
                let bits = encode_f64(d, x);
                let r = d.decode(bits) as f64;
                for nb in [bits.wrapping_add(1) & d.mask(), bits.wrapping_sub(1) & d.mask()] {
                    let v = d.decode(nb) as f64;
                    let overflow = d.is_fp8() && x.abs() > d.decode(d.encode(f32::MAX, Rounding::NearestEven)) as f64;
                    if v.is_finite() && v.is_sign_negative() == r.is_sign_negative() && !overflow {
                        prop_assert!((v - x).abs() >= (r - x).abs(), "{:?} {} -> {} but {} closer", d, x, r, v);
                        if (v - x).abs() == (r - x).abs() {
                            prop_assert_eq!(bits & 1, 0, "tie not to even");
                        }
                    }
                }
            }
        }
    }
}
