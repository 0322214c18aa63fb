//! Hierarchical acquire: one permit from each cap of a chain (global → upstream → backend),
//! all or nothing.
//!
//! Caps are always taken in the order given, so two exchanges can never hold each other's next
//! cap (no lock-order inversion). A failure, or dropping the future half-way, drops the permits
//! already taken: nothing leaks on a partial failure.

use std::fmt;

use crate::cap::{Cap, Closed, Permit, TryAcquireError};

/// Permits held together; dropping the set returns all of them.
#[derive(Debug, Default)]
pub struct PermitSet {
    permits: Vec<Permit>,
}

impl PermitSet {
    /// An empty set.
    pub fn new() -> Self {
        PermitSet::default()
    }

    /// Adds a permit taken elsewhere.
    pub fn push(&mut self, permit: Permit) {
        self.permits.push(permit);
    }

    /// Number of permits held.
    pub fn len(&self) -> usize {
        self.permits.len()
    }

    /// Whether no permit is held.
    pub fn is_empty(&self) -> bool {
        self.permits.is_empty()
    }
}

/// Which level of the chain refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HierarchyError {
    /// Index into the caps given.
    pub level: usize,
    /// The refusal at that level.
    pub error: TryAcquireError,
}

impl fmt::Display for HierarchyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cap level {} refused: {:?}", self.level, self.error)
    }
}

impl std::error::Error for HierarchyError {}

/// Takes one permit from each cap, in order, without waiting.
pub fn try_acquire_all(caps: &[&Cap]) -> Result<PermitSet, HierarchyError> {
    let mut set = PermitSet {
        permits: Vec::with_capacity(caps.len()),
    };
    for (level, cap) in caps.iter().enumerate() {
        match cap.try_acquire() {
            Ok(p) => set.permits.push(p),
            // `set` drops here, returning the permits already taken.
            Err(error) => return Err(HierarchyError { level, error }),
        }
    }
    Ok(set)
}

/// Waits for one permit from each cap, in order. Cancel-safe: dropping the future returns
/// whatever it had taken.
pub async fn acquire_all(caps: &[&Cap]) -> Result<PermitSet, (usize, Closed)> {
    let mut set = PermitSet {
        permits: Vec::with_capacity(caps.len()),
    };
    for (level, cap) in caps.iter().enumerate() {
        match cap.acquire().await {
            Ok(p) => set.permits.push(p),
            Err(c) => return Err((level, c)),
        }
    }
    Ok(set)
}
