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
        "{}|{}|{:?}|{:?}|{}|{}|{}|{}",
        s.by_fine_tuned && has_ft,
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
    let shown = match after {
        Some(a) if s.by_fine_tuned => a,
        _ => before,
    };
    let scores = &shown.result.per_triplet;
    let mut rows: Vec<usize> = (0..scores.len())
        .filter(|&i| !s.wrong_only || !scores[i].is_correct())
        .filter(|&i| match (s.flip, after) {
            (Some(f), Some(a)) => {
                Flip::of(&before.result.per_triplet[i], &a.result.per_triplet[i]) == f
            }
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
    let split_of = app.experiments.split_of.as_deref();
    ui.horizontal_wrapped(|ui| {
        if after.is_some() {
            ui.label("Values of");
            ui.selectable_value(&mut s.by_fine_tuned, false, "zero-shot");
            ui.selectable_value(&mut s.by_fine_tuned, true, "fine-tuned");
            ui.separator();
        }
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
        ui.add(egui::TextEdit::singleline(&mut s.search).desired_width(140.0))
            .labelled_by(l.id);
        ui.label("Sort by");
        ui.selectable_value(&mut s.sort_by_rank, false, "margin (worst first)");
        ui.selectable_value(&mut s.sort_by_rank, true, "rank of positive (worst first)");
    });
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
    let shown = match after {
        Some(a) if s.by_fine_tuned => a,
        _ => before,
    };
    ui.label(format!(
        "{} of {} triplets; margins and ranks of the {} model",
        rows.len(),
        before.result.n_triplets,
        if std::ptr::eq(shown.as_ref(), before.as_ref()) {
            "zero-shot"
        } else {
            "fine-tuned"
        }
    ));
    // A triplet the filters hide leaves the detail pane.
    let visible = s.selected.filter(|i| rows.contains(i));
    // The details in a resizable pane: at the right, or below the list in narrow windows.
    let width = ui.available_width();
    let detail = |ui: &mut egui::Ui, s: &mut InspectorState, cmds: &mut Commands| match visible {
        Some(i) => details(ui, s, i, data, before, after, cmds),
        None => {
            ui.add(
                egui::Label::new(match s.selected {
                    Some(i) => format!(
                        "Triplet {i} is hidden by the filters: clear them to see it again, or select another."
                    ),
                    None => "Select a triplet to see why it ranks as it does.".into(),
                })
                .wrap(),
            );
        }
    };
    if width < 700.0 {
        egui::Panel::bottom("inspect_details")
            .resizable(true)
            .default_size(ui.available_height() * 0.55)
            .size_range(80.0..=ui.available_height() - 60.0)
            .show(ui, |ui| detail(ui, s, cmds));
    } else {
        egui::Panel::right("inspect_details")
            .resizable(true)
            .default_size(width * 0.5)
            .size_range(240.0..=width - 220.0)
            .show(ui, |ui| detail(ui, s, cmds));
    }
    table(ui, s, &rows, shown, data, split_of);
}

fn table(
    ui: &mut egui::Ui,
    s: &mut InspectorState,
    rows: &[usize],
    eval: &Evaluation,
    data: &Dataset,
    split_of: Option<&[SplitMark]>,
) {
    // A selectable button's own height, so the rows' layout and the scroll arithmetic agree.
    let row_h = (ui.text_style_height(&egui::TextStyle::Body)
        + 2.0 * ui.spacing().button_padding.y)
        .max(ui.spacing().interact_size.y);
    let mut area = egui::ScrollArea::vertical()
        .id_salt("inspector_rows")
        .auto_shrink([false, false]);
    if std::mem::take(&mut s.scroll_to_selected) {
        if let Some(k) = s.selected.and_then(|i| rows.iter().position(|&r| r == i)) {
            let spacing = ui.spacing().item_spacing.y;
            area =
                area.vertical_scroll_offset(((row_h + spacing) * k as f32 - 3.0 * row_h).max(0.0));
        }
    }
    area.show_rows(ui, row_h, rows.len(), |ui, range| {
        for &i in &rows[range] {
            let sc = &eval.result.per_triplet[i];
            let mark = if sc.is_correct() { "right" } else { "wrong" };
            let split = split_of.map_or("", |m| match m[i] {
                SplitMark::Train => ", train",
                SplitMark::HeldOut => ", held-out",
            });
            let text = format!(
                "{mark} #{i}{split} | margin {:+.3} | pos rank {} | {}",
                sc.margin,
                sc.rank_pos,
                super::preview(&data.triplets[i].query, 80)
            );
            // The whole row is the button.
            let r = ui.add_sized(
                [ui.available_width(), row_h],
                egui::Button::selectable(s.selected == Some(i), text).truncate(),
            );
            if r.clicked() {
                s.selected = Some(i);
            }
        }
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
            ui.heading(format!("Triplet {i}"));
            ui.weak(format!(
                "{} of {} (rows 0-based as the CLI and the exports number them, lines 1-based)",
                data.location(i),
                data.path.display()
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
                    let q = e.index.query_of_triplet[i];
                    let own = if doc == e.index.neg_doc[i] {
                        "this triplet's negative".to_string()
                    } else if is_neg {
                        format!("negative of triplet {ti}")
                    } else if e.index.relevant[q].contains(&doc) {
                        format!("another positive of this query (triplet {ti})")
                    } else {
                        format!("positive of triplet {ti}")
                    };
                    ui.horizontal_wrapped(|ui| {
                        if ui
                            .small_button(format!("#{ti}"))
                            .on_hover_text("Inspect that triplet")
                            .clicked()
                        {
                            commands.push(Command::Inspect(ti));
                        }
                        ui.add(
                            egui::Label::new(format!(
                                "{score:.4}, {own}: {}",
                                super::preview(text, 160)
                            ))
                            .wrap(),
                        );
                    });
                }
            }
        });
}
