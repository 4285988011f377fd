//! Values of the data-movement and fill instructions: select, iota, memset,
//! partition reduce/broadcast/shuffle, dma_copy through strided, transposed
//! and reversed HBM views, and dma_gather.

mod common;

use common::*;
use trainyard_arch::DType;
use trainyard_isa::{AluOp, Ap, Dim, Engine, Inst, Op, Space};
use trainyard_sim::SimError;

fn sbuf(p: u32, offset: u64, shape: &[u32], d: DType) -> Ap {
    Ap::sbuf(0, p, offset, shape, d)
}

// ---------------------------------------------------------------------------
// select

#[test]
fn select_picks_per_element_by_predicate() {
    let chip = chip("trn2");
    let pred = [0i64, 1, 0, 2, 255, 0, 1, 0, 3, 0, 0, 9];
    let t = Lcg(3).vec(12, -10.0, 10.0);
    let f = Lcg(4).vec(12, -10.0, 10.0);
    for engine in [Engine::Vector, Engine::GpSimd] {
        for dd in [DType::F32, DType::Bf16] {
            let mut case = Case::new("select");
            let (pa, ta, fa) =
                (sbuf(2, 0, &[6], DType::U8), sbuf(2, 64, &[6], DType::F32), sbuf(2, 128, &[6], DType::F32));
            let dst = sbuf(2, 256, &[6], dd);
            case.load_ints(pa, &pred);
            let tv = case.load_vals(ta, &t);
            let fv = case.load_vals(fa, &f);
            case.op(Op::Select { engine, dst, pred: pa, on_true: ta, on_false: fa });
            case.store(dst);
            let out = decode(dd, &case.run(&chip)[0]);
            for i in 0..12 {
                let want = round_ref(dd, if pred[i] != 0 { tv[i] } else { fv[i] } as f32);
                assert_eq!(out[i], want, "{engine} {dd} [{i}]");
            }
        }
    }
}

#[test]
fn select_is_bit_exact_for_equal_dtypes_and_reads_float_predicates() {
    let chip = chip("trn2");
    let mut case = Case::new("select_bits");
    let (pa, ta, fa, dst) = (
        sbuf(1, 0, &[4], DType::F32),
        sbuf(1, 64, &[4], DType::I32),
        sbuf(1, 128, &[4], DType::I32),
        sbuf(1, 192, &[4], DType::I32),
    );
    case.load_vals(pa, &[f32::NAN, -0.0, 0.5, 0.0]);
    case.load_ints(ta, &[(1 << 24) + 1, -((1 << 30) + 3), 16777219, 5]);
    case.load_ints(fa, &[-1, i32::MAX as i64, 7, i32::MIN as i64 + 1]);
    case.op(Op::Select { engine: Engine::Vector, dst, pred: pa, on_true: ta, on_false: fa });
    case.store(dst);
    // NaN is non-zero (true); -0.0 is zero (false).
    assert_eq!(
        decode_ints(DType::I32, &case.run(&chip)[0]),
        vec![(1 << 24) + 1, i32::MAX as i64, 16777219, -2147483647]
    );
}

// ---------------------------------------------------------------------------
// iota and memset

#[test]
fn iota_follows_the_affine_formula_and_casts() {
    let chip = chip("trn2");
    let (p, a, b) = (4u32, 3u32, 5u32);
    let (base, cm, steps) = (-7i32, 10i32, [2i32, -1, 0, 0]);
    for d in [DType::I32, DType::F32, DType::U8, DType::Bf16] {
        let mut case = Case::new("iota");
        let dst = sbuf(p, 0, &[a, b], d);
        case.op(Op::Iota { dst, base, channel_multiplier: cm, steps });
        case.store(dst);
        let out = decode(d, &case.run(&chip)[0]);
        let mut k = 0;
        for pp in 0..p as i64 {
            for i in 0..a as i64 {
                for j in 0..b as i64 {
                    let v = base as i64 + cm as i64 * pp + 2 * i - j;
                    let want = if d.is_int() { int_round_ref(d, v as f64) as f64 } else { round_ref(d, v as f32) };
                    assert_eq!(out[k], want, "{d} [{pp},{i},{j}]");
                    k += 1;
                }
            }
        }
    }
}

#[test]
fn iota_uses_int32_arithmetic() {
    let chip = chip("trn2");
    let mut case = Case::new("iota_wrap");
    let dst = sbuf(1, 0, &[3], DType::I32);
    case.op(Op::Iota { dst, base: i32::MAX, channel_multiplier: 0, steps: [1, 0, 0, 0] });
    case.store(dst);
    let want = vec![i32::MAX as i64, i32::MIN as i64, i32::MIN as i64 + 1];
    assert_eq!(decode_ints(DType::I32, &case.run(&chip)[0]), want);
}

#[test]
fn memset_converts_the_value_like_a_store() {
    let chip = chip("trn2");
    let cases: [(DType, f64, f64); 12] = [
        (DType::F32, 3.25, 3.25),
        (DType::Bf16, 1.0 / 3.0, half::bf16::from_f32(1.0 / 3.0).to_f64()),
        (DType::F8E4M3, 1000.0, 448.0),
        (DType::I32, 2.5, 2.0),
        (DType::I32, 3.5, 4.0),
        (DType::I32, 2.7, 3.0),
        (DType::I32, -2.5, -2.0),
        (DType::I32, -2.7, -3.0),
        (DType::I32, 16777217.0, 16777217.0),
        (DType::U8, 300.0, 255.0),
        (DType::U8, -5.0, 0.0),
        (DType::I16, 1e9, 32767.0),
    ];
    for engine in [Engine::Vector, Engine::GpSimd] {
        for (d, value, want) in cases {
            let mut case = Case::new("memset");
            let dst = sbuf(3, 0, &[5], d);
            case.op(Op::Memset { engine, dst, value });
            case.store(dst);
            let out = decode(d, &case.run(&chip)[0]);
            assert!(out.iter().all(|&v| v == want), "{engine} memset {d} {value}: {out:?}, want {want}");
        }
    }
}

#[test]
fn memset_through_a_strided_pattern_leaves_the_gaps() {
    let chip = chip("trn2");
    let mut case = Case::new("memset_strided");
    let tile = sbuf(2, 0, &[8], DType::F32);
    case.load_vals(tile, &[1.0; 16]);
    let even = Ap::new(Space::Sbuf, 0, 2, 0, 0, &[Dim { stride: 2, size: 4 }], DType::F32);
    case.op(Op::Memset { engine: Engine::Vector, dst: even, value: -4.0 });
    case.store(tile);
    let out = decode(DType::F32, &case.run(&chip)[0]);
    let want: Vec<f64> = (0..16).map(|i| if i % 2 == 0 { -4.0 } else { 1.0 }).collect();
    assert_eq!(out, want);
}

// ---------------------------------------------------------------------------
// cross-partition instructions

#[test]
fn partition_reduce_add_and_max() {
    let chip = chip("trn2");
    let (p, f) = (5u32, 7u32);
    let vals = Lcg(9).vec((p * f) as usize, -3.0, 3.0);
    for op in [AluOp::Add, AluOp::Max] {
        let mut case = Case::new("preduce");
        let src = sbuf(p, 0, &[f], DType::F32);
        let dst = sbuf(1, 1024, &[f], DType::F32);
        let x = case.load_vals(src, &vals);
        case.op(Op::PartitionReduce { op, dst, src });
        case.store(dst);
        let out = decode(DType::F32, &case.run(&chip)[0]);
        for j in 0..f as usize {
            let col: Vec<f64> = (0..p as usize).map(|i| x[i * f as usize + j]).collect();
            let (want, tol) = match op {
                AluOp::Add => (col.iter().sum::<f64>(), p as f64 * col.iter().map(|v| v.abs()).sum::<f64>() / 1.6e7),
                _ => (col.iter().copied().fold(f64::NEG_INFINITY, f64::max), 0.0),
            };
            assert!((out[j] - want).abs() <= tol, "{op} column {j}: {} vs {want}", out[j]);
        }
    }
}

#[test]
fn partition_reduce_bitwise_is_exact_on_32_bit_integers() {
    let chip = chip("trn2");
    let vals: [i64; 4] = [(1 << 24) + 1, 0x7f00_0003, -(1 << 30) - 5, 0x0100_0001];
    for (op, want) in [
        (AluOp::BitOr, vals.iter().fold(0u32, |a, &v| a | v as u32)),
        (AluOp::BitAnd, vals.iter().fold(u32::MAX, |a, &v| a & v as u32)),
    ] {
        let mut case = Case::new("preduce_bits");
        let src = sbuf(4, 0, &[1], DType::I32);
        let dst = sbuf(1, 64, &[1], DType::I32);
        case.load_ints(src, &vals);
        case.op(Op::PartitionReduce { op, dst, src });
        case.store(dst);
        assert_eq!(from_bytes(DType::I32, &case.run(&chip)[0]), vec![want], "{op}");
    }
}

#[test]
fn partition_broadcast_copies_row_zero_everywhere() {
    let chip = chip("trn2");
    let row = [1.5f32, -2.25, 3.0e5, 0.1, -7.0, 1e-3];
    for dd in [DType::F32, DType::Bf16] {
        let mut case = Case::new("broadcast");
        let src = sbuf(1, 0, &[6], DType::F32);
        let dst = sbuf(8, 256, &[6], dd);
        let x = case.load_vals(src, &row);
        case.op(Op::PartitionBroadcast { dst, src });
        case.store(dst);
        let out = decode(dd, &case.run(&chip)[0]);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, round_ref(dd, x[i % 6] as f32), "{dd} [{i}]");
        }
    }
    // Same dtype: bit exact (a 32-bit integer beyond FP32 precision).
    let mut case = Case::new("broadcast_bits");
    let src = sbuf(1, 0, &[2], DType::I32);
    let dst = sbuf(4, 64, &[2], DType::I32);
    case.load_ints(src, &[(1 << 24) + 1, -((1 << 28) + 1)]);
    case.op(Op::PartitionBroadcast { dst, src });
    case.store(dst);
    let out = decode_ints(DType::I32, &case.run(&chip)[0]);
    assert_eq!(out, [(1 << 24) + 1, -((1 << 28) + 1)].repeat(4));
}

#[test]
fn partition_shuffle_permutes_partitions_bit_exactly() {
    let chip = chip("trn2");
    let (p, f) = (4u32, 3u32);
    let vals: Vec<i64> = (0..(p * f) as i64).map(|i| (1 << 24) + 1 + i * 1_000_003).collect();
    let perm = vec![3u8, 0, 2, 1, 1];
    let mut case = Case::new("shuffle");
    let src = sbuf(p, 0, &[f], DType::I32);
    let dst = sbuf(5, 64, &[f], DType::I32);
    case.load_ints(src, &vals);
    case.op(Op::PartitionShuffle { dst, src, perm: perm.clone() });
    case.store(dst);
    let out = decode_ints(DType::I32, &case.run(&chip)[0]);
    for (i, &sp) in perm.iter().enumerate() {
        for j in 0..f as usize {
            assert_eq!(out[i * f as usize + j], vals[sp as usize * f as usize + j], "dst[{i},{j}]");
        }
    }
}

#[test]
fn partition_shuffle_casts_between_dtypes() {
    let chip = chip("trn2");
    let mut case = Case::new("shuffle_cast");
    let src = sbuf(2, 0, &[2], DType::F32);
    let dst = sbuf(2, 64, &[2], DType::Bf16);
    let x = case.load_vals(src, &[1.0 + 2f32.powi(-8), 2.0, 3.0, 1.0 + 3.0 * 2f32.powi(-8)]);
    case.op(Op::PartitionShuffle { dst, src, perm: vec![1, 0] });
    case.store(dst);
    let out = decode(DType::Bf16, &case.run(&chip)[0]);
    let want: Vec<f64> = [x[2], x[3], x[0], x[1]].iter().map(|&v| round_ref(DType::Bf16, v as f32)).collect();
    assert_eq!(out, want);
}

// ---------------------------------------------------------------------------
// dma_copy through HBM views

#[test]
fn dma_copy_through_strided_transposed_and_reversed_hbm_views() {
    let chip = chip("trn1");
    let (r, c) = (6u32, 10u32);
    let x: Vec<f32> = (0..r * c).map(|i| i as f32 * 1.25 - 20.0 + 1.0 / 3.0).collect();
    let mut case = Case::new("views");
    let xo = case.hbm_input(DType::F32, encode(DType::F32, &x));
    let at = |row: u32, col: u32| x[(row * c + col) as usize] as f64;
    let f32v = DType::F32;

    // Transposed view: partition = column, free = row.
    let t_src = Ap::new(Space::Hbm, 0, c, 1, xo, &[Dim { stride: c as i64, size: r }], f32v);
    let t_tile = sbuf(c, 0, &[r], f32v);
    let load_t = case.push(Inst::new(Op::DmaCopy { queue: 0, dst: t_tile, src: t_src }));
    // Even columns, cast to bf16 on the way.
    let e_src = Ap::new(Space::Hbm, 0, r, c as i64, xo, &[Dim { stride: 2, size: c / 2 }], f32v);
    let e_tile = sbuf(r, 1024, &[c / 2], DType::Bf16);
    let load_e = case.push(Inst::new(Op::DmaCopy { queue: 1, dst: e_tile, src: e_src }));
    // Rows in reverse order (negative row stride).
    let rev_src =
        Ap::new(Space::Hbm, 0, r, -(c as i64), xo + ((r - 1) * c * 4) as u64, &[Dim { stride: 1, size: c }], f32v);
    let rev_tile = sbuf(r, 2048, &[c], f32v);
    let load_rev = case.push(Inst::new(Op::DmaCopy { queue: 2, dst: rev_tile, src: rev_src }));
    // A 3-D view: columns visited as (i in 0..5) outer, (j in 0..2) inner, col = 5j + i.
    let v3_src =
        Ap::new(Space::Hbm, 0, r, c as i64, xo, &[Dim { stride: 1, size: 5 }, Dim { stride: 5, size: 2 }], f32v);
    let v3_tile = sbuf(r, 4096, &[5, 2], f32v);
    let load_v3 = case.push(Inst::new(Op::DmaCopy { queue: 3, dst: v3_tile, src: v3_src }));

    let store = |case: &mut Case, tile: Ap, dep| -> usize {
        let (off, idx) = case.hbm_output(tile.dtype, tile.elements());
        let dst = Ap::hbm(off, tile.partitions, &[tile.free_size() as u32], tile.dtype);
        let mut inst = Inst::new(Op::DmaCopy { queue: 4 + idx as u8, dst, src: tile });
        inst.deps.push(dep);
        case.push(inst);
        idx
    };
    let o_t = store(&mut case, t_tile, load_t);
    let o_e = store(&mut case, e_tile, load_e);
    let o_rev = store(&mut case, rev_tile, load_rev);
    let o_v3 = store(&mut case, v3_tile, load_v3);
    // Strided store: the reversed tile into the odd columns of a [r, 2c] output.
    let (w_off, o_w) = case.hbm_output(f32v, (r * 2 * c) as u64);
    let w_dst = Ap::new(Space::Hbm, 0, r, 2 * c as i64, w_off + 4, &[Dim { stride: 2, size: c }], f32v);
    let mut inst = Inst::new(Op::DmaCopy { queue: 10, dst: w_dst, src: rev_tile });
    inst.deps.push(load_rev);
    case.push(inst);
    // HBM → HBM through a transposed view.
    let (tt_off, o_tt) = case.hbm_output(f32v, (r * c) as u64);
    let tt_dst = Ap::hbm(tt_off, c, &[r], f32v);
    case.push(Inst::new(Op::DmaCopy { queue: 11, dst: tt_dst, src: t_src }));

    let outs = case.run(&chip);
    let t = decode(f32v, &outs[o_t]);
    let tt = decode(f32v, &outs[o_tt]);
    for col in 0..c {
        for row in 0..r {
            assert_eq!(t[(col * r + row) as usize], at(row, col), "transposed [{col},{row}]");
            assert_eq!(tt[(col * r + row) as usize], at(row, col), "hbm→hbm transposed [{col},{row}]");
        }
    }
    let e = decode(DType::Bf16, &outs[o_e]);
    let rev = decode(f32v, &outs[o_rev]);
    let v3 = decode(f32v, &outs[o_v3]);
    let w = decode(f32v, &outs[o_w]);
    for row in 0..r {
        for k in 0..c / 2 {
            let want = round_ref(DType::Bf16, at(row, 2 * k) as f32);
            assert_eq!(e[(row * c / 2 + k) as usize], want, "even [{row},{k}]");
        }
        for col in 0..c {
            assert_eq!(rev[(row * c + col) as usize], at(r - 1 - row, col), "reversed [{row},{col}]");
            assert_eq!(w[(row * 2 * c + 2 * col + 1) as usize], at(r - 1 - row, col), "strided store odd");
            assert_eq!(w[(row * 2 * c + 2 * col) as usize], 0.0, "strided store leaves even columns");
        }
        for i in 0..5 {
            for j in 0..2 {
                assert_eq!(v3[(row * 10 + i * 2 + j) as usize], at(row, 5 * j + i), "3-D view [{row},{i},{j}]");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// dma_gather

/// A gather of `index` rows out of a [10 rows of 8, 6 used] f32 table.
fn gather_case(index: &[i64], index_dtype: DType, dst_dtype: DType) -> (Case, Vec<f32>, trainyard_isa::InstId) {
    let (rows, stride, f) = (10u32, 8u32, 6u32);
    let table: Vec<f32> = (0..rows * stride).map(|i| i as f32 * 0.5 + 0.125).collect();
    let mut case = Case::new("gather");
    let t_off = case.hbm_input(DType::F32, encode(DType::F32, &table));
    let idx_tile = sbuf(index.len() as u32, 0, &[1], index_dtype);
    case.load_ints(idx_tile, index);
    let dst = sbuf(index.len() as u32, 64, &[f], dst_dtype);
    let table_ap = Ap::new(Space::Hbm, 0, rows, stride as i64, t_off, &[Dim { stride: 1, size: f }], DType::F32);
    let g = case.op(Op::DmaGather { queue: 5, dst, table: table_ap, index: idx_tile });
    case.store(dst);
    (case, table, g)
}

#[test]
fn dma_gather_copies_indexed_rows() {
    let chip = chip("trn2");
    let index = [3i64, 0, 9, 3, 7];
    for (idx_dt, dst_dt) in [(DType::I32, DType::F32), (DType::U32, DType::Bf16)] {
        let (case, table, _) = gather_case(&index, idx_dt, dst_dt);
        let out = decode(dst_dt, &case.run(&chip)[0]);
        for (p, &row) in index.iter().enumerate() {
            for j in 0..6 {
                let want = round_ref(dst_dt, table[row as usize * 8 + j]);
                assert_eq!(out[p * 6 + j], want, "{idx_dt}->{dst_dt} [{p},{j}]");
            }
        }
    }
}

#[test]
fn dma_gather_out_of_range_index_is_an_error() {
    let chip = chip("trn2");
    for (index, bad_p, bad) in [(vec![3i64, 10, 0], 1u32, 10i64), (vec![0, 1, 2, -1], 3, -1)] {
        let (case, _, g) = gather_case(&index, DType::I32, DType::F32);
        match case.run_with(&chip, opts()) {
            Err(SimError::GatherIndex { inst, partition, index, rows }) => {
                assert_eq!((inst, partition, index, rows), (g, bad_p, bad, 10));
                let msg = SimError::GatherIndex { inst, partition, index, rows }.to_string();
                assert!(msg.contains(&g.to_string()) && msg.contains(&bad.to_string()), "{msg}");
            }
            other => panic!("expected GatherIndex, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn hbm_to_hbm_copy_with_cast() {
    let chip = chip("trn2");
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.3 - 3.0).collect();
    let mut case = Case::new("hbm2hbm");
    let xo = case.hbm_input(DType::F32, encode(DType::F32, &x));
    let (yo, oy) = case.hbm_output(DType::F16, 24);
    let dst = Ap::hbm(yo, 4, &[6], DType::F16);
    case.push(Inst::new(Op::DmaCopy { queue: 0, dst, src: Ap::hbm(xo, 4, &[6], DType::F32) }));
    let y = decode(DType::F16, &case.run(&chip)[oy]);
    let want: Vec<f64> = x.iter().map(|&v| round_ref(DType::F16, v)).collect();
    assert_eq!(y, want);
}

#[test]
fn dma_broadcasts_an_hbm_row_and_reshapes_between_tiles() {
    let chip = chip("trn2");
    let row: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
    let mut case = Case::new("dma_shapes");
    let off = case.hbm_input(DType::F32, encode(DType::F32, &row));
    // Partition stride 0: every partition receives the same row.
    let bcast = Ap::new(Space::Hbm, 0, 8, 0, off, &[Dim { stride: 1, size: 16 }], DType::F32);
    let tile = sbuf(8, 0, &[16], DType::F32);
    let l = case.push(Inst::new(Op::DmaCopy { queue: 0, dst: tile, src: bcast }));
    // SBUF → SBUF with another shape: elements keep their order.
    let reshaped = sbuf(16, 256, &[8], DType::F32);
    let mut r = Inst::new(Op::DmaCopy { queue: 1, dst: reshaped, src: tile });
    r.deps.push(l);
    let r = case.push(r);
    let (o1, i1) = case.hbm_output(DType::F32, 128);
    let (o2, i2) = case.hbm_output(DType::F32, 128);
    let mut s1 = Inst::new(Op::DmaCopy { queue: 2, dst: Ap::hbm(o1, 8, &[16], DType::F32), src: tile });
    s1.deps.push(l);
    case.push(s1);
    let mut s2 = Inst::new(Op::DmaCopy { queue: 3, dst: Ap::hbm(o2, 16, &[8], DType::F32), src: reshaped });
    s2.deps.push(r);
    case.push(s2);
    let outs = case.run(&chip);
    let want: Vec<f64> = (0..128).map(|i| row[i % 16] as f64).collect();
    assert_eq!(decode(DType::F32, &outs[i1]), want);
    assert_eq!(decode(DType::F32, &outs[i2]), want);
}
