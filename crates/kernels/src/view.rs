//! Views: strided windows onto HBM tensors and on-chip tiles that lower to
//! access patterns ([`Ap`]) without copying anything.
//!
//! A view is a logical shape with an element stride per axis. Axis 0 is the
//! partition axis: for SBUF/PSUM it walks partitions (always with step 1,
//! HW-ISA-AP-PART: no partition striding); for HBM it becomes the access
//! pattern's outer `partitions × partition_stride` axis. The other axes become
//! the free dimensions.
//!
//! Errors do not interrupt a chain of view calls: the first failing call
//! records its error in the view, later calls pass it on, and the instruction
//! that uses the view reports it with the operand's name. So
//! `tile.part(0..k).cols(0..n)` needs no `?` and never panics.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use trainyard_arch::DType;
use trainyard_isa::{Ap, Dim, Space, MAX_FREE_DIMS};

use crate::error::BuildError;

/// A strided window onto an HBM tensor or an on-chip tile.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    space: Space,
    core: Option<u16>,
    /// Serial number of the tile allocation (SBUF/PSUM tiles only).
    tile: Option<u64>,
    label: Arc<str>,
    /// First partition (SBUF/PSUM).
    part0: u32,
    /// Byte address of element offset 0: HBM address or byte within the partition.
    base: u64,
    /// Element offset of the view's first element from `base` (never negative).
    offset: i64,
    shape: Vec<usize>,
    /// Element strides; entry 0 is unused (0) for SBUF/PSUM.
    strides: Vec<i64>,
    dtype: DType,
    err: Option<Box<BuildError>>,
}

/// Anything an instruction accepts as a memory operand.
pub trait AsAp {
    /// The access pattern, or the error recorded while the view was built.
    fn to_ap(&self) -> Result<Ap, BuildError>;

    /// The core whose SBUF/PSUM holds the operand (`None` for HBM and raw patterns).
    fn home_core(&self) -> Option<u16> {
        None
    }

    /// Serial number of the tile allocation the operand views (`None` for HBM
    /// and raw patterns); the builder refuses views of freed tiles.
    fn tile_serial(&self) -> Option<u64> {
        None
    }

    /// A name for messages.
    fn label(&self) -> String {
        String::from("operand")
    }
}

impl AsAp for View {
    fn to_ap(&self) -> Result<Ap, BuildError> {
        self.ap()
    }
    fn home_core(&self) -> Option<u16> {
        self.core
    }
    fn tile_serial(&self) -> Option<u64> {
        self.tile
    }
    fn label(&self) -> String {
        self.label.to_string()
    }
}

impl AsAp for Ap {
    fn to_ap(&self) -> Result<Ap, BuildError> {
        Ok(*self)
    }
}

impl<T: AsAp + ?Sized> AsAp for &T {
    fn to_ap(&self) -> Result<Ap, BuildError> {
        (**self).to_ap()
    }
    fn home_core(&self) -> Option<u16> {
        (**self).home_core()
    }
    fn tile_serial(&self) -> Option<u64> {
        (**self).tile_serial()
    }
    fn label(&self) -> String {
        (**self).label()
    }
}

impl From<Ap> for View {
    /// A view of a raw access pattern (no core: the builder assumes the current one).
    fn from(ap: Ap) -> View {
        let mut shape = vec![ap.partitions as usize];
        let mut strides = vec![if ap.space == Space::Hbm { ap.partition_stride } else { 0 }];
        for d in ap.free_dims() {
            shape.push(d.size as usize);
            strides.push(d.stride);
        }
        View {
            space: ap.space,
            core: None,
            tile: None,
            label: Arc::from(format!("{}", ap.space)),
            part0: if ap.space == Space::Hbm { 0 } else { ap.start_partition },
            base: ap.offset,
            offset: 0,
            shape,
            strides,
            dtype: ap.dtype,
            err: None,
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?} {}", self.label, self.shape, self.dtype.name())
    }
}

fn mul(a: i64, b: i64) -> Result<i64, String> {
    a.checked_mul(b).ok_or_else(|| "address arithmetic overflows".to_string())
}

fn add(a: i64, b: i64) -> Result<i64, String> {
    a.checked_add(b).ok_or_else(|| "address arithmetic overflows".to_string())
}

fn row_major_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![0i64; shape.len()];
    let mut s = 1i64;
    for (st, &n) in strides.iter_mut().zip(shape).rev() {
        *st = s;
        s = s.saturating_mul(n as i64);
    }
    strides
}

impl View {
    /// The whole of a row-major HBM tensor at byte address `base`.
    pub(crate) fn hbm(label: &str, base: u64, shape: &[usize], dtype: DType) -> View {
        View {
            space: Space::Hbm,
            core: None,
            tile: None,
            label: Arc::from(label),
            part0: 0,
            base,
            offset: 0,
            shape: shape.to_vec(),
            strides: row_major_strides(shape),
            dtype,
            err: None,
        }
    }

    /// The whole of an on-chip tile `[partitions, free...]` at byte `base` of each partition.
    pub(crate) fn sram(
        space: Space,
        core: u16,
        serial: u64,
        label: &str,
        base: u64,
        shape: &[usize],
        dtype: DType,
    ) -> View {
        let mut strides = row_major_strides(shape);
        if let Some(s) = strides.first_mut() {
            *s = 0;
        }
        View {
            space,
            core: Some(core),
            tile: Some(serial),
            label: Arc::from(label),
            part0: 0,
            base,
            offset: 0,
            shape: shape.to_vec(),
            strides,
            dtype,
            err: None,
        }
    }

    /// Logical shape; axis 0 is the partition axis (rows for HBM).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides per axis (entry 0 is 0 for SBUF/PSUM, which step by partition).
    pub fn strides(&self) -> &[i64] {
        &self.strides
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Memory space.
    pub fn space(&self) -> Space {
        self.space
    }

    /// Core holding the tile (`None` for HBM).
    pub fn core(&self) -> Option<u16> {
        self.core
    }

    /// First partition (SBUF/PSUM; 0 for HBM).
    pub fn start_partition(&self) -> u32 {
        self.part0
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |acc, &n| acc.saturating_mul(n as u64))
    }

    /// The error recorded by a failed view operation, if any.
    pub fn error(&self) -> Option<&BuildError> {
        self.err.as_deref()
    }

    /// Applies `f` to a copy of this view; on failure the copy carries an error
    /// naming the view expression `what()`.
    fn derive(&self, what: impl FnOnce() -> String, f: impl FnOnce(&mut View) -> Result<(), String>) -> View {
        let mut v = self.clone();
        if v.err.is_none() {
            if let Err(message) = f(&mut v) {
                v.err = Some(Box::new(BuildError::View { view: format!("{}.{}", self.label, what()), message }));
            }
        }
        v
    }

    fn check_axis(&self, axis: usize) -> Result<(), String> {
        if axis < self.shape.len() {
            Ok(())
        } else {
            Err(format!("axis {axis} out of range for shape {:?}", self.shape))
        }
    }

    /// Elements `range` of `axis`, every `step`-th one.
    pub fn slice_step(&self, axis: usize, range: Range<usize>, step: usize) -> View {
        self.slice_as(|| format!("slice_step({axis}, {range:?}, {step})"), axis, range.clone(), step)
    }

    fn slice_as(&self, what: impl FnOnce() -> String, axis: usize, range: Range<usize>, step: usize) -> View {
        self.derive(what, |v| {
            v.check_axis(axis)?;
            let n = v.shape[axis];
            if range.start > range.end || range.end > n {
                return Err(format!("range {range:?} out of 0..{n} on axis {axis}"));
            }
            if step == 0 {
                return Err("step must be at least 1".into());
            }
            let len = (range.end - range.start).div_ceil(step);
            if axis == 0 && v.space.is_sram() {
                if step != 1 {
                    return Err("partitions cannot be strided (HW-ISA-AP-PART)".into());
                }
                v.part0 += range.start as u32;
            } else {
                v.offset = add(v.offset, mul(range.start as i64, v.strides[axis])?)?;
                // A single element needs no stride; a longer run stays inside the old extent.
                if len > 1 {
                    v.strides[axis] = mul(v.strides[axis], step as i64)?;
                }
            }
            v.shape[axis] = len;
            Ok(())
        })
    }

    /// Elements `range` of `axis`.
    pub fn slice(&self, axis: usize, range: Range<usize>) -> View {
        self.slice_as(|| format!("slice({axis}, {range:?})"), axis, range.clone(), 1)
    }

    /// Rows `range` (axis 0): partitions of a tile, outer rows of an HBM tensor.
    pub fn rows(&self, range: Range<usize>) -> View {
        self.slice_as(|| format!("rows({range:?})"), 0, range.clone(), 1)
    }

    /// Partitions `range` (axis 0); same as [`View::rows`].
    pub fn part(&self, range: Range<usize>) -> View {
        self.slice_as(|| format!("part({range:?})"), 0, range.clone(), 1)
    }

    /// Elements `range` of the last axis (needs at least two axes).
    pub fn cols(&self, range: Range<usize>) -> View {
        if self.shape.len() < 2 {
            return self
                .derive(|| format!("cols({range:?})"), |v| Err(format!("shape {:?} has no column axis", v.shape)));
        }
        self.slice_as(|| format!("cols({range:?})"), self.shape.len() - 1, range.clone(), 1)
    }

    /// Elements `range` of free axis `free_axis` (axis `free_axis + 1`).
    pub fn slice_free(&self, free_axis: usize, range: Range<usize>) -> View {
        self.slice_as(|| format!("slice_free({free_axis}, {range:?})"), free_axis + 1, range.clone(), 1)
    }

    /// Index `i` of `axis`, dropping the axis (not axis 0 of a tile).
    pub fn at(&self, axis: usize, i: usize) -> View {
        self.derive(
            || format!("at({axis}, {i})"),
            |v| {
                v.check_axis(axis)?;
                if axis == 0 && v.space.is_sram() {
                    return Err("the partition axis of a tile cannot be dropped; use part(i..i + 1)".into());
                }
                if i >= v.shape[axis] {
                    return Err(format!("index {i} out of 0..{} on axis {axis}", v.shape[axis]));
                }
                v.offset = add(v.offset, mul(i as i64, v.strides[axis])?)?;
                v.shape.remove(axis);
                v.strides.remove(axis);
                Ok(())
            },
        )
    }

    /// The axes in the order `perm` (`perm[i]` = old axis of new axis `i`). A
    /// tile keeps its partition axis first.
    pub fn permute(&self, perm: &[usize]) -> View {
        self.derive(
            || format!("permute({perm:?})"),
            |v| {
                let n = v.shape.len();
                let mut seen = vec![false; n];
                if perm.len() != n || perm.iter().any(|&p| p >= n || std::mem::replace(&mut seen[p], true)) {
                    return Err(format!("{perm:?} is not a permutation of {n} axes"));
                }
                if v.space.is_sram() && perm.first() != Some(&0) {
                    return Err("the partition axis of a tile stays first; use a transpose instruction".into());
                }
                v.shape = perm.iter().map(|&p| v.shape[p]).collect();
                v.strides = perm.iter().map(|&p| v.strides[p]).collect();
                Ok(())
            },
        )
    }

    /// The transpose of a 2-D HBM view (swapped strides, no copy).
    pub fn transposed(&self) -> View {
        self.derive(
            || "transposed()".into(),
            |v| {
                if v.shape.len() != 2 {
                    return Err(format!("shape {:?} is not 2-D", v.shape));
                }
                if v.space.is_sram() {
                    return Err("a tile's partition axis cannot be swapped; use a transpose instruction".into());
                }
                v.shape.swap(0, 1);
                v.strides.swap(0, 1);
                Ok(())
            },
        )
    }

    /// Reshapes every axis (HBM) or the whole shape with axis 0 unchanged
    /// (tiles); needs strides compatible with the new shape.
    pub fn reshape(&self, shape: &[usize]) -> View {
        self.derive(
            || format!("reshape({shape:?})"),
            |v| {
                if v.space.is_sram() {
                    if shape.first() != Some(&v.shape[0]) {
                        return Err(format!("a tile keeps its {} partitions as axis 0", v.shape[0]));
                    }
                    let strides = reshape_strides(&v.shape[1..], &v.strides[1..], &shape[1..])?;
                    v.strides = std::iter::once(0).chain(strides).collect();
                } else {
                    v.strides = reshape_strides(&v.shape, &v.strides, shape)?;
                }
                v.shape = shape.to_vec();
                Ok(())
            },
        )
    }

    /// Reshapes the free axes (all but axis 0).
    pub fn reshape_free(&self, free: &[usize]) -> View {
        self.derive(
            || format!("reshape_free({free:?})"),
            |v| {
                let Some(&p) = v.shape.first() else { return Err("a 0-D view has no free axes".into()) };
                let strides = reshape_strides(&v.shape[1..], &v.strides[1..], free)?;
                v.strides.truncate(1);
                v.strides.extend(strides);
                v.shape = std::iter::once(p).chain(free.iter().copied()).collect();
                Ok(())
            },
        )
    }

    /// Reinterprets the bytes as `dtype`; the last axis must be contiguous and
    /// is rescaled (`[P, 8] f32` → `[P, 16] bf16`).
    pub fn bitcast(&self, dtype: DType) -> View {
        self.derive(
            || format!("bitcast({})", dtype.name()),
            |v| {
                let (old, new) = (v.dtype.size() as i64, dtype.size() as i64);
                if old == new {
                    v.dtype = dtype;
                    return Ok(());
                }
                let first_free = usize::from(v.space.is_sram());
                let last = v.shape.len().checked_sub(1).filter(|&l| l >= first_free);
                let Some(last) = last else { return Err("no free axis to rescale".into()) };
                if v.strides[last] != 1 && v.shape[last] > 1 {
                    return Err("the last axis must be contiguous".into());
                }
                let last_bytes = mul(v.shape[last] as i64, old)?;
                if last_bytes % new != 0 || mul(v.offset, old)? % new != 0 {
                    return Err(format!("{} bytes per row do not split into {}-byte elements", last_bytes, new));
                }
                for ax in first_free..last {
                    if mul(v.strides[ax], old)? % new != 0 {
                        return Err(format!("axis {ax} stride is not a multiple of {new} bytes"));
                    }
                    v.strides[ax] = mul(v.strides[ax], old)? / new;
                }
                v.shape[last] = (last_bytes / new) as usize;
                v.strides[last] = 1;
                v.offset = mul(v.offset, old)? / new;
                v.dtype = dtype;
                Ok(())
            },
        )
    }

    /// Repeats a size-1 axis `n` times with stride 0 (not the partition axis of a tile).
    pub fn broadcast(&self, axis: usize, n: usize) -> View {
        self.derive(
            || format!("broadcast({axis}, {n})"),
            |v| {
                v.check_axis(axis)?;
                if axis == 0 && v.space.is_sram() {
                    return Err("partitions cannot be broadcast by a view; use partition_broadcast".into());
                }
                if v.shape[axis] != 1 {
                    return Err(format!("axis {axis} has size {}, not 1", v.shape[axis]));
                }
                v.shape[axis] = n;
                v.strides[axis] = 0;
                Ok(())
            },
        )
    }

    /// Repeats the size-1 last axis `n` times (`[P, 1]` → `[P, n]`, stride 0).
    pub fn broadcast_free(&self, n: usize) -> View {
        self.broadcast(self.shape.len().saturating_sub(1), n)
    }

    /// The access pattern of this view, merging contiguous free axes when
    /// there are more than four.
    pub fn ap(&self) -> Result<Ap, BuildError> {
        if let Some(e) = &self.err {
            return Err((**e).clone());
        }
        let bad = |message: String| BuildError::View { view: self.to_string(), message };
        let (parts, pstride, free) = match (self.space, self.shape.len()) {
            (Space::Hbm, 0) => (1, 0, 0..0),
            (Space::Hbm, 1) => (1, 0, 0..1),
            (_, 0) => return Err(bad("a tile view needs a partition axis".into())),
            (Space::Hbm, n) => (self.shape[0], self.strides[0], 1..n),
            (_, n) => (self.shape[0], 0, 1..n),
        };
        let parts = u32::try_from(parts).map_err(|_| bad(format!("{parts} rows do not fit an access pattern")))?;
        let mut dims = Vec::with_capacity(free.len());
        for ax in free {
            let size = u32::try_from(self.shape[ax])
                .map_err(|_| bad(format!("axis {ax} of size {} does not fit an access pattern", self.shape[ax])))?;
            dims.push(Dim { stride: self.strides[ax], size });
        }
        let dims =
            compact_dims(dims).ok_or_else(|| bad(format!("more than {MAX_FREE_DIMS} free axes after merging")))?;
        let offset = mul(self.offset, self.dtype.size() as i64)
            .and_then(|o| add(o, self.base as i64))
            .and_then(|o| u64::try_from(o).map_err(|_| "negative address".into()))
            .map_err(bad)?;
        Ok(Ap::new(self.space, self.part0, parts, pstride, offset, &dims, self.dtype))
    }
}

/// Brings a free-dim list down to at most [`MAX_FREE_DIMS`]: drops size-1
/// dims, then merges an outer dim into its inner neighbour where contiguous.
/// Only when needed, so patterns keep the author's shape where they can.
fn compact_dims(mut dims: Vec<Dim>) -> Option<Vec<Dim>> {
    if dims.len() <= MAX_FREE_DIMS {
        return Some(dims);
    }
    if dims.iter().any(|d| d.size == 0) {
        return Some(vec![Dim { stride: 1, size: 0 }]);
    }
    dims.retain(|d| d.size != 1);
    if dims.is_empty() {
        return Some(vec![Dim { stride: 1, size: 1 }]);
    }
    let mut i = dims.len() - 1;
    while dims.len() > MAX_FREE_DIMS && i > 0 {
        let (outer, inner) = (dims[i - 1], dims[i]);
        if outer.stride == inner.stride * inner.size as i64 {
            let size = (outer.size as u64 * inner.size as u64).try_into().ok()?;
            dims[i - 1] = Dim { stride: inner.stride, size };
            dims.remove(i);
        }
        i -= 1;
    }
    (dims.len() <= MAX_FREE_DIMS).then_some(dims)
}

/// Strides for viewing axes `(shape, strides)` as `new`, or why it is impossible
/// without a copy. Groups of old axes that map onto groups of new axes with the
/// same element count must be contiguous among themselves.
fn reshape_strides(shape: &[usize], strides: &[i64], new: &[usize]) -> Result<Vec<i64>, String> {
    let count = |s: &[usize]| s.iter().try_fold(1u128, |acc, &n| acc.checked_mul(n as u128));
    let (Some(total), Some(new_total)) = (count(shape), count(new)) else {
        return Err("element count overflows".into());
    };
    if total != new_total {
        return Err(format!("{shape:?} has {total} elements, {new:?} has {new_total}"));
    }
    if total == 0 {
        return Ok(row_major_strides(new));
    }
    let old: Vec<(usize, i64)> = shape.iter().copied().zip(strides.iter().copied()).filter(|&(n, _)| n != 1).collect();
    let mut out = vec![0i64; new.len()];
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        while j < new.len() && new[j] == 1 {
            j += 1;
        }
        if i == old.len() && j == new.len() {
            return Ok(out);
        }
        let (Some(&(first_old, _)), Some(&first_new)) = (old.get(i), new.get(j)) else {
            return Err(format!("cannot reshape {shape:?} to {new:?}"));
        };
        let (i0, j0) = (i, j);
        let (mut po, mut pn) = (first_old as u128, first_new as u128);
        while po != pn {
            if po < pn {
                i += 1;
                po *= old.get(i).ok_or("element counts disagree")?.0 as u128;
            } else {
                j += 1;
                pn *= *new.get(j).ok_or("element counts disagree")? as u128;
            }
        }
        for k in i0..i {
            if old[k].1 != mul(old[k + 1].1, old[k + 1].0 as i64)? {
                return Err(format!("axes {shape:?} with strides {strides:?} are not contiguous enough for {new:?}"));
            }
        }
        let mut s = old[i].1;
        for jj in (j0..=j).rev() {
            out[jj] = s;
            s = s.saturating_mul(new[jj] as i64);
        }
        i += 1;
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every (partition, byte address) of an access pattern in its element order.
    fn ap_addresses(ap: &Ap) -> Vec<(u32, i64)> {
        let es = ap.dtype.size() as i64;
        let mut out = Vec::new();
        for p in 0..ap.partitions {
            for o in ap.free_offsets() {
                match ap.space {
                    Space::Hbm => out.push((0, ap.offset as i64 + (p as i64 * ap.partition_stride + o) * es)),
                    _ => out.push((ap.start_partition + p, ap.offset as i64 + o * es)),
                }
            }
        }
        out
    }

    /// Row-major enumeration of a logical shape.
    fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
        let mut out = vec![vec![]];
        for &n in shape {
            out = out.into_iter().flat_map(|ix| (0..n).map(move |i| [ix.clone(), vec![i]].concat())).collect();
        }
        out
    }

    #[test]
    fn hbm_rows_cols_is_strided_rows() {
        let v = View::hbm("a", 1024, &[64, 100], DType::Bf16);
        let ap = v.rows(8..40).cols(10..60).ap().unwrap();
        assert_eq!((ap.partitions, ap.partition_stride, ap.offset), (32, 100, 1024 + (8 * 100 + 10) * 2));
        assert_eq!(ap.free_dims(), &[Dim { stride: 1, size: 50 }]);
        let t = v.transposed().ap().unwrap();
        assert_eq!((t.partitions, t.partition_stride), (100, 1));
        assert_eq!(t.free_dims(), &[Dim { stride: 100, size: 64 }]);
    }

    #[test]
    fn tile_views() {
        let t = View::sram(Space::Sbuf, 0, 0, "t", 256, &[128, 4, 32], DType::F32);
        let ap = t.part(64..96).slice_free(1, 8..16).ap().unwrap();
        assert_eq!((ap.start_partition, ap.partitions, ap.offset), (64, 32, 256 + 8 * 4));
        assert_eq!(ap.free_dims(), &[Dim { stride: 32, size: 4 }, Dim { stride: 1, size: 8 }]);
        let flat = t.reshape_free(&[128]).ap().unwrap();
        assert_eq!(flat.free_dims(), &[Dim { stride: 1, size: 128 }]);
        let bc = t.part(0..4).slice_free(1, 0..1).reshape_free(&[4, 1]).broadcast_free(7).ap().unwrap();
        assert_eq!(bc.free_dims(), &[Dim { stride: 32, size: 4 }, Dim { stride: 0, size: 7 }]);
        let half = t.bitcast(DType::Bf16);
        assert_eq!(half.shape(), &[128, 4, 64]);
        assert_eq!(half.ap().unwrap().free_dims(), &[Dim { stride: 64, size: 4 }, Dim { stride: 1, size: 64 }]);
    }

    #[test]
    fn view_errors_are_deferred_and_named() {
        let t = View::sram(Space::Sbuf, 0, 1, "sbuf#1", 0, &[128, 512], DType::F32);
        let bad = t.cols(0..600).part(0..3);
        let err = bad.ap().unwrap_err().to_string();
        assert!(err.contains("sbuf#1.cols(0..600)") && err.contains("0..512"), "{err}");
        assert!(t.transposed().ap().is_err());
        assert!(t.slice_step(0, 0..8, 2).ap().is_err());
        assert!(t.reshape_free(&[3, 100]).ap().is_err());
        assert!(t.cols(0..3).bitcast(DType::Bf16).ap().is_ok());
        assert!(t.slice_step(1, 0..8, 2).bitcast(DType::Bf16).ap().is_err());
        assert!(View::hbm("h", 0, &[4, 4], DType::F32).permute(&[1, 1]).ap().is_err());
    }

    #[test]
    fn more_than_four_free_axes_merge_when_contiguous() {
        let v = View::hbm("h", 0, &[2, 2, 2, 2, 2, 3], DType::F32);
        let ap = v.ap().unwrap();
        assert!(ap.ndims as usize <= MAX_FREE_DIMS);
        let want: Vec<(u32, i64)> = (0..96).map(|i| (0, i * 4)).collect();
        assert_eq!(ap_addresses(&ap), want);
        // Every other element on every axis cannot merge.
        let strided = View::hbm("h", 0, &[4, 4, 4, 4, 4, 4], DType::F32);
        let strided = (0..6).fold(strided, |v, ax| v.slice_step(ax, 0..4, 2));
        assert!(strided.ap().is_err());
    }

    #[test]
    fn ap_round_trips_through_view() {
        let ap =
            Ap::new(Space::Hbm, 0, 3, 40, 128, &[Dim { stride: 2, size: 5 }, Dim { stride: 1, size: 2 }], DType::I16);
        assert_eq!(View::from(ap).ap().unwrap(), ap);
        let ap = Ap::sbuf(32, 16, 64, &[4, 8], DType::U8);
        assert_eq!(View::from(ap).ap().unwrap(), ap);
    }

    proptest! {
        /// Slicing (with steps) and permuting an HBM tensor: the access pattern
        /// visits exactly the row-major addresses of the logical indices.
        #[test]
        fn hbm_view_addresses(
            dims in proptest::collection::vec(1usize..5, 3),
            cuts in proptest::collection::vec((0usize..4, 0usize..4, 1usize..3), 3),
            perm_pick in 0usize..6, base in 0u64..4
        ) {
            let dtype = DType::Bf16;
            let base = base * 64;
            let mut v = View::hbm("x", base, &dims, dtype);
            let mut lo = [0usize; 3];
            let mut step = [1usize; 3];
            for (ax, &(a, b, s)) in cuts.iter().enumerate() {
                let (a, b) = (a.min(dims[ax] - 1), (a.min(dims[ax] - 1) + 1 + b).min(dims[ax]));
                v = v.slice_step(ax, a..b, s);
                lo[ax] = a;
                step[ax] = s;
            }
            let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
            let perm = perms[perm_pick];
            v = v.permute(&perm);
            let ap = v.ap().unwrap();
            let want: Vec<(u32, i64)> = indices(v.shape()).iter().map(|ix| {
                let mut orig = [0usize; 3];
                for (new_ax, &old_ax) in perm.iter().enumerate() {
                    orig[old_ax] = lo[old_ax] + ix[new_ax] * step[old_ax];
                }
                let flat = (orig[0] * dims[1] + orig[1]) * dims[2] + orig[2];
                (0, base as i64 + flat as i64 * 2)
            }).collect();
            prop_assert_eq!(ap_addresses(&ap), want);
        }

        /// Partition and free slices of a tile, then a free reshape: addresses
        /// are (partition, tile base + row-major free offset).
        #[test]
        fn tile_view_addresses(
            p in 1usize..9, a in 1usize..5, b in 1usize..7,
            p0 in 0usize..8, pn in 1usize..8, a0 in 0usize..4, b0 in 0usize..6, bs in 1usize..3, flatten: bool
        ) {
            let t = View::sram(Space::Psum, 1, 0, "t", 128, &[p, a, b], DType::F32);
            let p0 = p0.min(p - 1);
            let p1 = (p0 + pn).min(p);
            let a0 = a0.min(a - 1);
            let b0 = b0.min(b - 1);
            let mut v = t.part(p0..p1).slice(1, a0..a).slice_step(2, b0..b, bs);
            let (na, nb) = (v.shape()[1], v.shape()[2]);
            if flatten && nb == 1 {
                v = v.reshape_free(&[na]);
            }
            let ap = v.ap().unwrap();
            let mut want = Vec::new();
            for pp in p0..p1 {
                for i in 0..na {
                    for j in 0..nb {
                        let off = (a0 + i) * b + b0 + j * bs;
                        want.push((pp as u32, 128 + off as i64 * 4));
                    }
                }
            }
            prop_assert_eq!(ap_addresses(&ap), want);
        }

        /// Any chain of view calls, with any arguments, gives a pattern inside
        /// the tensor or tile, or an error; never a panic.
        #[test]
        fn views_never_escape_or_panic(
            sram: bool,
            ops in proptest::collection::vec((0u8..9, 0usize..5, 0usize..12, 0usize..12, prop_oneof![1usize..4, Just(usize::MAX)]), 0..8)
        ) {
            let shape = [6usize, 4, 8];
            let mut v = if sram {
                View::sram(Space::Sbuf, 0, 0, "t", 640, &shape, DType::Bf16)
            } else {
                View::hbm("x", 640, &shape, DType::Bf16)
            };
            for (op, axis, a, b, n) in ops {
                v = match op {
                    0 => v.slice_step(axis, a..b, n),
                    1 => v.at(axis, a),
                    2 => v.permute(&[axis % 3, (axis + 1 + a % 2) % 3, (axis + 2 - a % 2) % 3]),
                    3 => v.transposed(),
                    4 => v.reshape(&[a, b, n]),
                    5 => v.reshape_free(&[a, b.max(1)]),
                    6 => v.bitcast([DType::F32, DType::U8, DType::I16][a % 3]),
                    7 => v.broadcast(axis, n),
                    _ => v.cols(a..b),
                };
            }
            // Bytes per partition of the tile, or of the whole HBM tensor.
            let end = 640 + if sram { 4 * 8 * 2 } else { 6 * 4 * 8 * 2 };
            if let Ok(ap) = v.ap() {
                if ap.elements() <= 1 << 12 {
                    for (p, byte) in ap_addresses(&ap) {
                        prop_assert!(p < 6 && (640..end).contains(&byte), "{p} {byte} {ap:?}");
                    }
                }
            }
        }

        /// A reshape that succeeds keeps the element order and addresses.
        #[test]
        fn reshape_keeps_addresses(d in proptest::collection::vec(1usize..4, 4), split in 0usize..3) {
            let v = View::hbm("x", 0, &d, DType::F32).slice_step(3, 0..d[3], 1);
            let merged: usize = d[split] * d[split + 1];
            let mut new: Vec<usize> = d.clone();
            new.splice(split..split + 2, [merged]);
            let r = v.reshape(&new);
            prop_assert_eq!(ap_addresses(&r.ap().unwrap()), ap_addresses(&v.ap().unwrap()));
        }
    }
}
