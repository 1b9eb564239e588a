//! `signet-milter explain`: the session's [`Report`] on one message, step by step, in words —
//! "why isn't my mail signed?" answered from the same decision the milter makes. Nothing here
//! decides anything: it prints what the session found, plus (for a client the milter turns
//! away at `MAIL FROM`) what the rest of the table would say, marked as such.

use crate::config::{Config, DomainMatch, SignatureLabel, SignaturePolicy};
use crate::domain;
use crate::policy::{self, Author, NoAuthor, PlannedSignature};
use crate::runtime::Runtime;
use crate::session::{Report, SignFailure, SignatureState};
use crate::verdict::{Action, Decision, Verdict};
use std::fmt::Write as _;

/// The explanation of `verdict`, reached for a message whose `From` values are `from_values`.
pub async fn explain(runtime: &Runtime, verdict: &Verdict, from_values: &[&[u8]]) -> String {
    let mut out = Out::default();
    let config = &runtime.config;
    let report = &verdict.report;
    out.line(0, format!("configuration: {}", config.path.display()));
    envelope(&mut out, report);

    out.step("trust");
    trust(&mut out, config, report);
    let (author, entry, informational) = match &report.author {
        Some(author) => (author.clone(), report.entry.clone(), false),
        None => {
            out.line(
                2,
                "the milter accepts the message unsigned at MAIL FROM and looks no further; \
                 what follows is for information only",
            );
            let author = policy::author(from_values);
            let plan = policy::plan(&config.signing, author.as_ref().map(|a| a.address.as_str()));
            (author, plan.entry, true)
        }
    };

    out.step("author");
    author_step(&mut out, &author);

    out.step("entry");
    entry_step(
        &mut out,
        config,
        &author,
        entry.as_ref().map(|(t, how)| (&t.label, *how)),
    );

    if !informational {
        out.step("authorization");
        authorization_step(&mut out, config, report);
        out.step("signatures");
        signatures_step(&mut out, runtime, report).await;
    }

    out.line(0, String::new());
    out.line(0, format!("result: {}", verdict.summary()));
    out.line(0, format!("milter: {}", milter_action(verdict)));
    out.text
}

/// Text lines, indented, with numbered steps.
#[derive(Default)]
struct Out {
    text: String,
    steps: usize,
}

impl Out {
    fn line(&mut self, indent: usize, text: impl AsRef<str>) {
        let _ = writeln!(
            self.text,
            "{:width$}{}",
            "",
            text.as_ref(),
            width = indent * 2
        );
    }

    fn step(&mut self, name: &str) {
        self.steps += 1;
        let _ = writeln!(self.text, "{}. {name}", self.steps);
    }
}

fn envelope(out: &mut Out, report: &Report) {
    let e = &report.envelope;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    out.line(
        0,
        format!(
            "client: {}, AUTH {} ({}), daemon {}, MAIL FROM {}",
            e.origin.client,
            or_dash(&e.origin.auth_user),
            or_dash(&e.origin.auth_type),
            or_dash(&e.origin.daemon_name),
            or_dash(&e.sender),
        ),
    );
}

fn trust(out: &mut Out, config: &Config, report: &Report) {
    let m = &config.milter;
    match &report.trust {
        Ok(trust) => out.line(1, format!("may be signed: {trust}")),
        Err(untrusted) => out.line(1, format!("NOT TRUSTED: {untrusted}")),
    }
    let networks: Vec<String> = m.trusted_networks.iter().map(ToString::to_string).collect();
    out.line(
        2,
        format!(
            "sign_authenticated = {}, trusted_daemon_names = [{}], trusted_networks = [{}]",
            m.sign_authenticated,
            m.trusted_daemon_names.join(", "),
            networks.join(", ")
        ),
    );
}

fn author_step(out: &mut Out, author: &Result<Author, NoAuthor>) {
    match author {
        Ok(a) => out.line(
            1,
            format!("{} (domain {})", a.address, domain::display(&a.domain)),
        ),
        Err(why) => out.line(
            1,
            format!("none: {why}; only signatures with a fixed d= can apply"),
        ),
    }
}

fn entry_step(
    out: &mut Out,
    config: &Config,
    author: &Result<Author, NoAuthor>,
    matched: Option<(&SignatureLabel, DomainMatch)>,
) {
    let Ok(author) = author else {
        out.line(1, "not looked up: no author");
        return;
    };
    match matched {
        Some((label, how)) => out.line(1, format!("{label} ({})", match_name(how))),
        None => out.line(1, "no entry matches"),
    }
    config.signing.walk(&author.address, |candidate, entry| {
        let verdict = if entry.is_some() {
            "matches"
        } else {
            "no such entry"
        };
        out.line(2, format!("{candidate}: {verdict}"));
        entry.is_some()
    });
    if config.signing.has_wildcard_below(&author.domain) {
        out.line(
            2,
            format!(
                "note: [domain.\"*.{}\"] matches subdomains only, never {} itself",
                author.domain, author.domain
            ),
        );
    }
    for extra in config.signing.additional() {
        let applies = match extra.policy {
            SignaturePolicy::Always => "on every message",
            SignaturePolicy::OnlyIfMissingDomainBlock if matched.is_none() => {
                "because no [domain] entry matched"
            }
            SignaturePolicy::OnlyIfMissingDomainBlock => {
                "not here: only when no [domain] entry matches"
            }
        };
        out.line(
            2,
            format!("[base] additional_signatures: {} {applies}", extra.label),
        );
    }
}

fn match_name(how: DomainMatch) -> &'static str {
    match how {
        DomainMatch::Mailbox => "per-mailbox entry",
        DomainMatch::Exact => "exact",
        DomainMatch::Wildcard => "wildcard",
        DomainMatch::CatchAll => "catch-all \"*\"",
    }
}

fn authorization_step(out: &mut Out, config: &Config, report: &Report) {
    let a = &config.authorization;
    let login = match &report.trust {
        Ok(policy::Trust::Authenticated { .. }) => report.trust.as_ref().map(ToString::to_string),
        _ => {
            out.line(
                1,
                "not needed: only authenticated logins are held to [authorization]",
            );
            return;
        }
    };
    let mut settings = format!(
        "mode = \"{}\", subdomains = {}, on_unauthorized = \"{}\"",
        a.mode.as_str(),
        a.subdomains,
        a.on_unauthorized
    );
    if let Some(d) = &a.bare_login_domain {
        let _ = write!(settings, ", bare_login_domain = \"{d}\"");
    }
    if !a.grants.is_empty() {
        let _ = write!(settings, ", {} map grants", a.grants.len());
    }
    if let Some(path) = &a.login_map {
        let _ = write!(settings, " (login_map {})", path.display());
    }
    if let Some(cb) = &a.callback {
        let _ = write!(settings, ", callback {}", cb.name);
    }
    out.line(1, format!("{} — {settings}", login.unwrap_or_default()));
    if report.authorizations.is_empty() {
        out.line(
            2,
            "nothing to authorize: no signature speaks for a From domain",
        );
    }
    for step in &report.authorizations {
        match &step.result {
            Ok(grant) => out.line(2, format!("{}: granted by {grant}", step.subject)),
            Err(refusal) => out.line(2, format!("{}: NOT GRANTED: {refusal}", step.subject)),
        }
    }
}

async fn signatures_step(out: &mut Out, runtime: &Runtime, report: &Report) {
    if report.signatures.is_empty() {
        out.line(1, "none apply");
    }
    for signature in &report.signatures {
        let planned = &signature.planned;
        out.line(
            1,
            format!(
                "d={} s={}  {}{}",
                planned.domain,
                planned.selector(),
                planned.template.label,
                whose(planned)
            ),
        );
        let source = planned
            .template
            .key
            .resolve(&planned.domain, planned.selector());
        let key_state = match (&signature.key, &signature.state) {
            (Some(key), _) => format!("ok ({})", key.describe()),
            (None, SignatureState::Failed(f)) if matches!(f.error, SignFailure::Key(_)) => {
                format!("NOT USABLE: {}", f.error)
            }
            // Not fetched for the message; looked up now, for information.
            _ => match runtime.keys.get(&source).await {
                Ok(key) => format!("ok ({}; not needed for this message)", key.describe()),
                Err(e) => format!("NOT USABLE: {e} (not needed for this message)"),
            },
        };
        out.line(3, format!("key: {source}: {key_state}"));
        out.line(3, format!("on_error = {}", planned.template.on_error));
        let result = match &signature.state {
            SignatureState::Signed(header) => format!("signed ({})", header.algo),
            SignatureState::Started | SignatureState::Pending => "not finished".to_string(),
            SignatureState::NotAttempted => {
                "not attempted: another signature refuses the message".to_string()
            }
            SignatureState::Failed(f) => match f.action {
                crate::config::OnError::Accept => format!("LEFT OUT: {f}"),
                _ => format!("FAILED, refuses the message: {f}"),
            },
        };
        out.line(3, format!("result: {result}"));
    }
}

fn whose(planned: &PlannedSignature) -> &'static str {
    if planned.signs_as_author() {
        " (as the author domain)"
    } else {
        " (fixed d=: the operator's signature)"
    }
}

fn milter_action(verdict: &Verdict) -> String {
    match (verdict.action(), &verdict.decision) {
        (Action::Accept, Decision::Untrusted) => {
            "accept at MAIL FROM, unsigned (the message is not sent to the milter)".into()
        }
        (Action::Accept, _) => "accept, unsigned".into(),
        (Action::Sign(values), _) => format!(
            "continue, adding {} DKIM-Signature header{}",
            values.len(),
            if values.len() == 1 { "" } else { "s" }
        ),
        (Action::Tempfail(r), _) => format!("tempfail: {} {} {}", r.code, r.enhanced, r.text),
        (Action::Reject(r), _) => format!("reject: {} {} {}", r.code, r.enhanced, r.text),
    }
}
