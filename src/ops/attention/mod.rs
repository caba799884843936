//! Causal self-attention with grouped-query heads and per-document masks.
//!
//! Two implementations with one signature, held equal by `tests/ops_attention.rs`:
//! - [`reference_attention`]: `repeat_kv` + matmul + additive mask + softmax, the slow
//!   composition of candle ops (it materialises the `(B, Hq, Tq, Tk)` scores);
//! - [`fused_attention`]: a flash-style CPU kernel with a hand-written backward.
//!
//! Masking model: `segments` (B, Tk) gives a document id per key slot, non-decreasing
//! along a row. Query `i` sits at key slot `i + (Tk - Tq)` (so a decode step with a KV
//! cache is `Tq < Tk`) and sees key `j` iff `j <= slot` and both slots share a document.
//! Non-decreasing ids mean each query sees one contiguous key range
//! `[doc_start(slot), slot]`, which is all the kernel needs: it is computed once per
//! call as a per-slot "document start" table.
//!
//! Key decisions: the forward op returns one flat buffer `[O (B·Hq·Tq·D) | lse
//! (B·Hq·Tq)]` (a candle `CustomOp` has one output) and the public function narrows it
//! to the `O` prefix, a free and contiguous view; the backward reads `O` and the
//! log-sum-exp back from that saved output, so no `(Tq × Tk)` probability matrix
//! outlives the forward. The backward runs its kernel directly on
//! the saved tensors' storages and returns plain gradient tensors for q, k and v.

mod backward;
mod forward;
mod tile;

pub(crate) use tile::{exp_f32, Float};

use crate::ops::cpu::{slice, unsupported};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::Arc;

/// Additive score for a blocked (query, key) pair in the reference composition
/// (finite, so `0 · mask` never makes NaN).
const MASKED: f64 = -1e30;

/// Validated shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Batch rows.
    pub b: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads (`hq % hkv == 0`).
    pub hkv: usize,
    /// Queries per row.
    pub tq: usize,
    /// Keys per row (`tq <= tk`).
    pub tk: usize,
    /// Head dim.
    pub d: usize,
}

impl Dims {
    /// Key slot of query 0 (queries are the last `tq` slots).
    pub fn offset(&self) -> usize {
        self.tk - self.tq
    }
}

/// Checks the shapes of `q` (B, Hq, Tq, D), `k`/`v` (B, Hkv, Tk, D).
fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let (b, hq, tq, d) = q.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "attention: q must be (B, Hq, Tq, D), got {:?}",
            q.dims()
        ))
    })?;
    let (kb, hkv, tk, kd) = k.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "attention: k must be (B, Hkv, Tk, D), got {:?}",
            k.dims()
        ))
    })?;
    if v.dims() != k.dims() {
        candle_core::bail!(
            "attention: v {:?} must have k's shape {:?}",
            v.dims(),
            k.dims()
        );
    }
    if kb != b || kd != d {
        candle_core::bail!(
            "attention: q {:?} and k {:?} differ in batch or head dim",
            q.dims(),
            k.dims()
        );
    }
    if hkv == 0 || hq % hkv != 0 {
        candle_core::bail!(
            "attention: {hq} query heads are not a multiple of {hkv} key/value heads"
        );
    }
    if tq > tk {
        candle_core::bail!("attention: {tq} queries but only {tk} keys (need Tq <= Tk)");
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        candle_core::bail!(
            "attention: dtypes differ (q {:?}, k {:?}, v {:?})",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    Ok(Dims {
        b,
        hq,
        hkv,
        tq,
        tk,
        d,
    })
}

/// Per key slot, the first slot of its document: `(B·Tk)` row-major. Errors when
/// `segments` is not `(B, Tk)` or a row's ids decrease.
pub(crate) fn doc_starts(segments: Option<&Tensor>, b: usize, tk: usize) -> Result<Vec<usize>> {
    let Some(seg) = segments else {
        return Ok(vec![0; b * tk]);
    };
    if seg.dims() != [b, tk] {
        candle_core::bail!(
            "attention: segments {:?}, expected (B, Tk) = ({b}, {tk})",
            seg.dims()
        );
    }
    let rows: Vec<Vec<u32>> = match seg.dtype() {
        DType::U32 => seg.to_vec2()?,
        DType::I64 | DType::U8 => seg.to_dtype(DType::U32)?.to_vec2()?,
        d => candle_core::bail!("attention: segments must be u32 document ids, got {d:?}"),
    };
    let mut starts = Vec::with_capacity(b * tk);
    for (r, row) in rows.iter().enumerate() {
        for j in 0..tk {
            if j == 0 || row[j] != row[j - 1] {
                if j > 0 && row[j] < row[j - 1] {
                    candle_core::bail!(
                        "attention: segments row {r} decreases at slot {j} ({} -> {})",
                        row[j - 1],
                        row[j]
                    );
                }
                starts.push(j);
            } else {
                starts.push(starts[r * tk + j - 1]);
            }
        }
    }
    Ok(starts)
}

/// Causal self-attention with grouped-query heads and per-document masking.
///
/// `q` (B, Hq, Tq, D), `k`/`v` (B, Hkv, Tk, D), `Hq % Hkv == 0`, `Tq <= Tk`: query `i`
/// sits at key slot `i + (Tk - Tq)` (so decode with a KV cache works). `segments`:
/// (B, Tk) u32 document id per key slot, non-decreasing along a row; a query attends
/// key `j` iff `j <= its slot` and the segments are equal (queries take the segment of
/// their slot). `None` = one document per row. Left padding = give the pad slots their
/// own segment. Returns (B, Hq, Tq, D).
///
/// f32/f64 on the CPU run the flash-style kernel (gradients for q, k, v; none for
/// `segments`); other dtypes and devices use [`reference_attention`].
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<&Tensor>,
    softmax_scale: f64,
) -> Result<Tensor> {
    let dm = dims(q, k, v)?;
    if !q.device().is_cpu()
        || !matches!(q.dtype(), DType::F32 | DType::F64)
        || dm.tq == 0
        || dm.d == 0
    {
        return reference_attention(q, k, v, segments, softmax_scale);
    }
    let op = Attention {
        dm,
        starts: Arc::new(doc_starts(segments, dm.b, dm.tk)?),
        scale: softmax_scale,
    };
    let packed = q
        .contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?; // (B·Hq·Tq·(D + 1),)
    let n = dm.b * dm.hq * dm.tq * dm.d;
    packed.narrow(0, 0, n)?.reshape((dm.b, dm.hq, dm.tq, dm.d)) // (B, Hq, Tq, D), contiguous
}

/// The forward op `(q, k, v) → [O | lse]` (flat, B·Hq·Tq·(D + 1)); its `bwd` runs the
/// backward kernel.
struct Attention {
    dm: Dims,
    /// Document start of every key slot (B·Tk), shared with the backward.
    starts: Arc<Vec<usize>>,
    scale: f64,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "smelt-attention"
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
        let (dm, starts, scale) = (self.dm, self.starts.as_slice(), self.scale);
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::forward::<f32>(
                slice(s1, l1, name)?,
                slice(s2, l2, name)?,
                slice(s3, l3, name)?,
                starts,
                dm,
                scale,
            )),
            DType::F64 => CpuStorage::F64(forward::forward::<f64>(
                slice(s1, l1, name)?,
                slice(s2, l2, name)?,
                slice(s3, l3, name)?,
                starts,
                dm,
                scale,
            )),
            d => return Err(unsupported(d, name)),
        };
        Ok((out, Shape::from(dm.b * dm.hq * dm.tq * (dm.d + 1))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        packed: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?; // (B·Hq·Tq·(D + 1),); the lse part is ignored
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.grads::<f32>(q, k, v, packed, &grad)?,
            DType::F64 => self.grads::<f64>(q, k, v, packed, &grad)?,
            d => return Err(unsupported(d, self.name())),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl Attention {
    /// Runs the backward kernel on the CPU storages of the saved tensors.
    fn grads<T: tile::Float>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        packed: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let name = "smelt-attention-bwd";
        let (dq, dk, dv) = {
            let guards = [q, k, v, packed, grad].map(|t| t.storage_and_layout());
            let mut s: Vec<&[T]> = Vec::with_capacity(5);
            for (storage, layout) in &guards {
                match &**storage {
                    Storage::Cpu(cpu) => s.push(slice(cpu, layout, name)?),
                    _ => candle_core::bail!("{name}: tensors must be on the CPU"),
                }
            }
            let n = s[0].len(); // B·Hq·Tq·D
            backward::backward(&backward::Saved {
                q: s[0],
                k: s[1],
                v: s[2],
                o: &s[3][..n],
                lse: &s[3][n..],
                grad: &s[4][..n],
                starts: &self.starts,
                dm: self.dm,
                scale: T::from_f64(self.scale),
            })
        };
        let dev = q.device();
        Ok((
            Tensor::from_vec(dq, q.shape(), dev)?,
            Tensor::from_vec(dk, k.shape(), dev)?,
            Tensor::from_vec(dv, v.shape(), dev)?,
        ))
    }
}

/// The slow reference of [`fused_attention`] (same signature and semantics): repeats
/// the key/value heads, builds the `(B, 1, Tq, Tk)` additive mask and composes
/// matmul + softmax, so every step has candle's own backward.
pub fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<&Tensor>,
    softmax_scale: f64,
) -> Result<Tensor> {
    let dm = dims(q, k, v)?;
    let starts = doc_starts(segments, dm.b, dm.tk)?;
    let groups = dm.hq / dm.hkv;
    let k = repeat_kv(k, groups)?; // (B, Hq, Tk, D)
    let v = repeat_kv(v, groups)?; // (B, Hq, Tk, D)
    let scores = (q.contiguous()?.matmul(&k.t()?)? * softmax_scale)?; // (B, Hq, Tq, Tk)
    let mask = additive_mask(&starts, dm, segments.is_some())?.to_dtype(q.dtype())?; // (B|1, 1, Tq, Tk)
    let scores = scores.broadcast_add(&mask.to_device(q.device())?)?;
    let probs = super::reference::softmax_last_dim(&scores)?; // (B, Hq, Tq, Tk)
    probs.matmul(&v) // (B, Hq, Tq, D)
}

/// `(B, 1, Tq, Tk)` additive mask (0 = visible, [`MASKED`] = blocked) from the
/// document-start table; `(1, 1, Tq, Tk)` when there are no segments.
fn additive_mask(starts: &[usize], dm: Dims, per_row: bool) -> Result<Tensor> {
    let rows = if per_row { dm.b } else { 1 };
    let off = dm.offset();
    let mut mask = Vec::with_capacity(rows * dm.tq * dm.tk);
    for r in 0..rows {
        for i in 0..dm.tq {
            let slot = off + i;
            let lo = starts[r * dm.tk + slot];
            mask.extend((0..dm.tk).map(|j| if j >= lo && j <= slot { 0.0 } else { MASKED }));
        }
    }
    Tensor::from_vec(mask, (rows, 1, dm.tq, dm.tk), &candle_core::Device::Cpu)
}

/// Repeats each key/value head `groups` times: `(B, KV, T, D)` → `(B, KV·groups, T, D)`.
fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return x.contiguous();
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, groups, t, d))?
        .reshape((b, kv * groups, t, d))
}
