//! Warming the key cache in the background, once the milter is already serving.
//!
//! The socket is bound before any key is fetched, so a backend that hangs (a Vault that
//! accepts connections and never answers) can never keep the milter from starting; a message
//! that needs a key still being fetched waits for that one fetch (single flight) and gets
//! `on_error` if it fails.
//!
//! - Vault and callback keys are fetched into the cache, [`WARM_CONCURRENCY`] at a time: they
//!   are what a message would otherwise wait on the network for. (A Vault that does not answer
//!   is not asked again for `negative_ttl`, so a hung one costs one timeout, not one per key.)
//! - Inline keys are parsed into the cache, on the blocking pool.
//! - Key files are loaded too (read, parsed, cached), so that a file that is not a key, or a
//!   weak RSA-1024 key, shows in the log at startup — up to [`FILE_LOAD_LIMIT`] of them. Beyond
//!   that they are only checked with `stat` (exists, regular file, permissions) and parsed when
//!   first used: loading 100,000 RSA keys up front would hold a core for a minute and memory for
//!   keys that may never sign. `check` parses every one.
//!
//! Problems are logged once per key source, with how many entries use it.

use crate::config::keysource::ResolvedKeySource;
use crate::inventory::{KeyLocation, KeyUse};
use crate::keys::KeyError;
use crate::runtime::Runtime;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Key fetches at once while warming: enough to overlap many round trips to a slow backend,
/// few enough not to flood it (or the blocking pool) after a restart.
pub const WARM_CONCURRENCY: usize = 32;

/// Key files loaded at startup; more are only `stat`ed and parsed at first use. 10,000
/// RSA-2048 parses take about 6 s of CPU, spread over the blocking pool.
pub const FILE_LOAD_LIMIT: usize = 10_000;

/// How a warm-up pass ended, counted per distinct key source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Loaded into the cache (Vault, callback, inline) or checked (files).
    pub ok: usize,
    pub failed: usize,
    /// Not loaded because the cache has no room for them (`[cache] capacity`).
    pub skipped: usize,
}

impl std::fmt::Display for WarmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} keys ok, {} not usable", self.ok, self.failed)?;
        if self.skipped > 0 {
            write!(f, ", {} left for first use (cache full)", self.skipped)?;
        }
        Ok(())
    }
}

/// The entries that use one key source.
struct Users {
    first: String,
    count: usize,
}

/// Checks or loads every configured key, as the module documentation says.
pub async fn warm(runtime: Arc<Runtime>) -> WarmReport {
    let metrics = runtime.env.metrics.clone();
    let sources = distinct_sources(runtime.rotation.inventory(&runtime.config.signing));
    metrics.keys_warming(sources.len());
    let (mut files, mut remote): (Vec<_>, Vec<_>) = sources
        .into_iter()
        .partition(|(source, _)| matches!(source, ResolvedKeySource::File(_)));
    if files.len() <= FILE_LOAD_LIMIT {
        remote.append(&mut files);
    } else {
        tracing::info!(
            files = files.len(),
            limit = FILE_LOAD_LIMIT,
            "many key files: checked with stat now, parsed when first used (signet-milter check parses them all)"
        );
    }
    let room = usize::try_from(runtime.keys.capacity()).unwrap_or(usize::MAX);
    let skipped = remote.len().saturating_sub(room);
    if skipped > 0 {
        tracing::warn!(
            keys = remote.len(),
            capacity = room,
            "more keys to load than [cache] capacity: {skipped} are fetched when first used"
        );
        remote.truncate(room);
    }
    let mut report = WarmReport {
        skipped,
        ..WarmReport::default()
    };
    let files_checked = check_files(&runtime, files);
    let loaded = futures_util::stream::iter(remote)
        .map(|(source, users)| {
            let runtime = runtime.clone();
            async move {
                let result = runtime.keys.get(&source).await.map(|_| ());
                (source, users, result)
            }
        })
        .buffer_unordered(WARM_CONCURRENCY)
        .collect::<Vec<_>>();
    let (files_checked, loaded) = tokio::join!(files_checked, loaded);
    for (source, users, result) in files_checked.into_iter().chain(loaded) {
        match result {
            Ok(()) => report.ok += 1,
            Err(error) => {
                report.failed += 1;
                warn_unusable(&source, &users, &error);
            }
        }
        metrics.key_warmed(report.ok, report.failed);
    }
    report
}

/// Each source once, with the entries that use it (100,000 domains may share one key).
fn distinct_sources(keys: Vec<KeyUse>) -> Vec<(ResolvedKeySource, Users)> {
    let mut order = Vec::new();
    let mut users: HashMap<ResolvedKeySource, Users> = HashMap::new();
    for key in keys {
        let KeyLocation::Known(source) = key.key else {
            continue;
        };
        match users.get_mut(&source) {
            Some(u) => u.count += 1,
            None => {
                order.push(source.clone());
                users.insert(
                    source,
                    Users {
                        first: key.signature.label.to_string(),
                        count: 1,
                    },
                );
            }
        }
    }
    order
        .into_iter()
        .filter_map(|source| users.remove(&source).map(|u| (source, u)))
        .collect()
}

type Checked = (ResolvedKeySource, Users, Result<(), KeyError>);

/// `stat`s every key file on the blocking pool.
async fn check_files(runtime: &Runtime, files: Vec<(ResolvedKeySource, Users)>) -> Vec<Checked> {
    let require_safe = runtime.keys.backends().require_safe_permissions();
    tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(source, users)| {
                let result = match &source {
                    ResolvedKeySource::File(path) => {
                        super::file::check_key_file(path, require_safe).map(|_| ())
                    }
                    _ => Ok(()),
                };
                (source, users, result)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn warn_unusable(source: &ResolvedKeySource, users: &Users, error: &KeyError) {
    let others = users.count - 1;
    if others == 0 {
        tracing::warn!(entry = %users.first, "key not usable yet: {error}");
    } else {
        tracing::warn!(
            entry = %users.first,
            other_entries = others,
            source = %source,
            "key not usable yet: {error}"
        );
    }
}

/// The warm-up pass of the configuration in force: a reload cancels the pass of the
/// configuration it replaces and starts its own.
#[derive(Default)]
pub struct Warming(Mutex<Option<JoinHandle<()>>>);

impl Warming {
    /// Starts warming `runtime`'s keys in the background; `done` gets the report.
    pub fn restart(&self, runtime: Arc<Runtime>, done: impl FnOnce(WarmReport) + Send + 'static) {
        // Pending from now on (by entries, until the pass has counted its distinct sources),
        // so that /healthz never shows the previous pass's result as this one's.
        let entries = runtime.config.signing.entry_count();
        runtime.env.metrics.keys_warming(entries);
        let task = tokio::spawn(async move {
            let report = warm(runtime).await;
            done(report);
        });
        let previous = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }
}
