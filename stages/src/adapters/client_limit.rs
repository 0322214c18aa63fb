//! `max_connections_per_client`: connections one client IP address may hold open on a listener
//! at once, so that one host cannot take every `max_connections` slot. The count is an RAII
//! permit held by the connection task; an address's entry goes away with its last connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What a listener whose settings a reload replaced keeps of the previous ones: the
/// connection cap (open connections keep their places; the limit becomes the new one) and the
/// per-client counts when their limit is unchanged.
pub fn carry_over(
    connections: &mut spooky_sync::Cap,
    per_client: &mut Option<Arc<PerClient>>,
    prev_connections: &spooky_sync::Cap,
    prev_per_client: &Option<Arc<PerClient>>,
) {
    let limit = connections.limit();
    *connections = prev_connections.clone();
    connections.set_limit(limit);
    if let (Some(a), Some(b)) = (&*per_client, prev_per_client)
        && a.limit() == b.limit()
    {
        *per_client = prev_per_client.clone();
    }
}

/// Connections open per client address on one listener.
pub struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Connections one address may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection from `ip`, or `None` when it holds `limit` already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// Addresses with at least one connection open.
    pub fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection's slot; dropping it frees the slot.
pub struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The address already holds its share of connections.
#[derive(Debug)]
pub struct OverLimit;

/// A slot under a listener's optional limit (`Ok(None)` when `max_connections_per_client` is
/// not set).
pub fn slot(limit: &Option<Arc<PerClient>>, ip: IpAddr) -> Result<Option<ClientSlot>, OverLimit> {
    match limit {
        None => Ok(None),
        Some(l) => l.try_acquire(ip).map(Some).ok_or(OverLimit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_address_and_release_on_drop() {
        let l = PerClient::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let s1 = l.try_acquire(a).expect("first");
        let s2 = l.try_acquire(a).expect("second");
        assert!(l.try_acquire(a).is_none(), "third from the same address");
        let other = l.try_acquire(b).expect("another address has its own slots");
        drop(s1);
        let s3 = l.try_acquire(a).expect("a slot came back");
        drop((s2, s3, other));
        assert_eq!(l.clients(), 0, "entries go with their last connection");
    }
}
