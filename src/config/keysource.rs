//! Where a signing key comes from: KumoMTA's KeySource object, in TOML.
//!
//! The four shapes of the KeySource reference are accepted as the `key` field of a signing entry:
//!
//! ```toml
//! key = "/etc/signet-milter/keys/{domain}/{selector}.key"                  # a file
//! key = { key_data = "-----BEGIN PRIVATE KEY-----\n..." }                   # inline data
//! key = { vault_mount = "secret", vault_path = "dkim/{domain}", vault_key = "key" }
//! key = { event_name = "sqlite-keys", event_args = ["{domain}", "{selector}"] }
//! ```
//!
//! and two where the private key never leaves its vault, the milter asking it for signatures:
//!
//! ```toml
//! key = { transit_mount = "transit", transit_key = "dkim-{domain}-{selector}" }   # Vault/OpenBao Transit
//! key = { pkcs11_token = "dkim", pkcs11_key = "{domain}-{selector}" }               # an HSM, via [pkcs11]
//! ```
//!
//! A [`KeySource`] is the configured, templated form; [`ResolvedKeySource`] is the same source
//! for one concrete domain and selector, and is what the key cache is keyed by.

use crate::config::Template;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

/// KV secrets engine version of a Vault mount: `kv_version = 2` (the default) or `1`, the same
/// in `[vault]` and in a key source. A quoted `"2"` is accepted too: it was once the only
/// spelling that loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvVersion {
    V1,
    V2,
}

impl<'de> Deserialize<'de> for KvVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Version;

        const EXPECTED: &str =
            "kv_version must be 1 or 2 (the version of the KV secrets engine mount)";

        impl serde::de::Visitor<'_> for Version {
            type Value = KvVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("1 or 2")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KvVersion, E> {
                match v {
                    1 => Ok(KvVersion::V1),
                    2 => Ok(KvVersion::V2),
                    _ => Err(E::custom(format!("{EXPECTED}, not {v}"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KvVersion, E> {
                match v.trim() {
                    "1" | "v1" => Ok(KvVersion::V1),
                    "2" | "v2" => Ok(KvVersion::V2),
                    _ => Err(E::custom(format!("{EXPECTED}, not \"{v}\""))),
                }
            }
        }

        d.deserialize_any(Version)
    }
}

/// Inline key bytes; never printed, wiped when dropped.
#[derive(Clone)]
pub struct KeyData(Arc<SecretSlice<u8>>);

impl KeyData {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Arc::new(SecretSlice::from(bytes)))
    }
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for KeyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyData([REDACTED])")
    }
}

/// Inline data is identified by the allocation that holds it: two entries that share one
/// `key_data` value (merged from `[base]`) share one cache entry, and the bytes are never hashed.
impl PartialEq for KeyData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for KeyData {}
impl Hash for KeyData {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const u8 as usize).hash(state);
    }
}

/// A Vault token given in the config; never printed.
#[derive(Clone)]
pub struct VaultToken(pub SecretString);

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultToken([REDACTED])")
    }
}
impl<'de> Deserialize<'de> for VaultToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|t| VaultToken(t.into()))
    }
}

impl VaultToken {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A token travels in the `X-Vault-Token` header: it must be visible ASCII (a stray newline
/// from a token file is trimmed before this check).
pub fn validate_token(token: &VaultToken) -> Result<(), &'static str> {
    if crate::config::is_header_safe(token.expose()) {
        Ok(())
    } else {
        Err("a Vault token must be non-empty printable ASCII without spaces")
    }
}

impl PartialEq for VaultToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}
impl Eq for VaultToken {}
impl Hash for VaultToken {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.expose_secret().hash(state);
    }
}

/// A Vault KV secret holding the key in one field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VaultSource<T> {
    pub mount: T,
    pub path: T,
    /// The field of the secret that holds the PEM key (KumoMTA's `vault_key`, default `key`).
    pub field: String,
    pub address: Option<String>,
    pub token: Option<VaultToken>,
    pub kv_version: Option<KvVersion>,
}

/// A key in a Vault/OpenBao Transit secrets engine: the milter sends it hashes to sign.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransitSource<T> {
    pub mount: T,
    /// The Transit key's name.
    pub key: T,
    /// Sign with this version; `None`: the latest version when the key is (re)read, so the
    /// public key the milter reports and the signatures it makes always belong together.
    pub version: Option<u64>,
    pub address: Option<String>,
    pub token: Option<VaultToken>,
}

/// A key in a PKCS#11 token (an HSM, SoftHSM2): the milter sends it hashes to sign. Unset
/// fields come from `[pkcs11]`; loading checks that one of the two sets them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pkcs11Source<T> {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    /// The token's label.
    pub token: Option<T>,
    /// The private key's label (`CKA_LABEL`).
    pub key: T,
    /// A file holding the user PIN.
    pub pin_file: Option<PathBuf>,
}

/// A configured key source, with `{domain}`/`{selector}` templates not yet filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeySource {
    File(Template),
    Data(KeyData),
    Vault(VaultSource<Template>),
    Event { name: String, args: Vec<Template> },
    Transit(TransitSource<Template>),
    Pkcs11(Pkcs11Source<Template>),
}

/// A key source for one concrete signing domain and selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResolvedKeySource {
    File(PathBuf),
    Data(KeyData),
    Vault(VaultSource<String>),
    Event { name: String, args: Vec<String> },
    Transit(TransitSource<String>),
    Pkcs11(Pkcs11Source<String>),
}

impl KeySource {
    pub fn resolve(&self, domain: &str, selector: &str) -> ResolvedKeySource {
        match self {
            KeySource::File(path) => ResolvedKeySource::File(path.render(domain, selector).into()),
            KeySource::Data(data) => ResolvedKeySource::Data(data.clone()),
            KeySource::Vault(v) => ResolvedKeySource::Vault(VaultSource {
                mount: v.mount.render(domain, selector),
                path: v.path.render(domain, selector),
                field: v.field.clone(),
                address: v.address.clone(),
                token: v.token.clone(),
                kv_version: v.kv_version,
            }),
            KeySource::Event { name, args } => ResolvedKeySource::Event {
                name: name.clone(),
                args: args.iter().map(|a| a.render(domain, selector)).collect(),
            },
            KeySource::Transit(t) => ResolvedKeySource::Transit(TransitSource {
                mount: t.mount.render(domain, selector),
                key: t.key.render(domain, selector),
                version: t.version,
                address: t.address.clone(),
                token: t.token.clone(),
            }),
            KeySource::Pkcs11(p) => ResolvedKeySource::Pkcs11(Pkcs11Source {
                module: p.module.clone(),
                token: p.token.as_ref().map(|t| t.render(domain, selector)),
                key: p.key.render(domain, selector),
                pin_file: p.pin_file.clone(),
            }),
        }
    }

    /// Whether the key differs per signing domain (so a wildcard entry has no single key).
    pub fn depends_on_domain(&self) -> bool {
        match self {
            KeySource::File(path) => path.mentions_domain(),
            KeySource::Data(_) => false,
            KeySource::Vault(v) => v.mount.mentions_domain() || v.path.mentions_domain(),
            KeySource::Event { args, .. } => args.iter().any(Template::mentions_domain),
            KeySource::Transit(t) => t.mount.mentions_domain() || t.key.mentions_domain(),
            KeySource::Pkcs11(p) => {
                p.key.mentions_domain() || p.token.as_ref().is_some_and(Template::mentions_domain)
            }
        }
    }

    /// A PKCS#11 source with what it leaves unset taken from `[pkcs11]`, so that every
    /// message, `check` and the logs see the module, token and PIN file actually used. The
    /// error names what neither sets.
    pub fn with_pkcs11_defaults(
        self,
        defaults: &crate::config::Pkcs11Settings,
    ) -> Result<KeySource, &'static str> {
        let KeySource::Pkcs11(p) = self else {
            return Ok(self);
        };
        let token = match p.token {
            Some(token) => Some(token),
            None => match &defaults.token {
                Some(label) => Some(Template::parse(label).map_err(
                    |_| "[pkcs11] token must not contain { or } (write {{ or }} for them)",
                )?),
                None => None,
            },
        };
        let completed = Pkcs11Source {
            module: p.module.or_else(|| defaults.module.clone()),
            token,
            key: p.key,
            pin_file: p.pin_file.or_else(|| defaults.pin_file.clone()),
        };
        if completed.module.is_none() {
            Err(
                "pkcs11_module is set neither here nor as [pkcs11] module (e.g. \"/usr/lib/softhsm/libsofthsm2.so\")",
            )
        } else if completed.token.is_none() {
            Err("pkcs11_token (the token's label) is set neither here nor as [pkcs11] token")
        } else if completed.pin_file.is_none() {
            Err("pkcs11_pin_file is set neither here nor as [pkcs11] pin_file")
        } else {
            Ok(KeySource::Pkcs11(completed))
        }
    }

    /// The callback this source refers to, if any (checked against `[callbacks]` at load time).
    pub fn event_name(&self) -> Option<&str> {
        match self {
            KeySource::Event { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl ResolvedKeySource {
    /// The kind of store the key is read from.
    pub fn backend(&self) -> Backend {
        match self {
            ResolvedKeySource::File(_) => Backend::File,
            ResolvedKeySource::Data(_) => Backend::Data,
            ResolvedKeySource::Vault(_) => Backend::Vault,
            ResolvedKeySource::Event { .. } => Backend::Callback,
            ResolvedKeySource::Transit(_) => Backend::Transit,
            ResolvedKeySource::Pkcs11(_) => Backend::Pkcs11,
        }
    }
}

/// The kind of store a key source reads from: what the key cache needs to judge a key it holds
/// (a file is `stat`ed, inline data never expires, the others are fetched again once per ttl),
/// and the `backend` label of the key metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    File,
    Data,
    Vault,
    Callback,
    Transit,
    Pkcs11,
}

impl Backend {
    /// The name in metrics (`backend` label).
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Data => "data",
            Backend::Vault => "vault",
            Backend::Callback => "callback",
            Backend::Transit => "transit",
            Backend::Pkcs11 => "pkcs11",
        }
    }
}

/// Where the key is, in words an operator can act on; never includes secret material.
impl fmt::Display for ResolvedKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedKeySource::File(path) => write!(f, "file {}", path.display()),
            ResolvedKeySource::Data(_) => f.write_str("inline key_data"),
            ResolvedKeySource::Vault(v) => {
                write!(f, "vault {}/{} field {}", v.mount, v.path, v.field)
            }
            ResolvedKeySource::Event { name, args } => {
                write!(f, "callback {name}({})", args.join(", "))
            }
            ResolvedKeySource::Transit(t) => {
                write!(f, "transit {}/keys/{}", t.mount, t.key)?;
                match t.version {
                    Some(v) => write!(f, " version {v}"),
                    None => Ok(()),
                }
            }
            ResolvedKeySource::Pkcs11(p) => write!(
                f,
                "pkcs11 token {} key {}",
                p.token.as_deref().unwrap_or("(unset)"),
                p.key
            ),
        }
    }
}

/// The TOML shape before it is known which of the four it is: every field optional, so that the
/// error for a wrong combination can say exactly what is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySourceTable {
    key_data: Option<String>,
    vault_mount: Option<Template>,
    vault_path: Option<Template>,
    vault_key: Option<String>,
    vault_address: Option<String>,
    vault_token: Option<String>,
    kv_version: Option<KvVersion>,
    event_name: Option<String>,
    event_args: Option<Vec<Template>>,
    transit_mount: Option<Template>,
    transit_key: Option<Template>,
    transit_key_version: Option<u64>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_token: Option<Template>,
    pkcs11_key: Option<Template>,
    pkcs11_pin_file: Option<PathBuf>,
}

const SHAPES: &str = "key_data, vault_mount + vault_path, transit_key, pkcs11_key, or event_name";

impl KeySourceTable {
    fn into_source(self) -> Result<KeySource, String> {
        let kv = self.vault_mount.is_some()
            || self.vault_path.is_some()
            || self.vault_key.is_some()
            || self.kv_version.is_some();
        let transit = self.transit_mount.is_some()
            || self.transit_key.is_some()
            || self.transit_key_version.is_some();
        // vault_address / vault_token serve both Vault shapes.
        let vault_connection = self.vault_address.is_some() || self.vault_token.is_some();
        let pkcs11 = self.pkcs11_module.is_some()
            || self.pkcs11_token.is_some()
            || self.pkcs11_key.is_some()
            || self.pkcs11_pin_file.is_some();
        let event = self.event_name.is_some() || self.event_args.is_some();
        let data = self.key_data.is_some();
        let shapes = [data, kv, transit, pkcs11, event];
        match shapes.iter().filter(|s| **s).count() {
            0 if vault_connection => {
                return Err(
                    "vault_address / vault_token need vault_mount + vault_path or transit_key"
                        .into(),
                );
            }
            0 => return Err(format!("a key source table needs {SHAPES}")),
            1 => {}
            _ => return Err(format!("a key source table takes exactly one of {SHAPES}")),
        }
        if vault_connection && !(kv || transit) {
            return Err("vault_address / vault_token belong to a Vault key source".into());
        }
        if data {
            self.into_data()
        } else if kv {
            self.into_vault()
        } else if transit {
            self.into_transit()
        } else if pkcs11 {
            self.into_pkcs11()
        } else {
            let name = self
                .event_name
                .ok_or("a callback key source needs event_name")?;
            Ok(KeySource::Event {
                name,
                args: self.event_args.unwrap_or_default(),
            })
        }
    }

    fn into_data(self) -> Result<KeySource, String> {
        let text = self.key_data.unwrap_or_default();
        if text.trim().is_empty() {
            return Err("key_data is empty".into());
        }
        Ok(KeySource::Data(KeyData::new(text.into_bytes())))
    }

    /// The address and token a Vault shape may set for itself.
    fn vault_connection(&self) -> Result<(Option<String>, Option<VaultToken>), String> {
        if let Some(address) = &self.vault_address {
            crate::config::validate_http_url(address).map_err(|e| format!("vault_address: {e}"))?;
        }
        let token = self.vault_token.clone().map(|t| VaultToken(t.into()));
        if let Some(token) = &token {
            validate_token(token).map_err(|e| format!("vault_token: {e}"))?;
        }
        Ok((self.vault_address.clone(), token))
    }

    fn into_vault(self) -> Result<KeySource, String> {
        let (address, token) = self.vault_connection()?;
        let mount = self
            .vault_mount
            .ok_or("a Vault key source needs vault_mount (e.g. \"secret\")")?;
        let path = self
            .vault_path
            .ok_or("a Vault key source needs vault_path (e.g. \"dkim/{domain}\")")?;
        if self.vault_key.as_deref() == Some("") {
            return Err("vault_key is empty".into());
        }
        Ok(KeySource::Vault(VaultSource {
            mount,
            path,
            field: self.vault_key.unwrap_or_else(|| "key".into()),
            address,
            token,
            kv_version: self.kv_version,
        }))
    }

    fn into_transit(self) -> Result<KeySource, String> {
        let (address, token) = self.vault_connection()?;
        let key = self.transit_key.ok_or(
            "a Transit key source needs transit_key, the key's name (e.g. \"dkim-{domain}-{selector}\")",
        )?;
        if self.transit_key_version == Some(0) {
            return Err("transit_key_version starts at 1".into());
        }
        let mount = match self.transit_mount {
            Some(mount) => mount,
            None => Template::parse("transit")?,
        };
        Ok(KeySource::Transit(TransitSource {
            mount,
            key,
            version: self.transit_key_version,
            address,
            token,
        }))
    }

    fn into_pkcs11(self) -> Result<KeySource, String> {
        let key = self.pkcs11_key.ok_or(
            "a PKCS#11 key source needs pkcs11_key, the private key's label (e.g. \"{domain}-{selector}\")",
        )?;
        Ok(KeySource::Pkcs11(Pkcs11Source {
            module: self.pkcs11_module,
            token: self.pkcs11_token,
            key,
            pin_file: self.pkcs11_pin_file,
        }))
    }
}

/// A string is a file path; a table is one of the other shapes. A visitor rather than an untagged
/// enum, so that the precise error of the table shape reaches the operator.
struct KeySourceVisitor;

impl<'de> serde::de::Visitor<'de> for KeySourceVisitor {
    type Value = KeySource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a key file path, or a table with key_data, vault_mount/vault_path, transit_key, pkcs11_key, or event_name",
        )
    }

    fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<KeySource, E> {
        key_path(path).map(KeySource::File).map_err(E::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<KeySource, A::Error> {
        let table = KeySourceTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        table.into_source().map_err(serde::de::Error::custom)
    }
}

/// A key file path (`key = "…"`, `filename = "…"`), refused when it is a key rather than a
/// path: a PEM pasted in the wrong place would otherwise be printed whole in every message
/// that names the path. The error never repeats the text.
pub fn key_path(text: &str) -> Result<Template, String> {
    if text.trim().is_empty() {
        return Err("key path is empty".into());
    }
    if looks_like_key_material(text) {
        return Err("this looks like a key, not a file path (the text is not shown): put the key in a file with mode 0600, or write key = { key_data = \"\"\"…\"\"\" }".into());
    }
    Template::parse(text)
}

/// PEM armour, line breaks, or a long run of base64 (a DER key) cannot be a key file's path.
/// Longer than NAME_MAX (255 bytes) between slashes is not a Linux path either.
fn looks_like_key_material(text: &str) -> bool {
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    text.contains("-----BEGIN")
        || text.contains("-----END")
        || text.contains(['\n', '\r'])
        || text.split('/').any(|part| part.len() > 255)
        || (text.len() >= 100 && text.bytes().all(base64))
}

/// `filename = "…"` of a signing entry: a key path, checked as [`key_path`] does.
pub fn deserialize_key_path<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Template>, D::Error> {
    let text = String::deserialize(deserializer)?;
    key_path(&text).map(Some).map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeySourceVisitor)
    }
}
