//! Connections from the MTA at the edges: hundreds of idle ones never starve one that brings a
//! message, idle ones are closed after `idle_timeout` (never one with a message in flight), and
//! running out of file descriptors does not end the server.

mod common;

use common::{Message, TestMilter, closed_by_milter, idle_connection, loopback, send};
use indymilter_test::Status;
use signet_milter::keys::generate::KeyKind;
use signet_milter::metrics::Closed;
use std::time::Duration;

async fn sign_one(milter: &TestMilter) {
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    common::assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_idle_connections_do_not_delay_a_message() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let mut idle = Vec::new();
    for _ in 0..600 {
        idle.push(idle_connection(&milter.socket).await.unwrap());
    }
    sign_one(&milter).await;
    let metrics = milter.runtime.load().env.metrics.clone();
    assert_eq!(metrics.connections_closed(Closed::Evicted), 0);
    assert!(metrics.open_connections() >= 600);
    drop(idle);
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_the_connection_idle_longest_makes_room() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "max_connections = 50").await;
    let mut idle = Vec::new();
    for _ in 0..600 {
        // Each one past the limit is accepted by closing the oldest idle one (a milter that
        // let them wait in the backlog would never answer).
        let connect =
            tokio::time::timeout(Duration::from_secs(30), idle_connection(&milter.socket));
        idle.push(connect.await.expect("accepted at the limit").unwrap());
    }
    sign_one(&milter).await;
    let metrics = milter.runtime.load().env.metrics.clone();
    assert!(
        metrics.connections_closed(Closed::Evicted) >= 550,
        "{}",
        metrics.connections_closed(Closed::Evicted)
    );
    // The oldest went first; the newest are still open.
    assert!(closed_by_milter(&mut idle[0]).await);
    for stream in idle.iter_mut().take(500) {
        assert!(closed_by_milter(stream).await);
    }
    drop(idle);
    milter.stop().await;
}

/// On tokio's paused clock: time moves on whenever everything waits.
#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_idle_timeout_but_a_message_in_flight_stays() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "idle_timeout = \"10s\"").await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(idle_connection(&milter.socket).await.unwrap());
    }
    // A message under way, up to the end of its headers, then a long pause.
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    conn.macros(indymilter::MacroStage::Mail, [("i", "Q1")])
        .await
        .unwrap();
    assert_eq!(
        conn.mail(["<alice@example.com>"]).await.unwrap(),
        Status::Continue
    );
    for (name, value) in &message.headers {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    tokio::time::sleep(Duration::from_secs(60)).await;

    for stream in &mut idle {
        assert!(
            closed_by_milter(stream).await,
            "an idle connection is closed"
        );
    }
    let metrics = milter.runtime.load().env.metrics.clone();
    assert_eq!(metrics.connections_closed(Closed::Idle), 20);
    conn.body(message.body.clone()).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(
        status,
        Status::Continue,
        "the message in flight was not cut off"
    );
    assert_eq!(actions.actions.len(), 1, "and it is signed");
    // Once its message is done, that connection is idle too.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(metrics.connections_closed(Closed::Idle), 21);
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_end_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) =
        common::daemon::example_com_config(dir.path(), "max_connections = 1000", "");
    // About 20 descriptors go to the runtime, stdio and the listener: room for ~40 connections.
    let daemon = common::daemon::Daemon::start_with_file_limit(&config, 64);
    daemon.expect_log("the open-file limit allows only about");
    daemon.expect_log("signet-milter listening");
    let mut streams = Vec::new();
    for _ in 0..150 {
        let connect = tokio::time::timeout(Duration::from_secs(30), idle_connection(&socket));
        if let Ok(Ok(stream)) = connect.await {
            streams.push(stream);
        }
    }
    daemon.expect_log("out of file descriptors; retrying");
    drop(streams);
    let mut daemon = daemon;
    assert!(daemon.is_running(), "EMFILE did not end the server");

    // And it serves: a message is signed once descriptors are free again.
    let mut conn = common::mta_connection(&socket).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    common::assert_verifies(
        &message.delivered(&sent.inserted),
        &dir.path().join("keys"),
        &[("example.com", "s1")],
    )
    .await;
    assert!(daemon.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_busy_a_new_one_waits_until_a_message_ends() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "max_connections = 2").await;
    let message = Message::simple("alice@example.com");
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut conn = milter.connect(loopback()).await;
        assert_eq!(
            conn.mail(["<alice@example.com>"]).await.unwrap(),
            Status::Continue
        );
        busy.push(conn);
    }
    let socket = milter.socket.clone();
    let waiting = tokio::spawn(async move { idle_connection(&socket).await });
    // Nobody is idle: the third connection is not accepted, however long it waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "no connection was closed for it");
    let metrics = milter.runtime.load().env.metrics.clone();
    assert_eq!(metrics.connections_closed(Closed::Evicted), 0);

    // One message ends: its connection is idle now and makes room.
    let mut first = busy.remove(0);
    for (name, value) in &message.headers {
        first.header(name.as_str(), value.as_str()).await.unwrap();
    }
    first.eoh().await.unwrap();
    first.body(message.body.clone()).await.unwrap();
    let (_, status) = first.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    let third = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("accepted once a connection was idle");
    assert!(third.unwrap().is_ok());
    assert_eq!(metrics.connections_closed(Closed::Evicted), 1);
    drop(busy);
    milter.stop().await;
}
