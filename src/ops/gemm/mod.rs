//! One row-major GEMM interface for every kernel, with the fastest backend the machine has.
//!
//! `C (m, n) = alpha · op(A) · op(B) + beta · C`, where `op(X)` is `X` or `Xᵀ`, all
//! matrices row-major with a leading dimension (row stride) each, as in CBLAS with
//! `CblasRowMajor`. A transposed operand is read through its strides, never copied.
//!
//! Backends ([`Backend`]):
//! - [`Backend::Portable`]: the pure-Rust `gemm` crate (what candle's CPU matmul uses);
//!   bf16 inputs are widened to f32 and multiplied in f32, so the result is the exact
//!   product of the bf16-rounded inputs up to summation order.
//! - [`Backend::Mkl`] (cargo feature `mkl`): Intel MKL **loaded at run time** with
//!   `dlopen` from `$SMELT_MKL_DIR`, then `$HOME/.cache/smelt/mkl/lib` (filled by
//!   `scripts/fetch-mkl.sh`), on x86_64 with AVX2 only. No link-time dependency: a
//!   build never needs MKL, and a machine without it runs the portable backend. Its
//!   bf16 GEMM (`cblas_gemm_bf16bf16f32`) is used only on CPUs with AMX-BF16 tiles.
//!
//! bf16 GEMMs on either backend: MKL's on AMX CPUs; otherwise, where the CPU has
//! AVX512-BF16 (AMD Zen 4/5, Intel Cooper Lake), smelt's own `vdpbf16ps` kernel
//! (`dpbf16`; MKL's bf16 GEMM was no faster than its f32 one there); elsewhere the
//! inputs are widened (exactly) to f32 and go through the backend's f32 GEMM.
//!
//! Selection: `SMELT_GEMM=auto|mkl|portable` (default `auto` = MKL when loadable on an
//! Intel CPU, portable elsewhere: on AMD, MKL's generic kernels lost to it), read
//! once per process; [`with_backend`] overrides it on the calling thread (tests, A/B
//! benchmarks). [`backend_name`] / [`backend_report`] say which one runs.
//!
//! Threads ([`Threads`]): `All` uses the backend's own pool (rayon for portable, MKL's
//! OpenMP team for MKL); `Single` runs on the calling thread only, for callers that are
//! already inside a parallel region (e.g. one GEMM per attention head in a rayon task).

mod denormals;
mod dpbf16;
#[cfg(feature = "mkl")]
mod mkl;
mod portable;

pub use denormals::{denormals_flushed_on_this_thread, flush_denormals_to_zero};
pub use half::bf16;

use candle_core::Result;
use std::cell::Cell;
use std::sync::OnceLock;

/// Whether an operand is used as stored or transposed (`op(X) = Xᵀ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trans {
    /// `op(X) = X`.
    No,
    /// `op(X) = Xᵀ`: the stored matrix is read column-wise.
    Yes,
}

impl Trans {
    /// `Trans::Yes` when `t`.
    pub fn from_bool(t: bool) -> Self {
        if t {
            Trans::Yes
        } else {
            Trans::No
        }
    }
}

/// How many threads one GEMM call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// The backend's whole pool (candle's thread count).
    #[default]
    All,
    /// The calling thread only: for GEMMs issued from inside a parallel region.
    Single,
}

/// A GEMM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The pure-Rust `gemm` crate; available everywhere.
    Portable,
    /// Intel MKL through `dlopen` (cargo feature `mkl`, x86_64 + AVX2, library found).
    Mkl,
}

impl Backend {
    /// `"portable"` or `"mkl"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Mkl => "mkl",
        }
    }

    /// Whether this backend can run on this machine and build.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            Backend::Mkl => mkl_loaded().is_ok(),
        }
    }

    /// `C = alpha · op(A) · op(B) + beta · C` in f32 on this backend.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        self,
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (&[f32], usize),
        (b, ldb): (&[f32], usize),
        beta: f32,
        (c, ldc): (&mut [f32], usize),
        threads: Threads,
    ) -> Result<()> {
        let g = Geometry::checked(
            "sgemm",
            ta,
            tb,
            (m, n, k),
            (a.len(), lda),
            (b.len(), ldb),
            (c.len(), ldc),
        )?;
        if g.is_empty() {
            return Ok(());
        }
        match self {
            Backend::Portable => portable::sgemm(&g, alpha, a, b, beta, c, threads),
            Backend::Mkl => mkl_loaded()?.sgemm(&g, alpha, a, b, beta, c, threads),
        }
        Ok(())
    }

    /// `C = alpha · op(A) · op(B) + beta · C` in f64 on this backend.
    #[allow(clippy::too_many_arguments)]
    pub fn dgemm(
        self,
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        alpha: f64,
        (a, lda): (&[f64], usize),
        (b, ldb): (&[f64], usize),
        beta: f64,
        (c, ldc): (&mut [f64], usize),
        threads: Threads,
    ) -> Result<()> {
        let g = Geometry::checked(
            "dgemm",
            ta,
            tb,
            (m, n, k),
            (a.len(), lda),
            (b.len(), ldb),
            (c.len(), ldc),
        )?;
        if g.is_empty() {
            return Ok(());
        }
        match self {
            Backend::Portable => portable::dgemm(&g, alpha, a, b, beta, c, threads),
            Backend::Mkl => mkl_loaded()?.dgemm(&g, alpha, a, b, beta, c, threads),
        }
        Ok(())
    }

    /// `C = alpha · op(A) · op(B) + beta · C` with bf16 `A`, `B` and f32 accumulation
    /// and output, on this backend.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_f32(
        self,
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (&[bf16], usize),
        (b, ldb): (&[bf16], usize),
        beta: f32,
        (c, ldc): (&mut [f32], usize),
        threads: Threads,
    ) -> Result<()> {
        let g = Geometry::checked(
            "gemm_bf16_f32",
            ta,
            tb,
            (m, n, k),
            (a.len(), lda),
            (b.len(), ldb),
            (c.len(), ldc),
        )?;
        if g.is_empty() {
            return Ok(());
        }
        let mkl_native = self == Backend::Mkl && mkl_loaded()?.has_native_bf16();
        if !mkl_native && dpbf16::available() {
            dpbf16::gemm_bf16_f32(&g, alpha, a, b, beta, c, threads);
            return Ok(());
        }
        match self {
            Backend::Portable => portable::gemm_bf16_f32(&g, alpha, a, b, beta, c, threads),
            Backend::Mkl => mkl_loaded()?.gemm_bf16_f32(&g, alpha, a, b, beta, c, threads),
        }
        Ok(())
    }
}

/// Row-major single-precision GEMM on the selected backend (see the module doc):
/// `C (m, n) = alpha · op(A) · op(B) + beta · C`. `A` is `(m, k)` (stored `(k, m)`
/// when `ta` is [`Trans::Yes`]) with row stride `lda`; likewise `B` `(k, n)` / `ldb`,
/// `C` `(m, n)` / `ldc`. With `beta == 0`, `C` is not read (it may hold anything).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    threads: Threads,
) -> Result<()> {
    backend()?.sgemm(
        ta,
        tb,
        (m, n, k),
        alpha,
        (a, lda),
        (b, ldb),
        beta,
        (c, ldc),
        threads,
    )
}

/// Row-major double-precision GEMM on the selected backend; arguments as [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn dgemm(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    beta: f64,
    c: &mut [f64],
    ldc: usize,
    threads: Threads,
) -> Result<()> {
    backend()?.dgemm(
        ta,
        tb,
        (m, n, k),
        alpha,
        (a, lda),
        (b, ldb),
        beta,
        (c, ldc),
        threads,
    )
}

/// Row-major GEMM with bf16 inputs and f32 accumulation/output on the selected
/// backend; arguments as [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_f32(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[bf16],
    lda: usize,
    b: &[bf16],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    threads: Threads,
) -> Result<()> {
    backend()?.gemm_bf16_f32(
        ta,
        tb,
        (m, n, k),
        alpha,
        (a, lda),
        (b, ldb),
        beta,
        (c, ldc),
        threads,
    )
}

/// Rounds f32 values to bf16 (round to nearest even, NaN stays NaN), in parallel for
/// large inputs. Bit-identical to `half::bf16::from_f32`, written branch-free so the
/// loop vectorises (it runs on every weight and activation under bf16 autocast).
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; x.len()];
    par_chunks(&mut out, |off, dst| round_block(dst, &x[off..]));
    out
}

/// `dst[i] = bf16(src[i])`, in AVX2 lanes where the CPU has them (the portable build
/// targets baseline x86-64, where this loop gets SSE2 only).
fn round_block(dst: &mut [bf16], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        unsafe { round_block_avx2(dst, src) };
        return;
    }
    round_block_body(dst, src);
}

/// [`round_block_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_block_avx2(dst: &mut [bf16], src: &[f32]) {
    round_block_body(dst, src);
}

#[inline(always)]
fn round_block_body(dst: &mut [bf16], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(f32_to_bf16_bits(*s));
    }
}

/// f32 → bf16 bits, round to nearest even; NaNs become quiet NaNs.
#[inline(always)]
fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

/// Widens bf16 values to f32 (exact), in parallel for large inputs.
pub fn bf16_to_f32(x: &[bf16]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    par_chunks(&mut out, |off, dst| {
        for (d, s) in dst.iter_mut().zip(&x[off..]) {
            *d = s.to_f32();
        }
    });
    out
}

/// Runs `f(offset, chunk)` over chunks of `out` on the rayon pool (inline when small).
fn par_chunks<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    const CHUNK: usize = 64 * 1024;
    if out.len() <= CHUNK {
        f(0, out);
        return;
    }
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| f(i * CHUNK, chunk));
}

/// A validated GEMM call shape: sizes, transposes and leading dimensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub ta: Trans,
    pub tb: Trans,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

impl Geometry {
    /// Checks that every operand's slice holds the matrix its sizes and leading
    /// dimension describe; the error names the call and the operand.
    fn checked(
        call: &str,
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        (a_len, lda): (usize, usize),
        (b_len, ldb): (usize, usize),
        (c_len, ldc): (usize, usize),
    ) -> Result<Self> {
        let (a_rows, a_cols) = if ta == Trans::No { (m, k) } else { (k, m) };
        let (b_rows, b_cols) = if tb == Trans::No { (k, n) } else { (n, k) };
        operand(call, "A", a_rows, a_cols, lda, a_len)?;
        operand(call, "B", b_rows, b_cols, ldb, b_len)?;
        operand(call, "C", m, n, ldc, c_len)?;
        if [m, n, k, lda, ldb, ldc]
            .iter()
            .any(|&d| d > i32::MAX as usize)
        {
            candle_core::bail!("{call}: a dimension exceeds i32 (m {m}, n {n}, k {k})");
        }
        Ok(Self {
            ta,
            tb,
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
        })
    }

    /// Nothing to compute (`k == 0` still scales `C` by `beta`, handled by backends).
    fn is_empty(&self) -> bool {
        self.m == 0 || self.n == 0
    }

    /// `(row stride, column stride)` of `op(A)` as an `(m, k)` matrix.
    pub(crate) fn a_strides(&self) -> (isize, isize) {
        match self.ta {
            Trans::No => (self.lda as isize, 1),
            Trans::Yes => (1, self.lda as isize),
        }
    }

    /// `(row stride, column stride)` of `op(B)` as a `(k, n)` matrix.
    pub(crate) fn b_strides(&self) -> (isize, isize) {
        match self.tb {
            Trans::No => (self.ldb as isize, 1),
            Trans::Yes => (1, self.ldb as isize),
        }
    }
}

/// Checks one row-major operand of `rows × cols` with row stride `ld` in `len` elements.
fn operand(call: &str, name: &str, rows: usize, cols: usize, ld: usize, len: usize) -> Result<()> {
    if ld < cols.max(1) {
        candle_core::bail!("{call}: leading dimension of {name} is {ld}, below its {cols} columns");
    }
    let need = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    };
    if len < need {
        candle_core::bail!(
            "{call}: {name} ({rows} × {cols}, ld {ld}) needs {need} elements, got {len}"
        );
    }
    Ok(())
}

/// The process-wide choice from `SMELT_GEMM`, made once.
fn selected() -> &'static std::result::Result<Backend, String> {
    static SELECTED: OnceLock<std::result::Result<Backend, String>> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let want = std::env::var("SMELT_GEMM").unwrap_or_default();
        match want.trim() {
            "" | "auto" => Ok(auto_choice(cpu_is_intel(), Backend::Mkl.is_available())),
            "portable" => Ok(Backend::Portable),
            "mkl" => match mkl_loaded() {
                Ok(_) => Ok(Backend::Mkl),
                Err(e) => Err(format!("SMELT_GEMM=mkl but MKL is unavailable: {e}")),
            },
            other => Err(format!(
                "SMELT_GEMM={other:?} is not one of \"auto\", \"mkl\", \"portable\""
            )),
        }
    })
}

/// `SMELT_GEMM=auto`: MKL where it is loadable and the CPU is Intel's; the portable
/// GEMM otherwise. On AMD, MKL dispatches to generic kernels: measured on a Zen 4 (2
/// cores), the f32 SmolLM2 train step ran at 187–195 tokens/s on MKL and 205–211 on
/// the portable GEMM, bf16 autocast 423–429 vs 435–447.
fn auto_choice(intel: bool, mkl_available: bool) -> Backend {
    if intel && mkl_available {
        Backend::Mkl
    } else {
        Backend::Portable
    }
}

/// Whether the CPU's vendor string (CPUID leaf 0) is `GenuineIntel`.
fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // cpuid leaf 0 is always available on x86_64
        let id = std::arch::x86_64::__cpuid(0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&id.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&id.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&id.ecx.to_le_bytes());
        &vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    static OVERRIDE: Cell<Option<Backend>> = const { Cell::new(None) };
}

/// The backend GEMM calls on this thread use: the [`with_backend`] override, else the
/// `SMELT_GEMM` choice. Errors when `SMELT_GEMM` is invalid or asks for an unavailable
/// backend.
pub fn backend() -> Result<Backend> {
    if let Some(b) = OVERRIDE.with(Cell::get) {
        return Ok(b);
    }
    selected().clone().map_err(candle_core::Error::Msg)
}

/// Name of the backend GEMM calls on this thread use (`"portable"`, `"mkl"`), or
/// `"invalid"` when `SMELT_GEMM` is unusable.
pub fn backend_name() -> &'static str {
    backend().map(Backend::name).unwrap_or("invalid")
}

/// One line for logs: the backend, whether its bf16 GEMM is native, and why MKL is
/// not used when it is not.
pub fn backend_report() -> String {
    match backend() {
        Ok(Backend::Mkl) => match mkl_loaded() {
            Ok(m) => format!("mkl ({})", m.describe()),
            Err(e) => format!("mkl (unavailable: {e})"),
        },
        Ok(Backend::Portable) => {
            let bf16 = bf16_route(false);
            match mkl_loaded() {
                Ok(_) => format!("portable (bf16 {bf16}; mkl available, not selected)"),
                Err(e) => format!("portable (bf16 {bf16}; mkl: {e})"),
            }
        }
        Err(e) => format!("invalid ({e})"),
    }
}

/// Where bf16 GEMMs run, for reports: MKL's (`mkl_native`: MKL selected and bound to
/// its AMX GEMM), else smelt's AVX512-BF16 kernel, else widened to f32 — the order
/// [`Backend::gemm_bf16_f32`] dispatches in.
fn bf16_route(mkl_native: bool) -> &'static str {
    if mkl_native {
        "mkl (amx)"
    } else if dpbf16::available() {
        "avx512-bf16 kernel"
    } else {
        "widened to f32"
    }
}

/// Runs `f` with every GEMM on this thread going to `backend` (kernels run on the
/// calling thread, so this covers a forward and backward issued from it). Errors if
/// `backend` is unavailable.
pub fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> Result<R> {
    if !backend.is_available() {
        candle_core::bail!("gemm backend {} is not available here", backend.name());
    }
    struct Restore(Option<Backend>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(backend))));
    Ok(f())
}

/// Every backend available on this machine and build, portable first.
pub fn available_backends() -> Vec<Backend> {
    [Backend::Portable, Backend::Mkl]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

#[cfg(feature = "mkl")]
fn mkl_loaded() -> Result<&'static mkl::Mkl> {
    mkl::global()
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
}

#[cfg(not(feature = "mkl"))]
fn mkl_loaded() -> Result<&'static NoMkl> {
    candle_core::bail!("built without the `mkl` feature")
}

/// Stands in for the MKL backend in builds without the feature: it cannot exist.
#[cfg(not(feature = "mkl"))]
enum NoMkl {}

#[cfg(not(feature = "mkl"))]
#[allow(clippy::too_many_arguments)]
impl NoMkl {
    fn sgemm(&self, _: &Geometry, _: f32, _: &[f32], _: &[f32], _: f32, _: &mut [f32], _: Threads) {
        match *self {}
    }
    fn dgemm(&self, _: &Geometry, _: f64, _: &[f64], _: &[f64], _: f64, _: &mut [f64], _: Threads) {
        match *self {}
    }
    fn gemm_bf16_f32(
        &self,
        _: &Geometry,
        _: f32,
        _: &[bf16],
        _: &[bf16],
        _: f32,
        _: &mut [f32],
        _: Threads,
    ) {
        match *self {}
    }
    fn describe(&self) -> String {
        match *self {}
    }
    fn has_native_bf16(&self) -> bool {
        match *self {}
    }
}

/// Tries to load MKL from `dir` alone (not the process-wide search), for tests and
/// diagnostics; the error says why it cannot be used.
pub fn probe_mkl_dir(dir: &std::path::Path) -> Result<String> {
    #[cfg(feature = "mkl")]
    {
        mkl::Mkl::load_from(dir)
            .map(|m| m.describe())
            .map_err(candle_core::Error::Msg)
    }
    #[cfg(not(feature = "mkl"))]
    {
        candle_core::bail!(
            "built without the `mkl` feature (asked for {})",
            dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_mkl_only_where_it_loads_on_an_intel_cpu() {
        assert_eq!(auto_choice(true, true), Backend::Mkl);
        assert_eq!(auto_choice(true, false), Backend::Portable);
        assert_eq!(auto_choice(false, true), Backend::Portable);
        assert_eq!(auto_choice(false, false), Backend::Portable);
    }

    #[test]
    fn bf16_rounding_is_bit_identical_to_half() {
        // every 2^-8 step of the f32 bit space plus the rounding-tie neighbourhoods
        let mut bits: Vec<u32> = (0..=u32::MAX / 251).map(|i| i * 251).collect();
        for hi in [
            0x3F80u32, 0x4049, 0x7F7F, 0x0001, 0x8000, 0xFF80, 0x7F80, 0x7FC0,
        ] {
            for lo in [0x0000u32, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                bits.push(hi << 16 | lo);
            }
        }
        let xs: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        for (x, h) in xs.iter().zip(to_bf16(&xs)) {
            let want = bf16::from_f32(*x);
            if x.is_nan() {
                assert!(h.is_nan(), "{x:?}");
            } else {
                assert_eq!(h.to_bits(), want.to_bits(), "{:#010x}", x.to_bits());
            }
        }
    }
}
