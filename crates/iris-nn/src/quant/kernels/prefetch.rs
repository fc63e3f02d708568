//! Software prefetch of the quantized decode kernels' weight streams: how far ahead each kernel
//! asks for lines, into which cache, and on which CPUs at all. A decode GEMV reads every weight
//! byte once, so the only question is whether the hardware prefetchers keep enough lines in
//! flight by themselves. On the Intel Xeon VM they did not (the distances below); on the Zen 4
//! VM they mostly did for one activation row, where far software requests got in their way,
//! but not for several (`DecodePrefetch`).

use super::Q4KBlock;
use std::sync::OnceLock;

/// The default distance ahead of the weight stream for the q8_0 decode kernels' prefetch
/// (`DecodePrefetch` picks it or another per CPU, kernel and row count). Addresses are formed
/// with `wrapping_add`: near the end of a matrix they point past its allocation, which a
/// prefetch may do but `add` may not. Qwen2-VL-2B q8_0 text decode on the 2026-12-05 VM (a
/// 2-core Intel Xeon with AMX, 25-30 GB/s), prefetching into L1: 13.6-14.1 tok/s without,
/// 14.5-14.8 at 512 B, 15.9-16.7 at 8 KiB, 16.4-16.9 at 16 KiB, 15.3-15.7 at 32 KiB. Into L2
/// (`prefetch_to_l2`; a tuning build that read the distance from the environment, so only
/// comparable with itself): 2, 4, 8 and 16 KiB all within 16.7-17.5.
pub(super) const PREFETCH_AHEAD_Q8_0: usize = 8192;

/// The same for the 4-row q4_K kernel. Into L1 (before `prefetch_to_l2`) it was the more
/// sensitive: without prefetching it streamed 17 GB/s from DRAM (`gemv_bench`, Zen 5 VM)
/// against a ~28 GB/s streaming sum, 1-8 KiB ahead 21.0-22.9 GB/s there; on the Xeon VM
/// Qwen2-VL-2B q4k text decode ran at 15.8-16.1 tok/s without, 21.1-21.8 at 1-2 KiB and
/// 18.4-19.9 at 3-8 KiB (the prefetches stalled: too many lines in flight). Into L2 (the same
/// tuning build), 2, 4, 6 and 8 KiB measured 22.8-24.1 tok/s, within noise of each other. On
/// a Zen 4 VM (2026-12-06, ~32 GB/s streaming sum, the same tuning build, runs alternated):
/// 2 KiB 24.8-26.5, 4 KiB 27.1-30.9 (medians 28.5-29.7 in three sets), 16 KiB 26.8-40.9
/// (medians 29.2-31.1), 32 and 64 KiB 27.5-35.6; so 16 KiB, which the Xeon did not try. None at
/// all, not tried then, beat every distance on that VM later for one activation row (not for
/// four: `DecodePrefetch`).
pub(super) const PREFETCH_AHEAD_Q4K: usize = 16384;

/// Starts loading the 64-byte line at `addr` into L2 (`prefetcht1`), not L1: the decode
/// kernels read each weight byte once, so L1 gains nothing from holding it early, and an L1
/// prefetch holds one of the core's few fill buffers until its line arrives, which capped how
/// many lines were in flight. Qwen2-VL-2B text decode on the Xeon VM, alternating the builds
/// before and after (BENCHMARKS.md): q8_0 15.85-17.26 → 16.71-18.11 tok/s over eight pairs,
/// q4k 22.59-23.62 → 24.99-25.24; `prefetcht2` measured the same as `t1`. AMD CPUs: see
/// `DecodePrefetch`.
#[inline(always)]
pub(super) fn prefetch_to_l2(addr: *const i8) {
    // SAFETY: SSE is part of x86-64; a prefetch of any address is harmless.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(addr) }
}

/// Prefetches the bytes `ahead` past the start of `group` (an interleaved q4_K group the 4-row
/// decode kernels are about to read), one request per 64-byte line of the group's size.
#[inline(always)]
pub(super) fn prefetch_ahead_of(group: &[Q4KBlock], ahead: usize) {
    let ahead = (group.as_ptr() as *const i8).wrapping_add(ahead);
    for line in 0..std::mem::size_of_val(group).div_ceil(64) {
        prefetch_to_l2(ahead.wrapping_add(64 * line));
    }
}

/// The farthest `IRIS_QUANT_PREFETCH` may ask for (a larger one is a typo, not a setting).
const MAX_SETTING: usize = 1 << 20;

/// Where the q8_0 and q4_K decode kernels prefetch, in bytes ahead of what they read (q8_0: the
/// current 64-byte line; q4_K: the group's start; `None`: not at all, the hardware prefetchers
/// alone), per CPU vendor, kernel family (AVX-512, or AVX2 and AVX-VNNI) and row count.
///
/// With the AVX-512 kernels on AMD CPUs one activation row (decode of one sequence) takes 2 KiB
/// for q8_0 and nothing for q4_K. Zen 4 VM (2026-12-06): 28 layers of Qwen2-VL-2B's text
/// weights plus the lm_head streamed from DRAM inside one compute step, settings alternated in
/// one process (a scratch harness, six rounds each, GB/s medians):
/// - q8_0 in a fast spell: 8 KiB 33.4, none 51.3, 2 KiB 53.2, 512 B 53.5. In slow spells
///   (~35 GB/s probes) 8 KiB 30.4-33.9, none 32.9-35.5, 2 KiB 32.0-35.9.
/// - q4_K in a fast spell: 16 KiB 39.5, none 49.1, 4 KiB 36.5, 8 KiB 47.5. In slow spells
///   16 KiB 28.9-32.3, none 34.2-34.5, 2 KiB 27.7-28.1, 4 KiB 31.7-32.0.
///
/// The AVX2 kernels on AMD want the far prefetch even for one row. AVX2 VM (Zen 2, 2026-12-06,
/// probes 28-33 GB/s): Qwen2-VL-2B text decode, `iris bench --image none --new-tokens 128`,
/// settings alternated, two rounds, tok/s: q8_0 at 8 KiB 17.28 / 17.07, none 14.34 / 14.01,
/// 2 KiB 17.41 / 17.03, 4 KiB 17.89 / 16.98, 16 KiB 17.01 / 16.40; q4_K at 16 KiB 24.30 /
/// 23.40 (unset) and 24.71 / 24.37 (set), none 20.17 / 19.91, 2 KiB 22.88 / 21.87, 4 KiB
/// 22.94 / 21.33. Zen 2's hardware prefetchers alone leave ~17% on the table.
///
/// Batched decode (2-8 rows) does several multiply-adds per weight line and stalls on memory
/// without the far prefetch: at four rows q4_K 16.6 without against 20.1 GB/s with 16 KiB,
/// q8_0 23.1 at 2 KiB against 26.5 at 8 KiB (8, 16 and 32 KiB level); at eight rows 8.4
/// against 10.1 and 14.2 against 15.0. So more rows, the AVX2 kernels and other CPUs keep the
/// constants above (prefetching paid on the Xeon VM). `IRIS_QUANT_PREFETCH=off` or `=BYTES`
/// (at most 1 MiB) sets every kernel's distance for every row count, for A/B runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DecodePrefetch {
    pub q8_0: Option<usize>,
    pub q4k: Option<usize>,
}

impl DecodePrefetch {
    /// The plan for this CPU (and environment), `kernel` and `rows` activation rows, decided
    /// once.
    pub(crate) fn get(kernel: super::Kernel, rows: usize) -> Self {
        static PLANS: OnceLock<[DecodePrefetch; 4]> = OnceLock::new();
        let plans = PLANS.get_or_init(|| {
            let amd = crate::flash_attention::cpu_is_amd();
            let cpu = [(true, 1), (true, 2), (false, 1), (false, 2)].map(|(avx512, rows)| Self::for_cpu(amd, avx512, rows));
            match std::env::var("IRIS_QUANT_PREFETCH") {
                Ok(value) => Self::from_setting(&value).map(|all| [all; 4]).unwrap_or_else(|| {
                    tracing::warn!("IRIS_QUANT_PREFETCH={value}: expected `off` or a byte count up to {MAX_SETTING}; using {cpu:?}");
                    cpu
                }),
                Err(_) => cpu,
            }
        });
        let avx2 = usize::from(kernel != super::Kernel::Avx512Vnni);
        plans[2 * avx2 + usize::from(rows > 1)]
    }

    /// `avx512`: the AVX-512 kernels; else the AVX2 and AVX-VNNI ones.
    fn for_cpu(amd: bool, avx512: bool, rows: usize) -> Self {
        if amd && avx512 && rows == 1 {
            Self { q8_0: Some(2048), q4k: None }
        } else {
            Self { q8_0: Some(PREFETCH_AHEAD_Q8_0), q4k: Some(PREFETCH_AHEAD_Q4K) }
        }
    }

    /// `off`, or a distance of at most `MAX_SETTING` bytes.
    fn from_setting(value: &str) -> Option<Self> {
        let ahead = match value.trim() {
            "off" => None,
            bytes => Some(bytes.parse().ok().filter(|&n: &usize| n <= MAX_SETTING)?),
        };
        Some(Self { q8_0: ahead, q4k: ahead })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_cpus_prefetch_less_for_one_row_and_the_setting_overrides() {
        let far = DecodePrefetch { q8_0: Some(PREFETCH_AHEAD_Q8_0), q4k: Some(PREFETCH_AHEAD_Q4K) };
        assert_eq!(DecodePrefetch::for_cpu(true, true, 1), DecodePrefetch { q8_0: Some(2048), q4k: None });
        assert_eq!(DecodePrefetch::for_cpu(true, true, 4), far);
        assert_eq!(DecodePrefetch::for_cpu(false, true, 1), far);
        assert_eq!(DecodePrefetch::for_cpu(true, false, 1), far);
        assert_eq!(DecodePrefetch::from_setting("off"), Some(DecodePrefetch { q8_0: None, q4k: None }));
        assert_eq!(DecodePrefetch::from_setting("4096"), Some(DecodePrefetch { q8_0: Some(4096), q4k: Some(4096) }));
        assert_eq!(DecodePrefetch::from_setting("far"), None);
        assert_eq!(DecodePrefetch::from_setting("18446744073709551615"), None);
    }
}
