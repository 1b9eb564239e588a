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
//! Slots live in a moka cache bounded by `capacity`; one idle past any use is dropped. A
//! signature whose source is always the same (an exact `[domain]` entry's) reaches its slot
//! through a [`SlotHandle`] instead: no path built, hashed and compared, no moka bookkeeping.
//! A hit through a handle needs the slot to have been looked up through the cache within half
//! its idle time, so that moka never drops a slot in use; any other answer goes through the
//! cache as usual.
//!
//! Every lookup is counted as what it was: a hit (no backend asked), a revalidation (a file's
//! `stat` showed it unchanged), a miss (the key was read or fetched while the message waited),
//! stale, or negative.

use super::{Backends, Fetched, KeyError};
use crate::config::CacheSettings;
use crate::config::keysource::{Backend, ResolvedKeySource};
use crate::keys::SigningKey;
use crate::keys::file::FileStamp;
use crate::metrics::{Lookup, Metrics};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
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

struct Slot {
    state: Mutex<State>,
    /// Held while fetching, so that one fetch runs per source at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Where the key comes from: how it is judged fresh, and its name in metrics. One byte, so
    /// that the slot stays small: a 100,000-key configuration has 100,000 of them.
    backend: Backend,
}

impl Slot {
    fn for_source(source: &ResolvedKeySource) -> Slot {
        Slot {
            state: Mutex::default(),
            fetching: tokio::sync::Mutex::default(),
            backend: source.backend(),
        }
    }
}

#[derive(Default)]
struct State {
    good: Option<Good>,
    /// Boxed: failures are rare, and a `KeyError` is 88 bytes in every slot.
    failure: Option<Box<Failure>>,
    refreshing: bool,
    /// When the slot was last looked up through the cache's index (which keeps it from being
    /// dropped as idle).
    indexed: Option<Instant>,
}

/// A direct way to the cache slot of one key source, for a signature that always resolves to
/// that source ([`crate::config::KeyHandle`]). Empty until the first lookup through
/// the cache; a slot the cache dropped (idle, or evicted) is not kept alive by it.
#[derive(Default)]
pub struct SlotHandle(Mutex<Weak<Slot>>);

impl SlotHandle {
    fn slot(&self) -> Option<Arc<Slot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).upgrade()
    }

    fn set(&self, slot: &Arc<Slot>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(slot);
    }
}

/// One [`SlotHandle`] per [`crate::config::KeyHandle`] of a signing table, allocated a page
/// at a time on first use: 16 bytes per entry whose domain signs, nothing at startup (a
/// 100,000-entry table would otherwise start 1.6 MB larger).
pub struct SlotHandles {
    chunks: Box<[OnceLock<Box<[SlotHandle]>>]>,
    count: usize,
}

/// Handles per chunk: one 4 KiB page of them.
const HANDLES_PER_CHUNK: usize = 256;

impl SlotHandles {
    pub fn new(count: usize) -> Self {
        let chunks = count.div_ceil(HANDLES_PER_CHUNK);
        SlotHandles {
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
            count,
        }
    }

    pub fn get(&self, handle: crate::config::KeyHandle) -> Option<&SlotHandle> {
        let index = handle.0 as usize;
        if index >= self.count {
            return None;
        }
        let chunk = self.chunks[index / HANDLES_PER_CHUNK].get_or_init(|| {
            (0..HANDLES_PER_CHUNK)
                .map(|_| SlotHandle::default())
                .collect()
        });
        chunk.get(index % HANDLES_PER_CHUNK)
    }
}

/// The last fetch that failed, remembered for `negative_ttl`.
struct Failure {
    error: KeyError,
    at: Instant,
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
        moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(idle_time(settings))
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
        let slot = self.slot(source).await;
        self.lookup(slot, source).await
    }

    /// The key of the one source `handle` stands for: straight from its slot when that is a
    /// hit, else as [`KeyCache::get`] of `resolve()` (which `handle` then points at).
    pub async fn get_by_handle(
        &self,
        handle: &SlotHandle,
        resolve: impl FnOnce() -> ResolvedKeySource,
    ) -> Result<Arc<SigningKey>, KeyError> {
        if let Some(slot) = handle.slot()
            && let Some(key) = self.hit_without_index(&slot)
        {
            self.metrics.key_lookup(slot.backend.name(), Lookup::Hit);
            return Ok(key);
        }
        let source = resolve();
        let slot = self.slot(&source).await;
        handle.set(&slot);
        self.lookup(slot, &source).await
    }

    async fn slot(&self, source: &ResolvedKeySource) -> Arc<Slot> {
        self.slots
            .get_with_by_ref(source, async { Arc::new(Slot::for_source(source)) })
            .await
    }

    /// Answers a lookup of `source`, whose slot (just found through the index) is `slot`.
    async fn lookup(
        &self,
        slot: Arc<Slot>,
        source: &ResolvedKeySource,
    ) -> Result<Arc<SigningKey>, KeyError> {
        let backend = slot.backend.name();
        match self.decide(&slot) {
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

    /// The key if the lookup is a hit and the slot was seen by the index recently enough that
    /// moka will not drop it as idle meanwhile; `None`: look it up through the index.
    fn hit_without_index(&self, slot: &Slot) -> Option<Arc<SigningKey>> {
        let now = Instant::now();
        let state = lock(&slot.state);
        let indexed = state.indexed?;
        if now.duration_since(indexed) >= idle_time(&self.settings) / 2 {
            return None;
        }
        let good = state.good.as_ref()?;
        self.is_fresh(slot, good, now).then(|| good.key.clone())
    }

    /// Whether `good` may be served without asking its backend.
    fn is_fresh(&self, slot: &Slot, good: &Good, now: Instant) -> bool {
        let Some(fresh_for) = self.freshness(slot.backend) else {
            return true;
        };
        let recheck = slot.backend == Backend::File
            && good.generation != self.file_generation.load(Ordering::Relaxed);
        now.duration_since(good.confirmed) < fresh_for && !recheck
    }

    /// What to do with a lookup of `slot`, which every caller has just found through the index.
    fn decide(&self, slot: &Slot) -> Decision {
        let now = Instant::now();
        let mut state = lock(&slot.state);
        state.indexed = Some(now);
        let recent_failure = state
            .failure
            .as_ref()
            .filter(|failure| now.duration_since(failure.at) < self.settings.negative_ttl)
            .map(|failure| failure.error.clone());
        if let Some(good) = &state.good {
            if self.is_fresh(slot, good, now) {
                return Decision::Hit(good.key.clone());
            }
            let usable = self.freshness(slot.backend).is_some_and(|fresh_for| {
                now.duration_since(good.confirmed) < fresh_for + self.settings.serve_stale
            });
            let key = good.key.clone();
            if usable && recent_failure.is_some() {
                return Decision::Stale {
                    key,
                    refresh: false,
                };
            }
            // A file is revalidated by a `stat` while the message waits: it costs microseconds,
            // once per ttl.
            if usable && slot.backend != Backend::File {
                let refresh = !std::mem::replace(&mut state.refreshing, true);
                return Decision::Stale { key, refresh };
            }
        }
        match recent_failure {
            Some(error) => Decision::Negative(error),
            None => Decision::Fetch,
        }
    }

    /// How long a key read from `backend` is used before it is asked for again;
    /// `None`: forever. (A Transit or PKCS#11 key is a handle and a public key: re-read every
    /// ttl too, so that a new Transit version or a replaced token key is picked up.)
    fn freshness(&self, backend: Backend) -> Option<Duration> {
        match backend {
            Backend::Data => None,
            Backend::File
            | Backend::Vault
            | Backend::Callback
            | Backend::Transit
            | Backend::Pkcs11 => Some(self.settings.ttl),
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
        match self.decide(slot) {
            Decision::Hit(key) => return (Ok(key), Lookup::Miss),
            Decision::Stale { key, .. } => return (Ok(key), Lookup::Stale),
            Decision::Negative(error) => return (Err(error), Lookup::Negative),
            Decision::Fetch => {}
        }
        match self.fetch_and_store(slot, source).await {
            Ok((key, Fetched::Unchanged)) => (Ok(key), Lookup::Revalidated),
            Ok((key, _)) => (Ok(key), Lookup::Miss),
            Err(error) => match self.stale_key(slot) {
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
            source.backend().name(),
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
                state.failure = Some(Box::new(Failure {
                    error: error.clone(),
                    at: now,
                }));
                Err(error)
            }
        }
    }

    /// The last good key if it is still within its stale window.
    fn stale_key(&self, slot: &Slot) -> Option<Arc<SigningKey>> {
        let state = lock(&slot.state);
        let good = state.good.as_ref()?;
        let window = self.freshness(slot.backend)? + self.settings.serve_stale;
        (good.confirmed.elapsed() < window).then(|| good.key.clone())
    }
}

/// How long moka keeps a slot nobody looked up.
fn idle_time(settings: &CacheSettings) -> Duration {
    (settings.ttl + settings.serve_stale).max(settings.negative_ttl)
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Every update of a State is a few field writes that cannot panic half-way.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(all(test, target_pointer_width = "64"))]
mod size_tests {
    /// A configuration with 100,000 key files has 100,000 slots after its warm-up pass: a few
    /// bytes more per slot is a few hundred KiB more in every such milter.
    #[test]
    fn a_slot_stays_within_168_bytes() {
        let size = std::mem::size_of::<super::Slot>();
        assert!(size <= 168, "a cache slot grew to {size} bytes");
    }
}
