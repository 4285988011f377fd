//! Small hand-built programs shared by the tests.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{AluOp, Ap, Engine, Inst, Op, Operand, Program, ScalarStage, TensorDecl, TensorKind};

pub(crate) fn chip() -> ChipSpec {
    ChipSpec::by_name("trn2").unwrap()
}

fn decl(name: &str, kind: TensorKind, dtype: DType, shape: &[u64], offset: u64) -> TensorDecl {
    TensorDecl { name: name.into(), kind, dtype, shape: shape.to_vec(), offset }
}

/// `y = x · 2 + 1` (f32) and `z = bf16(y)`: DMA in on q0, `tensor_scalar` on
/// the Vector engine, DMA out on q1 and q2.
pub(crate) fn affine() -> Program {
    let mut p = Program::new("affine");
    p.tensors.push(decl("x", TensorKind::Input, DType::F32, &[4, 8], 0));
    p.tensors.push(decl("y", TensorKind::Output, DType::F32, &[4, 8], 128));
    p.tensors.push(decl("z", TensorKind::Output, DType::Bf16, &[4, 8], 256));
    let load = p.push(Inst::new(Op::DmaCopy {
        queue: 0,
        dst: Ap::sbuf(0, 4, 0, &[8], DType::F32),
        src: Ap::hbm(0, 4, &[8], DType::F32),
    }));
    let mut ts = Inst::new(Op::TensorScalar {
        engine: Engine::Vector,
        dst: Ap::sbuf(0, 4, 64, &[8], DType::F32),
        src: Ap::sbuf(0, 4, 0, &[8], DType::F32),
        first: ScalarStage { op: AluOp::Mul, operand: Operand::Imm(2.0), reverse: false },
        second: Some(ScalarStage { op: AluOp::Add, operand: Operand::Imm(1.0), reverse: false }),
    });
    ts.deps.push(load);
    let ts = p.push(ts);
    for (queue, offset, dtype) in [(1u8, 128u64, DType::F32), (2, 256, DType::Bf16)] {
        let mut store = Inst::new(Op::DmaCopy {
            queue,
            dst: Ap::hbm(offset, 4, &[8], dtype),
            src: Ap::sbuf(0, 4, 64, &[8], DType::F32),
        });
        store.deps.push(ts);
        p.push(store);
    }
    p
}

/// `out = idx` (i16 [2, 4]) through SBUF, plus an unused bf16 input `w` [2, 2].
pub(crate) fn int_copy() -> Program {
    let mut p = Program::new("ints");
    p.tensors.push(decl("idx", TensorKind::Input, DType::I16, &[2, 4], 0));
    p.tensors.push(decl("out", TensorKind::Output, DType::I16, &[2, 4], 64));
    p.tensors.push(decl("w", TensorKind::Input, DType::Bf16, &[2, 2], 128));
    p.tensors.push(decl("tmp", TensorKind::Scratch, DType::F32, &[4], 192));
    let load = p.push(Inst::new(Op::DmaCopy {
        queue: 0,
        dst: Ap::sbuf(0, 2, 0, &[4], DType::I16),
        src: Ap::hbm(0, 2, &[4], DType::I16),
    }));
    let mut store = Inst::new(Op::DmaCopy {
        queue: 1,
        dst: Ap::hbm(64, 2, &[4], DType::I16),
        src: Ap::sbuf(0, 2, 0, &[4], DType::I16),
    });
    store.deps.push(load);
    p.push(store);
    p
}

/// A fresh, empty temporary directory for one test.
pub(crate) fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("trainyard-rt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
