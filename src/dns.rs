//! Asking DNS for TXT records, as `check --dns` and `verify` do: one given server, or the
//! system's resolvers. [`TxtLookup`] is the seam between the checks and the network, so that
//! unit tests can answer from a table.

use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one query waits for an answer, and how often it is sent again after that. A dead
/// server therefore costs `TIMEOUT * (RETRIES + 1)` once (the checks stop asking it), not per
/// record.
const TIMEOUT: Duration = Duration::from_secs(3);
const RETRIES: usize = 1;

/// The TXT records at one name: each record is its list of strings (RFC 6376 §3.6.2.2 joins
/// them).
pub type TxtRecords = Vec<Vec<Vec<u8>>>;

/// Why a lookup has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The server did not answer at all (timeout, refused connection): asking it again for
    /// other names is pointless.
    #[error("{0}")]
    NoAnswer(String),
    /// The server answered with an error (SERVFAIL, REFUSED, …).
    #[error("{0}")]
    Failed(String),
}

/// TXT lookups. An existing name without TXT records, and a name that does not exist, both
/// give an empty list.
pub trait TxtLookup {
    fn txt(&self, name: &str) -> impl Future<Output = Result<TxtRecords, LookupError>> + Send;

    /// Who is asked, for messages: `127.0.0.1:53` or `the system's resolvers`.
    fn asked(&self) -> String;
}

/// The DNS server to ask: `None` for the system's resolvers (`/etc/resolv.conf`).
pub fn resolver_config(
    server: Option<SocketAddr>,
) -> Result<(ResolverConfig, ResolverOpts), String> {
    let (config, mut options) = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            let mut options = ResolverOpts::default();
            // /etc/hosts is no DNS: only the given server answers.
            options.use_hosts_file = ResolveHosts::Never;
            (
                ResolverConfig::from_parts(None, vec![], vec![server]),
                options,
            )
        }
        None => mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    options.timeout = TIMEOUT;
    options.attempts = RETRIES;
    // Every answer is wanted fresh: these are one-shot checks.
    options.cache_size = 0;
    Ok((config, options))
}

/// A resolver for [`resolver_config`], answering [`TxtLookup`].
pub struct Dns {
    resolver: TokioResolver,
    asked: String,
}

impl Dns {
    pub fn new(server: Option<SocketAddr>) -> Result<Self, String> {
        let (config, options) = resolver_config(server)?;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            asked: asked(server),
        })
    }
}

impl Dns {
    /// The resolver itself, for lookups other than TXT (key rotation's NS lookups).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }
}

/// `127.0.0.1:5353`, or `the system's resolvers`.
pub fn asked(server: Option<SocketAddr>) -> String {
    server.map_or("the system's resolvers".to_string(), |s| s.to_string())
}

impl TxtLookup for Dns {
    async fn txt(&self, name: &str) -> Result<TxtRecords, LookupError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(vec![]),
            Err(e) => Err(classify(&e, &self.asked)),
        }
    }

    fn asked(&self) -> String {
        self.asked.clone()
    }
}

/// A server that never answered is told apart from one that answered with an error, and the
/// message says what to look at.
fn classify(error: &NetError, asked: &str) -> LookupError {
    let waited = TIMEOUT.as_secs() * (RETRIES as u64 + 1);
    match error {
        NetError::Timeout | NetError::NoConnections | NetError::Busy => {
            LookupError::NoAnswer(format!(
                "no answer from {asked} within {waited} s: is a DNS server running \
                 there, and does it answer queries from this host?"
            ))
        }
        NetError::Io(io) => LookupError::NoAnswer(format!(
            "cannot reach {asked}: {io}: is a DNS server running there?"
        )),
        other => LookupError::Failed(format!("{asked} answered: {other}")),
    }
}
