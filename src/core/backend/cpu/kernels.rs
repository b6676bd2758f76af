//! Fused element-wise kernels for the BERT layers, as candle custom ops with backward passes:
//! erf-GELU (one pass instead of libm's scalar `erff` per element) and the attention softmax with
//! its padding mask added in the same pass. Both use a branch-free `exp` the compiler vectorises.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

use rayon::prelude::*;

/// Elements per parallel work item.
pub(super) const CHUNK: usize = 1 << 14;

/// Runs `f` compiled for AVX2 and FMA when the CPU has them, else as built (SSE2 on x86-64). The
/// results are the same bit for bit: the kernels' reductions use a fixed number of lanes, and
/// Rust never fuses a multiply and an add on its own.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the only requirement of a `target_feature` function is that the CPU has
            // the features, which was just checked.
            #[allow(unsafe_code)]
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// Defines a function whose body is compiled twice, for AVX2 + FMA and as built, and picks the
/// first when the CPU has them (as [`simd`], but certain: a closure handed to [`simd`] is not
/// always inlined into the AVX2 function, and then runs as plain SSE2 code). Helpers the body
/// calls must be `#[inline(always)]`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $body
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the only requirement of a `target_feature` function is that the
                    // CPU has the features, which was just checked.
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

simd_fn! {
    /// Softmax of `scale` times each row (of `len`) of `p`, in place; `inv` gets each row's
    /// 1/sum. Without `normalize` the rows are left unnormalised (the caller divides later).
    pub(super) fn softmax_rows(p: &mut [f32], len: usize, inv: &mut [f32], scale: f32, normalize: bool) {
        for (row, inv) in p.chunks_mut(len).zip(inv.iter_mut()) {
            *inv = 1.0 / exp_shifted_sum(row, scale);
            if normalize {
                let i = *inv;
                row.iter_mut().for_each(|v| *v *= i);
            }
        }
    }
}

simd_fn! {
    /// [`softmax_grad_row`] for each row (of `len`) of `g` and `p`.
    pub(super) fn softmax_grad_rows(g: &mut [f32], p: &[f32], len: usize, scale: f32) {
        for (g, p) in g.chunks_mut(len).zip(p.chunks(len)) {
            softmax_grad_row(g, p, scale);
        }
    }
}

simd_fn! {
    /// `out = gelu(x)` (erf form) element-wise.
    pub(super) fn gelu_into(out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = gelu(*v));
    }
}

simd_fn! {
    /// `g *= gelu'(x)` element-wise.
    pub(super) fn gelu_grad_into(g: &mut [f32], x: &[f32]) {
        g.iter_mut().zip(x).for_each(|(g, &x)| *g *= gelu_derivative(x));
    }
}

simd_fn! {
    /// Layer norm of the rows (of `w.len()`) of `x` into `o`.
    fn layer_norm_block(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let d = w.len();
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let (mean, rstd) = row_stats(x, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * rstd * w + b;
            }
        }
    }
}

simd_fn! {
    /// The layer norm's backward pass over a block of rows; `acc` (2 · d) gets the block's
    /// d(weight) and d(bias), `xhat` (d) is scratch.
    fn layer_norm_grad_block(
        dx: &mut [f32],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32,
        acc: &mut [f32],
        xhat: &mut [f32],
    ) {
        let d = w.len();
        let (dw, db) = acc.split_at_mut(d);
        for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
            let (mean, rstd) = row_stats(x, eps);
            for (h, &x) in xhat.iter_mut().zip(x) {
                *h = (x - mean) * rstd;
            }
            let mean_dh = sum8(g, |i, g| g * w[i]) / d as f32;
            let mean_dh_h = sum8(g, |i, g| g * w[i] * xhat[i]) / d as f32;
            for i in 0..d {
                let dh = g[i] * w[i];
                dx[i] = rstd * (dh - mean_dh - xhat[i] * mean_dh_h);
                dw[i] += g[i] * xhat[i];
                db[i] += g[i];
            }
        }
    }
}

/// `e^x` to within 2 ulp for x in [-87, 88]; 0 below, +inf above. Branch-free, so loops over
/// slices vectorise (Cephes' `expf` polynomial after a range reduction by powers of two).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    // max/min rather than clamp (no assert); NaN is passed through at the end.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n: n + 2^23 + 127 holds n + 127 in its low mantissa bits; shifting them into the
    // exponent field (the high bits fall off) builds the power of two without a float-to-int
    // conversion.
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    let y = er * scale;
    let y = if x < -87.0 { 0.0 } else { y };
    let y = if x > 88.0 { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// erf(x) to within 4e-7 (f32 rounding included), as a rational function of x² on [-4, 4] (±1 beyond, where f32
/// rounds erf to ±1): about half the work of a form built on `exp` (XLA's and Eigen's f32 erf).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // max/min rather than clamp (no assert); NaN is passed through at the end.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-4.0).min(4.0);
    let x2 = xc * xc;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_5e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_3e-3;
    q = q * x2 + -1.426_474e-2;
    let y = xc * p / q;
    if x.is_nan() {
        x
    } else {
        y
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

#[inline(always)]
pub(super) fn gelu_derivative(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}

/// The f32 data of a contiguous tensor's storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor")
    };
    Ok(&v[start..end])
}

/// Applies `f` element-wise in parallel.
fn map(xs: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| simd(|| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x))));
    out
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "tripletlab-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = data(s, l, "gelu")?;
        Ok((CpuStorage::F32(map(xs, gelu)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// grad * GELU'(x), for the backward pass.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "tripletlab-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = data(s1, l1, "gelu grad x")?;
        let gs = data(s2, l2, "gelu grad")?;
        if xs.len() != gs.len() {
            candle_core::bail!("gelu grad: {} values, {} gradients", xs.len(), gs.len());
        }
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| {
                simd(|| {
                    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                        *o = g * gelu_derivative(x);
                    }
                })
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GELU with the exact (erf) form, as BERT's `gelu` activation; differentiable.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Gelu)
}

/// Softmax over the last dimension of `scale * scores` (b, heads, s, s) after adding `mask`
/// (b, 1, 1, s).
struct MaskedSoftmax {
    scale: f32,
}

impl MaskedSoftmax {
    /// Softmax of the rows of `o`, the first being row `first_row` of the scores.
    #[inline(always)]
    fn rows(
        &self,
        first_row: usize,
        o: &mut [f32],
        scores: &[f32],
        mask: &[f32],
        h: usize,
        s: usize,
    ) {
        for (r, o) in o.chunks_mut(s).enumerate() {
            let row = first_row + r;
            let x = &scores[row * s..(row + 1) * s];
            let m = &mask[(row / (h * s)) * s..][..s];
            o.copy_from_slice(x);
            softmax_row(o, m, self.scale);
        }
    }
}

/// `row = softmax(scale * row + mask)`, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32], mask: &[f32], scale: f32) {
    // Separate passes so each one vectorises.
    for (o, &m) in row.iter_mut().zip(mask) {
        *o = *o * scale + m;
    }
    let inv = 1.0 / exp_shifted_sum(row, 1.0);
    row.iter_mut().for_each(|o| *o *= inv);
}

/// `row = exp(scale * (row - max(row)))` in place (scale > 0), returning the row's new sum: a
/// softmax before its division.
#[inline(always)]
pub(super) fn exp_shifted_sum(row: &mut [f32], scale: f32) -> f32 {
    let max = max8(row);
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp((*v - max) * scale);
            *a += *v;
        }
    }
    let mut total: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp((*v - max) * scale);
        total += *v;
    }
    total
}

/// The scaled softmax's backward pass for one row, in place: `g` holds d(probs) and becomes
/// d(scores) = scale * p * (g - sum(g * p)).
#[inline(always)]
pub(super) fn softmax_grad_row(g: &mut [f32], p: &[f32], scale: f32) {
    let dot = sum8(g, |i, g| g * p[i]);
    for (g, &p) in g.iter_mut().zip(p) {
        *g = scale * p * (*g - dot);
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "tripletlab-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = data(s1, l1, "softmax scores")?;
        let mask = data(s2, l2, "softmax mask")?;
        let &[b, h, s, s2_] = l1.dims() else {
            candle_core::bail!("softmax: scores of shape {:?}", l1.dims())
        };
        if s != s2_ || l2.dims() != [b, 1, 1, s] {
            candle_core::bail!("softmax: scores {:?} and mask {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; scores.len()];
        let rows_per_item = (CHUNK / s.max(1)).max(1);
        out.par_chunks_mut(rows_per_item * s)
            .enumerate()
            .for_each(|(item, o)| simd(|| self.rows(item * rows_per_item, o, scores, mask, h, s)));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(d), None))
    }
}

/// scale * p * (g - sum(g * p)) per row: the scaled softmax's backward pass.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "tripletlab-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ps = data(s1, l1, "softmax grad probs")?;
        let gs = data(s2, l2, "softmax grad")?;
        let s = *l1.dims().last().unwrap_or(&1);
        if ps.len() != gs.len() || s == 0 {
            candle_core::bail!("softmax grad: shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; ps.len()];
        let rows_per_item = (CHUNK / s).max(1);
        out.par_chunks_mut(rows_per_item * s)
            .zip(
                ps.par_chunks(rows_per_item * s)
                    .zip(gs.par_chunks(rows_per_item * s)),
            )
            .for_each(|(o, (p, g))| {
                for ((o, p), g) in o.chunks_mut(s).zip(p.chunks(s)).zip(g.chunks(s)) {
                    o.copy_from_slice(g);
                    softmax_grad_row(o, p, self.scale);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// softmax(scale * scores + mask) over the last dimension; scores (b, heads, s, s), mask
/// (b, 1, 1, s) (0 where attended, a large negative number on padding). Differentiable in
/// `scores`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op2(
        &mask.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
        },
    )
}

/// Sum of a slice with eight independent accumulators (vectorises; the order differs from a
/// left-to-right sum by rounding only).
#[inline(always)]
fn sum8(xs: &[f32], f: impl Fn(usize, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.len() / 8;
    for c in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            let i = c * 8 + l;
            *a += f(i, xs[i]);
        }
    }
    let mut total: f32 = acc.iter().sum();
    for (i, &x) in xs.iter().enumerate().skip(chunks * 8) {
        total += f(i, x);
    }
    total
}

/// Largest element (eight lanes, so it vectorises); -inf for an empty slice.
#[inline(always)]
fn max8(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m });
    for &x in rest {
        m = if x > m { x } else { m };
    }
    m
}

/// Mean and 1/sqrt(variance + eps) of one row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = sum8(x, |_, v| v) / d;
    let var = sum8(x, |_, v| (v - mean) * (v - mean)) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer norm of each row of `x` (rows of `w.len()`) into `out`, in parallel.
pub(super) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let rows_per_item = (CHUNK / d.max(1)).max(1);
    out.par_chunks_mut(rows_per_item * d)
        .zip(x.par_chunks(rows_per_item * d))
        .for_each(|(o, x)| layer_norm_block(o, x, w, b, eps));
}

/// The layer norm's backward pass over rows: `dx` gets d(input) from the input rows `x` and the
/// gradient rows `g`; d(weight) and d(bias) are added to `dw` and `db`.
pub(super) fn layer_norm_grad_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let d = w.len();
    let rows_per_item = (CHUNK / d.max(1)).max(1);
    // dx per row; each work item also sums its rows' contributions to d(weight), d(bias).
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows_per_item * d)
        .zip(
            x.par_chunks(rows_per_item * d)
                .zip(g.par_chunks(rows_per_item * d)),
        )
        .map(|(dx, (x, g))| {
            let mut acc = vec![0f32; 2 * d];
            let mut xhat = vec![0f32; d];
            layer_norm_grad_block(dx, x, g, w, eps, &mut acc, &mut xhat);
            acc
        })
        .collect();
    for acc in partial {
        let (pw, pb) = acc.split_at(d);
        dw.iter_mut().zip(pw).for_each(|(o, a)| *o += a);
        db.iter_mut().zip(pb).for_each(|(o, a)| *o += a);
    }
}

/// Layer normalisation over the last dimension with weight and bias.
struct LayerNorm {
    eps: f32,
}

/// Rows of a (n, d) view of a contiguous tensor with `d` = its last dimension.
fn rows_of(l: &Layout) -> (usize, usize) {
    let d = *l.dims().last().unwrap_or(&1);
    (l.shape().elem_count() / d.max(1), d)
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "tripletlab-layer-norm"
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
        let x = data(s1, l1, "layer norm input")?;
        let w = data(s2, l2, "layer norm weight")?;
        let b = data(s3, l3, "layer norm bias")?;
        let (n, d) = rows_of(l1);
        if w.len() != d || b.len() != d {
            candle_core::bail!(
                "layer norm: rows of {d}, weight {}, bias {}",
                w.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; n * d];
        layer_norm_rows(x, w, b, self.eps, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d) = (x.elem_count() / w.elem_count(), w.elem_count());
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, 1)?.reshape(d)?;
        let db = all.narrow(0, n + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The layer norm's backward pass: rows 0..n are dx, row n is d(weight), row n + 1 is d(bias).
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "tripletlab-layer-norm-grad"
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
        let x = data(s1, l1, "layer norm grad input")?;
        let w = data(s2, l2, "layer norm grad weight")?;
        let g = data(s3, l3, "layer norm grad")?;
        let (n, d) = rows_of(l1);
        if w.len() != d || g.len() != n * d {
            candle_core::bail!(
                "layer norm grad: shapes {:?}, {:?}, {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut out = vec![0f32; (n + 2) * d];
        let (dx, dwb) = out.split_at_mut(n * d);
        let (dw, db) = dwb.split_at_mut(d);
        layer_norm_grad_rows(x, w, g, self.eps, dx, dw, db);
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

/// Layer normalisation over the last dimension (as torch's `LayerNorm`), differentiable in the
/// input, weight and bias.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// (b·s, heads·d) token rows <-> (b·heads, s, d) per-head blocks: one permuting copy each way,
/// one autograd node instead of a reshape, transpose, copy and reshape.
#[derive(Clone, Copy)]
struct Heads {
    batch: usize,
    seq: usize,
    heads: usize,
    /// true: rows to heads; false: heads to rows.
    split: bool,
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        if self.split {
            "tripletlab-split-heads"
        } else {
            "tripletlab-merge-heads"
        }
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(st, l, self.name())?;
        let (b, s, nh) = (self.batch, self.seq, self.heads);
        let total = l.shape().elem_count();
        if b * s * nh == 0 || !total.is_multiple_of(b * s * nh) {
            candle_core::bail!("{}: shape {:?} for {b}x{s}x{nh}", self.name(), l.dims());
        }
        let d = total / (b * s * nh);
        let mut out = vec![0f32; total];
        // Work item = one sequence: its s rows of nh*d values, or its nh blocks of s*d values.
        out.par_chunks_mut(s * nh * d)
            .zip(x.par_chunks(s * nh * d))
            .for_each(|(o, x)| {
                for t in 0..s {
                    for h in 0..nh {
                        let row = t * nh * d + h * d; // token-row layout
                        let blk = h * s * d + t * d; // per-head layout
                        let (dst, src) = if self.split { (blk, row) } else { (row, blk) };
                        o[dst..dst + d].copy_from_slice(&x[src..src + d]);
                    }
                }
            });
        let shape = if self.split {
            Shape::from((b * nh, s, d))
        } else {
            Shape::from((b * s, nh * d))
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Heads {
            split: !self.split,
            ..*self
        };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}

/// One of query, key, value out of a fused (b·s, 3·heads·d) projection, as (b·heads, s, d); for
/// inference (no backward pass).
struct QkvPart {
    batch: usize,
    seq: usize,
    heads: usize,
    part: usize,
}

impl CustomOp1 for QkvPart {
    fn name(&self) -> &'static str {
        "tripletlab-qkv-part"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(st, l, self.name())?;
        let (b, s, nh) = (self.batch, self.seq, self.heads);
        let (rows, width) = rows_of(l);
        if rows != b * s || width % (3 * nh) != 0 || self.part > 2 {
            candle_core::bail!("qkv part: shape {:?} for {b}x{s}x{nh}", l.dims());
        }
        let d = width / (3 * nh);
        let mut out = vec![0f32; b * s * nh * d];
        out.par_chunks_mut(s * nh * d)
            .zip(x.par_chunks(s * width))
            .for_each(|(o, x)| {
                for t in 0..s {
                    for h in 0..nh {
                        let src = t * width + self.part * nh * d + h * d;
                        let dst = h * s * d + t * d;
                        o[dst..dst + d].copy_from_slice(&x[src..src + d]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b * nh, s, d))))
    }
}

/// Query (0), key (1) or value (2) heads of a fused projection (b·s, 3·heads·d), as
/// (b·heads, s, d). Inference only.
pub fn qkv_part(
    qkv: &Tensor,
    batch: usize,
    seq: usize,
    heads: usize,
    part: usize,
) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&QkvPart {
        batch,
        seq,
        heads,
        part,
    })
}

/// (b·s, heads·d) -> (b·heads, s, d); differentiable.
pub fn split_heads(xs: &Tensor, batch: usize, seq: usize, heads: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Heads {
        batch,
        seq,
        heads,
        split: true,
    })
}

/// (b·heads, s, d) -> (b·s, heads·d); differentiable.
pub fn merge_heads(xs: &Tensor, batch: usize, seq: usize, heads: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Heads {
        batch,
        seq,
        heads,
        split: false,
    })
}

/// `LN(x ⊙ mask + residual)` with weight and bias stacked as `wb` (2, d): a dense layer's dropout,
/// the residual connection and the layer norm as one autograd node.
struct DropoutAddNorm {
    mask: Option<Arc<Vec<f32>>>,
    eps: f32,
}

/// `x ⊙ mask + residual` (the mask already scaled by 1/(1-p)).
fn dropout_add(x: &[f32], residual: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    t.par_chunks_mut(CHUNK).enumerate().for_each(|(c, t)| {
        let range = c * CHUNK..c * CHUNK + t.len();
        let (x, r) = (&x[range.clone()], &residual[range.clone()]);
        match mask {
            Some(m) => {
                let m = &m[range];
                for (((t, &x), &r), &m) in t.iter_mut().zip(x).zip(r).zip(m) {
                    *t = x * m + r;
                }
            }
            None => {
                for ((t, &x), &r) in t.iter_mut().zip(x).zip(r) {
                    *t = x + r;
                }
            }
        }
    });
    t
}

/// The input, the residual and the keep-mask (if any) of a [`DropoutAddNorm`].
type AddNormInputs<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>);

impl DropoutAddNorm {
    fn inputs<'a>(
        &'a self,
        s1: &'a CpuStorage,
        l1: &Layout,
        s2: &'a CpuStorage,
        l2: &Layout,
    ) -> Result<AddNormInputs<'a>> {
        let x = data(s1, l1, "add-norm input")?;
        let r = data(s2, l2, "add-norm residual")?;
        let mask = self.mask.as_deref().map(|m| m.as_slice());
        if r.len() != x.len() || mask.is_some_and(|m| m.len() != x.len()) {
            candle_core::bail!("add-norm: input {:?}, residual {:?}", l1.dims(), l2.dims());
        }
        Ok((x, r, mask))
    }
}

impl CustomOp3 for DropoutAddNorm {
    fn name(&self) -> &'static str {
        "tripletlab-dropout-add-norm"
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
        let (x, r, mask) = self.inputs(s1, l1, s2, l2)?;
        let wb = data(s3, l3, "add-norm weight and bias")?;
        let (n, d) = rows_of(l1);
        if wb.len() != 2 * d {
            candle_core::bail!("add-norm: weight and bias {:?} for rows of {d}", l3.dims());
        }
        let (w, b) = wb.split_at(d);
        let mut t = dropout_add(x, r, mask);
        let rows_per_item = (CHUNK / d.max(1)).max(1);
        t.par_chunks_mut(rows_per_item * d).for_each(|t| {
            for row in t.chunks_mut(d) {
                let (mean, rstd) = row_stats(row, self.eps);
                for ((v, &w), &b) in row.iter_mut().zip(w).zip(b) {
                    *v = (*v - mean) * rstd * w + b;
                }
            }
        });
        debug_assert_eq!(t.len(), n * d);
        Ok((CpuStorage::F32(t), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = wb.elem_count() / 2;
        let n = x.elem_count() / d;
        // The normalised sum again, then the layer norm's backward pass on it.
        let t = x.apply_op2_no_bwd(
            residual,
            &DropoutAdd {
                mask: self.mask.clone(),
            },
        )?;
        let w = wb.get(0)?;
        let all = t.apply_op3_no_bwd(&w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dt = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dwb = all.narrow(0, n, 2)?;
        let dx = match &self.mask {
            Some(m) => (&dt * Tensor::from_slice(m, x.shape(), x.device())?)?,
            None => dt.clone(),
        };
        Ok((Some(dx), Some(dt), Some(dwb)))
    }
}

/// `x ⊙ mask + residual` as an op (for the backward pass of [`DropoutAddNorm`]).
struct DropoutAdd {
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for DropoutAdd {
    fn name(&self) -> &'static str {
        "tripletlab-dropout-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let helper = DropoutAddNorm {
            mask: self.mask.clone(),
            eps: 0.0,
        };
        let (x, r, mask) = helper.inputs(s1, l1, s2, l2)?;
        Ok((CpuStorage::F32(dropout_add(x, r, mask)), l1.shape().clone()))
    }
}

/// `LN(x ⊙ mask + residual)` over the last dimension, `mask` being a dropout keep-mask scaled by
/// 1/(1-p) (none in inference); differentiable in `x`, `residual`, `weight` and `bias`.
pub fn dropout_add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    let wb = Tensor::stack(&[weight, bias], 0)?;
    x.contiguous()?.apply_op3(
        &residual.contiguous()?,
        &wb,
        DropoutAddNorm {
            mask: mask.map(Arc::new),
            eps: eps as f32,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.3e-4;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64) - e).abs() / e);
            worst_erf = worst_erf.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan() && erf(f32::NAN).is_nan());
    }

    use crate::core::model::{max_abs_diff as max_diff, max_grad_diff};

    #[test]
    fn split_and_merge_heads_match_reshape_and_transpose() {
        let dev = Device::Cpu;
        let (b, sq, nh, d) = (2, 5, 3, 4);
        let x = Var::randn(0f32, 1.0, (b * sq, nh * d), &dev).unwrap();
        let ours = split_heads(x.as_tensor(), b, sq, nh).unwrap();
        let theirs = x
            .as_tensor()
            .reshape((b, sq, nh, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b * nh, sq, d))
            .unwrap();
        assert_eq!(max_diff(&ours, &theirs), 0.0);
        let back = merge_heads(&ours, b, sq, nh).unwrap();
        // The same heads out of the middle third of a fused projection.
        let fused = Tensor::cat(
            &[
                &(x.as_tensor() + 1.0).unwrap(),
                x.as_tensor(),
                x.as_tensor(),
            ],
            1,
        )
        .unwrap();
        assert_eq!(
            max_diff(&qkv_part(&fused, b, sq, nh, 1).unwrap(), &theirs),
            0.0
        );
        assert_eq!(max_diff(&back, x.as_tensor()), 0.0);
        let up = Tensor::randn(0f32, 1.0, (b * nh, sq, d), &dev).unwrap();
        assert_eq!(max_grad_diff(ours, theirs, &up, &[&x]), 0.0);
    }

    #[test]
    fn dropout_add_norm_matches_composed_ops_with_gradients() {
        let dev = Device::Cpu;
        let (n, d) = (6, 11);
        let x = Var::randn(0f32, 1.0, (n, d), &dev).unwrap();
        let r = Var::randn(0f32, 1.0, (n, d), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, d, &dev).unwrap();
        let b = Var::randn(0f32, 0.3, d, &dev).unwrap();
        let mask: Vec<f32> = (0..n * d)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.25 })
            .collect();
        let up = Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap();
        for m in [None, Some(mask)] {
            let ours = dropout_add_layer_norm(
                x.as_tensor(),
                r.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                1e-12,
                m.clone(),
            )
            .unwrap();
            let dropped = match &m {
                Some(m) => (x.as_tensor() * Tensor::from_slice(m, (n, d), &dev).unwrap()).unwrap(),
                None => x.as_tensor().clone(),
            };
            let theirs = candle_nn::ops::layer_norm_slow(
                &(dropped + r.as_tensor()).unwrap(),
                w.as_tensor(),
                b.as_tensor(),
                1e-12,
            )
            .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let diff = max_grad_diff(ours, theirs, &up, &[&x, &r, &w, &b]);
            assert!(diff < 1e-4, "gradient differs by {diff}");
        }
    }

    #[test]
    fn layer_norm_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0.5f32, 2.0, (3, 4, 19), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 19, &dev).unwrap();
        let b = Var::randn(0f32, 0.3, 19, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 4, 19), &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let theirs =
            candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12)
                .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let d = max_grad_diff(ours, theirs, &up, &[&x, &w, &b]);
        assert!(d < 1e-4, "gradient differs by {d}");
    }

    #[test]
    fn gelu_and_masked_softmax_match_candle_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 2.0, (3, 5, 7), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        assert!(max_grad_diff(ours, theirs, &up, &[&x]) < 1e-5);

        let scores = Var::randn(0f32, 3.0, (2, 3, 4, 4), &dev).unwrap();
        let mask = Tensor::new(&[0f32, 0., 0., -1e9, 0., 0., -1e9, -1e9], &dev)
            .unwrap()
            .reshape((2, 1, 1, 4))
            .unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap();
        let ours = masked_softmax(scores.as_tensor(), &mask, 0.5).unwrap();
        let scaled = (scores.as_tensor() * 0.5).unwrap();
        let theirs =
            candle_nn::ops::softmax(&scaled.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        assert!(max_grad_diff(ours, theirs, &up, &[&scores]) < 1e-5);
    }
}
