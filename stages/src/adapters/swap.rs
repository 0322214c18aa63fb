//! A value that can be replaced while it is read: a listener's settings, swapped by a config
//! reload. Readers take an `Arc` once per connection (a read lock and a clone), so a reload
//! never waits on a connection and a connection keeps the settings it started with.

use std::sync::{Arc, PoisonError, RwLock};

pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: Arc<T>) -> Arc<Swap<T>> {
        Arc::new(Swap(RwLock::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `value` current; readers that already took the old one keep it.
    pub fn store(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}
