//! Reloading the configuration (what SIGHUP does): a message in flight finishes with the rules it
//! started with, new messages get the new rules, and a bad file leaves the running rules alone.

mod common;

use common::{Message, TestMilter, loopback, send};
use indymilter::MacroStage;
use indymilter_test::Status;
use signet_milter::keys::generate::KeyKind;
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
    assert!(server::reload(&config_path, &milter.runtime));

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
    assert!(!server::reload(&config_path, &milter.runtime));
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.inserted.len(), 0, "still the last good configuration");

    std::fs::write(&config_path, &original).unwrap();
    assert!(server::reload(&config_path, &milter.runtime));
    let sent = send(&mut conn, &[], &Message::simple("alice@example.com")).await;
    assert_eq!(sent.inserted.len(), 1);
}
