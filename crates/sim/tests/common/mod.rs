//! Shared helpers of the simulator's integration tests: reference dtype
//! conversions written independently of `trainyard-arch`, and a small harness
//! that loads host data into on-chip tiles, runs instructions and stores the
//! results back.
#![allow(dead_code)]

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{Ap, Inst, InstId, Op, Program, TensorDecl, TensorKind};
use trainyard_sim::{RunResult, SimError, SimOptions, Simulator};

/// A bundled chip.
pub fn chip(name: &str) -> ChipSpec {
    ChipSpec::by_name(name).expect("bundled chip")
}

/// Options that record events and check races (the defaults), functional mode.
pub fn opts() -> SimOptions {
    SimOptions::default()
}

// ---------------------------------------------------------------------------
// Reference dtype conversions.

/// Geometry of an fp8 format: (exponent bits, mantissa bits, bias, has infinities).
fn fp8_geometry(d: DType) -> (u32, u32, i32, bool) {
    match d {
        DType::F8E4M3 => (4, 3, 7, false),
        DType::F8E5M2 => (5, 2, 15, true),
        _ => unreachable!("not an fp8 type"),
    }
}

/// Decodes an fp8 pattern from its bit fields (OCP E4M3FN / E5M2).
pub fn fp8_decode_ref(d: DType, bits: u8) -> f64 {
    let (eb, mb, bias, has_inf) = fp8_geometry(d);
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((bits >> mb) & ((1 << eb) - 1) as u8) as i32;
    let m = (bits & ((1 << mb) - 1) as u8) as f64;
    let emax_field = (1 << eb) - 1;
    if has_inf && e == emax_field {
        return if m == 0.0 { sign * f64::INFINITY } else { f64::NAN };
    }
    if !has_inf && e == emax_field && m as u32 == (1 << mb) - 1 {
        return f64::NAN;
    }
    let scale = (1u32 << mb) as f64;
    let mag = if e == 0 { m / scale * 2f64.powi(1 - bias) } else { (1.0 + m / scale) * 2f64.powi(e - bias) };
    sign * mag
}

/// Rounds to fp8 by searching the nearest finite code (ties to the even
/// code), saturating finite overflow to ±max; ±inf saturates for E4M3 and
/// stays infinite for E5M2.
pub fn fp8_encode_ref(d: DType, x: f32) -> u8 {
    let (_, _, _, has_inf) = fp8_geometry(d);
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return 0x7f | sign;
    }
    if x.is_infinite() && has_inf {
        return 0x7c | sign;
    }
    let a = (x as f64).abs();
    let max_code = if has_inf { 0x7bu8 } else { 0x7e };
    if a >= fp8_decode_ref(d, max_code) {
        return max_code | sign;
    }
    let mut best: (u8, f64) = (0, f64::INFINITY);
    for code in 0u8..0x80 {
        let v = fp8_decode_ref(d, code);
        if !v.is_finite() {
            continue;
        }
        let dist = (v - a).abs();
        if dist < best.1 || (dist == best.1 && code % 2 == 0) {
            best = (code, dist);
        }
    }
    best.0 | sign
}

/// Reference RNE + saturation of a real value to an integer dtype (NaN → 0).
pub fn int_round_ref(d: DType, x: f64) -> i64 {
    let (lo, hi) = int_range(d);
    if x.is_nan() {
        return 0;
    }
    let r = x.round_ties_even();
    if r < lo as f64 {
        lo
    } else if r > hi as f64 {
        hi
    } else {
        r as i64
    }
}

/// Range of an integer dtype.
pub fn int_range(d: DType) -> (i64, i64) {
    match d {
        DType::I8 => (-128, 127),
        DType::I16 => (-32768, 32767),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::U8 => (0, 255),
        DType::U16 => (0, 65535),
        DType::U32 => (0, u32::MAX as i64),
        _ => unreachable!("not an integer type"),
    }
}

/// Bit pattern of an integer value (which must be in range) in `d`.
pub fn int_bits(d: DType, v: i64) -> u32 {
    let mask: u64 = match d.size() {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    (v as u64 & mask) as u32
}

/// Exact value of an integer pattern.
pub fn int_value(d: DType, bits: u32) -> i64 {
    match d {
        DType::I8 => bits as u8 as i8 as i64,
        DType::I16 => bits as u16 as i16 as i64,
        DType::I32 => bits as i32 as i64,
        DType::U8 => (bits & 0xff) as i64,
        DType::U16 => (bits & 0xffff) as i64,
        DType::U32 => bits as i64,
        _ => unreachable!("not an integer type"),
    }
}

/// Reference store of an `f32` into `d` with round-to-nearest-even.
pub fn round_bits_ref(d: DType, x: f32) -> u32 {
    match d {
        DType::F32 => x.to_bits(),
        DType::Bf16 => half::bf16::from_f32(x).to_bits() as u32,
        DType::F16 => half::f16::from_f32(x).to_bits() as u32,
        DType::F8E4M3 | DType::F8E5M2 => fp8_encode_ref(d, x) as u32,
        _ => int_bits(d, int_round_ref(d, x as f64)),
    }
}

/// Reference decode of a pattern of `d` to f64.
pub fn decode_ref(d: DType, bits: u32) -> f64 {
    match d {
        DType::F32 => f32::from_bits(bits) as f64,
        DType::Bf16 => half::bf16::from_bits(bits as u16).to_f64(),
        DType::F16 => half::f16::from_bits(bits as u16).to_f64(),
        DType::F8E4M3 | DType::F8E5M2 => fp8_decode_ref(d, bits as u8),
        _ => int_value(d, bits) as f64,
    }
}

/// `x` rounded (RNE) to `d`, as f64.
pub fn round_ref(d: DType, x: f32) -> f64 {
    decode_ref(d, round_bits_ref(d, x))
}

/// Little-endian bytes of element patterns.
pub fn to_bytes(d: DType, bits: &[u32]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()[..d.size()].to_vec()).collect()
}

/// Element patterns of little-endian bytes.
pub fn from_bytes(d: DType, bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(d.size())
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// Bytes of `vals` rounded (RNE) to `d`.
pub fn encode(d: DType, vals: &[f32]) -> Vec<u8> {
    let bits: Vec<u32> = vals.iter().map(|&v| round_bits_ref(d, v)).collect();
    to_bytes(d, &bits)
}

/// Values of the elements in `bytes`.
pub fn decode(d: DType, bytes: &[u8]) -> Vec<f64> {
    from_bytes(d, bytes).into_iter().map(|b| decode_ref(d, b)).collect()
}

/// Bytes of exact integer values (in range) of `d`.
pub fn encode_ints(d: DType, vals: &[i64]) -> Vec<u8> {
    let bits: Vec<u32> = vals.iter().map(|&v| int_bits(d, v)).collect();
    to_bytes(d, &bits)
}

/// Integer values of the elements in `bytes`.
pub fn decode_ints(d: DType, bytes: &[u8]) -> Vec<i64> {
    from_bytes(d, bytes).into_iter().map(|b| int_value(d, b)).collect()
}

/// One unit in the last place of `x` in a format with `mantissa_bits`
/// explicit bits and minimum normal exponent `emin`.
pub fn ulp(x: f64, mantissa_bits: i32, emin: i32) -> f64 {
    let e = if x == 0.0 || !x.is_finite() { emin } else { (x.abs().log2().floor() as i32).max(emin) };
    2f64.powi(e - mantissa_bits)
}

/// ULP of `x` in `d` (floats only).
pub fn ulp_of(d: DType, x: f64) -> f64 {
    match d {
        DType::F32 => ulp(x, 23, -126),
        DType::Bf16 => ulp(x, 7, -126),
        DType::F16 => ulp(x, 10, -14),
        DType::F8E4M3 => ulp(x, 3, -6),
        DType::F8E5M2 => ulp(x, 2, -14),
        _ => 1.0,
    }
}

/// Equal values, or both NaN.
pub fn same_value(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// A tiny deterministic generator for test data (xorshift).
pub struct Lcg(pub u64);

impl Lcg {
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// `n` uniform values.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

// ---------------------------------------------------------------------------
// A harness: load tiles, run instructions in order, store tiles.

/// A program under construction: every compute instruction waits on all
/// loads and all earlier compute instructions, every store on all of them.
pub struct Case {
    /// The program.
    pub program: Program,
    inputs: Vec<(String, Vec<u8>)>,
    outputs: Vec<String>,
    before_store: Vec<InstId>,
    next_hbm: u64,
    next_queue: u8,
}

impl Case {
    /// An empty case.
    pub fn new(name: &str) -> Self {
        Case {
            program: Program::new(name),
            inputs: Vec::new(),
            outputs: Vec::new(),
            before_store: Vec::new(),
            next_hbm: 0,
            next_queue: 0,
        }
    }

    fn alloc(&mut self, name: String, kind: TensorKind, dtype: DType, elements: u64) -> u64 {
        let offset = self.next_hbm;
        self.next_hbm = (offset + elements * dtype.size() as u64).div_ceil(64) * 64;
        self.program.tensors.push(TensorDecl { name, kind, dtype, shape: vec![elements], offset });
        offset
    }

    fn queue(&mut self) -> u8 {
        let q = self.next_queue;
        self.next_queue = (q + 1) % 16;
        q
    }

    /// Declares an input tensor of `bytes` (elements of `d`); returns its HBM offset.
    pub fn hbm_input(&mut self, d: DType, bytes: Vec<u8>) -> u64 {
        let name = format!("in{}", self.inputs.len());
        let offset = self.alloc(name.clone(), TensorKind::Input, d, (bytes.len() / d.size()) as u64);
        self.inputs.push((name, bytes));
        offset
    }

    /// Declares an output tensor of `elements` of `d`; returns its HBM offset
    /// and its index in the outputs.
    pub fn hbm_output(&mut self, d: DType, elements: u64) -> (u64, usize) {
        let name = format!("out{}", self.outputs.len());
        let offset = self.alloc(name.clone(), TensorKind::Output, d, elements);
        self.outputs.push(name);
        (offset, self.outputs.len() - 1)
    }

    /// The input tensors' names and bytes.
    pub fn inputs(&self) -> &[(String, Vec<u8>)] {
        &self.inputs
    }

    /// The output tensors' names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Appends an instruction as is (its deps are the caller's business).
    pub fn push(&mut self, inst: Inst) -> InstId {
        self.program.push(inst)
    }

    /// Loads `bytes` (element order of `ap`, dtype of `ap`) into `ap` with a DMA.
    pub fn load(&mut self, ap: Ap, bytes: Vec<u8>) -> InstId {
        assert_eq!(bytes.len() as u64, ap.bytes(), "host data size");
        let name = format!("in{}", self.inputs.len());
        let offset = self.alloc(name.clone(), TensorKind::Input, ap.dtype, ap.elements());
        let src = Ap::hbm(offset, ap.partitions, &[ap.free_size() as u32], ap.dtype);
        let queue = self.queue();
        let id = self.program.push(Inst::new(Op::DmaCopy { queue, dst: ap, src }));
        self.inputs.push((name, bytes));
        self.before_store.push(id);
        id
    }

    /// Loads `vals` rounded (RNE) to `ap.dtype`; returns the values as stored.
    pub fn load_vals(&mut self, ap: Ap, vals: &[f32]) -> Vec<f64> {
        let bytes = encode(ap.dtype, vals);
        let stored = decode(ap.dtype, &bytes);
        self.load(ap, bytes);
        stored
    }

    /// Loads exact integers into `ap`.
    pub fn load_ints(&mut self, ap: Ap, vals: &[i64]) {
        self.load(ap, encode_ints(ap.dtype, vals));
    }

    /// Appends a compute instruction that waits on everything before it.
    pub fn op(&mut self, op: Op) -> InstId {
        let mut inst = Inst::new(op);
        inst.deps = self.before_store.clone();
        let id = self.program.push(inst);
        self.before_store = vec![id];
        id
    }

    /// Stores `ap` (element order) into a new output tensor; returns its index.
    pub fn store(&mut self, ap: Ap) -> usize {
        let name = format!("out{}", self.outputs.len());
        let offset = self.alloc(name.clone(), TensorKind::Output, ap.dtype, ap.elements());
        let dst = Ap::hbm(offset, ap.partitions, &[ap.free_size() as u32], ap.dtype);
        let queue = self.queue();
        let mut inst = Inst::new(Op::DmaCopy { queue, dst, src: ap });
        inst.deps = self.before_store.clone();
        self.program.push(inst);
        self.outputs.push(name);
        self.outputs.len() - 1
    }

    /// Runs on `chip` with `opts`; returns the run and every output's bytes.
    pub fn run_with(&self, chip: &ChipSpec, opts: SimOptions) -> Result<(RunResult, Vec<Vec<u8>>), SimError> {
        let mut sim = Simulator::new(chip, &self.program, opts)?;
        for (name, bytes) in &self.inputs {
            sim.write_tensor(name, bytes)?;
        }
        let result = sim.run()?;
        let outs = self.outputs.iter().map(|n| sim.read_tensor(n)).collect::<Result<Vec<_>, _>>()?;
        Ok((result, outs))
    }

    /// Runs on `chip` with default options and returns the outputs.
    pub fn run(&self, chip: &ChipSpec) -> Vec<Vec<u8>> {
        match self.run_with(chip, opts()) {
            Ok((_, outs)) => outs,
            Err(e) => panic!("{}: {e}", self.program.name),
        }
    }
}
