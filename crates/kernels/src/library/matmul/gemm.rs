//! `matmul`: `c = scale · (a · b) + bias`, FP32 accumulation in PSUM.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::TensorKind;

use super::{bound, check_args, sig, tile_bytes};
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::{BuildError, KernelBuilder};

mod emit;

use emit::{Emitter, Tensors};

const NAME: &str = "matmul";

/// DMA queues per role (folded onto the chip's queues). Loads of A and of B
/// each take one queue: they are issued in the order they are needed, one
/// transfer can use all 16 DMA engines, and fewer transfers in flight means
/// the one needed next gets more of the engines, which active transfers share
/// evenly (the first matmul waits for the first loads only). Stores take one
/// queue too: with staging for two chunks they are not urgent, and more store
/// queues would take engines from the loads when a chunk's stores burst.
const A_QUEUES: &[u8] = &[0];
const B_QUEUES: &[u8] = &[1];
const C_QUEUES: &[u8] = &[2];
const BIAS_QUEUES: &[u8] = &[3];

/// Buffers of the streamed B tiles, output staging tiles, raw (untransposed)
/// B loads, transposed B tiles and PSUM transpose tiles.
const B_BUFS: usize = 4;
const RAW_B_BUFS: usize = 3;
const BT_BUFS: usize = 3;
const TR_BUFS: usize = 2;
/// Groups of raw A rows loaded ahead of their transposes (`transpose_a=false`).
const RAW_A_AHEAD: usize = 2;

fn err(message: impl Into<String>) -> BuildError {
    BuildError::Kernel { kernel: NAME.to_string(), message: message.into() }
}

/// `matmul`: `c[M,N] = scale_a·scale_b · (a·b) + bias` on the Tensor engine.
///
/// Inputs `a` `[M,K]` (`[K,M]` with `transpose_a=true`), `b` `[K,N]` (`[N,K]`
/// with `transpose_b=true`), `bias` `[N]` with `bias=true` (input dtype; bf16
/// for fp8 inputs); output `c` `[M,N]` in `out` (default f32). With the
/// `batch=B` option every tensor but `bias` gets a leading `B` axis.
///
/// Tiling: a block of `mb` M tiles (128 columns of Aᵀ each, `mb` ≤ the PSUM
/// banks left for accumulation) keeps its whole Aᵀ panel `[K, mb·128]` in an
/// SBUF ring of K-tile slots, so B streams from HBM once per block rather than
/// once per M tile: per 128×128×512 matmul the DMA moves `1/mb` of a B tile
/// (trn1, 4096×8192×8192: B at 90 GB/s of the core's 272). B tiles
/// `[128, 512]` (several K tiles per transfer) rotate through a pool;
/// consecutive matmuls share the B tile and cycle through the block's `mb`
/// PSUM accumulators, each of which spans K (`start`/`stop`) and is copied out
/// by the Vector or Scalar engine (whichever is less loaded, applying the fp8
/// scale) while the next N chunk accumulates. `mb` comes from a small model
/// of one chunk (DMA time against Tensor-engine time plus the wait for banks
/// still being copied out). The ring has spare slots, so the next block's
/// first K tiles load while the current block finishes; the last block ends
/// with quarter-width N chunks, so few stores remain after the last matmul.
/// When even one M tile's panel does not fit (huge K), the ring streams Aᵀ
/// per N chunk instead. Aᵀ tiles load straight from `[K,M]`; `[M,K]` rows
/// load contiguously and are transposed on the Tensor engine (128×128 blocks
/// through PSUM, 1.6% of the matmul time at K = 8192) rather than by a
/// transposing DMA pattern, which costs a descriptor per element (~0.75 ns
/// per element over 16 engines: 25 ms for a 4096×8192 A against 6 ms of
/// matmuls). B given as `[N,K]` is transposed the same way, once per block
/// (+14% Tensor-engine time). With `--cores`, the (batch, M tile) pairs are
/// split evenly over the cores.
pub struct MatMul;

/// The problem, parsed from [`KernelArgs`].
#[derive(Clone, Debug)]
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    batch: usize,
    /// Tensors carry a leading batch axis (the `batch` option was given).
    batched: bool,
    dtype: DType,
    out: DType,
    bias: Option<DType>,
    ta: bool,
    tb: bool,
    scale: f32,
}

impl Gemm {
    fn parse(args: &KernelArgs) -> Result<Gemm, BuildError> {
        let [m, k, n] = args.dims::<3>(NAME, "M,K,N")?;
        let batched = args.options.contains_key("batch");
        let batch = args.usize(NAME, "batch", 1)?;
        if batch == 0 {
            return Err(err("option `batch=0`: expected at least 1"));
        }
        let out = args.dtype_opt(NAME, "out", DType::F32)?;
        if !out.is_float() {
            return Err(err(format!("option `out={}`: the output must be a float dtype", out.name())));
        }
        let scale = args.f64(NAME, "scale_a", 1.0)? * args.f64(NAME, "scale_b", 1.0)?;
        if !scale.is_finite() || !(scale as f32).is_finite() {
            return Err(err(format!("scale_a·scale_b = {scale} is not a finite f32")));
        }
        let bias = args.flag(NAME, "bias", false)?.then_some(bias_dtype(args.dtype));
        Ok(Gemm {
            m,
            k,
            n,
            batch,
            batched,
            dtype: args.dtype,
            out,
            bias,
            ta: args.flag(NAME, "transpose_a", false)?,
            tb: args.flag(NAME, "transpose_b", false)?,
            scale: scale as f32,
        })
    }

    fn shape(&self, dims: [usize; 2]) -> Vec<usize> {
        if self.batched {
            vec![self.batch, dims[0], dims[1]]
        } else {
            dims.to_vec()
        }
    }

    fn a_shape(&self) -> Vec<usize> {
        self.shape(if self.ta { [self.k, self.m] } else { [self.m, self.k] })
    }

    fn b_shape(&self) -> Vec<usize> {
        self.shape(if self.tb { [self.n, self.k] } else { [self.k, self.n] })
    }

    fn c_shape(&self) -> Vec<usize> {
        self.shape([self.m, self.n])
    }
}

/// The bias dtype: the input dtype, except bf16 for fp8 inputs (an fp8 bias
/// would keep two or three mantissa bits of a value added at full precision).
fn bias_dtype(dtype: DType) -> DType {
    if dtype.is_fp8() {
        DType::Bf16
    } else {
        dtype
    }
}

/// Tile sizes and buffer counts for one chip and problem.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    /// K rows per matmul, M columns per stationary, N columns per moving tile.
    kt: usize,
    mt: usize,
    nt: usize,
    k_tiles: usize,
    n_chunks: usize,
    m_tiles: usize,
    /// M tiles per block (Aᵀ panel width `mb·mt`) and Aᵀ ring slots (K tiles).
    mb: usize,
    ring: usize,
    /// The ring holds a whole block's K extent (Aᵀ loaded once per block).
    resident: bool,
    /// K tiles per Aᵀ load (`transpose_a=true`) or per raw A row load.
    a_group: usize,
    /// K tiles per B load (or per raw B row load with `transpose_b=true`).
    b_group: usize,
    acc_bufs: usize,
    out_bufs: usize,
}

impl Plan {
    fn new(chip: &ChipSpec, g: &Gemm, cores: usize) -> Result<Plan, BuildError> {
        let core = &chip.core;
        let kt = core.tensor.rows.min(core.sbuf.partitions) as usize;
        let mt = core.tensor.cols.min(core.psum.partitions) as usize;
        let bank = chip.psum_bank_bytes() as usize;
        let nt = (core.tensor.moving_fmax as usize).min(bank / 4);
        let (k_tiles, n_chunks, m_tiles) = (g.k.div_ceil(kt), g.n.div_ceil(nt), g.m.div_ceil(mt));
        let ds = g.dtype.size();
        let ntw = nt.min(g.n);
        let tr = if !g.ta || g.tb { TR_BUFS * tile_bytes(tr_free(nt, mt), g.dtype) } else { 0 };
        let psum_left = (core.psum.bytes_per_partition as usize).saturating_sub(tr.div_ceil(bank) * bank);
        let acc_bufs = psum_left / bank;
        if acc_bufs == 0 {
            return Err(err(format!("{} has no PSUM bank left for accumulation", chip.name)));
        }
        let b_group = if g.tb { (1024 / (kt * ds)).clamp(1, 8) } else { (2048 / (ntw * ds)).clamp(1, 4) }.min(k_tiles);
        let per_core = (g.batch * m_tiles).div_ceil(cores.max(1));
        let mb_max = acc_bufs.min(per_core).min(m_tiles).max(1);
        // Two chunks of a block in flight: copies out of PSUM never wait for
        // the previous chunk's stores.
        let out_bufs = 2 * mb_max;
        let mut fixed = out_bufs * tile_bytes(ntw, g.out);
        fixed += if g.tb {
            RAW_B_BUFS * tile_bytes(nt.div_ceil(mt) * b_group * kt, g.dtype) + BT_BUFS * tile_bytes(ntw, g.dtype)
        } else {
            B_BUFS * tile_bytes(b_group * ntw, g.dtype)
        };
        if let Some(bias) = g.bias {
            fixed += 2 * tile_bytes(ntw, bias);
            if g.scale != 1.0 {
                fixed += 2 * tile_bytes(ntw, DType::F32);
            }
        }
        let sbuf = core.sbuf.bytes_per_partition as usize;
        let a_group_for = |w: usize| {
            if g.ta {
                (4096 / (w * ds)).clamp(1, 8).min(k_tiles)
            } else {
                (1024 / (kt * ds)).clamp(1, 8).min(k_tiles)
            }
        };
        let ring_max = |mb: usize| {
            let w = (mb * mt).min(g.m);
            let raw = if g.ta { 0 } else { (RAW_A_AHEAD + 1) * mb * tile_bytes(a_group_for(w) * kt, g.dtype) };
            // Keep a few allocation alignments spare.
            let avail = sbuf.saturating_sub(fixed + raw + 8 * crate::ALIGN as usize);
            avail / (w * ds)
        };
        // A core's M tiles (of one batch) cut into blocks of `mb`: full blocks and a remainder.
        let cost = |mb: usize| {
            let chunk = |b: usize| chunk_ns(chip, g, k_tiles, n_chunks, b, acc_bufs);
            let run = per_core.min(m_tiles);
            (run / mb) as f64 * chunk(mb) + if run % mb > 0 { chunk(run % mb) } else { 0.0 }
        };
        let pick = |resident: bool| {
            let fits = (1..=mb_max).filter_map(|mb| {
                let r = ring_max(mb);
                let ok = if resident { r >= k_tiles } else { r >= 2.min(k_tiles) };
                ok.then(|| (mb, if resident { r.min(2 * k_tiles) } else { r }))
            });
            // Streaming reloads Aᵀ per chunk anyway: the widest block is best.
            // Resident: the widest block within 3% of the cheapest (the
            // estimate is rough; wider blocks move fewer bytes).
            let fits: Vec<(usize, usize)> = fits.collect();
            let costs: Vec<f64> = fits.iter().map(|&(mb, _)| if resident { cost(mb) } else { 0.0 }).collect();
            let best = costs.iter().copied().fold(f64::INFINITY, f64::min);
            fits.iter().zip(&costs).filter(|(_, &c)| c <= best * 1.03).map(|(&f, _)| f).max()
        };
        let (resident, (mb, ring)) = match (pick(true), pick(false)) {
            (Some(x), _) => (true, x),
            (None, Some(x)) => (false, x),
            (None, None) => {
                return Err(err(format!(
                    "the tiles for M,K,N = {},{},{} do not fit {}'s SBUF",
                    g.m, g.k, g.n, chip.name
                )))
            }
        };
        let a_group = a_group_for((mb * mt).min(g.m));
        Ok(Plan { kt, mt, nt, k_tiles, n_chunks, m_tiles, mb, ring, resident, a_group, b_group, acc_bufs, out_bufs })
    }

    fn ks(&self, g: &Gemm, kt: usize) -> usize {
        self.kt.min(g.k - kt * self.kt)
    }

    /// The N chunks `(n0, ns)` of a block. The core's last block ends with
    /// quarter-width chunks (same Tensor-engine rate, moving N ≥ 64), so the
    /// stores left after the last matmul are a quarter of a full chunk's.
    fn chunks(&self, g: &Gemm, last_block: bool) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = (0..g.n).step_by(self.nt).map(|n0| (n0, self.nt.min(g.n - n0))).collect();
        let pieces = out.last().map_or(0, |&(_, ns)| ns / (self.nt / 4).max(64));
        if let Some((n0, ns)) = out.pop_if(|_| last_block && self.resident && pieces >= 2) {
            out.extend((0..pieces).map(|i| (n0 + ns * i / pieces, ns * (i + 1) / pieces - ns * i / pieces)));
        }
        out
    }
}

/// Estimated time of one N chunk of a block of `mb` M tiles (ns):
/// the larger of the DMA time of the chunk's traffic (B once, C, and the
/// block's Aᵀ spread over the chunks; bytes and descriptors as the DMA cost
/// rule counts them) and the Tensor engine's time plus its wait at the
/// chunk boundary for PSUM banks still being copied out. That wait comes from
/// the `mb` accumulators finishing within `mb` matmuls of each other: their
/// copies (two engines, `max(MIN_II, N)` cycles each) must drain before the
/// next chunk reuses the banks, which spare banks (`acc_bufs - mb`) delay.
fn chunk_ns(chip: &ChipSpec, g: &Gemm, k_tiles: usize, n_chunks: usize, mb: usize, acc_bufs: usize) -> f64 {
    let core = &chip.core;
    let (kt, mt) = (core.tensor.rows as usize, core.tensor.cols as usize);
    let n = (core.tensor.moving_fmax as usize).min(g.n);
    let mut mm_cycles = n.max(core.tensor.mm_init_cycles as usize) as f64;
    if g.dtype == DType::F32 {
        mm_cycles *= core.tensor.fp32_factor as f64;
    } else if g.dtype.is_fp8() {
        mm_cycles /= core.tensor.fp8_speedup.max(1) as f64;
    }
    let t = mm_cycles / core.clocks.tensor_ghz;
    let copy = (n as f64).max(core.elementwise.min_ii_cycles as f64);
    let engines = [copy / core.clocks.vector_ghz, copy / core.clocks.scalar_ghz];
    let mut free = [0.0f64; 2];
    let mut done = Vec::with_capacity(mb);
    for i in 0..mb {
        let ready = (i + 1) as f64 * t;
        let end = |e: usize| free[e].max(ready) + engines[e];
        let e = if end(0) <= end(1) { 0 } else { 1 };
        free[e] = end(e);
        done.push(free[e]);
    }
    let spare = acc_bufs.saturating_sub(mb);
    let mut clock = mb as f64 * t;
    let mut wait = 0.0;
    for i in 0..mb {
        let ready = if i >= spare { done[i - spare] } else { 0.0 };
        wait += (ready - clock).max(0.0);
        clock = clock.max(ready) + t;
    }
    let pe = k_tiles as f64 * mb as f64 * t + wait;
    // DMA work: bytes at one engine's rate plus a descriptor per contiguous
    // row (B rows of the chunk, C rows, the block's Aᵀ rows over the chunks).
    let d = &core.dma;
    let work = |rows: f64, run_bytes: f64| rows * (run_bytes / d.engine_bytes_per_ns + d.descriptor_ns);
    let (ds, k, w) = (g.dtype.size() as f64, (k_tiles * kt) as f64, (mb * mt).min(g.m) as f64);
    let ns =
        work(k, n as f64 * ds) + work(w, n as f64 * g.out.size() as f64) + work(k, w * ds) / n_chunks.max(1) as f64;
    // Transfers overlap imperfectly (fixed latencies, shared engines), and B
    // streams through one queue, which gets about half the engines while
    // stores or Aᵀ loads run beside it.
    let b_alone = work(k, n as f64 * ds) / (d.engines as f64 / 2.0);
    let dma = (ns / d.engines as f64 / 0.9).max(b_alone);
    pe.max(dma)
}

/// Free elements of a PSUM transpose tile: an N chunk of transposed B, or
/// four 128-column blocks of transposed A.
fn tr_free(nt: usize, mt: usize) -> usize {
    nt.max(4 * mt)
}

/// Consecutive M tiles of one batch, handled together.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    batch: usize,
    m0: usize,
    rows: usize,
}

impl Block {
    fn tiles(&self, mt: usize) -> usize {
        self.rows.div_ceil(mt)
    }
}

/// The blocks of each core: the (batch, M tile) pairs split evenly over the
/// cores, then cut into blocks of at most `mb` tiles of one batch.
fn blocks(g: &Gemm, p: &Plan, cores: usize) -> Vec<Vec<Block>> {
    let total = g.batch * p.m_tiles;
    let cores = cores.max(1);
    (0..cores)
        .map(|c| {
            let (lo, hi) = (total * c / cores, total * (c + 1) / cores);
            let mut out = Vec::new();
            let mut i = lo;
            while i < hi {
                let (batch, t0) = (i / p.m_tiles, i % p.m_tiles);
                let t1 = (t0 + p.mb).min(p.m_tiles).min(t0 + hi - i);
                let m0 = t0 * p.mt;
                out.push(Block { batch, m0, rows: (t1 * p.mt).min(g.m) - m0 });
                i += t1 - t0;
            }
            out
        })
        .collect()
}

/// One matmul step: K tile `kt` of the N chunk `n0..n0+ns` of block `blk`.
#[derive(Clone, Copy, Debug)]
struct Step {
    blk: usize,
    n0: usize,
    ns: usize,
    /// The block's last N chunk (its Aᵀ slots are free after it).
    last_chunk: bool,
    kt: usize,
    /// Aᵀ item (ring slot = item mod ring).
    a_item: usize,
    /// B load group and the step's K tile within it.
    b_group: usize,
    b_local: usize,
}

/// K tiles that are loaded (or transposed) together.
#[derive(Clone, Copy, Debug)]
struct Group {
    /// First item (Aᵀ) or step (B) and how many.
    first: usize,
    count: usize,
    blk: usize,
    nj: usize,
    n0: usize,
    ns: usize,
    kt0: usize,
    /// Rows of each K tile (only a tail group has fewer than `kt`).
    ks: usize,
}

/// Steps, Aᵀ groups and B groups of one core, in emission order.
struct Schedule {
    steps: Vec<Step>,
    a_groups: Vec<Group>,
    b_groups: Vec<Group>,
}

impl Schedule {
    fn new(g: &Gemm, p: &Plan, blocks: &[Block]) -> Schedule {
        let mut steps = Vec::new();
        let mut a_groups: Vec<Group> = Vec::new();
        let mut b_groups: Vec<Group> = Vec::new();
        let mut item = 0usize;
        // Starts a new group unless `i` continues `last` (same pass, same K
        // tile size, same alignment group, no ring wrap). The first group is
        // one K tile, so the first matmul waits for as little as possible.
        let extend = |groups: &mut Vec<Group>, i: usize, blk: usize, (nj, n0, ns), kt: usize, size, wrap: usize| {
            let ks = p.ks(g, kt);
            match groups.last_mut() {
                Some(l)
                    if l.blk == blk
                        && l.nj == nj
                        && l.ks == ks
                        && kt / size == l.kt0 / size
                        && !i.is_multiple_of(wrap)
                        && i != 1 =>
                {
                    l.count += 1
                }
                _ => groups.push(Group { first: i, count: 1, blk, nj, n0, ns, kt0: kt, ks }),
            }
            groups.len() - 1
        };
        for bi in 0..blocks.len() {
            if p.resident {
                for kt in 0..p.k_tiles {
                    extend(&mut a_groups, bi * p.k_tiles + kt, bi, (0, 0, 0), kt, p.a_group, p.ring);
                }
            }
            let chunks = p.chunks(g, bi + 1 == blocks.len());
            for (nj, &(n0, ns)) in chunks.iter().enumerate() {
                let last_chunk = nj + 1 == chunks.len();
                for kt in 0..p.k_tiles {
                    let a_item = if p.resident {
                        bi * p.k_tiles + kt
                    } else {
                        extend(&mut a_groups, item, bi, (nj, n0, ns), kt, p.a_group, p.ring);
                        item += 1;
                        item - 1
                    };
                    let b_group = extend(&mut b_groups, steps.len(), bi, (nj, n0, ns), kt, p.b_group, usize::MAX);
                    let b_local = kt - b_groups[b_group].kt0;
                    steps.push(Step { blk: bi, n0, ns, last_chunk, kt, a_item, b_group, b_local });
                }
            }
        }
        Schedule { steps, a_groups, b_groups }
    }
}

impl Kernel for MatMul {
    fn name(&self) -> &'static str {
        NAME
    }

    fn family(&self) -> &'static str {
        "matmul"
    }

    fn summary(&self) -> &'static str {
        "c[M,N] = scale_a·scale_b·(a·b) + bias, FP32 accumulation in PSUM (inputs a, b[, bias]; output c)"
    }

    fn shape_help(&self) -> &'static str {
        "M,K,N"
    }

    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("transpose_a", "a is given as [K,M] instead of [M,K] (default false)"),
            ("transpose_b", "b is given as [N,K] instead of [K,N] (default false)"),
            ("bias", "add bias[N] (input dtype, bf16 for fp8 inputs) to every row (default false)"),
            ("out", "dtype of c (default f32; any float dtype)"),
            ("batch", "B independent products; a, b and c get a leading B axis when given"),
            ("scale_a", "scale of a, e.g. an fp8 dequantization factor (default 1.0)"),
            ("scale_b", "scale of b (default 1.0); c = scale_a·scale_b·(a·b) + bias"),
        ]
    }

    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2]
    }

    fn default_shape(&self) -> Vec<usize> {
        vec![512, 512, 512]
    }

    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let g = Gemm::parse(args)?;
        let mut sigs =
            vec![sig("a", TensorKind::Input, g.a_shape(), g.dtype), sig("b", TensorKind::Input, g.b_shape(), g.dtype)];
        if let Some(d) = g.bias {
            sigs.push(sig("bias", TensorKind::Input, vec![g.n], d));
        }
        sigs.push(sig("c", TensorKind::Output, g.c_shape(), g.out));
        Ok(sigs)
    }

    /// Every pool, the Aᵀ ring included, is freed when a core's stream ends
    /// (or fails: a caller may free memory and try again); the builder's
    /// current core is restored.
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        let chip = kb.chip().clone();
        check_args(self, &chip, args)?;
        library::check_bindings(self, &chip, args, io)?;
        let g = Gemm::parse(args)?;
        let cores = args.cores.max(1) as usize;
        let p = Plan::new(&chip, &g, cores)?;
        let t = Tensors {
            a: bound(NAME, io, "a")?.clone(),
            b: bound(NAME, io, "b")?.clone(),
            bias: g.bias.map(|_| bound(NAME, io, "bias").cloned()).transpose()?,
            c: bound(NAME, io, "c")?.clone(),
        };
        let home = kb.current_core();
        let done = blocks(&g, &p, cores).iter().enumerate().filter(|(_, b)| !b.is_empty()).try_for_each(|(core, b)| {
            kb.core(core as u16)?;
            Emitter::new(kb, &g, &p, &t, b)?.run()
        });
        kb.core(home)?;
        done?;
        let (b, m, k, n) = (g.batch as u64, g.m as u64, g.k as u64, g.n as u64);
        let ds = g.dtype.size() as u64;
        let bias_bytes = g.bias.map_or(0, |d| n * d.size() as u64);
        Ok(Cost {
            flops: 2 * b * m * k * n,
            bytes_hbm: b * (m * k + k * n) * ds + b * m * n * g.out.size() as u64 + bias_bytes,
            peak_dtype: Some(g.dtype),
        })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let g = Gemm::parse(args)?;
        let get = |name: &str, shape: Vec<usize>| -> Result<&Vec<f64>, BuildError> {
            match inputs.get(name) {
                Some((s, v)) if *s == shape && v.len() == s.iter().product::<usize>() => Ok(v),
                Some((s, _)) => Err(err(format!("input `{name}` has shape {s:?}, expected {shape:?}"))),
                None => Err(err(format!("input `{name}` is missing"))),
            }
        };
        let a = get("a", g.a_shape())?;
        let b = get("b", g.b_shape())?;
        let bias = if g.bias.is_some() { Some(get("bias", vec![g.n])?) } else { None };
        let (m, k, n) = (g.m, g.k, g.n);
        let scale = g.scale as f64;
        let mut c = vec![0.0f64; g.batch * m * n];
        let mut bk = vec![0.0f64; k * n];
        for bi in 0..g.batch {
            let (a, b) = (&a[bi * m * k..(bi + 1) * m * k], &b[bi * k * n..(bi + 1) * k * n]);
            for kk in 0..k {
                for j in 0..n {
                    bk[kk * n + j] = if g.tb { b[j * k + kk] } else { b[kk * n + j] };
                }
            }
            let c = &mut c[bi * m * n..(bi + 1) * m * n];
            for i in 0..m {
                let row = &mut c[i * n..(i + 1) * n];
                for kk in 0..k {
                    let aik = if g.ta { a[kk * m + i] } else { a[i * k + kk] };
                    for (cj, bj) in row.iter_mut().zip(&bk[kk * n..(kk + 1) * n]) {
                        *cj += aik * bj;
                    }
                }
                for (j, cj) in row.iter_mut().enumerate() {
                    *cj = *cj * scale + bias.map_or(0.0, |bv| bv[j]);
                }
            }
        }
        Ok(HostTensors::from([("c".to_string(), (g.c_shape(), c))]))
    }

    /// The output dtype's tolerance with its absolute term scaled to the
    /// typical magnitude of an output: with inputs uniform in [-1, 1) a sum of
    /// K products has standard deviation √K/3, so a bf16 result of K = 4096
    /// is ~21 and its last place ~0.1, far above the default atol of 0.01
    /// (the relative term covers large outputs, the absolute one the outputs
    /// that cancel to near zero). A K·2⁻²² term bounds FP32 accumulation.
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        let base = Tolerance::for_dtype(args.dtype_opt(NAME, "out", DType::F32).unwrap_or(DType::F32));
        let Ok(g) = Gemm::parse(args) else { return base };
        let magnitude = (g.scale.abs() as f64 * (g.k as f64).sqrt() / 3.0).max(1.0);
        let accumulate = g.scale.abs() as f64 * g.k as f64 * 2f64.powi(-22);
        Tolerance { atol: base.atol * magnitude + accumulate, rtol: base.rtol }
    }
}

#[cfg(test)]
mod tests;
