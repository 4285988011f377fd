//! Neural-network ops: MatMul, Gemm, convolutions, pooling, normalizations, softmax.

use crate::graph::{Conv, ConvTranspose, DataType, Op, Pool, PoolKind, SoftmaxKind, Window};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

pub(super) fn matmul(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "A")?;
    c.req(1, "B")?;
    Ok(Parsed::op(Op::MatMul, vec![0, 1]))
}

pub(super) fn gemm(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "A")?;
    c.req(1, "B")?;
    let op = Op::Gemm {
        alpha: c.float("alpha", 1.0)?,
        beta: c.float("beta", 1.0)?,
        trans_a: c.flag("transA", false)?,
        trans_b: c.flag("transB", false)?,
    };
    Ok(Parsed::op(op, if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] }))
}

/// A list attribute with one entry per spatial axis (default `fill`).
fn per_axis(c: &Ctx, name: &str, n: usize, fill: i64, min: i64) -> PResult<Vec<usize>> {
    let v = c.ints(name)?.unwrap_or_else(|| vec![fill; n]);
    if v.len() != n {
        return Err(c.attr_err(name, format!("has {} entries, the input has {n} spatial axes", v.len())));
    }
    v.iter()
        .map(|&x| if x >= min { Ok(x as usize) } else { Err(c.attr_err(name, format!("value {x} below {min}"))) })
        .collect()
}

/// The window of a conv or pool node over input spatial dims `spatial`, with
/// `auto_pad` resolved to explicit pads.
fn window(c: &Ctx, spatial: &[usize], kernel: Vec<usize>, dilations: bool) -> PResult<Window> {
    let n = spatial.len();
    let strides = per_axis(c, "strides", n, 1, 1)?;
    let dilations = if dilations { per_axis(c, "dilations", n, 1, 1)? } else { vec![1; n] };
    let auto_pad = c.string("auto_pad", "NOTSET")?;
    let pads = match auto_pad.as_str() {
        "NOTSET" => {
            let p = c.ints("pads")?.unwrap_or_else(|| vec![0; 2 * n]);
            if p.len() != 2 * n || p.iter().any(|&v| v < 0) {
                return Err(c.attr_err("pads", format!("needs {} non-negative entries, got {p:?}", 2 * n)));
            }
            (0..n).map(|i| (p[i] as usize, p[i + n] as usize)).collect()
        }
        "VALID" => vec![(0, 0); n],
        "SAME_UPPER" | "SAME_LOWER" => (0..n)
            .map(|i| {
                let out = spatial[i].div_ceil(strides[i]);
                let span = (kernel[i].max(1) - 1) * dilations[i] + 1;
                let total = ((out.max(1) - 1) * strides[i] + span).saturating_sub(spatial[i]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect(),
        other => return Err(c.attr_err("auto_pad", format!("unknown value `{other}`"))),
    };
    Ok(Window { kernel, strides, pads, dilations })
}

fn spatial_of<'a>(c: &Ctx, shape: &'a [usize], what: &str) -> PResult<&'a [usize]> {
    if shape.len() < 3 {
        return Err(c.type_err(format!("{what} must be N×C×spatial, got {shape:?}")));
    }
    Ok(&shape[2..])
}

fn kernel_of(c: &Ctx, w_shape: &[usize], n: usize) -> PResult<Vec<usize>> {
    match c.ints("kernel_shape")? {
        Some(k) => per_axis(c, "kernel_shape", n, 1, 1).map(|_| k.iter().map(|&v| v as usize).collect()),
        None => Ok(w_shape.get(2..).map(<[usize]>::to_vec).unwrap_or_default()),
    }
}

pub(super) fn conv(c: &Ctx) -> PResult<Parsed> {
    let x = c.float_input(0, "X")?;
    let w = c.ty(1, "W")?;
    let spatial = spatial_of(c, &x.shape, "X")?;
    let kernel = kernel_of(c, &w.shape, spatial.len())?;
    let group = c.int("group", 1)?;
    if group < 1 {
        return Err(c.attr_err("group", format!("must be ≥ 1, got {group}")));
    }
    let op = Op::Conv(Conv { window: window(c, spatial, kernel, true)?, group: group as usize, activation: None });
    Ok(Parsed::op(op, if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] }))
}

pub(super) fn conv_transpose(c: &Ctx) -> PResult<Parsed> {
    let x = c.float_input(0, "X")?;
    let w = c.ty(1, "W")?;
    let spatial = spatial_of(c, &x.shape, "X")?.to_vec();
    let n = spatial.len();
    let kernel = kernel_of(c, &w.shape, n)?;
    let group = c.int("group", 1)?;
    if group < 1 {
        return Err(c.attr_err("group", format!("must be ≥ 1, got {group}")));
    }
    let strides = per_axis(c, "strides", n, 1, 1)?;
    let dilations = per_axis(c, "dilations", n, 1, 1)?;
    let mut output_padding = per_axis(c, "output_padding", n, 0, 0)?;
    let auto_pad = c.string("auto_pad", "NOTSET")?;
    let full =
        |i: usize, op: usize| strides[i] * (spatial[i].max(1) - 1) + op + (kernel[i].max(1) - 1) * dilations[i] + 1;
    let output_shape = match c.ints("output_shape")? {
        Some(s) if s.len() == n && s.iter().all(|&v| v > 0) => Some(s.iter().map(|&v| v as usize).collect::<Vec<_>>()),
        Some(s) if s.len() == n + 2 => Some(s[2..].iter().map(|&v| v.max(0) as usize).collect()),
        Some(s) => return Err(c.attr_err("output_shape", format!("needs {n} positive entries, got {s:?}"))),
        None if auto_pad.starts_with("SAME") => Some((0..n).map(|i| spatial[i] * strides[i]).collect()),
        None => None,
    };
    let pads = match output_shape {
        Some(out) => {
            let mut pads = vec![];
            for i in 0..n {
                let f = full(i, output_padding[i]);
                if f < out[i] {
                    // A longer output than the full result: the tail is padding.
                    output_padding[i] += out[i] - f;
                    pads.push((0, 0));
                    continue;
                }
                let total = f - out[i];
                let small = total / 2;
                pads.push(if auto_pad == "SAME_UPPER" { (small, total - small) } else { (total - small, small) });
            }
            pads
        }
        None => {
            let p = c.ints("pads")?.unwrap_or_else(|| vec![0; 2 * n]);
            if p.len() != 2 * n || p.iter().any(|&v| v < 0) {
                return Err(c.attr_err("pads", format!("needs {} non-negative entries, got {p:?}", 2 * n)));
            }
            (0..n).map(|i| (p[i] as usize, p[i + n] as usize)).collect()
        }
    };
    let op = Op::ConvTranspose(ConvTranspose {
        window: Window { kernel, strides, pads, dilations },
        group: group as usize,
        output_padding,
    });
    Ok(Parsed::op(op, if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] }))
}

fn pool(c: &Ctx, kind: PoolKind, dilations: bool) -> PResult<Parsed> {
    let x = c.ty(0, "X")?;
    let spatial = spatial_of(c, &x.shape, "X")?;
    if !c.has("kernel_shape") {
        return Err(c.attr_err("kernel_shape", "required, absent"));
    }
    let kernel = per_axis(c, "kernel_shape", spatial.len(), 1, 1)?;
    let with_indices = c.node.output.get(1).is_some_and(|o| !o.is_empty());
    let column_major = match c.int("storage_order", 0)? {
        0 => false,
        1 => true,
        v => return Err(c.attr_err("storage_order", format!("must be 0 or 1, got {v}"))),
    };
    let op = Op::Pool(Pool {
        column_major,
        kind,
        window: window(c, spatial, kernel, dilations)?,
        ceil_mode: c.flag("ceil_mode", false)?,
        with_indices,
    });
    Ok(Parsed::op(op, vec![0]))
}

pub(super) fn max_pool(c: &Ctx) -> PResult<Parsed> {
    pool(c, PoolKind::Max, c.version >= 10)
}

pub(super) fn average_pool(c: &Ctx) -> PResult<Parsed> {
    pool(c, PoolKind::Average { count_include_pad: c.flag("count_include_pad", false)? }, c.version >= 19)
}

pub(super) fn lp_pool(c: &Ctx) -> PResult<Parsed> {
    let p = if c.version >= 2 { c.int("p", 2)? as f64 } else { c.float("p", 2.0)? };
    pool(c, PoolKind::Lp(p), c.version >= 18)
}

pub(super) fn global_average_pool(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "X")?;
    Ok(Parsed::op(Op::GlobalPool(PoolKind::Average { count_include_pad: false }), vec![0]))
}

pub(super) fn global_lp_pool(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "X")?;
    let p = if c.version >= 2 { c.int("p", 2)? as f64 } else { c.float("p", 2.0)? };
    Ok(Parsed::op(Op::GlobalPool(PoolKind::Lp(p)), vec![0]))
}

pub(super) fn global_max_pool(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "X")?;
    Ok(Parsed::op(Op::GlobalPool(PoolKind::Max), vec![0]))
}

pub(super) fn batch_norm(c: &Ctx) -> PResult<Parsed> {
    for (i, what) in ["X", "scale", "B", "input_mean", "input_var"].iter().enumerate() {
        c.req(i, what)?;
    }
    if c.version < 9 && !c.flag("spatial", true)? {
        return Err(c.unsupported("BatchNormalization with spatial = 0"));
    }
    let training = c.version >= 14 && c.flag("training_mode", false)?;
    let extra_outputs = c.node.output.iter().skip(1).any(|o| !o.is_empty());
    if extra_outputs && !training {
        return Err(c.unsupported("BatchNormalization statistics outputs before opset 14 (training mode)"));
    }
    let momentum = training.then(|| c.float("momentum", 0.9)).transpose()?;
    Ok(Parsed::op(Op::BatchNorm { epsilon: c.float("epsilon", 1e-5)?, momentum }, vec![0, 1, 2, 3, 4]))
}

fn stash(c: &Ctx) -> PResult<DataType> {
    let t = c.dtype_attr("stash_type", c.int("stash_type", 1)?)?;
    if !t.is_float() {
        return Err(c.attr_err("stash_type", format!("must be a float type, got {t}")));
    }
    Ok(t)
}

pub(super) fn layer_norm(c: &Ctx) -> PResult<Parsed> {
    let x = c.float_input(0, "X")?;
    c.req(1, "Scale")?;
    let axis = c.axis("axis", c.int("axis", -1)?, x.rank())?;
    let op = Op::LayerNorm { axis, epsilon: c.float("epsilon", 1e-5)?, stats_dtype: stash(c)? };
    Ok(Parsed::op(op, if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] }))
}

pub(super) fn rms_norm(c: &Ctx) -> PResult<Parsed> {
    let x = c.float_input(0, "X")?;
    c.req(1, "scale")?;
    stash(c)?;
    let axis = c.axis("axis", c.int("axis", -1)?, x.rank())?;
    Ok(Parsed::op(Op::RmsNorm { axis, epsilon: c.float("epsilon", 1e-5)? }, vec![0, 1]))
}

pub(super) fn instance_norm(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    c.req(1, "scale")?;
    c.req(2, "B")?;
    Ok(Parsed::op(Op::InstanceNorm { epsilon: c.float("epsilon", 1e-5)? }, vec![0, 1, 2]))
}

pub(super) fn group_norm(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "X")?;
    c.req(1, "scale")?;
    c.req(2, "bias")?;
    if c.version < 21 {
        return Err(c.unsupported("GroupNormalization-18 per-group scale and bias (use opset 21)"));
    }
    stash(c)?;
    let groups = c.int_req("num_groups")?;
    if groups < 1 {
        return Err(c.attr_err("num_groups", format!("must be ≥ 1, got {groups}")));
    }
    Ok(Parsed::op(Op::GroupNorm { groups: groups as usize, epsilon: c.float("epsilon", 1e-5)? }, vec![0, 1, 2]))
}

pub(super) fn lrn(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "X")?;
    let size = c.int_req("size")?;
    if size < 1 {
        return Err(c.attr_err("size", format!("must be ≥ 1, got {size}")));
    }
    let op = Op::Lrn {
        size: size as usize,
        alpha: c.float("alpha", 1e-4)?,
        beta: c.float("beta", 0.75)?,
        bias: c.float("bias", 1.0)?,
    };
    Ok(Parsed::op(op, vec![0]))
}

pub(super) fn lp_norm(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let axis = c.axis("axis", c.int("axis", -1)?, x.rank())?;
    let p = c.int("p", 2)?;
    if p != 1 && p != 2 {
        return Err(c.attr_err("p", format!("must be 1 or 2, got {p}")));
    }
    Ok(Parsed::op(Op::LpNorm { axis, p }, vec![0]))
}

pub(super) fn mean_variance_norm(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "X")?;
    let axes = c.ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    Ok(Parsed::op(Op::MeanVarianceNorm { axes: c.axes("axes", &axes, x.rank())? }, vec![0]))
}

fn softmax_like(c: &Ctx, kind: SoftmaxKind) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let legacy = c.version < 13;
    let axis = c.int("axis", if legacy { 1 } else { -1 })?;
    let axis = if x.rank() == 0 { 0 } else { c.axis("axis", axis, x.rank())? };
    Ok(Parsed::op(Op::Softmax { kind, axis, coerce_2d: legacy }, vec![0]))
}

pub(super) fn softmax(c: &Ctx) -> PResult<Parsed> {
    softmax_like(c, SoftmaxKind::Softmax)
}

pub(super) fn log_softmax(c: &Ctx) -> PResult<Parsed> {
    softmax_like(c, SoftmaxKind::LogSoftmax)
}

pub(super) fn hardmax(c: &Ctx) -> PResult<Parsed> {
    softmax_like(c, SoftmaxKind::Hardmax)
}
