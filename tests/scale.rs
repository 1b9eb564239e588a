//! A signing table of 100,000 `[domain]` entries that share one key loads and serves. How fast
//! and in how little memory is for `bench/scale.sh` to measure, not for a test to assert.

mod common;

use common::{Message, TestMilter, loopback, send};
use indymilter_test::Status;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};

const DOMAINS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_domains_sharing_a_key_load_and_sign() {
    let keydir = tempfile::tempdir().unwrap();
    write_key_files(
        keydir.path(),
        "shared",
        "s1",
        &generate(KeyKind::Ed25519).unwrap(),
    )
    .unwrap();
    let mut table = format!(
        "[base]\nselector = \"s1\"\nkey = \"{}/shared/s1.key\"\n",
        keydir.path().display()
    );
    for i in 0..DOMAINS {
        table.push_str(&format!("[domain.\"d{i}.example\"]\n"));
    }
    let milter = TestMilter::start(&[], "", &table).await;
    let runtime = milter.runtime.load_full();
    assert_eq!(runtime.config.signing.entry_count(), DOMAINS);
    assert!(
        runtime.keys.capacity() >= DOMAINS as u64,
        "the default cache fits the table"
    );
    let report = signet_milter::keys::warm::warm(runtime.clone()).await;
    assert_eq!(
        (report.ok, report.failed),
        (1, 0),
        "one key source, checked once"
    );

    let mut conn = milter.connect(loopback()).await;
    for domain in ["d0.example", "d77777.example", "d99999.example"] {
        let message = Message::simple(&format!("alice@{domain}"));
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Continue);
        assert_eq!(sent.inserted.len(), 1, "{domain} is signed");
        let header = &sent.inserted[0].1;
        assert!(header.contains(&format!("d={domain};")), "{header}");
    }
    milter.stop().await;
}
