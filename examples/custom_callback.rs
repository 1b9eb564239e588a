//! A milter with a key callback of its own, for keys that live where no `[callbacks]` section
//! reaches (an in-house key service, an HSM front end, …).
//!
//! ```text
//! cargo run --ignore-rust-version --example custom_callback -- --config my.toml check
//! ```
//!
//! with, in `my.toml`:
//!
//! ```toml
//! [domain."example.com"]
//! selector = "s1"
//! key = { event_name = "key-service", event_args = ["{domain}", "{selector}"] }
//! ```
//!
//! This example's "key service" is a directory named by `KEY_SERVICE_DIR`, holding
//! `<domain>_<selector>.pem`. The callback's answers go through the same key cache as every
//! other source (`[cache] ttl`, `negative_ttl`, `serve_stale`, single flight).

use signet_milter::keys::callback::{CallbackError, CallbackRegistry, KeyCallback, KeyFuture};
use signet_milter::runtime::Environment;
use std::path::PathBuf;
use std::process::ExitCode;
use zeroize::Zeroizing;

struct KeyService {
    dir: PathBuf,
}

impl KeyCallback for KeyService {
    fn fetch<'a>(&'a self, args: &'a [String]) -> KeyFuture<'a> {
        Box::pin(async move {
            let [domain, selector] = args else {
                return Err(CallbackError::from(
                    "expects event_args = [domain, selector]",
                ));
            };
            let path = self.dir.join(format!("{domain}_{selector}.pem"));
            match tokio::fs::read(&path).await {
                Ok(pem) => Ok(Zeroizing::new(pem)),
                Err(e) => Err(format!("{}: {e}", path.display()).into()),
            }
        })
    }
}

fn main() -> ExitCode {
    let dir = std::env::var_os("KEY_SERVICE_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut callbacks = CallbackRegistry::new();
    callbacks.register("key-service", KeyService { dir });
    signet_milter::cli::main_with(Environment {
        callbacks,
        ..Environment::default()
    })
}
