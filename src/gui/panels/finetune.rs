//! The fine-tune panel: settings, Fine-tune / Stop, progress with ETA, and live curves on one
//! step axis: raw and smoothed loss, learning rate, validation metrics.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use crate::core::train::LossKind;
use crate::gui::app::{Command, Commands, DialogTarget, JobKind, Settings, View};
use crate::gui::plots::debiased_ema;

/// Validation metrics drawn on the curve.
const VAL_KEYS: [&str; 3] = ["cosine_ndcg@10", "cosine_accuracy@1", "cosine_accuracy"];

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, app: &View, s: &mut Settings, cmds: &mut Commands) {
    ui.heading("Fine-tune");
    if app.dataset.is_none() {
        super::needs_embedding(ui, app, cmds);
        return;
    }
    let running = app.is_running(JobKind::FineTune);
    ui.add_enabled_ui(!running, |ui| settings(ui, app, s, cmds));
    if let Some((dir, why)) = app.confirm_replace {
        egui::Frame::group(ui.style())
            .fill(Color32::from_rgb(255, 243, 224))
            .show(ui, |ui| {
                ui.label(RichText::new(format!("{why}.")).strong());
                ui.label(format!(
                    "Fine-tuning would replace {} once the new model is saved.",
                    dir.display()
                ));
                ui.horizontal(|ui| {
                    if ui.button("Replace it").clicked() {
                        cmds.push(Command::StartFineTuneReplacing);
                    }
                    if ui.button("Keep it (choose another folder)").clicked() {
                        cmds.push(Command::CancelReplace);
                    }
                });
            });
    }
    ui.horizontal(|ui| {
        if running {
            if ui.button("Stop").clicked() {
                cmds.push(Command::Cancel(JobKind::FineTune));
            }
        } else if ui.button("Start fine-tuning").clicked() {
            cmds.push(Command::StartFineTune);
        }
        if let Some(p) = &app.train_log.progress {
            super::progress_bar(ui, p);
        } else if running {
            ui.label("Preparing...");
        }
    });
    if let Some(msg) = &app.train_log.finished {
        ui.label(msg);
    }
    if app.has_unsaved_model && !running && ui.button("Save the trained model").clicked() {
        cmds.push(Command::SaveTrained);
    }
    past_runs(ui, app, cmds);
    curves(ui, app, &mut s.smoothing);
}

fn settings(ui: &mut egui::Ui, app: &View, s: &mut Settings, cmds: &mut Commands) {
    let default_out = app.default_output_dir.as_ref();
    let t = &mut s.train;
    egui::Grid::new("train_settings")
        .num_columns(2)
        .show(ui, |ui| {
            ui.label("Loss");
            egui::ComboBox::from_id_salt("loss")
                .selected_text(loss_name(t.loss))
                .show_ui(ui, |ui| {
                    for l in [LossKind::Mnrl, LossKind::Contrastive, LossKind::Triplet] {
                        ui.selectable_value(&mut t.loss, l, loss_name(l));
                    }
                });
            ui.end_row();
            let l = ui.label("Epochs");
            ui.add(egui::DragValue::new(&mut t.epochs).range(1..=100))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Training batch size");
            ui.add(egui::DragValue::new(&mut t.batch_size).range(2..=256))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Learning rate");
            ui.add(
                egui::DragValue::new(&mut t.lr)
                    .range(1e-7..=1e-2)
                    .speed(1e-6)
                    .custom_formatter(|v, _| format!("{v:.1e}")),
            )
            .labelled_by(l.id);
            ui.end_row();
            ui.label("Matryoshka");
            ui.checkbox(&mut t.matryoshka, "MatryoshkaLoss over the width, 256, 128, 64, 32")
                .on_hover_text("Trains truncated vectors too, so the Storage panel's smaller dimensions keep more of their quality");
            ui.end_row();
            if t.loss == LossKind::Mnrl {
                let l = ui.label("Negatives per example");
                ui.add(egui::DragValue::new(&mut t.max_negatives).range(1..=16))
                    .labelled_by(l.id)
                    .on_hover_text("Rows sharing a query and positive (as the Mining panel exports them) are joined into one example with up to this many negatives, each a candidate for every query of the batch");
                ui.end_row();
                let l = ui.label("GradCache mini-batch");
                ui.add(
                    egui::DragValue::new(&mut t.mini_batch)
                        .range(0..=256)
                        .custom_formatter(|v, _| if v == 0.0 { "off".into() } else { format!("{v} texts") }),
                )
                .labelled_by(l.id)
                .on_hover_text("CachedMultipleNegativesRankingLoss: embeds the batch this many texts at a time and replays each for its gradients, so batch sizes of 64-256 fit in memory (same result, about a third more compute)");
                ui.end_row();
            }
            let l = ui.label("Validation share of queries");
            ui.add(egui::Slider::new(&mut t.val_split, 0.05..=0.5))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Save to");
            ui.horizontal(|ui| {
                let hint = default_out
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                ui.add(
                    egui::TextEdit::singleline(&mut t.out_dir)
                        .hint_text(hint)
                        .desired_width(320.0),
                )
                .labelled_by(l.id);
                if ui.button("Browse output folder...").clicked() {
                    cmds.push(Command::Browse(DialogTarget::OutputFolder));
                }
            });
            ui.end_row();
        });
}

/// Past runs found next to the data: each with its record, to compare with the zero-shot model
/// or to use as the baseline (so any two runs can be compared).
fn past_runs(ui: &mut egui::Ui, app: &View, cmds: &mut Commands) {
    let runs = &app.experiments.runs;
    egui::CollapsingHeader::new(format!("Past runs ({})", runs.len()))
        .id_salt("past_runs")
        .show(ui, |ui| {
            if ui.button("Look again").clicked() {
                cmds.push(Command::ScanRuns);
            }
            if runs.is_empty() {
                ui.weak("No fine-tuned model with a run record next to the data file yet.");
                return;
            }
            egui::ScrollArea::vertical()
                .id_salt("runs")
                .max_height(180.0)
                .show(ui, |ui| {
                    egui::Grid::new("runs_grid").striped(true).show(ui, |ui| {
                        for h in [
                            "folder",
                            "base model",
                            "data",
                            "steps",
                            "saved step",
                            "validation nDCG@10",
                            "",
                        ] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for run in runs {
                            let r = &run.record;
                            let name = run
                                .dir
                                .file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().to_string());
                            ui.label(name).on_hover_text(run.dir.display().to_string());
                            ui.label(super::preview(&r.base_model.source, 40));
                            let same = app.dataset.is_some_and(|d| r.matches(d));
                            ui.label(if same { "this file" } else { "another file" })
                                .on_hover_text(r.data.path.display().to_string());
                            ui.label(format!("{}/{}", r.steps.len(), r.total_steps));
                            ui.label(r.best_step.to_string());
                            let best = r.evals.iter().find(|e| e.step == r.best_step);
                            let zero = r.evals.first();
                            match (
                                zero.and_then(|e| e.metrics.get("cosine_ndcg@10")),
                                best.and_then(|e| e.metrics.get("cosine_ndcg@10")),
                            ) {
                                (Some(a), Some(b)) => ui.label(format!("{a:.4} -> {b:.4}")),
                                _ => ui.label("-"),
                            };
                            ui.horizontal(|ui| {
                                if ui.small_button("Compare with zero-shot").clicked() {
                                    cmds.push(Command::EmbedComparison(run.dir.clone()));
                                    cmds.push(Command::ShowTab(crate::gui::app::Tab::Compare));
                                }
                                if ui.small_button("Use as baseline").clicked() {
                                    cmds.push(Command::UseAsBaseline(run.dir.clone()));
                                }
                            });
                            ui.end_row();
                        }
                    });
                });
        });
}

fn loss_name(l: LossKind) -> &'static str {
    match l {
        LossKind::Mnrl => "MultipleNegativesRanking (mnrl)",
        LossKind::Contrastive => "Contrastive (the notebook's)",
        LossKind::Triplet => "Triplet (Euclidean, margin 5)",
    }
}

fn curves(ui: &mut egui::Ui, app: &View, smoothing: &mut f64) {
    let log = app.train_log;
    if log.steps.is_empty() && log.evals.is_empty() {
        ui.weak("Curves appear here while training runs.");
        return;
    }
    ui.horizontal(|ui| {
        let l = ui.label("Smoothing");
        ui.add(egui::Slider::new(smoothing, 0.0..=0.99))
            .labelled_by(l.id);
        if let Some(s) = app.train_log.steps.last() {
            ui.label(format!(
                "step {}/{}: loss {:.4}, lr {:.2e}, grad norm {:.3}, {:.1} texts/s",
                s.step, app.train_log.total_steps, s.loss, s.lr, s.grad_norm, s.texts_per_sec
            ));
        }
    });
    let x_max = log.total_steps.max(1) as f64;
    let link = ui.scope_id().with("train_x");
    let height = ((ui.available_height() - 20.0) / 3.0).max(120.0);
    let losses: Vec<f64> = log.steps.iter().map(|s| s.loss).collect();
    let smooth = debiased_ema(&losses, *smoothing);
    Plot::new("loss")
        .height(height)
        .legend(Legend::default())
        .link_axis(link, [true, false])
        .include_x(0.0)
        .include_x(x_max)
        .include_y(0.0)
        .y_axis_label("loss")
        .show(ui, |plot| {
            let raw: PlotPoints = log.steps.iter().map(|s| [s.step as f64, s.loss]).collect();
            plot.line(
                Line::new("loss", raw).color(Color32::from_rgb(120, 160, 230).gamma_multiply(0.5)),
            );
            let sm: PlotPoints = log
                .steps
                .iter()
                .zip(&smooth)
                .map(|(s, v)| [s.step as f64, *v])
                .collect();
            plot.line(
                Line::new("smoothed", sm)
                    .color(Color32::from_rgb(40, 90, 200))
                    .width(2.0),
            );
        });
    Plot::new("lr")
        .height(height * 0.6)
        .link_axis(link, [true, false])
        .include_x(0.0)
        .include_x(x_max)
        .include_y(0.0)
        .y_axis_label("learning rate")
        .show(ui, |plot| {
            let pts: PlotPoints = log.steps.iter().map(|s| [s.step as f64, s.lr]).collect();
            plot.line(Line::new("learning rate", pts).color(Color32::from_rgb(200, 120, 40)));
        });
    Plot::new("validation")
        .height(height)
        .legend(Legend::default())
        .link_axis(link, [true, false])
        .include_x(0.0)
        .include_x(x_max)
        .x_axis_label("step")
        .y_axis_label("validation")
        .show(ui, |plot| {
            for (key, color) in VAL_KEYS.iter().zip([
                Color32::from_rgb(40, 160, 90),
                Color32::from_rgb(160, 60, 160),
                Color32::from_rgb(200, 80, 60),
            ]) {
                let pts: Vec<[f64; 2]> = log
                    .evals
                    .iter()
                    .filter_map(|e| e.metrics.get(*key).map(|v| [e.step as f64, *v]))
                    .collect();
                plot.line(Line::new(*key, PlotPoints::from(pts.clone())).color(color));
                plot.points(
                    Points::new(*key, PlotPoints::from(pts))
                        .color(color)
                        .radius(3.0),
                );
            }
        });
}
