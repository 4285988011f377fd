//! 2-D convolution as shifted-window matmuls accumulating in PSUM.

use std::collections::BTreeMap;
use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, Space, TensorKind};

use super::packing::{ConvGeometry, ConvPacking, OutBlock};
use super::{kernel_err, with_held, Band, Held};
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{act_f64, act_fn, bound, check_emit, chunks, input, output, sig, split};
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};
use crate::view::View;

/// `y = clip(act(conv(x, w) + bias + r))` over NCHW tensors: shape
/// `N,C,H,W,M,KH,KW`.
///
/// Tiling: output positions are cut into blocks of `R` rows × `Q` columns
/// with `R·Q ≤ 512` (one PSUM bank of f32). For a block, the input *band* it
/// reads (rows `r0·sh − pad_top ..`, all taps' columns) is loaded into SBUF
/// once per input-channel chunk of ≤ 128 channels (channels on partitions),
/// zero-filled where it overlaps the padding. The output channels are cut
/// into blocks of ≤ 128 ([`ConvPacking`]); each block's PSUM tile
/// `[mo, R·Q]` accumulates one matmul per (channel chunk, kernel tap): the
/// stationary operand is that tap's `[k, mo]` weight slice and the moving
/// operand the band viewed with the tap's row/column offset and the strides
/// (a strided SBUF access pattern, no copy). The Scalar engine evacuates
/// PSUM with the bias and activation fused (`activation(func, psum + bias)`),
/// after a Vector add of the residual when there is one; a clamp runs on the
/// Vector engine.
///
/// Weights are loaded once per core (on DMA queues 8–11, apart from the
/// activations) and stay in SBUF when they fit a quarter of a partition's SBUF (else
/// output-channel blocks are processed in sets that fit, re-reading bands per set);
/// the kernel stays under half the SBUF in all. Bands and outputs are
/// multi-buffered so DMA overlaps the matmuls. Groups: when each group has
/// ≤ 128 input and output channels, several groups share one block with a
/// block-diagonal weight (depthwise convolutions run as dense 128-channel
/// matmuls instead of 1-row ones). Blocks of work (image, rows, columns) are
/// split over the cores. Inputs of ≤ 32 channels fold their kernel taps into the
/// contraction (up to 128 partitions of shifted windows, loaded from a zero-padded copy
/// of the image in a workspace), so the stem of an image network does not run its
/// matmuls on three PE rows.
pub struct Conv2d;

const NAME: &str = "conv2d";

const OPTIONS: &[(&str, &str)] = &[
    ("stride", "sh,sw (default 1,1)"),
    ("pad", "top,left,bottom,right zero padding (default 0,0,0,0)"),
    ("dilation", "dh,dw (default 1,1)"),
    ("groups", "channel groups G, dividing C and M (default 1)"),
    ("bias", "add bias[M] (default false)"),
    ("residual", "add r[N,M,OH,OW] before the activation (default false)"),
    ("act", "activation applied last (default identity; any unary fn: relu, sigmoid, ...)"),
    ("clip", "lo,hi: clamp after the activation (default none)"),
];

/// Share of a partition's SBUF for resident weights (a quarter) and for input bands
/// (a sixth): with the output buffers a convolution stays under half the SBUF, so a
/// compiler can place consecutive convolutions in alternate halves and load the next
/// one's weights while this one computes.
fn weight_budget(chip: &ChipSpec) -> usize {
    chip.core.sbuf.bytes_per_partition as usize / 4
}

fn band_budget(chip: &ChipSpec) -> usize {
    chip.core.sbuf.bytes_per_partition as usize / 6
}

/// First DMA queue of the weight loads: queues of their own, so that a convolution's
/// weights can load while the previous step's activations still stream on queues 0–3.
const WEIGHT_QUEUE: u8 = 8;
/// Columns of one PSUM bank of f32: the most output positions per matmul.
const BANK: usize = 512;
/// Input channels up to which kernel taps are folded into the contraction.
const FOLD_MAX_CHANNELS: usize = 32;

/// Options beyond the geometry.
#[derive(Clone, Debug, PartialEq)]
struct Epilogue {
    bias: bool,
    residual: bool,
    act: ActFn,
    clip: Option<(f64, f64)>,
}

fn epilogue(args: &KernelArgs) -> Result<Epilogue, BuildError> {
    let act = match args.options.get("act") {
        Some(v) => act_fn(NAME, "act", v)?,
        None => ActFn::Identity,
    };
    let clip = match args.options.get("clip") {
        None => None,
        Some(text) => {
            let v: Vec<f64> = text.split(',').filter_map(|s| s.trim().parse().ok()).collect();
            match v[..] {
                [lo, hi] if lo <= hi && !lo.is_nan() && !hi.is_nan() => Some((lo, hi)),
                _ => return Err(kernel_err(NAME, format!("option `clip={text}`: expected lo,hi with lo ≤ hi"))),
            }
        }
    };
    Ok(Epilogue { bias: args.flag(NAME, "bias", false)?, residual: args.flag(NAME, "residual", false)?, act, clip })
}

/// The tiling of one instance.
struct Plan {
    g: ConvGeometry,
    pack: ConvPacking,
    oh: usize,
    ow: usize,
    /// Output rows and columns per block.
    r: usize,
    q: usize,
    /// Consecutive output blocks whose weights share SBUF.
    sets: Vec<Range<usize>>,
    /// Weight columns (elements per partition) of the largest set.
    set_cols: usize,
    /// Most distinct input chunks one set reads.
    set_chunks: usize,
    /// Kernel taps folded into the contraction (1: none): with few input channels,
    /// `fold` shifted copies of the input stack on the partitions, so one matmul
    /// covers `fold` taps.
    fold: usize,
    /// Weight buffers: 2 when sets alternate (the next set loads during this one's
    /// matmuls), 1 when all weights stay or one block needs the whole budget.
    weight_bufs: usize,
}

impl Plan {
    fn new(g: ConvGeometry, chip: &ChipSpec, dtype: DType) -> Result<Plan, BuildError> {
        let p = chip.core.tensor.rows.min(chip.core.tensor.cols) as usize;
        let (weight_bytes, band_bytes) = (weight_budget(chip), band_budget(chip));
        let (oh, ow) = g.out_hw()?;
        let pack = ConvPacking::new(&g, p);
        let taps = g.taps();
        // All weights resident (one buffer), or sets of blocks double-buffered in halves.
        let needs: Vec<usize> = pack.blocks.iter().map(|b| b.parts.len() * taps * b.m.len()).collect();
        let (total, largest) = (needs.iter().sum::<usize>(), needs.iter().copied().max().unwrap_or(0));
        let whole = weight_bytes / dtype.size();
        let (budget, weight_bufs) = if total <= whole || largest > whole / 2 { (whole, 1) } else { (whole / 2, 2) };
        let mut sets = Vec::new();
        let (mut start, mut cols, mut set_cols) = (0, 0, 0);
        for (i, b) in pack.blocks.iter().enumerate() {
            let need = b.parts.len() * taps * b.m.len();
            if need > budget {
                return Err(kernel_err(
                    NAME,
                    format!(
                        "the weights of output channels {:?} take {} bytes per partition, over the {}-byte budget",
                        b.m,
                        need * dtype.size(),
                        budget * dtype.size()
                    ),
                ));
            }
            if cols + need > budget {
                sets.push(start..i);
                set_cols = set_cols.max(cols);
                (start, cols) = (i, 0);
            }
            cols += need;
        }
        sets.push(start..pack.blocks.len());
        set_cols = set_cols.max(cols);
        let set_chunks = sets
            .iter()
            .map(|s| {
                let mut ids: Vec<usize> =
                    pack.blocks[s.clone()].iter().flat_map(|b| b.parts.iter().map(|p| p.chunk)).collect();
                ids.sort_unstable();
                ids.dedup();
                ids.len()
            })
            .max()
            .unwrap_or(1);
        // Thin dense inputs (≤ 32 channels) fold taps into the contraction: the PE rows
        // would otherwise sit mostly idle, and the extra input loads stay small.
        let fold = if g.groups == 1 && g.c <= FOLD_MAX_CHANNELS && taps > 1 { (p / g.c).min(taps) } else { 1 };
        let q0 = ow.min(BANK);
        let (mut r, mut q) = ((BANK / q0).clamp(1, oh), q0);
        let fits = |r: usize, q: usize| {
            let band = g.window.band(&(0..r), &(0..q));
            let need = if fold > 1 {
                2 * taps.div_ceil(fold) * r * ((q - 1) * g.window.stride[1] + 1)
            } else {
                2 * set_chunks * band.elements()
            };
            need * dtype.size() <= band_bytes
        };
        while !fits(r, q) {
            if r > 1 {
                r = r.div_ceil(2);
            } else if q > 1 {
                q = q.div_ceil(2);
            } else {
                return Err(kernel_err(NAME, format!("{set_chunks} input-channel chunks do not fit SBUF")));
            }
        }
        Ok(Plan { g, pack, oh, ow, r, q, sets, set_cols, set_chunks, fold, weight_bufs })
    }

    /// Blocks of work: (image, output rows, output columns).
    fn items(&self) -> Vec<(usize, Range<usize>, Range<usize>)> {
        let mut v = Vec::new();
        for n in 0..self.g.n {
            for rows in chunks(self.oh, self.r) {
                for cols in chunks(self.ow, self.q) {
                    v.push((n, rows.clone(), cols));
                }
            }
        }
        v
    }
}

fn parse(chip: &ChipSpec, args: &KernelArgs) -> Result<(Plan, Epilogue), BuildError> {
    let g = ConvGeometry::parse(args)?;
    Ok((Plan::new(g, chip, args.dtype)?, epilogue(args)?))
}

/// The queue of the `i`-th weight load: four queues from [`WEIGHT_QUEUE`] where the
/// chip has them.
fn weight_queue(chip: &ChipSpec, i: usize) -> u8 {
    let queues = chip.core.dma.queues as usize;
    if queues >= WEIGHT_QUEUE as usize + 4 {
        WEIGHT_QUEUE + (i % 4) as u8
    } else {
        (i % queues.max(1)) as u8
    }
}

/// How many sets of output blocks the weights of `args` are loaded in.
#[cfg(test)]
pub(super) fn weight_sets(chip: &ChipSpec, args: &KernelArgs) -> usize {
    parse(chip, args).map(|(p, _)| p.sets.len()).unwrap_or(0)
}

/// Per-core pools (indices into the kernel's [`Held`]) and the bias columns.
struct Tiles {
    weights: usize,
    bands: usize,
    psum: usize,
    out: usize,
    res: Option<usize>,
    bias: Option<View>,
}

fn emit(kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
    check_emit(&Conv2d, kb, args, io)?;
    let chip = kb.chip().clone();
    let (plan, ep) = parse(&chip, args)?;
    let dtype = args.dtype;
    let (x, w, y) = (bound(NAME, io, "x")?, bound(NAME, io, "w")?, bound(NAME, io, "y")?);
    let bias = if ep.bias { Some(bound(NAME, io, "bias")?) } else { None };
    let res = if ep.residual { Some(bound(NAME, io, "r")?) } else { None };
    let g = &plan.g;
    let taps = g.taps();
    let win = g.window;
    let p = chip.core.sbuf.partitions as usize;
    let wflat = w.view().reshape(&[plan.pack.len]);
    let fold_cols = plan.r * ((plan.q - 1) * win.stride[1] + 1);
    let band_max = if plan.fold > 1 { fold_cols } else { win.band(&(0..plan.r), &(0..plan.q)).elements() };
    let groups = taps.div_ceil(plan.fold);
    let band_bufs = if plan.fold > 1 { 2 * groups } else { 2 * plan.set_chunks };
    let items = plan.items();
    with_held(kb, |kb, held| {
        for (core, range) in split(items.len(), args.cores as usize, 1).into_iter().enumerate() {
            kb.core(core as u16)?;
            let mut t = Tiles {
                weights: held.pool(kb, Space::Sbuf, &[p, plan.set_cols], dtype, plan.weight_bufs)?,
                bands: held.pool(kb, Space::Sbuf, &[p, band_max], dtype, band_bufs)?,
                psum: held.pool(kb, Space::Psum, &[p, BANK], DType::F32, 2)?,
                out: held.pool(kb, Space::Sbuf, &[p, BANK], dtype, 3)?,
                res: if res.is_some() { Some(held.pool(kb, Space::Sbuf, &[p, BANK], dtype, 2)?) } else { None },
                bias: None,
            };
            // A folded convolution with padding reads a zero-padded copy of each image (a
            // workspace of this core), so every tap's window is one plain strided load.
            let pad_ws = if plan.fold > 1 && win.pads.iter().any(|&x| x > 0) {
                let [pt, pl, pb, pr] = win.pads;
                let (hp, wp) = (g.h + pt + pb, g.w + pl + pr);
                let bytes = (g.c * hp * wp * dtype.size()) as u64;
                let key = format!("conv2d.padded.core{}", kb.absolute_core());
                let ws = kb.hbm_workspace(kb.current_chip(), &key, bytes)?.region(
                    "conv2d.padded",
                    0,
                    &[g.c, hp, wp],
                    dtype,
                )?;
                let z = (pt.max(pb) * wp).max(g.h * pl.max(pr)).max(1);
                let zeros = held.tile(kb, &[g.c, z], dtype)?;
                kb.memset(Engine::GpSimd, &zeros, 0.0)?;
                Some((ws, zeros))
            } else {
                None
            };
            if let Some(b) = bias {
                let tile = held.tile(kb, &[p, plan.pack.blocks.len()], DType::F32)?;
                for (i, blk) in plan.pack.blocks.iter().enumerate() {
                    let col = tile.part(0..blk.m.len()).cols(i..i + 1);
                    kb.dma(&col, b.view().slice(0, blk.m.clone()).reshape(&[blk.m.len(), 1]))?;
                }
                t.bias = Some(tile);
            }
            for set in &plan.sets {
                // Weights of the set, each (block, chunk) slice at its own columns.
                let wt = held.next(t.weights)?;
                let mut col = 0;
                let mut wcols: BTreeMap<(usize, usize), usize> = BTreeMap::new();
                for bi in set.clone() {
                    let blk = &plan.pack.blocks[bi];
                    for (pi, part) in blk.parts.iter().enumerate() {
                        let k = plan.pack.chunks[part.chunk].len();
                        let mo = blk.m.len();
                        let n = taps * mo;
                        let slice = wflat.slice(0, part.offset..part.offset + k * n);
                        if plan.fold > 1 {
                            // Partition f·k + c holds tap g·fold + f of channel c, group g at columns g·mo.
                            let per_tap = slice.reshape(&[k, taps, mo]);
                            for f in 0..plan.fold {
                                let gf = (taps - f).div_ceil(plan.fold);
                                let dst = wt.part(f * k..(f + 1) * k).cols(col..col + gf * mo).reshape_free(&[gf, mo]);
                                kb.dma_on(weight_queue(&chip, f), dst, per_tap.slice_step(1, f..taps, plan.fold))?;
                            }
                        } else {
                            kb.dma_on(
                                weight_queue(&chip, pi),
                                wt.part(0..k).cols(col..col + n),
                                slice.reshape(&[k, n]),
                            )?;
                        }
                        wcols.insert((bi, pi), col);
                        col += n;
                    }
                }
                let mut used: Vec<usize> =
                    plan.pack.blocks[set.clone()].iter().flat_map(|b| b.parts.iter().map(|p| p.chunk)).collect();
                used.sort_unstable();
                used.dedup();
                let mut padded_image = None;
                for (n, rows, cols) in &items[range.clone()] {
                    if plan.fold > 1 {
                        let src = match &pad_ws {
                            Some((ws, zeros)) => {
                                if padded_image != Some(*n) {
                                    pad_image(kb, g, x, ws, zeros, *n)?;
                                    padded_image = Some(*n);
                                }
                                Padded {
                                    src: ws.clone(),
                                    base: 0,
                                    hp: g.h + win.pads[0] + win.pads[2],
                                    wp: g.w + win.pads[1] + win.pads[3],
                                }
                            }
                            None => Padded { src: x.clone(), base: n * g.c * g.h * g.w, hp: g.h, wp: g.w },
                        };
                        let groups = load_folded(kb, held, t.bands, &plan, &src, rows, cols)?;
                        for bi in set.clone() {
                            let blk = &plan.pack.blocks[bi];
                            let mo = blk.m.len();
                            let ps = held.next(t.psum)?.part(0..mo).cols(0..rows.len() * cols.len());
                            let c0 = wcols.get(&(bi, 0)).copied().unwrap_or(0);
                            for (gi, moving) in groups.iter().enumerate() {
                                let stationary = wt.part(0..moving.shape()[0]).cols(c0 + gi * mo..c0 + (gi + 1) * mo);
                                kb.matmul(&ps, &stationary, moving, gi == 0, gi + 1 == groups.len())?;
                            }
                            epilogue_store(kb, held, &t, &ep, (y, res), (*n, rows, cols), blk, bi, &ps)?;
                        }
                        continue;
                    }
                    let band = win.band(rows, cols);
                    let (bh, bw) = (band.rows.1, band.cols.1);
                    // Load the band of every chunk the set reads.
                    let mut views: BTreeMap<usize, View> = BTreeMap::new();
                    for &ci in &used {
                        let ch = plan.pack.chunks[ci].clone();
                        let v = held.next(t.bands)?.part(0..ch.len()).cols(0..bh * bw).reshape_free(&[bh, bw]);
                        load_band(kb, &v, &x.view().at(0, *n).slice(0, ch), &band, (g.h, g.w), 0.0)?;
                        views.insert(ci, v);
                    }
                    for bi in set.clone() {
                        let blk = &plan.pack.blocks[bi];
                        let mo = blk.m.len();
                        let npos = rows.len() * cols.len();
                        let ps = held.next(t.psum)?.part(0..mo).cols(0..npos);
                        let last = blk.parts.len() * taps - 1;
                        let mut step = 0;
                        for (pi, part) in blk.parts.iter().enumerate() {
                            let k = plan.pack.chunks[part.chunk].len();
                            let band_v = views.get(&part.chunk).ok_or_else(|| kernel_err(NAME, "band not loaded"))?;
                            let c0 = wcols.get(&(bi, pi)).copied().unwrap_or(0);
                            for i in 0..win.kernel[0] {
                                for j in 0..win.kernel[1] {
                                    let tap = i * win.kernel[1] + j;
                                    let r0 = i * win.dilation[0];
                                    let q0 = j * win.dilation[1];
                                    let moving = band_v
                                        .slice_step(1, r0..r0 + (rows.len() - 1) * win.stride[0] + 1, win.stride[0])
                                        .slice_step(2, q0..q0 + (cols.len() - 1) * win.stride[1] + 1, win.stride[1]);
                                    let stationary = wt.part(0..k).cols(c0 + tap * mo..c0 + (tap + 1) * mo);
                                    kb.matmul(&ps, &stationary, &moving, step == 0, step == last)?;
                                    step += 1;
                                }
                            }
                        }
                        epilogue_store(kb, held, &t, &ep, (y, res), (*n, rows, cols), blk, bi, &ps)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    let (oh, ow) = (plan.oh, plan.ow);
    let flops = 2 * (g.n * g.m * oh * ow * g.c_per_group() * taps) as u64;
    let mut elements = g.n * g.c * g.h * g.w + plan.pack.len + g.n * g.m * oh * ow;
    if ep.bias {
        elements += g.m;
    }
    if ep.residual {
        elements += g.n * g.m * oh * ow;
    }
    Ok(Cost { flops, bytes_hbm: (elements * dtype.size()) as u64, peak_dtype: Some(dtype) })
}

/// Evacuates PSUM tile `ps` of block `blk` (index `bi`) for image `n`, rows, columns:
/// the residual added (Vector), bias and activation (Scalar), the clamp (Vector), the
/// store.
#[allow(clippy::too_many_arguments)]
fn epilogue_store(
    kb: &mut KernelBuilder,
    held: &mut Held,
    t: &Tiles,
    ep: &Epilogue,
    (y, res): (&crate::builder::HbmTensor, Option<&crate::builder::HbmTensor>),
    (n, rows, cols): (usize, &Range<usize>, &Range<usize>),
    blk: &OutBlock,
    bi: usize,
    ps: &View,
) -> Result<(), BuildError> {
    let mo = blk.m.len();
    let npos = rows.len() * cols.len();
    let at = |v: View| v.at(0, n).slice(0, blk.m.clone()).slice(1, rows.clone()).slice(2, cols.clone());
    if let (Some(r), Some(pool)) = (res, t.res) {
        let rt = held.next(pool)?.part(0..mo).cols(0..npos);
        kb.dma(&rt, at(r.view()))?;
        kb.tensor_tensor(Engine::Vector, AluOp::Add, ps, ps, &rt)?;
    }
    let out = held.next(t.out)?.part(0..mo).cols(0..npos);
    let bias_col = t.bias.as_ref().map(|b| b.part(0..mo).cols(bi..bi + 1));
    kb.activation(ep.act, &out, ps, 1.0, bias_col.as_ref().map(|v| v as _), None)?;
    if let Some((lo, hi)) = ep.clip {
        let (lo, hi) = (lo as f32, hi as f32);
        kb.tensor_scalar(Engine::Vector, &out, &out, Stage::new(AluOp::Max, lo), Some(Stage::new(AluOp::Min, hi)))?;
    }
    kb.dma(at(y.view()), &out)?;
    Ok(())
}

/// The zero-padded image a folded convolution reads: `[C, H + pads, W + pads]`.
struct Padded {
    /// The tensor read (the input itself when there is no padding).
    src: crate::builder::HbmTensor,
    /// Element offset of the current image.
    base: usize,
    /// Rows and columns of the padded plane.
    hp: usize,
    wp: usize,
}

/// Copies image `n` of `x` into the middle of the zeroed padded workspace `ws`
/// (`[C, Hp, Wp]`): the four borders from a zero tile, then the interior.
fn pad_image(
    kb: &mut KernelBuilder,
    g: &ConvGeometry,
    x: &crate::builder::HbmTensor,
    ws: &crate::builder::HbmTensor,
    zeros: &View,
    n: usize,
) -> Result<(), BuildError> {
    let [pt, pl, pb, pr] = g.window.pads;
    let (hp, wp) = (g.h + pt + pb, g.w + pl + pr);
    let v = ws.view().reshape(&[g.c, hp, wp]);
    let zero = |shape: [usize; 2]| zeros.cols(0..shape[0] * shape[1]).reshape_free(&[shape[0], shape[1]]);
    if pt > 0 {
        kb.dma(v.slice(1, 0..pt), zero([pt, wp]))?;
    }
    if pb > 0 {
        kb.dma(v.slice(1, hp - pb..hp), zero([pb, wp]))?;
    }
    if pl > 0 {
        kb.dma(v.slice(1, pt..pt + g.h).slice(2, 0..pl), zero([g.h, pl]))?;
    }
    if pr > 0 {
        kb.dma(v.slice(1, pt..pt + g.h).slice(2, wp - pr..wp), zero([g.h, pr]))?;
    }
    kb.dma(v.slice(1, pt..pt + g.h).slice(2, pl..pl + g.w), x.view().at(0, n))?;
    Ok(())
}

/// The moving operands of a folded convolution for one block of outputs: per group of
/// `fold` taps a `[taps·C, R, Q]` view whose partition block `f` holds the window of
/// tap `g·fold + f` (padded rows `r·sh + i·dh`, columns `q·sw + j·dw`). The taps of one
/// kernel row in a group load with one DMA: its outer axis steps through the taps'
/// column offsets, then channels, rows and a contiguous run of columns.
fn load_folded(
    kb: &mut KernelBuilder,
    held: &mut Held,
    pool: usize,
    plan: &Plan,
    src: &Padded,
    rows: &Range<usize>,
    cols: &Range<usize>,
) -> Result<Vec<View>, BuildError> {
    let g = &plan.g;
    let w = g.window;
    let (c, taps, kw) = (g.c, g.taps(), w.kernel[1]);
    let (nr, nq) = (rows.len(), cols.len());
    let bw = (nq - 1) * w.stride[1] + 1;
    let dtype = src.src.dtype();
    let es = dtype.size() as u64;
    let dim = |stride: usize, size: usize| trainyard_isa::Dim { stride: stride as i64, size: size as u32 };
    let mut out = Vec::new();
    for g0 in (0..taps).step_by(plan.fold) {
        let nf = plan.fold.min(taps - g0);
        let tile = held.next(pool)?.part(0..nf * c).cols(0..nr * bw).reshape_free(&[nr, bw]);
        let mut t = g0;
        while t < g0 + nf {
            // The taps of kernel row i from t to the group's end or the row's end.
            let (i, j) = (t / kw, t % kw);
            let nj = (kw - j).min(g0 + nf - t);
            let row0 = rows.start * w.stride[0] + i * w.dilation[0];
            let col0 = cols.start * w.stride[1] + j * w.dilation[1];
            let offset = src.src.offset() + (src.base + row0 * src.wp + col0) as u64 * es;
            let dims = [dim(src.hp * src.wp, c), dim(w.stride[0] * src.wp, nr), dim(1, bw)];
            let from = trainyard_isa::Ap::new(
                trainyard_isa::Space::Hbm,
                0,
                nj as u32,
                w.dilation[1] as i64,
                offset,
                &dims,
                dtype,
            );
            let p0 = (t - g0) * c;
            kb.dma(tile.part(p0..p0 + nj * c), from)?;
            t += nj;
        }
        out.push(tile.part(0..nf * c).slice_step(2, 0..bw, w.stride[1]));
    }
    Ok(out)
}

/// Loads `band` of the `[k, H, W]` planes `src` into the `[k, bh, bw]` tile
/// view `dst`, filling what lies outside the planes with `fill`.
pub(super) fn load_band(
    kb: &mut KernelBuilder,
    dst: &View,
    src: &View,
    band: &Band,
    (h, w): (usize, usize),
    fill: f64,
) -> Result<(), BuildError> {
    let (rows, cols) = band.inside(h, w);
    if rows.len() != band.rows.1 || cols.len() != band.cols.1 {
        kb.memset(Engine::GpSimd, dst, fill)?;
    }
    if rows.is_empty() || cols.is_empty() {
        return Ok(());
    }
    let at = |axis: (isize, usize), r: &Range<usize>| {
        let s = (axis.0 + r.start as isize) as usize;
        s..s + r.len()
    };
    let src = src.slice(1, at(band.rows, &rows)).slice(2, at(band.cols, &cols));
    kb.dma(dst.slice(1, rows).slice(2, cols), src)?;
    Ok(())
}

impl Kernel for Conv2d {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "cnn"
    }
    fn summary(&self) -> &'static str {
        "y = clip(act(conv2d(x, w) + bias + r)) over NCHW, PSUM-accumulated tap matmuls (inputs x, w packed[, bias, r]; \
         output y)"
    }
    fn shape_help(&self) -> &'static str {
        "N,C,H,W,M,KH,KW (x [N,C,H,W], y [N,M,OH,OW], w packed by ConvPacking from [M,C/G,KH,KW])"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1, 64, 56, 56, 64, 3, 3]
    }
    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let (plan, ep) = parse(chip, args)?;
        let g = &plan.g;
        let mut v = vec![
            sig("x", TensorKind::Input, &[g.n, g.c, g.h, g.w], args.dtype),
            sig("w", TensorKind::Input, &[plan.pack.len], args.dtype),
        ];
        if ep.bias {
            v.push(sig("bias", TensorKind::Input, &[g.m], args.dtype));
        }
        let out = [g.n, g.m, plan.oh, plan.ow];
        if ep.residual {
            v.push(sig("r", TensorKind::Input, &out, args.dtype));
        }
        v.push(sig("y", TensorKind::Output, &out, args.dtype));
        Ok(v)
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        emit(kb, args, io)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let g = ConvGeometry::parse(args)?;
        let ep = epilogue(args)?;
        let pack = ConvPacking::new(&g, 128);
        let (oh, ow) = g.out_hw()?;
        let (x, w) = (input(NAME, inputs, "x")?, input(NAME, inputs, "w")?);
        let bias = if ep.bias { Some(input(NAME, inputs, "bias")?) } else { None };
        let r = if ep.residual { Some(input(NAME, inputs, "r")?) } else { None };
        let win = g.window;
        let taps = g.taps();
        let mut y = vec![0.0; g.n * g.m * oh * ow];
        for n in 0..g.n {
            for blk in &pack.blocks {
                let mo = blk.m.len();
                for (mi, m) in blk.m.clone().enumerate() {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = 0.0;
                            for part in &blk.parts {
                                for (ci, c) in pack.chunks[part.chunk].clone().enumerate() {
                                    for i in 0..win.kernel[0] {
                                        let iy =
                                            (oy * win.stride[0] + i * win.dilation[0]) as isize - win.pads[0] as isize;
                                        if iy < 0 || iy >= g.h as isize {
                                            continue;
                                        }
                                        for j in 0..win.kernel[1] {
                                            let ix = (ox * win.stride[1] + j * win.dilation[1]) as isize
                                                - win.pads[1] as isize;
                                            if ix < 0 || ix >= g.w as isize {
                                                continue;
                                            }
                                            let wv = w[part.offset + (ci * taps + i * win.kernel[1] + j) * mo + mi];
                                            acc += wv * x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                        }
                                    }
                                }
                            }
                            let at = ((n * g.m + m) * oh + oy) * ow + ox;
                            let mut v = acc + bias.map_or(0.0, |b| b[m]) + r.map_or(0.0, |r| r[at]);
                            v = act_f64(ep.act, v);
                            if let Some((lo, hi)) = ep.clip {
                                v = v.max(lo).min(hi);
                            }
                            y[at] = v;
                        }
                    }
                }
            }
        }
        Ok(output("y", vec![g.n, g.m, oh, ow], y))
    }
    fn tolerance(&self, args: &KernelArgs) -> Tolerance {
        let base = Tolerance::for_dtype(args.dtype);
        let Ok(g) = ConvGeometry::parse(args) else { return base };
        let k = (g.c_per_group() * g.taps()) as f64;
        let magnitude = (k.sqrt() / 3.0).max(1.0);
        Tolerance { atol: base.atol * magnitude + k * 2f64.powi(-22), rtol: base.rtol }
    }
}
