//! Multi-chip systems: the `[[systems]]` tables of a chip file (which chips an
//! instance or UltraServer links, in what topology, over links of what
//! bandwidth) and the [`SystemLayout`] a [`ChipSpec`] carries once a run spans
//! several chips ([`ChipSpec::with_chips`]).
//!
//! Chips are numbered in row-major order of their coordinates (`shape` lists
//! the outermost dimension first), so the first `n` chips of a system fill its
//! innermost dimension first. Every directed link gets a dense id
//! ([`SystemLayout::link_count`]) so a simulator can keep one resource per link.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chip::{invalid, ChipSpec, SpecError};

/// How the chips of a system are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// A torus: every dimension is a ring; each chip has a `+` and a `-`
    /// link per dimension (HW-TOPO-TRN1, HW-TOPO-TRN2, HW-TOPO-TRN2-US).
    Torus,
    /// A one-dimensional torus (HW-TOPO-INF2).
    Ring,
    /// Switched all-to-all (HW-TOPO-TRN3): per level each chip has one up-port
    /// into the switch and one down-port out of it; dimension 0 is the
    /// outermost level (servers), the last the innermost (chips of a server).
    Switch,
}

impl Topology {
    /// Lower-case name as written in chip files.
    pub const fn name(self) -> &'static str {
        match self {
            Topology::Torus => "torus",
            Topology::Ring => "ring",
            Topology::Switch => "switch",
        }
    }
}

/// One `[[systems]]` entry of a chip file: a set of chips linked in one topology.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// Name, e.g. `trn2.48xlarge` or `trn2-ultraserver`.
    pub name: String,
    /// How the chips are linked.
    pub topology: Topology,
    /// Chips per dimension, outermost first; the system has their product.
    pub shape: Vec<u32>,
    /// Bandwidth of one directed link (torus, ring) or of one port in one
    /// direction (switch), GB/s (= bytes/ns), per dimension in `shape` order.
    pub link_gbps: Vec<f64>,
    /// Latency added per link a transfer crosses, ns.
    pub hop_latency_ns: f64,
}

impl SystemSpec {
    /// Chips in the whole system.
    pub fn chips(&self) -> u64 {
        self.shape.iter().map(|&n| n as u64).product()
    }

    /// Bytes per ns one chip can send over all its links at once.
    fn egress_gbps(&self) -> f64 {
        match self.topology {
            // Two directed links per dimension leave each chip.
            Topology::Torus | Topology::Ring => self.link_gbps.iter().map(|g| 2.0 * g).sum(),
            Topology::Switch => self.link_gbps.iter().sum(),
        }
    }

    /// Checks the entry; `index` places it in messages as `systems[index]`.
    pub(crate) fn validate(&self, chip: &ChipSpec, path: &Path, index: usize) -> Result<(), SpecError> {
        let key = |field: &str| format!("systems[{index}].{field}");
        let bad = |field: &str, message: String| invalid(path, &key(field), message);
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        let dims = self.shape.len();
        if dims == 0 || dims > MAX_DIMS {
            return Err(bad("shape", format!("`{}`: needs 1..={MAX_DIMS} dimensions, got {dims}", self.name)));
        }
        if self.topology == Topology::Ring && dims != 1 {
            return Err(bad("shape", format!("`{}`: a ring has one dimension, got {dims}", self.name)));
        }
        if let Some(n) = self.shape.iter().find(|&&n| n < 2) {
            return Err(bad("shape", format!("`{}`: every dimension needs ≥ 2 chips, got {n}", self.name)));
        }
        let chips = self.chips();
        if chips > MAX_CHIPS {
            return Err(bad("shape", format!("`{}`: {chips} chips, at most {MAX_CHIPS} are supported", self.name)));
        }
        if chips * chip.chip.cores as u64 > u16::MAX as u64 + 1 {
            return Err(bad("shape", format!("`{}`: {chips} chips have more cores than a core id numbers", self.name)));
        }
        if chip.chip.hbm_bytes.checked_mul(chips).is_none_or(|b| b > 1 << 62) {
            return Err(bad("shape", format!("`{}`: {chips} chips' HBM overflows one address space", self.name)));
        }
        if self.link_gbps.len() != dims {
            return Err(bad(
                "link_gbps",
                format!("`{}`: needs one value per dimension ({dims}), got {}", self.name, self.link_gbps.len()),
            ));
        }
        if let Some(g) = self.link_gbps.iter().find(|g| !(g.is_finite() && **g > 0.0)) {
            return Err(bad("link_gbps", format!("`{}`: must be positive numbers, got {g}", self.name)));
        }
        // A chip cannot send faster over its links than its published per-chip
        // link bandwidth (tolerance for decimal rounding in the file).
        let egress = self.egress_gbps();
        if egress > chip.chip.link_gbps * (1.0 + 1e-6) {
            return Err(bad(
                "link_gbps",
                format!(
                    "`{}`: links leaving one chip carry {egress} GB/s, more than chip.link_gbps = {}",
                    self.name, chip.chip.link_gbps
                ),
            ));
        }
        if !(self.hop_latency_ns.is_finite() && self.hop_latency_ns >= 0.0) {
            return Err(bad("hop_latency_ns", format!("`{}`: must be ≥ 0, got {}", self.name, self.hop_latency_ns)));
        }
        Ok(())
    }
}

/// Most dimensions a system may have.
pub const MAX_DIMS: usize = 4;
/// Most chips a system may have.
pub const MAX_CHIPS: u64 = 4096;

/// The system a multi-chip [`ChipSpec`] runs on: a [`SystemSpec`] and how many
/// of its chips (the first `chips` in row-major coordinate order) are used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SystemLayout {
    /// The system the chips belong to (its links exist whether or not all its chips are used).
    pub spec: SystemSpec,
    /// Chips used, `2..=spec.chips()`.
    pub chips: u32,
}

/// One directed link (or switch port) of a system.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkInfo {
    /// Dense id, `0..link_count()`.
    pub id: u32,
    /// Chip the link leaves (torus/ring, switch up-port) or enters (switch down-port).
    pub chip: u32,
    /// Dimension of `shape` the link belongs to.
    pub dim: usize,
    /// Bytes per ns.
    pub gbps: f64,
    /// A name for reports: `chip3.x+`, `chip3.y-`, `chip9.up.x`, `chip9.down.y`.
    pub name: String,
}

impl SystemLayout {
    /// Number of dimensions.
    pub fn dims(&self) -> usize {
        self.spec.shape.len()
    }

    /// Chips of the whole system (used or not).
    pub fn system_chips(&self) -> u32 {
        self.spec.chips() as u32
    }

    /// Coordinates of `chip`, outermost dimension first.
    pub fn coords(&self, chip: u32) -> Vec<u32> {
        let mut rest = chip;
        let mut c = vec![0; self.dims()];
        for (slot, &n) in c.iter_mut().zip(&self.spec.shape).rev() {
            *slot = rest % n;
            rest /= n;
        }
        c
    }

    fn chip_at(&self, coords: &[u32]) -> u32 {
        coords.iter().zip(&self.spec.shape).fold(0, |acc, (&c, &n)| acc * n + c)
    }

    /// Number of directed links (and switch ports): two per chip and dimension.
    pub fn link_count(&self) -> usize {
        self.system_chips() as usize * self.dims() * 2
    }

    /// Axis letter of dimension `dim`: the innermost is `x`, then `y`, `z`, `w`.
    fn axis(&self, dim: usize) -> char {
        ['x', 'y', 'z', 'w'].get(self.dims() - 1 - dim).copied().unwrap_or('?')
    }

    fn link_id(&self, chip: u32, dim: usize, second: bool) -> u32 {
        ((chip as usize * self.dims() + dim) * 2 + second as usize) as u32
    }

    /// The link with dense id `id`, `None` past `link_count()`.
    pub fn link(&self, id: u32) -> Option<LinkInfo> {
        if id as usize >= self.link_count() {
            return None;
        }
        let second = id % 2 == 1;
        let dim = (id as usize / 2) % self.dims();
        let chip = (id as usize / 2 / self.dims()) as u32;
        let axis = self.axis(dim);
        let name = match (self.spec.topology, second) {
            (Topology::Switch, false) => format!("chip{chip}.up.{axis}"),
            (Topology::Switch, true) => format!("chip{chip}.down.{axis}"),
            (_, false) => format!("chip{chip}.{axis}+"),
            (_, true) => format!("chip{chip}.{axis}-"),
        };
        Some(LinkInfo { id, chip, dim, gbps: self.spec.link_gbps.get(dim).copied().unwrap_or(0.0), name })
    }

    /// The directed links a transfer from chip `src` to chip `dst` crosses, in
    /// order; empty when `src == dst` or either is outside the system.
    ///
    /// Torus and ring: dimension-order routing, innermost dimension (`x`)
    /// first, each ring the shorter way round (ties go `+`). Switch: the
    /// source's up-port and the destination's down-port of the outermost
    /// level where their coordinates differ (servers before chips of a server).
    pub fn route(&self, src: u32, dst: u32) -> Vec<u32> {
        let n = self.system_chips();
        if src == dst || src >= n || dst >= n {
            return Vec::new();
        }
        let (from, to) = (self.coords(src), self.coords(dst));
        if self.spec.topology == Topology::Switch {
            let Some(dim) = (0..self.dims()).find(|&d| from[d] != to[d]) else {
                return Vec::new();
            };
            return vec![self.link_id(src, dim, false), self.link_id(dst, dim, true)];
        }
        let mut at = from;
        let mut links = Vec::new();
        for dim in (0..self.dims()).rev() {
            let size = self.spec.shape[dim];
            let forward = (to[dim] + size - at[dim]) % size;
            let (steps, minus) = if forward <= size - forward { (forward, false) } else { (size - forward, true) };
            for _ in 0..steps {
                links.push(self.link_id(self.chip_at(&at), dim, minus));
                at[dim] = if minus { (at[dim] + size - 1) % size } else { (at[dim] + 1) % size };
            }
        }
        links
    }
}

impl ChipSpec {
    /// This chip as a system of `chips` chips: the smallest `[[systems]]` entry
    /// with at least that many, of which the first `chips` (row-major
    /// coordinate order) are used. One chip is the chip alone (no system).
    pub fn with_chips(&self, chips: u32) -> Result<ChipSpec, SpecError> {
        let mut out = self.clone();
        if chips == 1 {
            out.system = None;
            return Ok(out);
        }
        if chips == 0 {
            return Err(SpecError::NoSystem {
                chip: self.name.clone(),
                chips,
                largest: "a run needs at least one chip".into(),
            });
        }
        let fits = self.systems.iter().filter(|s| s.chips() >= chips as u64);
        let Some(spec) = fits.min_by_key(|s| s.chips()) else {
            let largest = self.systems.iter().max_by_key(|s| s.chips());
            return Err(SpecError::NoSystem {
                chip: self.name.clone(),
                chips,
                largest: largest.map_or_else(
                    || "none is listed".to_string(),
                    |s| format!("the largest is `{}` with {}", s.name, s.chips()),
                ),
            });
        };
        out.system = Some(SystemLayout { spec: spec.clone(), chips });
        Ok(out)
    }

    /// Chips this spec simulates (1 without a system).
    pub fn chips(&self) -> u32 {
        self.system.as_ref().map_or(1, |s| s.chips)
    }

    /// NeuronCores over all chips; core `g` is on chip `g / chip.cores`.
    pub fn total_cores(&self) -> u32 {
        self.chips().saturating_mul(self.chip.cores)
    }

    /// The chip holding global core `core`.
    pub fn chip_of_core(&self, core: u32) -> u32 {
        core / self.chip.cores.max(1)
    }

    /// HBM window `(base, len)` of chip `chip`: HBM is one address space in
    /// which chip `c` owns `[c·hbm_bytes, (c+1)·hbm_bytes)` (pooled across
    /// chips, HW-TOPO-TRN2).
    pub fn hbm_window(&self, chip: u32) -> (u64, u64) {
        (chip as u64 * self.chip.hbm_bytes, self.chip.hbm_bytes)
    }

    /// Bytes of the HBM address space over all chips.
    pub fn total_hbm_bytes(&self) -> u64 {
        self.chips() as u64 * self.chip.hbm_bytes
    }

    /// The chip whose HBM window holds byte address `addr`, `None` past the last chip.
    pub fn chip_of_hbm(&self, addr: u64) -> Option<u32> {
        let chip = addr / self.chip.hbm_bytes.max(1);
        (chip < self.chips() as u64).then_some(chip as u32)
    }

    /// The directed links from `src` chip to `dst` chip (empty on one chip).
    pub fn route(&self, src: u32, dst: u32) -> Vec<u32> {
        self.system.as_ref().map(|s| s.route(src, dst)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(chip: &str, chips: u32) -> SystemLayout {
        ChipSpec::by_name(chip).unwrap().with_chips(chips).unwrap().system.unwrap()
    }

    #[test]
    fn smallest_system_that_fits_is_chosen() {
        let trn2 = ChipSpec::by_name("trn2").unwrap();
        assert_eq!(trn2.with_chips(2).unwrap().system.unwrap().spec.name, "trn2.48xlarge");
        assert_eq!(trn2.with_chips(16).unwrap().system.unwrap().spec.name, "trn2.48xlarge");
        assert_eq!(trn2.with_chips(17).unwrap().system.unwrap().spec.name, "trn2-ultraserver");
        let one = trn2.with_chips(1).unwrap();
        assert_eq!((one.chips(), one.total_cores(), one.system.is_none()), (1, 8, true));
        let err = trn2.with_chips(65).unwrap_err().to_string();
        assert!(err.contains("trn2") && err.contains("65") && err.contains("trn2-ultraserver"), "{err}");
        assert!(trn2.with_chips(0).is_err());
        let inf2 = ChipSpec::by_name("inf2").unwrap();
        assert_eq!(inf2.with_chips(4).unwrap().system.unwrap().spec.name, "inf2.24xlarge");
        assert_eq!(inf2.with_chips(12).unwrap().system.unwrap().spec.topology, Topology::Ring);
    }

    #[test]
    fn global_cores_and_hbm_windows() {
        let c = ChipSpec::by_name("trn2").unwrap().with_chips(4).unwrap();
        assert_eq!(
            (c.chips(), c.total_cores(), c.chip_of_core(7), c.chip_of_core(8), c.chip_of_core(31)),
            (4, 32, 0, 1, 3)
        );
        let gib96 = 96u64 << 30;
        assert_eq!(c.hbm_window(2), (2 * gib96, gib96));
        assert_eq!((c.chip_of_hbm(0), c.chip_of_hbm(gib96), c.chip_of_hbm(4 * gib96)), (Some(0), Some(1), None));
        assert_eq!(c.total_hbm_bytes(), 4 * gib96);
    }

    #[test]
    fn torus_routes_are_dimension_ordered_and_short() {
        let s = system("trn2", 16);
        assert_eq!(s.link_count(), 16 * 2 * 2);
        let names = |r: Vec<u32>| r.into_iter().map(|l| s.link(l).unwrap().name).collect::<Vec<_>>();
        assert_eq!(names(s.route(0, 1)), ["chip0.x+"]);
        // x first, the short way round the 4-ring (0 → 3 is one step `-`), then y.
        assert_eq!(names(s.route(0, 7)), ["chip0.x-", "chip3.y+"]);
        assert_eq!(names(s.route(0, 10)), ["chip0.x+", "chip1.x+", "chip2.y+", "chip6.y+"]);
        assert_eq!(s.route(5, 5), Vec::<u32>::new());
        assert_eq!(s.link(s.route(0, 1)[0]).unwrap().gbps, 256.0);
        let us = system("trn2", 64);
        let r = us.route(0, 16);
        assert_eq!(
            (r.len(), us.link(r[0]).unwrap().name.as_str(), us.link(r[0]).unwrap().gbps),
            (1, "chip0.z+", 128.0)
        );
    }

    #[test]
    fn ring_and_switch_routes() {
        let ring = system("inf2", 12);
        assert_eq!(ring.route(0, 11).len(), 1);
        assert_eq!(ring.route(0, 6).len(), 6);
        let sw = system("trn3", 64);
        let names = |r: Vec<u32>| r.into_iter().map(|l| sw.link(l).unwrap().name).collect::<Vec<_>>();
        assert_eq!(names(sw.route(0, 5)), ["chip0.up.x", "chip5.down.x"]);
        assert_eq!(names(sw.route(0, 21)), ["chip0.up.y", "chip21.down.y"]);
    }

    #[test]
    fn every_link_id_names_one_link() {
        for (chip, n) in [("trn1", 16), ("inf2", 12), ("trn2", 64), ("trn3", 64)] {
            let s = system(chip, n);
            let mut seen = std::collections::HashSet::new();
            for id in 0..s.link_count() as u32 {
                let l = s.link(id).unwrap();
                assert!(l.gbps > 0.0 && seen.insert(l.name.clone()), "{chip}: {}", l.name);
            }
            assert!(s.link(s.link_count() as u32).is_none());
            for a in 0..n {
                for b in 0..n {
                    let r = s.route(a, b);
                    assert!(r.iter().all(|&l| (l as usize) < s.link_count()));
                    assert_eq!(r.is_empty(), a == b, "{chip} {a}->{b}");
                }
            }
        }
    }

    fn err_of(text: &str) -> String {
        ChipSpec::from_toml_str(text, Path::new("x.toml")).unwrap_err().to_string()
    }

    #[test]
    fn bad_systems_are_named() {
        let text = crate::BUNDLED_CHIPS[2].1;
        let e = err_of(&text.replacen("shape = [4, 4]", "shape = [4, 1]", 1));
        assert!(e.contains("x.toml") && e.contains("systems[0].shape") && e.contains("trn2.48xlarge"), "{e}");
        let e = err_of(&text.replacen("link_gbps = [256.0, 256.0]", "link_gbps = [256.0]", 1));
        assert!(e.contains("systems[0].link_gbps"), "{e}");
        let e = err_of(&text.replacen("link_gbps = [256.0, 256.0]", "link_gbps = [512.0, 256.0]", 1));
        assert!(e.contains("systems[0].link_gbps") && e.contains("chip.link_gbps"), "{e}");
        let e = err_of(&text.replacen("topology = \"torus\"", "topology = \"mesh\"", 1));
        assert!(e.contains("mesh"), "{e}");
        let e = err_of(&text.replacen("hop_latency_ns = 1000.0", "hop_latency_ns = -1.0", 1));
        assert!(e.contains("systems[0].hop_latency_ns"), "{e}");
        let e = err_of(&text.replacen("hop_latency_ns = 1000.0", "hop_latency_ns = 1000.0\nhops = 2", 1));
        assert!(e.contains("hops"), "{e}");
    }
}
