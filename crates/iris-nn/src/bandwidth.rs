//! How fast this machine streams memory right now: a parallel read of a buffer far larger than
//! the caches. Decode reads every weight once per token, so tokens/s times bytes per token over
//! this figure is decode's fraction of the bandwidth roofline. Measured rather than configured
//! because on shared machines it moves by tens of percent within minutes (BENCHMARKS.md).

use rayon::prelude::*;
use std::time::Instant;

/// Bytes read per pass: 256 MiB, eight times a 32 MiB L3, so nearly every byte comes from DRAM.
pub const PROBE_BYTES: usize = 256 << 20;

/// Values summed per parallel task.
const TASK: usize = 1 << 16;

/// Sum of `values` with `LANES` independent lanes, so the loop vectorises and is not bound by
/// the latency of one chain of additions.
#[inline(always)]
fn lane_sum<const LANES: usize>(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in values.chunks_exact(LANES) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + values.chunks_exact(LANES).remainder().iter().sum::<f32>()
}

/// `lane_sum` in eight 256-bit registers. Built for the x86-64 baseline the sum runs in 128-bit
/// loads, twice the instructions per byte, so fewer cache-line misses fit in the core's
/// out-of-order window: on the AVX2 VM (Zen 2, 2026-12-06) that probe read 22-26 GB/s while
/// the q8_0 decode kernels streamed 28 and a 256-bit sum 25-30, i.e. decode showed 128% of
/// its "roofline".
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_sum_avx2(values: &[f32]) -> f32 {
    lane_sum::<64>(values)
}

/// The widest `lane_sum` this CPU runs.
fn wide_lane_sum(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { lane_sum_avx2(values) };
    }
    lane_sum::<16>(values)
}

/// The best of `passes` reads of a `bytes`-sized buffer across the rayon pool, in GB/s. The
/// buffer is written once first, so page faults are not timed. It is mapped from the kernel and
/// unmapped on return (a heap buffer could stay in the allocator's cache and in the RSS); the
/// error is the kernel's refusal to map it.
pub fn read_bandwidth_gb_per_s(bytes: usize, passes: usize) -> std::io::Result<f64> {
    let mut map = memmap2::MmapMut::map_anon(bytes.max(4))?;
    // SAFETY: the mapping is page-aligned (so f32-aligned), `bytes / 4` f32 long, and owned here.
    let values = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut f32, bytes / 4) };
    values.fill(1.0);
    let values = &*values;
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let sum: f32 = values.par_chunks(TASK).map(wide_lane_sum).sum();
        let seconds = t.elapsed().as_secs_f64();
        // every value is 1: a wrong sum means the read was optimised away or cut short
        assert!(sum >= (values.len() as f32) * 0.5, "bandwidth probe summed {sum}");
        best = best.max(values.len() as f64 * 4.0 / seconds / 1e9);
    }
    drop(map);
    Ok(best)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_sums_add_every_value_including_the_tail() {
        let values: Vec<f32> = (0..137).map(|i| i as f32).collect();
        let exact = (0..137).sum::<i32>() as f32;
        assert_eq!(super::lane_sum::<16>(&values), exact);
        assert_eq!(super::wide_lane_sum(&values), exact);
    }

    #[test]
    fn probe_reports_a_positive_rate() {
        let gb_per_s = super::read_bandwidth_gb_per_s(8 << 20, 2).unwrap();
        println!("8 MiB read: {gb_per_s:.1} GB/s");
        assert!(gb_per_s > 0.0 && gb_per_s.is_finite());
    }
}
