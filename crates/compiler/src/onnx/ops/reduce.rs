//! Reductions: Reduce*, ArgMax/ArgMin, CumSum, TopK.

use crate::graph::{Op, ReduceKind};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

/// `inputs_from`: the op version from which `axes` is an input instead of an attribute.
fn reduce(c: &Ctx, kind: ReduceKind, inputs_from: i64) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let keepdims = c.flag("keepdims", true)?;
    let axes = if c.version >= inputs_from { c.ints_input(1)? } else { c.ints("axes")? };
    let axes = match axes {
        Some(a) if !a.is_empty() => c.axes("axes", &a, x.rank())?,
        _ if c.version >= inputs_from && c.flag("noop_with_empty_axes", false)? => {
            return Ok(Parsed::op(Op::Identity, vec![0]))
        }
        _ => (0..x.rank()).collect(),
    };
    Ok(Parsed::op(Op::Reduce { kind, axes, keepdims }, vec![0]))
}

pub(super) fn mean(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::Mean, 18)
}

pub(super) fn sum(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::Sum, 13)
}

pub(super) fn max(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::Max, 18)
}

pub(super) fn min(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::Min, 18)
}

pub(super) fn prod(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::Prod, 18)
}

pub(super) fn l1(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::L1, 18)
}

pub(super) fn l2(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::L2, 18)
}

pub(super) fn log_sum(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::LogSum, 18)
}

pub(super) fn log_sum_exp(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::LogSumExp, 18)
}

pub(super) fn sum_square(c: &Ctx) -> PResult<Parsed> {
    reduce(c, ReduceKind::SumSquare, 18)
}

fn arg(c: &Ctx, max: bool) -> PResult<Parsed> {
    let x = c.ty(0, "data")?;
    let axis = c.axis("axis", c.int("axis", 0)?, x.rank())?;
    let op = Op::ArgReduce {
        max,
        axis,
        keepdims: c.flag("keepdims", true)?,
        last_index: c.version >= 12 && c.flag("select_last_index", false)?,
    };
    Ok(Parsed::op(op, vec![0]))
}

pub(super) fn arg_max(c: &Ctx) -> PResult<Parsed> {
    arg(c, true)
}

pub(super) fn arg_min(c: &Ctx) -> PResult<Parsed> {
    arg(c, false)
}

pub(super) fn cum_sum(c: &Ctx) -> PResult<Parsed> {
    cumulative(c, false)
}

pub(super) fn cum_prod(c: &Ctx) -> PResult<Parsed> {
    cumulative(c, true)
}

fn cumulative(c: &Ctx, product: bool) -> PResult<Parsed> {
    let x = c.ty(0, "x")?;
    c.req(1, "axis")?;
    let axis = c.ints_input(1)?.unwrap_or_default();
    let [axis] = axis[..] else { return Err(c.type_err(format!("axis must hold one value, got {axis:?}"))) };
    let axis = c.axis("axis", axis, x.rank())?;
    let op = Op::CumSum { product, axis, exclusive: c.flag("exclusive", false)?, reverse: c.flag("reverse", false)? };
    Ok(Parsed::op(op, vec![0]))
}

pub(super) fn top_k(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "X")?;
    let axis = c.axis("axis", c.int("axis", -1)?, x.rank())?;
    let k = if c.version >= 10 {
        c.req(1, "K")?;
        match c.ints_input(1)?.unwrap_or_default()[..] {
            [k] => k,
            ref other => return Err(c.type_err(format!("K must hold one value, got {other:?}"))),
        }
    } else {
        c.int_req("k")?
    };
    if k < 0 {
        return Err(c.type_err(format!("K = {k} is negative")));
    }
    let largest = c.version < 11 || c.flag("largest", true)?;
    Ok(Parsed::op(Op::TopK { axis, k: k as usize, largest }, vec![0]))
}
