//! `trainyard-runtime`: run a program on one simulated chip.
//!
//! * [`Session`] — wraps the simulator: bind inputs from host tensors, `.npy`
//!   or `.safetensors` files (converting dtypes only by the rules in
//!   [`Session::bind`], each conversion recorded in [`Session::notes`]), run,
//!   read outputs, write them all-or-nothing as `.npy`.
//! * [`Profile`] — total time, cycles, TFLOPS, per-engine and per-DMA-queue
//!   busy time and utilization, the critical path; JSON or a readable table.
//! * [`write_trace`] — a Perfetto / Chrome trace with one track per engine and
//!   DMA queue.
//! * [`read_npy`] / [`write_npy`] / [`read_safetensors`] — host tensor files.
//!
//! ```
//! use trainyard_arch::{ChipSpec, DType};
//! use trainyard_isa::{Ap, Inst, Op, Program, TensorDecl, TensorKind};
//! use trainyard_runtime::{HostTensor, Session};
//!
//! let chip = ChipSpec::by_name("trn2").unwrap();
//! let mut p = Program::new("copy");
//! p.tensors.push(TensorDecl { name: "x".into(), kind: TensorKind::Input, dtype: DType::F32, shape: vec![4, 8], offset: 0 });
//! p.tensors.push(TensorDecl { name: "y".into(), kind: TensorKind::Output, dtype: DType::F32, shape: vec![4, 8], offset: 128 });
//! let load = p.push(Inst::new(Op::DmaCopy { queue: 0, dst: Ap::sbuf(0, 4, 0, &[8], DType::F32), src: Ap::hbm(0, 4, &[8], DType::F32) }));
//! let mut store = Inst::new(Op::DmaCopy { queue: 1, dst: Ap::hbm(128, 4, &[8], DType::F32), src: Ap::sbuf(0, 4, 0, &[8], DType::F32) });
//! store.deps.push(load);
//! p.push(store);
//!
//! let mut s = Session::new(&chip, &p, Default::default()).unwrap();
//! let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
//! s.bind("x", &HostTensor::from_f32(vec![4, 8], DType::F32, &x)).unwrap();
//! let profile = s.run().unwrap();
//! assert_eq!(s.output("y").unwrap().to_f32(), x);
//! assert!(profile.total_ns > 0.0 && profile.dma.bytes == 256);
//! ```
#![deny(missing_docs)]

mod error;
mod fsutil;
mod npy;
mod profile;
mod session;
mod st;
mod tensor;
#[cfg(test)]
mod testutil;
mod trace;

pub use error::RuntimeError;
pub use npy::{read_npy, write_npy};
pub use profile::{
    unit_key, CriticalStep, DmaProfile, EngineProfile, LinkProfile, Profile, QueueProfile, CRITICAL_PATH_CAP, WAIT_KEY,
};
pub use session::{output_file_name, Session};
pub use st::read_safetensors;
pub use tensor::HostTensor;
pub use trace::{trace_json, try_trace_json, write_trace};
pub use trainyard_sim::{Mode, RunResult, SimOptions};
