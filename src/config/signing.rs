//! KumoMTA's `dkim_sign` signing table: `[base]`, `[domain."…"]`, `[signature."…"]`.
//!
//! Every parameter is tri-state (unset, or set to a value at some level) and the most specific
//! level that sets it wins: `[domain]`/`[signature]` over `[base]` over the built-in default. This
//! differs from KumoMTA's helper on purpose, where a domain's `over_sign = false` cannot override
//! `[base]`'s `true`.

use super::keysource::{KeySource, VaultSource};
use super::values::{Algo, Canon, OnError, SignaturePolicy};
use super::{ConfigError, KeySettings, Template};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// Signed header fields when no level sets `headers`.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The three table kinds share the signing parameters; serde's `flatten` cannot be combined with
/// `deny_unknown_fields`, so the shared fields are spelled once here and stamped into each.
macro_rules! signing_entry {
    ($(#[$meta:meta])* $name:ident { $($extra:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            selector: Option<Spanned<String>>,
            headers: Option<Vec<String>>,
            algo: Option<Algo>,
            filename: Option<Template>,
            key: Option<KeySource>,
            #[serde(default, with = "super::humantime_serde_compat::option")]
            expiration: Option<Duration>,
            header_canonicalization: Option<Canon>,
            body_canonicalization: Option<Canon>,
            over_sign: Option<bool>,
            on_error: Option<OnError>,
            policy: Option<SignaturePolicy>,
            $($extra: $ty,)*
        }

        impl $name {
            fn params(&self) -> Params {
                Params {
                    selector: self.selector.clone(),
                    headers: self.headers.clone(),
                    algo: self.algo,
                    key: match (&self.key, &self.filename) {
                        (Some(k), _) => Some(KeyChoice::Source(k.clone())),
                        (None, Some(f)) => Some(KeyChoice::Filename(f.clone())),
                        (None, None) => None,
                    },
                    expiration: self.expiration,
                    header_canonicalization: self.header_canonicalization,
                    body_canonicalization: self.body_canonicalization,
                    over_sign: self.over_sign,
                    on_error: self.on_error,
                }
            }
            fn sets_both_key_and_filename(&self) -> bool {
                self.key.is_some() && self.filename.is_some()
            }
        }
    };
}

signing_entry!(
    /// `[base]`: defaults for every entry, and KumoMTA's Vault mode.
    RawBase {
        additional_signatures: Option<Vec<Spanned<String>>>,
        vault_mount: Option<String>,
        vault_path_prefix: Option<String>,
    }
);
signing_entry!(
    /// `[domain."example.com"]`, `[domain."*.example.com"]`, `[domain."*"]`.
    RawDomain {
        additional_signatures: Option<Vec<Spanned<String>>>,
    }
);
signing_entry!(
    /// `[signature."name"]`: an extra signature with a fixed `d=` (e.g. an ESP's domain).
    RawSignature {
        domain: Option<Spanned<String>>,
    }
);

pub(super) struct RawSigningTable {
    pub base: Option<Spanned<RawBase>>,
    pub domain: BTreeMap<String, Spanned<RawDomain>>,
    pub signature: BTreeMap<String, Spanned<RawSignature>>,
}

/// Where the key of an entry comes from, as the entry wrote it.
#[derive(Clone, Debug)]
enum KeyChoice {
    Source(KeySource),
    Filename(Template),
}

#[derive(Clone, Debug, Default)]
struct Params {
    selector: Option<Spanned<String>>,
    headers: Option<Vec<String>>,
    algo: Option<Algo>,
    key: Option<KeyChoice>,
    expiration: Option<Duration>,
    header_canonicalization: Option<Canon>,
    body_canonicalization: Option<Canon>,
    over_sign: Option<bool>,
    on_error: Option<OnError>,
}

impl Params {
    /// `self` (the more specific level) over `lower`.
    fn over(self, lower: &Params) -> Params {
        Params {
            selector: self.selector.or_else(|| lower.selector.clone()),
            headers: self.headers.or_else(|| lower.headers.clone()),
            algo: self.algo.or(lower.algo),
            key: self.key.or_else(|| lower.key.clone()),
            expiration: self.expiration.or(lower.expiration),
            header_canonicalization: self
                .header_canonicalization
                .or(lower.header_canonicalization),
            body_canonicalization: self.body_canonicalization.or(lower.body_canonicalization),
            over_sign: self.over_sign.or(lower.over_sign),
            on_error: self.on_error.or(lower.on_error),
        }
    }
}

/// Which entry produced a signature, for logs and `check`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignatureLabel {
    Domain(String),
    Signature(String),
}

impl SignatureLabel {
    pub fn is_signature(&self) -> bool {
        matches!(self, SignatureLabel::Signature(_))
    }
}

impl std::fmt::Display for SignatureLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureLabel::Domain(p) => write!(f, "[domain.\"{p}\"]"),
            SignatureLabel::Signature(n) => write!(f, "[signature.\"{n}\"]"),
        }
    }
}

/// The `d=` of a signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningDomain {
    /// The author (`From:`) domain; for a wildcard match, the actual subdomain.
    Author,
    Fixed(String),
}

/// One fully merged signature recipe. Turning it into a signature needs only the author domain.
#[derive(Clone, Debug)]
pub struct SignerTemplate {
    pub label: SignatureLabel,
    pub domain: SigningDomain,
    pub selector: String,
    /// The `h=` list, oversigned entries already doubled.
    pub headers: Vec<String>,
    /// The algorithm the operator expects; the key must agree. `None`: whatever the key is.
    pub algo: Option<Algo>,
    pub key: KeySource,
    pub expiration: Option<Duration>,
    pub header_canonicalization: Canon,
    pub body_canonicalization: Canon,
    pub on_error: OnError,
    pub policy: SignaturePolicy,
    /// For `[domain]` entries: the extra signatures that entry lists.
    pub additional: Vec<Arc<SignerTemplate>>,
}

/// How an author domain matched the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainMatch {
    Exact,
    Wildcard,
    CatchAll,
}

/// The signing table, indexed for lookup by author domain.
#[derive(Debug, Default)]
pub struct SigningTable {
    exact: HashMap<String, Arc<SignerTemplate>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<SignerTemplate>>,
    catch_all: Option<Arc<SignerTemplate>>,
    /// `[base] additional_signatures`: applied to every message that may be signed.
    additional: Vec<Arc<SignerTemplate>>,
    /// Every entry by its table name, for `check`.
    domains: BTreeMap<String, Arc<SignerTemplate>>,
    signatures: BTreeMap<String, Arc<SignerTemplate>>,
    /// Non-fatal remarks found while loading (e.g. a signature nothing refers to).
    pub warnings: Vec<String>,
}

impl SigningTable {
    /// The entry for `domain` (lowercase, no trailing dot): exact beats the most specific
    /// wildcard beats `*`. `*.example.com` never matches `example.com` itself.
    pub fn lookup(&self, domain: &str) -> Option<(&Arc<SignerTemplate>, DomainMatch)> {
        if let Some(t) = self.exact.get(domain) {
            return Some((t, DomainMatch::Exact));
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(t) = self.wildcard.get(parent) {
                return Some((t, DomainMatch::Wildcard));
            }
            rest = parent;
        }
        self.catch_all.as_ref().map(|t| (t, DomainMatch::CatchAll))
    }

    pub fn additional(&self) -> &[Arc<SignerTemplate>] {
        &self.additional
    }

    /// `(table name, entry)` of every `[domain]` entry.
    pub fn domain_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.domains.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `(table name, entry)` of every `[signature]` entry.
    pub fn signature_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.signatures.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.signatures.is_empty()
    }

    /// The entry a label names.
    pub fn entry(&self, label: &SignatureLabel) -> Option<&Arc<SignerTemplate>> {
        match label {
            SignatureLabel::Domain(name) => self.domains.get(name),
            SignatureLabel::Signature(name) => self.signatures.get(name),
        }
    }
}

type At<'a> = &'a dyn Fn(Option<Range<usize>>, String) -> ConfigError;

pub(super) fn build(
    raw: RawSigningTable,
    keys: &KeySettings,
    callbacks: &BTreeSet<String>,
    at: At<'_>,
) -> Result<SigningTable, ConfigError> {
    let (base, base_span) = match raw.base {
        Some(b) => {
            let span = b.span();
            (b.into_inner(), Some(span))
        }
        None => (RawBase::default(), None),
    };
    if base.sets_both_key_and_filename() {
        return Err(at(
            base_span,
            "[base] sets both key and filename; choose one".into(),
        ));
    }
    if matches!(base.policy, Some(SignaturePolicy::OnlyIfMissingDomainBlock)) {
        // Kumo documents "Always" as the only valid [base] policy.
        return Err(at(base_span, "[base] policy can only be \"Always\"".into()));
    }
    if base.vault_path_prefix.is_some() && base.vault_mount.is_none() {
        return Err(at(
            base_span,
            "[base] vault_path_prefix needs vault_mount".into(),
        ));
    }
    let base_params = base.params();
    let ctx = Context {
        keys,
        callbacks,
        at,
        vault_mount: base.vault_mount.clone(),
        vault_prefix: base
            .vault_path_prefix
            .clone()
            .unwrap_or_else(|| "dkim".into()),
    };

    let mut table = SigningTable::default();
    let mut referenced = std::collections::HashSet::new();

    // Signatures first: domain entries refer to them.
    for (name, spanned) in &raw.signature {
        let span = spanned.span();
        let sig = spanned.get_ref();
        if sig.sets_both_key_and_filename() {
            return Err(at(
                Some(span),
                format!("[signature.\"{name}\"] sets both key and filename; choose one"),
            ));
        }
        let domain = match &sig.domain {
            Some(d) if d.get_ref() == "{domain}" => SigningDomain::Author,
            Some(d) => SigningDomain::Fixed(normalize_domain(d.get_ref()).map_err(|e| {
                at(
                    Some(d.span()),
                    format!("[signature.\"{name}\"] domain: {e}"),
                )
            })?),
            None => {
                return Err(at(
                    Some(span),
                    format!("[signature.\"{name}\"] needs a domain (the d= to sign as)"),
                ));
            }
        };
        let params = sig.params().over(&base_params);
        let policy = sig.policy.or(base.policy).unwrap_or_default();
        let template = ctx.template(
            SignatureLabel::Signature(name.clone()),
            domain,
            params,
            policy,
            Vec::new(),
            span,
        )?;
        table.signatures.insert(name.clone(), Arc::new(template));
    }

    let lookup_signatures = |list: &Option<Vec<Spanned<String>>>,
                             owner: &str,
                             referenced: &mut std::collections::HashSet<String>|
     -> Result<Vec<Arc<SignerTemplate>>, ConfigError> {
        let mut out = Vec::new();
        for name in list.iter().flatten() {
            let sig = table.signatures.get(name.get_ref()).ok_or_else(|| {
                at(
                    Some(name.span()),
                    format!("{owner} additional_signatures names \"{}\", but there is no [signature.\"{}\"]", name.get_ref(), name.get_ref()),
                )
            })?;
            referenced.insert(name.get_ref().clone());
            out.push(sig.clone());
        }
        Ok(out)
    };

    table.additional = lookup_signatures(&base.additional_signatures, "[base]", &mut referenced)?;

    for (pattern, spanned) in &raw.domain {
        let span = spanned.span();
        let entry = spanned.get_ref();
        let owner = format!("[domain.\"{pattern}\"]");
        if entry.sets_both_key_and_filename() {
            return Err(at(
                Some(span),
                format!("{owner} sets both key and filename; choose one"),
            ));
        }
        if matches!(
            entry.policy,
            Some(SignaturePolicy::OnlyIfMissingDomainBlock)
        ) {
            return Err(at(
                Some(span),
                format!(
                    "{owner}: policy OnlyIfMissingDomainBlock only makes sense in a [signature] block"
                ),
            ));
        }
        let key = DomainPattern::parse(pattern)
            .map_err(|e| at(Some(span.clone()), format!("{owner}: {e}")))?;
        let additional = lookup_signatures(&entry.additional_signatures, &owner, &mut referenced)?;
        let template = Arc::new(ctx.template(
            SignatureLabel::Domain(pattern.clone()),
            SigningDomain::Author,
            entry.params().over(&base_params),
            SignaturePolicy::Always,
            additional,
            span.clone(),
        )?);
        let duplicate = match key {
            DomainPattern::Exact(d) => table.exact.insert(d, template.clone()).is_some(),
            DomainPattern::Wildcard(d) => table.wildcard.insert(d, template.clone()).is_some(),
            DomainPattern::CatchAll => table.catch_all.replace(template.clone()).is_some(),
        };
        if duplicate {
            return Err(at(
                Some(span),
                format!("{owner} duplicates another entry (domain names are case-insensitive)"),
            ));
        }
        table.domains.insert(pattern.clone(), template);
    }

    for name in table.signatures.keys() {
        if !referenced.contains(name) {
            table.warnings.push(format!(
                "[signature.\"{name}\"] is not listed in any additional_signatures and will never be used"
            ));
        }
    }
    Ok(table)
}

struct Context<'a> {
    keys: &'a KeySettings,
    callbacks: &'a BTreeSet<String>,
    at: At<'a>,
    vault_mount: Option<String>,
    vault_prefix: String,
}

impl Context<'_> {
    fn template(
        &self,
        label: SignatureLabel,
        domain: SigningDomain,
        params: Params,
        policy: SignaturePolicy,
        additional: Vec<Arc<SignerTemplate>>,
        span: Range<usize>,
    ) -> Result<SignerTemplate, ConfigError> {
        let at = self.at;
        let selector = params.selector.ok_or_else(|| {
            at(
                Some(span.clone()),
                format!("{label} has no selector, and [base] sets none"),
            )
        })?;
        validate_selector(selector.get_ref())
            .map_err(|e| at(Some(selector.span()), format!("{label} selector: {e}")))?;
        let headers = signed_headers(params.headers.as_deref(), params.over_sign)
            .map_err(|e| at(Some(span.clone()), format!("{label} headers: {e}")))?;
        if params.expiration == Some(Duration::ZERO) {
            return Err(at(
                Some(span),
                format!("{label} expiration must be longer than 0 s"),
            ));
        }
        let key = self.key_source(params.key);
        if let Some(name) = key.event_name()
            && !self.callbacks.contains(name)
        {
            return Err(at(
                Some(span),
                format!("{label} key event_name \"{name}\" has no [callbacks.\"{name}\"] section"),
            ));
        }
        Ok(SignerTemplate {
            label,
            domain,
            selector: selector.into_inner(),
            headers,
            algo: params.algo,
            key,
            expiration: params.expiration,
            header_canonicalization: params.header_canonicalization.unwrap_or(Canon::Relaxed),
            body_canonicalization: params.body_canonicalization.unwrap_or(Canon::Relaxed),
            on_error: params.on_error.unwrap_or_default(),
            policy,
            additional,
        })
    }

    /// An explicit `key` wins; else KumoMTA's `[base] vault_mount` mode (where `filename`
    /// overrides the Vault path); else a file, `filename` or the default path.
    fn key_source(&self, choice: Option<KeyChoice>) -> KeySource {
        match (choice, &self.vault_mount) {
            (Some(KeyChoice::Source(source)), _) => source,
            (choice, Some(mount)) => {
                let path = match choice {
                    Some(KeyChoice::Filename(f)) => f,
                    _ => {
                        let prefix = self
                            .vault_prefix
                            .trim_end_matches('/')
                            .replace('{', "{{")
                            .replace('}', "}}");
                        Template::parse(&format!("{prefix}/{{domain}}/{{selector}}"))
                            .expect("escaped prefix with known placeholders parses")
                    }
                };
                KeySource::Vault(VaultSource {
                    mount: Template::literal(mount.clone()),
                    path,
                    field: "key".into(),
                    address: None,
                    token: None,
                    kv_version: None,
                })
            }
            (Some(KeyChoice::Filename(f)), None) => KeySource::File(f),
            (None, None) => KeySource::File(Template::default_key_path(&self.keys.directory)),
        }
    }
}

enum DomainPattern {
    Exact(String),
    Wildcard(String),
    CatchAll,
}

impl DomainPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(DomainPattern::CatchAll);
        }
        if let Some(suffix) = pattern.strip_prefix("*.") {
            return normalize_domain(suffix).map(DomainPattern::Wildcard);
        }
        normalize_domain(pattern).map(DomainPattern::Exact)
    }
}

/// Lowercase, without a trailing dot, and shaped like a domain name.
pub fn normalize_domain(name: &str) -> Result<String, String> {
    let lower = name.trim().trim_end_matches('.').to_lowercase();
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    };
    if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(valid_label) {
        return Err(format!(
            "\"{name}\" is not a domain name (wildcards are written \"*.example.com\" or \"*\")"
        ));
    }
    Ok(lower)
}

fn validate_selector(selector: &str) -> Result<(), String> {
    let ok = !selector.is_empty()
        && selector.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{selector}\" is not a valid selector (letters, digits, '-', '_', dots between labels)"
        ))
    }
}

/// The `h=` list: the configured (or default) headers, deduplicated case-insensitively, with
/// oversigning applied. `over_sign` unset oversigns only `From`, so no second author can be
/// added after signing; `true` oversigns every listed header; `false` oversigns nothing.
fn signed_headers(
    configured: Option<&[String]>,
    over_sign: Option<bool>,
) -> Result<Vec<String>, String> {
    let mut unique: Vec<String> = Vec::new();
    let names: Vec<&str> = match configured {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => DEFAULT_HEADERS.to_vec(),
    };
    for name in names {
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("\"{name}\" is not a header field name"));
        }
        if name.eq_ignore_ascii_case("DKIM-Signature") {
            return Err("DKIM-Signature cannot be in the signed header list".into());
        }
        if !unique.iter().any(|u| u.eq_ignore_ascii_case(name)) {
            unique.push(name.to_string());
        }
    }
    if !unique.iter().any(|h| h.eq_ignore_ascii_case("From")) {
        return Err("the list must include From (RFC 6376 §5.4)".into());
    }
    let mut out = Vec::with_capacity(unique.len() * 2);
    for name in unique {
        let twice = match over_sign {
            Some(all) => all,
            None => name.eq_ignore_ascii_case("From"),
        };
        if twice {
            out.push(name.clone());
        }
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
