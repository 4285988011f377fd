use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::graph::{Binary, DataType, Op, Tensor, TensorType, Unary};
use crate::interp;

fn f32t(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_f32(shape.to_vec(), &v).unwrap()
}

fn run(g: &Graph, inputs: &HashMap<String, Tensor>) -> Vec<Tensor> {
    interp::run(g, inputs).unwrap().into_iter().map(|(_, t)| t).collect()
}

#[test]
fn folds_constants_and_removes_dead_nodes() {
    let mut g = Graph::new("fold");
    let x = g.add_input("x", TensorType::new(DataType::F32, vec![3]));
    let a = g.add_constant("a", f32t(&[3], 1));
    let b = g.add_constant("b", f32t(&[3], 2));
    let ab = g.add_node("ab", "Add", Op::Binary(Binary::Add), vec![a, b]).unwrap()[0];
    let y = g.add_node("y", "Mul", Op::Binary(Binary::Mul), vec![x, ab]).unwrap()[0];
    let _dead = g.add_node("dead", "Exp", Op::Unary(Unary::Exp), vec![x]).unwrap();
    g.outputs.push(y);
    let inputs = HashMap::from([("x".to_string(), f32t(&[3], 3))]);
    let before = run(&g, &inputs);
    assert_eq!(fold_constants(&mut g).unwrap(), 1);
    assert_eq!(remove_dead_code(&mut g), 1);
    g.verify().unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(run(&g, &inputs), before);
}

#[test]
fn removes_identities_but_keeps_output_names() {
    let mut g = Graph::new("ids");
    let x = g.add_input("x", TensorType::new(DataType::F32, vec![2, 3]));
    let a = g.add_node("id0", "Identity", Op::Identity, vec![x]).unwrap()[0];
    let b = g.add_node("rs0", "Reshape", Op::Reshape { shape: vec![2, 3] }, vec![a]).unwrap()[0];
    let c = g.add_node("relu", "Relu", Op::Unary(Unary::Relu), vec![b]).unwrap()[0];
    let d = g.add_node("id1", "Dropout", Op::Identity, vec![c]).unwrap()[0];
    g.outputs.push(d);
    assert_eq!(remove_identities(&mut g), 2);
    g.verify().unwrap();
    assert_eq!(g.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["relu", "id1"]);
    assert_eq!(g.value(g.nodes[0].inputs[0]).name, "x");
    assert_eq!(g.value(g.outputs[0]).name, "id1:0");
}

#[test]
fn fuses_matmul_bias_activation() {
    let mut g = Graph::new("mlp");
    let x = g.add_input("x", TensorType::new(DataType::F32, vec![4, 8]));
    let w = g.add_constant("w", f32t(&[8, 5], 4));
    let b = g.add_constant("b", f32t(&[5], 5));
    let mm = g.add_node("mm", "MatMul", Op::MatMul, vec![x, w]).unwrap()[0];
    let add = g.add_node("add", "Add", Op::Binary(Binary::Add), vec![b, mm]).unwrap()[0];
    let y = g.add_node("act", "Relu", Op::Unary(Unary::Relu), vec![add]).unwrap()[0];
    g.outputs.push(y);
    let inputs = HashMap::from([("x".to_string(), f32t(&[4, 8], 6))]);
    let before = run(&g, &inputs);
    assert_eq!(fuse_matmul(&mut g), 2);
    g.verify().unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op, Op::FusedMatMul { activation: Some(Unary::Relu) });
    assert_eq!(g.nodes[0].op_type, "MatMul+Add+Relu");
    assert_eq!(run(&g, &inputs), before);
}

#[test]
fn folds_batch_norm_into_conv_and_fuses_the_activation() {
    use crate::graph::{Conv, Window};
    let mut g = Graph::new("cbr");
    let x = g.add_input("x", TensorType::new(DataType::F32, vec![2, 3, 6, 6]));
    let w = g.add_constant("w", f32t(&[4, 3, 3, 3], 1));
    let b = g.add_constant("b", f32t(&[4], 2));
    let params: Vec<_> = (0..4)
        .map(|i| {
            let t = f32t(&[4], 10 + i);
            // A positive variance.
            let t = if i == 3 {
                Tensor::from_f64(DataType::F32, vec![4], t.to_f64_vec().iter().map(|v| v.abs() + 0.1).collect())
                    .unwrap()
            } else {
                t
            };
            g.add_constant(&format!("bn{i}"), t)
        })
        .collect();
    let window = Window { kernel: vec![3, 3], strides: vec![1, 1], pads: vec![(1, 1); 2], dilations: vec![1, 1] };
    let c =
        g.add_node("conv", "Conv", Op::Conv(Conv { window, group: 1, activation: None }), vec![x, w, b]).unwrap()[0];
    let mut bn_in = vec![c];
    bn_in.extend(&params);
    let n = g.add_node("bn", "BatchNormalization", Op::BatchNorm { epsilon: 1e-5, momentum: None }, bn_in).unwrap()[0];
    let y = g.add_node("relu", "Relu", Op::Unary(Unary::Relu), vec![n]).unwrap()[0];
    g.outputs.push(y);
    let inputs = HashMap::from([("x".to_string(), f32t(&[2, 3, 6, 6], 7))]);
    let before = run(&g, &inputs);
    optimize(&mut g).unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op_type, "Conv+BatchNormalization+Relu");
    let after = run(&g, &inputs);
    for (a, b) in after[0].to_f64_vec().iter().zip(before[0].to_f64_vec()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn does_not_fuse_a_bias_that_grows_the_product() {
    let mut g = Graph::new("bcast");
    let x = g.add_input("x", TensorType::new(DataType::F32, vec![1, 4]));
    let w = g.add_constant("w", f32t(&[4, 3], 1));
    let b = g.add_constant("b", f32t(&[2, 3], 2));
    let mm = g.add_node("mm", "MatMul", Op::MatMul, vec![x, w]).unwrap()[0];
    let y = g.add_node("add", "Add", Op::Binary(Binary::Add), vec![mm, b]).unwrap()[0];
    g.outputs.push(y);
    assert_eq!(fuse_matmul(&mut g), 0);
}

#[test]
fn layouts_put_contraction_axes_on_partitions() {
    let mut g = Graph::new("mm");
    let a = g.add_input("a", TensorType::new(DataType::F32, vec![2, 16, 32]));
    let b = g.add_input("b", TensorType::new(DataType::F32, vec![32, 8]));
    let y = g.add_node("mm", "MatMul", Op::MatMul, vec![a, b]).unwrap()[0];
    let s = g
        .add_node(
            "sm",
            "Softmax",
            Op::Softmax { kind: crate::graph::SoftmaxKind::Softmax, axis: 2, coerce_2d: false },
            vec![y],
        )
        .unwrap()[0];
    g.outputs.push(s);
    let conflicts = choose_layouts(&mut g);
    assert_eq!(g.value(a).partition_axis, Some(2));
    assert_eq!(g.value(b).partition_axis, Some(0));
    assert_eq!(g.value(y).partition_axis, Some(1));
    assert_eq!(g.value(s).partition_axis, Some(0));
    // Softmax wants axis 0 of the product, which comes out with axis 1 on partitions.
    assert_eq!(conflicts, 1);
}

fn unary_strategy() -> impl Strategy<Value = Unary> {
    prop_oneof![
        Just(Unary::Relu),
        Just(Unary::Neg),
        Just(Unary::Tanh),
        Just(Unary::Sigmoid),
        Just(Unary::Abs),
        (0.01f64..0.5).prop_map(Unary::LeakyRelu),
    ]
}

fn binary_strategy() -> impl Strategy<Value = Binary> {
    prop_oneof![Just(Binary::Add), Just(Binary::Sub), Just(Binary::Mul), Just(Binary::Max), Just(Binary::Min)]
}

proptest! {
    /// Any chain of elementwise ops over broadcasting operands gives bit-identical
    /// results before and after [`optimize`], in every float type.
    #[test]
    fn optimize_preserves_elementwise_chains(
        ops in prop::collection::vec((any::<bool>(), unary_strategy(), binary_strategy(), 0usize..3), 1..8),
        dt in prop_oneof![Just(DataType::F32), Just(DataType::F16), Just(DataType::Bf16), Just(DataType::F64)],
        seed in 0u64..1000,
    ) {
        let shapes = [vec![3, 4], vec![4], vec![3, 1]];
        let mut g = Graph::new("chain");
        let x = g.add_input("x", TensorType::new(dt, vec![3, 4]));
        let mut inputs = HashMap::new();
        let cast = |t: Tensor| Tensor::from_f64(dt, t.shape().to_vec(), t.to_f64_vec()).unwrap();
        inputs.insert("x".to_string(), cast(f32t(&[3, 4], seed)));
        let mut cur = x;
        for (k, (is_unary, u, b, s)) in ops.iter().enumerate() {
            cur = if *is_unary {
                g.add_node(&format!("u{k}"), "U", Op::Unary(u.clone()), vec![cur]).unwrap()[0]
            } else {
                let name = format!("in{k}");
                let other = g.add_input(&name, TensorType::new(dt, shapes[*s].clone()));
                inputs.insert(name, cast(f32t(&shapes[*s], seed + k as u64 + 1)));
                g.add_node(&format!("b{k}"), "B", Op::Binary(*b), vec![cur, other]).unwrap()[0]
            };
        }
        g.outputs.push(cur);
        let before = run(&g, &inputs);
        optimize(&mut g).unwrap();
        prop_assert_eq!(g.nodes.len(), 1);
        prop_assert_eq!(run(&g, &inputs), before);
    }
}
