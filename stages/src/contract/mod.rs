//! The contract every stage and adapter shares: the exchange (what flows), the flow (what a
//! stage answers) and the decisions stages leave on the exchange.

pub mod exchange;
pub mod flow;
pub mod route;
