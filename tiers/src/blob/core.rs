//! The container client and the retry loop every request goes through.
//!
//! The SDK's own retry policy is off (`RetryOptions::none()`), so the retries here
//! are the only ones: they are counted against `max_retries`, bounded by the
//! caller's deadline, and visible to tests. The HTTP transport is reqwest on rustls
//! with the `ring` provider (installed as the process default if none is), with no
//! automatic decompression (the SDK's ranged downloads need raw bytes).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport};
use azure_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use rand::Rng as _;
use tokio::sync::Semaphore;

use super::config::{BlobAuth, BlobConfig};
use super::error::{Failure, Kind, map_error};
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The container client, the request permits and the retry settings.
pub(crate) struct Core {
    pub(crate) container: BlobContainerClient,
    pub(crate) config: BlobConfig,
    permits: Semaphore,
}

impl Core {
    /// Builds the clients; does no I/O.
    pub(crate) fn new(config: BlobConfig) -> Result<Self> {
        config.validate()?;
        let mut url = config.endpoint_url()?;
        url.path_segments_mut()
            .map_err(|()| Error::Config {
                field: "blob.endpoint".into(),
                reason: "cannot be a base URL".into(),
            })?
            .pop_if_empty()
            .push(&config.container);
        if let BlobAuth::Sas { token } = &config.auth {
            url.set_query(Some(token.trim_start_matches('?')));
        }
        let transport = Transport::new(http_client()?);
        let client_options = ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(transport),
            ..Default::default()
        };
        let credential = credential(&config.auth, &client_options)?;
        let mut options = BlobContainerClientOptions {
            client_options,
            ..Default::default()
        };
        if let Some(v) = &config.api_version {
            options.version = v.clone();
        }
        let container = BlobContainerClient::new(url, credential, Some(options)).map_err(|e| {
            Error::Config {
                field: "blob.endpoint".into(),
                reason: format!("cannot build the container client: {e}"),
            }
        })?;
        let permits = Semaphore::new(config.max_concurrency);
        Ok(Self {
            container,
            config,
            permits,
        })
    }

    /// Where a blob lives, for errors and logs.
    pub(crate) fn target(&self, name: &str) -> String {
        format!("{}/{name}", self.config.container)
    }

    /// Runs one request (built by `attempt`) with a permit, retrying retryable
    /// failures with exponential backoff and full jitter (or the service's hint),
    /// until it succeeds, fails for good, runs out of retries, or the deadline passes.
    ///
    /// Cancel-safe: dropping the future drops the request in flight.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        target: &str,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> std::result::Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        let started = Instant::now();
        let deadline = deadline.map(tokio::time::Instant::from_std);
        let expired = || Failure {
            kind: Kind::Other,
            retry_after: None,
            error: Error::DeadlineExceeded {
                op,
                elapsed: started.elapsed(),
            },
        };
        let mut retries = 0u32;
        loop {
            let one = async {
                let _permit = self.permits.acquire().await;
                attempt().await
            };
            let result = match deadline {
                Some(d) => tokio::time::timeout_at(d, one)
                    .await
                    .map_err(|_| expired())?,
                None => one.await,
            };
            let failure = match result {
                Ok(v) => return Ok(v),
                Err(e) => map_error(op, target, &e),
            };
            if !failure.error.is_retryable() || retries >= self.config.max_retries {
                return Err(failure);
            }
            let delay = backoff(
                retries,
                self.config.base_delay(),
                self.config.max_delay(),
                failure.retry_after,
            );
            retries += 1;
            tracing::debug!(op, target, retries, ?delay, error = %failure.error, "retrying a blob request");
            let wake = tokio::time::Instant::now() + delay;
            if deadline.is_some_and(|d| wake >= d) {
                return Err(expired());
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// The delay before retry `retry` (0-based): the service's hint if it gave one,
/// else uniform in `[0, min(max, base * 2^retry)]`; never more than `max`.
pub(crate) fn backoff(
    retry: u32,
    base: Duration,
    max: Duration,
    hint: Option<Duration>,
) -> Duration {
    if let Some(h) = hint {
        return h.min(max);
    }
    let cap = base
        .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

fn http_client() -> Result<Arc<dyn HttpClient>> {
    // Ignored when the process already has a default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config {
            field: "blob".into(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
    Ok(Arc::new(client))
}

fn credential(
    auth: &BlobAuth,
    client_options: &ClientOptions,
) -> Result<Option<Arc<dyn TokenCredential>>> {
    let cred_err = |e: azure_core::Error| Error::Config {
        field: "blob.auth".into(),
        reason: format!("credential: {e}"),
    };
    Ok(match auth {
        BlobAuth::Sas { .. } | BlobAuth::Anonymous => None,
        BlobAuth::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: client_options.clone(),
            };
            Some(ManagedIdentityCredential::new(Some(options)).map_err(cred_err)?)
        }
        BlobAuth::WorkloadIdentity => {
            let mut options = WorkloadIdentityCredentialOptions::default();
            options.credential_options.client_options = client_options.clone();
            Some(WorkloadIdentityCredential::new(Some(options)).map_err(cred_err)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_honours_hints() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for retry in 0..40 {
            let d = backoff(retry, base, max, None);
            let cap = if retry < 6 {
                base * 2u32.pow(retry)
            } else {
                max
            };
            assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
        }
        assert_eq!(backoff(0, base, max, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(
            backoff(3, base, max, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(backoff(3, base, max, Some(Duration::from_secs(60))), max);
    }
}
