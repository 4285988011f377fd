//! Tests of the text form.

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
use proptest::sample::Index;

use super::strategies::{ap as any_ap, inst, program};
use super::*;

const HEADER: &str = ".version 1\n.program t\n";

fn parse_err(body: &str) -> TextError {
    Program::parse(&format!("{HEADER}{body}")).expect_err("text should not parse")
}

fn field_err(body: &str) -> (usize, usize, &'static str, &'static str, ValueError) {
    let e = parse_err(body);
    match e.kind {
        TextErrorKind::BadField { context, field, error } => (e.line, e.column, context, field, error),
        other => panic!("expected a field error, got {other:?}"),
    }
}

fn one_inst(line: &str) -> Op {
    let p = Program::parse(&format!("{HEADER}{line}\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.insts.len(), 1);
    p.insts[0].op.clone()
}

proptest! {
    #[test]
    fn text_round_trip(p in program(false)) {
        let text = p.to_text();
        let q = Program::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&q, &p);
        prop_assert_eq!(q.to_bytes(), p.to_bytes(), "bit-exact (signed zeros)");
        prop_assert_eq!(q.to_text(), text);
    }

    #[test]
    fn text_round_trip_keeps_nan_bits(p in program(true)) {
        let text = p.to_text();
        let q = Program::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        // postcard stores floats as raw bits: equal bytes = bit-identical programs.
        prop_assert_eq!(q.to_bytes(), p.to_bytes());
        prop_assert_eq!(q.to_text(), text);
    }

    #[test]
    fn every_inst_line_parses_alone(i in inst(true)) {
        let line = format_inst(InstId(0), &i);
        prop_assert!(!line.contains('\n'));
        let q = Program::parse(&format!("{HEADER}{line}")).map_err(|e| TestCaseError::fail(format!("{e}\n{line}")))?;
        prop_assert_eq!(q.insts.len(), 1);
        prop_assert_eq!(format_inst(InstId(0), &q.insts[0]), line);
    }

    #[test]
    fn ap_round_trip(a in any_ap()) {
        let s = format_ap(&a);
        prop_assert_eq!(parse_ap(&s), Ok(a));
        prop_assert_eq!(s.parse::<Ap>(), Ok(a));
        prop_assert_eq!(a.to_string(), s);
    }

    #[test]
    fn binary_round_trip(p in program(false)) {
        let q = Program::from_bytes(&p.to_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&q, &p);
        prop_assert_eq!(q.to_bytes(), p.to_bytes());
    }

    #[test]
    fn truncated_binary_is_an_error(p in program(true)) {
        let b = p.to_bytes();
        prop_assert!(Program::from_bytes(&b).is_ok());
        for n in 0..b.len() {
            prop_assert!(Program::from_bytes(&b[..n]).is_err(), "prefix of {} of {} bytes decoded", n, b.len());
        }
    }

    #[test]
    fn garbled_binary_does_not_panic(
        p in program(true),
        flips in vec((any::<Index>(), 1u8..), 1..8),
        tail in vec(any::<u8>(), 0..32),
        body in vec(any::<u8>(), 0..128),
    ) {
        let mut b = p.to_bytes();
        for (i, x) in flips {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        let _ = Program::from_bytes(&b);
        b.extend(tail);
        let _ = Program::from_bytes(&b);
        let mut raw = p.to_bytes()[..8].to_vec();
        raw.extend(body);
        let _ = Program::from_bytes(&raw);
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>(), b in vec(any::<u8>(), 0..256)) {
        let _ = Program::parse(&s);
        let _ = Program::parse(&format!("{HEADER}{s}"));
        let _ = Program::parse(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn grammar_noise_never_panics(s in "[%0-9a-z_=:@+,\\[\\]. \n\"\\\\;-]{0,160}") {
        if let Err(e) = Program::parse(&format!("{HEADER}%0: {s}")) {
            prop_assert!(e.line >= 3 && e.column >= 1);
        }
    }

    #[test]
    fn mutated_programs_never_panic(p in program(true), edits in vec((any::<Index>(), any::<char>(), 0u8..3), 1..6)) {
        let mut chars: Vec<char> = p.to_text().chars().collect();
        for (at, c, how) in edits {
            let i = at.index(chars.len() + 1);
            match how {
                0 if i < chars.len() => { chars.remove(i); }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
        }
        let text: String = chars.iter().collect();
        if let Err(e) = Program::parse(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.split('\n').count() + 1 && e.column >= 1, "{}", e);
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn access_pattern_syntax() {
    let t = Ap::sbuf(0, 128, 1024, &[4, 512], DType::Bf16);
    assert_eq!(format_ap(&t), "sbuf[0:128,4,512]+1024:bf16");
    assert_eq!(format_ap(&Ap::psum(32, 32, 0, &[512], DType::F32)), "psum[32:64,512]:f32");
    assert_eq!(format_ap(&Ap::hbm(4096, 128, &[512], DType::F32)), "hbm[128,512]+4096:f32");
    let strided = Ap::new(Space::Hbm, 0, 128, 1024, 0, &[Dim { stride: -1, size: 512 }], DType::U8);
    assert_eq!(format_ap(&strided), "hbm[128@1024,512@-1]:u8");
    let bcast =
        Ap::new(Space::Sbuf, 64, 32, 0, 8, &[Dim { stride: 0, size: 7 }, Dim { stride: 1, size: 3 }], DType::I32);
    assert_eq!(format_ap(&bcast), "sbuf[64:96,7@0,3]+8:i32");
    // Hand-written forms the printer never uses.
    assert_eq!(parse_ap("sbuf[0x40:96,7@0,3@1]+0x8:int32"), Ok(bcast));
    assert_eq!(parse_ap("hbm[0:128@1024,512@-1]+0:uint8"), Ok(strided));
    assert_eq!(parse_ap("sbuf[0:128]:f32").map(|a| a.ndims), Ok(0));
    // Non-canonical fields still round-trip.
    let odd = Ap::new(Space::Hbm, 3, u32::MAX, 5, u64::MAX, &[Dim { stride: i64::MIN, size: u32::MAX }], DType::F8E4M3);
    assert_eq!(
        format_ap(&odd),
        format!("hbm[3:{}@5,{}@{}]+{}:f8e4m3", 3 + u32::MAX as u64, u32::MAX, i64::MIN, u64::MAX)
    );
    assert_eq!(parse_ap(&format_ap(&odd)), Ok(odd));
}

#[test]
fn access_pattern_errors() {
    let e = |s: &str| parse_ap(s).expect_err(s).to_string();
    assert!(e("sram[0:1,1]:f32").contains("unknown memory space `sram`"));
    assert!(e("sbuf[0:1,1]:bf17").contains("unknown dtype `bf17`"));
    assert!(e("sbuf[4:2,1]:f32").contains("ends before it starts"));
    assert!(e("sbuf[0:1,1,1,1,1,1]:f32").contains("at most 4 free dimensions"));
    assert!(e("sbuf[0:1,1x]:f32").contains("bad number `1x`"));
    assert!(e("sbuf[0:1,4294967296]:f32").contains("unsigned 32-bit"));
    assert!(e("sbuf[0:1,1]:f32]").contains("trailing garbage `]`"));
    assert!(e("sbuf[0:1,1]").contains("expected `:` before the dtype, found end of value"));
    assert!(e("sbuf[0:1,2,4294967295,4294967295,4294967295]:f32").contains("too large to be implied"));
    assert!(e("").contains("expected an access pattern"));
}

#[test]
fn floats_round_trip_bit_exactly() {
    let f32s = [-0.0f32, 0.0, f32::from_bits(1), f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, 0.1];
    let nans = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffff_ffff)];
    for x in f32s.into_iter().chain(nans) {
        let s = format_f32(x);
        assert_eq!(parse_f32(&s).map(f32::to_bits), Ok(x.to_bits()), "{s}");
    }
    assert_eq!(format_f32(-0.0), "-0.0");
    assert_eq!(format_f32(f32::from_bits(1)), "1e-45");
    assert_eq!(format_f32(f32::NAN), "nan");
    assert_eq!(format_f32(f32::from_bits(0x7f80_0001)), "nan:0x7f800001");
    for x in [-0.0f64, f64::from_bits(1), f64::MAX, -f64::NAN, f64::from_bits(0x7ff0_0000_0000_0001), 1e300] {
        let s = format_f64(x);
        assert_eq!(parse_f64(&s).map(f64::to_bits), Ok(x.to_bits()), "{s}");
    }
    assert!(parse_f32("nan:0x3f800000").unwrap_err().to_string().contains("not a NaN"));
    assert!(parse_f32("nan:0x123456789").is_err());
    assert!(parse_f32("1.5.2").is_err());
    assert!(parse_f32("infinity").is_err());
    assert_eq!(parse_f32("2"), Ok(2.0));
    assert_eq!(parse_f32("-.5e1"), Ok(-5.0));

    // Through whole instructions: an f32 operand, an f32 scale and an f64 memset value.
    let mut p = Program::new("nan");
    let dst = Ap::sbuf(0, 1, 0, &[1], DType::F32);
    let nan = f32::from_bits(0xffc0_1234);
    let stage = ScalarStage { op: AluOp::Add, operand: Operand::Imm(nan), reverse: false };
    p.push(Inst::new(Op::TensorScalar { engine: Engine::Vector, dst, src: dst, first: stage, second: None }));
    let act = Op::Activation { func: ActFn::Exp, dst, src: dst, scale: Operand::Imm(-0.0), bias: None, acc: None };
    p.push(Inst::new(act));
    p.push(Inst::new(Op::Memset { engine: Engine::GpSimd, dst, value: f64::from_bits(0x7ff8_0000_0000_0042) }));
    let q = Program::parse(&p.to_text()).unwrap();
    let Op::TensorScalar { first, .. } = &q.insts[0].op else { panic!() };
    assert!(matches!(first.operand, Operand::Imm(x) if x.to_bits() == 0xffc0_1234));
    assert!(
        matches!(q.insts[1].op, Op::Activation { scale: Operand::Imm(x), .. } if x.to_bits() == (-0.0f32).to_bits())
    );
    assert!(matches!(q.insts[2].op, Op::Memset { value, .. } if value.to_bits() == 0x7ff8_0000_0000_0042));
}

#[test]
fn names_are_quoted_when_needed() {
    assert_eq!(format_name("layer.0/w_q-1"), "layer.0/w_q-1");
    assert_eq!(format_name(""), "\"\"");
    assert_eq!(format_name("a b;\"c\"\n\u{1}"), "\"a b;\\\"c\\\"\\n\\u{1}\"");
    assert_eq!(format_name("1x"), "\"1x\"");
    let p = Program { name: "tiny # not a comment".into(), tensors: vec![], insts: vec![] };
    assert_eq!(Program::parse(&p.to_text()), Ok(p));
    let e = Program::parse(".version 1\n.program a b ; c\n").expect_err("extra word");
    assert_eq!(e.line, 2);
    let e = Program::parse(".version 1\n.program \"abc\n").expect_err("unterminated");
    assert_eq!((e.line, e.column), (2, 10));
    assert!(e.to_string().contains("unterminated string"), "{e}");
    let e = Program::parse(".version 1\n.program \"a\\qb\"\n").expect_err("bad escape");
    assert!(e.to_string().contains("bad escape"), "{e}");
}

#[test]
fn header_errors() {
    let e = Program::parse("").unwrap_err();
    assert_eq!((e.line, e.kind), (1, TextErrorKind::MissingVersion));
    let e = Program::parse("; comment\n\n.program x\n").unwrap_err();
    assert_eq!((e.line, e.kind), (3, TextErrorKind::MissingVersion));
    let e = Program::parse(".version 2\n").unwrap_err();
    assert_eq!((e.line, e.column, e.kind), (1, 10, TextErrorKind::Version("2".into())));
    let e = Program::parse(".version 1\n.version 1\n").unwrap_err();
    assert_eq!((e.line, e.kind), (2, TextErrorKind::DuplicateDirective(".version")));
    let e = Program::parse(".version 1\n").unwrap_err();
    assert_eq!(e.kind, TextErrorKind::MissingProgram("the end of the text"));
    let e = Program::parse(".version 1\n%0: copy\n").unwrap_err();
    assert_eq!((e.line, e.kind), (2, TextErrorKind::MissingProgram("instructions")));
    let e = Program::parse(".version 1\n.tensor a input f32 [1] @0\n").unwrap_err();
    assert_eq!(e.kind, TextErrorKind::MissingProgram("`.tensor`"));
    let e = parse_err(".program u\n");
    assert_eq!((e.line, e.kind), (3, TextErrorKind::DuplicateDirective(".program")));
    let e = parse_err("  .tensr a input f32 [1] @0\n");
    assert_eq!((e.line, e.column, e.kind), (3, 3, TextErrorKind::UnknownDirective(".tensr".into())));
    let e = parse_err("matmul dst=x\n");
    assert!(matches!(e.kind, TextErrorKind::Syntax(ref m) if m.contains("found `matmul`")), "{e}");
    let e = Program::parse(".version 1 2\n").unwrap_err();
    assert_eq!(e.kind, TextErrorKind::TrailingGarbage { context: ".version", text: "2".into() });
    let e = Program::parse(".version\n").unwrap_err();
    assert_eq!(e.kind, TextErrorKind::MissingField { context: ".version", field: "version" });
}

#[test]
fn tensor_errors() {
    let e = parse_err(".tensor a input f33 [4] @0\n");
    assert_eq!((e.line, e.column), (3, 17));
    assert!(matches!(
        e.kind,
        TextErrorKind::BadField { context: ".tensor", field: "dtype", error: ValueError::BadDType(_) }
    ));
    assert!(e.to_string().starts_with("line 3, column 17: .tensor: field `dtype`: unknown dtype `f33`"), "{e}");
    let e = parse_err(".tensor a weights f32 [4] @0\n");
    assert!(
        e.to_string().contains("field `kind`: unknown tensor kind `weights` (expected one of: input, output, scratch)"),
        "{e}"
    );
    let e = parse_err(".tensor a input f32 [4,x] @0\n");
    assert_eq!((e.column, e.to_string().contains("field `shape`: bad number `x`")), (24, true), "{e}");
    let e = parse_err(".tensor a input f32 [4] 0\n");
    assert!(e.to_string().contains("field `offset`: expected `@` before the HBM byte offset, found `0`"), "{e}");
    let e = parse_err(".tensor a input f32 [4]\n");
    assert_eq!(e.kind, TextErrorKind::MissingField { context: ".tensor", field: "offset" });
    let e = parse_err(".tensor a input f32 [4] @0 extra\n");
    assert_eq!((e.column, e.kind), (28, TextErrorKind::TrailingGarbage { context: ".tensor", text: "extra".into() }));
    let e = parse_err(".tensor 9a input f32 [4] @0\n");
    assert!(e.to_string().contains("field `name`: bad name `9a`"), "{e}");
}

#[test]
fn instruction_errors() {
    let tile = "sbuf[0:128,512]:f32";
    let e = parse_err(&format!("%0: matmull dst={tile}\n"));
    assert_eq!((e.line, e.column, e.kind.clone()), (3, 5, TextErrorKind::UnknownMnemonic("matmull".into())));
    assert!(e.to_string().contains("expected one of: matmul, transpose,"), "{e}");

    let e = parse_err(&format!("%0: copy engine=vector dst={tile}\n"));
    assert_eq!((e.line, e.column, e.kind), (3, 5, TextErrorKind::MissingField { context: "copy", field: "src" }));

    let e = parse_err(&format!("%0: copy engine=vector dst={tile} src={tile} dst={tile}\n"));
    assert_eq!(e.kind, TextErrorKind::DuplicateField { context: "copy", field: "dst".into() });
    assert_eq!(e.column, 72);

    let e = parse_err(&format!("%0: copy engine=vector dst={tile} source={tile}\n"));
    assert!(
        matches!(&e.kind, TextErrorKind::UnknownField { context: "copy", field, expected }
            if field == "source" && expected == "engine, dst, src, core, deps"),
        "{e}"
    );

    let (line, col, ctx, field, err) =
        field_err(&format!("%0: tensor_tensor engine=vector op=addd dst={tile} in0={tile} in1={tile}\n"));
    assert_eq!((line, col, ctx, field), (3, 36, "tensor_tensor", "op"));
    assert!(err.to_string().starts_with("unknown AluOp `addd` (expected one of: add, sub, mul"), "{err}");
    let e = parse_err(&format!("%0: tensor_tensor engine=vector op=addd dst={tile} in0={tile} in1={tile}\n"));
    assert!(e.to_string().starts_with("line 3, column 36: tensor_tensor: field `op`: unknown AluOp `addd`"), "{e}");

    let (_, col, _, field, err) =
        field_err(&format!("%0: tensor_reduce engine=vector op=add dst={tile} src={tile} axes=3x negate=false\n"));
    assert_eq!((field, col), ("axes", 93));
    assert_eq!(err, ValueError::BadNumber { text: "3x".into(), expected: "an unsigned 8-bit integer" });
    let (_, _, _, field, err) = field_err(&format!("%0: dma_copy queue=300 dst={tile} src={tile}\n"));
    assert_eq!((field, err.to_string().contains("bad number `300`")), ("queue", true));

    let (_, col, _, field, err) = field_err("%0: copy engine=vector dst=sbuf[0:128,512]:bf17 src=sbuf[0:1,1]:f32\n");
    assert_eq!((field, col), ("dst", 44), "the column points at the dtype");
    assert!(matches!(err, ValueError::BadDType(_)));

    let (_, _, _, field, err) = field_err(&format!("%0: copy engine=vector dst={tile}] src={tile}\n"));
    assert_eq!((field, err), ("dst", ValueError::Trailing("]".into())));

    let (_, _, _, field, err) = field_err(&format!("%0: copy engine=vpu dst={tile} src={tile}\n"));
    assert_eq!(field, "engine");
    assert!(err.to_string().contains("unknown engine `vpu`"), "{err}");

    let (_, _, _, field, err) =
        field_err(&format!("%0: matmul dst={tile} stationary={tile} moving={tile} start=yes stop=true\n"));
    assert_eq!(field, "start");
    assert!(err.to_string().contains("expected `true` or `false`, found `yes`"), "{err}");

    let (_, _, _, field, err) = field_err(&format!(
        "%0: tensor_scalar engine=vector dst={tile} src={tile} op0=mul operand0=2 reverse0=false operand1=3\n"
    ));
    assert_eq!((field, err.to_string()), ("operand1", "given without `op1`".to_string()));

    let (_, _, _, field, _) = field_err(&format!("%0: copy engine=vector dst={tile} src={tile} deps=[%1,2]\n"));
    assert_eq!(field, "deps");
    let (_, _, _, field, _) = field_err(&format!("%0: copy engine=vector dst={tile} src={tile} core=-1\n"));
    assert_eq!(field, "core");
    let (_, _, _, field, err) =
        field_err(&format!("%0: iota dst={tile} base=0 channel_multiplier=1 steps=[1,2,3,4,5]\n"));
    assert_eq!((field, err.to_string()), ("steps", "expected 1 to 4 steps, found 5".to_string()));

    let e = parse_err(&format!("%1: copy engine=vector dst={tile} src={tile}\n"));
    assert_eq!((e.line, e.column, e.kind), (3, 1, TextErrorKind::LabelMismatch { found: 1, expected: 0 }));
    let e = parse_err(&format!("%0 copy engine=vector dst={tile} src={tile}\n"));
    assert_eq!(e.kind, TextErrorKind::BadLabel("%0".into()));
    let e = parse_err("%0:\n");
    assert!(matches!(e.kind, TextErrorKind::Syntax(ref m) if m.contains("missing instruction mnemonic")));
    let e = parse_err(&format!("%0: copy engine=vector dst={tile} src\n"));
    assert!(e.to_string().contains("copy: expected `field=value`, found `src`"), "{e}");
}

#[test]
fn hand_written_forms() {
    // Engine prefixes, hex numbers, steps shorter than 4, comments after fields.
    let op = one_inst("%0: iota dst=sbuf[0:128,64]:i32 base=-0x10 channel_multiplier=64 steps=[1] ; row index");
    assert_eq!(
        op,
        Op::Iota {
            dst: Ap::sbuf(0, 128, 0, &[64], DType::I32),
            base: -16,
            channel_multiplier: 64,
            steps: [1, 0, 0, 0]
        }
    );
    let op = one_inst("%0: copy engine=pool dst=sbuf[0:1,1]:f32 src=sbuf[0:1,1]:f32 # pool = gpsimd");
    assert!(matches!(op, Op::Copy { engine: Engine::GpSimd, .. }));
}

const GOLDEN: &str = "\
; relu(a @ b) for one 128x128x512 tile, then a scaled, shifted copy on core 1
.version 1
.program \"tiny matmul\"
.tensor a input bf16 [128,128] @0
.tensor b input bf16 [128,512] @32768
.tensor y output f32 [128,512] @163840

%0: dma_copy queue=0 dst=sbuf[0:128,128]:bf16 src=hbm[128,128]:bf16
%1: dma_copy queue=1 dst=sbuf[0:128,512]+256:bf16 src=hbm[128,512]+32768:bf16
%2: matmul dst=psum[0:128,512]:f32 stationary=sbuf[0:128,128]:bf16 moving=sbuf[0:128,512]+256:bf16 start=true stop=true deps=[%0,%1]
%3: activation func=relu dst=sbuf[0:128,512]+1280:f32 src=psum[0:128,512]:f32 scale=1.0 deps=[%2]   # fused ReLU
%4: dma_copy queue=0 dst=hbm[128,512]+163840:f32 src=sbuf[0:128,512]+1280:f32 deps=[%3]
%5: tensor_scalar engine=vector dst=sbuf[0:128,2,256@2]+4096:bf16 src=sbuf[0:128,512]+1280:f32 op0=mul operand0=sbuf[0:128,1]+8192:f32 reverse0=false op1=add operand1=-0.5 reverse1=true core=1 deps=[%3]
";

#[test]
fn golden_program() {
    let p = Program::parse(GOLDEN).unwrap_or_else(|e| panic!("{e}"));
    let a = Ap::sbuf(0, 128, 0, &[128], DType::Bf16);
    let b = Ap::sbuf(0, 128, 256, &[512], DType::Bf16);
    let acc = Ap::psum(0, 128, 0, &[512], DType::F32);
    let y = Ap::sbuf(0, 128, 1280, &[512], DType::F32);
    let even = Ap::new(
        Space::Sbuf,
        0,
        128,
        0,
        4096,
        &[Dim { stride: 256, size: 2 }, Dim { stride: 2, size: 256 }],
        DType::Bf16,
    );
    let scale = Ap::sbuf(0, 128, 8192, &[1], DType::F32);
    let dep = |ids: &[u32]| ids.iter().map(|&i| InstId(i)).collect::<Vec<_>>();
    let tensor = |name: &str, kind, dtype, shape: &[u64], offset| TensorDecl {
        name: name.into(),
        kind,
        dtype,
        shape: shape.to_vec(),
        offset,
    };
    let expected = Program {
        name: "tiny matmul".into(),
        tensors: vec![
            tensor("a", TensorKind::Input, DType::Bf16, &[128, 128], 0),
            tensor("b", TensorKind::Input, DType::Bf16, &[128, 512], 32768),
            tensor("y", TensorKind::Output, DType::F32, &[128, 512], 163840),
        ],
        insts: vec![
            Inst::new(Op::DmaCopy { queue: 0, dst: a, src: Ap::hbm(0, 128, &[128], DType::Bf16) }),
            Inst::new(Op::DmaCopy { queue: 1, dst: b, src: Ap::hbm(32768, 128, &[512], DType::Bf16) }),
            Inst {
                op: Op::MatMul { dst: acc, stationary: a, moving: b, start: true, stop: true },
                core: 0,
                deps: dep(&[0, 1]),
            },
            Inst {
                op: Op::Activation {
                    func: ActFn::Relu,
                    dst: y,
                    src: acc,
                    scale: Operand::Imm(1.0),
                    bias: None,
                    acc: None,
                },
                core: 0,
                deps: dep(&[2]),
            },
            Inst {
                op: Op::DmaCopy { queue: 0, dst: Ap::hbm(163840, 128, &[512], DType::F32), src: y },
                core: 0,
                deps: dep(&[3]),
            },
            Inst {
                op: Op::TensorScalar {
                    engine: Engine::Vector,
                    dst: even,
                    src: y,
                    first: ScalarStage { op: AluOp::Mul, operand: Operand::PerPartition(scale), reverse: false },
                    second: Some(ScalarStage { op: AluOp::Add, operand: Operand::Imm(-0.5), reverse: true }),
                },
                core: 1,
                deps: dep(&[3]),
            },
        ],
    };
    assert_eq!(p, expected);
    // The printer gives the same text without comments, blank lines and extra spaces.
    let canonical: String = GOLDEN
        .lines()
        .map(|l| l.split([';', '#']).next().unwrap_or("").trim_end())
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(p.to_text(), canonical);
}

#[test]
fn every_mnemonic_is_in_the_table_once() {
    for (i, s) in SPECS.iter().enumerate() {
        assert!(SPECS[i + 1..].iter().all(|t| t.mnemonic != s.mnemonic), "{}", s.mnemonic);
        assert!(s.fields.iter().all(|f| !COMMON_FIELDS.contains(f)));
    }
    assert_eq!(SPECS.len(), 15, "one entry per Op variant");
}

#[test]
fn reference_examples_parse_and_are_canonical() {
    let doc = include_str!("../../../../docs/isa.md");
    let mut examples = 0;
    for line in doc.lines().filter(|l| l.starts_with('%')) {
        let (_, rest) = line.split_once(": ").unwrap_or_else(|| panic!("bad example {line}"));
        let line0 = format!("%0: {rest}");
        let p = Program::parse(&format!("{HEADER}{line0}\n")).unwrap_or_else(|e| panic!("{e}\n{line}"));
        assert_eq!(format_inst(InstId(0), &p.insts[0]), line0, "docs/isa.md example is not canonical");
        examples += 1;
    }
    assert!(examples >= SPECS.len(), "one example per instruction");
    let mnemonics: Vec<&str> =
        doc.lines().filter(|l| l.starts_with('%')).filter_map(|l| l.split_whitespace().nth(1)).collect();
    for s in SPECS {
        assert!(mnemonics.contains(&s.mnemonic), "docs/isa.md has no example of {}", s.mnemonic);
    }
    // The complete example program.
    let start = doc.find("; relu(a @ b)").expect("example program");
    let text = doc.get(start..).and_then(|t| t.split("```").next()).unwrap_or("");
    let p = Program::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((p.tensors.len(), p.insts.len()), (3, 5));
}

#[test]
fn crlf_and_windows_line_ends() {
    let text = GOLDEN.replace('\n', "\r\n");
    assert_eq!(Program::parse(&text), Program::parse(GOLDEN));
}
