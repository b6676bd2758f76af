//! The metrics panel: every metric with its plain-language label, a K selector, and the histogram
//! of per-triplet margins cos(q,pos) - cos(q,neg).

use eframe::egui::{self, Color32, RichText};

use crate::core::metrics::{metric_keys, metric_note};
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
    ui.horizontal_wrapped(|ui| {
        ui.label("K:");
        for k in [1, 3, 5, 10] {
            ui.selectable_value(top_k, k, format!("K = {k}"));
        }
    });
    let k = *top_k;
    ui.weak(relevance_note(eval, k));
    let hist = [("zero-shot", &eval.result, Color32::from_rgb(80, 140, 220))];
    if super::is_narrow(ui) {
        // One below the other, both in one scroll area.
        egui::ScrollArea::vertical()
            .id_salt("metrics_narrow")
            .show(ui, |ui| {
                metrics_grid(ui, eval, k);
                ui.add_space(8.0);
                margin_histogram(ui, &hist);
            });
    } else {
        ui.columns(2, |cols| {
            egui::ScrollArea::both()
                .id_salt("metrics_table")
                .show(&mut cols[0], |ui| metrics_grid(ui, eval, k));
            margin_histogram(&mut cols[1], &hist);
        });
    }
}

/// The trap of accuracy@k, recall@k and precision@k on this data, said plainly.
pub(crate) fn relevance_note(eval: &Evaluation, k: usize) -> String {
    let most = eval.index.relevant.iter().map(Vec::len).max().unwrap_or(0);
    if most <= 1 {
        format!(
            "Each query has one relevant document here, so accuracy@k = recall@k and precision@k \
             is at most 1/k ({:.3} at K = {k}).",
            1.0 / k as f64
        )
    } else {
        format!(
            "Some queries have several relevant documents (up to {most}): recall@k is the share \
             of them found, accuracy@k whether any is found."
        )
    }
}

/// True for the keys the K selector highlights.
fn is_k_metric(key: &str, k: usize) -> bool {
    key.ends_with(&format!("@{k}")) || key == format!("neg_in_top_{k}")
}

fn metrics_grid(ui: &mut egui::Ui, e: &Evaluation, k: usize) {
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
                ui.label(text(super::metric_label(&key)))
                    .on_hover_text(metric_note(&key));
                ui.label(text(key.clone()));
                ui.label(text(format!("{:.4}", e.result.metrics[&key])));
                match e.intervals.get(&key) {
                    Some(i) => ui.label(format!("[{:.4}, {:.4}]", i.ci95[0], i.ci95[1])),
                    None => ui.label(""),
                };
                ui.end_row();
            }
        });
}
