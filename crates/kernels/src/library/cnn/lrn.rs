//! Local response normalization across channels.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, Space, TensorKind};

use super::{kernel_err, with_held};
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{bound, check_emit, chunks, input, output, sig, split};
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;

/// `y[c] = x[c] / (bias + alpha/size · Σ x[c']²)^beta` over the channels
/// `c' ∈ [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉]`: shape `N,C,S` (`S` = the
/// spatial positions).
///
/// Tiling: channels on partitions (blocks of 128), positions on the free
/// axis in chunks of 512. The windowed sum over channels is a cross-partition
/// operation, so it runs on the Tensor engine: `Σ x[c']²` is the matmul of
/// `x²` with a 0/1 band matrix `B[c', c]`, one per pair of channel blocks the
/// window connects, built once per core by `iota` and two comparisons.
/// The Scalar engine then computes `exp(−beta · ln(bias + alpha/size · s))`
/// straight from PSUM (the scale and bias inside the activation) and the
/// Vector engine multiplies by `x`. Images × position chunks are split over
/// the cores.
pub struct Lrn;

const NAME: &str = "lrn";

const OPTIONS: &[(&str, &str)] = &[
    ("size", "channels in the window (default 5)"),
    ("alpha", "scale of the sum of squares (default 1e-4)"),
    ("beta", "exponent (default 0.75)"),
    ("bias", "added before the power (default 1, must be > 0)"),
];

/// Positions per matmul (one PSUM bank of f32).
const BANK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq)]
struct LrnArgs {
    n: usize,
    c: usize,
    s: usize,
    size: usize,
    alpha: f64,
    beta: f64,
    bias: f64,
}

impl LrnArgs {
    /// Channel offsets `c' − c` inside the window: `-lo..=hi`.
    fn reach(&self) -> (usize, usize) {
        ((self.size - 1) / 2, self.size / 2)
    }
}

fn parse(args: &KernelArgs) -> Result<LrnArgs, BuildError> {
    let [n, c, s] = args.dims::<3>(NAME, "N,C,S")?;
    let size = args.usize(NAME, "size", 5)?;
    let (alpha, beta, bias) =
        (args.f64(NAME, "alpha", 1e-4)?, args.f64(NAME, "beta", 0.75)?, args.f64(NAME, "bias", 1.0)?);
    let valid = size > 0 && alpha.is_finite() && beta.is_finite() && bias > 0.0 && bias.is_finite();
    if !valid {
        return Err(kernel_err(
            NAME,
            format!(
                "size = {size}, alpha = {alpha}, beta = {beta}, bias = {bias}: need size ≥ 1, finite values, bias > 0"
            ),
        ));
    }
    Ok(LrnArgs { n, c, s, size, alpha, beta, bias })
}

/// Pairs (input block, output block) the window connects.
fn pairs(a: &LrnArgs, blocks: &[Range<usize>]) -> Vec<(usize, usize)> {
    let (lo, hi) = a.reach();
    let mut v = Vec::new();
    for (o, ob) in blocks.iter().enumerate() {
        let (first, last) = (ob.start.saturating_sub(lo), ob.end - 1 + hi);
        for (i, ib) in blocks.iter().enumerate() {
            if ib.start <= last && first < ib.end {
                v.push((i, o));
            }
        }
    }
    v
}

fn emit(kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
    check_emit(&Lrn, kb, args, io)?;
    let a = parse(args)?;
    let p = kb.chip().core.sbuf.partitions as usize;
    let (x, y) = (bound(NAME, io, "x")?, bound(NAME, io, "y")?);
    let cblocks = chunks(a.c, p);
    let nb = cblocks.len();
    let links = pairs(&a, &cblocks);
    let (lo, hi) = a.reach();
    let (mid, half) = ((hi as f32 - lo as f32) / 2.0, (hi + lo) as f32 / 2.0);
    let items: Vec<(usize, Range<usize>)> =
        (0..a.n).flat_map(|n| chunks(a.s, BANK).into_iter().map(move |r| (n, r))).collect();
    with_held(kb, |kb, held| {
        for (core, range) in split(items.len(), args.cores as usize, 1).into_iter().enumerate() {
            kb.core(core as u16)?;
            // The band matrices and the bias column.
            let idx = held.tile(kb, &[p, p], DType::I32)?;
            let mut masks: Vec<View> = Vec::with_capacity(links.len());
            for &(i, o) in &links {
                let (ib, ob) = (&cblocks[i], &cblocks[o]);
                let m = held.tile(kb, &[p, p], DType::F32)?.part(0..ib.len()).cols(0..ob.len());
                let iv = idx.part(0..ib.len()).cols(0..ob.len());
                // idx[c', c] = c' − c over the blocks' global channels.
                kb.iota(&iv, ib.start as i32 - ob.start as i32, 1, &[-1])?;
                kb.tensor_scalar(
                    Engine::Vector,
                    &m,
                    &iv,
                    Stage::new(AluOp::Sub, mid),
                    Some(Stage::new(AluOp::AbsMax, 0.0)),
                )?;
                kb.tensor_scalar(Engine::Vector, &m, &m, Stage::new(AluOp::Le, half), None)?;
                masks.push(m);
            }
            let bias = held.tile(kb, &[p, 1], DType::F32)?;
            kb.memset(Engine::Vector, &bias, a.bias)?;
            let xs = held.pool(kb, Space::Sbuf, &[p, BANK], DType::F32, 2 * nb)?;
            let sqs = held.pool(kb, Space::Sbuf, &[p, BANK], DType::F32, 2 * nb)?;
            let ps = held.pool(kb, Space::Psum, &[p, BANK], DType::F32, 2)?;
            let outs = held.pool(kb, Space::Sbuf, &[p, BANK], DType::F32, 3)?;
            for (n, cols) in &items[range] {
                let w = cols.len();
                let mut xt = Vec::with_capacity(nb);
                let mut sq = Vec::with_capacity(nb);
                for cb in &cblocks {
                    let t = held.next(xs)?.part(0..cb.len()).cols(0..w);
                    kb.dma(&t, x.view().at(0, *n).slice(0, cb.clone()).slice(1, cols.clone()))?;
                    let s = held.next(sqs)?.part(0..cb.len()).cols(0..w);
                    kb.activation(ActFn::Square, &s, &t, 1.0, None, None)?;
                    xt.push(t);
                    sq.push(s);
                }
                for (o, ob) in cblocks.iter().enumerate() {
                    let acc = held.next(ps)?.part(0..ob.len()).cols(0..w);
                    let ins: Vec<(usize, &View)> =
                        links.iter().zip(&masks).filter(|((_, oo), _)| *oo == o).map(|((i, _), m)| (*i, m)).collect();
                    for (k, (i, m)) in ins.iter().enumerate() {
                        kb.matmul(&acc, *m, &sq[*i], k == 0, k + 1 == ins.len())?;
                    }
                    let t = held.next(outs)?.part(0..ob.len()).cols(0..w);
                    let scale = (a.alpha / a.size as f64) as f32;
                    kb.activation(ActFn::Log, &t, &acc, scale, Some(&bias.part(0..ob.len())), None)?;
                    kb.activation(ActFn::Exp, &t, &t, -(a.beta as f32), None, None)?;
                    kb.tensor_tensor(Engine::Vector, AluOp::Mul, &t, &t, &xt[o])?;
                    kb.dma(y.view().at(0, *n).slice(0, ob.clone()).slice(1, cols.clone()), &t)?;
                }
            }
        }
        Ok(())
    })?;
    let elements = (a.n * a.c * a.s) as u64;
    Ok(Cost {
        flops: elements * (2 * a.size as u64 + 4),
        bytes_hbm: 2 * elements * args.dtype.size() as u64,
        peak_dtype: None,
    })
}

impl Kernel for Lrn {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "cnn"
    }
    fn summary(&self) -> &'static str {
        "local response normalization across channels, window sums as band-matrix matmuls (input x; output y)"
    }
    fn shape_help(&self) -> &'static str {
        "N,C,S (images, channels, spatial positions)"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1, 96, 3025]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let a = parse(args)?;
        let shape = [a.n, a.c, a.s];
        Ok(vec![sig("x", TensorKind::Input, &shape, args.dtype), sig("y", TensorKind::Output, &shape, args.dtype)])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        emit(kb, args, io)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let a = parse(args)?;
        let x = input(NAME, inputs, "x")?;
        let (lo, hi) = a.reach();
        let mut y = vec![0.0; x.len()];
        for n in 0..a.n {
            for c in 0..a.c {
                for s in 0..a.s {
                    let at = |c: usize| (n * a.c + c) * a.s + s;
                    let sum: f64 = (c.saturating_sub(lo)..(c + hi + 1).min(a.c)).map(|k| x[at(k)] * x[at(k)]).sum();
                    y[at(c)] = x[at(c)] / (a.bias + a.alpha / a.size as f64 * sum).powf(a.beta);
                }
            }
        }
        Ok(output("y", vec![a.n, a.c, a.s], y))
    }
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        // ln and exp in f32 add a few ulps on top of the output rounding.
        let base = Tolerance::for_dtype(args.dtype);
        Tolerance { atol: base.atol * 4.0, rtol: base.rtol * 4.0 }
    }
}
