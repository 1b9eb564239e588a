//! Where rotation state lives: the state directory ([`StateDir`]), or Vault (KV v2) for
//! milters that share their keys and so must share one schedule.
//!
//! In Vault each rotated signature is one secret under `[rotation] state_vault`'s path, field
//! `state` (the same JSON as the files), and every write is a check-and-set against the
//! version read: of two milters making the same step at once, one succeeds and the other gets
//! a conflict, re-reads at its next round and finds the step made. The state directory is
//! still used for what is written for people (`records.zone`) and archived keys, and its lock
//! still serializes one host's rounds and `rotate` commands.

use super::state::{
    SlotState, StateDir, StateError, StateLock, file_safe, parse_label, parse_state,
};
use crate::config::keysource::{KvVersion, VaultSource};
use crate::config::{RotationSettings, SignatureLabel};
use crate::keys::vault::VaultPool;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Store {
    pub local: StateDir,
    shared: Option<VaultState>,
}

struct VaultState {
    pool: Arc<VaultPool>,
    mount: String,
    path: String,
}

impl VaultState {
    fn source(&self, domain: &str, label: &SignatureLabel) -> VaultSource<String> {
        let name = match label {
            SignatureLabel::Domain(_) => "domain".to_string(),
            SignatureLabel::Signature(name) => format!("signature-{}", file_safe(name)),
        };
        VaultSource {
            mount: self.mount.clone(),
            path: format!("{}/{}/{name}", self.path, file_safe(domain)),
            field: "state".into(),
            address: None,
            token: None,
            kv_version: Some(KvVersion::V2),
        }
    }
}

impl Store {
    pub(crate) fn new(settings: &RotationSettings, vault: Arc<VaultPool>) -> Self {
        Store {
            local: StateDir::new(&settings.state_directory),
            shared: settings.state_vault.as_ref().map(|v| VaultState {
                pool: vault,
                mount: v.mount.clone(),
                path: v.path.clone(),
            }),
        }
    }

    /// Whether the state is in Vault (no local file to watch for changes).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The state of one signature and the version it was read at (Vault's; 0 for a file).
    pub async fn load(
        &self,
        domain: &str,
        label: &SignatureLabel,
    ) -> Result<Option<(SlotState, u64)>, StateError> {
        let Some(vault) = &self.shared else {
            return Ok(self.local.load(domain, label)?.map(|s| (s, 0)));
        };
        let source = vault.source(domain, label);
        let what = format!("{}/{}", source.mount, source.path);
        let read = vault
            .pool
            .read_versioned(&source)
            .await
            .map_err(|e| StateError::Vault {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let Some((text, version)) = read else {
            return Ok(None);
        };
        let state = parse_state(&text, || PathBuf::from(&what))?;
        Ok(Some((state, version)))
    }

    /// Writes the state; `version` is the one it was read at, and becomes the new one.
    pub async fn save(
        &self,
        lock: &StateLock,
        state: &SlotState,
        version: &mut u64,
    ) -> Result<(), StateError> {
        let Some(vault) = &self.shared else {
            return self.local.save(lock, state);
        };
        let source = vault.source(&state.domain, &parse_label(&state.entry));
        let what = format!("{}/{}", source.mount, source.path);
        let text = serde_json::to_string_pretty(state).map_err(|e| StateError::Vault {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        match vault.pool.write_cas(&source, &text, *version).await {
            Ok(Some(new)) => {
                *version = new;
                Ok(())
            }
            Ok(None) => Err(StateError::Conflict { what }),
            Err(e) => Err(StateError::Vault {
                what,
                reason: e.to_string(),
            }),
        }
    }
}
