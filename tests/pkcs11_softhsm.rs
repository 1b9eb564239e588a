//! Keys that never leave a PKCS#11 token: SoftHSM2 initialised by the test in a temporary
//! token directory (`SOFTHSM2_CONF`), an RSA-2048 key imported with softhsm2-util and an
//! Ed25519 key generated in the token by `signet-milter keygen --pkcs11-key`; mail signed
//! through the milter over the milter protocol and verified by mail-auth, dkimpy and
//! libopendkim. A token logged out or unplugged (deleted) while the milter runs, a wrong PIN,
//! an unknown key: each gives a new session or the configured on_error, never the PIN.

mod common;

use common::softhsm::{MODULE, SoftHsm, USER_PIN, softhsm};
use common::{
    Message, TestMilter, assert_verifies_everywhere, loopback, publish, send, signature_shape,
};
use indymilter_test::Status;
use signet_milter::keys::generate::{KeyKind, generate};
use std::path::Path;

/// Every token of this file, made before the module is loaded in this process: `dual` (an
/// imported RSA key, an Ed25519 key made by `keygen`), and `logout`, `unplug` and `wrongpin`
/// with an imported RSA key `rsa` each. The DNS records are kept beside the tokens.
fn prepare(hsm: &SoftHsm) {
    for token in ["dual", "logout", "unplug", "wrongpin"] {
        hsm.init_token(token);
        let key = generate(KeyKind::Rsa2048).unwrap();
        let label = if token == "dual" {
            "example.com-rsa"
        } else {
            "rsa"
        };
        hsm.import(token, label, "01", &key.private_pem());
        std::fs::write(hsm.path(&format!("{token}-rsa.dns")), key.key.dns_record()).unwrap();
    }
}

fn hsm() -> &'static SoftHsm {
    softhsm(prepare)
}

/// The DNS record of the RSA key imported into `token`.
fn rsa_record(token: &str) -> String {
    std::fs::read_to_string(hsm().path(&format!("{token}-rsa.dns"))).unwrap()
}

/// `[pkcs11]` for `token`, with the PIN file given.
fn pkcs11_section(token: &str, pin_file: &Path) -> String {
    format!(
        "[pkcs11]\nmodule = \"{MODULE}\"\ntoken = \"{token}\"\npin_file = \"{}\"\nmax_sessions = 2\n",
        pin_file.display()
    )
}

fn rsa_table(token: &str, pin_file: &Path, on_error: &str) -> String {
    format!(
        "{}\n[domain.\"example.com\"]\nselector = \"rsa\"\non_error = \"{on_error}\"\nkey = {{ pkcs11_key = \"{{selector}}\" }}\n",
        pkcs11_section(token, pin_file)
    )
}

/// Runs the real binary with the test's SoftHSM configuration.
fn signet(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SOFTHSM2_CONF", &hsm().conf)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An RSA key imported into the token and an Ed25519 key generated in it by `keygen`: the
/// dual-signed message verifies with all three verifiers, and `check` shows both keys with
/// their sizes and the no-stale-fallback note.
#[tokio::test]
async fn rsa_imported_and_ed25519_generated_in_the_token_sign_mail() {
    let hsm = hsm();
    let token = "dual";
    let pin = hsm.pin_file("dual.pin", USER_PIN);
    let table = format!(
        r#"{}
[domain."example.com"]
selector = "rsa"
key = {{ pkcs11_key = "{{domain}}-{{selector}}" }}
additional_signatures = ["ed"]
[signature."ed"]
domain = "{{domain}}"
selector = "ed"
key = {{ pkcs11_key = "{{domain}}-{{selector}}" }}
header_canonicalization = "simple"
body_canonicalization = "simple"
"#,
        pkcs11_section(token, &pin)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(&config, &table).unwrap();
    let (ok, stdout, stderr) = signet(
        &config,
        &[
            "keygen",
            "--algo",
            "ed25519",
            "--domain",
            "example.com",
            "--selector",
            "ed",
            "--pkcs11-key",
            "example.com-ed",
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains(USER_PIN) && !stderr.contains(USER_PIN));
    let ed_record: String = stdout.split('"').skip(1).step_by(2).collect();
    assert!(ed_record.starts_with("v=DKIM1; k=ed25519; p="), "{stdout}");
    let (again, _, stderr) = signet(
        &config,
        &[
            "keygen",
            "--algo",
            "ed25519",
            "--domain",
            "example.com",
            "--selector",
            "ed",
            "--pkcs11-key",
            "example.com-ed",
        ],
    );
    assert!(!again && stderr.contains("already has a key"), "{stderr}");

    let (ok, stdout, stderr) = signet(&config, &["check"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("rsa-2048"), "{stdout}");
    assert!(
        stdout.contains("pkcs11 token dual key example.com-rsa"),
        "{stdout}"
    );
    assert!(stdout.contains("no stale-key fallback"), "{stdout}");

    let milter = TestMilter::start(&[], "", &table).await;
    publish(&milter.keys_dir(), "example.com", "rsa", &rsa_record(token));
    publish(&milter.keys_dir(), "example.com", "ed", &ed_record);
    let mut conn = milter.connect(loopback()).await;
    for n in 0..3 {
        let message = Message::simple(&format!("u{n}@example.com"));
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Continue);
        assert_eq!(sent.inserted.len(), 2);
        assert_verifies_everywhere(
            &message.delivered(&sent.inserted),
            &milter.keys_dir(),
            &[("example.com", "rsa"), ("example.com", "ed")],
        )
        .await;
    }

    // Same tags and folding as a file key of the same size.
    let file_milter = TestMilter::start(
        &[
            ("example.com", "rsa", KeyKind::Rsa2048),
            ("example.com", "ed", KeyKind::Ed25519),
        ],
        "",
        r#"
[domain."example.com"]
selector = "rsa"
additional_signatures = ["ed"]
[signature."ed"]
domain = "{domain}"
selector = "ed"
header_canonicalization = "simple"
body_canonicalization = "simple"
"#,
    )
    .await;
    let message = Message::simple("shape@example.com");
    let from_token = send(&mut conn, &[], &message).await.inserted;
    let mut file_conn = file_milter.connect(loopback()).await;
    let from_file = send(&mut file_conn, &[], &message).await.inserted;
    for (token_sig, file_sig) in from_token.iter().zip(&from_file) {
        assert_eq!(signature_shape(&token_sig.1), signature_shape(&file_sig.1));
    }
    file_milter.stop().await;
    milter.stop().await;
}

/// Someone logs the token out under the milter (PKCS#11 login state is per process and
/// token): the next signature fails with CKR_USER_NOT_LOGGED_IN, the milter opens a new
/// session, logs in again and signs. With the PIN file then wrong, the message gets on_error
/// and the reply names no PIN.
#[tokio::test]
async fn a_logged_out_token_is_logged_in_again() {
    let hsm = hsm();
    let token = "logout";
    let record = rsa_record(token);
    let pin = hsm.pin_file("logout.pin", USER_PIN);
    let milter = TestMilter::start(&[], "", &rsa_table(token, &pin, "tempfail")).await;
    publish(&milter.keys_dir(), "example.com", "rsa", &record);
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    assert_eq!(
        send(&mut conn, &[], &message).await.status,
        Status::Continue
    );

    logout(token);
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue, "signed after a new login");
    assert_verifies_everywhere(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "rsa")],
    )
    .await;

    hsm.pin_file("logout.pin", "000000");
    logout(token);
    let sent = send(&mut conn, &[], &message).await;
    let Status::Tempfail {
        message: Some(reply),
    } = sent.status
    else {
        panic!("expected a tempfail, got {:?}", sent.status);
    };
    let reply = reply.into_string().unwrap();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(reply.contains("signing service unavailable"), "{reply}");
    assert!(
        !reply.contains(USER_PIN) && !reply.contains("000000"),
        "{reply}"
    );
    milter.stop().await;
}

/// Logs the token out as another part of this process would (through the shared module).
fn logout(token: &str) {
    let module = signet_milter::keys::pkcs11::module(Path::new(MODULE)).unwrap();
    module.with_context(|context| {
        let slot = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                context
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == token)
            })
            .unwrap();
        let session = context.open_ro_session(slot).unwrap();
        session.logout().unwrap();
    });
}

/// The token is unplugged (its directory taken away) while the milter runs: every message gets
/// on_error at the end of the message, on every connection. Plugged back in, signing resumes
/// without a restart: the milter initialises the module again (SoftHSM2 lists its tokens only
/// then), at most once per `REINITIALIZE_INTERVAL`.
#[tokio::test]
async fn an_unplugged_token_gets_on_error_and_signing_resumes_when_it_is_back() {
    let hsm = hsm();
    let token = "unplug";
    let pin = hsm.pin_file("unplug.pin", USER_PIN);
    let milter = TestMilter::start(&[], "", &rsa_table(token, &pin, "tempfail")).await;
    publish(&milter.keys_dir(), "example.com", "rsa", &rsa_record(token));
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    assert_eq!(
        send(&mut conn, &[], &message).await.status,
        Status::Continue
    );

    let unplugged = hsm.unplug(token);
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(
        sent.stopped_at, None,
        "the key was cached: refused at the end"
    );
    assert!(
        matches!(sent.status, Status::Tempfail { .. }),
        "{:?}",
        sent.status
    );

    // Every message while it is away gets on_error; none is signed, no session breaks.
    let sent = send(&mut conn, &[], &message).await;
    assert!(
        matches!(sent.status, Status::Tempfail { .. }),
        "{:?}",
        sent.status
    );
    assert!(sent.inserted.is_empty());
    let mut other = milter.connect(loopback()).await;
    let sent = send(&mut other, &[], &message).await;
    assert!(
        matches!(sent.status, Status::Tempfail { .. }),
        "{:?}",
        sent.status
    );
    hsm.plug_in(unplugged);
    // The event waited for: the first message signed again. Each try is a real message; the
    // module is initialised again at most once a second, so this takes one to two seconds.
    let mut tries = 0;
    let sent = loop {
        tries += 1;
        let sent = send(&mut conn, &[], &message).await;
        if sent.status == Status::Continue || tries == 100 {
            break sent;
        }
        tokio::time::sleep(signet_milter::keys::pkcs11::REINITIALIZE_INTERVAL / 4).await;
    };
    assert_eq!(
        sent.status,
        Status::Continue,
        "signing resumed after {tries} tries"
    );
    assert_verifies_everywhere(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "rsa")],
    )
    .await;
    milter.stop().await;
}

/// A wrong PIN from the start and an unknown key label: the message gets on_error at the end
/// of the headers, and `check` says why without showing the PIN.
#[tokio::test]
async fn a_wrong_pin_or_an_unknown_key_gets_on_error() {
    let hsm = hsm();
    let token = "wrongpin";
    let bad_pin = hsm.pin_file("wrongpin.pin", "999999");
    let milter = TestMilter::start(&[], "", &rsa_table(token, &bad_pin, "reject")).await;
    let mut conn = milter.connect(loopback()).await;
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.stopped_at, Some("eoh"));
    let Status::Reject {
        message: Some(reply),
    } = sent.status
    else {
        panic!("expected a reject, got {:?}", sent.status);
    };
    assert!(reply.to_str().unwrap().starts_with("550 5.7.0"));
    milter.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, rsa_table(token, &bad_pin, "tempfail")).unwrap();
    let (ok, stdout, stderr) = signet(&config, &["check"]);
    assert!(!ok);
    assert!(
        stdout.contains("login to token \"wrongpin\" failed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("999999") && !stderr.contains("999999"),
        "{stdout}{stderr}"
    );

    let good_pin = hsm.pin_file("wrongpin-good.pin", USER_PIN);
    let table = format!(
        "{}\n[domain.\"example.com\"]\nselector = \"rsa\"\nkey = {{ pkcs11_key = \"missing\" }}\n",
        pkcs11_section(token, &good_pin)
    );
    let milter = TestMilter::start(&[], "", &table).await;
    let mut conn = milter.connect(loopback()).await;
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.stopped_at, Some("eoh"));
    assert!(matches!(sent.status, Status::Tempfail { .. }));
    milter.stop().await;
    std::fs::write(&config, &table).unwrap();
    let (ok, stdout, _) = signet(&config, &["check"]);
    assert!(!ok);
    assert!(
        stdout.contains("token \"wrongpin\" has no private key labelled \"missing\""),
        "{stdout}"
    );
}

/// A PKCS#11 source that leaves the module (or token, or PIN file) unset with no `[pkcs11]`
/// default is refused at load, with the entry's line.
#[test]
fn a_pkcs11_source_without_its_settings_is_refused_with_its_line() {
    let text = "[milter]\n\n[domain.\"example.com\"]\nselector = \"s\"\nkey = { pkcs11_key = \"k\", pkcs11_token = \"t\" }\n";
    let err = signet_milter::config::Config::parse(text, Path::new("/etc/s.toml")).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("/etc/s.toml:3:"), "{shown}");
    assert!(
        shown.contains("pkcs11_module is set neither here nor as [pkcs11] module"),
        "{shown}"
    );
    let text = "[pkcs11]\nmax_sessions = 0\n";
    let shown = signet_milter::config::Config::parse(text, Path::new("/etc/s.toml"))
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with("/etc/s.toml:2:"), "{shown}");
}
