//! What a running milter works from: a loaded configuration and the key cache it resolves keys
//! through. A message takes one `Arc<Runtime>` when it starts and keeps it to the end, so a
//! reload never changes the rules under a message in flight.

use crate::config::{Config, ConfigError};
use crate::keys::Backends;
use crate::keys::cache::KeyCache;
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

    fn with_selected(config: Config, env: Arc<Environment>, selected: Arc<Selected>) -> Self {
        let keys = Arc::new(KeyCache::new(
            config.keys.cache.clone(),
            Backends::new(&config, &env.callbacks),
            env.metrics.clone(),
        ));
        Runtime {
            config,
            keys,
            env,
            rotation: ActiveKeys::new(selected),
        }
    }

    /// The runtime of the configuration now in `path`. When the key settings
    /// ([`crate::config::KeyConfig`]) did not change, the key cache carries over: keys stay
    /// warm, Vault sessions stay logged in, and stale keys stay available.
    pub fn reload(&self, path: &Path) -> Result<Self, ConfigError> {
        let config = Config::load_with_callbacks(path, &self.env.callbacks.names())?;
        let selected = self.rotation.selected().clone();
        if config.keys == self.config.keys {
            Ok(Runtime {
                config,
                keys: self.keys.clone(),
                env: self.env.clone(),
                rotation: ActiveKeys::new(selected),
            })
        } else {
            tracing::info!("key settings changed: starting with an empty key cache");
            Ok(Self::with_selected(config, self.env.clone(), selected))
        }
    }
}
