//! Host tensors: the values of constants, initializers and interpreter data.

use std::fmt;

use super::DataType;

/// Element storage of a [`Tensor`].
///
/// Float types are held as `f64` whose values are already rounded to the tensor's
/// type, so every operation can compute in `f64` and round once on store (the
/// interpreter's numerics rule). Integer and boolean types are held as exact `i128`
/// values inside their type's range (booleans are 0 or 1).
#[derive(Clone, PartialEq)]
pub enum Data {
    /// Values of a float tensor.
    Float(Vec<f64>),
    /// Values of an integer or boolean tensor.
    Int(Vec<i128>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, row-major tensor with a static shape.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: Data,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype, self.shape)?;
        let n = self.len().min(8);
        match &self.data {
            Data::Float(v) => write!(f, "{:?}", &v[..n])?,
            Data::Int(v) => write!(f, "{:?}", &v[..n])?,
        }
        if self.len() > n {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Number of elements of `shape` (1 for a scalar), `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Number of elements of a shape already known not to overflow.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides (in elements) of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    /// A tensor from parts; errors (with the counts) when the data does not match the
    /// shape or the storage kind does not match the type.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Data) -> Result<Tensor, String> {
        let n = checked_numel(&shape).ok_or_else(|| format!("shape {shape:?} has too many elements"))?;
        if data.len() != n {
            return Err(format!("shape {shape:?} needs {n} elements, the data has {}", data.len()));
        }
        match (&data, dtype.is_float()) {
            (Data::Float(_), true) | (Data::Int(_), false) => Ok(Tensor { dtype, shape, data }),
            _ => Err(format!("{dtype} tensor with the wrong kind of storage")),
        }
    }

    /// A float tensor; each value is rounded to `dtype` (which must be a float type).
    pub fn from_f64(dtype: DataType, shape: Vec<usize>, mut values: Vec<f64>) -> Result<Tensor, String> {
        for v in &mut values {
            *v = dtype.round_float(*v);
        }
        Tensor::new(dtype, shape, Data::Float(values))
    }

    /// An integer or bool tensor; each value is wrapped into `dtype`'s range.
    pub fn from_i128(dtype: DataType, shape: Vec<usize>, mut values: Vec<i128>) -> Result<Tensor, String> {
        for v in &mut values {
            *v = dtype.wrap_int(*v);
        }
        Tensor::new(dtype, shape, Data::Int(values))
    }

    /// A float32 tensor.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Tensor, String> {
        Tensor::new(DataType::F32, shape, Data::Float(values.iter().map(|&v| v as f64).collect()))
    }

    /// A 1-D int64 tensor.
    pub fn from_i64s(values: &[i64]) -> Tensor {
        Tensor {
            dtype: DataType::I64,
            shape: vec![values.len()],
            data: Data::Int(values.iter().map(|&v| v as i128).collect()),
        }
    }

    /// A tensor of `shape` filled with zeros (false for bool).
    pub fn zeros(dtype: DataType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        let data = if dtype.is_float() { Data::Float(vec![0.0; n]) } else { Data::Int(vec![0; n]) };
        Tensor { dtype, shape, data }
    }

    /// A scalar of `dtype` holding `v` (rounded or wrapped to the type).
    pub fn scalar(dtype: DataType, v: f64) -> Tensor {
        let data = if dtype.is_float() {
            Data::Float(vec![dtype.round_float(v)])
        } else {
            Data::Int(vec![dtype.wrap_int(float_to_int(v))])
        };
        Tensor { dtype, shape: vec![], data }
    }

    /// Element type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Shape, outermost first (`[]` is a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Element storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Element storage and shape, consumed.
    pub fn into_parts(self) -> (DataType, Vec<usize>, Data) {
        (self.dtype, self.shape, self.data)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same data under another shape with the same element count.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Tensor, String> {
        if checked_numel(&shape) != Some(self.len()) {
            return Err(format!("cannot reshape {:?} to {:?}", self.shape, shape));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The float values (an integer tensor converts by value).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::Float(v) => v.clone(),
            Data::Int(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The values as `f32` (the device's host reference type).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::Float(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as integers (a float tensor truncates toward zero).
    pub fn to_i128_vec(&self) -> Vec<i128> {
        match &self.data {
            Data::Float(v) => v.iter().map(|&x| float_to_int(x)).collect(),
            Data::Int(v) => v.clone(),
        }
    }

    /// The values as `i64` (saturating), e.g. for shape arguments.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        self.to_i128_vec().into_iter().map(|v| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64).collect()
    }

    /// The raw little-endian bytes in ONNX / numpy layout (bool as one byte).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.dtype.size());
        match &self.data {
            Data::Float(v) => {
                for &x in v {
                    match self.dtype {
                        DataType::F64 => out.extend_from_slice(&x.to_le_bytes()),
                        DataType::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                        DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
                        DataType::F8E4M3 | DataType::F8E5M2 => out.push(self.dtype.fp8_bits(x)),
                        _ => out.extend_from_slice(&(x as f32).to_le_bytes()),
                    }
                }
            }
            Data::Int(v) => {
                let size = self.dtype.size();
                for &x in v {
                    out.extend_from_slice(&x.to_le_bytes()[..size]);
                }
            }
        }
        out
    }

    /// Decodes little-endian raw bytes of `dtype` (ONNX `raw_data`, `.npy` payloads).
    pub fn from_le_bytes(dtype: DataType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, String> {
        let n = checked_numel(&shape).ok_or_else(|| format!("shape {shape:?} has too many elements"))?;
        let size = dtype.size();
        if Some(bytes.len()) != n.checked_mul(size) {
            return Err(format!(
                "shape {shape:?} of {dtype} needs {} bytes, the data has {}",
                n.saturating_mul(size),
                bytes.len()
            ));
        }
        let data = if dtype.is_float() {
            Data::Float(
                bytes
                    .chunks_exact(size)
                    .map(|c| match dtype {
                        DataType::F64 => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                        DataType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
                        DataType::Bf16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
                        DataType::F8E4M3 | DataType::F8E5M2 => dtype.fp8_value(c[0]),
                        _ => f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64,
                    })
                    .collect(),
            )
        } else {
            let signed = dtype.is_signed_int();
            Data::Int(
                bytes
                    .chunks_exact(size)
                    .map(|c| {
                        let mut b = [0u8; 16];
                        b[..size].copy_from_slice(c);
                        if signed && c[size - 1] & 0x80 != 0 {
                            b[size..].fill(0xff);
                        }
                        dtype.wrap_int(i128::from_le_bytes(b))
                    })
                    .collect(),
            )
        };
        Ok(Tensor { dtype, shape, data })
    }
}

/// Truncates a float toward zero into an integer, NaN as 0 and infinities saturated.
pub fn float_to_int(x: f64) -> i128 {
    if x.is_nan() {
        0
    } else {
        x.trunc().clamp(i128::MIN as f64, i128::MAX as f64) as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_type() {
        for dt in [
            DataType::F32,
            DataType::F64,
            DataType::F16,
            DataType::Bf16,
            DataType::I8,
            DataType::I16,
            DataType::I32,
            DataType::I64,
            DataType::U8,
            DataType::U16,
            DataType::U32,
            DataType::U64,
            DataType::Bool,
        ] {
            let t = if dt.is_float() {
                Tensor::from_f64(dt, vec![2, 2], vec![1.5, -2.0, 0.25, 1e3]).unwrap()
            } else if dt == DataType::Bool {
                Tensor::from_i128(dt, vec![2, 2], vec![1, 0, 1, 1]).unwrap()
            } else {
                let lo = dt.int_range().unwrap().0;
                Tensor::from_i128(dt, vec![2, 2], vec![lo, 1, 7, 100]).unwrap()
            };
            let back = Tensor::from_le_bytes(dt, vec![2, 2], &t.to_le_bytes()).unwrap();
            assert_eq!(back, t, "{dt}");
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(Tensor::from_f32(vec![2, 3], &[0.0; 5]).unwrap_err().contains("6 elements"));
        assert!(Tensor::from_le_bytes(DataType::I32, vec![3], &[0; 8]).unwrap_err().contains("12 bytes"));
        assert!(Tensor::new(DataType::F32, vec![1], Data::Int(vec![1])).is_err());
    }

    #[test]
    fn strides() {
        assert_eq!(strides_of(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides_of(&[]), Vec::<usize>::new());
    }
}
