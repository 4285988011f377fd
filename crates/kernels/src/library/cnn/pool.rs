//! Max and average pooling over NCHW planes.

use std::ops::Range;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Ap, Dim, Engine, Space, TensorKind};

use super::conv::load_band;
use super::{kernel_err, list_opt, with_held, Window2d};
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::insts::Stage;
use crate::library::elementwise::common::{bound, check_emit, chunks, input, output, sig, split};
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::view::View;

/// `y = max` or `mean` of `x` over a sliding window: shape `N,C,H,W`.
///
/// Tiling: the `N·C` planes go on the partitions, 128 per block; output
/// positions are cut into blocks of `R` rows × `Q` columns whose input band
/// fits a [128, ≤ 12K] f32 tile. The band is loaded once (the padding filled
/// with −∞ for max, 0 for average) and one Vector `tensor_reduce` over a
/// four-axis view of it — output rows, output columns, kernel rows, kernel
/// columns, with the strides and dilation in the access pattern — computes
/// the whole block. Average pooling then scales by 1/(KH·KW) or, where a
/// window reaches the padding and `count_include_pad` is false (or reaches
/// past the padding in ceil mode), divides by a count reduced the same way
/// from a band of ones. Blocks are split over the cores.
pub struct Pool2d;

const NAME: &str = "pool2d";

const OPTIONS: &[(&str, &str)] = &[
    ("kind", "max (default) or avg"),
    ("kernel", "kh,kw window (default 2,2)"),
    ("stride", "sh,sw (default 1,1)"),
    ("pad", "top,left,bottom,right padding (default 0,0,0,0)"),
    ("dilation", "dh,dw (default 1,1)"),
    ("ceil_mode", "round the output size up (default false)"),
    ("count_include_pad", "average: count padded positions in the divisor (default false)"),
];

/// f32 elements per partition of one band buffer.
const BAND_ELEMS: usize = 12 * 1024;
/// Output positions per block.
const OUT_ELEMS: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq)]
struct PoolArgs {
    max: bool,
    window: Window2d,
    include_pad: bool,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

fn parse(args: &KernelArgs) -> Result<PoolArgs, BuildError> {
    let [n, c, h, w] = args.dims::<4>(NAME, "N,C,H,W")?;
    let max = match args.string("kind", "max") {
        "max" => true,
        "avg" => false,
        v => return Err(kernel_err(NAME, format!("option `kind={v}`: expected max or avg"))),
    };
    let window = Window2d::parse(NAME, args, list_opt(NAME, args, "kernel", [2, 2])?)?;
    let ceil = args.flag(NAME, "ceil_mode", false)?;
    let (Some(oh), Some(ow)) = (window.out_len(0, h, ceil), window.out_len(1, w, ceil)) else {
        return Err(kernel_err(NAME, format!("a {:?} window does not fit the {h}x{w} input", window.kernel)));
    };
    if window.pads[0] >= window.span(0) || window.pads[1] >= window.span(1) {
        return Err(kernel_err(NAME, format!("padding {:?} must be smaller than the window", window.pads)));
    }
    let include_pad = args.flag(NAME, "count_include_pad", false)?;
    Ok(PoolArgs { max, window, include_pad, n, c, h, w, oh, ow })
}

/// Output rows and columns per block.
fn block_dims(a: &PoolArgs) -> (usize, usize) {
    let fits = |r: usize, q: usize| r * q <= OUT_ELEMS && a.window.band(&(0..r), &(0..q)).elements() <= BAND_ELEMS;
    let mut q = a.ow;
    while q > 1 && !fits(1, q) {
        q = q.div_ceil(2);
    }
    let mut r = a.oh;
    while r > 1 && !fits(r, q) {
        r = r.div_ceil(2);
    }
    (r, q)
}

/// The window view of a `[p, bh, bw]` band for `rows × cols` outputs.
fn windows(band: &View, a: &PoolArgs, bw: usize, rows: usize, cols: usize) -> Result<Ap, BuildError> {
    let base = band.ap()?;
    let w = &a.window;
    let dim = |stride: usize, size: usize| Dim { stride: stride as i64, size: size as u32 };
    let dims = [
        dim(w.stride[0] * bw, rows),
        dim(w.stride[1], cols),
        dim(w.dilation[0] * bw, w.kernel[0]),
        dim(w.dilation[1], w.kernel[1]),
    ];
    Ok(Ap::new(Space::Sbuf, base.start_partition, base.partitions, 0, base.offset, &dims, DType::F32))
}

fn emit(kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
    check_emit(&Pool2d, kb, args, io)?;
    let a = parse(args)?;
    let p = kb.chip().core.sbuf.partitions as usize;
    let (x, y) = (bound(NAME, io, "x")?, bound(NAME, io, "y")?);
    let planes = a.n * a.c;
    let x3 = x.view().reshape(&[planes, a.h, a.w]);
    let y3 = y.view().reshape(&[planes, a.oh, a.ow]);
    let (r, q) = block_dims(&a);
    let mut items: Vec<(Range<usize>, Range<usize>, Range<usize>)> = Vec::new();
    for pl in chunks(planes, p) {
        for rows in chunks(a.oh, r) {
            for cols in chunks(a.ow, q) {
                items.push((pl.clone(), rows.clone(), cols));
            }
        }
    }
    let band_max = a.window.band(&(0..r), &(0..q)).elements();
    let taps = (a.window.kernel[0] * a.window.kernel[1]) as f32;
    with_held(kb, |kb, held| {
        for (core, range) in split(items.len(), args.cores as usize, 1).into_iter().enumerate() {
            kb.core(core as u16)?;
            let bands = held.pool(kb, Space::Sbuf, &[p, band_max], DType::F32, 3)?;
            let outs = held.pool(kb, Space::Sbuf, &[p, r * q], DType::F32, 3)?;
            let counts =
                if a.max { None } else { Some(held.pool(kb, Space::Sbuf, &[p, band_max + r * q], DType::F32, 2)?) };
            for (pl, rows, cols) in &items[range] {
                let band = a.window.band(rows, cols);
                let (bh, bw) = (band.rows.1, band.cols.1);
                let np = pl.len();
                let v = held.next(bands)?.part(0..np).cols(0..bh * bw).reshape_free(&[bh, bw]);
                let fill = if a.max { f64::NEG_INFINITY } else { 0.0 };
                load_band(kb, &v, &x3.slice(0, pl.clone()), &band, (a.h, a.w), fill)?;
                let npos = rows.len() * cols.len();
                let out = held.next(outs)?.part(0..np).cols(0..npos);
                let op = if a.max { AluOp::Max } else { AluOp::Add };
                kb.tensor_reduce(Engine::Vector, op, &out, windows(&v, &a, bw, rows.len(), cols.len())?, 2, false)?;
                if let Some(pool) = counts {
                    let (cr, cc) =
                        if a.include_pad { band.padded(a.h, a.w, &a.window.pads) } else { band.inside(a.h, a.w) };
                    if cr.len() == bh && cc.len() == bw {
                        kb.tensor_scalar(Engine::Vector, &out, &out, Stage::new(AluOp::Mul, 1.0 / taps), None)?;
                    } else {
                        let t = held.next(pool)?.part(0..np);
                        let ones = t.cols(0..bh * bw).reshape_free(&[bh, bw]);
                        let cnt = t.cols(band_max..band_max + npos);
                        kb.memset(Engine::GpSimd, &ones, 0.0)?;
                        if !cr.is_empty() && !cc.is_empty() {
                            kb.memset(Engine::GpSimd, ones.slice(1, cr).slice(2, cc), 1.0)?;
                        }
                        kb.tensor_reduce(
                            Engine::Vector,
                            AluOp::Add,
                            &cnt,
                            windows(&ones, &a, bw, rows.len(), cols.len())?,
                            2,
                            false,
                        )?;
                        kb.tensor_scalar(Engine::Vector, &cnt, &cnt, Stage::new(AluOp::Max, 1.0), None)?;
                        kb.tensor_tensor(Engine::Vector, AluOp::Div, &out, &out, &cnt)?;
                    }
                }
                kb.dma(y3.slice(0, pl.clone()).slice(1, rows.clone()).slice(2, cols.clone()), &out)?;
            }
        }
        Ok(())
    })?;
    let outputs = (planes * a.oh * a.ow) as u64;
    let es = args.dtype.size() as u64;
    Ok(Cost { flops: outputs * taps as u64, bytes_hbm: ((planes * a.h * a.w) as u64 + outputs) * es, peak_dtype: None })
}

impl Kernel for Pool2d {
    fn name(&self) -> &'static str {
        NAME
    }
    fn family(&self) -> &'static str {
        "cnn"
    }
    fn summary(&self) -> &'static str {
        "y = max or mean of x over a sliding 2-D window, NCHW (input x; output y [N,C,OH,OW])"
    }
    fn shape_help(&self) -> &'static str {
        "N,C,H,W of x"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1, 64, 112, 112]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        let a = parse(args)?;
        Ok(vec![
            sig("x", TensorKind::Input, &[a.n, a.c, a.h, a.w], args.dtype),
            sig("y", TensorKind::Output, &[a.n, a.c, a.oh, a.ow], args.dtype),
        ])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        emit(kb, args, io)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let a = parse(args)?;
        let x = input(NAME, inputs, "x")?;
        let w = &a.window;
        let mut y = Vec::with_capacity(a.n * a.c * a.oh * a.ow);
        for plane in x.chunks(a.h * a.w) {
            for oy in 0..a.oh {
                for ox in 0..a.ow {
                    let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
                    for i in 0..w.kernel[0] {
                        let iy = (oy * w.stride[0] + i * w.dilation[0]) as isize - w.pads[0] as isize;
                        for j in 0..w.kernel[1] {
                            let ix = (ox * w.stride[1] + j * w.dilation[1]) as isize - w.pads[1] as isize;
                            let inside = iy >= 0 && iy < a.h as isize && ix >= 0 && ix < a.w as isize;
                            let padded = iy >= -(w.pads[0] as isize)
                                && iy < (a.h + w.pads[2]) as isize
                                && ix >= -(w.pads[1] as isize)
                                && ix < (a.w + w.pads[3]) as isize;
                            if inside {
                                let v = plane[iy as usize * a.w + ix as usize];
                                best = best.max(v);
                                sum += v;
                            }
                            if inside || (a.include_pad && padded) {
                                count += 1;
                            }
                        }
                    }
                    y.push(if a.max { best } else { sum / count.max(1) as f64 });
                }
            }
        }
        Ok(output("y", vec![a.n, a.c, a.oh, a.ow], y))
    }
}
