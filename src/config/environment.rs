//! The environment variables signet-milter reads, checked once at startup with a clear error,
//! like the file: a value the libraries below would choke on (the Vault client panics on a
//! token with a control character or an address it cannot parse) never gets that far.

use super::keysource::{VaultToken, validate_token};
use super::validate_http_url;
use std::ffi::OsString;

/// `VAULT_ADDR` and `VAULT_TOKEN` (the fallbacks of `[vault] address` and the token settings)
/// and `SIGNET_LOG` (a tracing filter that overrides `[log] level`).
pub fn check_environment() -> Result<(), String> {
    if let Some(address) = text("VAULT_ADDR")? {
        validate_http_url(address.trim()).map_err(|e| format!("VAULT_ADDR: {e}"))?;
    }
    if let Some(token) = text("VAULT_TOKEN")? {
        validate_token(&VaultToken(token.trim().into()))
            .map_err(|e| format!("VAULT_TOKEN: {e}"))?;
    }
    if let Some(filter) = text("SIGNET_LOG")? {
        tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| {
            format!(
                "SIGNET_LOG: \"{}\" is not a log filter ({e}); write e.g. info, debug or signet_milter=debug",
                filter.escape_debug()
            )
        })?;
    }
    Ok(())
}

/// The variable's value, `None` when unset or blank (both mean "not given" everywhere).
fn text(name: &str) -> Result<Option<String>, String> {
    match std::env::var_os(name).map(OsString::into_string) {
        None => Ok(None),
        Some(Ok(value)) if value.trim().is_empty() => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}
