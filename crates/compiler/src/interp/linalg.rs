//! Matrix products and convolutions (im2col + `gemm` in f64).

use super::elementwise::broadcast_map;
use crate::graph::{numel, Conv, ConvTranspose, Data, Tensor, TensorType, Unary, Window};

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
/// For each (kernel offset, position in `at`), the flat position in `to` that the window
/// places it on, or `usize::MAX` where that falls in the padding. Conv reads the input through
/// it (`at` = output, `to` = input: im2col); ConvTranspose scatters through it (`at` = input,
/// `to` = output: col2im).
fn tap_table(window: &Window, kernel: &[usize], at: &[usize], to: &[usize]) -> Vec<usize> {
    let (kk, n, nd) = (numel(kernel), numel(at), at.len());
    let mut table = vec![usize::MAX; kk * n];
    let (mut kc, mut ac) = (vec![0; nd], vec![0; nd]);
    for ki in 0..kk {
        coords(ki, kernel, &mut kc);
        for ai in 0..n {
            coords(ai, at, &mut ac);
            let mut flat = 0usize;
            let mut inside = true;
            for d in 0..nd {
                let p = (ac[d] * window.strides[d] + kc[d] * window.dilations[d]) as isize - window.pads[d].0 as isize;
                if p < 0 || p >= to[d] as isize {
                    inside = false;
                    break;
                }
                flat = flat * to[d] + p as usize;
            }
            if inside {
                table[ki * n + ai] = flat;
            }
        }
    }
    table
}

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
    let kernel = &c.window.kernel;
    let (g, m) = (c.group, o.shape[1]);
    let (cg, mg) = (cin / g, m / g);
    let kk = numel(kernel);
    let (osz, isz) = (numel(sp_out), numel(sp_in));
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    // For each (kernel offset, output position), the input position or none (padding).
    let src = tap_table(&c.window, kernel, sp_out, sp_in);
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
    let t = Tensor::from_f64(o.dtype, o.shape.clone(), out)?;
    match &c.activation {
        // Rounded before the activation, as the separate nodes were.
        Some(a) => super::elementwise::unary(a, &t, o),
        None => Ok(t),
    }
}

pub(crate) fn conv_transpose(c: &ConvTranspose, inputs: &[&Tensor], o: &TensorType) -> Result<Tensor, String> {
    let (x, w) = (inputs[0], inputs[1]);
    let xs = x.shape();
    let (nb, cin) = (xs[0], xs[1]);
    let sp_in = &xs[2..];
    let sp_out = &o.shape[2..];
    let kernel = &c.window.kernel;
    let (g, m) = (c.group, o.shape[1]);
    let (cg, mg) = (cin / g, m / g);
    let kk = numel(kernel);
    let (osz, isz) = (numel(sp_out), numel(sp_in));
    let xv = x.to_f64_vec();
    let wv = w.to_f64_vec();
    let mut out = vec![0.0; nb * m * osz];
    // cols[mg·kk × isz] = Wᵀ·X per group, then scatter-add into the output (col2im).
    let dst = tap_table(&c.window, kernel, sp_in, sp_out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{infer, Op, Window};
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 - 500.0) / 250.0).collect()
    }

    /// Direct convolution: out[n][m][o] = Σ x[n][c][o·s + k·d − p] · w[m][c][k] + b[m].
    fn naive_conv(x: &Tensor, w: &Tensor, b: &[f64], c: &Conv, out: &[usize]) -> Vec<f64> {
        let (xs, ws) = (x.shape(), w.shape());
        let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
        let (cg, mg) = (xs[1] / c.group, ws[0] / c.group);
        let (h, wd) = (xs[2], xs[3]);
        let mut y = vec![0.0; numel(out)];
        for n in 0..out[0] {
            for m in 0..out[1] {
                let g = m / mg;
                for oy in 0..out[2] {
                    for ox in 0..out[3] {
                        let mut acc = b[m];
                        for ci in 0..cg {
                            for ky in 0..ws[2] {
                                for kx in 0..ws[3] {
                                    let iy = (oy * c.window.strides[0] + ky * c.window.dilations[0]) as isize
                                        - c.window.pads[0].0 as isize;
                                    let ix = (ox * c.window.strides[1] + kx * c.window.dilations[1]) as isize
                                        - c.window.pads[1].0 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((n * xs[1] + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((m * cg + ci) * ws[2] + ky) * ws[3] + kx;
                                    acc += xv[xi] * wv[wi];
                                }
                            }
                        }
                        y[((n * out[1] + m) * out[2] + oy) * out[3] + ox] = acc;
                    }
                }
            }
        }
        y
    }

    proptest! {
        /// im2col + gemm agrees with the direct loop nest over groups, strides, pads,
        /// dilations and odd shapes; ConvTranspose is the adjoint of Conv:
        /// ⟨conv(x), y⟩ = ⟨x, convᵀ(y)⟩.
        #[test]
        fn conv_matches_the_direct_definition(
            n in 1usize..3, g in 1usize..3, cg in 1usize..3, mg in 1usize..3,
            h in 3usize..9, wd in 3usize..9, k in 1usize..4,
            s in 1usize..3, d in 1usize..3, p in 0usize..3, seed in 0u64..100,
        ) {
            let span = d * (k - 1) + 1;
            prop_assume!(h + 2 * p >= span && wd + 2 * p >= span);
            let window = Window { kernel: vec![k, k], strides: vec![s, s], pads: vec![(p, p); 2], dilations: vec![d, d] };
            let conv = Conv { window: window.clone(), group: g, activation: None };
            let x = Tensor::from_f32(vec![n, g * cg, h, wd], &values(n * g * cg * h * wd, seed)).unwrap();
            let w = Tensor::from_f32(vec![g * mg, cg, k, k], &values(g * mg * cg * k * k, seed + 1)).unwrap();
            let b = Tensor::from_f32(vec![g * mg], &values(g * mg, seed + 2)).unwrap();
            let ty = |t: &Tensor| crate::graph::TensorType::new(t.dtype(), t.shape().to_vec());
            let out = infer::output_types(&Op::Conv(conv.clone()), &[ty(&x), ty(&w), ty(&b)]).unwrap();
            let got = super::conv(&conv, &[&x, &w, &b], &out[0]).unwrap().to_f64_vec();
            let want = naive_conv(&x, &w, &b.to_f64_vec(), &conv, &out[0].shape);
            for (a, e) in got.iter().zip(&want) {
                // One f32 rounding of the same exact sum.
                prop_assert!((a - (*e as f32 as f64)).abs() <= 1e-6 * e.abs().max(1.0), "{} vs {}", a, e);
            }
            // Adjoint check with the un-biased conv.
            let y = Tensor::from_f32(out[0].shape.clone(), &values(out[0].numel(), seed + 3)).unwrap();
            let cx = super::conv(&conv, &[&x, &w], &out[0]).unwrap().to_f64_vec();
            let ct = ConvTranspose { window, group: g, output_padding: vec![0, 0] };
            let back_ty = infer::output_types(&Op::ConvTranspose(ct.clone()), &[ty(&y), ty(&w)]);
            // The transposed output may be shorter than x when strides drop a tail.
            if let Ok(bt) = back_ty {
                if bt[0].shape == x.shape() {
                    let xt = super::conv_transpose(&ct, &[&y, &w], &bt[0]).unwrap().to_f64_vec();
                    let lhs: f64 = cx.iter().zip(y.to_f64_vec()).map(|(a, b)| a * b).sum();
                    let rhs: f64 = xt.iter().zip(x.to_f64_vec()).map(|(a, b)| a * b).sum();
                    prop_assert!((lhs - rhs).abs() <= 1e-3 * lhs.abs().max(1.0), "{} vs {}", lhs, rhs);
                }
            }
        }

        /// Batched, broadcasting MatMul agrees with a plain triple loop.
        #[test]
        fn matmul_matches_the_definition(b1 in 1usize..3, m in 1usize..6, k in 1usize..6, n in 1usize..6, seed in 0u64..50) {
            let a = Tensor::from_f32(vec![b1, m, k], &values(b1 * m * k, seed)).unwrap();
            let bm = Tensor::from_f32(vec![k, n], &values(k * n, seed + 5)).unwrap();
            let o = crate::graph::TensorType::new(crate::graph::DataType::F32, vec![b1, m, n]);
            let got = matmul(&a, &bm, None, None, &o).unwrap().to_f64_vec();
            let (av, bv) = (a.to_f64_vec(), bm.to_f64_vec());
            for bi in 0..b1 {
                for i in 0..m {
                    for j in 0..n {
                        let e: f64 = (0..k).map(|p| av[(bi * m + i) * k + p] * bv[p * n + j]).sum();
                        let g = got[(bi * m + i) * n + j];
                        prop_assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "{} vs {}", g, e);
                        prop_assert_eq!(g, g as f32 as f64, "results are rounded to float32");
                    }
                }
            }
        }
    }
}
