//! Vault key sources against a real OpenBao server (dev mode, 127.0.0.1): KV v2 and v1, field
//! selection, namespaces, AppRole login and renewal, refused tokens, missing secrets, a sealed
//! server, rotation, and mail signed with a key that lives only in OpenBao.

mod common;

use common::openbao::{OpenBao, ROOT_TOKEN};
use common::{Message, TestMilter, assert_verifies, loopback, remote_key, send};
use indymilter_test::Status;
use signet_milter::config::Config;
use signet_milter::config::keysource::{KvVersion, ResolvedKeySource, VaultSource, VaultToken};
use signet_milter::keys::generate::{KeyKind, generate};
use signet_milter::keys::parse::PrivateKey;
use signet_milter::keys::{KeyError, vault::VaultFailure};
use signet_milter::metrics::Lookup;
use signet_milter::runtime::Runtime;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn runtime(config: &str) -> Runtime {
    Runtime::new(Config::parse(config, Path::new("test.toml")).unwrap())
}

fn vault_config(bao: &OpenBao, extra: &str) -> String {
    format!(
        "[vault]\naddress = \"{}\"\ntoken = \"{ROOT_TOKEN}\"\n{extra}",
        bao.addr
    )
}

fn source(mount: &str, path: &str, field: &str) -> ResolvedKeySource {
    ResolvedKeySource::Vault(VaultSource {
        mount: mount.into(),
        path: path.into(),
        field: field.into(),
        address: None,
        token: None,
        kv_version: None,
    })
}

/// A new key: (PEM, public key base64).
fn new_key() -> (String, String) {
    let g = generate(KeyKind::Ed25519).unwrap();
    (
        g.private_pem().to_string(),
        g.key.public_key_base64().to_string(),
    )
}

async fn get(runtime: &Runtime, source: &ResolvedKeySource) -> Result<Arc<PrivateKey>, KeyError> {
    runtime.keys.get(source).await
}

fn failure(result: Result<Arc<PrivateKey>, KeyError>) -> (VaultFailure, String) {
    match result {
        Err(KeyError::Vault { failure, origin }) => {
            let text = KeyError::Vault {
                failure: failure.clone(),
                origin,
            }
            .to_string();
            (failure, text)
        }
        Err(other) => panic!("expected a Vault failure, got {other}"),
        Ok(_) => panic!("expected a Vault failure, got a key"),
    }
}

#[tokio::test]
async fn kv2_and_kv1_reads_with_field_selection_and_clear_errors() {
    let Some(bao) = OpenBao::start() else { return };
    let (pem, public) = new_key();
    bao.cli_stdin(
        &[
            "kv",
            "put",
            "secret/dkim/example.com",
            "private_key=-",
            "selector=s1",
        ],
        &pem,
    );
    bao.cli(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    let (pem1, public1) = new_key();
    bao.put_key("kv1/dkim/example.com", "key", &pem1);
    let rt = runtime(&vault_config(&bao, ""));

    let key = get(&rt, &source("secret", "dkim/example.com", "private_key"))
        .await
        .unwrap();
    assert_eq!(key.public_key_base64(), public, "KV v2, field private_key");

    let mut v1 = source("kv1", "dkim/example.com", "key");
    if let ResolvedKeySource::Vault(v) = &mut v1 {
        v.kv_version = Some(KvVersion::V1);
    }
    assert_eq!(
        get(&rt, &v1).await.unwrap().public_key_base64(),
        public1,
        "KV v1"
    );

    let (f, text) = failure(get(&rt, &source("secret", "dkim/example.com", "key")).await);
    assert_eq!(
        f,
        VaultFailure::MissingField {
            field: "key".into(),
            available: "private_key, selector".into()
        },
        "{text}"
    );
    assert!(text.contains("secret/dkim/example.com field key"), "{text}");

    let (f, text) = failure(get(&rt, &source("secret", "dkim/nope.example", "key")).await);
    assert_eq!(f, VaultFailure::NotFound, "{text}");

    // A KV v1 mount read as v2 is also "not found" (Vault's answer), with a hint.
    let (f, text) = failure(get(&rt, &source("kv1", "dkim/example.com", "key")).await);
    assert_eq!(f, VaultFailure::NotFound);
    assert!(text.contains("kv_version"), "{text}");

    let mut bad_token = source("secret", "dkim/example.com", "private_key");
    if let ResolvedKeySource::Vault(v) = &mut bad_token {
        v.token = Some(VaultToken("s.not-a-real-token".to_string().into()));
    }
    let (f, text) = failure(get(&rt, &bad_token).await);
    assert_eq!(f, VaultFailure::PermissionDenied, "{text}");
    assert!(
        !text.contains("not-a-real-token") && !text.contains("root"),
        "{text}"
    );
}

#[tokio::test]
async fn a_namespace_is_sent_with_every_request() {
    let Some(bao) = OpenBao::start() else { return };
    bao.cli(&["namespace", "create", "team-mail"]);
    bao.cli(&[
        "secrets",
        "enable",
        "-namespace=team-mail",
        "-path=secret",
        "kv-v2",
    ]);
    let (pem, public) = new_key();
    bao.cli_stdin(
        &[
            "kv",
            "put",
            "-namespace=team-mail",
            "secret/dkim/example.com",
            "key=-",
        ],
        &pem,
    );
    let inside = runtime(&vault_config(&bao, "namespace = \"team-mail\"\n"));
    let key = get(&inside, &source("secret", "dkim/example.com", "key"))
        .await
        .unwrap();
    assert_eq!(key.public_key_base64(), public);

    let outside = runtime(&vault_config(&bao, ""));
    let (f, _) = failure(get(&outside, &source("secret", "dkim/example.com", "key")).await);
    assert_eq!(
        f,
        VaultFailure::NotFound,
        "the root namespace has no such secret"
    );
}

/// Sets up AppRole `signet` with a read policy on `secret/data/dkim/*`; returns
/// (role_id, secret_id file).
fn approle(bao: &OpenBao, dir: &Path, role_options: &[&str]) -> (String, std::path::PathBuf) {
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli_stdin(
        &["policy", "write", "dkim-read", "-"],
        "path \"secret/data/dkim/*\" { capabilities = [\"read\"] }\n",
    );
    let mut args = vec![
        "write",
        "auth/approle/role/signet",
        "token_policies=dkim-read",
    ];
    args.extend_from_slice(role_options);
    bao.cli(&args);
    let role_id = bao
        .cli(&["read", "-field=role_id", "auth/approle/role/signet/role-id"])
        .trim()
        .to_string();
    let secret_id = bao.cli(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/signet/secret-id",
    ]);
    let path = dir.join("secret-id");
    std::fs::write(&path, format!("{}\n", secret_id.trim())).unwrap();
    (role_id, path)
}

fn approle_config(bao: &OpenBao, role_id: &str, secret_id_file: &Path) -> String {
    format!(
        "[vault]\naddress = \"{}\"\nrole_id = \"{role_id}\"\nsecret_id_file = \"{}\"\n\
         [cache]\nttl = \"1s\"\nserve_stale = 0\nnegative_ttl = 0\n",
        bao.addr,
        secret_id_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approle_token_is_renewed_before_it_expires() {
    let Some(bao) = OpenBao::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A 6 s token, and a secret ID good for one login only: after 6 s only renewal can keep
    // the session alive.
    let (role_id, secret_id_file) = approle(
        &bao,
        dir.path(),
        &["token_ttl=6s", "token_max_ttl=1h", "secret_id_num_uses=1"],
    );
    let (pem, public) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem);
    let rt = runtime(&approle_config(&bao, &role_id, &secret_id_file));
    let src = source("secret", "dkim/example.com", "key");
    assert_eq!(get(&rt, &src).await.unwrap().public_key_base64(), public);

    tokio::time::sleep(Duration::from_secs(7)).await;
    let (pem2, public2) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem2);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // 13 s after login, two token lifetimes: this read works only with a renewed token.
    let key = get(&rt, &src).await.unwrap();
    assert_eq!(
        key.public_key_base64(),
        public2,
        "read with the renewed token"
    );
}

#[tokio::test]
async fn a_revoked_approle_token_is_replaced_by_a_new_login() {
    let Some(bao) = OpenBao::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (role_id, secret_id_file) = approle(&bao, dir.path(), &["token_ttl=1h"]);
    let (pem, public) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem);
    let rt = runtime(&approle_config(&bao, &role_id, &secret_id_file));
    let src = source("secret", "dkim/example.com", "key");
    assert_eq!(get(&rt, &src).await.unwrap().public_key_base64(), public);

    bao.cli(&["token", "revoke", "-mode=path", "auth/approle/login"]);
    let (pem2, public2) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&rt, &src).await.unwrap().public_key_base64(), public2);
}

#[tokio::test]
async fn a_sealed_server_is_reported_and_cached_keys_keep_signing() {
    let Some(bao) = OpenBao::start() else { return };
    let (pem, public) = new_key();
    bao.put_key("secret/dkim/cached.example", "key", &pem);
    bao.put_key("secret/dkim/cold.example", "key", &pem);
    let rt = runtime(&vault_config(
        &bao,
        "[cache]\nttl = \"1s\"\nserve_stale = \"1h\"\nnegative_ttl = \"5s\"\n",
    ));
    let cached = source("secret", "dkim/cached.example", "key");
    get(&rt, &cached).await.unwrap();

    bao.cli(&["operator", "seal"]);
    let (f, text) = failure(get(&rt, &source("secret", "dkim/cold.example", "key")).await);
    assert_eq!(f, VaultFailure::Sealed, "{text}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let key = get(&rt, &cached).await.unwrap();
        assert_eq!(
            key.public_key_base64(),
            public,
            "the last good key is served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = &rt.env.metrics;
    assert_eq!(metrics.key_lookups("vault", Lookup::Stale), 3);
    assert!(
        metrics.key_fetch_errors("vault") >= 2,
        "the cold read and the refresh failed"
    );
}

#[tokio::test]
async fn a_key_rotated_in_vault_is_used_after_ttl() {
    let Some(bao) = OpenBao::start() else { return };
    let (pem, public) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem);
    let rt = runtime(&vault_config(&bao, "[cache]\nttl = \"1s\"\n"));
    let src = source("secret", "dkim/example.com", "key");
    assert_eq!(get(&rt, &src).await.unwrap().public_key_base64(), public);

    let (pem2, public2) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem2);
    assert_eq!(
        get(&rt, &src).await.unwrap().public_key_base64(),
        public,
        "within ttl the cached key is used"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past ttl: the first lookup starts a refresh; the new key follows shortly.
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(
            get(&rt, &src)
                .await
                .unwrap()
                .public_key_base64()
                .to_string(),
        );
        if seen.last() == Some(&public2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.last(), Some(&public2), "the rotated key is picked up");
}

#[tokio::test]
async fn mail_is_signed_with_keys_that_live_only_in_openbao() {
    let Some(bao) = OpenBao::start() else { return };
    let table = format!(
        r#"
[vault]
address = "{}"
token = "{ROOT_TOKEN}"

[domain."example.com"]
selector = "s2026"
key = {{ vault_mount = "secret", vault_path = "dkim/{{domain}}", vault_key = "private_key" }}
"#,
        bao.addr
    );
    let milter = TestMilter::start(&[], "", &table).await;
    let pem = remote_key(&milter.keys_dir(), "example.com", "s2026", KeyKind::Rsa2048);
    bao.put_key("secret/dkim/example.com", "private_key", &pem);

    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("Alice <alice@example.com>");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(sent.inserted.len(), 1);
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s2026")],
    )
    .await;
}

/// KumoMTA's `[base] vault_mount` mode: every key at `<prefix>/<domain>/<selector>`, field `key`.
#[tokio::test]
async fn kumomta_base_vault_mount_mode_signs() {
    let Some(bao) = OpenBao::start() else { return };
    let table = format!(
        r#"
[vault]
address = "{}"
token = "{ROOT_TOKEN}"

[base]
vault_mount = "secret"
vault_path_prefix = "mail-keys"

[domain."example.org"]
selector = "kumo"
"#,
        bao.addr
    );
    let milter = TestMilter::start(&[], "", &table).await;
    let pem = remote_key(&milter.keys_dir(), "example.org", "kumo", KeyKind::Ed25519);
    bao.put_key("secret/mail-keys/example.org/kumo", "key", &pem);

    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("Bob <bob@example.org>");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.org", "kumo")],
    )
    .await;
}

/// TLS is always verified: `VAULT_SKIP_VERIFY` in the environment does not turn it off, and
/// `[vault] ca_cert` is how a private CA is trusted.
#[test]
fn tls_is_verified_whatever_vault_skip_verify_says() {
    let Some(bao) = OpenBao::start_tls() else {
        return;
    };
    let (pem, _) = new_key();
    bao.put_key("secret/dkim/example.com", "key", &pem);
    let dir = tempfile::tempdir().unwrap();
    let table = "[domain.\"example.com\"]\nselector = \"s1\"\nkey = { vault_mount = \"secret\", vault_path = \"dkim/{domain}\" }\n";
    let check = |vault_extra: String| {
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!("{}{vault_extra}\n{table}", vault_config(&bao, "")),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet-milter"))
            .args(["--config".as_ref(), config.as_os_str(), "check".as_ref()])
            .env("VAULT_SKIP_VERIFY", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = check(String::new());
    assert!(
        !ok,
        "an unknown CA is refused despite VAULT_SKIP_VERIFY=1:\n{out}"
    );
    assert!(out.contains("certificate"), "{out}");
    let ca = bao.ca_cert.as_ref().unwrap();
    let (ok, out) = check(format!("ca_cert = \"{}\"", ca.display()));
    assert!(ok, "trusted through ca_cert:\n{out}");
    assert!(out.contains("ok"), "{out}");
}
