//! Triplet files: format detection (JSON array or JSON lines, either key set), loading and the
//! validation report of skipped rows and quality warnings.

mod load;
mod report;
mod search;
mod stats;

pub use load::{load_triplets, parse_triplets, sha256_hex, MAX_FILE_BYTES};
pub use report::{QualityWarning, RowProblem, SkippedRow, ValidationReport};
pub use search::TextSearch;
pub use stats::{DataStats, LengthStats};

use std::path::PathBuf;

/// One (query, relevant document, non-relevant document) example.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Triplet {
    /// The search text.
    pub query: String,
    /// A document relevant to the query.
    pub pos: String,
    /// A document that is not relevant to the query.
    pub negative: String,
}

/// Which field of a triplet a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `query` / `anchor`.
    Query,
    /// `pos` / `positive`.
    Pos,
    /// `negative`.
    Negative,
}

impl Field {
    /// The three fields in file order.
    pub const ALL: [Field; 3] = [Field::Query, Field::Pos, Field::Negative];

    /// The JSON key of this field under a key set.
    pub fn key(self, key_set: KeySet) -> &'static str {
        match (self, key_set) {
            (Field::Query, KeySet::QueryPosNegative) => "query",
            (Field::Pos, KeySet::QueryPosNegative) => "pos",
            (Field::Query, KeySet::AnchorPositiveNegative) => "anchor",
            (Field::Pos, KeySet::AnchorPositiveNegative) => "positive",
            (Field::Negative, _) => "negative",
        }
    }
}

/// The two accepted sets of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum KeySet {
    /// `{query, pos, negative}` (the notebook's).
    QueryPosNegative,
    /// `{anchor, positive, negative}` (sentence-transformers').
    AnchorPositiveNegative,
}

impl std::fmt::Display for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySet::QueryPosNegative => f.write_str("{query, pos, negative}"),
            KeySet::AnchorPositiveNegative => f.write_str("{anchor, positive, negative}"),
        }
    }
}

/// How the file's content is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FileFormat {
    /// One JSON array of objects.
    JsonArray,
    /// One JSON object per line.
    JsonLines,
}

/// A loaded and validated triplet file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it was read from (or a label for in-memory data).
    pub path: PathBuf,
    /// Detected layout.
    pub format: FileFormat,
    /// Detected key set.
    pub key_set: KeySet,
    /// The valid triplets, in file order.
    pub triplets: Vec<Triplet>,
    /// For each valid triplet, its row index in the file (0-based).
    pub source_rows: Vec<usize>,
    /// For each valid triplet, its 1-based line in the file where known (JSON lines).
    pub source_lines: Vec<Option<usize>>,
    /// SHA-256 of the file's bytes, hex: run records name the data they were trained on by it.
    pub sha256: String,
    /// Skipped rows and quality warnings.
    pub report: ValidationReport,
}

impl Dataset {
    /// Where triplet `i` is in the file, as the CLI and the exports number it: "row 12 (line
    /// 13)" (0-based row, 1-based line where the format has one row per line).
    pub fn location(&self, i: usize) -> String {
        match self.source_lines.get(i).copied().flatten() {
            Some(line) => format!("row {} (line {line})", self.source_rows[i]),
            None => format!("row {}", self.source_rows[i]),
        }
    }

    /// Number of valid triplets.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    /// True when no triplet is loaded (never the case for a successfully loaded file).
    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty()
    }
}

/// A file-level problem: the file cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file changed (was written or replaced) while it was being read.
    #[error(
        "{path} changed while it was being read (another program is writing it?); \
         load it again when it is complete"
    )]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("{path} is a directory, expected a triplet file (.json or .jsonl)")]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// Not a regular file: a device, FIFO or socket would never end or block the read.
    #[error("{path} is a {kind}, not a regular file: expected a triplet file (.json or .jsonl)")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than the loader accepts (or grew past the limit while it was read).
    #[error(
        "{path} is {size_bytes} bytes or more, over the {limit_bytes}-byte limit for a triplet file"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The bytes are not UTF-8.
    #[error("{path} is not UTF-8 text: {detail}")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// What was found (byte offset, or a UTF-16 byte-order mark).
        detail: String,
    },
    /// The file has no content.
    #[error("{path} is empty: expected a JSON array of triplets or one JSON object per line")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The content is not valid JSON.
    #[error("{path}:{line}:{column}: not valid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// Valid JSON, but not an array of objects or JSON lines.
    #[error("{path}: expected a JSON array of triplet objects or one JSON object per line, found {found}")]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// What the top-level value is.
        found: String,
    },
    /// The file parsed but no row is a valid triplet.
    #[error("{path}: no valid triplet among {rows} rows{}", first_problem.as_ref().map(|p| format!(" (first problem: {p})")).unwrap_or_default())]
    NoValidRows {
        /// The file.
        path: PathBuf,
        /// Rows seen.
        rows: usize,
        /// The first row's problem, when there was a row.
        first_problem: Option<String>,
    },
}
