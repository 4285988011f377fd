//! Kernels of the `elementwise` family: `unary` (any activation function),
//! `binary` (any arithmetic or comparison operator with numpy broadcasting),
//! the fused chains `silu`, `swiglu`, `gelu_mul` and `add_relu`, and
//! `reduce` (sum, max, min, mean along one axis).
//!
//! All of them are memory bound on a NeuronCore: each loads its inputs once
//! and stores its output once, streaming `[128, F]` blocks through
//! three-buffer tile pools so loads, compute and stores overlap. The helpers
//! in `common` and `stream` are shared with the `norms` family.

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
    use trainyard_arch::ChipSpec;

    use crate::harness::{run_kernel, KernelRun};
    use crate::library::{Kernel, KernelArgs};

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
