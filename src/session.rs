//! One message, from its first header to its signatures, independent of how it arrived: the
//! milter feeds it from protocol callbacks, `signet-milter sign` from a file. Both therefore
//! sign by exactly the same rules.

use crate::config::{Algo, OnError};
use crate::keys::KeyError;
use crate::policy::{self, NoAuthor, PlannedSignature};
use crate::runtime::Runtime;
use crate::sign::{SignatureStream, SignedHeader};
use std::fmt;
use std::sync::Arc;

/// Header sections larger than this are not signed: no legitimate message needs more, and the
/// whole section is held in memory until the end of the headers.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Why a signature could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignFailure {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the header section is larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
}

impl SignFailure {
    /// A phrase for the SMTP reply: what failed, never which file or secret.
    pub fn public_reason(&self) -> &'static str {
        match self {
            SignFailure::Key(k) => k.public_reason(),
            SignFailure::Sign(_) => "signature could not be computed",
            SignFailure::HeadersTooLarge => "header section too large",
        }
    }
}

/// A signature that failed, with what the configuration says to do about it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `d=`/`s=` of the failed signature, or `None` for a message-level failure.
    pub signature: Option<(String, String)>,
    pub error: SignFailure,
    pub action: OnError,
}

impl Failure {
    /// The SMTP reply for a message refused because of this failure.
    pub fn smtp_reply(&self) -> (&'static str, &'static str, String) {
        let what = match &self.signature {
            Some((domain, _)) => format!(
                "DKIM signing for {domain} failed: {}",
                self.error.public_reason()
            ),
            None => format!("DKIM signing failed: {}", self.error.public_reason()),
        };
        match self.action {
            OnError::Reject => ("550", "5.7.0", what),
            _ => ("451", "4.3.0", format!("{what}; try again later")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.signature {
            Some((d, s)) => write!(f, "{d}/{s}: {} (on_error={})", self.error, self.action),
            None => write!(f, "{} (on_error={})", self.error, self.action),
        }
    }
}

/// What to do after the end of the headers.
#[derive(Debug)]
pub enum HeadersDecision {
    /// Signatures are being computed; send the body.
    Sign,
    /// Nothing to sign; the reason is for the log.
    Skip(String),
    /// A signature failed and its `on_error` refuses the message.
    Refuse(Failure),
}

/// The outcome at the end of the message.
#[derive(Debug, Default)]
pub struct Outcome {
    pub signed: Vec<SignedHeader>,
    /// Failures whose `on_error = accept` let the message go on without that signature.
    pub accepted_failures: Vec<Failure>,
    /// A failure that refuses the message (the strictest one), if any.
    pub refusal: Option<Failure>,
}

enum State {
    Collecting {
        /// The header section as it will be signed: `Name: value\r\n` each.
        section: Vec<u8>,
        from_values: Vec<Vec<u8>>,
        too_large: bool,
    },
    Signing {
        streams: Vec<SignatureStream>,
        body: CrlfBody,
        accepted_failures: Vec<Failure>,
    },
    Done,
}

/// A message that may be signed.
pub struct MessageSession {
    runtime: Arc<Runtime>,
    /// Whether header values arrive with the space after the colon (milter LEADING_SPACE).
    leading_space: bool,
    state: State,
}

impl MessageSession {
    /// The configuration generation this message works with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn new(runtime: Arc<Runtime>, leading_space: bool) -> Self {
        MessageSession {
            runtime,
            leading_space,
            state: State::Collecting {
                section: Vec::with_capacity(4096),
                from_values: Vec::new(),
                too_large: false,
            },
        }
    }

    /// Records one header field as the MTA passed it (folded lines separated by `\n`).
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) {
        let State::Collecting {
            section,
            from_values,
            too_large,
        } = &mut self.state
        else {
            return;
        };
        if *too_large || section.len() + name.len() + value.len() + 4 > MAX_HEADER_BYTES {
            *too_large = true;
            return;
        }
        section.extend_from_slice(name);
        section.push(b':');
        if !self.leading_space {
            section.push(b' ');
        }
        push_crlf_normalized(section, value);
        section.extend_from_slice(b"\r\n");
        if name.eq_ignore_ascii_case(b"From") {
            from_values.push(value.to_vec());
        }
    }

    /// Chooses the signatures, resolves their keys and starts them on the header section.
    pub async fn end_of_headers(&mut self) -> HeadersDecision {
        let State::Collecting {
            section,
            from_values,
            too_large,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return HeadersDecision::Skip("end of headers seen twice".into());
        };
        let runtime = self.runtime.clone();
        if too_large {
            return HeadersDecision::Refuse(Failure {
                signature: None,
                error: SignFailure::HeadersTooLarge,
                action: runtime.config.milter.on_error,
            });
        }
        let from_refs: Vec<&[u8]> = from_values.iter().map(Vec::as_slice).collect();
        let author = policy::author_domain(&from_refs);
        let plan = policy::plan(&runtime.config.signing, author.as_deref());
        // Rotated signatures sign with the selector active now (the rotation seam).
        let plan = runtime.rotation.apply(&runtime.config.signing, plan);
        if plan.signatures.is_empty() {
            return HeadersDecision::Skip(no_signature_reason(&author));
        }

        let mut streams = Vec::with_capacity(plan.signatures.len());
        let mut accepted_failures = Vec::new();
        let mut refusal: Option<Failure> = None;
        for planned in &plan.signatures {
            match self.start_signature(planned, &section).await {
                Ok(stream) => streams.push(stream),
                Err(error) => {
                    let failure = Failure {
                        signature: Some((planned.domain.clone(), planned.selector().to_string())),
                        error,
                        action: planned.template.on_error,
                    };
                    if failure.action == OnError::Accept {
                        accepted_failures.push(failure);
                    } else if refusal.as_ref().is_none_or(|r| failure.action > r.action) {
                        refusal = Some(failure);
                    }
                }
            }
        }
        if let Some(failure) = refusal {
            return HeadersDecision::Refuse(failure);
        }
        if streams.is_empty() {
            // Every signature failed with on_error = accept: say why, then let the message pass.
            let reasons: Vec<String> = accepted_failures.iter().map(ToString::to_string).collect();
            return HeadersDecision::Skip(format!(
                "no signature could be made: {}",
                reasons.join("; ")
            ));
        }
        self.state = State::Signing {
            streams,
            body: CrlfBody::default(),
            accepted_failures,
        };
        HeadersDecision::Sign
    }

    async fn start_signature(
        &self,
        planned: &PlannedSignature,
        section: &[u8],
    ) -> Result<SignatureStream, SignFailure> {
        let template = &planned.template;
        let source = template.key.resolve(&planned.domain, &template.selector);
        let key = self.runtime.keys.get(&source).await?;
        key.check_algo(template.algo)
            .map_err(|error| KeyError::Parse {
                origin: source.to_string(),
                error,
            })?;
        let mut stream = SignatureStream::new(planned, key);
        stream.write(section);
        stream.write(b"\r\n");
        Ok(stream)
    }

    /// Feeds a body chunk (any size; line ends normalized to CRLF).
    pub fn body_chunk(&mut self, chunk: &[u8]) {
        if let State::Signing { streams, body, .. } = &mut self.state {
            let bytes = body.normalize(chunk);
            for stream in streams.iter_mut() {
                stream.write(bytes);
            }
        }
    }

    /// Whether finishing includes an RSA signature, a private-key operation that costs
    /// hundreds of microseconds to milliseconds (Ed25519: about 20 µs).
    pub fn signs_with_rsa(&self) -> bool {
        match &self.state {
            State::Signing { streams, .. } => streams.iter().any(|s| s.algo == Algo::RsaSha256),
            _ => false,
        }
    }

    /// Finishes every signature.
    pub fn finish(mut self) -> Outcome {
        let State::Signing {
            streams,
            accepted_failures,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Outcome::default();
        };
        let mut outcome = Outcome {
            accepted_failures,
            ..Outcome::default()
        };
        for stream in streams {
            let id = (stream.domain.clone(), stream.selector.clone());
            let action = stream.on_error;
            match stream.finish(self.leading_space) {
                Ok(signed) => outcome.signed.push(signed),
                Err(e) => {
                    let failure = Failure {
                        signature: Some(id),
                        error: SignFailure::Sign(e.to_string()),
                        action,
                    };
                    if failure.action == OnError::Accept {
                        outcome.accepted_failures.push(failure);
                    } else if outcome
                        .refusal
                        .as_ref()
                        .is_none_or(|r| failure.action > r.action)
                    {
                        outcome.refusal = Some(failure);
                    }
                }
            }
        }
        outcome
    }
}

fn no_signature_reason(author: &Result<String, NoAuthor>) -> String {
    match author {
        Ok(domain) => format!("no signing entry for author domain {domain}"),
        Err(reason) => format!("no author domain: {reason}"),
    }
}

/// Appends `value` with every bare `\n` turned into `\r\n` (MTAs pass folded header lines with LF).
fn push_crlf_normalized(out: &mut Vec<u8>, value: &[u8]) {
    push_with_crlf(out, value, false);
}

/// Appends `bytes` to `out` with a `\r` before every bare `\n`; `after_cr`: whether the byte
/// before `bytes` was a `\r`. Lines are found with memchr, so text that is already CRLF costs
/// a vectorized scan and one copy.
fn push_with_crlf(out: &mut Vec<u8>, bytes: &[u8], after_cr: bool) {
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', bytes) {
        if is_bare_lf(bytes, lf, after_cr) {
            out.extend_from_slice(&bytes[start..lf]);
            out.push(b'\r');
            start = lf;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether the `\n` at `bytes[lf]` lacks its `\r`.
fn is_bare_lf(bytes: &[u8], lf: usize, after_cr: bool) -> bool {
    match lf.checked_sub(1) {
        Some(previous) => bytes[previous] != b'\r',
        None => !after_cr,
    }
}

/// Whether `bytes` has a `\n` without its `\r`. Branch-free over fixed blocks so that the
/// compiler vectorizes it: this runs over every body byte of every message.
fn has_bare_lf(bytes: &[u8], after_cr: bool) -> bool {
    if bytes.first() == Some(&b'\n') && !after_cr {
        return true;
    }
    const BLOCK: usize = 4096;
    let mut start = 1;
    while start < bytes.len() {
        let end = (start + BLOCK).min(bytes.len());
        let found = bytes[start..end]
            .iter()
            .zip(&bytes[start - 1..end - 1])
            .fold(0u8, |acc, (&b, &before)| {
                acc | (u8::from(b == b'\n') & u8::from(before != b'\r'))
            });
        if found != 0 {
            return true;
        }
        start = end;
    }
    false
}

/// Body bytes with line ends made CRLF, as they travel over SMTP and are verified. The MTA
/// normally sends CRLF already: then chunks pass through without a copy.
#[derive(Default)]
struct CrlfBody {
    last_was_cr: bool,
    scratch: Vec<u8>,
}

impl CrlfBody {
    fn normalize<'a>(&'a mut self, chunk: &'a [u8]) -> &'a [u8] {
        let after_cr = self.last_was_cr;
        if let Some(&last) = chunk.last() {
            self.last_was_cr = last == b'\r';
        }
        if !has_bare_lf(chunk, after_cr) {
            return chunk;
        }
        self.scratch.clear();
        self.scratch.reserve(chunk.len() + chunk.len() / 16);
        push_with_crlf(&mut self.scratch, chunk, after_cr);
        &self.scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_line_ends_become_crlf_across_chunks() {
        let cases: &[(&[&[u8]], &[u8])] = &[
            (&[b"a\r\nb\r\n"], b"a\r\nb\r\n"),
            (&[b"a\nb\n"], b"a\r\nb\r\n"),
            (&[b"a\r", b"\nb\n"], b"a\r\nb\r\n"),
            (&[b"a", b"\nb"], b"a\r\nb"),
            (&[b"\n\n"], b"\r\n\r\n"),
            (&[b"x\r\r\n"], b"x\r\r\n"),
        ];
        for (chunks, want) in cases {
            let mut body = CrlfBody::default();
            let mut got = Vec::new();
            for c in chunks.iter() {
                got.extend_from_slice(body.normalize(c));
            }
            assert_eq!(got, *want, "{chunks:?}");
        }
    }

    /// The plain definition: a `\r` before every `\n` that has none.
    fn reference_crlf(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous = 0u8;
        for &b in input {
            if b == b'\n' && previous != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            previous = b;
        }
        out
    }

    #[test]
    fn body_normalization_matches_the_definition_for_any_chunking() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let len = (next() % 300) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| b"ab\r\n \t"[(next() % 6) as usize])
                .collect();
            let mut body = CrlfBody::default();
            let mut got = Vec::new();
            let mut rest = input.as_slice();
            while !rest.is_empty() {
                let take = ((next() % 40) as usize).min(rest.len());
                got.extend_from_slice(body.normalize(&rest[..take]));
                rest = &rest[take..];
            }
            assert_eq!(got, reference_crlf(&input), "{input:?}");
            let mut header = Vec::new();
            push_crlf_normalized(&mut header, &input);
            assert_eq!(header, reference_crlf(&input), "{input:?}");
        }
    }

    #[test]
    fn crlf_chunks_pass_without_copy() {
        let mut body = CrlfBody::default();
        let chunk = b"line\r\nline\r\n".as_slice();
        assert!(std::ptr::eq(body.normalize(chunk), chunk));
    }

    #[test]
    fn header_values_get_crlf_folding() {
        let mut out = Vec::new();
        push_crlf_normalized(&mut out, b" a\n\tb\r\n c");
        assert_eq!(out, b" a\r\n\tb\r\n c");
    }
}
