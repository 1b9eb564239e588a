//! Counters and histograms of the running milter, in Prometheus' text format.
//!
//! One [`Metrics`] lives as long as the process (it is shared by every configuration generation
//! across reloads) and is handed to the parts that count. With `[metrics] listen`, [`serve`]
//! exposes them at `/metrics`, with `/healthz` for liveness checks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which domains have series of their own.
#[derive(Default)]
struct PerDomain {
    limit: usize,
    admitted: HashSet<String>,
}

impl PerDomain {
    /// The label to count `domain` under; `None` when domains are not counted at all.
    fn label(&mut self, domain: &str) -> Option<String> {
        if self.limit == 0 {
            return None;
        }
        if self.admitted.contains(domain) {
            return Some(domain.to_string());
        }
        if self.admitted.len() < self.limit {
            self.admitted.insert(domain.to_string());
            return Some(domain.to_string());
        }
        Some(OTHER_DOMAINS.to_string())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a few field writes that cannot panic half-way.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Label pairs with static names and values: no allocation to count.
type Labels<const N: usize> = [(&'static str, &'static str); N];

fn fetch_histogram() -> Histogram {
    // 1 ms … ~16 s: a local file, a warm Vault read, up to a backend that hits its timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// What a key lookup was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh cached key: no backend asked.
    Hit,
    /// A cached file key whose once-a-second `stat` showed the file unchanged.
    Revalidated,
    /// Not cached (or expired past use, or the file changed): read or fetched while the
    /// message waited.
    Miss,
    /// The last good key, past its `ttl`, served while a refresh runs or fails.
    Stale,
    /// A failure remembered from a recent fetch (`negative_ttl`).
    Negative,
}

impl Lookup {
    fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Revalidated => "revalidated",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
            Lookup::Negative => "negative",
        }
    }
}

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageResult {
    Signed,
    /// Not signed because the client is neither trusted nor authenticated.
    SkippedUntrusted,
    /// Not signed because no signature applies (no usable From, no matching entry, or every
    /// signature failed with `on_error = accept`).
    SkippedNoSignature,
    /// Not signed because the authenticated login may not sign for the author domain.
    SkippedUnauthorized,
    /// Refused (`on_unauthorized = tempfail | reject`) because the login may not sign for it.
    RefusedUnauthorized,
    /// Refused by a failing signature's `on_error`.
    Tempfailed,
    Rejected,
}

impl MessageResult {
    fn labels(self) -> Labels<2> {
        let (result, reason) = match self {
            MessageResult::Signed => ("signed", "ok"),
            MessageResult::SkippedUntrusted => ("skipped", "untrusted"),
            MessageResult::SkippedNoSignature => ("skipped", "no_signature"),
            MessageResult::SkippedUnauthorized => ("skipped", "unauthorized"),
            MessageResult::RefusedUnauthorized => ("failed", "unauthorized"),
            MessageResult::Tempfailed => ("failed", "tempfail"),
            MessageResult::Rejected => ("failed", "reject"),
        };
        [("result", result), ("reason", reason)]
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignatureLabels {
    domain: String,
    algorithm: &'static str,
}

/// Why the milter closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// No message in flight and nothing sent for `[milter] idle_timeout`.
    Idle,
    /// The idle connection closed to make room at `max_connections` or when file
    /// descriptors ran out.
    Evicted,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
        }
    }
}

/// The domain label of signatures beyond `[metrics] per_domain_series`.
pub const OTHER_DOMAINS: &str = "other";

pub struct Metrics {
    registry: Registry,
    messages: Family<Labels<2>, Counter>,
    signatures: Family<Labels<1>, Counter>,
    /// Per signing domain, only with `[metrics] per_domain_series`, and for that many domains.
    domain_signatures: Family<SignatureLabels, Counter>,
    per_domain: Mutex<PerDomain>,
    keys: Family<Labels<1>, Gauge>,
    connections: Gauge,
    connections_closed: Family<Labels<1>, Counter>,
    connection_limit: Counter,
    accept_errors: Family<Labels<1>, Counter>,
    signature_failures: Family<Labels<1>, Counter>,
    reloads: Family<Labels<1>, Counter>,
    authorizations: Family<Labels<1>, Counter>,
    key_lookups: Family<Labels<2>, Counter>,
    key_fetch_errors: Family<Labels<1>, Counter>,
    key_fetch_seconds: Family<Labels<1>, Histogram, fn() -> Histogram>,
    rotation_keys: Family<Labels<1>, Gauge>,
    rotation_oldest_pending: Gauge,
    rotation_oldest_active: Gauge,
    rotation_transitions: Family<Labels<1>, Counter>,
    rotation_failures: Family<Labels<1>, Counter>,
    /// The latest rotation round, for `/healthz`.
    rotation: Mutex<Option<RotationSummary>>,
    /// A configuration is loaded and the milter socket is accepting connections.
    ready: AtomicBool,
}

/// Keys of rotated signatures by phase, after the latest rotation round. Counts and ages
/// over all domains, so the metrics stay a fixed handful of series however many domains
/// rotate; `check` and the logs name the domains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationSummary {
    pub pending: usize,
    pub active: usize,
    pub retiring: usize,
    pub revoked: usize,
    /// Pending keys older than `pending_warning` (their record is still not served everywhere).
    pub pending_overdue: usize,
    /// Rotated signatures whose state could not be read.
    pub unreadable: usize,
    pub oldest_pending: Option<Duration>,
    pub oldest_active: Option<Duration>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("signet");
        let build_info = Family::<Labels<1>, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The running version", build_info);
        let messages = Family::<Labels<2>, Counter>::default();
        registry.register(
            "messages",
            "Messages by result (signed, skipped, failed) and reason",
            messages.clone(),
        );
        let signatures = Family::<Labels<1>, Counter>::default();
        registry.register(
            "signatures",
            "DKIM signatures added, by algorithm",
            signatures.clone(),
        );
        let domain_signatures = Family::<SignatureLabels, Counter>::default();
        registry.register(
            "domain_signatures",
            "DKIM signatures added, by signing domain and algorithm (with [metrics] per_domain_series; later domains count as \"other\")",
            domain_signatures.clone(),
        );
        let keys = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "keys",
            "Configured key sources by state after the last warm-up pass (ok, failed, pending)",
            keys.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections", "Open MTA connections", connections.clone());
        let connections_closed = Family::<Labels<1>, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the milter closed itself, by reason (idle, evicted)",
            connections_closed.clone(),
        );
        let connection_limit = Counter::default();
        registry.register(
            "connection_limit_reached",
            "Connections that found max_connections reached (an idle one was closed, or they waited)",
            connection_limit.clone(),
        );
        let accept_errors = Family::<Labels<1>, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts of MTA connections, by kind (fd_exhausted, other)",
            accept_errors.clone(),
        );
        let signature_failures = Family::<Labels<1>, Counter>::default();
        registry.register(
            "signature_failures",
            "Signatures that could not be made, by the on_error action taken",
            signature_failures.clone(),
        );
        let reloads = Family::<Labels<1>, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            reloads.clone(),
        );
        let authorizations = Family::<Labels<1>, Counter>::default();
        registry.register(
            "authorizations",
            "Whether an authenticated login may sign for a domain, by result (granted, denied, unavailable)",
            authorizations.clone(),
        );
        let key_lookups = Family::<Labels<2>, Counter>::default();
        registry.register(
            "key_cache_lookups",
            "Key lookups by backend and result (hit, miss, stale, negative)",
            key_lookups.clone(),
        );
        let key_fetch_errors = Family::<Labels<1>, Counter>::default();
        registry.register(
            "key_fetch_errors",
            "Failed key fetches by backend",
            key_fetch_errors.clone(),
        );
        let key_fetch_seconds = Family::new_with_constructor(fetch_histogram as fn() -> Histogram);
        registry.register(
            "key_fetch_duration_seconds",
            "Time to fetch and parse a key, by backend",
            key_fetch_seconds.clone(),
        );
        let rotation_keys = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "rotation_keys",
            "Keys of rotated signatures by phase (pending, active, retiring, revoked)",
            rotation_keys.clone(),
        );
        let rotation_oldest_pending = Gauge::default();
        registry.register(
            "rotation_oldest_pending_seconds",
            "Age of the oldest key waiting for its record to be served everywhere (0: none)",
            rotation_oldest_pending.clone(),
        );
        let rotation_oldest_active = Gauge::default();
        registry.register(
            "rotation_oldest_active_seconds",
            "How long the longest-serving active key of a rotated signature has signed",
            rotation_oldest_active.clone(),
        );
        let rotation_transitions = Family::<Labels<1>, Counter>::default();
        registry.register(
            "rotation_transitions",
            "Rotation transitions by the phase a key entered",
            rotation_transitions.clone(),
        );
        let rotation_failures = Family::<Labels<1>, Counter>::default();
        registry.register(
            "rotation_failures",
            "Rotation steps that failed or were held back, by step (state, generate, publish, gate, revoke, remove, clock)",
            rotation_failures.clone(),
        );
        Metrics {
            registry,
            rotation_keys,
            rotation_oldest_pending,
            rotation_oldest_active,
            rotation_transitions,
            rotation_failures,
            rotation: Mutex::new(None),
            messages,
            signatures,
            domain_signatures,
            per_domain: Mutex::new(PerDomain::default()),
            keys,
            connections,
            connections_closed,
            connection_limit,
            accept_errors,
            signature_failures,
            reloads,
            authorizations,
            key_lookups,
            key_fetch_errors,
            key_fetch_seconds,
            ready: AtomicBool::new(false),
        }
    }

    pub fn message(&self, result: MessageResult) {
        self.messages.get_or_create(&result.labels()).inc();
    }

    pub fn messages(&self, result: MessageResult) -> u64 {
        self.messages.get_or_create(&result.labels()).get()
    }

    /// Gives up to `limit` signing domains series of their own (`[metrics] per_domain_series`).
    pub fn set_per_domain_series(&self, limit: usize) {
        lock(&self.per_domain).limit = limit;
    }

    pub fn signature(&self, domain: &str, algorithm: &'static str) {
        self.signatures
            .get_or_create(&[("algorithm", algorithm)])
            .inc();
        let Some(domain) = lock(&self.per_domain).label(domain) else {
            return;
        };
        self.domain_signatures
            .get_or_create(&SignatureLabels { domain, algorithm })
            .inc();
    }

    /// A warm-up pass starts over `total` key sources.
    pub fn keys_warming(&self, total: usize) {
        self.set_keys(0, 0, total);
    }

    /// Progress of the warm-up pass.
    pub fn key_warmed(&self, ok: usize, failed: usize) {
        let total = self.keys_total();
        self.set_keys(ok, failed, total.saturating_sub(ok + failed));
    }

    fn set_keys(&self, ok: usize, failed: usize, pending: usize) {
        for (state, n) in [("ok", ok), ("failed", failed), ("pending", pending)] {
            self.keys
                .get_or_create(&[("state", state)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn keys_total(&self) -> usize {
        ["ok", "failed", "pending"]
            .iter()
            .map(|state| self.keys.get_or_create(&[("state", state)]).get())
            .map(|n| usize::try_from(n).unwrap_or(0))
            .sum()
    }

    /// `(ok, failed, pending)` key sources of the last warm-up pass.
    pub fn key_states(&self) -> (i64, i64, i64) {
        let get = |state| self.keys.get_or_create(&[("state", state)]).get();
        (get("ok"), get("failed"), get("pending"))
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_ended(&self) {
        self.connections.dec();
    }

    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    pub fn connection_closed(&self, why: Closed) {
        self.connections_closed
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    pub fn connections_closed(&self, why: Closed) -> u64 {
        self.connections_closed
            .get_or_create(&[("reason", why.as_str())])
            .get()
    }

    pub fn connection_limit_reached(&self) {
        self.connection_limit.inc();
    }

    /// `fd_exhausted`: EMFILE/ENFILE and the like; `other`: anything else.
    pub fn accept_error(&self, kind: &'static str) {
        self.accept_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// `action` is the `on_error` applied: `tempfail`, `reject` or `accept`.
    pub fn signature_failure(&self, action: &'static str) {
        self.signature_failures
            .get_or_create(&[("action", action)])
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    /// `result`: `granted`, `denied` or `unavailable` (the callback could not answer).
    pub fn authorization(&self, result: &'static str) {
        self.authorizations
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub fn authorizations(&self, result: &'static str) -> u64 {
        self.authorizations
            .get_or_create(&[("result", result)])
            .get()
    }

    pub fn rotation_failure(&self, step: &'static str) {
        self.rotation_failures
            .get_or_create(&[("step", step)])
            .inc();
    }

    pub fn rotation_failures(&self, step: &'static str) -> u64 {
        self.rotation_failures
            .get_or_create(&[("step", step)])
            .get()
    }

    pub fn rotation_transition(&self, phase: crate::rotation::state::Phase) {
        self.rotation_transitions
            .get_or_create(&[("phase", phase.as_str())])
            .inc();
    }

    /// Records the latest rotation round.
    pub fn set_rotation(&self, summary: RotationSummary) {
        let set = |phase: &'static str, n: usize| {
            self.rotation_keys
                .get_or_create(&[("phase", phase)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("pending", summary.pending);
        set("active", summary.active);
        set("retiring", summary.retiring);
        set("revoked", summary.revoked);
        let secs = |d: Option<Duration>| {
            i64::try_from(d.unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
        };
        self.rotation_oldest_pending
            .set(secs(summary.oldest_pending));
        self.rotation_oldest_active.set(secs(summary.oldest_active));
        *lock(&self.rotation) = Some(summary);
    }

    /// The `/healthz` text after `ok`: one line on rotation, and a warning line when a pending
    /// key is overdue or a state file unreadable (the milter still signs: the active key does).
    fn rotation_health(&self) -> String {
        let guard = lock(&self.rotation);
        let Some(s) = guard.as_ref() else {
            return String::new();
        };
        let age = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}s", d.as_secs()));
        let mut out = format!(
            "rotation: {} active (oldest {}), {} pending (oldest {}), {} retiring, {} revoked\n",
            s.active,
            age(s.oldest_active),
            s.pending,
            age(s.oldest_pending),
            s.retiring,
            s.revoked
        );
        if s.pending_overdue > 0 {
            out.push_str(&format!(
                "warning: {} pending key(s) not served by every DNS server after pending_warning\n",
                s.pending_overdue
            ));
        }
        if s.unreadable > 0 {
            out.push_str(&format!(
                "warning: {} rotated signature(s) with unreadable state\n",
                s.unreadable
            ));
        }
        out
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn key_lookup(&self, backend: &'static str, result: Lookup) {
        self.key_lookups
            .get_or_create(&[("backend", backend), ("result", result.as_str())])
            .inc();
    }

    pub fn key_fetch(&self, backend: &'static str, seconds: f64, ok: bool) {
        self.key_fetch_seconds
            .get_or_create(&[("backend", backend)])
            .observe(seconds);
        if !ok {
            self.key_fetch_errors
                .get_or_create(&[("backend", backend)])
                .inc();
        }
    }

    /// How many lookups of `backend` were answered with `result` (for tests and `check`).
    pub fn key_lookups(&self, backend: &'static str, result: Lookup) -> u64 {
        self.key_lookups
            .get_or_create(&[("backend", backend), ("result", result.as_str())])
            .get()
    }

    pub fn key_fetch_errors(&self, backend: &'static str) -> u64 {
        self.key_fetch_errors
            .get_or_create(&[("backend", backend)])
            .get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` (200 while ready, else 503) until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scraper that hangs up early is not worth a log line.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
        });
    }
}

/// Binds the metrics listener (an error names the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics listener {addr}: {e}")))
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond<B>(metrics: &Metrics, request: &hyper::Request<B>) -> hyper::Response<Body> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, "/healthz") if metrics.is_ready() => {
            let (ok, failed, pending) = metrics.key_states();
            let body = format!(
                "ok\nkeys: {ok} ok, {failed} failed, {pending} pending\n{}",
                metrics.rotation_health()
            );
            (200, "text/plain", body)
        }
        (&hyper::Method::GET, "/healthz") => (503, "text/plain", "not ready\n".to_string()),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
    };
    let mut response = hyper::Response::new(Body::new(body.into()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_do_not_grow_with_the_domains_unless_asked_and_then_only_so_far() {
        let m = Metrics::new();
        for i in 0..1000 {
            m.signature(&format!("d{i}.example"), "ed25519-sha256");
        }
        let text = m.encode();
        assert!(text.contains("signet_signatures_total{algorithm=\"ed25519-sha256\"} 1000"));
        assert!(!text.contains("d1.example"), "no domain label by default");

        let m = Metrics::new();
        m.set_per_domain_series(2);
        for domain in [
            "a.example",
            "b.example",
            "c.example",
            "a.example",
            "d.example",
        ] {
            m.signature(domain, "rsa-sha256");
        }
        let text = m.encode();
        let series = |d: &str| {
            format!("signet_domain_signatures_total{{domain=\"{d}\",algorithm=\"rsa-sha256\"}}")
        };
        assert!(
            text.contains(&format!("{} 2", series("a.example"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 1", series("b.example"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 2", series(OTHER_DOMAINS))),
            "{text}"
        );
        assert!(!text.contains("c.example"), "{text}");
    }

    #[test]
    fn rotation_shows_in_the_metrics_and_in_healthz() {
        let m = Metrics::new();
        assert_eq!(m.rotation_health(), "", "nothing said without rotation");
        m.set_rotation(RotationSummary {
            pending: 1,
            active: 3,
            retiring: 1,
            pending_overdue: 1,
            oldest_pending: Some(Duration::from_secs(90_000)),
            oldest_active: Some(Duration::from_secs(86_400)),
            ..RotationSummary::default()
        });
        m.rotation_failure("publish");
        let text = m.encode();
        for line in [
            "signet_rotation_keys{phase=\"active\"} 3",
            "signet_rotation_keys{phase=\"pending\"} 1",
            "signet_rotation_oldest_pending_seconds 90000",
            "signet_rotation_failures_total{step=\"publish\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        m.set_ready(true);
        let request = hyper::Request::get("/healthz").body(()).unwrap();
        assert_eq!(respond(&m, &request).status(), 200);
        let health = m.rotation_health();
        assert!(
            health.starts_with("rotation: 3 active (oldest 86400s), 1 pending (oldest 90000s), 1 retiring, 0 revoked\n"),
            "{health}"
        );
        assert!(
            health.contains("warning: 1 pending key(s) not served"),
            "{health}"
        );
    }

    #[test]
    fn counts_appear_in_the_exposition() {
        let m = Metrics::new();
        m.key_lookup("vault", Lookup::Stale);
        m.key_lookup("vault", Lookup::Stale);
        m.key_fetch("vault", 0.004, false);
        assert_eq!(m.key_lookups("vault", Lookup::Stale), 2);
        assert_eq!(m.key_fetch_errors("vault"), 1);
        let text = m.encode();
        assert!(
            text.contains("signet_key_cache_lookups_total{backend=\"vault\",result=\"stale\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("signet_key_fetch_duration_seconds_count{backend=\"vault\"} 1"),
            "{text}"
        );
    }
}
