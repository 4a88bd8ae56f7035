//! Mapping Azure SDK errors to the tier's error type, in one place.

use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::{HeaderName, Headers};

use crate::error::Error;

/// What a failed request means to the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 404 for the blob: a miss.
    NotFound,
    /// 404 `ContainerNotFound`: a deployment error, never a miss.
    ContainerNotFound,
    /// 416: the range starts past the end of the blob.
    RangeNotSatisfiable,
    /// 412: an `If-Match` failed (the blob changed under a chunked read).
    PreconditionFailed,
    /// 409: e.g. the container already exists.
    Conflict,
    /// 401 / 403: bad or expired credentials, or missing permissions.
    Denied,
    /// 408, 429, 500, 502, 503, 504: the service is busy or failing.
    Transient,
    /// The request did not get a response (connect, reset, timeout).
    Transport,
    /// Anything else.
    Other,
}

/// A failed request, classified, with the error to surface if it is final.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What it means.
    pub(crate) kind: Kind,
    /// The service's `Retry-After` / `x-ms-retry-after-ms`, if any.
    pub(crate) retry_after: Option<Duration>,
    /// The error for the caller.
    pub(crate) error: Error,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// The one mapping from an Azure error to `(kind, retryable)` and an
/// [`Error::Blob`]. `target` is `container/blob` (or the container).
pub(crate) fn map_error(op: &'static str, target: &str, e: &azure_core::Error) -> Failure {
    let (status, code, headers, body) = match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => (
            Some(u16::from(*status)),
            error_code.as_deref(),
            raw_response.as_ref().map(|r| r.headers()),
            raw_response.as_ref().map(|r| r.body().as_ref()),
        ),
        _ => (None, None, None, None),
    };
    let (kind, retryable) = match (status, e.kind()) {
        (Some(404), _) if code == Some("ContainerNotFound") => (Kind::ContainerNotFound, false),
        (Some(404), _) => (Kind::NotFound, false),
        (Some(416), _) => (Kind::RangeNotSatisfiable, false),
        (Some(412), _) => (Kind::PreconditionFailed, false),
        (Some(409), _) => (Kind::Conflict, false),
        (Some(401 | 403), _) => (Kind::Denied, false),
        (Some(408 | 429 | 500 | 502 | 503 | 504), _) => (Kind::Transient, true),
        (Some(_), _) => (Kind::Other, false),
        (None, ErrorKind::Io | ErrorKind::Connection) => (Kind::Transport, true),
        (None, _) => (Kind::Other, false),
    };
    let detail = body
        .and_then(xml_message)
        .unwrap_or_else(|| first_line(&e.to_string()));
    let message = match (kind, code) {
        (Kind::ContainerNotFound, _) => {
            "ContainerNotFound: the container does not exist (create it, or call BlobTier::ensure_container)".into()
        }
        (Kind::Denied, Some(c)) => format!("{c}: {detail} (check the SAS token or the identity's role)"),
        (_, Some(c)) if !detail.starts_with(c) => format!("{c}: {detail}"),
        _ => detail,
    };
    Failure {
        kind,
        retry_after: headers.and_then(retry_after),
        error: Error::Blob {
            op,
            target: target.to_owned(),
            status,
            retryable,
            message,
        },
    }
}

/// The `<Message>` of a storage error body, first line only (the rest is the
/// request id and time).
fn xml_message(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let start = s.find("<Message>")? + "<Message>".len();
    let end = s[start..].find("</Message>")? + start;
    Some(first_line(&s[start..end]))
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    line.chars().take(400).collect()
}

/// The service's retry hint: `x-ms-retry-after-ms`, `retry-after-ms`, or
/// `Retry-After` in whole seconds (an HTTP-date form is ignored).
fn retry_after(h: &Headers) -> Option<Duration> {
    let get = |name: &'static str| {
        h.get_optional_str(&HeaderName::from_static(name))
            .map(str::trim)
    };
    if let Some(ms) = get("x-ms-retry-after-ms")
        .or_else(|| get("retry-after-ms"))
        .and_then(|v| v.parse().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    get("retry-after")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use azure_core::http::{AsyncRawResponse, StatusCode};

    use super::*;

    async fn http_error(
        status: u16,
        headers: &[(&'static str, &str)],
        body: &'static str,
    ) -> azure_core::Error {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_static(k), v.to_string());
        }
        let rsp =
            AsyncRawResponse::from_bytes(StatusCode::from(status), h, body.as_bytes().to_vec());
        azure_core::http::check_success(rsp, None)
            .await
            .expect_err("an error status")
    }

    #[tokio::test]
    async fn statuses_map_to_kinds() {
        let cases = [
            (404, "BlobNotFound", Kind::NotFound, false),
            (404, "ContainerNotFound", Kind::ContainerNotFound, false),
            (416, "InvalidRange", Kind::RangeNotSatisfiable, false),
            (403, "AuthorizationFailure", Kind::Denied, false),
            (400, "InvalidHeaderValue", Kind::Other, false),
            (408, "OperationTimedOut", Kind::Transient, true),
            (429, "TooManyRequests", Kind::Transient, true),
            (500, "InternalError", Kind::Transient, true),
            (502, "BadGateway", Kind::Transient, true),
            (503, "ServerBusy", Kind::Transient, true),
            (504, "GatewayTimeout", Kind::Transient, true),
        ];
        for (status, code, kind, retryable) in cases {
            let e = http_error(status, &[("x-ms-error-code", code)], "").await;
            let f = map_error("get", "c/b", &e);
            assert_eq!(f.kind, kind, "{status}");
            assert_eq!(f.error.is_retryable(), retryable, "{status}");
            match f.error {
                Error::Blob {
                    status: s,
                    ref message,
                    ..
                } => {
                    assert_eq!(s, Some(status));
                    assert!(message.contains(code), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn messages_and_retry_hints_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>ServerBusy</Code><Message>Busy now.\nRequestId:1</Message></Error>";
        let e = http_error(
            503,
            &[("x-ms-error-code", "ServerBusy"), ("retry-after", "2")],
            body,
        )
        .await;
        let f = map_error("get", "c/b", &e);
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        assert!(
            f.error.to_string().contains("ServerBusy: Busy now."),
            "{}",
            f.error
        );
        let e = http_error(
            503,
            &[("x-ms-retry-after-ms", "250"), ("retry-after", "9")],
            "",
        )
        .await;
        assert_eq!(
            map_error("get", "c/b", &e).retry_after,
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn transport_errors_are_retryable() {
        let e = azure_core::Error::with_message(ErrorKind::Connection, "connection refused");
        let f = map_error("put", "c/b", &e);
        assert_eq!(f.kind, Kind::Transport);
        assert!(f.error.is_retryable());
        let e = azure_core::Error::with_message(ErrorKind::Credential, "no token");
        assert!(!map_error("put", "c/b", &e).error.is_retryable());
    }
}
