//! Reading a triplet file: detects JSON array vs JSON lines and the key set from the content, and
//! turns every problem into either a [`DataError`] (file level) or a [`SkippedRow`] (row level).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::core::files::ReadError;

use super::{
    DataError, Dataset, Field, FileFormat, KeySet, QualityWarning, RowProblem, SkippedRow, Triplet,
    ValidationReport,
};

/// Largest triplet file the loader reads into memory (1 GiB); larger files are refused.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Loads and validates a triplet file (JSON array or JSON lines, either key set). Only regular
/// files are opened (a FIFO would block, a device never end), and the read stops at the limit.
pub fn load_triplets(path: &Path) -> Result<Dataset, DataError> {
    let bytes = read_unchanged(path, MAX_FILE_BYTES, &mut || {})?;
    parse_triplets(path, &bytes)
}

/// Reads a whole regular file of at most `limit` bytes and checks that it did not change
/// meanwhile (size and modification time of the open file and of the path, before and after): a
/// pipeline still writing the file, or replacing it, gives [`DataError::ChangedWhileReading`]
/// instead of a mix of two versions. `after_read` runs between the read and the check (tests
/// change the file there).
fn read_unchanged(
    path: &Path,
    limit: u64,
    after_read: &mut dyn FnMut(),
) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size_bytes| DataError::TooLarge {
        path: path.to_path_buf(),
        size_bytes,
        limit_bytes: limit,
    };
    let file = crate::core::files::open_regular(path).map_err(|e| match e {
        ReadError::Io(source) => io_err(source),
        ReadError::NotRegular { kind: "folder" } => DataError::IsDirectory {
            path: path.to_path_buf(),
        },
        ReadError::NotRegular { kind } => DataError::NotRegular {
            path: path.to_path_buf(),
            kind,
        },
        ReadError::TooLarge { limit_bytes } => too_large(limit_bytes),
    })?;
    let stamp = |m: &std::fs::Metadata| (m.len(), m.modified().ok(), file_identity(m));
    let before = stamp(&file.metadata().map_err(io_err)?);
    if before.0 > limit {
        return Err(too_large(before.0));
    }
    let mut bytes = Vec::with_capacity(before.0 as usize);
    let mut reader = (&file).take(limit.saturating_add(1));
    reader.read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    after_read();
    let now_open = stamp(&file.metadata().map_err(io_err)?);
    let now_path = std::fs::metadata(path).map(|m| stamp(&m)).ok();
    if bytes.len() as u64 != before.0 || now_open != before || now_path != Some(before) {
        return Err(DataError::ChangedWhileReading {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Which file a path names (device and inode), so a file replaced by a rename is noticed even when
/// the new one has the same size and time stamp.
#[cfg(unix)]
fn file_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Validates triplets from bytes already in memory; `path` is used in messages.
pub fn parse_triplets(path: &Path, bytes: &[u8]) -> Result<Dataset, DataError> {
    let path_buf = path.to_path_buf();
    let sha256 = sha256_hex(bytes);
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(DataError::NotUtf8 {
            path: path_buf,
            detail: "it starts with a UTF-16 byte-order mark; save it as UTF-8".into(),
        });
    }
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        DataError::NotUtf8 {
            path: path_buf.clone(),
            detail: format!("invalid byte sequence at byte {offset} (line {line})"),
        }
    })?;
    let trimmed = text.trim_start();
    let Some(first) = trimmed.chars().next() else {
        return Err(DataError::Empty { path: path_buf });
    };
    let (format, rows) = match first {
        '[' => (FileFormat::JsonArray, array_rows(&path_buf, text)?),
        '{' => (FileFormat::JsonLines, json_lines_rows(&path_buf, text)?),
        _ => {
            // Not an array or object: report what the JSON parser says, or the shape found.
            return Err(match serde_json::from_str::<Value>(text) {
                Err(e) => json_error(&path_buf, &e),
                Ok(v) => DataError::WrongShape {
                    path: path_buf,
                    found: describe(&v),
                },
            });
        }
    };
    let mut dataset = validate_rows(path_buf, format, rows)?;
    dataset.sha256 = sha256;
    Ok(dataset)
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One row before validation: its parsed value (or parse problem) and line.
struct RawRow {
    line: Option<usize>,
    value: Result<Value, RowProblem>,
}

fn array_rows(path: &Path, text: &str) -> Result<Vec<RawRow>, DataError> {
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(path, &e))?;
    match value {
        Value::Array(items) => Ok(items
            .into_iter()
            .map(|v| RawRow {
                line: None,
                value: Ok(v),
            })
            .collect()),
        other => Err(DataError::WrongShape {
            path: path.to_path_buf(),
            found: describe(&other),
        }),
    }
}

fn json_lines_rows(path: &Path, text: &str) -> Result<Vec<RawRow>, DataError> {
    let non_empty_lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if non_empty_lines > 1 {
        // A pretty-printed single object also starts with `{`: tell it apart from JSON lines.
        if let Ok(Value::Object(_)) = serde_json::from_str::<Value>(text) {
            return Err(DataError::WrongShape {
                path: path.to_path_buf(),
                found: "one JSON object spread over several lines (not an array, not JSON lines)"
                    .into(),
            });
        }
    }
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| RawRow {
            line: Some(i + 1),
            value: serde_json::from_str::<Value>(l).map_err(|e| RowProblem::InvalidJson {
                column: e.column(),
                message: strip_position(&e),
            }),
        })
        .collect();
    Ok(rows)
}

fn validate_rows(
    path: PathBuf,
    format: FileFormat,
    rows: Vec<RawRow>,
) -> Result<Dataset, DataError> {
    let mut report = ValidationReport {
        total_rows: rows.len(),
        ..Default::default()
    };
    let mut key_set: Option<KeySet> = None;
    let mut triplets = Vec::with_capacity(rows.len());
    let mut source_rows = Vec::with_capacity(rows.len());
    let mut source_lines = Vec::with_capacity(rows.len());
    for (index, row) in rows.into_iter().enumerate() {
        match row.value.and_then(|v| check_row(&v, &mut key_set)) {
            Ok(ts) => {
                source_rows.extend(std::iter::repeat_n(index, ts.len()));
                source_lines.extend(std::iter::repeat_n(row.line, ts.len()));
                triplets.extend(ts);
            }
            Err(problem) => report.skipped.push(SkippedRow {
                index,
                line: row.line,
                problem,
            }),
        }
    }
    if triplets.is_empty() {
        return Err(DataError::NoValidRows {
            path,
            rows: report.total_rows,
            first_problem: report.skipped.first().map(|s| s.to_string()),
        });
    }
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for (t, &index) in triplets.iter().zip(&source_rows) {
        if t.pos == t.negative {
            report
                .warnings
                .push(QualityWarning::PosEqualsNegative { index });
        }
        let key = (t.query.as_str(), t.pos.as_str(), t.negative.as_str());
        if let Some(&first_index) = seen.get(&key) {
            report
                .warnings
                .push(QualityWarning::DuplicateTriplet { index, first_index });
        } else {
            seen.insert(key, index);
        }
    }
    Ok(Dataset {
        path,
        format,
        key_set: key_set.unwrap_or(KeySet::QueryPosNegative),
        triplets,
        source_rows,
        source_lines,
        sha256: String::new(),
        report,
    })
}

/// Checks one row; the first row that names a key set fixes it for the file. A row with
/// `negative_1`, `negative_2`, … instead of `negative` (sentence-transformers' n-tuples, as
/// `tripletlab mine --format n-tuple` writes them) gives one triplet per negative.
fn check_row(value: &Value, key_set: &mut Option<KeySet>) -> Result<Vec<Triplet>, RowProblem> {
    let Value::Object(map) = value else {
        return Err(RowProblem::NotAnObject {
            found: describe(value),
        });
    };
    let row_set = if map.contains_key("query") || map.contains_key("pos") {
        Some(KeySet::QueryPosNegative)
    } else if map.contains_key("anchor") || map.contains_key("positive") {
        Some(KeySet::AnchorPositiveNegative)
    } else {
        None
    };
    let set = match (*key_set, row_set) {
        (Some(file), Some(row)) if file != row => {
            return Err(RowProblem::OtherKeySet {
                expected: file.to_string(),
            });
        }
        (Some(file), _) => file,
        (None, Some(row)) => {
            *key_set = Some(row);
            row
        }
        (None, None) => KeySet::QueryPosNegative,
    };
    let text = |key: &str| match map.get(key) {
        None => Err(RowProblem::MissingKey { key: key.into() }),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(RowProblem::EmptyText { key: key.into() })
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(RowProblem::NotAString {
            key: key.into(),
            found: describe(other),
        }),
    };
    let query = text(Field::Query.key(set))?;
    let pos = text(Field::Pos.key(set))?;
    let negatives = if !map.contains_key("negative") && map.contains_key("negative_1") {
        let mut out = Vec::new();
        for k in 1.. {
            let key = format!("negative_{k}");
            if !map.contains_key(&key) {
                break;
            }
            out.push(text(&key)?);
        }
        out
    } else {
        vec![text("negative")?]
    };
    Ok(negatives
        .into_iter()
        .map(|negative| Triplet {
            query: query.clone(),
            pos: pos.clone(),
            negative,
        })
        .collect())
}

fn json_error(path: &Path, e: &serde_json::Error) -> DataError {
    DataError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(e),
    }
}

/// serde_json appends " at line L column C"; we report the position in our own fields.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// A short name of a JSON value's type for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Dataset, DataError> {
        parse_triplets(Path::new("t.json"), s.as_bytes())
    }

    #[test]
    fn array_with_either_key_set() {
        let d = parse(r#"[{"query":"q","pos":"p","negative":"n"}]"#).unwrap();
        assert_eq!(d.format, FileFormat::JsonArray);
        assert_eq!(d.key_set, KeySet::QueryPosNegative);
        let d = parse(r#"[{"anchor":"q","positive":"p","negative":"n"}]"#).unwrap();
        let tuples = parse(
            "{\"query\":\"q\",\"pos\":\"p\",\"negative_1\":\"a\",\"negative_2\":\"b\"}\n\
             {\"query\":\"r\",\"pos\":\"p\",\"negative_1\":\"c\",\"negative_2\":7}\n\
             {\"query\":\"s\",\"pos\":\"p\",\"negative_1\":\"d\"}\n",
        )
        .unwrap();
        let negs: Vec<&str> = tuples
            .triplets
            .iter()
            .map(|t| t.negative.as_str())
            .collect();
        assert_eq!(
            negs,
            ["a", "b", "d"],
            "n-tuple rows give one triplet per negative"
        );
        assert_eq!(tuples.source_rows, [0, 0, 2]);
        assert!(tuples.report.skipped[0].to_string().contains("negative_2"));
        assert_eq!(d.key_set, KeySet::AnchorPositiveNegative);
        assert_eq!(
            d.triplets[0],
            Triplet {
                query: "q".into(),
                pos: "p".into(),
                negative: "n".into()
            }
        );
    }

    #[test]
    fn json_lines_detected_from_content_and_bad_line_skipped() {
        let d = parse("{\"query\":\"q\",\"pos\":\"p\",\"negative\":\"n\"}\n\n{oops\n{\"query\":\"q2\",\"pos\":\"p\",\"negative\":\"n\"}\n").unwrap();
        assert_eq!(d.format, FileFormat::JsonLines);
        assert_eq!(d.len(), 2);
        assert_eq!(d.report.skipped.len(), 1);
        assert_eq!(d.report.skipped[0].index, 1);
        assert_eq!(d.report.skipped[0].line, Some(3));
        assert!(matches!(
            d.report.skipped[0].problem,
            RowProblem::InvalidJson { .. }
        ));
    }

    #[test]
    fn row_problems_name_row_and_field() {
        let d = parse(
            r#"[{"query":"q","pos":"p","negative":"n"},
                {"query":"q","negative":"n"},
                {"query":1,"pos":"p","negative":"n"},
                {"query":"q","pos":"  ","negative":"n"},
                "text",
                {"anchor":"q","positive":"p","negative":"n"}]"#,
        )
        .unwrap();
        let problems: Vec<_> = d
            .report
            .skipped
            .iter()
            .map(|s| (s.index, s.problem.clone()))
            .collect();
        assert_eq!(
            problems,
            vec![
                (1, RowProblem::MissingKey { key: "pos".into() }),
                (
                    2,
                    RowProblem::NotAString {
                        key: "query".into(),
                        found: "a number".into()
                    }
                ),
                (3, RowProblem::EmptyText { key: "pos".into() }),
                (
                    4,
                    RowProblem::NotAnObject {
                        found: "a string".into()
                    }
                ),
                (
                    5,
                    RowProblem::OtherKeySet {
                        expected: KeySet::QueryPosNegative.to_string()
                    }
                ),
            ]
        );
    }

    /// One of a key set's names is enough to know the set: a row without its query (or anchor)
    /// is told it lacks that key; the report counts every row, skipped ones too.
    #[test]
    fn a_row_missing_its_first_key_names_it() {
        for (text, key) in [
            (
                r#"[{"query":"q","pos":"p","negative":"n"}, {"pos":"p","negative":"n"}]"#,
                "query",
            ),
            (
                r#"[{"anchor":"q","positive":"p","negative":"n"}, {"positive":"p","negative":"n"}]"#,
                "anchor",
            ),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.report.total_rows, 2);
            assert_eq!(d.len(), 1);
            assert_eq!(
                d.report.skipped[0].problem,
                RowProblem::MissingKey { key: key.into() }
            );
        }
    }

    /// Either key of a set's first two names the set: a first row with only `pos` (or only
    /// `positive`) fixes the file's set, so a later row in the other set is refused.
    #[test]
    fn a_first_row_with_one_of_its_keys_fixes_the_key_set() {
        for (text, missing, expected) in [
            (
                r#"[{"pos":"p","negative":"n"}, {"anchor":"q","positive":"p","negative":"n"},
                    {"query":"q","pos":"p","negative":"n"}]"#,
                "query",
                "{query, pos, negative}",
            ),
            (
                r#"[{"positive":"p","negative":"n"}, {"query":"q","pos":"p","negative":"n"},
                    {"anchor":"q","positive":"p","negative":"n"}]"#,
                "anchor",
                "{anchor, positive, negative}",
            ),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.len(), 1, "{text}");
            let skipped: Vec<usize> = d.report.skipped.iter().map(|s| s.index).collect();
            assert_eq!(skipped, [0, 1], "{text}");
            assert_eq!(
                d.report.skipped[0].problem,
                RowProblem::MissingKey {
                    key: missing.into()
                }
            );
            assert_eq!(
                d.report.skipped[1].problem,
                RowProblem::OtherKeySet {
                    expected: expected.into()
                }
            );
        }
    }

    /// `negative_1..n` are read only when there is no `negative`; a row with neither lacks its
    /// negative (it is not dropped in silence).
    #[test]
    fn n_tuple_columns_only_without_a_negative() {
        let d = parse(
            r#"[{"query":"q","pos":"p","negative":"n","negative_1":"m"},
                {"query":"q","pos":"p"},
                {"query":"q2","pos":"p","negative_1":"a","negative_2":"b"}]"#,
        )
        .unwrap();
        let negs: Vec<&str> = d.triplets.iter().map(|t| t.negative.as_str()).collect();
        assert_eq!(negs, ["n", "a", "b"]);
        assert_eq!(
            d.report.skipped[0].problem,
            RowProblem::MissingKey {
                key: "negative".into()
            }
        );
    }

    /// JSON errors keep serde's message without its position, which has fields of its own.
    #[test]
    fn json_errors_carry_the_message_without_the_position() {
        match parse("[{\"query\": }]") {
            Err(DataError::Json {
                message, line: 1, ..
            }) => {
                assert!(message.starts_with("expected value"), "{message}");
                assert!(!message.contains(" at line "), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_level_errors() {
        assert!(matches!(parse("  \n"), Err(DataError::Empty { .. })));
        assert!(matches!(
            parse("[]"),
            Err(DataError::NoValidRows { rows: 0, .. })
        ));
        assert!(matches!(parse("\"x\""), Err(DataError::WrongShape { .. })));
        match parse("[{\"query\": \"q\",\n  \"pos\": }]") {
            Err(DataError::Json { line, column, .. }) => assert_eq!((line, column), (2, 10)),
            other => panic!("{other:?}"),
        }
        match parse("query,pos,negative\na,b,c\n") {
            Err(DataError::Json {
                line: 1, column: 1, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("{\n \"query\": \"q\", \"pos\": \"p\", \"negative\": \"n\"\n}"),
            Err(DataError::WrongShape { .. })
        ));
        let err = parse_triplets(Path::new("x"), &[0xFF, 0xFE, b'[', 0]).unwrap_err();
        assert!(err.to_string().contains("UTF-16"));
        let err = parse_triplets(Path::new("x"), b"[\"a\xC3\x28\"]").unwrap_err();
        assert!(matches!(err, DataError::NotUtf8 { .. }), "{err}");
    }

    /// The limit is inclusive: a file of exactly the limit is read, one byte more is refused.
    #[test]
    fn a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten.json");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_unchanged(&path, 10, &mut || {}).unwrap().len(), 10);
        let err = read_unchanged(&path, 9, &mut || {}).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooLarge {
                    size_bytes: 10,
                    limit_bytes: 9,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A file swapped by a rename for one of the same size and time stamp is noticed by its
    /// identity (device and inode) alone.
    #[cfg(unix)]
    #[test]
    fn a_file_swapped_for_a_twin_of_the_same_size_and_time_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        let twin = dir.path().join("twin.json");
        std::fs::write(&path, b"[1]").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let err = read_unchanged(&path, 100, &mut || {
            std::fs::write(&twin, b"[2]").unwrap();
            let f = std::fs::File::options().write(true).open(&twin).unwrap();
            f.set_modified(mtime).unwrap();
            std::fs::rename(&twin, &path).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(err, DataError::ChangedWhileReading { .. }),
            "{err}"
        );
    }

    /// Invalid UTF-8 is located by byte and line (1-based).
    #[test]
    fn invalid_utf8_names_its_byte_and_line() {
        let err = parse_triplets(Path::new("x.json"), b"[\n{}\n\xff]").unwrap_err();
        assert!(err.to_string().contains("at byte 5 (line 3)"), "{err}");
    }

    /// A JSON-lines file of one row is one triplet, not "one object spread over lines".
    #[test]
    fn a_json_lines_file_of_one_row_loads() {
        let one = br#"{"query": "q", "pos": "p", "negative": "n"}
"#;
        let data = parse_triplets(Path::new("one.jsonl"), one).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data.format, FileFormat::JsonLines);
    }

    /// The data hash the run records store is SHA-256 in lowercase hex.
    #[test]
    fn the_data_hash_is_sha256_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_file_changed_while_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("tl-changed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("growing.jsonl");
        let line = "{\"query\": \"q\", \"pos\": \"p\", \"negative\": \"n\"}\n";
        std::fs::write(&path, line).unwrap();
        assert_eq!(
            read_unchanged(&path, MAX_FILE_BYTES, &mut || {}).unwrap(),
            line.as_bytes()
        );
        let append = || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
        };
        let err = read_unchanged(&path, MAX_FILE_BYTES, &mut || append()).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was being read"),
            "{err}"
        );
        // Replaced by a new file of the same size (the way pipelines write atomically).
        let other = dir.join("other.jsonl");
        let err = read_unchanged(&path, MAX_FILE_BYTES, &mut || {
            std::fs::write(&other, line.replace("\"q\"", "\"r\"").repeat(2)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::rename(&other, &path).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(err, DataError::ChangedWhileReading { .. }),
            "{err}"
        );
        assert_eq!(load_triplets(&path).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_fifos_and_files_over_the_limit_are_refused_without_reading_them() {
        // /dev/zero never ends and reports a size of 0: refused before any byte is read.
        if Path::new("/dev/zero").exists() {
            let err = load_triplets(Path::new("/dev/zero")).unwrap_err();
            assert!(matches!(err, DataError::NotRegular { .. }), "{err}");
            assert!(err.to_string().contains("character device"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jsonl");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            // Opening a FIFO without a writer would block: the loader must answer at once.
            let (tx, rx) = std::sync::mpsc::channel();
            let f = fifo.clone();
            std::thread::spawn(move || tx.send(load_triplets(&f).unwrap_err().to_string()));
            let msg = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("loading a FIFO blocked");
            assert!(msg.contains("FIFO") && msg.contains("pipe.jsonl"), "{msg}");
        }
        // A (sparse) file one byte over the public 1 GiB limit: refused by load_triplets itself,
        // before reading (a read would take seconds and a GiB of memory).
        let huge = dir.path().join("huge.jsonl");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let start = std::time::Instant::now();
        let err = load_triplets(&huge).unwrap_err();
        assert!(
            matches!(err, DataError::TooLarge { limit_bytes, .. } if limit_bytes == MAX_FILE_BYTES),
            "{err}"
        );
        assert!(err.to_string().contains("huge.jsonl"), "{err}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "it was read"
        );
        let big = dir.path().join("big.jsonl");
        std::fs::write(&big, "x".repeat(100)).unwrap();
        let err = read_unchanged(&big, 50, &mut || {}).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooLarge {
                    limit_bytes: 50,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bom_is_accepted() {
        let mut bytes = vec![0xEF, 0xBB, 0xBF];
        bytes.extend_from_slice(br#"[{"query":"q","pos":"p","negative":"n"}]"#);
        assert_eq!(parse_triplets(Path::new("x"), &bytes).unwrap().len(), 1);
    }

    #[test]
    fn quality_warnings() {
        let d = parse(
            r#"[{"query":"q","pos":"p","negative":"p"},
                {"query":"q","pos":"a","negative":"b"},
                {"query":"q","pos":"a","negative":"b"}]"#,
        )
        .unwrap();
        assert_eq!(
            d.report.warnings,
            vec![
                QualityWarning::PosEqualsNegative { index: 0 },
                QualityWarning::DuplicateTriplet {
                    index: 2,
                    first_index: 1
                },
            ]
        );
    }
}
