//! Fused linear layer `y = x·Wᵀ (+ b)` with a hand-written backward on [`super::gemm`].
//!
//! Forward: one GEMM `y (N, out) = x (N, in) · W (out, in)ᵀ`, the bias pre-filled into
//! `y` and accumulated by the GEMM (`beta = 1`). Backward, with no transposed copies
//! (the GEMM reads `W` and `dy` transposed through its `Trans` flags):
//! `dx (N, in) = dy · W`, `dW (out, in) = dyᵀ · x`, `db (out,) = 1ᵀ · dy` (column sums
//! as a GEMV). The backward runs directly on the CPU storages and returns each
//! gradient in its own buffer; the only state is the bf16 inputs kept below.
//!
//! Precision ([`Precision`]): under `Bf16Autocast` the GEMM *inputs* (x, W and dy) are
//! rounded to bf16 on every call (the forward's rounded x and W are kept in the op for
//! its backward when the call is part of an autograd graph; nothing outlives the
//! graph, since the weights change every step),
//! and the products accumulate and come out in f32, as `torch.autocast` does on CPU;
//! gradients stay f32. f64 inputs always run in f64 (that is the finite-difference
//! check path). Half dtypes and non-CPU devices use [`super::reference::linear`].

use super::cpu::{slice, unsupported};
use super::gemm::{self, bf16, Threads, Trans};
use super::precision::Precision;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use std::sync::Mutex;

/// `x` (..., in) · `w` (out, in)ᵀ (+ `b` (out,)) → (..., out), at `precision`.
///
/// The leading dimensions of `x` are flattened into rows (a view when `x` is
/// contiguous). f32/f64 on the CPU run the fused kernel; other dtypes and devices use
/// the reference composition.
pub fn fused_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    precision: Precision,
) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims();
    if dims.is_empty() || dims[dims.len() - 1] != in_f {
        candle_core::bail!(
            "fused_linear: x {:?} does not end in the weight's {in_f} input features (w {:?})",
            dims,
            w.dims()
        );
    }
    if let Some(b) = b {
        if b.dims() != [out_f] {
            candle_core::bail!(
                "fused_linear: bias {:?} does not match the weight's {out_f} outputs",
                b.dims()
            );
        }
    }
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("x has a last dim") = out_f;
    let n = x.elem_count() / in_f.max(1);
    let x2 = x.reshape((n, in_f))?; // (N, in)
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && b.map_or(true, |b| b.dtype() == x.dtype());
    let y = if !fused {
        match precision {
            Precision::Bf16Autocast if x.dtype() == DType::F32 && w.dtype() == DType::F32 => {
                composed_autocast_linear(&x2, w, b)?
            }
            _ => super::reference::linear(&x2, w, b)?,
        }
    } else {
        let op = Linear {
            precision,
            keep_rounded: precision == Precision::Bf16Autocast && (x.track_op() || w.track_op()),
            rounded: Mutex::new(None),
        };
        match b {
            None => x2.contiguous()?.apply_op2(&w.contiguous()?, op)?,
            Some(b) => x2
                .contiguous()?
                .apply_op3(&w.contiguous()?, &b.contiguous()?, op)?,
        }
    }; // (N, out)
    y.reshape(out_dims)
}

/// `bf16-autocast` on devices without the CPU kernel (CUDA): candle ops with a backward,
/// `x` and `W` cast to bf16 for the GEMM (cuBLAS accumulates in f32), the product cast
/// back to f32 before the bias, so weights, gradients and optimizer state stay f32.
/// `x` `(N, in)`, `w` `(out, in)` → `(N, out)` f32.
pub fn composed_autocast_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x
        .to_dtype(DType::BF16)?
        .matmul(&w.to_dtype(DType::BF16)?.t()?)? // (N, out) bf16
        .to_dtype(DType::F32)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// The forward op: `(x, w) → y` or `(x, w, b) → y`.
#[derive(Debug)]
struct Linear {
    precision: Precision,
    /// Keep the bf16-rounded `x` and `W` of the forward for the backward (set when the
    /// call is part of an autograd graph, under bf16 autocast).
    keep_rounded: bool,
    /// What the forward rounded, taken by the backward (so each is rounded once).
    rounded: Mutex<Option<Rounded>>,
}

/// The bf16-rounded GEMM inputs of one forward call.
#[derive(Debug)]
struct Rounded {
    /// `x` `(N, in)`.
    x: Vec<bf16>,
    /// `W` `(out, in)`.
    w: Vec<bf16>,
}

/// The gradients of one call, each in its own buffer (so no gradient keeps another
/// alive): `dx` `(N, in)`, `dW` `(out, in)`, `db` `(out,)` when there is a bias.
struct Grads<T> {
    dx: Vec<T>,
    dw: Vec<T>,
    db: Option<Vec<T>>,
}

impl<T: Copy + From<f32>> Grads<T> {
    fn zeros(d: Dims, bias: bool) -> Self {
        let zero = T::from(0.0);
        Grads {
            dx: vec![zero; d.n * d.inp],
            dw: vec![zero; d.out * d.inp],
            db: bias.then(|| vec![zero; d.out]),
        }
    }
}

/// Sizes of one call: rows, input and output features.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    inp: usize,
    out: usize,
}

impl Dims {
    fn of(x: &Layout, w: &Layout, op: &str) -> Result<Self> {
        let (n, inp) = x.shape().dims2()?;
        let (out, win) = w.shape().dims2()?;
        if win != inp {
            candle_core::bail!("{op}: x (.., {inp}) and w (.., {win}) disagree");
        }
        Ok(Self { n, inp, out })
    }
}

/// One GEMM `C = op(A)·op(B) + beta·C` (alpha 1, all threads) with `A`/`B` elements `A`
/// and accumulator `C`: f32, bf16 → f32 or f64. The three products of the layer are
/// written once below and run at any of these precisions.
pub(super) type Gemm<A, C> = dyn Fn(
    Trans,
    Trans,
    (usize, usize, usize),
    (&[A], usize),
    (&[A], usize),
    C,
    (&mut [C], usize),
) -> Result<()>;

pub(super) fn sgemm_all(
    ta: Trans,
    tb: Trans,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> Result<()> {
    gemm::sgemm(
        ta,
        tb,
        m,
        n,
        k,
        1.0,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
        Threads::All,
    )
}

pub(super) fn bf16_gemm_all(
    ta: Trans,
    tb: Trans,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[half::bf16], usize),
    (b, ldb): (&[half::bf16], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> Result<()> {
    gemm::gemm_bf16_f32(
        ta,
        tb,
        m,
        n,
        k,
        1.0,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
        Threads::All,
    )
}

pub(super) fn dgemm_all(
    ta: Trans,
    tb: Trans,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f64], usize),
    (b, ldb): (&[f64], usize),
    beta: f64,
    (c, ldc): (&mut [f64], usize),
) -> Result<()> {
    gemm::dgemm(
        ta,
        tb,
        m,
        n,
        k,
        1.0,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
        Threads::All,
    )
}

/// y (N, out) = x (N, in) · Wᵀ (in, out) + beta · y
fn product_forward<A, C>(
    gemm: &Gemm<A, C>,
    x: &[A],
    w: &[A],
    beta: C,
    y: &mut [C],
    d: Dims,
) -> Result<()> {
    gemm(
        Trans::No,
        Trans::Yes,
        (d.n, d.out, d.inp),
        (x, d.inp),
        (w, d.inp),
        beta,
        (y, d.out),
    )
}

/// dx (N, in) = dy (N, out) · W (out, in)
fn product_grad_input<A, C>(
    gemm: &Gemm<A, C>,
    dy: &[A],
    w: &[A],
    zero: C,
    dx: &mut [C],
    d: Dims,
) -> Result<()> {
    gemm(
        Trans::No,
        Trans::No,
        (d.n, d.inp, d.out),
        (dy, d.out),
        (w, d.inp),
        zero,
        (dx, d.inp),
    )
}

/// dW (out, in) = dyᵀ (out, N) · x (N, in)
fn product_grad_weight<A, C>(
    gemm: &Gemm<A, C>,
    dy: &[A],
    x: &[A],
    zero: C,
    dw: &mut [C],
    d: Dims,
) -> Result<()> {
    gemm(
        Trans::Yes,
        Trans::No,
        (d.out, d.inp, d.n),
        (dy, d.out),
        (x, d.inp),
        zero,
        (dw, d.inp),
    )
}

/// db (1, out) = 1ᵀ (1, N) · dy (N, out), with `ones` of length N
fn product_grad_bias<T>(
    gemm: &Gemm<T, T>,
    ones: &[T],
    dy: &[T],
    zero: T,
    db: &mut [T],
    d: Dims,
) -> Result<()> {
    gemm(
        Trans::No,
        Trans::No,
        (1, d.out, d.n),
        (ones, d.n),
        (dy, d.out),
        zero,
        (db, d.out),
    )
}

/// The output buffer `(N, out)` preloaded with the bias rows (beta 1), or zeros (beta 0).
fn preloaded_output<T: Copy + From<f32>>(b: Option<&[T]>, d: Dims) -> (Vec<T>, T) {
    match b {
        Some(b) => (b.repeat(d.n), T::from(1.0)), // every row = b
        None => (vec![T::from(0.0); d.n * d.out], T::from(0.0)),
    }
}

/// The f32 forward: `y = x·Wᵀ + b`; under bf16 autocast also returns the rounded
/// inputs.
fn forward_f32(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    d: Dims,
    p: Precision,
) -> Result<(Vec<f32>, Option<Rounded>)> {
    let (mut y, beta) = preloaded_output(b, d);
    match p {
        Precision::F32 => {
            product_forward(&sgemm_all, x, w, beta, &mut y, d)?;
            Ok((y, None))
        }
        Precision::Bf16Autocast => {
            let r = Rounded {
                x: gemm::to_bf16(x),
                w: gemm::to_bf16(w),
            };
            product_forward(&bf16_gemm_all, &r.x, &r.w, beta, &mut y, d)?;
            Ok((y, Some(r)))
        }
    }
}

/// The f64 forward (always full precision).
fn forward_f64(x: &[f64], w: &[f64], b: Option<&[f64]>, d: Dims) -> Result<Vec<f64>> {
    let (mut y, beta) = preloaded_output(b, d);
    product_forward(&dgemm_all, x, w, beta, &mut y, d)?;
    Ok(y)
}

/// The f32 backward; `rounded` are the forward's bf16 inputs when it kept them (else
/// they are rounded here).
fn backward_f32(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d: Dims,
    p: Precision,
    bias: bool,
    rounded: Option<Rounded>,
) -> Result<Grads<f32>> {
    let mut g = Grads::zeros(d, bias);
    match p {
        Precision::F32 => {
            product_grad_input(&sgemm_all, dy, w, 0.0, &mut g.dx, d)?;
            product_grad_weight(&sgemm_all, dy, x, 0.0, &mut g.dw, d)?;
        }
        Precision::Bf16Autocast => {
            let dy_h = gemm::to_bf16(dy);
            let r = rounded.unwrap_or_else(|| Rounded {
                x: gemm::to_bf16(x),
                w: gemm::to_bf16(w),
            });
            product_grad_input(&bf16_gemm_all, &dy_h, &r.w, 0.0, &mut g.dx, d)?;
            product_grad_weight(&bf16_gemm_all, &dy_h, &r.x, 0.0, &mut g.dw, d)?;
        }
    }
    if let Some(db) = &mut g.db {
        // in f32 whatever the GEMM precision
        product_grad_bias(&sgemm_all, &vec![1f32; d.n], dy, 0.0, db, d)?;
    }
    Ok(g)
}

/// The f64 backward.
fn backward_f64(x: &[f64], w: &[f64], dy: &[f64], d: Dims, bias: bool) -> Result<Grads<f64>> {
    let mut g = Grads::zeros(d, bias);
    product_grad_input(&dgemm_all, dy, w, 0.0, &mut g.dx, d)?;
    product_grad_weight(&dgemm_all, dy, x, 0.0, &mut g.dw, d)?;
    if let Some(db) = &mut g.db {
        product_grad_bias(&dgemm_all, &vec![1f64; d.n], dy, 0.0, db, d)?;
    }
    Ok(g)
}

/// The gradients as tensors on `dev`.
fn grad_tensors<T: candle_core::WithDType>(
    g: Grads<T>,
    d: Dims,
    dev: &candle_core::Device,
) -> Result<Vec<Tensor>> {
    let mut out = vec![
        Tensor::from_vec(g.dx, (d.n, d.inp), dev)?,
        Tensor::from_vec(g.dw, (d.out, d.inp), dev)?,
    ];
    if let Some(db) = g.db {
        out.push(Tensor::from_vec(db, d.out, dev)?);
    }
    Ok(out)
}

impl Linear {
    /// Forward on raw storages; `b` is the optional bias.
    fn fwd(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "smelt-linear";
        let d = Dims::of(xl, wl, name)?;
        let out = match xs.dtype() {
            DType::F32 => {
                let b = b.map(|(s, l)| slice::<f32>(s, l, name)).transpose()?;
                let (y, rounded) = forward_f32(
                    slice(xs, xl, name)?,
                    slice(ws, wl, name)?,
                    b,
                    d,
                    self.precision,
                )?;
                if self.keep_rounded {
                    *self.rounded.lock().unwrap_or_else(|e| e.into_inner()) = rounded;
                }
                CpuStorage::F32(y)
            }
            DType::F64 => {
                let b = b.map(|(s, l)| slice::<f64>(s, l, name)).transpose()?;
                CpuStorage::F64(forward_f64(
                    slice(xs, xl, name)?,
                    slice(ws, wl, name)?,
                    b,
                    d,
                )?)
            }
            dt => return Err(unsupported(dt, name)),
        };
        Ok((out, Shape::from((d.n, d.out))))
    }

    /// Gradients of `(x, w[, b])`, computed directly on the CPU storages (the
    /// backward needs no graph of its own).
    fn grads(&self, x: &Tensor, w: &Tensor, dy: &Tensor, bias: bool) -> Result<Vec<Tensor>> {
        let name = "smelt-linear-bwd";
        let dy = dy.contiguous()?;
        let rounded = self
            .rounded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            candle_core::bail!("{name}: x, w and dy must be on the CPU");
        };
        let d = Dims::of(xl, wl, name)?;
        if gl.shape().dims() != [d.n, d.out] {
            candle_core::bail!(
                "{name}: dy {:?} is not ({}, {})",
                gl.shape().dims(),
                d.n,
                d.out
            );
        }
        let (x, w, g) = ((xs, xl), (ws, wl), (gs, gl));
        match xs.dtype() {
            DType::F32 => {
                let [x, w, g] = [x, w, g].map(|(s, l)| slice::<f32>(s, l, name));
                let grads = backward_f32(x?, w?, g?, d, self.precision, bias, rounded)?;
                grad_tensors(grads, d, &candle_core::Device::Cpu)
            }
            DType::F64 => {
                let [x, w, g] = [x, w, g].map(|(s, l)| slice::<f64>(s, l, name));
                grad_tensors(
                    backward_f64(x?, w?, g?, d, bias)?,
                    d,
                    &candle_core::Device::Cpu,
                )
            }
            dt => Err(unsupported(dt, name)),
        }
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "smelt-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(x, w, dy, false)?.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "smelt-linear-bias"
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
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(x, w, dy, true)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}
