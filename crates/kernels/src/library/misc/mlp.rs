//! `mlp`: the fused MLP block of Llama-style models,
//! `y = (silu(x·Wg) ⊙ (x·Wu)) · Wd`.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::{bound, check_args, core_share, kernel_err, sig, Queues};
use crate::builder::{HbmTensor, KernelBuilder, TilePool};
use crate::error::BuildError;
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;
use crate::ALIGN;

/// Most tokens per pass over the weights: the moving free size of the
/// gate/up matmuls (and one f32 PSUM bank).
const MAX_TOKENS: usize = 512;

/// Columns of `x` per load (2 KiB descriptors in bf16); the PE transposes
/// of a column chunk start as soon as it lands.
const X_COLS: usize = 1024;

/// `y[T, Hd] = (silu(x·Wg) ⊙ (x·Wu)) · Wd`: shape `T,Hd,I`; inputs `x [T,Hd]`,
/// `w_gate [Hd,I]`, `w_up [Hd,I]`, `w_down [I,Hd]`; output `y [T,Hd]`.
///
/// The weights dwarf SBUF and are streamed from HBM once per pass of up to
/// 512 tokens, so a pass's whole activation stays on chip:
///
/// 0. `xᵀ` (`[Hd, tokens]`, Hd on partitions in k-tiles of 128) is built by
///    PE transposes of 128×128 blocks of `x` loaded row-wise (a transposing
///    DMA would cost one descriptor per element). The pass's `x` is staged
///    whole in the space `aᵀ` takes later, so its loads never wait for a
///    buffer, and they go ahead of the weights on the same queues.
/// 1. `aᵀ = silu(Wgᵀ·xᵀ) ⊙ (Wuᵀ·xᵀ)` per 128 columns of I: the weight tile
///    `[Hd_k, 128]` is the stationary and `xᵀ` (all tokens, N ≤ 512) the
///    moving operand, accumulating over Hd in two PSUM banks. Evacuation is
///    fused: Scalar computes `silu(gate)` from PSUM, Vector multiplies it by
///    `up` (still in PSUM) into `aᵀ` in SBUF — the `[T, I]` activation never
///    goes to HBM. Weights arrive in slabs of several k-tiles × up to 512
///    columns of I (≥ 1 KiB descriptors); within a slab the matmuls run
///    column block by column block, so the four PSUM pairs finish one after
///    another and each is evacuated while the PE fills the next.
/// 2. `y = a·Wd`: the stationary is `aᵀ[I_k, 128 tokens]`, the moving a
///    `[I_k, 512]` slab of `Wd`; every token block accumulates over I in its
///    own PSUM bank, double-buffered across 512-column blocks of Hd, and is
///    evacuated by Vector and Scalar in turn and stored.
///
/// Tile sizes are chosen to fit SBUF (tokens per pass first, since each pass
/// re-reads all weights). Loads (`x`, then the weight slabs in order of use)
/// and stores use separate DMA queues. Tokens are split over the cores (each
/// core streams the weights itself).
pub struct Mlp;

/// Tile sizes of one core.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    /// Tokens per pass.
    tb: usize,
    /// Columns of I per gate/up slab (≤ 512: four PSUM pairs).
    iw: usize,
    /// Hd k-tiles per gate/up slab.
    kg: usize,
    /// I k-tiles per down slab.
    kgd: usize,
}

/// Problem sizes and the derived tile counts.
#[derive(Clone, Copy, Debug)]
struct Dims {
    hd: usize,
    i: usize,
    /// Partitions (= PE rows = k-tile size).
    p: usize,
    /// Hd columns per down-projection block.
    hn: usize,
    kt_h: usize,
    kt_i: usize,
    dtype: DType,
}

impl Dims {
    fn new(chip: &ChipSpec, hd: usize, i: usize, dtype: DType) -> Dims {
        let c = &chip.core;
        let p = c.sbuf.partitions.min(c.tensor.rows).min(c.tensor.cols) as usize;
        let hn = (c.tensor.moving_fmax as usize).min(chip.psum_bank_bytes() as usize / 4).min(hd);
        Dims { hd, i, p, hn, kt_h: hd.div_ceil(p), kt_i: i.div_ceil(p), dtype }
    }

    /// SBUF bytes per partition the plan's tiles take.
    fn footprint(&self, pl: &Plan) -> usize {
        let es = self.dtype.size();
        let tile = |elems: usize, size: usize| (elems * size).next_multiple_of(ALIGN as usize);
        let nts = pl.tb.div_ceil(self.p);
        let xt = tile(self.kt_h * pl.tb, es);
        let at = tile(self.kt_i * pl.tb, es);
        let gate_up = 4 * tile(pl.kg * pl.iw, es);
        let down = 3 * tile(pl.kgd * self.hn, es);
        let silu = 2 * tile(pl.tb, 4);
        let yout = 2 * nts * tile(self.hn, es);
        // `x` is staged in phase 0 only, in memory `aᵀ` reuses in phase 1.
        let stage = tile(nts * self.hd, es);
        xt + at.max(stage) + gate_up + down + silu + yout
    }

    /// The largest token pass that fits, then the widest and deepest slabs.
    fn plan(&self, chip: &ChipSpec, tokens: usize) -> Option<Plan> {
        let budget = chip.core.sbuf.bytes_per_partition as usize;
        let iw_max = (4 * self.p).min(self.i.next_multiple_of(self.p));
        let mut last_tb = 0;
        for passes in tokens.div_ceil(MAX_TOKENS)..=tokens {
            let tb = tokens.div_ceil(passes);
            if tb == last_tb {
                continue;
            }
            last_tb = tb;
            for iw in [iw_max, 2 * self.p, self.p].into_iter().filter(|&w| w <= iw_max) {
                for kg in [8, 4, 2, 1] {
                    let plan = Plan { tb, iw, kg: kg.min(self.kt_h), kgd: kg.min(self.kt_i) };
                    if self.footprint(&plan) <= budget {
                        return Some(plan);
                    }
                }
            }
        }
        None
    }
}

/// The HBM tensors.
struct Tensors {
    x: HbmTensor,
    wg: HbmTensor,
    wu: HbmTensor,
    wd: HbmTensor,
    y: HbmTensor,
}

/// The SBUF pools of one core (PSUM is allocated per phase).
struct Pools {
    gate: TilePool,
    up: TilePool,
    down: TilePool,
    silu: TilePool,
    yout: TilePool,
}

/// DMA queues by role. `x` loads share the weight queues: issued first, they
/// run before the first weight slabs instead of splitting the bandwidth with
/// them, so the PE starts sooner.
struct Dma {
    loads: Queues,
    store: Queues,
}

/// PSUM → SBUF copy on the Vector or Scalar engine (NeuronCore-v2 Scalar
/// copies through an identity activation, HW-ISA-COPY).
fn evacuate(kb: &mut KernelBuilder, turn: usize, dst: &View, src: &View) -> Result<(), BuildError> {
    if turn.is_multiple_of(2) {
        kb.copy(Engine::Vector, dst, src)?;
    } else if kb.chip().generation >= 3 {
        kb.copy(Engine::Scalar, dst, src)?;
    } else {
        kb.activation(ActFn::Identity, dst, src, 1.0, None, None)?;
    }
    Ok(())
}

/// Loads k-tiles `k0..k0 + kn` (rows `128·k0..`, the last k-tile possibly
/// partial) and columns `cols` of `w` into `slab` (`[128, kn, cols]`).
#[allow(clippy::too_many_arguments)]
fn load_slab(
    kb: &mut KernelBuilder,
    q: &mut Queues,
    d: &Dims,
    slab: &View,
    w: &HbmTensor,
    k0: usize,
    kn: usize,
    cols: Range<usize>,
) -> Result<(), BuildError> {
    let p = d.p;
    let rows = w.shape()[0];
    let (h0, h1) = (k0 * p, ((k0 + kn) * p).min(rows));
    let full = (h1 - h0) / p;
    let nc = cols.len();
    if full > 0 {
        let src = w.rows(h0..h0 + full * p).cols(cols.clone()).reshape(&[full, p, nc]).permute(&[1, 0, 2]);
        kb.dma_on(q.next(), slab.slice_free(0, 0..full).cols(0..nc), src)?;
    }
    let rem = h1 - h0 - full * p;
    if rem > 0 {
        let dst = slab.part(0..rem).slice_free(0, full..full + 1).cols(0..nc);
        kb.dma_on(q.next(), dst, w.rows(h1 - rem..h1).cols(cols))?;
    }
    Ok(())
}

/// One pass: tokens `t0..t0 + tb` through all three projections.
#[allow(clippy::too_many_arguments)]
fn emit_pass(
    kb: &mut KernelBuilder,
    d: &Dims,
    pl: &Plan,
    ts: &Tensors,
    pools: &mut Pools,
    dma: &mut Dma,
    t0: usize,
    tb: usize,
) -> Result<(), BuildError> {
    let (p, dtype) = (d.p, d.dtype);
    let nts = tb.div_ceil(p);
    let tok = |s: usize| (s * p, p.min(tb - s * p));
    let mut turn = 0usize;

    // Phase 0: xᵀ by PE transposes, all token blocks of a k-tile in one PSUM tile.
    let xt = kb.sbuf_tile(&[p, d.kt_h, tb], dtype)?;
    let stage = kb.sbuf_tile(&[p, nts, d.hd], dtype)?;
    let mut ps_t = kb.psum_pool(&[p, tb], dtype, 2)?;
    for c0 in (0..d.hd).step_by(X_COLS) {
        let cn = X_COLS.min(d.hd - c0);
        for s in 0..nts {
            let (s0, sn) = tok(s);
            let st = stage.part(0..sn).slice_free(0, s..s + 1).reshape_free(&[d.hd]).cols(c0..c0 + cn);
            kb.dma_on(dma.loads.next(), &st, ts.x.rows(t0 + s0..t0 + s0 + sn).cols(c0..c0 + cn))?;
        }
        for kk in 0..cn.div_ceil(p) {
            let (k, ks) = (c0 / p + kk, p.min(cn - kk * p));
            let pt = ps_t.next().part(0..ks);
            for s in 0..nts {
                let (s0, sn) = tok(s);
                let h = c0 + kk * p;
                let src = stage.part(0..sn).slice_free(0, s..s + 1).reshape_free(&[d.hd]).cols(h..h + ks);
                kb.transpose(Engine::Tensor, pt.cols(s0..s0 + sn), &src)?;
            }
            evacuate(kb, turn, &xt.part(0..ks).slice_free(0, k..k + 1).reshape_free(&[tb]), &pt.cols(0..tb))?;
            turn += 1;
        }
    }
    kb.free_pool(ps_t)?;
    kb.free(stage)?;

    // Phase 1: aᵀ = silu(Wgᵀ·xᵀ) ⊙ (Wuᵀ·xᵀ), 128 columns of I at a time.
    let at = kb.sbuf_tile(&[p, d.kt_i, tb], dtype)?;
    let nj = pl.iw.div_ceil(p);
    let mut ps_g = Vec::with_capacity(nj);
    let mut ps_u = Vec::with_capacity(nj);
    for _ in 0..nj {
        ps_g.push(kb.psum_tile(&[p, tb], DType::F32)?);
        ps_u.push(kb.psum_tile(&[p, tb], DType::F32)?);
    }
    for i0 in (0..d.i).step_by(pl.iw) {
        let iwn = pl.iw.min(d.i - i0);
        let blocks = iwn.div_ceil(p);
        for g0 in (0..d.kt_h).step_by(pl.kg) {
            let kn = pl.kg.min(d.kt_h - g0);
            let (gs, us) = (pools.gate.next(), pools.up.next());
            load_slab(kb, &mut dma.loads, d, &gs, &ts.wg, g0, kn, i0..i0 + iwn)?;
            load_slab(kb, &mut dma.loads, d, &us, &ts.wu, g0, kn, i0..i0 + iwn)?;
            for j in 0..blocks {
                let (c0, cs) = (j * p, p.min(iwn - j * p));
                for kk in 0..kn {
                    let k = g0 + kk;
                    let ks = p.min(d.hd - k * p);
                    let (start, stop) = (k == 0, k + 1 == d.kt_h);
                    let mv = xt.part(0..ks).slice_free(0, k..k + 1).reshape_free(&[tb]);
                    for (slab, ps) in [(&gs, &ps_g[j]), (&us, &ps_u[j])] {
                        let st = slab.part(0..ks).slice_free(0, kk..kk + 1).reshape_free(&[pl.iw]).cols(c0..c0 + cs);
                        kb.matmul(ps.part(0..cs), &st, &mv, start, stop)?;
                    }
                }
            }
        }
        for j in 0..blocks {
            let cs = p.min(iwn - j * p);
            let kt = i0 / p + j;
            let silu = pools.silu.next().part(0..cs).cols(0..tb);
            kb.activation(ActFn::Silu, &silu, ps_g[j].part(0..cs), 1.0, None, None)?;
            let dst = at.part(0..cs).slice_free(0, kt..kt + 1).reshape_free(&[tb]);
            kb.tensor_tensor(Engine::Vector, AluOp::Mul, &dst, &silu, ps_u[j].part(0..cs))?;
        }
    }
    for t in ps_g.into_iter().chain(ps_u) {
        kb.free(t)?;
    }
    kb.free(xt)?;

    // Phase 2: y = a·Wd, 512 columns of Hd at a time, one PSUM bank per token block.
    let mut ps_y = kb.psum_pool(&[p, d.hn], DType::F32, 2 * nts)?;
    for h0 in (0..d.hd).step_by(d.hn) {
        let hn = d.hn.min(d.hd - h0);
        let banks: Vec<View> = (0..nts).map(|s| ps_y.next().part(0..tok(s).1).cols(0..hn)).collect();
        for g0 in (0..d.kt_i).step_by(pl.kgd) {
            let kn = pl.kgd.min(d.kt_i - g0);
            let slab = pools.down.next();
            load_slab(kb, &mut dma.loads, d, &slab, &ts.wd, g0, kn, h0..h0 + hn)?;
            for kk in 0..kn {
                let k = g0 + kk;
                let ks = p.min(d.i - k * p);
                let mv = slab.part(0..ks).slice_free(0, kk..kk + 1).reshape_free(&[d.hn]).cols(0..hn);
                for (s, bank) in banks.iter().enumerate() {
                    let (s0, sn) = tok(s);
                    let st = at.part(0..ks).slice_free(0, k..k + 1).reshape_free(&[tb]).cols(s0..s0 + sn);
                    kb.matmul(bank, &st, &mv, k == 0, k + 1 == d.kt_i)?;
                }
            }
        }
        for (s, bank) in banks.iter().enumerate() {
            let (s0, sn) = tok(s);
            let out = pools.yout.next().part(0..sn).cols(0..hn);
            evacuate(kb, turn, &out, bank)?;
            turn += 1;
            kb.dma_on(dma.store.next(), ts.y.rows(t0 + s0..t0 + s0 + sn).cols(h0..h0 + hn), &out)?;
        }
    }
    kb.free_pool(ps_y)?;
    kb.free(at)?;
    Ok(())
}

fn dims(args: &KernelArgs) -> Result<[usize; 3], BuildError> {
    args.dims::<3>("mlp", "T,Hd,I")
}

impl Kernel for Mlp {
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn family(&self) -> &'static str {
        "misc"
    }
    fn summary(&self) -> &'static str {
        "fused Llama MLP y = (silu(x·w_gate) ⊙ (x·w_up))·w_down (inputs x [T,Hd], w_gate/w_up [Hd,I], \
         w_down [I,Hd]; output y [T,Hd])"
    }
    fn shape_help(&self) -> &'static str {
        "T,Hd,I"
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![256, 512, 1024]
    }

    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        check_args(self, chip, args)?;
        let [t, hd, i] = dims(args)?;
        let dtype = args.dtype;
        Ok(vec![
            sig("x", TensorKind::Input, &[t, hd], dtype),
            sig("w_gate", TensorKind::Input, &[hd, i], dtype),
            sig("w_up", TensorKind::Input, &[hd, i], dtype),
            sig("w_down", TensorKind::Input, &[i, hd], dtype),
            sig("y", TensorKind::Output, &[t, hd], dtype),
        ])
    }

    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        let [t, hd, i] = dims(args)?;
        let dtype = args.dtype;
        let chip = kb.chip().clone();
        let d = Dims::new(&chip, hd, i, dtype);
        let name = self.name();
        let ts = Tensors {
            x: bound(name, io, "x")?.clone(),
            wg: bound(name, io, "w_gate")?.clone(),
            wu: bound(name, io, "w_up")?.clone(),
            wd: bound(name, io, "w_down")?.clone(),
            y: bound(name, io, "y")?.clone(),
        };
        let cores = args.cores as usize;
        let home = kb.current_core();
        for c in 0..cores {
            let share = core_share(t, cores, c);
            if share.is_empty() {
                continue;
            }
            let pl = d.plan(&chip, share.len()).ok_or_else(|| {
                kernel_err(name, format!("Hd = {hd}, I = {i} in {dtype}: xᵀ and aᵀ of even one token do not fit SBUF"))
            })?;
            kb.core(c as u16)?;
            let nts = pl.tb.div_ceil(d.p);
            let mut pools = Pools {
                gate: kb.sbuf_pool(&[d.p, pl.kg, pl.iw], dtype, 2)?,
                up: kb.sbuf_pool(&[d.p, pl.kg, pl.iw], dtype, 2)?,
                down: kb.sbuf_pool(&[d.p, pl.kgd, d.hn], dtype, 3)?,
                silu: kb.sbuf_pool(&[d.p, pl.tb], DType::F32, 2)?,
                yout: kb.sbuf_pool(&[d.p, d.hn], dtype, 2 * nts)?,
            };
            let mut dma = Dma { loads: Queues::new(&[0, 1]), store: Queues::new(&[2, 3]) };
            let mut t0 = share.start;
            while t0 < share.end {
                let tb = pl.tb.min(share.end - t0);
                emit_pass(kb, &d, &pl, &ts, &mut pools, &mut dma, t0, tb)?;
                t0 += tb;
            }
            let Pools { gate, up, down, silu, yout } = pools;
            for pool in [gate, up, down, silu, yout] {
                kb.free_pool(pool)?;
            }
        }
        kb.core(home)?;
        let es = dtype.size() as u64;
        let (t, hd, i) = (t as u64, hd as u64, i as u64);
        Ok(Cost { flops: 2 * t * hd * i * 3, bytes_hbm: (2 * t * hd + 3 * hd * i) * es, peak_dtype: Some(dtype) })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let [t, hd, i] = dims(args)?;
        let get = |name: &str, n: usize| match inputs.get(name) {
            Some((_, v)) if v.len() == n => Ok(v.as_slice()),
            _ => Err(kernel_err(self.name(), format!("reference: input `{name}` of {n} values missing"))),
        };
        let (x, wg, wu, wd) = (get("x", t * hd)?, get("w_gate", hd * i)?, get("w_up", hd * i)?, get("w_down", i * hd)?);
        let mut y = vec![0.0f64; t * hd];
        let (mut g, mut u) = (vec![0.0f64; i], vec![0.0f64; i]);
        for (xr, yr) in x.chunks(hd).zip(y.chunks_mut(hd)) {
            g.iter_mut().chain(u.iter_mut()).for_each(|v| *v = 0.0);
            for (h, &xv) in xr.iter().enumerate() {
                let (wgr, wur) = (&wg[h * i..(h + 1) * i], &wu[h * i..(h + 1) * i]);
                for (((gv, uv), &a), &b) in g.iter_mut().zip(u.iter_mut()).zip(wgr).zip(wur) {
                    *gv += xv * a;
                    *uv += xv * b;
                }
            }
            for (j, (&gv, &uv)) in g.iter().zip(&u).enumerate() {
                let a = gv / (1.0 + (-gv).exp()) * uv;
                for (yv, &w) in yr.iter_mut().zip(&wd[j * hd..(j + 1) * hd]) {
                    *yv += a * w;
                }
            }
        }
        Ok(HostTensors::from([("y".to_string(), (vec![t, hd], y))]))
    }

    /// Scaled to the size of y. With the default inputs (uniform in [−1, 1))
    /// `x·w` has standard deviation `s = √Hd / 3`, the activation an rms of
    /// about `s²/√2` and y a standard deviation `σ = √(I/3) · s²/√2`. The
    /// device rounds the activation to the dtype before the down projection
    /// (relative error ≤ u per term, independent, so a fraction of `u·σ` on
    /// y; the worst elements of the tests reach about 7u·σ, y's own rounding
    /// included; the bound is 16u·σ — a real bug errs by about σ), accumulates in f32
    /// (`2^-24·√K` relative, K = Hd + I) and rounds y (2u relative).
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        let Ok([_, hd, i]) = dims(args) else { return Tolerance::for_dtype(args.dtype) };
        let u = match args.dtype {
            DType::Bf16 => 2f64.powi(-8),
            DType::F16 => 2f64.powi(-11),
            _ => 2f64.powi(-24),
        };
        let s = (hd as f64).sqrt() / 3.0;
        let sigma = (i as f64 / 3.0).sqrt() * s * s / std::f64::consts::SQRT_2;
        let accumulate = 2f64.powi(-24) * ((hd + i) as f64).sqrt();
        Tolerance { atol: (16.0 * u + 8.0 * accumulate) * sigma, rtol: 2.0 * u }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library::build;
    use proptest::prelude::*;
    use trainyard_isa::{Op, Space};
    use trainyard_sim::SimOptions;

    fn chip() -> ChipSpec {
        ChipSpec::by_name("trn2").unwrap()
    }

    /// Runs and checks; returns the max error as a fraction of atol.
    fn check(shape: [usize; 3], dtype: DType, cores: u16) -> f64 {
        let mut args = KernelArgs::new(&shape, dtype);
        args.cores = cores;
        let run = run_kernel(&Mlp, &chip(), &args, SimOptions::default(), 5).unwrap();
        let report = run.check.unwrap();
        assert!(report.passed, "{shape:?} {dtype} cores={cores}: {report:?}");
        let used = report.max_abs_err / report.tolerance.atol;
        eprintln!("{shape:?} {dtype}: max error {:.3e} = {used:.3} of atol", report.max_abs_err);
        used
    }

    #[test]
    fn small_and_odd_shapes_in_every_dtype() {
        for dtype in [DType::Bf16, DType::F16, DType::F32] {
            for shape in [[1, 64, 100], [130, 200, 300], [37, 129, 257]] {
                check(shape, dtype, 1);
            }
        }
    }

    #[test]
    fn two_cores_split_the_tokens() {
        check([130, 96, 140], DType::Bf16, 2);
        // One token: the second core has no work.
        check([1, 70, 130], DType::F32, 2);
    }

    #[test]
    fn tolerance_is_not_loose() {
        // Real errors use a fair share of the bound: a much looser bound would hide bugs.
        let used = check([64, 200, 300], DType::Bf16, 1);
        assert!(used > 0.02, "max error is only {used} of atol");
    }

    #[test]
    fn more_tokens_than_one_pass() {
        // 600 tokens: two passes of 300, each re-reading the weights.
        let args = KernelArgs::new(&[600, 64, 100], DType::Bf16);
        let built = build(&Mlp, &chip(), &args).unwrap();
        let gate_up_loads = built
            .program
            .insts
            .iter()
            .filter(
                |i| matches!(&i.op, Op::DmaCopy { src, .. } if src.space == Space::Hbm && src.partition_stride == 100),
            )
            .count();
        assert_eq!(gate_up_loads, 4, "gate and up, once per pass");
        check([600, 64, 100], DType::Bf16, 1);
    }

    #[test]
    fn benchmark_shape_plan_fits() {
        let chip = chip();
        let d = Dims::new(&chip, 4096, 14336, DType::Bf16);
        let pl = d.plan(&chip, 512).unwrap();
        assert_eq!((pl.tb, pl.iw), (512, 512), "{pl:?}");
        assert!(d.footprint(&pl) <= chip.core.sbuf.bytes_per_partition as usize);
        // f32 needs smaller passes.
        let d32 = Dims::new(&chip, 4096, 14336, DType::F32);
        let pl32 = d32.plan(&chip, 512).unwrap();
        assert!(pl32.tb < 512, "{pl32:?}");
    }

    #[test]
    fn argument_errors() {
        let chip = chip();
        let err = build(&Mlp, &chip, &KernelArgs::new(&[4, 8], DType::Bf16)).unwrap_err().to_string();
        assert!(err.contains("T,Hd,I"), "{err}");
        let err = build(&Mlp, &chip, &KernelArgs::new(&[4, 8, 8], DType::F8E4M3)).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        // 62 500 k-tiles of I: aᵀ of one token alone needs 250 kB per partition.
        let err = build(&Mlp, &chip, &KernelArgs::new(&[1, 1, 8_000_000], DType::F32)).unwrap_err().to_string();
        assert!(err.contains("do not fit SBUF"), "{err}");
    }

    #[test]
    fn counts() {
        let built = build(&Mlp, &chip(), &KernelArgs::new(&[3, 5, 7], DType::F16)).unwrap();
        assert_eq!(built.flops, 2 * 3 * 5 * 7 * 3);
        assert_eq!(built.bytes_hbm, (2 * 3 * 5 + 3 * 5 * 7) * 2);
        assert_eq!(built.peak_dtype, Some(DType::F16));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        #[test]
        fn random_shapes_match_the_reference(t in 1usize..131, hd in 64usize..201, i in 100usize..301) {
            let args = KernelArgs::new(&[t, hd, i], DType::Bf16);
            let run = run_kernel(&Mlp, &chip(), &args, SimOptions::default(), t as u64).unwrap();
            let report = run.check.unwrap();
            prop_assert!(report.passed, "{:?}", report);
        }
    }
}
