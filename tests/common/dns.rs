//! A real authoritative DNS server for tests: BIND 9's `named`, started as a child process
//! (`named -g`, in the foreground) on 127.0.0.1 with an ephemeral port, serving zones written
//! into a temp dir, and stopped by its PID when dropped.
//!
//! ```ignore
//! let named = Named::builder()
//!     .zone(Zone::new("example.com").txt("s1._domainkey", &record))
//!     .max_udp_size(512)            // answers over 512 bytes are truncated: TCP follows
//!     .start();
//! let server = named.addr();        // 127.0.0.1:PORT, UDP and TCP
//! ```
//!
//! For dynamic updates (RFC 2136), [`NamedBuilder::tsig_key`] adds a TSIG key and zones made
//! with [`Zone::dynamic`] accept updates signed with it.
//!
//! `named` is `/usr/sbin/named` (Debian's `bind9` package), or `$SIGNET_NAMED`. Without it
//! the test fails and says how to install it.
#![allow(dead_code)]

use base64::Engine as _;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// How many ports are tried before giving up (another process may take a free port between
/// our probe and `named`'s bind).
const PORT_ATTEMPTS: usize = 10;

/// One zone: its origin and its records, as zone-file lines.
#[derive(Clone)]
pub struct Zone {
    origin: String,
    records: Vec<String>,
    dynamic: bool,
}

impl Zone {
    /// A zone with an SOA and an NS record, and nothing else yet.
    pub fn new(origin: &str) -> Self {
        Zone {
            origin: origin.trim_end_matches('.').to_string(),
            records: Vec::new(),
            dynamic: false,
        }
    }

    /// A TXT record at `name` (relative to the origin, `@` for the origin itself) whose value
    /// is `value`, split into strings of at most 255 bytes as DNS requires.
    pub fn txt(self, name: &str, value: &str) -> Self {
        let strings: Vec<&str> = value
            .as_bytes()
            .chunks(255)
            .map(|c| std::str::from_utf8(c).expect("ASCII record"))
            .collect();
        self.txt_strings(name, &strings)
    }

    /// A TXT record made of exactly these strings.
    pub fn txt_strings(self, name: &str, strings: &[&str]) -> Self {
        let quoted: Vec<String> = strings
            .iter()
            .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        self.record(&format!("{name} IN TXT ( {} )", quoted.join(" ")))
    }

    /// Any zone-file line, e.g. `"s1._domainkey IN CNAME s1.keys.example.net."`.
    pub fn record(mut self, line: &str) -> Self {
        self.records.push(line.to_string());
        self
    }

    /// Accept dynamic updates signed with the server's TSIG key ([`NamedBuilder::tsig_key`]).
    pub fn dynamic(mut self) -> Self {
        self.dynamic = true;
        self
    }

    fn file_name(&self) -> String {
        format!("{}.zone", self.origin)
    }

    fn text(&self) -> String {
        let mut text = format!(
            "$ORIGIN {0}.\n$TTL 300\n@ IN SOA ns.{0}. hostmaster.{0}. 1 3600 600 86400 60\n\
             @ IN NS ns.{0}.\nns IN A 127.0.0.1\n",
            self.origin
        );
        for line in &self.records {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A TSIG key (RFC 8945) the server accepts for dynamic updates.
#[derive(Clone, Debug)]
pub struct TsigKey {
    pub name: String,
    /// `hmac-sha256`.
    pub algorithm: &'static str,
    /// The shared secret, base64, as BIND writes it.
    pub secret: String,
}

#[derive(Default)]
pub struct NamedBuilder {
    zones: Vec<Zone>,
    max_udp_size: Option<u16>,
    tsig: Option<TsigKey>,
}

impl NamedBuilder {
    pub fn zone(mut self, zone: Zone) -> Self {
        self.zones.push(zone);
        self
    }

    /// Answers over UDP larger than this are truncated (TC), so the client asks again over TCP.
    pub fn max_udp_size(mut self, bytes: u16) -> Self {
        self.max_udp_size = Some(bytes);
        self
    }

    /// A TSIG key named `name` with a random secret, for the zones made [`Zone::dynamic`].
    pub fn tsig_key(mut self, name: &str) -> Self {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("random bytes");
        self.tsig = Some(TsigKey {
            name: name.to_string(),
            algorithm: "hmac-sha256",
            secret: base64::engine::general_purpose::STANDARD.encode(secret),
        });
        self
    }

    /// Starts `named` and returns once it serves every zone.
    pub fn start(self) -> Named {
        let dir = tempfile::tempdir().expect("temp dir");
        for zone in &self.zones {
            std::fs::write(dir.path().join(zone.file_name()), zone.text()).expect("zone file");
        }
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let conf = dir.path().join("named.conf");
            std::fs::write(&conf, self.config(&dir, port)).expect("named.conf");
            match spawn(&conf) {
                Ok((child, log)) => {
                    return Named {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        child,
                        log,
                        tsig: self.tsig,
                        dir,
                    };
                }
                Err(Failure::PortTaken(log)) => last_failure = log,
                Err(Failure::Fatal(log)) => panic!("named did not start:\n{log}"),
            }
        }
        panic!("named found no free port in {PORT_ATTEMPTS} attempts:\n{last_failure}");
    }

    fn config(&self, dir: &TempDir, port: u16) -> String {
        let d = dir.path().display();
        let mut conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
             session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  \
             listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  \
             recursion no;\n  dnssec-validation no;\n  querylog yes;\n  notify no;\n"
        );
        if let Some(bytes) = self.max_udp_size {
            conf.push_str(&format!("  max-udp-size {bytes};\n"));
        }
        // No rndc channel: it would take the fixed port 953, shared by every named here.
        conf.push_str("};\ncontrols { };\n");
        if let Some(key) = &self.tsig {
            conf.push_str(&format!(
                "key \"{}\" {{ algorithm {}; secret \"{}\"; }};\n",
                key.name, key.algorithm, key.secret
            ));
        }
        for zone in &self.zones {
            let update = match (&self.tsig, zone.dynamic) {
                (Some(key), true) => format!(" allow-update {{ key \"{}\"; }};", key.name),
                (None, true) => panic!("a dynamic zone needs NamedBuilder::tsig_key"),
                (_, false) => String::new(),
            };
            conf.push_str(&format!(
                "zone \"{}\" {{ type primary; file \"{d}/{}\";{update} }};\n",
                zone.origin,
                zone.file_name()
            ));
        }
        conf
    }
}

/// A running `named`; stopped (SIGTERM to its PID) when dropped.
pub struct Named {
    addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
    tsig: Option<TsigKey>,
    dir: TempDir,
}

impl Named {
    pub fn builder() -> NamedBuilder {
        NamedBuilder::default()
    }

    /// 127.0.0.1:PORT, over UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tsig(&self) -> Option<&TsigKey> {
        self.tsig.as_ref()
    }

    /// The directory holding `named.conf` and the zone files (and their journals).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The queries logged so far, one line each (`… query: NAME IN TXT +E(0)T …`: `T` = TCP).
    pub fn queries(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(" query: "))
            .map(str::to_string)
            .collect()
    }

    /// Everything named logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

enum Failure {
    PortTaken(String),
    Fatal(String),
}

/// What named's log says about startup.
enum Startup {
    Running,
    Exited,
}

fn named_binary() -> PathBuf {
    let path = std::env::var_os("SIGNET_NAMED").map_or("/usr/sbin/named".into(), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: these tests need BIND 9's named (apt-get install bind9), \
         or SIGNET_NAMED=/path/to/named",
        path.display()
    );
    path
}

/// Starts named and waits until it says it is running (or has exited).
fn spawn(conf: &std::path::Path) -> Result<(Child, Arc<Mutex<String>>), Failure> {
    let mut child = Command::new(named_binary())
        // -g: foreground, log to stderr; -n 1: one worker thread is plenty for a test.
        .args(["-g", "-n", "1", "-4", "-c"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("named starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let running = line.ends_with(" running");
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                drop(log);
                if running && !told {
                    told = true;
                    let _ = tx.send(Startup::Running);
                }
            }
            let _ = tx.send(Startup::Exited);
        });
    }
    match rx.recv() {
        Ok(Startup::Running) => Ok((child, log)),
        _ => {
            let _ = child.wait();
            let log = log.lock().unwrap().clone();
            if log.contains("address in use") {
                Err(Failure::PortTaken(log))
            } else {
                Err(Failure::Fatal(log))
            }
        }
    }
}

/// A port that is free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
