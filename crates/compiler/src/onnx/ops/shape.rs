//! Shape and data-movement ops, and the ops that become constants on import.

use crate::graph::{
    numel, CoordinateMode, DataType, NearestRounding, Op, PadMode, Resize, ResizeMode, SliceAxis, Tensor,
};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

fn shape_arg(c: &Ctx, i: usize, what: &str) -> PResult<Vec<i64>> {
    c.req(i, what)?;
    Ok(c.ints_input(i)?.unwrap_or_default())
}

pub(super) fn reshape(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?.clone();
    let spec = if c.version < 5 { c.ints("shape")?.unwrap_or_default() } else { shape_arg(c, 1, "shape")? };
    let allow_zero = c.version >= 14 && c.flag("allowzero", false)?;
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                shape.push(1);
            }
            0 if !allow_zero => shape.push(
                *x.shape
                    .get(i)
                    .ok_or_else(|| c.type_err(format!("shape {spec:?} copies axis {i}, {:?} has none", x.shape)))?,
            ),
            d if d >= 0 => shape.push(d as usize),
            _ => return Err(c.type_err(format!("bad shape {spec:?} for input {:?}", x.shape))),
        }
    }
    if let Some(i) = infer_at {
        let rest: usize = shape.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &d)| d).product();
        if rest == 0 || x.numel() % rest != 0 {
            return Err(c.type_err(format!("cannot reshape {:?} to {spec:?}", x.shape)));
        }
        shape[i] = x.numel() / rest;
    }
    Ok(Parsed::op(Op::Reshape { shape }, vec![0]))
}

pub(super) fn flatten(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let r = x.rank() as i64;
    let axis = c.int("axis", 1)?;
    if axis < -r || axis > r {
        return Err(c.attr_err("axis", format!("{axis} out of range for rank {r}")));
    }
    let axis = if axis < 0 { (axis + r) as usize } else { axis as usize };
    let shape = vec![numel(&x.shape[..axis]), numel(&x.shape[axis..])];
    Ok(Parsed::op(Op::Reshape { shape }, vec![0]))
}

pub(super) fn squeeze(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let axes = if c.version < 13 { c.ints("axes")? } else { c.ints_input(1)? };
    let axes = match axes {
        Some(a) => c.axes("axes", &a, x.rank())?,
        None => (0..x.rank()).filter(|&i| x.shape[i] == 1).collect(),
    };
    if let Some(&a) = axes.iter().find(|&&a| x.shape[a] != 1) {
        return Err(c.type_err(format!("cannot squeeze axis {a} of {:?}: its length is not 1", x.shape)));
    }
    let shape = x.shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    Ok(Parsed::op(Op::Reshape { shape }, vec![0]))
}

pub(super) fn unsqueeze(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let axes = if c.version < 13 { c.ints("axes")?.unwrap_or_default() } else { shape_arg(c, 1, "axes")? };
    let rank = x.rank() + axes.len();
    let axes = c.axes("axes", &axes, rank)?;
    let mut dims = x.shape.iter();
    let shape = (0..rank).map(|i| if axes.contains(&i) { 1 } else { dims.next().copied().unwrap_or(1) }).collect();
    Ok(Parsed::op(Op::Reshape { shape }, vec![0]))
}

pub(super) fn transpose(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let perm = match c.ints("perm")? {
        Some(p) => p.iter().map(|&v| c.axis("perm", v, x.rank())).collect::<PResult<Vec<_>>>()?,
        None => (0..x.rank()).rev().collect(),
    };
    Ok(Parsed::op(Op::Transpose { perm }, vec![0]))
}

pub(super) fn concat(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "inputs")?;
    for i in 1..c.n_inputs() {
        c.req(i, "inputs")?;
    }
    let axis = if c.version < 4 { c.int("axis", 1)? } else { c.int_req("axis")? };
    let axis = c.axis("axis", axis, x.rank())?;
    Ok(Parsed::op(Op::Concat { axis }, (0..c.n_inputs()).collect()))
}

pub(super) fn split(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let axis = c.axis("axis", c.int("axis", 0)?, x.rank())?;
    let dim = x.shape[axis];
    let outputs = c.node.output.len().max(1);
    let given = if c.version < 13 { c.ints("split")? } else { c.ints_input(1)? };
    let sizes: Vec<usize> = match given {
        Some(s) => {
            if s.iter().any(|&v| v < 0) || s.len() != outputs {
                return Err(c.type_err(format!("split {s:?} must give {outputs} non-negative lengths")));
            }
            s.iter().map(|&v| v as usize).collect()
        }
        None if c.version >= 18 => {
            let n = c.int_req("num_outputs")?;
            if n < 1 || n as usize != outputs {
                return Err(c.attr_err("num_outputs", format!("is {n}, the node has {outputs} outputs")));
            }
            let chunk = dim.div_ceil(outputs);
            (0..outputs).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
        }
        None => {
            if dim % outputs != 0 {
                return Err(c.type_err(format!("axis {axis} of {:?} does not split evenly into {outputs}", x.shape)));
            }
            vec![dim / outputs; outputs]
        }
    };
    Ok(Parsed::op(Op::Split { axis, sizes }, vec![0]))
}

pub(super) fn slice(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let (starts, ends, axes, steps) = if c.version < 10 {
        (c.ints("starts")?.unwrap_or_default(), c.ints("ends")?.unwrap_or_default(), c.ints("axes")?, None)
    } else {
        (shape_arg(c, 1, "starts")?, shape_arg(c, 2, "ends")?, c.ints_input(3)?, c.ints_input(4)?)
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(
            c.type_err(format!("starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?} differ in length"))
        );
    }
    let norm = c.axes("axes", &axes, x.rank())?;
    let mut out = vec![];
    for i in 0..n {
        let axis = c.axis("axes", axes[i], x.rank())?;
        let dim = x.shape[axis] as i128;
        let step = steps[i] as i128;
        if step == 0 {
            return Err(c.type_err("slice step 0"));
        }
        let (mut s, mut e) = (starts[i] as i128, ends[i] as i128);
        if s < 0 {
            s += dim;
        }
        if e < 0 {
            e += dim;
        }
        let len = if step > 0 {
            s = s.clamp(0, dim);
            e = e.clamp(0, dim);
            if e > s {
                (e - s + step - 1) / step
            } else {
                0
            }
        } else {
            s = s.clamp(0, (dim - 1).max(0));
            e = e.clamp(-1, dim - 1);
            if s > e {
                (s - e + (-step) - 1) / (-step)
            } else {
                0
            }
        };
        out.push(SliceAxis { axis, start: s as i64, step: step as i64, len: len as usize });
    }
    debug_assert_eq!(norm.len(), out.len());
    Ok(Parsed::op(Op::Slice { axes: out }, vec![0]))
}

pub(super) fn gather(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    c.req(1, "indices")?;
    let axis = c.axis("axis", c.int("axis", 0)?, x.rank())?;
    Ok(Parsed::op(Op::Gather { axis }, vec![0, 1]))
}

pub(super) fn gather_elements(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    c.req(1, "indices")?;
    let axis = c.axis("axis", c.int("axis", 0)?, x.rank())?;
    Ok(Parsed::op(Op::GatherElements { axis }, vec![0, 1]))
}

pub(super) fn gather_nd(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "data")?;
    c.req(1, "indices")?;
    let b = c.int("batch_dims", 0)?;
    if b < 0 {
        return Err(c.attr_err("batch_dims", "negative"));
    }
    Ok(Parsed::op(Op::GatherNd { batch_dims: b as usize }, vec![0, 1]))
}

fn non_negative(c: &Ctx, v: &[i64], what: &str) -> PResult<Vec<usize>> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| c.type_err(format!("{what} {v:?} has a negative entry"))))
        .collect()
}

pub(super) fn expand(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let shape = non_negative(c, &shape_arg(c, 1, "shape")?, "shape")?;
    Ok(Parsed::op(Op::Expand { shape }, vec![0]))
}

pub(super) fn tile(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let repeats = non_negative(c, &shape_arg(c, 1, "repeats")?, "repeats")?;
    Ok(Parsed::op(Op::Tile { repeats }, vec![0]))
}

fn i64_tensor(c: &Ctx, shape: Vec<usize>, v: Vec<i128>) -> PResult<Tensor> {
    Tensor::from_i128(DataType::I64, shape, v).map_err(|e| c.type_err(e))
}

pub(super) fn shape(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(c.int("start", 0)?), clamp(c.int("end", r)?));
    let dims: Vec<i128> = if s < e { x.shape[s..e].iter().map(|&d| d as i128).collect() } else { vec![] };
    Ok(Parsed::Constants(vec![i64_tensor(c, vec![dims.len()], dims)?]))
}

pub(super) fn size(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    Ok(Parsed::Constants(vec![i64_tensor(c, vec![], vec![x.numel() as i128])?]))
}

pub(super) fn constant(c: &Ctx) -> PResult<Parsed> {
    let t = if let Some(t) = c.tensor("value")? {
        t
    } else if c.has("value_float") {
        Tensor::scalar(DataType::F32, c.float("value_float", 0.0)?)
    } else if let Some(v) = c.floats("value_floats")? {
        Tensor::from_f64(DataType::F32, vec![v.len()], v).map_err(|e| c.type_err(e))?
    } else if c.has("value_int") {
        i64_tensor(c, vec![], vec![c.int("value_int", 0)? as i128])?
    } else if let Some(v) = c.ints("value_ints")? {
        i64_tensor(c, vec![v.len()], v.iter().map(|&x| x as i128).collect())?
    } else if c.has("sparse_value") || c.has("value_string") || c.has("value_strings") {
        return Err(c.unsupported("sparse or string constants"));
    } else {
        return Err(c.attr_err("value", "a Constant needs one of value, value_float(s), value_int(s)"));
    };
    Ok(Parsed::Constants(vec![t]))
}

pub(super) fn constant_of_shape(c: &Ctx) -> PResult<Parsed> {
    let shape = non_negative(c, &shape_arg(c, 0, "input")?, "shape")?;
    let value = c.tensor("value")?.unwrap_or_else(|| Tensor::scalar(DataType::F32, 0.0));
    if value.len() != 1 {
        return Err(c.attr_err("value", format!("must hold one element, got {value:?}")));
    }
    let n = crate::graph::checked_numel(&shape)
        .filter(|&n| n <= crate::graph::infer::MAX_ELEMENTS)
        .ok_or_else(|| c.type_err(format!("shape {shape:?} too large")))?;
    let t = match value.data() {
        crate::graph::Data::Float(v) => Tensor::from_f64(value.dtype(), shape, vec![v[0]; n]),
        crate::graph::Data::Int(v) => Tensor::from_i128(value.dtype(), shape, vec![v[0]; n]),
    }
    .map_err(|e| c.type_err(e))?;
    Ok(Parsed::Constants(vec![t]))
}

pub(super) fn range(c: &Ctx) -> PResult<Parsed> {
    let get = |i: usize, what: &str| -> PResult<std::sync::Arc<Tensor>> {
        c.req(i, what)?;
        let t = c.value(i)?.ok_or_else(|| c.type_err(format!("{what} missing")))?;
        if t.len() != 1 {
            return Err(c.type_err(format!("{what} must be a scalar, got {t:?}")));
        }
        Ok(t)
    };
    let (start, limit, delta) = (get(0, "start")?, get(1, "limit")?, get(2, "delta")?);
    let dt = start.dtype();
    if limit.dtype() != dt || delta.dtype() != dt {
        return Err(c.type_err("start, limit and delta differ in type"));
    }
    let t = if dt.is_float() {
        let (s, l, d) = (start.to_f64_vec()[0], limit.to_f64_vec()[0], delta.to_f64_vec()[0]);
        if d == 0.0 || !d.is_finite() {
            return Err(c.type_err(format!("delta {d} is not a usable step")));
        }
        let n = ((l - s) / d).ceil().max(0.0);
        if n > 1e9 {
            return Err(c.type_err(format!("range of {n} elements")));
        }
        Tensor::from_f64(dt, vec![n as usize], (0..n as usize).map(|i| s + i as f64 * d).collect())
    } else {
        let (s, l, d) = (start.to_i128_vec()[0], limit.to_i128_vec()[0], delta.to_i128_vec()[0]);
        if d == 0 {
            return Err(c.type_err("delta is 0"));
        }
        let diff = l - s;
        let mut n = diff / d;
        if diff % d != 0 && ((diff < 0) == (d < 0)) {
            n += 1;
        }
        let n = n.max(0);
        if n > 1_000_000_000 {
            return Err(c.type_err(format!("range of {n} elements")));
        }
        Tensor::from_i128(dt, vec![n as usize], (0..n).map(|i| s + i * d).collect())
    }
    .map_err(|e| c.type_err(e))?;
    Ok(Parsed::Constants(vec![t]))
}

pub(super) fn eye_like(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    if x.rank() != 2 {
        return Err(c.type_err(format!("EyeLike needs a 2-D input, got {:?}", x.shape)));
    }
    let dt = if c.has("dtype") { c.dtype_attr("dtype", c.int("dtype", 1)?)? } else { x.dtype };
    let k = c.int("k", 0)?;
    let (r, cols) = (x.shape[0], x.shape[1]);
    let one = |i: usize, j: usize| j as i64 - i as i64 == k;
    let t = if dt.is_float() {
        Tensor::from_f64(
            dt,
            x.shape.clone(),
            (0..r * cols).map(|p| one(p / cols.max(1), p % cols.max(1)) as u8 as f64).collect(),
        )
    } else {
        Tensor::from_i128(
            dt,
            x.shape.clone(),
            (0..r * cols).map(|p| one(p / cols.max(1), p % cols.max(1)) as i128).collect(),
        )
    }
    .map_err(|e| c.type_err(e))?;
    Ok(Parsed::Constants(vec![t]))
}

pub(super) fn pad(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let mode = match c.string("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" if c.version >= 19 => PadMode::Wrap,
        other => return Err(c.attr_err("mode", format!("unknown mode `{other}`"))),
    };
    let (raw, value, axes) = if c.version < 11 {
        let p = c.ints(if c.version < 2 { "paddings" } else { "pads" })?.unwrap_or_default();
        (p, c.float("value", 0.0)?, None)
    } else {
        let v = match c.value(2)? {
            Some(t) if t.len() == 1 => t.to_f64_vec()[0],
            Some(t) if t.is_empty() => 0.0,
            Some(t) => return Err(c.type_err(format!("constant_value must be a scalar, got {t:?}"))),
            None => 0.0,
        };
        (shape_arg(c, 1, "pads")?, v, c.ints_input(3)?)
    };
    let axes = match axes {
        Some(a) => a.iter().map(|&v| c.axis("axes", v, x.rank())).collect::<PResult<Vec<_>>>()?,
        None => (0..x.rank()).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(c.type_err(format!("pads {raw:?} must have {} entries", 2 * axes.len())));
    }
    let mut pads = vec![(0i64, 0i64); x.rank()];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = (raw[i], raw[i + axes.len()]);
    }
    Ok(Parsed::op(Op::Pad { mode, pads, value }, vec![0]))
}

fn floats_input(c: &Ctx, i: usize) -> PResult<Option<Vec<f64>>> {
    Ok(c.value(i)?.filter(|t| !t.is_empty()).map(|t| t.to_f64_vec()))
}

pub(super) fn resize(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "X")?.clone();
    let r = x.rank();
    let mode_name = c.string("mode", "nearest")?;
    let nearest = match c.string("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => NearestRounding::RoundPreferFloor,
        "round_prefer_ceil" => NearestRounding::RoundPreferCeil,
        "floor" => NearestRounding::Floor,
        "ceil" => NearestRounding::Ceil,
        other => return Err(c.attr_err("nearest_mode", format!("unknown value `{other}`"))),
    };
    let mode = match mode_name.as_str() {
        "nearest" => ResizeMode::Nearest(if c.version < 11 { NearestRounding::Floor } else { nearest }),
        "linear" | "bilinear" | "trilinear" => ResizeMode::Linear,
        "cubic" => ResizeMode::Cubic { a: c.float("cubic_coeff_a", -0.75)? },
        other => return Err(c.attr_err("mode", format!("unknown value `{other}`"))),
    };
    let coordinate = if c.version < 11 {
        CoordinateMode::Asymmetric
    } else {
        match c.string("coordinate_transformation_mode", "half_pixel")?.as_str() {
            "half_pixel" => CoordinateMode::HalfPixel,
            "half_pixel_symmetric" => CoordinateMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordinateMode::PytorchHalfPixel,
            "align_corners" => CoordinateMode::AlignCorners,
            "asymmetric" => CoordinateMode::Asymmetric,
            "tf_crop_and_resize" => CoordinateMode::TfCropAndResize,
            "tf_half_pixel_for_nn" => {
                return Err(c.unsupported("coordinate_transformation_mode `tf_half_pixel_for_nn`"))
            }
            other => return Err(c.attr_err("coordinate_transformation_mode", format!("unknown value `{other}`"))),
        }
    };
    let axes: Vec<usize> = match c.ints("axes")? {
        Some(a) if c.version >= 18 => a.iter().map(|&v| c.axis("axes", v, r)).collect::<PResult<_>>()?,
        _ => (0..r).collect(),
    };
    let (scales, sizes, roi) = if c.version < 11 {
        (floats_input(c, 1)?, None, None)
    } else {
        (floats_input(c, 2)?, c.ints_input(3)?.filter(|s| !s.is_empty()), floats_input(c, 1)?)
    };
    let mut roi_full = vec![(0.0, 1.0); r];
    if let Some(roi) = roi {
        if coordinate == CoordinateMode::TfCropAndResize {
            if roi.len() != 2 * axes.len() {
                return Err(c.type_err(format!("roi {roi:?} must have {} entries", 2 * axes.len())));
            }
            for (i, &a) in axes.iter().enumerate() {
                roi_full[a] = (roi[i], roi[i + axes.len()]);
            }
        }
    }
    let mut out_scales = vec![1.0; r];
    let mut out = x.shape.clone();
    match (scales, sizes) {
        (Some(s), None) => {
            if s.len() != axes.len() || s.iter().any(|&v| v.is_nan() || v <= 0.0) {
                return Err(c.type_err(format!("scales {s:?} must be {} positive values", axes.len())));
            }
            for (i, &a) in axes.iter().enumerate() {
                out_scales[a] = s[i];
                let crop = roi_full[a].1 - roi_full[a].0;
                out[a] = (x.shape[a] as f64 * crop * s[i]).floor() as usize;
            }
        }
        (None, Some(z)) => {
            if z.len() != axes.len() || z.iter().any(|&v| v < 0) {
                return Err(c.type_err(format!("sizes {z:?} must be {} non-negative values", axes.len())));
            }
            let policy =
                if c.version >= 18 { c.string("keep_aspect_ratio_policy", "stretch")? } else { "stretch".into() };
            let ratio = |i: usize| z[i] as f64 / x.shape[axes[i]].max(1) as f64;
            let common = match policy.as_str() {
                "stretch" => None,
                "not_larger" => Some((0..axes.len()).map(ratio).fold(f64::INFINITY, f64::min)),
                "not_smaller" => Some((0..axes.len()).map(ratio).fold(0.0, f64::max)),
                other => return Err(c.attr_err("keep_aspect_ratio_policy", format!("unknown value `{other}`"))),
            };
            for (i, &a) in axes.iter().enumerate() {
                match common {
                    None => {
                        out_scales[a] = ratio(i);
                        out[a] = z[i] as usize;
                    }
                    Some(s) => {
                        out_scales[a] = s;
                        out[a] = (x.shape[a] as f64 * s + 0.5).floor() as usize;
                    }
                }
            }
        }
        (Some(_), Some(_)) => return Err(c.type_err("give scales or sizes, not both")),
        (None, None) => return Err(c.type_err("Resize needs scales or sizes")),
    }
    let op = Op::Resize(Resize {
        sizes: out,
        mode,
        coordinate,
        scales: out_scales,
        roi: roi_full,
        extrapolation_value: c.float("extrapolation_value", 0.0)?,
        exclude_outside: c.version >= 11 && c.flag("exclude_outside", false)?,
        antialias: c.version >= 18 && c.flag("antialias", false)?,
    });
    Ok(Parsed::op(op, vec![0]))
}

pub(super) fn upsample(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "X")?;
    let scales =
        if c.version < 9 { c.floats("scales")?.unwrap_or_default() } else { floats_input(c, 1)?.unwrap_or_default() };
    if scales.len() != x.rank() || scales.iter().any(|&v| v.is_nan() || v < 1.0) {
        return Err(c.type_err(format!("scales {scales:?} must be {} values ≥ 1", x.rank())));
    }
    let mode = match c.string("mode", "nearest")?.as_str() {
        "nearest" => ResizeMode::Nearest(NearestRounding::Floor),
        "linear" | "bilinear" => ResizeMode::Linear,
        other => return Err(c.attr_err("mode", format!("unknown value `{other}`"))),
    };
    let sizes = x.shape.iter().zip(&scales).map(|(&d, &s)| (d as f64 * s).floor() as usize).collect();
    let op = Op::Resize(Resize {
        sizes,
        mode,
        coordinate: CoordinateMode::Asymmetric,
        roi: vec![(0.0, 1.0); scales.len()],
        scales,
        extrapolation_value: 0.0,
        exclude_outside: false,
        antialias: false,
    });
    Ok(Parsed::op(op, vec![0]))
}

fn block(c: &Ctx) -> PResult<usize> {
    let b = c.int_req("blocksize")?;
    if b < 1 {
        return Err(c.attr_err("blocksize", format!("must be ≥ 1, got {b}")));
    }
    Ok(b as usize)
}

pub(super) fn depth_to_space(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let crd = match c.string("mode", "DCR")?.as_str() {
        "DCR" => false,
        "CRD" => true,
        other => return Err(c.attr_err("mode", format!("must be DCR or CRD, got `{other}`"))),
    };
    Ok(Parsed::op(Op::DepthToSpace { block: block(c)?, crd }, vec![0]))
}

pub(super) fn space_to_depth(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    Ok(Parsed::op(Op::SpaceToDepth { block: block(c)? }, vec![0]))
}

pub(super) fn trilu(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let k = match c.ints_input(1)? {
        None => 0,
        Some(v) if v.len() == 1 => v[0],
        Some(v) => return Err(c.type_err(format!("k must be a scalar, got {v:?}"))),
    };
    Ok(Parsed::op(Op::Trilu { upper: c.flag("upper", true)?, k }, vec![0]))
}

pub(super) fn one_hot(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "indices")?;
    c.req(1, "depth")?;
    c.req(2, "values")?;
    let depth = c.value(1)?.map(|t| t.to_f64_vec()).unwrap_or_default();
    let [depth] = depth[..] else { return Err(c.type_err(format!("depth must hold one value, got {depth:?}"))) };
    let values = c.value(2)?.ok_or_else(|| c.type_err("values missing"))?;
    if values.len() != 2 {
        return Err(c.type_err(format!("values must be [off, on], got {values:?}")));
    }
    let v = values.to_f64_vec();
    let axis = c.axis("axis", c.int("axis", -1)?, x.rank() + 1)?;
    let op = Op::OneHot { axis, depth: depth as i64, off: v[0], on: v[1], dtype: values.dtype() };
    Ok(Parsed::op(op, vec![0]))
}
