//! Does every configured signature have a usable key right now? Used by `check` (every key
//! loaded, on every core) and after startup ([`crate::keys::warm`]).

use crate::config::keysource::ResolvedKeySource;
use crate::config::{Algo, SignerTemplate, SigningDomain};
use crate::runtime::Runtime;
use futures_util::StreamExt as _;
use std::sync::Arc;

/// Keys loaded at once by `check`: parsing runs on the blocking pool, so this keeps every core
/// busy, and it overlaps as many Vault or callback round trips.
pub const CHECK_CONCURRENCY: usize = 64;

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
}

/// One configured signature whose key can be tried now.
pub struct KeyCheck {
    pub entry: String,
    pub domain: String,
    pub selector: String,
    /// `None`: the key is resolved per author domain (a wildcard entry whose key names
    /// `{domain}`), so there is nothing to try before a message comes.
    pub source: Option<ResolvedKeySource>,
    /// Shown where the source is per message.
    pub shown_source: String,
    pub algo: Option<Algo>,
}

/// Every configured signature, in table order.
pub fn key_checks(runtime: &Runtime) -> Vec<KeyCheck> {
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
        let shown_source = source.to_string();
        let source = (!(per_message && template.key.depends_on_domain())).then_some(source);
        out.push(KeyCheck {
            entry,
            domain,
            selector,
            source,
            shown_source,
            algo: template.algo,
        });
    }
    out
}

/// Resolves every entry's key through the runtime's key store (which also warms its cache),
/// [`CHECK_CONCURRENCY`] at a time; the statuses come back in table order.
pub async fn key_statuses(runtime: &Runtime) -> Vec<KeyStatus> {
    futures_util::stream::iter(key_checks(runtime))
        .map(|check| key_status(runtime, check))
        .buffered(CHECK_CONCURRENCY)
        .collect()
        .await
}

async fn key_status(runtime: &Runtime, check: KeyCheck) -> KeyStatus {
    let (algorithm, status) = match &check.source {
        None => (
            check.algo.map_or("-".into(), |a| a.to_string()),
            Ok("resolved per author domain"),
        ),
        Some(source) => match runtime.keys.get(source).await {
            Ok(key) => match key.check_algo(check.algo) {
                Ok(()) => (key.describe(), Ok("ok")),
                Err(e) => (key.describe(), Err(e.to_string())),
            },
            Err(e) => ("-".into(), Err(e.to_string())),
        },
    };
    KeyStatus {
        entry: check.entry,
        domain: check.domain,
        selector: check.selector,
        source: check.shown_source,
        algorithm,
        status,
    }
}
