//! Does every key a message can be signed with work right now? Used by `check` (every key
//! loaded, on every core); the startup pass is [`crate::keys::warm`].

use crate::inventory::{KeyLocation, KeyUse};
use crate::keys::{Custody, SigningKey};
use crate::runtime::Runtime;
use futures_util::StreamExt as _;

/// Keys loaded at once by `check`: parsing runs on the blocking pool, so this keeps every core
/// busy, and it overlaps as many Vault or callback round trips.
pub const CHECK_CONCURRENCY: usize = 64;

/// The state of one key of the [inventory](crate::inventory).
pub struct KeyStatus {
    /// The signature's entry: `[domain."…"]` or `[signature."…"]`.
    pub entry: String,
    /// The `d=` it signs as (a pattern when that is each message's author domain).
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
pub fn notes_for(key: &SigningKey) -> Vec<KeyNote> {
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

impl KeyStatus {
    /// One line naming the domain, selector, signature and the problem, for logs.
    pub fn problem(&self) -> Option<String> {
        let error = self.status.as_ref().err()?;
        Some(format!(
            "{}/{} ({}): {error}",
            self.domain, self.selector, self.entry
        ))
    }
}

/// Resolves every key of the inventory through the runtime's key store (which also warms its
/// cache), [`CHECK_CONCURRENCY`] at a time; the statuses come back in inventory order.
pub async fn key_statuses(runtime: &Runtime) -> Vec<KeyStatus> {
    let keys = runtime.rotation.inventory(&runtime.config.signing);
    futures_util::stream::iter(&keys)
        .map(|key| key_status(runtime, key))
        .buffered(CHECK_CONCURRENCY)
        .collect()
        .await
}

/// Loads one key and checks it against its signature's `algo`. A key that differs per message
/// cannot be loaded ahead of a message; it is reported as such, not as a problem.
pub async fn key_status(runtime: &Runtime, key: &KeyUse) -> KeyStatus {
    let template = &key.signature;
    let (algorithm, status, notes) = match &key.key {
        KeyLocation::PerMessage(_) => (
            template.algo.map_or("-".into(), |a| a.to_string()),
            Ok("resolved per author domain"),
            Vec::new(),
        ),
        KeyLocation::Known(source) => match runtime.keys.get(source).await {
            Ok(loaded) => match loaded.check_algo(template.algo) {
                Ok(()) => (loaded.describe(), Ok("ok"), notes_for(&loaded)),
                Err(e) => (loaded.describe(), Err(e.to_string()), Vec::new()),
            },
            Err(e) => ("-".into(), Err(e.to_string()), Vec::new()),
        },
    };
    KeyStatus {
        entry: template.label.to_string(),
        domain: key.domain_text().to_string(),
        selector: key.selector().to_string(),
        source: key.source_text(),
        algorithm,
        status,
        notes,
    }
}
