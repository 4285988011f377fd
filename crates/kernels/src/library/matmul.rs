//! Kernels of the `matmul` family: [`MatMul`] (`matmul`, C = A·B with FP32
//! accumulation in PSUM) and [`Transpose`] (`transpose`, axis permutations).
//!
//! Both move 128×128 blocks through the Tensor engine where an axis must
//! cross the partition dimension, and copy PSUM results out on the Vector and
//! Scalar engines in turn ([`Balancer`]). The helpers shared by the two live
//! here.

mod gemm;
mod transpose;

pub use gemm::MatMul;
pub use transpose::Transpose;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine};

use super::Kernel;
use crate::{BuildError, KernelBuilder, Stage, View};

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(MatMul), Box::new(Transpose)]
}

/// Rounds `bytes` up to the builder's allocation alignment.
fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(crate::ALIGN as usize) * crate::ALIGN as usize
}

/// Bytes per partition of a tile with `elems` free elements of `dtype`, as allocated.
fn tile_bytes(elems: usize, dtype: DType) -> usize {
    aligned(elems * dtype.size())
}

/// DMA queues of one role (loads of one operand, stores, ...), used in turn so
/// that consecutive transfers overlap their fixed latency.
struct Queues {
    ids: Vec<u8>,
    turn: usize,
}

impl Queues {
    /// Queues `ids`, folded onto the queues the chip's cores have.
    fn new(chip: &ChipSpec, ids: &[u8]) -> Queues {
        let have = chip.core.dma.queues.max(1);
        let ids = ids.iter().map(|&q| (q as u32 % have) as u8).collect();
        Queues { ids, turn: 0 }
    }

    fn next(&mut self) -> u8 {
        let q = self.ids.get(self.turn % self.ids.len().max(1)).copied().unwrap_or(0);
        self.turn = self.turn.wrapping_add(1);
        q
    }
}

/// Spreads copies out of PSUM over the Vector and Scalar engines by their
/// estimated busy time (`max(MIN_II, N)` cycles at each engine's clock), so
/// that neither falls behind the Tensor engine. On NeuronCore-v2 the Scalar
/// engine copies through `activation(Identity)` (HW-ISA-COPY), which also
/// applies a scale for free (HW-ACT-FUSE).
struct Balancer {
    vector_ghz: f64,
    scalar_ghz: f64,
    min_ii: f64,
    vector_ns: f64,
    scalar_ns: f64,
}

impl Balancer {
    fn new(chip: &ChipSpec) -> Balancer {
        Balancer {
            vector_ghz: chip.core.clocks.vector_ghz,
            scalar_ghz: chip.core.clocks.scalar_ghz,
            min_ii: chip.core.elementwise.min_ii_cycles as f64,
            vector_ns: 0.0,
            scalar_ns: 0.0,
        }
    }

    fn cost(&self, elems: usize, ghz: f64) -> f64 {
        (elems as f64).max(self.min_ii) / ghz
    }

    /// Accounts `elems` elements of Vector-engine work issued elsewhere.
    fn vector_work(&mut self, elems: usize) {
        self.vector_ns += self.cost(elems, self.vector_ghz);
    }

    /// Accounts `elems` elements of Scalar-engine work issued elsewhere.
    fn scalar_work(&mut self, elems: usize) {
        self.scalar_ns += self.cost(elems, self.scalar_ghz);
    }

    /// `dst = scale · src` on the less loaded of the Vector and Scalar engines.
    fn copy(&mut self, kb: &mut KernelBuilder, dst: &View, src: &View, scale: f32) -> Result<(), BuildError> {
        let elems = per_partition(src);
        let on_vector =
            self.vector_ns + self.cost(elems, self.vector_ghz) <= self.scalar_ns + self.cost(elems, self.scalar_ghz);
        if on_vector {
            self.vector_work(elems);
            if scale == 1.0 {
                kb.copy(Engine::Vector, dst, src)?;
            } else {
                kb.tensor_scalar(Engine::Vector, dst, src, Stage::new(AluOp::Mul, scale), None)?;
            }
        } else {
            self.scalar_work(elems);
            kb.activation(ActFn::Identity, dst, src, scale, None, None)?;
        }
        Ok(())
    }
}

/// Elements per partition of a view (its size without the partition axis).
fn per_partition(v: &View) -> usize {
    let p = v.shape().first().copied().unwrap_or(1).max(1);
    (v.elements() / p as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_fold_onto_the_chip() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        let mut q = Queues::new(&chip, &[3, 17]);
        assert_eq!([q.next(), q.next(), q.next()], [3, 1, 3]);
    }

    #[test]
    fn balancer_alternates_equal_copies() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        let mut kb = KernelBuilder::new("t", &chip);
        let ps = kb.psum_tile(&[128, 512], DType::F32).unwrap();
        let out = kb.sbuf_tile(&[128, 512], DType::F32).unwrap();
        let mut bal = Balancer::new(&chip);
        for _ in 0..4 {
            bal.copy(&mut kb, &out.view(), &ps.view(), 1.0).unwrap();
        }
        let engines: Vec<_> = kb.insts().iter().map(|i| i.op.unit()).collect();
        let vector = engines.iter().filter(|u| **u == trainyard_isa::Unit::Engine(Engine::Vector)).count();
        assert_eq!(vector, 2, "{engines:?}");
    }
}
