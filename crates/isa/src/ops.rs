use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A compute engine of a NeuronCore (HW-NC-ENGINES).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Engine {
    /// Tensor engine: systolic array, matmul and transpose, writes PSUM.
    Tensor,
    /// Vector engine: two-input elementwise, reductions along the free axis.
    Vector,
    /// Scalar (activation) engine: one-input functions with scale and bias.
    Scalar,
    /// GpSimd engine: general SIMD, iota, cross-partition work.
    GpSimd,
}

impl Engine {
    /// All compute engines in display order.
    pub const ALL: [Engine; 4] = [Engine::Tensor, Engine::Vector, Engine::Scalar, Engine::GpSimd];

    /// Text prefix of the engine (`pe`, `dve`, `act`, `pool`).
    pub const fn prefix(self) -> &'static str {
        match self {
            Engine::Tensor => "pe",
            Engine::Vector => "dve",
            Engine::Scalar => "act",
            Engine::GpSimd => "pool",
        }
    }

    /// Human name.
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Tensor => "tensor",
            Engine::Vector => "vector",
            Engine::Scalar => "scalar",
            Engine::GpSimd => "gpsimd",
        }
    }

    /// Parses a prefix or a human name.
    pub fn parse(s: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| e.prefix() == s || e.name() == s)
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The text name.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("unknown {} `{}` (expected one of: {})", stringify!($name), s,
                        [$($text),+].join(", "))),
                }
            }
        }
    };
}

text_enum! {
    /// A binary ALU operator (HW-OP-ARITH, HW-OP-BITVEC). Arithmetic runs in
    /// FP32; comparisons give 1.0 or 0.0; bitwise ops need integer operands.
    AluOp {
        /// a + b
        Add => "add",
        /// a − b
        Sub => "sub",
        /// a · b
        Mul => "mul",
        /// a / b
        Div => "div",
        /// max(a, b)
        Max => "max",
        /// min(a, b)
        Min => "min",
        /// a ^ b
        Pow => "pow",
        /// max(|a|, |b|)
        AbsMax => "abs_max",
        /// min(|a|, |b|)
        AbsMin => "abs_min",
        /// a == b
        Eq => "eq",
        /// a != b
        Ne => "ne",
        /// a < b
        Lt => "lt",
        /// a <= b
        Le => "le",
        /// a > b
        Gt => "gt",
        /// a >= b
        Ge => "ge",
        /// (a != 0) && (b != 0)
        LogicalAnd => "logical_and",
        /// (a != 0) || (b != 0)
        LogicalOr => "logical_or",
        /// (a != 0) ^ (b != 0)
        LogicalXor => "logical_xor",
        /// bitwise and (integers)
        BitAnd => "bit_and",
        /// bitwise or (integers)
        BitOr => "bit_or",
        /// bitwise xor (integers)
        BitXor => "bit_xor",
        /// logical shift left (integers)
        ShiftLeft => "shl",
        /// logical shift right (integers)
        ShiftRight => "shr",
        /// returns a (no-op second stage)
        Bypass => "bypass",
    }
}

impl AluOp {
    /// True for the bitwise operators, which need integer dtypes (HW-OP-BITVEC).
    pub const fn is_bitwise(self) -> bool {
        matches!(self, AluOp::BitAnd | AluOp::BitOr | AluOp::BitXor | AluOp::ShiftLeft | AluOp::ShiftRight)
    }

    /// True for operators that are legal reductions (HW-OP-ARITH, HW-OP-BITVEC).
    pub const fn is_reduction(self) -> bool {
        matches!(
            self,
            AluOp::Add
                | AluOp::Sub
                | AluOp::Mul
                | AluOp::Max
                | AluOp::Min
                | AluOp::LogicalAnd
                | AluOp::LogicalOr
                | AluOp::LogicalXor
                | AluOp::BitAnd
                | AluOp::BitOr
                | AluOp::BitXor
        )
    }

    /// Applies the operator in FP32 (the engines' arithmetic, HW-DT-MATH).
    #[inline]
    pub fn apply_f32(self, a: f32, b: f32) -> f32 {
        match self {
            // Bitwise ops on floats act on the integer values (validation keeps them to ints).
            AluOp::BitAnd | AluOp::BitOr | AluOp::BitXor | AluOp::ShiftLeft | AluOp::ShiftRight => {
                self.apply_bits(a as i64 as u32, b as i64 as u32) as i32 as f32
            }
            AluOp::Add => a + b,
            AluOp::Sub => a - b,
            AluOp::Mul => a * b,
            AluOp::Div => a / b,
            // Every other operator is exact, or rounds once, when computed in f64.
            _ => self.apply_f64(a as f64, b as f64) as f32,
        }
    }

    /// The arithmetic definition in f64 (also the host reference of the
    /// kernels); NaN for the bitwise operators, which have no float meaning.
    pub fn apply_f64(self, a: f64, b: f64) -> f64 {
        let truth = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            AluOp::Add => a + b,
            AluOp::Sub => a - b,
            AluOp::Mul => a * b,
            AluOp::Div => a / b,
            AluOp::Max => a.max(b),
            AluOp::Min => a.min(b),
            AluOp::Pow => a.powf(b),
            AluOp::AbsMax => a.abs().max(b.abs()),
            AluOp::AbsMin => a.abs().min(b.abs()),
            AluOp::Eq => truth(a == b),
            AluOp::Ne => truth(a != b),
            AluOp::Lt => truth(a < b),
            AluOp::Le => truth(a <= b),
            AluOp::Gt => truth(a > b),
            AluOp::Ge => truth(a >= b),
            AluOp::LogicalAnd => truth(a != 0.0 && b != 0.0),
            AluOp::LogicalOr => truth(a != 0.0 || b != 0.0),
            AluOp::LogicalXor => truth((a != 0.0) ^ (b != 0.0)),
            AluOp::Bypass => a,
            AluOp::BitAnd | AluOp::BitOr | AluOp::BitXor | AluOp::ShiftLeft | AluOp::ShiftRight => f64::NAN,
        }
    }

    /// Applies a bitwise operator to raw 32-bit patterns.
    #[inline]
    pub fn apply_bits(self, a: u32, b: u32) -> u32 {
        match self {
            AluOp::BitAnd => a & b,
            AluOp::BitOr => a | b,
            AluOp::BitXor => a ^ b,
            AluOp::ShiftLeft => a.checked_shl(b).unwrap_or(0),
            AluOp::ShiftRight => a.checked_shr(b).unwrap_or(0),
            _ => self.apply_f32(a as f32, b as f32) as u32,
        }
    }

    /// Identity element when used as a reduction.
    pub fn identity(self) -> f32 {
        match self {
            AluOp::Mul | AluOp::LogicalAnd => 1.0,
            AluOp::Max => f32::NEG_INFINITY,
            AluOp::Min => f32::INFINITY,
            _ => 0.0,
        }
    }
}

text_enum! {
    /// A Scalar-engine activation function (HW-ACTFN-LIST), evaluated in FP32
    /// exactly (the hardware uses piecewise-polynomial tables; HW-ACTFN-SIM).
    ActFn {
        /// y = x (copy / cast)
        Identity => "identity",
        /// e^x
        Exp => "exp",
        /// ln x
        Log => "log",
        /// tanh x
        Tanh => "tanh",
        /// 1 / (1 + e^−x)
        Sigmoid => "sigmoid",
        /// max(x, 0)
        Relu => "relu",
        /// tanh-approximated GELU
        GeluTanh => "gelu_tanh",
        /// exact (erf) GELU
        GeluErf => "gelu",
        /// x · sigmoid(x)
        Silu => "silu",
        /// ln(1 + e^x)
        Softplus => "softplus",
        /// √x
        Sqrt => "sqrt",
        /// 1/√x
        Rsqrt => "rsqrt",
        /// 1/x
        Reciprocal => "reciprocal",
        /// x²
        Square => "square",
        /// |x|
        Abs => "abs",
        /// sign(x) ∈ {−1, 0, 1}
        Sign => "sign",
        /// erf(x)
        Erf => "erf",
    }
}

impl ActFn {
    /// Evaluates the function in FP32: computed in f64 and rounded once, so
    /// results are exact to FP32 rounding (the hardware's table approximations
    /// are not modelled, HW-ACTFN-SIM).
    #[inline]
    pub fn eval(self, x: f32) -> f32 {
        match self {
            // Exact in f32 already; skip the round trip.
            ActFn::Identity => x,
            ActFn::Relu => x.max(0.0),
            ActFn::Square => x * x,
            ActFn::Abs => x.abs(),
            ActFn::Sqrt => x.sqrt(),
            ActFn::Reciprocal => 1.0 / x,
            _ => self.eval_f64(x as f64) as f32,
        }
    }

    /// The mathematical definition in f64 (also the host reference of the kernels).
    pub fn eval_f64(self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            ActFn::Identity => x,
            ActFn::Exp => x.exp(),
            ActFn::Log => x.ln(),
            ActFn::Tanh => x.tanh(),
            ActFn::Sigmoid => sigmoid(x),
            ActFn::Relu => x.max(0.0),
            ActFn::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            ActFn::GeluErf => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            ActFn::Silu => x * sigmoid(x),
            ActFn::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            ActFn::Sqrt => x.sqrt(),
            ActFn::Rsqrt => 1.0 / x.sqrt(),
            ActFn::Reciprocal => 1.0 / x,
            ActFn::Square => x * x,
            ActFn::Abs => x.abs(),
            ActFn::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            ActFn::Erf => erf(x),
        }
    }
}

/// The error function, to ~1e-15 relative accuracy (series / continued
/// fraction via erfc), so activations are exact to FP32 rounding.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        // Maclaurin series: erf(a) = 2/√π Σ (−1)^n a^(2n+1) / (n! (2n+1)).
        let mut term = a;
        let mut sum = a;
        let a2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a2 / n;
            sum += term / (2.0 * n + 1.0);
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Continued fraction for erfc (Lentz), good for a ≥ 2.5.
        let mut f = a;
        let tiny = 1e-300;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..200 {
            let ak = k as f64 / 2.0;
            d = a + ak * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = a + ak / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} want {want}", erf(x));
        }
    }

    #[test]
    fn names_round_trip() {
        for op in AluOp::ALL {
            assert_eq!(op.name().parse::<AluOp>().unwrap(), *op);
        }
        for f in ActFn::ALL {
            assert_eq!(f.name().parse::<ActFn>().unwrap(), *f);
        }
        assert!("frobnicate".parse::<AluOp>().unwrap_err().contains("frobnicate"));
    }

    #[test]
    fn activations() {
        assert_eq!(ActFn::Relu.eval(-2.0), 0.0);
        assert!((ActFn::Silu.eval(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((ActFn::GeluErf.eval(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((ActFn::GeluTanh.eval(1.0) - 0.841_192).abs() < 1e-5);
        assert!((ActFn::Softplus.eval(100.0) - 100.0).abs() < 1e-5);
        assert_eq!(ActFn::Sign.eval(-0.0), 0.0);
    }

    #[test]
    fn alu() {
        assert_eq!(AluOp::Ge.apply_f32(2.0, 2.0), 1.0);
        assert_eq!(AluOp::BitXor.apply_bits(0b1100, 0b1010), 0b0110);
        assert_eq!(AluOp::ShiftLeft.apply_bits(1, 40), 0);
        assert_eq!(AluOp::AbsMax.apply_f32(-3.0, 2.0), 3.0);
    }
}
