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

use super::cpu::{matmul, par_row_blocks, slice, unsupported, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

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
/// reference composition. `chunk` is the vocabulary chunk width.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    chunk: usize,
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
    let r = linear_cross_entropy(hidden, weight, labels, DEFAULT_VOCAB_CHUNK)?;
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
}

/// Layout of rows `c0..c0+c` of the `(V, H)` weight, optionally transposed to `(H, c)`.
fn weight_slice(l: &Layout, v: usize, h: usize, c0: usize, c: usize, t: bool) -> Result<Layout> {
    let s = Layout::contiguous_with_offset((v, h), l.start_offset()).narrow(0, c0, c)?;
    if t {
        s.transpose(0, 1)
    } else {
        Ok(s)
    }
}

fn forward<T: Real>(
    hs: &CpuStorage,
    hl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    labels: &[i64],
    chunk: usize,
) -> Result<Vec<T>> {
    let (n, h) = hl.shape().dims2()?;
    let v = wl.shape().dims2()?.0;
    // running per-row state: [max, sum exp(x - max), picked logit, best logit, best index]
    let mut state = vec![[f64::NEG_INFINITY, 0.0, 0.0, f64::NEG_INFINITY, 0.0]; n];
    for c0 in (0..v).step_by(chunk) {
        let c = chunk.min(v - c0);
        let logits: Vec<T> = matmul(hs, hl, ws, &weight_slice(wl, v, h, c0, c, true)?, (n, c, h))?; // (N, c)
        par_row_blocks(&mut state, 1, |row0, block| {
            for (i, st) in block.iter_mut().enumerate() {
                let r = row0 + i;
                let row = &logits[r * c..(r + 1) * c];
                let mut m = T::from_f64(st[0]);
                let (mut best, mut bi) = (st[3], st[4]);
                for (j, &x) in row.iter().enumerate() {
                    if x > m {
                        m = x;
                    }
                    if x.to_f64() > best {
                        best = x.to_f64();
                        bi = (c0 + j) as f64;
                    }
                }
                let mut sum = T::zero();
                for &x in row {
                    sum += (x - m).exp();
                }
                let mf = m.to_f64();
                st[1] = st[1] * (st[0] - mf).exp() + sum.to_f64();
                st[0] = mf;
                st[3] = best;
                st[4] = bi;
                let l = labels[r];
                if l >= c0 as i64 && l < (c0 + c) as i64 {
                    st[2] = row[l as usize - c0].to_f64();
                }
            }
        });
    }
    let mut out = Vec::with_capacity(4 * n);
    for (st, &l) in state.iter().zip(labels) {
        let lse = st[0] + st[1].ln();
        let keep = l >= 0;
        out.push(T::from_f64(if keep { lse - st[2] } else { 0.0 }));
        out.push(T::from_f64(lse));
        out.push(T::from_f64(if keep && st[4] as i64 == l {
            1.0
        } else {
            0.0
        }));
        out.push(T::from_f64(l as f64));
    }
    Ok(out)
}

fn backward<T: Real>(
    hs: &CpuStorage,
    hl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    aux: &[T],
    chunk: usize,
) -> Result<Vec<T>> {
    let (n, h) = hl.shape().dims2()?;
    let v = wl.shape().dims2()?.0;
    let mut out = vec![T::zero(); n * h + v * h];
    for c0 in (0..v).step_by(chunk) {
        let c = chunk.min(v - c0);
        let mut dl: Vec<T> = matmul(hs, hl, ws, &weight_slice(wl, v, h, c0, c, true)?, (n, c, h))?; // (N, c) logits
        par_row_blocks(&mut dl, c, |row0, block| {
            for (i, row) in block.chunks_mut(c).enumerate() {
                let r = row0 + i;
                let (g, lse, label) = (aux[3 * r], aux[3 * r + 1], aux[3 * r + 2].to_f64() as i64);
                if label < 0 {
                    row.iter_mut().for_each(|x| *x = T::zero());
                    continue;
                }
                for x in row.iter_mut() {
                    *x = g * (*x - lse).exp(); // g · softmax
                }
                if label >= c0 as i64 && label < (c0 + c) as i64 {
                    row[label as usize - c0] -= g;
                }
            }
        });
        let dl_s = T::to_cpu_storage_owned(dl);
        let dl_l = Layout::contiguous((n, c));
        let dh: Vec<T> = matmul(
            &dl_s,
            &dl_l,
            ws,
            &weight_slice(wl, v, h, c0, c, false)?,
            (n, h, c),
        )?; // (N, H)
        for (a, b) in out[..n * h].iter_mut().zip(dh) {
            *a += b;
        }
        let dw: Vec<T> = matmul(&dl_s, &dl_l.transpose(0, 1)?, hs, hl, (c, h, n))?; // (c, H)
        out[n * h + c0 * h..n * h + (c0 + c) * h].copy_from_slice(&dw);
    }
    Ok(out)
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
        let name = self.name();
        let (n, h) = l1.shape().dims2()?;
        let v = l2.shape().dims2()?.0;
        if l1.contiguous_offsets().is_none() || l2.contiguous_offsets().is_none() {
            candle_core::bail!("{name}: hidden and weight must be contiguous");
        }
        if self.backward {
            let out = match s1.dtype() {
                DType::F32 => CpuStorage::F32(backward::<f32>(
                    s1,
                    l1,
                    s2,
                    l2,
                    slice(s3, l3, name)?,
                    self.chunk,
                )?),
                DType::F64 => CpuStorage::F64(backward::<f64>(
                    s1,
                    l1,
                    s2,
                    l2,
                    slice(s3, l3, name)?,
                    self.chunk,
                )?),
                d => return Err(unsupported(d, name)),
            };
            return Ok((out, Shape::from(n * h + v * h)));
        }
        let labels: &[i64] = slice(s3, l3, name)?;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(s1, l1, s2, l2, labels, self.chunk)?),
            DType::F64 => CpuStorage::F64(forward::<f64>(s1, l1, s2, l2, labels, self.chunk)?),
            d => return Err(unsupported(d, name)),
        };
        Ok((out, Shape::from((n, 4))))
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
            },
        )?; // (N·H + V·H,)
        let (nh, vh) = (hidden.elem_count(), weight.elem_count());
        let dh = packed.narrow(0, 0, nh)?.reshape(hidden.shape())?;
        let dw = packed.narrow(0, nh, vh)?.reshape(weight.shape())?;
        Ok((Some(dh), Some(dw), None))
    }
}
