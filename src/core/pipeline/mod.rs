//! The use cases the CLI and the GUI share, each one plain synchronous function over core:
//! evaluating a model on a triplet set, fine-tuning one (with its run record), comparing two on
//! the right triplets with their uncertainty, and the storage grid of dimensions × precisions.

pub mod compare;
mod evaluate;
pub mod finetune;
pub mod grid;
pub mod mine;
pub mod record;

pub use compare::{compare, subset_rows, Comparison, Subset, SubsetRows};
pub use evaluate::{evaluate_model, Evaluation};
pub use finetune::{
    fine_tune, stop_summary, would_replace, FineTuneError, FineTuneRequest, FineTuned, Validation,
};
pub use record::{RunRecord, RUN_RECORD_FILE};
