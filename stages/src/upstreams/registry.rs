//! The registry of backend connection pools, shared by every pipeline generation: a pool is
//! keyed by what identifies its connections — the backend's address, the protocol, the
//! upstream's TLS settings and the pool settings — so a new generation that names the same
//! backend the same way gets the same pool (no cold start after a reload), while exchanges of
//! the old generation keep using theirs. A pool no generation names any more is forgotten at
//! the next swap and closes once its last in-flight exchange lets go of it.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use crate::upstreams::addr::BackendAddr;
use crate::upstreams::client::{self, BackendClient, ClientSettings};
use crate::upstreams::config::{BackendProtocol, UpstreamTls};
use crate::upstreams::error::UpstreamError;
use crate::upstreams::health::Health;
use crate::upstreams::tls;

/// What identifies a backend's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: BackendAddr,
    pub protocol: BackendProtocol,
    /// The upstream's TLS settings (`None` for `http://` backends).
    pub tls: Option<UpstreamTls>,
    pub settings: ClientSettings,
}

/// Pools by key; cheap to clone a client out of (hyper-util's client shares its pool).
/// Backends' health is kept here too, by upstream and URL, so a new generation (a reload, a
/// membership change) does not send traffic to a backend its checks took out.
pub struct Registry {
    pools: Mutex<HashMap<PoolKey, BackendClient>>,
    health: Mutex<HashMap<(String, String), Arc<Health>>>,
    /// Each backend gets a pool per worker.
    workers: NonZeroUsize,
}

impl Registry {
    /// A registry whose backends get a pool for each of `workers`.
    pub fn new(workers: NonZeroUsize) -> Arc<Registry> {
        Arc::new(Registry {
            pools: Mutex::default(),
            health: Mutex::default(),
            workers,
        })
    }

    /// The pool for `key`, built on first use. `upstream` names the upstream in errors, and
    /// with `backend` the pool's connection metrics (a pool two upstreams share keeps the
    /// first one's names).
    pub fn client(
        &self,
        key: &PoolKey,
        upstream: &str,
        backend: &str,
    ) -> Result<BackendClient, UpstreamError> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = pools.get(key) {
            return Ok(c.clone());
        }
        let tls = match &key.tls {
            Some(t) if key.addr.is_tls() => Some(Arc::new(tls::client_config(
                t,
                tls::alpn_for(key.protocol),
                upstream,
            )?)),
            _ => None,
        };
        let server_name = key.tls.as_ref().and_then(|t| t.server_name.as_deref());
        let built = client::backend_client(
            self.workers,
            &key.settings,
            &key.addr,
            key.protocol,
            tls,
            server_name,
            crate::upstreams::tls::ConnMetrics::new(upstream, backend),
        )?;
        pools.insert(key.clone(), built.clone());
        Ok(built)
    }

    /// The health of `backend` (its URL) of `upstream`, shared by every generation.
    pub fn health(&self, upstream: &str, backend: &str) -> Arc<Health> {
        let mut all = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry((upstream.to_string(), backend.to_string()))
            .or_insert_with(|| Health::new(upstream, backend))
            .clone()
    }

    /// Forgets the pools no key in `keep` names, and the health of backends no generation
    /// has (after a generation swap).
    pub fn retain(&self, keep: &[PoolKey], backends: &[(String, String)]) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|k, _| keep.contains(k));
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.retain(|k, _| backends.contains(k));
    }

    /// Pools known.
    pub fn len(&self) -> usize {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
