//! The notebook's heatmap: a 50×50 window of a cosine matrix with its colour legend (the shared
//! widget in `widgets::heatmap`); a click on a cell opens its triplet in the inspector.

use eframe::egui;

use crate::gui::app::{Commands, HeatmapState, View};
use crate::gui::widgets::heatmap::{controls, draw_window, legend, value_range, window};

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, view: &View, h: &mut HeatmapState, cmds: &mut Commands) {
    let (Some(eval), Some(data)) = (view.zero_shot, view.dataset) else {
        super::needs_embedding(ui, view, cmds);
        return;
    };
    ui.heading(format!("Cosine similarity, {}", eval.model_label));
    controls(ui, h, eval);
    let (kind, row0, col0) = (h.view, h.row0, h.col0);
    let entry = window(
        &mut h.cache,
        &mut h.windows_computed,
        eval,
        false,
        kind,
        row0,
        col0,
    );
    let scale = value_range(&entry.values);
    let side = (ui.available_height() - 40.0).clamp(200.0, 700.0);
    let mut clicked = None;
    ui.horizontal(|ui| {
        clicked = draw_window(ui, entry, data, kind, scale, side);
        legend(ui, scale, side * 0.8);
    });
    if let Some(c) = clicked {
        cmds.push(c);
    }
}
