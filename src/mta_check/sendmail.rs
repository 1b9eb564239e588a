//! `check --sendmail`: the same questions for Sendmail, read from its sendmail.cf (or from the
//! .mc operators edit, turned into a .cf by m4 as `sendmailconfig`/`make` would).
//!
//! Sendmail has one milter list for all its daemons (`InputMailFilters`, set by
//! `INPUT_MAIL_FILTER`) unless a daemon names its own, no chroot, and what happens after
//! signing is decided per mailer: 8-bit bodies are converted to 7 bit for a peer without
//! 8BITMIME unless the mailer has flag `8` (sendmail's deliver/usersmtp code does this whatever
//! `EightBitMode` says, for every MIME message), and masquerading and the genericstable
//! rewrite header addresses in the mailer's header rulesets, on output.

use super::endpoint::{MilterAddr, Reach, View, reaches};
use super::{Check, Expectations, Finding, Host, Location, Report};
use crate::config::ListenAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mailers that relay mail to other servers over SMTP.
const SMTP_MAILERS: [&str; 5] = ["smtp", "esmtp", "smtp8", "dsmtp", "relay"];

#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run m4 to read {path} ({source}); apt-get install m4 sendmail-cf")]
    M4Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("m4 could not build a .cf from {path}: {stderr}")]
    M4 { path: PathBuf, stderr: String },
}

/// A `Xname, S=…, F=…, T=…` mail filter definition.
#[derive(Clone, Debug)]
struct Filter {
    name: String,
    socket: String,
    flags: String,
    line: usize,
}

/// A `Mname, P=…, F=…, …` mailer definition.
#[derive(Clone, Debug)]
struct Mailer {
    name: String,
    flags: String,
    line: usize,
}

/// A `O DaemonPortOptions=…` listener.
#[derive(Clone, Debug)]
struct Daemon {
    name: String,
    /// Its own `InputMailFilters=` list, replacing the global one.
    filters: Option<Vec<String>>,
    line: usize,
}

/// A Sendmail configuration, as sendmail.cf says it.
#[derive(Clone, Debug)]
pub struct SendmailConfig {
    /// The .cf read, or the .mc it was generated from.
    source: PathBuf,
    /// The .mc's text, when read from one: locations then point into it.
    mc: Option<String>,
    version: String,
    input_filters: Option<(Vec<String>, usize)>,
    filters: Vec<Filter>,
    mailers: Vec<Mailer>,
    daemons: Vec<Daemon>,
    masquerade: Option<(String, usize)>,
    generics: Option<usize>,
}

/// Reads a sendmail.cf, or a .mc through m4.
pub fn read(path: &Path) -> Result<SendmailConfig, SendmailError> {
    let text = std::fs::read_to_string(path).map_err(|source| SendmailError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if path.extension().is_some_and(|e| e == "mc") {
        let cf = run_m4(path)?;
        Ok(SendmailConfig::parse(&cf, path.to_path_buf(), Some(text)))
    } else {
        Ok(SendmailConfig::parse(&text, path.to_path_buf(), None))
    }
}

fn run_m4(mc: &Path) -> Result<String, SendmailError> {
    // Debian's .mc includes cf.m4 by absolute path, upstream examples by one relative to the
    // .mc's directory: run m4 there.
    let dir = mc
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let output = Command::new("m4")
        .arg(mc.file_name().unwrap_or(mc.as_os_str()))
        .current_dir(dir)
        .output()
        .map_err(|source| SendmailError::M4Missing {
            path: mc.to_path_buf(),
            source,
        })?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(SendmailError::M4 {
            path: mc.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl SendmailConfig {
    pub fn parse(cf: &str, source: PathBuf, mc: Option<String>) -> Self {
        let mut config = SendmailConfig {
            source,
            mc,
            version: String::new(),
            input_filters: None,
            filters: Vec::new(),
            mailers: Vec::new(),
            daemons: Vec::new(),
            masquerade: None,
            generics: None,
        };
        for (line, text) in logical_lines(cf) {
            config.read_line(line, &text);
        }
        config
    }

    fn read_line(&mut self, line: usize, text: &str) {
        if let Some(option) = text.strip_prefix("O ") {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            match name.trim() {
                "InputMailFilters" => self.input_filters = Some((list(value, ','), line)),
                "DaemonPortOptions" => self.daemons.push(daemon(value, line)),
                _ => {}
            }
        } else if let Some(def) = text.strip_prefix('X') {
            let mut parts = def.split(',').map(str::trim);
            let name = parts.next().unwrap_or("").to_string();
            let mut filter = Filter {
                name,
                socket: String::new(),
                flags: String::new(),
                line,
            };
            for part in parts {
                match part.split_once('=') {
                    Some(("S", v)) => filter.socket = v.trim().to_string(),
                    Some(("F", v)) => filter.flags = v.trim().to_string(),
                    _ => {}
                }
            }
            self.filters.push(filter);
        } else if let Some(def) = text.strip_prefix('M') {
            let mut parts = def.split(',').map(str::trim);
            let name = parts.next().unwrap_or("").to_string();
            let flags = parts
                .find_map(|p| p.strip_prefix("F="))
                .unwrap_or("")
                .to_string();
            self.mailers.push(Mailer { name, flags, line });
        } else if let Some(domain) = text.strip_prefix("DM") {
            let domain = domain.trim();
            self.masquerade = (!domain.is_empty()).then(|| (domain.to_string(), line));
        } else if let Some(version) = text.strip_prefix("DZ") {
            self.version = version.split('/').next().unwrap_or("").trim().to_string();
        } else if text.starts_with("Kgenerics ") {
            self.generics = Some(line);
        }
    }

    /// The .cf line, or when read from an .mc, its line with the macro that made it
    /// (`mc_needle`), else one written in .cf syntax (starting with `cf_head`).
    fn location(&self, cf_line: usize, mc_needle: &str, cf_head: &str) -> Location {
        let line = match &self.mc {
            None => Some(cf_line),
            Some(mc) => {
                let find = |hit: &dyn Fn(&str) -> bool| {
                    mc.lines()
                        .position(|l| !l.trim_start().starts_with("dnl") && hit(l))
                        .map(|i| i + 1)
                };
                find(&|l| l.contains(mc_needle)).or_else(|| find(&|l| l.starts_with(cf_head)))
            }
        };
        Location {
            file: self.source.clone(),
            line,
        }
    }
}

fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.starts_with([' ', '\t']) {
            if let Some((_, last)) = out.last_mut() {
                last.push(' ');
                last.push_str(raw.trim());
            }
            continue;
        }
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        out.push((i + 1, raw.to_string()));
    }
    out
}

fn list(text: &str, separator: char) -> Vec<String> {
    text.split(separator)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `Family=inet, Name=MTA, Port=25, InputMailFilters=a;b`: sendmail tells the keys apart by
/// their first letter.
fn daemon(value: &str, line: usize) -> Daemon {
    let mut d = Daemon {
        name: String::new(),
        filters: None,
        line,
    };
    for part in value.split(',') {
        let Some((key, v)) = part.split_once('=') else {
            continue;
        };
        match key.trim().chars().next() {
            Some('N' | 'n') => d.name = v.trim().to_string(),
            Some('I' | 'i') => d.filters = Some(list(v, ';')),
            _ => {}
        }
    }
    d
}

/// How this milter is named in a mail filter's `S=`.
fn our_socket(listen: &ListenAddr) -> String {
    match listen {
        ListenAddr::Unix(p) => format!("local:{}", p.display()),
        ListenAddr::Inet(a) if a.is_ipv6() => format!("inet6:{}@{}", a.port(), a.ip()),
        ListenAddr::Inet(a) => format!("inet:{}@{}", a.port(), a.ip()),
    }
}

pub fn analyze(sm: &SendmailConfig, expect: &Expectations, host: &dyn Host) -> Report {
    let mut report = Report::new(format!(
        "Sendmail {}, {}",
        if sm.version.is_empty() {
            "?"
        } else {
            &sm.version
        },
        sm.source.display()
    ));
    let view = View {
        chroot: None,
        cwd: Path::new("/"),
    };
    let ours = sm.filters.iter().find(|f| {
        MilterAddr::parse_sendmail(&f.socket)
            .is_some_and(|a| reaches(&a, &expect.listen, view, host) == Reach::Yes)
    });
    match ours {
        None => report.add(Finding::problem(
            Check::Milter,
            Some(Location {
                file: sm.source.clone(),
                line: None,
            }),
            format!(
                "no mail filter names this milter ({}): no mail is signed",
                expect.listen
            ),
            format!(
                "INPUT_MAIL_FILTER(`signet-milter', `S={}, F=T, T=C:10s;S:30s;R:60s;E:5m')",
                our_socket(&expect.listen)
            ),
        )),
        Some(filter) => {
            filter_use(sm, filter, &mut report);
            filter_flags(sm, filter, &mut report);
        }
    }
    eight_bit(sm, &mut report);
    rewriting(sm, &mut report);
    if !expect.simple_header_entries.is_empty() {
        report.add(Finding::warning(
            Check::HeaderReformatting,
            None,
            format!(
                "Sendmail re-formats address header fields (From, To, Cc, …) as it sends the \
                 message: the simple header canonicalization of {} fails when they are folded \
                 or have a tab after the colon",
                expect.simple_header_entries.join(", ")
            ),
            "header_canonicalization = \"relaxed\" (the default) in those entries".into(),
        ));
    }
    report
}

/// Is the filter in the list every daemon uses, or in each daemon's own list, and last?
fn filter_use(sm: &SendmailConfig, filter: &Filter, report: &mut Report) {
    let needle = format!("MAIL_FILTER(`{}'", filter.name);
    match &sm.input_filters {
        Some((names, line)) if names.contains(&filter.name) => {
            report.pass(
                Check::Milter,
                format!("InputMailFilters names this milter ({})", filter.name),
            );
            let later: Vec<&str> = names
                .iter()
                .skip_while(|n| **n != filter.name)
                .skip(1)
                .map(String::as_str)
                .collect();
            if !later.is_empty() {
                report.add(Finding::warning(
                    Check::MilterOrder,
                    Some(sm.location(*line, "INPUT_MAIL_FILTER", "O InputMailFilters")),
                    format!(
                        "InputMailFilters runs {} after this milter: if it changes a signed header \
                         field or the body, the signature fails",
                        later.join(", ")
                    ),
                    format!("put INPUT_MAIL_FILTER(`{}', …) last", filter.name),
                ));
            }
        }
        other => report.add(Finding::problem(
            Check::Milter,
            Some(sm.location(
                other.as_ref().map_or(filter.line, |(_, l)| *l),
                &needle,
                &format!("X{},", filter.name),
            )),
            format!(
                "mail filter {} is defined but not in InputMailFilters: Sendmail never calls it",
                filter.name
            ),
            format!(
                "INPUT_MAIL_FILTER(`{}', …) instead of MAIL_FILTER, or add it to confINPUT_MAIL_FILTERS",
                filter.name
            ),
        )),
    }
    for daemon in &sm.daemons {
        let Some(names) = &daemon.filters else {
            continue;
        };
        if names.contains(&filter.name) {
            continue;
        }
        report.add(
            Finding::problem(
                Check::Milter,
                Some(sm.location(
                    daemon.line,
                    &format!("Name={}", daemon.name),
                    "O DaemonPortOptions",
                )),
                format!(
                    "daemon {} has its own InputMailFilters={} without this milter: mail it \
                     receives is not signed",
                    daemon.name,
                    names.join(";")
                ),
                format!(
                    "add {} to its InputMailFilters (DAEMON_OPTIONS), or remove that key",
                    filter.name
                ),
            )
            .for_service(&daemon.name),
        );
    }
}

fn filter_flags(sm: &SendmailConfig, filter: &Filter, report: &mut Report) {
    let location = sm.location(
        filter.line,
        &format!("MAIL_FILTER(`{}'", filter.name),
        &format!("X{},", filter.name),
    );
    let fix = format!(
        "F=T in the mail filter's definition (S={}, F=T, …)",
        filter.socket
    );
    if filter.flags.contains('T') || filter.flags.contains('4') {
        report.pass(
            Check::DefaultAction,
            format!(
                "while the milter cannot be reached, Sendmail tempfails mail (F={})",
                filter.flags
            ),
        );
    } else if filter.flags.contains('R') {
        report.add(Finding::warning(
            Check::DefaultAction,
            Some(location),
            "F=R: while the milter cannot be reached, mail is refused for good (5xx); F=T makes \
             clients try again"
                .into(),
            fix,
        ));
    } else {
        report.add(Finding::problem(
            Check::DefaultAction,
            Some(location),
            format!(
                "mail filter {} has no F=T: whenever the milter cannot be reached, Sendmail \
                 sends mail on unsigned",
                filter.name
            ),
            fix,
        ));
    }
}

fn eight_bit(sm: &SendmailConfig, report: &mut Report) {
    let relays: Vec<&Mailer> = sm
        .mailers
        .iter()
        .filter(|m| SMTP_MAILERS.contains(&m.name.as_str()))
        .collect();
    let converting: Vec<&Mailer> = relays
        .iter()
        .copied()
        .filter(|m| !m.flags.contains('8'))
        .collect();
    let stripping: Vec<&Mailer> = relays
        .iter()
        .copied()
        .filter(|m| m.flags.contains('7'))
        .collect();
    if let Some(first) = converting.first() {
        let names: Vec<&str> = converting.iter().map(|m| m.name.as_str()).collect();
        report.add(Finding::problem(
            Check::EightBitDowngrade,
            Some(sm.location(first.line, "MAILER(`smtp')", &format!("M{},", first.name))),
            format!(
                "mailers {} lack flag 8: for a peer that does not announce 8BITMIME, Sendmail \
                 converts 8-bit MIME bodies to quoted-printable or base64 after the milter signed \
                 them (the body and the signed Content-Transfer-Encoding field change): every \
                 signature on them fails",
                names.join(", ")
            ),
            "define(`SMTP_MAILER_FLAGS', `8')dnl before MAILER(`smtp') (in the .cf: 8 in their F=); \
             8-bit mail is then sent as it was signed"
                .into(),
        ));
    } else if !relays.is_empty() {
        report.pass(
            Check::EightBitDowngrade,
            "8-bit mail leaves as it was signed (flag 8 on every SMTP mailer)".into(),
        );
    }
    if let Some(first) = stripping.first() {
        let names: Vec<&str> = stripping.iter().map(|m| m.name.as_str()).collect();
        report.add(Finding::problem(
            Check::EightBitDowngrade,
            Some(sm.location(first.line, "MAILER_FLAGS", &format!("M{},", first.name))),
            format!(
                "mailers {} have flag 7: Sendmail strips the 8th bit of every byte as it sends, \
                 after signing",
                names.join(", ")
            ),
            "remove 7 from SMTP_MAILER_FLAGS / MODIFY_MAILER_FLAGS".into(),
        ));
    }
}

fn rewriting(sm: &SendmailConfig, report: &mut Report) {
    if let Some((domain, line)) = &sm.masquerade {
        report.add(Finding::problem(
            Check::OutputRewriting,
            Some(sm.location(*line, "MASQUERADE_AS", "DM")),
            format!(
                "MASQUERADE_AS(`{domain}'): Sendmail rewrites addresses in header fields as it \
                 sends the message, after signing: every signature over a field it changes fails"
            ),
            "remove MASQUERADE_AS and have clients write the address that should leave (a \
             milter cannot see Sendmail's output rewriting)"
                .into(),
        ));
    }
    if let Some(line) = sm.generics {
        report.add(Finding::problem(
            Check::OutputRewriting,
            Some(sm.location(line, "genericstable", "Kgenerics")),
            "FEATURE(`genericstable'): Sendmail rewrites sender addresses in header fields as it \
             sends the message, after signing: every signature over a field it changes fails"
                .into(),
            "remove FEATURE(`genericstable') and have clients write the address that should leave"
                .into(),
        ));
    }
    if sm.masquerade.is_none() && sm.generics.is_none() {
        report.pass(
            Check::OutputRewriting,
            "no address rewriting on output (MASQUERADE_AS, genericstable)".into(),
        );
    }
}

#[cfg(test)]
#[path = "sendmail_tests.rs"]
mod tests;
