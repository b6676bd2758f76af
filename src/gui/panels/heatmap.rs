//! The notebook's heatmap: a window of a cosine matrix with index ticks, role bands and a colour
//! bar (the shared widget in `widgets::heatmap`); a click on a cell opens its triplet in the
//! inspector; the window can be saved as a PNG.

use eframe::egui;

use crate::gui::app::{Command, Commands, HeatmapState, View};
use crate::gui::plots::colormap;
use crate::gui::widgets::heatmap::{
    band_key, controls, draw_window, legend, value_range, viridis_rgb, window, window_png,
};

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, view: &View, h: &mut HeatmapState, cmds: &mut Commands) {
    let (Some(eval), Some(data)) = (view.zero_shot, view.dataset) else {
        super::needs_embedding(ui, view, cmds);
        return;
    };
    ui.heading(format!("Cosine similarity, {}", eval.model_label));
    controls(ui, h, eval);
    let (kind, row0, col0, skip) = (h.view, h.row0, h.col0, h.skip_diagonal);
    let entry = window(
        &mut h.cache,
        &mut h.windows_computed,
        eval,
        false,
        kind,
        row0,
        col0,
    );
    let scale = value_range(entry, skip);
    ui.horizontal_wrapped(|ui| {
        band_key(ui, kind);
        if ui.button("Save PNG...").clicked() {
            let png = window_png(
                &entry.values,
                entry.rows,
                entry.cols,
                (kind, row0, col0),
                scale,
                viridis_rgb,
            );
            cmds.push(Command::SavePng(png));
        }
    });
    let side = (ui.available_height() - 50.0)
        .min(ui.available_width() - 140.0)
        .clamp(150.0, 700.0);
    let mut clicked = None;
    egui::ScrollArea::both()
        .id_salt("heatmap_area")
        .show(ui, |ui| {
            ui.horizontal_top(|ui| {
                clicked = draw_window(ui, entry, data, scale, side);
                legend(ui, scale, side, colormap, "cosine");
            });
        });
    if let Some(c) = clicked {
        cmds.push(c);
    }
}
