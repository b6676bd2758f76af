//! The desktop app (eframe/egui). `app` holds the state and handles commands; `panels` draw it;
//! `widgets` are views shared by panels; `plots` turn numbers into pictures. Every computation runs in `core`, on job threads.

mod app;
mod panels;
pub mod plots;
mod widgets;

pub use app::{App, AppOptions, Command, JobKind, Tab};

/// Opens the window and runs until it is closed.
pub fn run(options: AppOptions) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        renderer: eframe::Renderer::Glow,
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("tripletlab")
            .with_inner_size(options.window_size.unwrap_or([1400.0, 900.0]))
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "tripletlab",
        native,
        Box::new(move |cc| Ok(Box::new(App::new(cc, options)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
