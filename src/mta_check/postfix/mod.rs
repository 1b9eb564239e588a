//! `check --postfix`: every Postfix setting that makes mail leave unsigned, or breaks the
//! signatures after the milter made them.
//!
//! Where Postfix talks to milters: `smtpd` itself for mail it receives (`smtpd_milters`; the
//! connection is then handed to cleanup), and `cleanup` for mail from the `sendmail` command
//! (pickup) and QMQP (`non_smtpd_milters`). So the smtpd services' chroot decides whether an
//! `smtpd_milters` socket can be reached, and cleanup's for `non_smtpd_milters`.
//!
//! What happens after signing: cleanup has already done its rewriting (canonical maps,
//! masquerading, header_checks) before the milter sees the message; what comes later is the
//! queue, a content filter if there is one, and the smtp/lmtp client, which may convert 8-bit
//! bodies, rewrite addresses (`smtp_generic_maps`), apply `smtp_header_checks` and break long
//! lines.

//!
//! `ways_in.rs` asks whether every way mail enters reaches this milter; `after_signing.rs`
//! what may change a message once it is signed.

mod after_signing;
mod ways_in;

use super::endpoint::{MilterAddr, Reach, View, reaches};
use super::postconf::{PostfixConfig, Service, Setting};
use super::{Check, Expectations, Finding, Host, Location, Report};
use crate::config::ListenAddr;
use std::path::Path;

pub fn analyze(pf: &PostfixConfig, expect: &Expectations, host: &dyn Host) -> Report {
    let mut report = Report::new(format!(
        "Postfix {}, {} (read with postconf)",
        pf.version,
        pf.config_dir.display()
    ));
    let ctx = Ctx {
        pf,
        expect,
        host,
        queue: pf.queue_directory(),
    };
    ctx.milter_paths(&mut report);
    ctx.overrides(&mut report);
    ctx.content_filter(&mut report);
    ctx.output_conversion(&mut report);
    ctx.output_rewriting(&mut report);
    ctx.output_checks(&mut report);
    ctx.milter_header_checks(&mut report);
    ctx.line_length(&mut report);
    ctx.unknown_parameters(&mut report);
    let others = pf.main("multi_instance_directories");
    if !others.is_empty() {
        report.notes.push(format!(
            "other Postfix instances: {others}; check each with --postfix-config DIR"
        ));
    }
    report
}

/// What every check looks at.
struct Ctx<'a> {
    pf: &'a PostfixConfig,
    expect: &'a Expectations,
    host: &'a dyn Host,
    /// Where chrooted daemons are chrooted, and every daemon's working directory.
    queue: &'a Path,
}

impl<'a> Ctx<'a> {
    pub(super) fn services(&self, commands: &[&str]) -> Vec<&'a Service> {
        self.pf
            .services
            .iter()
            .filter(|s| commands.contains(&s.command.as_str()))
            .collect()
    }

    pub(super) fn setting(&self, service: &'a Service, name: &str) -> Setting<'a> {
        self.pf.setting(Some(service), name)
    }

    /// The command that changes `name` where it is set now.
    pub(super) fn fix(
        &self,
        service: &Service,
        setting: &Setting<'_>,
        name: &str,
        value: &str,
    ) -> String {
        self.pf
            .set_command(setting.per_service.then_some(service), name, value)
    }

    pub(super) fn view(&self, service: &Service) -> View<'a> {
        View {
            chroot: service.chroot.then_some(self.queue),
            cwd: self.queue,
        }
    }

    /// How this milter is best named in a Postfix milter list.
    pub(super) fn our_spelling(&self) -> String {
        match &self.expect.listen {
            ListenAddr::Inet(addr) => format!("inet:{addr}"),
            ListenAddr::Unix(path) => match path.strip_prefix(self.queue) {
                Ok(relative) => format!("unix:{}", relative.display()),
                Err(_) => format!("unix:{}", path.display()),
            },
        }
    }

    pub(super) fn reach(&self, name: &str, talker: &Service) -> Reach {
        MilterAddr::parse_postfix(name).map_or(Reach::No, |addr| {
            reaches(&addr, &self.expect.listen, self.view(talker), self.host)
        })
    }

    // --- after signing: the smtp and lmtp clients ---------------------------------------------

    /// postconf's "unused parameter" warnings for names that look like the settings checked
    /// here: `smtpd_milter = …` does nothing, silently.
    pub(super) fn unknown_parameters(&self, report: &mut Report) {
        for warning in &self.pf.warnings {
            let Some((file, rest)) = warning
                .split_once(": unused parameter: ")
                .map(|(head, rest)| (head.rsplit(": ").next().unwrap_or(head), rest))
            else {
                continue;
            };
            let name = rest.split('=').next().unwrap_or("").trim();
            let lower = name.to_ascii_lowercase();
            if !(lower.contains("milter") || lower.contains("mime")) {
                continue;
            }
            let location = if file.ends_with("main.cf") {
                self.pf.main_location(name)
            } else {
                Location {
                    file: file.into(),
                    line: None,
                }
            };
            let fix = match closest(name, self.pf.known_parameters()) {
                Some(known) => format!("did you mean {known}?"),
                None => "remove it".into(),
            };
            report.add(Finding::warning(
                Check::UnknownSetting,
                Some(location),
                format!("{name} is not a Postfix parameter: the setting has no effect"),
                fix,
            ));
        }
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
}

fn has_word(text: &str, word: &str) -> bool {
    words(text).any(|w| w == word)
}

/// The known parameter nearest to a misspelt one (at most 3 edits away).
fn closest<'k>(name: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
