//! Reading user-supplied files safely: only regular files are opened (a FIFO would block the
//! open, a device would never end), and the read is bounded while it reads, not only by the
//! size the metadata claims (0 for `/proc` files, devices and pipes).

use std::io::Read;
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS refused (missing file, no permission, ...).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file: a directory, device, FIFO or socket.
    #[error("it is a {kind}, not a regular file")]
    NotRegular {
        /// What it is.
        kind: &'static str,
    },
    /// Larger than the limit (found while reading, or from the metadata).
    #[error("it is larger than the {} limit", format_bytes(*limit_bytes))]
    TooLarge {
        /// The limit.
        limit_bytes: u64,
    },
}

/// `1.5 GiB`, `64 MiB`, `12 kB`, `900 bytes`.
pub fn format_bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else if n >= MIB {
        format!("{:.0} MiB", n as f64 / MIB as f64)
    } else if n >= 1024 {
        format!("{:.0} kB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

/// The kind of a non-regular file, for messages.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "socket";
        }
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
    }
    if ft.is_dir() {
        "folder"
    } else {
        "special file"
    }
}

/// Opens a regular file for reading. The kind is checked before opening (opening a FIFO blocks)
/// and again on the open handle (the path may have been replaced in between; on Linux the open
/// does not block on a FIFO either).
pub fn open_regular(path: &Path) -> Result<std::fs::File, ReadError> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            kind: kind_of(meta.file_type()),
        });
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            kind: kind_of(meta.file_type()),
        });
    }
    Ok(file)
}

/// Reads a whole regular file of at most `limit_bytes`; a larger file (or one that grows past
/// the limit while it is read) is refused without reading more than the limit and one byte.
pub fn read_bounded(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    read_open_bounded(file, limit_bytes)
}

/// [`read_bounded`] on a file already opened with [`open_regular`].
pub fn read_open_bounded(file: std::fs::File, limit_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let claimed = file.metadata()?.len();
    if claimed > limit_bytes {
        return Err(ReadError::TooLarge { limit_bytes });
    }
    let mut bytes = Vec::with_capacity(claimed as usize);
    file.take(limit_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit_bytes {
        return Err(ReadError::TooLarge { limit_bytes });
    }
    Ok(bytes)
}

/// Memory the OS says is available to a new allocation (`MemAvailable` of `/proc/meminfo`), or
/// `None` where that cannot be told.
pub fn memory_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file beside it, synced, then
/// renamed over it (a crash or a full disk leaves the old file, or none, never half a file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{format_bytes, memory_available_bytes};

    #[cfg(target_os = "linux")]
    #[test]
    fn available_memory_is_meminfos_figure_in_bytes() {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = text
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        let got = memory_available_bytes().expect("Linux has /proc/meminfo");
        // It moves between the two reads: within 10 %, and in bytes (not KiB).
        let want = kib * 1024;
        assert!(
            got.abs_diff(want) <= want / 10,
            "{got} bytes vs MemAvailable {kib} KiB"
        );
    }

    #[test]
    fn sizes_are_written_in_the_largest_whole_unit() {
        for (n, text) in [
            (0, "0 bytes"),
            (1023, "1023 bytes"),
            (1024, "1 kB"),
            ((1 << 20) - 1, "1024 kB"),
            (1 << 20, "1 MiB"),
            (64 << 20, "64 MiB"),
            ((1 << 30) - 1, "1024 MiB"),
            (1 << 30, "1.0 GiB"),
            (3 << 29, "1.5 GiB"),
        ] {
            assert_eq!(format_bytes(n), text, "{n} bytes");
        }
    }

    use super::*;

    #[test]
    fn devices_and_folders_are_refused_and_limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        let msg = read_bounded(dir.path(), 10).unwrap_err().to_string();
        assert!(msg.contains("folder"), "{msg}");
        if Path::new("/dev/zero").exists() {
            let msg = read_bounded(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("character device"), "{msg}");
        }
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_bounded(&f, 9),
            Err(ReadError::TooLarge { limit_bytes: 9 })
        ));
    }
}
