//! Pipeline generations: the pipeline adapters serve is swappable. Each exchange takes the
//! current generation once, when it starts, and keeps it (an `Arc`) until it ends; a swap
//! makes new exchanges use the new generation, stops the old one (its ingress closes) and
//! forgets the pools only the old one used. The old generation — its stages, caps, routes
//! and upstreams — is dropped when its last exchange ends; the pools it shared with the new
//! generation live on in the registry, warm.

use std::sync::{Arc, PoisonError, RwLock};

use crate::config::Config;
use crate::engine::{BuildError, Pipeline, Shared};

/// The current generation, and what every generation shares.
#[derive(Clone)]
pub struct Pipelines {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<Pipeline>>,
    shared: Shared,
}

impl Pipelines {
    /// Builds the first generation. Must run inside tokio.
    pub fn start(config: &Config) -> Result<Pipelines, BuildError> {
        let shared = Shared::new(config.pipeline.workers.resolve());
        let first = Pipeline::build(config, &shared)?;
        Ok(Pipelines {
            inner: Arc::new(Inner {
                current: RwLock::new(first),
                shared,
            }),
        })
    }

    /// The generation new exchanges run on.
    pub fn current(&self) -> Arc<Pipeline> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new exchange's generation and its ingress permit, waiting while ingress is full;
    /// `None` once shutting down. A generation swapped out while this waited has closed its
    /// ingress: the wait goes on with the new one (a reload refuses no request).
    pub async fn enter(&self) -> Option<(Arc<Pipeline>, spooky_sync::Permit)> {
        loop {
            let pipeline = self.current();
            match pipeline.ingress_cap().acquire().await {
                Ok(p) => return Some((pipeline, p)),
                Err(_) if !Arc::ptr_eq(&pipeline, &self.current()) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Builds a generation from `config` with the shared pools, without serving it yet.
    pub fn build(&self, config: &Config) -> Result<Arc<Pipeline>, BuildError> {
        Pipeline::build(config, &self.inner.shared)
    }

    /// Makes `next` the current generation and stops the one it replaces, which is returned
    /// (it lives until its last exchange ends and every handle to it is dropped).
    pub fn swap(&self, next: Arc<Pipeline>) -> Arc<Pipeline> {
        let keep = next.pools();
        let backends = next.backend_keys();
        let old = {
            let mut cur = self
                .inner
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *cur, next)
        };
        old.stop();
        self.inner.shared.registry.retain(&keep, &backends);
        old
    }

    /// Live exchanges of every generation (graceful shutdown waits for them).
    pub fn drain(&self) -> &spooky_sync::Drain {
        &self.inner.shared.drain
    }

    /// Backend pools known to the registry.
    pub fn pools(&self) -> usize {
        self.inner.shared.registry.len()
    }
}
