//! Account SAS signing from an account name and key.
//!
//! The Azure SDK for Rust signs only user-delegation SAS (which needs Entra ID), so
//! an operator who holds an account key — and the Azurite tests, with the emulator's
//! well-known key — sign an account SAS here and hand the token to
//! [`BlobAuth::Sas`](super::BlobAuth::Sas). The string to sign is the one for
//! service version 2020-12-06 and later (ten lines, the last the encryption scope).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, Result};

/// The service version this module signs for (valid on Azure and on Azurite).
pub const SAS_VERSION: &str = "2022-11-02";

/// The parameters of an account SAS. Build with [`AccountSas::new`], adjust the
/// public fields, then [`sign`](Self::sign).
#[derive(Clone, PartialEq, Eq)]
pub struct AccountSas {
    /// The storage account name.
    pub account: String,
    /// Services (`ss`): `b` for blob.
    pub services: String,
    /// Resource types (`srt`): `s`ervice, `c`ontainer, `o`bject.
    pub resource_types: String,
    /// Permissions (`sp`), in the canonical order `rwdxylacuptfi`.
    pub permissions: String,
    /// Start (`st`), as `YYYY-MM-DDTHH:MM:SSZ`; `None` means "now".
    pub start: Option<String>,
    /// Expiry (`se`), as `YYYY-MM-DDTHH:MM:SSZ`.
    pub expiry: String,
    /// Allowed protocols (`spr`): `https` or `https,http`; `None` allows both.
    pub protocol: Option<String>,
    /// Service version (`sv`).
    pub version: String,
}

impl std::fmt::Debug for AccountSas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSas")
            .field("account", &self.account)
            .field("permissions", &self.permissions)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl AccountSas {
    /// A blob-service SAS over service, containers and objects with every permission
    /// the tier uses (`rwdlac`), valid from a minute ago for `ttl`.
    pub fn new(account: impl Into<String>, ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            account: account.into(),
            services: "b".into(),
            resource_types: "sco".into(),
            permissions: "rwdlac".into(),
            start: Some(format_time(now - Duration::from_secs(60))),
            expiry: format_time(now + ttl),
            protocol: None,
            version: SAS_VERSION.into(),
        }
    }

    /// The string the signature covers.
    pub fn string_to_sign(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.account,
            self.permissions,
            self.services,
            self.resource_types,
            self.start.as_deref().unwrap_or_default(),
            self.expiry,
            "", // signed IP
            self.protocol.as_deref().unwrap_or_default(),
            self.version,
            "", // signed encryption scope
        )
    }

    /// Signs with the account key (base64, as the portal shows it) and returns the
    /// SAS query string, percent-encoded, without a leading `?`.
    pub fn sign(&self, account_key_base64: &str) -> Result<String> {
        let key = STANDARD
            .decode(account_key_base64.trim())
            .map_err(|e| Error::Config {
                field: "blob.account_key".into(),
                reason: format!("not base64: {e}"),
            })?;
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            self.string_to_sign().as_bytes(),
        );
        let sig = STANDARD.encode(tag.as_ref());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", &self.version)
            .append_pair("ss", &self.services)
            .append_pair("srt", &self.resource_types)
            .append_pair("sp", &self.permissions);
        if let Some(st) = &self.start {
            q.append_pair("st", st);
        }
        q.append_pair("se", &self.expiry);
        if let Some(spr) = &self.protocol {
            q.append_pair("spr", spr);
        }
        q.append_pair("sig", &sig);
        Ok(q.finish())
    }
}

/// Formats a time as the SAS wants it: UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn known_answer() {
        let sas = AccountSas {
            account: "devstoreaccount1".into(),
            services: "b".into(),
            resource_types: "sco".into(),
            permissions: "rwdlac".into(),
            start: Some("2025-01-01T00:00:00Z".into()),
            expiry: "2035-01-01T00:00:00Z".into(),
            protocol: Some("https,http".into()),
            version: "2022-11-02".into(),
        };
        assert_eq!(
            sas.string_to_sign(),
            "devstoreaccount1\nrwdlac\nb\nsco\n2025-01-01T00:00:00Z\n2035-01-01T00:00:00Z\n\nhttps,http\n2022-11-02\n\n"
        );
        assert_eq!(
            sas.sign(AZURITE_KEY).expect("signed"),
            "sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&st=2025-01-01T00%3A00%3A00Z&se=2035-01-01T00%3A00%3A00Z\
             &spr=https%2Chttp&sig=OeGD0w2Lw%2FdyWNM9wfJnNJnWRAhXmVdZX40af1CtxOE%3D"
        );
    }

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_735_689_600)),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "2000-02-29T12:34:56Z"
        );
    }

    #[test]
    fn bad_keys_are_config_errors() {
        assert!(matches!(
            AccountSas::new("a", Duration::from_secs(60)).sign("not base64!"),
            Err(Error::Config { .. })
        ));
    }
}
