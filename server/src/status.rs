//! The one mapping from storage-engine errors to gRPC statuses.

use strata_tiers::Error;
use tonic::{Code, Status};

/// Maps an engine error to a status whose message says what was wrong.
pub(crate) fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::InvalidKey { .. }
        | Error::UnknownNamespace { .. }
        | Error::PolicyViolation { .. }
        | Error::Incomplete { .. }
        | Error::ChecksumMismatch { .. }
        | Error::Config { .. } => Code::InvalidArgument,
        Error::RangeOutOfBounds { .. } => Code::OutOfRange,
        Error::Exhausted { .. } => Code::ResourceExhausted,
        Error::NotFound { .. } => Code::NotFound,
        Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        Error::ShuttingDown => Code::Unavailable,
        Error::Corrupt { .. } => Code::DataLoss,
        Error::Changed { .. } => Code::FailedPrecondition,
        e if e.is_retryable() => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    if let Error::Exhausted {
        retry_after: Some(d),
        ..
    } = &e
        && let Ok(v) = d.as_millis().to_string().parse()
    {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}
