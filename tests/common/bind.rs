//! A real authoritative DNS server for tests: BIND 9's `named` (Debian package bind9), serving
//! the given zones on 127.0.0.1 at a free port, UDP and TCP, in the foreground. Stopped (by
//! its pid) when dropped.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Named {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// One zone: its origin and its records in zone-file syntax (relative to the origin).
pub struct Zone<'a> {
    pub origin: &'a str,
    pub records: &'a str,
}

impl Named {
    /// Starts `named` with `zones`; retries on another port if the one picked was taken.
    pub fn start(zones: &[Zone<'_>]) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start(zones) {
                Ok(named) => return named,
                Err(log) => last_log = log,
            }
        }
        panic!("named did not start:\n{last_log}");
    }

    fn try_start(zones: &[Zone<'_>]) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "options {{\n  directory \"{dir}\";\n  pid-file \"{dir}/named.pid\";\n\
             session-keyfile \"{dir}/session.key\";\n  listen-on port {port} {{ 127.0.0.1; }};\n\
             listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n}};\ncontrols {{ }};\n",
            dir = dir.path().display()
        );
        for (i, zone) in zones.iter().enumerate() {
            let file = dir.path().join(format!("zone{i}"));
            std::fs::write(
                &file,
                format!(
                    "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 60 60 600 60\n\
                     @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n",
                    origin = zone.origin,
                    records = zone.records
                ),
            )
            .unwrap();
            conf.push_str(&format!(
                "zone \"{}\" {{ type primary; file \"{}\"; }};\n",
                zone.origin,
                file.display()
            ));
        }
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(named_binary())
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("BIND 9's named (apt-get install bind9)");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut log = String::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains("running") {
                        return Ok(Named {
                            addr: SocketAddr::from(([127, 0, 0, 1], port)),
                            child,
                            _dir: dir,
                        });
                    }
                    if line.contains("exiting (due to fatal error)") {
                        let _ = child.wait();
                        return Err(log);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(log);
                }
            }
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named_binary() -> &'static Path {
    Path::new("/usr/sbin/named")
}

/// A port free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
