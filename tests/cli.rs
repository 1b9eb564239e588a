//! The command line, run as a user would: `keygen`, `check`, `sign`, and bad configs.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

fn signet(args: &[&str], stdin: &[u8]) -> Output {
    common::run_signet(args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup(dir: &Path, table: &str) -> String {
    let keys = dir.join("keys");
    for (algo, selector) in [("rsa2048", "rsa1"), ("ed25519", "ed1")] {
        let out = signet(
            &[
                "keygen",
                "--algo",
                algo,
                "--domain",
                "example.com",
                "--selector",
                selector,
                "--out",
                keys.to_str().unwrap(),
            ],
            b"",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with(&format!("{selector}._domainkey.example.com. IN TXT ("))
        );
        let mode = std::fs::metadata(keys.join(format!("example.com/{selector}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = dir.join("signet-milter.toml");
    std::fs::write(
        &config,
        format!("[keys]\ndirectory = \"{}\"\n{table}", keys.display()),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

const DUAL: &str = r#"
[domain."example.com"]
selector = "rsa1"
additional_signatures = ["ed"]
[signature."ed"]
domain = "{domain}"
selector = "ed1"
"#;

#[tokio::test]
async fn sign_accepts_lf_only_input_and_the_result_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), DUAL);
    let message = b"From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: lf\n only\n\nbody line\n.dot line\n\n";
    let out = signet(&["sign", "-c", &config], message);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let signed = out.stdout;
    assert!(
        signed.ends_with(message),
        "the message follows the signatures unchanged"
    );
    assert!(!signed.contains(&b'\r'), "LF in, LF out");
    // Verified as it would travel over SMTP: CRLF.
    let wire = text(&signed).replace('\n', "\r\n").into_bytes();
    common::assert_verifies(
        &wire,
        &dir.path().join("keys"),
        &[("example.com", "rsa1"), ("example.com", "ed1")],
    )
    .await;
}

#[test]
fn sign_follows_the_same_policy_as_the_milter() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), DUAL);
    let message = b"From: alice@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    let outsider = signet(
        &["sign", "-c", &config, "--client-ip", "203.0.113.5"],
        message,
    );
    assert!(outsider.status.success());
    assert_eq!(
        outsider.stdout, message,
        "an outsider's message comes back unsigned"
    );
    assert!(text(&outsider.stderr).contains("neither trusted nor authenticated"));
    let authed = signet(
        &[
            "sign",
            "-c",
            &config,
            "--client-ip",
            "203.0.113.5",
            "--auth",
            "alice@example.com",
        ],
        message,
    );
    assert!(
        text(&authed.stdout).starts_with("DKIM-Signature:"),
        "{}",
        text(&authed.stderr)
    );
    // A login of another domain is not signed as example.com (the default authorization).
    let other = signet(
        &[
            "sign",
            "-c",
            &config,
            "--client-ip",
            "203.0.113.5",
            "--auth",
            "bob@example.net",
        ],
        message,
    );
    assert!(other.status.success());
    assert_eq!(other.stdout, message, "{}", text(&other.stderr));
    assert!(
        text(&other.stderr).contains(
            "bob@example.net may not sign for example.com: its own domain is example.net"
        ),
        "{}",
        text(&other.stderr)
    );
}

#[test]
fn check_prints_a_table_and_fails_on_any_unusable_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), DUAL);
    let ok = signet(&["check", "-c", &config], b"");
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    let table = text(&ok.stdout);
    assert!(
        table.contains("DOMAIN") && table.contains("rsa-2048") && table.contains("ok"),
        "{table}"
    );

    let broken = setup(
        &dir.path().join("b"),
        "[domain.\"example.com\"]\nselector = \"nope\"\n[domain.\"example.org\"]\nselector = \"rsa1\"\nkey = \"/dev/null/x\"\n",
    );
    let out = signet(&["check", "-c", &broken], b"");
    assert_eq!(out.status.code(), Some(1));
    let table = text(&out.stdout);
    assert!(table.contains("nope.key: does not exist"), "{table}");
    assert!(table.contains("2 of 2 keys not usable"), "{table}");

    let group_readable = dir.path().join("keys/example.com/rsa1.key");
    std::fs::set_permissions(&group_readable, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = signet(&["check", "-c", &config], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("readable or writable by group or others"));
}

#[test]
fn a_bad_config_names_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[milter]\nlisten = \"unix:/tmp/x.sock\"\n\n[domain.\"example.com\"]\nselector = \"s\"\nover_sing = true\n").unwrap();
    for cmd in ["check", "run"] {
        let out = signet(&[cmd, "-c", path.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:6:1: unknown field `over_sing`",
                path.display()
            )),
            "{cmd}: {err}"
        );
    }
}

/// The README's dual-signing shape: the Ed25519 `[signature]` signs as each domain with that
/// domain's own key file. A domain whose Ed25519 key is missing fails `check`, named with its
/// signature and path, although its RSA key is fine.
#[test]
fn check_expands_every_domain_with_each_of_its_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!(
        "{DUAL}\n[domain.\"example.org\"]\nselector = \"rsa1\"\nadditional_signatures = [\"ed\"]\n"
    );
    let config = setup(dir.path(), &table);
    let keys = dir.path().join("keys");
    // example.org gets the RSA key but no Ed25519 key.
    let out = signet(
        &[
            "keygen",
            "--algo",
            "rsa2048",
            "--domain",
            "example.org",
            "--selector",
            "rsa1",
            "--out",
            keys.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = signet(&["check", "-c", &config], b"");
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let missing = keys.join("example.org/ed1.key");
    let row = table
        .lines()
        .find(|l| l.starts_with("example.org ") && l.contains(" ed1 "))
        .unwrap_or_else(|| panic!("no example.org/ed1 row:\n{table}"));
    assert!(row.contains("[signature.\"ed\"]"), "{row}");
    assert!(
        row.contains(&format!(
            "ERROR: key file {}: does not exist",
            missing.display()
        )),
        "{row}"
    );
    for fine in ["example.com  rsa1", "example.com  ed1", "example.org  rsa1"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(fine))
            .unwrap_or_else(|| panic!("no {fine} row:\n{table}"));
        assert!(row.ends_with("  ok"), "{row}");
    }
    assert!(table.contains("1 of 4 keys not usable"), "{table}");
}

/// `check --records` prints the zone line of every key, the one keygen printed when it made it.
#[test]
fn check_records_prints_what_to_publish() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), DUAL);
    let out = signet(&["check", "-c", &config, "--records"], b"");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let records: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "DNS records to publish:")
        .skip(1)
        .collect();
    assert_eq!(records.len(), 2, "{stdout}");
    for selector in ["rsa1", "ed1"] {
        let value =
            std::fs::read_to_string(dir.path().join(format!("keys/example.com/{selector}.dns")))
                .unwrap();
        let line = records
            .iter()
            .find(|l| l.starts_with(&format!("{selector}._domainkey.example.com. IN TXT (")))
            .unwrap_or_else(|| panic!("no record for {selector}:\n{stdout}"));
        let joined: String = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(joined, value.trim(), "{line}");
    }
}

#[test]
fn check_lists_a_per_mailbox_entry_with_the_key_of_its_domain() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[domain.\"example.com\"]\nselector = \"rsa1\"\n[domain.\"CEO@example.com\"]\nselector = \"ed1\"\n",
    );
    let out = signet(&["check", "-c", &config], b"");
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("ed1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.starts_with("example.com ")
            && row.contains("example.com/ed1.key")
            && row.ends_with("ok"),
        "{row}"
    );
    // The mailbox gets its own selector, everyone else the domain's.
    for (from, selector) in [
        ("ceo@example.com", "s=ed1;"),
        ("ann@example.com", "s=rsa1;"),
    ] {
        let message = format!("From: {from}\r\nSubject: x\r\n\r\nbody\r\n");
        let out = signet(&["sign", "-c", &config], message.as_bytes());
        assert!(
            text(&out.stdout).contains(selector),
            "{from}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn sign_takes_every_input_the_milter_has() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), DUAL);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap()
            + "[milter]\ntrusted_daemon_names = [\"ORIGINATING\"]\n",
    )
    .unwrap();
    let message = b"From: alice@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    let args = |extra: &[&'static str]| {
        let mut a = vec!["sign", "-c", config.as_str(), "--client-ip", "203.0.113.5"];
        a.extend_from_slice(extra);
        a
    };
    let by_daemon = signet(
        &args(&[
            "--daemon-name",
            "ORIGINATING",
            "--mail-from",
            "a@example.com",
        ]),
        message,
    );
    assert!(
        text(&by_daemon.stdout).starts_with("DKIM-Signature:"),
        "{}",
        text(&by_daemon.stderr)
    );
    let mechanism_only = signet(&args(&["--auth-type", "CRAM-MD5"]), message);
    assert_eq!(mechanism_only.stdout, message);
    assert!(
        text(&mechanism_only.stderr).contains("the MTA reported no login name"),
        "{}",
        text(&mechanism_only.stderr)
    );
}

#[test]
fn explain_walks_the_lookup_and_says_why_nothing_matched() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[domain.\"*.example.com\"]\nselector = \"rsa1\"\n",
    );
    let out = signet(
        &["explain", "-c", &config],
        b"From: Ann <ann@Example.COM>\nSubject: x\n\nbody\n",
    );
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    for line in [
        "may be signed: trusted client 127.0.0.1",
        "ann@example.com (domain example.com)",
        "no entry matches",
        "[domain.\"ann@example.com\"]: no such entry",
        "[domain.\"example.com\"]: no such entry",
        "[domain.\"*.com\"]: no such entry",
        "[domain.\"*\"]: no such entry",
        "note: [domain.\"*.example.com\"] matches subdomains only, never example.com itself",
        "result: not signed: no signing entry for author domain example.com",
        "milter: accept, unsigned",
    ] {
        assert!(shown.contains(line), "{line:?} missing:\n{shown}");
    }
}
