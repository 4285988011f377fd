//! The geometry of a convolution and the device layout of its weights.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{kernel_err, Window2d};
use crate::error::BuildError;
use crate::library::elementwise::common::chunks;
use crate::library::KernelArgs;

/// Kernel name, for argument errors.
const NAME: &str = "conv2d";

/// The shape and options of one convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeometry {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input rows.
    pub h: usize,
    /// Input columns.
    pub w: usize,
    /// Output channels.
    pub m: usize,
    /// Channel groups.
    pub groups: usize,
    /// The window.
    pub window: Window2d,
}

impl ConvGeometry {
    /// Reads the shape and window options of `args`.
    pub fn parse(args: &KernelArgs) -> Result<ConvGeometry, BuildError> {
        let [n, c, h, w, m, kh, kw] = args.dims::<7>(NAME, "N,C,H,W,M,KH,KW")?;
        let window = Window2d::parse(NAME, args, [kh, kw])?;
        let groups = args.usize(NAME, "groups", 1)?;
        if groups == 0 || c % groups != 0 || m % groups != 0 {
            return Err(kernel_err(NAME, format!("groups = {groups} must divide C = {c} and M = {m}")));
        }
        let g = ConvGeometry { n, c, h, w, m, groups, window };
        g.out_hw()?;
        Ok(g)
    }

    /// Output rows and columns.
    pub fn out_hw(&self) -> Result<(usize, usize), BuildError> {
        match (self.window.out_len(0, self.h, false), self.window.out_len(1, self.w, false)) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(kernel_err(
                NAME,
                format!(
                    "a {:?} window (dilation {:?}) does not fit the {}x{} input padded by {:?}",
                    self.window.kernel, self.window.dilation, self.h, self.w, self.window.pads
                ),
            )),
        }
    }

    /// Kernel taps (KH·KW).
    pub fn taps(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1]
    }

    /// Input channels per group.
    pub fn c_per_group(&self) -> usize {
        self.c / self.groups
    }

    /// Output channels per group.
    pub fn m_per_group(&self) -> usize {
        self.m / self.groups
    }
}

/// One input-channel chunk's weights within an output block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightPart {
    /// Index into [`ConvPacking::chunks`].
    pub chunk: usize,
    /// First element of its `[k, taps, mo]` slice in the packed weights.
    pub offset: usize,
}

/// Output channels computed together (≤ 128, on PSUM partitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutBlock {
    /// The output channels.
    pub m: Range<usize>,
    /// The input-channel chunks it accumulates over, in order.
    pub parts: Vec<WeightPart>,
}

/// The device layout of convolution weights: output channels in blocks of
/// ≤ 128, each accumulating over chunks of ≤ 128 input channels; the weights
/// of one (block, chunk) pair are a dense `[k, KH·KW, mo]` slice (input
/// channel on partitions, one `[k, mo]` stationary operand per tap), the
/// slices stored one after the other. Channels of different groups that
/// share a block get zero weights (block-diagonal).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPacking {
    /// Output-channel blocks.
    pub blocks: Vec<OutBlock>,
    /// Input-channel chunks (each ≤ 128 channels).
    pub chunks: Vec<Range<usize>>,
    /// Elements of the packed weights.
    pub len: usize,
    taps: usize,
}

impl ConvPacking {
    /// The packing of `g` for arrays of `p` rows and columns (128).
    pub fn new(g: &ConvGeometry, p: usize) -> ConvPacking {
        let (cg, mg, groups, taps) = (g.c_per_group(), g.m_per_group(), g.groups, g.taps());
        let mut ids: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut chunk_list: Vec<Range<usize>> = Vec::new();
        let mut chunk_id = |r: Range<usize>| {
            *ids.entry((r.start, r.end)).or_insert_with(|| {
                chunk_list.push(r.clone());
                chunk_list.len() - 1
            })
        };
        let mut blocks = Vec::new();
        let mut plan: Vec<(Range<usize>, Vec<usize>)> = Vec::new();
        if groups > 1 && cg <= p && mg <= p {
            // Several whole groups per block, block-diagonal weights.
            let per = (p / cg).min(p / mg).clamp(1, groups);
            for g0 in (0..groups).step_by(per) {
                let ng = per.min(groups - g0);
                plan.push((g0 * mg..(g0 + ng) * mg, vec![chunk_id(g0 * cg..(g0 + ng) * cg)]));
            }
        } else {
            for gi in 0..groups {
                for mc in chunks(mg, p) {
                    let parts = chunks(cg, p).into_iter().map(|cc| chunk_id(gi * cg + cc.start..gi * cg + cc.end));
                    plan.push((gi * mg + mc.start..gi * mg + mc.end, parts.collect()));
                }
            }
        }
        let mut offset = 0;
        for (m, ids) in plan {
            let mut parts = Vec::with_capacity(ids.len());
            for chunk in ids {
                parts.push(WeightPart { chunk, offset });
                offset += chunk_list[chunk].len() * taps * m.len();
            }
            blocks.push(OutBlock { m, parts });
        }
        ConvPacking { blocks, chunks: chunk_list, len: offset, taps }
    }

    /// Packs ONNX-layout weights `[M, C/G, KH, KW]` (row-major) into the
    /// device layout; channels of different groups in one block get 0.
    pub fn pack(&self, g: &ConvGeometry, onnx: &[f64]) -> Result<Vec<f64>, String> {
        let (cg, mg, taps) = (g.c_per_group(), g.m_per_group(), self.taps);
        if onnx.len() != g.m * cg * taps {
            return Err(format!("weights have {} elements, [M, C/G, KH, KW] needs {}", onnx.len(), g.m * cg * taps));
        }
        let mut out = vec![0.0; self.len];
        for b in &self.blocks {
            let mo = b.m.len();
            for part in &b.parts {
                for (ci, c) in self.chunks[part.chunk].clone().enumerate() {
                    for t in 0..taps {
                        for (mi, m) in b.m.clone().enumerate() {
                            if c / cg == m / mg {
                                out[part.offset + (ci * taps + t) * mo + mi] = onnx[(m * cg + c % cg) * taps + t];
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
