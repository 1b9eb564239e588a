//! Getting a key's record into DNS: an RFC 2136 dynamic update signed with TSIG (the
//! `dns-update` crate, Stalwart's), or — without `[rotation.dns_update]` — a zone fragment
//! written for the operator, after which the DNS gate waits for the record to appear.
//!
//! Either way `<state_directory>/<domain>/records.zone` always holds the records the domain
//! should have now, so an operator can compare or feed them to their own tooling.

use crate::config::Template;
use crate::config::rotation::DnsUpdateSettings;
pub use crate::keys::generate::zone_line;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dns_update::{DnsRecord, DnsRecordType, DnsUpdater, TsigAlgorithm};
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

/// How records reach DNS.
pub enum Publisher {
    Rfc2136(Box<Rfc2136>),
    /// The operator publishes; signet writes what to publish and waits for it.
    Operator,
}

pub struct Rfc2136 {
    updater: DnsUpdater,
    zone: Template,
    ttl: u32,
    timeout: Duration,
    /// For messages.
    server: String,
}

/// A TSIG key read from a BIND key file.
struct TsigKey {
    name: String,
    algorithm: TsigAlgorithm,
    secret: Zeroizing<Vec<u8>>,
}

impl Publisher {
    pub fn new(settings: Option<&DnsUpdateSettings>) -> Result<Self, String> {
        let Some(settings) = settings else {
            return Ok(Publisher::Operator);
        };
        let key = read_tsig_key(&settings.tsig_key_file)?;
        let scheme = if settings.tcp { "tcp" } else { "udp" };
        let address = format!("{scheme}://{}", settings.server);
        let updater = DnsUpdater::new_rfc2136_tsig(
            address.as_str(),
            &key.name,
            key.secret.to_vec(),
            key.algorithm,
        )
        .map_err(|e| format!("[rotation.dns_update]: {e}"))?;
        Ok(Publisher::Rfc2136(Box::new(Rfc2136 {
            updater,
            zone: settings.zone.clone(),
            ttl: u32::try_from(settings.ttl.as_secs()).unwrap_or(u32::MAX),
            timeout: settings.timeout,
            server: settings.server.to_string(),
        })))
    }

    /// Makes `value` the only TXT record at `name`.
    pub async fn publish(
        &self,
        name: &str,
        domain: &str,
        selector: &str,
        value: &str,
    ) -> Result<String, String> {
        match self {
            Publisher::Rfc2136(u) => {
                let records = vec![DnsRecord::TXT(value.to_string())];
                u.set(name, domain, selector, records).await
            }
            Publisher::Operator => Ok(format!(
                "publish {} (signet has no [rotation.dns_update]; waiting until DNS serves it)",
                zone_line(name, value)
            )),
        }
    }

    /// Removes every TXT record at `name`.
    pub async fn remove(&self, name: &str, domain: &str, selector: &str) -> Result<String, String> {
        match self {
            Publisher::Rfc2136(u) => u.set(name, domain, selector, Vec::new()).await,
            Publisher::Operator => Ok(format!("remove the TXT record {name}.")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Publisher::Rfc2136(u) => format!("RFC 2136 updates to {}", u.server),
            Publisher::Operator => "the operator (records.zone)".into(),
        }
    }
}

impl Rfc2136 {
    async fn set(
        &self,
        name: &str,
        domain: &str,
        selector: &str,
        records: Vec<DnsRecord>,
    ) -> Result<String, String> {
        let zone = self.zone.render(domain, selector);
        let what = if records.is_empty() {
            "removed"
        } else {
            "updated"
        };
        let update =
            self.updater
                .set_rrset(name, DnsRecordType::TXT, self.ttl, records, zone.as_str());
        match tokio::time::timeout(self.timeout, update).await {
            Ok(Ok(())) => Ok(format!(
                "{what} {name} TXT in zone {zone} at {}",
                self.server
            )),
            Ok(Err(e)) => Err(format!(
                "update of {name} TXT in zone {zone} at {} failed: {e}",
                self.server
            )),
            Err(_) => Err(format!(
                "update of {name} TXT in zone {zone} at {}: no answer within {}",
                self.server,
                humantime::format_duration(self.timeout)
            )),
        }
    }
}

/// The record that says a key is revoked: the key's tags with `p=` emptied.
pub fn revoked_value(record: &str) -> String {
    let key_type = record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(n, _)| n.trim() == "k")
        .map(|(_, v)| v.trim().to_string());
    match key_type {
        Some(k) => format!("v=DKIM1; k={k}; p="),
        None => "v=DKIM1; p=".into(),
    }
}

/// Reads `key "NAME" { algorithm ALG; secret "BASE64"; };` as `tsig-keygen` writes it.
fn read_tsig_key(path: &Path) -> Result<TsigKey, String> {
    let failed = |why: String| {
        format!(
            "[rotation.dns_update] tsig_key_file {}: {why}",
            path.display()
        )
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?);
    let quoted_after = |keyword: &str| -> Option<&str> {
        let start = text.find(keyword)? + keyword.len();
        let rest = text[start..].trim_start().strip_prefix('"')?;
        rest.split_once('"').map(|(value, _)| value)
    };
    let name = quoted_after("key")
        .ok_or_else(|| failed("no key \"NAME\" { … } (write it with tsig-keygen)".into()))?;
    let algorithm = text
        .find("algorithm")
        .map(|i| &text[i + "algorithm".len()..])
        .and_then(|rest| rest.split(';').next())
        .map(|a| a.trim().trim_matches('"').to_ascii_lowercase())
        .ok_or_else(|| failed("no algorithm".into()))?;
    let algorithm = match algorithm.as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        "hmac-sha224" => TsigAlgorithm::HmacSha224,
        "hmac-sha1" => TsigAlgorithm::HmacSha1,
        other => {
            return Err(failed(format!(
                "algorithm {other} is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            )));
        }
    };
    let secret = quoted_after("secret").ok_or_else(|| failed("no secret \"…\"".into()))?;
    let secret = Zeroizing::new(
        BASE64
            .decode(secret.trim())
            .map_err(|_| failed("the secret is not base64".into()))?,
    );
    if secret.is_empty() {
        return Err(failed("the secret is empty".into()));
    }
    Ok(TsigKey {
        name: name.to_string(),
        algorithm,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tsig_keygen_file_is_read_and_its_secret_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(
            &path,
            "key \"signet-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\";\n};\n",
        )
        .unwrap();
        let key = read_tsig_key(&path).unwrap();
        assert_eq!(key.name, "signet-update");
        assert_eq!(&key.secret[..], b"secret-secret-secret");

        std::fs::write(
            &path,
            "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
        )
        .unwrap();
        let e = read_tsig_key(&path).err().unwrap();
        assert!(e.contains("hmac-md5 is not supported"), "{e}");
        std::fs::write(
            &path,
            "key \"k\" { algorithm hmac-sha256; secret \"%%%%\"; };",
        )
        .unwrap();
        let e = read_tsig_key(&path).err().unwrap();
        assert!(e.contains("not base64") && !e.contains("%%%%"), "{e}");
    }

    #[test]
    fn revocation_keeps_the_key_type() {
        assert_eq!(
            revoked_value("v=DKIM1; k=ed25519; p=AAAA"),
            "v=DKIM1; k=ed25519; p="
        );
        assert_eq!(revoked_value("v=DKIM1; p=AAAA"), "v=DKIM1; p=");
        let line = zone_line("s._domainkey.example.com", &"x".repeat(300));
        assert_eq!(line.matches('"').count(), 4);
    }
}
