//! Key files: read with a permission check, and stamped so a replaced file is noticed.

use super::KeyError;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Permission bits that let someone other than the owner read or replace the key.
const UNSAFE_BITS: u32 = 0o066;

/// Identity of a file's content as far as `stat` can tell: a new mtime, size or inode means the
/// file was replaced or rewritten; a new mode, that its permissions must be checked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
    mode: u32,
}

pub fn stamp(path: &Path) -> Result<FileStamp, KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| KeyError::io(path, &e))?;
    Ok(stamp_of(&meta))
}

fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
        device: meta.dev(),
        mode: meta.mode(),
    }
}

/// Reads the key file, refusing one that group or others can read or write when `require_safe`.
pub fn read_key_file(
    path: &Path,
    require_safe: bool,
) -> Result<(Zeroizing<Vec<u8>>, FileStamp), KeyError> {
    let meta = check_key_file(path, require_safe)?;
    let before = stamp_of(&meta);
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| KeyError::io(path, &e))?);
    Ok((bytes, before))
}

/// What `stat` can tell about a key file without reading it: that it exists, is a regular
/// file, and (when `require_safe`) that only its owner may read or write it.
pub fn check_key_file(path: &Path, require_safe: bool) -> Result<std::fs::Metadata, KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| KeyError::io(path, &e))?;
    if !meta.is_file() {
        return Err(KeyError::File {
            path: path.to_owned(),
            reason: "is not a regular file".into(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if require_safe && mode & UNSAFE_BITS != 0 {
        return Err(KeyError::UnsafePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(meta)
}
