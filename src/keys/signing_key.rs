//! A key the milter signs with: its public half (for `check` and the DNS record) and the way to
//! get a signature. Either the private key is in memory (files, inline data, Vault KV,
//! callbacks), or it never leaves its vault: OpenBao/Vault Transit or a PKCS#11 token is sent
//! the SHA-256 hash of the data to sign and answers with the signature.
//!
//! This is the one seam every backend signs through. mail-auth's streaming signer stays in
//! charge of canonicalization and of the header: [`crate::sign`] lets it build the signature
//! with an empty `b=`, takes the exact bytes it would have signed, and hands them to
//! [`SigningKey::sign`], which does the slow part where it belongs — inline for Ed25519 in
//! memory (about 20 µs), on tokio's blocking pool for RSA and PKCS#11 (CPU or a blocking C
//! call), as an async request for Transit — so a connection worker never waits on it.

use super::parse::KeyParseError;
use super::pkcs11::Pkcs11Key;
use super::small_rsa::SmallRsaKey;
use super::transit::TransitKey;
use crate::config::Algo;
use mail_auth::crypto::{DkimKey, SigningKey as _};
use std::fmt;
use std::sync::Arc;

/// A signing key, shared by every message signed with it.
pub struct SigningKey {
    backend: Backend,
    algo: Algo,
    rsa_bits: Option<usize>,
    /// The `p=` value of the matching DNS record, base64.
    public_key: String,
}

enum Backend {
    /// aws-lc-rs, through mail-auth: RSA of 2048 to 8192 bits, and Ed25519.
    Memory(DkimKey),
    /// RSA of 1024 to 2047 bits, through AWS-LC's C API ([`super::small_rsa`]).
    SmallRsa(SmallRsaKey),
    Transit(TransitKey),
    Pkcs11(Pkcs11Key),
}

/// Where the private key is, for `check` and the docs' promise that a remote key never
/// reaches the milter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Custody {
    /// Parsed into the milter's memory.
    Memory,
    /// Stays in OpenBao/Vault Transit.
    Transit,
    /// Stays in a PKCS#11 token.
    Pkcs11,
}

/// Why a signature could not be computed. Never contains key material, a PIN or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signing operation failed: {0}")]
    Crypto(String),
    #[error("{origin}: {reason}")]
    Remote { origin: String, reason: String },
    #[error("the signing task ended unexpectedly")]
    TaskFailed,
}

impl SignError {
    /// A short phrase for SMTP replies: nothing about the key's location.
    pub fn public_reason(&self) -> &'static str {
        match self {
            SignError::Remote { .. } => "signing service unavailable",
            _ => "signature could not be computed",
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.describe())
    }
}

impl SigningKey {
    /// A key held in memory by aws-lc-rs. `rsa_bits`: `None` for Ed25519.
    pub(crate) fn in_memory(key: DkimKey, rsa_bits: Option<usize>, public_key: String) -> Self {
        let algo = match key {
            DkimKey::Ed25519(_) => Algo::Ed25519Sha256,
            _ => Algo::RsaSha256,
        };
        SigningKey {
            backend: Backend::Memory(key),
            algo,
            rsa_bits,
            public_key,
        }
    }

    /// An RSA key of 1024 to 2047 bits.
    pub(crate) fn small_rsa(key: SmallRsaKey, public_key: String) -> Self {
        SigningKey {
            rsa_bits: Some(key.bits()),
            backend: Backend::SmallRsa(key),
            algo: Algo::RsaSha256,
            public_key,
        }
    }

    pub(crate) fn transit(key: TransitKey, public: RemotePublicKey) -> Self {
        Self::remote(Backend::Transit(key), public)
    }

    pub(crate) fn pkcs11(key: Pkcs11Key, public: RemotePublicKey) -> Self {
        Self::remote(Backend::Pkcs11(key), public)
    }

    fn remote(backend: Backend, public: RemotePublicKey) -> Self {
        SigningKey {
            backend,
            algo: public.algo,
            rsa_bits: public.rsa_bits,
            public_key: public.base64,
        }
    }

    pub fn algo(&self) -> Algo {
        self.algo
    }
    pub fn rsa_bits(&self) -> Option<usize> {
        self.rsa_bits
    }
    pub fn custody(&self) -> Custody {
        match self.backend {
            Backend::Memory(_) | Backend::SmallRsa(_) => Custody::Memory,
            Backend::Transit(_) => Custody::Transit,
            Backend::Pkcs11(_) => Custody::Pkcs11,
        }
    }
    /// "rsa-2048" or "ed25519", for tables and logs.
    pub fn describe(&self) -> String {
        match self.rsa_bits {
            Some(bits) => format!("rsa-{bits}"),
            None => "ed25519".into(),
        }
    }
    /// Why this key deserves a warning at `check` and startup, if it does.
    pub fn weakness(&self) -> Option<String> {
        match self.rsa_bits {
            Some(bits) if bits < super::small_rsa::AWS_LC_RS_MIN_RSA_BITS => Some(format!(
                "RSA-{bits} is allowed by RFC 8301 but weak: it can be factored with \
                 well-funded resources, and some receivers treat it as no signature; rotate to \
                 RSA-2048 or Ed25519 (`signet-milter keygen --algo rsa2048`)"
            )),
            _ => None,
        }
    }
    /// The TXT record value to publish at `selector._domainkey.domain`.
    pub fn dns_record(&self) -> String {
        let k = match self.algo {
            Algo::RsaSha256 => "rsa",
            Algo::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key)
    }
    pub fn public_key_base64(&self) -> &str {
        &self.public_key
    }
    /// Refuses the key when the configuration expects another algorithm.
    pub fn check_algo(&self, configured: Option<Algo>) -> Result<(), KeyParseError> {
        match configured {
            Some(configured) if configured != self.algo => Err(KeyParseError::AlgorithmMismatch {
                found: self.algo,
                configured,
            }),
            _ => Ok(()),
        }
    }

    /// Signs `data`, the bytes DKIM signs (the canonicalized header fields and the
    /// DKIM-Signature field with an empty `b=`, RFC 6376 §3.7), and returns `b=` raw.
    /// For `rsa-sha256` that is RSASSA-PKCS1-v1_5 with SHA-256, for `ed25519-sha256` PureEdDSA
    /// over the SHA-256 of `data` (RFC 8463): either way only the 32-byte hash leaves the
    /// process when the key is remote.
    pub async fn sign(self: &Arc<Self>, data: Vec<u8>) -> Result<Vec<u8>, SignError> {
        match &self.backend {
            // About 20 µs: cheaper than a hand-off to another thread.
            Backend::Memory(key @ DkimKey::Ed25519(_)) => sign_in_memory(key, &data),
            // 0.3 ms (2048 bits) to 15 ms (8192 bits) of CPU: on the blocking pool, so the
            // workers serve other connections meanwhile (measured with RSA-4096 mail on 4
            // connections: Ed25519 mail on 4 others took 4.3 ms per message inline, 0.4 ms so).
            Backend::Memory(_) | Backend::SmallRsa(_) => {
                let key = self.clone();
                tokio::task::spawn_blocking(move || match &key.backend {
                    Backend::Memory(k) => sign_in_memory(k, &data),
                    Backend::SmallRsa(k) => k
                        .sign_sha256_digest(&sha256(&data))
                        .map_err(SignError::Crypto),
                    _ => Err(SignError::TaskFailed),
                })
                .await
                .map_err(|_| SignError::TaskFailed)?
            }
            Backend::Transit(key) => key.sign(&sha256(&data)).await,
            Backend::Pkcs11(key) => key.sign(sha256(&data), self.algo).await,
        }
    }
}

fn sign_in_memory(key: &DkimKey, data: &[u8]) -> Result<Vec<u8>, SignError> {
    key.sign(data).map_err(|e| SignError::Crypto(e.to_string()))
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A remote key's public half, as its vault or token gives it.
pub(crate) struct RemotePublicKey {
    pub algo: Algo,
    pub rsa_bits: Option<usize>,
    pub base64: String,
}

impl RemotePublicKey {
    /// An RSA key from its DER SubjectPublicKeyInfo.
    pub fn rsa_spki(spki: &[u8]) -> Result<Self, String> {
        use base64::Engine as _;
        let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki)
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        Ok(RemotePublicKey {
            algo: Algo::RsaSha256,
            rsa_bits: Some(key.key_size_bits()),
            base64: base64::engine::general_purpose::STANDARD.encode(spki),
        })
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub fn ed25519(raw: &[u8]) -> Result<Self, String> {
        use base64::Engine as _;
        if raw.len() != 32 {
            return Err(format!(
                "an Ed25519 public key has 32 bytes, this one {}",
                raw.len()
            ));
        }
        Ok(RemotePublicKey {
            algo: Algo::Ed25519Sha256,
            rsa_bits: None,
            base64: base64::engine::general_purpose::STANDARD.encode(raw),
        })
    }
}
