use proptest::prelude::*;
use trainyard_arch::{ChipSpec, DType};
use trainyard_sim::SimOptions;

use super::*;
use crate::harness::run_kernel;
use crate::library;

fn trn2() -> ChipSpec {
    ChipSpec::by_name("trn2").unwrap()
}

fn args(shape: &[usize], dtype: DType, kvh: usize, causal: bool) -> KernelArgs {
    KernelArgs::new(shape, dtype).with("kv_heads", &kvh.to_string()).with("causal", &causal.to_string())
}

/// Builds, simulates (functional, race-checked) and compares with the reference.
fn check(a: &KernelArgs) {
    let run = run_kernel(&FlashAttention, &trn2(), a, SimOptions::default(), 7).unwrap();
    let c = run.check.unwrap();
    assert!(c.passed, "{:?} {}: max abs {} worst {:?}", a.shape, a.dtype, c.max_abs_err, c.worst);
}

#[test]
fn odd_sequence_lengths_bf16() {
    for s in [1, 7, 128, 130, 257] {
        for causal in [true, false] {
            check(&args(&[1, 2, s, 64], DType::Bf16, 1, causal));
        }
    }
}

#[test]
fn head_dim_128_gqa_and_dtypes() {
    check(&args(&[1, 4, 130, 128], DType::Bf16, 2, true));
    check(&args(&[1, 2, 257, 128], DType::F16, 2, false));
    check(&args(&[1, 1, 130, 64], DType::F32, 1, true));
    check(&args(&[1, 4, 7, 128], DType::F32, 1, false));
    check(&args(&[2, 2, 129, 64], DType::F16, 1, true));
}

#[test]
fn several_key_blocks_rescale_the_accumulator() {
    // 2100 keys: three 1024-key blocks (bf16) / five 512-key blocks (f32), the last partial.
    check(&args(&[1, 1, 2100, 64], DType::Bf16, 1, false));
    check(&args(&[1, 1, 1100, 64], DType::F32, 1, true));
}

#[test]
fn large_scores_do_not_overflow() {
    // Scores up to ~±200 after scaling: the running max keeps exp finite.
    let a = args(&[1, 1, 300, 64], DType::Bf16, 1, false).with("scale", "3.0");
    check(&a);
}

#[test]
fn two_cores_split_the_rows() {
    let mut a = args(&[1, 2, 257, 64], DType::Bf16, 1, true);
    a.cores = 2;
    let run = run_kernel(&FlashAttention, &trn2(), &a, SimOptions::default(), 3).unwrap();
    assert!(run.check.unwrap().passed);
    assert_eq!(run.built.program.cores_used(), 2);
}

#[test]
fn flops_count_the_useful_pairs() {
    let chip = trn2();
    let full = library::build(&FlashAttention, &chip, &args(&[1, 2, 8, 64], DType::Bf16, 1, false)).unwrap();
    let causal = library::build(&FlashAttention, &chip, &args(&[1, 2, 8, 64], DType::Bf16, 1, true)).unwrap();
    assert_eq!(full.flops, 4 * 2 * 64 * 64);
    assert_eq!(causal.flops, 4 * 2 * 64 * 36);
    // q and o for two heads, k and v for one kv head.
    assert_eq!(full.bytes_hbm, (2 + 2 + 1 + 1) * 8 * 64 * 2);
    assert_eq!(full.peak_dtype, Some(DType::Bf16));
}

#[test]
fn argument_errors_name_the_problem() {
    let chip = trn2();
    let err = |a: KernelArgs| library::build(&FlashAttention, &chip, &a).unwrap_err().to_string();
    assert!(err(args(&[1, 4, 8, 64], DType::Bf16, 3, true)).contains("kv_heads=3"));
    assert!(err(args(&[1, 4, 8, 129], DType::Bf16, 1, true)).contains("D=129"));
    assert!(err(args(&[1, 4, 8], DType::Bf16, 1, true)).contains("B,H,S,D"));
    assert!(err(args(&[1, 1, 8, 64], DType::Bf16, 1, true).with("scale", "-1")).contains("scale"));
    assert!(err(args(&[1, 1, 8, 64], DType::Bf16, 1, true).with("causal", "maybe")).contains("causal"));
    assert!(err(args(&[1, 1, 8, 64], DType::Bf16, 1, true).with("window", "4")).contains("window"));
    assert!(err(KernelArgs::new(&[1, 1, 8, 64], DType::I8)).contains("dtype"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn random_small_shapes(s in 1usize..200, h in 1usize..4, kv_div in 0usize..2, d in prop_oneof![Just(64usize), Just(128)], causal: bool) {
        let kvh = if kv_div == 1 && h % 2 == 0 { h / 2 } else { h };
        check(&args(&[1, h, s, d], DType::Bf16, kvh, causal));
    }
}
