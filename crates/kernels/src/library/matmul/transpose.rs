//! `transpose`: `y = x` with its axes permuted.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{Engine, TensorKind};

use super::{bound, check_args, sig, Balancer, Queues};
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::{BuildError, KernelBuilder, TilePool, View};

const NAME: &str = "transpose";

/// Queues of the loads and the stores (several of each: a transpose is all
/// DMA, and loads and stores are equally urgent).
const LOAD_QUEUES: &[u8] = &[0, 1, 2, 3];
const STORE_QUEUES: &[u8] = &[4, 5, 6, 7];
/// Largest 2-D block (elements) that is moved by a direct element-wise DMA.
const TINY_BLOCK: usize = 64;
/// Direct copies (last axis kept) per core: enough to keep its DMA queues busy.
const COPY_PIECES: usize = 16;
/// Contiguous bytes per loaded x row and per stored y row (descriptor
/// overheads stay small).
const RUN_BYTES: usize = 4096;

fn err(message: impl Into<String>) -> BuildError {
    BuildError::Kernel { kernel: NAME.to_string(), message: message.into() }
}

/// `transpose`: `y[i_0, …] = x[…]` with `y`'s axis `k` being `x`'s axis
/// `perm[k]` (shape = x's shape, 2-D to 4-D; `perm` defaults to `1,0` for 2-D).
///
/// When the permutation keeps the last axis in place, every row of the last
/// axis moves as a whole: the kernel is a strided HBM → HBM DMA (a permuted
/// access pattern on the source), split into pieces over the DMA queues and
/// cores. So is a permutation whose 2-D blocks (below) have at most 64
/// elements: one descriptor per element is cheaper than their instructions. Otherwise the two axes that trade places with the last one form 2-D
/// blocks (one per index of the other axes): 128-row strips of x load with
/// 4 KiB contiguous rows, 128×128 blocks go through the Tensor engine
/// (transpose into PSUM, a bank's worth side by side), the Vector and Scalar
/// engines copy each bank to SBUF in turn, and the stores write ≥ 4 KiB rows
/// of y (loads read 4 KiB rows of x). A transposing DMA pattern would be correct too but costs a DMA
/// descriptor per element. With `--cores`, the blocks are split over the cores.
pub struct Transpose;

/// The problem, parsed from [`KernelArgs`].
#[derive(Clone, Debug, PartialEq)]
struct Perm {
    shape: Vec<usize>,
    perm: Vec<usize>,
}

impl Perm {
    fn parse(args: &KernelArgs) -> Result<Perm, BuildError> {
        let shape = args.shape.clone();
        if !(2..=4).contains(&shape.len()) || shape.contains(&0) {
            return Err(err(format!("shape must be 2 to 4 positive sizes, got {shape:?}")));
        }
        let perm: Vec<usize> = match args.options.get("perm") {
            None if shape.len() == 2 => vec![1, 0],
            None => return Err(err(format!("a {}-D transpose needs option `perm` (e.g. 0,2,1,3)", shape.len()))),
            Some(text) => text
                .split(',')
                .map(|p| p.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| err(format!("option `perm={text}`: expected comma-separated axes")))?,
        };
        let mut seen = vec![false; shape.len()];
        let valid =
            perm.len() == shape.len() && perm.iter().all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(err(format!("perm {perm:?} is not a permutation of the {} axes of {shape:?}", shape.len())));
        }
        Ok(Perm { shape, perm })
    }

    fn out_shape(&self) -> Vec<usize> {
        self.perm.iter().map(|&p| self.shape[p]).collect()
    }
}

/// Every index tuple of `shape`, row-major.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    shape.iter().fold(vec![Vec::new()], |acc, &n| {
        acc.into_iter().flat_map(|ix| (0..n).map(move |i| [ix.as_slice(), &[i]].concat())).collect()
    })
}

/// `view` with its leading axes fixed to `idx`.
fn at_all(view: View, idx: &[usize]) -> View {
    idx.iter().fold(view, |v, &i| v.at(0, i))
}

/// Splits `work` items as evenly as possible over `cores`: core `c` gets `lo..hi`.
fn share(work: usize, cores: usize, c: usize) -> std::ops::Range<usize> {
    work * c / cores..work * (c + 1) / cores
}

/// Last axis kept: pieces of `y` ← the permuted view of `x`, straight HBM → HBM.
/// The pieces fix y's leading indices and split one axis into ranges, so
/// there are about [`COPY_PIECES`] per core.
fn emit_copy(kb: &mut KernelBuilder, xv: &View, yv: &View, cores: usize) -> Result<(), BuildError> {
    let shape = yv.shape().to_vec();
    let want = COPY_PIECES * cores;
    // Fix the axes before `axis` (fewer than `want` tuples), split `axis` into ranges.
    let axis = (0..shape.len() - 1).find(|&a| shape[..=a].iter().product::<usize>() >= want).unwrap_or(shape.len() - 2);
    let fixed: usize = shape[..axis].iter().product();
    let ranges = want.div_ceil(fixed).min(shape[axis]);
    let mut pieces = Vec::new();
    for idx in indices(&shape[..axis]) {
        for r in 0..ranges {
            let range = shape[axis] * r / ranges..shape[axis] * (r + 1) / ranges;
            pieces.push((idx.clone(), range));
        }
    }
    for c in 0..cores {
        let mine = share(pieces.len(), cores, c);
        if mine.is_empty() {
            continue;
        }
        kb.core(c as u16)?;
        let mut q = Queues::new(kb.chip(), &[LOAD_QUEUES, STORE_QUEUES].concat());
        for (idx, range) in &pieces[mine] {
            let dst = at_all(yv.clone(), idx).slice(0, range.clone());
            let src = at_all(xv.clone(), idx).slice(0, range.clone());
            kb.dma_on(q.next(), dst, src)?;
        }
    }
    Ok(())
}

/// Tiles of one core for the Tensor-engine path.
struct Blocks {
    g: Geometry,
    loads: TilePool,
    outs: TilePool,
    psum: TilePool,
    ql: Queues,
    qs: Queues,
    bal: Balancer,
}

/// One unit of Tensor-engine work: x2 columns from `c0` (one load width),
/// rows `r0..r0+rows` (at most [`Geometry::rows`]).
#[derive(Clone, Copy, Debug)]
struct Unit {
    c0: usize,
    r0: usize,
    rows: usize,
}

/// Block sizes of the Tensor-engine path.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    /// Block side (the PE array).
    tp: usize,
    /// Transposed blocks side by side in one PSUM bank.
    per_bank: usize,
    /// x rows per unit of work (= contiguous elements per stored y row).
    rows: usize,
    /// x columns per load (= contiguous elements per loaded x row).
    cols: usize,
}

impl Geometry {
    fn new(chip: &ChipSpec, dtype: DType) -> Geometry {
        let core = &chip.core;
        let tp = core.tensor.rows.min(core.tensor.cols).min(core.sbuf.partitions) as usize;
        let ds = dtype.size();
        let per_bank = (chip.psum_bank_bytes() as usize / (tp * ds)).max(1);
        // Runs of RUN_BYTES on both sides: whole banks of blocks per stored
        // row, whole blocks per loaded row.
        let banks = (RUN_BYTES / (per_bank * tp * ds)).max(1);
        Geometry { tp, per_bank, rows: banks * per_bank * tp, cols: (RUN_BYTES / ds).div_ceil(tp) * tp }
    }
}

impl Blocks {
    fn new(kb: &mut KernelBuilder, dtype: DType) -> Result<Blocks, BuildError> {
        let chip = kb.chip().clone();
        let g = Geometry::new(&chip, dtype);
        let loads = kb.sbuf_pool(&[g.tp, g.cols], dtype, 2 * g.rows / g.tp)?;
        // A failed allocation gives back the pools before it.
        let outs = match kb.sbuf_pool(&[g.tp, g.rows], dtype, 3) {
            Ok(p) => p,
            Err(e) => return kb.free_pool(loads).and(Err(e)),
        };
        let psum = match kb.psum_pool(&[g.tp, g.per_bank * g.tp], dtype, 2) {
            Ok(p) => p,
            Err(e) => return kb.free_pool(loads).and(kb.free_pool(outs)).and(Err(e)),
        };
        Ok(Blocks {
            g,
            loads,
            outs,
            psum,
            ql: Queues::new(&chip, LOAD_QUEUES),
            qs: Queues::new(&chip, STORE_QUEUES),
            bal: Balancer::new(&chip),
        })
    }

    /// Frees the core's tiles (also after a failed unit), so that another
    /// kernel can follow.
    fn release(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        [self.loads, self.outs, self.psum].into_iter().try_for_each(|pool| kb.free_pool(pool))
    }

    /// `y2[c, r] = x2[r, c]` for the columns and rows of x2 that one unit
    /// covers: load 128-row strips of x2, then per
    /// 128-column block transpose into PSUM banks, copy to one SBUF row
    /// strip of y2 and store it.
    fn unit(&mut self, kb: &mut KernelBuilder, x2: &View, y2: &View, u: Unit) -> Result<(), BuildError> {
        let Geometry { tp, per_bank, cols, .. } = self.g;
        let (c0, r0) = (u.c0, u.r0);
        let cw = cols.min(x2.shape()[1] - c0);
        let group = u.rows.min(x2.shape()[0] - r0);
        let mut loaded = Vec::new();
        for r in (r0..r0 + group).step_by(tp) {
            let rs = tp.min(r0 + group - r);
            let t = self.loads.next().part(0..rs).cols(0..cw);
            kb.dma_on(self.ql.next(), &t, x2.rows(r..r + rs).cols(c0..c0 + cw))?;
            loaded.push(t);
        }
        for cb in (0..cw).step_by(tp) {
            let cs = tp.min(cw - cb);
            let out = self.outs.next().part(0..cs).cols(0..group);
            for (bank, blocks) in loaded.chunks(per_bank).enumerate() {
                let ps = self.psum.next().part(0..cs);
                let mut width = 0;
                for t in blocks {
                    let rs = t.shape()[0];
                    kb.transpose(Engine::Tensor, ps.cols(width..width + rs), t.cols(cb..cb + cs))?;
                    width += rs;
                }
                let at = bank * per_bank * tp;
                self.bal.copy(kb, &out.cols(at..at + width), &ps.cols(0..width), 1.0)?;
            }
            let c = c0 + cb;
            kb.dma_on(self.qs.next(), y2.rows(c..c + cs).cols(r0..r0 + group), &out)?;
        }
        Ok(())
    }
}

/// Last axis moved: 2-D transposes through the Tensor engine. `others` are
/// y's axes besides `q` (where x's last axis goes) and its last axis.
fn emit_blocks(kb: &mut KernelBuilder, p: &Perm, x: &View, y: &View, cores: usize) -> Result<(), BuildError> {
    let n = p.perm.len();
    let q = p.perm.iter().position(|&a| a == n - 1).unwrap_or(0);
    let others: Vec<usize> = (0..n).filter(|&j| j != q && j != n - 1).collect();
    let x_order: Vec<usize> = others.iter().map(|&j| p.perm[j]).chain([p.perm[n - 1], n - 1]).collect();
    let y_order: Vec<usize> = others.iter().copied().chain([q, n - 1]).collect();
    let (xv, yv) = (x.permute(&x_order), y.permute(&y_order));
    let outer: Vec<usize> = others.iter().map(|&j| y.shape()[j]).collect();
    let (rows, cols) = (p.shape[p.perm[n - 1]], p.shape[n - 1]);
    let g = Geometry::new(kb.chip(), x.dtype());
    // Units of work: (other indices, column strip, row group); single-block
    // row groups when there would not be a unit per core.
    let count = |step: usize| indices(&outer).len() * cols.div_ceil(g.cols) * rows.div_ceil(step);
    let step = if count(g.rows) < cores { g.tp } else { g.rows };
    let mut units = Vec::new();
    for idx in indices(&outer) {
        for c0 in (0..cols).step_by(g.cols) {
            for r0 in (0..rows).step_by(step) {
                units.push((idx.clone(), Unit { c0, r0, rows: step }));
            }
        }
    }
    for c in 0..cores {
        let mine = share(units.len(), cores, c);
        if mine.is_empty() {
            continue;
        }
        kb.core(c as u16)?;
        let mut blocks = Blocks::new(kb, x.dtype())?;
        let done = units[mine]
            .iter()
            .try_for_each(|(idx, u)| blocks.unit(kb, &at_all(xv.clone(), idx), &at_all(yv.clone(), idx), *u));
        let freed = blocks.release(kb);
        done.and(freed)?;
    }
    Ok(())
}

impl Kernel for Transpose {
    fn name(&self) -> &'static str {
        NAME
    }

    fn family(&self) -> &'static str {
        "matmul"
    }

    fn summary(&self) -> &'static str {
        "y = x with axes permuted (2-D to 4-D); input x, output y"
    }

    fn shape_help(&self) -> &'static str {
        "shape of x: R,C (or 3-D/4-D with perm)"
    }

    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[("perm", "y's axes as axes of x, comma-separated (default 1,0 for 2-D), e.g. 0,2,1,3 or 2,1,0")]
    }

    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }

    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let p = Perm::parse(args)?;
        Ok(vec![
            sig("x", TensorKind::Input, p.shape.clone(), args.dtype),
            sig("y", TensorKind::Output, p.out_shape(), args.dtype),
        ])
    }

    /// The Tensor-engine path frees its tiles when a core's blocks are done
    /// or fail (the DMA-only path allocates none); the builder's current core
    /// is restored.
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        let chip = kb.chip().clone();
        check_args(self, &chip, args)?;
        library::check_bindings(self, &chip, args, io)?;
        let p = Perm::parse(args)?;
        let cores = args.cores.max(1) as usize;
        let (x, y) = (bound(NAME, io, "x")?, bound(NAME, io, "y")?);
        let n = p.perm.len();
        let home = kb.current_core();
        // Tiny 2-D blocks: a descriptor per element (~0.75 ns per element over
        // 16 DMA engines) beats ≥ 4 instructions per block.
        let tiny = p.shape[p.perm[n - 1]] * p.shape[n - 1] <= TINY_BLOCK;
        let done = if p.perm[n - 1] == n - 1 || tiny {
            emit_copy(kb, &x.permute(&p.perm), &y.view(), cores)
        } else {
            emit_blocks(kb, &p, &x.view(), &y.view(), cores)
        };
        kb.core(home)?;
        done?;
        let bytes = p.shape.iter().product::<usize>() as u64 * args.dtype.size() as u64;
        Ok(Cost { flops: 0, bytes_hbm: 2 * bytes, peak_dtype: None })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let p = Perm::parse(args)?;
        let x = match inputs.get("x") {
            Some((s, v)) if *s == p.shape && v.len() == s.iter().product::<usize>() => v,
            Some((s, _)) => return Err(err(format!("input `x` has shape {s:?}, expected {:?}", p.shape))),
            None => return Err(err("input `x` is missing")),
        };
        let out_shape = p.out_shape();
        let mut strides = vec![1usize; p.shape.len()];
        for i in (0..p.shape.len() - 1).rev() {
            strides[i] = strides[i + 1] * p.shape[i + 1];
        }
        let y = indices(&out_shape)
            .iter()
            .map(|idx| x[idx.iter().zip(&p.perm).map(|(&i, &a)| i * strides[a]).sum::<usize>()])
            .collect();
        Ok(HostTensors::from([("y".to_string(), (out_shape, y))]))
    }

    /// Exact: values move as bits or through exact f32 round trips.
    fn tolerance(&self, _args: &KernelArgs) -> Tolerance {
        Tolerance { atol: 0.0, rtol: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library;
    use proptest::prelude::*;
    use trainyard_isa::Op;
    use trainyard_sim::SimOptions;

    fn chip(name: &str) -> ChipSpec {
        ChipSpec::by_name(name).unwrap()
    }

    fn args(shape: &[usize], dtype: DType, perm: Option<&str>) -> KernelArgs {
        let a = KernelArgs::new(shape, dtype);
        match perm {
            Some(p) => a.with("perm", p),
            None => a,
        }
    }

    fn check_on(chip: &ChipSpec, a: &KernelArgs) -> Built {
        let run = run_kernel(&Transpose, chip, a, SimOptions::default(), 3).unwrap_or_else(|e| panic!("{a:?}: {e}"));
        let report = run.check.expect("functional");
        assert!(report.passed && report.max_abs_err == 0.0, "{} {a:?}: {report:?}", chip.name);
        run.built
    }

    fn check(a: &KernelArgs) -> Built {
        check_on(&chip("trn2"), a)
    }

    fn count(b: &Built, f: impl Fn(&Op) -> bool) -> usize {
        b.program.insts.iter().filter(|i| f(&i.op)).count()
    }

    #[test]
    fn two_d_odd_shapes_every_dtype() {
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            for shape in [[1, 1], [127, 129], [300, 1100], [5, 700]] {
                check(&args(&shape, dtype, None));
            }
        }
        check_on(&chip("trn1"), &args(&[200, 130], DType::Bf16, None));
    }

    #[test]
    fn attention_permutation_is_a_strided_copy() {
        let b = check(&args(&[2, 70, 3, 64], DType::Bf16, Some("0,2,1,3")));
        assert_eq!(b.program.tensor("y").unwrap().shape, vec![2, 3, 70, 64]);
        assert_eq!(count(&b, |op| !matches!(op, Op::DmaCopy { .. })), 0, "DMA only");
        check(&args(&[3, 5, 7], DType::F32, Some("1,0,2")));
        check(&args(&[4, 6], DType::F16, Some("0,1")));
    }

    #[test]
    fn moved_last_axis_uses_the_tensor_engine() {
        let b = check(&args(&[3, 40, 130], DType::Bf16, Some("2,1,0")));
        assert_eq!(b.program.tensor("y").unwrap().shape, vec![130, 40, 3]);
        assert!(count(&b, |op| matches!(op, Op::Transpose { engine: Engine::Tensor, .. })) > 0);
        check(&args(&[2, 3, 33, 140], DType::F32, Some("0,1,3,2")));
        check(&args(&[2, 5, 3, 9], DType::Bf16, Some("3,1,0,2")));
        check(&args(&[129, 2, 3], DType::F16, Some("2,0,1")));
    }

    #[test]
    fn tiny_blocks_move_by_dma() {
        let b = check(&args(&[50, 4, 8], DType::Bf16, Some("0,2,1")));
        assert_eq!(count(&b, |op| !matches!(op, Op::DmaCopy { .. })), 0, "DMA only");
        let b = check(&args(&[50, 4, 17], DType::Bf16, Some("0,2,1")));
        assert!(count(&b, |op| matches!(op, Op::Transpose { .. })) > 0);
    }

    #[test]
    fn two_cores_split_the_work() {
        let c = chip("trn1");
        for (shape, perm) in [(vec![1100, 300], None), (vec![4, 50, 2, 8], Some("0,2,1,3"))] {
            let mut a = args(&shape, DType::Bf16, perm);
            a.cores = 2;
            let b = check_on(&c, &a);
            assert!(b.program.insts.iter().any(|i| i.core == 1) && b.program.insts.iter().any(|i| i.core == 0));
        }
    }

    #[test]
    fn large_transfers_and_roofline_figures() {
        let b = library::build(&Transpose, &chip("trn2"), &args(&[1024, 2048], DType::Bf16, None)).unwrap();
        assert_eq!((b.flops, b.bytes_hbm, b.peak_dtype), (0, 2 * 1024 * 2048 * 2, None));
        for inst in &b.program.insts {
            if let Op::DmaCopy { dst, src, .. } = &inst.op {
                // Every load and store moves ≥ 4 KiB contiguous runs (rows of 2048 bf16).
                let hbm = if dst.space == trainyard_isa::Space::Hbm { dst } else { src };
                assert!(hbm.contiguous_runs().1 >= 4096, "{hbm:?}");
            }
        }
    }

    #[test]
    fn argument_errors_are_kernel_errors() {
        let c = chip("trn2");
        let e = |a: KernelArgs| match library::build(&Transpose, &c, &a) {
            Err(e @ BuildError::Kernel { .. }) => e.to_string(),
            other => panic!("{a:?}: {:?}", other.map(|_| ())),
        };
        assert!(e(args(&[5], DType::Bf16, None)).contains("2 to 4"));
        assert!(e(args(&[2, 3, 4], DType::Bf16, None)).contains("needs option `perm`"));
        assert!(e(args(&[2, 3, 4], DType::Bf16, Some("0,1"))).contains("not a permutation"));
        assert!(e(args(&[2, 3, 4], DType::Bf16, Some("0,1,1"))).contains("not a permutation"));
        assert!(e(args(&[2, 3], DType::Bf16, Some("a,b"))).contains("comma-separated"));
        assert!(e(args(&[2, 3], DType::F8E4M3, None)).contains("dtype"));
        assert!(e(args(&[2, 3], DType::Bf16, None).with("axes", "1,0")).contains("unknown option"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_permutations(dims in proptest::collection::vec(1usize..40, 2..=4), pick in 0usize..24, wide in 0usize..300) {
            let mut shape = dims.clone();
            if let Some(last) = shape.last_mut() {
                *last += wide;
            }
            let mut axes: Vec<usize> = (0..shape.len()).collect();
            let mut k = pick;
            let mut perm = Vec::new();
            while !axes.is_empty() {
                perm.push(axes.remove(k % axes.len()));
                k /= 2;
            }
            let text: Vec<String> = perm.iter().map(|a| a.to_string()).collect();
            check(&args(&shape, DType::Bf16, Some(&text.join(","))));
        }
    }
}
