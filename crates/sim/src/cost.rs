//! Cost rules: how long each instruction occupies its engine.
//!
//! Every rule is a small function of the instruction's shapes and the
//! [`ChipSpec`], citing the public fact it models (ids in `shared/hw/`).
//! Costs are initiation intervals (time until the engine can issue its next
//! instruction), as in AWS's own cost model (cost-model.md preamble). No rule
//! looks at values, so functional and timed-only runs give the same cycles.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{Ap, Engine, Op, Space};

/// Engine-cycle cost of a compute instruction, before dependency penalties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineCost {
    /// Engine that runs it.
    pub engine: Engine,
    /// Cycles of that engine's clock.
    pub cycles: u64,
}

/// Clock of an engine in GHz (HW-CLK-V2/V3/V4).
pub fn clock_ghz(chip: &ChipSpec, engine: Engine) -> f64 {
    let c = &chip.core.clocks;
    match engine {
        Engine::Tensor => c.tensor_ghz,
        Engine::Vector => c.vector_ghz,
        Engine::Scalar => c.scalar_ghz,
        Engine::GpSimd => c.gpsimd_ghz,
    }
}

/// Converts engine cycles to picoseconds (rounded up).
pub fn cycles_to_ps(chip: &ChipSpec, engine: Engine, cycles: u64) -> u64 {
    (cycles as f64 * 1000.0 / clock_ghz(chip, engine)).ceil() as u64
}

/// MultiplyMoving cycles: `max(N_moving, MM_INIT_LATENCY)`, ×4 for FP32
/// inputs, ÷2 for fp8 inputs where double-row fp8 exists.
/// hw: HW-PE-MM-II, HW-PE-MM-AVG, HW-PE-FP32, HW-PE-FP8X2-V3, HW-DEF-PE.
pub fn matmul_mm_cycles(chip: &ChipSpec, stationary: &Ap, moving: &Ap) -> u64 {
    let t = &chip.core.tensor;
    let n = moving.free_size();
    let base = n.max(t.mm_init_cycles as u64);
    if stationary.dtype == DType::F32 || moving.dtype == DType::F32 {
        base * t.fp32_factor as u64
    } else if stationary.dtype.is_fp8() && moving.dtype.is_fp8() {
        base.div_ceil(t.fp8_speedup as u64)
    } else {
        base
    }
}

/// LoadStationary cycles: `ceil(N_stationary / 4)` (fast LS).
/// hw: HW-PE-FASTLS, HW-DEF-PE.
pub fn matmul_ls_cycles(chip: &ChipSpec, stationary: &Ap) -> u64 {
    stationary.free_size().div_ceil(chip.core.tensor.ls_divisor as u64)
}

/// Matmul occupancy: LS runs in the background of the previous MM, so a
/// matmul costs `max(MM, LS)`, or just MM when the stationary is already
/// loaded (same operand as the previous matmul). hw: HW-PE-BGLS, HW-DEF-PE.
pub fn matmul_cycles(chip: &ChipSpec, stationary: &Ap, moving: &Ap, stationary_loaded: bool) -> u64 {
    let mm = matmul_mm_cycles(chip, stationary, moving);
    if stationary_loaded {
        mm
    } else {
        mm.max(matmul_ls_cycles(chip, stationary))
    }
}

/// Tensor-engine transpose: `max(P, min(64, F))` cycles. hw: HW-PE-T-COST.
pub fn pe_transpose_cycles(src: &Ap) -> u64 {
    (src.partitions as u64).max(src.free_size().min(64))
}

/// True when a 16-bit operand pattern qualifies for VectorE perf mode.
fn is_16bit(ap: &Ap) -> bool {
    matches!(ap.dtype, DType::Bf16 | DType::F16)
}

/// Streaming factor for strided SRAM access: ×2 when the innermost stride of
/// any operand exceeds 16 bytes. hw: HW-SRAM-STRIDE.
fn stride_factor(chip: &ChipSpec, aps: &[&Ap]) -> u64 {
    let limit = chip.core.elementwise.stride_penalty_bytes as i64;
    if aps.iter().any(|a| a.free_dims().last().is_some_and(|d| d.size > 1) && a.inner_stride_bytes().abs() > limit) {
        2
    } else {
        1
    }
}

/// `max(MIN_II, streaming)` with the GpSimd start-up added on GpSimd.
/// hw: HW-VE-MINII, HW-DEF-VE, HW-POOL-COST.
fn elementwise(chip: &ChipSpec, engine: Engine, streaming: u64) -> u64 {
    let e = &chip.core.elementwise;
    let c = streaming.max(e.min_ii_cycles as u64);
    if engine == Engine::GpSimd {
        c + e.gpsimd_start_cycles as u64
    } else {
        c
    }
}

/// Perf-mode speedup of a one-input Vector/Scalar instruction.
/// hw: HW-VE-PERF-V3 (Vector 4× all-SBUF, 16-bit, contiguous; 2× when one of
/// those holds), HW-ACT-PERF-V4 (Scalar 2× for 16-bit on v4).
fn one_input_speedup(chip: &ChipSpec, engine: Engine, dst: &Ap, src: &Ap) -> u64 {
    let e = &chip.core.elementwise;
    if !(is_16bit(dst) && is_16bit(src)) {
        return 1;
    }
    match engine {
        Engine::Vector => {
            let all_sbuf = dst.space == Space::Sbuf && src.space == Space::Sbuf;
            let contiguous = dst.inner_contiguous() && src.inner_contiguous();
            match (all_sbuf, contiguous) {
                (true, true) => e.vector_perf_16bit as u64,
                (true, false) | (false, true) => (e.vector_perf_16bit as u64).min(2),
                _ => 1,
            }
        }
        Engine::Scalar => e.scalar_perf_16bit as u64,
        _ => 1,
    }
}

/// Cost of a compute instruction in engine cycles; `None` for DMA.
///
/// `stationary_loaded` tells whether a matmul reuses the stationary operand
/// of the previous Tensor-engine instruction.
pub fn engine_cost(chip: &ChipSpec, op: &Op, stationary_loaded: bool) -> Option<EngineCost> {
    let e = &chip.core.elementwise;
    let (engine, cycles) = match op {
        Op::MatMul { stationary, moving, .. } => {
            (Engine::Tensor, matmul_cycles(chip, stationary, moving, stationary_loaded))
        }
        Op::Transpose { engine: Engine::Tensor, src, .. } => (Engine::Tensor, pe_transpose_cycles(src)),
        // hw: HW-COST-TRANSPOSE (VectorE max(MIN_II, N)).
        Op::Transpose { engine, src, dst } => {
            (*engine, elementwise(chip, *engine, src.free_size() * stride_factor(chip, &[src, dst])))
        }
        // hw: HW-COST-TTENSOR, HW-VE-N: two inputs ≈ 2N, but N when one input is
        // in PSUM and the other in SBUF, or when both are in SBUF, everything is
        // BF16, the op is add/mul/sub and access is contiguous. HW-VE-PERF-V3:
        // a further 2× on v3+ with both inputs in SBUF and all tensors 16-bit.
        Op::TensorTensor { engine, op, dst, in0, in1 } => {
            let n = dst.free_size();
            let split = (in0.space == Space::Psum) != (in1.space == Space::Psum);
            let both_sbuf = in0.space == Space::Sbuf && in1.space == Space::Sbuf;
            let all_bf16 = [dst, in0, in1].iter().all(|a| a.dtype == DType::Bf16);
            let contiguous = [dst, in0, in1].iter().all(|a| a.inner_contiguous());
            let simple =
                matches!(op, trainyard_isa::AluOp::Add | trainyard_isa::AluOp::Mul | trainyard_isa::AluOp::Sub);
            let k = if split || (both_sbuf && all_bf16 && simple && contiguous) { 1 } else { 2 };
            let fast16 = both_sbuf && is_16bit(dst) && is_16bit(in0) && is_16bit(in1);
            let speedup = if *engine == Engine::Vector && fast16 { e.vector_tt_16bit as u64 } else { 1 };
            (*engine, elementwise(chip, *engine, (k * n * stride_factor(chip, &[dst, in0, in1])).div_ceil(speedup)))
        }
        // hw: HW-COST-TSCALAR (1 or 2 ops cost the same), HW-VE-PERF-V3.
        Op::TensorScalar { engine, dst, src, .. } | Op::Copy { engine, dst, src } => {
            let n = dst.free_size() * stride_factor(chip, &[dst, src]);
            (*engine, elementwise(chip, *engine, n.div_ceil(one_input_speedup(chip, *engine, dst, src))))
        }
        // hw: HW-COST-TREDUCE (N/2 for BF16 in and out with add/max, else N).
        Op::TensorReduce { engine, op, dst, src, .. } => {
            let n = src.free_size() * stride_factor(chip, &[src]);
            let half = dst.dtype == DType::Bf16
                && src.dtype == DType::Bf16
                && matches!(op, trainyard_isa::AluOp::Add | trainyard_isa::AluOp::Max);
            (*engine, elementwise(chip, *engine, if half { n.div_ceil(2) } else { n }))
        }
        // hw: HW-COST-ACTIVATION max(MIN_II, N); HW-ACT-FUSE (scale and bias
        // are free); HW-COST-ACT-REDUCE / HW-ACT-ACCREAD (+ read-out with acc);
        // HW-ACT-PERF-V4 (16-bit speedup on v4).
        Op::Activation { dst, src, acc, .. } => {
            let n = src.free_size() * stride_factor(chip, &[dst, src]);
            let speedup = one_input_speedup(chip, Engine::Scalar, dst, src);
            let read_out = if acc.is_some() { e.act_read_acc_cycles as u64 } else { 0 };
            (Engine::Scalar, elementwise(chip, Engine::Scalar, n.div_ceil(speedup)) + read_out)
        }
        // hw: HW-COST-PRED (assumption: select reads like a predicated copy,
        // 2N with both data operands in SBUF, N when split SBUF/PSUM).
        Op::Select { engine, dst, on_true, on_false, pred } => {
            let split = (on_true.space == Space::Psum) != (pred.space == Space::Psum);
            let k = if split { 1 } else { 2 };
            (*engine, elementwise(chip, *engine, k * dst.free_size() * stride_factor(chip, &[dst, on_true, on_false])))
        }
        // hw: HW-COST-IOTA (150 + N GpSimd cycles; the 150 is GPSIMD_START).
        Op::Iota { dst, .. } => (Engine::GpSimd, e.gpsimd_start_cycles as u64 + dst.free_size()),
        // hw: HW-COST-MISC-VE (memset N/2 for zero into BF16/FP16, else N).
        Op::Memset { engine, dst, value } => {
            let n = dst.free_size();
            let n = if *value == 0.0 && is_16bit(dst) { n.div_ceil(2) } else { n };
            (*engine, elementwise(chip, *engine, n))
        }
        // Assumption (HW-POOL-COST gives no rule): cross-partition GpSimd work
        // streams each of the P source rows through the 8 processors × 16
        // partitions, so 2 reads per output element (like a two-input op).
        Op::PartitionReduce { src, .. } => (Engine::GpSimd, elementwise(chip, Engine::GpSimd, 2 * src.free_size())),
        Op::PartitionBroadcast { dst, .. } | Op::PartitionShuffle { dst, .. } => {
            (Engine::GpSimd, elementwise(chip, Engine::GpSimd, dst.free_size()))
        }
        Op::DmaCopy { .. } | Op::DmaGather { .. } => return None,
    };
    Some(EngineCost { engine, cycles })
}

/// Cycles added when an instruction depends on the previous instruction of
/// the same Vector/Scalar/GpSimd engine (RAW through SRAM).
/// hw: HW-DEF-DEP (fitted to HW-ACT-DEP-MEAS), HW-SYNC-PIPE, HW-VE-OVH.
pub fn same_engine_dep_cycles(chip: &ChipSpec, engine: Engine) -> u64 {
    match engine {
        Engine::Tensor => 0,
        _ => chip.core.elementwise.dep_penalty_cycles as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_isa::{ActFn, AluOp, Operand};

    fn chip(name: &str) -> ChipSpec {
        ChipSpec::by_name(name).unwrap()
    }

    #[test]
    fn matmul_stream_reaches_v2_peak() {
        // HW-DEF-CHECK / HW-PE-EXAMPLE: 128×128 stationary, 128×512 moving BF16 on
        // v2 → 512 cycles at 2.8 GHz = 183 ns for 2·128·128·512 FLOP ≈ 91.6 TFLOPS.
        let c = chip("trn1");
        let st = Ap::sbuf(0, 128, 0, &[128], DType::Bf16);
        let mv = Ap::sbuf(0, 128, 4096, &[512], DType::Bf16);
        assert_eq!(matmul_cycles(&c, &st, &mv, false), 512);
        let ps = cycles_to_ps(&c, Engine::Tensor, 512);
        assert_eq!(ps, 182858);
        let tflops = 2.0 * 128.0 * 128.0 * 512.0 / (ps as f64 * 1e-12) / 1e12;
        assert!((tflops - 91.75).abs() < 0.1, "{tflops}");
    }

    #[test]
    fn matvec_costs_match_the_perf_guide() {
        // HW-PE-MATVEC: vector as moving → ~64 cycles; vector as stationary → ~128.
        let c = chip("trn1");
        let matrix = Ap::sbuf(0, 128, 0, &[128], DType::Bf16);
        let vector = Ap::sbuf(0, 128, 512, &[1], DType::Bf16);
        assert_eq!(matmul_cycles(&c, &matrix, &vector, false), 64);
        assert_eq!(matmul_cycles(&c, &vector, &matrix, false), 128);
    }

    #[test]
    fn fp32_and_fp8_matmul_rates() {
        let (t1, t2) = (chip("trn1"), chip("trn2"));
        let st = Ap::sbuf(0, 128, 0, &[128], DType::F32);
        let mv = Ap::sbuf(0, 128, 4096, &[512], DType::F32);
        assert_eq!(matmul_mm_cycles(&t1, &st, &mv), 2048); // HW-PE-FP32 ×4
        let st8 = st.with_dtype(DType::F8E4M3);
        let mv8 = mv.with_dtype(DType::F8E5M2);
        assert_eq!(matmul_mm_cycles(&t1, &st8, &mv8), 512); // cFP8 at BF16 rate on v2
        assert_eq!(matmul_mm_cycles(&t2, &st8, &mv8), 256); // double-row on v3
    }

    #[test]
    fn vector_and_scalar_rules() {
        let c = chip("trn1");
        let a = Ap::sbuf(0, 128, 0, &[1024], DType::F32);
        let b = Ap::sbuf(0, 128, 8192, &[1024], DType::F32);
        let tt = Op::TensorTensor { engine: Engine::Vector, op: AluOp::Add, dst: a, in0: a, in1: b };
        assert_eq!(engine_cost(&c, &tt, false).unwrap().cycles, 2048); // HW-VE-N: 2N
        let p = Ap::psum(0, 128, 0, &[1024], DType::F32);
        let tt_split = Op::TensorTensor { engine: Engine::Vector, op: AluOp::Add, dst: a, in0: p, in1: b };
        assert_eq!(engine_cost(&c, &tt_split, false).unwrap().cycles, 1024); // HW-COST-TTENSOR split
        let small = Ap::sbuf(0, 128, 0, &[8], DType::F32);
        let act = Op::Activation {
            func: ActFn::Exp,
            dst: small,
            src: small,
            scale: Operand::Imm(1.0),
            bias: None,
            acc: None,
        };
        assert_eq!(engine_cost(&c, &act, false).unwrap().cycles, 64); // MIN_II
        let acc = Ap::sbuf(0, 128, 64, &[1], DType::F32);
        let act_acc =
            Op::Activation { func: ActFn::Exp, dst: a, src: a, scale: Operand::Imm(1.0), bias: None, acc: Some(acc) };
        assert_eq!(engine_cost(&c, &act_acc, false).unwrap().cycles, 1024 + 64);
        let iota = Op::Iota {
            dst: Ap::sbuf(0, 128, 0, &[100], DType::I32),
            base: 0,
            channel_multiplier: 1,
            steps: [1, 0, 0, 0],
        };
        assert_eq!(engine_cost(&c, &iota, false).unwrap().cycles, 250); // HW-COST-IOTA
    }

    #[test]
    fn perf_mode_and_stride_penalty() {
        let t2 = chip("trn2");
        let a = Ap::sbuf(0, 128, 0, &[2048], DType::Bf16);
        let b = Ap::sbuf(0, 128, 8192, &[2048], DType::Bf16);
        let copy = Op::Copy { engine: Engine::Vector, dst: a, src: b };
        assert_eq!(engine_cost(&t2, &copy, false).unwrap().cycles, 512); // HW-VE-PERF-V3 4×
        let strided = Ap::new(Space::Sbuf, 0, 128, 0, 0, &[trainyard_isa::Dim { stride: 16, size: 2048 }], DType::F32);
        let c2 = Op::Copy { engine: Engine::Vector, dst: Ap::sbuf(0, 128, 0, &[2048], DType::F32), src: strided };
        assert_eq!(engine_cost(&t2, &c2, false).unwrap().cycles, 4096); // HW-SRAM-STRIDE ×2
    }
}
