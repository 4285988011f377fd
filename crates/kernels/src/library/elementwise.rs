//! Kernels of the `elementwise` family: `unary` (any activation function),
//! `binary` (any arithmetic or comparison operator with numpy broadcasting),
//! the fused chains `silu`, `swiglu`, `gelu_mul` and `add_relu`, and
//! `reduce` (sum, max, min, mean along one axis).
//!
//! All of them are memory bound on a NeuronCore: each loads its inputs once
//! and stores its output once, streaming `[128, F]` blocks through
//! three-buffer tile pools so loads, compute and stores overlap. The helpers
//! in `common` and `stream` are shared with the `norms` family.
//!
//! Every kernel of both families is composable ([`Kernel::emit`]): it reads
//! and writes whatever HBM tensors the caller binds to its signature names
//! and gives back all the SBUF and PSUM it took when it ends.

use super::Kernel;

mod binary;
pub(crate) mod common;
mod reduce;
pub(crate) mod stream;
mod unary;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![
        Box::new(unary::Unary),
        Box::new(binary::Binary),
        Box::new(unary::Silu),
        Box::new(unary::Fused::swiglu()),
        Box::new(unary::Fused::gelu_mul()),
        Box::new(unary::Fused::add_relu()),
        Box::new(reduce::Reduce),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use trainyard_arch::{ChipSpec, DType};
    use trainyard_isa::TensorKind;

    use crate::builder::KernelBuilder;
    use crate::harness::{run_kernel, KernelRun};
    use crate::library::{Bindings, Kernel, KernelArgs};

    /// The chips the family is tested on: NeuronCore-v2 (no perf modes, no
    /// Scalar copy) and v3.
    pub(crate) fn chips() -> Vec<ChipSpec> {
        ["trn1", "trn2"].iter().map(|n| ChipSpec::by_name(n).unwrap()).collect()
    }

    /// Runs `kernel` functionally with race checking and asserts it matches its reference.
    pub(crate) fn check(kernel: &dyn Kernel, chip: &ChipSpec, args: &KernelArgs) -> KernelRun {
        let run = run_kernel(kernel, chip, args, Default::default(), 7)
            .unwrap_or_else(|e| panic!("{} {:?} on {}: {e}", kernel.name(), args, chip.name));
        let report = run.check.clone().expect("functional run has a check");
        assert!(report.passed, "{} {:?} on {}: {:?}", kernel.name(), args, chip.name, report);
        run
    }

    /// Emits `kernel` over freshly declared signature tensors and asserts
    /// that it leaves every core's SBUF and PSUM as free as it found them, on
    /// core 0, with the cost and instructions of the standalone build.
    pub(crate) fn assert_emit_frees(kernel: &dyn Kernel, chip: &ChipSpec, args: &KernelArgs) {
        let what = format!("{} {args:?} on {}", kernel.name(), chip.name);
        let mut kb = KernelBuilder::new(kernel.name(), chip);
        let mut io = Bindings::new();
        for s in kernel.signature(chip, args).unwrap() {
            let t = match s.kind {
                TensorKind::Output => kb.hbm_output(&s.name, &s.shape, s.dtype),
                _ => kb.hbm_input(&s.name, &s.shape, s.dtype),
            };
            io.insert(s.name, t.unwrap());
        }
        let free = |kb: &mut KernelBuilder| -> Vec<(u64, u64)> {
            let v = (0..args.cores)
                .map(|c| {
                    kb.core(c).unwrap();
                    (kb.sbuf_free_bytes(), kb.psum_free_bytes())
                })
                .collect();
            kb.core(0).unwrap();
            v
        };
        let before = free(&mut kb);
        let cost = kernel.emit(&mut kb, args, &io).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(kb.current_core(), 0, "{what}");
        assert!(!kb.insts().is_empty(), "{what}");
        assert_eq!(free(&mut kb), before, "{what}");
        let built = crate::library::build(kernel, chip, args).unwrap();
        assert_eq!((cost.flops, cost.bytes_hbm, cost.peak_dtype), (built.flops, built.bytes_hbm, built.peak_dtype));
        assert_eq!(kb.finish().unwrap().insts, built.program.insts, "{what}");
    }

    #[test]
    fn emit_gives_back_all_memory() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let with_cores = |a: KernelArgs, cores: u16| KernelArgs { cores, ..a };
        let k = super::kernels();
        for kernel in &k {
            for cores in [1, 2] {
                assert_emit_frees(
                    kernel.as_ref(),
                    &chip,
                    &with_cores(KernelArgs::new(&[300, 129], DType::Bf16), cores),
                );
            }
        }
        let unary = crate::library::find("unary").unwrap();
        assert_emit_frees(
            unary.as_ref(),
            &chip,
            &with_cores(KernelArgs::new(&[5, 300], DType::F32).with("bias", "1"), 2),
        );
        let binary = crate::library::find("binary").unwrap();
        for b in ["1", "129", "3,100,1", "3,1,129"] {
            let a = KernelArgs::new(&[3, 100, 129], DType::F32).with("b_shape", b);
            assert_emit_frees(binary.as_ref(), &chip, &with_cores(a, 2));
        }
        let reduce = crate::library::find("reduce").unwrap();
        for (shape, axis, op) in [
            (&[1000usize][..], "0", "sum"),
            (&[300, 129][..], "0", "mean"),
            (&[300, 129][..], "0", "max"),
            (&[3, 20000][..], "1", "min"),
        ] {
            let a = KernelArgs::new(shape, DType::Bf16).with("axis", axis).with("op", op);
            assert_emit_frees(reduce.as_ref(), &chip, &with_cores(a, 2));
        }
    }

    #[test]
    fn emit_checks_its_arguments_and_bindings() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let binary = crate::library::find("binary").unwrap();
        let args = KernelArgs::new(&[4, 8], DType::F32).with("b_shape", "8");
        let mut kb = KernelBuilder::new("t", &chip);
        let a = kb.hbm_input("a", &[4, 8], DType::F32).unwrap();
        let b = kb.hbm_input("b", &[8], DType::Bf16).unwrap();
        let c = kb.hbm_output("out", &[4, 8], DType::F32).unwrap();
        let mut io: Bindings = [("a".to_string(), a), ("b".to_string(), b)].into_iter().collect();
        let e = binary.emit(&mut kb, &args, &io).unwrap_err().to_string();
        assert!(e.contains("binary") && e.contains("tensor `b` must be f32[8]") && e.contains("bf16"), "{e}");
        let b = kb.hbm_input("b2", &[8], DType::F32).unwrap();
        io.insert("b".into(), b);
        let e = binary.emit(&mut kb, &args, &io).unwrap_err().to_string();
        assert!(e.contains("tensor `c` is not bound"), "{e}");
        io.insert("c".into(), c);
        for bad in [args.clone().with("nope", "1"), KernelArgs { dtype: DType::I32, ..args.clone() }] {
            let e = binary.emit(&mut kb, &bad, &io).unwrap_err().to_string();
            assert!(e.contains("binary"), "{e}");
        }
        let e = binary.emit(&mut kb, &KernelArgs { cores: 99, ..args.clone() }, &io).unwrap_err().to_string();
        assert!(e.contains("--cores 99"), "{e}");
        assert!(kb.insts().is_empty());
        binary.emit(&mut kb, &args, &io).unwrap();
    }

    #[test]
    fn registry_names_are_unique_and_documented() {
        let ks = super::kernels();
        let mut names: Vec<&str> = ks.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ks.len());
        for k in &ks {
            assert_eq!(k.family(), "elementwise");
            assert!(!k.summary().is_empty() && !k.shape_help().is_empty());
            assert!(crate::library::find(k.name()).is_some());
        }
    }
}
