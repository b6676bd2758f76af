//! The engine's element-wise kernels on slices: the attention softmax and its backward pass,
//! erf-GELU and its derivative (one pass instead of libm's scalar `erff` per element), layer norm
//! and its backward pass; compiled for AVX-512, or AVX2 + FMA, when the CPU has them. They use a
//! branch-free `exp` and a rational `erf` the compiler vectorises.

use rayon::prelude::*;

/// Elements per parallel work item.
pub(super) const CHUNK: usize = 1 << 14;

/// Runs `f` compiled for AVX-512 (and AVX2 + FMA) when the CPU has it, else for AVX2 + FMA
/// when it has them, else as built (SSE2 on x86-64). The results are the same bit for bit: the
/// kernels' reductions use a fixed number of lanes, and Rust never fuses a multiply and an add
/// on its own.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: as below, with AVX512F also checked.
            #[allow(unsafe_code)]
            return unsafe { with_avx512(f) };
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

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 + FMA and as
/// built, and picks the widest the CPU has (as [`simd`], but certain: a closure handed to
/// [`simd`] is not always inlined into the wider function, and then runs as plain SSE2 code).
/// Helpers the body calls must be `#[inline(always)]`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $body
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as below, with AVX512F also checked.
                    #[allow(unsafe_code)]
                    return unsafe { avx512($($arg),*) };
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
