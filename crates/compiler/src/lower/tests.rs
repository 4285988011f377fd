//! Lowering tests: small graphs of each op family compiled, run on the simulated chip
//! (functional, race-checked) and compared with the reference interpreter.

use std::collections::HashMap;

use trainyard_arch::{ChipSpec, DType, SplitMix64};
use trainyard_runtime::{HostTensor, Session};
use trainyard_sim::SimOptions;

use super::*;
use crate::graph::*;
use crate::interp;

fn chip(name: &str) -> ChipSpec {
    ChipSpec::by_name(name).unwrap()
}

fn random(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect();
    Tensor::from_f64(DataType::F32, shape.to_vec(), v).unwrap()
}

/// Runs a compiled model on the simulator; returns its outputs in graph order.
fn run_device(c: &Compiled, chip: &ChipSpec, inputs: &HashMap<String, Tensor>) -> Vec<Tensor> {
    let mut s = Session::new(chip, &c.program, SimOptions::default()).unwrap();
    for d in c.bind_inputs(inputs).unwrap().into_iter().chain(c.weight_bytes().unwrap()) {
        let shape = d.shape.iter().map(|&x| x as u64).collect();
        s.bind(&d.tensor, &HostTensor { dtype: d.dtype, shape, data: d.bytes }).unwrap();
    }
    s.run().unwrap_or_else(|e| panic!("{}: {e}", c.graph.name));
    c.outputs.iter().map(|o| io::from_device(&s.output(&o.tensor).unwrap().data, o.dtype, &o.ty).unwrap()).collect()
}

/// Compiles `g`, runs it on `chip` and compares every output with the interpreter.
fn check_on(g: &Graph, inputs: &HashMap<String, Tensor>, chip_name: &str, opts: LowerOptions, rtol: f64) -> Compiled {
    let chip = chip(chip_name);
    let c = compile(g, &chip, &opts).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    let got = run_device(&c, &chip, inputs);
    let want = interp::run(g, inputs).unwrap();
    for ((name, w), d) in want.iter().zip(&got) {
        assert_eq!((d.dtype(), d.shape()), (w.dtype(), w.shape()), "{}: output {name}", g.name);
        let (dv, wv) = (d.to_f64_vec(), w.to_f64_vec());
        let scale = wv.iter().fold(0.0f64, |m, x| if x.is_finite() { m.max(x.abs()) } else { m });
        for (i, (a, b)) in dv.iter().zip(&wv).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rtol * (b.abs() + 1e-2 * scale + 1e-6);
            assert!(ok, "{} on {chip_name}: output `{name}` element {i}: device {a}, reference {b}", g.name);
        }
    }
    c
}

fn check(g: &Graph, inputs: &HashMap<String, Tensor>) -> Compiled {
    check_on(g, inputs, "trn2", LowerOptions::default(), 1e-4)
}

fn f32_input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::new(DataType::F32, shape.to_vec()))
}

fn node(g: &mut Graph, name: &str, op_type: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
    g.add_node(name, op_type, op, inputs).unwrap()[0]
}

#[test]
fn unary_functions() {
    let mut g = Graph::new("unary");
    let x = f32_input(&mut g, "x", &[3, 5, 7]);
    let pos = f32_input(&mut g, "pos", &[3, 5, 7]);
    let ops = [
        ("Relu", Unary::Relu),
        ("Sigmoid", Unary::Sigmoid),
        ("Tanh", Unary::Tanh),
        ("Exp", Unary::Exp),
        ("Abs", Unary::Abs),
        ("Neg", Unary::Neg),
        ("Erf", Unary::Erf),
        ("LeakyRelu", Unary::LeakyRelu(0.1)),
        ("HardSigmoid", Unary::HardSigmoid { alpha: 0.2, beta: 0.5 }),
        ("HardSwish", Unary::HardSwish),
        ("Gelu", Unary::Gelu { tanh: false }),
        ("Clip", Unary::Clip { min: -0.5, max: 0.25 }),
        ("Floor", Unary::Floor),
        ("Ceil", Unary::Ceil),
        ("Round", Unary::Round),
        ("Softplus", Unary::Softplus),
        ("Elu", Unary::Elu(1.5)),
        ("Mish", Unary::Mish),
        ("Sign", Unary::Sign),
    ];
    for (t, u) in ops {
        let y = node(&mut g, t, t, Op::Unary(u), vec![x]);
        g.outputs.push(y);
    }
    for (t, u) in [("Log", Unary::Log), ("Sqrt", Unary::Sqrt), ("Reciprocal", Unary::Reciprocal)] {
        let y = node(&mut g, t, t, Op::Unary(u), vec![pos]);
        g.outputs.push(y);
    }
    let inputs = HashMap::from([
        ("x".into(), random(&[3, 5, 7], 1, -3.0, 3.0)),
        ("pos".into(), random(&[3, 5, 7], 2, 0.1, 4.0)),
    ]);
    let c = check(&g, &inputs);
    assert_eq!(c.ops.len(), 22, "one elementwise step per op");
}

#[test]
fn binary_functions_broadcast_either_side() {
    let mut g = Graph::new("binary");
    let a = f32_input(&mut g, "a", &[2, 3, 4]);
    let col = f32_input(&mut g, "col", &[3, 1]);
    let row = f32_input(&mut g, "row", &[4]);
    let b1 = f32_input(&mut g, "b1", &[2, 1, 4]);
    let b2 = f32_input(&mut g, "b2", &[1, 3, 1]);
    let pos = f32_input(&mut g, "pos", &[2, 3, 4]);
    let cases = [
        ("Add", Binary::Add, a, col),
        ("Sub", Binary::Sub, row, a),
        ("Mul", Binary::Mul, b1, b2),
        ("Div", Binary::Div, a, pos),
        ("Pow", Binary::Pow, pos, col),
        ("Max", Binary::Max, a, row),
        ("Min", Binary::Min, b2, a),
        ("Less", Binary::Less, a, col),
        ("Greater", Binary::Greater, b1, b2),
        ("Equal", Binary::Equal, a, a),
        ("PRelu", Binary::PRelu, a, col),
    ];
    for (t, op, x, y) in cases {
        let z = node(&mut g, t, t, Op::Binary(op), vec![x, y]);
        g.outputs.push(z);
    }
    let cond = node(&mut g, "cond", "Greater", Op::Binary(Binary::Greater), vec![a, row]);
    let w = node(&mut g, "where", "Where", Op::Where, vec![cond, b2, a]);
    g.outputs.push(w);
    let inputs = HashMap::from([
        ("a".into(), random(&[2, 3, 4], 1, -2.0, 2.0)),
        ("col".into(), random(&[3, 1], 2, -2.0, 2.0)),
        ("row".into(), random(&[4], 3, -2.0, 2.0)),
        ("b1".into(), random(&[2, 1, 4], 4, -2.0, 2.0)),
        ("b2".into(), random(&[1, 3, 1], 5, -2.0, 2.0)),
        ("pos".into(), random(&[2, 3, 4], 6, 0.5, 2.0)),
    ]);
    check(&g, &inputs);
}

#[test]
fn integers_bools_and_casts() {
    let mut g = Graph::new("ints");
    let i = g.add_input("i", TensorType::new(DataType::I64, vec![2, 5]));
    let j = g.add_input("j", TensorType::new(DataType::I32, vec![5]));
    let f = f32_input(&mut g, "f", &[2, 5]);
    let ci = node(&mut g, "ci", "Cast", Op::Cast { saturate: true, to: DataType::I32 }, vec![i]);
    let s = node(&mut g, "add", "Add", Op::Binary(Binary::Add), vec![ci, j]);
    let d = node(&mut g, "div", "Div", Op::Binary(Binary::Div), vec![s, j]);
    let eq = node(&mut g, "eq", "Equal", Op::Binary(Binary::Equal), vec![ci, j]);
    let ft = node(&mut g, "trunc", "Cast", Op::Cast { saturate: true, to: DataType::I64 }, vec![f]);
    let fb = node(&mut g, "tobool", "Cast", Op::Cast { saturate: true, to: DataType::Bool }, vec![ft]);
    let nb = node(&mut g, "not", "Not", Op::Unary(Unary::Not), vec![fb]);
    let back = node(&mut g, "tofloat", "Cast", Op::Cast { saturate: true, to: DataType::F32 }, vec![i]);
    g.outputs.extend([s, d, eq, ft, nb, back]);
    let iv = Tensor::from_i128(DataType::I64, vec![2, 5], vec![-7, 3, 0, 12, 5, 9, -1, 4, 4, 100]).unwrap();
    let jv = Tensor::from_i128(DataType::I32, vec![5], vec![3, 3, 2, -5, 5]).unwrap();
    let fv = Tensor::from_f32(vec![2, 5], &[-2.7, -0.5, 0.0, 0.4, 1.5, 2.5, -1.5, 3.99, -3.99, 7.0]).unwrap();
    check(&g, &HashMap::from([("i".into(), iv), ("j".into(), jv), ("f".into(), fv)]));
}

#[test]
fn matrix_products() {
    let mut g = Graph::new("matmul");
    let a4 = f32_input(&mut g, "a4", &[2, 3, 5, 7]);
    let w = g.add_constant("w", random(&[7, 4], 10, -1.0, 1.0));
    let a3 = f32_input(&mut g, "a3", &[2, 5, 7]);
    let b3 = f32_input(&mut g, "b3", &[2, 7, 6]);
    let ab = f32_input(&mut g, "ab", &[2, 1, 5, 7]);
    let bb = f32_input(&mut g, "bb", &[3, 7, 4]);
    let v = f32_input(&mut g, "v", &[7]);
    let flat = node(&mut g, "flat", "MatMul", Op::MatMul, vec![a4, w]);
    let batch = node(&mut g, "batch", "MatMul", Op::MatMul, vec![a3, b3]);
    let bcast = node(&mut g, "bcast", "MatMul", Op::MatMul, vec![ab, bb]);
    let vec_mat = node(&mut g, "vecmat", "MatMul", Op::MatMul, vec![v, w]);
    let ga = f32_input(&mut g, "ga", &[7, 5]);
    let gb = g.add_constant("gb", random(&[4, 7], 11, -1.0, 1.0));
    let gc = g.add_constant("gc", random(&[4], 12, -1.0, 1.0));
    let gm = f32_input(&mut g, "gm", &[5, 4]);
    let op = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true };
    let g1 = node(&mut g, "gemm_row", "Gemm", op.clone(), vec![ga, gb, gc]);
    let g2 = node(&mut g, "gemm_mat", "Gemm", op, vec![ga, gb, gm]);
    g.outputs.extend([flat, batch, bcast, vec_mat, g1, g2]);
    let inputs = HashMap::from([
        ("a4".into(), random(&[2, 3, 5, 7], 1, -1.0, 1.0)),
        ("a3".into(), random(&[2, 5, 7], 2, -1.0, 1.0)),
        ("b3".into(), random(&[2, 7, 6], 3, -1.0, 1.0)),
        ("ab".into(), random(&[2, 1, 5, 7], 4, -1.0, 1.0)),
        ("bb".into(), random(&[3, 7, 4], 5, -1.0, 1.0)),
        ("v".into(), random(&[7], 6, -1.0, 1.0)),
        ("ga".into(), random(&[7, 5], 7, -1.0, 1.0)),
        ("gm".into(), random(&[5, 4], 8, -1.0, 1.0)),
    ]);
    let c = check(&g, &inputs);
    assert!(c.ops.iter().any(|o| o.node == "gemm_mat" && o.kernel == "matmul+elementwise"));
    assert!(c.ops.iter().any(|o| o.node == "gemm_row" && o.kernel == "matmul"));
}

#[test]
fn rows_softmax_norms_reductions_argmax() {
    let mut g = Graph::new("rows");
    let x = f32_input(&mut g, "x", &[2, 6, 5]);
    let sm = |axis, kind| Op::Softmax { kind, axis, coerce_2d: false };
    let s_last = node(&mut g, "sm_last", "Softmax", sm(2, SoftmaxKind::Softmax), vec![x]);
    let s_mid = node(&mut g, "sm_mid", "Softmax", sm(1, SoftmaxKind::Softmax), vec![x]);
    let ls = node(&mut g, "logsm", "LogSoftmax", sm(2, SoftmaxKind::LogSoftmax), vec![x]);
    let scale = g.add_constant("scale", random(&[6, 5], 3, 0.5, 1.5));
    let bias = g.add_constant("bias", random(&[5], 4, -1.0, 1.0));
    let ln = g
        .add_node(
            "ln",
            "LayerNormalization",
            Op::LayerNorm { axis: 1, epsilon: 1e-5, stats_dtype: DataType::F32 },
            vec![x, scale, bias],
        )
        .unwrap()[0];
    let red = |kind, axes: Vec<usize>, keepdims| Op::Reduce { kind, axes, keepdims };
    let mean = node(&mut g, "mean", "ReduceMean", red(ReduceKind::Mean, vec![0, 2], true), vec![x]);
    let sum = node(&mut g, "sum", "ReduceSum", red(ReduceKind::Sum, vec![1], false), vec![x]);
    let max = node(&mut g, "max", "ReduceMax", red(ReduceKind::Max, vec![2], false), vec![x]);
    let l2 = node(&mut g, "l2", "ReduceL2", red(ReduceKind::L2, vec![1, 2], false), vec![x]);
    let lse = node(&mut g, "lse", "ReduceLogSumExp", red(ReduceKind::LogSumExp, vec![0], false), vec![x]);
    let am = |max, axis| Op::ArgReduce { max, axis, keepdims: true, last_index: false };
    let amax = node(&mut g, "argmax", "ArgMax", am(true, 1), vec![x]);
    let amin = node(&mut g, "argmin", "ArgMin", am(false, 2), vec![x]);
    g.outputs.extend([s_last, s_mid, ls, ln, mean, sum, max, l2, lse, amax, amin]);
    check(&g, &HashMap::from([("x".into(), random(&[2, 6, 5], 1, -3.0, 3.0))]));
}

#[test]
fn data_movement() {
    let mut g = Graph::new("movement");
    let x = f32_input(&mut g, "x", &[2, 3, 4, 5]);
    let y = f32_input(&mut g, "y", &[2, 2, 4, 5]);
    let t = node(&mut g, "t", "Transpose", Op::Transpose { perm: vec![0, 2, 3, 1] }, vec![x]);
    let t2 = node(&mut g, "t2", "Transpose", Op::Transpose { perm: vec![3, 1, 0, 2] }, vec![x]);
    let cat = node(&mut g, "cat", "Concat", Op::Concat { axis: 1 }, vec![x, y, x]);
    let sp = g.add_node("split", "Split", Op::Split { axis: 3, sizes: vec![2, 3] }, vec![x]).unwrap();
    let sl = node(
        &mut g,
        "slice",
        "Slice",
        Op::Slice {
            axes: vec![
                SliceAxis { axis: 2, start: 3, step: -2, len: 2 },
                SliceAxis { axis: 3, start: 1, step: 2, len: 2 },
            ],
        },
        vec![x],
    );
    let pad = |mode| Op::Pad { mode, pads: vec![(0, 0), (1, 0), (2, -1), (1, 2)], value: 0.5 };
    let pc = node(&mut g, "pad_c", "Pad", pad(PadMode::Constant), vec![x]);
    let pe = node(&mut g, "pad_e", "Pad", pad(PadMode::Edge), vec![x]);
    let pr = node(
        &mut g,
        "pad_r",
        "Pad",
        Op::Pad { mode: PadMode::Reflect, pads: vec![(0, 0), (0, 0), (2, 1), (3, 2)], value: 0.0 },
        vec![x],
    );
    let idx = g.add_constant("idx", Tensor::from_i64s(&[3, 1, -1, 0]));
    let ga = node(&mut g, "gather", "Gather", Op::Gather { axis: 2 }, vec![x, idx]);
    let ids = g.add_input("ids", TensorType::new(DataType::I64, vec![3]));
    let table = f32_input(&mut g, "table", &[6, 4]);
    let emb = node(&mut g, "emb", "Gather", Op::Gather { axis: 0 }, vec![table, ids]);
    let tile = node(&mut g, "tile", "Tile", Op::Tile { repeats: vec![1, 2, 1, 3] }, vec![x]);
    let d2s_in = f32_input(&mut g, "d2s", &[1, 8, 2, 3]);
    let d2s = node(&mut g, "d2s_crd", "DepthToSpace", Op::DepthToSpace { block: 2, crd: true }, vec![d2s_in]);
    let d2s2 = node(&mut g, "d2s_dcr", "DepthToSpace", Op::DepthToSpace { block: 2, crd: false }, vec![d2s_in]);
    let s2d_in = f32_input(&mut g, "s2d", &[1, 2, 4, 6]);
    let s2d = node(&mut g, "s2d", "SpaceToDepth", Op::SpaceToDepth { block: 2 }, vec![s2d_in]);
    let r = f32_input(&mut g, "r", &[5]);
    let exp = node(&mut g, "expand", "Expand", Op::Expand { shape: vec![2, 2, 1, 5] }, vec![r]);
    g.outputs.extend([t, t2, cat, sp[0], sp[1], sl, pc, pe, pr, ga, emb, tile, d2s, d2s2, s2d, exp]);
    let inputs = HashMap::from([
        ("x".into(), random(&[2, 3, 4, 5], 1, -1.0, 1.0)),
        ("y".into(), random(&[2, 2, 4, 5], 2, -1.0, 1.0)),
        ("ids".into(), Tensor::from_i128(DataType::I64, vec![3], vec![5, 0, 2]).unwrap()),
        ("table".into(), random(&[6, 4], 3, -1.0, 1.0)),
        ("d2s".into(), random(&[1, 8, 2, 3], 4, -1.0, 1.0)),
        ("r".into(), random(&[5], 5, -1.0, 1.0)),
        ("s2d".into(), random(&[1, 2, 4, 6], 6, -1.0, 1.0)),
    ]);
    check(&g, &inputs);
}

fn conv_op(k: usize, stride: usize, pad: usize, group: usize) -> Op {
    Op::Conv(Conv {
        window: Window {
            kernel: vec![k, k],
            strides: vec![stride, stride],
            pads: vec![(pad, pad); 2],
            dilations: vec![1, 1],
        },
        group,
        activation: None,
    })
}

#[test]
fn convolutions_with_fused_batch_norm_residual_and_relu() {
    let mut g = Graph::new("cnn");
    let x = f32_input(&mut g, "x", &[2, 3, 9, 9]);
    let w1 = g.add_constant("w1", random(&[8, 3, 3, 3], 1, -0.5, 0.5));
    let b1 = g.add_constant("b1", random(&[8], 2, -0.5, 0.5));
    let c1 = node(&mut g, "conv1", "Conv", conv_op(3, 1, 1, 1), vec![x, w1, b1]);
    let bn = |g: &mut Graph, name: &str, seed| -> Vec<ValueId> {
        ["s", "b", "m", "v"]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (lo, hi) = if *p == "v" { (0.5, 1.5) } else { (-0.5, 0.5) };
                g.add_constant(&format!("{name}.{p}"), random(&[8], seed + i as u64, lo, hi))
            })
            .collect()
    };
    let p1 = bn(&mut g, "bn1", 10);
    let n1 = node(
        &mut g,
        "bn1",
        "BatchNormalization",
        Op::BatchNorm { epsilon: 1e-5, momentum: None },
        vec![c1, p1[0], p1[1], p1[2], p1[3]],
    );
    let r1 = node(&mut g, "relu1", "Relu", Op::Unary(Unary::Relu), vec![n1]);
    // Depthwise 3x3, then a 1x1 with the residual add and ReLU fused.
    let wd = g.add_constant("wd", random(&[8, 1, 3, 3], 3, -0.5, 0.5));
    let dw = node(&mut g, "dw", "Conv", conv_op(3, 1, 1, 8), vec![r1, wd]);
    let w2 = g.add_constant("w2", random(&[8, 8, 1, 1], 4, -0.5, 0.5));
    let c2 = node(&mut g, "conv2", "Conv", conv_op(1, 1, 0, 1), vec![dw, w2]);
    let add = node(&mut g, "add", "Add", Op::Binary(Binary::Add), vec![c2, r1]);
    let r2 = node(&mut g, "relu2", "Relu", Op::Unary(Unary::Relu), vec![add]);
    let pool = |kind| Pool {
        kind,
        window: Window { kernel: vec![3, 3], strides: vec![2, 2], pads: vec![(1, 1); 2], dilations: vec![1, 1] },
        ceil_mode: false,
        with_indices: false,
        column_major: false,
    };
    let mp = node(&mut g, "maxpool", "MaxPool", Op::Pool(pool(PoolKind::Max)), vec![r2]);
    let ap = node(
        &mut g,
        "avgpool",
        "AveragePool",
        Op::Pool(pool(PoolKind::Average { count_include_pad: false })),
        vec![r2],
    );
    let lrn = node(&mut g, "lrn", "LRN", Op::Lrn { size: 3, alpha: 1e-2, beta: 0.75, bias: 1.0 }, vec![mp]);
    let gap = node(
        &mut g,
        "gap",
        "GlobalAveragePool",
        Op::GlobalPool(PoolKind::Average { count_include_pad: false }),
        vec![ap],
    );
    let p2 = bn(&mut g, "bn2", 20);
    let n2 = node(
        &mut g,
        "bn2",
        "BatchNormalization",
        Op::BatchNorm { epsilon: 1e-5, momentum: None },
        vec![lrn, p2[0], p2[1], p2[2], p2[3]],
    );
    let wt = g.add_constant("wt", random(&[8, 2, 2, 2], 5, -0.5, 0.5));
    let ct = node(
        &mut g,
        "deconv",
        "ConvTranspose",
        Op::ConvTranspose(ConvTranspose {
            window: Window { kernel: vec![2, 2], strides: vec![2, 2], pads: vec![(0, 0); 2], dilations: vec![1, 1] },
            group: 1,
            output_padding: vec![1, 0],
        }),
        vec![mp, wt],
    );
    // An activation the passes fuse into the Conv that the kernel's epilogue lacks.
    let w3 = g.add_constant("w3", random(&[4, 3, 1, 1], 6, -0.5, 0.5));
    let c3 = node(&mut g, "conv3", "Conv", conv_op(1, 1, 0, 1), vec![x, w3]);
    let l3 = node(&mut g, "leaky", "LeakyRelu", Op::Unary(Unary::LeakyRelu(0.2)), vec![c3]);
    g.outputs.extend([r2, lrn, gap, n2, ct, l3]);
    let inputs = HashMap::from([("x".into(), random(&[2, 3, 9, 9], 7, -1.0, 1.0))]);
    for (chip_name, cores) in [("trn2", 1), ("trn1", 2)] {
        let c = check_on(&g, &inputs, chip_name, LowerOptions { cores, ..Default::default() }, 1e-4);
        let types: Vec<&str> = c.ops.iter().map(|o| o.op_type.as_str()).collect();
        assert!(types.contains(&"Conv+BatchNormalization+Relu"), "{types:?}");
        assert!(types.iter().any(|t| t.starts_with("Conv+Add")), "{types:?}");
        assert!(c.ops.iter().any(|o| o.op_type == "Conv+LeakyRelu" && o.kernel == "conv2d+elementwise"), "{:?}", c.ops);
        if cores == 2 {
            assert_eq!(c.parallelism, Parallelism::DataParallel { cores: 2, batch: 2 });
            let used: std::collections::BTreeSet<u16> = c.program.insts.iter().map(|i| i.core).collect();
            assert_eq!(used.len(), 2);
        }
    }
}

#[test]
fn bf16_devices_match_within_bf16_tolerance() {
    let mut g = Graph::new("bf16");
    let x = f32_input(&mut g, "x", &[4, 16]);
    let w = g.add_constant("w", random(&[16, 8], 1, -0.5, 0.5));
    let y = node(&mut g, "mm", "MatMul", Op::MatMul, vec![x, w]);
    let s =
        node(&mut g, "sm", "Softmax", Op::Softmax { kind: SoftmaxKind::Softmax, axis: 1, coerce_2d: false }, vec![y]);
    g.outputs.push(s);
    let inputs = HashMap::from([("x".into(), random(&[4, 16], 2, -1.0, 1.0))]);
    let c = check_on(&g, &inputs, "trn2", LowerOptions { dtype: DType::Bf16, ..Default::default() }, 3e-2);
    assert!(c.program.tensors.iter().any(|t| t.dtype == DType::Bf16));
}

#[test]
fn aliases_copies_and_outputs_that_are_inputs() {
    let mut g = Graph::new("alias");
    let x = f32_input(&mut g, "x", &[2, 6]);
    let r = node(&mut g, "r", "Reshape", Op::Reshape { shape: vec![3, 4] }, vec![x]);
    let e = node(&mut g, "e", "Exp", Op::Unary(Unary::Exp), vec![r]);
    let f = node(&mut g, "f", "Flatten", Op::Reshape { shape: vec![12] }, vec![e]);
    let k = g.add_constant("k", random(&[2], 1, 0.0, 1.0));
    g.outputs.extend([f, e, x, k]);
    let inputs = HashMap::from([("x".into(), random(&[2, 6], 2, -1.0, 1.0))]);
    let c = check(&g, &inputs);
    assert_eq!(c.outputs.len(), 4);
    assert_eq!(c.outputs[2].name, "x");
    assert_ne!(c.outputs[2].tensor, "x", "an output that is an input gets its own tensor");
}

#[test]
fn unsupported_ops_are_compile_errors_naming_the_node() {
    let mut g = Graph::new("bad");
    let x = f32_input(&mut g, "x", &[4]);
    let y = node(&mut g, "my_sin", "Sin", Op::Unary(Unary::Sin), vec![x]);
    g.outputs.push(y);
    let e = compile(&g, &chip("trn2"), &LowerOptions::default()).unwrap_err();
    assert!(matches!(&e, LowerError::Unsupported { node, op_type, .. } if node == "my_sin" && op_type == "Sin"), "{e}");
    assert!(e.to_string().contains("`my_sin` (Sin)"), "{e}");
    let e = compile(&g, &chip("trn1"), &LowerOptions { cores: 3, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("--cores 3"), "{e}");
}

#[test]
fn hbm_is_planned_by_liveness_and_overflow_names_the_tensor() {
    // A chain of 8 intermediates of 4 KiB: with liveness two are live at a time.
    let mut g = Graph::new("chain");
    let mut v = f32_input(&mut g, "x", &[1024]);
    for i in 0..8 {
        v = node(&mut g, &format!("n{i}"), "Exp", Op::Unary(Unary::Exp), vec![v]);
        v = node(&mut g, &format!("m{i}"), "Neg", Op::Unary(Unary::Neg), vec![v]);
    }
    g.outputs.push(v);
    let opts = LowerOptions { optimize: false, ..Default::default() };
    let c = compile(&g, &chip("trn2"), &opts).unwrap();
    assert_eq!(c.hbm.arena, 2 * 4096, "two intermediates live at a time");
    assert_eq!(c.hbm.peak, c.hbm.inputs + c.hbm.outputs + c.hbm.arena + c.hbm.weights + c.hbm.workspace);
    let mut small = chip("trn2");
    small.chip.hbm_bytes = 4096 * 3;
    let e = compile(&g, &small, &opts).unwrap_err();
    assert!(
        matches!(&e, LowerError::HbmOverflow { tensor, .. } if tensor.starts_with('n') || tensor.starts_with('m')),
        "{e}"
    );
    let mut tiny = chip("trn2");
    tiny.chip.hbm_bytes = 2048;
    let e = compile(&g, &tiny, &opts).unwrap_err();
    assert!(e.to_string().contains("at tensor `x`"), "{e}");
}

/// A GPT-style block as an exporter writes it: embedding gather, LayerNorm, fused QKV
/// projection, heads split by Reshape/Transpose, scaled scores with a causal mask,
/// Softmax, the attention-weighted sum, the output projection, residual adds and a GELU
/// MLP; batch 2 split data-parallel over two cores.
#[test]
fn transformer_block() {
    let (b, t, d, h, v) = (2usize, 8usize, 16usize, 2usize, 30usize);
    let hd = d / h;
    let mut g = Graph::new("gpt");
    let ids = g.add_input("ids", TensorType::new(DataType::I64, vec![b, t]));
    let wte = g.add_constant("wte", random(&[v, d], 1, -1.0, 1.0));
    let x = node(&mut g, "embed", "Gather", Op::Gather { axis: 0 }, vec![wte, ids]);
    let ln_s = g.add_constant("ln.s", random(&[d], 2, 0.5, 1.5));
    let ln_b = g.add_constant("ln.b", random(&[d], 3, -0.5, 0.5));
    let ln = Op::LayerNorm { axis: 2, epsilon: 1e-5, stats_dtype: DataType::F32 };
    let xn = g.add_node("ln1", "LayerNormalization", ln.clone(), vec![x, ln_s, ln_b]).unwrap()[0];
    let wqkv = g.add_constant("wqkv", random(&[d, 3 * d], 4, -0.3, 0.3));
    let bqkv = g.add_constant("bqkv", random(&[3 * d], 5, -0.1, 0.1));
    let qkv = node(&mut g, "qkv", "MatMul", Op::MatMul, vec![xn, wqkv]);
    let qkv = node(&mut g, "qkv_b", "Add", Op::Binary(Binary::Add), vec![qkv, bqkv]);
    let parts = g.add_node("split", "Split", Op::Split { axis: 2, sizes: vec![d, d, d] }, vec![qkv]).unwrap();
    let heads = |g: &mut Graph, x: ValueId, name: &str, perm: Vec<usize>| {
        let r = node(g, &format!("{name}_r"), "Reshape", Op::Reshape { shape: vec![b, t, h, hd] }, vec![x]);
        node(g, &format!("{name}_t"), "Transpose", Op::Transpose { perm }, vec![r])
    };
    let q = heads(&mut g, parts[0], "q", vec![0, 2, 1, 3]);
    let k = heads(&mut g, parts[1], "k", vec![0, 2, 3, 1]);
    let vv = heads(&mut g, parts[2], "v", vec![0, 2, 1, 3]);
    let s = node(&mut g, "scores", "MatMul", Op::MatMul, vec![q, k]);
    let scale = g.add_constant("scale", Tensor::from_f32(vec![], &[1.0 / (hd as f32).sqrt()]).unwrap());
    let s = node(&mut g, "scaled", "Mul", Op::Binary(Binary::Mul), vec![s, scale]);
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { -1e9 } else { 0.0 }).collect();
    let mask = g.add_constant("mask", Tensor::from_f32(vec![t, t], &mask).unwrap());
    let s = node(&mut g, "masked", "Add", Op::Binary(Binary::Add), vec![s, mask]);
    let p = node(
        &mut g,
        "probs",
        "Softmax",
        Op::Softmax { kind: SoftmaxKind::Softmax, axis: 3, coerce_2d: false },
        vec![s],
    );
    let o = node(&mut g, "attn", "MatMul", Op::MatMul, vec![p, vv]);
    let o = node(&mut g, "merge_t", "Transpose", Op::Transpose { perm: vec![0, 2, 1, 3] }, vec![o]);
    let o = node(&mut g, "merge_r", "Reshape", Op::Reshape { shape: vec![b, t, d] }, vec![o]);
    let wo = g.add_constant("wo", random(&[d, d], 6, -0.3, 0.3));
    let o = node(&mut g, "proj", "MatMul", Op::MatMul, vec![o, wo]);
    let x = node(&mut g, "res1", "Add", Op::Binary(Binary::Add), vec![x, o]);
    let xn = g.add_node("ln2", "LayerNormalization", ln, vec![x, ln_s, ln_b]).unwrap()[0];
    let w1 = g.add_constant("w1", random(&[d, 4 * d], 7, -0.3, 0.3));
    let f = node(&mut g, "fc", "MatMul", Op::MatMul, vec![xn, w1]);
    let f = node(&mut g, "gelu", "Gelu", Op::Unary(Unary::Gelu { tanh: false }), vec![f]);
    let w2 = g.add_constant("w2", random(&[4 * d, d], 8, -0.3, 0.3));
    let f = node(&mut g, "fc2", "MatMul", Op::MatMul, vec![f, w2]);
    let y = node(&mut g, "res2", "Add", Op::Binary(Binary::Add), vec![x, f]);
    g.outputs.push(y);
    let idv: Vec<i128> = (0..b * t).map(|i| (i * 7 % v) as i128).collect();
    let inputs = HashMap::from([("ids".into(), Tensor::from_i128(DataType::I64, vec![b, t], idv).unwrap())]);
    let c = check_on(&g, &inputs, "trn2", LowerOptions { cores: 2, ..Default::default() }, 1e-4);
    assert_eq!(c.parallelism, Parallelism::DataParallel { cores: 2, batch: 2 });
    check_on(&g, &inputs, "trn1", LowerOptions::default(), 1e-4);
}

/// Concatenations along an axis after which the pieces are contiguous (DenseNet's
/// growing feature maps) get their pieces written in place: no copy; a piece that is
/// a graph input, used twice, or a graph output is copied.
#[test]
fn concatenation_pieces_are_written_in_place() {
    let mut g = Graph::new("dense");
    let x = f32_input(&mut g, "x", &[1, 3, 4, 5]);
    let a = node(&mut g, "a", "Relu", Op::Unary(Unary::Relu), vec![x]);
    let b = node(&mut g, "b", "Exp", Op::Unary(Unary::Exp), vec![x]);
    let c1 = node(&mut g, "c1", "Concat", Op::Concat { axis: 1 }, vec![a, b]);
    let n = node(&mut g, "n", "Neg", Op::Unary(Unary::Neg), vec![c1]);
    let c2 = node(&mut g, "c2", "Concat", Op::Concat { axis: 1 }, vec![c1, n, x]);
    let c3 = node(&mut g, "c3", "Concat", Op::Concat { axis: 3 }, vec![a, a]);
    g.outputs.extend([c2, c3, n]);
    let inputs = HashMap::from([("x".into(), random(&[1, 3, 4, 5], 1, -1.0, 1.0))]);
    let c = check_on(&g, &inputs, "trn2", LowerOptions { optimize: false, ..Default::default() }, 1e-5);
    let spans: Vec<&str> = c.ops.iter().map(|o| o.node.as_str()).collect();
    assert!(!spans.contains(&"c1"), "c1's pieces are in place: {spans:?}");
    assert!(spans.contains(&"c2"), "c2 copies the graph input x and the output n: {spans:?}");
    assert!(spans.contains(&"c3"), "the pieces of c3 are not contiguous: {spans:?}");
}
