//! Views shared by several panels: number fields, progress bars, text previews, the heatmap
//! window with its colour legend, and the margin histogram.

pub(crate) mod heatmap;
pub(crate) mod histogram;

use eframe::egui;

use super::app::{Command, Commands, JobKind, View};
use crate::core::jobs::Progress;

/// A number field with a label that names it (for people and for screen readers).
pub(crate) fn labelled_drag<N: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut N,
    range: std::ops::RangeInclusive<N>,
) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(egui::DragValue::new(value).range(range))
            .labelled_by(l.id)
    })
    .inner
}

/// A progress bar with rate and ETA.
pub(crate) fn progress_bar(ui: &mut egui::Ui, p: &Progress) {
    let mut text = format!("{} {}/{} {}", p.stage, p.done, p.total, p.unit);
    match p.rate_per_sec() {
        Some(r) if r >= 1.0 => text.push_str(&format!(", {r:.1} {}/s", p.unit)),
        Some(r) if r > 0.0 => text.push_str(&format!(", {:.1} s each", 1.0 / r)),
        _ => {}
    }
    if let Some(eta) = p.eta_secs() {
        text.push_str(&format!(", ETA {}", format_secs(eta)));
    }
    ui.add(egui::ProgressBar::new(p.fraction()).text(text));
}

/// `1 h 02 min`, `3 min 05 s`, `12 s`.
pub(crate) fn format_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// A short one-line preview of a long text.
pub(crate) fn preview(s: &str, chars: usize) -> String {
    let mut out: String = s.chars().take(chars).collect();
    if s.chars().count() > chars {
        out.push_str("...");
    }
    out
}

pub(crate) use crate::core::metrics::metric_label;

/// The message shown where a panel needs an evaluation that does not exist yet.
pub(crate) fn needs_embedding(ui: &mut egui::Ui, view: &View, cmds: &mut Commands) {
    ui.vertical_centered(|ui| {
        ui.add_space(40.0);
        if view.dataset.is_none() {
            ui.label("Open a triplet file to start.");
        } else if view.is_running(JobKind::Embed) {
            ui.label("Embedding...");
        } else {
            ui.label("Embed the triplets with the model on the left to see this panel.");
            if ui.button("Embed now").clicked() {
                cmds.push(Command::StartEmbed);
            }
        }
    });
}
