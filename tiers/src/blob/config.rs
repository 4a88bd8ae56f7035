//! Azure Blob tier configuration.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// How the tier authenticates to the storage account.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BlobAuth {
    /// A shared access signature: its query string (with or without the leading
    /// `?`) is appended to every request. Never printed by `Debug`.
    Sas {
        /// The SAS query string, e.g. `sv=…&ss=b&srt=sco&sp=rwdlac&se=…&sig=…`.
        token: String,
    },
    /// The VM's or pod's managed identity (IMDS), system-assigned unless a client id
    /// picks a user-assigned one. Needs an `https` endpoint.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        #[serde(default)]
        client_id: Option<String>,
    },
    /// AKS workload identity: reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
    /// `AZURE_FEDERATED_TOKEN_FILE`. Needs an `https` endpoint.
    WorkloadIdentity,
    /// No credentials: only for containers with public read access.
    #[default]
    Anonymous,
}

impl fmt::Debug for BlobAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobAuth::Sas { .. } => f.debug_struct("Sas").field("token", &"<redacted>").finish(),
            BlobAuth::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
            BlobAuth::WorkloadIdentity => f.write_str("WorkloadIdentity"),
            BlobAuth::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Configuration of the Azure Blob tier.
///
/// `Debug` never prints the SAS token (see [`BlobAuth`]), and
/// [`validate`](Self::validate) refuses an endpoint that carries a query string, so
/// a token cannot hide there either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// The account's blob endpoint, without a trailing container:
    /// `https://ACCOUNT.blob.core.windows.net`, or path-style for Azurite,
    /// `http://127.0.0.1:10000/devstoreaccount1`. Default: empty (must be set).
    pub endpoint: String,
    /// The container. Default: `strata`.
    pub container: String,
    /// Prepended (with a `/`) to every blob name, so several deployments can share a
    /// container. Default: none.
    pub prefix: Option<String>,
    /// How to authenticate. Default: anonymous.
    pub auth: BlobAuth,
    /// Use the key body verbatim as the blob name (after `prefix/`), ignoring the
    /// namespace and tenant, instead of `<namespace>/@<tenant>/<body>` with
    /// percent-encoded segments. For an origin that reads an existing dataset
    /// container (the `shard` namespace): every namespace and tenant then sees the
    /// same blobs, and a body must be UTF-8. Default: false.
    pub raw_names: bool,
    /// Reads longer than this are split into parallel ranged GETs of this size.
    /// Default: 8 MiB.
    pub range_chunk_size: u64,
    /// Most requests this tier has in flight at once (all operations together).
    /// Default: 16.
    pub max_concurrency: usize,
    /// Retries after a retryable failure (408, 429, 500, 502, 503, 504, connection
    /// errors); 0 disables retries. Default: 5.
    pub max_retries: u32,
    /// Base of the exponential backoff (full jitter), in milliseconds. Default: 100.
    pub retry_base_delay_ms: u64,
    /// Cap of one backoff delay, in milliseconds. A `Retry-After` or
    /// `x-ms-retry-after-ms` from the service is honoured up to this cap. Default: 5000.
    pub retry_max_delay_ms: u64,
    /// The `x-ms-version` to send; `None` uses the SDK's (2026-04-06). Set
    /// `2025-11-05` for Azurite 3.35 unless it runs with `--skipApiVersionCheck`.
    /// Default: none.
    pub api_version: Option<String>,
    /// The slowest a ranged GET may deliver, in bytes per second: byte `n` of
    /// an answer must come within `read_grace_ms` plus `n` at this rate of the
    /// request, or the attempt is given up (and retried), so an origin that
    /// trickles bytes cannot hold a reader, or one of `max_concurrency` places,
    /// for ever. Default: 1 MiB/s.
    pub min_read_rate: u64,
    /// What a ranged GET may take on top of its length at `min_read_rate`, in
    /// milliseconds (connecting, the first byte). Default: 30000.
    pub read_grace_ms: u64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            container: "strata".into(),
            prefix: None,
            auth: BlobAuth::Anonymous,
            raw_names: false,
            range_chunk_size: 8 << 20,
            max_concurrency: 16,
            max_retries: 5,
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 5000,
            api_version: None,
            min_read_rate: 1 << 20,
            read_grace_ms: 30_000,
        }
    }
}

impl BlobConfig {
    /// A configuration with the defaults for `endpoint` and `container`.
    pub fn new(endpoint: impl Into<String>, container: impl Into<String>, auth: BlobAuth) -> Self {
        Self {
            endpoint: endpoint.into(),
            container: container.into(),
            auth,
            ..Self::default()
        }
    }

    /// Checks the configuration, so a bad one fails at start and names its field.
    pub fn validate(&self) -> Result<()> {
        self.endpoint_url()?;
        let c = &self.container;
        let valid_container = (3..=63).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
            && !c.contains("--");
        if !valid_container {
            return Err(config_err(
                "container",
                format!("{c:?} is not a container name (3-63 of a-z, 0-9 and single inner dashes)"),
            ));
        }
        if let Some(p) = &self.prefix
            && (p.is_empty() || p.starts_with('/') || p.ends_with('/'))
        {
            return Err(config_err(
                "prefix",
                format!("{p:?} must be non-empty without a leading or trailing '/'"),
            ));
        }
        if self.range_chunk_size == 0 {
            return Err(config_err("range_chunk_size", "must be at least 1".into()));
        }
        if self.max_concurrency == 0 {
            return Err(config_err("max_concurrency", "must be at least 1".into()));
        }
        if self.retry_base_delay_ms > self.retry_max_delay_ms {
            return Err(config_err(
                "retry_base_delay_ms",
                "must not exceed retry_max_delay_ms".into(),
            ));
        }
        if let BlobAuth::Sas { token } = &self.auth
            && token.trim_start_matches('?').is_empty()
        {
            return Err(config_err("auth.token", "the SAS token is empty".into()));
        }
        Ok(())
    }

    /// The endpoint, parsed and checked.
    pub(crate) fn endpoint_url(&self) -> Result<Url> {
        let url = Url::parse(&self.endpoint).map_err(|e| {
            config_err("endpoint", format!("{:?} is not a URL: {e}", self.endpoint))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_err(
                "endpoint",
                format!("scheme {:?} is not http or https", url.scheme()),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config_err(
                "endpoint",
                "must not carry a query (put a SAS in auth.token)".into(),
            ));
        }
        let needs_https = matches!(
            self.auth,
            BlobAuth::ManagedIdentity { .. } | BlobAuth::WorkloadIdentity
        );
        if needs_https && url.scheme() != "https" {
            return Err(config_err(
                "endpoint",
                "identity-based auth needs an https endpoint".into(),
            ));
        }
        Ok(url)
    }

    /// The base backoff delay.
    pub(crate) fn base_delay(&self) -> Duration {
        Duration::from_millis(self.retry_base_delay_ms)
    }

    /// The backoff cap.
    pub(crate) fn max_delay(&self) -> Duration {
        Duration::from_millis(self.retry_max_delay_ms)
    }
}

fn config_err(field: &str, reason: String) -> Error {
    Error::Config {
        field: format!("blob.{field}"),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_sas() {
        let c = BlobConfig::new(
            "http://127.0.0.1:1/devstoreaccount1",
            "data",
            BlobAuth::Sas {
                token: "sv=1&sig=SECRET".into(),
            },
        );
        let s = format!("{c:?}");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn validation_names_the_field() {
        let ok = BlobConfig::new(
            "https://a.blob.core.windows.net",
            "data",
            BlobAuth::WorkloadIdentity,
        );
        ok.validate().expect("a valid config");
        let bad = |c: BlobConfig, field: &str| match c.validate() {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a config error on {field}, got {other:?}"),
        };
        bad(
            BlobConfig {
                container: "Bad_Name".into(),
                ..ok.clone()
            },
            "blob.container",
        );
        bad(
            BlobConfig {
                endpoint: "https://a.blob.core.windows.net?sig=x".into(),
                ..ok.clone()
            },
            "blob.endpoint",
        );
        bad(
            BlobConfig {
                endpoint: "http://a.blob.core.windows.net".into(),
                ..ok.clone()
            },
            "blob.endpoint",
        );
        bad(
            BlobConfig {
                range_chunk_size: 0,
                ..ok.clone()
            },
            "blob.range_chunk_size",
        );
        bad(
            BlobConfig {
                prefix: Some("/x".into()),
                ..ok.clone()
            },
            "blob.prefix",
        );
        bad(
            BlobConfig {
                auth: BlobAuth::Sas { token: "?".into() },
                ..ok
            },
            "blob.auth.token",
        );
    }
}
