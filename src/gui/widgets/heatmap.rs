//! The heatmap window shared by the Heatmap and Compare panels: a 50×50 window of a cosine matrix
//! (documents in triplet order pos₀, neg₀, pos₁, neg₁, ...; or queries × queries; or queries ×
//! documents), computed only when visible and cached, drawn as one texture with a colour legend;
//! hover shows both texts, a click asks to inspect the row's triplet.

use eframe::egui::{self, Color32, Sense, TextureOptions, Vec2};

use crate::core::data::Dataset;
use crate::core::embeddings::Embeddings;
use crate::core::metrics::similarity_window;
use crate::core::pipeline::Evaluation;
use crate::gui::app::{CachedWindow, Command, HeatmapState, HeatmapView};
use crate::gui::plots::{colormap, heatmap_image};

/// Side of the window, in cells.
pub const WINDOW: usize = 50;
/// Windows kept in the cache.
const CACHE_SIZE: usize = 8;

/// Rows and columns of a view.
fn matrices(eval: &Evaluation, view: HeatmapView) -> (&Embeddings, &Embeddings) {
    match view {
        HeatmapView::DocDoc => (&eval.doc_rows, &eval.doc_rows),
        HeatmapView::QueryQuery => (&eval.query_rows, &eval.query_rows),
        HeatmapView::QueryDoc => (&eval.query_rows, &eval.doc_rows),
    }
}

/// The triplet and text of row `i` of a view's row or column axis.
pub(crate) fn axis_text(d: &Dataset, view: HeatmapView, is_row: bool, i: usize) -> (usize, String) {
    let docs = matches!(view, HeatmapView::DocDoc) || (view == HeatmapView::QueryDoc && !is_row);
    if docs {
        let t = &d.triplets[i / 2];
        if i.is_multiple_of(2) {
            (i / 2, format!("pos of triplet {}: {}", i / 2, t.pos))
        } else {
            (
                i / 2,
                format!("negative of triplet {}: {}", i / 2, t.negative),
            )
        }
    } else {
        (i, format!("query of triplet {i}: {}", d.triplets[i].query))
    }
}

/// Computes (or takes from the cache) the window of a view at (row0, col0).
pub(crate) fn window<'a>(
    cache: &'a mut Vec<CachedWindow>,
    computed: &mut usize,
    eval: &Evaluation,
    fine_tuned: bool,
    view: HeatmapView,
    row0: usize,
    col0: usize,
) -> &'a mut CachedWindow {
    let key = (fine_tuned, view, row0, col0);
    if let Some(i) = cache.iter().position(|c| c.key == key) {
        let entry = cache.remove(i);
        cache.push(entry);
    } else {
        let (a, b) = matrices(eval, view);
        let rows = WINDOW.min(a.rows().saturating_sub(row0));
        let cols = WINDOW.min(b.rows().saturating_sub(col0));
        let values = similarity_window(a, row0..row0 + rows, b, col0..col0 + cols);
        *computed += 1;
        cache.push(CachedWindow {
            key,
            values,
            rows,
            cols,
            scale: (0.0, 0.0),
            texture: None,
        });
        if cache.len() > CACHE_SIZE {
            cache.remove(0);
        }
    }
    cache.last_mut().expect("just pushed")
}

/// Min and max of a window's values.
pub(crate) fn value_range(values: &[f32]) -> (f32, f32) {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if lo.is_finite() && hi.is_finite() {
        (lo, hi.max(lo + 1e-6))
    } else {
        (0.0, 1.0)
    }
}

/// Draws a window with a given colour scale; returns a command when a cell is clicked.
pub(crate) fn draw_window(
    ui: &mut egui::Ui,
    entry: &mut CachedWindow,
    data: &Dataset,
    view: HeatmapView,
    scale: (f32, f32),
    side_px: f32,
) -> Option<Command> {
    let (row0, col0) = (entry.key.2, entry.key.3);
    if entry.texture.is_none() || entry.scale != scale {
        let image = heatmap_image(&entry.values, entry.rows, entry.cols, scale.0, scale.1);
        let name = format!("heatmap-{:?}", entry.key);
        entry.texture = Some(ui.ctx().load_texture(name, image, TextureOptions::NEAREST));
        entry.scale = scale;
    }
    let texture = entry.texture.as_ref().expect("just loaded");
    let cell = side_px / WINDOW as f32;
    let size = Vec2::new(cell * entry.cols as f32, cell * entry.rows as f32);
    let response = ui.add(
        egui::Image::new((texture.id(), size))
            .alt_text(format!(
                "Heatmap window: rows {row0} to {}, columns {col0} to {}",
                row0 + entry.rows.saturating_sub(1),
                col0 + entry.cols.saturating_sub(1)
            ))
            .sense(Sense::click()),
    );
    let pos = response.hover_pos()?;
    let local = pos - response.rect.min;
    let (r, c) = ((local.y / cell) as usize, (local.x / cell) as usize);
    if r >= entry.rows || c >= entry.cols {
        return None;
    }
    let value = entry.values[r * entry.cols + c];
    let (row_triplet, row_text) = axis_text(data, view, true, row0 + r);
    let (_, col_text) = axis_text(data, view, false, col0 + c);
    response.on_hover_ui_at_pointer(|ui| {
        ui.set_max_width(480.0);
        ui.strong(format!("cosine {value:.4}"));
        ui.label(format!(
            "row {}: {}",
            row0 + r,
            super::preview(&row_text, 300)
        ));
        ui.label(format!(
            "column {}: {}",
            col0 + c,
            super::preview(&col_text, 300)
        ));
        ui.weak("Click to inspect the row's triplet");
    });
    ui.input(|i| i.pointer.primary_clicked())
        .then_some(Command::Inspect(row_triplet))
}

/// A vertical colour legend from lo (bottom) to hi (top).
pub(crate) fn legend(ui: &mut egui::Ui, scale: (f32, f32), height: f32) {
    ui.vertical(|ui| {
        ui.label(format!("{:.3}", scale.1));
        let (rect, _) = ui.allocate_exact_size(Vec2::new(24.0, height), Sense::hover());
        let steps = 64;
        for s in 0..steps {
            let t = 1.0 - s as f32 / steps as f32;
            let y0 = rect.top() + rect.height() * s as f32 / steps as f32;
            let y1 = rect.top() + rect.height() * (s + 1) as f32 / steps as f32;
            let r = egui::Rect::from_min_max(
                egui::pos2(rect.left(), y0),
                egui::pos2(rect.right(), y1 + 0.5),
            );
            ui.painter().rect_filled(r, 0.0, colormap(t));
        }
        ui.painter().rect_stroke(
            rect,
            0.0,
            egui::Stroke::new(1.0, Color32::GRAY),
            egui::StrokeKind::Inside,
        );
        ui.label(format!("{:.3}", scale.0));
        ui.weak("cosine");
    });
}

/// View selector and window position controls.
pub(crate) fn controls(ui: &mut egui::Ui, h: &mut HeatmapState, eval: &Evaluation) {
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("Matrix")
            .selected_text(view_name(h.view))
            .show_ui(ui, |ui| {
                for v in [
                    HeatmapView::DocDoc,
                    HeatmapView::QueryQuery,
                    HeatmapView::QueryDoc,
                ] {
                    ui.selectable_value(&mut h.view, v, view_name(v));
                }
            });
        let (a, b) = matrices(eval, h.view);
        let max_row = a.rows().saturating_sub(WINDOW);
        let max_col = b.rows().saturating_sub(WINDOW);
        h.row0 = h.row0.min(max_row);
        h.col0 = h.col0.min(max_col);
        let l = ui.label("First row");
        ui.add(
            egui::DragValue::new(&mut h.row0)
                .range(0..=max_row)
                .speed(1.0),
        )
        .labelled_by(l.id);
        let l = ui.label("First column");
        ui.add(
            egui::DragValue::new(&mut h.col0)
                .range(0..=max_col)
                .speed(1.0),
        )
        .labelled_by(l.id);
        if ui.button("Previous window").clicked() {
            h.row0 = h.row0.saturating_sub(WINDOW);
            h.col0 = h.col0.saturating_sub(WINDOW);
        }
        if ui.button("Next window").clicked() {
            h.row0 = (h.row0 + WINDOW).min(max_row);
            h.col0 = (h.col0 + WINDOW).min(max_col);
        }
        ui.weak(format!("of {} x {}", a.rows(), b.rows()));
    });
}

fn view_name(v: HeatmapView) -> &'static str {
    match v {
        HeatmapView::DocDoc => "documents x documents",
        HeatmapView::QueryQuery => "queries x queries",
        HeatmapView::QueryDoc => "queries x documents",
    }
}
