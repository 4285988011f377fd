//! Kernels of the `norms` family: `softmax` (optionally causal),
//! `layernorm` and `rmsnorm`, all over the last axis.
//!
//! Each is memory bound when the work per element is spread over the
//! Vector, Scalar and GpSimd engines: row blocks of 128 rows are loaded
//! whole (one large DMA per block), statistics and normalisation run in
//! place in SBUF, and the statistics of the next block are emitted ahead of
//! the normalisation of the current one (`rows::pipelined`). Rows too long
//! for SBUF are streamed twice in column chunks.
//!
//! The kernels are composable like the `elementwise` ones; the tests below
//! chain them through HBM scratch tensors (rmsnorm → swiglu, softmax →
//! binary) within one program.

use super::Kernel;

mod layernorm;
mod rows;
mod softmax;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(softmax::Softmax), Box::new(layernorm::LayerNorm), Box::new(layernorm::RmsNorm)]
}

#[cfg(test)]
mod tests {
    use trainyard_arch::{ChipSpec, DType};
    use trainyard_runtime::{HostTensor, Session};
    use trainyard_sim::SimOptions;

    use crate::builder::{HbmTensor, KernelBuilder};
    use crate::harness::{compare, CheckReport};
    use crate::library::elementwise::tests::assert_emit_frees;
    use crate::library::{find, uniform, Bindings, HostTensors, Kernel, KernelArgs, Tolerance};

    fn kernel(name: &str) -> Box<dyn Kernel> {
        find(name).unwrap()
    }

    fn bind(pairs: &[(&str, &HbmTensor)]) -> Bindings {
        pairs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect()
    }

    /// One host tensor: shape and values.
    type Host = (Vec<usize>, Vec<f64>);

    fn host(pairs: &[(&str, &Host)]) -> HostTensors {
        pairs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect()
    }

    fn sum(a: Tolerance, b: Tolerance) -> Tolerance {
        Tolerance { atol: a.atol + b.atol, rtol: a.rtol + b.rtol }
    }

    /// Runs `kb`'s program functionally (race check on) with seeded inputs;
    /// returns every declared tensor's values as the device holds them after
    /// the run (inputs as rounded when bound, scratch, outputs).
    fn run(chip: &ChipSpec, kb: KernelBuilder) -> HostTensors {
        let program = kb.finish().unwrap();
        let mut session = Session::new(chip, &program, SimOptions::default()).unwrap();
        for (i, t) in program.tensors.iter().enumerate() {
            if t.kind == trainyard_isa::TensorKind::Input {
                let v: Vec<f32> = uniform(t.elements() as usize, 11 + i as u64).iter().map(|&v| v as f32).collect();
                session.bind(&t.name, &HostTensor::from_f32(t.shape.clone(), t.dtype, &v)).unwrap();
            }
        }
        session.run().unwrap();
        let mut out = HostTensors::new();
        for t in &program.tensors {
            let v = session.output(&t.name).unwrap().to_f32().into_iter().map(f64::from).collect();
            out.insert(t.name.clone(), (t.shape.iter().map(|&d| d as usize).collect(), v));
        }
        out
    }

    fn rounded(dtype: DType, t: &Host) -> Host {
        (t.0.clone(), t.1.iter().map(|&v| dtype.round(v as f32) as f64).collect())
    }

    fn passes(report: CheckReport, what: &str) {
        assert!(report.passed, "{what}: {report:?}");
    }

    /// y = swiglu(rmsnorm(x, gamma), gate) through an HBM scratch tensor,
    /// each kernel on two cores (rmsnorm splits rows, swiglu flat elements,
    /// so each core reads what the other wrote).
    #[test]
    fn rmsnorm_then_swiglu_through_scratch() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let (rms, swiglu) = (kernel("rmsnorm"), kernel("swiglu"));
        for (shape, dtype) in [([200usize, 96usize], DType::F32), ([130, 300], DType::Bf16)] {
            let mut ra = KernelArgs::new(&shape, dtype);
            ra.cores = 2;
            let sa = ra.clone();
            let mut kb = KernelBuilder::new("rmsnorm_swiglu", &chip);
            let x = kb.hbm_input("x", &shape, dtype).unwrap();
            let gamma = kb.hbm_input("gamma", &shape[1..], dtype).unwrap();
            let gate = kb.hbm_input("gate", &shape, dtype).unwrap();
            let h = kb.hbm_scratch("h", &shape, dtype).unwrap();
            let y = kb.hbm_output("out", &shape, dtype).unwrap();
            rms.emit(&mut kb, &ra, &bind(&[("x", &x), ("gamma", &gamma), ("y", &h)])).unwrap();
            swiglu.emit(&mut kb, &sa, &bind(&[("a", &h), ("b", &gate), ("y", &y)])).unwrap();
            let got = run(&chip, kb);

            let want_h = rms.reference(&ra, &host(&[("x", &got["x"]), ("gamma", &got["gamma"])])).unwrap();
            let h_dev = rounded(dtype, &want_h["y"]);
            let want_y = swiglu.reference(&sa, &host(&[("a", &h_dev), ("b", &got["gate"])])).unwrap();
            let what = format!("{shape:?} {dtype}");
            let tol = rms.tolerance(&ra);
            passes(compare(&host(&[("y", &got["h"])]), &want_h, tol), &what);
            let tol = sum(tol, swiglu.tolerance(&sa));
            passes(compare(&host(&[("y", &got["out"])]), &want_y, tol), &what);
        }
    }

    /// c = softmax(x, causal) · v (a row vector broadcast over the rows)
    /// through an HBM scratch tensor, on two cores.
    #[test]
    fn softmax_then_binary_through_scratch() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        let (softmax, binary) = (kernel("softmax"), kernel("binary"));
        for dtype in [DType::F32, DType::Bf16] {
            let shape = [2usize, 130, 150];
            let mut sa = KernelArgs::new(&shape, dtype).with("mask", "causal");
            sa.cores = 2;
            let mut ba = KernelArgs::new(&shape, dtype).with("op", "mul").with("b_shape", "150");
            ba.cores = 2;
            let mut kb = KernelBuilder::new("softmax_binary", &chip);
            let x = kb.hbm_input("x", &shape, dtype).unwrap();
            let v = kb.hbm_input("v", &[150], dtype).unwrap();
            let p = kb.hbm_scratch("p", &shape, dtype).unwrap();
            let c = kb.hbm_output("c", &shape, dtype).unwrap();
            softmax.emit(&mut kb, &sa, &bind(&[("x", &x), ("y", &p)])).unwrap();
            binary.emit(&mut kb, &ba, &bind(&[("a", &p), ("b", &v), ("c", &c)])).unwrap();
            let got = run(&chip, kb);

            let want_p = softmax.reference(&sa, &host(&[("x", &got["x"])])).unwrap();
            let p_dev = rounded(dtype, &want_p["y"]);
            let want_c = binary.reference(&ba, &host(&[("a", &p_dev), ("b", &got["v"])])).unwrap();
            let tol = sum(softmax.tolerance(&sa), binary.tolerance(&ba));
            passes(compare(&host(&[("c", &got["c"])]), &want_c, tol), &format!("{dtype}"));
        }
    }

    /// Two multi-core whole-tensor reductions in one program, each with its
    /// own HBM scratch tensor of per-core partials, then a softmax of the
    /// same input: three kernels reading one tensor.
    #[test]
    fn kernels_with_internal_scratch_compose() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let (reduce, softmax) = (kernel("reduce"), kernel("softmax"));
        let mut kb = KernelBuilder::new("reductions", &chip);
        let x = kb.hbm_input("x", &[1000], DType::F32).unwrap();
        let outs = [kb.hbm_output("s", &[1], DType::F32).unwrap(), kb.hbm_output("m", &[1], DType::F32).unwrap()];
        let sm = kb.hbm_output("sm", &[1000], DType::F32).unwrap();
        let mut args = [KernelArgs::new(&[1000], DType::F32), KernelArgs::new(&[1000], DType::F32).with("op", "max")];
        for (a, out) in args.iter_mut().zip(&outs) {
            a.cores = 2;
            reduce.emit(&mut kb, a, &bind(&[("x", &x), ("y", out)])).unwrap();
        }
        let smargs = KernelArgs::new(&[1000], DType::F32);
        softmax.emit(&mut kb, &smargs, &bind(&[("x", &x), ("y", &sm)])).unwrap();
        let got = run(&chip, kb);
        assert!(got.contains_key("partials") && got.contains_key("partials.1"));
        let xs = host(&[("x", &got["x"])]);
        for (a, out) in args.iter().zip(["s", "m"]) {
            let want = reduce.reference(a, &xs).unwrap();
            passes(compare(&host(&[("y", &got[out])]), &want, reduce.tolerance(a)), out);
        }
        let want = softmax.reference(&smargs, &xs).unwrap();
        passes(compare(&host(&[("y", &got["sm"])]), &want, softmax.tolerance(&smargs)), "softmax");
    }

    #[test]
    fn emit_gives_back_all_memory() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for name in ["softmax", "layernorm", "rmsnorm"] {
            let k = kernel(name);
            for (shape, dtype) in [([300usize, 129usize], DType::Bf16), ([130, 30000], DType::F32)] {
                let mut a = KernelArgs::new(&shape, dtype);
                a.cores = 2;
                assert_emit_frees(k.as_ref(), &chip, &a);
                if name == "softmax" {
                    assert_emit_frees(k.as_ref(), &chip, &a.clone().with("mask", "causal"));
                }
            }
        }
    }

    #[test]
    fn bindings_of_the_wrong_shape_or_dtype_are_refused() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let rms = kernel("rmsnorm");
        let args = KernelArgs::new(&[4, 8], DType::Bf16);
        let mut kb = KernelBuilder::new("t", &chip);
        let x = kb.hbm_input("x", &[4, 8], DType::Bf16).unwrap();
        let g_short = kb.hbm_input("g", &[4], DType::Bf16).unwrap();
        let g_f32 = kb.hbm_input("g32", &[8], DType::F32).unwrap();
        let y = kb.hbm_output("y", &[4, 8], DType::Bf16).unwrap();
        for (g, want) in [(&g_short, "bf16[4]"), (&g_f32, "f32[8]")] {
            let e = rms.emit(&mut kb, &args, &bind(&[("x", &x), ("gamma", g), ("y", &y)])).unwrap_err().to_string();
            assert!(e.contains("rmsnorm") && e.contains("tensor `gamma` must be bf16[8]") && e.contains(want), "{e}");
        }
        let e = rms.emit(&mut kb, &args, &bind(&[("x", &x), ("y", &y)])).unwrap_err().to_string();
        assert!(e.contains("tensor `gamma` is not bound"), "{e}");
        assert!(kb.insts().is_empty());
    }
}
