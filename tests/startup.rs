//! The daemon serves at once, whatever state its key backends are in: 200 Vault entries behind
//! a server that accepts connections and never answers do not keep the socket closed, a
//! file-key domain signs right away, the Vault domains get on_error (tempfail), the hung server
//! is asked about one batch of keys (one timeout, not 200), and when a real OpenBao comes up on
//! that address the Vault domains sign without a restart.

mod common;

use common::daemon::Daemon;
use common::openbao::{OpenBao, ROOT_TOKEN};
use common::{Message, remote_key, send};
use indymilter_test::Status;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use signet_milter::keys::warm::WARM_CONCURRENCY;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const VAULT_DOMAINS: usize = 200;

/// Accepts connections and holds them open without a word; counts them.
struct HungServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<Mutex<bool>>,
}

impl HungServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(Mutex::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !*stopped.lock().unwrap() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener and every held connection close here.
        });
        HungServer {
            port,
            accepted,
            stop,
        }
    }

    fn stop(&self) {
        *self.stop.lock().unwrap() = true;
        // Until the thread has closed the listener, the port is still taken.
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_at_once_behind_a_hung_vault_and_signs_when_vault_comes_up() {
    let hung = HungServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    write_key_files(
        &keys,
        "file.example",
        "s1",
        &generate(KeyKind::Ed25519).unwrap(),
    )
    .unwrap();
    let socket = dir.path().join("milter.sock");
    let mut text = format!(
        "[milter]\nlisten = \"unix:{}\"\n[keys]\ndirectory = \"{}\"\n\
         [vault]\naddress = \"http://127.0.0.1:{}\"\ntoken = \"{ROOT_TOKEN}\"\ntimeout = \"2s\"\n\
         [cache]\nnegative_ttl = \"1s\"\n\
         [domain.\"file.example\"]\nselector = \"s1\"\n",
        socket.display(),
        keys.display(),
        hung.port
    );
    for i in 0..VAULT_DOMAINS {
        text.push_str(&format!(
            "[domain.\"v{i}.example\"]\nselector = \"s1\"\n\
             key = {{ vault_mount = \"secret\", vault_path = \"dkim/{{domain}}\" }}\n"
        ));
    }
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(&config, text).unwrap();

    let daemon = Daemon::start(&config);
    let (_, before) = daemon.expect_log_after("signet-milter listening");
    assert!(
        !before.iter().any(|l| l.contains("key")),
        "no key is fetched or checked before the socket is bound: {before:#?}"
    );

    // A file-key domain signs at once, while the Vault keys are still being fetched.
    let mut conn = common::mta_connection(&socket).await;
    let message = Message::simple("alice@file.example");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    common::assert_verifies(
        &message.delivered(&sent.inserted),
        &keys,
        &[("file.example", "s1")],
    )
    .await;

    // A Vault domain gets on_error: tempfail.
    let sent = send(&mut conn, &[], &Message::simple("bob@v7.example")).await;
    assert!(
        matches!(sent.status, Status::Tempfail { .. }) && sent.stopped_at == Some("eoh"),
        "tempfail at the end of the headers"
    );

    let report = daemon.expect_log("keys checked");
    assert!(report.contains("failed=200"), "{report}");
    let asked = hung.accepted.load(Ordering::SeqCst);
    assert!(
        asked <= WARM_CONCURRENCY + 4,
        "one batch of requests timed out and the rest were not sent: {asked} connections"
    );

    // Now a real OpenBao takes that address; no restart of the milter.
    hung.stop();
    let Some(bao) = OpenBao::start_at(hung.port) else {
        return;
    };
    for i in [0, 7] {
        let domain = format!("v{i}.example");
        let pem = remote_key(&keys, &domain, "s1", KeyKind::Ed25519);
        bao.put_key(&format!("secret/dkim/{domain}"), "key", &pem);
    }
    for i in [0, 7] {
        let from = format!("carol@v{i}.example");
        let message = Message::simple(&from);
        // Failures are remembered for negative_ttl (1 s): retry until it has passed.
        let mut sent = send(&mut conn, &[], &message).await;
        for _ in 0..60 {
            if sent.status == Status::Continue {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            sent = send(&mut conn, &[], &message).await;
        }
        assert_eq!(
            sent.status,
            Status::Continue,
            "{from} signs once Vault answers"
        );
        let domain = format!("v{i}.example");
        common::assert_verifies(
            &message.delivered(&sent.inserted),
            &keys,
            &[(&domain, "s1")],
        )
        .await;
    }
}
