//! The left sidebar: model source and encoding options, the Embed button and its progress.

use eframe::egui;

use crate::core::backend::Compute;
use crate::gui::app::{Command, Commands, DialogTarget, JobKind, PromptMode, Settings, View};

/// Draws the sidebar.
pub fn show(ui: &mut egui::Ui, app: &View, s: &mut Settings, cmds: &mut Commands) {
    ui.heading("Model");
    let l = ui.label("Hub id or local folder:");
    ui.add(egui::TextEdit::singleline(&mut s.model).hint_text("intfloat/e5-small-v2"))
        .labelled_by(l.id);
    if ui.button("Browse model folder...").clicked() {
        cmds.push(Command::Browse(DialogTarget::ModelFolder));
    }
    ui.separator();
    let folder_max = app.zero_shot.map(|e| e.max_seq_len);
    let mut custom_len = s.max_seq_len.is_some();
    let label = match folder_max {
        Some(m) if !custom_len => format!("Max length: model default ({m})"),
        _ => "Max length: model default".to_string(),
    };
    if ui
        .checkbox(&mut custom_len, "Override max length")
        .changed()
    {
        s.max_seq_len = custom_len.then_some(folder_max.unwrap_or(256));
    }
    match &mut s.max_seq_len {
        Some(n) => {
            super::labelled_drag(ui, "Max length (tokens)", n, 8..=512);
        }
        None => {
            ui.label(label);
        }
    }
    super::labelled_drag(ui, "Batch size", &mut s.batch_size, 1..=256);
    egui::ComboBox::from_label("Prompts")
        .selected_text(match s.prompt_mode {
            PromptMode::Auto => "Model's own (auto)",
            PromptMode::None => "None",
            PromptMode::Custom => "Custom",
        })
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut s.prompt_mode, PromptMode::Auto, "Model's own (auto)");
            ui.selectable_value(&mut s.prompt_mode, PromptMode::None, "None");
            ui.selectable_value(&mut s.prompt_mode, PromptMode::Custom, "Custom");
        });
    if s.prompt_mode == PromptMode::Custom {
        ui.horizontal(|ui| {
            let l = ui.label("Query prompt");
            ui.text_edit_singleline(&mut s.query_prompt)
                .labelled_by(l.id);
        });
        ui.horizontal(|ui| {
            let l = ui.label("Document prompt");
            ui.text_edit_singleline(&mut s.document_prompt)
                .labelled_by(l.id);
        });
    }
    let mut truncate = s.truncate_dim.is_some();
    if ui
        .checkbox(&mut truncate, "Truncate dimensions (Matryoshka)")
        .changed()
    {
        s.truncate_dim = truncate.then_some(128);
    }
    if let Some(d) = &mut s.truncate_dim {
        super::labelled_drag(ui, "Dimensions kept", d, 1..=4096);
    }
    compute_choice(ui, &mut s.compute);
    ui.checkbox(&mut s.use_cache, "Use the embedding cache");
    if let Some(e) = app.zero_shot {
        ui.weak(format!(
            "In use: {} tokens, prompts {:?} (query {:?}, document {:?})",
            e.max_seq_len, e.prompts.source, e.prompts.query, e.prompts.document
        ));
        if let Some(backend) = crate::core::backend::cpu::blas::backend_if_chosen() {
            ui.weak(format!("Matrix products: {backend}"));
        }
        ui.weak(format!("Computed in {}", e.compute.name()));
    }
    ui.separator();
    if app.is_running(JobKind::Embed) {
        if let Some(p) = app.embed_progress {
            super::progress_bar(ui, p);
        } else {
            ui.label("Loading the model...");
        }
        if ui.button("Cancel embedding").clicked() {
            cmds.push(Command::Cancel(JobKind::Embed));
        }
    } else {
        let enabled = app.dataset.is_some();
        if ui
            .add_enabled(enabled, egui::Button::new("Embed"))
            .clicked()
        {
            cmds.push(Command::StartEmbed);
        }
        if let Some(true) = app.last_embed_cached {
            ui.weak("Last run was served from the cache.");
        }
    }
}

/// The compute mode: f32 (exact) or bf16 (faster, on AVX512-BF16); a mode this CPU cannot run
/// is shown disabled with the missing feature.
fn compute_choice(ui: &mut egui::Ui, compute: &mut Compute) {
    let label = |c: Compute| match c {
        Compute::F32 => "f32 (exact)",
        Compute::Bf16 => "bf16 (faster)",
    };
    egui::ComboBox::from_label("Arithmetic")
        .selected_text(label(*compute))
        .show_ui(ui, |ui| {
            for c in Compute::ALL {
                match c.check() {
                    Ok(()) => {
                        ui.selectable_value(compute, c, label(c));
                    }
                    Err(why) => {
                        ui.add_enabled(false, egui::Button::selectable(false, label(c)))
                            .on_disabled_hover_text(why);
                    }
                }
            }
        })
        .response
        .on_hover_text(
            "bf16 rounds the inputs of every dense product to bf16 and sums in f32: about 1.4x \
             faster here, vectors at cosine >= 0.9999 to f32 (README \"Speed\"); fine-tuning in \
             bf16 keeps f32 weights and optimizer state",
        );
}
