//! The builder itself: HBM tensors, on-chip tiles and their allocation, the
//! current core, DMA queue choice, and appending instructions with their
//! dependencies. The instruction methods live in `insts.rs`.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

use trainyard_arch::{ChipSpec, DType};
use trainyard_isa::{Ap, Inst, InstId, Op, Program, Role, Space, TensorDecl, TensorKind};

use crate::alloc::{align_up, psum_place, FreeList, ALIGN};
use crate::deps::DepTracker;
use crate::error::BuildError;
use crate::view::{AsAp, View};

/// DMA queues used round-robin by [`KernelBuilder::dma`] unless configured.
pub const DEFAULT_DMA_QUEUES: u8 = 4;

/// Numbers builders, so a tile handed to another builder is never mistaken for one of its own.
static BUILDERS: AtomicU32 = AtomicU32::new(0);

/// Forwards the view operations of [`View`] to a handle holding a `view` field.
macro_rules! forward_view_ops {
    ($ty:ty) => {
        impl $ty {
            /// The whole tensor or tile as a [`View`].
            pub fn view(&self) -> View {
                self.view.clone()
            }
            /// Logical shape (axis 0 = partitions / rows).
            pub fn shape(&self) -> &[usize] {
                self.view.shape()
            }
            /// Element type.
            pub fn dtype(&self) -> DType {
                self.view.dtype()
            }
            /// Rows `range` of axis 0. See [`View::rows`].
            pub fn rows(&self, range: Range<usize>) -> View {
                self.view.rows(range)
            }
            /// Partitions `range` of axis 0. See [`View::part`].
            pub fn part(&self, range: Range<usize>) -> View {
                self.view.part(range)
            }
            /// Elements `range` of the last axis. See [`View::cols`].
            pub fn cols(&self, range: Range<usize>) -> View {
                self.view.cols(range)
            }
            /// Elements `range` of `axis`. See [`View::slice`].
            pub fn slice(&self, axis: usize, range: Range<usize>) -> View {
                self.view.slice(axis, range)
            }
            /// Every `step`-th element of `range` on `axis`. See [`View::slice_step`].
            pub fn slice_step(&self, axis: usize, range: Range<usize>, step: usize) -> View {
                self.view.slice_step(axis, range, step)
            }
            /// Elements `range` of free axis `free_axis`. See [`View::slice_free`].
            pub fn slice_free(&self, free_axis: usize, range: Range<usize>) -> View {
                self.view.slice_free(free_axis, range)
            }
            /// Index `i` of `axis`, dropping it. See [`View::at`].
            pub fn at(&self, axis: usize, i: usize) -> View {
                self.view.at(axis, i)
            }
            /// Permuted axes. See [`View::permute`].
            pub fn permute(&self, perm: &[usize]) -> View {
                self.view.permute(perm)
            }
            /// Transposed 2-D HBM view. See [`View::transposed`].
            pub fn transposed(&self) -> View {
                self.view.transposed()
            }
            /// Reshaped view. See [`View::reshape`].
            pub fn reshape(&self, shape: &[usize]) -> View {
                self.view.reshape(shape)
            }
            /// Free axes reshaped. See [`View::reshape_free`].
            pub fn reshape_free(&self, free: &[usize]) -> View {
                self.view.reshape_free(free)
            }
            /// Bytes reinterpreted as `dtype`. See [`View::bitcast`].
            pub fn bitcast(&self, dtype: DType) -> View {
                self.view.bitcast(dtype)
            }
            /// A size-1 axis repeated with stride 0. See [`View::broadcast`].
            pub fn broadcast(&self, axis: usize, n: usize) -> View {
                self.view.broadcast(axis, n)
            }
            /// The size-1 last axis repeated `n` times. See [`View::broadcast_free`].
            pub fn broadcast_free(&self, n: usize) -> View {
                self.view.broadcast_free(n)
            }
            /// The access pattern of the whole tensor or tile.
            pub fn ap(&self) -> Result<Ap, BuildError> {
                self.view.ap()
            }
        }

        impl AsAp for $ty {
            fn to_ap(&self) -> Result<Ap, BuildError> {
                self.view.ap()
            }
            fn home_core(&self) -> Option<u16> {
                self.view.core()
            }
            fn tile_serial(&self) -> Option<u64> {
                AsAp::tile_serial(&self.view)
            }
            fn label(&self) -> String {
                AsAp::label(&self.view)
            }
        }
    };
}

/// A tensor in the chip's HBM, declared in the program (input, output or scratch).
#[derive(Clone, Debug, PartialEq)]
pub struct HbmTensor {
    name: String,
    kind: TensorKind,
    offset: u64,
    view: View,
}

impl HbmTensor {
    /// The declared name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Input, output or scratch.
    pub fn kind(&self) -> TensorKind {
        self.kind
    }
    /// Byte address in HBM (global over a system's chips: chip `c` owns
    /// `[c·hbm_bytes, (c+1)·hbm_bytes)`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.view.shape().iter().fold(self.view.dtype().size() as u64, |acc, &n| acc.saturating_mul(n as u64))
    }

    /// The same bytes seen with another row-major shape of as many elements,
    /// so that kernels whose signatures name different dims can share one
    /// tensor (e.g. `[T, H, D]` token-major and `[1, 1, S, D]`).
    pub fn reshaped(&self, shape: &[usize]) -> Result<HbmTensor, BuildError> {
        let count = |s: &[usize]| s.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        if shape.contains(&0) || count(shape) != count(self.view.shape()) {
            return Err(BuildError::BadShape {
                what: format!("tensor `{}` reshaped from {:?}", self.name, self.view.shape()),
                shape: shape.to_vec(),
                message: "must be positive dims with the same element count".into(),
            });
        }
        let view = View::hbm(&self.name, self.offset, shape, self.view.dtype());
        Ok(HbmTensor { name: self.name.clone(), kind: self.kind, offset: self.offset, view })
    }

    /// A tensor `name` of `shape` and `dtype` at `byte_offset` inside this
    /// tensor's bytes, not declared in the program: a compiler places many
    /// short-lived tensors in one scratch arena this way, reusing its bytes
    /// (the builder orders every reuse by address). The region must lie
    /// within this tensor.
    pub fn region(&self, name: &str, byte_offset: u64, shape: &[usize], dtype: DType) -> Result<HbmTensor, BuildError> {
        let bad = |message: String| BuildError::BadShape {
            what: format!("region `{name}` of tensor `{}` at byte {byte_offset}", self.name),
            shape: shape.to_vec(),
            message,
        };
        if shape.contains(&0) {
            return Err(bad("dimensions must be positive".into()));
        }
        let bytes = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &n| acc.checked_mul(n as u64))
            .ok_or_else(|| bad("size overflows".into()))?;
        if byte_offset.checked_add(bytes).is_none_or(|end| end > self.bytes()) {
            return Err(bad(format!("{bytes} bytes do not fit the tensor's {} bytes", self.bytes())));
        }
        let offset = self.offset + byte_offset;
        Ok(HbmTensor { name: name.to_string(), kind: self.kind, offset, view: View::hbm(name, offset, shape, dtype) })
    }
}

forward_view_ops!(HbmTensor);

/// A tile in a core's SBUF or PSUM: partitions `0..P` of a byte range.
/// Not `Clone`: [`KernelBuilder::free`] takes it back; views of it are cheap.
#[derive(Debug, PartialEq)]
pub struct Tile {
    space: Space,
    core: u16,
    serial: u64,
    /// Byte offset within each partition and reserved bytes per partition.
    offset: u64,
    reserved: u64,
    view: View,
}

impl Tile {
    /// SBUF or PSUM.
    pub fn space(&self) -> Space {
        self.space
    }
    /// The core holding the tile.
    pub fn core(&self) -> u16 {
        self.core
    }
    /// Byte offset within each partition.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

forward_view_ops!(Tile);

/// `N` tiles of one shape used in rotation, for double (or deeper) buffering.
/// Reusing a buffer is safe: the builder orders the new writes after the old
/// reads (WAR) and writes (WAW).
#[derive(Debug)]
pub struct TilePool {
    tiles: Vec<Tile>,
    next: usize,
}

impl TilePool {
    /// A view of the next buffer in rotation.
    // Not an `Iterator`: the rotation never ends and borrows nothing.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> View {
        let i = self.next % self.tiles.len().max(1);
        self.next = self.next.wrapping_add(1);
        self.tiles.get(i).map(Tile::view).unwrap_or_else(|| View::hbm("empty pool", 0, &[0], DType::U8))
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// True when the pool has no buffers (never, for a pool from the builder).
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Buffer `i`.
    pub fn tile(&self, i: usize) -> Option<&Tile> {
        self.tiles.get(i)
    }
}

/// Per-core allocator state.
#[derive(Debug)]
struct CoreMem {
    sbuf: FreeList,
    psum: FreeList,
    dma_turn: usize,
}

/// Builds one [`Program`]: declare HBM tensors, allocate tiles, append
/// instructions; dependencies are computed as instructions are appended.
#[derive(Debug)]
pub struct KernelBuilder {
    chip: ChipSpec,
    program: Program,
    names: HashSet<String>,
    /// Per chip: next free byte relative to the chip's HBM window.
    hbm_next: Vec<u64>,
    cores: Vec<CoreMem>,
    /// Absolute core instructions go to.
    core: u16,
    /// `(base, count)`: `core(c)` selects absolute core `base + c`.
    window: (u16, u16),
    /// Scratch tensors handed out again by key (see [`KernelBuilder::hbm_workspace`]).
    workspaces: HashMap<(u32, String), HbmTensor>,
    dma_queues: Vec<u8>,
    deps: DepTracker,
    next_serial: u64,
    live_tiles: HashSet<u64>,
}

impl KernelBuilder {
    /// An empty kernel named `name` for `chip`, issuing to core 0. A chip with
    /// a system ([`ChipSpec::with_chips`]) numbers cores over all its chips
    /// (core `g` is on chip `g / cores per chip`).
    pub fn new(name: &str, chip: &ChipSpec) -> Self {
        let queues = (DEFAULT_DMA_QUEUES as u32).min(chip.core.dma.queues).max(1) as u8;
        KernelBuilder {
            chip: chip.clone(),
            program: Program::new(name),
            names: HashSet::new(),
            hbm_next: vec![0; chip.chips() as usize],
            cores: Vec::new(),
            core: 0,
            window: (0, chip.total_cores().min(u16::MAX as u32) as u16),
            workspaces: HashMap::new(),
            dma_queues: (0..queues).collect(),
            deps: DepTracker::default(),
            next_serial: (BUILDERS.fetch_add(1, Ordering::Relaxed) as u64) << 32,
            live_tiles: HashSet::new(),
        }
    }

    /// The chip this kernel is built for.
    pub fn chip(&self) -> &ChipSpec {
        &self.chip
    }

    /// Sends the following instructions and tile allocations to core `c` of
    /// the core window: absolute core `base + c` (see [`KernelBuilder::set_core_window`]).
    pub fn core(&mut self, c: u16) -> Result<(), BuildError> {
        let (base, count) = self.window;
        if c >= count {
            return Err(if self.window == self.full_window() {
                BuildError::NoSuchCore { core: c, cores: self.chip.total_cores() }
            } else {
                BuildError::OutsideCoreWindow { core: c, base, count }
            });
        }
        self.core = base + c;
        Ok(())
    }

    /// The core instructions currently go to, relative to the core window
    /// (the absolute core when no window is set).
    pub fn current_core(&self) -> u16 {
        self.core.saturating_sub(self.window.0)
    }

    /// The absolute core instructions currently go to (what [`Tile::core`] and
    /// the program's instructions carry).
    pub fn absolute_core(&self) -> u16 {
        self.core
    }

    fn full_window(&self) -> (u16, u16) {
        (0, self.chip.total_cores().min(u16::MAX as u32) as u16)
    }

    /// Restricts [`KernelBuilder::core`] to absolute cores `base..base + count`
    /// and selects core `base`: a library kernel emitted with `cores = n ≤
    /// count` then runs on cores `base..base + n` without knowing it.
    /// Tiles and instructions keep absolute core numbers.
    pub fn set_core_window(&mut self, base: u16, count: u16) -> Result<(), BuildError> {
        let total = self.chip.total_cores();
        if count == 0 || base as u32 + count as u32 > total {
            return Err(BuildError::BadCoreWindow { base, count, cores: total });
        }
        self.window = (base, count);
        self.core = base;
        Ok(())
    }

    /// The core window `(base, count)`; `(0, all cores)` when none is set.
    pub fn core_window(&self) -> (u16, u16) {
        self.window
    }

    /// Makes every core selectable again (window `(0, all cores)`), keeping the current core.
    pub fn clear_core_window(&mut self) {
        self.window = self.full_window();
    }

    /// The core window and absolute current core, for [`KernelBuilder::restore_cores`].
    pub(crate) fn save_cores(&self) -> ((u16, u16), u16) {
        (self.window, self.core)
    }

    /// Puts back what [`KernelBuilder::save_cores`] returned.
    pub(crate) fn restore_cores(&mut self, (window, core): ((u16, u16), u16)) {
        self.window = window;
        self.core = core;
    }

    /// A scratch tensor of at least `bytes` bytes (`u8`) in chip `chip`'s HBM,
    /// kept under `key`: later calls with the same chip and key get the same
    /// tensor back while it is large enough (the builder orders the reuse by
    /// its dependencies), so a library routine called once per layer does
    /// not grow HBM use per call.
    pub fn hbm_workspace(&mut self, chip: u32, key: &str, bytes: u64) -> Result<HbmTensor, BuildError> {
        let slot = (chip, key.to_string());
        if let Some(t) = self.workspaces.get(&slot).filter(|t| t.bytes() >= bytes) {
            return Ok(t.clone());
        }
        let mut n = 0;
        let name = loop {
            let name = format!("{key}.chip{chip}.{n}");
            if !self.names.contains(&name) {
                break name;
            }
            n += 1;
        };
        let t = self.declare(chip, &name, &[bytes.max(1) as usize], DType::U8, TensorKind::Scratch)?;
        self.workspaces.insert(slot, t.clone());
        Ok(t)
    }

    /// Sets the DMA queues [`KernelBuilder::dma`] rotates over (default `0..4`).
    pub fn set_dma_queues(&mut self, queues: &[u8]) -> Result<(), BuildError> {
        let have = self.chip.core.dma.queues;
        if let Some(&q) = queues.iter().find(|&&q| q as u32 >= have) {
            return Err(BuildError::NoSuchQueue { queue: q as u32, queues: have });
        }
        if queues.is_empty() {
            return Err(BuildError::NoSuchQueue { queue: 0, queues: 0 });
        }
        self.dma_queues = queues.to_vec();
        Ok(())
    }

    pub(crate) fn check_queue(&self, queue: u8) -> Result<(), BuildError> {
        let have = self.chip.core.dma.queues;
        if queue as u32 >= have {
            return Err(BuildError::NoSuchQueue { queue: queue as u32, queues: have });
        }
        Ok(())
    }

    /// The next DMA queue of the current core in round-robin order.
    pub(crate) fn next_queue(&mut self) -> u8 {
        let n = self.dma_queues.len().max(1);
        let mem = self.mem();
        let turn = mem.dma_turn;
        mem.dma_turn = turn.wrapping_add(1);
        self.dma_queues.get(turn % n).copied().unwrap_or(0)
    }

    fn mem(&mut self) -> &mut CoreMem {
        self.mem_of(self.core)
    }

    fn mem_of(&mut self, core: u16) -> &mut CoreMem {
        let core = core as usize;
        while self.cores.len() <= core {
            self.cores.push(CoreMem {
                sbuf: FreeList::new(self.chip.core.sbuf.bytes_per_partition as u64),
                psum: FreeList::new(self.chip.core.psum.bytes_per_partition as u64),
                dma_turn: 0,
            });
        }
        &mut self.cores[core]
    }

    /// The chip holding the current core (where [`KernelBuilder::hbm_input`]
    /// and its siblings place tensors).
    pub fn current_chip(&self) -> u32 {
        self.chip.chip_of_core(self.core as u32)
    }

    /// Bytes still free in chip `chip`'s HBM window (0 for a chip the system does not have).
    pub fn hbm_free_bytes(&self, chip: u32) -> u64 {
        let used = self.hbm_next.get(chip as usize).map(|&n| align_up(n, ALIGN));
        used.map_or(0, |u| self.chip.chip.hbm_bytes.saturating_sub(u))
    }

    fn declare(
        &mut self,
        chip: u32,
        name: &str,
        shape: &[usize],
        dtype: DType,
        kind: TensorKind,
    ) -> Result<HbmTensor, BuildError> {
        if chip >= self.chip.chips() {
            return Err(BuildError::NoSuchChip { tensor: name.to_string(), chip, chips: self.chip.chips() });
        }
        if !self.names.insert(name.to_string()) {
            return Err(BuildError::DuplicateTensor { name: name.to_string() });
        }
        let bad = |message: &str| BuildError::BadShape {
            what: format!("tensor `{name}`"),
            shape: shape.to_vec(),
            message: message.to_string(),
        };
        if shape.contains(&0) {
            return Err(bad("dimensions must be positive"));
        }
        let bytes = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &n| acc.checked_mul(n as u64))
            .ok_or_else(|| bad("size overflows"))?;
        let next = self.hbm_next.get(chip as usize).copied().unwrap_or(0);
        let local = align_up(next, ALIGN);
        let (base, capacity) = self.chip.hbm_window(chip);
        if local.checked_add(bytes).is_none_or(|end| end > capacity) {
            return Err(BuildError::OutOfHbm {
                tensor: name.to_string(),
                chip,
                requested: bytes,
                free: capacity.saturating_sub(local),
            });
        }
        if let Some(n) = self.hbm_next.get_mut(chip as usize) {
            *n = local + bytes;
        }
        let offset = base + local;
        self.program.tensors.push(TensorDecl {
            name: name.to_string(),
            kind,
            dtype,
            shape: shape.iter().map(|&n| n as u64).collect(),
            offset,
        });
        Ok(HbmTensor { name: name.to_string(), kind, offset, view: View::hbm(name, offset, shape, dtype) })
    }

    /// Declares an input tensor (bound by the caller before the run) in the
    /// HBM of the current core's chip (chip 0 on a single chip).
    pub fn hbm_input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<HbmTensor, BuildError> {
        self.declare(self.current_chip(), name, shape, dtype, TensorKind::Input)
    }

    /// Declares an output tensor (read back after the run) in the HBM of the current core's chip.
    pub fn hbm_output(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<HbmTensor, BuildError> {
        self.declare(self.current_chip(), name, shape, dtype, TensorKind::Output)
    }

    /// Declares a scratch tensor owned by the program in the HBM of the current core's chip.
    pub fn hbm_scratch(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<HbmTensor, BuildError> {
        self.declare(self.current_chip(), name, shape, dtype, TensorKind::Scratch)
    }

    /// Declares an input tensor in the HBM window of chip `chip`.
    pub fn hbm_input_on(
        &mut self,
        chip: u32,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<HbmTensor, BuildError> {
        self.declare(chip, name, shape, dtype, TensorKind::Input)
    }

    /// Declares an output tensor in the HBM window of chip `chip`.
    pub fn hbm_output_on(
        &mut self,
        chip: u32,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<HbmTensor, BuildError> {
        self.declare(chip, name, shape, dtype, TensorKind::Output)
    }

    /// Declares a scratch tensor in the HBM window of chip `chip`.
    pub fn hbm_scratch_on(
        &mut self,
        chip: u32,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<HbmTensor, BuildError> {
        self.declare(chip, name, shape, dtype, TensorKind::Scratch)
    }

    fn tile(&mut self, space: Space, shape: &[usize], dtype: DType) -> Result<Tile, BuildError> {
        let core = self.core;
        let label = format!("{}#{}", space.name(), self.next_serial & u32::MAX as u64);
        let spec = if space == Space::Psum { &self.chip.core.psum } else { &self.chip.core.sbuf };
        let max = spec.partitions;
        let p = shape.first().copied().unwrap_or(0);
        if p == 0 || p > max as usize {
            return Err(BuildError::BadPartitions { tile: label, partitions: p, max });
        }
        if space == Space::Hbm {
            return Err(BuildError::BadShape {
                what: label,
                shape: shape.to_vec(),
                message: "not an on-chip space".into(),
            });
        }
        let bytes = shape[1..]
            .iter()
            .try_fold(dtype.size() as u64, |acc, &n| acc.checked_mul(n as u64))
            .filter(|&b| b > 0)
            .ok_or_else(|| BuildError::BadShape {
                what: label.clone(),
                shape: shape.to_vec(),
                message: "free dimensions must be positive and fit the memory".into(),
            })?;
        let reserved = align_up(bytes, ALIGN);
        let (bank, generation) = (self.chip.psum_bank_bytes() as u64, self.chip.generation);
        let mem = self.mem();
        let list = if space == Space::Psum { &mut mem.psum } else { &mut mem.sbuf };
        let placed = if space == Space::Psum {
            list.alloc(reserved, |s| psum_place(s, reserved, bank, generation))
        } else {
            list.alloc(reserved, |s| align_up(s, ALIGN))
        };
        let Some(offset) = placed else {
            let (free, largest) = (list.free_bytes(), list.largest());
            return Err(if space == Space::Psum {
                BuildError::OutOfPsum { core, tile: label, requested: reserved, free, largest }
            } else {
                BuildError::OutOfSbuf { core, tile: label, requested: reserved, free, largest }
            });
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        self.live_tiles.insert(serial);
        let view = View::sram(space, core, serial, &label, offset, shape, dtype);
        Ok(Tile { space, core, serial, offset, reserved, view })
    }

    /// Allocates an SBUF tile `[P, free...]` on the current core (P ≤ partitions).
    pub fn sbuf_tile(&mut self, shape: &[usize], dtype: DType) -> Result<Tile, BuildError> {
        self.tile(Space::Sbuf, shape, dtype)
    }

    /// Allocates a PSUM tile `[P, free...]` on the current core; before
    /// NeuronCore-v4 a tile of at most one bank never straddles two banks.
    pub fn psum_tile(&mut self, shape: &[usize], dtype: DType) -> Result<Tile, BuildError> {
        self.tile(Space::Psum, shape, dtype)
    }

    /// Gives a tile's memory back. Later tiles may reuse it; dependencies are
    /// tracked by address, so that reuse is ordered after this tile's accesses.
    /// Views of a freed tile are refused by later instructions.
    pub fn free(&mut self, tile: Tile) -> Result<(), BuildError> {
        let live = self.live_tiles.remove(&tile.serial);
        let mem = self.mem_of(tile.core);
        let list = if tile.space == Space::Psum { &mut mem.psum } else { &mut mem.sbuf };
        if live && list.release(tile.offset, tile.reserved) {
            Ok(())
        } else {
            Err(BuildError::NotAllocated { tile: AsAp::label(&tile), core: tile.core })
        }
    }

    /// Allocates `bufs` tiles of one shape in `space` for rotation.
    pub fn tile_pool(
        &mut self,
        space: Space,
        shape: &[usize],
        dtype: DType,
        bufs: usize,
    ) -> Result<TilePool, BuildError> {
        let mut tiles = Vec::with_capacity(bufs);
        if bufs == 0 {
            return Err(BuildError::BadShape {
                what: "tile pool".into(),
                shape: shape.to_vec(),
                message: "a pool needs at least one buffer".into(),
            });
        }
        for _ in 0..bufs {
            match self.tile(space, shape, dtype) {
                Ok(t) => tiles.push(t),
                Err(e) => {
                    for t in tiles {
                        self.free(t)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(TilePool { tiles, next: 0 })
    }

    /// An SBUF [`TilePool`] of `bufs` buffers.
    pub fn sbuf_pool(&mut self, shape: &[usize], dtype: DType, bufs: usize) -> Result<TilePool, BuildError> {
        self.tile_pool(Space::Sbuf, shape, dtype, bufs)
    }

    /// A PSUM [`TilePool`] of `bufs` buffers.
    pub fn psum_pool(&mut self, shape: &[usize], dtype: DType, bufs: usize) -> Result<TilePool, BuildError> {
        self.tile_pool(Space::Psum, shape, dtype, bufs)
    }

    /// Frees every buffer of a pool.
    pub fn free_pool(&mut self, pool: TilePool) -> Result<(), BuildError> {
        pool.tiles.into_iter().try_for_each(|t| self.free(t))
    }

    /// Bytes per partition still free in the current core's SBUF.
    pub fn sbuf_free_bytes(&mut self) -> u64 {
        self.mem().sbuf.free_bytes()
    }

    /// Bytes per partition still free in the current core's PSUM.
    pub fn psum_free_bytes(&mut self) -> u64 {
        self.mem().psum.free_bytes()
    }

    /// The id the next instruction will get.
    pub fn next_id(&self) -> InstId {
        InstId(self.program.insts.len() as u32)
    }

    /// The instructions appended so far.
    pub fn insts(&self) -> &[Inst] {
        &self.program.insts
    }

    /// `mnemonic %id` of the instruction being built, for messages.
    pub(crate) fn here(&self, mnemonic: &str) -> String {
        format!("{mnemonic} {}", self.next_id())
    }

    /// Resolves an operand to its access pattern, checking that it lives on
    /// the current core and is not empty.
    pub(crate) fn operand(&self, mnemonic: &str, name: &'static str, v: &impl AsAp) -> Result<Ap, BuildError> {
        let wrap = |e| BuildError::Operand { inst: self.here(mnemonic), operand: name, source: Box::new(e) };
        let ap = v.to_ap().map_err(wrap)?;
        check_extent(&ap).map_err(|message| wrap(BuildError::View { view: v.label(), message }))?;
        if let Some(serial) = v.tile_serial() {
            if !self.live_tiles.contains(&serial) {
                return Err(BuildError::FreedTile { inst: self.here(mnemonic), operand: name, tile: v.label() });
            }
        }
        if let Some(c) = v.home_core() {
            if c != self.core && ap.space.is_sram() {
                return Err(BuildError::WrongCore {
                    inst: self.here(mnemonic),
                    operand: name,
                    tile: v.label(),
                    tile_core: c,
                    core: self.core,
                });
            }
        }
        if ap.elements() == 0 {
            return Err(BuildError::Shape { inst: self.here(mnemonic), message: format!("operand `{name}` is empty") });
        }
        Ok(ap)
    }

    /// Appends `op` on the current core with its computed dependencies.
    pub(crate) fn push(&mut self, op: Op) -> Result<InstId, BuildError> {
        self.push_with(op, false)
    }

    /// [`KernelBuilder::push`]; a `join` also waits for every queue's last instruction and
    /// is waited for by every later one (see [`KernelBuilder::barrier`]).
    fn push_with(&mut self, op: Op, join: bool) -> Result<InstId, BuildError> {
        let id = self.program.insts.len();
        if id >= u32::MAX as usize {
            return Err(BuildError::TooManyInstructions { max: u32::MAX as u64 });
        }
        let operands: Vec<(Ap, Role)> = op.operands().into_iter().map(|(_, ap, role)| (*ap, role)).collect();
        let deps = if join {
            self.deps.add_join(self.core, op.unit(), &operands)
        } else {
            self.deps.add(self.core, op.unit(), &operands)
        };
        self.program.insts.push(Inst { op, core: self.core, deps });
        Ok(InstId(id as u32))
    }

    /// A barrier: every instruction appended after it, on any core and any engine or DMA
    /// queue, starts only after every instruction appended before it has finished.
    ///
    /// It is a join: one 1-element Vector-engine memset on a scratch SBUF tile of the
    /// current core (allocated and freed here) that waits for the last instruction of every
    /// queue of every core used so far; every later instruction waits for it, directly or
    /// through an earlier instruction of its queue, and the dependency tracker drops later
    /// waits on anything before it as implied. So the barrier costs one small instruction
    /// (the simulator's fixed Vector-engine cost of a 1-element memset) on the critical path,
    /// plus the cross-engine semaphore latency of its waits and wake-ups; a real barrier's
    /// semaphore cost is not published (HW-SYNC-COST, HW-GAP-LIST) and the chip spec's
    /// `semaphore_ns` stands for it. Returns the join's id.
    pub fn barrier(&mut self) -> Result<InstId, BuildError> {
        let tile = self.sbuf_tile(&[1, 1], DType::F32)?;
        let dst = self.operand("memset", "dst", &tile)?;
        let op = Op::Memset { engine: trainyard_isa::Engine::Vector, dst, value: 0.0 };
        let id = self.push_with(op, true)?;
        self.free(tile)?;
        Ok(id)
    }

    /// The finished program, checked with `trainyard_isa::validate` against the chip.
    pub fn finish(self) -> Result<Program, BuildError> {
        trainyard_isa::validate(&self.program, &self.chip)?;
        Ok(self.program)
    }

    /// The program without validation: for tools and tests that want to see
    /// what the validator rejects (or feed a race checker any pattern).
    pub fn finish_unchecked(self) -> Program {
        self.program
    }
}

/// Rejects patterns whose element count or byte span does not fit 64-bit
/// arithmetic, so that later `Ap` arithmetic (which does not check) cannot overflow.
fn check_extent(ap: &Ap) -> Result<(), String> {
    let dims = ap.free_dims();
    let elements = dims.iter().fold(ap.partitions as u128, |acc, d| acc.saturating_mul(d.size as u128));
    let reach = |stride: i64, size: u32| (stride as i128 * (size.max(1) as i128 - 1)).abs();
    let mut span = dims.iter().map(|d| reach(d.stride, d.size)).sum::<i128>() + 1;
    if ap.space == Space::Hbm {
        span += reach(ap.partition_stride, ap.partitions);
    }
    let bytes = span.saturating_mul(ap.dtype.size() as i128) + ap.offset as i128;
    if elements > (1u128 << 48) || bytes > (1i128 << 60) {
        return Err(format!("{elements} elements over {bytes} bytes is beyond any memory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(name: &str) -> ChipSpec {
        ChipSpec::by_name(name).unwrap()
    }

    #[test]
    fn sbuf_overflow_is_a_typed_error_and_free_reuses() {
        let c = chip("trn1");
        let mut b = KernelBuilder::new("k", &c);
        let per_part = c.core.sbuf.bytes_per_partition as usize;
        let big = b.sbuf_tile(&[128, per_part / 4 - 16], DType::F32).unwrap();
        let err = b.sbuf_tile(&[128, 64], DType::F32).unwrap_err();
        match &err {
            BuildError::OutOfSbuf { requested, free, core: 0, .. } => assert_eq!((*requested, *free), (256, 64)),
            e => panic!("unexpected {e:?}"),
        }
        assert!(err.to_string().contains("sbuf#1"), "{err}");
        let off = big.offset();
        let view = big.cols(0..4);
        b.free(big).unwrap();
        let e = b.memset(trainyard_isa::Engine::Vector, &view, 0.0).unwrap_err();
        assert!(matches!(&e, BuildError::FreedTile { operand: "dst", .. }) && e.to_string().contains("sbuf#0"), "{e}");
        let mut other = KernelBuilder::new("other", &c);
        let foreign = other.sbuf_tile(&[1, 4], DType::F32).unwrap();
        assert!(matches!(b.free(foreign), Err(BuildError::NotAllocated { .. })));
        let again = b.sbuf_tile(&[1, 4], DType::F32).unwrap();
        assert_eq!(again.offset(), off);
        assert_eq!(b.sbuf_free_bytes(), per_part as u64 - 64);
    }

    #[test]
    fn absurd_operands_are_errors_not_panics() {
        let mut b = KernelBuilder::new("k", &chip("trn2"));
        let t = b.sbuf_tile(&[1, 4], DType::F32).unwrap();
        let huge = t.cols(0..1).broadcast_free(u32::MAX as usize).reshape_free(&[1, u32::MAX as usize]);
        let huge = huge.broadcast(1, u32::MAX as usize);
        assert!(matches!(b.memset(trainyard_isa::Engine::Vector, huge, 0.0), Err(BuildError::Operand { .. })));
        let wild = Ap::new(Space::Sbuf, 0, 1, 0, 0, &[trainyard_isa::Dim { stride: i64::MAX, size: 3 }], DType::F32);
        assert!(matches!(b.memset(trainyard_isa::Engine::Vector, wild, 0.0), Err(BuildError::Operand { .. })));
        let far = t.slice_step(1, 0..4, usize::MAX);
        assert_eq!(far.ap().unwrap().free_dims(), &[trainyard_isa::Dim { stride: 1, size: 1 }]);
    }

    #[test]
    fn psum_tiles_respect_banks_before_v4() {
        for (name, want) in [("trn2", 2048), ("trn3", 1024)] {
            let mut b = KernelBuilder::new("k", &chip(name));
            let a = b.psum_tile(&[128, 256], DType::F32).unwrap();
            let t = b.psum_tile(&[128, 384], DType::F32).unwrap();
            assert_eq!((a.offset(), t.offset()), (0, want), "{name}");
        }
        let mut b = KernelBuilder::new("k", &chip("trn2"));
        let _all = b.psum_pool(&[128, 512], DType::F32, 8).unwrap();
        assert!(matches!(b.psum_tile(&[128, 1], DType::F32), Err(BuildError::OutOfPsum { free: 0, .. })));
    }

    #[test]
    fn bad_tiles_and_tensors_are_errors() {
        let mut b = KernelBuilder::new("k", &chip("trn2"));
        assert!(matches!(b.sbuf_tile(&[129, 4], DType::F32), Err(BuildError::BadPartitions { .. })));
        assert!(matches!(b.sbuf_tile(&[], DType::F32), Err(BuildError::BadPartitions { .. })));
        assert!(matches!(b.sbuf_tile(&[4, 0], DType::F32), Err(BuildError::BadShape { .. })));
        b.hbm_input("x", &[4], DType::F32).unwrap();
        assert!(matches!(b.hbm_input("x", &[4], DType::F32), Err(BuildError::DuplicateTensor { .. })));
        assert!(matches!(b.hbm_output("huge", &[1 << 40, 1 << 20], DType::F32), Err(BuildError::OutOfHbm { .. })));
        assert!(matches!(b.core(8), Err(BuildError::NoSuchCore { .. })));
        assert!(matches!(b.set_dma_queues(&[0, 16]), Err(BuildError::NoSuchQueue { queue: 16, .. })));
        let t = b.sbuf_tile(&[4, 4], DType::F32).unwrap();
        let pool = b.sbuf_pool(&[4, 4], DType::F32, 3).unwrap();
        assert_eq!(pool.len(), 3);
        b.free_pool(pool).unwrap();
        b.free(t).unwrap();
    }

    #[test]
    fn regions_alias_an_arena_and_are_bounded() {
        let mut b = KernelBuilder::new("k", &chip("trn2"));
        let arena = b.hbm_scratch("arena", &[1024], DType::U8).unwrap();
        let x = arena.region("x", 256, &[4, 8], DType::F32).unwrap();
        assert_eq!((x.name(), x.offset(), x.bytes(), x.shape()), ("x", arena.offset() + 256, 128, &[4usize, 8][..]));
        assert!(matches!(arena.region("big", 1000, &[8], DType::F32), Err(BuildError::BadShape { .. })));
        assert!(matches!(arena.region("empty", 0, &[0], DType::F32), Err(BuildError::BadShape { .. })));
        let t = b.sbuf_tile(&[4, 8], DType::F32).unwrap();
        let store = b.dma(&x, &t).unwrap();
        let y = arena.region("y", 300, &[16], DType::F32).unwrap();
        let load = b.dma(t.rows(0..2), y.reshape(&[2, 8])).unwrap();
        let p = b.finish().unwrap();
        assert_eq!(p.tensors.len(), 1, "regions are not declared");
        assert_eq!(p.insts[load.0 as usize].deps, vec![store], "overlapping regions are ordered");
    }

    #[test]
    fn hbm_tensors_are_aligned_and_declared() {
        let mut b = KernelBuilder::new("k", &chip("trn2"));
        let x = b.hbm_input("x", &[3, 5], DType::Bf16).unwrap();
        let y = b.hbm_output("y", &[7], DType::F32).unwrap();
        let s = b.hbm_scratch("s", &[2, 2], DType::U8).unwrap();
        assert_eq!((x.offset(), y.offset(), s.offset()), (0, 64, 128));
        let p = b.finish().unwrap();
        let kinds: Vec<TensorKind> = p.tensors.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [TensorKind::Input, TensorKind::Output, TensorKind::Scratch]);
        assert_eq!(p.tensor("x").unwrap().shape, vec![3, 5]);
    }

    #[test]
    fn library_kernel_in_a_core_window_runs_on_those_cores_only() {
        use crate::library::{matmul::MatMul, Bindings, Kernel, KernelArgs};
        let c = chip("trn2");
        let mut b = KernelBuilder::new("k", &c);
        let mut args = KernelArgs::new(&[256, 128, 256], DType::Bf16);
        args.cores = 2;
        let mut io = Bindings::new();
        for sig in MatMul.signature(&c, &args).unwrap() {
            let t = match sig.kind {
                TensorKind::Output => b.hbm_output(&sig.name, &sig.shape, sig.dtype).unwrap(),
                _ => b.hbm_input(&sig.name, &sig.shape, sig.dtype).unwrap(),
            };
            io.insert(sig.name, t);
        }
        b.set_core_window(3, 2).unwrap();
        assert_eq!((b.core_window(), b.current_core(), b.absolute_core()), ((3, 2), 0, 3));
        MatMul.emit(&mut b, &args, &io).unwrap();
        let cores: HashSet<u16> = b.insts().iter().map(|i| i.core).collect();
        assert_eq!(cores, HashSet::from([3, 4]));
        assert!(matches!(b.core(2), Err(BuildError::OutsideCoreWindow { core: 2, base: 3, count: 2 })));
        b.core(1).unwrap();
        let t = b.sbuf_tile(&[4, 4], DType::F32).unwrap();
        assert_eq!((t.core(), b.current_core()), (4, 1));
        assert!(matches!(b.set_core_window(7, 2), Err(BuildError::BadCoreWindow { .. })));
        assert!(matches!(b.set_core_window(0, 0), Err(BuildError::BadCoreWindow { .. })));
        b.clear_core_window();
        assert_eq!((b.core_window(), b.current_core()), ((0, 8), 4));
        b.free(t).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn barrier_orders_everything_after_it_behind_everything_before_it() {
        use trainyard_isa::Engine;
        use trainyard_sim::{Mode, SimOptions, Simulator};
        let c = chip("trn2").with_chips(2).unwrap();
        let mut b = KernelBuilder::new("k", &c);
        let x = b.hbm_input("x", &[128, 512], DType::F32).unwrap();
        let y = b.hbm_output("y", &[128, 512], DType::F32).unwrap();
        let mut before = Vec::new();
        // Uneven work on several cores and queues, some of it long, so that without the
        // barrier the later instructions (on idle units) would start at once.
        let mut tiles = Vec::new();
        for (core, rows) in [(0u16, 128usize), (3, 64), (9, 128)] {
            b.core(core).unwrap();
            let t = b.sbuf_tile(&[rows, 512], DType::F32).unwrap();
            for q in 0..4 {
                before.push(b.dma_on(q, t.rows(0..rows / 2), x.rows(0..rows / 2)).unwrap());
            }
            before.push(b.memset(Engine::GpSimd, t.rows(rows / 2..rows), 1.0).unwrap());
            before.push(b.copy(Engine::Scalar, t.rows(0..rows / 2), t.rows(rows / 2..rows)).unwrap());
            tiles.push(t);
        }
        b.core(5).unwrap();
        let join = b.barrier().unwrap();
        let mut after = Vec::new();
        // Other cores, queues and engines, and a read of a tile written before the barrier.
        b.core(12).unwrap();
        let u = b.sbuf_tile(&[8, 8], DType::F32).unwrap();
        after.push(b.memset(Engine::Vector, &u, 0.0).unwrap());
        after.push(b.dma_on(7, &u, x.cols(0..8).rows(0..8)).unwrap());
        b.core(3).unwrap();
        after.push(b.dma_on(5, y.rows(0..64), &tiles[1]).unwrap());
        b.core(0).unwrap();
        after.push(b.memset(Engine::Vector, tiles[0].cols(0..4), 2.0).unwrap());
        after.push(b.memset(Engine::Vector, tiles[0].cols(4..8), 3.0).unwrap());
        b.core(12).unwrap();
        b.free(u).unwrap();
        let p = b.finish().unwrap();
        crate::check::assert_race_free_with_joins(&p, &[join.0 as usize]);
        let join_inst = &p.insts[join.0 as usize];
        assert_eq!(join_inst.core, 5);
        // Every later instruction waits for the join, directly or through its queue, and no
        // later wait names an instruction before the join (implied).
        for &a in &after {
            let deps: Vec<u32> = p.insts[a.0 as usize].deps.iter().map(|d| d.0).collect();
            assert!(deps.iter().all(|&d| d >= join.0), "{a:?} waits on {deps:?}");
        }
        assert_eq!(p.insts[after[0].0 as usize].deps, [join]);
        assert!(p.insts[after[4].0 as usize].deps.is_empty(), "same queue as the one before it");
        let opts = SimOptions { mode: Mode::TimedOnly, check_races: true, ..SimOptions::default() };
        let run = Simulator::new(&c, &p, opts).unwrap().run().unwrap();
        let ev = |i: InstId| run.events[i.0 as usize].clone();
        let last_end = before.iter().map(|&i| ev(i).end_ps).max().unwrap();
        assert!(ev(join).start_ps >= last_end);
        for &a in &after {
            assert!(ev(a).start_ps >= ev(join).end_ps, "{a:?} starts at {} before the join ends", ev(a).start_ps);
        }
        // The barrier frees its scratch tile.
        let mut b = KernelBuilder::new("k", &c);
        let free = b.sbuf_free_bytes();
        b.barrier().unwrap();
        assert_eq!(b.sbuf_free_bytes(), free);
    }

    #[test]
    fn hbm_tensors_go_to_their_chips_window() {
        let c = chip("trn2").with_chips(2).unwrap();
        let hbm = c.chip.hbm_bytes;
        let mut b = KernelBuilder::new("k", &c);
        let a = b.hbm_input("a", &[4], DType::F32).unwrap();
        let r = b.hbm_output_on(1, "r", &[4], DType::F32).unwrap();
        b.core(9).unwrap();
        assert_eq!(b.current_chip(), 1);
        let s = b.hbm_scratch("s", &[4], DType::F32).unwrap();
        let t = b.hbm_input_on(0, "t", &[4], DType::F32).unwrap();
        assert_eq!((a.offset(), r.offset(), s.offset(), t.offset()), (0, hbm, hbm + 64, 64));
        assert_eq!(b.hbm_free_bytes(1), hbm - 128);
        let e = b.hbm_scratch_on(1, "big", &[(hbm / 4) as usize], DType::F32).unwrap_err();
        assert!(matches!(e, BuildError::OutOfHbm { chip: 1, .. }) && e.to_string().contains("chip 1"), "{e}");
        assert!(e.to_string().contains("128 over"), "{e}");
        assert!(matches!(b.hbm_input_on(2, "x", &[4], DType::F32), Err(BuildError::NoSuchChip { chip: 2, .. })));
        assert!(matches!(b.core(16), Err(BuildError::NoSuchCore { cores: 16, .. })));
        b.finish().unwrap();
    }
}
