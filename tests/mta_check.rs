//! `signet-milter check --postfix` / `--sendmail` as an operator runs them: the binary, its
//! output and exit status. postconf is a stand-in here that prints the captured outputs of
//! tests/fixtures/postfix (the real one runs in tests/e2e/postfix.sh, whose Postfix the test
//! suite must not depend on: it is replaced by Sendmail while the Sendmail test runs).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory with a `postconf` that answers from a fixture and logs its arguments.
fn fake_postconf(dir: &Path, exit: i32) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        r#"#!/bin/sh
echo "$*" >>"{log}"
[ {exit} -eq 0 ] || {{ echo "postconf: fatal: open $2/main.cf: No such file or directory" >&2; exit {exit}; }}
dir=$2
case "$*" in
  *" -F"*) cat "$dir/postconf-F.txt" ;;
  *" -P -x"*) cat "$dir/postconf-Px.txt" ;;
  *" -n"*) cat "$dir/postconf-n.stderr" >&2 ;;
  *" -x"*) cat "$dir/postconf-x.txt" ;;
esac
"#,
        log = dir.join("postconf.log").display()
    );
    let path = bin.join("postconf");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn config(dir: &Path, listen: &str) -> PathBuf {
    let path = dir.join("signet-milter.toml");
    std::fs::write(&path, format!("[milter]\nlisten = \"{listen}\"\n")).unwrap();
    path
}

fn check(config: &Path, bin: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet-milter"));
    cmd.arg("check").arg("-c").arg(config).args(args);
    if let Some(bin) = bin {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn postfix_problems_exit_1_with_file_line_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_postconf(tmp.path(), 0);
    let wrong = fixtures().join("postfix/wrong");
    let cfg = config(
        tmp.path(),
        "unix:/var/spool/postfix/signet-milter/signet-milter.sock",
    );
    let out = check(
        &cfg,
        Some(&bin),
        &["--postfix-config", wrong.to_str().unwrap()],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let main_cf = wrong.join("main.cf");
    let line = std::fs::read_to_string(&main_cf)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("milter_default_action ="))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!(
            "  PROBLEM  [default-action] {}:{line}: milter_default_action = accept",
            main_cf.display()
        )),
        "{text}"
    );
    // The fixes address that instance.
    assert!(
        text.contains(&format!(
            "fix: postconf -c {} -e 'milter_default_action = tempfail'",
            wrong.display()
        )),
        "{text}"
    );
    for tag in [
        "milter",
        "chroot",
        "no-milters",
        "8bit-downgrade",
        "output-rewriting",
        "line-length",
    ] {
        assert!(text.contains(&format!("PROBLEM  [{tag}]")), "{tag}: {text}");
    }
    // No signature of this config uses simple header canonicalization.
    assert!(text.contains("WARNING  [protocol]"), "{text}");
    // (The tables it names are not on this machine: those rules are warnings here.)
    assert!(
        text.contains(" warnings: mail can leave unsigned"),
        "{text}"
    );
    let log = std::fs::read_to_string(tmp.path().join("postconf.log")).unwrap();
    let dir = wrong.display();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            format!("-c {dir} -x"),
            format!("-c {dir} -F"),
            format!("-c {dir} -P -x"),
            format!("-c {dir} -n")
        ]
    );
}

#[test]
fn the_e2e_postfix_configuration_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_postconf(tmp.path(), 0);
    let cfg = config(tmp.path(), "unix:/var/spool/postfix/signet-e2e/milter.sock");
    let dir = fixtures().join("postfix/e2e");
    let out = check(
        &cfg,
        Some(&bin),
        &["--postfix-config", dir.to_str().unwrap()],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.ends_with("0 problems, 0 warnings\n"), "{text}");
    assert!(
        !text.contains("PROBLEM") && !text.contains("WARNING"),
        "{text}"
    );
}

#[test]
fn a_postconf_that_fails_is_a_failed_check() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_postconf(tmp.path(), 1);
    let cfg = config(tmp.path(), "inet:127.0.0.1:8891");
    let out = check(&cfg, Some(&bin), &["--postfix-config", "/nonexistent"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "cannot check the MTA: Postfix: `postconf -c /nonexistent -x` failed: postconf: fatal: open /nonexistent/main.cf"
        ),
        "{text}"
    );
}

#[test]
fn sendmail_cf_and_mc() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "unix:/run/signet-milter/signet-milter.sock");
    let good = fixtures().join("sendmail/documented.cf");
    let out = check(&cfg, None, &["--sendmail", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("Sendmail 8.17.1.9, "));
    let wrong = fixtures().join("sendmail/wrong.cf");
    let out = check(&cfg, None, &["--sendmail", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("PROBLEM  [8bit-downgrade]"));
    // A .mc goes through m4. This one needs only m4 itself, not the sendmail-cf macros.
    let mc = tmp.path().join("sendmail.mc");
    std::fs::write(
        &mc,
        "divert(-1)\ndefine(`SOCKET', `local:/run/signet-milter/signet-milter.sock')\ndivert(0)dnl\n\
         DZ8.17.1.9/Debian\nO InputMailFilters=signet\n\
         dnl the filter, without F=T:\nXsignet, S=SOCKET\n\
         Mesmtp,\t\tP=[IPC], F=mDFMuXa8, S=EnvFromSMTP/HdrFromSMTP,\n",
    )
    .unwrap();
    let out = check(&cfg, None, &["--sendmail", mc.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "  PROBLEM  [default-action] {}:7: mail filter signet has no F=T",
            mc.display()
        )),
        "{text}"
    );
    let broken = tmp.path().join("broken.mc");
    std::fs::write(&broken, "include(`/nonexistent/cf.m4')\n").unwrap();
    let out = check(&cfg, None, &["--sendmail", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("cannot check the MTA: Sendmail: m4 could not build a .cf from"),
        "{}",
        stdout(&out)
    );
}
