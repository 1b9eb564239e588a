use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Displayed as `file:line:column: reason`, the way
/// compilers and editors expect it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is part of the message and not a separate `source`, so that it is printed
    /// once, also where the whole chain of causes is shown.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

/// A position in a config file (1-based line and column).
#[derive(Debug, Clone)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

impl ConfigError {
    /// An error at byte range `span` of `text` (line 1, column 1 when the error has no position).
    pub(crate) fn located(
        path: &Path,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        message: String,
    ) -> Self {
        let offset = span.map_or(0, |s| s.start.min(text.len()));
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            location: Location {
                path: path.to_owned(),
                line,
                column,
            },
            message,
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The TOML parser's message, with how to fix the mistakes people make most. `value` is the
/// text at the error's position.
pub(crate) fn with_hint(message: &str, value: Option<&str>) -> String {
    let message = message.trim_end();
    let hint = if message.contains("leading zero") {
        Some("TOML numbers cannot start with 0: write octal modes in quotes, e.g. socket_mode = \"0660\"".to_string())
    } else {
        value
            .filter(|v| message.starts_with("invalid") && is_bare_word(v))
            .map(|word| format!("text values are quoted in TOML: write \"{word}\""))
    };
    match hint {
        Some(hint) => format!("{message} ({hint})"),
        None => message.to_string(),
    }
}

/// `info`, `Relaxed`: a word where TOML wants a quoted string (`true`/`false` are booleans).
fn is_bare_word(value: &str) -> bool {
    value.starts_with(|c: char| c.is_ascii_alphabetic()) && value != "true" && value != "false"
}
