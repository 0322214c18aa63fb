//! The eight stages, one module each, all the same shape: a `Config` (serde, documented
//! defaults), a `build` from config, and the stage itself answering each exchange with a
//! [`Flow`](crate::contract::flow::Flow).

pub use crate::contract::inlet::WhenFull;

pub mod adaptive;
pub mod admission;
pub mod dispatch;
pub mod egress;
pub mod hedge_retry;
pub mod ingress;
pub mod queue;
pub mod route;
pub mod select;
