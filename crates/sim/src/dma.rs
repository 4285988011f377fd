//! DMA timing: what a transfer costs and how concurrent transfers share
//! bandwidth.
//!
//! A transfer is split over up to 16 DMA engines of its core, 8 partitions
//! per engine (HW-DMA-STRUCT). It needs `work` engine-nanoseconds: its bytes
//! at one engine's streaming rate (HW-DMA-BW-EFF) plus a per-descriptor
//! overhead for every contiguous chunk (HW-DMA-SG, HW-DMA-SIZE; the overhead
//! value is an assumption). Before its data moves it waits a fixed
//! trigger-to-start latency that overlaps with earlier transfers of its queue
//! (HW-DMA-FIXED, HW-DEF-DMA). Active transfers of a core share its engines
//! max-min fairly; transfers touching HBM share the chip's HBM bandwidth
//! proportionally when it saturates (HW-CHIP-*-HBM, HW-HBM-SHARE).

use trainyard_arch::ChipSpec;
use trainyard_isa::{Ap, Op, Space};

/// The size of one DMA transfer as the timing model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransferShape {
    /// Bytes moved (the wider of source and destination element sizes).
    pub bytes: u64,
    /// Contiguous chunks (descriptors).
    pub descriptors: u64,
    /// Engines the transfer can use at once.
    pub max_engines: u32,
    /// How many of its two sides are in HBM (0, 1 or 2).
    pub hbm_sides: u32,
}

fn descriptors(ap: &Ap) -> u64 {
    let (runs, _) = ap.contiguous_runs();
    match ap.space {
        Space::Hbm => runs,
        _ => runs * ap.partitions as u64,
    }
}

fn engines_for(chip: &ChipSpec, sram_partitions: Option<u32>, descriptors: u64) -> u32 {
    let d = &chip.core.dma;
    let by_partitions = match sram_partitions {
        Some(p) => p.div_ceil(d.partitions_per_engine),
        None => d.engines,
    };
    (by_partitions.min(d.engines) as u64).min(descriptors.max(1)).max(1) as u32
}

/// The transfer shape of a DMA instruction; `None` for other instructions.
pub fn transfer_shape(chip: &ChipSpec, op: &Op) -> Option<TransferShape> {
    match op {
        Op::DmaCopy { dst, src, .. } => {
            let bytes = dst.elements() * dst.dtype.size().max(src.dtype.size()) as u64;
            let desc = descriptors(dst).max(descriptors(src));
            let sram = [dst, src].iter().filter(|a| a.space.is_sram()).map(|a| a.partitions).max();
            let hbm_sides = [dst, src].iter().filter(|a| a.space == Space::Hbm).count() as u32;
            Some(TransferShape { bytes, descriptors: desc, max_engines: engines_for(chip, sram, desc), hbm_sides })
        }
        Op::DmaGather { dst, table, .. } => {
            // One descriptor per gathered row chunk (software DGE, HW-DMA-SWDGE).
            let (row_runs, _) = Ap { partitions: 1, ..*table }.contiguous_runs();
            let desc = row_runs * dst.partitions as u64;
            let bytes = dst.elements() * dst.dtype.size().max(table.dtype.size()) as u64;
            Some(TransferShape {
                bytes,
                descriptors: desc,
                max_engines: engines_for(chip, Some(dst.partitions), desc),
                hbm_sides: 1,
            })
        }
        _ => None,
    }
}

/// Engine-nanoseconds a transfer needs: bytes at one engine's rate plus the
/// per-descriptor overhead. hw: HW-DMA-BW-EFF, HW-DMA-SG, HW-DMA-SIZE.
pub fn transfer_work_ns(chip: &ChipSpec, shape: &TransferShape) -> f64 {
    let d = &chip.core.dma;
    shape.bytes as f64 / d.engine_bytes_per_ns + shape.descriptors as f64 * d.descriptor_ns
}

/// Time of a lone transfer, trigger to completion, in ns (no contention).
/// hw: HW-DEF-DMA.
pub fn lone_transfer_ns(chip: &ChipSpec, shape: &TransferShape) -> f64 {
    chip.core.dma.fixed_latency_ns + transfer_work_ns(chip, shape) / shape.max_engines as f64
}

#[derive(Clone, Debug)]
struct Active {
    inst: u32,
    core: u16,
    remaining: f64,
    max_engines: f64,
    /// HBM bytes per engine-ns of work.
    hbm_per_work: f64,
    rate: f64,
}

/// Transfers in flight and their current rates (engine-ns of work per ns).
#[derive(Default)]
pub(crate) struct Fluid {
    active: Vec<Active>,
    now_ps: u64,
    engines_per_core: f64,
    hbm_bytes_per_ns: f64,
}

impl Fluid {
    pub fn new(chip: &ChipSpec) -> Self {
        Fluid {
            active: Vec::new(),
            now_ps: 0,
            engines_per_core: chip.core.dma.engines as f64,
            hbm_bytes_per_ns: chip.chip.hbm_gbps,
        }
    }

    /// Moves time forward, draining work at the current rates.
    pub fn advance(&mut self, to_ps: u64) {
        if to_ps > self.now_ps {
            let dt_ns = (to_ps - self.now_ps) as f64 / 1000.0;
            for a in &mut self.active {
                a.remaining -= a.rate * dt_ns;
            }
            self.now_ps = to_ps;
        }
    }

    pub fn add(&mut self, inst: u32, core: u16, shape: &TransferShape, work_ns: f64) {
        let hbm_per_work = if work_ns > 0.0 { shape.bytes as f64 * shape.hbm_sides as f64 / work_ns } else { 0.0 };
        self.active.push(Active {
            inst,
            core,
            remaining: work_ns,
            max_engines: shape.max_engines as f64,
            hbm_per_work,
            rate: 0.0,
        });
        self.recompute();
    }

    /// Earliest completion among active transfers: (time, instruction).
    pub fn next_finish(&self) -> Option<(u64, u32)> {
        self.active
            .iter()
            .map(|a| {
                let ns = if a.remaining <= 0.0 { 0.0 } else { a.remaining / a.rate };
                (self.now_ps + (ns * 1000.0).ceil() as u64, a.inst)
            })
            .min()
    }

    pub fn remove(&mut self, inst: u32) {
        self.active.retain(|a| a.inst != inst);
        self.recompute();
    }

    /// Max-min fair share of each core's engines, then a proportional
    /// throttle of HBM-touching transfers if the chip's HBM saturates.
    fn recompute(&mut self) {
        self.active.sort_by(|a, b| {
            (a.core, a.max_engines, a.inst)
                .partial_cmp(&(b.core, b.max_engines, b.inst))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut i = 0;
        while i < self.active.len() {
            let core = self.active[i].core;
            let end = i + self.active[i..].iter().take_while(|a| a.core == core).count();
            let mut capacity = self.engines_per_core;
            for (k, a) in self.active[i..end].iter_mut().enumerate() {
                let left = (end - i - k) as f64;
                a.rate = a.max_engines.min(capacity / left);
                capacity -= a.rate;
            }
            i = end;
        }
        let hbm: f64 = self.active.iter().map(|a| a.rate * a.hbm_per_work).sum();
        if hbm > self.hbm_bytes_per_ns {
            let f = self.hbm_bytes_per_ns / hbm;
            for a in self.active.iter_mut().filter(|a| a.hbm_per_work > 0.0) {
                a.rate *= f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_arch::DType;

    #[test]
    fn one_engine_32k_matches_the_trn2_profile() {
        // HW-DMA-MEAS-32K: 4 partitions × 4096 BF16 HBM→SBUF on one engine ≈ 1,416 ns.
        let chip = ChipSpec::by_name("trn2").unwrap();
        let op = Op::DmaCopy {
            queue: 0,
            dst: Ap::sbuf(0, 4, 0, &[4096], DType::Bf16),
            src: Ap::hbm(0, 4, &[4096], DType::Bf16),
        };
        let s = transfer_shape(&chip, &op).unwrap();
        assert_eq!(s.max_engines, 1);
        assert_eq!(s.bytes, 32768);
        let busy = transfer_work_ns(&chip, &s) / s.max_engines as f64;
        assert!((busy - 1416.0).abs() / 1416.0 < 0.05, "{busy}");
    }

    #[test]
    fn full_tile_uses_sixteen_engines() {
        // HW-DMA-MEAS-2K: 128×128 BF16 spreads over all 16 engines.
        let chip = ChipSpec::by_name("trn2").unwrap();
        let op = Op::DmaCopy {
            queue: 0,
            dst: Ap::sbuf(0, 128, 0, &[128], DType::Bf16),
            src: Ap::hbm(0, 128, &[128], DType::Bf16),
        };
        let s = transfer_shape(&chip, &op).unwrap();
        assert_eq!(s.max_engines, 16);
        assert_eq!(s.descriptors, 128);
    }

    #[test]
    fn fluid_shares_engines_and_caps_hbm() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        let shape = TransferShape { bytes: 1 << 20, descriptors: 128, max_engines: 16, hbm_sides: 1 };
        let work = transfer_work_ns(&chip, &shape);
        let mut f = Fluid::new(&chip);
        f.add(0, 0, &shape, work);
        let (t_alone, _) = f.next_finish().unwrap();
        f.add(1, 0, &shape, work);
        let (t_shared, _) = f.next_finish().unwrap();
        // Two transfers on one core split its 16 engines: twice as long.
        assert!((t_shared as f64 / t_alone as f64 - 2.0).abs() < 0.01);
        // On two cores each has 16 engines (272 GB/s each), under trn1's 820 GB/s HBM.
        let mut g = Fluid::new(&chip);
        g.add(0, 0, &shape, work);
        g.add(1, 1, &shape, work);
        assert_eq!(g.next_finish().unwrap().0, t_alone);
        // Four cores' worth (4 × 272 GB/s) exceeds HBM: throttled.
        let mut h = Fluid::new(&chip);
        for c in 0..4 {
            h.add(c, c as u16, &shape, work);
        }
        let (t_hbm, _) = h.next_finish().unwrap();
        let expected = 4.0 * shape.bytes as f64 / chip.chip.hbm_gbps;
        assert!((t_hbm as f64 / 1000.0 - expected).abs() / expected < 0.01, "{t_hbm} vs {expected}");
    }
}
