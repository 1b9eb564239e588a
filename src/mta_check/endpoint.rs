//! Does a milter address, as an MTA names it, lead to the socket this milter listens on?

use super::Host;
use crate::config::ListenAddr;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

/// A milter address in the MTA's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MilterAddr {
    /// A unix socket path as written: absolute, or (Postfix) relative to the queue directory.
    Unix(PathBuf),
    Inet {
        host: String,
        port: u16,
    },
}

impl MilterAddr {
    /// Postfix: `unix:PATH` or `inet:HOST:PORT` (`inet:[::1]:PORT` for IPv6).
    pub fn parse_postfix(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:").or(text.strip_prefix("local:")) {
            return (!path.is_empty()).then(|| MilterAddr::Unix(path.into()));
        }
        let rest = text.strip_prefix("inet:")?;
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6.split_once("]:")?;
            (host, port)
        } else {
            rest.rsplit_once(':')?
        };
        Some(MilterAddr::Inet {
            host: host.to_string(),
            port: port.parse().ok()?,
        })
    }

    /// Sendmail: `local:PATH`, `unix:PATH`, `inet:PORT@HOST` or `inet6:PORT@HOST`.
    pub fn parse_sendmail(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("local:").or(text.strip_prefix("unix:")) {
            return (!path.is_empty()).then(|| MilterAddr::Unix(path.into()));
        }
        let rest = text.strip_prefix("inet:").or(text.strip_prefix("inet6:"))?;
        let (port, host) = rest.split_once('@')?;
        Some(MilterAddr::Inet {
            host: host.to_string(),
            port: port.parse().ok()?,
        })
    }
}

/// How an MTA process sees the file system.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The directory it is chrooted to, if it is.
    pub chroot: Option<&'a Path>,
    /// Its working directory (outside a chroot): Postfix daemons run in the queue directory.
    pub cwd: &'a Path,
}

/// Whether a process with that view reaches the milter at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    Yes,
    No,
    /// The path would be the milter's socket outside the chroot, but the process resolves it
    /// inside: it looks at `seen_as` instead.
    HiddenByChroot {
        seen_as: PathBuf,
    },
}

pub fn reaches(addr: &MilterAddr, listen: &ListenAddr, view: View<'_>, host: &dyn Host) -> Reach {
    match (addr, listen) {
        (MilterAddr::Unix(path), ListenAddr::Unix(socket)) => {
            let seen = seen_path(path, view);
            if normalize(&seen) == normalize(socket) || host.same_file(&seen, socket) {
                Reach::Yes
            } else if view.chroot.is_some()
                && path.is_absolute()
                && normalize(path) == normalize(socket)
            {
                Reach::HiddenByChroot { seen_as: seen }
            } else {
                Reach::No
            }
        }
        (MilterAddr::Inet { host: name, port }, ListenAddr::Inet(socket)) => {
            if *port != socket.port() {
                return Reach::No;
            }
            let ours = unmapped(socket.ip());
            // A milter listening on every address answers whichever local address is named.
            if ours.is_unspecified() {
                return Reach::Yes;
            }
            let named: Vec<IpAddr> = match name.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => host.resolve(name),
            };
            if named.into_iter().any(|ip| unmapped(ip) == ours) {
                Reach::Yes
            } else {
                Reach::No
            }
        }
        _ => Reach::No,
    }
}

/// The file a process with this view opens for `path`.
pub fn seen_path(path: &Path, view: View<'_>) -> PathBuf {
    match view.chroot {
        // Inside a chroot both a relative path (the working directory is the chroot's root)
        // and an absolute one resolve under the chroot directory.
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => view.cwd.join(path),
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system (the paths may not exist here).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mta_check::host::FakeHost;

    fn listen(text: &str) -> ListenAddr {
        text.parse().unwrap()
    }

    const QUEUE: &str = "/var/spool/postfix";

    fn chrooted() -> View<'static> {
        View {
            chroot: Some(Path::new(QUEUE)),
            cwd: Path::new(QUEUE),
        }
    }

    fn plain() -> View<'static> {
        View {
            chroot: None,
            cwd: Path::new(QUEUE),
        }
    }

    fn reach(addr: &str, listen_at: &str, view: View<'_>) -> Reach {
        reaches(
            &MilterAddr::parse_postfix(addr).unwrap(),
            &listen(listen_at),
            view,
            &FakeHost::default(),
        )
    }

    #[test]
    fn postfix_and_sendmail_spellings() {
        assert_eq!(
            MilterAddr::parse_postfix("inet:[::1]:8891"),
            Some(MilterAddr::Inet {
                host: "::1".into(),
                port: 8891
            })
        );
        assert_eq!(
            MilterAddr::parse_postfix("inet:localhost:8891"),
            Some(MilterAddr::Inet {
                host: "localhost".into(),
                port: 8891
            })
        );
        assert_eq!(
            MilterAddr::parse_sendmail("inet:11041@127.0.0.1"),
            Some(MilterAddr::Inet {
                host: "127.0.0.1".into(),
                port: 11041
            })
        );
        assert_eq!(
            MilterAddr::parse_sendmail("local:/run/x.sock"),
            Some(MilterAddr::Unix("/run/x.sock".into()))
        );
        for bad in ["inet:8891", "inet:host:port", "tcp:1.2.3.4:5", "unix:", ""] {
            assert_eq!(MilterAddr::parse_postfix(bad), None, "{bad}");
        }
        assert_eq!(MilterAddr::parse_sendmail("inet:127.0.0.1:8891"), None);
    }

    #[test]
    fn a_relative_path_serves_chrooted_and_plain_daemons() {
        let sock = "unix:/var/spool/postfix/signet/milter.sock";
        assert_eq!(
            reach("unix:signet/milter.sock", sock, chrooted()),
            Reach::Yes
        );
        assert_eq!(reach("unix:signet/milter.sock", sock, plain()), Reach::Yes);
        assert_eq!(
            reach("unix:./signet/../signet/milter.sock", sock, chrooted()),
            Reach::Yes
        );
    }

    #[test]
    fn an_absolute_path_is_inside_the_chroot_for_a_chrooted_daemon() {
        let run = "unix:/run/signet-milter/signet-milter.sock";
        assert_eq!(reach(run, run, plain()), Reach::Yes);
        assert_eq!(
            reach(run, run, chrooted()),
            Reach::HiddenByChroot {
                seen_as: "/var/spool/postfix/run/signet-milter/signet-milter.sock".into()
            }
        );
        // The queue directory spelled out is doubled inside the chroot.
        let inside = "unix:/var/spool/postfix/signet/milter.sock";
        assert_eq!(reach(inside, inside, plain()), Reach::Yes);
        assert!(matches!(
            reach(inside, inside, chrooted()),
            Reach::HiddenByChroot { .. }
        ));
        assert_eq!(reach("unix:/elsewhere.sock", run, chrooted()), Reach::No);
    }

    #[test]
    fn inet_addresses_by_ip_name_and_wildcard() {
        let lo = "inet:127.0.0.1:8891";
        assert_eq!(reach("inet:127.0.0.1:8891", lo, chrooted()), Reach::Yes);
        assert_eq!(reach("inet:localhost:8891", lo, chrooted()), Reach::Yes);
        assert_eq!(
            reach("inet:[::ffff:127.0.0.1]:8891", lo, plain()),
            Reach::Yes
        );
        assert_eq!(reach("inet:127.0.0.1:8892", lo, plain()), Reach::No);
        assert_eq!(reach("inet:192.0.2.1:8891", lo, plain()), Reach::No);
        assert_eq!(reach("inet:nowhere.invalid:8891", lo, plain()), Reach::No);
        assert_eq!(
            reach("inet:192.0.2.1:8891", "inet:0.0.0.0:8891", plain()),
            Reach::Yes
        );
        assert_eq!(reach("unix:/x.sock", lo, plain()), Reach::No);
        assert_eq!(
            reach("inet:127.0.0.1:8891", "unix:/x.sock", plain()),
            Reach::No
        );
    }
}
