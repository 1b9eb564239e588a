//! Log output on stderr: text lines (the default) or JSON lines, at the configured level.
//!
//! Under systemd stderr is the journal (systemd sets `JOURNAL_STREAM` to the device and inode of
//! that stream). The journal stamps every entry itself, so our timestamp is left out there, and
//! each line starts with its syslog priority (`<3>` error … `<7>` debug), which journald turns
//! into the entry's priority (`journalctl -p warning` works) and strips from the text.

use crate::config::{LogFormat, LogLevel, LogSettings};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, layer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber. `SIGNET_LOG` overrides the configured level; a value that
/// is not a level is ignored with a warning (taken as a filter, it would silence every line).
pub fn init(settings: &LogSettings) {
    let from_env = std::env::var("SIGNET_LOG")
        .ok()
        .map(|v| LogLevel::parse(&v));
    let level = match &from_env {
        Some(Ok(level)) => level,
        _ => &settings.level,
    };
    // The Vault client logs every failed request itself; our own line says more, once.
    let filter = EnvFilter::try_new(format!("{level},vaultrs=off,rustify=off"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    // Colours only for a person at a terminal, never into the journal or a log file.
    let ansi = !journal
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::registry()
        .with(filter)
        .with(output(settings.format, journal, ansi))
        .init();
    if let Some(Err(e)) = from_env {
        tracing::warn!(
            "SIGNET_LOG ignored, using [log] level = \"{}\": {e}",
            settings.level
        );
    }
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

fn output<S>(format: LogFormat, journal: bool, ansi: bool) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let text = layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .fmt_fields(escaped_fields());
    let json = layer()
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .with_target(false);
    let text_format = format::format().with_target(false).with_ansi(false);
    let json_format = format::format()
        .json()
        .flatten_event(true)
        .with_target(false);
    match (format, journal) {
        (LogFormat::Text, false) => text.boxed(),
        (LogFormat::Text, true) => text
            .event_format(JournalPriority(text_format.without_time()))
            .boxed(),
        (LogFormat::Json, false) => json.boxed(),
        (LogFormat::Json, true) => json
            .event_format(JournalPriority(json_format.without_time()))
            .boxed(),
    }
}

/// Field values as the default text format writes them, with control characters escaped
/// (`\r`, `\n`, `\u{1b}`): a sender address, SASL login or queue id with a CR/LF in it could
/// otherwise start a line of its own that looks like ours. The JSON format escapes them anyway.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + 'static {
    format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            write!(writer, "{}", Escaped(&text))
        } else {
            write!(writer, "{}={}", field.name(), Escaped(&text))
        }
    })
    .delimited(" ")
}

/// Text with every control character written as its escape.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Prefixes each line with its syslog priority for journald (sd-daemon(3) "<N>" prefixes).
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether our stderr is the stream systemd connected to the journal (`JOURNAL_STREAM` names
/// its `device:inode`; a child that inherited the variable but not the stream does not match).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    names_stream(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// `JOURNAL_STREAM` is `DEV:INODE` in decimal.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(names_stream("65:12345", 65, 12345));
        assert!(!names_stream("65:12345", 65, 12346));
        assert!(!names_stream("66:12345", 65, 12345));
        for malformed in ["", "65", "65:", ":12345", "x:y", "65:12345:1", "-1:12345"] {
            assert!(!names_stream(malformed, 65, 12345), "{malformed:?}");
        }
    }

    #[test]
    fn control_characters_in_values_cannot_start_a_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .fmt_fields(escaped_fields()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let forged = "Q1\r\nINFO signed queue_id=FORGED result=\"signed\"\u{1b}[2J";
            tracing::info!(queue_id = %forged, sender = forged, "not signed: {forged}");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.contains("queue_id=Q1\\r\\nINFO signed queue_id=FORGED"),
            "{out}"
        );
        assert!(out.contains("INFO not signed: Q1\\r\\n"), "{out}");
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
    }
}
