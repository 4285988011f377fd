//! Elementwise programs: a list of [`EwOp`]s over a step's inputs, immediates and
//! earlier results, and the translation of the graph's unary and binary functions,
//! casts and selects into the device's instructions (Scalar-engine activations,
//! Vector-engine `tensor_scalar` / `tensor_tensor` / `select`, GpSimd for `pow`).
//! Constant operands fold at build time.

use trainyard_isa::{ActFn, AluOp};

use crate::graph::{Binary, Unary};

/// An operand of an elementwise op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// Input `i` of the step.
    In(usize),
    /// A constant.
    Imm(f32),
    /// The result of op `i`.
    Step(usize),
}

/// One device operation of an elementwise program.
#[derive(Clone, Debug, PartialEq)]
pub enum EwOp {
    /// `f(x·scale + bias)` on the Scalar engine.
    Act {
        /// The function.
        f: ActFn,
        /// Its operand.
        x: Arg,
        /// Multiplier applied first.
        scale: f32,
        /// Added after the scale.
        bias: f32,
    },
    /// `a op b`.
    Alu {
        /// The operator.
        op: AluOp,
        /// First operand.
        a: Arg,
        /// Second operand.
        b: Arg,
    },
    /// `(x op0 s0) op1 s1` with immediates.
    Ts {
        /// The operand.
        x: Arg,
        /// First stage.
        first: (AluOp, f32),
        /// Optional second stage.
        second: Option<(AluOp, f32)>,
    },
    /// `pred ≠ 0 ? a : b`.
    Select {
        /// The condition.
        pred: Arg,
        /// Value where true.
        a: Arg,
        /// Value where false.
        b: Arg,
    },
    /// Round to the nearest integer, ties to even (through an int32 tile).
    RoundNe(Arg),
}

/// A chain of elementwise ops; the result is [`EwProgram::result`].
#[derive(Clone, Debug, PartialEq)]
pub struct EwProgram {
    /// The ops, in order.
    pub ops: Vec<EwOp>,
    /// What is stored.
    pub result: Arg,
}

impl EwProgram {
    /// A program returning `result` (an input: a copy, cast or broadcast).
    pub fn new(result: Arg) -> EwProgram {
        EwProgram { ops: Vec::new(), result }
    }

    fn push(&mut self, op: EwOp) -> Arg {
        self.ops.push(op);
        Arg::Step(self.ops.len() - 1)
    }

    /// `f(x·scale + bias)`.
    pub fn act(&mut self, f: ActFn, x: Arg, scale: f32, bias: f32) -> Arg {
        match x {
            Arg::Imm(v) => Arg::Imm(f.eval(v * scale + bias)),
            _ => self.push(EwOp::Act { f, x, scale, bias }),
        }
    }

    /// `a op b`.
    pub fn alu(&mut self, op: AluOp, a: Arg, b: Arg) -> Arg {
        match (a, b) {
            (Arg::Imm(x), Arg::Imm(y)) => Arg::Imm(op.apply_f32(x, y)),
            _ => self.push(EwOp::Alu { op, a, b }),
        }
    }

    /// `(x op0 s0) op1 s1`.
    pub fn ts(&mut self, x: Arg, first: (AluOp, f32), second: Option<(AluOp, f32)>) -> Arg {
        if let Arg::Imm(v) = x {
            let y = first.0.apply_f32(v, first.1);
            return Arg::Imm(second.map_or(y, |(op, s)| op.apply_f32(y, s)));
        }
        self.push(EwOp::Ts { x, first, second })
    }

    /// `pred ? a : b`.
    pub fn select(&mut self, pred: Arg, a: Arg, b: Arg) -> Arg {
        match pred {
            Arg::Imm(p) => {
                if p != 0.0 {
                    a
                } else {
                    b
                }
            }
            _ => self.push(EwOp::Select { pred, a, b }),
        }
    }

    /// Rounds half to even.
    pub fn round(&mut self, x: Arg) -> Arg {
        match x {
            Arg::Imm(v) => Arg::Imm(v.round_ties_even()),
            _ => self.push(EwOp::RoundNe(x)),
        }
    }

    /// ⌊x⌋ = r − (r > x) with r = round(x).
    pub fn floor(&mut self, x: Arg) -> Arg {
        let r = self.round(x);
        let gt = self.alu(AluOp::Gt, r, x);
        self.alu(AluOp::Sub, r, gt)
    }

    /// ⌈x⌉ = r + (r < x).
    pub fn ceil(&mut self, x: Arg) -> Arg {
        let r = self.round(x);
        let lt = self.alu(AluOp::Lt, r, x);
        self.alu(AluOp::Add, r, lt)
    }

    /// Truncation toward zero: sign(x)·⌊|x|⌋.
    pub fn trunc(&mut self, x: Arg) -> Arg {
        let a = self.act(ActFn::Abs, x, 1.0, 0.0);
        let f = self.floor(a);
        let s = self.act(ActFn::Sign, x, 1.0, 0.0);
        self.alu(AluOp::Mul, f, s)
    }

    /// max(x, 0) + alpha·(e^min(x,0) − 1) (ELU's negative branch).
    fn elu(&mut self, x: Arg, alpha: f32) -> Arg {
        let m = self.ts(x, (AluOp::Min, 0.0), None);
        let e = self.act(ActFn::Exp, m, 1.0, 0.0);
        let t = self.ts(e, (AluOp::Add, -1.0), Some((AluOp::Mul, alpha)));
        let r = self.act(ActFn::Relu, x, 1.0, 0.0);
        self.alu(AluOp::Add, r, t)
    }

    /// The graph's unary function `u` of `x`; `int`: the operand type is an integer.
    pub fn unary(&mut self, u: &Unary, x: Arg, int: bool) -> Result<Arg, String> {
        use Unary::*;
        let act = |p: &mut Self, f| p.act(f, x, 1.0, 0.0);
        Ok(match u {
            Abs => act(self, ActFn::Abs),
            Neg => self.ts(x, (AluOp::Mul, -1.0), None),
            Exp => act(self, ActFn::Exp),
            Log => act(self, ActFn::Log),
            Sqrt => act(self, ActFn::Sqrt),
            Reciprocal => act(self, ActFn::Reciprocal),
            Erf => act(self, ActFn::Erf),
            Tanh => act(self, ActFn::Tanh),
            Sigmoid => act(self, ActFn::Sigmoid),
            Relu => act(self, ActFn::Relu),
            Softplus => act(self, ActFn::Softplus),
            Sign => act(self, ActFn::Sign),
            Gelu { tanh } => act(self, if *tanh { ActFn::GeluTanh } else { ActFn::GeluErf }),
            LeakyRelu(a) => {
                let t = self.ts(x, (AluOp::Mul, *a as f32), None);
                self.alu(if *a <= 1.0 { AluOp::Max } else { AluOp::Min }, x, t)
            }
            HardSigmoid { alpha, beta } => {
                let t = self.ts(x, (AluOp::Mul, *alpha as f32), Some((AluOp::Add, *beta as f32)));
                self.ts(t, (AluOp::Max, 0.0), Some((AluOp::Min, 1.0)))
            }
            HardSwish => {
                let t = self.ts(x, (AluOp::Mul, 1.0 / 6.0), Some((AluOp::Add, 0.5)));
                let h = self.ts(t, (AluOp::Max, 0.0), Some((AluOp::Min, 1.0)));
                self.alu(AluOp::Mul, x, h)
            }
            Floor if int => x,
            Ceil if int => x,
            Round if int => x,
            Floor => self.floor(x),
            Ceil => self.ceil(x),
            Round => self.round(x),
            Softsign => {
                let a = act(self, ActFn::Abs);
                let d = self.ts(a, (AluOp::Add, 1.0), None);
                self.alu(AluOp::Div, x, d)
            }
            Elu(a) => self.elu(x, *a as f32),
            Selu { alpha, gamma } => {
                let e = self.elu(x, *alpha as f32);
                self.ts(e, (AluOp::Mul, *gamma as f32), None)
            }
            Celu(a) => {
                let m = self.ts(x, (AluOp::Min, 0.0), None);
                let e = self.act(ActFn::Exp, m, 1.0 / *a as f32, 0.0);
                let t = self.ts(e, (AluOp::Add, -1.0), Some((AluOp::Mul, *a as f32)));
                let r = act(self, ActFn::Relu);
                self.alu(AluOp::Add, r, t)
            }
            ThresholdedRelu(a) => {
                let g = self.ts(x, (AluOp::Gt, *a as f32), None);
                self.alu(AluOp::Mul, x, g)
            }
            Mish => {
                let s = act(self, ActFn::Softplus);
                let t = self.act(ActFn::Tanh, s, 1.0, 0.0);
                self.alu(AluOp::Mul, x, t)
            }
            Swish(a) => {
                let s = self.act(ActFn::Sigmoid, x, *a as f32, 0.0);
                self.alu(AluOp::Mul, x, s)
            }
            Not => self.ts(x, (AluOp::Eq, 0.0), None),
            IsNaN => self.alu(AluOp::Ne, x, x),
            IsInf { positive, negative } => match (positive, negative) {
                (true, true) => {
                    let a = act(self, ActFn::Abs);
                    self.ts(a, (AluOp::Eq, f32::INFINITY), None)
                }
                (true, false) => self.ts(x, (AluOp::Eq, f32::INFINITY), None),
                (false, true) => self.ts(x, (AluOp::Eq, f32::NEG_INFINITY), None),
                (false, false) => Arg::Imm(0.0),
            },
            Shrink { bias, lambd } => {
                let (b, l) = (*bias as f32, *lambd as f32);
                let hi = self.ts(x, (AluOp::Gt, l), None);
                let lo = self.ts(x, (AluOp::Lt, -l), None);
                let xm = self.ts(x, (AluOp::Add, -b), None);
                let xp = self.ts(x, (AluOp::Add, b), None);
                let a = self.alu(AluOp::Mul, xm, hi);
                let c = self.alu(AluOp::Mul, xp, lo);
                self.alu(AluOp::Add, a, c)
            }
            Scale(s) => self.ts(x, (AluOp::Mul, *s as f32), None),
            Clip { min, max } => {
                let (lo, hi) = (*min as f32, *max as f32);
                match (lo.is_finite() || lo > 0.0, hi.is_finite() || hi < 0.0) {
                    (true, true) => self.ts(x, (AluOp::Max, lo), Some((AluOp::Min, hi))),
                    (true, false) => self.ts(x, (AluOp::Max, lo), None),
                    (false, true) => self.ts(x, (AluOp::Min, hi), None),
                    (false, false) => x,
                }
            }
            Sinh | Cosh => {
                // (e^x ∓ e^−x) / 2.
                let a = self.act(ActFn::Exp, x, 1.0, 0.0);
                let b = self.act(ActFn::Exp, x, -1.0, 0.0);
                let op = if matches!(u, Sinh) { AluOp::Sub } else { AluOp::Add };
                let s = self.alu(op, a, b);
                self.ts(s, (AluOp::Mul, 0.5), None)
            }
            Asinh | Acosh => {
                // ln(x + √(x² ± 1)).
                let sq = self.act(ActFn::Square, x, 1.0, 0.0);
                let r = self.act(ActFn::Sqrt, sq, 1.0, if matches!(u, Asinh) { 1.0 } else { -1.0 });
                let s = self.alu(AluOp::Add, x, r);
                self.act(ActFn::Log, s, 1.0, 0.0)
            }
            Atanh => {
                // ln((1 + x) / (1 − x)) / 2.
                let num = self.ts(x, (AluOp::Add, 1.0), None);
                let den = self.ts(x, (AluOp::Mul, -1.0), Some((AluOp::Add, 1.0)));
                let q = self.alu(AluOp::Div, num, den);
                let l = self.act(ActFn::Log, q, 1.0, 0.0);
                self.ts(l, (AluOp::Mul, 0.5), None)
            }
            Sin | Cos | Tan | Asin | Acos | Atan | BitwiseNot => {
                return Err(format!("{u:?} has no device instruction"))
            }
        })
    }

    /// The graph's binary function of `a` and `b`; `int`: integer operands (division
    /// and remainders truncate).
    pub fn binary(&mut self, op: Binary, a: Arg, b: Arg, int: bool) -> Result<Arg, String> {
        use Binary::*;
        Ok(match op {
            Add => self.alu(AluOp::Add, a, b),
            Sub => self.alu(AluOp::Sub, a, b),
            Mul => self.alu(AluOp::Mul, a, b),
            Div if int => {
                let q = self.alu(AluOp::Div, a, b);
                self.trunc(q)
            }
            Div => self.alu(AluOp::Div, a, b),
            Pow => self.alu(AluOp::Pow, a, b),
            Max => self.alu(AluOp::Max, a, b),
            Min => self.alu(AluOp::Min, a, b),
            Equal => self.alu(AluOp::Eq, a, b),
            Less => self.alu(AluOp::Lt, a, b),
            Greater => self.alu(AluOp::Gt, a, b),
            LessOrEqual => self.alu(AluOp::Le, a, b),
            GreaterOrEqual => self.alu(AluOp::Ge, a, b),
            And => self.alu(AluOp::LogicalAnd, a, b),
            Or => self.alu(AluOp::LogicalOr, a, b),
            Xor => self.alu(AluOp::LogicalXor, a, b),
            Mod { fmod } => {
                // a − b·q with q the truncated (fmod) or floored (Python) quotient.
                let q = self.alu(AluOp::Div, a, b);
                let q = if fmod { self.trunc(q) } else { self.floor(q) };
                let p = self.alu(AluOp::Mul, b, q);
                self.alu(AluOp::Sub, a, p)
            }
            PRelu => {
                let pos = self.act(ActFn::Relu, a, 1.0, 0.0);
                let neg = self.ts(a, (AluOp::Min, 0.0), None);
                let s = self.alu(AluOp::Mul, neg, b);
                self.alu(AluOp::Add, pos, s)
            }
            ShiftLeft | ShiftRight | BitwiseAnd | BitwiseOr | BitwiseXor => {
                return Err(format!("{op:?} on integers has no device lowering"))
            }
        })
    }

    /// Inputs the program reads.
    pub(super) fn inputs_read(&self) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::new();
        let mut see = |a: &Arg| {
            if let Arg::In(i) = a {
                if !v.contains(i) {
                    v.push(*i);
                }
            }
        };
        for op in &self.ops {
            match op {
                EwOp::Act { x, .. } | EwOp::Ts { x, .. } | EwOp::RoundNe(x) => see(x),
                EwOp::Alu { a, b, .. } => {
                    see(a);
                    see(b);
                }
                EwOp::Select { pred, a, b } => {
                    see(pred);
                    see(a);
                    see(b);
                }
            }
        }
        see(&self.result);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_operands_fold() {
        let mut p = EwProgram::new(Arg::In(0));
        assert_eq!(p.alu(AluOp::Add, Arg::Imm(1.0), Arg::Imm(2.0)), Arg::Imm(3.0));
        assert_eq!(p.unary(&Unary::Relu, Arg::Imm(-2.0), false).unwrap(), Arg::Imm(0.0));
        assert!(p.ops.is_empty());
        assert!(p.unary(&Unary::Sin, Arg::In(0), false).is_err());
    }
}
