//! Many-row products (prefill, the vision tower) on Intel AMX: `[m, K] x W^T` for q8_0, q4_K,
//! bf16 and f16 weights, f32 out, on `tdpbf16ps` tiles (a 16 x 32 by 32 x 16 bf16 product per
//! instruction into f32 accumulators). On the Xeon VM of BENCHMARKS.md one core retires a tile
//! product every ~16 cycles, 1024 flops per cycle, where the AVX512-VNNI int8 GEMM (`quant::gemm`)
//! reaches ~200; that GEMM and the AVX512-BF16 one (`bf16_gemm`) remain for CPUs without AMX.
//!
//! Numbers: activations are rounded to bf16 (to nearest even), as PyTorch's bf16 matmul does,
//! and weights are decoded to f32 and rounded to bf16; products are exact and summed in f32.
//! For q8_0 and q4_K weights that is the decoded weight within 2^-9 relative, against bf16
//! activations; the VNNI GEMM uses int8 activations in blocks of 32 instead (coarser: 1/254 of a
//! block's largest value). Tiles flush bf16 denormals to zero.
//!
//! Products of fewer than 448 rows (prefill chunks, batches) swap the operands instead, the weight as
//! the A tiles (`weight_tiles`). For more rows (the vision towers):
//! Blocking: the weight is packed into panels of 32 columns in the B tiles' pair layout
//! (`pack`), each task packing its own columns; the activations once, as zero-padded bf16 rows.
//! A task owns up to `COL_BLOCK` columns of every row: it packs them, then for each pass of
//! `ROW_BLOCK` rows walks K in `K_BLOCK` slices (its A and B slices stay in L2; one 32-row A
//! slice, 32 KiB, in L1 across the panels), running 32 x 32 blocks of 2 x 2 tiles
//! (`tiles::block_2x2`) into an f32 accumulator.
//!
//! Rust has no stable AMX intrinsics (the tile code is inline assembly), and Linux hands out
//! the 8 KiB tile state only to processes that ask (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).

pub(crate) mod attention;
mod pack;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(target_arch = "x86_64")]
mod tiles;
mod weight_tiles;

use crate::inplace::Epilogue;
use crate::quant::QuantizedMatrix;
use crate::tiled_output::ColumnTiles;
use half::{bf16, f16};
use std::mem::MaybeUninit;
use pack::{K_STEP, PANEL};
#[cfg(target_arch = "x86_64")]
pub(crate) use pack::transpose_16x16;
use rayon::prelude::*;

/// A weight `[n, k]` (PyTorch `[out, in]`) the AMX GEMM can pack.
pub(crate) enum WeightRows<'a> {
    Quantized(&'a QuantizedMatrix),
    Bf16(&'a [bf16]),
    /// Rounded to bf16 while packing: exact for the weights of bf16 checkpoints (every official
    /// Qwen2-VL and CogVLM2 one), whose values f16 holds exactly within its normal range
    /// (magnitudes 2^-14 to 65504).
    F16(&'a [f16]),
    F32(&'a [f32]),
}

/// One cache line; `Aligned` buffers are made of them.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct CacheLine([u8; 64]);

/// Plain numbers: any bits are a valid value, so a zeroed cache line is a valid `[Self]`.
trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for f32 {}

/// A buffer of `len` values starting on a cache-line boundary. Tile rows that straddle two
/// lines made tile loads and stores ~6x slower on the Xeon VM (16 against 2.4 ns a load).
/// Small buffers (packed panels, accumulators, attention scores) come from and go back to
/// `POOL`, so they come back warm; large ones go back to the allocator.
struct Aligned<T: Plain> {
    lines: Vec<CacheLine>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// Released buffers, for the next products.
static POOL: std::sync::Mutex<Vec<Vec<CacheLine>>> = std::sync::Mutex::new(Vec::new());
/// Buffers the pool keeps, and the bytes it keeps in all. Keeping everything (up to 32 MiB a
/// buffer: the 10 MiB bf16 activations of a vision fc2 among them) held ~25 MB more at the peak,
/// putting peak RSS at the 1.15x-of-weights budget line, and measured no faster end to end
/// than this 4 MiB (448² q8_0 vision 1.71-1.76 s, q4k peak RSS 1.136x the weights).
const POOL_BUFFERS: usize = 16;
const POOL_MAX_BYTES: usize = 4 << 20;

impl<T: Plain> Aligned<T> {
    /// `len` values left from earlier use (any bits are valid values): the caller writes
    /// what it reads.
    fn reused(len: usize) -> Self {
        let need = Self::lines_for(len);
        let lines = pooled_lines(need).unwrap_or_else(|| zeroed_lines(need));
        Self { lines, len, _values: std::marker::PhantomData }
    }

    /// `len` values, every one of which `fill` writes through the view it is given. A new
    /// buffer is not zeroed first: for the AMX GEMM's bf16 activations (up to 283 MB a product
    /// for CogVLM2's vision fc2) the allocator's zeroing of reused memory was ~3% of a 448²
    /// question's time to first token in a profile.
    ///
    /// # Safety
    /// `fill` must write all `len` values.
    unsafe fn written_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Self {
        let need = Self::lines_for(len);
        if let Some(mut lines) = pooled_lines(need) {
            // SAFETY: the lines hold at least `len` values, as aligned as `T`; viewing
            // initialised values as `MaybeUninit` is sound, and `fill` writes only values.
            fill(unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut MaybeUninit<T>, len) });
            return Self { lines, len, _values: std::marker::PhantomData };
        }
        let mut lines = Vec::<CacheLine>::with_capacity(need);
        let start = lines.spare_capacity_mut().as_mut_ptr() as *mut u8;
        // SAFETY: the capacity holds `need` lines, at least `len` values, aligned for `T`;
        // `fill` writes those values (the caller's contract) and the bytes past them in the
        // last line are zeroed here, so all `need` lines are initialised before `set_len`.
        unsafe {
            fill(std::slice::from_raw_parts_mut(start as *mut MaybeUninit<T>, len));
            let written = len * std::mem::size_of::<T>();
            std::ptr::write_bytes(start.add(written), 0, need * 64 - written);
            lines.set_len(need);
        }
        Self { lines, len, _values: std::marker::PhantomData }
    }

    fn lines_for(len: usize) -> usize {
        (len * std::mem::size_of::<T>()).div_ceil(64)
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values, are at least as aligned as `T`, and
        // any bits are a valid `T` (`Plain`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

/// The smallest pooled buffer of at least `need` lines, taken out of the pool.
fn pooled_lines(need: usize) -> Option<Vec<CacheLine>> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let best = pool.iter().enumerate().filter(|(_, b)| b.len() >= need).min_by_key(|(_, b)| b.len()).map(|(i, _)| i)?;
    Some(pool.swap_remove(best))
}

/// `count` zero cache lines from `alloc_zeroed`: large ones come as fresh zero pages from the
/// OS, where `vec![CacheLine([0; 64]); count]` stored every line (its element loop, ~3% of a
/// 448² question's time to first token, for buffers that are written before they are read).
fn zeroed_lines(count: usize) -> Vec<CacheLine> {
    if count == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<CacheLine>(count).expect("AMX buffer size overflows");
    // SAFETY: the layout has a non-zero size; a zeroed `CacheLine` is a valid value, and the
    // allocation is the global allocator's with exactly the layout `Vec<CacheLine>` frees with.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut CacheLine;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, count, count)
    }
}

impl<T: Plain> Drop for Aligned<T> {
    fn drop(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pool.iter().map(|b| b.len() * 64).sum();
        if pool.len() < POOL_BUFFERS && held + lines.len() * 64 <= POOL_MAX_BYTES {
            pool.push(lines);
        }
    }
}

impl WeightRows<'_> {
    /// Whether the weight is `[n, k]`: the packers read it by raw pointers on that promise.
    fn holds(&self, n: usize, k: usize) -> bool {
        match self {
            WeightRows::Quantized(q) => q.dims() == (n, k),
            WeightRows::Bf16(v) => v.len() == n * k,
            WeightRows::F16(v) => v.len() == n * k,
            WeightRows::F32(v) => v.len() == n * k,
        }
    }

    /// A q8_0 weight's int8 quants `[n * k]` and scales `[n * k / 32]`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn q8_0(&self) -> Option<(&[i8], &[half::f16])> {
        match self {
            WeightRows::Quantized(q) => q.q8_0_parts(),
            WeightRows::Bf16(_) | WeightRows::F16(_) | WeightRows::F32(_) => None,
        }
    }
}

/// Rows and columns of one 2 x 2-tile block.
const MICRO: usize = 32;
/// Output rows per pass of a task over its columns.
const ROW_BLOCK: usize = 256;
/// Most output columns per task.
const COL_BLOCK: usize = 256;
/// k values per slice of a task's walk over K.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K_BLOCK: usize = 512;

/// Whether many-row products take the AMX GEMM: on CPUs with AMX-TILE, AMX-BF16 and
/// AVX512-BF16 whose kernel grants the tile state, unless the environment sets `IRIS_NO_AMX`
/// (then they take the AVX-512 GEMMs, for A/B measurements).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("IRIS_NO_AMX").is_none() && cpu_and_os_support())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_and_os_support() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512vl")) {
        return false;
    }
    // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: permission for the whole process
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
    if !granted {
        tracing::info!("the CPU has AMX but the kernel did not grant the tile state; using AVX-512 kernels");
    }
    granted
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn cpu_and_os_support() -> bool {
    false
}

/// `out[r * n + o] = sum_i x[r * k + i] * W[o, i]` for `m` rows of `x` (any `m`, any `k`).
/// Only call where `available()`.
#[cfg(test)]
pub(crate) fn gemm(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, out: &mut [f32]) {
    assert_eq!(out.len(), m * n, "AMX GEMM output for [{m}, {n}]");
    gemm_into(x, m, w, n, k, ColumnTiles::new(out, m, n), None);
}

/// `gemm` into a new `[m, n]` buffer, written once (never zeroed first), each row through
/// `epilogue`: for many rows as each block of accumulators is written, still in L2, for few
/// afterwards. CogVLM2's vision fc1 with its bias and GELU (a 566 MB output) took 565-585 ms
/// as separate passes against 512-536 ms fused (`fused_activation_bench`, Xeon VM).
pub(crate) fn gemm_vec(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, epilogue: Option<&Epilogue>) -> Vec<f32> {
    if k == 0 {
        let mut out = vec![0.0; m * n];
        if let Some(e) = epilogue {
            e.apply_rows(&mut out, n);
        }
        return out;
    }
    // the activation-tile layout applies the epilogue per block; after the weight-tile one
    let in_blocks = m >= weight_tiles::MAX_ROWS;
    // SAFETY: `gemm_into` writes every value (its tasks cover all columns, each for all rows).
    let mut out = unsafe { crate::tiled_output::written_once(m, n, |dst| gemm_into(x, m, w, n, k, dst, epilogue.filter(|_| in_blocks))) };
    if let (Some(e), false) = (epilogue, in_blocks) {
        e.apply_rows(&mut out, n);
    }
    out
}

fn gemm_into(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, dst: ColumnTiles, epilogue: Option<&Epilogue>) {
    assert!(x.len() == m * k, "AMX GEMM operands: x {} values for [{m}, {k}]", x.len());
    assert!(w.holds(n, k), "AMX GEMM weight is not [{n}, {k}]");
    assert!(k > 0, "AMX GEMM over zero features");
    assert!(available(), "AMX GEMM called without AMX");
    if m == 0 || n == 0 {
        return;
    }
    if m < weight_tiles::MAX_ROWS {
        assert!(epilogue.is_none(), "the weight-tile GEMM has no epilogue");
        weight_tiles::gemm(x, m, w, n, k, dst);
    } else {
        activation_tiles_gemm(x, m, w, n, k, dst, epilogue);
    }
}

/// The layout for many rows: activations as the A tiles, weight panels as the B tiles (the
/// module header's blocking). Operands checked by `gemm_into`.
fn activation_tiles_gemm(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, dst: ColumnTiles, epilogue: Option<&Epilogue>) {
    let (k_pad, m_pad) = (k.next_multiple_of(K_STEP), m.next_multiple_of(MICRO));
    // [m, k] f32 -> [m_pad, k_pad] bf16, zero rows and columns past m, k
    let fill = |a: &mut [MaybeUninit<u16>]| {
        a.par_chunks_mut(k_pad).enumerate().for_each(|(r, dst)| {
            if r < m {
                // SAFETY: `available()` checked AVX-512 F/BF16/VL.
                unsafe { pack::round_row_avx512(&x[r * k..(r + 1) * k], dst) }
            } else {
                dst.fill(MaybeUninit::new(0));
            }
        })
    };
    // SAFETY: `fill` writes every value: rows below m rounded from `x` (zero past k), the
    // others zero.
    let a = unsafe { Aligned::<u16>::written_by(m_pad * k_pad, fill) };
    let panel_len = k_pad / 2 * PANEL;
    let panels = n.div_ceil(PANEL);
    // at least four tasks per thread when the weight is wide enough, so that no thread idles
    let per_task = panels.div_ceil(4 * rayon::current_num_threads()).clamp(1, COL_BLOCK / PANEL);
    (0..panels.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let (p0, count) = (t * per_task, per_task.min(panels - t * per_task));
        // this task's columns, packed: [count][k_pad / 2][PANEL] pairs
        let mut packed = Aligned::<u32>::reused(count * panel_len);
        let mut scratch = Aligned::<f32>::reused(16 * k_pad);
        for (p, panel) in packed.as_mut_slice().chunks_exact_mut(panel_len).enumerate() {
            // SAFETY: `available()` checked AVX-512 F/BF16 (and F16C comes with them).
            unsafe { pack::panel_avx512(w, n, k, (p0 + p) * PANEL, scratch.as_mut_slice(), pack::uninit_view(panel)) };
        }
        let (first, cols, ldc) = (p0 * PANEL, (count * PANEL).min(n - p0 * PANEL), count * PANEL);
        // [ROW_BLOCK][ldc] accumulators
        let mut acc = Aligned::<f32>::reused(ROW_BLOCK.min(m_pad) * ldc);
        for r0 in (0..m_pad).step_by(ROW_BLOCK) {
            let rows_pad = ROW_BLOCK.min(m_pad - r0);
            let block = TaskBlock { a: a.as_slice(), k_pad, r0, rows_pad, panels: packed.as_slice(), panel_len, acc: &mut acc.as_mut_slice()[..rows_pad * ldc], ldc, accumulate: false };
            // SAFETY: `available()` checked AMX and the tile permission.
            unsafe { block.run() };
            let rows = rows_pad.min(m - r0);
            if let Some(e) = epilogue {
                acc.as_mut_slice().chunks_exact_mut(ldc).take(rows).for_each(|row| e.apply(&mut row[..cols], first));
            }
            // SAFETY: this task alone owns columns first..first + cols of the output.
            unsafe { dst.write(r0, rows, first, cols, acc.as_slice(), ldc) };
        }
    });
}

/// One task's share: rows `r0..r0 + rows_pad` of the padded activations against `panels`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct TaskBlock<'a> {
    /// bf16 activation rows, `k_pad` apart.
    a: &'a [u16],
    /// The k values the product sums over (a multiple of `K_STEP`).
    k_pad: usize,
    r0: usize,
    rows_pad: usize,
    /// `ldc / PANEL` panels, `panel_len` u32 apart, each at least `k_pad / 2` pair rows.
    panels: &'a [u32],
    panel_len: usize,
    acc: &'a mut [f32],
    ldc: usize,
    /// Add to what `acc` holds, instead of overwriting it.
    accumulate: bool,
}

impl TaskBlock<'_> {
    /// # Safety
    /// AMX must be `available()`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run(self) {
        let panel_len = self.panel_len;
        assert!(self.a.len() >= (self.r0 + self.rows_pad) * self.k_pad && self.acc.len() == self.rows_pad * self.ldc);
        assert!(panel_len >= self.k_pad / 2 * PANEL && self.panels.len() >= (self.ldc / PANEL).saturating_sub(1) * panel_len + self.k_pad / 2 * PANEL);
        assert!(self.rows_pad.is_multiple_of(MICRO) && self.ldc.is_multiple_of(PANEL) && self.k_pad > 0 && self.k_pad.is_multiple_of(K_STEP));
        // SAFETY: per the contract; every block's A rows, panel slice and accumulators are inside
        // the slices asserted above.
        unsafe {
            tiles::configure();
            for kb in (0..self.k_pad).step_by(K_BLOCK) {
                let steps = K_BLOCK.min(self.k_pad - kb) / K_STEP;
                for i in (0..self.rows_pad).step_by(MICRO) {
                    let a = self.a.as_ptr().add((self.r0 + i) * self.k_pad + kb);
                    for j in 0..self.ldc / PANEL {
                        // pair row kb / 2 of panel j
                        let b = self.panels.as_ptr().add(j * panel_len + kb / 2 * PANEL);
                        let c = self.acc.as_mut_ptr().add(i * self.ldc + j * PANEL);
                        tiles::block_2x2(a, self.k_pad, b, steps, c, self.ldc, self.accumulate || kb > 0);
                    }
                }
            }
            tiles::release();
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(self) {
        unreachable!("AMX is x86-64 only")
    }
}

/// Plain twin of `gemm` for any CPU: bf16-rounded activations and weights, products summed in
/// f32 in k order.
#[cfg(test)]
pub(crate) fn gemm_reference(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, out: &mut [f32]) {
    let k_pad = k.next_multiple_of(K_STEP);
    let mut panel = vec![0u32; k_pad / 2 * PANEL];
    let mut row = vec![0f32; k_pad];
    let mut xr = vec![0u16; k_pad];
    let widen = |bits: u16| f32::from_bits((bits as u32) << 16);
    for first in (0..n).step_by(PANEL) {
        pack::panel_scalar(w, n, k, first, &mut row, &mut panel);
        for r in 0..m {
            pack::round_row_scalar(&x[r * k..(r + 1) * k], &mut xr);
            for c in 0..PANEL.min(n - first) {
                let mut acc = 0f32;
                for (p, xp) in xr.chunks_exact(2).enumerate() {
                    let wp = panel[p * PANEL + c];
                    acc += widen(xp[0]) * widen(wp as u16);
                    acc += widen(xp[1]) * widen((wp >> 16) as u16);
                }
                out[r * n + first + c] = acc;
            }
        }
    }
}
