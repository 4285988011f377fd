//! `argmax` and `topk` along the last axis.
//!
//! Tie rule: among equal values the smallest column index wins, for the
//! single argmax and for every pick of top-k (so equal values come out in
//! increasing index order); the host reference applies the same rule.
//!
//! NaN: not supported. The default inputs hold no NaN; for a row with NaN
//! the results are unspecified (the max reduction skips NaN, and no element
//! compares equal to it). −∞ is fine: a row with fewer than k finite values
//! yields −∞ values with distinct indices.
//!
//! The ISA has no max-index instruction, so the index comes from arithmetic
//! on a key per column, `key[j] = 2^24 − j` (exact in f32 for j < 2^24):
//!
//! 1. `m = max_j x[j]` (tensor_reduce);
//! 2. `eq[j] = (x[j] == m)` (tensor_scalar against the per-partition m);
//! 3. `r = max_j eq[j] · key[j]` (tensor_tensor + tensor_reduce): the largest
//!    key among the maxima, i.e. 2^24 minus the *first* index of the max;
//! 4. for the next top-k pick, the chosen column (`key == r`) is masked:
//!    `x = −∞` and `key = 0` (two selects), so it is never picked again even
//!    when the remaining values are −∞.
//!
//! Long rows are cut into column chunks: each chunk yields its own top
//! candidates (value, global key), and the same passes over the candidates
//! give the row's result — a key carries its global index, so the tie rule
//! survives the merge.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Engine, TensorKind};

use super::{bound, check_args, core_share, kernel_err, sig, Queues};
use crate::builder::{HbmTensor, KernelBuilder, TilePool};
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;

/// Keys are `KEY_BASE − index`: every index below 2^24 keeps an exact f32 key.
const KEY_BASE: i64 = 1 << 24;

/// Columns per chunk of a long row (f32 work tiles of 16 KiB per partition).
const CHUNK: usize = 4096;

/// Largest k of `topk`: one max/mask pass per pick is unrolled per row block.
const MAX_K: usize = 8;

/// Work tiles per row block are double-buffered so one block's loads overlap
/// the previous block's passes.
const BUFS: usize = 2;

/// `idx[r] = argmax_c x[r, c]` (first index on ties): shape `R,C`.
///
/// Rows on partitions (128 per block), columns on the free axis in chunks of
/// 4096. Each row block runs the max / equal / key-max passes of the module
/// docs on the Vector engine or, for every other block, on GpSimd, so two
/// blocks compute at once; the key row is built once per core by `iota`.
/// Blocks are split over the cores. Option `index`: the output dtype (`u32`
/// default, or `i32`).
pub struct Argmax;

/// `values[r, :], indices[r, :]` = the k largest `x[r, c]` in descending
/// order (first index on ties): shape `R,C`, option `k` (1..=8, default 8).
///
/// Same tiling as [`Argmax`], with k passes per block; between passes the
/// picked column is masked to −∞ and its key to 0. Rows longer than 4096
/// columns give k candidates per chunk, merged by the same passes. Outputs:
/// `values [R, k]` (input dtype) and `indices [R, k]` (u32).
pub struct TopK;

/// The shape checks and limits shared by both kernels.
fn dims(kernel: &str, args: &KernelArgs, k: usize) -> Result<(usize, usize), BuildError> {
    let [r, c] = args.dims::<2>(kernel, "R,C")?;
    if c as i64 >= KEY_BASE {
        return Err(kernel_err(kernel, format!("C = {c} columns: indices must stay below 2^24 (exact in f32)")));
    }
    if k > c {
        return Err(kernel_err(kernel, format!("k = {k} is larger than the row length C = {c}")));
    }
    if c.div_ceil(CHUNK) * k > CHUNK {
        return Err(kernel_err(
            kernel,
            format!(
                "C = {c} is too long for k = {k}: at most {} columns (k candidates per chunk of {CHUNK})",
                CHUNK / k * CHUNK
            ),
        ));
    }
    Ok((r, c))
}

fn topk_k(args: &KernelArgs) -> Result<usize, BuildError> {
    let k = args.usize("topk", "k", MAX_K)?;
    if !(1..=MAX_K).contains(&k) {
        return Err(kernel_err(
            "topk",
            format!("k = {k} is not supported: k must be in 1..={MAX_K} (one unrolled max/mask pass per pick)"),
        ));
    }
    Ok(k)
}

fn argmax_index_dtype(args: &KernelArgs) -> Result<DType, BuildError> {
    match args.dtype_opt("argmax", "index", DType::U32)? {
        d @ (DType::U32 | DType::I32) => Ok(d),
        d => Err(kernel_err("argmax", format!("option `index={d}`: the index dtype must be u32 or i32"))),
    }
}

/// What one instance computes: `k` picks per row, indices in `index`, and
/// whether the values are an output too (`topk`) or not (`argmax`).
#[derive(Clone, Copy, Debug)]
struct Spec {
    kernel: &'static str,
    k: usize,
    index: DType,
    values: bool,
}

impl Spec {
    fn argmax(args: &KernelArgs) -> Result<Spec, BuildError> {
        Ok(Spec { kernel: "argmax", k: 1, index: argmax_index_dtype(args)?, values: false })
    }

    fn topk(args: &KernelArgs) -> Result<Spec, BuildError> {
        Ok(Spec { kernel: "topk", k: topk_k(args)?, index: DType::U32, values: true })
    }

    /// `x`, then `idx [R]` (argmax) or `values, indices [R, k]` (topk).
    fn signature(&self, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let (rows, cols) = dims(self.kernel, args, self.k)?;
        let mut sigs = vec![sig("x", TensorKind::Input, &[rows, cols], args.dtype)];
        if self.values {
            sigs.push(sig("values", TensorKind::Output, &[rows, self.k], args.dtype));
            sigs.push(sig("indices", TensorKind::Output, &[rows, self.k], self.index));
        } else {
            sigs.push(sig("idx", TensorKind::Output, &[rows], self.index));
        }
        Ok(sigs)
    }
}

/// Where an emitted kernel writes its results.
struct Outputs {
    /// `[R, k]` values, if wanted.
    values: Option<HbmTensor>,
    /// `[R, k]` indices.
    indices: View,
}

/// The double-buffered SBUF tiles of one core.
struct Pools {
    x: TilePool,
    /// Key rows rebuilt per block (`None` when the constant key serves).
    key: Option<TilePool>,
    eq: TilePool,
    t: TilePool,
    vals: TilePool,
    keys: TilePool,
    idx: TilePool,
    /// Candidates of chunked rows (values, keys); `None` for one-chunk rows.
    cand: Option<(TilePool, TilePool)>,
}

impl Pools {
    fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        let Pools { x, key, eq, t, vals, keys, idx, cand } = self;
        let (cand_v, cand_k) = cand.unzip();
        for pool in
            [Some(x), key, Some(eq), Some(t), Some(vals), Some(keys), Some(idx), cand_v, cand_k].into_iter().flatten()
        {
            kb.free_pool(pool)?;
        }
        Ok(())
    }
}

/// Per-partition constants of one core: −∞ (input dtype) and 0.0 (f32).
struct Consts {
    neg_inf: View,
    zero: View,
    /// The key row `2^24 − j` of a one-chunk row, when it is never masked (k = 1).
    key: Option<View>,
}

/// One block's scratch for [`pick_top`].
struct Scratch {
    eq: View,
    t: View,
}

/// Writes the `k` largest values of each row of `x` (`[p, n]`) to
/// `vals[:, 0..k]` and their keys to `keys[:, 0..k]`; masks `x` and `key`
/// between picks (not after the last), so both are consumed.
#[allow(clippy::too_many_arguments)]
fn pick_top(
    kb: &mut KernelBuilder,
    e: Engine,
    x: &View,
    key: &View,
    s: &Scratch,
    c: &Consts,
    k: usize,
    vals: &View,
    keys: &View,
) -> Result<(), BuildError> {
    let (p, n) = (x.shape()[0], x.shape()[1]);
    let eq = s.eq.part(0..p).cols(0..n);
    let t = s.t.part(0..p).cols(0..n);
    for i in 0..k {
        let m = vals.cols(i..i + 1);
        let r = keys.cols(i..i + 1);
        kb.tensor_reduce(e, AluOp::Max, &m, x, 1, false)?;
        kb.tensor_scalar(e, &eq, x, Stage::new(AluOp::Eq, &m), None)?;
        kb.tensor_tensor(e, AluOp::Mul, &t, &eq, key)?;
        kb.tensor_reduce(e, AluOp::Max, &r, &t, 1, false)?;
        if i + 1 < k {
            // `eq` is free again: it now marks the picked column.
            kb.tensor_scalar(e, &eq, key, Stage::new(AluOp::Eq, &r), None)?;
            kb.select(e, x, &eq, c.neg_inf.part(0..p).broadcast_free(n), x)?;
            kb.select(e, key, &eq, c.zero.part(0..p).broadcast_free(n), key)?;
        }
    }
    Ok(())
}

/// Emits the whole kernel over the bound tensors `io` (checked by the caller).
fn emit_topk(kb: &mut KernelBuilder, spec: &Spec, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
    let (kernel, k, index_dtype) = (spec.kernel, spec.k, spec.index);
    let (rows, cols) = dims(kernel, args, k)?;
    let dtype = args.dtype;
    let x = bound(kernel, io, "x")?;
    let out = if spec.values {
        let indices = bound(kernel, io, "indices")?;
        Outputs { values: Some(bound(kernel, io, "values")?.clone()), indices: indices.view() }
    } else {
        Outputs { values: None, indices: bound(kernel, io, "idx")?.reshape(&[rows, 1]) }
    };

    let parts = kb.chip().core.sbuf.partitions as usize;
    let chunk = cols.min(CHUNK);
    let chunks = cols.div_ceil(chunk);
    let blocks = rows.div_ceil(parts);
    let cores = args.cores as usize;
    let home = kb.current_core();
    for core in 0..cores {
        let share = core_share(blocks, cores, core);
        if share.is_empty() {
            continue;
        }
        kb.core(core as u16)?;
        let neg_inf = kb.sbuf_tile(&[parts, 1], dtype)?;
        let zero = kb.sbuf_tile(&[parts, 1], DType::F32)?;
        kb.memset(Engine::Vector, &neg_inf, f64::NEG_INFINITY)?;
        kb.memset(Engine::Vector, &zero, 0.0)?;
        let const_key = if k == 1 && chunks == 1 {
            let t = kb.sbuf_tile(&[parts, chunk], DType::F32)?;
            kb.iota(&t, KEY_BASE as i32, 0, &[-1])?;
            Some(t)
        } else {
            None
        };
        let consts = Consts { neg_inf: neg_inf.view(), zero: zero.view(), key: const_key.as_ref().map(|t| t.view()) };
        let work = if chunks > 1 { CHUNK } else { chunk };
        let mut pools = Pools {
            x: kb.sbuf_pool(&[parts, chunk], dtype, BUFS)?,
            key: match consts.key {
                Some(_) => None,
                None => Some(kb.sbuf_pool(&[parts, work], DType::F32, BUFS)?),
            },
            eq: kb.sbuf_pool(&[parts, work], dtype, BUFS)?,
            t: kb.sbuf_pool(&[parts, work], DType::F32, BUFS)?,
            vals: kb.sbuf_pool(&[parts, k], dtype, BUFS)?,
            keys: kb.sbuf_pool(&[parts, k], DType::F32, BUFS)?,
            idx: kb.sbuf_pool(&[parts, k], index_dtype, BUFS)?,
            cand: if chunks > 1 {
                Some((
                    kb.sbuf_pool(&[parts, chunks * k], dtype, BUFS)?,
                    kb.sbuf_pool(&[parts, chunks * k], DType::F32, BUFS)?,
                ))
            } else {
                None
            },
        };
        let (mut loads, mut stores) = (Queues::new(&[0, 1, 2, 3]), Queues::new(&[4, 5]));
        for b in share {
            let r0 = b * parts;
            let p = parts.min(rows - r0);
            let e = if b % 2 == 0 { Engine::Vector } else { Engine::GpSimd };
            let scratch = Scratch { eq: pools.eq.next(), t: pools.t.next() };
            let vals = pools.vals.next().part(0..p);
            let keys = pools.keys.next().part(0..p);
            match (&mut pools.cand, &mut pools.key) {
                (None, key_pool) => {
                    let xt = pools.x.next().part(0..p).cols(0..cols);
                    kb.dma_on(loads.next(), &xt, x.rows(r0..r0 + p))?;
                    let key = match (&consts.key, key_pool) {
                        (Some(key), _) => key.part(0..p).cols(0..cols),
                        (None, Some(pool)) => {
                            let key = pool.next().part(0..p).cols(0..cols);
                            kb.iota(&key, KEY_BASE as i32, 0, &[-1])?;
                            key
                        }
                        (None, None) => return Err(kernel_err(kernel, "internal: no key row".into())),
                    };
                    pick_top(kb, e, &xt, &key, &scratch, &consts, k, &vals, &keys)?;
                }
                (Some((cand_v, cand_k)), Some(key_pool)) => {
                    let (cand_v, cand_k) = (cand_v.next().part(0..p), cand_k.next().part(0..p));
                    let mut ncand = 0;
                    for c0 in (0..cols).step_by(chunk) {
                        let n = chunk.min(cols - c0);
                        let xt = pools.x.next().part(0..p).cols(0..n);
                        kb.dma_on(loads.next(), &xt, x.rows(r0..r0 + p).cols(c0..c0 + n))?;
                        let key = key_pool.next().part(0..p).cols(0..n);
                        kb.iota(&key, (KEY_BASE - c0 as i64) as i32, 0, &[-1])?;
                        let kk = k.min(n);
                        let (cv, ck) = (cand_v.cols(ncand..ncand + kk), cand_k.cols(ncand..ncand + kk));
                        pick_top(kb, e, &xt, &key, &scratch, &consts, kk, &cv, &ck)?;
                        ncand += kk;
                    }
                    let (cv, ck) = (cand_v.cols(0..ncand), cand_k.cols(0..ncand));
                    pick_top(kb, e, &cv, &ck, &scratch, &consts, k, &vals, &keys)?;
                }
                (Some(_), None) => return Err(kernel_err(kernel, "internal: chunked rows without key rows".into())),
            }
            // index = 2^24 − key, exact in f32, stored as an integer.
            let idx = pools.idx.next().part(0..p);
            kb.tensor_scalar(
                e,
                &idx,
                &keys,
                Stage::new(AluOp::Mul, -1.0),
                Some(Stage::new(AluOp::Add, KEY_BASE as f32)),
            )?;
            kb.dma_on(stores.next(), out.indices.rows(r0..r0 + p), &idx)?;
            if let Some(values) = &out.values {
                kb.dma_on(stores.next(), values.rows(r0..r0 + p), &vals)?;
            }
        }
        pools.free(kb)?;
        for t in [Some(neg_inf), Some(zero), const_key].into_iter().flatten() {
            kb.free(t)?;
        }
    }
    kb.core(home)?;
    let n = (rows * cols) as u64;
    let out_bytes =
        (rows * k) as u64 * (index_dtype.size() + if out.values.is_some() { dtype.size() } else { 0 }) as u64;
    Ok(Cost {
        // Per pick: the max, the compare, the key product and its max.
        flops: 4 * k as u64 * n,
        bytes_hbm: n * dtype.size() as u64 + out_bytes,
        peak_dtype: None,
    })
}

/// The `k` largest values of `row` with their indices, in descending order,
/// smallest index first among equal values.
fn reference_row(row: &[f64], k: usize) -> Vec<(f64, usize)> {
    let mut taken = vec![false; row.len()];
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let mut best: Option<(f64, usize)> = None;
        for (j, &v) in row.iter().enumerate() {
            if !taken[j] && best.is_none_or(|(b, _)| v > b) {
                best = Some((v, j));
            }
        }
        if let Some((v, j)) = best {
            taken[j] = true;
            out.push((v, j));
        }
    }
    out
}

fn input_x<'a>(kernel: &str, inputs: &'a HostTensors, rows: usize, cols: usize) -> Result<&'a [f64], BuildError> {
    match inputs.get("x") {
        Some((_, x)) if x.len() == rows * cols => Ok(x),
        _ => Err(kernel_err(kernel, format!("reference: input `x` of {rows}×{cols} values missing"))),
    }
}

impl Kernel for Argmax {
    fn name(&self) -> &'static str {
        "argmax"
    }
    fn family(&self) -> &'static str {
        "misc"
    }
    fn summary(&self) -> &'static str {
        "idx[r] = first index of the max of x[r,:] (input x [R,C]; output idx [R] u32, or i32 with index=i32)"
    }
    fn shape_help(&self) -> &'static str {
        "R,C"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[("index", "dtype of idx: u32 (default) or i32")]
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![130, 1000]
    }
    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        check_args(self, chip, args)?;
        Spec::argmax(args)?.signature(args)
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        emit_topk(kb, &Spec::argmax(args)?, args, io)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let (rows, cols) = dims(self.name(), args, 1)?;
        let x = input_x(self.name(), inputs, rows, cols)?;
        let idx = x.chunks(cols).map(|row| reference_row(row, 1).first().map_or(0.0, |&(_, j)| j as f64)).collect();
        Ok(HostTensors::from([("idx".to_string(), (vec![rows], idx))]))
    }
    /// Indices must match exactly.
    fn tolerance(&self, _args: &KernelArgs) -> Tolerance {
        Tolerance { atol: 0.0, rtol: 0.0 }
    }
}

impl Kernel for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }
    fn family(&self) -> &'static str {
        "misc"
    }
    fn summary(&self) -> &'static str {
        "k largest of x[r,:], descending, first index on ties (input x [R,C]; outputs values [R,k], indices [R,k] u32)"
    }
    fn shape_help(&self) -> &'static str {
        "R,C"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[("k", "values per row, 1..=8 (default 8)")]
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![130, 1000]
    }
    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        check_args(self, chip, args)?;
        Spec::topk(args)?.signature(args)
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        emit_topk(kb, &Spec::topk(args)?, args, io)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let k = topk_k(args)?;
        let (rows, cols) = dims(self.name(), args, k)?;
        let x = input_x(self.name(), inputs, rows, cols)?;
        let (mut values, mut indices) = (Vec::with_capacity(rows * k), Vec::with_capacity(rows * k));
        for row in x.chunks(cols) {
            for (v, j) in reference_row(row, k) {
                values.push(v);
                indices.push(j as f64);
            }
        }
        Ok(HostTensors::from([
            ("values".to_string(), (vec![rows, k], values)),
            ("indices".to_string(), (vec![rows, k], indices)),
        ]))
    }
    /// Values are copies of inputs and indices must match: exact.
    fn tolerance(&self, _args: &KernelArgs) -> Tolerance {
        Tolerance { atol: 0.0, rtol: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library::build;
    use proptest::prelude::*;
    use trainyard_arch::SplitMix64;
    use trainyard_runtime::{HostTensor, Session};
    use trainyard_sim::SimOptions;

    fn chip() -> ChipSpec {
        ChipSpec::by_name("trn2").unwrap()
    }

    /// A kernel whose inputs are full of ties: `levels` distinct values (and
    /// −∞ when `with_neg_inf`), so first-index tie breaking is exercised.
    struct Tied<K> {
        inner: K,
        levels: u64,
        with_neg_inf: bool,
    }

    impl<K: Kernel> Kernel for Tied<K> {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn family(&self) -> &'static str {
            self.inner.family()
        }
        fn summary(&self) -> &'static str {
            self.inner.summary()
        }
        fn shape_help(&self) -> &'static str {
            self.inner.shape_help()
        }
        fn options_help(&self) -> &'static [(&'static str, &'static str)] {
            self.inner.options_help()
        }
        fn default_shape(&self) -> Vec<usize> {
            self.inner.default_shape()
        }
        fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
            self.inner.build(chip, args)
        }
        fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
            self.inner.reference(args, inputs)
        }
        fn tolerance(&self, args: &KernelArgs) -> Tolerance {
            self.inner.tolerance(args)
        }
        fn input_values(&self, _args: &KernelArgs, _name: &str, shape: &[usize], seed: u64) -> Option<Vec<f64>> {
            let mut rng = SplitMix64::new(seed);
            let n = shape.iter().product();
            Some(
                (0..n)
                    .map(|_| match rng.next_u64() % (self.levels + u64::from(self.with_neg_inf)) {
                        l if l == self.levels => f64::NEG_INFINITY,
                        l => l as f64 * 0.25 - 1.0,
                    })
                    .collect(),
            )
        }
    }

    fn run(kernel: &dyn Kernel, shape: &[usize], dtype: DType, opts: &[(&str, &str)], cores: u16) {
        let mut args = KernelArgs::new(shape, dtype);
        for (k, v) in opts {
            args = args.with(k, v);
        }
        args.cores = cores;
        let run = run_kernel(kernel, &chip(), &args, SimOptions::default(), 11).unwrap();
        let report = run.check.unwrap();
        assert!(report.passed, "{} {shape:?} {dtype} {opts:?}: {report:?}", kernel.name());
    }

    #[test]
    fn argmax_with_ties_on_small_and_odd_shapes() {
        for shape in [[1, 1], [3, 1000], [130, 77]] {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                run(&Tied { inner: Argmax, levels: 3, with_neg_inf: false }, &shape, dtype, &[], 1);
                run(&Argmax, &shape, dtype, &[], 1);
            }
        }
        run(&Tied { inner: Argmax, levels: 2, with_neg_inf: true }, &[130, 77], DType::F32, &[("index", "i32")], 2);
    }

    #[test]
    fn topk_with_ties_on_small_and_odd_shapes() {
        for (shape, k) in [([1, 1], "1"), ([3, 1000], "8"), ([130, 77], "5")] {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                run(&Tied { inner: TopK, levels: 4, with_neg_inf: false }, &shape, dtype, &[("k", k)], 1);
                run(&TopK, &shape, dtype, &[("k", k)], 2);
            }
        }
    }

    #[test]
    fn neg_inf_rows_give_distinct_indices() {
        // One finite level and −∞ in rows of 9: many rows have fewer than 8 finite values.
        run(&Tied { inner: TopK, levels: 1, with_neg_inf: true }, &[130, 9], DType::Bf16, &[], 1);
    }

    #[test]
    fn long_rows_merge_chunk_candidates() {
        // 4096 + 4096 + 1: the last chunk is narrower than k.
        let cols = 2 * CHUNK + 1;
        run(&Tied { inner: TopK, levels: 5, with_neg_inf: false }, &[3, cols], DType::Bf16, &[("k", "3")], 1);
        run(&Tied { inner: Argmax, levels: 5, with_neg_inf: false }, &[2, cols], DType::F32, &[], 1);
    }

    #[test]
    fn hand_bound_ties_pick_the_first_index() {
        let chip = chip();
        let args = KernelArgs::new(&[2, 6], DType::F32).with("k", "3");
        let built = build(&TopK, &chip, &args).unwrap();
        let mut session = Session::new(&chip, &built.program, SimOptions::default()).unwrap();
        let x = [0.5, 2.0, 2.0, -1.0, 2.0, 0.5, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0, 3.0, 1.0];
        session.bind("x", &HostTensor::from_f32(vec![2, 6], DType::F32, &x)).unwrap();
        session.run().unwrap();
        assert_eq!(session.output("values").unwrap().to_f32(), [2.0, 2.0, 2.0, 3.0, 1.0, 1.0]);
        assert_eq!(session.output("indices").unwrap().to_f32(), [1.0, 2.0, 4.0, 4.0, 1.0, 3.0]);
    }

    #[test]
    fn reference_rule() {
        let row = [1.0, 3.0, 3.0, f64::NEG_INFINITY, f64::NEG_INFINITY];
        let want = [(3.0, 1), (3.0, 2), (1.0, 0), (f64::NEG_INFINITY, 3), (f64::NEG_INFINITY, 4)];
        assert_eq!(reference_row(&row, 5), want);
    }

    #[test]
    fn argument_errors() {
        let chip = chip();
        let cases: [(&dyn Kernel, KernelArgs, &str); 6] = [
            (&TopK, KernelArgs::new(&[4, 100], DType::F32).with("k", "9"), "1..=8"),
            (&TopK, KernelArgs::new(&[4, 100], DType::F32).with("k", "0"), "1..=8"),
            (&TopK, KernelArgs::new(&[4, 5], DType::F32).with("k", "6"), "larger than the row length"),
            (&Argmax, KernelArgs::new(&[4, 5], DType::F32).with("index", "f32"), "u32 or i32"),
            (&Argmax, KernelArgs::new(&[4], DType::F32), "R,C"),
            (&TopK, KernelArgs::new(&[1, 3 * CHUNK * CHUNK / 8], DType::F32), "too long"),
        ];
        for (kernel, args, want) in cases {
            let err = build(kernel, &chip, &args).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", kernel.name());
        }
        let err = build(&Argmax, &chip, &KernelArgs::new(&[1, 1 << 24], DType::F32)).unwrap_err().to_string();
        assert!(err.contains("2^24"), "{err}");
    }

    #[test]
    fn blocks_alternate_vector_and_gpsimd() {
        let built = build(&Argmax, &chip(), &KernelArgs::new(&[300, 10], DType::F32)).unwrap();
        let reduces: Vec<Engine> = built
            .program
            .insts
            .iter()
            .filter_map(|i| match i.op {
                trainyard_isa::Op::TensorReduce { engine, .. } => Some(engine),
                _ => None,
            })
            .collect();
        let (v, g) = (Engine::Vector, Engine::GpSimd);
        assert_eq!(reduces, [v, v, g, g, v, v]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes_match_the_reference(r in 1usize..200, c in 1usize..300, k in 1usize..9, bf16: bool) {
            let k = k.min(c);
            let dtype = if bf16 { DType::Bf16 } else { DType::F32 };
            let args = KernelArgs::new(&[r, c], dtype).with("k", &k.to_string());
            let kernel = Tied { inner: TopK, levels: 6, with_neg_inf: c % 2 == 0 };
            let run = run_kernel(&kernel, &chip(), &args, SimOptions::default(), r as u64).unwrap();
            let report = run.check.unwrap();
            prop_assert!(report.passed, "{:?}", report);
        }
    }
}
