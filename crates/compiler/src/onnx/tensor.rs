//! `TensorProto` to [`Tensor`]: typed fields, raw data and external data files.

use std::path::{Component, Path};

use prost::Message;

use super::proto::{TensorProto, DATA_LOCATION_EXTERNAL};
use super::OnnxError;
use crate::graph::{checked_numel, Data, DataType, Tensor};

fn bad(name: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Tensor { tensor: name.to_string(), reason: reason.into() }
}

/// Decodes a serialized `TensorProto` (a test data `.pb` file); `what` names it in errors.
pub fn decode_tensor(bytes: &[u8], what: &str) -> Result<(String, Tensor), OnnxError> {
    let proto = TensorProto::decode(bytes).map_err(|e| OnnxError::Decode {
        what: what.to_string(),
        message: "TensorProto",
        reason: e.to_string(),
    })?;
    let name = if proto.name.is_empty() { what.to_string() } else { proto.name.clone() };
    let t = tensor_from_proto(&proto, None).map_err(|e| match e {
        OnnxError::Tensor { reason, .. } => bad(&name, reason),
        other => other,
    })?;
    Ok((proto.name, t))
}

/// Reads a tensor's data from wherever the proto keeps it. `base_dir` is the model's
/// directory, where external data files are looked up (`None`: external data is refused).
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, OnnxError> {
    let name = if t.name.is_empty() { "<unnamed>" } else { t.name.as_str() };
    let dtype = DataType::from_onnx(t.data_type).map_err(|ty| bad(name, format!("unsupported element type {ty}")))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| bad(name, format!("negative dimension {d} in {:?}", t.dims)))?);
    }
    let n = checked_numel(&shape).ok_or_else(|| bad(name, format!("shape {shape:?} has too many elements")))?;
    let msg = |e: String| bad(name, e);

    if t.data_location == DATA_LOCATION_EXTERNAL {
        let bytes = read_external(t, name, base_dir)?;
        return Tensor::from_le_bytes(dtype, shape, &bytes).map_err(msg);
    }
    if !t.raw_data.is_empty() || n == 0 {
        return Tensor::from_le_bytes(dtype, shape, &t.raw_data).map_err(msg);
    }
    let count = |have: usize, field: &str| {
        if have == n {
            Ok(())
        } else {
            Err(bad(name, format!("shape {shape:?} needs {n} values, `{field}` holds {have}")))
        }
    };
    let data = match dtype {
        DataType::F32 => {
            count(t.float_data.len(), "float_data")?;
            Data::Float(t.float_data.iter().map(|&v| v as f64).collect())
        }
        DataType::F64 => {
            count(t.double_data.len(), "double_data")?;
            Data::Float(t.double_data.clone())
        }
        // float16, bfloat16 and fp8 travel as their bit patterns in int32_data.
        DataType::F16 | DataType::Bf16 | DataType::F8E4M3 | DataType::F8E5M2 => {
            count(t.int32_data.len(), "int32_data")?;
            Data::Float(
                t.int32_data
                    .iter()
                    .map(|&b| match dtype {
                        DataType::F16 => half::f16::from_bits(b as u16).to_f64(),
                        DataType::Bf16 => half::bf16::from_bits(b as u16).to_f64(),
                        _ => dtype.fp8_value(b as u8),
                    })
                    .collect(),
            )
        }
        DataType::I64 => {
            count(t.int64_data.len(), "int64_data")?;
            Data::Int(t.int64_data.iter().map(|&v| v as i128).collect())
        }
        DataType::U32 | DataType::U64 => {
            count(t.uint64_data.len(), "uint64_data")?;
            Data::Int(t.uint64_data.iter().map(|&v| dtype.wrap_int(v as i128)).collect())
        }
        _ => {
            count(t.int32_data.len(), "int32_data")?;
            Data::Int(t.int32_data.iter().map(|&v| dtype.wrap_int(v as i128)).collect())
        }
    };
    Tensor::new(dtype, shape, data).map_err(msg)
}

fn read_external(t: &TensorProto, name: &str, base_dir: Option<&Path>) -> Result<Vec<u8>, OnnxError> {
    let dir = base_dir.ok_or_else(|| bad(name, "external data, but the model was not loaded from a file"))?;
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for kv in &t.external_data {
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => {
                offset = kv.value.parse().map_err(|_| bad(name, format!("external data offset `{}`", kv.value)))?
            }
            "length" => {
                length = Some(
                    kv.value.parse::<u64>().map_err(|_| bad(name, format!("external data length `{}`", kv.value)))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| bad(name, "external data without a `location`"))?;
    let rel = Path::new(&location);
    // The data must live beside the model: no absolute paths, no `..`.
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(bad(name, format!("external data location `{location}` leaves the model's directory")));
    }
    let path = dir.join(rel);
    let bytes =
        std::fs::read(&path).map_err(|e| bad(name, format!("cannot read external data {}: {e}", path.display())))?;
    let start = usize::try_from(offset).map_err(|_| bad(name, "external data offset too large"))?;
    let end = match length {
        Some(l) => start.checked_add(l as usize).ok_or_else(|| bad(name, "external data range overflows"))?,
        None => bytes.len(),
    };
    bytes.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
        bad(
            name,
            format!("external data {}: bytes {start}..{end} requested, the file has {}", path.display(), bytes.len()),
        )
    })
}

/// A serialized `TensorProto` (the format of test data `.pb` files).
pub fn encode_tensor(name: &str, t: &Tensor) -> Vec<u8> {
    tensor_to_proto(name, t).encode_to_vec()
}

/// Encodes a tensor as a `TensorProto` with raw data (for tests and tools).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: t.dtype().onnx_code(),
        name: name.to_string(),
        raw_data: t.to_le_bytes(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;

    #[test]
    fn typed_fields_and_raw_data_agree() {
        let raw = tensor_to_proto("w", &Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap());
        let typed =
            TensorProto { dims: vec![2, 2], data_type: 1, float_data: vec![1.0, 2.0, 3.0, 4.0], ..Default::default() };
        assert_eq!(tensor_from_proto(&raw, None).unwrap(), tensor_from_proto(&typed, None).unwrap());
        let h = TensorProto { dims: vec![1], data_type: 10, int32_data: vec![0x3c00], ..Default::default() };
        assert_eq!(tensor_from_proto(&h, None).unwrap().to_f64_vec(), vec![1.0]);
    }

    #[test]
    fn malformed_tensors_are_named() {
        let short =
            TensorProto { name: "w".into(), dims: vec![3], data_type: 1, float_data: vec![1.0], ..Default::default() };
        let e = tensor_from_proto(&short, None).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("float_data"), "{e}");
        let s = TensorProto { name: "s".into(), dims: vec![1], data_type: 8, ..Default::default() };
        assert!(tensor_from_proto(&s, None).unwrap_err().to_string().contains("string"));
        let neg = TensorProto { name: "n".into(), dims: vec![-1], data_type: 1, ..Default::default() };
        assert!(tensor_from_proto(&neg, None).unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn external_data() {
        let dir = std::env::temp_dir().join(format!("ty-onnx-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = [0f32, 1.5, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join("w.bin"), [vec![9u8; 4], bytes].concat()).unwrap();
        let kv = |k: &str, v: &str| StringStringEntryProto { key: k.into(), value: v.into() };
        let mut t = TensorProto {
            name: "w".into(),
            dims: vec![3],
            data_type: 1,
            data_location: DATA_LOCATION_EXTERNAL,
            external_data: vec![kv("location", "w.bin"), kv("offset", "4"), kv("length", "12")],
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&t, Some(&dir)).unwrap().to_f64_vec(), vec![0.0, 1.5, 2.5]);
        t.external_data[0] = kv("location", "../etc/passwd");
        assert!(tensor_from_proto(&t, Some(&dir)).unwrap_err().to_string().contains("leaves"));
        t.external_data[0] = kv("location", "w.bin");
        t.external_data[2] = kv("length", "400");
        assert!(tensor_from_proto(&t, Some(&dir)).unwrap_err().to_string().contains("requested"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
