use super::*;
use crate::harness::{run_kernel, CheckReport};
use crate::library;
use proptest::prelude::*;
use trainyard_isa::Op;
use trainyard_sim::{Mode, SimOptions};

fn chip(name: &str) -> ChipSpec {
    ChipSpec::by_name(name).unwrap()
}

fn args(shape: &[usize], dtype: DType, opts: &[(&str, &str)]) -> KernelArgs {
    opts.iter().fold(KernelArgs::new(shape, dtype), |a, (k, v)| a.with(k, v))
}

/// Runs functionally with race checks and asserts the reference check passed.
fn check_on(chip: &ChipSpec, args: &KernelArgs) -> CheckReport {
    let run = run_kernel(&MatMul, chip, args, SimOptions::default(), 11).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let report = run.check.expect("functional run");
    assert!(report.passed, "{} {:?}: {report:?}", chip.name, args);
    report
}

fn check(args: &KernelArgs) -> CheckReport {
    check_on(&chip("trn2"), args)
}

fn kernel_error(chip: &ChipSpec, args: &KernelArgs) -> String {
    match library::build(&MatMul, chip, args) {
        Err(e @ BuildError::Kernel { .. }) => e.to_string(),
        Err(e) => panic!("expected a kernel error, got {e}"),
        Ok(_) => panic!("{args:?} built"),
    }
}

#[test]
fn odd_shapes_bf16_both_layouts() {
    for shape in [[1, 1, 1], [127, 129, 130], [257, 300, 513]] {
        for ta in ["false", "true"] {
            check(&args(&shape, DType::Bf16, &[("transpose_a", ta)]));
        }
    }
}

#[test]
fn every_dtype_on_every_chip_generation() {
    for chip_name in ["trn1", "trn2", "trn3"] {
        let c = chip(chip_name);
        for dtype in [DType::F32, DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
            check_on(&c, &args(&[130, 200, 140], dtype, &[("transpose_a", "true")]));
        }
    }
}

#[test]
fn fp8_scales_apply_on_evacuation() {
    let scaled = [("scale_a", "0.5"), ("scale_b", "3")];
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        check(&args(&[129, 257, 300], dtype, &scaled));
        check_on(&chip("trn1"), &args(&[64, 128, 96], dtype, &scaled));
    }
    // The scale reaches the output: a zero scale gives zeros.
    let zero = args(&[8, 8, 8], DType::F8E4M3, &[("scale_a", "0")]);
    let report = check(&zero);
    assert_eq!(report.max_abs_err, 0.0);
}

#[test]
fn bias_with_and_without_scale() {
    check(&args(&[130, 140, 600], DType::Bf16, &[("bias", "true")]));
    check_on(&chip("trn1"), &args(&[70, 64, 33], DType::F32, &[("bias", "true"), ("out", "bf16")]));
    check(&args(&[100, 256, 520], DType::F8E4M3, &[("bias", "true"), ("scale_b", "0.25")]));
}

#[test]
fn transposed_b_and_both() {
    check(&args(&[129, 300, 513], DType::Bf16, &[("transpose_b", "true")]));
    check(&args(&[200, 130, 257], DType::F32, &[("transpose_a", "true"), ("transpose_b", "true")]));
    check_on(&chip("trn1"), &args(&[65, 129, 600], DType::F8E5M2, &[("transpose_b", "true")]));
}

#[test]
fn batched_products() {
    let a = args(&[130, 70, 200], DType::Bf16, &[("batch", "3"), ("transpose_a", "true")]);
    check(&a);
    let built = library::build(&MatMul, &chip("trn2"), &a).unwrap();
    assert_eq!(built.program.tensor("a").unwrap().shape, vec![3, 70, 130]);
    assert_eq!(built.program.tensor("c").unwrap().shape, vec![3, 130, 200]);
    check(&args(&[33, 140, 65], DType::F16, &[("batch", "2"), ("transpose_b", "true"), ("bias", "true")]));
    // An explicit batch of one keeps the axis.
    let one = library::build(&MatMul, &chip("trn2"), &args(&[4, 4, 4], DType::Bf16, &[("batch", "1")])).unwrap();
    assert_eq!(one.program.tensor("b").unwrap().shape, vec![1, 4, 4]);
}

#[test]
fn output_dtypes() {
    for out in ["bf16", "f16", "f32", "f8e4m3"] {
        check(&args(&[100, 300, 130], DType::Bf16, &[("out", out)]));
    }
}

#[test]
fn two_cores_split_m() {
    let c = chip("trn1");
    let a = args(&[300, 200, 150], DType::Bf16, &[("transpose_a", "true")]);
    let mut two = a.clone();
    two.cores = 2;
    check_on(&c, &two);
    let built = library::build(&MatMul, &c, &two).unwrap();
    let per_core =
        |core: u16| built.program.insts.iter().filter(|i| i.core == core && matches!(i.op, Op::MatMul { .. })).count();
    // Three M tiles over two cores: one and two tiles' worth of matmuls (two K tiles each).
    assert_eq!((per_core(0), per_core(1)), (2, 4));
    let mut batched = args(&[64, 64, 64], DType::Bf16, &[("batch", "3")]);
    batched.cores = 2;
    check_on(&c, &batched);
}

#[test]
fn small_sbuf_streams_a_per_n_chunk() {
    // SBUFs just too small for one M tile's Aᵀ panel (9 K tiles) beside the other buffers.
    for (kib, ta) in [(18, "true"), (21, "false")] {
        let mut small = chip("trn2");
        small.core.sbuf.bytes_per_partition = kib * 1024;
        let a = args(&[256, 1100, 1100], DType::Bf16, &[("transpose_a", ta)]);
        let p = Plan::new(&small, &Gemm::parse(&a).unwrap(), 1).unwrap();
        assert!(!p.resident && p.ring < p.k_tiles, "{p:?}");
        check_on(&small, &a);
    }
    let mut tiny = chip("trn2");
    tiny.core.sbuf.bytes_per_partition = 8 * 1024;
    assert!(kernel_error(&tiny, &args(&[256, 1100, 1100], DType::Bf16, &[])).contains("SBUF"));
}

#[test]
fn benchmark_plan_keeps_a_resident() {
    let g = Gemm::parse(&args(&[4096, 8192, 8192], DType::Bf16, &[("transpose_a", "true")])).unwrap();
    let p = Plan::new(&chip("trn1"), &g, 1).unwrap();
    assert!(p.resident && p.mb == 8 && p.ring > p.k_tiles, "{p:?}");
    let s = Schedule::new(&g, &p, &blocks(&g, &p, 1)[0]);
    // The last block ends with its last chunk in four quarter-width pieces.
    assert_eq!(s.steps.len(), 4 * 16 * 64 + 3 * 64);
    // Every Aᵀ group stays inside the ring without wrapping.
    assert!(s.a_groups.iter().all(|gr| gr.first % p.ring + gr.count <= p.ring));
}

#[test]
fn chunk_model_sees_the_evacuation_wait() {
    // bf16 on trn1: two engines copy a bank (≤ 457 ns) faster than two
    // matmuls (2 × 183 ns) come: no wait, the chunk is its 64 × 8 matmuls.
    let bench = Gemm::parse(&args(&[4096, 8192, 8192], DType::Bf16, &[])).unwrap();
    let t1 = chunk_ns(&chip("trn1"), &bench, 64, 16, 8, 8);
    assert!((t1 - 64.0 * 8.0 * 512.0 / 2.8).abs() < 1.0, "{t1}");
    // fp8 on trn2 (107 ns matmuls): without spare banks the next chunk
    // waits; two spare banks absorb most of it.
    let fp8 = Gemm::parse(&args(&[4096, 4096, 4096], DType::F8E4M3, &[("out", "bf16")])).unwrap();
    let wait = |mb: usize| chunk_ns(&chip("trn2"), &fp8, 32, 8, mb, 8) - 32.0 * mb as f64 * 256.0 / 2.4;
    assert!(wait(8) > 300.0 && wait(6) < wait(8) / 2.0, "{} {}", wait(8), wait(6));
}

#[test]
fn flops_bytes_and_matmul_count() {
    let a = args(&[300, 260, 1030], DType::Bf16, &[("transpose_a", "true"), ("out", "bf16")]);
    let built = library::build(&MatMul, &chip("trn2"), &a).unwrap();
    assert_eq!(built.flops, 2 * 300 * 260 * 1030);
    assert_eq!(built.bytes_hbm, (300 * 260 + 260 * 1030) * 2 + 300 * 1030 * 2);
    assert_eq!(built.peak_dtype, Some(DType::Bf16));
    // 3 M tiles × 3 K tiles × 3 N chunks, N = 512 + 512 + 6.
    let moving: Vec<u64> = built
        .program
        .insts
        .iter()
        .filter_map(|i| match &i.op {
            Op::MatMul { moving, .. } => Some(moving.free_size()),
            _ => None,
        })
        .collect();
    assert_eq!(moving.len(), 27);
    assert_eq!(moving.iter().filter(|&&n| n == 512).count(), 18);
}

#[test]
fn argument_errors_are_kernel_errors() {
    let c = chip("trn2");
    let e = kernel_error(&c, &args(&[4, 4], DType::Bf16, &[]));
    assert!(e.contains("M,K,N"), "{e}");
    assert!(kernel_error(&c, &args(&[4, 0, 4], DType::Bf16, &[])).contains("positive"));
    let e = kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("transpose", "true")]));
    assert!(e.contains("unknown option `transpose`"), "{e}");
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::I32, &[])).contains("dtype i32"));
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("out", "i8")])).contains("float"));
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("batch", "0")])).contains("batch"));
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("scale_a", "x")])).contains("scale_a"));
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("scale_a", "1e30"), ("scale_b", "1e30")]))
        .contains("finite"));
    assert!(kernel_error(&c, &args(&[4, 4, 4], DType::Bf16, &[("bias", "maybe")])).contains("bias"));
    let mut many = args(&[4, 4, 4], DType::Bf16, &[]);
    many.cores = 9;
    assert!(kernel_error(&c, &many).contains("cores"));
}

#[test]
fn reference_checks_its_inputs() {
    let a = args(&[2, 3, 4], DType::F32, &[]);
    let mut inputs = HostTensors::new();
    inputs.insert("a".into(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert!(MatMul.reference(&a, &inputs).is_err(), "b missing");
    inputs.insert("b".into(), (vec![3, 4], (0..12).map(f64::from).collect()));
    let c = MatMul.reference(&a, &inputs).unwrap();
    assert_eq!(c["c"].1[..4], [32.0, 38.0, 44.0, 50.0]);
    inputs.insert("b".into(), (vec![4, 3], vec![0.0; 12]));
    assert!(MatMul.reference(&a, &inputs).is_err(), "wrong shape");
}

#[test]
fn tolerance_grows_with_k() {
    let small = MatMul.tolerance(&args(&[8, 16, 8], DType::Bf16, &[("out", "bf16")]));
    let large = MatMul.tolerance(&args(&[8, 4096, 8], DType::Bf16, &[("out", "bf16")]));
    assert_eq!(small.rtol, large.rtol);
    assert!(large.atol > 10.0 * small.atol, "{small:?} {large:?}");
}

#[test]
fn timed_only_runs_fit_the_pe_bound() {
    // 2048³ bf16 on trn2: the Tensor engine is busy most of the run.
    let a = args(&[2048, 2048, 2048], DType::Bf16, &[("transpose_a", "true")]);
    let opts = SimOptions { mode: Mode::TimedOnly, check_races: false, record_events: false, ..Default::default() };
    let run = run_kernel(&MatMul, &chip("trn2"), &a, opts, 0).unwrap();
    let pe = run.profile.engines["core0.tensor"].utilization;
    assert!(pe > 0.9, "tensor utilization {pe}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn random_small_shapes(
        m in 1usize..200, k in 1usize..300, n in 1usize..600,
        ta: bool, tb: bool, bias: bool, pick in 0usize..3,
    ) {
        let dtype = [DType::Bf16, DType::F32, DType::F8E4M3][pick];
        let flag = |b: bool| if b { "true" } else { "false" };
        let a = args(&[m, k, n], dtype, &[("transpose_a", flag(ta)), ("transpose_b", flag(tb)), ("bias", flag(bias))]);
        check(&a);
    }
}
