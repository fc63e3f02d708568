//! Where a model step runs: on a worker of the rayon pool that every kernel here (and candle's
//! CPU backend) parallelises on, with the pool's other workers kept awake for the step.
//!
//! A parallel loop started from a thread outside the pool is injected into it and the caller
//! sleeps until it finishes: two futex wake-ups per loop. A decode step starts a few hundred such
//! loops (every projection, norm and activation), so running the whole step on a pool worker,
//! where nested loops split with plain `join`, removes that per-loop hand-off.
//!
//! Between two loops an idle rayon worker spins for ~30 `yield`s and then sleeps on a futex;
//! the serial stretches of a decode step (norms, RoPE, residual adds) outlast that, so the
//! second worker slept and was woken ~125 times a token (`perf stat`: ~250 context switches a
//! token, q8_0 Qwen2-VL-2B). For the length of a step each other worker therefore runs
//! `keep_awake`: a job that takes pending work with `rayon::yield_now` and spins in between,
//! as llama.cpp's threads spin between operations.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Outermost steps running now, on any thread. Helpers spin only while there is one: with two
/// (concurrent callers, e.g. test threads) a spinning helper could hold a worker that the other
/// step's jobs wait for.
static ACTIVE_STEPS: AtomicUsize = AtomicUsize::new(0);

/// The longest a step waits for the other workers to take their helper jobs before it runs
/// without them (a worker busy with work from outside any step).
const HELPER_START_WAIT: Duration = Duration::from_millis(2);

thread_local! {
    /// Whether this thread is running a step: nested calls run in place.
    static IN_STEP: Cell<bool> = const { Cell::new(false) };
}

/// Runs `step` on a worker of the global rayon pool, or in place if this thread is already a
/// worker of some rayon pool, with the pool's other workers spinning for work until it
/// returns. (A call from inside one of the step's parallel jobs on another worker counts as a
/// second step: the helpers stop for the rest of the outer step. The engine makes no such
/// call.) Workers have rayon's default 2 MiB stack (the CLI main thread has 8 MiB); model
/// steps keep tensors on the heap.
pub fn on_compute_pool<R: Send>(step: impl FnOnce() -> R + Send) -> R {
    if IN_STEP.get() {
        return step();
    }
    /// Undoes a step's bookkeeping when it ends, panics included (so helpers stop spinning and
    /// the scope can unwind).
    struct Finish<'a> {
        done: &'a AtomicBool,
        /// This worker's flag before the step: another caller's step can run on a worker
        /// while that worker waits inside a step of its own.
        was_in_step: bool,
    }
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.done.store(true, Ordering::Release);
            IN_STEP.set(self.was_in_step);
            ACTIVE_STEPS.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let (done, started) = (AtomicBool::new(false), AtomicUsize::new(0));
    ACTIVE_STEPS.fetch_add(1, Ordering::AcqRel);
    rayon::scope(|scope| {
        let _finish = Finish { done: &done, was_in_step: IN_STEP.replace(true) };
        let owner = rayon::current_thread_index();
        let alone = || ACTIVE_STEPS.load(Ordering::Acquire) == 1;
        let helpers = if alone() { rayon::current_num_threads().saturating_sub(1) } else { 0 };
        for _ in 0..helpers {
            let (done, started) = (&done, &started);
            scope.spawn(move |_| {
                started.fetch_add(1, Ordering::AcqRel);
                // this worker may take its own helper while it waits inside the step: it
                // must not spin there, above the unfinished step
                if rayon::current_thread_index() != owner {
                    keep_awake(done);
                }
            });
        }
        // Other workers take the helper jobs from the bottom of this worker's queue, before
        // any job the step pushes later; waiting for that keeps each helper at the bottom of
        // an idle worker's stack, never above a job of the step it would wait on.
        let since = Instant::now();
        while started.load(Ordering::Acquire) < helpers && alone() && since.elapsed() < HELPER_START_WAIT {
            std::hint::spin_loop();
        }
        step()
    })
}

/// Runs the pool's pending jobs (nested loops of the step) until the step is `done`, spinning
/// between them; stops early when another step starts.
/// Every `IDLE_SPINS_PER_YIELD` idle rounds it also yields its core to the OS, which costs
/// ~1 µs on an idle machine and gives the core back where threads outnumber free cores.
fn keep_awake(done: &AtomicBool) {
    const IDLE_SPINS_PER_YIELD: u32 = 64;
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) && ACTIVE_STEPS.load(Ordering::Acquire) == 1 {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle.is_multiple_of(IDLE_SPINS_PER_YIELD) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn steps_run_on_a_pool_worker() {
        assert!(rayon::current_thread_index().is_none(), "the test harness thread is outside the pool");
        let inside = super::on_compute_pool(rayon::current_thread_index);
        assert!(inside.is_some());
    }

    #[test]
    fn steps_nest_and_their_loops_use_the_pool() {
        use rayon::prelude::*;
        let sum = super::on_compute_pool(|| super::on_compute_pool(|| (0..10_000u64).into_par_iter().map(|i| i * i).sum::<u64>()));
        assert_eq!(sum, (0..10_000u64).map(|i| i * i).sum::<u64>());
    }

    #[test]
    fn concurrent_steps_from_several_threads_finish() {
        use rayon::prelude::*;
        // more callers than workers, each step with nested parallel loops: with helpers
        // spinning regardless, two steps waiting on each other's helpers never finished
        let want: u64 = (0..20_000u64).map(|i| i % 7).sum();
        std::thread::scope(|threads| {
            for _ in 0..4 {
                threads.spawn(|| {
                    for _ in 0..50 {
                        let got = super::on_compute_pool(|| (0..20_000u64).into_par_iter().map(|i| i % 7).sum::<u64>());
                        assert_eq!(got, want);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_step_releases_the_helpers() {
        let caught = std::panic::catch_unwind(|| super::on_compute_pool(|| panic!("step failed")));
        assert!(caught.is_err());
        // the pool still runs steps
        assert_eq!(super::on_compute_pool(|| 7), 7);
    }
}
