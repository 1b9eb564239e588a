//! Key rotation through the real binary, as an operator drives it: `rotate --now` publishes and
//! activates a key against a real BIND 9, `check` shows each key's state (and `check --dns`
//! checks the active selector), `run` signs with the key the state made active from its first
//! message, and a `rotate --rollback` while it runs is followed without a restart.

mod common;

use common::dynamic_dns::{Bind, verify_opendkim_at};
use common::{Message, send};
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn signet(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The rotation table's line for `selector`.
fn row<'a>(output: &'a str, selector: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with("example.com") && l.split_whitespace().nth(2) == Some(selector))
        .unwrap_or_else(|| panic!("no row for {selector}:\n{output}"))
}

fn selector_of(sent: &common::Sent) -> String {
    let (_, value) = &sent.inserted[0];
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim() == "s")
        .map(|(_, s)| s.trim().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rotates_checks_runs_and_rolls_back_with_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate(KeyKind::Ed25519).unwrap();
    write_key_files(&dir.path().join("keys"), "example.com", "s1", &first).unwrap();
    let record = first.key.dns_record();
    let bind = Bind::start(&[(
        "example.com",
        &[format!("s1._domainkey 1 IN TXT \"{record}\"")],
    )]);
    let socket = dir.path().join("milter.sock");
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"unix:{socket}\"\n[keys]\ndirectory = \"{keys}\"\n\
             [domain.\"example.com\"]\nselector = \"s1\"\n\
             [rotation]\ndomains = [\"example.com\"]\nstate_directory = \"{state}\"\nselector = \"k{{counter}}\"\n\
             dns_servers = [\"{server}\"]\ncheck_interval = \"1h\"\nactivate_after = \"0s\"\nconfirmations = 1\n\
             [rotation.dns_update]\nserver = \"{server}\"\ntsig_key_file = \"{tsig}\"\nttl = \"60s\"\n",
            socket = socket.display(),
            keys = dir.path().join("keys").display(),
            state = dir.path().join("state").display(),
            server = bind.addr,
            tsig = bind.tsig_key_file.display(),
        ),
    )
    .unwrap();

    let out = signet(&config, &["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        row(&text(&out), "s1").contains("not rotated yet"),
        "{}",
        text(&out)
    );

    let out = signet(&config, &["rotate", "--now", "--domain", "example.com"]);
    let said = text(&out);
    println!("$ signet-milter rotate --now --domain example.com\n{said}");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("new key k1 pending (requested)"), "{said}");
    assert!(
        said.contains("updated k1._domainkey.example.com TXT"),
        "{said}"
    );
    assert!(
        said.contains("key k1 active: its record was served by every server on 1 look in a row"),
        "{said}"
    );
    assert!(row(&said, "k1").contains("active"), "{said}");
    assert!(row(&said, "s1").contains("retiring"), "{said}");

    let out = signet(
        &config,
        &["check", "--dns", "--dns-server", &bind.addr.to_string()],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("k1._domainkey.example.com"),
        "the active selector is checked: {said}"
    );
    assert!(!said.contains("s1._domainkey.example.com"), "{said}");
    let zone = std::fs::read_to_string(dir.path().join("state/example.com/records.zone")).unwrap();
    assert!(
        zone.contains("; active key k1\nk1._domainkey.example.com. IN TXT"),
        "{zone}"
    );
    assert!(
        zone.contains("; retiring key s1\ns1._domainkey.example.com. IN TXT"),
        "{zone}"
    );

    // The daemon signs with k1 from its first message.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = common::mta_connection(&socket).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selector_of(&sent), "k1");
    let (ok, report) = verify_opendkim_at(&message.delivered(&sent.inserted), bind.addr);
    assert!(ok, "{report}");

    // Undo while it runs: s1's record is still published, so it may sign again.
    let out = signet(
        &config,
        &["rotate", "--rollback", "--domain", "example.com"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("s1 active again, k1 retiring"),
        "{}",
        text(&out)
    );
    let mut selector = String::new();
    for _ in 0..100 {
        selector = selector_of(&send(&mut conn, &[], &message).await);
        if selector == "s1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(selector, "s1", "the running milter follows the rollback");
    let sent = send(&mut conn, &[], &message).await;
    let (ok, report) = verify_opendkim_at(&message.delivered(&sent.inserted), bind.addr);
    assert!(ok, "{report}");

    // SAFETY: kill(2) of the daemon we started.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}

/// A rotation state that cannot be read at startup (here a damaged state file; in production
/// most often a Vault that does not answer) does not keep the milter from serving: the socket
/// is bound, other domains sign, the rotated signature gets its on_error (which selector DNS
/// serves is unknown, so no key is used), and once a round can read the state it signs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_rotation_state_at_startup_tempfails_only_that_signature() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    for (domain, selector) in [("example.com", "s1"), ("example.org", "o1")] {
        write_key_files(
            &keys,
            domain,
            selector,
            &generate(KeyKind::Ed25519).unwrap(),
        )
        .unwrap();
    }
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("example.com")).unwrap();
    let damaged = state.join("example.com/domain.json");
    std::fs::write(&damaged, "{ not json").unwrap();
    let socket = dir.path().join("milter.sock");
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"unix:{socket}\"\n[keys]\ndirectory = \"{keys}\"\n\
             [domain.\"example.com\"]\nselector = \"s1\"\n[domain.\"example.org\"]\nselector = \"o1\"\n\
             [rotation]\ndomains = [\"example.com\"]\nstate_directory = \"{state}\"\n\
             dns_servers = [\"127.0.0.1:9\"]\ncheck_interval = \"1s\"\n",
            socket = socket.display(),
            keys = keys.display(),
            state = state.display(),
        ),
    )
    .unwrap();
    let mut daemon = common::daemon::Daemon::start(&config);
    daemon.expect_log("signet-milter listening");
    let mut conn = common::mta_connection(&socket).await;
    let other = send(&mut conn, &[], &Message::simple("bob@example.org")).await;
    assert_eq!(other.inserted.len(), 1, "another domain signs");
    let rotated = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert!(
        matches!(rotated.status, indymilter_test::Status::Tempfail { .. }),
        "{:?}",
        rotated.status
    );
    assert!(rotated.inserted.is_empty());
    daemon.expect_log("its key rotation state could not be read yet");

    // Repaired (here: the damaged file moved away, so the rotation starts afresh with s1).
    std::fs::remove_file(&damaged).unwrap();
    let mut signed = None;
    for _ in 0..100 {
        let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
        if !sent.inserted.is_empty() {
            signed = Some(sent);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signed = signed.expect("the rotated domain signs once its state can be read");
    assert_eq!(selector_of(&signed), "s1");
    drop(conn);
    daemon.signal(libc::SIGTERM);
    let _ = daemon.child.wait();
}
