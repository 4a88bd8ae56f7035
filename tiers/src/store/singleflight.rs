//! Single-flight: N concurrent callers asking for the same key share one execution.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use crate::error::{Error, Result};

type Flight<V> = Shared<BoxFuture<'static, Result<V, Arc<Error>>>>;

/// Deduplicates concurrent work per key.
pub(crate) struct SingleFlight<K, V> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }
}

struct Leader<K: Hash + Eq, V> {
    key: Option<K>,
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K: Hash + Eq, V> Drop for Leader<K, V> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.inflight.lock().remove(&k);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a run for `key` is already in flight, in which case this
    /// waits for that run and shares its result. Cancel-safe: a cancelled leader
    /// leaves the run to its followers.
    pub(crate) async fn run<F>(&self, key: K, work: F) -> Result<V>
    where
        F: Future<Output = Result<V>> + Send + 'static,
    {
        let (flight, _leader) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(f) => (f.clone(), None),
                None => {
                    let f = work.map(|r| r.map_err(Arc::new)).boxed().shared();
                    map.insert(key.clone(), f.clone());
                    (
                        f,
                        Some(Leader {
                            key: Some(key),
                            inflight: self.inflight.clone(),
                        }),
                    )
                }
            }
        };
        flight.await.map_err(|e| match &*e {
            // The store acts on a changed origin (it drops the stale head and reads
            // again); every other error is shared as text, with its kind.
            Error::Changed { target, detail } => Error::Changed {
                target: target.clone(),
                detail: detail.clone(),
            },
            e => Error::Shared {
                message: e.to_string(),
                kind: e.kind(),
            },
        })
    }
}
