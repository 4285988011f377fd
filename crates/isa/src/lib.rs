//! `trainyard-isa`: what the hardware understands.
//!
//! * [`Ap`] — an access pattern: memory space, partitions, byte offset, up to
//!   four `(stride, size)` free dimensions and a dtype (HW-ISA-AP-FREE).
//! * [`Op`] / [`Inst`] — the instructions of the Tensor, Vector, Scalar and
//!   GpSimd engines and of the DMA queues, each with the ids of the
//!   instructions it waits for (the semaphores of the real device).
//! * [`Program`] — HBM tensor declarations plus instructions; a text form
//!   ([`Program::to_text`] / [`Program::parse`], grammar in `docs/isa.md`) and a
//!   compact versioned binary form ([`Program::to_bytes`] / [`Program::from_bytes`]).
//! * [`validate`] — checks a program against a [`trainyard_arch::ChipSpec`].
//!
//! ```
//! use trainyard_isa::{Ap, Space};
//! use trainyard_arch::DType;
//! let tile = Ap::sbuf(0, 128, 0, &[512], DType::Bf16);
//! assert_eq!(tile.elements(), 128 * 512);
//! assert_eq!(tile.free_size(), 512);
//! ```
#![deny(missing_docs)]

mod ap;
mod binary;
mod inst;
mod ops;
mod program;
mod text;
mod validate;

pub use ap::*;
pub use binary::*;
pub use inst::*;
pub use ops::*;
pub use program::*;
pub use text::*;
pub use validate::*;
