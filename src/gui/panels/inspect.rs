//! The inspector: triplets (mis-ranked first), sortable and filterable, and the details of one:
//! full texts, both models' similarities, the rank of its positive, the documents that outrank
//! it, and whether its texts were cut at the model's max length.

use std::sync::Arc;

use eframe::egui::{self, RichText};

use crate::core::data::{Dataset, TextSearch};
use crate::core::metrics::{outranking, Flip};
use crate::core::pipeline::Evaluation;
use crate::gui::app::{Command, Commands, InspectorState, SplitMark, View};

/// How many outranking documents are listed.
const OUTRANKING_SHOWN: usize = 20;

/// A key for the filtered list, so it is recomputed only when something changes.
fn filter_key(s: &InspectorState, has_ft: bool, has_split: bool) -> String {
    format!(
        "{}|{:?}|{:?}|{}|{}|{}|{}",
        s.wrong_only,
        s.flip,
        s.split,
        s.search.to_lowercase(),
        s.sort_by_rank,
        has_ft,
        has_split
    )
}

/// The triplets passing the filters, sorted.
pub(crate) fn filtered_rows(
    s: &InspectorState,
    search: &TextSearch,
    before: &Evaluation,
    after: Option<&Evaluation>,
    split_of: Option<&[SplitMark]>,
) -> Vec<usize> {
    let found = search.matches(&s.search);
    let scores = &before.result.per_triplet;
    let mut rows: Vec<usize> = (0..scores.len())
        .filter(|&i| !s.wrong_only || !scores[i].is_correct())
        .filter(|&i| match (s.flip, after) {
            (Some(f), Some(a)) => Flip::of(&scores[i], &a.result.per_triplet[i]) == f,
            _ => true,
        })
        .filter(|&i| found.get(i).copied().unwrap_or(true))
        .filter(|&i| match (s.split, split_of) {
            (Some(want), Some(marks)) => marks[i] == want,
            _ => true,
        })
        .collect();
    if s.sort_by_rank {
        rows.sort_by(|&a, &b| scores[b].rank_pos.cmp(&scores[a].rank_pos).then(a.cmp(&b)));
    } else {
        rows.sort_by(|&a, &b| {
            scores[a]
                .margin
                .total_cmp(&scores[b].margin)
                .then(a.cmp(&b))
        });
    }
    rows
}

/// Draws the panel.
pub fn show(ui: &mut egui::Ui, app: &View, s: &mut InspectorState, cmds: &mut Commands) {
    let (Some(before), Some(data)) = (app.zero_shot, app.dataset) else {
        super::needs_embedding(ui, app, cmds);
        return;
    };
    let after = app.fine_tuned;
    ui.horizontal(|ui| {
        ui.checkbox(&mut s.wrong_only, "Wrong only");
        if after.is_some() {
            egui::ComboBox::from_label("Flip")
                .selected_text(s.flip.map(|f| f.label()).unwrap_or("any"))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut s.flip, None, "any");
                    for f in Flip::ALL {
                        ui.selectable_value(&mut s.flip, Some(f), f.label());
                    }
                });
        }
        let split_of = app.experiments.split_of.as_deref();
        if split_of.is_some() {
            egui::ComboBox::from_label("Split")
                .selected_text(s.split.map(|m| m.label()).unwrap_or("any"))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut s.split, None, "any");
                    for m in [SplitMark::Train, SplitMark::HeldOut] {
                        ui.selectable_value(&mut s.split, Some(m), m.label());
                    }
                });
        }
        let l = ui.label("Search");
        ui.text_edit_singleline(&mut s.search).labelled_by(l.id);
        ui.label("Sort by");
        ui.selectable_value(&mut s.sort_by_rank, false, "margin (worst first)");
        ui.selectable_value(&mut s.sort_by_rank, true, "rank of positive (worst first)");
    });
    let split_of = app.experiments.split_of.as_deref();
    let key = filter_key(s, after.is_some(), split_of.is_some());
    if s.rows.as_ref().map(|(k, _)| k != &key).unwrap_or(true) {
        let search = app
            .text_search
            .cloned()
            .unwrap_or_else(|| Arc::new(TextSearch::new(data)));
        let rows = filtered_rows(s, &search, before, after.map(|a| a.as_ref()), split_of);
        s.rows = Some((key, rows));
    }
    let rows = s.rows.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
    ui.label(format!(
        "{} of {} triplets",
        rows.len(),
        before.result.n_triplets
    ));
    // A fixed-width table on the left (it scrolls and clips), the details on the right.
    let (width, height) = (ui.available_width(), ui.available_height());
    ui.horizontal_top(|ui| {
        ui.allocate_ui(egui::vec2(width * 0.45, height), |ui| {
            ui.set_width(width * 0.45);
            table(ui, &mut s.selected, &rows, before, data, split_of);
        });
        ui.separator();
        ui.vertical(|ui| match s.selected {
            Some(i) => details(ui, s, i, data, before, after, cmds),
            None => {
                ui.label("Select a triplet to see why it ranks as it does.");
            }
        });
    });
}

fn table(
    ui: &mut egui::Ui,
    selected: &mut Option<usize>,
    rows: &[usize],
    eval: &Evaluation,
    data: &Dataset,
    split_of: Option<&[SplitMark]>,
) {
    let row_h = ui.text_style_height(&egui::TextStyle::Body) + 6.0;
    egui::ScrollArea::vertical()
        .id_salt("inspector_rows")
        .show_rows(ui, row_h, rows.len(), |ui, range| {
            egui::Grid::new("inspector_grid")
                .striped(true)
                .num_columns(4)
                .show(ui, |ui| {
                    for &i in &rows[range] {
                        let s = &eval.result.per_triplet[i];
                        let mark = if s.is_correct() { "right" } else { "wrong" };
                        let split = split_of.map_or("", |m| match m[i] {
                            SplitMark::Train => " (train)",
                            SplitMark::HeldOut => " (held-out)",
                        });
                        let text = format!("{mark} #{i}{split}");
                        if ui.selectable_label(*selected == Some(i), text).clicked() {
                            *selected = Some(i);
                        }
                        ui.label(format!("margin {:+.3}", s.margin));
                        ui.label(format!("pos rank {}", s.rank_pos));
                        ui.label(super::preview(&data.triplets[i].query, 48));
                        ui.end_row();
                    }
                });
        });
}

fn details(
    ui: &mut egui::Ui,
    s: &mut InspectorState,
    i: usize,
    data: &Dataset,
    before: &Arc<Evaluation>,
    after: Option<&Arc<Evaluation>>,
    commands: &mut Commands,
) {
    let Some(t) = data.triplets.get(i) else {
        return;
    };
    egui::ScrollArea::vertical()
        .id_salt("inspector_details")
        .show(ui, |ui| {
            ui.heading(format!(
                "Triplet {i} (row {} of the file)",
                data.source_rows[i]
            ));
            let evals: Vec<(&str, &Arc<Evaluation>)> = std::iter::once(("zero-shot", before))
                .chain(after.map(|a| ("fine-tuned", a)))
                .collect();
            egui::Grid::new("scores").striped(true).show(ui, |ui| {
                for h in [
                    "model",
                    "cos(q,pos)",
                    "cos(q,neg)",
                    "margin",
                    "rank of pos",
                    "rank of neg",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for (name, e) in &evals {
                    let sc = &e.result.per_triplet[i];
                    ui.label(*name);
                    ui.label(format!("{:.4}", sc.cos_pos));
                    ui.label(format!("{:.4}", sc.cos_neg));
                    ui.label(RichText::new(format!("{:+.4}", sc.margin)).color(
                        if sc.is_correct() {
                            egui::Color32::from_rgb(40, 170, 70)
                        } else {
                            egui::Color32::from_rgb(220, 60, 60)
                        },
                    ));
                    ui.label(format!("{} of {}", sc.rank_pos, e.result.n_corpus));
                    ui.label(sc.rank_neg.to_string());
                    ui.end_row();
                }
            });
            let counts = &before.embeddings.token_counts[i];
            for ((label, text), c) in [
                ("Query", &t.query),
                ("Positive", &t.pos),
                ("Negative", &t.negative),
            ]
            .iter()
            .zip(counts)
            {
                ui.add_space(6.0);
                let cut = if c.truncated {
                    format!(", cut to {} tokens", before.max_seq_len)
                } else {
                    String::new()
                };
                ui.strong(format!("{label} ({} tokens{cut})", c.tokens));
                ui.label(text.as_str());
            }
            for (name, e) in &evals {
                let fine = *name == "fine-tuned";
                let q = e.index.query_of_triplet[i];
                let pos = e.index.pos_doc[i];
                let cached = s.outranking.iter().position(|(k, _)| *k == (i, fine));
                let list = match cached {
                    Some(k) => s.outranking[k].1.clone(),
                    None => {
                        let l = outranking(&e.index, q, pos, OUTRANKING_SHOWN);
                        s.outranking.push(((i, fine), l.clone()));
                        if s.outranking.len() > 8 {
                            s.outranking.remove(0);
                        }
                        l
                    }
                };
                ui.add_space(8.0);
                ui.strong(format!("Documents ranked above the positive ({name})"));
                if list.is_empty() {
                    ui.label("None: the positive is ranked first.");
                }
                for (doc, score) in list {
                    let (ti, is_neg) = e.index.doc_origin[doc];
                    let text = if is_neg {
                        &data.triplets[ti].negative
                    } else {
                        &data.triplets[ti].pos
                    };
                    let own = if doc == e.index.neg_doc[i] {
                        " (this triplet's negative)"
                    } else {
                        ""
                    };
                    ui.horizontal_wrapped(|ui| {
                        if ui
                            .small_button(format!("#{ti}"))
                            .on_hover_text("Inspect that triplet")
                            .clicked()
                        {
                            commands.push(Command::Inspect(ti));
                        }
                        ui.label(format!("{score:.4}{own}: {}", super::preview(text, 160)));
                    });
                }
            }
        });
}
