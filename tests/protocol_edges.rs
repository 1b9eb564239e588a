//! Shapes Postfix never sends, which the milter must still survive: CR/LF and control bytes in
//! macro values, thousands of macros at once, a 1 MiB header value, a header section just at
//! and just over the limit. Each must end with an answer (and the connection still usable),
//! never a crash or a hang.

mod common;

use common::{Message, TestMilter, loopback, send};
use indymilter::MacroStage;
use indymilter_test::Status;
use signet_milter::keys::generate::KeyKind;
use signet_milter::session::MAX_HEADER_BYTES;
use std::time::Duration;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("the milter hung on {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_macros_and_huge_headers_get_an_answer_and_the_connection_goes_on() {
    // mode = "any": the odd login below is of no domain; what is tested here is that odd
    // shapes get an answer, not who may sign.
    let milter = TestMilter::start(
        &[("example.com", "s1", KeyKind::Ed25519)],
        "",
        "[authorization]\nmode = \"any\"\n[domain.\"example.com\"]\nselector = \"s1\"\n",
    )
    .await;
    let mut conn = milter.connect(loopback()).await;
    let plain = Message::simple("alice@example.com");

    // CR/LF, NUL-free control bytes and 8-bit bytes in macro values, at every stage.
    let odd = [
        ("{auth_authen}", "alice\r\nINFO signed queue_id=FORGED"),
        ("{auth_type}", "PLAIN\u{1b}[2J"),
        ("i", "Q1\r\n\r\n"),
        ("{daemon_name}", "smtpd\t\u{7f}\u{1}"),
    ];
    let sent = within("odd macros", send(&mut conn, &odd, &plain)).await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(sent.inserted.len(), 1, "authenticated, so signed");

    // 10,000 macros in one packet.
    let names: Vec<String> = (0..10_000).map(|i| format!("{{m{i}}}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v\r\n")).collect();
    conn.macros(MacroStage::Helo, many.clone()).await.unwrap();
    let sent = within("10,000 macros", send(&mut conn, &many, &plain)).await;
    assert_eq!(
        sent.status,
        Status::Continue,
        "a normal message after 10,000 macros"
    );

    // A section exactly at the limit is signed; one byte more is refused (on_error).
    let mut at_limit = plain.clone();
    let used: usize = plain
        .headers
        .iter()
        .map(|(n, v)| n.len() + 1 + v.len() + 2)
        .sum();
    let filler = MAX_HEADER_BYTES - used - "X-Fill:".len() - 2;
    at_limit
        .headers
        .push(("X-Fill".into(), format!(" {}", "a".repeat(filler - 1))));
    let sent = within("a section at the limit", send(&mut conn, &[], &at_limit)).await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(
        sent.inserted.len(),
        1,
        "exactly {MAX_HEADER_BYTES} bytes are signed"
    );

    let mut over = at_limit.clone();
    over.headers.last_mut().unwrap().1.push('a');
    let sent = within("a section over the limit", send(&mut conn, &[], &over)).await;
    assert!(
        matches!(sent.status, Status::Tempfail { .. }) && sent.stopped_at == Some("eoh"),
        "one byte over: on_error (tempfail)"
    );

    // One header value of 1 MiB on its own, folded with LF as Postfix passes folds.
    let mut huge = plain.clone();
    let line = format!("{}\n\t", "b".repeat(998));
    huge.headers.push((
        "X-Huge".into(),
        format!(" {}", line.repeat(1024 * 1024 / line.len())),
    ));
    let sent = within("a 1 MiB header value", send(&mut conn, &[], &huge)).await;
    assert!(matches!(sent.status, Status::Tempfail { .. }));

    // The connection still signs.
    let sent = within("a message after all that", send(&mut conn, &[], &plain)).await;
    assert_eq!(sent.status, Status::Continue);
    common::assert_verifies(
        &plain.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
    milter.stop().await;
}
