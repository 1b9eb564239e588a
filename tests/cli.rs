//! The command line, run as a user would: `keygen`, `check`, `sign`, and bad configs.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn signet(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
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
