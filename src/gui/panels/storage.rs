//! What storing fewer dimensions or fewer bits costs in retrieval quality, on the open file: the
//! grid of dimensions × precisions from one embedding pass, as a heat table of nDCG@10 retained
//! (% of float32 at full width) with the numbers in the cells, and quality against bytes per
//! vector; for the zero-shot and the fine-tuned model side by side.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{HoverPosition, Legend, Line, Plot, PlotPoints, Points};

use crate::core::files::format_bytes;
use crate::core::metrics::quantize::Precision;
use crate::core::pipeline::grid::Grid;
use crate::gui::app::{Command, Commands, Settings, View};
use crate::gui::plots::colormap;

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, app: &View, s: &mut Settings, cmds: &mut Commands) {
    if app.zero_shot.is_none() {
        super::needs_embedding(ui, app, cmds);
        return;
    }
    ui.heading("Storage: dimensions × precision");
    ui.label(
        "Truncation keeps the first D components of each vector (Matryoshka); int8 stores one \
         byte per dimension (ranges calibrated on the file's documents), binary one bit \
         (sentence-transformers' quantize_embeddings). Computed from the vectors already embedded.",
    );
    let st = &mut s.storage;
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Dimensions");
        ui.add(egui::TextEdit::singleline(&mut st.dims).desired_width(160.0))
            .labelled_by(l.id);
        ui.label("Precisions");
        for p in Precision::ALL {
            let mut on = st.precisions.contains(&p);
            if ui.checkbox(&mut on, p.name()).changed() {
                if on {
                    st.precisions.push(p);
                    st.precisions.sort_by_key(|x| Precision::ALL.iter().position(|y| y == x));
                } else {
                    st.precisions.retain(|x| *x != p);
                }
            }
        }
        ui.checkbox(&mut st.rescore, "Rescore")
            .on_hover_text("Rescore the top candidates with the float query (sentence-transformers' semantic_search rescore)");
        if st.rescore {
            super::labelled_drag(ui, "× 100 candidates", &mut st.rescore_multiplier, 1..=50);
        }
        let busy = app.experiments.computing_grid();
        if ui.add_enabled(!busy, egui::Button::new("Compute grid")).clicked() {
            cmds.push(Command::ComputeGrid);
        }
        if busy {
            ui.spinner();
        }
    });
    if let Some(e) = &app.experiments.grid_error {
        ui.colored_label(Color32::from_rgb(220, 60, 60), e);
    }
    let grids: Vec<(&str, &Grid)> = [
        ("zero-shot", &app.experiments.grids[0]),
        ("fine-tuned", &app.experiments.grids[1]),
    ]
    .into_iter()
    .filter_map(|(n, g)| g.as_deref().map(|g| (n, g)))
    .collect();
    if grids.is_empty() {
        ui.weak("Press Compute grid (seconds, even for 20,000 triplets: no model runs).");
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("storage")
        .show(ui, |ui| {
            ui.columns(grids.len(), |cols| {
                for (col, (name, g)) in cols.iter_mut().zip(&grids) {
                    grid_view(col, name, g);
                }
            });
        });
}

fn grid_view(ui: &mut egui::Ui, name: &str, g: &Grid) {
    ui.strong(format!("{name}: {}", g.model));
    ui.weak(format!(
        "{} triplets, {} queries, {} documents; 100 % = nDCG@10 {:.4} (float32, {} dimensions){}",
        g.n_triplets,
        g.n_queries,
        g.n_corpus,
        g.reference_ndcg,
        g.full_dim,
        g.rescore
            .map(|m| format!("; quantised cells rescored (top {} candidates)", 100 * m))
            .unwrap_or_default()
    ));
    let mut dims: Vec<usize> = g.cells.iter().map(|c| c.dim).collect();
    dims.dedup();
    let mut precisions: Vec<Precision> = Vec::new();
    for c in &g.cells {
        if !precisions.contains(&c.precision) {
            precisions.push(c.precision);
        }
    }
    egui::Grid::new(format!("heat-{name}")).spacing([4.0, 4.0]).show(ui, |ui| {
        ui.strong("dim");
        for p in &precisions {
            ui.strong(p.name());
        }
        ui.end_row();
        for &d in &dims {
            ui.strong(d.to_string());
            for &p in &precisions {
                let Some(c) = g.cell(d, p) else {
                    ui.label("");
                    continue;
                };
                let r = c.ndcg_retained;
                let fill = colormap(r.clamp(0.0, 1.0) as f32);
                let text = if r > 0.55 { Color32::BLACK } else { Color32::WHITE };
                let ci = c.intervals["cosine_ndcg@10"].ci95;
                egui::Frame::new().fill(fill).inner_margin(4.0).show(ui, |ui| {
                    ui.set_min_width(84.0);
                    ui.label(RichText::new(format!("{:.1} %", 100.0 * r)).color(text).strong());
                    ui.label(RichText::new(format!("{:.4}", c.metrics["cosine_ndcg@10"])).color(text).small());
                })
                .response
                .on_hover_text(format!(
                    "{d} dimensions, {}: nDCG@10 {:.4} [{:.4}, {:.4}], accuracy@1 {:.4}\n{} bytes per vector; the file's {} documents: {}; a million documents: {}\nscoring every query: {:.3} ms per query",
                    p.name(),
                    c.metrics["cosine_ndcg@10"],
                    ci[0],
                    ci[1],
                    c.metrics["cosine_accuracy@1"],
                    c.bytes_per_vector,
                    g.n_corpus,
                    format_bytes(c.index_bytes_file),
                    format_bytes(c.index_bytes_million),
                    c.search_ms_per_query
                ));
            }
            ui.end_row();
        }
    });
    ui.add_space(6.0);
    Plot::new(format!("bytes-{name}"))
        .height(240.0)
        .legend(Legend::default())
        .x_axis_label("bytes per vector (log2)")
        .y_axis_label("nDCG@10")
        .allow_scroll(false)
        .label_formatter(|pos| match pos {
            HoverPosition::NearDataPoint {
                plot_name,
                position,
                ..
            } => Some(format!(
                "{plot_name}\n{:.0} bytes per vector\nnDCG@10 {:.4}",
                2f64.powf(position.x),
                position.y
            )),
            HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |plot| {
            for (i, &p) in precisions.iter().enumerate() {
                let pts: Vec<[f64; 2]> = g
                    .cells
                    .iter()
                    .filter(|c| c.precision == p)
                    .map(|c| {
                        [
                            (c.bytes_per_vector as f64).log2(),
                            c.metrics["cosine_ndcg@10"],
                        ]
                    })
                    .collect();
                let color = [
                    Color32::from_rgb(60, 120, 210),
                    Color32::from_rgb(230, 120, 30),
                    Color32::from_rgb(40, 160, 90),
                    Color32::from_rgb(160, 60, 160),
                    Color32::from_rgb(200, 60, 60),
                ][i % 5];
                plot.line(Line::new(p.name(), PlotPoints::from(pts.clone())).color(color));
                plot.points(
                    Points::new(p.name(), PlotPoints::from(pts))
                        .color(color)
                        .radius(3.5),
                );
            }
        });
}
