//! Counters of a data server, for the server's Prometheus `/metrics`: answers by op
//! and status, value bytes by how they left (inline on the socket, or leased out of
//! the arena), and what the server's bounds refused or dropped. (Connections open
//! are read off the server's connection slots: `DataServer::connections`.) Relaxed atomics: each is counted where it happens, and read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use strata_transport::wire::{Op, Status};

/// A data server's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `data.listen` (the TCP carrier; RDMA's frames ride on it too).
    Tcp = 0,
    /// The shared-memory carrier's Unix socket.
    Shm = 1,
}

impl Listener {
    /// Both listeners.
    pub const LIST: [Self; 2] = [Self::Tcp, Self::Shm];

    /// The listener's name in metrics (`tcp`, `shm`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Shm => "shm",
        }
    }
}

/// The counters (see the module doc).
#[derive(Debug)]
pub struct DataStats {
    /// By op code (index = code - 1) and status code.
    answers: [[AtomicU64; Status::LIST.len()]; Op::LIST.len()],
    pub(crate) bytes_inline: AtomicU64,
    pub(crate) bytes_leased: AtomicU64,
    pub(crate) bytes_committed: AtomicU64,
    refused: [AtomicU64; 2],
    pub(crate) stalled: AtomicU64,
    pub(crate) reservations_expired: AtomicU64,
    pub(crate) poll_hits: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
}

impl Default for DataStats {
    fn default() -> Self {
        Self {
            answers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            bytes_inline: AtomicU64::new(0),
            bytes_leased: AtomicU64::new(0),
            bytes_committed: AtomicU64::new(0),
            refused: Default::default(),
            stalled: AtomicU64::new(0),
            reservations_expired: AtomicU64::new(0),
            poll_hits: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub(crate) fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl DataStats {
    pub(crate) fn answered(&self, op: Op, status: Status) {
        add(&self.answers[op as usize - 1][status as usize], 1);
    }

    pub(crate) fn refused(&self, l: Listener) {
        add(&self.refused[l as usize], 1);
    }

    /// Answers written of `op` with `status`.
    pub fn answers(&self, op: Op, status: Status) -> u64 {
        get(&self.answers[op as usize - 1][status as usize])
    }

    /// Value bytes written on the socket (TCP, or a Unix socket's inline answers).
    pub fn bytes_inline(&self) -> u64 {
        get(&self.bytes_inline)
    }

    /// Value bytes handed out under leases: the client read them out of the arena
    /// (shared memory) or by RDMA READ.
    pub fn bytes_leased(&self) -> u64 {
        get(&self.bytes_leased)
    }

    /// Value bytes of committed PUTs and reservations.
    pub fn bytes_committed(&self) -> u64 {
        get(&self.bytes_committed)
    }

    /// Connections `l` closed at once because it was at `data.max_connections`.
    pub fn refused_connections(&self, l: Listener) -> u64 {
        get(&self.refused[l as usize])
    }

    /// Connections dropped because their peer stalled a lease lifetime (took no
    /// answer bytes, or stopped sending a frame's data).
    pub fn stalled_connections(&self) -> u64 {
        get(&self.stalled)
    }

    /// Reservations dropped because nobody wrote to or committed them for a lease
    /// lifetime.
    pub fn reservations_expired(&self) -> u64 {
        get(&self.reservations_expired)
    }

    /// Connections the server closed after `data.idle_timeout_ms` idle.
    pub fn idle_closed(&self) -> u64 {
        get(&self.idle_closed)
    }

    /// Polls that found the next request waiting, each a wake-up saved.
    pub fn poll_hits(&self) -> u64 {
        get(&self.poll_hits)
    }
}
