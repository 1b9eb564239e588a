//! What a running milter works from: a loaded configuration and the keys it resolved.
//! A message takes one `Arc<Runtime>` when it starts and keeps it to the end, so a reload
//! never changes the rules under a message in flight.

use crate::config::{Config, ConfigError};
use crate::keys::KeyStore;
use std::path::Path;

pub struct Runtime {
    pub config: Config,
    pub keys: KeyStore,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        let keys = KeyStore::new(config.keys.require_safe_permissions);
        Runtime { config, keys }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Config::load(path).map(Runtime::new)
    }
}
