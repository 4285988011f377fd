//! Shape inference of quantization, Einsum and BitCast.

use super::{DataType, TensorType};

type Res<T> = Result<T, String>;

fn want(cond: bool, msg: impl FnOnce() -> String) -> Res<()> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Checks that `p` (a scale or zero point) is laid out per tensor, per `axis`, or per
/// block of `block` along `axis`, for an input of shape `x`.
pub(crate) fn check_quant_param(x: &[usize], p: &TensorType, axis: usize, block: usize, what: &str) -> Res<()> {
    if p.numel() == 1 && p.rank() <= 1 {
        return Ok(());
    }
    if block == 0 {
        return want(p.rank() == 1 && x.get(axis) == Some(&p.shape[0]), || {
            format!("{what} {p} must be a scalar or hold one value per element of axis {axis} of {x:?}")
        });
    }
    want(p.rank() == x.len(), || format!("blocked {what} {p} must have the rank of {x:?}"))?;
    for (d, (&xd, &pd)) in x.iter().zip(&p.shape).enumerate() {
        let expect = if d == axis { xd.div_ceil(block) } else { xd };
        want(pd == expect, || {
            format!("blocked {what} {p} must be {expect} along axis {d} (input {x:?}, block {block})")
        })?;
    }
    Ok(())
}

pub(crate) fn quantize(
    ins: &[TensorType],
    axis: usize,
    block: usize,
    to: DataType,
    dequantize: bool,
) -> Res<Vec<TensorType>> {
    want(ins.len() == 2 || ins.len() == 3, || format!("takes 2 or 3 inputs, got {}", ins.len()))?;
    let (x, s) = (&ins[0], &ins[1]);
    want(s.dtype.is_float(), || format!("scale must be a float tensor, got {s}"))?;
    if dequantize {
        want(!x.dtype.is_float() || matches!(x.dtype, DataType::F8E4M3 | DataType::F8E5M2), || {
            format!("input must be quantized, got {x}")
        })?;
        want(to.is_float(), || format!("output must be a float type, got {to}"))?;
    } else {
        want(x.dtype.is_float(), || format!("input must be a float tensor, got {x}"))?;
    }
    want(axis < x.rank().max(1), || format!("axis {axis} out of range for {x}"))?;
    check_quant_param(&x.shape, s, axis, block, "scale")?;
    if let Some(z) = ins.get(2) {
        check_quant_param(&x.shape, z, axis, block, "zero point")?;
        let q = if dequantize { x.dtype } else { to };
        want(z.dtype == q, || format!("zero point must be {q}, got {}", z.dtype))?;
    }
    Ok(vec![TensorType::new(to, x.shape.clone())])
}

/// The length of every Einsum letter, checked across inputs.
pub(crate) fn einsum_dims(inputs: &[Vec<usize>], ins: &[TensorType]) -> Res<Vec<usize>> {
    want(inputs.len() == ins.len(), || format!("{} terms for {} inputs", inputs.len(), ins.len()))?;
    let letters = inputs.iter().flatten().max().map_or(0, |m| m + 1);
    let mut dims: Vec<Option<usize>> = vec![None; letters];
    for (term, t) in inputs.iter().zip(ins) {
        want(term.len() == t.rank(), || format!("a term names {} axes of {t}", term.len()))?;
        for (&l, &d) in term.iter().zip(&t.shape) {
            match dims[l] {
                None => dims[l] = Some(d),
                Some(e) => want(e == d, || format!("an Einsum letter has lengths {e} and {d}"))?,
            }
        }
    }
    Ok(dims.into_iter().map(|d| d.unwrap_or(1)).collect())
}

pub(crate) fn einsum(inputs: &[Vec<usize>], output: &[usize], ins: &[TensorType]) -> Res<Vec<TensorType>> {
    let dims = einsum_dims(inputs, ins)?;
    let dt = ins.first().map(|t| t.dtype).ok_or("Einsum of no inputs")?;
    want(ins.iter().all(|t| t.dtype == dt) && dt != DataType::Bool, || {
        "Einsum inputs must share a numeric type".to_string()
    })?;
    let shape = output
        .iter()
        .map(|&l| dims.get(l).copied().ok_or_else(|| format!("output letter #{l} is unknown")))
        .collect::<Res<_>>()?;
    Ok(vec![TensorType::new(dt, shape)])
}
