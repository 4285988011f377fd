//! Values of `activation` for every function, with immediate and
//! per-partition scales, bias and the accumulator, against f64 formulas.

mod common;

use common::*;
use proptest::prelude::*;
use trainyard_arch::DType;
use trainyard_isa::{ActFn, Ap, Op, Operand};

const FLOATS: [DType; 3] = [DType::F32, DType::Bf16, DType::F16];
const U: f64 = 1.0 / (1u64 << 24) as f64; // unit roundoff of f32

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

/// erf by composite Simpson integration of 2/√π·e^(−t²): independent of the
/// simulator's series and accurate to ~1e-15 on |x| ≤ 6.
fn erf_ref(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let g = |t: f64| (-t * t).exp();
    let mut s = g(0.0) + g(x);
    for i in 1..n {
        s += g(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn act_ref(func: ActFn, z: f64) -> f64 {
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    match func {
        ActFn::Identity => z,
        ActFn::Exp => z.exp(),
        ActFn::Log => z.ln(),
        ActFn::Tanh => z.tanh(),
        ActFn::Sigmoid => sigmoid(z),
        ActFn::Relu => z.max(0.0),
        ActFn::GeluTanh => 0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh()),
        ActFn::GeluErf => 0.5 * z * (1.0 + erf_ref(z / std::f64::consts::SQRT_2)),
        ActFn::Silu => z * sigmoid(z),
        ActFn::Softplus => (1.0 + z.exp()).ln(),
        ActFn::Sqrt => z.sqrt(),
        ActFn::Rsqrt => 1.0 / z.sqrt(),
        ActFn::Reciprocal => 1.0 / z,
        ActFn::Square => z * z,
        ActFn::Abs => z.abs(),
        ActFn::Sign => {
            if z > 0.0 {
                1.0
            } else if z < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        ActFn::Erf => erf_ref(z),
    }
}

/// Inputs where the function is defined and well conditioned.
fn act_domain(func: ActFn) -> (f32, f32) {
    match func {
        ActFn::Log | ActFn::Sqrt | ActFn::Rsqrt => (0.05, 20.0),
        ActFn::Reciprocal => (0.1, 8.0),
        ActFn::Exp | ActFn::Softplus => (-6.0, 6.0),
        _ => (-4.0, 4.0),
    }
}

/// Runs activation with scale/bias/acc and compares with the f64 formulas:
/// a few f32 ulps, then the destination's rounding.
fn check_activation(
    func: ActFn,
    p: u32,
    f: u32,
    dd: DType,
    per_partition_scale: bool,
    seed: u64,
) -> Result<(), String> {
    let chip = chip("trn1");
    let mut case = Case::new("act");
    let mut rng = Lcg(seed | 1);
    let (lo, hi) = act_domain(func);
    let src = sbuf(p, 0, &[f], DType::F32);
    let dst = sbuf(p, 4096, &[f], dd);
    // z = x·scale + bias stays in the domain: scale in [0.5, 1], bias ≥ 0 small.
    let x = case.load_vals(src, &rng.vec((p * f) as usize, lo, hi * 0.8));
    let scale_ap = sbuf(p, 8192, &[1], DType::F32);
    let bias_ap = sbuf(p, 8256, &[1], DType::F32);
    let acc_ap = sbuf(p, 8320, &[1], DType::F32);
    let (scale, scales) = if per_partition_scale {
        let s = case.load_vals(scale_ap, &rng.vec(p as usize, 0.5, 1.0));
        (Operand::PerPartition(scale_ap), s)
    } else {
        (Operand::Imm(0.75), vec![0.75; p as usize])
    };
    let bias = case.load_vals(bias_ap, &rng.vec(p as usize, 0.0, 0.2 * hi.abs().min(1.0)));
    case.op(Op::Activation { func, dst, src, scale, bias: Some(bias_ap), acc: Some(acc_ap) });
    case.store(dst);
    case.store(acc_ap);
    let outs = case.run(&chip);
    let (y, acc) = (decode(dd, &outs[0]), decode(DType::F32, &outs[1]));
    for part in 0..p as usize {
        let (mut sum, mut abs) = (0.0f64, 0.0f64);
        for j in 0..f as usize {
            let i = part * f as usize + j;
            // The FP32 pipeline: x·scale and + bias each round to f32.
            let z = ((x[i] as f32 * scales[part] as f32) + bias[part] as f32) as f64;
            let want = act_ref(func, z);
            let tol = 4.0 * ulp_of(DType::F32, want) + 0.5 * ulp_of(dd, want).max(ulp_of(dd, y[i]));
            let tol = if dd == DType::F32 { 4.0 * ulp_of(DType::F32, want) } else { tol };
            // Written so that a NaN result fails too.
            let close = (y[i] - want).abs() <= tol;
            if !close {
                return Err(format!("{func}({z}) -> {dd}: got {}, want {want} ± {tol}", y[i]));
            }
            sum += want;
            abs += want.abs();
        }
        // The accumulator sums the FP32 results, before the store's rounding.
        let tol = (f as f64 + 4.0) * 4.0 * U * abs + 1e-30;
        if (acc[part] - sum).abs() > tol {
            return Err(format!("{func} acc[{part}]: got {}, want {sum} ± {tol}", acc[part]));
        }
    }
    Ok(())
}

#[test]
fn activation_every_function_with_scale_bias_and_acc() {
    for (i, &func) in ActFn::ALL.iter().enumerate() {
        check_activation(func, 4, 16, DType::F32, i % 2 == 0, i as u64).unwrap();
        check_activation(func, 2, 8, DType::Bf16, i % 2 == 1, 100 + i as u64).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn activation_random(
        func in 0usize..ActFn::ALL.len(),
        p in 1u32..=16,
        f in 1u32..=24,
        dd in 0usize..3,
        per_partition in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let r = check_activation(ActFn::ALL[func], p, f, FLOATS[dd], per_partition, seed);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

#[test]
fn activation_without_bias_or_acc() {
    let chip = chip("trn2");
    let mut case = Case::new("relu");
    let src = sbuf(2, 0, &[4], DType::F32);
    let dst = sbuf(2, 64, &[4], DType::F32);
    case.load_vals(src, &[-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 8.0, -8.0]);
    case.op(Op::Activation { func: ActFn::Relu, dst, src, scale: Operand::Imm(-2.0), bias: None, acc: None });
    case.store(dst);
    let out = decode(DType::F32, &case.run(&chip)[0]);
    assert_eq!(out, vec![2.0, 0.0, 6.0, 0.0, 0.0, 1.0, 0.0, 16.0]);
}
