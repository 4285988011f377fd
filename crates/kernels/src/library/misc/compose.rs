//! Tests of the family's kernels composed in one program: what `emit` leaves
//! behind, binding checks, and two token paths of a Llama-style model
//! (embedding → mlp, mlp → argmax) through HBM scratch tensors.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::TensorKind;
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::SimOptions;

use super::*;
use crate::builder::KernelBuilder;
use crate::harness::compare;
use crate::library::{self, check_bindings, Bindings, Cost, HostTensors, KernelArgs};
use crate::HbmTensor;

fn chip() -> ChipSpec {
    ChipSpec::by_name("trn2").unwrap()
}

/// Args on `cores` cores.
fn args(shape: &[usize], dtype: DType, cores: u16) -> KernelArgs {
    let mut a = KernelArgs::new(shape, dtype);
    a.cores = cores;
    a
}

/// Binds `pairs` (signature name → tensor) for `emit`.
fn bind(pairs: &[(&str, &HbmTensor)]) -> Bindings {
    pairs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect()
}

/// The instances the family tests run: one per kernel, on two cores.
fn instances() -> Vec<(Box<dyn Kernel>, KernelArgs)> {
    vec![
        (Box::new(Embedding), args(&[130, 40, 24], DType::Bf16, 2)),
        (Box::new(Argmax), args(&[130, 33], DType::Bf16, 2).with("index", "i32")),
        (Box::new(TopK), args(&[130, 4100], DType::F16, 2).with("k", "3")),
        (Box::new(Mlp), args(&[130, 96, 140], DType::Bf16, 2)),
    ]
}

/// Declares `sigs` in `kb` under `prefix`-ed names (as a larger program
/// would: the kernel's tensors are not the first in HBM nor named as in its
/// signature) and binds them.
fn declare(kb: &mut KernelBuilder, sigs: &[TensorSig], prefix: &str) -> Bindings {
    sigs.iter()
        .map(|s| {
            let name = format!("{prefix}{}", s.name);
            let t = match s.kind {
                TensorKind::Output => kb.hbm_output(&name, &s.shape, s.dtype),
                _ => kb.hbm_input(&name, &s.shape, s.dtype),
            };
            (s.name.clone(), t.unwrap())
        })
        .collect()
}

#[test]
fn signatures_are_the_standalone_tensors() {
    let chip = chip();
    for (kernel, args) in instances() {
        let sigs = kernel.signature(&chip, &args).unwrap();
        let built = library::build(kernel.as_ref(), &chip, &args).unwrap();
        let declared: Vec<TensorSig> = built
            .program
            .tensors
            .iter()
            .map(|t| sig(&t.name, t.kind, &t.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(), t.dtype))
            .collect();
        assert_eq!(sigs, declared, "{}", kernel.name());
    }
}

#[test]
fn emit_frees_what_it_allocates_and_returns_to_the_callers_core() {
    let chip = chip();
    for (kernel, args) in instances() {
        let mut kb = KernelBuilder::new("host", &chip);
        // A tile of the caller's stays live throughout: emit must work around it.
        kb.core(1).unwrap();
        let held = kb.sbuf_tile(&[128, 100], DType::F32).unwrap();
        let _pad = kb.hbm_scratch("pad", &[7], DType::F32).unwrap();
        let io = declare(&mut kb, &kernel.signature(&chip, &args).unwrap(), "k_");
        let free = |kb: &mut KernelBuilder| -> Vec<(u64, u64)> {
            (0..2u16)
                .map(|c| {
                    kb.core(c).unwrap();
                    (kb.sbuf_free_bytes(), kb.psum_free_bytes())
                })
                .collect()
        };
        let before = free(&mut kb);
        kb.core(1).unwrap();
        let cost = kernel.emit(&mut kb, &args, &io).unwrap();
        assert_eq!(kb.current_core(), 1, "{}", kernel.name());
        assert!(!kb.insts().is_empty());
        assert_eq!(free(&mut kb), before, "{}: emit left tiles allocated", kernel.name());
        // The costs are what the standalone build reports.
        let built = library::build(kernel.as_ref(), &chip, &args).unwrap();
        let want = Cost { flops: built.flops, bytes_hbm: built.bytes_hbm, peak_dtype: built.peak_dtype };
        assert_eq!(cost, want, "{}", kernel.name());
        // The same kernel can follow itself in the builder.
        kernel.emit(&mut kb, &args, &io).unwrap();
        assert_eq!(free(&mut kb), before);
        kb.core(1).unwrap();
        kb.free(held).unwrap();
        kb.finish().unwrap();
    }
}

#[test]
fn wrong_bindings_name_the_tensor() {
    let chip = chip();
    for (kernel, args) in instances() {
        let sigs = kernel.signature(&chip, &args).unwrap();
        for (i, s) in sigs.iter().enumerate() {
            let mut kb = KernelBuilder::new("host", &chip);
            let mut io = declare(&mut kb, &sigs, "");
            // Wrong shape: one more row.
            let mut shape = s.shape.clone();
            shape[0] += 1;
            io.insert(s.name.clone(), kb.hbm_scratch("bad_shape", &shape, s.dtype).unwrap());
            let err = kernel.emit(&mut kb, &args, &io).unwrap_err().to_string();
            assert!(err.contains(&format!("`{}`", s.name)) && err.contains("bad_shape"), "{err}");
            // Wrong dtype.
            let dtype = if s.dtype == DType::F32 { DType::Bf16 } else { DType::F32 };
            io.insert(s.name.clone(), kb.hbm_scratch("bad_dtype", &s.shape, dtype).unwrap());
            let err = check_bindings(kernel.as_ref(), &chip, &args, &io).unwrap_err().to_string();
            assert!(err.contains(&format!("`{}`", s.name)) && err.contains("bad_dtype"), "{i}: {err}");
            // Missing.
            io.remove(&s.name);
            let err = kernel.emit(&mut kb, &args, &io).unwrap_err().to_string();
            assert!(err.contains(&format!("`{}` is not bound", s.name)), "{err}");
            assert!(kb.insts().is_empty(), "nothing is emitted for refused bindings");
        }
    }
}

#[test]
fn signature_refuses_what_build_refuses() {
    let chip = chip();
    let cases: [(&dyn Kernel, KernelArgs, &str); 5] = [
        (&Embedding, args(&[4, 8, 8], DType::I32, 1), "not supported"),
        (&Mlp, args(&[4, 8, 8], DType::Bf16, 0), "--cores 0"),
        (&Argmax, args(&[4, 8], DType::Bf16, 99), "--cores 99"),
        (&TopK, args(&[4, 8], DType::Bf16, 1).with("kk", "2"), "unknown option `kk`"),
        (&TopK, args(&[4, 8], DType::Bf16, 1).with("k", "9"), "1..=8"),
    ];
    for (kernel, args, want) in cases {
        let err = kernel.signature(&chip, &args).unwrap_err().to_string();
        assert!(err.contains(want), "{}: {err}", kernel.name());
    }
}

/// Uniform `[-1, 1)` values rounded to `dtype`, as f32.
fn values(n: usize, seed: u64) -> Vec<f32> {
    library::uniform(n, seed).iter().map(|&v| v as f32).collect()
}

/// Binds `values` to input `name` of `session`.
fn put(session: &mut Session, name: &str, shape: &[usize], dtype: DType, values: &[f32]) {
    let shape = shape.iter().map(|&d| d as u64).collect();
    session.bind(name, &HostTensor::from_f32(shape, dtype, values)).unwrap();
}

/// A host tensor: shape and values.
type Host = (Vec<usize>, Vec<f64>);

/// Tensor `name` as the device holds it (inputs rounded to their dtype).
fn read(session: &Session, name: &str) -> Host {
    let t = session.output(name).unwrap();
    (t.shape.iter().map(|&d| d as usize).collect(), t.to_f32().into_iter().map(f64::from).collect())
}

fn host(pairs: &[(&str, Host)]) -> HostTensors {
    pairs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
}

/// The MLP weights of one instance `[T, Hd, I]`, declared and bound by name.
struct Weights {
    gate: HbmTensor,
    up: HbmTensor,
    down: HbmTensor,
}

impl Weights {
    fn declare(kb: &mut KernelBuilder, hd: usize, i: usize, dtype: DType) -> Weights {
        Weights {
            gate: kb.hbm_input("w_gate", &[hd, i], dtype).unwrap(),
            up: kb.hbm_input("w_up", &[hd, i], dtype).unwrap(),
            down: kb.hbm_input("w_down", &[i, hd], dtype).unwrap(),
        }
    }

    fn bind(session: &mut Session, hd: usize, i: usize, dtype: DType) {
        put(session, "w_gate", &[hd, i], dtype, &values(hd * i, 1));
        put(session, "w_up", &[hd, i], dtype, &values(hd * i, 2));
        put(session, "w_down", &[i, hd], dtype, &values(i * hd, 3));
    }
}

/// Token ids → embedding rows (scratch `h`) → MLP → `y`, on two cores whose
/// shares of the tokens differ between the kernels (embedding splits blocks
/// of 128 tokens, the MLP tokens), so `h` carries cross-core dependencies.
#[test]
fn embedding_then_mlp_through_scratch() {
    let chip = chip();
    let (t, v, hd, i, dtype) = (130, 50, 96, 140, DType::Bf16);
    let emb = args(&[t, v, hd], dtype, 2);
    let mlp = args(&[t, hd, i], dtype, 2);

    let mut kb = KernelBuilder::new("token_path", &chip);
    let ids = kb.hbm_input("ids", &[t], DType::I32).unwrap();
    let table = kb.hbm_input("table", &[v, hd], dtype).unwrap();
    let w = Weights::declare(&mut kb, hd, i, dtype);
    let h = kb.hbm_scratch("h", &[t, hd], dtype).unwrap();
    let y = kb.hbm_output("y", &[t, hd], dtype).unwrap();
    let sbuf = kb.sbuf_free_bytes();
    Embedding.emit(&mut kb, &emb, &bind(&[("ids", &ids), ("table", &table), ("y", &h)])).unwrap();
    let io = bind(&[("x", &h), ("w_gate", &w.gate), ("w_up", &w.up), ("w_down", &w.down), ("y", &y)]);
    Mlp.emit(&mut kb, &mlp, &io).unwrap();
    assert_eq!(kb.sbuf_free_bytes(), sbuf);
    let program = kb.finish().unwrap();

    let mut session = Session::new(&chip, &program, SimOptions::default()).unwrap();
    let id_values: Vec<f32> =
        Embedding.input_values(&emb, "ids", &[t], 9).unwrap().into_iter().map(|x| x as f32).collect();
    put(&mut session, "ids", &[t], DType::I32, &id_values);
    put(&mut session, "table", &[v, hd], dtype, &values(v * hd, 4));
    Weights::bind(&mut session, hd, i, dtype);
    session.run().unwrap();

    let h_ref = Embedding.reference(&emb, &host(&[("ids", read(&session, "ids")), ("table", read(&session, "table"))]));
    let h_ref = h_ref.unwrap().remove("y").unwrap();
    assert_eq!(read(&session, "h"), h_ref, "the scratch holds the gathered rows");
    let inputs = host(&[
        ("x", h_ref),
        ("w_gate", read(&session, "w_gate")),
        ("w_up", read(&session, "w_up")),
        ("w_down", read(&session, "w_down")),
    ]);
    let want = Mlp.reference(&mlp, &inputs).unwrap();
    let report = compare(&host(&[("y", read(&session, "y"))]), &want, Mlp.tolerance(&mlp));
    assert!(report.passed, "{report:?}");
    assert!(report.max_abs_err > 0.0, "bf16 rounding shows: the reference is not the device's own output");
}

/// Hidden states → MLP (scratch `h`) → greedy next token per row (`argmax`).
#[test]
fn mlp_then_argmax_through_scratch() {
    let chip = chip();
    let (t, hd, i, dtype) = (130, 96, 140, DType::Bf16);
    let mlp = args(&[t, hd, i], dtype, 2);
    let amax = args(&[t, hd], dtype, 2);

    let mut kb = KernelBuilder::new("greedy", &chip);
    let x = kb.hbm_input("x", &[t, hd], dtype).unwrap();
    let w = Weights::declare(&mut kb, hd, i, dtype);
    let h = kb.hbm_scratch("h", &[t, hd], dtype).unwrap();
    let idx = kb.hbm_output("idx", &[t], DType::U32).unwrap();
    let io = bind(&[("x", &x), ("w_gate", &w.gate), ("w_up", &w.up), ("w_down", &w.down), ("y", &h)]);
    Mlp.emit(&mut kb, &mlp, &io).unwrap();
    Argmax.emit(&mut kb, &amax, &bind(&[("x", &h), ("idx", &idx)])).unwrap();
    let program = kb.finish().unwrap();

    let mut session = Session::new(&chip, &program, SimOptions::default()).unwrap();
    put(&mut session, "x", &[t, hd], dtype, &values(t * hd, 5));
    Weights::bind(&mut session, hd, i, dtype);
    session.run().unwrap();

    let inputs = host(&[
        ("x", read(&session, "x")),
        ("w_gate", read(&session, "w_gate")),
        ("w_up", read(&session, "w_up")),
        ("w_down", read(&session, "w_down")),
    ]);
    let (_, y_ref) = Mlp.reference(&mlp, &inputs).unwrap().remove("y").unwrap();
    let h_dev = read(&session, "h");
    let tol = Mlp.tolerance(&mlp);
    let report = compare(&host(&[("y", h_dev.clone())]), &host(&[("y", (vec![t, hd], y_ref.clone()))]), tol);
    assert!(report.passed, "{report:?}");

    // The indices are exactly the argmax of the hidden states the device
    // computed, and within the MLP's tolerance of the true maximum.
    let (_, idx_dev) = read(&session, "idx");
    let (_, idx_ref) = Argmax.reference(&amax, &host(&[("x", h_dev)])).unwrap().remove("idx").unwrap();
    assert_eq!(idx_dev, idx_ref);
    let mut same = 0;
    for (r, (row, &j)) in y_ref.chunks(hd).zip(&idx_dev).enumerate() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let picked = row[j as usize];
        assert!(max - picked <= 2.0 * (tol.atol + tol.rtol * max.abs()), "row {r}: picked {picked}, max {max}");
        same += usize::from(picked == max);
    }
    // Near-ties aside, the pick is the exact-arithmetic argmax.
    assert!(same * 10 >= t * 9, "only {same} of {t} rows pick the exact maximum");
}
