//! The configuration file: one TOML document with the daemon's sections (`[milter]`,
//! `[authorization]`, `[keys]`, `[cache]`, `[log]`, `[metrics]`, `[vault]`, `[pkcs11]`,
//! `[callbacks]`) and KumoMTA's `dkim_sign` signing table (`[base]`, `[domain."…"]`,
//! `[signature."…"]`).
//!
//! Loading parses into validated types: after [`Config::load`] succeeds, every duration, network,
//! template, header list and cross reference is known to be good. Every error names the file, the
//! line and the column.

pub mod authorization;
mod environment;
mod error;
pub mod keysource;
pub mod rotation;
mod signing;
mod template;
mod values;

pub use authorization::{AuthorizationMode, AuthorizationSettings};
pub use environment::check_environment;
pub use error::ConfigError;
pub use rotation::RotationSettings;
pub use signing::{
    DEFAULT_HEADERS, DomainMatch, KeyHandle, Recipe, SignatureLabel, SignerTemplate, SigningDomain,
    SigningTable, normalize_domain,
};
pub use template::Template;
pub use values::{
    Algo, Canon, ListenAddr, LogLevel, OnError, SignaturePolicy, SocketMode, validate_http_url,
};

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/signet-milter/signet-milter.toml";
pub const DEFAULT_KEY_DIRECTORY: &str = "/etc/signet-milter/keys";
pub const DEFAULT_SOCKET: &str = "unix:/run/signet-milter/signet-milter.sock";

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from, for messages.
    pub path: PathBuf,
    pub milter: MilterSettings,
    /// Everything the key cache and its backends are built from.
    pub keys: KeyConfig,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    /// `[authorization]`: which domains an authenticated login may sign for.
    pub authorization: AuthorizationSettings,
    pub signing: SigningTable,
    /// `[rotation]`: the entries whose keys rotate, and how.
    pub rotation: Option<RotationSettings>,
}

/// The settings that make up the key cache and its backends: `[keys]`, `[cache]`, `[vault]`,
/// `[pkcs11]` and `[callbacks]`. A reload that leaves this unchanged keeps the cache (warm keys, stale keys,
/// Vault logins); any change here starts a new one. Grouped in one type so that a new key
/// setting cannot be forgotten in that comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    /// `[keys]`: file keys.
    pub files: KeySettings,
    pub cache: CacheSettings,
    pub vault: VaultSettings,
    pub callbacks: BTreeMap<String, CallbackSettings>,
    pub pkcs11: Pkcs11Settings,
}

/// `[milter]`: how the MTA reaches us and whose mail may be signed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterSettings {
    #[serde(default = "default_listen")]
    pub listen: ListenAddr,
    /// Permissions of the unix socket; the MTA's user must be able to write to it.
    #[serde(default)]
    pub socket_mode: SocketMode,
    /// Group of the unix socket (e.g. `postfix`), so that the MTA can connect without being root.
    pub socket_group: Option<String>,
    /// Clients whose mail is signed (an open signer is a forgery service: keep this tight).
    #[serde(
        default = "default_trusted_networks",
        deserialize_with = "values::networks"
    )]
    pub trusted_networks: Vec<IpNet>,
    /// Sign mail of SMTP-authenticated senders (`{auth_authen}` / `{auth_type}` set by the MTA).
    #[serde(default = "yes")]
    pub sign_authenticated: bool,
    /// `{daemon_name}` values whose mail is signed, e.g. Postfix's `ORIGINATING` submission service.
    #[serde(default)]
    pub trusted_daemon_names: Vec<String>,
    /// What to do with a message whose signature cannot be made (key missing, backend down).
    #[serde(default)]
    pub on_error: OnError,
    /// Concurrent MTA connections served. At the limit the connection idle the longest (no
    /// message in flight) is closed to make room; with none idle, a new one waits until a message
    /// ends or a connection closes. An idle connection costs about 19 KiB and one file descriptor.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "bounded::max_connections"
    )]
    pub max_connections: usize,
    /// A connection with no message in flight that sends nothing for this long is closed
    /// (Postfix opens one per SMTP session and may keep it while the client is idle).
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "bounded::positive_duration"
    )]
    pub idle_timeout: Duration,
    /// At SIGTERM/SIGINT: how long messages already under way may take to finish before the
    /// remaining connections are closed (the MTA then applies its milter_default_action).
    #[serde(
        default = "default_shutdown_timeout",
        deserialize_with = "humantime_serde_compat::deserialize"
    )]
    pub shutdown_timeout: Duration,
}

/// `[keys]`: where file keys live by default and how strictly they are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// The default key path is `{directory}/{domain}/{selector}.key`.
    #[serde(default = "default_key_directory")]
    pub directory: PathBuf,
    /// Refuse key files that group or others can read or write (OpenDKIM's RequireSafeKeys).
    #[serde(default = "yes")]
    pub require_safe_permissions: bool,
}

/// `[cache]`: how long resolved keys are kept, and what happens while a key backend is down.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Resolved keys kept at most (one per distinct source: domain, selector and backend).
    /// Unset: sized so that the configuration's own entries fit ([`CacheSettings::capacity_for`]).
    #[serde(default, deserialize_with = "bounded::cache_capacity")]
    pub capacity: Option<u64>,
    /// How long a key fetched from Vault or a callback is used before it is fetched again.
    /// File keys are instead re-read when the file changes; inline keys never expire.
    #[serde(default = "default_cache_ttl", with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// How long a failed fetch is remembered, so a dead backend is not asked for every message.
    #[serde(default = "default_negative_ttl", with = "humantime_serde_compat")]
    pub negative_ttl: Duration,
    /// How long past its `ttl` the last good key keeps signing while its backend fails; 0 turns
    /// this off.
    #[serde(default = "default_serve_stale", with = "humantime_serde_compat")]
    pub serve_stale: Duration,
}

/// The key cache's capacity when `[cache] capacity` is not set and the configuration is small.
pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;

impl CacheSettings {
    /// The capacity to use for a signing table of `entries` entries: the configured one, else
    /// room for every entry and a quarter more for wildcard domains, rounded up to a power of
    /// two so that adding a few domains does not resize the cache at the next reload.
    pub fn capacity_for(&self, entries: usize) -> u64 {
        self.capacity.unwrap_or_else(|| {
            let wanted = entries as u64 + entries as u64 / 4;
            wanted.next_power_of_two().max(DEFAULT_CACHE_CAPACITY)
        })
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            capacity: None,
            ttl: default_cache_ttl(),
            negative_ttl: default_negative_ttl(),
            serve_stale: default_serve_stale(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address for `/metrics` and `/healthz`, e.g. `127.0.0.1:9199`; unset: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
    /// How many signing domains get series of their own in
    /// `signet_domain_signatures_total` (the first ones seen; later ones count as `other`).
    /// 0, the default, leaves the domain out of every label: the number of series then does
    /// not grow with the number of domains.
    #[serde(default, deserialize_with = "bounded::per_domain_series")]
    pub per_domain_series: usize,
}

/// The most `[metrics] per_domain_series` may be: a bound on what one scrape may carry.
pub const MAX_PER_DOMAIN_SERIES: usize = 10_000;

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug`, `trace`, `off`, or a tracing filter such as
    /// `info,signet_milter=debug`.
    #[serde(default)]
    pub level: LogLevel,
    /// `text` (the default) or `json`: one JSON object per line.
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        values::keyword(
            d,
            "a log format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
    }
}

/// `[vault]`: defaults for every Vault key source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    pub address: Option<String>,
    pub token: Option<keysource::VaultToken>,
    pub token_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub role_id: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    pub approle_mount: Option<String>,
    pub kv_version: Option<keysource::KvVersion>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    /// Transit keys: at most this many signatures in one request (`batch_input`) while a
    /// request for the same key is under way; 1 sends every signature on its own. Default 32.
    pub transit_batch_size: Option<NonZeroUsize>,
}

/// `[pkcs11]`: defaults for every PKCS#11 key source, and the session pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library) of the HSM, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    /// The token's label.
    pub token: Option<String>,
    /// A file holding the user PIN (mode 0600 or 0640, readable by the milter only).
    pub pin_file: Option<PathBuf>,
    /// Sessions open at most per token; each signs one message at a time. Default 4.
    pub max_sessions: Option<NonZeroUsize>,
}

/// `[callbacks."NAME"]`: a named key provider for `{ event_name = "NAME" }` key sources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    /// Program and arguments (no shell); `event_args` are appended; the key is its stdout.
    pub command: Option<Vec<String>>,
    /// SQLite database opened read-only; `query` binds `event_args` as `?1`, `?2`, ….
    pub sqlite: Option<PathBuf>,
    pub query: Option<String>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
}

/// The whole file as written, before cross-checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    milter: Option<MilterSettings>,
    keys: Option<KeySettings>,
    cache: Option<CacheSettings>,
    log: Option<LogSettings>,
    metrics: Option<MetricsSettings>,
    vault: Option<toml::Spanned<VaultSettings>>,
    pkcs11: Option<Pkcs11Settings>,
    #[serde(default)]
    callbacks: BTreeMap<String, toml::Spanned<CallbackSettings>>,
    authorization: Option<toml::Spanned<authorization::RawAuthorization>>,
    base: Option<toml::Spanned<signing::RawBase>>,
    #[serde(default)]
    domain: BTreeMap<String, toml::Spanned<signing::RawDomain>>,
    #[serde(default)]
    signature: BTreeMap<String, toml::Spanned<signing::RawSignature>>,
    rotation: Option<toml::Spanned<rotation::RawRotation>>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_callbacks(path, &BTreeSet::new())
    }

    /// Like [`Config::load`], for a program that registers callbacks of its own
    /// ([`crate::keys::callback::CallbackRegistry`]): `event_name`s may also name those.
    pub fn load_with_callbacks(
        path: &Path,
        registered: &BTreeSet<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::parse_with_callbacks(&text, path, registered)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_callbacks(text, path, &BTreeSet::new())
    }

    fn parse_with_callbacks(
        text: &str,
        path: &Path,
        registered: &BTreeSet<String>,
    ) -> Result<Self, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            ConfigError::located(path, text, span, message)
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = error::with_hint(e.message(), e.span().map(|s| &text[s]));
            at(e.span(), message)
        })?;

        let milter = match raw.milter {
            Some(m) => m,
            None => toml::from_str("").map_err(|e| at(None, format!("{e}")))?,
        };
        let keys = raw.keys.unwrap_or_else(|| KeySettings {
            directory: default_key_directory(),
            require_safe_permissions: true,
        });
        let log = raw.log.unwrap_or_default();
        let cache = raw.cache.unwrap_or_default();
        let vault = match raw.vault {
            Some(spanned) => {
                let span = spanned.span();
                let vault = spanned.into_inner();
                validate_vault(&vault).map_err(|e| at(Some(span), format!("[vault] {e}")))?;
                vault
            }
            None => VaultSettings::default(),
        };

        let pkcs11 = raw.pkcs11.unwrap_or_default();

        let mut callbacks = BTreeMap::new();
        for (name, spanned) in raw.callbacks {
            let span = spanned.span();
            let cb = spanned.into_inner();
            match (&cb.command, &cb.sqlite, &cb.query) {
                (Some(argv), None, None) if !argv.is_empty() && !argv[0].is_empty() => {}
                (None, Some(_), Some(q)) if !q.trim().is_empty() => {}
                (None, Some(_), None) => {
                    return Err(at(
                        Some(span),
                        format!("[callbacks.\"{name}\"]: sqlite needs a query"),
                    ));
                }
                _ => {
                    return Err(at(
                        Some(span),
                        format!(
                            "[callbacks.\"{name}\"] needs either command = [\"/path\", …] or sqlite = \"/path.db\" with query"
                        ),
                    ));
                }
            }
            if registered.contains(&name) {
                return Err(at(
                    Some(span),
                    format!(
                        "[callbacks.\"{name}\"]: this program already registers a callback named \"{name}\""
                    ),
                ));
            }
            callbacks.insert(name, cb);
        }
        let sections: BTreeSet<String> = callbacks.keys().cloned().collect();
        let authorization = authorization::build(raw.authorization, path, &sections, &at)?;
        let mut callback_names = sections;
        callback_names.extend(registered.iter().cloned());

        let signing = signing::build(
            signing::RawSigningTable {
                base: raw.base,
                domain: raw.domain,
                signature: raw.signature,
            },
            &keys,
            &pkcs11,
            &callback_names,
            &at,
        )?;
        let rotation = match raw.rotation {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let (settings, domains, signatures) = spanned.into_inner().validate(span, &at)?;
                rotation::check_entries(&settings, &domains, &signatures, &signing, &at)?;
                Some(settings)
            }
        };

        let mut signing = signing;
        if let Some(capacity) = cache.capacity
            && signing.entry_count() as u64 > capacity
        {
            signing.warnings.push(format!(
                "[cache] capacity = {capacity} is smaller than the {} entries of the signing table: keys beyond it are read and parsed again and again; raise it, or leave it out to size the cache for the configuration",
                signing.entry_count()
            ));
        }

        Ok(Config {
            path: path.to_owned(),
            milter,
            keys: KeyConfig {
                files: keys,
                cache,
                vault,
                callbacks,
                pkcs11,
            },
            log,
            metrics: raw.metrics.unwrap_or_default(),
            authorization,
            signing,
            rotation,
        })
    }
}

fn validate_vault(vault: &VaultSettings) -> Result<(), String> {
    if let Some(address) = &vault.address {
        validate_http_url(address).map_err(|e| format!("address: {e}"))?;
    }
    if vault.token.is_some() && vault.token_file.is_some() {
        return Err("set token or token_file, not both".into());
    }
    if let Some(token) = &vault.token {
        keysource::validate_token(token).map_err(|e| format!("token: {e}"))?;
    }
    match (&vault.role_id, &vault.secret_id_file) {
        (Some(_), Some(_)) | (None, None) => {}
        _ => return Err("AppRole login needs both role_id and secret_id_file".into()),
    }
    if vault.role_id.is_some() && (vault.token.is_some() || vault.token_file.is_some()) {
        return Err(
            "use either a token (token / token_file) or AppRole (role_id), not both".into(),
        );
    }
    if let Some(namespace) = &vault.namespace
        && !is_header_safe(namespace)
    {
        return Err("namespace must be printable ASCII without spaces".into());
    }
    if vault.timeout == Some(Duration::ZERO) {
        return Err("timeout must be longer than 0 s".into());
    }
    Ok(())
}

/// Values that travel in HTTP headers (tokens, namespaces) must be visible ASCII.
pub(crate) fn is_header_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

fn yes() -> bool {
    true
}
fn default_listen() -> ListenAddr {
    DEFAULT_SOCKET
        .parse()
        .expect("the default socket address parses")
}
fn default_trusted_networks() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ]
}
/// Measured: an idle negotiated connection costs about 19 KiB of RSS (most of it the milter
/// library's two 8 KiB stream buffers; see BENCHMARKS.md), so 4,096 of them are about 75 MiB;
/// far more than a Postfix with its default 100 smtpd processes opens.
fn default_max_connections() -> usize {
    4096
}
/// Above Postfix's `smtpd_timeout` (300 s), which bounds how long an SMTP client may sit idle
/// between the commands the milter sees.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_serve_stale() -> Duration {
    Duration::from_secs(3600)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_key_directory() -> PathBuf {
    DEFAULT_KEY_DIRECTORY.into()
}

/// Numbers and durations that must lie in a range: refused while deserializing, so the error
/// carries the value's line and column.
mod bounded {
    use serde::{Deserialize as _, Deserializer, de::Error as _};
    use std::time::Duration;

    /// More than any file descriptor limit allows; a typo, not a plan.
    const MAX_CONNECTIONS: usize = 1 << 20;

    pub fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let n = usize::deserialize(d)?;
        if n == 0 || n > MAX_CONNECTIONS {
            return Err(D::Error::custom(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}, not {n}"
            )));
        }
        Ok(n)
    }

    pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let duration = super::humantime_serde_compat::deserialize(d)?;
        if duration < Duration::from_secs(1) {
            return Err(D::Error::custom("must be at least 1s (write e.g. \"10m\")"));
        }
        Ok(duration)
    }

    pub fn cache_capacity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(D::Error::custom(
                "capacity must be at least 1 (leave it out to size the cache for the configuration)",
            )),
            n => Ok(Some(n)),
        }
    }

    pub fn per_domain_series<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let n = usize::deserialize(d)?;
        if n > super::MAX_PER_DOMAIN_SERIES {
            return Err(D::Error::custom(format!(
                "per_domain_series must be at most {}, not {n}: every series is scraped every time",
                super::MAX_PER_DOMAIN_SERIES
            )));
        }
        Ok(n)
    }
}

/// Durations as `"30s"`, `"5m"`, `"1h 30m"`, or a bare number of seconds.
pub(crate) mod humantime_serde_compat {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn parse(raw: &str) -> Result<Duration, String> {
        humantime::parse_duration(raw.trim()).map_err(|e| {
            format!("invalid duration \"{raw}\": {e} (write e.g. \"30s\", \"5m\", \"7d\")")
        })
    }

    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\", \"5m\", \"7d\", or a number of seconds")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
#[path = "strict_tests.rs"]
mod strict_tests;
