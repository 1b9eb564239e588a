//! The milter over its protocol, fed by an MTA that sends anything: each input is one
//! connection to a signing milter (the real callbacks, connection tracking and reply batching,
//! over an in-memory stream). The milter must answer or close, never panic and never hang.
//!
//! Input: the first byte chooses the shape of the rest.
//! - even: the rest is sent as it is (random bytes, broken framing);
//! - odd: the rest is a list of `[command][length: u16 LE][payload]` chunks sent as well-framed
//!   packets, so that mutations of a valid session stay sessions; with bit 1 set, a valid
//!   negotiation goes first. Command bytes pick a real milter command, or (from 0xF0) any byte.
#![no_main]

use arc_swap::ArcSwap;
use indymilter::Listener;
use libfuzzer_sys::fuzz_target;
use signet_milter::config::Config;
use signet_milter::connections::{Connections, Limited};
use signet_milter::keys::generate::{KeyKind, generate, write_key_files};
use signet_milter::milter::{MessagesInFlight, callbacks};
use signet_milter::reply_batch::Batched;
use signet_milter::runtime::Runtime;
use std::io;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;

/// The milter commands an MTA sends (sendmail's mfdef.h).
const COMMANDS: &[u8] = b"OCHMRTDLNBEAQKU";

struct Server {
    runtime: tokio::runtime::Runtime,
    connect: mpsc::UnboundedSender<DuplexStream>,
    _dir: tempfile::TempDir,
}

/// Connections handed over in memory.
struct InMemory(mpsc::UnboundedReceiver<DuplexStream>);

impl Listener for InMemory {
    type Io = DuplexStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<DuplexStream>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(stream)) => Poll::Ready(Ok(stream)),
            _ => Poll::Pending,
        }
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        for domain in ["example.com", "example.net", "esp.example"] {
            write_key_files(&keys, domain, "s1", &generate(KeyKind::Ed25519).unwrap()).unwrap();
        }
        let text = format!(
            "[milter]\nlisten = \"inet:127.0.0.1:1\"\ntrusted_networks = [\"0.0.0.0/0\", \"::/0\"]\n\
             max_connections = 64\n[keys]\ndirectory = \"{}\"\n[base]\nselector = \"s1\"\n\
             additional_signatures = [\"esp\"]\n[domain.\"example.com\"]\n\
             header_canonicalization = \"Simple\"\n[domain.\"*.example.net\"]\n\
             key = \"{}/example.net/s1.key\"\n[signature.\"esp\"]\ndomain = \"esp.example\"\n",
            keys.display(),
            keys.display()
        );
        let config = Config::parse(&text, std::path::Path::new("fuzz.toml")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (connect, accepted) = mpsc::unbounded_channel();
        runtime.spawn(async move {
            let runtime = Runtime::new(config);
            let metrics = runtime.env.metrics.clone();
            let shared = Arc::new(ArcSwap::from_pointee(runtime));
            let connections = Connections::new(64, Duration::from_secs(600), metrics);
            let listener = Batched(Limited::new(InMemory(accepted), connections));
            let config = indymilter::Config {
                max_connections: usize::MAX >> 4,
                ..Default::default()
            };
            let _ = indymilter::run(
                listener,
                callbacks(shared, MessagesInFlight::default()),
                config,
                std::future::pending::<()>(),
            )
            .await;
        });
        Server {
            runtime,
            connect,
            _dir: dir,
        }
    })
}

fn packet(out: &mut Vec<u8>, command: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(command);
    out.extend_from_slice(payload);
}

/// What the MTA sends for `data` (see the module documentation).
fn session(data: &[u8]) -> Vec<u8> {
    let Some((&mode, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let mut out = Vec::new();
    if mode & 2 != 0 {
        let mut negotiate = Vec::new();
        for word in [6u32, 0x1ff, 0x1f_ffff] {
            negotiate.extend_from_slice(&word.to_be_bytes());
        }
        packet(&mut out, b'O', &negotiate);
    }
    while let [command, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let command = if *command >= 0xf0 {
            tail.first().copied().unwrap_or(0)
        } else {
            COMMANDS[usize::from(*command) % COMMANDS.len()]
        };
        packet(&mut out, command, &tail[..len]);
        rest = &tail[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = session(data);
    let server = server();
    server.runtime.block_on(async {
        let (client, milter) = tokio::io::duplex(1 << 16);
        server.connect.send(milter).unwrap();
        let (mut from_milter, mut to_milter) = tokio::io::split(client);
        let send = async {
            let _ = to_milter.write_all(&bytes).await;
            // The MTA hangs up: the milter must finish and close.
            let _ = to_milter.shutdown().await;
        };
        let receive = async {
            let mut replies = Vec::new();
            let _ = from_milter.read_to_end(&mut replies).await;
        };
        if tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, receive) })
            .await
            .is_err()
        {
            panic!("the milter neither answered nor closed the connection within 20 s");
        }
    });
});
