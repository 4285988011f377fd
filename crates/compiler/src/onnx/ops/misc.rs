//! Quantization, Einsum, BitCast and the window functions.

use std::collections::BTreeMap;

use crate::graph::{DataType, Op, Tensor};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

/// Axis and block of a quantization node whose scale is input 1.
fn quant_layout(c: &Ctx) -> PResult<(usize, usize)> {
    let x = c.ty(0, "x")?;
    let s = c.ty(1, "scale")?;
    let block = if c.version >= 21 { c.int("block_size", 0)? } else { 0 };
    if block < 0 {
        return Err(c.attr_err("block_size", format!("must be ≥ 0, got {block}")));
    }
    let axis = if s.numel() == 1 && s.rank() <= 1 { 0 } else { c.axis("axis", c.int("axis", 1)?, x.rank())? };
    Ok((axis, block as usize))
}

pub(super) fn quantize_linear(c: &Ctx) -> PResult<Parsed> {
    let (axis, block) = quant_layout(c)?;
    let zp = c.opt(2).map(|z| z.ty.dtype);
    let declared = if c.version >= 21 && c.int("output_dtype", 0)? != 0 {
        Some(c.dtype_attr("output_dtype", c.int("output_dtype", 0)?)?)
    } else {
        None
    };
    let to = match (zp, declared) {
        (Some(z), Some(d)) if z != d => return Err(c.type_err(format!("zero point is {z} but output_dtype is {d}"))),
        (Some(z), _) => z,
        (None, Some(d)) => d,
        (None, None) => DataType::U8,
    };
    if !(matches!(
        to,
        DataType::I8 | DataType::U8 | DataType::I16 | DataType::U16 | DataType::F8E4M3 | DataType::F8E5M2
    )) {
        return Err(c.unsupported(format!("QuantizeLinear to {to}")));
    }
    let precision = if c.version >= 23 && c.int("precision", 0)? != 0 {
        Some(c.dtype_attr("precision", c.int("precision", 0)?)?)
    } else {
        None
    };
    let saturate = c.version < 19 || c.flag("saturate", true)?;
    let inputs = if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] };
    Ok(Parsed::op(Op::QuantizeLinear { axis, block, to, saturate, precision }, inputs))
}

pub(super) fn dequantize_linear(c: &Ctx) -> PResult<Parsed> {
    let (axis, block) = quant_layout(c)?;
    let scale = c.ty(1, "x_scale")?.dtype;
    let to = if c.version >= 23 && c.int("output_dtype", 0)? != 0 {
        c.dtype_attr("output_dtype", c.int("output_dtype", 0)?)?
    } else {
        scale
    };
    let inputs = if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] };
    Ok(Parsed::op(Op::DequantizeLinear { axis, block, to }, inputs))
}

pub(super) fn einsum(c: &Ctx) -> PResult<Parsed> {
    let eq: String = c.string("equation", "")?.chars().filter(|ch| !ch.is_whitespace()).collect();
    let bad = |why: &str| c.attr_err("equation", format!("`{eq}`: {why}"));
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != c.n_inputs() {
        return Err(bad(&format!("{} terms for {} inputs", terms.len(), c.n_inputs())));
    }
    // Letters are numbered; the axes an ellipsis covers get letters of their own,
    // aligned from the right across inputs (numpy's rule).
    let mut ids: BTreeMap<char, usize> = BTreeMap::new();
    let max_ellipsis = (0..terms.len())
        .map(|i| {
            let rank = c.ty(i, "input").map(|t| t.rank()).unwrap_or(0);
            let named = terms[i].chars().filter(|ch| ch.is_ascii_alphabetic()).count();
            if terms[i].contains("...") {
                rank.saturating_sub(named)
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0);
    let ellipsis_ids: Vec<usize> = (0..max_ellipsis).collect();
    let mut next = max_ellipsis;
    let mut letter = |ch: char, ids: &mut BTreeMap<char, usize>| -> usize {
        *ids.entry(ch).or_insert_with(|| {
            next += 1;
            next - 1
        })
    };
    let mut expand = |term: &str, rank: Option<usize>, ids: &mut BTreeMap<char, usize>| -> PResult<Vec<usize>> {
        let mut out = vec![];
        let parts: Vec<&str> = term.split("...").collect();
        if parts.len() > 2 {
            return Err(bad("more than one ellipsis in a term"));
        }
        for ch in parts[0].chars() {
            if !ch.is_ascii_alphabetic() {
                return Err(bad(&format!("`{ch}` is not a letter")));
            }
            out.push(letter(ch, ids));
        }
        if parts.len() == 2 {
            let named = term.chars().filter(|ch| ch.is_ascii_alphabetic()).count();
            let n = match rank {
                Some(r) => r.checked_sub(named).ok_or_else(|| bad("more letters than axes"))?,
                None => max_ellipsis,
            };
            out.extend_from_slice(&ellipsis_ids[max_ellipsis - n..]);
            for ch in parts[1].chars() {
                if !ch.is_ascii_alphabetic() {
                    return Err(bad(&format!("`{ch}` is not a letter")));
                }
                out.push(letter(ch, ids));
            }
        }
        Ok(out)
    };
    let mut inputs = vec![];
    for (i, t) in terms.iter().enumerate() {
        let rank = c.ty(i, "input")?.rank();
        let axes = expand(t, Some(rank), &mut ids)?;
        if axes.len() != rank {
            return Err(bad(&format!("term `{t}` names {} axes, input {i} has {rank}", axes.len())));
        }
        inputs.push(axes);
    }
    let output = match rhs {
        Some(r) => expand(&r, None, &mut ids)?,
        None => {
            // Implicit output: the ellipsis axes, then letters used once, alphabetically.
            let mut count: BTreeMap<char, usize> = BTreeMap::new();
            for ch in lhs.chars().filter(|ch| ch.is_ascii_alphabetic()) {
                *count.entry(ch).or_default() += 1;
            }
            let mut out = ellipsis_ids.clone();
            out.extend(count.iter().filter(|(_, &n)| n == 1).map(|(ch, _)| ids[ch]));
            out
        }
    };
    let all: Vec<usize> = inputs.iter().flatten().copied().collect();
    if let Some(l) = output.iter().find(|l| !all.contains(l)) {
        return Err(bad(&format!("output letter #{l} appears in no input")));
    }
    Ok(Parsed::op(Op::Einsum { inputs, output }, (0..c.n_inputs()).collect()))
}

pub(super) fn bit_cast(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let to = c.dtype_attr("to", c.int_req("to")?)?;
    if to.size() != x.dtype.size() {
        return Err(c.type_err(format!("BitCast from {} to {to}: the widths differ", x.dtype)));
    }
    Ok(Parsed::op(Op::BitCast(to), vec![0]))
}

/// Hann, Hamming and Blackman windows of a known length, as constants.
fn window(c: &Ctx, f: fn(f64, f64) -> f64) -> PResult<Parsed> {
    c.req(0, "size")?;
    let size = match c.ints_input(0)?.unwrap_or_default()[..] {
        [n] if (0..=1 << 24).contains(&n) => n as usize,
        ref v => return Err(c.type_err(format!("size must be one length up to 2^24, got {v:?}"))),
    };
    let dt = c.dtype_attr("output_datatype", c.int("output_datatype", 1)?)?;
    let n = if c.flag("periodic", true)? { size as f64 } else { size as f64 - 1.0 };
    let v: Vec<f64> = (0..size).map(|i| f(i as f64, n)).collect();
    let t = if dt.is_float() {
        Tensor::from_f64(dt, vec![size], v)
    } else {
        Tensor::from_i128(dt, vec![size], v.iter().map(|&x| crate::graph::float_to_int(x)).collect())
    }
    .map_err(|e| c.type_err(e))?;
    Ok(Parsed::Constants(vec![t]))
}

pub(super) fn hann_window(c: &Ctx) -> PResult<Parsed> {
    window(c, |i, n| (std::f64::consts::PI * i / n).sin().powi(2))
}

pub(super) fn hamming_window(c: &Ctx) -> PResult<Parsed> {
    window(c, |i, n| {
        let alpha = 25.0 / 46.0;
        alpha - (1.0 - alpha) * (2.0 * std::f64::consts::PI * i / n).cos()
    })
}

pub(super) fn blackman_window(c: &Ctx) -> PResult<Parsed> {
    window(c, |i, n| {
        let a = 2.0 * std::f64::consts::PI * i / n;
        0.42 - 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
    })
}
