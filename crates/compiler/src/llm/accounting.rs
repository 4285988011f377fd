//! Parameter, FLOP and byte accounting: pure arithmetic over an [`LlmConfig`].
//!
//! Notation: `h` hidden_size, `I` intermediate_size (per expert), `L` layers, `Hq` query
//! heads, `Hkv` KV heads, `D` head_dim, `V` vocab_size, `E` experts (1 for a dense MLP), `k`
//! experts per token (1 for a dense MLP), `W` sliding window.
//!
//! **Parameters** (all layers use the same shapes):
//!
//! | part | per layer | once |
//! |---|---|---|
//! | attention | q `h·Hq·D`, k and v `h·Hkv·D` each, o `Hq·D·h`; + `(Hq+2·Hkv)·D` q/k/v bias, + `h` o bias where present | |
//! | MLP (SwiGLU) | `E·3·h·I` (gate, up, down); + `E·(2·I+h)` with `mlp_bias` | |
//! | router (MoE) | `h·E` | |
//! | norms | `2·h` (input and post-attention RMSNorm); + `2·D` for Qwen3's q/k norms | `h` (final norm) |
//! | embedding, LM head | | `V·h` each; the LM head is 0 when tied |
//!
//! `active` counts `k` experts instead of `E` (what one token touches).
//!
//! **FLOPs** (a multiply-add is 2 FLOPs; norms, RoPE, softmax, SiLU and residual adds are
//! left out, under 1% at these sizes):
//!
//! * `N_mm` = `L·(2·h·Hq·D + 2·h·Hkv·D + k·3·h·I + h·E_router) + V·h`, the weights one token
//!   multiplies by ([`LlmConfig::matmul_params_per_token`]). The embedding is a lookup, not a
//!   matmul; the LM head is a matmul even when tied. `E_router` is `E` for MoE, else 0.
//! * Attention of the token at position `t` (1-based; it attends to keys `1..=t`):
//!   `4·Hq·D·keys` per layer (`2·Hq·D·keys` for `QKᵀ`, the same for `P·V`), `keys = t`, or
//!   `min(t, W)` on a sliding-window layer.
//! * Decode of the token at context `c`: `2·N_mm + Σ_layers 4·Hq·D·keys(c)`.
//! * Prefill of `n` tokens: `2·(N_mm − V·h)·n + 2·V·h + Σ_layers 4·Hq·D·Σ_{t=1..n} keys(t)`:
//!   logits only for the last token, as serving engines do.
//!
//! **Bytes**: weights `params · dtype.size()`; KV cache `2·L·Hkv·D·dtype.size()` per token
//! (K and V), with a sliding-window layer holding at most `W` tokens.
//!
//! Counts saturate at `u64::MAX` instead of overflowing; a validated config has at most
//! [`MAX_PARAMS`](super::MAX_PARAMS) parameters, so the totals never get near it.

use serde::Serialize;
use trainyard_arch::DType;

use super::config::LlmConfig;

/// Parameter counts of a model, by part (see the [module docs](self) for the formulas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Token embedding, `V·h`.
    pub embedding: u64,
    /// q/k/v/o projections and their biases, all layers.
    pub attention: u64,
    /// MLP (all experts for MoE), all layers.
    pub mlp: u64,
    /// MoE router, all layers (0 for dense).
    pub router: u64,
    /// RMSNorm weights, all layers and the final norm.
    pub norms: u64,
    /// LM head, `V·h`, 0 when tied to the embedding.
    pub lm_head: u64,
    /// Sum of the parts.
    pub total: u64,
    /// Parameters one token uses: `total` with `k` experts per layer instead of all of them.
    pub active: u64,
}

/// Per-core sizes of the dimensions tensor parallelism splits; [`Shard::full`] is one core
/// holding everything.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shard {
    pub(super) q_heads: u64,
    pub(super) kv_heads: u64,
    pub(super) intermediate: u64,
    pub(super) vocab: u64,
}

impl Shard {
    pub(super) fn full(cfg: &LlmConfig) -> Shard {
        Shard {
            q_heads: u64::from(cfg.num_heads),
            kv_heads: u64::from(cfg.num_kv_heads),
            intermediate: u64::from(cfg.intermediate_size),
            vocab: u64::from(cfg.vocab_size),
        }
    }
}

/// Parameter parts without the total.
#[derive(Clone, Copy, Debug)]
pub(super) struct Parts {
    embedding: u64,
    attention: u64,
    mlp: u64,
    router: u64,
    norms: u64,
    lm_head: u64,
}

impl Parts {
    pub(super) fn total(&self) -> u64 {
        add(&[self.embedding, self.attention, self.mlp, self.router, self.norms, self.lm_head])
    }
}

/// Saturating product.
pub(super) fn mul(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// Saturating sum.
pub(super) fn add(xs: &[u64]) -> u64 {
    xs.iter().fold(0u64, |a, &b| a.saturating_add(b))
}

/// The parameters one core holds with the split `shard`, counting `experts` MLPs per layer.
/// Norms, the router and the o/down biases are never split.
pub(super) fn param_parts(cfg: &LlmConfig, shard: Shard, experts: u64) -> Parts {
    let h = u64::from(cfg.hidden_size);
    let d = u64::from(cfg.head_dim);
    let l = u64::from(cfg.num_layers);
    let i = shard.intermediate;
    let bias = cfg.attention_bias;
    let attention_layer = add(&[
        mul(&[2, h, shard.q_heads, d]),
        mul(&[2, h, shard.kv_heads, d]),
        if bias.qkv { mul(&[add(&[shard.q_heads, mul(&[2, shard.kv_heads])]), d]) } else { 0 },
        if bias.o { h } else { 0 },
    ]);
    let expert = add(&[mul(&[3, h, i]), if cfg.mlp_bias { add(&[mul(&[2, i]), h]) } else { 0 }]);
    let norms_layer = add(&[mul(&[2, h]), if cfg.qk_norm { mul(&[2, d]) } else { 0 }]);
    let embedding = mul(&[shard.vocab, h]);
    Parts {
        embedding,
        attention: mul(&[l, attention_layer]),
        mlp: mul(&[l, experts, expert]),
        router: cfg.moe.map_or(0, |m| mul(&[l, h, u64::from(m.num_experts)])),
        norms: add(&[mul(&[l, norms_layer]), h]),
        lm_head: if cfg.tie_word_embeddings { 0 } else { embedding },
    }
}

/// `Σ_{t=1..n} min(t, w)`: keys summed over the positions of a prefill.
fn key_sum(n: u64, window: Option<u64>) -> f64 {
    let n = n as f64;
    match window {
        Some(w) if (w as f64) < n => {
            let w = w as f64;
            w * (w + 1.0) / 2.0 + (n - w) * w
        }
        _ => n * (n + 1.0) / 2.0,
    }
}

impl LlmConfig {
    /// Parameter counts by part, total and active.
    pub fn param_counts(&self) -> ParamCounts {
        let full = Shard::full(self);
        let (all, per_token) = match self.moe {
            Some(m) => (u64::from(m.num_experts), u64::from(m.experts_per_token)),
            None => (1, 1),
        };
        let p = param_parts(self, full, all);
        let active = param_parts(self, full, per_token).total();
        ParamCounts {
            embedding: p.embedding,
            attention: p.attention,
            mlp: p.mlp,
            router: p.router,
            norms: p.norms,
            lm_head: p.lm_head,
            total: p.total(),
            active,
        }
    }

    /// Weights one token multiplies by, `N_mm` of the [module docs](self).
    pub fn matmul_params_per_token(&self) -> u64 {
        let h = u64::from(self.hidden_size);
        let d = u64::from(self.head_dim);
        let k = u64::from(self.moe.map_or(1, |m| m.experts_per_token));
        let router = self.moe.map_or(0, |m| mul(&[h, u64::from(m.num_experts)]));
        let layer = add(&[
            mul(&[2, h, u64::from(self.num_heads), d]),
            mul(&[2, h, u64::from(self.num_kv_heads), d]),
            mul(&[k, 3, h, u64::from(self.intermediate_size)]),
            router,
        ]);
        add(&[mul(&[u64::from(self.num_layers), layer]), mul(&[u64::from(self.vocab_size), h])])
    }

    /// `(layers attending to everything, layers with a window, window)`.
    fn layer_split(&self) -> (u64, u64, Option<u64>) {
        match self.sliding_window {
            Some(sw) => {
                let sliding = u64::from(sw.layers.min(self.num_layers));
                (u64::from(self.num_layers) - sliding, sliding, Some(sw.size))
            }
            None => (u64::from(self.num_layers), 0, None),
        }
    }

    /// Keys held (or attended to) summed over the layers at context `context_len`.
    pub(super) fn layer_keys(&self, context_len: u64) -> u128 {
        let (full, sliding, window) = self.layer_split();
        let windowed = window.map_or(context_len, |w| w.min(context_len));
        u128::from(full) * u128::from(context_len) + u128::from(sliding) * u128::from(windowed)
    }

    /// FLOPs to decode one token at context `context_len` (the new token is the
    /// `context_len`-th): `2·N_mm + Σ_layers 4·Hq·D·keys`.
    pub fn decode_flops_per_token(&self, context_len: u64) -> f64 {
        let hd = f64::from(self.num_heads) * f64::from(self.head_dim);
        2.0 * self.matmul_params_per_token() as f64 + 4.0 * hd * self.layer_keys(context_len) as f64
    }

    /// FLOPs to prefill a prompt of `prompt_len` tokens (logits for the last token only).
    pub fn prefill_flops(&self, prompt_len: u64) -> f64 {
        if prompt_len == 0 {
            return 0.0;
        }
        let hd = f64::from(self.num_heads) * f64::from(self.head_dim);
        let head = f64::from(self.vocab_size) * f64::from(self.hidden_size);
        let body = self.matmul_params_per_token() as f64 - head;
        let (full, sliding, window) = self.layer_split();
        let keys = full as f64 * key_sum(prompt_len, None) + sliding as f64 * key_sum(prompt_len, window);
        2.0 * body * prompt_len as f64 + 2.0 * head + 4.0 * hd * keys
    }

    /// [`prefill_flops`](Self::prefill_flops) divided by the prompt length (0 for an empty prompt).
    pub fn prefill_flops_per_token(&self, prompt_len: u64) -> f64 {
        if prompt_len == 0 {
            0.0
        } else {
            self.prefill_flops(prompt_len) / prompt_len as f64
        }
    }

    /// KV-cache bytes one token adds on full-attention layers, `2·L·Hkv·D·dtype.size()`.
    pub fn kv_cache_bytes_per_token(&self, dtype: DType) -> u64 {
        mul(&[
            2,
            u64::from(self.num_layers),
            u64::from(self.num_kv_heads),
            u64::from(self.head_dim),
            dtype.size() as u64,
        ])
    }

    /// KV-cache bytes of one sequence at context `context_len`, sliding-window layers holding
    /// at most the window (saturates at `u64::MAX`).
    pub fn kv_cache_bytes(&self, dtype: DType, context_len: u64) -> u64 {
        let keys = u64::try_from(self.layer_keys(context_len)).unwrap_or(u64::MAX);
        mul(&[2, keys, u64::from(self.num_kv_heads), u64::from(self.head_dim), dtype.size() as u64])
    }

    /// Bytes of all weights stored as `dtype`.
    pub fn weight_bytes(&self, dtype: DType) -> u64 {
        mul(&[self.param_counts().total, dtype.size() as u64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> LlmConfig {
        match LlmConfig::bundled(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn assert_within(name: &str, got: u64, published: f64, tolerance: f64) {
        let rel = (got as f64 - published).abs() / published;
        assert!(rel < tolerance, "{name}: {got} vs published {published:e} ({:.3}% off)", rel * 100.0);
    }

    #[test]
    fn totals_match_published_figures() {
        // (model, published total, exact count of the released checkpoint)
        let cases = [
            ("llama-3.2-1b", 1.24e9, 1_235_814_400),
            ("llama-3.1-8b", 8.03e9, 8_030_261_248),
            ("llama-3.1-70b", 70.6e9, 70_553_706_496),
            ("llama-3.1-405b", 405.9e9, 405_853_388_800),
            ("mistral-7b", 7.24e9, 7_241_732_096),
            ("mixtral-8x7b", 46.7e9, 46_702_792_704),
            ("qwen2.5-7b", 7.62e9, 7_615_616_512),
        ];
        for (name, published, exact) in cases {
            let p = cfg(name).param_counts();
            assert_within(name, p.total, published, 0.005);
            assert_eq!(p.total, exact, "{name}");
            assert_eq!(
                p.total,
                p.embedding + p.attention + p.mlp + p.router + p.norms + p.lm_head,
                "{name}: parts add up"
            );
        }
    }

    #[test]
    fn mixtral_active_params() {
        let p = cfg("mixtral-8x7b").param_counts();
        assert_within("mixtral active", p.active, 12.9e9, 0.005);
        assert_eq!(p.router, 32 * 4096 * 8);
        // 6 unused experts per layer.
        assert_eq!(p.total - p.active, 32 * 6 * 3 * 4096 * 14336);
    }

    #[test]
    fn dense_active_is_total_and_tied_head_is_free() {
        let p = cfg("llama-3.2-1b").param_counts();
        assert_eq!(p.active, p.total);
        assert_eq!(p.lm_head, 0);
        assert_eq!(p.embedding, 128256 * 2048);
        let q = cfg("llama-3.1-8b").param_counts();
        assert_eq!(q.lm_head, q.embedding);
    }

    #[test]
    fn qwen2_has_qkv_bias() {
        let p = cfg("qwen2.5-7b").param_counts();
        let weights = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512);
        assert_eq!(p.attention - weights, 28 * (3584 + 2 * 512));
    }

    #[test]
    fn kv_cache_and_weight_bytes() {
        let c = cfg("llama-3.1-8b");
        assert_eq!(c.kv_cache_bytes_per_token(DType::Bf16), 131_072);
        assert_eq!(cfg("llama-3.1-70b").kv_cache_bytes_per_token(DType::Bf16), 327_680);
        assert_eq!(c.kv_cache_bytes(DType::Bf16, 1000), 131_072 * 1000);
        assert_eq!(c.weight_bytes(DType::Bf16), 2 * 8_030_261_248);
        assert_eq!(c.weight_bytes(DType::F8E4M3), 8_030_261_248);
        // Mistral's 4096-token window caps the cache.
        let m = cfg("mistral-7b");
        assert_eq!(m.kv_cache_bytes(DType::Bf16, 32768), m.kv_cache_bytes(DType::Bf16, 4096));
        assert!(m.kv_cache_bytes(DType::Bf16, 4095) < m.kv_cache_bytes(DType::Bf16, 4096));
    }

    #[test]
    fn decode_flops_llama_8b() {
        let c = cfg("llama-3.1-8b");
        // N_mm = L·(attention + MLP weights) + V·h.
        let n_mm: u64 = 32 * (41_943_040 + 176_160_768) + 128_256 * 4096;
        assert_eq!(c.matmul_params_per_token(), n_mm);
        let attn_per_key = 4.0 * 32.0 * 32.0 * 128.0;
        assert_eq!(c.decode_flops_per_token(1), 2.0 * n_mm as f64 + attn_per_key);
        assert_eq!(c.decode_flops_per_token(8192), 2.0 * n_mm as f64 + attn_per_key * 8192.0);
    }

    #[test]
    fn prefill_of_one_token_is_a_decode() {
        for name in super::super::bundled_names() {
            let c = cfg(name);
            assert_eq!(c.prefill_flops(1), c.decode_flops_per_token(1), "{name}");
            assert_eq!(c.prefill_flops(0), 0.0);
            assert_eq!(c.prefill_flops_per_token(0), 0.0);
        }
    }

    #[test]
    fn mixtral_flops_use_active_experts() {
        let c = cfg("mixtral-8x7b");
        let n_mm = c.matmul_params_per_token();
        let p = c.param_counts();
        // Active params minus the embedding lookup and the norms, plus nothing for the head (not tied).
        assert_eq!(n_mm, p.active - p.embedding - p.norms);
    }

    proptest::proptest! {
        #[test]
        fn prefill_increments_are_decodes(n in 2u64..20_000) {
            // One more prompt token costs one decode step, less the LM head only the last token pays.
            for name in ["mistral-7b", "llama-3.1-8b"] {
                let c = cfg(name);
                let head = 2.0 * f64::from(c.vocab_size()) * f64::from(c.hidden_size());
                let step = c.prefill_flops(n) - c.prefill_flops(n - 1);
                let want = c.decode_flops_per_token(n) - head;
                proptest::prop_assert!((step - want).abs() <= want * 1e-9, "{}: {} vs {}", name, step, want);
            }
        }
    }
}
