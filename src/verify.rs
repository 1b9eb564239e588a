//! `signet-milter verify`: checks the DKIM signatures of a delivered message the way a
//! receiver does (mail-auth's verifier, keys from DNS), and says for each which passed and,
//! for those that did not, what usually causes that. An operator can so confirm `dkim=pass`
//! without a third party, and see a failure before the receivers do.
//!
//! Keys come from DNS (the system's resolvers or one server), or from a directory in
//! `keygen`'s layout (`DIR/DOMAIN/SELECTOR.dns`) to check mail before its keys are published.

use crate::dns::resolver_config;
use mail_auth::crypto::CryptoError;
use mail_auth::dkim::DkimError;
use mail_auth::dkim::DomainKey;
use mail_auth::dns::{DnsCache, NoCache, ResolverCache, TxtRecord, TxtRecordParser as _};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DnsError, Error,
    MessageAuthenticator, Parameters,
};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

/// The `authserv-id` of the Authentication-Results line we print.
const AUTHSERV_ID: &str = "signet-milter";

/// Where public keys come from.
pub enum KeyLookup<'a> {
    /// DNS: `None` for the system's resolvers, or one server.
    Dns(Option<SocketAddr>),
    /// `DIR/DOMAIN/SELECTOR.dns`, as `keygen` writes them; DNS is not asked.
    Directory(&'a Path),
}

/// The verdict on one `DKIM-Signature` header.
#[derive(Debug)]
pub struct SignatureVerdict {
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    /// RFC 8601's word: `pass`, `fail`, `neutral`, `permerror`, `temperror`.
    pub result: &'static str,
    /// Why it did not pass, in words an operator can act on; empty for a pass.
    pub reason: String,
}

impl SignatureVerdict {
    pub fn passed(&self) -> bool {
        self.result == "pass"
    }
}

/// What `verify` found.
#[derive(Debug)]
pub struct Report {
    pub signatures: Vec<SignatureVerdict>,
    /// The `Authentication-Results:` field a receiver would add, for comparison.
    pub authentication_results: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a message: no header fields found")]
    NotAMessage,
    #[error("{0}")]
    Dns(String),
    #[error("cannot read the keys in {}: {reason}", dir.display())]
    Keys {
        dir: std::path::PathBuf,
        reason: String,
    },
}

/// Verifies every DKIM signature of `raw` (a message as delivered: LF or CRLF line ends, an
/// mbox `From ` line allowed).
pub async fn verify(raw: &[u8], keys: KeyLookup<'_>) -> Result<Report, VerifyError> {
    let wire = as_on_the_wire(raw);
    let message = AuthenticatedMessage::parse(&wire).ok_or(VerifyError::NotAMessage)?;
    match keys {
        KeyLookup::Dns(server) => {
            let authenticator = authenticator(server)?;
            Ok(report(&authenticator.verify_dkim(&message).await))
        }
        KeyLookup::Directory(dir) => {
            let table = KeyTable::from_dir(dir)?;
            // Every name is answered from the table: this resolver is never asked.
            let authenticator = authenticator(Some(SocketAddr::from(([127, 0, 0, 1], 9))))?;
            let params = Parameters::new(&message).with_cache(&table);
            Ok(report(&authenticator.verify_dkim(params).await))
        }
    }
}

fn authenticator(server: Option<SocketAddr>) -> Result<MessageAuthenticator, VerifyError> {
    let (config, options) = resolver_config(server).map_err(VerifyError::Dns)?;
    MessageAuthenticator::new(config, options)
        .map_err(|e| VerifyError::Dns(format!("cannot set up the DNS resolver: {e}")))
}

fn report(outputs: &[DkimOutput<'_>]) -> Report {
    Report {
        signatures: outputs.iter().map(verdict).collect(),
        authentication_results: format!(
            "Authentication-Results: {}",
            AuthenticationResults::new(AUTHSERV_ID)
                .with_dkim_results(outputs, "")
                .to_string()
                .replace("\r\n", "\n")
                .trim_end()
        ),
    }
}

fn verdict(output: &DkimOutput<'_>) -> SignatureVerdict {
    let (domain, selector, algorithm) = output.signature().map_or_else(
        || ("-".into(), "-".into(), "-".into()),
        |s| (s.d.clone(), s.s.clone(), s.a.name().to_string()),
    );
    let key_at = format!("{selector}._domainkey.{domain}");
    let (result, reason) = match output.result() {
        DkimResult::Pass => ("pass", String::new()),
        DkimResult::Neutral(e) => ("neutral", explain(e, &key_at)),
        DkimResult::Fail(e) => ("fail", explain(e, &key_at)),
        DkimResult::PermError(e) => ("permerror", explain(e, &key_at)),
        DkimResult::TempError(e) => ("temperror", explain(e, &key_at)),
        DkimResult::None => ("none", "no signature".into()),
    };
    SignatureVerdict {
        domain,
        selector,
        algorithm,
        result,
        reason,
    }
}

/// What usually causes each failure, so the operator knows where to look.
fn explain(error: &Error, key_at: &str) -> String {
    match error {
        Error::Dkim(DkimError::BodyHashMismatch) => "the body changed after signing (body hash \
            mismatch): a footer or disclaimer added, a content filter, or a re-encoding after the \
            milter"
            .into(),
        // aws-lc reports a bad Ed25519 signature as an unspecified library error.
        Error::Crypto(CryptoError::FailedVerification | CryptoError::Library(_)) => format!(
            "the signature does not verify: a signed header field changed after signing, or \
             {key_at} publishes another key than the one that signed (signet-milter check --dns)"
        ),
        Error::Crypto(CryptoError::IncompatibleAlgorithms) => {
            format!("the key at {key_at} is of another type than the signature (k= in the record)")
        }
        Error::Dkim(DkimError::PublicKeyRevoked) => {
            format!("the key at {key_at} is revoked (empty p=)")
        }
        Error::Dkim(DkimError::SignatureExpired) => "the signature expired (x=)".into(),
        Error::Dns(DnsError::RecordNotFound(_)) => format!("no key is published at {key_at}"),
        Error::Dns(DnsError::InvalidRecordType) | Error::Parse | Error::Base64 => {
            format!("the record at {key_at} is not a DKIM key")
        }
        Error::Dns(DnsError::Resolver(e)) => format!("looking up {key_at} failed: {e}"),
        other => other.to_string(),
    }
}

/// CRLF line ends, as the message travelled; an mbox `From ` line (a local mailbox's
/// separator, not part of the message) left out.
fn as_on_the_wire(raw: &[u8]) -> Vec<u8> {
    let raw = match raw.strip_prefix(b"From ") {
        Some(_) => raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&raw[raw.len()..], |i| &raw[i + 1..]),
        None => raw,
    };
    crate::message::to_crlf(raw)
}

/// Public keys from `DIR/DOMAIN/SELECTOR.dns`, answering mail-auth's TXT lookups; a name not
/// in the table has no record.
pub struct KeyTable(HashMap<Box<str>, TxtRecord>);

impl KeyTable {
    pub fn from_dir(dir: &Path) -> Result<Self, VerifyError> {
        let failed = |reason: String| VerifyError::Keys {
            dir: dir.to_owned(),
            reason,
        };
        let mut table = HashMap::new();
        let domains = std::fs::read_dir(dir).map_err(|e| failed(e.to_string()))?;
        for domain in domains {
            let domain = domain.map_err(|e| failed(e.to_string()))?;
            if !domain.path().is_dir() {
                continue;
            }
            let files = std::fs::read_dir(domain.path()).map_err(|e| failed(e.to_string()))?;
            for file in files {
                let path = file.map_err(|e| failed(e.to_string()))?.path();
                if path.extension().is_none_or(|e| e != "dns") {
                    continue;
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?;
                let record = DomainKey::parse(text.trim().as_bytes()).map_err(|e| {
                    failed(format!("{}: not a DKIM key record: {e}", path.display()))
                })?;
                let selector = path.file_stem().unwrap_or_default().to_string_lossy();
                let name = format!(
                    "{selector}._domainkey.{}.",
                    domain.file_name().to_string_lossy().to_lowercase()
                );
                table.insert(name.into_boxed_str(), record.into());
            }
        }
        Ok(KeyTable(table))
    }
}

impl ResolverCache<Box<str>, TxtRecord> for KeyTable {
    fn get<Q>(&self, name: &Q) -> Option<TxtRecord>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Some(self.0.get(name).cloned().unwrap_or_else(|| {
            TxtRecord::Error(Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)))
        }))
    }
    fn remove<Q>(&self, _: &Q) -> Option<TxtRecord>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: TxtRecord, _: Instant) {}
}

impl DnsCache for KeyTable {
    type Txt = KeyTable;
    type Mx = NoCache;
    type Ipv4 = NoCache;
    type Ipv6 = NoCache;
    type Ptr = NoCache;
    fn txt(&self) -> Option<&KeyTable> {
        Some(self)
    }
    fn mx(&self) -> Option<&NoCache> {
        None
    }
    fn ipv4(&self) -> Option<&NoCache> {
        None
    }
    fn ipv6(&self) -> Option<&NoCache> {
        None
    }
    fn ptr(&self) -> Option<&NoCache> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_and_mbox_separator() {
        assert_eq!(as_on_the_wire(b"A: b\nc\n"), b"A: b\r\nc\r\n");
        assert_eq!(as_on_the_wire(b"A: b\r\nc\r\n"), b"A: b\r\nc\r\n");
        assert_eq!(
            as_on_the_wire(b"From alice@example.com Mon Dec  1 10:00:00 2026\nA: b\n\nx\n"),
            b"A: b\r\n\r\nx\r\n"
        );
    }
}
