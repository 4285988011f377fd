//! The bundled demo kernel: a tiled matmul.

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{ActFn, Engine, Program};

use crate::builder::KernelBuilder;
use crate::error::BuildError;

/// PSUM buffers: one block accumulates while the previous one is copied out.
const PSUM_BUFS: usize = 2;

/// `c[m, n] (f32) = a[m, k] · b[k, n]`, with `a` given transposed in HBM as
/// `at[k, m]` so that its tiles load straight into the stationary operand.
///
/// Tiling: K and M by the PE array (128), N by the moving free size (512 on
/// trn1/trn2, capped so two f32 PSUM buffers fit). Loads are double-buffered
/// through tile pools; each output block accumulates over K in PSUM
/// (`start` on the first K tile, `stop` on the last), is copied to SBUF by the
/// Vector and Scalar engines in turn, and is stored by DMA. Edge tiles use
/// partial views, so no size needs to be a multiple of 128.
pub fn matmul_demo(chip: &ChipSpec, m: usize, k: usize, n: usize, dtype: DType) -> Result<Program, BuildError> {
    let mut kb = KernelBuilder::new("matmul", chip);
    let at = kb.hbm_input("at", &[k, m], dtype)?;
    let b = kb.hbm_input("b", &[k, n], dtype)?;
    let c = kb.hbm_output("c", &[m, n], DType::F32)?;

    let core = &chip.core;
    let kt = core.tensor.rows.min(core.sbuf.partitions) as usize;
    let mt = core.tensor.cols.min(core.psum.partitions) as usize;
    let nt = (core.tensor.moving_fmax as usize).min(core.psum.bytes_per_partition as usize / 4 / PSUM_BUFS);
    let mut a_pool = kb.sbuf_pool(&[kt, mt], dtype, 2)?;
    let mut b_pool = kb.sbuf_pool(&[kt, nt], dtype, 2)?;
    let mut ps_pool = kb.psum_pool(&[mt, nt], DType::F32, PSUM_BUFS)?;
    let mut out_pool = kb.sbuf_pool(&[mt, nt], DType::F32, 2)?;

    let k_tiles = k.div_ceil(kt);
    let mut block = 0usize;
    for m0 in (0..m).step_by(mt) {
        let ms = mt.min(m - m0);
        for n0 in (0..n).step_by(nt) {
            let ns = nt.min(n - n0);
            let ps = ps_pool.next().part(0..ms).cols(0..ns);
            for ki in 0..k_tiles {
                let (k0, ks) = (ki * kt, kt.min(k - ki * kt));
                let a_t = a_pool.next().part(0..ks).cols(0..ms);
                kb.dma(&a_t, at.rows(k0..k0 + ks).cols(m0..m0 + ms))?;
                let b_t = b_pool.next().part(0..ks).cols(0..ns);
                kb.dma(&b_t, b.rows(k0..k0 + ks).cols(n0..n0 + ns))?;
                kb.matmul(&ps, &a_t, &b_t, ki == 0, ki + 1 == k_tiles)?;
            }
            let out = out_pool.next().part(0..ms).cols(0..ns);
            if block.is_multiple_of(2) {
                kb.copy(Engine::Vector, &out, &ps)?;
            } else if chip.generation >= 3 {
                kb.copy(Engine::Scalar, &out, &ps)?;
            } else {
                // NeuronCore-v2 ScalarE copies through an activation (HW-ISA-COPY).
                kb.activation(ActFn::Identity, &out, &ps, 1.0, None, None)?;
            }
            kb.dma(c.rows(m0..m0 + ms).cols(n0..n0 + ns), &out)?;
            block += 1;
        }
    }
    kb.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::assert_race_free;
    use trainyard_isa::Op;

    #[test]
    fn odd_shapes_build_race_free_on_every_chip() {
        for chip in ChipSpec::bundled().unwrap() {
            let p = matmul_demo(&chip, 130, 200, 70, DType::Bf16).unwrap();
            let matmuls: Vec<&Op> =
                p.insts.iter().map(|i| &i.op).filter(|op| matches!(op, Op::MatMul { .. })).collect();
            // M: 128 + 2, K: 128 + 72, N: one block.
            assert_eq!(matmuls.len(), 4, "{}", chip.name);
            let flags: Vec<(bool, bool)> = matmuls
                .iter()
                .map(|op| match op {
                    Op::MatMul { start, stop, .. } => (*start, *stop),
                    _ => unreachable!(),
                })
                .collect();
            assert_eq!(flags, [(true, false), (false, true), (true, false), (false, true)]);
            assert_race_free(&p);
            assert_eq!(p.tensor("c").unwrap().shape, vec![130, 70]);
        }
    }

    #[test]
    fn every_output_element_is_stored_once() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let (m, n) = (300, 1100);
        let p = matmul_demo(&chip, m, 129, n, DType::F32).unwrap();
        let c = p.tensor("c").unwrap().clone();
        let mut hits = vec![0u8; m * n];
        for inst in &p.insts {
            if let Op::DmaCopy { dst, .. } = &inst.op {
                if dst.space != trainyard_isa::Space::Hbm {
                    continue;
                }
                for r in 0..dst.partitions as i64 {
                    for o in dst.free_offsets() {
                        let byte = dst.offset as i64 + (r * dst.partition_stride + o) * 4 - c.offset as i64;
                        hits[(byte / 4) as usize] += 1;
                    }
                }
            }
        }
        assert!(hits.iter().all(|&h| h == 1));
    }

    #[test]
    fn zero_sizes_are_errors() {
        let chip = ChipSpec::by_name("trn1").unwrap();
        assert!(matches!(matmul_demo(&chip, 0, 4, 4, DType::Bf16), Err(BuildError::BadShape { .. })));
    }

    #[test]
    fn thousands_of_instructions_build_fast() {
        let chip = ChipSpec::by_name("trn2").unwrap();
        let t = std::time::Instant::now();
        let p = matmul_demo(&chip, 2048, 2048, 4096, DType::Bf16).unwrap();
        let took = t.elapsed();
        assert!(p.insts.len() > 4000, "{}", p.insts.len());
        let deps: usize = p.insts.iter().map(|i| i.deps.len()).sum();
        eprintln!("{} instructions, {deps} deps, built in {took:?}", p.insts.len());
        // Generous for debug builds on a loaded machine; typically a few ms.
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
    }
}
