//! Questions drawn over the window: the path field shown when no file dialog can open (with
//! completion from the folder typed so far), and "close while fine-tuning?".

use std::path::{Path, PathBuf};

use eframe::egui;

use crate::gui::app::{CloseChoice, Command, Commands, LayoutState, View};

/// Draws whichever question is open.
pub(super) fn show(
    ctx: &egui::Context,
    view: &View,
    layout: &mut LayoutState,
    cmds: &mut Commands,
) {
    if layout.close_prompt {
        close_question(ctx, view, cmds);
    }
    if let Some(prompt) = &mut layout.path_prompt {
        let mut open = true;
        egui::Window::new("Type a path")
            .collapsible(false)
            .resizable(true)
            .default_width(520.0)
            .open(&mut open)
            .show(ctx, |ui| {
                ui.add(egui::Label::new(&prompt.reason).wrap());
                let l = ui.label("Path");
                let field = ui
                    .add(
                        egui::TextEdit::singleline(&mut prompt.text)
                            .desired_width(f32::INFINITY)
                            .hint_text("/path/to/file"),
                    )
                    .labelled_by(l.id);
                let matches = completions(&prompt.text, 8);
                // Tab completes the part every match shares.
                if field.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Tab)) {
                    if let Some(common) = common_prefix(&matches) {
                        prompt.text = common;
                    }
                }
                for m in &matches {
                    if ui.small_button(m).clicked() {
                        prompt.text = m.clone();
                    }
                }
                let path = PathBuf::from(prompt.text.trim());
                ui.horizontal(|ui| {
                    let ok = !prompt.text.trim().is_empty();
                    let submitted =
                        field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    if ui
                        .add_enabled(ok, egui::Button::new("Use this path"))
                        .clicked()
                        || (ok && submitted)
                    {
                        cmds.push(Command::ChosePath(prompt.target, path.clone()));
                    }
                    if ui.button("Cancel").clicked() {
                        cmds.push(Command::CancelPathPrompt);
                    }
                });
            });
        if !open {
            cmds.push(Command::CancelPathPrompt);
        }
    }
}

fn close_question(ctx: &egui::Context, view: &View, cmds: &mut Commands) {
    egui::Modal::new(egui::Id::unique("close_during_fine_tune")).show(ctx, |ui| {
        ui.set_max_width(460.0);
        ui.heading("Fine-tuning is running");
        let log = view.train_log;
        ui.add(
            egui::Label::new(format!(
                "Step {} of {} is done. Closing now stops the run at the end of its current step and saves its best checkpoint so far.",
                log.steps.last().map_or(0, |s| s.step),
                log.total_steps
            ))
            .wrap(),
        );
        ui.horizontal_wrapped(|ui| {
            if ui.button("Stop, save the best and close").clicked() {
                cmds.push(Command::CloseAnswer(CloseChoice::StopAndSave));
            }
            if ui.button("Keep training, close when saved").clicked() {
                cmds.push(Command::CloseAnswer(CloseChoice::FinishThenClose));
            }
            if ui.button("Cancel").clicked() {
                cmds.push(Command::CloseAnswer(CloseChoice::Cancel));
            }
        });
    });
}

/// Entries of the typed path's folder whose names start with what follows its last `/`
/// (folders end with `/`), sorted, at most `n`.
pub(crate) fn completions(typed: &str, n: usize) -> Vec<String> {
    let typed = typed.trim();
    let (dir, stem) = match typed.rfind('/') {
        Some(i) => (&typed[..=i], &typed[i + 1..]),
        None => ("./", typed),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "/" } else { dir }) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(stem) || (name.starts_with('.') && !stem.starts_with('.')) {
                return None;
            }
            let folder = e.file_type().is_ok_and(|t| t.is_dir());
            let prefix = if typed.contains('/') { dir } else { "" };
            Some(format!("{prefix}{name}{}", if folder { "/" } else { "" }))
        })
        .collect();
    out.sort();
    if out.len() == 1 && Path::new(typed) == Path::new(&out[0]) {
        return Vec::new();
    }
    out.truncate(n);
    out
}

/// The longest prefix all candidates share, when it is longer than nothing.
fn common_prefix(candidates: &[String]) -> Option<String> {
    let first = candidates.first()?;
    let mut len = first.len();
    for c in &candidates[1..] {
        len = first
            .char_indices()
            .zip(c.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(len);
    }
    (len > 0).then(|| first[..len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_entries_of_the_typed_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("triplets-a.json"), "[]").unwrap();
        std::fs::write(dir.path().join("triplets-b.jsonl"), "").unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        let base = format!("{}/", dir.path().display());
        let got = completions(&format!("{base}tri"), 8);
        assert_eq!(
            got,
            [
                format!("{base}triplets-a.json"),
                format!("{base}triplets-b.jsonl")
            ]
        );
        assert_eq!(common_prefix(&got), Some(format!("{base}triplets-")));
        assert_eq!(
            completions(&format!("{base}mo"), 8),
            [format!("{base}models/")]
        );
        assert!(completions(&format!("{base}zzz"), 8).is_empty());
    }
}
