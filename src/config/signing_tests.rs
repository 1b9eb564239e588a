use super::super::Config;
use super::*;
use crate::config::keysource::KeySource;
use std::path::Path;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn table(text: &str) -> SigningTable {
    load(text)
        .unwrap_or_else(|e| panic!("config should load: {e}"))
        .signing
}

#[test]
fn kumomta_example_loads_unchanged() {
    let text = include_str!("../../tests/fixtures/kumomta_dkim_data.toml");
    let t = table(text);
    let (entry, how) = t.lookup("example.com").expect("example.com is configured");
    assert_eq!(how, DomainMatch::Exact);
    assert_eq!(entry.selector, "dkim1024");
    assert_eq!(entry.algo, Some(Algo::RsaSha256));
    assert_eq!(
        entry.key,
        KeySource::File(Template::literal("/full/path/to/key."))
    );
    // From is oversigned by default; the rest once, in the configured order.
    assert_eq!(
        *entry.headers,
        [
            "From",
            "From",
            "To",
            "Subject",
            "Date",
            "MIME-Version",
            "Content-Type",
            "Sender"
        ]
    );
}

#[test]
fn tri_state_merge_most_specific_level_wins() {
    let t = table(
        r#"
        [base]
        selector = "base-sel"
        over_sign = true
        headers = ["From", "Subject"]
        header_canonicalization = "Simple"
        expiration = 3600
        on_error = "reject"

        [domain."a.example"]
        over_sign = false

        [domain."b.example"]
        selector = "b-sel"
        body_canonicalization = "simple"
        expiration = "7d"
        on_error = "accept"
        "#,
    );
    let (a, _) = t.lookup("a.example").unwrap();
    assert_eq!(a.selector, "base-sel");
    assert_eq!(
        *a.headers,
        ["From", "Subject"],
        "a domain's false overrides base's true"
    );
    assert_eq!(a.header_canonicalization, Canon::Simple);
    assert_eq!(a.body_canonicalization, Canon::Relaxed);
    assert_eq!(a.expiration, Some(Duration::from_secs(3600)));
    assert_eq!(a.on_error, OnError::Reject);

    let (b, _) = t.lookup("b.example").unwrap();
    assert_eq!(b.selector, "b-sel");
    assert_eq!(
        *b.headers,
        ["From", "From", "Subject", "Subject"],
        "base over_sign = true"
    );
    assert_eq!(b.body_canonicalization, Canon::Simple);
    assert_eq!(b.expiration, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(b.on_error, OnError::Accept);
}

#[test]
fn wildcard_matching() {
    let t = table(
        r#"
        [base]
        selector = "s"
        [domain."example.com"]
        selector = "exact"
        [domain."*.example.com"]
        selector = "wild"
        [domain."*.deep.example.com"]
        selector = "deeper"
        [domain."*.other.org"]
        selector = "other"
        "#,
    );
    let cases: &[(&str, Option<(&str, DomainMatch)>)] = &[
        ("example.com", Some(("exact", DomainMatch::Exact))),
        ("mail.example.com", Some(("wild", DomainMatch::Wildcard))),
        ("a.b.example.com", Some(("wild", DomainMatch::Wildcard))),
        (
            "x.deep.example.com",
            Some(("deeper", DomainMatch::Wildcard)),
        ),
        ("deep.example.com", Some(("wild", DomainMatch::Wildcard))),
        ("other.org", None), // the apex never matches its wildcard
        ("sub.other.org", Some(("other", DomainMatch::Wildcard))),
        ("notexample.com", None),
        ("example.com.evil", None),
    ];
    for (domain, want) in cases {
        let got = t.lookup(domain).map(|(e, how)| (e.selector.as_str(), how));
        assert_eq!(got, *want, "{domain}");
    }
}

#[test]
fn catch_all_is_the_last_resort() {
    let t = table(
        r#"
        [domain."*"]
        selector = "any"
        [domain."*.example.com"]
        selector = "wild"
        "#,
    );
    assert_eq!(t.lookup("x.example.com").unwrap().0.selector, "wild");
    let (e, how) = t.lookup("elsewhere.net").unwrap();
    assert_eq!((e.selector.as_str(), how), ("any", DomainMatch::CatchAll));
}

#[test]
fn key_sources_from_every_shape() {
    let t = table(
        r#"
        [callbacks."sqlite-keys"]
        sqlite = "/etc/signet-milter/keys.db"
        query = "select data from keys where domain = ?1 and selector = ?2"

        [base]
        selector = "s1"
        [keys]
        directory = "/srv/keys"

        [domain."default.example"]
        [domain."file.example"]
        filename = "/k/{domain}-{selector}.pem"
        [domain."path.example"]
        key = "/k/{selector}.pem"
        [domain."data.example"]
        key = { key_data = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" }
        [domain."vault.example"]
        key = { vault_mount = "secret", vault_path = "dkim/{domain}", vault_key = "private_key" }
        [domain."event.example"]
        key = { event_name = "sqlite-keys", event_args = ["{domain}", "{selector}"] }
        "#,
    );
    let resolved = |d: &str| {
        let (e, _) = t.lookup(d).unwrap();
        e.key.resolve(d, &e.selector).to_string()
    };
    assert_eq!(
        resolved("default.example"),
        "file /srv/keys/default.example/s1.key"
    );
    assert_eq!(resolved("file.example"), "file /k/file.example-s1.pem");
    assert_eq!(resolved("path.example"), "file /k/s1.pem");
    assert_eq!(resolved("data.example"), "inline key_data");
    assert_eq!(
        resolved("vault.example"),
        "vault secret/dkim/vault.example field private_key"
    );
    assert_eq!(
        resolved("event.example"),
        "callback sqlite-keys(event.example, s1)"
    );
}

#[test]
fn kumomta_base_vault_mode() {
    let t = table(
        r#"
        [base]
        selector = "s1"
        vault_mount = "kv"
        vault_path_prefix = "mail/dkim"
        [domain."a.example"]
        [domain."b.example"]
        filename = "custom/b"
        [domain."c.example"]
        key = "/etc/c.key"
        "#,
    );
    let resolved = |d: &str| {
        let (e, _) = t.lookup(d).unwrap();
        e.key.resolve(d, &e.selector).to_string()
    };
    assert_eq!(
        resolved("a.example"),
        "vault kv/mail/dkim/a.example/s1 field key"
    );
    assert_eq!(
        resolved("b.example"),
        "vault kv/custom/b field key",
        "filename overrides the Vault path"
    );
    assert_eq!(
        resolved("c.example"),
        "file /etc/c.key",
        "an explicit key wins"
    );
}

#[test]
fn additional_signatures_and_policies() {
    let t = table(
        r#"
        [base]
        selector = "s"
        additional_signatures = ["esp", "fallback"]
        [domain."example.com"]
        additional_signatures = ["ed"]
        [signature."esp"]
        domain = "ESP.example."
        selector = "esp1"
        policy = "Always"
        [signature."fallback"]
        domain = "fallback.example"
        policy = "OnlyIfMissingDomainBlock"
        [signature."ed"]
        domain = "{domain}"
        selector = "ed1"
        algo = "ed25519"
        "#,
    );
    let names: Vec<_> = t.additional().iter().map(|s| s.label.to_string()).collect();
    assert_eq!(names, ["[signature.\"esp\"]", "[signature.\"fallback\"]"]);
    assert_eq!(
        t.additional()[0].domain,
        SigningDomain::Fixed("esp.example".into())
    );
    assert_eq!(
        t.additional()[1].policy,
        SignaturePolicy::OnlyIfMissingDomainBlock
    );
    assert_eq!(
        t.additional()[1].selector,
        "s",
        "signature blocks inherit [base]"
    );
    let (e, _) = t.lookup("example.com").unwrap();
    assert_eq!(e.additional.len(), 1);
    assert_eq!(e.additional[0].domain, SigningDomain::Author);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn unused_signature_is_a_warning() {
    let t = table(
        r#"
        [signature."orphan"]
        domain = "x.example"
        selector = "s"
        "#,
    );
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("orphan"));
}

/// Each bad config must fail with the right reason at the right line.
#[test]
fn errors_name_line_and_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("[vault]\n\ntransit_batch_size = 0\n", 3, "nonzero"),
        ("[pkcs11]\nmax_sessions = -1\n", 2, "invalid value"),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { transit_key = \"k\", vault_mount = \"m\", vault_path = \"p\" }\n",
            3,
            "exactly one of",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { transit_key = \"k\", transit_key_version = 0 }\n",
            3,
            "transit_key_version starts at 1",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { transit_mount = \"transit\" }\n",
            3,
            "needs transit_key",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { pkcs11_token = \"t\" }\n",
            3,
            "needs pkcs11_key",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { vault_token = \"t\" }\n",
            3,
            "vault_address / vault_token need",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nunknown_key = 1\n",
            3,
            "unknown field `unknown_key`",
        ),
        ("[domain.\"a.example\"]\nselector = 5\n", 2, "invalid type"),
        (
            "[base]\nadditional_signatures = [\"nope\"]\n",
            2,
            "no [signature.\"nope\"]",
        ),
        (
            "\n[domain.\"a.example\"]\nalgo = \"sha256\"\n",
            2,
            "has no selector",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nalgo = \"md5\"\n",
            3,
            "\"md5\" is not an algorithm",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nheaders = [\"Subject\"]\n",
            1,
            "must include From",
        ),
        (
            "[domain.\"a..example\"]\nselector = \"s\"\n",
            1,
            "not a domain name",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = \"/k/{user}.pem\"\n",
            3,
            "unknown placeholder {user}",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { vault_path = \"x\" }\n",
            3,
            "needs vault_mount",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { key_data = \"x\", event_name = \"e\" }\n",
            3,
            "exactly one",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = { event_name = \"e\" }\n",
            1,
            "no [callbacks.\"e\"]",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nfilename = \"/a\"\nkey = \"/b\"\n",
            1,
            "both key and filename",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"bad selector\"\n",
            2,
            "not a valid selector",
        ),
        ("[signature.\"x\"]\nselector = \"s\"\n", 1, "needs a domain"),
        (
            "[milter]\nlisten = \"tcp:1\"\n",
            2,
            "invalid listen address",
        ),
        (
            "[milter]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
            2,
            "\"10.0.0.0/33\" is not a network",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nexpiration = \"soon\"\n",
            3,
            "invalid duration",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\npolicy = \"OnlyIfMissingDomainBlock\"\n",
            1,
            "only makes sense",
        ),
        (
            "[domain.\"A.example\"]\nselector = \"s\"\n[domain.\"a.example\"]\nselector = \"t\"\n",
            3,
            "duplicates",
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:1\"\nmax_connections = 0\n",
            3,
            "max_connections must be between 1 and",
        ),
        (
            "[milter]\nidle_timeout = \"0s\"\n",
            2,
            "must be at least 1s",
        ),
        (
            "[milter]\n\nidle_timeout = \"soon\"\n",
            3,
            "invalid duration",
        ),
        ("[cache]\ncapacity = 0\n", 2, "capacity must be at least 1"),
        (
            "[metrics]\nper_domain_series = 100000\n",
            2,
            "per_domain_series must be at most 10000",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\nkey = \"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----\"\n",
            3,
            "looks like a key, not a file path",
        ),
        (
            "[domain.\"a.example\"]\nselector = \"s\"\n\nfilename = \"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvuNMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ\"\n",
            4,
            "looks like a key, not a file path",
        ),
        (
            "[base]\nselector = \"s\"\n[domain.\"a b@x.example\"]\n",
            3,
            "is not a mailbox",
        ),
        (
            "[base]\nselector = \"s\"\n[domain.\"*@x.example\"]\n",
            3,
            "is not a mailbox",
        ),
        (
            "[base]\nselector = \"s\"\n[domain.\"a@x..example\"]\n",
            3,
            "not a domain name",
        ),
        (
            "[base]\nselector = \"s\"\n[domain.\"Ann@x.example\"]\n[domain.\"ann@X.example\"]\n",
            4,
            "duplicates",
        ),
        (
            "[domain.\"bücher.example\"]\nselector = \"s\"\n[domain.\"xn--bcher-kva.example\"]\nselector = \"t\"\n",
            3,
            "duplicates",
        ),
    ];
    for (text, line, reason) in cases {
        let err = match load(text) {
            Ok(_) => panic!("should fail: {text}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("test.toml:{line}:")),
            "wrong line for {text:?}: {shown}"
        );
        assert!(
            shown.contains(reason),
            "reason {reason:?} missing for {text:?}: {shown}"
        );
        assert!(
            !shown.contains("MIIEvQ"),
            "key material is never repeated: {shown}"
        );
    }
}

#[test]
fn entries_share_what_they_inherit_instead_of_copying_it() {
    let t = table(
        "[base]\nselector = \"s\"\n[domain.\"a.example\"]\n[domain.\"b.example\"]\n\
         [domain.\"c.example\"]\nheaders = [\"From\", \"To\"]\n[domain.\"d.example\"]\nheaders = [\"From\", \"To\"]\n",
    );
    let get = |d: &str| t.lookup(d).unwrap().0.clone();
    let (a, b, c, d) = (
        get("a.example"),
        get("b.example"),
        get("c.example"),
        get("d.example"),
    );
    assert!(
        Arc::ptr_eq(&a.headers, &b.headers),
        "the inherited list is shared"
    );
    assert!(
        Arc::ptr_eq(&c.headers, &d.headers),
        "equal lists are shared"
    );
    assert!(!Arc::ptr_eq(&a.headers, &c.headers));
    assert_eq!(a.key, b.key, "the default key path is the same template");
    let names: Vec<&str> = t.domain_entries().map(|(name, _)| name).collect();
    assert_eq!(names, ["a.example", "b.example", "c.example", "d.example"]);
}

#[test]
fn paths_that_are_paths_are_not_mistaken_for_keys() {
    for path in [
        "/etc/signet-milter/keys/{domain}/{selector}.key",
        "/var/lib/dkim/example.com.private",
        "keys/s1.pem",
    ] {
        let text = format!("[domain.\"a.example\"]\nselector = \"s\"\nkey = \"{path}\"\n");
        assert!(load(&text).is_ok(), "{path}");
    }
}

#[test]
fn a_cache_smaller_than_the_table_is_a_warning_and_an_unset_one_fits_it() {
    let mut text = String::from("[cache]\ncapacity = 2\n[base]\nselector = \"s\"\n");
    for i in 0..3 {
        text.push_str(&format!("[domain.\"d{i}.example\"]\n"));
    }
    let small = load(&text).unwrap();
    assert!(
        small
            .signing
            .warnings
            .iter()
            .any(|w| w.contains("[cache] capacity = 2 is smaller than the 3 entries")),
        "{:?}",
        small.signing.warnings
    );
    let unset = crate::config::CacheSettings::default();
    assert_eq!(unset.capacity_for(3), crate::config::DEFAULT_CACHE_CAPACITY);
    assert_eq!(unset.capacity_for(100_000), 131_072);
    assert_eq!(
        unset.capacity_for(100_001),
        131_072,
        "a few more domains: same size"
    );
}

#[test]
fn defaults_are_safe() {
    let c = load("").unwrap();
    assert!(
        c.signing.is_empty(),
        "signs nothing until a domain is configured"
    );
    assert_eq!(c.milter.on_error, OnError::Tempfail);
    assert!(c.milter.sign_authenticated);
    assert!(c.keys.files.require_safe_permissions);
    assert_eq!(c.milter.trusted_networks.len(), 2);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = load(
        r#"
        [vault]
        token = "hvs.SECRET-TOKEN"
        [domain."a.example"]
        selector = "s"
        key = { vault_mount = "m", vault_path = "p", vault_token = "hvs.OTHER-SECRET" }
        [domain."b.example"]
        selector = "s"
        key = { key_data = "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----" }
        "#,
    )
    .unwrap();
    let shown = format!("{c:?}");
    for secret in ["SECRET-TOKEN", "OTHER-SECRET", "SECRETKEYBYTES"] {
        assert!(!shown.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(shown.contains("REDACTED"));
}

/// Only entries whose key source is the same for every message get a key handle, each its
/// own: a handle shared by two sources would sign one domain's mail with another's key.
#[test]
fn exact_and_mailbox_entries_get_distinct_key_handles_and_no_other_entry_does() {
    let t = table(
        r#"
        [base]
        selector = "s"
        additional_signatures = ["esp"]
        [domain."a.example"]
        [domain."b.example"]
        [domain."alice@a.example"]
        selector = "alice"
        [domain."*.c.example"]
        [domain."*"]
        [signature."esp"]
        domain = "esp.example"
        "#,
    );
    let handle = |author: &str| t.lookup(author).unwrap().0.key_handle;
    let handles: std::collections::HashSet<_> = ["a.example", "b.example", "alice@a.example"]
        .iter()
        .map(|author| handle(author).expect("an exact or mailbox entry has a handle"))
        .collect();
    assert_eq!(handles.len(), 3, "each its own");
    assert!(
        handles
            .iter()
            .all(|h| (h.0 as usize) < t.key_handle_count())
    );
    assert_eq!(t.key_handle_count(), 3);
    assert_eq!(
        handle("mail.c.example"),
        None,
        "wildcard: the domain varies"
    );
    assert_eq!(
        handle("other.example"),
        None,
        "catch-all: the domain varies"
    );
    assert!(t.additional().iter().all(|s| s.key_handle.is_none()));
}
