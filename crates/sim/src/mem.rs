//! Functional memory: the chip's HBM and each core's SBUF and PSUM, with
//! gather/scatter of access patterns to and from `f32` or raw bits.

use trainyard_arch::{DType, Rounding, SplitMix64};
use trainyard_isa::{Ap, Dim, Space};

/// A zero-initialised byte buffer whose start is 8-byte aligned, so `f32`
/// views of aligned offsets are sound (the Tensor engine's GEMM writes PSUM in place).
pub(crate) struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes { words: vec![0u64; len.div_ceil(8)], len }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage of at least `len` bytes; u8 has no alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// How stores round.
pub(crate) enum Rounder {
    NearestEven,
    Stochastic(SplitMix64),
}

impl Rounder {
    #[inline]
    pub fn encode(&mut self, dtype: DType, x: f32) -> u32 {
        match self {
            Rounder::NearestEven => dtype.encode(x, Rounding::NearestEven),
            Rounder::Stochastic(rng) => dtype.encode(x, Rounding::Stochastic(rng)),
        }
    }
}

pub(crate) struct Memory {
    pub hbm: AlignedBytes,
    pub sbuf: Vec<AlignedBytes>,
    pub psum: Vec<AlignedBytes>,
    pub sbuf_bpp: usize,
    pub psum_bpp: usize,
}

/// Calls `row(byte_address_of_first_element, inner_dim)` once per innermost
/// run of an access pattern, in element order.
#[inline]
fn for_each_row(ap: &Ap, bpp: usize, mut row: impl FnMut(usize, Dim)) {
    let es = ap.dtype.size() as i64;
    let dims = ap.free_dims();
    let (outer, inner) = dims.split_at(dims.len() - 1);
    let inner = inner[0];
    for p in 0..ap.partitions as i64 {
        let base = match ap.space {
            Space::Hbm => ap.offset as i64 + p * ap.partition_stride * es,
            _ => (ap.start_partition as i64 + p) * bpp as i64 + ap.offset as i64,
        };
        trainyard_isa::for_each_offset(outer, |o| row((base + o * es) as usize, inner));
    }
}

impl Memory {
    /// HBM of `hbm_bytes` and SBUF/PSUM for each core `c` with `used[c]`
    /// (others get none: a 64-chip system never allocates 512 cores' SRAM).
    pub fn new(
        hbm_bytes: usize,
        used: &[bool],
        sbuf_bytes: usize,
        psum_bytes: usize,
        sbuf_bpp: usize,
        psum_bpp: usize,
    ) -> Self {
        Memory {
            hbm: AlignedBytes::zeroed(hbm_bytes),
            sbuf: used.iter().map(|&u| AlignedBytes::zeroed(if u { sbuf_bytes } else { 0 })).collect(),
            psum: used.iter().map(|&u| AlignedBytes::zeroed(if u { psum_bytes } else { 0 })).collect(),
            sbuf_bpp,
            psum_bpp,
        }
    }

    fn space(&self, core: usize, space: Space) -> (&[u8], usize) {
        match space {
            Space::Hbm => (self.hbm.bytes(), 0),
            Space::Sbuf => (self.sbuf[core].bytes(), self.sbuf_bpp),
            Space::Psum => (self.psum[core].bytes(), self.psum_bpp),
        }
    }

    fn space_mut(&mut self, core: usize, space: Space) -> (&mut [u8], usize) {
        match space {
            Space::Hbm => (self.hbm.bytes_mut(), 0),
            Space::Sbuf => (self.sbuf[core].bytes_mut(), self.sbuf_bpp),
            Space::Psum => (self.psum[core].bytes_mut(), self.psum_bpp),
        }
    }

    /// Whether every byte of `ap` lies inside its memory.
    pub fn in_bounds(&self, core: usize, ap: &Ap) -> Result<(), String> {
        let (len, bpp) = match ap.space {
            Space::Hbm => (self.hbm.len, 0usize),
            Space::Sbuf => (self.sbuf.get(core).map(|b| b.len).unwrap_or(0), self.sbuf_bpp),
            Space::Psum => (self.psum.get(core).map(|b| b.len).unwrap_or(0), self.psum_bpp),
        };
        let Some((lo, hi)) = ap.byte_span() else { return Ok(()) };
        if lo < 0 {
            return Err(format!("starts {} bytes before the start of {}", -lo, ap.space));
        }
        match ap.space {
            Space::Hbm if hi as usize > len => Err(format!("ends at byte {hi}, past the {len} bytes of HBM in use")),
            Space::Hbm => Ok(()),
            _ => {
                if hi as usize > bpp {
                    Err(format!("ends at byte {hi} of a {bpp}-byte partition"))
                } else if (ap.start_partition + ap.partitions) as usize * bpp > len {
                    Err(format!(
                        "partitions {}..{} exceed the memory",
                        ap.start_partition,
                        ap.start_partition + ap.partitions
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Reads every element of `ap` as `f32`, in element order.
    pub fn read_f32(&self, core: usize, ap: &Ap, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(ap.elements() as usize);
        let (mem, bpp) = self.space(core, ap.space);
        let es = ap.dtype.size();
        macro_rules! gather {
            ($decode:expr) => {
                for_each_row(ap, bpp, |addr, inner| {
                    if inner.stride == 1 {
                        let bytes = &mem[addr..addr + inner.size as usize * es];
                        out.extend(bytes.chunks_exact(es).map($decode));
                    } else {
                        for i in 0..inner.size as i64 {
                            let a = (addr as i64 + i * inner.stride * es as i64) as usize;
                            out.push($decode(&mem[a..a + es]));
                        }
                    }
                })
            };
        }
        match ap.dtype {
            DType::F32 => gather!(|b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DType::Bf16 => gather!(|b: &[u8]| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
            d => gather!(|b: &[u8]| d.decode(d.load_bits(b))),
        }
    }

    /// Copies the raw bytes of every element of `ap`, in element order
    /// (one `memcpy` per contiguous run).
    pub fn gather_bytes(&self, core: usize, ap: &Ap, out: &mut Vec<u8>) {
        out.clear();
        let (mem, bpp) = self.space(core, ap.space);
        let es = ap.dtype.size();
        for_each_row(ap, bpp, |addr, inner| {
            if inner.stride == 1 {
                out.extend_from_slice(&mem[addr..addr + inner.size as usize * es]);
            } else {
                for i in 0..inner.size as i64 {
                    let a = (addr as i64 + i * inner.stride * es as i64) as usize;
                    out.extend_from_slice(&mem[a..a + es]);
                }
            }
        });
    }

    /// Writes raw element bytes (element order) to `ap`.
    pub fn scatter_bytes(&mut self, core: usize, ap: &Ap, bytes: &[u8]) {
        let (mem, bpp) = self.space_mut(core, ap.space);
        let es = ap.dtype.size();
        let mut k = 0usize;
        for_each_row(ap, bpp, |addr, inner| {
            if inner.stride == 1 {
                let n = inner.size as usize * es;
                mem[addr..addr + n].copy_from_slice(&bytes[k..k + n]);
                k += n;
            } else {
                for i in 0..inner.size as i64 {
                    let a = (addr as i64 + i * inner.stride * es as i64) as usize;
                    mem[a..a + es].copy_from_slice(&bytes[k..k + es]);
                    k += es;
                }
            }
        });
    }

    /// Reads every element's raw bits, in element order.
    pub fn read_bits(&self, core: usize, ap: &Ap, out: &mut Vec<u32>) {
        out.clear();
        out.reserve(ap.elements() as usize);
        let (mem, bpp) = self.space(core, ap.space);
        let d = ap.dtype;
        let es = d.size();
        for_each_row(ap, bpp, |addr, inner| {
            for i in 0..inner.size as i64 {
                let a = (addr as i64 + i * inner.stride * es as i64) as usize;
                out.push(d.load_bits(&mem[a..a + es]));
            }
        });
    }

    /// Writes `vals` (element order) to `ap`, rounding to its dtype.
    pub fn write_f32(&mut self, core: usize, ap: &Ap, vals: &[f32], rounder: &mut Rounder) {
        let (mem, bpp) = self.space_mut(core, ap.space);
        let d = ap.dtype;
        let es = d.size();
        let mut k = 0usize;
        let nearest = matches!(rounder, Rounder::NearestEven);
        for_each_row(ap, bpp, |addr, inner| {
            let n = inner.size as usize;
            let src = &vals[k..k + n];
            k += n;
            match (d, nearest, inner.stride == 1) {
                (DType::F32, _, true) => {
                    for (dst, v) in mem[addr..addr + 4 * n].chunks_exact_mut(4).zip(src) {
                        dst.copy_from_slice(&v.to_le_bytes());
                    }
                }
                (DType::Bf16, true, true) => {
                    for (dst, v) in mem[addr..addr + 2 * n].chunks_exact_mut(2).zip(src) {
                        dst.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }
                _ => {
                    for (i, v) in src.iter().enumerate() {
                        let a = (addr as i64 + i as i64 * inner.stride * es as i64) as usize;
                        let bits = rounder.encode(d, *v);
                        d.store_bits(bits, &mut mem[a..a + es]);
                    }
                }
            }
        });
    }

    /// Writes raw bits (element order) to `ap`.
    pub fn write_bits(&mut self, core: usize, ap: &Ap, bits: &[u32]) {
        let (mem, bpp) = self.space_mut(core, ap.space);
        let d = ap.dtype;
        let es = d.size();
        let mut k = 0usize;
        for_each_row(ap, bpp, |addr, inner| {
            for i in 0..inner.size as i64 {
                let a = (addr as i64 + i * inner.stride * es as i64) as usize;
                d.store_bits(bits[k], &mut mem[a..a + es]);
                k += 1;
            }
        });
    }

    /// A mutable `f32` view of PSUM rows for in-place GEMM accumulation:
    /// returns the base pointer and the row stride in `f32` elements, if `ap`
    /// is an FP32 tile with a contiguous free axis.
    pub fn psum_f32_rows(&mut self, core: usize, ap: &Ap) -> Option<(*mut f32, usize)> {
        if ap.space != Space::Psum || ap.dtype != DType::F32 || ap.ndims != 1 || ap.dims[0].stride != 1 {
            return None;
        }
        let bpp = self.psum_bpp;
        let start = ap.start_partition as usize * bpp + ap.offset as usize;
        if !start.is_multiple_of(4) || !bpp.is_multiple_of(4) {
            return None;
        }
        let bytes = self.psum[core].bytes_mut();
        // SAFETY: the caller checked the operand is in bounds; alignment checked above.
        Some((unsafe { bytes.as_mut_ptr().add(start) } as *mut f32, bpp / 4))
    }
}
