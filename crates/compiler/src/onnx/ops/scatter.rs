//! Scatters, sequence reversal, center crop/pad and the loss functions.

use crate::graph::{LossReduction, Op, PadMode, ScatterReduction};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

fn reduction(c: &Ctx) -> PResult<ScatterReduction> {
    if c.version < 16 {
        return Ok(ScatterReduction::None);
    }
    Ok(match c.string("reduction", "none")?.as_str() {
        "none" => ScatterReduction::None,
        "add" => ScatterReduction::Add,
        "mul" => ScatterReduction::Mul,
        "max" if c.version >= 18 => ScatterReduction::Max,
        "min" if c.version >= 18 => ScatterReduction::Min,
        other => return Err(c.attr_err("reduction", format!("unknown value `{other}`"))),
    })
}

pub(super) fn scatter_elements(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    c.req(1, "indices")?;
    c.req(2, "updates")?;
    let axis = c.axis("axis", c.int("axis", 0)?, x.rank())?;
    Ok(Parsed::op(Op::ScatterElements { axis, reduction: reduction(c)? }, vec![0, 1, 2]))
}

pub(super) fn scatter_nd(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "data")?;
    c.req(1, "indices")?;
    c.req(2, "updates")?;
    Ok(Parsed::op(Op::ScatterNd { reduction: reduction(c)? }, vec![0, 1, 2]))
}

pub(super) fn reverse_sequence(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    c.req(1, "sequence_lens")?;
    let batch_axis = c.int("batch_axis", 1)?;
    let time_axis = c.int("time_axis", 0)?;
    if x.rank() < 2 || !matches!((batch_axis, time_axis), (0, 1) | (1, 0)) {
        return Err(c.attr_err(
            "batch_axis",
            format!("batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1 of an input of rank ≥ 2"),
        ));
    }
    Ok(Parsed::op(Op::ReverseSequence { batch_axis: batch_axis as usize, time_axis: time_axis as usize }, vec![0, 1]))
}

/// CenterCropPad: a constant-mode Pad whose negative pads crop.
pub(super) fn center_crop_pad(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input_data")?;
    c.req(1, "shape")?;
    let shape = c.ints_input(1)?.unwrap_or_default();
    let axes: Vec<usize> = match c.ints("axes")? {
        Some(a) => a.iter().map(|&v| c.axis("axes", v, x.rank())).collect::<PResult<_>>()?,
        None => (0..x.rank()).collect(),
    };
    if shape.len() != axes.len() || shape.iter().any(|&s| s < 0) {
        return Err(c.type_err(format!("shape {shape:?} must give {} non-negative lengths", axes.len())));
    }
    let mut pads = vec![(0i64, 0i64); x.rank()];
    for (&a, &want) in axes.iter().zip(&shape) {
        let diff = want - x.shape[a] as i64;
        // Odd differences put the extra element at the end, cropping or padding.
        let half = diff.abs() / 2;
        let rest = diff.abs() - half;
        pads[a] = if diff >= 0 { (half, rest) } else { (-half, -rest) };
    }
    Ok(Parsed::op(Op::Pad { mode: PadMode::Constant, pads, value: 0.0 }, vec![0]))
}

fn loss(c: &Ctx, softmax: bool) -> PResult<Parsed> {
    let x = c.float_input(0, "input")?;
    let t = c.ty(1, "target")?;
    if x.rank() < 2 || !t.dtype.is_int() {
        return Err(c.type_err(format!("needs N×C×… scores and integer targets, got {x} and {t}")));
    }
    let reduction = match c.string("reduction", "mean")?.as_str() {
        "none" => LossReduction::None,
        "sum" => LossReduction::Sum,
        "mean" => LossReduction::Mean,
        other => return Err(c.attr_err("reduction", format!("unknown value `{other}`"))),
    };
    let ignore_index = if c.has("ignore_index") { Some(c.int("ignore_index", 0)?) } else { None };
    let with_log_prob = softmax && c.node.output.get(1).is_some_and(|o| !o.is_empty());
    let inputs = if c.opt(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] };
    Ok(Parsed::op(Op::Loss { softmax, reduction, ignore_index, with_log_prob }, inputs))
}

pub(super) fn nll_loss(c: &Ctx) -> PResult<Parsed> {
    loss(c, false)
}

pub(super) fn softmax_cross_entropy(c: &Ctx) -> PResult<Parsed> {
    loss(c, true)
}
