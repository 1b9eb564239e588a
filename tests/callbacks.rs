//! Callback key sources from TOML alone: `[callbacks."NAME"]` with a command or a SQLite query.
//! The good cases sign through the milter and verify; each failure gives a clear error.

mod common;

use common::{Message, TestMilter, assert_verifies, loopback, remote_key, send};
use indymilter_test::Status;
use signet_milter::config::Config;
use signet_milter::config::keysource::ResolvedKeySource;
use signet_milter::keys::KeyError;
use signet_milter::keys::generate::{KeyKind, generate};
use signet_milter::runtime::Runtime;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// KumoMTA's own example table: `keys(domain, selector, data)`.
fn sqlite_db(path: &Path, rows: &[(&str, &str, &str)]) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch("create table keys (domain text, selector text, data text)")
        .unwrap();
    for (domain, selector, data) in rows {
        db.execute(
            "insert into keys values (?1, ?2, ?3)",
            [domain, selector, data],
        )
        .unwrap();
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn sign_and_verify(milter: &TestMilter, domain: &str, selector: &str) {
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple(&format!("Alice <alice@{domain}>"));
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(sent.status, Status::Continue);
    assert_eq!(sent.inserted.len(), 1, "one signature");
    assert_verifies(
        &message.delivered(&sent.inserted),
        &milter.keys_dir(),
        &[(domain, selector)],
    )
    .await;
}

#[tokio::test]
async fn kumomta_sqlite_example_signs_from_toml_alone() {
    let data = tempfile::tempdir().unwrap();
    let pem = remote_key(
        &data.path().join("keys"),
        "example.com",
        "default",
        KeyKind::Rsa2048,
    );
    let db = data.path().join("keys.db");
    sqlite_db(&db, &[("example.com", "default", &pem)]);
    // The seed's query and arguments, verbatim apart from Lua → TOML.
    let table = format!(
        r#"
[callbacks."fetch-my-domain-key"]
sqlite = "{}"
query = "select data from keys where domain=? and selector=?"

[domain."example.com"]
selector = "default"
key = {{ event_name = "fetch-my-domain-key", event_args = ["{{domain}}", "default"] }}
"#,
        db.display()
    );
    let milter = TestMilter::start(&[], "", &table).await;
    std::fs::create_dir_all(milter.keys_dir()).unwrap();
    copy_dir(&data.path().join("keys"), &milter.keys_dir());
    sign_and_verify(&milter, "example.com", "default").await;
}

#[tokio::test]
async fn a_command_callback_signs_with_the_key_it_prints() {
    let data = tempfile::tempdir().unwrap();
    let pem = remote_key(
        &data.path().join("keys"),
        "example.com",
        "cmd",
        KeyKind::Rsa2048,
    );
    let pem_file = data.path().join("secret.pem");
    std::fs::write(&pem_file, &pem).unwrap();
    // Prints the key only for the expected arguments, as a real key fetcher would.
    let fetcher = script(
        data.path(),
        "fetch-key",
        &format!(
            "[ \"$1\" = --store ] && [ \"$2\" = example.com ] && [ \"$3\" = cmd ] || {{ echo \"no key for $*\" >&2; exit 3; }}\ncat {}",
            pem_file.display()
        ),
    );
    let table = format!(
        r#"
[callbacks."fetch-key"]
command = ["{}", "--store"]
timeout = "5s"

[domain."example.com"]
selector = "cmd"
key = {{ event_name = "fetch-key", event_args = ["{{domain}}", "{{selector}}"] }}
"#,
        fetcher.display()
    );
    let milter = TestMilter::start(&[], "", &table).await;
    std::fs::create_dir_all(milter.keys_dir()).unwrap();
    copy_dir(&data.path().join("keys"), &milter.keys_dir());
    sign_and_verify(&milter, "example.com", "cmd").await;
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The error a callback source gives, through the runtime's key cache.
async fn callback_error(callbacks: &str, name: &str, args: &[&str]) -> KeyError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, callbacks).unwrap();
    let runtime = Runtime::new(Config::load(&path).unwrap());
    let source = ResolvedKeySource::Event {
        name: name.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    match runtime.keys.get(&source).await {
        Ok(_) => panic!("callback {name}{args:?} gave a key"),
        Err(e) => e,
    }
}

fn command_section(name: &str, program: &Path, timeout: &str) -> String {
    format!(
        "[callbacks.\"{name}\"]\ncommand = [\"{}\"]\ntimeout = \"{timeout}\"\n",
        program.display()
    )
}

#[tokio::test]
async fn command_callback_failures_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "exit 3 with a reason",
            "echo 'no key for this domain' >&2; exit 3",
            "failed (exit status: 3): no key for this domain",
        ),
        ("empty output", "exit 0", "printed no key"),
        ("blank output", "printf '\\n  \\n'", "printed no key"),
        (
            "garbage",
            "echo 'hello, I am not a key'",
            "callback garbage(example.com)",
        ),
    ];
    for (what, body, expected) in cases {
        let name = what.split(' ').next().unwrap();
        let program = script(dir.path(), name, body);
        let err = callback_error(
            &command_section(name, &program, "5s"),
            name,
            &["example.com"],
        )
        .await;
        let text = err.to_string();
        assert!(text.contains(expected), "{what}: {text}");
        assert!(
            text.contains(&format!("callback {name}(example.com)")),
            "{what}: the error names the callback: {text}"
        );
    }
}

#[tokio::test]
async fn a_command_that_hangs_is_stopped_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "slow", "echo $$ > \"$0.pid\"; exec sleep 30");
    let started = Instant::now();
    let err = callback_error(&command_section("slow", &program, "300ms"), "slow", &[]).await;
    assert!(
        err.to_string().contains("did not finish within 300ms"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The program was killed, not left running.
    let pid = std::fs::read_to_string(dir.path().join("slow.pid")).unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(proc_dir.join("stat"))
            .map(|s| s.split(' ').nth(2) == Some("Z"))
            .unwrap_or(true)
    });
    assert!(gone, "the timed-out program was killed");
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let err = callback_error(
        &command_section("nope", Path::new("/nonexistent/fetch-key"), "1s"),
        "nope",
        &[],
    )
    .await;
    assert!(
        err.to_string()
            .contains("cannot run /nonexistent/fetch-key"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_callback_failures_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    sqlite_db(
        &db,
        &[
            ("example.com", "default", "not a key"),
            ("empty.example", "default", ""),
        ],
    );
    let section = |query: &str, path: &Path| {
        format!(
            "[callbacks.\"db\"]\nsqlite = \"{}\"\nquery = \"{query}\"\n",
            path.display()
        )
    };
    let query = "select data from keys where domain = ?1 and selector = ?2";
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            section(query, &db),
            vec!["example.com"],
            "the query takes 2 parameters but event_args gives 1",
        ),
        (
            section(query, &db),
            vec!["other.example", "default"],
            "no row for (other.example, default)",
        ),
        (
            section(query, &db),
            vec!["empty.example", "default"],
            "is empty",
        ),
        (
            section(query, &db),
            vec!["example.com", "default"],
            "callback db(example.com, default)",
        ),
        (
            section(query, &dir.path().join("missing.db")),
            vec!["example.com", "default"],
            "cannot open database",
        ),
        (
            section("select data from nosuchtable where domain = ?1", &db),
            vec!["example.com"],
            "the query does not work",
        ),
    ];
    for (config, args, expected) in cases {
        let err = callback_error(&config, "db", &args).await;
        assert!(err.to_string().contains(expected), "{args:?}: {err}");
    }
    assert!(
        !dir.path().join("missing.db").exists(),
        "a missing database is not created (opened read-only)"
    );
}

/// `examples/custom_callback.rs`: a program registers a Rust callback, and `check` resolves a
/// key through it.
#[test]
fn an_embedded_program_registers_its_own_callback() {
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/custom_callback");
    assert!(
        example.exists(),
        "cargo test builds examples: {}",
        example.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(KeyKind::Ed25519).unwrap();
    std::fs::write(
        dir.path().join("example.com_s1.pem"),
        generated.private_pem().as_bytes(),
    )
    .unwrap();
    let config = dir.path().join("my.toml");
    std::fs::write(
        &config,
        "[domain.\"example.com\"]\nselector = \"s1\"\nkey = { event_name = \"key-service\", event_args = [\"{domain}\", \"{selector}\"] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(&example)
        .args(["--config".as_ref(), config.as_os_str(), "check".as_ref()])
        .env("KEY_SERVICE_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("callback key-service(example.com, s1)"),
        "{stdout}"
    );
    assert!(stdout.contains("ed25519"), "{stdout}");

    // The stock binary does not know that callback: the config is refused at load.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["--config".as_ref(), config.as_os_str(), "check".as_ref()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no [callbacks.\"key-service\"] section"),
        "{stderr}"
    );
}
