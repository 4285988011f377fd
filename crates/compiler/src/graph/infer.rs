//! Shape and type inference: the output types of an op from its input types.
//!
//! Every check an op needs on its inputs (ranks, matching dims, element types) is made
//! here, so the interpreter and any lowering can rely on well-typed nodes. Errors are
//! plain sentences with the shapes involved; the caller adds the node name and op type.

use super::{DataType, FusedArg, FusedStep, Op, PoolKind, TensorType, Unary, Window};

type Res<T> = Result<T, String>;

/// numpy broadcasting of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Res<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast (axis {i}: {da} vs {db})")),
        };
    }
    Ok(out)
}

fn broadcast_all<'a>(shapes: impl IntoIterator<Item = &'a [usize]>) -> Res<Vec<usize>> {
    let mut out: Vec<usize> = vec![];
    for s in shapes {
        out = broadcast(&out, s)?;
    }
    Ok(out)
}

fn want(cond: bool, msg: impl FnOnce() -> String) -> Res<()> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn arity(tys: &[TensorType], lo: usize, hi: usize) -> Res<()> {
    want(tys.len() >= lo && tys.len() <= hi, || {
        if lo == hi {
            format!("takes {lo} inputs, got {}", tys.len())
        } else {
            format!("takes {lo} to {hi} inputs, got {}", tys.len())
        }
    })
}

fn float_input(t: &TensorType, what: &str) -> Res<()> {
    want(t.dtype.is_float(), || format!("{what} must be a float tensor, got {}", t.dtype))
}

fn same_dtype(a: &TensorType, b: &TensorType, what: &str) -> Res<()> {
    want(a.dtype == b.dtype, || format!("{what}: element types differ ({} vs {})", a.dtype, b.dtype))
}

/// The element type a unary function gives for input type `dt`, or why it cannot.
pub fn unary_dtype(u: &Unary, dt: DataType) -> Res<DataType> {
    use Unary::*;
    match u {
        Not => want(dt == DataType::Bool, || format!("Not needs bool, got {dt}")).map(|_| dt),
        BitwiseNot => want(dt.is_int(), || format!("BitwiseNot needs integers, got {dt}")).map(|_| dt),
        IsNaN | IsInf { .. } => {
            want(dt.is_float(), || format!("needs a float tensor, got {dt}")).map(|_| DataType::Bool)
        }
        Abs | Neg | Sign | Relu | Clip { .. } => {
            want(dt != DataType::Bool, || format!("needs numbers, got {dt}")).map(|_| dt)
        }
        _ => want(dt.is_float(), || format!("needs a float tensor, got {dt}")).map(|_| dt),
    }
}

/// The element type a binary function gives for operand types `a`, `b`, or why it cannot.
pub fn binary_dtype(op: super::Binary, a: DataType, b: DataType) -> Res<DataType> {
    use super::Binary::*;
    match op {
        Pow => want(a != DataType::Bool && b != DataType::Bool, || format!("Pow of {a} by {b}")).map(|_| a),
        And | Or | Xor => {
            want(a == DataType::Bool && b == DataType::Bool, || format!("needs bool operands, got {a} and {b}"))
                .map(|_| a)
        }
        ShiftLeft | ShiftRight => {
            want(a == b && matches!(a, DataType::U8 | DataType::U16 | DataType::U32 | DataType::U64), || {
                format!("BitShift needs equal unsigned integer operands, got {a} and {b}")
            })
            .map(|_| a)
        }
        BitwiseAnd | BitwiseOr | BitwiseXor => {
            want(a == b && a.is_int(), || format!("needs equal integer operands, got {a} and {b}")).map(|_| a)
        }
        _ => {
            want(a == b, || format!("operand element types differ ({a} vs {b})"))?;
            if op.is_comparison() {
                Ok(DataType::Bool)
            } else {
                want(a != DataType::Bool, || "arithmetic on bool operands".to_string()).map(|_| a)
            }
        }
    }
}

/// Output length of a sliding window over `len` with padding `pads`.
pub fn window_out_len(len: usize, k: usize, s: usize, d: usize, pads: (usize, usize), ceil: bool) -> Res<usize> {
    let span = d * (k.max(1) - 1) + 1;
    let padded = len + pads.0 + pads.1;
    want(padded >= span && s > 0, || {
        format!("window of extent {span} does not fit input length {len} padded by {pads:?}")
    })?;
    let mut out = if ceil { (padded - span).div_ceil(s) + 1 } else { (padded - span) / s + 1 };
    // A last window that would start in the end padding is dropped (ceil mode).
    if ceil && (out - 1) * s >= len + pads.0 {
        out -= 1;
    }
    Ok(out)
}

fn check_window(w: &Window, spatial: usize) -> Res<()> {
    want(
        w.kernel.len() == spatial
            && w.strides.len() == spatial
            && w.pads.len() == spatial
            && w.dilations.len() == spatial,
        || format!("window attributes must each have {spatial} entries (one per spatial axis), got {w:?}"),
    )?;
    want(w.strides.iter().chain(&w.dilations).all(|&v| v > 0), || "strides and dilations must be positive".into())
}

fn matmul_shape(a: &[usize], b: &[usize]) -> Res<Vec<usize>> {
    want(!a.is_empty() && !b.is_empty(), || "MatMul operands must have rank ≥ 1".into())?;
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    want(k == k2, || format!("MatMul inner dimensions differ: {a:?} × {b:?}"))?;
    let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

fn axis_ok(axis: usize, rank: usize) -> Res<()> {
    want(axis < rank, || format!("axis {axis} out of range for rank {rank}"))
}

/// Checks a normalization over axes `axis..` (input, scale, optional bias up to
/// `max_inputs`); returns the input type and the shape of per-row statistics.
fn trailing_norm(ins: &[TensorType], axis: usize, max_inputs: usize) -> Res<(&TensorType, Vec<usize>)> {
    arity(ins, 2, max_inputs)?;
    let x = &ins[0];
    float_input(x, "normalization input")?;
    axis_ok(axis, x.rank())?;
    let norm = &x.shape[axis..];
    for p in &ins[1..] {
        let bc = broadcast(norm, &p.shape)?;
        want(bc == norm, || format!("scale/bias {:?} does not broadcast to the normalized shape {norm:?}", p.shape))?;
    }
    let mut stat = x.shape.clone();
    stat[axis..].fill(1);
    Ok((x, stat))
}

/// The most elements a value may have (2³² — 32 GiB of `f64`): larger shapes are
/// refused by name rather than failing allocation.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// Output types of `op` applied to inputs of types `ins`.
pub fn output_types(op: &Op, ins: &[TensorType]) -> Res<Vec<TensorType>> {
    let out = types_of(op, ins)?;
    for t in &out {
        match super::checked_numel(&t.shape) {
            Some(n) if n <= MAX_ELEMENTS => {}
            _ => return Err(format!("output {t} exceeds the limit of {MAX_ELEMENTS} elements")),
        }
    }
    Ok(out)
}

fn types_of(op: &Op, ins: &[TensorType]) -> Res<Vec<TensorType>> {
    let one = |dtype: DataType, shape: Vec<usize>| Ok(vec![TensorType::new(dtype, shape)]);
    let x = ins.first();
    let x_or = || x.ok_or_else(|| "has no input".to_string());
    match op {
        Op::Unary(u) => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            one(unary_dtype(u, x.dtype)?, x.shape.clone())
        }
        Op::Binary(b) => {
            arity(ins, 2, 2)?;
            one(binary_dtype(*b, ins[0].dtype, ins[1].dtype)?, broadcast(&ins[0].shape, &ins[1].shape)?)
        }
        Op::Where => {
            arity(ins, 3, 3)?;
            want(ins[0].dtype == DataType::Bool, || format!("condition must be bool, got {}", ins[0].dtype))?;
            same_dtype(&ins[1], &ins[2], "Where branches")?;
            one(ins[1].dtype, broadcast_all(ins.iter().map(|t| t.shape.as_slice()))?)
        }
        Op::Cast { to, .. } => {
            arity(ins, 1, 1)?;
            one(*to, x_or()?.shape.clone())
        }
        Op::MatMul => {
            arity(ins, 2, 2)?;
            same_dtype(&ins[0], &ins[1], "MatMul operands")?;
            want(ins[0].dtype != DataType::Bool, || "MatMul of bool tensors".into())?;
            one(ins[0].dtype, matmul_shape(&ins[0].shape, &ins[1].shape)?)
        }
        Op::FusedMatMul { activation } => {
            arity(ins, 3, 3)?;
            same_dtype(&ins[0], &ins[1], "MatMul operands")?;
            same_dtype(&ins[0], &ins[2], "MatMul bias")?;
            let shape = matmul_shape(&ins[0].shape, &ins[1].shape)?;
            let out = broadcast(&shape, &ins[2].shape)?;
            want(out == shape, || format!("bias {:?} does not broadcast to {shape:?}", ins[2].shape))?;
            if let Some(a) = activation {
                unary_dtype(a, ins[0].dtype)?;
            }
            one(ins[0].dtype, shape)
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            arity(ins, 2, 3)?;
            let (a, b) = (&ins[0], &ins[1]);
            same_dtype(a, b, "Gemm operands")?;
            want(a.rank() == 2 && b.rank() == 2, || {
                format!("Gemm needs 2-D A and B, got {:?} and {:?}", a.shape, b.shape)
            })?;
            let (m, k) = if *trans_a { (a.shape[1], a.shape[0]) } else { (a.shape[0], a.shape[1]) };
            let (k2, n) = if *trans_b { (b.shape[1], b.shape[0]) } else { (b.shape[0], b.shape[1]) };
            want(k == k2, || format!("Gemm inner dimensions differ: A {:?} B {:?}", a.shape, b.shape))?;
            if let Some(c) = ins.get(2) {
                same_dtype(a, c, "Gemm C")?;
                let bc = broadcast(&[m, n], &c.shape)?;
                want(bc == [m, n], || format!("C {:?} does not broadcast to [{m}, {n}]", c.shape))?;
            }
            one(a.dtype, vec![m, n])
        }
        Op::Conv(c) => {
            arity(ins, 2, 3)?;
            let (x, w) = (&ins[0], &ins[1]);
            float_input(x, "Conv input")?;
            same_dtype(x, w, "Conv input and weight")?;
            want(x.rank() >= 3 && w.rank() == x.rank(), || {
                format!("Conv needs input N×C×spatial and weight of the same rank, got {:?} and {:?}", x.shape, w.shape)
            })?;
            let spatial = x.rank() - 2;
            check_window(&c.window, spatial)?;
            let g = c.group;
            want(g > 0 && x.shape[1] % g == 0 && w.shape[0] % g == 0 && w.shape[1] * g == x.shape[1], || {
                format!("input {:?} and weight {:?} do not agree with group {g}", x.shape, w.shape)
            })?;
            want(w.shape[2..] == c.window.kernel[..], || {
                format!("kernel_shape {:?} differs from the weight's {:?}", c.window.kernel, &w.shape[2..])
            })?;
            if let Some(b) = ins.get(2) {
                same_dtype(x, b, "Conv bias")?;
                want(b.shape == [w.shape[0]], || format!("bias must be [{}], got {:?}", w.shape[0], b.shape))?;
            }
            let mut shape = vec![x.shape[0], w.shape[0]];
            for i in 0..spatial {
                let w_ = &c.window;
                shape.push(window_out_len(
                    x.shape[2 + i],
                    w_.kernel[i],
                    w_.strides[i],
                    w_.dilations[i],
                    w_.pads[i],
                    false,
                )?);
            }
            if let Some(a) = &c.activation {
                unary_dtype(a, x.dtype)?;
            }
            one(x.dtype, shape)
        }
        Op::ConvTranspose(c) => {
            arity(ins, 2, 3)?;
            let (x, w) = (&ins[0], &ins[1]);
            float_input(x, "ConvTranspose input")?;
            same_dtype(x, w, "ConvTranspose input and weight")?;
            want(x.rank() >= 3 && w.rank() == x.rank(), || {
                format!("needs input N×C×spatial and weight of the same rank, got {:?} and {:?}", x.shape, w.shape)
            })?;
            let spatial = x.rank() - 2;
            check_window(&c.window, spatial)?;
            want(c.output_padding.len() == spatial, || "output_padding needs one entry per spatial axis".into())?;
            let g = c.group;
            want(g > 0 && w.shape[0] == x.shape[1] && x.shape[1] % g == 0, || {
                format!("input {:?} and weight {:?} do not agree with group {g}", x.shape, w.shape)
            })?;
            let m = w.shape[1] * g;
            if let Some(b) = ins.get(2) {
                want(b.shape == [m], || format!("bias must be [{m}], got {:?}", b.shape))?;
            }
            let mut shape = vec![x.shape[0], m];
            for i in 0..spatial {
                let w_ = &c.window;
                let full = w_.strides[i] * (x.shape[2 + i].max(1) - 1)
                    + c.output_padding[i]
                    + (w_.kernel[i].max(1) - 1) * w_.dilations[i]
                    + 1;
                let cut = w_.pads[i].0 + w_.pads[i].1;
                want(full > cut, || format!("pads {:?} remove the whole output of length {full}", w_.pads[i]))?;
                shape.push(full - cut);
            }
            one(x.dtype, shape)
        }
        Op::Pool(p) => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(x.rank() >= 3, || format!("pooling needs N×C×spatial, got {:?}", x.shape))?;
            if !matches!(p.kind, PoolKind::Max) {
                float_input(x, "pooling input")?;
            }
            let spatial = x.rank() - 2;
            check_window(&p.window, spatial)?;
            let mut shape = x.shape[..2].to_vec();
            for i in 0..spatial {
                let w = &p.window;
                shape.push(window_out_len(
                    x.shape[2 + i],
                    w.kernel[i],
                    w.strides[i],
                    w.dilations[i],
                    w.pads[i],
                    p.ceil_mode,
                )?);
            }
            let mut out = vec![TensorType::new(x.dtype, shape.clone())];
            if p.with_indices {
                out.push(TensorType::new(DataType::I64, shape));
            }
            Ok(out)
        }
        Op::GlobalPool(_) => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(x.rank() >= 3, || format!("global pooling needs N×C×spatial, got {:?}", x.shape))?;
            float_input(x, "global pooling input")?;
            let mut shape = x.shape.clone();
            shape[2..].fill(1);
            one(x.dtype, shape)
        }
        Op::BatchNorm { momentum, .. } => {
            arity(ins, 5, 5)?;
            let x = x_or()?;
            float_input(x, "BatchNormalization input")?;
            want(x.rank() >= 2, || format!("needs N×C×..., got {:?}", x.shape))?;
            for (i, p) in ins[1..].iter().enumerate() {
                want(p.shape == [x.shape[1]], || {
                    format!("parameter {} must be [{}], got {:?}", i + 1, x.shape[1], p.shape)
                })?;
                float_input(p, "BatchNormalization parameter")?;
            }
            let y = TensorType::new(x.dtype, x.shape.clone());
            if momentum.is_some() {
                let stat = TensorType::new(x.dtype, vec![x.shape[1]]);
                return Ok(vec![y, stat.clone(), stat]);
            }
            Ok(vec![y])
        }
        Op::LayerNorm { axis, stats_dtype, .. } => {
            let (x, stat) = trailing_norm(ins, *axis, 3)?;
            Ok(vec![x.clone(), TensorType::new(*stats_dtype, stat.clone()), TensorType::new(*stats_dtype, stat)])
        }
        Op::RmsNorm { axis, .. } => Ok(vec![trailing_norm(ins, *axis, 2)?.0.clone()]),
        Op::InstanceNorm { .. } | Op::GroupNorm { .. } => {
            arity(ins, 3, 3)?;
            let x = x_or()?;
            float_input(x, "normalization input")?;
            want(x.rank() >= 3, || format!("needs N×C×spatial, got {:?}", x.shape))?;
            if let Op::GroupNorm { groups, .. } = op {
                want(*groups > 0 && x.shape[1] % groups == 0, || {
                    format!("{} channels do not split into {groups} groups", x.shape[1])
                })?;
            }
            for p in &ins[1..] {
                want(p.shape == [x.shape[1]], || {
                    format!("scale and bias must be [{}], got {:?}", x.shape[1], p.shape)
                })?;
            }
            one(x.dtype, x.shape.clone())
        }
        Op::Lrn { size, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            float_input(x, "LRN input")?;
            want(x.rank() >= 3 && *size > 0, || format!("LRN needs N×C×spatial and size ≥ 1, got {:?}", x.shape))?;
            one(x.dtype, x.shape.clone())
        }
        Op::LpNorm { axis, .. } | Op::Softmax { axis, .. } | Op::CumSum { axis, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            axis_ok(*axis, x.rank().max(1))?;
            if !matches!(op, Op::CumSum { .. }) {
                float_input(x, "input")?;
            }
            one(x.dtype, x.shape.clone())
        }
        Op::MeanVarianceNorm { axes } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            float_input(x, "input")?;
            for &a in axes {
                axis_ok(a, x.rank())?;
            }
            one(x.dtype, x.shape.clone())
        }
        Op::Reduce { axes, keepdims, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            for &a in axes {
                axis_ok(a, x.rank())?;
            }
            let mut shape = vec![];
            for (i, &d) in x.shape.iter().enumerate() {
                if !axes.contains(&i) {
                    shape.push(d);
                } else if *keepdims {
                    shape.push(1);
                }
            }
            one(x.dtype, shape)
        }
        Op::ArgReduce { axis, keepdims, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            axis_ok(*axis, x.rank())?;
            want(x.shape[*axis] > 0, || format!("ArgMax/ArgMin over an empty axis {axis}"))?;
            let mut shape = x.shape.clone();
            if *keepdims {
                shape[*axis] = 1;
            } else {
                shape.remove(*axis);
            }
            one(DataType::I64, shape)
        }
        Op::Reshape { shape } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(super::checked_numel(shape) == Some(x.numel()), || {
                format!("cannot reshape {:?} ({} elements) to {shape:?}", x.shape, x.numel())
            })?;
            one(x.dtype, shape.clone())
        }
        Op::Identity => {
            arity(ins, 1, 1)?;
            Ok(vec![x_or()?.clone()])
        }
        Op::Transpose { perm } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            let mut seen = vec![false; x.rank()];
            want(
                perm.len() == x.rank() && perm.iter().all(|&p| p < x.rank() && !std::mem::replace(&mut seen[p], true)),
                || format!("perm {perm:?} is not a permutation of the {} axes", x.rank()),
            )?;
            one(x.dtype, perm.iter().map(|&p| x.shape[p]).collect())
        }
        Op::Concat { axis } => {
            want(!ins.is_empty(), || "Concat of no inputs".into())?;
            let x = x_or()?;
            axis_ok(*axis, x.rank())?;
            let mut shape = x.shape.clone();
            shape[*axis] = 0;
            for t in ins {
                same_dtype(x, t, "Concat inputs")?;
                want(
                    t.rank() == x.rank()
                        && t.shape.iter().zip(&x.shape).enumerate().all(|(i, (a, b))| i == *axis || a == b),
                    || format!("Concat inputs {:?} and {:?} differ off axis {axis}", x.shape, t.shape),
                )?;
                shape[*axis] += t.shape[*axis];
            }
            one(x.dtype, shape)
        }
        Op::Split { axis, sizes } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            axis_ok(*axis, x.rank())?;
            want(sizes.iter().sum::<usize>() == x.shape[*axis], || {
                format!("split lengths {sizes:?} do not add up to axis {axis} of {:?}", x.shape)
            })?;
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut shape = x.shape.clone();
                    shape[*axis] = s;
                    TensorType::new(x.dtype, shape)
                })
                .collect())
        }
        Op::Slice { axes } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            let mut shape = x.shape.clone();
            for a in axes {
                axis_ok(a.axis, x.rank())?;
                let last = a.start + a.step * (a.len as i64 - 1);
                want(
                    a.len == 0 || (a.start >= 0 && last >= 0 && (a.start.max(last) as usize) < x.shape[a.axis]),
                    || format!("slice {a:?} leaves axis {} of length {}", a.axis, x.shape[a.axis]),
                )?;
                shape[a.axis] = a.len;
            }
            one(x.dtype, shape)
        }
        Op::Gather { axis } => {
            arity(ins, 2, 2)?;
            let (d, i) = (&ins[0], &ins[1]);
            axis_ok(*axis, d.rank())?;
            want(i.dtype.is_int(), || format!("indices must be integers, got {}", i.dtype))?;
            let mut shape = d.shape[..*axis].to_vec();
            shape.extend_from_slice(&i.shape);
            shape.extend_from_slice(&d.shape[*axis + 1..]);
            one(d.dtype, shape)
        }
        Op::GatherElements { axis } => {
            arity(ins, 2, 2)?;
            let (d, i) = (&ins[0], &ins[1]);
            axis_ok(*axis, d.rank())?;
            want(i.dtype.is_int() && i.rank() == d.rank(), || {
                format!("indices must be integers of rank {}", d.rank())
            })?;
            one(d.dtype, i.shape.clone())
        }
        Op::GatherNd { batch_dims } => {
            arity(ins, 2, 2)?;
            let (d, i) = (&ins[0], &ins[1]);
            want(i.dtype.is_int() && i.rank() >= 1, || "indices must be integers of rank ≥ 1".into())?;
            let q = i.shape[i.rank() - 1];
            want(
                *batch_dims < i.rank()
                    && batch_dims + q <= d.rank()
                    && d.shape[..*batch_dims] == i.shape[..*batch_dims],
                || format!("indices {:?} do not fit data {:?} with batch_dims {batch_dims}", i.shape, d.shape),
            )?;
            let mut shape = i.shape[..i.rank() - 1].to_vec();
            shape.extend_from_slice(&d.shape[batch_dims + q..]);
            one(d.dtype, shape)
        }
        Op::Expand { shape } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            one(x.dtype, broadcast(&x.shape, shape)?)
        }
        Op::Tile { repeats } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(repeats.len() == x.rank(), || {
                format!("repeats {repeats:?} must have one entry per axis of {:?}", x.shape)
            })?;
            one(x.dtype, x.shape.iter().zip(repeats).map(|(a, b)| a * b).collect())
        }
        Op::Pad { pads, mode, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(pads.len() == x.rank(), || format!("pads must have one (begin, end) pair per axis of {:?}", x.shape))?;
            let mut shape = vec![];
            for (&d, &(b, e)) in x.shape.iter().zip(pads) {
                let n = d as i64 + b + e;
                want(n >= 0, || format!("pads {pads:?} crop more than {:?} holds", x.shape))?;
                if *mode != super::PadMode::Constant && (b > 0 || e > 0) {
                    want(d > 0, || format!("{mode:?} padding of an empty axis"))?;
                }
                shape.push(n as usize);
            }
            one(x.dtype, shape)
        }
        Op::Resize(r) => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(r.sizes.len() == x.rank() && r.scales.len() == x.rank(), || {
                format!("resize sizes {:?} must match the rank of {:?}", r.sizes, x.shape)
            })?;
            one(x.dtype, r.sizes.clone())
        }
        Op::DepthToSpace { block, .. } | Op::SpaceToDepth { block } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            let b = *block;
            want(x.rank() == 4 && b > 0, || format!("needs a 4-D input and a positive block, got {:?}", x.shape))?;
            let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            if let Op::DepthToSpace { .. } = op {
                want(c % (b * b) == 0, || format!("{c} channels are not a multiple of {b}²"))?;
                one(x.dtype, vec![n, c / (b * b), h * b, w * b])
            } else {
                want(h % b == 0 && w % b == 0, || format!("{h}×{w} is not a multiple of the block {b}"))?;
                one(x.dtype, vec![n, c * b * b, h / b, w / b])
            }
        }
        Op::Trilu { .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(x.rank() >= 2, || format!("Trilu needs rank ≥ 2, got {:?}", x.shape))?;
            one(x.dtype, x.shape.clone())
        }
        Op::TopK { axis, k, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            axis_ok(*axis, x.rank())?;
            want(*k <= x.shape[*axis], || format!("k = {k} exceeds axis {axis} of {:?}", x.shape))?;
            let mut shape = x.shape.clone();
            shape[*axis] = *k;
            Ok(vec![TensorType::new(x.dtype, shape.clone()), TensorType::new(DataType::I64, shape)])
        }
        Op::OneHot { axis, depth, dtype, .. } => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            axis_ok(*axis, x.rank() + 1)?;
            want(*depth >= 0, || format!("depth {depth} is negative"))?;
            let mut shape = x.shape.clone();
            shape.insert(*axis, *depth as usize);
            one(*dtype, shape)
        }
        Op::ScatterElements { axis, .. } => {
            arity(ins, 3, 3)?;
            let (d, i, u) = (&ins[0], &ins[1], &ins[2]);
            axis_ok(*axis, d.rank())?;
            same_dtype(d, u, "data and updates")?;
            want(i.dtype.is_int() && i.rank() == d.rank() && i.shape == u.shape, || {
                format!("indices {i} and updates {u} must be integers and updates of one shape, of rank {}", d.rank())
            })?;
            one(d.dtype, d.shape.clone())
        }
        Op::ScatterNd { .. } => {
            arity(ins, 3, 3)?;
            let (d, i, u) = (&ins[0], &ins[1], &ins[2]);
            same_dtype(d, u, "data and updates")?;
            want(i.dtype.is_int() && i.rank() >= 1, || format!("indices must be integers of rank ≥ 1, got {i}"))?;
            let q = i.shape[i.rank() - 1];
            want(q <= d.rank(), || format!("index tuples of {q} exceed data rank {}", d.rank()))?;
            let mut expect = i.shape[..i.rank() - 1].to_vec();
            expect.extend_from_slice(&d.shape[q..]);
            want(u.shape == expect, || format!("updates must be {expect:?}, got {:?}", u.shape))?;
            one(d.dtype, d.shape.clone())
        }
        Op::ReverseSequence { batch_axis, .. } => {
            arity(ins, 2, 2)?;
            let (x, l) = (&ins[0], &ins[1]);
            want(l.dtype.is_int() && l.shape == [x.shape[*batch_axis]], || {
                format!("sequence_lens must be {} integers, got {l}", x.shape[*batch_axis])
            })?;
            one(x.dtype, x.shape.clone())
        }
        Op::Loss { reduction, with_log_prob, .. } => {
            arity(ins, 2, 3)?;
            let (x, t) = (&ins[0], &ins[1]);
            float_input(x, "scores")?;
            let mut expect = vec![x.shape[0]];
            expect.extend_from_slice(&x.shape[2..]);
            want(t.dtype.is_int() && t.shape == expect, || {
                format!("target must be integers of shape {expect:?}, got {t}")
            })?;
            if let Some(w) = ins.get(2) {
                want(w.shape == [x.shape[1]] && w.dtype == x.dtype, || {
                    format!("weight must be {}[{}], got {w}", x.dtype, x.shape[1])
                })?;
            }
            let loss = if *reduction == super::LossReduction::None { t.shape.clone() } else { vec![] };
            let mut out = vec![TensorType::new(x.dtype, loss)];
            if *with_log_prob {
                out.push(x.clone());
            }
            Ok(out)
        }
        Op::Attention(a) => super::infer_attention::attention(a, ins),
        Op::QuantizeLinear { axis, block, to, .. } => super::infer_quant::quantize(ins, *axis, *block, *to, false),
        Op::DequantizeLinear { axis, block, to } => super::infer_quant::quantize(ins, *axis, *block, *to, true),
        Op::Einsum { inputs, output } => super::infer_quant::einsum(inputs, output, ins),
        Op::BitCast(to) => {
            arity(ins, 1, 1)?;
            let x = x_or()?;
            want(to.size() == x.dtype.size(), || format!("BitCast from {} to {to}: widths differ", x.dtype))?;
            one(*to, x.shape.clone())
        }
        Op::RotaryEmbedding { num_heads, rotary_dim, has_position_ids, .. } => {
            super::infer_attention::rotary(*num_heads, *rotary_dim, *has_position_ids, ins)
        }
        Op::FusedElementwise(steps) => {
            want(!steps.is_empty(), || "empty fused chain".into())?;
            let shape = broadcast_all(ins.iter().map(|t| t.shape.as_slice()))?;
            let mut dts: Vec<DataType> = vec![];
            let arg = |a: &FusedArg, dts: &[DataType]| match *a {
                FusedArg::Input(i) => {
                    ins.get(i).map(|t| t.dtype).ok_or_else(|| format!("fused step reads missing input {i}"))
                }
                FusedArg::Step(s) => dts.get(s).copied().ok_or_else(|| format!("fused step reads later step {s}")),
            };
            for s in steps {
                let dt = match s {
                    FusedStep::Unary(u, a, dt) => {
                        want(unary_dtype(u, arg(a, &dts)?)? == *dt, || format!("fused step {s:?} has the wrong type"))?;
                        *dt
                    }
                    FusedStep::Binary(b, x, y, dt) => {
                        want(binary_dtype(*b, arg(x, &dts)?, arg(y, &dts)?)? == *dt, || {
                            format!("fused step {s:?} has the wrong type")
                        })?;
                        *dt
                    }
                };
                dts.push(dt);
            }
            one(dts[dts.len() - 1], shape)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Binary, Conv, Pool};

    fn t(dt: DataType, s: &[usize]) -> TensorType {
        TensorType::new(dt, s.to_vec())
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast(&[], &[5]).unwrap(), vec![5]);
        assert!(broadcast(&[2, 3], &[3, 2]).unwrap_err().contains("do not broadcast"));
    }

    #[test]
    fn matmul_rules() {
        let f = DataType::F32;
        let o = output_types(&Op::MatMul, &[t(f, &[5, 2, 3]), t(f, &[3, 4])]).unwrap();
        assert_eq!(o[0].shape, vec![5, 2, 4]);
        let o = output_types(&Op::MatMul, &[t(f, &[3]), t(f, &[3, 4])]).unwrap();
        assert_eq!(o[0].shape, vec![4]);
        let e = output_types(&Op::MatMul, &[t(f, &[2, 3]), t(f, &[4, 4])]).unwrap_err();
        assert!(e.contains("inner dimensions"), "{e}");
    }

    #[test]
    fn conv_and_pool_shapes() {
        let f = DataType::F32;
        let window =
            Window { kernel: vec![3, 3], strides: vec![2, 2], pads: vec![(1, 1), (1, 1)], dilations: vec![1, 1] };
        let conv = Op::Conv(Conv { window: window.clone(), group: 1, activation: None });
        let o = output_types(&conv, &[t(f, &[1, 3, 224, 224]), t(f, &[64, 3, 3, 3])]).unwrap();
        assert_eq!(o[0].shape, vec![1, 64, 112, 112]);
        let e = output_types(&conv, &[t(f, &[1, 4, 8, 8]), t(f, &[64, 3, 3, 3])]).unwrap_err();
        assert!(e.contains("group"), "{e}");
        let pool = |ceil| {
            Op::Pool(Pool {
                kind: PoolKind::Max,
                window: Window { pads: vec![(0, 0); 2], ..window.clone() },
                ceil_mode: ceil,
                with_indices: false,
                column_major: false,
            })
        };
        assert_eq!(output_types(&pool(false), &[t(f, &[1, 1, 6, 6])]).unwrap()[0].shape, vec![1, 1, 2, 2]);
        assert_eq!(output_types(&pool(true), &[t(f, &[1, 1, 6, 6])]).unwrap()[0].shape, vec![1, 1, 3, 3]);
    }

    #[test]
    fn dtype_rules() {
        let e = output_types(&Op::Binary(Binary::Add), &[t(DataType::F32, &[2]), t(DataType::I64, &[2])]).unwrap_err();
        assert!(e.contains("float32") && e.contains("int64"), "{e}");
        let o = output_types(&Op::Binary(Binary::Less), &[t(DataType::I32, &[2]), t(DataType::I32, &[1])]).unwrap();
        assert_eq!(o[0].dtype, DataType::Bool);
        assert!(output_types(&Op::Unary(Unary::Exp), &[t(DataType::I32, &[2])]).is_err());
    }
}
