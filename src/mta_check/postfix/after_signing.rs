//! What may change a message after this milter signed it: a content filter on the way, and the
//! smtp/lmtp client (8BITMIME downgrade, `smtp_generic_maps`, `smtp_*_checks`, line breaking),
//! and `milter_header_checks` on the header fields milters add.

use super::{Check, Ctx, Finding, Location, Reach, Report, Service, Setting, has_word};
use crate::mta_check::Severity;
use crate::mta_check::lookup_table::{self, Table};
use crate::mta_check::milter_list;

/// RFC 5322's line limit: a smaller `smtp_line_length_limit` breaks lines of valid mail.
const RFC_LINE_LIMIT: usize = 998;

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

impl<'a> Ctx<'a> {
    pub(super) fn content_filter_anywhere(&self) -> bool {
        !self.pf.main("content_filter").is_empty()
            || self.pf.services.iter().any(|s| {
                s.params
                    .get("content_filter")
                    .is_some_and(|v| !v.is_empty())
            })
    }

    /// Mail signed by an smtpd that hands it to a content filter passes through the filter
    /// and back into Postfix before it leaves.
    pub(super) fn content_filter(&self, report: &mut Report) {
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

    /// The delivery agents, with the prefix of their parameters (`smtp_…`, `lmtp_…`).
    fn clients(&self) -> Vec<(&'a Service, &'static str)> {
        self.services(&["smtp", "lmtp"])
            .into_iter()
            .map(|s| (s, if s.command == "lmtp" { "lmtp" } else { "smtp" }))
            .collect()
    }

    pub(super) fn output_conversion(&self, report: &mut Report) {
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

    pub(super) fn output_rewriting(&self, report: &mut Report) {
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

    pub(super) fn output_checks(&self, report: &mut Report) {
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
    pub(super) fn milter_header_checks(&self, report: &mut Report) {
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

    pub(super) fn line_length(&self, report: &mut Report) {
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
}
