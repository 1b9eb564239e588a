//! The real `signet-milter run` binary as a child process, with its log lines readable as
//! they come.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Writes `DIR/signet-milter.toml` for a daemon on `DIR/milter.sock` that signs example.com
/// with selector s1 (an Ed25519 key written to `DIR/keys`): `[milter]` gets `milter` after its
/// `listen`, and `rest` (more tables) follows the table. Returns the config and socket paths.
pub fn example_com_config(
    dir: &std::path::Path,
    milter: &str,
    rest: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
    let keys = dir.join("keys");
    write_key_files(
        &keys,
        "example.com",
        "s1",
        &generate(KeyKind::Ed25519).unwrap(),
    )
    .unwrap();
    let socket = dir.join("milter.sock");
    let config = dir.join("signet-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"unix:{}\"\n{milter}\n[keys]\ndirectory = \"{}\"\n\
             [domain.\"example.com\"]\nselector = \"s1\"\n{rest}",
            socket.display(),
            keys.display()
        ),
    )
    .unwrap();
    (config, socket)
}

pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(config: &std::path::Path) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &std::path::Path, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signet-milter"));
        command.envs(env.iter().copied());
        Self::spawn(command, config)
    }

    /// Runs with at most `files` open file descriptors (soft and hard limit).
    pub fn start_with_file_limit(config: &std::path::Path, files: u64) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(env!("CARGO_BIN_EXE_signet-milter"));
        // SAFETY: setrlimit is async-signal-safe and touches only this child.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Self::spawn(command, config)
    }

    fn spawn(mut command: Command, config: &std::path::Path) -> Self {
        let mut child = command
            .args(["run", "-c", config.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .env_remove("SIGNET_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits for a log line containing `text`; the lines read on the way are returned on failure.
    pub fn expect_log(&self, text: &str) -> String {
        self.expect_log_after(text).0
    }

    /// Like [`Daemon::expect_log`], also returning the lines logged before it.
    pub fn expect_log_after(&self, text: &str) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(text) => return (line, seen),
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {text:?}; got:\n{}", seen.join("\n")),
            }
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
