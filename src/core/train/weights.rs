//! The trained weights: the encoder's parameters as candle variables (the CPU engine reads them
//! in place, the optimizer writes them), snapshots of the best checkpoint, and seeded dropout.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;

use super::TrainError;
use crate::core::backend::cpu::{arch, CpuModel};
use crate::core::backend::{Compute, DropoutRng};
use crate::core::model::{Checkpoint, ModelFolder};

/// The model's trainable weights: one variable per parameter of the architecture's layout.
pub struct Trainable {
    /// Parameter names (without the checkpoint's prefix) and their variables, in layout order.
    vars: Vec<(String, Var)>,
    model: Arc<CpuModel>,
}

impl Trainable {
    /// Copies the encoder's parameters of a checkpoint into f32 variables and builds the CPU
    /// engine over them.
    pub fn new(
        folder: &ModelFolder,
        checkpoint: &Checkpoint,
        compute: Compute,
    ) -> Result<Self, TrainError> {
        let layout = arch::layout(&folder.config, &|n| checkpoint.get(n).is_some());
        let mut vars = Vec::with_capacity(layout.names.len());
        for name in &layout.names {
            let t = checkpoint.get(name).ok_or_else(|| {
                TrainError::InvalidConfig(format!(
                    "{} lacks the tensor `{name}` the model needs",
                    folder.weights_path.display()
                ))
            })?;
            vars.push((name.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?));
        }
        let by_name: HashMap<&str, &Var> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let model = CpuModel::new(&folder.config, folder.sentence.pooling, &|n| {
            by_name.get(n).map(|v| v.as_tensor().clone())
        })
        .and_then(|m| m.with_compute(compute))
        .map_err(|e| {
            TrainError::InvalidConfig(format!("{}: {e}", folder.weights_path.display()))
        })?;
        Ok(Self {
            vars,
            model: Arc::new(model),
        })
    }

    /// The CPU engine over these variables: it reads their current values at every pass.
    pub fn model(&self) -> Arc<CpuModel> {
        Arc::clone(&self.model)
    }

    /// Every variable with its name, in the engine's parameter order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// A deep copy of the current weights.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
            .collect()
    }

    /// Sets the weights back to a snapshot.
    pub fn restore(&self, snapshot: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for (k, v) in &self.vars {
            if let Some(t) = snapshot.get(k) {
                v.set(t)?;
            }
        }
        Ok(())
    }
}

/// Dropout masks from a seeded generator.
pub(super) struct SeededDropout(pub(super) rand::rngs::SmallRng);

impl SeededDropout {
    /// A generator of its own seeded with `seed`.
    pub(super) fn from_seed(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(rand::rngs::SmallRng::seed_from_u64(seed))
    }
}

impl DropoutRng for SeededDropout {
    fn next_seed(&mut self) -> u64 {
        use rand::RngCore;
        self.0.next_u64()
    }

    /// Blocks of the mask are drawn in parallel, each from a generator seeded by one draw of
    /// this one and the block's index: the same masks on any number of threads.
    fn fill(&mut self, out: &mut [f32], p: f32) {
        use rand::RngCore;
        use rayon::prelude::*;
        const BLOCK: usize = 1 << 16;
        let scale = 1.0 / (1.0 - p);
        // Two 32-bit draws per 64-bit word; drop when the draw is below p * 2^32.
        let threshold = (p as f64 * 4294967296.0) as u64;
        let seed = self.0.next_u64();
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(i, block)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(
                    seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                for pair in block.chunks_mut(2) {
                    let r = rng.next_u64();
                    for (o, half) in pair.iter_mut().zip([r & 0xFFFF_FFFF, r >> 32]) {
                        *o = if half < threshold { 0.0 } else { scale };
                    }
                }
            });
    }
}
