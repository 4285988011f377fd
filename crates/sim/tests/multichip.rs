//! Multi-chip systems on one clock: remote transfers over the modelled links
//! (bandwidth, per-hop latency, sharing), per-chip HBM caps, values moved
//! between chips' HBM, and races across chips.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{Ap, Dim, Inst, InstId, Op, Program, Space, TensorDecl, TensorKind};
use trainyard_sim::dma::{transfer_shape, transfer_work_ns};
use trainyard_sim::{Mode, RunResult, SimError, SimOptions, Simulator};

fn system(name: &str, chips: u32) -> ChipSpec {
    ChipSpec::by_name(name).unwrap().with_chips(chips).unwrap()
}

fn timed(chip: &ChipSpec, p: &Program) -> RunResult {
    let opts = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
    Simulator::new(chip, p, opts).unwrap().run().unwrap()
}

/// Declares `[rows, cols]` f32 in chip `on`'s HBM after that chip's existing tensors.
fn tensor(p: &mut Program, chip: &ChipSpec, on: u32, rows: u64, cols: u64) -> Ap {
    let (base, len) = chip.hbm_window(on);
    let end = p.tensors.iter().map(|t| t.span().1).filter(|&e| e > base && e <= base + len).max().unwrap_or(base);
    let offset = end.div_ceil(64) * 64;
    let name = format!("t{}", p.tensors.len());
    p.tensors.push(TensorDecl { name, kind: TensorKind::Input, dtype: DType::F32, shape: vec![rows, cols], offset });
    Ap::new(Space::Hbm, 0, rows as u32, cols as i64, offset, &[Dim { stride: 1, size: cols as u32 }], DType::F32)
}

/// An HBM→HBM copy of 128 × `cols` f32 from chip `from` to chip `to`, issued
/// by `core`; the source rows are every other row of a wider matrix, so the
/// copy has 128 descriptors and uses all 16 DMA engines of the core.
fn copy(p: &mut Program, chip: &ChipSpec, core: u16, from: u32, to: u32, cols: u64) -> InstId {
    let wide = tensor(p, chip, from, 128, 2 * cols);
    let src =
        Ap::new(Space::Hbm, 0, 128, 2 * cols as i64, wide.offset, &[Dim { stride: 1, size: cols as u32 }], DType::F32);
    let dst = tensor(p, chip, to, 128, cols);
    let mut i = Inst::new(Op::DmaCopy { queue: (p.insts.len() % 16) as u8, dst, src });
    i.core = core;
    p.push(i)
}

fn close(got_ps: u64, want_ns: f64) -> bool {
    (got_ps as f64 / 1000.0 - want_ns).abs() / want_ns < 0.005
}

const COLS: u64 = 8192; // 4 MiB per copy

#[test]
fn remote_copy_takes_bytes_over_link_bandwidth_plus_hop_latency() {
    let c = system("trn2", 16);
    let s = c.system.as_ref().unwrap();
    let (fixed, hop) = (c.core.dma.fixed_latency_ns, s.spec.hop_latency_ns);
    let link = s.spec.link_gbps[1];
    let bytes = 128.0 * COLS as f64 * 4.0;
    for (to, hops) in [(1, 1.0), (2, 2.0), (5, 2.0)] {
        let mut p = Program::new("remote");
        copy(&mut p, &c, 0, 0, to, COLS);
        let r = timed(&c, &p);
        let want = fixed + hops * hop + bytes / link;
        assert!(close(r.total_ps, want), "to chip {to}: {} ns vs {want}", r.total_ps / 1000);
        assert_eq!(r.link_bytes, (hops * bytes) as u64, "to chip {to}");
        assert_eq!(r.links.len(), hops as usize);
        assert!(r.links.iter().all(|l| close(l.busy_ps, bytes / link)), "{:?}", r.links);
    }
    // The same copy inside one chip is not link-bound: the DMA engines and HBM decide.
    let mut p = Program::new("local");
    copy(&mut p, &c, 0, 0, 0, COLS);
    let r = timed(&c, &p);
    let shape = transfer_shape(&c, &p.insts[0].op).unwrap();
    let want = fixed + transfer_work_ns(&c, &shape) / shape.max_engines as f64;
    assert!(close(r.total_ps, want) && r.links.is_empty() && r.link_bytes == 0, "{}", r.total_ps);
}

#[test]
fn transfers_sharing_a_link_take_twice_as_long_and_disjoint_links_do_not_interfere() {
    let c = system("trn2", 16);
    let s = c.system.as_ref().unwrap();
    let (fixed, hop) = (c.core.dma.fixed_latency_ns, s.spec.hop_latency_ns);
    let bytes = 128.0 * COLS as f64 * 4.0;
    let link = s.spec.link_gbps[1];
    // Cores 0 and 1 (both on chip 0) send to chip 1 over the same link chip0.x+.
    let mut p = Program::new("shared");
    copy(&mut p, &c, 0, 0, 1, COLS);
    copy(&mut p, &c, 1, 0, 1, COLS);
    let r = timed(&c, &p);
    let want = fixed + hop + 2.0 * bytes / link;
    assert!(r.events.iter().all(|e| close(e.end_ps, want)), "{:?} vs {want}", r.events);
    // chip0 → chip1 and chip1 → chip2 use different links: each as fast as alone.
    let mut p = Program::new("disjoint");
    copy(&mut p, &c, 0, 0, 1, COLS);
    copy(&mut p, &c, 8, 1, 2, COLS);
    copy(&mut p, &c, 16, 2, 1, COLS); // the opposite direction is its own link
    let r = timed(&c, &p);
    let want = fixed + hop + bytes / link;
    assert!(r.events.iter().all(|e| close(e.end_ps, want)), "{:?} vs {want}", r.events);
    assert_eq!(r.links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["chip0.x+", "chip1.x+", "chip2.x-"]);
}

#[test]
fn each_chip_has_its_own_hbm_bandwidth() {
    let c = system("trn2", 2);
    // Eight cores of chip 0 copying HBM→HBM locally saturate chip 0's HBM.
    let mut one = Program::new("one chip");
    for core in 0..8 {
        copy(&mut one, &c, core, 0, 0, 512);
    }
    let alone = timed(&c, &one).total_ps;
    let bytes = 8.0 * 2.0 * 128.0 * 512.0 * 4.0;
    assert!(close(alone, c.core.dma.fixed_latency_ns + bytes / c.chip.hbm_gbps), "{alone}");
    // The same on chip 1 at once: chip 1's HBM is separate, so nothing slows down.
    let mut two = one.clone();
    for core in 8..16 {
        copy(&mut two, &c, core, 1, 1, 512);
    }
    assert_eq!(timed(&c, &two).total_ps, alone);
}

#[test]
fn one_chip_of_a_system_times_like_the_chip() {
    let plain = ChipSpec::by_name("trn2").unwrap();
    let sys = system("trn2", 4);
    let mut p = Program::new("local");
    for core in 0..3 {
        copy(&mut p, &plain, core, 0, 0, 1000);
    }
    assert_eq!(timed(&plain, &p).total_ps, timed(&sys, &p).total_ps);
    assert_eq!(timed(&plain, &p).total_ps, timed(&plain.with_chips(1).unwrap(), &p).total_ps);
}

#[test]
fn values_move_between_chips_and_memory_is_only_what_is_used() {
    // Chip 3's window starts at 3 × 96 GiB: the simulator must not allocate it all.
    let c = system("trn2", 4);
    let mut p = Program::new("relay");
    let x = tensor(&mut p, &c, 3, 4, 16);
    let y = tensor(&mut p, &c, 1, 4, 16);
    assert_eq!(p.tensors[0].offset, 3 * c.chip.hbm_bytes);
    p.tensors[1].kind = TensorKind::Output;
    let tile = Ap::sbuf(0, 4, 0, &[16], DType::F32);
    // Core 20 (chip 2) pulls from chip 3 into its SBUF, then pushes to chip 1.
    let mut load = Inst::new(Op::DmaCopy { queue: 0, dst: tile, src: x });
    load.core = 20;
    let load = p.push(load);
    let mut store = Inst::new(Op::DmaCopy { queue: 1, dst: y, src: tile });
    store.core = 20;
    store.deps.push(load);
    p.push(store);
    let mut sim = Simulator::new(&c, &p, SimOptions::default()).unwrap();
    let bytes: Vec<u8> = (0..64).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    sim.write_tensor("t0", &bytes).unwrap();
    let r = sim.run().unwrap();
    assert_eq!(sim.read_tensor("t1").unwrap(), bytes);
    assert_eq!(r.link_bytes, 2 * 256, "one hop in (chip 3 → 2), one out (chip 2 → 1)");
}

#[test]
fn races_are_found_across_chips() {
    let c = system("trn1", 2);
    let mut p = Program::new("race");
    let shared = tensor(&mut p, &c, 1, 4, 16);
    let tile = Ap::sbuf(0, 4, 0, &[16], DType::F32);
    for core in [0u16, 2] {
        let mut w = Inst::new(Op::DmaCopy { queue: 0, dst: shared, src: tile });
        w.core = core;
        p.push(w);
    }
    let err = Simulator::new(&c, &p, SimOptions::default()).unwrap().run().unwrap_err();
    assert!(matches!(&err, SimError::Race { first, second, .. } if first.core == 0 && second.core == 2), "{err}");
}
