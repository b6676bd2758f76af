//! Drawing: the top bar (file, tabs), the model sidebar, the status bar with notifications, and
//! the central panel of the selected tab. Panels read state and push commands; they never block.

mod compare;
mod data;
mod finetune;
mod heatmap;
mod inspect;
mod metrics;
mod model;

use eframe::egui::{self, Color32, RichText};

use super::app::{App, Command, JobKind, Level, Tab};
use crate::core::jobs::Progress;

/// Draws the whole window.
pub fn draw(app: &mut App, ui: &mut egui::Ui) {
    egui::Panel::top("top_bar").show(ui, |ui| top_bar(app, ui));
    egui::Panel::bottom("status_bar").show(ui, |ui| status_bar(app, ui));
    egui::Panel::left("model_panel")
        .resizable(true)
        .default_size(300.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| model::show(app, ui));
        });
    egui::CentralPanel::default().show(ui, |ui| match app.tab {
        Tab::Data => data::show(app, ui),
        Tab::Metrics => metrics::show(app, ui),
        Tab::Heatmap => heatmap::show(app, ui),
        Tab::FineTune => finetune::show(app, ui),
        Tab::Compare => compare::show(app, ui),
        Tab::Inspect => inspect::show(app, ui),
    });
}

fn top_bar(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("tripletlab");
        ui.separator();
        if ui.button("Open...").clicked() {
            app.commands
                .push(Command::Browse(super::app::DialogTarget::DataFile));
        }
        ui.menu_button("Recent", |ui| {
            if app.settings.recent_files.is_empty() {
                ui.label("No recent files");
            }
            for path in app.settings.recent_files.clone() {
                if ui.button(path.display().to_string()).clicked() {
                    app.commands.push(Command::OpenFile(path));
                    ui.close();
                }
            }
        });
        ui.separator();
        for tab in Tab::ALL {
            if ui.selectable_label(app.tab == tab, tab.label()).clicked() {
                app.commands.push(Command::ShowTab(tab));
            }
        }
        ui.separator();
        match &app.dataset {
            Some(d) => ui.label(format!("{} ({} triplets)", d.path.display(), d.len())),
            None if app.is_running(JobKind::Load) => ui.label("Loading..."),
            None => ui.label("No file open: Open... or drop a .json/.jsonl file here"),
        };
    });
}

fn status_bar(app: &mut App, ui: &mut egui::Ui) {
    let mut dismiss = None;
    for (i, n) in app.notifications.iter().enumerate().rev().take(3) {
        ui.horizontal(|ui| {
            let (icon, color) = match n.level {
                Level::Info => ("Info:", ui.visuals().text_color()),
                Level::Warning => ("Warning:", Color32::from_rgb(220, 160, 40)),
                Level::Error => ("Error:", Color32::from_rgb(220, 60, 60)),
            };
            if ui.small_button("Dismiss").clicked() {
                dismiss = Some(i);
            }
            ui.label(RichText::new(format!("{icon} {}", n.text)).color(color));
        });
    }
    if let Some(i) = dismiss {
        app.commands.push(Command::Dismiss(i));
    }
    ui.horizontal(|ui| {
        let n = app.frame_ms.len().max(1) as f32;
        let mean = app.frame_ms.iter().sum::<f32>() / n;
        let max = app.frame_ms.iter().copied().fold(0.0, f32::max);
        ui.weak(format!(
            "UI frame {mean:.1} ms mean, {max:.1} ms max (last {} frames)",
            app.frame_ms.len()
        ));
        if app.is_busy() {
            ui.spinner();
        }
    });
}

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
pub(crate) fn needs_embedding(app: &mut App, ui: &mut egui::Ui) {
    ui.vertical_centered(|ui| {
        ui.add_space(40.0);
        if app.dataset.is_none() {
            ui.label("Open a triplet file to start.");
        } else if app.is_running(JobKind::Embed) {
            ui.label("Embedding...");
        } else {
            ui.label("Embed the triplets with the model on the left to see this panel.");
            if ui.button("Embed now").clicked() {
                app.commands.push(Command::StartEmbed);
            }
        }
    });
}
