//! A real authoritative DNS server for the tests: BIND 9's `named`, started as a child on
//! 127.0.0.1 with an ephemeral port, its configuration, zones and journal in a temporary
//! directory, a TSIG key that may update the zones (RFC 2136), and stopped by its PID.
//!
//! Several servers can share one TSIG key (`start_with_key`), to play a zone's primary and a
//! lagging second server: each is its own primary for the same zones, and the test decides
//! when the second one gets a record (`update`, through `nsupdate`).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub const TSIG_NAME: &str = "signet-update";

pub struct Bind {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub tsig_key_file: PathBuf,
    zones: Vec<(String, Vec<String>)>,
    child: Option<Child>,
}

/// A TSIG key in the format of `tsig-keygen` (which makes it).
pub fn tsig_key(dir: &Path) -> PathBuf {
    let out = Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", TSIG_NAME])
        .output()
        .expect("tsig-keygen (package bind9) runs");
    assert!(out.status.success(), "tsig-keygen failed");
    let path = dir.join("tsig.key");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Bind {
    /// `zones`: each zone name with extra records (zone-file lines, names relative or absolute).
    pub fn start(zones: &[(&str, &[String])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = tsig_key(dir.path());
        Self::start_with_key(zones, &key, dir)
    }

    /// Like `start`, with a given TSIG key file (shared by several servers).
    pub fn start_with_key(zones: &[(&str, &[String])], key: &Path, dir: TempDir) -> Self {
        let tsig_key_file = dir.path().join("tsig.key");
        if key != tsig_key_file {
            std::fs::copy(key, &tsig_key_file).unwrap();
        }
        let mut bind = Bind {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tsig_key_file,
            zones: zones
                .iter()
                .map(|(z, records)| (z.to_string(), records.to_vec()))
                .collect(),
            child: None,
        };
        for (zone, records) in &bind.zones {
            let mut text = format!(
                "$TTL 1\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 600 1\n@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"
            );
            for r in records {
                text.push_str(r);
                text.push('\n');
            }
            std::fs::write(bind.dir.path().join(format!("{zone}.zone")), text).unwrap();
        }
        bind.launch();
        bind
    }

    fn launch(&mut self) {
        // A port taken between our probe and named's bind: try another.
        for _ in 0..5 {
            let port = if self.addr.port() == 0 {
                free_port()
            } else {
                self.addr.port()
            };
            let dir = self.dir.path();
            let mut conf = format!(
                "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  notify no;\n  dnssec-validation no;\n  allow-transfer {{ none; }};\n}};\ncontrols {{ }};\ninclude \"{d}/tsig.key\";\n",
                d = dir.display()
            );
            for (zone, _) in &self.zones {
                conf.push_str(&format!(
                    "zone \"{zone}\" {{ type primary; file \"{d}/{zone}.zone\"; journal \"{d}/{zone}.jnl\"; allow-update {{ key \"{TSIG_NAME}\"; }}; }};\n",
                    d = dir.display()
                ));
            }
            let conf_path = dir.join("named.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = std::fs::File::create(dir.join("named.log")).unwrap();
            let child = Command::new("named")
                .args(["-g", "-n", "1", "-c"])
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("named (package bind9) starts");
            self.child = Some(child);
            self.addr = SocketAddr::from(([127, 0, 0, 1], port));
            if self.wait_ready() {
                return;
            }
            self.stop();
            self.addr.set_port(0);
        }
        panic!(
            "named did not start; its log:\n{}",
            std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
        );
    }

    /// Waits (bounded) until the first zone's SOA is answered.
    fn wait_ready(&mut self) -> bool {
        let zone = self.zones[0].0.clone();
        for _ in 0..200 {
            if let Some(child) = &mut self.child
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            let out = Command::new("dig")
                .args(["+short", "+time=1", "+tries=1", "-p"])
                .arg(self.addr.port().to_string())
                .args(["@127.0.0.1", &zone, "SOA"])
                .output();
            if out.is_ok_and(|o| o.status.success() && !o.stdout.is_empty()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The TXT records at `name` now, each as its strings joined.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["+short", "+time=2", "+tries=2", "-p"])
            .arg(self.addr.port().to_string())
            .args(["@127.0.0.1", name, "TXT"])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                line.split('"')
                    .skip(1)
                    .step_by(2)
                    .collect::<Vec<_>>()
                    .concat()
            })
            .collect()
    }

    /// Sends an RFC 2136 update with `nsupdate`, signed with the TSIG key; `commands` are
    /// nsupdate lines such as `update add s1._domainkey.example.com 1 TXT "v=DKIM1; …"`.
    pub fn update(&self, zone: &str, commands: &[String]) {
        let mut script = format!("server 127.0.0.1 {}\nzone {zone}\n", self.addr.port());
        for c in commands {
            script.push_str(c);
            script.push('\n');
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.tsig_key_file)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate runs");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nsupdate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `update` with the TXT record `value` (split into 255-byte strings) at `name`.
    pub fn set_txt(&self, zone: &str, name: &str, value: &str) {
        let strings: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        self.update(
            zone,
            &[
                format!("update delete {name} TXT"),
                format!("update add {name} 1 TXT {}", strings.join(" ")),
            ],
        );
    }

    /// Stops the server (SIGTERM to its PID, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain kill(2) of the child we started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the zones as they were (the journal keeps updates).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The text of its log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dkimpy's verdict on `raw`, its keys looked up at `server` (tests/verify_dkim.py --dns).
pub fn verify_dkimpy_at(raw: &[u8], server: SocketAddr, expect: &[(&str, &str)]) -> (bool, String) {
    let server = server.to_string();
    super::verify_dkimpy_with(raw, &["--dns".as_ref(), server.as_ref()], expect)
}

/// libopendkim's verdict on `raw`, its keys looked up at `server`
/// (tests/e2e/opendkim_verify.c --dns, built once per test process).
pub fn verify_opendkim_at(raw: &[u8], server: SocketAddr) -> (bool, String) {
    let verifier = super::opendkim_verifier();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), raw).unwrap();
    let out = Command::new(&verifier)
        .arg("--dns")
        .arg(server.to_string())
        .arg(file.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
