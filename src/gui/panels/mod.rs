//! Drawing: the top bar (file, tabs), the model sidebar, the status bar with notifications, and
//! the central panel of the selected tab. Panels read state and push commands; they never block.

mod compare;
mod data;
mod finetune;
mod heatmap;
mod inspect;
mod metrics;
mod mining;
mod model;
mod prompts;
mod storage;

use eframe::egui::{self, Color32, RichText};

pub(crate) use super::widgets::{
    labelled_drag, metric_label, needs_embedding, preview, progress_bar,
};

use super::app::{App, Command, Commands, JobKind, Level, Settings, Tab, View};

/// Below this window width the model sidebar starts collapsed and panels stack their parts.
pub(crate) const NARROW: f32 = 1200.0;

/// Draws the whole window: panels read the [`View`], change their own state and push commands.
pub fn draw(app: &mut App, ui: &mut egui::Ui) {
    let (view, state, mut cmds) = app.for_panels();
    let cmds = &mut cmds;
    let narrow = ui.max_rect().width() < NARROW;
    let sidebar = state.layout.model_panel.get_or_insert(!narrow);
    egui::Panel::top("top_bar").show(ui, |ui| top_bar(ui, &view, state.settings, sidebar, cmds));
    egui::Panel::bottom("status_bar").show(ui, |ui| status_bar(ui, &view, cmds));
    if *sidebar {
        egui::Panel::left("model_panel")
            .resizable(true)
            .default_size(if narrow { 240.0 } else { 300.0 })
            .size_range(180.0..=480.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .show(ui, |ui| model::show(ui, &view, state.settings, cmds));
            });
    }
    egui::CentralPanel::default().show(ui, |ui| {
        if let (Some(why), true) = (&view.stale, view.tab.shows_results()) {
            ui.horizontal_wrapped(|ui| {
                ui.add(
                    egui::Label::new(
                        RichText::new(format!("Stale: {why}"))
                            .color(Color32::from_rgb(200, 120, 20)),
                    )
                    .wrap(),
                );
                if ui.button("Embed again").clicked() {
                    cmds.push(Command::StartEmbed);
                }
            });
            ui.separator();
        }
        match view.tab {
            Tab::Data => data::show(ui, &view, cmds),
            Tab::Metrics => metrics::show(ui, &view, &mut state.settings.top_k, cmds),
            Tab::Heatmap => heatmap::show(ui, &view, state.heatmap, cmds),
            Tab::Mining => mining::show(ui, &view, state.settings, state.mining_review, cmds),
            Tab::FineTune => finetune::show(ui, &view, state.settings, state.layout, cmds),
            Tab::Compare => compare::show(ui, &view, state.heatmap, cmds),
            Tab::Storage => storage::show(ui, &view, state.settings, cmds),
            Tab::Inspect => inspect::show(ui, &view, state.inspector, cmds),
        }
    });
    prompts::show(ui.ctx(), &view, state.layout, cmds);
}

/// True when the panel being drawn is narrower than a side-by-side layout needs: its parts
/// then go one below the other.
pub(crate) fn is_narrow(ui: &egui::Ui) -> bool {
    ui.available_width() < 900.0
}

fn top_bar(
    ui: &mut egui::Ui,
    app: &View,
    settings: &Settings,
    sidebar: &mut bool,
    cmds: &mut Commands,
) {
    ui.horizontal_wrapped(|ui| {
        ui.heading("tripletlab");
        ui.toggle_value(sidebar, "Model")
            .on_hover_text("Show or hide the model settings on the left");
        ui.separator();
        if ui.button("Open...").clicked() {
            cmds.push(Command::Browse(super::app::DialogTarget::DataFile));
        }
        ui.menu_button("Recent", |ui| {
            if settings.recent_files.is_empty() {
                ui.label("No recent files");
            }
            for path in &settings.recent_files {
                if ui.button(path.display().to_string()).clicked() {
                    cmds.push(Command::OpenFile(path.clone()));
                    ui.close();
                }
            }
        });
        ui.separator();
        for tab in Tab::ALL {
            if ui.selectable_label(app.tab == tab, tab.label()).clicked() {
                cmds.push(Command::ShowTab(tab));
            }
        }
        ui.separator();
        match &app.dataset {
            Some(d) => ui
                .add(
                    egui::Label::new(format!(
                        "{} ({} triplets)",
                        d.path.file_name().map_or_else(
                            || d.path.display().to_string(),
                            |n| n.to_string_lossy().to_string()
                        ),
                        d.len()
                    ))
                    .truncate(),
                )
                .on_hover_text(d.path.display().to_string()),
            None if app.is_running(JobKind::Load) => ui.label("Loading..."),
            None => ui.label("No file open: Open... or drop a .json/.jsonl file here"),
        };
    });
}

fn status_bar(ui: &mut egui::Ui, app: &View, cmds: &mut Commands) {
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
            // Long messages (paths, causes) wrap instead of running off the window.
            ui.add(
                egui::Label::new(RichText::new(format!("{icon} {}", n.text)).color(color)).wrap(),
            );
        });
    }
    if let Some(i) = dismiss {
        cmds.push(Command::Dismiss(i));
    }
    ui.horizontal(|ui| {
        let n = app.frame_ms.len().max(1) as f32;
        let mean = app.frame_ms.iter().sum::<f32>() / n;
        let max = app.frame_ms.iter().copied().fold(0.0, f32::max);
        ui.weak(format!(
            "UI frame {mean:.1} ms mean, {max:.1} ms max (last {} frames)",
            app.frame_ms.len()
        ));
        if app.running.load || app.running.embed || app.running.fine_tune || app.running.mine {
            ui.spinner();
        }
    });
}
