//! `trainyard`: the command-line front end of the simulator.

/// `println!` that ignores a closed stdout (e.g. `trainyard ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod bench_llm;
mod compare;
mod kernels;
mod llm;
mod model;
mod onnx;
mod onnx_device;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use trainyard_arch::{ChipSpec, DType, DEFAULT_CHIP};
use trainyard_isa::Program;
use trainyard_runtime::{Profile, Session};
use trainyard_sim::{Mode, SimOptions};

#[derive(Parser)]
#[command(name = "trainyard", version, about = "An open simulator of Trainium-class AI accelerators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the bundled chip specs.
    Chips {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a program (text or binary) for a chip.
    Check {
        /// Program file (`.tys` text or `.tyb` binary).
        program: PathBuf,
        /// Chip name or chip TOML file.
        #[arg(long, default_value = DEFAULT_CHIP)]
        chip: String,
        /// Chips of the chip's smallest system that has this many (the program spans them).
        #[arg(long, default_value_t = 1)]
        chips: u32,
    },
    /// Run a program on a simulated chip.
    Run(RunArgs),
    /// The demo: `compare` on Llama-3.1-8B (batch 1, 2048 in / 256 out); `--matmul` runs the kernel demo instead.
    Demo {
        /// Run the tiled bf16 matmul kernel demo (values checked, profile, Perfetto trace) instead.
        #[arg(long)]
        matmul: bool,
        /// Chip of the matmul demo (name or chip TOML file).
        #[arg(long, default_value = DEFAULT_CHIP)]
        chip: String,
        /// Where the matmul demo writes its Perfetto trace.
        #[arg(long, default_value = "trainyard-demo.trace.json")]
        trace: PathBuf,
        /// Matmul size M×K×N.
        #[arg(long, default_value = "512x1024x1024")]
        shape: String,
        /// Sequences in flight (comparison demo).
        #[arg(long, default_value_t = 1)]
        batch: u32,
    },
    /// Convert a program between text and binary forms (by output extension: `.tyb` binary, else text).
    Convert {
        /// Input program.
        input: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List the kernels of the library with their parameters.
    Kernels {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build, run or emit one library kernel.
    Kernel {
        #[command(subcommand)]
        what: KernelWhat,
    },
    /// What an LLM needs: parameters, memory per core and smallest TP per chip, analytic GPU estimates.
    Model {
        /// Bundled model name (e.g. llama-3.1-8b; see models/).
        #[arg(long)]
        model: Option<String>,
        /// Any Hugging Face config.json.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Weight, KV-cache and activation dtype.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Sequences in flight.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// Prompt tokens.
        #[arg(long, default_value_t = 2048)]
        input_len: u64,
        /// Generated tokens.
        #[arg(long, default_value_t = 256)]
        output_len: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// LLM prefill and decode programs from the kernel library on simulated chips: TTFT, TPOT, tokens/s.
    Llm(llm::LlmArgs),
    /// One LLM serving workload on every chip (Neuron simulated, GPUs analytic), priced, against h100.
    Compare(CompareArgs),
    /// Run an ONNX model on the reference interpreter.
    Interpret(onnx::InterpretArgs),
    /// Compile an ONNX model for a simulated chip into a program (`-o MODEL.tyb`).
    Compile(onnx_device::CompileArgs),
    /// Run an ONNX backend test directory and print passed / failed / unsupported per op.
    OnnxConformance(onnx::ConformanceArgs),
    /// Benchmarks that print figures measured in this run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Bundled model name (e.g. llama-3.1-8b; see models/).
    #[arg(long)]
    model: Option<String>,
    /// Any Hugging Face config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sequences in flight.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    input_len: u64,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 256)]
    output_len: u64,
    /// Weight, KV-cache and activation dtype.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Price kind for every row: capacity-block (default), on-demand or reserved.
    #[arg(long, default_value = "capacity-block")]
    price: String,
    /// Only these chips (repeatable), e.g. --chip trn2 --chip h100.
    #[arg(long)]
    chip: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_price_kind(text: &str) -> Result<trainyard_arch::PriceKind> {
    use trainyard_arch::PriceKind;
    match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "capacity-block" | "cb" => Ok(PriceKind::CapacityBlock),
        "on-demand" | "od" => Ok(PriceKind::OnDemand),
        "reserved" | "ri" => Ok(PriceKind::Reserved),
        _ => bail!("--price `{text}`: expected capacity-block, on-demand or reserved"),
    }
}

fn compare_cmd(args: CompareArgs) -> Result<()> {
    let cfg = match (args.model.as_deref(), args.config.as_deref()) {
        (_, Some(path)) => trainyard_compiler::llm::LlmConfig::load(path)?,
        (Some(name), None) => trainyard_compiler::llm::LlmConfig::bundled(name)?,
        (None, None) => bail!(
            "give --model NAME or --config FILE (bundled: {})",
            trainyard_compiler::llm::bundled_names().join(", ")
        ),
    };
    let req = compare::CompareRequest {
        cfg,
        batch: args.batch,
        input_len: args.input_len,
        output_len: args.output_len,
        dtype: args.dtype.parse()?,
        price: parse_price_kind(&args.price)?,
        only: args.chip,
    };
    let c = compare::compare(&req)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        compare::print(&c);
    }
    Ok(())
}

#[derive(clap::Args)]
struct KernelSel {
    /// Kernel name (see `trainyard kernels`).
    name: String,
    /// Chip name or chip TOML file.
    #[arg(long, default_value = DEFAULT_CHIP)]
    chip: String,
    /// Problem shape, e.g. 4096,8192,8192 (meaning per kernel; default: the kernel's small shape).
    #[arg(long)]
    shape: Option<String>,
    /// Element type.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// NeuronCores to spread the work over (numbered over all chips).
    #[arg(long, default_value_t = 1)]
    cores: u16,
    /// Chips of the chip's smallest system that has this many (multi-chip kernels such as collectives).
    #[arg(long, default_value_t = 1)]
    chips: u32,
    /// Kernel option KEY=VALUE (repeatable), e.g. --opt transpose_a=true.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
}

#[derive(Subcommand)]
enum KernelWhat {
    /// Build and run a kernel; in functional mode, check it against the host reference.
    Bench {
        #[command(flatten)]
        sel: KernelSel,
        /// Time only (no values, no check).
        #[arg(long)]
        timed_only: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write a Perfetto trace.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Skip race detection.
        #[arg(long)]
        no_race_check: bool,
    },
    /// Write the kernel's program in text form (or binary for a `.tyb` file).
    Emit {
        #[command(flatten)]
        sel: KernelSel,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Simulation speed: timed-only instructions per second and functional matmul vs host GEMM.
    Sim {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Smaller problem sizes (for a quick check).
        #[arg(long)]
        quick: bool,
    },
    /// Wall time of the LLM decode steps the speed targets name (8B on one trn2, 70B on 64 cores).
    Llm {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The 8B case only.
        #[arg(long)]
        quick: bool,
    },
    /// The fixed kernel suite against the chips' peaks and rooflines (timed-only).
    Kernels {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Small shapes (for a quick check).
        #[arg(long)]
        quick: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Program file (`.tys` text or `.tyb` binary), or an ONNX model (`.onnx`, compiled first).
    program: PathBuf,
    /// Chip name or chip TOML file.
    #[arg(long, default_value = DEFAULT_CHIP)]
    chip: String,
    /// Chips of the chip's smallest system that has this many (the program spans them).
    #[arg(long, default_value_t = 1)]
    chips: u32,
    /// Bind an input: NAME=FILE.npy, or NAME=FILE.safetensors (tensor NAME inside).
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Fill unbound inputs with seeded random values instead of failing.
    #[arg(long)]
    random_inputs: bool,
    /// Write every output tensor as DIR/NAME.npy.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write a Perfetto / Chrome trace JSON.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Time only: no values are computed.
    #[arg(long)]
    timed_only: bool,
    /// Print the profile as one JSON object.
    #[arg(long)]
    json: bool,
    /// Skip race detection (faster on huge programs).
    #[arg(long)]
    no_race_check: bool,
    /// Round stores stochastically (seeded) instead of to nearest even.
    #[arg(long)]
    stochastic_rounding: bool,
    /// Seed for stochastic rounding and random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Models: NeuronCores to compile for.
    #[arg(long, default_value_t = 1)]
    cores: u16,
    /// Models: float element type on the device (f32 or bf16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Models: shape of an input with symbolic dimensions, NAME=D1,D2,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=D1,D2")]
    input_shapes: Vec<String>,
    /// Models: compare the outputs with the reference interpreter (`max_abs_err`).
    #[arg(long)]
    check: bool,
    /// Models: replace the weights by seeded random values (for placeholder-weight models).
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Chips { json } => chips(json),
        Command::Check { program, chip, chips } => check(&program, &chip, chips),
        Command::Run(args) => run(args),
        Command::Demo { matmul: true, chip, trace, shape, .. } => demo(&chip, &trace, &shape),
        Command::Demo { matmul: false, batch, .. } => {
            say!("trainyard demo: Llama-3.1-8B served on every chip (`trainyard compare --model llama-3.1-8b`)");
            compare_cmd(CompareArgs {
                model: Some("llama-3.1-8b".into()),
                config: None,
                batch,
                input_len: 2048,
                output_len: 256,
                dtype: "bf16".into(),
                price: "capacity-block".into(),
                chip: Vec::new(),
                json: false,
            })
        }
        Command::Compare(args) => compare_cmd(args),
        Command::Convert { input, output } => convert(&input, &output),
        Command::Bench { what: BenchWhat::Sim { json, quick } } => bench::sim(json, quick),
        Command::Bench { what: BenchWhat::Llm { json, quick } } => bench_llm::llm(json, quick),
        Command::Bench { what: BenchWhat::Kernels { json, quick } } => kernels::bench_suite(json, quick),
        Command::Kernels { json } => kernels::list(json),
        Command::Llm(args) => llm::llm(args),
        Command::Interpret(args) => onnx::interpret(args),
        Command::Compile(args) => onnx_device::compile(args),
        Command::OnnxConformance(args) => onnx::conformance(args),
        Command::Model { model, config, dtype, batch, input_len, output_len, json } => {
            model::model(model.as_deref(), config.as_deref(), &dtype, batch, input_len, output_len, json)
        }
        Command::Kernel { what: KernelWhat::Bench { sel, timed_only, json, seed, trace, no_race_check } } => {
            let mut s = kernels::select(&sel.name, &sel.chip, sel.shape.as_deref(), &sel.dtype, sel.cores, &sel.opts)?;
            s.chip = s.chip.with_chips(sel.chips)?;
            kernels::bench(s, timed_only, json, seed, trace.as_deref(), no_race_check)
        }
        Command::Kernel { what: KernelWhat::Emit { sel, output } } => {
            let mut s = kernels::select(&sel.name, &sel.chip, sel.shape.as_deref(), &sel.dtype, sel.cores, &sel.opts)?;
            s.chip = s.chip.with_chips(sel.chips)?;
            kernels::emit(s, &output)
        }
    }
}

fn load_chip(name: &str) -> Result<ChipSpec> {
    Ok(ChipSpec::by_name(name)?)
}

/// Reads a program in text or binary form.
pub(crate) fn load_program(path: &Path) -> Result<Program> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read program {}", path.display()))?;
    if Program::is_binary(&bytes) {
        return Program::from_bytes(&bytes).with_context(|| format!("{}", path.display()));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a binary program and not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Program::parse(&text).with_context(|| format!("{}", path.display()))
}

fn chips(json: bool) -> Result<()> {
    let chips = ChipSpec::bundled()?;
    let gpus = trainyard_arch::GpuSpec::bundled()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&serde_json::json!({ "simulated": chips, "analytic": gpus }))?);
        return Ok(());
    }
    let price = |p: Option<f64>| p.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/p".into());
    say!("simulated chips (cycle-level simulator)");
    say!(
        "{:<6} {:>5} {:>8} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9} {:>12}",
        "chip",
        "cores",
        "HBM GiB",
        "HBM GB/s",
        "BF16 TF",
        "FP8 TF",
        "SBUF/core",
        "PE GHz",
        "link GB/s",
        "$/chip-hour"
    );
    for c in &chips {
        say!(
            "{:<6} {:>5} {:>8.0} {:>9.0} {:>8.0} {:>8.0} {:>6} MiB {:>7.2} {:>9.0} {:>12}",
            c.name,
            c.chip.cores,
            c.chip.hbm_bytes as f64 / (1u64 << 30) as f64,
            c.chip.hbm_gbps,
            c.peak_tflops.bf16,
            c.peak_tflops.fp8,
            (c.core.sbuf.partitions as u64 * c.core.sbuf.bytes_per_partition as u64) >> 20,
            c.core.clocks.tensor_ghz,
            c.chip.link_gbps,
            price(c.min_usd_per_chip_hour(trainyard_arch::PriceKind::OnDemand)),
        );
    }
    say!("\nGPU comparison points (analytic roofline with cited efficiency factors; not simulated)");
    say!(
        "{:<6} {:>8} {:>9} {:>8} {:>8} {:>10} {:>6} {:>11}",
        "gpu",
        "HBM GB",
        "HBM GB/s",
        "BF16 TF",
        "FP8 TF",
        "NVLink GB/s",
        "TDP W",
        "$/GPU-hour"
    );
    for g in &gpus {
        say!(
            "{:<6} {:>8.0} {:>9.0} {:>8.0} {:>8} {:>10.0} {:>6} {:>11}",
            g.name,
            g.memory.hbm_bytes as f64 / 1e9,
            g.memory.hbm_gbps,
            g.peak_tflops.bf16,
            g.peak_tflops.fp8.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            g.interconnect.nvlink_gbps,
            g.power.tdp_watts.map(|w| format!("{w:.0}")).unwrap_or_else(|| "n/p".into()),
            price(g.min_usd_per_gpu_hour(trainyard_arch::PriceKind::OnDemand)),
        );
    }
    say!("\nn/p = not published (see the chip files for sources and dates)");
    Ok(())
}

fn check(path: &Path, chip: &str, chips: u32) -> Result<()> {
    let chip = load_chip(chip)?.with_chips(chips)?;
    let program = load_program(path)?;
    let errors = trainyard_isa::validate_all(&program, &chip);
    if errors.is_empty() {
        say!(
            "{}: ok for {} ({} instructions, {} tensors, {} core(s))",
            path.display(),
            chip.name,
            program.insts.len(),
            program.tensors.len(),
            program.cores_used()
        );
        return Ok(());
    }
    for e in &errors {
        eprintln!("error: {}: {e}", path.display());
    }
    bail!("{}: {} error(s) for {}", path.display(), errors.len(), chip.name)
}

fn run(args: RunArgs) -> Result<()> {
    let is_model = args.program.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        || onnx_device::weights_path(&args.program).is_file();
    if is_model {
        return onnx_device::run(args);
    }
    if args.check {
        bail!("--check compares a model's outputs with the interpreter: give an .onnx model or a compiled one");
    }
    let chip = load_chip(&args.chip)?.with_chips(args.chips)?;
    let program = load_program(&args.program)?;
    let mode = if args.timed_only { Mode::TimedOnly } else { Mode::Functional };
    if args.timed_only && (args.out.is_some() || !args.inputs.is_empty()) {
        bail!("--timed-only computes no values: --input and --out cannot be used with it");
    }
    let opts = SimOptions {
        mode,
        check_races: !args.no_race_check,
        record_events: true,
        stochastic_rounding: args.stochastic_rounding,
        seed: args.seed,
    };
    let mut session = Session::new(&chip, &program, opts)?;
    for spec in &args.inputs {
        let (name, file) = spec.split_once('=').with_context(|| format!("--input `{spec}`: expected NAME=FILE"))?;
        session.bind_file(name, Path::new(file)).with_context(|| format!("--input {name}"))?;
    }
    if mode == Mode::Functional {
        let unbound = session.unbound_inputs();
        if !unbound.is_empty() {
            if !args.random_inputs {
                bail!("inputs not bound: {} (use --input NAME=FILE.npy, or --random-inputs)", unbound.join(", "));
            }
            session.bind_defaults(args.seed)?;
        }
    }
    let profile = session.run()?;
    if let Some(dir) = &args.out {
        let written = session.write_outputs(dir)?;
        if !args.json {
            for p in written {
                say!("wrote {}", p.display());
            }
        }
    }
    if let Some(trace) = &args.trace {
        session.write_trace(trace)?;
        if !args.json {
            say!("wrote trace {} (open in https://ui.perfetto.dev)", trace.display());
        }
    }
    print_profile(&profile, &session, args.json)
}

fn print_profile(profile: &Profile, session: &Session, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(profile)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("notes".into(), serde_json::json!(session.notes()));
        }
        say!("{}", serde_json::to_string(&value)?);
    } else {
        for n in session.notes() {
            say!("note: {n}");
        }
        print!("{}", profile.to_table());
    }
    Ok(())
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<usize> = s
        .split(['x', 'X', ','])
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("shape `{s}`: expected MxKxN, e.g. 512x1024x1024"))?;
    match parts[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => bail!("shape `{s}`: expected three positive sizes MxKxN"),
    }
}

fn demo(chip: &str, trace: &Path, shape: &str) -> Result<()> {
    let chip = load_chip(chip)?;
    let (m, k, n) = parse_shape(shape)?;
    let kernel = trainyard_kernels::library::find("matmul").context("the library has no matmul kernel")?;
    let args = trainyard_kernels::library::KernelArgs::new(&[m, k, n], DType::Bf16).with("transpose_a", "true");
    say!(
        "trainyard demo: C[{m}x{n}] (f32) = A[{m}x{k}] · B[{k}x{n}] in bf16 on one {} NeuronCore, \
         library kernel `matmul` (A given transposed)",
        chip.name
    );
    let run = trainyard_kernels::harness::run_kernel(kernel.as_ref(), &chip, &args, SimOptions::default(), 1)?;
    say!("program: {} instructions, dependencies computed by the kernel builder", run.built.program.insts.len());
    say!("{}", run.profile.to_table().trim_end());
    let peak = trainyard_kernels::library::peak_flops(&chip, DType::Bf16, 1);
    let roofline = trainyard_kernels::library::roofline_ns(&chip, &run.built, 1);
    say!(
        "roofline: {:.3} us; achieved {:.1}% of the Tensor engine peak ({:.1} TFLOPS), {:.1}% of the roofline",
        roofline / 1e3,
        100.0 * run.built.flops as f64 / (run.profile.total_ns * 1e-9) / peak,
        peak / 1e12,
        100.0 * roofline / run.profile.total_ns
    );
    if let Some(check) = &run.check {
        say!(
            "check: max |C - reference| = {:.3e} against a host f64 matmul of the same bf16 inputs ({})",
            check.max_abs_err,
            if check.passed { "within tolerance" } else { "OUT OF TOLERANCE" }
        );
        if !check.passed {
            bail!("demo result differs from the host reference");
        }
    }
    let result = run.result.as_ref().context("no run result to trace")?;
    trainyard_runtime::write_trace(trace, &chip, &run.built.program, result)?;
    say!("wrote trace {} (open in https://ui.perfetto.dev)", trace.display());
    Ok(())
}

fn convert(input: &Path, output: &Path) -> Result<()> {
    let program = load_program(input)?;
    let bytes = if output.extension().is_some_and(|e| e == "tyb") {
        program.to_bytes()
    } else {
        program.to_text().into_bytes()
    };
    let tmp = output.with_extension("tmp-trainyard");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("cannot write {}", output.display()))?;
    say!("wrote {} ({} bytes, {} instructions)", output.display(), bytes.len(), program.insts.len());
    Ok(())
}
