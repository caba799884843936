//! The `Communicator` trait: the collectives data parallelism needs, over host buffers
//! and candle tensors, and the single-process backend.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// Collective operations across the ranks of a data-parallel job. Every rank must call
/// the same collectives in the same order with the same lengths.
pub trait Communicator {
    /// This process's global rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Rank within this node.
    fn local_rank(&self) -> usize;
    /// Backend name for logs (`single`, `nccl`, `tcp-test`).
    fn backend(&self) -> &'static str;

    /// In place: every rank's `buf` becomes the element-wise sum over ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// In place, in f64 (counts and loss sums, kept exact).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// In place: every rank's `buf` becomes rank `root`'s.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// In place: the element-wise mean over ranks.
    fn all_reduce_mean_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum_f32(buf)?;
        let n = self.world_size() as f32;
        buf.iter_mut().for_each(|x| *x /= n);
        Ok(())
    }

    /// The element-wise sum of `t` over ranks, same shape, dtype and device. The default
    /// goes through host memory in f32; device backends (NCCL) override it.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum_f32(&mut host)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    /// The element-wise mean of `t` over ranks.
    fn all_reduce_mean_tensor(&self, t: &Tensor) -> Result<Tensor> {
        Ok((self.all_reduce_sum_tensor(t)? / self.world_size() as f64)?)
    }

    /// Rank `root`'s `t` on every rank (same shape and dtype on every rank).
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.broadcast_f32(&mut host, root)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, 1)?;
        Ok(t.clone())
    }
}

/// Errors unless `root` is a rank of a `world_size` job.
pub(crate) fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root >= world_size {
        return Err(Error::Invalid(format!(
            "distributed: broadcast root {root} is not a rank of a {world_size}-rank job"
        )));
    }
    Ok(())
}
