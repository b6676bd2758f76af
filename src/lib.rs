//! tripletlab: evaluate and fine-tune text-embedding models on retrieval triplets.
//!
//! [`core`] computes everything and depends on no UI crate; [`cli`] is a thin command-line layer
//! over it; [`gui`] is the eframe desktop app over it.

pub mod cli;
pub mod core;
pub mod gui;

pub use crate::core::*;

/// mimalloc keeps freed pages for reuse: candle allocates a fresh buffer for every tensor, and with
/// the system allocator a large share of training time went to the kernel zeroing new pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to return freed memory to the OS: a training step frees and re-allocates
/// the same large buffers, and re-faulting them cost about a quarter of the step (measured).
/// Call once at start-up.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's option enum (the same index in v2 and v3).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an integer option of the allocator; -1 means "never purge". No memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
