use std::fmt;

use serde::{Deserialize, Serialize};
use trainyard_arch::DType;

/// A memory space (HW-ISA-SPACES).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Space {
    /// Device memory, linear, shared by all cores of a chip.
    Hbm,
    /// State buffer: 128 partitions × bytes per partition, per core.
    Sbuf,
    /// Partial-sum buffer: 128 partitions, 8 accumulation banks, per core.
    Psum,
}

impl Space {
    /// Lower-case name used in text forms.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Hbm => "hbm",
            Space::Sbuf => "sbuf",
            Space::Psum => "psum",
        }
    }

    /// True for the 2-D on-chip SRAMs.
    pub const fn is_sram(self) -> bool {
        !matches!(self, Space::Hbm)
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Maximum number of free dimensions of an access pattern (HW-ISA-AP-FREE).
pub const MAX_FREE_DIMS: usize = 4;

/// One free dimension: `size` steps of `stride` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Dim {
    /// Step between consecutive indices, in elements (may be 0 for broadcast or negative).
    pub stride: i64,
    /// Number of indices.
    pub size: u32,
}

/// An access pattern: which elements of which memory an operand covers, in
/// what order, with what dtype.
///
/// Elements are ordered partition-major, then free dimensions outermost first.
/// For SBUF/PSUM, `partitions` consecutive partitions starting at
/// `start_partition` are covered, each at byte `offset` plus the free-dim
/// pattern. For HBM (linear memory) the partition axis is an outer dimension
/// of `partitions` steps of `partition_stride` elements from byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ap {
    /// Memory space.
    pub space: Space,
    /// First partition (SBUF/PSUM); 0 for HBM.
    pub start_partition: u32,
    /// Number of partitions (or outer rows for HBM).
    pub partitions: u32,
    /// HBM only: elements between consecutive outer rows; 0 for SBUF/PSUM.
    pub partition_stride: i64,
    /// Byte offset: within each partition (SBUF/PSUM) or in the chip's HBM.
    pub offset: u64,
    /// Free dimensions, outermost first; only the first `ndims` are used.
    pub dims: [Dim; MAX_FREE_DIMS],
    /// Number of free dimensions in use (1..=4).
    pub ndims: u8,
    /// Element type.
    pub dtype: DType,
}

impl Ap {
    fn with_dims(
        space: Space,
        start_partition: u32,
        partitions: u32,
        partition_stride: i64,
        offset: u64,
        dims: &[Dim],
        dtype: DType,
    ) -> Self {
        let mut d = [Dim::default(); MAX_FREE_DIMS];
        let n = dims.len().clamp(1, MAX_FREE_DIMS);
        if dims.is_empty() {
            d[0] = Dim { stride: 1, size: 1 };
        } else {
            d[..n].copy_from_slice(&dims[..n]);
        }
        Ap { space, start_partition, partitions, partition_stride, offset, dims: d, ndims: n as u8, dtype }
    }

    /// A general access pattern from explicit dims (at most 4 are kept).
    pub fn new(
        space: Space,
        start_partition: u32,
        partitions: u32,
        partition_stride: i64,
        offset: u64,
        dims: &[Dim],
        dtype: DType,
    ) -> Self {
        Self::with_dims(space, start_partition, partitions, partition_stride, offset, dims, dtype)
    }

    /// A contiguous row-major SBUF tile `[partitions, shape...]` at byte `offset`.
    pub fn sbuf(start_partition: u32, partitions: u32, offset: u64, shape: &[u32], dtype: DType) -> Self {
        Self::with_dims(Space::Sbuf, start_partition, partitions, 0, offset, &row_major(shape), dtype)
    }

    /// A contiguous row-major PSUM tile `[partitions, shape...]` at byte `offset`.
    pub fn psum(start_partition: u32, partitions: u32, offset: u64, shape: &[u32], dtype: DType) -> Self {
        Self::with_dims(Space::Psum, start_partition, partitions, 0, offset, &row_major(shape), dtype)
    }

    /// A contiguous row-major HBM region `[rows, shape...]` at byte `offset`.
    pub fn hbm(offset: u64, rows: u32, shape: &[u32], dtype: DType) -> Self {
        let dims = row_major(shape);
        let row: i64 = shape.iter().map(|&s| s as i64).product();
        Self::with_dims(Space::Hbm, 0, rows, row, offset, &dims, dtype)
    }

    /// The free dimensions in use.
    pub fn free_dims(&self) -> &[Dim] {
        // Clamped so a malformed decoded pattern cannot index out of range
        // (validation reports ndims > 4 as an error).
        &self.dims[..(self.ndims as usize).clamp(1, MAX_FREE_DIMS)]
    }

    /// The free shape (sizes of the free dimensions).
    pub fn free_shape(&self) -> Vec<u32> {
        self.free_dims().iter().map(|d| d.size).collect()
    }

    /// Elements per partition.
    pub fn free_size(&self) -> u64 {
        self.free_dims().iter().map(|d| d.size as u64).product()
    }

    /// Total elements.
    pub fn elements(&self) -> u64 {
        self.partitions as u64 * self.free_size()
    }

    /// Total bytes touched (counting repeats).
    pub fn bytes(&self) -> u64 {
        self.elements() * self.dtype.size() as u64
    }

    /// Same pattern with another dtype (offsets unchanged).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The innermost free dimension's stride in bytes.
    pub fn inner_stride_bytes(&self) -> i64 {
        self.free_dims().last().map(|d| d.stride * self.dtype.size() as i64).unwrap_or(0)
    }

    /// True when the innermost dimension is unit-stride (or has one element).
    pub fn inner_contiguous(&self) -> bool {
        self.free_dims().last().map(|d| d.stride == 1 || d.size <= 1).unwrap_or(true)
    }

    /// Relative element offsets (in elements, from `offset`) of one partition's
    /// free pattern, in order.
    pub fn free_offsets(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.free_size() as usize);
        for_each_offset(self.free_dims(), |o| out.push(o));
        out
    }

    /// Byte span `[lo, hi)` touched within one partition (SBUF/PSUM) or in HBM,
    /// including the partition axis for HBM. Returns `None` for an empty pattern.
    pub fn byte_span(&self) -> Option<(i64, i64)> {
        if self.elements() == 0 {
            return None;
        }
        let es = self.dtype.size() as i64;
        let mut lo = 0i64;
        let mut hi = 0i64;
        let mut extend = |stride: i64, size: u32| {
            let reach = stride * (size as i64 - 1);
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        };
        for d in self.free_dims() {
            extend(d.stride, d.size);
        }
        if self.space == Space::Hbm {
            extend(self.partition_stride, self.partitions);
        }
        let base = self.offset as i64;
        Some((base + lo * es, base + (hi + 1) * es))
    }

    /// Number of maximal contiguous byte runs per partition (DMA descriptors for
    /// SBUF/PSUM) or in total (HBM), and the length of the innermost run in bytes.
    pub fn contiguous_runs(&self) -> (u64, u64) {
        // Merge contiguous dims from the innermost outwards.
        let mut run_elems: i64 = 1;
        let mut runs: u64 = 1;
        let mut merging = true;
        let dims = self.free_dims();
        for d in dims.iter().rev() {
            if merging && (d.stride == run_elems || d.size <= 1) {
                run_elems *= d.size as i64;
            } else {
                merging = false;
                runs *= d.size as u64;
            }
        }
        if self.space == Space::Hbm {
            if merging && (self.partition_stride == run_elems || self.partitions <= 1) {
                run_elems *= self.partitions as i64;
            } else {
                runs *= self.partitions as u64;
            }
        }
        (runs, run_elems.max(0) as u64 * self.dtype.size() as u64)
    }

    /// Partition range `[start, end)` (SBUF/PSUM).
    pub fn partition_range(&self) -> (u32, u32) {
        (self.start_partition, self.start_partition + self.partitions)
    }
}

/// Row-major dims for a contiguous shape.
pub fn row_major(shape: &[u32]) -> Vec<Dim> {
    let mut dims = Vec::with_capacity(shape.len());
    let mut stride = 1i64;
    for &s in shape.iter().rev() {
        dims.push(Dim { stride, size: s });
        stride *= s as i64;
    }
    dims.reverse();
    dims
}

/// Calls `f` with every element offset of a free pattern, in order.
#[inline]
pub fn for_each_offset(dims: &[Dim], mut f: impl FnMut(i64)) {
    let mut d = [Dim { stride: 0, size: 1 }; MAX_FREE_DIMS];
    let n = dims.len().min(MAX_FREE_DIMS);
    // Right-align so the loop nest below is always four deep.
    d[MAX_FREE_DIMS - n..].copy_from_slice(&dims[..n]);
    let [a, b, c, e] = d;
    for i in 0..a.size as i64 {
        let oa = i * a.stride;
        for j in 0..b.size as i64 {
            let ob = oa + j * b.stride;
            for k in 0..c.size as i64 {
                let oc = ob + k * c.stride;
                for l in 0..e.size as i64 {
                    f(oc + l * e.stride)
                }
            }
        }
    }
}

impl fmt::Display for Ap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::format_ap(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contiguous_tile_is_one_run_per_partition() {
        let t = Ap::sbuf(0, 128, 0, &[4, 512], DType::Bf16);
        assert_eq!(t.contiguous_runs(), (1, 4096));
        let h = Ap::hbm(0, 128, &[512], DType::Bf16);
        assert_eq!(h.contiguous_runs(), (1, 128 * 1024));
    }

    #[test]
    fn strided_hbm_rows_are_separate_runs() {
        // 128 rows of 512 out of a 1024-wide matrix.
        let h = Ap::new(Space::Hbm, 0, 128, 1024, 0, &[Dim { stride: 1, size: 512 }], DType::F32);
        assert_eq!(h.contiguous_runs(), (128, 2048));
        assert_eq!(h.byte_span(), Some((0, (127 * 1024 + 512) * 4)));
    }

    proptest! {
        #[test]
        fn byte_span_contains_every_element(
            s0 in -8i64..8, n0 in 1u32..6, s1 in -8i64..8, n1 in 1u32..6, off in 64u64..128, es in 0usize..3
        ) {
            let dtype = [DType::U8, DType::Bf16, DType::F32][es];
            let ap = Ap::new(Space::Sbuf, 0, 1, 0, off, &[Dim { stride: s0, size: n0 }, Dim { stride: s1, size: n1 }], dtype);
            let (lo, hi) = ap.byte_span().unwrap();
            let offs = ap.free_offsets();
            prop_assert_eq!(offs.len() as u64, ap.free_size());
            let size = dtype.size() as i64;
            let min = offs.iter().map(|o| off as i64 + o * size).min().unwrap();
            let max = offs.iter().map(|o| off as i64 + o * size + size).max().unwrap();
            prop_assert_eq!((lo, hi), (min, max));
        }

        #[test]
        fn runs_times_length_covers_distinct_bytes(n0 in 1u32..5, n1 in 1u32..9, gap in 0i64..3) {
            let ap = Ap::new(Space::Sbuf, 0, 1, 0, 0, &[Dim { stride: n1 as i64 + gap, size: n0 }, Dim { stride: 1, size: n1 }], DType::F32);
            let (runs, len) = ap.contiguous_runs();
            prop_assert_eq!(runs * len, ap.bytes());
            if gap == 0 || n0 == 1 { prop_assert_eq!(runs, 1); } else { prop_assert_eq!(runs, n0 as u64); }
        }
    }
}
