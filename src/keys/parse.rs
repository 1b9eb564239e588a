//! Private keys in every form operators have them: PEM or DER, PKCS#1 or PKCS#8, RSA or Ed25519,
//! plus the base64 forms of OpenDKIM's KeyTable (base64 DER) and dkimpy/rspamd (a raw Ed25519
//! seed). The algorithm is detected from the key itself.

use super::signing_key::SigningKey;
use super::small_rsa::{MIN_SMALL_RSA_BITS, SmallRsaKey};
use crate::config::Algo;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

/// Why bytes are not a usable DKIM private key. Never contains key material.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    #[error("not a private key (expected PEM, DER, or base64 of either)")]
    NotAKey,
    #[error("unsupported key type {0} (DKIM signs with RSA or Ed25519)")]
    Unsupported(&'static str),
    #[error(
        "RSA key is smaller than {MIN_SMALL_RSA_BITS} bits, which RFC 8301 forbids for DKIM (such keys can be factored); generate a new one with `signet-milter keygen --algo rsa2048`"
    )]
    RsaTooSmall,
    #[error("RSA key is larger than 8192 bits")]
    RsaTooLarge,
    #[error("the key is {found} but the configuration says algo = {configured}")]
    AlgorithmMismatch { found: Algo, configured: Algo },
    #[error("the key could not be loaded: {0}")]
    Invalid(String),
}

/// Parses a private key in any supported encoding.
pub fn parse_private_key(bytes: &[u8]) -> Result<SigningKey, KeyParseError> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    match text {
        Some(t) if t.starts_with("-----BEGIN") => {
            let der = PrivateKeyDer::from_pem_slice(t.as_bytes()).map_err(|e| match e {
                rustls_pki_types::pem::Error::NoItemsFound => KeyParseError::NotAKey,
                other => KeyParseError::Invalid(format!("bad PEM: {other}")),
            })?;
            from_der(Zeroizing::new(der))
        }
        Some(t)
            if !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            let compact: Zeroizing<String> = Zeroizing::new(t.split_whitespace().collect());
            let decoded = Zeroizing::new(
                BASE64
                    .decode(compact.as_bytes())
                    .map_err(|_| KeyParseError::NotAKey)?,
            );
            if decoded.len() == 32 {
                return from_ed25519_seed(&decoded);
            }
            from_raw_der(&decoded)
        }
        _ => from_raw_der(bytes),
    }
}

/// DER of unknown kind: PKCS#8 first (either algorithm), then PKCS#1 (RSA only).
fn from_raw_der(der: &[u8]) -> Result<SigningKey, KeyParseError> {
    let pkcs8 = Zeroizing::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())));
    match from_der(pkcs8) {
        Err(KeyParseError::NotAKey) => from_der(Zeroizing::new(PrivateKeyDer::Pkcs1(
            PrivatePkcs1KeyDer::from(der.to_vec()),
        ))),
        other => other,
    }
}

fn from_der(der: Zeroizing<PrivateKeyDer<'static>>) -> Result<SigningKey, KeyParseError> {
    match &*der {
        PrivateKeyDer::Pkcs1(pkcs1) => {
            let bytes = pkcs1.secret_pkcs1_der();
            match aws_lc_rs::rsa::KeyPair::from_der(bytes).map_err(rsa_rejected) {
                Ok(pair) => rsa(pair, &der),
                Err(KeyParseError::RsaTooSmall) => small_rsa(SmallRsaKey::from_pkcs1_der(bytes)?),
                Err(e) => Err(e),
            }
        }
        PrivateKeyDer::Pkcs8(pkcs8) => {
            let bytes = pkcs8.secret_pkcs8_der();
            match aws_lc_rs::rsa::KeyPair::from_pkcs8(bytes).map_err(rsa_rejected) {
                Ok(pair) => return rsa(pair, &der),
                Err(KeyParseError::RsaTooSmall) => {
                    return small_rsa(SmallRsaKey::from_pkcs8_der(bytes)?);
                }
                Err(e @ KeyParseError::RsaTooLarge) => return Err(e),
                Err(_) => {}
            }
            if let Ok(pair) =
                aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
            {
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes)
                    .map_err(|e| KeyParseError::Invalid(e.to_string()))?;
                return Ok(ed25519(key, pair.public_key().as_ref()));
            }
            if aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                bytes,
            )
            .is_ok()
            {
                return Err(KeyParseError::Unsupported("ECDSA"));
            }
            Err(KeyParseError::NotAKey)
        }
        PrivateKeyDer::Sec1(_) => Err(KeyParseError::Unsupported("EC (SEC1)")),
        _ => Err(KeyParseError::NotAKey),
    }
}

fn rsa_rejected(e: aws_lc_rs::error::KeyRejected) -> KeyParseError {
    match e.description_() {
        "TooSmall" => KeyParseError::RsaTooSmall,
        "TooLarge" => KeyParseError::RsaTooLarge,
        _ => KeyParseError::NotAKey,
    }
}

/// aws-lc-rs refuses RSA under 2048 bits; 1024 to 2047 go to [`SmallRsaKey`].
fn small_rsa(key: SmallRsaKey) -> Result<SigningKey, KeyParseError> {
    let spki = key.public_key_spki_der()?;
    Ok(SigningKey::small_rsa(key, BASE64.encode(spki)))
}

fn rsa(
    pair: aws_lc_rs::rsa::KeyPair,
    der: &PrivateKeyDer<'static>,
) -> Result<SigningKey, KeyParseError> {
    let bits = pair.public_modulus_len() * 8;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| KeyParseError::Invalid("cannot encode the RSA public key".into()))?;
    let key = RsaKey::<Sha256>::from_key_der(der.clone_key())
        .map_err(|e| KeyParseError::Invalid(e.to_string()))?;
    Ok(SigningKey::in_memory(
        DkimKey::Rsa(key),
        Some(bits),
        BASE64.encode(spki.as_ref()),
    ))
}

fn ed25519(key: Ed25519Key, public: &[u8]) -> SigningKey {
    SigningKey::in_memory(DkimKey::Ed25519(key), None, BASE64.encode(public))
}

fn from_ed25519_seed(seed: &[u8]) -> Result<SigningKey, KeyParseError> {
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| KeyParseError::NotAKey)?;
    let public = pair.public_key().as_ref().to_vec();
    let key = Ed25519Key::from_seed_and_public_key(seed, &public)
        .map_err(|e| KeyParseError::Invalid(e.to_string()))?;
    Ok(ed25519(key, &public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate::{KeyKind, generate};

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        BASE64.decode(body).unwrap()
    }

    #[test]
    fn detects_algorithm_from_every_encoding() {
        for kind in [KeyKind::Rsa2048, KeyKind::Ed25519] {
            let generated = generate(kind).unwrap();
            let pem = generated.private_pem();
            let der = pem_to_der(&pem);
            let b64 = BASE64.encode(&der);
            for (what, bytes) in [
                ("pem", pem.as_bytes().to_vec()),
                ("der", der.clone()),
                ("base64", b64.into_bytes()),
            ] {
                let key =
                    parse_private_key(&bytes).unwrap_or_else(|e| panic!("{kind:?} {what}: {e}"));
                assert_eq!(key.algo(), generated.key.algo(), "{kind:?} {what}");
                assert_eq!(
                    key.public_key_base64(),
                    generated.key.public_key_base64(),
                    "{kind:?} {what}"
                );
            }
        }
    }

    #[test]
    fn rsa_pkcs1_pem_and_der() {
        let generated = generate(KeyKind::Rsa2048).unwrap();
        let pkcs8 = pem_to_der(&generated.private_pem());
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).unwrap();
        // PKCS#1 is the RSAPrivateKey inside PKCS#8; take it from the PrivateKeyInfo OCTET STRING.
        let pkcs1 = extract_pkcs1(&pkcs8);
        assert!(aws_lc_rs::rsa::KeyPair::from_der(&pkcs1).is_ok());
        let pem = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            BASE64.encode(&pkcs1)
        );
        for bytes in [pem.into_bytes(), pkcs1] {
            let key = parse_private_key(&bytes).unwrap();
            assert_eq!(key.rsa_bits(), Some(pair.public_modulus_len() * 8));
            assert_eq!(key.describe(), "rsa-2048");
        }
    }

    /// PKCS#8 PrivateKeyInfo ends with the OCTET STRING holding the PKCS#1 key (no attributes
    /// here). Its tag is the first `04 82` (the version and algorithm before it are fixed
    /// bytes); searching from the end could land on those bytes inside the key (~2% of keys).
    fn extract_pkcs1(pkcs8: &[u8]) -> Vec<u8> {
        let pos = pkcs8.windows(2).position(|w| w == [0x04, 0x82]).unwrap();
        let len = u16::from_be_bytes([pkcs8[pos + 2], pkcs8[pos + 3]]) as usize;
        pkcs8[pos + 4..pos + 4 + len].to_vec()
    }

    #[test]
    fn raw_ed25519_seed_as_dkimpy_writes_it() {
        let seed = [7u8; 32];
        let key = parse_private_key(BASE64.encode(seed).as_bytes()).unwrap();
        assert_eq!(key.algo(), Algo::Ed25519Sha256);
        assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn refuses_garbage_small_and_foreign_keys() {
        assert_eq!(
            parse_private_key(b"hello world").unwrap_err(),
            KeyParseError::NotAKey
        );
        assert_eq!(
            parse_private_key(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err(),
            KeyParseError::NotAKey
        );
        assert_eq!(parse_private_key(b"").unwrap_err(), KeyParseError::NotAKey);
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let ec_der = ec.to_pkcs8v1().unwrap();
        assert_eq!(
            parse_private_key(ec_der.as_ref()).unwrap_err(),
            KeyParseError::Unsupported("ECDSA")
        );
        let small = include_bytes!("../../tests/fixtures/rsa512-insecure-test-only.pem");
        assert_eq!(
            parse_private_key(small).unwrap_err(),
            KeyParseError::RsaTooSmall
        );
    }

    #[test]
    fn algo_must_agree_with_the_key() {
        let ed = generate(KeyKind::Ed25519).unwrap().key;
        assert!(ed.check_algo(Some(Algo::Ed25519Sha256)).is_ok());
        assert!(ed.check_algo(None).is_ok());
        let err = ed.check_algo(Some(Algo::RsaSha256)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the key is ed25519-sha256 but the configuration says algo = rsa-sha256"
        );
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let generated = generate(KeyKind::Ed25519).unwrap();
        let shown = format!("{:?}", generated.key);
        assert_eq!(shown, "SigningKey(ed25519)");
    }
}
