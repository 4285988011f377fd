//! `embedding`: rows of a table gathered by token id with indirect DMA.

use trainyard_arch::{ChipSpec, DType, SplitMix64};

use trainyard_isa::TensorKind;

use super::{bound, check_args, core_share, kernel_err, sig, Queues};
use crate::builder::KernelBuilder;
use crate::error::BuildError;
use crate::library::{self, Bindings, Built, Cost, HostTensors, Kernel, KernelArgs, TensorSig, Tolerance};

/// Bytes per partition of one gathered tile; longer rows are gathered in
/// column chunks of this size (each partition's chunk stays one ≥ 2 KiB
/// descriptor for rows that long).
const CHUNK_BYTES: usize = 16 * 1024;

/// Buffers per pool: one block's ids load, its gathers and its stores overlap
/// with the neighbouring blocks'.
const BUFS: usize = 3;

/// `y[t, :] = table[ids[t], :]`: shape `T,V,D` (tokens, vocabulary, dim).
///
/// Tiling: tokens in blocks of 128, one per partition. Each block loads its
/// ids into a `[128, 1]` i32 tile, gathers the rows with `dma_gather` (one
/// descriptor per row, straight from HBM into SBUF; rows wider than 16 KiB
/// are gathered in column chunks) and stores them. The work is DMA only:
/// id loads, gathers and stores run on disjoint queue sets so each kind
/// streams ahead of the others, and the blocks are split over the cores.
/// An id outside `[0, V)` is a runtime fault of the gather
/// (`SimError::GatherIndex`), as on the device (`oob_mode` error).
pub struct Embedding;

/// The shape `T,V,D`, with V small enough for i32 ids.
fn dims(args: &KernelArgs) -> Result<[usize; 3], BuildError> {
    let [t, v, d] = args.dims::<3>("embedding", "T,V,D")?;
    if i32::try_from(v).is_err() {
        return Err(kernel_err("embedding", format!("V = {v} rows cannot be numbered by i32 ids")));
    }
    Ok([t, v, d])
}

impl Kernel for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn family(&self) -> &'static str {
        "misc"
    }
    fn summary(&self) -> &'static str {
        "y[t,:] = table[ids[t],:] by indirect DMA (inputs ids [T] i32, table [V,D]; output y [T,D])"
    }
    fn shape_help(&self) -> &'static str {
        "T,V,D"
    }
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::Bf16, DType::F16, DType::F8E4M3, DType::F8E5M2]
    }
    fn default_shape(&self) -> Vec<usize> {
        vec![256, 1000, 128]
    }

    fn signature(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Vec<TensorSig>, BuildError> {
        check_args(self, chip, args)?;
        let [t, v, d] = dims(args)?;
        Ok(vec![
            sig("ids", TensorKind::Input, &[t], DType::I32),
            sig("table", TensorKind::Input, &[v, d], args.dtype),
            sig("y", TensorKind::Output, &[t, d], args.dtype),
        ])
    }

    fn emit(&self, kb: &mut KernelBuilder, args: &KernelArgs, io: &Bindings) -> Result<Cost, BuildError> {
        library::check_bindings(self, kb.chip(), args, io)?;
        let [t, _, d] = dims(args)?;
        let dtype = args.dtype;
        let name = self.name();
        let (ids, table, y) = (bound(name, io, "ids")?, bound(name, io, "table")?, bound(name, io, "y")?);
        let ids_col = ids.reshape(&[t, 1]);

        let parts = kb.chip().core.sbuf.partitions as usize;
        let chunk = (CHUNK_BYTES / dtype.size()).min(d);
        let blocks = t.div_ceil(parts);
        let cores = args.cores as usize;
        let home = kb.current_core();
        for c in 0..cores {
            let share = core_share(blocks, cores, c);
            if share.is_empty() {
                continue;
            }
            kb.core(c as u16)?;
            let mut id_pool = kb.sbuf_pool(&[parts, 1], DType::I32, BUFS)?;
            let mut row_pool = kb.sbuf_pool(&[parts, chunk], dtype, BUFS)?;
            let (mut loads, mut gathers, mut stores) =
                (Queues::new(&[0, 1]), Queues::new(&[2, 3, 4, 5]), Queues::new(&[6, 7, 8, 9]));
            for b in share {
                let t0 = b * parts;
                let p = parts.min(t - t0);
                let idx = id_pool.next().part(0..p);
                kb.dma_on(loads.next(), &idx, ids_col.rows(t0..t0 + p))?;
                for d0 in (0..d).step_by(chunk) {
                    let dn = chunk.min(d - d0);
                    let rows = row_pool.next().part(0..p).cols(0..dn);
                    kb.dma_gather_on(gathers.next(), &rows, table.cols(d0..d0 + dn), &idx)?;
                    kb.dma_on(stores.next(), y.rows(t0..t0 + p).cols(d0..d0 + dn), &rows)?;
                }
            }
            kb.free_pool(row_pool)?;
            kb.free_pool(id_pool)?;
        }
        kb.core(home)?;
        let row_bytes = (d * dtype.size()) as u64;
        Ok(Cost {
            flops: 0,
            // The ids, the T gathered rows (not the whole table) and y.
            bytes_hbm: t as u64 * (4 + 2 * row_bytes),
            peak_dtype: None,
        })
    }

    fn build(&self, chip: &ChipSpec, args: &KernelArgs) -> Result<Built, BuildError> {
        library::standalone(self, chip, args)
    }

    fn reference(&self, args: &KernelArgs, inputs: &HostTensors) -> Result<HostTensors, BuildError> {
        let [t, v, d] = dims(args)?;
        let missing = |n: &str| kernel_err(self.name(), format!("reference: input `{n}` missing"));
        let (_, ids) = inputs.get("ids").ok_or_else(|| missing("ids"))?;
        let (_, table) = inputs.get("table").ok_or_else(|| missing("table"))?;
        if ids.len() != t || table.len() != v * d {
            return Err(kernel_err(self.name(), "reference: input sizes do not match the shape".into()));
        }
        let mut y = Vec::with_capacity(t * d);
        for (i, &id) in ids.iter().enumerate() {
            if !(id >= 0.0 && (id as usize) < v) {
                return Err(kernel_err(self.name(), format!("reference: ids[{i}] = {id} is outside 0..{v}")));
            }
            let row = id as usize * d;
            y.extend_from_slice(&table[row..row + d]);
        }
        Ok(HostTensors::from([("y".to_string(), (vec![t, d], y))]))
    }

    /// A gather copies bits: the result must be exact.
    fn tolerance(&self, _args: &KernelArgs) -> Tolerance {
        Tolerance { atol: 0.0, rtol: 0.0 }
    }

    /// Ids uniform in `[0, V)`; the table keeps the default values.
    fn input_values(&self, args: &KernelArgs, name: &str, shape: &[usize], seed: u64) -> Option<Vec<f64>> {
        let v = *args.shape.get(1)?;
        (name == "ids").then(|| {
            let mut rng = SplitMix64::new(seed);
            (0..shape.iter().product::<usize>()).map(|_| (rng.next_u64() % v.max(1) as u64) as f64).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{run_kernel, HarnessError};
    use crate::library::build;
    use proptest::prelude::*;
    use trainyard_isa::{Op, TensorKind};
    use trainyard_runtime::{HostTensor, RuntimeError, Session};
    use trainyard_sim::{SimError, SimOptions};

    fn chip() -> ChipSpec {
        ChipSpec::by_name("trn2").unwrap()
    }

    fn check(shape: &[usize], dtype: DType, cores: u16) {
        let mut args = KernelArgs::new(shape, dtype);
        args.cores = cores;
        let run = run_kernel(&Embedding, &chip(), &args, SimOptions::default(), 7).unwrap();
        let report = run.check.unwrap();
        assert!(report.passed, "{shape:?} {dtype} cores={cores}: {report:?}");
    }

    #[test]
    fn odd_token_counts_and_vocabularies() {
        for &t in &[1, 129, 300] {
            for &v in &[1, 1000] {
                check(&[t, v, 24], DType::Bf16, 1);
            }
        }
    }

    #[test]
    fn every_dtype_and_two_cores() {
        for dtype in Embedding.dtypes() {
            check(&[130, 50, 40], *dtype, 2);
        }
    }

    #[test]
    fn long_rows_are_gathered_in_chunks() {
        // 9000 f32 = 36 KiB per row: three column chunks per block.
        let args = KernelArgs::new(&[3, 5, 9000], DType::F32);
        let built = build(&Embedding, &chip(), &args).unwrap();
        let gathers = built.program.insts.iter().filter(|i| matches!(i.op, Op::DmaGather { .. })).count();
        assert_eq!(gathers, 3);
        check(&[3, 5, 9000], DType::F32, 1);
    }

    #[test]
    fn ids_are_in_range_and_seeded() {
        let args = KernelArgs::new(&[300, 17, 8], DType::F32);
        let a = Embedding.input_values(&args, "ids", &[300], 1).unwrap();
        assert!(a.iter().all(|&i| (0.0..17.0).contains(&i) && i.fract() == 0.0));
        assert_eq!(a, Embedding.input_values(&args, "ids", &[300], 1).unwrap());
        assert_ne!(a, Embedding.input_values(&args, "ids", &[300], 2).unwrap());
        assert!(Embedding.input_values(&args, "table", &[17, 8], 1).is_none());
    }

    #[test]
    fn out_of_range_id_is_a_runtime_fault() {
        let chip = chip();
        let (t, v, d) = (130usize, 10usize, 8usize);
        let built = build(&Embedding, &chip, &KernelArgs::new(&[t, v, d], DType::F32)).unwrap();
        for bad in [v as f32, -1.0] {
            let mut session = Session::new(&chip, &built.program, SimOptions::default()).unwrap();
            let mut ids: Vec<f32> = (0..t).map(|i| (i % v) as f32).collect();
            ids[129] = bad;
            session.bind("ids", &HostTensor::from_f32(vec![t as u64], DType::I32, &ids)).unwrap();
            let table: Vec<f32> = (0..v * d).map(|i| i as f32).collect();
            session.bind("table", &HostTensor::from_f32(vec![v as u64, d as u64], DType::F32, &table)).unwrap();
            match session.run() {
                // Token 129 is partition 1 of the second block.
                Err(RuntimeError::Sim(SimError::GatherIndex { partition, index, rows, .. })) => {
                    assert_eq!((partition, index, rows), (1, bad as i64, v as u32));
                }
                other => panic!("expected a gather index fault, got {:?}", other.map(|p| p.total_ns)),
            }
        }
    }

    #[test]
    fn reference_refuses_bad_ids() {
        let args = KernelArgs::new(&[2, 3, 1], DType::F32);
        let inputs = HostTensors::from([
            ("ids".to_string(), (vec![2], vec![0.0, 3.0])),
            ("table".to_string(), (vec![3, 1], vec![1.0, 2.0, 3.0])),
        ]);
        let err = Embedding.reference(&args, &inputs).unwrap_err().to_string();
        assert!(err.contains("ids[1] = 3"), "{err}");
    }

    #[test]
    fn argument_errors() {
        let chip = chip();
        for (shape, dtype, want) in [
            (vec![4, 0, 8], DType::F32, "positive"),
            (vec![4, 8], DType::F32, "T,V,D"),
            (vec![4, 8, 8], DType::I32, "not supported"),
        ] {
            let err = build(&Embedding, &chip, &KernelArgs::new(&shape, dtype)).unwrap_err().to_string();
            assert!(err.contains(want), "{shape:?}: {err}");
        }
        let args = KernelArgs::new(&[1, 1, 1], DType::F32).with("k", "1");
        let r = run_kernel(&Embedding, &chip, &args, SimOptions::default(), 0);
        assert!(matches!(r, Err(HarnessError::Build(BuildError::Kernel { .. }))));
    }

    #[test]
    fn declares_its_tensors() {
        let built = build(&Embedding, &chip(), &KernelArgs::new(&[5, 7, 3], DType::Bf16)).unwrap();
        let decl: Vec<(&str, TensorKind, DType, Vec<u64>)> =
            built.program.tensors.iter().map(|t| (t.name.as_str(), t.kind, t.dtype, t.shape.clone())).collect();
        assert_eq!(
            decl,
            [
                ("ids", TensorKind::Input, DType::I32, vec![5]),
                ("table", TensorKind::Input, DType::Bf16, vec![7, 3]),
                ("y", TensorKind::Output, DType::Bf16, vec![5, 3]),
            ]
        );
        assert_eq!(built.bytes_hbm, 5 * (4 + 2 * 6));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn random_shapes_match_the_reference(t in 1usize..300, v in 1usize..200, d in 1usize..70, cores in 1u16..3) {
            let mut args = KernelArgs::new(&[t, v, d], DType::F16);
            args.cores = cores;
            let run = run_kernel(&Embedding, &chip(), &args, SimOptions::default(), t as u64).unwrap();
            let report = run.check.unwrap();
            prop_assert!(report.passed, "{:?}", report);
        }
    }
}
