//! The Sendmail analysis over .cf files m4 built from Debian 12's sendmail-cf macros
//! (tests/fixtures/sendmail, made by its make.sh).

use super::*;
use crate::mta_check::host::FakeHost;
use crate::mta_check::{Finding, Severity};

macro_rules! fixture {
    ($name:literal) => {
        (
            include_str!(concat!("../../tests/fixtures/sendmail/", $name, ".cf")),
            include_str!(concat!("../../tests/fixtures/sendmail/", $name, ".mc")),
        )
    };
}

const RUN_SOCKET: &str = "unix:/run/signet-milter/signet-milter.sock";
const LOOPBACK: &str = "inet:127.0.0.1:8891";

fn expect(listen: &str, simple: &[&str]) -> Expectations {
    Expectations {
        listen: listen.parse().unwrap(),
        simple_header_entries: simple.iter().map(|s| s.to_string()).collect(),
    }
}

/// The report for the .cf as sendmail reads it.
fn cf_report((cf, _): (&str, &str), listen: &str, simple: &[&str]) -> Report {
    let config = SendmailConfig::parse(cf, "/etc/mail/sendmail.cf".into(), None);
    analyze(&config, &expect(listen, simple), &FakeHost::default())
}

/// The report for the .mc operators edit (locations point into it).
fn mc_report((cf, mc): (&str, &str), listen: &str) -> Report {
    let config = SendmailConfig::parse(cf, "/etc/mail/sendmail.mc".into(), Some(mc.into()));
    analyze(&config, &expect(listen, &[]), &FakeHost::default())
}

fn at(f: &Finding) -> String {
    f.location.as_ref().unwrap().to_string()
}

fn mc_line(mc: &str, needle: &str) -> String {
    let line = mc.lines().position(|l| l.contains(needle)).unwrap() + 1;
    format!("/etc/mail/sendmail.mc:{line}")
}

#[test]
fn debian_as_installed_has_no_milter_and_downgrades_8bit_mail() {
    let report = cf_report(fixture!("stock"), RUN_SOCKET, &[]);
    assert_eq!(
        report.tags(),
        [
            (Severity::Problem, "8bit-downgrade"),
            (Severity::Problem, "milter")
        ],
        "{}",
        report.render()
    );
    let milter = report.about(Check::Milter).next().unwrap();
    assert_eq!(
        milter.fix,
        "INPUT_MAIL_FILTER(`signet-milter', `S=local:/run/signet-milter/signet-milter.sock, F=T, T=C:10s;S:30s;R:60s;E:5m')"
    );
    let downgrade = report.about(Check::EightBitDowngrade).next().unwrap();
    assert!(
        downgrade
            .what
            .starts_with("mailers smtp, esmtp, dsmtp lack flag 8"),
        "{}",
        downgrade.what
    );
    assert!(
        report
            .render()
            .starts_with("Sendmail 8.17.1.9, /etc/mail/sendmail.cf:\n")
    );
}

#[test]
fn the_documented_setup_passes() {
    let report = cf_report(fixture!("documented"), RUN_SOCKET, &[]);
    assert!(report.findings.is_empty(), "{}", report.render());
    let passed: Vec<Check> = report.passed.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        passed,
        [
            Check::Milter,
            Check::DefaultAction,
            Check::EightBitDowngrade,
            Check::OutputRewriting
        ]
    );
    // The same filter spelt unix: on the milter's side of a TCP socket is not this milter.
    let report = cf_report(fixture!("documented"), LOOPBACK, &[]);
    assert_eq!(report.tags(), [(Severity::Problem, "milter")]);
}

#[test]
fn the_wrong_configuration_reports_every_item() {
    let fx = fixture!("wrong");
    let report = cf_report(fx, LOOPBACK, &["[domain.\"ss.example\"]"]);
    assert_eq!(
        report.tags(),
        [
            (Severity::Warning, "header-reformatting"),
            (Severity::Warning, "milter-order"),
            (Severity::Problem, "8bit-downgrade"),
            (Severity::Problem, "default-action"),
            (Severity::Problem, "milter"),
            (Severity::Problem, "output-rewriting"),
        ],
        "{}",
        report.render()
    );
    let cf_line = |needle: &str| {
        format!(
            "/etc/mail/sendmail.cf:{}",
            fx.0.lines().position(|l| l.starts_with(needle)).unwrap() + 1
        )
    };
    let one = |check| {
        let found: Vec<&Finding> = report.about(check).collect();
        assert_eq!(found.len(), 1, "{check}");
        found[0]
    };
    assert_eq!(at(one(Check::DefaultAction)), cf_line("Xsignet,"));
    assert_eq!(at(one(Check::MilterOrder)), cf_line("O InputMailFilters="));
    assert!(
        one(Check::MilterOrder)
            .what
            .contains("runs rewriter after this milter")
    );
    let milter = one(Check::Milter);
    assert_eq!(milter.services, ["MTA-filtered"]);
    assert_eq!(
        at(milter),
        cf_line("O DaemonPortOptions=Family=inet, Name=MTA-filtered")
    );
    let rewriting: Vec<&Finding> = report.about(Check::OutputRewriting).collect();
    assert_eq!(rewriting.len(), 2);
    assert_eq!(at(rewriting[0]), cf_line("DMexample.com"));
    assert_eq!(at(rewriting[1]), cf_line("Kgenerics"));
    assert!(
        one(Check::HeaderReformatting)
            .what
            .contains("[domain.\"ss.example\"]")
    );
    assert!(report.render().ends_with(
        "5 problems, 2 warnings: mail can leave unsigned or with signatures that fail\n"
    ));
}

#[test]
fn read_from_the_mc_the_locations_are_its_lines() {
    let fx = fixture!("wrong");
    let report = mc_report(fx, LOOPBACK);
    let mc = fx.1;
    let find = |check| report.about(check).next().unwrap();
    assert_eq!(
        at(find(Check::DefaultAction)),
        mc_line(mc, "INPUT_MAIL_FILTER(`signet'")
    );
    assert_eq!(
        at(find(Check::EightBitDowngrade)),
        mc_line(mc, "MAILER(`smtp')")
    );
    assert_eq!(at(find(Check::Milter)), mc_line(mc, "Name=MTA-filtered"));
    let rewriting: Vec<&Finding> = report.about(Check::OutputRewriting).collect();
    assert_eq!(at(rewriting[0]), mc_line(mc, "MASQUERADE_AS"));
    assert_eq!(at(rewriting[1]), mc_line(mc, "FEATURE(`genericstable')"));
}

#[test]
fn a_filter_that_is_only_defined_is_never_called() {
    let fx = fixture!("unused");
    let report = cf_report(fx, LOOPBACK, &[]);
    let milter: Vec<&Finding> = report.about(Check::Milter).collect();
    assert_eq!(milter.len(), 1, "{}", report.render());
    assert!(
        milter[0]
            .what
            .contains("defined but not in InputMailFilters")
    );
    let x_line = fx.0.lines().position(|l| l.starts_with("Xsignet")).unwrap() + 1;
    assert_eq!(at(milter[0]), format!("/etc/mail/sendmail.cf:{x_line}"));
    assert_eq!(
        at(mc_report(fx, LOOPBACK).about(Check::Milter).next().unwrap()),
        mc_line(fx.1, "MAIL_FILTER(`signet'")
    );
}

#[test]
fn flags_and_sockets() {
    let cf = |x_line: &str, mailer_flags: &str| {
        format!(
            "DZ8.17.1.9/Debian\nO InputMailFilters=signet\n{x_line}\nMesmtp,\t\tP=[IPC], F={mailer_flags}, S=EnvFromSMTP/HdrFromSMTP,\n\t\tT=DNS/RFC822/SMTP,\n"
        )
    };
    let report = |text: &str, listen: &str| {
        analyze(
            &SendmailConfig::parse(text, "/etc/mail/sendmail.cf".into(), None),
            &expect(listen, &[]),
            &FakeHost::default(),
        )
    };
    let r = report(
        &cf("Xsignet, S=inet:8891@localhost, F=R", "mDFMuXa8"),
        LOOPBACK,
    );
    assert_eq!(
        r.tags(),
        [(Severity::Warning, "default-action")],
        "{}",
        r.render()
    );
    let r = report(
        &cf("Xsignet, S=inet6:8891@::1, F=T", "mDFMuXa87"),
        "inet:[::1]:8891",
    );
    assert_eq!(
        r.tags(),
        [(Severity::Problem, "8bit-downgrade")],
        "{}",
        r.render()
    );
    assert!(r.findings[0].what.contains("flag 7"));
    let r = report(
        &cf("Xsignet, S=unix:/run/s.sock, F=T", "mDFMuXa8"),
        "unix:/run/s.sock",
    );
    assert!(r.findings.is_empty(), "{}", r.render());
    assert_eq!(
        our_socket(&"inet:[::1]:8891".parse().unwrap()),
        "inet6:8891@::1"
    );
}
