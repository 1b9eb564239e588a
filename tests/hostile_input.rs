//! The binary against input it should never crash on: hostile environment values, a stdout
//! that is closed or whose reader went away (`check | head -1`), and a key pasted where a path belongs. Every case
//! ends with a clear message (or quietly, for the pipe) and never with a panic (exit 101).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A configuration whose one key is a Vault key, so that the Vault variables are used.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("signet-milter.toml");
    std::fs::write(
        &path,
        format!(
            "[milter]\nlisten = \"unix:{}\"\n[vault]\ntimeout = \"1s\"\n\
             [domain.\"example.com\"]\nselector = \"s1\"\n\
             key = {{ vault_mount = \"secret\", vault_path = \"dkim/{{domain}}\" }}\n",
            dir.join("milter.sock").display()
        ),
    )
    .unwrap();
    path
}

fn signet(args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env_remove("SIGNET_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_clear_failure(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1, not a panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} in: {stderr}");
}

#[test]
fn hostile_environment_values_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let config = config.to_str().unwrap();
    let cases: &[(&str, &OsStr, &str)] = &[
        (
            "VAULT_TOKEN",
            OsStr::new("s.abc\u{7}def"),
            "VAULT_TOKEN: a Vault token must be",
        ),
        (
            "VAULT_TOKEN",
            OsStr::new("tok en"),
            "VAULT_TOKEN: a Vault token must be",
        ),
        (
            "VAULT_TOKEN",
            OsStr::from_bytes(b"s.\xff\xfe"),
            "VAULT_TOKEN is not valid UTF-8",
        ),
        (
            "VAULT_ADDR",
            OsStr::new("http://[::1"),
            "VAULT_ADDR: \"http://[::1\" is not a URL",
        ),
        (
            "VAULT_ADDR",
            OsStr::new("vault:8200"),
            "VAULT_ADDR: \"vault:8200\" must start with",
        ),
        (
            "VAULT_ADDR",
            OsStr::new("http://vault\r\n:8200"),
            "contains a control character",
        ),
        ("SIGNET_LOG", OsStr::new("signet_milter=[{"), "SIGNET_LOG: "),
    ];
    for (name, value, expected) in cases {
        for command in [&["check", "-c", config][..], &["run", "-c", config][..]] {
            let out = signet(command, &[(name, value)]);
            assert_clear_failure(&out, expected);
        }
    }
    // The token never appears in the message.
    let out = signet(
        &["check", "-c", config],
        &[("VAULT_TOKEN", OsStr::new("s.secret\u{7}"))],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s.secret"));
}

#[test]
fn a_closed_stdout_or_a_reader_that_went_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing to sign: check succeeds and prints two lines.
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let run = |stdout: fn() -> std::io::Result<()>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signet-milter"));
        command
            .args(["check", "-c", config.to_str().unwrap()])
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (close, pipe, dup2) between fork and exec.
        unsafe { command.pre_exec(stdout) };
        command.output().unwrap()
    };
    let closed = run(|| {
        // SAFETY: see above.
        unsafe { libc::close(1) };
        Ok(())
    });
    // The Rust runtime puts /dev/null where a standard descriptor is closed.
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let gone = run(|| {
        let mut fds = [0; 2];
        // SAFETY: see above; the read end is closed at once, as by `| head -0`.
        unsafe {
            libc::pipe(fds.as_mut_ptr());
            libc::close(fds[0]);
            libc::dup2(fds[1], 1);
        }
        Ok(())
    });
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "quietly: {stderr}");
}

#[test]
fn a_key_pasted_as_a_path_is_refused_without_being_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet-milter.toml");
    std::fs::write(
        &path,
        "[domain.\"example.com\"]\nselector = \"s1\"\n\
         key = \"-----BEGIN PRIVATE KEY-----\\nMC4CAQAwBQYDK2VwBCIEIHs9SECRETSECRET\\n-----END PRIVATE KEY-----\"\n",
    )
    .unwrap();
    for command in ["check", "run"] {
        let out = signet(&[command, "-c", path.to_str().unwrap()], &[]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clear_failure(&out, "signet-milter.toml:3:");
        assert!(all.contains("key_data"), "{all}");
        assert!(!all.contains("SECRET"), "{all}");
    }
}
