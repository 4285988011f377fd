//! Program validation against a chip.
//!
//! Every rule cites the `shared/hw` fact it enforces; rules without an id are
//! structural (well-formed program, not a hardware constraint). The checks run
//! on untrusted programs (parsed text, decoded binaries), so they never call an
//! [`Ap`] method that can panic: shapes and spans are computed here in 128-bit
//! arithmetic from at most [`MAX_FREE_DIMS`] dims.
//!
//! HW-ISA-XPART (1:1 partition mapping, halves/quadrants may differ) needs no
//! rule of its own: equal partition counts plus HW-ISA-AP-PART imply it.
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
    let mut errors = validate_static(program, chip);
    errors.extend(deadlock(program));
    errors
}

/// Every check of [`validate_all`] except the search for a cycle of waits:
/// the simulator, which finds deadlocks itself while running, loads programs
/// with this.
pub fn validate_static(program: &Program, chip: &ChipSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let hbm = Hbm::new(&program.tensors, chip, &mut errors);
    for (i, inst) in program.insts.iter().enumerate() {
        let mut cx = Cx { chip, hbm: &hbm, id: InstId(i as u32), mnemonic: inst.op.mnemonic(), errors: &mut errors };
        cx.inst(inst, program.insts.len());
    }
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
            if !t.offset.is_multiple_of(t.dtype.size() as u64) {
                err(t, None, format!("offset {} is not a multiple of the {} size", t.offset, t.dtype.name()));
            }
            let Some((start, end)) = decl_span(t) else {
                err(t, None, format!("size of shape {:?} × {} overflows the address space", t.shape, t.dtype.name()));
                continue;
            };
            let cap = chip.total_hbm_bytes();
            if end > cap {
                let of =
                    if chip.chips() > 1 { format!("{} × {}", chip.chips(), chip.name) } else { chip.name.clone() };
                err(t, None, format!("bytes [{start}, {end}) exceed the {cap}-byte HBM of {of}"));
            } else if let Some((a, b)) = straddle(chip, start, end) {
                err(t, None, format!("bytes [{start}, {end}) straddle the HBM windows of chips {a} and {b}"));
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
            if reach.is_none_or(|(e, _)| end > e) {
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

/// The first and last chip of `[lo, hi)` when they differ: each chip's HBM is
/// its own window of the system's address space, and nothing spans two.
fn straddle(chip: &ChipSpec, lo: u64, hi: u64) -> Option<(u32, u32)> {
    let per = chip.chip.hbm_bytes.max(1);
    let (a, b) = (lo / per, hi.saturating_sub(1) / per);
    (hi > lo && a != b).then_some((a as u32, b as u32))
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
        let cores = self.chip.total_cores();
        if u32::from(inst.core) >= cores {
            let on = match self.chip.chips() {
                1 => self.chip.name.clone(),
                n => format!("{n} × {}", self.chip.name),
            };
            self.inst_err(None, format!("core {} does not exist on {on} ({cores} cores)", inst.core));
        }
        // Few deps per instruction: a quadratic duplicate scan beats hashing
        // (this runs once per instruction of every loaded program).
        let mut seen = HashSet::new();
        let small = inst.deps.len() <= 16;
        for (k, &dep) in inst.deps.iter().enumerate() {
            let duplicate = if small { inst.deps[..k].contains(&dep) } else { !seen.insert(dep) };
            if dep == self.id {
                self.inst_err(None, "waits on itself".into());
            } else if dep.0 as usize >= count {
                self.inst_err(None, format!("waits on {dep}, which does not exist ({count} instructions)"));
            } else if duplicate {
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
        if !ap.offset.is_multiple_of(ap.dtype.size() as u64) {
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
                if let (Ok(l), Ok(h)) = (u64::try_from(lo), u64::try_from(hi)) {
                    if let Some((a, b)) = straddle(self.chip, l, h) {
                        let msg = format!("hbm bytes [{lo}, {hi}) straddle the HBM windows of chips {a} and {b}");
                        self.op_err(name, None, msg);
                        return;
                    }
                }
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
            _ => start.is_multiple_of(QUADRANT),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use trainyard_arch::ChipSpec;

    use super::*;
    use crate::ops::ActFn;
    use crate::program::TensorKind;

    const BF: DType = DType::Bf16;
    const F32: DType = DType::F32;

    fn chip(name: &str) -> ChipSpec {
        ChipSpec::by_name(name).unwrap()
    }

    fn decl(name: &str, kind: TensorKind, dtype: DType, shape: &[u64], offset: u64) -> TensorDecl {
        TensorDecl { name: name.into(), kind, dtype, shape: shape.to_vec(), offset }
    }

    // HBM: a [128,128] bf16 @0, b [128,512] bf16 @32768, c [128,512] f32 @163840.
    fn tensors() -> Vec<TensorDecl> {
        vec![
            decl("a", TensorKind::Input, BF, &[128, 128], 0),
            decl("b", TensorKind::Input, BF, &[128, 512], 32768),
            decl("c", TensorKind::Output, F32, &[128, 512], 163840),
        ]
    }

    fn sa() -> Ap {
        Ap::sbuf(0, 128, 0, &[128], BF)
    }
    fn sb() -> Ap {
        Ap::sbuf(0, 128, 256, &[512], BF)
    }
    fn sc() -> Ap {
        Ap::sbuf(0, 128, 1280, &[512], F32)
    }
    fn acc() -> Ap {
        Ap::psum(0, 128, 0, &[512], F32)
    }
    fn mm(dst: Ap, stationary: Ap, moving: Ap) -> Op {
        Op::MatMul { dst, stationary, moving, start: true, stop: true }
    }
    fn dma(queue: u8, dst: Ap, src: Ap) -> Op {
        Op::DmaCopy { queue, dst, src }
    }
    fn copy(engine: Engine, dst: Ap, src: Ap) -> Op {
        Op::Copy { engine, dst, src }
    }
    fn tt(engine: Engine, op: AluOp, dst: Ap, in0: Ap, in1: Ap) -> Op {
        Op::TensorTensor { engine, op, dst, in0, in1 }
    }
    fn stage(op: AluOp, operand: Operand) -> ScalarStage {
        ScalarStage { op, operand, reverse: false }
    }
    fn ts(engine: Engine, dst: Ap, src: Ap, first: ScalarStage, second: Option<ScalarStage>) -> Op {
        Op::TensorScalar { engine, dst, src, first, second }
    }
    fn reduce(op: AluOp, dst: Ap, src: Ap, axes: u8, negate: bool) -> Op {
        Op::TensorReduce { engine: Engine::Vector, op, dst, src, axes, negate }
    }
    fn act(dst: Ap, src: Ap, scale: Operand, bias: Option<Ap>, acc: Option<Ap>) -> Op {
        Op::Activation { func: ActFn::Exp, dst, src, scale, bias, acc }
    }
    fn ints(p: u32, off: u64, f: u32) -> Ap {
        Ap::sbuf(0, p, off, &[f], DType::I32)
    }

    /// DMA two tiles in, matmul, copy PSUM → SBUF, DMA out.
    fn valid() -> Program {
        let mut p = Program::new("mm");
        p.tensors = tensors();
        let a = p.push(Inst::new(dma(0, sa(), Ap::hbm(0, 128, &[128], BF))));
        let b = p.push(Inst::new(dma(1, sb(), Ap::hbm(32768, 128, &[512], BF))));
        let m = p.push(Inst { deps: vec![a, b], ..Inst::new(mm(acc(), sa(), sb())) });
        let c = p.push(Inst { deps: vec![m], ..Inst::new(copy(Engine::Vector, sc(), acc())) });
        p.push(Inst { deps: vec![c], ..Inst::new(dma(0, Ap::hbm(163840, 128, &[512], F32), sc())) });
        p
    }

    fn with(op: Op) -> Program {
        let mut p = valid();
        p.push(Inst::new(op));
        p
    }

    /// The first error is on the last instruction, names it and breaks `rule`.
    fn expect(p: &Program, chip: &ChipSpec, operand: Option<&str>, rule: Option<&str>) -> ValidationError {
        let err = validate(p, chip).expect_err("program should be rejected");
        let last = p.insts.last().unwrap();
        let id = InstId(p.insts.len() as u32 - 1);
        let text = err.to_string();
        assert_eq!((err.inst(), err.operand(), err.rule()), (Some(id), operand, rule), "{text}");
        assert!(text.starts_with(&format!("{id} {}: ", last.op.mnemonic())), "{text}");
        if let Some(o) = operand {
            assert!(text.contains(&format!("operand `{o}`")), "{text}");
        }
        err
    }

    #[test]
    fn valid_program_passes_on_every_bundled_chip() {
        for chip in ChipSpec::bundled().unwrap() {
            assert_eq!(validate_all(&valid(), &chip), vec![], "{}", chip.name);
        }
    }

    #[test]
    fn moving_640_fails_on_trn2_passes_on_trn3() {
        let wide = Ap::sbuf(0, 128, 4096, &[640], BF);
        let p = with(mm(Ap::psum(0, 128, 0, &[640], F32), sa(), wide));
        let err = expect(&p, &chip("trn2"), Some("moving"), Some("HW-ISA-MATMUL"));
        assert_eq!(
            err.to_string(),
            "%5 matmul: operand `moving`: free size 640 exceeds the moving limit 512 of trn2 (HW-ISA-MATMUL)"
        );
        assert_eq!(validate(&p, &chip("trn3")), Ok(()));
        // BF16 results (v4 only) allow twice the moving free size.
        let p = with(mm(Ap::psum(0, 128, 0, &[8192], BF), sa(), Ap::sbuf(0, 128, 4096, &[8192], BF)));
        assert_eq!(validate(&p, &chip("trn3")), Ok(()));
        expect(&p, &chip("trn2"), Some("moving"), Some("HW-ISA-MATMUL"));
    }

    /// (label, chip, broken op, operand at fault, rule broken).
    type Case = (&'static str, &'static str, Op, Option<&'static str>, Option<&'static str>);

    #[test]
    fn each_broken_rule_names_instruction_and_operand() {
        use Engine::*;
        let pp = |p: u32, f: u32| Operand::PerPartition(Ap::sbuf(0, p, 8192, &[f], F32));
        let mut bad_ndims = sc();
        bad_ndims.ndims = 7;
        let mut zero_dim = sc();
        zero_dim.dims[0].size = 0;
        let mut strided = sc();
        strided.partition_stride = 512;
        let big = |off| Ap::sbuf(0, 1, off, &[70000], DType::U8);
        let wide_stride = |off| {
            Ap::new(Space::Sbuf, 0, 1, 0, off, &[Dim { stride: 40000, size: 2 }, Dim { stride: 1, size: 4 }], DType::U8)
        };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Access patterns.
            ("ndims 7", "trn2", copy(Vector, bad_ndims, sc()), Some("dst"), Some("HW-ISA-AP-FREE")),
            ("dim size 0", "trn2", copy(Vector, sc(), zero_dim), Some("src"), Some("HW-ISA-AP-FREE")),
            ("0 partitions", "trn2", dma(0, Ap::sbuf(0, 0, 0, &[4], F32), Ap::hbm(0, 0, &[4], F32)), Some("dst"), Some("HW-ISA-AP-PART")),
            ("past partition 128", "trn2", dma(0, Ap::sbuf(64, 128, 0, &[64], BF), Ap::hbm(0, 128, &[64], BF)), Some("dst"), Some("HW-NC-PART")),
            ("partition stride", "trn2", copy(Vector, strided, sc()), Some("dst"), Some("HW-ISA-AP-PART")),
            ("past partition end", "trn1", copy(Vector, Ap::sbuf(0, 128, 196608 - 1024, &[512], F32), sc()), Some("dst"), Some("HW-NC-PART")),
            ("negative offset", "trn2", copy(Vector, Ap::new(Space::Sbuf, 0, 128, 0, 0, &[Dim { stride: -1, size: 4 }], F32), Ap::sbuf(0, 128, 0, &[4], F32)), Some("dst"), Some("HW-NC-PART")),
            ("past psum", "trn2", copy(Vector, Ap::sbuf(0, 128, 0, &[4096], F32), Ap::psum(0, 128, 4, &[4096], F32)), Some("src"), Some("HW-NC-PART")),
            ("hbm straddle", "trn2", dma(0, sa(), Ap::hbm(32768 - 256, 128, &[128], BF)), Some("src"), None),
            ("hbm outside", "trn2", dma(0, sa(), Ap::hbm(1 << 30, 128, &[128], BF)), Some("src"), None),
            ("hbm start partition", "trn2", dma(0, sa(), Ap { start_partition: 1, ..Ap::hbm(0, 128, &[128], BF) }), Some("src"), Some("HW-MEM-HBM-LINEAR")),
            ("misaligned", "trn2", copy(Vector, Ap::sbuf(0, 128, 2, &[4], F32), Ap::sbuf(0, 128, 64, &[4], F32)), Some("dst"), None),
            ("compute reads hbm", "trn2", copy(Vector, sc(), Ap::hbm(163840, 128, &[512], F32)), Some("src"), Some("HW-ISA-SPACES")),
            ("gpsimd psum", "trn2", copy(GpSimd, sc(), acc()), Some("src"), Some("HW-NC-POOL-SBUF")),
            ("start 32 of 64", "trn2", copy(Vector, Ap::sbuf(32, 64, 0, &[4], F32), Ap::sbuf(0, 64, 64, &[4], F32)), Some("dst"), Some("HW-ISA-AP-PART")),
            ("start 16 of 16", "trn2", copy(Vector, Ap::sbuf(0, 16, 0, &[4], F32), Ap::sbuf(16, 16, 64, &[4], F32)), Some("src"), Some("HW-ISA-AP-PART")),
            ("dim size > u16", "trn2", copy(GpSimd, big(0), big(70000)), Some("dst"), Some("HW-ISA-AP-FREE")),
            ("stride > i16", "trn2", copy(GpSimd, wide_stride(0), Ap::sbuf(0, 1, 90000, &[8], DType::U8)), Some("dst"), Some("HW-ISA-AP-FREE")),
            ("vector psum > 4K", "trn2", copy(Vector, Ap::sbuf(0, 1, 0, &[5000], BF), Ap::psum(0, 1, 0, &[5000], BF)), Some("src"), Some("HW-ISA-TILE")),
            // matmul
            ("stationary in psum", "trn2", mm(acc(), Ap::psum(0, 128, 4096, &[128], BF), sb()), Some("stationary"), Some("HW-ISA-MATMUL")),
            ("dst in sbuf", "trn2", mm(sc(), sa(), sb()), Some("dst"), Some("HW-ISA-MATMUL")),
            ("K mismatch", "trn2", mm(acc(), sa(), Ap::sbuf(0, 64, 256, &[512], BF)), Some("moving"), Some("HW-ISA-MATMUL")),
            ("M > cols", "trn2", mm(acc(), Ap::sbuf(0, 128, 0, &[256], BF), sb()), Some("stationary"), Some("HW-ISA-MATMUL")),
            ("dst partitions", "trn2", mm(Ap::psum(0, 64, 0, &[512], F32), sa(), sb()), Some("dst"), Some("HW-ISA-MATMUL")),
            ("dst free", "trn2", mm(Ap::psum(0, 128, 0, &[256], F32), sa(), sb()), Some("dst"), Some("HW-ISA-MATMUL")),
            ("int input", "trn2", mm(acc(), Ap::sbuf(0, 128, 0, &[128], DType::I8), sb()), Some("stationary"), Some("HW-ISA-MATMUL-DT")),
            ("f32 with bf16", "trn2", mm(acc(), Ap::sbuf(0, 128, 0, &[128], F32), sb()), Some("moving"), Some("HW-ISA-MATMUL-DT")),
            ("bf16 dst on v3", "trn2", mm(Ap::psum(0, 128, 0, &[512], BF), sa(), sb()), Some("dst"), Some("HW-ISA-MATMUL-DT")),
            ("crosses a bank", "trn1", mm(Ap::psum(0, 128, 1024, &[512], F32), sa(), sb()), Some("dst"), Some("HW-ISA-MATMUL")),
            // transpose
            ("pe transpose from psum", "trn2", Op::Transpose { engine: Tensor, dst: Ap::psum(0, 64, 0, &[128], BF), src: Ap::psum(0, 128, 4096, &[64], BF) }, Some("src"), Some("HW-ISA-TRANSPOSE")),
            ("pe transpose shape", "trn2", Op::Transpose { engine: Tensor, dst: Ap::psum(0, 64, 0, &[64], BF), src: Ap::sbuf(0, 128, 0, &[64], BF) }, Some("dst"), Some("HW-ISA-TRANSPOSE")),
            ("pe transpose dtype", "trn2", Op::Transpose { engine: Tensor, dst: Ap::psum(0, 64, 0, &[128], DType::F16), src: Ap::sbuf(0, 128, 0, &[64], BF) }, Some("dst"), Some("HW-ISA-TRANSPOSE")),
            ("dve transpose 64", "trn2", Op::Transpose { engine: Vector, dst: Ap::sbuf(0, 64, 0, &[64], BF), src: Ap::sbuf(0, 64, 256, &[64], BF) }, Some("src"), Some("HW-ISA-TRANSPOSE")),
            ("act transpose", "trn2", Op::Transpose { engine: Scalar, dst: Ap::sbuf(0, 32, 0, &[32], BF), src: Ap::sbuf(0, 32, 256, &[32], BF) }, None, Some("HW-ISA-TRANSPOSE")),
            // tensor_tensor
            ("tt on scalar", "trn2", tt(Scalar, AluOp::Add, sc(), sc(), sc()), None, Some("HW-ISA-TT")),
            ("pow on vector", "trn2", tt(Vector, AluOp::Pow, sc(), sc(), sc()), None, Some("HW-OP-ARITH")),
            ("tt shape", "trn2", tt(Vector, AluOp::Add, sc(), sc(), Ap::sbuf(0, 64, 0, &[512], F32)), Some("in1"), Some("HW-ISA-TT")),
            ("tt both psum", "trn2", tt(Vector, AluOp::Add, sc(), acc(), acc()), Some("in1"), Some("HW-ISA-TT")),
            ("bitwise float", "trn2", tt(Vector, AluOp::BitAnd, ints(128, 0, 8), ints(128, 64, 8), Ap::sbuf(0, 128, 128, &[8], F32)), Some("in1"), Some("HW-OP-BITVEC")),
            // tensor_scalar
            ("ts on tensor", "trn2", ts(Tensor, sc(), sc(), stage(AluOp::Mul, Operand::Imm(2.0)), None), None, Some("HW-ISA-TS")),
            ("ts operand [P,2]", "trn2", ts(Vector, sc(), sc(), stage(AluOp::Mul, pp(128, 2)), None), Some("operand0"), Some("HW-ISA-TS")),
            ("ts operand1 P", "trn2", ts(Vector, sc(), sc(), stage(AluOp::Mul, Operand::Imm(2.0)), Some(stage(AluOp::Add, pp(64, 1)))), Some("operand1"), Some("HW-ISA-TS")),
            ("ts bitwise on gpsimd", "trn2", ts(GpSimd, ints(128, 0, 8), ints(128, 64, 8), stage(AluOp::ShiftLeft, Operand::Imm(1.0)), None), None, Some("HW-ISA-TS")),
            ("ts mixed classes", "trn2", ts(Vector, ints(128, 0, 8), ints(128, 64, 8), stage(AluOp::Add, Operand::Imm(1.0)), Some(stage(AluOp::BitAnd, Operand::Imm(1.0)))), None, Some("HW-ISA-TS")),
            ("ts act pair v3", "trn2", ts(Scalar, sc(), sc(), stage(AluOp::Sub, Operand::Imm(1.0)), None), None, Some("HW-ISA-TS")),
            ("ts act pair v4", "trn3", ts(Scalar, sc(), sc(), stage(AluOp::Max, Operand::Imm(1.0)), None), None, Some("HW-ISA-ACTIVATE2")),
            // tensor_reduce
            ("reduce pow", "trn2", reduce(AluOp::Pow, Ap::sbuf(0, 128, 0, &[1], F32), sc(), 1, false), None, Some("HW-OP-ARITH")),
            ("reduce 0 axes", "trn2", reduce(AluOp::Add, Ap::sbuf(0, 128, 0, &[1], F32), sc(), 0, false), None, Some("HW-ISA-TREDUCE")),
            ("reduce 2 axes of 1", "trn2", reduce(AluOp::Add, Ap::sbuf(0, 128, 0, &[1], F32), sc(), 2, false), None, Some("HW-ISA-TREDUCE")),
            ("reduce dst free", "trn2", reduce(AluOp::Max, Ap::sbuf(0, 128, 0, &[8], F32), Ap::sbuf(0, 128, 64, &[4, 16], F32), 1, false), Some("dst"), Some("HW-ISA-TREDUCE")),
            ("reduce dst P", "trn2", reduce(AluOp::Max, Ap::sbuf(0, 64, 0, &[1], F32), sc(), 1, false), Some("dst"), Some("HW-ISA-TREDUCE")),
            ("negate bitwise", "trn2", reduce(AluOp::BitOr, ints(128, 0, 1), ints(128, 64, 8), 1, true), None, Some("HW-ISA-TREDUCE")),
            // activation
            ("act shape", "trn2", act(sc(), Ap::sbuf(0, 128, 0, &[256], F32), Operand::Imm(1.0), None, None), Some("src"), Some("HW-ISA-ACTIVATION")),
            ("act bias [P,2]", "trn2", act(sc(), sc(), Operand::Imm(1.0), Some(Ap::sbuf(0, 128, 0, &[2], F32)), None), Some("bias"), Some("HW-ISA-ACTIVATION")),
            ("act scale P", "trn2", act(sc(), sc(), pp(64, 1), None, None), Some("scale"), Some("HW-ISA-ACTIVATION")),
            ("act acc bf16", "trn2", act(sc(), sc(), Operand::Imm(1.0), None, Some(Ap::sbuf(0, 128, 0, &[1], BF))), Some("acc"), Some("HW-STATE-ACT-ACC")),
            // copy, select, iota, memset
            ("copy on pe", "trn2", copy(Tensor, sc(), Ap::sbuf(0, 128, 8192, &[512], F32)), None, Some("HW-ISA-COPY")),
            ("act copy on v2", "trn1", copy(Scalar, sc(), acc()), None, Some("HW-ISA-COPY")),
            ("copy shape", "trn2", copy(Vector, sc(), Ap::sbuf(0, 128, 8192, &[256], F32)), Some("src"), Some("HW-ISA-COPY")),
            ("select shape", "trn2", Op::Select { engine: Vector, dst: sc(), pred: sc(), on_true: sc(), on_false: Ap::sbuf(0, 128, 0, &[1], F32) }, Some("on_false"), Some("HW-ISA-SELECT")),
            ("select on act", "trn2", Op::Select { engine: Scalar, dst: sc(), pred: sc(), on_true: sc(), on_false: sc() }, None, Some("HW-ISA-SELECT")),
            ("iota to psum", "trn2", Op::Iota { dst: Ap::psum(0, 128, 0, &[8], DType::I32), base: 0, channel_multiplier: 1, steps: [1, 0, 0, 0] }, Some("dst"), Some("HW-NC-POOL-SBUF")),
            ("memset on act", "trn2", Op::Memset { engine: Scalar, dst: sc(), value: 0.0 }, None, Some("HW-ISA-COPY")),
            // cross-partition
            ("partition reduce P", "trn2", Op::PartitionReduce { op: AluOp::Add, dst: Ap::sbuf(0, 2, 0, &[8], F32), src: Ap::sbuf(0, 128, 64, &[8], F32) }, Some("dst"), Some("HW-ISA-TREDUCE")),
            ("partition reduce min", "trn2", Op::PartitionReduce { op: AluOp::Min, dst: Ap::sbuf(0, 1, 0, &[8], F32), src: Ap::sbuf(0, 128, 64, &[8], F32) }, None, Some("HW-ISA-TREDUCE")),
            ("partition reduce free", "trn2", Op::PartitionReduce { op: AluOp::Max, dst: Ap::sbuf(0, 1, 0, &[4], F32), src: Ap::sbuf(0, 128, 64, &[8], F32) }, Some("dst"), Some("HW-ISA-TREDUCE")),
            ("broadcast from 2", "trn2", Op::PartitionBroadcast { dst: Ap::sbuf(0, 128, 0, &[8], F32), src: Ap::sbuf(0, 2, 64, &[8], F32) }, Some("src"), Some("HW-ISA-XPART")),
            ("shuffle length", "trn2", Op::PartitionShuffle { dst: Ap::sbuf(0, 4, 0, &[8], F32), src: Ap::sbuf(0, 4, 64, &[8], F32), perm: vec![3, 2, 1] }, Some("dst"), Some("HW-ISA-SHUFFLE")),
            ("shuffle entry", "trn2", Op::PartitionShuffle { dst: Ap::sbuf(0, 4, 0, &[8], F32), src: Ap::sbuf(0, 4, 64, &[8], F32), perm: vec![3, 2, 1, 4] }, Some("src"), Some("HW-ISA-SHUFFLE")),
            // DMA
            ("dma queue", "trn2", dma(16, sa(), Ap::hbm(0, 128, &[128], BF)), None, Some("HW-NC-DMA")),
            ("dma elements", "trn2", dma(0, sa(), Ap::hbm(0, 64, &[128], BF)), Some("dst"), Some("HW-ISA-DMACOPY")),
            ("gather index dtype", "trn2", Op::DmaGather { queue: 0, dst: sb(), table: Ap::hbm(32768, 128, &[512], BF), index: Ap::sbuf(0, 128, 8192, &[1], F32) }, Some("index"), Some("HW-ISA-DMACOPY")),
            ("gather index [P,2]", "trn2", Op::DmaGather { queue: 0, dst: sb(), table: Ap::hbm(32768, 128, &[512], BF), index: ints(128, 8192, 2) }, Some("index"), Some("HW-ISA-DMACOPY")),
            ("gather row size", "trn2", Op::DmaGather { queue: 0, dst: sb(), table: Ap::hbm(0, 128, &[128], BF), index: ints(128, 8192, 1) }, Some("dst"), Some("HW-ISA-DMACOPY")),
            ("gather table in sbuf", "trn2", Op::DmaGather { queue: 0, dst: sb(), table: Ap::sbuf(0, 128, 4096, &[512], BF), index: ints(128, 8192, 1) }, Some("table"), Some("HW-ISA-DMACOPY")),
        ];
        for (label, chip_name, op, operand, rule) in cases {
            let p = with(op);
            let chip = chip(chip_name);
            let err = validate(&p, &chip).expect_err(label);
            let text = err.to_string();
            let id = InstId(5);
            assert_eq!((err.inst(), err.operand(), err.rule()), (Some(id), operand, rule), "{label}: {text}");
            assert!(text.starts_with(&format!("%5 {}: ", p.insts[5].op.mnemonic())), "{label}: {text}");
            if let Some(o) = operand {
                assert!(text.contains(&format!("operand `{o}`")), "{label}: {text}");
            }
            if let Some(r) = rule {
                assert!(text.ends_with(&format!("({r})")), "{label}: {text}");
            }
        }
    }

    #[test]
    fn generation_dependent_rules_pass_where_allowed() {
        let trn3 = chip("trn3");
        let ok = [
            mm(Ap::psum(0, 128, 0, &[512], BF), sa(), sb()),
            mm(Ap::psum(0, 128, 1024, &[512], F32), sa(), sb()),
            ts(Engine::Scalar, sc(), sc(), stage(AluOp::Sub, Operand::Imm(1.0)), None),
        ];
        for op in ok {
            assert_eq!(validate(&with(op.clone()), &trn3), Ok(()), "{op:?}");
        }
        assert_eq!(validate(&with(copy(Engine::Scalar, sc(), acc())), &chip("trn2")), Ok(()));
    }

    #[test]
    fn hbm_errors_name_the_tensors() {
        let err = expect(&with(dma(0, sa(), Ap::hbm(32768 - 256, 128, &[128], BF))), &chip("trn2"), Some("src"), None);
        let text = err.to_string();
        assert!(text.contains("`a` [0, 32768)") && text.contains("`b`"), "{text}");
        let err = expect(&with(dma(0, sa(), Ap::hbm(1 << 30, 128, &[128], BF))), &chip("trn2"), Some("src"), None);
        assert!(err.to_string().contains("outside every declared tensor"), "{err}");
    }

    #[test]
    fn instruction_level_errors() {
        let trn2 = chip("trn2");
        let mut p = valid();
        p.insts[4].core = 8;
        let err = validate(&p, &trn2).unwrap_err();
        assert_eq!((err.inst(), err.operand()), (Some(InstId(4)), None));
        assert!(err.to_string().contains("core 8 does not exist on trn2 (8 cores)"), "{err}");
        for (deps, want) in [
            (vec![InstId(9)], "waits on %9, which does not exist"),
            (vec![InstId(4)], "waits on itself"),
            (vec![InstId(3), InstId(3)], "waits on %3 twice"),
        ] {
            let mut p = valid();
            p.insts[4].deps = deps;
            let err = validate(&p, &trn2).unwrap_err();
            assert_eq!(err.inst(), Some(InstId(4)));
            assert!(err.to_string().starts_with("%4 dma_copy: ") && err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn wait_cycles_are_deadlocks() {
        let trn2 = chip("trn2");
        // %1 waits on %3, which sits behind %2 on the vector queue, which waits on %1.
        let mut p = Program::new("dl");
        p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: sc(), value: 0.0 }));
        p.push(Inst {
            deps: vec![InstId(3)],
            ..Inst::new(Op::Memset { engine: Engine::GpSimd, dst: sb(), value: 0.0 })
        });
        p.push(Inst {
            deps: vec![InstId(1)],
            ..Inst::new(Op::Memset { engine: Engine::Vector, dst: sc(), value: 1.0 })
        });
        p.push(Inst::new(Op::Memset { engine: Engine::Vector, dst: sc(), value: 2.0 }));
        let errs = validate_all(&p, &trn2);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].inst(), errs[0].rule()), (Some(InstId(1)), Some("HW-NC-ENGINES")));
        assert!(errs[0].to_string().contains("%1 waits on %3 waits on %2 waits on %1"), "{}", errs[0]);
        // Forward waits without a cycle are fine.
        p.insts[2].deps.clear();
        assert_eq!(validate(&p, &trn2), Ok(()));
    }

    #[test]
    fn tensor_declaration_errors_name_the_tensor() {
        let trn1 = chip("trn1");
        let cases: Vec<(Vec<TensorDecl>, &str, &str)> = vec![
            (vec![decl("", TensorKind::Input, F32, &[4], 0)], "", "empty name"),
            (
                vec![decl("x", TensorKind::Input, F32, &[4], 0), decl("x", TensorKind::Input, F32, &[4], 64)],
                "x",
                "declared twice",
            ),
            (
                vec![decl("x", TensorKind::Input, F32, &[64], 0), decl("y", TensorKind::Input, F32, &[4], 128)],
                "y",
                "overlaps tensor `x`",
            ),
            (
                vec![decl("x", TensorKind::Input, F32, &[1 << 20, 1 << 20], 0)],
                "x",
                "exceed the 34359738368-byte HBM of trn1",
            ),
            (vec![decl("x", TensorKind::Input, F32, &[u64::MAX, 4], 0)], "x", "overflows"),
            (vec![decl("x", TensorKind::Input, F32, &[4], 2)], "x", "not a multiple of the f32 size"),
        ];
        for (tensors, name, want) in cases {
            let p = Program { tensors, ..Program::new("t") };
            let err = validate(&p, &trn1).unwrap_err();
            assert_eq!(err.tensor(), Some(name), "{err}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("tensor `{name}`: ")) && text.contains(want), "{text}");
        }
    }

    #[test]
    fn multi_chip_cores_and_hbm_windows() {
        let two = chip("trn1").with_chips(2).unwrap();
        let gib32 = 32u64 << 30;
        // Core 3 and chip 1's HBM exist on two chips, not on one.
        let mut p = valid();
        p.tensors.push(decl("r", TensorKind::Scratch, BF, &[128, 128], gib32));
        p.push(Inst { core: 3, ..Inst::new(dma(0, Ap::hbm(gib32, 128, &[128], BF), sa())) });
        assert_eq!(validate(&p, &two), Ok(()));
        assert!(validate(&p, &chip("trn1")).unwrap_err().to_string().contains("exceed the 34359738368-byte HBM"));
        p.insts.last_mut().unwrap().core = 4;
        let err = validate(&p, &two).unwrap_err().to_string();
        assert!(err.contains("core 4 does not exist on 2 × trn1 (4 cores)"), "{err}");
        // A tensor across the border of two chips' windows.
        let straddling =
            Program { tensors: vec![decl("x", TensorKind::Input, F32, &[64], gib32 - 128)], ..Program::new("t") };
        let err = validate(&straddling, &two).unwrap_err();
        assert!(err.to_string().contains("straddle the HBM windows of chips 0 and 1"), "{err}");
        // An access pattern across the border names its instruction and operand.
        let mut p = valid();
        p.tensors.push(decl("r", TensorKind::Scratch, BF, &[128, 128], gib32));
        p.push(Inst::new(dma(0, sa(), Ap::hbm(gib32 - 256, 128, &[128], BF))));
        let err = expect(&p, &two, Some("src"), None);
        assert!(err.to_string().contains("straddle the HBM windows of chips 0 and 1"), "{err}");
    }

    #[test]
    fn validate_all_reports_every_error_in_order() {
        let mut p = valid();
        p.push(Inst::new(dma(16, sa(), Ap::hbm(0, 128, &[128], BF))));
        p.push(Inst::new(copy(Engine::Tensor, sc(), Ap::sbuf(0, 128, 8192, &[256], F32))));
        let errs = validate_all(&p, &chip("trn2"));
        let got: Vec<_> = errs.iter().map(|e| (e.inst(), e.operand(), e.rule())).collect();
        assert_eq!(
            got,
            vec![
                (Some(InstId(5)), None, Some("HW-NC-DMA")),
                (Some(InstId(6)), None, Some("HW-ISA-COPY")),
                (Some(InstId(6)), Some("src"), Some("HW-ISA-COPY")),
            ]
        );
        assert_eq!(validate(&p, &chip("trn2")).unwrap_err(), errs[0]);
    }

    fn arb_ap() -> impl Strategy<Value = Ap> {
        let dim = (any::<i64>(), any::<u32>()).prop_map(|(stride, size)| Dim { stride, size });
        let small = (-70i64..70, 0u32..6).prop_map(|(stride, size)| Dim { stride, size });
        let dims = prop::collection::vec(prop_oneof![small, dim], 4);
        let space = prop_oneof![Just(Space::Hbm), Just(Space::Sbuf), Just(Space::Psum)];
        let dtype = prop::sample::select(DType::ALL.to_vec());
        (space, any::<u32>(), prop_oneof![0u32..130, any::<u32>()], any::<i64>(), any::<u64>(), dims, 0u8..9, dtype)
            .prop_map(|(space, start, partitions, pstride, offset, d, ndims, dtype)| {
                let mut ap = Ap::new(space, start % 200, partitions, pstride, offset % (1 << 20), &d, dtype);
                ap.ndims = ndims;
                ap
            })
    }

    proptest! {
        #[test]
        fn span_matches_ap_byte_span(s0 in -64i64..64, n0 in 1u32..9, s1 in -64i64..64, n1 in 1u32..9,
                                     ps in -512i64..512, p in 1u32..5, off in 4096u64..8192, hbm in any::<bool>()) {
            let space = if hbm { Space::Hbm } else { Space::Sbuf };
            let ap = Ap::new(space, 0, p, ps, off, &[Dim { stride: s0, size: n0 }, Dim { stride: s1, size: n1 }], F32);
            let want = ap.byte_span().map(|(lo, hi)| (i128::from(lo), i128::from(hi)));
            prop_assert_eq!(span(&ap), want);
        }

        #[test]
        fn arbitrary_operands_never_panic(a in arb_ap(), b in arb_ap(), c in arb_ap(), d in arb_ap(), axes in any::<u8>(),
                                          perm in prop::collection::vec(any::<u8>(), 0..6), queue in any::<u8>()) {
            let trn2 = chip("trn2");
            let ops = [
                mm(a, b, c),
                Op::Transpose { engine: Engine::Tensor, dst: a, src: b },
                Op::Transpose { engine: Engine::Vector, dst: a, src: b },
                tt(Engine::Vector, AluOp::Add, a, b, c),
                ts(Engine::Scalar, a, b, stage(AluOp::Mul, Operand::PerPartition(c)), Some(stage(AluOp::Add, Operand::PerPartition(d)))),
                Op::TensorReduce { engine: Engine::Vector, op: AluOp::Add, dst: a, src: b, axes, negate: false },
                act(a, b, Operand::PerPartition(c), Some(d), Some(c)),
                Op::Select { engine: Engine::Vector, dst: a, pred: b, on_true: c, on_false: d },
                Op::PartitionReduce { op: AluOp::Add, dst: a, src: b },
                Op::PartitionShuffle { dst: a, src: b, perm },
                dma(queue, a, b),
                Op::DmaGather { queue, dst: a, table: b, index: c },
            ];
            for op in ops {
                let _ = validate_all(&with(op), &trn2);
            }
        }
    }
}
