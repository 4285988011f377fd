//! Data movement: every op here computes, for each output element, which input
//! element it copies (or a fill value), then gathers.

use super::elementwise::broadcast_map;
use crate::graph::{
    numel, strides_of, CoordinateMode, Data, NearestRounding, PadMode, Resize, ResizeMode, SliceAxis, Tensor,
    TensorType,
};

/// Output element i = input element `idx[i]`, or `fill` where `idx[i]` is `None`.
fn take(x: &Tensor, idx: impl Iterator<Item = Option<usize>>, fill: f64, o: &TensorType) -> Result<Tensor, String> {
    match x.data() {
        Data::Float(v) => Tensor::from_f64(o.dtype, o.shape.clone(), idx.map(|i| i.map_or(fill, |i| v[i])).collect()),
        Data::Int(v) => {
            let f = crate::graph::float_to_int(fill);
            Tensor::from_i128(o.dtype, o.shape.clone(), idx.map(|i| i.map_or(f, |i| v[i])).collect())
        }
    }
}

/// Iterates the coordinates of every element of `shape`, row-major.
fn for_each_coord(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let n = numel(shape);
    let mut c = vec![0usize; shape.len()];
    for _ in 0..n {
        f(&c);
        for d in (0..shape.len()).rev() {
            c[d] += 1;
            if c[d] < shape[d] {
                break;
            }
            c[d] = 0;
        }
    }
}

fn gather_coords(
    x: &Tensor,
    o: &TensorType,
    fill: f64,
    mut src: impl FnMut(&[usize]) -> Option<usize>,
) -> Result<Tensor, String> {
    let mut idx = Vec::with_capacity(o.numel());
    for_each_coord(&o.shape, |c| idx.push(src(c)));
    take(x, idx.into_iter(), fill, o)
}

pub(crate) fn transpose(x: &Tensor, perm: &[usize], o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    gather_coords(x, o, 0.0, |c| Some(c.iter().zip(perm).map(|(&v, &p)| v * st[p]).sum()))
}

pub(crate) fn concat(inputs: &[&Tensor], axis: usize, o: &TensorType) -> Result<Tensor, String> {
    let outer = numel(&o.shape[..axis]);
    let inner = numel(&o.shape[axis + 1..]);
    let mut parts: Vec<Tensor> = vec![];
    let mut data_f = vec![];
    let mut data_i = vec![];
    let float = o.dtype.is_float();
    for a in 0..outer {
        for t in inputs {
            let chunk = t.shape()[axis] * inner;
            match t.data() {
                Data::Float(v) => data_f.extend_from_slice(&v[a * chunk..][..chunk]),
                Data::Int(v) => data_i.extend_from_slice(&v[a * chunk..][..chunk]),
            }
        }
    }
    parts.clear();
    if float {
        Tensor::from_f64(o.dtype, o.shape.clone(), data_f)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), data_i)
    }
}

pub(crate) fn split(x: &Tensor, axis: usize, out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    let mut start = 0;
    let mut res = vec![];
    for o in out {
        let len = o.shape[axis];
        res.push(slice(x, &[SliceAxis { axis, start: start as i64, step: 1, len }], o)?);
        start += len;
    }
    Ok(res)
}

pub(crate) fn slice(x: &Tensor, axes: &[SliceAxis], o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    let mut start = vec![0i64; x.rank()];
    let mut step = vec![1i64; x.rank()];
    for a in axes {
        start[a.axis] = a.start;
        step[a.axis] = a.step;
    }
    gather_coords(x, o, 0.0, |c| {
        Some(c.iter().enumerate().map(|(d, &v)| (start[d] + v as i64 * step[d]) as usize * st[d]).sum())
    })
}

fn index(v: i128, len: usize, what: &str) -> Result<usize, String> {
    let i = if v < 0 { v + len as i128 } else { v };
    if i < 0 || i >= len as i128 {
        return Err(format!("{what} index {v} out of range for length {len}"));
    }
    Ok(i as usize)
}

pub(crate) fn gather(x: &Tensor, ind: &Tensor, axis: usize, o: &TensorType) -> Result<Tensor, String> {
    let xs = x.shape();
    let iv = ind.to_i128_vec();
    let idx: Vec<usize> = iv.iter().map(|&v| index(v, xs[axis], "Gather")).collect::<Result<_, _>>()?;
    let (outer, inner) = (numel(&xs[..axis]), numel(&xs[axis + 1..]));
    let mut src = Vec::with_capacity(o.numel());
    for a in 0..outer {
        for &i in &idx {
            for j in 0..inner {
                src.push(Some((a * xs[axis] + i) * inner + j));
            }
        }
    }
    take(x, src.into_iter(), 0.0, o)
}

pub(crate) fn gather_elements(x: &Tensor, ind: &Tensor, axis: usize, o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    let iv = ind.to_i128_vec();
    let mut src = Vec::with_capacity(o.numel());
    let mut k = 0;
    let mut err = None;
    for_each_coord(&o.shape, |c| {
        let mut at = 0;
        for (d, &v) in c.iter().enumerate() {
            let p = if d == axis {
                match index(iv[k], x.shape()[axis], "GatherElements") {
                    Ok(p) => p,
                    Err(e) => {
                        err.get_or_insert(e);
                        0
                    }
                }
            } else {
                v
            };
            if p >= x.shape()[d] {
                err.get_or_insert(format!("indices shape {:?} exceeds data {:?}", ind.shape(), x.shape()));
            }
            at += p * st[d];
        }
        src.push(Some(at));
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    take(x, src.into_iter(), 0.0, o)
}

pub(crate) fn gather_nd(x: &Tensor, ind: &Tensor, b: usize, o: &TensorType) -> Result<Tensor, String> {
    let xs = x.shape();
    let is = ind.shape();
    let q = is[is.len() - 1];
    let st = strides_of(xs);
    let slice_len = numel(&xs[b + q..]);
    let iv = ind.to_i128_vec();
    let groups = numel(&is[..is.len() - 1]);
    let per_batch = groups / numel(&is[..b]).max(1);
    let mut src = Vec::with_capacity(o.numel());
    for g in 0..groups {
        let batch = g / per_batch.max(1);
        let mut at = 0;
        // Batch coordinates of this group.
        let mut rem = batch;
        for d in (0..b).rev() {
            at += (rem % xs[d]) * st[d];
            rem /= xs[d];
        }
        for j in 0..q {
            at += index(iv[g * q + j], xs[b + j], "GatherND")? * st[b + j];
        }
        for s in 0..slice_len {
            src.push(Some(at + s));
        }
    }
    take(x, src.into_iter(), 0.0, o)
}

pub(crate) fn broadcast_to(x: &Tensor, o: &TensorType) -> Result<Tensor, String> {
    take(x, broadcast_map(&o.shape, x.shape()).into_iter().map(Some), 0.0, o)
}

pub(crate) fn tile(x: &Tensor, o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    let xs = x.shape().to_vec();
    gather_coords(x, o, 0.0, |c| Some(c.iter().enumerate().map(|(d, &v)| (v % xs[d].max(1)) * st[d]).sum()))
}

pub(crate) fn pad(
    x: &Tensor,
    mode: PadMode,
    pads: &[(i64, i64)],
    value: f64,
    o: &TensorType,
) -> Result<Tensor, String> {
    let xs = x.shape().to_vec();
    let st = strides_of(&xs);
    gather_coords(x, o, value, |c| {
        let mut at = 0;
        for (d, &v) in c.iter().enumerate() {
            let n = xs[d] as i64;
            let mut p = v as i64 - pads[d].0;
            if p < 0 || p >= n {
                p = match mode {
                    PadMode::Constant => return None,
                    PadMode::Edge => p.clamp(0, n - 1),
                    PadMode::Wrap => p.rem_euclid(n),
                    PadMode::Reflect => {
                        if n == 1 {
                            0
                        } else {
                            let period = 2 * (n - 1);
                            let m = p.rem_euclid(period);
                            if m < n {
                                m
                            } else {
                                period - m
                            }
                        }
                    }
                };
            }
            at += p as usize * st[d];
        }
        Some(at)
    })
}

/// Source positions and weights of one output index along one axis (`None`: the
/// extrapolation value).
type Taps = Option<Vec<(usize, f64)>>;

/// The input coordinate output index `out` maps to along one axis (ONNX Resize-19).
fn source_coord(r: &Resize, axis: usize, out: usize, in_len: usize, out_len: usize) -> f64 {
    let x = out as f64;
    let s = r.scales[axis];
    // ONNX uses the unrounded output length `in · scale` in these formulas.
    let width = in_len as f64 * s;
    let last = in_len as f64 - 1.0;
    match r.coordinate {
        CoordinateMode::HalfPixel => (x + 0.5) / s - 0.5,
        CoordinateMode::HalfPixelSymmetric => {
            let offset = in_len as f64 / 2.0 * (1.0 - out_len as f64 / width);
            offset + (x + 0.5) / s - 0.5
        }
        CoordinateMode::PytorchHalfPixel => {
            if width == 1.0 {
                -0.5
            } else {
                (x + 0.5) / s - 0.5
            }
        }
        CoordinateMode::AlignCorners => {
            if width == 1.0 {
                0.0
            } else {
                x * last / (width - 1.0)
            }
        }
        CoordinateMode::Asymmetric => x / s,
        CoordinateMode::TfCropAndResize => {
            let (a, b) = r.roi[axis];
            let span = if width == 1.0 { (b - a) * last / 2.0 } else { x * (b - a) * last / (width - 1.0) };
            span + a * last
        }
    }
}

/// Interpolation weights for fractional offset `ratio` ∈ (0, 1] of the taps
/// `floor .. floor + n` around the source coordinate.
fn coefficients(r: &Resize, ratio: f64, scale: f64) -> Vec<f64> {
    let cubic = |a: f64, x: f64| {
        let x = x.abs();
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    let normalized = |c: Vec<f64>| {
        let sum: f64 = c.iter().sum();
        c.into_iter().map(|v| v / sum).collect()
    };
    match r.mode {
        ResizeMode::Nearest(rounding) => {
            if ratio == 1.0 {
                return vec![0.0, 1.0];
            }
            let up = match rounding {
                NearestRounding::RoundPreferFloor => ratio > 0.5,
                NearestRounding::RoundPreferCeil => ratio >= 0.5,
                NearestRounding::Floor => false,
                NearestRounding::Ceil => true,
            };
            if up {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ResizeMode::Linear if r.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let n = 2 - 2 * start;
            normalized((start..start + n).map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0)).collect())
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic { a } if r.antialias => {
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            normalized((start..2 - start).map(|i| cubic(a, s * (i as f64 - ratio))).collect())
        }
        ResizeMode::Cubic { a } => {
            vec![cubic(a, ratio + 1.0), cubic(a, ratio), cubic(a, 1.0 - ratio), cubic(a, 2.0 - ratio)]
        }
    }
}

/// The taps of every output index along one axis.
pub(crate) fn axis_taps(r: &Resize, axis: usize, in_len: usize, out_len: usize) -> Vec<Taps> {
    (0..out_len)
        .map(|i| {
            let x = source_coord(r, axis, i, in_len, out_len);
            if r.coordinate == CoordinateMode::TfCropAndResize && (x < 0.0 || x > in_len as f64 - 1.0) {
                return None;
            }
            // The n nearest indices, ties to the smaller: for an integer x, x−n/2 .. x+n/2−1.
            let fl = x.floor();
            let ratio = if x == fl { 1.0 } else { x - fl };
            let mut coeffs = coefficients(r, ratio, r.scales[axis]);
            let n = coeffs.len() as i64;
            let first = (if x == fl { fl as i64 - 1 } else { fl as i64 }) - n / 2 + 1;
            if r.exclude_outside {
                for (k, c) in coeffs.iter_mut().enumerate() {
                    let idx = first + k as i64;
                    if idx < 0 || idx >= in_len as i64 {
                        *c = 0.0;
                    }
                }
                let sum: f64 = coeffs.iter().sum();
                coeffs.iter_mut().for_each(|c| *c /= sum);
            }
            let last = in_len as i64 - 1;
            Some(
                coeffs
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c != 0.0)
                    .map(|(k, &c)| ((first + k as i64).clamp(0, last.max(0)) as usize, c))
                    .collect(),
            )
        })
        .collect()
}

pub(crate) fn resize(x: &Tensor, r: &Resize, o: &TensorType) -> Result<Tensor, String> {
    let xs = x.shape().to_vec();
    let st = strides_of(&xs);
    if xs.iter().zip(&o.shape).any(|(&i, &n)| i == 0 && n > 0) {
        return Err(format!("cannot resize an empty axis of {xs:?} to {:?}", o.shape));
    }
    let taps: Vec<Vec<Taps>> = xs
        .iter()
        .zip(&o.shape)
        .enumerate()
        .map(|(d, (&n_in, &n_out))| {
            if n_in == n_out && r.scales[d] == 1.0 && r.coordinate != CoordinateMode::TfCropAndResize {
                (0..n_out).map(|i| Some(vec![(i, 1.0)])).collect()
            } else {
                axis_taps(r, d, n_in, n_out)
            }
        })
        .collect();
    let xv = x.to_f64_vec();
    let mut out = Vec::with_capacity(o.numel());
    for_each_coord(&o.shape, |c| {
        let mut acc = vec![(0usize, 1.0f64)];
        for (d, &i) in c.iter().enumerate() {
            match &taps[d][i] {
                None => {
                    acc.clear();
                    break;
                }
                Some(t) => {
                    let stride = st[d];
                    acc =
                        acc.iter().flat_map(|&(at, w)| t.iter().map(move |&(p, v)| (at + p * stride, w * v))).collect();
                }
            }
        }
        out.push(if acc.is_empty() { r.extrapolation_value } else { acc.iter().map(|&(p, w)| xv[p] * w).sum() });
    });
    if o.dtype.is_float() {
        Tensor::from_f64(o.dtype, o.shape.clone(), out)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), out.iter().map(|&v| v.round() as i128).collect())
    }
}

pub(crate) fn depth_to_space(x: &Tensor, b: usize, crd: bool, o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    let oc = o.shape[1];
    gather_coords(x, o, 0.0, |c| {
        let (n, ch, h, w) = (c[0], c[1], c[2], c[3]);
        let (bh, bw) = (h % b, w % b);
        let src_c = if crd { ch * b * b + bh * b + bw } else { (bh * b + bw) * oc + ch };
        Some(n * st[0] + src_c * st[1] + (h / b) * st[2] + (w / b) * st[3])
    })
}

pub(crate) fn space_to_depth(x: &Tensor, b: usize, o: &TensorType) -> Result<Tensor, String> {
    let st = strides_of(x.shape());
    let ic = x.shape()[1];
    gather_coords(x, o, 0.0, |c| {
        let (n, ch, h, w) = (c[0], c[1], c[2], c[3]);
        let (blk, src_c) = (ch / ic, ch % ic);
        let (bh, bw) = (blk / b, blk % b);
        Some(n * st[0] + src_c * st[1] + (h * b + bh) * st[2] + (w * b + bw) * st[3])
    })
}

pub(crate) fn trilu(x: &Tensor, upper: bool, k: i64, o: &TensorType) -> Result<Tensor, String> {
    let r = x.rank();
    let mut i = 0usize;
    gather_coords(x, o, 0.0, |c| {
        let (row, col) = (c[r - 2] as i64, c[r - 1] as i64);
        let keep = if upper { col - row >= k } else { col - row <= k };
        i += 1;
        keep.then_some(i - 1)
    })
}

pub(crate) fn one_hot(
    x: &Tensor,
    axis: usize,
    depth: i64,
    off: f64,
    on: f64,
    o: &TensorType,
) -> Result<Tensor, String> {
    let iv = x.to_i128_vec();
    let (outer, inner) = (numel(&x.shape()[..axis]), numel(&x.shape()[axis..]));
    let d = depth as usize;
    let mut v = vec![off; outer * d * inner];
    for a in 0..outer {
        for i in 0..inner {
            let mut k = iv[a * inner + i];
            if k < 0 {
                k += depth as i128;
            }
            if k >= 0 && k < depth as i128 {
                v[(a * d + k as usize) * inner + i] = on;
            }
        }
    }
    if o.dtype.is_float() {
        Tensor::from_f64(o.dtype, o.shape.clone(), v)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), v.iter().map(|&f| f as i128).collect())
    }
}
