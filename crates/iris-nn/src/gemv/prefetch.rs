//! How the decode GEMV's x86 kernels prefetch their weight streams (`Prefetch`): the measured
//! default per weight storage and CPU vendor, and an override for tuning runs
//! (`set_prefetch_override`, which `gemv_bench paired` uses to compare settings in one process).

use std::sync::atomic::{AtomicU64, Ordering};

/// A weight storage type, as `WeightRows` names it without the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightStorage {
    F32,
    F16,
    BF16,
}

/// How an x86 decode kernel prefetches its weight stream: not at all, or one `prefetcht0` (into
/// L1) or `prefetcht1` (into L2) per 64-byte line this many bytes ahead of each weight row's
/// stream. A task's rows are one contiguous run, so near a row's end this reaches into the next
/// rows (addresses formed with `wrapping_add`; past the end of the matrix a prefetch touches
/// nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    Off,
    L1(usize),
    L2(usize),
}

/// The prefetch each storage's kernel takes on this CPU, measured with `gemv_bench paired`
/// (BENCHMARKS.md), which alternates settings pass by pass in one process over Qwen2-VL-2B's
/// decode matrices (3.1 GB at 16 bits, in huge pages as the engine's allocator gives them): on a
/// VM whose bandwidth drifts by 2x between runs, run-against-run comparisons did not repeat.
/// Zen 4 VM, median ratios to the chosen setting within a pass, at ~30 and ~40-55 GB/s, the
/// last figure once one-activation-row calls with a long K went four weight rows at a time
/// (`GROUP_ROWS`):
/// - bf16 on AVX512-BF16 (`avx512_bf16`): 2 KiB into L2. 4 KiB 0.94-0.99x, 8-32 KiB 0.79-0.95x,
///   none 0.87-0.96x, 2 KiB into L1 0.86-0.95x.
/// - f16 (widening): none. 4-32 KiB into L2 0.95-1.03x, 2 KiB into L2 0.82-0.89x, L1 0.87-1.00x.
///   (With 4 KiB pages, 16 KiB into L2 ran 1.33x, but the engine's weights do not sit in those.)
/// - f32 (widening): none; 2-32 KiB into L2 0.96-1.01x, 2 KiB into L1 0.95x.
/// - Intel (the Xeon VM, whole-decode runs before this tool): 2 KiB into L1 for every storage,
///   8.8-9.8 tok/s against 7.6-8.3 without; into L2 4 KiB ahead within -4..+1%.
///
/// Batched decode (2-8 activation rows, `gemv_bench paired f16 4` and so on) on AMD: 32 KiB
/// into L2 for both kernels. Each weight line now costs several multiply-adds, and without a
/// prefetch far enough ahead the loop stalled on memory: f16 at two / four / eight rows ran
/// 1.36-1.70x / 2.07x / 1.71x with 32 KiB into L2 against none, bf16 1.15 / 1.18 / 1.55x
/// against 2 KiB (2-16 KiB lay between; 64 KiB within 3% of 32). Intel keeps its one-row
/// setting, unmeasured there.
fn default_prefetch(storage: WeightStorage, rows: usize) -> Prefetch {
    static DEFAULTS: std::sync::OnceLock<[[Prefetch; 3]; 2]> = std::sync::OnceLock::new();
    let defaults = DEFAULTS.get_or_init(|| {
        let amd = crate::flash_attention::cpu_is_amd();
        let widening = if amd { Prefetch::Off } else { Prefetch::L1(2048) };
        #[cfg(target_arch = "x86_64")]
        let bf16 = if super::avx512_bf16::available() { Prefetch::L2(2048) } else { widening };
        #[cfg(not(target_arch = "x86_64"))]
        let bf16 = widening;
        let one_row = [widening, widening, bf16];
        [one_row, if amd { [Prefetch::L2(32768); 3] } else { one_row }]
    });
    defaults[usize::from(rows > 1)][storage as usize]
}

/// `set_prefetch_override`'s settings per `WeightStorage`, 0 for none (see `encode`).
static PREFETCH_OVERRIDE: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Replaces the default prefetch of `storage`'s kernel (`None`: back to the default), for tuning
/// runs such as `gemv_bench paired`; calls already running keep the setting they started with.
pub fn set_prefetch_override(storage: WeightStorage, prefetch: Option<Prefetch>) {
    // [2-bit kind][62-bit distance]
    let encode = |p: Prefetch| match p {
        Prefetch::Off => 1 << 62,
        Prefetch::L1(d) => 2 << 62 | d as u64,
        Prefetch::L2(d) => 3 << 62 | d as u64,
    };
    PREFETCH_OVERRIDE[storage as usize].store(prefetch.map_or(0, encode), Ordering::Relaxed);
}

/// The prefetch `storage`'s kernel takes now for `rows` activation rows: the override if one is
/// set (for any row count), else the default.
pub fn prefetch_for(storage: WeightStorage, rows: usize) -> Prefetch {
    let bits = PREFETCH_OVERRIDE[storage as usize].load(Ordering::Relaxed);
    let distance = (bits & ((1 << 62) - 1)) as usize;
    match bits >> 62 {
        0 => default_prefetch(storage, rows),
        1 => Prefetch::Off,
        2 => Prefetch::L1(distance),
        _ => Prefetch::L2(distance),
    }
}
