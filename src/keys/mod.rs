//! Resolving a key source to a parsed key, through a cache so that no message parses a key or
//! reads a key file: a file key is re-read only when the file changes, inline data is parsed once.

pub mod file;
pub mod generate;
pub mod parse;

use crate::keysource::ResolvedKeySource;
use parse::{KeyParseError, PrivateKey, parse_private_key};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a cached file key is `stat`ed to notice a replaced file.
const FILE_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error("{0}: this key source is not available in this version of signet-milter")]
    Unsupported(String),
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
            KeyError::File { .. } | KeyError::UnsafePermissions { .. } => "signing key unavailable",
            KeyError::Parse { .. } => "signing key unusable",
            KeyError::Unsupported(_) => "key source unavailable",
        }
    }
}

struct CachedKey {
    key: Arc<PrivateKey>,
    /// For file keys: what the file looked like when read, and when that was last confirmed.
    file: Option<(file::FileStamp, Instant)>,
}

/// Parsed keys by resolved source.
pub struct KeyStore {
    require_safe_permissions: bool,
    cache: Mutex<HashMap<ResolvedKeySource, CachedKey>>,
}

impl KeyStore {
    pub fn new(require_safe_permissions: bool) -> Self {
        Self {
            require_safe_permissions,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key for `source`, from the cache when it is still current.
    pub async fn get(&self, source: &ResolvedKeySource) -> Result<Arc<PrivateKey>, KeyError> {
        if let Some(key) = self.cached(source) {
            return Ok(key);
        }
        let (key, file_stamp) = match source {
            ResolvedKeySource::File(path) => {
                let path = path.clone();
                let safe = self.require_safe_permissions;
                let read = tokio::task::spawn_blocking(move || file::read_key_file(&path, safe));
                let (bytes, stamp) = read.await.map_err(|_| KeyError::File {
                    path: source.to_string().into(),
                    reason: "the reading task failed".into(),
                })??;
                (parse(source, &bytes)?, Some(stamp))
            }
            ResolvedKeySource::Data(data) => (parse(source, data.expose())?, None),
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        let key = Arc::new(key);
        let entry = CachedKey {
            key: key.clone(),
            file: file_stamp.map(|s| (s, Instant::now())),
        };
        self.lock().insert(source.clone(), entry);
        Ok(key)
    }

    /// A cached key that is still good: inline data always, a file while it is unchanged.
    fn cached(&self, source: &ResolvedKeySource) -> Option<Arc<PrivateKey>> {
        let mut cache = self.lock();
        let entry = cache.get_mut(source)?;
        if let (Some((stamp, checked)), ResolvedKeySource::File(path)) = (&mut entry.file, source)
            && checked.elapsed() >= FILE_RECHECK_INTERVAL
        {
            match file::stamp(path) {
                Ok(now) if now == *stamp => *checked = Instant::now(),
                _ => {
                    cache.remove(source);
                    return None;
                }
            }
        }
        Some(entry.key.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResolvedKeySource, CachedKey>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse(source: &ResolvedKeySource, bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    parse_private_key(bytes).map_err(|error| KeyError::Parse {
        origin: source.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use generate::{KeyKind, generate};
    use std::os::unix::fs::PermissionsExt as _;

    fn write_key(path: &Path, kind: KeyKind, mode: u32) -> Arc<str> {
        let g = generate(kind).unwrap();
        std::fs::write(path, g.private_pem().as_bytes()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        g.key.public_key_base64().into()
    }

    #[tokio::test]
    async fn file_keys_are_cached_and_reloaded_when_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first = write_key(&path, KeyKind::Ed25519, 0o600);
        let store = KeyStore::new(true);
        let source = ResolvedKeySource::File(path.clone());
        let a = store.get(&source).await.unwrap();
        let b = store.get(&source).await.unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "second lookup is served from the cache"
        );
        assert_eq!(a.public_key_base64(), &*first);

        // Replace the file (new inode, as `mv` or an editor does) and let the recheck interval pass.
        let tmp = dir.path().join("new.key");
        let second = write_key(&tmp, KeyKind::Ed25519, 0o600);
        std::fs::rename(&tmp, &path).unwrap();
        store
            .lock()
            .get_mut(&source)
            .unwrap()
            .file
            .as_mut()
            .unwrap()
            .1 -= FILE_RECHECK_INTERVAL;
        let c = store.get(&source).await.unwrap();
        assert_eq!(
            c.public_key_base64(),
            &*second,
            "a replaced file is picked up without reload"
        );
    }

    #[tokio::test]
    async fn unsafe_permissions_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_key(&path, KeyKind::Ed25519, 0o640);
        let source = ResolvedKeySource::File(path.clone());
        let err = KeyStore::new(true).get(&source).await.unwrap_err();
        assert!(
            matches!(err, KeyError::UnsafePermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        assert!(KeyStore::new(false).get(&source).await.is_ok());
    }

    #[tokio::test]
    async fn errors_name_the_source_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ResolvedKeySource::File(dir.path().join("nope.key"));
        let err = KeyStore::new(true).get(&missing).await.unwrap_err();
        assert!(
            err.to_string().ends_with("nope.key: does not exist"),
            "{err}"
        );

        let secretish =
            "-----BEGIN PRIVATE KEY-----\nTUlJQ1NFQ1JFVA==\n-----END PRIVATE KEY-----\n";
        let data = ResolvedKeySource::Data(crate::keysource::KeyData::new(secretish.into()));
        let err = KeyStore::new(true).get(&data).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("TUlJQ1NFQ1JFVA"), "{shown}");
        assert!(shown.contains("inline key_data"), "{shown}");
    }

    #[tokio::test]
    async fn small_rsa_keys_are_refused() {
        let pem = include_bytes!("../../tests/fixtures/rsa512-insecure-test-only.pem");
        let data = ResolvedKeySource::Data(crate::keysource::KeyData::new(pem.to_vec()));
        let err = KeyStore::new(true).get(&data).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("RSA key is smaller than 2048 bits"),
            "{err}"
        );
    }
}
