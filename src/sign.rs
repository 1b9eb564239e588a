//! One DKIM signature in the making: mail-auth's streaming signer, fed the message as it
//! arrives, so memory per message is its header section, whatever the body size.

use crate::config::{Algo, Canon, OnError};
use crate::keys::parse::PrivateKey;
use crate::policy::PlannedSignature;
use mail_auth::crypto::{Algorithm, Sha256, SigningKey};
use mail_auth::dkim::{Canonicalization, DkimSigner, DkimSigningStream};
use mail_auth::headers::{HeaderWriter as _, Writable};
use mail_auth::signer::Ready;
use std::sync::Arc;

/// A cached key as mail-auth's signer wants it: owned, cheap to clone.
#[derive(Clone)]
pub struct SharedKey(Arc<PrivateKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.dkim_key().sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.dkim_key().algorithm()
    }
}

type StreamSlot<'a> = Option<DkimSigningStream<'a, SharedKey>>;

self_cell::self_cell!(
    /// mail-auth's stream borrows its signer; this keeps both in one owned, `Send` value that
    /// can live in the per-connection state between milter callbacks.
    struct StreamCell {
        owner: DkimSigner<SharedKey, Ready>,
        #[not_covariant]
        dependent: StreamSlot,
    }
);

/// A signature being computed over one message.
pub struct SignatureStream {
    cell: StreamCell,
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
    pub fn new(planned: &PlannedSignature, key: Arc<PrivateKey>) -> Self {
        let template = &planned.template;
        let algo = key.algo();
        let mut signer = DkimSigner::from_key(SharedKey(key))
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

    /// Completes the signature. `leading_space`: whether header values carry their leading space.
    pub fn finish(mut self, leading_space: bool) -> Result<SignedHeader, mail_auth::Error> {
        let signature = self
            .cell
            .with_dependent_mut(|_, stream| stream.take().map(DkimSigningStream::finish))
            .unwrap_or(Err(mail_auth::Error::NoHeadersFound))?;
        let header = signature.to_header();
        let body = header
            .strip_prefix("DKIM-Signature:")
            .unwrap_or(&header)
            .trim_end_matches("\r\n");
        let body = if leading_space {
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
