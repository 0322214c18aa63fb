//! The contract every stage and adapter shares, with no protocol in it: the exchange (what
//! flows: the client's facts, the request, the decisions, the permits), the flow (what a stage
//! answers), the reasons (why an exchange was refused), the responder (how it answers) and the
//! response it hands over.

pub mod exchange;
pub mod flow;
pub mod inlet;
pub mod rate_limit;
pub mod reason;
pub mod record;
pub mod responder;
pub mod response;
pub mod route;
pub mod tunnel;
