//! Composition of the attention kernels: emitting into a shared builder,
//! freeing what they allocate, and chaining through HBM scratch tensors.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::TensorKind;
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::SimOptions;

use super::decode::DecodeAttention;
use super::flash::FlashAttention;
use super::rotary::Rotary;
use crate::harness::{compare, round_to};
use crate::library::{uniform, Bindings, HostTensors, Kernel, KernelArgs};
use crate::{BuildError, KernelBuilder};

fn trn2() -> ChipSpec {
    ChipSpec::by_name("trn2").unwrap()
}

/// Declares `kernel`'s signature tensors in `kb` with a prefix (so several
/// instances can live in one program) and binds them by signature name.
fn declare(kb: &mut KernelBuilder, kernel: &dyn Kernel, args: &KernelArgs, prefix: &str) -> Bindings {
    let mut io = Bindings::new();
    for sig in kernel.signature(kb.chip(), args).unwrap() {
        let name = format!("{prefix}{}", sig.name);
        let t = match sig.kind {
            TensorKind::Output => kb.hbm_output(&name, &sig.shape, sig.dtype),
            _ => kb.hbm_input(&name, &sig.shape, sig.dtype),
        };
        io.insert(sig.name, t.unwrap());
    }
    io
}

fn free_bytes(kb: &mut KernelBuilder, cores: u16) -> Vec<(u64, u64)> {
    let here = kb.current_core();
    let out = (0..cores)
        .map(|c| {
            kb.core(c).unwrap();
            (kb.sbuf_free_bytes(), kb.psum_free_bytes())
        })
        .collect();
    kb.core(here).unwrap();
    out
}

#[test]
fn emit_frees_every_tile_and_restores_the_core() {
    let chip = trn2();
    let mut fa = KernelArgs::new(&[1, 2, 200, 64], DType::Bf16).with("kv_heads", "1");
    fa.cores = 2;
    let mut da = KernelArgs::new(&[2, 4, 300, 64], DType::F16).with("kv_heads", "2");
    da.cores = 2;
    let mut ra = KernelArgs::new(&[300, 3, 64], DType::F32);
    ra.cores = 2;
    let cases: [(&dyn Kernel, KernelArgs); 3] = [(&FlashAttention, fa), (&DecodeAttention, da), (&Rotary, ra)];
    for (kernel, args) in cases {
        let mut kb = KernelBuilder::new("composed", &chip);
        // Memory a previous kernel still holds, on the second core.
        kb.core(1).unwrap();
        let held = kb.sbuf_tile(&[128, 1024], DType::F32).unwrap();
        let io = declare(&mut kb, kernel, &args, "");
        let before = free_bytes(&mut kb, 2);
        let n0 = kb.insts().len();
        kernel.emit(&mut kb, &args, &io).unwrap();
        assert!(kb.insts().len() > n0, "{}: nothing emitted", kernel.name());
        assert_eq!(kb.current_core(), 1, "{}: core not restored", kernel.name());
        assert_eq!(free_bytes(&mut kb, 2), before, "{}: tiles left allocated", kernel.name());
        // A second instance fits in the same builder after the first.
        let io2 = declare(&mut kb, kernel, &args, "again_");
        kernel.emit(&mut kb, &args, &io2).unwrap();
        assert_eq!(free_bytes(&mut kb, 2), before, "{}", kernel.name());
        kb.free(held).unwrap();
        kb.finish().unwrap();
    }
}

#[test]
fn a_failed_emit_frees_what_it_allocated() {
    let chip = trn2();
    // Kᵀ and [V | 1] of one head exceed the SBUF: the error comes after the ring buffers were allocated.
    let args = KernelArgs::new(&[1, 1, 120_000, 64], DType::Bf16);
    let mut kb = KernelBuilder::new("too_long", &chip);
    let io = declare(&mut kb, &FlashAttention, &args, "");
    let before = free_bytes(&mut kb, 1);
    let err = FlashAttention.emit(&mut kb, &args, &io).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert_eq!(free_bytes(&mut kb, 1), before);
}

#[test]
fn bindings_of_the_wrong_shape_or_dtype_name_the_tensor() {
    let chip = trn2();
    let args = KernelArgs::new(&[1, 2, 64, 64], DType::Bf16);
    let err = |io: &Bindings| FlashAttention.emit(&mut KernelBuilder::new("x", &chip), &args, io).unwrap_err();
    let mut kb = KernelBuilder::new("bad", &chip);
    let mut io = declare(&mut kb, &FlashAttention, &args, "");
    let good = io.clone();
    io.insert("k".into(), kb.hbm_input("k_short", &[1, 2, 63, 64], DType::Bf16).unwrap());
    let msg = err(&io).to_string();
    assert!(msg.contains("`k`") && msg.contains("k_short") && msg.contains("63"), "{msg}");
    let mut io = good.clone();
    io.insert("o".into(), kb.hbm_output("o_f32", &[1, 2, 64, 64], DType::F32).unwrap());
    let msg = err(&io).to_string();
    assert!(msg.contains("`o`") && msg.contains("f32"), "{msg}");
    let mut io = good.clone();
    io.remove("v");
    assert!(err(&io).to_string().contains("`v` is not bound"));
    // The other kernels check their own names.
    let ra = KernelArgs::new(&[8, 2, 16], DType::F16);
    let mut rio = declare(&mut kb, &Rotary, &ra, "r_");
    rio.insert("cos".into(), kb.hbm_input("cos_wide", &[8, 16], DType::F16).unwrap());
    let msg = Rotary.emit(&mut kb, &ra, &rio).unwrap_err().to_string();
    assert!(msg.contains("`cos`") && msg.contains("cos_wide"), "{msg}");
    let da = KernelArgs::new(&[1, 2, 16, 32], DType::Bf16);
    let mut dio = declare(&mut kb, &DecodeAttention, &da, "d_");
    dio.insert("q".into(), good["q"].clone());
    let msg = DecodeAttention.emit(&mut kb, &da, &dio).unwrap_err().to_string();
    assert!(msg.contains("`q`"), "{msg}");
}

#[test]
fn signatures_refuse_what_build_refuses() {
    let chip = trn2();
    let sig_err = |k: &dyn Kernel, a: KernelArgs| k.signature(&chip, &a).unwrap_err().to_string();
    assert!(sig_err(&FlashAttention, KernelArgs::new(&[1, 1, 8, 64], DType::I8)).contains("dtype"));
    assert!(sig_err(&Rotary, KernelArgs::new(&[4, 1, 8], DType::Bf16).with("causal", "1")).contains("causal"));
    assert!(sig_err(&DecodeAttention, KernelArgs::new(&[1, 256, 8, 64], DType::Bf16).with("kv_heads", "1"))
        .contains("256 query heads"));
    assert!(sig_err(&Rotary, KernelArgs::new(&[4, 1, 7], DType::Bf16)).contains("D=7"));
}

#[test]
fn reshaped_tensors_keep_their_bytes() {
    let chip = trn2();
    let mut kb = KernelBuilder::new("alias", &chip);
    let t = kb.hbm_scratch("t", &[6, 1, 8], DType::Bf16).unwrap();
    let r = t.reshaped(&[1, 1, 6, 8]).unwrap();
    assert_eq!((r.name(), r.offset(), r.kind(), r.shape()), ("t", t.offset(), TensorKind::Scratch, &[1, 1, 6, 8][..]));
    let err = t.reshaped(&[1, 1, 6, 7]).unwrap_err();
    assert!(matches!(err, BuildError::BadShape { .. }) && err.to_string().contains("`t`"), "{err}");
    assert!(t.reshaped(&[0, 48]).is_err());
}

/// RoPE tables for `rows` rows whose positions are `row % positions`.
fn rope_tables(rows: usize, positions: usize, half: usize) -> (Vec<f64>, Vec<f64>) {
    let angle = |r: usize, j: usize| (r % positions) as f64 * 10000f64.powf(-(j as f64) / half as f64);
    let cos = (0..rows * half).map(|i| angle(i / half, i % half).cos()).collect();
    let sin = (0..rows * half).map(|i| angle(i / half, i % half).sin()).collect();
    (cos, sin)
}

/// `o = flash_attention(rope(q), rope(k), v)` in one program: two rotary
/// emits write `q_rot` and `k_rot` (HBM scratch, token-major `[T, 1, D]`),
/// which flash attention reads as `[1, H, S, D]` and `[1, 1, S, D]`.
/// Run race-checked and compared with the composed host references.
fn rope_then_attention(dtype: DType, h: usize, s: usize, d: usize, cores: u16) {
    let chip = trn2();
    let half = d / 2;
    let mut kb = KernelBuilder::new("rope_attention", &chip);
    let q = kb.hbm_input("q", &[1, h, s, d], dtype).unwrap();
    let k = kb.hbm_input("k", &[1, 1, s, d], dtype).unwrap();
    let v = kb.hbm_input("v", &[1, 1, s, d], dtype).unwrap();
    let cos_q = kb.hbm_input("cos_q", &[h * s, half], dtype).unwrap();
    let sin_q = kb.hbm_input("sin_q", &[h * s, half], dtype).unwrap();
    let cos_k = kb.hbm_input("cos_k", &[s, half], dtype).unwrap();
    let sin_k = kb.hbm_input("sin_k", &[s, half], dtype).unwrap();
    let q_rot = kb.hbm_scratch("q_rot", &[h * s, 1, d], dtype).unwrap();
    let k_rot = kb.hbm_scratch("k_rot", &[s, 1, d], dtype).unwrap();
    let o = kb.hbm_output("o", &[1, h, s, d], dtype).unwrap();

    let bind = |pairs: [(&str, crate::HbmTensor); 4]| pairs.map(|(n, t)| (n.to_string(), t)).into_iter().collect();
    let mut rq = KernelArgs::new(&[h * s, 1, d], dtype);
    rq.cores = cores;
    let mut rk = KernelArgs::new(&[s, 1, d], dtype);
    rk.cores = cores;
    let mut fa = KernelArgs::new(&[1, h, s, d], dtype).with("kv_heads", "1").with("causal", "true");
    fa.cores = cores;
    let x = q.reshaped(&[h * s, 1, d]).unwrap();
    let io = bind([("x", x), ("cos", cos_q), ("sin", sin_q), ("y", q_rot.clone())]);
    let c1 = Rotary.emit(&mut kb, &rq, &io).unwrap();
    let io = bind([("x", k.reshaped(&[s, 1, d]).unwrap()), ("cos", cos_k), ("sin", sin_k), ("y", k_rot.clone())]);
    Rotary.emit(&mut kb, &rk, &io).unwrap();
    let io = bind([
        ("q", q_rot.reshaped(&[1, h, s, d]).unwrap()),
        ("k", k_rot.reshaped(&[1, 1, s, d]).unwrap()),
        ("v", v),
        ("o", o),
    ]);
    let c3 = FlashAttention.emit(&mut kb, &fa, &io).unwrap();
    assert_eq!(c1.bytes_hbm, ((2 * h * s * d + 2 * h * s * half) * dtype.size()) as u64);
    assert_eq!(c3.peak_dtype, Some(dtype));
    let program = kb.finish().unwrap();
    if cores > 1 {
        assert_eq!(program.cores_used(), cores as u32);
    }

    let (cq, sq) = rope_tables(h * s, s, half);
    let (ck, sk) = rope_tables(s, s, half);
    let values: [(&str, Vec<f64>); 7] = [
        ("q", uniform(h * s * d, 1)),
        ("k", uniform(s * d, 2)),
        ("v", uniform(s * d, 3)),
        ("cos_q", cq),
        ("sin_q", sq),
        ("cos_k", ck),
        ("sin_k", sk),
    ];
    let mut session = Session::new(&chip, &program, SimOptions::default()).unwrap();
    for (name, vals) in &values {
        let decl = program.tensors.iter().find(|t| t.name == *name).unwrap();
        let f: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
        session.bind(name, &HostTensor::from_f32(decl.shape.clone(), dtype, &f)).unwrap();
    }
    session.run().unwrap();
    // Inputs as the device holds them (rounded to the dtype).
    let dev = |name: &str| -> Vec<f64> { session.output(name).unwrap().to_f32().into_iter().map(f64::from).collect() };
    let host = |pairs: &[(&str, Vec<usize>, Vec<f64>)]| -> HostTensors {
        pairs.iter().map(|(n, sh, v)| (n.to_string(), (sh.clone(), v.clone()))).collect()
    };

    let rope = |args: &KernelArgs, x: &str, cos: &str, sin: &str, rows: usize| -> Vec<f64> {
        let inputs = host(&[
            ("x", vec![rows, 1, d], dev(x)),
            ("cos", vec![rows, half], dev(cos)),
            ("sin", vec![rows, half], dev(sin)),
        ]);
        // The device stores the rotated tensors in the dtype before attention reads them.
        round_to(dtype, &Rotary.reference(args, &inputs).unwrap()["y"].1)
    };
    let q_ref = rope(&rq, "q", "cos_q", "sin_q", h * s);
    let k_ref = rope(&rk, "k", "cos_k", "sin_k", s);
    // The scratch tensors themselves match the rotary reference.
    let rot_tol = Rotary.tolerance(&rq);
    let scratch = |name: &str, shape: Vec<usize>| host(&[("y", shape, dev(name))]);
    let want = |v: &Vec<f64>, shape: Vec<usize>| host(&[("y", shape, v.clone())]);
    let r = compare(&scratch("q_rot", vec![h * s, 1, d]), &want(&q_ref, vec![h * s, 1, d]), rot_tol);
    assert!(r.passed, "q_rot {dtype}: {:?}", r.worst);
    let r = compare(&scratch("k_rot", vec![s, 1, d]), &want(&k_ref, vec![s, 1, d]), rot_tol);
    assert!(r.passed, "k_rot {dtype}: {:?}", r.worst);

    let inputs =
        host(&[("q", vec![1, h, s, d], q_ref), ("k", vec![1, 1, s, d], k_ref), ("v", vec![1, 1, s, d], dev("v"))]);
    let expected = FlashAttention.reference(&fa, &inputs).unwrap();
    let got = host(&[("o", vec![1, h, s, d], dev("o"))]);
    let report = compare(&got, &expected, FlashAttention.tolerance(&fa));
    assert!(report.passed, "{dtype} h={h} s={s}: max abs {} worst {:?}", report.max_abs_err, report.worst);
}

#[test]
fn rotary_on_q_and_k_then_flash_attention() {
    rope_then_attention(DType::Bf16, 2, 130, 64, 1);
    rope_then_attention(DType::F32, 2, 70, 32, 1);
}

#[test]
fn rotary_then_flash_attention_on_two_cores() {
    rope_then_attention(DType::F16, 2, 200, 64, 2);
}
