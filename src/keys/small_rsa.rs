//! RSA keys of 1024 to 2047 bits, which aws-lc-rs refuses to sign with.
//!
//! RFC 8301 §3.2 still allows 1024-bit keys, many domains still publish them, and an operator
//! moving from OpenDKIM must not be forced to rotate before switching. aws-lc-rs (the backend
//! for every other key) rejects RSA keys under 2048 bits in its safe API, so these keys use
//! AWS-LC's own C RSA through `aws-lc-sys`, the same library aws-lc-rs wraps and already linked
//! into the binary: its private-key operation is constant-time and blinded (BoringSSL's bignum
//! code), which the pure-Rust `rsa` crate is not (RUSTSEC-2023-0071, the Marvin attack). Keys
//! under 1024 bits stay refused: RFC 8301 forbids them and they can be factored.

use super::parse::KeyParseError;
use aws_lc_sys as lc;
use std::ptr::NonNull;

/// RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits.
pub const MIN_SMALL_RSA_BITS: usize = 1024;
/// From this size on, aws-lc-rs signs the key.
pub const AWS_LC_RS_MIN_RSA_BITS: usize = 2048;

/// An RSA private key of 1024 to 2047 bits, held by AWS-LC (freed, and its memory cleansed,
/// by `RSA_free`).
pub struct SmallRsaKey {
    rsa: NonNull<lc::RSA>,
    bits: usize,
}

// SAFETY: an AWS-LC `RSA` is reference-counted and safe to use from several threads at once for
// private-key operations: the lazily computed blinding and Montgomery values sit behind the
// object's own lock (BoringSSL's documented thread-safety rule for `const` RSA operations).
// Nothing mutates the key after it is parsed.
unsafe impl Send for SmallRsaKey {}
unsafe impl Sync for SmallRsaKey {}

impl Drop for SmallRsaKey {
    fn drop(&mut self) {
        // SAFETY: `rsa` came from AWS-LC's parser and is owned by this value alone.
        unsafe { lc::RSA_free(self.rsa.as_ptr()) }
    }
}

impl SmallRsaKey {
    /// A PKCS#1 `RSAPrivateKey`.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyParseError> {
        // SAFETY: AWS-LC reads `der.len()` bytes from `der` and returns an owned RSA or NULL.
        let rsa = unsafe { lc::RSA_private_key_from_bytes(der.as_ptr(), der.len()) };
        Self::checked(NonNull::new(rsa).ok_or(KeyParseError::NotAKey)?)
    }

    /// A PKCS#8 `PrivateKeyInfo` holding an RSA key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyParseError> {
        let mut cbs = std::mem::MaybeUninit::<lc::CBS>::uninit();
        // SAFETY: CBS_init fills the CBS, which then borrows `der` only during this function.
        // EVP_parse_private_key returns an owned EVP_PKEY or NULL; get1_RSA takes its own
        // reference to the RSA, so the EVP_PKEY is freed before returning.
        let rsa = unsafe {
            lc::CBS_init(cbs.as_mut_ptr(), der.as_ptr(), der.len());
            let pkey = lc::EVP_parse_private_key(cbs.as_mut_ptr());
            if pkey.is_null() {
                return Err(KeyParseError::NotAKey);
            }
            let rsa = if lc::EVP_PKEY_id(pkey) == lc::EVP_PKEY_RSA {
                lc::EVP_PKEY_get1_RSA(pkey)
            } else {
                std::ptr::null_mut()
            };
            lc::EVP_PKEY_free(pkey);
            rsa
        };
        Self::checked(NonNull::new(rsa).ok_or(KeyParseError::NotAKey)?)
    }

    fn checked(rsa: NonNull<lc::RSA>) -> Result<Self, KeyParseError> {
        // SAFETY: `rsa` is a valid, owned RSA; from here `key` frees it on every path.
        let bits = unsafe { lc::RSA_bits(rsa.as_ptr()) } as usize;
        let key = SmallRsaKey { rsa, bits };
        if bits < MIN_SMALL_RSA_BITS {
            return Err(KeyParseError::RsaTooSmall);
        }
        if bits >= AWS_LC_RS_MIN_RSA_BITS {
            return Err(KeyParseError::Invalid(
                "internal: a key of 2048 bits or more belongs to aws-lc-rs".into(),
            ));
        }
        // SAFETY: valid RSA. Checks that n = p·q and that d, dmp1, dmq1, iqmp agree.
        if unsafe { lc::RSA_check_key(key.rsa.as_ptr()) } != 1 {
            return Err(KeyParseError::Invalid(
                "the RSA key is inconsistent (RSA_check_key failed)".into(),
            ));
        }
        Ok(key)
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest (`rsa-sha256`): AWS-LC adds the DigestInfo.
    pub fn sign_sha256_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        // SAFETY: valid RSA; `out` has RSA_size bytes, the most RSA_sign writes.
        unsafe {
            let size = lc::RSA_size(self.rsa.as_ptr()) as usize;
            let mut out = vec![0u8; size];
            let mut written: std::os::raw::c_uint = 0;
            let ok = lc::RSA_sign(
                lc::NID_sha256,
                digest.as_ptr(),
                digest.len(),
                out.as_mut_ptr(),
                &mut written,
                self.rsa.as_ptr(),
            );
            if ok != 1 {
                return Err("AWS-LC RSA_sign failed".into());
            }
            out.truncate(written as usize);
            Ok(out)
        }
    }

    /// The public key as a DER SubjectPublicKeyInfo, which base64-encoded is DKIM's `p=`.
    pub fn public_key_spki_der(&self) -> Result<Vec<u8>, KeyParseError> {
        let failed = || KeyParseError::Invalid("cannot encode the RSA public key".into());
        // SAFETY: the EVP_PKEY takes its own reference to the RSA and is freed here; the CBB
        // buffer is copied out and freed with OPENSSL_free.
        unsafe {
            let pkey = lc::EVP_PKEY_new();
            if pkey.is_null() {
                return Err(failed());
            }
            if lc::EVP_PKEY_set1_RSA(pkey, self.rsa.as_ptr()) != 1 {
                lc::EVP_PKEY_free(pkey);
                return Err(failed());
            }
            let mut cbb = std::mem::MaybeUninit::<lc::CBB>::uninit();
            if lc::CBB_init(cbb.as_mut_ptr(), 512) != 1 {
                lc::EVP_PKEY_free(pkey);
                return Err(failed());
            }
            let marshalled = lc::EVP_marshal_public_key(cbb.as_mut_ptr(), pkey);
            lc::EVP_PKEY_free(pkey);
            let mut data: *mut u8 = std::ptr::null_mut();
            let mut len = 0usize;
            if marshalled != 1 || lc::CBB_finish(cbb.as_mut_ptr(), &mut data, &mut len) != 1 {
                lc::CBB_cleanup(cbb.as_mut_ptr());
                return Err(failed());
            }
            let der = std::slice::from_raw_parts(data, len).to_vec();
            lc::OPENSSL_free(data.cast());
            Ok(der)
        }
    }
}
