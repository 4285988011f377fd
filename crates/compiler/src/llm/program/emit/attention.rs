//! The KV cache and attention of every rank: cache writes, layouts, flash or decode attention.

use super::*;

impl Emitter<'_> {
    /// The cache tensors of rank `r` in layer `l`: outputs of a prefill, in-place inputs of a decode step.
    pub(super) fn cache(&mut self, r: usize, l: u32, value: bool) -> Result<HbmTensor, ProgramError> {
        let Dims { b, d, cache, .. } = self.dims;
        let kv_heads = self.ranks[r].shard.kv_heads.clone();
        let base = format!("cache.{l}.{}", if value { "value" } else { "key" });
        let name = shard_name(&base, self.spec.tp, r as u32);
        let shape = [b, kv_heads.len(), cache, d];
        let entry = CacheTensor { name: name.clone(), layer: l, value, kv_heads };
        let chip = self.ranks[r].chip;
        let t = match self.spec.phase {
            Phase::Prefill { .. } => {
                self.tensor(chip, trainyard_isa::TensorKind::Output, &name, &shape, self.spec.dtype)?
            }
            Phase::Decode { .. } => {
                self.input(chip, &name, &shape, self.spec.dtype, TensorSource::Cache(entry.clone()))?
            }
        };
        self.caches.push(entry);
        Ok(t)
    }

    /// Cache update and attention of every rank.
    pub(super) fn attention(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { b, s, d, cache, .. } = self.dims;
        let at = Some(l);
        let n = self.ranks.len();
        let mut caches = Vec::with_capacity(n);
        for r in 0..n {
            caches.push((self.cache(r, l, false)?, self.cache(r, l, true)?));
        }
        let heads = |e: &Self, r: usize| (e.ranks[r].shard.q_heads.len(), e.ranks[r].shard.kv_heads.len());
        match self.spec.phase {
            Phase::Prefill { .. } => {
                self.each_rank("kv_cache_write", OpCategory::KvCache, at, |e, r| {
                    let (_, hkv) = heads(e, r);
                    let (k, v) = (e.ranks[r].k.view(), e.ranks[r].v.view());
                    let (kc, vc) = &caches[r];
                    let bshd = [b, s, hkv, d];
                    e.dma(r, 0, kc.view(), k.reshape(&bshd).permute(&[0, 2, 1, 3]))?;
                    e.dma(r, 1, vc.view(), v.reshape(&bshd).permute(&[0, 2, 1, 3]))
                })?;
                self.each_rank("q_layout", OpCategory::Layout, at, |e, r| {
                    let (hq, _) = heads(e, r);
                    let qt = e.ranks[r].qt.clone().map(|t| t.view());
                    let q = e.ranks[r].q.view().reshape(&[b, s, hq, d]).permute(&[0, 2, 1, 3]);
                    match qt {
                        Some(qt) => e.dma(r, 2, qt, q),
                        None => Ok(()),
                    }
                })?;
                self.each_rank("attention", OpCategory::Attention, at, |e, r| {
                    let (hq, hkv) = heads(e, r);
                    let (qt, ot) = match (&e.ranks[r].qt, &e.ranks[r].ot) {
                        (Some(q), Some(o)) => (q.clone(), o.clone()),
                        _ => return Ok(()),
                    };
                    let a = args(&[b, hq, s, d], e.spec.dtype).with("kv_heads", &hkv.to_string());
                    let (kc, vc) = &caches[r];
                    e.run(r, |k| &*k.flash, &a, &[("q", &qt), ("k", kc), ("v", vc), ("o", &ot)])
                })?;
                self.each_rank("o_layout", OpCategory::Layout, at, |e, r| {
                    let (hq, _) = heads(e, r);
                    let ot = e.ranks[r].ot.clone().map(|t| t.view());
                    let attn = e.ranks[r].attn.view().reshape(&[b, s, hq, d]).permute(&[0, 2, 1, 3]);
                    match ot {
                        Some(ot) => e.dma(r, 3, attn, ot),
                        None => Ok(()),
                    }
                })
            }
            Phase::Decode { .. } => {
                self.each_rank("kv_cache_write", OpCategory::KvCache, at, |e, r| {
                    let (_, hkv) = heads(e, r);
                    let (k, v) = (e.ranks[r].k.view(), e.ranks[r].v.view());
                    let (kc, vc) = &caches[r];
                    let slot = cache - 1..cache;
                    e.dma(r, 0, kc.view().slice(2, slot.clone()), k.reshape(&[b, hkv, 1, d]))?;
                    e.dma(r, 1, vc.view().slice(2, slot), v.reshape(&[b, hkv, 1, d]))
                })?;
                self.each_rank("attention", OpCategory::Attention, at, |e, r| {
                    let (hq, hkv) = heads(e, r);
                    let q = e.reshaped(&e.ranks[r].q, &[b, hq, d])?;
                    let o = e.reshaped(&e.ranks[r].attn, &[b, hq, d])?;
                    let a = args(&[b, hq, cache, d], e.spec.dtype).with("kv_heads", &hkv.to_string());
                    let (kc, vc) = &caches[r];
                    e.run(r, |k| &*k.decode, &a, &[("q", &q), ("k_cache", kc), ("v_cache", vc), ("o", &o)])
                })
            }
        }
    }
}
