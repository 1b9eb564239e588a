//! Key rotation: for each signature named in `[rotation]`, keys that go
//! Pending → Active → Retiring → Revoked, where a key signs only once its record is proven in
//! DNS, and the key before it keeps signing until then.
//!
//! The signing path sees rotation through one narrow seam, [`ActiveKeys::apply`]: after the
//! policy planned a message's signatures, each rotated one gets the selector that is active
//! *now*. Everything else — state, publishing, the DNS gate, the schedule — runs in the
//! background ([`service`]) and only ever swaps that view, atomically, after the state file
//! recording the change was written.

pub mod clock;
pub mod command;
pub mod gate;
pub mod keystore;
pub mod publish;
pub mod service;
pub mod state;
pub mod store;

use crate::config::{
    Config, Recipe, RotationSettings, SignatureLabel, SignerTemplate, SigningDomain, SigningTable,
};
use crate::policy::{Plan, PlannedSignature};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The active selector of every rotated signature, as the rotation state says; shared by every
/// configuration generation (a reload keeps it) and replaced whole on each change.
#[derive(Default)]
pub struct Selected {
    current: ArcSwap<Selections>,
    /// Rotated signatures whose state could not be read since the milter started (and that
    /// have no selector yet), with the reason: they do not sign until a round reads it.
    unreadable: ArcSwap<BTreeMap<SignatureLabel, String>>,
}

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Selections {
    /// Counts replacements, so a cache built from an older one is noticed.
    pub generation: u64,
    pub selectors: BTreeMap<SignatureLabel, String>,
}

impl Selected {
    pub fn load(&self) -> Arc<Selections> {
        self.current.load_full()
    }

    /// Marks `label`'s state unreadable, for `reason`.
    pub fn set_unreadable(&self, label: SignatureLabel, reason: String) {
        let mut unreadable = BTreeMap::clone(&self.unreadable.load());
        unreadable.insert(label, reason);
        self.unreadable.store(Arc::new(unreadable));
    }

    /// The states of `labels` were read: they sign by their selection again.
    pub fn set_readable<'a>(&self, labels: impl IntoIterator<Item = &'a SignatureLabel>) {
        if self.unreadable.load().is_empty() {
            return;
        }
        let mut unreadable = BTreeMap::clone(&self.unreadable.load());
        for label in labels {
            unreadable.remove(label);
        }
        self.unreadable.store(Arc::new(unreadable));
    }

    /// Why `label` may not sign now: its state was never read and it has no selector.
    pub fn unknown(&self, label: &SignatureLabel) -> Option<String> {
        let unreadable = self.unreadable.load();
        if unreadable.is_empty() || self.current.load().selectors.contains_key(label) {
            return None;
        }
        unreadable.get(label).cloned()
    }

    /// Replaces the selections if they changed; returns whether they did.
    pub fn replace(&self, selectors: BTreeMap<SignatureLabel, String>) -> bool {
        let current = self.current.load();
        if current.selectors == selectors {
            return false;
        }
        self.current.store(Arc::new(Selections {
            generation: current.generation + 1,
            selectors,
        }));
        true
    }
}

/// One configuration generation's view of [`Selected`]: the rotated entries' templates with
/// the active selector in place, rebuilt when the selections change.
pub struct ActiveKeys {
    selected: Arc<Selected>,
    built: ArcSwap<Built>,
}

#[derive(Default)]
struct Built {
    generation: u64,
    /// Hashed: one lookup per signature whatever the number of rotated domains.
    templates: HashMap<SignatureLabel, Arc<SignerTemplate>>,
}

impl ActiveKeys {
    pub fn new(selected: Arc<Selected>) -> Self {
        ActiveKeys {
            selected,
            built: ArcSwap::from_pointee(Built {
                // Never a real generation: the first use builds.
                generation: u64::MAX,
                templates: HashMap::new(),
            }),
        }
    }

    pub fn selected(&self) -> &Arc<Selected> {
        &self.selected
    }

    /// The plan with every rotated signature signing with its active selector. Without
    /// rotation (no selections) the plan is returned untouched after one atomic load.
    pub fn apply(&self, table: &SigningTable, mut plan: Plan) -> Plan {
        for planned in &mut plan.signatures {
            if let Some(template) = self.template(table, &planned.template) {
                planned.template = template;
            }
        }
        plan
    }

    /// The template to sign with instead of `configured`, if it rotates.
    pub fn template(
        &self,
        table: &SigningTable,
        configured: &Arc<SignerTemplate>,
    ) -> Option<Arc<SignerTemplate>> {
        let selections = self.selected.current.load();
        if selections.selectors.is_empty() {
            return None;
        }
        let built = self.built.load();
        let built = if built.generation == selections.generation {
            built
        } else {
            self.built.store(Arc::new(build(table, &selections)));
            self.built.load()
        };
        built.templates.get(&configured.label).cloned()
    }

    /// The [key inventory](crate::inventory) with each rotated signature's active selector
    /// (and so its key) in place of the configured one: what `check`, `check --dns` and the
    /// startup key pass load.
    pub fn inventory(&self, table: &SigningTable) -> Vec<crate::inventory::KeyUse> {
        crate::inventory::signing_keys(table)
            .into_iter()
            .map(|key| match self.template(table, &key.signature) {
                Some(rotated) => key.with_signature(rotated),
                None => key,
            })
            .collect()
    }

    /// Why the rotated signature `label` may not sign now (its state was never read), if so.
    pub fn unknown(&self, label: &SignatureLabel) -> Option<String> {
        self.selected.unknown(label)
    }

    /// `planned` as it would be signed now.
    pub fn planned(&self, table: &SigningTable, planned: &PlannedSignature) -> PlannedSignature {
        PlannedSignature {
            template: self
                .template(table, &planned.template)
                .unwrap_or_else(|| planned.template.clone()),
            domain: planned.domain.clone(),
        }
    }
}

fn build(table: &SigningTable, selections: &Selections) -> Built {
    let templates = selections
        .selectors
        .iter()
        .filter_map(|(label, selector)| {
            let configured = table.entry(label)?;
            let mut recipe = Recipe::clone(&configured.recipe);
            recipe.selector = selector.clone();
            let template = SignerTemplate {
                label: configured.label.clone(),
                recipe: Arc::new(recipe),
                // Another selector, so another key source than the configured entry's.
                key_handle: None,
            };
            Some((label.clone(), Arc::new(template)))
        })
        .collect();
    Built {
        generation: selections.generation,
        templates,
    }
}

/// One rotated signature of a configuration.
#[derive(Clone, Debug)]
pub struct Slot {
    pub label: SignatureLabel,
    /// Its `d=`.
    pub domain: String,
    pub template: Arc<SignerTemplate>,
}

/// The rotated signatures of `config`, in a stable order.
pub fn slots(config: &Config) -> Vec<Slot> {
    let Some(settings) = &config.rotation else {
        return Vec::new();
    };
    slots_of(settings, &config.signing)
}

fn slots_of(settings: &RotationSettings, table: &SigningTable) -> Vec<Slot> {
    let domains = settings
        .domains
        .iter()
        .map(|d| SignatureLabel::Domain(d.as_str().into()));
    let signatures = settings
        .signatures
        .iter()
        .map(|s| SignatureLabel::Signature(s.as_str().into()));
    domains
        .chain(signatures)
        .filter_map(|label| {
            let template = table.entry(&label)?.clone();
            let domain = match (&template.domain, &label) {
                (SigningDomain::Fixed(d), _) => d.clone(),
                (SigningDomain::Author, SignatureLabel::Domain(name)) => {
                    crate::config::normalize_domain(name).ok()?
                }
                (SigningDomain::Author, SignatureLabel::Signature(_)) => return None,
            };
            Some(Slot {
                label,
                domain,
                template,
            })
        })
        .collect()
}

/// The active selectors the rotation state records, for a milter that starts: it must sign
/// with the key the rotation activated, not the one the configuration first named. A
/// signature that never rotated has no entry (its configured selector signs). State that
/// cannot be read is an error: guessing could sign with a revoked key.
/// At startup: the active selector of each rotated signature whose state can be read; each
/// one whose state cannot be read (Vault unreachable, a damaged file) is marked unreadable in
/// `selected` and logged, and does not sign until a later round reads it — the milter serves
/// meanwhile.
pub async fn load_startup_selections(config: &Config, selected: &Selected) {
    let Some(settings) = &config.rotation else {
        return;
    };
    let vault = Arc::new(crate::keys::vault::VaultPool::new(
        &config.keys.vault,
        config.keys.cache.negative_ttl,
    ));
    let store = store::Store::new(settings, vault);
    let mut selectors = BTreeMap::new();
    for slot in slots(config) {
        match store.load(&slot.domain, &slot.label).await {
            Ok(Some((state, _))) => {
                if let Some(active) = state.active() {
                    selectors.insert(slot.label, active.selector.clone());
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(
                    entry = %slot.label,
                    "rotation: {e}; this signature gets on_error until its state can be read"
                );
                selected.set_unreadable(slot.label, e.to_string());
            }
        }
    }
    selected.replace(selectors);
}

pub async fn recorded_selections(
    config: &Config,
) -> Result<BTreeMap<SignatureLabel, String>, state::StateError> {
    let mut out = BTreeMap::new();
    let Some(settings) = &config.rotation else {
        return Ok(out);
    };
    let vault = Arc::new(crate::keys::vault::VaultPool::new(
        &config.keys.vault,
        config.keys.cache.negative_ttl,
    ));
    let store = store::Store::new(settings, vault);
    for slot in slots(config) {
        if let Some((state, _)) = store.load(&slot.domain, &slot.label).await?
            && let Some(active) = state.active()
        {
            out.insert(slot.label, active.selector.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, NoAuthor};
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"
            [domain."example.com"]
            selector = "s1"
            filename = "/k/{domain}/{selector}.key"
            [domain."example.org"]
            selector = "o1"
            [rotation]
            domains = ["example.com"]
            overlap = "1d"
            "#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn the_plan_signs_with_the_selected_selector_and_only_for_rotated_entries() {
        let config = config();
        let keys = ActiveKeys::new(Arc::new(Selected::default()));
        let selectors = |plan: &Plan| -> Vec<String> {
            plan.signatures
                .iter()
                .map(|s| s.selector().to_string())
                .collect()
        };
        let plan = |author: &str| policy::plan(&config.signing, Ok(author));
        assert_eq!(
            selectors(&keys.apply(&config.signing, plan("example.com"))),
            ["s1"]
        );

        let label = SignatureLabel::Domain("example.com".into());
        assert!(
            keys.selected()
                .replace(BTreeMap::from([(label.clone(), "s2".into())]))
        );
        assert_eq!(
            selectors(&keys.apply(&config.signing, plan("example.com"))),
            ["s2"]
        );
        assert_eq!(
            selectors(&keys.apply(&config.signing, plan("example.org"))),
            ["o1"]
        );
        let planned = keys.apply(&config.signing, plan("example.com"));
        let source = planned.signatures[0]
            .template
            .key
            .resolve("example.com", planned.signatures[0].selector());
        assert_eq!(source.to_string(), "file /k/example.com/s2.key");

        assert!(
            !keys
                .selected()
                .replace(BTreeMap::from([(label.clone(), "s2".into())]))
        );
        assert!(
            keys.selected()
                .replace(BTreeMap::from([(label, "s3".into())]))
        );
        assert_eq!(
            selectors(&keys.apply(&config.signing, plan("example.com"))),
            ["s3"]
        );
        let none = policy::plan(&config.signing, Err(&NoAuthor::Missing));
        assert!(keys.apply(&config.signing, none).signatures.is_empty());
    }
}
