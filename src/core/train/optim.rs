//! AdamW with decoupled weight decay, the update of torch's and candle's `AdamW` (same order of
//! f32 operations as candle-nn 0.11's), in one parallel pass per parameter instead of a dozen
//! tensor operations that each allocate a parameter-sized buffer.

use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

/// Hyper-parameters, as `candle_nn::ParamsAdamW`.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

struct Slot {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimizer state: moments per variable and the step count.
pub struct AdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    step_t: i32,
}

impl AdamW {
    /// Zero moments for every variable.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Self {
        let slots = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                Slot {
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Self {
            slots,
            params,
            step_t: 0,
        }
    }

    /// Sets the learning rate of the next steps.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One update of every variable with its gradient (`grads[i]` belongs to the i-th variable
    /// given to [`AdamW::new`]), the gradients multiplied by `grad_scale` first (gradient
    /// clipping).
    pub fn step(&mut self, grads: &[Vec<f32>], grad_scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "{} gradients for {} variables",
                grads.len(),
                self.slots.len()
            );
        }
        self.step_t += 1;
        let p = self.params;
        let f = |x: f64| x as f32;
        let (b1, b2) = (f(p.beta1), f(p.beta2));
        let (one_minus_b1, one_minus_b2) = (f(1.0 - p.beta1), f(1.0 - p.beta2));
        let scale_m = f(1.0 / (1.0 - p.beta1.powi(self.step_t)));
        let scale_v = f(1.0 / (1.0 - p.beta2.powi(self.step_t)));
        let decay = f(1.0 - p.lr * p.weight_decay);
        let (lr, eps) = (f(p.lr), f(p.eps));
        let clip = f(grad_scale);
        // Variables in parallel too: their copies in and out of candle's storage would otherwise
        // run one after the other.
        self.slots
            .par_iter_mut()
            .zip(grads)
            .try_for_each(|(slot, g)| {
                let mut theta = slot.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                if g.len() != theta.len() {
                    candle_core::bail!("a gradient of {} values for {}", g.len(), theta.len());
                }
                theta
                    .par_chunks_mut(1 << 14)
                    .zip(slot.m.par_chunks_mut(1 << 14))
                    .zip(slot.v.par_chunks_mut(1 << 14))
                    .zip(g.par_chunks(1 << 14))
                    .for_each(|(((theta, m), v), g)| {
                        for i in 0..theta.len() {
                            // As torch multiplies the gradients in place when clipping.
                            let gi = g[i] * clip;
                            m[i] = m[i] * b1 + gi * one_minus_b1;
                            v[i] = v[i] * b2 + (gi * gi) * one_minus_b2;
                            let m_hat = m[i] * scale_m;
                            let v_hat = v[i] * scale_v;
                            let adjusted = m_hat / (v_hat.sqrt() + eps);
                            theta[i] = theta[i] * decay - adjusted * lr;
                        }
                    });
                let shape = slot.var.shape().clone();
                slot.var
                    .set(&Tensor::from_vec(theta, shape, slot.var.device())?)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    #[test]
    fn matches_candles_adamw_over_several_steps() {
        // A large eps too, where `v̂.sqrt() + eps` and `- eps` differ beyond rounding.
        for eps in [1e-8, 0.5] {
            matches_candles_adamw_with(eps);
        }
    }

    fn matches_candles_adamw_with(eps: f64) {
        let dev = Device::Cpu;
        let init = Tensor::randn(0f32, 1.0, (37, 5), &dev).unwrap();
        let ours_var = Var::from_tensor(&init).unwrap();
        let theirs_var = Var::from_tensor(&init).unwrap();
        let params = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay: 0.01,
        };
        let mut ours = AdamW::new(vec![ours_var.clone()], params);
        let mut theirs = candle_nn::AdamW::new(
            vec![theirs_var.clone()],
            candle_nn::ParamsAdamW {
                lr: params.lr,
                beta1: params.beta1,
                beta2: params.beta2,
                eps: params.eps,
                weight_decay: params.weight_decay,
            },
        )
        .unwrap();
        let target = Tensor::randn(0f32, 1.0, (37, 5), &dev).unwrap();
        for step in 0..5 {
            let lr = 1e-2 / (step + 1) as f64;
            ours.set_learning_rate(lr);
            theirs.set_learning_rate(lr);
            for (var, opt) in [(&ours_var, 0), (&theirs_var, 1)] {
                let loss = (var.as_tensor() - &target)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                if opt == 0 {
                    let g = grads.get(var.as_tensor()).unwrap();
                    ours.step(&[g.flatten_all().unwrap().to_vec1().unwrap()], 1.0)
                        .unwrap();
                } else {
                    theirs.step(&grads).unwrap();
                }
            }
            let diff = (ours_var.as_tensor() - theirs_var.as_tensor())
                .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
                .unwrap();
            assert!(diff <= 1e-6, "eps {eps}, step {step}: differs by {diff}");
        }
    }

    #[test]
    fn a_gradient_scale_is_applied_before_the_moments() {
        // Clipping hands the optimizer the factor instead of scaled gradients: stepping with
        // (g, s) must equal stepping with (s·g, 1), at every step (AdamW is nearly but not quite
        // scale-invariant: eps and the first steps' bias correction see the scale).
        let init = Tensor::randn(0f32, 1.0, (19, 3), &Device::Cpu).unwrap();
        let params = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-3,
            weight_decay: 0.01,
        };
        let (a, b, c) = (
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
        );
        let mut with_factor = AdamW::new(vec![a.clone()], params);
        let mut pre_scaled = AdamW::new(vec![b.clone()], params);
        let mut unscaled = AdamW::new(vec![c.clone()], params);
        for step in 0..4 {
            let g: Vec<f32> = (0..57)
                .map(|i| ((i * 7 + step) % 11) as f32 - 5.0)
                .collect();
            let scale = 0.05 + 0.1 * step as f64;
            with_factor.step(std::slice::from_ref(&g), scale).unwrap();
            let scaled: Vec<f32> = g.iter().map(|x| x * scale as f32).collect();
            pre_scaled.step(&[scaled], 1.0).unwrap();
            unscaled.step(&[g], 1.0).unwrap();
        }
        let flat = |v: &Var| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let worst = flat(&a)
            .iter()
            .zip(flat(&b))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "factor vs pre-scaled gradients: {worst}");
        let moved = flat(&a)
            .iter()
            .zip(flat(&c))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-4, "the scale made no difference ({moved})");
    }
}
