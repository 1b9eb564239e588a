//! The real binary as a daemon: it warns at startup about keys it cannot use, signs over its
//! socket, reloads on SIGHUP (refusing a broken file), and on SIGTERM exits 0 and removes the
//! socket; it tells systemd (NOTIFY_SOCKET) when it is ready, reloading and stopping, and a
//! message in flight at SIGTERM still finishes.

mod common;

use indymilter::{Actions, ProtoOpts};
use indymilter_test::TestConnection;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use std::time::Duration;

use common::daemon::Daemon;

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
    // Serving comes first; keys are checked in the background after it.
    daemon.expect_log("signet-milter listening");
    let warning = daemon.expect_log("key not usable yet");
    assert!(
        warning.contains("nokey.example/s9.key: does not exist"),
        "{warning}"
    );
    daemon.expect_log("keys checked");
    assert_eq!(
        scrape("/healthz").await,
        (200, "ok\nkeys: 1 ok, 1 failed, 0 pending\n".to_string())
    );

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
        "signet_signatures_total{algorithm=\"ed25519-sha256\"} 1",
        // The startup key pass loads the key file (a miss); the message finds it (a hit).
        "signet_key_cache_lookups_total{backend=\"file\",result=\"miss\"} ",
        "signet_key_cache_lookups_total{backend=\"file\",result=\"hit\"} ",
        "signet_key_fetch_duration_seconds_count{backend=\"file\"}",
        "signet_keys{state=\"ok\"} 1",
        "signet_connections 1",
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

/// What systemd's end of NOTIFY_SOCKET receives.
struct NotifyListener(std::os::unix::net::UnixDatagram);

impl NotifyListener {
    fn bind(path: &std::path::Path) -> Self {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        NotifyListener(socket)
    }

    /// The next datagram that changes the state (READY, RELOADING, STOPPING), as `KEY=value`
    /// lines; those that only update STATUS (the key check's result) are skipped.
    fn next(&self) -> Vec<String> {
        loop {
            let datagram = self.next_any();
            if !datagram.iter().all(|l| l.starts_with("STATUS=")) {
                return datagram;
            }
        }
    }

    fn next_any(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn monotonic_usec() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    i128::from(ts.tv_sec) * 1_000_000 + i128::from(ts.tv_nsec) / 1000
}

#[tokio::test]
async fn tells_systemd_its_state_and_finishes_a_message_in_flight_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) =
        common::daemon::example_com_config(dir.path(), "shutdown_timeout = \"60s\"", "");
    let notify_path = dir.path().join("notify.sock");
    let systemd = NotifyListener::bind(&notify_path);
    let daemon = Daemon::start_with_env(&config, &[("NOTIFY_SOCKET", notify_path.as_os_str())]);

    let ready = systemd.next();
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");
    assert!(socket.exists(), "READY=1 only once the socket is bound");

    let before = monotonic_usec();
    daemon.signal(libc::SIGHUP);
    let reloading = systemd.next();
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let sent_at: i128 = reloading[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("MONOTONIC_USEC with RELOADING=1: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        before <= sent_at && sent_at <= monotonic_usec(),
        "MONOTONIC_USEC is the monotonic clock at the reload"
    );
    let reloaded = systemd.next();
    assert!(reloaded.contains(&"READY=1".to_string()), "{reloaded:?}");
    assert!(
        reloaded.contains(&"STATUS=configuration reloaded".to_string()),
        "{reloaded:?}"
    );

    // A message is under way when SIGTERM arrives.
    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(&socket)
        .await
        .unwrap();
    conn.connect("localhost", common::loopback()).await.unwrap();
    let message = common::Message::simple("alice@example.com");
    conn.mail(["<alice@example.com>"]).await.unwrap();
    for (name, value) in &message.headers {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    daemon.signal(libc::SIGTERM);
    let stopping = systemd.next();
    assert!(stopping.contains(&"STOPPING=1".to_string()), "{stopping:?}");
    daemon.expect_log("waiting for messages in flight to finish");
    assert!(
        !socket.exists(),
        "the socket goes as soon as shutdown begins"
    );

    conn.eoh().await.unwrap();
    conn.body(message.body.clone()).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, indymilter_test::Status::Continue);
    assert_eq!(actions.actions.len(), 1, "the message in flight is signed");

    let mut daemon = daemon;
    let status = daemon.child.wait().unwrap();
    assert!(
        status.success(),
        "exit 0 after a graceful stop, got {status}"
    );
}
