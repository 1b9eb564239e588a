//! Where a rotation puts the private keys it makes: the entry's own key source with the new
//! selector filled in, so the signing path reads a rotated key exactly like a configured one.
//! A file is created with `O_EXCL` (mode 0600), a Vault secret with check-and-set 0: neither
//! ever overwrites a key, and a key found already there (a crash between choosing a selector
//! and recording that the key was written, or another milter sharing the Vault) is adopted
//! instead of a second one being made.

use crate::config::keysource::{KeySource, ResolvedKeySource};
use crate::config::rotation::{NewKeyAlgorithm, RetiredPrivateKey};
use crate::keys::SigningKey;
use crate::keys::generate::{GeneratedKey, KeyKind, generate, write_private_key};
use crate::keys::parse::parse_private_key;
use crate::keys::vault::VaultPool;
use crate::rotation::state::StateDir;
use std::path::Path;

/// The kind of the next key: the configured one, else the same kind as the key signing now.
pub fn next_kind(configured: Option<NewKeyAlgorithm>, current: Option<&SigningKey>) -> KeyKind {
    match configured {
        Some(NewKeyAlgorithm::Rsa2048) => KeyKind::Rsa2048,
        Some(NewKeyAlgorithm::Rsa3072) => KeyKind::Rsa3072,
        Some(NewKeyAlgorithm::Ed25519) => KeyKind::Ed25519,
        None => match current {
            Some(key) if key.rsa_bits().is_none() => KeyKind::Ed25519,
            Some(key) if key.rsa_bits().is_some_and(|b| b >= 3072) => KeyKind::Rsa3072,
            _ => KeyKind::Rsa2048,
        },
    }
}

/// Writes a new key for `selector`, or adopts the one already there. Returns its public record.
pub(crate) async fn store_new_key(
    source: &KeySource,
    domain: &str,
    selector: &str,
    kind: KeyKind,
    vault: &VaultPool,
) -> Result<String, String> {
    let resolved = source.resolve(domain, selector);
    let generated = generate(kind).map_err(|e| e.to_string())?;
    match &resolved {
        ResolvedKeySource::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || store_file(&path, &generated))
                .await
                .map_err(|_| "the key writing task failed".to_string())?
        }
        ResolvedKeySource::Vault(v) => {
            let pem = generated.private_pem();
            let created = vault
                .create(v, &pem)
                .await
                .map_err(|e| format!("{resolved}: {e}"))?;
            if created {
                Ok(generated.key.dns_record())
            } else {
                tracing::info!(source = %resolved, "a key is already stored there: adopting it");
                let text = vault
                    .fetch(v)
                    .await
                    .map_err(|e| format!("{resolved}: {e}"))?;
                let key =
                    parse_private_key(text.as_bytes()).map_err(|e| format!("{resolved}: {e}"))?;
                Ok(key.dns_record())
            }
        }
        other => Err(format!("{other}: rotation cannot write keys there")),
    }
}

fn store_file(path: &Path, generated: &GeneratedKey) -> Result<String, String> {
    match write_private_key(path, generated) {
        Ok(()) => Ok(generated.key.dns_record()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::info!(path = %path.display(), "a key file is already there: adopting it");
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            );
            let key = parse_private_key(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(key.dns_record())
        }
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

/// Archives or deletes a retired private key.
pub(crate) async fn dispose(
    source: &KeySource,
    domain: &str,
    selector: &str,
    how: RetiredPrivateKey,
    state: &StateDir,
    vault: &VaultPool,
) -> Result<String, String> {
    let resolved = source.resolve(domain, selector);
    match (&resolved, how) {
        (ResolvedKeySource::File(path), RetiredPrivateKey::Archive) => {
            let archive = state.subdir(&["archive", domain]);
            crate::rotation::state::create_dir(&archive).map_err(|e| e.to_string())?;
            let target = archive.join(format!("{selector}.key"));
            std::fs::rename(path, &target).map_err(|e| {
                format!(
                    "cannot move {} to {}: {e}",
                    path.display(),
                    target.display()
                )
            })?;
            Ok(format!("archived to {}", target.display()))
        }
        (ResolvedKeySource::File(path), RetiredPrivateKey::Delete) => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(format!("deleted {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(format!("{} was already gone", path.display()))
                }
                Err(e) => Err(format!("cannot delete {}: {e}", path.display())),
            }
        }
        (ResolvedKeySource::Vault(_), RetiredPrivateKey::Archive) => {
            Ok(format!("left in place at {resolved} (archive)"))
        }
        (ResolvedKeySource::Vault(v), RetiredPrivateKey::Delete) => vault
            .destroy(v)
            .await
            .map(|()| format!("deleted {resolved}"))
            .map_err(|e| format!("{resolved}: {e}")),
        (other, _) => Err(format!("{other}: rotation cannot remove keys there")),
    }
}
