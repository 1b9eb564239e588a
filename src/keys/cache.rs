//! The key cache in front of every key source.
//!
//! Each resolved source has a slot holding its last good key and its last failure:
//! - a key younger than its freshness is served as is (a hit): `[cache] ttl`, forever for
//!   inline data. Past it a file is `stat`ed while the message waits (an unchanged file is not
//!   read again); so is every file key's file at its next use after a reload
//!   ([`KeyCache::recheck_files`]), so that a replaced file is picked up at once when the
//!   operator says so. (Once a second was a `stat` per message over 100,000 key files used
//!   at random: Ed25519 at 86 % of one domain's throughput in bench/scale.sh, 89-97 % without.)
//! - an older key keeps being served for up to `serve_stale` past that (stale) while one
//!   refresh runs in the background, so no message waits for a backend it has a key from;
//! - a failed fetch is remembered for `negative_ttl`: during that time messages for a source
//!   with no usable key get the error at once, and no new fetch is started;
//! - a message that needs a fetch waits for it; any number of messages needing the same key at
//!   once cause one fetch (single flight, by a per-slot lock and a re-check after it).
//!
//! Slots live in a moka cache bounded by `capacity`; one idle past any use is dropped.
//!
//! Every lookup is counted as what it was: a hit (no backend asked), a revalidation (a file's
//! `stat` showed it unchanged), a miss (the key was read or fetched while the message waited),
//! stale, or negative.

use super::{Backends, Fetched, KeyError};
use crate::config::CacheSettings;
use crate::config::keysource::ResolvedKeySource;
use crate::keys::SigningKey;
use crate::keys::file::FileStamp;
use crate::metrics::{Lookup, Metrics};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock, so that tests can move time forward.
use tokio::time::Instant;

pub struct KeyCache {
    settings: CacheSettings,
    slots: moka::future::Cache<ResolvedKeySource, Arc<Slot>>,
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
    /// Bumped by [`KeyCache::recheck_files`]: a file key confirmed in an older generation is
    /// `stat`ed again at its next use.
    file_generation: Arc<AtomicU64>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    /// Held while fetching, so that one fetch runs per source at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    good: Option<Good>,
    failure: Option<(KeyError, Instant)>,
    refreshing: bool,
}

struct Good {
    key: Arc<SigningKey>,
    stamp: Option<FileStamp>,
    /// When the backend last confirmed this key (fetched it, or a `stat` found the file unchanged).
    confirmed: Instant,
    /// The file generation it was confirmed in.
    generation: u64,
}

/// What to do with a lookup, given a slot's state.
enum Decision {
    Hit(Arc<SigningKey>),
    /// Serve the key; start a background refresh when `refresh`.
    Stale {
        key: Arc<SigningKey>,
        refresh: bool,
    },
    Negative(KeyError),
    Fetch,
}

impl KeyCache {
    /// A cache of at most `capacity` keys (see [`CacheSettings::capacity_for`]).
    pub fn new(
        settings: CacheSettings,
        capacity: u64,
        backends: Backends,
        metrics: Arc<Metrics>,
    ) -> Self {
        KeyCache {
            slots: Self::slots(&settings, capacity),
            settings,
            backends: Arc::new(backends),
            metrics,
            file_generation: Arc::default(),
        }
    }

    fn slots(
        settings: &CacheSettings,
        capacity: u64,
    ) -> moka::future::Cache<ResolvedKeySource, Arc<Slot>> {
        let idle = (settings.ttl + settings.serve_stale).max(settings.negative_ttl);
        moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(idle)
            .build()
    }

    /// The backends keys are fetched from.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// How many keys it holds at most.
    pub fn capacity(&self) -> u64 {
        self.slots.policy().max_capacity().unwrap_or(u64::MAX)
    }

    /// The same cache with room for `capacity` keys: the same backends (Vault logins), and
    /// every cached key and remembered failure carried over.
    pub async fn resized(&self, capacity: u64) -> KeyCache {
        let resized = KeyCache {
            slots: Self::slots(&self.settings, capacity),
            ..self.detached()
        };
        for (source, slot) in self.slots.iter() {
            resized.slots.insert((*source).clone(), slot).await;
        }
        resized
    }

    /// Makes every cached file key be `stat`ed again at its next use (after a reload: the
    /// operator may have replaced key files and expects them in use now, not within `ttl`).
    pub fn recheck_files(&self) {
        self.file_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The key of `source`, from the cache when it may be used, else fetched.
    pub async fn get(&self, source: &ResolvedKeySource) -> Result<Arc<SigningKey>, KeyError> {
        let slot = self
            .slots
            .get_with_by_ref(source, async { Arc::new(Slot::default()) })
            .await;
        let backend = source.backend();
        match self.decide(&slot, source) {
            Decision::Hit(key) => {
                self.metrics.key_lookup(backend, Lookup::Hit);
                Ok(key)
            }
            Decision::Stale { key, refresh } => {
                self.metrics.key_lookup(backend, Lookup::Stale);
                if refresh {
                    self.refresh_in_background(slot, source.clone());
                }
                Ok(key)
            }
            Decision::Negative(error) => {
                self.metrics.key_lookup(backend, Lookup::Negative);
                Err(error)
            }
            Decision::Fetch => {
                let (result, lookup) = self.fetch_while_waiting(&slot, source).await;
                self.metrics.key_lookup(backend, lookup);
                result
            }
        }
    }

    fn decide(&self, slot: &Slot, source: &ResolvedKeySource) -> Decision {
        let now = Instant::now();
        let mut state = lock(&slot.state);
        let recent_failure = state
            .failure
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) < self.settings.negative_ttl)
            .map(|(error, _)| error.clone());
        if let Some(good) = &state.good {
            let Some(fresh_for) = self.freshness(source) else {
                return Decision::Hit(good.key.clone());
            };
            let age = now.duration_since(good.confirmed);
            let recheck = matches!(source, ResolvedKeySource::File(_))
                && good.generation != self.file_generation.load(Ordering::Relaxed);
            if age < fresh_for && !recheck {
                return Decision::Hit(good.key.clone());
            }
            let usable = age < fresh_for + self.settings.serve_stale;
            let key = good.key.clone();
            if usable && recent_failure.is_some() {
                return Decision::Stale {
                    key,
                    refresh: false,
                };
            }
            // A file is revalidated by a `stat` while the message waits: it costs microseconds,
            // once per ttl.
            if usable && !matches!(source, ResolvedKeySource::File(_)) {
                let refresh = !std::mem::replace(&mut state.refreshing, true);
                return Decision::Stale { key, refresh };
            }
        }
        match recent_failure {
            Some(error) => Decision::Negative(error),
            None => Decision::Fetch,
        }
    }

    /// How long a key from `source` is used without asking its backend again; `None`: forever.
    fn freshness(&self, source: &ResolvedKeySource) -> Option<Duration> {
        match source {
            ResolvedKeySource::Data(_) => None,
            // A Transit or PKCS#11 key is a handle and a public key: re-read every ttl, so a
            // new Transit version or a replaced token key is picked up.
            ResolvedKeySource::File(_)
            | ResolvedKeySource::Vault(_)
            | ResolvedKeySource::Event { .. }
            | ResolvedKeySource::Transit(_)
            | ResolvedKeySource::Pkcs11(_) => Some(self.settings.ttl),
        }
    }

    /// Fetches while the message waits; also says how the lookup was answered in the end.
    async fn fetch_while_waiting(
        &self,
        slot: &Slot,
        source: &ResolvedKeySource,
    ) -> (Result<Arc<SigningKey>, KeyError>, Lookup) {
        let _one_fetch = slot.fetching.lock().await;
        // Whoever held the lock before may have answered for us (the message still waited).
        match self.decide(slot, source) {
            Decision::Hit(key) => return (Ok(key), Lookup::Miss),
            Decision::Stale { key, .. } => return (Ok(key), Lookup::Stale),
            Decision::Negative(error) => return (Err(error), Lookup::Negative),
            Decision::Fetch => {}
        }
        match self.fetch_and_store(slot, source).await {
            Ok((key, Fetched::Unchanged)) => (Ok(key), Lookup::Revalidated),
            Ok((key, _)) => (Ok(key), Lookup::Miss),
            Err(error) => match self.stale_key(slot, source) {
                Some(key) => (Ok(key), Lookup::Stale),
                None => (Err(error), Lookup::Miss),
            },
        }
    }

    fn refresh_in_background(&self, slot: Arc<Slot>, source: ResolvedKeySource) {
        let cache = self.detached();
        tokio::spawn(async move {
            let _one_fetch = slot.fetching.lock().await;
            let _ = cache.fetch_and_store(&slot, &source).await;
            lock(&slot.state).refreshing = false;
        });
    }

    /// A handle for a background task: the same slots, backends and metrics.
    fn detached(&self) -> KeyCache {
        KeyCache {
            settings: self.settings.clone(),
            slots: self.slots.clone(),
            backends: self.backends.clone(),
            metrics: self.metrics.clone(),
            file_generation: self.file_generation.clone(),
        }
    }

    /// Asks the backend and records the answer in the slot; the key is returned with what the
    /// backend answered (`Fetched::New` without its key, or `Unchanged`).
    async fn fetch_and_store(
        &self,
        slot: &Slot,
        source: &ResolvedKeySource,
    ) -> Result<(Arc<SigningKey>, Fetched), KeyError> {
        let previous = lock(&slot.state).good.as_ref().and_then(|g| g.stamp);
        // Read before asking: a reload during the `stat` asks for another one.
        let generation = self.file_generation.load(Ordering::Relaxed);
        let started = Instant::now();
        let result = self.backends.fetch(source, previous.as_ref()).await;
        self.metrics.key_fetch(
            source.backend(),
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        let now = Instant::now();
        let mut state = lock(&slot.state);
        match result {
            Ok(Fetched::New { key, stamp }) => {
                if state.failure.take().is_some() {
                    tracing::info!(source = %source, "key source works again");
                }
                state.good = Some(Good {
                    key: key.clone(),
                    stamp,
                    confirmed: now,
                    generation,
                });
                Ok((key.clone(), Fetched::New { key, stamp }))
            }
            Ok(Fetched::Unchanged) => match state.good.as_mut() {
                Some(good) => {
                    good.confirmed = now;
                    good.generation = generation;
                    Ok((good.key.clone(), Fetched::Unchanged))
                }
                None => Err(KeyError::Internal("unchanged key without a cached key")),
            },
            Err(error) => {
                match &state.good {
                    Some(good) => tracing::warn!(
                        source = %source,
                        error = %error,
                        key_age = %humantime::format_duration(Duration::from_secs(now.duration_since(good.confirmed).as_secs())),
                        "key fetch failed; the last good key is used while it is within ttl + serve_stale"
                    ),
                    None => tracing::warn!(source = %source, error = %error, "key fetch failed"),
                }
                state.failure = Some((error.clone(), now));
                Err(error)
            }
        }
    }

    /// The last good key if it is still within its stale window.
    fn stale_key(&self, slot: &Slot, source: &ResolvedKeySource) -> Option<Arc<SigningKey>> {
        let state = lock(&slot.state);
        let good = state.good.as_ref()?;
        let window = self.freshness(source)? + self.settings.serve_stale;
        (good.confirmed.elapsed() < window).then(|| good.key.clone())
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Every update of a State is a few field writes that cannot panic half-way.
    state.lock().unwrap_or_else(|p| p.into_inner())
}
