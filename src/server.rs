//! Listening for the MTA: unix or TCP socket, signals for reload and shutdown.

use crate::config::{Config, ListenAddr, MilterSettings};
use crate::connections::{Connections, Limited};
use crate::keys::warm::Warming;
use crate::milter;
use crate::notify;
use crate::reply_batch::Batched;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use indymilter::{EitherListener, Listener};
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0} is in use by a running process (another signet-milter?)")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("unknown group \"{0}\" for socket_group")]
    UnknownGroup(String),
    // `error`, not `source`: the reason is in the message, and a `source` would print it twice.
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: io::Error },
    #[error("cannot set up socket {}: {error}", path.display())]
    Socket { path: PathBuf, error: io::Error },
}

/// TCP with Nagle off: the replies at the end of a message are several small writes, and with
/// Nagle each would wait for the MTA's delayed ACK (measured: 40+ ms per message).
pub struct NoDelay(TcpListener);

impl Listener for NoDelay {
    type Io = TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        })
    }
}

/// A bound listener, and for a unix socket the guard that removes its file again.
pub struct BoundListener {
    listener: EitherListener<NoDelay, UnixListener>,
    socket: Option<SocketFile>,
}

/// The socket file we created; removed on drop, but only if it is still ours.
struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub async fn bind(settings: &MilterSettings) -> Result<BoundListener, ServerError> {
    match &settings.listen {
        ListenAddr::Inet(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|error| ServerError::Bind {
                    addr: settings.listen.to_string(),
                    error,
                })?;
            Ok(BoundListener {
                listener: EitherListener::Tcp(NoDelay(listener)),
                socket: None,
            })
        }
        ListenAddr::Unix(path) => bind_unix(path, settings),
    }
}

fn bind_unix(path: &Path, settings: &MilterSettings) -> Result<BoundListener, ServerError> {
    remove_stale_socket(path)?;
    let socket_err = |error| ServerError::Socket {
        path: path.to_owned(),
        error,
    };
    let listener = UnixListener::bind(path).map_err(|error| ServerError::Bind {
        addr: settings.listen.to_string(),
        error,
    })?;
    // From here on the file is ours: the guard removes it if setting it up fails.
    let socket = SocketFile {
        path: path.to_owned(),
        inode: std::fs::symlink_metadata(path).map_err(socket_err)?.ino(),
    };
    let mode = std::fs::Permissions::from_mode(settings.socket_mode.0);
    std::fs::set_permissions(path, mode).map_err(socket_err)?;
    if let Some(group) = &settings.socket_group {
        let gid = group_id(group).ok_or_else(|| ServerError::UnknownGroup(group.clone()))?;
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(socket_err)?;
    }
    Ok(BoundListener {
        listener: EitherListener::Unix(listener),
        socket: Some(socket),
    })
}

/// A socket file left by a process that died is removed; a live one, or any other file, is not.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ServerError::Socket {
            path: path.to_owned(),
            error,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(ServerError::NotASocket(path.to_owned())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ServerError::SocketInUse(path.to_owned())),
            Err(_) => {
                warn!(socket = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(|error| ServerError::Socket {
                    path: path.to_owned(),
                    error,
                })
            }
        },
    }
}

fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into `group` and `buf`.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

/// Serves milter connections until `shutdown` completes, then shuts down gracefully: stops
/// accepting and removes the unix socket at once, lets the messages in flight finish for up to
/// `[milter] shutdown_timeout`, and then closes every connection that is left.
pub async fn serve(
    listener: BoundListener,
    runtime: Arc<ArcSwap<Runtime>>,
    shutdown: impl Future,
) -> io::Result<()> {
    let (settings, metrics) = {
        let current = runtime.load();
        (current.config.milter.clone(), current.env.metrics.clone())
    };
    let config = indymilter::Config {
        // `Limited` applies `max_connections` itself: the library's own limit would stop
        // calling accept at the limit, and an idle connection could not be closed for a new one.
        max_connections: usize::MAX >> 4,
        ..Default::default()
    };
    let connections = Connections::new(settings.max_connections, settings.idle_timeout, metrics);
    let in_flight = milter::MessagesInFlight::default();
    let BoundListener { listener, socket } = listener;
    let (stop_accepting, accepting_stopped) = oneshot::channel();
    let listener = StopAccepting {
        // Batched: one write for all of an end-of-message's replies.
        inner: Some(Batched(Limited::new(listener, connections))),
        stop: accepting_stopped,
    };
    let drained = {
        let in_flight = in_flight.clone();
        async move {
            shutdown.await;
            let _ = stop_accepting.send(());
            // New connections fail at once instead of waiting in a backlog nobody accepts.
            drop(socket);
            finish_in_flight(&in_flight, settings.shutdown_timeout).await;
        }
    };
    // indymilter closes every remaining connection when `drained` completes.
    indymilter::run(
        listener,
        milter::callbacks(runtime, in_flight),
        config,
        drained,
    )
    .await
}

/// Waits until no message is in flight, or `bound` has passed.
async fn finish_in_flight(in_flight: &milter::MessagesInFlight, bound: Duration) {
    let waiting = in_flight.count();
    if waiting == 0 {
        return;
    }
    info!(messages = waiting, timeout = ?bound, "waiting for messages in flight to finish");
    match tokio::time::timeout(bound, in_flight.idle()).await {
        Ok(()) => info!("messages in flight finished"),
        Err(_) => warn!(
            messages = in_flight.count(),
            "shutdown_timeout passed: closing connections with messages still in flight (the MTA applies its milter_default_action)"
        ),
    }
}

/// A listener that stops accepting, and closes its socket, once `stop` fires.
struct StopAccepting<L> {
    inner: Option<L>,
    stop: oneshot::Receiver<()>,
}

impl<L: Listener> Listener for StopAccepting<L> {
    type Io = L::Io;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<L::Io>> {
        // A dropped sender means serve() is ending anyway; treat it as a stop too.
        if self.inner.is_some() && Pin::new(&mut self.stop).poll(cx).is_ready() {
            self.inner = None;
        }
        match &mut self.inner {
            Some(listener) => listener.poll_accept(cx),
            None => Poll::Pending,
        }
    }
}

/// Re-reads the configuration on every SIGHUP. A bad new file is logged and the running one
/// stays; messages already under way finish with the rules they started with. The keys of the
/// new configuration are warmed in the background (`warming`).
pub fn spawn_reload_on_sighup(
    path: PathBuf,
    runtime: Arc<ArcSwap<Runtime>>,
    warming: Arc<Warming>,
) -> io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            notify::reloading();
            let status = if reload(&path, &runtime).await {
                let current = runtime.load_full();
                warming.restart(current, warmed);
                "configuration reloaded"
            } else {
                "reload failed; the previous configuration is in use"
            };
            notify::reloaded(status);
        }
    });
    Ok(())
}

/// Logs and reports (systemd STATUS) how a warm-up pass ended.
pub fn warmed(report: crate::keys::warm::WarmReport) {
    info!(
        ok = report.ok,
        failed = report.failed,
        skipped = report.skipped,
        "keys checked"
    );
    notify::status(&format!("serving; {report}"));
    crate::memory::release_free_memory();
}

/// Loads `path` and swaps it in; returns whether it did.
pub async fn reload(path: &Path, runtime: &ArcSwap<Runtime>) -> bool {
    let current = runtime.load_full();
    match current.reload(path).await {
        Ok(new) => {
            for setting in needing_restart(&current.config, &new.config) {
                warn!("{setting} changed; the change takes effect at the next restart");
            }
            for w in &new.config.signing.warnings {
                warn!("{w}");
            }
            runtime.store(Arc::new(new));
            info!(config = %path.display(), "configuration reloaded");
            current.env.metrics.reload(true);
            retire(current);
            true
        }
        Err(e) => {
            error!("configuration not reloaded, the running one stays: {e}");
            current.env.metrics.reload(false);
            false
        }
    }
}

/// Frees a replaced configuration on the blocking pool, once the messages that started with it
/// are done: dropping 100,000 entries takes tens of milliseconds no connection should wait for.
/// Then the memory goes back to the system.
fn retire(old: Arc<Runtime>) {
    tokio::task::spawn_blocking(move || {
        while Arc::strong_count(&old) > 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(old);
        crate::memory::release_free_memory();
    });
}

/// The settings that are read once at startup (the listener, the connection machinery, the
/// logger, the metrics endpoint), named when a reload changed them.
pub fn needing_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.milter, &new.milter);
    let mut changed = Vec::new();
    let mut check = |differs: bool, name| {
        if differs {
            changed.push(name);
        }
    };
    check(a.listen != b.listen, "[milter] listen");
    check(a.socket_mode != b.socket_mode, "[milter] socket_mode");
    check(a.socket_group != b.socket_group, "[milter] socket_group");
    check(
        a.max_connections != b.max_connections,
        "[milter] max_connections",
    );
    check(a.idle_timeout != b.idle_timeout, "[milter] idle_timeout");
    check(
        a.shutdown_timeout != b.shutdown_timeout,
        "[milter] shutdown_timeout",
    );
    check(old.log != new.log, "[log]");
    check(old.metrics != new.metrics, "[metrics]");
    changed
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    notify::stopping();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_read_only_at_startup_is_named_when_a_reload_changes_it() {
        let parse = |text: &str| Config::parse(text, Path::new("t.toml")).unwrap();
        let old = parse("");
        assert!(needing_restart(&old, &parse("")).is_empty());
        let cases = [
            ("[milter]\nlisten = \"inet:127.0.0.1:9\"", "[milter] listen"),
            ("[milter]\nsocket_mode = \"0600\"", "[milter] socket_mode"),
            ("[milter]\nsocket_group = \"mail\"", "[milter] socket_group"),
            ("[milter]\nmax_connections = 10", "[milter] max_connections"),
            ("[milter]\nidle_timeout = \"1m\"", "[milter] idle_timeout"),
            (
                "[milter]\nshutdown_timeout = \"5s\"",
                "[milter] shutdown_timeout",
            ),
            ("[log]\nlevel = \"debug\"", "[log]"),
            ("[log]\nformat = \"json\"", "[log]"),
            ("[metrics]\nlisten = \"127.0.0.1:9199\"", "[metrics]"),
            ("[metrics]\nper_domain_series = 5", "[metrics]"),
        ];
        for (text, name) in cases {
            assert_eq!(needing_restart(&old, &parse(text)), [name], "{text}");
        }
        let reloadable = "[milter]\ntrusted_networks = [\"10.0.0.0/8\"]\non_error = \"reject\"\nsign_authenticated = false";
        assert!(needing_restart(&old, &parse(reloadable)).is_empty());
    }
}
