//! Where a model step runs: on a worker of the rayon pool that every kernel here (and candle's
//! CPU backend) parallelises on.
//!
//! A parallel loop started from a thread outside the pool is injected into it and the caller
//! sleeps until it finishes: two futex wake-ups per loop. A decode step starts a few hundred such
//! loops (every projection, norm and activation), so running the whole step on a pool worker,
//! where nested loops split with plain `join`, removes that per-loop hand-off.

/// Runs `step` on a worker of the global rayon pool, or in place if this thread is already a
/// worker of some rayon pool. Workers have rayon's default 2 MiB stack (the CLI main thread
/// has 8 MiB); model steps keep tensors on the heap.
pub fn on_compute_pool<R: Send>(step: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| step())
}

#[cfg(test)]
mod tests {
    #[test]
    fn steps_run_on_a_pool_worker() {
        assert!(rayon::current_thread_index().is_none(), "the test harness thread is outside the pool");
        let inside = super::on_compute_pool(rayon::current_thread_index);
        assert!(inside.is_some());
    }
}
