//! Does the MTA send every message through this milter, and leave the signatures intact after
//! they were made? `check --postfix` and `check --sendmail`.
//!
//! A signature is only worth something if the message still verifies when it leaves the MTA.
//! Several MTA settings break or bypass signing silently: a default action that lets mail pass
//! while the milter is down, a milter list that misses a path mail takes, a socket a chrooted
//! daemon cannot see, 8-bit bodies converted to quoted-printable for a 7-bit next hop *after*
//! signing, header rewriting on output. Operators otherwise find each one from bounce reports.
//!
//! The analyses are pure functions of what the MTA's own tools print ([`postconf`]) or of its
//! configuration file ([`sendmail`]), plus a [`Host`] that answers the few questions about the
//! machine (is this the same socket, what does this host name resolve to, what is in this
//! table). Unit tests feed them captured outputs and an in-memory host.

mod endpoint;
mod host;
mod lookup_table;
mod milter_list;
pub mod postconf;
pub mod postfix;
pub mod sendmail;

pub use host::{Host, LocalHost};

use crate::config::{Canon, Config, ListenAddr};
use std::fmt;
use std::path::PathBuf;

/// Which MTA configurations `check` reads.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// `--postfix`: `Some(None)` for the instance postconf finds by itself,
    /// `Some(Some(dir))` for `--postfix-config DIR`.
    pub postfix: Option<Option<PathBuf>>,
    /// `--sendmail [FILE]`: a sendmail.cf, or a .mc.
    pub sendmail: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MtaCheckError {
    #[error("Postfix: {0}")]
    Postfix(#[from] postconf::PostconfError),
    #[error("Sendmail: {0}")]
    Sendmail(#[from] sendmail::SendmailError),
}

/// Reads and checks each configuration asked for, in the order Postfix, Sendmail.
pub fn reports(targets: &Targets, expect: &Expectations) -> Vec<Result<Report, MtaCheckError>> {
    let mut out = Vec::new();
    if let Some(dir) = &targets.postfix {
        out.push(
            postconf::read(dir.as_deref())
                .map(|pf| postfix::analyze(&pf, expect, &LocalHost))
                .map_err(MtaCheckError::from),
        );
    }
    if let Some(path) = &targets.sendmail {
        out.push(
            sendmail::read(path)
                .map(|sm| sendmail::analyze(&sm, expect, &LocalHost))
                .map_err(MtaCheckError::from),
        );
    }
    out
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// May break signatures, depending on something the check cannot see (what another
    /// program does, what a database table holds). `check` still exits 0.
    Warning,
    /// Mail can leave unsigned or with a broken signature. `check` exits 1.
    Problem,
}

/// What a finding is about; its tag is printed, so operators (and tests) can grep for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The MTA's milter list for a path mail takes does not name this milter.
    Milter,
    /// A chrooted daemon cannot see the socket at the path it was given.
    Chroot,
    /// What the MTA does with mail while the milter cannot be reached.
    DefaultAction,
    /// The milter protocol version the MTA speaks.
    Protocol,
    /// A service that turns milters off.
    NoMilters,
    /// Per-client milter lists (Postfix `smtpd_milter_maps`).
    MilterMaps,
    /// Another milter runs after this one and may change the signed message.
    MilterOrder,
    /// 8-bit bodies converted to 7 bit for a next hop without 8BITMIME, after signing.
    EightBitDowngrade,
    /// Addresses in header fields rewritten on output (Postfix `smtp_generic_maps`,
    /// Sendmail masquerading and genericstable).
    OutputRewriting,
    /// Header or body checks applied on output (Postfix `smtp_header_checks` and relatives).
    OutputHeaderChecks,
    /// Header checks applied to the header fields milters add (Postfix `milter_header_checks`).
    MilterHeaderChecks,
    /// Long lines broken on output.
    LineLength,
    /// A content filter between signing and delivery.
    ContentFilter,
    /// Header fields the MTA re-formats on output, which simple header canonicalization
    /// does not survive (Sendmail's address fields).
    HeaderReformatting,
    /// A setting the MTA does not know: probably a typo of one that matters here.
    UnknownSetting,
}

impl Check {
    pub fn tag(self) -> &'static str {
        match self {
            Check::Milter => "milter",
            Check::Chroot => "chroot",
            Check::DefaultAction => "default-action",
            Check::Protocol => "protocol",
            Check::NoMilters => "no-milters",
            Check::MilterMaps => "milter-maps",
            Check::MilterOrder => "milter-order",
            Check::EightBitDowngrade => "8bit-downgrade",
            Check::OutputRewriting => "output-rewriting",
            Check::OutputHeaderChecks => "output-header-checks",
            Check::MilterHeaderChecks => "milter-header-checks",
            Check::LineLength => "line-length",
            Check::ContentFilter => "content-filter",
            Check::HeaderReformatting => "header-reformatting",
            Check::UnknownSetting => "unknown-setting",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// Where the setting to change is: a file, and the line when the setting is written there
/// (a default value has no line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One thing that makes mail leave unsigned, or breaks signatures after they were made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub check: Check,
    pub location: Option<Location>,
    /// What is wrong and what it does to mail.
    pub what: String,
    /// The change that fixes it.
    pub fix: String,
    /// The MTA services (Postfix `smtp/inet`, Sendmail daemons) it applies to.
    pub services: Vec<String>,
}

impl Finding {
    pub fn problem(check: Check, location: Option<Location>, what: String, fix: String) -> Self {
        Finding {
            severity: Severity::Problem,
            check,
            location,
            what,
            fix,
            services: Vec::new(),
        }
    }

    pub fn warning(check: Check, location: Option<Location>, what: String, fix: String) -> Self {
        Finding {
            severity: Severity::Warning,
            ..Finding::problem(check, location, what, fix)
        }
    }

    pub fn for_service(mut self, service: &str) -> Self {
        self.services.push(service.to_string());
        self
    }

    /// The same finding reached through another service: reported once, naming both.
    fn same_as(&self, other: &Finding) -> bool {
        self.severity == other.severity
            && self.check == other.check
            && self.location == other.location
            && self.what == other.what
            && self.fix == other.fix
    }
}

/// The outcome of checking one MTA configuration.
#[derive(Debug, Default)]
pub struct Report {
    /// The MTA and where its configuration was read, e.g. "Postfix 3.7.11, /etc/postfix".
    pub title: String,
    pub findings: Vec<Finding>,
    /// Checks that found nothing wrong, with what they looked at.
    pub passed: Vec<(Check, String)>,
    /// Things worth knowing that are not findings (other instances, what was not checked).
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(title: String) -> Self {
        Report {
            title,
            ..Report::default()
        }
    }

    /// Adds a finding, merging it into an equal one found through another service.
    pub fn add(&mut self, finding: Finding) {
        if let Some(existing) = self.findings.iter_mut().find(|f| f.same_as(&finding)) {
            for service in finding.services {
                if !existing.services.contains(&service) {
                    existing.services.push(service);
                }
            }
        } else {
            self.findings.push(finding);
        }
    }

    pub fn pass(&mut self, check: Check, what: String) {
        if !self.passed.iter().any(|(c, w)| *c == check && *w == what) {
            self.passed.push((check, what));
        }
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// Whether any finding means mail can leave unsigned or with a broken signature.
    pub fn has_problems(&self) -> bool {
        self.count(Severity::Problem) > 0
    }

    /// The findings that are about `check`.
    pub fn about(&self, check: Check) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// The report as `check` prints it: problems first, then warnings, then what passed.
    pub fn render(&self) -> String {
        let mut out = format!("{}:\n", self.title);
        let mut findings: Vec<&Finding> = self.findings.iter().collect();
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        for f in findings {
            let label = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Warning => "WARNING",
            };
            let place = f
                .location
                .as_ref()
                .map_or(String::new(), |l| format!("{l}: "));
            out.push_str(&format!("  {label:<8} [{}] {place}{}\n", f.check, f.what));
            if !f.services.is_empty() {
                out.push_str(&format!("           services: {}\n", f.services.join(", ")));
            }
            out.push_str(&format!("           fix: {}\n", f.fix));
        }
        for (check, what) in &self.passed {
            out.push_str(&format!("  ok       [{check}] {what}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("  note     {note}\n"));
        }
        let problems = self.count(Severity::Problem);
        let warnings = self.count(Severity::Warning);
        out.push_str(&format!(
            "{} problem{}, {} warning{}{}\n",
            problems,
            plural(problems),
            warnings,
            plural(warnings),
            if problems > 0 {
                ": mail can leave unsigned or with signatures that fail"
            } else {
                ""
            }
        ));
        out
    }
}

#[cfg(test)]
impl Report {
    /// What was found, as (severity, tag) pairs, sorted, each once: what the tests compare.
    pub(crate) fn tags(&self) -> Vec<(Severity, &'static str)> {
        let mut t: Vec<_> = self
            .findings
            .iter()
            .map(|f| (f.severity, f.check.tag()))
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What the MTA is checked against: this milter's own settings.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Where the milter listens (`[milter] listen`).
    pub listen: ListenAddr,
    /// Entries whose signatures use simple header canonicalization, which header fields the
    /// MTA re-formats on output do not survive.
    pub simple_header_entries: Vec<String>,
}

impl Expectations {
    pub fn from_config(config: &Config) -> Self {
        let table = &config.signing;
        let mut simple = Vec::new();
        for (_, template) in table.domain_entries().chain(table.signature_entries()) {
            if template.header_canonicalization == Canon::Simple {
                simple.push(template.label.to_string());
            }
        }
        Expectations {
            listen: config.milter.listen.clone(),
            simple_header_entries: simple,
        }
    }
}
