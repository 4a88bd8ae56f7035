//! Datasets: manifests of shards on the origin, versioned by their ETags, and the
//! read-through that fills the `shard` namespace from them.
//!
//! `add(name, source)` lists the blobs under `source` (a prefix of the server's
//! origin, or a URL naming a container of the origin's Blob account) with their
//! sizes and ETags. The sorted list hashes to a **version**; an unchanged listing
//! keeps the version, any changed ETag, size or name makes a new one. Manifests and
//! the index of datasets are stored in the cache's `obj` namespace under tenant
//! `_strata` (write-through, so they persist in the origin and survive restarts).
//!
//! A shard's key is `shard/<tenant>/<name>@<version>/<path>`, so two versions are
//! two key spaces and never mix. `DatasetOrigin` is the `shard` namespace's
//! origin: it finds the key's manifest entry (size, ETag) and reads the blob
//! **pinned to that ETag**: a blob rewritten since the listing fails with
//! [`Error::Changed`] instead of serving bytes of another version. Every origin
//! read of a dataset holds one of its concurrency permits (per dataset, default
//! 32), so a preload or a cold epoch cannot throttle the account; the Blob tier
//! retries 503s and throttling with backoff and jitter. The store above does the
//! rest: one origin read per page however many readers miss at once
//! (single-flight), checksums, filling DRAM and NVMe.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_tiers::{
    BlobConfig, BlobTier, BoxFuture, ByteRange, Error, Key, NamespaceOrigin, Result, TierStats,
    TieredStore,
};
use tokio::sync::Semaphore;

/// Default origin requests in flight per dataset.
pub const DEFAULT_CONCURRENCY: u32 = 32;

pub use strata_training_cache::manifest::{
    MAX_NAME, META_TENANT, Manifest, ManifestError, Shard, check_name, parse_shard_key, shard_key,
};

/// Where the server's origin is, for resolving a dataset's source.
#[derive(Debug, Clone)]
pub enum OriginSpec {
    /// A local directory (the embedded default): sources are directories under it.
    Dir(PathBuf),
    /// An Azure Blob account: sources are prefixes of the origin's container, or
    /// URLs of any container of the same account (same credentials).
    Blob(BlobConfig),
    /// No origin (`origin.kind = "none"`): no dataset can be added.
    None,
}

/// Where a dataset's shards are read from.
#[derive(Debug)]
enum Source {
    Dir(PathBuf),
    Blob { tier: Box<BlobTier>, prefix: String },
}

impl Source {
    async fn resolve(origin: &OriginSpec, source: &str) -> Result<Self> {
        let invalid = |reason: String| Error::Config {
            field: "dataset source".into(),
            reason,
        };
        match origin {
            OriginSpec::None => Err(invalid(
                "this server has no origin (origin.kind = \"none\"); datasets are read from one"
                    .into(),
            )),
            OriginSpec::Dir(root) => {
                if source.contains("://") {
                    return Err(invalid(format!(
                        "{source:?} is a URL, but this server's origin is the local directory {}; give a directory under it",
                        root.display()
                    )));
                }
                let rel = Path::new(source.trim_start_matches('/'));
                if rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(invalid(format!(
                        "{source:?} must be a relative path without '..'"
                    )));
                }
                let dir = root.join(rel);
                if !dir.is_dir() {
                    return Err(invalid(format!("{} is not a directory", dir.display())));
                }
                Ok(Source::Dir(dir))
            }
            OriginSpec::Blob(base) => {
                let (container, prefix) = if source.contains("://") {
                    let endpoint = base.endpoint.trim_end_matches('/');
                    let rest = source
                        .strip_prefix(endpoint)
                        .and_then(|r| r.strip_prefix('/'))
                        .ok_or_else(|| {
                            invalid(format!(
                                "{source:?} is not under this server's Blob endpoint {endpoint}; other accounts need their own credentials (not supported yet)"
                            ))
                        })?;
                    let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
                    (c.to_owned(), p.to_owned())
                } else {
                    let mut p = base.prefix.clone().map(|p| p + "/").unwrap_or_default();
                    p.push_str(source.trim_start_matches('/'));
                    (base.container.clone(), p)
                };
                if container.is_empty() {
                    return Err(invalid(format!("{source:?} names no container")));
                }
                let mut config = base.clone();
                config.container = container;
                config.prefix = None;
                config.raw_names = true;
                let tier = BlobTier::open(config).await?;
                Ok(Source::Blob {
                    tier: Box::new(tier),
                    prefix,
                })
            }
        }
    }

    async fn list(&self) -> Result<Vec<Shard>> {
        match self {
            Source::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || list_dir(&dir))
                    .await
                    .map_err(|e| Error::io("listing", std::io::Error::other(e)))?
            }
            Source::Blob { tier, prefix } => Ok(tier
                .list_blobs(prefix)
                .await?
                .into_iter()
                .filter_map(|b| {
                    let path = b.name.strip_prefix(prefix.as_str())?.to_owned();
                    (!path.is_empty() && !path.ends_with('/')).then_some(Shard {
                        path,
                        size: b.size,
                        etag: b.etag,
                    })
                })
                .collect()),
        }
    }

    async fn read(&self, shard: &Shard, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        match self {
            Source::Dir(dir) => {
                let path = dir.join(&shard.path);
                let shard = shard.clone();
                tokio::task::spawn_blocking(move || read_file(&path, &shard, range))
                    .await
                    .map_err(|e| Error::io("reading", std::io::Error::other(e)))?
            }
            Source::Blob { tier, prefix } => {
                let name = format!("{prefix}{}", shard.path);
                tier.read_pinned(&name, range.unwrap_or_default(), &shard.etag, None)
                    .await
            }
        }
    }
}

/// A local file's validator: modification time (ns) and size.
fn file_etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{mtime:x}-{:x}", meta.len())
}

fn list_dir(root: &Path) -> Result<Vec<Shard>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(rel) = path.strip_prefix(root)
                && let Some(rel) = rel.to_str()
            {
                out.push(Shard {
                    path: rel.replace(std::path::MAIN_SEPARATOR, "/"),
                    size: meta.len(),
                    etag: file_etag(&meta),
                });
            }
        }
    }
    Ok(out)
}

fn read_file(path: &Path, shard: &Shard, range: Option<ByteRange>) -> Result<Option<Bytes>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let changed = |f: &std::fs::File| -> Result<()> {
        let meta = f
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if file_etag(&meta) == shard.etag {
            Ok(())
        } else {
            Err(Error::Changed {
                target: path.display().to_string(),
                detail: format!("modified since listed (was {})", shard.etag),
            })
        }
    };
    changed(&f)?;
    let (start, end) = range.unwrap_or_default().resolve(shard.size)?;
    let mut buf = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    changed(&f)?;
    Ok(Some(Bytes::from(buf)))
}

/// A dataset version ready to serve.
#[derive(Debug)]
struct Loaded {
    manifest: Arc<Manifest>,
    by_path: HashMap<String, usize>,
    source: Source,
    permits: Semaphore,
}

/// The stored index of datasets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    datasets: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    source: String,
    current: String,
    versions: Vec<String>,
    concurrency: u32,
}

/// A dataset, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: String,
    /// The current version.
    pub version: String,
    /// Shards in the current version.
    pub shards: u64,
    /// Bytes in the current version.
    pub bytes: u64,
    /// When the current version was listed.
    pub created_ms: u64,
    /// Versions recorded.
    pub versions: u32,
    /// Origin requests in flight allowed.
    pub concurrency: u32,
}

type Versions = RwLock<HashMap<(String, String), Arc<Loaded>>>;

/// The dataset registry of one server.
#[derive(Debug)]
pub struct Datasets {
    store: TieredStore,
    origin: OriginSpec,
    loaded: Arc<Versions>,
    index: tokio::sync::Mutex<Index>,
    stats: Arc<TierStats>,
}

/// A manifest's refusal, as the store's error kind.
fn manifest_error(e: ManifestError) -> Error {
    match e {
        ManifestError::Corrupt(reason) => Error::Corrupt {
            tier: "manifest",
            reason,
        },
        ManifestError::InvalidName(reason) => Error::InvalidKey { reason },
    }
}

fn meta_key(path: &str) -> Key {
    Key::new("obj", META_TENANT, format!("datasets/{path}")).expect("a valid meta key")
}

impl Datasets {
    /// Opens the registry: loads the stored index and the manifests of every
    /// recorded version, and becomes the `shard` namespace's origin.
    pub async fn open(store: TieredStore, origin: OriginSpec) -> Result<Arc<Self>> {
        let index = Self::read_index(&store, true).await?.unwrap_or_default();
        let me = Arc::new(Self {
            store: store.clone(),
            origin,
            loaded: Arc::default(),
            index: tokio::sync::Mutex::new(Index::default()),
            stats: Arc::default(),
        });
        for (name, entry) in &index.datasets {
            for version in &entry.versions {
                match me.load(name, version, entry).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(dataset = %name, %version, error = %e, "dataset version not loaded")
                    }
                }
            }
        }
        *me.index.lock().await = index;
        store.set_namespace_origin("shard", me.shard_origin());
        Ok(me)
    }

    /// The stored index of datasets, `None` if there is none. A cached copy that
    /// fails its checksum is dropped and the origin's read instead. At start-up
    /// (`at_open`), one that does not decode (damaged, or written by something
    /// else) never stops the server: its bytes are set aside under
    /// `datasets/index.json.corrupt-<ms>`, the error is logged, and once the copy
    /// is kept the index is deleted, so the registry goes on with none (add the
    /// datasets again: an unchanged listing gets back the same version, and the
    /// shards cached under it). Later (`current_or_reload`, an add) such an index
    /// is an error and is left alone: a node that cannot read what another wrote
    /// (a newer version, in a rolling upgrade) must not delete it for everyone.
    /// An origin that cannot be read is an error too: going on with none would
    /// overwrite a good index at the next add.
    async fn read_index(store: &TieredStore, at_open: bool) -> Result<Option<Index>> {
        let key = meta_key("index.json");
        let bytes = match store.get(&key, None).await {
            Ok(found) => found,
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, "the cached dataset index is damaged: dropped, reading the origin's");
                store.evict(&key).await?;
                store.get(&key, None).await?
            }
            Err(e) => return Err(e),
        };
        let Some((_, bytes)) = bytes else {
            return Ok(None);
        };
        match serde_json::from_slice::<Index>(&bytes) {
            Ok(index) => Ok(Some(index)),
            Err(e) if at_open => {
                let ms = std::time::SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let aside = meta_key(&format!("index.json.corrupt-{ms}"));
                match store.put(&aside, &bytes).await {
                    Ok(_) => {
                        tracing::error!(
                            error = %e,
                            set_aside = %aside.display_path(),
                            "the stored dataset index does not decode: set aside, going on with none"
                        );
                        store.delete(&key).await?;
                    }
                    Err(kept) => tracing::error!(
                        error = %e,
                        set_aside_failed = %kept,
                        "the stored dataset index does not decode and could not be set aside: left as it is, going on with none"
                    ),
                }
                Ok(None)
            }
            Err(e) => Err(Error::Corrupt {
                tier: "manifest",
                reason: format!("dataset index: {e}"),
            }),
        }
    }

    /// The `shard` namespace's origin over this registry: manifest lookups and
    /// ETag-pinned reads. (A cluster node wraps it, to ask a key's owner first.)
    pub fn shard_origin(self: &Arc<Self>) -> Arc<dyn NamespaceOrigin> {
        Arc::new(DatasetOrigin {
            loaded: self.loaded.clone(),
            stats: self.stats.clone(),
            registry: Arc::downgrade(self),
        })
    }

    /// A version this node has not loaded, recorded by another node of its cluster
    /// (whose origin it shares): the manifest is read from the store, which reads
    /// it through from the origin, checked against its name and version, and
    /// loaded with the default concurrency. `Ok(None)` if no such manifest exists.
    pub async fn load_version(&self, name: &str, version: &str) -> Result<Option<Arc<Manifest>>> {
        Ok(self
            .load_version_inner(name, version)
            .await?
            .map(|l| l.manifest.clone()))
    }

    async fn load_version_inner(&self, name: &str, version: &str) -> Result<Option<Arc<Loaded>>> {
        if let Some(l) = self
            .loaded
            .read()
            .get(&(name.to_owned(), version.to_owned()))
        {
            return Ok(Some(l.clone()));
        }
        check_name(name).map_err(manifest_error)?;
        if version.is_empty()
            || version.len() > 64
            || !version.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::InvalidKey {
                reason: format!("dataset version {version:?} is not a hex digest"),
            });
        }
        let Some((_, bytes)) = self
            .store
            .get(&meta_key(&format!("{name}/{version}.json")), None)
            .await?
        else {
            return Ok(None);
        };
        let manifest = Manifest::decode(&bytes).map_err(manifest_error)?;
        if manifest.name != name || manifest.version != version {
            return Err(Error::Corrupt {
                tier: "manifest",
                reason: format!(
                    "the manifest stored for {name}@{version} is of {}@{}",
                    manifest.name, manifest.version
                ),
            });
        }
        let source = Source::resolve(&self.origin, &manifest.source).await?;
        let loaded = self.insert(manifest, source, DEFAULT_CONCURRENCY);
        tracing::info!(dataset = %name, %version, "dataset version loaded from the shared origin");
        Ok(Some(loaded))
    }

    async fn load(&self, name: &str, version: &str, entry: &IndexEntry) -> Result<()> {
        let Some((_, bytes)) = self
            .store
            .get(&meta_key(&format!("{name}/{version}.json")), None)
            .await?
        else {
            return Err(Error::NotFound {
                key: format!("manifest {name}@{version}"),
            });
        };
        let manifest = Manifest::decode(&bytes).map_err(manifest_error)?;
        let source = Source::resolve(&self.origin, &entry.source).await?;
        self.insert(manifest, source, entry.concurrency);
        Ok(())
    }

    fn insert(&self, manifest: Manifest, source: Source, concurrency: u32) -> Arc<Loaded> {
        let by_path = manifest
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.path.clone(), i))
            .collect();
        let loaded = Arc::new(Loaded {
            by_path,
            source,
            permits: Semaphore::new(concurrency.max(1) as usize),
            manifest: Arc::new(manifest),
        });
        let k = (
            loaded.manifest.name.clone(),
            loaded.manifest.version.clone(),
        );
        self.loaded.write().insert(k, loaded.clone());
        loaded
    }

    /// Lists `source` into a manifest for `name`: a new version if the listing
    /// changed, the current one otherwise (`true`: a new version was recorded).
    pub async fn add(
        &self,
        name: &str,
        source: &str,
        concurrency: Option<u32>,
    ) -> Result<(Arc<Manifest>, bool)> {
        check_name(name).map_err(manifest_error)?;
        let mut index = self.index.lock().await;
        let src = Source::resolve(&self.origin, source).await?;
        let listed = src.list().await?;
        if listed.is_empty() {
            return Err(Error::NotFound {
                key: format!("no blobs under dataset source {source:?}"),
            });
        }
        let manifest = Manifest::new(name, source, listed);
        let old = index.datasets.get(name).cloned();
        let concurrency = concurrency
            .or(old.as_ref().map(|e| e.concurrency))
            .unwrap_or(DEFAULT_CONCURRENCY)
            .max(1);
        if let Some(old) = &old
            && old.current == manifest.version
            && old.source == source
            && old.concurrency == concurrency
            && let Some(m) = self.manifest(name, &manifest.version)
        {
            return Ok((m, false));
        }
        let body = serde_json::to_vec(&manifest).map_err(|e| Error::Config {
            field: "manifest".into(),
            reason: e.to_string(),
        })?;
        self.store
            .put(
                &meta_key(&format!("{name}/{}.json", manifest.version)),
                &body,
            )
            .await?;
        let mut entry = old.unwrap_or(IndexEntry {
            source: source.to_owned(),
            current: String::new(),
            versions: Vec::new(),
            concurrency,
        });
        let new_version = !entry.versions.contains(&manifest.version);
        if new_version {
            entry.versions.push(manifest.version.clone());
        }
        entry.current = manifest.version.clone();
        entry.source = source.to_owned();
        entry.concurrency = concurrency;
        // Other nodes of a cluster write the same index: start from the origin's
        // copy (this node may not know their datasets), then add this one.
        let mut next = self.shared_index().await?.unwrap_or_default();
        for (n, e) in &index.datasets {
            next.datasets.entry(n.clone()).or_insert_with(|| e.clone());
        }
        next.datasets.insert(name.to_owned(), entry);
        let body = serde_json::to_vec(&next).map_err(|e| Error::Config {
            field: "dataset index".into(),
            reason: e.to_string(),
        })?;
        self.store.put(&meta_key("index.json"), &body).await?;
        *index = next;
        let loaded = self.insert(manifest, src, concurrency);
        tracing::info!(dataset = %name, version = %loaded.manifest.version, shards = loaded.manifest.shards.len(), new_version, "dataset added");
        Ok((loaded.manifest.clone(), new_version))
    }

    /// A dataset version's manifest.
    pub fn manifest(&self, name: &str, version: &str) -> Option<Arc<Manifest>> {
        self.loaded
            .read()
            .get(&(name.to_owned(), version.to_owned()))
            .map(|l| l.manifest.clone())
    }

    /// The current manifest of `name`, waiting for a concurrent `add` to finish.
    pub async fn current(&self, name: &str) -> Option<Arc<Manifest>> {
        let version = self.index.lock().await.datasets.get(name)?.current.clone();
        self.manifest(name, &version)
    }

    /// The index as the origin has it now (the cached copy may be older: other
    /// nodes of a cluster write it too).
    async fn shared_index(&self) -> Result<Option<Index>> {
        let key = meta_key("index.json");
        self.store.evict(&key).await?;
        Self::read_index(&self.store, false).await
    }

    /// [`Self::current`], and for a name this node does not know, the index as
    /// the shared origin has it now (another node of the cluster may have added
    /// the dataset): its entries are taken for the names they hold, and the
    /// current version of `name` loaded.
    pub async fn current_or_reload(&self, name: &str) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.current(name).await {
            return Ok(Some(m));
        }
        let version = {
            let mut index = self.index.lock().await;
            let Some(theirs) = self.shared_index().await? else {
                return Ok(None);
            };
            for (n, e) in theirs.datasets {
                index.datasets.insert(n, e);
            }
            match index.datasets.get(name) {
                Some(e) => e.current.clone(),
                None => return Ok(None),
            }
        };
        self.load_version(name, &version).await
    }

    /// How many versions of `name` are recorded, and its concurrency limit.
    pub async fn versions_and_concurrency(&self, name: &str) -> Option<(u32, u32)> {
        let index = self.index.lock().await;
        let e = index.datasets.get(name)?;
        Some((e.versions.len() as u32, e.concurrency))
    }

    /// Every dataset, by name.
    pub async fn list(&self) -> Vec<DatasetInfo> {
        let index = self.index.lock().await;
        index
            .datasets
            .iter()
            .map(|(name, e)| {
                let m = self.manifest(name, &e.current);
                DatasetInfo {
                    name: name.clone(),
                    source: e.source.clone(),
                    version: e.current.clone(),
                    shards: m.as_ref().map_or(0, |m| m.shards.len() as u64),
                    bytes: m.as_ref().map_or(0, |m| m.total_bytes()),
                    created_ms: m.as_ref().map_or(0, |m| m.created_ms),
                    versions: e.versions.len() as u32,
                    concurrency: e.concurrency,
                }
            })
            .collect()
    }

    /// The dataset version and shard index a shard key stands for.
    pub fn locate(&self, key: &Key) -> Option<(String, String, u32)> {
        let (name, version, path) = parse_shard_key(key)?;
        let loaded = self.loaded.read();
        let l = loaded.get(&(name.to_owned(), version.to_owned()))?;
        let i = *l.by_path.get(path)?;
        Some((name.to_owned(), version.to_owned(), i as u32))
    }

    /// The origin counters of the `shard` namespace.
    pub fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    /// The store the registry fills.
    pub fn store(&self) -> &TieredStore {
        &self.store
    }
}

/// The `shard` namespace's origin: manifest lookups and ETag-pinned reads.
#[derive(Debug)]
struct DatasetOrigin {
    loaded: Arc<Versions>,
    stats: Arc<TierStats>,
    /// To load versions recorded by other nodes (weak: the registry holds the
    /// store, which holds this).
    registry: std::sync::Weak<Datasets>,
}

impl DatasetOrigin {
    async fn find(&self, key: &Key) -> Result<Option<(Arc<Loaded>, usize)>> {
        let Some((name, version, path)) = parse_shard_key(key) else {
            return Err(Error::InvalidKey {
                reason: format!(
                    "{} is not a shard key (shard/<tenant>/<dataset>@<version>/<path>)",
                    key.display_path()
                ),
            });
        };
        let loaded = self
            .loaded
            .read()
            .get(&(name.to_owned(), version.to_owned()))
            .cloned();
        let loaded = match (loaded, self.registry.upgrade()) {
            (Some(l), _) => Some(l),
            (None, Some(registry)) => registry.load_version_inner(name, version).await?,
            (None, None) => None,
        };
        let Some(l) = loaded else {
            // The key names a version this server does not know: the request must
            // change (not a miss, which a client reads as "absent").
            return Err(Error::PolicyViolation {
                namespace: "shard".into(),
                rule: format!(
                    "dataset version {name}@{version} is not registered (run `strata dataset add`)"
                ),
            });
        };
        Ok(l.by_path.get(path).copied().map(|i| (l, i)))
    }
}

impl NamespaceOrigin for DatasetOrigin {
    fn name(&self) -> &'static str {
        "dataset"
    }

    fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    fn size<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            Ok(self
                .find(key)
                .await?
                .map(|(l, i)| l.manifest.shards[i].size))
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            let Some((l, i)) = self.find(key).await? else {
                return Ok(None);
            };
            let waited = Instant::now();
            let _permit = l.permits.acquire().await.map_err(|_| Error::ShuttingDown)?;
            let waited = waited.elapsed();
            if waited.as_millis() > 100 {
                tracing::debug!(dataset = %l.manifest.name, ?waited, "waited for a Blob permit");
            }
            l.source.read(&l.manifest.shards[i], range).await
        })
    }

    /// Keys name a dataset version, and reads are pinned to the listed ETag.
    fn immutable(&self) -> bool {
        true
    }
}
