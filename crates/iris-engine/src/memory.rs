//! Memory the allocator keeps for reuse, handed back to the OS between the phases of a request.
//! The engine does not know the allocator (the binary picks it), so the binary registers how to
//! release its cache; without a registration nothing happens.
//!
//! Why: `iris` lets mimalloc keep freed pages for 10 s instead of its default 1 s, so that a
//! vision layer slower than 1 s (CogVLM2 at 1344²: ~1.6 s) reuses the previous layer's
//! activation buffers instead of faulting in and zeroing fresh ones. Released after loading,
//! after the media encode and after the prefill (the scheduler: after each media encode), the
//! kept pages never outlive their phase: Qwen2-VL-2B's 448² question peaked at 1.136-1.141x its
//! weights against 1.145x with the 1 s delay (BENCHMARKS.md).

use crate::scheduler::IdleHook;
use std::sync::OnceLock;

static RELEASE: OnceLock<IdleHook> = OnceLock::new();

/// Registers how to release the allocator's cached memory (once; later calls are ignored).
pub fn set_release_hook(hook: IdleHook) {
    let _ = RELEASE.set(hook);
}

/// Runs the registered release, if any.
pub fn release_cached_memory() {
    if let Some(hook) = RELEASE.get() {
        (hook.0)();
    }
}
