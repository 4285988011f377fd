//! Collectives between the ranks: all-reduces (flat, or hierarchical over chips), the logits
//! all-gather, and the residual adds after them.

use super::*;

impl Emitter<'_> {
    /// The cores of the ranks, in rank order.
    pub(super) fn cores(&self) -> Vec<u16> {
        self.ranks.iter().map(|r| r.core).collect()
    }

    /// Sums `parts` (one per rank, on its chip) into every part.
    pub(super) fn all_reduce(&mut self, parts: &[HbmTensor]) -> Result<(), ProgramError> {
        if self.skip_emit {
            return Ok(());
        }
        let cores = self.cores();
        let segs: Vec<HbmTensor> = self.ranks.iter().filter_map(|r| r.seg.clone()).collect();
        let done = if segs.len() == parts.len() {
            self.hierarchical_all_reduce(parts, &segs, &cores)
        } else {
            collective::all_reduce(&mut self.kb, parts, &cores).map(|_| ())
        };
        done.map_err(|e| self.err(e))
    }

    /// All-reduce over several chips in three rings: a reduce-scatter among the ranks of each
    /// chip (segment `k` of the chip's sum lands on its `k`-th rank), an all-reduce of
    /// segment `k` among the `k`-th ranks of all chips, and an all-gather within each chip.
    /// The chip-to-chip rings carry `1/P` of the data over `chips − 1` hops each instead of
    /// one ring of `tp − 1` hops, most of them between chips.
    pub(super) fn hierarchical_all_reduce(
        &mut self,
        parts: &[HbmTensor],
        segs: &[HbmTensor],
        cores: &[u16],
    ) -> Result<(), BuildError> {
        let p = self.per_chip as usize;
        let chips = parts.len() / p;
        let seg_len = segs[0].shape().iter().product::<usize>();
        let as_rows: Vec<HbmTensor> = parts.iter().map(|t| t.reshaped(&[p, seg_len])).collect::<Result<_, _>>()?;
        for c in 0..chips {
            let r = c * p..(c + 1) * p;
            collective::reduce_scatter(&mut self.kb, &as_rows[r.clone()], &segs[r.clone()], &cores[r])?;
        }
        for k in 0..p {
            let group: Vec<usize> = (0..chips).map(|c| c * p + k).collect();
            let seg: Vec<HbmTensor> = group.iter().map(|&i| segs[i].clone()).collect();
            let gc: Vec<u16> = group.iter().map(|&i| cores[i]).collect();
            collective::all_reduce(&mut self.kb, &seg, &gc)?;
        }
        for c in 0..chips {
            let r = c * p..(c + 1) * p;
            collective::all_gather(&mut self.kb, &segs[r.clone()], &as_rows[r.clone()], &cores[r])?;
        }
        Ok(())
    }

    /// All-gathers the logits shards onto rank 0 (and the ranks a ring passes them through):
    /// one ring, or with a hierarchy a ring within each chip then one among the chips' first ranks.
    pub(super) fn gather_logits(&mut self, parts: &[HbmTensor], cores: &[u16]) -> Result<(), BuildError> {
        let local: Vec<HbmTensor> = self.ranks.iter().filter_map(|r| r.chip_logits.clone()).collect();
        let all: Vec<HbmTensor> = self.ranks.iter().filter_map(|r| r.gathered.clone()).collect();
        if local.len() != parts.len() {
            return collective::all_gather(&mut self.kb, parts, &all, cores).map(|_| ());
        }
        let p = self.per_chip as usize;
        for c in 0..parts.len() / p {
            let r = c * p..(c + 1) * p;
            collective::all_gather(&mut self.kb, &parts[r.clone()], &local[r.clone()], &cores[r])?;
        }
        let leaders: Vec<usize> = (0..parts.len()).step_by(p).collect();
        let inputs: Vec<HbmTensor> = leaders.iter().map(|&i| local[i].clone()).collect();
        let lc: Vec<u16> = leaders.iter().map(|&i| cores[i]).collect();
        collective::all_gather(&mut self.kb, &inputs, &all, &lc).map(|_| ())
    }

    /// All-reduces the partial sums `y` of the ranks and adds them to the residual stream.
    pub(super) fn reduce_and_add(&mut self, block: &str, l: u32) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let label = format!("all_reduce.{block}");
        let parts: Vec<HbmTensor> = self.ranks.iter().map(|r| r.y.clone()).collect();
        let at = Some(l);
        // A token-split MoE block leaves its rows all-gathered, not partial.
        let gathered = block == "mlp" && self.moe_split();
        if self.spec.tp > 1 && !gathered {
            self.op(&label, OpCategory::Collective, at, |e| e.all_reduce(&parts))?;
        }
        self.each_rank(&format!("residual.{block}"), OpCategory::Elementwise, at, |e, r| {
            let (x, y) = (e.ranks[r].x.clone(), e.ranks[r].y.clone());
            let a = args(&[t, h], e.spec.dtype);
            e.run(r, |k| &*k.binary, &a, &[("a", &x), ("b", &y), ("c", &x)])
        })
    }
}
