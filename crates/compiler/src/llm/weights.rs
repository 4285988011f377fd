//! The weights of a decoder: Hugging Face tensor names, shapes and roles.
//!
//! Names follow the `transformers` checkpoints of each family (`model.layers.{l}.self_attn.q_proj.weight`,
//! Mixtral's `block_sparse_moe.experts.{e}.w1.weight`, ...). Shapes are as stored there: a
//! linear layer's weight is `[out, in]`, a bias `[out]`, a norm weight `[width]`.

use super::config::LlmConfig;

/// What a weight is, for sharding and for the host reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightRole {
    /// Token embedding `[V, h]`.
    Embedding,
    /// RMSNorm weight of a layer's attention input `[h]`.
    InputNorm,
    /// q/k/v projection `[heads·D, h]` (which of them: [`Proj`]).
    QkvWeight(Proj),
    /// q/k/v bias `[heads·D]`.
    QkvBias(Proj),
    /// Qwen3 per-head RMSNorm weight of q or k `[D]`.
    QkNorm(Proj),
    /// Output projection `[h, Hq·D]`.
    OWeight,
    /// Output projection bias `[h]`.
    OBias,
    /// RMSNorm weight of a layer's MLP input `[h]`.
    PostAttnNorm,
    /// MoE router `[E, h]`.
    Router,
    /// Gate projection `[I, h]` of the dense MLP (`expert: None`) or of an expert.
    Gate,
    /// Up projection `[I, h]`.
    Up,
    /// Down projection `[h, I]`.
    Down,
    /// Gate bias `[I]`.
    GateBias,
    /// Up bias `[I]`.
    UpBias,
    /// Down bias `[h]`.
    DownBias,
    /// Final RMSNorm weight `[h]`.
    FinalNorm,
    /// LM head `[V, h]` (absent when tied to the embedding).
    LmHead,
}

/// One of the three attention input projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Queries.
    Q,
    /// Keys.
    K,
    /// Values.
    V,
}

impl Proj {
    /// `q`, `k` or `v`.
    pub const fn letter(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
        }
    }
}

/// One weight tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightInfo {
    /// Hugging Face tensor name.
    pub name: String,
    /// Shape as stored in the checkpoint.
    pub shape: Vec<usize>,
    /// What it is.
    pub role: WeightRole,
    /// Its layer, `None` for the embedding, final norm and LM head.
    pub layer: Option<u32>,
    /// Its expert, for MoE expert weights.
    pub expert: Option<u32>,
}

/// Hugging Face name of a weight.
pub fn weight_name(role: WeightRole, layer: u32, expert: Option<u32>) -> String {
    let l = format!("model.layers.{layer}");
    let mlp = |w: &str, dense: &str, kind: &str| match expert {
        Some(e) => format!("{l}.block_sparse_moe.experts.{e}.{w}.{kind}"),
        None => format!("{l}.mlp.{dense}.{kind}"),
    };
    match role {
        WeightRole::Embedding => "model.embed_tokens.weight".into(),
        WeightRole::InputNorm => format!("{l}.input_layernorm.weight"),
        WeightRole::QkvWeight(p) => format!("{l}.self_attn.{}_proj.weight", p.letter()),
        WeightRole::QkvBias(p) => format!("{l}.self_attn.{}_proj.bias", p.letter()),
        WeightRole::QkNorm(p) => format!("{l}.self_attn.{}_norm.weight", p.letter()),
        WeightRole::OWeight => format!("{l}.self_attn.o_proj.weight"),
        WeightRole::OBias => format!("{l}.self_attn.o_proj.bias"),
        WeightRole::PostAttnNorm => format!("{l}.post_attention_layernorm.weight"),
        WeightRole::Router => format!("{l}.block_sparse_moe.gate.weight"),
        WeightRole::Gate => mlp("w1", "gate_proj", "weight"),
        WeightRole::Up => mlp("w3", "up_proj", "weight"),
        WeightRole::Down => mlp("w2", "down_proj", "weight"),
        WeightRole::GateBias => mlp("w1", "gate_proj", "bias"),
        WeightRole::UpBias => mlp("w3", "up_proj", "bias"),
        WeightRole::DownBias => mlp("w2", "down_proj", "bias"),
        WeightRole::FinalNorm => "model.norm.weight".into(),
        WeightRole::LmHead => "lm_head.weight".into(),
    }
}

impl LlmConfig {
    /// Every weight tensor of the model, in checkpoint order (embedding, layers, final norm, head).
    pub fn weights(&self) -> Vec<WeightInfo> {
        let (h, d, i, v) = (
            self.hidden_size as usize,
            self.head_dim as usize,
            self.intermediate_size as usize,
            self.vocab_size as usize,
        );
        let (hq, hkv) = (self.num_heads as usize, self.num_kv_heads as usize);
        let mut out = Vec::new();
        let mut push = |role, layer: Option<u32>, expert: Option<u32>, shape: Vec<usize>| {
            let name = weight_name(role, layer.unwrap_or(0), expert);
            out.push(WeightInfo { name, shape, role, layer, expert });
        };
        push(WeightRole::Embedding, None, None, vec![v, h]);
        for l in 0..self.num_layers {
            let at = Some(l);
            push(WeightRole::InputNorm, at, None, vec![h]);
            for (p, heads) in [(Proj::Q, hq), (Proj::K, hkv), (Proj::V, hkv)] {
                push(WeightRole::QkvWeight(p), at, None, vec![heads * d, h]);
                if self.attention_bias.qkv {
                    push(WeightRole::QkvBias(p), at, None, vec![heads * d]);
                }
            }
            if self.qk_norm {
                push(WeightRole::QkNorm(Proj::Q), at, None, vec![d]);
                push(WeightRole::QkNorm(Proj::K), at, None, vec![d]);
            }
            push(WeightRole::OWeight, at, None, vec![h, hq * d]);
            if self.attention_bias.o {
                push(WeightRole::OBias, at, None, vec![h]);
            }
            push(WeightRole::PostAttnNorm, at, None, vec![h]);
            let experts: Vec<Option<u32>> = match self.moe {
                Some(m) => {
                    push(WeightRole::Router, at, None, vec![m.num_experts as usize, h]);
                    (0..m.num_experts).map(Some).collect()
                }
                None => vec![None],
            };
            for e in experts {
                push(WeightRole::Gate, at, e, vec![i, h]);
                push(WeightRole::Up, at, e, vec![i, h]);
                push(WeightRole::Down, at, e, vec![h, i]);
                if self.mlp_bias {
                    push(WeightRole::GateBias, at, e, vec![i]);
                    push(WeightRole::UpBias, at, e, vec![i]);
                    push(WeightRole::DownBias, at, e, vec![h]);
                }
            }
        }
        push(WeightRole::FinalNorm, None, None, vec![h]);
        if !self.tie_word_embeddings {
            push(WeightRole::LmHead, None, None, vec![v, h]);
        }
        out
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

    #[test]
    fn weight_lists_add_up_to_the_parameter_counts() {
        for name in crate::llm::bundled_names() {
            let c = cfg(name);
            let total: u64 = c.weights().iter().map(|w| w.shape.iter().product::<usize>() as u64).sum();
            assert_eq!(total, c.param_counts().total, "{name}");
        }
    }

    #[test]
    fn names_follow_the_checkpoints() {
        let l = cfg("llama-3.1-8b").weights();
        assert_eq!(l[0].name, "model.embed_tokens.weight");
        assert_eq!(l[2].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(l[2].shape, vec![4096, 4096]);
        assert_eq!(l[3].shape, vec![1024, 4096]);
        assert!(l.iter().any(|w| w.name == "model.layers.31.mlp.down_proj.weight" && w.shape == vec![4096, 14336]));
        assert_eq!(l.last().map(|w| w.name.as_str()), Some("lm_head.weight"));
        let q = cfg("qwen2.5-7b").weights();
        assert!(q.iter().any(|w| w.name == "model.layers.0.self_attn.k_proj.bias" && w.shape == vec![512]));
        let m = cfg("mixtral-8x7b").weights();
        assert!(m.iter().any(|w| w.name == "model.layers.3.block_sparse_moe.experts.7.w2.weight"));
        assert!(m.iter().any(|w| w.name == "model.layers.3.block_sparse_moe.gate.weight" && w.shape == vec![8, 4096]));
        let tied = cfg("llama-3.2-1b").weights();
        assert!(tied.iter().all(|w| w.role != WeightRole::LmHead));
    }
}
