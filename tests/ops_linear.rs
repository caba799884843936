//! The GEMM API (`smelt::ops::gemm`) on every backend this machine has, and the fused
//! linear op (`smelt::ops::fused_linear`) against its reference and finite differences.
//!
//! - GEMM: every transpose combination, odd sizes, padded leading dimensions,
//!   `beta ≠ 0`, both thread policies, against a naive f64 triple loop.
//! - bf16 GEMM: equals the f64 product of the bf16-rounded inputs (f32 accumulation).
//! - fused_linear f32: forward and the gradients of x, W, b equal the reference
//!   composition's within 1e-5 relative (max-norm), on each backend.
//! - fused_linear f64: backward equals a central finite difference of the forward.
//! - bf16 autocast: within bf16 tolerance of f32, with f32 outputs and gradients.
//! - MKL absent: the loader reports why, and a child process falls back to portable.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::ops::{rand_t, rand_vec};
use smelt::ops::gemm::{self, bf16, Backend, Threads, Trans};
use smelt::ops::{self, Precision};

fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    rand_vec(n, seed, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// `max |a − b| / max |b|` over two equally long sequences.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-30);
    diff / scale
}

fn rel_t(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let v = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    rel(&v(a), &v(b))
}

/// Naive row-major `alpha·op(A)·op(B) + beta·C` in f64.
#[allow(clippy::too_many_arguments)]
fn naive(
    ta: Trans,
    tb: Trans,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    beta: f64,
    c: &[f64],
    ldc: usize,
) -> Vec<f64> {
    let at = |i: usize, p: usize| {
        if ta == Trans::No {
            a[i * lda + p]
        } else {
            a[p * lda + i]
        }
    };
    let bt = |p: usize, j: usize| {
        if tb == Trans::No {
            b[p * ldb + j]
        } else {
            b[j * ldb + p]
        }
    };
    let mut out = c.to_vec();
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            out[i * ldc + j] = alpha * dot + beta * c[i * ldc + j];
        }
    }
    out
}

/// Geometry of one test case: stored operand sizes with padding `pad` on each row.
fn case(ta: Trans, tb: Trans, (m, n, k): (usize, usize, usize), pad: usize) -> [(usize, usize); 3] {
    let (ar, ac) = if ta == Trans::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Trans::No { (k, n) } else { (n, k) };
    [(ar, ac + pad), (br, bc + pad), (m, n + pad)]
}

const SHAPES: [(usize, usize, usize); 4] = [(1, 1, 1), (7, 5, 3), (33, 17, 129), (130, 67, 61)];
const TRANS: [(Trans, Trans); 4] = [
    (Trans::No, Trans::No),
    (Trans::No, Trans::Yes),
    (Trans::Yes, Trans::No),
    (Trans::Yes, Trans::Yes),
];

#[test]
fn sgemm_and_dgemm_match_the_naive_product_on_every_backend() {
    let backends = gemm::available_backends();
    assert!(backends.contains(&Backend::Portable));
    for backend in backends {
        for (ta, tb) in TRANS {
            for (si, &mnk) in SHAPES.iter().enumerate() {
                for (pad, beta, threads) in [(0, 0.0, Threads::All), (3, 0.5, Threads::Single)] {
                    let [(ar, lda), (br, ldb), (cr, ldc)] = case(ta, tb, mnk, pad);
                    let seed = si as u64 * 10;
                    let (a, b, c) = (
                        rand_f32(ar * lda, seed),
                        rand_f32(br * ldb, seed + 1),
                        rand_f32(cr * ldc, seed + 2),
                    );
                    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
                    let want = naive(
                        ta,
                        tb,
                        mnk,
                        1.5,
                        &f64s(&a),
                        lda,
                        &f64s(&b),
                        ldb,
                        beta,
                        &f64s(&c),
                        ldc,
                    );

                    let mut got = c.clone();
                    backend
                        .sgemm(
                            ta,
                            tb,
                            mnk,
                            1.5,
                            (&a, lda),
                            (&b, ldb),
                            beta as f32,
                            (&mut got, ldc),
                            threads,
                        )
                        .unwrap();
                    let err = rel(&f64s(&got), &want);
                    assert!(
                        err < 1e-5,
                        "{} sgemm {ta:?}{tb:?} {mnk:?} pad {pad}: rel {err}",
                        backend.name()
                    );

                    let mut got64 = f64s(&c);
                    backend
                        .dgemm(
                            ta,
                            tb,
                            mnk,
                            1.5,
                            (&f64s(&a), lda),
                            (&f64s(&b), ldb),
                            beta,
                            (&mut got64, ldc),
                            threads,
                        )
                        .unwrap();
                    let err = rel(&got64, &want);
                    assert!(
                        err < 1e-12,
                        "{} dgemm {ta:?}{tb:?} {mnk:?}: rel {err}",
                        backend.name()
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_gemm_is_the_f32_product_of_bf16_rounded_inputs_on_every_backend() {
    for backend in gemm::available_backends() {
        for (ta, tb) in TRANS {
            for (si, &mnk) in SHAPES.iter().enumerate() {
                let [(ar, lda), (br, ldb), (cr, ldc)] = case(ta, tb, mnk, 1);
                let a = gemm::to_bf16(&rand_f32(ar * lda, si as u64));
                let b = gemm::to_bf16(&rand_f32(br * ldb, si as u64 + 7));
                let c = rand_f32(cr * ldc, 3);
                let wide = |v: &[bf16]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
                let cw: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                let want = naive(
                    ta,
                    tb,
                    mnk,
                    1.0,
                    &wide(&a),
                    lda,
                    &wide(&b),
                    ldb,
                    1.0,
                    &cw,
                    ldc,
                );
                let mut got = c.clone();
                backend
                    .gemm_bf16_f32(
                        ta,
                        tb,
                        mnk,
                        1.0,
                        (&a, lda),
                        (&b, ldb),
                        1.0,
                        (&mut got, ldc),
                        Threads::All,
                    )
                    .unwrap();
                let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
                // the inputs are exact in f32, so only f32 accumulation error remains
                let err = rel(&got, &want);
                assert!(
                    err < 1e-5,
                    "{} bf16 {ta:?}{tb:?} {mnk:?}: rel {err}",
                    backend.name()
                );
            }
        }
    }
}

#[test]
fn gemm_rejects_operands_too_short_for_their_shape() {
    let a = vec![0f32; 5];
    let b = vec![0f32; 6];
    let mut c = vec![0f32; 4];
    let err = Backend::Portable
        .sgemm(
            Trans::No,
            Trans::No,
            (2, 2, 3),
            1.0,
            (&a, 3),
            (&b, 2),
            0.0,
            (&mut c, 2),
            Threads::All,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("A") && err.contains("needs 6"), "{err}");
    let err = Backend::Portable
        .sgemm(
            Trans::No,
            Trans::No,
            (2, 2, 3),
            1.0,
            (&b, 2),
            (&b, 2),
            0.0,
            (&mut c, 2),
            Threads::All,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("leading dimension of A"), "{err}");
}

/// Forward and the gradients of `Σ y · r` (r fixed pseudo-random) w.r.t. x, w, b.
fn linear_and_grads(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    f: &dyn Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vx = Var::from_tensor(x).unwrap();
    let vw = Var::from_tensor(w).unwrap();
    let vb = b.map(|b| Var::from_tensor(b).unwrap());
    let y = f(
        vx.as_tensor(),
        vw.as_tensor(),
        vb.as_ref().map(|v| v.as_tensor()),
    )
    .unwrap();
    let r = rand_t(y.dims(), 99, 1.0, y.dtype());
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut g = vec![
        grads.get(&vx).unwrap().clone(),
        grads.get(&vw).unwrap().clone(),
    ];
    if let Some(vb) = &vb {
        g.push(grads.get(vb).unwrap().clone());
    }
    (y, g)
}

#[test]
fn fused_linear_f32_equals_the_reference_on_every_backend() {
    for backend in gemm::available_backends() {
        for (n, inp, out, bias) in [
            (1, 1, 1, false),
            (7, 13, 5, true),
            (37, 64, 129, true),
            (130, 96, 33, false),
        ] {
            let x = rand_t(&[n, inp], 1, 1.0, DType::F32);
            let w = rand_t(&[out, inp], 2, 0.5, DType::F32);
            let b = rand_t(&[out], 3, 1.0, DType::F32);
            let b = bias.then_some(&b);
            let (y_ref, g_ref) = linear_and_grads(&x, &w, b, &|x, w, b| ops::linear(x, w, b));
            let (y, g) = gemm::with_backend(backend, || {
                linear_and_grads(&x, &w, b, &|x, w, b| {
                    ops::fused_linear(x, w, b, Precision::F32)
                })
            })
            .unwrap();
            let label = format!("{} ({n}, {inp}) -> {out} bias {bias}", backend.name());
            assert!(
                rel_t(&y, &y_ref) < 1e-5,
                "{label}: y rel {}",
                rel_t(&y, &y_ref)
            );
            assert_eq!(g.len(), g_ref.len());
            for (i, (a, r)) in g.iter().zip(&g_ref).enumerate() {
                assert!(rel_t(a, r) < 1e-5, "{label}: grad {i} rel {}", rel_t(a, r));
            }
        }
    }
}

#[test]
fn fused_linear_accepts_leading_batch_dims() {
    let x = rand_t(&[2, 3, 8], 1, 1.0, DType::F32); // (B, T, in)
    let w = rand_t(&[5, 8], 2, 1.0, DType::F32);
    let y = ops::fused_linear(&x, &w, None, Precision::F32).unwrap(); // (B, T, out)
    assert_eq!(y.dims(), [2, 3, 5]);
    let y_ref = ops::linear(&x.reshape((6, 8)).unwrap(), &w, None).unwrap();
    assert!(rel_t(&y.reshape((6, 5)).unwrap(), &y_ref) < 1e-6);
    let err = ops::fused_linear(&x, &w.t().unwrap(), None, Precision::F32).unwrap_err();
    assert!(err.to_string().contains("input features"), "{err}");
}

#[test]
fn fused_linear_f64_backward_matches_finite_differences() {
    let (n, inp, out) = (3, 4, 5);
    let t = |v: &[f64], s: &[usize]| Tensor::from_slice(v, s, &Device::Cpu).unwrap();
    let x0 = rand_vec(n * inp, 11, 1.0);
    let w0 = rand_vec(out * inp, 12, 1.0);
    let b0 = rand_vec(out, 13, 1.0);
    let r = rand_t(&[n, out], 99, 1.0, DType::F64); // the weights linear_and_grads uses
                                                    // loss(x, w, b) = Σ fused_linear(x, w, b) · r, the f64 path (precision does not apply)
    let loss = |p: &[Vec<f64>; 3]| -> f64 {
        let y = ops::fused_linear(
            &t(&p[0], &[n, inp]),
            &t(&p[1], &[out, inp]),
            Some(&t(&p[2], &[out])),
            Precision::Bf16Autocast,
        )
        .unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for backend in gemm::available_backends() {
        gemm::with_backend(backend, || {
            let (_, g) = linear_and_grads(
                &t(&x0, &[n, inp]),
                &t(&w0, &[out, inp]),
                Some(&t(&b0, &[out])),
                &|x, w, b| ops::fused_linear(x, w, b, Precision::Bf16Autocast),
            );
            let params = [x0.clone(), w0.clone(), b0.clone()];
            let h = 1e-5;
            for (pi, grad) in g.iter().enumerate() {
                let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
                let fd: Vec<f64> = (0..params[pi].len())
                    .map(|i| {
                        let (mut hi, mut lo) = (params.clone(), params.clone());
                        hi[pi][i] += h;
                        lo[pi][i] -= h;
                        (loss(&hi) - loss(&lo)) / (2.0 * h)
                    })
                    .collect();
                let err = rel(&grad, &fd);
                assert!(
                    err < 1e-7,
                    "{} param {pi}: grad vs finite difference rel {err}",
                    backend.name()
                );
            }
        })
        .unwrap();
    }
}

#[test]
fn bf16_autocast_tracks_f32_with_f32_outputs_and_gradients() {
    for backend in gemm::available_backends() {
        let (n, inp, out) = (64, 96, 80);
        let x = rand_t(&[n, inp], 21, 1.0, DType::F32);
        let w = rand_t(&[out, inp], 22, 0.1, DType::F32);
        let b = rand_t(&[out], 23, 1.0, DType::F32);
        gemm::with_backend(backend, || {
            let (y32, g32) = linear_and_grads(&x, &w, Some(&b), &|x, w, b| {
                ops::fused_linear(x, w, b, Precision::F32)
            });
            let (y16, g16) = linear_and_grads(&x, &w, Some(&b), &|x, w, b| {
                ops::fused_linear(x, w, b, Precision::Bf16Autocast)
            });
            assert_eq!(y16.dtype(), DType::F32);
            let label = backend.name();
            // bf16 keeps 8 significant bits: relative rounding 2^-9 per input, so a
            // product's error is ~2^-8 of its scale
            let tol = 1.0 / 128.0;
            let ey = rel_t(&y16, &y32);
            assert!(
                ey < tol && ey > 0.0,
                "{label}: y rel {ey} (0 would mean no rounding happened)"
            );
            for (i, (a, r)) in g16.iter().zip(&g32).enumerate() {
                assert_eq!(a.dtype(), DType::F32);
                let e = rel_t(a, r);
                assert!(e < tol, "{label}: grad {i} rel {e}");
            }
            // the bias gradient is an f32 column sum in both modes
            assert!(rel_t(&g16[2], &g32[2]) < 1e-6);
            // and it is exactly the product of the bf16-rounded inputs
            let xr = x
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let wr = w
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let y_rounded = ops::linear(&xr, &wr, Some(&b)).unwrap();
            assert!(
                rel_t(&y16, &y_rounded) < 1e-5,
                "{label}: not the rounded-input product"
            );
        })
        .unwrap();
    }
}

#[test]
fn mkl_in_a_directory_without_it_is_reported_not_loaded() {
    let empty = tempfile::tempdir().unwrap();
    let err = gemm::probe_mkl_dir(empty.path()).unwrap_err().to_string();
    let why = ["no lib", "feature", "AVX2", "x86_64"];
    assert!(why.iter().any(|w| err.contains(w)), "{err}");
}

/// Where `SMELT_MKL_DIR` is set (CI sets it when `scripts/fetch-mkl.sh` succeeded), on
/// a CPU MKL supports, the MKL backend must load, so the tests above cover it.
#[test]
fn mkl_loads_where_ci_fetched_it() {
    // no SMELT_MKL_DIR: the fetch was skipped (offline, other platform) and the
    // portable backend is what runs
    let Some(dir) = std::env::var_os("SMELT_MKL_DIR").filter(|d| !d.is_empty()) else {
        return;
    };
    let cpu_ok = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        let ok = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let ok = false;
        ok
    };
    if cfg!(feature = "mkl") && cpu_ok {
        let probe = gemm::probe_mkl_dir(std::path::Path::new(&dir));
        assert!(probe.is_ok(), "MKL in {dir:?}: {probe:?}");
        assert!(Backend::Mkl.is_available(), "{}", gemm::backend_report());
    }
}

/// Env var that turns [`gemm_backend_child`] from a no-op into the real check.
const CHILD: &str = "SMELT_TEST_GEMM_CHILD_EXPECT";

/// Runs this test binary again with `env`, executing only `gemm_backend_child`.
fn run_child(expect: &str, env: &[(&str, &std::path::Path)], gemm: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "gemm_backend_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, expect)
    .env("SMELT_GEMM", gemm);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn without_mkl_the_auto_choice_is_portable_and_forcing_mkl_is_an_error() {
    let empty = tempfile::tempdir().unwrap();
    let env = [("SMELT_MKL_DIR", empty.path()), ("HOME", empty.path())];
    for (gemm, expect) in [
        ("auto", "portable"),
        ("mkl", "invalid"),
        ("portable", "portable"),
        ("fast", "invalid"),
    ] {
        let out = run_child(expect, &env, gemm);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "SMELT_GEMM={gemm}: child failed:\n{text}"
        );
        assert!(
            text.contains("1 passed"),
            "SMELT_GEMM={gemm}: child did not run:\n{text}"
        );
    }
}

/// The child half of the test above: checks the backend this process selected.
#[test]
fn gemm_backend_child() {
    let Ok(expect) = std::env::var(CHILD) else {
        return;
    };
    assert_eq!(gemm::backend_name(), expect, "{}", gemm::backend_report());
    let x = rand_t(&[4, 3], 1, 1.0, DType::F32);
    let w = rand_t(&[2, 3], 2, 1.0, DType::F32);
    let y = ops::fused_linear(&x, &w, None, Precision::F32);
    if expect == "invalid" {
        let err = y.unwrap_err().to_string();
        assert!(err.contains("SMELT_GEMM"), "{err}");
    } else {
        assert!(rel_t(&y.unwrap(), &ops::linear(&x, &w, None).unwrap()) < 1e-6);
    }
}

/// GFLOP/s of the three GEMMs of a linear layer (forward `x·Wᵀ`, backward `dy·W` and
/// `dyᵀ·x`) on SmolLM2-135M shapes, per backend, f32 and bf16. A measurement, not a
/// check: `cargo test --release -p smelt --test ops_linear gemm_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemm_throughput() {
    let n = 1024;
    for backend in gemm::available_backends() {
        for (inp, out) in [(576, 1536), (1536, 576), (576, 49152)] {
            let x = rand_f32(n * inp, 1);
            let w = rand_f32(out * inp, 2);
            let dy = rand_f32(n * out, 3);
            let (xh, wh, dyh) = (gemm::to_bf16(&x), gemm::to_bf16(&w), gemm::to_bf16(&dy));
            let mut y = vec![0f32; n * out];
            let mut dx = vec![0f32; n * inp];
            let mut dw = vec![0f32; out * inp];
            let flops = 2.0 * (n * inp * out) as f64;
            let time = |f: &mut dyn FnMut()| {
                f(); // warm up
                let reps = 3;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                flops / (t.elapsed().as_secs_f64() / reps as f64) / 1e9
            };
            let f32_rates = [
                time(&mut || {
                    backend
                        .sgemm(
                            Trans::No,
                            Trans::Yes,
                            (n, out, inp),
                            1.0,
                            (&x, inp),
                            (&w, inp),
                            0.0,
                            (&mut y, out),
                            Threads::All,
                        )
                        .unwrap()
                }),
                time(&mut || {
                    backend
                        .sgemm(
                            Trans::No,
                            Trans::No,
                            (n, inp, out),
                            1.0,
                            (&dy, out),
                            (&w, inp),
                            0.0,
                            (&mut dx, inp),
                            Threads::All,
                        )
                        .unwrap()
                }),
                time(&mut || {
                    backend
                        .sgemm(
                            Trans::Yes,
                            Trans::No,
                            (out, inp, n),
                            1.0,
                            (&dy, out),
                            (&x, inp),
                            0.0,
                            (&mut dw, inp),
                            Threads::All,
                        )
                        .unwrap()
                }),
            ];
            let bf16_rates = [
                time(&mut || {
                    backend
                        .gemm_bf16_f32(
                            Trans::No,
                            Trans::Yes,
                            (n, out, inp),
                            1.0,
                            (&xh, inp),
                            (&wh, inp),
                            0.0,
                            (&mut y, out),
                            Threads::All,
                        )
                        .unwrap()
                }),
                time(&mut || {
                    backend
                        .gemm_bf16_f32(
                            Trans::No,
                            Trans::No,
                            (n, inp, out),
                            1.0,
                            (&dyh, out),
                            (&wh, inp),
                            0.0,
                            (&mut dx, inp),
                            Threads::All,
                        )
                        .unwrap()
                }),
                time(&mut || {
                    backend
                        .gemm_bf16_f32(
                            Trans::Yes,
                            Trans::No,
                            (out, inp, n),
                            1.0,
                            (&dyh, out),
                            (&xh, inp),
                            0.0,
                            (&mut dw, inp),
                            Threads::All,
                        )
                        .unwrap()
                }),
            ];
            println!(
                "{:8} N={n} {inp:>5}->{out:<5}  f32 GFLOP/s fwd {:6.0} dx {:6.0} dW {:6.0} | bf16 fwd {:6.0} dx {:6.0} dW {:6.0}",
                backend.name(), f32_rates[0], f32_rates[1], f32_rates[2], bf16_rates[0], bf16_rates[1], bf16_rates[2]
            );
        }
    }
}

/// How much subnormal values slow a GEMM down, and what FTZ/DAZ buys back: one
/// single-threaded `(256, 576) · (576, 576)` per backend on values whose products are
/// subnormal (~1e-40), before and after `flush_denormals_to_zero`. A measurement:
/// `cargo test --release -p smelt --test ops_linear denormal_gemm_cost -- --ignored --nocapture --exact`.
#[test]
#[ignore]
fn denormal_gemm_cost() {
    let (m, n, k) = (256, 576, 576);
    let tiny = |seed| {
        rand_f32(m.max(n) * k, seed)
            .into_iter()
            .map(|v| v * 1e-20)
            .collect::<Vec<_>>()
    };
    let (a, b) = (tiny(1), tiny(2));
    let normal = |seed| rand_f32(m.max(n) * k, seed);
    let (an, bn) = (normal(3), normal(4));
    let mut c = vec![0f32; m * n];
    let mut run = |backend: Backend, a: &[f32], b: &[f32]| {
        let t = std::time::Instant::now();
        for _ in 0..3 {
            backend
                .sgemm(
                    Trans::No,
                    Trans::Yes,
                    (m, n, k),
                    1.0,
                    (a, k),
                    (b, k),
                    0.0,
                    (&mut c, n),
                    Threads::Single,
                )
                .unwrap();
        }
        t.elapsed().as_secs_f64() / 3.0 * 1e3
    };
    let backends = gemm::available_backends();
    let before: Vec<(f64, f64)> = backends
        .iter()
        .map(|&bk| (run(bk, &an, &bn), run(bk, &a, &b)))
        .collect();
    assert!(gemm::flush_denormals_to_zero() || !cfg!(target_arch = "x86_64"));
    for (bk, (normal_ms, sub_ms)) in backends.iter().zip(before) {
        let ftz_ms = run(*bk, &a, &b);
        println!(
            "{:8} normal {normal_ms:7.1} ms | subnormal products {sub_ms:7.1} ms | with FTZ/DAZ {ftz_ms:7.1} ms",
            bk.name()
        );
    }
}

/// The composed autocast linear (what a CUDA device runs: candle ops, bf16 GEMM inputs)
/// tracks the f32 linear within bf16 rounding, returns f32 and gives f32 gradients to
/// the f32 weights — the same contract as the CPU kernel's `Bf16Autocast`.
#[test]
fn composed_autocast_linear_tracks_f32_with_f32_gradients() {
    let (n, inp, out) = (48, 96, 72);
    let x = rand_t(&[n, inp], 31, 1.0, DType::F32);
    let w = rand_t(&[out, inp], 32, 0.1, DType::F32);
    let b = rand_t(&[out], 33, 1.0, DType::F32);
    let (y32, g32) = linear_and_grads(&x, &w, Some(&b), &|x, w, b| {
        ops::fused_linear(x, w, b, Precision::F32)
    });
    let (yc, gc) = linear_and_grads(&x, &w, Some(&b), &|x, w, b| {
        ops::composed_autocast_linear(x, w, b)
    });
    assert_eq!(yc.dtype(), DType::F32);
    let tol = 1.0 / 64.0; // bf16 inputs, and a bf16-rounded product before the cast back
    let ey = rel_t(&yc, &y32);
    assert!(
        ey < tol && ey > 0.0,
        "y rel {ey} (0 would mean no rounding happened)"
    );
    for (i, (a, r)) in gc.iter().zip(&g32).enumerate() {
        assert_eq!(a.dtype(), DType::F32, "grad {i}");
        let e = rel_t(a, r);
        assert!(e < tol, "grad {i} rel {e}");
    }
}
