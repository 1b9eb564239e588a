//! The few questions the MTA analyses ask about the machine, behind a trait so that unit tests
//! answer them from memory.

use std::io;
use std::net::{IpAddr, ToSocketAddrs as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

pub trait Host {
    /// Whether both paths name one existing file: a socket reached through a bind mount or a
    /// symbolic link into a chroot is the same socket, whatever its path says.
    fn same_file(&self, a: &Path, b: &Path) -> bool;
    /// The addresses a host name in a milter address stands for (e.g. `localhost`).
    fn resolve(&self, name: &str) -> Vec<IpAddr>;
    /// A lookup table's source file, to see what its rules do.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
}

/// The machine the command runs on.
pub struct LocalHost;

impl Host for LocalHost {
    fn same_file(&self, a: &Path, b: &Path) -> bool {
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    fn resolve(&self, name: &str) -> Vec<IpAddr> {
        (name, 0)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default()
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// For unit tests: files from memory, `localhost` as 127.0.0.1 and ::1, no other name, and
/// no two paths the same file.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct FakeHost {
    files: std::collections::HashMap<&'static str, &'static str>,
}

#[cfg(test)]
impl FakeHost {
    pub(crate) fn with_files(files: &[(&'static str, &'static str)]) -> Self {
        FakeHost {
            files: files.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
impl Host for FakeHost {
    fn same_file(&self, _: &Path, _: &Path) -> bool {
        false
    }

    fn resolve(&self, name: &str) -> Vec<IpAddr> {
        match name {
            "localhost" => vec![
                IpAddr::from([127, 0, 0, 1]),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            _ => vec![],
        }
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        path.to_str()
            .and_then(|p| self.files.get(p))
            .map(|text| text.to_string())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}
