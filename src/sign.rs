//! One DKIM signature in the making: mail-auth's streaming signer, fed the message as it
//! arrives, so memory per message is its header section, whatever the body size.

use crate::config::{Algo, Canon, OnError};
use crate::keys::{SignError, SigningKey};
use crate::policy::PlannedSignature;
use mail_auth::crypto::{Algorithm, Sha256, SigningKey as MailAuthKey};
use mail_auth::dkim::{Canonicalization, DkimSigner, DkimSigningStream, Signature};
use mail_auth::headers::{HeaderWriter as _, Writable};
use mail_auth::signer::Ready;
use std::sync::{Arc, Mutex};

/// The key as mail-auth's signer sees it. mail-auth's `sign` is synchronous, and a remote key
/// needs a round trip, so this does not sign: it keeps the exact bytes mail-auth asks to have
/// signed and answers with an empty signature. [`UnsignedSignature::sign`] then has the real
/// key sign those bytes, wherever it is, and puts the result in `b=`. Canonicalization, the
/// tags and the header folding stay mail-auth's, identical for every backend.
#[derive(Clone)]
struct CapturingKey {
    algorithm: Algorithm,
    data: Arc<Mutex<Option<Vec<u8>>>>,
}

impl MailAuthKey for CapturingKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(512);
        input.write(&mut data);
        *self.data.lock().unwrap_or_else(|p| p.into_inner()) = Some(data);
        Ok(Vec::new())
    }

    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

type StreamSlot<'a> = Option<DkimSigningStream<'a, CapturingKey>>;

self_cell::self_cell!(
    /// mail-auth's stream borrows its signer; this keeps both in one owned, `Send` value that
    /// can live in the per-connection state between milter callbacks.
    struct StreamCell {
        owner: DkimSigner<CapturingKey, Ready>,
        #[not_covariant]
        dependent: StreamSlot,
    }
);

/// A signature being computed over one message.
pub struct SignatureStream {
    cell: StreamCell,
    key: Arc<SigningKey>,
    /// Where the capturing key leaves the bytes to sign.
    to_sign: Arc<Mutex<Option<Vec<u8>>>>,
    pub domain: String,
    pub selector: String,
    pub algo: Algo,
    /// What a failure of this signature does to the message.
    pub on_error: OnError,
}

/// A finished signature, ready for the MTA.
#[derive(Clone, Debug)]
pub struct SignedHeader {
    pub domain: String,
    pub selector: String,
    pub algo: Algo,
    /// The `DKIM-Signature` field body, folded with `\n\t` as milter header values are, with
    /// the leading space when the MTA passes header values verbatim.
    pub value: String,
}

fn canonicalization(c: Canon) -> Canonicalization {
    match c {
        Canon::Relaxed => Canonicalization::Relaxed,
        Canon::Simple => Canonicalization::Simple,
    }
}

impl SignatureStream {
    pub fn new(planned: &PlannedSignature, key: Arc<SigningKey>) -> Self {
        let template = &planned.template;
        let algo = key.algo();
        let to_sign = Arc::new(Mutex::new(None));
        let capturing = CapturingKey {
            algorithm: match algo {
                Algo::RsaSha256 => Algorithm::RsaSha256,
                Algo::Ed25519Sha256 => Algorithm::Ed25519Sha256,
            },
            data: to_sign.clone(),
        };
        let mut signer = DkimSigner::from_key(capturing)
            .domain(planned.domain.clone())
            .selector(template.selector.clone())
            .headers(template.headers.iter().cloned())
            .header_canonicalization(canonicalization(template.header_canonicalization))
            .body_canonicalization(canonicalization(template.body_canonicalization));
        if let Some(expiration) = template.expiration {
            signer = signer.expiration(expiration);
        }
        SignatureStream {
            cell: StreamCell::new(signer, |s| Some(s.sign_streaming())),
            key,
            to_sign,
            domain: planned.domain.clone(),
            selector: template.selector.clone(),
            algo,
            on_error: template.on_error,
        }
    }

    /// Feeds message bytes (CRLF line ends), headers first.
    pub fn write(&mut self, bytes: &[u8]) {
        self.cell.with_dependent_mut(|_, stream| {
            if let Some(stream) = stream {
                stream.write(bytes);
            }
        });
    }

    /// Completes the hashes and the tags: everything but the private-key operation.
    pub fn finish(mut self, leading_space: bool) -> Result<UnsignedSignature, mail_auth::Error> {
        let signature = self
            .cell
            .with_dependent_mut(|_, stream| stream.take().map(DkimSigningStream::finish))
            .unwrap_or(Err(mail_auth::Error::NoHeadersFound))?;
        let data = self
            .to_sign
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(mail_auth::Error::NoHeadersFound)?;
        Ok(UnsignedSignature {
            signature,
            data,
            key: self.key,
            domain: self.domain,
            selector: self.selector,
            algo: self.algo,
            on_error: self.on_error,
            leading_space,
        })
    }
}

/// A signature whose `b=` is still to be computed by its key.
pub struct UnsignedSignature {
    signature: Signature,
    /// What DKIM signs (RFC 6376 §3.7), exactly as mail-auth built it.
    data: Vec<u8>,
    key: Arc<SigningKey>,
    pub domain: String,
    pub selector: String,
    pub algo: Algo,
    pub on_error: OnError,
    leading_space: bool,
}

impl UnsignedSignature {
    /// Has the key sign, and writes the header value.
    pub async fn sign(mut self) -> Result<SignedHeader, SignError> {
        self.signature.b = self.key.sign(std::mem::take(&mut self.data)).await?;
        let header = self.signature.to_header();
        let body = header
            .strip_prefix("DKIM-Signature:")
            .unwrap_or(&header)
            .trim_end_matches("\r\n");
        let body = if self.leading_space {
            body
        } else {
            body.trim_start_matches(' ')
        };
        Ok(SignedHeader {
            domain: self.domain,
            selector: self.selector,
            algo: self.algo,
            value: body.replace("\r\n", "\n"),
        })
    }
}
