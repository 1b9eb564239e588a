//! The Postfix analysis over real `postconf` outputs (tests/fixtures/postfix, made by its
//! make.sh with Debian 12's Postfix 3.7), and over edits of them for the single cases.

use super::*;
use crate::mta_check::host::FakeHost;
use crate::mta_check::postconf::PostconfOutput;
use crate::mta_check::{Finding, Severity};
use std::path::PathBuf;

macro_rules! fixture {
    ($name:literal) => {
        Fixture {
            x: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/postconf-x.txt"
            ))
            .into(),
            f: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/postconf-F.txt"
            ))
            .into(),
            px: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/postconf-Px.txt"
            ))
            .into(),
            n: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/postconf-n.stderr"
            ))
            .into(),
            main_cf: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/main.cf"
            ))
            .into(),
            master_cf: include_str!(concat!(
                "../../../tests/fixtures/postfix/",
                $name,
                "/master.cf"
            ))
            .into(),
        }
    };
}

/// What postconf printed for one configuration, and its two files.
#[derive(Clone)]
struct Fixture {
    x: String,
    f: String,
    px: String,
    n: String,
    main_cf: String,
    master_cf: String,
}

impl Fixture {
    /// As `postconf -e 'name = value'` would leave it.
    fn set(mut self, name: &str, value: &str) -> Self {
        let prefix = format!("{name} =");
        let line = format!("{name} = {value}");
        let mut found = false;
        self.x = self
            .x
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    found = true;
                    line.clone()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(found, "postconf does not know {name}");
        self.main_cf.push_str(&format!("{line}\n"));
        self
    }

    /// As `postconf -P 'service/type/name=value'` would leave it (the master.cf line is not
    /// added: locations then point at the service's entry).
    fn set_service(mut self, service: &str, name: &str, value: &str) -> Self {
        self.px.push_str(&format!("\n{service}/{name} = {value}\n"));
        self
    }

    fn field(mut self, service: &str, field: &str, value: &str) -> Self {
        let prefix = format!("{service}/{field} =");
        self.f = self
            .f
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    format!("{prefix} {value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        self
    }

    fn config(&self) -> PostfixConfig {
        let out = PostconfOutput {
            main: self.x.clone(),
            fields: self.f.clone(),
            params: self.px.clone(),
            warnings: self.n.clone(),
        };
        PostfixConfig::parse(
            &out,
            &self.main_cf,
            &self.master_cf,
            PathBuf::from("/etc/postfix"),
            false,
        )
    }

    fn report(&self, listen: &str) -> Report {
        self.report_with(listen, &[])
    }

    fn report_with(&self, listen: &str, simple: &[&str]) -> Report {
        let expect = Expectations {
            listen: listen.parse().unwrap(),
            simple_header_entries: simple.iter().map(|s| s.to_string()).collect(),
        };
        analyze(&self.config(), &expect, &host())
    }
}

/// The machine: the tables the fixtures name.
fn host() -> FakeHost {
    FakeHost::with_files(&[
        (
            "/etc/postfix/smtp_header_checks",
            "# drop internal hops\n/^Received: from .*\\.internal/  IGNORE\n/^X-Mailer:/ WARN\n",
        ),
        (
            "/etc/postfix/milter_header_checks",
            "/^X-Spam-Flag:/ REPLACE X-Spam-Flag: NO\n",
        ),
        (
            "/etc/postfix/milter_map",
            "192.0.2.0/24   DISABLE\n198.51.100.0/24 unix:signet-milter/signet-milter.sock\n",
        ),
        ("/etc/postfix/warn_only", "/^Subject:/ WARN\n/^X-/ INFO\n"),
    ])
}

const RUN_SOCKET: &str = "unix:/run/signet-milter/signet-milter.sock";
const CHROOT_SOCKET: &str = "unix:/var/spool/postfix/signet-milter/signet-milter.sock";
const E2E_SOCKET: &str = "unix:/var/spool/postfix/signet-e2e/milter.sock";

fn only(report: &Report, check: Check) -> &Finding {
    let found: Vec<&Finding> = report.about(check).collect();
    assert_eq!(found.len(), 1, "{check}: {}", report.render());
    found[0]
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.starts_with(needle))
        .map(|i| i + 1)
}

#[test]
fn debian_as_installed_signs_nothing_and_downgrades_8bit_mail() {
    let report = fixture!("stock").report(RUN_SOCKET);
    assert_eq!(
        report.tags(),
        [
            (Severity::Problem, "8bit-downgrade"),
            (Severity::Problem, "milter")
        ],
        "{}",
        report.render()
    );
    let milters: Vec<&Finding> = report.about(Check::Milter).collect();
    assert_eq!(milters.len(), 2);
    assert!(milters[0].what.starts_with("smtpd_milters is empty"));
    assert_eq!(milters[0].services, ["smtp/inet"]);
    assert_eq!(
        milters[0].fix,
        "postconf -e 'smtpd_milters = unix:/run/signet-milter/signet-milter.sock'"
    );
    assert!(milters[1].what.starts_with("non_smtpd_milters is empty"));
    assert_eq!(milters[1].services, ["pickup/unix → cleanup/unix"]);
    let downgrade = only(&report, Check::EightBitDowngrade);
    assert_eq!(downgrade.services, ["smtp/unix", "relay/unix", "lmtp/unix"]);
    assert_eq!(
        downgrade.location.as_ref().unwrap().to_string(),
        "/etc/postfix/main.cf"
    );
    assert!(downgrade.what.contains("(the default)"));
    assert_eq!(
        downgrade.fix,
        "postconf -e 'disable_mime_output_conversion = yes' (8-bit mail is then sent as it was \
         signed; servers without 8BITMIME accept it in practice)"
    );
}

#[test]
fn the_documented_setups_pass() {
    for (name, fixture, listen) in [
        ("README, no chroot", fixture!("readme"), RUN_SOCKET),
        (
            "docs/postfix.md, Debian chroot",
            fixture!("debian-chroot"),
            CHROOT_SOCKET,
        ),
        ("tests/e2e/postfix.sh", fixture!("e2e"), E2E_SOCKET),
    ] {
        let report = fixture.report(listen);
        assert!(report.findings.is_empty(), "{name}:\n{}", report.render());
        let passed: Vec<Check> = report.passed.iter().map(|(c, _)| *c).collect();
        for check in [
            Check::Milter,
            Check::DefaultAction,
            Check::Protocol,
            Check::EightBitDowngrade,
            Check::OutputRewriting,
            Check::OutputHeaderChecks,
        ] {
            assert!(
                passed.contains(&check),
                "{name}: {check} not reported as ok"
            );
        }
        assert!(report.render().ends_with("0 problems, 0 warnings\n"));
    }
    let e2e = fixture!("e2e").report(E2E_SOCKET);
    let milters: Vec<&str> = e2e
        .passed
        .iter()
        .filter(|(c, _)| *c == Check::Milter)
        .map(|(_, w)| w.as_str())
        .collect();
    assert_eq!(
        milters,
        [
            "non_smtpd_milters names this milter as unix:signet-e2e/milter.sock: pickup/unix → cleanup/unix",
            "smtpd_milters names this milter as unix:signet-e2e/milter.sock: 127.0.0.1:2525/inet, \
             127.0.0.1:2587/inet, 127.0.0.1:2588/inet"
        ]
    );
}

#[test]
fn an_absolute_socket_outside_the_chroot_is_refused_for_chrooted_daemons() {
    // The README's settings for a Postfix without a chroot, on Debian's chrooted smtpd and cleanup.
    let report = fixture!("readme")
        .field("smtp/inet", "chroot", "y")
        .field("cleanup/unix", "chroot", "y")
        .report(RUN_SOCKET);
    assert_eq!(
        report.tags(),
        [(Severity::Problem, "chroot")],
        "{}",
        report.render()
    );
    let found: Vec<&Finding> = report.about(Check::Chroot).collect();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].services, ["smtp/inet"]);
    assert!(found[0].what.starts_with("smtpd_milters = unix:/run/"));
    assert_eq!(found[1].services, ["pickup/unix → cleanup/unix"]);
    assert!(found[1].what.starts_with("non_smtpd_milters = unix:/run/"));
    for f in found {
        assert!(
            f.what.contains(
                "where that path is /var/spool/postfix/run/signet-milter/signet-milter.sock"
            ),
            "{}",
            f.what
        );
    }
    // Only cleanup chrooted: the smtpd path works, the sendmail command's does not.
    let report = fixture!("readme")
        .field("cleanup/unix", "chroot", "y")
        .report(RUN_SOCKET);
    assert_eq!(
        only(&report, Check::Chroot).services,
        ["pickup/unix → cleanup/unix"]
    );
}

#[test]
fn the_wrong_configuration_reports_every_item() {
    let fx = fixture!("wrong");
    let report = fx.report_with(CHROOT_SOCKET, &["[domain.\"ss.example\"]"]);
    let text = report.render();
    assert_eq!(
        report.tags(),
        [
            (Severity::Warning, "content-filter"),
            (Severity::Warning, "milter-header-checks"),
            (Severity::Warning, "milter-order"),
            (Severity::Warning, "unknown-setting"),
            (Severity::Problem, "8bit-downgrade"),
            (Severity::Problem, "chroot"),
            (Severity::Problem, "content-filter"),
            (Severity::Problem, "default-action"),
            (Severity::Problem, "line-length"),
            (Severity::Problem, "milter"),
            (Severity::Problem, "milter-maps"),
            (Severity::Problem, "no-milters"),
            (Severity::Problem, "output-header-checks"),
            (Severity::Problem, "output-rewriting"),
            (Severity::Problem, "protocol"),
        ],
        "{text}"
    );
    let main_cf = "/etc/postfix/main.cf";
    let at = |needle: &str| format!("{main_cf}:{}", line_of(&fx.main_cf, needle).unwrap());
    let location = |check| only(&report, check).location.as_ref().unwrap().to_string();
    assert_eq!(
        location(Check::DefaultAction),
        at("milter_default_action =")
    );
    assert_eq!(location(Check::Protocol), at("milter_protocol ="));
    assert_eq!(
        location(Check::EightBitDowngrade),
        at("disable_mime_output_conversion =")
    );
    assert_eq!(location(Check::OutputRewriting), at("smtp_generic_maps ="));
    assert_eq!(location(Check::LineLength), at("smtp_line_length_limit ="));
    assert_eq!(location(Check::MilterOrder), at("smtpd_milters ="));
    assert_eq!(location(Check::UnknownSetting), at("smtpd_milter ="));
    let master = |needle: &str| {
        format!(
            "/etc/postfix/master.cf:{}",
            fx.master_cf
                .lines()
                .position(|l| l.contains(needle))
                .unwrap()
                + 1
        )
    };
    assert_eq!(
        location(Check::Chroot),
        master("-o smtpd_milters=unix:/var/spool/postfix")
    );
    assert_eq!(only(&report, Check::Chroot).services, ["submission/inet"]);
    let no_milters = only(&report, Check::NoMilters);
    assert_eq!(no_milters.services, ["127.0.0.1:2588/inet"]);
    assert_eq!(
        no_milters.fix,
        "postconf -P '127.0.0.1:2588/inet/receive_override_options='"
    );
    // The content filter's return path has no_milters too, and that is right.
    assert!(text.contains("ok       [no-milters] 127.0.0.1:10025/inet has no_milters"));
    assert_eq!(location(Check::MilterMaps), "/etc/postfix/milter_map:1");
    assert_eq!(
        location(Check::OutputHeaderChecks),
        "/etc/postfix/smtp_header_checks:2"
    );
    assert!(
        only(&report, Check::OutputHeaderChecks)
            .what
            .contains("IGNORE")
    );
    assert_eq!(
        only(&report, Check::UnknownSetting).fix,
        "did you mean smtpd_milters?"
    );
    let milter = only(&report, Check::Milter);
    assert_eq!(milter.services, ["pickup/unix → cleanup/unix"]);
    assert_eq!(
        milter.fix,
        "postconf -e 'non_smtpd_milters = $smtpd_milters'"
    );
    assert!(
        only(&report, Check::Protocol)
            .what
            .contains("[domain.\"ss.example\"]")
    );
    let content: Vec<&Finding> = report.about(Check::ContentFilter).collect();
    assert_eq!(content.len(), 2);
    assert!(
        content
            .iter()
            .any(|f| f.what.contains("masquerade_domains"))
    );
    assert!(text.ends_with(
        "11 problems, 4 warnings: mail can leave unsigned or with signatures that fail\n"
    ));
}

#[test]
fn default_actions() {
    let base = fixture!("readme");
    for (action, severity) in [
        ("accept", Severity::Problem),
        ("quarantine", Severity::Warning),
        ("reject", Severity::Warning),
        ("bogus", Severity::Warning),
    ] {
        let report = base
            .clone()
            .set("milter_default_action", action)
            .report(RUN_SOCKET);
        let f = only(&report, Check::DefaultAction);
        assert_eq!(f.severity, severity, "{action}");
        assert_eq!(f.services, ["smtp/inet", "pickup/unix → cleanup/unix"]);
        assert_eq!(f.fix, "postconf -e 'milter_default_action = tempfail'");
    }
    // Per milter, in the braced form, overriding a good main.cf value.
    let report = base
        .clone()
        .set(
            "smtpd_milters",
            "{ unix:/run/signet-milter/signet-milter.sock, default_action = accept }",
        )
        .report(RUN_SOCKET);
    let f = only(&report, Check::DefaultAction);
    assert_eq!(f.severity, Severity::Problem);
    // (non_smtpd_milters keeps the value $smtpd_milters had when postconf expanded it)
    assert_eq!(f.services, ["smtp/inet"]);
    assert!(
        f.fix
            .starts_with("default_action = tempfail in the { unix:/run/")
    );
    // Per service.
    let report = base
        .set_service("smtp/inet", "milter_default_action", "accept")
        .report(RUN_SOCKET);
    let f = only(&report, Check::DefaultAction);
    assert_eq!(f.services, ["smtp/inet"]);
    assert_eq!(
        f.fix,
        "postconf -P 'smtp/inet/milter_default_action=tempfail'"
    );
    assert!(
        f.location
            .as_ref()
            .unwrap()
            .to_string()
            .starts_with("/etc/postfix/master.cf:")
    );
}

#[test]
fn protocols_below_6_break_only_simple_header_signatures() {
    let base = fixture!("readme").set("milter_protocol", "4");
    let relaxed = base.report(RUN_SOCKET);
    assert_eq!(only(&relaxed, Check::Protocol).severity, Severity::Warning);
    let simple = base.report_with(RUN_SOCKET, &["[domain.\"a.example\"]"]);
    assert_eq!(only(&simple, Check::Protocol).severity, Severity::Problem);
    let extension = fixture!("readme")
        .set("milter_protocol", "2, no_header_reply")
        .report_with(RUN_SOCKET, &["x"]);
    assert!(
        only(&extension, Check::Protocol)
            .what
            .starts_with("milter_protocol = 2, no_header_reply")
    );
    let braced = fixture!("readme")
        .set(
            "smtpd_milters",
            "{ unix:/run/signet-milter/signet-milter.sock, protocol=3 }",
        )
        .report_with(RUN_SOCKET, &["x"]);
    assert_eq!(only(&braced, Check::Protocol).services, ["smtp/inet"]);
}

#[test]
fn milters_listed_after_this_one_are_a_warning() {
    let report = fixture!("readme")
        .set(
            "smtpd_milters",
            "inet:127.0.0.1:11332, unix:/run/signet-milter/signet-milter.sock, inet:127.0.0.1:8893",
        )
        .report(RUN_SOCKET);
    let f = only(&report, Check::MilterOrder);
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.what
            .contains("runs inet:127.0.0.1:8893 after this milter"),
        "{}",
        f.what
    );
    assert_eq!(
        f.fix,
        "postconf -e 'smtpd_milters = inet:127.0.0.1:11332, inet:127.0.0.1:8893, unix:/run/signet-milter/signet-milter.sock'"
    );
    assert!(!report.has_problems());
}

#[test]
fn inet_milters_by_address_and_name() {
    let fx = fixture!("stock")
        .set("smtpd_milters", "inet:localhost:8891")
        .set("non_smtpd_milters", "$smtpd_milters")
        .set("disable_mime_output_conversion", "yes");
    // postconf -x expands $smtpd_milters; the edit does it by hand.
    let fx = fx.set("non_smtpd_milters", "inet:localhost:8891");
    assert!(fx.report("inet:127.0.0.1:8891").findings.is_empty());
    let elsewhere = fx.report("inet:127.0.0.1:8892");
    assert_eq!(elsewhere.about(Check::Milter).count(), 2);
    assert_eq!(
        elsewhere.about(Check::Milter).next().unwrap().fix,
        "postconf -e 'smtpd_milters = inet:localhost:8891, inet:127.0.0.1:8892'"
    );
}

#[test]
fn services_that_turn_milters_off() {
    // Everything, in main.cf.
    let report = fixture!("readme")
        .set(
            "receive_override_options",
            "no_address_mappings, no_milters",
        )
        .report(RUN_SOCKET);
    let f = only(&report, Check::NoMilters);
    assert_eq!(f.services, ["smtp/inet", "pickup/unix"]);
    assert_eq!(
        f.fix,
        "postconf -e 'receive_override_options = no_address_mappings'"
    );
    // A content filter's return path reachable from the network is a way around signing.
    let report = fixture!("readme")
        .set("content_filter", "smtp-amavis:[127.0.0.1]:10024")
        .set_service(
            "smtp/inet",
            "content_filter",
            "smtp-amavis:[127.0.0.1]:10024",
        )
        .set_service("10025/inet", "receive_override_options", "no_milters")
        .set_service("10025/inet", "content_filter", "")
        .report(RUN_SOCKET);
    // (10025/inet is not in postconf -F, so it is not a service: nothing to report for it.)
    assert_eq!(report.about(Check::NoMilters).count(), 0);
    let content = only(&report, Check::ContentFilter);
    assert_eq!(content.severity, Severity::Warning);
    assert_eq!(content.services, ["smtp/inet"]);
}

#[test]
fn output_checks_that_only_warn_pass_and_unreadable_ones_warn() {
    let report = fixture!("readme")
        .set("smtp_header_checks", "regexp:/etc/postfix/warn_only")
        .set("smtp_body_checks", "pcre:/etc/postfix/missing")
        .report(RUN_SOCKET);
    let f = only(&report, Check::OutputHeaderChecks);
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.what
            .starts_with("smtp_body_checks = pcre:/etc/postfix/missing: cannot tell")
    );
    let report = fixture!("readme")
        .set("smtp_header_checks", "regexp:/etc/postfix/warn_only")
        .report(RUN_SOCKET);
    assert!(report.findings.is_empty(), "{}", report.render());
    // A per-service override on the relay transport only.
    let report = fixture!("readme")
        .set_service(
            "relay/unix",
            "smtp_header_checks",
            "regexp:/etc/postfix/smtp_header_checks",
        )
        .report(RUN_SOCKET);
    assert_eq!(
        only(&report, Check::OutputHeaderChecks).services,
        ["relay/unix"]
    );
}

#[test]
fn mime_conversion_per_transport_and_hidden_8bitmime() {
    let report = fixture!("readme")
        .set_service("relay/unix", "disable_mime_output_conversion", "no")
        .report(RUN_SOCKET);
    let f = only(&report, Check::EightBitDowngrade);
    assert_eq!(f.services, ["relay/unix"]);
    assert_eq!(
        f.fix,
        "postconf -P 'relay/unix/disable_mime_output_conversion=yes' (8-bit mail is then sent as it was signed; servers without 8BITMIME accept it in practice)"
    );
    let report = fixture!("stock")
        .set("smtp_discard_ehlo_keywords", "silent-discard, 8BITMIME")
        .report(RUN_SOCKET);
    let found: Vec<&Finding> = report.about(Check::EightBitDowngrade).collect();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].services, ["smtp/unix", "relay/unix"]);
    assert!(found[0].what.contains("every 8-bit message is converted"));
    // lmtp does not read smtp_discard_ehlo_keywords.
    assert_eq!(found[1].services, ["lmtp/unix"]);
    assert!(!found[1].what.contains("every 8-bit message"));
}

#[test]
fn line_lengths_of_valid_mail_are_kept() {
    for (limit, reported) in [("998", false), ("0", false), ("2000", false), ("990", true)] {
        let report = fixture!("readme")
            .set("smtp_line_length_limit", limit)
            .report(RUN_SOCKET);
        assert_eq!(
            report.about(Check::LineLength).count() == 1,
            reported,
            "{limit}"
        );
    }
}

#[test]
fn milter_maps_are_read_and_other_instances_named() {
    let report = fixture!("readme")
        .set(
            "smtpd_milter_maps",
            "cidr:/etc/postfix/milter_map, mysql:/etc/postfix/m.cf",
        )
        .set("multi_instance_directories", "/etc/postfix-out")
        .report(
            CHROOT_SOCKET
                .replace("signet-milter/signet-milter", "x")
                .as_str(),
        );
    // (the milter listens elsewhere here: every rule misses it, and smtpd_milters too)
    let maps: Vec<&Finding> = report.about(Check::MilterMaps).collect();
    assert_eq!(maps.len(), 3, "{}", report.render());
    assert!(maps.iter().any(|f| f.what.contains("DISABLE")));
    assert!(
        maps.iter()
            .any(|f| f.severity == Severity::Warning && f.what.contains("mysql"))
    );
    assert_eq!(
        report.notes,
        ["other Postfix instances: /etc/postfix-out; check each with --postfix-config DIR"]
    );
}

#[test]
fn the_report_names_file_line_fix_and_services() {
    let fx = fixture!("readme").set("milter_default_action", "accept");
    let text = fx.report(RUN_SOCKET).render();
    let line = line_of(&fx.main_cf, "milter_default_action = accept").unwrap();
    assert!(
        text.contains(&format!(
            "  PROBLEM  [default-action] /etc/postfix/main.cf:{line}: milter_default_action = accept: "
        )),
        "{text}"
    );
    assert!(text.contains("           services: smtp/inet, pickup/unix → cleanup/unix\n"));
    assert!(text.contains("           fix: postconf -e 'milter_default_action = tempfail'\n"));
    assert!(text.starts_with("Postfix 3.7.11, /etc/postfix (read with postconf):\n"));
    assert!(text.ends_with(
        "1 problem, 0 warnings: mail can leave unsigned or with signatures that fail\n"
    ));
}

#[test]
fn edit_distance_suggests_the_parameter_meant() {
    assert_eq!(edit_distance("smtpd_milter", "smtpd_milters"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    let known = ["smtpd_milters", "non_smtpd_milters", "milter_protocol"];
    assert_eq!(
        closest("non_smtpd_milter", known.into_iter()),
        Some("non_smtpd_milters")
    );
    assert_eq!(closest("something_else_entirely", known.into_iter()), None);
}

#[test]
fn one_run_shows_the_settings_that_apply_once_the_milter_is_listed() {
    let report = fixture!("stock")
        .set("milter_default_action", "accept")
        .set("milter_protocol", "2")
        .report_with(RUN_SOCKET, &["x"]);
    assert_eq!(
        report.tags(),
        [
            (Severity::Problem, "8bit-downgrade"),
            (Severity::Problem, "default-action"),
            (Severity::Problem, "milter"),
            (Severity::Problem, "protocol"),
        ],
        "{}",
        report.render()
    );
}
