//! The DNS gate: a pending key may sign only when **every** server the gate trusts serves its
//! record, and matches the private key (the comparison `check --dns` makes). Not a quorum:
//! a receiver may ask any of a zone's servers, so one that still lacks the record is enough
//! to fail signatures.
//!
//! The servers are `[rotation] dns_servers` when set, else the zone's authoritative servers
//! (its NS records, looked up through `[rotation] resolver` or the system's resolvers), each
//! asked directly, without recursion or caching.

use crate::dns::{Dns, TxtLookup as _};
use crate::dns_check::{self, Published};
use crate::keys::SigningKey;
use mail_auth::hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::SocketAddr;

/// What one server said about one record.
#[derive(Debug)]
pub struct Answer {
    pub server: SocketAddr,
    pub published: Published,
}

/// The verdict of one look.
#[derive(Debug)]
pub struct Verdict {
    pub answers: Vec<Answer>,
    /// Why no server could be asked, when none could.
    pub no_servers: Option<String>,
}

impl Verdict {
    /// Every server answered with the record of our key.
    pub fn all_match(&self) -> bool {
        self.no_servers.is_none()
            && !self.answers.is_empty()
            && self
                .answers
                .iter()
                .all(|a| matches!(a.published, Published::Matches { .. }))
    }

    /// `server: what it said` for each server, for the log.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.no_servers {
            return why.clone();
        }
        self.answers
            .iter()
            .map(|a| format!("{}: {}", a.server, a.published))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Asks servers; keeps one resolver per server.
#[derive(Default)]
pub struct Gate {
    resolvers: HashMap<SocketAddr, Dns>,
}

impl Gate {
    fn resolver(&mut self, server: SocketAddr) -> Result<&Dns, String> {
        match self.resolvers.entry(server) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Dns::new(Some(server))?)),
        }
    }

    /// Looks `name` up at each server and compares it with `key`.
    pub async fn check(
        &mut self,
        servers: &[SocketAddr],
        resolver: Option<SocketAddr>,
        zone: &str,
        name: &str,
        key: &SigningKey,
    ) -> Verdict {
        let servers = if servers.is_empty() {
            match authoritative_servers(resolver, zone).await {
                Ok(found) => found,
                Err(why) => {
                    return Verdict {
                        answers: Vec::new(),
                        no_servers: Some(why),
                    };
                }
            }
        } else {
            servers.to_vec()
        };
        let mut answers = Vec::with_capacity(servers.len());
        for server in servers {
            let published = match self.resolver(server) {
                Ok(resolver) => dns_check::lookup_name(resolver, name, key).await,
                Err(why) => Published::LookupFailed(why),
            };
            answers.push(Answer { server, published });
        }
        Verdict {
            answers,
            no_servers: None,
        }
    }

    /// What each server serves at `name` now (TXT strings joined), for `check`.
    pub async fn raw(&mut self, server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
        let records = self
            .resolver(server)?
            .txt(name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            .map(|strings| {
                strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .collect())
    }
}

/// The addresses of the NS of `zone` (or of its closest enclosing zone), port 53.
async fn authoritative_servers(
    resolver: Option<SocketAddr>,
    zone: &str,
) -> Result<Vec<SocketAddr>, String> {
    let dns = Dns::new(resolver)?;
    let resolver = dns.resolver();
    let mut name = zone.trim_end_matches('.').to_string();
    loop {
        let fqdn = format!("{name}.");
        match resolver.ns_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let hosts: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::NS(ns) => Some(ns.0.to_ascii()),
                        _ => None,
                    })
                    .collect();
                if !hosts.is_empty() {
                    let mut out = Vec::new();
                    for host in &hosts {
                        let ips = resolver
                            .lookup_ip(host.as_str())
                            .await
                            .map_err(|e| format!("address of {host} (NS of {name}): {e}"))?;
                        out.extend(ips.iter().map(|ip| SocketAddr::new(ip, 53)));
                    }
                    out.sort();
                    out.dedup();
                    return Ok(out);
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Err(format!("NS of {name}: {e}")),
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => name = parent.to_string(),
            _ => return Err(format!("no NS records found for {zone} or its parents")),
        }
    }
}
