//! `rotary`: rotary position embedding, "rotate half" convention (Llama).
//!
//! Tokens on partitions (128 per tile), `heads × D` along the free axis; `cos`
//! and `sin` (`[T, D/2]`) are read once per token tile and broadcast over the
//! heads by a stride-0 view. `y₁ = x₁·cos − x₂·sin`, `y₂ = x₂·cos + x₁·sin`
//! take six elementwise instructions; only Vector and GpSimd multiply two
//! tensors, so each head chunk is split between them in proportion to their
//! rates (Vector runs 16-bit tensor_tensor at twice its f32 rate,
//! HW-VE-PERF-V3). Products are ordered so that no instruction reads what
//! the one before it on the same engine wrote (HW-DEF-DEP). Loads, compute
//! and stores of consecutive tiles overlap through rotating buffers.
//!
//! The four products are stored in the input dtype (which keeps Vector in its
//! 16-bit mode), so a 16-bit result carries at most one extra rounding of
//! each product: `|err| ≤ 2⁻⁹(|x₁·cos| + |x₂·sin|)` beyond the output's own
//! rounding for bf16 (2⁻¹¹ for f16), inside the default tolerance for inputs
//! of magnitude ≲ 1.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Engine, TensorKind};

use super::{bound, check_args, kernel_err, on_cores, with_arena, FLOAT_DTYPES};
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::{BuildError, KernelBuilder, View};

const NAME: &str = "rotary";

/// Tokens per tile (partitions).
const TP: usize = 128;
/// Elements of one head chunk per partition: 8 KiB of bf16.
const CHUNK_ELEMS: usize = 4096;
/// Buffers per ring: a chunk loads while the previous one computes and the one before stores.
const BUFS: usize = 3;

/// `y = rope(x, cos, sin)` over `[T, H, D]`.
pub struct Rotary;

/// One `[tokens, heads]` piece of work.
#[derive(Clone, Copy, Debug)]
struct Piece {
    t0: usize,
    tp: usize,
    h0: usize,
    hn: usize,
    /// First piece of its token tile (loads cos/sin).
    first: bool,
}

impl Rotary {
    /// Heads of a chunk that the Vector engine takes; GpSimd the rest.
    fn vector_heads(chip: &ChipSpec, dtype: DType, d: usize, heads: usize) -> usize {
        let c = &chip.core.clocks;
        // Per head and op: Vector 2·(D/2) reads at 2× for 16-bit; GpSimd 2·(D/2), no 16-bit mode.
        let speedup = if dtype.size() == 2 { chip.core.elementwise.vector_tt_16bit as f64 } else { 1.0 };
        let tv = d as f64 / speedup / c.vector_ghz;
        let tg = d as f64 / c.gpsimd_ghz;
        let share = tg / (tv + tg);
        ((heads as f64 * share).round() as usize).clamp(1, heads)
    }
}

/// The shape `[T, H, D]`, checked (D even).
fn parse(args: &KernelArgs) -> Result<[usize; 3], BuildError> {
    check_args(&Rotary, args)?;
    let [t, h, d] = args.dims::<3>(NAME, "T,H,D")?;
    if d % 2 != 0 {
        return Err(kernel_err(NAME, format!("head dim D={d} must be even")));
    }
    Ok([t, h, d])
}

/// `dst = a op b` over the heads `h` of `[tp, hn, half]` views.
fn tt(kb: &mut KernelBuilder, engine: Engine, op: AluOp, dst: &View, a: &View, b: &View) -> Result<(), BuildError> {
    kb.tensor_tensor(engine, op, dst, a, b).map(|_| ())
}

impl Kernel for Rotary {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "attention"
    }
    fn summary(&self) -> &'static str {
        "rotary embedding, rotate-half: y = [x1·cos − x2·sin, x2·cos + x1·sin] (inputs x, cos, sin; output y)"
    }
    fn shape_help(&self) -> &'static str {
        "T,H,D (tokens, heads, head dim, even); x [T,H,D], cos/sin [T,D/2]"
    }
    fn dtypes(&self) -> &'static [DType] {
        FLOAT_DTYPES
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![512, 8, 64]
    }

    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let [t, h, d] = parse(args)?;
        let sig =
            |name: &str, kind, shape: Vec<usize>| TensorSig { name: name.to_string(), kind, shape, dtype: args.dtype };
        Ok(vec![
            sig("x", TensorKind::Input, vec![t, h, d]),
            sig("cos", TensorKind::Input, vec![t, d / 2]),
            sig("sin", TensorKind::Input, vec![t, d / 2]),
            sig("y", TensorKind::Output, vec![t, h, d]),
        ])
    }

    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        let [t, h, d] = parse(args)?;
        let (dt, half) = (args.dtype, d / 2);
        let [x, cos, sin, y] = ["x", "cos", "sin", "y"].map(|name| bound(NAME, io, name));
        let (x, cos, sin, y) = (x?, cos?, sin?, y?);
        let chip = kb.chip().clone();
        let hc = (CHUNK_ELEMS / d).clamp(1, h);
        let tiles = t.div_ceil(TP);
        let cores = (args.cores as usize).min(tiles).max(1);
        on_cores(kb, cores, |kb, c| {
            let mut pieces = Vec::new();
            for ti in c * tiles / cores..(c + 1) * tiles / cores {
                let (t0, tp) = (ti * TP, TP.min(t - ti * TP));
                for h0 in (0..h).step_by(hc) {
                    pieces.push(Piece { t0, tp, h0, hn: hc.min(h - h0), first: h0 == 0 });
                }
            }
            with_arena(kb, |kb, arena| {
                let mut ring = |kb: &mut KernelBuilder, shape: &[usize]| arena.ring(kb, BUFS, shape, dt, false);
                let xs = ring(kb, &[TP, hc, d])?;
                let ys = ring(kb, &[TP, hc, d])?;
                let tmps: Vec<Vec<View>> = (0..4).map(|_| ring(kb, &[TP, hc, half])).collect::<Result<_, _>>()?;
                let coss = ring(kb, &[TP, half])?;
                let sins = ring(kb, &[TP, half])?;
                let mut tile_no = 0usize;
                for (i, pc) in pieces.iter().enumerate() {
                    if pc.first && i > 0 {
                        tile_no += 1;
                    }
                    let (xt, yt) = (&xs[i % BUFS], &ys[i % BUFS]);
                    let (ct, st) = (&coss[tile_no % BUFS], &sins[tile_no % BUFS]);
                    let rows = pc.t0..pc.t0 + pc.tp;
                    let heads = pc.h0..pc.h0 + pc.hn;
                    let src = x.rows(rows.clone()).slice(1, heads.clone());
                    kb.dma_on(0, xt.part(0..pc.tp).slice(1, 0..pc.hn), src)?;
                    if pc.first {
                        kb.dma_on(1, ct.part(0..pc.tp), cos.rows(rows.clone()))?;
                        kb.dma_on(1, st.part(0..pc.tp), sin.rows(rows.clone()))?;
                    }
                    let nv = Self::vector_heads(&chip, dt, d, pc.hn);
                    for (engine, hr) in [(Engine::Vector, 0..nv), (Engine::GpSimd, nv..pc.hn)] {
                        let n = hr.len();
                        if n == 0 {
                            continue;
                        }
                        let hv = |v: &View, cols: std::ops::Range<usize>| {
                            v.part(0..pc.tp).slice(1, hr.clone()).slice(2, cols)
                        };
                        let (x1, x2) = (hv(xt, 0..half), hv(xt, half..d));
                        let (y1, y2) = (hv(yt, 0..half), hv(yt, half..d));
                        let tm: Vec<View> = tmps.iter().map(|r| hv(&r[i % BUFS], 0..half)).collect();
                        let bc = |v: &View| v.part(0..pc.tp).reshape_free(&[1, half]).broadcast(1, n);
                        let (cb, sb) = (bc(ct), bc(st));
                        tt(kb, engine, AluOp::Mul, &tm[0], &x1, &cb)?;
                        tt(kb, engine, AluOp::Mul, &tm[1], &x2, &cb)?;
                        tt(kb, engine, AluOp::Mul, &tm[2], &x2, &sb)?;
                        tt(kb, engine, AluOp::Mul, &tm[3], &x1, &sb)?;
                        tt(kb, engine, AluOp::Sub, &y1, &tm[0], &tm[2])?;
                        tt(kb, engine, AluOp::Add, &y2, &tm[1], &tm[3])?;
                    }
                    kb.dma_on(2, y.rows(rows).slice(1, heads), yt.part(0..pc.tp).slice(1, 0..pc.hn))?;
                }
                Ok(())
            })
        })?;
        let bytes = (2 * t * h * d + 2 * t * half) as u64 * dt.size() as u64;
        Ok(Cost { flops: 3 * (t * h * d) as u64, bytes_hbm: bytes, peak_dtype: None })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let [t, h, d] = args.dims::<3>(NAME, "T,H,D")?;
        let half = d / 2;
        let get = |name: &str| {
            inputs.get(name).map(|(_, v)| v).ok_or_else(|| kernel_err(NAME, format!("missing input `{name}`")))
        };
        let (x, cos, sin) = (get("x")?, get("cos")?, get("sin")?);
        let mut y = vec![0.0; t * h * d];
        for ti in 0..t {
            for hi in 0..h {
                let base = (ti * h + hi) * d;
                for j in 0..half {
                    let (c, s) = (cos[ti * half + j], sin[ti * half + j]);
                    let (x1, x2) = (x[base + j], x[base + half + j]);
                    y[base + j] = x1 * c - x2 * s;
                    y[base + half + j] = x2 * c + x1 * s;
                }
            }
        }
        Ok(HostTensors::from([("y".to_string(), (vec![t, h, d], y))]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library;
    use proptest::prelude::*;
    use trainyard_sim::SimOptions;

    fn check(shape: &[usize], dtype: DType, cores: u16) {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let mut a = KernelArgs::new(shape, dtype);
        a.cores = cores;
        let run = run_kernel(&Rotary, &chip, &a, SimOptions::default(), 3).unwrap();
        let c = run.check.unwrap();
        assert!(c.passed, "{shape:?} {dtype}: max abs {} worst {:?}", c.max_abs_err, c.worst);
    }

    #[test]
    fn odd_token_counts_every_dtype() {
        for dtype in [DType::Bf16, DType::F16, DType::F32] {
            check(&[7, 3, 64], dtype, 1);
            check(&[131, 2, 128], dtype, 1);
        }
    }

    #[test]
    fn head_chunks_and_cores() {
        // 40 heads of 128: chunks of 32 + 8 heads; 300 tokens over two cores.
        check(&[300, 40, 128], DType::Bf16, 2);
        check(&[1, 1, 2], DType::F32, 1);
    }

    #[test]
    fn rotation_preserves_pair_norms() {
        // With cos² + sin² = 1 every (x1, x2) pair keeps its length.
        let a = KernelArgs::new(&[4, 1, 4], DType::F32);
        let theta: [f64; 8] = [0.1, 0.7, 1.3, 2.0, -0.4, 3.0, 0.0, -2.2];
        let x: Vec<f64> = (0..16).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut inputs = HostTensors::new();
        inputs.insert("x".into(), (vec![4, 1, 4], x.clone()));
        inputs.insert("cos".into(), (vec![4, 2], theta.iter().map(|t| t.cos()).collect()));
        inputs.insert("sin".into(), (vec![4, 2], theta.iter().map(|t| t.sin()).collect()));
        let y = &Rotary.reference(&a, &inputs).unwrap()["y"].1;
        for tok in 0..4 {
            for j in 0..2 {
                let (b, h) = (tok * 4 + j, tok * 4 + j + 2);
                let before = x[b].hypot(x[h]);
                assert!((y[b].hypot(y[h]) - before).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn errors_and_counts() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let err = library::build(&Rotary, &chip, &KernelArgs::new(&[4, 2, 7], DType::Bf16)).unwrap_err();
        assert!(err.to_string().contains("D=7"), "{err}");
        let built = library::build(&Rotary, &chip, &KernelArgs::new(&[4, 2, 8], DType::Bf16)).unwrap();
        assert_eq!(built.bytes_hbm, (2 * 4 * 2 * 8 + 2 * 4 * 4) * 2);
        assert_eq!(built.peak_dtype, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes(t in 1usize..300, h in 1usize..5, half in 1usize..70) {
            check(&[t, h, 2 * half], DType::Bf16, 1);
        }
    }
}
