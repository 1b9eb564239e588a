//! Internationalized domain names (RFC 8616): a configured name and an author domain match
//! whichever form (U-label or A-label) either is written in; `d=` carries the A-label, which
//! every verifier can look up; `keygen` and `check --dns` use it too. Signatures are verified
//! by mail-auth, dkimpy and libopendkim; the DNS check asks a real BIND 9.

mod common;

use common::dns::{Named, Zone};
use common::{Message, TestMilter, assert_verifies_everywhere, loopback, send};
use indymilter_test::Status;
use signet_milter::keys::generate::KeyKind;
use std::process::Output;

fn signet(args: &[&str]) -> Output {
    common::run_signet(args, b"")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn either_form_on_either_side_signs_as_the_a_label() {
    let milter = TestMilter::start(
        &[
            ("bücher.example", "s1", KeyKind::Rsa2048),
            ("café.example", "s1", KeyKind::Ed25519),
            ("bücher.example", "jorg", KeyKind::Ed25519),
        ],
        "",
        r#"
        [domain."bücher.example"]
        selector = "s1"
        [domain."xn--caf-dma.example"]
        selector = "s1"
        [domain."Jörg@BÜCHER.example"]
        selector = "jorg"
        "#,
    )
    .await;
    let keys = milter.keys_dir();
    assert!(
        keys.join("xn--bcher-kva.example/s1.key").exists(),
        "keys live under the A-label"
    );
    let cases = [
        (
            "U-label entry, A-label author",
            "Anna <anna@xn--bcher-kva.example>",
            "xn--bcher-kva.example",
            "s1",
        ),
        (
            "A-label entry, U-label author",
            "Zoë <zoë@café.example>",
            "xn--caf-dma.example",
            "s1",
        ),
        (
            "either, in upper case",
            "x@CAFÉ.Example",
            "xn--caf-dma.example",
            "s1",
        ),
        (
            "a per-mailbox entry in U-labels",
            "Jörg <jörg@xn--bcher-kva.example>",
            "xn--bcher-kva.example",
            "jorg",
        ),
    ];
    for (name, from, d, s) in cases {
        let mut conn = milter.connect(loopback()).await;
        let message = Message::simple(from);
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(sent.status, Status::Continue, "{name}");
        assert_eq!(sent.inserted.len(), 1, "{name}");
        assert!(
            sent.inserted[0].1.contains(&format!(" d={d};")),
            "{name}: {}",
            sent.inserted[0].1
        );
        assert_verifies_everywhere(&message.delivered(&sent.inserted), &keys, &[(d, s)]).await;
    }
    milter.stop().await;
}

#[test]
fn keygen_explain_and_check_dns_use_the_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = signet(&[
        "keygen",
        "--algo",
        "ed25519",
        "--domain",
        "Bücher.example",
        "--selector",
        "s1",
        "--out",
        keys.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let record = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        record.starts_with("s1._domainkey.xn--bcher-kva.example. IN TXT ("),
        "{record}"
    );
    let config = dir.path().join("signet.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\ndirectory = \"{}\"\n[domain.\"bücher.example\"]\nselector = \"s1\"\n",
            keys.display()
        ),
    )
    .unwrap();

    let out = common::run_signet(
        &["explain", "-c", config.to_str().unwrap()],
        "From: anna@BÜCHER.example\nSubject: x\n\nbody\n".as_bytes(),
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown
            .contains("anna@xn--bcher-kva.example (domain bücher.example (xn--bcher-kva.example))"),
        "{shown}"
    );
    assert!(
        shown.contains("result: signed: xn--bcher-kva.example/s1"),
        "{shown}"
    );

    // The record, published under the A-label only; a lookup of any other form finds nothing.
    let value = std::fs::read_to_string(keys.join("xn--bcher-kva.example/s1.dns")).unwrap();
    let named = Named::builder()
        .zone(Zone::new("xn--bcher-kva.example").txt("s1._domainkey", value.trim()))
        .start();
    let server = named.addr().to_string();
    let out = signet(&[
        "check",
        "--dns",
        "--dns-server",
        &server,
        "-c",
        config.to_str().unwrap(),
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("s1._domainkey.xn--bcher-kva.example ") && l.ends_with(" ok")),
        "{shown}"
    );
}

#[test]
fn a_name_that_is_no_domain_in_either_form_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signet.toml");
    for (entry, line) in [
        ("xn--zz.example", 3),
        ("bü cher.example", 3),
        ("@bücher.example", 3),
    ] {
        std::fs::write(
            &config,
            format!("[base]\nselector = \"s\"\n[domain.\"{entry}\"]\n"),
        )
        .unwrap();
        let out = signet(&["check", "-c", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let shown = text(&out);
        assert!(
            shown.contains(&format!("{}:{line}:", config.display())),
            "{entry}: {shown}"
        );
    }
}
