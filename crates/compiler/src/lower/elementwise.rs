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
use trainyard_isa::{AluOp, Ap, Dim, Engine, Space};
use trainyard_kernels::{BuildError, HbmTensor, Stage, View};

use super::emit::{Cx, Emitter, Io};
pub use super::ew_program::{Arg, EwOp, EwProgram};

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
}
