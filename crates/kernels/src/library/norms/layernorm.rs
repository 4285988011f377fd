//! LayerNorm and RMSNorm over the last axis.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::rows::{partitions, pipelined, replicate, resident_bufs, rows_cols, Stages, CHUNK};
use crate::builder::{KernelBuilder, TilePool};
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{
    balance, blocks, bound, check_emit, chunks, input, kernel_err, output, sig, split, split_at, Allocs, Block, Costs,
    Q_AUX, Q_LOAD, Q_STORE,
};
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;

/// `y = (x − mean) · rsqrt(var + eps) · gamma + beta` over the last axis of
/// `x` (`[rows, cols]`; leading axes are rows), `gamma`/`beta` of `[cols]`.
///
/// Tiling: 128 rows per block on the partitions; `gamma` and `beta` are
/// loaded once per core as one row each and replicated over the partitions
/// of `[128, cols]` tiles on chip (`rows::replicate`: ones-vector matmuls on
/// the idle Tensor engine). When whole rows fit in SBUF (up to ~15K columns
/// for 16-bit data) each block is one `[128, cols]` DMA into a pool of three
/// to six buffers, and the work is spread so that no engine outpaces the DMA:
/// the GpSimd engine sums the row (`tensor_reduce`, f32) and forms `−mean`;
/// the Scalar engine computes `Σ (x − mean)²` in one activation (`square`
/// with `−mean` as bias and the accumulator: a two-pass variance, no
/// cancellation) and `rsqrt(var/cols + eps)`; the Vector engine normalises in
/// place (`(x − mean) · rstd`, one two-stage `tensor_scalar` in 16-bit perf
/// mode) and multiplies by `gamma`; the `+ beta` pass is split by columns
/// between the Vector and GpSimd engines in the ratio that balances their
/// estimated loads (about two thirds on Vector for bf16 on trn2). The
/// statistics run two blocks ahead of the normalisation (`rows::pipelined`).
/// Longer rows stream twice in 4096-column chunks: Σx and Σx² per chunk
/// (variance as E[x²] − mean², clamped at 0), then the normalisation with
/// `gamma`/`beta` chunks loaded alongside by stride-0 DMAs.
pub(crate) struct LayerNorm;

/// `y = x · rsqrt(mean(x²) + eps) · gamma` over the last axis.
///
/// Tiling as [`LayerNorm`] without the mean: the Scalar engine computes
/// `Σ x²` (activation `square` with the accumulator) and `rsqrt`, the Vector
/// engine scales by `rstd` (per-partition `tensor_scalar`, 16-bit perf mode),
/// and the `· gamma` pass is split by columns between the Vector and GpSimd
/// engines by their estimated load.
pub(crate) struct RmsNorm;

const OPTIONS: &[(&str, &str)] = &[("eps", "added to the variance before the square root (default 1e-5)")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Layer,
    Rms,
}

fn eps(kernel: &str, args: &KernelArgs) -> Result<f64, BuildError> {
    let e = args.f64(kernel, "eps", 1e-5)?;
    if e.is_finite() && e >= 0.0 {
        Ok(e)
    } else {
        Err(kernel_err(kernel, format!("option `eps={e}`: must be finite and ≥ 0")))
    }
}

/// Columns of the stats tile of one block.
const S1: usize = 0;
const NMEAN: usize = 1;
const S2: usize = 2;
const RSTD: usize = 3;
const TMP: usize = 4;
const STATS: usize = 5;

/// One core's tiles.
struct Core<'a> {
    kind: Kind,
    x2: &'a View,
    y2: &'a View,
    gamma: &'a View,
    beta: Option<&'a View>,
    cols: usize,
    /// First column of the last elementwise pass done by GpSimd (cols = none).
    split: usize,
    xin: TilePool,
    stats: TilePool,
    junk: View,
    eps_col: View,
    /// Resident `[P, cols]` gamma and beta (None when streaming).
    params: Option<(View, Option<View>)>,
    /// Streaming: pools of gamma/beta chunks.
    param_pool: Option<TilePool>,
}

fn col(v: &View, c: usize) -> View {
    v.cols(c..c + 1)
}

impl Core<'_> {
    fn inv_n(&self) -> f32 {
        1.0 / self.cols as f32
    }

    /// `x · rstd` (RMS) or `(x − mean) · rstd` (layer), in place.
    fn normalise(&self, kb: &mut KernelBuilder, x: &View, st: &View) -> Result<(), BuildError> {
        let scale = Stage::new(AluOp::Mul, col(st, RSTD));
        match self.kind {
            Kind::Layer => {
                kb.tensor_scalar(Engine::Vector, x, x, Stage::new(AluOp::Add, col(st, NMEAN)), Some(scale))?;
            }
            Kind::Rms => {
                kb.tensor_scalar(Engine::Vector, x, x, scale, None)?;
            }
        }
        Ok(())
    }

    /// `x · gamma (+ beta)` in place on columns `cols` of the row; the last
    /// pass is split between Vector and GpSimd at `self.split`.
    fn affine(
        &self,
        kb: &mut KernelBuilder,
        x: &View,
        cols: Range<usize>,
        g: &View,
        b: Option<&View>,
    ) -> Result<(), BuildError> {
        let passes: Vec<(AluOp, &View)> = match b {
            Some(b) => vec![(AluOp::Mul, g), (AluOp::Add, b)],
            None => vec![(AluOp::Mul, g)],
        };
        let last = passes.len() - 1;
        for (i, (op, param)) in passes.into_iter().enumerate() {
            let at = if i == last { self.split.clamp(cols.start, cols.end) - cols.start } else { cols.len() };
            if at > 0 {
                let xs = x.cols(0..at);
                kb.tensor_tensor(Engine::Vector, op, &xs, &xs, param.cols(0..at))?;
            }
            if at < cols.len() {
                let xs = x.cols(at..cols.len());
                kb.tensor_tensor(Engine::GpSimd, op, &xs, &xs, param.cols(at..cols.len()))?;
            }
        }
        Ok(())
    }

    /// Rows too long for SBUF: statistics per column chunk, then the
    /// normalisation chunk by chunk with gamma/beta chunks.
    fn streamed(&mut self, kb: &mut KernelBuilder, b: &Block) -> Result<(), BuildError> {
        let rows = b.range();
        let p = rows.len();
        let cs = chunks(self.cols, CHUNK);
        let n = cs.len();
        let parts = partitions(kb.chip());
        let s1 = kb.sbuf_tile(&[parts, n], DType::F32)?;
        let s2 = kb.sbuf_tile(&[parts, n], DType::F32)?;
        let (s1v, s2v) = (s1.part(0..p), s2.part(0..p));
        for (j, c) in cs.iter().enumerate() {
            let x = self.xin.next().part(0..p).cols(0..c.len());
            kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()).cols(c.clone()))?;
            if self.kind == Kind::Layer {
                kb.tensor_reduce(Engine::GpSimd, AluOp::Add, col(&s1v, j), &x, 1, false)?;
            }
            let junk = self.junk.part(0..p).cols(0..c.len());
            kb.activation(ActFn::Square, &junk, &x, 1.0, None, Some(&col(&s2v, j)))?;
        }
        let st = self.stats.next().part(0..p);
        kb.tensor_reduce(Engine::Vector, AluOp::Add, col(&st, S2), &s2v, 1, false)?;
        let eps = self.eps_col.part(0..p);
        match self.kind {
            Kind::Layer => {
                kb.tensor_reduce(Engine::Vector, AluOp::Add, col(&st, S1), &s1v, 1, false)?;
                kb.tensor_scalar(
                    Engine::Vector,
                    col(&st, NMEAN),
                    col(&st, S1),
                    Stage::new(AluOp::Mul, -self.inv_n()),
                    None,
                )?;
                kb.tensor_tensor(Engine::Vector, AluOp::Mul, col(&st, TMP), col(&st, NMEAN), col(&st, NMEAN))?;
                // var = max(E[x²] − mean², 0), kept in the S2 column.
                kb.tensor_scalar(
                    Engine::Vector,
                    col(&st, S2),
                    col(&st, S2),
                    Stage::new(AluOp::Mul, self.inv_n()),
                    Some(Stage::new(AluOp::Sub, col(&st, TMP))),
                )?;
                kb.tensor_scalar(Engine::Vector, col(&st, S2), col(&st, S2), Stage::new(AluOp::Max, 0.0), None)?;
                kb.activation(ActFn::Rsqrt, col(&st, RSTD), col(&st, S2), 1.0, Some(&eps), None)?;
            }
            Kind::Rms => {
                kb.activation(ActFn::Rsqrt, col(&st, RSTD), col(&st, S2), self.inv_n(), Some(&eps), None)?;
            }
        }
        for c in &cs {
            let x = self.xin.next().part(0..p).cols(0..c.len());
            kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()).cols(c.clone()))?;
            let pool = self.param_pool.as_mut().ok_or_else(|| kernel_err("layernorm", "no parameter pool"))?;
            let g = pool.next().part(0..p).cols(0..c.len());
            kb.dma_on(Q_AUX, &g, self.gamma.reshape(&[1, self.cols]).cols(c.clone()).broadcast(0, p))?;
            let b = match self.beta {
                Some(beta) => {
                    let t = pool.next().part(0..p).cols(0..c.len());
                    kb.dma_on(Q_AUX, &t, beta.reshape(&[1, self.cols]).cols(c.clone()).broadcast(0, p))?;
                    Some(t)
                }
                None => None,
            };
            self.normalise(kb, &x, &st)?;
            self.affine(kb, &x, c.clone(), &g, b.as_ref())?;
            kb.dma_on(Q_STORE, self.y2.rows(rows.clone()).cols(c.clone()), &x)?;
        }
        kb.free(s1)?;
        kb.free(s2)
    }
}

/// A block between its statistics and its normalisation.
struct Pending {
    x: View,
    st: View,
    rows: Range<usize>,
}

impl Stages for Core<'_> {
    type State = Pending;

    fn front(&mut self, kb: &mut KernelBuilder, b: &Block) -> Result<Pending, BuildError> {
        let rows = b.range();
        let p = rows.len();
        let x = self.xin.next().part(0..p);
        kb.dma_on(Q_LOAD, &x, self.x2.rows(rows.clone()))?;
        let st = self.stats.next().part(0..p);
        let junk = self.junk.part(0..p);
        let eps = self.eps_col.part(0..p);
        if self.kind == Kind::Layer {
            kb.tensor_reduce(Engine::GpSimd, AluOp::Add, col(&st, S1), &x, 1, false)?;
            kb.tensor_scalar(
                Engine::GpSimd,
                col(&st, NMEAN),
                col(&st, S1),
                Stage::new(AluOp::Mul, -self.inv_n()),
                None,
            )?;
            kb.activation(ActFn::Square, &junk, &x, 1.0, Some(&col(&st, NMEAN)), Some(&col(&st, S2)))?;
        } else {
            kb.activation(ActFn::Square, &junk, &x, 1.0, None, Some(&col(&st, S2)))?;
        }
        kb.activation(ActFn::Rsqrt, col(&st, RSTD), col(&st, S2), self.inv_n(), Some(&eps), None)?;
        Ok(Pending { x, st, rows })
    }

    fn back(&mut self, kb: &mut KernelBuilder, s: Pending) -> Result<(), BuildError> {
        let Pending { x, st, rows } = s;
        let p = rows.len();
        self.normalise(kb, &x, &st)?;
        let (g, b) = match &self.params {
            Some((g, b)) => (g.part(0..p), b.as_ref().map(|b| b.part(0..p))),
            None => return Err(kernel_err("layernorm", "resident parameters missing")),
        };
        self.affine(kb, &x, 0..self.cols, &g, b.as_ref())?;
        kb.dma_on(Q_STORE, self.y2.rows(rows), &x)?;
        Ok(())
    }
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Layer => "layernorm",
        Kind::Rms => "rmsnorm",
    }
}

/// Column where the last elementwise pass moves from Vector to GpSimd, from
/// the engines' estimated per-element loads.
fn split_column(chip: &ChipSpec, kind: Kind, dtype: DType, cols: usize) -> usize {
    let c = Costs::new(chip, dtype);
    let (vector, gpsimd) = match kind {
        Kind::Layer => (c.v_ts + c.v_tt, c.g_reduce + c.g_ts / 128.0),
        Kind::Rms => (c.v_ts, 0.0),
    };
    split_at(cols, balance(vector, gpsimd, c.v_tt, c.g_tt))
}

/// `x`, `gamma`, `beta` (layernorm), then `y`.
fn signature(kind: Kind, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
    let kernel = name(kind);
    let (_, cols) = rows_cols(kernel, args)?;
    eps(kernel, args)?;
    let dtype = args.dtype;
    let mut sigs =
        vec![sig("x", TensorKind::Input, &args.shape, dtype), sig("gamma", TensorKind::Input, &[cols], dtype)];
    if kind == Kind::Layer {
        sigs.push(sig("beta", TensorKind::Input, &[cols], dtype));
    }
    sigs.push(sig("y", TensorKind::Output, &args.shape, dtype));
    Ok(sigs)
}

fn emit(
    kind: Kind,
    this: &dyn Kernel,
    kb: &mut KernelBuilder,
    args: &KernelArgs,
    io: &Bindings,
) -> Result<Cost, BuildError> {
    check_emit(this, kb, args, io)?;
    let kernel = name(kind);
    let (nrows, cols) = rows_cols(kernel, args)?;
    let eps = eps(kernel, args)?;
    let dtype = args.dtype;
    let (chip, home) = (kb.chip().clone(), kb.current_core());
    let p = partitions(&chip);
    let x = bound(kernel, io, "x")?;
    let gamma = bound(kernel, io, "gamma")?;
    let beta = if kind == Kind::Layer { Some(bound(kernel, io, "beta")?) } else { None };
    let y = bound(kernel, io, "y")?;
    let (x2, y2) = (x.view().reshape(&[nrows, cols]), y.view().reshape(&[nrows, cols]));
    let (gv, bv) = (gamma.view(), beta.map(|b| b.view()));
    let nparams = if kind == Kind::Layer { 2 } else { 1 };
    // Resident: x buffers + gamma/beta + the junk output of `square` (+ PSUM
    // and a ones row for the on-chip replication of gamma/beta).
    let bufs = resident_bufs(cols, dtype, (nparams + 1) * cols * dtype.size() + 256);
    let split_col = split_column(&chip, kind, dtype, cols);
    let mut allocs = Allocs::default();
    for (core, range) in split(nrows, args.cores as usize, p).into_iter().enumerate() {
        kb.core(core as u16)?;
        let width = if bufs.is_some() { cols } else { cols.min(CHUNK) };
        let eps_col = allocs.sbuf(kb, &[p, 1], DType::F32)?;
        kb.memset(Engine::Vector, &eps_col, eps)?;
        let junk = allocs.sbuf(kb, &[p, width], dtype)?;
        let xin = kb.sbuf_pool(&[p, width], dtype, bufs.unwrap_or(3))?;
        let (params, param_pool) = if bufs.is_some() {
            // The rows are staged in partitions 0 and 32 of the junk tile,
            // which the first `square` overwrites only after the matmuls read them.
            let ones = allocs.sbuf(kb, &[1, p], dtype)?;
            kb.memset(Engine::GpSimd, &ones, 1.0)?;
            // gamma is needed first, by the Vector engine; beta later, via Scalar.
            let mut vectors = vec![(&gv, junk.part(0..1), Engine::Vector)];
            if let Some(b) = &bv {
                let stage = if p > 32 { junk.part(32..33) } else { junk.part(0..1) };
                vectors.push((b, stage, Engine::Scalar));
            }
            let mut reps = replicate(kb, &vectors, &ones, dtype, &mut allocs)?.into_iter();
            let g = reps.next().ok_or_else(|| kernel_err(kernel, "gamma not replicated"))?;
            let b = reps.next();
            (Some((g, b)), None)
        } else {
            (None, Some(kb.sbuf_pool(&[p, width], dtype, 2 * nparams)?))
        };
        let mut c = Core {
            kind,
            x2: &x2,
            y2: &y2,
            gamma: &gv,
            beta: bv.as_ref(),
            cols,
            split: split_col,
            xin,
            stats: kb.sbuf_pool(&[p, STATS], DType::F32, 4)?,
            junk,
            eps_col,
            params,
            param_pool,
        };
        let bl = blocks(range, p, 1, false);
        if bufs.is_some() {
            pipelined(kb, &mut c, &bl)?;
        } else {
            for b in &bl {
                c.streamed(kb, b)?;
            }
        }
        allocs.keep_pool(c.xin);
        allocs.keep_pool(c.stats);
        if let Some(pool) = c.param_pool {
            allocs.keep_pool(pool);
        }
    }
    allocs.free(kb)?;
    kb.core(home)?;
    let es = dtype.size() as u64;
    let elements = (nrows * cols) as u64;
    let flops = if kind == Kind::Layer { 7 } else { 4 } * elements;
    let bytes = (2 * elements + nparams as u64 * cols as u64) * es;
    Ok(Cost { flops, bytes_hbm: bytes, peak_dtype: None })
}

fn reference(kind: Kind, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
    let kernel = name(kind);
    let (nrows, cols) = rows_cols(kernel, args)?;
    let eps = eps(kernel, args)?;
    let x = input(kernel, inputs, "x")?;
    let g = input(kernel, inputs, "gamma")?;
    let b = if kind == Kind::Layer { Some(input(kernel, inputs, "beta")?) } else { None };
    let mut y = Vec::with_capacity(nrows * cols);
    for row in x.chunks(cols) {
        let n = cols as f64;
        let (mean, var) = match kind {
            Kind::Layer => {
                let mean = row.iter().sum::<f64>() / n;
                (mean, row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n)
            }
            Kind::Rms => (0.0, row.iter().map(|v| v * v).sum::<f64>() / n),
        };
        let rstd = 1.0 / (var + eps).sqrt();
        for (j, v) in row.iter().enumerate() {
            let shift = b.map(|b| b[j]).unwrap_or(0.0);
            y.push((v - mean) * rstd * g[j] + shift);
        }
    }
    Ok(output("y", args.shape.clone(), y))
}

/// The normalised value is rounded to the data dtype, then multiplied by
/// gamma and rounded, then (layernorm) shifted by beta and rounded: up to
/// three roundings of values of magnitude ≈ 1.7 (inputs uniform in [−1, 1)
/// have σ ≈ 0.58), so 16-bit results get twice the default absolute term.
fn tolerance(args: &KernelArgs) -> Tolerance {
    let base = Tolerance::for_dtype(args.dtype);
    match args.dtype {
        DType::Bf16 | DType::F16 => Tolerance { atol: 2.0 * base.atol, rtol: base.rtol },
        _ => base,
    }
}

macro_rules! norm_kernel {
    ($ty:ty, $kind:expr, $summary:literal) => {
        impl Kernel for $ty {
            fn name(&self) -> &'static str {
                name($kind)
            }
            fn family(&self) -> &'static str {
                "norms"
            }
            fn summary(&self) -> &'static str {
                $summary
            }
            fn shape_help(&self) -> &'static str {
                "rows,cols (leading axes are rows; the last axis is normalised)"
            }
            fn options_help(&self) -> &'static [(&'static str, &'static str)] {
                OPTIONS
            }
            fn default_shape(&self) -> Vec<usize> {
                vec![4096, 8192]
            }
            fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
                signature($kind, args)
            }
            fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
                emit($kind, self, kb, args, io)
            }
            fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
                standalone(self, chip, args)
            }
            fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
                reference($kind, args, inputs)
            }
            fn tolerance(&self, args: &KernelArgs) -> Tolerance {
                tolerance(args)
            }
        }
    };
}

norm_kernel!(
    LayerNorm,
    Kind::Layer,
    "y = (x − mean)·rsqrt(var + eps)·gamma + beta over the last axis (inputs x, gamma, beta; output y)"
);
norm_kernel!(RmsNorm, Kind::Rms, "y = x·rsqrt(mean(x²) + eps)·gamma over the last axis (inputs x, gamma; output y)");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::elementwise::tests::{check, chips};
    use proptest::prelude::*;

    #[test]
    fn odd_shapes_and_dtypes() {
        for chip in chips() {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                for shape in [&[1usize, 1][..], &[3, 1000], &[129, 257], &[200, 3], &[2, 3, 40]] {
                    check(&LayerNorm, &chip, &KernelArgs::new(shape, dtype));
                    check(&RmsNorm, &chip, &KernelArgs::new(shape, dtype));
                }
            }
        }
    }

    #[test]
    fn eps_and_cores() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for eps in ["0", "0.5", "1e-3"] {
            let mut a = KernelArgs::new(&[300, 64], DType::F32).with("eps", eps);
            a.cores = 2;
            check(&LayerNorm, &chip, &a);
            check(&RmsNorm, &chip, &a);
        }
    }

    #[test]
    fn long_rows_stream_in_chunks() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for dtype in [DType::F32, DType::Bf16] {
            let mut a = KernelArgs::new(&[130, 30000], dtype);
            a.cores = 2;
            check(&LayerNorm, &chip, &a);
            check(&RmsNorm, &chip, &a);
        }
    }

    #[test]
    fn parameters_are_loaded_once_per_core() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let mut a = KernelArgs::new(&[600, 256], DType::Bf16);
        a.cores = 2;
        let run = check(&LayerNorm, &chip, &a);
        let prog = &run.built.program;
        let offsets = [prog.tensor("gamma").unwrap().offset, prog.tensor("beta").unwrap().offset];
        let loads = prog
            .insts
            .iter()
            .filter(|i| matches!(&i.op, trainyard_isa::Op::DmaCopy { src, .. } if offsets.contains(&src.offset)))
            .count();
        assert_eq!(loads, 4);
    }

    #[test]
    fn argument_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for a in [
            KernelArgs::new(&[4, 4], DType::F32).with("eps", "-1"),
            KernelArgs::new(&[4, 4], DType::F32).with("eps", "x"),
            KernelArgs::new(&[0, 4], DType::F32),
        ] {
            let e = crate::library::build(&LayerNorm, &chip, &a).unwrap_err().to_string();
            assert!(e.contains("layernorm"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes(r in 1usize..300, c in 1usize..300, rms: bool, dt in 0usize..3) {
            let chip = ChipSpec::by_name("trn2").unwrap();
            let dtype = [DType::F32, DType::Bf16, DType::F16][dt];
            let a = KernelArgs::new(&[r, c], dtype);
            if rms { check(&RmsNorm, &chip, &a); } else { check(&LayerNorm, &chip, &a); }
        }
    }
}
