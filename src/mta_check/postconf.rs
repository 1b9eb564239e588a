//! A Postfix configuration as Postfix itself reads it: `postconf -x` for main.cf (every
//! parameter, defaults included, `$name` expanded), `postconf -F` and `postconf -P -x` for the
//! master.cf services, `postconf -n`'s warnings (unknown parameters), and the text of both
//! files to point at the line to change.

use super::Location;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the four postconf commands printed; captured outputs of these are the unit tests'
/// fixtures.
#[derive(Clone, Debug, Default)]
pub struct PostconfOutput {
    /// `postconf -x`: `name = value` for every parameter.
    pub main: String,
    /// `postconf -F`: `service/type/field = value` for every master.cf entry.
    pub fields: String,
    /// `postconf -P -x`: `service/type/parameter = value` for every `-o` override.
    pub params: String,
    /// What `postconf -n` wrote to stderr (e.g. `unused parameter: smtpd_milter=…`).
    pub warnings: String,
}

/// One master.cf entry.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub kind: String,
    pub chroot: bool,
    /// The daemon it runs: `smtpd`, `cleanup`, `pickup`, `smtp`, …
    pub command: String,
    /// Its `-o name=value` overrides.
    pub params: BTreeMap<String, String>,
}

impl Service {
    /// `smtp/inet`, as `postconf -M` names it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.kind)
    }

    /// Whether only local clients can reach it: unix sockets, pass services, and inet
    /// services bound to a loopback address.
    pub fn local_only(&self) -> bool {
        if self.kind != "inet" {
            return true;
        }
        let host = self
            .name
            .rsplit_once(':')
            .map_or("", |(h, _)| h.trim_matches(|c| c == '[' || c == ']'));
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A parameter's value for a service, and where it is set.
#[derive(Clone, Debug)]
pub struct Setting<'a> {
    pub value: &'a str,
    pub location: Location,
    /// Set by the service's own `-o` rather than in main.cf.
    pub per_service: bool,
}

/// A Postfix instance's configuration.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    pub version: String,
    pub config_dir: PathBuf,
    /// Whether the directory was given (`--postfix-config`), so fixes need `postconf -c DIR`.
    pub explicit_dir: bool,
    main: BTreeMap<String, String>,
    pub services: Vec<Service>,
    main_lines: HashMap<String, usize>,
    master_lines: HashMap<(String, String), EntryLines>,
    /// postconf's own warnings, one per line.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct EntryLines {
    line: usize,
    options: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PostconfError {
    #[error("cannot run postconf ({0}); is Postfix installed (package postfix)?")]
    NotFound(std::io::Error),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PostfixConfig {
    /// Builds the configuration from postconf's outputs and the text of main.cf and master.cf.
    pub fn parse(
        out: &PostconfOutput,
        main_cf: &str,
        master_cf: &str,
        config_dir: PathBuf,
        explicit_dir: bool,
    ) -> Self {
        let main = name_values(&out.main)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        let version = main.get("mail_version").cloned().unwrap_or_default();
        let services = services(&out.fields, &out.params, &version);
        PostfixConfig {
            version,
            config_dir,
            explicit_dir,
            main,
            services,
            main_lines: main_cf_lines(main_cf),
            master_lines: master_cf_lines(master_cf),
            warnings: out
                .warnings
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// A main.cf parameter's value ("" for one postconf does not know).
    pub fn main(&self, name: &str) -> &str {
        self.main.get(name).map_or("", String::as_str)
    }

    /// Whether Postfix knows the parameter (for suggesting the one a typo meant).
    pub fn known_parameters(&self) -> impl Iterator<Item = &str> {
        self.main.keys().map(String::as_str)
    }

    /// The value a service runs with: its own `-o`, else main.cf's (or the default).
    pub fn setting<'a>(&'a self, service: Option<&'a Service>, name: &str) -> Setting<'a> {
        if let Some(s) = service
            && let Some(value) = s.params.get(name)
        {
            return Setting {
                value,
                location: self.option_location(s, name),
                per_service: true,
            };
        }
        Setting {
            value: self.main(name),
            location: self.main_location(name),
            per_service: false,
        }
    }

    pub fn queue_directory(&self) -> &Path {
        Path::new(self.main("queue_directory"))
    }

    pub fn main_cf(&self) -> PathBuf {
        self.config_dir.join("main.cf")
    }

    pub fn master_cf(&self) -> PathBuf {
        self.config_dir.join("master.cf")
    }

    /// main.cf, at the line that sets `name` (none when it has its default).
    pub fn main_location(&self, name: &str) -> Location {
        Location {
            file: self.main_cf(),
            line: self.main_lines.get(name).copied(),
        }
    }

    /// master.cf, at the `-o name=` line of the service, else at the service's entry.
    pub fn option_location(&self, service: &Service, name: &str) -> Location {
        let entry = self
            .master_lines
            .get(&(service.name.clone(), service.kind.clone()));
        Location {
            file: self.master_cf(),
            line: entry.map(|e| e.options.get(name).copied().unwrap_or(e.line)),
        }
    }

    /// The command that sets a parameter where it is set now: `postconf -e` for main.cf,
    /// `postconf -P` for a service's `-o`.
    pub fn set_command(&self, service: Option<&Service>, name: &str, value: &str) -> String {
        let postconf = if self.explicit_dir {
            format!("postconf -c {}", self.config_dir.display())
        } else {
            "postconf".to_string()
        };
        match service {
            Some(s) => format!("{postconf} -P '{}/{name}={value}'", s.label()),
            None => format!("{postconf} -e '{name} = {value}'"),
        }
    }

    /// The service that mail from `source` (pickup, qmqpd) is handed to for cleanup.
    pub fn cleanup_of(&self, source: &Service) -> Option<&Service> {
        let name = self.setting(Some(source), "cleanup_service_name").value;
        self.services
            .iter()
            .find(|s| s.name == name && s.kind == "unix")
    }
}

/// Runs postconf for the instance in `config_dir` (the default instance without it) and
/// reads its main.cf and master.cf.
pub fn read(config_dir: Option<&Path>) -> Result<PostfixConfig, PostconfError> {
    let mut base: Vec<String> = Vec::new();
    if let Some(dir) = config_dir {
        base.extend(["-c".to_string(), dir.display().to_string()]);
    }
    let main = run_postconf(&base, &["-x"])?.0;
    let dir = match config_dir {
        Some(d) => d.to_path_buf(),
        None => name_values(&main)
            .find(|(k, _)| *k == "config_directory")
            .map_or_else(|| PathBuf::from("/etc/postfix"), |(_, v)| PathBuf::from(v)),
    };
    let out = PostconfOutput {
        main,
        fields: run_postconf(&base, &["-F"])?.0,
        params: run_postconf(&base, &["-P", "-x"])?.0,
        warnings: run_postconf(&base, &["-n"])?.1,
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| PostconfError::Read { path, source })
    };
    Ok(PostfixConfig::parse(
        &out,
        &read("main.cf")?,
        &read("master.cf")?,
        dir.clone(),
        config_dir.is_some(),
    ))
}

/// (stdout, stderr) of one postconf run. postconf is in /usr/sbin, which a user's PATH may
/// not list, so that is tried second.
fn run_postconf(base: &[String], args: &[&str]) -> Result<(String, String), PostconfError> {
    let run = |program: &str| Command::new(program).args(base).args(args).output();
    let output = match run("postconf") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => run("/usr/sbin/postconf"),
        other => other,
    }
    .map_err(PostconfError::NotFound)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(PostconfError::Failed {
            command: format!("postconf {} {}", base.join(" "), args.join(" ")),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok((String::from_utf8_lossy(&output.stdout).into_owned(), stderr))
}

/// `name = value` lines (`name =` for an empty value).
fn name_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let (name, value) = line.split_once(" =")?;
        Some((name.trim(), value.trim()))
    })
}

/// `service/type/key = value` → (service, type, key, value). The service name may itself
/// contain `/`, so the last two parts are split off.
fn service_values(text: &str) -> impl Iterator<Item = (&str, &str, &str, &str)> {
    name_values(text).filter_map(|(path, value)| {
        let (rest, key) = path.rsplit_once('/')?;
        let (service, kind) = rest.rsplit_once('/')?;
        Some((service, kind, key, value))
    })
}

fn services(fields: &str, params: &str, version: &str) -> Vec<Service> {
    // master(5): "Chroot (default: Postfix >= 3.0: n, Postfix < 3.0: y)".
    let chroot_default = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|major| major < 3);
    let mut out: Vec<Service> = Vec::new();
    for (name, kind, field, value) in service_values(fields) {
        let index = match out.iter().position(|s| s.name == name && s.kind == kind) {
            Some(i) => i,
            None => {
                out.push(Service {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    chroot: chroot_default,
                    command: String::new(),
                    params: BTreeMap::new(),
                });
                out.len() - 1
            }
        };
        let service = &mut out[index];
        match field {
            "chroot" => {
                service.chroot = if value == "-" {
                    chroot_default
                } else {
                    value == "y"
                }
            }
            "command" => {
                let program = value.split_whitespace().next().unwrap_or("");
                service.command = program.rsplit('/').next().unwrap_or("").to_string();
            }
            _ => {}
        }
    }
    for (name, kind, param, value) in service_values(params) {
        if let Some(s) = out.iter_mut().find(|s| s.name == name && s.kind == kind) {
            s.params.insert(param.to_string(), value.to_string());
        }
    }
    out
}

/// The line of the last definition of each parameter in main.cf (later ones win).
fn main_cf_lines(text: &str) -> HashMap<String, usize> {
    let mut lines = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with(|c: char| c.is_whitespace() || c == '#') {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            lines.insert(name.trim().to_string(), i + 1);
        }
    }
    lines
}

/// Each master.cf entry's first line, and the line of each of its `-o` options.
fn master_cf_lines(text: &str) -> HashMap<(String, String), EntryLines> {
    let mut entries = HashMap::new();
    let mut current: Option<((String, String), EntryLines)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            if let Some((key, lines)) = current.take() {
                entries.insert(key, lines);
            }
            let mut fields = trimmed.split_whitespace();
            let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
                continue;
            };
            current = Some((
                (name.to_string(), kind.to_string()),
                EntryLines {
                    line: i + 1,
                    options: HashMap::new(),
                },
            ));
        }
        if let Some((_, lines)) = current.as_mut() {
            for name in option_names(line) {
                lines.options.insert(name, i + 1);
            }
        }
    }
    if let Some((key, lines)) = current {
        entries.insert(key, lines);
    }
    entries
}

/// The parameter names of the `-o name=value` and `-o { name = value }` options on a line.
fn option_names(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("-o") {
        let before_ok = at == 0 || rest[..at].ends_with(char::is_whitespace);
        rest = &rest[at + 2..];
        if !before_ok {
            continue;
        }
        let option = rest.trim_start().trim_start_matches('{').trim_start();
        let name: String = option
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_cf_lines_find_entries_and_options() {
        let text = "# comment\n\
            smtp      inet  n       -       y       -       -       smtpd\n\
            #  -o smtpd_milters=commented\n\
            127.0.0.1:10025 inet n - n - - smtpd\n\
            \x20 -o content_filter=\n\
            \x20 -o receive_override_options=no_milters -o smtpd_milters=\n\
            \x20 -o { non_smtpd_milters = { inet:x:1, default_action=accept } }\n\
            pickup    unix  n       -       y       60      1       pickup\n";
        let lines = master_cf_lines(text);
        let smtp = &lines[&("smtp".to_string(), "inet".to_string())];
        assert_eq!(smtp.line, 2);
        assert!(smtp.options.is_empty());
        let filter = &lines[&("127.0.0.1:10025".to_string(), "inet".to_string())];
        assert_eq!(filter.line, 4);
        assert_eq!(filter.options["content_filter"], 5);
        assert_eq!(filter.options["receive_override_options"], 6);
        assert_eq!(filter.options["smtpd_milters"], 6);
        assert_eq!(filter.options["non_smtpd_milters"], 7);
        assert_eq!(lines[&("pickup".to_string(), "unix".to_string())].line, 8);
    }

    #[test]
    fn main_cf_lines_keep_the_last_definition() {
        let text = "# smtpd_milters = commented\nsmtpd_milters = a\n  b\nmilter_protocol=6\nsmtpd_milters = c\n";
        let lines = main_cf_lines(text);
        assert_eq!(lines["smtpd_milters"], 5);
        assert_eq!(lines["milter_protocol"], 4);
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn services_take_fields_params_and_the_chroot_default_of_the_version() {
        let fields = "smtp/inet/service = smtp\nsmtp/inet/type = inet\nsmtp/inet/chroot = -\n\
            smtp/inet/command = smtpd -o smtpd_milters=x\n\
            cleanup/unix/chroot = y\ncleanup/unix/command = cleanup\n";
        let params = "smtp/inet/smtpd_milters = x\nnowhere/unix/a = b\n";
        let new = services(fields, params, "3.7.11");
        assert_eq!(new.len(), 2);
        assert_eq!(new[0].label(), "smtp/inet");
        assert!(!new[0].chroot);
        assert_eq!(new[0].command, "smtpd");
        assert_eq!(new[0].params["smtpd_milters"], "x");
        assert!(new[1].chroot);
        let old = services(fields, params, "2.11.3");
        assert!(old[0].chroot, "before 3.0 a - in the chroot column meant y");
    }

    #[test]
    fn local_only_services() {
        let service = |name: &str, kind: &str| Service {
            name: name.into(),
            kind: kind.into(),
            chroot: false,
            command: "smtpd".into(),
            params: BTreeMap::new(),
        };
        assert!(service("127.0.0.1:10025", "inet").local_only());
        assert!(service("[::1]:10025", "inet").local_only());
        assert!(service("localhost:10025", "inet").local_only());
        assert!(service("smtpd", "pass").local_only());
        assert!(!service("10025", "inet").local_only());
        assert!(!service("192.0.2.1:10025", "inet").local_only());
        assert!(!service("smtp", "inet").local_only());
    }
}
