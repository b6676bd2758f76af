//! The data panel: counts, text lengths and the validation report of the open file.

use eframe::egui;

use crate::core::data::LengthStats;
use crate::gui::app::{Commands, View};

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, app: &View, cmds: &mut Commands) {
    let (Some(d), Some(stats)) = (app.dataset, app.data_stats) else {
        super::needs_embedding(ui, app, cmds);
        return;
    };
    egui::ScrollArea::vertical()
        .id_salt("data_panel")
        .auto_shrink([false, false])
        .show(ui, |ui| body(ui, app, d, stats));
}

fn body(
    ui: &mut egui::Ui,
    app: &View,
    d: &crate::core::data::Dataset,
    stats: &crate::core::data::DataStats,
) {
    ui.heading("Data");
    ui.label(format!(
        "{} ({:?}, keys {})",
        d.path.display(),
        d.format,
        d.key_set
    ));
    egui::Grid::new("counts").striped(true).show(ui, |ui| {
        ui.label("Triplets");
        ui.label(stats.triplets.to_string());
        ui.end_row();
        ui.label("Distinct queries");
        ui.label(stats.distinct_queries.to_string());
        ui.end_row();
        ui.label("Distinct documents");
        ui.label(stats.distinct_documents.to_string());
        ui.end_row();
        ui.label("Rows in the file");
        ui.label(d.report.total_rows.to_string());
        ui.end_row();
        ui.label("Skipped rows");
        ui.label(d.report.skipped.len().to_string());
        ui.end_row();
    });
    ui.add_space(8.0);
    ui.label("Text length in words");
    egui::Grid::new("lengths").striped(true).show(ui, |ui| {
        for h in ["", "min", "median", "p95", "max"] {
            ui.strong(h);
        }
        ui.end_row();
        let mut row = |name: &str, l: &LengthStats| {
            ui.label(name);
            for v in [l.min, l.median, l.p95, l.max] {
                ui.label(v.to_string());
            }
            ui.end_row();
        };
        row("query", &stats.query_words);
        row("pos", &stats.pos_words);
        row("negative", &stats.negative_words);
    });
    ui.add_space(8.0);
    ui.heading("Validation report");
    if d.report.is_clean() {
        ui.label("No row was skipped and no quality warning was found.");
    }
    for s in &d.report.skipped {
        ui.label(format!("Skipped {s}"));
    }
    for w in &d.report.warnings {
        ui.label(format!("Warning: {w}"));
    }
    if let Some(e) = app.zero_shot {
        let max = e.max_seq_len;
        let source_rows = &d.source_rows;
        let cut: Vec<String> = e
            .embeddings
            .token_counts
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                ["query", "pos", "negative"]
                    .into_iter()
                    .zip(c)
                    .filter(|(_, c)| c.truncated)
                    .map(move |(f, c)| {
                        format!(
                            "row {}: {f} has {} tokens, cut to {max}",
                            source_rows[i], c.tokens
                        )
                    })
            })
            .collect();
        if !cut.is_empty() {
            ui.label(format!(
                "{} texts are longer than the model's {max} tokens:",
                cut.len()
            ));
            for line in cut.iter().take(200) {
                ui.label(format!("Warning: {line}"));
            }
        }
    }
}
