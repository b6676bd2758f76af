//! Everything that computes: data, model folders, backends, encoder, metrics, training, cache,
//! jobs, reports, and the pipelines that combine them. No UI crate (egui, eframe, rfd, clap) may be
//! used below this module.

pub mod backend;
pub mod cache;
pub mod data;
pub mod embeddings;
pub mod encoder;
pub mod files;
pub mod jobs;
pub mod metrics;
pub mod mining;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod train;

/// An error and its causes on one line, `outer: inner: ...`, leaving out a cause whose text the
/// message already contains (many errors here print their source themselves).
pub fn error_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    msg
}
