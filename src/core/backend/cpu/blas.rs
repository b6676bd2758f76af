//! Single-precision matrix products for the model's dense layers. A system BLAS found at run time
//! (OpenBLAS, MKL, or Accelerate on macOS) runs them about twice as fast as candle's built-in GEMM
//! on the CPUs measured (README "Speed"); without one, the `gemm` crate (candle's own GEMM) runs
//! them. Nothing is linked at build time, so the app builds and runs on a machine without a BLAS.
//!
//! `TRIPLETLAB_BLAS` chooses: unset tries the usual library names, `off` uses the built-in GEMM,
//! anything else is the path of a library that exports `cblas_sgemm`.
//!
//! This is the crate's one module with unsafe code: calls through C function pointers into the
//! loaded library, and the `gemm` crate's pointer-based entry point. Every call checks that the
//! slices cover the matrices it describes first.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type CblasSgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;
const CBLAS_TRANS: i32 = 112;

struct Blas {
    /// Kept loaded for the life of the process (the function pointer points into it).
    _lib: libloading::Library,
    sgemm: CblasSgemm,
    name: String,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

#[cfg(target_os = "macos")]
const CANDIDATES: &[&str] = &[
    "/System/Library/Frameworks/Accelerate.framework/Accelerate",
    "libopenblas.dylib",
];
#[cfg(target_os = "windows")]
const CANDIDATES: &[&str] = &["libopenblas.dll", "openblas.dll", "mkl_rt.dll"];
#[cfg(not(any(target_os = "macos", target_os = "windows")))]
const CANDIDATES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libopenblasp.so.0",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
];

fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(|| {
        let choice = std::env::var("TRIPLETLAB_BLAS").unwrap_or_default();
        match choice.as_str() {
            "off" | "none" | "0" => None,
            "" => CANDIDATES.iter().find_map(|name| open(name)),
            path => open(path),
        }
    })
    .as_ref()
}

/// Loads a library, finds `cblas_sgemm`, sets its thread count to candle's, and checks it on a
/// small product; any failure means "no BLAS".
fn open(name: &str) -> Option<Blas> {
    // SAFETY: loading a shared library runs its initialisers; the candidates are the system's
    // BLAS libraries (or the user's explicit choice), whose initialisers only set up their
    // thread pools.
    let lib = unsafe { libloading::Library::new(name) }.ok()?;
    // SAFETY: `cblas_sgemm` has this C signature in every CBLAS implementation.
    let sgemm: CblasSgemm = unsafe { lib.get::<CblasSgemm>(b"cblas_sgemm\0") }
        .ok()
        .map(|s| *s)?;
    // One thread inside the library: products are split across candle's threads instead (see
    // `sgemm`), so no library threads spin beside candle's pool.
    let threads = 1;
    for setter in [
        &b"openblas_set_num_threads\0"[..],
        b"MKL_Set_Num_Threads\0",
        b"bli_thread_set_num_threads\0",
    ] {
        // SAFETY: these thread-count setters take one C int in OpenBLAS, MKL and BLIS.
        if let Ok(set) = unsafe { lib.get::<unsafe extern "C" fn(i32)>(setter) } {
            unsafe { set(threads) };
            break;
        }
    }
    // OpenBLAS says its version and the kernels it picked for this CPU.
    let text = |symbol: &[u8]| -> Option<String> {
        // SAFETY: `openblas_get_config` and `openblas_get_corename` take no arguments and return
        // a static NUL-terminated string.
        let get =
            unsafe { lib.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(symbol) }.ok()?;
        let ptr = unsafe { get() };
        (!ptr.is_null()).then(|| {
            unsafe { std::ffi::CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let version = text(b"openblas_get_config\0")
        .map(|c| c.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let detail = match (version, text(b"openblas_get_corename\0")) {
        (Some(v), Some(core)) => format!("{v}, {core} kernels"),
        (Some(v), None) => v,
        _ => String::new(),
    };
    let blas = Blas {
        _lib: lib,
        sgemm,
        name: if detail.is_empty() {
            name.to_string()
        } else {
            format!("{detail} ({name})")
        },
    };
    // [[1,2],[3,4]] x [[5,6],[7,8]]^T = [[17,23],[39,53]]
    let (a, b, mut c) = ([1f32, 2., 3., 4.], [5f32, 6., 7., 8.], [0f32; 4]);
    call_blas(&blas, false, true, 2, 2, 2, &a, 2, &b, 2, &mut c, 2, false);
    (c == [17., 23., 39., 53.]).then_some(blas)
}

/// What runs the dense products: the BLAS library's name and configuration, or the built-in GEMM.
/// Looks for the library on first use.
pub fn backend() -> String {
    describe(blas())
}

/// [`backend`] once a product has run (so the caller never waits for the library search); `None`
/// before.
pub fn backend_if_chosen() -> Option<String> {
    BLAS.get().map(|b| describe(b.as_ref()))
}

/// Whether the products run on the built-in GEMM (no system BLAS found, or `TRIPLETLAB_BLAS=off`).
pub fn is_builtin() -> bool {
    blas().is_none()
}

fn describe(b: Option<&Blas>) -> String {
    match b {
        Some(b) => b.name.clone(),
        None => {
            "built-in GEMM (gemm crate); a system OpenBLAS would be about twice as fast".to_string()
        }
    }
}

/// Checks that `len` elements cover a row-major `rows x cols` matrix.
fn covers(len: usize, rows: usize, cols: usize) -> bool {
    rows.checked_mul(cols).is_some_and(|n| n <= len)
}

/// One CBLAS call; `lda` and `ldb` are the row lengths of `a` and `b` as stored.
#[allow(clippy::too_many_arguments)]
fn call_blas(
    blas: &Blas,
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
    accumulate: bool,
) {
    let flag = |t: bool| if t { CBLAS_TRANS } else { CBLAS_NO_TRANS };
    // The last element each operand's description reaches.
    let reach = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(a.len() >= reach(a_rows, a_cols, lda) && a_cols <= lda);
    assert!(b.len() >= reach(b_rows, b_cols, ldb) && b_cols <= ldb);
    assert!(c.len() >= reach(m, n, ldc) && n <= ldc);
    // SAFETY: the asserts above check that `a`, `b` and `c` cover op(A) (m x k), op(B) (k x n)
    // and C (m x n) with these leading dimensions; the library reads only those and writes
    // only C.
    unsafe {
        (blas.sgemm)(
            CBLAS_ROW_MAJOR,
            flag(trans_a),
            flag(trans_b),
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            ldc as i32,
        );
    }
}

/// `c = op(a) · op(b)`, all row-major and densely packed: op(a) is `m x k` (`a` is `k x m` when
/// `trans_a`), op(b) is `k x n` (`b` is `n x k` when `trans_b`), `c` is `m x n`.
///
/// # Panics
/// When a slice is shorter than the matrix it stands for, or a dimension exceeds `i32::MAX`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    gemm_into(trans_a, trans_b, m, n, k, a, b, c, false);
}

/// `c += op(a) · op(b)`, as [`sgemm`] otherwise (the dense layers start `c` as their bias).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_add(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    gemm_into(trans_a, trans_b, m, n, k, a, b, c, true);
}

#[allow(clippy::too_many_arguments)]
fn gemm_into(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(covers(a.len(), m, k), "sgemm: A is shorter than {m} x {k}");
    assert!(covers(b.len(), k, n), "sgemm: B is shorter than {k} x {n}");
    assert!(covers(c.len(), m, n), "sgemm: C is shorter than {m} x {n}");
    assert!(
        [m, n, k].iter().all(|&d| d <= i32::MAX as usize),
        "sgemm: dimension too large"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    if let Some(blas) = blas() {
        let (lda, ldb) = (if trans_a { m } else { k }, if trans_b { k } else { n });
        // Rows of C split across candle's threads, one single-threaded library call each.
        let threads = candle_core::utils::get_num_threads();
        let rows = if threads > 1 && m * n * k >= 128 * 128 * 128 {
            m.div_ceil(threads)
        } else {
            m
        };
        use rayon::prelude::*;
        c[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, c_rows)| {
                let i0 = i * rows;
                let mi = c_rows.len() / n;
                // op(A)'s rows i0.. start at row i0 of A, or at column i0 when A is transposed.
                let a_part = if trans_a { &a[i0..] } else { &a[i0 * k..] };
                call_blas(
                    blas, trans_a, trans_b, mi, n, k, a_part, lda, b, ldb, c_rows, n, accumulate,
                );
            });
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    builtin(trans_a, trans_b, m, n, k, a, b, c, parallelism, accumulate);
}

/// One product on the calling thread over strided row-major views: `c = op(a) · op(b)` (or
/// `c += …` when `accumulate`), where `lda`, `ldb` and `ldc` are the row lengths of the stored
/// matrices (a head's columns inside a row of all heads, for instance). For many small products
/// run in parallel by the caller (attention, one sequence per thread).
///
/// # Panics
/// When a slice does not reach the last element its description needs.
/// Whether a `rows x cols` matrix stored with rows `ld` apart fits in `len` elements: its rows
/// reach (rows - 1) * ld + cols (checked for overflow), and no row is wider than `ld`.
pub(super) fn view_fits(len: usize, rows: usize, cols: usize, ld: usize) -> bool {
    cols <= ld
        && (rows == 0
            || (rows - 1)
                .checked_mul(ld)
                .and_then(|x| x.checked_add(cols))
                .is_some_and(|x| x <= len))
}

#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided(
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
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(view_fits(c.len(), m, n, ldc), "sgemm: C out of range");
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(
        view_fits(a.len(), a_rows, a_cols, lda),
        "sgemm: A out of range"
    );
    assert!(
        view_fits(b.len(), b_rows, b_cols, ldb),
        "sgemm: B out of range"
    );
    assert!(
        [m, n, k, lda, ldb, ldc]
            .iter()
            .all(|&d| d <= i32::MAX as usize),
        "sgemm: dimension too large"
    );
    if let Some(blas) = blas() {
        return call_blas(
            blas, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate,
        );
    }
    strided_builtin(
        trans_a,
        trans_b,
        [m, n, k],
        (a, lda),
        (b, ldb),
        (c, ldc),
        accumulate,
        gemm::Parallelism::None,
    );
}

/// The `gemm` crate's product over strided row-major views, for inputs a caller has checked
/// (every element the strides reach lies inside the slices).
#[allow(clippy::too_many_arguments)]
fn strided_builtin(
    trans_a: bool,
    trans_b: bool,
    [m, n, k]: [usize; 3],
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // Strides of op(a)[i][p] and op(b)[p][j] in the stored buffers.
    let (a_rs, a_cs) = if trans_a { (1, lda) } else { (lda, 1) };
    let (b_rs, b_cs) = if trans_b { (1, ldb) } else { (ldb, 1) };
    // SAFETY: the callers check that every element these strides reach lies inside the slices;
    // `c` is written, `a` and `b` only read, and they do not overlap (`c` is `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// [`builtin`] on the calling thread.
#[allow(clippy::too_many_arguments)]
fn builtin_single(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    builtin(
        trans_a,
        trans_b,
        m,
        n,
        k,
        a,
        b,
        c,
        gemm::Parallelism::None,
        false,
    );
}

/// [`sgemm`] on the `gemm` crate, for inputs [`sgemm`] has checked.
#[allow(clippy::too_many_arguments)]
fn builtin(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    parallelism: gemm::Parallelism,
    accumulate: bool,
) {
    assert!(covers(a.len(), m, k) && covers(b.len(), k, n) && covers(c.len(), m, n));
    let (lda, ldb) = (if trans_a { m } else { k }, if trans_b { k } else { n });
    strided_builtin(
        trans_a,
        trans_b,
        [m, n, k],
        (a, lda),
        (b, ldb),
        (c, n),
        accumulate,
        parallelism,
    );
}

/// `batch` independent products [`sgemm`] describes, packed one after another in `a`, `b` and
/// `c`, run in parallel (each on one thread).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    trans_a: bool,
    trans_b: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let (sa, sb, sc) = (m * k, k * n, m * n);
    assert!(a.len() >= batch * sa && b.len() >= batch * sb && c.len() >= batch * sc);
    if sc == 0 {
        return;
    }
    if sa == 0 {
        c[..batch * sc].fill(0.0);
        return;
    }
    use rayon::prelude::*;
    let lib = blas();
    c[..batch * sc]
        .par_chunks_mut(sc)
        .enumerate()
        .for_each(|(i, ci)| {
            let (ai, bi) = (&a[i * sa..(i + 1) * sa], &b[i * sb..(i + 1) * sb]);
            match lib {
                Some(lib) => {
                    let (lda, ldb) = (if trans_a { m } else { k }, if trans_b { k } else { n });
                    call_blas(
                        lib, trans_a, trans_b, m, n, k, ai, lda, bi, ldb, ci, n, false,
                    );
                }
                None => builtin_single(trans_a, trans_b, m, n, k, ai, bi, ci),
            }
        });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// op(a)·op(b) summed in f64, the products' reference (also bf16.rs's).
    pub(in crate::core::backend::cpu) fn naive(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += x as f64 * y as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn batched_products_match_one_by_one() {
        let (batch, m, n, k) = (5, 9, 7, 11);
        let a: Vec<f32> = (0..batch * m * k)
            .map(|i| ((i * 13) % 7) as f32 - 3.0)
            .collect();
        let b: Vec<f32> = (0..batch * n * k)
            .map(|i| ((i * 5) % 11) as f32 - 5.0)
            .collect();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut c = vec![f32::NAN; batch * m * n];
            sgemm_batched(ta, tb, batch, m, n, k, &a, &b, &mut c);
            for i in 0..batch {
                let want = naive(ta, tb, m, n, k, &a[i * m * k..], &b[i * n * k..]);
                assert_eq!(&c[i * m * n..(i + 1) * m * n], &want[..], "{i} {ta} {tb}");
            }
        }
    }

    #[test]
    fn every_transpose_combination_matches_a_naive_product() {
        // Small, and large enough to be split across threads (with an uneven last part).
        for (m, n, k) in [(37, 29, 70), (301, 140, 130)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 17) as f32 - 8.0).collect();
            let b: Vec<f32> = (0..n * k)
                .map(|i| ((i * 11) % 13) as f32 * 0.5 - 3.0)
                .collect();
            for ta in [false, true] {
                for tb in [false, true] {
                    let want = naive(ta, tb, m, n, k, &a, &b);
                    let mut c = vec![f32::NAN; m * n];
                    sgemm(ta, tb, m, n, k, &a, &b, &mut c);
                    assert_eq!(c, want, "{} {m}x{n}x{k} {ta} {tb}", backend());
                    let mut c = vec![f32::NAN; m * n];
                    builtin_single(ta, tb, m, n, k, &a, &b, &mut c);
                    assert_eq!(c, want, "built-in {m}x{n}x{k} {ta} {tb}");
                    // Accumulating onto a start value, on both paths.
                    let start: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
                    let sum: Vec<f32> = want.iter().zip(&start).map(|(w, s)| w + s).collect();
                    let mut c = start.clone();
                    sgemm_add(ta, tb, m, n, k, &a, &b, &mut c);
                    assert_eq!(c, sum, "{} add {m}x{n}x{k} {ta} {tb}", backend());
                    let mut c = start.clone();
                    builtin(
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        &a,
                        &b,
                        &mut c,
                        gemm::Parallelism::None,
                        true,
                    );
                    assert_eq!(c, sum, "built-in add {m}x{n}x{k} {ta} {tb}");
                }
            }
        }
    }
}
