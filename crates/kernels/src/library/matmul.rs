//! Kernels of the `matmul` family: [`MatMul`] (`matmul`, C = A·B with FP32
//! accumulation in PSUM) and [`Transpose`] (`transpose`, axis permutations).
//!
//! Both move 128×128 blocks through the Tensor engine where an axis must
//! cross the partition dimension, and copy PSUM results out on the Vector and
//! Scalar engines in turn (`Balancer`). The helpers shared by the two live
//! here.
//!
//! Both are composable ([`Kernel::emit`]): `matmul` binds `a`, `b`, `bias`
//! (with `bias=true`) and `c`, `transpose` binds `x` and `y`; each frees its
//! tiles when done, so e.g. a transpose into a scratch tensor can feed a
//! matmul in the same program.

mod gemm;
mod transpose;

pub use gemm::MatMul;
pub use transpose::Transpose;

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::{bound, check_args, Kernel, TensorSig};
use crate::{BuildError, KernelBuilder, Stage, View};

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(MatMul), Box::new(Transpose)]
}

/// A signature entry.
fn sig(name: &str, kind: TensorKind, shape: Vec<usize>, dtype: DType) -> TensorSig {
    TensorSig { name: name.to_string(), kind, shape, dtype }
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
    use crate::library::{Bindings, Cost, HostTensors, KernelArgs};
    use crate::HbmTensor;

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

    /// Declares `kernel`'s signature tensors in `kb` as scratch, so that the
    /// builder is the one a composing caller would hold.
    fn declare(kb: &mut KernelBuilder, kernel: &dyn Kernel, args: &KernelArgs, prefix: &str) -> Bindings {
        let chip = kb.chip().clone();
        let mut io = Bindings::new();
        for s in kernel.signature(&chip, args).unwrap() {
            let t = kb.hbm_scratch(&format!("{prefix}{}", s.name), &s.shape, s.dtype).unwrap();
            io.insert(s.name, t);
        }
        io
    }

    #[test]
    fn emit_frees_every_tile_and_restores_the_core() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let cases: Vec<(Box<dyn Kernel>, KernelArgs)> = vec![
            (Box::new(MatMul), KernelArgs::new(&[130, 300, 520], DType::Bf16)),
            (Box::new(MatMul), KernelArgs::new(&[200, 130, 257], DType::F32).with("transpose_a", "true")),
            (
                Box::new(MatMul),
                KernelArgs::new(&[100, 256, 520], DType::F8E4M3)
                    .with("transpose_b", "true")
                    .with("bias", "true")
                    .with("scale_b", "0.25"),
            ),
            (Box::new(MatMul), KernelArgs::new(&[33, 140, 65], DType::F16).with("batch", "3")),
            (Box::new(Transpose), KernelArgs::new(&[300, 1100], DType::Bf16)),
            (Box::new(Transpose), KernelArgs::new(&[2, 70, 3, 64], DType::Bf16).with("perm", "0,2,1,3")),
        ];
        for (kernel, mut args) in cases {
            args.cores = 2;
            let mut kb = KernelBuilder::new("emit", &chip);
            let io = declare(&mut kb, kernel.as_ref(), &args, "");
            let free = |kb: &mut KernelBuilder| -> Vec<(u64, u64)> {
                (0..3)
                    .map(|c| {
                        kb.core(c).unwrap();
                        (kb.sbuf_free_bytes(), kb.psum_free_bytes())
                    })
                    .collect()
            };
            let before = free(&mut kb);
            kb.core(2).unwrap();
            // Twice: the second emission needs the memory the first one gave back.
            for _ in 0..2 {
                kernel.emit(&mut kb, &args, &io).unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert_eq!(kb.current_core(), 2, "{args:?}");
            }
            assert!(kb.insts().iter().any(|i| i.core == 1), "{args:?} uses both cores");
            assert_eq!(free(&mut kb), before, "{} {args:?}", kernel.name());
            kb.finish().unwrap();
        }
    }

    #[test]
    fn a_failed_emit_gives_back_what_it_allocated() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        // SBUF left to the kernel: matmul's PSUM pools and first SBUF pools
        // fit, its raw A rows do not; transpose's loads fit, its stores do not.
        let cases: Vec<(Box<dyn Kernel>, KernelArgs, u64)> = vec![
            (Box::new(MatMul), KernelArgs::new(&[256, 1100, 1100], DType::Bf16), 20 * 1024),
            (Box::new(Transpose), KernelArgs::new(&[300, 1100], DType::Bf16), 130 * 1024),
        ];
        for (kernel, args, leave) in cases {
            let mut kb = KernelBuilder::new("full", &chip);
            let io = declare(&mut kb, kernel.as_ref(), &args, "");
            let held = kb.sbuf_free_bytes() - leave;
            let hold = kb.sbuf_tile(&[128, held as usize], DType::U8).unwrap();
            let before = (kb.sbuf_free_bytes(), kb.psum_free_bytes());
            match kernel.emit(&mut kb, &args, &io) {
                Err(BuildError::OutOfSbuf { .. }) => {}
                other => panic!("{}: {:?}", kernel.name(), other.map(|_| ())),
            }
            assert_eq!((kb.sbuf_free_bytes(), kb.psum_free_bytes()), before, "{}", kernel.name());
            assert!(kb.insts().is_empty());
            // With the memory back, the same builder takes the kernel.
            kb.free(hold).unwrap();
            kernel.emit(&mut kb, &args, &io).unwrap();
            kb.finish().unwrap();
        }
    }

    #[test]
    fn standalone_build_declares_the_signature() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        let args = KernelArgs::new(&[70, 64, 33], DType::F8E5M2).with("bias", "true").with("out", "bf16");
        let built = MatMul.build(&chip, &args).unwrap();
        let sigs = MatMul.signature(&chip, &args).unwrap();
        let names: Vec<&str> = sigs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "bias", "c"]);
        for s in &sigs {
            let t = built.program.tensor(&s.name).unwrap();
            assert_eq!(
                (t.kind, t.dtype, t.shape.clone()),
                (s.kind, s.dtype, s.shape.iter().map(|&d| d as u64).collect())
            );
        }
        assert_eq!(sigs[2].dtype, DType::Bf16, "fp8 bias is bf16");
        let t = Transpose.signature(&chip, &KernelArgs::new(&[2, 3, 5], DType::F16).with("perm", "2,0,1")).unwrap();
        assert_eq!((t[1].name.as_str(), t[1].kind, t[1].shape.clone()), ("y", TensorKind::Output, vec![5, 2, 3]));
    }

    fn kernel_error(r: Result<Cost, BuildError>) -> String {
        match r {
            Err(e @ BuildError::Kernel { .. }) => e.to_string(),
            Err(e) => panic!("expected a kernel error, got {e}"),
            Ok(_) => panic!("emitted"),
        }
    }

    #[test]
    fn bad_bindings_and_arguments_are_named() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let mut kb = KernelBuilder::new("bad", &chip);
        let args = KernelArgs::new(&[8, 16, 24], DType::Bf16);
        let mut io = declare(&mut kb, &MatMul, &args, "");
        let wrong_shape = kb.hbm_scratch("c2", &[8, 25], DType::F32).unwrap();
        let good_c = io.insert("c".into(), wrong_shape).unwrap();
        let e = kernel_error(MatMul.emit(&mut kb, &args, &io));
        assert!(e.contains("tensor `c`") && e.contains("[8, 25]"), "{e}");
        io.insert("c".into(), good_c);
        let wrong_dtype = kb.hbm_scratch("b2", &[16, 24], DType::F32).unwrap();
        io.insert("b".into(), wrong_dtype);
        let e = kernel_error(MatMul.emit(&mut kb, &args, &io));
        assert!(e.contains("tensor `b`") && e.contains("f32"), "{e}");
        io.remove("b");
        assert!(kernel_error(MatMul.emit(&mut kb, &args, &io)).contains("`b` is not bound"));
        // What `library::build` checks is checked for composing callers too.
        let e = kernel_error(MatMul.emit(&mut kb, &args.clone().with("transpose", "true"), &io));
        assert!(e.contains("unknown option `transpose`"), "{e}");
        let e = kernel_error(Transpose.emit(&mut kb, &KernelArgs::new(&[4, 4], DType::F8E4M3), &io));
        assert!(e.contains("dtype"), "{e}");
        let targs = KernelArgs::new(&[4, 6], DType::Bf16);
        let mut tio = declare(&mut kb, &Transpose, &targs, "t");
        tio.insert("y".into(), kb.hbm_scratch("y2", &[4, 6], DType::Bf16).unwrap());
        let e = kernel_error(Transpose.emit(&mut kb, &targs, &tio));
        assert!(e.contains("tensor `y` must be bf16[6, 4]") && e.contains("`y2`"), "{e}");
        let mut many = targs.clone();
        many.cores = 99;
        assert!(kernel_error(Transpose.emit(&mut kb, &many, &tio)).contains("cores"));
        assert!(kb.insts().is_empty(), "nothing was emitted");
    }

    /// `y = (transpose(x) · w)_bf16 · w2`: a transpose into a scratch tensor,
    /// a matmul from it into a bf16 scratch tensor and a matmul from that,
    /// on different core counts, in one program.
    #[test]
    fn transpose_then_two_matmuls_in_one_program() {
        use crate::harness::{compare, round_to};
        use trainyard_runtime::{HostTensor, Session};
        use trainyard_sim::SimOptions;

        let chip = ChipSpec::by_name("trn2").unwrap();
        let (m, k, n, n2) = (130, 150, 200, 70);
        let mut t_args = KernelArgs::new(&[k, m], DType::Bf16);
        t_args.cores = 2;
        let m1_args = KernelArgs::new(&[m, k, n], DType::Bf16).with("out", "bf16");
        let mut m2_args = KernelArgs::new(&[m, n, n2], DType::Bf16);
        m2_args.cores = 2;

        let mut kb = KernelBuilder::new("chain", &chip);
        let x = kb.hbm_input("x", &[k, m], DType::Bf16).unwrap();
        let w = kb.hbm_input("w", &[k, n], DType::Bf16).unwrap();
        let w2 = kb.hbm_input("w2", &[n, n2], DType::Bf16).unwrap();
        let xt = kb.hbm_scratch("xt", &[m, k], DType::Bf16).unwrap();
        let h = kb.hbm_scratch("h", &[m, n], DType::Bf16).unwrap();
        let y = kb.hbm_output("y", &[m, n2], DType::F32).unwrap();
        let bind = |pairs: &[(&str, &HbmTensor)]| -> Bindings {
            pairs.iter().map(|&(name, t)| (name.to_string(), t.clone())).collect()
        };
        Transpose.emit(&mut kb, &t_args, &bind(&[("x", &x), ("y", &xt)])).unwrap();
        MatMul.emit(&mut kb, &m1_args, &bind(&[("a", &xt), ("b", &w), ("c", &h)])).unwrap();
        MatMul.emit(&mut kb, &m2_args, &bind(&[("a", &h), ("b", &w2), ("c", &y)])).unwrap();
        let program = kb.finish().unwrap();

        let mut session = Session::new(&chip, &program, SimOptions::default()).unwrap();
        for (i, (name, shape)) in [("x", [k, m]), ("w", [k, n]), ("w2", [n, n2])].into_iter().enumerate() {
            let v: Vec<f32> =
                super::super::uniform(shape[0] * shape[1], 7 + i as u64).iter().map(|&v| v as f32).collect();
            let t = HostTensor::from_f32(shape.iter().map(|&d| d as u64).collect(), DType::Bf16, &v);
            session.bind(name, &t).unwrap();
        }
        session.run().unwrap();
        let read = |name: &str| -> (Vec<usize>, Vec<f64>) {
            let t = session.output(name).unwrap();
            (t.shape.iter().map(|&d| d as usize).collect(), t.to_f32().into_iter().map(f64::from).collect())
        };

        // The composed references, each stage rounded to its stored dtype.
        let one = |name: &str, t: (Vec<usize>, Vec<f64>)| HostTensors::from([(name.to_string(), t)]);
        let xt_ref = Transpose.reference(&t_args, &one("x", read("x"))).unwrap()["y"].clone();
        let mut ins = one("a", xt_ref.clone());
        ins.insert("b".into(), read("w"));
        let (h_shape, h_exact) = MatMul.reference(&m1_args, &ins).unwrap()["c"].clone();
        let h_ref = (h_shape, round_to(DType::Bf16, &h_exact));
        let mut ins = one("a", h_ref.clone());
        ins.insert("b".into(), read("w2"));
        let y_ref = MatMul.reference(&m2_args, &ins).unwrap()["c"].clone();

        assert_eq!(read("xt"), xt_ref, "transpose is exact");
        let report = compare(&one("c", read("h")), &one("c", h_ref.clone()), MatMul.tolerance(&m1_args));
        assert!(report.passed, "h: {report:?}");
        // Device and host may round an h element to neighbouring bf16 values
        // (their f32 and f64 sums straddle a rounding boundary): a difference
        // of at most one last place, 2⁻⁷·|h|, so y may differ by
        // Σₖ 2⁻⁷·|h[i,k]|·|w2[k,j]| beyond the f32 matmul tolerance.
        let w2v = read("w2").1;
        let tol = MatMul.tolerance(&m2_args);
        let y_dev = read("y").1;
        assert_eq!(y_dev.len(), m * n2);
        for i in 0..m {
            for j in 0..n2 {
                let spread: f64 = (0..n).map(|kk| h_ref.1[i * n + kk].abs() * w2v[kk * n2 + j].abs()).sum();
                let (got, want) = (y_dev[i * n2 + j], y_ref.1[i * n2 + j]);
                let bound = spread * 2f64.powi(-7) + tol.atol + tol.rtol * want.abs();
                assert!((got - want).abs() <= bound, "y[{i},{j}] = {got}, composed reference {want} (bound {bound})");
            }
        }
        // The bound is not vacuous: most elements match to f32 accuracy.
        let close = y_dev.iter().zip(&y_ref.1).filter(|(g, w)| (*g - *w).abs() <= 1e-3 * w.abs().max(1.0)).count();
        assert!(close * 10 > 9 * y_dev.len(), "{close} of {}", y_dev.len());
    }
}
