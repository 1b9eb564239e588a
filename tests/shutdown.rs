//! Graceful shutdown (what SIGTERM/SIGINT start): the socket goes at once and no new connection
//! is accepted, a message in flight still finishes and is signed, idle connections are closed
//! as soon as nothing is in flight, and a connection stuck mid-message is closed when
//! `[milter] shutdown_timeout` has passed.

mod common;

use common::{Message, TestMilter, loopback};
use indymilter::{MacroStage, ProtoOpts};
use indymilter_test::{EomAction, Status, TestConnection};
use signet_milter::keys::generate::KeyKind;
use std::path::Path;
use std::time::{Duration, Instant};

/// Far longer than any step of these tests takes: waiting for it means the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

async fn wait_until_gone(path: &Path) {
    let start = Instant::now();
    while path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "{} still exists",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// MAIL FROM and the first header of `message`: the message is then in flight.
async fn start_message(conn: &mut TestConnection, message: &Message) {
    conn.macros(MacroStage::Mail, [("i", "INFLIGHT1")])
        .await
        .unwrap();
    assert_eq!(
        conn.mail(["<alice@example.com>"]).await.unwrap(),
        Status::Continue
    );
    let (name, value) = &message.headers[0];
    // The connection offers every option, as Postfix does: headers get no reply.
    assert!(conn.negotiated_opts().contains(ProtoOpts::NOREPLY_HEADER));
    assert_eq!(
        conn.header(name.as_str(), value.as_str()).await.unwrap(),
        Status::Noreply
    );
}

#[tokio::test]
async fn a_message_in_flight_finishes_signed_then_everything_closes() {
    let mut milter = TestMilter::example_com(KeyKind::Ed25519, "shutdown_timeout = \"60s\"").await;
    let message = Message::simple("alice@example.com");
    let mut busy = milter.connect(loopback()).await;
    let mut idle = milter.connect(loopback()).await;
    start_message(&mut busy, &message).await;

    milter.begin_shutdown();
    wait_until_gone(&milter.socket).await;
    assert!(
        TestConnection::configure()
            .open_unix(&milter.socket)
            .await
            .is_err(),
        "no new connection once shutdown has begun"
    );

    // The message in flight goes on to the end and is signed.
    for (name, value) in &message.headers[1..] {
        busy.header(name.as_str(), value.as_str()).await.unwrap();
    }
    assert_eq!(busy.eoh().await.unwrap(), Status::Continue);
    busy.body(message.body.clone()).await.unwrap();
    let (actions, status) = busy.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    let inserted: Vec<(String, String)> = actions
        .actions
        .into_iter()
        .map(|a| match a {
            EomAction::InsertHeader { name, value, .. } => {
                (name.into_string().unwrap(), value.into_string().unwrap())
            }
            other => panic!("unexpected action {other:?}"),
        })
        .collect();
    assert_eq!(inserted.len(), 1, "one signature");
    common::assert_verifies(
        &message.delivered(&inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;

    // Nothing is in flight any more: the server ends long before the 60 s bound, closing the
    // idle connection and the finished one.
    tokio::time::timeout(PATIENCE, milter.stopped())
        .await
        .expect("the server ends once the message in flight is done")
        .unwrap();
    assert!(idle.mail(["<x@example.com>"]).await.is_err());
    assert!(busy.mail(["<x@example.com>"]).await.is_err());
}

#[tokio::test]
async fn a_connection_stuck_mid_message_is_closed_when_the_bound_passes() {
    let mut milter = TestMilter::example_com(KeyKind::Ed25519, "shutdown_timeout = \"1s\"").await;
    let message = Message::simple("alice@example.com");
    let mut stuck = milter.connect(loopback()).await;
    start_message(&mut stuck, &message).await;

    let begun = Instant::now();
    milter.begin_shutdown();
    tokio::time::timeout(PATIENCE, milter.stopped())
        .await
        .expect("the server ends when shutdown_timeout has passed")
        .unwrap();
    assert!(
        begun.elapsed() >= Duration::from_secs(1),
        "it waited for the message in flight until the bound"
    );
    assert!(!milter.socket.exists());
    assert!(
        stuck.eoh().await.is_err(),
        "the stuck connection was closed"
    );
}

#[tokio::test]
async fn shutdown_with_nothing_in_flight_is_immediate() {
    let mut milter = TestMilter::example_com(KeyKind::Ed25519, "shutdown_timeout = \"60s\"").await;
    let mut conn = milter.connect(loopback()).await;
    let sent = common::send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.inserted.len(), 1);

    milter.begin_shutdown();
    tokio::time::timeout(PATIENCE, milter.stopped())
        .await
        .expect("no message in flight: no waiting")
        .unwrap();
    assert!(conn.mail(["<x@example.com>"]).await.is_err());
}
