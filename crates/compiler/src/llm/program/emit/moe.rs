//! Mixture-of-experts layers (Mixtral): router, top-k, and the experts as batched matmuls
//! over `[E, tokens, ·]`, each rank holding a `1/tp` column slice of every expert (the
//! partial sums are all-reduced with the attention's, as for a dense MLP).
//!
//! Two dataflows ([`MoeRouting`]):
//!
//! * **dense** (exact, for functional runs): every expert runs on every token and the
//!   outputs are summed with gates that are the renormalised router probabilities on each
//!   token's top `k` experts and 0 elsewhere (`mask = logits ≥ k-th largest`, so an exact
//!   tie at the k-th logit admits both experts where the reference keeps the first);
//! * **uniform** (timed-only): each expert gets `cap = ⌈T·k/E⌉` token slots, gathered from
//!   the normalised input by indirect DMA (dispatch), and each token's `k` expert outputs
//!   are gathered back, weighted by its softmaxed top-k logits and summed (combine). The
//!   slot assignment is a program input: slot `s = t·k + j` goes to expert `s mod E`, so
//!   every expert gets the same load — the assumption stated for timed-only figures (the
//!   router and top-k still run; a server would compute the slots from their output).
//!
//! With expert parallelism each rank runs `E/tp` whole experts. Activations are replicated
//! on every rank after the attention all-reduce, so by default a rank gathers its experts'
//! tokens locally and the partial outputs are all-reduced. With uniform routing and token
//! counts that split evenly ([`split_sizes`]), the tokens are split instead: rank `r` sends
//! the slots of tokens `r·T/tp..` to the experts' ranks with an all-to-all, the experts'
//! outputs come back with a second all-to-all, and the ranks' combined rows are all-gathered
//! (no all-reduce for the block).

use std::ops::Range;

use trainyard_arch::DType;
use trainyard_kernels::HbmTensor;

use super::{args, collective, Dims, Emitter};
use crate::llm::program::shard::Shard;
use crate::llm::program::{MoeRouting, OpCategory, ProgramError, TensorSource, WeightSlice};
use crate::llm::weights::{weight_name, WeightRole};

/// Per-rank scratch of a MoE layer.
pub(super) struct MoeBufs {
    /// Router logits `[T, E]` (f32).
    logits: HbmTensor,
    /// Top-k values and indices `[T, k]`.
    top_v: HbmTensor,
    top_i: HbmTensor,
    /// Expert inputs `[E, M, h]`, gate/up `[E, M, I_r]`, outputs `[E, M, h]` (`M = T` dense, `cap` uniform).
    xe: HbmTensor,
    gate: HbmTensor,
    up: HbmTensor,
    ye: HbmTensor,
    /// Dense: k-th largest logit `[T, 1]`, mask and probabilities `[T, E]`, their sums `[T]`,
    /// gates transposed `[E, T, 1]` in the dtype.
    kth: Option<HbmTensor>,
    mask: Option<HbmTensor>,
    probs: Option<HbmTensor>,
    sums: Option<HbmTensor>,
    gates_t: Option<HbmTensor>,
    /// Uniform: softmaxed top-k `[T, k]` (f32), the same `[T, k, 1]` in the dtype, and each
    /// token's `k` expert outputs `[T·k, h]`.
    top_p: Option<HbmTensor>,
    top_g: Option<HbmTensor>,
    yk: Option<HbmTensor>,
    /// Uniform with expert parallelism: the rank's own slot tables (dispatch `[n·cap]`,
    /// combine `[T·k]`, and `[T, k, 1]` which of a token's experts are the rank's).
    dispatch: Option<HbmTensor>,
    combine: Option<HbmTensor>,
    local: Option<HbmTensor>,
    /// The experts the rank runs and their columns.
    experts: Range<usize>,
    cols: Range<usize>,
    /// Token-split expert parallelism (see the module docs).
    split: Option<SplitBufs>,
}

/// Per-rank tensors of token-split expert parallelism: `n` ranks, `c` slots from each rank to
/// each rank, `T/n` tokens per rank.
#[derive(Clone)]
pub(super) struct SplitBufs {
    /// Slots of the rank's tokens by destination rank `[n·c, h]`, and their token ids `[n·c]`.
    send: HbmTensor,
    send_ids: HbmTensor,
    /// The experts' outputs back in `send`'s order `[n·c, h]`, and each local token's `k`
    /// slots in it `[T/n·k]`.
    back: HbmTensor,
    return_ids: HbmTensor,
    /// The local tokens' `k` outputs `[T/n·k, h]`, their gates `[T/n, k, 1]`, their sums `[T/n, h]`.
    yk: HbmTensor,
    gates: HbmTensor,
    y_local: HbmTensor,
}

/// `(c, m)` of token-split expert parallelism — slots each rank sends each rank, and slots
/// per local expert — when `t` tokens of `k` experts each split evenly over `n` ranks of
/// `local` experts; `None` when they do not.
pub(super) fn split_sizes(t: usize, k: usize, n: usize, local: usize) -> Option<(usize, usize)> {
    if n < 2 || local == 0 || !t.is_multiple_of(n) || !(t / n * k).is_multiple_of(n) {
        return None;
    }
    let c = t / n * k / n;
    (c > 0 && (n * c).is_multiple_of(local)).then_some((c, n * c / local))
}

/// Token slots per expert in the uniform dataflow.
pub(super) fn capacity(t: usize, k: usize, e: usize) -> usize {
    (t * k).div_ceil(e)
}

impl Emitter<'_> {
    /// Declares the MoE scratch (and, with expert parallelism, the slot tables) of the rank
    /// holding `shard` on `chip`.
    pub(super) fn declare_moe(
        &mut self,
        chip: u32,
        name: &dyn Fn(&str) -> String,
        shard: &Shard,
    ) -> Result<MoeBufs, ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let (e, k) = self.moe_sizes();
        let dt = self.spec.dtype;
        let dense = self.spec.moe == MoeRouting::Dense;
        let ep = self.spec.expert_parallel;
        let (experts, cols) = if ep {
            let n = e / self.spec.tp as usize;
            let r = shard.rank as usize;
            (r * n..(r + 1) * n, 0..self.cfg.intermediate_size as usize)
        } else {
            (0..e, shard.inter.clone())
        };
        let (n, c) = (experts.len(), cols.len());
        let ranks = self.spec.tp as usize;
        let split = if ep && !dense { split_sizes(t, k, ranks, n) } else { None };
        let m = match (dense, split) {
            (true, _) => t,
            (false, Some((_, per_expert))) => per_expert,
            (false, None) => capacity(t, k, e),
        };
        let f32s = DType::F32;
        let mut opt = |on: bool, what: &str, shape: &[usize], d: DType| -> Result<Option<HbmTensor>, ProgramError> {
            if on {
                Ok(Some(self.scratch(chip, &name(what), shape, d)?))
            } else {
                Ok(None)
            }
        };
        let kth = opt(dense, "moe.kth", &[t, 1], f32s)?;
        let mask = opt(dense, "moe.mask", &[t, e], f32s)?;
        let probs = opt(dense, "moe.probs", &[t, e], f32s)?;
        let sums = opt(dense, "moe.sums", &[t], f32s)?;
        let gates_t = opt(dense, "moe.gates_t", &[n, t, 1], dt)?;
        let top_p = opt(!dense, "moe.top_p", &[t, k], f32s)?;
        let top_g = opt(!dense, "moe.top_g", &[t, k, 1], dt)?;
        let yk = opt(!dense, "moe.yk", &[t * k, h], dt)?;
        let split = match split {
            Some((cs, _)) => {
                let (tl, rank) = (t / ranks, shard.rank);
                let send_ids = TensorSource::MoeSendIds { rank };
                let return_ids = TensorSource::MoeReturnIds { rank };
                Some(SplitBufs {
                    send: self.scratch(chip, &name("moe.send"), &[ranks * cs, h], dt)?,
                    send_ids: self.input(chip, &name("moe.send_ids"), &[ranks * cs], DType::I32, send_ids)?,
                    back: self.scratch(chip, &name("moe.back"), &[ranks * cs, h], dt)?,
                    return_ids: self.input(chip, &name("moe.return_ids"), &[tl * k], DType::I32, return_ids)?,
                    yk: self.scratch(chip, &name("moe.yk_local"), &[tl * k, h], dt)?,
                    gates: self.scratch(chip, &name("moe.gates_local"), &[tl, k, 1], dt)?,
                    y_local: self.scratch(chip, &name("moe.y_local"), &[tl, h], dt)?,
                })
            }
            None => None,
        };
        let (dispatch, combine, local) = if ep && !dense && split.is_none() {
            let src = |s| TensorSource::clone(&s);
            let d = src(TensorSource::MoeDispatch { experts: experts.clone() });
            let cmb = src(TensorSource::MoeCombine { experts: experts.clone() });
            let l = src(TensorSource::MoeLocal { experts: experts.clone() });
            (
                Some(self.input(chip, &name("moe.dispatch"), &[n * m], DType::I32, d)?),
                Some(self.input(chip, &name("moe.combine"), &[t * k], DType::I32, cmb)?),
                Some(self.input(chip, &name("moe.local"), &[t, k, 1], dt, l)?),
            )
        } else {
            (None, None, None)
        };
        Ok(MoeBufs {
            logits: self.scratch(chip, &name("moe.logits"), &[t, e], f32s)?,
            top_v: self.scratch(chip, &name("moe.top_v"), &[t, k], f32s)?,
            top_i: self.scratch(chip, &name("moe.top_i"), &[t, k], DType::U32)?,
            xe: self.scratch(chip, &name("moe.xe"), &[n, m, h], dt)?,
            gate: self.scratch(chip, &name("moe.gate"), &[n, m, c], dt)?,
            up: self.scratch(chip, &name("moe.up"), &[n, m, c], dt)?,
            ye: self.scratch(chip, &name("moe.ye"), &[n, m, h], dt)?,
            kth,
            mask,
            probs,
            sums,
            gates_t,
            top_p,
            top_g,
            yk,
            dispatch,
            combine,
            local,
            experts,
            cols,
            split,
        })
    }

    /// True when the MoE blocks of this program split tokens over the ranks (their output is
    /// all-gathered, not all-reduced).
    pub(super) fn moe_split(&self) -> bool {
        self.ranks.first().and_then(|r| r.moe.as_ref()).is_some_and(|b| b.split.is_some())
    }

    /// `(experts, experts per token)`.
    pub(super) fn moe_sizes(&self) -> (usize, usize) {
        self.cfg.moe.map_or((1, 1), |m| (m.num_experts as usize, m.experts_per_token as usize))
    }

    fn bufs(&self, r: usize) -> Result<&MoeBufs, ProgramError> {
        self.ranks[r].moe.as_ref().ok_or_else(|| ProgramError::Unsupported {
            what: "a MoE layer".into(),
            why: "its scratch was not declared (the config has no experts)".into(),
        })
    }

    /// The stacked weights of rank `r`'s experts: `[n, h, c]` (gate, up) or `[n, c, h]` (down)
    /// for its `n` experts and `c` columns.
    fn expert_weight(&mut self, r: usize, l: u32, role: WeightRole) -> Result<HbmTensor, ProgramError> {
        let Dims { h, .. } = self.dims;
        let b = self.bufs(r)?;
        let (experts, cols) = (b.experts.clone(), b.cols.clone());
        let n = experts.len();
        let (shape, slice) = if role == WeightRole::Down {
            ([n, cols.len(), h], WeightSlice::Transposed { rows: 0..h, cols, width: h })
        } else {
            ([n, h, cols.len()], WeightSlice::Transposed { rows: cols.clone(), cols: 0..h, width: cols.len() })
        };
        let names: Vec<String> = experts.map(|x| weight_name(role, l, Some(x as u32))).collect();
        let base = format!("model.layers.{l}.block_sparse_moe.experts.{}.stacked", role_tag(role));
        self.weight_from(r, true, &base, &shape, TensorSource::Stacked { names, slice })
    }

    /// The MoE block of layer `l` on every rank: `y = Σ_experts gate · expert(xn)` (partial over
    /// the rank's columns).
    pub(super) fn moe(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let (e, k) = self.moe_sizes();
        let at = Some(l);
        let dt = self.spec.dtype;
        let dense = self.spec.moe == MoeRouting::Dense;
        self.each_rank("router", OpCategory::Router, at, |em, r| {
            let hf = weight_name(WeightRole::Router, l, None);
            let slice = WeightSlice::Transposed { rows: 0..e, cols: 0..h, width: e };
            let w = em.weight(r, false, &hf, &[h, e], slice)?;
            let (xn, logits) = (em.ranks[r].xn.clone(), em.bufs(r)?.logits.clone());
            em.matmul(r, &xn, &w, None, &logits, [t, h, e], DType::F32)?;
            let b = em.bufs(r)?;
            let (logits, v, i) = (b.logits.clone(), b.top_v.clone(), b.top_i.clone());
            let a = args(&[t, e], DType::F32).with("k", &k.to_string());
            em.run(r, |ks| &*ks.topk, &a, &[("x", &logits), ("values", &v), ("indices", &i)])
        })?;
        self.each_rank(
            "gates",
            OpCategory::Router,
            at,
            |em, r| if dense { em.dense_gates(r) } else { em.topk_gates(r) },
        )?;
        if self.moe_split() {
            return self.split_experts(l);
        }
        self.each_rank("dispatch", OpCategory::Layout, at, |em, r| {
            let b = em.bufs(r)?;
            let (xe, xn) = (b.xe.clone(), em.ranks[r].xn.clone());
            if dense {
                // Every expert sees every token.
                let src = xn.view().reshape(&[1, t, h]).broadcast(0, xe.shape()[0]);
                return em.dma(r, 2, xe.view(), src);
            }
            let ids = b.dispatch.clone().or_else(|| em.chip_inputs[em.ranks[r].chip as usize].dispatch.clone());
            let ids = ids.ok_or_else(|| em.err(super::missing("MoE dispatch ids")))?;
            let rows = xe.shape()[0] * xe.shape()[1];
            let table = xn.clone();
            let xe = em.reshaped(&xe, &[rows, h])?;
            let a = args(&[rows, t, h], dt);
            em.run(r, |ks| &*ks.embedding, &a, &[("ids", &ids), ("table", &table), ("y", &xe)])
        })?;
        self.experts(l)?;
        self.each_rank("combine", OpCategory::Elementwise, at, |em, r| {
            if dense {
                em.dense_combine(r)
            } else {
                em.slot_combine(r)
            }
        })
    }

    /// The experts of every rank: batched matmuls over `[experts, slots, ·]`.
    fn experts(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { h, .. } = self.dims;
        let dt = self.spec.dtype;
        self.each_rank("experts", OpCategory::Mlp, Some(l), |em, r| {
            let (w1, w3, w2) = (
                em.expert_weight(r, l, WeightRole::Gate)?,
                em.expert_weight(r, l, WeightRole::Up)?,
                em.expert_weight(r, l, WeightRole::Down)?,
            );
            let b = em.bufs(r)?;
            let (xe, g, u, ye) = (b.xe.clone(), b.gate.clone(), b.up.clone(), b.ye.clone());
            let (n_e, m, i_r) = (xe.shape()[0], xe.shape()[1], g.shape()[2]);
            let bmm =
                |k_: usize, n: usize| args(&[m, k_, n], dt).with("out", dt.name()).with("batch", &n_e.to_string());
            em.run(r, |ks| &*ks.matmul, &bmm(h, i_r), &[("a", &xe), ("b", &w1), ("c", &g)])?;
            em.run(r, |ks| &*ks.matmul, &bmm(h, i_r), &[("a", &xe), ("b", &w3), ("c", &u)])?;
            em.run(r, |ks| &*ks.swiglu, &args(g.shape(), dt), &[("a", &g), ("b", &u), ("y", &g)])?;
            em.run(r, |ks| &*ks.matmul, &bmm(i_r, h), &[("a", &g), ("b", &w2), ("c", &ye)])
        })
    }

    /// Token-split expert parallelism: the local tokens' slots to the experts' ranks by
    /// all-to-all, the rank's experts, the outputs back by all-to-all, the local tokens'
    /// combine, and an all-gather of the rows.
    fn split_experts(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let (_, k) = self.moe_sizes();
        let at = Some(l);
        let dt = self.spec.dtype;
        let n = self.ranks.len();
        // Per rank: its split tensors, and its expert inputs and outputs as `[n·c, h]`.
        let mut bufs: Vec<(SplitBufs, HbmTensor, HbmTensor)> = Vec::with_capacity(n);
        for r in 0..n {
            let b = self.bufs(r)?;
            let s = b.split.clone().ok_or_else(|| self.err(super::missing("token-split MoE tensors")))?;
            let rows = s.send.shape()[0];
            let (xe, ye) = (b.xe.clone(), b.ye.clone());
            bufs.push((s, self.reshaped(&xe, &[rows, h])?, self.reshaped(&ye, &[rows, h])?));
        }
        self.each_rank("dispatch", OpCategory::Layout, at, |em, r| {
            let s = &bufs[r].0;
            let xn = em.ranks[r].xn.clone();
            let a = args(&[s.send.shape()[0], t, h], dt);
            em.run(r, |ks| &*ks.embedding, &a, &[("ids", &s.send_ids), ("table", &xn), ("y", &s.send)])
        })?;
        let cores = self.cores();
        let pick = |f: &dyn Fn(&(SplitBufs, HbmTensor, HbmTensor)) -> HbmTensor| bufs.iter().map(f).collect::<Vec<_>>();
        let (send, recv) = (pick(&|b| b.0.send.clone()), pick(&|b| b.1.clone()));
        let (out, back) = (pick(&|b| b.2.clone()), pick(&|b| b.0.back.clone()));
        self.op("all_to_all.dispatch", OpCategory::Collective, at, |em| em.all_to_all(&send, &recv, &cores))?;
        self.experts(l)?;
        self.op("all_to_all.combine", OpCategory::Collective, at, |em| em.all_to_all(&out, &back, &cores))?;
        let tl = t / n;
        self.each_rank("combine", OpCategory::Elementwise, at, |em, r| {
            let s = &bufs[r].0;
            let top_g = em.bufs(r)?.top_g.clone().ok_or_else(|| em.err(super::missing("uniform MoE gates")))?;
            em.dma(r, 1, s.gates.view(), top_g.rows(r * tl..(r + 1) * tl))?;
            let gather = args(&[tl * k, s.back.shape()[0], h], dt);
            em.run(r, |ks| &*ks.embedding, &gather, &[("ids", &s.return_ids), ("table", &s.back), ("y", &s.yk)])?;
            let yk3 = em.reshaped(&s.yk, &[tl, k, h])?;
            let mul = args(&[tl, k, h], dt).with("op", "mul").with("b_shape", &format!("{tl},{k},1"));
            em.run(r, |ks| &*ks.binary, &mul, &[("a", &yk3), ("b", &s.gates), ("c", &yk3)])?;
            let sum = args(&[tl, k, h], dt).with("axis", "1");
            em.run(r, |ks| &*ks.reduce, &sum, &[("x", &yk3), ("y", &s.y_local)])
        })?;
        let (rows, full) = (pick(&|b| b.0.y_local.clone()), self.ranks.iter().map(|r| r.y.clone()).collect::<Vec<_>>());
        self.op("all_gather.moe", OpCategory::Collective, at, |em| {
            if em.skip_emit {
                return Ok(());
            }
            let done = collective::all_gather(&mut em.kb, &rows, &full, &cores);
            done.map(|_| ()).map_err(|e| em.err(e))
        })
    }

    fn all_to_all(&mut self, inputs: &[HbmTensor], outputs: &[HbmTensor], cores: &[u16]) -> Result<(), ProgramError> {
        if self.skip_emit {
            return Ok(());
        }
        let done = collective::all_to_all(&mut self.kb, inputs, outputs, cores);
        done.map(|_| ()).map_err(|e| self.err(e))
    }

    /// Dense gates `[E, T, 1]`: the router's probabilities on each token's top `k`, renormalised.
    fn dense_gates(&mut self, r: usize) -> Result<(), ProgramError> {
        let Dims { t, .. } = self.dims;
        let (e, k) = self.moe_sizes();
        let b = self.bufs(r)?;
        let missing = || self.err(super::missing("dense MoE scratch"));
        let (logits, top_v) = (b.logits.clone(), b.top_v.clone());
        let (Some(kth), Some(mask), Some(probs), Some(sums), Some(gates_t)) =
            (b.kth.clone(), b.mask.clone(), b.probs.clone(), b.sums.clone(), b.gates_t.clone())
        else {
            return Err(missing());
        };
        let f = DType::F32;
        self.dma(r, 0, kth.view(), top_v.cols(k - 1..k))?;
        let cmp = args(&[t, e], f).with("op", "ge").with("b_shape", &format!("{t},1"));
        self.run(r, |ks| &*ks.binary, &cmp, &[("a", &logits), ("b", &kth), ("c", &mask)])?;
        self.run(r, |ks| &*ks.softmax, &args(&[t, e], f), &[("x", &logits), ("y", &probs)])?;
        let mul = args(&[t, e], f).with("op", "mul");
        self.run(r, |ks| &*ks.binary, &mul, &[("a", &probs), ("b", &mask), ("c", &probs)])?;
        self.run(r, |ks| &*ks.reduce, &args(&[t, e], f), &[("x", &probs), ("y", &sums)])?;
        let sums = self.reshaped(&sums, &[t, 1])?;
        let div = args(&[t, e], f).with("op", "div").with("b_shape", &format!("{t},1"));
        self.run(r, |ks| &*ks.binary, &div, &[("a", &probs), ("b", &sums), ("c", &probs)])?;
        // Gates of the rank's experts, in the dtype: [T, E] → [n, T, 1].
        let experts = self.bufs(r)?.experts.clone();
        let n = experts.len();
        let src = probs.view().permute(&[1, 0]).slice(0, experts).reshape(&[n, t, 1]);
        self.dma(r, 1, gates_t.view(), src)
    }

    /// Uniform gates: softmax of each token's top-k logits, as `[T, k, 1]` in the dtype.
    fn topk_gates(&mut self, r: usize) -> Result<(), ProgramError> {
        let Dims { t, .. } = self.dims;
        let (_, k) = self.moe_sizes();
        let b = self.bufs(r)?;
        let (top_v, top_p, top_g) = (b.top_v.clone(), b.top_p.clone(), b.top_g.clone());
        let (Some(top_p), Some(top_g)) = (top_p, top_g) else {
            return Err(self.err(super::missing("uniform MoE scratch")));
        };
        self.run(r, |ks| &*ks.softmax, &args(&[t, k], DType::F32), &[("x", &top_v), ("y", &top_p)])?;
        self.dma(r, 1, top_g.view(), top_p.view().reshape(&[t, k, 1]))
    }

    /// Dense combine: `y = Σ_e gate_e ⊙ ye_e`.
    fn dense_combine(&mut self, r: usize) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let dt = self.spec.dtype;
        let b = self.bufs(r)?;
        let (ye, gates_t) = (b.ye.clone(), b.gates_t.clone());
        let gates_t = gates_t.ok_or_else(|| self.err(super::missing("dense MoE gates")))?;
        let y = self.ranks[r].y.clone();
        let n = ye.shape()[0];
        let mul = args(&[n, t, h], dt).with("op", "mul").with("b_shape", &format!("{n},{t},1"));
        self.run(r, |ks| &*ks.binary, &mul, &[("a", &ye), ("b", &gates_t), ("c", &ye)])?;
        let sum = args(&[n, t, h], dt).with("axis", "0");
        self.run(r, |ks| &*ks.reduce, &sum, &[("x", &ye), ("y", &y)])
    }

    /// Uniform combine: each token's `k` slots gathered back, weighted and summed.
    fn slot_combine(&mut self, r: usize) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let (_, k) = self.moe_sizes();
        let dt = self.spec.dtype;
        let b = self.bufs(r)?;
        let (ye, top_g, yk) = (b.ye.clone(), b.top_g.clone(), b.yk.clone());
        let (Some(top_g), Some(yk)) = (top_g, yk) else {
            return Err(self.err(super::missing("uniform MoE scratch")));
        };
        let local = b.local.clone();
        let ids = b.combine.clone().or_else(|| self.chip_inputs[self.ranks[r].chip as usize].combine.clone());
        let ids = ids.ok_or_else(|| self.err(super::missing("MoE combine ids")))?;
        if let Some(local) = local {
            // Only the rank's experts contribute; the others' slots weigh 0.
            let mul = args(&[t, k, 1], dt).with("op", "mul");
            self.run(r, |ks| &*ks.binary, &mul, &[("a", &top_g), ("b", &local), ("c", &top_g)])?;
        }
        let slots = ye.shape()[0] * ye.shape()[1];
        let table = self.reshaped(&ye, &[slots, h])?;
        let gather = args(&[t * k, slots, h], dt);
        self.run(r, |ks| &*ks.embedding, &gather, &[("ids", &ids), ("table", &table), ("y", &yk)])?;
        let yk3 = self.reshaped(&yk, &[t, k, h])?;
        let mul = args(&[t, k, h], dt).with("op", "mul").with("b_shape", &format!("{t},{k},1"));
        self.run(r, |ks| &*ks.binary, &mul, &[("a", &yk3), ("b", &top_g), ("c", &yk3)])?;
        let y = self.ranks[r].y.clone();
        let sum = args(&[t, k, h], dt).with("axis", "1");
        self.run(r, |ks| &*ks.reduce, &sum, &[("x", &yk3), ("y", &y)])
    }
}

/// `w1`, `w3` or `w2` (Mixtral's names for gate, up, down).
fn role_tag(role: WeightRole) -> &'static str {
    match role {
        WeightRole::Gate => "w1",
        WeightRole::Up => "w3",
        _ => "w2",
    }
}
