//! Elementwise programs: any chain of unary and binary functions, selects and casts
//! over inputs that broadcast to one output, as one tiled device routine.
//!
//! A [`EwProgram`] is a list of [`EwOp`]s over the step's inputs, immediates and
//! earlier results; [`EwProgram::unary`] and [`EwProgram::binary`] translate the graph's
//! functions into the device's instructions (Scalar-engine activations, Vector-engine
//! `tensor_scalar` / `tensor_tensor` / `select`, GpSimd for `pow`).
//!
//! [`Elementwise`] emits a program over HBM tensors. The output's axes are coalesced
//! with every input's broadcast strides (adjacent axes that are contiguous for all of
//! them merge, size-1 axes drop), then:
//! * one remaining axis (same-shape inputs and scalars): the data streams as flat
//!   `[128, F]` blocks;
//! * else the largest non-last axis goes on the partitions, the last on the free axis,
//!   the others are looped. An input that is constant along the free axis (a
//!   per-channel scale, a per-row statistic) is loaded as one `[P, 1]` column and
//!   applied as a per-partition scalar operand; one constant along the partitions is
//!   loaded with a stride-0 partition DMA.
//!
//! Every value is computed in f32 SBUF tiles whatever the tensors' types: loads and
//! the store convert (integers exactly below 2^24, floats to nearest even), so
//! comparisons yield 0/1, integer division truncates through [`EwProgram::trunc`] and
//! casts to integers truncate like ONNX's `Cast`.

use trainyard_arch::DType;
use trainyard_isa::{ActFn, AluOp, Ap, Dim, Engine, Space};
use trainyard_kernels::{BuildError, HbmTensor, Stage, View};

use super::emit::{Cx, Emitter, Io};
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
            Sin | Cos | Tan | Asin | Acos | Atan | Sinh | Cosh | Asinh | Acosh | Atanh | BitwiseNot => {
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
    fn inputs_read(&self) -> Vec<usize> {
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

/// An elementwise step: inputs broadcast to the output.
#[derive(Clone, Debug)]
pub struct Elementwise {
    /// The program.
    pub prog: EwProgram,
    /// The routine's name in reports.
    pub label: &'static str,
}

/// SBUF bytes per partition for the routine's tiles.
const BUDGET: usize = 96 * 1024;
/// Largest free size of a tile.
const F_MAX: usize = 2048;

/// Axes of the output after merging, with every operand's element strides.
struct Layout {
    dims: Vec<usize>,
    /// Per operand (inputs, then the output): strides over `dims`.
    strides: Vec<Vec<i64>>,
}

/// Broadcast strides of `shape` against `out` (right-aligned), in elements.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let r = out.len();
    let mut s = vec![0i64; r];
    let mut acc = 1i64;
    for k in (0..shape.len()).rev() {
        let o = r + k - shape.len();
        if shape[k] != 1 || out[o] == 1 {
            s[o] = if shape[k] == 1 { 0 } else { acc };
        }
        acc *= shape[k] as i64;
    }
    s
}

fn coalesce(shapes: &[&[usize]], out: &[usize]) -> Layout {
    let mut all: Vec<Vec<i64>> = shapes.iter().map(|s| broadcast_strides(s, out)).collect();
    all.push(broadcast_strides(out, out));
    let mut dims: Vec<usize> = Vec::new();
    let mut strides: Vec<Vec<i64>> = vec![Vec::new(); all.len()];
    for (k, &n) in out.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !dims.is_empty()
            && all.iter().zip(&strides).all(|(s, acc)| acc.last().is_some_and(|&prev| prev == s[k] * n as i64));
        if mergeable {
            if let Some(last) = dims.last_mut() {
                *last *= n;
            }
            for (acc, s) in strides.iter_mut().zip(&all) {
                if let Some(prev) = acc.last_mut() {
                    *prev = s[k];
                }
            }
        } else {
            dims.push(n);
            for (acc, s) in strides.iter_mut().zip(&all) {
                acc.push(s[k]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        for acc in strides.iter_mut() {
            acc.push(0);
        }
    }
    Layout { dims, strides }
}

/// One block of work: `p` partitions × `f` columns, and per operand the HBM pattern.
struct Block {
    p: usize,
    f: usize,
    /// Per operand: (element offset, partition stride, free stride).
    at: Vec<(i64, i64, i64)>,
}

fn blocks(l: &Layout, p_max: usize, f_max: usize) -> Vec<Block> {
    let nops = l.strides.len();
    let d = l.dims.len();
    let mut out = Vec::new();
    if d == 1 {
        let n = l.dims[0];
        let per = n.div_ceil(p_max).clamp(1, f_max);
        let mut start = 0;
        while start < n {
            let rem = n - start;
            let (p, f) = if rem >= p_max * per {
                (p_max, per)
            } else if rem >= per {
                (rem / per, per)
            } else {
                (1, rem)
            };
            let at = (0..nops)
                .map(|o| {
                    let s = l.strides[o][0];
                    (start as i64 * s, f as i64 * s, s)
                })
                .collect();
            out.push(Block { p, f, at });
            start += p * f;
        }
        return out;
    }
    let last = d - 1;
    let pd = (0..last).max_by_key(|&k| (l.dims[k], k)).unwrap_or(0);
    let outer: Vec<usize> = (0..last).filter(|&k| k != pd).collect();
    let n_outer: usize = outer.iter().map(|&k| l.dims[k]).product();
    for mut idx in 0..n_outer {
        let mut base = vec![0i64; nops];
        for &k in outer.iter().rev() {
            let i = (idx % l.dims[k]) as i64;
            idx /= l.dims[k];
            for (o, b) in base.iter_mut().enumerate() {
                *b += i * l.strides[o][k];
            }
        }
        for p0 in (0..l.dims[pd]).step_by(p_max) {
            let p = p_max.min(l.dims[pd] - p0);
            for f0 in (0..l.dims[last]).step_by(f_max) {
                let f = f_max.min(l.dims[last] - f0);
                let at = (0..nops)
                    .map(|o| {
                        let (sp, sf) = (l.strides[o][pd], l.strides[o][last]);
                        (base[o] + p0 as i64 * sp + f0 as i64 * sf, sp, sf)
                    })
                    .collect();
                out.push(Block { p, f, at });
            }
        }
    }
    out
}

/// The HBM pattern of operand `t` in a block: `[p, f]`, or `[p, 1]` when constant
/// along the free axis.
fn hbm_ap(t: &HbmTensor, (off, sp, sf): (i64, i64, i64), p: usize, f: usize) -> Ap {
    let es = t.dtype().size() as i64;
    let cols = if sf == 0 { 1 } else { f };
    let dims = [Dim { stride: if sf == 0 { 1 } else { sf }, size: cols as u32 }];
    Ap::new(Space::Hbm, 0, p as u32, sp, (t.offset() as i64 + off * es) as u64, &dims, t.dtype())
}

/// A value inside a block.
#[derive(Clone)]
enum Val {
    /// A `[p, f]` tile view.
    Full(View),
    /// A `[p, 1]` tile view, constant along the free axis.
    Col(View),
    /// A constant.
    Imm(f32),
}

impl Val {
    fn is_full(&self) -> bool {
        matches!(self, Val::Full(_))
    }
}

/// Per-core tiles of the routine.
struct Tiles {
    inputs: Vec<trainyard_kernels::TilePool>,
    steps: Vec<trainyard_kernels::TilePool>,
    ints: Option<trainyard_kernels::TilePool>,
    consts: Vec<(u32, View)>,
    const_tiles: Vec<trainyard_kernels::Tile>,
}

impl Elementwise {
    /// An elementwise step computing `prog`.
    pub fn new(prog: EwProgram) -> Elementwise {
        Elementwise { prog, label: "elementwise" }
    }

    fn emit_blocks(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        let out = io.output(0)?;
        let shapes: Vec<&[usize]> = io.inputs.iter().map(|t| t.shape()).collect();
        let layout = coalesce(&shapes, out.shape());
        let n_ops = self.prog.ops.len();
        let read = self.prog.inputs_read();
        let p_max = cx.kb.chip().core.sbuf.partitions as usize;
        let slots = (read.len() + n_ops + 1).max(1);
        let f_max = (BUDGET / (slots * 2 * 4) / 64 * 64).clamp(64, F_MAX);
        let all = blocks(&layout, p_max, f_max);
        let f_tile = all.iter().map(|b| b.f).max().unwrap_or(1);
        let needs_int = self.prog.ops.iter().any(|o| matches!(o, EwOp::RoundNe(_)));
        let home = cx.kb.current_core();
        let n_cores = (cx.cores as usize).clamp(1, all.len().max(1));
        let per_core = all.len().div_ceil(n_cores);
        let mut held: Vec<Tiles> = Vec::new();
        for (core, part) in all.chunks(per_core.max(1)).enumerate() {
            cx.kb.core(core as u16)?;
            let mut t = Tiles {
                inputs: Vec::new(),
                steps: Vec::new(),
                ints: None,
                consts: Vec::new(),
                const_tiles: Vec::new(),
            };
            for _ in 0..io.inputs.len() {
                t.inputs.push(cx.kb.sbuf_pool(&[p_max, f_tile], DType::F32, 2)?);
            }
            for _ in 0..n_ops {
                t.steps.push(cx.kb.sbuf_pool(&[p_max, f_tile], DType::F32, 2)?);
            }
            if needs_int {
                t.ints = Some(cx.kb.sbuf_pool(&[p_max, f_tile], DType::I32, 2)?);
            }
            for b in part {
                self.block(cx, io, &mut t, b, &read, p_max)?;
            }
            held.push(t);
        }
        for t in held {
            for pool in t.inputs.into_iter().chain(t.steps).chain(t.ints) {
                cx.kb.free_pool(pool)?;
            }
            for tile in t.const_tiles {
                cx.kb.free(tile)?;
            }
        }
        cx.kb.core(home)?;
        Ok(())
    }

    /// A `[p, 1]` constant column holding `v` on the current core.
    fn constant(cx: &mut Cx, t: &mut Tiles, v: f32, p_max: usize) -> Result<View, BuildError> {
        if let Some((_, view)) = t.consts.iter().find(|(bits, _)| *bits == v.to_bits()) {
            return Ok(view.clone());
        }
        let tile = cx.kb.sbuf_tile(&[p_max, 1], DType::F32)?;
        cx.kb.memset(Engine::GpSimd, &tile, v as f64)?;
        let view = tile.view();
        t.consts.push((v.to_bits(), view.clone()));
        t.const_tiles.push(tile);
        Ok(view)
    }

    fn block(
        &self,
        cx: &mut Cx,
        io: &Io,
        t: &mut Tiles,
        b: &Block,
        read: &[usize],
        p_max: usize,
    ) -> Result<(), BuildError> {
        let (p, f) = (b.p, b.f);
        let mut ins: Vec<Option<Val>> = vec![None; io.inputs.len()];
        for &i in read {
            let (src, at) = (&io.inputs[i], b.at[i]);
            let tile = t.inputs[i].next().part(0..p);
            let val = if at.2 == 0 {
                let v = tile.cols(0..1);
                cx.kb.dma(&v, hbm_ap(src, at, p, f))?;
                Val::Col(v)
            } else {
                let v = tile.cols(0..f);
                cx.kb.dma(&v, hbm_ap(src, at, p, f))?;
                Val::Full(v)
            };
            ins[i] = Some(val);
        }
        let mut steps: Vec<Val> = Vec::with_capacity(self.prog.ops.len());
        let missing = || BuildError::Kernel { kernel: "elementwise".into(), message: "operand not computed".into() };
        for (k, op) in self.prog.ops.iter().enumerate() {
            let get = |a: &Arg| -> Result<Val, BuildError> {
                match *a {
                    Arg::In(i) => ins.get(i).cloned().flatten().ok_or_else(missing),
                    Arg::Imm(v) => Ok(Val::Imm(v)),
                    Arg::Step(s) => steps.get(s).cloned().ok_or_else(missing),
                }
            };
            let tile = t.steps[k].next().part(0..p);
            let val = match op {
                EwOp::Act { f: func, x, scale, bias } => {
                    let (dst, src) = match get(x)? {
                        Val::Full(v) => (Val::Full(tile.cols(0..f)), v),
                        Val::Col(v) => (Val::Col(tile.cols(0..1)), v),
                        Val::Imm(v) => (Val::Imm(func.eval(v * scale + bias)), tile.cols(0..1)),
                    };
                    if let Val::Full(d) | Val::Col(d) = &dst {
                        let bias_col =
                            if *bias != 0.0 { Some(Self::constant(cx, t, *bias, p_max)?.part(0..p)) } else { None };
                        cx.kb.activation(*func, d, &src, *scale, bias_col.as_ref().map(|v| v as _), None)?;
                    }
                    dst
                }
                EwOp::Ts { x, first, second } => {
                    let stage = |(op, s): (AluOp, f32)| Stage::new(op, s);
                    let engine = if first.0 == AluOp::Pow || second.is_some_and(|s| s.0 == AluOp::Pow) {
                        Engine::GpSimd
                    } else {
                        Engine::Vector
                    };
                    match get(x)? {
                        Val::Full(v) => {
                            let d = tile.cols(0..f);
                            cx.kb.tensor_scalar(engine, &d, &v, stage(*first), second.map(stage))?;
                            Val::Full(d)
                        }
                        Val::Col(v) => {
                            let d = tile.cols(0..1);
                            cx.kb.tensor_scalar(engine, &d, &v, stage(*first), second.map(stage))?;
                            Val::Col(d)
                        }
                        Val::Imm(v) => {
                            let y = first.0.apply_f32(v, first.1);
                            Val::Imm(second.map_or(y, |(o, s)| o.apply_f32(y, s)))
                        }
                    }
                }
                EwOp::Alu { op, a, b: bb } => {
                    let engine = if *op == AluOp::Pow { Engine::GpSimd } else { Engine::Vector };
                    let (va, vb) = (get(a)?, get(bb)?);
                    let full = va.is_full() || vb.is_full();
                    let d = if full { tile.cols(0..f) } else { tile.cols(0..1) };
                    match (&va, &vb) {
                        (Val::Imm(x), Val::Imm(y)) => Val::Imm(op.apply_f32(*x, *y)),
                        (Val::Full(x) | Val::Col(x), Val::Imm(s)) => {
                            cx.kb.tensor_scalar(engine, &d, x, Stage::new(*op, *s), None)?;
                            if full {
                                Val::Full(d)
                            } else {
                                Val::Col(d)
                            }
                        }
                        (Val::Imm(s), Val::Full(x) | Val::Col(x)) => {
                            cx.kb.tensor_scalar(engine, &d, x, Stage::new(*op, *s).reversed(), None)?;
                            if full {
                                Val::Full(d)
                            } else {
                                Val::Col(d)
                            }
                        }
                        (Val::Full(x), Val::Col(c)) => {
                            cx.kb.tensor_scalar(engine, &d, x, Stage::new(*op, c), None)?;
                            Val::Full(d)
                        }
                        (Val::Col(c), Val::Full(x)) => {
                            cx.kb.tensor_scalar(engine, &d, x, Stage::new(*op, c).reversed(), None)?;
                            Val::Full(d)
                        }
                        (Val::Full(x) | Val::Col(x), Val::Full(y) | Val::Col(y)) => {
                            cx.kb.tensor_tensor(engine, *op, &d, x, y)?;
                            if full {
                                Val::Full(d)
                            } else {
                                Val::Col(d)
                            }
                        }
                    }
                }
                EwOp::Select { pred, a, b: bb } => {
                    let vals = [get(pred)?, get(a)?, get(bb)?];
                    let full = vals.iter().any(Val::is_full);
                    let width = if full { f } else { 1 };
                    let mut views = Vec::with_capacity(3);
                    for v in vals {
                        let view = match v {
                            Val::Full(x) => x,
                            Val::Col(x) if full => x.broadcast_free(width),
                            Val::Col(x) => x,
                            Val::Imm(c) => {
                                let col = Self::constant(cx, t, c, p_max)?.part(0..p);
                                if full {
                                    col.broadcast_free(width)
                                } else {
                                    col
                                }
                            }
                        };
                        views.push(view);
                    }
                    let d = tile.cols(0..width);
                    cx.kb.select(Engine::Vector, &d, &views[0], &views[1], &views[2])?;
                    if full {
                        Val::Full(d)
                    } else {
                        Val::Col(d)
                    }
                }
                EwOp::RoundNe(x) => match get(x)? {
                    Val::Imm(v) => Val::Imm(v.round_ties_even()),
                    v @ (Val::Full(_) | Val::Col(_)) => {
                        let (Val::Full(src) | Val::Col(src)) = &v else { return Err(missing()) };
                        let w = if v.is_full() { f } else { 1 };
                        let ints = t.ints.as_mut().ok_or_else(missing)?.next().part(0..p).cols(0..w);
                        let d = tile.cols(0..w);
                        cx.kb.copy(Engine::Vector, &ints, src)?;
                        cx.kb.copy(Engine::Vector, &d, &ints)?;
                        if v.is_full() {
                            Val::Full(d)
                        } else {
                            Val::Col(d)
                        }
                    }
                },
            };
            steps.push(val);
        }
        let result = match self.prog.result {
            Arg::In(i) => ins.get(i).cloned().flatten().ok_or_else(missing)?,
            Arg::Imm(v) => Val::Imm(v),
            Arg::Step(s) => steps.get(s).cloned().ok_or_else(missing)?,
        };
        let out = io.output(0)?;
        let dst = hbm_ap(out, b.at[io.inputs.len()], p, f);
        let src = match result {
            Val::Full(v) => v,
            Val::Col(v) => v.broadcast_free(f),
            Val::Imm(c) => Self::constant(cx, t, c, p_max)?.part(0..p).broadcast_free(f),
        };
        cx.kb.dma(dst, &src)?;
        Ok(())
    }
}

impl Emitter for Elementwise {
    fn kernels(&self) -> String {
        self.label.to_string()
    }

    fn batch_separable(&self, batched: &[bool], shapes: &[Vec<usize>], out: &[usize]) -> bool {
        let n = out.first().copied().unwrap_or(1);
        batched.iter().zip(shapes).all(|(&b, s)| {
            if b {
                s.len() == out.len() && s.first() == Some(&n)
            } else {
                s.len() < out.len() || s.first() == Some(&1)
            }
        })
    }

    fn emit(&self, cx: &mut Cx, io: &Io) -> Result<(), BuildError> {
        self.emit_blocks(cx, io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_merges_contiguous_axes_and_drops_ones() {
        // [2, 3, 4] + [3, 1]: axis 0 broadcast, axis 2 broadcast.
        let l = coalesce(&[&[2, 3, 4], &[3, 1]], &[2, 3, 4]);
        assert_eq!(l.dims, vec![2, 3, 4]);
        assert_eq!(l.strides[1], vec![0, 1, 0]);
        // Same shapes merge into one axis.
        let l = coalesce(&[&[2, 3, 4], &[2, 3, 4]], &[2, 3, 4]);
        assert_eq!((l.dims.clone(), l.strides[0].clone()), (vec![24], vec![1]));
        // A row vector: [6, 4] with [4].
        let l = coalesce(&[&[2, 3, 4], &[4]], &[2, 3, 4]);
        assert_eq!((l.dims.clone(), l.strides[1].clone()), (vec![6, 4], vec![0, 1]));
        let l = coalesce(&[&[1]], &[1, 1]);
        assert_eq!(l.dims, vec![1]);
    }

    #[test]
    fn blocks_cover_every_element_once() {
        for (shape, other) in [(vec![1000usize], vec![1usize]), (vec![3, 300, 7], vec![300, 1]), (vec![130], vec![130])]
        {
            let l = coalesce(&[&shape, &other], &shape);
            let n: usize = shape.iter().product();
            let mut seen = vec![0u8; n];
            for b in blocks(&l, 128, 64) {
                let (off, sp, sf) = b.at[2];
                for i in 0..b.p {
                    for j in 0..b.f {
                        seen[(off + i as i64 * sp + j as i64 * sf) as usize] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{shape:?}");
        }
    }

    #[test]
    fn constant_operands_fold() {
        let mut p = EwProgram::new(Arg::In(0));
        assert_eq!(p.alu(AluOp::Add, Arg::Imm(1.0), Arg::Imm(2.0)), Arg::Imm(3.0));
        assert_eq!(p.unary(&Unary::Relu, Arg::Imm(-2.0), false).unwrap(), Arg::Imm(0.0));
        assert!(p.ops.is_empty());
        assert!(p.unary(&Unary::Sin, Arg::In(0), false).is_err());
    }
}
