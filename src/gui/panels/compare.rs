//! Zero-shot and fine-tuned side by side: metric deltas (green better, red worse, remembering that
//! lower is better for negatives in top K), the two heatmaps on one window and one colour scale,
//! overlaid margin histograms, and the flip table.

use eframe::egui::{self, Color32, RichText};

use crate::core::metrics::{flip_counts, lower_is_better, metric_keys, Flip};
use crate::gui::app::{Command, Commands, HeatmapState, View};
use crate::gui::widgets::heatmap::{controls, draw_window, legend, value_range, window};
use crate::gui::widgets::histogram::margin_histogram;

/// Colour of a change: green when better, red when worse.
pub(crate) fn delta_color(key: &str, delta: f64) -> Color32 {
    if delta.abs() < 1e-12 {
        Color32::GRAY
    } else if (delta > 0.0) != lower_is_better(key) {
        Color32::from_rgb(40, 170, 70)
    } else {
        Color32::from_rgb(220, 60, 60)
    }
}

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, app: &View, h: &mut HeatmapState, cmds: &mut Commands) {
    let (Some(before), Some(data)) = (app.zero_shot, app.dataset) else {
        super::needs_embedding(ui, app, cmds);
        return;
    };
    let Some(after) = app.fine_tuned else {
        ui.heading("Compare");
        ui.label("Fine-tune a model (Fine-tune tab) to compare it with the zero-shot model here.");
        return;
    };
    ui.heading(format!("{} vs fine-tuned", before.model_label));
    if let Some(p) = app.fine_tuned_path {
        ui.weak(format!("Fine-tuned model: {}", p.display()));
    }
    egui::ScrollArea::vertical()
        .id_salt("compare")
        .show(ui, |ui| {
            ui.columns(2, |cols| {
                egui::Grid::new("deltas")
                    .striped(true)
                    .num_columns(4)
                    .show(&mut cols[0], |ui| {
                        for h in ["metric", "zero-shot", "fine-tuned", "delta"] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for key in metric_keys() {
                            let (a, b) = (before.result.metrics[&key], after.result.metrics[&key]);
                            ui.label(super::metric_label(&key)).on_hover_text(&key);
                            ui.label(format!("{a:.4}"));
                            ui.label(format!("{b:.4}"));
                            ui.label(
                                RichText::new(format!("{:+.4}", b - a))
                                    .color(delta_color(&key, b - a)),
                            );
                            ui.end_row();
                        }
                    });
                let ui = &mut cols[1];
                ui.strong("Triplets that changed (cos(q,pos) > cos(q,neg))");
                let counts = flip_counts(&before.result.per_triplet, &after.result.per_triplet);
                egui::Grid::new("flips").striped(true).show(ui, |ui| {
                    for (f, n) in Flip::ALL.iter().zip(counts) {
                        ui.label(f.label());
                        ui.label(n.to_string());
                        if ui
                            .add_enabled(n > 0, egui::Button::new(format!("Show {}", f.label())))
                            .clicked()
                        {
                            cmds.push(Command::InspectFlips(*f));
                        }
                        ui.end_row();
                    }
                });
                margin_histogram(
                    ui,
                    &[
                        ("zero-shot", &before.result, Color32::from_rgb(80, 140, 220)),
                        ("fine-tuned", &after.result, Color32::from_rgb(230, 130, 50)),
                    ],
                );
            });
            ui.separator();
            controls(ui, h, before);
            let (view, row0, col0) = (h.view, h.row0, h.col0);
            let a = window(
                &mut h.cache,
                &mut h.windows_computed,
                before,
                false,
                view,
                row0,
                col0,
            )
            .values
            .clone();
            let b = window(
                &mut h.cache,
                &mut h.windows_computed,
                after,
                true,
                view,
                row0,
                col0,
            )
            .values
            .clone();
            let (la, ha) = value_range(&a);
            let (lb, hb) = value_range(&b);
            let scale = (la.min(lb), ha.max(hb));
            let side = (ui.available_width() / 2.0 - 60.0).clamp(150.0, 500.0);
            let mut clicked = None;
            ui.horizontal(|ui| {
                for (fine, label, eval) in
                    [(false, "zero-shot", before), (true, "fine-tuned", after)]
                {
                    ui.vertical(|ui| {
                        ui.label(label);
                        let entry = window(
                            &mut h.cache,
                            &mut h.windows_computed,
                            eval,
                            fine,
                            view,
                            row0,
                            col0,
                        );
                        if let Some(c) = draw_window(ui, entry, data, view, scale, side) {
                            clicked = Some(c);
                        }
                    });
                }
                legend(ui, scale, side * 0.8);
            });
            if let Some(c) = clicked {
                cmds.push(c);
            }
        });
}
