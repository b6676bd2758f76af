//! GUI flows of the analysis-grade round, clicked as a user would: the close question during
//! fine-tuning and each of its answers, the path field (with completion) when no file dialog can
//! open, PNG export of the difference map, the inspector following the chosen model and
//! scrolling to a triplet picked on the heatmap, stale results marked, the fine-tune form's plan
//! and the kept checkpoint on the curves.

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use tripletlab::core::report::raster;
use tripletlab::gui::{App, AppOptions, Tab};

use crate::common::dev_triplets;
use crate::gui::{fixture, step_until, Fixture};

fn app(f: &Fixture) -> Harness<'static, App> {
    let options = AppOptions {
        data: Some(f.data.clone()),
        model: Some(f.model.display().to_string()),
        recovery_dir: Some(f.work.path().join("recovered")),
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1600.0, 1000.0))
        .build_eframe(move |cc| App::new(cc, options));
    h.state_mut().settings.use_cache = false;
    // As on a machine without a desktop portal, whatever this one has.
    h.state_mut().file_dialogs = false;
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    h
}

fn embedded(f: &Fixture) -> Harness<'static, App> {
    let mut h = app(f);
    h.get_by_label("Embed").click();
    step_until(&mut h, "embedding", |a| a.zero_shot.is_some());
    h
}

/// Fine-tunes (epochs × batch 4, lr 1e-3) into `out` and waits for the comparison.
fn fine_tuned(h: &mut Harness<'static, App>, out: &std::path::Path, epochs: usize) {
    {
        let t = &mut h.state_mut().settings.train;
        t.epochs = epochs;
        t.batch_size = 4;
        t.lr = 1e-3;
        t.out_dir = out.display().to_string();
    }
    h.get_by_label("Fine-tune").click();
    settle(h);
    h.get_by_label("Start fine-tuning").click();
    step_until(h, "the comparison", |a| a.experiments.comparison.is_some());
}

/// Frames for a click to take effect: the click, the command, the redraw (a new window also
/// spends one frame measuring itself).
fn settle(h: &mut Harness<'static, App>) {
    for _ in 0..4 {
        h.step();
    }
}

fn request_close(h: &mut Harness<'static, App>) {
    h.input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    h.step();
    h.step();
}

fn type_path(h: &mut Harness<'static, App>, text: &str) {
    h.get_by_label("Path").click();
    settle(h);
    h.get_by_label("Path").type_text(text);
    h.step();
    h.step();
}

#[test]
fn closing_during_fine_tuning_asks_and_each_answer_does_what_it_says() {
    let f = fixture(40);
    let mut h = embedded(&f);
    {
        let t = &mut h.state_mut().settings.train;
        t.epochs = 3;
        t.batch_size = 4;
        t.out_dir = f.work.path().join("ft").display().to_string();
    }
    h.get_by_label("Fine-tune").click();
    settle(&mut h);
    h.get_by_label("Start fine-tuning").click();
    settle(&mut h);
    assert!(h.state().is_running(tripletlab::gui::JobKind::FineTune));
    // Cancel: the question goes, the run goes on, nothing closes.
    request_close(&mut h);
    assert!(
        h.query_by_label("Fine-tuning is running").is_some(),
        "no question"
    );
    h.get_by_label("Cancel").click();
    settle(&mut h);
    assert!(h.query_by_label("Fine-tuning is running").is_none());
    assert!(!h.state().layout.allow_close);
    // Keep training: the window closes once the model is saved, not before.
    request_close(&mut h);
    h.get_by_label("Keep training, close when saved").click();
    settle(&mut h);
    assert!(h.state().layout.close_when_done && !h.state().layout.allow_close);
    step_until(&mut h, "the run to end", |a| {
        !a.is_running(tripletlab::gui::JobKind::FineTune)
    });
    h.step();
    assert!(
        h.state().layout.allow_close,
        "the window did not close after saving"
    );
    assert!(f.work.path().join("ft/model.safetensors").is_file());
    // A close with no run going is not questioned.
    h.state_mut().layout.allow_close = false;
    request_close(&mut h);
    assert!(h.query_by_label("Fine-tuning is running").is_none());
    // Stop and save: the close goes through (on_exit then saves the best, tested elsewhere).
    {
        let t = &mut h.state_mut().settings.train;
        t.epochs = 200;
        t.out_dir = f.work.path().join("ft2").display().to_string();
    }
    h.get_by_label("Start fine-tuning").click();
    settle(&mut h);
    step_until(&mut h, "two steps of the second run", |a| {
        a.train_log.total_steps > 100 && a.train_log.steps.len() >= 2
    });
    assert!(
        h.state().is_running(tripletlab::gui::JobKind::FineTune),
        "the second run did not start: {:?}",
        h.state()
            .notifications
            .iter()
            .map(|n| &n.text)
            .collect::<Vec<_>>()
    );
    request_close(&mut h);
    h.get_by_label("Stop, save the best and close").click();
    settle(&mut h);
    assert!(h.state().layout.allow_close);
    eframe::App::on_exit(h.state_mut(), None);
    assert!(f.work.path().join("ft2/model.safetensors").is_file());
}

#[test]
fn without_a_file_dialog_a_path_field_with_completion_opens_the_file() {
    let f = fixture(30);
    let other = f.work.path().join("triplets-other.json");
    std::fs::write(&other, serde_json::to_string(&dev_triplets(12)).unwrap()).unwrap();
    let mut h = app(&f);
    h.get_by_label("Open...").click();
    settle(&mut h);
    assert!(
        h.query_by_label_contains("No file dialog is available")
            .is_some(),
        "the path field does not say why it is there"
    );
    // The field starts in the open file's folder: the name is enough.
    assert_eq!(
        h.state().layout.path_prompt.as_ref().unwrap().text,
        format!("{}/", f.work.path().display())
    );
    type_path(&mut h, "triplets-o");
    // Completion offers the one match; taking it and pressing the button opens it.
    let full = other.display().to_string();
    h.get_by_label(&full).click();
    settle(&mut h);
    h.get_by_label("Use this path").click();
    step_until(&mut h, "the other file", |a| {
        a.dataset.as_ref().is_some_and(|d| d.path == other)
    });
    assert_eq!(h.state().dataset.as_ref().unwrap().len(), 12);
    assert!(h.query_by_label("Type a path").is_none());
}

#[test]
fn the_difference_map_is_exported_as_a_png_of_the_fine_tuned_minus_zero_shot_cosines() {
    let f = fixture(40);
    let mut h = embedded(&f);
    fine_tuned(&mut h, &f.work.path().join("ft"), 2);
    h.get_by_label("Compare").click();
    for _ in 0..3 {
        h.step();
    }
    assert!(h
        .query_by_label("Difference map: fine-tuned minus zero-shot cosine")
        .is_some());
    // Below the table and the histograms: scrolled to, as a user would.
    h.get_by_label("Save difference PNG...").scroll_to_me();
    settle(&mut h);
    h.get_by_label("Save difference PNG...").click();
    settle(&mut h);
    assert!(
        h.state().layout.path_prompt.is_some(),
        "no path field: {:?}",
        h.state()
            .notifications
            .iter()
            .map(|n| &n.text)
            .collect::<Vec<_>>()
    );
    let png_path = f.work.path().join("diff.png");
    h.get_by_label("Path").click();
    settle(&mut h);
    // Replace what the field proposes.
    h.state_mut().layout.path_prompt.as_mut().unwrap().text = String::new();
    h.step();
    h.get_by_label("Path")
        .type_text(&png_path.display().to_string());
    h.step();
    h.get_by_label("Use this path").click();
    settle(&mut h);
    let bytes = std::fs::read(&png_path).expect("no PNG written");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // The cells: the difference of the two models' windows, on a symmetric diverging scale.
    let app = h.state();
    let (a, b) = (
        app.zero_shot.as_ref().unwrap(),
        app.fine_tuned.as_ref().unwrap(),
    );
    let cos = |e: &tripletlab::core::pipeline::Evaluation, i: usize, j: usize| {
        crate::common::cosine(e.doc_rows.row(i), e.doc_rows.row(j)) as f32
    };
    let n = 50.min(a.doc_rows.rows());
    let mut reach = 0f32;
    for i in 0..n {
        for j in 0..n {
            reach = reach.max((cos(b, i, j) - cos(a, i, j)).abs());
        }
    }
    let (r, c) = (3usize, 8usize);
    let d = cos(b, r, c) - cos(a, r, c);
    let expected = raster::diverging((d + reach) / (2.0 * reach));
    // Cells of 10 pixels from (76, 34) (ticks and role bands above and left of them).
    let (x, y) = (76 + c * 10 + 5, 34 + r * 10 + 5);
    let px = &buf[(y * info.width as usize + x) * 3..][..3];
    for k in 0..3 {
        assert!(
            (px[k] as i32 - expected[k] as i32).abs() <= 2,
            "cell ({r}, {c}): {px:?} vs {expected:?} (difference {d})"
        );
    }
}

#[test]
fn the_inspector_follows_the_chosen_model_and_scrolls_to_a_triplet_picked_on_the_heatmap() {
    let f = fixture(120);
    let mut h = embedded(&f);
    fine_tuned(&mut h, &f.work.path().join("ft"), 2);
    h.get_by_label("Inspect").click();
    settle(&mut h);
    // Values of the fine-tuned model: the list is sorted by its margins, worst first.
    h.get_by_label("fine-tuned").click();
    for _ in 0..3 {
        h.step();
    }
    let (worst_ft, best_zero) = {
        let app = h.state();
        let ft = &app.fine_tuned.as_ref().unwrap().result.per_triplet;
        let zs = &app.zero_shot.as_ref().unwrap().result.per_triplet;
        let worst = (0..ft.len())
            .min_by(|&i, &j| ft[i].margin.total_cmp(&ft[j].margin).then(i.cmp(&j)))
            .unwrap();
        let best = (0..zs.len())
            .max_by(|&i, &j| zs[i].margin.total_cmp(&zs[j].margin).then(j.cmp(&i)))
            .unwrap();
        (worst, best)
    };
    assert_eq!(h.state().inspector.rows.as_ref().unwrap().1[0], worst_ft);
    assert!(h
        .query_by_label_contains("margins and ranks of the fine-tuned model")
        .is_some());
    // Back to zero-shot; pick on the heatmap the triplet its list shows last.
    h.get_by_label("zero-shot").click();
    settle(&mut h);
    h.get_by_label("Heatmap").click();
    settle(&mut h);
    h.state_mut().heatmap.row0 = (2 * best_zero).saturating_sub(10);
    for _ in 0..3 {
        h.step();
    }
    let row0 = h.state().heatmap.row0;
    let label = format!(
        "Heatmap window: rows {row0} to {}, columns 0 to 49",
        row0 + 49
    );
    let rect = h.get_by_label(&label).rect();
    let cell = rect.width() / 50.0;
    let at = rect.min
        + egui::vec2(
            5.5 * cell,
            (2 * best_zero - row0) as f32 * cell + cell / 2.0,
        );
    h.hover_at(at);
    h.step();
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos: at,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
    }
    for _ in 0..4 {
        h.step();
    }
    assert_eq!(h.state().tab, Tab::Inspect);
    assert_eq!(h.state().inspector.selected, Some(best_zero));
    // The list only lays out the rows in view: the picked one is there ("right #103, train |
    // ..." or "right #103 | ..." without a run record).
    let listed = |h: &Harness<'static, App>| {
        h.query_by_label_contains(&format!(" #{best_zero},"))
            .is_some()
            || h.query_by_label_contains(&format!(" #{best_zero} |"))
                .is_some()
    };
    assert!(listed(&h), "triplet {best_zero} was not scrolled into view");
    assert!(h.query_by_label(&format!("Triplet {best_zero}")).is_some());
    // Filtered out, it leaves the detail pane.
    h.state_mut().inspector.search = "no such text anywhere zzz".into();
    h.step();
    h.step();
    assert!(h.query_by_label(&format!("Triplet {best_zero}")).is_none());
    assert!(h
        .query_by_label_contains("is hidden by the filters")
        .is_some());
}

#[test]
fn results_of_other_settings_are_marked_stale_even_after_a_failed_embed() {
    let f = fixture(30);
    let mut h = embedded(&f);
    h.get_by_label("Metrics").click();
    settle(&mut h);
    assert!(h.query_by_label_contains("Stale:").is_none());
    let missing = f.work.path().join("no-such-model");
    h.state_mut().settings.model = missing.display().to_string();
    h.step();
    h.step();
    assert!(h
        .query_by_label_contains("Stale: These results are from")
        .is_some());
    h.get_by_label("Embed again").click();
    step_until(&mut h, "the failed embed", |a| {
        !a.is_running(tripletlab::gui::JobKind::Embed)
    });
    h.step();
    assert!(
        h.query_by_label_contains("Stale: These results are from")
            .is_some(),
        "a failed embed left old results unmarked"
    );
    // Back to the model they were computed with: not stale.
    h.state_mut().settings.model = f.model.display().to_string();
    h.step();
    h.step();
    assert!(h.query_by_label_contains("Stale:").is_none());
}

#[test]
fn the_form_states_the_plan_and_the_curves_mark_the_kept_checkpoint() {
    let f = fixture(40);
    let mut h = embedded(&f);
    h.get_by_label("Fine-tune").click();
    settle(&mut h);
    h.get_by_label("Epochs").set_value_accesskit(3.0);
    h.get_by_label("Training batch size")
        .set_value_accesskit(4.0);
    h.step();
    h.step();
    let steps = {
        let app = h.state();
        let data = app.dataset.as_ref().unwrap();
        let cfg = app.settings.train_config(None);
        let (train, _) =
            tripletlab::core::train::split_rows_by_query(&data.triplets, cfg.val_split, cfg.seed);
        let rows: Vec<_> = train.iter().map(|&i| data.triplets[i].clone()).collect();
        tripletlab::core::train::planned_steps(&rows, &cfg)
    };
    assert!(steps > 0);
    assert!(
        h.query_by_label_contains(&format!("Plan: {steps} steps (3 epochs of batches of 4)"))
            .is_some(),
        "the form does not state {steps} steps"
    );
    h.state_mut().settings.train.lr = 1e-3;
    h.state_mut().settings.train.out_dir = f.work.path().join("ft").display().to_string();
    h.get_by_label("Start fine-tuning").click();
    step_until(&mut h, "the comparison", |a| {
        a.experiments.comparison.is_some()
    });
    h.step();
    assert_eq!(
        h.state().train_log.steps.len(),
        steps,
        "the plan was not the run"
    );
    let kept = h.state().train_log.best_eval().unwrap().step;
    assert_eq!(h.state().tab, Tab::FineTune);
    settle(&mut h);
    // In the validation plot's legend, and said in words.
    assert!(h
        .query_all_by_label(&format!("kept: step {kept}"))
        .next()
        .is_some());
    assert!(h
        .query_by_label_contains(&format!("the checkpoint kept, step {kept}"))
        .is_some());
}
