//! tripletlab: evaluate and fine-tune text-embedding models on retrieval triplets.
//!
//! [`core`] computes everything and depends on no UI crate; [`cli`] is a thin command-line layer
//! over it; [`gui`] is the eframe desktop app over it.

pub mod cli;
pub mod core;
pub mod gui;

pub use crate::core::*;
