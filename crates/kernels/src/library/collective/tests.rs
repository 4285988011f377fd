use super::*;
use crate::harness::run_kernel;
use proptest::prelude::*;
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::{Mode, SimOptions};

fn system(name: &str, chips: u32) -> ChipSpec {
    ChipSpec::by_name(name).unwrap().with_chips(chips).unwrap()
}

/// Runs a registered collective functionally (race-checked) against its host reference.
fn check(kernel: &dyn Kernel, chip: &ChipSpec, shape: &[usize], dtype: DType, cores: u16) {
    let mut args = KernelArgs::new(shape, dtype);
    args.cores = cores;
    let run = run_kernel(kernel, chip, &args, SimOptions::default(), 5).unwrap_or_else(|e| {
        panic!("{} {shape:?} {dtype} on {cores} cores of {} chips: {e}", kernel.name(), chip.chips())
    });
    let check = run.check.unwrap();
    assert!(check.passed, "{} {shape:?} {dtype} on {cores} cores of {} chips: {check:?}", kernel.name(), chip.chips());
}

#[test]
fn all_reduce_values_on_cores_and_chips() {
    let trn2 = ChipSpec::by_name("trn2").unwrap();
    for dtype in [DType::F32, DType::Bf16] {
        // Odd sizes: segments differ by one element and pieces have ragged tails.
        check(&AllReduce, &trn2, &[1001], dtype, 2);
        check(&AllReduce, &trn2, &[3, 333], dtype, 4);
        check(&AllReduce, &system("trn1", 2), &[129, 7], dtype, 4);
        check(&AllReduce, &system("trn2", 2), &[1, 4099], dtype, 16);
    }
    check(&AllReduce, &system("trn2", 16), &[2000], DType::F16, 16);
    // Fewer elements than participants: some segments are empty.
    check(&AllReduce, &trn2, &[3], DType::F32, 4);
    check(&AllReduce, &trn2, &[5], DType::Bf16, 1);
}

#[test]
fn all_gather_reduce_scatter_all_to_all_values() {
    let trn2 = ChipSpec::by_name("trn2").unwrap();
    let two = system("trn1", 2);
    for dtype in [DType::F32, DType::Bf16] {
        check(&AllGather, &trn2, &[3, 67], dtype, 4);
        check(&AllGather, &two, &[5, 3], dtype, 4);
        check(&ReduceScatter, &trn2, &[8, 77], dtype, 4);
        check(&ReduceScatter, &two, &[4, 131], dtype, 2);
        check(&AllToAll, &trn2, &[4, 33], dtype, 2);
        check(&AllToAll, &two, &[8, 5], dtype, 4);
    }
    check(&ReduceScatter, &system("trn2", 2), &[16, 100], DType::F16, 16);
    check(&AllGather, &system("trn3", 4), &[2, 50], DType::F32, 4);
    check(&AllToAll, &system("inf2", 4), &[4, 10], DType::Bf16, 4);
}

#[test]
fn bf16_sums_round_once() {
    // 1 + 4 × 2^-9: every partial sum is exact in f32, but rounding each step
    // to bf16 (8 bits of mantissa) would lose every 2^-9 and leave 1.0.
    let chip = ChipSpec::by_name("trn2").unwrap();
    let mut kb = KernelBuilder::new("ar", &chip);
    let mut parts = Vec::new();
    for i in 0..5 {
        parts.push(kb.hbm_input(&format!("p{i}"), &[300], DType::Bf16).unwrap());
    }
    let cores = [0, 1, 2, 3, 4];
    all_reduce(&mut kb, &parts, &cores).unwrap();
    let program = kb.finish().unwrap();
    let mut s = Session::new(&chip, &program, SimOptions::default()).unwrap();
    for i in 0..5 {
        let v = if i == 0 { 1.0 } else { 2f32.powi(-9) };
        s.bind(&format!("p{i}"), &HostTensor::from_f32(vec![300], DType::Bf16, &[v; 300])).unwrap();
    }
    s.run().unwrap();
    for i in 0..5 {
        let got = s.output(&format!("p{i}")).unwrap().to_f32();
        assert!(got.iter().all(|&x| x == 1.0 + 2f32.powi(-7)), "p{i}: {:?}", &got[..4]);
    }
}

#[test]
fn composes_in_a_core_window_and_restores_it() {
    let chip = system("trn2", 2);
    let mut kb = KernelBuilder::new("ar", &chip);
    let a = kb.hbm_output_on(0, "a", &[1000], DType::F32).unwrap();
    let b = kb.hbm_output_on(1, "b", &[1000], DType::F32).unwrap();
    kb.set_core_window(4, 4).unwrap();
    kb.core(2).unwrap();
    all_reduce(&mut kb, &[a.clone(), b.clone()], &[3, 12]).unwrap();
    assert_eq!((kb.core_window(), kb.current_core()), ((4, 4), 2));
    let cores: std::collections::BTreeSet<u16> = kb.insts().iter().map(|i| i.core).collect();
    assert_eq!(cores.into_iter().collect::<Vec<_>>(), [3, 12]);
    // A second call reuses the f32 workspace of the first (none here: f32 sums in place).
    all_reduce(&mut kb, &[a, b], &[3, 12]).unwrap();
    kb.finish().unwrap();
}

#[test]
fn hierarchical_workspace_is_reused_across_calls() {
    // Two chips with two participants each: the sums go through an f32 workspace per participant.
    let chip = system("trn2", 2);
    let mut kb = KernelBuilder::new("ar", &chip);
    let cores = [0u16, 1, 8, 9];
    let parts: Vec<HbmTensor> = cores
        .iter()
        .enumerate()
        .map(|(i, &c)| kb.hbm_output_on(c as u32 / 8, &format!("p{i}"), &[500], DType::Bf16).unwrap())
        .collect();
    all_reduce(&mut kb, &parts, &cores).unwrap();
    let once = kb.insts().len();
    all_reduce(&mut kb, &parts, &cores).unwrap();
    assert_eq!(kb.insts().len(), 2 * once);
    let program = kb.finish().unwrap();
    assert_eq!(program.tensors.iter().filter(|t| t.kind == TensorKind::Scratch).count(), 4);
}

#[test]
fn mismatched_arguments_are_named_errors() {
    let chip = system("trn2", 2);
    let mut kb = KernelBuilder::new("bad", &chip);
    let a = kb.hbm_output_on(0, "a", &[100], DType::F32).unwrap();
    let b = kb.hbm_output_on(1, "b", &[101], DType::F32).unwrap();
    let c = kb.hbm_output_on(1, "c", &[100], DType::Bf16).unwrap();
    let d = kb.hbm_output_on(1, "d", &[100], DType::F32).unwrap();
    let msg = |r: Result<Cost, BuildError>| r.unwrap_err().to_string();
    let e = msg(all_reduce(&mut kb, &[a.clone(), b.clone()], &[0, 8]));
    assert!(e.contains("all_reduce") && e.contains("`b`") && e.contains("[101]"), "{e}");
    let e = msg(all_reduce(&mut kb, &[a.clone(), c], &[0, 8]));
    assert!(e.contains("`c`") && e.contains("bf16"), "{e}");
    let e = msg(all_reduce(&mut kb, &[a.clone(), d.clone()], &[0]));
    assert!(e.contains("2 tensors but 1 cores"), "{e}");
    let e = msg(all_reduce(&mut kb, &[a.clone(), d.clone()], &[0, 0]));
    assert!(e.contains("core 0 is listed twice"), "{e}");
    let e = msg(all_reduce(&mut kb, &[a.clone(), d.clone()], &[0, 1]));
    assert!(e.contains("`d`") && e.contains("chip 0"), "{e}");
    let e = msg(all_reduce(&mut kb, &[a.clone(), d.clone()], &[0, 99]));
    assert!(e.contains("core 99 does not exist"), "{e}");
    let e = msg(reduce_scatter(&mut kb, &[a.clone(), d.clone()], &[a.clone(), d.clone()], &[0, 8]));
    assert!(e.contains("reduce_scatter") && e.contains("output `a`"), "{e}");
    let mut kb = KernelBuilder::new("bad", &chip);
    let x = kb.hbm_output("x", &[3, 4], DType::F32).unwrap();
    let y = kb.hbm_output("y", &[3, 4], DType::F32).unwrap();
    let e = msg(all_to_all(&mut kb, &[x.clone(), y.clone()], &[x, y], &[0, 1]));
    assert!(e.contains("does not split into 2 equal chunks"), "{e}");
    // Standalone kernels: cores must spread evenly over the chips.
    let mut args = KernelArgs::new(&[64], DType::F32);
    args.cores = 3;
    let e = AllReduce.build(&chip, &args).unwrap_err().to_string();
    assert!(e.contains("--cores 3") && e.contains("--chips 2"), "{e}");
}

#[test]
fn rings_walk_the_torus_one_link_at_a_time() {
    for (name, chips) in [("trn2", 16), ("trn2", 64), ("trn1", 16)] {
        let chip = system(name, chips);
        let mut order: Vec<u32> = (0..chips).collect();
        order.sort_by_key(|&c| ring_rank(&chip, c));
        for (k, &c) in order.iter().enumerate() {
            let next = order[(k + 1) % order.len()];
            assert_eq!(chip.route(c, next).len(), 1, "{name} x {chips}: {c} -> {next}");
        }
    }
}

#[test]
fn large_all_reduce_is_pipelined() {
    // 2 chips × 1 core, 8 MiB f32: pieces of the pulls, adds and pushes
    // overlap, so the run takes a few times bytes / link, not their serial sum.
    let chip = system("trn2", 2);
    let mut args = KernelArgs::new(&[2 * 1024 * 1024], DType::F32);
    args.cores = 2;
    let opts = SimOptions { mode: Mode::TimedOnly, check_races: false, ..SimOptions::default() };
    let run = run_kernel(&AllReduce, &chip, &args, opts, 1).unwrap();
    let r = run.result.unwrap();
    let bytes = 8.0 * 1024.0 * 1024.0;
    let link = chip.system.as_ref().unwrap().spec.link_gbps[1];
    // Each direction carries half the buffer twice (reduce-scatter, all-gather).
    assert_eq!(r.link_bytes as f64, 2.0 * bytes);
    let ns = r.total_ps as f64 / 1000.0;
    assert!(ns < 4.0 * bytes / link, "{ns} ns vs {} ns at link speed", bytes / link);
}

#[test]
fn pieces_cover_every_element_once() {
    for len in [1usize, 127, 128, 129, 1000, 128 * 1024, 128 * 1024 + 5, 300_001] {
        let ps = pieces(len, 128, 1024);
        let mut at = 0;
        for &(start, rows, cols) in &ps {
            assert_eq!(start, at);
            assert!((1..=128).contains(&rows) && (1..=1024).contains(&cols), "{len}: {ps:?}");
            at += rows * cols;
        }
        assert_eq!(at, len);
        assert!(ps.len() <= len / (128 * 1024) + 2);
    }
}

proptest! {
    #[test]
    fn segment_bounds_are_balanced(len in 0usize..10_000, n in 1usize..40) {
        let b = bounds(len, n);
        prop_assert_eq!(b.len(), n + 1);
        prop_assert_eq!((b[0], b[n]), (0, len));
        for w in b.windows(2) {
            prop_assert!(w[1] >= w[0] && w[1] - w[0] <= len / n + 1);
        }
    }

    #[test]
    fn all_reduce_of_any_length(len in 1usize..600, n in 2u16..5, bf16 in any::<bool>()) {
        let dtype = if bf16 { DType::Bf16 } else { DType::F32 };
        check(&AllReduce, &ChipSpec::by_name("trn2").unwrap(), &[len], dtype, n);
    }
}
