//! Snapshot files: one file per snapshot, written atomically and checked on load.
//!
//! Layout of `<dir>/<group>-<index>-<term>.snap`:
//!
//! | bytes | field |
//! |---|---|
//! | 6 | magic `RNSNAP` |
//! | 2 | format version, little endian (1) |
//! | 8 | data length, little endian |
//! | 4 | CRC-32 (IEEE) of the data, little endian |
//! | n | data |
//!
//! A file is written to `<name>.tmp`, fsynced, renamed into place, and the directory is
//! fsynced, so after a crash a `.snap` file is either complete or absent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::StorageError;

const MAGIC: &[u8; 6] = b"RNSNAP";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 6 + 2 + 8 + 4;

/// CRC-32 (IEEE) of `data`, the checksum zlib and gzip use.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The file name of group `group`'s snapshot at `index` / `term`.
pub(crate) fn file_name(group: u64, index: u64, term: u64) -> String {
    format!("{group}-{index}-{term}.snap")
}

/// Parses `<group>-<index>-<term>.snap` (or its `.tmp`); `None` for other names.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".snap")
        .or_else(|| name.strip_suffix(".snap.tmp"))?;
    let mut parts = stem.split('-');
    let group = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some(group)
}

fn io_error(op: &str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        op: format!("{op} {}", path.display()),
        source,
    }
}

/// fsyncs a directory so a rename or unlink in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync directory", dir, e))
}

/// Writes `data` durably as group `group`'s snapshot at `index` / `term` in `dir` and
/// returns its path. When it returns `Ok`, the file survives a crash.
pub(crate) fn write(
    dir: &Path,
    group: u64,
    index: u64,
    term: u64,
    data: &[u8],
) -> Result<PathBuf, StorageError> {
    let path = dir.join(file_name(group, index, term));
    let tmp = dir.join(format!("{}.tmp", file_name(group, index, term)));
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32(data).to_le_bytes());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_error("create snapshot file", &tmp, e))?;
    file.write_all(&header)
        .and_then(|()| file.write_all(data))
        .map_err(|e| io_error("write snapshot file", &tmp, e))?;
    file.sync_all()
        .map_err(|e| io_error("fsync snapshot file", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_error("rename snapshot file", &tmp, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads and checks a snapshot file written by [`write`].
///
/// # Errors
///
/// [`StorageError::Corrupt`] naming the file when it is missing, short, or fails its
/// magic, version, length or checksum check.
pub(crate) fn read(path: &Path) -> Result<Bytes, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        path: path.display().to_string(),
        detail: format!(
            "{detail}; the log store's metadata points to this snapshot file. Restore the \
             file from a backup, or remove this node's data directory and re-add the node \
             so it receives a fresh snapshot from the leader"
        ),
    };
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|e| corrupt(format!("cannot read the snapshot file: {e}")))?;
    if raw.len() < HEADER_LEN || &raw[..6] != MAGIC {
        return Err(corrupt(
            "not a snapshot file (bad magic or too short)".into(),
        ));
    }
    let version = u16::from_le_bytes([raw[6], raw[7]]);
    if version != VERSION {
        return Err(corrupt(format!(
            "unknown snapshot file version {version} (this build reads {VERSION})"
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&raw[8..16]);
    let len = u64::from_le_bytes(len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&raw[16..20]);
    let crc = u32::from_le_bytes(crc);
    let data = &raw[HEADER_LEN..];
    if data.len() as u64 != len {
        return Err(corrupt(format!(
            "the header says {len} bytes of data but the file holds {}",
            data.len()
        )));
    }
    if crc32(data) != crc {
        return Err(corrupt(format!(
            "checksum mismatch: header {crc:#010x}, data {:#010x}",
            crc32(data)
        )));
    }
    let mut raw = Bytes::from(raw);
    Ok(raw.split_off(HEADER_LEN))
}

/// Removes every snapshot file (and leftover `.tmp`) of group `group` in `dir` except
/// `keep`. Returns the first error but tries every file.
pub(crate) fn remove_others(
    dir: &Path,
    group: u64,
    keep: Option<&Path>,
) -> Result<(), StorageError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("list snapshot directory", dir, e)),
    };
    let mut first_error = None;
    let mut removed = false;
    for item in listing.flatten() {
        let path = item.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if parse_name(name) != Some(group) || Some(path.as_path()) == keep {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) => {
                first_error.get_or_insert(io_error("remove old snapshot file", &path, e));
            }
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn names_parse_only_for_snapshot_files() {
        assert_eq!(parse_name(&file_name(7, 10, 2)), Some(7));
        assert_eq!(parse_name("7-10-2.snap.tmp"), Some(7));
        assert_eq!(parse_name("7-10.snap"), None);
        assert_eq!(parse_name("0000000000000001.raftlog"), None);
    }

    #[test]
    fn write_read_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), 1, 5, 2, b"hello").unwrap();
        assert_eq!(read(&path).unwrap(), Bytes::from_static(b"hello"));
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("1-5-2.snap"),
            "{err}"
        );
        remove_others(dir.path(), 1, None).unwrap();
        assert!(!path.exists());
    }
}
