use proptest::prelude::*;
use trainyard_arch::{ChipSpec, DType};

use super::*;
use crate::library::elementwise::tests::{assert_emit_frees, check, chips};
use crate::library::{self, KernelArgs};

fn conv(shape: [usize; 7], dtype: DType) -> KernelArgs {
    KernelArgs::new(&shape, dtype)
}

#[test]
fn conv_windows_padding_strides_dilation() {
    for chip in chips() {
        for dtype in [DType::F32, DType::Bf16] {
            check(&Conv2d, &chip, &conv([1, 3, 7, 7, 4, 3, 3], dtype).with("pad", "1,1,1,1"));
            check(&Conv2d, &chip, &conv([2, 5, 9, 8, 6, 3, 2], dtype).with("stride", "2,3").with("pad", "2,0,1,1"));
            check(&Conv2d, &chip, &conv([1, 4, 11, 10, 3, 3, 3], dtype).with("dilation", "2,3").with("pad", "0,1,2,0"));
            check(&Conv2d, &chip, &conv([1, 2, 1, 40, 3, 1, 5], dtype).with("pad", "0,2,0,2"));
        }
    }
}

#[test]
fn conv_channel_chunks_groups_and_epilogue() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    let f32c = |s, o: &[(&str, &str)]| {
        let mut a = conv(s, DType::F32);
        for (k, v) in o {
            a = a.with(k, v);
        }
        check(&Conv2d, &chip, &a);
    };
    f32c([1, 130, 5, 5, 131, 3, 3], &[("pad", "1,1,1,1"), ("bias", "true")]);
    f32c([2, 8, 6, 6, 8, 3, 3], &[("groups", "8"), ("pad", "1,1,1,1"), ("act", "relu")]);
    f32c([1, 12, 5, 5, 18, 1, 1], &[("groups", "3"), ("residual", "true"), ("bias", "true"), ("act", "relu")]);
    f32c([1, 256, 3, 3, 130, 3, 3], &[("groups", "2"), ("pad", "1,1,1,1"), ("clip", "-0.5,0.5")]);
    f32c([1, 3, 2, 600, 5, 1, 3], &[("stride", "1,1")]);
    // More weights than SBUF holds at once: blocks in sets, bands re-read per set.
    let big = conv([1, 1024, 3, 3, 512, 3, 3], DType::F32).with("pad", "1,1,1,1");
    let sets = conv::weight_sets(&chip, &big);
    assert!(sets > 1, "{sets} weight sets");
    check(&Conv2d, &chip, &big);
}

#[test]
fn thin_inputs_fold_taps_into_the_contraction() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    let matmuls = |a: &KernelArgs| {
        let run = check(&Conv2d, &chip, a);
        run.built.program.insts.iter().filter(|i| matches!(i.op, trainyard_isa::Op::MatMul { .. })).count()
    };
    // A ResNet-style stem: 3 channels, 7x7 taps at stride 2 — 42 taps per matmul (126 rows).
    let stem = conv([1, 3, 20, 20, 8, 7, 7], DType::F32).with("stride", "2,2").with("pad", "3,3,3,3");
    assert_eq!(matmuls(&stem), 2, "two tap groups (42 + 7 taps) for the one block");
    // 20 channels, 3x3: 6 taps per group, then 3.
    for dtype in [DType::F32, DType::Bf16] {
        let a = conv([2, 20, 9, 7, 5, 3, 3], dtype).with("pad", "1,0,2,1").with("dilation", "1,2").with("bias", "true");
        assert_eq!(matmuls(&a), 2 * 2, "two groups for each image");
    }
    // 33 channels are not folded.
    assert_eq!(matmuls(&conv([1, 33, 5, 5, 4, 3, 3], DType::F32)), 9);
}

#[test]
fn conv_splits_images_over_cores() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    for cores in [2, 3] {
        let a = KernelArgs { cores, ..conv([3, 6, 10, 10, 7, 3, 3], DType::Bf16).with("pad", "1,1,1,1") };
        let run = check(&Conv2d, &chip, &a);
        let used: std::collections::BTreeSet<u16> = run.built.program.insts.iter().map(|i| i.core).collect();
        assert_eq!(used.len(), cores as usize);
    }
}

#[test]
fn packing_matches_a_direct_grouped_convolution() {
    // Depthwise, grouped with several groups per block, and groups wider than a block.
    for (c, m, groups) in [(8, 8, 8), (12, 18, 3), (300, 260, 2), (5, 7, 1)] {
        let args = conv([1, c, 4, 4, m, 3, 3], DType::F32).with("groups", &groups.to_string()).with("pad", "1,1,1,1");
        let g = ConvGeometry::parse(&args).unwrap();
        let (cg, taps) = (c / groups, 9);
        let onnx: Vec<f64> = library::uniform(m * cg * taps, 3);
        let x: Vec<f64> = library::uniform(c * 16, 4);
        let pack = ConvPacking::new(&g, 128);
        assert!(pack.blocks.iter().all(|b| b.m.len() <= 128));
        assert!(pack.chunks.iter().all(|r| r.len() <= 128));
        let w = pack.pack(&g, &onnx).unwrap();
        let mut inputs = library::HostTensors::new();
        inputs.insert("x".into(), (vec![1, c, 4, 4], x.clone()));
        inputs.insert("w".into(), (vec![w.len()], w));
        let got = Conv2d.reference(&args, &inputs).unwrap()["y"].1.clone();
        let mg = m / groups;
        for mo in 0..m {
            for oy in 0..4usize {
                for ox in 0..4usize {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        let cin = (mo / mg) * cg + ci;
                        for i in 0..3 {
                            for j in 0..3 {
                                let (iy, ix) = (oy as isize + i as isize - 1, ox as isize + j as isize - 1);
                                if (0..4).contains(&iy) && (0..4).contains(&ix) {
                                    acc += onnx[(mo * cg + ci) * 9 + i * 3 + j]
                                        * x[(cin * 4 + iy as usize) * 4 + ix as usize];
                                }
                            }
                        }
                    }
                    let y = got[(mo * 4 + oy) * 4 + ox];
                    assert!((y - acc).abs() < 1e-9, "c={c} m={m} g={groups}: {y} vs {acc}");
                }
            }
        }
        assert!(pack.pack(&g, &onnx[1..]).is_err());
    }
}

fn pool(shape: [usize; 4], kind: &str, opts: &[(&str, &str)]) -> KernelArgs {
    let mut a = KernelArgs::new(&shape, DType::F32).with("kind", kind);
    for (k, v) in opts {
        a = a.with(k, v);
    }
    a
}

#[test]
fn pooling_windows_padding_and_counts() {
    for chip in chips() {
        for kind in ["max", "avg"] {
            check(&Pool2d, &chip, &pool([1, 3, 8, 8], kind, &[("kernel", "2,2"), ("stride", "2,2")]));
            check(
                &Pool2d,
                &chip,
                &pool([2, 70, 9, 7], kind, &[("kernel", "3,3"), ("stride", "2,2"), ("pad", "1,1,1,1")]),
            );
            let ceil = [("kernel", "3,3"), ("stride", "2,2"), ("ceil_mode", "true")];
            check(&Pool2d, &chip, &pool([1, 2, 10, 10], kind, &ceil));
            let dil = [("kernel", "2,3"), ("dilation", "2,2"), ("pad", "1,0,1,2")];
            check(&Pool2d, &chip, &pool([1, 2, 9, 11], kind, &dil));
        }
        let incl = [("kernel", "3,3"), ("pad", "1,1,1,1"), ("count_include_pad", "true")];
        check(&Pool2d, &chip, &pool([1, 4, 6, 5], "avg", &incl));
        let bf = KernelArgs { dtype: DType::Bf16, ..pool([1, 130, 5, 5], "avg", &[("kernel", "5,5")]) };
        check(&Pool2d, &chip, &bf);
    }
    let chip = ChipSpec::by_name("trn2").unwrap();
    let wide = KernelArgs { cores: 2, ..pool([1, 260, 3, 3000], "max", &[("kernel", "3,3"), ("stride", "1,2")]) };
    check(&Pool2d, &chip, &wide);
}

#[test]
fn lrn_windows_and_channel_blocks() {
    for chip in chips() {
        for (c, size) in [(5, 3), (7, 4), (6, 5), (200, 5), (130, 1)] {
            let a = KernelArgs::new(&[2, c, 30], DType::F32)
                .with("size", &size.to_string())
                .with("alpha", "0.02")
                .with("beta", "0.75")
                .with("bias", "2");
            check(&Lrn, &chip, &a);
        }
    }
    let chip = ChipSpec::by_name("trn2").unwrap();
    let a = KernelArgs { cores: 2, ..KernelArgs::new(&[1, 64, 1200], DType::Bf16).with("alpha", "0.5") };
    check(&Lrn, &chip, &a);
}

#[test]
fn emit_gives_back_all_memory() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    for cores in [1, 2] {
        let c = KernelArgs {
            cores,
            ..conv([2, 20, 6, 6, 24, 3, 3], DType::F32).with("bias", "true").with("residual", "true")
        };
        assert_emit_frees(&Conv2d, &chip, &c);
        let p = KernelArgs { cores, ..pool([2, 20, 6, 6], "avg", &[("kernel", "3,3"), ("pad", "1,1,1,1")]) };
        assert_emit_frees(&Pool2d, &chip, &p);
        assert_emit_frees(&Lrn, &chip, &KernelArgs { cores, ..KernelArgs::new(&[2, 20, 36], DType::F32) });
    }
}

#[test]
fn argument_errors_name_the_kernel() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    let bad = [
        (&Conv2d as &dyn Kernel, conv([1, 3, 4, 4, 4, 3, 3], DType::F32).with("groups", "2")),
        (&Conv2d, conv([1, 3, 2, 2, 4, 3, 3], DType::F32)),
        (&Conv2d, conv([1, 3, 4, 4, 4, 3, 3], DType::F32).with("stride", "0,1")),
        (&Conv2d, conv([1, 3, 4, 4, 4, 3, 3], DType::F32).with("clip", "1,0")),
        (&Pool2d, pool([1, 1, 4, 4], "sum", &[])),
        (&Pool2d, pool([1, 1, 4, 4], "max", &[("kernel", "2,2"), ("pad", "2,0,0,0")])),
        (&Lrn, KernelArgs::new(&[1, 4, 4], DType::F32).with("bias", "0")),
    ];
    for (k, a) in bad {
        let e = library::build(k, &chip, &a).unwrap_err().to_string();
        assert!(e.contains(k.name()), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn random_convolutions(
        c in 1usize..20, m in 1usize..20, hw in 3usize..12, k in 1usize..4, s in 1usize..3, p in 0usize..2, d in 1usize..3,
        dw: bool,
    ) {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let (m, groups) = if dw { (c, c) } else { (m, 1) };
        if hw + 2 * p > d * (k - 1) {
            let a = conv([1, c, hw, hw, m, k, k], DType::F32)
                .with("stride", &format!("{s},{s}"))
                .with("pad", &format!("{p},{p},{p},{p}"))
                .with("dilation", &format!("{d},{d}"))
                .with("groups", &groups.to_string());
            check(&Conv2d, &chip, &a);
        }
    }

    #[test]
    fn random_pools(c in 1usize..140, hw in 2usize..12, k in 1usize..4, s in 1usize..3, avg: bool, ceil: bool) {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let p = (k - 1) / 2;
        let a = pool([1, c, hw, hw], if avg { "avg" } else { "max" }, &[
            ("kernel", &format!("{k},{k}")),
            ("stride", &format!("{s},{s}")),
            ("pad", &format!("{p},{p},{p},{p}")),
            ("ceil_mode", if ceil { "true" } else { "false" }),
        ]);
        if hw + 2 * p >= k {
            check(&Pool2d, &chip, &a);
        }
    }
}

#[test]
fn a_failed_emit_gives_back_what_it_allocated() {
    let chip = ChipSpec::by_name("trn2").unwrap();
    // SBUF left to each kernel: its first tiles fit, a later pool does not.
    let cases: Vec<(Box<dyn Kernel>, KernelArgs, u64)> = vec![
        (Box::new(Conv2d), conv([1, 64, 20, 20, 64, 3, 3], DType::F32).with("pad", "1,1,1,1"), 3000),
        (Box::new(Pool2d), pool([1, 8, 20, 20], "avg", &[("kernel", "3,3"), ("pad", "1,1,1,1")]), 7000),
        (Box::new(Lrn), KernelArgs::new(&[1, 16, 300], DType::F32), 2000),
    ];
    for (kernel, args, leave) in cases {
        let mut kb = crate::builder::KernelBuilder::new("full", &chip);
        let mut io = crate::library::Bindings::new();
        for s in kernel.signature(&chip, &args).unwrap() {
            let t = match s.kind {
                trainyard_isa::TensorKind::Output => kb.hbm_output(&s.name, &s.shape, s.dtype),
                _ => kb.hbm_input(&s.name, &s.shape, s.dtype),
            };
            io.insert(s.name, t.unwrap());
        }
        let held = kb.sbuf_free_bytes() - leave;
        let hold = kb.sbuf_tile(&[128, held as usize], DType::U8).unwrap();
        let before = (kb.sbuf_free_bytes(), kb.psum_free_bytes());
        match kernel.emit(&mut kb, &args, &io) {
            Err(crate::BuildError::OutOfSbuf { .. }) => {}
            other => panic!("{}: {:?}", kernel.name(), other.map(|_| ())),
        }
        assert_eq!((kb.sbuf_free_bytes(), kb.psum_free_bytes()), before, "{}", kernel.name());
        kb.free(hold).unwrap();
        kernel.emit(&mut kb, &args, &io).unwrap();
    }
}
