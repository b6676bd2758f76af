//! Hard-negative mining and its review: the parameters and the run, then a table of every mined
//! negative (score, rank, margin to the positive, flag) and the details of the selected one (the
//! query, its positive, its own negative, the mined text); accept or reject each (keyboard: Up/Down
//! or J/K move, A accepts, R rejects, Space toggles), reject the flagged ones or those above a
//! score in one click, and export the accepted rows to train on.

use eframe::egui::{self, Color32, RichText};

use crate::core::mining::{SUSPECT_MARGIN, SUSPECT_OVERLAP};
use crate::gui::app::{
    Command, Commands, DialogTarget, JobKind, MiningResult, MiningReview, ReviewFilter, Settings,
    View,
};

const FLAG: Color32 = Color32::from_rgb(220, 140, 40);
const REJECTED: Color32 = Color32::from_rgb(200, 70, 70);

/// Draws the panel.
pub fn show(
    ui: &mut egui::Ui,
    app: &View,
    s: &mut Settings,
    review: &mut MiningReview,
    cmds: &mut Commands,
) {
    let Some(data) = app.dataset else {
        super::needs_embedding(ui, app, cmds);
        return;
    };
    // Small windows scroll the whole panel, so the table keeps a usable height.
    egui::ScrollArea::vertical()
        .id_salt("mining_panel")
        .show(ui, |ui| panel(ui, app, data, s, review, cmds));
}

fn panel(
    ui: &mut egui::Ui,
    app: &View,
    data: &crate::core::data::Dataset,
    s: &mut Settings,
    review: &mut MiningReview,
    cmds: &mut Commands,
) {
    ui.heading("Mining: hard negatives from the corpus")
        .on_hover_text(format!(
            "Each distinct query of the file is scored against the corpus (the file's {} \
             documents{}) with the model on the left; candidates too close to the positive are \
             dropped (they may be relevant: false negatives), and the best of the rest become new \
             negatives (sentence-transformers' mine_hard_negatives).",
            app.data_stats
                .map(|d| d.distinct_documents.to_string())
                .unwrap_or_else(|| "distinct".into()),
            if s.mining.corpus.is_empty() {
                String::new()
            } else {
                format!(" and {} extra file(s)", s.mining.corpus.len())
            }
        ));
    ui.weak(
        "New negatives for each query from the corpus, ranked by the model on the left; those \
         too close to the positive are dropped (they may be relevant). Hover the title for more.",
    );
    parameters(ui, app, s, cmds);
    if let Some(e) = &app.mining.error {
        ui.colored_label(Color32::from_rgb(220, 60, 60), e);
    }
    let Some(result) = &app.mining.result else {
        if !app.mining.running() {
            ui.weak(format!(
                "Press Mine. The file's {} triplets are embedded once (or read from the cache) \
                 and scored in blocks: memory stays bounded whatever the corpus size.",
                data.len()
            ));
        }
        return;
    };
    ui.separator();
    summary(ui, result, review);
    controls(ui, result, review, s, app, cmds);
    let rows = listed(result, review);
    let width = ui.available_width();
    let height = ui.available_height().max(280.0);
    keyboard(ui, review, rows.len(), &rows);
    ui.horizontal_top(|ui| {
        ui.set_height(height);
        ui.allocate_ui(egui::vec2(width * 0.45, height), |ui| {
            ui.set_width(width * 0.45);
            table(ui, result, review, &rows);
        });
        ui.separator();
        ui.vertical(|ui| match rows.get(review.selected) {
            Some(&(q, k)) => details(ui, result, review, q, k),
            None => {
                ui.label("No mined negative matches the filter.");
            }
        });
    });
}

fn parameters(ui: &mut egui::Ui, app: &View, s: &mut Settings, cmds: &mut Commands) {
    let m = &mut s.mining;
    ui.horizontal_wrapped(|ui| {
        super::labelled_drag(ui, "Negatives per query", &mut m.num_negatives, 1..=50);
        super::labelled_drag(ui, "Skip the top", &mut m.range_min, 0..=1000);
        super::labelled_drag(ui, "Consider the top", &mut m.range_max, 1..=10_000)
            .on_hover_text("range_max: candidates considered per query (after removing its positives)");
        ui.checkbox(&mut m.use_relative_margin, "Relative margin")
            .on_hover_text("Drop candidates scoring above positive × (1 − margin) (NV-Retriever); 0.05 is a good start");
        if m.use_relative_margin {
            ui.add(egui::DragValue::new(&mut m.relative_margin).range(0.0..=1.0).speed(0.005));
        }
        ui.checkbox(&mut m.use_absolute_margin, "Absolute margin")
            .on_hover_text("Drop candidates whose score + margin exceeds the positive's");
        if m.use_absolute_margin {
            ui.add(egui::DragValue::new(&mut m.absolute_margin).range(0.0..=2.0).speed(0.005));
        }
        ui.checkbox(&mut m.random, "Random among them")
            .on_hover_text("A seeded random choice among the candidates left, instead of the top ones");
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("Extra corpus:");
        if m.corpus.is_empty() {
            ui.weak("none");
        }
        for path in &m.corpus {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| path.display().to_string());
            if ui
                .small_button(format!("{name} (remove)"))
                .on_hover_text(format!("{}: click to remove", path.display()))
                .clicked()
            {
                cmds.push(Command::RemoveCorpus(path.clone()));
            }
        }
        if ui
            .button("Add file...")
            .on_hover_text(
                "A triplet file (its documents) or a .txt file with one document per line",
            )
            .clicked()
        {
            cmds.push(Command::Browse(DialogTarget::CorpusFile));
        }
        ui.separator();
        let running = app.is_running(JobKind::Mine);
        if running {
            if ui.button("Stop").clicked() {
                cmds.push(Command::Cancel(JobKind::Mine));
            }
        } else if ui
            .add_enabled(!app.is_running(JobKind::Load), egui::Button::new("Mine"))
            .clicked()
        {
            cmds.push(Command::StartMining);
        }
    });
    if let Some(p) = &app.mining.progress {
        super::progress_bar(ui, p);
    } else if app.is_running(JobKind::Mine) {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Loading the model...");
        });
    }
}

fn summary(ui: &mut egui::Ui, r: &MiningResult, review: &MiningReview) {
    let s = &r.summary;
    let accepted: usize = review.accepted.iter().flatten().filter(|a| **a).count();
    let model = r
        .model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(&r.model);
    ui.label(format!(
        "{} negatives for {} queries from {} documents ({} of the file, {} extra), mined with {} \
         in {:.1} s. Mean cosine: mined {:.3}, the file's own negatives {:.3}.",
        s.negatives,
        s.queries,
        s.corpus,
        s.file_docs,
        s.corpus - s.file_docs,
        model,
        r.seconds,
        s.mean_mined_score,
        s.mean_original_score
    ));
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("{accepted} accepted")).strong());
        ui.label(format!("{} rejected", s.negatives - accepted));
        if s.suspects > 0 {
            ui.label(
                RichText::new(format!(
                    "{} flagged as likely false negatives (within {SUSPECT_MARGIN} of the \
                     positive's score, or sharing {:.0} % of its words)",
                    s.suspects,
                    100.0 * SUSPECT_OVERLAP
                ))
                .color(FLAG),
            );
        }
        if s.short_queries > 0 {
            ui.weak(format!(
                "{} queries got fewer than {} (too few candidates passed the margins)",
                s.short_queries, r.mined.config.num_negatives
            ));
        }
    });
}

fn controls(
    ui: &mut egui::Ui,
    r: &MiningResult,
    review: &mut MiningReview,
    s: &mut Settings,
    app: &View,
    cmds: &mut Commands,
) {
    ui.horizontal_wrapped(|ui| {
        ui.label("Show");
        for (f, name) in [
            (ReviewFilter::All, "all"),
            (ReviewFilter::Flagged, "flagged"),
            (ReviewFilter::Rejected, "rejected"),
        ] {
            if ui.selectable_label(review.filter == f, name).clicked() {
                review.filter = f;
                review.selected = 0;
            }
        }
        ui.separator();
        let flagged = count(r, |q, k| r.flags[q][k].is_some());
        if ui
            .add_enabled(flagged > 0, egui::Button::new(format!("Reject flagged ({flagged})")))
            .clicked()
        {
            set_where(r, review, |q, k| r.flags[q][k].is_some(), false);
        }
        let above = review.reject_above;
        let n_above = count(r, |q, k| r.mined.per_query[q].negatives[k].score > above);
        if ui
            .button(format!("Reject scores above {above:.3} ({n_above})"))
            .on_hover_text("Rejects every mined negative whose cosine to its query is above the threshold")
            .clicked()
        {
            set_where(r, review, |q, k| r.mined.per_query[q].negatives[k].score > above, false);
        }
        ui.add(
            egui::DragValue::new(&mut review.reject_above)
                .range(-1.0..=1.0)
                .speed(0.005)
                .fixed_decimals(3),
        )
        .on_hover_text("The threshold: drag or type");
        if ui.button("Accept all").clicked() {
            set_where(r, review, |_, _| true, true);
        }
        ui.separator();
        ui.checkbox(&mut s.mining.export_with_file_rows, "with the file's own rows")
            .on_hover_text("Export the file's triplets too, so each query trains on its own negative and the accepted mined ones (set Negatives per example in Fine-tune)");
        if ui.button("Export accepted...").clicked() {
            cmds.push(Command::Browse(DialogTarget::MinedExport));
        }
        if let Some(path) = &app.mining.exported {
            if ui
                .button("Open the export")
                .on_hover_text(format!("Open {} as the triplet file, to fine-tune on it", path.display()))
                .clicked()
            {
                cmds.push(Command::OpenFile(path.clone()));
            }
        }
    });
    ui.weak("Keys: Up/Down or J/K move, A accept, R reject, Space toggle.");
}

fn count(r: &MiningResult, pred: impl Fn(usize, usize) -> bool) -> usize {
    r.mined
        .per_query
        .iter()
        .enumerate()
        .map(|(q, m)| (0..m.negatives.len()).filter(|&k| pred(q, k)).count())
        .sum()
}

fn set_where(
    r: &MiningResult,
    review: &mut MiningReview,
    pred: impl Fn(usize, usize) -> bool,
    accept: bool,
) {
    for (q, m) in r.mined.per_query.iter().enumerate() {
        for k in 0..m.negatives.len() {
            if pred(q, k) {
                review.accepted[q][k] = accept;
            }
        }
    }
    review.rows = None;
}

/// The (query, negative) pairs the filter lists, in query order.
fn listed(r: &MiningResult, review: &mut MiningReview) -> Vec<(usize, usize)> {
    if let Some((f, rows)) = &review.rows {
        if *f == review.filter {
            return rows.clone();
        }
    }
    let rows: Vec<(usize, usize)> = r
        .mined
        .per_query
        .iter()
        .enumerate()
        .flat_map(|(q, m)| (0..m.negatives.len()).map(move |k| (q, k)))
        .filter(|&(q, k)| match review.filter {
            ReviewFilter::All => true,
            ReviewFilter::Flagged => r.flags[q][k].is_some(),
            ReviewFilter::Rejected => !review.accepted[q][k],
        })
        .collect();
    review.rows = Some((review.filter, rows.clone()));
    rows
}

fn keyboard(ui: &mut egui::Ui, review: &mut MiningReview, n: usize, rows: &[(usize, usize)]) {
    if n == 0 || ui.ctx().egui_wants_keyboard_input() {
        return;
    }
    let (down, up, accept, reject, toggle) = ui.input(|i| {
        (
            i.key_pressed(egui::Key::ArrowDown) || i.key_pressed(egui::Key::J),
            i.key_pressed(egui::Key::ArrowUp) || i.key_pressed(egui::Key::K),
            i.key_pressed(egui::Key::A),
            i.key_pressed(egui::Key::R),
            i.key_pressed(egui::Key::Space),
        )
    });
    review.selected = review.selected.min(n - 1);
    let (q, k) = rows[review.selected];
    if accept || reject || toggle {
        let v = &mut review.accepted[q][k];
        *v = if toggle { !*v } else { accept };
        // The rejected filter's list changes; the others keep their rows.
        if review.filter == ReviewFilter::Rejected {
            review.rows = None;
        } else if review.selected + 1 < n {
            review.selected += 1;
        }
    }
    if down && review.selected + 1 < n {
        review.selected += 1;
    }
    if up && review.selected > 0 {
        review.selected -= 1;
    }
}

fn table(ui: &mut egui::Ui, r: &MiningResult, review: &mut MiningReview, rows: &[(usize, usize)]) {
    let row_h = ui.text_style_height(&egui::TextStyle::Body) + 6.0;
    ui.vertical(|ui| {
        ui.label(format!("{} mined negatives listed", rows.len()));
        egui::ScrollArea::both().id_salt("mining_rows").show_rows(
            ui,
            row_h,
            rows.len(),
            |ui, range| {
                egui::Grid::new("mining_grid")
                    .striped(true)
                    .num_columns(6)
                    .show(ui, |ui| {
                        for at in range {
                            let (q, k) = rows[at];
                            let n = &r.mined.per_query[q].negatives[k];
                            let accepted = review.accepted[q][k];
                            let mark = if accepted { "kept" } else { "rejected" };
                            let label = RichText::new(format!("q{q} #{} {mark}", k + 1));
                            let label = if accepted {
                                label
                            } else {
                                label.color(REJECTED)
                            };
                            if ui.selectable_label(review.selected == at, label).clicked() {
                                review.selected = at;
                            }
                            ui.label(format!("cos {:.3}", n.score));
                            ui.label(format!("rank {}", n.rank));
                            ui.label(format!("margin {:.3}", n.margin));
                            if r.flags[q][k].is_some() {
                                ui.label(RichText::new("flagged").color(FLAG));
                            } else {
                                ui.label("");
                            }
                            ui.weak(super::preview(&r.mined.corpus[n.doc], 40));
                            ui.end_row();
                        }
                    });
            },
        );
    });
}

fn details(ui: &mut egui::Ui, r: &MiningResult, review: &mut MiningReview, q: usize, k: usize) {
    let m = &r.mined.per_query[q];
    let n = &m.negatives[k];
    egui::ScrollArea::vertical()
        .id_salt("mining_details")
        .show(ui, |ui| {
            ui.heading(format!("Query {q}, mined negative {} of {}", k + 1, m.negatives.len()));
            ui.horizontal(|ui| {
                let accepted = &mut review.accepted[q][k];
                if ui.selectable_label(*accepted, "Accept (A)").clicked() {
                    *accepted = true;
                    review.rows = None;
                }
                if ui.selectable_label(!*accepted, "Reject (R)").clicked() {
                    *accepted = false;
                    review.rows = None;
                }
            });
            if let Some(why) = &r.flags[q][k] {
                ui.label(RichText::new(format!("Likely a false negative: {why}")).color(FLAG));
            }
            ui.add_space(4.0);
            ui.strong("Query");
            ui.label(&r.mined.queries[q]);
            for &(p, score) in &m.positives {
                ui.add_space(4.0);
                ui.strong(format!("Positive (cos {score:.3})"));
                ui.label(&r.mined.corpus[p]);
            }
            ui.add_space(4.0);
            ui.strong(format!(
                "Mined negative: cos {:.3}, rank {} among all documents, {:.3} below the positive{}",
                n.score,
                n.rank,
                n.margin,
                if n.doc >= r.mined.file_docs { " (from the extra corpus)" } else { "" }
            ));
            ui.label(&r.mined.corpus[n.doc]);
            for &(d, score) in &r.mined.original_negatives[q] {
                ui.add_space(4.0);
                ui.strong(format!("The file's own negative (cos {score:.3})"));
                ui.label(&r.mined.corpus[d]);
            }
        });
}
