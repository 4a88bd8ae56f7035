//! A local directory as a tier: the origin of the embedded default.
//!
//! Layout: `ROOT/<namespace>/@<tenant>/<body>`, where the body's `/`-separated
//! segments become directories (so a dataset copied under
//! `ROOT/shard/@/<dataset>/…` is readable as `shard//<dataset>/…`). Bytes outside
//! `[A-Za-z0-9._-]` are percent-encoded; a body with an empty, `.` or `..` segment is
//! stored flat with its slashes encoded. Writes go to `ROOT/.tmp` and are renamed into
//! place, so a reader sees the old file or the new one, never a partial one.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::Key;
use crate::error::{Error, Result};
use crate::stats::TierStats;
use crate::tier::{
    Capabilities, GetOptions, Listed, PutOptions, PutOutcome, Tier, Usage, sorted_up_to,
};

const MAX_SEGMENT: usize = 240;

/// A tier on a local directory (unbounded, persistent).
#[derive(Debug)]
pub struct LocalDirTier {
    root: PathBuf,
    stats: Arc<TierStats>,
    tmp_seq: AtomicU64,
    /// Directories whose entry, and every ancestor's up to the root, is known
    /// to be on disk: a put into one of them fsyncs only the directory itself.
    durable_dirs: parking_lot::Mutex<std::collections::HashSet<PathBuf>>,
}

impl LocalDirTier {
    /// Opens (creating if needed) a directory tier.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join(".tmp"))
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        Ok(Self {
            root,
            stats: Arc::default(),
            tmp_seq: AtomicU64::new(0),
            durable_dirs: parking_lot::Mutex::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a key's file lives.
    pub fn path_of(&self, key: &Key) -> Result<PathBuf> {
        let mut p = self.root.join(key.namespace());
        p.push(format!("@{}", encode_segment(key.tenant().as_bytes())));
        let body = key.body();
        let segments: Vec<&[u8]> = body.split(|b| *b == b'/').collect();
        let nested = segments
            .iter()
            .all(|s| !s.is_empty() && *s != b"." && *s != b"..");
        let parts: Vec<String> = if nested {
            segments.iter().map(|s| encode_segment(s)).collect()
        } else {
            vec![encode_segment(body)]
        };
        for part in parts {
            if part.len() > MAX_SEGMENT {
                return Err(Error::InvalidKey {
                    reason: format!(
                        "a body segment encodes to {} bytes; the local-directory limit is {MAX_SEGMENT}",
                        part.len()
                    ),
                });
            }
            p.push(part);
        }
        if key.is_page() {
            return Err(Error::InvalidKey {
                reason: "page keys are not stored in the origin".into(),
            });
        }
        Ok(p)
    }
}

pub(crate) fn encode_segment(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // A lone "." or ".." would be a path component; encode its dots.
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

pub(crate) fn decode_segment(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn not_found(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Makes a directory's entries durable (after a rename into it or a removal).
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// A file's version: inode, modification time (ns) and size. A file replaced by
/// a rename (as this tier writes) gets another; one rewritten in place gets
/// another mtime, but a reader may then see bytes of both (see `docs/guarantees.md`).
fn file_version(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{mtime:x}-{:x}", meta.ino(), meta.len())
}

impl LocalDirTier {
    /// The length and version of `key`'s file; `None` if there is none.
    pub(crate) async fn stat(&self, key: &Key) -> Result<Option<(u64, Option<String>)>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some((m.len(), Some(file_version(&m))))),
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
        }
    }

    /// As [`Tier::get`], with the version of the file the bytes were read from
    /// (taken from the open file, so a rename over it meanwhile does not count).
    pub(crate) async fn get_versioned(
        &self,
        key: &Key,
        opts: &GetOptions,
    ) -> Result<Option<(Bytes, Option<String>)>> {
        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let io = |e| Error::io(format!("reading {}", path.display()), e);
        let meta = file.metadata().await.map_err(io)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let (start, end) = opts.range.unwrap_or_default().resolve(meta.len())?;
        file.seek(SeekFrom::Start(start)).await.map_err(io)?;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact(&mut buf).await.map_err(io)?;
        Ok(Some((Bytes::from(buf), Some(file_version(&meta)))))
    }
}

impl Tier for LocalDirTier {
    fn name(&self) -> &'static str {
        "localdir"
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
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
        }
    }

    async fn put(&self, key: &Key, value: Bytes, _opts: &PutOptions) -> Result<PutOutcome> {
        let path = self.path_of(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        if let Some(parent) = path.parent()
            && !self.durable_dirs.lock().contains(parent)
        {
            // Directories are entries of their parents: durable too, whoever
            // made them (another put may have, and not synced them yet).
            for dir in parent.ancestors().skip(1) {
                sync_dir(dir)
                    .await
                    .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
                if dir == self.root || !dir.starts_with(&self.root) {
                    break;
                }
            }
            self.durable_dirs.lock().insert(parent.to_path_buf());
        }
        let tmp = self.root.join(".tmp").join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        // Durable before it is acknowledged: the file's bytes reach the disk
        // before the rename makes them the value, and the directory's entry
        // after it (a power loss then leaves the old value or the new one, never
        // an empty or partial file, and never loses an acknowledged put).
        let written = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&value).await?;
            // (tokio's File hands the last chunk to a blocking task: flush waits
            // for it and returns its error, which sync_all would not.)
            f.flush().await?;
            f.sync_all().await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::io(format!("writing {}", tmp.display()), e));
        }
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::io(format!("renaming into {}", path.display()), e));
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)
                .await
                .map_err(|e| Error::io(format!("syncing {}", parent.display()), e))?;
        }
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                // As durable as a put: the entry's removal reaches the disk first.
                if let Some(parent) = path.parent() {
                    sync_dir(parent)
                        .await
                        .map_err(|e| Error::io(format!("syncing {}", parent.display()), e))?;
                }
                Ok(true)
            }
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>> {
        let base = self
            .root
            .join(namespace)
            .join(format!("@{}", encode_segment(tenant.as_bytes())));
        let (namespace, tenant, prefix) =
            (namespace.to_owned(), tenant.to_owned(), prefix.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![(base, Vec::<u8>::new())];
            while let Some((dir, body_prefix)) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in rd.flatten() {
                    let name = entry.file_name();
                    let Some(seg) = name.to_str().and_then(decode_segment) else {
                        continue;
                    };
                    let mut body = body_prefix.clone();
                    if !body.is_empty() {
                        body.push(b'/');
                    }
                    body.extend_from_slice(&seg);
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        stack.push((entry.path(), body));
                    } else if body.starts_with(&prefix)
                        && let Ok(key) = Key::new(&namespace, &tenant, &body)
                    {
                        out.push(Listed {
                            key,
                            len: meta.len(),
                        });
                    }
                }
            }
            sorted_up_to(out, limit)
        })
        .await
        .map_err(|e| Error::io("listing", std::io::Error::other(e)))
        .map(Ok)?
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_safe() {
        let t = LocalDirTier::open(tempfile::tempdir().unwrap().path().join("r")).unwrap();
        let p = |body: &[u8]| t.path_of(&Key::new("obj", "", body).unwrap()).unwrap();
        assert!(p(b"a/b/c.tar").ends_with("obj/@/a/b/c.tar"));
        assert!(p(b"../etc/passwd").ends_with("obj/@/..%2Fetc%2Fpasswd"));
        assert!(p(b"a b").ends_with("obj/@/a%20b"));
        assert!(p(b"..").ends_with("obj/@/%2E%2E"));
        assert_eq!(decode_segment("a%20b%2F").unwrap(), b"a b/");
        assert!(decode_segment("%zz").is_none());
        assert!(decode_segment("%4").is_none());
    }
}
