//! `NcclComm`: the production data-parallel backend, NCCL through cudarc (re-exported
//! by candle), one process per GPU.
//!
//! Rank 0 creates NCCL's unique id and hands it to the others over the TCP rendezvous
//! at `MASTER_ADDR:MASTER_PORT` ([`super::star::rendezvous_bytes`]); every rank then
//! joins the communicator on its candle device's own CUDA stream, so collectives are
//! ordered with candle's kernels without extra synchronisation. Tensors are reduced in
//! their own dtype (f32, bf16, f16, f64) directly in device memory.

use super::comm::{check_root, Communicator};
use super::env::DistEnv;
use super::star::rendezvous_bytes;
use crate::error::{Error, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::ffi::c_char;
use std::time::Duration;

/// NCCL communicator bound to one GPU (see the module docs).
pub struct NcclComm {
    comm: Comm,
    device: CudaDevice,
    local_rank: usize,
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Invalid(format!("distributed (nccl): {what} failed: {e:?}"))
}

impl NcclComm {
    /// Joins the job described by `env` on `device` (which must be a CUDA device).
    pub fn connect(env: &DistEnv, device: &Device, timeout: Duration) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::Invalid(
                "distributed backend `nccl` needs a CUDA device: set train.device = \"cuda\""
                    .into(),
            ));
        };
        let mine: Vec<u8> = if env.rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            vec![0u8; 128]
        };
        let got = rendezvous_bytes(env, &mine, timeout)?;
        let mut internal = [0 as c_char; 128];
        for (d, s) in internal.iter_mut().zip(got) {
            *d = s as c_char;
        }
        let comm = Comm::from_rank(
            dev.cuda_stream(),
            env.rank,
            env.world_size,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(NcclComm {
            comm,
            device: dev.clone(),
            local_rank: env.local_rank,
        })
    }

    fn host_all_reduce<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: NcclType + candle_core::cuda_backend::cudarc::driver::DeviceRepr + Copy,
    {
        let stream = self.device.cuda_stream();
        let mut dev_buf: CudaSlice<T> = stream.clone_htod(&*buf).w()?;
        self.comm
            .all_reduce_in_place(&mut dev_buf, &ReduceOp::Sum)
            .map_err(|e| nccl_err("ncclAllReduce", e))?;
        let host = stream.clone_dtoh(&dev_buf).w()?;
        stream.synchronize().w()?;
        buf.copy_from_slice(&host);
        Ok(())
    }
}

/// The candle op: a collective over a contiguous CUDA tensor into a fresh buffer.
struct Collective<'a> {
    comm: &'a Comm,
    broadcast_root: Option<usize>,
}

impl Collective<'_> {
    fn run<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: NcclType
            + candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        let (start, end) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("nccl collective on a non-contiguous tensor".into())
        })?;
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let dev = s.device().clone();
        let mut dst = unsafe { dev.alloc::<T>(end - start) }?;
        let res = match self.broadcast_root {
            None => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Some(root) => self.comm.broadcast(Some(&src), &mut dst, root as i32),
        };
        res.map_err(|e| candle_core::Error::Msg(format!("nccl collective failed: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the nccl backend reduces CUDA tensors only (train.device = \"cuda\")")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.run::<f32>(s, l),
            DType::BF16 => self.run::<half::bf16>(s, l),
            DType::F16 => self.run::<half::f16>(s, l),
            DType::F64 => self.run::<f64>(s, l),
            other => candle_core::bail!("nccl collective: unsupported dtype {other:?}"),
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host_all_reduce(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host_all_reduce(buf)
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world_size())?;
        let t = Tensor::from_slice(buf, buf.len(), &Device::Cuda(self.device.clone()))?;
        let out = self.broadcast_tensor(&t, root)?.to_vec1::<f32>()?;
        buf.copy_from_slice(&out);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let mut one = [0f32];
        self.host_all_reduce(&mut one)
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let op = Collective {
            comm: &self.comm,
            broadcast_root: None,
        };
        Ok(t.contiguous()?.apply_op1_no_bwd(&op)?)
    }
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.world_size())?;
        let op = Collective {
            comm: &self.comm,
            broadcast_root: Some(root),
        };
        Ok(t.contiguous()?.apply_op1_no_bwd(&op)?)
    }
}
