//! First-wins latch for hedged attempts: of all the attempts racing, exactly one wins.

use crate::loom::{Arc, AtomicUsize, Ordering};

const NOBODY: usize = usize::MAX;

/// The outcome of [`Latch::try_win`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Race {
    /// This attempt won: its response is the one sent.
    Won,
    /// Another attempt (the one named) won first: this one must be cancelled.
    Lost { winner: usize },
}

/// A latch that is set once, by the first attempt to claim it. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Latch {
    winner: Arc<AtomicUsize>,
}

impl Default for Latch {
    fn default() -> Self {
        Latch::new()
    }
}

impl Latch {
    /// An unset latch.
    pub fn new() -> Self {
        Latch {
            winner: Arc::new(AtomicUsize::new(NOBODY)),
        }
    }

    /// Claims the latch for `attempt` (any id but `usize::MAX`).
    pub fn try_win(&self, attempt: usize) -> Race {
        debug_assert_ne!(attempt, NOBODY);
        match self
            .winner
            .compare_exchange(NOBODY, attempt, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Race::Won,
            Err(winner) => Race::Lost { winner },
        }
    }

    /// The winning attempt, if any yet.
    pub fn winner(&self) -> Option<usize> {
        match self.winner.load(Ordering::Acquire) {
            NOBODY => None,
            w => Some(w),
        }
    }
}
