//! Which worker this thread is. The daemon runs one single-threaded tokio runtime per worker
//! (per core), each on its own thread with its own sockets; a backend keeps one connection
//! pool per worker so an exchange's upstream connection lives on the exchange's own thread.
//! Threads that are not workers (tests, tools) count as worker 0.

use std::cell::Cell;
use std::num::NonZeroUsize;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index` (the daemon, when it starts a worker thread).
pub fn enter(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The calling thread's worker index (0 outside the daemon's workers).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The number of cores this process may run on (its CPU affinity, so `taskset` counts).
pub fn available() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
