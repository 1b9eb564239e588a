//! RSA-1024 keys (issue 11 item 3): signed through the milter over the milter protocol with
//! AWS-LC's own RSA, verified by mail-auth, dkimpy and libopendkim against the public key as
//! OpenSSL derives it; `check` and the daemon's startup warn about the key. Keys below 1024
//! bits stay refused (`rsa512-insecure-test-only.pem`, in the unit tests).

mod common;

use base64::Engine as _;
use common::{Message, TestMilter, assert_verifies_everywhere, loopback, publish, send};
use indymilter_test::Status;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rsa1024-test-only.pem"
);

/// The DNS record of the fixture, from `openssl rsa -pubout` (not from signet's own code).
fn openssl_record() -> String {
    let out = Command::new("openssl")
        .args(["rsa", "-in", FIXTURE, "-pubout", "-outform", "DER"])
        .stderr(Stdio::null())
        .output()
        .expect("openssl");
    assert!(out.status.success());
    format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(out.stdout)
    )
}

/// Installs the fixture as `keys/example.com/old1024.key` (mode 0600) and its record.
fn install_key(keys: &Path) {
    let dir = keys.join("example.com");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("old1024.key");
    std::fs::copy(FIXTURE, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    publish(keys, "example.com", "old1024", &openssl_record());
}

const TABLE: &str = "[domain.\"example.com\"]\nselector = \"old1024\"\n";

#[tokio::test]
async fn rsa_1024_mail_verifies_with_every_verifier() {
    let milter = TestMilter::start(&[], "", TABLE).await;
    install_key(&milter.keys_dir());
    let mut conn = milter.connect(loopback()).await;
    for n in 0..3 {
        let message = Message::simple(&format!("user{n}@example.com"));
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Continue);
        assert_eq!(sent.inserted.len(), 1);
        assert!(sent.inserted[0].1.contains("a=rsa-sha256"));
        assert_verifies_everywhere(
            &message.delivered(&sent.inserted),
            &milter.keys_dir(),
            &[("example.com", "old1024")],
        )
        .await;
    }
    milter.stop().await;
}

fn config_in(dir: &Path) -> std::path::PathBuf {
    install_key(&dir.join("keys"));
    let config = dir.join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"unix:{}\"\n[keys]\ndirectory = \"{}\"\n{TABLE}",
            dir.join("s.sock").display(),
            dir.join("keys").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn check_warns_about_an_rsa_1024_key_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("rsa-1024"), "{stdout}");
    assert!(
        stdout.contains("warning: example.com/old1024: RSA-1024 is allowed by RFC 8301 but weak"),
        "{stdout}"
    );
}

#[test]
fn the_daemon_warns_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // The socket comes first; the startup key pass loads the key right after and warns.
    loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line)
                if line.contains("WARN")
                    && line.contains("RSA-1024 is allowed by RFC 8301 but weak") =>
            {
                break;
            }
            Ok(line) => seen.push(line),
            Err(_) => panic!("no RSA-1024 warning at startup:\n{}", seen.join("\n")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
