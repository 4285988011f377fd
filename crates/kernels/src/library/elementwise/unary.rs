//! One-input activations and the fused two-input chains (`swiglu`,
//! `gelu_mul`, `add_relu`): every input is loaded once and the output stored
//! once, with the whole chain applied in SBUF in between.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, AluOp, Engine, TensorKind};

use super::common::{
    act_f64, act_fn, any_shape, bound, check_emit, finite, input, kernel_err, numel, output, partitions, sig, split,
    Allocs,
};
use super::stream::flat_map;
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::library::{standalone, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig};
use crate::view::{AsAp, View};

/// `y = f(x·scale + bias)` for any activation function, any shape.
///
/// Tiling: the tensor is one flat array (any rank; tiny last dimensions are
/// folded into the free axis), streamed in `[128, F]` blocks through a
/// three-buffer pool; one Scalar-engine activation per block computes
/// `f(x·scale + bias)` in place (scale and bias are free inside the
/// activation, HW-ACT-FUSE). The Scalar engine streams ≥ 1.2 G elements/s per
/// partition, above what the DMA delivers, so the kernel is memory bound.
pub(crate) struct Unary;

const UNARY_OPTIONS: &[(&str, &str)] = &[
    (
        "fn",
        "activation (default identity): identity, exp, log, tanh, sigmoid, relu, gelu_tanh, gelu, silu, \
         softplus, sqrt, rsqrt, reciprocal, square, abs, sign, erf",
    ),
    ("scale", "multiplier applied before fn (default 1)"),
    ("bias", "added after the scale, before fn (default 0)"),
];

/// Functions whose domain is the positive numbers: tests feed them positive inputs.
fn positive_domain(f: ActFn) -> bool {
    matches!(f, ActFn::Log | ActFn::Sqrt | ActFn::Rsqrt | ActFn::Reciprocal)
}

/// Positive values in [0.05, 2.05) from a seed.
pub(crate) fn positive_inputs(n: usize, seed: u64) -> Vec<f64> {
    crate::library::uniform(n, seed).into_iter().map(|v| v + 1.05).collect()
}

struct UnaryArgs {
    func: ActFn,
    scale: f64,
    bias: f64,
}

fn unary_args(kernel: &str, args: &KernelArgs, default: ActFn) -> Result<UnaryArgs, BuildError> {
    let func = match args.options.get("fn") {
        Some(v) => act_fn(kernel, "fn", v)?,
        None => default,
    };
    Ok(UnaryArgs { func, scale: finite(kernel, args, "scale", 1.0)?, bias: finite(kernel, args, "bias", 0.0)? })
}

/// `x` and `y`, both of the arguments' shape and dtype.
fn signature_unary(kernel: &str, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
    let shape = any_shape(kernel, args)?;
    Ok(vec![sig("x", TensorKind::Input, &shape, args.dtype), sig("y", TensorKind::Output, &shape, args.dtype)])
}

fn emit_unary(
    kernel: &dyn Kernel,
    kb: &mut KernelBuilder,
    args: &KernelArgs,
    io: &Bindings,
    u: &UnaryArgs,
) -> Result<Cost, BuildError> {
    let name = kernel.name();
    check_emit(kernel, kb, args, io)?;
    let (x, y) = (bound(name, io, "x")?, bound(name, io, "y")?);
    let n = numel(name, x.shape())?;
    let (chip, home) = (kb.chip().clone(), kb.current_core());
    let mut allocs = Allocs::default();
    // The activation's bias is a per-partition operand: one constant column per core.
    let mut bias_cols: Vec<View> = Vec::new();
    if u.bias != 0.0 {
        for core in 0..split(n, args.cores as usize, partitions(&chip)).len() {
            kb.core(core as u16)?;
            let t = allocs.sbuf(kb, &[partitions(&chip), 1], DType::F32)?;
            kb.memset(Engine::Vector, &t, u.bias)?;
            bias_cols.push(t);
        }
    }
    let (func, scale) = (u.func, u.scale as f32);
    flat_map(kb, &chip, args.cores, n, args.dtype, &[x], y, &mut |kb, core, t| {
        let t = &t[0];
        let bias = match bias_cols.get(core as usize) {
            Some(col) => Some(col.part(0..t.shape()[0])),
            None if u.bias != 0.0 => return Err(kernel_err(name, format!("no bias column on core {core}"))),
            None => None,
        };
        kb.activation(func, t, t, scale, bias.as_ref().map(|v| v as &dyn AsAp), None)?;
        Ok(t.clone())
    })?;
    allocs.free(kb)?;
    kb.core(home)?;
    let bytes = 2 * n as u64 * args.dtype.size() as u64;
    Ok(Cost { flops: n as u64, bytes_hbm: bytes, peak_dtype: None })
}

fn reference_unary(
    kernel: &str,
    u: &UnaryArgs,
    args: &KernelArgs,
    inputs: &HostTensors,
) -> Result<HostTensors, BuildError> {
    let x = input(kernel, inputs, "x")?;
    let y = x.iter().map(|&v| act_f64(u.func, v * u.scale + u.bias)).collect();
    Ok(output("y", args.shape.clone(), y))
}

impl Kernel for Unary {
    fn name(&self) -> &'static str {
        "unary"
    }
    fn family(&self) -> &'static str {
        "elementwise"
    }
    fn summary(&self) -> &'static str {
        "y = fn(x·scale + bias), any activation function (input x, output y)"
    }
    fn shape_help(&self) -> &'static str {
        "any shape d0,d1,... of x (and y)"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        UNARY_OPTIONS
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        unary_args(self.name(), args, ActFn::Identity)?;
        signature_unary(self.name(), args)
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        emit_unary(self, kb, args, io, &unary_args(self.name(), args, ActFn::Identity)?)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        reference_unary(self.name(), &unary_args(self.name(), args, ActFn::Identity)?, args, inputs)
    }
    fn input_values(&self, args: &KernelArgs, _name: &str, shape: &[usize], seed: u64) -> Option<Vec<f64>> {
        let u = unary_args(self.name(), args, ActFn::Identity).ok()?;
        (positive_domain(u.func) && u.scale == 1.0 && u.bias == 0.0)
            .then(|| positive_inputs(shape.iter().product(), seed))
    }
}

/// `y = x·sigmoid(x)` in one Scalar-engine activation per block (the `unary`
/// tiling with `fn=silu`).
pub(crate) struct Silu;

const SILU: UnaryArgs = UnaryArgs { func: ActFn::Silu, scale: 1.0, bias: 0.0 };

impl Kernel for Silu {
    fn name(&self) -> &'static str {
        "silu"
    }
    fn family(&self) -> &'static str {
        "elementwise"
    }
    fn summary(&self) -> &'static str {
        "y = x·sigmoid(x) in one activation (input x, output y)"
    }
    fn shape_help(&self) -> &'static str {
        "any shape d0,d1,... of x (and y)"
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        signature_unary(self.name(), args)
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        emit_unary(self, kb, args, io, &SILU)
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        reference_unary(self.name(), &SILU, args, inputs)
    }
}

/// Which fused two-input chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    /// silu(a)·b
    SwiGlu,
    /// gelu(a)·b
    GeluMul,
    /// relu(a + b)
    AddRelu,
}

/// A fused two-input chain: `swiglu` = silu(a)·b, `gelu_mul` = gelu(a)·b,
/// `add_relu` = relu(a + b).
///
/// Tiling: `a` and `b` stream as flat `[128, F]` blocks on two DMA queues into
/// three-buffer pools; the chain runs in place in `a`'s tile — the activation
/// on the Scalar engine and the two-input multiply or add on the Vector engine
/// (16-bit perf mode on trn2+), so both engines share the work — and the
/// result is stored once. Loads of both inputs plus the store bound it (DMA).
pub(crate) struct Fused(Chain);

const GELU_OPTIONS: &[(&str, &str)] = &[("approx", "erf (default, exact GELU) or tanh (tanh approximation)")];

impl Fused {
    pub(crate) fn swiglu() -> Fused {
        Fused(Chain::SwiGlu)
    }
    pub(crate) fn gelu_mul() -> Fused {
        Fused(Chain::GeluMul)
    }
    pub(crate) fn add_relu() -> Fused {
        Fused(Chain::AddRelu)
    }

    fn activation(&self, args: &KernelArgs) -> Result<ActFn, BuildError> {
        Ok(match self.0 {
            Chain::SwiGlu => ActFn::Silu,
            Chain::AddRelu => ActFn::Relu,
            Chain::GeluMul => match args.string("approx", "erf") {
                "erf" => ActFn::GeluErf,
                "tanh" => ActFn::GeluTanh,
                v => return Err(kernel_err(self.name(), format!("option `approx={v}`: expected erf or tanh"))),
            },
        })
    }
}

impl Kernel for Fused {
    fn name(&self) -> &'static str {
        match self.0 {
            Chain::SwiGlu => "swiglu",
            Chain::GeluMul => "gelu_mul",
            Chain::AddRelu => "add_relu",
        }
    }
    fn family(&self) -> &'static str {
        "elementwise"
    }
    fn summary(&self) -> &'static str {
        match self.0 {
            Chain::SwiGlu => "y = silu(a)·b, fused (inputs a, b; output y)",
            Chain::GeluMul => "y = gelu(a)·b, fused (inputs a, b; output y)",
            Chain::AddRelu => "y = relu(a + b), fused (inputs a, b; output y)",
        }
    }
    fn shape_help(&self) -> &'static str {
        "any shape d0,d1,... of a, b and y"
    }
    fn options_help(&self) -> &'static [(&'static str, &'static str)] {
        if self.0 == Chain::GeluMul {
            GELU_OPTIONS
        } else {
            &[]
        }
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![1024, 1024]
    }
    fn signature(&self, _chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        self.activation(args)?;
        let shape = any_shape(self.name(), args)?;
        Ok(vec![
            sig("a", TensorKind::Input, &shape, args.dtype),
            sig("b", TensorKind::Input, &shape, args.dtype),
            sig("y", TensorKind::Output, &shape, args.dtype),
        ])
    }
    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        check_emit(self, kb, args, io)?;
        let func = self.activation(args)?;
        let name = self.name();
        let (a, b, y) = (bound(name, io, "a")?, bound(name, io, "b")?, bound(name, io, "y")?);
        let n = numel(name, a.shape())?;
        let (chip, home) = (kb.chip().clone(), kb.current_core());
        let chain = self.0;
        flat_map(kb, &chip, args.cores, n, args.dtype, &[a, b], y, &mut |kb, _core, t| {
            let (ta, tb) = (&t[0], &t[1]);
            if chain == Chain::AddRelu {
                kb.tensor_tensor(Engine::Vector, AluOp::Add, ta, ta, tb)?;
                kb.activation(func, ta, ta, 1.0, None, None)?;
            } else {
                kb.activation(func, ta, ta, 1.0, None, None)?;
                kb.tensor_tensor(Engine::Vector, AluOp::Mul, ta, ta, tb)?;
            }
            Ok(ta.clone())
        })?;
        kb.core(home)?;
        let bytes = 3 * n as u64 * args.dtype.size() as u64;
        Ok(Cost { flops: 2 * n as u64, bytes_hbm: bytes, peak_dtype: None })
    }
    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        standalone(self, chip, args)
    }
    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let func = self.activation(args)?;
        let a = input(self.name(), inputs, "a")?;
        let b = input(self.name(), inputs, "b")?;
        // The intermediate is stored in the data dtype between the two engines.
        let round = |v: f64| args.dtype.round(v as f32) as f64;
        let y = a
            .iter()
            .zip(b)
            .map(|(&a, &b)| match self.0 {
                Chain::AddRelu => act_f64(func, round(a + b)),
                _ => round(act_f64(func, a)) * b,
            })
            .collect();
        Ok(output("y", args.shape.clone(), y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_kernel;
    use crate::library::elementwise::tests::{check, chips};
    use proptest::prelude::*;

    #[test]
    fn every_function_matches_the_reference() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for f in ActFn::ALL {
            let args = KernelArgs::new(&[3, 100], DType::F32).with("fn", f.name());
            check(&Unary, &chip, &args);
        }
        let args = KernelArgs::new(&[129, 3], DType::Bf16).with("fn", "tanh").with("scale", "2.5").with("bias", "-0.5");
        check(&Unary, &chip, &args);
    }

    #[test]
    fn odd_shapes_and_dtypes() {
        for chip in chips() {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                for shape in [&[1usize, 1][..], &[3, 1000], &[129, 257], &[200, 3], &[7], &[2, 3, 5, 7]] {
                    check(&Silu, &chip, &KernelArgs::new(shape, dtype));
                    check(&Fused::swiglu(), &chip, &KernelArgs::new(shape, dtype));
                }
            }
        }
    }

    #[test]
    fn fused_chains_and_cores() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        for k in [Fused::swiglu(), Fused::gelu_mul(), Fused::add_relu()] {
            for dtype in [DType::F32, DType::Bf16, DType::F16] {
                let mut args = KernelArgs::new(&[300, 129], dtype);
                args.cores = 2;
                check(&k, &chip, &args);
            }
        }
        check(&Fused::gelu_mul(), &chip, &KernelArgs::new(&[64, 64], DType::F32).with("approx", "tanh"));
        let mut args = KernelArgs::new(&[5, 1000], DType::Bf16).with("fn", "exp").with("bias", "0.25");
        args.cores = 2;
        let run = check(&Unary, &chip, &args);
        let cores: std::collections::BTreeSet<u16> = run.built.program.insts.iter().map(|i| i.core).collect();
        assert_eq!(cores.len(), 2);
    }

    #[test]
    fn each_input_is_loaded_once_and_the_output_stored_once() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let run = check(&Fused::swiglu(), &chip, &KernelArgs::new(&[256, 1000], DType::Bf16));
        let moved: u64 = run
            .built
            .program
            .insts
            .iter()
            .filter_map(|i| match &i.op {
                trainyard_isa::Op::DmaCopy { dst, .. } => Some(dst.bytes()),
                _ => None,
            })
            .sum();
        assert_eq!(moved, run.built.bytes_hbm);
    }

    #[test]
    fn argument_errors() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let bad = [
            KernelArgs::new(&[4, 4], DType::F32).with("fn", "frobnicate"),
            KernelArgs::new(&[4, 4], DType::F32).with("scale", "x"),
            KernelArgs::new(&[4, 4], DType::F32).with("bias", "inf"),
            KernelArgs::new(&[4, 0], DType::F32),
            KernelArgs::new(&[], DType::F32),
            KernelArgs::new(&[4, 4], DType::I32),
            KernelArgs::new(&[4, 4], DType::F32).with("nope", "1"),
        ];
        for args in bad {
            let e = run_kernel(&Unary, &chip, &args, Default::default(), 0).err().expect("must fail");
            assert!(e.to_string().contains("unary"), "{e}");
        }
        let args = KernelArgs::new(&[4], DType::F32).with("approx", "x");
        let e = crate::library::build(&Fused::gelu_mul(), &chip, &args).unwrap_err();
        assert!(e.to_string().contains("approx"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes(d0 in 1usize..300, d1 in 1usize..300, f in 0usize..17, dt in 0usize..3) {
            let chip = ChipSpec::by_name("trn2").unwrap();
            let dtype = [DType::F32, DType::Bf16, DType::F16][dt];
            let func = ActFn::ALL[f % ActFn::ALL.len()];
            check(&Unary, &chip, &KernelArgs::new(&[d0, d1], dtype).with("fn", func.name()));
        }
    }
}
