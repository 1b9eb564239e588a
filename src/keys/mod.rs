//! Resolving a key source to a parsed key: the backends (file, inline data, Vault, callbacks)
//! and, in front of them, the [`cache::KeyCache`], so that no message parses a key, reads a key
//! file or waits for a backend it already has a key from.

pub mod cache;
pub mod callback;
pub mod file;
pub mod generate;
pub mod parse;
pub mod vault;
pub mod warm;

use crate::config::Config;
use crate::config::keysource::ResolvedKeySource;
use callback::CallbackRegistry;
use file::FileStamp;
use parse::{KeyParseError, PrivateKey, parse_private_key};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault::{VaultFailure, VaultPool};

/// Why a key could not be had. Names the source, never the key or a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(
        "key file {} is readable or writable by group or others (mode {mode:04o}); run chmod 600 on it, or set [keys] require_safe_permissions = false",
        path.display()
    )]
    UnsafePermissions { path: PathBuf, mode: u32 },
    #[error("{origin}: {error}")]
    Parse {
        origin: String,
        error: KeyParseError,
    },
    #[error("{origin}: {failure}")]
    Vault {
        origin: String,
        failure: VaultFailure,
    },
    #[error("{origin}: {reason}")]
    Callback { origin: String, reason: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl KeyError {
    pub(crate) fn io(path: &Path, error: &std::io::Error) -> Self {
        let reason = match error.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => error.to_string(),
        };
        KeyError::File {
            path: path.to_owned(),
            reason,
        }
    }

    /// A short, non-secret phrase for SMTP replies.
    pub fn public_reason(&self) -> &'static str {
        match self {
            KeyError::Parse { .. } => "signing key unusable",
            _ => "signing key unavailable",
        }
    }
}

/// The answer of a backend.
pub(crate) enum Fetched {
    New {
        key: Arc<PrivateKey>,
        stamp: Option<FileStamp>,
    },
    /// The file has the stamp it had when its cached key was read.
    Unchanged,
}

/// Fetches and parses keys, without caching: that is [`cache::KeyCache`]'s job.
pub struct Backends {
    require_safe_permissions: bool,
    vault: VaultPool,
    callbacks: CallbackRegistry,
}

impl Backends {
    pub fn new(config: &Config, registered: &CallbackRegistry) -> Self {
        Backends {
            require_safe_permissions: config.keys.files.require_safe_permissions,
            vault: VaultPool::new(&config.keys.vault, config.keys.cache.negative_ttl),
            callbacks: registered.with_config(&config.keys.callbacks),
        }
    }

    /// Fetches `source`; for a file whose stamp is still `previous`, answers `Unchanged`.
    /// Reading a file and parsing a key (an RSA key takes about as long as a signature) run on
    /// tokio's blocking pool, never on the workers that serve the connections.
    pub(crate) async fn fetch(
        &self,
        source: &ResolvedKeySource,
        previous: Option<&FileStamp>,
    ) -> Result<Fetched, KeyError> {
        match source {
            ResolvedKeySource::File(path) => {
                if let Some(previous) = previous
                    && file::stamp(path)? == *previous
                {
                    return Ok(Fetched::Unchanged);
                }
                let path = path.clone();
                let safe = self.require_safe_permissions;
                let origin = source.clone();
                off_the_workers(move || {
                    let (bytes, stamp) = file::read_key_file(&path, safe)?;
                    new_key(&origin, &bytes, Some(stamp))
                })
                .await
            }
            ResolvedKeySource::Data(data) => {
                let (origin, data) = (source.clone(), data.clone());
                off_the_workers(move || new_key(&origin, data.expose(), None)).await
            }
            ResolvedKeySource::Vault(v) => {
                let text = self
                    .vault
                    .fetch(v)
                    .await
                    .map_err(|failure| KeyError::Vault {
                        origin: self.vault_origin(v),
                        failure,
                    })?;
                let origin = source.clone();
                off_the_workers(move || new_key(&origin, text.as_bytes(), None)).await
            }
            ResolvedKeySource::Event { name, args } => {
                let failed = |reason: String| KeyError::Callback {
                    origin: source.to_string(),
                    reason,
                };
                let callback = self
                    .callbacks
                    .get(name)
                    .ok_or_else(|| failed("no such callback".into()))?;
                let bytes = callback.fetch(args).await.map_err(|e| failed(e.0))?;
                let origin = source.clone();
                off_the_workers(move || new_key(&origin, &bytes, None)).await
            }
        }
    }

    /// Whether file keys must be readable by their owner only (`[keys] require_safe_permissions`).
    pub fn require_safe_permissions(&self) -> bool {
        self.require_safe_permissions
    }

    fn vault_origin(&self, v: &crate::config::keysource::VaultSource<String>) -> String {
        format!(
            "vault {} {}/{} field {}",
            self.vault
                .address_for(v)
                .as_deref()
                .unwrap_or("(no address)"),
            v.mount,
            v.path,
            v.field
        )
    }
}

async fn off_the_workers(
    work: impl FnOnce() -> Result<Fetched, KeyError> + Send + 'static,
) -> Result<Fetched, KeyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| KeyError::Internal("the key loading task failed"))?
}

fn new_key(
    source: &ResolvedKeySource,
    bytes: &[u8],
    stamp: Option<FileStamp>,
) -> Result<Fetched, KeyError> {
    let key = parse_private_key(bytes).map_err(|error| KeyError::Parse {
        origin: source.to_string(),
        error,
    })?;
    Ok(Fetched::New {
        key: Arc::new(key),
        stamp,
    })
}

#[cfg(test)]
mod tests;
