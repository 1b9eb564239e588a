//! Tells systemd (`Type=notify`) what the daemon is doing: ready as soon as the socket is bound
//! (keys are checked after it; their result is a STATUS update), reloading around SIGHUP,
//! stopping at shutdown. Without `NOTIFY_SOCKET`
//! (not started by systemd, or by the tests) every call does nothing.
//!
//! The `sd-notify` crate writes the datagram; it is small, depends only on libc, and spells the
//! reload protocol systemd ≥ 253 requires (`RELOADING=1` with `MONOTONIC_USEC`).

use sd_notify::NotifyState;
use tracing::warn;

/// The socket is listening with a configuration in force.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload begins. systemd ≥ 253 refuses `RELOADING=1` without the monotonic time it
/// was sent at (and then fails the reload), so the two go in one datagram.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!("cannot read the monotonic clock for systemd: {e}"),
    }
}

/// A reload ended, successfully or not: the daemon serves again.
pub fn reloaded(status: &str) {
    ready(status);
}

/// Shutdown has begun (SIGTERM or SIGINT).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd: {e}");
    }
}

/// What the daemon is doing, for `systemctl status` (without changing its state).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}
