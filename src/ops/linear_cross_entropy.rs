//! Fused `lm_head` projection + cross-entropy, computed in vocabulary chunks.
//!
//! The composed path materialises the `(N, V)` logits (49,152 columns for SmolLM2),
//! then a max, an exp, a sum, a log and a gather over them, and keeps several
//! `(N, V)` buffers alive for backward. Here the forward walks the vocabulary in
//! chunks of `C` columns: `logits_c = h · W_cᵀ` (one GEMM, `(N, C)`), then an online
//! log-sum-exp per row; only `(N,)` statistics survive. The backward recomputes each
//! chunk's logits and forms `dlogits_c = g · (softmax − onehot)` in place, then
//! `dh += dlogits_c · W_c` and `dW_c = dlogits_cᵀ · h`. Key decision: recompute
//! rather than store, so the full logits never exist and peak memory is `O(N·C)`;
//! the GEMMs read the weight slice through strides (no transposed copies).
//!
//! The op's output is `(N, 4)`: `[nll, lse, argmax_hit, label]` per token; only `nll`
//! is differentiable and the rest is what the backward needs (so the op has no state).

use super::attention::Float;
use super::cpu::{par_row_blocks, slice, unsupported, Real};
use super::gemm::{self, bf16, Trans};
use super::linear::{bf16_gemm_all, dgemm_all, sgemm_all, Gemm};
use super::precision::Precision;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Vocabulary columns per chunk: `(N, 4096)` f32 logits are 16 MiB at N = 1024.
pub const DEFAULT_VOCAB_CHUNK: usize = 4096;

/// Per-token results of [`linear_cross_entropy`].
#[derive(Debug, Clone)]
pub struct LinearCrossEntropy {
    /// `-log p(label)` per token `(N,)`, 0 where the label is ignored; differentiable
    /// w.r.t. hidden states and weight. Per-token logprobs are `-nll`.
    pub nll: Tensor,
    /// Number of labels that count (not [`super::IGNORE_INDEX`] / negative).
    pub count: f64,
    /// How many counted labels are the argmax of their logits.
    pub correct: f64,
}

/// Cross-entropy of `hidden` (N, H) projected by `weight` (V, H) against `labels` (N,)
/// (any integer dtype; negative = ignored), without building the `(N, V)` logits.
///
/// f32/f64 on the CPU run the fused kernel; other dtypes and devices use the
/// reference composition. `chunk` is the vocabulary chunk width. Under
/// [`Precision::Bf16Autocast`] the GEMMs of f32 operands take bf16-rounded inputs and
/// accumulate in f32 (the softmax, log-sum-exp and gradients stay f32), as
/// [`super::fused_linear`] does; f64 operands always run in f64.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    chunk: usize,
    precision: Precision,
) -> Result<LinearCrossEntropy> {
    let (n, h) = hidden.dims2()?;
    let (v, hw) = weight.dims2()?;
    if hw != h || labels.dims() != [n] {
        candle_core::bail!(
            "linear_cross_entropy: hidden {:?}, weight {:?}, labels {:?} do not agree",
            hidden.dims(),
            weight.dims(),
            labels.dims()
        );
    }
    let labels = labels.to_dtype(DType::I64)?;
    let label_vec: Vec<i64> = labels.to_vec1()?;
    if let Some(bad) = label_vec.iter().find(|&&l| l >= v as i64) {
        candle_core::bail!("linear_cross_entropy: label {bad} out of range for vocab {v}");
    }
    let count = label_vec.iter().filter(|&&l| l >= 0).count() as f64;
    let fused = hidden.device().is_cpu()
        && matches!(hidden.dtype(), DType::F32 | DType::F64)
        && weight.dtype() == hidden.dtype()
        && v < (1 << 24);
    if !fused {
        let logits = super::reference::linear(hidden, weight, None)?;
        let (_, _, correct) = super::reference::cross_entropy_sum(&logits, &labels)?;
        let nll = per_token_reference_nll(&logits, &labels)?;
        return Ok(LinearCrossEntropy {
            nll,
            count,
            correct,
        });
    }
    let out = hidden.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &labels.contiguous()?,
        LinearCe {
            chunk: chunk.max(1),
            backward: false,
            precision,
            keep_rounded: precision == Precision::Bf16Autocast
                && (hidden.track_op() || weight.track_op()),
            rounded: Mutex::new(None),
        },
    )?; // (N, 4)
    let nll = out.narrow(1, 0, 1)?.squeeze(1)?;
    let correct = out
        .narrow(1, 2, 1)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(LinearCrossEntropy {
        nll,
        count,
        correct,
    })
}

/// Same contract as [`super::cross_entropy_sum`] (summed NLL, count, correct) but from
/// hidden states and the projection weight, through [`linear_cross_entropy`].
pub fn linear_cross_entropy_sum(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, f64, f64)> {
    let r = linear_cross_entropy(hidden, weight, labels, DEFAULT_VOCAB_CHUNK, Precision::F32)?;
    Ok((r.nll.sum_all()?, r.count, r.correct))
}

/// Per-token NLL from explicit logits (fallback path), 0 at ignored labels.
fn per_token_reference_nll(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let mask = labels.ge(0i64)?;
    let safe = mask
        .where_cond(labels, &labels.zeros_like()?)?
        .to_dtype(DType::U32)?;
    let max = logits.max_keepdim(1)?.detach(); // (N, 1), constant for stability
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?; // (N, 1)
    let picked = logits.gather(&safe.unsqueeze(1)?, 1)?; // (N, 1)
    (lse - picked)?.squeeze(1)? * mask.to_dtype(logits.dtype())?
}

/// Forward `(h, W, labels i64) → (N, 4)`; with `backward`, the gradient op
/// `(h, W, (N, 3) [g, lse, label]) → [dh (N·H) | dW (V·H)]`.
struct LinearCe {
    chunk: usize,
    backward: bool,
    precision: Precision,
    /// Keep the forward's bf16-rounded `h` and `W` for the backward (set under bf16
    /// autocast when the call is part of an autograd graph).
    keep_rounded: bool,
    /// The rounded operands: filled by the forward, moved to the backward op.
    rounded: Mutex<Option<Autocast>>,
}

/// The GEMMs of one vocabulary chunk `W_c = W[c0 .. c0+c]` (`(c, H)`), at one precision.
trait ChunkProducts<T> {
    /// `logits (N, c) = h · W_cᵀ`, written to `out` (`N·c`, row-major).
    fn logits(&self, c0: usize, c: usize, out: &mut [T]) -> Result<()>;
    /// `dh (N, H) += dl · W_c` and `dw_c (c, H) = dlᵀ · h` for `dl` `(N, c)`.
    fn grads(&self, dl: &[T], c0: usize, c: usize, dh: &mut [T], dw_c: &mut [T]) -> Result<()>;
}

/// The chunk GEMMs in the operands' own precision (f32 or f64).
struct Exact<'a, T: 'static> {
    h: &'a [T],
    w: &'a [T],
    n: usize,
    hd: usize,
    gemm: &'static Gemm<T, T>,
}

impl<T: Real> ChunkProducts<T> for Exact<'_, T> {
    fn logits(&self, c0: usize, c: usize, out: &mut [T]) -> Result<()> {
        let (n, hd) = (self.n, self.hd);
        let w_c = &self.w[c0 * hd..];
        (self.gemm)(
            Trans::No,
            Trans::Yes,
            (n, c, hd),
            (self.h, hd),
            (w_c, hd),
            T::zero(),
            (out, c),
        )
    }

    fn grads(&self, dl: &[T], c0: usize, c: usize, dh: &mut [T], dw_c: &mut [T]) -> Result<()> {
        let (n, hd) = (self.n, self.hd);
        let w_c = &self.w[c0 * hd..];
        (self.gemm)(
            Trans::No,
            Trans::No,
            (n, hd, c),
            (dl, c),
            (w_c, hd),
            T::one(),
            (dh, hd),
        )?;
        (self.gemm)(
            Trans::Yes,
            Trans::No,
            (c, hd, n),
            (dl, c),
            (self.h, hd),
            T::zero(),
            (dw_c, hd),
        )
    }
}

/// The chunk GEMMs under bf16 autocast: `h` and `W` rounded to bf16 once per call,
/// `dl` per chunk; f32 accumulation and outputs.
struct Autocast {
    h: Vec<bf16>,
    w: Vec<bf16>,
    n: usize,
    hd: usize,
}

impl ChunkProducts<f32> for Autocast {
    fn logits(&self, c0: usize, c: usize, out: &mut [f32]) -> Result<()> {
        let (n, hd) = (self.n, self.hd);
        let w_c = &self.w[c0 * hd..];
        bf16_gemm_all(
            Trans::No,
            Trans::Yes,
            (n, c, hd),
            (&self.h, hd),
            (w_c, hd),
            0.0,
            (out, c),
        )
    }

    fn grads(
        &self,
        dl: &[f32],
        c0: usize,
        c: usize,
        dh: &mut [f32],
        dw_c: &mut [f32],
    ) -> Result<()> {
        let (n, hd) = (self.n, self.hd);
        let w_c = &self.w[c0 * hd..];
        let dl = gemm::to_bf16(dl);
        bf16_gemm_all(
            Trans::No,
            Trans::No,
            (n, hd, c),
            (&dl, c),
            (w_c, hd),
            1.0,
            (dh, hd),
        )?;
        bf16_gemm_all(
            Trans::Yes,
            Trans::No,
            (c, hd, n),
            (&dl, c),
            (&self.h, hd),
            0.0,
            (dw_c, hd),
        )
    }
}

/// Per-row state of the forward's walk over the vocabulary.
#[derive(Clone, Copy)]
struct RowState {
    /// Largest logit so far (the log-sum-exp's shift).
    max: f64,
    /// `Σ exp(logit − max)` so far.
    sum: f64,
    /// The label's logit, once its chunk has been seen.
    picked: f64,
    /// Index of the first largest logit.
    argmax: usize,
}

fn forward<T: Float>(
    products: &dyn ChunkProducts<T>,
    (n, v): (usize, usize),
    labels: &[i64],
    chunk: usize,
) -> Result<Vec<T>> {
    let start = RowState {
        max: f64::NEG_INFINITY,
        sum: 0.0,
        picked: 0.0,
        argmax: 0,
    };
    let mut state = vec![start; n];
    let mut buf = vec![T::zero(); n * chunk.min(v)]; // one (N, c) logits chunk, reused
    for c0 in (0..v).step_by(chunk) {
        let c = chunk.min(v - c0);
        let logits = &mut buf[..n * c];
        products.logits(c0, c, logits)?; // (N, c)
        let logits = &*logits;
        par_row_blocks(&mut state, 1, |row0, block| {
            for (i, st) in block.iter_mut().enumerate() {
                let r = row0 + i;
                let row = &logits[r * c..(r + 1) * c];
                let chunk_max = T::max_of(row);
                if chunk_max.to_f64() > st.max {
                    let j = row.iter().position(|&x| x == chunk_max).unwrap_or(0);
                    st.argmax = c0 + j;
                    // rescale the running sum to the new shift
                    st.sum *= (st.max - chunk_max.to_f64()).exp();
                    st.max = chunk_max.to_f64();
                }
                st.sum += T::sum_exp_shifted(row, T::from_f64(st.max)).to_f64();
                let l = labels[r];
                if l >= c0 as i64 && l < (c0 + c) as i64 {
                    st.picked = row[l as usize - c0].to_f64();
                }
            }
        });
    }
    let mut out = Vec::with_capacity(4 * n);
    for (st, &l) in state.iter().zip(labels) {
        let lse = st.max + st.sum.ln();
        let keep = l >= 0;
        out.push(T::from_f64(if keep { lse - st.picked } else { 0.0 }));
        out.push(T::from_f64(lse));
        out.push(T::from_f64(if keep && st.argmax as i64 == l {
            1.0
        } else {
            0.0
        }));
        out.push(T::from_f64(l as f64));
    }
    Ok(out)
}

fn backward<T: Float>(
    products: &dyn ChunkProducts<T>,
    (n, v, hd): (usize, usize, usize),
    aux: &[T],
    chunk: usize,
) -> Result<Vec<T>> {
    let mut out = vec![T::zero(); n * hd + v * hd];
    let (dh, dw) = out.split_at_mut(n * hd); // (N, H), (V, H)
    let mut buf = vec![T::zero(); n * chunk.min(v)]; // one (N, c) chunk, reused
    for c0 in (0..v).step_by(chunk) {
        let c = chunk.min(v - c0);
        let dl = &mut buf[..n * c];
        products.logits(c0, c, dl)?; // (N, c) logits
        par_row_blocks(dl, c, |row0, block| {
            for (i, row) in block.chunks_mut(c).enumerate() {
                let r = row0 + i;
                let (g, lse, label) = (aux[3 * r], aux[3 * r + 1], aux[3 * r + 2].to_f64() as i64);
                if label < 0 {
                    row.fill(T::zero());
                    continue;
                }
                T::exp_shifted(row, lse); // softmax
                row.iter_mut().for_each(|x| *x *= g); // g · softmax
                if label >= c0 as i64 && label < (c0 + c) as i64 {
                    row[label as usize - c0] -= g;
                }
            }
        });
        products.grads(dl, c0, c, dh, &mut dw[c0 * hd..(c0 + c) * hd])?;
    }
    Ok(out)
}

/// Runs the forward or backward over the chunk products that fit the dtype and
/// precision: f32 exact or under bf16 autocast, f64 always exact.
fn run(
    op: &LinearCe,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    let name = op.name();
    let (n, hd) = l1.shape().dims2()?;
    let v = l2.shape().dims2()?.0;
    match s1.dtype() {
        DType::F32 => {
            let (h, w) = (slice::<f32>(s1, l1, name)?, slice::<f32>(s2, l2, name)?);
            let exact = Exact {
                h,
                w,
                n,
                hd,
                gemm: &sgemm_all,
            };
            let autocast = (op.precision == Precision::Bf16Autocast).then(|| {
                let kept = op.rounded.lock().unwrap_or_else(|e| e.into_inner()).take();
                kept.unwrap_or_else(|| Autocast {
                    h: gemm::to_bf16(h),
                    w: gemm::to_bf16(w),
                    n,
                    hd,
                })
            });
            let products: &dyn ChunkProducts<f32> = match &autocast {
                Some(a) => a,
                None => &exact,
            };
            let out = if op.backward {
                backward(products, (n, v, hd), slice(s3, l3, name)?, op.chunk)?
            } else {
                forward(products, (n, v), slice(s3, l3, name)?, op.chunk)?
            };
            if op.keep_rounded && !op.backward {
                *op.rounded.lock().unwrap_or_else(|e| e.into_inner()) = autocast;
            }
            Ok(CpuStorage::F32(out))
        }
        DType::F64 => {
            let (h, w) = (slice::<f64>(s1, l1, name)?, slice::<f64>(s2, l2, name)?);
            let products = Exact {
                h,
                w,
                n,
                hd,
                gemm: &dgemm_all,
            };
            Ok(CpuStorage::F64(if op.backward {
                backward(&products, (n, v, hd), slice(s3, l3, name)?, op.chunk)?
            } else {
                forward(&products, (n, v), slice(s3, l3, name)?, op.chunk)?
            }))
        }
        d => Err(unsupported(d, name)),
    }
}

impl CustomOp3 for LinearCe {
    fn name(&self) -> &'static str {
        if self.backward {
            "smelt-linear-cross-entropy-bwd"
        } else {
            "smelt-linear-cross-entropy"
        }
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
        let (n, h) = l1.shape().dims2()?;
        let v = l2.shape().dims2()?.0;
        if l1.contiguous_offsets().is_none() || l2.contiguous_offsets().is_none() {
            candle_core::bail!("{}: hidden and weight must be contiguous", self.name());
        }
        let out = run(self, (s1, l1), (s2, l2), (s3, l3))?;
        let shape = if self.backward {
            Shape::from(n * h + v * h)
        } else {
            Shape::from((n, 4))
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _labels: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let aux = Tensor::cat(
            &[
                grad.narrow(1, 0, 1)?,
                res.narrow(1, 1, 1)?,
                res.narrow(1, 3, 1)?,
            ],
            1,
        )?
        .contiguous()?; // (N, 3): [g, lse, label]
        let packed = hidden.apply_op3_no_bwd(
            weight,
            &aux,
            &LinearCe {
                chunk: self.chunk,
                backward: true,
                precision: self.precision,
                keep_rounded: false,
                rounded: Mutex::new(
                    self.rounded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(),
                ),
            },
        )?; // (N·H + V·H,)
        let (nh, vh) = (hidden.elem_count(), weight.elem_count());
        let dh = packed.narrow(0, 0, nh)?.reshape(hidden.shape())?;
        let dw = packed.narrow(0, nh, vh)?.reshape(weight.shape())?;
        Ok((Some(dh), Some(dw), None))
    }
}
