//! Program validation against a chip.
//!
//! Every rule cites the `shared/hw` fact it enforces; rules without an id are
//! structural (well-formed program, not a hardware constraint). The checks run
//! on untrusted programs (parsed text, decoded binaries), so they never call an
//! [`Ap`] method that can panic: shapes and spans are computed here in 128-bit
//! arithmetic from at most [`MAX_FREE_DIMS`] dims.
//!
//! Not checked here (they need dataflow, done by the simulator): matmul
//! accumulation groups (HW-ISA-MATMUL-ACC), PSUM overlap patterns
//! (HW-ISA-PSUM-OVERLAP), races between engines.

use std::collections::{HashMap, HashSet};

use trainyard_arch::{ChipSpec, DType};

use crate::ap::{Ap, Dim, Space, MAX_FREE_DIMS};
use crate::inst::{Inst, InstId, Op, Operand, ScalarStage, Unit};
use crate::ops::{AluOp, Engine};
use crate::program::{Program, TensorDecl};

/// A program that does not fit the chip or breaks an ISA rule. The message
/// names the tensor, or the instruction, its mnemonic and the operand at
/// fault, and ends with the `shared/hw` fact id of the rule when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A tensor declaration is invalid.
    #[error("tensor `{tensor}`: {message}{}", cite(.rule))]
    Tensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
        /// Fact id of the rule, if it is a hardware rule.
        rule: Option<&'static str>,
    },
    /// An instruction is invalid as a whole (engine, core, dependencies, operator).
    #[error("{inst} {mnemonic}: {message}{}", cite(.rule))]
    Inst {
        /// The instruction.
        inst: InstId,
        /// Its mnemonic.
        mnemonic: &'static str,
        /// What is wrong.
        message: String,
        /// Fact id of the rule, if it is a hardware rule.
        rule: Option<&'static str>,
    },
    /// One memory operand of an instruction is invalid.
    #[error("{inst} {mnemonic}: operand `{operand}`: {message}{}", cite(.rule))]
    Operand {
        /// The instruction.
        inst: InstId,
        /// Its mnemonic.
        mnemonic: &'static str,
        /// Operand name as in [`Op::operands`] (`dst`, `src`, `moving`, ...).
        operand: &'static str,
        /// What is wrong.
        message: String,
        /// Fact id of the rule, if it is a hardware rule.
        rule: Option<&'static str>,
    },
}

fn cite(rule: &Option<&'static str>) -> String {
    rule.map(|r| format!(" ({r})")).unwrap_or_default()
}

impl ValidationError {
    /// The instruction at fault, if any.
    pub fn inst(&self) -> Option<InstId> {
        match self {
            ValidationError::Tensor { .. } => None,
            ValidationError::Inst { inst, .. } | ValidationError::Operand { inst, .. } => Some(*inst),
        }
    }

    /// The operand at fault, if any.
    pub fn operand(&self) -> Option<&'static str> {
        match self {
            ValidationError::Operand { operand, .. } => Some(operand),
            _ => None,
        }
    }

    /// The tensor at fault, if any.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            ValidationError::Tensor { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    /// The `shared/hw` fact id of the broken rule, if it is a hardware rule.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            ValidationError::Tensor { rule, .. }
            | ValidationError::Inst { rule, .. }
            | ValidationError::Operand { rule, .. } => *rule,
        }
    }
}

/// Checks `program` against `chip` and returns the first error (tensor
/// declarations first, then instructions in order, then deadlocks).
pub fn validate(program: &Program, chip: &ChipSpec) -> Result<(), ValidationError> {
    validate_all(program, chip).into_iter().next().map_or(Ok(()), Err)
}

/// Checks `program` against `chip` and returns every error found, in the
/// order [`validate`] would meet them.
pub fn validate_all(program: &Program, chip: &ChipSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let hbm = Hbm::new(&program.tensors, chip, &mut errors);
    for (i, inst) in program.insts.iter().enumerate() {
        let mut cx = Cx { chip, hbm: &hbm, id: InstId(i as u32), mnemonic: inst.op.mnemonic(), errors: &mut errors };
        cx.inst(inst, program.insts.len());
    }
    errors.extend(deadlock(program));
    errors
}

// ---------------------------------------------------------------------------
// Shapes, computed without overflow or panics.

// Partition-start granularity of compute-engine operands (HW-ISA-AP-PART).
const QUADRANT: u32 = 32;
const HALF: u32 = 64;
// Vector/Scalar per-operand free-size limits (HW-ISA-TILE).
const VS_FREE_MAX_SBUF: u128 = 64 * 1024;
const VS_FREE_MAX_PSUM: u128 = 4 * 1024;
// VectorE transposes inside one 32×32 block (HW-ISA-TRANSPOSE).
const VECTOR_TRANSPOSE_MAX: u128 = 32;

fn dims(ap: &Ap) -> &[Dim] {
    &ap.dims[..usize::from(ap.ndims).min(MAX_FREE_DIMS)]
}

fn free(ap: &Ap) -> u128 {
    dims(ap).iter().fold(1u128, |acc, d| acc.saturating_mul(u128::from(d.size)))
}

fn elems(ap: &Ap) -> u128 {
    free(ap).saturating_mul(u128::from(ap.partitions))
}

/// Mirrors [`Ap::byte_span`] without overflow: `[lo, hi)` in bytes.
fn span(ap: &Ap) -> Option<(i128, i128)> {
    if elems(ap) == 0 {
        return None;
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    let mut extend = |stride: i64, size: u32| {
        let reach = i128::from(stride) * (i128::from(size) - 1);
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    };
    for d in dims(ap) {
        extend(d.stride, d.size);
    }
    if ap.space == Space::Hbm {
        extend(ap.partition_stride, ap.partitions);
    }
    let es = ap.dtype.size() as i128;
    let base = i128::from(ap.offset);
    Some((base + lo * es, base + (hi + 1) * es))
}

fn shape(ap: &Ap) -> String {
    format!("{} partitions × {}", ap.partitions, free(ap))
}

// ---------------------------------------------------------------------------
// Program level: HBM tensors.

/// The declared HBM tensors, with spans sorted by start for lookups.
struct Hbm<'a> {
    tensors: &'a [TensorDecl],
    /// `(start, end, index)` of every non-empty tensor whose size is representable.
    sorted: Vec<(u64, u64, usize)>,
}

fn decl_span(t: &TensorDecl) -> Option<(u64, u64)> {
    let bytes = t.shape.iter().try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d))?;
    Some((t.offset, t.offset.checked_add(bytes)?))
}

impl<'a> Hbm<'a> {
    fn new(tensors: &'a [TensorDecl], chip: &ChipSpec, errors: &mut Vec<ValidationError>) -> Self {
        let mut err = |t: &TensorDecl, rule: Option<&'static str>, message: String| {
            errors.push(ValidationError::Tensor { tensor: t.name.clone(), message, rule })
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut sorted = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if t.name.is_empty() {
                err(t, None, format!("tensor #{i} has an empty name"));
            } else if let Some(first) = seen.insert(&t.name, i) {
                err(t, None, format!("declared twice (tensors #{first} and #{i})"));
            }
            if t.offset % t.dtype.size() as u64 != 0 {
                err(t, None, format!("offset {} is not a multiple of the {} size", t.offset, t.dtype.name()));
            }
            let Some((start, end)) = decl_span(t) else {
                err(t, None, format!("size of shape {:?} × {} overflows the address space", t.shape, t.dtype.name()));
                continue;
            };
            if end > chip.chip.hbm_bytes {
                let cap = chip.chip.hbm_bytes;
                err(t, None, format!("bytes [{start}, {end}) exceed the {cap}-byte HBM of {}", chip.name));
            }
            if end > start {
                sorted.push((start, end, i));
            }
        }
        sorted.sort_unstable();
        // Tensors are separate buffers: no two may share a byte (HW-MEM-HBM-LINEAR).
        let mut reach: Option<(u64, usize)> = None;
        for &(start, end, i) in &sorted {
            if let Some((prev_end, j)) = reach {
                if start < prev_end {
                    let (a, b) = (&tensors[j], &tensors[i]);
                    err(
                        b,
                        Some("HW-MEM-HBM-LINEAR"),
                        format!("overlaps tensor `{}` (bytes [{start}, {prev_end}))", a.name),
                    );
                }
            }
            if reach.map_or(true, |(e, _)| end > e) {
                reach = Some((end, i));
            }
        }
        Hbm { tensors, sorted }
    }

    /// The tensor holding all of `[lo, hi)`, or the tensors the range touches.
    fn find(&self, lo: i128, hi: i128) -> Result<usize, Vec<usize>> {
        let inside = |&(s, e, _): &(u64, u64, usize)| i128::from(s) <= lo && hi <= i128::from(e);
        let after = self.sorted.partition_point(|&(s, _, _)| i128::from(s) <= lo);
        if let Some(hit) = after.checked_sub(1).and_then(|k| self.sorted.get(k)).filter(|t| inside(t)) {
            return Ok(hit.2);
        }
        // Slow path: overlapping declarations can hide the container from the search.
        if let Some(hit) = self.sorted.iter().find(|t| inside(t)) {
            return Ok(hit.2);
        }
        Err(self.sorted.iter().filter(|&&(s, e, _)| i128::from(s) < hi && lo < i128::from(e)).map(|t| t.2).collect())
    }
}

// ---------------------------------------------------------------------------
// Instruction level.

struct Cx<'a> {
    chip: &'a ChipSpec,
    hbm: &'a Hbm<'a>,
    id: InstId,
    mnemonic: &'static str,
    errors: &'a mut Vec<ValidationError>,
}

impl Cx<'_> {
    fn inst_err(&mut self, rule: Option<&'static str>, message: String) {
        self.errors.push(ValidationError::Inst { inst: self.id, mnemonic: self.mnemonic, message, rule });
    }

    fn op_err(&mut self, operand: &'static str, rule: Option<&'static str>, message: String) {
        self.errors.push(ValidationError::Operand { inst: self.id, mnemonic: self.mnemonic, operand, message, rule });
    }

    fn inst(&mut self, inst: &Inst, count: usize) {
        if u32::from(inst.core) >= self.chip.chip.cores {
            let msg =
                format!("core {} does not exist on {} ({} cores)", inst.core, self.chip.name, self.chip.chip.cores);
            self.inst_err(None, msg);
        }
        let mut seen = HashSet::new();
        for &dep in &inst.deps {
            if dep == self.id {
                self.inst_err(None, "waits on itself".into());
            } else if dep.0 as usize >= count {
                self.inst_err(None, format!("waits on {dep}, which does not exist ({count} instructions)"));
            } else if !seen.insert(dep) {
                self.inst_err(None, format!("waits on {dep} twice"));
            }
        }
        let operands = inst.op.operands();
        let mut well_formed = true;
        for &(name, ap, _) in &operands {
            well_formed &= self.structure(name, ap);
            self.memory(name, ap);
            if let Unit::Engine(engine) = inst.op.unit() {
                self.engine_operand(engine, name, ap);
            }
        }
        // Shape rules on malformed operands would only repeat the structural error.
        if well_formed {
            self.op(&inst.op);
        }
    }

    /// Dimensions and alignment; false when the shape is unusable.
    fn structure(&mut self, name: &'static str, ap: &Ap) -> bool {
        // 1–4 free dims of at least one element (HW-ISA-AP-FREE).
        if !(1..=MAX_FREE_DIMS).contains(&usize::from(ap.ndims)) {
            self.op_err(name, Some("HW-ISA-AP-FREE"), format!("{} free dims (must be 1..={MAX_FREE_DIMS})", ap.ndims));
            return false;
        }
        let mut ok = true;
        if let Some(i) = dims(ap).iter().position(|d| d.size == 0) {
            self.op_err(name, Some("HW-ISA-AP-FREE"), format!("free dim {i} has size 0"));
            ok = false;
        }
        // An operand covers a run of at least one partition (HW-ISA-AP-PART).
        if ap.partitions == 0 {
            self.op_err(name, Some("HW-ISA-AP-PART"), "covers 0 partitions".into());
            ok = false;
        }
        if ap.offset % ap.dtype.size() as u64 != 0 {
            let msg =
                format!("offset {} is not a multiple of the {} size {}", ap.offset, ap.dtype.name(), ap.dtype.size());
            self.op_err(name, None, msg);
        }
        ok
    }

    /// Bounds in the operand's memory space.
    fn memory(&mut self, name: &'static str, ap: &Ap) {
        let chip = self.chip;
        match ap.space {
            Space::Sbuf | Space::Psum => {
                let spec = if ap.space == Space::Sbuf { &chip.core.sbuf } else { &chip.core.psum };
                // No partition striding (HW-ISA-AP-PART).
                if ap.partition_stride != 0 {
                    let msg = format!("partition stride {} on {} (must be 0)", ap.partition_stride, ap.space);
                    self.op_err(name, Some("HW-ISA-AP-PART"), msg);
                }
                // 128 partitions × bytes per partition (HW-NC-PART, HW-MEM-SBUF-*, HW-MEM-PSUM).
                let end = u64::from(ap.start_partition) + u64::from(ap.partitions);
                if end > u64::from(spec.partitions) {
                    let msg = format!(
                        "partitions [{}, {end}) exceed the {} {} partitions of {}",
                        ap.start_partition, spec.partitions, ap.space, chip.name
                    );
                    self.op_err(name, Some("HW-NC-PART"), msg);
                }
                if let Some((lo, hi)) = span(ap) {
                    if lo < 0 || hi > i128::from(spec.bytes_per_partition) {
                        let msg = format!(
                            "bytes [{lo}, {hi}) fall outside the {} bytes per {} partition of {}",
                            spec.bytes_per_partition, ap.space, chip.name
                        );
                        self.op_err(name, Some("HW-NC-PART"), msg);
                    }
                }
            }
            Space::Hbm => {
                // HBM is linear: rows come from the partition stride (HW-MEM-HBM-LINEAR).
                if ap.start_partition != 0 {
                    let msg = format!("start partition {} on hbm (must be 0)", ap.start_partition);
                    self.op_err(name, Some("HW-MEM-HBM-LINEAR"), msg);
                }
                let Some((lo, hi)) = span(ap) else { return };
                match self.hbm.find(lo, hi) {
                    Ok(_) => {}
                    Err(touched) if touched.is_empty() => {
                        self.op_err(name, None, format!("hbm bytes [{lo}, {hi}) lie outside every declared tensor"))
                    }
                    Err(touched) => {
                        let names: Vec<String> = touched
                            .iter()
                            .filter_map(|&i| self.hbm.tensors.get(i))
                            .map(|t| match decl_span(t) {
                                Some((s, e)) => format!("`{}` [{s}, {e})", t.name),
                                None => format!("`{}`", t.name),
                            })
                            .collect();
                        let msg = format!(
                            "hbm bytes [{lo}, {hi}) are not inside one tensor: they touch {}",
                            names.join(" and ")
                        );
                        self.op_err(name, None, msg);
                    }
                }
            }
        }
    }

    /// Rules every compute-engine operand obeys.
    fn engine_operand(&mut self, engine: Engine, name: &'static str, ap: &Ap) {
        // Compute engines see SBUF and PSUM only (HW-ISA-SPACES).
        if ap.space == Space::Hbm {
            self.op_err(name, Some("HW-ISA-SPACES"), format!("the {engine} engine cannot access hbm"));
            return;
        }
        // GpSimd reaches SBUF only (HW-NC-POOL-SBUF, HW-ISA-TT).
        if engine == Engine::GpSimd && ap.space == Space::Psum {
            self.op_err(name, Some("HW-NC-POOL-SBUF"), "the gpsimd engine cannot access psum".into());
        }
        let (start, count) = (ap.start_partition, ap.partitions);
        let start_ok = match count {
            0 => true,
            c if c > HALF => start == 0,
            c if c > QUADRANT => start == 0 || start == HALF,
            _ => start % QUADRANT == 0,
        };
        if !start_ok {
            let allowed = match count {
                c if c > HALF => "0",
                c if c > QUADRANT => "0 or 64",
                _ => "a multiple of 32",
            };
            self.op_err(
                name,
                Some("HW-ISA-AP-PART"),
                format!("{count} partitions start at {start} (must start at {allowed})"),
            );
        }
        // Sizes are uint16 and strides int16 in the instruction (HW-ISA-AP-FREE).
        for (i, d) in dims(ap).iter().enumerate() {
            if d.size > u32::from(u16::MAX) || i16::try_from(d.stride).is_err() {
                let msg = format!(
                    "free dim {i} (size {}, stride {}) exceeds the uint16 size / int16 stride fields",
                    d.size, d.stride
                );
                self.op_err(name, Some("HW-ISA-AP-FREE"), msg);
            }
        }
        if matches!(engine, Engine::Vector | Engine::Scalar) {
            let max = if ap.space == Space::Psum { VS_FREE_MAX_PSUM } else { VS_FREE_MAX_SBUF };
            if free(ap) > max {
                let msg = format!("free size {} exceeds the {engine} engine limit {max} in {}", free(ap), ap.space);
                self.op_err(name, Some("HW-ISA-TILE"), msg);
            }
        }
    }

    fn engine_in(&mut self, engine: Engine, allowed: &[Engine], rule: &'static str) -> bool {
        let ok = allowed.contains(&engine);
        if !ok {
            let names: Vec<&str> = allowed.iter().map(|e| e.name()).collect();
            self.inst_err(Some(rule), format!("cannot run on the {engine} engine (only {})", names.join(", ")));
        }
        ok
    }

    fn space(&mut self, name: &'static str, ap: &Ap, want: Space, rule: &'static str) {
        if ap.space != want {
            self.op_err(name, Some(rule), format!("must be in {want}, not {}", ap.space));
        }
    }

    /// `b` has the same partitions and free size as `a`.
    fn same_pf(&mut self, (na, a): (&'static str, &Ap), (nb, b): (&'static str, &Ap), rule: &'static str) {
        if a.partitions != b.partitions || free(a) != free(b) {
            self.op_err(nb, Some(rule), format!("shape {} differs from `{na}` {}", shape(b), shape(a)));
        }
    }

    fn same_free(&mut self, (na, a): (&'static str, &Ap), (nb, b): (&'static str, &Ap), rule: &'static str) {
        if free(a) != free(b) {
            self.op_err(nb, Some(rule), format!("free size {} differs from `{na}` free size {}", free(b), free(a)));
        }
    }

    /// A `[P, 1]` per-partition operand.
    fn per_partition(&mut self, name: &'static str, ap: &Ap, p: u32, rule: &'static str) {
        if ap.partitions != p || free(ap) != 1 {
            self.op_err(name, Some(rule), format!("shape {} must be {p} partitions × 1", shape(ap)));
        }
    }

    /// Bitwise operators need integer operands (HW-OP-BITVEC).
    fn integer(&mut self, op: AluOp, operands: &[(&'static str, &Ap)]) {
        if !op.is_bitwise() {
            return;
        }
        for &(name, ap) in operands {
            if !ap.dtype.is_int() {
                self.op_err(
                    name,
                    Some("HW-OP-BITVEC"),
                    format!("`{op}` needs an integer dtype, not {}", ap.dtype.name()),
                );
            }
        }
    }

    fn queue(&mut self, queue: u8) {
        // Queues per DMA engine (HW-NC-DMA).
        let queues = self.chip.core.dma.queues;
        if u32::from(queue) >= queues {
            self.inst_err(
                Some("HW-NC-DMA"),
                format!("DMA queue {queue} does not exist on {} ({queues} queues)", self.chip.name),
            );
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::MatMul { dst, stationary, moving, .. } => self.matmul(dst, stationary, moving),
            Op::Transpose { engine, dst, src } => self.transpose(*engine, dst, src),
            Op::TensorTensor { engine, op, dst, in0, in1 } => self.tensor_tensor(*engine, *op, dst, in0, in1),
            Op::TensorScalar { engine, dst, src, first, second } => {
                self.tensor_scalar(*engine, dst, src, first, second.as_ref())
            }
            Op::TensorReduce { engine, op, dst, src, axes, negate } => {
                self.tensor_reduce(*engine, *op, dst, src, *axes, *negate)
            }
            Op::Activation { dst, src, scale, bias, acc, .. } => self.activation(dst, src, scale, bias, acc),
            Op::Copy { engine, dst, src } => {
                if self.engine_in(*engine, &[Engine::Vector, Engine::Scalar, Engine::GpSimd], "HW-ISA-COPY")
                    && *engine == Engine::Scalar
                    && self.chip.generation < 3
                {
                    // ScalarE copies through activation before NC-v3 (HW-ISA-COPY).
                    let msg = format!(
                        "copy on the scalar engine needs NeuronCore-v3+ ({} is v{}); use activation identity",
                        self.chip.name, self.chip.generation
                    );
                    self.inst_err(Some("HW-ISA-COPY"), msg);
                }
                self.same_pf(("dst", dst), ("src", src), "HW-ISA-COPY");
            }
            Op::Select { engine, dst, pred, on_true, on_false } => {
                self.engine_in(*engine, &[Engine::Vector, Engine::GpSimd], "HW-ISA-SELECT");
                for operand in [("pred", pred), ("on_true", on_true), ("on_false", on_false)] {
                    self.same_pf(("dst", dst), operand, "HW-ISA-SELECT");
                }
            }
            // GpSimd: SBUF only is already enforced per operand (HW-ISA-IOTA, HW-NC-POOL-SBUF).
            Op::Iota { .. }
            | Op::PartitionBroadcast { .. }
            | Op::PartitionShuffle { .. }
            | Op::PartitionReduce { .. } => self.cross_partition(op),
            Op::Memset { engine, .. } => {
                self.engine_in(*engine, &[Engine::Vector, Engine::GpSimd], "HW-ISA-COPY");
            }
            Op::DmaCopy { queue, dst, src } => {
                self.queue(*queue);
                // Any spaces, any dtypes, equal element counts (HW-ISA-DMACOPY).
                if elems(dst) != elems(src) {
                    let msg = format!("{} elements, but `src` has {}", elems(dst), elems(src));
                    self.op_err("dst", Some("HW-ISA-DMACOPY"), msg);
                }
            }
            Op::DmaGather { queue, dst, table, index } => self.dma_gather(*queue, dst, table, index),
        }
    }

    fn matmul(&mut self, dst: &Ap, stationary: &Ap, moving: &Ap) {
        let chip = self.chip;
        let pe = &chip.core.tensor;
        const R: Option<&str> = Some("HW-ISA-MATMUL");
        // TensorE reads SBUF and writes PSUM (HW-ISA-MATMUL, HW-ISA-SPACES).
        self.space("stationary", stationary, Space::Sbuf, "HW-ISA-MATMUL");
        self.space("moving", moving, Space::Sbuf, "HW-ISA-MATMUL");
        self.space("dst", dst, Space::Psum, "HW-ISA-MATMUL");
        // K on the partitions of both inputs, ≤ array rows (HW-ISA-MATMUL).
        let k = stationary.partitions;
        if moving.partitions != k {
            self.op_err(
                "moving",
                R,
                format!("contracts over {} partitions, but `stationary` has {k}", moving.partitions),
            );
        }
        if k > pe.rows {
            self.op_err(
                "stationary",
                R,
                format!("contraction size {k} exceeds the {} tensor-engine rows of {}", pe.rows, chip.name),
            );
        }
        // M = stationary free ≤ array columns (HW-ISA-MATMUL).
        let m = free(stationary);
        if m > u128::from(pe.cols) {
            self.op_err(
                "stationary",
                R,
                format!("free size {m} exceeds the {} tensor-engine columns of {}", pe.cols, chip.name),
            );
        }
        // N = moving free ≤ moving_fmax; a BF16 dst on v4 holds twice as many (HW-ISA-MATMUL).
        let n = free(moving);
        let fmax = u128::from(pe.moving_fmax) * if chip.generation >= 4 && dst.dtype == DType::Bf16 { 2 } else { 1 };
        if n > fmax {
            self.op_err("moving", R, format!("free size {n} exceeds the moving limit {fmax} of {}", chip.name));
        }
        if u128::from(dst.partitions) != m {
            self.op_err("dst", R, format!("{} partitions, but the stationary free size M is {m}", dst.partitions));
        }
        if free(dst) != n {
            self.op_err("dst", R, format!("free size {}, but the moving free size N is {n}", free(dst)));
        }
        // Float inputs only; FP32 pairs only with FP32 (HW-ISA-MATMUL-DT).
        const DT: Option<&str> = Some("HW-ISA-MATMUL-DT");
        for (name, ap) in [("stationary", stationary), ("moving", moving)] {
            if !ap.dtype.is_float() {
                self.op_err(name, DT, format!("dtype {} is not a matmul input (float types only)", ap.dtype.name()));
            }
        }
        if (stationary.dtype == DType::F32) != (moving.dtype == DType::F32) {
            let msg = format!(
                "f32 inputs must pair with f32 (`stationary` {}, `moving` {})",
                stationary.dtype.name(),
                moving.dtype.name()
            );
            self.op_err("moving", DT, msg);
        }
        // FP32 accumulation; BF16 results from NC-v4 (HW-ISA-MATMUL-DT).
        let dst_ok = dst.dtype == DType::F32 || (dst.dtype == DType::Bf16 && chip.generation >= 4);
        if !dst_ok {
            let allowed = if chip.generation >= 4 { "f32 or bf16" } else { "f32" };
            self.op_err("dst", DT, format!("dtype {} (must be {allowed} on {})", dst.dtype.name(), chip.name));
        }
        // Before v4 one matmul writes within one PSUM bank (HW-ISA-MATMUL, HW-MEM-PSUM).
        if chip.generation < 4 && dst.space == Space::Psum && chip.core.psum.banks > 0 {
            let bank = i128::from(chip.psum_bank_bytes().max(1));
            if let Some((lo, hi)) = span(dst) {
                if lo.div_euclid(bank) != (hi - 1).div_euclid(bank) {
                    let msg = format!("bytes [{lo}, {hi}) cross a {bank}-byte PSUM bank boundary on {}", chip.name);
                    self.op_err("dst", R, msg);
                }
            }
        }
    }

    fn transpose(&mut self, engine: Engine, dst: &Ap, src: &Ap) {
        const R: Option<&str> = Some("HW-ISA-TRANSPOSE");
        let (p, f) = (src.partitions, free(src));
        match engine {
            // A matmul against the identity: SBUF in, PSUM out, within the array (HW-ISA-TRANSPOSE).
            Engine::Tensor => {
                let pe = &self.chip.core.tensor;
                self.space("src", src, Space::Sbuf, "HW-ISA-TRANSPOSE");
                self.space("dst", dst, Space::Psum, "HW-ISA-TRANSPOSE");
                if p > pe.rows || f > u128::from(pe.cols) {
                    let msg = format!(
                        "shape {} exceeds the {}×{} tensor engine of {}",
                        shape(src),
                        pe.rows,
                        pe.cols,
                        self.chip.name
                    );
                    self.op_err("src", R, msg);
                }
                if dst.dtype != src.dtype && dst.dtype != DType::F32 {
                    self.op_err("dst", R, format!("dtype {} (must be {} or f32)", dst.dtype.name(), src.dtype.name()));
                }
            }
            Engine::Vector => {
                if u128::from(p) > VECTOR_TRANSPOSE_MAX || f > VECTOR_TRANSPOSE_MAX {
                    self.op_err("src", R, format!("shape {} exceeds the 32×32 vector-engine transpose", shape(src)));
                }
                if dst.dtype != src.dtype {
                    self.op_err(
                        "dst",
                        R,
                        format!("dtype {} (must equal `src` {})", dst.dtype.name(), src.dtype.name()),
                    );
                }
            }
            _ => {
                self.engine_in(engine, &[Engine::Tensor, Engine::Vector], "HW-ISA-TRANSPOSE");
            }
        }
        if u128::from(dst.partitions) != f || free(dst) != u128::from(p) {
            self.op_err("dst", R, format!("shape {} is not the transpose of `src` {}", shape(dst), shape(src)));
        }
    }

    fn tensor_tensor(&mut self, engine: Engine, op: AluOp, dst: &Ap, in0: &Ap, in1: &Ap) {
        const R: &str = "HW-ISA-TT";
        // `power` runs on GpSimd (HW-OP-ARITH).
        if self.engine_in(engine, &[Engine::Vector, Engine::GpSimd], R) && op == AluOp::Pow && engine != Engine::GpSimd
        {
            self.inst_err(Some("HW-OP-ARITH"), format!("`pow` runs on the gpsimd engine, not {engine}"));
        }
        self.same_pf(("dst", dst), ("in0", in0), R);
        self.same_pf(("dst", dst), ("in1", in1), R);
        if in0.space == Space::Psum && in1.space == Space::Psum {
            self.op_err("in1", Some(R), "`in0` and `in1` cannot both be in psum".into());
        }
        self.integer(op, &[("dst", dst), ("in0", in0), ("in1", in1)]);
    }

    fn tensor_scalar(&mut self, engine: Engine, dst: &Ap, src: &Ap, first: &ScalarStage, second: Option<&ScalarStage>) {
        const R: &str = "HW-ISA-TS";
        let engine_ok = self.engine_in(engine, &[Engine::Vector, Engine::Scalar, Engine::GpSimd], R);
        self.same_pf(("dst", dst), ("src", src), R);
        let stages = [Some(("operand0", first)), second.map(|s| ("operand1", s))];
        for (name, stage) in stages.into_iter().flatten() {
            if let Operand::PerPartition(ap) = &stage.operand {
                self.per_partition(name, ap, src.partitions, R);
                self.integer(stage.op, &[(name, ap)]);
            }
            self.integer(stage.op, &[("dst", dst), ("src", src)]);
            // Bitvec only on VectorE (HW-ISA-TS).
            if engine_ok && stage.op.is_bitwise() && engine != Engine::Vector {
                self.inst_err(Some(R), format!("bitwise `{}` runs only on the vector engine, not {engine}", stage.op));
            }
        }
        // Both stages of one class: arithmetic or bitvec (HW-ISA-TS).
        if let Some(s) = second.filter(|s| s.op != AluOp::Bypass && first.op != AluOp::Bypass) {
            if s.op.is_bitwise() != first.op.is_bitwise() {
                self.inst_err(Some(R), format!("`{}` and `{}` mix arithmetic and bitwise stages", first.op, s.op));
            }
        }
        if engine == Engine::Scalar {
            self.scalar_pair(first.op, second.map(|s| s.op).filter(|&o| o != AluOp::Bypass));
        }
    }

    /// ScalarE runs only a few stage pairs (HW-ISA-TS for v3, HW-ISA-ACTIVATE2 for v4).
    fn scalar_pair(&mut self, op0: AluOp, op1: Option<AluOp>) {
        use AluOp::*;
        let (rule, ok) = if self.chip.generation >= 4 {
            let ok = matches!((op0, op1), (Mul, Some(Add) | Some(Sub) | None) | (Add | Sub | Bypass, None));
            ("HW-ISA-ACTIVATE2", ok)
        } else {
            ("HW-ISA-TS", matches!((op0, op1), (Mul, Some(Add) | None) | (Add, None)))
        };
        if !ok {
            let pair = format!("({op0}, {})", op1.map_or("bypass", |o| o.name()));
            self.inst_err(
                Some(rule),
                format!("stage pair {pair} is not supported on the scalar engine of {}", self.chip.name),
            );
        }
    }

    fn tensor_reduce(&mut self, engine: Engine, op: AluOp, dst: &Ap, src: &Ap, axes: u8, negate: bool) {
        const R: &str = "HW-ISA-TREDUCE";
        self.engine_in(engine, &[Engine::Vector, Engine::GpSimd], R);
        // Legal reductions (HW-OP-ARITH, HW-OP-BITVEC).
        if !op.is_reduction() {
            self.inst_err(Some("HW-OP-ARITH"), format!("`{op}` is not a reduction operator"));
        }
        if negate && op.is_bitwise() {
            self.inst_err(Some(R), format!("negate applies to arithmetic reductions, not `{op}`"));
        }
        let n = dims(src).len();
        if axes == 0 || usize::from(axes) > n {
            self.inst_err(Some(R), format!("reduces {axes} axes of a source with {n} free dims (must be 1..={n})"));
        } else {
            // The innermost `axes` free dims go; the partition axis never does (HW-ISA-TREDUCE).
            let kept: u128 = dims(src)[..n - usize::from(axes)].iter().map(|d| u128::from(d.size)).product();
            if dst.partitions != src.partitions || free(dst) != kept {
                let msg = format!("shape {} (must be {} partitions × {kept})", shape(dst), src.partitions);
                self.op_err("dst", Some(R), msg);
            }
        }
        self.integer(op, &[("dst", dst), ("src", src)]);
    }

    fn activation(&mut self, dst: &Ap, src: &Ap, scale: &Operand, bias: &Option<Ap>, acc: &Option<Ap>) {
        const R: &str = "HW-ISA-ACTIVATION";
        // Same P and F in and out; scale, bias and accumulator are [P, 1] (HW-ISA-ACTIVATION).
        self.same_pf(("dst", dst), ("src", src), R);
        let p = src.partitions;
        if let Operand::PerPartition(ap) = scale {
            self.per_partition("scale", ap, p, R);
        }
        if let Some(ap) = bias {
            self.per_partition("bias", ap, p, R);
        }
        if let Some(ap) = acc {
            self.per_partition("acc", ap, p, R);
            // The accumulators are FP32 registers (HW-STATE-ACT-ACC, HW-ISA-ACT-REDUCE).
            if ap.dtype != DType::F32 {
                self.op_err("acc", Some("HW-STATE-ACT-ACC"), format!("dtype {} (must be f32)", ap.dtype.name()));
            }
        }
    }

    fn cross_partition(&mut self, op: &Op) {
        const X: &str = "HW-ISA-XPART";
        match op {
            Op::PartitionReduce { op, dst, src } => {
                // tensor_partition_reduce: add, max, bitwise or/and (HW-ISA-TREDUCE).
                if !matches!(op, AluOp::Add | AluOp::Max | AluOp::BitOr | AluOp::BitAnd) {
                    self.inst_err(
                        Some("HW-ISA-TREDUCE"),
                        format!("`{op}` is not a partition reduction (add, max, bit_or, bit_and)"),
                    );
                }
                if dst.partitions != 1 {
                    self.op_err("dst", Some("HW-ISA-TREDUCE"), format!("{} partitions (must be 1)", dst.partitions));
                }
                self.same_free(("src", src), ("dst", dst), "HW-ISA-TREDUCE");
                self.integer(*op, &[("dst", dst), ("src", src)]);
            }
            Op::PartitionBroadcast { dst, src } => {
                if src.partitions != 1 {
                    self.op_err("src", Some(X), format!("{} partitions (must be 1)", src.partitions));
                }
                self.same_free(("dst", dst), ("src", src), X);
            }
            Op::PartitionShuffle { dst, src, perm } => {
                if perm.len() != dst.partitions as usize {
                    let msg = format!("permutation has {} entries for {} partitions", perm.len(), dst.partitions);
                    self.op_err("dst", Some("HW-ISA-SHUFFLE"), msg);
                }
                if let Some((i, &p)) = perm.iter().enumerate().find(|&(_, &p)| u32::from(p) >= src.partitions) {
                    let msg = format!("permutation entry {i} = {p} is past its {} partitions", src.partitions);
                    self.op_err("src", Some("HW-ISA-SHUFFLE"), msg);
                }
                self.same_free(("dst", dst), ("src", src), "HW-ISA-SHUFFLE");
            }
            _ => {}
        }
    }

    fn dma_gather(&mut self, queue: u8, dst: &Ap, table: &Ap, index: &Ap) {
        const R: &str = "HW-ISA-DMACOPY";
        self.queue(queue);
        // Indirect DMA: rows of an HBM table, one SBUF index per partition (HW-ISA-DMACOPY).
        self.space("dst", dst, Space::Sbuf, R);
        self.space("table", table, Space::Hbm, R);
        self.space("index", index, Space::Sbuf, R);
        self.per_partition("index", index, dst.partitions, R);
        if !matches!(index.dtype, DType::I32 | DType::U32) {
            self.op_err("index", Some(R), format!("dtype {} (must be i32 or u32)", index.dtype.name()));
        }
        self.same_free(("table", table), ("dst", dst), R);
    }
}

// ---------------------------------------------------------------------------
// Deadlocks.

/// A cycle of waits: each engine and DMA queue runs in order and waits on
/// semaphores (HW-NC-ENGINES), so an instruction that waits, through its deps
/// and the instructions ahead of it in its queue, on itself never starts.
fn deadlock(program: &Program) -> Option<ValidationError> {
    let n = program.insts.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut last: HashMap<(u16, Unit), usize> = HashMap::new();
    for (i, inst) in program.insts.iter().enumerate() {
        if let Some(prev) = last.insert((inst.core, inst.op.unit()), i) {
            preds[i].push(prev);
        }
        preds[i].extend(inst.deps.iter().map(|d| d.0 as usize).filter(|&d| d < n && d != i));
    }
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = preds.iter().map(Vec::len).collect();
    for (i, ps) in preds.iter().enumerate() {
        for &p in ps {
            succs[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        for &s in &succs[i] {
            waiting[s] -= 1;
            if waiting[s] == 0 {
                ready.push(s);
            }
        }
    }
    // Every blocked instruction waits on a blocked predecessor: walk back to a cycle.
    let start = (0..n).find(|&i| waiting[i] > 0)?;
    let mut path = vec![start];
    let mut at: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let cycle = loop {
        let cur = *path.last()?;
        let next = *preds[cur].iter().find(|&&p| waiting[p] > 0)?;
        if let Some(&k) = at.get(&next) {
            break path.split_off(k);
        }
        at.insert(next, path.len());
        path.push(next);
    };
    let low = (0..cycle.len()).min_by_key(|&k| cycle[k])?;
    let ids: Vec<String> = cycle[low..].iter().chain(&cycle[..=low]).map(|&i| InstId(i as u32).to_string()).collect();
    let first = program.insts.get(cycle[low])?;
    Some(ValidationError::Inst {
        inst: InstId(cycle[low] as u32),
        mnemonic: first.op.mnemonic(),
        message: format!("deadlock: {} (each waits on the next, by dependency or queue order)", ids.join(" waits on ")),
        rule: Some("HW-NC-ENGINES"),
    })
}
