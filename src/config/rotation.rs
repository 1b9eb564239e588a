//! `[rotation]` and `[rotation.dns_update]`: which signatures rotate their keys, how often, how
//! a new key's record reaches DNS and what proves it is there before the key signs.
//!
//! The rotated entries are named here (`domains`, `signatures`) rather than in the signing
//! table, so that rotation stays one section an operator adds or removes; the signing table
//! keeps describing *how* to sign, the rotation state *with which selector right now*.

use super::Template;
use super::humantime_serde_compat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/signet-milter/rotation";

/// The algorithm of the keys a rotation generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum NewKeyAlgorithm {
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// What happens to a retired key's record once its overlap is over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetiredRecord {
    /// `p=` empty (RFC 6376 §3.6.1): verifiers say "key revoked" instead of "no key".
    #[default]
    Revoke,
    /// The record is deleted.
    Remove,
}

/// What happens to a retired private key at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetiredPrivateKey {
    /// Moved into `<state_directory>/archive/` (files) or left in Vault (Vault keys).
    #[default]
    Archive,
    /// Deleted (files) or its secret deleted (Vault).
    Delete,
}

/// How new selectors are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorScheme {
    /// A pattern with `{date}` (YYYYMMDD, UTC), `{datetime}` (YYYYMMDDhhmmss, UTC) and/or
    /// `{counter}` (1, 2, …, per signature).
    Pattern(String),
    /// A fixed set used in turn (the two-selector CNAME model: `["s1", "s2"]`).
    Alternate(Vec<String>),
}

/// `[rotation]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSettings {
    /// `[domain."…"]` entries (exact domains) whose key rotates.
    pub domains: Vec<String>,
    /// `[signature."…"]` entries (with a fixed `domain`) whose key rotates.
    pub signatures: Vec<String>,
    pub state_directory: PathBuf,
    /// Keep the state in Vault (KV v2, check-and-set) instead of `state_directory`, so that
    /// several milters sharing the keys share one schedule.
    pub state_vault: Option<StateVault>,
    pub check_interval: Duration,
    pub rotate_after: Duration,
    pub activate_after: Duration,
    pub confirmations: u32,
    pub overlap: Duration,
    pub retired_record: RetiredRecord,
    pub remove_after: Duration,
    pub retired_private_key: RetiredPrivateKey,
    /// `None`: the same kind as the key that signs now.
    pub algorithm: Option<NewKeyAlgorithm>,
    pub selector: SelectorScheme,
    pub pending_warning: Duration,
    /// The servers that must all serve a new record before it signs; empty: the zone's
    /// authoritative servers, found through `resolver` (or the system's resolvers).
    pub dns_servers: Vec<SocketAddr>,
    pub resolver: Option<SocketAddr>,
    /// Where a key's TXT record lives (`{selector}._domainkey.{domain}`, or a CNAME target).
    pub record_name: Template,
    pub dns_update: Option<DnsUpdateSettings>,
}

/// `[rotation] state_vault`: where in Vault the rotation state lives (one secret per rotated
/// signature under `path`, field `state`), through the `[vault]` connection settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateVault {
    pub mount: String,
    pub path: String,
}

/// `[rotation.dns_update]`: RFC 2136 dynamic updates signed with TSIG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsUpdateSettings {
    /// The primary server that takes updates.
    pub server: SocketAddr,
    pub tcp: bool,
    /// The zone the record is updated in (default `{domain}`).
    pub zone: Template,
    /// A BIND key file as `tsig-keygen` writes it (`key "name" { algorithm …; secret "…"; };`).
    pub tsig_key_file: PathBuf,
    pub ttl: Duration,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    signatures: Vec<Spanned<String>>,
    state_directory: Option<PathBuf>,
    state_vault: Option<Spanned<StateVault>>,
    #[serde(default, with = "humantime_serde_compat::option")]
    check_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    rotate_after: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    activate_after: Option<Duration>,
    confirmations: Option<u32>,
    #[serde(default, with = "humantime_serde_compat::option")]
    overlap: Option<Duration>,
    #[serde(default)]
    retired_record: RetiredRecord,
    #[serde(default, with = "humantime_serde_compat::option")]
    remove_after: Option<Duration>,
    #[serde(default)]
    retired_private_key: RetiredPrivateKey,
    algorithm: Option<NewKeyAlgorithm>,
    selector: Option<Spanned<String>>,
    selectors: Option<Spanned<Vec<String>>>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pending_warning: Option<Duration>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    resolver: Option<Spanned<String>>,
    record_name: Option<Spanned<Template>>,
    dns_update: Option<Spanned<RawDnsUpdate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsUpdate {
    server: Spanned<String>,
    #[serde(default)]
    tcp: bool,
    zone: Option<Template>,
    tsig_key_file: PathBuf,
    #[serde(default, with = "humantime_serde_compat::option")]
    ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    timeout: Option<Duration>,
}

/// The settings, and the entry names with their spans (checked against the signing table).
pub(super) type Validated = (RotationSettings, Vec<Spanned<String>>, Vec<Spanned<String>>);

type At<'a> = &'a dyn Fn(Option<std::ops::Range<usize>>, String) -> super::ConfigError;

/// A DNS server as `IP` (port 53) or `IP:PORT`.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("\"{text}\" is not an IP address or IP:PORT (e.g. \"192.0.2.53\" or \"[2001:db8::53]:53\")"))
}

impl RawRotation {
    /// Checks the values on their own; the entries they name are checked against the signing
    /// table by the caller.
    pub(super) fn validate(
        self,
        span: std::ops::Range<usize>,
        at: At<'_>,
    ) -> Result<Validated, super::ConfigError> {
        let whole = |message: String| at(Some(span.clone()), format!("[rotation] {message}"));
        if self.domains.is_empty() && self.signatures.is_empty() {
            return Err(whole(
                "names no entry to rotate: add domains = [\"example.com\"] and/or signatures = [\"name\"]".into(),
            ));
        }
        let positive = |value: Option<Duration>, default: Duration, name: &str| {
            let d = value.unwrap_or(default);
            if d.is_zero() {
                Err(whole(format!("{name} must be longer than 0 s")))
            } else {
                Ok(d)
            }
        };
        let check_interval = positive(
            self.check_interval,
            Duration::from_secs(300),
            "check_interval",
        )?;
        let rotate_after = positive(
            self.rotate_after,
            Duration::from_secs(90 * 86400),
            "rotate_after",
        )?;
        let overlap = positive(self.overlap, Duration::from_secs(7 * 86400), "overlap")?;
        let remove_after = positive(
            self.remove_after,
            Duration::from_secs(30 * 86400),
            "remove_after",
        )?;
        let activate_after = self.activate_after.unwrap_or(Duration::from_secs(3600));
        let pending_warning = self.pending_warning.unwrap_or(Duration::from_secs(86400));
        let confirmations = self.confirmations.unwrap_or(2);
        if confirmations == 0 {
            return Err(whole("confirmations must be at least 1".into()));
        }
        if rotate_after <= overlap {
            return Err(whole(format!(
                "rotate_after ({}) must be longer than overlap ({}): a key is retired only after the next one signs",
                humantime::format_duration(rotate_after),
                humantime::format_duration(overlap)
            )));
        }
        let selector = match (self.selector, self.selectors) {
            (Some(_), Some(list)) => {
                return Err(at(
                    Some(list.span()),
                    "[rotation] set selector (a pattern) or selectors (a list used in turn), not both".into(),
                ));
            }
            (Some(pattern), None) => {
                let span = pattern.span();
                let text = pattern.into_inner();
                validate_selector_pattern(&text)
                    .map_err(|e| at(Some(span), format!("[rotation] selector: {e}")))?;
                SelectorScheme::Pattern(text)
            }
            (None, Some(list)) => {
                let span = list.span();
                let list = list.into_inner();
                if list.len() < 2 {
                    return Err(at(
                        Some(span),
                        "[rotation] selectors needs at least two names used in turn (e.g. [\"s1\", \"s2\"])".into(),
                    ));
                }
                for (i, name) in list.iter().enumerate() {
                    if !is_selector(name) {
                        return Err(at(
                            Some(span),
                            format!("[rotation] selectors: \"{name}\" is not a valid selector"),
                        ));
                    }
                    if list[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
                        return Err(at(
                            Some(span),
                            format!("[rotation] selectors: \"{name}\" is listed twice"),
                        ));
                    }
                }
                SelectorScheme::Alternate(list)
            }
            (None, None) => SelectorScheme::Pattern("s{date}".into()),
        };
        let mut dns_servers = Vec::new();
        for server in self.dns_servers {
            dns_servers
                .push(parse_server(server.get_ref()).map_err(|e| {
                    at(Some(server.span()), format!("[rotation] dns_servers: {e}"))
                })?);
        }
        let resolver = match self.resolver {
            Some(r) => Some(
                parse_server(r.get_ref())
                    .map_err(|e| at(Some(r.span()), format!("[rotation] resolver: {e}")))?,
            ),
            None => None,
        };
        let record_name = match self.record_name {
            Some(t) => {
                let span = t.span();
                let t = t.into_inner();
                if !t.mentions_selector() {
                    return Err(at(
                        Some(span),
                        "[rotation] record_name must contain {selector}: every key has its own record".into(),
                    ));
                }
                t
            }
            None => Template::parse("{selector}._domainkey.{domain}").expect("literal template"),
        };
        let dns_update = match self.dns_update {
            None => None,
            Some(raw) => {
                let span = raw.span();
                let raw = raw.into_inner();
                let server = parse_server(raw.server.get_ref()).map_err(|e| {
                    at(
                        Some(raw.server.span()),
                        format!("[rotation.dns_update] server: {e}"),
                    )
                })?;
                let timeout = raw.timeout.unwrap_or(Duration::from_secs(5));
                if timeout.is_zero() {
                    return Err(at(
                        Some(span),
                        "[rotation.dns_update] timeout must be longer than 0 s".into(),
                    ));
                }
                let ttl = raw.ttl.unwrap_or(Duration::from_secs(300));
                if ttl.as_secs() == 0 || ttl.as_secs() > u64::from(u32::MAX) {
                    return Err(at(
                        Some(span),
                        "[rotation.dns_update] ttl must be between 1 s and 136 years".into(),
                    ));
                }
                if ttl >= overlap {
                    return Err(at(
                        Some(span),
                        format!(
                            "[rotation.dns_update] ttl ({}) must be shorter than [rotation] overlap ({}): resolvers keep a record for its ttl",
                            humantime::format_duration(ttl),
                            humantime::format_duration(overlap)
                        ),
                    ));
                }
                Some(DnsUpdateSettings {
                    server,
                    tcp: raw.tcp,
                    zone: raw
                        .zone
                        .unwrap_or_else(|| Template::parse("{domain}").expect("literal template")),
                    tsig_key_file: raw.tsig_key_file,
                    ttl,
                    timeout,
                })
            }
        };
        let state_vault = match self.state_vault {
            None => None,
            Some(v) => {
                let span = v.span();
                let v = v.into_inner();
                let bad = |s: &str| s.trim_matches('/').is_empty() || s.contains("..");
                if bad(&v.mount) || bad(&v.path) {
                    return Err(at(
                        Some(span),
                        "[rotation] state_vault needs a mount and a path (e.g. { mount = \"secret\", path = \"signet/rotation\" })".into(),
                    ));
                }
                Some(StateVault {
                    mount: v.mount.trim_matches('/').to_string(),
                    path: v.path.trim_matches('/').to_string(),
                })
            }
        };
        let settings = RotationSettings {
            domains: self.domains.iter().map(|d| d.get_ref().clone()).collect(),
            signatures: self
                .signatures
                .iter()
                .map(|s| s.get_ref().clone())
                .collect(),
            state_directory: self
                .state_directory
                .unwrap_or_else(|| DEFAULT_STATE_DIRECTORY.into()),
            state_vault,
            check_interval,
            rotate_after,
            activate_after,
            confirmations,
            overlap,
            retired_record: self.retired_record,
            remove_after,
            retired_private_key: self.retired_private_key,
            algorithm: self.algorithm,
            selector,
            pending_warning,
            dns_servers,
            resolver,
            record_name,
            dns_update,
        };
        Ok((settings, self.domains, self.signatures))
    }
}

fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A pattern must make a new name each time and a valid selector every time.
fn validate_selector_pattern(pattern: &str) -> Result<(), String> {
    const PLACEHOLDERS: [&str; 3] = ["{date}", "{datetime}", "{counter}"];
    if !PLACEHOLDERS.iter().any(|p| pattern.contains(p)) {
        return Err(format!(
            "\"{pattern}\" needs {{date}}, {{datetime}} or {{counter}} so that each key gets a new selector (or use selectors = [\"s1\", \"s2\"])"
        ));
    }
    let mut sample = pattern.to_string();
    for p in PLACEHOLDERS {
        sample = sample.replace(p, "1");
    }
    if !is_selector(&sample) {
        return Err(format!(
            "\"{pattern}\" does not make a valid selector (letters, digits, '-', '_', dots between labels; placeholders {{date}}, {{datetime}}, {{counter}})"
        ));
    }
    Ok(())
}

/// Every entry named must exist, sign as one fixed domain, and keep each selector's key in its
/// own place (a file path or a Vault path with `{selector}`), so that a new key never
/// overwrites the one that signs.
pub(super) fn check_entries(
    settings: &RotationSettings,
    domains: &[Spanned<String>],
    signatures: &[Spanned<String>],
    table: &super::SigningTable,
    at: At<'_>,
) -> Result<(), super::ConfigError> {
    let shared = settings.state_vault.is_some();
    use super::{SignatureLabel, SigningDomain};
    let mut seen = std::collections::BTreeSet::new();
    for name in domains {
        let text = name.get_ref();
        if text.starts_with('*') {
            return Err(at(
                Some(name.span()),
                format!(
                    "[rotation] domains: \"{text}\" is a wildcard; only entries for one domain can rotate (each domain needs its own records)"
                ),
            ));
        }
        let label = SignatureLabel::Domain(text.as_str().into());
        let template = table.entry(&label).ok_or_else(|| {
            at(
                Some(name.span()),
                format!("[rotation] domains names \"{text}\", but there is no [domain.\"{text}\"]"),
            )
        })?;
        check_key(template, &label, name.span(), shared, at)?;
        if !seen.insert(label) {
            return Err(at(
                Some(name.span()),
                format!("[rotation] domains lists \"{text}\" twice"),
            ));
        }
    }
    for name in signatures {
        let text = name.get_ref();
        let label = SignatureLabel::Signature(text.as_str().into());
        let template = table.entry(&label).ok_or_else(|| {
            at(
                Some(name.span()),
                format!(
                    "[rotation] signatures names \"{text}\", but there is no [signature.\"{text}\"]"
                ),
            )
        })?;
        if template.domain == SigningDomain::Author {
            return Err(at(
                Some(name.span()),
                format!(
                    "[rotation] signatures: [signature.\"{text}\"] signs as each author's domain; only a signature with a fixed domain can rotate"
                ),
            ));
        }
        check_key(template, &label, name.span(), shared, at)?;
        if !seen.insert(label) {
            return Err(at(
                Some(name.span()),
                format!("[rotation] signatures lists \"{text}\" twice"),
            ));
        }
    }
    Ok(())
}

fn check_key(
    template: &super::SignerTemplate,
    label: &super::SignatureLabel,
    span: std::ops::Range<usize>,
    shared_state: bool,
    at: At<'_>,
) -> Result<(), super::ConfigError> {
    use super::keysource::{KeySource, KvVersion};
    let problem = match &template.key {
        KeySource::File(_) if shared_state => Some("with state_vault the milters share one schedule, so their keys must be shared too: keep them in Vault".to_string()),
        KeySource::File(path) if path.mentions_selector() => None,
        KeySource::File(_) => Some("its key file path has no {selector}, so a new key would overwrite the one that signs (use filename = \"/var/lib/signet-milter/keys/{domain}/{selector}.key\")".to_string()),
        KeySource::Vault(v) if v.kv_version == Some(KvVersion::V1) => Some("its key is in a KV version 1 mount; rotation writes new keys with check-and-set, which needs KV version 2".into()),
        KeySource::Vault(v) if v.path.mentions_selector() || v.mount.mentions_selector() => None,
        KeySource::Vault(_) => Some("its vault_path has no {selector}; rotation writes each key to its own path (e.g. vault_path = \"dkim/{domain}/{selector}\")".into()),
        KeySource::Data(_) => Some("its key is inline key_data, which signet cannot replace".into()),
        KeySource::Event { .. } => Some("its key comes from a callback, which signet cannot write to".into()),
        KeySource::Transit(_) | KeySource::Pkcs11(_) => Some("its key stays in Transit or a PKCS#11 token, where signet does not create keys on a schedule (create the next one with keygen --transit-key / --pkcs11-key and switch the selector by hand)".into()),
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(at(
            Some(span),
            format!("[rotation] cannot rotate {label}: {why}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const TABLE: &str = r#"
[domain."example.com"]
selector = "s1"
[domain."*.example.net"]
selector = "w1"
[domain."inline.example"]
selector = "i1"
key = { key_data = "-----BEGIN PRIVATE KEY-----" }
[domain."fixed.example"]
selector = "f1"
filename = "/etc/signet-milter/fixed.key"
[signature."per-author"]
domain = "{domain}"
selector = "a1"
[base]
additional_signatures = ["per-author"]
"#;

    fn load(rotation: &str) -> Result<Config, String> {
        Config::parse(&format!("{TABLE}{rotation}"), Path::new("r.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_section_loads_with_its_defaults() {
        let config = load("[rotation]\ndomains = [\"example.com\"]\n").unwrap();
        let r = config.rotation.unwrap();
        assert_eq!(r.domains, ["example.com"]);
        assert_eq!(r.rotate_after, std::time::Duration::from_secs(90 * 86400));
        assert_eq!(r.confirmations, 2);
        assert!(r.dns_update.is_none() && r.dns_servers.is_empty());
        assert_eq!(
            r.record_name.render("example.com", "s2"),
            "s2._domainkey.example.com"
        );
    }

    #[test]
    fn bad_values_are_refused_at_their_line() {
        // Lines counted from the [rotation] line, columns from 1.
        let cases = [
            ("[rotation]\n", (0, 1), "names no entry to rotate"),
            (
                "[rotation]\ndomains = [\"nope.example\"]\n",
                (1, 12),
                "there is no [domain.\"nope.example\"]",
            ),
            (
                "[rotation]\ndomains = [\"*.example.net\"]\n",
                (1, 12),
                "is a wildcard",
            ),
            (
                "[rotation]\ndomains = [\"inline.example\"]\n",
                (1, 12),
                "inline key_data",
            ),
            (
                "[rotation]\ndomains = [\"fixed.example\"]\n",
                (1, 12),
                "has no {selector}",
            ),
            (
                "[rotation]\nsignatures = [\"per-author\"]\n",
                (1, 15),
                "signs as each author's domain",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nselector = \"fixed\"\n",
                (2, 12),
                "needs {date}, {datetime} or {counter}",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nselector = \"s {date}\"\n",
                (2, 12),
                "does not make a valid selector",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nselectors = [\"s1\"]\n",
                (2, 13),
                "at least two names",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nrotate_after = \"1d\"\noverlap = \"2d\"\n",
                (0, 1),
                "must be longer than overlap",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\ndns_servers = [\"ns1.example\"]\n",
                (2, 16),
                "not an IP address",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\ncheck_interval = \"soon\"\n",
                (2, 18),
                "invalid duration",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nconfirmations = 0\n",
                (0, 1),
                "at least 1",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nretired_record = \"keep\"\n",
                (2, 18),
                "unknown variant",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nrecord_name = \"dkim.example\"\n",
                (2, 15),
                "must contain {selector}",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\n[rotation.dns_update]\nserver = \"localhost\"\ntsig_key_file = \"/k\"\n",
                (3, 10),
                "not an IP address",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\n[rotation.dns_update]\nserver = \"127.0.0.1\"\ntsig_key_file = \"/k\"\nttl = \"30d\"\n",
                (2, 1),
                "must be shorter than [rotation] overlap",
            ),
            (
                "[rotation]\ndomains = [\"example.com\"]\nrotate_every = \"1d\"\n",
                (2, 1),
                "unknown field `rotate_every`",
            ),
        ];
        for (section, at, wanted) in cases {
            let e = load(section).expect_err(section);
            let first = TABLE.matches('\n').count() + 1;
            let at = format!("r.toml:{}:{}: ", first + at.0, at.1);
            assert!(e.starts_with(&at), "{section}: {e}");
            assert!(e.contains(wanted), "{section}: {e}");
        }
    }
}
