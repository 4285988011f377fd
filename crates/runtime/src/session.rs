//! A session: one program on one simulated chip, its bound inputs, its run
//! and its outputs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use trainyard_arch::{ChipSpec, SplitMix64};
use trainyard_isa::{Program, TensorDecl, TensorKind};
use trainyard_sim::{Mode, RunResult, SimOptions, Simulator};

use crate::fsutil::temp_path;
use crate::npy::{native_descr, npy_bytes, read_npy_raw};
use crate::st::read_safetensors_one;
use crate::tensor::{convert, encode_f64, ElemType, HostTensor, RawArray};
use crate::{Profile, RuntimeError};

/// One program on one simulated chip.
///
/// Bind every input ([`Session::bind`], [`Session::bind_file`] or
/// [`Session::bind_defaults`]), [`Session::run`], then read results with
/// [`Session::output`] / [`Session::write_outputs`]. Every conversion applied
/// to host data is recorded in [`Session::notes`]; nothing is changed silently.
pub struct Session<'p> {
    sim: Simulator<'p>,
    program: &'p Program,
    chip: ChipSpec,
    mode: Mode,
    bound: BTreeSet<String>,
    notes: Vec<String>,
    result: Option<RunResult>,
}

impl<'p> Session<'p> {
    /// Validates `program` for `chip` and prepares the simulator.
    pub fn new(chip: &ChipSpec, program: &'p Program, opts: SimOptions) -> Result<Self, RuntimeError> {
        let mode = opts.mode;
        let sim = Simulator::new(chip, program, opts)?;
        let mut notes = Vec::new();
        for t in program.tensors.iter().filter(|t| t.kind == TensorKind::Output) {
            if native_descr(t.dtype).is_none() {
                notes.push(format!(
                    "output `{}`: {} has no numpy dtype; it is saved as float32 npy (exact widening)",
                    t.name, t.dtype
                ));
            }
            let file = output_file_name(&t.name);
            if file != format!("{}.npy", t.name) {
                notes.push(format!("output `{}` is saved as `{file}` (unsafe file-name characters escaped)", t.name));
            }
        }
        Ok(Session { sim, program, chip: chip.clone(), mode, bound: BTreeSet::new(), notes, result: None })
    }

    /// The program.
    pub fn program(&self) -> &'p Program {
        self.program
    }

    /// The chip.
    pub fn chip(&self) -> &ChipSpec {
        &self.chip
    }

    /// Functional or timed only.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The input tensors of the program, in declaration order.
    pub fn inputs(&self) -> Vec<&'p TensorDecl> {
        self.program.tensors.iter().filter(|t| t.kind == TensorKind::Input).collect()
    }

    fn input(&self, name: &str) -> Result<&'p TensorDecl, RuntimeError> {
        let program = self.program;
        let t = program.tensor(name).ok_or_else(|| RuntimeError::UnknownTensor {
            name: name.to_string(),
            program: program.name.clone(),
            inputs: names_or_none(self.inputs().iter().map(|t| t.name.as_str())),
        })?;
        if t.kind != TensorKind::Input {
            return Err(RuntimeError::NotAnInput { name: name.to_string(), kind: t.kind.name().to_string() });
        }
        Ok(t)
    }

    /// Binds host data to input `name`. The shape must equal the declared
    /// shape; a float tensor of another float dtype is rounded to nearest even
    /// and an integer tensor of another integer dtype converted exactly (an
    /// error names the first value out of range), each recorded in the notes;
    /// float ↔ integer is refused.
    pub fn bind(&mut self, name: &str, t: &HostTensor) -> Result<(), RuntimeError> {
        t.check(name)?;
        self.bind_raw(name, ElemType::Dev(t.dtype), &t.shape, &t.data, "host tensor")
    }

    /// Binds input `name` from a file: an `.npy` file, or a `.safetensors`
    /// file in which the tensor called `name` is taken.
    pub fn bind_file(&mut self, name: &str, path: &Path) -> Result<(), RuntimeError> {
        self.bind_file_key(name, path, name)
    }

    /// Binds input `name` from a file; for `.safetensors`, tensor `key` of the
    /// file is taken (ignored for `.npy`).
    pub fn bind_file_key(&mut self, name: &str, path: &Path, key: &str) -> Result<(), RuntimeError> {
        // Check the target first so that a typo fails before a large read.
        self.input(name)?;
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let (raw, origin): (RawArray, String) = match ext.as_str() {
            "npy" => (read_npy_raw(path)?, "npy".into()),
            "safetensors" => (read_safetensors_one(path, key)?, format!("safetensors `{key}`")),
            _ => return Err(RuntimeError::UnknownFormat { path: path.to_path_buf() }),
        };
        let origin = format!("{} {origin} {}", raw.elem.name(), path.display());
        self.bind_raw(name, raw.elem, &raw.shape, &raw.data, &origin)
    }

    fn bind_raw(
        &mut self,
        name: &str,
        elem: ElemType,
        shape: &[u64],
        data: &[u8],
        origin: &str,
    ) -> Result<(), RuntimeError> {
        let decl = self.input(name)?;
        let origin = if origin == "host tensor" { format!("{} host tensor", elem.name()) } else { origin.to_string() };
        if decl.shape != shape {
            return Err(RuntimeError::Shape {
                tensor: name.to_string(),
                expected: decl.shape.clone(),
                given: shape.to_vec(),
                source_desc: origin,
            });
        }
        let converted;
        let bytes: &[u8] = if elem == ElemType::Dev(decl.dtype) {
            data
        } else {
            let (out, changed) = convert(name, elem, data, decl.dtype)?;
            let how = if decl.dtype.is_float() {
                if changed == 0 {
                    "round to nearest even; every value exact".to_string()
                } else {
                    format!("round to nearest even; {changed} of {} values changed", decl.elements())
                }
            } else {
                "exact".to_string()
            };
            self.notes.push(format!("input `{name}`: converted {origin} to {} ({how})", decl.dtype));
            converted = out;
            &converted
        };
        if self.mode == Mode::Functional {
            self.sim.write_tensor(name, bytes)?;
        }
        self.bound.insert(name.to_string());
        Ok(())
    }

    /// Fills every unbound input with deterministic pseudo-random values and
    /// returns their names in declaration order.
    ///
    /// Float inputs get values uniform in [-1, 1) rounded to their dtype, from
    /// a [`SplitMix64`] seeded with `seed` and the tensor's name (so binding
    /// one input does not change the others' defaults). Integer inputs are
    /// filled with zeros (valid indices for gathers). In timed-only mode no
    /// values are made; the inputs are only marked bound.
    pub fn bind_defaults(&mut self, seed: u64) -> Result<Vec<String>, RuntimeError> {
        let names = self.unbound_inputs();
        for name in &names {
            let decl = self.input(name)?;
            if self.mode == Mode::Functional {
                let bytes = default_values(decl, seed);
                self.sim.write_tensor(name, &bytes)?;
            }
            let what = if decl.dtype.is_float() {
                format!("pseudo-random values in [-1, 1) (seed {seed})")
            } else {
                "zeros".to_string()
            };
            self.notes.push(format!("input `{name}`: filled with {what}"));
            self.bound.insert(name.clone());
        }
        Ok(names)
    }

    /// Inputs not bound yet, in declaration order.
    pub fn unbound_inputs(&self) -> Vec<String> {
        self.inputs().into_iter().filter(|t| !self.bound.contains(&t.name)).map(|t| t.name.clone()).collect()
    }

    /// Runs the program and returns its profile. In functional mode every
    /// input must be bound (the error names those that are not).
    pub fn run(&mut self) -> Result<Profile, RuntimeError> {
        if self.mode == Mode::Functional {
            let unbound = self.unbound_inputs();
            if !unbound.is_empty() {
                return Err(RuntimeError::UnboundInputs { names: unbound });
            }
        }
        self.result = None;
        let r = self.sim.run()?;
        let profile = Profile::from_run(&self.chip, self.program, self.mode, &r);
        self.result = Some(r);
        Ok(profile)
    }

    /// The result of the last successful run.
    pub fn result(&self) -> Option<&RunResult> {
        self.result.as_ref()
    }

    /// The values of tensor `name` (normally an output) after a successful run.
    pub fn output(&self, name: &str) -> Result<HostTensor, RuntimeError> {
        let t = self.program.tensor(name).ok_or_else(|| RuntimeError::UnknownTensor {
            name: name.to_string(),
            program: self.program.name.clone(),
            inputs: names_or_none(self.inputs().iter().map(|t| t.name.as_str())),
        })?;
        if self.mode == Mode::TimedOnly {
            return Err(RuntimeError::NoValues(name.to_string()));
        }
        if self.result.is_none() {
            return Err(RuntimeError::NotRun);
        }
        let data = self.sim.read_tensor(name)?;
        Ok(HostTensor { dtype: t.dtype, shape: t.shape.clone(), data })
    }

    /// Writes every output tensor as `DIR/NAME.npy` and returns the paths.
    ///
    /// `dir` is created if missing. All or nothing: every file is first written under a temporary name in
    /// `dir`, then all are renamed; on any error the temporary files (and any
    /// already renamed) are removed. bf16 and fp8 outputs are widened exactly
    /// to float32; characters unsafe in file names are escaped as `%XX`.
    pub fn write_outputs(&self, dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
        let outputs: Vec<&TensorDecl> = self.program.tensors.iter().filter(|t| t.kind == TensorKind::Output).collect();
        let mut files = Vec::with_capacity(outputs.len());
        for t in &outputs {
            files.push((dir.join(output_file_name(&t.name)), self.output(&t.name)?));
        }
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
        }
        let meta = std::fs::metadata(dir).map_err(|e| RuntimeError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(RuntimeError::OutputDir { path: dir.to_path_buf(), message: "not a directory".into() });
        }
        let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
        let cleanup = |temps: &[PathBuf]| {
            for p in temps {
                let _ = std::fs::remove_file(p);
            }
        };
        for (path, t) in &files {
            let tmp = temp_path(path);
            temps.push(tmp.clone());
            if let Err(e) = std::fs::write(&tmp, npy_bytes(t)) {
                cleanup(&temps);
                return Err(RuntimeError::io(&tmp, e));
            }
        }
        for (k, ((path, _), tmp)) in files.iter().zip(&temps).enumerate() {
            if let Err(e) = std::fs::rename(tmp, path) {
                let done: Vec<PathBuf> = files[..k].iter().map(|(p, _)| p.clone()).collect();
                cleanup(&done);
                cleanup(&temps[k..]);
                return Err(RuntimeError::io(path, e));
            }
        }
        Ok(files.into_iter().map(|(p, _)| p).collect())
    }

    /// What was converted, widened or filled in, one line each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Writes a Perfetto trace of the last run (see [`crate::write_trace`]).
    pub fn write_trace(&self, path: &Path) -> Result<(), RuntimeError> {
        let r = self.result.as_ref().ok_or(RuntimeError::NotRun)?;
        crate::write_trace(path, &self.chip, self.program, r)
    }
}

fn names_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// `NAME.npy`, with every byte outside `[A-Za-z0-9_.-]` escaped as `%XX` so
/// that names with `/` stay inside the directory and distinct names stay
/// distinct files.
pub fn output_file_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 4);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(".npy");
    s
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The default contents of input `decl` (see [`Session::bind_defaults`]).
fn default_values(decl: &TensorDecl, seed: u64) -> Vec<u8> {
    let size = decl.dtype.size();
    let mut out = vec![0u8; decl.bytes() as usize];
    if decl.dtype.is_float() {
        let mut rng = SplitMix64::new(seed ^ fnv1a(&decl.name));
        for chunk in out.chunks_exact_mut(size) {
            let x = rng.next_f64() * 2.0 - 1.0;
            decl.dtype.store_bits(encode_f64(decl.dtype, x), chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{affine, chip, int_copy, temp_dir};
    use crate::{read_npy, write_npy};
    use trainyard_arch::DType;

    fn x_values() -> Vec<f32> {
        (0..32).map(|i| i as f32 * 0.37 - 5.0).collect()
    }

    #[test]
    fn end_to_end_values_and_profile() {
        let (chip, p) = (chip(), affine());
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        assert_eq!(s.unbound_inputs(), vec!["x"]);
        assert!(s.notes().iter().any(|n| n.contains("`z`") && n.contains("float32")), "{:?}", s.notes());
        let e = s.run().unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
        assert!(matches!(s.output("y"), Err(RuntimeError::NotRun)));

        let x = x_values();
        s.bind("x", &HostTensor::from_f32(vec![4, 8], DType::F32, &x)).unwrap();
        assert!(s.unbound_inputs().is_empty());
        let prof = s.run().unwrap();
        let want: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
        assert_eq!(s.output("y").unwrap().to_f32(), want);
        let z = s.output("z").unwrap();
        assert_eq!(z.dtype, DType::Bf16);
        assert_eq!(z.to_f32(), want.iter().map(|&v| DType::Bf16.round(v)).collect::<Vec<_>>());

        assert_eq!(prof.mode, "functional");
        assert_eq!((prof.chip.as_str(), prof.program.as_str()), ("trn2", "affine"));
        assert!(prof.total_ns > 0.0);
        assert_eq!(prof.instructions, 4);
        assert_eq!(prof.flops, 64);
        assert!(prof.achieved_tflops > 0.0);
        let want_cycles = (prof.total_ns * chip.core.clocks.tensor_ghz).round() as u64;
        assert_eq!(prof.cycles, want_cycles);
        for k in ["core0.tensor", "core0.vector", "core0.scalar", "core0.gpsimd"] {
            let e = &prof.engines[k];
            assert!((0.0..=1.0).contains(&e.utilization), "{k}: {e:?}");
        }
        assert_eq!(prof.engines["core0.vector"].instructions, 1);
        assert!(prof.engines["core0.vector"].busy_ns > 0.0);
        assert_eq!(prof.engines["core0.tensor"].instructions, 0);
        assert_eq!(prof.dma.queues.keys().collect::<Vec<_>>(), ["core0.q0", "core0.q1", "core0.q2"]);
        assert_eq!(prof.dma.bytes, 128 + 128 + 128);
        assert_eq!(prof.dma.queues["core0.q2"].bytes, 128);
        for q in prof.dma.queues.values() {
            assert!((0.0..=1.0).contains(&q.utilization) && q.transfers == 1);
        }
        assert!((prof.dma.gbps - prof.dma.bytes as f64 / prof.total_ns).abs() < 1e-9);
        // The path ends with one of the stores and starts with the load.
        let path = &prof.critical_path;
        assert_eq!(path.first().map(|s| s.inst), Some(0));
        assert!(matches!(path.last().map(|s| s.inst), Some(2 | 3)));
        assert!(!prof.critical_path_truncated);
        let sum: f64 = prof.critical_path_ns_by_unit.values().sum();
        assert!((sum - prof.total_ns).abs() < 1e-6, "{sum} vs {}", prof.total_ns);
        assert!(prof.critical_path_ns_by_unit.contains_key("core0.vector"));
        let table = prof.to_table();
        for needle in ["affine", "core0.vector", "core0.q1", "critical path", "TFLOPS", "GB/s"] {
            assert!(table.contains(needle), "missing {needle} in\n{table}");
        }
        let json = serde_json::to_value(&prof).unwrap();
        assert_eq!(json["engines"]["core0.vector"]["instructions"], 1);
        assert_eq!(json["mode"], "functional");

        // Outputs on disk: y natively, z widened to f32.
        let dir = temp_dir("e2e");
        let files = s.write_outputs(&dir).unwrap();
        assert_eq!(files, vec![dir.join("y.npy"), dir.join("z.npy")]);
        assert_eq!(read_npy(&files[0]).unwrap().to_f32(), want);
        let zf = read_npy(&files[1]).unwrap();
        assert_eq!((zf.dtype, zf.to_f32()), (DType::F32, z.to_f32()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bind_converts_floats_and_notes_it() {
        let (chip, p) = (chip(), affine());
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        let dir = temp_dir("bindconv");
        let xs = x_values();
        // f64 npy into the f32 tensor: rounded once, noted.
        let path = dir.join("x.npy");
        let f64_bytes: Vec<u8> = xs.iter().flat_map(|&v| (v as f64 + 1e-12).to_le_bytes()).collect();
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 8), }";
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&((dict.len() + 1) as u16).to_le_bytes());
        file.extend_from_slice(dict.as_bytes());
        file.push(b'\n');
        file.extend_from_slice(&f64_bytes);
        std::fs::write(&path, file).unwrap();
        s.bind_file("x", &path).unwrap();
        let note = s.notes().last().unwrap().clone();
        assert!(
            note.contains("input `x`") && note.contains("float64") && note.contains("round to nearest even"),
            "{note}"
        );
        s.run().unwrap();
        assert_eq!(s.output("y").unwrap().to_f32(), xs.iter().map(|v| v * 2.0 + 1.0).collect::<Vec<_>>());

        // bf16 host data widens into f32 exactly, still noted.
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        s.bind("x", &HostTensor::from_f32(vec![4, 8], DType::Bf16, &xs)).unwrap();
        assert!(s.notes().iter().any(|n| n.contains("bfloat16 host tensor to f32") && n.contains("every value exact")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bind_errors_name_what_is_wrong() {
        let (chip, p) = (chip(), affine());
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        let e = s.bind("x", &HostTensor::from_f32(vec![8, 4], DType::F32, &[0.0; 32])).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("[4, 8]") && e.contains("[8, 4]"), "{e}");
        let e = s.bind("x", &HostTensor::from_f32(vec![4, 8], DType::I32, &[0.0; 32])).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("int32") && e.contains("f32"), "{e}");
        let e = s.bind("nope", &HostTensor::from_f32(vec![1], DType::F32, &[0.0])).unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("inputs: x"), "{e}");
        let e = s.bind("y", &HostTensor::from_f32(vec![4, 8], DType::F32, &[0.0; 32])).unwrap_err().to_string();
        assert!(e.contains("`y`") && e.contains("output"), "{e}");
        let short = HostTensor { dtype: DType::F32, shape: vec![4, 8], data: vec![0; 12] };
        assert!(matches!(s.bind("x", &short), Err(RuntimeError::DataSize { .. })));
        let e = s.bind_file("x", Path::new("weights.bin")).unwrap_err().to_string();
        assert!(e.contains("weights.bin") && e.contains(".npy"), "{e}");
        assert_eq!(s.unbound_inputs(), vec!["x"], "a failed bind must not mark the input bound");
        assert!(s.notes().iter().all(|n| !n.starts_with("input")), "{:?}", s.notes());
    }

    #[test]
    fn int_inputs_convert_exactly_or_fail() {
        let (chip, p) = (chip(), int_copy());
        let dir = temp_dir("ints");
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        let mut ok = HostTensor { dtype: DType::I32, shape: vec![2, 4], data: Vec::new() };
        ok.data = [0i32, 1, -2, 3, 32767, -32768, 6, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        s.bind("idx", &ok).unwrap();
        assert!(s.notes().iter().any(|n| n.contains("int32 host tensor to i16 (exact)")), "{:?}", s.notes());
        let mut bad = ok.clone();
        bad.data[20..24].copy_from_slice(&40000i32.to_le_bytes());
        let e = s.bind("idx", &bad).unwrap_err().to_string();
        assert!(e.contains("40000") && e.contains("index 5") && e.contains("i16"), "{e}");

        // Safetensors: `w` is selected by name, bf16 → bf16 is a raw copy.
        let st = dir.join("m.safetensors");
        crate::st::tests::sample_file(&st);
        s.bind_file("w", &st).unwrap();
        let e = s.bind_file_key("w", &st, "b").unwrap_err().to_string();
        assert!(e.contains("[2, 2]") && e.contains("[2]") && e.contains("safetensors"), "{e}");
        s.run().unwrap();
        assert_eq!(
            s.output("out").unwrap().data,
            ok.to_f32().iter().flat_map(|&v| (v as i16).to_le_bytes()).collect::<Vec<_>>()
        );
        // Scratch tensors can be read back, but not bound.
        assert_eq!(s.output("tmp").unwrap().to_f32(), vec![0.0; 4]);
        assert!(matches!(s.bind_file("tmp", &st), Err(RuntimeError::NotAnInput { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_are_seeded_and_in_range() {
        let (chip, p) = (chip(), int_copy());
        let run = |seed| {
            let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
            assert_eq!(s.bind_defaults(seed).unwrap(), vec!["idx", "w"]);
            assert!(s.bind_defaults(seed).unwrap().is_empty());
            s.run().unwrap();
            assert_eq!(s.output("out").unwrap().to_f32(), vec![0.0; 8]);
            default_values(p.tensor("w").unwrap(), seed)
        };
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let t = HostTensor { dtype: DType::Bf16, shape: vec![2, 2], data: a };
        assert!(t.to_f32().iter().all(|v| (-1.0..=1.0).contains(v)), "{:?}", t.to_f32());
    }

    #[test]
    fn timed_only_needs_no_values() {
        let (chip, p) = (chip(), affine());
        let opts = SimOptions { mode: Mode::TimedOnly, ..SimOptions::default() };
        let mut s = Session::new(&chip, &p, opts).unwrap();
        let prof = s.run().unwrap();
        assert_eq!(prof.mode, "timed-only");
        let mut f = Session::new(&chip, &p, SimOptions::default()).unwrap();
        f.bind_defaults(0).unwrap();
        assert_eq!(f.run().unwrap().total_ns, prof.total_ns, "modes must agree on time");
        assert!(matches!(s.output("y"), Err(RuntimeError::NoValues(_))));
        assert!(s.write_outputs(&std::env::temp_dir()).is_err());
    }

    #[test]
    fn write_outputs_is_all_or_nothing() {
        let (chip, p) = (chip(), affine());
        let mut s = Session::new(&chip, &p, SimOptions::default()).unwrap();
        s.bind_defaults(3).unwrap();
        s.run().unwrap();
        let dir = temp_dir("aon");
        // DIR is a file.
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = s.write_outputs(&file).unwrap_err().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
        // The second output cannot be renamed into place (a directory holds its name):
        // the first must not be left behind either.
        std::fs::create_dir(dir.join("z.npy")).unwrap();
        std::fs::write(dir.join("z.npy").join("keep"), b"k").unwrap();
        assert!(s.write_outputs(&dir).is_err());
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["not-a-dir", "z.npy"]);
        std::fs::remove_dir_all(&dir).unwrap();
        // A write_npy through the same path rules.
        let t = HostTensor::from_f32(vec![2], DType::F32, &[1.0, 2.0]);
        assert!(write_npy(&file, &t).is_err());
    }

    #[test]
    fn output_names_stay_in_the_directory() {
        assert_eq!(output_file_name("y"), "y.npy");
        assert_eq!(output_file_name("layers.0/out"), "layers.0%2Fout.npy");
        assert_eq!(output_file_name("a b"), "a%20b.npy");
        assert_ne!(output_file_name("a/b"), output_file_name("a_b"));
    }
}
