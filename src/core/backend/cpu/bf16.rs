//! Matrix products with bf16 inputs and f32 accumulation on the CPU's AVX512-BF16 unit
//! (`vdpbf16ps`: 32 multiply-adds per instruction, twice the f32 FMA's 16), for the `bf16`
//! compute mode ([`crate::core::backend::Compute`]). Both operands are rounded to bf16 (round to
//! nearest even) while they are packed (or A comes already rounded, as [`softmax_pairs`] writes
//! the attention probabilities); every sum is kept in f32, in a fixed order that does not
//! depend on how many rows a call has, so a text's vector does not depend on its batch.
//!
//! Layout: op(B) is packed into panels of 32 columns, each a run of k-pairs holding, per column,
//! the two bf16 values of rows 2p and 2p+1 in one 32-bit word (what `vdpbf16ps` multiplies
//! pairwise); op(A) into rows of pairs, so one step of the micro-kernel broadcasts one word from
//! each of 8 rows (8 streams the prefetcher follows). An 8 × 32 block of C lives in 16 registers while 256 pairs of k stream past
//! it (8 rather than 12 rows: the debug profile's register allocation spills 24 accumulators);
//! rows of C are split across threads in blocks of 96.
//!
//! Unsafe code (allowed for this module, see ARCHITECTURE.md): the intrinsics, called only after
//! [`available`] said the CPU has the features, and raw pointers into slices whose extents are
//! checked where the pointers are made.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Columns of C per micro-kernel (two 16-lane registers).
const NR: usize = 32;
/// Rows of C per micro-kernel.
const MR: usize = 8;
/// k-pairs per pass over a block of C.
const KC: usize = 256;
/// Rows of C per parallel work item.
const MB: usize = 96;

/// Whether this CPU can run the bf16 products (AVX512F and AVX512-BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 -> bf16 bits, rounded to nearest even (as `vcvtne2ps2bf16`); NaN stays NaN.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// bf16 bits -> f32 (exact).
#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[inline]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | ((to_bf16(hi) as u32) << 16)
}

/// How C starts before the products are added.
#[derive(Clone, Copy)]
pub enum Init<'a> {
    /// C = op(A)·op(B).
    Zero,
    /// C += op(A)·op(B).
    Add,
    /// C = op(A)·op(B) + a bias row (one value per column) on every row.
    Bias(&'a [f32]),
}

/// `c = op(a) · op(b)` (started as [`Init`] says), row-major and densely packed as
/// [`super::blas::sgemm`]: op(a) is `m x k` (`a` is `k x m` when `trans_a`), op(b) is `k x n`
/// (`b` is `n x k` when `trans_b`), `c` is `m x n`.
///
/// # Panics
/// When the CPU lacks AVX512-BF16 (callers check [`available`] when the mode is chosen), or a
/// slice is shorter than the matrix it stands for.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    init: Init,
) {
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    gemm_strided(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, n, init);
}

/// [`gemm`] on matrices whose rows lie `lda`, `ldb` and `ldc` elements apart (views into wider
/// buffers, as [`super::blas::sgemm_strided`]): row r of the stored `a` starts at `r * lda`.
///
/// # Panics
/// As [`gemm`], and when a leading dimension is smaller than its row.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    init: Init,
) {
    assert!(available(), "bf16 products need AVX512-BF16");
    if m == 0 || n == 0 {
        return;
    }
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    assert!(
        super::blas::view_fits(a.len(), ar, ac, lda),
        "bf16 gemm: A is shorter than {ar} x {ac} (rows {lda} apart)"
    );
    let lhs = if trans_a {
        Lhs::Trans(a, lda)
    } else {
        Lhs::Rows(a, lda)
    };
    product(lhs, trans_b, (m, n, k), (b, ldb), (c, ldc), init);
}

/// The left operand of a product.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    /// op(a) = a, rows `lda` apart.
    Rows(&'a [f32], usize),
    /// op(a) = aᵀ, the stored rows `lda` apart.
    Trans(&'a [f32], usize),
    /// Already packed: each row's bf16 pairs, `k.div_ceil(2)` words per row.
    Pairs(&'a [u32]),
}

/// The part of [`gemm_strided`] and [`gemm_pairs`] after A is checked (C not empty): checks B,
/// C and the bias, then runs the product.
fn product(
    lhs: Lhs,
    trans_b: bool,
    (m, n, k): (usize, usize, usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    init: Init,
) {
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(
        super::blas::view_fits(b.len(), br, bc, ldb),
        "bf16 gemm: B is shorter than {br} x {bc} (rows {ldb} apart)"
    );
    assert!(
        super::blas::view_fits(c.len(), m, n, ldc),
        "bf16 gemm: C is shorter than {m} x {n} (rows {ldc} apart)"
    );
    if let Init::Bias(bias) = init {
        assert!(bias.len() >= n, "bf16 gemm: bias is shorter than {n}");
    }
    if k == 0 {
        for r in c.chunks_mut(ldc).take(m) {
            match init {
                Init::Zero => r[..n].fill(0.0),
                Init::Add => {}
                Init::Bias(bias) => r[..n].copy_from_slice(&bias[..n]),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    x86::gemm(lhs, trans_b, (m, n, k), (b, ldb), (c, ldc), init);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = lhs;
        unreachable!("available() is false off x86_64");
    }
}

/// [`gemm_strided`] with A (`m x k`, not transposed) given already as rows of bf16 pairs,
/// `k.div_ceil(2)` words per row, as [`softmax_pairs`] writes them. With an odd `k` the high half
/// of each row's last word must be a finite value (0 as `softmax_pairs` writes it): it meets B's
/// zero padding, and 0 times NaN or infinity is NaN.
///
/// # Panics
/// As [`gemm_strided`], and when `k` is 0 while C is not empty (packed rows are never empty).
pub fn gemm_pairs(
    m: usize,
    n: usize,
    k: usize,
    pa: &[u32],
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    init: Init,
) {
    assert!(available(), "bf16 products need AVX512-BF16");
    if m == 0 || n == 0 {
        return;
    }
    assert!(k > 0, "bf16 gemm_pairs: k is 0");
    let kh = k.div_ceil(2);
    assert!(
        m.checked_mul(kh).is_some_and(|words| words <= pa.len()),
        "bf16 gemm: A is shorter than {m} rows of {kh} pairs"
    );
    product(Lhs::Pairs(pa), false, (m, n, k), (b, ldb), (c, ldc), init);
}

/// A softmax whose probabilities go straight into a bf16 product: for each row (of `len`) of
/// `scores`, `exp(scale · (s - max))` written as rows of bf16 pairs into `pairs`
/// (`len.div_ceil(2)` words per row, the input of [`gemm_pairs`]), and the row's 1/sum (of the
/// unrounded f32 values) into `inv`. The rows are left unnormalised: the caller scales the
/// product's rows by `inv`. A pass for the row's maximum and one that computes, sums and rounds,
/// 16 lanes at a time, instead of an f32 softmax, a store and a second read to round it. A NaN
/// score makes its row's sum, and so its `inv`, NaN (as the f32 softmax does); -inf scores get
/// probability 0.
///
/// # Panics
/// When the CPU lacks AVX512-BF16, `len` is 0 or does not divide `scores.len()`, or `pairs` or
/// `inv` is shorter than the rows.
pub fn softmax_pairs(scores: &[f32], len: usize, scale: f32, pairs: &mut [u32], inv: &mut [f32]) {
    assert!(available(), "bf16 products need AVX512-BF16");
    assert!(len > 0, "softmax_pairs: empty rows");
    assert!(
        scores.len().is_multiple_of(len),
        "softmax_pairs: {} scores are not rows of {len}",
        scores.len()
    );
    let rows = scores.len() / len;
    let kh = len.div_ceil(2);
    assert!(pairs.len() >= rows * kh && inv.len() >= rows);
    #[cfg(target_arch = "x86_64")]
    for ((row, out), inv) in scores
        .chunks_exact(len)
        .zip(pairs.chunks_exact_mut(kh))
        .zip(inv.iter_mut())
    {
        // SAFETY: the CPU's features were checked above.
        *inv = 1.0 / unsafe { x86::softmax_row_pairs(row, scale, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = scale;
        unreachable!("available() is false off x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The checked arguments of [`super::product`]: A, the sizes, B and C with their leading
    /// dimensions.
    pub(super) fn gemm(
        lhs: Lhs,
        trans_b: bool,
        (m, n, k): (usize, usize, usize),
        (b, ldb): (&[f32], usize),
        (c, ldc): (&mut [f32], usize),
        init: Init,
    ) {
        let kh = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        with_buffer(&PACKED_B, panels * kh * NR, |pb| {
            pack_b(trans_b, n, k, kh, b, ldb, pb);
            let pb = &*pb;
            let mut run = |pa_all: Option<&[u32]>| {
                let reach = (m - 1) * ldc + n;
                c[..reach]
                    .par_chunks_mut(MB * ldc)
                    .enumerate()
                    .for_each(|(bi, cb)| {
                        let (r0, rows) = (bi * MB, (cb.len() + ldc - n) / ldc);
                        match pa_all {
                            // SAFETY: the caller checked `available()`; `pa` holds `rows` rows of
                            // `kh` pairs, `pb` every panel, `cb` `rows` rows of `n`.
                            Some(p) => unsafe {
                                let pa = &p[r0 * kh..(r0 + rows) * kh];
                                block(rows, n, kh, pa, pb, (cb, ldc), init);
                            },
                            None => with_buffer(&PACKED_A, rows * kh, |pa| {
                                let Lhs::Rows(a, lda) = lhs else {
                                    unreachable!("only plain rows are packed per block")
                                };
                                // Each row as bf16 pairs, rows side by side: a micro-kernel
                                // step broadcasts one word from each of its rows.
                                for (r, out) in pa.chunks_exact_mut(kh).enumerate() {
                                    let row = &a[(r0 + r) * lda..][..k];
                                    // SAFETY: the caller checked `available()`.
                                    unsafe { row_pairs(row, out) };
                                }
                                // SAFETY: as above.
                                unsafe { block(rows, n, kh, pa, pb, (cb, ldc), init) }
                            }),
                        }
                    });
            };
            match lhs {
                Lhs::Trans(a, lda) => with_buffer(&PACKED_AT, m * kh, |pa| {
                    pack_a_trans(k, kh, a, lda, pa);
                    run(Some(pa));
                }),
                Lhs::Pairs(pa) => run(Some(pa)),
                Lhs::Rows(..) => run(None),
            }
        });
    }

    thread_local! {
        static PACKED_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        static PACKED_AT: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        static PACKED_B: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Runs `f` on `len` words of a per-thread buffer, kept between calls (a fresh buffer of
    /// megabytes per product costs more in page faults than the packing itself); a buffer
    /// already in use on this thread (a nested call) is replaced by a fresh one. The contents
    /// are whatever the last call left: every packing writes all of its words.
    fn with_buffer<R>(
        key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u32>>>,
        len: usize,
        f: impl FnOnce(&mut [u32]) -> R,
    ) -> R {
        key.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                f(&mut buf[..len])
            }
            Err(_) => f(&mut vec![0u32; len]),
        })
    }

    /// A contiguous f32 row as bf16 pairs (`out.len()` = ceil(row.len() / 2); an odd last
    /// element is paired with 0).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn row_pairs(row: &[f32], out: &mut [u32]) {
        let full = row.len() / 32;
        for (s, d) in row.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
            // SAFETY: `s` holds 32 floats, `d` 16 words. Masked (all-lane) loads and stores:
            // the plain ones are `read_unaligned`/`write_unaligned`, which the debug profile
            // checks and copies through the stack.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(!0, s.as_ptr());
                let hi = _mm512_maskz_loadu_ps(!0, s.as_ptr().wrapping_add(16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(d.as_mut_ptr().cast(), !0, v);
            }
        }
        let rest = &row[full * 32..];
        for (o, p) in out[full * 16..].iter_mut().zip(rest.chunks(2)) {
            *o = pair(p[0], p.get(1).copied().unwrap_or(0.0));
        }
    }

    /// `e^x` for x ≤ 0 in 16 lanes: the polynomial of [`crate::core::backend::cpu::kernels::exp`]
    /// (Cephes' `expf`) with fused multiply-adds and `vscalefps` for the power of two; 0 below
    /// -87 (and for -inf); NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let xc = _mm512_max_ps(x, c(-87.0));
        // Round to nearest, exceptions suppressed.
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(xc, c(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, c(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(n, c(-2.121_944_4e-4), r);
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, c(k));
        }
        let er = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), c(1.0));
        let y = _mm512_scalef_ps(er, n);
        // Below -87 (and for -inf) the result is 0, as the scalar `exp` gives; NaN passes.
        let y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, c(-87.0)), y);
        _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), x)
    }

    /// One row of [`super::softmax_pairs`]: `out` gets `exp(scale · (s - max))` as bf16 pairs
    /// (`row.len().div_ceil(2)` words; an odd last value is paired with 0); returns the sum of
    /// the f32 values.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; `out` holds `row.len().div_ceil(2)` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn softmax_row_pairs(row: &[f32], scale: f32, out: &mut [u32]) -> f32 {
        let len = row.len();
        debug_assert!(out.len() >= len.div_ceil(2));
        // Lanes `from..from + 16` that lie in the row.
        let lanes = |from: usize| -> __mmask16 {
            let v = len.saturating_sub(from).min(16);
            ((1u32 << v) - 1) as __mmask16
        };
        let p = row.as_ptr();
        // SAFETY (whole body): every load and store is masked to the row's `len` values and
        // the `len.div_ceil(2)` words of `out`.
        unsafe {
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in (0..len).step_by(16) {
                let v = _mm512_mask_loadu_ps(max, lanes(i), p.wrapping_add(i));
                // `vmaxps` returns its second operand when either is NaN: NaN scores are
                // passed over here and make the row's sum NaN below.
                max = _mm512_max_ps(v, max);
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let sc = _mm512_set1_ps(scale);
            let mut sum = _mm512_setzero_ps();
            for i in (0..len).step_by(32) {
                let (m0, m1) = (lanes(i), lanes(i + 16));
                // Masked-off lanes are 0, so they add nothing and pair an odd last value
                // with 0.
                macro_rules! exp_at {
                    ($m:expr, $at:expr) => {{
                        let v = _mm512_maskz_loadu_ps($m, p.wrapping_add($at));
                        _mm512_maskz_mov_ps($m, exp16(_mm512_mul_ps(_mm512_sub_ps(v, max), sc)))
                    }};
                }
                let (lo, hi) = (exp_at!(m0, i), exp_at!(m1, i + 16));
                sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
                let words = (len - i).min(32).div_ceil(2);
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                let wm = ((1u32 << words) - 1) as __mmask16;
                _mm512_mask_storeu_epi32(out.as_mut_ptr().wrapping_add(i / 2).cast(), wm, v);
            }
            _mm512_reduce_add_ps(sum)
        }
    }

    /// op(b) into panels of 32 columns × `kh` pairs (columns past `n` and the pair after an
    /// odd `k` are 0), one panel per work item.
    fn pack_b(trans_b: bool, n: usize, k: usize, kh: usize, b: &[f32], ldb: usize, pb: &mut [u32]) {
        pb.par_chunks_mut(kh * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                let j0 = panel * NR;
                let width = NR.min(n - j0);
                if width < NR {
                    out.fill(0);
                }
                if trans_b {
                    // Column j of op(b) is row j of b: convert it, then spread it over the panel.
                    let mut tmp = vec![0u32; kh];
                    for jj in 0..width {
                        let j = j0 + jj;
                        // SAFETY: the caller checked `available()`.
                        unsafe { row_pairs(&b[j * ldb..][..k], &mut tmp) };
                        for (slot, &v) in out[jj..].iter_mut().step_by(NR).zip(&tmp) {
                            *slot = v;
                        }
                    }
                } else {
                    // Rows 2p and 2p+1 of b interleaved, 32 columns at a time.
                    let zeros = [0f32; NR];
                    for (p, o) in out.chunks_exact_mut(NR).enumerate() {
                        let r0 = &b[2 * p * ldb + j0..][..width];
                        let r1 = if 2 * p + 1 < k {
                            &b[(2 * p + 1) * ldb + j0..][..width]
                        } else {
                            &zeros[..width]
                        };
                        // SAFETY: the caller checked `available()`.
                        unsafe { pair_rows(r0, r1, &mut o[..width]) };
                    }
                }
            });
    }

    /// `out[i]` = the bf16 pair (r0[i], r1[i]), 16 at a time (the `vcvtneps2bf16` rounding);
    /// the three slices have the same length.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pair_rows(r0: &[f32], r1: &[f32], out: &mut [u32]) {
        let n = out.len().min(r0.len()).min(r1.len());
        let full = n / 16;
        for i in (0..full).map(|c| c * 16) {
            // SAFETY: elements i..i+16 of all three slices exist (i + 16 <= n). Masked
            // (all-lane) loads and stores, as in `row_pairs`.
            unsafe {
                let lo = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(!0, r0.as_ptr().wrapping_add(i)));
                let hi = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(!0, r1.as_ptr().wrapping_add(i)));
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
                let v = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                _mm512_mask_storeu_epi32(out.as_mut_ptr().wrapping_add(i).cast(), !0, v);
            }
        }
        for j in full * 16..n {
            out[j] = pair(r0[j], r1[j]);
        }
    }

    /// op(a) = aᵀ (a stored `k x m`, rows `lda` apart) as rows of pairs into `pa` (`m * kh`
    /// words), transposed in 64 × 64 tiles.
    fn pack_a_trans(k: usize, kh: usize, a: &[f32], lda: usize, pa: &mut [u32]) {
        const T: usize = 64;
        pa.par_chunks_mut(T * kh)
            .enumerate()
            .for_each(|(ci, rows)| {
                let i0 = ci * T;
                let ni = rows.len() / kh;
                let mut tile = [[0u32; T]; T];
                for p0 in (0..kh).step_by(T) {
                    let np = T.min(kh - p0);
                    let zeros = [0f32; T];
                    for (pp, t) in tile.iter_mut().enumerate().take(np) {
                        let q = 2 * (p0 + pp);
                        let r0 = &a[q * lda + i0..][..ni];
                        let r1 = if q + 1 < k {
                            &a[(q + 1) * lda + i0..][..ni]
                        } else {
                            &zeros[..ni]
                        };
                        // SAFETY: the caller checked `available()`.
                        unsafe { pair_rows(r0, r1, &mut t[..ni]) };
                    }
                    for (ii, row) in rows.chunks_mut(kh).enumerate() {
                        for (pp, t) in tile.iter().enumerate().take(np) {
                            row[p0 + pp] = t[ii];
                        }
                    }
                }
            });
    }

    /// All of C's `rows x n` block: k in passes of [`KC`] pairs, panels, then strips of
    /// [`MR`] rows; `pa` holds the rows' pairs, `kh` per row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn block(
        rows: usize,
        n: usize,
        kh: usize,
        pa: &[u32],
        pb: &[u32],
        (c, ldc): (&mut [f32], usize),
        init: Init,
    ) {
        assert!(pa.len() >= rows * kh && n <= ldc && c.len() >= (rows - 1) * ldc + n);
        assert!(pb.len() >= n.div_ceil(NR) * kh * NR);
        let mut p0 = 0;
        while p0 < kh {
            let kc = KC.min(kh - p0);
            let start = if p0 > 0 { Init::Add } else { init };
            for j0 in (0..n).step_by(NR) {
                let nv = NR.min(n - j0);
                let bp = &pb[(j0 / NR) * kh * NR + p0 * NR..][..kc * NR];
                let bias = match start {
                    Init::Bias(b) => Some(&b[j0..j0 + nv]),
                    _ => None,
                };
                let add = matches!(start, Init::Add);
                for r in (0..rows).step_by(MR) {
                    let mr = MR.min(rows - r);
                    let mr_span = (mr - 1) * kh + kc;
                    let t = Tile {
                        a: pa[r * kh + p0..][..mr_span].as_ptr(),
                        lda: kh,
                        b: bp.as_ptr(),
                        c: c[r * ldc + j0..].as_mut_ptr(),
                        ldc,
                        kc,
                        nv,
                        add,
                        bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                    };
                    // SAFETY: rows r..r+mr hold kc words from pair p0, `bp` kc*NR words, rows
                    // r..r+mr of C reach column j0+nv; the features are enabled on this
                    // function.
                    unsafe {
                        match mr {
                            8 => micro::<8>(&t),
                            7 => micro::<7>(&t),
                            6 => micro::<6>(&t),
                            5 => micro::<5>(&t),
                            4 => micro::<4>(&t),
                            3 => micro::<3>(&t),
                            2 => micro::<2>(&t),
                            _ => micro::<1>(&t),
                        }
                    }
                }
            }
            p0 += kc;
        }
    }

    /// One micro-kernel call: R rows × up to 32 columns of C over `kc` pairs.
    struct Tile {
        /// The first row's pairs from p0; row r's are `r * lda` words on.
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        kc: usize,
        /// Valid columns (≤ 32); the rest are masked off.
        nv: usize,
        add: bool,
        /// `nv` bias values, or null.
        bias: *const f32,
    }

    /// # Safety
    /// The tile's pointers reach what [`Tile`] describes for R rows; AVX512-BF16 is present.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn micro<const R: usize>(t: &Tile) {
        let mask = |from: usize| -> __mmask16 {
            let v = t.nv.saturating_sub(from).min(16);
            ((1u32 << v) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(16));
        // The accumulators are indexed only by constants (the rows unrolled by `rows!`, the
        // ones past R folded away), so they live in registers in every profile: a loop over r
        // would leave them in memory unless the optimiser unrolls it, which the debug profile
        // (the app's and the tests') does not. Pointer steps wrap instead of being checked for
        // the same reason.
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        macro_rules! rows {
            ($($r:literal)*) => { $( if $r < R { rows_body!($r); } )* };
        }
        // SAFETY (whole body): see the function's contract; masked loads and stores touch only
        // the `nv` valid columns, and row r < R is read and written only.
        unsafe {
            let c = |r: usize| t.c.wrapping_add(r.wrapping_mul(t.ldc));
            let bias = !t.bias.is_null();
            let (bias0, bias1) = if bias {
                (
                    _mm512_maskz_loadu_ps(m0, t.bias),
                    _mm512_maskz_loadu_ps(m1, t.bias.wrapping_add(16)),
                )
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            macro_rules! rows_body {
                ($r:literal) => {
                    if bias {
                        acc[$r] = [bias0, bias1];
                    } else if t.add {
                        acc[$r][0] = _mm512_maskz_loadu_ps(m0, c($r));
                        acc[$r][1] = _mm512_maskz_loadu_ps(m1, c($r).wrapping_add(16));
                    }
                };
            }
            rows!(0 1 2 3 4 5 6 7);
            let (mut a, mut b) = (t.a, t.b);
            for _ in 0..t.kc {
                // Masked loads (all lanes): `_mm512_loadu_si512` is a `read_unaligned`, which
                // the debug profile checks and copies through the stack on every step.
                let b0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(!0, b.cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_maskz_loadu_epi32(!0, b.wrapping_add(16).cast()));
                macro_rules! rows_body {
                    ($r:literal) => {
                        // An intrinsic load, not `*ptr`: the debug profile checks the
                        // alignment of every raw-pointer dereference.
                        let x: __m512bh = std::mem::transmute(_mm512_broadcastss_ps(_mm_load_ss(
                            a.wrapping_add($r * t.lda).cast::<f32>(),
                        )));
                        acc[$r][0] = _mm512_dpbf16_ps(acc[$r][0], x, b0);
                        acc[$r][1] = _mm512_dpbf16_ps(acc[$r][1], x, b1);
                    };
                }
                rows!(0 1 2 3 4 5 6 7);
                a = a.wrapping_add(1);
                b = b.wrapping_add(NR);
            }
            macro_rules! rows_body {
                ($r:literal) => {
                    _mm512_mask_storeu_ps(c($r), m0, acc[$r][0]);
                    _mm512_mask_storeu_ps(c($r).wrapping_add(16), m1, acc[$r][1]);
                };
            }
            rows!(0 1 2 3 4 5 6 7);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blas::tests::naive;
    use super::*;

    /// Whether this CPU lacks AVX512-BF16 (then the test is skipped, and says so).
    fn skipped() -> bool {
        let skip = !available();
        if skip {
            eprintln!("skipped: this CPU has no AVX512-BF16");
        }
        skip
    }

    /// `len` small integers (exact in bf16, their products' sums exact in f32), centred on 0.
    fn exact(len: usize, step: usize, modulus: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * step) % modulus) as f32 - (modulus / 2) as f32)
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: it goes to the even one (1.0); a hair
        // above goes up.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(
            from_bf16(to_bf16(1.0 + 1.0 / 256.0 + 1e-6)),
            1.0 + 2.0 / 256.0
        );
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    /// Integers up to 8 bits are exact in bf16 and their sums exact in f32, so the products must
    /// equal a plain product exactly: every transpose, odd k, ragged row and column edges, and
    /// each way C starts.
    #[test]
    fn products_equal_a_plain_product_on_exact_inputs() {
        if skipped() {
            return;
        }
        for (m, n, k) in [(37, 29, 70), (301, 140, 131), (13, 33, 1), (96, 64, 600)] {
            let (a, b) = (exact(m * k, 37, 17), exact(n * k, 5, 11));
            let bias: Vec<f32> = (0..n).map(|j| j as f32 - 3.0).collect();
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let want = naive(ta, tb, m, n, k, &a, &b);
                let mut c = vec![7.0f32; m * n];
                gemm(ta, tb, m, n, k, &a, &b, &mut c, Init::Zero);
                assert_eq!(c, want, "{m}x{n}x{k} {ta} {tb}");
                let mut c = vec![1.0f32; m * n];
                gemm(ta, tb, m, n, k, &a, &b, &mut c, Init::Add);
                assert!(c.iter().zip(&want).all(|(x, y)| *x == y + 1.0));
                let mut c = vec![7.0f32; m * n];
                gemm(ta, tb, m, n, k, &a, &b, &mut c, Init::Bias(&bias));
                for (i, row) in c.chunks(n).enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        assert_eq!(*v, want[i * n + j] + bias[j], "bias {i},{j}");
                    }
                }
            }
        }
    }

    /// Views into wider buffers (as attention's heads are) give the dense product, and C's
    /// elements outside the view keep their values.
    #[test]
    fn strided_views_equal_the_dense_product() {
        if skipped() {
            return;
        }
        let (m, n, k) = (131, 37, 45);
        let (a, b) = (exact(m * k, 37, 17), exact(n * k, 5, 11));
        // `rows x cols` stored with `pad` extra elements per row (filled with NaN: a read outside
        // the view would show in the result).
        let widen = |x: &[f32], rows: usize, cols: usize, pad: usize| {
            let mut w = vec![f32::NAN; rows * (cols + pad)];
            for r in 0..rows {
                w[r * (cols + pad)..][..cols].copy_from_slice(&x[r * cols..][..cols]);
            }
            w
        };
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let want = naive(ta, tb, m, n, k, &a, &b);
            let (wa, wb) = (widen(&a, ar, ac, 3), widen(&b, br, bc, 5));
            let ldc = n + 7;
            let mut c = vec![-1.0f32; (m - 1) * ldc + n];
            gemm_strided(
                ta,
                tb,
                m,
                n,
                k,
                &wa,
                ac + 3,
                &wb,
                bc + 5,
                &mut c,
                ldc,
                Init::Zero,
            );
            for i in 0..m {
                assert_eq!(&c[i * ldc..][..n], &want[i * n..][..n], "{ta} {tb} row {i}");
                if i + 1 < m {
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == -1.0));
                }
            }
        }
    }

    /// On real-valued inputs the result is the exact product of the bf16-rounded inputs (to f32
    /// summation error), and a row's values do not depend on the other rows of the call.
    #[test]
    fn products_are_of_the_rounded_inputs_and_independent_of_the_batch() {
        if skipped() {
            return;
        }
        let (m, n, k) = (50, 70, 333);
        let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.731).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.377).cos()).collect();
        let round = |v: &[f32]| v.iter().map(|&x| from_bf16(to_bf16(x))).collect::<Vec<_>>();
        let want = naive(false, true, m, n, k, &round(&a), &round(&b));
        let plain = naive(false, true, m, n, k, &a, &b);
        let mut c = vec![0f32; m * n];
        gemm(false, true, m, n, k, &a, &b, &mut c, Init::Zero);
        let (mut worst, mut rounding) = (0f32, 0f32);
        for ((x, y), z) in c.iter().zip(&want).zip(&plain) {
            worst = worst.max((x - y).abs());
            rounding = rounding.max((y - z).abs());
        }
        assert!(worst < 1e-4, "differs from the rounded product by {worst}");
        // The rounding itself is visible (so the test would see an f32 product).
        assert!(rounding > 1e-3, "rounding effect {rounding}");
        // The first 5 rows alone give the same bits.
        let mut few = vec![0f32; 5 * n];
        gemm(false, true, 5, n, k, &a[..5 * k], &b, &mut few, Init::Zero);
        assert_eq!(&few[..], &c[..5 * n]);
    }

    /// The fused softmax writes what the f32 softmax rounded to bf16 would be (within one bf16
    /// step where the two exponentials straddle a rounding boundary), its sums match, and an odd
    /// last value is paired with 0; rows of every length around the 16- and 32-lane edges, with
    /// scores far enough below the maximum to reach exp's cut-off at -87, and -inf scores.
    #[test]
    fn softmax_pairs_are_the_rounded_softmax() {
        if skipped() {
            return;
        }
        use super::super::kernels::exp;
        for len in [
            1usize, 2, 7, 15, 16, 17, 31, 32, 33, 47, 48, 64, 80, 100, 257,
        ] {
            let rows = 3;
            let mut scores: Vec<f32> = (0..rows * len)
                .map(|i| ((i as f32) * 0.913).sin() * 9.0 - (i % 5) as f32 * 30.0)
                .collect();
            if len > 3 {
                scores[len + 3] = f32::NEG_INFINITY;
            }
            let kh = len.div_ceil(2);
            let mut pairs = vec![0xDEAD_BEEFu32; rows * kh + 1];
            let mut inv = vec![0f32; rows];
            // Scores 130 apart at most: scaled, the lowest fall below -87.
            let scale = 0.8;
            softmax_pairs(&scores, len, scale, &mut pairs, &mut inv);
            assert_eq!(
                pairs[rows * kh],
                0xDEAD_BEEF,
                "len {len}: wrote past the rows"
            );
            let mut cut_off = 0;
            for r in 0..rows {
                let row = &scores[r * len..][..len];
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                cut_off += row.iter().filter(|&&v| (v - max) * scale < -87.0).count();
                let e: Vec<f32> = row.iter().map(|&v| exp((v - max) * scale)).collect();
                let sum: f32 = e.iter().sum();
                assert!(
                    (inv[r] * sum - 1.0).abs() < 1e-5,
                    "len {len} row {r}: 1/sum {} vs {}",
                    inv[r],
                    1.0 / sum
                );
                for (j, &want) in e.iter().enumerate() {
                    let word = pairs[r * kh + j / 2];
                    let got = (if j % 2 == 0 { word } else { word >> 16 }) as u16;
                    let (g, w) = (got as i32, to_bf16(want) as i32);
                    assert!(
                        (g - w).abs() <= 1,
                        "len {len} row {r} col {j}: {got:#x} vs {w:#x}"
                    );
                }
                if len % 2 == 1 {
                    assert_eq!(
                        pairs[r * kh + kh - 1] >> 16,
                        0,
                        "len {len}: odd value's partner"
                    );
                }
            }
            if len >= 15 {
                assert!(cut_off > 0, "len {len}: no score reached the cut-off");
            }
        }
        // A NaN score makes its row's sum NaN, wherever it lies; the other rows are untouched.
        let len = 40;
        for at in [0, 17, 39] {
            let mut scores: Vec<f32> = (0..2 * len).map(|i| (i as f32 * 0.3).cos()).collect();
            scores[len + at] = f32::NAN;
            let (mut pairs, mut inv) = (vec![0u32; len], vec![0f32; 2]);
            softmax_pairs(&scores, len, 1.0, &mut pairs, &mut inv);
            assert!(
                inv[0].is_finite() && inv[1].is_nan(),
                "NaN at {at}: {inv:?}"
            );
        }
    }

    /// A product from pre-packed pairs equals the same product from the f32 rows, bit for bit,
    /// on strided B and C.
    #[test]
    fn products_of_packed_pairs_equal_products_of_rows() {
        if skipped() {
            return;
        }
        for (m, n, k) in [(37usize, 32usize, 70usize), (200, 33, 131), (5, 16, 1)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.731).sin()).collect();
            let (ldb, ldc) = (n + 3, n + 5);
            let b: Vec<f32> = (0..k * ldb).map(|i| ((i as f32) * 0.377).cos()).collect();
            let kh = k.div_ceil(2);
            let pa: Vec<u32> = a
                .chunks(k)
                .flat_map(|row| {
                    (0..kh).map(|p| {
                        let hi = row.get(2 * p + 1).copied().unwrap_or(0.0);
                        pair(row[2 * p], hi)
                    })
                })
                .collect();
            let mut want = vec![-1f32; (m - 1) * ldc + n];
            gemm_strided(
                false,
                false,
                m,
                n,
                k,
                &a,
                k,
                &b,
                ldb,
                &mut want,
                ldc,
                Init::Zero,
            );
            let mut got = vec![-1f32; (m - 1) * ldc + n];
            gemm_pairs(m, n, k, &pa, (&b, ldb), (&mut got, ldc), Init::Zero);
            assert_eq!(got, want, "{m}x{n}x{k}");
            // No rows, or no columns: nothing to do, C untouched.
            gemm_pairs(0, n, k, &[], (&b, ldb), (&mut got, ldc), Init::Zero);
            gemm_pairs(m, 0, k, &pa, (&[], 0), (&mut got, ldc), Init::Zero);
            assert_eq!(got, want, "{m}x{n}x{k}, empty products");
        }
    }

    /// Outputs too short for the rows are refused, not filled in part.
    #[test]
    fn softmax_pairs_refuses_outputs_shorter_than_its_rows() {
        if skipped() {
            return;
        }
        let run = |pairs: usize, inv: usize| {
            std::panic::catch_unwind(move || {
                let scores = vec![0.5f32; 3 * 10];
                softmax_pairs(&scores, 10, 1.0, &mut vec![0; pairs], &mut vec![0.0; inv]);
            })
            .is_ok()
        };
        assert!(run(15, 3));
        assert!(!run(15, 2), "inv one row short");
        assert!(!run(14, 3), "pairs one word short");
    }
}
