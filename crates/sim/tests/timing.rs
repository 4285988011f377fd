//! Every cost rule checked through the simulator: instruction events
//! (`end_ps - start_ps`) against the formulas of `cost-model.md`, DMA
//! transfers against the fluid model, and the calibration checks of
//! HW-DEF-CHECK.

mod common;

use common::chip;
use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Ap, Dim, Engine, Inst, InstId, Op, Operand, Program, Space, TensorDecl, TensorKind};
use trainyard_sim::cost::cycles_to_ps;
use trainyard_sim::dma::{lone_transfer_ns, transfer_shape, transfer_work_ns};
use trainyard_sim::{Mode, RunResult, SimOptions, Simulator};

fn timed(chip: &ChipSpec, p: &Program) -> RunResult {
    let opts = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
    let mut sim = Simulator::new(chip, p, opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    sim.run().unwrap_or_else(|e| panic!("{}: {e}", p.name))
}

fn dur(r: &RunResult, id: InstId) -> u64 {
    let e = r.events[id.0 as usize];
    e.end_ps - e.start_ps
}

fn ps(chip: &ChipSpec, engine: Engine, cycles: u64) -> u64 {
    cycles_to_ps(chip, engine, cycles)
}

/// Adds an HBM tensor after the existing ones; returns its offset.
fn tensor(p: &mut Program, dtype: DType, elements: u64) -> u64 {
    let offset = p.hbm_extent().div_ceil(64) * 64;
    let name = format!("t{}", p.tensors.len());
    p.tensors.push(TensorDecl { name, kind: TensorKind::Input, dtype, shape: vec![elements], offset });
    offset
}

fn inst(op: Op, deps: &[InstId]) -> Inst {
    let mut i = Inst::new(op);
    i.deps = deps.to_vec();
    i
}

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

/// A DMA load of a fresh HBM tensor into `dst`.
fn load(p: &mut Program, queue: u8, dst: Ap, deps: &[InstId]) -> InstId {
    let off = tensor(p, dst.dtype, dst.elements());
    let src = Ap::hbm(off, dst.partitions, &[dst.free_size() as u32], dst.dtype);
    p.push(inst(Op::DmaCopy { queue, dst, src }, deps))
}

/// Runs `op` alone (after nothing) and returns its event duration.
fn alone(chip: &ChipSpec, op: Op) -> u64 {
    let mut p = Program::new("alone");
    let id = p.push(Inst::new(op));
    let r = timed(chip, &p);
    assert_eq!(r.events[id.0 as usize].start_ps, 0);
    dur(&r, id)
}

// ---------------------------------------------------------------------------
// Tensor engine

fn matmul(st: Ap, mv: Ap, dst_offset: u64) -> Op {
    let dst = Ap::psum(0, st.free_size() as u32, dst_offset, &[mv.free_size() as u32], DType::F32);
    Op::MatMul { dst, stationary: st, moving: mv, start: true, stop: true }
}

#[test]
fn single_matmul_costs_max_of_n_and_64_cycles() {
    // HW-PE-MM-II / HW-DEF-PE: max(N_moving, MM_INIT_LATENCY) TensorE cycles.
    let c = chip("trn1");
    for n in [1u32, 32, 63, 64, 65, 128, 300, 512] {
        let mut p = Program::new("mm");
        let st = sbuf(128, 0, &[128], DType::Bf16);
        let mv = sbuf(128, 1024, &[n], DType::Bf16);
        let a = load(&mut p, 0, st, &[]);
        let b = load(&mut p, 1, mv, &[]);
        let mm = p.push(inst(matmul(st, mv, 0), &[a, b]));
        let r = timed(&c, &p);
        assert_eq!(dur(&r, mm), ps(&c, Engine::Tensor, n.max(64) as u64), "N = {n}");
        // It starts when the later of its two loads lands (semaphores cost 0).
        let ready = r.events[a.0 as usize].end_ps.max(r.events[b.0 as usize].end_ps);
        assert_eq!(r.events[mm.0 as usize].start_ps, ready);
        assert_eq!(r.total_ps, r.events[mm.0 as usize].end_ps);
    }
}

#[test]
fn fp32_matmul_costs_four_times_and_fp8_half_on_v3() {
    let (t1, t2) = (chip("trn1"), chip("trn2"));
    let mm = |d0: DType, d1: DType, n: u32| matmul(sbuf(128, 0, &[128], d0), sbuf(128, 2048, &[n], d1), 0);
    // HW-PE-FP32: ×4.
    assert_eq!(alone(&t1, mm(DType::F32, DType::F32, 128)), ps(&t1, Engine::Tensor, 512));
    assert_eq!(alone(&t1, mm(DType::F32, DType::F32, 16)), ps(&t1, Engine::Tensor, 256));
    assert_eq!(alone(&t2, mm(DType::F32, DType::F32, 512)), ps(&t2, Engine::Tensor, 2048));
    // HW-PE-FP8X2-V3: double-row fp8 on v3 halves the time; v2 runs cFP8 at the BF16 rate.
    assert_eq!(alone(&t2, mm(DType::F8E4M3, DType::F8E5M2, 512)), ps(&t2, Engine::Tensor, 256));
    assert_eq!(alone(&t1, mm(DType::F8E4M3, DType::F8E5M2, 512)), ps(&t1, Engine::Tensor, 512));
    // Mixed bf16 × fp8 is not double-row.
    assert_eq!(alone(&t2, mm(DType::Bf16, DType::F8E4M3, 512)), ps(&t2, Engine::Tensor, 512));
    assert_eq!(alone(&t2, mm(DType::F16, DType::F16, 100)), ps(&t2, Engine::Tensor, 100));
}

#[test]
fn background_load_stationary_only_costs_when_the_stationary_changes() {
    // HW-PE-BGLS: cost max(MM, LS) after a different stationary, MM after the same one.
    // With the bundled chips LS = M/4 ≤ 32 < 64 ≤ MM, so slow LS down to see it.
    let mut c = chip("trn1");
    c.core.tensor.ls_divisor = 1;
    let a = sbuf(128, 0, &[128], DType::Bf16);
    let b = sbuf(128, 256, &[128], DType::Bf16);
    let mv = sbuf(128, 1024, &[64], DType::Bf16);
    let mut p = Program::new("bgls");
    let order = [a, a, b, b, a, a];
    let ids: Vec<InstId> =
        order.iter().enumerate().map(|(k, st)| p.push(Inst::new(matmul(*st, mv, 256 * k as u64)))).collect();
    let r = timed(&c, &p);
    let want = [128u64, 64, 128, 64, 128, 64];
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(dur(&r, *id), ps(&c, Engine::Tensor, want[k]), "matmul {k}");
    }
    // Back to back: each starts when the previous ends.
    for w in ids.windows(2) {
        assert_eq!(r.events[w[1].0 as usize].start_ps, r.events[w[0].0 as usize].end_ps);
    }
    // On the bundled chip the same sequence is MM-bound throughout.
    let t1 = chip("trn1");
    let r = timed(&t1, &p);
    assert!(ids.iter().all(|&id| dur(&r, id) == ps(&t1, Engine::Tensor, 64)));
}

#[test]
fn matvec_costs_match_the_perf_guide() {
    // HW-PE-MATVEC: vector as moving ~64 cycles (MM_INIT bound); as stationary ~128.
    let c = chip("trn1");
    let matrix = sbuf(128, 0, &[128], DType::Bf16);
    let vector = sbuf(128, 512, &[1], DType::Bf16);
    assert_eq!(alone(&c, matmul(matrix, vector, 0)), ps(&c, Engine::Tensor, 64));
    assert_eq!(alone(&c, matmul(vector, matrix, 0)), ps(&c, Engine::Tensor, 128));
}

#[test]
fn tensor_engine_transpose_costs_max_of_p_and_min_64_f() {
    // HW-PE-T-COST: max(P, min(64, F)).
    let c = chip("trn2");
    for (p, f) in [(20u32, 36u32), (100, 128), (8, 8), (16, 128), (128, 128)] {
        let src = sbuf(p, 0, &[f], DType::Bf16);
        let dst = Ap::psum(0, f, 0, &[p], DType::F32);
        let want = (p as u64).max((f as u64).min(64));
        assert_eq!(alone(&c, Op::Transpose { engine: Engine::Tensor, dst, src }), ps(&c, Engine::Tensor, want));
    }
}

#[test]
fn matmul_stream_reaches_the_v2_bf16_peak() {
    // HW-DEF-CHECK / HW-PE-EXAMPLE: 16 back-to-back 128×128×512 BF16 matmuls
    // with one stationary reach ~92 TFLOPS on NeuronCore-v2.
    let c = chip("trn1");
    let mut p = Program::new("stream");
    let st = sbuf(128, 0, &[128], DType::Bf16);
    let mv = sbuf(128, 256, &[512], DType::Bf16);
    let a = load(&mut p, 0, st, &[]);
    let b = load(&mut p, 1, mv, &[]);
    let ids: Vec<InstId> = (0..16).map(|k| p.push(inst(matmul(st, mv, (k % 8) * 2048), &[a, b]))).collect();
    let r = timed(&c, &p);
    let t0 = r.events[ids[0].0 as usize].start_ps;
    let t1 = r.events[ids[15].0 as usize].end_ps;
    let flops = 16.0 * 2.0 * 128.0 * 128.0 * 512.0;
    assert_eq!(r.flops, flops as u64);
    let tflops = flops / ((t1 - t0) as f64 * 1e-12) / 1e12;
    let peak = c.core_peak_tflops_bf16();
    assert!((tflops - peak).abs() / peak < 0.02, "{tflops} TFLOPS vs {peak}");
    assert!((tflops - 92.0).abs() < 1.0, "{tflops} TFLOPS");
}

// ---------------------------------------------------------------------------
// Vector, Scalar, GpSimd

fn tt(engine: Engine, dst: Ap, in0: Ap, in1: Ap) -> Op {
    Op::TensorTensor { engine, op: AluOp::Add, dst, in0, in1 }
}

#[test]
fn tensor_tensor_costs_2n_or_n_when_split_across_psum_and_sbuf() {
    // HW-VE-N / HW-COST-TTENSOR on v2.
    let c = chip("trn1");
    let n = 1024u32;
    let (a, b, d) =
        (sbuf(128, 0, &[n], DType::F32), sbuf(128, 4096, &[n], DType::F32), sbuf(128, 8192, &[n], DType::F32));
    let pa = Ap::psum(0, 128, 0, &[n], DType::F32);
    assert_eq!(alone(&c, tt(Engine::Vector, d, a, b)), ps(&c, Engine::Vector, 2 * n as u64));
    assert_eq!(alone(&c, tt(Engine::Vector, d, pa, b)), ps(&c, Engine::Vector, n as u64));
    assert_eq!(alone(&c, tt(Engine::Vector, d, b, pa)), ps(&c, Engine::Vector, n as u64));
    // A PSUM destination does not change the input rule.
    assert_eq!(alone(&c, tt(Engine::Vector, pa, a, b)), ps(&c, Engine::Vector, 2 * n as u64));
    // HW-COST-TTENSOR: all-SBUF, all-BF16, contiguous add/mul/sub costs N on v2;
    // HW-VE-PERF-V3 halves 16-bit all-SBUF tensor_tensor on v3 (N / 2 for add, 2N / 2 for max).
    let t2 = chip("trn2");
    let h = |o| sbuf(128, o, &[n], DType::Bf16);
    assert_eq!(alone(&c, tt(Engine::Vector, h(8192), h(0), h(4096))), ps(&c, Engine::Vector, n as u64));
    assert_eq!(alone(&t2, tt(Engine::Vector, h(8192), h(0), h(4096))), ps(&t2, Engine::Vector, n as u64 / 2));
    let max = |d, a, b| Op::TensorTensor { engine: Engine::Vector, op: AluOp::Max, dst: d, in0: a, in1: b };
    assert_eq!(alone(&c, max(h(8192), h(0), h(4096))), ps(&c, Engine::Vector, 2 * n as u64));
    assert_eq!(alone(&t2, max(h(8192), h(0), h(4096))), ps(&t2, Engine::Vector, n as u64));
    // F16 is not BF16: 2N on v2.
    let f = |o| sbuf(128, o, &[n], DType::F16);
    assert_eq!(alone(&c, tt(Engine::Vector, f(8192), f(0), f(4096))), ps(&c, Engine::Vector, 2 * n as u64));
}

#[test]
fn small_instructions_cost_min_ii() {
    // HW-VE-MINII: max(64, k·N).
    let c = chip("trn1");
    for n in [1u32, 8, 32] {
        let (a, b, d) =
            (sbuf(128, 0, &[n], DType::F32), sbuf(128, 512, &[n], DType::F32), sbuf(128, 1024, &[n], DType::F32));
        assert_eq!(alone(&c, tt(Engine::Vector, d, a, b)), ps(&c, Engine::Vector, 64), "tt N = {n}");
        let act = Op::Activation { func: ActFn::Exp, dst: d, src: a, scale: Operand::Imm(1.0), bias: None, acc: None };
        assert_eq!(alone(&c, act), ps(&c, Engine::Scalar, 64), "act N = {n}");
        let ts = Op::TensorScalar {
            engine: Engine::Vector,
            dst: d,
            src: a,
            first: trainyard_isa::ScalarStage { op: AluOp::Mul, operand: Operand::Imm(2.0), reverse: false },
            second: None,
        };
        assert_eq!(alone(&c, ts), ps(&c, Engine::Vector, 64), "ts N = {n}");
    }
    // Just above the floor the streaming term wins: 2·33 = 66.
    let (a, b, d) =
        (sbuf(128, 0, &[33], DType::F32), sbuf(128, 512, &[33], DType::F32), sbuf(128, 1024, &[33], DType::F32));
    assert_eq!(alone(&c, tt(Engine::Vector, d, a, b)), ps(&c, Engine::Vector, 66));
}

#[test]
fn one_input_rules() {
    let c = chip("trn1");
    let n = 700u32;
    let (x, y) = (sbuf(128, 0, &[n], DType::F32), sbuf(128, 4096, &[n], DType::F32));
    let acc = sbuf(128, 8192, &[1], DType::F32);
    let stage = |op| trainyard_isa::ScalarStage { op, operand: Operand::Imm(2.0), reverse: false };
    // HW-COST-TSCALAR: one or two stages cost the same, N.
    let ts1 = Op::TensorScalar { engine: Engine::Vector, dst: y, src: x, first: stage(AluOp::Mul), second: None };
    let ts2 = Op::TensorScalar {
        engine: Engine::Vector,
        dst: y,
        src: x,
        first: stage(AluOp::Mul),
        second: Some(stage(AluOp::Add)),
    };
    assert_eq!(alone(&c, ts1), ps(&c, Engine::Vector, n as u64));
    assert_eq!(alone(&c, ts2), ps(&c, Engine::Vector, n as u64));
    // HW-COST-ACTIVATION: N; HW-ACT-FUSE: scale and bias are free; HW-COST-ACT-REDUCE: + 64 with acc.
    let bias = sbuf(128, 8256, &[1], DType::F32);
    let act = |bias: Option<Ap>, acc: Option<Ap>| Op::Activation {
        func: ActFn::Tanh,
        dst: y,
        src: x,
        scale: Operand::Imm(1.5),
        bias,
        acc,
    };
    assert_eq!(alone(&c, act(None, None)), ps(&c, Engine::Scalar, n as u64));
    assert_eq!(alone(&c, act(Some(bias), None)), ps(&c, Engine::Scalar, n as u64));
    assert_eq!(alone(&c, act(None, Some(acc))), ps(&c, Engine::Scalar, n as u64 + 64));
    // HW-COST-TCOPY: N; copy on GpSimd adds its start-up.
    assert_eq!(alone(&c, Op::Copy { engine: Engine::Vector, dst: y, src: x }), ps(&c, Engine::Vector, n as u64));
    assert_eq!(alone(&c, Op::Copy { engine: Engine::GpSimd, dst: y, src: x }), ps(&c, Engine::GpSimd, n as u64 + 150));
    // HW-COST-TREDUCE: N, or N/2 for BF16 in and out with add/max.
    let src3 = sbuf(128, 0, &[10, 70], DType::F32);
    let red = |op, d: DType, src: Ap| Op::TensorReduce {
        engine: Engine::Vector,
        op,
        dst: sbuf(128, 8192, &[10], d),
        src: src.with_dtype(d),
        axes: 1,
        negate: false,
    };
    assert_eq!(alone(&c, red(AluOp::Add, DType::F32, src3)), ps(&c, Engine::Vector, 700));
    assert_eq!(alone(&c, red(AluOp::Max, DType::Bf16, src3)), ps(&c, Engine::Vector, 350));
    assert_eq!(alone(&c, red(AluOp::Min, DType::Bf16, src3)), ps(&c, Engine::Vector, 700));
    // HW-COST-MISC-VE: memset N, N/2 for zero into 16-bit.
    let ms = |d: DType, value| Op::Memset { engine: Engine::Vector, dst: x.with_dtype(d), value };
    assert_eq!(alone(&c, ms(DType::F32, 0.0)), ps(&c, Engine::Vector, 700));
    assert_eq!(alone(&c, ms(DType::Bf16, 0.0)), ps(&c, Engine::Vector, 350));
    assert_eq!(alone(&c, ms(DType::Bf16, 1.0)), ps(&c, Engine::Vector, 700));
    // HW-COST-TRANSPOSE: VectorE max(MIN_II, N).
    let vt = Op::Transpose {
        engine: Engine::Vector,
        dst: sbuf(32, 0, &[32], DType::F32),
        src: sbuf(32, 1024, &[32], DType::F32),
    };
    assert_eq!(alone(&c, vt), ps(&c, Engine::Vector, 64));
    // HW-COST-PRED (select): 2N with everything in SBUF.
    let sel = Op::Select { engine: Engine::Vector, dst: y, pred: x, on_true: x, on_false: y };
    assert_eq!(alone(&c, sel), ps(&c, Engine::Vector, 2 * n as u64));
}

#[test]
fn strided_access_halves_sram_bandwidth() {
    // HW-SRAM-STRIDE: ×2 on the streaming part when an innermost stride exceeds 16 bytes.
    let c = chip("trn1");
    let n = 512u32;
    let dst = sbuf(128, 0, &[n], DType::F32);
    let stride = |s: i64| Ap::new(Space::Sbuf, 0, 128, 0, 4096, &[Dim { stride: s, size: n }], DType::F32);
    assert_eq!(alone(&c, Op::Copy { engine: Engine::Vector, dst, src: stride(4) }), ps(&c, Engine::Vector, 512));
    assert_eq!(alone(&c, Op::Copy { engine: Engine::Vector, dst, src: stride(5) }), ps(&c, Engine::Vector, 1024));
    // 16 bytes exactly is still full rate.
    let b16 = Ap::new(Space::Sbuf, 0, 128, 0, 4096, &[Dim { stride: 8, size: n }], DType::Bf16);
    assert_eq!(alone(&c, Op::Copy { engine: Engine::Vector, dst, src: b16 }), ps(&c, Engine::Vector, 512));
}

#[test]
fn vector_perf_mode_on_v3() {
    // HW-VE-PERF-V3: 4× for 16-bit all-SBUF contiguous copies; 2× when one condition fails.
    let c = chip("trn2");
    let n = 2048u32;
    let src = sbuf(128, 0, &[n], DType::Bf16);
    let dst = sbuf(128, 8192, &[n], DType::Bf16);
    let copy = |dst, src| Op::Copy { engine: Engine::Vector, dst, src };
    assert_eq!(alone(&c, copy(dst, src)), ps(&c, Engine::Vector, 512));
    let psum_dst = Ap::psum(0, 128, 0, &[n], DType::Bf16);
    assert_eq!(alone(&c, copy(psum_dst, src)), ps(&c, Engine::Vector, 1024));
    assert_eq!(alone(&c, copy(dst.with_dtype(DType::F32), src)), ps(&c, Engine::Vector, 2048));
    // The Scalar engine has no 16-bit speedup before v4.
    let act = Op::Activation { func: ActFn::Identity, dst, src, scale: Operand::Imm(1.0), bias: None, acc: None };
    assert_eq!(alone(&c, act), ps(&c, Engine::Scalar, 2048));
}

#[test]
fn gpsimd_adds_its_start_up() {
    // HW-POOL-COST / HW-COST-IOTA: GPSIMD_START = 150 cycles on every GpSimd instruction.
    let c = chip("trn1");
    let n = 100u32;
    let (a, b, d) =
        (sbuf(128, 0, &[n], DType::I32), sbuf(128, 512, &[n], DType::I32), sbuf(128, 1024, &[n], DType::I32));
    assert_eq!(alone(&c, tt(Engine::GpSimd, d, a, b)), ps(&c, Engine::GpSimd, 200 + 150));
    let small = |o| sbuf(128, o, &[8], DType::I32);
    assert_eq!(alone(&c, tt(Engine::GpSimd, small(0), small(64), small(128))), ps(&c, Engine::GpSimd, 64 + 150));
    let iota = Op::Iota { dst: d, base: 0, channel_multiplier: 1, steps: [1, 0, 0, 0] };
    assert_eq!(alone(&c, iota), ps(&c, Engine::GpSimd, 150 + 100));
    let iota_small = Op::Iota { dst: small(0), base: 0, channel_multiplier: 1, steps: [1, 0, 0, 0] };
    assert_eq!(alone(&c, iota_small), ps(&c, Engine::GpSimd, 150 + 8));
    assert_eq!(alone(&c, Op::Memset { engine: Engine::GpSimd, dst: d, value: 1.0 }), ps(&c, Engine::GpSimd, 100 + 150));
    // Cross-partition work (assumption in cost.rs): reduce 2F, broadcast and shuffle F.
    let f = 300u32;
    let src = sbuf(64, 0, &[f], DType::F32);
    let one = sbuf(1, 4096, &[f], DType::F32);
    assert_eq!(
        alone(&c, Op::PartitionReduce { op: AluOp::Add, dst: one, src }),
        ps(&c, Engine::GpSimd, 2 * f as u64 + 150)
    );
    assert_eq!(alone(&c, Op::PartitionBroadcast { dst: src, src: one }), ps(&c, Engine::GpSimd, f as u64 + 150));
    let perm: Vec<u8> = (0..64).rev().collect();
    let shuffled = sbuf(64, 8192, &[f], DType::F32);
    assert_eq!(alone(&c, Op::PartitionShuffle { dst: shuffled, src, perm }), ps(&c, Engine::GpSimd, f as u64 + 150));
}

fn act(dst: Ap, src: Ap) -> Op {
    Op::Activation { func: ActFn::Exp, dst, src, scale: Operand::Imm(1.0), bias: None, acc: None }
}

#[test]
fn same_engine_raw_penalty_applies_only_to_a_read_of_the_previous_write() {
    // HW-DEF-DEP: +200 cycles when an instruction reads what the previous
    // instruction of the same engine wrote.
    let c = chip("trn1");
    let t = |o| sbuf(128, o, &[1], DType::F32);
    let (x, y, z, w) = (t(0), t(64), t(128), t(192));
    let mut p = Program::new("dep");
    let a1 = p.push(Inst::new(act(y, x))); // writes y
    let a2 = p.push(inst(act(z, y), &[a1])); // reads y: penalty
    let a3 = p.push(Inst::new(act(w, x))); // reads x, not written by a2
    let a4 = p.push(Inst::new(act(x, y))); // reads y, written two instructions back
    let a5 = p.push(Inst::new(act(z, x))); // reads x, written by a4 without a dep: still a penalty
    let r = timed(&c, &p);
    let base = ps(&c, Engine::Scalar, 64);
    let pen = ps(&c, Engine::Scalar, 64 + 200);
    assert_eq!([a1, a2, a3, a4, a5].map(|i| dur(&r, i)), [base, pen, base, base, pen]);
    // Partition overlap matters: the same bytes of other partitions are no hazard.
    let mut p = Program::new("dep_parts");
    let top = Ap::sbuf(0, 32, 0, &[1], DType::F32);
    let bottom = Ap::sbuf(64, 32, 0, &[1], DType::F32);
    let out = Ap::sbuf(0, 32, 64, &[1], DType::F32);
    p.push(Inst::new(act(top, out)));
    let b = p.push(Inst::new(act(out, bottom)));
    assert_eq!(dur(&timed(&c, &p), b), base);
}

#[test]
fn raw_penalty_is_per_engine() {
    let c = chip("trn1");
    let t = |o| sbuf(128, o, &[1], DType::F32);
    let mut p = Program::new("cross");
    let a = p.push(Inst::new(act(t(64), t(0))));
    let v = p.push(inst(tt(Engine::Vector, t(128), t(64), t(0)), &[a]));
    let g = p.push(inst(tt(Engine::GpSimd, t(192), t(128), t(0)), &[v]));
    let r = timed(&c, &p);
    assert_eq!(dur(&r, v), ps(&c, Engine::Vector, 64));
    assert_eq!(dur(&r, g), ps(&c, Engine::GpSimd, 64 + 150));
    // Cross-engine waits start exactly at the producer's end (semaphore latency 0).
    assert_eq!(r.events[v.0 as usize].start_ps, r.events[a.0 as usize].end_ps);
    assert_eq!(r.events[g.0 as usize].start_ps, r.events[v.0 as usize].end_ps);
    // Vector: dependent tensor_tensor pays 2N + 200.
    let mut p = Program::new("dve_dep");
    let big = |o| sbuf(128, o, &[100], DType::F32);
    p.push(Inst::new(tt(Engine::Vector, big(0), big(512), big(1024))));
    let d = p.push(Inst::new(tt(Engine::Vector, big(1536), big(0), big(1024))));
    assert_eq!(dur(&timed(&c, &p), d), ps(&c, Engine::Vector, 200 + 200));
}

#[test]
fn dependent_one_element_activations_issue_every_189_ns_on_v2() {
    // HW-DEF-CHECK / HW-ACT-DEP-MEAS: 264 ScalarE cycles = 188.6 ns at 1.4 GHz.
    let c = chip("trn1");
    let mut p = Program::new("chain");
    let tile = |k: u64| sbuf(128, 4 * (k % 2), &[1], DType::F32);
    let mut prev = p.push(Inst::new(act(tile(1), tile(0))));
    let first = prev;
    for k in 1..20u64 {
        prev = p.push(inst(act(tile(k + 1), tile(k)), &[prev]));
    }
    let r = timed(&c, &p);
    let per = (r.events[prev.0 as usize].end_ps - r.events[first.0 as usize].end_ps) as f64 / 19.0 / 1000.0;
    assert!((per - 189.0).abs() < 1.0, "{per} ns per dependent activation");
}

#[test]
fn semaphore_latency_applies_across_engines_only() {
    // HW-SYNC-COST: a parameter (0 on the bundled chips).
    let mut c = chip("trn1");
    c.core.elementwise.semaphore_ns = 50.0;
    let t = |o| sbuf(128, o, &[1], DType::F32);
    let mut p = Program::new("sem");
    let a = p.push(Inst::new(act(t(64), t(0))));
    let b = p.push(inst(tt(Engine::Vector, t(128), t(64), t(0)), &[a]));
    let a2 = p.push(inst(act(t(192), t(256)), &[a]));
    let r = timed(&c, &p);
    assert_eq!(r.events[b.0 as usize].start_ps, r.events[a.0 as usize].end_ps + 50_000);
    assert_eq!(r.events[a2.0 as usize].start_ps, r.events[a.0 as usize].end_ps);
}

// ---------------------------------------------------------------------------
// DMA

fn dma_load_op(p: &mut Program, queue: u8, dst: Ap) -> Op {
    let off = tensor(p, dst.dtype, dst.elements());
    Op::DmaCopy { queue, dst, src: Ap::hbm(off, dst.partitions, &[dst.free_size() as u32], dst.dtype) }
}

fn close(a_ps: u64, b_ns: f64) -> bool {
    (a_ps as f64 / 1000.0 - b_ns).abs() < 0.005
}

#[test]
fn lone_transfer_takes_fixed_latency_plus_work_over_engines() {
    // HW-DEF-DMA / HW-DMA-FIXED / HW-DMA-BW-EFF.
    for name in ["trn1", "trn2"] {
        let c = chip(name);
        for (parts, free) in [(128u32, 512u32), (4, 4096), (8, 100), (1, 1), (33, 77)] {
            let mut p = Program::new("lone");
            let op = dma_load_op(&mut p, 0, sbuf(parts, 0, &[free], DType::F32));
            let shape = transfer_shape(&c, &op).unwrap();
            let id = p.push(Inst::new(op));
            let r = timed(&c, &p);
            let lone = lone_transfer_ns(&c, &shape);
            assert!(close(r.total_ps, lone), "{name} {parts}×{free}: {} ps vs {lone} ns", r.total_ps);
            let e = r.events[id.0 as usize];
            assert_eq!(e.start_ps, (c.core.dma.fixed_latency_ns * 1000.0) as u64);
            assert!(close(e.end_ps - e.start_ps, transfer_work_ns(&c, &shape) / shape.max_engines as f64));
            // The formula itself: bytes / rate + descriptors · overhead, spread over ⌈P/8⌉ engines.
            let work =
                (parts * free * 4) as f64 / c.core.dma.engine_bytes_per_ns + parts as f64 * c.core.dma.descriptor_ns;
            let engines = parts.div_ceil(8).min(16) as f64;
            assert!((lone - (c.core.dma.fixed_latency_ns + work / engines)).abs() < 1e-6);
            let stats = r.units.iter().find(|u| u.unit == trainyard_isa::Unit::Dma(0)).unwrap();
            assert_eq!(stats.bytes, (parts * free * 4) as u64);
            assert_eq!(stats.busy_ps, e.end_ps - e.start_ps);
        }
    }
}

#[test]
fn one_engine_32k_transfer_on_trn2_takes_about_1_4_us() {
    // HW-DEF-CHECK / HW-DMA-MEAS-32K: 4 partitions × 4096 BF16 on one engine ≈ 1,416 ns.
    let c = chip("trn2");
    let mut p = Program::new("32k");
    let op = dma_load_op(&mut p, 0, sbuf(4, 0, &[4096], DType::Bf16));
    assert_eq!(transfer_shape(&c, &op).unwrap().max_engines, 1);
    let id = p.push(Inst::new(op));
    let r = timed(&c, &p);
    let moving_ns = dur(&r, id) as f64 / 1000.0;
    assert!((moving_ns - 1416.0).abs() / 1416.0 < 0.05, "{moving_ns} ns");
}

#[test]
fn concurrent_transfers_on_one_core_share_its_engines() {
    let c = chip("trn1");
    let mut p = Program::new("share");
    let a = dma_load_op(&mut p, 0, sbuf(128, 0, &[512], DType::F32));
    let b = dma_load_op(&mut p, 1, sbuf(128, 4096, &[512], DType::F32));
    let work = transfer_work_ns(&c, &transfer_shape(&c, &a).unwrap());
    let (ia, ib) = (p.push(Inst::new(a)), p.push(Inst::new(b)));
    let r = timed(&c, &p);
    // Two 16-engine transfers get 8 engines each.
    let want = c.core.dma.fixed_latency_ns + 2.0 * work / 16.0;
    for id in [ia, ib] {
        assert!(close(r.events[id.0 as usize].end_ps, want), "{:?} vs {want}", r.events[id.0 as usize]);
    }
}

#[test]
fn max_min_fair_sharing_between_a_narrow_and_a_wide_transfer() {
    let c = chip("trn1");
    let mut p = Program::new("maxmin");
    let small = dma_load_op(&mut p, 0, sbuf(4, 0, &[64], DType::F32)); // one engine
    let big = dma_load_op(&mut p, 1, sbuf(128, 4096, &[512], DType::F32)); // sixteen
    let ws = transfer_work_ns(&c, &transfer_shape(&c, &small).unwrap());
    let wb = transfer_work_ns(&c, &transfer_shape(&c, &big).unwrap());
    let (is, ib) = (p.push(Inst::new(small)), p.push(Inst::new(big)));
    let r = timed(&c, &p);
    let fixed = c.core.dma.fixed_latency_ns;
    // The narrow one keeps its single engine; the wide one gets the other 15, then 16.
    assert!(ws < wb / 15.0);
    assert!(close(r.events[is.0 as usize].end_ps, fixed + ws));
    assert!(close(r.events[ib.0 as usize].end_ps, fixed + ws + (wb - 15.0 * ws) / 16.0));
}

#[test]
fn second_transfer_of_a_queue_hides_the_fixed_latency() {
    let c = chip("trn1");
    let fixed = c.core.dma.fixed_latency_ns;
    let mut p = Program::new("queue");
    let a = dma_load_op(&mut p, 0, sbuf(128, 0, &[512], DType::F32));
    let b = dma_load_op(&mut p, 0, sbuf(128, 4096, &[512], DType::F32));
    let w = transfer_work_ns(&c, &transfer_shape(&c, &a).unwrap()) / 16.0;
    let (ia, ib) = (p.push(Inst::new(a.clone())), p.push(Inst::new(b.clone())));
    let r = timed(&c, &p);
    assert!(close(r.events[ia.0 as usize].end_ps, fixed + w));
    assert_eq!(r.events[ib.0 as usize].start_ps, r.events[ia.0 as usize].end_ps);
    assert!(close(r.events[ib.0 as usize].end_ps, fixed + 2.0 * w));
    // A dependent transfer on another queue pays the latency again.
    let mut p2 = Program::new("dependent");
    p2.tensors = p.tensors.clone();
    let ia = p2.push(Inst::new(a));
    let b = match b {
        Op::DmaCopy { dst, src, .. } => Op::DmaCopy { queue: 1, dst, src },
        other => other,
    };
    let ib = p2.push(inst(b, &[ia]));
    let r = timed(&c, &p2);
    assert_eq!(r.events[ib.0 as usize].start_ps, r.events[ia.0 as usize].end_ps + (fixed * 1000.0) as u64);
    assert!(close(r.total_ps, 2.0 * (fixed + w)));
    // A transfer waiting on compute starts moving data 1.3 µs after it.
    let mut p3 = Program::new("after_compute");
    let t = sbuf(128, 0, &[512], DType::F32);
    let m = p3.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: t, value: 1.0 }));
    let off = tensor(&mut p3, DType::F32, 128 * 512);
    let st = p3.push(inst(Op::DmaCopy { queue: 2, dst: Ap::hbm(off, 128, &[512], DType::F32), src: t }, &[m]));
    let r = timed(&c, &p3);
    assert_eq!(r.events[st.0 as usize].start_ps, r.events[m.0 as usize].end_ps + (fixed * 1000.0) as u64);
}

/// One 128×512 f32 load per core, all concurrent.
fn per_core_loads(cores: u16) -> Program {
    let mut p = Program::new("cores");
    for core in 0..cores {
        let op = dma_load_op(&mut p, 0, sbuf(128, 0, &[512], DType::F32));
        let mut i = Inst::new(op);
        i.core = core;
        p.push(i);
    }
    p
}

#[test]
fn hbm_bandwidth_caps_transfers_across_cores() {
    let c = chip("trn1");
    let fixed = c.core.dma.fixed_latency_ns;
    let p = per_core_loads(2);
    let shape = transfer_shape(&c, &p.insts[0].op).unwrap();
    let w = transfer_work_ns(&c, &shape) / 16.0;
    // trn1: 2 cores × 272 GB/s < 820 GB/s: each core runs at its own DMA rate.
    let r = timed(&c, &p);
    assert!(r.events.iter().all(|e| close(e.end_ps, fixed + w)), "{:?}", r.events);
    // With HBM slower than the cores' DMA together, HBM decides: all bytes / HBM rate.
    let mut slow = c.clone();
    slow.chip.hbm_gbps = 300.0;
    let r = timed(&slow, &p);
    let want = fixed + 2.0 * shape.bytes as f64 / 300.0;
    assert!(r.events.iter().all(|e| close(e.end_ps, want)), "{:?} vs {want}", r.events);
    // One core alone (≈ 247 GB/s with descriptor overheads) is under the cap.
    let r = timed(&slow, &per_core_loads(1));
    assert!(close(r.total_ps, fixed + w));
    // trn2 with all 8 cores moving HBM→HBM (two HBM sides each) saturates 2.9 TB/s.
    let t2 = chip("trn2");
    let mut p = Program::new("hbm2hbm");
    for core in 0..8u16 {
        // Rows out of a wider matrix: one descriptor per row, so all 16 engines work.
        let src = tensor(&mut p, DType::F32, 128 * 1024);
        let dst = tensor(&mut p, DType::F32, 128 * 512);
        let src = Ap::new(Space::Hbm, 0, 128, 1024, src, &[Dim { stride: 1, size: 512 }], DType::F32);
        let dst = Ap::new(Space::Hbm, 0, 128, 512, dst, &[Dim { stride: 1, size: 512 }], DType::F32);
        let mut i = Inst::new(Op::DmaCopy { queue: 0, dst, src });
        i.core = core;
        p.push(i);
    }
    let bytes = 128.0 * 512.0 * 4.0;
    let r = timed(&t2, &p);
    let hbm_time = 8.0 * 2.0 * bytes / t2.chip.hbm_gbps;
    let shape = transfer_shape(&t2, &p.insts[0].op).unwrap();
    let dma_time = transfer_work_ns(&t2, &shape) / shape.max_engines as f64;
    assert!(hbm_time > dma_time, "the cores' DMA must outrun HBM here");
    assert!(r.events.iter().all(|e| close(e.end_ps, fixed + hbm_time)), "{:?} vs {}", r.events, fixed + hbm_time);
    assert_eq!(r.hbm_bytes, (8.0 * 2.0 * bytes) as u64);
}

#[test]
fn unit_stats_and_critical_path() {
    let c = chip("trn1");
    let mut p = Program::new("stats");
    let t = sbuf(128, 0, &[256], DType::F32);
    let u = sbuf(128, 2048, &[256], DType::F32);
    let ld = load(&mut p, 0, t, &[]);
    let side = load(&mut p, 5, sbuf(8, 4096, &[8], DType::F32), &[]);
    let a = p.push(inst(act(u, t), &[ld]));
    let off = tensor(&mut p, DType::F32, 128 * 256);
    let st = p.push(inst(Op::DmaCopy { queue: 1, dst: Ap::hbm(off, 128, &[256], DType::F32), src: u }, &[a]));
    let r = timed(&c, &p);
    assert_eq!(r.critical_path, vec![ld, a, st]);
    assert_eq!(r.instructions, 4);
    assert_eq!(r.total_ps, r.events[st.0 as usize].end_ps);
    assert_eq!(r.events[a.0 as usize].critical_pred, Some(ld));
    assert_eq!(r.events[side.0 as usize].critical_pred, None);
    let scalar = r.units.iter().find(|s| s.unit == trainyard_isa::Unit::Engine(Engine::Scalar)).unwrap();
    assert_eq!((scalar.instructions, scalar.busy_ps), (1, ps(&c, Engine::Scalar, 256)));
    assert_eq!(r.dma_bytes, 2 * 128 * 256 * 4 + 8 * 8 * 4);
    assert_eq!(r.hbm_bytes, r.dma_bytes);
    // Units are sorted by core then unit.
    let keys: Vec<_> = r.units.iter().map(|s| (s.core, s.unit)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn gather_and_casting_transfers_follow_the_dma_formula() {
    let c = chip("trn2");
    // A gather: one descriptor per row, spread over ⌈P/8⌉ engines.
    let mut p = Program::new("gather");
    let table = tensor(&mut p, DType::F32, 1000 * 64);
    let idx = sbuf(64, 0, &[1], DType::I32);
    let dst = sbuf(64, 64, &[64], DType::F32);
    let op = Op::DmaGather { queue: 0, dst, table: Ap::hbm(table, 1000, &[64], DType::F32), index: idx };
    let shape = transfer_shape(&c, &op).unwrap();
    assert_eq!((shape.bytes, shape.descriptors, shape.max_engines, shape.hbm_sides), (64 * 64 * 4, 64, 8, 1));
    let id = p.push(Inst::new(op));
    let r = timed(&c, &p);
    assert!(close(r.total_ps, lone_transfer_ns(&c, &shape)));
    assert!(close(dur(&r, id), transfer_work_ns(&c, &shape) / 8.0));
    // A casting load moves the wider element size (f32 in, bf16 out: 4 bytes each).
    let mut p = Program::new("cast");
    let off = tensor(&mut p, DType::F32, 128 * 256);
    let op =
        Op::DmaCopy { queue: 0, dst: sbuf(128, 0, &[256], DType::Bf16), src: Ap::hbm(off, 128, &[256], DType::F32) };
    assert_eq!(transfer_shape(&c, &op).unwrap().bytes, 128 * 256 * 4);
    p.push(Inst::new(op));
    let r = timed(&c, &p);
    assert_eq!(r.dma_bytes, 128 * 256 * 4);
    // SBUF → SBUF touches no HBM.
    let mut p = Program::new("sbuf2sbuf");
    p.push(Inst::new(Op::DmaCopy {
        queue: 0,
        dst: sbuf(128, 0, &[256], DType::F32),
        src: sbuf(128, 4096, &[256], DType::F32),
    }));
    let r = timed(&c, &p);
    assert_eq!((r.dma_bytes, r.hbm_bytes), (128 * 256 * 4, 0));
}

#[test]
fn queues_are_in_order_a_waiting_head_blocks_the_rest() {
    // HW-SYNC-QUEUES / HW-DMA-QUEUE: engines and DMA queues run their streams in order.
    let c = chip("trn1");
    let fixed = (c.core.dma.fixed_latency_ns * 1000.0) as u64;
    let mut p = Program::new("hol");
    let big = sbuf(128, 0, &[2048], DType::F32);
    let slow = p.push(Inst::new(Op::Memset { engine: Engine::GpSimd, dst: big, value: 1.0 }));
    let t1 = load(&mut p, 0, sbuf(128, 16384, &[64], DType::F32), &[slow]);
    let t2 = load(&mut p, 0, sbuf(128, 20480, &[64], DType::F32), &[]);
    // Vector: the first instruction waits on GpSimd, the second (independent) queues behind it.
    let copy = |dst, src| Op::Copy { engine: Engine::Vector, dst, src };
    let part_of_big = sbuf(128, 0, &[8], DType::F32);
    let v1 = p.push(inst(copy(sbuf(128, 24576, &[8], DType::F32), part_of_big), &[slow]));
    let v2 = p.push(Inst::new(copy(sbuf(128, 28672, &[8], DType::F32), sbuf(128, 32768, &[8], DType::F32))));
    let r = timed(&c, &p);
    let ev = |i: InstId| r.events[i.0 as usize];
    assert_eq!(ev(t1).start_ps, ev(slow).end_ps + fixed);
    assert_eq!(ev(t2).start_ps, ev(t1).end_ps, "the independent transfer waits for the queue head");
    assert_eq!(ev(v1).start_ps, ev(slow).end_ps);
    assert_eq!(ev(v2).start_ps, ev(v1).end_ps, "the independent instruction waits for the engine head");
}
