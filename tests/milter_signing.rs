//! Signing over the real milter protocol: the milter runs in-process on a unix socket, an
//! MTA-side client drives it, and every signature is checked by mail-auth and by dkimpy.

mod common;

use common::{Message, TestMilter, assert_verifies, loopback, send};
use indymilter_test::{ProtoOpts, Status};
use signet_milter::keys::generate::KeyKind;

const RSA_AND_ED: &str = r#"
[domain."example.com"]
selector = "rsa2026"
additional_signatures = ["ed"]
[signature."ed"]
domain = "{domain}"
selector = "ed2026"
algo = "ed25519"
header_canonicalization = "simple"
body_canonicalization = "simple"
"#;

#[tokio::test]
async fn dual_rsa_relaxed_and_ed25519_simple_signatures_verify() {
    let milter = TestMilter::start(
        &[
            ("example.com", "rsa2026", KeyKind::Rsa2048),
            ("example.com", "ed2026", KeyKind::Ed25519),
        ],
        "",
        RSA_AND_ED,
    )
    .await;
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("Alice <alice@example.com>");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(sent.inserted.len(), 2);
    let values: Vec<&str> = sent.inserted.iter().map(|(_, v)| v.as_str()).collect();
    assert!(
        values
            .iter()
            .any(|v| v.contains("a=rsa-sha256") && v.contains("c=relaxed/relaxed"))
    );
    assert!(
        values
            .iter()
            .any(|v| v.contains("a=ed25519-sha256") && v.contains("c=simple/simple"))
    );
    assert!(
        values
            .iter()
            .all(|v| v.starts_with(" v=1;") && !v.contains('\r')),
        "{values:?}"
    );
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "rsa2026"), ("example.com", "ed2026")],
    )
    .await;
    milter.stop().await;
}

#[tokio::test]
async fn odd_whitespace_and_folded_headers_survive_simple_canonicalization() {
    let milter = TestMilter::start(
        &[("example.com", "s1", KeyKind::Rsa2048)],
        "",
        r#"
        [domain."example.com"]
        selector = "s1"
        header_canonicalization = "simple"
        body_canonicalization = "simple"
        headers = ["From", "To", "Subject", "X-Tabbed", "X-Spaced", "Date"]
        "#,
    )
    .await;
    let mut conn = milter.connect(loopback()).await;
    let mut message = Message::simple("alice@example.com");
    message.headers.push((
        "Subject".into(),
        " a folded\n\tsubject line\n  with two continuations".into(),
    ));
    message
        .headers
        .push(("X-Tabbed".into(), "\ttab after the colon".into()));
    message
        .headers
        .push(("X-Spaced".into(), "    four spaces   and trailing  ".into()));
    message
        .headers
        .push(("X-Nospace".into(), "no-space".into()));
    message
        .headers
        .push(("X-Utf8".into(), " Grüße, 日本".into()));
    message.body =
        "line one\r\n.dot-start\r\n\ttabbed   spaces  \r\nÜmlaut 8-bit\r\n\r\n\r\n".into();
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.inserted.len(), 1);
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
}

#[tokio::test]
async fn esp_signature_always_and_fallback_only_without_domain_block() {
    let milter = TestMilter::start(
        &[
            ("example.com", "s1", KeyKind::Ed25519),
            ("esp.example", "esp1", KeyKind::Rsa2048),
            ("fallback.example", "fb1", KeyKind::Ed25519),
        ],
        "",
        r#"
        [base]
        additional_signatures = ["esp", "fallback"]
        [domain."example.com"]
        selector = "s1"
        [signature."esp"]
        domain = "esp.example"
        selector = "esp1"
        policy = "Always"
        [signature."fallback"]
        domain = "fallback.example"
        selector = "fb1"
        policy = "OnlyIfMissingDomainBlock"
        "#,
    )
    .await;
    let mut conn = milter.connect(loopback()).await;
    let configured = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &configured).await;
    assert_eq!(sent.inserted.len(), 2, "domain + ESP, no fallback");
    assert_verifies(
        &configured.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1"), ("esp.example", "esp1")],
    )
    .await;

    let other = Message::simple("carol@customer.example");
    let sent = send(&mut conn, &[], &other).await;
    assert_eq!(sent.inserted.len(), 2, "ESP + fallback");
    assert_verifies(
        &other.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("esp.example", "esp1"), ("fallback.example", "fb1")],
    )
    .await;
}

#[tokio::test]
async fn outsiders_are_accepted_unsigned_at_mail_and_authenticated_users_signed() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let outside = "203.0.113.5".parse().unwrap();
    let message = Message::simple("alice@example.com");

    let mut conn = milter.connect(outside).await;
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(
        sent.status,
        Status::Accept,
        "the MTA is told early, so no body is streamed"
    );
    assert_eq!(sent.stopped_at, Some("mail"));
    assert!(sent.inserted.is_empty());

    let mut conn = milter.connect(outside).await;
    let sent = send(
        &mut conn,
        &[
            ("{auth_authen}", "alice@example.com"),
            ("{auth_type}", "PLAIN"),
        ],
        &message,
    )
    .await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(sent.inserted.len(), 1);
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
}

#[tokio::test]
async fn daemon_name_makes_a_submission_service_trusted() {
    let milter =
        TestMilter::example_com(KeyKind::Ed25519, "trusted_daemon_names = [\"ORIGINATING\"]").await;
    let outside = "203.0.113.5".parse().unwrap();
    let message = Message::simple("alice@example.com");
    let mut conn = milter.connect(outside).await;
    let sent = send(&mut conn, &[("{daemon_name}", "ORIGINATING")], &message).await;
    assert_eq!(sent.inserted.len(), 1);
    let mut conn = milter.connect(outside).await;
    let sent = send(&mut conn, &[("{daemon_name}", "smtpd")], &message).await;
    assert_eq!(sent.status, Status::Accept);
}

#[tokio::test]
async fn messages_without_a_usable_author_get_no_domain_signature() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let mut conn = milter.connect(loopback()).await;
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no From", vec![("Subject".into(), " x".into())]),
        (
            "two From",
            vec![
                ("From".into(), " a@example.com".into()),
                ("From".into(), " b@example.com".into()),
            ],
        ),
        (
            "two mailboxes",
            vec![("From".into(), " a@example.com, b@example.com".into())],
        ),
        ("garbage", vec![("From".into(), " <<<@@@>>>".into())]),
        (
            "group",
            vec![("From".into(), " undisclosed-recipients:;".into())],
        ),
    ];
    for (what, headers) in cases {
        let message = Message {
            headers,
            body: b"x\r\n".to_vec(),
        };
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Accept, "{what}");
        assert_eq!(sent.stopped_at, Some("eoh"), "{what}");
    }
    // The connection is still good for a normal message.
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.inserted.len(), 1);
}

#[tokio::test]
async fn ten_mib_body_streams_and_verifies() {
    let milter = TestMilter::start(
        &[("example.com", "s1", KeyKind::Rsa2048)],
        "",
        "[domain.\"example.com\"]\nselector = \"s1\"\nbody_canonicalization = \"simple\"\n",
    )
    .await;
    let mut conn = milter.connect(loopback()).await;
    let mut message = Message::simple("alice@example.com");
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    message.body = line
        .iter()
        .copied()
        .cycle()
        .take(10 * 1024 * 1024)
        .collect();
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.inserted.len(), 1);
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
}

#[tokio::test]
async fn abort_mid_message_then_a_second_message_on_the_same_connection() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let mut conn = milter.connect(loopback()).await;
    conn.macros(indymilter::MacroStage::Mail, [("i", "Q1")])
        .await
        .unwrap();
    assert_eq!(
        conn.mail(["<a@example.com>"]).await.unwrap(),
        Status::Continue
    );
    conn.header("From", " first@example.com").await.unwrap();
    conn.header("Subject", " first").await.unwrap();
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    conn.body(b"half a body".to_vec()).await.unwrap();
    conn.abort().await.unwrap();

    let mut second = Message::simple("second@example.com");
    second.body = b"the second body\r\n".to_vec();
    let sent = send(&mut conn, &[], &second).await;
    assert_eq!(sent.inserted.len(), 1);
    assert_verifies(
        &second.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[("example.com", "s1")],
    )
    .await;
}

#[tokio::test]
async fn key_failures_follow_on_error_and_say_nothing_secret() {
    let milter = TestMilter::start(
        &[("ok.example", "s1", KeyKind::Ed25519)],
        "",
        r#"
        [domain."tempfail.example"]
        selector = "missing"
        [domain."reject.example"]
        selector = "missing"
        on_error = "reject"
        [domain."accept.example"]
        selector = "missing"
        on_error = "accept"
        "#,
    )
    .await;
    let mut conn = milter.connect(loopback()).await;

    let sent = send(&mut conn, &[], &Message::simple("a@tempfail.example")).await;
    let Status::Tempfail {
        message: Some(reply),
    } = sent.status
    else {
        panic!("expected a 4xx reply, got {:?}", sent.status);
    };
    let reply = reply.into_string().unwrap();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(
        reply.contains("tempfail.example") && reply.contains("signing key unavailable"),
        "{reply}"
    );
    assert!(
        !reply.contains(milter.keys_dir().to_str().unwrap()),
        "no paths in SMTP replies: {reply}"
    );

    let sent = send(&mut conn, &[], &Message::simple("a@reject.example")).await;
    let Status::Reject {
        message: Some(reply),
    } = sent.status
    else {
        panic!("expected a 5xx reply, got {:?}", sent.status);
    };
    assert!(reply.to_str().unwrap().starts_with("550 5.7.0"));

    let sent = send(&mut conn, &[], &Message::simple("a@accept.example")).await;
    assert_eq!(
        sent.status,
        Status::Accept,
        "on_error = accept lets it pass unsigned, as configured"
    );
}

#[tokio::test]
async fn a_garbage_packet_ends_only_its_own_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let mut good = milter.connect(loopback()).await;

    let mut bad = tokio::net::UnixStream::connect(&milter.socket)
        .await
        .unwrap();
    bad.write_all(b"\x00\x00\x00\x05Zjunk\xff\xff\xff\xffgarbage")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), bad.read(&mut buf))
        .await
        .expect("the milter closes a connection that speaks nonsense")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");

    let message = Message::simple("alice@example.com");
    let sent = send(&mut good, &[], &message).await;
    assert_eq!(sent.inserted.len(), 1, "the other connection is unaffected");
    let mut fresh = milter.connect(loopback()).await;
    assert_eq!(
        send(&mut fresh, &[], &message).await.inserted.len(),
        1,
        "and new ones are served"
    );
}

/// Postfix (and Sendmail 8.14+) offer not to wait for replies to headers and body chunks; the
/// milter takes the offer, which saves a round trip per header and per 64 KiB of body. An MTA
/// that does not offer it gets a reply to each, and both get a signature that verifies. (The
/// client reads exactly the replies it expects, so an extra or a missing one breaks the
/// exchange.)
#[tokio::test]
async fn headers_and_body_are_answered_only_when_the_mta_waits_for_it() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let no_reply = ProtoOpts::NOREPLY_HEADER | ProtoOpts::NOREPLY_BODY;
    let postfix = milter.connect(loopback()).await;
    assert!(postfix.negotiated_opts().contains(no_reply));
    let older = milter
        .connect_offering(loopback(), ProtoOpts::all() - no_reply)
        .await;
    assert!(!older.negotiated_opts().intersects(no_reply));
    for mut conn in [postfix, older] {
        let mut message = Message::simple("Alice <alice@example.com>");
        message.body = b"line\r\n".repeat(20_000); // three body chunks
        for _ in 0..2 {
            let sent = send(&mut conn, &[], &message).await;
            assert_eq!(sent.status, Status::Continue);
            assert_verifies(
                &message.delivered(&sent.inserted),
                &milter.keys_dir(),
                &[("example.com", "s1")],
            )
            .await;
        }
    }
    milter.stop().await;
}

/// Exact and per-mailbox entries reach their keys through a direct handle on the key cache
/// (no index lookup); each must still sign with its own key, message after message, beside a
/// wildcard entry that resolves its key per message.
#[tokio::test]
async fn every_entry_signs_with_its_own_key_message_after_message() {
    let milter = TestMilter::start(
        &[
            ("a.example", "s1", KeyKind::Ed25519),
            ("a.example", "alice", KeyKind::Ed25519),
            ("b.example", "s1", KeyKind::Ed25519),
            ("mail.c.example", "s1", KeyKind::Ed25519),
            ("news.c.example", "s1", KeyKind::Ed25519),
        ],
        "",
        r#"
[domain."a.example"]
selector = "s1"
[domain."alice@a.example"]
selector = "alice"
[domain."b.example"]
selector = "s1"
[domain."*.c.example"]
selector = "s1"
"#,
    )
    .await;
    let keys = milter.keys_dir();
    let mut conn = milter.connect(loopback()).await;
    let authors = [
        ("bob@a.example", "a.example", "s1"),
        ("alice@a.example", "a.example", "alice"),
        ("carol@b.example", "b.example", "s1"),
        ("dave@mail.c.example", "mail.c.example", "s1"),
        ("erin@news.c.example", "news.c.example", "s1"),
    ];
    for round in 0..3 {
        for (author, domain, selector) in authors {
            let message = Message::simple(author);
            let sent = send(&mut conn, &[], &message).await;
            let results = common::verify_mail_auth(&message.delivered(&sent.inserted), &keys).await;
            assert_eq!(
                results,
                [(domain.to_string(), selector.to_string(), true)],
                "round {round}, {author}"
            );
        }
    }
}
