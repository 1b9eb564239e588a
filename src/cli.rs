//! The command line: `run` (the default), `check`, `sign`, `explain`, `keygen`.

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::keys::generate::{KeyKind, generate, write_key_files, zone_record};
use crate::message::RawMessage;
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
    /// Generate a key pair: DIR/DOMAIN/SELECTOR.key (mode 0600) and .dns; print the DNS record.
    Keygen {
        #[arg(long, value_enum)]
        algo: KeyKind,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// Key directory (the layout matches the default `[keys] directory`).
        #[arg(long)]
        out: PathBuf,
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
    main_with(Environment::default())
}

/// The command line of a program that embeds signet-milter, e.g. to register its own key
/// callbacks in `env.callbacks` (see `examples/custom_callback.rs`).
pub fn main_with(env: Environment) -> ExitCode {
    let cli = Cli::parse();
    let env = Arc::new(env);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config, env),
        Command::Check { dns, dns_server } => check(&cli.config, env, dns.then_some(dns_server)),
        Command::Sign { envelope } => sign(&cli.config, env, envelope.envelope()),
        Command::Explain { envelope } => Ok(explain(&cli.config, env, envelope.envelope())),
        Command::Keygen {
            algo,
            domain,
            selector,
            out,
        } => keygen(algo, &domain, &selector, &out),
        Command::Man { out } => crate::manpage::write_pages(Cli::command(), &out)
            .map(|_| ExitCode::SUCCESS)
            .with_context(|| format!("cannot write the manual pages into {}", out.display())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("signet-milter: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    let runtime = Runtime::with_environment(config, env);
    runtime_builder()?.block_on(async move {
        // Load every key once at startup: problems show in the log now, not on the first message.
        for status in crate::check::key_statuses(&runtime).await {
            if let Err(e) = &status.status {
                tracing::warn!(entry = %status.entry, "key not usable yet: {e}");
            }
        }
        let listener = server::bind(&runtime.config.milter).await?;
        let listen = runtime.config.milter.listen.clone();
        let metrics = runtime.env.metrics.clone();
        if let Some(addr) = runtime.config.metrics.listen {
            let http = crate::metrics::bind(addr).await?;
            tokio::spawn(crate::metrics::serve(http, metrics.clone(), std::future::pending()));
            tracing::info!(listen = %addr, "metrics at /metrics, health at /healthz");
        }
        let shared = Arc::new(ArcSwap::from_pointee(runtime));
        server::spawn_reload_on_sighup(config_path.to_owned(), shared.clone())?;
        tracing::info!(listen = %listen, version = env!("CARGO_PKG_VERSION"), "signet-milter listening");
        crate::notify::ready(&format!("listening on {listen}"));
        metrics.set_ready(true);
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

/// `dns`: `None` for no DNS check, `Some(None)` for the system's resolvers.
fn check(
    config_path: &Path,
    env: Arc<Environment>,
    dns: Option<Option<SocketAddr>>,
) -> anyhow::Result<ExitCode> {
    let config = load(config_path, &env)?;
    println!("{}: configuration ok", config_path.display());
    for w in &config.signing.warnings {
        println!("warning: {w}");
    }
    let runtime = Runtime::with_environment(config, env);
    let tokio = runtime_builder()?;
    let statuses = tokio.block_on(crate::check::key_statuses(&runtime));
    if statuses.is_empty() {
        println!("no signing entries: nothing will be signed");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = statuses
        .iter()
        .map(|s| {
            [
                s.domain.clone(),
                s.selector.clone(),
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
        &["DOMAIN", "SELECTOR", "ALGORITHM", "SOURCE", "STATUS"],
        &rows,
    );
    let failed = statuses.iter().filter(|s| s.status.is_err()).count();
    if failed > 0 {
        println!("{failed} of {} keys not usable", statuses.len());
    }
    let dns_ok = match dns {
        Some(server) => tokio.block_on(check_dns(&runtime, server))?,
        None => true,
    };
    Ok(if failed == 0 && dns_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints what DNS publishes for every selector; returns whether all of it is right.
async fn check_dns(runtime: &Runtime, server: Option<SocketAddr>) -> anyhow::Result<bool> {
    let resolver = crate::dns_check::resolver(server).map_err(anyhow::Error::msg)?;
    let published = crate::dns_check::check_published_keys(runtime, &resolver).await;
    let asked = server.map_or("the system's resolvers".to_string(), |s| s.to_string());
    println!();
    println!("DNS ({asked}):");
    let rows: Vec<[String; 3]> = published
        .iter()
        .map(|p| [p.name(), p.entry.clone(), p.status.to_string()])
        .collect();
    print_table(&["NAME", "ENTRY", "PUBLISHED KEY"], &rows);
    let problems: Vec<_> = published.iter().filter(|p| p.status.is_problem()).collect();
    for p in &problems {
        if let (Some(key), true) = (&p.key, p.status.wants_record()) {
            println!("publish for {}:", p.name());
            println!("  {}", zone_record(&p.domain, &p.selector, key));
        }
    }
    if !problems.is_empty() {
        println!(
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

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == N - 1 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(*header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
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
        eprintln!("signature left out: {failure}");
    }
    let mut stdout = std::io::stdout().lock();
    match verdict.action() {
        Action::Accept => {
            eprintln!("{}", verdict.summary());
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
        print!("{}", text.0);
        Ok(text.1)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("signet-milter: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keygen(kind: KeyKind, domain: &str, selector: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let domain = crate::config::normalize_domain(domain).map_err(anyhow::Error::msg)?;
    let generated = generate(kind)?;
    let (key_path, dns_path) = write_key_files(out, &domain, selector, &generated)
        .with_context(|| format!("cannot write the key under {}", out.display()))?;
    eprintln!("private key: {} (mode 0600)", key_path.display());
    eprintln!(
        "DNS record:  {} (publish it before signing with this selector)",
        dns_path.display()
    );
    println!("{}", zone_record(&domain, selector, &generated.key));
    Ok(ExitCode::SUCCESS)
}
