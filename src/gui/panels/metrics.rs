//! The metrics panel: every metric with its plain-language label, a K selector, and the histogram
//! of per-triplet margins cos(q,pos) - cos(q,neg).

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Bar, BarChart, Legend, Plot, VLine};

use super::super::app::App;
use crate::core::metrics::{histogram, metric_keys, EvalResult};

/// Bins of the margin histogram.
const BINS: usize = 40;

/// Draws the panel.
pub fn show(app: &mut App, ui: &mut egui::Ui) {
    let Some(eval) = app.zero_shot.clone() else {
        super::needs_embedding(app, ui);
        return;
    };
    ui.heading(format!("Metrics of {}", eval.model_label));
    ui.label(format!(
        "{} triplets, {} distinct queries ranked against {} distinct documents",
        eval.result.n_triplets, eval.result.n_queries, eval.result.n_corpus
    ));
    ui.horizontal(|ui| {
        ui.label("K:");
        for k in [1, 3, 5, 10] {
            ui.selectable_value(&mut app.settings.top_k, k, format!("K = {k}"));
        }
    });
    let k = app.settings.top_k;
    ui.columns(2, |cols| {
        metrics_table(&mut cols[0], &eval.result, k);
        margin_histogram(
            &mut cols[1],
            &[("zero-shot", &eval.result, Color32::from_rgb(80, 140, 220))],
        );
    });
}

/// True for the keys the K selector highlights.
fn is_k_metric(key: &str, k: usize) -> bool {
    key.ends_with(&format!("@{k}")) || key == format!("neg_in_top_{k}")
}

fn metrics_table(ui: &mut egui::Ui, r: &EvalResult, k: usize) {
    egui::ScrollArea::vertical()
        .id_salt("metrics_table")
        .show(ui, |ui| {
            egui::Grid::new("metrics")
                .striped(true)
                .num_columns(3)
                .show(ui, |ui| {
                    ui.strong("meaning");
                    ui.strong("metric");
                    ui.strong("value");
                    ui.end_row();
                    for key in metric_keys() {
                        let text = |s: String| {
                            if is_k_metric(&key, k) || key == "cosine_accuracy" {
                                RichText::new(s).strong()
                            } else {
                                RichText::new(s)
                            }
                        };
                        ui.label(text(super::metric_label(&key)));
                        ui.label(text(key.clone()));
                        ui.label(text(format!("{:.4}", r.metrics[&key])));
                        ui.end_row();
                    }
                });
        });
}

/// Overlaid histograms of margins, one per (name, result, colour), on shared bins.
pub(crate) fn margin_histogram(ui: &mut egui::Ui, series: &[(&str, &EvalResult, Color32)]) {
    let all = series
        .iter()
        .flat_map(|(_, r, _)| r.per_triplet.iter().map(|s| s.margin));
    let (lo, hi) = all.fold((0.0f64, 0.0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    let (lo, hi) = ((lo * 10.0).floor() / 10.0, (hi * 10.0).ceil() / 10.0);
    let width = (hi - lo).max(1e-6) / BINS as f64;
    Plot::new("margins")
        .legend(Legend::default())
        .height(260.0)
        .x_axis_label("margin cos(q,pos) - cos(q,neg)")
        .y_axis_label("triplets")
        .allow_scroll(false)
        .show(ui, |plot| {
            for (name, r, color) in series {
                let counts = histogram(r.per_triplet.iter().map(|s| s.margin), BINS, lo, hi);
                let bars = counts
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        Bar::new(lo + (i as f64 + 0.5) * width, c as f64).width(width * 0.95)
                    })
                    .collect();
                plot.bar_chart(BarChart::new(*name, bars).color(color.gamma_multiply(0.7)));
            }
            plot.vline(VLine::new("margin 0", 0.0).color(Color32::GRAY));
        });
}
