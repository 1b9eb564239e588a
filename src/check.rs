//! Does every configured signature have a usable key right now? Used by `check` and at startup.

use crate::config::{SignerTemplate, SigningDomain};
use crate::keys::{Custody, SigningKey};
use crate::runtime::Runtime;
use std::sync::Arc;

/// The state of one configured signature's key.
pub struct KeyStatus {
    /// `[domain."…"]` or `[signature."…"]`.
    pub entry: String,
    /// The `d=` it signs as (a pattern for wildcard entries).
    pub domain: String,
    pub selector: String,
    /// Where the key comes from.
    pub source: String,
    /// `rsa-2048`, `ed25519`, or `-` when unknown.
    pub algorithm: String,
    pub status: Result<&'static str, String>,
    /// What the operator should know about a usable key: a weak RSA size, or that a remote
    /// key has no stale fallback.
    pub notes: Vec<KeyNote>,
}

/// Something to say about a key that works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyNote {
    /// A weakness worth a warning (RSA under 2048 bits).
    Weak(String),
    /// Where a remote key is, and what its outage means.
    Remote(String),
}

impl std::fmt::Display for KeyNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyNote::Weak(text) | KeyNote::Remote(text) => f.write_str(text),
        }
    }
}

/// The notes for a key that resolved.
fn notes_for(key: &SigningKey) -> Vec<KeyNote> {
    let mut notes = Vec::new();
    if let Some(weakness) = key.weakness() {
        notes.push(KeyNote::Weak(weakness));
    }
    let holder = match key.custody() {
        Custody::Memory => None,
        Custody::Transit => Some("Vault/OpenBao Transit"),
        Custody::Pkcs11 => Some("the PKCS#11 token"),
    };
    if let Some(holder) = holder {
        notes.push(KeyNote::Remote(format!(
            "the private key stays in {holder}: every signature asks it, and there is no stale-key fallback; while it is unreachable, messages get on_error"
        )));
    }
    notes
}

/// Resolves every entry's key through the runtime's key store (which also warms its cache).
pub async fn key_statuses(runtime: &Runtime) -> Vec<KeyStatus> {
    let table = &runtime.config.signing;
    let entries: Vec<(&str, &Arc<SignerTemplate>)> = table
        .domain_entries()
        .chain(table.signature_entries())
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    for (name, template) in entries {
        let (domain, per_message) = match &template.domain {
            SigningDomain::Fixed(d) => (d.clone(), false),
            SigningDomain::Author if name.starts_with('*') => (name.to_string(), true),
            SigningDomain::Author if template.label.is_signature() => {
                ("{domain}".to_string(), true)
            }
            SigningDomain::Author => (name.to_string(), false),
        };
        let entry = template.label.to_string();
        let selector = template.selector.clone();
        let shown_domain = if per_message {
            "{domain}"
        } else {
            domain.as_str()
        };
        let source = template.key.resolve(shown_domain, &selector);
        if per_message && template.key.depends_on_domain() {
            out.push(KeyStatus {
                entry,
                domain,
                selector,
                source: source.to_string(),
                algorithm: template.algo.map_or("-".into(), |a| a.to_string()),
                status: Ok("resolved per author domain"),
                notes: Vec::new(),
            });
            continue;
        }
        let (algorithm, status, notes) = match runtime.keys.get(&source).await {
            Ok(key) => match key.check_algo(template.algo) {
                Ok(()) => (key.describe(), Ok("ok"), notes_for(&key)),
                Err(e) => (key.describe(), Err(e.to_string()), Vec::new()),
            },
            Err(e) => ("-".into(), Err(e.to_string()), Vec::new()),
        };
        out.push(KeyStatus {
            entry,
            domain,
            selector,
            source: source.to_string(),
            algorithm,
            status,
            notes,
        });
    }
    out
}
