//! Strict values: every setting with a fixed set of values (or a fixed form) is refused at load
//! when it has another, with its line and what to write instead; the documented spellings load.

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("strict.toml"))
}

/// A key source needs a [domain] around it.
fn in_domain(line: &str) -> String {
    format!("[domain.\"a.example\"]\nselector = \"s\"\n{line}\n")
}

#[test]
fn a_wrong_enumerated_value_is_refused_with_its_line_and_the_accepted_values() {
    let cases: Vec<(String, usize, &[&str])> = vec![
        (
            "[log]\nlevel = \"verbose\"\n".into(),
            2,
            &["\"verbose\" is not a log level", "\"info\"", "\"debug\"", "a filter such as"],
        ),
        (
            "[log]\nlevel = \"info,signet_milter=loud\"\n".into(),
            2,
            &["is not a log level"],
        ),
        ("[log]\nlevel = \"\"\n".into(), 2, &["is not a log level"]),
        (
            "[log]\nformat = \"xml\"\n".into(),
            2,
            &["\"xml\" is not a log format: write \"text\" or \"json\""],
        ),
        (
            "[milter]\non_error = \"bounce\"\n".into(),
            2,
            &["\"bounce\" is not an on_error action: write \"tempfail\", \"accept\" or \"reject\""],
        ),
        (
            in_domain("on_error = \"drop\""),
            3,
            &["\"drop\" is not an on_error action"],
        ),
        (
            "[base]\nheader_canonicalization = \"loose\"\n".into(),
            2,
            &["\"loose\" is not a canonicalization: write \"Relaxed\" or \"Simple\""],
        ),
        (
            "[base]\nbody_canonicalization = \"relaxed/simple\"\n".into(),
            2,
            &["\"relaxed/simple\" is not a canonicalization"],
        ),
        (
            "[signature.\"x\"]\ndomain = \"a.example\"\nselector = \"s\"\npolicy = \"Sometimes\"\n"
                .into(),
            4,
            &["\"Sometimes\" is not a signature policy: write \"Always\" or \"OnlyIfMissingDomainBlock\""],
        ),
        (
            in_domain("algo = \"rsa-sha1\""),
            3,
            &["\"rsa-sha1\" is not an algorithm", "\"sha256\"", "\"ed25519\""],
        ),
        (
            "[base]\nalgo = 256\n".into(),
            2,
            &["expected an algorithm", "\"sha256\""],
        ),
        (
            "[vault]\nkv_version = 3\n".into(),
            2,
            &["kv_version must be 1 or 2", "not 3"],
        ),
        (
            in_domain("key = { vault_mount = \"m\", vault_path = \"p\", kv_version = \"v3\" }"),
            3,
            &["kv_version must be 1 or 2", "not \"v3\""],
        ),
        (
            "[milter]\nsocket_mode = \"0999\"\n".into(),
            2,
            &["octal permissions such as \"0660\""],
        ),
        (
            "[milter]\nsocket_mode = 660\n".into(),
            2,
            &["in quotes, such as socket_mode = \"0660\", not the number 660"],
        ),
        (
            "[milter]\nsocket_mode = 0660\n".into(),
            2,
            &["leading zero", "write octal modes in quotes"],
        ),
        (
            "[milter]\ntrusted_networks = [\"127.0.0.0/8\", \"10.0.0.0/33\"]\n".into(),
            2,
            &["\"10.0.0.0/33\" is not a network", "\"192.0.2.0/24\""],
        ),
        (
            "[milter]\ntrusted_networks = [\"localhost\"]\n".into(),
            2,
            &["\"localhost\" is not a network"],
        ),
        (
            "[milter]\n\nmax_connections = 0\n".into(),
            3,
            &["max_connections must be between 1 and 1048576, not 0"],
        ),
        (
            "[cache]\ncapacity = 0\n".into(),
            2,
            &["capacity must be at least 1 (leave it out"],
        ),
        (
            "[log]\nlevel = info\n".into(),
            2,
            &["text values are quoted in TOML: write \"info\""],
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:8891\"\n[vault]\ntoken = \"a\"\ntoken_file = \"/b\"\n".into(),
            3,
            &["[vault] set token or token_file, not both"],
        ),
    ];
    for (text, line, wanted) in cases {
        let shown = match load(&text) {
            Ok(_) => panic!("should be refused:\n{text}"),
            Err(e) => e.to_string(),
        };
        assert!(
            shown.starts_with(&format!("strict.toml:{line}:")),
            "wrong line for {text:?}: {shown}"
        );
        for part in wanted {
            assert!(
                shown.contains(part),
                "{part:?} missing for {text:?}: {shown}"
            );
        }
    }
}

#[test]
fn the_documented_spellings_load() {
    let c = load(
        r#"
        [milter]
        socket_mode = "0640"
        trusted_networks = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
        on_error = "accept"
        [log]
        level = "info,signet_milter=debug"
        format = "json"
        [vault]
        kv_version = 1
        [base]
        header_canonicalization = "Simple"
        body_canonicalization = "relaxed"
        algo = "ed25519"
        [domain."a.example"]
        selector = "s"
        key = { vault_mount = "m", vault_path = "p", kv_version = 2 }
        [domain."b.example"]
        selector = "s"
        algo = "sha256"
        key = { vault_mount = "m", vault_path = "p", kv_version = "2" }
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.milter.socket_mode, SocketMode(0o640));
    assert_eq!(c.milter.on_error, OnError::Accept);
    let single: IpNet = "198.51.100.7/32".parse().unwrap();
    assert_eq!(c.milter.trusted_networks[2], single);
    assert_eq!(c.log.level.as_str(), "info,signet_milter=debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.keys.vault.kv_version, Some(keysource::KvVersion::V1));
    let (a, _) = c.signing.lookup("a.example").unwrap();
    assert_eq!(a.header_canonicalization, Canon::Simple);
    assert_eq!(a.body_canonicalization, Canon::Relaxed);
    assert_eq!(a.algo, Some(Algo::Ed25519Sha256));
    for domain in ["a.example", "b.example"] {
        let (entry, _) = c.signing.lookup(domain).unwrap();
        match &entry.key {
            keysource::KeySource::Vault(v) => {
                assert_eq!(v.kv_version, Some(keysource::KvVersion::V2), "{domain}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn levels_and_filters() {
    for good in [
        "info",
        "WARN",
        "off",
        "trace",
        "info,signet_milter=debug",
        "signet_milter=trace",
    ] {
        assert!(LogLevel::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "verbose",
        "",
        "info,",
        "=debug",
        "signet_milter",
        "info,noisy=loud",
    ] {
        assert!(LogLevel::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn an_unreadable_file_is_reported_once() {
    let err = Config::load(Path::new("/nonexistent/signet.toml")).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(
        chain.matches("No such file or directory").count(),
        1,
        "{chain}"
    );
    assert!(
        chain.starts_with("/nonexistent/signet.toml: cannot read: "),
        "{chain}"
    );
}
