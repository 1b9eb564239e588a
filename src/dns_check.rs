//! `check --dns`: is the key published at `selector._domainkey.domain` the public half of the
//! private key we sign with? Catches the mistakes that make every signature fail at the
//! receivers while the milter itself is perfectly happy: a record never published, an old key
//! left in DNS after a rotation, a record mangled by a DNS provider.

use crate::config::Algo;
use crate::dns::{LookupError, TxtLookup};
use crate::inventory::{KeyLocation, SignAs};
use crate::keys::SigningKey;
use crate::runtime::Runtime;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;
use std::sync::Arc;

/// One `selector._domainkey.domain` to look at, and what was found there.
pub struct PublishedKey {
    pub domain: String,
    pub selector: String,
    /// The entry that signs with it, e.g. `[domain."example.com"]`.
    pub entry: String,
    pub status: Published,
    /// The key we sign with, when it could be loaded (for the record to publish).
    pub key: Option<Arc<SigningKey>>,
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
    /// Not looked up, because the server did not answer an earlier lookup.
    NotAsked(String),
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
            Published::NotAsked(why) => write!(f, "NOT LOOKED UP: {why}"),
            Published::NoKey(why) => write!(f, "NO KEY to compare: {why}"),
            Published::PerAuthorDomain => {
                write!(f, "not checked: signs as each message's author domain")
            }
        }
    }
}

/// Looks up every key of the [inventory](crate::inventory) whose `d=` is known and compares
/// what is published with the key. Once the server does not answer at all, the remaining names
/// are not asked: a dead server costs one timeout, not one per record.
pub async fn check_published_keys(runtime: &Runtime, dns: &impl TxtLookup) -> Vec<PublishedKey> {
    let mut unreachable: Option<String> = None;
    let mut out = Vec::new();
    for planned in runtime.rotation.inventory(&runtime.config.signing) {
        let (key, status) = match (&planned.domain, &planned.key) {
            (SignAs::Domain(domain), KeyLocation::Known(source)) => {
                match runtime.keys.get(source).await {
                    Ok(key) => {
                        let status = match &unreachable {
                            Some(why) => Published::NotAsked(why.clone()),
                            None => {
                                let name = format!("{}._domainkey.{domain}", planned.selector());
                                lookup(dns, &name, &key, &mut unreachable).await
                            }
                        };
                        (Some(key), status)
                    }
                    Err(e) => (None, Published::NoKey(e.to_string())),
                }
            }
            _ => (None, Published::PerAuthorDomain),
        };
        out.push(PublishedKey {
            domain: planned.domain_text().to_string(),
            selector: planned.selector().to_string(),
            entry: planned.signature.label.to_string(),
            status,
            key,
        });
    }
    out
}

/// Looks up the TXT records at `name` (a record name such as `s1._domainkey.example.com`, or
/// the target of its CNAME) and compares them with `key`.
pub async fn lookup_name(dns: &impl TxtLookup, name: &str, key: &SigningKey) -> Published {
    match dns.txt(name).await {
        Ok(records) => compare(&records, key),
        Err(LookupError::NoAnswer(why) | LookupError::Failed(why)) => Published::LookupFailed(why),
    }
}

async fn lookup(
    dns: &impl TxtLookup,
    name: &str,
    key: &SigningKey,
    unreachable: &mut Option<String>,
) -> Published {
    match dns.txt(name).await {
        Ok(records) => compare(&records, key),
        Err(LookupError::NoAnswer(why)) => {
            *unreachable = Some(format!("{} did not answer", dns.asked()));
            Published::LookupFailed(why)
        }
        Err(LookupError::Failed(why)) => Published::LookupFailed(why),
    }
}

/// Compares the TXT records found (each a list of strings) with our key.
pub fn compare(records: &[Vec<Vec<u8>>], key: &SigningKey) -> Published {
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

    /// DNS answered from a table: what each name returns, and how many questions came.
    struct Table {
        answers: std::collections::HashMap<String, Result<TxtRecords, LookupError>>,
        asked: std::sync::Mutex<Vec<String>>,
    }

    impl TxtLookup for Table {
        async fn txt(&self, name: &str) -> Result<TxtRecords, LookupError> {
            self.asked.lock().unwrap().push(name.to_string());
            self.answers.get(name).cloned().unwrap_or(Ok(vec![]))
        }
        fn asked(&self) -> String {
            "the test table".into()
        }
    }

    use crate::dns::TxtRecords;
    use crate::keys::generate::write_key_files;

    /// A runtime over `table`, with keys generated for `(domain, selector, kind)`; returns
    /// the public record of each.
    fn runtime(
        dir: &std::path::Path,
        keys: &[(&str, &str, KeyKind)],
        table: &str,
    ) -> (Runtime, std::collections::HashMap<String, String>) {
        let mut records = std::collections::HashMap::new();
        for (domain, selector, kind) in keys {
            let generated = generate(*kind).unwrap();
            write_key_files(&dir.join("keys"), domain, selector, &generated).unwrap();
            records.insert(
                format!("{selector}._domainkey.{domain}"),
                generated.key.dns_record(),
            );
        }
        let text = format!(
            "[keys]\ndirectory = \"{}\"\n{table}",
            dir.join("keys").display()
        );
        let config = crate::config::Config::parse(&text, &dir.join("t.toml")).unwrap();
        (Runtime::new(config), records)
    }

    fn statuses(published: &[PublishedKey]) -> Vec<(String, String)> {
        published
            .iter()
            .map(|p| (p.name(), p.status.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn each_planned_key_is_compared_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, records) = runtime(
            dir.path(),
            &[
                ("example.com", "rsa1", KeyKind::Rsa2048),
                ("example.com", "ed1", KeyKind::Ed25519),
                ("example.org", "rsa1", KeyKind::Rsa2048),
                ("example.org", "ed1", KeyKind::Ed25519),
                ("old.example", "s1", KeyKind::Ed25519),
                ("bad.example", "s1", KeyKind::Ed25519),
                ("twice.example", "s1", KeyKind::Ed25519),
                ("fail.example", "s1", KeyKind::Ed25519),
                ("esp.example", "esp1", KeyKind::Ed25519),
            ],
            r#"
            [base]
            additional_signatures = ["esp"]
            [domain."example.com"]
            selector = "rsa1"
            additional_signatures = ["ed"]
            [domain."example.org"]
            selector = "rsa1"
            additional_signatures = ["ed"]
            [domain."old.example"]
            selector = "s1"
            [domain."bad.example"]
            selector = "s1"
            [domain."twice.example"]
            selector = "s1"
            [domain."fail.example"]
            selector = "s1"
            [domain."nokey.example"]
            selector = "s1"
            [domain."*.wild.example"]
            selector = "w1"
            [signature."ed"]
            domain = "{domain}"
            selector = "ed1"
            [signature."esp"]
            domain = "esp.example"
            selector = "esp1"
            "#,
        );
        let split_record = |name: &str| split(&records[name]);
        let mut answers = std::collections::HashMap::new();
        for name in [
            "rsa1._domainkey.example.com",
            "ed1._domainkey.example.com",
            "rsa1._domainkey.example.org",
            "esp1._domainkey.esp.example",
        ] {
            answers.insert(name.to_string(), Ok(split_record(name)));
        }
        // example.org's Ed25519 record was never published.
        let stale = generate(KeyKind::Ed25519).unwrap().key.dns_record();
        answers.insert("s1._domainkey.old.example".into(), Ok(record(&stale)));
        answers.insert(
            "s1._domainkey.bad.example".into(),
            Ok(record("v=DKIM1; k=ed25519; p=not base64!")),
        );
        let twice = split_record("s1._domainkey.twice.example");
        answers.insert(
            "s1._domainkey.twice.example".into(),
            Ok([twice.clone(), twice].concat()),
        );
        answers.insert(
            "s1._domainkey.fail.example".into(),
            Err(LookupError::Failed("SERVFAIL".into())),
        );
        let dns = Table {
            answers,
            asked: Default::default(),
        };
        let published = check_published_keys(&runtime, &dns).await;
        let got = statuses(&published);
        let want = [
            (
                "s1._domainkey.bad.example",
                "MALFORMED: p= is not valid base64",
            ),
            ("esp1._domainkey.esp.example", "ok"),
            ("ed1._domainkey.example.com", "ok"),
            ("rsa1._domainkey.example.com", "ok (TXT in 2 strings)"),
            ("ed1._domainkey.example.org", "MISSING: no TXT record"),
            ("rsa1._domainkey.example.org", "ok (TXT in 2 strings)"),
            ("s1._domainkey.fail.example", "LOOKUP FAILED: SERVFAIL"),
            ("s1._domainkey.nokey.example", "NO KEY to compare: key file"),
            (
                "s1._domainkey.old.example",
                "MISMATCH: the published key is not the public half of the signing key",
            ),
            ("s1._domainkey.twice.example", "AMBIGUOUS: 2 TXT records"),
            (
                "w1._domainkey.*.wild.example",
                "not checked: signs as each message's author domain",
            ),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for ((name, status), (want_name, want_status)) in got.iter().zip(want) {
            assert_eq!(name, want_name, "{got:#?}");
            assert!(status.starts_with(want_status), "{name}: {status}");
        }
        let fixable: Vec<&str> = published
            .iter()
            .filter(|p| p.key.is_some() && p.status.wants_record())
            .map(|p| p.domain.as_str())
            .collect();
        assert_eq!(
            fixable,
            ["bad.example", "example.org", "old.example", "twice.example"]
        );
        // No question for the key that could not be loaded, nor for the wildcard.
        let asked = dns.asked.lock().unwrap();
        assert_eq!(asked.len(), 9, "{asked:?}");
        assert!(!asked.iter().any(|n| n.contains("nokey") || n.contains('*')));
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_asked_once() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<(String, &str, KeyKind)> = (0..5)
            .map(|i| (format!("d{i}.example"), "s1", KeyKind::Ed25519))
            .collect();
        let keys: Vec<(&str, &str, KeyKind)> =
            keys.iter().map(|(d, s, k)| (d.as_str(), *s, *k)).collect();
        let table: String = keys
            .iter()
            .map(|(d, _, _)| format!("[domain.\"{d}\"]\nselector = \"s1\"\n"))
            .collect();
        let (runtime, _) = runtime(dir.path(), &keys, &table);
        let dead = Table {
            answers: keys
                .iter()
                .map(|(d, _, _)| {
                    (
                        format!("s1._domainkey.{d}"),
                        Err(LookupError::NoAnswer("no answer within 6 s".into())),
                    )
                })
                .collect(),
            asked: Default::default(),
        };
        let got = statuses(&check_published_keys(&runtime, &dead).await);
        assert_eq!(dead.asked.lock().unwrap().len(), 1);
        assert_eq!(got[0].1, "LOOKUP FAILED: no answer within 6 s");
        for (name, status) in &got[1..] {
            assert_eq!(
                status, "NOT LOOKED UP: the test table did not answer",
                "{name}"
            );
        }
    }
}
