//! What an op parser sees of its node: attributes, input types and known input values.

use std::sync::Arc;

use super::proto::{attr_type, AttributeProto, NodeProto};
use super::tensor::tensor_from_proto;
use super::OnnxError;
use crate::graph::{DataType, Op, Tensor, TensorType, ValueId};

/// One present node input.
#[derive(Clone, Debug)]
pub(crate) struct InInfo {
    pub id: ValueId,
    pub name: String,
    pub ty: TensorType,
    pub known: Option<Arc<Tensor>>,
}

/// What a parser makes of a node.
pub(crate) enum Parsed {
    /// An IR op reading the node inputs at `inputs`; its outputs map to the node's
    /// outputs in order. `extra` gives constant values for further node outputs.
    Op { op: Op, inputs: Vec<usize>, extra: Vec<(usize, Tensor)> },
    /// The node's outputs are known constants.
    Constants(Vec<Tensor>),
}

impl Parsed {
    /// An op over the given node inputs.
    pub fn op(op: Op, inputs: Vec<usize>) -> Parsed {
        Parsed::Op { op, inputs, extra: vec![] }
    }
}

/// The parser's view of a node.
pub(crate) struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub name: &'a str,
    /// The op's definition version in force (the largest change at or below the opset).
    pub version: i64,
    /// The model's default-domain opset.
    pub opset: i64,
    pub inputs: Vec<Option<InInfo>>,
    pub base_dir: Option<&'a std::path::Path>,
}

pub(crate) type PResult<T> = Result<T, OnnxError>;

impl<'a> Ctx<'a> {
    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// An attribute error naming this node.
    pub fn attr_err(&self, attr: &str, reason: impl Into<String>) -> OnnxError {
        OnnxError::Attribute {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            attr: attr.to_string(),
            reason: reason.into(),
        }
    }

    /// An "unsupported feature" error naming this node.
    pub fn unsupported(&self, what: impl Into<String>) -> OnnxError {
        OnnxError::UnsupportedFeature {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            what: what.into(),
        }
    }

    /// A type or shape error naming this node.
    pub fn type_err(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Type {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            reason: reason.into(),
        }
    }

    fn typed(&self, name: &str, ty: i32) -> PResult<Option<&'a AttributeProto>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if !a.ref_attr_name.is_empty() => {
                Err(self.unsupported(format!("attribute `{name}` refers to a function attribute")))
            }
            // Old writers leave `type` unset; the field that holds data then decides.
            Some(a) if a.r#type == ty || a.r#type == 0 => Ok(Some(a)),
            Some(a) => Err(self.attr_err(name, format!("has attribute type {}, expected {ty}", a.r#type))),
        }
    }

    /// True when the node has the attribute.
    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    /// An integer attribute.
    pub fn int(&self, name: &str, default: i64) -> PResult<i64> {
        Ok(self.typed(name, attr_type::INT)?.map_or(default, |a| a.i))
    }

    /// An integer attribute that must be present.
    pub fn int_req(&self, name: &str) -> PResult<i64> {
        self.typed(name, attr_type::INT)?.map(|a| a.i).ok_or_else(|| self.attr_err(name, "required, absent"))
    }

    /// A float attribute.
    pub fn float(&self, name: &str, default: f64) -> PResult<f64> {
        Ok(self.typed(name, attr_type::FLOAT)?.map_or(default, |a| a.f as f64))
    }

    /// An integer list attribute.
    pub fn ints(&self, name: &str) -> PResult<Option<Vec<i64>>> {
        Ok(self.typed(name, attr_type::INTS)?.map(|a| a.ints.clone()))
    }

    /// A float list attribute.
    pub fn floats(&self, name: &str) -> PResult<Option<Vec<f64>>> {
        Ok(self.typed(name, attr_type::FLOATS)?.map(|a| a.floats.iter().map(|&v| v as f64).collect()))
    }

    /// A string attribute.
    pub fn string(&self, name: &str, default: &str) -> PResult<String> {
        match self.typed(name, attr_type::STRING)? {
            None => Ok(default.to_string()),
            Some(a) => String::from_utf8(a.s.clone()).map_err(|_| self.attr_err(name, "is not UTF-8")),
        }
    }

    /// A tensor attribute.
    pub fn tensor(&self, name: &str) -> PResult<Option<Tensor>> {
        match self.typed(name, attr_type::TENSOR)? {
            None => Ok(None),
            Some(a) => match &a.t {
                None => Err(self.attr_err(name, "holds no tensor")),
                Some(t) => {
                    tensor_from_proto(t, self.base_dir).map(Some).map_err(|e| self.attr_err(name, e.to_string()))
                }
            },
        }
    }

    /// A bool attribute (an int that must be 0 or 1).
    pub fn flag(&self, name: &str, default: bool) -> PResult<bool> {
        match self.int(name, default as i64)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.attr_err(name, format!("must be 0 or 1, got {v}"))),
        }
    }

    /// Number of node inputs (including absent optional ones).
    pub fn n_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Input `i` if present.
    pub fn opt(&self, i: usize) -> Option<&InInfo> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// Input `i`, which must be present; `what` names its role.
    pub fn req(&self, i: usize, what: &str) -> PResult<&InInfo> {
        self.opt(i).ok_or_else(|| OnnxError::MissingInput {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            index: i,
            what: what.to_string(),
        })
    }

    /// Type of required input `i`.
    pub fn ty(&self, i: usize, what: &str) -> PResult<&TensorType> {
        Ok(&self.req(i, what)?.ty)
    }

    /// The value of input `i` when present; it must be known before run time.
    pub fn value(&self, i: usize) -> PResult<Option<Arc<Tensor>>> {
        match self.opt(i) {
            None => Ok(None),
            Some(inp) => match &inp.known {
                Some(t) => Ok(Some(t.clone())),
                None => Err(OnnxError::NeedsValue {
                    node: self.name.to_string(),
                    op_type: self.node.op_type.clone(),
                    opset: self.opset,
                    input: inp.name.clone(),
                }),
            },
        }
    }

    /// Input `i` as integers (a shape argument), when present.
    pub fn ints_input(&self, i: usize) -> PResult<Option<Vec<i64>>> {
        Ok(self.value(i)?.map(|t| t.to_i64_vec()))
    }

    /// Normalizes a possibly negative axis against `rank`.
    pub fn axis(&self, attr: &str, axis: i64, rank: usize) -> PResult<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r {
            return Err(self.attr_err(attr, format!("axis {axis} out of range for rank {rank}")));
        }
        Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
    }

    /// Normalizes a list of axes (sorted, duplicates refused).
    pub fn axes(&self, attr: &str, axes: &[i64], rank: usize) -> PResult<Vec<usize>> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let a = self.axis(attr, a, rank)?;
            if out.contains(&a) {
                return Err(self.attr_err(attr, format!("axis {a} repeated in {axes:?}")));
            }
            out.push(a);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Checks that input `i` is a float tensor.
    pub fn float_input(&self, i: usize, what: &str) -> PResult<&TensorType> {
        let t = self.ty(i, what)?;
        if !t.dtype.is_float() {
            return Err(self.type_err(format!("{what} must be a float tensor, got {}", t.dtype)));
        }
        Ok(t)
    }

    /// The element type of an attribute holding an ONNX type code.
    pub fn dtype_attr(&self, name: &str, code: i64) -> PResult<DataType> {
        DataType::from_onnx(code as i32).map_err(|t| self.unsupported(format!("`{name}` = {t}")))
    }
}
