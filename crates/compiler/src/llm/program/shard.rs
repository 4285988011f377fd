//! Tensor-parallel sharding: which heads, MLP columns and vocabulary rows each core holds,
//! and how its tensors are named.
//!
//! Megatron-style, as [`plan_memory`](crate::llm::plan_memory) accounts it: q/k/v split by
//! heads (column-parallel), KV heads replicated `tp/Hkv` times when `tp > Hkv`, o and down
//! row-parallel (their partial sums all-reduced), gate/up column-parallel over contiguous
//! shares of `I` whose sizes differ by at most one, the LM head split by vocabulary rows in
//! shares of `⌈V/tp⌉` (the last padded with zero columns, which are never read back).

use std::ops::Range;

use super::ProgramError;
use crate::llm::LlmConfig;

/// What one core of a tensor-parallel group holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Position in the group, `0..tp`.
    pub rank: u32,
    /// Query heads.
    pub q_heads: Range<usize>,
    /// KV heads (one replicated head when `tp > Hkv`).
    pub kv_heads: Range<usize>,
    /// Columns of the MLP's intermediate dimension (of every expert).
    pub inter: Range<usize>,
    /// Vocabulary rows of the LM head that are real.
    pub vocab: Range<usize>,
    /// Width of the LM-head shard, `⌈V/tp⌉` (≥ `vocab.len()`).
    pub vocab_width: usize,
}

/// Contiguous shares of `n` over `parts`, sizes differing by at most one.
pub fn share(n: usize, parts: usize, i: usize) -> Range<usize> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// The shards of `tp` cores, checked: `tp` must divide the query heads and divide or be a
/// multiple of the KV heads, and leave every core some MLP columns and vocabulary rows.
pub fn shards(cfg: &LlmConfig, tp: u32) -> Result<Vec<Shard>, ProgramError> {
    let (hq, hkv) = (cfg.num_heads, cfg.num_kv_heads);
    let bad = |why: String| Err(ProgramError::Sharding { tp, why });
    if tp == 0 {
        return bad("the tensor-parallel degree must be at least 1".into());
    }
    if !hq.is_multiple_of(tp) {
        return bad(format!("tp must divide the {hq} attention heads"));
    }
    if !(hkv.is_multiple_of(tp) || tp.is_multiple_of(hkv)) {
        return bad(format!("tp and the {hkv} KV heads must divide one another"));
    }
    if tp > cfg.intermediate_size || tp > cfg.vocab_size {
        return bad("every core needs at least one MLP column and one vocabulary row".into());
    }
    let (i, v) = (cfg.intermediate_size as usize, cfg.vocab_size as usize);
    let vocab_width = v.div_ceil(tp as usize);
    let qpc = (hq / tp) as usize;
    Ok((0..tp)
        .map(|r| {
            let ru = r as usize;
            let kv_heads = if tp <= hkv {
                let k = (hkv / tp) as usize;
                ru * k..(ru + 1) * k
            } else {
                let kv = ru / (tp / hkv) as usize;
                kv..kv + 1
            };
            let v0 = (ru * vocab_width).min(v);
            Shard {
                rank: r,
                q_heads: ru * qpc..(ru + 1) * qpc,
                kv_heads,
                inter: share(i, tp as usize, ru),
                vocab: v0..(v0 + vocab_width).min(v),
                vocab_width,
            }
        })
        .collect())
}

/// The device name of tensor `base` on TP rank `rank` of `tp`: `base` itself without TP,
/// else `base.shard{rank}`.
pub fn shard_name(base: &str, tp: u32, rank: u32) -> String {
    if tp == 1 {
        base.to_string()
    } else {
        format!("{base}.shard{rank}")
    }
}

/// The device name of a tensor replicated once per chip: `base` on a single chip, else
/// `base.chip{chip}`.
pub fn chip_name(base: &str, chips: u32, chip: u32) -> String {
    if chips <= 1 {
        base.to_string()
    } else {
        format!("{base}.chip{chip}")
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
    fn heads_split_and_replicate() {
        let c = cfg("llama-3.1-8b"); // 32 heads, 8 KV heads
        let s = shards(&c, 4).unwrap_or_default();
        assert_eq!(s[1].q_heads, 8..16);
        assert_eq!(s[1].kv_heads, 2..4);
        let s = shards(&c, 16).unwrap_or_default();
        assert_eq!(s[5].q_heads, 10..12);
        // Query heads 10, 11 read KV head 2 (group of 4).
        assert_eq!(s[5].kv_heads, 2..3);
        assert_eq!(s.iter().map(|s| s.inter.len()).sum::<usize>(), 14336);
        assert_eq!(s[15].vocab, 120240..128256);
        assert_eq!(s[15].vocab_width, 8016);
        assert!(matches!(shards(&c, 3), Err(ProgramError::Sharding { tp: 3, .. })));
    }

    #[test]
    fn shares_are_even_and_contiguous() {
        let parts: Vec<Range<usize>> = (0..4).map(|i| share(10, 4, i)).collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(shard_name("w", 1, 0), "w");
        assert_eq!(shard_name("w", 2, 1), "w.shard1");
        assert_eq!(chip_name("ids", 2, 1), "ids.chip1");
    }
}
