//! Keys that never leave OpenBao: a real OpenBao dev server with the Transit engine and a file
//! audit device, RSA-2048 and Ed25519 keys created in Transit, and mail signed through the
//! milter over the milter protocol. The verifiers (mail-auth, dkimpy, libopendkim) get the
//! public keys as OpenBao itself reports them (`bao read transit/keys/NAME`). The audit log
//! shows sign calls and no export or backup. Every failure (OpenBao down, sealed, 403, an
//! unknown key) gives the configured on_error with a reply that names no token.

mod common;

use common::dns::{Named, Zone};
use common::openbao::{OpenBao, ROOT_TOKEN};
use common::{
    Message, TestMilter, assert_verifies_everywhere, loopback, publish, send, signature_shape,
};
use indymilter_test::Status;
use signet_milter::config::Config;
use signet_milter::config::keysource::{ResolvedKeySource, TransitSource};
use signet_milter::keys::generate::KeyKind;
use signet_milter::keys::{Custody, KeyError};
use signet_milter::runtime::Runtime;
use std::path::{Path, PathBuf};

/// OpenBao with Transit at `transit/` and every request written to an audit log.
struct Transit {
    bao: OpenBao,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Transit {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.log");
        let bao = OpenBao::start_audited(&audit)?;
        bao.cli(&["secrets", "enable", "transit"]);
        Some(Transit {
            bao,
            audit,
            _dir: dir,
        })
    }

    /// Creates `name` of `key_type` and returns the DNS record of its public key, made from
    /// OpenBao's own answer.
    fn create_key(&self, name: &str, key_type: &str) -> String {
        self.bao.cli(&[
            "write",
            "-f",
            &format!("transit/keys/{name}"),
            &format!("type={key_type}"),
        ]);
        self.record(name)
    }

    fn record(&self, name: &str) -> String {
        let out = self
            .bao
            .cli(&["read", "-format=json", &format!("transit/keys/{name}")]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let data = &json["data"];
        let latest = data["latest_version"].as_u64().unwrap().to_string();
        let public = data["keys"][&latest]["public_key"].as_str().unwrap();
        match data["type"].as_str().unwrap() {
            "ed25519" => format!("v=DKIM1; k=ed25519; p={public}"),
            _ => {
                let body: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
                format!("v=DKIM1; k=rsa; p={body}")
            }
        }
    }

    /// `(operation, path)` of every request in the audit log.
    fn audited_requests(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry["type"] == "request")
            .map(|entry| {
                (
                    entry["request"]["operation"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    entry["request"]["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn vault_section(&self, extra: &str) -> String {
        format!(
            "[vault]\naddress = \"{}\"\ntoken = \"{ROOT_TOKEN}\"\n{extra}\n",
            self.bao.addr
        )
    }
}

/// example.com signed with `rsa` and `ed` from Transit.
fn dual_table(transit: &Transit, vault_extra: &str) -> String {
    format!(
        r#"{}
[domain."example.com"]
selector = "rsa"
key = {{ transit_mount = "transit", transit_key = "dkim-{{domain}}-{{selector}}" }}
additional_signatures = ["ed"]
[signature."ed"]
domain = "{{domain}}"
selector = "ed"
key = {{ transit_key = "dkim-{{domain}}-{{selector}}" }}
header_canonicalization = "simple"
body_canonicalization = "simple"
"#,
        transit.vault_section(vault_extra)
    )
}

fn publish_dual(transit: &Transit, keys: &Path) {
    let rsa = transit.create_key("dkim-example.com-rsa", "rsa-2048");
    let ed = transit.create_key("dkim-example.com-ed", "ed25519");
    publish(keys, "example.com", "rsa", &rsa);
    publish(keys, "example.com", "ed", &ed);
}

#[tokio::test]
async fn dual_signed_mail_verifies_and_openbao_only_signs() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let milter = TestMilter::start(&[], "", &dual_table(&transit, "")).await;
    publish_dual(&transit, &milter.keys_dir());

    let mut conn = milter.connect(loopback()).await;
    for n in 0..3 {
        let message = Message::simple(&format!("user{n}@example.com"));
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Continue);
        assert_eq!(sent.inserted.len(), 2);
        let raw = message.delivered(&sent.inserted);
        assert_verifies_everywhere(
            &raw,
            &milter.keys_dir(),
            &[("example.com", "rsa"), ("example.com", "ed")],
        )
        .await;
    }

    let requests = transit.audited_requests();
    let signs = |name: &str| {
        requests
            .iter()
            .filter(|(op, path)| op == "update" && path == &format!("transit/sign/{name}"))
            .count()
    };
    assert_eq!(signs("dkim-example.com-rsa"), 3, "{requests:?}");
    assert_eq!(signs("dkim-example.com-ed"), 3, "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|(op, path)| op == "read" && path == "transit/keys/dkim-example.com-rsa"),
        "the public key is read: {requests:?}"
    );
    let ours: Vec<_> = requests
        .iter()
        .filter(|(_, path)| path.starts_with("transit/"))
        .collect();
    assert!(
        ours.iter().all(|(op, path)| {
            (op == "update" && path.starts_with("transit/sign/"))
                || (op == "read" && path.starts_with("transit/keys/"))
                || (op == "update" && path.starts_with("transit/keys/"))
        }),
        "nothing but key reads, key creation (the test's) and signing: {ours:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|(_, path)| path.contains("/export/") || path.contains("/backup/")),
        "no export: {requests:?}"
    );
    milter.stop().await;
}

/// A Transit signature has exactly the tags and folding of a file-key signature of the same
/// domain, selector, algorithm and key size.
#[tokio::test]
async fn transit_signatures_have_the_shape_of_file_key_signatures() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let file_table = r#"
[domain."example.com"]
selector = "rsa"
additional_signatures = ["ed"]
[signature."ed"]
domain = "{domain}"
selector = "ed"
header_canonicalization = "simple"
body_canonicalization = "simple"
"#;
    let file_milter = TestMilter::start(
        &[
            ("example.com", "rsa", KeyKind::Rsa2048),
            ("example.com", "ed", KeyKind::Ed25519),
        ],
        "",
        file_table,
    )
    .await;
    let transit_milter = TestMilter::start(&[], "", &dual_table(&transit, "")).await;
    publish_dual(&transit, &transit_milter.keys_dir());

    let message = Message::simple("alice@example.com");
    let mut file_conn = file_milter.connect(loopback()).await;
    let from_file = send(&mut file_conn, &[], &message).await.inserted;
    let mut transit_conn = transit_milter.connect(loopback()).await;
    let from_transit = send(&mut transit_conn, &[], &message).await.inserted;
    assert_eq!(from_file.len(), 2);
    assert_eq!(from_transit.len(), 2);
    for (file, remote) in from_file.iter().zip(&from_transit) {
        assert_eq!(file.0, remote.0);
        assert_eq!(
            signature_shape(&file.1),
            signature_shape(&remote.1),
            "\nfile:    {}\ntransit: {}",
            file.1,
            remote.1
        );
    }
    file_milter.stop().await;
    transit_milter.stop().await;
}

/// Concurrent messages share round trips: with batching, the messages of 8 connections make
/// fewer sign requests than signatures; every signature still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_share_transit_requests() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let milter = TestMilter::start(&[], "", &dual_table(&transit, "")).await;
    publish_dual(&transit, &milter.keys_dir());
    let keys = milter.keys_dir();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let mut conn = milter.connect(loopback()).await;
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..5 {
                let message = Message::simple(&format!("c{c}n{n}@example.com"));
                let sent = send(&mut conn, &[], &message).await;
                assert_eq!(sent.status, Status::Continue);
                let raw = message.delivered(&sent.inserted);
                let results = common::verify_mail_auth(&raw, &keys).await;
                assert_eq!(results.len(), 2);
                assert!(results.iter().all(|r| r.2), "{results:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let requests = transit.audited_requests();
    let sign_requests = requests
        .iter()
        .filter(|(_, path)| path.starts_with("transit/sign/"))
        .count();
    // 40 messages × 2 signatures. Each request carries what arrived during the previous one;
    // it cannot be more requests than signatures, and it is equal only if no two ever overlap.
    assert!(sign_requests <= 80, "{sign_requests}");
    eprintln!("80 signatures in {sign_requests} Transit requests");
    milter.stop().await;
}

/// What the MTA gets back, and the milter's log text, for a message whose key fails.
async fn refused(milter: &TestMilter) -> (Option<&'static str>, String) {
    let mut conn = milter.connect(loopback()).await;
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    match sent.status {
        Status::Tempfail {
            message: Some(reply),
        } => (sent.stopped_at, reply.into_string().unwrap()),
        Status::Reject {
            message: Some(reply),
        } => (sent.stopped_at, reply.into_string().unwrap()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn transit_source(key: &str) -> ResolvedKeySource {
    ResolvedKeySource::Transit(TransitSource {
        mount: "transit".into(),
        key: key.into(),
        version: None,
        address: None,
        token: None,
    })
}

fn rsa_only_table(transit: &Transit, vault_extra: &str, key: &str, on_error: &str) -> String {
    format!(
        "{}\n[domain.\"example.com\"]\nselector = \"rsa\"\non_error = \"{on_error}\"\nkey = {{ transit_key = \"{key}\" }}\n",
        transit.vault_section(vault_extra)
    )
}

#[tokio::test]
async fn an_unknown_transit_key_gets_on_error_at_the_end_of_headers() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let milter = TestMilter::start(
        &[],
        "",
        &rsa_only_table(&transit, "", "no-such-key", "tempfail"),
    )
    .await;
    let (stage, reply) = refused(&milter).await;
    assert_eq!(stage, Some("eoh"));
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(reply.contains("signing key unavailable"), "{reply}");
    assert!(
        !reply.contains(ROOT_TOKEN) && !reply.contains("transit"),
        "{reply}"
    );
    let error = milter
        .runtime
        .load()
        .keys
        .get(&transit_source("no-such-key"))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, KeyError::Transit { .. }), "{text}");
    assert!(text.contains("no such Transit key"), "{text}");
    assert!(!text.contains(ROOT_TOKEN), "{text}");
    milter.stop().await;
}

/// A token whose policy may read the key but not sign: the key resolves, signing gets 403,
/// and `on_error = reject` refuses the message with 550 at the end of the message.
#[tokio::test]
async fn a_token_without_sign_permission_gets_on_error_at_the_end_of_the_message() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let record = transit.create_key("dkim-rsa", "rsa-2048");
    transit.bao.cli_stdin(
        &["policy", "write", "read-only-dkim", "-"],
        "path \"transit/keys/dkim-rsa\" { capabilities = [\"read\"] }\n",
    );
    let token = transit
        .bao
        .cli(&["token", "create", "-policy=read-only-dkim", "-field=token"])
        .trim()
        .to_string();
    let vault = format!(
        "[vault]\naddress = \"{}\"\ntoken = \"{token}\"\n",
        transit.bao.addr
    );
    let table = format!(
        "{vault}\n[domain.\"example.com\"]\nselector = \"rsa\"\non_error = \"reject\"\nkey = {{ transit_key = \"dkim-rsa\" }}\n"
    );
    let milter = TestMilter::start(&[], "", &table).await;
    publish(&milter.keys_dir(), "example.com", "rsa", &record);
    let (stage, reply) = refused(&milter).await;
    assert_eq!(stage, None, "refused at the end of the message");
    assert!(reply.starts_with("550 5.7.0"), "{reply}");
    assert!(reply.contains("signing service unavailable"), "{reply}");
    assert!(!reply.contains(&token), "{reply}");
    milter.stop().await;
}

/// The key is cached (public half read); then OpenBao is sealed, then stopped. Each time the
/// signature cannot be made and the message gets on_error: nothing to fall back on.
#[tokio::test]
async fn sealed_or_stopped_openbao_gets_on_error_for_a_cached_key() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let record = transit.create_key("dkim-rsa", "rsa-2048");
    let milter = TestMilter::start(
        &[],
        "",
        &rsa_only_table(&transit, "timeout = \"2s\"", "dkim-rsa", "tempfail"),
    )
    .await;
    publish(&milter.keys_dir(), "example.com", "rsa", &record);
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    assert_verifies_everywhere(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "rsa")],
    )
    .await;
    let key = milter
        .runtime
        .load()
        .keys
        .get(&transit_source("dkim-rsa"))
        .await
        .unwrap();
    assert_eq!(key.custody(), Custody::Transit);
    assert_eq!(key.describe(), "rsa-2048");

    transit.bao.cli(&["operator", "seal"]);
    let (stage, reply) = refused(&milter).await;
    assert_eq!(
        stage, None,
        "the key was cached: refused at the end of the message"
    );
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(reply.contains("signing service unavailable"), "{reply}");

    drop(transit);
    let (stage, reply) = refused(&milter).await;
    assert_eq!(stage, None);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    milter.stop().await;
}

/// `on_error = accept`: with OpenBao sealed the message goes on unsigned, as configured.
#[tokio::test]
async fn on_error_accept_lets_the_message_pass_unsigned() {
    let Some(transit) = Transit::start() else {
        return;
    };
    transit.create_key("dkim-rsa", "rsa-2048");
    let milter =
        TestMilter::start(&[], "", &rsa_only_table(&transit, "", "dkim-rsa", "accept")).await;
    transit.bao.cli(&["operator", "seal"]);
    let mut conn = milter.connect(loopback()).await;
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert!(
        matches!(sent.status, Status::Accept | Status::Continue),
        "{:?}",
        sent.status
    );
    assert!(sent.inserted.is_empty());
    milter.stop().await;
}

/// `check` reports algorithm and size from Transit, and says there is no stale fallback;
/// `keygen --transit-key` creates a key in Transit and prints its DNS record.
#[tokio::test]
async fn check_and_keygen_know_transit_keys() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[domain.\"example.com\"]\nselector = \"ed\"\nkey = {{ transit_key = \"made-by-keygen\" }}\n",
            transit.vault_section("")
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_signet-milter");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, _) = run(&["check"]);
    assert!(!ok, "the key does not exist yet: {stdout}");
    assert!(stdout.contains("no such Transit key"), "{stdout}");

    let (ok, stdout, stderr) = run(&[
        "keygen",
        "--algo",
        "ed25519",
        "--domain",
        "example.com",
        "--selector",
        "ed",
        "--transit-key",
        "made-by-keygen",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let record = transit.record("made-by-keygen");
    assert!(
        stdout.starts_with("ed._domainkey.example.com. IN TXT ( \"v=DKIM1; k=ed25519; p="),
        "{stdout}"
    );
    let printed: String = stdout.split('"').skip(1).step_by(2).collect();
    assert_eq!(printed, record);
    assert!(
        stderr.contains("transit_key = \"made-by-keygen\""),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "keygen",
        "--algo",
        "ed25519",
        "--domain",
        "example.com",
        "--selector",
        "ed",
        "--transit-key",
        "made-by-keygen",
    ]);
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");
    let exported = transit
        .bao
        .cli(&["read", "-format=json", "transit/keys/made-by-keygen"]);
    let json: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(json["data"]["exportable"], false);

    let (ok, stdout, _) = run(&["check"]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("ed25519"), "{stdout}");
    assert!(
        stdout.contains("transit transit/keys/made-by-keygen"),
        "{stdout}"
    );
    assert!(stdout.contains("no stale-key fallback"), "{stdout}");
}

/// The runtime can be built from a config with Transit sources without OpenBao answering:
/// loading never contacts it.
#[test]
fn transit_sources_load_without_a_server() {
    let config = Config::parse(
        "[vault]\naddress = \"http://127.0.0.1:1\"\ntoken = \"t\"\ntransit_batch_size = 8\n\
         [domain.\"example.com\"]\nselector = \"s\"\nkey = { transit_key = \"k\", transit_key_version = 3 }\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let _ = Runtime::new(config);
}

/// `check --dns` compares what DNS publishes (a real authoritative server) with the public
/// keys Transit reports: both keys match, an old record left at a third selector does not.
#[test]
fn check_dns_compares_dns_with_the_public_keys_in_transit() {
    let Some(transit) = Transit::start() else {
        return;
    };
    let rsa = transit.create_key("dkim-rsa", "rsa-2048");
    let ed = transit.create_key("dkim-ed", "ed25519");
    transit.create_key("dkim-rotated", "ed25519");
    let named = Named::builder()
        .zone(
            Zone::new("example.com")
                .txt("rsa._domainkey", &rsa)
                .txt("ed._domainkey", &ed)
                .txt("rotated._domainkey", &ed),
        )
        .start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            r#"{}
[domain."example.com"]
selector = "rsa"
key = {{ transit_key = "dkim-{{selector}}" }}
additional_signatures = ["ed", "rotated"]
[signature."ed"]
domain = "example.com"
selector = "ed"
key = {{ transit_key = "dkim-{{selector}}" }}
[signature."rotated"]
domain = "example.com"
selector = "rotated"
key = {{ transit_key = "dkim-{{selector}}" }}
"#,
            transit.vault_section("")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .arg("--config")
        .arg(&config)
        .args(["check", "--dns", "--dns-server"])
        .arg(named.addr().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the rotated selector is wrong: {stdout}"
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{stdout}"))
            .to_string()
    };
    assert!(
        line("rsa._domainkey.example.com").contains("ok (TXT in 2 strings)"),
        "{stdout}"
    );
    assert!(
        line("ed._domainkey.example.com").ends_with(" ok"),
        "{stdout}"
    );
    assert!(
        line("rotated._domainkey.example.com").contains("MISMATCH"),
        "{stdout}"
    );
    let want = transit.record("dkim-rotated");
    assert!(
        stdout.contains(&want[..60]),
        "the record to publish is printed:\n{stdout}"
    );
}
