//! Kernels of the `cnn` family: the sliding-window operators of convolutional
//! networks over NCHW tensors.
//!
//! * [`Conv2d`] — 2-D convolution (strides, padding, dilation, groups) with a
//!   fused epilogue: bias, residual add, activation, clamp. Each output block
//!   is a sum of shifted-window matmuls accumulating in PSUM, one per kernel
//!   tap and input-channel chunk (what a Trainium compiler emits), with the
//!   weights laid out ahead of time by [`ConvPacking`].
//! * [`Pool2d`] — max and average pooling: one Vector-engine reduction per
//!   block over a four-axis view (rows, columns, kernel rows, kernel columns)
//!   of a padded input band.
//! * [`Lrn`] — local response normalization across channels: the windowed sum
//!   of squares is a matmul with a band matrix built on the device by `iota`.
//!
//! The shared piece is the *band*: the input rows and columns one block of
//! output positions reads, loaded into SBUF with the padding filled in, so
//! the window of every tap is a strided view of the same tile. Every kernel
//! is composable and frees what it allocates.

mod conv;
mod lrn;
mod packing;
mod pool;
#[cfg(test)]
mod tests;

use std::ops::Range;

pub use conv::Conv2d;
pub use lrn::Lrn;
pub use packing::{ConvGeometry, ConvPacking, OutBlock, WeightPart};
pub use pool::Pool2d;

use trainyard_arch::DType;
use trainyard_isa::Space;

use super::{Kernel, KernelArgs};
use crate::builder::{KernelBuilder, Tile, TilePool};
use crate::error::BuildError;
use crate::view::View;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(Conv2d), Box::new(Pool2d), Box::new(Lrn)]
}

fn kernel_err(kernel: &str, message: impl Into<String>) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message: message.into() }
}

/// Every tile and pool a kernel of this family allocates, given back together when
/// the kernel ends — also when it fails half-way, so a builder that goes on after an
/// error finds its SBUF and PSUM as they were.
#[derive(Debug, Default)]
struct Held {
    pools: Vec<TilePool>,
    tiles: Vec<Tile>,
}

impl Held {
    /// A pool of `bufs` tiles on the current core; returns its index for [`Held::next`].
    fn pool(
        &mut self,
        kb: &mut KernelBuilder,
        space: Space,
        shape: &[usize],
        dtype: DType,
        bufs: usize,
    ) -> Result<usize, BuildError> {
        self.pools.push(kb.tile_pool(space, shape, dtype, bufs)?);
        Ok(self.pools.len() - 1)
    }

    /// An SBUF tile on the current core.
    fn tile(&mut self, kb: &mut KernelBuilder, shape: &[usize], dtype: DType) -> Result<View, BuildError> {
        let t = kb.sbuf_tile(shape, dtype)?;
        let v = t.view();
        self.tiles.push(t);
        Ok(v)
    }

    /// The next buffer of pool `i`.
    fn next(&mut self, i: usize) -> Result<View, BuildError> {
        self.pools.get_mut(i).map(TilePool::next).ok_or_else(|| kernel_err("cnn", format!("no pool {i}")))
    }

    fn free(self, kb: &mut KernelBuilder) -> Result<(), BuildError> {
        self.tiles.into_iter().try_for_each(|t| kb.free(t))?;
        self.pools.into_iter().try_for_each(|p| kb.free_pool(p))
    }
}

/// Runs `body` with a [`Held`] whose allocations are freed whatever the outcome, and
/// puts the builder back on its current core.
fn with_held<T>(
    kb: &mut KernelBuilder,
    body: impl FnOnce(&mut KernelBuilder, &mut Held) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let home = kb.current_core();
    let mut held = Held::default();
    let result = body(kb, &mut held);
    let freed = held.free(kb);
    kb.core(home)?;
    let value = result?;
    freed?;
    Ok(value)
}

/// A list option of exactly `N` unsigned integers (`key=a,b`), or `default`.
fn list_opt<const N: usize>(
    kernel: &str,
    args: &KernelArgs,
    key: &str,
    default: [usize; N],
) -> Result<[usize; N], BuildError> {
    let Some(text) = args.options.get(key) else { return Ok(default) };
    let parsed: Result<Vec<usize>, _> = text.split(',').map(|s| s.trim().parse::<usize>()).collect();
    match parsed.ok().and_then(|v| <[usize; N]>::try_from(v).ok()) {
        Some(v) => Ok(v),
        None => {
            Err(kernel_err(kernel, format!("option `{key}={text}`: expected {N} comma-separated unsigned integers")))
        }
    }
}

/// A 2-D sliding window over `[H, W]` planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2d {
    /// Kernel extent (rows, columns).
    pub kernel: [usize; 2],
    /// Step (rows, columns).
    pub stride: [usize; 2],
    /// Dilation (rows, columns).
    pub dilation: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Window2d {
    /// Parses `stride`, `pad` and `dilation` options for a window of `kernel`.
    fn parse(name: &str, args: &KernelArgs, kernel: [usize; 2]) -> Result<Window2d, BuildError> {
        let w = Window2d {
            kernel,
            stride: list_opt(name, args, "stride", [1, 1])?,
            dilation: list_opt(name, args, "dilation", [1, 1])?,
            pads: list_opt(name, args, "pad", [0, 0, 0, 0])?,
        };
        if w.kernel.contains(&0) || w.stride.contains(&0) || w.dilation.contains(&0) {
            return Err(kernel_err(name, format!("kernel {:?}, stride and dilation must be positive", w.kernel)));
        }
        Ok(w)
    }

    /// `args` with this window's `stride`, `dilation` and `pad` options.
    pub fn with_options(&self, args: KernelArgs) -> KernelArgs {
        let [t, l, b, r] = self.pads;
        args.with("stride", &format!("{},{}", self.stride[0], self.stride[1]))
            .with("dilation", &format!("{},{}", self.dilation[0], self.dilation[1]))
            .with("pad", &format!("{t},{l},{b},{r}"))
    }

    /// Rows (axis 0) or columns (axis 1) one window covers, dilation included.
    pub fn span(&self, axis: usize) -> usize {
        self.dilation[axis] * (self.kernel[axis] - 1) + 1
    }

    /// Output length along `axis` for an input of `len` (`ceil`: a last partial
    /// window is kept unless it would start in the end padding), or `None`
    /// when the window does not fit.
    pub fn out_len(&self, axis: usize, len: usize, ceil: bool) -> Option<usize> {
        let (p0, p1, s) = (self.pads[axis], self.pads[axis + 2], self.stride[axis]);
        let padded = len + p0 + p1;
        let span = self.span(axis);
        if padded < span {
            return None;
        }
        let mut out = if ceil { (padded - span).div_ceil(s) + 1 } else { (padded - span) / s + 1 };
        if ceil && (out - 1) * s >= len + p0 {
            out -= 1;
        }
        Some(out)
    }

    /// The input band read by output rows `rows` and columns `cols`.
    fn band(&self, rows: &Range<usize>, cols: &Range<usize>) -> Band {
        let axis = |a: usize, r: &Range<usize>| {
            let start = (r.start * self.stride[a]) as isize - self.pads[a] as isize;
            let len = (r.len() - 1) * self.stride[a] + self.span(a);
            (start, len)
        };
        Band { rows: axis(0, rows), cols: axis(1, cols) }
    }
}

/// Input rows and columns of one block: `(first input index, length)` each;
/// the first index is negative inside the top/left padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Band {
    rows: (isize, usize),
    cols: (isize, usize),
}

impl Band {
    /// Band coordinates whose input index lies in `lo..hi` (input coordinates).
    fn within(axis: (isize, usize), lo: isize, hi: isize) -> Range<usize> {
        let (start, len) = axis;
        let a = (lo - start).clamp(0, len as isize) as usize;
        let b = (hi - start).clamp(0, len as isize) as usize;
        a..b.max(a)
    }

    /// Band rows and columns holding input data of an `[h, w]` plane.
    fn inside(&self, h: usize, w: usize) -> (Range<usize>, Range<usize>) {
        (Band::within(self.rows, 0, h as isize), Band::within(self.cols, 0, w as isize))
    }

    /// Band rows and columns inside the padded plane (data and padding, not
    /// the positions past the end padding that ceil-mode windows reach).
    fn padded(&self, h: usize, w: usize, pads: &[usize; 4]) -> (Range<usize>, Range<usize>) {
        (
            Band::within(self.rows, -(pads[0] as isize), (h + pads[2]) as isize),
            Band::within(self.cols, -(pads[1] as isize), (w + pads[3]) as isize),
        )
    }

    /// Elements of the band.
    fn elements(&self) -> usize {
        self.rows.1 * self.cols.1
    }
}
