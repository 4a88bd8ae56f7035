//! The client's error type.

/// Result alias for the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not reach the server.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.status.code()), .status.message())]
    Status {
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The key is malformed (checked before sending).
    #[error(transparent)]
    Key(#[from] strata_proto::KeyError),
    /// The server's answer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The data path answered a request with an error status.
    #[error("{op:?}: {status:?}: {message}")]
    Data {
        /// The operation.
        op: crate::wire::Op,
        /// The status.
        status: crate::wire::Status,
        /// The server's message.
        message: String,
    },
    /// The data-path connection failed (it is reopened on the next call).
    #[error("data connection: {0}")]
    Io(#[from] std::io::Error),
    /// A deadline passed.
    #[error("deadline of {0:?} exceeded")]
    Timeout(std::time::Duration),
    /// The server does not serve this op (it runs an older release); nothing was
    /// sent, and the connection goes on.
    #[error("the data server does not serve {0:?} (an older release): upgrade it")]
    Unsupported(crate::wire::Op),
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::OutOfRange => "out of range",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::DataLoss => "data loss",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Cancelled => "cancelled",
        _ => "error",
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status { status }
    }
}

impl ClientError {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { status } => Some(status.code()),
            _ => None,
        }
    }

    /// Whether the server could not be reached or is going away (a refused or
    /// broken connection, a deadline, `Unavailable`): in a cluster the call can
    /// go to the key's next owner.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Timeout(_) => true,
            ClientError::Data { status, .. } => *status == crate::wire::Status::Unavailable,
            ClientError::Status { status } => {
                status.code() == tonic::Code::Unavailable || connection_lost(status)
            }
            _ => false,
        }
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Timeout(_) => true,
            ClientError::Data { status, .. } => status.is_transient(),
            ClientError::Status { status } => {
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) || connection_lost(status)
            }
            _ => false,
        }
    }
}

/// Whether a gRPC status was made on this side because the connection broke or
/// the server sent GOAWAY while going away, not sent by the server: tonic reports
/// those as `Cancelled`, `Internal` or `Unknown` with the transport error as the
/// status's source, which a status from the server never has.
fn connection_lost(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status
        .source()
        .is_some_and(|s| s.is::<tonic::transport::Error>())
}

/// Runs `call` until it succeeds, fails for good, or has been tried `attempts`
/// times; between tries it sleeps a random time up to `backoff`, doubling each time
/// (full jitter). Only for idempotent calls.
pub(crate) async fn retry<T, F, Fut>(
    attempts: u32,
    backoff: std::time::Duration,
    call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_if(attempts, backoff, ClientError::is_retryable, call).await
}

/// As [`retry`], for the errors `retryable` picks: a non-idempotent call retries
/// only what says nothing was done (a `Busy` answer).
pub(crate) async fn retry_if<T, F, Fut>(
    attempts: u32,
    backoff: std::time::Duration,
    retryable: impl Fn(&ClientError) -> bool,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if retryable(&e) && attempt < attempts => {
                let jitter = rand::random_range(0..=delay.as_millis() as u64);
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}
