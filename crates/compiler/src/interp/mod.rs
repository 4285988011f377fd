//! The reference interpreter (work in progress).

use crate::graph::{Op, Tensor, TensorType};

/// Evaluates one op on host tensors.
pub fn eval(op: &Op, _inputs: &[&Tensor], _out: &[TensorType]) -> Result<Vec<Tensor>, String> {
    Err(format!("interpreter: {op:?} not implemented yet"))
}
