//! Helpers shared by the `elementwise` and `norms` families: argument errors,
//! signatures, bound tensors and the on-chip memory a kernel gives back,
//! tiling of flat and row-major tensors into `[partitions, free]` blocks,
//! splits over cores, host-side math, and per-engine cost estimates used to
//! balance work between the Vector, Scalar and GpSimd engines.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, TensorKind};

use crate::builder::{KernelBuilder, Tile, TilePool};
use crate::error::BuildError;
use crate::library::{check_bindings, Bindings, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::view::View;

/// DMA queue for the main input loads.
pub(crate) const Q_LOAD: u8 = 0;
/// DMA queue for second-input loads (so two inputs stream concurrently).
pub(crate) const Q_LOAD2: u8 = 1;
/// DMA queue for output stores.
pub(crate) const Q_STORE: u8 = 2;
/// DMA queue for one-off loads (broadcast parameters) and extra stores.
pub(crate) const Q_AUX: u8 = 3;

/// A `BuildError::Kernel` for `kernel`.
pub(crate) fn kernel_err(kernel: &str, message: impl Into<String>) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message: message.into() }
}

/// A signature entry.
pub(crate) fn sig(name: &str, kind: TensorKind, shape: &[usize], dtype: DType) -> TensorSig {
    TensorSig { name: name.to_string(), kind, shape: shape.to_vec(), dtype }
}

/// Checks what `emit` is given before it appends anything: the options and
/// dtype (as `library::build` does for standalone programs), the cores
/// against the chip, and the bindings against the signature.
pub(crate) use crate::library::bound;

pub(crate) fn check_emit(
    kernel: &dyn Kernel,
    kb: &KernelBuilder,
    args: &KernelArgs,
    io: &Bindings,
) -> Result<(), BuildError> {
    crate::library::check_args(kernel, kb.chip(), args)?;
    check_bindings(kernel, kb.chip(), args, io)
}

/// The tiles and pools a kernel allocates, given back together when it
/// ends, so that the kernel following in the builder finds SBUF and PSUM as
/// this one found them. Freeing earlier, while the kernel still allocates on
/// that core, would let later tiles reuse the memory and order their users
/// behind the old ones (kernels that allocate nothing more on a core may
/// free its pools when its part is issued).
#[derive(Debug, Default)]
pub(crate) struct Allocs {
    tiles: Vec<Tile>,
    pools: Vec<TilePool>,
}

impl Allocs {
    /// An SBUF tile on the current core, kept until [`Allocs::free`].
    pub fn sbuf(&mut self, kb: &mut KernelBuilder, shape: &[usize], dtype: DType) -> Result<View, BuildError> {
        let t = kb.sbuf_tile(shape, dtype)?;
        let v = t.view();
        self.tiles.push(t);
        Ok(v)
    }

    /// A PSUM tile on the current core, kept until [`Allocs::free`].
    pub fn psum(&mut self, kb: &mut KernelBuilder, shape: &[usize], dtype: DType) -> Result<View, BuildError> {
        let t = kb.psum_tile(shape, dtype)?;
        let v = t.view();
        self.tiles.push(t);
        Ok(v)
    }

    /// Takes a pool once the kernel is done issuing from it.
    pub fn keep_pool(&mut self, pool: TilePool) {
        self.pools.push(pool);
    }

    /// Frees everything (tiles remember their core).
    pub fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        self.tiles.into_iter().try_for_each(|t| kb.free(t))?;
        self.pools.into_iter().try_for_each(|p| kb.free_pool(p))
    }
}

/// Partitions of the chip's SBUF (the rows of a block).
pub(crate) fn partitions(chip: &ChipSpec) -> usize {
    chip.core.sbuf.partitions as usize
}

/// Product of a shape (1 for rank 0), or an error when it overflows.
pub(crate) fn numel(kernel: &str, shape: &[usize]) -> Result<usize, BuildError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| kernel_err(kernel, format!("shape {shape:?} has too many elements")))
}

/// The shape, checked to be non-empty with positive sizes.
pub(crate) fn any_shape(kernel: &str, args: &KernelArgs) -> Result<Vec<usize>, BuildError> {
    if args.shape.is_empty() || args.shape.contains(&0) {
        return Err(kernel_err(kernel, format!("shape must be one or more positive sizes, got {:?}", args.shape)));
    }
    numel(kernel, &args.shape)?;
    Ok(args.shape.clone())
}

/// A parsed activation function option.
pub(crate) fn act_fn(kernel: &str, key: &str, value: &str) -> Result<ActFn, BuildError> {
    value.parse::<ActFn>().map_err(|e| kernel_err(kernel, format!("option `{key}={value}`: {e}")))
}

/// A parsed ALU operator option.
pub(crate) fn alu_op(kernel: &str, key: &str, value: &str) -> Result<AluOp, BuildError> {
    value.parse::<AluOp>().map_err(|e| kernel_err(kernel, format!("option `{key}={value}`: {e}")))
}

/// A finite float option.
pub(crate) fn finite(kernel: &str, args: &KernelArgs, key: &str, default: f64) -> Result<f64, BuildError> {
    let v = args.f64(kernel, key, default)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(kernel_err(kernel, format!("option `{key}` must be finite, got {v}")))
    }
}

/// One block of a tiling: `parts` partitions × `per` consecutive units each,
/// covering units `start .. start + parts·per` (a unit is an element of a flat
/// tensor or a row of a matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    /// First unit.
    pub start: usize,
    /// Partitions used.
    pub parts: usize,
    /// Consecutive units per partition.
    pub per: usize,
}

impl Block {
    /// Units covered.
    pub fn units(&self) -> usize {
        self.parts * self.per
    }

    /// The units covered, as a range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.units()
    }
}

/// Tiles units `range` into blocks of `partitions × per_max` (full
/// partitions first), then one block of all partitions with fewer units
/// each, then a tail of fewer than `partitions` units: on one partition when
/// `tail_flat` (elements: one contiguous chunk), else one unit per partition
/// (rows).
pub(crate) fn blocks(range: Range<usize>, partitions: usize, per_max: usize, tail_flat: bool) -> Vec<Block> {
    let per_max = per_max.max(1);
    let mut out = Vec::new();
    let mut s = range.start;
    let full = partitions * per_max;
    while range.end.saturating_sub(s) >= full {
        out.push(Block { start: s, parts: partitions, per: per_max });
        s += full;
    }
    let rem = range.end.saturating_sub(s);
    if rem >= partitions {
        let per = rem / partitions;
        out.push(Block { start: s, parts: partitions, per });
        s += partitions * per;
    }
    let rem = range.end.saturating_sub(s);
    if rem > 0 {
        out.push(if tail_flat {
            Block { start: s, parts: 1, per: rem }
        } else {
            Block { start: s, parts: rem, per: 1 }
        });
    }
    out
}

/// Units per partition for a block: at most `max`, at least `min` (or all
/// there is), aiming for about four blocks so loads, compute and stores overlap.
pub(crate) fn per_partition(units: usize, partitions: usize, min: usize, max: usize) -> usize {
    let each = units.div_ceil(partitions.max(1));
    each.div_ceil(4).max(min).min(max).min(each).max(1)
}

/// Splits `0..n` into at most `ways` contiguous ranges, each a multiple of
/// `align` long except the last; empty ranges are dropped.
pub(crate) fn split(n: usize, ways: usize, align: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let step = n.div_ceil(ways.max(1)).div_ceil(align) * align;
    let mut out = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + step.max(1)).min(n);
        out.push(s..e);
        s = e;
    }
    out
}

/// Units `b` of a flat view as `[parts, per · inner]` (a unit = `inner` elements).
pub(crate) fn hbm_block(flat: &View, b: &Block, inner: usize) -> View {
    flat.slice(0, b.start * inner..b.range().end * inner).reshape(&[b.parts, b.per * inner])
}

/// Splits `0..n` into chunks of at most `max`.
pub(crate) fn chunks(n: usize, max: usize) -> Vec<Range<usize>> {
    let max = max.max(1);
    (0..n.div_ceil(max)).map(|i| i * max..((i + 1) * max).min(n)).collect()
}

/// True for the 16-bit float types (perf modes apply).
pub(crate) fn is_16bit(dtype: DType) -> bool {
    matches!(dtype, DType::Bf16 | DType::F16)
}

/// Nanoseconds per element per partition of the streaming instructions the
/// norms use, from the chip's clocks and perf-mode factors (the cost rules
/// HW-DEF-VE, HW-COST-TTENSOR, HW-VE-PERF-V3); only used to balance work
/// between engines, so rough is fine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Costs {
    /// Vector tensor_tensor add/mul, both inputs contiguous in SBUF.
    pub v_tt: f64,
    /// Vector tensor_scalar / copy, SBUF to SBUF.
    pub v_ts: f64,
    /// GpSimd tensor_tensor add/mul.
    pub g_tt: f64,
    /// GpSimd tensor_scalar.
    pub g_ts: f64,
    /// GpSimd tensor_reduce.
    pub g_reduce: f64,
}

impl Costs {
    /// Costs of `dtype` operands on `chip`.
    pub fn new(chip: &ChipSpec, dtype: DType) -> Costs {
        let e = &chip.core.elementwise;
        let c = &chip.core.clocks;
        let (tt16, ts16) =
            if is_16bit(dtype) { (e.vector_tt_16bit as f64, e.vector_perf_16bit as f64) } else { (1.0, 1.0) };
        // Two reads per element, one when everything is BF16 (HW-COST-TTENSOR).
        let reads = if dtype == DType::Bf16 { 1.0 } else { 2.0 };
        Costs {
            v_tt: reads / tt16 / c.vector_ghz,
            v_ts: 1.0 / ts16 / c.vector_ghz,
            g_tt: reads / c.gpsimd_ghz,
            g_ts: 1.0 / c.gpsimd_ghz,
            g_reduce: 1.0 / c.gpsimd_ghz,
        }
    }
}

/// Fraction of a splittable task (per-element cost `cost_a` on engine A,
/// `cost_b` on engine B) to give engine A so that both finish together, given
/// the loads they already carry.
pub(crate) fn balance(load_a: f64, load_b: f64, cost_a: f64, cost_b: f64) -> f64 {
    ((load_b + cost_b - load_a) / (cost_a + cost_b)).clamp(0.0, 1.0)
}

/// Column splitting `0..n` at fraction `f`, rounded to a multiple of 64 so
/// both pieces stay aligned (0 or `n` when a piece would be tiny).
pub(crate) fn split_at(n: usize, f: f64) -> usize {
    let at = ((n as f64 * f) / 64.0).round() as usize * 64;
    if at < 64 {
        0
    } else if n.saturating_sub(at) < 64 {
        n
    } else {
        at
    }
}

/// Host value of an activation function in f64 (the reference side): the
/// ISA's definition.
pub(crate) fn act_f64(f: ActFn, x: f64) -> f64 {
    f.eval_f64(x)
}

/// erf in f64, written independently of the ISA's (the reference definition
/// used by both the device and the kernel references), to cross-check it:
/// a positive-term series below 5, the asymptotic erfc series
/// beyond (where erfc < 2e-12). Accurate to ~1e-14, far below any device
/// tolerance; written independently of the simulator's own erf.
#[cfg(test)]
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    let r = if a < 5.0 {
        // erf(a) = 2/√π · e^{-a²} · Σ (2a²)^n a / (1·3·…·(2n+1)), all terms positive.
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term > 1e-17 * sum {
            n += 1.0;
            term *= 2.0 * a * a / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-a * a).exp() * sum
    } else {
        // erfc(a) ≈ e^{-a²}/(a√π) · (1 − 1/(2a²) + 3/(4a⁴) − 15/(8a⁶) + …), a ≥ 5.
        let inv = 1.0 / (2.0 * a * a);
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in 1..12 {
            term *= -((2 * k - 1) as f64) * inv;
            sum += term;
        }
        1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * sum
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// The values of host tensor `name`, or a kernel error naming it.
pub(crate) fn input<'a>(kernel: &str, inputs: &'a HostTensors, name: &str) -> Result<&'a [f64], BuildError> {
    inputs.get(name).map(|(_, v)| v.as_slice()).ok_or_else(|| kernel_err(kernel, format!("missing input `{name}`")))
}

/// A one-output host result.
pub(crate) fn output(name: &str, shape: Vec<usize>, values: Vec<f64>) -> HostTensors {
    let mut out = HostTensors::new();
    out.insert(name.to_string(), (shape, values));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn erf_matches_the_isa_reference() {
        for i in -70..=70 {
            let x = i as f64 / 10.0;
            let (a, b) = (erf(x), trainyard_isa::erf(x));
            assert!((a - b).abs() < 1e-12, "erf({x}) = {a}, isa {b}");
        }
    }

    #[test]
    fn split_aligns_and_covers() {
        assert_eq!(split(1000, 3, 128), vec![0..384, 384..768, 768..1000]);
        assert_eq!(split(100, 8, 128), vec![0..100]);
        assert_eq!(split_at(8192, 0.44), 3584);
        assert_eq!(split_at(100, 0.3), 0);
        assert_eq!(split_at(100, 0.9), 100);
        assert!((balance(1.0, 0.0, 1.0, 1.0) - 0.0).abs() < 1e-12);
        assert!((balance(0.0, 0.0, 1.0, 1.0) - 0.5).abs() < 1e-12);
    }

    proptest! {
        /// Blocks tile the range exactly, in order, within the partition and per-partition limits.
        #[test]
        fn blocks_tile_the_range(start in 0usize..500, len in 0usize..5000, per_max in 1usize..40, flat: bool) {
            let bs = blocks(start..start + len, 128, per_max, flat);
            let mut at = start;
            for b in &bs {
                prop_assert_eq!(b.start, at);
                prop_assert!(b.parts >= 1 && b.parts <= 128 && b.per >= 1);
                prop_assert!(b.per <= per_max || (flat && b.parts == 1 && b.per < 128));
                at += b.units();
            }
            prop_assert_eq!(at, start + len);
        }

        #[test]
        fn per_partition_is_bounded(units in 1usize..1_000_000, min in 1usize..64, max in 64usize..9000) {
            let p = per_partition(units, 128, min, max);
            prop_assert!(p >= 1 && p <= max);
        }
    }
}
