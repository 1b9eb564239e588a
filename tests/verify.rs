//! `signet-milter verify` against a real authoritative DNS server (BIND 9's `named`, started by
//! the test): a message signed by `signet-milter sign` passes; the same message with its body
//! or a signed header changed, a message whose key is not published, and an unsigned message
//! do not, each with its reason.

mod common;

use common::dns::{Named, Zone};
use std::path::Path;
use std::process::Output;

fn signet(args: &[&str], stdin: &[u8]) -> Output {
    common::run_signet(args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn keygen(keys: &Path, algo: &str, domain: &str, selector: &str) -> String {
    let out = signet(
        &[
            "keygen",
            "--algo",
            algo,
            "--domain",
            domain,
            "--selector",
            selector,
            "--out",
            keys.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::read_to_string(keys.join(domain).join(format!("{selector}.dns")))
        .unwrap()
        .trim()
        .to_string()
}

/// The row of the signature with selector `selector`.
fn row<'a>(stdout: &'a str, selector: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(selector))
        .unwrap_or_else(|| panic!("no row for {selector}:\n{stdout}"))
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\nTo: bob@example.net\n\
Subject: the quarterly figures\nDate: Tue, 01 Dec 2026 10:00:00 +0000\n\
Message-ID: <verify-1@example.com>\n\nHello Bob,\n\nthe figures are attached.\n";

#[test]
fn verify_says_which_signatures_pass_against_dns() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let rsa = keygen(&keys, "rsa2048", "example.com", "rsa1");
    let ed = keygen(&keys, "ed25519", "example.com", "ed1");
    // unpublished.example signs too, but its key is not in DNS.
    keygen(&keys, "ed25519", "unpublished.example", "u1");
    let named = Named::builder()
        .zone(
            Zone::new("example.com")
                .txt("rsa1._domainkey", &rsa)
                .txt("ed1._domainkey", &ed),
        )
        .zone(Zone::new("unpublished.example"))
        .start();
    let server = named.addr().to_string();
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\ndirectory = \"{}\"\n[base]\nadditional_signatures = [\"other\"]\n\
             [domain.\"example.com\"]\nselector = \"rsa1\"\nadditional_signatures = [\"ed\"]\n\
             [signature.\"ed\"]\ndomain = \"{{domain}}\"\nselector = \"ed1\"\n\
             [signature.\"other\"]\ndomain = \"unpublished.example\"\nselector = \"u1\"\n",
            keys.display()
        ),
    )
    .unwrap();
    let signed = signet(&["sign", "-c", config.to_str().unwrap()], MESSAGE);
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let signed = signed.stdout;
    let file = dir.path().join("signed.eml");
    std::fs::write(&file, &signed).unwrap();
    let verify = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["verify", "--dns-server", server.as_str()];
        all.extend_from_slice(args);
        signet(&all, stdin)
    };

    // Good: both example.com signatures pass; the unpublished one does not, so the message
    // as a whole does not either, but judged by d=example.com it does.
    let out = verify(&[file.to_str().unwrap()], b"");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(row(&stdout, "rsa1").ends_with(" pass"), "{stdout}");
    assert!(row(&stdout, "ed1").ends_with(" pass"), "{stdout}");
    assert!(
        row(&stdout, "u1")
            .contains("permerror: no key is published at u1._domainkey.unpublished.example"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Authentication-Results: signet-milter;"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dkim=pass header.d=example.com header.s=rsa1"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 3 signatures do not pass"), "{stdout}");
    let out = verify(&["--domain", "example.com"], &signed);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2 of 2 signatures pass"), "{stdout}");
    let asked = named.queries();
    for name in ["rsa1._domainkey.example.com", "ed1._domainkey.example.com"] {
        assert!(
            asked
                .iter()
                .any(|q| q.contains(&format!("query: {name} IN TXT"))),
            "{name} was looked up in DNS:\n{}",
            asked.join("\n")
        );
    }

    // Tampered body: the body hash no longer matches.
    let tampered = text(&signed).replace("figures are attached", "figures are wrong");
    let out = verify(&["--domain", "example.com"], tampered.as_bytes());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for selector in ["rsa1", "ed1"] {
        assert!(
            row(&stdout, selector).contains("the body changed after signing"),
            "{stdout}"
        );
    }
    assert!(stdout.contains("2 of 2 signatures do not pass"), "{stdout}");

    // Tampered signed header: the signature itself fails.
    let tampered = text(&signed).replace("quarterly figures", "annual figures");
    let out = verify(&["--domain", "example.com"], tampered.as_bytes());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for selector in ["rsa1", "ed1"] {
        assert!(
            row(&stdout, selector).contains("fail: the signature does not verify"),
            "{stdout}"
        );
    }
    assert!(stdout.contains("dkim=fail"), "{stdout}");

    // Unsigned.
    let out = verify(&[], MESSAGE);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the message is not signed"), "{stdout}");

    // The same signed message checks against keygen's files without DNS, before publishing.
    let out = signet(
        &[
            "verify",
            "--keys",
            keys.to_str().unwrap(),
            "--domain",
            "example.com",
        ],
        &signed,
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
}
