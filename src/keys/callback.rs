//! Callback key sources: `key = { event_name = "NAME", event_args = [...] }`.
//!
//! KumoMTA runs a Lua event handler; here the name refers to a `[callbacks."NAME"]` section (a
//! program to run, or a SQLite query), or to a [`KeyCallback`] that a program embedding this
//! library registered in a [`CallbackRegistry`].

use crate::config::CallbackSettings;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use zeroize::Zeroizing;

/// Used when a `[callbacks]` section sets no `timeout`.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// A PEM RSA-4096 key is about 3.3 KiB; anything near this limit is not a key.
const MAX_KEY_OUTPUT: u64 = 64 * 1024;
const MAX_STDERR: u64 = 8 * 1024;

/// Key bytes as a callback returns them (PEM, DER or base64); wiped when dropped.
pub type KeyBytes = Zeroizing<Vec<u8>>;

/// Why a callback produced no key. Shown to operators: must not contain key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackError(pub String);

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for CallbackError {
    fn from(reason: String) -> Self {
        CallbackError(reason)
    }
}

impl From<&str> for CallbackError {
    fn from(reason: &str) -> Self {
        CallbackError(reason.to_string())
    }
}

pub type KeyFuture<'a> = Pin<Box<dyn Future<Output = Result<KeyBytes, CallbackError>> + Send + 'a>>;

/// A named key provider. `args` are the key source's `event_args`, with `{domain}` and
/// `{selector}` filled in. Results go through the key cache, so a callback is called once per
/// key and `ttl`, not once per message; it should still answer within a few seconds.
pub trait KeyCallback: Send + Sync {
    fn fetch<'a>(&'a self, args: &'a [String]) -> KeyFuture<'a>;
}

/// Callbacks by name: those a program registers, and those of the config's `[callbacks]`.
#[derive(Clone, Default)]
pub struct CallbackRegistry {
    callbacks: HashMap<String, Arc<dyn KeyCallback>>,
}

impl CallbackRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `callback` available as `event_name = name`. Load the config with
    /// [`crate::config::Config::load_with_callbacks`] and [`CallbackRegistry::names`], so that
    /// the config may refer to it.
    pub fn register(&mut self, name: impl Into<String>, callback: impl KeyCallback + 'static) {
        self.callbacks.insert(name.into(), Arc::new(callback));
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.callbacks.keys().cloned().collect()
    }

    /// The registered callbacks plus the config's `[callbacks]` sections.
    pub(crate) fn with_config(
        &self,
        sections: &std::collections::BTreeMap<String, CallbackSettings>,
    ) -> Self {
        let mut all = self.clone();
        for (name, settings) in sections {
            let timeout = settings.timeout.unwrap_or(DEFAULT_CALLBACK_TIMEOUT);
            let callback: Arc<dyn KeyCallback> = match (&settings.command, &settings.sqlite) {
                (Some(argv), _) => Arc::new(CommandCallback {
                    argv: argv.clone(),
                    timeout,
                }),
                (None, Some(path)) => Arc::new(SqliteCallback {
                    path: path.clone(),
                    query: settings.query.clone().unwrap_or_default(),
                    timeout,
                }),
                // Config loading guarantees one of the two.
                (None, None) => continue,
            };
            all.callbacks.insert(name.clone(), callback);
        }
        all
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn KeyCallback>> {
        self.callbacks.get(name)
    }
}

/// `command = ["/path/prog", "arg", …]`: runs the program directly (no shell) with the
/// `event_args` appended; the key is what it prints on stdout.
struct CommandCallback {
    argv: Vec<String>,
    timeout: Duration,
}

impl KeyCallback for CommandCallback {
    fn fetch<'a>(&'a self, args: &'a [String]) -> KeyFuture<'a> {
        Box::pin(run_command(&self.argv, args, self.timeout))
    }
}

async fn run_command(
    argv: &[String],
    args: &[String],
    timeout: Duration,
) -> Result<KeyBytes, CallbackError> {
    let program = &argv[0];
    let finished = run(argv, args, timeout, MAX_KEY_OUTPUT as usize + 1).await?;
    if !finished.status.success() {
        return Err(finished.failure(program));
    }
    finished.log_stderr(program);
    let out = finished.stdout;
    if out.len() as u64 > MAX_KEY_OUTPUT {
        return Err(format!("{program} printed more than {MAX_KEY_OUTPUT} bytes").into());
    }
    if out.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{program} printed no key").into());
    }
    Ok(out)
}

/// A program that ran to its end.
struct Finished {
    status: std::process::ExitStatus,
    stdout: KeyBytes,
    stderr: String,
}

impl Finished {
    /// The error for a non-zero exit, with the last line the program wrote to stderr.
    fn failure(&self, program: &str) -> CallbackError {
        let last: String = self
            .stderr
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let detail = if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        };
        format!("{program} failed ({}){detail}", self.status).into()
    }

    fn log_stderr(&self, program: &str) {
        if !self.stderr.is_empty() {
            tracing::info!(program = %program, stderr = %self.stderr, "callback wrote to stderr");
        }
    }
}

/// Runs `argv` + `args` (no shell), keeping at most `stdout_limit` bytes of its output; killed
/// when it runs past `timeout`.
async fn run(
    argv: &[String],
    args: &[String],
    timeout: Duration,
    stdout_limit: usize,
) -> Result<Finished, CallbackError> {
    let program = &argv[0];
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let outcome = tokio::time::timeout(timeout, async {
        let (out, err) = tokio::join!(
            read_limited(stdout, stdout_limit),
            read_limited(stderr, MAX_STDERR as usize)
        );
        (out, err, child.wait().await)
    })
    .await;
    let Ok((out, err, status)) = outcome else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(format!(
            "{program} did not finish within {}",
            humantime::format_duration(timeout)
        )
        .into());
    };
    let stderr = String::from_utf8_lossy(&err.map(|b| b.to_vec()).unwrap_or_default())
        .trim()
        .to_string();
    let status = status.map_err(|e| format!("waiting for {program}: {e}"))?;
    let stdout = out.map_err(|e| format!("reading the output of {program}: {e}"))?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Asks a `[callbacks]` section a yes-or-no question (`[authorization] callback`): a command
/// answers with its exit status (0 yes, 1 no, anything else is an error; its output is
/// ignored), a SQLite query with whether it returns a row.
pub(crate) async fn ask(
    settings: &CallbackSettings,
    args: &[String],
) -> Result<bool, CallbackError> {
    let timeout = settings.timeout.unwrap_or(DEFAULT_CALLBACK_TIMEOUT);
    match (&settings.command, &settings.sqlite) {
        (Some(argv), _) => {
            let program = &argv[0];
            let finished = run(argv, args, timeout, 0).await?;
            finished.log_stderr(program);
            match finished.status.code() {
                Some(0) => Ok(true),
                Some(1) => Ok(false),
                _ => Err(finished.failure(program)),
            }
        }
        (None, Some(path)) => {
            let (path, query, args) = (
                path.clone(),
                settings.query.clone().unwrap_or_default(),
                args.to_vec(),
            );
            blocking_sqlite(timeout, move || {
                with_first_row(&path, &query, &args, timeout, |row| Ok(row.is_some()))
            })
            .await
        }
        (None, None) => Err("the callback has neither command nor sqlite".into()),
    }
}

/// Reads a child's pipe to its end, keeping at most `limit` bytes (the excess is read and
/// dropped, so the child never blocks on a full pipe).
async fn read_limited(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<KeyBytes> {
    let mut kept = Zeroizing::new(Vec::new());
    let Some(mut pipe) = pipe else {
        return Ok(kept);
    };
    // On the heap: in the future's own state it would make every future that awaits this one
    // 8 KiB larger.
    let mut buf = Zeroizing::new(vec![0u8; 8192]);
    loop {
        let n = pipe.read(&mut buf[..]).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// `sqlite = PATH` with `query`: the first column of the first row, with `event_args` bound to
/// `?1`, `?2`, … (or plain `?` in order, as in KumoMTA's example). Opened read-only, per fetch.
struct SqliteCallback {
    path: PathBuf,
    query: String,
    timeout: Duration,
}

impl KeyCallback for SqliteCallback {
    fn fetch<'a>(&'a self, args: &'a [String]) -> KeyFuture<'a> {
        Box::pin(async move {
            let (path, query, args) = (self.path.clone(), self.query.clone(), args.to_vec());
            let timeout = self.timeout;
            blocking_sqlite(timeout, move || query_sqlite(&path, &query, &args, timeout)).await
        })
    }
}

/// Runs a SQLite query on the blocking pool. The query itself is bounded by SQLite's busy
/// timeout; this bounds the wait.
async fn blocking_sqlite<T: Send + 'static>(
    timeout: Duration,
    query: impl FnOnce() -> Result<T, CallbackError> + Send + 'static,
) -> Result<T, CallbackError> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(query)).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the SQLite query task failed".into()),
        Err(_) => Err(format!(
            "the SQLite query did not finish within {}",
            humantime::format_duration(timeout)
        )
        .into()),
    }
}

fn query_sqlite(
    path: &Path,
    query: &str,
    args: &[String],
    timeout: Duration,
) -> Result<KeyBytes, CallbackError> {
    use rusqlite::types::ValueRef;
    let shown = path.display();
    with_first_row(path, query, args, timeout, |row| {
        let row =
            row.ok_or_else(|| format!("database {shown}: no row for ({})", args.join(", ")))?;
        match row
            .get_ref(0)
            .map_err(|e| format!("database {shown}: {e}"))?
        {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) if !bytes.is_empty() => {
                Ok(Zeroizing::new(bytes.to_vec()))
            }
            ValueRef::Null | ValueRef::Text(_) | ValueRef::Blob(_) => Err(format!(
                "database {shown}: the key for ({}) is empty",
                args.join(", ")
            )
            .into()),
            _ => Err(format!("database {shown}: the first column is not text or a blob").into()),
        }
    })
}

/// Opens `path` read-only, runs `query` with `args` bound to `?1`, `?2`, … and hands the first
/// row (or `None`) to `read`.
fn with_first_row<T>(
    path: &Path,
    query: &str,
    args: &[String],
    timeout: Duration,
    read: impl FnOnce(Option<&rusqlite::Row<'_>>) -> Result<T, CallbackError>,
) -> Result<T, CallbackError> {
    use rusqlite::OpenFlags;
    let shown = path.display();
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open database {shown}: {e}"))?;
    conn.busy_timeout(timeout)
        .map_err(|e| format!("database {shown}: {e}"))?;
    let mut statement = conn
        .prepare(query)
        .map_err(|e| format!("database {shown}: the query does not work: {e}"))?;
    let wanted = statement.parameter_count();
    if wanted != args.len() {
        return Err(format!(
            "database {shown}: the query takes {wanted} parameters but event_args gives {}",
            args.len()
        )
        .into());
    }
    let mut rows = statement
        .query(rusqlite::params_from_iter(args))
        .map_err(|e| format!("database {shown}: {e}"))?;
    let row = rows.next().map_err(|e| format!("database {shown}: {e}"))?;
    read(row)
}
