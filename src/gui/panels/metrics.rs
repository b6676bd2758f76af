//! The metrics panel: every metric with its plain-language label, a K selector, and the histogram
//! of per-triplet margins cos(q,pos) - cos(q,neg).

use eframe::egui::{self, Color32, RichText};

use crate::core::metrics::metric_keys;
use crate::core::pipeline::Evaluation;
use crate::gui::app::{Commands, View};
use crate::gui::widgets::histogram::margin_histogram;

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, view: &View, top_k: &mut usize, cmds: &mut Commands) {
    let Some(eval) = view.zero_shot else {
        super::needs_embedding(ui, view, cmds);
        return;
    };
    ui.heading(format!("Metrics of {}", eval.model_label));
    ui.label(format!(
        "{} triplets, {} distinct queries ranked against {} distinct documents",
        eval.result.n_triplets, eval.result.n_queries, eval.result.n_corpus
    ));
    ui.weak(
        "95 % intervals: bootstrap over queries (2000 resamples): the range the value would take \
         on another sample of queries like these.",
    );
    ui.horizontal(|ui| {
        ui.label("K:");
        for k in [1, 3, 5, 10] {
            ui.selectable_value(top_k, k, format!("K = {k}"));
        }
    });
    let k = *top_k;
    ui.columns(2, |cols| {
        metrics_table(&mut cols[0], eval, k);
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

fn metrics_table(ui: &mut egui::Ui, e: &Evaluation, k: usize) {
    egui::ScrollArea::vertical()
        .id_salt("metrics_table")
        .show(ui, |ui| {
            egui::Grid::new("metrics")
                .striped(true)
                .num_columns(4)
                .show(ui, |ui| {
                    ui.strong("meaning");
                    ui.strong("metric");
                    ui.strong("value");
                    ui.strong("95 % CI");
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
                        ui.label(text(format!("{:.4}", e.result.metrics[&key])));
                        match e.intervals.get(&key) {
                            Some(i) => ui.label(format!("[{:.4}, {:.4}]", i.ci95[0], i.ci95[1])),
                            None => ui.label(""),
                        };
                        ui.end_row();
                    }
                });
        });
}
