//! The ends of a step: the token embedding, and the final norm, LM head, logits and arg-max.

use super::*;

impl Emitter<'_> {
    /// The token embedding: every rank gathers the rows of its chip's table into its residual stream.
    pub(super) fn embedding(&mut self) -> Result<(), ProgramError> {
        let Dims { t, h, v, .. } = self.dims;
        self.each_rank("embedding", OpCategory::Embedding, None, |e, r| {
            let chip = &e.chip_inputs[e.ranks[r].chip as usize];
            let (ids, table, x) = (chip.ids.clone(), chip.embed.clone(), e.ranks[r].x.clone());
            let a = args(&[t, v, h], e.spec.dtype);
            e.run(r, |k| &*k.embedding, &a, &[("ids", &ids), ("table", &table), ("y", &x)])
        })
    }

    /// Final norm of each sequence's last row, LM head, logits and arg-max.
    pub(super) fn head(&mut self) -> Result<(), ProgramError> {
        let Dims { b, s, h, v, .. } = self.dims;
        let dt = self.spec.dtype;
        if s > 1 {
            self.each_rank("last_rows", OpCategory::Layout, None, |e, r| {
                let src = e.ranks[r].x.view().reshape(&[b, s, h]).at(1, s - 1);
                let dst = e.ranks[r].last.view();
                e.dma(r, 0, dst, src)
            })?;
        }
        self.each_rank("final_norm", OpCategory::Norm, None, |e, r| {
            let gamma = e.norm_weight(r, WeightRole::FinalNorm, 0, h)?;
            let src = if s > 1 { e.ranks[r].last.clone() } else { e.ranks[r].x.clone() };
            let last = e.ranks[r].last.clone();
            e.rmsnorm(r, &gamma, &src, &last, b)
        })?;
        let head_source = if self.cfg.tie_word_embeddings { EMBED } else { "lm_head.weight" };
        self.each_rank("lm_head", OpCategory::Matmul, None, |e, r| {
            let shard = &e.ranks[r].shard;
            let (rows, width) = (shard.vocab.clone(), shard.vocab_width);
            let name = shard_name("lm_head.weight", e.spec.tp, r as u32);
            let w = match e.declared.get(&name) {
                Some(w) => w.clone(),
                None => {
                    let slice = WeightSlice::Transposed { rows, cols: 0..h, width };
                    let source = TensorSource::Weight { name: head_source.into(), slice };
                    e.input(e.ranks[r].chip, &name, &[h, width], dt, source)?
                }
            };
            let (last, logits) = (e.ranks[r].last.clone(), e.ranks[r].logits.clone());
            e.matmul(r, &last, &w, None, &logits, [b, h, width], DType::F32)
        })?;
        if let Some(out) = self.logits_out.clone() {
            self.op("all_gather.logits", OpCategory::Collective, None, |e| {
                if e.skip_emit {
                    return Ok(());
                }
                let parts: Vec<HbmTensor> = e.ranks.iter().map(|r| r.logits.clone()).collect();
                let cores = e.cores();
                let done = e.gather_logits(&parts, &cores);
                done.map_err(|err| e.err(err))
            })?;
            // Rank 0 keeps the real columns of every shard.
            self.op("logits_layout", OpCategory::Layout, None, |e| {
                let tp = e.ranks.len();
                let Some(all) = e.ranks[0].gathered.clone() else { return Ok(()) };
                let width = e.ranks[0].shard.vocab_width;
                for r in 0..tp {
                    let cols = e.ranks[r].shard.vocab.clone();
                    if cols.is_empty() {
                        continue;
                    }
                    let src = all.view().reshape(&[tp, b, width]).at(0, r).cols(0..cols.len());
                    e.dma(0, (r % 4) as u8, out.cols(cols), src)?;
                }
                Ok(())
            })?;
        }
        self.op("argmax", OpCategory::Sampling, None, |e| {
            let logits = e.logits_out.clone().unwrap_or_else(|| e.ranks[0].logits.clone());
            let chip = e.ranks[0].chip;
            let next = e.tensor(chip, trainyard_isa::TensorKind::Output, NEXT_TOKEN, &[b], DType::U32)?;
            let a = args(&[b, v], DType::F32);
            e.run(0, |k| &*k.argmax, &a, &[("x", &logits), ("idx", &next)])
        })
    }
}
