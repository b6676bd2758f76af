//! The use cases the CLI and the GUI share, each one plain synchronous function over core:
//! evaluating a model on a triplet set, and fine-tuning one.

mod evaluate;
pub mod finetune;

pub use evaluate::{evaluate_model, Evaluation};
pub use finetune::{
    fine_tune, stop_summary, FineTuneError, FineTuneRequest, FineTuned, Validation,
};
