//! The command line: `run` (the default), `check` (with `--dns`, `--postfix`, `--sendmail`),
//! `sign`, `explain`, `verify`, `keygen`.

use crate::check::KeyNote;
use crate::config::keysource::{Pkcs11Source, ResolvedKeySource, TransitSource};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::inventory::{KeyLocation, SignAs};
use crate::keys::generate::{KeyKind, generate, write_key_files, zone_record};
use crate::keys::warm::Warming;
use crate::message::RawMessage;
use crate::mta_check;
use crate::policy::{ClientAddr, Origin};
use crate::runtime::{Environment, Runtime};
use crate::server;
use crate::session::Envelope;
use crate::verdict::Action;
use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use clap::{CommandFactory as _, Parser, Subcommand};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "signet-milter",
    version,
    about = "DKIM signing milter for Postfix and Sendmail",
    long_about = "signet-milter signs outgoing mail with DKIM (RSA-SHA256 and Ed25519-SHA256) for \
the domains in its configuration, as a milter behind Postfix or Sendmail. It signs only mail \
from trusted networks, SMTP-authenticated senders (each login only for the domains \
[authorization] grants it, by default its own) and listed MTA services, streams message \
bodies through the signer, and applies on_error (tempfail by default) when a key cannot be \
had, so that mail never leaves unsigned by accident.\n\n\
Without a command it runs the milter (the same as the run command)."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the milter (the default).
    Run,
    /// Validate the configuration and try every key; exit 1 on any problem.
    Check {
        /// Also look up every selector's TXT record in DNS and compare it with the key.
        #[arg(long)]
        dns: bool,
        /// Ask this DNS server (IP or IP:PORT) instead of the system's resolvers.
        #[arg(long, requires = "dns", value_name = "ADDR", value_parser = parse_dns_server)]
        dns_server: Option<SocketAddr>,
        /// Also print the DNS record (zone-file line) to publish for every key.
        #[arg(long)]
        records: bool,
        /// Also read Postfix's settings (with postconf) and report each one that makes mail
        /// leave unsigned or breaks signatures after they were made.
        #[arg(long)]
        postfix: bool,
        /// The Postfix instance to read: its configuration directory (implies --postfix).
        #[arg(long, value_name = "DIR")]
        postfix_config: Option<PathBuf>,
        /// Also read Sendmail's configuration, a .cf or a .mc (run through m4), and report the same.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "/etc/mail/sendmail.cf")]
        sendmail: Option<PathBuf>,
    },
    /// Sign the message on stdin by the configured rules and write it to stdout.
    Sign {
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Explain, step by step, whether and how the milter would sign the message on stdin (the
    /// same decision the milter makes); exit 0 if it would be signed, 1 if not, 2 on error.
    Explain {
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Verify the DKIM signatures of a delivered message against DNS, as a receiver does; exit
    /// 1 unless there is a signature and every one (of --domain, if given) passes.
    Verify {
        /// The message (as saved from a mailbox: LF or CRLF, an mbox "From " line is skipped);
        /// stdin when absent or "-".
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Ask this DNS server (IP or IP:PORT) instead of the system's resolvers.
        #[arg(long, value_name = "ADDR", value_parser = parse_dns_server, conflicts_with = "keys")]
        dns_server: Option<SocketAddr>,
        /// Take public keys from DIR/DOMAIN/SELECTOR.dns (keygen's layout) instead of DNS: check
        /// mail before its records are published.
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Judge only the signatures of this d= domain (repeatable); others are shown.
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
    },
    /// Generate a key pair and print its DNS record: in files (DIR/DOMAIN/SELECTOR.key, mode
    /// 0600, and .dns), or where it will stay — in Vault/OpenBao Transit (--transit-key, with
    /// the configuration's [vault] settings) or in a PKCS#11 token (--pkcs11-key, with its
    /// [pkcs11] settings). An existing key is never replaced.
    Keygen {
        #[arg(long, value_enum)]
        algo: KeyKind,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// Key directory (the layout matches the default `[keys] directory`).
        #[arg(long, required_unless_present_any = ["transit_key", "pkcs11_key"], conflicts_with_all = ["transit_key", "pkcs11_key"])]
        out: Option<PathBuf>,
        /// Create the key in Transit under this name (not exportable).
        #[arg(long, value_name = "NAME", conflicts_with = "pkcs11_key")]
        transit_key: Option<String>,
        /// The Transit mount.
        #[arg(
            long,
            value_name = "MOUNT",
            default_value = "transit",
            requires = "transit_key"
        )]
        transit_mount: String,
        /// Generate the key pair in a PKCS#11 token with this label (sensitive, not extractable).
        #[arg(long, value_name = "LABEL")]
        pkcs11_key: Option<String>,
        /// The token's label (default: [pkcs11] token).
        #[arg(long, value_name = "LABEL", requires = "pkcs11_key")]
        pkcs11_token: Option<String>,
        /// The PKCS#11 module (default: [pkcs11] module).
        #[arg(long, value_name = "PATH", requires = "pkcs11_key")]
        pkcs11_module: Option<PathBuf>,
        /// The file holding the user PIN (default: [pkcs11] pin_file).
        #[arg(long, value_name = "PATH", requires = "pkcs11_key")]
        pkcs11_pin_file: Option<PathBuf>,
    },
    /// Key rotation: start the next key now, undo a pending one, or go back to the previous key.
    ///
    /// Without an action, shows the state of every rotated signature. The running milter picks
    /// up any change at its next rotation round ([rotation] check_interval).
    Rotate {
        /// The signing domain(s) to act on; default: every rotated signature.
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
        /// Start the next key now (generate, store, publish), whatever the age of the active one.
        #[arg(long, conflicts_with_all = ["cancel", "rollback"])]
        now: bool,
        /// Drop the pending key: its record is removed and its private key deleted.
        #[arg(long, conflicts_with = "rollback")]
        cancel: bool,
        /// Sign with the retiring key again (its record is still published); the key that was
        /// active becomes retiring, so messages it signed keep verifying.
        #[arg(long)]
        rollback: bool,
    },
    /// Write the manual pages (signet-milter.8 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        out: PathBuf,
    },
}

/// What the MTA tells the milter about a message before its content, for `sign` and `explain`.
#[derive(clap::Args)]
struct EnvelopeArgs {
    /// The client address the message came from (default: a local submission, like Postfix's
    /// sendmail command).
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
    /// The SMTP AUTH login the client authenticated as ({auth_authen}).
    #[arg(long, value_name = "LOGIN")]
    auth: Option<String>,
    /// The SASL mechanism ({auth_type}); PLAIN when --auth is given without it.
    #[arg(long, value_name = "MECHANISM")]
    auth_type: Option<String>,
    /// The MTA service that received the message ({daemon_name}), e.g. ORIGINATING.
    #[arg(long, value_name = "NAME")]
    daemon_name: Option<String>,
    /// The envelope sender (MAIL FROM).
    #[arg(long, value_name = "ADDRESS")]
    mail_from: Option<String>,
}

impl EnvelopeArgs {
    fn envelope(self) -> Envelope {
        let auth_type = self
            .auth_type
            .or_else(|| self.auth.as_ref().map(|_| "PLAIN".to_string()));
        Envelope {
            origin: Origin {
                client: self.client_ip.map_or(ClientAddr::Local, ClientAddr::Ip),
                auth_user: self.auth,
                auth_type,
                daemon_name: self.daemon_name,
            },
            sender: self
                .mail_from
                .map(|s| format!("<{}>", s.trim_matches(['<', '>']))),
        }
    }
}

pub fn main() -> ExitCode {
    crate::memory::limit_retained_memory();
    main_with(Environment::default())
}

/// The command line of a program that embeds signet-milter, e.g. to register its own key
/// callbacks in `env.callbacks` (see `examples/custom_callback.rs`).
pub fn main_with(env: Environment) -> ExitCode {
    let cli = Cli::parse();
    let env = Arc::new(env);
    let command = cli.command.unwrap_or(Command::Run);
    let result = match command {
        Command::Keygen { .. } | Command::Man { .. } => Ok(()),
        _ => crate::config::check_environment().map_err(anyhow::Error::msg),
    }
    .and_then(|()| match command {
        Command::Run => run(&cli.config, env),
        Command::Check {
            dns,
            dns_server,
            records,
            postfix,
            postfix_config,
            sendmail,
        } => {
            let mta = mta_check::Targets {
                postfix: (postfix || postfix_config.is_some()).then_some(postfix_config),
                sendmail,
            };
            check(&cli.config, env, dns.then_some(dns_server), records, &mta)
        }
        Command::Sign { envelope } => sign(&cli.config, env, envelope.envelope()),
        Command::Explain { envelope } => Ok(explain(&cli.config, env, envelope.envelope())),
        Command::Verify {
            file,
            dns_server,
            keys,
            domains,
        } => verify(file.as_deref(), dns_server, keys.as_deref(), &domains),
        Command::Keygen {
            algo,
            domain,
            selector,
            out,
            transit_key,
            transit_mount,
            pkcs11_key,
            pkcs11_token,
            pkcs11_module,
            pkcs11_pin_file,
        } => {
            let remote = match (transit_key, pkcs11_key) {
                (Some(key), _) => Some(ResolvedKeySource::Transit(TransitSource {
                    mount: transit_mount,
                    key,
                    version: None,
                    address: None,
                    token: None,
                })),
                (None, Some(key)) => Some(ResolvedKeySource::Pkcs11(Pkcs11Source {
                    module: pkcs11_module,
                    token: pkcs11_token,
                    key,
                    pin_file: pkcs11_pin_file,
                })),
                (None, None) => None,
            };
            match (remote, out) {
                (Some(remote), _) => {
                    keygen_remote(&cli.config, env, algo, &domain, &selector, &remote)
                }
                (None, Some(out)) => keygen(algo, &domain, &selector, &out),
                (None, None) => Err(anyhow::anyhow!(
                    "keygen needs --out, --transit-key or --pkcs11-key"
                )),
            }
        }
        Command::Rotate {
            domains,
            now,
            cancel,
            rollback,
        } => {
            let action = if now {
                crate::rotation::command::Action::Now
            } else if cancel {
                crate::rotation::command::Action::Cancel
            } else if rollback {
                crate::rotation::command::Action::Rollback
            } else {
                crate::rotation::command::Action::Show
            };
            rotate(&cli.config, env, &domains, action)
        }
        Command::Man { out } => crate::manpage::write_pages(Cli::command(), &out)
            .map(|_| ExitCode::SUCCESS)
            .with_context(|| format!("cannot write the manual pages into {}", out.display())),
    });
    match result {
        Ok(code) => code,
        // The reader went away (`check | head -1`): stop quietly, as a program killed by
        // SIGPIPE would, without a message nobody reads.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "signet-milter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A line for the person at the terminal on stderr; a closed stderr is no reason to fail.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A line of command output on stdout; an error (a closed stdout, a reader that went away)
/// ends the command instead of panicking as `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).context("cannot write to stdout")?
    };
}

fn runtime_builder() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads the config, accepting `event_name`s of the callbacks the program registered.
fn load(config_path: &Path, env: &Environment) -> anyhow::Result<Config> {
    Ok(Config::load_with_callbacks(
        config_path,
        &env.callbacks.names(),
    )?)
}

fn run(config_path: &Path, env: Arc<Environment>) -> anyhow::Result<ExitCode> {
    let config = load(config_path, &env)?;
    crate::logging::init(&config.log);
    for w in &config.signing.warnings {
        tracing::warn!("{w}");
    }
    if config.signing.is_empty() {
        tracing::warn!("no [domain] or [signature] entries: nothing will be signed");
    }
    check_open_file_limit(config.milter.max_connections);
    env.metrics
        .set_per_domain_series(config.metrics.per_domain_series);
    let runtime = Runtime::with_environment(config, env);
    // The parsed TOML document is gone: give its memory back (it can be hundreds of MiB for a
    // large signing table).
    crate::memory::release_free_memory();
    runtime_builder()?.block_on(async move {
        // A rotated signature signs with the key its state made active, from the first
        // message. A state that cannot be read (Vault down) does not keep the milter from
        // serving: that signature gets on_error until a round reads it.
        crate::rotation::load_startup_selections(&runtime.config, runtime.rotation.selected())
            .await;
        // Serve first: no key is fetched before the socket is bound, so a hung key backend
        // cannot keep the milter from starting (keys are warmed in the background below).
        let listener = server::bind(&runtime.config.milter).await?;
        let listen = runtime.config.milter.listen.clone();
        let metrics = runtime.env.metrics.clone();
        if let Some(addr) = runtime.config.metrics.listen {
            let http = crate::metrics::bind(addr).await?;
            tokio::spawn(crate::metrics::serve(http, metrics.clone(), std::future::pending()));
            tracing::info!(listen = %addr, "metrics at /metrics, health at /healthz");
        }
        let shared = Arc::new(ArcSwap::from_pointee(runtime));
        let warming = Arc::new(Warming::default());
        server::spawn_reload_on_sighup(config_path.to_owned(), shared.clone(), warming.clone())?;
        // Always running: a reload may add [rotation]; without it a round does nothing.
        crate::rotation::service::Rotator::new(shared.clone()).spawn();
        tracing::info!(listen = %listen, version = env!("CARGO_PKG_VERSION"), "signet-milter listening");
        // READY=1 means: the socket accepts and the configuration is in force. Keys still
        // warming or failing do not hold it back; their messages get on_error.
        crate::notify::ready(&format!("listening on {listen}; checking keys"));
        metrics.set_ready(true);
        warming.restart(shared.load_full(), server::warmed);
        let stopping = {
            let metrics = metrics.clone();
            async move {
                server::termination().await;
                metrics.set_ready(false);
            }
        };
        server::serve(listener, shared, stopping).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Raises the open-file limit as far as allowed and says when `max_connections` cannot be
/// reached within it (accepting then waits for descriptors instead).
fn check_open_file_limit(max_connections: usize) {
    match crate::connections::raise_open_file_limit() {
        Ok(limit) => {
            let room = limit.saturating_sub(crate::connections::RESERVED_FDS);
            if (max_connections as u64) > room {
                tracing::warn!(
                    max_connections,
                    open_file_limit = limit,
                    "the open-file limit allows only about {room} connections, fewer than [milter] max_connections: raise LimitNOFILE (ulimit -n) or lower max_connections"
                );
            }
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// `dns`: `None` for no DNS check, `Some(None)` for the system's resolvers.
fn check(
    config_path: &Path,
    env: Arc<Environment>,
    dns: Option<Option<SocketAddr>>,
    records: bool,
    mta: &mta_check::Targets,
) -> anyhow::Result<ExitCode> {
    let config = load(config_path, &env)?;
    say!("{}: configuration ok", config_path.display());
    for w in &config.signing.warnings {
        say!("warning: {w}");
    }
    let runtime = Runtime::with_environment(config, env);
    let tokio = runtime_builder()?;
    // A rotated signature is checked with the key its rotation state made active.
    let selections = tokio.block_on(crate::rotation::recorded_selections(&runtime.config));
    runtime
        .rotation
        .selected()
        .replace(selections.unwrap_or_default());
    let statuses = tokio.block_on(crate::check::key_statuses(&runtime));
    if statuses.is_empty() {
        say!("no signing entries: nothing will be signed");
        return Ok(exit_code(check_mtas(&runtime.config, mta)?));
    }
    let rows: Vec<[String; 6]> = statuses
        .iter()
        .map(|s| {
            [
                s.domain.clone(),
                s.selector.clone(),
                s.entry.clone(),
                s.algorithm.clone(),
                s.source.clone(),
                match &s.status {
                    Ok(text) => text.to_string(),
                    Err(e) => format!("ERROR: {e}"),
                },
            ]
        })
        .collect();
    print_table(
        &[
            "DOMAIN",
            "SELECTOR",
            "SIGNATURE",
            "ALGORITHM",
            "SOURCE",
            "STATUS",
        ],
        &rows,
    )?;
    for status in &statuses {
        for note in &status.notes {
            let kind = match note {
                KeyNote::Weak(_) => "warning",
                KeyNote::Remote(_) => "note",
            };
            say!("{kind}: {}/{}: {note}", status.domain, status.selector);
        }
    }
    let failed = statuses.iter().filter(|s| s.status.is_err()).count();
    if failed > 0 {
        say!("{failed} of {} keys not usable", statuses.len());
    }
    if records {
        tokio.block_on(print_records(&runtime))?;
    }
    let rotation_ok = tokio.block_on(crate::rotation::command::print_states(&runtime.config, &[]));
    let dns_ok = match dns {
        Some(server) => tokio.block_on(check_dns(&runtime, server))?,
        None => true,
    };
    let mta_ok = check_mtas(&runtime.config, mta)?;
    Ok(exit_code(failed == 0 && dns_ok && rotation_ok && mta_ok))
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints what the MTA configurations asked for do to signing; returns whether none of them
/// can make mail leave unsigned or break its signatures (warnings do not count).
fn check_mtas(config: &Config, targets: &mta_check::Targets) -> anyhow::Result<bool> {
    let expect = mta_check::Expectations::from_config(config);
    let mut ok = true;
    for result in mta_check::reports(targets, &expect) {
        say!();
        match result {
            Ok(report) => {
                write!(std::io::stdout(), "{}", report.render())
                    .context("cannot write to stdout")?;
                ok &= !report.has_problems();
            }
            Err(e) => {
                say!("cannot check the MTA: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// The zone-file line to publish for every key that could be loaded.
async fn print_records(runtime: &Runtime) -> anyhow::Result<()> {
    say!();
    say!("DNS records to publish:");
    for planned in crate::inventory::signing_keys(&runtime.config.signing) {
        let (SignAs::Domain(domain), KeyLocation::Known(source)) = (&planned.domain, &planned.key)
        else {
            say!(
                "; {}: one record per author domain, at {}._domainkey.<domain>",
                planned.domain_text(),
                planned.selector()
            );
            continue;
        };
        match runtime.keys.get(source).await {
            Ok(key) => say!("{}", zone_record(domain, planned.selector(), &key)),
            Err(_) => say!(
                "; {}._domainkey.{domain}: no key to publish (see the table above)",
                planned.selector()
            ),
        }
    }
    Ok(())
}

/// Prints what DNS publishes for every selector; returns whether all of it is right.
async fn check_dns(runtime: &Runtime, server: Option<SocketAddr>) -> anyhow::Result<bool> {
    let dns = crate::dns::Dns::new(server).map_err(anyhow::Error::msg)?;
    let published = crate::dns_check::check_published_keys(runtime, &dns).await;
    say!();
    say!("DNS ({}):", crate::dns::asked(server));
    let rows: Vec<[String; 3]> = published
        .iter()
        .map(|p| [p.name(), p.entry.clone(), p.status.to_string()])
        .collect();
    print_table(&["NAME", "ENTRY", "PUBLISHED KEY"], &rows)?;
    let problems: Vec<_> = published.iter().filter(|p| p.status.is_problem()).collect();
    for p in &problems {
        if let (Some(key), true) = (&p.key, p.status.wants_record()) {
            say!("publish for {}:", p.name());
            say!("  {}", zone_record(&p.domain, &p.selector, key));
        }
    }
    if !problems.is_empty() {
        say!(
            "{} of {} DNS records not right",
            problems.len(),
            published.len()
        );
    }
    Ok(problems.is_empty())
}

/// `IP` (port 53) or `IP:PORT`; IPv6 as `[::1]:5353`.
fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("\"{text}\" is not an IP address or IP:PORT"))
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> anyhow::Result<()> {
    std::io::stdout()
        .write_all(crate::table::render(header, rows).as_bytes())
        .context("cannot write to stdout")
}

/// A message read from stdin, and the runtime of the configuration, for `sign` and `explain`.
fn prepare(config_path: &Path, env: Arc<Environment>) -> anyhow::Result<(Arc<Runtime>, Vec<u8>)> {
    let config = load(config_path, &env)?;
    crate::logging::init(&config.log);
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .context("cannot read the message from stdin")?;
    Ok((Arc::new(Runtime::with_environment(config, env)), raw))
}

fn sign(config_path: &Path, env: Arc<Environment>, envelope: Envelope) -> anyhow::Result<ExitCode> {
    let (runtime, raw) = prepare(config_path, env)?;
    let message = RawMessage::split(&raw);
    let verdict = runtime_builder()?.block_on(message.judge(runtime, envelope));
    for failure in verdict.report.left_out() {
        note!("signature left out: {failure}");
    }
    let mut stdout = std::io::stdout().lock();
    match verdict.action() {
        Action::Accept => {
            note!("{}", verdict.summary());
            stdout.write_all(&raw)?;
        }
        Action::Sign(_) => {
            let eol: &str = if message.uses_crlf { "\r\n" } else { "\n" };
            // Each signature goes on top, as the milter inserts them at index 0.
            for signed in verdict.signed().collect::<Vec<_>>().iter().rev() {
                write!(
                    stdout,
                    "DKIM-Signature:{}{eol}",
                    signed.value.replace('\n', eol)
                )?;
            }
            stdout.write_all(&raw)?;
        }
        Action::Tempfail(_) | Action::Reject(_) => bail!("{}", verdict.summary()),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(
    file: Option<&Path>,
    dns_server: Option<SocketAddr>,
    keys: Option<&Path>,
    domains: &[String],
) -> anyhow::Result<ExitCode> {
    let raw = match file {
        Some(path) if path != Path::new("-") => std::fs::read(path)
            .with_context(|| format!("cannot read the message {}", path.display()))?,
        _ => {
            let mut raw = Vec::new();
            std::io::stdin()
                .read_to_end(&mut raw)
                .context("cannot read the message from stdin")?;
            raw
        }
    };
    let lookup = match keys {
        Some(dir) => crate::verify::KeyLookup::Directory(dir),
        None => crate::verify::KeyLookup::Dns(dns_server),
    };
    let report = runtime_builder()?.block_on(crate::verify::verify(&raw, lookup))?;
    if report.signatures.is_empty() {
        say!("no DKIM-Signature header: the message is not signed");
        return Ok(ExitCode::FAILURE);
    }
    let rows: Vec<[String; 4]> = report
        .signatures
        .iter()
        .map(|s| {
            let result = match s.reason.as_str() {
                "" => s.result.to_string(),
                reason => format!("{}: {reason}", s.result),
            };
            [
                s.domain.clone(),
                s.selector.clone(),
                s.algorithm.clone(),
                result,
            ]
        })
        .collect();
    print_table(&["DOMAIN", "SELECTOR", "ALGORITHM", "RESULT"], &rows)?;
    say!();
    say!("{}", report.authentication_results);
    let judged: Vec<_> = report
        .signatures
        .iter()
        .filter(|s| domains.is_empty() || domains.iter().any(|d| d.eq_ignore_ascii_case(&s.domain)))
        .collect();
    if judged.is_empty() {
        say!();
        say!("no signature with d={}", domains.join(" or d="));
        return Ok(ExitCode::FAILURE);
    }
    let failed = judged.iter().filter(|s| !s.passed()).count();
    say!();
    if failed == 0 {
        say!("{} of {} signatures pass", judged.len(), judged.len());
        Ok(ExitCode::SUCCESS)
    } else {
        say!("{failed} of {} signatures do not pass", judged.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Exit status 0: it would be signed; 1: it would not (or would be refused); 2: an error.
fn explain(config_path: &Path, env: Arc<Environment>, envelope: Envelope) -> ExitCode {
    let result = (|| -> anyhow::Result<bool> {
        let (runtime, raw) = prepare(config_path, env)?;
        let message = RawMessage::split(&raw);
        let from_values: Vec<&[u8]> = message
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"From"))
            .map(|(_, value)| value.as_slice())
            .collect();
        let text = runtime_builder()?.block_on(async {
            let verdict = message.judge(runtime.clone(), envelope).await;
            let text = crate::explain::explain(&runtime, &verdict, &from_values).await;
            (text, verdict.is_signed())
        });
        write!(std::io::stdout(), "{}", text.0).context("cannot write to stdout")?;
        Ok(text.1)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "signet-milter: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn rotate(
    config_path: &Path,
    env: Arc<Environment>,
    domains: &[String],
    action: crate::rotation::command::Action,
) -> anyhow::Result<ExitCode> {
    let config = load(config_path, &env)?;
    if config.rotation.is_none() {
        bail!(
            "{}: no [rotation] section: no key rotates",
            config_path.display()
        );
    }
    // What it does is printed; the log adds only warnings (SIGNET_LOG for more).
    let mut quiet = config.log.clone();
    quiet.level = crate::config::LogLevel::parse("warn").map_err(anyhow::Error::msg)?;
    crate::logging::init(&quiet);
    let runtime = Arc::new(ArcSwap::from_pointee(Runtime::with_environment(
        config, env,
    )));
    let ok =
        runtime_builder()?.block_on(crate::rotation::command::run(runtime, domains, action))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn keygen(kind: KeyKind, domain: &str, selector: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let domain = crate::config::normalize_domain(domain).map_err(anyhow::Error::msg)?;
    let generated = generate(kind)?;
    let (key_path, dns_path) = write_key_files(out, &domain, selector, &generated)
        .with_context(|| format!("cannot write the key under {}", out.display()))?;
    note!("private key: {} (mode 0600)", key_path.display());
    note!(
        "DNS record:  {} (publish it before signing with this selector)",
        dns_path.display()
    );
    say!("{}", zone_record(&domain, selector, &generated.key));
    Ok(ExitCode::SUCCESS)
}

/// `keygen --transit-key` / `--pkcs11-key`: the key is made where it stays; the milter only
/// learns its public half. Prints the DNS record and the `key =` line for the configuration.
fn keygen_remote(
    config_path: &Path,
    env: Arc<Environment>,
    kind: KeyKind,
    domain: &str,
    selector: &str,
    source: &ResolvedKeySource,
) -> anyhow::Result<ExitCode> {
    let domain = crate::config::normalize_domain(domain).map_err(anyhow::Error::msg)?;
    let config = load(config_path, &env)?;
    if let ResolvedKeySource::Pkcs11(p) = source {
        let defaults = &config.keys.pkcs11;
        let missing = |what: &str| {
            anyhow::anyhow!(
                "no {what}: give --pkcs11-{what} or set [pkcs11] {} in {}",
                what.replace('-', "_"),
                config_path.display()
            )
        };
        if p.module.is_none() && defaults.module.is_none() {
            return Err(missing("module"));
        }
        if p.token.is_none() && defaults.token.is_none() {
            return Err(missing("token"));
        }
        if p.pin_file.is_none() && defaults.pin_file.is_none() {
            return Err(missing("pin-file"));
        }
    }
    let backends = crate::keys::Backends::new(&config, &env.callbacks);
    let key = runtime_builder()?
        .block_on(backends.create_remote(source, kind))
        .context("cannot create the key")?;
    note!(
        "created {} ({}); the private key never leaves it",
        source,
        key.describe()
    );
    let line = match source {
        ResolvedKeySource::Transit(t) => format!(
            "key = {{ transit_mount = \"{}\", transit_key = \"{}\" }}",
            t.mount, t.key
        ),
        ResolvedKeySource::Pkcs11(p) => {
            let mut fields = Vec::new();
            if let Some(m) = &p.module {
                fields.push(format!("pkcs11_module = \"{}\"", m.display()));
            }
            if let Some(t) = &p.token {
                fields.push(format!("pkcs11_token = \"{t}\""));
            }
            fields.push(format!("pkcs11_key = \"{}\"", p.key));
            if let Some(f) = &p.pin_file {
                fields.push(format!("pkcs11_pin_file = \"{}\"", f.display()));
            }
            format!("key = {{ {} }}", fields.join(", "))
        }
        _ => String::new(),
    };
    note!("configuration for [domain.\"{domain}\"] with selector = \"{selector}\":");
    note!("  {line}");
    note!("DNS record (publish it before signing with this selector):");
    say!("{}", zone_record(&domain, selector, &key));
    Ok(ExitCode::SUCCESS)
}
