//! Import tests, and the corpus of broken models: each must give a named error, never a panic.

use std::collections::HashMap;

use proptest::prelude::*;

use super::builder::{attr_float, attr_int, attr_ints, ModelBuilder};
use super::*;
use crate::graph::{DataType, Op, Tensor};

const F: DataType = DataType::F32;

fn err_of(bytes: &[u8]) -> String {
    match Model::decode(bytes, "broken.onnx", None) {
        Err(e) => e.to_string(),
        Ok(m) => match m.import(&ImportOptions::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the broken model imported"),
        },
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` does not name {p}");
    }
}

/// A small real model: Conv (with initializer weights) → Relu → Flatten → Gemm.
fn conv_model() -> ModelBuilder {
    let w =
        Tensor::from_f32(vec![4, 3, 3, 3], &(0..108).map(|i| (i as f32 - 54.0) / 100.0).collect::<Vec<_>>()).unwrap();
    let fc =
        Tensor::from_f32(vec![5, 4 * 4 * 4], &(0..320).map(|i| (i % 7) as f32 / 10.0).collect::<Vec<_>>()).unwrap();
    ModelBuilder::new(13)
        .input("x", F, &[1, 3, 6, 6])
        .initializer("w", &w)
        .initializer("fc", &fc)
        .node("Conv", "conv0", &["x", "w"], &["c"], vec![attr_ints("kernel_shape", &[3, 3])])
        .node("Relu", "relu0", &["c"], &["r"], vec![])
        .node("Flatten", "flat0", &["r"], &["f"], vec![])
        .node("Gemm", "fc0", &["f", "fc"], &["y"], vec![attr_int("transB", 1)])
        .output("y", F, &[1, 5])
}

#[test]
fn imports_and_runs_a_small_cnn() {
    let g = Model::decode(&conv_model().encode(), "cnn", None).unwrap().import(&ImportOptions::default()).unwrap();
    assert_eq!(g.op_counts(), vec![("Conv".into(), 1), ("Flatten".into(), 1), ("Gemm".into(), 1), ("Relu".into(), 1)]);
    assert_eq!(g.value(g.outputs[0]).ty.shape, vec![1, 5]);
    let x = Tensor::from_f32(vec![1, 3, 6, 6], &vec![0.5; 108]).unwrap();
    let out = crate::interp::run(&g, &HashMap::from([("x".to_string(), x)])).unwrap();
    assert_eq!(out[0].1.shape(), &[1, 5]);
}

#[test]
fn truncated_files_are_named_errors_at_every_length() {
    let bytes = conv_model().encode();
    for len in 0..bytes.len() {
        match Model::decode(&bytes[..len], "cut.onnx", None).and_then(|m| m.import(&ImportOptions::default())) {
            Ok(_) => panic!("a model cut at {len} of {} bytes imported", bytes.len()),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                if let OnnxError::Decode { what, .. } = &e {
                    assert_eq!(what, "cut.onnx");
                    assert!(msg.contains("truncated or corrupt"), "{msg}");
                }
            }
        }
    }
}

#[test]
fn a_flipped_wire_type_is_a_decode_error() {
    let mut bytes = conv_model().encode();
    // ModelProto.graph is field 7, length-delimited: tag byte 0x3a. Make it a varint (0x38).
    let at = bytes.iter().position(|&b| b == 0x3a).expect("graph field");
    bytes[at] = 0x38;
    assert_names(&err_of(&bytes), &["broken.onnx", "ModelProto", "truncated or corrupt"]);
    // A wire type that does not exist (7) is refused as well.
    let mut bytes = conv_model().encode();
    bytes[at] = 0x3f;
    assert_names(&err_of(&bytes), &["broken.onnx", "ModelProto"]);
}

#[test]
fn wrong_element_types_name_the_node() {
    let m = ModelBuilder::new(14)
        .input("a", F, &[2])
        .input("b", DataType::I64, &[2])
        .node("Add", "add7", &["a", "b"], &["y"], vec![])
        .output("y", F, &[2]);
    assert_names(&err_of(&m.encode()), &["add7", "Add", "opset 14", "float32", "int64"]);
    let m = ModelBuilder::new(14).input("a", DataType::I32, &[2]).node("Exp", "exp1", &["a"], &["y"], vec![]).output(
        "y",
        DataType::I32,
        &[2],
    );
    assert_names(&err_of(&m.encode()), &["exp1", "Exp", "int32"]);
}

#[test]
fn a_cycle_names_its_nodes() {
    let m = ModelBuilder::new(13)
        .input("x", F, &[2])
        .node("Add", "first", &["x", "b"], &["a"], vec![])
        .node("Relu", "second", &["a"], &["b"], vec![])
        .output("b", F, &[2]);
    assert_names(&err_of(&m.encode()), &["cycle", "first", "second"]);
}

#[test]
fn missing_inputs_are_named() {
    let m = ModelBuilder::new(13).input("x", F, &[2]).node("Add", "adder", &["x", "ghost"], &["y"], vec![]).output(
        "y",
        F,
        &[2],
    );
    assert_names(&err_of(&m.encode()), &["adder", "Add", "ghost"]);
    let m = ModelBuilder::new(13).input("x", F, &[1, 1, 4, 4]).node("Conv", "conv9", &["x"], &["y"], vec![]).output(
        "y",
        F,
        &[1],
    );
    assert_names(&err_of(&m.encode()), &["conv9", "Conv", "opset 13", "missing required input 1"]);
    let m = ModelBuilder::new(13).input("x", F, &[2]).output("nowhere", F, &[2]);
    assert_names(&err_of(&m.encode()), &["output", "nowhere"]);
}

#[test]
fn shape_mismatches_are_named() {
    let m = ModelBuilder::new(13)
        .input("a", F, &[2, 3])
        .input("b", F, &[4, 5])
        .node("MatMul", "mm", &["a", "b"], &["y"], vec![])
        .output("y", F, &[2, 5]);
    assert_names(&err_of(&m.encode()), &["mm", "MatMul", "[2, 3]", "[4, 5]"]);
    let shape = Tensor::from_i64s(&[7]);
    let m = ModelBuilder::new(13)
        .input("a", F, &[2, 3])
        .initializer("s", &shape)
        .node("Reshape", "rs", &["a", "s"], &["y"], vec![])
        .output("y", F, &[7]);
    assert_names(&err_of(&m.encode()), &["rs", "Reshape", "6 elements", "[7]"]);
    let m = ModelBuilder::new(13)
        .input("a", F, &[2, 3])
        .input("b", F, &[2, 4])
        .node("Concat", "cat", &["a", "b"], &["y"], vec![attr_int("axis", 0)])
        .output("y", F, &[4, 3]);
    assert_names(&err_of(&m.encode()), &["cat", "Concat", "[2, 3]", "[2, 4]"]);
    // The declared output shape disagrees with inference.
    let m =
        ModelBuilder::new(13).input("a", F, &[2, 3]).node("Relu", "r", &["a"], &["y"], vec![]).output("y", F, &[3, 2]);
    assert_names(&err_of(&m.encode()), &["output `y`", "[3, 2]"]);
}

#[test]
fn unknown_opsets_ops_and_attributes_are_named() {
    let m = ModelBuilder::new(99).input("x", F, &[2]).node("Relu", "r", &["x"], &["y"], vec![]).output("y", F, &[2]);
    assert_names(&err_of(&m.encode()), &["opset 99", "ai.onnx"]);
    let m = ModelBuilder::new(13).input("x", F, &[2]).node("FrobnicateND", "frob", &["x"], &["y"], vec![]).output(
        "y",
        F,
        &[2],
    );
    let e = err_of(&m.encode());
    assert_names(&e, &["frob", "unsupported op FrobnicateND", "opset 13"]);
    let e = Model::decode(&m.encode(), "m", None).unwrap().import(&ImportOptions::default()).unwrap_err();
    assert!(e.is_unsupported());
    // Gelu only exists from opset 20.
    let m = ModelBuilder::new(17).input("x", F, &[2]).node("Gelu", "g", &["x"], &["y"], vec![]).output("y", F, &[2]);
    assert_names(&err_of(&m.encode()), &["unsupported op Gelu", "opset 17"]);
    let m = ModelBuilder::new(13)
        .input("x", F, &[1, 2, 4, 4])
        .input("w", F, &[2, 1, 3, 3])
        .node("Conv", "c", &["x", "w"], &["y"], vec![attr_int("group", 0)])
        .output("y", F, &[1, 2, 2, 2]);
    assert_names(&err_of(&m.encode()), &["`c`", "Conv", "attribute `group`"]);
    let m = ModelBuilder::new(13)
        .input("x", F, &[1, 2, 4, 4])
        .node("MaxPool", "mp", &["x"], &["y"], vec![attr_float("kernel_shape", 2.0)])
        .output("y", F, &[1, 2, 3, 3]);
    assert_names(&err_of(&m.encode()), &["mp", "MaxPool", "attribute `kernel_shape`"]);
}

#[test]
fn bad_tensors_and_inputs_are_named() {
    let mut m = conv_model();
    let g = m.proto.graph.as_mut().unwrap();
    g.initializer[0].raw_data.truncate(10);
    assert_names(&err_of(&m.encode()), &["tensor `w`", "432 bytes", "10"]);
    let m = ModelBuilder::new(13).input("x", F, &[-1, 3]).node("Relu", "r", &["x"], &["y"], vec![]).output(
        "y",
        F,
        &[-1, 3],
    );
    assert_names(&err_of(&m.encode()), &["input `x`", "symbolic dimension `d1`"]);
    let model = Model::decode(&m.encode(), "m", None).unwrap();
    let opts = ImportOptions { input_shapes: HashMap::from([("x".into(), vec![5, 3])]), ..Default::default() };
    assert_eq!(model.import(&opts).unwrap().value(model.import(&opts).unwrap().outputs[0]).ty.shape, vec![5, 3]);
    let opts = ImportOptions { input_shapes: HashMap::from([("x".into(), vec![5, 4])]), ..Default::default() };
    assert_names(&model.import(&opts).unwrap_err().to_string(), &["input `x`", "[5, 4]"]);
    let m = ModelBuilder::new(13)
        .input("x", F, &[2])
        .node("Relu", "a", &["x"], &["y"], vec![])
        .node("Relu", "b", &["x"], &["y"], vec![])
        .output("y", F, &[2]);
    assert_names(&err_of(&m.encode()), &["`y`", "defined twice", "`a`", "`b`"]);
}

#[test]
fn shape_arguments_from_inputs_need_values() {
    let m = ModelBuilder::new(13)
        .input("x", F, &[2, 3])
        .input("s", DataType::I64, &[2])
        .node("Reshape", "rs", &["x", "s"], &["y"], vec![])
        .output("y", F, &[3, 2]);
    let model = Model::decode(&m.encode(), "m", None).unwrap();
    let e = model.import(&ImportOptions::default()).unwrap_err();
    assert!(matches!(&e, OnnxError::NeedsValue { input, .. } if input == "s"), "{e}");
    let opts = ImportOptions {
        input_values: HashMap::from([("s".into(), Tensor::from_i64s(&[3, -1]))]),
        ..Default::default()
    };
    let g = model.import(&opts).unwrap();
    assert_eq!(g.nodes[0].op, Op::Reshape { shape: vec![3, 2] });
    assert_eq!(g.inputs.len(), 1);
}

#[test]
fn opset_versions_change_parsing() {
    // Softmax before opset 13 flattens axes `axis..` into one.
    let sm = |opset| {
        let m = ModelBuilder::new(opset)
            .input("x", F, &[2, 3, 4])
            .node("Softmax", "sm", &["x"], &["y"], vec![])
            .output("y", F, &[2, 3, 4]);
        Model::decode(&m.encode(), "m", None).unwrap().import(&ImportOptions::default()).unwrap().nodes[0].op.clone()
    };
    assert!(matches!(sm(11), Op::Softmax { axis: 1, coerce_2d: true, .. }));
    assert!(matches!(sm(13), Op::Softmax { axis: 2, coerce_2d: false, .. }));
    // Split: `split` attribute before 13, an input from 13.
    let m = ModelBuilder::new(11)
        .input("x", F, &[6])
        .node("Split", "sp", &["x"], &["a", "b"], vec![attr_ints("split", &[2, 4])])
        .output("a", F, &[2])
        .output("b", F, &[4]);
    let g = Model::decode(&m.encode(), "m", None).unwrap().import(&ImportOptions::default()).unwrap();
    assert_eq!(g.nodes[0].op, Op::Split { axis: 0, sizes: vec![2, 4] });
}

#[test]
fn external_data_is_read_beside_the_model() {
    let dir = std::env::temp_dir().join(format!("ty-onnx-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = Tensor::from_f32(vec![2], &[3.0, 4.0]).unwrap();
    let mut m = ModelBuilder::new(13)
        .input("x", F, &[2])
        .initializer("w", &w)
        .node("Mul", "mul", &["x", "w"], &["y"], vec![])
        .output("y", F, &[2]);
    let t = &mut m.proto.graph.as_mut().unwrap().initializer[0];
    std::fs::write(dir.join("weights.bin"), &t.raw_data).unwrap();
    t.raw_data.clear();
    t.data_location = proto::DATA_LOCATION_EXTERNAL;
    t.external_data = vec![proto::StringStringEntryProto { key: "location".into(), value: "weights.bin".into() }];
    std::fs::write(dir.join("model.onnx"), m.encode()).unwrap();
    let g = Model::load(&dir.join("model.onnx")).unwrap().import(&ImportOptions::default()).unwrap();
    let x = Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap();
    let out = crate::interp::run(&g, &HashMap::from([("x".to_string(), x)])).unwrap();
    assert_eq!(out[0].1.to_f32_vec(), vec![3.0, 8.0]);
    std::fs::remove_file(dir.join("weights.bin")).unwrap();
    let e = Model::load(&dir.join("model.onnx")).unwrap().import(&ImportOptions::default()).unwrap_err();
    assert_names(&e.to_string(), &["tensor `w`", "weights.bin"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    /// Any byte mutation of a valid model decodes, or fails with an error: never a panic.
    #[test]
    fn mutated_models_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = conv_model().encode();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(m) = Model::decode(&bytes, "fuzz.onnx", None) {
            if let Ok(g) = m.import(&ImportOptions::default()) {
                let x = Tensor::from_f32(vec![1, 3, 6, 6], &[0.25; 108]).unwrap();
                let _ = crate::interp::run(&g, &HashMap::from([("x".to_string(), x)]));
            }
        }
    }
}
