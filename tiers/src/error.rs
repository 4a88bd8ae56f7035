//! The storage engine's error type.

use std::time::Duration;

/// Result alias for the storage engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `strata-tiers`. A miss is not an error: lookups
/// return `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is malformed (bad encoding, bad namespace name, …).
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What was wrong.
        reason: String,
    },
    /// The namespace is not registered.
    #[error("unknown namespace {namespace:?} (registered: {registered})")]
    UnknownNamespace {
        /// The namespace that was asked for.
        namespace: String,
        /// The registered namespaces, comma-separated.
        registered: String,
    },
    /// The request breaks a rule of its namespace's policy.
    #[error("namespace {namespace:?} policy: {rule}")]
    PolicyViolation {
        /// The namespace.
        namespace: String,
        /// The rule that was broken, in words.
        rule: String,
    },
    /// A range starts past the end of the value.
    #[error("range {offset}+{length:?} is outside the value of {size} bytes")]
    RangeOutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length, if any.
        length: Option<u64>,
        /// Size of the value.
        size: u64,
    },
    /// A tier or the store is out of space or in-flight budget; retry later.
    #[error("{what} is exhausted: {detail}")]
    Exhausted {
        /// What ran out (a tier, the in-flight byte budget, …).
        what: String,
        /// Details for the operator.
        detail: String,
        /// A hint for when to retry.
        retry_after: Option<Duration>,
    },
    /// A request asks for more than a limit allows, whatever the load: retrying it
    /// as it is cannot succeed.
    #[error("{what} of {len} {unit} is over the limit of {limit} {unit} ({setting})")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
        /// What `len` and `limit` count.
        unit: &'static str,
        /// The setting or constant that sets the limit.
        setting: &'static str,
    },
    /// A value's bytes did not match their checksum. The checksum of what was
    /// there is not told: over shared memory or RDMA it is a digest of bytes the
    /// caller may not have written.
    #[error("checksum mismatch for {what}: the bytes do not have the CRC-32C {expected:#010x}")]
    ChecksumMismatch {
        /// What was checked.
        what: String,
        /// The expected CRC-32C (the caller's, or the one stored with the value).
        expected: u32,
    },
    /// A two-phase put was committed with the wrong number of bytes.
    #[error("incomplete value: expected {expected} bytes, got {actual}")]
    Incomplete {
        /// The length declared at reserve time.
        expected: u64,
        /// The bytes actually written.
        actual: u64,
    },
    /// A stored record failed to decode (corrupt or foreign bytes).
    #[error("corrupt record in {tier}: {reason}")]
    Corrupt {
        /// The tier it came from.
        tier: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The entry is not present (for operations that need it, like pin).
    #[error("not found: {key}")]
    NotFound {
        /// The key, in text form.
        key: String,
    },
    /// An I/O error from the local disk.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error from the NVMe engine (foyer).
    #[error("nvme tier: {message}")]
    Nvme {
        /// The engine's message.
        message: String,
    },
    /// An error from Azure Blob.
    #[error("blob {op} {target}: HTTP {status:?}: {message}")]
    Blob {
        /// The operation.
        op: &'static str,
        /// The blob or container.
        target: String,
        /// The HTTP status, if a response came back.
        status: Option<u16>,
        /// Whether a retry may succeed.
        retryable: bool,
        /// The service's message.
        message: String,
    },
    /// A deadline passed.
    #[error("deadline exceeded after {elapsed:?} during {op}")]
    DeadlineExceeded {
        /// The operation.
        op: &'static str,
        /// Time spent.
        elapsed: Duration,
    },
    /// The store or tier is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The failure of an operation this caller shared with others (single-flight).
    #[error("{message}")]
    Shared {
        /// The original error, as text.
        message: String,
        /// The original error's kind.
        kind: ErrorKind,
    },
    /// The origin's object changed since the version being read was recorded (a
    /// dataset version whose blob was rewritten): served from neither version.
    #[error("{target} changed since this version was recorded: {detail}")]
    Changed {
        /// The object.
        target: String,
        /// What changed.
        detail: String,
    },
    /// A configuration value is invalid.
    #[error("invalid config {field}: {reason}")]
    Config {
        /// The field, as `section.key`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What kind of failure an [`Error`] is: what a caller, and a status, needs to
/// know of it. Every error has one ([`Error::kind`]); the server turns kinds into
/// gRPC codes and data-path statuses through one table (`server/src/status.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule of its namespace.
    Invalid,
    /// The bytes sent do not match the checksum sent with them.
    ChecksumMismatch,
    /// A range starts past the end of the value.
    OutOfRange,
    /// No such value (for operations that need one).
    NotFound,
    /// Out of room or in-flight budget; retry later.
    Exhausted,
    /// Over a limit that no retry meets.
    TooLarge,
    /// A deadline passed.
    DeadlineExceeded,
    /// Shutting down, or a failure of a tier or origin that a retry may not meet.
    Unavailable,
    /// Stored bytes failed to decode, and no intact copy could be read.
    Corrupt,
    /// The origin's object changed since the version being read was recorded.
    Changed,
    /// Anything else (the message says what).
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [Self; 11] = [
        Self::Invalid,
        Self::ChecksumMismatch,
        Self::OutOfRange,
        Self::NotFound,
        Self::Exhausted,
        Self::TooLarge,
        Self::DeadlineExceeded,
        Self::Unavailable,
        Self::Corrupt,
        Self::Changed,
        Self::Internal,
    ];

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Exhausted | Self::DeadlineExceeded | Self::Unavailable
        )
    }
}

impl Error {
    /// The kind of this error (an exhaustive match: a new variant must choose one).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKey { .. }
            | Error::UnknownNamespace { .. }
            | Error::PolicyViolation { .. }
            | Error::Incomplete { .. }
            | Error::Config { .. } => ErrorKind::Invalid,
            Error::ChecksumMismatch { .. } => ErrorKind::ChecksumMismatch,
            Error::RangeOutOfBounds { .. } => ErrorKind::OutOfRange,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Exhausted { .. } => ErrorKind::Exhausted,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Error::ShuttingDown => ErrorKind::Unavailable,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Changed { .. } => ErrorKind::Changed,
            Error::Shared { kind, .. } => *kind,
            Error::Io { .. } | Error::Nvme { .. } | Error::Blob { .. } => {
                if self.is_retryable() {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Internal
                }
            }
        }
    }

    /// Whether retrying the same operation may succeed: its kind says so, or, for
    /// the errors of a disk or an origin, the error itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Blob { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            Error::Nvme { .. } => false,
            _ => self.kind().is_retryable(),
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<strata_proto::KeyError> for Error {
    fn from(e: strata_proto::KeyError) -> Self {
        Error::InvalidKey { reason: e.reason }
    }
}
