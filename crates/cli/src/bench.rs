//! `trainyard bench sim`: simulation speed measured in this run.
//!
//! Two figures, both ratios of quantities measured in the same process:
//! * timed-only throughput: simulated instructions per wall second on a large
//!   tiled-matmul program (with and without race detection);
//! * functional matmul: wall time of simulating a tiled bf16 matmul with
//!   values, against the host GEMM (`gemm` crate, f32, one thread) on the same
//!   M×K×N.

use std::time::Instant;

use anyhow::Result;
use trainyard_arch::{ChipSpec, DType, SplitMix64};
use trainyard_isa::Program;
use trainyard_runtime::Session;
use trainyard_sim::{Mode, SimOptions, Simulator};

fn best_of<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let v = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(v);
    }
    match last {
        Some(v) => Ok((best, v)),
        None => anyhow::bail!("no repetitions"),
    }
}

/// Simulated instructions per second of `run()` (loading, which validates
/// the program, is timed apart), and the simulated time.
fn timed_only(chip: &ChipSpec, program: &Program, check_races: bool) -> Result<(f64, u64)> {
    let opts = SimOptions { mode: Mode::TimedOnly, check_races, record_events: false, ..SimOptions::default() };
    let mut best = f64::INFINITY;
    let mut total_ps = 0;
    for _ in 0..3 {
        let mut sim = Simulator::new(chip, program, opts.clone())?;
        let t = Instant::now();
        total_ps = sim.run()?.total_ps;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((program.insts.len() as f64 / best, total_ps))
}

/// Instructions per second of loading (validation against the chip).
fn load_rate(chip: &ChipSpec, program: &Program) -> Result<f64> {
    let opts = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
    let (secs, _) = best_of(3, || Ok(Simulator::new(chip, program, opts.clone())?))?;
    Ok(program.insts.len() as f64 / secs)
}

fn host_gemm_secs(m: usize, k: usize, n: usize) -> Result<f64> {
    let mut rng = SplitMix64::new(5);
    let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32).collect();
    let mut c = vec![0f32; m * n];
    let (secs, _) = best_of(3, || {
        // SAFETY: a is m×k, b is k×n, c is m×n, all row-major and live.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        Ok(())
    })?;
    std::hint::black_box(&c);
    Ok(secs)
}

/// One timed-only workload: its description, chip and program.
fn workloads(quick: bool) -> Result<Vec<(String, ChipSpec, Program)>> {
    let trn1 = ChipSpec::by_name("trn1")?;
    let trn2 = ChipSpec::by_name("trn2")?;
    let (tm, tk, tn) = if quick { (1024, 2048, 2048) } else { (4096, 8192, 8192) };
    let matmul = trainyard_kernels::demo::matmul_demo(&trn1, tm, tk, tn, DType::Bf16)?;
    let seq = if quick { 512 } else { 4096 };
    let heads = if quick { 4 } else { 32 };
    let flash = trainyard_kernels::library::find("flash_attention").map(|k| {
        let args = trainyard_kernels::library::KernelArgs::new(&[1, heads, seq, 128], DType::Bf16);
        trainyard_kernels::library::build(k.as_ref(), &trn2, &args).map(|b| b.program)
    });
    let mut out = vec![(format!("tiled matmul {tm}x{tk}x{tn} bf16 (demo kernel, 128x512 tiles), trn1"), trn1, matmul)];
    if let Some(program) = flash {
        out.push((format!("flash_attention 1x{heads}x{seq}x128 causal bf16, trn2"), trn2, program?));
    }
    Ok(out)
}

pub fn sim(json: bool, quick: bool) -> Result<()> {
    let mut timed = Vec::new();
    for (what, chip, program) in workloads(quick)? {
        let (ips_races, total_ps) = timed_only(&chip, &program, true)?;
        let (ips_fast, _) = timed_only(&chip, &program, false)?;
        let load_ips = load_rate(&chip, &program)?;
        timed.push(serde_json::json!({
            "program": what,
            "instructions": program.insts.len(),
            "insts_per_s": ips_fast,
            "insts_per_s_with_race_check": ips_races,
            "load_insts_per_s": load_ips,
            "simulated_ns": total_ps as f64 / 1000.0,
        }));
    }
    let trn1 = ChipSpec::by_name("trn1")?;

    let (fm, fk, fnn) = if quick { (256, 512, 512) } else { (512, 1024, 1024) };
    let small = trainyard_kernels::demo::matmul_demo(&trn1, fm, fk, fnn, DType::Bf16)?;
    let run_functional = |check_races: bool| -> Result<f64> {
        let opts = SimOptions { mode: Mode::Functional, check_races, record_events: false, ..SimOptions::default() };
        let mut session = Session::new(&trn1, &small, opts)?;
        session.bind_defaults(3)?;
        let t = Instant::now();
        session.run()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let functional_secs =
        (0..3).map(|_| run_functional(false)).collect::<Result<Vec<_>>>()?.into_iter().fold(f64::INFINITY, f64::min);
    let functional_races_secs =
        (0..3).map(|_| run_functional(true)).collect::<Result<Vec<_>>>()?.into_iter().fold(f64::INFINITY, f64::min);
    let gemm_secs = host_gemm_secs(fm, fk, fnn)?;
    let ratio = functional_secs / gemm_secs;
    let ratio_races = functional_races_secs / gemm_secs;

    if json {
        let v = serde_json::json!({
            "timed_only": timed,
            "functional_matmul": {
                "shape": format!("{fm}x{fk}x{fnn}"),
                "sim_s": functional_secs,
                "sim_s_with_race_check": functional_races_secs,
                "host_gemm_s": gemm_secs,
                "ratio_to_host_gemm": ratio,
                "ratio_to_host_gemm_with_race_check": ratio_races,
            }
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("trainyard bench sim (figures measured in this run, wall clock, best of 3)");
        for t in &timed {
            let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
            say!(
                "timed-only: {}, {} instructions, {:.1} us simulated",
                t["program"].as_str().unwrap_or(""),
                t["instructions"],
                f("simulated_ns") / 1e3
            );
            say!("  {:>8.2} M simulated instructions/s (race check off)", f("insts_per_s") / 1e6);
            say!("  {:>8.2} M simulated instructions/s (race check on)", f("insts_per_s_with_race_check") / 1e6);
            say!(
                "  {:>8.2} M instructions/s loaded (validation + timing plan, timed apart)",
                f("load_insts_per_s") / 1e6
            );
        }
        say!("functional matmul {fm}x{fk}x{fnn} bf16 (values + time) vs host GEMM f32, one thread:");
        say!(
            "  simulator {:.4} s ({:.4} s with race check), host gemm {:.4} s",
            functional_secs,
            functional_races_secs,
            gemm_secs
        );
        say!("  ratio {:.2}x ({:.2}x with race check); target <= 2x", ratio, ratio_races);
    }
    Ok(())
}
