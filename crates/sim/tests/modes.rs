//! Modes and determinism: functional and timed-only runs agree on every
//! timing output, race checking does not change timing, and repeated runs
//! give identical results and bytes.

mod common;

use common::*;
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Ap, Dim, Engine, Inst, InstId, Op, Operand, Program, ScalarStage, Space};
use trainyard_sim::{Mode, RunResult, SimOptions, Simulator};

/// A program with its input bytes.
struct Workload {
    program: Program,
    inputs: Vec<(String, Vec<u8>)>,
    outputs: Vec<String>,
}

fn inst(op: Op, deps: &[InstId]) -> Inst {
    let mut i = Inst::new(op);
    i.deps = deps.to_vec();
    i
}

fn hbm_2d(offset: u64, rows: u32, row_stride: u32, cols: u32, d: DType) -> Ap {
    Ap::new(Space::Hbm, 0, rows, row_stride as i64, offset, &[Dim { stride: 1, size: cols }], d)
}

/// C[M, N] = Aᵀ·B with A [K, M] and B [K, N] in BF16, K and N tiled, loads
/// spread over queues, evictions alternating Vector and Scalar, stores on
/// their own queues.
fn tiled_matmul(k: u32, m: u32, n: u32) -> Workload {
    let (kt, nt) = (k / 128, n / 512);
    let mut case = Case::new("tiled_matmul");
    let mut rng = Lcg(2024);
    let a = rng.vec((k * m) as usize, -1.0, 1.0);
    let b = rng.vec((k * n) as usize, -1.0, 1.0);
    let a_off = case.hbm_input(DType::Bf16, encode(DType::Bf16, &a));
    let b_off = case.hbm_input(DType::Bf16, encode(DType::Bf16, &b));
    let (c_off, _) = case.hbm_output(DType::F32, (m * n) as u64);
    let mut queue = 0u8;
    let mut next_queue = || {
        queue = (queue + 1) % 12;
        queue
    };
    let a_tiles: Vec<(Ap, InstId)> = (0..kt)
        .map(|ki| {
            let dst = Ap::sbuf(0, 128, ki as u64 * 256, &[m], DType::Bf16);
            let src = hbm_2d(a_off + (ki * 128 * m * 2) as u64, 128, m, m, DType::Bf16);
            (dst, case.push(Inst::new(Op::DmaCopy { queue: next_queue(), dst, src })))
        })
        .collect();
    let mut b_tiles = Vec::new();
    for ki in 0..kt {
        for ni in 0..nt {
            let dst = Ap::sbuf(0, 128, 4096 + ((ki * nt + ni) * 1024) as u64, &[512], DType::Bf16);
            let src = hbm_2d(b_off + ((ki * 128 * n + ni * 512) * 2) as u64, 128, n, 512, DType::Bf16);
            b_tiles.push((dst, case.push(Inst::new(Op::DmaCopy { queue: next_queue(), dst, src }))));
        }
    }
    for ni in 0..nt {
        let psum = Ap::psum(0, m, (ni % 8) as u64 * 2048, &[512], DType::F32);
        let mut last = None;
        for ki in 0..kt {
            let (st, la) = a_tiles[ki as usize];
            let (mv, lb) = b_tiles[(ki * nt + ni) as usize];
            let mm = Op::MatMul { dst: psum, stationary: st, moving: mv, start: ki == 0, stop: ki == kt - 1 };
            last = Some(case.push(inst(mm, &[la, lb])));
        }
        let last = last.unwrap_or(InstId(0));
        let out = Ap::sbuf(0, m, 65536 + (ni * 2048) as u64, &[512], DType::F32);
        let evict = if ni % 2 == 0 {
            Op::Copy { engine: Engine::Vector, dst: out, src: psum }
        } else {
            Op::Activation {
                func: ActFn::Identity,
                dst: out,
                src: psum,
                scale: Operand::Imm(1.0),
                bias: None,
                acc: None,
            }
        };
        let e = case.push(inst(evict, &[last]));
        let dst = hbm_2d(c_off + (ni * 512 * 4) as u64, m, n, 512, DType::F32);
        let q = 12 + (ni % 4) as u8;
        case.push(inst(Op::DmaCopy { queue: q, dst, src: out }, &[e]));
    }
    workload(case)
}

fn workload(case: Case) -> Workload {
    Workload { inputs: case.inputs().to_vec(), outputs: case.outputs().to_vec(), program: case.program }
}

/// Each of `cores` cores takes `rows` rows of X: exp on Scalar, a two-stage
/// tensor_scalar on Vector, a GpSimd add, a store; core 0's store waits for
/// the others' (a cross-core dependency).
fn multi_core(cores: u16, rows: u32, cols: u32) -> Workload {
    let mut case = Case::new("multi_core");
    let total = cores as u32 * rows;
    let x = Lcg(31).vec((total * cols) as usize, -2.0, 2.0);
    let x_off = case.hbm_input(DType::F32, encode(DType::F32, &x));
    let (y_off, _) = case.hbm_output(DType::Bf16, (total * cols) as u64);
    let mut stores = Vec::new();
    let mut core0_store = None;
    for core in 0..cores {
        let row0 = core as u32 * rows;
        let on = |mut i: Inst| {
            i.core = core;
            i
        };
        let x = Ap::sbuf(0, rows, 0, &[cols], DType::F32);
        let e = Ap::sbuf(0, rows, 8192, &[cols], DType::F32);
        let t = Ap::sbuf(0, rows, 16384, &[cols], DType::F32);
        let y = Ap::sbuf(0, rows, 24576, &[cols], DType::Bf16);
        let src = hbm_2d(x_off + (row0 * cols * 4) as u64, rows, cols, cols, DType::F32);
        let l = case.push(on(Inst::new(Op::DmaCopy { queue: core as u8 % 4, dst: x, src })));
        let a = case.push(on(inst(
            Op::Activation { func: ActFn::Exp, dst: e, src: x, scale: Operand::Imm(0.5), bias: None, acc: None },
            &[l],
        )));
        let stage = |op, v| ScalarStage { op, operand: Operand::Imm(v), reverse: false };
        let v = case.push(on(inst(
            Op::TensorScalar {
                engine: Engine::Vector,
                dst: t,
                src: e,
                first: stage(AluOp::Mul, 3.0),
                second: Some(stage(AluOp::Sub, 1.0)),
            },
            &[a],
        )));
        let g = case.push(on(inst(
            Op::TensorTensor { engine: Engine::GpSimd, op: AluOp::Add, dst: y, in0: t, in1: x },
            &[v, l],
        )));
        let dst = hbm_2d(y_off + (row0 * cols * 2) as u64, rows, cols, cols, DType::Bf16);
        let s = case.push(on(inst(Op::DmaCopy { queue: 8, dst, src: y }, &[g])));
        if core == 0 {
            core0_store = Some(s);
        } else {
            stores.push(s);
        }
    }
    if let Some(s) = core0_store {
        case.program.insts[s.0 as usize].deps.extend(stores);
    }
    workload(case)
}

/// Loads, GpSimd iota/partition work, a gather, a Vector reduce: many small units.
fn gather_mix() -> Workload {
    let mut case = Case::new("gather_mix");
    let table = case.hbm_input(DType::F32, encode(DType::F32, &Lcg(8).vec(64 * 32, -5.0, 5.0)));
    let (out, _) = case.hbm_output(DType::F32, 32);
    let idx = Ap::sbuf(0, 32, 0, &[1], DType::I32);
    let io = case.push(Inst::new(Op::Iota { dst: idx, base: 5, channel_multiplier: 1, steps: [0, 0, 0, 0] }));
    let rows = Ap::sbuf(0, 32, 64, &[32], DType::F32);
    let g = case.push(inst(
        Op::DmaGather { queue: 2, dst: rows, table: Ap::hbm(table, 64, &[32], DType::F32), index: idx },
        &[io],
    ));
    let sums = Ap::sbuf(0, 32, 512, &[1], DType::F32);
    let r = case.push(inst(
        Op::TensorReduce { engine: Engine::Vector, op: AluOp::Add, dst: sums, src: rows, axes: 1, negate: false },
        &[g],
    ));
    let col = Ap::sbuf(0, 1, 1024, &[32], DType::F32);
    let t = case.push(inst(Op::Transpose { engine: Engine::Vector, dst: col, src: sums }, &[r]));
    let all = Ap::sbuf(0, 32, 2048, &[32], DType::F32);
    let b = case.push(inst(Op::PartitionBroadcast { dst: all, src: col }, &[t]));
    let m = Ap::sbuf(0, 1, 4096, &[32], DType::F32);
    let pr = case.push(inst(Op::PartitionReduce { op: AluOp::Max, dst: m, src: all }, &[b]));
    case.push(inst(Op::DmaCopy { queue: 3, dst: Ap::hbm(out, 1, &[32], DType::F32), src: m }, &[pr]));
    workload(case)
}

fn run(chip: &ChipSpec, w: &Workload, opts: SimOptions) -> (RunResult, Vec<Vec<u8>>) {
    let functional = opts.mode == Mode::Functional;
    let mut sim = Simulator::new(chip, &w.program, opts).unwrap_or_else(|e| panic!("{}: {e}", w.program.name));
    if functional {
        for (name, bytes) in &w.inputs {
            sim.write_tensor(name, bytes).unwrap();
        }
    }
    let r = sim.run().unwrap_or_else(|e| panic!("{}: {e}", w.program.name));
    let outs = if functional { w.outputs.iter().map(|n| sim.read_tensor(n).unwrap()).collect() } else { Vec::new() };
    (r, outs)
}

fn assert_same_timing(a: &RunResult, b: &RunResult, what: &str) {
    assert_eq!(a.total_ps, b.total_ps, "{what}: total_ps");
    assert_eq!(a.units, b.units, "{what}: unit stats");
    assert_eq!(a.events, b.events, "{what}: events");
    assert_eq!(a.critical_path, b.critical_path, "{what}: critical path");
    assert_eq!(
        (a.instructions, a.flops, a.dma_bytes, a.hbm_bytes),
        (b.instructions, b.flops, b.dma_bytes, b.hbm_bytes),
        "{what}: counters"
    );
}

fn workloads() -> Vec<(&'static str, Workload)> {
    vec![
        ("trn1", tiled_matmul(256, 128, 1024)),
        ("trn2", tiled_matmul(384, 96, 1536)),
        ("trn2", multi_core(8, 32, 256)),
        ("trn1", multi_core(2, 128, 200)),
        ("trn2", gather_mix()),
    ]
}

#[test]
fn functional_and_timed_only_runs_have_identical_timing() {
    for (chip_name, w) in workloads() {
        let c = chip(chip_name);
        let what = format!("{} on {chip_name}", w.program.name);
        let (func, outs) = run(&c, &w, SimOptions::default());
        assert!(outs.iter().all(|o| !o.is_empty()));
        assert!(func.total_ps > 0 && func.instructions == w.program.insts.len() as u64);
        let (timed, _) = run(&c, &w, SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() });
        assert_same_timing(&func, &timed, &format!("{what}: functional vs timed-only"));
        for mode in [Mode::Functional, Mode::TimedOnly] {
            let (no_races, _) = run(&c, &w, SimOptions { mode, check_races: false, ..SimOptions::default() });
            assert_same_timing(&func, &no_races, &format!("{what}: races off ({mode:?})"));
        }
        // Without events the totals and statistics still agree.
        let (bare, _) =
            run(&c, &w, SimOptions { mode: Mode::TimedOnly, record_events: false, ..SimOptions::default() });
        assert_eq!((bare.total_ps, &bare.units), (func.total_ps, &func.units), "{what}: events off");
        assert!(bare.events.is_empty() && bare.critical_path.is_empty());
        // Every unit was busy at most the whole run; engines run in parallel.
        assert!(func.units.iter().all(|u| u.busy_ps <= func.total_ps), "{what}");
    }
}

#[test]
fn repeated_runs_are_identical() {
    for (chip_name, w) in workloads() {
        let c = chip(chip_name);
        let what = format!("{} on {chip_name}", w.program.name);
        let (r1, o1) = run(&c, &w, SimOptions::default());
        let (r2, o2) = run(&c, &w, SimOptions::default());
        assert_same_timing(&r1, &r2, &what);
        assert_eq!(o1, o2, "{what}: output bytes");
        // The same simulator run twice recomputes the same outputs.
        let mut sim = Simulator::new(&c, &w.program, SimOptions::default()).unwrap();
        for (name, bytes) in &w.inputs {
            sim.write_tensor(name, bytes).unwrap();
        }
        let a = sim.run().unwrap();
        let first: Vec<Vec<u8>> = w.outputs.iter().map(|n| sim.read_tensor(n).unwrap()).collect();
        let b = sim.run().unwrap();
        let second: Vec<Vec<u8>> = w.outputs.iter().map(|n| sim.read_tensor(n).unwrap()).collect();
        assert_same_timing(&a, &b, &format!("{what}: rerun"));
        assert_eq!(first, second, "{what}: rerun output bytes");
        assert_eq!(first, o1, "{what}: fresh vs reused simulator");
        // Stochastic rounding is reproducible for a seed.
        let sr = |seed| run(&c, &w, SimOptions { stochastic_rounding: true, seed, ..SimOptions::default() });
        let (s1, so1) = sr(5);
        let (_, so2) = sr(5);
        assert_eq!(so1, so2, "{what}: same seed");
        assert_same_timing(&r1, &s1, &format!("{what}: stochastic rounding does not change timing"));
    }
}

#[test]
fn tiled_matmul_values_match_the_reference() {
    let (k, m, n) = (256usize, 128usize, 1024usize);
    let w = tiled_matmul(k as u32, m as u32, n as u32);
    for chip_name in ["trn1", "trn2"] {
        let (r, outs) = run(&chip(chip_name), &w, SimOptions::default());
        let a = decode(DType::Bf16, &w.inputs[0].1);
        let b = decode(DType::Bf16, &w.inputs[1].1);
        let c = decode(DType::F32, &outs[0]);
        for i in (0..m).step_by(7) {
            for j in (0..n).step_by(13) {
                let (mut want, mut abs) = (0.0, 0.0);
                for kk in 0..k {
                    let prod = a[kk * m + i] * b[kk * n + j];
                    want += prod;
                    abs += prod.abs();
                }
                let tol = (k as f64 + 4.0) * abs / (1u64 << 24) as f64;
                assert!((c[i * n + j] - want).abs() <= tol, "{chip_name} C[{i},{j}] = {} vs {want}", c[i * n + j]);
            }
        }
        // 2·K·M·N for the matmuls plus one per element of the activation eviction
        // (every odd N tile); DMAs moved A, B and C.
        assert_eq!(r.flops, (2 * k * m * n + m * 512 * (n / 1024)) as u64);
        assert_eq!(r.dma_bytes, ((k * m + k * n) * 2 + m * n * 4) as u64);
    }
}

#[test]
fn multi_core_values_match_the_reference() {
    let w = multi_core(4, 32, 64);
    let (_, outs) = run(&chip("trn2"), &w, SimOptions::default());
    let x = decode(DType::F32, &w.inputs[0].1);
    let y = decode(DType::Bf16, &outs[0]);
    for (i, (&x, &y)) in x.iter().zip(&y).enumerate() {
        let e = ((x as f32 * 0.5) as f64).exp() as f32;
        let t = (e * 3.0) - 1.0;
        let want = round_ref(DType::Bf16, t + x as f32);
        assert!((y - want).abs() <= ulp_of(DType::Bf16, want), "[{i}] {y} vs {want}");
    }
}

#[test]
fn rerunning_one_simulator_with_stochastic_rounding_repeats_its_results() {
    let w = multi_core(2, 32, 64);
    let c = chip("trn2");
    let opts = SimOptions { stochastic_rounding: true, seed: 77, ..SimOptions::default() };
    let mut sim = Simulator::new(&c, &w.program, opts.clone()).unwrap();
    for (name, bytes) in &w.inputs {
        sim.write_tensor(name, bytes).unwrap();
    }
    sim.run().unwrap();
    let first = sim.read_tensor(&w.outputs[0]).unwrap();
    sim.run().unwrap();
    let second = sim.read_tensor(&w.outputs[0]).unwrap();
    assert!(first == second, "a second run continued the first run's random stream");
    let (_, fresh) = run(&c, &w, opts.clone());
    assert!(first == fresh[0], "a fresh simulator differs");
    // And the seed matters.
    let (_, other) = run(&c, &w, SimOptions { seed: 78, ..opts });
    assert!(first != other[0], "another seed gave the same bytes");
}
