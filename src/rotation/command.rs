//! `signet-milter rotate` and the rotation part of `check`: what the state says, and the
//! manual actions (start now, cancel a pending key, roll back to the previous key). Each takes
//! the state directory's lock, so it never interleaves with the running milter's round.

/// A line of command output. A closed stdout (`rotate | head -1`) is no reason to stop a
/// rotation step half-way, nor to panic as `println!` would: the line is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use super::keystore;
use super::publish::Publisher;
use super::service::{Rotator, format_ms};
use super::state::{Phase, SlotState};
use super::store::Store;
use super::{Slot, slots};
use crate::config::Config;
use crate::config::rotation::RetiredPrivateKey;
use crate::keys::vault::VaultPool;
use crate::runtime::Runtime;
use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Show,
    Now,
    Cancel,
    Rollback,
}

/// Runs `action` on the rotated signatures of `domains` (all when empty); returns whether
/// everything went right.
pub async fn run(
    runtime: Arc<ArcSwap<Runtime>>,
    domains: &[String],
    action: Action,
) -> anyhow::Result<bool> {
    let current = runtime.load_full();
    let chosen = chosen_slots(&current.config, domains)?;
    let ok = match action {
        Action::Show => true,
        Action::Now => {
            let labels: Vec<_> = chosen.iter().map(|s| s.label.clone()).collect();
            let reports = Rotator::new(runtime.clone()).round(Some(&labels)).await;
            for report in reports.iter().filter(|r| labels.contains(&r.label)) {
                for event in &report.events {
                    out!("{} {}: {event}", report.domain, report.label);
                }
            }
            reports
                .iter()
                .filter(|r| labels.contains(&r.label))
                .all(|r| {
                    r.state
                        .as_ref()
                        .is_some_and(|s| s.pending().is_some() || s.active().is_some())
                })
        }
        Action::Cancel => cancel(&current, &chosen).await?,
        Action::Rollback => rollback(&current, &chosen).await?,
    };
    let shown = print_states(&current.config, domains).await;
    Ok(ok && shown)
}

fn chosen_slots(config: &Config, domains: &[String]) -> anyhow::Result<Vec<Slot>> {
    let all = slots(config);
    if domains.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for domain in domains {
        let wanted = crate::config::normalize_domain(domain).map_err(anyhow::Error::msg)?;
        let found: Vec<Slot> = all.iter().filter(|s| s.domain == wanted).cloned().collect();
        if found.is_empty() {
            bail!(
                "{wanted}: no rotated signature signs as this domain ([rotation] domains / signatures)"
            );
        }
        out.extend(found);
    }
    Ok(out)
}

fn settings(config: &Config) -> anyhow::Result<&crate::config::RotationSettings> {
    config.rotation.as_ref().context("no [rotation] section")
}

async fn cancel(runtime: &Runtime, chosen: &[Slot]) -> anyhow::Result<bool> {
    let settings = settings(&runtime.config)?;
    let vault = Arc::new(VaultPool::new(
        &runtime.config.keys.vault,
        runtime.config.keys.cache.negative_ttl,
    ));
    let store = Store::new(settings, vault.clone());
    let lock = store.local.lock(true)?;
    let publisher = Publisher::new(settings.dns_update.as_ref()).map_err(anyhow::Error::msg)?;
    let mut ok = true;
    for slot in chosen {
        let Some((mut state, mut version)) = store.load(&slot.domain, &slot.label).await? else {
            continue;
        };
        let Some(pending) = state.pending().cloned() else {
            out!("{} {}: no pending key to cancel", slot.domain, slot.label);
            continue;
        };
        let name = settings.record_name.render(&slot.domain, &pending.selector);
        if pending.published_ms.is_some() {
            match publisher
                .remove(&name, &slot.domain, &pending.selector)
                .await
            {
                Ok(how) => out!("{} {}: {how}", slot.domain, slot.label),
                Err(e) => {
                    out!("{} {}: {e}; the pending key stays", slot.domain, slot.label);
                    ok = false;
                    continue;
                }
            }
        }
        if pending.stored {
            match keystore::dispose(
                &slot.template.key,
                &slot.domain,
                &pending.selector,
                RetiredPrivateKey::Delete,
                &store.local,
                &vault,
            )
            .await
            {
                Ok(how) => out!("{} {}: private key {how}", slot.domain, slot.label),
                Err(e) => out!("{} {}: {e} (remove it by hand)", slot.domain, slot.label),
            }
        }
        state.keys.retain(|k| k.selector != pending.selector);
        store.save(&lock, &state, &mut version).await?;
        tracing::info!(domain = %slot.domain, entry = %slot.label, "rotation: pending key {} cancelled by the operator", pending.selector);
        out!(
            "{} {}: pending key {} cancelled",
            slot.domain,
            slot.label,
            pending.selector
        );
    }
    Ok(ok)
}

async fn rollback(runtime: &Runtime, chosen: &[Slot]) -> anyhow::Result<bool> {
    let settings = settings(&runtime.config)?;
    let vault = Arc::new(VaultPool::new(
        &runtime.config.keys.vault,
        runtime.config.keys.cache.negative_ttl,
    ));
    let store = Store::new(settings, vault);
    let lock = store.local.lock(true)?;
    let now = super::clock::wall_ms();
    let mut ok = true;
    for slot in chosen {
        let Some((mut state, mut version)) = store.load(&slot.domain, &slot.label).await? else {
            continue;
        };
        let Some(previous) = state
            .keys
            .iter()
            .filter(|k| k.phase == Phase::Retiring)
            .max_by_key(|k| k.retired_ms)
            .map(|k| k.selector.clone())
        else {
            out!(
                "{} {}: no retiring key to go back to (its record may be gone)",
                slot.domain,
                slot.label
            );
            ok = false;
            continue;
        };
        let mut undone = None;
        for key in &mut state.keys {
            if key.phase == Phase::Active {
                key.phase = Phase::Retiring;
                key.retired_ms = Some(now);
                undone = Some(key.selector.clone());
            } else if key.selector == previous {
                key.phase = Phase::Active;
                key.retired_ms = None;
                key.activated_ms = Some(now);
            }
        }
        store.save(&lock, &state, &mut version).await?;
        let undone = undone.unwrap_or_else(|| "-".into());
        tracing::info!(domain = %slot.domain, entry = %slot.label, "rotation: rolled back by the operator: {previous} active again, {undone} retiring");
        out!(
            "{} {}: {previous} active again, {undone} retiring",
            slot.domain,
            slot.label
        );
    }
    Ok(ok)
}

/// Prints the state of every rotated signature (of `domains`, when given); returns `false`
/// when a state file cannot be read.
pub async fn print_states(config: &Config, domains: &[String]) -> bool {
    let Some(settings) = &config.rotation else {
        return true;
    };
    let store = Store::new(
        settings,
        Arc::new(VaultPool::new(
            &config.keys.vault,
            config.keys.cache.negative_ttl,
        )),
    );
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut ok = true;
    for slot in slots(config) {
        if !domains.is_empty() && !domains.iter().any(|d| d.eq_ignore_ascii_case(&slot.domain)) {
            continue;
        }
        match store.load(&slot.domain, &slot.label).await {
            Ok(Some((state, _))) => rows.extend(state_rows(&slot, &state)),
            Ok(None) => rows.push([
                slot.domain.clone(),
                slot.label.to_string(),
                slot.template.selector.clone(),
                "active".into(),
                "not rotated yet (the configured key)".into(),
            ]),
            Err(e) => {
                ok = false;
                rows.push([
                    slot.domain.clone(),
                    slot.label.to_string(),
                    "-".into(),
                    "ERROR".into(),
                    e.to_string(),
                ]);
            }
        }
    }
    out!();
    out!(
        "Key rotation (state in {}):",
        settings.state_directory.display()
    );
    out!(
        "{}",
        crate::table::render(&["DOMAIN", "ENTRY", "SELECTOR", "STATE", "SINCE"], &rows).trim_end()
    );
    ok
}

fn state_rows(slot: &Slot, state: &SlotState) -> Vec<[String; 5]> {
    state
        .keys
        .iter()
        .map(|k| {
            let since = match k.phase {
                Phase::Pending => {
                    let published = match k.published_ms {
                        Some(p) => format!("published {}", format_ms(p)),
                        None if k.stored => "not published yet".into(),
                        None => "key not stored yet".into(),
                    };
                    format!(
                        "{}; {published}; not active before {}",
                        format_ms(k.created_ms),
                        format_ms(k.not_before_ms)
                    )
                }
                Phase::Active => format_ms(k.activated_ms.unwrap_or(k.created_ms)),
                Phase::Retiring => format_ms(k.retired_ms.unwrap_or(0)),
                Phase::Revoked => format_ms(k.revoked_ms.unwrap_or(0)),
            };
            [
                slot.domain.clone(),
                slot.label.to_string(),
                k.selector.clone(),
                k.phase.to_string(),
                since,
            ]
        })
        .collect()
}
