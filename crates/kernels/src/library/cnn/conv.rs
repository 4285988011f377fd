//! 2-D convolution as shifted-window matmuls accumulating in PSUM.

use std::collections::BTreeMap;
use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::{kernel_err, Band, Window2d};
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{
    act_f64, act_fn, bound, check_emit, chunks, input, output, sig, split, Allocs,
};
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
/// Weights are loaded once per core and stay in SBUF when they fit a
/// 96 KiB-per-partition budget (else output-channel blocks are processed in
/// sets that fit, re-reading bands per set); bands and outputs are
/// multi-buffered so DMA overlaps the matmuls. Groups: when each group has
/// ≤ 128 input and output channels, several groups share one block with a
/// block-diagonal weight (depthwise convolutions run as dense 128-channel
/// matmuls instead of 1-row ones). Blocks of work (image, rows, columns) are
/// split over the cores.
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

/// SBUF bytes per partition for resident weights.
const WEIGHT_BUDGET: usize = 96 * 1024;
/// SBUF bytes per partition for input bands (all buffers).
const BAND_BUDGET: usize = 64 * 1024;
/// Columns of one PSUM bank of f32: the most output positions per matmul.
const BANK: usize = 512;

/// The shape and options of one convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeometry {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input rows.
    pub h: usize,
    /// Input columns.
    pub w: usize,
    /// Output channels.
    pub m: usize,
    /// Channel groups.
    pub groups: usize,
    /// The window.
    pub window: Window2d,
}

impl ConvGeometry {
    /// Reads the shape and window options of `args`.
    pub fn parse(args: &KernelArgs) -> Result<ConvGeometry, BuildError> {
        let [n, c, h, w, m, kh, kw] = args.dims::<7>(NAME, "N,C,H,W,M,KH,KW")?;
        let window = Window2d::parse(NAME, args, [kh, kw])?;
        let groups = args.usize(NAME, "groups", 1)?;
        if groups == 0 || c % groups != 0 || m % groups != 0 {
            return Err(kernel_err(NAME, format!("groups = {groups} must divide C = {c} and M = {m}")));
        }
        let g = ConvGeometry { n, c, h, w, m, groups, window };
        g.out_hw()?;
        Ok(g)
    }

    /// Output rows and columns.
    pub fn out_hw(&self) -> Result<(usize, usize), BuildError> {
        match (self.window.out_len(0, self.h, false), self.window.out_len(1, self.w, false)) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(kernel_err(
                NAME,
                format!(
                    "a {:?} window (dilation {:?}) does not fit the {}x{} input padded by {:?}",
                    self.window.kernel, self.window.dilation, self.h, self.w, self.window.pads
                ),
            )),
        }
    }

    /// Kernel taps (KH·KW).
    pub fn taps(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1]
    }

    /// Input channels per group.
    pub fn c_per_group(&self) -> usize {
        self.c / self.groups
    }

    /// Output channels per group.
    pub fn m_per_group(&self) -> usize {
        self.m / self.groups
    }
}

/// One input-channel chunk's weights within an output block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightPart {
    /// Index into [`ConvPacking::chunks`].
    pub chunk: usize,
    /// First element of its `[k, taps, mo]` slice in the packed weights.
    pub offset: usize,
}

/// Output channels computed together (≤ 128, on PSUM partitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutBlock {
    /// The output channels.
    pub m: Range<usize>,
    /// The input-channel chunks it accumulates over, in order.
    pub parts: Vec<WeightPart>,
}

/// The device layout of convolution weights: output channels in blocks of
/// ≤ 128, each accumulating over chunks of ≤ 128 input channels; the weights
/// of one (block, chunk) pair are a dense `[k, KH·KW, mo]` slice (input
/// channel on partitions, one `[k, mo]` stationary operand per tap), the
/// slices stored one after the other. Channels of different groups that
/// share a block get zero weights (block-diagonal).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPacking {
    /// Output-channel blocks.
    pub blocks: Vec<OutBlock>,
    /// Input-channel chunks (each ≤ 128 channels).
    pub chunks: Vec<Range<usize>>,
    /// Elements of the packed weights.
    pub len: usize,
    taps: usize,
}

impl ConvPacking {
    /// The packing of `g` for arrays of `p` rows and columns (128).
    pub fn new(g: &ConvGeometry, p: usize) -> ConvPacking {
        let (cg, mg, groups, taps) = (g.c_per_group(), g.m_per_group(), g.groups, g.taps());
        let mut ids: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut chunk_list: Vec<Range<usize>> = Vec::new();
        let mut chunk_id = |r: Range<usize>| {
            *ids.entry((r.start, r.end)).or_insert_with(|| {
                chunk_list.push(r.clone());
                chunk_list.len() - 1
            })
        };
        let mut blocks = Vec::new();
        let mut plan: Vec<(Range<usize>, Vec<usize>)> = Vec::new();
        if groups > 1 && cg <= p && mg <= p {
            // Several whole groups per block, block-diagonal weights.
            let per = (p / cg).min(p / mg).clamp(1, groups);
            for g0 in (0..groups).step_by(per) {
                let ng = per.min(groups - g0);
                plan.push((g0 * mg..(g0 + ng) * mg, vec![chunk_id(g0 * cg..(g0 + ng) * cg)]));
            }
        } else {
            for gi in 0..groups {
                for mc in chunks(mg, p) {
                    let parts = chunks(cg, p).into_iter().map(|cc| chunk_id(gi * cg + cc.start..gi * cg + cc.end));
                    plan.push((gi * mg + mc.start..gi * mg + mc.end, parts.collect()));
                }
            }
        }
        let mut offset = 0;
        for (m, ids) in plan {
            let mut parts = Vec::with_capacity(ids.len());
            for chunk in ids {
                parts.push(WeightPart { chunk, offset });
                offset += chunk_list[chunk].len() * taps * m.len();
            }
            blocks.push(OutBlock { m, parts });
        }
        ConvPacking { blocks, chunks: chunk_list, len: offset, taps }
    }

    /// Packs ONNX-layout weights `[M, C/G, KH, KW]` (row-major) into the
    /// device layout; channels of different groups in one block get 0.
    pub fn pack(&self, g: &ConvGeometry, onnx: &[f64]) -> Result<Vec<f64>, String> {
        let (cg, mg, taps) = (g.c_per_group(), g.m_per_group(), self.taps);
        if onnx.len() != g.m * cg * taps {
            return Err(format!("weights have {} elements, [M, C/G, KH, KW] needs {}", onnx.len(), g.m * cg * taps));
        }
        let mut out = vec![0.0; self.len];
        for b in &self.blocks {
            let mo = b.m.len();
            for part in &b.parts {
                for (ci, c) in self.chunks[part.chunk].clone().enumerate() {
                    for t in 0..taps {
                        for (mi, m) in b.m.clone().enumerate() {
                            if c / cg == m / mg {
                                out[part.offset + (ci * taps + t) * mo + mi] = onnx[(m * cg + c % cg) * taps + t];
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

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
}

impl Plan {
    fn new(g: ConvGeometry, p: usize, dtype: DType) -> Result<Plan, BuildError> {
        let (oh, ow) = g.out_hw()?;
        let pack = ConvPacking::new(&g, p);
        let taps = g.taps();
        let budget = WEIGHT_BUDGET / dtype.size();
        let mut sets = Vec::new();
        let (mut start, mut cols, mut set_cols) = (0, 0, 0);
        for (i, b) in pack.blocks.iter().enumerate() {
            let need = b.parts.len() * taps * b.m.len();
            if need > budget {
                return Err(kernel_err(
                    NAME,
                    format!(
                        "the weights of output channels {:?} take {} bytes per partition, over the {WEIGHT_BUDGET}-byte \
                         budget",
                        b.m,
                        need * dtype.size()
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
        let q0 = ow.min(BANK);
        let (mut r, mut q) = ((BANK / q0).clamp(1, oh), q0);
        let fits = |r: usize, q: usize| {
            let band = g.window.band(&(0..r), &(0..q));
            2 * set_chunks * band.elements() * dtype.size() <= BAND_BUDGET
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
        Ok(Plan { g, pack, oh, ow, r, q, sets, set_cols, set_chunks })
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
    let p = chip.core.tensor.rows.min(chip.core.tensor.cols) as usize;
    Ok((Plan::new(g, p, args.dtype)?, epilogue(args)?))
}

/// How many sets of output blocks the weights of `args` are loaded in.
#[cfg(test)]
pub(super) fn weight_sets(chip: &ChipSpec, args: &KernelArgs) -> usize {
    parse(chip, args).map(|(p, _)| p.sets.len()).unwrap_or(0)
}

/// Per-core tiles.
struct Tiles {
    weights: crate::builder::TilePool,
    bands: crate::builder::TilePool,
    psum: crate::builder::TilePool,
    out: crate::builder::TilePool,
    res: Option<crate::builder::TilePool>,
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
    let band_max = win.band(&(0..plan.r), &(0..plan.q)).elements();
    let items = plan.items();
    let home = kb.current_core();
    let mut allocs = Allocs::default();
    for (core, range) in split(items.len(), args.cores as usize, 1).into_iter().enumerate() {
        kb.core(core as u16)?;
        let mut t = Tiles {
            weights: kb.sbuf_pool(&[p, plan.set_cols], dtype, if plan.sets.len() > 1 { 2 } else { 1 })?,
            bands: kb.sbuf_pool(&[p, band_max], dtype, 2 * plan.set_chunks)?,
            psum: kb.psum_pool(&[p, BANK], DType::F32, 2)?,
            out: kb.sbuf_pool(&[p, BANK], dtype, 3)?,
            res: if res.is_some() { Some(kb.sbuf_pool(&[p, BANK], dtype, 2)?) } else { None },
            bias: None,
        };
        if let Some(b) = bias {
            let tile = allocs.sbuf(kb, &[p, plan.pack.blocks.len()], DType::F32)?;
            for (i, blk) in plan.pack.blocks.iter().enumerate() {
                let col = tile.part(0..blk.m.len()).cols(i..i + 1);
                kb.dma(&col, b.view().slice(0, blk.m.clone()).reshape(&[blk.m.len(), 1]))?;
            }
            t.bias = Some(tile);
        }
        for set in &plan.sets {
            // Weights of the set, each (block, chunk) slice at its own columns.
            let wt = t.weights.next();
            let mut col = 0;
            let mut wcols: BTreeMap<(usize, usize), usize> = BTreeMap::new();
            for bi in set.clone() {
                let blk = &plan.pack.blocks[bi];
                for (pi, part) in blk.parts.iter().enumerate() {
                    let k = plan.pack.chunks[part.chunk].len();
                    let n = taps * blk.m.len();
                    let src = wflat.slice(0, part.offset..part.offset + k * n).reshape(&[k, n]);
                    kb.dma(wt.part(0..k).cols(col..col + n), src)?;
                    wcols.insert((bi, pi), col);
                    col += n;
                }
            }
            let mut used: Vec<usize> =
                plan.pack.blocks[set.clone()].iter().flat_map(|b| b.parts.iter().map(|p| p.chunk)).collect();
            used.sort_unstable();
            used.dedup();
            for (n, rows, cols) in &items[range.clone()] {
                let band = win.band(rows, cols);
                let (bh, bw) = (band.rows.1, band.cols.1);
                // Load the band of every chunk the set reads.
                let mut views: BTreeMap<usize, View> = BTreeMap::new();
                for &ci in &used {
                    let ch = plan.pack.chunks[ci].clone();
                    let v = t.bands.next().part(0..ch.len()).cols(0..bh * bw).reshape_free(&[bh, bw]);
                    load_band(kb, &v, &x.view().at(0, *n).slice(0, ch), &band, (g.h, g.w), 0.0)?;
                    views.insert(ci, v);
                }
                for bi in set.clone() {
                    let blk = &plan.pack.blocks[bi];
                    let mo = blk.m.len();
                    let npos = rows.len() * cols.len();
                    let ps = t.psum.next().part(0..mo).cols(0..npos);
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
                    let dst = y.view().at(0, *n).slice(0, blk.m.clone()).slice(1, rows.clone()).slice(2, cols.clone());
                    if let (Some(r), Some(pool)) = (res, t.res.as_mut()) {
                        let rt = pool.next().part(0..mo).cols(0..npos);
                        let src =
                            r.view().at(0, *n).slice(0, blk.m.clone()).slice(1, rows.clone()).slice(2, cols.clone());
                        kb.dma(&rt, src)?;
                        kb.tensor_tensor(Engine::Vector, AluOp::Add, &ps, &ps, &rt)?;
                    }
                    let out = t.out.next().part(0..mo).cols(0..npos);
                    let bias_col = t.bias.as_ref().map(|b| b.part(0..mo).cols(bi..bi + 1));
                    kb.activation(ep.act, &out, &ps, 1.0, bias_col.as_ref().map(|v| v as _), None)?;
                    if let Some((lo, hi)) = ep.clip {
                        let (lo, hi) = (lo as f32, hi as f32);
                        kb.tensor_scalar(
                            Engine::Vector,
                            &out,
                            &out,
                            Stage::new(AluOp::Max, lo),
                            Some(Stage::new(AluOp::Min, hi)),
                        )?;
                    }
                    kb.dma(dst, &out)?;
                }
            }
        }
        for pool in [Some(t.weights), Some(t.bands), Some(t.psum), Some(t.out), t.res].into_iter().flatten() {
            allocs.keep_pool(pool);
        }
    }
    allocs.free(kb)?;
    kb.core(home)?;
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
