//! Shape inference of attention and rotary embeddings.

use super::{Attention, DataType, TensorType};

type Res<T> = Result<T, String>;

fn want(cond: bool, msg: impl FnOnce() -> String) -> Res<()> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// `(B, H, S, d)` of Q, K or V in either layout.
fn heads(t: &TensorType, packed: bool, h: usize, what: &str) -> Res<[usize; 4]> {
    if packed {
        want(t.rank() == 3 && h > 0 && t.shape[2].is_multiple_of(h), || format!("{what} {t} must be B×S×({h}·d)"))?;
        Ok([t.shape[0], h, t.shape[1], t.shape[2] / h])
    } else {
        want(t.rank() == 4 && t.shape[1] == h, || format!("{what} {t} must be B×{h}×S×d"))?;
        Ok([t.shape[0], t.shape[1], t.shape[2], t.shape[3]])
    }
}

/// The past length, total length and the dimensions of Q, K, V.
pub(crate) fn attention_dims(a: &Attention, ins: &[TensorType]) -> Res<(usize, usize, [[usize; 4]; 3])> {
    let expected = 3 + a.has_mask as usize + 2 * a.has_past as usize + a.has_nonpad as usize;
    want(ins.len() == expected, || format!("takes {expected} inputs, got {}", ins.len()))?;
    let q = heads(&ins[0], a.packed, a.q_heads, "Q")?;
    let k = heads(&ins[1], a.packed, a.kv_heads, "K")?;
    let v = heads(&ins[2], a.packed, a.kv_heads, "V")?;
    want(ins[0].dtype.is_float() && ins[1].dtype == ins[0].dtype && ins[2].dtype == ins[0].dtype, || {
        format!("Q, K and V must share a float type, got {}, {}, {}", ins[0].dtype, ins[1].dtype, ins[2].dtype)
    })?;
    want(q[0] == k[0] && k[0] == v[0] && k[2] == v[2] && q[3] == k[3], || {
        format!(
            "Q {:?}, K {:?} and V {:?} disagree (batch, KV length or head size)",
            ins[0].shape, ins[1].shape, ins[2].shape
        )
    })?;
    want(a.kv_heads > 0 && a.q_heads.is_multiple_of(a.kv_heads), || {
        format!("{} query heads do not group onto {} KV heads", a.q_heads, a.kv_heads)
    })?;
    let mut at = 3 + a.has_mask as usize;
    let mut past = 0;
    if a.has_past {
        let (pk, pv) = (&ins[at], &ins[at + 1]);
        want(
            pk.rank() == 4
                && pv.rank() == 4
                && pk.shape[..2] == [q[0], a.kv_heads]
                && pv.shape[..2] == [q[0], a.kv_heads],
            || format!("past key {pk} and value {pv} must be B×{}×P×d", a.kv_heads),
        )?;
        want(pk.shape[3] == k[3] && pv.shape[3] == v[3] && pk.shape[2] == pv.shape[2], || {
            format!("past key {pk} and value {pv} disagree with K and V")
        })?;
        past = pk.shape[2];
        at += 2;
    }
    let total = past + k[2];
    if a.has_mask {
        let m = &ins[3];
        want(m.dtype == DataType::Bool || m.dtype == ins[0].dtype, || {
            format!("attn_mask must be bool or {}, got {}", ins[0].dtype, m.dtype)
        })?;
        want((2..=4).contains(&m.rank()) && m.shape[m.rank() - 1] <= total, || {
            format!("attn_mask {m} is not a mask of at most {total} keys")
        })?;
        let mut padded = m.shape.clone();
        let last = padded.len() - 1;
        padded[last] = total;
        let full = [q[0], a.q_heads, q[2], total];
        let b = super::infer::broadcast(&full, &padded)?;
        want(b == full, || format!("attn_mask {m} does not broadcast to {full:?}"))?;
    }
    if a.has_nonpad {
        let n = &ins[at];
        want(n.dtype.is_int() && n.shape == [q[0]], || format!("nonpad_kv_seqlen must be {} integers, got {n}", q[0]))?;
    }
    Ok((past, total, [q, k, v]))
}

/// Output types of [`Attention`].
pub(crate) fn attention(a: &Attention, ins: &[TensorType]) -> Res<Vec<TensorType>> {
    let (_, total, [q, _, v]) = attention_dims(a, ins)?;
    let dt = ins[0].dtype;
    let y = if a.packed { vec![q[0], q[2], a.q_heads * v[3]] } else { vec![q[0], a.q_heads, q[2], v[3]] };
    let mut out = vec![TensorType::new(dt, y)];
    if a.outputs >= 3 {
        out.push(TensorType::new(dt, vec![q[0], a.kv_heads, total, q[3]]));
        out.push(TensorType::new(dt, vec![q[0], a.kv_heads, total, v[3]]));
    }
    if a.outputs == 4 {
        out.push(TensorType::new(dt, vec![q[0], a.q_heads, q[2], total]));
    }
    Ok(out)
}

/// Output types of `RotaryEmbedding`.
pub(crate) fn rotary(
    num_heads: Option<usize>,
    rotary_dim: usize,
    with_ids: bool,
    ins: &[TensorType],
) -> Res<Vec<TensorType>> {
    want(ins.len() == 3 + with_ids as usize, || format!("takes {} inputs, got {}", 3 + with_ids as usize, ins.len()))?;
    let x = &ins[0];
    let (b, s, head) = match (x.rank(), num_heads) {
        (4, _) => (x.shape[0], x.shape[2], x.shape[3]),
        (3, Some(h)) if h > 0 && x.shape[2].is_multiple_of(h) => (x.shape[0], x.shape[1], x.shape[2] / h),
        _ => return Err(format!("X {x} must be B×H×S×d, or B×S×(H·d) with num_heads")),
    };
    want(rotary_dim <= head && rotary_dim.is_multiple_of(2), || {
        format!("rotary dimension {rotary_dim} does not fit head size {head}")
    })?;
    let (cos, sin) = (&ins[1], &ins[2]);
    want(cos.shape == sin.shape && cos.dtype == x.dtype && sin.dtype == x.dtype, || {
        format!("cos {cos} and sin {sin} caches must match X's type")
    })?;
    let half = rotary_dim / 2;
    if with_ids {
        let ids = &ins[3];
        want(ids.dtype.is_int() && ids.shape == [b, s], || {
            format!("position_ids must be integers of shape [{b}, {s}], got {ids}")
        })?;
        want(cos.rank() == 2 && cos.shape[1] == half, || format!("caches must be max_position×{half}, got {cos}"))?;
    } else {
        want(cos.shape == [b, s, half], || format!("caches must be [{b}, {s}, {half}], got {cos}"))?;
    }
    Ok(vec![x.clone()])
}
