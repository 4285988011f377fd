//! The host reference of a decoder: the model's math in f64 from its weights, with a KV cache
//! and greedy decoding — what the simulated programs are checked against.
//!
//! Per layer (pre-norm): `x += o(attn(rope(q(n₁)), rope(k(n₁)), v(n₁)))` with `n₁ =
//! rmsnorm(x)`, then `x += mlp(rmsnorm(x))`; Qwen3 RMS-normalises q and k per head before RoPE;
//! the MLP is SwiGLU `down(silu(gate(n)) ⊙ up(n))`, or for Mixtral the router's softmax over
//! the experts, the top `k` (first index on ties) renormalised to sum to 1, and the weighted
//! sum of those experts. Attention is causal with softmax scale `1/√D`; a sliding-window layer
//! sees the last `W` keys. After the last layer: final RMSNorm, LM head (the embedding when
//! tied) and the arg-max of the last position's logits (first index on ties).

use std::collections::BTreeMap;

use super::config::LlmConfig;
use super::rope::rope_tables;
use super::weights::{weight_name, Proj, WeightRole};

/// A weight as the host holds it: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeight {
    /// Shape (as in the checkpoint).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Weights by Hugging Face name.
pub type WeightMap = BTreeMap<String, HostWeight>;

/// Why the reference cannot run.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReferenceError {
    /// A weight the config needs is not in the map.
    #[error("weight `{name}` is missing")]
    MissingWeight {
        /// Its Hugging Face name.
        name: String,
    },
    /// A weight has the wrong shape.
    #[error("weight `{name}` must have shape {expected:?}, found {found:?}")]
    WeightShape {
        /// Its name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A token id outside the vocabulary.
    #[error("token {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: u32,
    },
    /// No sequences, or an empty prompt.
    #[error("prompt {index} is empty (every sequence needs at least one token)")]
    EmptyPrompt {
        /// The sequence.
        index: usize,
    },
    /// A decode step got a different number of tokens than there are sequences.
    #[error("decode step got {got} tokens for {sequences} sequences")]
    BatchMismatch {
        /// Tokens given.
        got: usize,
        /// Sequences in flight.
        sequences: usize,
    },
}

/// One forward step: per sequence, the logits of its last position and their arg-max.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Next token of each sequence.
    pub tokens: Vec<u32>,
    /// Logits `[V]` of each sequence's last position.
    pub logits: Vec<Vec<f64>>,
}

/// The reference model with the KV caches of the sequences in flight.
pub struct Reference<'a> {
    cfg: &'a LlmConfig,
    weights: &'a WeightMap,
    /// Per sequence, per layer: keys and values `[positions, Hkv·D]` (after RoPE for keys).
    cache: Vec<Vec<(Vec<f64>, Vec<f64>)>>,
}

/// Index of the largest value, the first one on ties.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

fn rmsnorm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(w.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, &g)| v * r * f64::from(g)));
    }
    out
}

/// `y = x · Wᵀ (+ b)` for one row `x [in]` and `W [out, in]`.
fn linear(x: &[f64], w: &HostWeight, b: Option<&HostWeight>) -> Vec<f64> {
    let inp = x.len();
    w.values
        .chunks(inp)
        .enumerate()
        .map(|(o, row)| {
            let dot: f64 = row.iter().zip(x).map(|(&a, &b)| f64::from(a) * b).sum();
            dot + b.map_or(0.0, |b| f64::from(b.values[o]))
        })
        .collect()
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

impl<'a> Reference<'a> {
    /// A reference over `weights`, which must hold every weight of `cfg.weights()` with its shape.
    pub fn new(cfg: &'a LlmConfig, weights: &'a WeightMap) -> Result<Self, ReferenceError> {
        for w in cfg.weights() {
            let found = weights.get(&w.name).ok_or_else(|| ReferenceError::MissingWeight { name: w.name.clone() })?;
            let count: usize = w.shape.iter().product();
            if found.shape != w.shape || found.values.len() != count {
                return Err(ReferenceError::WeightShape {
                    name: w.name,
                    expected: w.shape,
                    found: found.shape.clone(),
                });
            }
        }
        Ok(Reference { cfg, weights, cache: Vec::new() })
    }

    fn w(&self, role: WeightRole, layer: u32, expert: Option<u32>) -> &'a HostWeight {
        let weights: &'a WeightMap = self.weights;
        // Present: `new` checked every weight of the config.
        &weights[&weight_name(role, layer, expert)]
    }

    fn has(&self, role: WeightRole, layer: u32, expert: Option<u32>) -> bool {
        self.weights.contains_key(&weight_name(role, layer, expert))
    }

    /// Processes `prompts` (one per sequence) from empty caches; returns each sequence's next token.
    pub fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<Step, ReferenceError> {
        if let Some(index) = prompts.iter().position(Vec::is_empty) {
            return Err(ReferenceError::EmptyPrompt { index });
        }
        self.check_tokens(prompts.iter().flatten())?;
        self.cache = vec![vec![(Vec::new(), Vec::new()); self.cfg.num_layers as usize]; prompts.len()];
        let mut step = Step { tokens: Vec::new(), logits: Vec::new() };
        for (s, prompt) in prompts.iter().enumerate() {
            let mut logits = Vec::new();
            for &t in prompt {
                logits = self.forward(s, t);
            }
            step.tokens.push(argmax(&logits) as u32);
            step.logits.push(logits);
        }
        Ok(step)
    }

    /// One decode step: `tokens[s]` is appended to sequence `s`.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<Step, ReferenceError> {
        if tokens.len() != self.cache.len() {
            return Err(ReferenceError::BatchMismatch { got: tokens.len(), sequences: self.cache.len() });
        }
        self.check_tokens(tokens)?;
        let mut step = Step { tokens: Vec::new(), logits: Vec::new() };
        for (s, &t) in tokens.iter().enumerate() {
            let logits = self.forward(s, t);
            step.tokens.push(argmax(&logits) as u32);
            step.logits.push(logits);
        }
        Ok(step)
    }

    fn check_tokens<'t>(&self, tokens: impl IntoIterator<Item = &'t u32>) -> Result<(), ReferenceError> {
        let vocab = self.cfg.vocab_size;
        match tokens.into_iter().find(|&&t| t >= vocab) {
            Some(&token) => Err(ReferenceError::TokenOutOfRange { token, vocab }),
            None => Ok(()),
        }
    }

    /// Runs token `t` at the next position of sequence `s`; returns its logits.
    fn forward(&mut self, s: usize, t: u32) -> Vec<f64> {
        let cfg = self.cfg;
        let (h, d) = (cfg.hidden_size as usize, cfg.head_dim as usize);
        let (hq, hkv) = (cfg.num_heads as usize, cfg.num_kv_heads as usize);
        let eps = cfg.rms_norm_eps;
        let pos = self.cache[s][0].0.len() / (hkv * d);
        let emb = self.w(WeightRole::Embedding, 0, None);
        let mut x: Vec<f64> = emb.values[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v)).collect();
        let rope = rope_tables(cfg, &[pos as u64], pos as u64 + 1);
        for l in 0..cfg.num_layers {
            let n1 = rmsnorm(&x, &self.w(WeightRole::InputNorm, l, None).values, eps);
            let proj = |p: Proj| {
                let bias = self.has(WeightRole::QkvBias(p), l, None).then(|| self.w(WeightRole::QkvBias(p), l, None));
                let mut y = linear(&n1, self.w(WeightRole::QkvWeight(p), l, None), bias);
                if p != Proj::V && cfg.qk_norm {
                    y = rmsnorm(&y, &self.w(WeightRole::QkNorm(p), l, None).values, eps);
                }
                if p != Proj::V {
                    rotate(&mut y, d, &rope.cos, &rope.sin);
                }
                y
            };
            let (q, k, v) = (proj(Proj::Q), proj(Proj::K), proj(Proj::V));
            let cache = &mut self.cache[s][l as usize];
            cache.0.extend_from_slice(&k);
            cache.1.extend_from_slice(&v);
            let window = cfg.sliding_window.filter(|sw| l >= cfg.num_layers - sw.layers.min(cfg.num_layers));
            let first = window.map_or(0, |sw| (pos + 1).saturating_sub(sw.size as usize));
            let attn = attend(&q, &cache.0, &cache.1, first, pos + 1, (hq, hkv, d));
            let ob = self.has(WeightRole::OBias, l, None).then(|| self.w(WeightRole::OBias, l, None));
            let o = linear(&attn, self.w(WeightRole::OWeight, l, None), ob);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let n2 = rmsnorm(&x, &self.w(WeightRole::PostAttnNorm, l, None).values, eps);
            let m = match cfg.moe {
                None => self.mlp(&n2, l, None),
                Some(moe) => {
                    let logits = linear(&n2, self.w(WeightRole::Router, l, None), None);
                    let (experts, gates) = route(&logits, moe.experts_per_token as usize);
                    let mut sum = vec![0.0; h];
                    for (e, g) in experts.iter().zip(gates) {
                        let y = self.mlp(&n2, l, Some(*e as u32));
                        sum.iter_mut().zip(&y).for_each(|(a, b)| *a += g * b);
                    }
                    sum
                }
            };
            x.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        }
        let xn = rmsnorm(&x, &self.w(WeightRole::FinalNorm, 0, None).values, eps);
        let head = if cfg.tie_word_embeddings { emb } else { self.w(WeightRole::LmHead, 0, None) };
        linear(&xn, head, None)
    }

    fn mlp(&self, n: &[f64], l: u32, e: Option<u32>) -> Vec<f64> {
        let bias = |role| self.has(role, l, e).then(|| self.w(role, l, e));
        let g = linear(n, self.w(WeightRole::Gate, l, e), bias(WeightRole::GateBias));
        let u = linear(n, self.w(WeightRole::Up, l, e), bias(WeightRole::UpBias));
        let a: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| silu(g) * u).collect();
        linear(&a, self.w(WeightRole::Down, l, e), bias(WeightRole::DownBias))
    }
}

/// RoPE ("rotate half") of every `d`-wide head of `y` at one position.
fn rotate(y: &mut [f64], d: usize, cos: &[f64], sin: &[f64]) {
    let half = d / 2;
    for head in y.chunks_mut(d) {
        for j in 0..half {
            let (x1, x2) = (head[j], head[j + half]);
            head[j] = x1 * cos[j] - x2 * sin[j];
            head[j + half] = x2 * cos[j] + x1 * sin[j];
        }
    }
}

/// Softmax attention of one query row `q [Hq·D]` over cached keys `first..keys` (`[keys, Hkv·D]`).
fn attend(q: &[f64], k: &[f64], v: &[f64], first: usize, keys: usize, (hq, hkv, d): (usize, usize, usize)) -> Vec<f64> {
    let group = hq / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; hq * d];
    for head in 0..hq {
        let kv = head / group;
        let qh = &q[head * d..(head + 1) * d];
        let row = |j: usize| (j * hkv + kv) * d;
        let scores: Vec<f64> = (first..keys)
            .map(|j| scale * qh.iter().zip(&k[row(j)..row(j) + d]).map(|(a, b)| a * b).sum::<f64>())
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = w.iter().sum();
        let o = &mut out[head * d..(head + 1) * d];
        for (wj, j) in w.iter().zip(first..keys) {
            for (oc, vc) in o.iter_mut().zip(&v[row(j)..row(j) + d]) {
                *oc += wj * vc / total;
            }
        }
    }
    out
}

/// Mixtral routing: softmax over the router logits, the top `k` (first index on ties), and
/// their probabilities renormalised to sum to 1.
pub fn route(logits: &[f64], k: usize) -> (Vec<usize>, Vec<f64>) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let mut order: Vec<usize> = (0..p.len()).collect();
    // Stable sort: equal probabilities keep the lower index first.
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(k);
    let total: f64 = order.iter().map(|&e| p[e]).sum();
    let gates = order.iter().map(|&e| p[e] / total).collect();
    (order, gates)
}

/// Greedy decoding: the prefill of `prompts` then `steps - 1` decode steps, each feeding back
/// the previous step's tokens. Returns the `steps` steps.
pub fn greedy(
    cfg: &LlmConfig,
    weights: &WeightMap,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<Vec<Step>, ReferenceError> {
    let mut r = Reference::new(cfg, weights)?;
    let mut out = Vec::with_capacity(steps);
    if steps == 0 {
        return Ok(out);
    }
    let mut step = r.prefill(prompts)?;
    for _ in 1..steps {
        let next = r.decode(&step.tokens)?;
        out.push(step);
        step = next;
    }
    out.push(step);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_renormalises_the_top_k() {
        let (e, g) = route(&[0.0, 2.0, 1.0, 2.0], 2);
        assert_eq!(e, vec![1, 3], "ties keep the lower index first");
        assert!((g[0] - 0.5).abs() < 1e-12 && (g[1] - 0.5).abs() < 1e-12);
        let (e, g) = route(&[0.0, 1.0f64.ln(), 3.0f64.ln()], 2);
        assert_eq!(e, vec![2, 0]);
        assert!((g[0] - 0.75).abs() < 1e-12);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn rmsnorm_and_attention_by_hand() {
        let y = rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f64).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-12 && (y[1] - 8.0 / r).abs() < 1e-12);
        // One head, two keys with equal scores: the mean of the values.
        let out = attend(&[1.0, 0.0], &[1.0, 0.0, 1.0, 0.0], &[2.0, 0.0, 4.0, 2.0], 0, 2, (1, 1, 2));
        assert!((out[0] - 3.0).abs() < 1e-12 && (out[1] - 1.0).abs() < 1e-12);
    }
}
