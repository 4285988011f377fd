//! Elementwise ops: unary functions, binary arithmetic and logic, variadic Sum/Max/Min/Mean,
//! Where, Clip, Cast, Identity and inference-mode Dropout.

use crate::graph::{Binary, DataType, FusedArg, FusedStep, Op, Tensor, Unary};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

fn unary(c: &Ctx, u: Unary) -> PResult<Parsed> {
    c.req(0, "X")?;
    Ok(Parsed::op(Op::Unary(u), vec![0]))
}

macro_rules! plain_unary {
    ($($f:ident => $u:ident,)*) => {$(
        pub(super) fn $f(c: &Ctx) -> PResult<Parsed> {
            unary(c, Unary::$u)
        }
    )*};
}

plain_unary! {
    abs => Abs, neg => Neg, exp => Exp, log => Log, sqrt => Sqrt, reciprocal => Reciprocal, erf => Erf,
    tanh => Tanh, sigmoid => Sigmoid, relu => Relu, hard_swish => HardSwish, floor => Floor, ceil => Ceil,
    round => Round, sign => Sign, sin => Sin, cos => Cos, tan => Tan, asin => Asin, acos => Acos, atan => Atan,
    sinh => Sinh, cosh => Cosh, asinh => Asinh, acosh => Acosh, atanh => Atanh, softplus => Softplus,
    softsign => Softsign, mish => Mish, not => Not, bitwise_not => BitwiseNot, is_nan => IsNaN,
}

pub(super) fn leaky_relu(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::LeakyRelu(c.float("alpha", 0.01)?))
}

pub(super) fn gelu(c: &Ctx) -> PResult<Parsed> {
    let tanh = match c.string("approximate", "none")?.as_str() {
        "none" => false,
        "tanh" => true,
        other => return Err(c.attr_err("approximate", format!("must be `none` or `tanh`, got `{other}`"))),
    };
    unary(c, Unary::Gelu { tanh })
}

pub(super) fn hard_sigmoid(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::HardSigmoid { alpha: c.float("alpha", 0.2)?, beta: c.float("beta", 0.5)? })
}

pub(super) fn elu(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::Elu(c.float("alpha", 1.0)?))
}

pub(super) fn selu(c: &Ctx) -> PResult<Parsed> {
    let alpha = c.float("alpha", 1.673_263_192_176_818_8)?;
    let gamma = c.float("gamma", 1.050_701_022_148_132_3)?;
    unary(c, Unary::Selu { alpha, gamma })
}

pub(super) fn celu(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::Celu(c.float("alpha", 1.0)?))
}

pub(super) fn thresholded_relu(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::ThresholdedRelu(c.float("alpha", 1.0)?))
}

pub(super) fn swish(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::Swish(c.float("alpha", 1.0)?))
}

pub(super) fn is_inf(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::IsInf { positive: c.flag("detect_positive", true)?, negative: c.flag("detect_negative", true)? })
}

pub(super) fn shrink(c: &Ctx) -> PResult<Parsed> {
    unary(c, Unary::Shrink { bias: c.float("bias", 0.0)?, lambd: c.float("lambd", 0.5)? })
}

pub(super) fn clip(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "input")?;
    let (min, max) = if c.version < 11 {
        (c.float("min", f32::MIN as f64)?, c.float("max", f32::MAX as f64)?)
    } else {
        let bound = |i: usize, default: f64| -> PResult<f64> {
            match c.value(i)? {
                None => Ok(default),
                Some(t) if t.len() == 1 && t.dtype() == x.dtype => Ok(t.to_f64_vec()[0]),
                Some(t) => Err(c.type_err(format!("bound {i} must be a {} scalar, got {:?}", x.dtype, t))),
            }
        };
        (bound(1, f64::NEG_INFINITY)?, bound(2, f64::INFINITY)?)
    };
    unary(c, Unary::Clip { min, max })
}

fn binary(c: &Ctx, b: Binary) -> PResult<Parsed> {
    if c.version < 7 && c.has("broadcast") {
        return Err(c.unsupported("the pre-opset-7 `broadcast`/`axis` attributes"));
    }
    c.req(0, "A")?;
    c.req(1, "B")?;
    Ok(Parsed::op(Op::Binary(b), vec![0, 1]))
}

macro_rules! plain_binary {
    ($($f:ident => $b:ident,)*) => {$(
        pub(super) fn $f(c: &Ctx) -> PResult<Parsed> {
            binary(c, Binary::$b)
        }
    )*};
}

plain_binary! {
    add => Add, sub => Sub, mul => Mul, div => Div, pow => Pow, and => And, or => Or, xor => Xor,
    equal => Equal, less => Less, greater => Greater, less_or_equal => LessOrEqual,
    greater_or_equal => GreaterOrEqual, prelu => PRelu, bitwise_and => BitwiseAnd, bitwise_or => BitwiseOr,
    bitwise_xor => BitwiseXor,
}

pub(super) fn modulo(c: &Ctx) -> PResult<Parsed> {
    let fmod = c.flag("fmod", false)?;
    let a = c.ty(0, "A")?;
    if !fmod && a.dtype.is_float() {
        return Err(c.attr_err("fmod", "must be 1 for float inputs"));
    }
    binary(c, Binary::Mod { fmod })
}

pub(super) fn bit_shift(c: &Ctx) -> PResult<Parsed> {
    let b = match c.string("direction", "")?.as_str() {
        "LEFT" => Binary::ShiftLeft,
        "RIGHT" => Binary::ShiftRight,
        other => return Err(c.attr_err("direction", format!("must be LEFT or RIGHT, got `{other}`"))),
    };
    binary(c, b)
}

/// Sum/Max/Min/Mean of any number of inputs (broadcasting), as a fused chain of
/// binary steps; Mean ends with a scale by 1/n.
fn variadic(c: &Ctx, b: Binary, mean: bool) -> PResult<Parsed> {
    let n = c.n_inputs();
    let dt = c.ty(0, "data_0")?.dtype;
    for i in 1..n {
        c.req(i, "data")?;
    }
    if mean && !dt.is_float() {
        return Err(c.type_err(format!("Mean needs float inputs, got {dt}")));
    }
    if n == 1 && !mean {
        return Ok(Parsed::op(Op::Identity, vec![0]));
    }
    let mut steps = vec![];
    let mut acc = FusedArg::Input(0);
    for i in 1..n {
        steps.push(FusedStep::Binary(b, acc, FusedArg::Input(i), dt));
        acc = FusedArg::Step(steps.len() - 1);
    }
    if mean {
        steps.push(FusedStep::Unary(Unary::Scale(1.0 / n as f64), acc, dt));
    }
    Ok(Parsed::op(Op::FusedElementwise(steps), (0..n).collect()))
}

pub(super) fn sum(c: &Ctx) -> PResult<Parsed> {
    variadic(c, Binary::Add, false)
}

pub(super) fn max(c: &Ctx) -> PResult<Parsed> {
    variadic(c, Binary::Max, false)
}

pub(super) fn min(c: &Ctx) -> PResult<Parsed> {
    variadic(c, Binary::Min, false)
}

pub(super) fn mean(c: &Ctx) -> PResult<Parsed> {
    variadic(c, Binary::Add, true)
}

pub(super) fn where_(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "condition")?;
    c.req(1, "X")?;
    c.req(2, "Y")?;
    Ok(Parsed::op(Op::Where, vec![0, 1, 2]))
}

pub(super) fn cast(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let to = c.dtype_attr("to", c.int_req("to")?)?;
    Ok(Parsed::op(Op::Cast { to, saturate: c.flag("saturate", true)? }, vec![0]))
}

pub(super) fn cast_like(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    let to = c.ty(1, "target_type")?.dtype;
    Ok(Parsed::op(Op::Cast { to, saturate: c.flag("saturate", true)? }, vec![0]))
}

pub(super) fn identity(c: &Ctx) -> PResult<Parsed> {
    c.req(0, "input")?;
    Ok(Parsed::op(Op::Identity, vec![0]))
}

pub(super) fn dropout(c: &Ctx) -> PResult<Parsed> {
    let x = c.ty(0, "data")?.clone();
    let training = if c.version >= 12 {
        match c.value(2)? {
            None => false,
            Some(t) => t.to_i128_vec().first().is_some_and(|&v| v != 0),
        }
    } else {
        c.version < 7 && !c.flag("is_test", false)?
    };
    if training {
        let ratio = if c.version >= 12 {
            c.value(1)?.map_or(0.5, |t| t.to_f64_vec().first().copied().unwrap_or(0.5))
        } else {
            c.float("ratio", 0.5)?
        };
        if ratio != 0.0 {
            return Err(c.unsupported("training-mode Dropout (random masks)"));
        }
    }
    let mut extra = vec![];
    if c.node.output.get(1).is_some_and(|o| !o.is_empty()) {
        let mask = Tensor::from_i128(DataType::Bool, x.shape.clone(), vec![1; x.numel()]).map_err(|e| c.type_err(e))?;
        extra.push((1, mask));
    }
    Ok(Parsed::Op { op: Op::Identity, inputs: vec![0], extra })
}
