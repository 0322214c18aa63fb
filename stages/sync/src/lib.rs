//! `spooky-sync`: the small, std-only concurrency primitives every Spooky exchange relies on.
//!
//! * [`Cap`] — an inflight cap handing out RAII [`Permit`]s, with a fair async [`Cap::acquire`].
//! * [`acquire_all`] / [`try_acquire_all`] — hierarchical acquire (global → upstream → backend),
//!   all-or-nothing.
//! * [`Drain`] — counts live exchanges; [`Drain::wait`] completes when the last one ends.
//! * [`Latch`] — first-wins: exactly one hedged attempt wins.
//! * [`Breaker`] — a circuit breaker: closed, open, half-open with exactly N probes.
//!
//! No tokio here: the futures use `std::task::Waker` only, so the same code runs under loom
//! (`RUSTFLAGS="--cfg loom"`, see `loom-tests/`) and under any executor.

mod breaker;
mod cap;
mod drain;
mod hierarchy;
mod latch;
mod loom;

pub use breaker::{Breaker, BreakerPolicy, BreakerState, Rejected, Ticket};
pub use cap::{Acquire, Cap, Closed, Permit, TryAcquireError};
pub use drain::{Drain, DrainGuard, DrainWait};
pub use hierarchy::{HierarchyError, PermitSet, acquire_all, try_acquire_all};
pub use latch::{Latch, Race};
