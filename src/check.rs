//! Does every configured signature have a usable key right now? Used by `check` and at startup.

use crate::config::{SignerTemplate, SigningDomain};
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
        let rotated = runtime.rotation.template(table, template);
        let template = rotated.as_ref().unwrap_or(template);
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
            });
            continue;
        }
        let (algorithm, status) = match runtime.keys.get(&source).await {
            Ok(key) => match key.check_algo(template.algo) {
                Ok(()) => (key.describe(), Ok("ok")),
                Err(e) => (key.describe(), Err(e.to_string())),
            },
            Err(e) => ("-".into(), Err(e.to_string())),
        };
        out.push(KeyStatus {
            entry,
            domain,
            selector,
            source: source.to_string(),
            algorithm,
            status,
        });
    }
    out
}
