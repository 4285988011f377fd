//! One builder method per instruction of `trainyard_isa::Op`. Each resolves
//! its operands, checks what is cheap to check (spaces the engine must use,
//! agreeing shapes), and appends the instruction with its dependencies. The
//! full rule set is the ISA validator's job.

use trainyard_arch::DType;
use trainyard_isa::{ActFn, AluOp, Ap, Engine, InstId, Op, Operand, ScalarStage, Space};

use crate::builder::{KernelBuilder, Tile};
use crate::error::BuildError;
use crate::view::{AsAp, View};

/// A scalar operand of [`KernelBuilder::tensor_scalar`] and
/// [`KernelBuilder::activation`]: an immediate or one value per partition.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// An FP32 immediate.
    Imm(f32),
    /// A `[P, 1]` view, one value per partition, broadcast along the free axes.
    PerPartition(View),
}

impl From<f32> for Scalar {
    fn from(v: f32) -> Scalar {
        Scalar::Imm(v)
    }
}

impl From<View> for Scalar {
    fn from(v: View) -> Scalar {
        Scalar::PerPartition(v)
    }
}

impl From<&View> for Scalar {
    fn from(v: &View) -> Scalar {
        Scalar::PerPartition(v.clone())
    }
}

impl From<&Tile> for Scalar {
    fn from(t: &Tile) -> Scalar {
        Scalar::PerPartition(t.view())
    }
}

impl From<Ap> for Scalar {
    fn from(ap: Ap) -> Scalar {
        Scalar::PerPartition(View::from(ap))
    }
}

/// One stage of [`KernelBuilder::tensor_scalar`]: `x op scalar`, or
/// `scalar op x` when reversed.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The operator.
    pub op: AluOp,
    /// The scalar operand.
    pub scalar: Scalar,
    /// Swap the operand order.
    pub reverse: bool,
}

impl Stage {
    /// `x op scalar`.
    pub fn new(op: AluOp, scalar: impl Into<Scalar>) -> Stage {
        Stage { op, scalar: scalar.into(), reverse: false }
    }

    /// The same stage with the operands swapped (`scalar op x`).
    pub fn reversed(mut self) -> Stage {
        self.reverse = !self.reverse;
        self
    }
}

fn dims_of(ap: &Ap) -> String {
    format!("[{} x {:?}]", ap.partitions, ap.free_shape())
}

impl KernelBuilder {
    fn shape_err(&self, m: &str, message: String) -> BuildError {
        BuildError::Shape { inst: self.here(m), message }
    }

    /// Same partition count and elements per partition.
    fn same_size(&self, m: &str, (na, a): (&str, &Ap), (nb, b): (&str, &Ap)) -> Result<(), BuildError> {
        if a.partitions != b.partitions || a.free_size() != b.free_size() {
            return Err(self.shape_err(m, format!("`{na}` is {} but `{nb}` is {}", dims_of(a), dims_of(b))));
        }
        Ok(())
    }

    fn in_space(&self, m: &str, name: &'static str, ap: &Ap, space: Space) -> Result<(), BuildError> {
        if ap.space != space {
            return Err(BuildError::WrongSpace {
                inst: self.here(m),
                operand: name,
                got: ap.space,
                expected: space.name(),
            });
        }
        Ok(())
    }

    /// A `[P, 1]` per-partition operand matching `p` partitions.
    fn per_partition(&self, m: &str, name: &'static str, v: &impl AsAp, p: u32) -> Result<Ap, BuildError> {
        let ap = self.operand(m, name, v)?;
        if ap.partitions != p || ap.free_size() != 1 {
            return Err(self.shape_err(m, format!("`{name}` must be [{p} x 1], got {}", dims_of(&ap))));
        }
        Ok(ap)
    }

    fn scalar(&self, m: &str, name: &'static str, s: &Scalar, p: u32) -> Result<Operand, BuildError> {
        Ok(match s {
            Scalar::Imm(v) => Operand::Imm(*v),
            Scalar::PerPartition(v) => Operand::PerPartition(self.per_partition(m, name, v, p)?),
        })
    }

    /// `dst[M,N] (+)= stationary[K,M]ᵀ · moving[K,N]` on the Tensor engine
    /// (HW-ISA-MATMUL). `start` overwrites the PSUM region, otherwise the
    /// matmul accumulates into it (and is ordered after the previous writer).
    pub fn matmul(
        &mut self,
        dst: impl AsAp,
        stationary: impl AsAp,
        moving: impl AsAp,
        start: bool,
        stop: bool,
    ) -> Result<InstId, BuildError> {
        const M: &str = "matmul";
        let dst = self.operand(M, "dst", &dst)?;
        let st = self.operand(M, "stationary", &stationary)?;
        let mv = self.operand(M, "moving", &moving)?;
        self.in_space(M, "dst", &dst, Space::Psum)?;
        self.in_space(M, "stationary", &st, Space::Sbuf)?;
        self.in_space(M, "moving", &mv, Space::Sbuf)?;
        let t = &self.chip().core.tensor;
        let (k, mm, n) = (st.partitions, st.free_size(), mv.free_size());
        if mv.partitions != k {
            return Err(self.shape_err(
                M,
                format!("contraction differs: stationary has {k} partitions, moving {}", mv.partitions),
            ));
        }
        if k > t.rows || mm > t.cols as u64 || n > t.moving_fmax as u64 {
            return Err(self.shape_err(
                M,
                format!(
                    "K={k}, M={mm}, N={n} exceed the array (K ≤ {}, M ≤ {}, N ≤ {})",
                    t.rows, t.cols, t.moving_fmax
                ),
            ));
        }
        if dst.partitions as u64 != mm || dst.free_size() != n {
            return Err(self.shape_err(M, format!("dst is {} but stationaryᵀ·moving is [{mm} x {n}]", dims_of(&dst))));
        }
        self.push(Op::MatMul { dst, stationary: st, moving: mv, start, stop })
    }

    /// `dst[F,P] = src[P,F]ᵀ` on the Tensor (SBUF → PSUM) or Vector engine (HW-ISA-TRANSPOSE).
    pub fn transpose(&mut self, engine: Engine, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        const M: &str = "transpose";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if engine == Engine::Tensor {
            self.in_space(M, "dst", &dst, Space::Psum)?;
            self.in_space(M, "src", &src, Space::Sbuf)?;
        }
        if dst.partitions as u64 != src.free_size() || dst.free_size() != src.partitions as u64 {
            return Err(
                self.shape_err(M, format!("dst {} is not the transpose of src {}", dims_of(&dst), dims_of(&src)))
            );
        }
        self.push(Op::Transpose { engine, dst, src })
    }

    /// `dst = in0 op in1` elementwise (HW-ISA-TT).
    pub fn tensor_tensor(
        &mut self,
        engine: Engine,
        op: AluOp,
        dst: impl AsAp,
        in0: impl AsAp,
        in1: impl AsAp,
    ) -> Result<InstId, BuildError> {
        const M: &str = "tensor_tensor";
        let dst = self.operand(M, "dst", &dst)?;
        let in0 = self.operand(M, "in0", &in0)?;
        let in1 = self.operand(M, "in1", &in1)?;
        self.same_size(M, ("dst", &dst), ("in0", &in0))?;
        self.same_size(M, ("dst", &dst), ("in1", &in1))?;
        self.push(Op::TensorTensor { engine, op, dst, in0, in1 })
    }

    /// `dst = (src op0 s0) op1 s1` with immediate or per-partition scalars (HW-ISA-TS).
    pub fn tensor_scalar(
        &mut self,
        engine: Engine,
        dst: impl AsAp,
        src: impl AsAp,
        first: Stage,
        second: Option<Stage>,
    ) -> Result<InstId, BuildError> {
        const M: &str = "tensor_scalar";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        self.same_size(M, ("dst", &dst), ("src", &src))?;
        let p = src.partitions;
        let stage = |s: &Stage, name| -> Result<ScalarStage, BuildError> {
            Ok(ScalarStage { op: s.op, operand: self.scalar(M, name, &s.scalar, p)?, reverse: s.reverse })
        };
        let first = stage(&first, "operand0")?;
        let second = second.as_ref().map(|s| stage(s, "operand1")).transpose()?;
        self.push(Op::TensorScalar { engine, dst, src, first, second })
    }

    /// Reduces the innermost `axes` free dimensions of `src` with `op` (HW-ISA-TREDUCE).
    pub fn tensor_reduce(
        &mut self,
        engine: Engine,
        op: AluOp,
        dst: impl AsAp,
        src: impl AsAp,
        axes: u8,
        negate: bool,
    ) -> Result<InstId, BuildError> {
        const M: &str = "tensor_reduce";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if axes == 0 || axes > src.ndims {
            return Err(self.shape_err(M, format!("axes = {axes}, src has {} free dims", src.ndims)));
        }
        let kept: u64 = src.free_dims()[..(src.ndims - axes) as usize].iter().map(|d| d.size as u64).product();
        if dst.partitions != src.partitions || dst.free_size() != kept {
            return Err(self.shape_err(
                M,
                format!(
                    "dst is {} but reducing {axes} axes of src {} leaves [{} x {kept}]",
                    dims_of(&dst),
                    dims_of(&src),
                    src.partitions
                ),
            ));
        }
        self.push(Op::TensorReduce { engine, op, dst, src, axes, negate })
    }

    /// `dst = func(src · scale + bias)` on the Scalar engine, optionally with
    /// `acc[p] = Σ dst[p, :]` (HW-ISA-ACTIVATION).
    pub fn activation(
        &mut self,
        func: ActFn,
        dst: impl AsAp,
        src: impl AsAp,
        scale: impl Into<Scalar>,
        bias: Option<&dyn AsAp>,
        acc: Option<&dyn AsAp>,
    ) -> Result<InstId, BuildError> {
        const M: &str = "activation";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        self.same_size(M, ("dst", &dst), ("src", &src))?;
        let p = src.partitions;
        let scale = self.scalar(M, "scale", &scale.into(), p)?;
        let bias = bias.map(|b| self.per_partition(M, "bias", &b, p)).transpose()?;
        let acc = acc.map(|a| self.per_partition(M, "acc", &a, p)).transpose()?;
        self.push(Op::Activation { func, dst, src, scale, bias, acc })
    }

    /// `dst = src` with a dtype cast (HW-ISA-COPY).
    pub fn copy(&mut self, engine: Engine, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        const M: &str = "copy";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        self.same_size(M, ("dst", &dst), ("src", &src))?;
        self.push(Op::Copy { engine, dst, src })
    }

    /// `dst = pred != 0 ? on_true : on_false` elementwise (HW-ISA-SELECT).
    pub fn select(
        &mut self,
        engine: Engine,
        dst: impl AsAp,
        pred: impl AsAp,
        on_true: impl AsAp,
        on_false: impl AsAp,
    ) -> Result<InstId, BuildError> {
        const M: &str = "select";
        let dst = self.operand(M, "dst", &dst)?;
        let pred = self.operand(M, "pred", &pred)?;
        let on_true = self.operand(M, "on_true", &on_true)?;
        let on_false = self.operand(M, "on_false", &on_false)?;
        for (n, ap) in [("pred", &pred), ("on_true", &on_true), ("on_false", &on_false)] {
            self.same_size(M, ("dst", &dst), (n, ap))?;
        }
        self.push(Op::Select { engine, dst, pred, on_true, on_false })
    }

    /// `dst[p, i…] = base + p·channel_multiplier + Σ steps[d]·i_d` on GpSimd
    /// (HW-ISA-IOTA); one step per free dim of `dst`.
    pub fn iota(
        &mut self,
        dst: impl AsAp,
        base: i32,
        channel_multiplier: i32,
        steps: &[i32],
    ) -> Result<InstId, BuildError> {
        const M: &str = "iota";
        let dst = self.operand(M, "dst", &dst)?;
        if steps.len() != dst.ndims as usize {
            return Err(self.shape_err(M, format!("{} steps for {} free dims of dst", steps.len(), dst.ndims)));
        }
        let mut s = [0i32; 4];
        s[..steps.len()].copy_from_slice(steps);
        self.push(Op::Iota { dst, base, channel_multiplier, steps: s })
    }

    /// Fills `dst` with `value` (HW-ISA-COPY memset).
    pub fn memset(&mut self, engine: Engine, dst: impl AsAp, value: f64) -> Result<InstId, BuildError> {
        let dst = self.operand("memset", "dst", &dst)?;
        self.push(Op::Memset { engine, dst, value })
    }

    /// `dst[0, f] = op over p of src[p, f]` on GpSimd.
    pub fn partition_reduce(&mut self, op: AluOp, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        const M: &str = "partition_reduce";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if dst.partitions != 1 || dst.free_size() != src.free_size() {
            return Err(self.shape_err(M, format!("dst is {}, expected [1 x {}]", dims_of(&dst), src.free_size())));
        }
        self.push(Op::PartitionReduce { op, dst, src })
    }

    /// `dst[p, f] = src[0, f]` for every partition of `dst`, on GpSimd.
    pub fn partition_broadcast(&mut self, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        const M: &str = "partition_broadcast";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if src.partitions != 1 || dst.free_size() != src.free_size() {
            return Err(self.shape_err(M, format!("src is {}, expected [1 x {}]", dims_of(&src), dst.free_size())));
        }
        self.push(Op::PartitionBroadcast { dst, src })
    }

    /// `dst[i, f] = src[perm[i], f]` on GpSimd (HW-ISA-SHUFFLE).
    pub fn partition_shuffle(&mut self, dst: impl AsAp, src: impl AsAp, perm: &[u8]) -> Result<InstId, BuildError> {
        const M: &str = "partition_shuffle";
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if perm.len() != dst.partitions as usize || dst.free_size() != src.free_size() {
            return Err(self.shape_err(
                M,
                format!("{} permutation entries for dst {} from src {}", perm.len(), dims_of(&dst), dims_of(&src)),
            ));
        }
        if let Some(&bad) = perm.iter().find(|&&p| p as u32 >= src.partitions) {
            return Err(self.shape_err(M, format!("source partition {bad} out of src's {}", src.partitions)));
        }
        self.push(Op::PartitionShuffle { dst, src, perm: perm.to_vec() })
    }

    /// DMA `dst = src` on the next queue of the builder's rotation (HW-ISA-DMACOPY).
    pub fn dma(&mut self, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        let queue = self.next_queue();
        self.dma_on(queue, dst, src)
    }

    /// DMA `dst = src` on DMA queue `queue` of the current core; equal element
    /// counts, casting via FP32 if the dtypes differ.
    pub fn dma_on(&mut self, queue: u8, dst: impl AsAp, src: impl AsAp) -> Result<InstId, BuildError> {
        const M: &str = "dma_copy";
        self.check_queue(queue)?;
        let dst = self.operand(M, "dst", &dst)?;
        let src = self.operand(M, "src", &src)?;
        if dst.elements() != src.elements() {
            return Err(
                self.shape_err(M, format!("dst {} and src {} differ in element count", dims_of(&dst), dims_of(&src)))
            );
        }
        self.push(Op::DmaCopy { queue, dst, src })
    }

    /// Indirect DMA `dst[p, :] = table[index[p], :]` on the next queue of the rotation.
    pub fn dma_gather(&mut self, dst: impl AsAp, table: impl AsAp, index: impl AsAp) -> Result<InstId, BuildError> {
        let queue = self.next_queue();
        self.dma_gather_on(queue, dst, table, index)
    }

    /// Indirect DMA on queue `queue`: `table` is an HBM `[rows, row...]` view,
    /// `index` a `[P, 1]` int32/uint32 tile of row numbers.
    pub fn dma_gather_on(
        &mut self,
        queue: u8,
        dst: impl AsAp,
        table: impl AsAp,
        index: impl AsAp,
    ) -> Result<InstId, BuildError> {
        const M: &str = "dma_gather";
        self.check_queue(queue)?;
        let dst = self.operand(M, "dst", &dst)?;
        let table = self.operand(M, "table", &table)?;
        self.in_space(M, "table", &table, Space::Hbm)?;
        let index = self.per_partition(M, "index", &index, dst.partitions)?;
        if !matches!(index.dtype, DType::I32 | DType::U32) {
            return Err(self.shape_err(M, format!("index must be i32 or u32, got {}", index.dtype.name())));
        }
        if table.free_size() != dst.free_size() {
            return Err(self.shape_err(
                M,
                format!("a table row has {} elements, dst rows {}", table.free_size(), dst.free_size()),
            ));
        }
        self.push(Op::DmaGather { queue, dst, table, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::assert_race_free;
    use proptest::prelude::*;
    use trainyard_arch::ChipSpec;
    use trainyard_isa::{Program, Unit};

    fn builder() -> KernelBuilder {
        KernelBuilder::new("t", &ChipSpec::by_name("trn2").unwrap())
    }

    fn deps(p: &Program, i: InstId) -> Vec<u32> {
        p.insts[i.0 as usize].deps.iter().map(|d| d.0).collect()
    }

    #[test]
    fn raw_war_waw_on_sbuf() {
        let mut kb = builder();
        let x = kb.hbm_input("x", &[128, 64], DType::F32).unwrap();
        let t = kb.sbuf_tile(&[128, 64], DType::F32).unwrap();
        let u = kb.sbuf_tile(&[128, 64], DType::F32).unwrap();
        let load = kb.dma(&t, &x).unwrap();
        let raw = kb.copy(Engine::Vector, &u, &t).unwrap();
        let war = kb.dma(&t, &x).unwrap();
        let waw = kb.memset(Engine::GpSimd, &u, 0.0).unwrap();
        let p = kb.finish().unwrap();
        assert_eq!(deps(&p, load), [] as [u32; 0]);
        assert_eq!(deps(&p, raw), [load.0]);
        // The WAW on the first load is implied: the copy waited for it.
        assert_eq!(deps(&p, war), [raw.0]);
        assert_eq!(deps(&p, waw), [raw.0]);
        assert_ne!(p.insts[load.0 as usize].op.unit(), p.insts[war.0 as usize].op.unit());
        assert_race_free(&p);
    }

    #[test]
    fn psum_accumulation_chain() {
        let mut kb = builder();
        let a = kb.sbuf_tile(&[128, 128], DType::Bf16).unwrap();
        let b = kb.sbuf_tile(&[128, 512], DType::Bf16).unwrap();
        let ps = kb.psum_tile(&[128, 512], DType::F32).unwrap();
        let out = kb.sbuf_tile(&[128, 512], DType::F32).unwrap();
        let init_a = kb.memset(Engine::Vector, &a, 1.0).unwrap();
        let init_b = kb.memset(Engine::GpSimd, &b, 1.0).unwrap();
        let m0 = kb.matmul(&ps, &a, &b, true, false).unwrap();
        let m1 = kb.matmul(&ps, &a, &b, false, false).unwrap();
        let m2 = kb.matmul(&ps, &a, &b, false, true).unwrap();
        let cp = kb.copy(Engine::Scalar, &out, &ps).unwrap();
        let again = kb.matmul(&ps, &a, &b, true, true).unwrap();
        let p = kb.finish().unwrap();
        assert_eq!(deps(&p, m0), [init_a.0, init_b.0]);
        assert!(deps(&p, m1).is_empty() && deps(&p, m2).is_empty(), "same engine, in order");
        assert_eq!(deps(&p, cp), [m2.0]);
        assert_eq!(deps(&p, again), [cp.0]);
        assert_race_free(&p);
    }

    #[test]
    fn hbm_is_shared_across_cores() {
        let mut kb = builder();
        let h = kb.hbm_scratch("h", &[64, 32], DType::F32).unwrap();
        let t0 = kb.sbuf_tile(&[64, 32], DType::F32).unwrap();
        let store = kb.dma(&h, &t0).unwrap();
        kb.core(1).unwrap();
        let t1 = kb.sbuf_tile(&[64, 32], DType::F32).unwrap();
        assert_eq!(t1.offset(), t0.offset(), "each core has its own SBUF");
        let local = kb.memset(Engine::Vector, &t1, 0.0).unwrap();
        let load = kb.dma(&t1, h.rows(0..64)).unwrap();
        let other_rows = kb.dma(h.rows(0..32), t1.part(0..32)).unwrap();
        let p = kb.finish().unwrap();
        assert!(deps(&p, local).is_empty(), "core 1's SBUF is not core 0's");
        assert_eq!(deps(&p, load), [store.0, local.0]);
        assert_eq!(p.insts[load.0 as usize].core, 1);
        // WAR on load's read of h and WAW on store: the first implies the second.
        assert_eq!(deps(&p, other_rows), [load.0]);
        assert_race_free(&p);
    }

    #[test]
    fn disjoint_and_interleaved_views_are_not_ordered() {
        let mut kb = builder();
        let t = kb.sbuf_tile(&[128, 64], DType::F32).unwrap();
        let u = kb.sbuf_tile(&[128, 64], DType::F32).unwrap();
        let w_t = kb.memset(Engine::Vector, &t, 0.0).unwrap();
        let w_u = kb.memset(Engine::GpSimd, &u, 0.0).unwrap();
        let r_t = kb.copy(Engine::Scalar, t.part(0..64), t.part(64..128)).unwrap();
        let top = kb.memset(Engine::GpSimd, u.part(0..64), 1.0).unwrap();
        let even = kb.memset(Engine::Vector, u.slice_step(1, 0..64, 2), 2.0).unwrap();
        let odd = kb.memset(Engine::GpSimd, u.slice_step(1, 1..64, 2), 3.0).unwrap();
        let all = kb.copy(Engine::Scalar, &t, &u).unwrap();
        let p = kb.finish().unwrap();
        assert_eq!(deps(&p, w_u), [] as [u32; 0]);
        assert_eq!(deps(&p, r_t), [w_t.0]);
        assert_eq!(deps(&p, top), [] as [u32; 0], "same engine as the write of u");
        assert_eq!(deps(&p, even), [top.0]);
        assert_eq!(deps(&p, odd), [] as [u32; 0], "odd columns do not touch the even ones");
        assert_eq!(deps(&p, all), [even.0, odd.0]);
        assert_race_free(&p);
    }

    #[test]
    fn dma_queues_rotate() {
        let mut kb = builder();
        let x = kb.hbm_input("x", &[4, 4], DType::F32).unwrap();
        let t = kb.sbuf_tile(&[4, 4], DType::F32).unwrap();
        for _ in 0..5 {
            kb.dma(&t, &x).unwrap();
        }
        kb.set_dma_queues(&[7]).unwrap();
        kb.dma(&t, &x).unwrap();
        kb.dma_on(9, &t, &x).unwrap();
        let units: Vec<Unit> = kb.insts().iter().map(|i| i.op.unit()).collect();
        let want: Vec<Unit> = [0, 1, 2, 3, 0, 7, 9].into_iter().map(Unit::Dma).collect();
        assert_eq!(units, want);
        assert!(matches!(kb.dma_on(16, &t, &x), Err(BuildError::NoSuchQueue { queue: 16, .. })));
    }

    #[test]
    fn per_partition_scalars_and_gather_are_tracked() {
        let mut kb = builder();
        let table = kb.hbm_input("table", &[1000, 32], DType::Bf16).unwrap();
        let idx = kb.sbuf_tile(&[128, 1], DType::I32).unwrap();
        let rows = kb.sbuf_tile(&[128, 32], DType::Bf16).unwrap();
        let s = kb.sbuf_tile(&[128, 1], DType::F32).unwrap();
        let w_idx = kb.iota(&idx, 0, 7, &[0]).unwrap();
        let w_s = kb.memset(Engine::GpSimd, &s, 0.5).unwrap();
        let g = kb.dma_gather(&rows, &table, &idx).unwrap();
        let ts = kb
            .tensor_scalar(Engine::Vector, &rows, &rows, Stage::new(AluOp::Mul, &s), Some(Stage::new(AluOp::Add, 1.0)))
            .unwrap();
        let act = kb.activation(ActFn::Exp, &rows, &rows, &s, Some(&s), Some(&s)).unwrap();
        let p = kb.finish().unwrap();
        assert_eq!(deps(&p, g), [w_idx.0]);
        assert_eq!(deps(&p, ts), [w_s.0, g.0]);
        assert_eq!(deps(&p, act), [ts.0]);
        assert_race_free(&p);
    }

    #[test]
    fn cheap_errors_name_instruction_and_operand() {
        let mut kb = builder();
        let a = kb.sbuf_tile(&[128, 128], DType::Bf16).unwrap();
        let b = kb.sbuf_tile(&[64, 512], DType::Bf16).unwrap();
        let ps = kb.psum_tile(&[128, 512], DType::F32).unwrap();
        let e = kb.matmul(&ps, &a, &b, true, true).unwrap_err();
        assert!(matches!(e, BuildError::Shape { .. }) && e.to_string().starts_with("matmul %0"), "{e}");
        let e = kb.matmul(&a, &a, a.part(0..128), true, true).unwrap_err();
        assert!(matches!(e, BuildError::WrongSpace { operand: "dst", .. }), "{e}");
        let e = kb.copy(Engine::Vector, a.cols(0..200), &a).unwrap_err();
        assert!(e.to_string().contains("operand `dst`") && e.to_string().contains("cols(0..200)"), "{e}");
        let e = kb.tensor_tensor(Engine::Vector, AluOp::Add, &a, &a, &b).unwrap_err();
        assert!(e.to_string().contains("`in1`"), "{e}");
        let e = kb.tensor_reduce(Engine::Vector, AluOp::Add, a.cols(0..2), &a, 1, false).unwrap_err();
        assert!(matches!(e, BuildError::Shape { .. }), "{e}");
        kb.tensor_reduce(Engine::Vector, AluOp::Max, a.cols(0..1), &a, 1, false).unwrap();
        let e = kb.iota(&a, 0, 1, &[1, 2]).unwrap_err();
        assert!(matches!(e, BuildError::Shape { .. }), "{e}");
        let e = kb.partition_shuffle(&a, &b, &[0; 128]).unwrap_err();
        assert!(e.to_string().contains("src"), "{e}");
        kb.core(1).unwrap();
        let e = kb.memset(Engine::Vector, &a, 0.0).unwrap_err();
        assert!(matches!(e, BuildError::WrongCore { tile_core: 0, core: 1, .. }), "{e}");
        assert_eq!(kb.insts().len(), 1, "failed instructions are not appended");
    }

    #[test]
    fn finish_validates() {
        let mut kb = builder();
        let ps = kb.psum_tile(&[32, 8], DType::F32).unwrap();
        kb.memset(Engine::GpSimd, &ps, 0.0).unwrap();
        let e = kb.finish().unwrap_err();
        assert!(matches!(&e, BuildError::Invalid(v) if v.inst() == Some(InstId(0))), "{e}");
    }

    #[test]
    fn other_instructions_build() {
        let mut kb = builder();
        let a = kb.sbuf_tile(&[32, 32], DType::F32).unwrap();
        let b = kb.sbuf_tile(&[32, 32], DType::F32).unwrap();
        let row = kb.sbuf_tile(&[1, 32], DType::F32).unwrap();
        let ps = kb.psum_tile(&[32, 32], DType::F32).unwrap();
        kb.memset(Engine::Vector, &a, 1.0).unwrap();
        kb.transpose(Engine::Tensor, &ps, &a).unwrap();
        kb.transpose(Engine::Vector, &b, &ps).unwrap();
        kb.select(Engine::Vector, &a, &b, &a, &b).unwrap();
        kb.partition_reduce(AluOp::Add, &row, &a).unwrap();
        kb.partition_broadcast(&b, &row).unwrap();
        let perm: Vec<u8> = (0..32).rev().collect();
        kb.partition_shuffle(&a, &b, &perm).unwrap();
        kb.copy(Engine::Vector, b.reshape_free(&[4, 8]), a.reshape_free(&[4, 8])).unwrap();
        assert_race_free(&kb.finish().unwrap());
    }

    /// One random instruction over `[4, 8]` views of an SBUF tile, a PSUM tile
    /// (per core) and an HBM tensor.
    #[derive(Clone, Debug)]
    enum Step {
        Copy { core: u16, engine: usize, dst: usize, src: usize },
        Dma { core: u16, queue: u8, dst: usize, src: usize },
        Memset { core: u16, gpsimd: bool, dst: usize },
        Add { core: u16, dst: usize, a: usize, b: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        let v = 0usize..18;
        prop_oneof![
            (0u16..2, 0usize..3, v.clone(), v.clone()).prop_map(|(core, engine, dst, src)| Step::Copy {
                core,
                engine,
                dst,
                src
            }),
            (0u16..2, 0u8..3, v.clone(), v.clone()).prop_map(|(core, queue, dst, src)| Step::Dma {
                core,
                queue,
                dst,
                src
            }),
            (0u16..2, any::<bool>(), v.clone()).prop_map(|(core, gpsimd, dst)| Step::Memset { core, gpsimd, dst }),
            (0u16..2, v.clone(), v.clone(), v).prop_map(|(core, dst, a, b)| Step::Add { core, dst, a, b }),
        ]
    }

    fn views_of(x: &View) -> Vec<View> {
        vec![
            x.rows(0..4).cols(0..8),
            x.rows(4..8).cols(8..16),
            x.rows(2..6).cols(4..12),
            x.rows(0..4).slice_step(1, 0..16, 2),
            x.rows(0..4).slice_step(1, 1..16, 2),
            x.rows(3..7).slice_step(1, 1..16, 2),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random programs: every conflicting pair is ordered, every dependency
        /// is a real conflict and none is implied by the others.
        #[test]
        fn random_programs_are_race_free_and_minimal(steps in proptest::collection::vec(step(), 1..40)) {
            let mut kb = builder();
            let h = kb.hbm_scratch("h", &[8, 16], DType::F32).unwrap();
            let mut sram = Vec::new();
            for core in 0..2 {
                kb.core(core).unwrap();
                let s = kb.sbuf_tile(&[8, 16], DType::F32).unwrap();
                let p = kb.psum_tile(&[8, 16], DType::F32).unwrap();
                let mut v = views_of(&s.view());
                v.extend(views_of(&p.view()));
                sram.push(v);
            }
            let mut hv = views_of(&h.view());
            // Transposed HBM: strided rows, interleaving with the others.
            hv[5] = h.transposed().rows(0..4).cols(0..8);
            let engines = [Engine::Vector, Engine::Scalar, Engine::GpSimd];
            for s in steps {
                let any = |core: u16, i: usize| if i < 12 { sram[core as usize][i].clone() } else { hv[i - 12].clone() };
                let on_chip = |core: u16, i: usize| sram[core as usize][i % 12].clone();
                let r = match s {
                    Step::Copy { core, engine, dst, src } => {
                        kb.core(core).unwrap();
                        kb.copy(engines[engine], on_chip(core, dst), on_chip(core, src))
                    }
                    Step::Dma { core, queue, dst, src } => {
                        kb.core(core).unwrap();
                        kb.dma_on(queue, any(core, dst), any(core, src))
                    }
                    Step::Memset { core, gpsimd, dst } => {
                        kb.core(core).unwrap();
                        kb.memset(if gpsimd { Engine::GpSimd } else { Engine::Vector }, on_chip(core, dst), 0.0)
                    }
                    Step::Add { core, dst, a, b } => {
                        kb.core(core).unwrap();
                        kb.tensor_tensor(Engine::Vector, AluOp::Add, on_chip(core, dst), on_chip(core, a), on_chip(core, b))
                    }
                };
                prop_assert!(r.is_ok(), "{:?}", r);
            }
            // Unchecked: the views break partition-start rules the race checker does not care about.
            assert_race_free(&kb.finish_unchecked());
        }
    }
}
