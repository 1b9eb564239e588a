//! Vault faults a real server does not produce on demand, from a fault-injecting server that
//! speaks Vault's exact JSON envelope: slow answers, garbage, dropped connections, refused
//! connections. And, through the milter: single flight under 1,000 concurrent messages, and an
//! outage under load (stale keys sign, cold keys tempfail, nothing goes out unsigned).

mod common;

use common::fake_vault::{Behaviour, FakeVault};
use common::{Message, TestMilter, loopback, remote_key, send, verify_mail_auth};
use indymilter_test::Status;
use signet_milter::config::Config;
use signet_milter::config::keysource::{ResolvedKeySource, VaultSource};
use signet_milter::keys::KeyError;
use signet_milter::keys::generate::KeyKind;
use signet_milter::metrics::{Lookup, MessageResult};
use signet_milter::runtime::Runtime;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "s.fake-token-value";

fn source(path: &str) -> ResolvedKeySource {
    ResolvedKeySource::Vault(VaultSource {
        mount: "secret".into(),
        path: path.into(),
        field: "key".into(),
        address: None,
        token: None,
        kv_version: None,
    })
}

/// A fresh runtime (no cached failures) reading from `vault`, with a 500 ms timeout.
async fn fetch_error(vault: &FakeVault, path: &str) -> (String, Duration) {
    let config = format!(
        "[vault]\naddress = \"{}\"\ntoken = \"{TOKEN}\"\ntimeout = \"500ms\"\n",
        vault.url()
    );
    let runtime = Runtime::new(Config::parse(&config, Path::new("t.toml")).unwrap());
    let started = Instant::now();
    let err = match runtime.keys.get(&source(path)).await {
        Err(e @ KeyError::Vault { .. }) => e.to_string(),
        Err(other) => panic!("not a Vault error: {other}"),
        Ok(_) => panic!("{path}: got a key"),
    };
    assert!(!err.contains(TOKEN), "the token never shows: {err}");
    (err, started.elapsed())
}

#[tokio::test]
async fn each_fault_is_a_distinct_clear_error_within_the_timeout() {
    let mut vault = FakeVault::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = remote_key(dir.path(), "example.com", "s1", KeyKind::Ed25519);
    vault.put("secret/dkim/example.com", "key", &pem);

    vault.behave(Behaviour::Slow(Duration::from_secs(3)));
    let (err, took) = fetch_error(&vault, "dkim/example.com").await;
    assert!(err.contains("no answer within 500ms"), "{err}");
    assert!(
        took < Duration::from_millis(1500),
        "bounded by the timeout: {took:?}"
    );

    vault.behave(Behaviour::Garbage);
    let (err, _) = fetch_error(&vault, "dkim/example.com").await;
    assert!(
        err.contains("not a Vault secret response (invalid JSON at line 1 column 1)"),
        "{err}"
    );
    assert!(
        !err.contains("BEGIN PRIVATE KEY"),
        "a response body never shows: {err}"
    );

    vault.behave(Behaviour::Drop);
    let (err, _) = fetch_error(&vault, "dkim/example.com").await;
    assert!(err.contains("cannot reach Vault"), "{err}");

    vault.behave(Behaviour::Status(503, r#"{"errors":["Vault is sealed"]}"#));
    let (err, _) = fetch_error(&vault, "dkim/example.com").await;
    assert!(err.contains("Vault is sealed"), "{err}");

    vault.behave(Behaviour::Status(
        403,
        r#"{"errors":["permission denied"]}"#,
    ));
    let (err, _) = fetch_error(&vault, "dkim/example.com").await;
    assert!(err.contains("permission denied (HTTP 403)"), "{err}");

    vault.behave(Behaviour::Status(500, r#"{"errors":["internal error"]}"#));
    let (err, _) = fetch_error(&vault, "dkim/example.com").await;
    assert!(
        err.contains("Vault answered HTTP 500: internal error"),
        "{err}"
    );

    vault.behave(Behaviour::Normal);
    let (err, _) = fetch_error(&vault, "dkim/missing.example").await;
    assert!(err.contains("no such secret (HTTP 404)"), "{err}");
    assert!(
        err.contains("secret/dkim/missing.example field key"),
        "names the secret: {err}"
    );

    vault.stop().await;
    let (err, took) = fetch_error(&vault, "dkim/example.com").await;
    assert!(err.contains("cannot reach Vault"), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(
        took < Duration::from_millis(500),
        "a refused connection fails fast: {took:?}"
    );
    assert!(vault.tokens_seen().iter().all(|t| t == TOKEN));
}

const VAULT_TABLE: &str = r#"
[domain."example.com"]
selector = "s1"
key = { vault_mount = "secret", vault_path = "dkim/{domain}" }
[domain."cold.example"]
selector = "s1"
key = { vault_mount = "secret", vault_path = "dkim/{domain}" }
"#;

/// A milter config reading keys from `vault`; the timeout is generous, as these tests are
/// about the cache, not about slow servers.
fn milter_config(vault: &FakeVault, cache: &str) -> String {
    format!(
        "[vault]\naddress = \"{}\"\ntoken = \"{TOKEN}\"\ntimeout = \"5s\"\n[cache]\n{cache}\n{VAULT_TABLE}",
        vault.url()
    )
}

/// One message from `author` on its own connection: (status, signatures inserted).
async fn one_message(
    milter: &TestMilter,
    author: &str,
) -> (Status, Vec<(String, String)>, Message) {
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple(author);
    let sent = send(&mut conn, &[], &message).await;
    (sent.status, sent.inserted, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_messages_for_a_cold_key_make_one_fetch() {
    let vault = FakeVault::start().await;
    // Slow enough that every message arrives while the one fetch is in flight.
    vault.behave(Behaviour::Slow(Duration::from_millis(400)));
    let milter = TestMilter::start(
        &[],
        "max_connections = 1100",
        &milter_config(&vault, "ttl = \"5m\""),
    )
    .await;
    let pem = remote_key(&milter.keys_dir(), "example.com", "s1", KeyKind::Ed25519);
    vault.put("secret/dkim/example.com", "key", &pem);

    let milter = Arc::new(milter);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let milter = milter.clone();
            tokio::spawn(async move { one_message(&milter, "Alice <alice@example.com>").await })
        })
        .collect();
    let mut signed = 0;
    for task in tasks {
        let (status, inserted, message) = task.await.unwrap();
        assert_eq!(status, Status::Continue);
        assert_eq!(inserted.len(), 1, "every message is signed");
        if signed < 20 {
            let verdicts =
                verify_mail_auth(&message.delivered(&inserted), &milter.keys_dir()).await;
            assert!(verdicts.iter().all(|(_, _, ok)| *ok), "{verdicts:?}");
        }
        signed += 1;
    }
    assert_eq!(signed, 1000);
    assert_eq!(vault.requests(), 1, "1,000 concurrent messages, one fetch");
}

#[derive(Default, Debug)]
struct Tally {
    signed: usize,
    tempfailed: usize,
}

/// `rounds` rounds of concurrent messages for both domains; panics on any message that is
/// accepted without a signature, or whose signature does not verify against `keys`.
async fn load(milter: &Arc<TestMilter>, keys: &Path, rounds: usize) -> (Tally, Tally) {
    let (mut warm, mut cold) = (Tally::default(), Tally::default());
    for _ in 0..rounds {
        let tasks: Vec<_> = ["Alice <alice@example.com>", "Carol <carol@cold.example>"]
            .iter()
            .cycle()
            .take(8)
            .map(|author| {
                let milter = milter.clone();
                tokio::spawn(async move {
                    (author.contains("cold"), one_message(&milter, author).await)
                })
            })
            .collect();
        for task in tasks {
            let (is_cold, (status, inserted, message)) = task.await.unwrap();
            let tally = if is_cold { &mut cold } else { &mut warm };
            match status {
                Status::Continue => {
                    assert_eq!(inserted.len(), 1, "accepted means signed");
                    let verdicts = verify_mail_auth(&message.delivered(&inserted), keys).await;
                    assert!(verdicts.iter().all(|(_, _, ok)| *ok), "{verdicts:?}");
                    tally.signed += 1;
                }
                Status::Tempfail { message } => {
                    let reply = message
                        .map(|m| m.into_string().unwrap())
                        .unwrap_or_default();
                    assert!(reply.starts_with("451 4.3.0"), "{reply}");
                    assert!(
                        !reply.contains("127.0.0.1"),
                        "no backend details in replies: {reply}"
                    );
                    tally.tempfailed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (warm, cold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_cached_keys_sign_cold_keys_tempfail_and_recovery_needs_no_restart() {
    let mut vault = FakeVault::start().await;
    let milter = TestMilter::start(
        &[],
        "",
        &milter_config(
            &vault,
            "ttl = \"1s\"\nnegative_ttl = \"1s\"\nserve_stale = \"1h\"",
        ),
    )
    .await;
    let keys = milter.keys_dir();
    let pem = remote_key(&keys, "example.com", "s1", KeyKind::Ed25519);
    vault.put("secret/dkim/example.com", "key", &pem);
    let cold_pem = remote_key(&keys, "cold.example", "s1", KeyKind::Ed25519);
    let milter = Arc::new(milter);

    // Before: example.com is signed once, so its key is cached; cold.example never was.
    let (status, inserted, _) = one_message(&milter, "Alice <alice@example.com>").await;
    assert_eq!(status, Status::Continue);
    assert_eq!(inserted.len(), 1);

    // The backend goes away, the cached key's ttl passes, and mail keeps coming.
    vault.stop().await;
    vault.put("secret/dkim/cold.example", "key", &cold_pem);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (warm, cold) = load(&milter, &keys, 30).await;
    assert_eq!(
        warm.tempfailed, 0,
        "a cached key keeps signing through the outage: {warm:?}"
    );
    assert_eq!(warm.signed, 120);
    assert_eq!(
        cold.signed, 0,
        "no key was ever fetched for cold.example: {cold:?}"
    );
    assert_eq!(
        cold.tempfailed, 120,
        "its mail is tempfailed, not sent unsigned"
    );
    let metrics = milter.runtime.load().env.metrics.clone();
    assert_eq!(metrics.messages(MessageResult::Tempfailed), 120);
    assert!(
        metrics.key_lookups("vault", Lookup::Stale) >= 100,
        "served stale"
    );
    assert!(
        metrics.key_lookups("vault", Lookup::Negative) > 0,
        "failures were cached"
    );

    // The backend returns with a rotated key for example.com: both domains sign with current
    // keys, without restarting or reloading the milter.
    let rotated_keys = tempfile::tempdir().unwrap();
    let rotated = remote_key(rotated_keys.path(), "example.com", "s1", KeyKind::Ed25519);
    std::fs::create_dir_all(rotated_keys.path().join("cold.example")).unwrap();
    std::fs::copy(
        keys.join("cold.example/s1.dns"),
        rotated_keys.path().join("cold.example/s1.dns"),
    )
    .unwrap();
    vault.put("secret/dkim/example.com", "key", &rotated);
    vault.restart().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Until the background refresh lands, the old key may still sign; never an unsigned message.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, inserted, message) = one_message(&milter, "Alice <alice@example.com>").await;
        assert_eq!(status, Status::Continue);
        assert_eq!(inserted.len(), 1);
        let delivered = message.delivered(&inserted);
        if verifies(&delivered, rotated_keys.path()).await {
            break;
        }
        assert!(
            verifies(&delivered, &keys).await,
            "signed with the old key meanwhile"
        );
        assert!(
            Instant::now() < deadline,
            "the rotated key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (warm, cold) = load(&milter, rotated_keys.path(), 5).await;
    assert_eq!(warm.signed, 20, "signed with the rotated key: {warm:?}");
    assert_eq!(
        cold.signed, 20,
        "cold.example is signed once Vault answers: {cold:?}"
    );
}

async fn verifies(delivered: &[u8], keys: &Path) -> bool {
    let verdicts = verify_mail_auth(delivered, keys).await;
    !verdicts.is_empty() && verdicts.iter().all(|(_, _, ok)| *ok)
}
