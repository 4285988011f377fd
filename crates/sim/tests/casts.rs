//! Copies and casts between every pair of dtypes (engines and DMA), fp8 edge
//! cases, and store rounding: nearest-even by default, seeded stochastic
//! rounding on request.

mod common;

use common::*;
use proptest::prelude::*;
use trainyard_arch::DType;
use trainyard_isa::{AluOp, Ap, Engine, Op};
use trainyard_sim::SimOptions;

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

/// Values that probe rounding, saturation and the special values of every type.
fn probe_values() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.5,
        3.5,
        -2.5,
        -3.5,
        127.0,
        127.5,
        128.0,
        255.0,
        255.5,
        256.0,
        -128.0,
        -128.5,
        -129.0,
        1000.7,
        32767.5,
        65504.0,
        65520.0,
        70000.0,
        448.0,
        464.0,
        500.0,
        57344.0,
        61440.0,
        1e6,
        -1e6,
        1e-3,
        3e-8,
        2f32.powi(-9),
        2f32.powi(-10),
        1.0625,
        1.1875,
        16777217.0,
        3e9,
        -3e9,
        5e9,
        1.0 + 2f32.powi(-8),
        f32::MIN_POSITIVE / 4.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]
}

/// The reference cast of one stored element of `src` to `dst`: bit-exact for
/// equal types, exact and saturating between integers, through FP32
/// otherwise (HW-DT-COPY), integers rounding to nearest even and saturating
/// (HW-DT-F2I).
fn cast_ref(src: DType, dst: DType, bits: u32) -> u32 {
    if src == dst {
        return bits;
    }
    if src.is_int() && dst.is_int() {
        let (lo, hi) = int_range(dst);
        return int_bits(dst, int_value(src, bits).clamp(lo, hi));
    }
    let x: f32 = if src.is_int() { int_value(src, bits) as f32 } else { decode_ref(src, bits) as f32 };
    round_bits_ref(dst, x)
}

fn check_cast_bits(src: DType, dst: DType, input: &[u32], got: &[u32], how: &str) {
    for (i, (&b, &g)) in input.iter().zip(got).enumerate() {
        let want = cast_ref(src, dst, b);
        let ok = want == g || (dst.is_float() && same_value(decode_ref(dst, want), decode_ref(dst, g)) && src != dst);
        assert!(
            ok,
            "{how} {src}->{dst} [{i}]: {} ({b:#x}) -> {} ({g:#x}), want {} ({want:#x})",
            decode_ref(src, b),
            decode_ref(dst, g),
            decode_ref(dst, want)
        );
    }
}

/// Source patterns: the probe values stored in `src`, plus every pattern of
/// 8-bit types.
fn source_patterns(src: DType) -> Vec<u32> {
    let mut bits: Vec<u32> = probe_values().into_iter().map(|v| round_bits_ref(src, v)).collect();
    if src.size() == 1 {
        bits.extend(0..256);
    }
    match src {
        DType::I32 => bits.extend([i32::MIN as u32, i32::MAX as u32, (1 << 24) + 1]),
        DType::U32 => bits.extend([u32::MAX, 0x8000_0001]),
        DType::F32 => bits.extend([0x7fc0_1234, 0x0000_0001, 0x8000_0001, 0x3f80_0001]),
        DType::Bf16 => bits.extend([0x7fc1, 0x0001, 0x7f7f]),
        DType::F16 => bits.extend([0x7e01, 0x0001, 0x7bff, 0x8001]),
        _ => {}
    }
    bits
}

#[test]
fn copy_casts_between_every_dtype_pair() {
    let chip = chip("trn2");
    for src in DType::ALL {
        let input = source_patterns(src);
        let n = input.len() as u32;
        for dst in DType::ALL {
            for engine in [Engine::Vector, Engine::Scalar, Engine::GpSimd] {
                let mut case = Case::new("cast");
                let s = sbuf(1, 0, &[n], src);
                let d = sbuf(1, 4096, &[n], dst);
                case.load(s, to_bytes(src, &input));
                case.op(Op::Copy { engine, dst: d, src: s });
                case.store(d);
                let got = from_bytes(dst, &case.run(&chip)[0]);
                check_cast_bits(src, dst, &input, &got, &format!("copy on {engine}"));
            }
        }
    }
}

#[test]
fn dma_copy_casts_between_every_dtype_pair() {
    let chip = chip("trn1");
    for src in DType::ALL {
        let input = source_patterns(src);
        let n = input.len() as u32;
        for dst in DType::ALL {
            // HBM → SBUF with a cast, then a bit-exact store.
            let mut case = Case::new("dma_cast");
            let s = sbuf(1, 0, &[n], src);
            let d = sbuf(1, 4096, &[n], dst);
            case.load(s, to_bytes(src, &input));
            case.op(Op::DmaCopy { queue: 3, dst: d, src: s });
            case.store(d);
            let got = from_bytes(dst, &case.run(&chip)[0]);
            check_cast_bits(src, dst, &input, &got, "dma_copy");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_casts(
        src in 0usize..11,
        dst in 0usize..11,
        p in 1u32..=8,
        f in 1u32..=16,
        scale in prop::sample::select(vec![1e-6f32, 1e-2, 1.0, 300.0, 7e4, 5e9]),
        seed in any::<u64>(),
    ) {
        let (src, dst) = (DType::ALL[src], DType::ALL[dst]);
        let chip = chip("trn2");
        let mut rng = Lcg(seed | 1);
        let vals = rng.vec((p * f) as usize, -scale, scale);
        let input: Vec<u32> = vals.iter().map(|&v| round_bits_ref(src, v)).collect();
        let mut case = Case::new("cast");
        let s = sbuf(p, 0, &[f], src);
        let d = sbuf(p, 256, &[f], dst);
        case.load(s, to_bytes(src, &input));
        case.op(Op::Copy { engine: Engine::Vector, dst: d, src: s });
        case.store(d);
        let got = from_bytes(dst, &case.run(&chip)[0]);
        for (i, (&b, &g)) in input.iter().zip(&got).enumerate() {
            let want = cast_ref(src, dst, b);
            prop_assert!(want == g || same_value(decode_ref(dst, want), decode_ref(dst, g)),
                "{}->{} [{}]: {:#x} -> {:#x}, want {:#x}", src, dst, i, b, g, want);
        }
    }
}

/// Stores `vals` (f32) into `dst` with a copy and returns the stored patterns.
fn store_as(dst: DType, vals: &[f32]) -> Vec<u32> {
    let chip = chip("trn2");
    let mut case = Case::new("store");
    let n = vals.len() as u32;
    let s = sbuf(1, 0, &[n], DType::F32);
    let d = sbuf(1, 4096, &[n], dst);
    case.load(s, encode(DType::F32, vals));
    case.op(Op::Copy { engine: Engine::Vector, dst: d, src: s });
    case.store(d);
    from_bytes(dst, &case.run(&chip)[0])
}

#[test]
fn fp8_e4m3_edge_cases() {
    let p = |e: i32| 2f32.powi(e);
    let cases: [(f32, u32); 16] = [
        (1e6, 0x7e),           // saturates to +448
        (-1e6, 0xfe),          // -448
        (f32::INFINITY, 0x7e), // no infinities: saturate
        (f32::NEG_INFINITY, 0xfe),
        (464.0, 0x7e), // halfway to the (missing) 480: saturate
        (448.0, 0x7e),
        (p(-9), 0x01),        // smallest subnormal
        (p(-10), 0x00),       // half of it: tie to even (zero)
        (3.0 * p(-10), 0x02), // 1.5 subnormal quanta: tie to even (2)
        (7.0 * p(-9), 0x07),  // largest subnormal
        (p(-6), 0x08),        // smallest normal
        (1.0625, 0x38),       // tie between 1.0 and 1.125: even → 1.0
        (1.1875, 0x3a),       // tie between 1.125 and 1.25: even → 1.25
        (-1.1875, 0xba),
        (-0.0, 0x80),
        (0.3, 0x2a), // 0.3 → 0.3125 (nearest)
    ];
    let vals: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let got = store_as(DType::F8E4M3, &vals);
    for (i, &(v, want)) in cases.iter().enumerate() {
        assert_eq!(got[i], want, "{v} -> {:#x}, want {want:#x}", got[i]);
    }
    let nan = store_as(DType::F8E4M3, &[f32::NAN, -f32::NAN]);
    assert!(nan.iter().all(|&b| b & 0x7f == 0x7f), "NaN patterns {nan:x?}");
}

#[test]
fn fp8_e5m2_edge_cases() {
    let p = |e: i32| 2f32.powi(e);
    let cases: [(f32, u32); 13] = [
        (1e6, 0x7b), // saturates to +57344
        (-1e6, 0xfb),
        (61440.0, 0x7b),       // halfway to infinity: saturate
        (f32::INFINITY, 0x7c), // infinities exist
        (f32::NEG_INFINITY, 0xfc),
        (p(-16), 0x01),       // smallest subnormal
        (p(-17), 0x00),       // tie to even (zero)
        (3.0 * p(-17), 0x02), // tie to even (2)
        (p(-14), 0x04),       // smallest normal
        (1.125, 0x3c),        // tie between 1.0 and 1.25: even → 1.0
        (1.375, 0x3e),        // tie between 1.25 and 1.5: even → 1.5
        (-2.5, 0xc1),
        (57344.0, 0x7b),
    ];
    let vals: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let got = store_as(DType::F8E5M2, &vals);
    for (i, &(v, want)) in cases.iter().enumerate() {
        assert_eq!(got[i], want, "{v} -> {:#x}, want {want:#x}", got[i]);
    }
    let nan = store_as(DType::F8E5M2, &[f32::NAN]);
    assert!(nan[0] & 0x7f > 0x7c, "NaN pattern {:#x}", nan[0]);
}

#[test]
fn fp8_patterns_decode_exactly() {
    // Every fp8 pattern copied to f32 equals its value from the bit fields.
    for d in [DType::F8E4M3, DType::F8E5M2] {
        let chip = chip("trn2");
        let bits: Vec<u32> = (0..256).collect();
        let mut case = Case::new("fp8_decode");
        let s = sbuf(1, 0, &[256], d);
        let f = sbuf(1, 1024, &[256], DType::F32);
        case.load(s, to_bytes(d, &bits));
        case.op(Op::Copy { engine: Engine::Vector, dst: f, src: s });
        case.store(f);
        let got = decode(DType::F32, &case.run(&chip)[0]);
        for (b, g) in bits.iter().zip(got) {
            assert!(same_value(g, fp8_decode_ref(d, *b as u8)), "{d} {b:#x} -> {g}");
        }
    }
}

#[test]
fn integer_stores_round_to_nearest_even_and_saturate() {
    let vals = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 1e10, -1e10, f32::NAN, 254.5, 255.5, -0.4];
    let want_i8 = [0i64, 2, 2, 0, -2, -2, 127, -128, 0, 127, 127, 0];
    let want_u8 = [0i64, 2, 2, 0, 0, 0, 255, 0, 0, 254, 255, 0];
    let want_i32 = [0i64, 2, 2, 0, -2, -2, i32::MAX as i64, i32::MIN as i64, 0, 254, 256, 0];
    for (d, want) in [(DType::I8, &want_i8), (DType::U8, &want_u8), (DType::I32, &want_i32)] {
        let got: Vec<i64> = store_as(d, &vals).into_iter().map(|b| int_value(d, b)).collect();
        assert_eq!(&got[..], &want[..], "{d}");
    }
}

#[test]
fn float_stores_round_to_nearest_even() {
    let h = 2f32.powi(-8);
    // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie (→ 1), 1 + 3·2^-8 a tie (→ 1 + 2^-6).
    let got = store_as(DType::Bf16, &[1.0 + h, 1.0 + 3.0 * h, 1.0 + 1.5 * h, -(1.0 + h)]);
    let vals: Vec<f64> = got.iter().map(|&b| decode_ref(DType::Bf16, b)).collect();
    assert_eq!(vals, vec![1.0, 1.0 + 4.0 * h as f64, 1.0 + 2.0 * h as f64, -1.0]);
    // f16 keeps 11: 2049 is a tie between 2048 and 2050 (→ 2048), 2051 one between 2050 and 2052 (→ 2052).
    let got = store_as(DType::F16, &[2049.0, 2051.0, 65520.0, 1e-8]);
    let vals: Vec<f64> = got.iter().map(|&b| decode_ref(DType::F16, b)).collect();
    assert_eq!(vals, vec![2048.0, 2052.0, f64::INFINITY, 0.0]);
}

#[test]
fn compute_results_round_to_nearest_even_on_store() {
    // The tensor_tensor result 1 + 2^-8 (exact in FP32) is stored to bf16 as 1.0.
    let chip = chip("trn1");
    let mut case = Case::new("tt_store");
    let (a, b, d) = (sbuf(1, 0, &[2], DType::F32), sbuf(1, 64, &[2], DType::F32), sbuf(1, 128, &[2], DType::Bf16));
    case.load_vals(a, &[1.0, 1.0]);
    case.load_vals(b, &[2f32.powi(-8), 3.0 * 2f32.powi(-8)]);
    case.op(Op::TensorTensor { engine: Engine::Vector, op: AluOp::Add, dst: d, in0: a, in1: b });
    case.store(d);
    let out = decode(DType::Bf16, &case.run(&chip)[0]);
    assert_eq!(out, vec![1.0, 1.0 + 2f64.powi(-6)]);
}

// ---------------------------------------------------------------------------
// Stochastic rounding.

fn stochastic_store(dst: DType, vals: &[f32], stochastic: bool, seed: u64) -> Vec<u32> {
    let chip = chip("trn2");
    let mut case = Case::new("sr");
    let n = vals.len() as u32;
    let s = sbuf(1, 0, &[n], DType::F32);
    let d = sbuf(1, 8192, &[n], dst);
    case.load(s, encode(DType::F32, vals));
    case.op(Op::Copy { engine: Engine::Vector, dst: d, src: s });
    case.store(d);
    let opts = SimOptions { stochastic_rounding: stochastic, seed, ..SimOptions::default() };
    let (_, outs) = case.run_with(&chip, opts).unwrap();
    from_bytes(dst, &outs[0])
}

#[test]
fn stochastic_rounding_is_seeded_and_brackets_the_value() {
    let vals = Lcg(77).vec(1000, -3.0, 3.0);
    for d in [DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
        let rne = stochastic_store(d, &vals, false, 0);
        let sr1 = stochastic_store(d, &vals, true, 1);
        let sr1_again = stochastic_store(d, &vals, true, 1);
        let sr2 = stochastic_store(d, &vals, true, 2);
        assert_eq!(sr1, sr1_again, "{d}: same seed, same result");
        assert_ne!(sr1, sr2, "{d}: another seed, another result");
        assert_ne!(sr1, rne, "{d}: stochastic differs from nearest-even somewhere");
        // Each result is one of the two representable neighbours of the value.
        for (i, &x) in vals.iter().enumerate() {
            let y = decode_ref(d, sr1[i]);
            let x = x as f64;
            assert!((y - x).abs() < ulp_of(d, x) * 1.0001 + 1e-12, "{d}: {x} -> {y}");
        }
        // Nearest-even with stochastic rounding off matches the reference.
        for (i, &x) in vals.iter().enumerate() {
            assert_eq!(rne[i], round_bits_ref(d, x), "{d}: {x}");
        }
    }
}

#[test]
fn stochastic_rounding_is_unbiased_on_average() {
    // 1 + 2^-9 lies a quarter of the way from 1 to the next bf16 (1 + 2^-7).
    let x = 1.0 + 2f32.powi(-9);
    let vals = vec![x; 4000];
    let out = stochastic_store(DType::Bf16, &vals, true, 12345);
    let mean: f64 = out.iter().map(|&b| decode_ref(DType::Bf16, b)).sum::<f64>() / out.len() as f64;
    assert!((mean - x as f64).abs() < 5e-4, "mean {mean} vs {x}");
    let ups = out.iter().filter(|&&b| decode_ref(DType::Bf16, b) > 1.0).count();
    assert!((800..1200).contains(&ups), "{ups} of 4000 rounded up (expected ~1000)");
}

#[test]
fn exact_values_are_unchanged_by_stochastic_rounding() {
    // Exact in every float type, e5m2 (two mantissa bits) included.
    let mut vals: Vec<f32> = (-8..8).map(|i| i as f32 * 0.25).collect();
    vals.extend([2.0, 3.0, -3.0, 4.0, 6.0, -8.0, 12.0, 16.0, -0.0]);
    for d in [DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
        let sr = stochastic_store(d, &vals, true, 9);
        let rne = stochastic_store(d, &vals, false, 9);
        assert_eq!(sr, rne, "{d}");
    }
}
