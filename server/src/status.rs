//! The one mapping from storage-engine errors to what both entry points answer:
//! each [`ErrorKind`] has one gRPC code and one data-path status, in [`TABLE`].

use strata_tiers::{Error, ErrorKind};
use strata_transport::wire;
use tonic::{Code, Status};

/// Each kind of engine error, its gRPC code and its data-path status. Both clients
/// retry the same kinds: the retryable ones (`ErrorKind::is_retryable`) but a
/// passed deadline, as gRPC `Unavailable` / `ResourceExhausted` and data-path
/// `Busy` / `Unavailable`.
pub(crate) const TABLE: [(ErrorKind, Code, wire::Status); 11] = [
    (
        ErrorKind::Invalid,
        Code::InvalidArgument,
        wire::Status::Invalid,
    ),
    // The bytes the client sent do not match its checksum: its request is wrong.
    (
        ErrorKind::ChecksumMismatch,
        Code::InvalidArgument,
        wire::Status::Checksum,
    ),
    (ErrorKind::OutOfRange, Code::OutOfRange, wire::Status::Range),
    (ErrorKind::NotFound, Code::NotFound, wire::Status::NotFound),
    (
        ErrorKind::Exhausted,
        Code::ResourceExhausted,
        wire::Status::Busy,
    ),
    // A request over a fixed limit (an upload over the whole budget, a batch over
    // the batch limit): wrong whatever the load, so not `RESOURCE_EXHAUSTED`,
    // which clients retry. The message names the limit and its setting.
    (
        ErrorKind::TooLarge,
        Code::InvalidArgument,
        wire::Status::TooLarge,
    ),
    (
        ErrorKind::DeadlineExceeded,
        Code::DeadlineExceeded,
        wire::Status::DeadlineExceeded,
    ),
    (
        ErrorKind::Unavailable,
        Code::Unavailable,
        wire::Status::Unavailable,
    ),
    (ErrorKind::Corrupt, Code::DataLoss, wire::Status::Corrupt),
    (
        ErrorKind::Changed,
        Code::FailedPrecondition,
        wire::Status::Changed,
    ),
    (ErrorKind::Internal, Code::Internal, wire::Status::Internal),
];

fn row(kind: ErrorKind) -> (Code, wire::Status) {
    TABLE
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or((Code::Internal, wire::Status::Internal), |&(_, c, w)| {
            (c, w)
        })
}

/// The gRPC code of an engine error.
pub(crate) fn grpc_code(e: &Error) -> Code {
    row(e.kind()).0
}

/// The data-path status of an engine error.
pub(crate) fn wire_status(e: &Error) -> wire::Status {
    row(e.kind()).1
}

/// Maps an engine error to a status whose message says what was wrong.
pub(crate) fn to_status(e: Error) -> Status {
    let mut status = Status::new(grpc_code(&e), e.to_string());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One error of every variant (the exhaustive match of `Error::kind` makes a
    /// new variant choose a kind; this list must then show it here).
    fn one_of_each() -> Vec<Error> {
        let io = |k| Error::io("x", std::io::Error::from(k));
        vec![
            Error::InvalidKey { reason: "r".into() },
            Error::UnknownNamespace {
                namespace: "n".into(),
                registered: "kv".into(),
            },
            Error::PolicyViolation {
                namespace: "n".into(),
                rule: "r".into(),
            },
            Error::RangeOutOfBounds {
                offset: 9,
                length: None,
                size: 1,
            },
            Error::Exhausted {
                what: "w".into(),
                detail: "d".into(),
                retry_after: Some(Duration::from_millis(7)),
            },
            Error::TooLarge {
                what: "w".into(),
                len: 2,
                limit: 1,
                unit: "bytes",
                setting: "s",
            },
            Error::ChecksumMismatch {
                what: "w".into(),
                expected: 1,
            },
            Error::Incomplete {
                expected: 2,
                actual: 1,
            },
            Error::Corrupt {
                tier: "nvme",
                reason: "r".into(),
            },
            Error::NotFound { key: "k".into() },
            io(std::io::ErrorKind::TimedOut),
            io(std::io::ErrorKind::PermissionDenied),
            Error::Nvme {
                message: "m".into(),
            },
            Error::Blob {
                op: "get",
                target: "t".into(),
                status: Some(503),
                retryable: true,
                message: "m".into(),
            },
            Error::Blob {
                op: "get",
                target: "t".into(),
                status: Some(403),
                retryable: false,
                message: "m".into(),
            },
            Error::DeadlineExceeded {
                op: "get",
                elapsed: Duration::from_secs(1),
            },
            Error::ShuttingDown,
            Error::Shared {
                message: "m".into(),
                kind: ErrorKind::Changed,
            },
            Error::Changed {
                target: "t".into(),
                detail: "d".into(),
            },
            Error::Config {
                field: "f".into(),
                reason: "r".into(),
            },
        ]
    }

    #[test]
    fn every_kind_has_one_row_and_both_entry_points_agree() {
        for kind in ErrorKind::ALL {
            let rows = TABLE.iter().filter(|(k, _, _)| *k == kind).count();
            assert_eq!(rows, 1, "{kind:?} has {rows} rows");
        }
        for (kind, code, wire) in TABLE {
            // What a client retries is the same over both entry points, and only
            // what the engine calls retryable (a passed deadline is retryable by
            // the engine, not by a client, whose own deadline is what passed).
            let grpc_retried = matches!(code, Code::Unavailable | Code::ResourceExhausted);
            assert_eq!(grpc_retried, wire.is_transient(), "{kind:?}");
            assert!(!grpc_retried || kind.is_retryable(), "{kind:?}");
            assert_eq!(
                grpc_retried,
                kind.is_retryable() && kind != ErrorKind::DeadlineExceeded,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn every_error_maps_through_its_kind() {
        let errors = one_of_each();
        let mut kinds: Vec<ErrorKind> = errors.iter().map(Error::kind).collect();
        kinds.sort_by_key(|k| ErrorKind::ALL.iter().position(|a| a == k));
        kinds.dedup();
        assert_eq!(kinds, ErrorKind::ALL, "some kind has no sample error");
        for e in errors {
            let (code, wire) = row(e.kind());
            assert_eq!(grpc_code(&e), code, "{e}");
            assert_eq!(wire_status(&e), wire, "{e}");
            assert_eq!(e.is_retryable(), e.kind().is_retryable(), "{e}: retryable");
            let status = to_status(e);
            assert_eq!(status.code(), code);
            assert!(!status.message().is_empty());
        }
        let busy = to_status(Error::Exhausted {
            what: "w".into(),
            detail: "d".into(),
            retry_after: Some(Duration::from_millis(7)),
        });
        assert_eq!(busy.metadata().get("retry-after-ms").unwrap(), "7");
    }
}
