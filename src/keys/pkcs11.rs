//! PKCS#11 keys (an HSM, a smart card, SoftHSM2): `key = { pkcs11_module?, pkcs11_token?,
//! pkcs11_key, pkcs11_pin_file? }`, unset fields from `[pkcs11]`. The private key never leaves
//! the token: the milter finds it by label, reads its public half, and for each message has the
//! token sign the SHA-256 of the data to sign.
//!
//! - `rsa-sha256`: `CKM_RSA_PKCS` over the SHA-256 DigestInfo (the fixed 19-byte prefix and the
//!   hash), so only the hash leaves the process; the result is RSASSA-PKCS1-v1_5 with SHA-256.
//! - `ed25519-sha256` (RFC 8463): `CKM_EDDSA` without parameters (pure Ed25519, not Ed25519ph)
//!   over the 32-byte hash, single-part `C_Sign`.
//!
//! A module is loaded and `C_Initialize`d once per process (PKCS#11 allows one initialization
//! per application), and kept across reloads. Sessions are pooled per token, at most
//! `[pkcs11] max_sessions`, each used by one signature at a time (a cryptoki `Session` is
//! `Send`, not `Sync`); every call runs on tokio's blocking pool. When the token reports that
//! a session, the login or the token itself is gone (unplugged, logged out, reinitialized), the
//! pool is emptied and the signature is tried once more on a new session: the slot is found
//! again by the token's label, logged in again with the PIN file read again, and the key found
//! again by its label. When the token cannot be found at all, the module is initialised again
//! (at most once per [`REINITIALIZE_INTERVAL`], waiting for calls under way): some modules,
//! SoftHSM2 among them, list their tokens only when initialised, so a token plugged back in
//! is seen only then.

use super::signing_key::{RemotePublicKey, SignError, SigningKey};
use crate::config::keysource::Pkcs11Source;
use crate::config::{Algo, Pkcs11Settings};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// `[pkcs11] max_sessions` when unset.
pub const DEFAULT_MAX_SESSIONS: usize = 4;

/// DER of `DigestInfo { sha256, NULL }` up to the hash (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Why a PKCS#11 key cannot be used. Never contains the PIN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs11Failure {
    #[error("cannot load the PKCS#11 module {}: {reason}", path.display())]
    Module { path: PathBuf, reason: String },
    #[error("no token labelled \"{0}\" is present")]
    NoToken(String),
    #[error("PIN file {}: {reason}", path.display())]
    PinFile { path: PathBuf, reason: String },
    #[error("login to token \"{token}\" failed: {reason}")]
    Login { token: String, reason: String },
    #[error("token \"{token}\" has no private key labelled \"{key}\"")]
    NoKey { token: String, key: String },
    #[error("token \"{token}\" has {count} private keys labelled \"{key}\"; labels must be unique")]
    SeveralKeys {
        token: String,
        key: String,
        count: usize,
    },
    #[error("the key \"{0}\" is neither RSA nor Ed25519")]
    WrongKeyType(String),
    #[error("the public half of \"{key}\" cannot be read: {reason}")]
    NoPublicKey { key: String, reason: String },
    #[error("{reason}")]
    Token {
        reason: String,
        /// Whether the session, the login or the token went away, so that a new session (a
        /// new slot lookup, login and key lookup) may succeed.
        gone: bool,
    },
}

impl Pkcs11Failure {
    fn token(reason: impl Into<String>) -> Self {
        Pkcs11Failure::Token {
            reason: reason.into(),
            gone: false,
        }
    }
}

/// How often a module may be re-initialised when a token cannot be found: re-initialising
/// closes every session of every token of the module, so a token that stays away must not
/// cause it for every message.
pub const REINITIALIZE_INTERVAL: Duration = Duration::from_secs(1);

/// A loaded PKCS#11 module, shared by every configuration of the process.
pub struct Module {
    path: PathBuf,
    context: Pkcs11,
    /// Every call holds it shared; re-initialising holds it exclusively (PKCS#11 forbids
    /// `C_Finalize` while another thread is in a call).
    calls: RwLock<()>,
    /// Bumped by each re-initialisation: sessions of an older generation are gone.
    generation: AtomicU64,
    last_reinitialized: Mutex<Option<Instant>>,
}

/// Loaded modules, by path: kept for the life of the process.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The module at `path`, loaded and initialized once per process.
pub fn module(path: &Path) -> Result<Arc<Module>, Pkcs11Failure> {
    let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let failed = |reason: String| Pkcs11Failure::Module {
        path: path.to_owned(),
        reason,
    };
    let context = Pkcs11::new(path).map_err(|e| failed(e.to_string()))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(failed(e.to_string())),
    }
    let module = Arc::new(Module {
        path: path.to_owned(),
        context,
        calls: RwLock::new(()),
        generation: AtomicU64::new(0),
        last_reinitialized: Mutex::new(None),
    });
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

impl Module {
    /// Runs `f` with the cryptoki context, as one call: never during a re-initialisation.
    /// For callers outside the pool (tests, tools).
    pub fn with_context<T>(&self, f: impl FnOnce(&Pkcs11) -> T) -> T {
        let _calling = self.calls.read().unwrap_or_else(|p| p.into_inner());
        f(&self.context)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `C_Finalize` and `C_Initialize` again, so that the module looks for its tokens anew
    /// (SoftHSM2 and some HSMs list tokens only at initialisation). At most once per
    /// [`REINITIALIZE_INTERVAL`]; returns whether it happened.
    fn reinitialize(&self) -> bool {
        {
            let mut last = self
                .last_reinitialized
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < REINITIALIZE_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let _no_calls = self.calls.write().unwrap_or_else(|p| p.into_inner());
        let _ = self.context.clone().finalize();
        self.generation.fetch_add(1, Ordering::AcqRel);
        match self
            .context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::info!(module = %self.path.display(), "PKCS#11 module initialised again to find its tokens");
                true
            }
            Err(e) => {
                tracing::warn!(module = %self.path.display(), error = %e, "PKCS#11 module could not be initialised again");
                false
            }
        }
    }
}

/// The tokens of one configuration, by (module, label, PIN file).
pub(crate) struct Pkcs11Pool {
    settings: Pkcs11Settings,
    tokens: Mutex<HashMap<(PathBuf, String, PathBuf), Arc<Token>>>,
}

impl Pkcs11Pool {
    pub(crate) fn new(settings: &Pkcs11Settings) -> Self {
        Pkcs11Pool {
            settings: settings.clone(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn token(&self, source: &Pkcs11Source<String>) -> Result<Arc<Token>, Pkcs11Failure> {
        let missing = |what: &str| Pkcs11Failure::token(format!("internal: no {what}"));
        let module_path = source
            .module
            .clone()
            .or_else(|| self.settings.module.clone())
            .ok_or_else(|| missing("module"))?;
        let label = source
            .token
            .clone()
            .or_else(|| self.settings.token.clone())
            .ok_or_else(|| missing("token"))?;
        let pin_file = source
            .pin_file
            .clone()
            .or_else(|| self.settings.pin_file.clone())
            .ok_or_else(|| missing("pin_file"))?;
        let key = (module_path, label, pin_file);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = tokens.get(&key) {
            return Ok(token.clone());
        }
        let max = self
            .settings
            .max_sessions
            .map_or(DEFAULT_MAX_SESSIONS, usize::from);
        let token = Arc::new(Token {
            module: module(&key.0)?,
            label: key.1.clone(),
            pin_file: key.2.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
        });
        tokens.insert(key, token.clone());
        Ok(token)
    }
}

/// One token as one logged-in user: a pool of sessions.
struct Token {
    module: Arc<Module>,
    label: String,
    pin_file: PathBuf,
    idle: Mutex<Vec<Pooled>>,
    /// One per session that may be open at once.
    permits: Arc<tokio::sync::Semaphore>,
}

/// A logged-in session and the module generation it was opened in.
pub(crate) struct Pooled {
    session: Session,
    generation: u64,
    /// Keys found in this session, by label: a signature costs one `C_Sign`, not a search
    /// too. A handle that stops working (the key deleted) fails with a token-level error, and
    /// the retry on a new session searches again.
    keys: HashMap<String, (ObjectHandle, Algo)>,
}

impl Pooled {
    /// The private key labelled `label`, found once per session.
    fn key(&mut self, token: &str, label: &str) -> Result<(ObjectHandle, Algo), Pkcs11Failure> {
        if let Some(found) = self.keys.get(label) {
            return Ok(*found);
        }
        let found = find_key(&self.session, token, label)?;
        self.keys.insert(label.to_string(), found);
        Ok(found)
    }

    /// Closes the session, unless the module was re-initialised since (which closed it, and
    /// whose new sessions may reuse its handle).
    fn discard(self, module: &Module) {
        if self.generation == module.generation() {
            let _ = self.session.close();
        }
    }
}

impl Token {
    /// Runs `operation` on a pooled session, off the async workers. On a token-level error the
    /// pool is emptied and `operation` runs once more on a new session.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        operation: impl Fn(&mut Pooled) -> Result<T, Pkcs11Failure> + Send + 'static,
    ) -> Result<T, Pkcs11Failure> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Pkcs11Failure::token("the session pool is closed"))?;
        let token = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = match token.attempt(&operation) {
                // After a token-level error the other pooled sessions are suspect too: one
                // more try on a new session.
                Err(Pkcs11Failure::Token { reason, gone }) => {
                    tracing::warn!(token = %token.label, error = %reason, "PKCS#11 operation failed; retrying on a new session");
                    if gone {
                        token.discard_idle();
                    }
                    token.attempt(&operation)
                }
                other => other,
            };
            match result {
                // Gone for good, or not seen by a module that lists its tokens only when
                // initialised (SoftHSM2): look again from scratch, at most once a second.
                Err(Pkcs11Failure::NoToken(_)) if token.module.reinitialize() => {
                    token.discard_idle();
                    token.attempt(&operation)
                }
                other => other,
            }
        })
        .await
        .map_err(|_| Pkcs11Failure::token("the PKCS#11 task ended unexpectedly"))?
    }

    /// `operation` on one session: pooled again when it succeeds, closed when it fails.
    fn attempt<T>(
        &self,
        operation: &impl Fn(&mut Pooled) -> Result<T, Pkcs11Failure>,
    ) -> Result<T, Pkcs11Failure> {
        let _calling = self.module.calls.read().unwrap_or_else(|p| p.into_inner());
        let mut pooled = self.session()?;
        match operation(&mut pooled) {
            Ok(value) => {
                self.give_back(pooled);
                Ok(value)
            }
            Err(e) => {
                pooled.discard(&self.module);
                Err(e)
            }
        }
    }

    fn give_back(&self, pooled: Pooled) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pooled);
    }

    fn discard_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for pooled in idle {
            pooled.discard(&self.module);
        }
    }

    /// A pooled session, or a new one: the slot found by label, logged in as the user.
    fn session(&self) -> Result<Pooled, Pkcs11Failure> {
        let generation = self.module.generation();
        loop {
            let Some(pooled) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                break;
            };
            if pooled.generation == generation {
                return Ok(pooled);
            }
            // Opened before a re-initialisation: already closed by it.
        }
        let context = &self.module.context;
        let slot = find_slot(context, &self.label)?;
        // Closed by us (`Pooled::discard`), never on drop: after a re-initialisation a new
        // session may carry the handle number of an old one.
        let session = context.open_ro_session_no_drop(slot).map_err(token_error)?;
        let pooled = Pooled {
            session,
            generation,
            keys: HashMap::new(),
        };
        let pin = read_pin(&self.pin_file)?;
        match pooled.session.login(UserType::User, Some(&pin)) {
            // Login is per application and token: another session may have done it.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(pooled),
            Err(e) => {
                pooled.discard(&self.module);
                Err(Pkcs11Failure::Login {
                    token: self.label.clone(),
                    reason: token_error(e).to_string(),
                })
            }
        }
    }
}

/// The slot holding the token labelled `label`.
fn find_slot(context: &Pkcs11, label: &str) -> Result<cryptoki::slot::Slot, Pkcs11Failure> {
    context
        .get_slots_with_token()
        .map_err(token_error)?
        .into_iter()
        .find(|slot| {
            context
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == label)
        })
        .ok_or_else(|| Pkcs11Failure::NoToken(label.to_string()))
}

fn token_error(e: CkError) -> Pkcs11Failure {
    // Errors after which a new session (and login, and key lookup) may succeed.
    let gone = matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::SlotIdInvalid
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized,
            _
        )
    );
    let reason = match &e {
        // The return value's name says more to an operator than its long description.
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    };
    Pkcs11Failure::Token { reason, gone }
}

fn read_pin(path: &Path) -> Result<AuthPin, Pkcs11Failure> {
    let failed = |reason: String| Pkcs11Failure::PinFile {
        path: path.to_owned(),
        reason,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?);
    let pin = text.trim();
    if pin.is_empty() {
        return Err(failed("is empty".into()));
    }
    Ok(AuthPin::from(pin))
}

/// The private key labelled `label`, and its kind.
fn find_key(
    session: &Session,
    token: &str,
    label: &str,
) -> Result<(ObjectHandle, Algo), Pkcs11Failure> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(token_error)?;
    let handle = match found.as_slice() {
        [one] => *one,
        // Private keys are invisible to a session that is not logged in: someone logged the
        // token out (login state is per process and token). A new session logs in again.
        [] if !logged_in(session) => {
            return Err(Pkcs11Failure::Token {
                reason: format!("token \"{token}\" is no longer logged in"),
                gone: true,
            });
        }
        [] => {
            return Err(Pkcs11Failure::NoKey {
                token: token.into(),
                key: label.into(),
            });
        }
        several => {
            return Err(Pkcs11Failure::SeveralKeys {
                token: token.into(),
                key: label.into(),
                count: several.len(),
            });
        }
    };
    let algo = match session
        .get_attributes(handle, &[AttributeType::KeyType])
        .map_err(token_error)?
        .first()
    {
        Some(Attribute::KeyType(t)) if *t == KeyType::RSA => Algo::RsaSha256,
        Some(Attribute::KeyType(t)) if *t == KeyType::EC_EDWARDS => Algo::Ed25519Sha256,
        _ => return Err(Pkcs11Failure::WrongKeyType(label.into())),
    };
    Ok((handle, algo))
}

fn logged_in(session: &Session) -> bool {
    session.get_session_info().is_ok_and(|info| {
        matches!(
            info.session_state(),
            SessionState::RoUser | SessionState::RwUser
        )
    })
}

/// The public half: RSA's modulus and exponent are attributes of the private key too; an
/// Ed25519 point is on the public key object of the same label.
fn public_key(
    session: &Session,
    label: &str,
    private: ObjectHandle,
    algo: Algo,
) -> Result<RemotePublicKey, Pkcs11Failure> {
    let failed = |reason: String| Pkcs11Failure::NoPublicKey {
        key: label.into(),
        reason,
    };
    match algo {
        Algo::RsaSha256 => {
            let attributes = session
                .get_attributes(
                    private,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(|e| failed(e.to_string()))?;
            let (mut n, mut e) = (None, None);
            for attribute in attributes {
                match attribute {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            let (Some(n), Some(e)) = (n, e) else {
                return Err(failed("no modulus or public exponent".into()));
            };
            let spki = rsa_spki(&n, &e).map_err(failed)?;
            RemotePublicKey::rsa_spki(&spki).map_err(failed)
        }
        Algo::Ed25519Sha256 => {
            let public = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(|e| failed(e.to_string()))?;
            let handle = public
                .first()
                .ok_or_else(|| failed("no public key object with the same label".into()))?;
            let point = session
                .get_attributes(*handle, &[AttributeType::EcPoint])
                .map_err(|e| failed(e.to_string()))?;
            let Some(Attribute::EcPoint(point)) = point.into_iter().next() else {
                return Err(failed("no CKA_EC_POINT".into()));
            };
            // PKCS#11 3.0 gives the point as a DER OCTET STRING; some modules give it raw.
            let raw = match point.as_slice() {
                [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
                raw => raw,
            };
            RemotePublicKey::ed25519(raw).map_err(failed)
        }
    }
}

/// A DER SubjectPublicKeyInfo from an RSA modulus and exponent.
fn rsa_spki(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::encoding::AsDer as _;
    let components = aws_lc_rs::rsa::PublicKeyComponents { n, e };
    let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> = components
        .as_der()
        .map_err(|_| "cannot encode the RSA public key".to_string())?;
    Ok(der.as_ref().to_vec())
}

/// Finds the key in its token and returns a key that signs there.
pub(crate) async fn fetch(
    pool: &Pkcs11Pool,
    source: &Pkcs11Source<String>,
) -> Result<SigningKey, Pkcs11Failure> {
    let token = pool.token(source)?;
    let label = source.key.clone();
    let token_label = token.label.clone();
    let (algo, public) = token
        .run(move |pooled| {
            let (handle, algo) = find_key(&pooled.session, &token_label, &label)?;
            Ok((algo, public_key(&pooled.session, &label, handle, algo)?))
        })
        .await?;
    debug_assert_eq!(public.algo, algo);
    let key = Pkcs11Key {
        origin: format!("pkcs11 token {} key {}", token.label, source.key),
        token,
        label: source.key.clone(),
    };
    Ok(SigningKey::pkcs11(key, public))
}

/// A handle to a key in a token: its label, found again in each session.
pub struct Pkcs11Key {
    token: Arc<Token>,
    label: String,
    origin: String,
}

impl Pkcs11Key {
    pub async fn sign(&self, digest: [u8; 32], algo: Algo) -> Result<Vec<u8>, SignError> {
        let label = self.label.clone();
        let token_label = self.token.label.clone();
        self.token
            .run(move |pooled| {
                let (handle, found) = pooled.key(&token_label, &label)?;
                let session = &pooled.session;
                if found != algo {
                    return Err(Pkcs11Failure::WrongKeyType(label.clone()));
                }
                let signed = match algo {
                    Algo::RsaSha256 => {
                        let mut input = SHA256_DIGEST_INFO.to_vec();
                        input.extend_from_slice(&digest);
                        session.sign(&Mechanism::RsaPkcs, handle, &input)
                    }
                    Algo::Ed25519Sha256 => session.sign(
                        &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                        handle,
                        &digest,
                    ),
                };
                signed.map_err(token_error)
            })
            .await
            .map_err(|failure| SignError::Remote {
                origin: self.origin.clone(),
                reason: failure.to_string(),
            })
    }
}

/// What `keygen --pkcs11-key` makes: a key pair generated in the token, never extractable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratedKind {
    Rsa(u64),
    Ed25519,
}

/// Generates a key pair labelled `label` in the token (refusing a label already in use) and
/// returns its public half.
pub(crate) async fn generate(
    pool: &Pkcs11Pool,
    source: &Pkcs11Source<String>,
    kind: GeneratedKind,
) -> Result<RemotePublicKey, Pkcs11Failure> {
    let token = pool.token(source)?;
    let label = source.key.clone();
    let token_label = token.label.clone();
    let module = token.module.clone();
    let pin_file = token.pin_file.clone();
    tokio::task::spawn_blocking(move || {
        let _calling = module.calls.read().unwrap_or_else(|p| p.into_inner());
        let slot = find_slot(&module.context, &token_label)?;
        let session = module.context.open_rw_session(slot).map_err(token_error)?;
        match session.login(UserType::User, Some(&read_pin(&pin_file)?)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                return Err(Pkcs11Failure::Login {
                    token: token_label,
                    reason: token_error(e).to_string(),
                });
            }
        }
        match find_key(&session, &token_label, &label) {
            Err(Pkcs11Failure::NoKey { .. }) => {}
            Ok(_) | Err(Pkcs11Failure::SeveralKeys { .. }) => {
                return Err(Pkcs11Failure::token(format!(
                    "token \"{token_label}\" already has a key labelled \"{label}\"; not replacing it"
                )));
            }
            Err(e) => return Err(e),
        }
        let common = |private: bool| {
            let mut a = vec![
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            if private {
                a.extend([
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                ]);
            } else {
                a.push(Attribute::Verify(true));
            }
            a
        };
        let (mechanism, mut public_template) = match kind {
            GeneratedKind::Rsa(bits) => (
                Mechanism::RsaPkcsKeyPairGen,
                vec![
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ],
            ),
            // The OID 1.3.101.112 (id-Ed25519), DER.
            GeneratedKind::Ed25519 => (
                Mechanism::EccEdwardsKeyPairGen,
                vec![Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70])],
            ),
        };
        public_template.extend(common(false));
        let (_, private) = session
            .generate_key_pair(&mechanism, &public_template, &common(true))
            .map_err(token_error)?;
        let algo = match kind {
            GeneratedKind::Rsa(_) => Algo::RsaSha256,
            GeneratedKind::Ed25519 => Algo::Ed25519Sha256,
        };
        public_key(&session, &label, private, algo)
    })
    .await
    .map_err(|_| Pkcs11Failure::token("the PKCS#11 task ended unexpectedly"))?
}
