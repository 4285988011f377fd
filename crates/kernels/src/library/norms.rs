//! Kernels of the `norms` family: `softmax` (optionally causal),
//! `layernorm` and `rmsnorm`, all over the last axis.
//!
//! Each is memory bound when the work per element is spread over the
//! Vector, Scalar and GpSimd engines: row blocks of 128 rows are loaded
//! whole (one large DMA per block), statistics and normalisation run in
//! place in SBUF, and the statistics of the next block are emitted ahead of
//! the normalisation of the current one (`rows::pipelined`). Rows too long
//! for SBUF are streamed twice in column chunks.

use super::Kernel;

mod layernorm;
mod rows;
mod softmax;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(softmax::Softmax), Box::new(layernorm::LayerNorm), Box::new(layernorm::RmsNorm)]
}
