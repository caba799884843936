//! The MKL backend: Intel MKL's CBLAS GEMMs, `dlopen`ed at run time.
//!
//! Search order for the libraries: `$SMELT_MKL_DIR`, then
//! `$HOME/.cache/smelt/mkl/lib` (what `scripts/fetch-mkl.sh` fills from the PyPI `mkl`
//! and `intel-openmp` wheels). The wheels carry no RPATH, and `libmkl_rt` opens its
//! siblings (`libmkl_core`, the threading layer, the per-ISA kernels) *by name*; so the
//! loader opens them first, by absolute path and `RTLD_GLOBAL`, so that those lookups
//! find the already-loaded copies instead of failing inside MKL (which would `exit`).
//!
//! Threading: the Intel OpenMP layer (`libiomp5`) with as many threads as candle uses,
//! and `KMP_BLOCKTIME=0` unless the user set it: on a machine with few cores, OpenMP
//! workers that spin 200 ms after each GEMM (the default) steal the cores from the
//! rayon kernels that run between GEMMs. [`Threads::Single`] uses MKL's thread-local
//! thread count (`MKL_Set_Num_Threads_Local(1)`) for the duration of one call.
//!
//! bf16: `cblas_gemm_bf16bf16f32` is used only when the CPU has AVX512-BF16 or
//! AMX-BF16 (read with `cpuid`); without them MKL emulates it slower than widening to
//! f32, so bf16 inputs are widened and go through `cblas_sgemm`.

use super::{bf16, bf16_to_f32, Geometry, Threads, Trans};
use libloading::os::unix::{Library, Symbol, RTLD_GLOBAL, RTLD_LAZY};
use std::ffi::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;
const MKL_THREADING_INTEL: c_int = 0;
const MKL_INTERFACE_LP64: c_int = 0;

/// The `libmkl_<name>.so.*` that `libmkl_rt` opens for CBLAS with Intel threading:
/// the core, the threading layer, every per-ISA kernel library the core may pick at
/// run time and the LP64 interface, in an order where each finds the symbols it
/// needs already loaded (`scripts/fetch-mkl.sh` unpacks these).
const REQUIRED: [&str; 8] = [
    "core",
    "intel_thread",
    "def",
    "mc3",
    "avx2",
    "avx512",
    "avx10",
    "intel_lp64",
];

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type DgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f64,
    *const f64,
    c_int,
    *const f64,
    c_int,
    f64,
    *mut f64,
    c_int,
);
type Bf16GemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetIntFn = unsafe extern "C" fn(c_int) -> c_int;
type SetVoidFn = unsafe extern "C" fn(c_int);
type KmpDefaultsFn = unsafe extern "C" fn(*const c_char);

/// A loaded MKL: its libraries (kept open for the life of the process) and the entry
/// points smelt calls.
pub(super) struct Mkl {
    _libs: Vec<Library>,
    sgemm: SgemmFn,
    dgemm: DgemmFn,
    /// `Some` only when the CPU has native bf16 (AVX512-BF16 / AMX-BF16).
    bf16_gemm: Option<Bf16GemmFn>,
    set_num_threads_local: SetIntFn,
    dir: PathBuf,
    threads: usize,
}

/// The process-wide MKL, loaded on first use; `Err` says why it cannot be used.
pub(super) fn global() -> &'static Result<Mkl, String> {
    static MKL: OnceLock<Result<Mkl, String>> = OnceLock::new();
    MKL.get_or_init(|| {
        let dirs = search_dirs();
        if dirs.is_empty() {
            return Err("no SMELT_MKL_DIR and no HOME to search".into());
        }
        let mut why = Vec::new();
        for dir in dirs {
            match Mkl::load_from(&dir) {
                Ok(m) => return Ok(m),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    })
}

/// `$SMELT_MKL_DIR`, then `$HOME/.cache/smelt/mkl/lib`.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SMELT_MKL_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        dirs.push(Path::new(&home).join(".cache/smelt/mkl/lib"));
    }
    dirs
}

/// The first file in `dir` whose name starts with `prefix` (`libmkl_rt.so` matches
/// `libmkl_rt.so.3`), preferring the shortest name.
fn find_lib(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.ends_with(".part"))
        })
        .collect();
    hits.sort_by_key(|p| p.as_os_str().len());
    hits.into_iter().next()
}

/// Whether the CPU can run MKL's fast paths at all (x86_64 with AVX2 and FMA).
fn cpu_ok() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Ok(());
        }
        Err("the CPU lacks AVX2/FMA".into())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err("MKL needs x86_64".into())
    }
}

/// Whether this CPU has AMX-BF16 tiles (CPUID.(7,0):EDX[22]), where MKL's bf16 GEMM
/// is the faster one.
fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // cpuid is always available on x86_64; leaf 7 is checked against the max leaf
        __cpuid_count(0, 0).eax >= 7 && __cpuid_count(7, 0).edx & (1 << 22) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Opens `path` with `RTLD_LAZY | RTLD_GLOBAL`, so later by-name lookups find it.
fn open_global(path: &Path) -> Result<Library, String> {
    // SAFETY: loading a shared library runs its initialisers; these are MKL's and
    // Intel OpenMP's own, which have no preconditions.
    unsafe { Library::open(Some(path), RTLD_LAZY | RTLD_GLOBAL) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))
}

/// Resolves `name` in `lib` as a function pointer of type `T`.
fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller names the C signature `T` of the exported symbol.
    let s: Symbol<T> =
        unsafe { lib.get(name.as_bytes()) }.map_err(|e| format!("MKL lacks {name}: {e}"))?;
    Ok(*s)
}

impl Mkl {
    /// Loads MKL from `dir` alone. The libraries stay loaded for the life of the
    /// process even when this fails half-way or the value is dropped (unloading MKL
    /// while its OpenMP team lives is unsafe).
    pub(super) fn load_from(dir: &Path) -> Result<Mkl, String> {
        cpu_ok()?;
        // MKL calls `exit` when a library it needs is missing, so check the whole set
        // before opening any of it
        let lib = |name: &str| {
            find_lib(dir, name).ok_or_else(|| format!("no {name}* in {}", dir.display()))
        };
        let iomp = lib("libiomp5.so")?;
        let rt = lib("libmkl_rt.so")?;
        let mut deps = Vec::new();
        for name in REQUIRED {
            deps.push(lib(&format!("libmkl_{name}.so"))?);
        }

        let mut libs = Vec::new();
        let omp = open_global(&iomp)?;
        if std::env::var_os("KMP_BLOCKTIME").is_none() {
            if let Ok(set_defaults) = sym::<KmpDefaultsFn>(&omp, "kmp_set_defaults") {
                // SAFETY: a NUL-terminated "NAME=value" string, before the OpenMP
                // runtime initialises (first parallel region).
                unsafe { set_defaults(c"KMP_BLOCKTIME=0".as_ptr()) };
            }
        }
        libs.push(omp);
        for dep in &deps {
            libs.push(open_global(dep)?);
        }
        let rt_lib = open_global(&rt)?;

        let set_interface: SetIntFn = sym(&rt_lib, "MKL_Set_Interface_Layer")?;
        let set_threading: SetIntFn = sym(&rt_lib, "MKL_Set_Threading_Layer")?;
        let set_num_threads: SetVoidFn = sym(&rt_lib, "MKL_Set_Num_Threads")?;
        let set_num_threads_local: SetIntFn = sym(&rt_lib, "MKL_Set_Num_Threads_Local")?;
        let sgemm: SgemmFn = sym(&rt_lib, "cblas_sgemm")?;
        let dgemm: DgemmFn = sym(&rt_lib, "cblas_dgemm")?;
        let bf16_gemm: Option<Bf16GemmFn> = if cpu_has_amx_bf16() {
            Some(sym(&rt_lib, "cblas_gemm_bf16bf16f32")?)
        } else {
            None
        };
        let threads = candle_core::utils::get_num_threads().max(1);
        // SAFETY: documented MKL service functions, called before the first BLAS call.
        unsafe {
            set_interface(MKL_INTERFACE_LP64);
            set_threading(MKL_THREADING_INTEL);
            set_num_threads(threads as c_int);
        }
        libs.push(rt_lib);
        let mkl = Mkl {
            _libs: libs,
            sgemm,
            dgemm,
            bf16_gemm,
            set_num_threads_local,
            dir: dir.to_path_buf(),
            threads,
        };
        mkl.self_check()?;
        Ok(mkl)
    }

    /// A 2×3·3×2 product on every entry point, checked against the exact answer, so a
    /// library that loads but computes wrongly is rejected at load time.
    fn self_check(&self) -> Result<(), String> {
        let a = [1f32, 2., 3., 4., 5., 6.]; // (2, 3)
        let b = [1f32, -1., 2., 0., 0.5, 3.]; // (3, 2)
        let want = [6.5f32, 8., 17., 14.]; // a · b
        let g = Geometry {
            ta: Trans::No,
            tb: Trans::No,
            m: 2,
            n: 2,
            k: 3,
            lda: 3,
            ldb: 2,
            ldc: 2,
        };
        let mut c = [0f32; 4];
        self.sgemm(&g, 1.0, &a, &b, 0.0, &mut c, Threads::Single);
        let mut cb = [0f32; 4];
        let (ab, bb) = (a.map(bf16::from_f32), b.map(bf16::from_f32));
        self.gemm_bf16_f32(&g, 1.0, &ab, &bb, 0.0, &mut cb, Threads::Single);
        let mut cd = [0f64; 4];
        self.dgemm(
            &g,
            1.0,
            &a.map(f64::from),
            &b.map(f64::from),
            0.0,
            &mut cd,
            Threads::Single,
        );
        let cd = cd.map(|v| v as f32);
        if c != want || cb != want || cd != want {
            return Err(format!(
                "MKL in {} computed {c:?} / bf16 {cb:?} / f64 {cd:?}, expected {want:?}",
                self.dir.display()
            ));
        }
        Ok(())
    }

    /// One line describing the loaded library (directory, threads, bf16 kind).
    pub(super) fn describe(&self) -> String {
        format!(
            "{}, {} threads, bf16 {}",
            self.dir.display(),
            self.threads,
            super::bf16_route(self.has_native_bf16())
        )
    }

    /// Whether MKL's own bf16 GEMM is bound (AMX CPUs only).
    pub(super) fn has_native_bf16(&self) -> bool {
        self.bf16_gemm.is_some()
    }

    /// Runs `f` with MKL limited to the calling thread when `threads` is `Single`.
    fn with_threads<R>(&self, threads: Threads, f: impl FnOnce() -> R) -> R {
        match threads {
            Threads::All => f(),
            Threads::Single => {
                // SAFETY: MKL service call; the previous thread-local value is restored.
                let prev = unsafe { (self.set_num_threads_local)(1) };
                let r = f();
                unsafe { (self.set_num_threads_local)(prev) };
                r
            }
        }
    }

    /// f32 GEMM through `cblas_sgemm`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sgemm(
        &self,
        g: &Geometry,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
        threads: Threads,
    ) {
        let (ta, tb, m, n, k, lda, ldb, ldc) = cblas_args(g);
        // SAFETY: `Geometry::checked` bounds every operand; sizes fit in i32.
        self.with_threads(threads, || unsafe {
            (self.sgemm)(
                CBLAS_ROW_MAJOR,
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                beta,
                c.as_mut_ptr(),
                ldc,
            )
        })
    }

    /// f64 GEMM through `cblas_dgemm`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dgemm(
        &self,
        g: &Geometry,
        alpha: f64,
        a: &[f64],
        b: &[f64],
        beta: f64,
        c: &mut [f64],
        threads: Threads,
    ) {
        let (ta, tb, m, n, k, lda, ldb, ldc) = cblas_args(g);
        // SAFETY: as in `sgemm`.
        self.with_threads(threads, || unsafe {
            (self.dgemm)(
                CBLAS_ROW_MAJOR,
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                beta,
                c.as_mut_ptr(),
                ldc,
            )
        })
    }

    /// bf16 × bf16 → f32 GEMM: native when the CPU has bf16 units, else widened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_bf16_f32(
        &self,
        g: &Geometry,
        alpha: f32,
        a: &[bf16],
        b: &[bf16],
        beta: f32,
        c: &mut [f32],
        threads: Threads,
    ) {
        let Some(gemm) = self.bf16_gemm else {
            return self.sgemm(g, alpha, &bf16_to_f32(a), &bf16_to_f32(b), beta, c, threads);
        };
        let (ta, tb, m, n, k, lda, ldb, ldc) = cblas_args(g);
        // SAFETY: as in `sgemm`; `bf16` is `repr(transparent)` over `u16` (MKL_BF16).
        self.with_threads(threads, || unsafe {
            gemm(
                CBLAS_ROW_MAJOR,
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a.as_ptr().cast(),
                lda,
                b.as_ptr().cast(),
                ldb,
                beta,
                c.as_mut_ptr(),
                ldc,
            )
        })
    }
}

/// CBLAS arguments of a validated geometry.
#[allow(clippy::type_complexity)]
fn cblas_args(g: &Geometry) -> (c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) {
    let t = |t: Trans| {
        if t == Trans::Yes {
            CBLAS_TRANS
        } else {
            CBLAS_NO_TRANS
        }
    };
    (
        t(g.ta),
        t(g.tb),
        g.m as c_int,
        g.n as c_int,
        g.k as c_int,
        g.lda as c_int,
        g.ldb as c_int,
        g.ldc as c_int,
    )
}

impl Drop for Mkl {
    fn drop(&mut self) {
        // never unload MKL: its OpenMP workers may still run
        for lib in std::mem::take(&mut self._libs) {
            std::mem::forget(lib);
        }
    }
}
