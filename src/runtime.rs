//! What a running milter works from: a loaded configuration and the key cache it resolves keys
//! through. A message takes one `Arc<Runtime>` when it starts and keeps it to the end, so a
//! reload never changes the rules under a message in flight.

use crate::authorizer::Authorizer;
use crate::config::{Config, ConfigError};
use crate::keys::Backends;
use crate::keys::cache::{KeyCache, SlotHandles};
use crate::keys::callback::CallbackRegistry;
use crate::metrics::Metrics;
use crate::rotation::{ActiveKeys, Selected};
use std::path::Path;
use std::sync::Arc;

/// What outlives any one configuration: the metrics, and the key callbacks a program embedding
/// this library registered.
#[derive(Default)]
pub struct Environment {
    pub metrics: Arc<Metrics>,
    pub callbacks: CallbackRegistry,
}

pub struct Runtime {
    pub config: Config,
    pub keys: Arc<KeyCache>,
    /// The key cache slots of this configuration's exact `[domain]` entries, by their
    /// [`crate::config::KeyHandle`].
    pub slot_handles: SlotHandles,
    /// `[authorization]` at run time (its callback's remembered answers); new with every
    /// configuration, so a reload asks again.
    pub authorizer: Authorizer,
    pub env: Arc<Environment>,
    /// The selectors key rotation made active; kept across reloads.
    pub rotation: ActiveKeys,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        Self::with_environment(config, Arc::new(Environment::default()))
    }

    pub fn with_environment(config: Config, env: Arc<Environment>) -> Self {
        Self::with_selected(config, env, Arc::new(Selected::default()))
    }

    /// A runtime that follows the key rotation state `selected` (which a reload carries over).
    fn with_selected(config: Config, env: Arc<Environment>, selected: Arc<Selected>) -> Self {
        let keys = Arc::new(KeyCache::new(
            config.keys.cache.clone(),
            key_capacity(&config),
            Backends::new(&config, &env.callbacks),
            env.metrics.clone(),
        ));
        let authorizer = Authorizer::new(&config);
        Runtime {
            slot_handles: SlotHandles::new(config.signing.key_handle_count()),
            config,
            keys,
            authorizer,
            env,
            rotation: ActiveKeys::new(selected),
        }
    }

    /// The runtime of the configuration now in `path`. When the key settings
    /// ([`crate::config::KeyConfig`]) did not change, the key cache carries over: keys stay
    /// warm, Vault sessions stay logged in, and stale keys stay available (in a larger cache
    /// when the configuration outgrew the old one), and every key file is `stat`ed again at its
    /// next use, so a replaced one signs from now on. The file is read and checked on tokio's
    /// blocking pool: a large one takes a while, and the workers go on serving meanwhile.
    /// The key rotation state always carries over.
    pub async fn reload(&self, path: &Path) -> Result<Self, ConfigError> {
        let config = {
            let file = path.to_owned();
            let registered = self.env.callbacks.names();
            tokio::task::spawn_blocking(move || Config::load_with_callbacks(&file, &registered))
                .await
                .map_err(|_| ConfigError::Io {
                    path: path.to_owned(),
                    error: std::io::Error::other("the configuration loading task failed"),
                })??
        };
        let selected = self.rotation.selected().clone();
        if config.keys != self.config.keys {
            tracing::info!("key settings changed: starting with an empty key cache");
            return Ok(Self::with_selected(config, self.env.clone(), selected));
        }
        let capacity = key_capacity(&config);
        let keys = if capacity > self.keys.capacity() {
            tracing::info!(
                capacity,
                "the signing table outgrew the key cache: moving the cached keys to a larger one"
            );
            Arc::new(self.keys.resized(capacity).await)
        } else {
            self.keys.clone()
        };
        keys.recheck_files();
        Ok(Runtime {
            authorizer: Authorizer::new(&config),
            slot_handles: SlotHandles::new(config.signing.key_handle_count()),
            config,
            keys,
            env: self.env.clone(),
            rotation: ActiveKeys::new(selected),
        })
    }
}

/// Room for the configuration's own entries, unless `[cache] capacity` says otherwise.
fn key_capacity(config: &Config) -> u64 {
    config.keys.cache.capacity_for(config.signing.entry_count())
}
