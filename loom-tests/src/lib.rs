//! `spooky-loom-tests`: loom models of `spooky-sync`, one test per invariant, in `tests/`.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p spooky-loom-tests --release`
//! (with its own `CARGO_TARGET_DIR`, so the loom build never invalidates the normal one).
//! Without `--cfg loom` the tests compile to nothing.
