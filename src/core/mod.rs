//! Everything that computes: data, model, encoder, metrics, cache, jobs, reports. No UI crate
//! (egui, eframe, rfd, clap) may be used below this module.

pub mod cache;
pub mod data;
pub mod embeddings;
pub mod encoder;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod train;
