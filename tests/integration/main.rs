//! Integration tests: one binary (candle links once) with a module per area.

mod architectures;
mod bad_inputs;
mod cli;
mod common;
mod data_files;
mod experiments;
mod gui;
mod gui_flows;
mod gui_layout;
mod layering;
mod mining;
mod model_folders;
mod processes;
mod real_model;
mod remote;
mod st_formats;
mod st_load;
mod tiny_encoder;
mod training;
