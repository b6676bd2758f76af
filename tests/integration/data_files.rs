//! Loading real and broken triplet files from disk.

use tripletlab::core::data::{load_triplets, DataError, FileFormat};

use crate::common::fixture;

#[test]
fn dev_fixture_loads_clean() {
    let d = load_triplets(&fixture("patents-dev.json")).unwrap();
    assert_eq!(d.len(), 500);
    assert_eq!(d.format, FileFormat::JsonArray);
    assert!(d.report.skipped.is_empty());
}

#[test]
fn missing_file_and_directory_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = load_triplets(&missing).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("nope.json"), "{err}");
    let err = load_triplets(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::IsDirectory { .. }), "{err}");
}

#[test]
fn jsonl_with_anchor_keys_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    std::fs::write(
        &p,
        "{\"anchor\":\"a\",\"positive\":\"b\",\"negative\":\"c\"}\n{\"anchor\":\"d\",\"positive\":\"e\",\"negative\":\"f\"}\n",
    )
    .unwrap();
    let d = load_triplets(&p).unwrap();
    assert_eq!((d.len(), d.format), (2, FileFormat::JsonLines));
}

#[test]
fn bad_json_reports_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    std::fs::write(&p, "[\n {\"query\": \"q\", \"pos\": \"p\", \"negative\": \"n\"},\n {\"query\": \"q\" \"pos\": 1}\n]").unwrap();
    let err = load_triplets(&p).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.json:3:"), "{msg}");
}
