//! KumoMTA's `dkim_sign` signing table: `[base]`, `[domain."…"]`, `[signature."…"]`.
//!
//! Every parameter is tri-state (unset, or set to a value at some level) and the most specific
//! level that sets it wins: `[domain]`/`[signature]` over `[base]` over the built-in default. This
//! differs from KumoMTA's helper on purpose, where a domain's `over_sign = false` cannot override
//! `[base]`'s `true`.

use super::keysource::{KeySource, VaultSource};
use super::values::{Algo, Canon, OnError, SignaturePolicy};
use super::{ConfigError, KeySettings, Pkcs11Settings, Template};
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
            #[serde(default, deserialize_with = "super::keysource::deserialize_key_path")]
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
    // Boxed strings: 24 bytes with the tag instead of 32, which keeps a `SignerTemplate` in a
    // 64-byte allocation (100,000 domains hold 100,000 of them).
    Domain(Box<str>),
    Signature(Box<str>),
}

impl SignatureLabel {
    pub fn is_signature(&self) -> bool {
        matches!(self, SignatureLabel::Signature(_))
    }

    /// The name in the table: the domain pattern or the signature's name.
    pub fn name(&self) -> &str {
        match self {
            SignatureLabel::Domain(name) | SignatureLabel::Signature(name) => name,
        }
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SigningDomain {
    /// The author (`From:`) domain; for a wildcard match, the actual subdomain.
    Author,
    Fixed(String),
}

/// One entry of the table: its name, and the merged signature [`Recipe`] it signs with, which
/// entries that end up with the same parameters share (100,000 domains that only inherit
/// `[base]` hold one recipe). The recipe's fields read as the template's own
/// (`template.selector`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignerTemplate {
    pub label: SignatureLabel,
    pub recipe: Arc<Recipe>,
    /// Set when every message this template signs resolves the same key source.
    pub key_handle: Option<KeyHandle>,
}

/// The number of a template whose key source resolves the same for every message it signs: an
/// exact or per-mailbox `[domain]` entry (its `d=` is always that domain). The runtime keeps a
/// direct handle on that key's cache slot under this number, so that such a message reaches its
/// key without the cache's index (over 100,000 keys used at random, the index lookup and the
/// path it hashes were a tenth of the extra cost per message). Wildcard and catch-all entries
/// (the domain varies), `[signature]`s (shared by entries) and rotated templates (another
/// selector) have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHandle(pub u32);

impl std::ops::Deref for SignerTemplate {
    type Target = Recipe;
    fn deref(&self) -> &Recipe {
        &self.recipe
    }
}

/// One fully merged signature recipe. Turning it into a signature needs only the author domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Recipe {
    pub domain: SigningDomain,
    pub selector: String,
    /// The `h=` list, oversigned entries already doubled; entries with the same list share it.
    pub headers: Arc<[String]>,
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

/// How an author matched the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainMatch {
    /// A per-mailbox entry, `[domain."alice@example.com"]`.
    Mailbox,
    Exact,
    Wildcard,
    CatchAll,
}

/// One name the lookup of an author tries, in order; the first that has an entry wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate<'a> {
    /// The author address, for a per-mailbox entry.
    Mailbox(&'a str),
    /// The author domain itself.
    Exact(&'a str),
    /// `*.parent`, for each parent domain from the closest up.
    Wildcard(&'a str),
    /// `"*"`.
    CatchAll,
}

impl Candidate<'_> {
    pub fn kind(self) -> DomainMatch {
        match self {
            Candidate::Mailbox(_) => DomainMatch::Mailbox,
            Candidate::Exact(_) => DomainMatch::Exact,
            Candidate::Wildcard(_) => DomainMatch::Wildcard,
            Candidate::CatchAll => DomainMatch::CatchAll,
        }
    }
}

impl std::fmt::Display for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Mailbox(address) => write!(f, "[domain.\"{address}\"]"),
            Candidate::Exact(domain) => write!(f, "[domain.\"{domain}\"]"),
            Candidate::Wildcard(parent) => write!(f, "[domain.\"*.{parent}\"]"),
            Candidate::CatchAll => f.write_str("[domain.\"*\"]"),
        }
    }
}

/// The signing table, indexed for lookup by author domain.
#[derive(Debug, Default)]
pub struct SigningTable {
    /// Per-mailbox entries by lowercase address (domain canonical).
    mailbox: HashMap<String, Arc<SignerTemplate>>,
    exact: HashMap<String, Arc<SignerTemplate>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<SignerTemplate>>,
    catch_all: Option<Arc<SignerTemplate>>,
    /// `[base] additional_signatures`: applied to every message that may be signed.
    additional: Vec<Arc<SignerTemplate>>,
    /// Every `[domain]` entry in table-name order, for `check` (the name is in its label).
    domains: Vec<Arc<SignerTemplate>>,
    signatures: BTreeMap<String, Arc<SignerTemplate>>,
    /// How many [`KeyHandle`]s the entries hold (numbered from 0).
    key_handles: u32,
    /// Non-fatal remarks found while loading (e.g. a signature nothing refers to).
    pub warnings: Vec<String>,
}

impl SigningTable {
    /// The entry for an author, given as its address (`local@domain`) or its domain, both
    /// canonical: a per-mailbox entry beats the exact domain, which beats the most specific
    /// wildcard, which beats `*`. `*.example.com` never matches `example.com` itself.
    pub fn lookup<'a>(&'a self, author: &'a str) -> Option<(&'a Arc<SignerTemplate>, DomainMatch)> {
        let mut found = None;
        self.walk(author, |candidate, entry| {
            found = entry.map(|e| (e, candidate.kind()));
            found.is_some()
        });
        found
    }

    /// Visits what [`SigningTable::lookup`] tries for `author`, in order, each with its entry if
    /// there is one, until `visit` returns true. The one definition of the lookup order:
    /// `lookup` and `explain` both walk it.
    pub fn walk<'a>(
        &'a self,
        author: &'a str,
        mut visit: impl FnMut(Candidate<'a>, Option<&'a Arc<SignerTemplate>>) -> bool,
    ) {
        let domain = match author.rsplit_once('@') {
            Some((_, domain)) => {
                if visit(Candidate::Mailbox(author), self.mailbox.get(author)) {
                    return;
                }
                domain
            }
            None => author,
        };
        if visit(Candidate::Exact(domain), self.exact.get(domain)) {
            return;
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if visit(Candidate::Wildcard(parent), self.wildcard.get(parent)) {
                return;
            }
            rest = parent;
        }
        visit(Candidate::CatchAll, self.catch_all.as_ref());
    }

    /// Whether `[domain."*.{domain}"]` exists: it matches subdomains only, which surprises.
    pub fn has_wildcard_below(&self, domain: &str) -> bool {
        self.wildcard.contains_key(domain)
    }

    pub fn additional(&self) -> &[Arc<SignerTemplate>] {
        &self.additional
    }

    /// `(domain, entry)` of every exact `[domain]` entry, the domain in its canonical form
    /// (lowercase, no trailing dot), in no particular order.
    pub fn exact_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.exact.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `(pattern, entry)` of every wildcard entry (`*.example.net`) and of the catch-all `*`:
    /// the entries whose signing domain is only known per message.
    pub fn pattern_entries(&self) -> impl Iterator<Item = (String, &Arc<SignerTemplate>)> {
        let wildcards = self.wildcard.iter().map(|(k, v)| (format!("*.{k}"), v));
        wildcards.chain(self.catch_all.iter().map(|v| ("*".to_string(), v)))
    }

    /// `(address, entry)` of every per-mailbox entry (`[domain."alice@example.com"]`), the
    /// address lowercase with its domain canonical, in no particular order.
    pub fn mailbox_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.mailbox.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether `"*"` is configured, so that every author domain matches some entry.
    pub fn has_catch_all(&self) -> bool {
        self.catch_all.is_some()
    }

    /// `(table name, entry)` of every `[domain]` entry.
    pub fn domain_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.domains.iter().map(|t| (t.label.name(), t))
    }

    /// `(table name, entry)` of every `[signature]` entry.
    pub fn signature_entries(&self) -> impl Iterator<Item = (&str, &Arc<SignerTemplate>)> {
        self.signatures.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.signatures.is_empty()
    }

    /// How many entries hold a [`KeyHandle`]: its numbers are below this.
    pub fn key_handle_count(&self) -> usize {
        self.key_handles as usize
    }

    /// `[domain]` plus `[signature]` entries.
    pub fn entry_count(&self) -> usize {
        self.domains.len() + self.signatures.len()
    }

    /// The entry a label names (found through the lookup maps, not by a walk of the table).
    pub fn entry(&self, label: &SignatureLabel) -> Option<&Arc<SignerTemplate>> {
        match label {
            SignatureLabel::Domain(name) => match DomainPattern::parse(name).ok()? {
                DomainPattern::Mailbox { address, .. } => self.mailbox.get(&address),
                DomainPattern::Exact(d) => self.exact.get(&d),
                DomainPattern::Wildcard(d) => self.wildcard.get(&d),
                DomainPattern::CatchAll => self.catch_all.as_ref(),
            },
            SignatureLabel::Signature(name) => self.signatures.get(&**name),
        }
    }
}

type At<'a> = &'a dyn Fn(Option<Range<usize>>, String) -> ConfigError;

pub(super) fn build(
    raw: RawSigningTable,
    keys: &KeySettings,
    pkcs11: &Pkcs11Settings,
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
    let vault_prefix = base
        .vault_path_prefix
        .clone()
        .unwrap_or_else(|| "dkim".into());
    let ctx = Context {
        pkcs11,
        callbacks,
        at,
        default_file: Template::default_key_path(&keys.directory),
        vault_mode: base.vault_mount.as_ref().map(|mount| {
            (
                Template::literal(mount.clone()),
                vault_default_path(&vault_prefix),
            )
        }),
        header_lists: std::cell::RefCell::new(HashMap::new()),
        recipes: std::cell::RefCell::new(std::collections::HashSet::new()),
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
            SignatureLabel::Signature(name.as_str().into()),
            domain,
            params,
            policy,
            Vec::new(),
            span,
        )?;
        table.signatures.insert(name.clone(), Arc::new(template));
    }

    // A copy (of `Arc`s), so the table can be filled while names are looked up in it.
    let known_signatures = table.signatures.clone();
    let lookup_signatures = |list: &Option<Vec<Spanned<String>>>,
                             owner: &str,
                             referenced: &mut std::collections::HashSet<String>|
     -> Result<Vec<Arc<SignerTemplate>>, ConfigError> {
        let mut out = Vec::new();
        for name in list.iter().flatten() {
            let sig = known_signatures.get(name.get_ref()).ok_or_else(|| {
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

    // Domain entries first: a per-mailbox entry inherits from the entry its domain matches.
    let mut merged: HashMap<&str, (Params, Vec<Arc<SignerTemplate>>)> = HashMap::new();
    let (mailboxes, domains): (Vec<_>, Vec<_>) = raw
        .domain
        .iter()
        .partition(|(pattern, _)| pattern.contains('@'));
    let has_mailboxes = !mailboxes.is_empty();
    for (pattern, spanned) in domains.into_iter().chain(mailboxes) {
        let span = spanned.span();
        let entry = spanned.get_ref();
        let owner = format!("[domain.\"{pattern}\"]");
        check_domain_entry(entry, &owner, span.clone(), at)?;
        let key = DomainPattern::parse(pattern)
            .map_err(|e| at(Some(span.clone()), format!("{owner}: {e}")))?;
        let own_additional = entry
            .additional_signatures
            .as_ref()
            .map(|_| lookup_signatures(&entry.additional_signatures, &owner, &mut referenced))
            .transpose()?;
        let (inherited, inherited_additional) = match &key {
            DomainPattern::Mailbox { domain, .. } => table
                .lookup(domain)
                .and_then(|(parent, _)| match &parent.label {
                    SignatureLabel::Domain(p) => merged.get(&**p).cloned(),
                    SignatureLabel::Signature(_) => None,
                })
                .unwrap_or_else(|| (base_params.clone(), Vec::new())),
            _ => (base_params.clone(), Vec::new()),
        };
        let params = entry.params().over(&inherited);
        let additional = own_additional.unwrap_or(inherited_additional);
        let mut template = ctx.template(
            SignatureLabel::Domain(pattern.as_str().into()),
            SigningDomain::Author,
            params.clone(),
            SignaturePolicy::Always,
            additional.clone(),
            span.clone(),
        )?;
        if matches!(key, DomainPattern::Mailbox { .. } | DomainPattern::Exact(_)) {
            template.key_handle = Some(KeyHandle(table.key_handles));
            table.key_handles += 1;
        }
        let template = Arc::new(template);
        let duplicate = match key {
            DomainPattern::Mailbox { address, .. } => {
                table.mailbox.insert(address, template.clone()).is_some()
            }
            DomainPattern::Exact(d) => table.exact.insert(d, template.clone()).is_some(),
            DomainPattern::Wildcard(d) => table.wildcard.insert(d, template.clone()).is_some(),
            DomainPattern::CatchAll => table.catch_all.replace(template.clone()).is_some(),
        };
        if duplicate {
            return Err(at(
                Some(span),
                format!(
                    "{owner} duplicates another entry (names are case-insensitive, and a U-label and its A-label are one name)"
                ),
            ));
        }
        // Kept only while per-mailbox entries need their domain's merged parameters.
        if has_mailboxes {
            merged.insert(pattern.as_str(), (params, additional));
        }
        // Domain entries in table-name order (`raw.domain` is a BTreeMap), then mailboxes.
        table.domains.push(template);
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

/// What a `[domain]` entry may not say.
fn check_domain_entry(
    entry: &RawDomain,
    owner: &str,
    span: Range<usize>,
    at: At<'_>,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// What every entry is built with. The parts entries have in common are made once here and
/// shared (an `Arc` each): a table of 100,000 domains that inherit `[base]` holds one header
/// list and one key path template, not 100,000 copies.
struct Context<'a> {
    pkcs11: &'a Pkcs11Settings,
    callbacks: &'a BTreeSet<String>,
    at: At<'a>,
    /// `{directory}/{domain}/{selector}.key`.
    default_file: Template,
    /// KumoMTA's `[base] vault_mount` mode: the mount and the default path template.
    vault_mode: Option<(Template, Template)>,
    /// Finished `h=` lists by what they were made from.
    header_lists: std::cell::RefCell<HashMap<HeaderListSpec, Arc<[String]>>>,
    /// Every distinct recipe made so far.
    recipes: std::cell::RefCell<std::collections::HashSet<Arc<Recipe>>>,
}

/// What an `h=` list is made from: the configured names (or none) and `over_sign`.
type HeaderListSpec = (Option<Vec<String>>, Option<bool>);

/// `<prefix>/{domain}/{selector}`, with braces in the prefix taken literally.
fn vault_default_path(prefix: &str) -> Template {
    let prefix = prefix
        .trim_end_matches('/')
        .replace('{', "{{")
        .replace('}', "}}");
    Template::parse(&format!("{prefix}/{{domain}}/{{selector}}"))
        .expect("escaped prefix with known placeholders parses")
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
        let headers = self
            .header_list(params.headers, params.over_sign)
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
        let key = key
            .with_pkcs11_defaults(self.pkcs11)
            .map_err(|missing| at(Some(span.clone()), format!("{label} key: {missing}")))?;
        let recipe = self.shared_recipe(Recipe {
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
        });
        Ok(SignerTemplate {
            label,
            recipe,
            key_handle: None,
        })
    }

    /// The one copy of `recipe` every entry with the same parameters uses.
    fn shared_recipe(&self, recipe: Recipe) -> Arc<Recipe> {
        let mut recipes = self.recipes.borrow_mut();
        if let Some(shared) = recipes.get(&recipe) {
            return shared.clone();
        }
        let shared = Arc::new(recipe);
        recipes.insert(shared.clone());
        shared
    }

    /// The `h=` list made from `configured` and `over_sign`, shared with every entry that has
    /// the same.
    fn header_list(
        &self,
        configured: Option<Vec<String>>,
        over_sign: Option<bool>,
    ) -> Result<Arc<[String]>, String> {
        let key = (configured, over_sign);
        if let Some(list) = self.header_lists.borrow().get(&key) {
            return Ok(list.clone());
        }
        let list: Arc<[String]> = signed_headers(key.0.as_deref(), over_sign)?.into();
        self.header_lists.borrow_mut().insert(key, list.clone());
        Ok(list)
    }

    /// An explicit `key` wins; else KumoMTA's `[base] vault_mount` mode (where `filename`
    /// overrides the Vault path); else a file, `filename` or the default path.
    fn key_source(&self, choice: Option<KeyChoice>) -> KeySource {
        match (choice, &self.vault_mode) {
            (Some(KeyChoice::Source(source)), _) => source,
            (choice, Some((mount, default_path))) => {
                let path = match choice {
                    Some(KeyChoice::Filename(f)) => f,
                    _ => default_path.clone(),
                };
                KeySource::Vault(VaultSource {
                    mount: mount.clone(),
                    path,
                    field: "key".into(),
                    address: None,
                    token: None,
                    kv_version: None,
                })
            }
            (Some(KeyChoice::Filename(f)), None) => KeySource::File(f),
            (None, None) => KeySource::File(self.default_file.clone()),
        }
    }
}

enum DomainPattern {
    /// `alice@example.com`: one author address (lowercase, domain canonical).
    Mailbox {
        address: String,
        domain: String,
    },
    Exact(String),
    Wildcard(String),
    CatchAll,
}

impl DomainPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(DomainPattern::CatchAll);
        }
        if let Some((local, domain)) = pattern.rsplit_once('@') {
            let valid_local = !local.is_empty()
                && local
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"*@<>\"".contains(c));
            if !valid_local {
                return Err(format!(
                    "\"{pattern}\" is not a mailbox (a per-mailbox entry is written \"alice@example.com\")"
                ));
            }
            let domain = normalize_domain(domain)?;
            return Ok(DomainPattern::Mailbox {
                address: format!("{}@{domain}", local.to_lowercase()),
                domain,
            });
        }
        if let Some(suffix) = pattern.strip_prefix("*.") {
            return normalize_domain(suffix).map(DomainPattern::Wildcard);
        }
        normalize_domain(pattern).map(DomainPattern::Exact)
    }
}

/// The canonical form of a domain name (lowercase A-labels, no trailing dot; see
/// [`crate::domain`]), so that `bücher.example` and `xn--bcher-kva.example` are one entry.
pub fn normalize_domain(name: &str) -> Result<String, String> {
    crate::domain::canonical(name)
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

#[cfg(all(test, target_pointer_width = "64"))]
mod size_tests {
    /// Every `[domain]` entry holds one template: 40 bytes are a 64-byte allocation, 48 would
    /// be an 80-byte one (1.6 MB more at 100,000 entries, measured).
    #[test]
    fn a_signer_template_stays_within_40_bytes() {
        let size = std::mem::size_of::<super::SignerTemplate>();
        assert!(size <= 40, "a signer template grew to {size} bytes");
    }
}
