//! Element types of graph values: the ONNX tensor element types the compiler understands.

use std::fmt;

use trainyard_arch::DType;

/// The element type of a tensor in the graph.
///
/// These are ONNX's `TensorProto.DataType` values that the compiler handles; the
/// others (strings, complex numbers, 4-bit and fp8 variants) are refused by name on
/// import (see [`DataType::from_onnx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// IEEE binary32 (`float`).
    F32,
    /// IEEE binary64 (`double`).
    F64,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Boolean (stored as one byte in files).
    Bool,
    /// fp8 E4M3 without infinities (ONNX `FLOAT8E4M3FN`, OCP E4M3; max 448).
    F8E4M3,
    /// fp8 E5M2 with infinities (ONNX `FLOAT8E5M2`, OCP E5M2; max 57344).
    F8E5M2,
}

/// An fp8 format: exponent and mantissa bits, and whether the top exponent holds
/// infinities (E5M2) or only the all-ones NaN (E4M3FN).
#[derive(Clone, Copy)]
struct Fp8 {
    exp_bits: u32,
    man_bits: u32,
    ieee_specials: bool,
}

/// ⌊log₂ a⌋ of a positive normal `f64`, exactly.
fn exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

const E4M3: Fp8 = Fp8 { exp_bits: 4, man_bits: 3, ieee_specials: false };
const E5M2: Fp8 = Fp8 { exp_bits: 5, man_bits: 2, ieee_specials: true };

impl Fp8 {
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }

    /// The largest finite value.
    fn max(self) -> f64 {
        let top_exp = (1 << self.exp_bits) - 1 - self.ieee_specials as i32 - self.bias();
        // E4M3FN keeps the top exponent for numbers but loses its last mantissa code to NaN.
        let mant = if self.ieee_specials { (1 << self.man_bits) - 1 } else { (1 << self.man_bits) - 2 };
        (1.0 + mant as f64 / (1 << self.man_bits) as f64) * 2f64.powi(top_exp)
    }

    /// Rounds to nearest even; overflow saturates to ±max when `saturate`, else becomes
    /// ±∞ (E5M2) or NaN (E4M3FN), as ONNX `Cast` specifies.
    fn round(self, x: f64, saturate: bool) -> f64 {
        let max = self.max();
        let overflow = |neg: bool| {
            if saturate {
                if neg {
                    -max
                } else {
                    max
                }
            } else if self.ieee_specials {
                if neg {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            } else {
                f64::NAN
            }
        };
        if x.is_nan() {
            return f64::NAN;
        }
        if x.is_infinite() {
            return overflow(x < 0.0);
        }
        if x == 0.0 {
            return x;
        }
        let a = x.abs();
        let emin = 1 - self.bias();
        let e = exponent(a).max(emin);
        let q = 2f64.powi(e - self.man_bits as i32);
        let r = (a / q).round_ties_even() * q;
        if r > max {
            return overflow(x < 0.0);
        }
        if x < 0.0 {
            -r
        } else {
            r
        }
    }

    fn encode(self, x: f64) -> u8 {
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        // Both formats spell NaN S.1111.111 / S.11111.11.
        if x.is_nan() {
            return 0x7f;
        }
        let a = x.abs();
        if a.is_infinite() {
            return sign | (((1u32 << self.exp_bits) - 1) << self.man_bits) as u8;
        }
        if a == 0.0 {
            return sign;
        }
        let emin = 1 - self.bias();
        let e = exponent(a);
        let bits = if e < emin {
            (a / 2f64.powi(emin - self.man_bits as i32)).round() as u32
        } else {
            let m = (a / 2f64.powi(e) - 1.0) * (1 << self.man_bits) as f64;
            (((e + self.bias()) as u32) << self.man_bits) | m.round() as u32
        };
        sign | bits as u8
    }

    fn decode(self, b: u8) -> f64 {
        let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = ((b >> self.man_bits) as u32) & ((1 << self.exp_bits) - 1);
        let m = (b as u32) & ((1 << self.man_bits) - 1);
        let top = (1 << self.exp_bits) - 1;
        if self.ieee_specials && e == top {
            return if m == 0 { sign * f64::INFINITY } else { f64::NAN };
        }
        if !self.ieee_specials && e == top && m == (1 << self.man_bits) - 1 {
            return f64::NAN;
        }
        let frac = m as f64 / (1 << self.man_bits) as f64;
        if e == 0 {
            sign * frac * 2f64.powi(1 - self.bias())
        } else {
            sign * (1.0 + frac) * 2f64.powi(e as i32 - self.bias())
        }
    }
}

impl DataType {
    /// The type for an ONNX `TensorProto.DataType` code, or the ONNX name of a type the
    /// compiler does not handle.
    pub fn from_onnx(code: i32) -> Result<DataType, String> {
        Ok(match code {
            1 => DataType::F32,
            2 => DataType::U8,
            3 => DataType::I8,
            4 => DataType::U16,
            5 => DataType::I16,
            6 => DataType::I32,
            7 => DataType::I64,
            9 => DataType::Bool,
            10 => DataType::F16,
            11 => DataType::F64,
            12 => DataType::U32,
            13 => DataType::U64,
            16 => DataType::Bf16,
            17 => DataType::F8E4M3,
            19 => DataType::F8E5M2,
            other => return Err(onnx_type_name(other)),
        })
    }

    /// The ONNX `TensorProto.DataType` code.
    pub const fn onnx_code(self) -> i32 {
        match self {
            DataType::F32 => 1,
            DataType::U8 => 2,
            DataType::I8 => 3,
            DataType::U16 => 4,
            DataType::I16 => 5,
            DataType::I32 => 6,
            DataType::I64 => 7,
            DataType::Bool => 9,
            DataType::F16 => 10,
            DataType::F64 => 11,
            DataType::U32 => 12,
            DataType::U64 => 13,
            DataType::Bf16 => 16,
            DataType::F8E4M3 => 17,
            DataType::F8E5M2 => 19,
        }
    }

    /// The numpy-style name (`float32`, `int64`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DataType::F32 => "float32",
            DataType::F64 => "float64",
            DataType::F16 => "float16",
            DataType::Bf16 => "bfloat16",
            DataType::I8 => "int8",
            DataType::I16 => "int16",
            DataType::I32 => "int32",
            DataType::I64 => "int64",
            DataType::U8 => "uint8",
            DataType::U16 => "uint16",
            DataType::U32 => "uint32",
            DataType::U64 => "uint64",
            DataType::Bool => "bool",
            DataType::F8E4M3 => "float8e4m3fn",
            DataType::F8E5M2 => "float8e5m2",
        }
    }

    /// Bytes per element in ONNX raw data (and in `.npy` files).
    pub const fn size(self) -> usize {
        match self {
            DataType::F64 | DataType::I64 | DataType::U64 => 8,
            DataType::F32 | DataType::I32 | DataType::U32 => 4,
            DataType::F16 | DataType::Bf16 | DataType::I16 | DataType::U16 => 2,
            DataType::I8 | DataType::U8 | DataType::Bool | DataType::F8E4M3 | DataType::F8E5M2 => 1,
        }
    }

    /// True for the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DataType::F32 | DataType::F64 | DataType::F16 | DataType::Bf16 | DataType::F8E4M3 | DataType::F8E5M2
        )
    }

    /// True for the signed and unsigned integer types (not `Bool`).
    pub const fn is_int(self) -> bool {
        !self.is_float() && !matches!(self, DataType::Bool)
    }

    /// True for the signed integer types.
    pub const fn is_signed_int(self) -> bool {
        matches!(self, DataType::I8 | DataType::I16 | DataType::I32 | DataType::I64)
    }

    /// The device dtype with the same values, where the device has one (f64, 64-bit
    /// integers and bool have none; a lowering must convert or refuse them).
    pub const fn device_dtype(self) -> Option<DType> {
        Some(match self {
            DataType::F32 => DType::F32,
            DataType::F16 => DType::F16,
            DataType::Bf16 => DType::Bf16,
            DataType::I8 => DType::I8,
            DataType::I16 => DType::I16,
            DataType::I32 => DType::I32,
            DataType::U8 => DType::U8,
            DataType::U16 => DType::U16,
            DataType::U32 => DType::U32,
            DataType::F8E4M3 => DType::F8E4M3,
            DataType::F8E5M2 => DType::F8E5M2,
            DataType::F64 | DataType::I64 | DataType::U64 | DataType::Bool => return None,
        })
    }

    /// Rounds a float value to this (float) type, to nearest even (fp8 saturates
    /// finite overflow, ONNX's default); other types return `x`.
    #[inline]
    pub fn round_float(self, x: f64) -> f64 {
        self.round_float_with(x, true)
    }

    /// [`DataType::round_float`] with ONNX `Cast`'s `saturate` choice for fp8: without
    /// it, overflow becomes ±∞ (E5M2) or NaN (E4M3FN).
    pub fn round_float_with(self, x: f64, saturate: bool) -> f64 {
        match self {
            DataType::F64 => x,
            DataType::F32 => x as f32 as f64,
            DataType::F16 => half::f16::from_f64(x).to_f64(),
            DataType::Bf16 => half::bf16::from_f64(x).to_f64(),
            DataType::F8E4M3 => E4M3.round(x, saturate),
            DataType::F8E5M2 => E5M2.round(x, saturate),
            _ => x,
        }
    }

    /// The one-byte encoding of an fp8 value already representable in this type.
    pub(crate) fn fp8_bits(self, x: f64) -> u8 {
        if self == DataType::F8E5M2 {
            E5M2.encode(x)
        } else {
            E4M3.encode(x)
        }
    }

    /// The value of an fp8 byte of this type.
    pub(crate) fn fp8_value(self, b: u8) -> f64 {
        if self == DataType::F8E5M2 {
            E5M2.decode(b)
        } else {
            E4M3.decode(b)
        }
    }

    /// Wraps an integer to this (integer) type's range, two's complement, as a C cast
    /// does; `Bool` maps every non-zero value to 1.
    #[inline]
    pub fn wrap_int(self, v: i128) -> i128 {
        match self {
            DataType::I8 => v as i8 as i128,
            DataType::I16 => v as i16 as i128,
            DataType::I32 => v as i32 as i128,
            DataType::I64 => v as i64 as i128,
            DataType::U8 => v as u8 as i128,
            DataType::U16 => v as u16 as i128,
            DataType::U32 => v as u32 as i128,
            DataType::U64 => v as u64 as i128,
            DataType::Bool => (v != 0) as i128,
            _ => v,
        }
    }

    /// `(min, max)` of an integer type (`Bool`: 0..=1); `None` for floats.
    pub const fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            DataType::I8 => (i8::MIN as i128, i8::MAX as i128),
            DataType::I16 => (i16::MIN as i128, i16::MAX as i128),
            DataType::I32 => (i32::MIN as i128, i32::MAX as i128),
            DataType::I64 => (i64::MIN as i128, i64::MAX as i128),
            DataType::U8 => (0, u8::MAX as i128),
            DataType::U16 => (0, u16::MAX as i128),
            DataType::U32 => (0, u32::MAX as i128),
            DataType::U64 => (0, u64::MAX as i128),
            DataType::Bool => (0, 1),
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ONNX name of a `TensorProto.DataType` code (for error messages).
pub fn onnx_type_name(code: i32) -> String {
    let name = match code {
        0 => "undefined",
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        24 => "float8e8m0",
        25 => "uint2",
        26 => "int2",
        _ => return format!("unknown data type {code}"),
    };
    format!("{name} (data type {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_codes_round_trip() {
        for code in 0..30 {
            if let Ok(t) = DataType::from_onnx(code) {
                assert_eq!(t.onnx_code(), code);
            }
        }
        assert!(DataType::from_onnx(8).unwrap_err().contains("string"));
        assert!(DataType::from_onnx(99).unwrap_err().contains("99"));
    }

    #[test]
    fn fp8_round_trips_every_code() {
        for dt in [DataType::F8E4M3, DataType::F8E5M2] {
            for b in 0..=255u8 {
                let v = dt.fp8_value(b);
                if v.is_nan() {
                    continue;
                }
                assert_eq!(dt.round_float_with(v, false).to_bits(), v.to_bits(), "{dt} {b:#x} = {v}");
                assert_eq!(dt.fp8_bits(v), b, "{dt} {v}");
                // Agrees with the device's codec.
                let dev = dt.device_dtype().unwrap();
                assert_eq!(dev.decode(b as u32) as f64, v, "{dt} {b:#x}");
            }
        }
        assert_eq!(DataType::F8E4M3.round_float(1000.0), 448.0);
        assert!(DataType::F8E4M3.round_float_with(1000.0, false).is_nan());
        assert_eq!(DataType::F8E5M2.round_float_with(1e6, false), f64::INFINITY);
        assert_eq!(DataType::F8E5M2.round_float(f64::NEG_INFINITY), -57344.0);
        // Ties to even: 464 lies between 448 and (absent) 480.
        assert_eq!(DataType::F8E4M3.round_float_with(464.0, false), 448.0);
        assert_eq!(DataType::F8E4M3.round_float(0.0021), 0.001953125);
    }

    #[test]
    fn rounding_and_wrapping() {
        assert_eq!(DataType::F16.round_float(1.0 + 1e-4), 1.0);
        assert_eq!(DataType::Bf16.round_float(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DataType::F32.round_float(0.1), 0.1f32 as f64);
        assert_eq!(DataType::U8.wrap_int(300), 44);
        assert_eq!(DataType::I8.wrap_int(200), -56);
        assert_eq!(DataType::Bool.wrap_int(-3), 1);
        assert_eq!(DataType::U64.wrap_int(-1), u64::MAX as i128);
    }
}
