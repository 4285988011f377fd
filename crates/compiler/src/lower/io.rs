//! Host tensors ↔ device bytes: which device element type holds each graph type, and
//! the conversions at binding and read-back.
//!
//! Floats compute in the chosen device float type (f32, or bf16 with `--dtype bf16`);
//! float64 values are held in it too. 64-bit integers are held as 32-bit ones (a bound
//! value outside their range is an error naming the input and element) and booleans as
//! `u8` 0/1. Values come back in the graph's types.

use trainyard_arch::{DType, Rounding};

use crate::graph::{DataType, Tensor, TensorType};

/// The device element type that holds values of `dt` when floats compute in `float`.
pub fn device_dtype(dt: DataType, float: DType) -> DType {
    match dt {
        DataType::F32 | DataType::F64 => float,
        DataType::F16 => DType::F16,
        DataType::Bf16 => DType::Bf16,
        DataType::F8E4M3 => DType::F8E4M3,
        DataType::F8E5M2 => DType::F8E5M2,
        DataType::I8 => DType::I8,
        DataType::I16 => DType::I16,
        DataType::I32 | DataType::I64 => DType::I32,
        DataType::U8 | DataType::Bool => DType::U8,
        DataType::U16 => DType::U16,
        DataType::U32 | DataType::U64 => DType::U32,
    }
}

/// The raw little-endian device bytes of `t` stored as `dtype`: floats rounded to
/// nearest even, integers checked against `dtype`'s range.
pub fn to_device(t: &Tensor, dtype: DType) -> Result<Vec<u8>, String> {
    let size = dtype.size();
    let mut out = vec![0u8; t.len() * size];
    match t.data() {
        crate::graph::Data::Float(v) => {
            for (chunk, &x) in out.chunks_exact_mut(size).zip(v) {
                dtype.store_bits(dtype.encode(x as f32, Rounding::NearestEven), chunk);
            }
        }
        crate::graph::Data::Int(v) => {
            let range = dtype.int_range();
            for (i, (chunk, &x)) in out.chunks_exact_mut(size).zip(v).enumerate() {
                let bits = match range {
                    Some((lo, hi)) if x < lo as i128 || x > hi as i128 => {
                        return Err(format!(
                            "element {i} = {x} does not fit the device's {} (range {lo}..={hi})",
                            dtype.name()
                        ));
                    }
                    Some(_) => dtype.encode_int(x as i64),
                    None => dtype.encode(x as f32, Rounding::NearestEven),
                };
                dtype.store_bits(bits, chunk);
            }
        }
    }
    Ok(out)
}

/// Decodes device bytes of `dtype` into a tensor of the graph type `ty`.
pub fn from_device(bytes: &[u8], dtype: DType, ty: &TensorType) -> Result<Tensor, String> {
    let size = dtype.size();
    let n = ty.numel();
    if bytes.len() != n * size {
        return Err(format!("{} bytes read back, {ty} as {} needs {}", bytes.len(), dtype.name(), n * size));
    }
    let bits = bytes.chunks_exact(size).map(|c| dtype.load_bits(c));
    if ty.dtype.is_float() {
        let v: Vec<f64> = bits.map(|b| dtype.decode(b) as f64).collect();
        Tensor::from_f64(ty.dtype, ty.shape.clone(), v)
    } else if ty.dtype == DataType::Bool {
        let v: Vec<i128> = bits.map(|b| i128::from(dtype.decode_int(b) != 0)).collect();
        Tensor::from_i128(ty.dtype, ty.shape.clone(), v)
    } else {
        let v: Vec<i128> = bits.map(|b| dtype.decode_int(b) as i128).collect();
        Tensor::from_i128(ty.dtype, ty.shape.clone(), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_range_errors() {
        let f = Tensor::from_f32(vec![3], &[1.5, -2.25, 1e-3]).unwrap();
        let b = to_device(&f, DType::Bf16).unwrap();
        let back = from_device(&b, DType::Bf16, &TensorType::new(DataType::F32, vec![3])).unwrap();
        assert_eq!(back.to_f32_vec()[..2], [1.5, -2.25]);
        let i = Tensor::from_i128(DataType::I64, vec![2], vec![-7, 1 << 20]).unwrap();
        let d = device_dtype(DataType::I64, DType::F32);
        let back = from_device(&to_device(&i, d).unwrap(), d, &TensorType::new(DataType::I64, vec![2])).unwrap();
        assert_eq!(back, i);
        let big = Tensor::from_i128(DataType::I64, vec![1], vec![1 << 40]).unwrap();
        assert!(to_device(&big, d).unwrap_err().contains("element 0"));
        let t = Tensor::from_i128(DataType::Bool, vec![2], vec![1, 0]).unwrap();
        let u = device_dtype(DataType::Bool, DType::F32);
        assert_eq!(from_device(&to_device(&t, u).unwrap(), u, &TensorType::new(DataType::Bool, vec![2])).unwrap(), t);
    }
}
