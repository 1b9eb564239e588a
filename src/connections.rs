//! The MTA's connections: how many may be open, how long one may sit idle, and what happens
//! when there are too many or the process runs out of file descriptors.
//!
//! - A connection with no message in flight that sends nothing for `[milter] idle_timeout` is
//!   closed. A connection in the middle of a message is never closed for being slow here; the
//!   milter library's own per-command timeout covers it.
//! - At `max_connections`, the connection that has been idle the longest is closed to make
//!   room, so idle connections can never starve one that brings a message; only when every
//!   connection has a message in flight does a new one wait, until a message ends or a connection closes.
//! - An accept that fails for lack of file descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) does
//!   not end the server, as it would in the milter library: an idle connection is closed to
//!   free a descriptor, and accepting resumes after a short back-off. Errors of one incoming
//!   connection (ECONNABORTED and the like) are skipped.
//!
//! Whether a message is in flight is read off the protocol itself, packet by packet: from the
//! MTA's MAIL command until its ABORT, QUIT, or the milter's final reply to the message.

use crate::metrics::{Closed, Metrics};
use indymilter::Listener;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// File descriptors kept for everything but MTA connections (key files, Vault, metrics, logs).
pub const RESERVED_FDS: u64 = 64;
/// Back-off after an accept found no file descriptor: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long for each kind of connection trouble.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The open connections, shared by the listener and every connection.
#[derive(Clone)]
pub struct Connections(Arc<Shared>);

struct Shared {
    limit: usize,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Mutex<Activity>>>,
    /// Closed by us and not gone yet: they no longer count against the limit.
    closing: usize,
    /// The accept loop, waiting for room.
    accept_waker: Option<Waker>,
}

/// What the listener needs to know about one connection, and how it is told to close.
struct Activity {
    /// `None` while a message is in flight.
    idle_since: Option<Instant>,
    closing: bool,
    reader: Option<Waker>,
}

impl Connections {
    pub fn new(limit: usize, idle_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Connections(Arc::new(Shared {
            limit,
            idle_timeout,
            metrics,
            registry: Mutex::new(Registry::default()),
        }))
    }

    /// How many are open (including those being closed).
    pub fn open(&self) -> usize {
        lock(&self.0.registry).open.len()
    }

    fn track<S>(&self, stream: S) -> Tracked<S> {
        let activity = Arc::new(Mutex::new(Activity {
            idle_since: Some(Instant::now()),
            closing: false,
            reader: None,
        }));
        let id = {
            let mut registry = lock(&self.0.registry);
            let id = registry.next_id;
            registry.next_id += 1;
            registry.open.insert(id, activity.clone());
            id
        };
        self.0.metrics.connection_opened();
        Tracked {
            stream,
            connections: self.clone(),
            id,
            activity,
            commands: PacketScanner::default(),
            replies: PacketScanner::default(),
            in_message: false,
            last_command: 0,
            deadline: Box::pin(tokio::time::sleep(self.0.idle_timeout)),
        }
    }

    /// Whether another connection may be accepted now; when not, `waker` is woken once one
    /// closes.
    fn has_room(&self, waker: &Waker) -> bool {
        let mut registry = lock(&self.0.registry);
        if registry.open.len() - registry.closing < self.0.limit {
            return true;
        }
        registry.accept_waker = Some(waker.clone());
        false
    }

    /// Closes the connection idle the longest; `false` when every one has a message in flight.
    fn close_longest_idle(&self) -> bool {
        let mut registry = lock(&self.0.registry);
        let oldest = registry
            .open
            .values()
            .filter_map(|a| {
                let activity = lock(a);
                match (activity.closing, activity.idle_since) {
                    (false, Some(since)) => Some((since, a.clone())),
                    _ => None,
                }
            })
            .min_by_key(|(since, _)| *since);
        let Some((_, activity)) = oldest else {
            return false;
        };
        // Marked while the registry is locked, so that its drop (which takes the registry
        // lock too) always sees the mark and uncounts it.
        let mut activity = lock(&activity);
        activity.closing = true;
        registry.closing += 1;
        drop(registry);
        if let Some(reader) = activity.reader.take() {
            reader.wake();
        }
        self.0.metrics.connection_closed(Closed::Evicted);
        true
    }

    fn wake_acceptor(&self) {
        if let Some(waker) = lock(&self.0.registry).accept_waker.take() {
            waker.wake();
        }
    }

    fn forget(&self, id: u64, activity: &Mutex<Activity>) {
        let mut registry = lock(&self.0.registry);
        registry.open.remove(&id);
        if lock(activity).closing {
            registry.closing = registry.closing.saturating_sub(1);
        }
        if let Some(waker) = registry.accept_waker.take() {
            waker.wake();
        }
        drop(registry);
        self.0.metrics.connection_ended();
    }
}

/// A listener that applies [`Connections`]' limit and survives running out of descriptors.
pub struct Limited<L: Listener> {
    inner: L,
    connections: Connections,
    /// Accepted at the limit with every connection busy: served once one closes or goes idle.
    held: Option<L::Io>,
    backoff: Option<Pin<Box<Sleep>>>,
    next_backoff: Duration,
    limit_log: RateLimited,
    fd_log: RateLimited,
}

impl<L: Listener> Limited<L> {
    pub fn new(inner: L, connections: Connections) -> Self {
        Limited {
            inner,
            connections,
            held: None,
            backoff: None,
            next_backoff: BACKOFF_FIRST,
            limit_log: RateLimited::default(),
            fd_log: RateLimited::default(),
        }
    }

    /// Room for the connection just accepted: at the limit, the connection idle the longest
    /// is closed for it. `first`: the first try for this connection (counted and logged once).
    fn make_room(&mut self, cx: &mut Context<'_>, first: bool) -> bool {
        if self.connections.has_room(cx.waker()) {
            return true;
        }
        let limit = self.connections.0.limit;
        if self.connections.close_longest_idle() {
            self.connections.0.metrics.connection_limit_reached();
            self.limit_log.warn(|suppressed| {
                tracing::warn!(
                    max_connections = limit,
                    more = suppressed,
                    "connection limit reached: closing the connection idle the longest to make room"
                );
            });
            return true;
        }
        if first {
            self.connections.0.metrics.connection_limit_reached();
            self.limit_log.warn(|suppressed| {
                tracing::warn!(
                    max_connections = limit,
                    more = suppressed,
                    "connection limit reached and every connection has a message in flight: new connections wait (raise [milter] max_connections)"
                );
            });
        }
        false
    }

    /// An accept failed for lack of descriptors: free one and try again shortly.
    fn back_off(&mut self, error: &io::Error) {
        self.connections.0.metrics.accept_error("fd_exhausted");
        let freed = self.connections.close_longest_idle();
        let open = self.connections.open();
        self.fd_log.warn(|suppressed| {
            tracing::error!(
                error = %error,
                open_connections = open,
                closed_an_idle_one = freed,
                more = suppressed,
                "cannot accept a connection: out of file descriptors; retrying (raise LimitNOFILE / ulimit -n, or lower [milter] max_connections)"
            );
        });
        self.backoff = Some(Box::pin(tokio::time::sleep(self.next_backoff)));
        self.next_backoff = (self.next_backoff * 2).min(BACKOFF_MAX);
    }
}

impl<L> Listener for Limited<L>
where
    L: Listener,
    L::Io: Unpin,
{
    type Io = Tracked<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(stream) = self.held.take() {
                if self.make_room(cx, false) {
                    return Poll::Ready(Ok(self.connections.track(stream)));
                }
                self.held = Some(stream);
                return Poll::Pending;
            }
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.inner.poll_accept(cx)) {
                Ok(stream) => {
                    self.next_backoff = BACKOFF_FIRST;
                    if self.make_room(cx, true) {
                        return Poll::Ready(Ok(self.connections.track(stream)));
                    }
                    self.held = Some(stream);
                    return Poll::Pending;
                }
                Err(e) => match AcceptError::of(&e) {
                    AcceptError::OutOfDescriptors => self.back_off(&e),
                    AcceptError::ThisConnection => {
                        self.connections.0.metrics.accept_error("other");
                        tracing::debug!(error = %e, "accept: the connection failed before it was accepted");
                    }
                    // The listening socket itself is broken: nothing to retry.
                    AcceptError::Fatal => return Poll::Ready(Err(e)),
                },
            }
        }
    }
}

enum AcceptError {
    OutOfDescriptors,
    ThisConnection,
    Fatal,
}

impl AcceptError {
    fn of(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptError::OutOfDescriptors
            }
            Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT) => AcceptError::Fatal,
            _ => AcceptError::ThisConnection,
        }
    }
}

/// A connection whose packets are watched for whether a message is in flight, so that it is
/// closed when idle too long or when room is needed.
pub struct Tracked<S> {
    stream: S,
    connections: Connections,
    id: u64,
    activity: Arc<Mutex<Activity>>,
    commands: PacketScanner,
    replies: PacketScanner,
    in_message: bool,
    /// The command the milter is answering.
    last_command: u8,
    /// When an idle connection is closed; reset by every command and reply.
    deadline: Pin<Box<Sleep>>,
}

/// Milter replies after which the milter is done with the message (accept, reject, tempfail,
/// discard, a reply code); after end of message, any reply is the final one.
const FINAL_REPLIES: &[u8] = b"artdy";

impl<S> Tracked<S> {
    fn command(&mut self, kind: u8) {
        self.last_command = kind;
        match kind {
            b'M' => self.set_in_message(true),
            b'A' | b'Q' | b'K' => self.set_in_message(false),
            _ => {}
        }
    }

    fn reply(&mut self, kind: u8) {
        let ends_message =
            FINAL_REPLIES.contains(&kind) || (self.last_command == b'E' && kind == b'c');
        if self.in_message && ends_message {
            self.set_in_message(false);
        }
    }

    fn set_in_message(&mut self, in_message: bool) {
        if self.in_message != in_message {
            self.in_message = in_message;
            lock(&self.activity).idle_since = (!in_message).then(Instant::now);
            if !in_message {
                // A connection waiting at the limit may now take this one's place.
                self.connections.wake_acceptor();
            }
        }
    }

    /// Something happened on an idle connection: its idle time starts again.
    fn active(&mut self) {
        if !self.in_message {
            let now = Instant::now();
            self.deadline
                .as_mut()
                .reset(now + self.connections.0.idle_timeout);
            lock(&self.activity).idle_since = Some(now);
        }
    }

    /// Whether to end the connection now (it reads as closed by the MTA).
    fn should_close(&mut self, cx: &mut Context<'_>) -> bool {
        let mut activity = lock(&self.activity);
        if activity.closing {
            return true;
        }
        activity.reader = Some(cx.waker().clone());
        drop(activity);
        if !self.in_message && self.deadline.as_mut().poll(cx).is_ready() {
            self.connections.0.metrics.connection_closed(Closed::Idle);
            tracing::debug!(
                idle_timeout = ?self.connections.0.idle_timeout,
                "closing a connection idle with no message in flight"
            );
            let mut registry = lock(&self.connections.0.registry);
            lock(&self.activity).closing = true;
            registry.closing += 1;
            return true;
        }
        false
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        self.connections.forget(self.id, &self.activity);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.should_close(cx) {
            // Nothing more is read: the milter library sees the end of the stream and closes.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let mut scanner = std::mem::take(&mut this.commands);
        let mut any = false;
        scanner.feed(&buf.filled()[before..], |kind| {
            any = true;
            this.command(kind);
        });
        this.commands = scanner;
        if any {
            this.active();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        let mut scanner = std::mem::take(&mut this.replies);
        scanner.feed(&buf[..n], |kind| this.reply(kind));
        this.replies = scanner;
        this.active();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Finds packet boundaries in a byte stream (4-byte big-endian length, then the command or
/// reply byte and the payload) without copying the payload.
#[derive(Default)]
struct PacketScanner {
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current packet still to come.
    remaining: usize,
}

impl PacketScanner {
    /// Calls `kind` with the command byte of every packet whose header completes in `bytes`.
    fn feed(&mut self, mut bytes: &[u8], mut kind: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == 5 {
                let [a, b, c, d, command] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                // The length counts the command byte; a zero length is garbage the milter
                // library refuses, so it is read as a packet without payload.
                self.remaining = len.saturating_sub(1);
                self.have = 0;
                kind(command);
            }
        }
    }
}

/// One log line per [`LOG_INTERVAL`], saying how many were left out in between.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        log(std::mem::take(&mut self.suppressed));
    }
}

/// Raises the soft limit on open files to the hard limit (as Go programs and nginx do), so
/// that `max_connections` is not capped by systemd's default soft limit of 1,024; returns the
/// limit in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is a few field writes that cannot panic half-way.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = u32::try_from(payload.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        p.push(kind);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn packets_are_found_however_the_bytes_are_split() {
        let stream = [
            packet(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]),
            packet(b'M', b"<a@example.com>\0"),
            packet(b'B', &vec![b'x'; 70_000]),
            packet(b'E', b""),
            packet(b'A', b""),
        ]
        .concat();
        for split in [1, 2, 3, 5, 7, 4096, stream.len()] {
            let mut scanner = PacketScanner::default();
            let mut kinds = Vec::new();
            for chunk in stream.chunks(split) {
                scanner.feed(chunk, |k| kinds.push(k));
            }
            assert_eq!(kinds, b"OMBEA", "split {split}");
        }
    }

    #[tokio::test]
    async fn a_message_is_in_flight_from_mail_to_its_final_reply() {
        let connections = Connections::new(10, Duration::from_secs(60), Arc::new(Metrics::new()));
        let (_client, server) = tokio::io::duplex(64);
        let mut c = connections.track(server);
        let idle = |c: &Tracked<_>| lock(&c.activity).idle_since.is_some();
        assert!(idle(&c));
        c.command(b'M');
        assert!(!idle(&c));
        c.reply(b'c');
        c.command(b'R');
        c.reply(b'c');
        c.command(b'E');
        c.reply(b'i');
        assert!(!idle(&c), "a header insertion is not the final reply");
        c.reply(b'c');
        assert!(idle(&c), "continue after end of message ends it");
        c.command(b'M');
        c.reply(b'a');
        assert!(idle(&c), "accept at MAIL ends it");
        c.command(b'M');
        c.command(b'A');
        assert!(idle(&c), "abort ends it");
        assert_eq!(connections.open(), 1);
        drop(c);
        assert_eq!(connections.open(), 0);
    }
}
