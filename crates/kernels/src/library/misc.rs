//! Kernels of the `misc` family:
//!
//! * [`Embedding`] — `y[t, :] = table[ids[t], :]` by indirect DMA (`dma_gather`).
//! * [`Argmax`] / [`TopK`] — index (and value) of the largest elements along
//!   the last axis, first index on ties.
//! * [`Mlp`] — the fused Llama-style MLP block `(silu(x·Wg) ⊙ (x·Wu)) · Wd`
//!   whose `[T, I]` activation never leaves SBUF.
//!
//! Every kernel is composable: `emit` appends it to any builder over the
//! caller's HBM tensors (bound by the names of `signature`), switching to
//! cores `0..cores` and back, and frees every tile it allocated.

#[cfg(test)]
mod compose;
mod embedding;
mod mlp;
mod topk;

use std::ops::Range;

pub use embedding::Embedding;
pub use mlp::Mlp;
pub use topk::{Argmax, TopK};

use trainyard_arch::DType;
use trainyard_isa::TensorKind;

pub(crate) use super::{bound, check_args};
use super::{Kernel, TensorSig};
use crate::error::BuildError;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(Embedding), Box::new(Argmax), Box::new(TopK), Box::new(Mlp)]
}

/// A `BuildError::Kernel` for `kernel`.
fn kernel_err(kernel: &str, message: String) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message }
}

/// One tensor of a signature.
fn sig(name: &str, kind: TensorKind, shape: &[usize], dtype: DType) -> TensorSig {
    TensorSig { name: name.to_string(), kind, shape: shape.to_vec(), dtype }
}

/// Items `[start, end)` of `n` that core `c` of `cores` works on: contiguous
/// shares whose sizes differ by at most one.
fn core_share(n: usize, cores: usize, c: usize) -> Range<usize> {
    let cores = cores.max(1);
    let (base, extra) = (n / cores, n % cores);
    let start = c * base + c.min(extra);
    start..start + base + usize::from(c < extra)
}

/// Round-robin over a fixed set of DMA queues. Kernels give loads and stores
/// separate sets: a queue runs in order, so a store waiting for its compute
/// must not sit in front of the loads that prefetch the next tiles.
struct Queues {
    list: &'static [u8],
    turn: usize,
}

impl Queues {
    const fn new(list: &'static [u8]) -> Self {
        Queues { list, turn: 0 }
    }

    fn next(&mut self) -> u8 {
        let q = self.list.get(self.turn % self.list.len().max(1)).copied().unwrap_or(0);
        self.turn = self.turn.wrapping_add(1);
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn family_is_registered() {
        let names: Vec<&str> = kernels().iter().map(|k| k.name()).collect();
        assert_eq!(names, ["embedding", "argmax", "topk", "mlp"]);
        assert!(kernels().iter().all(|k| k.family() == "misc"));
    }

    #[test]
    fn every_kernel_runs_on_every_chip() {
        use crate::harness::run_kernel;
        use crate::library::KernelArgs;
        use trainyard_arch::{ChipSpec, DType};
        use trainyard_sim::SimOptions;
        let shapes: [&[usize]; 4] = [&[130, 40, 24], &[130, 33], &[130, 33], &[130, 96, 140]];
        for chip in ChipSpec::bundled().unwrap() {
            for (kernel, shape) in kernels().iter().zip(shapes) {
                let mut args = KernelArgs::new(shape, DType::Bf16);
                args.cores = 2;
                let run = run_kernel(kernel.as_ref(), &chip, &args, SimOptions::default(), 3).unwrap();
                let report = run.check.unwrap();
                assert!(report.passed, "{} on {}: {report:?}", kernel.name(), chip.name);
            }
        }
    }

    proptest! {
        #[test]
        fn core_shares_partition_the_items(n in 0usize..1000, cores in 1usize..9) {
            let mut next = 0;
            for c in 0..cores {
                let r = core_share(n, cores, c);
                prop_assert_eq!(r.start, next);
                prop_assert!(r.len() == n / cores || r.len() == n / cores + 1);
                next = r.end;
            }
            prop_assert_eq!(next, n);
        }
    }
}
