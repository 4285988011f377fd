//! Kernels of the `collective` family: all-reduce, all-gather, reduce-scatter
//! and all-to-all as real programs over HBM tensors that live on several
//! cores and chips. Data between chips moves by DMA over the system's modelled
//! links ([`trainyard_arch::SystemLayout`]); sums are Vector-engine adds in SBUF.
//!
//! * [`all_reduce`] — ring reduce-scatter then ring all-gather, in place.
//! * [`reduce_scatter`] / [`all_gather`] — the two ring halves on their own.
//! * [`all_to_all`] — every participant pulls its chunk of every other's input.
//!
//! The ring visits participants in the order of their chips along a
//! boustrophedon (reflected Gray code) walk of the system's coordinates, then
//! by core, so that neighbours on the ring are one link apart on a torus.
//! Each ring step is cut into SBUF-sized pieces, and the builder's
//! dependencies let piece `c` of step `k + 1` start as soon as piece `c` of
//! step `k` is stored, so steps pipeline and large messages reach the links'
//! (or, more often, the DMA engines') bandwidth.
//!
//! Accumulation is in f32 whatever the dtype: partial sums travel between
//! participants as f32 (in an f32 workspace for bf16/f16) and each element is
//! rounded to the dtype once, when its total is stored. Participants pull:
//! the receiving core issues the DMA, so its engines do the work. Segment
//! sizes differ by at most one element, so any element count works.

#[cfg(test)]
mod tests;

use trainyard_arch::{ChipSpec, DType, Topology};
use trainyard_isa::{AluOp, Ap, Engine, TensorKind};

use super::{check_args, check_bindings, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::builder::{HbmTensor, KernelBuilder, TilePool};
use crate::error::BuildError;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(AllReduce), Box::new(AllGather), Box::new(ReduceScatter), Box::new(AllToAll)]
}

/// Free elements per partition of one SBUF piece (f32: 4 KiB per partition,
/// 512 KiB per piece): large enough that per-transfer costs are small, small
/// enough that a core's pools stay under 40 KiB per partition.
const PIECE_COLS: usize = 1024;
/// Buffers per SBUF pool: enough for loads of the next piece to overlap the add
/// and store of the current one.
const BUFS: usize = 3;
/// HBM→HBM copies are cut into at least this many pieces: one contiguous
/// piece is one descriptor, served by one DMA engine (HW-DMA-STRUCT), so a
/// core needs 16 in flight to use its 16 engines.
const MIN_COPY_PIECES: usize = 16;
/// Largest HBM→HBM copy piece, bytes (pipelining granularity of all-gather).
const MAX_COPY_PIECE: usize = 256 * 1024;
/// Smallest HBM→HBM copy piece, bytes.
const MIN_COPY_PIECE: usize = 2048;

fn err(kernel: &str, message: String) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message }
}

/// The participants of one collective: who they are and in which ring order.
struct Group {
    kernel: &'static str,
    cores: Vec<u16>,
    /// Ring position → participant index.
    order: Vec<usize>,
    dtype: DType,
}

impl Group {
    /// Checks `cores` (distinct, existing, one per tensor) and that `tensors[i]`
    /// lives in the HBM of `cores[i]`'s chip with one shape and dtype.
    fn new(
        kernel: &'static str,
        kb: &KernelBuilder,
        tensors: &[HbmTensor],
        cores: &[u16],
    ) -> Result<Group, BuildError> {
        let chip = kb.chip();
        if cores.is_empty() || cores.len() != tensors.len() {
            return Err(err(
                kernel,
                format!("{} tensors but {} cores: one tensor per core", tensors.len(), cores.len()),
            ));
        }
        let total = chip.total_cores();
        for (i, &c) in cores.iter().enumerate() {
            if c as u32 >= total {
                return Err(err(kernel, format!("core {c} does not exist ({total} cores over all chips)")));
            }
            if cores[..i].contains(&c) {
                return Err(err(kernel, format!("core {c} is listed twice")));
            }
        }
        let first = &tensors[0];
        let dtype = first.dtype();
        if !matches!(dtype, DType::F32 | DType::Bf16 | DType::F16) {
            return Err(err(kernel, format!("dtype {dtype} is not supported (f32, bf16, f16)")));
        }
        for (t, &c) in tensors.iter().zip(cores) {
            if t.dtype() != dtype {
                return Err(err(
                    kernel,
                    format!("tensor `{}` is {} but `{}` is {}", t.name(), t.dtype(), first.name(), dtype),
                ));
            }
            let home = chip.chip_of_core(c as u32);
            if chip.chip_of_hbm(t.offset()) != Some(home) {
                return Err(err(
                    kernel,
                    format!(
                        "tensor `{}` is not in the HBM of chip {home}, where its core {c} is (declare it with hbm_*_on({home}, ..))",
                        t.name()
                    ),
                ));
            }
        }
        let mut order: Vec<usize> = (0..cores.len()).collect();
        order.sort_by_key(|&i| (ring_rank(chip, chip.chip_of_core(cores[i] as u32)), cores[i]));
        Ok(Group { kernel, cores: cores.to_vec(), order, dtype })
    }

    fn n(&self) -> usize {
        self.cores.len()
    }

    /// The participant at ring position `p` (wrapping).
    fn at(&self, p: usize) -> usize {
        self.order[p % self.n()]
    }

    /// The segment handled under ring label `r`: labels are chosen so that
    /// the participant at position `p` ends reduce-scatter holding its own
    /// segment (`at(p)`), which it owns under label `p + 1`.
    fn segment(&self, r: usize) -> usize {
        self.at(r + self.n() - 1)
    }

    fn same_shape(&self, what: &str, tensors: &[HbmTensor], shape: &[usize]) -> Result<(), BuildError> {
        match tensors.iter().find(|t| t.shape() != shape || t.dtype() != self.dtype) {
            Some(t) => Err(err(
                self.kernel,
                format!("{what} `{}` is {}{:?}, expected {}{shape:?}", t.name(), t.dtype(), t.shape(), self.dtype),
            )),
            None => Ok(()),
        }
    }
}

/// Rank of `chip` on a walk of the system that moves one link at a time: a
/// boustrophedon (every odd slice of a dimension walks the inner dimensions
/// backwards), a snake through a 2-D torus closed by a wrap-around link.
fn ring_rank(chip: &ChipSpec, c: u32) -> u64 {
    let Some(s) = chip.system.as_ref() else { return 0 };
    if s.spec.topology == Topology::Switch {
        return c as u64;
    }
    let (mut rank, mut size) = (0u64, 1u64);
    for (&x, &n) in s.coords(c).iter().zip(&s.spec.shape).rev() {
        let inner = if x % 2 == 1 { size - 1 - rank } else { rank };
        rank = x as u64 * size + inner;
        size *= n as u64;
    }
    rank
}

/// Element bounds of `n` segments of `len` elements whose sizes differ by at most one.
fn bounds(len: usize, n: usize) -> Vec<usize> {
    (0..=n).map(|s| s * (len / n) + s.min(len % n)).collect()
}

/// Cuts `len` contiguous elements into `(start, rows, cols)` pieces with
/// rows ≤ 128 and cols ≤ `cols`: full `[128, cols]` blocks, then one block
/// of as many full rows as fit, then a one-row tail.
fn pieces(len: usize, parts: usize, cols: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    let block = parts * cols;
    while len - at >= block {
        out.push((at, parts, cols));
        at += block;
    }
    let rest = len - at;
    if rest > 0 {
        let q = rest.div_ceil(parts).min(cols);
        let p = rest / q;
        out.push((at, p, q));
        at += p * q;
        if len > at {
            out.push((at, 1, len - at));
        }
    }
    out
}

/// A contiguous `[rows, cols]` HBM pattern starting at byte `offset`.
fn hbm(offset: u64, rows: usize, cols: usize, dtype: DType) -> Ap {
    Ap::hbm(offset, rows as u32, &[cols as u32], dtype)
}

/// Round-robin DMA queues per core: collectives spread transfers over every
/// queue so that up to 16 are in flight per core.
struct QueueTurns {
    queues: u8,
    turn: Vec<usize>,
}

impl QueueTurns {
    fn new(chip: &ChipSpec) -> Self {
        QueueTurns { queues: chip.core.dma.queues.clamp(1, 256) as u8, turn: vec![0; chip.total_cores() as usize] }
    }

    fn next(&mut self, core: u16) -> u8 {
        let t = self.turn.get_mut(core as usize).map_or(0, |t| {
            *t += 1;
            *t - 1
        });
        (t % self.queues as usize) as u8
    }
}

/// Runs `body` with the core window cleared (collectives name absolute
/// cores), restoring the caller's window and core afterwards, error or not.
fn absolute<T>(
    kb: &mut KernelBuilder,
    body: impl FnOnce(&mut KernelBuilder) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let saved = kb.save_cores();
    kb.clear_core_window();
    let out = body(kb);
    kb.restore_cores(saved);
    out
}

/// SBUF pools of one participant's core for the reduce-scatter pieces.
struct Pools {
    own: TilePool,
    first: TilePool,
    partial: TilePool,
    sum: TilePool,
    rounded: Option<TilePool>,
}

impl Pools {
    fn alloc(kb: &mut KernelBuilder, dtype: DType, cols: usize) -> Result<Pools, BuildError> {
        let parts = kb.chip().core.sbuf.partitions as usize;
        let shape = [parts, cols];
        let mut made: Vec<TilePool> = Vec::new();
        let specs =
            [(dtype, true), (dtype, true), (DType::F32, true), (DType::F32, true), (dtype, dtype != DType::F32)];
        for (d, wanted) in specs {
            if !wanted {
                continue;
            }
            match kb.sbuf_pool(&shape, d, BUFS) {
                Ok(p) => made.push(p),
                Err(e) => {
                    for p in made {
                        kb.free_pool(p)?;
                    }
                    return Err(e);
                }
            }
        }
        let rounded = if dtype != DType::F32 { made.pop() } else { None };
        let mut it = made.into_iter();
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(own), Some(first), Some(partial), Some(sum)) => Ok(Pools { own, first, partial, sum, rounded }),
            _ => Err(err("collective", "internal: SBUF pools missing".into())),
        }
    }

    fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        kb.free_pool(self.own)?;
        kb.free_pool(self.first)?;
        kb.free_pool(self.partial)?;
        kb.free_pool(self.sum)?;
        if let Some(r) = self.rounded {
            kb.free_pool(r)?;
        }
        Ok(())
    }
}

/// Where the ring reduce-scatter reads and writes, as byte addresses of
/// element `a` of the flat (concatenated) tensor.
struct RsBuffers<'a> {
    /// Participant `i`'s input.
    input: &'a dyn Fn(usize, usize) -> u64,
    /// Participant `i`'s f32 partial sums (any location of element `a`).
    partial: &'a dyn Fn(usize, usize) -> u64,
    /// Where participant `i` stores the total of element `a` of its own segment.
    total: &'a dyn Fn(usize, usize) -> u64,
}

/// Ring reduce-scatter over segments `bounds` (indexed by participant): after
/// it, participant `i` has stored the sum of segment `i` over all inputs at
/// `total(i, ..)`. Returns the adds performed.
fn ring_reduce_scatter(
    kb: &mut KernelBuilder,
    g: &Group,
    bounds: &[usize],
    buf: &RsBuffers<'_>,
    queues: &mut QueueTurns,
) -> Result<u64, BuildError> {
    let n = g.n();
    let dtype = g.dtype;
    let parts = kb.chip().core.sbuf.partitions as usize;
    let longest = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let cols = PIECE_COLS.min(longest.div_ceil(parts)).max(1);
    if n == 1 {
        // One participant: its total is its input.
        let len = bounds[1] - bounds[0];
        let (src, dst) = ((buf.input)(0, bounds[0]), (buf.total)(0, bounds[0]));
        if src != dst {
            kb.core(g.cores[0])?;
            copy_pieces(kb, queues, g.cores[0], dst, src, len, dtype)?;
        }
        return Ok(0);
    }
    let mut pools = Vec::with_capacity(n);
    for &c in &g.cores {
        kb.core(c)?;
        match Pools::alloc(kb, dtype, cols) {
            Ok(p) => pools.push(p),
            Err(e) => {
                for (p, &c) in pools.into_iter().zip(&g.cores) {
                    kb.core(c)?;
                    p.free(kb)?;
                }
                return Err(e);
            }
        }
    }
    let mut body = |kb: &mut KernelBuilder, pools: &mut [Pools]| -> Result<u64, BuildError> {
        let mut adds = 0u64;
        for k in 0..n - 1 {
            let last = k == n - 2;
            for p in 0..n {
                let (me, prev) = (g.at(p), g.at(p + n - 1));
                let seg = g.segment(p + 2 * n - 1 - k);
                let core = g.cores[me];
                kb.core(core)?;
                let pool = &mut pools[me];
                for (at, rows, cols) in pieces(bounds[seg + 1] - bounds[seg], parts, cols) {
                    let a = bounds[seg] + at;
                    let own = pool.own.next().part(0..rows).cols(0..cols);
                    kb.dma_on(queues.next(core), &own, hbm((buf.input)(me, a), rows, cols, dtype))?;
                    // The first step receives the neighbour's input, later ones its f32 partial sum.
                    let recv = if k == 0 {
                        let t = pool.first.next().part(0..rows).cols(0..cols);
                        kb.dma_on(queues.next(core), &t, hbm((buf.input)(prev, a), rows, cols, dtype))?;
                        t
                    } else {
                        let t = pool.partial.next().part(0..rows).cols(0..cols);
                        kb.dma_on(queues.next(core), &t, hbm((buf.partial)(prev, a), rows, cols, DType::F32))?;
                        t
                    };
                    let (sum, dst) = match (&mut pool.rounded, last) {
                        (Some(r), true) => (r.next(), hbm((buf.total)(me, a), rows, cols, dtype)),
                        (None, true) => (pool.sum.next(), hbm((buf.total)(me, a), rows, cols, dtype)),
                        (_, false) => (pool.sum.next(), hbm((buf.partial)(me, a), rows, cols, DType::F32)),
                    };
                    let sum = sum.part(0..rows).cols(0..cols);
                    kb.tensor_tensor(Engine::Vector, AluOp::Add, &sum, &recv, &own)?;
                    kb.dma_on(queues.next(core), dst, &sum)?;
                    adds += (rows * cols) as u64;
                }
            }
        }
        Ok(adds)
    };
    let out = body(kb, &mut pools);
    for (p, &c) in pools.into_iter().zip(&g.cores) {
        kb.core(c)?;
        p.free(kb)?;
    }
    out
}

/// Copies `len` elements from byte `src` to byte `dst` in HBM on `core`'s DMA
/// queues, cut into pieces so that several engines work at once: at least
/// [`MIN_COPY_PIECES`] (more when pieces would exceed [`MAX_COPY_PIECE`]
/// bytes), but none under [`MIN_COPY_PIECE`] bytes.
fn copy_pieces(
    kb: &mut KernelBuilder,
    queues: &mut QueueTurns,
    core: u16,
    dst: u64,
    src: u64,
    len: usize,
    dtype: DType,
) -> Result<(), BuildError> {
    let es = dtype.size();
    let bytes = len * es;
    let wanted = MIN_COPY_PIECES.max(bytes.div_ceil(MAX_COPY_PIECE));
    let count = wanted.min(bytes.div_ceil(MIN_COPY_PIECE)).clamp(1, len.max(1));
    for (a, b) in (0..count).map(|i| (i * len / count, (i + 1) * len / count)).filter(|(a, b)| b > a) {
        let (d, s) = (dst + (a * es) as u64, src + (a * es) as u64);
        kb.dma_on(queues.next(core), hbm(d, 1, b - a, dtype), hbm(s, 1, b - a, dtype))?;
    }
    Ok(())
}

/// Ring all-gather: participant at ring position `p` starts with segment
/// `at(p)` and pulls the others from its predecessor; `src(i, seg, a)` is
/// where participant `i` holds element `a` of segment `seg`, `dst(i, a)`
/// where it stores it.
fn ring_all_gather(
    kb: &mut KernelBuilder,
    g: &Group,
    bounds: &[usize],
    src: &dyn Fn(usize, usize, usize) -> u64,
    dst: &dyn Fn(usize, usize) -> u64,
    queues: &mut QueueTurns,
) -> Result<(), BuildError> {
    let n = g.n();
    for k in 0..n - 1 {
        for p in 0..n {
            let (me, prev) = (g.at(p), g.at(p + n - 1));
            let seg = g.segment(p + n - k);
            let a = bounds[seg];
            let core = g.cores[me];
            kb.core(core)?;
            copy_pieces(kb, queues, core, dst(me, a), src(prev, seg, a), bounds[seg + 1] - a, g.dtype)?;
        }
    }
    Ok(())
}

fn elements(t: &HbmTensor) -> usize {
    t.shape().iter().product()
}

/// In-place sum: after it, every `parts[i]` holds the elementwise sum of all
/// parts. `parts[i]` lives in the HBM of the chip of `cores[i]`; `cores[i]`
/// issues its share of the work. Cores are absolute (the core window is
/// ignored and restored). Ring reduce-scatter, then ring all-gather; f32
/// accumulation, one rounding per element for bf16/f16.
pub fn all_reduce(kb: &mut KernelBuilder, parts: &[HbmTensor], cores: &[u16]) -> Result<Cost, BuildError> {
    all_reduce_into(kb, "all_reduce", parts, parts, cores)
}

/// `outputs[i] = Σ inputs` (the in-place [`all_reduce`] when they are the same tensors).
fn all_reduce_into(
    kb: &mut KernelBuilder,
    kernel: &'static str,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new(kernel, kb, inputs, cores)?;
    let shape = inputs[0].shape().to_vec();
    g.same_shape("tensor", inputs, &shape)?;
    Group::new(kernel, kb, outputs, cores)?.same_shape("output", outputs, &shape)?;
    let (n, len, dtype) = (g.n(), elements(&inputs[0]), g.dtype);
    let es = dtype.size() as u64;
    let bounds = bounds(len, n);
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        // f32 partial sums go straight into the outputs; other dtypes need an f32 workspace.
        let mut partial = Vec::with_capacity(n);
        for i in 0..n {
            partial.push(if dtype == DType::F32 || n < 3 {
                outputs[i].offset()
            } else {
                let chip = kb.chip().chip_of_core(cores[i] as u32);
                kb.hbm_workspace(chip, &format!("collective.core{}", cores[i]), len as u64 * 4)?.offset()
            });
        }
        let input = |i: usize, a: usize| inputs[i].offset() + a as u64 * es;
        let output = |i: usize, a: usize| outputs[i].offset() + a as u64 * es;
        let part = |i: usize, a: usize| partial[i] + a as u64 * 4;
        let buffers = RsBuffers { input: &input, partial: &part, total: &output };
        let adds = ring_reduce_scatter(kb, &g, &bounds, &buffers, &mut queues)?;
        ring_all_gather(kb, &g, &bounds, &|i, _, a| output(i, a), &output, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: adds, bytes_hbm: 2 * bytes, peak_dtype: None })
    })
}

/// `outputs[i]` = concatenation over `j` of `inputs[j]` along the outermost
/// axis (ring all-gather; each participant first copies its own input into
/// place).
pub fn all_gather(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("all_gather", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    let mut out_shape = shape.clone();
    out_shape[0] *= n;
    Group::new("all_gather", kb, outputs, cores)?.same_shape("output", outputs, &out_shape)?;
    let (len, es) = (elements(&inputs[0]), g.dtype.size() as u64);
    let bounds: Vec<usize> = (0..=n).map(|s| s * len).collect();
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        let input = |i: usize, a: usize| inputs[i].offset() + (a - bounds[i]) as u64 * es;
        let output = |i: usize, a: usize| outputs[i].offset() + a as u64 * es;
        for i in 0..n {
            kb.core(cores[i])?;
            copy_pieces(kb, &mut queues, cores[i], output(i, bounds[i]), input(i, bounds[i]), len, g.dtype)?;
        }
        // A participant's own segment is read from its input, so the first
        // ring step need not wait for the local copy.
        let src = |i: usize, seg: usize, a: usize| if seg == i { input(i, a) } else { output(i, a) };
        ring_all_gather(kb, &g, &bounds, &src, &output, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: 0, bytes_hbm: bytes + bytes * n as u64, peak_dtype: None })
    })
}

/// `outputs[i]` = chunk `i` (of `n` equal chunks along the outermost axis) of
/// the sum of all `inputs` (ring reduce-scatter; f32 accumulation).
pub fn reduce_scatter(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("reduce_scatter", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    if !shape[0].is_multiple_of(n) {
        return Err(err(
            "reduce_scatter",
            format!("the outermost axis ({}) does not split into {n} equal chunks", shape[0]),
        ));
    }
    let mut out_shape = shape.clone();
    out_shape[0] /= n;
    Group::new("reduce_scatter", kb, outputs, cores)?.same_shape("output", outputs, &out_shape)?;
    let (len, dtype) = (elements(&inputs[0]), g.dtype);
    let es = dtype.size() as u64;
    let chunk = len / n;
    let bounds: Vec<usize> = (0..=n).map(|s| s * chunk).collect();
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        let mut partial = Vec::with_capacity(n);
        for &c in cores {
            let chip = kb.chip().chip_of_core(c as u32);
            partial.push(kb.hbm_workspace(chip, &format!("collective.core{c}"), len as u64 * 4)?.offset());
        }
        let input = |i: usize, a: usize| inputs[i].offset() + a as u64 * es;
        let part = |i: usize, a: usize| partial[i] + a as u64 * 4;
        let total = |i: usize, a: usize| outputs[i].offset() + (a - bounds[i]) as u64 * es;
        let buffers = RsBuffers { input: &input, partial: &part, total: &total };
        let adds = ring_reduce_scatter(kb, &g, &bounds, &buffers, &mut queues)?;
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: adds, bytes_hbm: bytes + bytes / n as u64, peak_dtype: None })
    })
}

/// Chunk `j` (of `n` equal chunks along the outermost axis) of `inputs[i]`
/// goes to chunk `i` of `outputs[j]`: every participant pulls its chunk of
/// every input, starting with its ring successor's so that the pulls of one
/// round use different links.
pub fn all_to_all(
    kb: &mut KernelBuilder,
    inputs: &[HbmTensor],
    outputs: &[HbmTensor],
    cores: &[u16],
) -> Result<Cost, BuildError> {
    let g = Group::new("all_to_all", kb, inputs, cores)?;
    let n = g.n();
    let shape = inputs[0].shape().to_vec();
    g.same_shape("input", inputs, &shape)?;
    if !shape[0].is_multiple_of(n) {
        return Err(err(
            "all_to_all",
            format!("the outermost axis ({}) does not split into {n} equal chunks", shape[0]),
        ));
    }
    Group::new("all_to_all", kb, outputs, cores)?.same_shape("output", outputs, &shape)?;
    let (len, es) = (elements(&inputs[0]), g.dtype.size() as u64);
    let chunk = len / n;
    absolute(kb, |kb| {
        let mut queues = QueueTurns::new(kb.chip());
        for round in 0..n {
            for p in 0..n {
                let (j, i) = (g.at(p), g.at(p + round));
                kb.core(cores[j])?;
                let dst = outputs[j].offset() + (i * chunk) as u64 * es;
                let src = inputs[i].offset() + (j * chunk) as u64 * es;
                copy_pieces(kb, &mut queues, cores[j], dst, src, chunk, g.dtype)?;
            }
        }
        let bytes = len as u64 * es * n as u64;
        Ok(Cost { flops: 0, bytes_hbm: 2 * bytes, peak_dtype: None })
    })
}

// ---------------------------------------------------------------------------
// The registered kernels.

/// The participants of a standalone collective: `cores` spread evenly over
/// the chips of the system, the first `cores / chips` cores of each chip.
pub fn spread_cores(chip: &ChipSpec, kernel: &str, cores: u16) -> Result<Vec<u16>, BuildError> {
    let chips = chip.chips();
    let per_chip = chip.chip.cores;
    if !(cores as u32).is_multiple_of(chips) || (cores as u32) < chips || cores as u32 / chips > per_chip {
        return Err(err(
            kernel,
            format!(
                "--cores {cores} must be a multiple of --chips {chips} with at most {per_chip} cores per chip \
                 (participants are spread evenly over the chips)"
            ),
        ));
    }
    let per = cores as u32 / chips;
    Ok((0..chips).flat_map(|c| (0..per).map(move |k| (c * per_chip + k) as u16)).collect())
}

/// Which collective a registered kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    AllReduce,
    AllGather,
    ReduceScatter,
    AllToAll,
}

/// Message size and bus-bandwidth factor of a collective (NCCL's conventions):
/// algorithm bandwidth = `bytes` / time, bus bandwidth = that × `bus_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CollectiveSize {
    /// Bytes of the message: the buffer (all-reduce), the whole output
    /// (all-gather) or the whole input (reduce-scatter, all-to-all) of one participant.
    pub bytes: u64,
    /// `2(n-1)/n` for all-reduce, `(n-1)/n` for the others.
    pub bus_factor: f64,
    /// Participants.
    pub participants: usize,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::AllReduce => "all_reduce",
            Which::AllGather => "all_gather",
            Which::ReduceScatter => "reduce_scatter",
            Which::AllToAll => "all_to_all",
        }
    }

    /// Input and output shapes per participant for shape `s` and `n` participants.
    fn shapes(self, s: &[usize], n: usize) -> Result<(Vec<usize>, Vec<usize>), BuildError> {
        if s.is_empty() || s.contains(&0) {
            return Err(err(self.name(), format!("shape must be positive sizes, got {s:?}")));
        }
        let mut out = s.to_vec();
        match self {
            Which::AllReduce => {}
            Which::AllGather => out[0] *= n,
            Which::ReduceScatter | Which::AllToAll if !s[0].is_multiple_of(n) => {
                return Err(err(
                    self.name(),
                    format!("the outermost axis of {s:?} does not split into {n} equal chunks"),
                ))
            }
            Which::ReduceScatter => out[0] /= n,
            Which::AllToAll => {}
        }
        Ok((s.to_vec(), out))
    }

    fn emit(self, kb: &mut KernelBuilder, x: &[HbmTensor], y: &[HbmTensor], cores: &[u16]) -> Result<Cost, BuildError> {
        match self {
            Which::AllReduce => all_reduce_into(kb, "all_reduce", x, y, cores),
            Which::AllGather => all_gather(kb, x, y, cores),
            Which::ReduceScatter => reduce_scatter(kb, x, y, cores),
            Which::AllToAll => all_to_all(kb, x, y, cores),
        }
    }

    /// Host reference: `y{i}` from the `x{j}` in f64.
    fn reference(self, xs: &[Vec<f64>], n: usize) -> Vec<Vec<f64>> {
        let len = xs.first().map_or(0, Vec::len);
        let sum: Vec<f64> = (0..len).map(|e| xs.iter().map(|x| x[e]).sum()).collect();
        match self {
            Which::AllReduce => vec![sum; n],
            Which::AllGather => vec![xs.concat(); n],
            Which::ReduceScatter => sum.chunks(len / n.max(1)).map(<[f64]>::to_vec).collect(),
            Which::AllToAll => {
                (0..n).map(|j| (0..n).flat_map(|i| xs[i][j * len / n..(j + 1) * len / n].to_vec()).collect()).collect()
            }
        }
    }
}

macro_rules! collective_kernel {
    ($ty:ident, $which:expr, $summary:literal) => {
        #[doc = $summary]
        pub struct $ty;

        impl Kernel for $ty {
            fn name(&self) -> &'static str {
                $which.name()
            }
            fn family(&self) -> &'static str {
                "collective"
            }
            fn summary(&self) -> &'static str {
                $summary
            }
            fn shape_help(&self) -> &'static str {
                "per-participant input shape (participants = --cores, spread evenly over --chips)"
            }
            fn default_shape(&self) -> Vec<usize> {
                vec![4096, 256]
            }
            fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
                check_args(self, chip, args)?;
                let n = spread_cores(chip, self.name(), args.cores)?.len();
                let (xs, ys) = $which.shapes(&args.shape, n)?;
                let sig = |name: String, kind, shape: &[usize]| TensorSig {
                    name,
                    kind,
                    shape: shape.to_vec(),
                    dtype: args.dtype,
                };
                let mut sigs: Vec<TensorSig> = (0..n).map(|i| sig(format!("x{i}"), TensorKind::Input, &xs)).collect();
                sigs.extend((0..n).map(|i| sig(format!("y{i}"), TensorKind::Output, &ys)));
                Ok(sigs)
            }
            /// Runs over the tensors bound to `x{i}` / `y{i}` with participants
            /// spread over the chips ([`spread_cores`]): tensor `i` must be in
            /// the HBM of participant `i`'s chip.
            fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
                check_bindings(self, kb.chip(), args, io)?;
                let cores = spread_cores(kb.chip(), self.name(), args.cores)?;
                let get = |name: String| super::bound(self.name(), io, &name).cloned();
                let x = (0..cores.len()).map(|i| get(format!("x{i}"))).collect::<Result<Vec<_>, _>>()?;
                let y = (0..cores.len()).map(|i| get(format!("y{i}"))).collect::<Result<Vec<_>, _>>()?;
                $which.emit(kb, &x, &y, &cores)
            }
            fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
                build_standalone(self, $which, chip, args)
            }
            fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
                let n = inputs.keys().filter(|k| k.starts_with('x')).count();
                let xs = (0..n)
                    .map(|i| inputs.get(&format!("x{i}")).map(|(_, v)| v.clone()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err(self.name(), "reference: inputs must be x0..x{n-1}".into()))?;
                let (_, ys) = $which.shapes(&args.shape, n)?;
                Ok($which
                    .reference(&xs, n)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("y{i}"), (ys.clone(), v)))
                    .collect())
            }
            fn collective_size(&self, args: &KernelArgs) -> Option<CollectiveSize> {
                let n = args.cores.max(1) as usize;
                let input: usize = args.shape.iter().product::<usize>() * args.dtype.size();
                let nf = n as f64;
                Some(match $which {
                    Which::AllReduce => {
                        CollectiveSize { bytes: input as u64, bus_factor: 2.0 * (nf - 1.0) / nf, participants: n }
                    }
                    Which::AllGather => {
                        CollectiveSize { bytes: (input * n) as u64, bus_factor: (nf - 1.0) / nf, participants: n }
                    }
                    _ => CollectiveSize { bytes: input as u64, bus_factor: (nf - 1.0) / nf, participants: n },
                })
            }
        }
    };
}

collective_kernel!(
    AllReduce,
    Which::AllReduce,
    "y_i = sum of all x_j, ring reduce-scatter + all-gather over the chips' links (f32 accumulation)"
);
collective_kernel!(AllGather, Which::AllGather, "y_i = concat of all x_j along axis 0, ring all-gather");
collective_kernel!(
    ReduceScatter,
    Which::ReduceScatter,
    "y_i = chunk i (axis 0) of the sum of all x_j, ring reduce-scatter (f32 accumulation)"
);
collective_kernel!(AllToAll, Which::AllToAll, "chunk j (axis 0) of x_i goes to chunk i of y_j, direct pulls");

/// A standalone program: `x{i}` and `y{i}` declared in the HBM of participant
/// `i`'s chip, then the collective.
fn build_standalone(
    kernel: &dyn Kernel,
    which: Which,
    chip: &ChipSpec,
    args: &KernelArgs,
) -> Result<Built, BuildError> {
    check_args(kernel, chip, args)?;
    let cores = spread_cores(chip, kernel.name(), args.cores)?;
    let (xs, ys) = which.shapes(&args.shape, cores.len())?;
    let mut kb = KernelBuilder::new(kernel.name(), chip);
    let mut x = Vec::with_capacity(cores.len());
    let mut y = Vec::with_capacity(cores.len());
    for (i, &c) in cores.iter().enumerate() {
        let on = chip.chip_of_core(c as u32);
        x.push(kb.hbm_input_on(on, &format!("x{i}"), &xs, args.dtype)?);
    }
    for (i, &c) in cores.iter().enumerate() {
        let on = chip.chip_of_core(c as u32);
        y.push(kb.hbm_output_on(on, &format!("y{i}"), &ys, args.dtype)?);
    }
    let cost = which.emit(&mut kb, &x, &y, &cores)?;
    Ok(Built { program: kb.finish()?, flops: cost.flops, bytes_hbm: cost.bytes_hbm, peak_dtype: None })
}
