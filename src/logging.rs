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
        .with_target(false);
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
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
    }
}
