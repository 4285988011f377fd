//! Quantization, Einsum and BitCast.

use crate::graph::infer_quant::einsum_dims;
use crate::graph::{numel, strides_of, DataType, Tensor, TensorType};

/// For each element of `x`, the index of its scale / zero point in `p`.
fn param_index(x: &[usize], p: &[usize], axis: usize, block: usize) -> Vec<usize> {
    let n = numel(x);
    if numel(p) == 1 && p.len() <= 1 {
        return vec![0; n];
    }
    let xs = strides_of(x);
    let ps = strides_of(p);
    (0..n)
        .map(|i| {
            if block == 0 {
                (i / xs[axis]) % x[axis]
            } else {
                (0..x.len())
                    .map(|d| {
                        let c = (i / xs[d]) % x[d];
                        (if d == axis { c / block } else { c }) * ps[d]
                    })
                    .sum()
            }
        })
        .collect()
}

pub(crate) fn quantize(
    inputs: &[&Tensor],
    axis: usize,
    block: usize,
    saturate: bool,
    precision: Option<DataType>,
    o: &TensorType,
) -> Result<Tensor, String> {
    let (x, s) = (inputs[0], inputs[1]);
    let map = param_index(x.shape(), s.shape(), axis, block);
    let zmap = inputs.get(2).map(|z| (z.to_f64_vec(), param_index(x.shape(), z.shape(), axis, block)));
    let (xv, sv) = (x.to_f64_vec(), s.to_f64_vec());
    // The division happens in the input's type (or `precision`), as the reference does.
    let div_type = precision.unwrap_or(if x.dtype().size() >= s.dtype().size() { x.dtype() } else { s.dtype() });
    let q: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| div_type.round_float(div_type.round_float(v) / div_type.round_float(sv[map[i]])))
        .collect();
    if o.dtype.is_float() {
        let v = q.iter().map(|&v| o.dtype.round_float_with(v, saturate)).collect();
        return Tensor::new(o.dtype, o.shape.clone(), crate::graph::Data::Float(v));
    }
    let (lo, hi) = o.dtype.int_range().ok_or("quantizing to a non-integer type")?;
    let v = q
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let z = zmap.as_ref().map_or(0, |(z, m)| z[m[i]] as i128);
            (crate::graph::float_to_int(v.round_ties_even()) + z).clamp(lo, hi)
        })
        .collect();
    Tensor::from_i128(o.dtype, o.shape.clone(), v)
}

pub(crate) fn dequantize(inputs: &[&Tensor], axis: usize, block: usize, o: &TensorType) -> Result<Tensor, String> {
    let (x, s) = (inputs[0], inputs[1]);
    let map = param_index(x.shape(), s.shape(), axis, block);
    let zmap = inputs
        .get(2)
        .filter(|_| !x.dtype().is_float())
        .map(|z| (z.to_f64_vec(), param_index(x.shape(), z.shape(), axis, block)));
    let (xv, sv) = (x.to_f64_vec(), s.to_f64_vec());
    // The reference subtracts and multiplies in float32, then converts.
    let v = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = v - zmap.as_ref().map_or(0.0, |(z, m)| z[m[i]]);
            ((d as f32 as f64) * sv[map[i]]) as f32 as f64
        })
        .collect();
    Tensor::from_f64(o.dtype, o.shape.clone(), v)
}

pub(crate) fn einsum(
    terms: &[Vec<usize>],
    output: &[usize],
    inputs: &[&Tensor],
    o: &TensorType,
) -> Result<Tensor, String> {
    let tys: Vec<TensorType> = inputs.iter().map(|t| TensorType::new(t.dtype(), t.shape().to_vec())).collect();
    let dims = einsum_dims(terms, &tys)?;
    let summed: Vec<usize> =
        (0..dims.len()).filter(|l| !output.contains(l) && terms.iter().any(|t| t.contains(l))).collect();
    let values: Vec<Vec<f64>> = inputs.iter().map(|t| t.to_f64_vec()).collect();
    let strides: Vec<Vec<usize>> = inputs
        .iter()
        .zip(terms)
        .map(|(t, term)| {
            // A letter repeated within a term (a diagonal) adds its strides.
            let st = strides_of(t.shape());
            let mut per_letter = vec![0usize; dims.len()];
            for (&l, &s) in term.iter().zip(&st) {
                per_letter[l] += s;
            }
            per_letter
        })
        .collect();
    let n_out = numel(&o.shape);
    let n_sum = summed.iter().map(|&l| dims[l]).product::<usize>();
    let mut idx = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(n_out);
    for oi in 0..n_out {
        let mut rem = oi;
        for (k, &l) in output.iter().enumerate().rev() {
            idx[l] = rem % o.shape[k].max(1);
            rem /= o.shape[k].max(1);
        }
        let mut acc = 0.0;
        for si in 0..n_sum {
            let mut rem = si;
            for &l in summed.iter().rev() {
                idx[l] = rem % dims[l];
                rem /= dims[l];
            }
            let mut prod = 1.0;
            for (v, st) in values.iter().zip(&strides) {
                let at: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
                prod *= v[at];
            }
            acc += prod;
        }
        out.push(acc);
    }
    if o.dtype.is_float() {
        Tensor::from_f64(o.dtype, o.shape.clone(), out)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), out.iter().map(|&v| v as i128).collect())
    }
}

pub(crate) fn bit_cast(x: &Tensor, o: &TensorType) -> Result<Tensor, String> {
    Tensor::from_le_bytes(o.dtype, o.shape.clone(), &x.to_le_bytes())
}
