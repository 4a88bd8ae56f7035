//! The data-path protocol: one framing for every carrier (TCP, the Unix socket of
//! the shared-memory carrier, and the RDMA carrier's control messages).
//! `docs/data-path.md` is the specification; this module is its only encoder and
//! decoder.
//!
//! A frame is a 32-byte header, `meta_len` bytes of op-specific metadata, then
//! `data_len` bytes of value data:
//!
//! ```text
//!  0  magic     2  "SD"
//!  2  version   1  1
//!  3  op        1  Op
//!  4  status    2  Status (responses; 0 in requests)
//!  6  flags     2  FLAG_* (requests; 0 in responses)
//!  8  id        8  request id, chosen by the client, echoed by the response
//! 16  meta_len  4  ≤ Limits::max_meta
//! 20  budget    4  requests with FLAG_DEADLINE: the caller's time left, in ms;
//!                  0 otherwise
//! 24  data_len  8  ≤ Limits::max_data
//! ```
//!
//! All integers are little-endian. Every decoder here is bounds-checked and returns
//! a [`WireError`] naming what was wrong; none panics on any input (fuzzed by
//! `fuzz/fuzz_targets/frame.rs`).

use bytes::{BufMut, Bytes, BytesMut};
use strata_proto::Key;
use strata_proto::codec::Reader;

/// Frame magic.
pub const MAGIC: [u8; 2] = *b"SD";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 32;
/// Request flag: answer GET/MGET with leased arena extents instead of inline data
/// (shared-memory and RDMA carriers). A server may still answer inline.
pub const FLAG_LEASE: u16 = 1;
/// Request flag: the header's `budget` holds the caller's deadline, as the
/// milliseconds it has left (relative: the two ends' clocks need not agree). The
/// server ends the request with `DeadlineExceeded` when it passes, origin reads
/// included.
pub const FLAG_DEADLINE: u16 = 2;
/// Request flag (PUT, COMMIT): pin the value in DRAM once it is committed.
pub const FLAG_PIN: u16 = 4;
/// Bit 0 of the op set a HELLO answer carries (no op has number 0): the server
/// accepts [`FLAG_DEADLINE`] and [`FLAG_PIN`]. A client sends them only then, so
/// that it still speaks to a server of an earlier release, which refuses unknown
/// flags as a broken header.
pub const FEATURE_FLAGS: u64 = 1;
/// Request flag (GET, MGET, MGET_RANGE): the request comes from a cluster peer
/// filling its own cache (`docs/cluster.md`). The server answers from its tiers and
/// its origin and never forwards the read to another peer, so that two nodes whose
/// views of the cluster disagree for a moment cannot send a read back and forth.
pub const FLAG_PEER: u16 = 8;
/// Request flag (GET): answer from the cache tiers alone; a miss is `NotFound`,
/// never an origin read. A cluster node asks a key's earlier owners so (get
/// from neighbour): a copy still in the cluster is worth a transfer, a miss there
/// must not cost an origin read there too.
pub const FLAG_CACHED_ONLY: u16 = 16;
/// Bit 63 of the op set a HELLO answer carries (no op has number 63): the server
/// accepts [`FLAG_PEER`] and [`FLAG_CACHED_ONLY`]. A client sends them only then.
pub const FEATURE_PEER: u64 = 1 << 63;
/// Every flag this version knows.
const KNOWN_FLAGS: u16 = FLAG_LEASE | FLAG_DEADLINE | FLAG_PIN | FLAG_PEER | FLAG_CACHED_ONLY;
/// Most keys in one MGET or MATCH_PREFIX.
pub const MAX_BATCH: usize = 4096;
/// Most extents in one lease.
pub const MAX_EXTENTS: usize = 1 << 16;

/// Operations. A response carries the op of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Carrier negotiation: versions, host identity, arena and lease parameters.
    Hello = 1,
    /// Read a value or a range of it.
    Get = 2,
    /// Read whole values of a batch of keys; one status per key.
    MGet = 3,
    /// Reserve, write and commit in one frame (TCP): the data is the value.
    Put = 4,
    /// Reserve room for a value; shared memory and RDMA get its arena extents.
    Reserve = 5,
    /// Append data to a reservation (TCP).
    Write = 6,
    /// Commit a reservation; carries the value's CRC-32C, which the server checks.
    Commit = 7,
    /// Abandon a reservation.
    Abort = 8,
    /// Delete a key from the cache tiers.
    Delete = 9,
    /// How many leading keys of a list are present.
    MatchPrefix = 10,
    /// Release leases (shared memory, RDMA).
    Release = 11,
    /// Read a range of each of a batch of values; one status per range, answered as
    /// MGET is.
    MGetRange = 12,
}

impl Op {
    /// Every op of this release, as the bit set a HELLO answer carries (bit `n` is
    /// op `n`).
    pub const ALL: u64 = (1 << 13) - 2;

    /// The ops a server whose HELLO answer carries no op set serves: the first
    /// release's (HELLO through MGET_RANGE).
    pub const FIRST_RELEASE: u64 = (1 << 13) - 2;

    /// This op's bit in an op set.
    pub fn bit(self) -> u64 {
        1 << (self as u8)
    }

    /// Every op, in code order (op `n` at index `n - 1`; decoding reads it).
    pub const LIST: [Self; 12] = [
        Self::Hello,
        Self::Get,
        Self::MGet,
        Self::Put,
        Self::Reserve,
        Self::Write,
        Self::Commit,
        Self::Abort,
        Self::Delete,
        Self::MatchPrefix,
        Self::Release,
        Self::MGetRange,
    ];

    /// The op's name in metrics and logs (`get`, `match_prefix`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Get => "get",
            Self::MGet => "mget",
            Self::Put => "put",
            Self::Reserve => "reserve",
            Self::Write => "write",
            Self::Commit => "commit",
            Self::Abort => "abort",
            Self::Delete => "delete",
            Self::MatchPrefix => "match_prefix",
            Self::Release => "release",
            Self::MGetRange => "mget_range",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Self::LIST.get(usize::from(v).checked_sub(1)?).copied()
    }
}

/// Response status, per request (and per key in MGET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key is neither cached nor in its origin.
    NotFound = 1,
    /// The request was malformed or broke a namespace rule (message says which).
    Invalid = 2,
    /// The value or frame is larger than allowed.
    TooLarge = 3,
    /// The range is past the end of the value.
    Range = 4,
    /// The committed bytes do not match the CRC-32C the commit carried.
    Checksum = 5,
    /// The server is out of room or over its in-flight budget; retry later.
    Busy = 6,
    /// The server is shutting down.
    Unavailable = 7,
    /// An internal error (message says what).
    Internal = 8,
    /// No reservation or lease with that id on this connection.
    UnknownId = 9,
    /// A deadline passed on the server (an origin read that took too long).
    DeadlineExceeded = 10,
    /// Stored bytes failed verification and no intact copy could be read.
    Corrupt = 11,
    /// The origin's object changed since the version being read was recorded.
    Changed = 12,
}

impl Status {
    /// Every status, in code order (status `n` at index `n`; decoding reads it).
    pub const LIST: [Self; 13] = [
        Self::Ok,
        Self::NotFound,
        Self::Invalid,
        Self::TooLarge,
        Self::Range,
        Self::Checksum,
        Self::Busy,
        Self::Unavailable,
        Self::Internal,
        Self::UnknownId,
        Self::DeadlineExceeded,
        Self::Corrupt,
        Self::Changed,
    ];

    /// The status's name in metrics and logs (`ok`, `not_found`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Range => "range",
            Self::Checksum => "checksum",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::UnknownId => "unknown_id",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Corrupt => "corrupt",
            Self::Changed => "changed",
        }
    }

    fn from_u16(v: u16) -> Option<Self> {
        Self::LIST.get(usize::from(v)).copied()
    }

    /// Whether a retry of an idempotent request may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Busy | Self::Unavailable)
    }
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header is broken; the stream cannot be resynchronised and is closed.
    #[error("bad frame header: {0}")]
    Header(String),
    /// The metadata of one request or response is malformed; other requests on the
    /// connection are unaffected.
    #[error("bad {op:?} metadata: {reason}")]
    Meta {
        /// The op whose metadata failed.
        op: Op,
        /// What was wrong.
        reason: String,
    },
}

/// Size limits a decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most metadata bytes in a frame.
    pub max_meta: u32,
    /// Most data bytes in a frame.
    pub max_data: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_meta: 1 << 20,
            max_data: 1 << 30,
        }
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The operation.
    pub op: Op,
    /// Status (responses).
    pub status: Status,
    /// Flags (requests).
    pub flags: u16,
    /// Request id.
    pub id: u64,
    /// Metadata bytes that follow the header.
    pub meta_len: u32,
    /// Data bytes that follow the metadata.
    pub data_len: u64,
    /// The caller's time left in milliseconds, when `flags` has
    /// [`FLAG_DEADLINE`]; 0 otherwise.
    pub budget_ms: u32,
}

impl Header {
    /// A request header.
    pub fn request(op: Op, id: u64, flags: u16, meta_len: usize, data_len: u64) -> Self {
        Self {
            op,
            status: Status::Ok,
            flags,
            id,
            meta_len: meta_len as u32,
            data_len,
            budget_ms: 0,
        }
    }

    /// This header with the caller's deadline `budget` from now (rounded up to a
    /// whole millisecond, at most `u32::MAX` of them), and [`FLAG_DEADLINE`].
    pub fn with_budget(mut self, budget: std::time::Duration) -> Self {
        let ms = budget.as_micros().div_ceil(1000);
        self.budget_ms = u32::try_from(ms).unwrap_or(u32::MAX);
        self.flags |= FLAG_DEADLINE;
        self
    }

    /// The caller's time left, if the request carries a deadline.
    pub fn budget(&self) -> Option<std::time::Duration> {
        (self.flags & FLAG_DEADLINE != 0)
            .then(|| std::time::Duration::from_millis(u64::from(self.budget_ms)))
    }

    /// A response header.
    pub fn response(op: Op, id: u64, status: Status, meta_len: usize, data_len: u64) -> Self {
        Self {
            op,
            status,
            flags: 0,
            id,
            meta_len: meta_len as u32,
            data_len,
            budget_ms: 0,
        }
    }

    /// The encoded header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.op as u8;
        b[4..6].copy_from_slice(&(self.status as u16).to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.budget_ms.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        b
    }

    /// Decodes and checks a header against `limits`.
    pub fn decode(b: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let bad = |s: String| Err(WireError::Header(s));
        if b.len() < HEADER_LEN {
            return bad(format!("{} bytes, need {HEADER_LEN}", b.len()));
        }
        if b[0..2] != MAGIC {
            return bad(format!("magic {:02x}{:02x}, expected \"SD\"", b[0], b[1]));
        }
        if b[2] != VERSION {
            return bad(format!("version {}, this end speaks {VERSION}", b[2]));
        }
        let Some(op) = Op::from_u8(b[3]) else {
            return bad(format!("unknown op {}", b[3]));
        };
        let status = u16::from_le_bytes([b[4], b[5]]);
        let Some(status) = Status::from_u16(status) else {
            return bad(format!("unknown status {status}"));
        };
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return bad(format!("unknown flags {flags:#06x}"));
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8..16]);
        let id = u64::from_le_bytes(w);
        let meta_len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        let budget_ms = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if flags & FLAG_DEADLINE == 0 && budget_ms != 0 {
            return bad(format!(
                "budget {budget_ms} ms without FLAG_DEADLINE (must be 0 then)"
            ));
        }
        w.copy_from_slice(&b[24..32]);
        let data_len = u64::from_le_bytes(w);
        if meta_len > limits.max_meta {
            return bad(format!(
                "metadata of {meta_len} bytes is over the limit of {}",
                limits.max_meta
            ));
        }
        if data_len > limits.max_data {
            return bad(format!(
                "data of {data_len} bytes is over the limit of {}",
                limits.max_data
            ));
        }
        Ok(Self {
            op,
            status,
            flags,
            id,
            meta_len,
            data_len,
            budget_ms,
        })
    }
}

impl Header {
    /// Checks what only a request header must satisfy: status 0.
    pub fn check_request(&self) -> Result<(), WireError> {
        if self.status != Status::Ok {
            return Err(WireError::Header(format!(
                "a request carries status {:?}; requests must send 0",
                self.status
            )));
        }
        Ok(())
    }

    /// Checks what only a response header must satisfy: flags 0.
    pub fn check_response(&self) -> Result<(), WireError> {
        if self.flags != 0 {
            return Err(WireError::Header(format!(
                "a response carries flags {:#06x}; responses must send 0",
                self.flags
            )));
        }
        Ok(())
    }
}

/// A region of the server's arena: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the arena.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A lease on arena extents: while it lives the server does not reuse them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Lease id (release it with [`Op::Release`]).
    pub id: u64,
    /// Milliseconds the lease lives from when the server sent it.
    pub ttl_ms: u32,
    /// The extents, in value order.
    pub extents: Vec<Extent>,
}

/// A decoded request (its header aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Negotiation.
    Hello {
        /// The client's host identity (see `docs/data-path.md`).
        host_id: String,
    },
    /// Read `[offset, offset + length)` (to the end when `length` is `None`).
    Get {
        /// The key.
        key: Key,
        /// First byte.
        offset: u64,
        /// Bytes, or to the end.
        length: Option<u64>,
    },
    /// Read whole values.
    MGet {
        /// The keys (at most [`MAX_BATCH`]).
        keys: Vec<Key>,
    },
    /// Store the frame's data under `key`; commit checks `crc32c`.
    Put {
        /// The key.
        key: Key,
        /// CRC-32C of the whole value.
        crc32c: u32,
    },
    /// Reserve `len` bytes under `key`. The request id names the reservation.
    Reserve {
        /// The key.
        key: Key,
        /// Value length.
        len: u64,
    },
    /// Append the frame's data to a reservation.
    Write {
        /// The reservation (the id of its RESERVE request).
        reservation: u64,
    },
    /// Commit a reservation.
    Commit {
        /// The reservation.
        reservation: u64,
        /// CRC-32C of the whole value.
        crc32c: u32,
    },
    /// Abandon a reservation.
    Abort {
        /// The reservation.
        reservation: u64,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: Key,
    },
    /// Count the leading keys present.
    MatchPrefix {
        /// The keys (at most [`MAX_BATCH`]).
        keys: Vec<Key>,
    },
    /// Release leases.
    Release {
        /// Lease ids (at most [`MAX_BATCH`]).
        leases: Vec<u64>,
    },
    /// Read a range of each of a batch of values.
    MGetRange {
        /// The ranges (at most [`MAX_BATCH`]).
        ranges: Vec<KeyRange>,
    },
}

/// A range of one value, in an [`Request::MGetRange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The key.
    pub key: Key,
    /// First byte.
    pub offset: u64,
    /// Bytes, or to the end.
    pub length: Option<u64>,
}

impl Request {
    /// The op of this request.
    pub fn op(&self) -> Op {
        match self {
            Self::Hello { .. } => Op::Hello,
            Self::Get { .. } => Op::Get,
            Self::MGet { .. } => Op::MGet,
            Self::Put { .. } => Op::Put,
            Self::Reserve { .. } => Op::Reserve,
            Self::Write { .. } => Op::Write,
            Self::Commit { .. } => Op::Commit,
            Self::Abort { .. } => Op::Abort,
            Self::Delete { .. } => Op::Delete,
            Self::MatchPrefix { .. } => Op::MatchPrefix,
            Self::Release { .. } => Op::Release,
            Self::MGetRange { .. } => Op::MGetRange,
        }
    }

    /// Encodes the metadata of this request.
    pub fn encode_meta(&self, out: &mut BytesMut) {
        match self {
            Self::Hello { host_id } => put_str(out, host_id),
            Self::Get {
                key,
                offset,
                length,
            } => put_range(out, key, *offset, *length),
            Self::MGet { keys } | Self::MatchPrefix { keys } => {
                out.put_u32_le(keys.len() as u32);
                for k in keys {
                    put_key(out, k);
                }
            }
            Self::Put { key, crc32c } => {
                put_key(out, key);
                out.put_u32_le(*crc32c);
            }
            Self::Reserve { key, len } => {
                put_key(out, key);
                out.put_u64_le(*len);
            }
            Self::Write { reservation } | Self::Abort { reservation } => {
                out.put_u64_le(*reservation);
            }
            Self::Commit {
                reservation,
                crc32c,
            } => {
                out.put_u64_le(*reservation);
                out.put_u32_le(*crc32c);
            }
            Self::Delete { key } => put_key(out, key),
            Self::Release { leases } => {
                out.put_u32_le(leases.len() as u32);
                for l in leases {
                    out.put_u64_le(*l);
                }
            }
            Self::MGetRange { ranges } => {
                out.put_u32_le(ranges.len() as u32);
                for r in ranges {
                    put_range(out, &r.key, r.offset, r.length);
                }
            }
        }
    }

    /// Decodes the metadata of a request with header `h`. The data (if any) is not
    /// part of `meta`.
    pub fn decode(h: &Header, meta: &[u8]) -> Result<Self, WireError> {
        let op = h.op;
        let err = |reason: String| WireError::Meta { op, reason };
        let mut r = Reader::new(meta);
        let no_data = |what: &str| -> Result<(), WireError> {
            if h.data_len != 0 {
                return Err(err(format!(
                    "{what} carries no data, got {} bytes",
                    h.data_len
                )));
            }
            Ok(())
        };
        let req = match op {
            Op::Hello => {
                no_data("HELLO")?;
                Self::Hello {
                    host_id: take_str(&mut r, 256).map_err(err)?,
                }
            }
            Op::Get => {
                no_data("GET")?;
                let KeyRange {
                    key,
                    offset,
                    length,
                } = take_range(&mut r).map_err(err)?;
                Self::Get {
                    key,
                    offset,
                    length,
                }
            }
            Op::MGet | Op::MatchPrefix => {
                no_data("a batch request")?;
                let n = take_count(&mut r, MAX_BATCH).map_err(err)?;
                if n == 0 {
                    return Err(err("an empty key list".into()));
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(take_key(&mut r).map_err(err)?);
                }
                if op == Op::MGet {
                    Self::MGet { keys }
                } else {
                    Self::MatchPrefix { keys }
                }
            }
            Op::Put => Self::Put {
                key: take_key(&mut r).map_err(err)?,
                crc32c: r.u32_le().map_err(err)?,
            },
            Op::Reserve => {
                no_data("RESERVE")?;
                Self::Reserve {
                    key: take_key(&mut r).map_err(err)?,
                    len: r.u64_le().map_err(err)?,
                }
            }
            Op::Write => Self::Write {
                reservation: r.u64_le().map_err(err)?,
            },
            Op::Commit => {
                no_data("COMMIT")?;
                Self::Commit {
                    reservation: r.u64_le().map_err(err)?,
                    crc32c: r.u32_le().map_err(err)?,
                }
            }
            Op::Abort => {
                no_data("ABORT")?;
                Self::Abort {
                    reservation: r.u64_le().map_err(err)?,
                }
            }
            Op::Delete => {
                no_data("DELETE")?;
                Self::Delete {
                    key: take_key(&mut r).map_err(err)?,
                }
            }
            Op::Release => {
                no_data("RELEASE")?;
                let n = take_count(&mut r, MAX_BATCH).map_err(err)?;
                let mut leases = Vec::with_capacity(n);
                for _ in 0..n {
                    leases.push(r.u64_le().map_err(err)?);
                }
                Self::Release { leases }
            }
            Op::MGetRange => {
                no_data("MGET_RANGE")?;
                let n = take_count(&mut r, MAX_BATCH).map_err(err)?;
                if n == 0 {
                    return Err(err("an empty range list".into()));
                }
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push(take_range(&mut r).map_err(err)?);
                }
                Self::MGetRange { ranges }
            }
        };
        if !r.is_empty() {
            return Err(err(format!("{} trailing bytes", r.remaining())));
        }
        Ok(req)
    }
}

/// Server parameters sent in answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// The server's host identity.
    pub host_id: String,
    /// Size of the arena (shared-memory mappings cover all of it).
    pub arena_len: u64,
    /// Lease lifetime in milliseconds.
    pub lease_ttl_ms: u32,
    /// Largest data section the server accepts in one frame.
    pub max_data: u64,
    /// The ops the server serves (bit `n` is op `n`, [`Op::bit`]). A client checks
    /// it before it sends an op that a server of an older release may lack: an
    /// unknown op is a broken header, which ends the whole connection.
    pub ops: u64,
}

/// The metadata of a GET response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetInfo {
    /// Length of the whole value.
    pub total_len: u64,
    /// First byte returned.
    pub offset: u64,
    /// Bytes returned.
    pub len: u64,
    /// The extents holding them, if leased; otherwise the data follows inline.
    pub lease: Option<Lease>,
}

/// One key's result in an MGET response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MGetItem {
    /// Status for this key.
    pub status: Status,
    /// Value length (its bytes are the next `len` bytes of the data, unless leased).
    pub len: u64,
    /// The extents holding it, if leased.
    pub lease: Option<Lease>,
}

/// Encoders and decoders of response metadata.
pub mod response {
    use super::*;

    /// HELLO answer.
    pub fn encode_hello(out: &mut BytesMut, h: &HelloInfo) {
        put_str(out, &h.host_id);
        out.put_u64_le(h.arena_len);
        out.put_u32_le(h.lease_ttl_ms);
        out.put_u64_le(h.max_data);
        out.put_u64_le(h.ops);
    }

    /// Decodes a HELLO answer. Unlike every other decoder, this one accepts bytes
    /// after the fields it knows: later releases append fields to HELLO, and a
    /// client must still be able to talk to them. An answer that ends before the op
    /// set (the first release's) serves [`Op::FIRST_RELEASE`].
    pub fn decode_hello(meta: &[u8]) -> Result<HelloInfo, WireError> {
        let err = |reason| WireError::Meta {
            op: Op::Hello,
            reason,
        };
        let mut r = Reader::new(meta);
        let h = HelloInfo {
            host_id: take_str(&mut r, 256).map_err(err)?,
            arena_len: r.u64_le().map_err(err)?,
            lease_ttl_ms: r.u32_le().map_err(err)?,
            max_data: r.u64_le().map_err(err)?,
            ops: if r.remaining() == 0 {
                Op::FIRST_RELEASE
            } else {
                r.u64_le().map_err(err)?
            },
        };
        Ok(h)
    }

    /// GET answer.
    pub fn encode_get(out: &mut BytesMut, g: &GetInfo) {
        out.put_u64_le(g.total_len);
        out.put_u64_le(g.offset);
        out.put_u64_le(g.len);
        put_lease(out, g.lease.as_ref());
    }

    /// Decodes a GET answer.
    pub fn decode_get(meta: &[u8]) -> Result<GetInfo, WireError> {
        let err = |reason| WireError::Meta {
            op: Op::Get,
            reason,
        };
        let mut r = Reader::new(meta);
        let g = GetInfo {
            total_len: r.u64_le().map_err(err)?,
            offset: r.u64_le().map_err(err)?,
            len: r.u64_le().map_err(err)?,
            lease: take_lease(&mut r).map_err(err)?,
        };
        done(&r).map_err(err)?;
        if g.offset.checked_add(g.len).is_none_or(|e| e > g.total_len) {
            return Err(err(format!(
                "range {}+{} is past the value's {} bytes",
                g.offset, g.len, g.total_len
            )));
        }
        check_lease_len(g.lease.as_ref(), g.len).map_err(err)?;
        Ok(g)
    }

    /// MGET answer.
    pub fn encode_mget(out: &mut BytesMut, items: &[MGetItem]) {
        out.put_u32_le(items.len() as u32);
        for i in items {
            out.put_u16_le(i.status as u16);
            out.put_u64_le(i.len);
            put_lease(out, i.lease.as_ref());
        }
    }

    /// Decodes an MGET answer.
    pub fn decode_mget(meta: &[u8]) -> Result<Vec<MGetItem>, WireError> {
        let err = |reason| WireError::Meta {
            op: Op::MGet,
            reason,
        };
        let mut r = Reader::new(meta);
        let n = take_count(&mut r, MAX_BATCH).map_err(err)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let s = r.u16_le().map_err(err)?;
            let status = Status::from_u16(s).ok_or_else(|| err(format!("unknown status {s}")))?;
            let len = r.u64_le().map_err(err)?;
            let lease = take_lease(&mut r).map_err(err)?;
            check_lease_len(lease.as_ref(), len).map_err(err)?;
            items.push(MGetItem { status, len, lease });
        }
        done(&r).map_err(err)?;
        Ok(items)
    }

    /// RESERVE answer: the extents to write (shared memory, RDMA), or none (TCP).
    pub fn encode_reserve(out: &mut BytesMut, lease: Option<&Lease>) {
        put_lease(out, lease);
    }

    /// Decodes a RESERVE answer.
    pub fn decode_reserve(meta: &[u8]) -> Result<Option<Lease>, WireError> {
        let err = |reason| WireError::Meta {
            op: Op::Reserve,
            reason,
        };
        let mut r = Reader::new(meta);
        let l = take_lease(&mut r).map_err(err)?;
        done(&r).map_err(err)?;
        Ok(l)
    }

    /// A u64 answer (PUT/COMMIT: the value's length; DELETE: 1 if it existed;
    /// MATCH_PREFIX: the matched count).
    pub fn encode_u64(out: &mut BytesMut, v: u64) {
        out.put_u64_le(v);
    }

    /// Decodes a u64 answer.
    pub fn decode_u64(op: Op, meta: &[u8]) -> Result<u64, WireError> {
        let err = |reason| WireError::Meta { op, reason };
        let mut r = Reader::new(meta);
        let v = r.u64_le().map_err(err)?;
        done(&r).map_err(err)?;
        Ok(v)
    }

    /// Decodes an error message (lossy UTF-8, at most 4 KiB kept).
    pub fn decode_error(meta: &[u8]) -> String {
        String::from_utf8_lossy(&meta[..meta.len().min(4096)]).into_owned()
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn take_str(r: &mut Reader<'_>, max: usize) -> Result<String, String> {
    let n = r.u16_le()? as usize;
    if n > max {
        return Err(format!("a string of {n} bytes, at most {max}"));
    }
    String::from_utf8(r.take(n)?.to_vec()).map_err(|_| "a string that is not UTF-8".into())
}

fn put_key(out: &mut BytesMut, key: &Key) {
    let b = key.as_bytes();
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

/// `key, u64 offset, u64 length` (`u64::MAX`: to the end), as GET and MGET_RANGE
/// carry a range.
fn put_range(out: &mut BytesMut, key: &Key, offset: u64, length: Option<u64>) {
    put_key(out, key);
    out.put_u64_le(offset);
    out.put_u64_le(length.unwrap_or(u64::MAX));
}

fn take_range(r: &mut Reader<'_>) -> Result<KeyRange, String> {
    let key = take_key(r)?;
    let offset = r.u64_le()?;
    let length = r.u64_le()?;
    Ok(KeyRange {
        key,
        offset,
        length: (length != u64::MAX).then_some(length),
    })
}

fn take_key(r: &mut Reader<'_>) -> Result<Key, String> {
    let n = r.u32_le()? as usize;
    if n > r.remaining() {
        return Err(format!(
            "a key of {n} bytes with {} bytes left",
            r.remaining()
        ));
    }
    Key::decode(r.take(n)?).map_err(|e| e.to_string())
}

fn take_count(r: &mut Reader<'_>, max: usize) -> Result<usize, String> {
    let n = r.u32_le()? as usize;
    if n > max {
        return Err(format!("{n} items, at most {max}"));
    }
    Ok(n)
}

fn put_lease(out: &mut BytesMut, lease: Option<&Lease>) {
    match lease {
        None => out.put_u8(0),
        Some(l) => {
            out.put_u8(1);
            out.put_u64_le(l.id);
            out.put_u32_le(l.ttl_ms);
            out.put_u32_le(l.extents.len() as u32);
            for e in &l.extents {
                out.put_u64_le(e.offset);
                out.put_u64_le(e.len);
            }
        }
    }
}

fn take_lease(r: &mut Reader<'_>) -> Result<Option<Lease>, String> {
    match r.u8()? {
        0 => Ok(None),
        1 => {
            let id = r.u64_le()?;
            let ttl_ms = r.u32_le()?;
            let n = take_count(r, MAX_EXTENTS)?;
            if n * 16 > r.remaining() {
                return Err(format!("{n} extents with {} bytes left", r.remaining()));
            }
            let mut extents = Vec::with_capacity(n);
            for _ in 0..n {
                let offset = r.u64_le()?;
                let len = r.u64_le()?;
                if offset.checked_add(len).is_none() {
                    return Err(format!("extent {offset}+{len} overflows"));
                }
                extents.push(Extent { offset, len });
            }
            Ok(Some(Lease {
                id,
                ttl_ms,
                extents,
            }))
        }
        t => Err(format!("lease tag {t}, expected 0 or 1")),
    }
}

fn check_lease_len(lease: Option<&Lease>, len: u64) -> Result<(), String> {
    if let Some(l) = lease {
        let sum = l
            .extents
            .iter()
            .try_fold(0u64, |a, e| a.checked_add(e.len))
            .ok_or("extent lengths overflow")?;
        if sum != len {
            return Err(format!("extents hold {sum} bytes for a length of {len}"));
        }
    }
    Ok(())
}

fn done(r: &Reader<'_>) -> Result<(), String> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(format!("{} trailing bytes", r.remaining()))
    }
}

/// Encodes a whole request frame (header and metadata; `data_len` bytes of data
/// are to follow).
pub fn request_frame(id: u64, flags: u16, req: &Request, data_len: u64) -> Bytes {
    request_frame_within(id, flags, req, data_len, None)
}

/// [`request_frame`], carrying the caller's deadline `budget` from now when given
/// ([`FLAG_DEADLINE`]).
pub fn request_frame_within(
    id: u64,
    flags: u16,
    req: &Request,
    data_len: u64,
    budget: Option<std::time::Duration>,
) -> Bytes {
    let mut meta = BytesMut::with_capacity(64);
    req.encode_meta(&mut meta);
    let mut h = Header::request(req.op(), id, flags, meta.len(), data_len);
    if let Some(b) = budget {
        h = h.with_budget(b);
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len());
    out.put_slice(&h.encode());
    out.put_slice(&meta);
    out.freeze()
}

/// Decodes one whole frame held in `buf` (a header, its metadata and its data),
/// as the fuzz target does. Returns the header, the decoded request (for request
/// frames) and the data.
pub fn decode_request_frame<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Header, Request, &'a [u8]), WireError> {
    let h = Header::decode(buf, limits)?;
    h.check_request()?;
    let rest = &buf[HEADER_LEN..];
    let meta_len = h.meta_len as usize;
    if rest.len() < meta_len {
        return Err(WireError::Header(format!(
            "frame holds {} bytes after its header, metadata needs {meta_len}",
            rest.len()
        )));
    }
    let (meta, data) = rest.split_at(meta_len);
    if (data.len() as u64) != h.data_len {
        return Err(WireError::Header(format!(
            "frame holds {} data bytes, header says {}",
            data.len(),
            h.data_len
        )));
    }
    let req = Request::decode(&h, meta)?;
    Ok((h, req, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &str) -> Key {
        Key::new("kv", "t", b).unwrap()
    }

    #[test]
    fn op_and_status_lists_are_complete_and_in_code_order() {
        // The decoders index these lists by code: each entry sits at its code.
        for (i, op) in Op::LIST.iter().enumerate() {
            assert_eq!(*op as usize, i + 1, "{op:?}");
            assert_eq!(Op::from_u8(*op as u8), Some(*op));
        }
        assert_eq!(Op::from_u8(0), None);
        assert_eq!(Op::from_u8(Op::LIST.len() as u8 + 1), None);
        assert_eq!(Op::LIST.iter().fold(0, |a, o| a | o.bit()), Op::ALL);
        for (i, s) in Status::LIST.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
            assert_eq!(Status::from_u16(*s as u16), Some(*s));
        }
        assert_eq!(Status::from_u16(Status::LIST.len() as u16), None);
        assert_eq!(Status::from_u16(u16::MAX), None);
        let names: std::collections::HashSet<_> = Op::LIST
            .iter()
            .map(|o| o.name())
            .chain(Status::LIST.iter().map(|s| s.name()))
            .collect();
        assert_eq!(names.len(), Op::LIST.len() + Status::LIST.len());
    }

    fn roundtrip(req: Request, data: &[u8]) {
        let frame = request_frame(42, 0, &req, data.len() as u64);
        let mut buf = frame.to_vec();
        buf.extend_from_slice(data);
        let (h, got, d) = decode_request_frame(&buf, &Limits::default()).unwrap();
        assert_eq!(h.id, 42);
        assert_eq!(got, req);
        assert_eq!(d, data);
    }

    #[test]
    fn every_request_roundtrips() {
        roundtrip(
            Request::Hello {
                host_id: "boot:abc".into(),
            },
            b"",
        );
        roundtrip(
            Request::Get {
                key: key("a"),
                offset: 5,
                length: None,
            },
            b"",
        );
        roundtrip(
            Request::Get {
                key: key("a"),
                offset: 5,
                length: Some(7),
            },
            b"",
        );
        roundtrip(
            Request::MGet {
                keys: vec![key("a"), key("b")],
            },
            b"",
        );
        roundtrip(
            Request::MGetRange {
                ranges: vec![
                    KeyRange {
                        key: key("a"),
                        offset: 3,
                        length: Some(4),
                    },
                    KeyRange {
                        key: key("b"),
                        offset: 0,
                        length: None,
                    },
                ],
            },
            b"",
        );
        roundtrip(
            Request::Put {
                key: key("a"),
                crc32c: 9,
            },
            b"value",
        );
        roundtrip(
            Request::Reserve {
                key: key("a"),
                len: 10,
            },
            b"",
        );
        roundtrip(Request::Write { reservation: 3 }, b"abc");
        roundtrip(
            Request::Commit {
                reservation: 3,
                crc32c: 1,
            },
            b"",
        );
        roundtrip(Request::Abort { reservation: 3 }, b"");
        roundtrip(Request::Delete { key: key("z") }, b"");
        roundtrip(
            Request::MatchPrefix {
                keys: vec![key("a")],
            },
            b"",
        );
        roundtrip(
            Request::Release {
                leases: vec![1, 2, 3],
            },
            b"",
        );
    }

    #[test]
    fn header_refusals_name_the_field() {
        let ok = Header::request(Op::Get, 1, 0, 10, 0).encode();
        let lim = Limits::default();
        let mut b = ok;
        b[0] = b'X';
        assert!(format!("{:?}", Header::decode(&b, &lim)).contains("magic"));
        let mut b = ok;
        b[2] = 9;
        assert!(format!("{:?}", Header::decode(&b, &lim)).contains("version"));
        let mut b = ok;
        b[3] = 200;
        assert!(format!("{:?}", Header::decode(&b, &lim)).contains("unknown op"));
        let mut b = ok;
        b[6] = 0x80;
        assert!(format!("{:?}", Header::decode(&b, &lim)).contains("flags"));
        let mut b = ok;
        b[4] = 2;
        let h = Header::decode(&b, &lim).unwrap();
        assert!(format!("{:?}", h.check_request()).contains("requests must send 0"));
        let h = Header::request(Op::Put, 1, 0, 10, lim.max_data + 1).encode();
        assert!(format!("{:?}", Header::decode(&h, &lim)).contains("over the limit"));
        assert!(Header::decode(&ok[..31], &lim).is_err());
    }

    #[test]
    fn meta_refusals() {
        let h = Header::request(Op::Get, 1, 0, 3, 0);
        let e = Request::decode(&h, &[1, 2, 3]).unwrap_err();
        assert!(matches!(e, WireError::Meta { op: Op::Get, .. }), "{e:?}");
        // A GET with data is refused.
        let mut meta = BytesMut::new();
        Request::Delete { key: key("a") }.encode_meta(&mut meta);
        let h = Header::request(Op::Delete, 1, 0, meta.len(), 5);
        assert!(Request::decode(&h, &meta).is_err());
        // Trailing bytes are refused.
        let mut m = meta.to_vec();
        m.push(0);
        let h = Header::request(Op::Delete, 1, 0, m.len(), 0);
        assert!(Request::decode(&h, &m).is_err());
    }

    #[test]
    fn responses_roundtrip_and_check_lengths() {
        let lease = Lease {
            id: 7,
            ttl_ms: 5000,
            extents: vec![
                Extent {
                    offset: 4096,
                    len: 10,
                },
                Extent { offset: 0, len: 5 },
            ],
        };
        let g = GetInfo {
            total_len: 20,
            offset: 5,
            len: 15,
            lease: Some(lease.clone()),
        };
        let mut m = BytesMut::new();
        response::encode_get(&mut m, &g);
        assert_eq!(response::decode_get(&m).unwrap(), g);
        let bad = GetInfo { len: 14, ..g };
        let mut m = BytesMut::new();
        response::encode_get(&mut m, &bad);
        assert!(response::decode_get(&m).is_err(), "extents ≠ length");
        let items = vec![
            MGetItem {
                status: Status::Ok,
                len: 15,
                lease: Some(lease),
            },
            MGetItem {
                status: Status::NotFound,
                len: 0,
                lease: None,
            },
        ];
        let mut m = BytesMut::new();
        response::encode_mget(&mut m, &items);
        assert_eq!(response::decode_mget(&m).unwrap(), items);
        let hi = HelloInfo {
            host_id: "h".into(),
            arena_len: 1 << 30,
            lease_ttl_ms: 5000,
            max_data: 1 << 30,
            ops: Op::ALL,
        };
        let mut m = BytesMut::new();
        response::encode_hello(&mut m, &hi);
        assert_eq!(response::decode_hello(&m).unwrap(), hi);
        // A later release's answer, with fields appended: still read.
        let mut later = m.clone();
        later.extend_from_slice(&[7; 20]);
        assert_eq!(response::decode_hello(&later).unwrap(), hi);
        // The first release's answer, without the op set: its ops.
        let first = &m[..m.len() - 8];
        assert_eq!(
            response::decode_hello(first).unwrap().ops,
            Op::FIRST_RELEASE
        );
        // A cut op set is refused, naming HELLO.
        let e = response::decode_hello(&m[..m.len() - 3]).unwrap_err();
        assert!(format!("{e}").contains("Hello"), "{e}");
        // Every op's bit is in ALL; no other bit is.
        let bits = (0..=255u8)
            .filter_map(Op::from_u8)
            .fold(0u64, |b, op| b | op.bit());
        assert_eq!(bits, Op::ALL);
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_request_frame(&bytes, &Limits::default());
            let _ = response::decode_get(&bytes);
            let _ = response::decode_mget(&bytes);
            let _ = response::decode_hello(&bytes);
            let _ = response::decode_reserve(&bytes);
        }
    }
}
