//! `signet-milter check --dns` against a real authoritative server: BIND 9's `named`
//! (`tests/common/dns.rs`) on 127.0.0.1, answering at most 512 bytes over UDP so that large
//! records travel over TCP, as they do in real life. The per-record verdicts (malformed,
//! ambiguous, SERVFAIL, …) are unit tests of `src/dns_check.rs` behind its `TxtLookup` seam.

mod common;

use common::dns::{Named, Zone};
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use std::path::Path;
use std::process::{Command, Output};

fn check_dns(config: &Path, server: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args([
            "check",
            "-c",
            config.to_str().unwrap(),
            "--dns",
            "--dns-server",
            server,
        ])
        .output()
        .unwrap()
}

/// The output line for `name`.
fn row<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
}

/// The TXT value keygen wrote for a key.
fn value(keys: &Path, domain: &str, selector: &str) -> String {
    std::fs::read_to_string(keys.join(domain).join(format!("{selector}.dns")))
        .unwrap()
        .trim()
        .to_string()
}

const TABLE: &str = r#"
[domain."example.com"]
selector = "s1"
additional_signatures = ["ed25519"]

[domain."example.org"]
selector = "s1"
additional_signatures = ["ed25519"]

[domain."big.example"]
selector = "s1"

[domain."missing.example"]
selector = "s1"

[domain."rotated.example"]
selector = "s1"

[domain."*.wild.example"]
selector = "w1"

[base]
additional_signatures = ["esp"]

[signature."ed25519"]
domain = "{domain}"
selector = "ed1"
algo = "ed25519"

[signature."esp"]
domain = "esp.example"
selector = "esp1"
"#;

#[test]
fn check_dns_compares_every_planned_key_with_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let write = |domain: &str, selector: &str, kind: KeyKind| {
        write_key_files(&keys, domain, selector, &generate(kind).unwrap()).unwrap();
    };
    for domain in ["example.com", "example.org"] {
        write(domain, "s1", KeyKind::Rsa2048);
        write(domain, "ed1", KeyKind::Ed25519);
    }
    write("big.example", "s1", KeyKind::Rsa3072);
    write("missing.example", "s1", KeyKind::Ed25519);
    write("rotated.example", "s1", KeyKind::Ed25519);
    write("esp.example", "esp1", KeyKind::Ed25519);
    let old_key = generate(KeyKind::Ed25519).unwrap().key.dns_record();

    let big = value(&keys, "big.example", "s1");
    assert!(big.len() > 512, "only TCP can carry it");
    let named = Named::builder()
        .zone(
            Zone::new("example.com")
                .txt("s1._domainkey", &value(&keys, "example.com", "s1"))
                .txt("ed1._domainkey", &value(&keys, "example.com", "ed1")),
        )
        .zone(
            Zone::new("example.org")
                .txt("s1._domainkey", &value(&keys, "example.org", "s1"))
                .txt("ed1._domainkey", &value(&keys, "example.org", "ed1")),
        )
        .zone(Zone::new("big.example").txt("s1._domainkey", &big))
        .zone(Zone::new("missing.example"))
        .zone(Zone::new("rotated.example").txt("s1._domainkey", &old_key))
        .zone(Zone::new("esp.example").txt("esp1._domainkey", &value(&keys, "esp.example", "esp1")))
        .max_udp_size(512)
        .start();
    let server = named.addr().to_string();

    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!("[keys]\ndirectory = \"{}\"\n{TABLE}", keys.display()),
    )
    .unwrap();
    let out = check_dns(&config, &server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("DNS ({server}):")),
        "names the server asked: {stdout}"
    );
    let expect = [
        ("s1._domainkey.example.com", "ok (TXT in 2 strings)"),
        ("ed1._domainkey.example.com", "ok"),
        // The {domain} Ed25519 signature, expanded for the second domain too.
        ("s1._domainkey.example.org", "ok (TXT in 2 strings)"),
        ("ed1._domainkey.example.org", "ok"),
        ("s1._domainkey.big.example", "ok (TXT in 3 strings)"),
        ("esp1._domainkey.esp.example", "ok"),
        ("s1._domainkey.missing.example", "MISSING: no TXT record"),
        (
            "s1._domainkey.rotated.example",
            "MISMATCH: the published key",
        ),
        ("w1._domainkey.*.wild.example", "not checked"),
    ];
    for (name, status) in expect {
        let line = row(&stdout, name);
        assert!(
            line.contains(status),
            "{name}: expected {status:?} in {line:?}"
        );
    }
    // Only the entries that list the Ed25519 signature get it.
    assert!(!stdout.contains("ed1._domainkey.big.example"), "{stdout}");
    for fixable in ["missing.example", "rotated.example"] {
        assert!(
            stdout.contains(&format!("publish for s1._domainkey.{fixable}:")),
            "{fixable}: {stdout}"
        );
    }
    assert!(stdout.contains("2 of 9 DNS records not right"), "{stdout}");
    // BIND logs each query's flags after the type: "+E(0)TK" — T is TCP.
    let over_tcp = |q: &String| {
        q.split_once("s1._domainkey.big.example IN TXT ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|flags| flags.contains('T'))
    };
    let big_over_tcp = named.queries().iter().any(over_tcp);
    assert!(
        big_over_tcp,
        "the truncated UDP answer was asked again over TCP:\n{}",
        named.queries().join("\n")
    );

    // Everything that is published right, alone: exit 0.
    std::fs::write(
        &config,
        format!(
            "[keys]\ndirectory = \"{}\"\n[domain.\"example.com\"]\nselector = \"s1\"\n\
             [domain.\"big.example\"]\nselector = \"s1\"\n",
            keys.display()
        ),
    )
    .unwrap();
    let out = check_dns(&config, &server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(row(&stdout, "s1._domainkey.big.example").contains("ok"));
}

/// Nothing listens at the address: the first lookup says so and what to check, the rest are
/// not asked (one wait, not one per record).
#[test]
fn an_unreachable_server_is_named_and_asked_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let mut table = format!("[keys]\ndirectory = \"{}\"\n", keys.display());
    for i in 0..3 {
        let domain = format!("d{i}.example");
        write_key_files(&keys, &domain, "s1", &generate(KeyKind::Ed25519).unwrap()).unwrap();
        table.push_str(&format!("[domain.\"{domain}\"]\nselector = \"s1\"\n"));
    }
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(&config, table).unwrap();
    // A port nobody listens on: bound, then closed.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    let out = check_dns(&config, &server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let first = row(&stdout, "s1._domainkey.d0.example");
    assert!(
        first.contains("LOOKUP FAILED: ") && first.contains(&server),
        "{first}"
    );
    assert!(first.contains("is a DNS server running there"), "{first}");
    for name in ["s1._domainkey.d1.example", "s1._domainkey.d2.example"] {
        assert!(
            row(&stdout, name).contains(&format!("NOT LOOKED UP: {server} did not answer")),
            "{stdout}"
        );
    }
}

#[test]
fn dns_server_needs_dns_and_a_valid_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(&config, "").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_signet-milter"))
            .args(["check", "-c", config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--dns-server", "127.0.0.1:5300"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dns"));
    let out = run(&["--dns", "--dns-server", "dns.example"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an IP address or IP:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
