//! Pooling, normalizations, softmax, reductions, arg-reductions, cumulative sums, top-k.

use super::elementwise::broadcast_map;
use crate::graph::{numel, Data, Pool, PoolKind, ReduceKind, SoftmaxKind, Tensor, TensorType};

/// `(outer, len, inner)` of an axis.
fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape.get(axis).copied().unwrap_or(1), numel(&shape[(axis + 1).min(shape.len())..]))
}

fn coords(mut i: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        out[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
}

/// A row-major position within a plane of `shape`, counted column-major instead.
fn column_major(at: usize, shape: &[usize]) -> usize {
    let mut c = vec![0; shape.len()];
    coords(at, shape, &mut c);
    let (mut idx, mut stride) = (0, 1);
    for (d, &v) in c.iter().enumerate() {
        idx += v * stride;
        stride *= shape[d];
    }
    idx
}

const PAD: usize = usize::MAX - 1;
const OUT: usize = usize::MAX;

pub(crate) fn pool(p: &Pool, x: &Tensor, out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    let o = &out[0];
    let xs = x.shape();
    let sp_in = &xs[2..];
    let sp_out = &o.shape[2..];
    let nd = sp_in.len();
    let w = &p.window;
    let (kk, osz, isz) = (numel(&w.kernel), numel(sp_out), numel(sp_in));
    // For each (output position, kernel offset): the input position, PAD inside the
    // padding, OUT past it (ceil mode).
    let mut src = vec![OUT; osz * kk];
    let (mut kc, mut oc) = (vec![0; nd], vec![0; nd]);
    for oi in 0..osz {
        coords(oi, sp_out, &mut oc);
        for ki in 0..kk {
            coords(ki, &w.kernel, &mut kc);
            let (mut at, mut state) = (0usize, 0u8);
            for d in 0..nd {
                let pos = (oc[d] * w.strides[d] + kc[d] * w.dilations[d]) as isize - w.pads[d].0 as isize;
                if pos < 0 || pos >= sp_in[d] as isize {
                    let padded = pos >= -(w.pads[d].0 as isize) && pos < (sp_in[d] + w.pads[d].1) as isize;
                    state = state.max(if padded { 1 } else { 2 });
                } else {
                    at = at * sp_in[d] + pos as usize;
                }
            }
            src[oi * kk + ki] = match state {
                0 => at,
                1 => PAD,
                _ => OUT,
            };
        }
    }
    let planes = xs[0] * xs[1];
    let is_float = x.dtype().is_float();
    let xv = x.to_f64_vec();
    let mut vals = Vec::with_capacity(planes * osz);
    let mut idx = Vec::with_capacity(if p.with_indices { planes * osz } else { 0 });
    for pl in 0..planes {
        let plane = &xv[pl * isz..][..isz];
        for oi in 0..osz {
            let s = &src[oi * kk..][..kk];
            match p.kind {
                PoolKind::Max => {
                    // The first maximum wins, as in the reference.
                    let mut best: Option<(f64, usize)> = None;
                    for &q in s.iter().filter(|&&q| q < PAD) {
                        if best.is_none_or(|(b, _)| plane[q] > b) {
                            best = Some((plane[q], q));
                        }
                    }
                    let (v, at) = best.unwrap_or((f64::NEG_INFINITY, 0));
                    vals.push(v);
                    if p.with_indices {
                        let at = if p.column_major { column_major(at, sp_in) } else { at };
                        idx.push((pl * isz + at) as i128);
                    }
                }
                PoolKind::Average { count_include_pad } => {
                    let inside = s.iter().filter(|&&q| q < PAD);
                    let sum: f64 = inside.clone().map(|&q| plane[q]).sum();
                    let count =
                        if count_include_pad { s.iter().filter(|&&q| q != OUT).count() } else { inside.count() };
                    vals.push(if count == 0 { 0.0 } else { sum / count as f64 });
                }
                PoolKind::Lp(pw) => {
                    let sum: f64 = s.iter().filter(|&&q| q < PAD).map(|&q| plane[q].abs().powf(pw)).sum();
                    vals.push(sum.powf(1.0 / pw));
                }
            }
        }
    }
    let y = if is_float {
        Tensor::from_f64(o.dtype, o.shape.clone(), vals)?
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), vals.iter().map(|&v| v as i128).collect())?
    };
    let mut res = vec![y];
    if p.with_indices {
        res.push(Tensor::from_i128(out[1].dtype, out[1].shape.clone(), idx)?);
    }
    Ok(res)
}

pub(crate) fn global_pool(kind: PoolKind, x: &Tensor, o: &TensorType) -> Result<Tensor, String> {
    let xs = x.shape();
    let isz = numel(&xs[2..]);
    let xv = x.to_f64_vec();
    let v = (0..xs[0] * xs[1])
        .map(|pl| {
            let plane = &xv[pl * isz..][..isz];
            match kind {
                PoolKind::Max => plane.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                PoolKind::Average { .. } => plane.iter().sum::<f64>() / isz.max(1) as f64,
                PoolKind::Lp(p) => plane.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p),
            }
        })
        .collect();
    Tensor::from_f64(o.dtype, o.shape.clone(), v)
}

pub(crate) fn batch_norm(
    inputs: &[&Tensor],
    eps: f64,
    momentum: Option<f64>,
    out: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    let x = inputs[0];
    let p: Vec<Vec<f64>> = inputs[1..5].iter().map(|t| t.to_f64_vec()).collect();
    let (n, c, inner) = split_axis(x.shape(), 1);
    let xv = x.to_f64_vec();
    let (mean, var) = match momentum {
        None => (p[2].clone(), p[3].clone()),
        Some(_) => {
            // Batch statistics over every axis but the channels (population variance).
            let count = (n * inner).max(1) as f64;
            let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
            for (i, &a) in xv.iter().enumerate() {
                m[(i / inner.max(1)) % c.max(1)] += a / count;
            }
            for (i, &a) in xv.iter().enumerate() {
                let ch = (i / inner.max(1)) % c.max(1);
                v[ch] += (a - m[ch]).powi(2) / count;
            }
            (m, v)
        }
    };
    let y = xv
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let ch = (i / inner.max(1)) % c.max(1);
            (a - mean[ch]) / (var[ch] + eps).sqrt() * p[0][ch] + p[1][ch]
        })
        .collect();
    let mut res = vec![Tensor::from_f64(out[0].dtype, out[0].shape.clone(), y)?];
    if let (Some(mo), 3) = (momentum, out.len()) {
        let run =
            |old: &[f64], new: &[f64]| old.iter().zip(new).map(|(o, b)| o * mo + b * (1.0 - mo)).collect::<Vec<_>>();
        res.push(Tensor::from_f64(out[1].dtype, out[1].shape.clone(), run(&p[2], &mean))?);
        res.push(Tensor::from_f64(out[2].dtype, out[2].shape.clone(), run(&p[3], &var))?);
    }
    Ok(res)
}

/// LayerNormalization (or RMSNormalization with `rms`) over axes `axis..`.
pub(crate) fn layer_norm(
    inputs: &[&Tensor],
    axis: usize,
    eps: f64,
    rms: bool,
    out: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    let x = inputs[0];
    let norm_shape = &x.shape()[axis..];
    let cols = numel(norm_shape);
    let rows = numel(&x.shape()[..axis]);
    let scale = inputs[1].to_f64_vec();
    let smap = broadcast_map(norm_shape, inputs[1].shape());
    let bias = inputs.get(2).map(|b| (b.to_f64_vec(), broadcast_map(norm_shape, b.shape())));
    let xv = x.to_f64_vec();
    let (mut y, mut means, mut invs) =
        (Vec::with_capacity(xv.len()), Vec::with_capacity(rows), Vec::with_capacity(rows));
    for r in 0..rows {
        let row = &xv[r * cols..][..cols];
        let mean = if rms { 0.0 } else { row.iter().sum::<f64>() / cols.max(1) as f64 };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols.max(1) as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let mut t = (v - mean) * inv * scale[smap[j]];
            if let Some((b, m)) = &bias {
                t += b[m[j]];
            }
            y.push(t);
        }
        means.push(mean);
        invs.push(inv);
    }
    let mut res = vec![Tensor::from_f64(out[0].dtype, out[0].shape.clone(), y)?];
    if out.len() == 3 {
        res.push(Tensor::from_f64(out[1].dtype, out[1].shape.clone(), means)?);
        res.push(Tensor::from_f64(out[2].dtype, out[2].shape.clone(), invs)?);
    }
    Ok(res)
}

/// GroupNormalization with `groups`, or InstanceNormalization (`None`: one group per channel).
pub(crate) fn group_norm(
    inputs: &[&Tensor],
    groups: Option<usize>,
    eps: f64,
    o: &TensorType,
) -> Result<Tensor, String> {
    let x = inputs[0];
    let xs = x.shape();
    let (n, c) = (xs[0], xs[1]);
    let g = groups.unwrap_or(c).max(1);
    let sp = numel(&xs[2..]);
    let per = c / g * sp;
    let (scale, bias) = (inputs[1].to_f64_vec(), inputs[2].to_f64_vec());
    let xv = x.to_f64_vec();
    let mut y = vec![0.0; xv.len()];
    for blk in 0..n * g {
        let part = &xv[blk * per..][..per];
        let mean = part.iter().sum::<f64>() / per.max(1) as f64;
        let var = part.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / per.max(1) as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, &v) in part.iter().enumerate() {
            let ch = (blk % g) * (c / g) + j / sp.max(1);
            y[blk * per + j] = (v - mean) * inv * scale[ch] + bias[ch];
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}

pub(crate) fn lrn(x: &Tensor, size: usize, alpha: f64, beta: f64, bias: f64, o: &TensorType) -> Result<Tensor, String> {
    let (n, c, inner) = split_axis(x.shape(), 1);
    let xv = x.to_f64_vec();
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let mut y = vec![0.0; xv.len()];
    for b in 0..n {
        for ch in 0..c {
            let from = ch.saturating_sub(lo);
            let to = (ch + hi).min(c - 1);
            for i in 0..inner {
                let sq: f64 = (from..=to).map(|k| xv[(b * c + k) * inner + i].powi(2)).sum();
                let at = (b * c + ch) * inner + i;
                y[at] = xv[at] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}

pub(crate) fn lp_norm(x: &Tensor, axis: usize, p: i64, o: &TensorType) -> Result<Tensor, String> {
    let (outer, len, inner) = split_axis(x.shape(), axis);
    let xv = x.to_f64_vec();
    let mut y = vec![0.0; xv.len()];
    for a in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (a * len + k) * inner + i;
            let norm = if p == 1 {
                (0..len).map(|k| xv[at(k)].abs()).sum::<f64>()
            } else {
                (0..len).map(|k| xv[at(k)].powi(2)).sum::<f64>().sqrt()
            };
            for k in 0..len {
                y[at(k)] = if norm == 0.0 { 0.0 } else { xv[at(k)] / norm };
            }
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}

/// For each element, the flat index of its reduced position (keepdims shape).
fn reduce_map(shape: &[usize], axes: &[usize]) -> (Vec<usize>, usize) {
    let kept: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let n_out = numel(&kept);
    let mut map = Vec::with_capacity(numel(shape));
    let mut c = vec![0; shape.len()];
    for i in 0..numel(shape) {
        coords(i, shape, &mut c);
        let mut at = 0;
        for d in 0..shape.len() {
            at = at * kept[d] + if axes.contains(&d) { 0 } else { c[d] };
        }
        map.push(at);
    }
    (map, n_out)
}

pub(crate) fn mean_variance_norm(x: &Tensor, axes: &[usize], o: &TensorType) -> Result<Tensor, String> {
    let (map, n_out) = reduce_map(x.shape(), axes);
    let xv = x.to_f64_vec();
    let count = (xv.len() / n_out.max(1)).max(1) as f64;
    let (mut mean, mut var) = (vec![0.0; n_out], vec![0.0; n_out]);
    for (i, &v) in xv.iter().enumerate() {
        mean[map[i]] += v / count;
    }
    for (i, &v) in xv.iter().enumerate() {
        var[map[i]] += (v - mean[map[i]]).powi(2) / count;
    }
    let y = xv.iter().enumerate().map(|(i, &v)| (v - mean[map[i]]) / (var[map[i]].sqrt() + 1e-9)).collect();
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}

pub(crate) fn softmax(
    kind: SoftmaxKind,
    x: &Tensor,
    axis: usize,
    coerce: bool,
    o: &TensorType,
) -> Result<Tensor, String> {
    let shape = x.shape();
    let (outer, len, inner) = if shape.is_empty() {
        (1, 1, 1)
    } else if coerce {
        (numel(&shape[..axis]), numel(&shape[axis..]), 1)
    } else {
        split_axis(shape, axis)
    };
    let xv = x.to_f64_vec();
    let mut y = vec![0.0; xv.len()];
    for a in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (a * len + k) * inner + i;
            let max = (0..len).map(|k| xv[at(k)]).fold(f64::NEG_INFINITY, f64::max);
            match kind {
                SoftmaxKind::Hardmax => {
                    let first = (0..len).find(|&k| xv[at(k)] == max).unwrap_or(0);
                    for k in 0..len {
                        y[at(k)] = (k == first) as u8 as f64;
                    }
                }
                _ => {
                    let sum: f64 = (0..len).map(|k| (xv[at(k)] - max).exp()).sum();
                    for k in 0..len {
                        let z = xv[at(k)] - max;
                        y[at(k)] = if kind == SoftmaxKind::Softmax { z.exp() / sum } else { z - sum.ln() };
                    }
                }
            }
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}

pub(crate) fn reduce(kind: ReduceKind, x: &Tensor, axes: &[usize], o: &TensorType) -> Result<Tensor, String> {
    let (map, n_out) = reduce_map(x.shape(), axes);
    let count = x.len().checked_div(n_out).unwrap_or(0);
    use ReduceKind::*;
    if let (Data::Int(v), Sum | Prod | Max | Min | SumSquare | L1) = (x.data(), kind) {
        let init: i128 = match kind {
            Prod => 1,
            Max => x.dtype().int_range().map_or(i128::MIN, |r| r.0),
            Min => x.dtype().int_range().map_or(i128::MAX, |r| r.1),
            _ => 0,
        };
        let mut acc = vec![init; n_out];
        for (i, &a) in v.iter().enumerate() {
            let s = &mut acc[map[i]];
            *s = match kind {
                Sum => *s + a,
                Prod => o.dtype.wrap_int(s.wrapping_mul(a)),
                Max => (*s).max(a),
                Min => (*s).min(a),
                SumSquare => *s + a * a,
                _ => *s + a.abs(),
            };
        }
        return Tensor::from_i128(o.dtype, o.shape.clone(), acc);
    }
    let xv = x.to_f64_vec();
    let mut maxes = vec![f64::NEG_INFINITY; n_out];
    if kind == LogSumExp {
        for (i, &a) in xv.iter().enumerate() {
            maxes[map[i]] = maxes[map[i]].max(a);
        }
    }
    let init = match kind {
        Prod => 1.0,
        Max => f64::NEG_INFINITY,
        Min => f64::INFINITY,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    for (i, &a) in xv.iter().enumerate() {
        let j = map[i];
        let s = &mut acc[j];
        *s = match kind {
            Sum | Mean | LogSum => *s + a,
            Prod => *s * a,
            Max => {
                if a.is_nan() || s.is_nan() {
                    f64::NAN
                } else {
                    s.max(a)
                }
            }
            Min => {
                if a.is_nan() || s.is_nan() {
                    f64::NAN
                } else {
                    s.min(a)
                }
            }
            L1 => *s + a.abs(),
            L2 | SumSquare => *s + a * a,
            LogSumExp => *s + (a - maxes[j]).exp(),
        };
    }
    for (j, s) in acc.iter_mut().enumerate() {
        *s = match kind {
            Mean => *s / count as f64,
            L2 => s.sqrt(),
            LogSum => s.ln(),
            LogSumExp => {
                if maxes[j] == f64::NEG_INFINITY {
                    f64::NEG_INFINITY
                } else {
                    s.ln() + maxes[j]
                }
            }
            _ => *s,
        };
    }
    if o.dtype.is_float() {
        Tensor::from_f64(o.dtype, o.shape.clone(), acc)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), acc.iter().map(|&v| crate::graph::float_to_int(v)).collect())
    }
}

pub(crate) fn arg_reduce(x: &Tensor, max: bool, axis: usize, last: bool, o: &TensorType) -> Result<Tensor, String> {
    let (outer, len, inner) = split_axis(x.shape(), axis);
    let xv = x.to_f64_vec();
    let mut out = Vec::with_capacity(outer * inner);
    for a in 0..outer {
        for i in 0..inner {
            let mut best = 0usize;
            for k in 1..len {
                let (v, b) = (xv[(a * len + k) * inner + i], xv[(a * len + best) * inner + i]);
                let better = if max { v > b } else { v < b };
                if better || (last && v == b) {
                    best = k;
                }
            }
            out.push(best as i128);
        }
    }
    Tensor::from_i128(o.dtype, o.shape.clone(), out)
}

pub(crate) fn cum_sum(
    x: &Tensor,
    product: bool,
    axis: usize,
    exclusive: bool,
    reverse: bool,
    o: &TensorType,
) -> Result<Tensor, String> {
    let (outer, len, inner) = split_axis(x.shape(), axis);
    let order: Vec<usize> = if reverse { (0..len).rev().collect() } else { (0..len).collect() };
    match x.data() {
        Data::Float(v) => {
            let mut y = vec![0.0; v.len()];
            for a in 0..outer {
                for i in 0..inner {
                    let mut acc = if product { 1.0 } else { 0.0 };
                    for &k in &order {
                        let at = (a * len + k) * inner + i;
                        let next = if product { acc * v[at] } else { acc + v[at] };
                        y[at] = if exclusive { acc } else { next };
                        acc = next;
                    }
                }
            }
            Tensor::from_f64(o.dtype, o.shape.clone(), y)
        }
        Data::Int(v) => {
            let mut y = vec![0i128; v.len()];
            for a in 0..outer {
                for i in 0..inner {
                    let mut acc: i128 = if product { 1 } else { 0 };
                    for &k in &order {
                        let at = (a * len + k) * inner + i;
                        let next = o.dtype.wrap_int(if product { acc.wrapping_mul(v[at]) } else { acc + v[at] });
                        y[at] = if exclusive { acc } else { next };
                        acc = next;
                    }
                }
            }
            Tensor::from_i128(o.dtype, o.shape.clone(), y)
        }
    }
}

pub(crate) fn top_k(
    x: &Tensor,
    axis: usize,
    k: usize,
    largest: bool,
    out: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    let (outer, len, inner) = split_axis(x.shape(), axis);
    let xv = x.to_f64_vec();
    let (mut vals, mut idx) = (vec![0usize; outer * k * inner], vec![0i128; outer * k * inner]);
    for a in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (a * len + j) * inner + i;
            let mut order: Vec<usize> = (0..len).collect();
            order.sort_by(|&p, &q| {
                let (u, v) = (xv[at(p)], xv[at(q)]);
                let c = if largest { v.total_cmp(&u) } else { u.total_cmp(&v) };
                c.then(p.cmp(&q))
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                vals[(a * k + r) * inner + i] = at(j);
                idx[(a * k + r) * inner + i] = j as i128;
            }
        }
    }
    let values = match x.data() {
        Data::Float(v) => Tensor::from_f64(out[0].dtype, out[0].shape.clone(), vals.iter().map(|&p| v[p]).collect())?,
        Data::Int(v) => Tensor::from_i128(out[0].dtype, out[0].shape.clone(), vals.iter().map(|&p| v[p]).collect())?,
    };
    Ok(vec![values, Tensor::from_i128(out[1].dtype, out[1].shape.clone(), idx)?])
}
