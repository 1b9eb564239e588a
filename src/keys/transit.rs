//! Vault / OpenBao Transit keys: `key = { transit_mount = "transit", transit_key = "NAME",
//! transit_key_version? , vault_address?, vault_token? }`. The private key never leaves
//! Transit: the milter reads the key's public half (`GET <mount>/keys/<name>`) and, for each
//! message, sends the SHA-256 of the data to sign (`POST <mount>/sign/<name>`).
//!
//! Facts from OpenBao's `builtin/logical/transit` this relies on:
//! - DKIM's `rsa-sha256` is RSASSA-PKCS1-v1_5 with the SHA-256 DigestInfo: the request says
//!   `signature_algorithm=pkcs1v15` (the default, PSS, is rejected by DKIM verifiers),
//!   `hash_algorithm=sha2-256` and `prehashed=true` (with `hash_algorithm=none` the DigestInfo
//!   would be missing);
//! - `ed25519-sha256` (RFC 8463) is PureEdDSA over the SHA-256 of the data: Transit signs the
//!   32-byte input as it is, so no `prehashed` (which would ask for Ed25519ph);
//! - the answer is `vault:vN:<base64>`; `batch_input` signs many inputs in one request.
//!
//! Signatures are made with an explicit `key_version`: the version whose public key was read,
//! so that what `check` reports and what is signed always belong together, even while someone
//! rotates the key in Transit (the new version is picked up at the next refresh, `[cache] ttl`).
//!
//! Requests go through the same clients as the KV source ([`VaultPool`]): one per address and
//! token, with `[vault]`'s auth (token, token file, AppRole with renewal), namespace, CA and
//! timeout.

use super::signing_key::{RemotePublicKey, SignError, SigningKey};
use super::vault::{VaultFailure, VaultPool, request_failure};
use crate::config::keysource::{TransitSource, VaultToken};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// `[vault] transit_batch_size` when unset.
pub const DEFAULT_TRANSIT_BATCH_SIZE: usize = 32;

/// Why a Transit key cannot be used. Never contains a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitFailure {
    #[error(transparent)]
    Vault(#[from] VaultFailure),
    #[error(
        "no such Transit key (HTTP 404); check transit_mount and transit_key, or create it with `signet-milter keygen --transit-key NAME`"
    )]
    NoSuchKey,
    #[error("a Transit key of that name already exists; not replacing it")]
    AlreadyExists,
    #[error(
        "the Transit key is of type {0}, which cannot make DKIM signatures; create it with type=rsa-2048 or type=ed25519"
    )]
    WrongType(String),
    #[error(
        "the Transit key is derived (derived=true), which needs a context per signature; create a key without derivation"
    )]
    Derived,
    #[error("the Transit key has no version {wanted} (the latest is {latest})")]
    NoSuchVersion { wanted: u64, latest: u64 },
    #[error("the Transit key's public key is unusable: {0}")]
    BadPublicKey(String),
    #[error("Transit answered with {0}")]
    BadSignature(String),
}

/// The Transit key types that sign DKIM.
fn algorithm_of(key_type: &str) -> Option<KeyKind> {
    match key_type {
        "rsa-2048" | "rsa-3072" | "rsa-4096" => Some(KeyKind::Rsa),
        "ed25519" => Some(KeyKind::Ed25519),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ed25519,
}

/// Reads the key's public half and returns a key that signs through Transit.
pub(crate) async fn fetch(
    pool: &Arc<VaultPool>,
    source: &TransitSource<String>,
) -> Result<SigningKey, TransitFailure> {
    let read = ReadKey {
        mount: source.mount.clone(),
        name: source.key.clone(),
    };
    let info = pool
        .call(source.address.as_ref(), source.token.as_ref(), |client| {
            let read = read.clone();
            async move {
                vaultrs::api::exec_with_result(&*client, read)
                    .await
                    .map_err(|e| request_failure(&client, e))
            }
        })
        .await
        .map_err(|e| match e {
            VaultFailure::NotFound => TransitFailure::NoSuchKey,
            other => TransitFailure::Vault(other),
        })?;
    let Some(kind) = algorithm_of(&info.key_type) else {
        return Err(TransitFailure::WrongType(info.key_type));
    };
    if info.derived {
        return Err(TransitFailure::Derived);
    }
    let version = source.version.unwrap_or(info.latest_version);
    let public = info
        .keys
        .get(&version.to_string())
        .and_then(|v| v.public_key.as_deref())
        .ok_or(TransitFailure::NoSuchVersion {
            wanted: version,
            latest: info.latest_version,
        })?;
    let public = match kind {
        KeyKind::Rsa => {
            let spki = SubjectPublicKeyInfoDer::from_pem_slice(public.as_bytes())
                .map_err(|e| TransitFailure::BadPublicKey(format!("not a PEM public key: {e}")))?;
            RemotePublicKey::rsa_spki(spki.as_ref()).map_err(TransitFailure::BadPublicKey)?
        }
        KeyKind::Ed25519 => {
            let raw = BASE64
                .decode(public.trim())
                .map_err(|_| TransitFailure::BadPublicKey("not base64".into()))?;
            RemotePublicKey::ed25519(&raw).map_err(TransitFailure::BadPublicKey)?
        }
    };
    let batch_size = pool
        .settings()
        .transit_batch_size
        .map_or(DEFAULT_TRANSIT_BATCH_SIZE, usize::from);
    let key = TransitKey {
        target: Arc::new(Target {
            pool: pool.clone(),
            address: source.address.clone(),
            token: source.token.clone(),
            mount: source.mount.clone(),
            name: source.key.clone(),
            version,
            kind,
            origin: format!(
                "transit {} {}/sign/{} version {version}",
                pool.address_for(source.address.as_ref())
                    .as_deref()
                    .unwrap_or("(no address)"),
                source.mount,
                source.key
            ),
        }),
        batcher: (batch_size > 1).then(|| Arc::new(Batcher::new(batch_size))),
    };
    Ok(SigningKey::transit(key, public))
}

/// A handle to one version of a Transit key: where to send hashes, never the key.
pub struct TransitKey {
    target: Arc<Target>,
    /// `None` when `transit_batch_size = 1`.
    batcher: Option<Arc<Batcher>>,
}

struct Target {
    pool: Arc<VaultPool>,
    address: Option<String>,
    token: Option<VaultToken>,
    mount: String,
    name: String,
    version: u64,
    kind: KeyKind,
    /// "transit ADDRESS MOUNT/sign/NAME version N", for errors.
    origin: String,
}

type Digest = [u8; 32];
/// One signature's answer: the raw signature, or why Transit did not give it.
type Answer = Result<Vec<u8>, TransitFailure>;

impl TransitKey {
    /// Has Transit sign a SHA-256 digest; returns the raw signature.
    pub async fn sign(&self, digest: &Digest) -> Result<Vec<u8>, SignError> {
        let answer = match &self.batcher {
            Some(batcher) => batcher.sign(&self.target, *digest).await,
            None => match self.target.request(&[*digest]).await {
                Ok(mut answers) => answers
                    .pop()
                    .unwrap_or(Err(TransitFailure::BadSignature("no signature".into()))),
                Err(e) => Err(e),
            },
        };
        answer.map_err(|failure| SignError::Remote {
            origin: self.target.origin.clone(),
            reason: failure.to_string(),
        })
    }
}

/// Who answers a batch of digests: Transit (a [`Target`]), or a stand-in in the unit tests.
trait SignRequests: Send + Sync + 'static {
    /// One request for all `digests`; the answers in the same order.
    fn request(
        &self,
        digests: Vec<Digest>,
    ) -> impl std::future::Future<Output = Result<Vec<Answer>, TransitFailure>> + Send;
}

impl SignRequests for Target {
    async fn request(&self, digests: Vec<Digest>) -> Result<Vec<Answer>, TransitFailure> {
        Target::request(self, &digests).await
    }
}

impl Target {
    /// One `POST <mount>/sign/<name>` with every digest as a `batch_input` item; the answers
    /// in the same order.
    async fn request(&self, digests: &[Digest]) -> Result<Vec<Answer>, TransitFailure> {
        let rsa = self.kind == KeyKind::Rsa;
        let sign = Sign {
            mount: self.mount.clone(),
            name: self.name.clone(),
            body: SignBody {
                batch_input: digests
                    .iter()
                    .map(|d| SignInput {
                        input: BASE64.encode(d),
                    })
                    .collect(),
                key_version: self.version,
                prehashed: rsa.then_some(true),
                hash_algorithm: rsa.then_some("sha2-256"),
                signature_algorithm: rsa.then_some("pkcs1v15"),
            },
        };
        let answer = self
            .pool
            .call(self.address.as_ref(), self.token.as_ref(), |client| {
                let sign = sign.clone();
                async move {
                    vaultrs::api::exec_with_result(&*client, sign)
                        .await
                        .map_err(|e| request_failure(&client, e))
                }
            })
            .await?;
        if answer.batch_results.len() != digests.len() {
            return Err(TransitFailure::BadSignature(format!(
                "{} results for {} inputs",
                answer.batch_results.len(),
                digests.len()
            )));
        }
        Ok(answer
            .batch_results
            .into_iter()
            .map(|r| self.signature(r))
            .collect())
    }

    /// The raw signature in `vault:vN:<base64>`, which must be of the version asked for.
    fn signature(&self, result: SignResult) -> Answer {
        if let Some(error) = result.error.filter(|e| !e.is_empty()) {
            return Err(TransitFailure::BadSignature(format!(
                "an error: {}",
                error.chars().take(200).collect::<String>()
            )));
        }
        let text = result.signature.unwrap_or_default();
        let prefix = format!("vault:v{}:", self.version);
        let Some(b64) = text.strip_prefix(&prefix) else {
            return Err(TransitFailure::BadSignature(format!(
                "a signature not of the form {prefix}…"
            )));
        };
        BASE64
            .decode(b64)
            .map_err(|_| TransitFailure::BadSignature("a signature that is not base64".into()))
    }
}

/// Shares round trips between concurrent messages signed with one Transit key. A signature
/// that finds no request under way is sent at once, alone (no added latency when mail is
/// light); those that arrive while one is under way wait for it and go together in the next
/// request, up to `max` per request. So under load each request carries what accumulated during
/// the previous one, and the number of requests adapts to the round-trip time by itself.
struct Batcher {
    max: usize,
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    /// Whether a task is sending requests.
    sending: bool,
    waiting: Vec<(Digest, oneshot::Sender<Answer>)>,
}

impl Batcher {
    fn new(max: usize) -> Self {
        Batcher {
            max,
            state: Mutex::new(BatchState::default()),
        }
    }

    async fn sign<R: SignRequests>(self: &Arc<Self>, target: &Arc<R>, digest: Digest) -> Answer {
        let (reply, answer) = oneshot::channel();
        let start_sender = {
            let mut state = self.lock();
            state.waiting.push((digest, reply));
            !std::mem::replace(&mut state.sending, true)
        };
        if start_sender {
            // A task of its own: if this message's connection goes away mid-request, the
            // others' signatures still arrive.
            let batcher = self.clone();
            let target = target.clone();
            tokio::spawn(async move { batcher.send_until_empty(&*target).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(TransitFailure::BadSignature(
                "no answer (the signing task ended)".into(),
            ))
        })
    }

    async fn send_until_empty<R: SignRequests>(&self, target: &R) {
        // Should this task end early (runtime shutdown), the next signature starts a new one.
        let _done = SendingGuard(self);
        loop {
            let batch: Vec<(Digest, oneshot::Sender<Answer>)> = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.sending = false;
                    return;
                }
                let take = state.waiting.len().min(self.max);
                state.waiting.drain(..take).collect()
            };
            let digests: Vec<Digest> = batch.iter().map(|(d, _)| *d).collect();
            match SignRequests::request(target, digests).await {
                Ok(answers) => {
                    for ((_, reply), answer) in batch.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Err(failure) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(failure.clone()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        // Updates are a push or a drain: nothing is left half-done by a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SendingGuard<'a>(&'a Batcher);

impl Drop for SendingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.sending {
            state.sending = false;
            // Dropping the senders tells the waiters there will be no answer.
            state.waiting.clear();
        }
    }
}

/// `GET <mount>/keys/<name>`.
#[derive(Clone)]
struct ReadKey {
    mount: String,
    name: String,
}

/// The fields of the answer this module uses (Vault and OpenBao add more).
#[derive(Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    key_type: String,
    #[serde(default)]
    derived: bool,
    latest_version: u64,
    keys: HashMap<String, KeyVersion>,
}

#[derive(Deserialize)]
struct KeyVersion {
    public_key: Option<String>,
}

impl Endpoint for ReadKey {
    type Response = KeyInfo;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/keys/{}", self.mount, self.name)
    }
    fn method(&self) -> RequestMethod {
        RequestMethod::GET
    }
}

/// `POST <mount>/sign/<name>`.
#[derive(Clone)]
struct Sign {
    mount: String,
    name: String,
    body: SignBody,
}

#[derive(Clone, Serialize)]
struct SignBody {
    batch_input: Vec<SignInput>,
    key_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prehashed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_algorithm: Option<&'static str>,
}

#[derive(Clone, Serialize)]
struct SignInput {
    input: String,
}

#[derive(Deserialize)]
struct SignAnswer {
    batch_results: Vec<SignResult>,
}

#[derive(Deserialize)]
struct SignResult {
    signature: Option<String>,
    error: Option<String>,
}

impl Endpoint for Sign {
    type Response = SignAnswer;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/sign/{}", self.mount, self.name)
    }
    fn method(&self) -> RequestMethod {
        RequestMethod::POST
    }
    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        serde_json::to_vec(&self.body).map(Some).map_err(|e| {
            rustify::errors::ClientError::DataParseError {
                source: anyhow::Error::new(e),
            }
        })
    }
}

/// `POST <mount>/keys/<name>`: a new key that cannot be exported or backed up in plain text.
#[derive(Clone)]
struct CreateKey {
    mount: String,
    name: String,
    key_type: &'static str,
}

#[derive(Serialize)]
struct CreateBody {
    #[serde(rename = "type")]
    key_type: &'static str,
    exportable: bool,
    allow_plaintext_backup: bool,
}

impl Endpoint for CreateKey {
    type Response = ();
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/keys/{}", self.mount, self.name)
    }
    fn method(&self) -> RequestMethod {
        RequestMethod::POST
    }
    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        let body = CreateBody {
            key_type: self.key_type,
            exportable: false,
            allow_plaintext_backup: false,
        };
        serde_json::to_vec(&body).map(Some).map_err(|e| {
            rustify::errors::ClientError::DataParseError {
                source: anyhow::Error::new(e),
            }
        })
    }
}

/// Creates `transit_key` in Transit as a `key_type` key (`rsa-2048`, `rsa-3072`, `ed25519`),
/// refusing a name already in use, and returns it as the milter will use it.
pub(crate) async fn create(
    pool: &Arc<VaultPool>,
    source: &TransitSource<String>,
    key_type: &'static str,
) -> Result<SigningKey, TransitFailure> {
    match fetch(pool, source).await {
        Err(TransitFailure::NoSuchKey) => {}
        Ok(_) => return Err(TransitFailure::AlreadyExists),
        Err(e) => return Err(e),
    }
    let create = CreateKey {
        mount: source.mount.clone(),
        name: source.key.clone(),
        key_type,
    };
    pool.call(source.address.as_ref(), source.token.as_ref(), |client| {
        let create = create.clone();
        async move {
            vaultrs::api::exec_with_empty(&*client, create)
                .await
                .map_err(|e| request_failure(&client, e))
        }
    })
    .await?;
    fetch(pool, source).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    /// Answers each digest with itself, records the batch sizes, and holds each request until
    /// the test adds a permit; fails the requests whose number is in `fail`.
    struct Gate {
        permits: Semaphore,
        batches: Mutex<Vec<usize>>,
        fail: Vec<usize>,
    }

    impl SignRequests for Gate {
        async fn request(&self, digests: Vec<Digest>) -> Result<Vec<Answer>, TransitFailure> {
            let n = {
                let mut batches = self.batches.lock().unwrap();
                batches.push(digests.len());
                batches.len()
            };
            self.permits.acquire().await.unwrap().forget();
            if self.fail.contains(&n) {
                return Err(TransitFailure::Vault(VaultFailure::Sealed));
            }
            Ok(digests.into_iter().map(|d| Ok(d.to_vec())).collect())
        }
    }

    fn gate(fail: Vec<usize>) -> Arc<Gate> {
        Arc::new(Gate {
            permits: Semaphore::new(0),
            batches: Mutex::new(Vec::new()),
            fail,
        })
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        while !condition() {
            tokio::task::yield_now().await;
        }
    }

    /// Starts one signature, waits until its request is under way, then starts `more`, waits
    /// until they all queue, and lets the requests through one by one.
    async fn run(max: usize, more: u8, fail: Vec<usize>) -> (Vec<usize>, Vec<Answer>) {
        let batcher = Arc::new(Batcher::new(max));
        let gate = gate(fail);
        let mut tasks = Vec::new();
        for n in 0..=more {
            let (b, g) = (batcher.clone(), gate.clone());
            tasks.push(tokio::spawn(async move { b.sign(&g, [n; 32]).await }));
            if n == 0 {
                until(|| gate.batches.lock().unwrap().len() == 1).await;
            }
        }
        until(|| batcher.lock().waiting.len() == usize::from(more)).await;
        gate.permits.add_permits(100);
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        // The sender stops once nothing waits (it may still be finishing its last round).
        until(|| !batcher.lock().sending).await;
        let batches = gate.batches.lock().unwrap().clone();
        (batches, answers)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn signatures_arriving_during_a_request_share_the_next_one() {
        let (batches, answers) = run(32, 9, vec![]).await;
        assert_eq!(batches, vec![1, 9]);
        for (n, answer) in answers.into_iter().enumerate() {
            assert_eq!(
                answer.unwrap(),
                vec![n as u8; 32],
                "each gets its own signature"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_holds_at_most_the_batch_size() {
        let (batches, answers) = run(4, 9, vec![]).await;
        assert_eq!(batches, vec![1, 4, 4, 1]);
        assert!(answers.iter().all(Result::is_ok));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_request_fails_its_batch_only() {
        let (batches, answers) = run(4, 5, vec![2]).await;
        assert_eq!(batches, vec![1, 4, 1]);
        let failed: Vec<bool> = answers.iter().map(Result::is_err).collect();
        assert_eq!(failed, vec![false, true, true, true, true, false]);
        assert_eq!(
            answers[1].as_ref().unwrap_err(),
            &TransitFailure::Vault(VaultFailure::Sealed)
        );
    }
}
