//! Matrix products and convolutions (im2col + `gemm` in f64).

use super::elementwise::broadcast_map;
use crate::graph::{numel, Conv, ConvTranspose, Data, Tensor, TensorType, Unary};

/// `c[m×n] = a·b` with `a` m×k and `b` k×n, each row-major or transposed
/// (`a_t`: `a` is stored k×m; `b_t`: `b` is stored n×k).
fn gemm_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, a_t: bool, b_t: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    if k == 0 {
        return c;
    }
    assert!(a.len() >= m * k && b.len() >= k * n, "gemm operands too short");
    let (a_cs, a_rs) = if a_t { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if b_t { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the lengths are checked above; strides stay inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    c
}

fn int_matmul(a: &[i128], b: &[i128], m: usize, k: usize, n: usize) -> Vec<i128> {
    let mut c = vec![0i128; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(x.wrapping_mul(b[p * n + j]));
            }
        }
    }
    c
}

/// numpy `matmul`, optionally followed by `+ bias` and an activation.
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    act: Option<&Unary>,
    o: &TensorType,
) -> Result<Tensor, String> {
    let (sa, sb) = (a.shape(), b.shape());
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch = crate::graph::infer::broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let nb = numel(&batch);
    let ma = broadcast_map(&batch, &a2[..a2.len() - 2]);
    let mb = broadcast_map(&batch, &b2[..b2.len() - 2]);
    let out_n = nb * m * n;
    let mut t = match (a.data(), b.data()) {
        (Data::Float(x), Data::Float(y)) => {
            let mut out = Vec::with_capacity(out_n);
            for bi in 0..nb {
                let xa = &x[ma[bi] * m * k..(ma[bi] + 1) * m * k];
                let yb = &y[mb[bi] * k * n..(mb[bi] + 1) * k * n];
                out.extend(gemm_f64(xa, yb, m, k, n, false, false));
            }
            Tensor::from_f64(o.dtype, o.shape.clone(), out)?
        }
        (Data::Int(x), Data::Int(y)) => {
            let mut out = Vec::with_capacity(out_n);
            for bi in 0..nb {
                out.extend(int_matmul(&x[ma[bi] * m * k..][..m * k], &y[mb[bi] * k * n..][..k * n], m, k, n));
            }
            Tensor::from_i128(o.dtype, o.shape.clone(), out)?
        }
        _ => return Err("MatMul of mixed float and integer operands".into()),
    };
    if let Some(bias) = bias {
        t = super::elementwise::binary(crate::graph::Binary::Add, &t, bias, o)?;
    }
    if let Some(u) = act {
        t = super::elementwise::unary(u, &t, o)?;
    }
    Ok(t)
}

pub(crate) fn gemm(
    inputs: &[&Tensor],
    alpha: f64,
    beta: f64,
    ta: bool,
    tb: bool,
    o: &TensorType,
) -> Result<Tensor, String> {
    let (a, b) = (inputs[0], inputs[1]);
    let (m, n) = (o.shape[0], o.shape[1]);
    let k = if ta { a.shape()[0] } else { a.shape()[1] };
    let mut c = if a.dtype().is_float() {
        gemm_f64(&a.to_f64_vec(), &b.to_f64_vec(), m, k, n, ta, tb)
    } else {
        let t = |v: Vec<i128>, r: usize, c: usize, tr: bool| if tr { transpose2(&v, r, c) } else { v };
        let x = t(a.to_i128_vec(), k, m, ta);
        let y = t(b.to_i128_vec(), n, k, tb);
        int_matmul(&x, &y, m, k, n).into_iter().map(|v| v as f64).collect()
    };
    for v in &mut c {
        *v *= alpha;
    }
    if let Some(cc) = inputs.get(2) {
        let map = broadcast_map(&o.shape, cc.shape());
        let cv = cc.to_f64_vec();
        for (i, v) in c.iter_mut().enumerate() {
            *v += beta * cv[map[i]];
        }
    }
    if o.dtype.is_float() {
        Tensor::from_f64(o.dtype, o.shape.clone(), c)
    } else {
        Tensor::from_i128(o.dtype, o.shape.clone(), c.iter().map(|&v| v as i128).collect())
    }
}

fn transpose2<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(v[r * cols + c]);
        }
    }
    out
}

/// Decomposes flat index `i` of `shape` into coordinates.
fn coords(mut i: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        out[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
}

pub(crate) fn conv(c: &Conv, inputs: &[&Tensor], o: &TensorType) -> Result<Tensor, String> {
    let (x, w) = (inputs[0], inputs[1]);
    let xs = x.shape();
    let (nb, cin) = (xs[0], xs[1]);
    let sp_in = &xs[2..];
    let sp_out = &o.shape[2..];
    let nd = sp_in.len();
    let kernel = &c.window.kernel;
    let (g, m) = (c.group, o.shape[1]);
    let (cg, mg) = (cin / g, m / g);
    let kk = numel(kernel);
    let (osz, isz) = (numel(sp_out), numel(sp_in));
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    // For each (kernel offset, output position), the input position or none (padding).
    let mut src = vec![usize::MAX; kk * osz];
    let (mut kc, mut oc) = (vec![0; nd], vec![0; nd]);
    for ki in 0..kk {
        coords(ki, kernel, &mut kc);
        for oi in 0..osz {
            coords(oi, sp_out, &mut oc);
            let mut at = 0usize;
            let mut inside = true;
            for d in 0..nd {
                let p = (oc[d] * c.window.strides[d] + kc[d] * c.window.dilations[d]) as isize
                    - c.window.pads[d].0 as isize;
                if p < 0 || p >= sp_in[d] as isize {
                    inside = false;
                    break;
                }
                at = at * sp_in[d] + p as usize;
            }
            if inside {
                src[ki * osz + oi] = at;
            }
        }
    }
    let mut out = vec![0.0; nb * m * osz];
    let mut col = vec![0.0; cg * kk * osz];
    for b in 0..nb {
        for gi in 0..g {
            for ci in 0..cg {
                let plane = &xv[(b * cin + gi * cg + ci) * isz..][..isz];
                for ki in 0..kk {
                    let row = &mut col[(ci * kk + ki) * osz..][..osz];
                    let s = &src[ki * osz..][..osz];
                    for (r, &p) in row.iter_mut().zip(s) {
                        *r = if p == usize::MAX { 0.0 } else { plane[p] };
                    }
                }
            }
            let wg = &wv[gi * mg * cg * kk..][..mg * cg * kk];
            let res = gemm_f64(wg, &col, mg, cg * kk, osz, false, false);
            out[(b * m + gi * mg) * osz..][..mg * osz].copy_from_slice(&res);
        }
    }
    if let Some(bias) = inputs.get(2) {
        let bv = bias.to_f64_vec();
        for (i, v) in out.iter_mut().enumerate() {
            *v += bv[(i / osz) % m];
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), out)
}

pub(crate) fn conv_transpose(c: &ConvTranspose, inputs: &[&Tensor], o: &TensorType) -> Result<Tensor, String> {
    let (x, w) = (inputs[0], inputs[1]);
    let xs = x.shape();
    let (nb, cin) = (xs[0], xs[1]);
    let sp_in = &xs[2..];
    let sp_out = &o.shape[2..];
    let nd = sp_in.len();
    let kernel = &c.window.kernel;
    let (g, m) = (c.group, o.shape[1]);
    let (cg, mg) = (cin / g, m / g);
    let kk = numel(kernel);
    let (osz, isz) = (numel(sp_out), numel(sp_in));
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    let mut out = vec![0.0; nb * m * osz];
    // cols[mg·kk × isz] = Wᵀ·X per group, then scatter-add into the output (col2im).
    let mut dst = vec![usize::MAX; kk * isz];
    let (mut kc, mut ic) = (vec![0; nd], vec![0; nd]);
    for ki in 0..kk {
        coords(ki, kernel, &mut kc);
        for ii in 0..isz {
            coords(ii, sp_in, &mut ic);
            let mut at = 0usize;
            let mut inside = true;
            for d in 0..nd {
                let p = (ic[d] * c.window.strides[d] + kc[d] * c.window.dilations[d]) as isize
                    - c.window.pads[d].0 as isize;
                if p < 0 || p >= sp_out[d] as isize {
                    inside = false;
                    break;
                }
                at = at * sp_out[d] + p as usize;
            }
            if inside {
                dst[ki * isz + ii] = at;
            }
        }
    }
    for b in 0..nb {
        for gi in 0..g {
            let xg = &xv[(b * cin + gi * cg) * isz..][..cg * isz];
            // W group: [cg, mg·kk] stored row-major; we need (mg·kk × cg)·(cg × isz).
            let wg = &wv[gi * cg * mg * kk..][..cg * mg * kk];
            let cols = gemm_f64(wg, xg, mg * kk, cg, isz, true, false);
            for mi in 0..mg {
                let plane = &mut out[(b * m + gi * mg + mi) * osz..][..osz];
                for ki in 0..kk {
                    let row = &cols[(mi * kk + ki) * isz..][..isz];
                    let d = &dst[ki * isz..][..isz];
                    for (&v, &p) in row.iter().zip(d) {
                        if p != usize::MAX {
                            plane[p] += v;
                        }
                    }
                }
            }
        }
    }
    if let Some(bias) = inputs.get(2) {
        let bv = bias.to_f64_vec();
        for (i, v) in out.iter_mut().enumerate() {
            *v += bv[(i / osz) % m];
        }
    }
    Tensor::from_f64(o.dtype, o.shape.clone(), out)
}
