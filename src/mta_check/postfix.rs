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

use super::endpoint::{MilterAddr, Reach, View, reaches};
use super::lookup_table::{self, Table};
use super::milter_list::{self, MilterEntry};
use super::postconf::{PostfixConfig, Service, Setting};
use super::{Check, Expectations, Finding, Host, Location, Report, Severity};
use crate::config::ListenAddr;
use std::collections::BTreeMap;
use std::path::Path;

/// RFC 5322's line limit: a smaller `smtp_line_length_limit` breaks lines of valid mail.
const RFC_LINE_LIMIT: usize = 998;

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

/// A header/body check table and what its changing rules mean.
struct TableCheck<'s> {
    name: &'s str,
    setting: &'s Setting<'s>,
    check: Check,
    rule_severity: Severity,
    consequence: &'s str,
    fix: String,
    service: &'s str,
}

struct Ctx<'a> {
    pf: &'a PostfixConfig,
    expect: &'a Expectations,
    host: &'a dyn Host,
    queue: &'a Path,
}

/// A way mail enters Postfix, and the process that passes it to the milters.
struct MailPath<'a> {
    /// The services, e.g. `smtp/inet`, or `pickup/unix → cleanup/unix`.
    label: String,
    /// Where mail enters: smtpd, pickup or qmqpd (whose receive_override_options apply).
    source: &'a Service,
    /// The one that talks to the milters: smtpd, or the cleanup behind pickup/qmqpd.
    talker: &'a Service,
    /// `smtpd_milters` or `non_smtpd_milters`.
    param: &'static str,
}

impl<'a> Ctx<'a> {
    fn services(&self, commands: &[&str]) -> Vec<&'a Service> {
        self.pf
            .services
            .iter()
            .filter(|s| commands.contains(&s.command.as_str()))
            .collect()
    }

    fn setting(&self, service: &'a Service, name: &str) -> Setting<'a> {
        self.pf.setting(Some(service), name)
    }

    /// The command that changes `name` where it is set now.
    fn fix(&self, service: &Service, setting: &Setting<'_>, name: &str, value: &str) -> String {
        self.pf
            .set_command(setting.per_service.then_some(service), name, value)
    }

    fn view(&self, service: &Service) -> View<'a> {
        View {
            chroot: service.chroot.then_some(self.queue),
            cwd: self.queue,
        }
    }

    fn mail_paths(&self) -> Vec<MailPath<'a>> {
        let mut paths: Vec<MailPath<'a>> = self
            .services(&["smtpd"])
            .into_iter()
            .map(|s| MailPath {
                label: s.label(),
                source: s,
                talker: s,
                param: "smtpd_milters",
            })
            .collect();
        for source in self.services(&["pickup", "qmqpd"]) {
            if let Some(cleanup) = self.pf.cleanup_of(source) {
                paths.push(MailPath {
                    label: format!("{} → {}", source.label(), cleanup.label()),
                    source,
                    talker: cleanup,
                    param: "non_smtpd_milters",
                });
            }
        }
        paths
    }

    /// How this milter is best named in a Postfix milter list.
    fn our_spelling(&self) -> String {
        match &self.expect.listen {
            ListenAddr::Inet(addr) => format!("inet:{addr}"),
            ListenAddr::Unix(path) => match path.strip_prefix(self.queue) {
                Ok(relative) => format!("unix:{}", relative.display()),
                Err(_) => format!("unix:{}", path.display()),
            },
        }
    }

    // --- the milter lists of every way in -----------------------------------------------------

    fn milter_paths(&self, report: &mut Report) {
        let mut reached: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for path in self.mail_paths() {
            // Milters are off on this path; `overrides` reports whether that is right.
            if self.milters_off(path.source) {
                continue;
            }
            let setting = self.setting(path.talker, path.param);
            let entries = milter_list::parse(setting.value);
            let reach: Vec<Reach> = entries
                .iter()
                .map(|e| self.reach(&e.name, path.talker))
                .collect();
            match reach.iter().position(|r| *r == Reach::Yes) {
                Some(i) => {
                    reached
                        .entry((path.param.to_string(), entries[i].name.clone()))
                        .or_default()
                        .push(path.label.clone());
                    self.default_action(&path, &setting, Some(&entries[i]), report);
                    self.protocol(&path, &setting, Some(&entries[i]), report);
                    self.order(&path, &setting, &entries, i, report);
                }
                None => {
                    self.not_reached(&path, &setting, &reach, report);
                    // Once the list names this milter, these apply: report them now, so that
                    // one run shows everything to change.
                    self.default_action(&path, &setting, None, report);
                    self.protocol(&path, &setting, None, report);
                }
            }
            if path.param == "smtpd_milters" {
                self.milter_maps(&path, report);
            }
        }
        for ((param, name), labels) in reached {
            report.pass(
                Check::Milter,
                format!("{param} names this milter as {name}: {}", labels.join(", ")),
            );
        }
    }

    fn reach(&self, name: &str, talker: &Service) -> Reach {
        MilterAddr::parse_postfix(name).map_or(Reach::No, |addr| {
            reaches(&addr, &self.expect.listen, self.view(talker), self.host)
        })
    }

    fn not_reached(
        &self,
        path: &MailPath<'_>,
        setting: &Setting<'_>,
        reach: &[Reach],
        report: &mut Report,
    ) {
        let listen = &self.expect.listen;
        if let Some(Reach::HiddenByChroot { seen_as }) = reach
            .iter()
            .find(|r| matches!(r, Reach::HiddenByChroot { .. }))
        {
            report.add(
                Finding::problem(
                    Check::Chroot,
                    Some(setting.location.clone()),
                    format!(
                        "{} = {}: {} runs chrooted in {}, where that path is {}, not the \
                         milter's socket {listen}: its mail is not signed",
                        path.param,
                        setting.value,
                        path.talker.label(),
                        self.queue.display(),
                        seen_as.display()
                    ),
                    format!(
                        "put the socket inside the chroot ([milter] listen = \"unix:{q}/signet-milter/signet-milter.sock\" \
                         and {param} = unix:signet-milter/signet-milter.sock: a path relative to {q} serves chrooted \
                         and other services alike), or use inet:127.0.0.1:8891 on both sides",
                        q = self.queue.display(),
                        param = path.param
                    ),
                )
                .for_service(&path.label),
            );
            return;
        }
        let ours = self.our_spelling();
        let wanted = if path.param == "non_smtpd_milters" && self.main_smtpd_reaches_us() {
            "$smtpd_milters".to_string()
        } else if setting.value.is_empty() {
            ours
        } else {
            format!("{}, {ours}", setting.value)
        };
        let what = if setting.value.is_empty() {
            format!(
                "{} is empty: mail that comes this way is not signed",
                path.param
            )
        } else {
            format!(
                "{} = {} does not name this milter ({listen}): mail that comes this way is not signed",
                path.param, setting.value
            )
        };
        report.add(
            Finding::problem(
                Check::Milter,
                Some(setting.location.clone()),
                what,
                self.fix(path.talker, setting, path.param, &wanted),
            )
            .for_service(&path.label),
        );
    }

    fn main_smtpd_reaches_us(&self) -> bool {
        let cleanup = self
            .pf
            .services
            .iter()
            .find(|s| s.command == "cleanup" && s.name == "cleanup");
        milter_list::parse(self.pf.main("smtpd_milters"))
            .iter()
            .any(|e| cleanup.is_some_and(|c| self.reach(&e.name, c) == Reach::Yes))
    }

    /// What Postfix does with mail while this milter cannot be reached.
    fn default_action(
        &self,
        path: &MailPath<'_>,
        milters: &Setting<'_>,
        entry: Option<&MilterEntry>,
        report: &mut Report,
    ) {
        let (action, location, fix) =
            match entry.and_then(|e| Some((e, e.settings.get("default_action")?))) {
                Some((entry, action)) => (
                    action.as_str(),
                    milters.location.clone(),
                    format!(
                        "default_action = tempfail in the {{ {} … }} entry",
                        entry.name
                    ),
                ),
                None => {
                    let s = self.setting(path.talker, "milter_default_action");
                    let fix = self.fix(path.talker, &s, "milter_default_action", "tempfail");
                    (s.value, s.location, fix)
                }
            };
        let finding = match action.to_ascii_lowercase().as_str() {
            "tempfail" => {
                report.pass(
                    Check::DefaultAction,
                    "while the milter cannot be reached, Postfix tempfails mail (milter_default_action = tempfail)"
                        .into(),
                );
                return;
            }
            "accept" => Finding::problem(
                Check::DefaultAction,
                Some(location),
                "milter_default_action = accept: whenever the milter cannot be reached (stopped, \
                 restarting, overloaded), Postfix sends mail on unsigned"
                    .into(),
                fix,
            ),
            "quarantine" => Finding::warning(
                Check::DefaultAction,
                Some(location),
                "milter_default_action = quarantine: while the milter cannot be reached, mail \
                 goes to the hold queue, and leaves unsigned when it is released"
                    .into(),
                fix,
            ),
            "reject" => Finding::warning(
                Check::DefaultAction,
                Some(location),
                "milter_default_action = reject: while the milter cannot be reached, mail is \
                 refused for good (5xx); tempfail makes clients try again"
                    .into(),
                fix,
            ),
            other => Finding::warning(
                Check::DefaultAction,
                Some(location),
                format!(
                    "milter_default_action = {other}: not a value Postfix knows (it tempfails, \
                     and logs a configuration error for every message)"
                ),
                fix,
            ),
        };
        report.add(finding.for_service(&path.label));
    }

    fn protocol(
        &self,
        path: &MailPath<'_>,
        milters: &Setting<'_>,
        entry: Option<&MilterEntry>,
        report: &mut Report,
    ) {
        let (text, location, fix) = match entry.and_then(|e| Some((e, e.settings.get("protocol")?)))
        {
            Some((entry, p)) => (
                p.as_str(),
                milters.location.clone(),
                format!("protocol = 6 in the {{ {} … }} entry", entry.name),
            ),
            None => {
                let s = self.setting(path.talker, "milter_protocol");
                let fix = self.fix(path.talker, &s, "milter_protocol", "6");
                (s.value, s.location, fix)
            }
        };
        // "6", or a version with extensions such as "4, no_header_reply" (milter8.c).
        let version = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|t| t.parse::<u32>().ok())
            .unwrap_or(6);
        if version >= 6 {
            report.pass(
                Check::Protocol,
                format!("milter protocol {version}: header fields keep the space after the colon"),
            );
            return;
        }
        let simple = &self.expect.simple_header_entries;
        let what = format!(
            "milter_protocol = {text}: below 6, Postfix drops the white space after each header \
             field's colon (no SMFIP_HDR_LEADSPC) and waits for a reply to every header and body chunk"
        );
        let finding = if simple.is_empty() {
            Finding::warning(
                Check::Protocol,
                Some(location),
                format!(
                    "{what}; relaxed header canonicalization, used by every signature here, survives that"
                ),
                fix,
            )
        } else {
            Finding::problem(
                Check::Protocol,
                Some(location),
                format!(
                    "{what}: the simple header canonicalization of {} then fails on fields written \
                     with a tab or several spaces",
                    simple.join(", ")
                ),
                fix,
            )
        };
        report.add(finding.for_service(&path.label));
    }

    /// Milters listed after this one see the signed message and may change it.
    fn order(
        &self,
        path: &MailPath<'_>,
        milters: &Setting<'_>,
        entries: &[MilterEntry],
        ours: usize,
        report: &mut Report,
    ) {
        let later: Vec<&str> = entries[ours + 1..]
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        if later.is_empty() {
            return;
        }
        let mut reordered: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let me = reordered.remove(ours);
        reordered.push(me);
        let braced = entries.iter().any(|e| !e.settings.is_empty());
        let fix = if braced {
            format!("list this milter ({me}) last in {}", path.param)
        } else {
            self.fix(path.talker, milters, path.param, &reordered.join(", "))
        };
        report.add(
            Finding::warning(
                Check::MilterOrder,
                Some(milters.location.clone()),
                format!(
                    "{} runs {} after this milter: if it changes a signed header field or the \
                     body, the signature fails",
                    path.param,
                    later.join(", ")
                ),
                fix,
            )
            .for_service(&path.label),
        );
    }

    /// `smtpd_milter_maps`: per-client milter lists that replace `smtpd_milters`.
    fn milter_maps(&self, path: &MailPath<'_>, report: &mut Report) {
        let setting = self.setting(path.talker, "smtpd_milter_maps");
        if setting.value.is_empty() {
            return;
        }
        for table in lookup_table::read_all(setting.value, self.host) {
            match table {
                Table::Unreadable { table, why } => report.add(
                    Finding::warning(
                        Check::MilterMaps,
                        Some(setting.location.clone()),
                        format!(
                            "smtpd_milter_maps = {}: clients that {table} matches get its milter list \
                             instead of smtpd_milters, and it cannot be read here ({why})",
                            setting.value
                        ),
                        "make sure every result names this milter and none is DISABLE".into(),
                    )
                    .for_service(&path.label),
                ),
                Table::Rules(rules) => {
                    for rule in rules {
                        let entries = milter_list::parse(&rule.result);
                        let names_us = entries
                            .iter()
                            .any(|e| self.reach(&e.name, path.talker) == Reach::Yes);
                        if names_us {
                            continue;
                        }
                        let what = if rule.result.eq_ignore_ascii_case("DISABLE") {
                            "smtpd_milter_maps: DISABLE turns milters off for the clients this rule \
                             matches: their mail is not signed"
                                .to_string()
                        } else {
                            format!(
                                "smtpd_milter_maps: clients this rule matches get \"{}\" instead of \
                                 smtpd_milters, without this milter: their mail is not signed",
                                rule.result
                            )
                        };
                        report.add(
                            Finding::problem(
                                Check::MilterMaps,
                                Some(Location {
                                    file: rule.file,
                                    line: Some(rule.line),
                                }),
                                what,
                                format!("add {} to the rule, or remove the rule", self.our_spelling()),
                            )
                            .for_service(&path.label),
                        );
                    }
                }
            }
        }
    }

    // --- services that turn milters off -------------------------------------------------------

    fn milters_off(&self, source: &Service) -> bool {
        has_word(
            self.setting(source, "receive_override_options").value,
            "no_milters",
        )
    }

    fn overrides(&self, report: &mut Report) {
        let filters = self.content_filter_anywhere();
        for service in self.services(&["smtpd", "pickup", "qmqpd"]) {
            if !self.milters_off(service) {
                continue;
            }
            let setting = self.setting(service, "receive_override_options");
            // FILTER_README's return path: local only, and `-o content_filter=` so that mail
            // does not loop back into the filter.
            let return_path = service
                .params
                .get("content_filter")
                .is_some_and(|f| f.is_empty());
            if filters && return_path && service.local_only() {
                report.pass(
                    Check::NoMilters,
                    format!(
                        "{} has no_milters: the return path of a content filter (mail signed before the filter)",
                        service.label()
                    ),
                );
                continue;
            }
            let kept: Vec<&str> = words(setting.value)
                .filter(|w| *w != "no_milters")
                .collect();
            report.add(
                Finding::problem(
                    Check::NoMilters,
                    Some(setting.location.clone()),
                    format!(
                        "receive_override_options = {}: no_milters turns every milter off: mail \
                         that comes this way is not signed",
                        setting.value
                    ),
                    self.fix(
                        service,
                        &setting,
                        "receive_override_options",
                        &kept.join(","),
                    ),
                )
                .for_service(&service.label()),
            );
        }
    }

    fn content_filter_anywhere(&self) -> bool {
        !self.pf.main("content_filter").is_empty()
            || self.pf.services.iter().any(|s| {
                s.params
                    .get("content_filter")
                    .is_some_and(|v| !v.is_empty())
            })
    }

    /// Mail signed by an smtpd that hands it to a content filter passes through the filter
    /// and back into Postfix before it leaves.
    fn content_filter(&self, report: &mut Report) {
        let rewriting: Vec<&str> = [
            "canonical_maps",
            "sender_canonical_maps",
            "recipient_canonical_maps",
            "masquerade_domains",
        ]
        .into_iter()
        .filter(|p| !self.pf.main(p).is_empty())
        .collect();
        for service in self.services(&["smtpd"]) {
            let filter = self.setting(service, "content_filter");
            if filter.value.is_empty() || !self.signs(service) {
                continue;
            }
            report.add(
                Finding::warning(
                    Check::ContentFilter,
                    Some(filter.location.clone()),
                    format!(
                        "content_filter = {}: mail signed here passes through the filter before it \
                         leaves: if the filter changes it (footers, subject tags, rewritten or removed \
                         header fields), its signatures fail",
                        filter.value
                    ),
                    "make sure the filter leaves signed mail unchanged, or sign after it (the \
                     milter on the service the filter returns mail to, instead of here)"
                        .into(),
                )
                .for_service(&service.label()),
            );
            let options = self.setting(service, "receive_override_options");
            if has_word(options.value, "no_address_mappings") && !rewriting.is_empty() {
                report.add(
                    Finding::problem(
                        Check::ContentFilter,
                        Some(options.location.clone()),
                        format!(
                            "receive_override_options = {}: with no_address_mappings here, {} rewrite \
                             header addresses only when the filter returns the mail, after it was \
                             signed: the signatures over From/To/Cc fail",
                            options.value,
                            rewriting.join(", ")
                        ),
                        "rewrite addresses before signing: remove no_address_mappings here and add it \
                         to the service the filter returns mail to"
                            .into(),
                    )
                    .for_service(&service.label()),
                );
            }
        }
    }

    /// Whether mail this smtpd receives goes through this milter.
    fn signs(&self, service: &Service) -> bool {
        milter_list::parse(self.setting(service, "smtpd_milters").value)
            .iter()
            .any(|e| self.reach(&e.name, service) == Reach::Yes)
    }

    // --- after signing: the smtp and lmtp clients ---------------------------------------------

    /// The delivery agents, with the prefix of their parameters (`smtp_…`, `lmtp_…`).
    fn clients(&self) -> Vec<(&'a Service, &'static str)> {
        self.services(&["smtp", "lmtp"])
            .into_iter()
            .map(|s| (s, if s.command == "lmtp" { "lmtp" } else { "smtp" }))
            .collect()
    }

    fn output_conversion(&self, report: &mut Report) {
        let mut fine = Vec::new();
        for (service, prefix) in self.clients() {
            let setting = self.setting(service, "disable_mime_output_conversion");
            if setting.value.eq_ignore_ascii_case("yes") {
                fine.push(service.label());
                continue;
            }
            let hidden = prefix == "smtp"
                && (has_word(
                    &self
                        .setting(service, "smtp_discard_ehlo_keywords")
                        .value
                        .to_ascii_lowercase(),
                    "8bitmime",
                ) || self.setting(service, "smtp_never_send_ehlo").value == "yes");
            let default = if setting.location.line.is_none() {
                " (the default)"
            } else {
                ""
            };
            report.add(
                Finding::problem(
                    Check::EightBitDowngrade,
                    Some(setting.location.clone()),
                    format!(
                        "disable_mime_output_conversion = {}{default}: for a next hop that does not \
                         announce 8BITMIME, Postfix converts 8-bit bodies to quoted-printable after \
                         the milter signed them (the body and the signed Content-Transfer-Encoding \
                         field change): every signature on them fails{}",
                        setting.value,
                        if hidden {
                            "; smtp_discard_ehlo_keywords/smtp_never_send_ehlo hide 8BITMIME of every \
                             server here, so every 8-bit message is converted"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "{} (8-bit mail is then sent as it was signed; servers without 8BITMIME accept it in practice)",
                        self.fix(service, &setting, "disable_mime_output_conversion", "yes")
                    ),
                )
                .for_service(&service.label()),
            );
        }
        if !fine.is_empty() {
            report.pass(
                Check::EightBitDowngrade,
                format!(
                    "8-bit mail leaves as it was signed (disable_mime_output_conversion = yes): {}",
                    fine.join(", ")
                ),
            );
        }
    }

    fn output_rewriting(&self, report: &mut Report) {
        let mut clean = true;
        for (service, prefix) in self.clients() {
            let name = format!("{prefix}_generic_maps");
            let setting = self.setting(service, &name);
            if setting.value.is_empty() {
                continue;
            }
            clean = false;
            report.add(
                Finding::problem(
                    Check::OutputRewriting,
                    Some(setting.location.clone()),
                    format!(
                        "{name} = {}: rewrites addresses in From:, To:, Cc: and the other address \
                         fields as mail leaves, after signing: every signature over a field it \
                         changes fails",
                        setting.value
                    ),
                    format!(
                        "rewrite before signing: move the rules to canonical_maps or \
                         sender_canonical_maps (cleanup applies them before the milter sees the \
                         message) and clear {name}"
                    ),
                )
                .for_service(&service.label()),
            );
        }
        if clean {
            report.pass(
                Check::OutputRewriting,
                "no address rewriting on output (smtp_generic_maps, lmtp_generic_maps)".into(),
            );
        }
    }

    fn output_checks(&self, report: &mut Report) {
        let mut clean = true;
        for (service, prefix) in self.clients() {
            for kind in [
                "header_checks",
                "mime_header_checks",
                "nested_header_checks",
                "body_checks",
            ] {
                let name = format!("{prefix}_{kind}");
                let setting = self.setting(service, &name);
                if setting.value.is_empty() {
                    continue;
                }
                clean &= self.table_findings(
                    &TableCheck {
                        name: &name,
                        setting: &setting,
                        check: Check::OutputHeaderChecks,
                        rule_severity: Severity::Problem,
                        consequence: "changes the message as Postfix sends it, after signing: a \
                                      signature over the changed header field or body fails",
                        fix: format!(
                            "make this change in {kind} (applied before the milter signs), or \
                             use only WARN, INFO and DUNNO in {name}"
                        ),
                        service: &service.label(),
                    },
                    report,
                );
            }
        }
        if clean {
            report.pass(
                Check::OutputHeaderChecks,
                "no header or body changes on output (smtp_header_checks, smtp_body_checks, …)"
                    .into(),
            );
        }
    }

    /// `milter_header_checks` apply to the header fields milters add: the DKIM-Signature too.
    fn milter_header_checks(&self, report: &mut Report) {
        let cleanup = self.pf.services.iter().find(|s| s.command == "cleanup");
        let setting = self.pf.setting(cleanup, "milter_header_checks");
        if setting.value.is_empty() {
            return;
        }
        self.table_findings(
            &TableCheck {
                name: "milter_header_checks",
                setting: &setting,
                check: Check::MilterHeaderChecks,
                // Whether a rule matches DKIM-Signature depends on its pattern.
                rule_severity: Severity::Warning,
                consequence: "applies to the header fields milters add: if it matches \
                              DKIM-Signature, the signature is changed or removed",
                fix: "make sure no rule matches DKIM-Signature".into(),
                service: &cleanup.map_or("cleanup/unix".to_string(), |c| c.label()),
            },
            report,
        );
    }

    /// Reports the rules of a header/body check table that change the message; returns
    /// whether there were none.
    fn table_findings(&self, t: &TableCheck<'_>, report: &mut Report) -> bool {
        let mut clean = true;
        for table in lookup_table::read_all(t.setting.value, self.host) {
            match table {
                Table::Unreadable { table, why } => {
                    clean = false;
                    report.add(
                        Finding::warning(
                            t.check,
                            Some(t.setting.location.clone()),
                            format!(
                                "{} = {}: cannot tell what {table} does ({why}); if a rule \
                                 IGNOREs, REPLACEs or PREPENDs, it {}",
                                t.name, t.setting.value, t.consequence
                            ),
                            t.fix.clone(),
                        )
                        .for_service(t.service),
                    );
                }
                Table::Rules(rules) => {
                    for rule in rules
                        .into_iter()
                        .filter(|r| lookup_table::modifies_message(&r.result))
                    {
                        clean = false;
                        let action = rule.result.split_whitespace().next().unwrap_or("");
                        let finding = Finding::problem(
                            t.check,
                            Some(Location {
                                file: rule.file,
                                line: Some(rule.line),
                            }),
                            format!(
                                "{}: {}: {}",
                                t.name,
                                action.to_ascii_uppercase(),
                                t.consequence
                            ),
                            t.fix.clone(),
                        );
                        report.add(
                            Finding {
                                severity: t.rule_severity,
                                ..finding
                            }
                            .for_service(t.service),
                        );
                    }
                }
            }
        }
        clean
    }

    fn line_length(&self, report: &mut Report) {
        for (service, prefix) in self.clients() {
            let name = format!("{prefix}_line_length_limit");
            let setting = self.setting(service, &name);
            let Ok(limit) = setting.value.parse::<usize>() else {
                continue;
            };
            if limit == 0 || limit >= RFC_LINE_LIMIT {
                continue;
            }
            report.add(
                Finding::problem(
                    Check::LineLength,
                    Some(setting.location.clone()),
                    format!(
                        "{name} = {limit}: Postfix breaks longer lines as it sends the message, after \
                         signing; lines up to {RFC_LINE_LIMIT} characters are valid mail, and every \
                         signature on a message with one fails"
                    ),
                    self.fix(service, &setting, &name, &RFC_LINE_LIMIT.to_string()),
                )
                .for_service(&service.label()),
            );
        }
    }

    /// postconf's "unused parameter" warnings for names that look like the settings checked
    /// here: `smtpd_milter = …` does nothing, silently.
    fn unknown_parameters(&self, report: &mut Report) {
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
#[path = "postfix_tests.rs"]
mod tests;
