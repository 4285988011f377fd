//! Hugging Face `.safetensors` files.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use trainyard_arch::DType;

use crate::tensor::{ElemType, HostTensor, RawArray};
use crate::RuntimeError;

fn st_error(path: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Safetensors { path: path.to_path_buf(), message: message.into() }
}

fn elem_type(path: &Path, name: &str, d: Dtype) -> Result<ElemType, RuntimeError> {
    Ok(match d {
        Dtype::BOOL => ElemType::Bool,
        Dtype::U8 => ElemType::Dev(DType::U8),
        Dtype::I8 => ElemType::Dev(DType::I8),
        Dtype::F8_E4M3 => ElemType::Dev(DType::F8E4M3),
        Dtype::F8_E5M2 => ElemType::Dev(DType::F8E5M2),
        Dtype::I16 => ElemType::Dev(DType::I16),
        Dtype::U16 => ElemType::Dev(DType::U16),
        Dtype::F16 => ElemType::Dev(DType::F16),
        Dtype::BF16 => ElemType::Dev(DType::Bf16),
        Dtype::I32 => ElemType::Dev(DType::I32),
        Dtype::U32 => ElemType::Dev(DType::U32),
        Dtype::F32 => ElemType::Dev(DType::F32),
        Dtype::F64 => ElemType::F64,
        Dtype::I64 => ElemType::I64,
        Dtype::U64 => ElemType::U64,
        other => return Err(st_error(path, format!("tensor `{name}`: unsupported dtype {other:?}"))),
    })
}

/// Every tensor of a file as read, sorted by name.
pub(crate) fn read_safetensors_raw(path: &Path) -> Result<Vec<(String, RawArray)>, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_error(path, e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let elem = elem_type(path, &name, view.dtype())?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        out.push((name, RawArray { elem, shape, data: view.data().to_vec() }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One tensor of a file by name; the error lists the names the file holds.
pub(crate) fn read_safetensors_one(path: &Path, key: &str) -> Result<RawArray, RuntimeError> {
    let all = read_safetensors_raw(path)?;
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    all.into_iter().find(|(n, _)| n == key).map(|(_, a)| a).ok_or_else(|| RuntimeError::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
        available: if names.is_empty() { "nothing".into() } else { names.join(", ") },
    })
}

/// Reads every tensor of a `.safetensors` file, sorted by name.
///
/// bf16, f16, fp8, f32 and the 8/16/32-bit integers keep their dtype; float64
/// rounds to f32 (nearest even), int64/uint64 become i32/u32 when every value
/// fits (an error names the first that does not), bool becomes u8.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
    read_safetensors_raw(path)?
        .into_iter()
        .map(|(name, raw)| {
            let what = format!("{}:{name}", path.display());
            raw.into_host(&what).map(|t| (name, t))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A safetensors file with `w` (bf16 [2,2]), `b` (f32 [2]) and `ids` (i64 [3]).
    pub(crate) fn sample_file(path: &Path) {
        let w: Vec<u8> =
            [1.0f32, -2.0, 0.5, 3.0].iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
        let b: Vec<u8> = [0.25f32, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids: Vec<u8> = [0i64, 7, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            ("w", TensorView::new(Dtype::BF16, vec![2, 2], &w).unwrap()),
            ("b", TensorView::new(Dtype::F32, vec![2], &b).unwrap()),
            ("ids", TensorView::new(Dtype::I64, vec![3], &ids).unwrap()),
        ];
        std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    }

    #[test]
    fn reads_every_tensor() {
        let dir = std::env::temp_dir().join(format!("trainyard-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        sample_file(&p);
        let all = read_safetensors(&p).unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "ids", "w"]);
        assert_eq!(all[2].1.dtype, DType::Bf16);
        assert_eq!(all[2].1.shape, vec![2, 2]);
        assert_eq!(all[2].1.to_f32(), vec![1.0, -2.0, 0.5, 3.0]);
        assert_eq!(all[1].1.dtype, DType::I32);
        assert_eq!(all[1].1.to_f32(), vec![0.0, 7.0, 2.0]);
        let e = read_safetensors_one(&p, "nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("b, ids, w") && e.contains("m.safetensors"), "{e}");

        std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("safetensors"), "{e}");
        std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
        assert!(read_safetensors(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
