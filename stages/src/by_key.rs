//! One live value per key, shared by whoever asks while it lives: the access log's writer per
//! destination and the OTLP exporter per collector are each one thread, shared by every worker
//! and every config generation that names them, and ended once the last of those is gone.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A `static` map from keys to the values alive now (held weakly: the users own them).
pub struct ByKey<K, T>(OnceLock<Mutex<HashMap<K, Weak<T>>>>);

impl<K: Eq + Hash + Clone, T> Default for ByKey<K, T> {
    fn default() -> Self {
        ByKey::new()
    }
}

impl<K: Eq + Hash + Clone, T> ByKey<K, T> {
    pub const fn new() -> Self {
        ByKey(OnceLock::new())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Weak<T>>> {
        self.0
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The live value for `key`, or the one `make` makes (kept for the next asker while it
    /// lives). `make` runs under the map's lock: two askers never make two.
    pub fn get_or_make<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E> {
        let mut map = self.map();
        if let Some(v) = map.get(key).and_then(Weak::upgrade) {
            return Ok(v);
        }
        let v = make()?;
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key.clone(), Arc::downgrade(&v));
        Ok(v)
    }

    /// Every value alive now.
    pub fn live(&self) -> Vec<Arc<T>> {
        self.map().values().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_key_while_it_lives() {
        static MAP: ByKey<u8, String> = ByKey::new();
        let a = MAP.get_or_make(&1, || Ok::<_, ()>(Arc::new("a".into())));
        let again = MAP.get_or_make(&1, || Ok::<_, ()>(Arc::new("b".into())));
        assert_eq!(
            (a.as_deref(), again.as_deref()),
            (Ok(&"a".to_string()), Ok(&"a".to_string()))
        );
        assert_eq!(MAP.live().len(), 1);
        drop((a, again));
        assert!(MAP.live().is_empty());
        let fresh = MAP.get_or_make(&1, || Ok::<_, ()>(Arc::new("c".into())));
        assert_eq!(fresh.as_deref(), Ok(&"c".to_string()));
        assert_eq!(
            MAP.get_or_make(&2, || Err::<Arc<String>, _>("no")),
            Err("no")
        );
    }
}
