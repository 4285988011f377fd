//! Proptest strategies for arbitrary programs, shared by the crate's tests.

#[allow(unused_imports)]
use std::str::FromStr;

#[allow(unused_imports)]
use trainyard_arch::DType;

#[allow(unused_imports)]
use crate::ap::{Ap, Dim, Space, MAX_FREE_DIMS};
#[allow(unused_imports)]
use crate::inst::{Inst, InstId, Op, Operand, ScalarStage};
#[allow(unused_imports)]
use crate::ops::{ActFn, AluOp, Engine};
#[allow(unused_imports)]
use crate::program::{Program, TensorDecl, TensorKind, PROGRAM_VERSION};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

use super::*;

/// Any dtype.
pub(crate) fn dtype() -> impl Strategy<Value = DType> {
    select(DType::ALL.to_vec())
}

/// Any compute engine.
pub(crate) fn engine() -> impl Strategy<Value = Engine> {
    select(Engine::ALL.to_vec())
}

/// Any ALU operator.
pub(crate) fn alu_op() -> impl Strategy<Value = AluOp> {
    select(AluOp::ALL.to_vec())
}

/// Any activation function.
pub(crate) fn act_fn() -> impl Strategy<Value = ActFn> {
    select(ActFn::ALL.to_vec())
}

fn small_or_any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..=130, 1 => any::<u32>()]
}

fn small_or_any_i64() -> impl Strategy<Value = i64> {
    prop_oneof![3 => -4i64..=1024, 1 => any::<i64>()]
}

/// Any access pattern built by [`Ap::new`] (unused dims zeroed), over the
/// full range of every field; strides are often the row-major default.
pub(crate) fn ap() -> impl Strategy<Value = Ap> {
    let space = select(vec![Space::Sbuf, Space::Psum, Space::Hbm]);
    let dims = vec((small_or_any_u32(), prop::option::weighted(0.3, small_or_any_i64())), 1..=MAX_FREE_DIMS);
    let offset = prop_oneof![Just(0u64), 0u64..1 << 20, any::<u64>()];
    (
        space,
        small_or_any_u32(),
        small_or_any_u32(),
        prop::option::weighted(0.3, small_or_any_i64()),
        offset,
        dims,
        dtype(),
    )
        .prop_map(|(space, start, partitions, pstride, offset, dims, dtype)| {
            let defaults = default_strides(dims.iter().map(|d| d.0));
            let dims: Vec<Dim> = dims
                .iter()
                .zip(defaults)
                .map(|(&(size, stride), default)| Dim { size, stride: stride.or(default).unwrap_or(-7) })
                .collect();
            let default_ps = default_partition_stride(space, dims.iter().map(|d| d.size)).unwrap_or(3);
            Ap::new(space, start, partitions, pstride.unwrap_or(default_ps), offset, &dims, dtype)
        })
}

/// Any f32 (all bit patterns, plus the special values), NaNs only if `nan`.
pub(crate) fn f32_value(nan: bool) -> impl Strategy<Value = f32> {
    let specials = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        0.1,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(0x7f_ffff),
        f32::MAX,
        f32::MIN,
        f32::NAN,
        f32::from_bits(0xffc0_0001),
    ];
    prop_oneof![any::<u32>().prop_map(f32::from_bits), select(specials)]
        .prop_filter("no NaN wanted", move |x| nan || !x.is_nan())
}

/// Any f64 (all bit patterns, plus the special values), NaNs only if `nan`.
pub(crate) fn f64_value(nan: bool) -> impl Strategy<Value = f64> {
    let specials = vec![0.0, -0.0, 1.5, f64::INFINITY, f64::NEG_INFINITY, f64::from_bits(1), f64::NAN, -f64::NAN];
    prop_oneof![any::<u64>().prop_map(f64::from_bits), select(specials)]
        .prop_filter("no NaN wanted", move |x| nan || !x.is_nan())
}

/// An immediate or a per-partition operand.
pub(crate) fn operand(nan: bool) -> impl Strategy<Value = Operand> {
    prop_oneof![f32_value(nan).prop_map(Operand::Imm), ap().prop_map(Operand::PerPartition)]
}

fn stage(nan: bool) -> impl Strategy<Value = ScalarStage> {
    (alu_op(), operand(nan), any::<bool>()).prop_map(|(op, operand, reverse)| ScalarStage { op, operand, reverse })
}

/// Any operation (every variant, every field).
pub(crate) fn op(nan: bool) -> impl Strategy<Value = Op> {
    Union::new(vec![
        (ap(), ap(), ap(), any::<bool>(), any::<bool>())
            .prop_map(|(dst, stationary, moving, start, stop)| Op::MatMul { dst, stationary, moving, start, stop })
            .boxed(),
        (engine(), ap(), ap()).prop_map(|(engine, dst, src)| Op::Transpose { engine, dst, src }).boxed(),
        (engine(), alu_op(), ap(), ap(), ap())
            .prop_map(|(engine, op, dst, in0, in1)| Op::TensorTensor { engine, op, dst, in0, in1 })
            .boxed(),
        (engine(), ap(), ap(), stage(nan), prop::option::of(stage(nan)))
            .prop_map(|(engine, dst, src, first, second)| Op::TensorScalar { engine, dst, src, first, second })
            .boxed(),
        (engine(), alu_op(), ap(), ap(), any::<u8>(), any::<bool>())
            .prop_map(|(engine, op, dst, src, axes, negate)| Op::TensorReduce { engine, op, dst, src, axes, negate })
            .boxed(),
        (act_fn(), ap(), ap(), operand(nan), prop::option::of(ap()), prop::option::of(ap()))
            .prop_map(|(func, dst, src, scale, bias, acc)| Op::Activation { func, dst, src, scale, bias, acc })
            .boxed(),
        (engine(), ap(), ap()).prop_map(|(engine, dst, src)| Op::Copy { engine, dst, src }).boxed(),
        (engine(), ap(), ap(), ap(), ap())
            .prop_map(|(engine, dst, pred, on_true, on_false)| Op::Select { engine, dst, pred, on_true, on_false })
            .boxed(),
        (ap(), any::<i32>(), any::<i32>(), prop_oneof![any::<[i32; 4]>(), (-3i32..3).prop_map(|s| [s, 0, 0, 0])])
            .prop_map(|(dst, base, channel_multiplier, steps)| Op::Iota { dst, base, channel_multiplier, steps })
            .boxed(),
        (engine(), ap(), f64_value(nan)).prop_map(|(engine, dst, value)| Op::Memset { engine, dst, value }).boxed(),
        (alu_op(), ap(), ap()).prop_map(|(op, dst, src)| Op::PartitionReduce { op, dst, src }).boxed(),
        (ap(), ap()).prop_map(|(dst, src)| Op::PartitionBroadcast { dst, src }).boxed(),
        (ap(), ap(), vec(any::<u8>(), 0..6))
            .prop_map(|(dst, src, perm)| Op::PartitionShuffle { dst, src, perm })
            .boxed(),
        (any::<u8>(), ap(), ap()).prop_map(|(queue, dst, src)| Op::DmaCopy { queue, dst, src }).boxed(),
        (any::<u8>(), ap(), ap(), ap())
            .prop_map(|(queue, dst, table, index)| Op::DmaGather { queue, dst, table, index })
            .boxed(),
    ])
}

/// Any instruction: an operation, a core and dependencies.
pub(crate) fn inst(nan: bool) -> impl Strategy<Value = Inst> {
    let core = prop_oneof![Just(0u16), any::<u16>()];
    let deps = vec(prop_oneof![0u32..16, any::<u32>()].prop_map(InstId), 0..4);
    (op(nan), core, deps).prop_map(|(op, core, deps)| Inst { op, core, deps })
}

/// Any name: identifiers, strings with characters that need quoting, any unicode.
pub(crate) fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_./-]{0,12}",
        "[ a-z\"\\\\;#%=\\[\\]\n\r\t\u{0}\u{7f}\u{85}\u{2028}é]{0,10}",
        any::<String>(),
    ]
}

/// Any tensor declaration.
pub(crate) fn tensor() -> impl Strategy<Value = TensorDecl> {
    let kind = select(vec![TensorKind::Input, TensorKind::Output, TensorKind::Scratch]);
    (name(), kind, dtype(), vec(prop_oneof![0u64..1024, any::<u64>()], 0..4), any::<u64>())
        .prop_map(|(name, kind, dtype, shape, offset)| TensorDecl { name, kind, dtype, shape, offset })
}

/// Any program of up to 4 tensors and 8 instructions; NaN immediates only if `nan`.
pub(crate) fn program(nan: bool) -> impl Strategy<Value = Program> {
    (name(), vec(tensor(), 0..4), vec(inst(nan), 0..8)).prop_map(|(name, tensors, insts)| Program {
        name,
        tensors,
        insts,
    })
}
