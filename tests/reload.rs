//! Reloading the configuration (what SIGHUP does): a message in flight finishes with the rules it
//! started with, new messages get the new rules, and a bad file leaves the running rules alone.

mod common;

use common::{Message, TestMilter, loopback, send, verify_mail_auth};
use indymilter::MacroStage;
use indymilter_test::Status;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use signet_milter::server;

#[tokio::test]
async fn reload_swaps_rules_between_messages_and_keeps_them_on_error() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let config_path = milter.dir.path().join("signet-milter.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();

    // A message starts under the old rules...
    let mut conn = milter.connect(loopback()).await;
    conn.macros(MacroStage::Mail, [("i", "Q1")]).await.unwrap();
    assert_eq!(
        conn.mail(["<a@example.com>"]).await.unwrap(),
        Status::Continue
    );
    conn.header("From", " alice@example.com").await.unwrap();

    // ...the file changes so example.com is no longer signed, and is reloaded.
    let without_domain = original.replace("[domain.\"example.com\"]\nselector = \"s1\"\n", "");
    std::fs::write(&config_path, &without_domain).unwrap();
    assert!(server::reload(&config_path, &milter.runtime).await);

    // The message in flight still finishes signed.
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    conn.body(b"body\r\n".to_vec()).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(
        actions.actions.len(),
        1,
        "signed under the rules it started with"
    );

    // The next one follows the new rules.
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!((sent.status, sent.inserted.len()), (Status::Accept, 0));

    // A broken file is refused and the running rules stay.
    std::fs::write(&config_path, format!("{original}\nthis is = not toml [\n")).unwrap();
    assert!(!server::reload(&config_path, &milter.runtime).await);
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.inserted.len(), 0, "still the last good configuration");

    std::fs::write(&config_path, &original).unwrap();
    assert!(server::reload(&config_path, &milter.runtime).await);
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.inserted.len(), 1);
}

/// A replaced key file signs from the next reload on (before it, within `[cache] ttl`, the
/// cached key does: no `stat` per message).
#[tokio::test]
async fn a_replaced_key_file_signs_from_the_next_reload_on() {
    let milter = TestMilter::example_com(KeyKind::Ed25519, "").await;
    let config_path = milter.dir.path().join("signet-milter.toml");
    let keys = milter.keys_dir();
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");

    let sent = send(&mut conn, &[], &message).await;
    assert!(
        verifies(&message, &sent, &keys).await,
        "the first key signs"
    );

    // A new key is moved over the old file, as an operator's deploy does (new inode).
    let staging = milter.dir.path().join("staging");
    write_key_files(
        &staging,
        "example.com",
        "s1",
        &generate(KeyKind::Ed25519).unwrap(),
    )
    .unwrap();
    let key_file = keys.join("example.com/s1.key");
    std::fs::rename(staging.join("example.com/s1.key"), &key_file).unwrap();
    let sent = send(&mut conn, &[], &message).await;
    assert!(
        verifies(&message, &sent, &keys).await,
        "before the reload the cached key still signs"
    );

    assert!(server::reload(&config_path, &milter.runtime).await);
    let sent = send(&mut conn, &[], &message).await;
    assert!(
        !verifies(&message, &sent, &keys).await,
        "after the reload the old record no longer verifies it"
    );
    std::fs::rename(
        staging.join("example.com/s1.dns"),
        keys.join("example.com/s1.dns"),
    )
    .unwrap();
    assert!(
        verifies(&message, &sent, &keys).await,
        "it is signed with the new key"
    );
}

/// Whether `sent` carries one signature that verifies against the records in `keys`.
async fn verifies(message: &Message, sent: &common::Sent, keys: &std::path::Path) -> bool {
    let results = verify_mail_auth(&message.delivered(&sent.inserted), keys).await;
    assert_eq!(results.len(), 1, "one signature: {results:?}");
    results[0].2
}

/// Issue: "reload 20 times while messages flow — no message lost, tempfailed or unsigned
/// because of a reload". Eight connections send messages back to back (several per
/// connection) while the file is rewritten and reloaded twenty times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let milter = Arc::new(TestMilter::example_com(KeyKind::Ed25519, "").await);
    let config_path = milter.dir.path().join("signet-milter.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let senders: Vec<_> = (0..8)
        .map(|_| {
            let milter = milter.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut delivered = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let mut conn = milter.connect(loopback()).await;
                    for _ in 0..5 {
                        let message = Message::simple("Alice <alice@example.com>");
                        let sent = send(&mut conn, &[], &message).await;
                        assert_eq!(sent.status, Status::Continue, "no tempfail or reject");
                        assert_eq!(sent.inserted.len(), 1, "every message signed");
                        delivered.push(message.delivered(&sent.inserted));
                    }
                }
                delivered
            })
        })
        .collect();

    let metrics = milter.runtime.load().env.metrics.clone();
    for i in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // A real change each time (the [log] level), so each reload is a new generation.
        let level = if i % 2 == 0 { "debug" } else { "info" };
        std::fs::write(
            &config_path,
            format!("{original}\n[log]\nlevel = \"{level}\"\n"),
        )
        .unwrap();
        assert!(
            server::reload(&config_path, &milter.runtime).await,
            "reload {i}"
        );
    }
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for sender in senders {
        let delivered = sender.await.unwrap();
        // A sample by mail-auth; one per connection also by dkimpy (a process each).
        common::assert_verifies(&delivered[0], &milter.keys_dir(), &[("example.com", "s1")]).await;
        for raw in delivered.iter().step_by(10) {
            let verdicts = common::verify_mail_auth(raw, &milter.keys_dir()).await;
            assert!(verdicts.len() == 1 && verdicts[0].2, "{verdicts:?}");
        }
        total += delivered.len();
    }
    assert!(total >= 40, "messages flowed during the reloads: {total}");
    assert_eq!(
        metrics.messages(signet_milter::metrics::MessageResult::Signed),
        total as u64
    );
    eprintln!("{total} messages signed across 20 reloads");
}
