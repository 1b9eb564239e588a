//! Does every way mail enters Postfix reach this milter, and what happens while it cannot?
//! The milter lists of smtpd and of the cleanup behind pickup/qmqpd, through their chroot; the
//! default action and protocol of the entry that names this milter; milters after it;
//! `smtpd_milter_maps`; services with `no_milters`.

use super::{Check, Ctx, Finding, Location, Report, Service, Setting, has_word, words};
use crate::mta_check::endpoint::Reach;
use crate::mta_check::lookup_table::{self, Table};
use crate::mta_check::milter_list::{self, MilterEntry};
use std::collections::BTreeMap;

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

    pub(super) fn milter_paths(&self, report: &mut Report) {
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
        let (action, location, fix) = self.milter_setting(
            path,
            milters,
            entry,
            ("default_action", "milter_default_action"),
            "tempfail",
        );
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

    /// A per-milter setting (`{ name, key = value }`, Postfix 3.0) else the `milter_*`
    /// parameter the path's service runs with: its value, where to change it, and the fix.
    fn milter_setting<'s>(
        &self,
        path: &MailPath<'a>,
        milters: &Setting<'_>,
        entry: Option<&'s MilterEntry>,
        (key, param): (&str, &str),
        good: &str,
    ) -> (&'s str, Location, String)
    where
        'a: 's,
    {
        match entry.and_then(|e| Some((e, e.settings.get(key)?))) {
            Some((entry, value)) => (
                value.as_str(),
                milters.location.clone(),
                format!("{key} = {good} in the {{ {} … }} entry", entry.name),
            ),
            None => {
                let s = self.setting(path.talker, param);
                let fix = self.fix(path.talker, &s, param, good);
                (s.value, s.location, fix)
            }
        }
    }

    fn protocol(
        &self,
        path: &MailPath<'_>,
        milters: &Setting<'_>,
        entry: Option<&MilterEntry>,
        report: &mut Report,
    ) {
        let (text, location, fix) =
            self.milter_setting(path, milters, entry, ("protocol", "milter_protocol"), "6");
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

    fn milters_off(&self, source: &Service) -> bool {
        has_word(
            self.setting(source, "receive_override_options").value,
            "no_milters",
        )
    }

    pub(super) fn overrides(&self, report: &mut Report) {
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
}
