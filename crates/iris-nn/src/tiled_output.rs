//! The `[m, n]` output of a GEMM whose parallel tasks each own a region of it (a range of
//! columns, or of rows): every task computes small `[rows, cols]` tiles and writes them straight
//! into place, so the output is never collected per task and concatenated (which held it twice).

/// Raw pointer to a row-major `[m, n]` f32 output shared by the tasks of one parallel loop.
#[derive(Clone, Copy)]
pub(crate) struct ColumnTiles {
    ptr: *mut f32,
    m: usize,
    n: usize,
}

// SAFETY: tasks write disjoint regions (the contract of `write`), and the buffer outlives the
// parallel loop that shares it (it is borrowed for `new`'s caller's whole scope).
unsafe impl Send for ColumnTiles {}
unsafe impl Sync for ColumnTiles {}

impl ColumnTiles {
    pub fn new(out: &mut [f32], m: usize, n: usize) -> Self {
        assert_eq!(out.len(), m * n, "output is [{m}, {n}]");
        Self { ptr: out.as_mut_ptr(), m, n }
    }

    /// The output for `m * n` values at `ptr`, possibly not yet initialised: the tasks'
    /// `write`s must together cover every value before the buffer is read (a GEMM's output;
    /// zeroing it first was ~3-5% of a prefill).
    ///
    /// # Safety
    /// `ptr` is valid for writes of `m * n` f32 for as long as the tiles are used.
    pub unsafe fn for_uninit(ptr: *mut f32, m: usize, n: usize) -> Self {
        Self { ptr, m, n }
    }

    /// `[m, n]`.
    pub fn dims(self) -> (usize, usize) {
        (self.m, self.n)
    }

    /// Pointer to value `[row][first]`, for writers with their own tile layout (the AMX GEMM's
    /// transposed tiles); rows are `dims().1` values apart.
    ///
    /// # Safety
    /// As for `write`, for every value written through the pointer, which must stay inside
    /// the output.
    pub unsafe fn at(self, row: usize, first: usize) -> *mut f32 {
        assert!(row < self.m && first < self.n);
        // SAFETY: in bounds (asserted above).
        unsafe { self.ptr.add(row * self.n + first) }
    }

    /// Writes rows `row..row + rows`, columns `first..first + cols` of the output from `tile`,
    /// a row-major tile with `stride` values per row.
    ///
    /// # Safety
    /// No other task may read or write this region while the output is shared, and the buffer
    /// given to `new` (or `for_uninit`) must still be alive.
    pub unsafe fn write(self, row: usize, rows: usize, first: usize, cols: usize, tile: &[f32], stride: usize) {
        let streamed = self.m * self.n * std::mem::size_of::<f32>() >= STREAMED_OUTPUT_BYTES;
        // SAFETY: per this function's contract.
        unsafe { self.write_rows(row, rows, first, cols, tile, stride, streamed) }
    }

    /// `write`, with non-temporal stores where `streamed` and the CPU has AVX-512F.
    ///
    /// # Safety
    /// As for `write`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn write_rows(self, row: usize, rows: usize, first: usize, cols: usize, tile: &[f32], stride: usize, streamed: bool) {
        assert!(row + rows <= self.m && first + cols <= self.n && cols <= stride && (rows == 0 || tile.len() >= (rows - 1) * stride + cols));
        #[cfg(target_arch = "x86_64")]
        if streamed && std::is_x86_feature_detected!("avx512f") {
            for r in 0..rows {
                // SAFETY: in bounds (asserted above), exclusive per the caller's contract; the
                // CPU has AVX-512F (checked above).
                unsafe { stream_row(&tile[r * stride..r * stride + cols], self.ptr.add((row + r) * self.n + first)) };
            }
            // non-temporal stores are weakly ordered: make them visible before the task ends
            // SAFETY: SSE is part of x86-64.
            unsafe { std::arch::x86_64::_mm_sfence() };
            return;
        }
        let _ = streamed;
        for r in 0..rows {
            let src = &tile[r * stride..r * stride + cols];
            // SAFETY: in bounds (asserted above); exclusive per the caller's contract. A raw copy,
            // not a slice: the destination may not be initialised yet (`for_uninit`).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add((row + r) * self.n + first), cols) };
        }
    }
}

/// Outputs of at least this many bytes are written with non-temporal stores: they cannot stay
/// in cache until the next operation reads them, so an ordinary store only adds a read of each
/// line before it is overwritten. On the Xeon VM of BENCHMARKS.md (q8_0 AMX GEMM, best of three,
/// `vision_gemm_shapes`, three alternating rounds): CogVLM2's 1344² vision fc1 (a 566 MB output)
/// 261-277 ms against 229-254 ms streamed, its qkv (198 MB) 98-104 against 85-90 ms, its fc2
/// (66 MB out of a 15360-deep product) level. Qwen2-VL's 448² products
/// (15-21 MB) ran ~10% faster streamed in isolation but its vision encode did not (median of
/// eight alternating runs 1378 against 1370 ms): the next operation then read the output from
/// memory instead of cache.
const STREAMED_OUTPUT_BYTES: usize = 32 << 20;

/// Copies `src` to `dst` with non-temporal stores from `dst`'s first 64-byte boundary (plain
/// copies before it and for the last partial vector).
///
/// # Safety
/// The CPU must have AVX-512F; `dst` is valid for writes of `src.len()` f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_row(src: &[f32], dst: *mut f32) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_stream_ps};
    let len = src.len();
    // values before the first 64-byte boundary of `dst`, then whole 16-value vectors
    let head = ((dst as usize).wrapping_neg() % 64 / std::mem::size_of::<f32>()).min(len);
    let body = (len - head) / 16 * 16;
    // SAFETY: every access is inside `src` and the `len` values at `dst`; the streamed stores
    // start on a 64-byte boundary.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
        for i in (head..head + body).step_by(16) {
            _mm512_stream_ps(dst.add(i), _mm512_loadu_ps(src.as_ptr().add(i)));
        }
        std::ptr::copy_nonoverlapping(src.as_ptr().add(head + body), dst.add(head + body), len - head - body);
    }
}

/// A new `[m, n]` buffer that `fill` writes through `ColumnTiles`, never zeroed first (a GEMM's
/// output; `vec![0.0; m * n]` stored every value once more).
///
/// # Safety
/// `fill` must write every one of the `m * n` values before it returns.
pub(crate) unsafe fn written_once(m: usize, n: usize, fill: impl FnOnce(ColumnTiles)) -> Vec<f32> {
    let len = m.checked_mul(n).expect("GEMM output size overflows");
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: the capacity holds m * n values, which `fill` writes (the caller's contract) before
    // `set_len` exposes them.
    unsafe {
        fill(ColumnTiles::for_uninit(out.as_mut_ptr(), m, n));
        out.set_len(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ColumnTiles;

    /// Streamed writes (non-temporal stores from each row segment's first 64-byte boundary,
    /// plain copies around them) leave the same output as plain ones, for segments starting on
    /// and off a boundary and ending inside a vector. CPUs without AVX-512F take the plain path
    /// twice.
    #[test]
    fn streamed_writes_match_plain_ones() {
        let (m, n, stride) = (7, 77, 40);
        let tile: Vec<f32> = (0..m * stride).map(|i| i as f32 * 0.5 - 3.0).collect();
        for (row, rows, first, cols) in [(0, 7, 0, 40), (1, 5, 3, 37), (2, 4, 16, 33), (6, 1, 61, 16), (0, 3, 5, 1), (3, 2, 9, 0)] {
            let mut outputs = [vec![f32::NAN; m * n], vec![f32::NAN; m * n]];
            for (out, streamed) in outputs.iter_mut().zip([false, true]) {
                let tiles = ColumnTiles::new(out, m, n);
                // SAFETY: one writer, in bounds, and the buffer outlives the call.
                unsafe { tiles.write_rows(row, rows, first, cols, &tile, stride, streamed) };
            }
            let same = outputs[0].iter().zip(&outputs[1]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "rows {row}..+{rows}, columns {first}..+{cols}");
            assert_eq!(outputs[0].iter().filter(|v| !v.is_nan()).count(), rows * cols, "rows {row}..+{rows}, columns {first}..+{cols}");
        }
    }
}
