use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Displayed as `file:line:column: reason`, the way
/// compilers and editors expect it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
