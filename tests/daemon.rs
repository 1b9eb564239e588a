//! The real binary as a daemon: it warns at startup about keys it cannot use, signs over its
//! socket, reloads on SIGHUP (refusing a broken file), and on SIGTERM exits 0 and removes the
//! socket.

mod common;

use indymilter::{Actions, ProtoOpts};
use indymilter_test::TestConnection;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
            .args(["run", "-c", config.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits for a log line containing `text`; the lines read on the way are returned on failure.
    fn expect_log(&self, text: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {text:?}; got:\n{}", seen.join("\n")),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn runs_signs_reloads_and_stops_on_signals() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    write_key_files(
        &keys,
        "example.com",
        "s1",
        &generate(KeyKind::Ed25519).unwrap(),
    )
    .unwrap();
    let socket = dir.path().join("milter.sock");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let good = format!(
        "[milter]\nlisten = \"unix:{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [keys]\ndirectory = \"{}\"\n[domain.\"example.com\"]\nselector = \"s1\"\n",
        socket.display(),
        keys.display()
    );
    let scrape = |path: &'static str| async move {
        let response = reqwest::get(format!("http://127.0.0.1:{metrics_port}{path}"))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!("{good}[domain.\"nokey.example\"]\nselector = \"s9\"\n"),
    )
    .unwrap();

    let daemon = Daemon::start(&config);
    let warning = daemon.expect_log("key not usable yet");
    assert!(
        warning.contains("nokey.example/s9.key: does not exist"),
        "{warning}"
    );
    daemon.expect_log("signet-milter listening");
    assert_eq!(scrape("/healthz").await, (200, "ok\n".to_string()));

    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(&socket)
        .await
        .unwrap();
    conn.connect("localhost", common::loopback()).await.unwrap();
    let message = common::Message::simple("alice@example.com");
    let sent = common::send(&mut conn, &[], &message).await;
    common::assert_verifies(
        &message.delivered(&sent.inserted),
        &keys,
        &[("example.com", "s1")],
    )
    .await;
    daemon.expect_log("result=\"signed\"");

    std::fs::write(&config, format!("{good}oops = [\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.expect_log("configuration not reloaded, the running one stays");
    std::fs::write(&config, &good).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.expect_log("configuration reloaded");

    let (status, metrics) = scrape("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "signet_build_info{version=\"",
        "signet_messages_total{result=\"signed\",reason=\"ok\"} 1",
        "signet_signatures_total{domain=\"example.com\",algorithm=\"ed25519-sha256\"} 1",
        "signet_key_cache_lookups_total{backend=\"file\",result=\"hit\"}",
        "signet_key_fetch_duration_seconds_count{backend=\"file\"}",
        "signet_key_fetch_errors_total{backend=\"file\"} 1",
        "signet_config_reloads_total{result=\"ok\"} 1",
        "signet_config_reloads_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    assert_eq!(scrape("/nope").await.0, 404);

    drop(conn);
    daemon.signal(libc::SIGTERM);
    let mut daemon = daemon;
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends with exit 0, got {status}");
    assert!(!socket.exists(), "the socket is removed at shutdown");
}
