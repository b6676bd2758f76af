//! The heatmap window shared by the Heatmap and Compare panels: a window of a cosine matrix
//! (documents in triplet order pos₀, neg₀, pos₁, neg₁, ...; or queries × queries; or queries ×
//! documents, 25 queries against their own 50 documents so the query–positive cells run down
//! the diagonal), computed only when visible and cached, drawn as one texture framed by index
//! ticks and role bands (query / positive / negative, alternating shade per triplet), with a
//! colour bar with ticks; the diagonal of self-similarity can be left out of the colour scale.
//! Hover shows the value and both texts, a click asks to inspect the row's triplet, and the
//! window can be saved as a PNG.

use eframe::egui::{self, Align2, Color32, FontId, Rect, Sense, TextureOptions, Vec2};

use crate::core::data::Dataset;
use crate::core::embeddings::Embeddings;
use crate::core::metrics::similarity_window;
use crate::core::pipeline::Evaluation;
use crate::core::report::raster::{self, Canvas, Rgb};
use crate::gui::app::{CachedWindow, Command, HeatmapState, HeatmapView};
use crate::gui::plots::{colormap, heatmap_image};

/// Side of the window, in cells.
pub const WINDOW: usize = 50;
/// Windows kept in the cache.
const CACHE_SIZE: usize = 12;
/// Room left of and above the cells for the index ticks and the role band.
const MARGIN: Vec2 = Vec2::new(44.0, 26.0);
/// Width of a role band.
const BAND: f32 = 6.0;

/// Rows × columns of a view's window.
pub(crate) fn shape(view: HeatmapView) -> (usize, usize) {
    match view {
        HeatmapView::QueryDoc => (WINDOW / 2, WINDOW),
        _ => (WINDOW, WINDOW),
    }
}

/// Rows and columns of a view.
fn matrices(eval: &Evaluation, view: HeatmapView) -> (&Embeddings, &Embeddings) {
    match view {
        HeatmapView::DocDoc => (&eval.doc_rows, &eval.doc_rows),
        HeatmapView::QueryQuery => (&eval.query_rows, &eval.query_rows),
        HeatmapView::QueryDoc => (&eval.query_rows, &eval.doc_rows),
    }
}

/// What a row or column of a view is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AxisRole {
    /// The query of a triplet.
    Query,
    /// The positive of a triplet.
    Pos,
    /// The negative of a triplet.
    Neg,
}

/// The triplet of index `i` on a view's row or column axis, and its role.
pub(crate) fn axis_role(view: HeatmapView, is_row: bool, i: usize) -> (usize, AxisRole) {
    let docs = matches!(view, HeatmapView::DocDoc) || (view == HeatmapView::QueryDoc && !is_row);
    match (docs, i.is_multiple_of(2)) {
        (true, true) => (i / 2, AxisRole::Pos),
        (true, false) => (i / 2, AxisRole::Neg),
        (false, _) => (i, AxisRole::Query),
    }
}

/// The band colour of a role; alternate triplets are a shade lighter, so each triplet's pair of
/// documents reads as one block.
fn role_color(t: usize, role: AxisRole) -> Color32 {
    let base = match role {
        AxisRole::Query => Color32::from_rgb(70, 110, 200),
        AxisRole::Pos => Color32::from_rgb(40, 160, 80),
        AxisRole::Neg => Color32::from_rgb(210, 70, 60),
    };
    if t.is_multiple_of(2) {
        base
    } else {
        base.gamma_multiply(0.55)
    }
}

/// The triplet and text of index `i` of a view's row or column axis.
pub(crate) fn axis_text(d: &Dataset, view: HeatmapView, is_row: bool, i: usize) -> (usize, String) {
    let (t, role) = axis_role(view, is_row, i);
    let tr = &d.triplets[t];
    let (what, text) = match role {
        AxisRole::Query => ("query", &tr.query),
        AxisRole::Pos => ("positive", &tr.pos),
        AxisRole::Neg => ("negative", &tr.negative),
    };
    (
        t,
        format!("{what} of triplet {t}, {}: {text}", d.location(t)),
    )
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
        let (h, w) = shape(view);
        let rows = h.min(a.rows().saturating_sub(row0));
        let cols = w.min(b.rows().saturating_sub(col0));
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

/// True for the cells of a window that compare a text with itself.
fn on_diagonal(view: HeatmapView, row0: usize, col0: usize, r: usize, c: usize) -> bool {
    view != HeatmapView::QueryDoc && row0 + r == col0 + c
}

/// Min and max of a window's values; with `skip_diagonal`, self-similarity cells are left out
/// (they are 1.0 and would take the top of the scale from everything else).
pub(crate) fn value_range(entry: &CachedWindow, skip_diagonal: bool) -> (f32, f32) {
    let (view, row0, col0) = (entry.key.1, entry.key.2, entry.key.3);
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for r in 0..entry.rows {
        for c in 0..entry.cols {
            if skip_diagonal && on_diagonal(view, row0, col0, r, c) {
                continue;
            }
            let v = entry.values[r * entry.cols + c];
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo.is_finite() && hi.is_finite() {
        (lo, hi.max(lo + 1e-6))
    } else {
        (0.0, 1.0)
    }
}

/// Draws a window with a given colour scale, its index ticks and role bands; returns a
/// command when a cell is clicked. `side_px` is the side of the cell area.
pub(crate) fn draw_window(
    ui: &mut egui::Ui,
    entry: &mut CachedWindow,
    data: &Dataset,
    scale: (f32, f32),
    side_px: f32,
) -> Option<Command> {
    let (view, row0, col0) = (entry.key.1, entry.key.2, entry.key.3);
    if entry.texture.is_none() || entry.scale != scale {
        let image = heatmap_image(&entry.values, entry.rows, entry.cols, scale.0, scale.1);
        let name = format!("heatmap-{:?}", entry.key);
        entry.texture = Some(ui.ctx().load_texture(name, image, TextureOptions::NEAREST));
        entry.scale = scale;
    }
    let texture = entry.texture.as_ref().expect("just loaded");
    let (h, w) = shape(view);
    let cell = Vec2::new(side_px / w as f32, side_px / h as f32);
    let size = Vec2::new(cell.x * entry.cols as f32, cell.y * entry.rows as f32);
    let (outer, _) = ui.allocate_exact_size(MARGIN + Vec2::splat(side_px), Sense::hover());
    let cells = Rect::from_min_size(outer.min + MARGIN, size);
    let response = ui.put(
        cells,
        egui::Image::new((texture.id(), size))
            .alt_text(format!(
                "Heatmap window: rows {row0} to {}, columns {col0} to {}",
                row0 + entry.rows.saturating_sub(1),
                col0 + entry.cols.saturating_sub(1)
            ))
            .sense(Sense::click()),
    );
    axes(ui, cells, cell, entry, view);
    let pos = response.hover_pos()?;
    let local = pos - response.rect.min;
    let (r, c) = ((local.y / cell.y) as usize, (local.x / cell.x) as usize);
    if r >= entry.rows || c >= entry.cols {
        return None;
    }
    let value = entry.values[r * entry.cols + c];
    let (row_triplet, row_text) = axis_text(data, view, true, row0 + r);
    let (_, col_text) = axis_text(data, view, false, col0 + c);
    response.on_hover_ui_at_pointer(|ui| {
        ui.set_max_width(320.0);
        ui.strong(format!("cosine {value:.4}"));
        ui.small(format!(
            "row {}: {}",
            row0 + r,
            super::preview(&row_text, 110)
        ));
        ui.small(format!(
            "column {}: {}",
            col0 + c,
            super::preview(&col_text, 110)
        ));
        ui.weak("Click to inspect the row's triplet");
    });
    ui.input(|i| i.pointer.primary_clicked())
        .then_some(Command::Inspect(row_triplet))
}

/// Index ticks every 10 cells and the role bands along the top and the left of the cells.
fn axes(ui: &egui::Ui, cells: Rect, cell: Vec2, entry: &CachedWindow, view: HeatmapView) {
    let (row0, col0) = (entry.key.2, entry.key.3);
    let painter = ui.painter();
    let font = FontId::proportional(10.0);
    let text = ui.visuals().text_color();
    for r in 0..entry.rows {
        let (t, role) = axis_role(view, true, row0 + r);
        let y = cells.top() + r as f32 * cell.y;
        painter.rect_filled(
            Rect::from_min_max(
                egui::pos2(cells.left() - BAND - 2.0, y),
                egui::pos2(cells.left() - 2.0, y + cell.y),
            ),
            0.0,
            role_color(t, role),
        );
        if (row0 + r).is_multiple_of(10) {
            painter.text(
                egui::pos2(cells.left() - BAND - 5.0, y + cell.y / 2.0),
                Align2::RIGHT_CENTER,
                (row0 + r).to_string(),
                font.clone(),
                text,
            );
        }
    }
    for c in 0..entry.cols {
        let (t, role) = axis_role(view, false, col0 + c);
        let x = cells.left() + c as f32 * cell.x;
        painter.rect_filled(
            Rect::from_min_max(
                egui::pos2(x, cells.top() - BAND - 2.0),
                egui::pos2(x + cell.x, cells.top() - 2.0),
            ),
            0.0,
            role_color(t, role),
        );
        if (col0 + c).is_multiple_of(10) {
            painter.text(
                egui::pos2(x, cells.top() - BAND - 4.0),
                Align2::LEFT_BOTTOM,
                (col0 + c).to_string(),
                font.clone(),
                text,
            );
        }
    }
}

/// The role bands' key, on one line.
pub(crate) fn band_key(ui: &mut egui::Ui, view: HeatmapView) {
    ui.horizontal_wrapped(|ui| {
        ui.weak("Bands:");
        let roles: &[(AxisRole, &str)] = match view {
            HeatmapView::QueryQuery => &[(AxisRole::Query, "query")],
            HeatmapView::DocDoc => &[(AxisRole::Pos, "positive"), (AxisRole::Neg, "negative")],
            HeatmapView::QueryDoc => &[
                (AxisRole::Query, "query"),
                (AxisRole::Pos, "positive"),
                (AxisRole::Neg, "negative"),
            ],
        };
        for (role, name) in roles {
            let (rect, _) = ui.allocate_exact_size(Vec2::new(12.0, 12.0), Sense::hover());
            ui.painter().rect_filled(rect, 2.0, role_color(0, *role));
            ui.weak(*name);
        }
        ui.weak("(lighter: every other triplet)");
    });
}

/// A vertical colour bar from lo (bottom) to hi (top) with round ticks.
pub(crate) fn legend(
    ui: &mut egui::Ui,
    scale: (f32, f32),
    height: f32,
    map: fn(f32) -> Color32,
    title: &str,
) {
    ui.vertical(|ui| {
        ui.add_space(MARGIN.y);
        let (rect, _) = ui.allocate_exact_size(Vec2::new(64.0, height), Sense::hover());
        let bar = Rect::from_min_size(rect.min, Vec2::new(16.0, height));
        let steps = 64;
        for s in 0..steps {
            let t = 1.0 - s as f32 / steps as f32;
            let y0 = bar.top() + bar.height() * s as f32 / steps as f32;
            let y1 = bar.top() + bar.height() * (s + 1) as f32 / steps as f32;
            let r = Rect::from_min_max(
                egui::pos2(bar.left(), y0),
                egui::pos2(bar.right(), y1 + 0.5),
            );
            ui.painter().rect_filled(r, 0.0, map(t));
        }
        ui.painter().rect_stroke(
            bar,
            0.0,
            egui::Stroke::new(1.0, Color32::GRAY),
            egui::StrokeKind::Inside,
        );
        let (lo, hi) = (scale.0 as f64, scale.1 as f64);
        let (ticks, step) = colour_bar_ticks(lo, hi);
        let font = FontId::proportional(10.0);
        for v in ticks {
            let y = bar.bottom() - ((v - lo) / (hi - lo).max(1e-12)) as f32 * bar.height();
            ui.painter().line_segment(
                [egui::pos2(bar.right(), y), egui::pos2(bar.right() + 4.0, y)],
                egui::Stroke::new(1.0, ui.visuals().text_color()),
            );
            ui.painter().text(
                egui::pos2(bar.right() + 6.0, y),
                Align2::LEFT_CENTER,
                raster::tick_label(v, step),
                font.clone(),
                ui.visuals().text_color(),
            );
        }
        ui.weak(title);
    });
}

/// View selector, window position and colour-scale controls.
pub(crate) fn controls(ui: &mut egui::Ui, h: &mut HeatmapState, eval: &Evaluation) {
    ui.horizontal_wrapped(|ui| {
        let before = h.view;
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
        let (wr, wc) = shape(h.view);
        let max_row = a.rows().saturating_sub(wr);
        let max_col = b.rows().saturating_sub(wc);
        let aligned = h.view == HeatmapView::QueryDoc;
        if h.view != before && aligned {
            h.col0 = 2 * h.row0;
        }
        h.row0 = h.row0.min(max_row);
        let l = ui.label(if aligned { "First query" } else { "First row" });
        ui.add(
            egui::DragValue::new(&mut h.row0)
                .range(0..=max_row)
                .speed(1.0),
        )
        .labelled_by(l.id);
        if aligned {
            // Each query's own positive and negative are in the window: its positive is on
            // the diagonal.
            h.col0 = (2 * h.row0).min(max_col);
        } else {
            let l = ui.label("First column");
            ui.add(
                egui::DragValue::new(&mut h.col0)
                    .range(0..=max_col)
                    .speed(1.0),
            )
            .labelled_by(l.id);
        }
        h.col0 = h.col0.min(max_col);
        if ui.button("Previous window").clicked() {
            h.row0 = h.row0.saturating_sub(wr);
            h.col0 = h.col0.saturating_sub(wc);
        }
        if ui.button("Next window").clicked() {
            h.row0 = (h.row0 + wr).min(max_row);
            h.col0 = (h.col0 + wc).min(max_col);
        }
        if h.view != HeatmapView::QueryDoc {
            ui.checkbox(&mut h.skip_diagonal, "Diagonal out of the scale")
                .on_hover_text("The cells comparing a text with itself (1.0) are drawn at the top colour and left out of the colour scale, so the other cells use all the colours");
        }
    });
    ui.weak(size_note(eval, h.view));
}

/// Why the matrix has the size it has.
fn size_note(eval: &Evaluation, view: HeatmapView) -> String {
    let n = eval.query_rows.rows();
    let docs = eval.index.docs.rows();
    let queries = eval.index.queries.rows();
    match view {
        HeatmapView::DocDoc => format!(
            "{0} x {0}: the positive and the negative of each of the {n} triplets, in file order \
             (pos 0, neg 0, pos 1, neg 1, ...). A document used by several triplets appears once \
             per use: {docs} distinct documents in all.",
            2 * n
        ),
        HeatmapView::QueryQuery => format!(
            "{n} x {n}: the query of each triplet in file order ({queries} distinct queries)."
        ),
        HeatmapView::QueryDoc => format!(
            "{n} queries x {} documents, 25 queries against their own 50 documents: the cells \
             (query i, pos i) run down the diagonal, each query's negative right of it.",
            2 * n
        ),
    }
}

fn view_name(v: HeatmapView) -> &'static str {
    match v {
        HeatmapView::DocDoc => "documents x documents",
        HeatmapView::QueryQuery => "queries x queries",
        HeatmapView::QueryDoc => "queries x documents",
    }
}

/// A window drawn as a PNG: cells of 10 pixels, role bands and index ticks, and a colour bar
/// with its ticks on the right.
pub(crate) fn window_png(
    values: &[f32],
    rows: usize,
    cols: usize,
    key: (HeatmapView, usize, usize),
    scale: (f32, f32),
    map: fn(f32) -> Rgb,
) -> Vec<u8> {
    let (view, row0, col0) = key;
    let (h, w) = shape(view);
    let (cw, ch) = (500 / w, 500 / h);
    let (left, top, right) = (76usize, 34usize, 110usize);
    let mut c = Canvas::new(left + cols * cw + right, top + rows * ch + 12);
    let band = |t: usize, role: AxisRole| -> Rgb {
        let col = role_color(t, role);
        [col.r(), col.g(), col.b()]
    };
    let span = (scale.1 - scale.0).max(1e-6);
    for r in 0..rows {
        let y = (top + r * ch) as i64;
        let (t, role) = axis_role(view, true, row0 + r);
        c.rect(
            left as i64 - 10,
            y,
            left as i64 - 3,
            y + ch as i64,
            band(t, role),
        );
        if (row0 + r).is_multiple_of(10) {
            c.text(2, y, &(row0 + r).to_string(), [0, 0, 0]);
        }
        for k in 0..cols {
            let x = (left + k * cw) as i64;
            let v = values[r * cols + k];
            c.rect(
                x,
                y,
                x + cw as i64,
                y + ch as i64,
                map((v - scale.0) / span),
            );
        }
    }
    for k in 0..cols {
        let x = (left + k * cw) as i64;
        let (t, role) = axis_role(view, false, col0 + k);
        c.rect(
            x,
            top as i64 - 10,
            x + cw as i64,
            top as i64 - 3,
            band(t, role),
        );
        if (col0 + k).is_multiple_of(10) {
            c.text(x, 4, &(col0 + k).to_string(), [0, 0, 0]);
        }
    }
    // The colour bar.
    let bx = (left + cols * cw + 14) as i64;
    let (by, bh) = (top as i64, (rows * ch) as i64);
    for y in 0..bh {
        c.rect(
            bx,
            by + y,
            bx + 16,
            by + y + 1,
            map(1.0 - y as f32 / bh as f32),
        );
    }
    let (lo, hi) = (scale.0 as f64, scale.1 as f64);
    let (ticks, step) = colour_bar_ticks(lo, hi);
    for v in ticks {
        let y = by + bh - (((v - lo) / (hi - lo).max(1e-12)) * bh as f64) as i64;
        c.rect(bx + 16, y, bx + 21, y + 1, [0, 0, 0]);
        c.text(bx + 24, y - 7, &raster::tick_label(v, step), [0, 0, 0]);
    }
    c.png()
}

/// The viridis map as the PNG writer wants it.
pub(crate) fn viridis_rgb(t: f32) -> Rgb {
    let c = colormap(t);
    [c.r(), c.g(), c.b()]
}

/// The colour bar's round tick values over [lo, hi] and their step (for the labels' digits).
fn colour_bar_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let ticks = raster::ticks_n(lo, hi, 8);
    let step = match ticks.as_slice() {
        [a, b, ..] => b - a,
        _ => hi - lo,
    };
    (ticks, step)
}
