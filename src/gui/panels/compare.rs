//! Zero-shot and fine-tuned side by side, on the right triplets: when the fine-tuned model's run
//! record is for the open file, its held-out rows by default (a switch to its training rows or
//! all), with the counts; every metric with its 95 % interval, every difference with a paired
//! interval and p-value (grey when the interval contains 0); the flips, overlaid margin
//! histograms and the two heatmaps on one colour scale; exports and a copyable table.

use eframe::egui::{self, Color32, RichText};

use crate::core::metrics::uncertainty::Delta;
use crate::core::metrics::{flip_counts, lower_is_better, metric_keys, metric_note, Flip};
use crate::core::pipeline::{Evaluation, Subset};
use crate::core::report::comparison::markdown;
use crate::core::report::raster;
use crate::gui::app::{Command, Commands, ExportKind, HeatmapState, View};
use crate::gui::plots::colormap;
use crate::gui::widgets::heatmap::{
    band_key, controls, draw_window, legend, value_range, viridis_rgb, window, window_png,
};
use crate::gui::widgets::histogram::margin_histogram;

/// Colour of a change: green when better, red when worse, grey when its interval contains 0.
pub(crate) fn delta_color(key: &str, d: &Delta) -> Color32 {
    if d.is_uncertain() {
        Color32::GRAY
    } else if (d.delta > 0.0) != lower_is_better(key) {
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
        ui.label("Fine-tune a model (Fine-tune tab), or pick a past run there, to compare it with the zero-shot model here.");
        return;
    };
    let x = app.experiments;
    ui.heading(format!("{} vs fine-tuned", before.model_label));
    if let Some(p) = app.fine_tuned_path {
        ui.weak(format!("Fine-tuned model: {}", p.display()));
    }
    // Which triplets.
    ui.horizontal_wrapped(|ui| {
        ui.label("Measured on:");
        let matching = x.split_of.is_some();
        for (subset, label, tip) in [
            (
                Subset::HeldOut,
                "held-out triplets",
                "the rows the fine-tuned model never trained on",
            ),
            (
                Subset::Training,
                "training triplets",
                "the rows it was trained on (optimistic)",
            ),
            (
                Subset::All,
                "all triplets",
                "every row of the file, trained on or not",
            ),
        ] {
            let enabled = matching || subset == Subset::All;
            let r = ui
                .add_enabled(enabled, egui::Button::selectable(x.subset == subset, label))
                .on_hover_text(tip)
                .on_disabled_hover_text("The fine-tuned model's run record is not for this file");
            if r.clicked() && x.subset != subset {
                cmds.push(Command::SetSubset(subset));
            }
        }
    });
    if let Some(e) = &x.error {
        ui.colored_label(Color32::from_rgb(220, 140, 40), e);
    }
    let Some(c) = x.comparison.as_ref() else {
        if x.computing() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Computing the comparison and its intervals...");
            });
        }
        return;
    };
    ui.strong(&c.rows.note);
    ui.weak(format!(
        "{} triplets, {} distinct queries, {} distinct documents. 95 % intervals: bootstrap over queries ({} resamples, paired for the difference); p: paired sign-flip permutation. Grey: the interval of the difference contains 0.",
        c.a.n_triplets, c.a.n_queries, c.a.n_corpus, c.resamples
    ));
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Copy table")
            .on_hover_text("Markdown, for a pull request")
            .clicked()
        {
            let record = x.record.as_ref().filter(|r| r.matches(data));
            ui.ctx().copy_text(markdown(data, c, record));
        }
        for (kind, label) in [
            (ExportKind::Html, "Export report (HTML)..."),
            (ExportKind::Markdown, "Export Markdown..."),
            (ExportKind::Csv, "Export per-triplet CSV..."),
        ] {
            if ui.button(label).clicked() {
                cmds.push(Command::Export(kind));
            }
        }
    });
    let narrow = super::is_narrow(ui);
    egui::ScrollArea::vertical()
        .id_salt("compare")
        .show(ui, |ui| {
            egui::ScrollArea::horizontal()
                .id_salt("deltas_h")
                .show(ui, |ui| deltas_table(ui, c));
            ui.add_space(8.0);
            let flips = |ui: &mut egui::Ui, cmds: &mut Commands| {
                ui.strong("Triplets that changed (cos(q,pos) > cos(q,neg)), on these triplets");
                let counts = flip_counts(&c.a.per_triplet, &c.b.per_triplet);
                egui::Grid::new("flips").striped(true).show(ui, |ui| {
                    for (f, n) in Flip::ALL.iter().zip(counts) {
                        ui.label(f.label());
                        ui.label(n.to_string());
                        if ui
                            .add_enabled(
                                n > 0,
                                egui::Button::new(format!("Show the {n} {}", f.label())),
                            )
                            .clicked()
                        {
                            cmds.push(Command::InspectFlips(*f));
                        }
                        ui.end_row();
                    }
                });
            };
            let hist = [
                ("zero-shot", &c.a, Color32::from_rgb(80, 140, 220)),
                ("fine-tuned", &c.b, Color32::from_rgb(230, 130, 50)),
            ];
            if narrow {
                flips(ui, cmds);
                ui.add_space(8.0);
                margin_histogram(ui, &hist);
            } else {
                ui.columns(2, |cols| {
                    flips(&mut cols[0], cmds);
                    margin_histogram(&mut cols[1], &hist);
                });
            }
            ui.separator();
            heatmaps(ui, h, before, after, data, cmds);
        });
}

/// Every metric: both models with their intervals, the difference with its paired interval
/// and p-value.
fn deltas_table(ui: &mut egui::Ui, c: &crate::core::pipeline::Comparison) {
    egui::Grid::new("deltas")
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            for head in [
                "metric",
                "zero-shot [95 % CI]",
                "fine-tuned [95 % CI]",
                "difference [95 % CI]",
                "p",
            ] {
                ui.strong(head);
            }
            ui.end_row();
            for key in metric_keys() {
                let (a, b, d) = (&c.a_intervals[&key], &c.b_intervals[&key], &c.deltas[&key]);
                ui.label(super::metric_label(&key))
                    .on_hover_text(format!("{key}: {}", metric_note(&key)));
                ui.label(format!(
                    "{:.4} [{:.3}, {:.3}]",
                    a.value, a.ci95[0], a.ci95[1]
                ));
                ui.label(format!(
                    "{:.4} [{:.3}, {:.3}]",
                    b.value, b.ci95[0], b.ci95[1]
                ));
                let color = delta_color(&key, d);
                ui.label(
                    RichText::new(format!(
                        "{:+.4} [{:+.3}, {:+.3}]",
                        d.delta, d.ci95[0], d.ci95[1]
                    ))
                    .color(color),
                );
                ui.label(RichText::new(format!("{:.3}", d.p_value)).color(color));
                ui.end_row();
            }
        });
}

/// The two models' windows on one colour scale, and the difference map (fine-tuned − zero-shot)
/// on a diverging scale centred on 0.
fn heatmaps(
    ui: &mut egui::Ui,
    h: &mut HeatmapState,
    before: &Evaluation,
    after: &Evaluation,
    data: &crate::core::data::Dataset,
    cmds: &mut Commands,
) {
    ui.weak("Heatmaps: the whole file (all triplets), both models on one colour scale, and their difference.");
    controls(ui, h, before);
    let (view, row0, col0, skip) = (h.view, h.row0, h.col0, h.skip_diagonal);
    let mut entry = |fine: bool, eval: &Evaluation| {
        let e = window(
            &mut h.cache,
            &mut h.windows_computed,
            eval,
            fine,
            view,
            row0,
            col0,
        );
        (e.values.clone(), value_range(e, skip), e.rows, e.cols)
    };
    let (a, (la, ha), rows, cols) = entry(false, before);
    let (b, (lb, hb), ..) = entry(true, after);
    let scale = (la.min(lb), ha.max(hb));
    let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| y - x).collect();
    let reach = diff
        .iter()
        .map(|d| d.abs())
        .fold(0.0f32, f32::max)
        .max(1e-4);
    let diff_scale = (-reach, reach);
    band_key(ui, view);
    ui.horizontal_wrapped(|ui| {
        let maps: [PngButton; 3] = [
            ("Save zero-shot PNG...", &a, scale, viridis_rgb),
            ("Save fine-tuned PNG...", &b, scale, viridis_rgb),
            (
                "Save difference PNG...",
                &diff,
                diff_scale,
                raster::diverging,
            ),
        ];
        for (label, values, range, map) in maps {
            if ui.button(label).clicked() {
                let png = window_png(values, rows, cols, (view, row0, col0), range, map);
                cmds.push(Command::SavePng(png));
            }
        }
    });
    let per_row = if ui.available_width() > 1150.0 {
        3.0
    } else {
        1.0
    };
    let side = ((ui.available_width() - 20.0) / per_row - 130.0).clamp(150.0, 420.0);
    let mut clicked = None;
    ui.horizontal_wrapped(|ui| {
        for (fine, label, eval) in [(false, "zero-shot", before), (true, "fine-tuned", after)] {
            ui.vertical(|ui| {
                ui.label(label);
                ui.horizontal_top(|ui| {
                    let entry = window(
                        &mut h.cache,
                        &mut h.windows_computed,
                        eval,
                        fine,
                        view,
                        row0,
                        col0,
                    );
                    if let Some(c) = draw_window(ui, entry, data, scale, side) {
                        clicked = Some(c);
                    }
                    legend(ui, scale, side, colormap, "cosine");
                });
            });
        }
        ui.vertical(|ui| {
            ui.label("difference (fine-tuned - zero-shot)");
            ui.horizontal_top(|ui| {
                let key = (view, row0, col0, reach.to_bits());
                if h.diff_texture.as_ref().is_none_or(|(k, _)| *k != key) {
                    let pixels = diff
                        .iter()
                        .map(|d| diverging_color((d + reach) / (2.0 * reach)))
                        .collect();
                    let image = egui::ColorImage::new([cols, rows], pixels);
                    let tex = ui.ctx().load_texture(
                        "heatmap-difference",
                        image,
                        egui::TextureOptions::NEAREST,
                    );
                    h.diff_texture = Some((key, tex));
                }
                let tex = &h.diff_texture.as_ref().expect("just drawn").1;
                let cell = egui::vec2(side / cols.max(1) as f32, side / rows.max(1) as f32);
                let size = egui::vec2(cell.x * cols as f32, cell.y * rows as f32);
                let r = ui.add(
                    egui::Image::new((tex.id(), size))
                        .alt_text("Difference map: fine-tuned minus zero-shot cosine")
                        .sense(egui::Sense::hover()),
                );
                if let Some(p) = r.hover_pos() {
                    let local = p - r.rect.min;
                    let (i, j) = ((local.y / cell.y) as usize, (local.x / cell.x) as usize);
                    if i < rows && j < cols {
                        r.on_hover_text_at_pointer(format!(
                            "cell ({}, {}): {:+.4} ({:.4} -> {:.4})",
                            row0 + i,
                            col0 + j,
                            diff[i * cols + j],
                            a[i * cols + j],
                            b[i * cols + j]
                        ));
                    }
                }
                legend(ui, diff_scale, side, diverging_color, "difference");
            });
        });
    });
    if let Some(c) = clicked {
        cmds.push(c);
    }
}

/// A Save PNG button: its label, the window's values, their colour scale and map.
type PngButton<'a> = (&'a str, &'a [f32], (f32, f32), fn(f32) -> raster::Rgb);

/// The diverging map as egui colours: blue (lower after fine-tuning), white, red (higher).
fn diverging_color(t: f32) -> Color32 {
    let [r, g, b] = raster::diverging(t);
    Color32::from_rgb(r, g, b)
}
