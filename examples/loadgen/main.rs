//! Load generator for DKIM milters: plays the MTA side of the milter protocol as Postfix does
//! (see `protocol.rs`) over N concurrent connections, many messages per connection with an
//! ABORT between them, and reports messages/s, end-of-message latency, errors, and the
//! milter's CPU time and peak RSS read from `/proc/PID`.
//!
//! ```text
//! cargo run --release --ignore-rust-version --example loadgen -- \
//!     --socket unix:/tmp/signet.sock --pid "$(pidof signet-milter)" \
//!     --connections 8 --body 2KiB --duration 10s --save /tmp/signed --save-count 20
//! ```
//!
//! It runs on one thread (a current-thread tokio runtime) so that it never takes more than
//! one core from the milter under test, and it reports its own CPU time so that one can see
//! it is not the bottleneck. Exit status 1 when any message failed.

mod mail;
mod measure;
mod protocol;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use mail::Envelope;
use protocol::{BODY_CHUNK, Endpoint, EomResult, MacroValues, MilterConn, Reply};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

#[derive(Parser, Debug)]
#[command(about = "Milter load generator: the MTA side of the milter protocol, like Postfix")]
struct Args {
    /// The milter: unix:/path (or just /path) or inet:127.0.0.1:PORT.
    #[arg(long)]
    socket: Endpoint,
    /// Concurrent milter connections.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Stop after this many measured messages (all connections together).
    #[arg(long, short = 'n')]
    messages: Option<u64>,
    /// Stop starting messages after this long (e.g. 10s); in-flight messages finish.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Body size: bytes, or with a KiB / MiB suffix.
    #[arg(long, default_value = "2KiB", value_parser = parse_size)]
    body: usize,
    /// Messages per connection before measuring starts (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Reconnect after this many messages on one connection (0: keep the connection).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    /// PID of the milter, for its CPU time and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Save signed messages (as the MTA would queue them) into this directory.
    #[arg(long)]
    save: Option<PathBuf>,
    /// How many messages to save.
    #[arg(long, default_value_t = 10)]
    save_count: u64,
    /// Save every Nth measured message, so that the sample spans the run.
    #[arg(long, default_value_t = 1)]
    save_stride: u64,
    /// Author (From:) domain of the messages; with --domains, `{n}` in it is replaced by a
    /// number below that count (e.g. `d{n}.example`).
    #[arg(long, default_value = "example.com")]
    from_domain: String,
    /// How many author domains `{n}` ranges over (0: the domain as given).
    #[arg(long, default_value_t = 0)]
    domains: u64,
    /// With --domains: `sequential` (message k uses domain k mod N, so N messages touch every
    /// domain once) or `random` (uniform, fixed seed).
    #[arg(long, default_value = "random")]
    domain_order: DomainOrder,
    /// SMTP AUTH user sent as {auth_authen} (default bench@FROM_DOMAIN, which may sign for
    /// the author domain; "none": not authenticated).
    #[arg(long)]
    auth_user: Option<String>,
    /// SMTP client address sent in SMFIC_CONNECT.
    #[arg(long, default_value = "192.0.2.25")]
    client_addr: IpAddr,
    /// DKIM-Signature headers each message must come back with.
    #[arg(long, default_value_t = 1)]
    expect_signatures: usize,
    /// Seconds to wait for any reply.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A name for this run in the report.
    #[arg(long, default_value = "milter")]
    label: String,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DomainOrder {
    Sequential,
    Random,
}

/// The author domain of message `seq`.
fn from_domain(args: &Args, seq: u64) -> String {
    if args.domains == 0 {
        return args.from_domain.clone();
    }
    let n = match args.domain_order {
        DomainOrder::Sequential => seq % args.domains,
        DomainOrder::Random => {
            // splitmix64: uniform, and the same sequence in every run.
            let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % args.domains
        }
    };
    args.from_domain.replace("{n}", &n.to_string())
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number.parse().map_err(|_| format!("bad size {s:?}"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (use KiB or MiB)")),
    };
    Ok(n * factor)
}

/// What all connections share.
struct Shared {
    args: Args,
    body: Bytes,
    next_seq: AtomicU64,
    saved: AtomicU64,
    start: Barrier,
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    ok: u64,
    /// Round trips (the MTA waiting for a reply) of the successful messages.
    round_trips: u64,
    eom_us: Vec<u32>,
    message_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    first_errors: Vec<String>,
    finished: Option<Instant>,
}

impl ConnStats {
    fn error(&mut self, kind: &str, detail: String) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
        if self.first_errors.len() < 3 {
            self.first_errors.push(detail);
        }
    }
}

/// How one message ended.
enum Outcome {
    Signed {
        eom: Duration,
        added: EomResult,
    },
    /// The milter answered something other than "continue" before the end of the message.
    Stopped {
        stage: &'static str,
        reply: Reply,
    },
    /// The final reply at end of message was not "continue"/"accept", or signatures are missing.
    Failed {
        what: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.messages.is_none() && args.duration.is_none() {
        eprintln!("loadgen: give --messages or --duration (or both)");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // Fail early and clearly when the milter is not there.
    MilterConn::open(&args.socket, args.timeout)
        .await?
        .quit()
        .await?;
    let connections = args.connections.max(1);
    let shared = Arc::new(Shared {
        body: mail::body(args.body),
        next_seq: AtomicU64::new(0),
        saved: AtomicU64::new(0),
        start: Barrier::new(connections + 1),
        args,
    });
    let tasks: Vec<_> = (0..connections)
        .map(|id| tokio::spawn(run_connection(id, shared.clone())))
        .collect();

    shared.start.wait().await;
    let started = Instant::now();
    let cpu_before = shared.args.pid.map(measure::process_cpu).transpose()?;
    let own_cpu_before = measure::own_cpu();
    let rss = shared.args.pid.map(measure::PeakRss::start);

    let mut all = ConnStats::default();
    for task in tasks {
        let stats = task.await.context("a connection task panicked")?;
        all.ok += stats.ok;
        all.round_trips += stats.round_trips;
        all.eom_us.extend(stats.eom_us);
        all.message_us.extend(stats.message_us);
        for (kind, n) in stats.errors {
            *all.errors.entry(kind).or_default() += n;
        }
        all.first_errors.extend(stats.first_errors);
        all.finished = all.finished.max(stats.finished);
    }
    let elapsed = all.finished.unwrap_or_else(Instant::now) - started;
    let own_cpu = measure::own_cpu() - own_cpu_before;
    let milter_cpu = match (shared.args.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(measure::process_cpu(pid)? - before),
        _ => None,
    };
    let peak = rss.map(measure::PeakRss::finish);
    let report = Report {
        args: &shared.args,
        stats: &mut all,
        elapsed,
        own_cpu,
        milter_cpu,
        peak,
    };
    report.print();
    Ok(all.errors.is_empty() && all.ok > 0)
}

async fn run_connection(id: usize, shared: Arc<Shared>) -> ConnStats {
    let args = &shared.args;
    let mut stats = ConnStats::default();
    let mut warmup = ConnStats::default();
    let mut conn: Option<(MilterConn, u64)> = None;
    let mut values = connection_macros(args);

    for w in 0..args.warmup {
        let seq = u64::MAX - (id as u64 * 1_000_000 + w);
        one_message(&shared, id, seq, &mut conn, &mut values, &mut warmup, false).await;
    }
    shared.start.wait().await;
    let deadline = args.duration.map(|d| Instant::now() + d);
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        if args.messages.is_some_and(|limit| seq >= limit) {
            break;
        }
        one_message(&shared, id, seq, &mut conn, &mut values, &mut stats, true).await;
    }
    stats.finished = Some(Instant::now());
    if let Some((c, _)) = conn {
        let _ = c.quit().await;
    }
    stats
}

/// Sends one message on the connection (opening one first when needed) and records it.
async fn one_message(
    shared: &Shared,
    id: usize,
    seq: u64,
    conn: &mut Option<(MilterConn, u64)>,
    values: &mut MacroValues,
    stats: &mut ConnStats,
    measured: bool,
) {
    let args = &shared.args;
    if conn
        .as_ref()
        .is_some_and(|(_, n)| args.per_connection > 0 && *n >= args.per_connection)
        && let Some((c, _)) = conn.take()
    {
        let _ = c.quit().await;
    }
    if conn.is_none() {
        match open_session(args, values).await {
            Ok(c) => *conn = Some((c, 0)),
            Err(e) => {
                stats.error("connect", format!("connection {id}: {e:#}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    }
    let (c, count) = conn.as_mut().expect("connection just opened");
    *count += 1;
    let domain = from_domain(args, seq);
    let envelope = Envelope::new(seq, id, &domain);
    if args.auth_user.is_none() {
        // The default login may sign for the author domain, which --domains varies per message.
        values.insert("{auth_authen}", format!("bench@{domain}"));
    }
    values.insert("i", queue_id(seq, id));
    values.insert("{mail_addr}", envelope.sender.clone());
    values.insert("{rcpt_addr}", envelope.recipient.clone());
    let started = Instant::now();
    let round_trips_before = c.round_trips;
    let result = send_message(c, values, &envelope, &shared.body).await;
    let took = started.elapsed();
    match result {
        Ok(Outcome::Signed { eom, added }) => {
            let signatures = added
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("DKIM-Signature"))
                .count();
            if added.other_modifications > 0 {
                stats.error(
                    "unexpected modifications",
                    format!(
                        "message {seq}: {} modifications besides headers",
                        added.other_modifications
                    ),
                );
                return;
            }
            if signatures != args.expect_signatures {
                stats.error(
                    "wrong number of signatures",
                    format!("message {seq}: {signatures} DKIM-Signature headers added"),
                );
                return;
            }
            stats.ok += 1;
            stats.round_trips += c.round_trips - round_trips_before;
            stats.eom_us.push(micros(eom));
            stats.message_us.push(micros(took));
            if measured {
                maybe_save(shared, seq, &envelope, &added, c.leading_space(), stats);
            }
        }
        Ok(Outcome::Stopped { stage, reply }) => stats.error(
            &format!("{} at {stage}", reply.describe()),
            format!(
                "message {seq}: the milter answered {} at {stage}",
                reply.describe()
            ),
        ),
        Ok(Outcome::Failed { what }) => stats.error(&what, format!("message {seq}: {what}")),
        Err(e) => {
            stats.error("protocol or I/O", format!("message {seq}: {e:#}"));
            *conn = None;
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// A Postfix-looking queue id, unique per message.
fn queue_id(seq: u64, conn: usize) -> String {
    format!("4B{:X}C{:X}", seq & 0xff_ffff_ffff, conn)
}

/// The macros an MTA knows for the whole SMTP session.
fn connection_macros(args: &Args) -> MacroValues {
    let mut v = MacroValues::new();
    v.insert("j", "mx.bench.example".into());
    v.insert("{daemon_name}", "mx.bench.example".into());
    v.insert("{daemon_addr}", "127.0.0.1".into());
    v.insert("v", "Postfix 3.7.11".into());
    v.insert("_", format!("client.example [{}]", args.client_addr));
    v.insert("{client_addr}", args.client_addr.to_string());
    v.insert("{client_name}", "client.example".into());
    let login = match args.auth_user.as_deref() {
        None => Some(format!("bench@{}", args.from_domain)),
        Some("none") => None,
        Some(login) => Some(login.to_string()),
    };
    if let Some(login) = login {
        v.insert("{auth_type}", "PLAIN".into());
        v.insert("{auth_authen}", login);
    }
    v
}

/// A new milter connection, taken through connect and HELO as an SMTP session would be.
async fn open_session(args: &Args, values: &MacroValues) -> anyhow::Result<MilterConn> {
    let mut c = MilterConn::open(&args.socket, args.timeout).await?;
    if let Some(r) = c
        .connect(values, "client.example", args.client_addr, 41_000)
        .await?
        && r.kind != b'c'
    {
        anyhow::bail!("the milter answered {} to connect", r.describe());
    }
    if let Some(r) = c.helo(values, "client.example").await?
        && r.kind != b'c'
    {
        anyhow::bail!("the milter answered {} to HELO", r.describe());
    }
    Ok(c)
}

/// One mail transaction: MAIL, RCPT, DATA, headers, end of headers, body chunks, end of
/// message; then an ABORT (sent with the next event) to reset the milter, as Postfix does.
async fn send_message(
    c: &mut MilterConn,
    values: &MacroValues,
    envelope: &Envelope,
    body: &Bytes,
) -> anyhow::Result<Outcome> {
    let outcome = transaction(c, values, envelope, body).await;
    c.abort();
    outcome
}

async fn transaction(
    c: &mut MilterConn,
    values: &MacroValues,
    envelope: &Envelope,
    body: &Bytes,
) -> anyhow::Result<Outcome> {
    macro_rules! step {
        ($stage:expr, $call:expr) => {
            if let Some(reply) = $call.await?
                && reply.kind != b'c'
            {
                return Ok(Outcome::Stopped {
                    stage: $stage,
                    reply,
                });
            }
        };
    }
    let sender = format!("<{}>", envelope.sender);
    let recipient = format!("<{}>", envelope.recipient);
    step!("MAIL", c.mail(values, &[&sender, "BODY=8BITMIME"]));
    step!("RCPT", c.rcpt(values, &[&recipient]));
    step!("DATA", c.data(values));
    for (name, value) in &envelope.headers {
        step!("header", c.header(values, name, value));
    }
    step!("end of headers", c.eoh(values));
    for chunk in body.chunks(BODY_CHUNK) {
        step!("body", c.body(values, chunk));
    }
    let eom_started = Instant::now();
    let added = c.end_of_message(values).await?;
    let eom = eom_started.elapsed();
    match added.last.kind {
        b'c' | b'a' => Ok(Outcome::Signed { eom, added }),
        _ => Ok(Outcome::Failed {
            what: format!("{} at end of message", added.last.describe()),
        }),
    }
}

fn maybe_save(
    shared: &Shared,
    seq: u64,
    envelope: &Envelope,
    added: &EomResult,
    leading_space: bool,
    stats: &mut ConnStats,
) {
    let args = &shared.args;
    let Some(dir) = &args.save else { return };
    if !seq.is_multiple_of(args.save_stride.max(1)) {
        return;
    }
    if shared.saved.fetch_add(1, Ordering::Relaxed) >= args.save_count {
        return;
    }
    let path = dir.join(format!("{}-{seq:07}.eml", args.label));
    if let Err(e) = mail::save(&path, envelope, &added.headers, leading_space, &shared.body) {
        stats.error("save", format!("{}: {e}", path.display()));
    }
}

struct Report<'a> {
    args: &'a Args,
    stats: &'a mut ConnStats,
    elapsed: Duration,
    own_cpu: f64,
    milter_cpu: Option<f64>,
    peak: Option<(u64, &'static str)>,
}

/// The nearest-rank percentile of sorted values, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

impl Report<'_> {
    fn print(self) {
        let s = self.stats;
        s.eom_us.sort_unstable();
        s.message_us.sort_unstable();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let ok = s.ok.max(1) as f64;
        let errors: u64 = s.errors.values().sum();
        let rate = s.ok as f64 / secs;
        let (p50, p99, max) = (
            percentile_ms(&s.eom_us, 50.0),
            percentile_ms(&s.eom_us, 99.0),
            percentile_ms(&s.eom_us, 100.0),
        );
        let msg_p50 = percentile_ms(&s.message_us, 50.0);
        let a = self.args;
        eprintln!(
            "loadgen {}: {} connections, body {} B, {:.2} s",
            a.label, a.connections, a.body, secs
        );
        let round_trips = s.round_trips as f64 / ok;
        eprintln!(
            "  messages       {} ok, {errors} failed, {rate:.1} msg/s, {round_trips:.1} round trips each",
            s.ok
        );
        eprintln!(
            "  EOM latency    p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms; whole message p50 {msg_p50:.3} ms"
        );
        if let Some(cpu) = self.milter_cpu {
            eprintln!(
                "  milter         CPU {cpu:.2} s = {:.3} ms/msg",
                cpu * 1000.0 / ok
            );
        }
        if let Some((kib, how)) = self.peak {
            eprintln!("  milter peak RSS {:.1} MiB ({how})", kib as f64 / 1024.0);
        }
        eprintln!(
            "  loadgen itself CPU {:.2} s = {:.3} ms/msg",
            self.own_cpu,
            self.own_cpu * 1000.0 / ok
        );
        for (kind, n) in &s.errors {
            eprintln!("  error          {n} × {kind}");
        }
        for e in &s.first_errors {
            eprintln!("    e.g. {e}");
        }
        if a.json {
            let error_kinds: Vec<String> = s
                .errors
                .iter()
                .map(|(k, n)| format!("{}:{n}", json_string(k)))
                .collect();
            let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.6}"));
            println!(
                "{{\"label\":{},\"connections\":{},\"body_bytes\":{},\"messages\":{},\"errors\":{errors},\
                 \"error_kinds\":{{{}}},\"elapsed_s\":{secs:.6},\"msgs_per_s\":{rate:.3},\
                 \"eom_p50_ms\":{p50:.4},\"eom_p99_ms\":{p99:.4},\"eom_max_ms\":{max:.4},\
                 \"message_p50_ms\":{msg_p50:.4},\"round_trips_per_msg\":{round_trips:.2},\"milter_cpu_s\":{},\"milter_cpu_ms_per_msg\":{},\
                 \"milter_peak_rss_kib\":{},\"rss_method\":{},\"loadgen_cpu_s\":{:.6},\
                 \"loadgen_cpu_ms_per_msg\":{:.6}}}",
                json_string(&a.label),
                a.connections,
                a.body,
                s.ok,
                error_kinds.join(","),
                opt(self.milter_cpu),
                opt(self.milter_cpu.map(|c| c * 1000.0 / ok)),
                self.peak.map_or("null".to_string(), |(k, _)| k.to_string()),
                self.peak
                    .map_or("null".to_string(), |(_, h)| json_string(h)),
                self.own_cpu,
                self.own_cpu * 1000.0 / ok,
            );
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("100KiB"), Ok(102_400));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert!(parse_size("10GiB").is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
    }
}
