//! CPU threading of candle for training-sized work.
//!
//! candle's CPU backend has two thread pools, both sized from the environment:
//! - matmuls (the `gemm` crate) run on rayon with `RAYON_NUM_THREADS` threads. When that variable
//!   is unset, candle works the count out again on *every* matmul by reading `/proc/cpuinfo`.
//! - element-wise ops of ≥ 64k elements run on a spinning barrier pool of `CANDLE_NUM_THREADS − 1`
//!   workers. These ops are memory-bound, so a second core gains little; but whenever the pool's
//!   worker is descheduled (another process, or gemm's own threads, on a 2-core machine) the
//!   calling thread spins at the barrier until it runs again. Measured on 2 cores at load 3, a
//!   tiny-shape step took 35 ms with the pool and 11 ms without.
//!
//! [`configure`] therefore pins `RAYON_NUM_THREADS` to the thread count and sets
//! `CANDLE_NUM_THREADS=1` (element-wise ops on the calling thread), unless the user set them.
//!
//! The binaries allocate with mimalloc, which by default hands freed memory back to the kernel
//! after a second. A 0.5B-shape step takes longer than that, so every step page-faulted its
//! activations (a 155 MB logits tensor among them) back in, zero-filled by the kernel:
//! [`configure`] turns that purge off, which took a 0.5B/4-layer step from 1.59 s to 1.36 s.
//! Peak RSS is unchanged; freed memory stays committed for the next step.
//!
//! gemm also splits a single product over threads once it holds more than 48·48·256
//! multiply-adds. A LoRA step at a small shape is hundreds of products of a few microseconds each
//! (the LoRA factors, attention per head, a 64-wide hidden): waking the pool costs more than
//! the second core saves. [`tune`] raises that threshold; the 0.5B/1.5B projections stay far
//! above it and still use every thread.

use std::sync::Once;

/// Multiply-adds below which a product runs on the calling thread (4·2²⁰; overridable with
/// `LORASWEEP_GEMM_THREADING_THRESHOLD` for measurement).
pub const GEMM_THREADING_THRESHOLD: usize = 4 << 20;

/// The thread count [`configure`] settles on: `threads`, else a positive
/// `RAYON_NUM_THREADS` already in the environment, else the CPUs this process may run on.
pub fn thread_count(threads: Option<usize>) -> usize {
    threads
        .filter(|&n| n > 0)
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_t`, the same in mimalloc v2 and
/// v3 (`libmimalloc-sys` exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the process up for training (see the module doc): `RAYON_NUM_THREADS` to
/// [`thread_count`]`(threads)`, `CANDLE_NUM_THREADS` to 1 unless already set, and mimalloc's
/// purge off (unless `MIMALLOC_PURGE_DELAY` is set). Returns the matmul thread count.
///
/// # Safety
/// It writes environment variables, so it must run before the process starts any other thread
/// (first thing in `main`, before a tokio runtime exists).
#[allow(unsafe_code)]
pub unsafe fn configure(threads: Option<usize>) -> usize {
    let n = thread_count(threads);
    // SAFETY: the caller guarantees the process is still single-threaded.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option (an atomic store inside mimalloc); -1 = never purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    n
}

/// Applies the matmul threading threshold once per process; later calls do nothing.
pub fn tune() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let threshold = std::env::var("LORASWEEP_GEMM_THREADING_THRESHOLD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GEMM_THREADING_THRESHOLD);
        gemm_common::gemm::set_threading_threshold(threshold);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_count_wins_and_zero_means_unset() {
        assert_eq!(thread_count(Some(3)), 3);
        assert!(thread_count(Some(0)) >= 1);
        assert!(thread_count(None) >= 1);
    }
}
