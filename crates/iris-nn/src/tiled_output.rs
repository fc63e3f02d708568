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
        assert!(row + rows <= self.m && first + cols <= self.n && cols <= stride && (rows == 0 || tile.len() >= (rows - 1) * stride + cols));
        for r in 0..rows {
            let src = &tile[r * stride..r * stride + cols];
            // SAFETY: in bounds (asserted above); exclusive per the caller's contract. A raw copy,
            // not a slice: the destination may not be initialised yet (`for_uninit`).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add((row + r) * self.n + first), cols) };
        }
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
