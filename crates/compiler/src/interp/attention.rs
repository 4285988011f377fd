//! Attention and rotary embeddings, as the ONNX reference computes them.

use super::elementwise::broadcast_map;
use crate::graph::infer_attention::attention_dims;
use crate::graph::{Attention, Data, Tensor, TensorType};

/// Values of a Q/K/V tensor as `[B][H][S][d]`, flattened (unpacking 3-D inputs).
fn to_bhsd(t: &Tensor, dims: [usize; 4], packed: bool) -> Vec<f64> {
    let v = t.to_f64_vec();
    if !packed {
        return v;
    }
    let [b, h, s, d] = dims;
    let mut out = vec![0.0; v.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                for di in 0..d {
                    out[((bi * h + hi) * s + si) * d + di] = v[((bi * s + si) * h + hi) * d + di];
                }
            }
        }
    }
    out
}

pub(crate) fn attention(a: &Attention, inputs: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    let tys: Vec<TensorType> = inputs.iter().map(|t| TensorType::new(t.dtype(), t.shape().to_vec())).collect();
    let (past, total, [qd, kd, vd]) = attention_dims(a, &tys)?;
    let [b, hq, sq, d] = qd;
    let (hkv, skv, dv) = (a.kv_heads, kd[2], vd[3]);
    let q = to_bhsd(inputs[0], qd, a.packed);
    let k_new = to_bhsd(inputs[1], kd, a.packed);
    let v_new = to_bhsd(inputs[2], vd, a.packed);
    let mut at = 3 + a.has_mask as usize;
    // Present keys/values: past then new, along the sequence.
    let (mut k, mut v) = (vec![0.0; b * hkv * total * d], vec![0.0; b * hkv * total * dv]);
    let (pk, pv) = if a.has_past {
        at += 2;
        (inputs[at - 2].to_f64_vec(), inputs[at - 1].to_f64_vec())
    } else {
        (vec![], vec![])
    };
    for bh in 0..b * hkv {
        for t in 0..total {
            for i in 0..d {
                k[(bh * total + t) * d + i] =
                    if t < past { pk[(bh * past + t) * d + i] } else { k_new[(bh * skv + t - past) * d + i] };
            }
            for i in 0..dv {
                v[(bh * total + t) * dv + i] =
                    if t < past { pv[(bh * past + t) * dv + i] } else { v_new[(bh * skv + t - past) * dv + i] };
            }
        }
    }
    // The additive bias over [B, Hq, Sq, T]: the mask (padded to T), causality, padding.
    let full = [b, hq, sq, total];
    let mut bias = vec![0.0; b * hq * sq * total];
    if a.has_mask {
        let m = inputs[3];
        let ms = m.shape();
        let mut padded = ms.to_vec();
        let last = padded.len() - 1;
        padded[last] = total;
        let map = broadcast_map(&full, &padded);
        let mv = m.to_f64_vec();
        let is_bool = !m.dtype().is_float();
        let mcols = ms[last];
        for (i, bval) in bias.iter_mut().enumerate() {
            let p = map[i];
            let (row, col) = (p / total, p % total);
            *bval = if col >= mcols {
                f64::NEG_INFINITY
            } else {
                let x = mv[row * mcols + col];
                if is_bool {
                    if x != 0.0 {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                } else {
                    x
                }
            };
        }
    }
    let nonpad = a.has_nonpad.then(|| inputs[at].to_i128_vec());
    let group = hq / hkv;
    let mut y = vec![0.0; b * hq * sq * dv];
    let mut qk_out = if a.outputs == 4 { vec![0.0; b * hq * sq * total] } else { vec![] };
    let mut scores = vec![0.0; total];
    for bi in 0..b {
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..sq {
                let qrow = &q[((bi * hq + h) * sq + i) * d..][..d];
                let brow = (((bi * hq) + h) * sq + i) * total;
                for (t, sc) in scores.iter_mut().enumerate() {
                    let krow = &k[((bi * hkv + kvh) * total + t) * d..][..d];
                    let mut s = a.scale * qrow.iter().zip(krow).map(|(x, y)| x * y).sum::<f64>();
                    if a.softcap > 0.0 {
                        s = a.softcap * (s / a.softcap).tanh();
                    }
                    if a.outputs == 4 && a.qk_output <= 1 {
                        qk_out[brow + t] = s;
                    }
                    let mut bias_t = bias[brow + t];
                    if a.causal && t > past + i {
                        bias_t = f64::NEG_INFINITY;
                    }
                    if nonpad.as_ref().is_some_and(|n| t as i128 >= n[bi]) {
                        bias_t += f64::NEG_INFINITY;
                    }
                    *sc = s + bias_t;
                    if a.outputs == 4 && a.qk_output == 2 {
                        qk_out[brow + t] = *sc;
                    }
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (t, sc) in scores.iter_mut().enumerate() {
                    *sc = (*sc - max).exp() / sum;
                    if a.outputs == 4 && a.qk_output == 3 {
                        qk_out[brow + t] = *sc;
                    }
                }
                let yrow = &mut y[((bi * hq + h) * sq + i) * dv..][..dv];
                for (t, &p) in scores.iter().enumerate() {
                    let vrow = &v[((bi * hkv + kvh) * total + t) * dv..][..dv];
                    for (o, &x) in yrow.iter_mut().zip(vrow) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    if a.packed {
        // Back to B×S×(H·dv).
        let mut packed = vec![0.0; y.len()];
        for bi in 0..b {
            for h in 0..hq {
                for i in 0..sq {
                    for j in 0..dv {
                        packed[((bi * sq + i) * hq + h) * dv + j] = y[((bi * hq + h) * sq + i) * dv + j];
                    }
                }
            }
        }
        y = packed;
    }
    let mut res = vec![Tensor::from_f64(out[0].dtype, out[0].shape.clone(), y)?];
    if a.outputs >= 3 {
        res.push(Tensor::from_f64(out[1].dtype, out[1].shape.clone(), k)?);
        res.push(Tensor::from_f64(out[2].dtype, out[2].shape.clone(), v)?);
    }
    if a.outputs == 4 {
        res.push(Tensor::from_f64(out[3].dtype, out[3].shape.clone(), qk_out)?);
    }
    Ok(res)
}

pub(crate) fn rotary(
    inputs: &[&Tensor],
    interleaved: bool,
    num_heads: Option<usize>,
    rotary_dim: usize,
    o: &TensorType,
) -> Result<Tensor, String> {
    let x = inputs[0];
    let xs = x.shape();
    // Element (b, s, h, i) of X in either layout.
    let (b, s, h, d, packed) = match (xs.len(), num_heads) {
        (4, _) => (xs[0], xs[2], xs[1], xs[3], false),
        (_, Some(h)) => (xs[0], xs[1], h, xs[2] / h, true),
        _ => return Err("RotaryEmbedding needs num_heads for a 3-D input".into()),
    };
    let at = |bi: usize, si: usize, hi: usize, i: usize| {
        if packed {
            ((bi * s + si) * h + hi) * d + i
        } else {
            ((bi * h + hi) * s + si) * d + i
        }
    };
    let (cos, sin) = (inputs[1].to_f64_vec(), inputs[2].to_f64_vec());
    let half = rotary_dim / 2;
    let ids = inputs.get(3).map(|t| t.to_i128_vec());
    let rows = inputs[1].shape()[0];
    let xv = match x.data() {
        Data::Float(v) => v,
        Data::Int(_) => return Err("RotaryEmbedding of an integer tensor".into()),
    };
    let mut y = xv.clone();
    for bi in 0..b {
        for si in 0..s {
            let row = match &ids {
                Some(ids) => {
                    let p = ids[bi * s + si];
                    usize::try_from(p)
                        .ok()
                        .filter(|&p| p < rows)
                        .ok_or_else(|| format!("position id {p} out of range for {rows} cache rows"))?
                }
                None => bi * s + si,
            };
            for hi in 0..h {
                for j in 0..half {
                    let (c, sn) = (cos[row * half + j], sin[row * half + j]);
                    let (i1, i2) = if interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
                    let (x1, x2) = (xv[at(bi, si, hi, i1)], xv[at(bi, si, hi, i2)]);
                    y[at(bi, si, hi, i1)] = c * x1 - sn * x2;
                    y[at(bi, si, hi, i2)] = sn * x1 + c * x2;
                }
            }
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), y)
}
