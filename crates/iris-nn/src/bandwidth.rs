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

/// Sum of `values` with 16 independent lanes, so the loop vectorises and is not bound by the
/// latency of one chain of additions.
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in values.chunks_exact(16) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + values.chunks_exact(16).remainder().iter().sum::<f32>()
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
        let sum: f32 = values.par_chunks(TASK).map(lane_sum).sum();
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
    fn lane_sum_adds_every_value_including_the_tail() {
        let values: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(super::lane_sum(&values), (0..37).sum::<i32>() as f32);
    }

    #[test]
    fn probe_reports_a_positive_rate() {
        let gb_per_s = super::read_bandwidth_gb_per_s(8 << 20, 2).unwrap();
        println!("8 MiB read: {gb_per_s:.1} GB/s");
        assert!(gb_per_s > 0.0 && gb_per_s.is_finite());
    }
}
