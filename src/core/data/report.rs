//! The validation report: rows that were skipped (with row, line and field) and quality warnings.

use super::Field;

/// Why one row was skipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RowProblem {
    /// The row is not a JSON object.
    NotAnObject {
        /// JSON type found (`string`, `array`, ...).
        found: String,
    },
    /// A JSON line that does not parse.
    InvalidJson {
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A required key is absent.
    MissingKey {
        /// The key expected.
        key: String,
    },
    /// The value is not a string.
    NotAString {
        /// The key.
        key: String,
        /// JSON type found.
        found: String,
    },
    /// The text is empty or only whitespace.
    EmptyText {
        /// The key.
        key: String,
    },
    /// The row uses the other key set than the rest of the file.
    OtherKeySet {
        /// The key set of the file.
        expected: String,
    },
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowProblem::NotAnObject { found } => write!(f, "expected a JSON object, found {found}"),
            RowProblem::InvalidJson { column, message } => {
                write!(f, "not valid JSON at column {column}: {message}")
            }
            RowProblem::MissingKey { key } => write!(f, "missing key `{key}`"),
            RowProblem::NotAString { key, found } => {
                write!(f, "`{key}` must be a string, found {found}")
            }
            RowProblem::EmptyText { key } => write!(f, "`{key}` is empty or only whitespace"),
            RowProblem::OtherKeySet { expected } => {
                write!(f, "uses a different key set than the file's {expected}")
            }
        }
    }
}

/// A row that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRow {
    /// 0-based row index (array element, or non-empty line of a JSON-lines file).
    pub index: usize,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
    /// What was wrong.
    pub problem: RowProblem,
}

impl std::fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}", self.index)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Something suspicious about a loaded triplet; the triplet is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QualityWarning {
    /// The positive and the negative are the same text: the triplet cannot be ranked right.
    PosEqualsNegative {
        /// Row index.
        index: usize,
    },
    /// The same (query, pos, negative) appears earlier.
    DuplicateTriplet {
        /// Row index.
        index: usize,
        /// Row index of the first occurrence.
        first_index: usize,
    },
    /// A text has more tokens than the model reads; it is cut.
    TooLong {
        /// Row index.
        index: usize,
        /// Which text.
        field: Field,
        /// Its token count, special tokens included.
        tokens: usize,
        /// The model's max length.
        max_tokens: usize,
    },
}

impl std::fmt::Display for QualityWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QualityWarning::PosEqualsNegative { index } => {
                write!(f, "row {index}: positive and negative are the same text")
            }
            QualityWarning::DuplicateTriplet { index, first_index } => {
                write!(f, "row {index}: duplicate of row {first_index}")
            }
            QualityWarning::TooLong {
                index,
                field,
                tokens,
                max_tokens,
            } => write!(
                f,
                "row {index}: {field:?} has {tokens} tokens, cut to the model's {max_tokens}"
            ),
        }
    }
}

/// What loading found besides the valid triplets.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ValidationReport {
    /// Rows in the file, valid or not.
    pub total_rows: usize,
    /// Rows not loaded, in file order.
    pub skipped: Vec<SkippedRow>,
    /// Warnings about loaded rows.
    pub warnings: Vec<QualityWarning>,
}

impl ValidationReport {
    /// True when nothing was skipped and nothing is suspicious.
    pub fn is_clean(&self) -> bool {
        self.skipped.is_empty() && self.warnings.is_empty()
    }
}
