//! Resolving a key source to a key to sign with: the backends (file, inline data, Vault KV,
//! callbacks — which hand over the private key — and Vault Transit and PKCS#11, which keep it)
//! and, in front of them, the [`cache::KeyCache`], so that no message parses a key, reads a key
//! file or waits for a backend it already has a key from.

pub mod cache;
pub mod callback;
pub mod file;
pub mod generate;
pub mod parse;
pub mod pkcs11;
pub mod signing_key;
pub mod small_rsa;
pub mod transit;
pub mod vault;
pub mod warm;

pub use signing_key::{Custody, SignError, SigningKey};

use crate::config::Config;
use crate::config::keysource::ResolvedKeySource;
use callback::CallbackRegistry;
use file::FileStamp;
use parse::{KeyParseError, parse_private_key};
use pkcs11::{Pkcs11Failure, Pkcs11Pool};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use transit::TransitFailure;
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
    #[error("{origin}: {failure}")]
    Transit {
        origin: String,
        failure: TransitFailure,
    },
    #[error("{origin}: {failure}")]
    Pkcs11 {
        origin: String,
        failure: Pkcs11Failure,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A rotated signature whose rotation state could not be read yet: which selector DNS
    /// serves is unknown, so it does not sign rather than sign with a key nobody can verify.
    #[error(
        "{label}: its key rotation state could not be read yet ({reason}); no key is used until it is"
    )]
    RotationStateUnknown { label: String, reason: String },
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
        key: Arc<SigningKey>,
        stamp: Option<FileStamp>,
    },
    /// The file has the stamp it had when its cached key was read.
    Unchanged,
}

/// Fetches and parses keys, without caching: that is [`cache::KeyCache`]'s job.
pub struct Backends {
    require_safe_permissions: bool,
    /// Shared with the Transit keys it made, which sign through its clients.
    vault: Arc<VaultPool>,
    pkcs11: Pkcs11Pool,
    callbacks: CallbackRegistry,
}

impl Backends {
    pub fn new(config: &Config, registered: &CallbackRegistry) -> Self {
        Backends {
            require_safe_permissions: config.keys.files.require_safe_permissions,
            vault: Arc::new(VaultPool::new(
                &config.keys.vault,
                config.keys.cache.negative_ttl,
            )),
            pkcs11: Pkcs11Pool::new(&config.keys.pkcs11),
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
                        origin: self.vault_origin(
                            v.address.as_ref(),
                            &format!("{}/{} field {}", v.mount, v.path, v.field),
                        ),
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
            ResolvedKeySource::Transit(t) => {
                let key = transit::fetch(&self.vault, t)
                    .await
                    .map_err(|failure| self.transit_error(t, failure))?;
                Ok(Fetched::New {
                    key: Arc::new(key),
                    stamp: None,
                })
            }
            ResolvedKeySource::Pkcs11(p) => {
                let key =
                    pkcs11::fetch(&self.pkcs11, p)
                        .await
                        .map_err(|failure| KeyError::Pkcs11 {
                            origin: source.to_string(),
                            failure,
                        })?;
                Ok(Fetched::New {
                    key: Arc::new(key),
                    stamp: None,
                })
            }
        }
    }

    /// Whether file keys must be readable by their owner only (`[keys] require_safe_permissions`).
    pub fn require_safe_permissions(&self) -> bool {
        self.require_safe_permissions
    }

    /// Creates a key where it will stay (Transit, or a PKCS#11 token), for `keygen`: it
    /// refuses a name already in use, and returns the key as the milter will sign with it.
    pub async fn create_remote(
        &self,
        source: &ResolvedKeySource,
        kind: generate::KeyKind,
    ) -> Result<SigningKey, KeyError> {
        use generate::KeyKind;
        match source {
            ResolvedKeySource::Transit(t) => {
                let key_type = match kind {
                    KeyKind::Rsa2048 => "rsa-2048",
                    KeyKind::Rsa3072 => "rsa-3072",
                    KeyKind::Ed25519 => "ed25519",
                };
                transit::create(&self.vault, t, key_type)
                    .await
                    .map_err(|failure| self.transit_error(t, failure))
            }
            ResolvedKeySource::Pkcs11(p) => {
                let failed = |failure| KeyError::Pkcs11 {
                    origin: source.to_string(),
                    failure,
                };
                let generated = match kind {
                    KeyKind::Rsa2048 => pkcs11::GeneratedKind::Rsa(2048),
                    KeyKind::Rsa3072 => pkcs11::GeneratedKind::Rsa(3072),
                    KeyKind::Ed25519 => pkcs11::GeneratedKind::Ed25519,
                };
                pkcs11::generate(&self.pkcs11, p, generated)
                    .await
                    .map_err(failed)?;
                pkcs11::fetch(&self.pkcs11, p).await.map_err(failed)
            }
            _ => Err(KeyError::Internal(
                "keys are created remotely only in Transit or a PKCS#11 token",
            )),
        }
    }

    fn transit_error(
        &self,
        t: &crate::config::keysource::TransitSource<String>,
        failure: TransitFailure,
    ) -> KeyError {
        KeyError::Transit {
            origin: self.vault_origin(
                t.address.as_ref(),
                &format!("transit {}/keys/{}", t.mount, t.key),
            ),
            failure,
        }
    }

    /// "vault ADDRESS WHAT", for errors.
    fn vault_origin(&self, address: Option<&String>, what: &str) -> String {
        format!(
            "vault {} {what}",
            self.vault
                .address_for(address)
                .as_deref()
                .unwrap_or("(no address)"),
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
    // Logged each time such a key is loaded (at startup for Vault, callback and inline keys,
    // at first use for files), as `check` reports it.
    if let Some(weakness) = key.weakness() {
        tracing::warn!(source = %source, "{weakness}");
    }
    Ok(Fetched::New {
        key: Arc::new(key),
        stamp,
    })
}

#[cfg(test)]
mod tests;
