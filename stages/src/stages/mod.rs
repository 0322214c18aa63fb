//! The eight stages, one module each, all the same shape: a `Config` (serde, documented
//! defaults), a `build` from config, and the stage itself answering each exchange with a
//! [`Flow`](crate::contract::flow::Flow).

use serde::Deserialize;

/// What a stage does when its inlet (or, for admission, its cap) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Hold the previous stage until there is room: pressure travels back to the client.
    Wait,
    /// Answer 503 at once.
    Shed,
}

pub mod admission;
pub mod dispatch;
pub mod egress;
pub mod hedge_retry;
pub mod ingress;
pub mod queue;
pub mod route;
pub mod select;
