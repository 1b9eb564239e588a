//! Vault / OpenBao key sources: `key = { vault_mount, vault_path, vault_key, vault_address?,
//! vault_token? }`, read from a KV v2 (default) or KV v1 secrets engine.
//!
//! One client per (address, token) is shared by every fetch; it is built on first use. The
//! token comes from the key source, else `[vault]` (`token`, `token_file`, or AppRole
//! `role_id` + `secret_id_file`), else `VAULT_TOKEN`; the address likewise falls back to
//! `VAULT_ADDR`. An AppRole token is renewed before it expires and replaced by a new login when
//! renewal fails; a token file is read again when Vault refuses its token (Vault Agent rotates
//! it). TLS verification is always on: `VAULT_SKIP_VERIFY` in the environment is ignored.

use crate::config::VaultSettings;
use crate::config::keysource::{KvVersion, VaultSource, VaultToken, validate_token};
use arc_swap::ArcSwapOption;
use secrecy::SecretString;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

/// Used when `[vault] timeout` is not set: a Vault request is never unbounded.
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// How soon a failed renewal and login are tried again.
const RENEWAL_RETRY: Duration = Duration::from_secs(30);

/// Why a Vault secret gave no key. Never contains a token, a secret ID or secret data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultFailure {
    #[error("no Vault address: set [vault] address, vault_address, or VAULT_ADDR")]
    NoAddress,
    #[error(
        "no Vault token: set [vault] token, token_file or role_id, vault_token, or VAULT_TOKEN"
    )]
    NoToken,
    #[error("token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("AppRole login at auth/{mount} failed: {reason}")]
    Login { mount: String, reason: String },
    #[error(
        "permission denied (HTTP 403): the token is invalid or its policy does not allow reading this path"
    )]
    PermissionDenied,
    #[error("no such secret (HTTP 404); check vault_mount, vault_path and kv_version")]
    NotFound,
    #[error("Vault is sealed (HTTP 503)")]
    Sealed,
    #[error("Vault answered HTTP {code}{}", if errors.is_empty() { String::new() } else { format!(": {errors}") })]
    Status { code: u16, errors: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot reach Vault: {0}")]
    Connect(String),
    #[error("the answer is not a Vault secret response ({0})")]
    BadResponse(String),
    #[error("the secret has no field \"{field}\" (it has: {available})")]
    MissingField { field: String, available: String },
    #[error("the field \"{0}\" is not a string")]
    NotText(String),
    #[error("{0}")]
    Client(String),
    #[error("{failure} a moment ago; not asked again for {}", humantime::format_duration(*.hold))]
    Unreachable {
        failure: Box<VaultFailure>,
        hold: Duration,
    },
}

impl VaultFailure {
    /// The server did not answer at all (as opposed to answering no).
    fn is_unreachable(&self) -> bool {
        matches!(self, VaultFailure::Timeout(_) | VaultFailure::Connect(_))
    }
}

/// The Vault client settings shared by all Vault key sources of one configuration.
pub(crate) struct VaultPool {
    settings: VaultSettings,
    /// After a request found the server unreachable, further requests to it fail at once for
    /// this long (`[cache] negative_ttl`): 500 keys behind a hung Vault then cost one timeout,
    /// not 500, and messages get `on_error` at once instead of each waiting for the timeout.
    unreachable_hold: Duration,
    env_address: Option<String>,
    env_token: Option<VaultToken>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
}

/// A session per Vault address and per token given on a key source (`None`: `[vault]`'s auth).
type SessionKey = (String, Option<VaultToken>);

impl VaultPool {
    pub(crate) fn new(settings: &VaultSettings, unreachable_hold: Duration) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if env("VAULT_SKIP_VERIFY").is_some() {
            tracing::warn!(
                "VAULT_SKIP_VERIFY is set in the environment and ignored: TLS certificates of Vault are always verified (use [vault] ca_cert for a private CA)"
            );
        }
        VaultPool {
            settings: settings.clone(),
            unreachable_hold,
            env_address: env("VAULT_ADDR"),
            env_token: env("VAULT_TOKEN").map(|t| VaultToken(SecretString::from(t.trim()))),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The address requests go to: the key source's own, else `[vault] address`, else
    /// `VAULT_ADDR`.
    pub(crate) fn address_for(&self, own: Option<&String>) -> Option<String> {
        own.cloned()
            .or_else(|| self.settings.address.clone())
            .or_else(|| self.env_address.clone())
    }

    /// The `[vault]` settings these clients were made from.
    pub(crate) fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    /// Reads the source's secret and returns its key field.
    pub(crate) async fn fetch(
        &self,
        source: &VaultSource<String>,
    ) -> Result<Zeroizing<String>, VaultFailure> {
        let kv = source
            .kv_version
            .or(self.settings.kv_version)
            .unwrap_or(KvVersion::V2);
        let data = self
            .call(source.address.as_ref(), source.token.as_ref(), |client| {
                let source = source.clone();
                async move { read(&client, kv, &source).await }
            })
            .await?;
        take_field(data, &source.field)
    }

    /// Runs `request` with a logged-in client for the address and token a key source sets
    /// (else `[vault]`'s). When Vault refuses the token (403) and the auth can log in again
    /// (token file, AppRole), logs in once more and retries once: the token may have been
    /// revoked or rotated.
    pub(crate) async fn call<T, F, R>(
        &self,
        address: Option<&String>,
        token: Option<&VaultToken>,
        request: F,
    ) -> Result<T, VaultFailure>
    where
        F: Fn(Arc<VaultClient>) -> R,
        R: Future<Output = Result<T, VaultFailure>>,
    {
        let address = self.address_for(address).ok_or(VaultFailure::NoAddress)?;
        let session = self.session(address, token.cloned())?;
        // A server that just timed out or refused the connection is not asked again for a
        // while: 200 keys (or messages) behind a hung Vault cost one timeout, not 200.
        if let Some(failure) = session.recently_unreachable(self.unreachable_hold) {
            return Err(VaultFailure::Unreachable {
                failure: Box::new(failure),
                hold: self.unreachable_hold,
            });
        }
        let result = Self::call_logged_in(&session, request).await;
        session.note_reachability(&result);
        result
    }

    async fn call_logged_in<T, F, R>(session: &Session, request: F) -> Result<T, VaultFailure>
    where
        F: Fn(Arc<VaultClient>) -> R,
        R: Future<Output = Result<T, VaultFailure>>,
    {
        let client = session.client().await?;
        match request(client.clone()).await {
            Err(VaultFailure::PermissionDenied) if session.can_login_again() => {
                let client = session.login(Some(&client)).await?;
                request(client).await
            }
            other => other,
        }
    }

    /// Writes `text` into the source's field as a new secret, only if the path holds none yet
    /// (KV v2 check-and-set 0): two writers of one path cannot both succeed, so a key rotation
    /// run by two milters sharing one Vault makes one key. `Ok(false)`: the secret exists.
    pub(crate) async fn create(
        &self,
        source: &VaultSource<String>,
        text: &str,
    ) -> Result<bool, VaultFailure> {
        Ok(self.write_cas(source, text, 0).await?.is_some())
    }

    /// Writes `text` into the source's field if the secret's current version is `version`
    /// (0: no secret yet). `Ok(None)`: someone else wrote it first.
    pub(crate) async fn write_cas(
        &self,
        source: &VaultSource<String>,
        text: &str,
        version: u64,
    ) -> Result<Option<u64>, VaultFailure> {
        let client = self.client_for(source).await?;
        let timeout = client.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT);
        let data = HashMap::from([(source.field.as_str(), text)]);
        let cas = u32::try_from(version)
            .map_err(|_| VaultFailure::Client("secret version out of range".into()))?;
        let options = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas };
        match vaultrs::kv2::set_with_options(&*client, &source.mount, &source.path, &data, options)
            .await
            .map_err(|e| classify(e, timeout))
        {
            Ok(written) => Ok(Some(written.version)),
            // "check-and-set parameter did not match the current version"
            Err(VaultFailure::Status { code: 400, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The source's field and the secret's version, read together; `None` when there is none.
    pub(crate) async fn read_versioned(
        &self,
        source: &VaultSource<String>,
    ) -> Result<Option<(Zeroizing<String>, u64)>, VaultFailure> {
        let client = self.client_for(source).await?;
        let timeout = client.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT);
        let request = vaultrs::api::kv2::requests::ReadSecretRequest::builder()
            .mount(source.mount.as_str())
            .path(source.path.as_str())
            .build()
            .map_err(|e| VaultFailure::Client(e.to_string()))?;
        let response = match vaultrs::api::exec_with_result(&*client, request).await {
            Ok(response) => response,
            Err(e) => match classify(e, timeout) {
                VaultFailure::NotFound => return Ok(None),
                other => return Err(other),
            },
        };
        let data: HashMap<String, Value> = serde_json::from_value(response.data)
            .map_err(|e| VaultFailure::BadResponse(e.to_string()))?;
        let text = take_field(data, &source.field)?;
        Ok(Some((text, response.metadata.version)))
    }

    /// Deletes every version of the source's secret (KV v2 metadata delete).
    pub(crate) async fn destroy(&self, source: &VaultSource<String>) -> Result<(), VaultFailure> {
        let client = self.client_for(source).await?;
        let timeout = client.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT);
        vaultrs::kv2::delete_metadata(&*client, &source.mount, &source.path)
            .await
            .map_err(|e| classify(e, timeout))
    }

    async fn client_for(
        &self,
        source: &VaultSource<String>,
    ) -> Result<Arc<VaultClient>, VaultFailure> {
        let address = self
            .address_for(source.address.as_ref())
            .ok_or(VaultFailure::NoAddress)?;
        self.session(address, source.token.clone())?.client().await
    }

    fn session(
        &self,
        address: String,
        source_token: Option<VaultToken>,
    ) -> Result<Arc<Session>, VaultFailure> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (address, source_token);
        if let Some(session) = sessions.get(&key) {
            return Ok(session.clone());
        }
        // Checked at load for the config and at startup for VAULT_ADDR; the client panics on
        // an address it cannot parse, so never hand it one.
        crate::config::validate_http_url(&key.0).map_err(VaultFailure::Client)?;
        let auth = self.auth(key.1.clone())?;
        let session = Arc::new_cyclic(|me| Session {
            me: me.clone(),
            address: key.0.clone(),
            namespace: self.settings.namespace.clone(),
            timeout: self.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT),
            ca_cert: self.settings.ca_cert.clone(),
            auth,
            client: ArcSwapOption::empty(),
            login_lock: tokio::sync::Mutex::new(()),
            renewing: std::sync::atomic::AtomicBool::new(false),
            unreachable: Mutex::new(None),
        });
        sessions.insert(key, session.clone());
        Ok(session)
    }

    fn auth(&self, source_token: Option<VaultToken>) -> Result<Auth, VaultFailure> {
        let s = &self.settings;
        Ok(
            if let Some(token) = source_token.or_else(|| s.token.clone()) {
                Auth::Token(token)
            } else if let Some(path) = &s.token_file {
                Auth::TokenFile(path.clone())
            } else if let (Some(role_id), Some(secret_id_file)) = (&s.role_id, &s.secret_id_file) {
                Auth::AppRole {
                    mount: s
                        .approle_mount
                        .clone()
                        .unwrap_or_else(|| DEFAULT_APPROLE_MOUNT.into()),
                    role_id: role_id.clone(),
                    secret_id_file: secret_id_file.clone(),
                }
            } else if let Some(token) = &self.env_token {
                Auth::Token(token.clone())
            } else {
                return Err(VaultFailure::NoToken);
            },
        )
    }
}

enum Auth {
    Token(VaultToken),
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id: String,
        secret_id_file: PathBuf,
    },
}

/// One Vault server as one identity: a client, replaced after each login.
struct Session {
    me: Weak<Session>,
    address: String,
    namespace: Option<String>,
    timeout: Duration,
    ca_cert: Option<PathBuf>,
    auth: Auth,
    client: ArcSwapOption<VaultClient>,
    login_lock: tokio::sync::Mutex<()>,
    renewing: std::sync::atomic::AtomicBool,
    /// When and how a request last found the server unreachable (cleared by any answer).
    unreachable: Mutex<Option<(tokio::time::Instant, VaultFailure)>>,
}

impl Session {
    fn recently_unreachable(&self, hold: Duration) -> Option<VaultFailure> {
        let unreachable = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        unreachable
            .as_ref()
            .filter(|(at, _)| at.elapsed() < hold)
            .map(|(_, failure)| failure.clone())
    }

    /// Remembers an unreachable server; any answer, even a refusal, shows it is back.
    fn note_reachability<T>(&self, result: &Result<T, VaultFailure>) {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(failure) if failure.is_unreachable() => {
                *unreachable = Some((tokio::time::Instant::now(), failure.clone()));
            }
            _ => *unreachable = None,
        }
    }

    async fn client(&self) -> Result<Arc<VaultClient>, VaultFailure> {
        match self.client.load_full() {
            Some(client) => Ok(client),
            None => self.login(None).await,
        }
    }

    fn can_login_again(&self) -> bool {
        !matches!(self.auth, Auth::Token(_))
    }

    /// Builds a client with a fresh token. `stale` is the client that failed: when another
    /// task has already replaced it, that newer client is used instead of a second login.
    async fn login(
        &self,
        stale: Option<&Arc<VaultClient>>,
    ) -> Result<Arc<VaultClient>, VaultFailure> {
        let _one_at_a_time = self.login_lock.lock().await;
        if let Some(current) = self.client.load_full()
            && stale.is_none_or(|s| !Arc::ptr_eq(s, &current))
        {
            return Ok(current);
        }
        let (client, lease) = match &self.auth {
            Auth::Token(token) => (self.build(token.expose())?, None),
            Auth::TokenFile(path) => (self.build(&read_token_file(path)?)?, None),
            Auth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => self.approle_login(mount, role_id, secret_id_file).await?,
        };
        let client = Arc::new(client);
        self.client.store(Some(client.clone()));
        if let Some(lease) = lease {
            self.keep_renewed(lease);
        }
        Ok(client)
    }

    async fn approle_login(
        &self,
        mount: &str,
        role_id: &str,
        secret_id_file: &Path,
    ) -> Result<(VaultClient, Option<Lease>), VaultFailure> {
        let login_failed = |reason: String| VaultFailure::Login {
            mount: mount.to_string(),
            reason,
        };
        let secret_id = read_secret_file(secret_id_file).map_err(|reason| {
            login_failed(format!(
                "secret_id_file {}: {reason}",
                secret_id_file.display()
            ))
        })?;
        let anonymous = self.build("")?;
        let auth = vaultrs::auth::approle::login(&anonymous, mount, role_id, &secret_id)
            .await
            .map_err(|e| login_failed(classify(e, self.timeout).to_string()))?;
        let token = Zeroizing::new(auth.client_token);
        let lease = (auth.lease_duration > 0).then_some(Lease {
            duration: Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
        });
        Ok((self.build(&token)?, lease))
    }

    /// Renews the AppRole token at two thirds of its lease; logs in again when renewal fails
    /// or is not possible. Ends when the session is dropped (a reload with new settings).
    fn keep_renewed(&self, first: Lease) {
        if self
            .renewing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut lease = first;
            let mut wait = lease.duration * 2 / 3;
            loop {
                tokio::time::sleep(wait).await;
                let Some(session) = me.upgrade() else { return };
                match session.renew_or_login(lease).await {
                    Ok(next) => {
                        lease = next;
                        wait = next.duration * 2 / 3;
                    }
                    Err(e) => {
                        tracing::warn!(vault = %session.address, error = %e, "Vault token renewal and new login failed; retrying in 30 s");
                        wait = RENEWAL_RETRY;
                    }
                }
            }
        });
    }

    async fn renew_or_login(&self, lease: Lease) -> Result<Lease, VaultFailure> {
        let Some(client) = self.client.load_full() else {
            return Err(VaultFailure::NoToken);
        };
        if lease.renewable {
            match client.renew(None).await {
                // A renewal that no longer extends the lease (max TTL reached) means: log in.
                Ok(auth) if auth.lease_duration * 3 >= lease.duration.as_secs() => {
                    tracing::debug!(vault = %self.address, lease_s = auth.lease_duration, "Vault token renewed");
                    return Ok(Lease {
                        duration: Duration::from_secs(auth.lease_duration),
                        renewable: auth.renewable,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(vault = %self.address, error = %classify(e, self.timeout), "Vault token renewal failed; logging in again");
                }
            }
        }
        let fresh = self.login(Some(&client)).await?;
        match fresh.lookup().await {
            Ok(info) if info.ttl > 0 => Ok(Lease {
                duration: Duration::from_secs(info.ttl),
                renewable: info.renewable.unwrap_or(false),
            }),
            _ => Ok(lease),
        }
    }

    fn build(&self, token: &str) -> Result<VaultClient, VaultFailure> {
        // The client panics on a token that cannot be an HTTP header value (an AppRole login
        // goes out with none).
        if !token.is_empty() && !crate::config::is_header_safe(token) {
            return Err(VaultFailure::Client(
                "the Vault token is not printable ASCII".into(),
            ));
        }
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.address)
            .token(token)
            .timeout(Some(self.timeout))
            // Explicit, so that VAULT_SKIP_VERIFY / VAULT_CACERT / VAULT_CAPATH / client-cert
            // variables of the environment do not change how Vault is reached.
            .verify(true)
            .ca_certs(
                self.ca_cert
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .identity(None);
        if let Some(namespace) = &self.namespace {
            settings.set_namespace(namespace.clone());
        }
        let settings = settings
            .build()
            .map_err(|e| VaultFailure::Client(format!("client settings: {e}")))?;
        VaultClient::new(settings).map_err(|e| VaultFailure::Client(client_error_text(&e)))
    }
}

#[derive(Clone, Copy)]
struct Lease {
    duration: Duration,
    renewable: bool,
}

async fn read(
    client: &VaultClient,
    kv: KvVersion,
    source: &VaultSource<String>,
) -> Result<HashMap<String, Value>, VaultFailure> {
    let timeout = client.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT);
    let result = match kv {
        KvVersion::V2 => vaultrs::kv2::read(client, &source.mount, &source.path).await,
        KvVersion::V1 => vaultrs::kv1::get(client, &source.mount, &source.path).await,
    };
    result.map_err(|e| classify(e, timeout))
}

/// What went wrong with a request `client` made, without any response body or token.
pub(crate) fn request_failure(client: &VaultClient, error: ClientError) -> VaultFailure {
    classify(
        error,
        client.settings.timeout.unwrap_or(DEFAULT_VAULT_TIMEOUT),
    )
}

fn take_field(
    mut data: HashMap<String, Value>,
    field: &str,
) -> Result<Zeroizing<String>, VaultFailure> {
    match data.remove(field) {
        Some(Value::String(text)) => Ok(Zeroizing::new(text)),
        Some(_) => Err(VaultFailure::NotText(field.to_string())),
        None => {
            let mut names: Vec<&str> = data.keys().map(String::as_str).collect();
            names.sort_unstable();
            Err(VaultFailure::MissingField {
                field: field.to_string(),
                available: if names.is_empty() {
                    "no fields".into()
                } else {
                    names.join(", ")
                },
            })
        }
    }
}

fn read_token_file(path: &Path) -> Result<Zeroizing<String>, VaultFailure> {
    let failed = |reason: String| VaultFailure::TokenFile {
        path: path.display().to_string(),
        reason,
    };
    let token = read_secret_file(path).map_err(failed)?;
    validate_token(&VaultToken(SecretString::from(token.as_str())))
        .map_err(|e| failed(e.to_string()))?;
    Ok(token)
}

/// A one-line secret file, trimmed (Vault Agent and `echo` leave a newline).
fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.to_string())?);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

/// Maps a vaultrs error to what happened, without ever showing a response body (which may hold
/// the secret) or a request (which may hold a token).
fn classify(error: ClientError, timeout: Duration) -> VaultFailure {
    use rustify::errors::ClientError as Http;
    match error {
        ClientError::APIError { code: 403, .. } => VaultFailure::PermissionDenied,
        ClientError::APIError { code: 404, .. } => VaultFailure::NotFound,
        ClientError::APIError { code: 503, errors }
            if errors.iter().any(|e| e.contains("sealed")) =>
        {
            VaultFailure::Sealed
        }
        ClientError::APIError { code, errors } => VaultFailure::Status {
            code,
            errors: errors.join("; ").chars().take(200).collect(),
        },
        ClientError::RestClientError { source } => match source {
            Http::RequestError { source, .. } | Http::ResponseError { source } => {
                match source.downcast_ref::<reqwest::Error>() {
                    Some(e) if e.is_timeout() => VaultFailure::Timeout(timeout),
                    Some(e) => VaultFailure::Connect(error_chain(e)),
                    None => VaultFailure::Connect(source.to_string()),
                }
            }
            Http::ResponseParseError { source, .. }
            | Http::ResponseConversionError { source, .. } => {
                VaultFailure::BadResponse(json_error_position(&source))
            }
            Http::ServerResponseError { code, .. } => VaultFailure::Status {
                code,
                errors: String::new(),
            },
            other => VaultFailure::Client(other.to_string()),
        },
        ClientError::JsonParseError { source } => {
            VaultFailure::BadResponse(format!("line {} column {}", source.line(), source.column()))
        }
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            VaultFailure::BadResponse("no data".into())
        }
        other => VaultFailure::Client(client_error_text(&other)),
    }
}

/// Where a JSON parse failed, and of which kind; serde's message itself may quote the
/// response, so only its position is shown.
fn json_error_position(source: &anyhow::Error) -> String {
    match source.downcast_ref::<serde_json::Error>() {
        Some(e) => {
            let kind = match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Data => "unexpected JSON shape",
                serde_json::error::Category::Eof => "truncated JSON",
            };
            format!("{kind} at line {} column {}", e.line(), e.column())
        }
        None => "unreadable body".into(),
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// vaultrs errors that carry no response data, shown with their cause.
fn client_error_text(error: &ClientError) -> String {
    match error {
        ClientError::FileReadError { path, source } => format!("{path}: {source}"),
        ClientError::ParseCertificateError { path, .. } => {
            format!("{path} is not a PEM certificate bundle")
        }
        other => other.to_string(),
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}
