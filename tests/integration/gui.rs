//! GUI flows on the real `App` with the tiny model, driven by egui_kittest: open, embed, metrics,
//! fine-tune with live loss points and Stop, compare, inspector, heatmap, and a bad file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use tripletlab::core::model::tiny::TinySpec;
use tripletlab::gui::plots::colormap;
use tripletlab::gui::{App, AppOptions, Command, Tab};

use crate::common::{dev_triplets, tiny_model};

pub(crate) struct Fixture {
    _model: tempfile::TempDir,
    pub(crate) model: PathBuf,
    pub(crate) work: tempfile::TempDir,
    pub(crate) data: PathBuf,
}

pub(crate) fn fixture(n: usize) -> Fixture {
    let model = tiny_model(&TinySpec::default());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("triplets.json");
    std::fs::write(&data, serde_json::to_string(&dev_triplets(n)).unwrap()).unwrap();
    let path = model.path().to_path_buf();
    Fixture {
        _model: model,
        model: path,
        work,
        data,
    }
}

/// The app on the fixture; a trained model unsaved at close goes to `recovered/` in its folder.
fn harness(f: &Fixture) -> Harness<'static, App> {
    let options = AppOptions {
        data: Some(f.data.clone()),
        model: Some(f.model.display().to_string()),
        recovery_dir: Some(f.work.path().join("recovered")),
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .build_eframe(move |cc| App::new(cc, options));
    h.state_mut().settings.use_cache = false;
    h
}

/// A test renderer that keeps every texture the app uploads, to check what a panel drew.
#[derive(Clone, Default)]
struct Uploads(std::sync::Arc<std::sync::Mutex<Vec<egui::ColorImage>>>);

impl egui_kittest::TestRenderer for Uploads {
    fn handle_delta(&mut self, delta: &mut egui::TexturesDelta) {
        for deltas in std::mem::take(&mut delta.set).into_values() {
            for d in deltas {
                let egui::ImageData::Color(img) = d.image;
                self.0.lock().unwrap().push((*img).clone());
            }
        }
    }
}

/// The app on the fixture, keeping the textures it uploads.
fn harness_with_uploads(f: &Fixture) -> (Harness<'static, App>, Uploads) {
    let options = AppOptions {
        data: Some(f.data.clone()),
        model: Some(f.model.display().to_string()),
        recovery_dir: Some(f.work.path().join("recovered")),
        ..Default::default()
    };
    let uploads = Uploads::default();
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .renderer(uploads.clone())
        .build_eframe(move |cc| App::new(cc, options));
    h.state_mut().settings.use_cache = false;
    (h, uploads)
}

/// Steps frames until `done` holds (or fails after a minute).
pub(crate) fn step_until(h: &mut Harness<'static, App>, what: &str, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

fn loaded_and_embedded(f: &Fixture) -> Harness<'static, App> {
    let mut h = harness(f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h.get_by_label("Embed").click();
    step_until(&mut h, "embedding", |a| a.zero_shot.is_some());
    h
}

#[test]
fn embed_fills_the_metrics_table_with_the_core_values() {
    let f = fixture(40);
    let mut h = loaded_and_embedded(&f);
    assert_eq!(h.state().tab, Tab::Metrics);
    let expected = {
        let opts = h.state().settings.encoder_options();
        let src = tripletlab::core::model::ModelSource::Dir(f.model.clone());
        crate::common::quiet(|ctx| {
            tripletlab::core::pipeline::evaluate_model(&src, &opts, &dev_triplets(40), None, ctx)
        })
        .unwrap()
    };
    let got = &h.state().zero_shot.as_ref().unwrap().result.metrics;
    assert_eq!(got, &expected.result.metrics);
    h.step();
    assert!(h.query_by_label("share of triplets ranked right").is_some());
    h.get_by_label("K = 10").click();
    h.step();
    assert_eq!(h.state().settings.top_k, 10, "the K selector");
    for key in ["cosine_accuracy", "cosine_ndcg@10", "neg_in_top_5"] {
        let text = format!("{:.4}", expected.result.metrics[key]);
        assert!(
            h.query_all_by_label(&text).next().is_some(),
            "the table does not show {key} = {text}"
        );
    }
}

/// The model panel's Arithmetic choice, clicked: bf16 embeds in bf16 (the panel says so and the
/// metrics are those of the core in bf16); on a CPU without AVX512-BF16 the choice is disabled.
#[test]
fn the_arithmetic_choice_embeds_in_bf16_and_says_so() {
    use tripletlab::core::backend::Compute;
    let f = fixture(30);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h.get_by_label("Arithmetic").click();
    h.step();
    h.step();
    h.get_by_label("bf16 (faster)").click();
    h.step();
    h.step();
    if Compute::Bf16.check().is_err() {
        assert_eq!(
            h.state().settings.compute,
            Compute::F32,
            "a disabled choice"
        );
        return;
    }
    assert_eq!(h.state().settings.compute, Compute::Bf16);
    h.get_by_label("Embed").click();
    step_until(&mut h, "embedding", |a| a.zero_shot.is_some());
    assert_eq!(h.state().zero_shot.as_ref().unwrap().compute, Compute::Bf16);
    assert!(h.query_by_label("Computed in bf16").is_some());
    let opts = h.state().settings.encoder_options();
    assert_eq!(opts.compute, Compute::Bf16);
    let src = tripletlab::core::model::ModelSource::Dir(f.model.clone());
    let want = crate::common::quiet(|ctx| {
        tripletlab::core::pipeline::evaluate_model(&src, &opts, &dev_triplets(30), None, ctx)
    })
    .unwrap();
    let got = &h.state().zero_shot.as_ref().unwrap().result.metrics;
    assert_eq!(got, &want.result.metrics);
}

#[test]
fn fine_tune_streams_loss_points_stop_works_and_compare_shows_deltas_and_flips() {
    let f = fixture(40);
    let mut h = loaded_and_embedded(&f);
    let out = f.work.path().join("ft-model");
    h.get_by_label("Fine-tune").click();
    h.step();
    h.step();
    // The form, as a user (or a screen reader) sets it.
    h.get_by_label("Epochs").set_value_accesskit(100.0);
    h.get_by_label("Training batch size")
        .set_value_accesskit(4.0);
    h.get_by_label("Learning rate").set_value_accesskit(1e-3);
    h.step();
    h.get_by_label("Save to").click();
    h.step();
    h.get_by_label("Save to")
        .type_text(&out.display().to_string());
    h.step();
    {
        let t = &h.state().settings.train;
        assert_eq!(
            (t.epochs, t.batch_size, t.lr),
            (100, 4, 1e-3),
            "the form did not take"
        );
        assert_eq!(t.out_dir, out.display().to_string());
    }
    h.get_by_label("Start fine-tuning").click();
    step_until(&mut h, "the first loss points", |a| {
        a.train_log.steps.len() >= 3
    });
    h.get_by_label("Stop").click();
    step_until(&mut h, "the stop", |a| {
        a.fine_tuned.is_some()
            || a.train_log
                .finished
                .as_deref()
                .is_some_and(|m| m.starts_with("Failed"))
    });
    let app = h.state();
    let done = app.train_log.steps.len();
    assert!(
        done < app.train_log.total_steps,
        "Stop did not stop ({done} of {} steps)",
        app.train_log.total_steps
    );
    let msg = app.train_log.finished.clone().unwrap();
    assert!(msg.contains("stopped after step"), "{msg}");
    assert!(out.join("model.safetensors").is_file());

    h.get_by_label("Compare").click();
    step_until(&mut h, "the comparison", |a| {
        a.experiments.comparison.is_some()
    });
    h.step();
    // Measured on the held-out rows by default, and it says so with the counts.
    let (note, n_held, delta) = {
        let app = h.state();
        let c = app.experiments.comparison.as_ref().unwrap();
        assert_eq!(c.rows.subset, tripletlab::core::pipeline::Subset::HeldOut);
        let record = app.experiments.record.as_ref().expect("the run record");
        let tripletlab::core::pipeline::record::Split::HeldOut {
            held_out_rows,
            train_rows,
            ..
        } = &record.split
        else {
            panic!("{:?}", record.split)
        };
        assert_eq!(c.a.n_triplets, held_out_rows.len());
        assert!(held_out_rows.len() < 40 && train_rows.len() + held_out_rows.len() == 40);
        (
            c.rows.note.clone(),
            held_out_rows.len(),
            c.deltas["cosine_ndcg@10"],
        )
    };
    assert!(
        note.contains(&format!("measured on {n_held} held-out")),
        "{note}"
    );
    assert!(
        h.query_by_label(&note).is_some(),
        "the note is not shown: {note}"
    );
    // Each difference with its interval.
    let text = format!(
        "{:+.4} [{:+.3}, {:+.3}]",
        delta.delta, delta.ci95[0], delta.ci95[1]
    );
    assert!(
        h.query_all_by_label(&text).next().is_some(),
        "no difference {text}"
    );
    let finished = h.state().train_log.finished.clone().unwrap();
    if finished.contains("unchanged base model (step 0)") {
        // The kept model is the base model: every difference is exactly zero, and it says so.
        assert_eq!((delta.delta, delta.ci95), (0.0, [0.0, 0.0]), "{finished}");
    } else {
        assert!(
            finished.contains("saved the best checkpoint (step"),
            "{finished}"
        );
    }
    // The flip counts shown are core's on the measured triplets, and each opens its triplets.
    let counts = {
        let c = h.state().experiments.comparison.clone().unwrap();
        tripletlab::core::metrics::flip_counts(&c.a.per_triplet, &c.b.per_triplet)
    };
    assert_eq!(counts.iter().sum::<usize>(), n_held);
    for (flip, n) in tripletlab::core::metrics::Flip::ALL.iter().zip(counts) {
        assert!(
            h.query_by_label(&format!("Show the {n} {}", flip.label()))
                .is_some(),
            "no row {} = {n}",
            flip.label()
        );
    }
    let (flip, n) = tripletlab::core::metrics::Flip::ALL
        .iter()
        .zip(counts)
        .find(|(_, n)| *n > 0)
        .unwrap();
    h.get_by_label(&format!("Show the {n} {}", flip.label()))
        .click();
    for _ in 0..3 {
        h.step();
    }
    assert_eq!(h.state().tab, Tab::Inspect);
    assert_eq!(h.state().inspector.flip, Some(*flip));
    h.get_by_label("Compare").click();
    h.step();
    h.step();
    // All triplets on request.
    h.get_by_label("all triplets").click();
    step_until(&mut h, "the comparison on all rows", |a| {
        a.experiments
            .comparison
            .as_ref()
            .is_some_and(|c| c.a.n_triplets == 40)
    });
}

#[test]
fn inspector_lists_a_misranked_triplet_and_what_outranks_it() {
    let f = fixture(60);
    let mut h = loaded_and_embedded(&f);
    let (wrong, rank) = {
        let r = &h.state().zero_shot.as_ref().unwrap().result;
        let i = (0..r.n_triplets)
            .find(|&i| r.per_triplet[i].rank_pos > 1 && !r.per_triplet[i].is_correct())
            .expect("a mis-ranked triplet");
        (i, r.per_triplet[i].rank_pos)
    };
    h.get_by_label("Inspect").click();
    h.step();
    h.step();
    h.get_by_label("Wrong only").click();
    h.step();
    h.step();
    assert!(h.state().inspector.wrong_only);
    h.get_by_label_contains(&format!("wrong #{wrong} |"))
        .click();
    h.step();
    h.step();
    assert_eq!(h.state().inspector.selected, Some(wrong));
    assert!(h
        .query_by_label("Documents ranked above the positive (zero-shot)")
        .is_some());
    let listed = &h.state().inspector.outranking[0].1;
    assert_eq!(
        listed.len(),
        (rank - 1).min(20),
        "outranking documents listed"
    );
    assert!(h
        .query_by_label_contains(&format!("{:.4}", listed[0].1))
        .is_some());
}

#[test]
fn heatmap_colours_match_the_values_and_only_the_window_is_computed() {
    let f = fixture(60);
    let (mut h, uploads) = harness_with_uploads(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h.get_by_label("Embed").click();
    step_until(&mut h, "embedding", |a| a.zero_shot.is_some());
    h.get_by_label("Heatmap").click();
    for _ in 0..3 {
        h.step();
    }
    assert_eq!(h.state().tab, Tab::Heatmap);
    assert_eq!(h.state().heatmap.windows_computed, 1);
    let entry = h.state().heatmap.cache.last().unwrap();
    assert_eq!((entry.rows, entry.cols), (50, 50));
    // The window is the cosine matrix of documents pos0, neg0, pos1, ... : check against the core.
    let eval = h.state().zero_shot.clone().unwrap();
    let d = &eval.embeddings;
    let cos = |a: &[f32], b: &[f32]| crate::common::cosine(a, b) as f32;
    assert!((entry.values[1] - cos(d.positives.row(0), d.negatives.row(0))).abs() < 1e-5);
    assert!((entry.values[50 * 3 + 2] - cos(d.negatives.row(1), d.positives.row(1))).abs() < 1e-5);
    // What the panel drew: the texture it uploaded, cell by cell, is the colour map of the values.
    let uploaded = uploads.0.lock().unwrap().clone();
    let drawn = uploaded
        .iter()
        .rfind(|img| img.size == [50, 50])
        .expect("the panel uploaded no 50 x 50 texture");
    let (lo, hi) = entry.scale;
    for (k, v) in entry.values.iter().enumerate() {
        assert_eq!(drawn.pixels[k], colormap((v - lo) / (hi - lo)), "cell {k}");
    }
    // Hovering a cell shows its value; clicking it opens the row's triplet in the inspector.
    let rect = h
        .get_by_label("Heatmap window: rows 0 to 49, columns 0 to 49")
        .rect();
    let cell = rect.width() / 50.0;
    let (r, c) = (7usize, 12usize);
    let at = rect.min + egui::vec2((c as f32 + 0.5) * cell, (r as f32 + 0.5) * cell);
    // Tooltips wait for the pointer to rest (in the input's clock, which the harness fixes).
    h.ctx.all_styles_mut(|s| s.interaction.tooltip_delay = 0.0);
    h.hover_at(at);
    h.step();
    h.step();
    let value = h.state().heatmap.cache.last().unwrap().values[r * 50 + c];
    assert!(
        h.query_by_label(&format!("cosine {value:.4}")).is_some(),
        "no read-out of cell ({r}, {c}) = {value:.4}"
    );
    h.event(egui::Event::PointerButton {
        pos: at,
        button: egui::PointerButton::Primary,
        pressed: true,
        modifiers: egui::Modifiers::NONE,
    });
    h.event(egui::Event::PointerButton {
        pos: at,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: egui::Modifiers::NONE,
    });
    for _ in 0..3 {
        h.step();
    }
    // Row 7 of the documents window is neg3 (pos0, neg0, pos1, neg1, ...): triplet 3.
    assert_eq!(h.state().tab, Tab::Inspect);
    assert_eq!(h.state().inspector.selected, Some(r / 2));
    // Moving the window computes that window only, once.
    h.get_by_label("Heatmap").click();
    h.step();
    h.state_mut().heatmap.row0 = 50;
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(h.state().heatmap.windows_computed, 2);
    assert_eq!(h.state().heatmap.cache.last().unwrap().key.2, 50);
}

#[test]
fn a_bad_file_shows_its_error() {
    let f = fixture(5);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    let bad = f.work.path().join("bad.json");
    std::fs::write(&bad, "[{\"query\": \"q\",\n \"pos\": ]").unwrap();
    h.state_mut().commands.push(Command::OpenFile(bad.clone()));
    h.step();
    step_until(&mut h, "the error", |a| !a.notifications.is_empty());
    let text = h.state().notifications.last().unwrap().text.clone();
    assert!(text.contains("bad.json:2:"), "{text}");
    assert!(h.query_by_label_contains("bad.json:2:").is_some());
    // The previous file stays open.
    assert_eq!(h.state().dataset.as_ref().unwrap().path, f.data);
}

#[test]
fn the_bad_input_corpus_shows_its_errors_in_the_app() {
    let f = fixture(5);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
        &std::fs::read(crate::common::fixture("bad/expected.json")).unwrap(),
    )
    .unwrap();
    for (name, expect) in expected {
        let path = crate::common::fixture(&format!("bad/{name}"));
        h.state_mut().notifications.clear();
        h.state_mut().commands.push(Command::OpenFile(path.clone()));
        h.step();
        step_until(&mut h, "the load", |a| {
            !a.is_running(tripletlab::gui::JobKind::Load)
        });
        let app = h.state();
        match expect.get("error") {
            Some(needles) => {
                let text = &app
                    .notifications
                    .last()
                    .unwrap_or_else(|| panic!("{name}: no notification"))
                    .text;
                for n in needles.as_array().unwrap() {
                    assert!(
                        text.contains(n.as_str().unwrap()),
                        "{name}: {text:?} lacks {n}"
                    );
                }
            }
            None => {
                let d = app.dataset.as_ref().unwrap();
                assert_eq!(d.path, path, "{name} was not opened");
                assert_eq!(d.len() as u64, expect["loaded"].as_u64().unwrap(), "{name}");
            }
        }
    }
}

/// Fine-tunes one epoch into a folder that cannot be created (it would lie under a regular
/// file), and steps until the save has failed or, wrongly, succeeded.
fn fine_tune_into_an_unwritable_folder(h: &mut Harness<'static, App>, f: &Fixture) {
    let blocker = f.work.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    {
        let s = &mut h.state_mut().settings.train;
        s.epochs = 1;
        s.batch_size = 8;
        s.out_dir = blocker.join("model").display().to_string();
    }
    h.get_by_label("Fine-tune").click();
    h.step();
    h.step();
    h.get_by_label("Start fine-tuning").click();
    step_until(h, "the failed save", |a| {
        a.unsaved.is_some() || a.fine_tuned.is_some()
    });
}

#[test]
fn a_failed_save_keeps_the_trained_model_and_it_can_be_saved_elsewhere() {
    let f = fixture(40);
    let mut h = loaded_and_embedded(&f);
    fine_tune_into_an_unwritable_folder(&mut h, &f);
    assert!(h.state().fine_tuned.is_none());
    let msg = h.state().notifications.last().unwrap().text.clone();
    assert!(
        msg.contains("Saving the fine-tuned model failed") && msg.contains("not-a-folder"),
        "{msg}"
    );

    let good = f.work.path().join("saved-here");
    h.state_mut().settings.train.out_dir = good.display().to_string();
    h.step();
    h.step();
    h.get_by_label("Save the trained model").click();
    step_until(&mut h, "the second save", |a| a.fine_tuned.is_some());
    assert!(h.state().unsaved.is_none());
    assert!(good.join("model.safetensors").is_file());
    assert_eq!(h.state().fine_tuned_path.as_deref(), Some(good.as_path()));
}

#[test]
fn closing_the_window_during_fine_tuning_saves_the_best_weights() {
    let f = fixture(40);
    let recovery = f.work.path().join("recovered");
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    let out = f.work.path().join("ft-model");
    {
        let s = &mut h.state_mut().settings.train;
        s.epochs = 500;
        s.batch_size = 4;
        s.lr = 1e-3;
        s.out_dir = out.display().to_string();
    }
    h.get_by_label("Fine-tune").click();
    h.step();
    h.step();
    h.get_by_label("Start fine-tuning").click();
    step_until(&mut h, "the first loss points", |a| {
        a.train_log.steps.len() >= 3
    });
    let start = Instant::now();
    eframe::App::on_exit(h.state_mut(), None);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(30), "closing took {took:?}");
    assert!(!h.state().is_running(tripletlab::gui::JobKind::FineTune));
    let card = std::fs::read_to_string(out.join("README.md")).expect("no model was saved");
    assert!(
        card.contains("library_name: sentence-transformers")
            && card.contains("saved checkpoint: step"),
        "{card}"
    );
    tripletlab::core::model::ModelFolder::open(&out, "saved").unwrap();
    assert!(!recovery.exists(), "nothing was unsaved");
}

#[test]
fn closing_the_window_with_an_unsaved_model_keeps_it_in_the_recovery_folder() {
    let f = fixture(40);
    let recovery = f.work.path().join("recovered");
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    fine_tune_into_an_unwritable_folder(&mut h, &f);
    assert!(h.state().unsaved.is_some());
    eframe::App::on_exit(h.state_mut(), None);
    let saved: Vec<_> = std::fs::read_dir(&recovery)
        .expect("no recovery folder")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    tripletlab::core::model::ModelFolder::open(&saved[0], "recovered").unwrap();
    drop(h);

    // The next start says where it is.
    let mut h = harness(&f);
    h.step();
    let shown = h
        .state()
        .notifications
        .iter()
        .any(|n| n.text.contains(&saved[0].display().to_string()));
    assert!(shown, "no notification about the recovered model");
}

#[test]
fn fine_tuning_proposes_a_fresh_folder_and_asks_before_replacing_one() {
    let f = fixture(40);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    // Every run gets a fresh numbered folder next to the data file.
    let proposed = h.state().default_output_dir().expect("a proposed folder");
    assert!(
        proposed.starts_with(f.work.path()),
        "{}",
        proposed.display()
    );
    assert!(
        proposed.display().to_string().ends_with("-fine-tuned-001"),
        "{}",
        proposed.display()
    );
    std::fs::create_dir_all(&proposed).unwrap();
    std::fs::write(proposed.join("keep.txt"), "earlier work").unwrap();
    // A folder that holds something is never replaced without asking.
    h.state_mut().settings.train.out_dir = proposed.display().to_string();
    h.get_by_label("Fine-tune").click();
    h.step();
    h.step();
    h.get_by_label("Start fine-tuning").click();
    h.step();
    h.step();
    assert!(!h.state().is_running(tripletlab::gui::JobKind::FineTune));
    assert!(h
        .query_by_label_contains("already exists and is not empty")
        .is_some());
    h.get_by_label("Keep it (choose another folder)").click();
    h.step();
    h.step();
    assert!(h.state().confirm_replace.is_none());
    assert!(proposed.join("keep.txt").is_file());
    h.get_by_label("Start fine-tuning").click();
    h.step();
    h.step();
    h.get_by_label("Replace it").click();
    h.step();
    assert!(h.state().is_running(tripletlab::gui::JobKind::FineTune));
    h.state_mut()
        .commands
        .push(Command::Cancel(tripletlab::gui::JobKind::FineTune));
    step_until(&mut h, "the run to end", |a| {
        !a.is_running(tripletlab::gui::JobKind::FineTune)
    });
}

/// Closing the window while a file loads, while embedding runs, or while a comparison is
/// computed returns at once and loses nothing (fine-tuning has its own test: it saves first).
#[test]
fn closing_the_window_during_each_job_returns_promptly() {
    // Embedding.
    let f = fixture(400);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h.get_by_label("Embed").click();
    h.step();
    assert!(h.state().is_running(tripletlab::gui::JobKind::Embed));
    let start = Instant::now();
    eframe::App::on_exit(h.state_mut(), None);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closing took {:?}",
        start.elapsed()
    );
    assert!(!h.state().is_running(tripletlab::gui::JobKind::Embed));
    drop(h);

    // Loading a large file.
    let big = f.work.path().join("big.jsonl");
    let rows = dev_triplets(500);
    let mut text = String::new();
    for k in 0..60 {
        for t in &rows {
            let row = serde_json::json!({"query": format!("{} {k}", t.query), "pos": t.pos, "negative": t.negative});
            text.push_str(&row.to_string());
            text.push('\n');
        }
    }
    std::fs::write(&big, text).unwrap();
    let mut h = harness(&f);
    step_until(&mut h, "the first file to load", |a| a.dataset.is_some());
    h.state_mut().commands.push(Command::OpenFile(big));
    h.step();
    assert!(h.state().is_running(tripletlab::gui::JobKind::Load));
    let start = Instant::now();
    eframe::App::on_exit(h.state_mut(), None);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closing took {:?}",
        start.elapsed()
    );
    drop(h);

    // A comparison being computed.
    let f = fixture(40);
    let mut h = loaded_and_embedded(&f);
    let model = f.model.clone();
    h.state_mut().commands.push(Command::EmbedComparison(model));
    step_until(&mut h, "the comparison model", |a| a.fine_tuned.is_some());
    h.state_mut()
        .commands
        .push(Command::SetSubset(tripletlab::core::pipeline::Subset::All));
    h.step();
    let start = Instant::now();
    eframe::App::on_exit(h.state_mut(), None);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closing took {:?}",
        start.elapsed()
    );
}

#[test]
fn the_storage_panel_computes_the_grid_with_retained_shares() {
    let f = fixture(60);
    let mut h = loaded_and_embedded(&f);
    h.state_mut().settings.storage.dims = "32,16,8".into();
    h.get_by_label("Storage").click();
    h.step();
    h.step();
    h.get_by_label("Compute grid").click();
    step_until(&mut h, "the grid", |a| a.experiments.grids[0].is_some());
    let g = h.state().experiments.grids[0].clone().unwrap();
    assert_eq!(g.cells.len(), 3 * 3, "3 dimensions x float32, int8, binary");
    let full = g
        .cell(32, tripletlab::core::metrics::quantize::Precision::Float32)
        .unwrap();
    assert!((full.ndcg_retained - 1.0).abs() < 1e-12);
    assert_eq!(
        full.metrics,
        h.state().zero_shot.as_ref().unwrap().result.metrics
    );
    h.step();
    assert!(
        h.query_by_label("100.0 %").is_some(),
        "the full-width float32 cell"
    );
    let int8 = g
        .cell(16, tripletlab::core::metrics::quantize::Precision::Int8)
        .unwrap();
    let shown = format!("{:.1} %", 100.0 * int8.ndcg_retained);
    assert!(
        h.query_all_by_label(&shown).next().is_some(),
        "no cell {shown}"
    );
}

#[test]
fn the_mining_panel_mines_reviews_by_keyboard_and_exports_the_accepted_rows() {
    let f = fixture(30);
    let mut h = harness(&f);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h.state_mut().settings.mining.num_negatives = 2;
    h.state_mut().settings.mining.range_max = 10;
    // The tiny random model scores every text alike: no margin, or nothing would pass it.
    h.state_mut().settings.mining.use_relative_margin = false;
    h.get_by_label("Mining").click();
    h.step();
    h.step();
    h.get_by_label("Mine").click();
    step_until(&mut h, "mining", |a| a.mining.result.is_some());
    let r = h.state().mining.result.clone().unwrap();
    assert_eq!(r.summary.queries, 30);
    assert_eq!(r.summary.negatives, 60, "2 per query");
    h.step();
    assert!(h.query_by_label("60 mined negatives listed").is_some());
    assert!(h.query_by_label("60 accepted").is_some());
    // Keyboard: R rejects the selected negative and moves on, A accepts, ↓ moves.
    h.key_press(egui::Key::R);
    h.step();
    h.key_press(egui::Key::R);
    h.step();
    h.key_press(egui::Key::ArrowUp);
    h.step();
    h.key_press(egui::Key::A);
    h.step();
    let accepted = &h.state().mining_review.accepted;
    assert_eq!(
        (accepted[0][0], accepted[0][1]),
        (false, true),
        "{accepted:?}"
    );
    h.step();
    assert!(h.query_by_label("59 accepted").is_some());
    // Bulk: reject every negative scoring above a threshold.
    let scores: Vec<f64> = r
        .mined
        .per_query
        .iter()
        .flat_map(|m| m.negatives.iter().map(|n| n.score))
        .collect();
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let threshold = sorted[40];
    let above = scores.iter().filter(|&&s| s > threshold).count();
    h.state_mut().mining_review.reject_above = threshold;
    h.step();
    h.get_by_label(&format!("Reject scores above {threshold:.3} ({above})"))
        .click();
    h.step();
    let kept = h
        .state()
        .mining_review
        .accepted
        .iter()
        .flatten()
        .filter(|a| **a)
        .count();
    let expected = (0..60)
        .filter(|&i| scores[i] <= threshold && i != 0)
        .count();
    assert_eq!(kept, expected);
    // Export: the accepted mined rows, then the file's own rows.
    let out = f.work.path().join("mined.jsonl");
    h.state_mut()
        .commands
        .push(Command::ExportMinedTo(out.clone()));
    step_until(&mut h, "the export", |a| a.mining.exported.is_some());
    let rows = tripletlab::core::data::load_triplets(&out).unwrap();
    assert_eq!(rows.len(), kept + 30);
    assert_eq!(rows.triplets[kept..], dev_triplets(30)[..]);
    h.get_by_label("Open the export").click();
    step_until(&mut h, "the export to open", |a| {
        a.dataset.as_ref().is_some_and(|d| d.path == out)
    });
    assert!(
        h.state().mining.result.is_none(),
        "a new file forgets the old mining"
    );
}
