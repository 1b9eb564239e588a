//! One message, from `MAIL FROM` to its verdict, independent of how it arrived: the milter
//! feeds it from protocol callbacks, `signet-milter sign` and `explain` from a file. Every
//! signing rule is applied here, in one order — trust, author, entry, authorization, keys,
//! signatures — so the three front ends cannot disagree; they only carry out the
//! [`Verdict`].

use crate::authorizer::Refusal;
use crate::config::{DomainMatch, OnError, SignerTemplate};
use crate::domain;
use crate::keys::{KeyError, SignError, SigningKey};
use crate::policy::{
    self, Author, Denial, Grant, Login, NoAuthor, Origin, PlannedSignature, Subject, Trust,
    Untrusted,
};
use crate::runtime::Runtime;
use crate::sign::{SignatureStream, SignedHeader, UnsignedSignature};
pub use crate::verdict::{Decision, NotSigned, Verdict};
use std::fmt;
use std::sync::Arc;

/// Header sections larger than this (counted as signed: `Name: value` lines with CRLF) are not
/// signed: no legitimate message needs more, and the whole section is held in memory until
/// the end of the headers.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Why a signature could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignFailure {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error(transparent)]
    KeyOperation(#[from] SignError),
    #[error("the header section is larger than {MAX_HEADER_BYTES} bytes (1 MiB)")]
    HeadersTooLarge,
    /// The authenticated login may not sign for this signature's domain.
    #[error(transparent)]
    Unauthorized(Denial),
    /// Whether the login may sign for it could not be found out.
    #[error("{0}")]
    AuthorizationUnavailable(String),
}

impl SignFailure {
    /// A phrase for the SMTP reply: what failed, never which file or secret.
    pub fn public_reason(&self) -> &'static str {
        match self {
            SignFailure::Key(k) => k.public_reason(),
            SignFailure::Sign(_) => "signature could not be computed",
            SignFailure::KeyOperation(e) => e.public_reason(),
            SignFailure::HeadersTooLarge => "header section too large",
            SignFailure::Unauthorized(_) => "the authenticated user may not send as this domain",
            SignFailure::AuthorizationUnavailable(_) => "sender authorization unavailable",
        }
    }

    fn is_unauthorized(&self) -> bool {
        matches!(self, SignFailure::Unauthorized(_))
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
            Some((domain, _)) if self.error.is_unauthorized() => format!(
                "DKIM signing for {domain} refused: {}",
                self.error.public_reason()
            ),
            Some((domain, _)) => format!(
                "DKIM signing for {domain} failed: {}",
                self.error.public_reason()
            ),
            None => format!("DKIM signing failed: {}", self.error.public_reason()),
        };
        // 5.7.1/4.7.1: delivery not authorized (RFC 3463); 5.7.0/4.3.0: other security or
        // system trouble.
        let (permanent, transient) = if self.error.is_unauthorized() {
            ("5.7.1", "4.7.1")
        } else {
            ("5.7.0", "4.3.0")
        };
        match self.action {
            OnError::Reject => ("550", permanent, what),
            _ => ("451", transient, format!("{what}; try again later")),
        }
    }

    /// Whether this failure is a login signing for a domain it may not sign for.
    pub fn is_unauthorized(&self) -> bool {
        self.error.is_unauthorized()
    }

    /// The name of the setting whose value is `action`.
    fn setting(&self) -> &'static str {
        if self.error.is_unauthorized() {
            "on_unauthorized"
        } else {
            "on_error"
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let setting = self.setting();
        match &self.signature {
            Some((d, s)) => write!(f, "{d}/{s}: {} ({setting}={})", self.error, self.action),
            None => write!(f, "{} ({setting}={})", self.error, self.action),
        }
    }
}

/// The refusing failure among `failures`, if any: the strictest action wins (reject over
/// tempfail); failures with `accept` only leave their signature out.
pub(crate) fn strictest<'a>(failures: impl Iterator<Item = &'a Failure>) -> Option<&'a Failure> {
    failures
        .filter(|f| f.action != OnError::Accept)
        .fold(None, |best: Option<&Failure>, f| match best {
            Some(b) if b.action >= f.action => Some(b),
            _ => Some(f),
        })
}

/// What the MTA told us about the message before its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub origin: Origin,
    /// `MAIL FROM`, as the MTA passed it (for the log).
    pub sender: Option<String>,
}

/// Everything the session found out about a message, step by step: the log line, the metrics
/// and `explain` are all made from this.
#[derive(Debug)]
pub struct Report {
    pub envelope: Envelope,
    pub trust: Result<Trust, Untrusted>,
    /// The author, once the headers are in.
    pub author: Option<Result<Author, NoAuthor>>,
    /// The `[domain]` entry the author matched.
    pub entry: Option<(Arc<SignerTemplate>, DomainMatch)>,
    /// Each domain an authenticated login asked to sign for, and the answer.
    pub authorizations: Vec<AuthorizationStep>,
    /// Every planned signature and what became of it, in plan order.
    pub signatures: Vec<SignatureReport>,
}

/// One question of the tenant authorization.
#[derive(Debug, Clone)]
pub struct AuthorizationStep {
    pub subject: String,
    pub result: Result<Grant, Refusal>,
}

/// One planned signature and what became of it.
#[derive(Debug)]
pub struct SignatureReport {
    pub planned: PlannedSignature,
    /// Its key, once fetched.
    pub key: Option<Arc<SigningKey>>,
    pub state: SignatureState,
}

#[derive(Debug)]
pub enum SignatureState {
    /// May be made (authorized, or no authorization needed); its key is not fetched yet.
    Pending,
    /// Not attempted: another signature already refuses the message.
    NotAttempted,
    /// Its key is in hand and the body is being hashed.
    Started,
    Signed(SignedHeader),
    Failed(Failure),
}

impl Report {
    fn new(envelope: Envelope, trust: Result<Trust, Untrusted>) -> Self {
        Report {
            envelope,
            trust,
            author: None,
            entry: None,
            authorizations: Vec::new(),
            signatures: Vec::new(),
        }
    }

    /// The signatures made, in plan order.
    pub fn signed(&self) -> impl Iterator<Item = &SignedHeader> {
        self.signatures.iter().filter_map(|s| match &s.state {
            SignatureState::Signed(header) => Some(header),
            _ => None,
        })
    }

    /// Every failure, refusing or not.
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.signatures.iter().filter_map(|s| match &s.state {
            SignatureState::Failed(failure) => Some(failure),
            _ => None,
        })
    }

    /// Failures whose `accept` let the message go on without that signature.
    pub fn left_out(&self) -> impl Iterator<Item = &Failure> {
        self.failures().filter(|f| f.action == OnError::Accept)
    }
}

enum State {
    Collecting {
        /// The header section as it will be signed: `Name: value\r\n` each.
        section: Vec<u8>,
        from_values: Vec<Vec<u8>>,
        too_large: bool,
    },
    Signing {
        /// Each with the index of its report.
        streams: Vec<(usize, SignatureStream)>,
        body: CrlfBody,
    },
    Done,
}

/// The header section as it will be signed, and the values of its `From` fields.
struct Headers {
    section: Vec<u8>,
    from_values: Vec<Vec<u8>>,
}

/// A message that may be signed.
pub struct MessageSession {
    runtime: Arc<Runtime>,
    /// Whether header values arrive with the space after the colon (milter LEADING_SPACE).
    leading_space: bool,
    /// The authenticated login, held to `[authorization]`.
    login: Option<Login>,
    report: Report,
    state: State,
}

impl MessageSession {
    /// At `MAIL FROM`: a session for a message that may be signed, or the verdict for one that
    /// may not (accept it unsigned, without looking at it).
    pub fn begin(
        runtime: Arc<Runtime>,
        envelope: Envelope,
        leading_space: bool,
    ) -> Result<Self, Box<Verdict>> {
        let trust = policy::may_sign(&runtime.config.milter, &envelope.origin);
        let login = match &trust {
            Ok(Trust::Authenticated {
                login: Some(name), ..
            }) => Some(Login::new(name, &runtime.config.authorization)),
            _ => None,
        };
        let report = Report::new(envelope, trust);
        if report.trust.is_err() {
            return Err(Box::new(Verdict::new(Decision::Untrusted, report)));
        }
        Ok(MessageSession {
            runtime,
            leading_space,
            login,
            report,
            state: State::Collecting {
                section: Vec::with_capacity(4096),
                from_values: Vec::new(),
                too_large: false,
            },
        })
    }

    /// The configuration generation this message works with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
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
        if *too_large {
            return;
        }
        // The section is measured as it will be signed (line ends made CRLF), so the limit
        // means exactly what the message says: a section of MAX_HEADER_BYTES is signed, one
        // byte more is refused. A value far over the limit is refused before it is copied.
        if section.len() + name.len() + value.len() > MAX_HEADER_BYTES {
            *too_large = true;
            *section = Vec::new();
            return;
        }
        section.extend_from_slice(name);
        section.push(b':');
        if !self.leading_space {
            section.push(b' ');
        }
        push_crlf_normalized(section, value);
        section.extend_from_slice(b"\r\n");
        if section.len() > MAX_HEADER_BYTES {
            *too_large = true;
            *section = Vec::new();
            return;
        }
        if name.eq_ignore_ascii_case(b"From") {
            from_values.push(value.to_vec());
        }
    }

    /// At the end of the headers: finds the author and its signatures, asks whether the login
    /// may sign for them, resolves their keys and starts them on the header section. `Some`:
    /// the verdict is in (not signed, or refused) and the body is not needed.
    pub async fn end_of_headers(&mut self) -> Option<Verdict> {
        let decided = match self.take_headers() {
            Ok(headers) => self.start(&headers.section, &headers.from_values).await,
            Err(decision) => Err(decision),
        };
        match decided {
            Ok(streams) => {
                self.state = State::Signing {
                    streams,
                    body: CrlfBody::default(),
                };
                None
            }
            Err(decision) => Some(self.conclude(*decision)),
        }
    }

    /// The header section and the `From` values, once.
    /// (Errors are boxed: a decision is large, and the way out of the hot path.)
    fn take_headers(&mut self) -> Result<Headers, Box<Decision>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Collecting {
                too_large: true, ..
            } => {
                let failure = Failure {
                    signature: None,
                    error: SignFailure::HeadersTooLarge,
                    action: self.runtime.config.milter.on_error,
                };
                Err(Box::new(match failure.action {
                    OnError::Accept => Decision::NotSigned(NotSigned::Failed(failure)),
                    _ => Decision::Refused(failure),
                }))
            }
            State::Collecting {
                section,
                from_values,
                ..
            } => Ok(Headers {
                section,
                from_values,
            }),
            _ => Err(Box::new(Decision::NotSigned(NotSigned::Protocol(
                "end of headers seen twice",
            )))),
        }
    }

    /// Plans, authorizes and starts the signatures: the streams under way, or the decision
    /// when none can be.
    async fn start(
        &mut self,
        section: &[u8],
        from_values: &[Vec<u8>],
    ) -> Result<Vec<(usize, SignatureStream)>, Box<Decision>> {
        let from_refs: Vec<&[u8]> = from_values.iter().map(Vec::as_slice).collect();
        self.plan(&from_refs).await?;
        let streams = self.start_signatures(section).await;
        if let Some(refusal) = strictest(self.report.failures()) {
            return Err(Box::new(Decision::Refused(refusal.clone())));
        }
        if streams.is_empty() {
            return Err(Box::new(Decision::NotSigned(NotSigned::nothing_made(
                &self.report,
            ))));
        }
        Ok(streams)
    }

    /// The author, its signatures, and for an authenticated login whether it may make them.
    /// Authorization comes first: a login that may not sign for a domain costs no key fetch.
    async fn plan(&mut self, from_refs: &[&[u8]]) -> Result<(), Box<Decision>> {
        let author = policy::author(from_refs);
        let plan = policy::plan(
            &self.runtime.config.signing,
            author.as_ref().map(|a| a.address.as_str()),
        );
        // Rotated signatures sign with the selector active now (the rotation seam).
        let plan = self
            .runtime
            .rotation
            .apply(&self.runtime.config.signing, plan);
        self.report.entry = plan.entry;
        let no_signature = match &author {
            Ok(a) => NotSigned::NoEntry(a.domain.clone()),
            Err(e) => NotSigned::NoAuthor(e.clone()),
        };
        let other_from_domains = match &author {
            Err(_) if self.is_authenticated() && !plan.signatures.is_empty() => {
                policy::from_domains(from_refs)
            }
            _ => Vec::new(),
        };
        self.report.author = Some(author);
        if plan.signatures.is_empty() {
            return Err(Box::new(Decision::NotSigned(no_signature)));
        }
        for planned in plan.signatures {
            let state = match self.authorize(&planned, &other_from_domains).await {
                Some(failure) => SignatureState::Failed(failure),
                None => match self.runtime.rotation.unknown(&planned.template.label) {
                    Some(reason) => SignatureState::Failed(Failure {
                        signature: Some((planned.domain.clone(), planned.selector().to_string())),
                        error: SignFailure::Key(KeyError::RotationStateUnknown {
                            label: planned.template.label.to_string(),
                            reason,
                        }),
                        action: planned.template.on_error,
                    }),
                    None => SignatureState::Pending,
                },
            };
            self.report.signatures.push(SignatureReport {
                planned,
                key: None,
                state,
            });
        }
        match strictest(self.report.failures()) {
            // Nothing found later could be stricter: no key is fetched.
            Some(refusal) if refusal.action == OnError::Reject => {
                let refusal = refusal.clone();
                for signature in &mut self.report.signatures {
                    if matches!(signature.state, SignatureState::Pending) {
                        signature.state = SignatureState::NotAttempted;
                    }
                }
                Err(Box::new(Decision::Refused(refusal)))
            }
            _ => Ok(()),
        }
    }

    /// Fetches the keys of the signatures that may be made and starts them on `section`.
    async fn start_signatures(&mut self, section: &[u8]) -> Vec<(usize, SignatureStream)> {
        let mut streams = Vec::new();
        let runtime = self.runtime.clone();
        for (index, report) in self.report.signatures.iter_mut().enumerate() {
            if !matches!(report.state, SignatureState::Pending) {
                continue;
            }
            let planned = &report.planned;
            match start_signature(&runtime, planned, section).await {
                Ok((stream, key)) => {
                    report.key = Some(key);
                    report.state = SignatureState::Started;
                    streams.push((index, stream));
                }
                Err(error) => {
                    report.state = SignatureState::Failed(Failure {
                        signature: Some((planned.domain.clone(), planned.selector().to_string())),
                        error,
                        action: planned.template.on_error,
                    });
                }
            }
        }
        streams
    }

    fn is_authenticated(&self) -> bool {
        matches!(self.report.trust, Ok(Trust::Authenticated { .. }))
    }

    /// For an authenticated login: may it sign `planned`? A signature as the author domain
    /// needs a grant for that domain; one with a fixed `d=` is the operator's, unless that
    /// `d=` may align with a From domain (DMARC) — then it speaks for that domain as well and
    /// needs the same grant. `None`: it may.
    async fn authorize(
        &mut self,
        planned: &PlannedSignature,
        other_from_domains: &[String],
    ) -> Option<Failure> {
        if !self.is_authenticated() {
            return None;
        }
        let author = match self.report.author.as_ref() {
            Some(Ok(a)) => Some(a.clone()),
            _ => None,
        };
        let subjects: Vec<(Option<String>, String)> = match &author {
            Some(a)
                if planned.signs_as_author() || domain::may_align(&planned.domain, &a.domain) =>
            {
                vec![(Some(a.address.clone()), a.domain.clone())]
            }
            Some(_) => Vec::new(),
            None => other_from_domains
                .iter()
                .filter(|d| domain::may_align(&planned.domain, d))
                .map(|d| (None, d.clone()))
                .collect(),
        };
        for (address, subject_domain) in subjects {
            let result = self
                .authorization(address.as_deref(), &subject_domain)
                .await;
            let failure = |error, action| Failure {
                signature: Some((planned.domain.clone(), planned.selector().to_string())),
                error,
                action,
            };
            match result {
                Ok(_) => {}
                Err(Refusal::Denied(denial)) => {
                    let action = self.runtime.config.authorization.on_unauthorized;
                    return Some(failure(SignFailure::Unauthorized(denial), action));
                }
                Err(unavailable @ Refusal::Unavailable { .. }) => {
                    return Some(failure(
                        SignFailure::AuthorizationUnavailable(unavailable.to_string()),
                        planned.template.on_error,
                    ));
                }
            }
        }
        None
    }

    /// The answer for one subject, asked once per message.
    async fn authorization(
        &mut self,
        address: Option<&str>,
        subject_domain: &str,
    ) -> Result<Grant, Refusal> {
        let key = address.map_or_else(|| format!("@{subject_domain}"), str::to_string);
        if let Some(step) = self.report.authorizations.iter().find(|s| s.subject == key) {
            return step.result.clone();
        }
        let runtime = self.runtime.clone();
        let settings = &runtime.config.authorization;
        let subject = Subject {
            address,
            domain: subject_domain,
        };
        let result = match &self.login {
            Some(login) => runtime.authorizer.authorize(settings, login, subject).await,
            None => Err(Refusal::Denied(Denial {
                login: match &self.report.trust {
                    Ok(Trust::Authenticated {
                        mechanism: Some(m), ..
                    }) => format!("an unnamed {m} login"),
                    _ => "an unnamed login".to_string(),
                },
                domain: subject_domain.to_string(),
                why: "the MTA reported no login name ({auth_authen})".to_string(),
            })),
        };
        runtime.env.metrics.authorization(match &result {
            Ok(_) => "granted",
            Err(Refusal::Denied(_)) => "denied",
            Err(Refusal::Unavailable { .. }) => "unavailable",
        });
        self.report.authorizations.push(AuthorizationStep {
            subject: key,
            result: result.clone(),
        });
        result
    }

    /// Feeds a body chunk (any size; line ends normalized to CRLF).
    pub fn body_chunk(&mut self, chunk: &[u8]) {
        if let State::Signing { streams, body } = &mut self.state {
            let bytes = body.normalize(chunk);
            for (_, stream) in streams.iter_mut() {
                stream.write(bytes);
            }
        }
    }

    /// Finishes every signature: the verdict on the message. The key operations of one
    /// message run concurrently: a message signed with two remote keys waits for one round
    /// trip, not two.
    pub async fn finish(mut self) -> Verdict {
        let State::Signing { streams, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return self.conclude(Decision::NotSigned(NotSigned::Protocol(
                "the message ended before its headers",
            )));
        };
        let mut unsigned: Vec<(usize, UnsignedSignature)> = Vec::with_capacity(streams.len());
        for (index, stream) in streams {
            let action = stream.on_error;
            match stream.finish(self.leading_space) {
                Ok(pending) => unsigned.push((index, pending)),
                Err(e) => self.fail(index, SignFailure::Sign(e.to_string()), action),
            }
        }
        let signing = unsigned.into_iter().map(|(index, pending)| async move {
            let action = pending.on_error;
            (index, action, pending.sign().await)
        });
        for (index, action, result) in futures_util::future::join_all(signing).await {
            match result {
                Ok(signed) => self.report.signatures[index].state = SignatureState::Signed(signed),
                Err(e) => self.fail(index, SignFailure::KeyOperation(e), action),
            }
        }
        let decision = match strictest(self.report.failures()) {
            Some(refusal) => Decision::Refused(refusal.clone()),
            None if self.report.signed().next().is_some() => Decision::Signed,
            None => Decision::NotSigned(NotSigned::nothing_made(&self.report)),
        };
        self.conclude(decision)
    }

    /// Records that signature `index` failed with `error`, and the `on_error` that applies.
    fn fail(&mut self, index: usize, error: SignFailure, action: OnError) {
        let report = &mut self.report.signatures[index];
        report.state = SignatureState::Failed(Failure {
            signature: Some((
                report.planned.domain.clone(),
                report.planned.selector().to_string(),
            )),
            error,
            action,
        });
    }

    fn conclude(&mut self, decision: Decision) -> Verdict {
        self.state = State::Done;
        // The session is finished: what stays behind is never read.
        let emptied = Report::new(self.report.envelope.clone(), self.report.trust.clone());
        Verdict::new(decision, std::mem::replace(&mut self.report, emptied))
    }
}

/// Fetches the key of `planned` and starts its signature on the header section.
async fn start_signature(
    runtime: &Runtime,
    planned: &PlannedSignature,
    section: &[u8],
) -> Result<(SignatureStream, Arc<SigningKey>), SignFailure> {
    let template = &planned.template;
    let resolve = || template.key.resolve(&planned.domain, &template.selector);
    let handle = template
        .key_handle
        .and_then(|handle| runtime.slot_handles.get(handle));
    let key = match handle {
        Some(handle) => runtime.keys.get_by_handle(handle, resolve).await?,
        None => runtime.keys.get(&resolve()).await?,
    };
    key.check_algo(template.algo)
        .map_err(|error| KeyError::Parse {
            origin: resolve().to_string(),
            error,
        })?;
    let mut stream = SignatureStream::new(planned, key.clone());
    stream.write(section);
    stream.write(b"\r\n");
    Ok((stream, key))
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
    fn the_header_limit_is_exactly_the_one_the_message_names() {
        let runtime = Arc::new(Runtime::new(
            crate::config::Config::parse("", std::path::Path::new("t.toml")).unwrap(),
        ));
        // "X:" + value + CRLF is the whole section (leading space mode adds nothing).
        let fits = |extra: usize| {
            let envelope = Envelope {
                origin: Origin {
                    client: policy::ClientAddr::Local,
                    auth_user: None,
                    auth_type: None,
                    daemon_name: None,
                },
                sender: None,
            };
            let Ok(mut session) = MessageSession::begin(runtime.clone(), envelope, true) else {
                panic!("a local client may sign");
            };
            let value = vec![b'a'; MAX_HEADER_BYTES - 4 + extra];
            session.add_header(b"X", &value);
            match &session.state {
                State::Collecting {
                    section, too_large, ..
                } => (!too_large, section.len()),
                _ => unreachable!(),
            }
        };
        assert_eq!(fits(0), (true, MAX_HEADER_BYTES));
        assert_eq!(fits(1), (false, 0));
        let message = SignFailure::HeadersTooLarge.to_string();
        assert!(message.contains(&format!("larger than {MAX_HEADER_BYTES} bytes")));
    }

    #[test]
    fn header_values_get_crlf_folding() {
        let mut out = Vec::new();
        push_crlf_normalized(&mut out, b" a\n\tb\r\n c");
        assert_eq!(out, b" a\r\n\tb\r\n c");
    }
}
