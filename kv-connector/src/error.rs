//! Errors of the connector.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or argument is inconsistent.
    #[error("kv connector config: {0}")]
    Config(String),
    /// A tensor does not have the layout the connector was set up for.
    #[error("kv cache layout: {0}")]
    Layout(String),
    /// A stored chunk failed a check: its blocks are reported, never handed over as
    /// good.
    #[error("kv chunk {key}: {why}")]
    Corrupt {
        /// The chunk's key, as text.
        key: String,
        /// What was wrong.
        why: String,
    },
    /// The chunk store failed (network, server, timeout).
    #[error("kv chunk store: {0}")]
    Store(String),
    /// A candle operation failed.
    #[cfg(feature = "engine")]
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<strata_transport::ClientError> for Error {
    fn from(e: strata_transport::ClientError) -> Self {
        Error::Store(e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
