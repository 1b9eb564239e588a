//! Log output of the real binary: text by default, JSON lines with `[log] format = "json"`, the
//! configured level, and — when stderr is the journal (`JOURNAL_STREAM` names its device and
//! inode) — no timestamp of ours but a syslog priority prefix that journald turns into the
//! entry's priority.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the milter with `log_section` until its socket exists, stops it with SIGTERM, and
/// returns what it wrote to stderr (a file). `journal`: set JOURNAL_STREAM to that file (true)
/// or to some other file (false); `None`: leave it unset.
fn run_and_collect_stderr(log_section: &str, journal: Option<bool>) -> Vec<String> {
    run_with_signet_log(log_section, journal, None)
}

/// [`run_and_collect_stderr`], with `SIGNET_LOG` set to `signet_log`.
fn run_with_signet_log(
    log_section: &str,
    journal: Option<bool>,
    signet_log: Option<&str>,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    // nokey.example has no key: a WARN line at startup.
    let (config, socket) = common::daemon::example_com_config(
        dir.path(),
        "",
        &format!("{log_section}\n[domain.\"nokey.example\"]\nselector = \"s9\"\n"),
    );
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet-milter"));
    cmd.args(["run", "-c", config.to_str().unwrap()])
        .env_remove("JOURNAL_STREAM")
        .env_remove("SIGNET_LOG")
        .stderr(Stdio::from(stderr.try_clone().unwrap()));
    if let Some(value) = signet_log {
        cmd.env("SIGNET_LOG", value);
    }
    match journal {
        Some(true) => {
            cmd.env("JOURNAL_STREAM", dev_ino(&stderr_path));
        }
        Some(false) => {
            cmd.env("JOURNAL_STREAM", dev_ino(&config));
        }
        None => {}
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    // The keys are checked after the socket is bound: wait for that warning too.
    while !socket.exists()
        || !std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("key not usable yet")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no socket or no key warning"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&stderr_path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn dev_ino(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?} in {lines:#?}"))
}

/// `2026-11-22T10:00:00.123456Z`-style start of a line.
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
fn text_lines_carry_a_timestamp_outside_the_journal() {
    for journal in [None, Some(false)] {
        let lines = run_and_collect_stderr("", journal);
        let listening = line_with(&lines, "signet-milter listening");
        assert!(starts_with_timestamp(listening), "{listening}");
        assert!(listening.contains("INFO"), "{listening}");
        assert!(!listening.starts_with('<'), "{listening}");
    }
}

#[test]
fn text_lines_in_the_journal_have_a_priority_and_no_timestamp() {
    let lines = run_and_collect_stderr("", Some(true));
    let listening = line_with(&lines, "signet-milter listening");
    let rest = listening.strip_prefix("<6>").expect("INFO is priority 6");
    assert!(!starts_with_timestamp(rest.trim_start()), "{listening}");
    assert!(rest.trim_start().starts_with("INFO"), "{listening}");
    let warning = line_with(&lines, "key not usable yet");
    assert!(warning.starts_with("<4>"), "WARN is priority 4: {warning}");
    for line in &lines {
        assert!(line.starts_with('<'), "every line has a priority: {line}");
    }
}

#[test]
fn json_lines_parse_and_carry_the_fields() {
    let lines = run_and_collect_stderr("[log]\nformat = \"json\"", None);
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
    }
    let listening: serde_json::Value =
        serde_json::from_str(line_with(&lines, "signet-milter listening")).unwrap();
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["message"], "signet-milter listening");
    assert!(
        listening["listen"].as_str().unwrap().starts_with("unix:"),
        "{listening}"
    );
}

#[test]
fn json_lines_in_the_journal_have_a_priority_and_no_timestamp() {
    let lines = run_and_collect_stderr("[log]\nformat = \"json\"", Some(true));
    let warning = line_with(&lines, "key not usable yet");
    let json = warning.strip_prefix("<4>").expect("WARN is priority 4");
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value["level"], "WARN");
    assert!(value.get("timestamp").is_none(), "{warning}");
}

#[test]
fn the_level_is_configurable() {
    let lines = run_and_collect_stderr("[log]\nlevel = \"warn\"", None);
    line_with(&lines, "key not usable yet");
    assert!(
        lines.iter().all(|l| !l.contains("INFO")),
        "no info lines at level warn: {lines:#?}"
    );
}

/// A typo in SIGNET_LOG would be read as a filter for a module of that name and silence every
/// line: it is ignored, with a warning, and the configured level applies.
#[test]
fn a_signet_log_that_is_no_level_is_ignored_with_a_warning() {
    let lines = run_with_signet_log("[log]\nlevel = \"info\"", None, Some("verbose"));
    let warning = line_with(&lines, "SIGNET_LOG ignored");
    assert!(
        warning.contains("\"verbose\" is not a log level"),
        "{warning}"
    );
    line_with(&lines, "signet-milter listening");
    let lines = run_with_signet_log("[log]\nlevel = \"info\"", None, Some("warn"));
    assert!(
        lines.iter().all(|l| !l.contains("INFO")),
        "SIGNET_LOG=warn wins over the file: {lines:#?}"
    );
}

/// A sender who puts CR/LF in what the MTA passes on (the SASL login, the sender address)
/// cannot start a log line of their own: the text format escapes control characters.
#[tokio::test]
async fn client_values_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    // mode = "any": the forged login is not of the author's domain; this test is about what
    // reaches the log, not who may sign.
    let (config, socket) = common::daemon::example_com_config(
        dir.path(),
        "trusted_networks = []",
        "[authorization]\nmode = \"any\"\n",
    );
    let daemon = common::daemon::Daemon::start(&config);
    daemon.expect_log("signet-milter listening");
    let mut conn = indymilter_test::TestConnection::configure()
        .available_actions(indymilter::Actions::all())
        .available_opts(indymilter::ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(&socket)
        .await
        .unwrap();
    conn.connect(
        "client.example",
        "203.0.113.9".parse::<std::net::IpAddr>().unwrap(),
    )
    .await
    .unwrap();
    let forged = "\r\n2026-01-01T00:00:00Z  INFO signed queue_id=FORGED result=\"signed\"";
    let login = format!("mallory{forged}");
    let sent = common::send(
        &mut conn,
        &[("{auth_authen}", &login), ("{auth_type}", "PLAIN")],
        &common::Message::simple("alice@example.com"),
    )
    .await;
    assert_eq!(sent.inserted.len(), 1);
    let line = daemon.expect_log("authenticated as mallory");
    assert!(line.contains("mallory\\r\\n2026-01-01T00:00:00Z"), "{line}");
    // The next line the daemon writes is its own, not the forged one.
    drop(conn);
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    let (_, rest) = daemon.expect_log_after("stopped");
    assert!(rest.iter().all(|l| !l.contains("FORGED")), "{rest:#?}");
    let _ = daemon.child.wait();
}
