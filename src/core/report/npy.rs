//! Minimal NumPy `.npy` (format 1.0) reading and writing of 2-D little-endian float32 matrices.

use std::path::{Path, PathBuf};

use crate::core::embeddings::Embeddings;

/// A `.npy` file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a 2-D little-endian float32 `.npy`.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes a matrix as `<f4` with shape (rows, dim), atomically (temporary file, then rename).
pub fn write_npy_f32(path: &Path, m: &Embeddings) -> Result<(), NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows(),
        m.dim
    );
    // Magic (6) + version (2) + header length (2) + header + newline, padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + m.data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for x in &m.data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    crate::core::files::write_atomic(path, &bytes).map_err(io)
}

/// Reads a 2-D `<f4` C-order `.npy`.
pub fn read_npy_f32(path: &Path) -> Result<Embeddings, NpyError> {
    const LIMIT_BYTES: u64 = 16 << 30;
    let bytes = crate::core::files::read_bounded(path, LIMIT_BYTES).map_err(|e| match e {
        crate::core::files::ReadError::Io(source) => NpyError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => NpyError::Format {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let bad = |reason: &str| NpyError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian float32 in C order is supported"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let [rows, dim] = dims[..] else {
        return Err(bad("only 2-D arrays are supported"));
    };
    let body = &bytes[start + header_len..];
    if body.len() != rows * dim * 4 || dim == 0 {
        return Err(bad("data length does not match the shape"));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Embeddings::from_vec(dim, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let m = Embeddings::from_vec(3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        write_npy_f32(&p, &m).unwrap();
        assert_eq!(read_npy_f32(&p).unwrap(), m);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
    }
}
