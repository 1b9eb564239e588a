//! `keygen`: new key pairs written the way the milter expects to find them.

use super::SigningKey;
use super::parse::{KeyParseError, parse_private_key};
use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    Rsa2048,
    Rsa3072,
    Ed25519,
}

/// A new key pair: the PKCS#8 encoding to store, and the parsed key.
pub struct GeneratedKey {
    pkcs8_der: Zeroizing<Vec<u8>>,
    pub key: SigningKey,
}

impl GeneratedKey {
    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), which OpenSSL, dkimpy and OpenDKIM all read.
    pub fn private_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(BASE64.encode(&*self.pkcs8_der));
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }
}

pub fn generate(kind: KeyKind) -> Result<GeneratedKey, KeyParseError> {
    let failed = |_| KeyParseError::Invalid("key generation failed".into());
    let der: Vec<u8> = match kind {
        KeyKind::Rsa2048 | KeyKind::Rsa3072 => {
            let size = if kind == KeyKind::Rsa2048 {
                aws_lc_rs::rsa::KeySize::Rsa2048
            } else {
                aws_lc_rs::rsa::KeySize::Rsa3072
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(failed)?;
            pair.as_der().map_err(failed)?.as_ref().to_vec()
        }
        KeyKind::Ed25519 => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(failed)?;
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().map_err(failed)?;
            pkcs8.as_ref().to_vec()
        }
    };
    let pkcs8_der = Zeroizing::new(der);
    let key = parse_private_key(&pkcs8_der)?;
    Ok(GeneratedKey { pkcs8_der, key })
}

/// The zone-file line for the public key, split into 255-byte strings as DNS requires.
pub fn zone_record(domain: &str, selector: &str, key: &SigningKey) -> String {
    zone_line(
        &format!("{selector}._domainkey.{domain}"),
        &key.dns_record(),
    )
}

/// A zone-file TXT line for `name` (without the final dot), the value split into strings of
/// at most 255 bytes.
pub fn zone_line(name: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT ( {} )", parts.join(" "))
}

/// Writes `dir/domain/selector.key` (mode 0600, never overwriting) and `dir/domain/selector.dns`
/// (the TXT value). Returns both paths.
pub fn write_key_files(
    dir: &Path,
    domain: &str,
    selector: &str,
    generated: &GeneratedKey,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let domain_dir = dir.join(domain);
    let key_path = domain_dir.join(format!("{selector}.key"));
    write_private_key(&key_path, generated).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} already exists; not overwriting a key",
                    key_path.display()
                ),
            )
        } else {
            e
        }
    })?;
    let dns_path = domain_dir.join(format!("{selector}.dns"));
    std::fs::write(&dns_path, format!("{}\n", generated.key.dns_record()))?;
    Ok((key_path, dns_path))
}

/// Writes the private key as PKCS#8 PEM to `path` (mode 0600, its directory 0750 if new), and
/// never over an existing file (`AlreadyExists`).
pub fn write_private_key(path: &Path, generated: &GeneratedKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(generated.private_pem().as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_private_key_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(KeyKind::Ed25519).unwrap();
        let (key_path, dns_path) =
            write_key_files(dir.path(), "example.com", "s1", &generated).unwrap();
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = parse_private_key(&std::fs::read(&key_path).unwrap()).unwrap();
        assert_eq!(back.public_key_base64(), generated.key.public_key_base64());
        assert_eq!(
            std::fs::read_to_string(dns_path).unwrap().trim(),
            generated.key.dns_record()
        );
        let again = generate(KeyKind::Ed25519).unwrap();
        assert!(write_key_files(dir.path(), "example.com", "s1", &again).is_err());
        let still = parse_private_key(&std::fs::read(&key_path).unwrap()).unwrap();
        assert_eq!(
            still.public_key_base64(),
            generated.key.public_key_base64(),
            "old key untouched"
        );
    }

    #[test]
    fn zone_record_splits_long_values() {
        let generated = generate(KeyKind::Rsa2048).unwrap();
        let line = zone_record("example.com", "s1", &generated.key);
        assert!(line.starts_with("s1._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p="));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), generated.key.dns_record());
    }
}
