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
        }
    }

    /// Bytes per element in ONNX raw data (and in `.npy` files).
    pub const fn size(self) -> usize {
        match self {
            DataType::F64 | DataType::I64 | DataType::U64 => 8,
            DataType::F32 | DataType::I32 | DataType::U32 => 4,
            DataType::F16 | DataType::Bf16 | DataType::I16 | DataType::U16 => 2,
            DataType::I8 | DataType::U8 | DataType::Bool => 1,
        }
    }

    /// True for the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64 | DataType::F16 | DataType::Bf16)
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
            DataType::F64 | DataType::I64 | DataType::U64 | DataType::Bool => return None,
        })
    }

    /// Rounds a float value to this (float) type, to nearest even; integer types wrap
    /// the truncated value like a C cast of an in-range value.
    #[inline]
    pub fn round_float(self, x: f64) -> f64 {
        match self {
            DataType::F64 => x,
            DataType::F32 => x as f32 as f64,
            DataType::F16 => half::f16::from_f64(x).to_f64(),
            DataType::Bf16 => half::bf16::from_f64(x).to_f64(),
            _ => x,
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
