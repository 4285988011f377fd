//! What the host binds to a decoder program's inputs, and the KV cache it carries from one
//! step to the next.

use super::{CacheTensor, DecoderProgram, ProgramError, TensorSource};
use crate::llm::reference::WeightMap;
use crate::llm::rope::rope_tables;
use crate::llm::LlmConfig;

/// The KV cache of every layer as the host keeps it between steps: per layer, keys and values
/// `[B, Hkv, positions, D]` (f32).
#[derive(Clone, Debug, PartialEq)]
pub struct HostCache {
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    /// Per layer: (keys, values).
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl HostCache {
    /// An empty cache for `batch` sequences.
    pub fn new(cfg: &LlmConfig, batch: usize) -> HostCache {
        HostCache {
            batch,
            kv_heads: cfg.num_kv_heads as usize,
            head_dim: cfg.head_dim as usize,
            len: 0,
            layers: vec![(Vec::new(), Vec::new()); cfg.num_layers as usize],
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the values of device cache tensor `t` (`[B, heads, len, D]`, `len` ≥ the held
    /// positions) after a step: the cache then holds `len` positions.
    pub fn store(&mut self, t: &CacheTensor, values: &[f32], len: usize) -> Result<(), ProgramError> {
        let (b, hk, d) = (self.batch, self.kv_heads, self.head_dim);
        let heads = t.kv_heads.clone();
        if values.len() != b * heads.len() * len * d || heads.end > hk {
            return Err(ProgramError::Invalid {
                what: "cache values",
                why: format!("`{}` gave {} values for [{b}, {}, {len}, {d}]", t.name, values.len(), heads.len()),
            });
        }
        let Some(layer) = self.layers.get_mut(t.layer as usize) else {
            return Err(ProgramError::Invalid {
                what: "cache layer",
                why: format!("`{}`: no layer {}", t.name, t.layer),
            });
        };
        let dst = if t.value { &mut layer.1 } else { &mut layer.0 };
        if dst.len() != b * hk * len * d {
            // Positions held so far, as laid out in `dst`.
            let old = dst.len() / (b * hk * d).max(1);
            let mut grown = vec![0.0f32; b * hk * len * d];
            for bi in 0..b {
                for h in 0..hk {
                    for p in 0..old.min(len) {
                        let (from, to) = (((bi * hk + h) * old + p) * d, ((bi * hk + h) * len + p) * d);
                        if let (Some(src), Some(out)) = (dst.get(from..from + d), grown.get_mut(to..to + d)) {
                            out.copy_from_slice(src);
                        }
                    }
                }
            }
            *dst = grown;
        }
        for bi in 0..b {
            for (i, h) in heads.clone().enumerate() {
                let from = ((bi * heads.len() + i) * len) * d;
                let to = ((bi * hk + h) * len) * d;
                dst[to..to + len * d].copy_from_slice(&values[from..from + len * d]);
            }
        }
        Ok(())
    }

    /// Marks the cache as holding `len` positions (after every tensor of a step was stored).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// The values of device cache tensor `t` for a step at context `context`: the held
    /// positions, zeros after them.
    pub fn load(&self, t: &CacheTensor, context: usize) -> Vec<f32> {
        let (b, hk, d) = (self.batch, self.kv_heads, self.head_dim);
        let heads = t.kv_heads.clone();
        let mut out = vec![0.0f32; b * heads.len() * context * d];
        let Some(layer) = self.layers.get(t.layer as usize) else { return out };
        let src = if t.value { &layer.1 } else { &layer.0 };
        let keep = self.len.min(context);
        for bi in 0..b {
            for (i, h) in heads.clone().enumerate() {
                let from = ((bi * hk + h) * self.len) * d;
                let to = ((bi * heads.len() + i) * context) * d;
                if let (Some(s), Some(o)) = (src.get(from..from + keep * d), out.get_mut(to..to + keep * d)) {
                    o.copy_from_slice(s);
                }
            }
        }
        out
    }
}

impl DecoderProgram {
    /// The values (as f32) of input `name` for a step over `tokens` (`[T]`, sequence-major)
    /// with checkpoint `weights` and the host's `cache`.
    pub fn input_values(
        &self,
        cfg: &LlmConfig,
        name: &str,
        weights: &WeightMap,
        tokens: &[u32],
        cache: &HostCache,
    ) -> Result<Vec<f32>, ProgramError> {
        let source = self.inputs.get(name).ok_or_else(|| ProgramError::Invalid {
            what: "input",
            why: format!("the program has no input `{name}`"),
        })?;
        let rows = self.spec.batch * self.spec.phase.rows_per_sequence();
        match source {
            TensorSource::Weight { name: hf, slice } => {
                let w = weights.get(hf).ok_or_else(|| ProgramError::WeightSlice {
                    name: hf.clone(),
                    why: "not in the checkpoint".into(),
                })?;
                slice.extract(hf, w)
            }
            TensorSource::TokenIds => {
                if tokens.len() != rows {
                    return Err(ProgramError::Invalid {
                        what: "tokens",
                        why: format!("{} tokens for a step of {rows} rows", tokens.len()),
                    });
                }
                Ok(tokens.iter().map(|&t| t as f32).collect())
            }
            TensorSource::RopeCos | TensorSource::RopeSin => {
                let s = self.spec.phase.rows_per_sequence();
                let first = self.spec.phase.positions().start;
                let positions: Vec<u64> = (0..rows).map(|i| first + (i % s) as u64).collect();
                let t = rope_tables(cfg, &positions, self.spec.phase.cache_len() as u64);
                let v = if matches!(source, TensorSource::RopeCos) { t.cos } else { t.sin };
                Ok(v.into_iter().map(|x| x as f32).collect())
            }
            TensorSource::Cache(t) => Ok(cache.load(t, self.spec.phase.cache_len())),
            TensorSource::Stacked { names, slice } => {
                let mut out = Vec::new();
                for n in names {
                    let w = weights.get(n).ok_or_else(|| ProgramError::WeightSlice {
                        name: n.clone(),
                        why: "not in the checkpoint".into(),
                    })?;
                    out.extend(slice.extract(n, w)?);
                }
                Ok(out)
            }
            TensorSource::MoeSendIds { rank } | TensorSource::MoeReturnIds { rank } => {
                let k = cfg.moe().map_or(1, |m| m.experts_per_token as usize);
                let n = self.spec.tp as usize;
                let tl = rows / n.max(1);
                let c = tl * k / n.max(1);
                let rank = *rank as usize;
                let ids: Vec<f32> = if matches!(source, TensorSource::MoeSendIds { .. }) {
                    (0..n)
                        .flat_map(|d| (0..c).map(move |q| q * n + d))
                        .map(|slot| (rank * tl + slot / k) as f32)
                        .collect()
                } else {
                    (0..tl * k).map(|slot| ((slot % n) * c + slot / n) as f32).collect()
                };
                Ok(ids)
            }
            TensorSource::MoeDispatch { experts }
            | TensorSource::MoeCombine { experts }
            | TensorSource::MoeLocal { experts } => {
                let (e, k) = cfg.moe().map_or((1, 1), |m| (m.num_experts as usize, m.experts_per_token as usize));
                let cap = (rows * k).div_ceil(e);
                // Slot `s = t·k + j` goes to expert `s mod E`, as its `(s / E)`-th token.
                let ids: Vec<f32> = match source {
                    TensorSource::MoeDispatch { .. } => experts
                        .clone()
                        .flat_map(|ex| (0..cap).map(move |c| c * e + ex))
                        .map(|slot| if slot < rows * k { (slot / k) as f32 } else { 0.0 })
                        .collect(),
                    TensorSource::MoeCombine { .. } => (0..rows * k)
                        .map(|slot| {
                            let ex = slot % e;
                            if experts.contains(&ex) {
                                ((ex - experts.start) * cap + slot / e) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                    _ => (0..rows * k).map(|slot| f32::from(u8::from(experts.contains(&(slot % e))))).collect(),
                };
                Ok(ids)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_grows_with_zeros() {
        let cfg = LlmConfig::bundled("tiny-llama").unwrap_or_else(|e| panic!("{e}"));
        let (hk, d) = (2, 16);
        let mut c = HostCache::new(&cfg, 1);
        let t =
            |heads: std::ops::Range<usize>| CacheTensor { name: "k".into(), layer: 1, value: false, kv_heads: heads };
        // Two ranks of one head each, 3 positions.
        let v0: Vec<f32> = (0..3 * d).map(|i| i as f32).collect();
        let v1: Vec<f32> = (0..3 * d).map(|i| -(i as f32)).collect();
        c.store(&t(0..1), &v0, 3).unwrap_or_else(|e| panic!("{e}"));
        c.store(&t(1..2), &v1, 3).unwrap_or_else(|e| panic!("{e}"));
        c.set_len(3);
        let both = c.load(&t(0..hk), 4);
        assert_eq!(both.len(), hk * 4 * d);
        assert_eq!(&both[..3 * d], &v0[..]);
        assert!(both[3 * d..4 * d].iter().all(|&x| x == 0.0));
        assert_eq!(&both[4 * d..7 * d], &v1[..]);
        assert!(c.store(&t(0..1), &v0, 4).is_err(), "wrong length");
    }
}
