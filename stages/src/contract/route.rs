//! What the route stage decided: the compiled route an exchange follows. It lives in the
//! contract because later stages read it (queue waits in its room, the record names it).

use std::sync::Arc;

use http::Method;
use spooky_sync::Cap;

use crate::contract::flow::Reply;
use crate::upstreams::Upstream;

/// What a route does.
pub enum Action {
    Respond(Reply),
    Upstream(Arc<Upstream>),
}

/// A compiled route.
pub struct Route {
    pub name: String,
    pub methods: Vec<Method>,
    pub action: Action,
    /// Exchanges of this route waiting in the queue stage.
    pub waiting: Cap,
}
