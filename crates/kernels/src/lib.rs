//! `trainyard-kernels`: the kernel builder, and the kernels built with it.
//!
//! A kernel author writes a tiled kernel in plain Rust against a
//! [`KernelBuilder`]: HBM tensors, on-chip tiles, views of both, and one method
//! per instruction. The builder emits a [`trainyard_isa::Program`] in which
//! every instruction already carries the instructions it must wait for — an
//! author never writes a semaphore.
//!
//! # Pieces
//!
//! * **HBM tensors** — [`KernelBuilder::hbm_input`], [`hbm_output`](KernelBuilder::hbm_output),
//!   [`hbm_scratch`](KernelBuilder::hbm_scratch) declare a row-major tensor in the
//!   program and place it in HBM (64-byte aligned); they return an [`HbmTensor`].
//! * **Tiles** — [`KernelBuilder::sbuf_tile`] / [`psum_tile`](KernelBuilder::psum_tile)
//!   allocate `[P, free...]` on the current core (first fit, 64-byte aligned;
//!   before NeuronCore-v4 a PSUM tile of at most one 2 KiB bank never
//!   straddles two). [`KernelBuilder::free`] gives the memory back;
//!   a [`TilePool`] rotates over N buffers for double buffering. Running out
//!   of memory is [`BuildError::OutOfSbuf`] / [`BuildError::OutOfPsum`].
//! * **Views** — [`View`]: `rows`/`part`, `cols`, `slice`, `slice_step`, `at`,
//!   `permute`, `transposed` (HBM), `reshape`, `reshape_free`, `bitcast`,
//!   `broadcast_free`. Axis 0 is the partition axis (HBM: the pattern's outer
//!   row axis). A view lowers to an [`Ap`](trainyard_isa::Ap) without copying;
//!   a failing view call is reported by the instruction that uses it.
//! * **Instructions** — one method per [`Op`](trainyard_isa::Op) variant
//!   ([`matmul`](KernelBuilder::matmul), [`copy`](KernelBuilder::copy),
//!   [`dma`](KernelBuilder::dma), ...). Operands are anything that is
//!   [`AsAp`]: tiles, tensors, views, raw patterns. Each returns the new
//!   [`InstId`](trainyard_isa::InstId) or a [`BuildError`] naming the
//!   instruction and operand. `dma` picks the next queue of a small rotation
//!   (default queues 0..4); `dma_on` names one.
//! * **Dependencies** — computed as each instruction is appended from the
//!   byte footprints of its operands: RAW, WAR and WAW against earlier
//!   instructions on the same memory (SBUF/PSUM per core, HBM per chip), with
//!   an exact test for interleaved strided patterns, and with dependencies
//!   dropped when in-order issue on one queue or another dependency already
//!   implies them. Because they follow addresses, freeing a tile and reusing
//!   its memory is always safe (views of the freed tile are refused). The
//!   method is described in the `deps` module.
//! * **Finishing** — [`KernelBuilder::finish`] runs `trainyard_isa::validate`
//!   on the program and returns it; [`BuildError::Invalid`] carries the rule
//!   broken.
//!
//! # Example
//!
//! ```
//! use trainyard_arch::{ChipSpec, DType};
//! use trainyard_isa::ActFn;
//! use trainyard_kernels::KernelBuilder;
//!
//! let chip = ChipSpec::by_name("trn2")?;
//! let mut kb = KernelBuilder::new("relu", &chip);
//! let x = kb.hbm_input("x", &[256, 64], DType::Bf16)?;
//! let y = kb.hbm_output("y", &[256, 64], DType::Bf16)?;
//! let mut pool = kb.sbuf_pool(&[128, 64], DType::Bf16, 2)?;
//! for r in (0..256).step_by(128) {
//!     let t = pool.next();
//!     kb.dma(&t, x.rows(r..r + 128))?;
//!     kb.activation(ActFn::Relu, &t, &t, 1.0, None, None)?;
//!     kb.dma(y.rows(r..r + 128), &t)?;
//! }
//! let program = kb.finish()?;
//! // The activation waits for its load; each store waits for its activation.
//! assert_eq!(program.insts[1].deps, vec![trainyard_isa::InstId(0)]);
//! assert_eq!(program.insts[2].deps, vec![trainyard_isa::InstId(1)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The bundled demo kernel is [`demo::matmul_demo`].
#![deny(missing_docs)]

mod alloc;
mod builder;
#[cfg(test)]
mod check;
pub mod demo;
mod deps;
mod error;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod insts;
pub mod library;
mod view;

pub use alloc::ALIGN;
pub use builder::{HbmTensor, KernelBuilder, Tile, TilePool, DEFAULT_DMA_QUEUES};
pub use error::BuildError;
pub use insts::{Scalar, Stage};
pub use view::{AsAp, View};
