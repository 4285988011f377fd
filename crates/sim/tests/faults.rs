//! Faults on deliberately broken programs: races (RAW, WAR, WAW, PSUM,
//! cross-core HBM), no false races on ordered or disjoint accesses,
//! deadlocks, invalid programs and host-side tensor errors.

mod common;

use common::chip;
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, Ap, Dim, Engine, Inst, InstId, Op, Operand, Program, Space, TensorDecl, TensorKind, Unit};
use trainyard_sim::{AccessSite, Mode, SimError, SimOptions, Simulator};

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

fn inst(op: Op, deps: &[InstId]) -> Inst {
    let mut i = Inst::new(op);
    i.deps = deps.to_vec();
    i
}

fn on_core(mut i: Inst, core: u16) -> Inst {
    i.core = core;
    i
}

fn run(chip: &ChipSpec, p: &Program, opts: SimOptions) -> Result<(), SimError> {
    let mut sim = Simulator::new(chip, p, opts)?;
    sim.run().map(|_| ())
}

fn run_default(p: &Program) -> Result<(), SimError> {
    run(&chip("trn2"), p, SimOptions::default())
}

/// A program with one f32 input `x` [128, 64] and one output `y` of the same shape.
fn io_program(name: &str) -> Program {
    let mut p = Program::new(name);
    let t = |name: &str, kind, offset| TensorDecl {
        name: name.into(),
        kind,
        dtype: DType::F32,
        shape: vec![128, 64],
        offset,
    };
    p.tensors.push(t("x", TensorKind::Input, 0));
    p.tensors.push(t("y", TensorKind::Output, 128 * 64 * 4));
    p
}

fn x_hbm() -> Ap {
    Ap::hbm(0, 128, &[64], DType::F32)
}

fn y_hbm() -> Ap {
    Ap::hbm(128 * 64 * 4, 128, &[64], DType::F32)
}

fn tile(offset: u64) -> Ap {
    sbuf(128, offset, &[64], DType::F32)
}

fn exp(dst: Ap, src: Ap) -> Op {
    Op::Activation { func: ActFn::Exp, dst, src, scale: Operand::Imm(1.0), bias: None, acc: None }
}

fn load(queue: u8, dst: Ap) -> Op {
    Op::DmaCopy { queue, dst, src: x_hbm() }
}

/// The race's two sites, ordered by instruction id.
fn race_sites(r: Result<(), SimError>) -> (String, AccessSite, AccessSite) {
    match r {
        Err(SimError::Race { space, first, second }) => {
            let msg = SimError::Race { space: space.clone(), first: first.clone(), second: second.clone() }.to_string();
            assert!(msg.contains(&first.inst.to_string()) && msg.contains(&second.inst.to_string()), "{msg}");
            assert!(msg.contains(first.operand) && msg.contains(second.operand), "{msg}");
            if first.inst < second.inst {
                (space, first, second)
            } else {
                (space, second, first)
            }
        }
        other => panic!("expected a race, got {other:?}"),
    }
}

fn site(s: &AccessSite) -> (u32, &'static str, &'static str, bool, u16) {
    (s.inst.0, s.mnemonic, s.operand, s.write, s.core)
}

// ---------------------------------------------------------------------------
// Races

#[test]
fn raw_race_between_a_load_and_a_reader_without_a_dependency() {
    let mut p = io_program("raw");
    p.push(Inst::new(load(0, tile(0))));
    p.push(Inst::new(exp(tile(1024), tile(0))));
    let (space, a, b) = race_sites(run_default(&p));
    assert!(space.contains("sbuf") && space.contains("core 0"), "{space}");
    assert_eq!(site(&a), (0, "dma_copy", "dst", true, 0));
    assert_eq!(site(&b), (1, "activation", "src", false, 0));
    assert_eq!((a.unit, b.unit), (Unit::Dma(0), Unit::Engine(Engine::Scalar)));
}

#[test]
fn raw_race_is_found_in_timed_only_mode_too_and_not_when_checks_are_off() {
    let mut p = io_program("raw_timed");
    p.push(Inst::new(load(0, tile(0))));
    p.push(Inst::new(exp(tile(1024), tile(0))));
    let c = chip("trn2");
    let timed = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
    race_sites(run(&c, &p, timed.clone()));
    run(&c, &p, SimOptions { check_races: false, ..timed }).unwrap();
    run(&c, &p, SimOptions { check_races: false, ..SimOptions::default() }).unwrap();
}

#[test]
fn war_race_between_a_reader_and_a_later_load() {
    let mut p = io_program("war");
    let l1 = p.push(Inst::new(load(0, tile(0))));
    p.push(inst(exp(tile(1024), tile(0)), &[l1]));
    // Same queue, so after the first load, but not after the reader.
    p.push(Inst::new(load(0, tile(0))));
    let (_, a, b) = race_sites(run_default(&p));
    assert_eq!(site(&a), (1, "activation", "src", false, 0));
    assert_eq!(site(&b), (2, "dma_copy", "dst", true, 0));
}

#[test]
fn waw_race_between_two_queues() {
    let mut p = io_program("waw");
    p.push(Inst::new(load(0, tile(0))));
    // Overlaps the first tile by half.
    p.push(Inst::new(Op::DmaCopy { queue: 1, dst: tile(128), src: x_hbm() }));
    let (_, a, b) = race_sites(run_default(&p));
    assert_eq!(site(&a), (0, "dma_copy", "dst", true, 0));
    assert_eq!(site(&b), (1, "dma_copy", "dst", true, 0));
}

#[test]
fn psum_race_between_a_matmul_and_its_eviction() {
    let mut p = io_program("psum");
    let st = sbuf(128, 0, &[128], DType::Bf16);
    let mv = sbuf(128, 256, &[64], DType::Bf16);
    let ps = Ap::psum(0, 128, 0, &[64], DType::F32);
    p.push(Inst::new(Op::MatMul { dst: ps, stationary: st, moving: mv, start: true, stop: true }));
    p.push(Inst::new(Op::Copy { engine: Engine::Vector, dst: tile(4096), src: ps }));
    let (space, a, b) = race_sites(run_default(&p));
    assert!(space.contains("psum"), "{space}");
    assert_eq!(site(&a), (0, "matmul", "dst", true, 0));
    assert_eq!(site(&b), (1, "copy", "src", false, 0));
}

#[test]
fn no_race_when_ordered_directly_or_transitively() {
    let mut p = io_program("ordered");
    let l = p.push(Inst::new(load(0, tile(0))));
    let a = p.push(inst(exp(tile(1024), tile(0)), &[l]));
    let s = p.push(inst(Op::DmaCopy { queue: 1, dst: y_hbm(), src: tile(1024) }, &[a]));
    // Overwrites the loaded tile: after the reader only through the store.
    let r = p.push(inst(load(2, tile(0)), &[s]));
    // And reads the reloaded tile after a chain through another engine.
    let v = p.push(inst(Op::Copy { engine: Engine::Vector, dst: tile(2048), src: tile(0) }, &[r]));
    p.push(inst(Op::DmaCopy { queue: 3, dst: tile(1024), src: tile(2048) }, &[v]));
    run_default(&p).unwrap();
    run(&chip("trn1"), &p, SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() }).unwrap();
}

#[test]
fn no_race_for_interleaved_strided_writes_on_two_engines() {
    let mut p = io_program("interleaved");
    // Even columns on Vector, odd columns on GpSimd: same bounding box, no shared byte.
    let even = Ap::new(Space::Sbuf, 0, 128, 0, 0, &[Dim { stride: 2, size: 32 }], DType::F32);
    let odd = Ap::new(Space::Sbuf, 0, 128, 0, 4, &[Dim { stride: 2, size: 32 }], DType::F32);
    let a = p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: even, value: 1.0 }));
    let b = p.push(Inst::new(Op::Memset { engine: Engine::GpSimd, dst: odd, value: 2.0 }));
    p.push(inst(Op::DmaCopy { queue: 0, dst: y_hbm(), src: tile(0) }, &[a, b]));
    let c = chip("trn2");
    let mut sim = Simulator::new(&c, &p, SimOptions::default()).unwrap();
    sim.run().unwrap();
    let y = sim.read_tensor("y").unwrap();
    let vals: Vec<f32> = y.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert!(vals.iter().enumerate().all(|(i, &v)| v == if i % 2 == 0 { 1.0 } else { 2.0 }));
    // Missing one of the store's dependencies is a race with that writer.
    p.insts[2].deps = vec![a];
    let (_, w, r) = race_sites(run_default(&p));
    assert_eq!((w.inst, r.inst), (b, InstId(2)));
}

#[test]
fn no_race_between_disjoint_partitions_or_two_readers() {
    let mut p = io_program("disjoint");
    let top = Ap::sbuf(0, 64, 0, &[64], DType::F32);
    let bottom = Ap::sbuf(64, 64, 0, &[64], DType::F32);
    p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: top, value: 1.0 }));
    p.push(Inst::new(Op::Memset { engine: Engine::GpSimd, dst: bottom, value: 2.0 }));
    // Two unordered readers of one tile on different units.
    p.push(Inst::new(exp(tile(1024), tile(4096))));
    p.push(Inst::new(Op::Copy { engine: Engine::Vector, dst: tile(2048), src: tile(4096) }));
    p.push(Inst::new(Op::DmaCopy { queue: 4, dst: y_hbm(), src: tile(4096) }));
    run_default(&p).unwrap();
}

#[test]
fn cross_core_hbm_races() {
    // Two cores store to the same output rows with no ordering.
    let mut p = io_program("two_cores");
    p.push(on_core(Inst::new(Op::Memset { engine: Engine::Vector, dst: tile(0), value: 1.0 }), 0));
    p.push(on_core(Inst::new(Op::Memset { engine: Engine::Vector, dst: tile(0), value: 2.0 }), 1));
    p.push(on_core(inst(Op::DmaCopy { queue: 0, dst: y_hbm(), src: tile(0) }, &[InstId(0)]), 0));
    p.push(on_core(inst(Op::DmaCopy { queue: 0, dst: y_hbm(), src: tile(0) }, &[InstId(1)]), 1));
    let (space, a, b) = race_sites(run_default(&p));
    assert_eq!(space, "hbm");
    assert_eq!(site(&a), (2, "dma_copy", "dst", true, 0));
    assert_eq!(site(&b), (3, "dma_copy", "dst", true, 1));
    // Ordering the second store after the first (a cross-core wait) removes the race;
    // the same SBUF addresses on two cores never conflict.
    p.insts[3].deps.push(InstId(2));
    run_default(&p).unwrap();

    // Core 0 writes HBM, core 1 reads it: a race unless core 1 waits.
    let mut p = io_program("handoff");
    p.push(on_core(Inst::new(Op::Memset { engine: Engine::Vector, dst: tile(0), value: 3.0 }), 0));
    p.push(on_core(inst(Op::DmaCopy { queue: 0, dst: y_hbm(), src: tile(0) }, &[InstId(0)]), 0));
    p.push(on_core(Inst::new(Op::DmaCopy { queue: 0, dst: tile(0), src: y_hbm() }), 1));
    let (space, a, b) = race_sites(run_default(&p));
    assert_eq!(space, "hbm");
    assert_eq!(site(&a), (1, "dma_copy", "dst", true, 0));
    assert_eq!(site(&b), (2, "dma_copy", "src", false, 1));
    p.insts[2].deps.push(InstId(1));
    run_default(&p).unwrap();
}

// ---------------------------------------------------------------------------
// Long programs: the race checker retires old records as it goes.

/// A double-buffered pipeline of `iters` load → activation → store rounds,
/// each with its RAW and WAR dependencies; `skip_raw` drops the RAW
/// dependency of one round's activation.
fn pipeline(iters: u32, skip_raw: Option<u32>) -> (Program, Vec<[InstId; 3]>) {
    let mut p = Program::new("pipeline");
    let t = |name: &str, kind, rows: u64, offset| TensorDecl {
        name: name.into(),
        kind,
        dtype: DType::F32,
        shape: vec![rows, 8],
        offset,
    };
    p.tensors.push(t("x", TensorKind::Input, 128, 0));
    p.tensors.push(t("y", TensorKind::Output, 128 * iters as u64, 4096));
    let mut rounds: Vec<[InstId; 3]> = Vec::new();
    for it in 0..iters {
        let b = (it % 2) as u64;
        let inp = sbuf(128, b * 64, &[8], DType::F32);
        let out = sbuf(128, 256 + b * 64, &[8], DType::F32);
        let back2 = (it >= 2).then(|| rounds[(it - 2) as usize]);
        // The load overwrites what the activation two rounds back read.
        let l = p.push(inst(
            Op::DmaCopy { queue: (it % 4) as u8, dst: inp, src: Ap::hbm(0, 128, &[8], DType::F32) },
            &back2.map(|r| vec![r[1]]).unwrap_or_default(),
        ));
        let mut deps = vec![l];
        if skip_raw == Some(it) {
            deps.clear();
        }
        // The activation overwrites what the store two rounds back read.
        deps.extend(back2.map(|r| r[2]));
        let a = p.push(inst(exp(out, inp), &deps));
        let y = Ap::hbm(4096 + it as u64 * 128 * 8 * 4, 128, &[8], DType::F32);
        let s = p.push(inst(Op::DmaCopy { queue: 4 + (it % 4) as u8, dst: y, src: out }, &[a]));
        rounds.push([l, a, s]);
    }
    (p, rounds)
}

#[test]
fn long_pipeline_has_no_false_races() {
    let (p, _) = pipeline(300, None);
    for chip_name in ["trn1", "trn2"] {
        for mode in [Mode::Functional, Mode::TimedOnly] {
            run(&chip(chip_name), &p, SimOptions { mode, ..SimOptions::default() }).unwrap();
        }
    }
}

#[test]
fn late_race_in_a_long_program_is_found() {
    for late in [3u32, 150, 290] {
        let (p, rounds) = pipeline(300, Some(late));
        let (_, a, b) = race_sites(run_default(&p));
        let [l, act, _] = rounds[late as usize];
        assert_eq!((a.inst, a.operand, b.inst, b.operand), (l, "dst", act, "src"), "round {late}");
    }
}

#[test]
fn race_with_an_early_write_survives_hundreds_of_later_instructions() {
    // Dispatch order: the Vector write and 200 other Vector instructions, then
    // 200 Scalar ones (the checker retires old records every 256 dispatches),
    // then the GpSimd read that waits only on the last Scalar instruction.
    // (Units start in reverse order of their first instruction.)
    let mut p = io_program("early");
    let shared = sbuf(128, 0, &[8], DType::F32);
    let read = Op::Copy { engine: Engine::GpSimd, dst: sbuf(128, 16384, &[8], DType::F32), src: shared };
    let r = p.push(Inst::new(read));
    let mut last_scalar = r;
    for k in 0..200u64 {
        let dst = sbuf(128, 4096 + (k % 16) * 32, &[8], DType::F32);
        last_scalar = p.push(Inst::new(exp(dst, sbuf(128, 8192, &[8], DType::F32))));
    }
    let w = p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: shared, value: 1.0 }));
    for k in 0..200u64 {
        let dst = sbuf(128, 1024 + (k % 16) * 32, &[8], DType::F32);
        p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst, value: k as f64 }));
    }
    p.insts[r.0 as usize].deps = vec![last_scalar];
    let (_, a, b) = race_sites(run_default(&p));
    assert_eq!((a.inst, a.operand, a.write), (r, "src", false));
    assert_eq!((b.inst, b.operand, b.write), (w, "dst", true));
    // Ordered after the write as well: no race.
    p.insts[r.0 as usize].deps.push(w);
    run_default(&p).unwrap();
}

// ---------------------------------------------------------------------------
// Deadlock

#[test]
fn deadlock_cycle_through_queue_order_is_reported_with_its_instructions() {
    // A (vector) waits for B (scalar); B waits for C, queued on vector behind A.
    let mut p = io_program("deadlock");
    let t = |o| sbuf(128, o, &[8], DType::F32);
    p.push(inst(Op::Copy { engine: Engine::Vector, dst: t(0), src: t(64) }, &[InstId(1)]));
    p.push(inst(exp(t(128), t(192)), &[InstId(2)]));
    p.push(Inst::new(Op::Copy { engine: Engine::Vector, dst: t(256), src: t(320) }));
    // Loading does not search for cycles; the run finds it and names the cycle.
    let mut sim = Simulator::new(&chip("trn2"), &p, SimOptions::default()).unwrap();
    match sim.run() {
        Err(SimError::Deadlock { cycle }) => {
            let mut ids: Vec<u32> = cycle.iter().map(|(i, _)| i.0).collect();
            ids.sort_unstable();
            assert_eq!(ids, [0, 1, 2], "{cycle:?}");
        }
        other => panic!("expected a deadlock, got {:?}", other.err()),
    }
    // `trainyard check` (validate_all) reports the same cycle before any run.
    let msg = trainyard_isa::validate(&p, &chip("trn2")).unwrap_err().to_string();
    assert!(msg.contains("deadlock") && msg.contains("%0") && msg.contains("%2"), "{msg}");
}

#[test]
fn deadlock_error_formats_its_cycle() {
    let e =
        SimError::Deadlock { cycle: vec![(InstId(0), "core 0 vector".into()), (InstId(1), "core 0 scalar".into())] };
    assert_eq!(
        e.to_string(),
        "deadlock: cycle of waits %0 on core 0 vector waits for %1 on core 0 scalar waits for %0 on core 0 vector"
    );
}

// ---------------------------------------------------------------------------
// Invalid programs

fn invalid(p: &Program, chip_name: &str) -> String {
    match Simulator::new(&chip(chip_name), p, SimOptions::default()) {
        Err(SimError::Invalid(msg)) => msg,
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("{} was accepted", p.name),
    }
}

#[test]
fn invalid_programs_are_rejected_naming_the_instruction() {
    let ok = Inst::new(Op::Memset { engine: Engine::Vector, dst: tile(0), value: 0.0 });
    // SBUF overflow: trn1 has 196608 bytes per partition.
    let mut p = io_program("overflow");
    p.push(ok.clone());
    p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: sbuf(128, 196600, &[64], DType::F32), value: 0.0 }));
    let msg = invalid(&p, "trn1");
    assert!(msg.contains("%1") && msg.contains("memset") && msg.contains("dst") && msg.contains("196608"), "{msg}");
    // The same offset fits trn2's 224 KiB partitions.
    Simulator::new(&chip("trn2"), &p, SimOptions::default()).unwrap();

    // More than 128 partitions.
    let mut p = io_program("partitions");
    p.push(ok.clone());
    p.push(ok.clone());
    p.push(Inst::new(Op::Copy { engine: Engine::Vector, dst: sbuf(129, 0, &[4], DType::F32), src: tile(4096) }));
    let msg = invalid(&p, "trn2");
    assert!(msg.contains("%2") && msg.contains("copy") && msg.contains("129"), "{msg}");

    // Moving free size above 512.
    let mut p = io_program("moving");
    let st = sbuf(128, 0, &[128], DType::Bf16);
    let mv = sbuf(128, 256, &[513], DType::Bf16);
    let dst = Ap::psum(0, 128, 0, &[513], DType::F32);
    p.push(Inst::new(Op::MatMul { dst, stationary: st, moving: mv, start: true, stop: true }));
    let msg = invalid(&p, "trn2");
    assert!(msg.contains("%0") && msg.contains("matmul") && msg.contains("moving") && msg.contains("513"), "{msg}");

    // A core the chip does not have, a queue past 16, a dependency that does not exist.
    let mut p = io_program("core");
    p.push(on_core(ok.clone(), 2));
    assert!(invalid(&p, "trn1").contains("core 2"));
    let mut p = io_program("queue");
    p.push(Inst::new(load(16, tile(0))));
    assert!(invalid(&p, "trn2").contains("queue 16"));
    let mut p = io_program("dep");
    p.push(inst(Op::Memset { engine: Engine::Vector, dst: tile(0), value: 0.0 }, &[InstId(7)]));
    assert!(invalid(&p, "trn2").contains("%7"));
    // HBM outside every tensor.
    let mut p = io_program("hbm");
    p.push(Inst::new(Op::DmaCopy { queue: 0, dst: tile(0), src: Ap::hbm(1 << 20, 128, &[64], DType::F32) }));
    let msg = invalid(&p, "trn2");
    assert!(msg.contains("%0") && msg.contains("src"), "{msg}");
}

// ---------------------------------------------------------------------------
// Host-side tensor errors

#[test]
fn tensor_binding_errors() {
    let mut p = io_program("io");
    p.push(Inst::new(load(0, tile(0))));
    let c = chip("trn2");
    let mut sim = Simulator::new(&c, &p, SimOptions::default()).unwrap();
    match sim.write_tensor("x", &[0u8; 100]) {
        Err(SimError::TensorSize { name, expected, got }) => {
            assert_eq!((name.as_str(), expected, got), ("x", 32768, 100))
        }
        other => panic!("expected TensorSize, got {other:?}"),
    }
    let msg = sim.write_tensor("x", &[0u8; 100]).unwrap_err().to_string();
    assert!(msg.contains("`x`") && msg.contains("32768") && msg.contains("100"), "{msg}");
    assert!(matches!(sim.write_tensor("nope", &[]), Err(SimError::UnknownTensor(n)) if n == "nope"));
    assert!(matches!(sim.read_tensor("nope"), Err(SimError::UnknownTensor(n)) if n == "nope"));
    assert!(sim.read_tensor("nope").unwrap_err().to_string().contains("nope"));
    sim.write_tensor("x", &vec![0u8; 32768]).unwrap();
    sim.run().unwrap();
    assert_eq!(sim.read_tensor("y").unwrap().len(), 32768);

    // Timed-only runs hold no values.
    let mut sim = Simulator::new(&c, &p, SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() }).unwrap();
    assert!(matches!(sim.write_tensor("x", &vec![0u8; 32768]), Err(SimError::NoValues)));
    sim.run().unwrap();
    assert!(matches!(sim.read_tensor("y"), Err(SimError::NoValues)));
    // Size and name are still checked first.
    assert!(matches!(sim.write_tensor("x", &[0u8; 3]), Err(SimError::TensorSize { .. })));
}
