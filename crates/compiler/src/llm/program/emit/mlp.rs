//! The dense MLP of every rank.

use super::*;

impl Emitter<'_> {
    /// The dense MLP of every rank: fused, or gate/up, SwiGLU and down when it has biases.
    pub(super) fn mlp(&mut self, l: u32) -> Result<(), ProgramError> {
        let Dims { t, h, .. } = self.dims;
        let at = Some(l);
        let dt = self.spec.dtype;
        let w = |e: &mut Self, r: usize, role: WeightRole| -> Result<HbmTensor, ProgramError> {
            let inter = e.ranks[r].shard.inter.clone();
            let hf = weight_name(role, l, None);
            let (shape, slice) = if role == WeightRole::Down {
                ([inter.len(), h], WeightSlice::Transposed { rows: 0..h, cols: inter, width: h })
            } else {
                ([h, inter.len()], WeightSlice::Transposed { rows: inter.clone(), cols: 0..h, width: inter.len() })
            };
            e.weight(r, true, &hf, &shape, slice)
        };
        if self.fused_mlp {
            return self.each_rank("mlp", OpCategory::Mlp, at, |e, r| {
                let (wg, wu, wd) = (w(e, r, WeightRole::Gate)?, w(e, r, WeightRole::Up)?, w(e, r, WeightRole::Down)?);
                let i = e.ranks[r].shard.inter.len();
                let (xn, y) = (e.ranks[r].xn.clone(), e.ranks[r].y.clone());
                let a = args(&[t, h, i], dt);
                e.run(r, |k| &*k.mlp, &a, &[("x", &xn), ("w_gate", &wg), ("w_up", &wu), ("w_down", &wd), ("y", &y)])
            });
        }
        let has_bias = self.cfg.mlp_bias;
        let bias = |e: &mut Self, r: usize, role: WeightRole| -> Result<Option<HbmTensor>, ProgramError> {
            if !has_bias {
                return Ok(None);
            }
            let inter = e.ranks[r].shard.inter.clone();
            let hf = weight_name(role, l, None);
            e.weight(r, true, &hf, &[inter.len()], WeightSlice::Range(inter)).map(Some)
        };
        for (label, role, brole) in
            [("gate_proj", WeightRole::Gate, WeightRole::GateBias), ("up_proj", WeightRole::Up, WeightRole::UpBias)]
        {
            self.each_rank(label, OpCategory::Matmul, at, |e, r| {
                let (wt, b) = (w(e, r, role)?, bias(e, r, brole)?);
                let i = e.ranks[r].shard.inter.len();
                let out = if role == WeightRole::Gate { e.ranks[r].gate.clone() } else { e.ranks[r].up.clone() };
                let out = out.ok_or_else(|| e.err(missing("gate/up activations")))?;
                let xn = e.ranks[r].xn.clone();
                e.matmul(r, &xn, &wt, b.as_ref(), &out, [t, h, i], dt)
            })?;
        }
        self.each_rank("swiglu", OpCategory::Elementwise, at, |e, r| {
            let (g, u) = match (&e.ranks[r].gate, &e.ranks[r].up) {
                (Some(g), Some(u)) => (g.clone(), u.clone()),
                _ => return Err(e.err(missing("gate/up activations"))),
            };
            let a = args(g.shape(), dt);
            e.run(r, |k| &*k.swiglu, &a, &[("a", &g), ("b", &u), ("y", &g)])
        })?;
        self.each_rank("down_proj", OpCategory::Matmul, at, |e, r| {
            let wd = w(e, r, WeightRole::Down)?;
            let b = if r == 0 && has_bias {
                Some(e.weight(r, true, &weight_name(WeightRole::DownBias, l, None), &[h], WeightSlice::Whole)?)
            } else {
                None
            };
            let g = e.ranks[r].gate.clone().ok_or_else(|| e.err(missing("gate activations")))?;
            let y = e.ranks[r].y.clone();
            let i = e.ranks[r].shard.inter.len();
            e.matmul(r, &g, &wd, b.as_ref(), &y, [t, i, h], dt)
        })
    }
}
