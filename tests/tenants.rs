//! Tenant authorization: which author domains an SMTP-authenticated login may sign for.
//!
//! One table of cases drives both front ends: each case goes through the milter over the real
//! milter protocol (in-process) and through `signet-milter explain` (the binary) with the same
//! configuration file, and both must give the expected outcome — so `explain` cannot disagree
//! with the milter. Every signed message is verified by mail-auth, dkimpy and libopendkim.

mod common;

use common::{Message, TestMilter, assert_verifies_everywhere, send};
use indymilter_test::Status;
use signet_milter::keys::generate::KeyKind;
use signet_milter::server;
use std::net::IpAddr;
use std::path::Path;

/// Two tenants, a wildcard for tenant-b's subdomains, and an ESP signature on every message.
const TABLE: &str = r#"
[base]
selector = "s1"
additional_signatures = ["esp"]
[domain."tenant-a.example"]
[domain."tenant-b.example"]
[domain."*.tenant-b.example"]
[signature."esp"]
domain = "esp.example"
policy = "Always"
"#;

const KEYS: &[(&str, &str, KeyKind)] = &[
    ("tenant-a.example", "s1", KeyKind::Rsa2048),
    ("tenant-b.example", "s1", KeyKind::Ed25519),
    ("mail.tenant-b.example", "s1", KeyKind::Ed25519),
    ("esp.example", "s1", KeyKind::Ed25519),
];

const TENANT_A: &str = "tenant-a.example:s1";
const TENANT_B: &str = "tenant-b.example:s1";
const SUB_B: &str = "mail.tenant-b.example:s1";
const ESP: &str = "esp.example:s1";
const OUTSIDER: &str = "203.0.113.5";

/// What became of a message, as the milter did it or as `explain` says it would.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Accepted unsigned at MAIL FROM.
    Untrusted,
    /// Accepted unsigned after the headers.
    NotSigned,
    /// Signed with these `d:s`, sorted.
    Signed(Vec<String>),
    /// Refused with this code and enhanced code (`550 5.7.1`).
    Refused(String),
}

fn signed(sigs: &[&str]) -> Outcome {
    let mut sigs: Vec<String> = sigs.iter().map(|s| s.to_string()).collect();
    sigs.sort();
    Outcome::Signed(sigs)
}

fn refused(code: &str) -> Outcome {
    Outcome::Refused(code.to_string())
}

/// One message: who sends it, as what.
struct Case {
    name: &'static str,
    client: &'static str,
    login: Option<&'static str>,
    /// `{auth_type}` without `{auth_authen}`.
    mechanism_only: bool,
    daemon: Option<&'static str>,
    from: &'static str,
    want: Outcome,
}

fn case(name: &'static str, login: &'static str, from: &'static str, want: Outcome) -> Case {
    Case {
        name,
        client: OUTSIDER,
        login: Some(login),
        mechanism_only: false,
        daemon: None,
        from,
        want,
    }
}

/// Runs every case through the milter and through `explain`, with `authorization` (the
/// `[authorization]` section, and `[callbacks]` it needs) added to the table.
async fn run_cases(authorization: &str, cases: &[Case]) {
    let milter = TestMilter::start(
        KEYS,
        "trusted_daemon_names = [\"ORIGINATING\"]",
        &format!("{TABLE}\n{authorization}"),
    )
    .await;
    check_cases(&milter, cases).await;
    milter.stop().await;
}

async fn check_cases(milter: &TestMilter, cases: &[Case]) {
    let config = milter.dir.path().join("signet-milter.toml");
    for case in cases {
        let message = Message::simple(case.from);
        let (by_milter, inserted) = through_milter(milter, case, &message).await;
        assert_eq!(by_milter, case.want, "milter, case {:?}", case.name);
        let (by_explain, text) = through_explain(&config, case, &message);
        assert_eq!(
            by_explain, case.want,
            "explain, case {:?}:\n{text}",
            case.name
        );
        if let Outcome::Signed(sigs) = &case.want {
            let expect: Vec<(&str, &str)> = sigs.iter().filter_map(|s| s.split_once(':')).collect();
            assert_verifies_everywhere(&message.delivered(&inserted), &milter.keys_dir(), &expect)
                .await;
        }
    }
}

async fn through_milter(
    milter: &TestMilter,
    case: &Case,
    message: &Message,
) -> (Outcome, Vec<(String, String)>) {
    let client: IpAddr = case.client.parse().unwrap();
    let mut conn = milter.connect(client).await;
    let mut macros = Vec::new();
    if let Some(login) = case.login {
        macros.push(("{auth_authen}", login));
    }
    if case.login.is_some() || case.mechanism_only {
        macros.push(("{auth_type}", "PLAIN"));
    }
    if let Some(daemon) = case.daemon {
        macros.push(("{daemon_name}", daemon));
    }
    let sent = send(&mut conn, &macros, message).await;
    let outcome = match (&sent.status, sent.stopped_at) {
        (Status::Accept, Some("mail")) => Outcome::Untrusted,
        (Status::Accept, _) => Outcome::NotSigned,
        (Status::Continue, None) if sent.inserted.is_empty() => Outcome::NotSigned,
        (Status::Continue, None) => {
            let mut sigs: Vec<String> = sent.inserted.iter().map(|(_, v)| d_and_s(v)).collect();
            sigs.sort();
            Outcome::Signed(sigs)
        }
        (Status::Reject { message } | Status::Tempfail { message }, _) => {
            let text = message
                .as_ref()
                .map(|m| m.to_string_lossy().into_owned())
                .unwrap_or_default();
            Outcome::Refused(text.chars().take(9).collect())
        }
        other => panic!("case {:?}: unexpected {other:?}", case.name),
    };
    (outcome, sent.inserted)
}

/// `d:s` of a DKIM-Signature value.
fn d_and_s(value: &str) -> String {
    let tag = |name: &str| {
        value
            .split(';')
            .filter_map(|t| t.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    format!("{}:{}", tag("d"), tag("s"))
}

fn through_explain(config: &Path, case: &Case, message: &Message) -> (Outcome, String) {
    let mut args = vec![
        "explain".to_string(),
        "-c".into(),
        config.to_str().unwrap().into(),
        "--client-ip".into(),
        case.client.into(),
    ];
    if let Some(login) = case.login {
        args.extend(["--auth".into(), login.into()]);
    }
    if case.mechanism_only {
        args.extend(["--auth-type".into(), "PLAIN".into()]);
    }
    if let Some(daemon) = case.daemon {
        args.extend(["--daemon-name".into(), daemon.into()]);
    }
    let out = common::run_signet(&args, &message.delivered(&[]));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
            .to_string()
    };
    let milter = line("milter: ");
    let outcome = if milter.starts_with("accept at MAIL FROM") {
        Outcome::Untrusted
    } else if milter.starts_with("accept") {
        Outcome::NotSigned
    } else if let Some(reply) = milter
        .strip_prefix("reject: ")
        .or_else(|| milter.strip_prefix("tempfail: "))
    {
        Outcome::Refused(reply.chars().take(9).collect())
    } else {
        let result = line("result: signed: ");
        let mut sigs: Vec<String> = result
            .split(", ")
            .map(|s| s.split_whitespace().next().unwrap().replace('/', ":"))
            .collect();
        sigs.sort();
        Outcome::Signed(sigs)
    };
    let want_exit = if matches!(outcome, Outcome::Signed(_)) {
        0
    } else {
        1
    };
    assert_eq!(out.status.code(), Some(want_exit), "{text}");
    (outcome, text)
}

#[tokio::test]
async fn by_default_a_login_signs_only_for_its_own_domain() {
    run_cases(
        "",
        &[
            case(
                "own domain",
                "alice@tenant-a.example",
                "Alice <billing@tenant-a.example>",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "logins compare case-insensitively",
                "Alice@Tenant-A.Example",
                "alice@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "another tenant's domain: only the operator's signature",
                "bob@tenant-b.example",
                "Billing <billing@tenant-a.example>",
                signed(&[ESP]),
            ),
            case(
                "a subdomain needs subdomains = true",
                "bob@tenant-b.example",
                "bob@mail.tenant-b.example",
                signed(&[ESP]),
            ),
            case(
                "a bare login has no domain of its own",
                "alice",
                "alice@tenant-a.example",
                signed(&[ESP]),
            ),
            case(
                "the operator's own domain: its fixed d= would align, so it is left out",
                "bob@tenant-b.example",
                "ceo@esp.example",
                Outcome::NotSigned,
            ),
            case(
                "a subdomain of the operator's domain aligns too",
                "bob@tenant-b.example",
                "news@mail.esp.example",
                Outcome::NotSigned,
            ),
            case(
                "several authors: none signed, the aligned fixed d= left out",
                "alice@tenant-a.example",
                "alice@tenant-a.example, ceo@esp.example",
                Outcome::NotSigned,
            ),
            case(
                "a domain with no entry gets the operator's signature",
                "bob@tenant-b.example",
                "bob@elsewhere.example",
                signed(&[ESP]),
            ),
            Case {
                name: "an MTA that reports no login name",
                login: None,
                mechanism_only: true,
                ..case("", "", "alice@tenant-a.example", signed(&[ESP]))
            },
            Case {
                name: "trusted networks are not held to [authorization]",
                client: "127.0.0.1",
                login: None,
                ..case("", "", "billing@tenant-a.example", signed(&[TENANT_A, ESP]))
            },
            Case {
                name: "nor are trusted daemon names",
                login: None,
                daemon: Some("ORIGINATING"),
                ..case("", "", "billing@tenant-a.example", signed(&[TENANT_A, ESP]))
            },
            Case {
                name: "an outsider is not signed at all",
                login: None,
                ..case("", "", "billing@tenant-a.example", Outcome::Untrusted)
            },
            Case {
                name: "an authenticated login on a trusted network is still held to it",
                client: "127.0.0.1",
                ..case(
                    "",
                    "bob@tenant-b.example",
                    "billing@tenant-a.example",
                    signed(&[ESP]),
                )
            },
        ],
    )
    .await;
}

#[tokio::test]
async fn subdomains_and_bare_logins_when_the_operator_says_so() {
    run_cases(
        "[authorization]\nsubdomains = true\nbare_login_domain = \"tenant-a.example\"\n",
        &[
            case(
                "a subdomain of the login's domain",
                "bob@tenant-b.example",
                "bob@mail.tenant-b.example",
                signed(&[SUB_B, ESP]),
            ),
            case(
                "a bare login counts as bare_login_domain",
                "alice",
                "alice@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "and no further",
                "alice",
                "alice@tenant-b.example",
                signed(&[ESP]),
            ),
            case(
                "a parent domain is not a subdomain",
                "bob@mail.tenant-b.example",
                "bob@tenant-b.example",
                signed(&[ESP]),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn any_login_signs_for_any_domain_only_when_written() {
    run_cases(
        "[authorization]\nmode = \"any\"\n",
        &[
            case(
                "another tenant's domain",
                "bob@tenant-b.example",
                "billing@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "a bare login",
                "carol",
                "x@tenant-b.example",
                signed(&[TENANT_B, ESP]),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn unauthorized_mail_is_rejected_or_tempfailed_when_asked() {
    run_cases(
        "[authorization]\non_unauthorized = \"reject\"\n",
        &[
            case(
                "another tenant's domain",
                "bob@tenant-b.example",
                "billing@tenant-a.example",
                refused("550 5.7.1"),
            ),
            case(
                "the operator's own domain",
                "bob@tenant-b.example",
                "ceo@esp.example",
                refused("550 5.7.1"),
            ),
            case(
                "its own domain is still signed",
                "alice@tenant-a.example",
                "billing@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
        ],
    )
    .await;
    run_cases(
        "[authorization]\non_unauthorized = \"tempfail\"\n",
        &[case(
            "another tenant's domain",
            "bob@tenant-b.example",
            "billing@tenant-a.example",
            refused("451 4.7.1"),
        )],
    )
    .await;
}

#[tokio::test]
async fn grants_from_the_toml_and_a_postfix_login_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("sender_login_maps");
    std::fs::write(
        &map,
        "# address-or-@domain   login, login\n\
         @tenant-b.example        dave@partner.example\n\
         billing@tenant-a.example bob@tenant-b.example\n",
    )
    .unwrap();
    let authorization = format!(
        "[authorization]\nlogin_map = \"{}\"\n[authorization.logins]\n\"carol\" = [\"tenant-a.example\"]\n",
        map.display()
    );
    run_cases(
        &authorization,
        &[
            case(
                "a bare login granted in the TOML",
                "carol",
                "carol@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "a login granted @domain in the map file",
                "dave@partner.example",
                "dave@tenant-b.example",
                signed(&[TENANT_B, ESP]),
            ),
            case(
                "one address granted in the map file",
                "bob@tenant-b.example",
                "billing@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "but not the rest of that domain",
                "bob@tenant-b.example",
                "ceo@tenant-a.example",
                signed(&[ESP]),
            ),
            case(
                "the own-domain rule still applies",
                "bob@tenant-b.example",
                "bob@tenant-b.example",
                signed(&[TENANT_B, ESP]),
            ),
        ],
    )
    .await;
    run_cases(
        &authorization.replace("[authorization]\n", "[authorization]\nmode = \"map\"\n"),
        &[case(
            "mode = map: the own domain counts for nothing",
            "bob@tenant-b.example",
            "bob@tenant-b.example",
            signed(&[ESP]),
        )],
    )
    .await;
}

#[tokio::test]
async fn grants_from_the_operators_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenants.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "create table grants (login text, domain text);
         insert into grants values ('erin@partner.example', 'tenant-a.example');",
    )
    .unwrap();
    drop(conn);
    let authorization = format!(
        "[callbacks.\"tenants\"]\nsqlite = \"{}\"\n\
         query = \"select 1 from grants where login = ?1 and domain = ?2\"\n\
         [authorization]\ncallback = {{ event_name = \"tenants\", event_args = [\"{{login}}\", \"{{domain}}\"] }}\n",
        db.display()
    );
    run_cases(
        &authorization,
        &[
            case(
                "a row grants it",
                "erin@partner.example",
                "erin@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
            case(
                "no row: not granted",
                "erin@partner.example",
                "erin@tenant-b.example",
                signed(&[ESP]),
            ),
            case(
                "the own domain needs no question",
                "alice@tenant-a.example",
                "alice@tenant-a.example",
                signed(&[TENANT_A, ESP]),
            ),
        ],
    )
    .await;
    // A database that cannot be read: on_error (tempfail), never signed as if it had said yes.
    std::fs::remove_file(&db).unwrap();
    run_cases(
        &authorization.replace("[authorization]\n", "[authorization]\ncache_ttl = 0\n"),
        &[case(
            "the question cannot be answered",
            "erin@partner.example",
            "erin@tenant-a.example",
            refused("451 4.3.0"),
        )],
    )
    .await;
}

#[tokio::test]
async fn grants_from_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("may-sign");
    std::fs::write(
        &script,
        "#!/bin/sh\n# may-sign LOGIN ADDRESS DOMAIN\n\
         [ \"$1 $3\" = \"frank@partner.example tenant-b.example\" ] && exit 0\n\
         [ \"$3\" = \"broken.tenant-b.example\" ] && exit 3\n\
         exit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let authorization = format!(
        "[callbacks.\"may-sign\"]\ncommand = [\"{}\"]\n\
         [authorization]\ncallback = {{ event_name = \"may-sign\", event_args = [\"{{login}}\", \"{{address}}\", \"{{domain}}\"] }}\n",
        script.display()
    );
    run_cases(
        &authorization,
        &[
            case(
                "exit 0 grants it",
                "frank@partner.example",
                "frank@tenant-b.example",
                signed(&[TENANT_B, ESP]),
            ),
            case(
                "exit 1 does not",
                "frank@partner.example",
                "frank@tenant-a.example",
                signed(&[ESP]),
            ),
            case(
                "any other exit is an error: on_error",
                "frank@partner.example",
                "x@broken.tenant-b.example",
                refused("451 4.3.0"),
            ),
        ],
    )
    .await;
}

/// What SIGHUP does (`server::reload`): the login map is read again; a map with a bad line is
/// refused and the running one stays.
#[tokio::test]
async fn the_login_map_is_reread_on_reload() {
    let milter = TestMilter::start(KEYS, "", TABLE).await;
    let dir = milter.dir.path();
    let config_path = dir.join("signet-milter.toml");
    let map = dir.join("logins");
    std::fs::write(&map, "@tenant-b.example dave@partner.example\n").unwrap();
    let base = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        format!("{base}\n[authorization]\nlogin_map = \"logins\"\n"),
    )
    .unwrap();
    assert!(server::reload(&config_path, &milter.runtime).await);
    let carol = |want| case("carol", "carol", "carol@tenant-a.example", want);
    check_cases(&milter, &[carol(signed(&[ESP]))]).await;

    std::fs::write(
        &map,
        "@tenant-b.example dave@partner.example\n@tenant-a.example carol\n",
    )
    .unwrap();
    assert!(server::reload(&config_path, &milter.runtime).await);
    check_cases(&milter, &[carol(signed(&[TENANT_A, ESP]))]).await;

    std::fs::write(&map, "@tenant-a.example carol\nnot-an-address x\n").unwrap();
    assert!(
        !server::reload(&config_path, &milter.runtime).await,
        "a bad map is not loaded"
    );
    let err = signet_milter::config::Config::load(&config_path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2:1: \"not-an-address\"", map.display())),
        "{err}"
    );
    // The milter keeps the last good map; explain, reading the file, says what is wrong.
    let still = carol(signed(&[TENANT_A, ESP]));
    let (outcome, _) = through_milter(&milter, &still, &Message::simple(still.from)).await;
    assert_eq!(outcome, still.want);
    let out = common::run_signet(&["explain", "-c", config_path.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2), "an error is exit status 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("logins:2:1:"));
    let metrics = &milter.runtime.load().env.metrics;
    // Counted by the milter (explain runs in processes of its own).
    assert_eq!(
        (
            metrics.authorizations("denied"),
            metrics.authorizations("granted")
        ),
        (1, 2)
    );
    milter.stop().await;
}
