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
//!
//! On a multi-chip system ([`ChipSpec::with_chips`]) each side of a transfer
//! is on a chip: an HBM side on the chip whose window holds it, an SBUF/PSUM
//! side on the issuing core's chip. The engines are still the issuing core's;
//! each HBM side counts against its own chip's HBM bandwidth; data moving
//! between two chips follows the system's deterministic route
//! ([`trainyard_arch::SystemLayout::route`]) and loads every directed link on
//! it, which is capped like HBM (proportional throttling when the sum of the
//! rates over a link exceeds its bandwidth), and waits the per-hop latency on
//! top of the fixed latency (hop latency and the per-link split of the
//! published per-chip bandwidth are assumptions, see the chip files).

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

/// Where a transfer's data lives and travels on a multi-chip system: which
/// chips' HBM it touches and which links it crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `(chip, sides)` for up to two HBM chips; `sides` 0 = unused slot.
    pub hbm: [(u32, u32); 2],
    /// Index of the route in [`Routes`], `u32::MAX` when the data stays on one chip.
    pub route: u32,
    /// Links crossed (each adds the per-hop latency).
    pub hops: u32,
}

impl Placement {
    /// A transfer with `hbm_sides` sides in chip 0's HBM and no links (one chip).
    pub fn local(hbm_sides: u32) -> Self {
        Placement { hbm: [(0, hbm_sides), (0, 0)], route: u32::MAX, hops: 0 }
    }
}

/// The distinct chip-to-chip routes of a program (link ids of each).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Box<[u32]>>,
    index: std::collections::HashMap<(u32, u32), u32>,
}

impl Routes {
    /// The route id from chip `src` to chip `dst` (`u32::MAX` for none), and its hop count.
    pub fn id(&mut self, chip: &ChipSpec, src: u32, dst: u32) -> (u32, u32) {
        if src == dst {
            return (u32::MAX, 0);
        }
        if let Some(&id) = self.index.get(&(src, dst)) {
            return (id, self.routes[id as usize].len() as u32);
        }
        let links = chip.route(src, dst);
        if links.is_empty() {
            return (u32::MAX, 0);
        }
        let id = self.routes.len() as u32;
        let hops = links.len() as u32;
        self.routes.push(links.into_boxed_slice());
        self.index.insert((src, dst), id);
        (id, hops)
    }

    /// The links of route `id` (empty for `u32::MAX`).
    pub fn links(&self, id: u32) -> &[u32] {
        self.routes.get(id as usize).map_or(&[], |r| r)
    }
}

/// Where a DMA instruction issued on `core` reads and writes: the chip of
/// each side and the route between them. `None` for other instructions.
pub fn placement(chip: &ChipSpec, core: u16, op: &Op, routes: &mut Routes) -> Option<Placement> {
    let (dst, src) = match op {
        Op::DmaCopy { dst, src, .. } => (dst, src),
        Op::DmaGather { dst, table, .. } => (dst, table),
        _ => return None,
    };
    let home = chip.chip_of_core(core as u32);
    let chip_of = |ap: &Ap| match ap.space {
        Space::Hbm => ap.byte_span().and_then(|(lo, _)| chip.chip_of_hbm(lo.max(0) as u64)).unwrap_or(home),
        _ => home,
    };
    let (to, from) = (chip_of(dst), chip_of(src));
    let mut hbm = [(0, 0); 2];
    let mut slots = 0;
    for ap in [src, dst].into_iter().filter(|a| a.space == Space::Hbm) {
        let c = chip_of(ap);
        match hbm[..slots].iter_mut().find(|(k, _)| *k == c) {
            Some(slot) => slot.1 += 1,
            None => {
                hbm[slots] = (c, 1);
                slots += 1;
            }
        }
    }
    let (route, hops) = routes.id(chip, from, to);
    Some(Placement { hbm, route, hops })
}

/// Where a transfer in flight on a multi-chip system puts its load.
#[derive(Clone, Debug)]
struct Spread {
    bytes: u64,
    /// Bytes moved per engine-ns of work.
    bytes_per_work: f64,
    hbm: [(u32, u32); 2],
    route: u32,
}

#[derive(Clone, Debug)]
struct Active {
    inst: u32,
    core: u16,
    remaining: f64,
    max_engines: f64,
    /// HBM bytes per engine-ns of work (one chip).
    hbm_per_work: f64,
    rate: f64,
    /// Multi-chip systems only: index of the chips' HBM and the links it
    /// loads in [`Fluid::spreads`] (`u32::MAX` on one chip, keeping this
    /// struct as small as before systems existed).
    spread: u32,
}

/// Transfers in flight and their current rates (engine-ns of work per ns).
#[derive(Default)]
pub(crate) struct Fluid {
    active: Vec<Active>,
    now_ps: u64,
    engines_per_core: f64,
    hbm_bytes_per_ns: f64,
    /// True on a multi-chip system: HBM is capped per chip and links are resources.
    system: bool,
    routes: Routes,
    /// Capacity of each link, bytes/ns.
    link_gbps: Vec<f64>,
    /// Scratch: demand per chip's HBM, then per link, bytes/ns.
    load: Vec<f64>,
    /// Scratch: throttle factor per resource (same indexing as `load`).
    factor: Vec<f64>,
    /// Links carrying data at the current rates.
    busy_links: Vec<u32>,
    link_bytes: Vec<u64>,
    link_busy_ps: Vec<u64>,
    /// Slab of the active transfers' [`Spread`]s and its free slots.
    spreads: Vec<Spread>,
    free_spreads: Vec<u32>,
}

impl Fluid {
    pub fn new(chip: &ChipSpec, routes: Routes) -> Self {
        let system = chip.system.as_ref();
        let link_gbps: Vec<f64> = system
            .map(|s| (0..s.link_count() as u32).map(|l| s.link(l).map_or(0.0, |l| l.gbps)).collect())
            .unwrap_or_default();
        let resources = chip.chips() as usize + link_gbps.len();
        Fluid {
            active: Vec::new(),
            now_ps: 0,
            engines_per_core: chip.core.dma.engines as f64,
            hbm_bytes_per_ns: chip.chip.hbm_gbps,
            system: chip.chips() > 1,
            routes,
            link_bytes: vec![0; link_gbps.len()],
            link_busy_ps: vec![0; link_gbps.len()],
            link_gbps,
            load: vec![0.0; resources],
            factor: vec![1.0; resources],
            busy_links: Vec::new(),
            spreads: Vec::new(),
            free_spreads: Vec::new(),
        }
    }

    /// Moves time forward, draining work at the current rates.
    pub fn advance(&mut self, to_ps: u64) {
        if to_ps > self.now_ps {
            let dt_ps = to_ps - self.now_ps;
            let dt_ns = dt_ps as f64 / 1000.0;
            for a in &mut self.active {
                a.remaining -= a.rate * dt_ns;
            }
            for &l in &self.busy_links {
                self.link_busy_ps[l as usize] += dt_ps;
            }
            self.now_ps = to_ps;
        }
    }

    pub fn add(&mut self, inst: u32, core: u16, shape: &TransferShape, placement: &Placement, work_ns: f64) {
        let hbm_per_work = if work_ns > 0.0 { shape.bytes as f64 * shape.hbm_sides as f64 / work_ns } else { 0.0 };
        let mut spread = u32::MAX;
        if self.system {
            let bytes_per_work = if work_ns > 0.0 { shape.bytes as f64 / work_ns } else { 0.0 };
            let s = Spread { bytes: shape.bytes, bytes_per_work, hbm: placement.hbm, route: placement.route };
            spread = match self.free_spreads.pop() {
                Some(k) => {
                    self.spreads[k as usize] = s;
                    k
                }
                None => {
                    self.spreads.push(s);
                    self.spreads.len() as u32 - 1
                }
            };
        }
        self.active.push(Active {
            inst,
            core,
            remaining: work_ns,
            max_engines: shape.max_engines as f64,
            hbm_per_work,
            rate: 0.0,
            spread,
        });
        self.recompute();
    }

    /// Bytes carried and time busy (ps) per link id, over the run so far.
    pub fn link_stats(&self) -> (&[u64], &[u64]) {
        (&self.link_bytes, &self.link_busy_ps)
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
        if self.system {
            if let Some(a) = self.active.iter().find(|a| a.inst == inst) {
                let k = a.spread;
                if let Some(s) = self.spreads.get(k as usize) {
                    for &l in self.routes.links(s.route) {
                        self.link_bytes[l as usize] += s.bytes;
                    }
                    self.free_spreads.push(k);
                }
            }
        }
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
        if self.system {
            self.throttle_system();
            return;
        }
        let hbm: f64 = self.active.iter().map(|a| a.rate * a.hbm_per_work).sum();
        if hbm > self.hbm_bytes_per_ns {
            let f = self.hbm_bytes_per_ns / hbm;
            for a in self.active.iter_mut().filter(|a| a.hbm_per_work > 0.0) {
                a.rate *= f;
            }
        }
    }

    /// The throttle on a multi-chip system, where a shared resource is a
    /// chip's HBM (HW-CHIP-*-HBM, HW-HBM-SHARE) or a chip-to-chip link
    /// (assumption: links share like HBM). Each resource over capacity gets
    /// the factor capacity / demand; a transfer is slowed by the smallest
    /// factor of the resources it uses, so no resource ends over capacity.
    fn throttle_system(&mut self) {
        let chips = self.load.len() - self.link_gbps.len();
        self.load.fill(0.0);
        for a in &self.active {
            let Some(s) = self.spreads.get(a.spread as usize) else { continue };
            for &(chip, sides) in s.hbm.iter().filter(|h| h.1 > 0) {
                self.load[chip as usize] += a.rate * (s.bytes_per_work * sides as f64);
            }
            for &l in self.routes.links(s.route) {
                self.load[chips + l as usize] += a.rate * s.bytes_per_work;
            }
        }
        let mut throttled = false;
        for (r, (&load, f)) in self.load.iter().zip(self.factor.iter_mut()).enumerate() {
            let cap = if r < chips { self.hbm_bytes_per_ns } else { self.link_gbps[r - chips] };
            *f = if load > cap { cap / load } else { 1.0 };
            throttled |= load > cap;
        }
        if throttled {
            for a in self.active.iter_mut() {
                let Some(s) = self.spreads.get(a.spread as usize) else { continue };
                let hbm = s.hbm.iter().filter(|h| h.1 > 0).map(|h| self.factor[h.0 as usize]);
                let links = self.routes.links(s.route).iter().map(|&l| self.factor[chips + l as usize]);
                let f = hbm.chain(links).fold(1.0f64, f64::min);
                if f < 1.0 {
                    a.rate *= f;
                }
            }
        }
        self.busy_links.clear();
        let spreads = &self.spreads;
        for s in self.active.iter().filter(|a| a.rate > 0.0).filter_map(|a| spreads.get(a.spread as usize)) {
            self.busy_links.extend_from_slice(self.routes.links(s.route));
        }
        self.busy_links.sort_unstable();
        self.busy_links.dedup();
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
        let local = Placement::local(1);
        let mut f = Fluid::new(&chip, Routes::default());
        f.add(0, 0, &shape, &local, work);
        let (t_alone, _) = f.next_finish().unwrap();
        f.add(1, 0, &shape, &local, work);
        let (t_shared, _) = f.next_finish().unwrap();
        // Two transfers on one core split its 16 engines: twice as long.
        assert!((t_shared as f64 / t_alone as f64 - 2.0).abs() < 0.01);
        // On two cores each has 16 engines (272 GB/s each), under trn1's 820 GB/s HBM.
        let mut g = Fluid::new(&chip, Routes::default());
        g.add(0, 0, &shape, &local, work);
        g.add(1, 1, &shape, &local, work);
        assert_eq!(g.next_finish().unwrap().0, t_alone);
        // Four cores' worth (4 × 272 GB/s) exceeds HBM: throttled.
        let mut h = Fluid::new(&chip, Routes::default());
        for c in 0..4 {
            h.add(c, c as u16, &shape, &local, work);
        }
        let (t_hbm, _) = h.next_finish().unwrap();
        let expected = 4.0 * shape.bytes as f64 / chip.chip.hbm_gbps;
        assert!((t_hbm as f64 / 1000.0 - expected).abs() / expected < 0.01, "{t_hbm} vs {expected}");
    }
}
