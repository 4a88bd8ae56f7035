//! Azure Blob Storage as a tier: the origin of a deployment whose truth lives in a
//! storage account (or Azurite, in tests).
//!
//! Layout: blob `[prefix/]<namespace>/@<tenant>/<body>`, with the body's segments
//! percent-encoded exactly as the local-directory tier encodes them (so a dataset
//! copied with `azcopy` from a local origin reads the same), or, with
//! [`BlobConfig::raw_names`], the body verbatim (to read an existing dataset
//! container). A value is one block blob written with a single Put Blob, so a
//! reader sees the old value or the new one. A read longer than
//! [`BlobConfig::range_chunk_size`] is split into ranged GETs that run in parallel
//! (at most [`BlobConfig::max_concurrency`] requests per tier) and are pinned to
//! the first response's ETag; if the blob changes mid-read, the read starts over.
//! Every request goes through one retry loop (see `core.rs`), and every error
//! through one mapping (see `error.rs`).

mod config;
mod core;
mod error;
pub mod sas;

use std::num::NonZero;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use azure_core::http::Etag;
use azure_core::http::headers::HeaderName;
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders as _, BlobClientUploadOptions,
    BlobContainerClientListBlobsOptions, HttpRange, ListBlobsResponse,
};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt as _, TryStreamExt as _};

pub use self::config::{BlobAuth, BlobConfig};
use self::core::Core;
use self::error::{Failure, Kind};
pub use self::sas::AccountSas;
use crate::Key;
use crate::error::{Error, Result};
use crate::localdir::{decode_segment, encode_segment};
use crate::stats::TierStats;
use crate::tier::{
    ByteRange, Capabilities, GetOptions, Listed, PutOptions, PutOutcome, Tier, Usage,
};

/// How many times a chunked read starts over because the blob changed under it.
const MAX_READ_RESTARTS: usize = 3;
/// Largest page a listing asks for (the service's maximum).
const MAX_LIST_PAGE: usize = 5000;

/// A tier on an Azure Blob container (unbounded, persistent, listable).
pub struct BlobTier {
    core: Core,
    stats: Arc<TierStats>,
    closed: AtomicBool,
}

impl std::fmt::Debug for BlobTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobTier")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

/// A listed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    /// Its name in the container.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its ETag (changes whenever the blob does).
    pub etag: String,
}

/// The outcome of one pass of a read.
enum Read {
    /// The bytes (`None`: no such blob) and the ETag they were read at.
    Value(Option<Bytes>, Option<Etag>),
    /// The blob changed (or vanished) between two ranged GETs.
    Changed,
}

/// One ranged GET's answer.
struct Chunk {
    /// In the buffer the read was given (see [`BlobTier::fetch`]).
    bytes: BytesMut,
    /// The blob's total length.
    total: u64,
    etag: Option<Etag>,
}

/// The first `len` bytes of the room left in `room` (a buffer with no bytes in
/// it yet), as a buffer of their own: parts of one allocation that
/// [`BytesMut::unsplit`] joins again without a copy once they are full.
fn split_room(room: &mut BytesMut, len: u64) -> BytesMut {
    let at = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(room.capacity());
    let rest = room.split_off(at);
    std::mem::replace(room, rest)
}

impl BlobTier {
    /// Opens the tier: validates `config` and builds the clients. Does no I/O, so a
    /// missing container shows on the first request (or call
    /// [`ensure_container`](Self::ensure_container)). Must run inside a tokio runtime.
    pub async fn open(config: BlobConfig) -> Result<Self> {
        let core = Core::new(config)?;
        tracing::info!(
            endpoint = %core.config.endpoint,
            container = %core.config.container,
            raw_names = core.config.raw_names,
            "blob tier open"
        );
        Ok(Self {
            core,
            stats: Arc::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// The configuration the tier runs with.
    pub fn config(&self) -> &BlobConfig {
        &self.core.config
    }

    /// Creates the container if it does not exist (an existing one is fine), for
    /// deployments and tests that own their container.
    pub async fn ensure_container(&self) -> Result<()> {
        let container = &self.core.container;
        match self
            .core
            .call(
                "create_container",
                &self.core.config.container,
                None,
                || container.create(None),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.kind == Kind::Conflict => Ok(()),
            Err(f) => Err(f.into()),
        }
    }

    /// The blob name a key is stored under.
    pub fn blob_name(&self, key: &Key) -> Result<String> {
        if key.is_page() {
            return Err(Error::InvalidKey {
                reason: "page keys are not stored in the origin".into(),
            });
        }
        let mut name = self.name_base();
        if self.core.config.raw_names {
            let body = std::str::from_utf8(key.body()).map_err(|_| Error::InvalidKey {
                reason: "with blob.raw_names the key body must be UTF-8".into(),
            })?;
            if body == "." || body == ".." {
                return Err(Error::InvalidKey {
                    reason: format!("{body:?} is not a blob name"),
                });
            }
            name.push_str(body);
            return Ok(name);
        }
        name.push_str(&self.tenant_base(key.namespace(), key.tenant()));
        let body = key.body();
        let segments: Vec<&[u8]> = body.split(|b| *b == b'/').collect();
        if segments
            .iter()
            .all(|s| !s.is_empty() && *s != b"." && *s != b"..")
        {
            let encoded: Vec<String> = segments.iter().map(|s| encode_segment(s)).collect();
            name.push_str(&encoded.join("/"));
        } else {
            name.push_str(&encode_segment(body));
        }
        Ok(name)
    }

    /// Reads `range` of blob `name` (a name in this container, verbatim) only while
    /// its ETag is `etag`: a blob that changed since it was listed is an error
    /// ([`Error::Changed`]), never a mix of two versions. `Ok(None)` if it is gone.
    pub async fn read_pinned(
        &self,
        name: &str,
        range: ByteRange,
        etag: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Bytes>> {
        self.check_open()?;
        match self
            .read(name, range, Some(Etag::from(etag.to_owned())), deadline)
            .await?
        {
            Read::Value(v, _) => Ok(v),
            Read::Changed => Err(Error::Changed {
                target: self.core.target(name),
                detail: format!("its ETag is no longer {etag}"),
            }),
        }
    }

    /// The length and ETag of `key`'s blob; `None` if there is none.
    pub(crate) async fn stat(&self, key: &Key) -> Result<Option<(u64, Option<String>)>> {
        self.check_open()?;
        let name = self.blob_name(key)?;
        Ok(self
            .properties(
                &self.core.container.blob_client(&name),
                &self.core.target(&name),
                None,
            )
            .await?
            .map(|(len, etag)| (len, etag.map(|e| e.to_string()))))
    }

    /// As [`Tier::get`], with the ETag the bytes were read at (every chunk of
    /// one read is pinned to the first one's).
    pub(crate) async fn get_versioned(
        &self,
        key: &Key,
        opts: &GetOptions,
    ) -> Result<Option<(Bytes, Option<String>)>> {
        self.check_open()?;
        let name = self.blob_name(key)?;
        let range = opts.range.unwrap_or_default();
        for _ in 0..MAX_READ_RESTARTS {
            match self.read(&name, range, None, opts.deadline).await? {
                Read::Value(v, etag) => return Ok(v.map(|v| (v, etag.map(|e| e.to_string())))),
                Read::Changed => {
                    tracing::debug!(blob = %name, "blob changed during a chunked read; restarting")
                }
            }
        }
        Err(Error::Blob {
            op: "get",
            target: self.core.target(&name),
            status: Some(412),
            retryable: true,
            message: format!("the blob changed during {MAX_READ_RESTARTS} chunked reads in a row"),
        })
    }

    /// Every blob whose name starts with `prefix` (verbatim, all pages), with its
    /// size and ETag, sorted by name.
    pub async fn list_blobs(&self, prefix: &str) -> Result<Vec<BlobItem>> {
        self.check_open()?;
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self.list_page(prefix, marker.take(), MAX_LIST_PAGE).await?;
            for item in page.blob_items {
                let Some(name) = item.name else { continue };
                let props = item.properties.unwrap_or_default();
                out.push(BlobItem {
                    name,
                    size: props.content_length.unwrap_or(0),
                    etag: props.etag.map(|e| e.to_string()).unwrap_or_default(),
                });
            }
            marker = page.next_marker.filter(|m| !m.is_empty());
            if marker.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One page of the listing of names starting with `prefix` (all names when
    /// empty), from `marker`.
    async fn list_page(
        &self,
        prefix: &str,
        marker: Option<String>,
        max: usize,
    ) -> Result<ListBlobsResponse> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            marker,
            maxresults: i32::try_from(max).ok(),
            ..Default::default()
        };
        let (options, container) = (&options, &self.core.container);
        Ok(self
            .core
            .call(
                "list",
                &self.core.target(prefix),
                None,
                move || async move {
                    let mut pages = container.list_blobs(Some(options.clone()))?.into_pages();
                    match pages.try_next().await? {
                        Some(page) => page.into_model(),
                        None => Ok(ListBlobsResponse::default()),
                    }
                },
            )
            .await?)
    }

    /// `prefix/`, or nothing.
    fn name_base(&self) -> String {
        self.core
            .config
            .prefix
            .as_ref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default()
    }

    /// `<namespace>/@<tenant>/` (encoded layout only).
    fn tenant_base(&self, namespace: &str, tenant: &str) -> String {
        format!("{namespace}/@{}/", encode_segment(tenant.as_bytes()))
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// One ranged GET of `len > 0` bytes at `offset`, pinned to `etag` if given,
    /// into `dest` (a buffer with room for `len` bytes, usually split off the one
    /// that will hold the whole read): the body is copied once, as it arrives, with
    /// no buffer grown on the way and none joined to the others afterwards.
    #[expect(
        clippy::too_many_arguments,
        reason = "one GET: where, which range, which version, until when, into what"
    )]
    async fn fetch(
        &self,
        blob: &BlobClient,
        target: &str,
        offset: u64,
        len: u64,
        etag: Option<Etag>,
        deadline: Option<Instant>,
        dest: BytesMut,
    ) -> std::result::Result<Chunk, Failure> {
        let part = NonZero::new(usize::try_from(len).unwrap_or(usize::MAX))
            .unwrap_or(NonZero::<usize>::MIN);
        let options = BlobClientDownloadOptions {
            range: Some(HttpRange::new(offset, len)),
            partition_size: Some(part),
            parallel: Some(NonZero::<usize>::MIN),
            if_match: etag,
            ..Default::default()
        };
        let options = &options;
        // A retried attempt starts over in whatever buffer is left (a fresh one if
        // a failed attempt took it).
        let dest = parking_lot::Mutex::new(Some(dest));
        let dest = &dest;
        // Each attempt at the minimum rate: by `grace` plus `n / rate` after it
        // began, byte `n` has come, or the attempt is given up (and retried): a
        // body that trickles is not waited for byte by byte.
        let (grace, rate) = (
            std::time::Duration::from_millis(self.core.config.read_grace_ms),
            self.core.config.min_read_rate.max(1) as f64,
        );
        let too_slow = move |got: usize| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Io,
                format!(
                    "a ranged GET of {len} bytes delivered {got} in {grace:?} plus {got} bytes \
                     at {rate} bytes/s: too slow (origin.blob.min_read_rate, origin.blob.read_grace_ms)"
                ),
            )
        };
        self.core
            .call("get", target, deadline, move || async move {
                let began = tokio::time::Instant::now();
                let by = move |n: usize| {
                    began + grace + std::time::Duration::from_secs_f64(n as f64 / rate)
                };
                let attempt = async {
                    let rsp = tokio::time::timeout_at(by(0), blob.download(Some(options.clone())))
                        .await
                        .map_err(|_| too_slow(0))??;
                    let etag = rsp.properties.etag.clone();
                    let range = rsp
                        .headers
                        .get_optional_str(&HeaderName::from_static("content-range"))
                        .and_then(parse_content_range);
                    // A whole-blob answer's length is the blob's.
                    let whole = rsp
                        .headers
                        .get_optional_str(&HeaderName::from_static("content-length"))
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let mut bytes = dest.lock().take().unwrap_or_default();
                    bytes.clear();
                    let mut body = rsp.body;
                    // A body is never read past what was asked: a whole-blob answer
                    // (no Content-Range: the range was ignored) stops at the range's end.
                    let cap = match range {
                        Some(_) => len,
                        None => offset.saturating_add(len),
                    };
                    loop {
                        let next = tokio::time::timeout_at(by(bytes.len() + 1), body.next())
                            .await
                            .map_err(|_| too_slow(bytes.len()))?;
                        let Some(frame) = next else { break };
                        let frame = frame?;
                        let room = cap.saturating_sub(bytes.len() as u64);
                        bytes.extend_from_slice(&frame[..frame.len().min(room as usize)]);
                        if bytes.len() as u64 >= cap {
                            if range.is_none() && whole.is_none() {
                                // Cut short with no length said: the blob's length
                                // is unknown, so the answer is not used.
                                return Err(azure_core::Error::with_message(
                                    azure_core::error::ErrorKind::DataConversion,
                                    "an answer that ignored the Range header and gave no Content-Length",
                                ));
                            }
                            break;
                        }
                    }
                    Ok(match range {
                        Some(total) => Chunk { bytes, total, etag },
                        // A whole-blob answer (the SDK re-asks without a range for an empty blob).
                        None => {
                            // (Read only up to the range's end: the blob's length is
                            // the answer's, when it says.)
                            let total = whole.unwrap_or(bytes.len() as u64).max(bytes.len() as u64);
                            let start = offset.min(total) as usize;
                            let end = offset.saturating_add(len).min(total) as usize;
                            bytes.truncate(end);
                            Chunk {
                                bytes: bytes.split_off(start),
                                total,
                                etag,
                            }
                        }
                    })
                };
                attempt.await
            })
            .await
    }

    /// One pass of a read: the first chunk tells the size and the ETag, the rest
    /// are fetched in parallel, pinned to that ETag.
    async fn read(
        &self,
        name: &str,
        range: ByteRange,
        pin: Option<Etag>,
        deadline: Option<Instant>,
    ) -> Result<Read> {
        let blob = self.core.container.blob_client(name);
        let target = self.core.target(name);
        let chunk_size = self.core.config.range_chunk_size;
        // Clamped so that `offset + len` cannot overflow (the SDK adds them).
        let first_len = range
            .length
            .unwrap_or(u64::MAX)
            .min(chunk_size)
            .min(u64::MAX - range.offset);
        if first_len == 0 {
            return self.read_nothing(&blob, &target, range, deadline).await;
        }
        let pinned = pin.is_some();
        if let (Some(etag), Some(len)) = (&pin, range.length)
            && len > chunk_size
            && let Some(read) = self
                .read_sized(&blob, &target, range.offset, len, etag, deadline)
                .await?
        {
            return Ok(read);
        }
        let first = match self
            .fetch(
                &blob,
                &target,
                range.offset,
                first_len,
                pin,
                deadline,
                BytesMut::with_capacity(first_len as usize),
            )
            .await
        {
            Ok(c) => c,
            Err(f) if pinned && f.kind == Kind::PreconditionFailed => return Ok(Read::Changed),
            Err(f) if f.kind == Kind::NotFound => return Ok(Read::Value(None, None)),
            // The range starts at or past the end: the size says which.
            Err(f) if f.kind == Kind::RangeNotSatisfiable => {
                return self.read_nothing(&blob, &target, range, deadline).await;
            }
            Err(f) => return Err(f.into()),
        };
        let (start, end) = range.resolve(first.total)?;
        let first_end = start + first.bytes.len() as u64;
        if first.bytes.len() as u64 != first_len.min(end - start) {
            return Err(short_read(
                &target,
                start,
                first_len.min(end - start),
                first.bytes.len(),
            ));
        }
        if first_end >= end {
            return Ok(Read::Value(Some(first.bytes.freeze()), first.etag));
        }
        let ranges: Vec<(u64, u64)> = (first_end..end)
            .step_by(usize::try_from(chunk_size).unwrap_or(usize::MAX))
            .map(|o| (o, chunk_size.min(end - o)))
            .collect();
        // The whole read in one buffer: the first chunk copied in, the others
        // fetched straight into their parts of the rest.
        let mut out = BytesMut::with_capacity((end - start) as usize);
        out.extend_from_slice(&first.bytes);
        let mut room = out.split_off(out.len());
        let parts: Vec<(u64, u64, BytesMut)> = ranges
            .into_iter()
            .map(|(o, l)| (o, l, split_room(&mut room, l)))
            .collect();
        let (blob, target, etag) = (&blob, &target, &first.etag);
        let rest: std::result::Result<Vec<BytesMut>, Failure> = futures::stream::iter(parts)
            .map(|(offset, len, dest)| async move {
                let c = self
                    .fetch(blob, target, offset, len, etag.clone(), deadline, dest)
                    .await?;
                if c.bytes.len() as u64 != len {
                    return Err(Failure {
                        kind: Kind::Other,
                        retry_after: None,
                        error: short_read(target, offset, len, c.bytes.len()),
                    });
                }
                Ok(c.bytes)
            })
            .buffered(self.core.config.max_concurrency)
            .try_collect()
            .await;
        let rest = match rest {
            Ok(r) => r,
            Err(f) if matches!(f.kind, Kind::PreconditionFailed | Kind::NotFound) => {
                return Ok(Read::Changed);
            }
            Err(f) => return Err(f.into()),
        };
        for part in rest {
            // O(1) when the part is where it was split off (it always is unless a
            // retried attempt had to take a buffer of its own).
            out.unsplit(part);
        }
        Ok(Read::Value(Some(out.freeze()), first.etag.clone()))
    }

    /// A pinned read of `len` bytes at `offset` whose every chunk is requested at
    /// once (the pin keeps them one version, and the length is known, so the first
    /// answer need not come back before the others are asked). `Ok(None)` when the
    /// range does not lie inside the blob: the caller then reads it the general way.
    async fn read_sized(
        &self,
        blob: &BlobClient,
        target: &str,
        offset: u64,
        len: u64,
        etag: &Etag,
        deadline: Option<Instant>,
    ) -> Result<Option<Read>> {
        let Some(end) = offset.checked_add(len) else {
            return Ok(None);
        };
        let chunk_size = self.core.config.range_chunk_size;
        let ranges: Vec<(u64, u64)> = (offset..end)
            .step_by(usize::try_from(chunk_size).unwrap_or(usize::MAX))
            .map(|o| (o, chunk_size.min(end - o)))
            .collect();
        let mut room = BytesMut::with_capacity(len as usize);
        let dests: Vec<(u64, u64, BytesMut)> = ranges
            .into_iter()
            .map(|(o, l)| (o, l, split_room(&mut room, l)))
            .collect();
        let parts: std::result::Result<Vec<Chunk>, Failure> = futures::stream::iter(dests)
            .map(|(o, l, dest)| self.fetch(blob, target, o, l, Some(etag.clone()), deadline, dest))
            .buffered(self.core.config.max_concurrency)
            .try_collect()
            .await;
        let parts = match parts {
            Ok(p) => p,
            Err(f) if f.kind == Kind::PreconditionFailed => return Ok(Some(Read::Changed)),
            Err(f) if f.kind == Kind::NotFound => return Ok(Some(Read::Value(None, None))),
            Err(f) if f.kind == Kind::RangeNotSatisfiable => return Ok(None),
            Err(f) => return Err(f.into()),
        };
        if parts.iter().any(|c| c.total < end) {
            return Ok(None);
        }
        let mut out = BytesMut::new();
        for (i, c) in parts.into_iter().enumerate() {
            let want = chunk_size.min(end - (offset + i as u64 * chunk_size));
            if c.bytes.len() as u64 != want {
                return Err(short_read(
                    target,
                    offset + i as u64 * chunk_size,
                    want,
                    c.bytes.len(),
                ));
            }
            out.unsplit(c.bytes);
        }
        Ok(Some(Read::Value(Some(out.freeze()), Some(etag.clone()))))
    }

    /// A read that returns no bytes if the blob exists: an empty range, or one that
    /// starts at or past the end (an error unless it starts exactly at the end).
    async fn read_nothing(
        &self,
        blob: &BlobClient,
        target: &str,
        range: ByteRange,
        deadline: Option<Instant>,
    ) -> Result<Read> {
        Ok(match self.properties(blob, target, deadline).await? {
            None => Read::Value(None, None),
            Some((size, etag)) => {
                range.resolve(size)?;
                Read::Value(Some(Bytes::new()), etag)
            }
        })
    }

    /// The blob's length from its properties; `None` if it does not exist.
    async fn properties_size(
        &self,
        blob: &BlobClient,
        target: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>> {
        Ok(self
            .properties(blob, target, deadline)
            .await?
            .map(|(len, _)| len))
    }

    /// The blob's length and ETag from its properties; `None` if it does not exist.
    async fn properties(
        &self,
        blob: &BlobClient,
        target: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<(u64, Option<Etag>)>> {
        match self
            .core
            .call("size", target, deadline, || blob.get_properties(None))
            .await
        {
            Ok(p) => {
                let len = p.content_length().map_err(|e| Error::Blob {
                    op: "size",
                    target: target.to_owned(),
                    status: None,
                    retryable: false,
                    message: format!("bad Content-Length: {e}"),
                })?;
                Ok(Some((len.unwrap_or(0), p.etag().ok().flatten())))
            }
            Err(f) if f.kind == Kind::NotFound => Ok(None),
            Err(f) => Err(f.into()),
        }
    }

    /// The key stored under `name`, if `name` is one this tier writes for
    /// `namespace`/`tenant`.
    fn key_of(&self, name: &str, base: &str, namespace: &str, tenant: &str) -> Option<Key> {
        let rest = name.strip_prefix(base)?;
        let body = if self.core.config.raw_names {
            rest.as_bytes().to_vec()
        } else {
            let mut body = Vec::with_capacity(rest.len());
            for (i, seg) in rest.split('/').enumerate() {
                if i > 0 {
                    body.push(b'/');
                }
                body.extend_from_slice(&decode_segment(seg)?);
            }
            body
        };
        let key = Key::new(namespace, tenant, body).ok()?;
        // Only canonical names: a foreign blob that decodes to a key must not alias it.
        (self.blob_name(&key).ok()? == name).then_some(key)
    }
}

/// The total length from `Content-Range: bytes a-b/total`.
fn parse_content_range(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.trim().parse().ok()
}

fn short_read(target: &str, offset: u64, expected: u64, got: usize) -> Error {
    Error::Blob {
        op: "get",
        target: target.to_owned(),
        status: None,
        retryable: true,
        message: format!("short read at {offset}: expected {expected} bytes, got {got}"),
    }
}

impl Tier for BlobTier {
    fn name(&self) -> &'static str {
        "blob"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bounded: false,
            persistent: true,
            listable: true,
            lossy_writes: false,
        }
    }

    fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    fn usage(&self) -> Usage {
        Usage {
            capacity: u64::MAX,
            used: 0,
        }
    }

    async fn get(&self, key: &Key, opts: &GetOptions) -> Result<Option<Bytes>> {
        Ok(self.get_versioned(key, opts).await?.map(|(v, _)| v))
    }

    async fn size(&self, key: &Key) -> Result<Option<u64>> {
        self.check_open()?;
        let name = self.blob_name(key)?;
        self.properties_size(
            &self.core.container.blob_client(&name),
            &self.core.target(&name),
            None,
        )
        .await
    }

    async fn put(&self, key: &Key, value: Bytes, opts: &PutOptions) -> Result<PutOutcome> {
        self.check_open()?;
        let name = self.blob_name(key)?;
        let blob = self.core.container.blob_client(&name);
        let options = BlobClientUploadOptions {
            // One Put Blob (up to the service's 5000 MiB), never staged blocks: atomic.
            partition_size: NonZero::new((value.len() as u64).max(1)),
            parallel: Some(NonZero::<usize>::MIN),
            ..Default::default()
        };
        let (blob, options, value) = (&blob, &options, &value);
        self.core
            .call(
                "put",
                &self.core.target(&name),
                opts.deadline,
                move || async move {
                    blob.upload(value.clone().into(), Some(options.clone()))
                        .await
                },
            )
            .await?;
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.check_open()?;
        let name = self.blob_name(key)?;
        let blob = self.core.container.blob_client(&name);
        match self
            .core
            .call("delete", &self.core.target(&name), None, || {
                blob.delete(None)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(f) if f.kind == Kind::NotFound => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut base = self.name_base();
        if !self.core.config.raw_names {
            base.push_str(&self.tenant_base(namespace, tenant));
        }
        // The longest name prefix every matching body shares: encoding is per byte
        // up to the first '/' or '.', whose encoding depends on the whole body.
        let name_prefix = if self.core.config.raw_names {
            let valid = std::str::from_utf8(prefix).map_or_else(|e| e.valid_up_to(), str::len);
            format!("{base}{}", String::from_utf8_lossy(&prefix[..valid]))
        } else {
            let cut = prefix
                .iter()
                .position(|b| matches!(b, b'/' | b'.'))
                .unwrap_or(prefix.len());
            format!("{base}{}", encode_segment(&prefix[..cut]))
        };
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .list_page(&name_prefix, marker.take(), limit.min(MAX_LIST_PAGE))
                .await?;
            for item in page.blob_items {
                let Some(name) = item.name else { continue };
                let Some(key) = self.key_of(&name, &base, namespace, tenant) else {
                    continue;
                };
                if key.body().starts_with(prefix) {
                    let len = item.properties.and_then(|p| p.content_length).unwrap_or(0);
                    out.push(Listed { key, len });
                }
            }
            marker = page.next_marker.filter(|m| !m.is_empty());
            if marker.is_none() || out.len() >= limit {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tier(prefix: Option<&str>, raw_names: bool) -> BlobTier {
        let mut config = BlobConfig::new(
            "http://127.0.0.1:9/devstoreaccount1",
            "data",
            BlobAuth::Anonymous,
        );
        config.prefix = prefix.map(str::to_owned);
        config.raw_names = raw_names;
        BlobTier::open(config).await.expect("tier")
    }

    #[tokio::test]
    async fn names_match_the_local_directory_layout() {
        let t = tier(None, false).await;
        let n = |tenant: &str, body: &[u8]| {
            t.blob_name(&Key::new("obj", tenant, body).expect("valid key"))
                .expect("blob name")
        };
        assert_eq!(n("", b"a/b/c.tar"), "obj/@/a/b/c.tar");
        assert_eq!(n("acme", b"a b"), "obj/@acme/a%20b");
        assert_eq!(n("", b"../etc/passwd"), "obj/@/..%2Fetc%2Fpasswd");
        assert_eq!(n("", b"a//b"), "obj/@/a%2F%2Fb");
        assert_eq!(n("", b".."), "obj/@/%2E%2E");
        let t = tier(Some("deploy/one"), false).await;
        assert_eq!(
            t.blob_name(&Key::new("obj", "", "x").expect("valid key"))
                .expect("blob name"),
            "deploy/one/obj/@/x"
        );
    }

    #[tokio::test]
    async fn names_decode_back_only_when_canonical() {
        let t = tier(Some("p"), false).await;
        for body in [&b"a/b/c"[..], b"a b", b"../x", b"a//b", b".", b"\xff\x00"] {
            let key = Key::new("obj", "t", body).expect("valid key");
            let name = t.blob_name(&key).expect("blob name");
            assert_eq!(
                t.key_of(&name, "p/obj/@t/", "obj", "t"),
                Some(key),
                "{name}"
            );
        }
        assert_eq!(t.key_of("p/obj/@t/a%2Fb", "p/obj/@t/", "obj", "t"), None);
        assert_eq!(t.key_of("p/obj/@t/a b", "p/obj/@t/", "obj", "t"), None);
        assert_eq!(t.key_of("p/obj/@t/%zz", "p/obj/@t/", "obj", "t"), None);
    }

    #[tokio::test]
    async fn raw_names_use_the_body_verbatim() {
        let t = tier(Some("datasets"), true).await;
        let key = Key::new("shard", "", "imagenet/train-0001.tar").expect("valid key");
        assert_eq!(
            t.blob_name(&key).expect("blob name"),
            "datasets/imagenet/train-0001.tar"
        );
        assert!(
            t.blob_name(&Key::new("shard", "", b"\xff").expect("valid key"))
                .is_err()
        );
        assert!(t.blob_name(&key.page(1, 0)).is_err());
    }

    #[test]
    fn content_range_totals() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some(100));
        assert_eq!(parse_content_range("bytes */0"), Some(0));
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
    }
}
