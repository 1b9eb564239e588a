//! What becomes of a message, as decided by the [`crate::session`]: signed, not signed (and
//! why), or refused. The front ends only carry it out: the milter turns it into a protocol
//! reply, `sign` into output, `explain` into a report. Its log line and its metrics are made
//! here, once.

use crate::config::OnError;
use crate::domain;
use crate::metrics::{MessageResult, Metrics};
use crate::policy::{Denial, NoAuthor};
use crate::session::{Failure, Report, SignFailure};
use crate::sign::SignedHeader;
use std::fmt;
use tracing::{info, warn};

/// The session's verdict on a message, with the report it is based on.
#[derive(Debug)]
pub struct Verdict {
    pub decision: Decision,
    pub report: Report,
}

#[derive(Debug)]
pub enum Decision {
    /// The client may not have mail signed: accepted unsigned at `MAIL FROM`.
    Untrusted,
    /// Accepted unsigned, for this reason.
    NotSigned(NotSigned),
    /// Accepted with the signatures in the report.
    Signed,
    /// Refused (tempfail or reject) because of this failure.
    Refused(Failure),
}

/// Why a message that may be signed is not.
#[derive(Debug, Clone)]
pub enum NotSigned {
    NoAuthor(NoAuthor),
    /// No entry for the author domain, and no signature for every message.
    NoEntry(String),
    /// The login may not sign for the author domain (`on_unauthorized = accept`), and no
    /// other signature applies.
    Unauthorized(Denial),
    /// Every signature failed with `on_error = accept`.
    NothingMade(Vec<Failure>),
    /// A message-level failure with `on_error = accept`.
    Failed(Failure),
    /// The MTA did something out of order.
    Protocol(&'static str),
}

impl NotSigned {
    /// Why nothing was made, from the failures in `report`.
    pub(crate) fn nothing_made(report: &Report) -> Self {
        let failures: Vec<Failure> = report.left_out().cloned().collect();
        let denials: Vec<&Denial> = failures
            .iter()
            .filter_map(|f| match &f.error {
                SignFailure::Unauthorized(denial) => Some(denial),
                _ => None,
            })
            .collect();
        match denials.as_slice() {
            [first, ..] if denials.len() == failures.len() => {
                NotSigned::Unauthorized((*first).clone())
            }
            _ => NotSigned::NothingMade(failures),
        }
    }
}

impl fmt::Display for NotSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotSigned::NoAuthor(reason) => write!(f, "no author domain: {reason}"),
            NotSigned::NoEntry(d) => {
                write!(
                    f,
                    "no signing entry for author domain {}",
                    domain::display(d)
                )
            }
            NotSigned::Unauthorized(denial) => write!(f, "{denial}"),
            NotSigned::NothingMade(failures) => {
                let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
                write!(f, "no signature could be made: {}", reasons.join("; "))
            }
            NotSigned::Failed(failure) => write!(f, "{failure}"),
            NotSigned::Protocol(what) => f.write_str(what),
        }
    }
}

/// What the MTA is to do with the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing more is needed from the message: let it go on unchanged.
    Accept,
    /// Add these `DKIM-Signature` header values (each on top) and let it go on.
    Sign(Vec<String>),
    /// Refuse it with this reply.
    Tempfail(Reply),
    Reject(Reply),
}

/// An SMTP reply: code, enhanced code, text (ours, one line, nothing secret).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: &'static str,
    pub enhanced: &'static str,
    pub text: String,
}

impl Verdict {
    pub(crate) fn new(decision: Decision, report: Report) -> Self {
        Verdict { decision, report }
    }

    /// The signatures made, in the order the milter inserts them (each at the top).
    pub fn signed(&self) -> impl Iterator<Item = &SignedHeader> {
        self.report.signed()
    }

    pub fn is_signed(&self) -> bool {
        matches!(self.decision, Decision::Signed)
    }

    pub fn action(&self) -> Action {
        match &self.decision {
            Decision::Untrusted | Decision::NotSigned(_) => Action::Accept,
            Decision::Signed => Action::Sign(self.signed().map(|s| s.value.clone()).collect()),
            Decision::Refused(failure) => {
                let (code, enhanced, text) = failure.smtp_reply();
                let reply = Reply {
                    code,
                    enhanced,
                    text,
                };
                match failure.action {
                    OnError::Reject => Action::Reject(reply),
                    _ => Action::Tempfail(reply),
                }
            }
        }
    }

    /// The one summary line for stderr (`sign`) and `explain`.
    pub fn summary(&self) -> String {
        match &self.decision {
            Decision::Untrusted => match &self.report.trust {
                Err(untrusted) => {
                    format!("not signed: client is neither trusted nor authenticated ({untrusted})")
                }
                Ok(_) => "not signed".to_string(),
            },
            Decision::NotSigned(reason) => format!("not signed: {reason}"),
            Decision::Signed => format!("signed: {}", self.signature_list()),
            Decision::Refused(failure) => {
                let (code, enhanced, text) = failure.smtp_reply();
                format!("refused ({code} {enhanced} {text}): {failure}")
            }
        }
    }

    fn signature_list(&self) -> String {
        let signatures: Vec<String> = self
            .signed()
            .map(|s| format!("{}/{} ({})", s.domain, s.selector, s.algo))
            .collect();
        signatures.join(", ")
    }

    /// `billing@tenant-a.example by its own domain; …`: the grants the login signed with.
    fn grants(&self) -> Option<String> {
        let grants: Vec<String> = self
            .report
            .authorizations
            .iter()
            .filter_map(|step| match &step.result {
                Ok(grant) => Some(format!("{} by {grant}", step.subject)),
                Err(_) => None,
            })
            .collect();
        (!grants.is_empty()).then(|| grants.join("; "))
    }

    fn trust(&self) -> String {
        match &self.report.trust {
            Ok(trust) => trust.to_string(),
            Err(_) => "-".into(),
        }
    }

    /// The log lines of the message: warnings for what was left out or refused, then one line
    /// for the message.
    pub fn log(&self, queue_id: &str) {
        let trust = self.trust();
        for failure in self.report.left_out() {
            warn!(queue_id = %queue_id, "signature left out: {failure}");
        }
        match &self.decision {
            Decision::Untrusted => {
                let envelope = &self.report.envelope;
                let why = self
                    .report
                    .trust
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                info!(
                    queue_id = %queue_id,
                    client = %envelope.origin.client,
                    sender = %envelope.sender.as_deref().unwrap_or(""),
                    result = "not-signed",
                    why = %why,
                    "not signed: client is neither trusted nor authenticated"
                );
            }
            Decision::NotSigned(reason) => {
                info!(queue_id = %queue_id, trust = %trust, result = "not-signed", "not signed: {reason}");
            }
            Decision::Refused(failure) => {
                warn!(queue_id = %queue_id, trust = %trust, result = %failure.action, "not signed: {failure}");
            }
            Decision::Signed => {
                let failed = self.report.left_out().count();
                let signatures = self.signature_list();
                match self.grants() {
                    // What let an authenticated login sign, for the audit trail.
                    Some(granted) => info!(
                        queue_id = %queue_id,
                        trust = %trust,
                        result = "signed",
                        signatures = %signatures,
                        failed,
                        granted = %granted,
                        "signed"
                    ),
                    None => info!(
                        queue_id = %queue_id,
                        trust = %trust,
                        result = "signed",
                        signatures = %signatures,
                        failed,
                        "signed"
                    ),
                }
            }
        }
    }

    /// Counts the message in `metrics`.
    pub fn count(&self, metrics: &Metrics) {
        for failure in self.report.left_out() {
            if !failure.is_unauthorized() {
                metrics.signature_failure("accept");
            }
        }
        let result = match &self.decision {
            Decision::Untrusted => MessageResult::SkippedUntrusted,
            Decision::NotSigned(NotSigned::Unauthorized(_)) => MessageResult::SkippedUnauthorized,
            Decision::NotSigned(_) => MessageResult::SkippedNoSignature,
            Decision::Signed => {
                for signed in self.signed() {
                    metrics.signature(&signed.domain, signed.algo.dkim_name());
                }
                MessageResult::Signed
            }
            Decision::Refused(failure) if failure.is_unauthorized() => {
                MessageResult::RefusedUnauthorized
            }
            Decision::Refused(failure) => {
                metrics.signature_failure(failure.action.as_str());
                match failure.action {
                    OnError::Reject => MessageResult::Rejected,
                    _ => MessageResult::Tempfailed,
                }
            }
        };
        metrics.message(result);
    }
}
