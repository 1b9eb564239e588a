//! `check --dns`: is the key published at `selector._domainkey.domain` the public half of the
//! private key we sign with? Catches the mistakes that make every signature fail at the
//! receivers while the milter itself is perfectly happy: a record never published, an old key
//! left in DNS after a rotation, a record mangled by a DNS provider.

use crate::config::{Algo, SignatureLabel, SignerTemplate, SigningDomain, SigningTable};
use crate::keys::parse::PrivateKey;
use crate::policy::{self, NoAuthor};
use crate::runtime::Runtime;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::hickory_resolver::{Resolver, TokioResolver};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One `selector._domainkey.domain` to look at, and what was found there.
pub struct PublishedKey {
    pub domain: String,
    pub selector: String,
    /// The entry that signs with it, e.g. `[domain."example.com"]`.
    pub entry: String,
    pub status: Published,
    /// The key we sign with, when it could be loaded (for the record to publish).
    pub key: Option<Arc<PrivateKey>>,
}

impl PublishedKey {
    /// The DNS name looked up.
    pub fn name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

/// What the DNS says about one selector.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// The record's `p=` is our public key.
    Matches { strings: usize },
    /// No TXT record (NXDOMAIN or no data).
    Missing,
    /// A DKIM record with another key.
    Mismatch,
    /// `p=` is empty: the key was revoked (RFC 6376 §3.6.1).
    Revoked,
    /// `k=` names another key type than ours.
    WrongKeyType {
        published: String,
        ours: &'static str,
    },
    /// Not a DKIM key record.
    Malformed(String),
    /// Several TXT records at one selector: receivers pick one at random (RFC 6376 §3.6.2.2).
    Several(usize),
    /// The lookup itself failed (timeout, SERVFAIL, …): nothing is known.
    LookupFailed(String),
    /// Our own key could not be loaded, so there is nothing to compare.
    NoKey(String),
    /// The signing domain is each message's author domain: no single name to look up.
    PerAuthorDomain,
}

impl Published {
    /// Whether publishing the record of our key is the fix.
    pub fn wants_record(&self) -> bool {
        matches!(
            self,
            Published::Missing
                | Published::Mismatch
                | Published::Revoked
                | Published::WrongKeyType { .. }
                | Published::Malformed(_)
                | Published::Several(_)
        )
    }

    /// Whether this should fail `check`.
    pub fn is_problem(&self) -> bool {
        !matches!(self, Published::Matches { .. } | Published::PerAuthorDomain)
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Published::Matches { strings: 1 } => write!(f, "ok"),
            Published::Matches { strings } => write!(f, "ok (TXT in {strings} strings)"),
            Published::Missing => write!(f, "MISSING: no TXT record"),
            Published::Mismatch => write!(
                f,
                "MISMATCH: the published key is not the public half of the signing key"
            ),
            Published::Revoked => write!(f, "REVOKED: the record has an empty p="),
            Published::WrongKeyType { published, ours } => write!(
                f,
                "MISMATCH: the record says k={published}, the signing key is {ours}"
            ),
            Published::Malformed(why) => write!(f, "MALFORMED: {why}"),
            Published::Several(n) => write!(
                f,
                "AMBIGUOUS: {n} TXT records; receivers may use any of them (keep one)"
            ),
            Published::LookupFailed(why) => write!(f, "LOOKUP FAILED: {why}"),
            Published::NoKey(why) => write!(f, "NO KEY to compare: {why}"),
            Published::PerAuthorDomain => {
                write!(f, "not checked: signs as each message's author domain")
            }
        }
    }
}

/// A resolver asking `server` (UDP, then TCP), or the system's resolvers when `None`.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(5);
    options.attempts = 2;
    // Every answer is wanted fresh: this is a one-shot check.
    options.cache_size = 0;
    let builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            // /etc/hosts is no DNS: only the given server answers.
            options.use_hosts_file = ResolveHosts::Never;
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    builder
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// Looks up every selector the configuration signs with and compares it with its key.
pub async fn check_published_keys(
    runtime: &Runtime,
    resolver: &TokioResolver,
) -> Vec<PublishedKey> {
    let mut out = Vec::new();
    for mut target in selectors_to_check(&runtime.config.signing) {
        if let Some(rotated) = runtime
            .rotation
            .template(&runtime.config.signing, &target.template)
        {
            target.template = rotated;
        }
        let Some(domain) = target.domain else {
            // A wildcard entry shows its pattern; a [signature] shows the template.
            let domain = match &target.template.label {
                SignatureLabel::Domain(pattern) => pattern.clone(),
                SignatureLabel::Signature(_) => "{domain}".into(),
            };
            out.push(PublishedKey {
                domain,
                selector: target.template.selector.clone(),
                entry: target.template.label.to_string(),
                status: Published::PerAuthorDomain,
                key: None,
            });
            continue;
        };
        let selector = target.template.selector.clone();
        let source = target.template.key.resolve(&domain, &selector);
        let (key, status) = match runtime.keys.get(&source).await {
            Ok(key) => {
                let status = lookup(resolver, &domain, &selector, &key).await;
                (Some(key), status)
            }
            Err(e) => (None, Published::NoKey(e.to_string())),
        };
        out.push(PublishedKey {
            domain,
            selector,
            entry: target.template.label.to_string(),
            status,
            key,
        });
    }
    out
}

/// One selector to check: `domain` is `None` when it is each message's author domain.
struct Target {
    domain: Option<String>,
    template: Arc<SignerTemplate>,
}

/// Every (d=, selector) a message can be signed with: what each exact `[domain]` entry plans
/// (with its extra signatures, `{domain}` filled in), what a message without a `[domain]`
/// match gets from `[base]`, and every entry with a fixed `d=`. Wildcard and catch-all
/// entries that sign as the author domain are listed once, unchecked.
fn selectors_to_check(table: &SigningTable) -> Vec<Target> {
    // Sorted by domain and selector; the unchecked per-author-domain entries last.
    let mut found: BTreeMap<(bool, String, String), Target> = BTreeMap::new();
    let mut add = |domain: Option<String>, template: &Arc<SignerTemplate>| {
        let key = match &domain {
            Some(d) => (false, d.clone(), template.selector.clone()),
            None => (true, template.label.to_string(), template.selector.clone()),
        };
        found.entry(key).or_insert_with(|| Target {
            domain,
            template: template.clone(),
        });
    };
    for (name, entry) in table.domain_entries() {
        if name.starts_with('*') {
            match &entry.domain {
                SigningDomain::Fixed(d) => add(Some(d.clone()), entry),
                SigningDomain::Author => add(None, entry),
            }
            continue;
        }
        for planned in policy::plan(table, Ok(name)).signatures {
            add(Some(planned.domain), &planned.template);
        }
    }
    for planned in policy::plan(table, Err(&NoAuthor::Missing)).signatures {
        add(Some(planned.domain), &planned.template);
    }
    for (_, entry) in table.signature_entries() {
        if let SigningDomain::Fixed(d) = &entry.domain {
            add(Some(d.clone()), entry);
        }
    }
    found.into_values().collect()
}

async fn lookup(
    resolver: &TokioResolver,
    domain: &str,
    selector: &str,
    key: &PrivateKey,
) -> Published {
    lookup_name(resolver, &format!("{selector}._domainkey.{domain}"), key).await
}

/// Looks up the TXT records at `name` (a record name such as `s1._domainkey.example.com`, or
/// the target of its CNAME) and compares them with `key`.
pub async fn lookup_name(resolver: &TokioResolver, name: &str, key: &PrivateKey) -> Published {
    let name = format!("{}.", name.trim_end_matches('.'));
    let records: Vec<Vec<Vec<u8>>> = match resolver.txt_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() => vec![],
        Err(e) => return Published::LookupFailed(e.to_string()),
    };
    compare(&records, key)
}

/// Compares the TXT records found (each a list of strings) with our key.
pub fn compare(records: &[Vec<Vec<u8>>], key: &PrivateKey) -> Published {
    let record = match records {
        [] => return Published::Missing,
        [one] => one,
        several => return Published::Several(several.len()),
    };
    // RFC 6376 §3.6.2.2: the strings of one record are joined with nothing in between.
    let joined = record.concat();
    let Ok(text) = std::str::from_utf8(&joined) else {
        return Published::Malformed("the record is not text".into());
    };
    let tags = match parse_tags(text) {
        Ok(tags) => tags,
        Err(why) => return Published::Malformed(why),
    };
    if let Some(version) = tags.first().filter(|(name, _)| *name == "v") {
        if version.1 != "DKIM1" {
            return Published::Malformed(format!("v={} (expected DKIM1)", version.1));
        }
    } else if tags.iter().any(|(name, _)| *name == "v") {
        return Published::Malformed("v= must be the first tag".into());
    }
    let tag = |wanted: &str| tags.iter().find(|(name, _)| *name == wanted).map(|t| t.1);
    let key_type = tag("k").unwrap_or("rsa");
    let ours = match key.algo() {
        Algo::RsaSha256 => "rsa",
        Algo::Ed25519Sha256 => "ed25519",
    };
    let Some(p) = tag("p") else {
        return Published::Malformed("no p= tag".into());
    };
    let p: String = p.split_ascii_whitespace().collect();
    if p.is_empty() {
        return Published::Revoked;
    }
    if !key_type.eq_ignore_ascii_case(ours) {
        return Published::WrongKeyType {
            published: key_type.to_string(),
            ours,
        };
    }
    let Ok(published) = BASE64.decode(p.as_bytes()) else {
        return Published::Malformed("p= is not valid base64".into());
    };
    let our_key = BASE64
        .decode(key.public_key_base64())
        .expect("we encoded it ourselves");
    if same_public_key(&published, &our_key, key.algo()) {
        Published::Matches {
            strings: record.len(),
        }
    } else {
        Published::Mismatch
    }
}

/// Our RSA key is a SubjectPublicKeyInfo; some publish the bare PKCS#1 RSAPublicKey, which is
/// the DER at the end of the SubjectPublicKeyInfo (inside its BIT STRING). Verifiers accept both.
fn same_public_key(published: &[u8], ours: &[u8], algo: Algo) -> bool {
    published == ours
        || (algo == Algo::RsaSha256
            && published.first() == Some(&0x30)
            && published.len() < ours.len()
            && ours.ends_with(published))
}

/// A DKIM tag list (RFC 6376 §3.2): `name=value` pairs separated by `;`, whitespace around
/// both allowed, a trailing `;` allowed, no tag twice.
fn parse_tags(text: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for spec in text.split(';') {
        if spec.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = spec.split_once('=') else {
            return Err(format!("\"{}\" is not a tag=value pair", spec.trim()));
        };
        let name = name.trim();
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("\"{name}\" is not a tag name"));
        }
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(format!("tag {name}= appears twice"));
        }
        tags.push((name, value.trim()));
    }
    if tags.is_empty() {
        return Err("empty record".into());
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate::{KeyKind, generate};

    fn record(text: &str) -> Vec<Vec<Vec<u8>>> {
        vec![vec![text.as_bytes().to_vec()]]
    }

    /// The record split into strings of at most 255 bytes, as zone files and DNS need.
    fn split(text: &str) -> Vec<Vec<Vec<u8>>> {
        vec![text.as_bytes().chunks(255).map(<[u8]>::to_vec).collect()]
    }

    #[test]
    fn the_record_of_the_key_matches_whole_or_split() {
        for kind in [KeyKind::Rsa2048, KeyKind::Ed25519] {
            let key = generate(kind).unwrap().key;
            assert_eq!(
                compare(&record(&key.dns_record()), &key),
                Published::Matches { strings: 1 }
            );
            let parts = split(&key.dns_record());
            let n = parts[0].len();
            assert_eq!(compare(&parts, &key), Published::Matches { strings: n });
        }
        let rsa = generate(KeyKind::Rsa2048).unwrap().key;
        assert!(split(&rsa.dns_record())[0].len() > 1, "RSA needs 2 strings");
    }

    #[test]
    fn spacing_tag_order_and_pkcs1_are_accepted() {
        let key = generate(KeyKind::Rsa2048).unwrap().key;
        let p = key.public_key_base64();
        let spaced: String = p
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        let text = format!(" v = DKIM1 ;\th=sha256; p= {spaced} ; n=notes;");
        assert_eq!(
            compare(&record(&text), &key),
            Published::Matches { strings: 1 }
        );
        // No k= means rsa; the bare RSAPublicKey is the tail of the SubjectPublicKeyInfo.
        let spki = BASE64.decode(p).unwrap();
        let pkcs1 = &spki[spki.len() - 270..];
        assert_eq!(pkcs1[0], 0x30);
        let text = format!("p={}", BASE64.encode(pkcs1));
        assert_eq!(
            compare(&record(&text), &key),
            Published::Matches { strings: 1 }
        );
    }

    #[test]
    fn every_kind_of_wrong_record_is_named() {
        let key = generate(KeyKind::Ed25519).unwrap().key;
        let other = generate(KeyKind::Ed25519).unwrap().key;
        let rsa = generate(KeyKind::Rsa2048).unwrap().key;
        let cases: Vec<(Vec<Vec<Vec<u8>>>, Published)> = vec![
            (vec![], Published::Missing),
            (record(&other.dns_record()), Published::Mismatch),
            (record("v=DKIM1; k=ed25519; p="), Published::Revoked),
            (
                record(&rsa.dns_record()),
                Published::WrongKeyType {
                    published: "rsa".into(),
                    ours: "ed25519",
                },
            ),
            (
                vec![
                    vec![key.dns_record().into_bytes()],
                    vec![other.dns_record().into_bytes()],
                ],
                Published::Several(2),
            ),
            (
                record("v=spf1 -all"),
                Published::Malformed("v=spf1 -all (expected DKIM1)".into()),
            ),
            (
                record("hello world"),
                Published::Malformed("\"hello world\" is not a tag=value pair".into()),
            ),
            (
                record("v=DKIM1; k=ed25519"),
                Published::Malformed("no p= tag".into()),
            ),
            (
                record("v=DKIM2; k=ed25519; p=AAAA"),
                Published::Malformed("v=DKIM2 (expected DKIM1)".into()),
            ),
            (
                record("k=ed25519; v=DKIM1; p=AAAA"),
                Published::Malformed("v= must be the first tag".into()),
            ),
            (
                record("v=DKIM1; k=ed25519; p=not*base64"),
                Published::Malformed("p= is not valid base64".into()),
            ),
            (
                record("v=DKIM1; p=AAAA; p=AAAA"),
                Published::Malformed("tag p= appears twice".into()),
            ),
            (record(""), Published::Malformed("empty record".into())),
            (
                vec![vec![vec![0xff, 0xfe]]],
                Published::Malformed("the record is not text".into()),
            ),
        ];
        for (records, expected) in cases {
            let got = compare(&records, &key);
            assert_eq!(got, expected, "{records:?}");
            assert!(got.is_problem());
        }
    }
}
