//! Scatters, sequence reversal and the losses.

use crate::graph::{numel, strides_of, Data, LossReduction, ScatterReduction, Tensor, TensorType};

fn combine_f(r: ScatterReduction, old: f64, new: f64) -> f64 {
    match r {
        ScatterReduction::None => new,
        ScatterReduction::Add => old + new,
        ScatterReduction::Mul => old * new,
        ScatterReduction::Max => old.max(new),
        ScatterReduction::Min => old.min(new),
    }
}

fn combine_i(r: ScatterReduction, old: i128, new: i128) -> i128 {
    match r {
        ScatterReduction::None => new,
        ScatterReduction::Add => old + new,
        ScatterReduction::Mul => old.wrapping_mul(new),
        ScatterReduction::Max => old.max(new),
        ScatterReduction::Min => old.min(new),
    }
}

fn index(v: i128, len: usize, what: &str) -> Result<usize, String> {
    let i = if v < 0 { v + len as i128 } else { v };
    if i < 0 || i >= len as i128 {
        return Err(format!("{what} index {v} out of range for length {len}"));
    }
    Ok(i as usize)
}

/// Applies `(target position, update position)` pairs in order.
fn apply(
    data: &Tensor,
    updates: &Tensor,
    pairs: &[(usize, usize)],
    r: ScatterReduction,
    o: &TensorType,
) -> Result<Tensor, String> {
    match (data.data(), updates.data()) {
        (Data::Float(d), Data::Float(u)) => {
            let mut v = d.clone();
            for &(t, s) in pairs {
                v[t] = combine_f(r, v[t], u[s]);
            }
            Tensor::from_f64(o.dtype, o.shape.clone(), v)
        }
        (Data::Int(d), Data::Int(u)) => {
            let mut v = d.clone();
            for &(t, s) in pairs {
                v[t] = o.dtype.wrap_int(combine_i(r, v[t], u[s]));
            }
            Tensor::from_i128(o.dtype, o.shape.clone(), v)
        }
        _ => Err("data and updates of different kinds".into()),
    }
}

pub(crate) fn scatter_elements(
    inputs: &[&Tensor],
    axis: usize,
    r: ScatterReduction,
    o: &TensorType,
) -> Result<Tensor, String> {
    let [data, ind, upd] = inputs else { return Err("ScatterElements takes 3 inputs".into()) };
    let ds = data.shape();
    let st = strides_of(ds);
    let is = ind.shape();
    let iv = ind.to_i128_vec();
    let mut pairs = Vec::with_capacity(iv.len());
    let mut c = vec![0usize; is.len()];
    for (k, &v) in iv.iter().enumerate() {
        let mut rem = k;
        for d in (0..is.len()).rev() {
            c[d] = rem % is[d];
            rem /= is[d];
        }
        let mut at = 0;
        for d in 0..is.len() {
            let p = if d == axis { index(v, ds[axis], "ScatterElements")? } else { c[d] };
            if p >= ds[d] {
                return Err(format!("indices shape {is:?} exceeds data {ds:?}"));
            }
            at += p * st[d];
        }
        pairs.push((at, k));
    }
    apply(data, upd, &pairs, r, o)
}

pub(crate) fn scatter_nd(inputs: &[&Tensor], r: ScatterReduction, o: &TensorType) -> Result<Tensor, String> {
    let [data, ind, upd] = inputs else { return Err("ScatterND takes 3 inputs".into()) };
    let ds = data.shape();
    let st = strides_of(ds);
    let is = ind.shape();
    let q = is[is.len() - 1];
    let slice = numel(&ds[q..]);
    let iv = ind.to_i128_vec();
    let mut pairs = Vec::with_capacity(upd.len());
    for g in 0..numel(&is[..is.len() - 1]) {
        let mut at = 0;
        for j in 0..q {
            at += index(iv[g * q + j], ds[j], "ScatterND")? * st[j];
        }
        for s in 0..slice {
            pairs.push((at + s, g * slice + s));
        }
    }
    apply(data, upd, &pairs, r, o)
}

pub(crate) fn reverse_sequence(
    inputs: &[&Tensor],
    batch_axis: usize,
    time_axis: usize,
    o: &TensorType,
) -> Result<Tensor, String> {
    let [x, lens] = inputs else { return Err("ReverseSequence takes 2 inputs".into()) };
    let xs = x.shape();
    let st = strides_of(xs);
    let lens = lens.to_i128_vec();
    let inner = numel(&xs[2..]);
    let mut src: Vec<usize> = (0..x.len()).collect();
    for (b, &len) in lens.iter().enumerate().take(xs[batch_axis]) {
        if len < 0 || len > xs[time_axis] as i128 {
            return Err(format!("sequence length {len} of batch {b} exceeds the time axis {}", xs[time_axis]));
        }
        let len = len as usize;
        for t in 0..len {
            for i in 0..inner {
                let dst = b * st[batch_axis] + t * st[time_axis] + i;
                src[dst] = b * st[batch_axis] + (len - 1 - t) * st[time_axis] + i;
            }
        }
    }
    match x.data() {
        Data::Float(v) => Tensor::from_f64(o.dtype, o.shape.clone(), src.iter().map(|&s| v[s]).collect()),
        Data::Int(v) => Tensor::from_i128(o.dtype, o.shape.clone(), src.iter().map(|&s| v[s]).collect()),
    }
}

/// NegativeLogLikelihoodLoss (`softmax` false) and SoftmaxCrossEntropyLoss, as the
/// ONNX reference computes them (including which mean divides by the weight sum).
pub(crate) fn loss(
    inputs: &[&Tensor],
    softmax: bool,
    reduction: LossReduction,
    ignore: Option<i64>,
    out: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    let (x, target) = (inputs[0], inputs[1]);
    let xs = x.shape();
    let (n, c, d) = (xs[0], xs[1], numel(&xs[2..]));
    let mut xv = x.to_f64_vec();
    if softmax {
        for b in 0..n {
            for j in 0..d {
                let at = |k: usize| (b * c + k) * d + j;
                let max = (0..c).map(|k| xv[at(k)]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|k| (xv[at(k)] - max).exp()).sum();
                for k in 0..c {
                    xv[at(k)] = xv[at(k)] - max - sum.ln();
                }
            }
        }
        // The reference rounds the log-probabilities to the input type before gathering.
        xv = Tensor::from_f64(x.dtype(), xs.to_vec(), xv)?.to_f64_vec();
    }
    let t = target.to_i128_vec();
    let weight = inputs.get(2).map(|w| w.to_f64_vec());
    let mut losses = Vec::with_capacity(n * d);
    let mut weights = Vec::with_capacity(n * d);
    for b in 0..n {
        for j in 0..d {
            let cls = t[b * d + j];
            if ignore.is_some_and(|i| i as i128 == cls) {
                losses.push(0.0);
                weights.push(0.0);
                continue;
            }
            let k = usize::try_from(cls)
                .ok()
                .filter(|&k| k < c)
                .ok_or_else(|| format!("target {cls} out of range for {c} classes"))?;
            let w = weight.as_ref().map_or(1.0, |w| w[k]);
            losses.push(-xv[(b * c + k) * d + j] * w);
            weights.push(w);
        }
    }
    // NegativeLogLikelihoodLoss without weights and with ignore_index −1 averages over
    // every element (ignored ones count as 0), as its reference does.
    let plain_mean = !softmax && weight.is_none() && ignore == Some(-1);
    let value = match reduction {
        LossReduction::None => None,
        LossReduction::Sum => Some(losses.iter().sum::<f64>()),
        LossReduction::Mean if plain_mean => Some(losses.iter().sum::<f64>() / losses.len().max(1) as f64),
        LossReduction::Mean => Some(losses.iter().sum::<f64>() / weights.iter().sum::<f64>()),
    };
    let loss = match value {
        None => Tensor::from_f64(out[0].dtype, out[0].shape.clone(), losses)?,
        Some(v) => Tensor::from_f64(out[0].dtype, vec![], vec![v])?,
    };
    let mut res = vec![loss];
    if out.len() > 1 {
        res.push(Tensor::from_f64(out[1].dtype, out[1].shape.clone(), xv)?);
    }
    Ok(res)
}
