//! Attention and rotary embeddings (opset 23+).

use crate::graph::{Attention, Op};
use crate::onnx::ctx::{Ctx, PResult, Parsed};

pub(super) fn attention(c: &Ctx) -> PResult<Parsed> {
    let (q, k) = (c.float_input(0, "Q")?.clone(), c.ty(1, "K")?.clone());
    c.req(2, "V")?;
    let packed = q.rank() == 3;
    let (q_heads, kv_heads) = if packed {
        let h = |name: &str| -> PResult<usize> {
            let v = c.int_req(name)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| c.attr_err(name, format!("must be positive, got {v}")))
        };
        (h("q_num_heads")?, h("kv_num_heads")?)
    } else if q.rank() == 4 && k.rank() == 4 {
        (q.shape[1], k.shape[1])
    } else {
        return Err(c.type_err(format!("Q and K must be 3-D or 4-D, got {q} and {k}")));
    };
    let head = if packed { q.shape[2] / q_heads.max(1) } else { q.shape[3] };
    let scale = if c.has("scale") { c.float("scale", 1.0)? } else { 1.0 / (head.max(1) as f64).sqrt() };
    let has = |i: usize| c.opt(i).is_some();
    if has(4) != has(5) {
        return Err(c.type_err("past_key and past_value must be given together"));
    }
    let named = |i: usize| c.node.output.get(i).is_some_and(|o| !o.is_empty());
    let outputs = if named(3) {
        4
    } else if named(1) || named(2) {
        3
    } else {
        1
    };
    if c.has("softmax_precision") {
        // The reference only changes the precision of the softmax, which this interpreter
        // computes in f64 anyway.
        c.int("softmax_precision", 1)?;
    }
    let op = Attention {
        q_heads,
        kv_heads,
        packed,
        scale,
        causal: c.flag("is_causal", false)?,
        softcap: c.float("softcap", 0.0)?,
        has_mask: has(3),
        has_past: has(4),
        has_nonpad: has(6),
        outputs,
        qk_output: c.int("qk_matmul_output_mode", 0)?,
    };
    if !(0..=3).contains(&op.qk_output) {
        return Err(c.attr_err("qk_matmul_output_mode", format!("must be 0 to 3, got {}", op.qk_output)));
    }
    let inputs: Vec<usize> = (0..7).filter(|&i| i < 3 || has(i)).collect();
    Ok(Parsed::op(Op::Attention(op), inputs))
}

pub(super) fn rotary_embedding(c: &Ctx) -> PResult<Parsed> {
    let x = c.float_input(0, "X")?.clone();
    c.req(1, "cos_cache")?;
    c.req(2, "sin_cache")?;
    let num_heads = match c.int("num_heads", 0)? {
        0 => None,
        n if n > 0 => Some(n as usize),
        n => return Err(c.attr_err("num_heads", format!("must be positive, got {n}"))),
    };
    let head = match (x.rank(), num_heads) {
        (4, _) => x.shape[3],
        (3, Some(h)) => x.shape[2] / h,
        _ => return Err(c.type_err(format!("X must be 4-D, or 3-D with num_heads, got {x}"))),
    };
    let rotary_dim = match c.int("rotary_embedding_dim", 0)? {
        0 => head,
        d if d > 0 && d as usize <= head && d % 2 == 0 => d as usize,
        d => {
            return Err(
                c.attr_err("rotary_embedding_dim", format!("must be even and at most the head size {head}, got {d}"))
            )
        }
    };
    let op = Op::RotaryEmbedding {
        interleaved: c.flag("interleaved", false)?,
        num_heads,
        rotary_dim,
        has_position_ids: c.opt(3).is_some(),
    };
    Ok(Parsed::op(op, if c.opt(3).is_some() { vec![0, 1, 2, 3] } else { vec![0, 1, 2] }))
}
