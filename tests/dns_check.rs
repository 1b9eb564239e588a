//! `signet-milter check --dns --dns-server 127.0.0.1:PORT` against a small authoritative DNS
//! server started by the test on 127.0.0.1 (UDP and TCP, ports 5300-5399). Like a classic
//! server it answers at most 512 bytes over UDP and sets TC beyond that, so large records
//! travel over TCP, as they do in real life.

use mail_auth::hickory_resolver::proto::op::{Message, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::TXT;
use mail_auth::hickory_resolver::proto::rr::{RData, Record, RecordType};
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// TXT records by lowercase name without the final dot; each record is a list of strings.
type Zone = HashMap<String, Vec<Vec<Vec<u8>>>>;

/// Names the server answers with SERVFAIL.
const SERVFAIL_NAME: &str = "s1._domainkey.broken.example";
const UDP_LIMIT: usize = 512;

fn answer(request: &[u8], zone: &Zone, limit: usize) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    let name = query.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    match zone.get(name) {
        _ if name == SERVFAIL_NAME => response.metadata.response_code = ResponseCode::ServFail,
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(records) if query.query_type() == RecordType::TXT => {
            for strings in records {
                let txt = TXT::from_bytes(strings.iter().map(Vec::as_slice).collect());
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::TXT(txt),
                ));
            }
        }
        Some(_) => {} // the name exists, but has no data of this type
    }
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.answers.clear();
    response.metadata.truncation = true;
    response.to_vec().ok()
}

/// The server's address, and how many queries came over TCP.
struct DnsServer {
    addr: SocketAddr,
    tcp_queries: Arc<AtomicUsize>,
}

/// Starts the server on the first free port of 127.0.0.1:5300-5399 (UDP and TCP).
fn start_dns_server(zone: Zone) -> DnsServer {
    let zone = Arc::new(zone);
    let (udp, tcp) = (5300..5400)
        .find_map(|port| {
            let udp = UdpSocket::bind(("127.0.0.1", port)).ok()?;
            let tcp = TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some((udp, tcp))
        })
        .expect("a free port in 5300-5399 on 127.0.0.1");
    let addr = udp.local_addr().unwrap();
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let counter = tcp_queries.clone();
    let udp_zone = zone.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            if let Some(reply) = answer(&buf[..n], &udp_zone, UDP_LIMIT) {
                let _ = udp.send_to(&reply, peer);
            }
        }
    });
    std::thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { continue };
            let zone = zone.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                while stream.read_exact(&mut len).is_ok() {
                    let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut request).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Some(reply) = answer(&request, &zone, usize::from(u16::MAX)) else {
                        return;
                    };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).is_err() {
                        return;
                    }
                }
            });
        }
    });
    DnsServer { addr, tcp_queries }
}

/// The TXT value of a key written by keygen, split into 255-byte strings like a zone file.
fn published(keys: &Path, domain: &str, selector: &str) -> Vec<Vec<u8>> {
    let value = std::fs::read_to_string(keys.join(domain).join(format!("{selector}.dns"))).unwrap();
    value
        .trim()
        .as_bytes()
        .chunks(255)
        .map(<[u8]>::to_vec)
        .collect()
}

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

const TABLE: &str = r#"
[domain."example.com"]
selector = "s1"
additional_signatures = ["ed25519"]

[domain."big.example"]
selector = "s1"

[domain."missing.example"]
selector = "s1"

[domain."rotated.example"]
selector = "s1"

[domain."mangled.example"]
selector = "s1"

[domain."twice.example"]
selector = "s1"

[domain."broken.example"]
selector = "s1"

[domain."*.wild.example"]
selector = "w1"

[signature."ed25519"]
domain = "{domain}"
selector = "ed1"
algo = "ed25519"

[signature."esp"]
domain = "esp.example"
selector = "esp1"
"#;

#[test]
fn check_dns_reports_each_published_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let write = |domain: &str, selector: &str, kind: KeyKind| {
        write_key_files(&keys, domain, selector, &generate(kind).unwrap()).unwrap();
    };
    write("example.com", "s1", KeyKind::Rsa2048);
    write("example.com", "ed1", KeyKind::Ed25519);
    write("big.example", "s1", KeyKind::Rsa3072);
    for domain in [
        "missing.example",
        "rotated.example",
        "mangled.example",
        "twice.example",
        "broken.example",
        "esp.example",
    ] {
        let selector = if domain == "esp.example" {
            "esp1"
        } else {
            "s1"
        };
        write(domain, selector, KeyKind::Ed25519);
    }
    let old_key = generate(KeyKind::Ed25519).unwrap().key.dns_record();

    let mut zone = Zone::new();
    let mut publish = |name: &str, records: Vec<Vec<Vec<u8>>>| {
        zone.insert(name.to_string(), records);
    };
    let rsa = published(&keys, "example.com", "s1");
    assert_eq!(rsa.len(), 2, "an RSA-2048 record needs two strings");
    publish("s1._domainkey.example.com", vec![rsa]);
    publish(
        "ed1._domainkey.example.com",
        vec![published(&keys, "example.com", "ed1")],
    );
    let big = published(&keys, "big.example", "s1");
    assert!(big.concat().len() > UDP_LIMIT, "only TCP can carry it");
    publish("s1._domainkey.big.example", vec![big]);
    publish("s1._domainkey.rotated.example", vec![vec![old_key.into()]]);
    publish(
        "s1._domainkey.mangled.example",
        vec![vec![b"v=DKIM1; k=ed25519; p=not base64!".to_vec()]],
    );
    let twice = published(&keys, "twice.example", "s1");
    publish("s1._domainkey.twice.example", vec![twice.clone(), twice]);
    publish(
        "esp1._domainkey.esp.example",
        vec![published(&keys, "esp.example", "esp1")],
    );
    let dns = start_dns_server(zone);
    let server = dns.addr;

    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        format!("[keys]\ndirectory = \"{}\"\n{TABLE}", keys.display()),
    )
    .unwrap();
    let out = check_dns(&config, &server.to_string());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("DNS ({server}):")),
        "names the server asked: {stdout}"
    );

    let expect = [
        ("s1._domainkey.example.com", "ok (TXT in 2 strings)"),
        ("ed1._domainkey.example.com", "ok"),
        ("s1._domainkey.big.example", "ok (TXT in 3 strings)"),
        ("esp1._domainkey.esp.example", "ok"),
        ("s1._domainkey.missing.example", "MISSING: no TXT record"),
        (
            "s1._domainkey.rotated.example",
            "MISMATCH: the published key",
        ),
        (
            "s1._domainkey.mangled.example",
            "MALFORMED: p= is not valid base64",
        ),
        ("s1._domainkey.twice.example", "AMBIGUOUS: 2 TXT records"),
        ("s1._domainkey.broken.example", "LOOKUP FAILED"),
        ("w1._domainkey.*.wild.example", "not checked"),
    ];
    for (name, status) in expect {
        let line = row(&stdout, name);
        assert!(
            line.contains(status),
            "{name}: expected {status:?} in {line:?}"
        );
    }
    // Only the example.com entry asks for the {domain} Ed25519 signature: no ed1 row for the
    // other domains.
    assert!(!stdout.contains("ed1._domainkey.big.example"), "{stdout}");
    // The fix is printed for what publishing would repair, not for the failed lookup.
    for fixable in [
        "missing.example",
        "rotated.example",
        "mangled.example",
        "twice.example",
    ] {
        assert!(
            stdout.contains(&format!("publish for s1._domainkey.{fixable}:")),
            "{fixable}: {stdout}"
        );
    }
    assert!(!stdout.contains("publish for s1._domainkey.broken.example"));
    assert!(stdout.contains("5 of 10 DNS records not right"), "{stdout}");
    assert!(
        dns.tcp_queries.load(Ordering::SeqCst) > 0,
        "the truncated UDP answers were asked again over TCP"
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
    let out = check_dns(&config, &server.to_string());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(row(&stdout, "s1._domainkey.big.example").contains("ok"));
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
