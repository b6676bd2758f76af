//! A 2-D matrix product as a candle custom op over [`super::blas::sgemm`], with its backward pass
//! (itself two such products), so the dense layers run on the fastest GEMM available in both
//! inference and training.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `op(a) · op(b)` where op transposes when the flag is set.
#[derive(Debug, Clone, Copy)]
struct Gemm {
    trans_a: bool,
    trans_b: bool,
}

/// The f32 data, batch size and (rows, cols) of a contiguous 2-D or 3-D tensor's storage.
fn matrix<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<(&'a [f32], usize, usize, usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    let (batch, rows, cols) = match *l.dims() {
        [rows, cols] => (1, rows, cols),
        [batch, rows, cols] => (batch, rows, cols),
        _ => candle_core::bail!(
            "{what}: expected a matrix or a batch of them, got {:?}",
            l.dims()
        ),
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous matrix")
    };
    Ok((&v[start..end], batch, rows, cols))
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "tripletlab-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, batch, ar, ac) = matrix(s1, l1, "matmul lhs")?;
        let (b, batch_b, br, bc) = matrix(s2, l2, "matmul rhs")?;
        let (m, k) = if self.trans_a { (ac, ar) } else { (ar, ac) };
        let (k2, n) = if self.trans_b { (bc, br) } else { (br, bc) };
        if k != k2 || batch != batch_b || l1.dims().len() != l2.dims().len() {
            candle_core::bail!(
                "matmul: shapes {:?} and {:?} do not multiply (transposes {} {})",
                l1.dims(),
                l2.dims(),
                self.trans_a,
                self.trans_b
            );
        }
        let mut c = vec![0f32; batch * m * n];
        let shape = if l1.dims().len() == 3 {
            super::blas::sgemm_batched(self.trans_a, self.trans_b, batch, m, n, k, a, b, &mut c);
            Shape::from((batch, m, n))
        } else {
            super::blas::sgemm(self.trans_a, self.trans_b, m, n, k, a, b, &mut c);
            Shape::from((m, n))
        };
        Ok((CpuStorage::F32(c), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // C = op(A) op(B): d op(A) = dC op(B)^T and d op(B) = op(A)^T dC, stored as A and B are.
        let g = grad.contiguous()?;
        let (ta, tb) = (self.trans_a, self.trans_b);
        let da = if ta {
            product(b, &g, tb, true)?
        } else {
            product(&g, b, false, !tb)?
        };
        let db = if tb {
            product(&g, a, true, ta)?
        } else {
            product(a, &g, !ta, false)?
        };
        Ok((Some(da), Some(db)))
    }
}

/// `op(a) · op(b)` for 2-D f32 tensors on the CPU, or for batches of them (3-D, the same batch
/// size), differentiable in both arguments.
pub fn product(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2(&b.contiguous()?, Gemm { trans_a, trans_b })
}

/// A dense layer, `x · wᵀ + bias`, in one product that starts from the bias.
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "tripletlab-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, 1, m, k) = matrix(s1, l1, "linear input")? else {
            candle_core::bail!("linear: a batch of matrices as input")
        };
        let (w, 1, n, k2) = matrix(s2, l2, "linear weight")? else {
            candle_core::bail!("linear: a batch of matrices as weight")
        };
        let CpuStorage::F32(bias) = s3 else {
            candle_core::bail!("linear bias: expected f32")
        };
        let bias = match l3.contiguous_offsets() {
            Some((start, end)) if end - start == n => &bias[start..end],
            _ => candle_core::bail!("linear: bias of shape {:?} for {n} outputs", l3.dims()),
        };
        if k != k2 {
            candle_core::bail!("linear: input {:?} and weight {:?}", l1.dims(), l2.dims());
        }
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        for _ in 0..m {
            c.extend_from_slice(bias);
        }
        super::blas::sgemm_add(false, true, m, n, k, x, w, &mut c);
        Ok((CpuStorage::F32(c), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = product(&g, w, false, false)?;
        let dw = product(&g, x, true, false)?;
        // Column sums as a product with a row of ones: candle's sum over dim 0 walks the
        // matrix column by column on one thread.
        let ones = Tensor::ones((1, g.dim(0)?), g.dtype(), g.device())?;
        let db = product(&ones, &g, false, false)?.squeeze(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `x · wᵀ + bias` for x (n, in), w (out, in), bias (out); differentiable in all three.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{max_abs_diff as diff, max_grad_diff};
    use candle_core::{Device, Var};

    #[test]
    fn linear_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (9, 6), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 4, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (9, 4), &dev).unwrap();
        let ours = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(diff(&ours, &theirs) < 1e-5);
        assert!(max_grad_diff(ours, theirs, &up, &[&x, &w, &b]) < 1e-5);
    }

    #[test]
    fn forward_and_gradients_match_candles_matmul() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (7, 3), &dev).unwrap();
        let ours = product(x.as_tensor(), w.as_tensor(), false, true).unwrap();
        let reference = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert!(diff(&ours, &reference) < 1e-5);
        assert!(max_grad_diff(ours, reference, &up, &[&x, &w]) < 1e-5);
        // The other transposes, through a second product on top.
        for (ta, tb) in [(false, false), (true, false), (true, true)] {
            let a = if ta {
                x.as_tensor().t().unwrap().contiguous().unwrap()
            } else {
                x.as_tensor().clone()
            };
            let wt = w.as_tensor().t().unwrap().contiguous().unwrap(); // (5, 3)
            let b = if tb {
                wt.t().unwrap().contiguous().unwrap()
            } else {
                wt.clone()
            };
            let a = Var::from_tensor(&a).unwrap();
            let b = Var::from_tensor(&b).unwrap();
            let ours = product(a.as_tensor(), b.as_tensor(), ta, tb).unwrap();
            let op = |t: &Tensor, flag: bool| if flag { t.t().unwrap() } else { t.clone() };
            let reference = op(a.as_tensor(), ta)
                .matmul(&op(b.as_tensor(), tb))
                .unwrap();
            assert!(diff(&ours, &reference) < 1e-5, "{ta} {tb}");
            assert!(
                max_grad_diff(ours, reference, &up, &[&a, &b]) < 1e-5,
                "{ta} {tb}"
            );
        }
    }
}
