//! `trainyard-arch`: what the hardware is.
//!
//! * [`DType`] — the element types of a NeuronCore-class device and their
//!   bit-exact conversions from `f32` ([`DType::encode`], [`DType::decode`]) with
//!   round-to-nearest-even or seeded stochastic rounding ([`Rounding`]).
//! * [`ChipSpec`] — engines, clocks, memories, DMA, links, peaks, instance
//!   prices and power, loaded and validated from `chips/*.toml`.
//! * [`SystemSpec`] / [`SystemLayout`] — multi-chip systems (torus, ring,
//!   switch), their links and routes; [`ChipSpec::with_chips`] makes a spec
//!   that spans several chips.
//! * [`GpuSpec`] — GPU comparison points (peaks, HBM, NVLink, TDP, prices and
//!   measured roofline efficiencies) from `chips/{a100,h100,h200,b200}.toml`.
//!
//! ```
//! use trainyard_arch::{DType, Rounding};
//! let bits = DType::Bf16.encode(1.0 + 1.0 / 256.0, Rounding::NearestEven);
//! assert_eq!(DType::Bf16.decode(bits), 1.0); // ties go to even
//! ```
#![deny(missing_docs)]

mod chip;
mod dtype;
mod gpu;
mod minifloat;
mod rng;
mod system;

pub use chip::*;
pub use dtype::*;
pub use gpu::*;
pub use rng::SplitMix64;
pub use system::*;
