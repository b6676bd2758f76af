//! The fine-tune panel: settings, Fine-tune / Stop, progress with ETA, and live curves on one
//! step axis: raw and smoothed loss, learning rate, validation metrics.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Corner, Legend, Line, Plot, PlotPoints, Points, VLine};

use crate::core::data::Dataset;
use crate::core::report::raster::tick_label;
use crate::core::train::LossKind;
use crate::core::train::{planned_steps, split_rows_by_query, warmup_steps, BEST_METRIC};
use crate::gui::app::{Command, Commands, DialogTarget, JobKind, LayoutState, Settings, View};
use crate::gui::plots::{debiased_ema, round_marks};
use crate::gui::widgets::format_secs;

/// Validation metrics drawn on the curve.
const VAL_KEYS: [&str; 3] = ["cosine_ndcg@10", "cosine_accuracy@1", "cosine_accuracy"];

/// Draws the panel.
pub fn show(
    ui: &mut egui::Ui,
    app: &View,
    s: &mut Settings,
    layout: &mut LayoutState,
    cmds: &mut Commands,
) {
    ui.heading("Fine-tune");
    let Some(data) = app.dataset else {
        super::needs_embedding(ui, app, cmds);
        return;
    };
    let running = app.is_running(JobKind::FineTune);
    // The form scrolls on its own in small windows; the curves keep the rest.
    egui::ScrollArea::vertical()
        .id_salt("fine_tune_form")
        .max_height((ui.available_height() * 0.45).max(120.0))
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| settings(ui, app, s, cmds));
            plan_line(ui, app, data, s, layout);
        });
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
    ui.horizontal_wrapped(|ui| {
        if running && app.train_log.stopping {
            ui.add_enabled(false, egui::Button::new("Stopping..."))
                .on_disabled_hover_text(
                    "The run ends after its current step and keeps its best checkpoint",
                );
        } else if running {
            if ui.button("Stop").clicked() {
                cmds.push(Command::Cancel(JobKind::FineTune));
            }
        } else if ui.button("Start fine-tuning").clicked() {
            cmds.push(Command::StartFineTune);
        }
        if running {
            // One line for the whole run: its phase, the phase's own progress, the time left.
            let (phase, eta) = app.train_log.overall();
            let mut text = phase;
            if let Some(p) = app
                .train_log
                .progress
                .as_ref()
                .filter(|p| p.stage != "training")
            {
                text.push_str(&format!(": {} {}/{} {}", p.stage, p.done, p.total, p.unit));
            }
            match eta {
                Some(s) => text.push_str(&format!(", about {} left in all", format_secs(s))),
                None => text.push_str(", time left measured after the first step"),
            }
            let fraction = app.train_log.steps.last().map_or(0.0, |s| {
                s.step as f32 / app.train_log.total_steps.max(1) as f32
            });
            ui.add(egui::ProgressBar::new(fraction).text(text));
        }
    });
    if let Some(msg) = &app.train_log.finished {
        ui.add(egui::Label::new(msg).wrap());
    }
    if app.has_unsaved_model && !running && ui.button("Save the trained model").clicked() {
        cmds.push(Command::SaveTrained);
    }
    past_runs(ui, app, cmds);
    // The three plots keep a readable height; in small windows they scroll.
    egui::ScrollArea::vertical()
        .id_salt("fine_tune_curves")
        .show(ui, |ui| curves(ui, app, &mut s.smoothing));
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
            let l = ui.label("Warm-up share of steps");
            ui.add(egui::Slider::new(&mut t.warmup_ratio, 0.0..=0.5))
                .labelled_by(l.id)
                .on_hover_text("The learning rate rises linearly over these first steps, then falls linearly to 0");
            ui.end_row();
            let l = ui.label("Seed");
            ui.add(egui::DragValue::new(&mut t.seed))
                .labelled_by(l.id)
                .on_hover_text("Seeds the held-out split, the batches and dropout: the same seed gives the same run");
            ui.end_row();
            let l = ui.label("Max length in training (tokens)");
            ui.add(egui::DragValue::new(&mut t.max_seq_len).range(8..=512))
                .labelled_by(l.id)
                .on_hover_text("Texts are cut to this many tokens while training (sentence-transformers' fit uses the model's max_seq_length; shorter is faster). Evaluation uses the sidebar's max length.");
            ui.end_row();
            let l = ui.label("Validation share of queries");
            ui.add(egui::Slider::new(&mut t.val_split, 0.05..=0.5))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Save to");
            ui.horizontal_wrapped(|ui| {
                let hint = default_out
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let width = (ui.available_width() - 190.0).clamp(120.0, 420.0);
                ui.add(
                    egui::TextEdit::singleline(&mut t.out_dir)
                        .hint_text(hint)
                        .desired_width(width),
                )
                .labelled_by(l.id);
                if ui.button("Browse output folder...").clicked() {
                    cmds.push(Command::Browse(DialogTarget::OutputFolder));
                }
            });
            ui.end_row();
        });
}

/// The run the form describes: training rows, steps, warm-up, and an ETA from measured steps.
fn plan_line(
    ui: &mut egui::Ui,
    app: &View,
    data: &Dataset,
    s: &Settings,
    layout: &mut LayoutState,
) {
    let cfg = s.train_config(None);
    let key = format!(
        "{}|{}|{:?}|{}|{}|{}|{}",
        data.sha256,
        data.len(),
        cfg.loss,
        cfg.epochs,
        cfg.batch_size,
        cfg.val_split,
        cfg.seed
    ) + &format!("|{}", cfg.max_negatives);
    if layout
        .fine_tune_plan
        .as_ref()
        .is_none_or(|(k, ..)| *k != key)
    {
        let (train, _) = split_rows_by_query(&data.triplets, cfg.val_split, cfg.seed);
        let rows: Vec<_> = train.iter().map(|&i| data.triplets[i].clone()).collect();
        let steps = planned_steps(&rows, &cfg);
        layout.fine_tune_plan = Some((key, train.len(), steps));
    }
    let Some((_, train_rows, steps)) = layout.fine_tune_plan.clone() else {
        return;
    };
    let warm = warmup_steps(steps, cfg.warmup_ratio);
    let mut text = format!(
        "Plan: {steps} steps ({} epochs of batches of {}) on {train_rows} training triplets, {} held out; warm-up {warm} steps; seed {}; texts cut to {} tokens.",
        cfg.epochs,
        cfg.batch_size,
        data.len() - train_rows,
        cfg.seed,
        cfg.max_seq_len
    );
    match app.train_log.secs_per_step() {
        Some(per) => text.push_str(&format!(
            " About {} at the {per:.2} s per step measured last (plus validations).",
            format_secs(per * steps as f64)
        )),
        None => text.push_str(" The time per step is measured on the first steps."),
    }
    ui.add(egui::Label::new(text).wrap());
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
        ui.weak("Curves appear here once the first step is done.");
        return;
    }
    ui.horizontal_wrapped(|ui| {
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
    let best = log.best_eval().map(|e| e.step);
    if let Some(b) = best {
        ui.weak(format!(
            "Dashed line: the checkpoint kept, step {b} (best validation {BEST_METRIC}{})",
            if b == 0 {
                ", the base model: no step improved on it yet"
            } else {
                ""
            }
        ));
    }
    let x_max = log.total_steps.max(1) as f64;
    let link = ui.scope_id().with("train_x");
    let height = ((ui.available_height() - 60.0) / 2.6).max(110.0);
    let losses: Vec<f64> = log.steps.iter().map(|s| s.loss).collect();
    let smooth = debiased_ema(&losses, *smoothing);
    // Every plot: the same x range, left margin and hover read-out; room above and below the
    // curves so nothing is clipped at the edge.
    let base = |id: &str, h: f32| {
        Plot::new(id)
            .height(h)
            .link_axis(link, [true, false])
            .link_cursor(link, [true, false])
            .y_axis_min_width(64.0)
            .include_x(0.0)
            .include_x(x_max)
            .set_margin_fraction(egui::vec2(0.02, 0.12))
            .allow_scroll(false)
            .y_grid_spacer(|g| round_marks(g, 4))
            .x_axis_formatter(|m, _| format!("{:.0}", m.value))
    };
    let best_line = |plot: &mut egui_plot::PlotUi<'_>| {
        if let Some(b) = best {
            plot.vline(
                VLine::new(format!("kept: step {b}"), b as f64)
                    .color(Color32::from_rgb(120, 120, 120))
                    .style(egui_plot::LineStyle::dashed_loose()),
            );
        }
    };
    // Before the first step: 0..1, not a placeholder range.
    let loss_max = if losses.is_empty() {
        1.0
    } else {
        losses.iter().copied().fold(0.0, f64::max).max(1e-3)
    };
    base("loss", height)
        .legend(Legend::default().position(Corner::RightTop))
        .include_y(0.0)
        // Head room: the legend sits above the curves, never on them.
        .include_y(loss_max * 1.6)
        .y_axis_label("loss")
        .y_axis_formatter(|m, _| tick_label(m.value, m.step_size))
        .label_formatter(|p| hover("loss", p, |v| format!("{v:.4}")))
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
            best_line(plot);
        });
    let lr_max = if log.steps.is_empty() {
        1e-4
    } else {
        log.steps.iter().map(|s| s.lr).fold(0.0, f64::max).max(1e-9)
    };
    base("lr", height * 0.6)
        .include_y(0.0)
        .include_y(lr_max * 1.1)
        .y_axis_label("learning rate")
        .y_axis_formatter(|m, _| {
            if m.value == 0.0 {
                "0".into()
            } else {
                format!("{:.1e}", m.value)
            }
        })
        .label_formatter(|p| hover("learning rate", p, |v| format!("{v:.2e}")))
        .show(ui, |plot| {
            let pts: PlotPoints = log.steps.iter().map(|s| [s.step as f64, s.lr]).collect();
            plot.line(Line::new("learning rate", pts).color(Color32::from_rgb(200, 120, 40)));
            best_line(plot);
        });
    // The kept checkpoint's marker, in the text colour (visible on light and dark themes).
    let marker = ui.visuals().strong_text_color();
    let val_values = || {
        log.evals
            .iter()
            .flat_map(|e| VAL_KEYS.iter().filter_map(|k| e.metrics.get(*k).copied()))
    };
    let val_lo = val_values().fold(1.0, f64::min);
    let val_hi = val_values().fold(val_lo, f64::max);
    base("validation", height)
        .legend(Legend::default().position(Corner::RightBottom))
        .include_y(val_hi)
        // Foot room: the legend sits below the curves, never on them.
        .include_y(val_lo - 0.8 * (val_hi - val_lo).max(0.02))
        .x_axis_label("step")
        .y_axis_label("validation")
        .y_axis_formatter(|m, _| tick_label(m.value, m.step_size))
        .label_formatter(|p| hover("validation", p, |v| format!("{v:.4}")))
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
            if let Some(e) = log.best_eval() {
                let v = e.metrics[BEST_METRIC];
                plot.points(
                    Points::new(
                        format!("kept: step {}", e.step),
                        PlotPoints::from(vec![[e.step as f64, v]]),
                    )
                    .shape(egui_plot::MarkerShape::Diamond)
                    .radius(7.0)
                    .filled(false)
                    .color(marker),
                );
            }
            best_line(plot);
        });
}

/// The hover read-out: the series, the step and the value near the pointer.
fn hover(
    axis: &str,
    p: &egui_plot::HoverPosition<'_>,
    fmt: impl Fn(f64) -> String,
) -> Option<String> {
    match p {
        egui_plot::HoverPosition::NearDataPoint {
            plot_name,
            position,
            ..
        } => Some(format!(
            "{}\nstep {:.0}\n{}",
            if plot_name.is_empty() {
                axis
            } else {
                plot_name
            },
            position.x,
            fmt(position.y)
        )),
        egui_plot::HoverPosition::Elsewhere { position } => Some(format!(
            "step {:.0}\n{axis} {}",
            position.x,
            fmt(position.y)
        )),
    }
}
