//! The NVMe tier's catalog (key → length and tag) on disk: a snapshot and a journal, so that
//! a server killed at any point restarts with a catalog that names only values the
//! engine finished writing.
//!
//! ```text
//! snapshot (strata-catalog.bin), written to a temporary file and renamed:
//!   "STRC" | version:u8=2 | count:u64 | (key_len:u32 | key | value_len:u64 | tag:u32)*
//! journal (strata-catalog.journal), appended to:
//!   "STRJ" | version:u8=1 | record*
//!   record: body_len:u32 | body_crc:u32 (CRC-32C of body) | body
//!   body:   op:u8 (1 = put, 2 = delete) | key_len:u32 | key | [value_len:u64 | tag:u32 if put]
//! ```
//!
//! The tag is the CRC-32C of a value's first [`TAG_BYTES`] bytes: the NVMe tier
//! serves an engine entry only if its length and tag are the catalogued ones, so an
//! older value of the key that the engine still finds (or finds again after a
//! restart) is never served in place of the catalogued one. The store's records
//! begin with a header holding their generation and their payload's checksum, so
//! for them the tag tells every version apart.
//!
//! All integers are little-endian. The journal is replayed over the snapshot at open
//! up to its first short or failing record (a write the crash cut) and is cut
//! there. Records are idempotent (a put sets, a delete removes), so replaying a
//! journal over a snapshot that already holds it (a crash between a compaction's
//! rename and its truncation) gives the same catalog. Each record is one `write`
//! to a file opened for appending: it survives the death of the process (the
//! kernel holds it). A loss of power keeps what was synced: snapshots and fresh
//! journals are fsynced (file, then directory) before they replace the old ones,
//! and the NVMe tier syncs the journal ([`Catalog::sync_handle`]) before a removal
//! of a value's head is acknowledged, since a lost removal would bring an older
//! or deleted value back. Puts are not synced: a lost put loses a cached value,
//! which a cache may do (docs/guarantees.md, section 1).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Key;
use crate::error::{Error, Result};

const SNAPSHOT_FILE: &str = "strata-catalog.bin";
const JOURNAL_FILE: &str = "strata-catalog.journal";
const MAGIC: &[u8; 4] = b"STRC";
const JOURNAL_MAGIC: &[u8; 4] = b"STRJ";
const VERSION: u8 = 2;
const JOURNAL_VERSION: u8 = 1;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// The journal is folded into a new snapshot once it is larger than this and than
/// twice the snapshot.
const COMPACT_AT: u64 = 16 << 20;

/// Bytes of a value its tag covers.
pub(super) const TAG_BYTES: usize = 64;

/// What the catalog knows of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Its length.
    pub(crate) len: u64,
    /// CRC-32C of its first [`TAG_BYTES`] bytes.
    pub(crate) tag: u32,
}

impl Entry {
    /// The entry of `value`.
    pub(super) fn of(value: &[u8]) -> Self {
        Self {
            len: value.len() as u64,
            tag: crc32c::crc32c(&value[..value.len().min(TAG_BYTES)]),
        }
    }
}

/// The catalog in memory, with its journal open for appending.
pub(super) struct Catalog {
    map: HashMap<Key, Entry>,
    dir: PathBuf,
    journal: File,
    journal_len: u64,
    /// How much of the journal is known to be on disk (synced).
    durable_len: u64,
    /// Which journal file `journal` is: a compaction starts a new one.
    journal_epoch: u64,
    snapshot_len: u64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("entries", &self.map.len())
            .field("journal_len", &self.journal_len)
            .finish()
    }
}

/// What an open recovered, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Recovered {
    /// Journal records replayed.
    pub(super) replayed: usize,
    /// Bytes cut from the journal's end (a record the crash tore).
    pub(super) torn_bytes: u64,
}

impl Catalog {
    /// Opens the catalog in `dir`: the snapshot with the journal replayed over it,
    /// then folded into a new snapshot (so the journal starts empty).
    pub(super) fn open(dir: &Path) -> Result<(Self, Recovered)> {
        let mut map = load_snapshot(&dir.join(SNAPSHOT_FILE));
        let jpath = dir.join(JOURNAL_FILE);
        let mut rec = Recovered::default();
        if let Ok(bytes) = std::fs::read(&jpath) {
            let (replayed, good) = replay(&bytes, &mut map);
            rec = Recovered {
                replayed,
                torn_bytes: (bytes.len() - good) as u64,
            };
            if rec.torn_bytes > 0 {
                tracing::warn!(
                    path = %jpath.display(),
                    torn_bytes = rec.torn_bytes,
                    "NVMe catalog journal ends in a torn record; cut there"
                );
            }
        }
        let snapshot_len = save_snapshot(&dir.join(SNAPSHOT_FILE), &map)?;
        let journal = new_journal(&jpath)?;
        Ok((
            Self {
                map,
                dir: dir.to_path_buf(),
                journal,
                journal_len: 5,
                durable_len: 5,
                journal_epoch: 0,
                snapshot_len,
            },
            rec,
        ))
    }

    /// What the catalog knows of `key`.
    pub(super) fn get(&self, key: &Key) -> Option<Entry> {
        self.map.get(key).copied()
    }

    /// The entries, to read.
    pub(super) fn map(&self) -> &HashMap<Key, Entry> {
        &self.map
    }

    /// Records that the engine holds `entry` under `key` (journaled first). Returns
    /// the previous entry.
    pub(super) fn insert(&mut self, key: &Key, entry: Entry) -> Result<Option<Entry>> {
        self.append(OP_PUT, key, Some(entry))?;
        Ok(self.map.insert(key.clone(), entry))
    }

    /// Forgets `key` (journaled first when it was catalogued). Returns its entry.
    /// The entry leaves memory even when the journal cannot be written, so it is
    /// never served by this process; the error says a restart might find it.
    pub(super) fn remove(&mut self, key: &Key) -> Result<Option<Entry>> {
        if !self.map.contains_key(key) {
            return Ok(None);
        }
        let journaled = self.append(OP_DELETE, key, None);
        let old = self.map.remove(key);
        journaled.map(|()| old)
    }

    /// Forgets the entries `keep` refuses (journaled: the engine may have reclaimed
    /// a block whose bytes a restart would still find, so a catalog that forgot the
    /// key only in memory would name it again after a restart, and a later delete,
    /// finding no entry, would journal nothing). Returns them.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Key) -> bool) -> Vec<(Key, Entry)> {
        let gone: Vec<(Key, Entry)> = self
            .map
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(k, l)| (k.clone(), *l))
            .collect();
        for (k, _) in &gone {
            if let Err(e) = self.remove(k) {
                tracing::error!(key = ?k, error = %e, "NVMe catalog journal write failed");
            }
        }
        gone
    }

    /// Folds the journal into a new snapshot (on close, and when it grows). Both
    /// files are synced before they replace the old ones.
    pub(super) fn compact(&mut self) -> Result<()> {
        self.snapshot_len = save_snapshot(&self.dir.join(SNAPSHOT_FILE), &self.map)?;
        self.journal = new_journal(&self.dir.join(JOURNAL_FILE))?;
        self.journal_len = 5;
        self.durable_len = 5;
        self.journal_epoch += 1;
        Ok(())
    }

    /// What a sync of the journal needs, outside the catalog's lock: a handle of
    /// the journal file, and the mark to give [`Catalog::synced`] after it; `None`
    /// when every record appended so far is already on disk.
    pub(super) fn sync_handle(&self) -> Result<Option<(File, JournalMark)>> {
        if self.durable_len >= self.journal_len {
            return Ok(None);
        }
        let file = self
            .journal
            .try_clone()
            .map_err(|e| Error::io("opening the NVMe catalog journal to sync it", e))?;
        Ok(Some((
            file,
            JournalMark {
                epoch: self.journal_epoch,
                len: self.journal_len,
            },
        )))
    }

    /// Notes that the journal was synced up to `mark` (nothing, if a compaction
    /// has replaced it since: the compaction synced all of it).
    pub(super) fn synced(&mut self, mark: JournalMark) {
        if mark.epoch == self.journal_epoch {
            self.durable_len = self.durable_len.max(mark.len);
        }
    }

    /// How many bytes of the journal file are on disk for sure (tests cut a copy of
    /// the journal there to play a loss of power).
    pub(super) fn durable_len(&self) -> u64 {
        self.durable_len
    }

    fn append(&mut self, op: u8, key: &Key, entry: Option<Entry>) -> Result<()> {
        let kb = key.as_bytes();
        let body_len = 1 + 4 + kb.len() + if entry.is_some() { 12 } else { 0 };
        let mut rec = Vec::with_capacity(8 + body_len);
        rec.extend_from_slice(&(body_len as u32).to_le_bytes());
        rec.extend_from_slice(&[0; 4]);
        rec.push(op);
        rec.extend_from_slice(&(kb.len() as u32).to_le_bytes());
        rec.extend_from_slice(kb);
        if let Some(e) = entry {
            rec.extend_from_slice(&e.len.to_le_bytes());
            rec.extend_from_slice(&e.tag.to_le_bytes());
        }
        let crc = crc32c::crc32c(&rec[8..]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        self.journal
            .write_all(&rec)
            .map_err(|e| Error::io("appending to the NVMe catalog journal", e))?;
        self.journal_len += rec.len() as u64;
        if self.journal_len > COMPACT_AT && self.journal_len > 2 * self.snapshot_len {
            self.compact()?;
        }
        Ok(())
    }
}

/// A fresh journal (header only) replacing any previous one.
fn new_journal(path: &Path) -> Result<File> {
    let mut head = Vec::with_capacity(5);
    head.extend_from_slice(JOURNAL_MAGIC);
    head.push(JOURNAL_VERSION);
    write_durably(path, &path.with_extension("journal.tmp"), &head)?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Replays a journal's records over `map` up to the first short, failing or
/// malformed one. Returns the records applied and the length of the good prefix.
pub(crate) fn replay(bytes: &[u8], map: &mut HashMap<Key, Entry>) -> (usize, usize) {
    if bytes.len() < 5 || &bytes[..4] != JOURNAL_MAGIC || bytes[4] != JOURNAL_VERSION {
        if !bytes.is_empty() {
            tracing::warn!("ignoring an NVMe catalog journal with a bad header");
        }
        return (0, 0);
    }
    let mut at = 5;
    let mut applied = 0;
    while let Some((op, used)) = decode_record(&bytes[at..]) {
        match op {
            (key, Some(entry)) => {
                map.insert(key, entry);
            }
            (key, None) => {
                map.remove(&key);
            }
        }
        at += used;
        applied += 1;
    }
    (applied, at)
}

/// One journal record: the key and, for a put, its entry; `None` when the bytes
/// do not start with a whole, intact record.
fn decode_record(bytes: &[u8]) -> Option<((Key, Option<Entry>), usize)> {
    let mut r = crate::codec::Reader::new(bytes);
    let body_len = r.u32_le().ok()? as usize;
    let crc = r.u32_le().ok()?;
    let body = r.take(body_len).ok()?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let mut b = crate::codec::Reader::new(body);
    let op = b.u8().ok()?;
    let klen = b.u32_le().ok()? as usize;
    let key = Key::decode_any(b.take(klen).ok()?).ok()?;
    let len = match op {
        OP_PUT => Some(Entry {
            len: b.u64_le().ok()?,
            tag: b.u32_le().ok()?,
        }),
        OP_DELETE => None,
        _ => return None,
    };
    b.is_empty().then_some(((key, len), 8 + body_len))
}

/// A point of the journal, to note once a sync has reached it.
#[derive(Debug, Clone, Copy)]
pub(super) struct JournalMark {
    epoch: u64,
    len: u64,
}

impl JournalMark {
    /// Whether a sync up to `self` covers `other` too (a later journal file
    /// does not: the compaction that started it synced the earlier one).
    pub(super) fn covers(self, other: JournalMark) -> bool {
        self.epoch == other.epoch && self.len >= other.len
    }
}

/// Writes `bytes` to `path` durably: a temporary file, synced, renamed over
/// `path`, then the directory synced.
fn write_durably(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        File::create(tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Loads a snapshot; a missing or malformed file yields an empty catalog (logged).
fn load_snapshot(path: &Path) -> HashMap<Key, Entry> {
    match std::fs::read(path) {
        Ok(bytes) => match decode(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable NVMe catalog");
                HashMap::new()
            }
        },
        Err(_) => HashMap::new(),
    }
}

/// Saves a snapshot atomically; returns its length.
fn save_snapshot(path: &Path, catalog: &HashMap<Key, Entry>) -> Result<u64> {
    let out = encode(catalog);
    write_durably(path, &path.with_extension("tmp"), &out)?;
    Ok(out.len() as u64)
}

/// A snapshot's bytes.
pub(crate) fn encode(catalog: &HashMap<Key, Entry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + catalog.len() * 72);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(catalog.len() as u64).to_le_bytes());
    for (k, e) in catalog {
        out.extend_from_slice(&(k.as_bytes().len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.tag.to_le_bytes());
    }
    out
}

/// Decodes a snapshot, bounds-checking every field.
pub(crate) fn decode(bytes: &[u8]) -> Result<HashMap<Key, Entry>> {
    let bad = |reason: String| Error::Corrupt {
        tier: "nvme catalog",
        reason,
    };
    let mut r = crate::codec::Reader::new(bytes);
    if r.take(4).map_err(bad)? != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let v = r.u8().map_err(bad)?;
    if v != VERSION {
        // Version 1 (before tags) included: its entries cannot be checked, so a
        // catalog written by an older server starts empty.
        return Err(bad(format!("unknown version {v}")));
    }
    let count = r.u64_le().map_err(bad)?;
    let mut map = HashMap::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let klen = r.u32_le().map_err(bad)? as usize;
        let kb = r.take(klen).map_err(bad)?;
        let key = Key::decode_any(kb)?;
        let len = r.u64_le().map_err(bad)?;
        let tag = r.u32_le().map_err(bad)?;
        map.insert(key, Entry { len, tag });
    }
    if !r.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.remaining())));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        Key::new("kv", "t", format!("k{i}")).unwrap()
    }

    fn e(len: u64) -> Entry {
        Entry {
            len,
            tag: len as u32 ^ 0xabcd,
        }
    }

    #[test]
    fn a_reopened_catalog_has_every_journaled_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        c.insert(&key(1), e(5)).unwrap();
        c.insert(&key(2), e(7)).unwrap();
        c.insert(&key(1).page(3, 4), e(9)).unwrap();
        c.remove(&key(2)).unwrap();
        c.insert(&key(1), e(6)).unwrap();
        let want = c.map().clone();
        // No close: the journal alone carries the changes.
        drop(c);
        let (c, rec) = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.map(), &want);
        assert_eq!(rec.replayed, 5);
        assert_eq!(rec.torn_bytes, 0);
        // Reopened again: folded into the snapshot, nothing left to replay.
        drop(c);
        let (c, rec) = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.map(), &want);
        assert_eq!(rec.replayed, 0);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        c.insert(&key(1), e(5)).unwrap();
        c.insert(&key(2), e(7)).unwrap();
        drop(c);
        let jpath = dir.path().join(JOURNAL_FILE);
        let full = std::fs::read(&jpath).unwrap();
        // Every cut inside the second record loses it and keeps the first.
        let first_end = 5 + 8 + 1 + 4 + key(1).as_bytes().len() + 12;
        for cut in first_end..full.len() {
            std::fs::write(&jpath, &full[..cut]).unwrap();
            std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
            let (c, rec) = Catalog::open(dir.path()).unwrap();
            assert_eq!(c.get(&key(1)), Some(e(5)), "cut at {cut}");
            assert_eq!(c.get(&key(2)), None, "cut at {cut}");
            assert_eq!(rec.torn_bytes as usize, cut - first_end);
        }
        // A flipped byte in the second record ends the replay there too.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&jpath, &flipped).unwrap();
        std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
        let (c, _) = Catalog::open(dir.path()).unwrap();
        assert_eq!((c.get(&key(1)), c.get(&key(2))), (Some(e(5)), None));
    }

    #[test]
    fn replaying_a_journal_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        c.insert(&key(1), e(5)).unwrap();
        c.remove(&key(1)).unwrap();
        c.insert(&key(2), e(7)).unwrap();
        let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
        let mut once = HashMap::new();
        replay(&journal, &mut once);
        let mut twice = once.clone();
        replay(&journal, &mut twice);
        assert_eq!(once, twice);
        assert_eq!(&once, c.map());
    }

    #[test]
    fn a_growing_journal_is_folded_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Catalog::open(dir.path()).unwrap();
        let mut i = 0u32;
        let mut compacted = false;
        while i < 1_000_000 {
            c.insert(&key(i % 8), e(u64::from(i))).unwrap();
            if c.journal_len < 100 && i > 0 {
                compacted = true;
                break;
            }
            i += 1;
        }
        assert!(compacted, "the journal never shrank");
        let want = c.map().clone();
        drop(c);
        let (c, _) = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.map(), &want);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn replay_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut with_header = b"STRJ\x01".to_vec();
            with_header.extend_from_slice(&bytes);
            let mut map = HashMap::new();
            let (_, good) = replay(&with_header, &mut map);
            proptest::prop_assert!(good <= with_header.len());
        }
    }
}
