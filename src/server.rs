//! Listening for the MTA: unix or TCP socket, signals for reload and shutdown.

use crate::config::{ListenAddr, MilterSettings};
use crate::milter;
use crate::reply_batch::Batched;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use indymilter::{EitherListener, Listener};
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0} is in use by a running process (another signet-milter?)")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("unknown group \"{0}\" for socket_group")]
    UnknownGroup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot set up socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: io::Error },
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
                .map_err(|source| ServerError::Bind {
                    addr: settings.listen.to_string(),
                    source,
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
    let socket_err = |source| ServerError::Socket {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        addr: settings.listen.to_string(),
        source,
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
        Err(source) => Err(ServerError::Socket {
            path: path.to_owned(),
            source,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(ServerError::NotASocket(path.to_owned())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ServerError::SocketInUse(path.to_owned())),
            Err(_) => {
                warn!(socket = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(|source| ServerError::Socket {
                    path: path.to_owned(),
                    source,
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

/// Serves milter connections until `shutdown` completes.
pub async fn serve(
    listener: BoundListener,
    runtime: Arc<ArcSwap<Runtime>>,
    shutdown: impl std::future::Future,
) -> io::Result<()> {
    let config = indymilter::Config {
        max_connections: runtime.load().config.milter.max_connections,
        ..Default::default()
    };
    let BoundListener { listener, socket } = listener;
    let listener = Batched(listener);
    let result = indymilter::run(listener, milter::callbacks(runtime), config, shutdown).await;
    drop(socket); // the socket file goes only after the last session ended
    result
}

/// Re-reads the configuration on every SIGHUP. A bad new file is logged and the running one
/// stays; messages already under way finish with the rules they started with.
pub fn spawn_reload_on_sighup(path: PathBuf, runtime: Arc<ArcSwap<Runtime>>) -> io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload(&path, &runtime);
        }
    });
    Ok(())
}

/// Loads `path` and swaps it in; returns whether it did.
pub fn reload(path: &Path, runtime: &ArcSwap<Runtime>) -> bool {
    match Runtime::load(path) {
        Ok(new) => {
            if new.config.milter.listen != runtime.load().config.milter.listen {
                warn!("the listen address changed; it takes effect at the next restart");
            }
            for w in &new.config.signing.warnings {
                warn!("{w}");
            }
            runtime.store(Arc::new(new));
            info!(config = %path.display(), "configuration reloaded");
            true
        }
        Err(e) => {
            error!("configuration not reloaded, the running one stays: {e}");
            false
        }
    }
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
}
