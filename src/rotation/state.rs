//! The durable state of one rotated signature: its keys, each with its phase and the times it
//! entered them. One JSON file per signature under `[rotation] state_directory`, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), and only while the
//! directory's lock file is held, so that a `rotate` command and the daemon never interleave.

use crate::config::SignatureLabel;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

/// Bumped when the file format changes incompatibly.
const FORMAT: u32 = 1;

/// Where a key is in its life. Only `Active` signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Generated; its record is being published and checked. Never signs.
    Pending,
    /// Signs every message.
    Active,
    /// Replaced by a newer key; its record stays published for `overlap` so that messages in
    /// transit still verify. Never signs.
    Retiring,
    /// Its record was revoked (`p=` empty) or removed; its private key is disposed of after
    /// `remove_after`.
    Revoked,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Active => "active",
            Phase::Retiring => "retiring",
            Phase::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of a rotated signature. Times are Unix milliseconds (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub selector: String,
    pub phase: Phase,
    pub created_ms: u64,
    /// The earliest time it may sign (`created + activate_after`).
    pub not_before_ms: u64,
    /// Whether its private key was written. A crash between choosing the selector and
    /// writing the key leaves `false`; the next run then adopts a key it finds there instead
    /// of making a second one.
    pub stored: bool,
    /// The public TXT value, once known (the record to publish, and what revocation keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// The key the configuration named when rotation began (published by the operator).
    #[serde(default)]
    pub bootstrap: bool,
}

/// Everything known about one rotated signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub format: u32,
    pub domain: String,
    /// The entry, as `[domain."…"]` / `[signature."…"]`, for people reading the file.
    pub entry: String,
    /// The last `{counter}` used.
    pub counter: u64,
    /// The latest wall-clock time any run saw, to notice a clock that went back.
    pub last_seen_ms: u64,
    /// No time-based step before this (set when the clock jumped forward; see `clock.rs`).
    #[serde(default)]
    pub hold_until_ms: u64,
    /// Set by `signet-milter rotate`: start the next key now, whatever its age.
    #[serde(default)]
    pub rotate_now: bool,
    pub keys: Vec<KeyRecord>,
}

impl SlotState {
    /// The state of a signature that starts rotating: the configured key is the active one.
    pub fn bootstrap(domain: &str, entry: &SignatureLabel, selector: &str, now_ms: u64) -> Self {
        SlotState {
            format: FORMAT,
            domain: domain.to_string(),
            entry: entry.to_string(),
            counter: 0,
            last_seen_ms: now_ms,
            hold_until_ms: 0,
            rotate_now: false,
            keys: vec![KeyRecord {
                selector: selector.to_string(),
                phase: Phase::Active,
                created_ms: now_ms,
                not_before_ms: now_ms,
                stored: true,
                record: None,
                published_ms: None,
                activated_ms: Some(now_ms),
                retired_ms: None,
                revoked_ms: None,
                bootstrap: true,
            }],
        }
    }

    pub fn active(&self) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.phase == Phase::Active)
    }

    pub fn pending(&self) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.phase == Phase::Pending)
    }

    pub fn key_mut(&mut self, selector: &str) -> Option<&mut KeyRecord> {
        self.keys.iter_mut().find(|k| k.selector == selector)
    }

    /// Whether `selector` is taken by a key still known here (a record may still be live).
    pub fn uses(&self, selector: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.selector.eq_ignore_ascii_case(selector))
    }
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rotation state {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rotation state {}: not a state file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("rotation state {} is in use by another signet-milter (try again)", path.display())]
    Busy { path: PathBuf },
    #[error("rotation state in Vault at {what}: {reason}")]
    Vault { what: String, reason: String },
    #[error(
        "rotation state in Vault at {what} was changed by another milter since it was read; this round leaves it alone"
    )]
    Conflict { what: String },
}

/// Parses a state file's text; `path` names it in errors.
pub(crate) fn parse_state(text: &str, path: impl Fn() -> PathBuf) -> Result<SlotState, StateError> {
    let state: SlotState = serde_json::from_str(text).map_err(|e| StateError::Corrupt {
        path: path(),
        reason: e.to_string(),
    })?;
    if state.format != FORMAT {
        return Err(StateError::Corrupt {
            path: path(),
            reason: format!(
                "format {} (this version reads format {FORMAT})",
                state.format
            ),
        });
    }
    Ok(state)
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Held while state is read, changed and written; released on drop.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The file of one signature: `<root>/<domain>/domain.json` or `…/signature-<name>.json`.
    pub fn file(&self, domain: &str, label: &SignatureLabel) -> PathBuf {
        let name = match label {
            SignatureLabel::Domain(_) => "domain.json".to_string(),
            SignatureLabel::Signature(name) => format!("signature-{}.json", file_safe(name)),
        };
        self.root.join(file_safe(domain)).join(name)
    }

    /// A directory of its own for things written for the operator or kept for later.
    pub fn subdir(&self, parts: &[&str]) -> PathBuf {
        let mut path = self.root.clone();
        for part in parts {
            path.push(file_safe(part));
        }
        path
    }

    /// Takes the directory's lock; `wait`: block until it is free, else fail with `Busy`.
    pub fn lock(&self, wait: bool) -> Result<StateLock, StateError> {
        create_dir(&self.root)?;
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io(&path))?;
        let operation = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own; the lock goes with the file when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StateError::Busy { path });
            }
            return Err(StateError::Io {
                path,
                source: error,
            });
        }
        Ok(StateLock { _file: file })
    }

    /// The state of one signature, or `None` when it never rotated.
    pub fn load(
        &self,
        domain: &str,
        label: &SignatureLabel,
    ) -> Result<Option<SlotState>, StateError> {
        let path = self.file(domain, label);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        parse_state(&text, || path.clone()).map(Some)
    }

    /// Replaces the state of one signature atomically; needs the lock.
    pub fn save(&self, _lock: &StateLock, state: &SlotState) -> Result<(), StateError> {
        let label_path = |label: &SignatureLabel| self.file(&state.domain, label);
        let label = parse_label(&state.entry);
        let path = label_path(&label);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        create_dir(&dir)?;
        let mut text = serde_json::to_string_pretty(state).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        write_atomically(&path, text.as_bytes(), 0o640)
    }
}

/// `[domain."x"]` / `[signature."x"]` back into a label (the state file names its entry).
pub(crate) fn parse_label(entry: &str) -> SignatureLabel {
    let inner = |prefix: &str| {
        entry
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("\"]"))
            .map(str::to_string)
    };
    if let Some(name) = inner("[signature.\"") {
        SignatureLabel::Signature(name.into())
    } else {
        SignatureLabel::Domain(
            inner("[domain.\"")
                .unwrap_or_else(|| entry.to_string())
                .into(),
        )
    }
}

/// Domain names and entry names as one path component: no separators, no dot files.
pub(crate) fn file_safe(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_start_matches('.').to_string()
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `path` so that a reader sees the old or the new content, never a part, even across
/// a crash or power loss.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("state".into(), |n| n.to_string_lossy())
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path().join("rotation"));
        let label = SignatureLabel::Domain("example.com".into());
        assert!(store.load("example.com", &label).unwrap().is_none());
        let mut state = SlotState::bootstrap("example.com", &label, "s1", 1000);
        let lock = store.lock(false).unwrap();
        store.save(&lock, &state).unwrap();
        state.counter = 7;
        store.save(&lock, &state).unwrap();
        assert_eq!(store.load("example.com", &label).unwrap(), Some(state));
        let files: Vec<_> = std::fs::read_dir(store.file("example.com", &label).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            files,
            vec!["domain.json".to_string()],
            "no temporary file left"
        );
    }

    #[test]
    fn a_second_holder_is_refused_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        let held = store.lock(false).unwrap();
        assert!(matches!(store.lock(false), Err(StateError::Busy { .. })));
        drop(held);
        assert!(store.lock(false).is_ok());
    }

    #[test]
    fn signature_entries_have_their_own_file_and_names_cannot_escape() {
        let store = StateDir::new("/state");
        let sig = SignatureLabel::Signature("../esp".into());
        assert_eq!(
            store.file("esp.example", &sig),
            PathBuf::from("/state/esp.example/signature-_esp.json")
        );
        assert_eq!(parse_label(&sig.to_string()), sig);
        let domain = SignatureLabel::Domain("example.com".into());
        assert_eq!(parse_label(&domain.to_string()), domain);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        let label = SignatureLabel::Domain("example.com".into());
        let path = store.file("example.com", &label);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{ half a file").unwrap();
        assert!(matches!(
            store.load("example.com", &label),
            Err(StateError::Corrupt { .. })
        ));
    }
}
