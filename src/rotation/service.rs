//! The rotation task: every `check_interval`, for every rotated signature, one step further
//! along its schedule, each step recorded in the state file before it takes effect:
//!
//! 1. the active key is older than `rotate_after` (or `signet-milter rotate` asked): choose the
//!    next selector, write it down, store a new private key there;
//! 2. publish its record (RFC 2136, or tell the operator);
//! 3. ask the DNS gate; after `confirmations` looks in a row in which every server serves the
//!    record, and not before `activate_after`, it becomes active and the old key retiring;
//! 4. after `overlap`, the retired key's record is revoked (`p=` empty) or removed;
//! 5. after `remove_after`, its record is gone and its private key archived or deleted.
//!
//! A step that fails (DNS update refused, server down, Vault sealed) is logged and counted and
//! tried again at the next look; nothing before it is undone, so the active key keeps signing.

use super::clock::{self, ClockWatch, Skew};
use super::gate::Gate;
use super::keystore;
use super::publish::{Publisher, revoked_value, zone_line};
use super::state::{KeyRecord, Phase, SlotState, StateDir, StateError, StateLock};
use super::store::Store;
use super::{Slot, slots};
use crate::config::rotation::{RetiredRecord, SelectorScheme};
use crate::config::{RotationSettings, SignatureLabel};
use crate::keys::vault::VaultPool;
use crate::metrics::{Metrics, RotationSummary};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// The background worker (also run once by `signet-milter rotate`).
pub struct Rotator {
    runtime: Arc<ArcSwap<Runtime>>,
    /// The wall clock (Unix ms); replaceable so a test can step it.
    wall: fn() -> u64,
    clock: ClockWatch,
    gate: Gate,
    /// Consecutive gate looks in which a pending key's record was served everywhere.
    confirmed: HashMap<(SignatureLabel, String), u32>,
    /// Rebuilt when the settings it comes from change.
    publisher: Option<(
        Option<crate::config::rotation::DnsUpdateSettings>,
        Arc<Publisher>,
    )>,
    vault: Option<(crate::config::VaultSettings, Arc<VaultPool>)>,
}

/// What a run did to one signature, for `rotate` and the tests.
#[derive(Debug, Clone)]
pub struct Report {
    pub label: SignatureLabel,
    pub domain: String,
    pub events: Vec<String>,
    pub state: Option<SlotState>,
}

impl Rotator {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Rotator {
            runtime,
            wall: clock::wall_ms,
            clock: ClockWatch::default(),
            gate: Gate::default(),
            confirmed: HashMap::new(),
            publisher: None,
            vault: None,
        }
    }

    /// The same, reading the wall clock from `wall` (tests step it to play a clock jump).
    pub fn with_wall_clock(runtime: Arc<ArcSwap<Runtime>>, wall: fn() -> u64) -> Self {
        Rotator {
            wall,
            ..Self::new(runtime)
        }
    }

    /// Runs until the process ends: one round now, then one every `check_interval` (read
    /// again each round, so a reload that changes it takes effect). In between, every
    /// [`FOLLOW_INTERVAL`], a change of a state file by someone else (`signet-milter rotate`)
    /// is taken into the signing view at once, without waiting for the next round.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut next_round = Instant::now();
            let mut seen = Vec::new();
            loop {
                if Instant::now() >= next_round {
                    self.round(None).await;
                    seen = state_fingerprint(&self.runtime.load().config);
                    let interval = self
                        .runtime
                        .load()
                        .config
                        .rotation
                        .as_ref()
                        .map_or(FOLLOW_INTERVAL, |r| r.check_interval);
                    next_round = Instant::now() + interval;
                } else {
                    let runtime = self.runtime.load_full();
                    let now = state_fingerprint(&runtime.config);
                    if now != seen {
                        follow_state(&runtime).await;
                        seen = now;
                    }
                }
                let until_round = next_round.saturating_duration_since(Instant::now());
                tokio::time::sleep(until_round.min(FOLLOW_INTERVAL)).await;
            }
        })
    }

    /// One round over every rotated signature; `force`: start a new key for these now.
    pub async fn round(&mut self, force: Option<&[SignatureLabel]>) -> Vec<Report> {
        let runtime = self.runtime.load_full();
        let metrics = runtime.env.metrics.clone();
        let Some(settings) = runtime.config.rotation.clone() else {
            // Rotation removed by a reload: entries sign with their configured selector again.
            runtime.rotation.selected().replace(BTreeMap::new());
            return Vec::new();
        };
        let now = (self.wall)();
        let skew = self.clock.observe(now, Instant::now());
        let vault = self.vault(&runtime);
        let store = Store::new(&settings, vault.clone());
        let lock = match store.local.lock(force.is_some()) {
            Ok(lock) => lock,
            Err(StateError::Busy { .. }) => return Vec::new(),
            Err(e) => {
                error!("rotation: {e}");
                metrics.rotation_failure("state");
                return Vec::new();
            }
        };
        let publisher = match self.publisher(&settings) {
            Ok(p) => p,
            Err(e) => {
                error!("rotation: {e}; no key is rotated until this is fixed");
                metrics.rotation_failure("publish");
                return Vec::new();
            }
        };
        let mut reports = Vec::new();
        let previous = runtime.rotation.selected().load();
        let mut selections = BTreeMap::new();
        for slot in slots(&runtime.config) {
            let forced = force.is_some_and(|f| f.contains(&slot.label));
            let mut step = Step {
                runtime: &runtime,
                settings: &settings,
                store: &store,
                lock: &lock,
                publisher: &publisher,
                vault: &vault,
                gate: &mut self.gate,
                confirmed: &mut self.confirmed,
                metrics: &metrics,
                slot: &slot,
                now,
                version: 0,
                conflicted: false,
                events: Vec::new(),
            };
            let state = step.run(skew, forced).await;
            if state.is_some() {
                runtime
                    .rotation
                    .selected()
                    .set_readable(std::iter::once(&slot.label));
            }
            match state.as_ref() {
                Some(state) => {
                    if let Some(active) = state.active() {
                        selections.insert(slot.label.clone(), active.selector.clone());
                    }
                }
                // Unreadable state: keep signing with the selector in use, never fall back
                // to the configured one (it may have been revoked long ago).
                None => {
                    if let Some(selector) = previous.selectors.get(&slot.label) {
                        selections.insert(slot.label.clone(), selector.clone());
                    }
                }
            }
            reports.push(Report {
                label: slot.label.clone(),
                domain: slot.domain.clone(),
                events: step.events,
                state,
            });
        }
        drop(lock);
        if runtime.rotation.selected().replace(selections) {
            info!("rotation: the signing view now uses the newly active keys");
        }
        metrics.set_rotation(summarize(&reports, &settings, now));
        reports
    }

    fn publisher(&mut self, settings: &RotationSettings) -> Result<Arc<Publisher>, String> {
        if let Some((made_from, publisher)) = &self.publisher
            && *made_from == settings.dns_update
        {
            return Ok(publisher.clone());
        }
        let publisher = Arc::new(Publisher::new(settings.dns_update.as_ref())?);
        self.publisher = Some((settings.dns_update.clone(), publisher.clone()));
        Ok(publisher)
    }

    fn vault(&mut self, runtime: &Runtime) -> Arc<VaultPool> {
        let settings = &runtime.config.keys.vault;
        if let Some((made_from, pool)) = &self.vault
            && made_from == settings
        {
            return pool.clone();
        }
        let pool = Arc::new(VaultPool::new(
            settings,
            runtime.config.keys.cache.negative_ttl,
        ));
        self.vault = Some((settings.clone(), pool.clone()));
        pool
    }
}

/// How often the state files are looked at (one `stat` each) for changes made by a command.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The modification time and size of every rotated signature's state file.
fn state_fingerprint(config: &crate::config::Config) -> Vec<Option<(std::time::SystemTime, u64)>> {
    let Some(settings) = &config.rotation else {
        return Vec::new();
    };
    if settings.state_vault.is_some() {
        // Nothing local to watch: rounds read the shared state every check_interval.
        return Vec::new();
    }
    let store = StateDir::new(&settings.state_directory);
    slots(config)
        .iter()
        .map(|slot| {
            let meta = std::fs::metadata(store.file(&slot.domain, &slot.label)).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Takes the active selectors the state files record into the signing view.
async fn follow_state(runtime: &Runtime) {
    match super::recorded_selections(&runtime.config).await {
        Ok(selections) => {
            let slots = super::slots(&runtime.config);
            runtime
                .rotation
                .selected()
                .set_readable(slots.iter().map(|s| &s.label));
            let mut merged = runtime.rotation.selected().load().selectors.clone();
            merged.extend(selections);
            if runtime.rotation.selected().replace(merged) {
                info!(
                    "rotation: the state changed outside the milter (signet-milter rotate); the signing view follows it"
                );
            }
        }
        Err(e) => warn!("rotation: {e}; the signing view stays as it is"),
    }
}

/// One signature's round.
struct Step<'a> {
    runtime: &'a Runtime,
    settings: &'a RotationSettings,
    store: &'a Store,
    lock: &'a StateLock,
    publisher: &'a Publisher,
    vault: &'a VaultPool,
    gate: &'a mut Gate,
    confirmed: &'a mut HashMap<(SignatureLabel, String), u32>,
    metrics: &'a Metrics,
    slot: &'a Slot,
    now: u64,
    /// The version the state was read at (Vault state; 0 for a file).
    version: u64,
    /// Another milter changed the state since it was read: no further step this round.
    conflicted: bool,
    events: Vec<String>,
}

impl Step<'_> {
    /// Logs a transition or a failure with the signature it concerns, and keeps it for the report.
    fn event(&mut self, failed: bool, text: String) {
        let (domain, entry) = (&self.slot.domain, self.slot.label.to_string());
        if failed {
            warn!(domain = %domain, entry = %entry, "rotation: {text}");
        } else {
            info!(domain = %domain, entry = %entry, "rotation: {text}");
        }
        self.events.push(text);
    }

    async fn save(&mut self, state: &SlotState) -> bool {
        if self.conflicted {
            return false;
        }
        let mut version = self.version;
        match self.store.save(self.lock, state, &mut version).await {
            Ok(()) => {
                self.version = version;
                self.write_zone_fragment(state);
                true
            }
            Err(e @ StateError::Conflict { .. }) => {
                self.conflicted = true;
                self.metrics.rotation_failure("state");
                self.event(false, e.to_string());
                false
            }
            Err(e) => {
                self.metrics.rotation_failure("state");
                self.event(
                    true,
                    format!("{e}; nothing changes until it can be written"),
                );
                false
            }
        }
    }

    fn record_name(&self, selector: &str) -> String {
        self.settings
            .record_name
            .render(&self.slot.domain, selector)
    }

    async fn run(&mut self, skew: Option<Skew>, forced: bool) -> Option<SlotState> {
        let mut state = match self.store.load(&self.slot.domain, &self.slot.label).await {
            Ok(Some((state, version))) => {
                self.version = version;
                state
            }
            Ok(None) => {
                let state = self.bootstrap().await;
                if !self.save(&state).await {
                    return self.reread().await;
                }
                state
            }
            Err(e) => {
                self.metrics.rotation_failure("state");
                self.event(
                    true,
                    format!("{e}; this signature does not rotate until it is fixed"),
                );
                return None;
            }
        };
        self.watch_clock(&mut state, skew);
        if forced {
            state.rotate_now = true;
        }
        let timed = self.now >= state.hold_until_ms;
        // Each step works on what the one before left; a step that cannot finish returns.
        if self.start_next_key(&mut state, timed).await
            && self.store_key(&mut state).await
            && self.publish(&mut state).await
        {
            self.activate_when_proven(&mut state, timed).await;
        }
        if timed {
            self.revoke_retired(&mut state).await;
            self.remove_revoked(&mut state).await;
        }
        if self.conflicted || !self.save(&state).await {
            return self.reread().await;
        }
        Some(state)
    }

    /// The state as stored, after a write that did not happen (another milter's step, or a
    /// failure): the view must follow what is recorded, not what this round wanted.
    async fn reread(&mut self) -> Option<SlotState> {
        match self.store.load(&self.slot.domain, &self.slot.label).await {
            Ok(found) => found.map(|(state, _)| state),
            Err(_) => None,
        }
    }

    /// The state of a signature seen for the first time: its configured key is active.
    async fn bootstrap(&mut self) -> SlotState {
        let selector = &self.slot.template.selector;
        let mut state =
            SlotState::bootstrap(&self.slot.domain, &self.slot.label, selector, self.now);
        let source = self.slot.template.key.resolve(&self.slot.domain, selector);
        match self.runtime.keys.get(&source).await {
            Ok(key) => state.keys[0].record = Some(key.dns_record()),
            Err(e) => self.event(
                true,
                format!("the configured key {selector} cannot be read yet: {e}"),
            ),
        }
        self.event(
            false,
            format!("rotation starts with the configured key {selector} as the active key"),
        );
        state
    }

    fn watch_clock(&mut self, state: &mut SlotState, skew: Option<Skew>) {
        match skew {
            Some(Skew::JumpedForward { by }) => {
                state.hold_until_ms = state
                    .hold_until_ms
                    .max(self.now.saturating_add(clock::ms(by)));
                self.metrics.rotation_failure("clock");
                self.event(true, format!(
                    "the wall clock jumped {} ahead of the monotonic clock; no timed step before it has caught up",
                    humantime::format_duration(by)
                ));
            }
            Some(Skew::WentBack { by }) => {
                self.metrics.rotation_failure("clock");
                self.event(
                    true,
                    format!(
                        "the wall clock went back {}; windows open later",
                        humantime::format_duration(by)
                    ),
                );
            }
            None => {}
        }
        if self.now + 1000 < state.last_seen_ms {
            self.event(true, format!(
                "the wall clock is {} behind the last time recorded in the state; windows open later",
                humantime::format_duration(std::time::Duration::from_millis(state.last_seen_ms - self.now))
            ));
        }
        state.last_seen_ms = state.last_seen_ms.max(self.now);
    }

    /// Step 1. Returns whether there is a pending key to work on.
    async fn start_next_key(&mut self, state: &mut SlotState, timed: bool) -> bool {
        if state.pending().is_some() {
            state.rotate_now = false;
            return true;
        }
        let due = state.active().is_none_or(|active| {
            clock::elapsed(
                active.activated_ms.unwrap_or(active.created_ms),
                self.settings.rotate_after,
                self.now,
            )
        });
        if !(state.rotate_now || (timed && due)) {
            return false;
        }
        let Some(selector) = next_selector(&self.settings.selector, state, self.now) else {
            self.metrics.rotation_failure("generate");
            self.event(true, "no free selector: every name of selectors is still in use by a key whose record may be live".into());
            return false;
        };
        let why = if state.rotate_now {
            "requested"
        } else {
            "the active key reached rotate_after"
        };
        state.counter += 1;
        state.rotate_now = false;
        state.keys.push(KeyRecord {
            selector: selector.clone(),
            phase: Phase::Pending,
            created_ms: self.now,
            not_before_ms: self
                .now
                .saturating_add(clock::ms(self.settings.activate_after)),
            stored: false,
            record: None,
            published_ms: None,
            activated_ms: None,
            retired_ms: None,
            revoked_ms: None,
            bootstrap: false,
        });
        // The selector is written down before its key exists, so a crash cannot make two.
        if !self.save(state).await {
            state.keys.pop();
            return false;
        }
        self.event(false, format!("new key {selector} pending ({why})"));
        true
    }

    /// Step 1, second half: the private key.
    async fn store_key(&mut self, state: &mut SlotState) -> bool {
        let Some(pending) = state.pending().cloned() else {
            return false;
        };
        if pending.stored {
            return true;
        }
        let current = match state.active() {
            Some(active) => {
                let source = self
                    .slot
                    .template
                    .key
                    .resolve(&self.slot.domain, &active.selector);
                self.runtime.keys.get(&source).await.ok()
            }
            None => None,
        };
        let kind = keystore::next_kind(self.settings.algorithm, current.as_deref());
        match keystore::store_new_key(
            &self.slot.template.key,
            &self.slot.domain,
            &pending.selector,
            kind,
            self.vault,
        )
        .await
        {
            Ok(record) => {
                if let Some(key) = state.key_mut(&pending.selector) {
                    key.stored = true;
                    key.record = Some(record);
                }
                if !self.save(state).await {
                    return false;
                }
                let source = self
                    .slot
                    .template
                    .key
                    .resolve(&self.slot.domain, &pending.selector);
                self.event(
                    false,
                    format!("private key of {} stored at {source}", pending.selector),
                );
                true
            }
            Err(e) => {
                self.metrics.rotation_failure("generate");
                self.event(
                    true,
                    format!(
                        "cannot store the key of {}: {e}; the active key keeps signing",
                        pending.selector
                    ),
                );
                false
            }
        }
    }

    /// Step 2.
    async fn publish(&mut self, state: &mut SlotState) -> bool {
        let Some(pending) = state.pending().cloned() else {
            return false;
        };
        if pending.published_ms.is_some() {
            return true;
        }
        let Some(record) = pending.record.clone() else {
            return false;
        };
        let name = self.record_name(&pending.selector);
        match self
            .publisher
            .publish(&name, &self.slot.domain, &pending.selector, &record)
            .await
        {
            Ok(how) => {
                if let Some(key) = state.key_mut(&pending.selector) {
                    key.published_ms = Some(self.now);
                }
                if !self.save(state).await {
                    return false;
                }
                self.event(false, format!("record of {}: {how}", pending.selector));
                true
            }
            Err(e) => {
                self.metrics.rotation_failure("publish");
                self.event(
                    true,
                    format!("{e}; the active key keeps signing, the update is tried again"),
                );
                false
            }
        }
    }

    /// Step 3.
    async fn activate_when_proven(&mut self, state: &mut SlotState, timed: bool) {
        let Some(pending) = state.pending().cloned() else {
            return;
        };
        let id = (self.slot.label.clone(), pending.selector.clone());
        let source = self
            .slot
            .template
            .key
            .resolve(&self.slot.domain, &pending.selector);
        let key = match self.runtime.keys.get(&source).await {
            Ok(key) => key,
            Err(e) => {
                self.metrics.rotation_failure("gate");
                self.event(
                    true,
                    format!("cannot load the pending key {}: {e}", pending.selector),
                );
                return;
            }
        };
        let name = self.record_name(&pending.selector);
        let zone = match &self.settings.dns_update {
            Some(u) => u.zone.render(&self.slot.domain, &pending.selector),
            None => self.slot.domain.clone(),
        };
        let verdict = self
            .gate
            .check(
                &self.settings.dns_servers,
                self.settings.resolver,
                &zone,
                &name,
                &key,
            )
            .await;
        let confirmations = self.confirmed.entry(id.clone()).or_insert(0);
        if verdict.all_match() {
            *confirmations += 1;
        } else {
            *confirmations = 0;
        }
        let confirmations = *confirmations;
        let age = self.now.saturating_sub(pending.created_ms);
        if !verdict.all_match() {
            let late = age >= clock::ms(self.settings.pending_warning);
            if late {
                self.metrics.rotation_failure("gate");
            }
            self.event(
                late,
                format!(
                    "{} not yet served everywhere ({}){}",
                    name,
                    verdict.summary(),
                    if late {
                        "; pending longer than pending_warning"
                    } else {
                        ""
                    }
                ),
            );
            return;
        }
        if confirmations < self.settings.confirmations || !timed || self.now < pending.not_before_ms
        {
            self.event(false, format!(
                "{name} served by every server ({confirmations} of {} looks in a row); activation not before {}",
                self.settings.confirmations,
                format_ms(pending.not_before_ms.max(state.hold_until_ms))
            ));
            return;
        }
        let previous = state.active().map(|a| a.selector.clone());
        for key in &mut state.keys {
            if key.phase == Phase::Active {
                key.phase = Phase::Retiring;
                key.retired_ms = Some(self.now);
            } else if key.selector == pending.selector {
                key.phase = Phase::Active;
                key.activated_ms = Some(self.now);
            }
        }
        if !self.save(state).await {
            // Not recorded, so not in effect: back to what the file says.
            if let Some(on_disk) = self.reread().await {
                *state = on_disk;
            }
            return;
        }
        self.confirmed.remove(&id);
        self.metrics.rotation_transition(Phase::Active);
        self.event(false, format!(
            "key {} active: its record was served by every server on {confirmations} look{} in a row ({})",
            pending.selector,
            if confirmations == 1 { "" } else { "s" },
            verdict.summary()
        ));
        if let Some(previous) = previous {
            self.metrics.rotation_transition(Phase::Retiring);
            self.event(false, format!(
                "key {previous} retiring: it no longer signs; its record stays published for {}",
                humantime::format_duration(self.settings.overlap)
            ));
        }
    }

    /// Step 4.
    async fn revoke_retired(&mut self, state: &mut SlotState) {
        let due: Vec<KeyRecord> = state
            .keys
            .iter()
            .filter(|k| {
                k.phase == Phase::Retiring
                    && clock::elapsed(k.retired_ms.unwrap_or(0), self.settings.overlap, self.now)
            })
            .cloned()
            .collect();
        for key in due {
            let name = self.record_name(&key.selector);
            let result = match (self.settings.retired_record, &key.record) {
                (RetiredRecord::Revoke, Some(record)) => {
                    let revoked = revoked_value(record);
                    self.publisher
                        .publish(&name, &self.slot.domain, &key.selector, &revoked)
                        .await
                }
                (RetiredRecord::Revoke, None) => {
                    self.publisher
                        .publish(&name, &self.slot.domain, &key.selector, "v=DKIM1; p=")
                        .await
                }
                (RetiredRecord::Remove, _) => {
                    self.publisher
                        .remove(&name, &self.slot.domain, &key.selector)
                        .await
                }
            };
            match result {
                Ok(how) => {
                    if let Some(k) = state.key_mut(&key.selector) {
                        k.phase = Phase::Revoked;
                        k.revoked_ms = Some(self.now);
                    }
                    if self.save(state).await {
                        self.metrics.rotation_transition(Phase::Revoked);
                        self.event(
                            false,
                            format!("key {} revoked after its overlap: {how}", key.selector),
                        );
                    }
                }
                Err(e) => {
                    self.metrics.rotation_failure("revoke");
                    self.event(
                        true,
                        format!("cannot revoke {}: {e}; tried again", key.selector),
                    );
                }
            }
        }
    }

    /// Step 5.
    async fn remove_revoked(&mut self, state: &mut SlotState) {
        let due: Vec<KeyRecord> = state
            .keys
            .iter()
            .filter(|k| {
                k.phase == Phase::Revoked
                    && clock::elapsed(
                        k.revoked_ms.unwrap_or(0),
                        self.settings.remove_after,
                        self.now,
                    )
            })
            .cloned()
            .collect();
        for key in due {
            if self.settings.retired_record == RetiredRecord::Revoke {
                let name = self.record_name(&key.selector);
                if let Err(e) = self
                    .publisher
                    .remove(&name, &self.slot.domain, &key.selector)
                    .await
                {
                    self.metrics.rotation_failure("revoke");
                    self.event(
                        true,
                        format!(
                            "cannot remove the revoked record of {}: {e}; tried again",
                            key.selector
                        ),
                    );
                    continue;
                }
            }
            let disposed = if key.bootstrap
                && !self
                    .slot
                    .template
                    .key
                    .resolve(&self.slot.domain, &key.selector)
                    .to_string()
                    .starts_with("file ")
            {
                Ok("left in place (the configured key)".to_string())
            } else {
                keystore::dispose(
                    &self.slot.template.key,
                    &self.slot.domain,
                    &key.selector,
                    self.settings.retired_private_key,
                    &self.store.local,
                    self.vault,
                )
                .await
            };
            match disposed {
                Ok(how) => {
                    state.keys.retain(|k| k.selector != key.selector);
                    if self.save(state).await {
                        self.event(
                            false,
                            format!(
                                "key {} removed: record gone, private key {how}",
                                key.selector
                            ),
                        );
                    }
                }
                Err(e) => {
                    self.metrics.rotation_failure("remove");
                    self.event(
                        true,
                        format!(
                            "cannot dispose of the private key of {}: {e}; tried again",
                            key.selector
                        ),
                    );
                }
            }
        }
    }

    /// `<state>/<domain>/records.zone`: what DNS should hold for this signature now.
    fn write_zone_fragment(&self, state: &SlotState) {
        let mut text = format!(
            "; The DKIM records signet-milter wants for {} ({}), written {}.\n; Records reach DNS through {}.\n",
            state.domain,
            state.entry,
            format_ms(self.now),
            self.publisher.describe()
        );
        for key in &state.keys {
            let name = self.record_name(&key.selector);
            let line = match (key.phase, &key.record) {
                (Phase::Revoked, Some(record))
                    if self.settings.retired_record == RetiredRecord::Revoke =>
                {
                    zone_line(&name, &revoked_value(record))
                }
                (Phase::Revoked, _) => format!("; {name}. removed"),
                (_, Some(record)) => zone_line(&name, record),
                (_, None) => format!("; {name}. (record not known yet)"),
            };
            text.push_str(&format!("; {} key {}\n{line}\n", key.phase, key.selector));
        }
        let path = self
            .store
            .local
            .subdir(&[&state.domain])
            .join(match &self.slot.label {
                SignatureLabel::Domain(_) => "records.zone".to_string(),
                SignatureLabel::Signature(name) => format!("records-{name}.zone"),
            });
        if let Err(e) = super::state::write_atomically(&path, text.as_bytes(), 0o644) {
            warn!("rotation: {e}");
        }
    }
}

/// The next selector: the pattern for now, or the first name of the list no known key uses.
fn next_selector(scheme: &SelectorScheme, state: &SlotState, now_ms: u64) -> Option<String> {
    match scheme {
        SelectorScheme::Alternate(names) => {
            let current = state.active().map(|a| a.selector.as_str());
            let start = current
                .and_then(|c| names.iter().position(|n| n == c))
                .map_or(0, |i| i + 1);
            (0..names.len())
                .map(|i| &names[(start + i) % names.len()])
                .find(|n| !state.uses(n))
                .cloned()
        }
        SelectorScheme::Pattern(pattern) => {
            let render = |counter: u64| {
                pattern
                    .replace("{date}", &format_date(now_ms, "%Y%m%d"))
                    .replace("{datetime}", &format_date(now_ms, "%Y%m%d%H%M%S"))
                    .replace("{counter}", &counter.to_string())
            };
            // The same day twice (a rotation undone and redone): a suffix keeps names unique.
            let base = render(state.counter + 1);
            if !state.uses(&base) {
                return Some(base);
            }
            (2..1000)
                .map(|n| format!("{base}-{n}"))
                .find(|s| !state.uses(s))
        }
    }
}

fn format_date(ms: u64, format: &str) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime(format).to_string())
        .unwrap_or_else(|_| "0".into())
}

/// A time for people: RFC 3339, UTC.
pub fn format_ms(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn summarize(reports: &[Report], settings: &RotationSettings, now: u64) -> RotationSummary {
    let mut summary = RotationSummary::default();
    for key in reports
        .iter()
        .filter_map(|r| r.state.as_ref())
        .flat_map(|s| &s.keys)
    {
        let age = std::time::Duration::from_millis(now.saturating_sub(key.created_ms));
        match key.phase {
            Phase::Pending => {
                summary.pending += 1;
                summary.oldest_pending = summary.oldest_pending.max(Some(age));
                if age >= settings.pending_warning {
                    summary.pending_overdue += 1;
                }
            }
            Phase::Active => {
                summary.active += 1;
                let active_age = std::time::Duration::from_millis(
                    now.saturating_sub(key.activated_ms.unwrap_or(key.created_ms)),
                );
                summary.oldest_active = summary.oldest_active.max(Some(active_age));
            }
            Phase::Retiring => summary.retiring += 1,
            Phase::Revoked => summary.revoked += 1,
        }
    }
    summary.unreadable = reports.iter().filter(|r| r.state.is_none()).count();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(selectors: &[(&str, Phase)]) -> SlotState {
        let label = SignatureLabel::Domain("example.com".into());
        let mut state = SlotState::bootstrap("example.com", &label, selectors[0].0, 0);
        state.keys[0].phase = selectors[0].1;
        for (s, phase) in &selectors[1..] {
            let mut k = state.keys[0].clone();
            k.selector = s.to_string();
            k.phase = *phase;
            state.keys.push(k);
        }
        state
    }

    #[test]
    fn alternate_selectors_skip_names_whose_record_may_be_live() {
        let scheme = SelectorScheme::Alternate(vec!["s1".into(), "s2".into()]);
        let state = state_with(&[("s1", Phase::Active)]);
        assert_eq!(next_selector(&scheme, &state, 0).as_deref(), Some("s2"));
        let state = state_with(&[("s2", Phase::Active), ("s1", Phase::Retiring)]);
        assert_eq!(next_selector(&scheme, &state, 0), None);
        let state = state_with(&[("s2", Phase::Active)]);
        assert_eq!(next_selector(&scheme, &state, 0).as_deref(), Some("s1"));
    }

    #[test]
    fn pattern_selectors_are_dated_and_never_reused() {
        // 2026-12-01T20:33:00Z
        let now = 1_796_157_180_000;
        let scheme = SelectorScheme::Pattern("s{date}".into());
        let state = state_with(&[("s1", Phase::Active)]);
        assert_eq!(
            next_selector(&scheme, &state, now).as_deref(),
            Some("s20261201")
        );
        let state = state_with(&[("s1", Phase::Active), ("s20261201", Phase::Retiring)]);
        assert_eq!(
            next_selector(&scheme, &state, now).as_deref(),
            Some("s20261201-2")
        );
        let scheme = SelectorScheme::Pattern("k{counter}-{datetime}".into());
        let mut state = state_with(&[("s1", Phase::Active)]);
        state.counter = 4;
        assert_eq!(
            next_selector(&scheme, &state, now).as_deref(),
            Some("k5-20261201203300")
        );
    }
}
