//! Shared test harness: a signet-milter served in-process on a unix socket, an MTA-side client
//! (indymilter-test), and two independent verifiers (mail-auth with injected keys, and Python
//! dkimpy through `tests/verify_dkim.py`).
#![allow(dead_code)]

pub mod daemon;
pub mod dns;
pub mod dynamic_dns;
pub mod fake_vault;
pub mod openbao;
pub mod softhsm;

use arc_swap::ArcSwap;
use indymilter::{Actions, MacroStage, ProtoOpts};
use indymilter_test::{EomAction, Status, TestConnection};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};
use signet_milter::config::Config;
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use signet_milter::runtime::Runtime;
use signet_milter::server;
use signet_milter::verify::KeyTable;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub struct TestMilter {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub runtime: Arc<ArcSwap<Runtime>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestMilter {
    /// Keys to generate first, as `(domain, selector, kind)`.
    pub async fn start(keys: &[(&str, &str, KeyKind)], milter_extra: &str, table: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (domain, selector, kind) in keys {
            let generated = generate(*kind).unwrap();
            // As `keygen` does: the key directory is named by the canonical (A-label) domain.
            let domain = signet_milter::domain::canonical(domain).unwrap();
            write_key_files(&dir.path().join("keys"), &domain, selector, &generated).unwrap();
        }
        let socket = dir.path().join("milter.sock");
        let text = format!(
            "[milter]\nlisten = \"unix:{}\"\ntrusted_networks = [\"127.0.0.0/8\", \"::1/128\"]\n{milter_extra}\n\
             [keys]\ndirectory = \"{}\"\n{table}",
            socket.display(),
            dir.path().join("keys").display()
        );
        let config_path = dir.path().join("signet-milter.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let listener = server::bind(&config.milter).await.unwrap();
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(config)));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, runtime.clone(), async move {
            let _ = rx.await;
        }));
        TestMilter {
            dir,
            socket,
            runtime,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The most common setup: example.com signed with selector `s1` and a key of `kind`.
    pub async fn example_com(kind: KeyKind, milter_extra: &str) -> Self {
        Self::start(
            &[("example.com", "s1", kind)],
            milter_extra,
            "[domain.\"example.com\"]\nselector = \"s1\"\n",
        )
        .await
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// A connection as Postfix opens it: every action and option offered, header values
    /// passed verbatim (leading space included).
    pub async fn connect(&self, client: IpAddr) -> TestConnection {
        self.connect_offering(client, ProtoOpts::all()).await
    }

    /// A connection from an MTA that offers only the protocol options `opts`
    /// (LEADING_SPACE must be among them).
    pub async fn connect_offering(&self, client: IpAddr, opts: ProtoOpts) -> TestConnection {
        let mut conn = TestConnection::configure()
            .available_actions(Actions::all())
            .available_opts(opts)
            .exact_leading_space(true)
            .open_unix(&self.socket)
            .await
            .unwrap();
        assert!(conn.negotiated_opts().contains(ProtoOpts::LEADING_SPACE));
        assert_eq!(
            conn.connect("client.example", client).await.unwrap(),
            Status::Continue
        );
        conn
    }

    pub async fn stop(mut self) {
        self.begin_shutdown();
        self.stopped().await.unwrap();
        assert!(!self.socket.exists(), "the socket is removed on shutdown");
    }

    /// What SIGTERM does to the daemon: starts the graceful shutdown.
    pub fn begin_shutdown(&mut self) {
        let _ = self.shutdown.take().expect("shutdown begun once").send(());
    }

    /// Waits for the server task to end and returns its result.
    pub async fn stopped(&mut self) -> std::io::Result<()> {
        self.task.take().expect("awaited once").await.unwrap()
    }
}

/// A message as an MTA passes it: header values verbatim (folded with LF), CRLF body.
#[derive(Clone)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn simple(from: &str) -> Self {
        Message {
            headers: vec![
                ("From".into(), format!(" {from}")),
                ("To".into(), " bob@example.net".into()),
                ("Subject".into(), " test message".into()),
                ("Date".into(), " Sun, 22 Nov 2026 10:00:00 +0000".into()),
                ("Message-ID".into(), " <1@example.com>".into()),
            ],
            body: b"Hello,\r\n\r\nthis is a test.\r\n".to_vec(),
        }
    }

    /// The message as delivered: inserted headers on top, then the original, CRLF throughout.
    pub fn delivered(&self, inserted: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in inserted.iter().chain(&self.headers) {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// What the milter did with one message.
pub struct Sent {
    pub status: Status,
    /// Headers inserted, top first (as they end up in the delivered message).
    pub inserted: Vec<(String, String)>,
    /// The stage that ended the exchange early, if any.
    pub stopped_at: Option<&'static str>,
}

/// Runs one message through an open connection, stopping where the milter stops it.
pub async fn send(
    conn: &mut TestConnection,
    mail_macros: &[(&str, &str)],
    message: &Message,
) -> Sent {
    let mut macros: Vec<(&str, &str)> = vec![("i", "QUEUE1")];
    macros.extend_from_slice(mail_macros);
    conn.macros(MacroStage::Mail, macros).await.unwrap();
    let status = conn.mail(["<sender@example.com>"]).await.unwrap();
    if status != Status::Continue {
        return Sent {
            status,
            inserted: vec![],
            stopped_at: Some("mail"),
        };
    }
    // Headers and body chunks get no reply when the MTA offered to do without (Postfix does).
    let answer_to = |skip_reply| {
        if conn.negotiated_opts().contains(skip_reply) {
            Status::Noreply
        } else {
            Status::Continue
        }
    };
    let (header_answer, body_answer) = (
        answer_to(ProtoOpts::NOREPLY_HEADER),
        answer_to(ProtoOpts::NOREPLY_BODY),
    );
    for (name, value) in &message.headers {
        let status = conn.header(name.as_str(), value.as_str()).await.unwrap();
        assert_eq!(status, header_answer);
    }
    let status = conn.eoh().await.unwrap();
    if status != Status::Continue {
        return Sent {
            status,
            inserted: vec![],
            stopped_at: Some("eoh"),
        };
    }
    if !message.body.is_empty() {
        let status = conn.body(message.body.clone()).await.unwrap();
        assert_eq!(status, body_answer);
    }
    let (actions, status) = conn.eom().await.unwrap();
    let mut inserted = Vec::new();
    for action in actions.actions {
        match action {
            EomAction::InsertHeader { index, name, value } => {
                assert_eq!(index, 0, "signatures go on top");
                let header = (name.into_string().unwrap(), value.into_string().unwrap());
                inserted.insert(0, header);
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    Sent {
        status,
        inserted,
        stopped_at: None,
    }
}

/// A connection to a milter (the real binary's, say) on `socket`, opened as Postfix does, the
/// client at 127.0.0.1.
pub async fn mta_connection(socket: &Path) -> TestConnection {
    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true)
        .open_unix(socket)
        .await
        .unwrap();
    conn.connect("localhost", loopback()).await.unwrap();
    conn
}

/// A connection that negotiates as an MTA does and then sends nothing: what an idle Postfix
/// smtpd session looks like to the milter.
pub async fn idle_connection(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    // SMFIC_OPTNEG: version 6, every action, every protocol option Postfix offers.
    let mut packet = 13u32.to_be_bytes().to_vec();
    packet.push(b'O');
    for word in [6u32, Actions::all().bits(), ProtoOpts::all().bits()] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    stream.write_all(&packet).await?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).await?;
    assert_eq!(reply.first(), Some(&b'O'), "the milter negotiates");
    Ok(stream)
}

/// Whether the milter has closed `stream` (reads the end of the stream, or an error).
pub async fn closed_by_milter(stream: &mut tokio::net::UnixStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
}

pub fn loopback() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A new key whose public half is published in `keys_dir` (for the verifiers) and whose
/// private half is only returned, as PEM: the milter can get it only from a remote source.
pub fn remote_key(keys_dir: &Path, domain: &str, selector: &str, kind: KeyKind) -> String {
    let generated = generate(kind).unwrap();
    let _ = std::fs::remove_file(keys_dir.join(domain).join(format!("{selector}.dns")));
    write_key_files(keys_dir, domain, selector, &generated).unwrap();
    std::fs::remove_file(keys_dir.join(domain).join(format!("{selector}.key"))).unwrap();
    generated.private_pem().to_string()
}

/// mail-auth's verdict for every signature: `(d, s, passed)`.
pub async fn verify_mail_auth(raw: &[u8], keys: &Path) -> Vec<(String, String, bool)> {
    let table = KeyTable::from_dir(keys).expect("the test's key records");
    let auth = MessageAuthenticator::new(
        mail_auth::hickory_resolver::config::ResolverConfig::default(),
        mail_auth::hickory_resolver::config::ResolverOpts::default(),
    )
    .unwrap();
    let message = AuthenticatedMessage::parse(raw).expect("parsable message");
    let outputs = auth
        .verify_dkim(Parameters::new(&message).with_cache(&table))
        .await;
    outputs
        .iter()
        .map(|o| {
            let sig = o.signature().expect("a parsed signature");
            (
                sig.d.clone(),
                sig.s.clone(),
                o.result() == &DkimResult::Pass,
            )
        })
        .collect()
}

/// Python dkimpy's verdict (exit status of tests/verify_dkim.py), with its report.
pub fn verify_dkimpy(raw: &[u8], keys: &Path, expect: &[(&str, &str)]) -> (bool, String) {
    verify_dkimpy_with(raw, &["--keys".as_ref(), keys.as_os_str()], expect)
}

/// [`verify_dkimpy`] with the keys found as `key_args` say (`--keys DIR`, `--dns SERVER`).
pub fn verify_dkimpy_with(
    raw: &[u8],
    key_args: &[&std::ffi::OsStr],
    expect: &[(&str, &str)],
) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), raw).unwrap();
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_dkim.py"))
        .args(key_args);
    for (d, s) in expect {
        cmd.arg("--expect").arg(format!("{d}:{s}"));
    }
    let out = cmd
        .arg(file.path())
        .output()
        .expect("python3 with dkimpy (Debian python3-dkim, and python3-dnspython for --dns) must be installed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Both verifiers must pass every signature, and the expected ones must be there.
pub async fn assert_verifies(raw: &[u8], keys: &Path, expect: &[(&str, &str)]) {
    let results = verify_mail_auth(raw, keys).await;
    assert!(!results.is_empty(), "no signature found");
    for (d, s, pass) in &results {
        assert!(
            pass,
            "mail-auth: signature d={d} s={s} does not verify\n{}",
            String::from_utf8_lossy(raw)
        );
    }
    for (d, s) in expect {
        assert!(
            results.iter().any(|(rd, rs, _)| rd == d && rs == s),
            "expected signature d={d} s={s} missing: {results:?}"
        );
    }
    let (ok, report) = verify_dkimpy(raw, keys, expect);
    assert!(ok, "dkimpy verification failed:\n{report}");
}

/// Writes `keys/DOMAIN/SELECTOR.dns`, the TXT record the verifiers look up.
pub fn publish(keys_dir: &Path, domain: &str, selector: &str, record: &str) {
    let dir = keys_dir.join(domain);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{selector}.dns")), format!("{record}\n")).unwrap();
}

/// OpenDKIM's libopendkim verifier (tests/e2e/opendkim_verify.c), built once per test run
/// against the installed library (Debian's libopendkim-dev).
pub fn opendkim_verifier() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("opendkim_verify");
            // Built under a name of its own, then renamed: test binaries run in parallel.
            let partial = out.with_extension(format!("{}", std::process::id()));
            let flags = std::process::Command::new("pkg-config")
                .args(["--cflags", "--libs", "opendkim"])
                .output()
                .expect("pkg-config (and libopendkim-dev) must be installed");
            assert!(flags.status.success(), "pkg-config opendkim failed");
            let flags = String::from_utf8(flags.stdout).unwrap();
            let status = std::process::Command::new("cc")
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(&partial)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/e2e/opendkim_verify.c"
                ))
                .args(flags.split_whitespace())
                // Its --dns mode sends libopendkim's queries to a given server (res_send).
                .arg("-lresolv")
                .status()
                .expect("cc must be installed");
            assert!(status.success(), "building opendkim_verify failed");
            std::fs::rename(&partial, &out).unwrap();
            out
        })
        .clone()
}

/// libopendkim's verdict over every `DIR/domain/selector.dns` in `keys`: passes when every
/// signature verifies; the report lists them.
pub fn verify_opendkim(raw: &[u8], keys: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut table = String::new();
    for domain in std::fs::read_dir(keys).unwrap() {
        let domain = domain.unwrap();
        for file in std::fs::read_dir(domain.path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "dns") {
                let selector = path.file_stem().unwrap().to_string_lossy().into_owned();
                let record = std::fs::read_to_string(&path).unwrap();
                table.push_str(&format!(
                    "{selector}._domainkey.{} {}\n",
                    domain.file_name().to_string_lossy(),
                    record.trim()
                ));
            }
        }
    }
    std::fs::write(dir.path().join("keytable"), table).unwrap();
    std::fs::write(dir.path().join("message"), raw).unwrap();
    let out = std::process::Command::new(opendkim_verifier())
        .arg(dir.path().join("keytable"))
        .arg(dir.path().join("message"))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// mail-auth, dkimpy and libopendkim all pass every signature, and the expected ones exist.
pub async fn assert_verifies_everywhere(raw: &[u8], keys: &Path, expect: &[(&str, &str)]) {
    assert_verifies(raw, keys, expect).await;
    let (ok, report) = verify_opendkim(raw, keys);
    assert!(ok, "libopendkim verification failed:\n{report}");
    for (d, s) in expect {
        assert!(
            report.contains(&format!("d={d} s={s} ")),
            "libopendkim did not see d={d} s={s}:\n{report}"
        );
    }
}

/// A DKIM-Signature value with its varying parts (`t=`, `bh=`, `b=`) masked, whitespace and
/// folding kept: two signatures of the same shape compare equal.
pub fn signature_shape(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find(['t', 'b']) {
        let (before, at) = rest.split_at(pos);
        out.push_str(before);
        let tag = ["t=", "bh=", "b="].into_iter().find(|t| {
            at.starts_with(t) && (before.is_empty() || before.ends_with([' ', ';', '\t', '\n']))
        });
        match tag {
            Some(tag) => {
                out.push_str(tag);
                let value = &at[tag.len()..];
                let end = value.find(';').unwrap_or(value.len());
                out.extend(value[..end].chars().map(
                    |c| {
                        if c.is_ascii_whitespace() { c } else { 'x' }
                    },
                ));
                rest = &value[end..];
            }
            None => {
                out.push_str(&at[..1]);
                rest = &at[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs the `signet-milter` binary with `args`, `stdin` on its standard input.
pub fn run_signet<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}
