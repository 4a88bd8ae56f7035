//! Operations on keys that move no value bytes: presence, deletion, pins,
//! eviction and listing.

use strata_tiers::{Error, Key, ListedValue};

use super::{Ops, Options};

impl Ops {
    /// Deletes `key` from the cache tiers (and its origin, by policy); whether it
    /// was there.
    /// A peer's delete (of a copy) leaves the origin alone: the member that
    /// took the client's delete deleted it there.
    pub async fn delete(&self, key: &Key, opts: &Options) -> Result<bool, Error> {
        self.run("delete", opts, async {
            Self::check_writable(key)?;
            if opts.from_peer {
                return self.store.evict(key).await;
            }
            let found = self.store.delete(key).await?;
            if let Some(r) = self.replicator(key, opts) {
                // (A node that does not keep the key answers for its owners.)
                return Ok(r.delete(key).await || found);
            }
            Ok(found)
        })
        .await
    }

    /// Whether each key is present.
    pub async fn contains(&self, keys: &[Key], opts: &Options) -> Result<Vec<bool>, Error> {
        self.run("contains", opts, async {
            Self::check_batch(keys.len())?;
            self.store.contains(keys).await
        })
        .await
    }

    /// How many leading keys of `keys` are present.
    pub async fn match_prefix(&self, keys: &[Key], opts: &Options) -> Result<usize, Error> {
        self.run("match_prefix", opts, async {
            Self::check_batch(keys.len())?;
            self.store.match_prefix(keys).await
        })
        .await
    }

    /// Pins a value in DRAM (pins nest); `false` if it is absent.
    pub async fn pin(&self, key: &Key, opts: &Options) -> Result<bool, Error> {
        self.run("pin", opts, async {
            Self::check_writable(key)?;
            self.store.pin(key).await
        })
        .await
    }

    /// Releases one pin; `false` if it was not pinned.
    pub async fn unpin(&self, key: &Key, opts: &Options) -> Result<bool, Error> {
        self.run("unpin", opts, async {
            Self::check_writable(key)?;
            self.store.unpin(key).await
        })
        .await
    }

    /// Evicts a value from the cache tiers (not its origin).
    pub async fn evict(&self, key: &Key, opts: &Options) -> Result<bool, Error> {
        self.run("evict", opts, async {
            Self::check_writable(key)?;
            self.store.evict(key).await
        })
        .await
    }

    /// Values of `namespace`/`tenant` whose body starts with `prefix`, sorted, at
    /// most `limit`.
    pub async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
        opts: &Options,
    ) -> Result<Vec<ListedValue>, Error> {
        self.run(
            "list",
            opts,
            self.store.list(namespace, tenant, prefix, limit),
        )
        .await
    }
}
