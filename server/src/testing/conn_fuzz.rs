//! A data connection's state machine driven by random byte streams against a
//! real in-process server, shared by the seeded test
//! (`server/tests/data_path/fuzz_conn.rs`) and the coverage-guided cargo-fuzz
//! target (`fuzz/fuzz_targets/conn.rs`): well-formed frames of every op with
//! random fields (PUTs with short data or the wrong checksum, RESERVE / WRITE /
//! COMMIT / ABORT of reservations made or not, leases released or not), raw
//! garbage, headers whose lengths lie, several requests in flight, written in
//! random pieces, over TCP and the shared-memory socket; then what was
//! acknowledged is read back.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use strata_transport::Client;
use strata_transport::wire::{FLAG_LEASE, HEADER_LEN, Header, Request, Status, request_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::k;
use crate::Running;

/// Where a session's choices come from: a seeded generator ([`Rng`], the test)
/// or the fuzzer's input ([`Input`], the cargo-fuzz target).
pub trait Source {
    /// The next 64 random bits.
    fn next(&mut self) -> u64;

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `n` random bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Fewer than `max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
}

/// xorshift64*: small, seedable, good enough to pick fields.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Source for Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A fuzzer's input read as choices: each draw takes the next (up to) 8 bytes,
/// 0 once they are used up. Value bytes come from a generator seeded by the
/// draw, so a mutation of one byte changes one choice, not the whole session.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Choices from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been drawn.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl Source for Input<'_> {
    fn next(&mut self) -> u64 {
        let n = self.data.len().min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        u64::from_le_bytes(b)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut g = Rng(self.next() | 1);
        (0..n).map(|_| g.next() as u8).collect()
    }
}

/// What a session sent that the server may store: value bytes by the id of the
/// PUT, or of the COMMIT of a reservation whose every byte was written.
#[derive(Debug, Default)]
pub struct Sent {
    /// PUT id → (key, value).
    pub puts: HashMap<u64, (String, Vec<u8>)>,
    /// COMMIT id → (key, value) of the reservation it commits, if every byte
    /// of it was written.
    pub commits: HashMap<u64, (String, Vec<u8>)>,
}

/// One random session's bytes, and what in it may be acknowledged.
pub fn session(rng: &mut impl Source, round: u64) -> (Vec<u8>, Sent) {
    let mut out = Vec::new();
    let mut sent = Sent::default();
    // Reservations made in this session: id → (key, len, bytes written so far).
    let mut open: Vec<(u64, String, u64, Vec<u8>)> = Vec::new();
    let mut leases: Vec<u64> = Vec::new();
    let pieces = 1 + rng.below(32);
    // A piece the server answers by closing the connection (garbage, a header
    // that lies) comes in a third of the sessions, at a random place: the
    // others run to their end.
    let poison = rng.chance(33).then(|| rng.below(pieces));
    for p in 0..pieces {
        let id = round * 1000 + p + 1;
        let flags = if rng.chance(50) { FLAG_LEASE } else { 0 };
        let kind = if poison == Some(p) {
            [0, 13][rng.below(2) as usize]
        } else {
            1 + rng.below(12)
        };
        match kind {
            0 => {
                // Garbage, perhaps with a valid magic in front.
                let mut g = rng.some_bytes(80);
                if rng.chance(50) && g.len() >= 4 {
                    g[..4].copy_from_slice(
                        &request_frame(
                            0,
                            0,
                            &Request::Hello {
                                host_id: String::new(),
                            },
                            0,
                        )[..4],
                    );
                }
                out.extend_from_slice(&g);
            }
            1 => out.extend_from_slice(&request_frame(
                id,
                flags,
                &Request::Hello {
                    host_id: "fuzz".into(),
                },
                0,
            )),
            2 => {
                let len = rng.below(3 << 20);
                let (offset, length) = (
                    rng.below(4 << 20),
                    rng.chance(50).then(|| rng.below(len + 10)),
                );
                out.extend_from_slice(&request_frame(
                    id,
                    flags,
                    &Request::Get {
                        key: k(&key(rng, round)),
                        offset,
                        length,
                    },
                    0,
                ));
            }
            3 => {
                let keys = (0..rng.below(5)).map(|_| k(&key(rng, round))).collect();
                out.extend_from_slice(&request_frame(id, flags, &Request::MGet { keys }, 0));
            }
            4 | 5 => {
                // A PUT: whole and right, short (the next frame's bytes are read as
                // its data), or with the wrong checksum.
                let k_ = key(rng, round);
                let value = {
                    let max = if rng.chance(5) { 1 << 20 } else { 3000 };
                    rng.some_bytes(max)
                };
                let crc = crc32c::crc32c(&value) ^ u32::from(rng.chance(20));
                let short = rng.chance(10) && !value.is_empty();
                out.extend_from_slice(&request_frame(
                    id,
                    flags,
                    &Request::Put {
                        key: k(&k_),
                        crc32c: crc,
                    },
                    value.len() as u64,
                ));
                if short {
                    out.extend_from_slice(&value[..value.len() / 2]);
                } else {
                    out.extend_from_slice(&value);
                    if crc == crc32c::crc32c(&value) {
                        sent.puts.insert(id, (k_, value));
                    }
                }
            }
            6 => {
                let k_ = key(rng, round);
                let max = if rng.chance(5) { 1 << 20 } else { 5000 };
                let len = rng.below(max);
                out.extend_from_slice(&request_frame(
                    id,
                    0,
                    &Request::Reserve { key: k(&k_), len },
                    0,
                ));
                open.push((id, k_, len, Vec::new()));
            }
            7 => {
                // WRITE to an open reservation (or to a made-up one).
                let mut spoiled = false;
                let (rid, chunk) = match open.last_mut() {
                    Some((rid, _, len, so_far)) if rng.chance(80) => {
                        let left = *len - so_far.len() as u64;
                        let over = u64::from(rng.chance(10)) * 10;
                        let n = rng.below(left + 1 + over);
                        let chunk = rng.bytes(n as usize);
                        if so_far.len() as u64 + n <= *len {
                            so_far.extend_from_slice(&chunk);
                        } else {
                            // Past the end: refused. The reservation is left to
                            // expire (no COMMIT of it is sent).
                            spoiled = true;
                        }
                        (*rid, chunk)
                    }
                    _ => (rng.next(), rng.some_bytes(100)),
                };
                if spoiled {
                    open.pop();
                }
                out.extend_from_slice(&request_frame(
                    id,
                    0,
                    &Request::Write { reservation: rid },
                    chunk.len() as u64,
                ));
                out.extend_from_slice(&chunk);
            }
            8 => {
                let (rid, crc) = match open.pop() {
                    Some((rid, k_, len, so_far)) => {
                        let crc = crc32c::crc32c(&so_far) ^ u32::from(rng.chance(15));
                        if so_far.len() as u64 == len && crc == crc32c::crc32c(&so_far) {
                            sent.commits.insert(id, (k_, so_far));
                        }
                        (rid, crc)
                    }
                    None => (rng.next(), rng.next() as u32),
                };
                out.extend_from_slice(&request_frame(
                    id,
                    0,
                    &Request::Commit {
                        reservation: rid,
                        crc32c: crc,
                    },
                    0,
                ));
            }
            9 => {
                let rid = match open.pop() {
                    Some((rid, ..)) if rng.chance(80) => rid,
                    _ => rng.next(),
                };
                out.extend_from_slice(&request_frame(
                    id,
                    0,
                    &Request::Abort { reservation: rid },
                    0,
                ));
            }
            10 => out.extend_from_slice(&request_frame(
                id,
                0,
                &Request::Delete {
                    key: k(&format!("kv/fz/other-{}", rng.below(4))),
                },
                0,
            )),
            11 => {
                let keys = (0..rng.below(6)).map(|_| k(&key(rng, round))).collect();
                out.extend_from_slice(&request_frame(id, 0, &Request::MatchPrefix { keys }, 0));
            }
            12 => {
                leases.push(rng.next());
                out.extend_from_slice(&request_frame(
                    id,
                    0,
                    &Request::Release {
                        leases: leases.clone(),
                    },
                    0,
                ));
            }
            _ => {
                // A valid header whose lengths lie: flip a byte of the header.
                let mut f = request_frame(
                    id,
                    flags,
                    &Request::Get {
                        key: k(&key(rng, round)),
                        offset: 0,
                        length: None,
                    },
                    0,
                )
                .to_vec();
                let at = rng.below(HEADER_LEN as u64) as usize;
                f[at] ^= 1 << rng.below(8);
                out.extend_from_slice(&f);
            }
        }
    }
    (out, sent)
}

/// One of the six keys of session `round`.
fn key(rng: &mut impl Source, round: u64) -> String {
    format!("kv/fz/{round}-{}", rng.below(6))
}

/// Writes `bytes` in random pieces, then half-closes, while reading every answer
/// until the server closes the connection (or says nothing for 400 ms).
/// Returns the answers' (id, status).
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    bytes: Vec<u8>,
    rng: &mut impl Source,
) -> Vec<(u64, Status)> {
    let (mut r, mut w) = tokio::io::split(s);
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = (1 + rng.below(9000) as usize).min(bytes.len() - at);
        cuts.push(bytes[at..at + n].to_vec());
        at += n;
    }
    let writer = async move {
        for c in cuts {
            if w.write_all(&c).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Half-closed: the server answers what is in flight, then closes.
        let _ = w.shutdown().await;
        w
    };
    let reader = async {
        let mut answers = Vec::new();
        loop {
            let mut hb = [0u8; HEADER_LEN];
            match tokio::time::timeout(Duration::from_millis(400), r.read_exact(&mut hb)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            let Ok(h) = Header::decode(&hb, &strata_transport::wire::Limits::default()) else {
                panic!("the server sent a header that does not decode");
            };
            let mut rest = vec![0u8; h.meta_len as usize + h.data_len as usize];
            if r.read_exact(&mut rest).await.is_err() {
                break;
            }
            answers.push((h.id, h.status));
        }
        answers
    };
    let (_w, answers) = tokio::join!(writer, reader);
    answers
}

/// One session over TCP or shared memory: what it sent that could be stored,
/// and the ids the server answered `Ok`.
pub async fn fuzz_over(
    r: &Running,
    rng: &mut impl Source,
    round: u64,
    shm: bool,
) -> (Sent, HashSet<u64>) {
    let (bytes, sent) = session(rng, round);
    let answers = if shm {
        let s = UnixStream::connect(r.shm_socket.as_ref().unwrap())
            .await
            .unwrap();
        let _fd = strata_transport::data::recv_fd(&s).await.unwrap();
        drive(s, bytes, rng).await
    } else {
        let s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
        drive(s, bytes, rng).await
    };
    let ok = answers
        .iter()
        .filter(|(_, st)| *st == Status::Ok)
        .map(|(id, _)| *id)
        .collect();
    (sent, ok)
}

/// Reads back what a session wrote: a key with an acknowledged write holds one
/// of the values sent for it (a write whose answer was lost as the connection
/// closed under it may have been stored too). Every key of the session is then
/// deleted, so the DRAM tier never has to evict an acknowledged value of a later
/// one. Returns how many acknowledged keys were checked, or what was wrong.
pub async fn check_session(check: &Client, sent: Sent, ok: &HashSet<u64>) -> Result<usize, String> {
    let mut by_key: HashMap<String, (bool, Vec<Vec<u8>>)> = HashMap::new();
    for (id, (key, v)) in sent.puts.into_iter().chain(sent.commits) {
        let e = by_key.entry(key).or_default();
        e.0 |= ok.contains(&id);
        e.1.push(v);
    }
    let mut acknowledged = 0;
    for (key, (acked, vs)) in by_key {
        if !acked {
            let _ = check.delete(&k(&key)).await;
            continue;
        }
        let got = check
            .get(&k(&key))
            .await
            .map_err(|e| format!("get {key}: {e}"))?
            .ok_or_else(|| format!("{key} was acknowledged and is gone"))?;
        if !vs.iter().any(|v| v[..] == got[..]) {
            return Err(format!(
                "{key} reads back {} bytes that no write sent",
                got.len()
            ));
        }
        acknowledged += 1;
        check
            .delete(&k(&key))
            .await
            .map_err(|e| format!("delete {key}: {e}"))?;
    }
    Ok(acknowledged)
}
