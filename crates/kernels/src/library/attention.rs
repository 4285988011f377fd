//! Kernels of the `attention` family: flash attention (prefill), decode
//! attention over a KV cache, and rotary position embedding.
//!
//! * `flash_attention` — `o = softmax(scale · q kᵀ [+ causal mask]) v` per
//!   query head, with grouped-query attention (`kv_heads`), streamed over key
//!   blocks with a running max and sum ([`flash`]).
//! * `decode_attention` — one query token per sequence against a cached K/V
//!   in HBM; memory-bound, every cache byte read once ([`decode`]).
//! * `rotary` — RoPE in the "rotate half" convention of Llama ([`rotary`]).
//!
//! All three are composable (`signature` + `emit`): each allocates its tiles
//! per core from an `Arena` freed when it returns, so e.g. two `rotary`
//! emits into HBM scratch can feed `flash_attention` in one program
//! (`tests.rs`).

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, InstId};

pub(crate) use super::bound;
use super::{Kernel, KernelArgs};
use crate::view::AsAp;
use crate::{BuildError, KernelBuilder, Tile, View};

pub mod decode;
pub mod flash;
pub mod rotary;

/// The kernels of this family.
pub fn kernels() -> Vec<Box<dyn Kernel>> {
    vec![Box::new(flash::FlashAttention), Box::new(decode::DecodeAttention), Box::new(rotary::Rotary)]
}

/// A `BuildError::Kernel` for `kernel`.
fn kernel_err(kernel: &str, message: impl Into<String>) -> BuildError {
    BuildError::Kernel { kernel: kernel.to_string(), message: message.into() }
}

/// A copy on the Scalar engine; NeuronCore-v2 has no Scalar `copy` and goes
/// through an Identity activation instead (HW-ISA-COPY).
fn scalar_copy(kb: &mut KernelBuilder, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
    if kb.chip().generation >= 3 {
        kb.copy(trainyard_isa::Engine::Scalar, dst, src)
    } else {
        kb.activation(ActFn::Identity, dst, src, 1.0, None, None)
    }
}

/// The softmax scale: option `scale`, default `1/√d`; must be finite and positive.
fn softmax_scale(kernel: &str, args: &super::KernelArgs, d: usize) -> Result<f32, BuildError> {
    let scale = args.f64(kernel, "scale", 1.0 / (d as f64).sqrt())?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(kernel_err(kernel, format!("option `scale={scale}`: must be a finite positive number")));
    }
    Ok(scale as f32)
}

/// Option `kv_heads` (default `h`): must be positive and divide `h`.
fn kv_heads(kernel: &str, args: &super::KernelArgs, h: usize) -> Result<usize, BuildError> {
    let kvh = args.usize(kernel, "kv_heads", h)?;
    if kvh == 0 || !h.is_multiple_of(kvh) {
        return Err(kernel_err(kernel, format!("option `kv_heads={kvh}`: must be positive and divide H={h}")));
    }
    Ok(kvh)
}

/// Fails unless the Tensor engine can contract over `d` partitions.
fn check_head_dim(kernel: &str, chip: &ChipSpec, d: usize) -> Result<(), BuildError> {
    let rows = chip.core.tensor.rows.min(chip.core.sbuf.partitions) as usize;
    if d > rows {
        return Err(kernel_err(
            kernel,
            format!("head dim D={d} exceeds the {rows} partitions a matmul contracts over"),
        ));
    }
    Ok(())
}

/// Host softmax-attention of one query row against `keys` rows of `k`/`v`
/// (row-major `[rows, d]`), in f64.
fn attend_row(q: &[f64], k: &[f64], v: &[f64], keys: usize, d: usize, scale: f64, out: &mut [f64]) {
    let scores: Vec<f64> =
        (0..keys).map(|j| scale * q.iter().zip(&k[j * d..j * d + d]).map(|(a, b)| a * b).sum::<f64>()).collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let l: f64 = w.iter().sum();
    for (c, o) in out.iter_mut().enumerate() {
        *o = w.iter().enumerate().map(|(j, wj)| wj * v[j * d + c]).sum::<f64>() / l;
    }
}

/// Dtypes the attention kernels accept.
const FLOAT_DTYPES: &[DType] = &[DType::F32, DType::Bf16, DType::F16];

/// Options and dtype checks that `library::build` makes, repeated for callers
/// that reach a kernel through `signature` / `emit` directly.
fn check_args(kernel: &dyn Kernel, args: &KernelArgs) -> Result<(), BuildError> {
    args.check_options(kernel)?;
    if !kernel.dtypes().contains(&args.dtype) {
        return Err(kernel_err(kernel.name(), format!("dtype {} is not supported", args.dtype)));
    }
    Ok(())
}

/// The tiles of one emitted kernel on one core, handed out as views and
/// freed together, so that the next kernel in the builder finds SBUF and
/// PSUM as this one found them.
#[derive(Default)]
struct Arena {
    tiles: Vec<Tile>,
}

impl Arena {
    fn sbuf(&mut self, kb: &mut KernelBuilder, shape: &[usize], dtype: DType) -> Result<View, BuildError> {
        let tile = kb.sbuf_tile(shape, dtype)?;
        let view = tile.view();
        self.tiles.push(tile);
        Ok(view)
    }

    fn psum(&mut self, kb: &mut KernelBuilder, shape: &[usize], dtype: DType) -> Result<View, BuildError> {
        let tile = kb.psum_tile(shape, dtype)?;
        let view = tile.view();
        self.tiles.push(tile);
        Ok(view)
    }

    /// `n` SBUF (or PSUM) buffers of one shape.
    fn ring(
        &mut self,
        kb: &mut KernelBuilder,
        n: usize,
        shape: &[usize],
        dtype: DType,
        psum: bool,
    ) -> Result<Vec<View>, BuildError> {
        (0..n).map(|_| if psum { self.psum(kb, shape, dtype) } else { self.sbuf(kb, shape, dtype) }).collect()
    }
}

/// Runs `body` with a fresh [`Arena`] and frees it afterwards, also when
/// `body` fails part-way (the first error wins).
fn with_arena<T>(
    kb: &mut KernelBuilder,
    body: impl FnOnce(&mut KernelBuilder, &mut Arena) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let mut arena = Arena::default();
    let result = body(kb, &mut arena);
    let freed = arena.tiles.into_iter().try_for_each(|t| kb.free(t));
    let value = result?;
    freed?;
    Ok(value)
}

/// Emits on each core `0..cores` in turn, then sends the builder back to the
/// core it was on.
fn on_cores(
    kb: &mut KernelBuilder,
    cores: usize,
    mut body: impl FnMut(&mut KernelBuilder, usize) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    let caller = kb.current_core();
    for c in 0..cores {
        kb.core(c as u16)?;
        body(kb, c)?;
    }
    kb.core(caller)
}

#[cfg(test)]
mod tests;
