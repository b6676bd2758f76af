//! The core layer uses no UI or command-line crate.

#[test]
fn core_does_not_use_ui_crates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut stack = vec![root];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for krate in ["egui", "eframe", "rfd", "clap", "indicatif", "anyhow"] {
                if text.contains(&format!("{krate}::")) || text.contains(&format!("use {krate}")) {
                    offenders.push(format!("{} uses {krate}", path.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
