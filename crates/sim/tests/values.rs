//! Values of the compute instructions against host references computed in
//! plain Rust (f64 where it matters): matmul, transpose, tensor_tensor,
//! tensor_scalar and tensor_reduce (activation has its own file).

mod common;

use common::*;
use proptest::prelude::*;
use trainyard_arch::DType;
use trainyard_isa::{AluOp, Ap, Dim, Engine, Op, Operand, ScalarStage, Space};

const FLOATS: [DType; 5] = [DType::F32, DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2];
const INTS: [DType; 6] = [DType::I8, DType::I16, DType::I32, DType::U8, DType::U16, DType::U32];
const U: f64 = 1.0 / (1u64 << 24) as f64; // unit roundoff of f32

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

// ---------------------------------------------------------------------------
// matmul

struct MatmulSpec {
    k_tiles: Vec<u32>,
    m: u32,
    n: u32,
    st: DType,
    mv: DType,
    generic_dst: bool,
    seed: u64,
}

/// Runs a K-tiled matmul group and returns (got, want, tolerance) per element.
fn run_matmul(s: &MatmulSpec) -> Vec<(f64, f64, f64)> {
    let chip = chip("trn2");
    let mut rng = Lcg(s.seed | 1);
    let mut case = Case::new("matmul");
    let (m, n) = (s.m, s.n);
    // Garbage in PSUM first: `start` must overwrite it.
    let dst_flat = Ap::psum(0, m, 0, &[n], DType::F32);
    case.load_vals(dst_flat, &vec![1000.5; (m * n) as usize]);
    let mut tiles = Vec::new();
    for (t, &k) in s.k_tiles.iter().enumerate() {
        let st = sbuf(k, t as u64 * 1024, &[m], s.st);
        let mv = sbuf(k, 16384 + t as u64 * 4096, &[n], s.mv);
        let a = case.load_vals(st, &rng.vec((k * m) as usize, -2.0, 2.0));
        let b = case.load_vals(mv, &rng.vec((k * n) as usize, -2.0, 2.0));
        tiles.push((k, st, mv, a, b));
    }
    let dst = if s.generic_dst {
        // Two free dims: the simulator's general (non-in-place) path.
        Ap::new(Space::Psum, 0, m, 0, 0, &[Dim { stride: n as i64, size: 1 }, Dim { stride: 1, size: n }], DType::F32)
    } else {
        dst_flat
    };
    let last = tiles.len() - 1;
    for (t, (_, st, mv, _, _)) in tiles.iter().enumerate() {
        case.op(Op::MatMul { dst, stationary: *st, moving: *mv, start: t == 0, stop: t == last });
    }
    case.store(dst_flat);
    let out = decode(DType::F32, &case.run(&chip)[0]);
    let k_total: u32 = s.k_tiles.iter().sum();
    let mut res = Vec::new();
    for i in 0..m as usize {
        for j in 0..n as usize {
            let (mut sum, mut abs) = (0.0f64, 0.0f64);
            for (k, _, _, a, b) in &tiles {
                for kk in 0..*k as usize {
                    let prod = a[kk * m as usize + i] * b[kk * n as usize + j];
                    sum += prod;
                    abs += prod.abs();
                }
            }
            // FP32 products and sums: at most (K + groups) roundings of u each.
            let tol = (k_total as f64 + tiles.len() as f64 + 2.0) * U * abs + 1e-30;
            res.push((out[i * n as usize + j], sum, tol));
        }
    }
    res
}

fn check_matmul(s: &MatmulSpec) -> Result<(), String> {
    for (idx, (got, want, tol)) in run_matmul(s).into_iter().enumerate() {
        if (got - want).abs() > tol {
            return Err(format!("element {idx}: got {got}, want {want} ± {tol}"));
        }
    }
    Ok(())
}

#[test]
fn matmul_full_tile_bf16_matches_reference() {
    let spec = MatmulSpec {
        k_tiles: vec![128],
        m: 128,
        n: 512,
        st: DType::Bf16,
        mv: DType::Bf16,
        generic_dst: false,
        seed: 7,
    };
    check_matmul(&spec).unwrap();
}

#[test]
fn matmul_accumulates_over_k_tiles_for_every_input_dtype() {
    for (i, &st) in FLOATS.iter().enumerate() {
        let mv = if st == DType::F32 { DType::F32 } else { FLOATS[1 + (i + 1) % 4] };
        for generic_dst in [false, true] {
            let spec = MatmulSpec { k_tiles: vec![32, 7, 128], m: 17, n: 33, st, mv, generic_dst, seed: 11 + i as u64 };
            check_matmul(&spec).unwrap_or_else(|e| panic!("{st}×{mv} generic={generic_dst}: {e}"));
        }
    }
}

#[test]
fn matmul_without_start_adds_to_psum() {
    // Two groups into one PSUM tile: the second group's first matmul has
    // start = false, so the sum of both groups lands in PSUM.
    let chip = chip("trn1");
    let mut case = Case::new("acc");
    let st = sbuf(4, 0, &[2], DType::Bf16);
    let mv = sbuf(4, 64, &[3], DType::Bf16);
    let a = case.load_vals(st, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let b = case.load_vals(mv, &[1.0, 0.5, -1.0, 2.0, 0.0, 1.0, -3.0, 1.5, 2.0, 0.25, 4.0, -2.0]);
    let dst = Ap::psum(0, 2, 0, &[3], DType::F32);
    case.op(Op::MatMul { dst, stationary: st, moving: mv, start: true, stop: true });
    case.op(Op::MatMul { dst, stationary: st, moving: mv, start: false, stop: true });
    case.store(dst);
    let out = decode(DType::F32, &case.run(&chip)[0]);
    for i in 0..2 {
        for j in 0..3 {
            let want: f64 = (0..4).map(|k| a[k * 2 + i] * b[k * 3 + j]).sum::<f64>() * 2.0;
            assert_eq!(out[i * 3 + j], want, "({i},{j})");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn matmul_random_shapes_and_dtypes(
        k_tiles in prop::collection::vec(1u32..=40, 1..=3),
        m in 1u32..=24,
        n in 1u32..=40,
        st in 0usize..5,
        mv in 1usize..5,
        generic_dst in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let st = FLOATS[st];
        let mv = if st == DType::F32 { DType::F32 } else { FLOATS[mv] };
        let spec = MatmulSpec { k_tiles, m, n, st, mv, generic_dst, seed };
        prop_assert!(check_matmul(&spec).is_ok(), "{:?}", check_matmul(&spec));
    }
}

// ---------------------------------------------------------------------------
// transpose

#[test]
fn tensor_engine_transpose_swaps_axes() {
    let chip = chip("trn2");
    for dst_dt in [DType::Bf16, DType::F32] {
        let mut case = Case::new("pe_t");
        let src = sbuf(20, 0, &[36], DType::Bf16);
        let x = case.load_vals(src, &Lcg(5).vec(20 * 36, -100.0, 100.0));
        let dst = Ap::psum(0, 36, 0, &[20], dst_dt);
        case.op(Op::Transpose { engine: Engine::Tensor, dst, src });
        case.store(dst);
        let out = decode(dst_dt, &case.run(&chip)[0]);
        for f in 0..36 {
            for p in 0..20 {
                assert_eq!(out[f * 20 + p], x[p * 36 + f], "dst[{f},{p}] ({dst_dt})");
            }
        }
    }
}

#[test]
fn vector_transpose_is_bit_exact_for_every_dtype() {
    let chip = chip("trn2");
    for d in FLOATS.into_iter().chain(INTS) {
        let mut case = Case::new("dve_t");
        let src = sbuf(32, 0, &[24], d);
        // Raw patterns, so large 32-bit integers and NaN payloads are covered.
        let mut rng = Lcg(99);
        let mask = if d.size() == 4 { u32::MAX } else { (1u32 << (8 * d.size())) - 1 };
        let mut bits: Vec<u32> = (0..32 * 24).map(|_| rng.next_u64() as u32 & mask).collect();
        bits[0] = int_bits(DType::I32, (1 << 24) + 1) & mask;
        case.load(src, to_bytes(d, &bits));
        let dst = Ap::psum(0, 24, 0, &[32], d);
        case.op(Op::Transpose { engine: Engine::Vector, dst, src });
        case.store(dst);
        let out = from_bytes(d, &case.run(&chip)[0]);
        for f in 0..24 {
            for p in 0..32 {
                let want = bits[p * 24 + f];
                let got = out[f * 32 + p];
                let both_nan = d.is_float() && decode_ref(d, want).is_nan() && decode_ref(d, got).is_nan();
                assert!(got == want || both_nan, "{d}: dst[{f},{p}] = {got:#x}, want {want:#x}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// tensor_tensor

/// The arithmetic of an ALU operator on exact (f64) operands.
fn alu_ref(op: AluOp, a: f64, b: f64) -> f64 {
    let t = |c: bool| if c { 1.0 } else { 0.0 };
    match op {
        AluOp::Add => a + b,
        AluOp::Sub => a - b,
        AluOp::Mul => a * b,
        AluOp::Div => a / b,
        AluOp::Max => a.max(b),
        AluOp::Min => a.min(b),
        AluOp::Pow => a.powf(b),
        AluOp::AbsMax => a.abs().max(b.abs()),
        AluOp::AbsMin => a.abs().min(b.abs()),
        AluOp::Eq => t(a == b),
        AluOp::Ne => t(a != b),
        AluOp::Lt => t(a < b),
        AluOp::Le => t(a <= b),
        AluOp::Gt => t(a > b),
        AluOp::Ge => t(a >= b),
        AluOp::LogicalAnd => t(a != 0.0 && b != 0.0),
        AluOp::LogicalOr => t(a != 0.0 || b != 0.0),
        AluOp::LogicalXor => t((a != 0.0) != (b != 0.0)),
        AluOp::Bypass => a,
        _ => unreachable!("bitwise operators have their own reference"),
    }
}

const FLOAT_OPS: [AluOp; 19] = [
    AluOp::Add,
    AluOp::Sub,
    AluOp::Mul,
    AluOp::Div,
    AluOp::Max,
    AluOp::Min,
    AluOp::Pow,
    AluOp::AbsMax,
    AluOp::AbsMin,
    AluOp::Eq,
    AluOp::Ne,
    AluOp::Lt,
    AluOp::Le,
    AluOp::Gt,
    AluOp::Ge,
    AluOp::LogicalAnd,
    AluOp::LogicalOr,
    AluOp::LogicalXor,
    AluOp::Bypass,
];

/// Operand values where comparisons and logical ops see equal pairs and zeros.
fn tt_operands(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Lcg(seed | 1);
    let a = rng.vec(n, -4.0, 4.0);
    let mut b = rng.vec(n, -4.0, 4.0);
    for i in 0..n {
        match i % 5 {
            0 => b[i] = a[i],
            1 => b[i] = 0.0,
            _ => {}
        }
    }
    (a, b)
}

/// Runs one tensor_tensor and compares with the reference, rounding the FP32
/// result to the destination dtype.
#[allow(clippy::too_many_arguments)]
fn check_tt(
    op: AluOp,
    engine: Engine,
    p: u32,
    f: u32,
    d0: DType,
    d1: DType,
    dd: DType,
    in0_psum: bool,
    seed: u64,
) -> Result<(), String> {
    let chip = chip("trn2");
    let mut case = Case::new("tt");
    let (mut va, vb) = tt_operands((p * f) as usize, seed);
    if op == AluOp::Pow {
        // Real powers of positive bases.
        va.iter_mut().for_each(|x| *x = x.abs() + 0.25);
    }
    let in0 = if in0_psum { Ap::psum(0, p, 0, &[f], d0) } else { sbuf(p, 0, &[f], d0) };
    let in1 = sbuf(p, 4096, &[f], d1);
    let dst = sbuf(p, 8192, &[f], dd);
    let a = case.load_vals(in0, &va);
    let b = case.load_vals(in1, &vb);
    case.op(Op::TensorTensor { engine, op, dst, in0, in1 });
    case.store(dst);
    let out = decode(dd, &case.run(&chip)[0]);
    for i in 0..out.len() {
        let exact = alu_ref(op, a[i], b[i]);
        let want = round_ref(dd, exact as f32);
        let ok = if op == AluOp::Pow {
            // powf is not correctly rounded: 2 ulps of f32, then the store.
            (out[i] - exact).abs() <= 2.0 * ulp_of(DType::F32, exact) + 0.5 * ulp_of(dd, exact)
        } else {
            same_value(out[i], want)
        };
        if !ok {
            return Err(format!("{op} {d0}/{d1}->{dd} [{i}]: {} op {} = {}, want {want}", a[i], b[i], out[i]));
        }
    }
    Ok(())
}

#[test]
fn tensor_tensor_every_float_op() {
    for &op in &FLOAT_OPS {
        let engine = if op == AluOp::Pow { Engine::GpSimd } else { Engine::Vector };
        check_tt(op, engine, 4, 25, DType::F32, DType::F32, DType::F32, false, 3).unwrap();
        check_tt(op, engine, 3, 10, DType::Bf16, DType::F32, DType::Bf16, false, 4).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tensor_tensor_random(
        op in 0usize..FLOAT_OPS.len(),
        p in 1u32..=8,
        f in 1u32..=40,
        d0 in 0usize..5,
        d1 in 0usize..5,
        dd in 0usize..5,
        in0_psum in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let op = FLOAT_OPS[op];
        let engine = if op == AluOp::Pow { Engine::GpSimd } else { Engine::Vector };
        let in0_psum = in0_psum && engine == Engine::Vector;
        let r = check_tt(op, engine, p, f, FLOATS[d0], FLOATS[d1], FLOATS[dd], in0_psum, seed);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

fn bitwise_ref(op: AluOp, a: u32, b: u32, mask: u32) -> u32 {
    let r = match op {
        AluOp::BitAnd => a & b,
        AluOp::BitOr => a | b,
        AluOp::BitXor => a ^ b,
        AluOp::ShiftLeft => a.checked_shl(b).unwrap_or(0),
        AluOp::ShiftRight => a.checked_shr(b).unwrap_or(0),
        _ => unreachable!(),
    };
    r & mask
}

const BIT_OPS: [AluOp; 5] = [AluOp::BitAnd, AluOp::BitOr, AluOp::BitXor, AluOp::ShiftLeft, AluOp::ShiftRight];

#[test]
fn tensor_tensor_bitwise_ops_act_on_raw_integer_bits() {
    let chip = chip("trn2");
    for d in INTS {
        let mask = if d.size() == 4 { u32::MAX } else { (1u32 << (8 * d.size())) - 1 };
        let width = 8 * d.size() as u32;
        let mut rng = Lcg(17);
        let a: Vec<u32> = (0..64).map(|_| rng.next_u64() as u32 & mask).collect();
        for op in BIT_OPS {
            let shift = matches!(op, AluOp::ShiftLeft | AluOp::ShiftRight);
            let b: Vec<u32> =
                (0..64).map(|i| if shift { i as u32 % (width + 2) } else { rng.next_u64() as u32 & mask }).collect();
            for engine in [Engine::Vector, Engine::GpSimd] {
                let mut case = Case::new("bits");
                let (in0, in1, dst) = (sbuf(4, 0, &[16], d), sbuf(4, 256, &[16], d), sbuf(4, 512, &[16], d));
                case.load(in0, to_bytes(d, &a));
                case.load(in1, to_bytes(d, &b));
                case.op(Op::TensorTensor { engine, op, dst, in0, in1 });
                case.store(dst);
                let out = from_bytes(d, &case.run(&chip)[0]);
                for i in 0..64 {
                    let want = bitwise_ref(op, a[i], b[i], mask);
                    assert_eq!(out[i], want, "{d} {op} on {engine}: {:#x} op {:#x}", a[i], b[i]);
                }
            }
        }
    }
}

#[test]
fn gpsimd_int32_arithmetic_is_exact_and_saturates() {
    let chip = chip("trn2");
    let max = i32::MAX as i64;
    let min = i32::MIN as i64;
    let big = (1i64 << 24) + 1; // not representable in FP32
    let a = [max, min, 65536, -65536, big, 7, -7, 100, 0, big, -3, max];
    let b = [1, -1, 65536, 65536, 2, 2, 3, -100, 0, big, 4, max];
    let sat = |v: i64| v.clamp(min, max);
    type IntOp = fn(i64, i64) -> i64;
    let cases: [(AluOp, IntOp); 11] = [
        (AluOp::Add, |a, b| a + b),
        (AluOp::Sub, |a, b| a - b),
        (AluOp::Mul, |a, b| a * b),
        (AluOp::Max, |a, b| a.max(b)),
        (AluOp::Min, |a, b| a.min(b)),
        (AluOp::AbsMax, |a, b| a.abs().max(b.abs())),
        (AluOp::AbsMin, |a, b| a.abs().min(b.abs())),
        (AluOp::Eq, |a, b| (a == b) as i64),
        (AluOp::Lt, |a, b| (a < b) as i64),
        (AluOp::Ge, |a, b| (a >= b) as i64),
        (AluOp::LogicalXor, |a, b| ((a != 0) != (b != 0)) as i64),
    ];
    for (op, f) in cases {
        let mut case = Case::new("int");
        let (in0, in1, dst) =
            (sbuf(1, 0, &[12], DType::I32), sbuf(1, 64, &[12], DType::I32), sbuf(1, 128, &[12], DType::I32));
        case.load_ints(in0, &a);
        case.load_ints(in1, &b);
        case.op(Op::TensorTensor { engine: Engine::GpSimd, op, dst, in0, in1 });
        case.store(dst);
        let out = decode_ints(DType::I32, &case.run(&chip)[0]);
        for i in 0..12 {
            assert_eq!(out[i], sat(f(a[i], b[i])), "{op}({}, {})", a[i], b[i]);
        }
    }
}

#[test]
fn gpsimd_int_arithmetic_saturates_to_a_narrow_destination() {
    let chip = chip("trn2");
    let mut case = Case::new("narrow");
    let (in0, in1, dst) = (sbuf(1, 0, &[4], DType::I32), sbuf(1, 64, &[4], DType::I32), sbuf(1, 128, &[4], DType::I8));
    case.load_ints(in0, &[100, -100, 5, 300]);
    case.load_ints(in1, &[100, -100, -3, -200]);
    case.op(Op::TensorTensor { engine: Engine::GpSimd, op: AluOp::Add, dst, in0, in1 });
    case.store(dst);
    assert_eq!(decode_ints(DType::I8, &case.run(&chip)[0]), vec![127, -128, 2, 100]);
}

#[test]
fn vector_int_arithmetic_runs_in_fp32() {
    // HW-DT-MATH: VectorE computes in FP32, so 2^24 + 1 is not exact there.
    let chip = chip("trn2");
    let mut case = Case::new("fp32_ints");
    let (in0, in1, dst) = (sbuf(1, 0, &[3], DType::I32), sbuf(1, 64, &[3], DType::I32), sbuf(1, 128, &[3], DType::I32));
    case.load_ints(in0, &[(1 << 24) + 1, i32::MAX as i64, 5]);
    case.load_ints(in1, &[0, i32::MAX as i64, -7]);
    case.op(Op::TensorTensor { engine: Engine::Vector, op: AluOp::Add, dst, in0, in1 });
    case.store(dst);
    assert_eq!(decode_ints(DType::I32, &case.run(&chip)[0]), vec![1 << 24, i32::MAX as i64, -2]);
}

// ---------------------------------------------------------------------------
// tensor_scalar

fn stage(op: AluOp, operand: Operand, reverse: bool) -> ScalarStage {
    ScalarStage { op, operand, reverse }
}

/// Runs tensor_scalar on `vals` ([p, f] f32) and compares with the reference.
#[allow(clippy::too_many_arguments)]
fn check_ts(
    engine: Engine,
    p: u32,
    f: u32,
    vals: &[f32],
    first: (AluOp, Option<f32>, bool),
    second: Option<(AluOp, Option<f32>, bool)>,
    dd: DType,
    seed: u64,
) -> Result<(), String> {
    let chip = chip("trn2");
    let mut case = Case::new("ts");
    let src = sbuf(p, 0, &[f], DType::F32);
    let dst = sbuf(p, 4096, &[f], dd);
    let x = case.load_vals(src, vals);
    let mut rng = Lcg(seed | 1);
    // `None` means a per-partition operand: one value per partition.
    let mut operand = |imm: Option<f32>, offset: u64, case: &mut Case| -> (Operand, Vec<f64>) {
        match imm {
            Some(v) => (Operand::Imm(v), vec![v as f64; p as usize]),
            None => {
                let ap = sbuf(p, offset, &[1], DType::F32);
                let v = case.load_vals(ap, &rng.vec(p as usize, 0.5, 3.0));
                (Operand::PerPartition(ap), v)
            }
        }
    };
    let (op0, s0) = operand(first.1, 8192, &mut case);
    let st0 = stage(first.0, op0, first.2);
    let second = second.map(|(op, imm, rev)| {
        let (o, v) = operand(imm, 8256, &mut case);
        (stage(op, o, rev), v)
    });
    case.op(Op::TensorScalar { engine, dst, src, first: st0, second: second.as_ref().map(|s| s.0) });
    case.store(dst);
    let out = decode(dd, &case.run(&chip)[0]);
    let apply = |st: &ScalarStage, x: f64, s: f64| -> f64 {
        let r = if st.reverse { alu_ref(st.op, s, x) } else { alu_ref(st.op, x, s) };
        r as f32 as f64 // each stage computes in FP32
    };
    for (i, &got) in out.iter().enumerate() {
        let part = i / f as usize;
        let mut v = apply(&st0, x[i], s0[part]);
        if let Some((st, vals)) = &second {
            v = apply(st, v, vals[part]);
        }
        let want = round_ref(dd, v as f32);
        if !same_value(got, want) {
            return Err(format!("[{i}] x = {}: got {got}, want {want}", x[i]));
        }
    }
    Ok(())
}

#[test]
fn tensor_scalar_one_stage_every_arithmetic_op_and_reverse() {
    let vals = Lcg(3).vec(4 * 9, -5.0, 5.0);
    for &op in &FLOAT_OPS {
        if op == AluOp::Pow {
            continue;
        }
        for reverse in [false, true] {
            check_ts(Engine::Vector, 4, 9, &vals, (op, Some(1.5), reverse), None, DType::F32, 1)
                .unwrap_or_else(|e| panic!("{op} reverse={reverse}: {e}"));
        }
    }
}

#[test]
fn tensor_scalar_reverse_swaps_operands() {
    let vals = [1.0, 2.0, 4.0, -8.0];
    // 10 - x and 10 / x.
    check_ts(Engine::Vector, 1, 4, &vals, (AluOp::Sub, Some(10.0), true), None, DType::F32, 1).unwrap();
    check_ts(Engine::Vector, 1, 4, &vals, (AluOp::Div, Some(10.0), true), None, DType::F32, 1).unwrap();
}

#[test]
fn tensor_scalar_two_stages_and_per_partition_operands() {
    let vals = Lcg(8).vec(8 * 20, -3.0, 3.0);
    // Scalar engine supports (mul, add) (HW-ISA-TS).
    check_ts(Engine::Scalar, 8, 20, &vals, (AluOp::Mul, None, false), Some((AluOp::Add, None, false)), DType::F32, 2)
        .unwrap();
    check_ts(
        Engine::Vector,
        8,
        20,
        &vals,
        (AluOp::Max, None, false),
        Some((AluOp::Sub, Some(0.75), true)),
        DType::Bf16,
        3,
    )
    .unwrap();
    check_ts(
        Engine::GpSimd,
        8,
        20,
        &vals,
        (AluOp::Mul, Some(-2.5), false),
        Some((AluOp::Bypass, Some(0.0), false)),
        DType::F16,
        4,
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn tensor_scalar_random(
        p in 1u32..=8,
        f in 1u32..=30,
        op0 in 0usize..FLOAT_OPS.len(),
        op1 in 0usize..FLOAT_OPS.len(),
        imm0 in prop::option::of(-4.0f32..4.0),
        imm1 in prop::option::of(-4.0f32..4.0),
        rev0 in any::<bool>(),
        rev1 in any::<bool>(),
        two in any::<bool>(),
        dd in 0usize..5,
        seed in any::<u64>(),
    ) {
        let (op0, op1) = (FLOAT_OPS[op0], FLOAT_OPS[op1]);
        prop_assume!(op0 != AluOp::Pow && op1 != AluOp::Pow);
        let vals = Lcg(seed | 1).vec((p * f) as usize, -4.0, 4.0);
        let second = two.then_some((op1, imm1, rev1));
        let r = check_ts(Engine::Vector, p, f, &vals, (op0, imm0, rev0), second, FLOATS[dd], seed);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

#[test]
fn tensor_scalar_bitwise_stages_act_on_raw_integer_bits() {
    // HW-DT-MATH: bitvec ops treat integers as raw bits, as tensor_tensor does.
    let chip = chip("trn2");
    for d in INTS {
        let mask = if d.size() == 4 { u32::MAX } else { (1u32 << (8 * d.size())) - 1 };
        let mut rng = Lcg(23);
        let mut a: Vec<u32> = (0..16).map(|_| rng.next_u64() as u32 & mask).collect();
        a[0] = mask; // -1 for signed types
        a[1] = mask ^ (mask >> 1); // the sign bit alone: -128 for i8
        a[2] = 100;
        for (op, imm) in [
            (AluOp::ShiftRight, 1u32),
            (AluOp::ShiftLeft, 1),
            (AluOp::BitAnd, 0x5a),
            (AluOp::BitOr, 0x21),
            (AluOp::BitXor, 0x7f),
        ] {
            let mut case = Case::new("ts_bits");
            let (src, dst) = (sbuf(2, 0, &[8], d), sbuf(2, 64, &[8], d));
            case.load(src, to_bytes(d, &a));
            let first = stage(op, Operand::Imm(imm as f32), false);
            case.op(Op::TensorScalar { engine: Engine::Vector, dst, src, first, second: None });
            case.store(dst);
            let out = from_bytes(d, &case.run(&chip)[0]);
            for i in 0..16 {
                let want = bitwise_ref(op, a[i], imm, mask);
                assert_eq!(out[i], want, "{d} {op} {imm}: {:#x}", a[i]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// tensor_reduce

fn reduce_ref(op: AluOp, xs: &[f64]) -> f64 {
    let mut it = xs.iter().copied();
    let first = it.next().unwrap_or(0.0);
    it.fold(first, |acc, x| match op {
        AluOp::Add => acc + x,
        AluOp::Mul => acc * x,
        AluOp::Max => acc.max(x),
        AluOp::Min => acc.min(x),
        AluOp::LogicalAnd => ((acc != 0.0) && (x != 0.0)) as i32 as f64,
        AluOp::LogicalOr => ((acc != 0.0) || (x != 0.0)) as i32 as f64,
        AluOp::LogicalXor => ((acc != 0.0) != (x != 0.0)) as i32 as f64,
        _ => unreachable!(),
    })
}

#[test]
fn tensor_reduce_one_and_two_axes_with_negate() {
    let chip = chip("trn2");
    let (p, a, b) = (3u32, 4u32, 5u32);
    let mut vals = Lcg(31).vec((p * a * b) as usize, -2.0, 2.0);
    vals.iter_mut().step_by(7).for_each(|v| *v = 0.0);
    for op in [AluOp::Add, AluOp::Max, AluOp::Min, AluOp::Mul, AluOp::LogicalAnd, AluOp::LogicalOr, AluOp::LogicalXor] {
        for axes in [1u8, 2] {
            for negate in [false, true] {
                for engine in [Engine::Vector, Engine::GpSimd] {
                    let mut case = Case::new("reduce");
                    let src = sbuf(p, 0, &[a, b], DType::F32);
                    let x = case.load_vals(src, &vals);
                    let kept = if axes == 1 { a } else { 1 };
                    let dst = sbuf(p, 1024, &[kept], DType::F32);
                    case.op(Op::TensorReduce { engine, op, dst, src, axes, negate });
                    case.store(dst);
                    let out = decode(DType::F32, &case.run(&chip)[0]);
                    let group = if axes == 1 { b } else { a * b } as usize;
                    for (g, chunk) in x.chunks(group).enumerate() {
                        let r = reduce_ref(op, chunk);
                        let want = if negate { -r } else { r };
                        let abs: f64 = chunk.iter().map(|v| v.abs()).sum();
                        let tol = if op == AluOp::Add { group as f64 * U * abs } else { 0.0 };
                        let tol = if op == AluOp::Mul { group as f64 * U * want.abs() } else { tol };
                        assert!(
                            (out[g] - want).abs() <= tol,
                            "{op} axes={axes} negate={negate} {engine} group {g}: {} vs {want}",
                            out[g]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tensor_reduce_bitwise_on_integers() {
    let chip = chip("trn2");
    for d in [DType::I32, DType::U32, DType::U8, DType::I16] {
        let mask = if d.size() == 4 { u32::MAX } else { (1u32 << (8 * d.size())) - 1 };
        let mut rng = Lcg(41);
        // Mostly-set bits so AND does not collapse to zero by chance.
        let bits: Vec<u32> = (0..4 * 6).map(|_| (rng.next_u64() as u32 | 0x8100_1081) & mask).collect();
        for op in [AluOp::BitAnd, AluOp::BitOr, AluOp::BitXor] {
            let mut case = Case::new("reduce_bits");
            let src = sbuf(4, 0, &[6], d);
            case.load(src, to_bytes(d, &bits));
            let dst = sbuf(4, 64, &[1], d);
            case.op(Op::TensorReduce { engine: Engine::Vector, op, dst, src, axes: 1, negate: false });
            case.store(dst);
            let out = from_bytes(d, &case.run(&chip)[0]);
            for (g, chunk) in bits.chunks(6).enumerate() {
                let want = chunk[1..].iter().fold(chunk[0], |acc, &x| bitwise_ref(op, acc, x, mask));
                assert_eq!(out[g], want, "{d} {op} partition {g}: {chunk:x?}");
            }
        }
    }
}

#[test]
fn matmul_into_a_psum_tile_at_a_partition_and_byte_offset() {
    // dst starts at partition 32 and byte 2048 + 128 (bank 1); both the
    // in-place and the general path must land exactly there.
    let chip = chip("trn2");
    for generic in [false, true] {
        let mut case = Case::new("psum_offset");
        let (k, m, n) = (24u32, 16u32, 8u32);
        let st = sbuf(k, 0, &[m], DType::Bf16);
        let mv = sbuf(k, 64, &[n], DType::Bf16);
        let a = case.load_vals(st, &Lcg(1).vec((k * m) as usize, -1.0, 1.0));
        let b = case.load_vals(mv, &Lcg(2).vec((k * n) as usize, -1.0, 1.0));
        // The surrounding PSUM region is pre-filled and must stay untouched.
        let around = Ap::psum(32, 32, 2048, &[64], DType::F32);
        case.load_vals(around, &[7.0; 32 * 64]);
        let dims: &[Dim] = if generic {
            &[Dim { stride: 4, size: 2 }, Dim { stride: 1, size: 4 }]
        } else {
            &[Dim { stride: 1, size: 8 }]
        };
        let dst = Ap::new(Space::Psum, 32, m, 0, 2048 + 128, dims, DType::F32);
        case.op(Op::MatMul { dst, stationary: st, moving: mv, start: true, stop: true });
        case.store(around);
        let out = decode(DType::F32, &case.run(&chip)[0]);
        for p in 0..32usize {
            for j in 0..64usize {
                let got = out[p * 64 + j];
                if p < m as usize && (32..40).contains(&j) {
                    let jj = j - 32;
                    let want: f64 = (0..k as usize).map(|kk| a[kk * m as usize + p] * b[kk * n as usize + jj]).sum();
                    assert!((got - want).abs() < 1e-5, "generic={generic} C[{p},{jj}] = {got}, want {want}");
                } else {
                    assert_eq!(got, 7.0, "generic={generic}: PSUM [{p},{j}] outside dst was changed");
                }
            }
        }
    }
}

#[test]
fn broadcast_and_reversed_operands() {
    // A stride-0 operand repeats one element; a negative stride reverses a row.
    let chip = chip("trn2");
    let mut case = Case::new("broadcast");
    let a = sbuf(4, 0, &[8], DType::F32);
    let col = sbuf(4, 64, &[1], DType::F32);
    let row = sbuf(4, 128, &[8], DType::F32);
    let av = case.load_vals(a, &Lcg(5).vec(32, -3.0, 3.0));
    let cv = case.load_vals(col, &[1.0, 2.0, 3.0, 4.0]);
    let rv = case.load_vals(row, &Lcg(6).vec(32, -3.0, 3.0));
    let bcast = Ap::new(Space::Sbuf, 0, 4, 0, 64, &[Dim { stride: 0, size: 8 }], DType::F32);
    let reversed = Ap::new(Space::Sbuf, 0, 4, 0, 128 + 7 * 4, &[Dim { stride: -1, size: 8 }], DType::F32);
    let d1 = sbuf(4, 256, &[8], DType::F32);
    let d2 = sbuf(4, 512, &[8], DType::F32);
    case.op(Op::TensorTensor { engine: Engine::Vector, op: AluOp::Mul, dst: d1, in0: a, in1: bcast });
    case.op(Op::TensorTensor { engine: Engine::Vector, op: AluOp::Sub, dst: d2, in0: a, in1: reversed });
    case.store(d1);
    case.store(d2);
    let outs = case.run(&chip);
    let (o1, o2) = (decode(DType::F32, &outs[0]), decode(DType::F32, &outs[1]));
    for p in 0..4 {
        for j in 0..8 {
            let i = p * 8 + j;
            assert_eq!(o1[i], (av[i] * cv[p]) as f32 as f64, "broadcast [{p},{j}]");
            assert_eq!(o2[i], (av[i] - rv[p * 8 + 7 - j]) as f32 as f64, "reversed [{p},{j}]");
        }
    }
}
