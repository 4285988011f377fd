//! Functional semantics of every instruction: the reference definition of
//! what each one computes (NKI ISA semantics, `shared/hw/isa.md`). Values are
//! computed in f32 and rounded to the destination dtype on every store.

use trainyard_isa::{ActFn, AluOp, Ap, Engine, InstId, Op, Operand, ScalarStage};

use crate::mem::{Memory, Rounder};
use crate::SimError;

/// Memory plus scratch buffers reused across instructions.
pub(crate) struct Executor {
    pub mem: Memory,
    pub rounder: Rounder,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    bits_a: Vec<u32>,
    bits_b: Vec<u32>,
    bytes: Vec<u8>,
}

fn is_int(ap: &Ap) -> bool {
    ap.dtype.is_int()
}

impl Executor {
    pub fn new(mem: Memory, rounder: Rounder) -> Self {
        Executor {
            mem,
            rounder,
            a: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
            bits_a: Vec::new(),
            bits_b: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// Executes one instruction on `core`.
    pub fn exec(&mut self, id: InstId, core: usize, op: &Op) -> Result<(), SimError> {
        for (name, ap, _) in op.operands() {
            self.mem.in_bounds(core, ap).map_err(|message| SimError::OutOfBounds {
                inst: id,
                mnemonic: op.mnemonic(),
                operand: name,
                message,
            })?;
        }
        match op {
            Op::MatMul { dst, stationary, moving, start, .. } => self.matmul(core, dst, stationary, moving, *start),
            // Equal dtypes move raw bits: an f32 round trip would round 32-bit integers.
            Op::Transpose { dst, src, .. } if dst.dtype == src.dtype => {
                self.mem.read_bits(core, src, &mut self.bits_a);
                let (p, f) = (src.partitions as usize, src.free_size() as usize);
                self.bits_b.clear();
                self.bits_b
                    .extend((0..f).flat_map(|j| (0..p).map(move |i| (i, j))).map(|(i, j)| self.bits_a[i * f + j]));
                self.mem.write_bits(core, dst, &self.bits_b);
            }
            Op::Transpose { dst, src, .. } => {
                self.mem.read_f32(core, src, &mut self.a);
                let (p, f) = (src.partitions as usize, src.free_size() as usize);
                self.c.clear();
                self.c.extend((0..f).flat_map(|j| (0..p).map(move |i| (i, j))).map(|(i, j)| self.a[i * f + j]));
                self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
            }
            Op::TensorTensor { engine, op, dst, in0, in1 } => self.tensor_tensor(core, *engine, *op, dst, in0, in1),
            // Bitvec stages act on raw integer bits, as in tensor_tensor (HW-DT-MATH).
            Op::TensorScalar { dst, src, first, second, .. }
                if first.op.is_bitwise() || second.is_some_and(|s| s.op.is_bitwise()) =>
            {
                let s0 = self.scalar_bits(core, &first.operand, src.partitions);
                let s1 = second.as_ref().map(|s| self.scalar_bits(core, &s.operand, src.partitions));
                self.mem.read_bits(core, src, &mut self.bits_a);
                let f = (src.free_size() as usize).max(1);
                let mask = dst.dtype.mask();
                for (idx, x) in self.bits_a.iter_mut().enumerate() {
                    let p = idx / f;
                    let mut v = stage_bits(first, *x, s0[p]);
                    if let (Some(stage), Some(vals)) = (second, &s1) {
                        v = stage_bits(stage, v, vals[p]);
                    }
                    *x = v & mask;
                }
                self.mem.write_bits(core, dst, &self.bits_a);
            }
            Op::TensorScalar { dst, src, first, second, .. } => {
                let s0 = self.scalar_values(core, &first.operand, src.partitions);
                let s1 = second.as_ref().map(|s| self.scalar_values(core, &s.operand, src.partitions));
                self.mem.read_f32(core, src, &mut self.a);
                let f = src.free_size() as usize;
                for (idx, x) in self.a.iter_mut().enumerate() {
                    let p = idx / f.max(1);
                    let mut v = apply_stage(first, *x, s0[p]);
                    if let (Some(stage), Some(vals)) = (second, &s1) {
                        v = apply_stage(stage, v, vals[p]);
                    }
                    *x = v;
                }
                self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
            }
            // Bitvec reductions act on raw bits and start from the first
            // element (AND has no zero identity).
            Op::TensorReduce { op, dst, src, axes, .. } if op.is_bitwise() => {
                self.mem.read_bits(core, src, &mut self.bits_a);
                let mask = dst.dtype.mask();
                self.bits_b.clear();
                for chunk in self.bits_a.chunks(reduce_group(src, *axes)) {
                    if let Some((&first, rest)) = chunk.split_first() {
                        self.bits_b.push(rest.iter().fold(first, |acc, &x| op.apply_bits(acc, x)) & mask);
                    }
                }
                self.mem.write_bits(core, dst, &self.bits_b);
            }
            Op::TensorReduce { op, dst, src, axes, negate, .. } => {
                self.mem.read_f32(core, src, &mut self.a);
                let group = reduce_group(src, *axes);
                self.c.clear();
                for chunk in self.a.chunks(group) {
                    let mut acc = op.identity();
                    for (i, &x) in chunk.iter().enumerate() {
                        acc = if i == 0 && matches!(op, AluOp::Sub) { x } else { op.apply_f32(acc, x) };
                    }
                    self.c.push(if *negate { -acc } else { acc });
                }
                self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
            }
            Op::Activation { func, dst, src, scale, bias, acc } => {
                self.activation(core, *func, dst, src, scale, bias, acc)
            }
            Op::Copy { dst, src, .. } | Op::DmaCopy { dst, src, .. } => self.copy(core, dst, src),
            Op::Select { dst, pred, on_true, on_false, .. } => {
                self.mem.read_bits(core, pred, &mut self.bits_a);
                let pd = pred.dtype;
                let truth: Vec<bool> = self.bits_a.iter().map(|&b| pd.decode(b) != 0.0).collect();
                if dst.dtype == on_true.dtype && dst.dtype == on_false.dtype {
                    self.mem.read_bits(core, on_true, &mut self.bits_a);
                    self.mem.read_bits(core, on_false, &mut self.bits_b);
                    for ((t, f), &c) in self.bits_a.iter_mut().zip(&self.bits_b).zip(&truth) {
                        if !c {
                            *t = *f;
                        }
                    }
                    self.mem.write_bits(core, dst, &self.bits_a);
                } else {
                    self.mem.read_f32(core, on_true, &mut self.a);
                    self.mem.read_f32(core, on_false, &mut self.b);
                    for ((t, f), &c) in self.a.iter_mut().zip(&self.b).zip(&truth) {
                        if !c {
                            *t = *f;
                        }
                    }
                    self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
                }
            }
            Op::Iota { dst, base, channel_multiplier, steps } => {
                let mut vals: Vec<i64> = Vec::with_capacity(dst.elements() as usize);
                let dims = dst.free_dims();
                for p in 0..dst.partitions as i64 {
                    let row = *base as i64 + p * *channel_multiplier as i64;
                    let sizes: Vec<i64> = dims.iter().map(|d| d.size as i64).collect();
                    let n: i64 = sizes.iter().product();
                    for flat in 0..n {
                        let mut rem = flat;
                        let mut v = row;
                        for (d, &size) in sizes.iter().enumerate().rev() {
                            v += (rem % size) * steps[d] as i64;
                            rem /= size;
                        }
                        // int32 arithmetic (HW-ISA-IOTA).
                        vals.push(v as i32 as i64);
                    }
                }
                self.store_ints(core, dst, &vals);
            }
            Op::Memset { dst, value, .. } => {
                let n = dst.elements() as usize;
                if dst.dtype.is_int() {
                    // Float to integer rounds to nearest even (HW-DT-F2I), like any store.
                    self.store_ints(core, dst, &vec![value.round_ties_even() as i64; n]);
                } else {
                    self.a.clear();
                    self.a.resize(n, *value as f32);
                    self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
                }
            }
            Op::PartitionReduce { op, dst, src } if op.is_bitwise() => {
                self.mem.read_bits(core, src, &mut self.bits_a);
                let mask = dst.dtype.mask();
                let mut rows = self.bits_a.chunks((src.free_size() as usize).max(1));
                self.bits_b.clear();
                self.bits_b.extend_from_slice(rows.next().unwrap_or(&[]));
                for row in rows {
                    for (acc, &x) in self.bits_b.iter_mut().zip(row) {
                        *acc = op.apply_bits(*acc, x);
                    }
                }
                self.bits_b.iter_mut().for_each(|b| *b &= mask);
                self.mem.write_bits(core, dst, &self.bits_b);
            }
            Op::PartitionReduce { op, dst, src } => {
                self.mem.read_f32(core, src, &mut self.a);
                let f = src.free_size() as usize;
                self.c.clear();
                self.c.resize(f, op.identity());
                for (p, row) in self.a.chunks(f.max(1)).enumerate() {
                    for (acc, &x) in self.c.iter_mut().zip(row) {
                        *acc = if p == 0 { x } else { op.apply_f32(*acc, x) };
                    }
                }
                self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
            }
            Op::PartitionBroadcast { dst, src } => {
                let f = src.free_size() as usize;
                if dst.dtype == src.dtype {
                    self.mem.read_bits(core, src, &mut self.bits_a);
                    let row = self.bits_a.clone();
                    self.bits_b.clear();
                    for _ in 0..dst.partitions {
                        self.bits_b.extend_from_slice(&row[..f]);
                    }
                    self.mem.write_bits(core, dst, &self.bits_b);
                } else {
                    self.mem.read_f32(core, src, &mut self.a);
                    self.c.clear();
                    for _ in 0..dst.partitions {
                        self.c.extend_from_slice(&self.a[..f]);
                    }
                    self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
                }
            }
            Op::PartitionShuffle { dst, src, perm } if dst.dtype == src.dtype => {
                let f = src.free_size() as usize;
                self.mem.read_bits(core, src, &mut self.bits_a);
                self.bits_b.clear();
                for &p in perm {
                    let p = p as usize;
                    self.bits_b.extend_from_slice(&self.bits_a[p * f..p * f + f]);
                }
                self.mem.write_bits(core, dst, &self.bits_b);
            }
            Op::PartitionShuffle { dst, src, perm } => {
                let f = src.free_size() as usize;
                self.mem.read_f32(core, src, &mut self.a);
                self.c.clear();
                for &p in perm {
                    let p = p as usize;
                    self.c.extend_from_slice(&self.a[p * f..p * f + f]);
                }
                self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
            }
            Op::DmaGather { dst, table, index, .. } => {
                self.mem.read_bits(core, index, &mut self.bits_a);
                let idx_dtype = index.dtype;
                let rows: Vec<i64> = self.bits_a.iter().map(|&b| idx_dtype.decode_int(b)).collect();
                for (p, &row) in rows.iter().enumerate() {
                    if row < 0 || row >= table.partitions as i64 {
                        return Err(SimError::GatherIndex {
                            inst: id,
                            partition: p as u32,
                            index: row,
                            rows: table.partitions,
                        });
                    }
                    let es = table.dtype.size() as i64;
                    let src = Ap {
                        partitions: 1,
                        offset: (table.offset as i64 + row * table.partition_stride * es) as u64,
                        ..*table
                    };
                    let dst_row = Ap { start_partition: dst.start_partition + p as u32, partitions: 1, ..*dst };
                    self.copy(core, &dst_row, &src);
                }
            }
        }
        Ok(())
    }

    fn matmul(&mut self, core: usize, dst: &Ap, stationary: &Ap, moving: &Ap, start: bool) {
        let (k, m, n) = (stationary.partitions as usize, stationary.free_size() as usize, moving.free_size() as usize);
        // Inputs are stored in their dtypes, so decoding gives the rounded values.
        self.mem.read_f32(core, stationary, &mut self.a);
        self.mem.read_f32(core, moving, &mut self.b);
        if let Some((ptr, row_stride)) = self.mem.psum_f32_rows(core, dst) {
            // SAFETY: `dst` was bounds-checked: m rows of n f32 at `row_stride`
            // apart lie in PSUM; a (k×m) and b (k×n) are live buffers of that size.
            unsafe { gemm_into(ptr, row_stride, !start, &self.a, &self.b, m, n, k) };
            return;
        }
        if start {
            self.c.clear();
            self.c.resize(m * n, 0.0);
        } else {
            self.mem.read_f32(core, dst, &mut self.c);
        }
        // SAFETY: c holds m×n contiguous f32.
        unsafe { gemm_into(self.c.as_mut_ptr(), n, true, &self.a, &self.b, m, n, k) };
        self.mem.write_f32(core, dst, &self.c, &mut self.rounder);
    }

    fn tensor_tensor(&mut self, core: usize, engine: Engine, op: AluOp, dst: &Ap, in0: &Ap, in1: &Ap) {
        let all_int = is_int(dst) && is_int(in0) && is_int(in1);
        if op.is_bitwise() {
            // Bitvec ops act on raw bits (HW-DT-MATH).
            self.mem.read_bits(core, in0, &mut self.bits_a);
            self.mem.read_bits(core, in1, &mut self.bits_b);
            for (a, b) in self.bits_a.iter_mut().zip(&self.bits_b) {
                *a = op.apply_bits(*a, *b) & dst.dtype.mask();
            }
            self.mem.write_bits(core, dst, &self.bits_a);
        } else if all_int && engine == Engine::GpSimd {
            // GpSimd computes natively in integer lanes (HW-DT-MATH).
            self.mem.read_bits(core, in0, &mut self.bits_a);
            self.mem.read_bits(core, in1, &mut self.bits_b);
            let vals: Vec<i64> = self
                .bits_a
                .iter()
                .zip(&self.bits_b)
                .map(|(&a, &b)| int_alu(op, in0.dtype.decode_int(a), in1.dtype.decode_int(b)))
                .collect();
            self.store_ints(core, dst, &vals);
        } else {
            self.mem.read_f32(core, in0, &mut self.a);
            self.mem.read_f32(core, in1, &mut self.b);
            for (a, b) in self.a.iter_mut().zip(&self.b) {
                *a = op.apply_f32(*a, *b);
            }
            self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn activation(
        &mut self,
        core: usize,
        func: ActFn,
        dst: &Ap,
        src: &Ap,
        scale: &Operand,
        bias: &Option<Ap>,
        acc: &Option<Ap>,
    ) {
        let scales = self.scalar_values(core, scale, src.partitions);
        let biases = match bias {
            Some(b) => self.scalar_values(core, &Operand::PerPartition(*b), src.partitions),
            None => vec![0.0; src.partitions as usize],
        };
        self.mem.read_f32(core, src, &mut self.a);
        let f = (src.free_size() as usize).max(1);
        let mut sums = vec![0.0f32; src.partitions as usize];
        for (idx, x) in self.a.iter_mut().enumerate() {
            let p = idx / f;
            let y = func.eval(*x * scales[p] + biases[p]);
            sums[p] += y;
            *x = y;
        }
        self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
        if let Some(acc) = acc {
            self.mem.write_f32(core, acc, &sums, &mut self.rounder);
        }
    }

    /// Copy with cast: bit-exact for equal dtypes, exact between integers
    /// (saturating), through f32 otherwise (HW-DT-COPY).
    fn copy(&mut self, core: usize, dst: &Ap, src: &Ap) {
        if dst.dtype == src.dtype {
            self.mem.gather_bytes(core, src, &mut self.bytes);
            self.mem.scatter_bytes(core, dst, &self.bytes);
        } else if dst.dtype.is_int() && src.dtype.is_int() {
            self.mem.read_bits(core, src, &mut self.bits_a);
            let vals: Vec<i64> = self.bits_a.iter().map(|&b| src.dtype.decode_int(b)).collect();
            self.store_ints(core, dst, &vals);
        } else {
            self.mem.read_f32(core, src, &mut self.a);
            self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
        }
    }

    fn store_ints(&mut self, core: usize, dst: &Ap, vals: &[i64]) {
        if dst.dtype.is_int() {
            self.bits_a.clear();
            self.bits_a.extend(vals.iter().map(|&v| dst.dtype.encode_int(v)));
            self.mem.write_bits(core, dst, &self.bits_a);
        } else {
            self.a.clear();
            self.a.extend(vals.iter().map(|&v| v as f32));
            self.mem.write_f32(core, dst, &self.a, &mut self.rounder);
        }
    }

    /// Raw bits of a bitvec stage's operand: an immediate converts to an integer.
    fn scalar_bits(&mut self, core: usize, operand: &Operand, partitions: u32) -> Vec<u32> {
        match operand {
            Operand::Imm(v) => vec![*v as i64 as u32; partitions as usize],
            Operand::PerPartition(ap) => {
                let mut out = Vec::new();
                self.mem.read_bits(core, ap, &mut out);
                out.resize(partitions as usize, 0);
                out
            }
        }
    }

    fn scalar_values(&mut self, core: usize, operand: &Operand, partitions: u32) -> Vec<f32> {
        match operand {
            Operand::Imm(v) => vec![*v; partitions as usize],
            Operand::PerPartition(ap) => {
                let mut out = Vec::new();
                self.mem.read_f32(core, ap, &mut out);
                out.resize(partitions as usize, 0.0);
                out
            }
        }
    }
}

/// Elements per reduced group: the product of the innermost `axes` free dims.
fn reduce_group(src: &Ap, axes: u8) -> usize {
    let dims = src.free_dims();
    let keep = dims.len().saturating_sub(axes as usize);
    dims[keep..].iter().map(|d| d.size as usize).product::<usize>().max(1)
}

/// One bitvec stage on raw bits; `bypass` passes its first operand through.
fn stage_bits(stage: &ScalarStage, x: u32, operand: u32) -> u32 {
    let (a, b) = if stage.reverse { (operand, x) } else { (x, operand) };
    if stage.op == AluOp::Bypass {
        a
    } else {
        stage.op.apply_bits(a, b)
    }
}

fn apply_stage(stage: &ScalarStage, x: f32, operand: f32) -> f32 {
    if stage.reverse {
        stage.op.apply_f32(operand, x)
    } else {
        stage.op.apply_f32(x, operand)
    }
}

/// Integer ALU of the GpSimd lanes; results saturate on store.
fn int_alu(op: AluOp, a: i64, b: i64) -> i64 {
    let t = |c: bool| c as i64;
    match op {
        AluOp::Add => a.saturating_add(b),
        AluOp::Sub => a.saturating_sub(b),
        AluOp::Mul => a.saturating_mul(b),
        AluOp::Div => {
            if b == 0 {
                0
            } else {
                a.div_euclid(b)
            }
        }
        AluOp::Max => a.max(b),
        AluOp::Min => a.min(b),
        AluOp::Pow => {
            if b < 0 {
                0
            } else {
                a.saturating_pow(b.min(64) as u32)
            }
        }
        AluOp::AbsMax => a.abs().max(b.abs()),
        AluOp::AbsMin => a.abs().min(b.abs()),
        AluOp::Eq => t(a == b),
        AluOp::Ne => t(a != b),
        AluOp::Lt => t(a < b),
        AluOp::Le => t(a <= b),
        AluOp::Gt => t(a > b),
        AluOp::Ge => t(a >= b),
        AluOp::LogicalAnd => t(a != 0 && b != 0),
        AluOp::LogicalOr => t(a != 0 || b != 0),
        AluOp::LogicalXor => t((a != 0) ^ (b != 0)),
        AluOp::Bypass => a,
        AluOp::BitAnd | AluOp::BitOr | AluOp::BitXor | AluOp::ShiftLeft | AluOp::ShiftRight => {
            op.apply_bits(a as u32, b as u32) as i64
        }
    }
}

/// `dst[m×n] (+)= aᵀ·b` with `a` stored k×m and `b` stored k×n, row-major.
///
/// # Safety
/// `dst` must point to m rows of n writable f32, `row_stride` elements apart;
/// `a` and `b` must hold at least k·m and k·n elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    row_stride: usize,
    accumulate: bool,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
) {
    debug_assert!(a.len() >= k * m && b.len() >= k * n);
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        row_stride as isize,
        accumulate,
        a.as_ptr(),
        m as isize,
        1,
        b.as_ptr(),
        1,
        n as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}
