//! Scaling out: data parallelism across processes.
//!
//! - [`DistEnv`] reads rank / world size / local rank from torchrun's variables (also set
//!   by `smelt launch`) or SLURM's;
//! - [`Communicator`] is the set of collectives the training loop uses, with three
//!   backends: [`SingleProcess`] (identity), `NcclComm` (feature `nccl`: the production
//!   backend, one process per GPU) and [`TcpTestComm`] (**test infrastructure**: a loopback
//!   TCP hub so CI exercises the same loop with N CPU processes);
//! - [`all_reduce_grads`] reduces gradients in buckets;
//! - [`rank_seed`] derives the per-rank seeds of streams that must differ across ranks.
//!
//! The loop ([`crate::train::Trainer`]) joins the job itself when the environment says
//! there is more than one rank, per [`DistConfig`] (`[train.distributed]` in a recipe).

mod buckets;
mod comm;
mod env;
#[cfg(feature = "nccl")]
mod nccl;
mod star;
mod tcp_test;

pub use buckets::{all_reduce_grads, plan_buckets};
pub use comm::{Communicator, SingleProcess};
pub use env::{first_host, DistEnv, EnvSource, DEFAULT_MASTER_PORT};
#[cfg(feature = "nccl")]
pub use nccl::NcclComm;
pub use star::rendezvous_bytes;
pub use tcp_test::TcpTestComm;

use crate::error::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which communicator a multi-rank job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// NCCL when the model is on a CUDA device and the binary has the `nccl` feature;
    /// otherwise a multi-rank environment is an error.
    #[default]
    Auto,
    /// NCCL (feature `nccl`, CUDA device).
    Nccl,
    /// The loopback TCP test backend ([`TcpTestComm`]); for tests on CPU only.
    TcpTest,
}

/// `[train.distributed]`: how the loop joins a data-parallel job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// `auto` (default), `nccl`, or `tcp-test` (test infrastructure, CPU).
    pub backend: Backend,
    /// Gradient bucket size for the all-reduce, in MiB (default 25, as PyTorch DDP).
    pub bucket_mb: f64,
    /// Seconds to wait for the other ranks to join and for each collective (default 1800).
    pub timeout_s: u64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            backend: Backend::Auto,
            bucket_mb: 25.0,
            timeout_s: 1800,
        }
    }
}

impl DistConfig {
    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb > 0.0 && self.bucket_mb.is_finite()) {
            return Err(Error::config(
                "train config",
                format!(
                    "`distributed.bucket_mb`: must be positive, got {}",
                    self.bucket_mb
                ),
            ));
        }
        if self.timeout_s == 0 {
            return Err(Error::config(
                "train config",
                "`distributed.timeout_s`: must be at least 1",
            ));
        }
        Ok(())
    }

    /// The bucket size in bytes.
    pub fn bucket_bytes(&self) -> usize {
        (self.bucket_mb * 1024.0 * 1024.0) as usize
    }
}

/// Joins the job `env` describes with the configured backend; `None` for one process.
pub fn connect(
    env: &DistEnv,
    config: &DistConfig,
    device: &Device,
) -> Result<Option<Box<dyn Communicator>>> {
    if !env.is_distributed() {
        return Ok(None);
    }
    let timeout = Duration::from_secs(config.timeout_s);
    let backend = match (config.backend, device) {
        (Backend::Auto, Device::Cuda(_)) => Backend::Nccl,
        (Backend::Auto, _) => {
            return Err(Error::Invalid(format!(
                "rank {} of {}: data parallelism on {device:?} has no production backend \
                 (NCCL needs train.device = \"cuda\"); `train.distributed.backend = \"tcp-test\"` \
                 exists for tests only",
                env.rank, env.world_size
            )))
        }
        (b, _) => b,
    };
    match backend {
        Backend::TcpTest => Ok(Some(Box::new(TcpTestComm::connect(env, timeout)?))),
        Backend::Nccl => connect_nccl(env, device, timeout),
        Backend::Auto => unreachable!("resolved above"),
    }
}

#[cfg(feature = "nccl")]
fn connect_nccl(
    env: &DistEnv,
    device: &Device,
    timeout: Duration,
) -> Result<Option<Box<dyn Communicator>>> {
    Ok(Some(Box::new(NcclComm::connect(env, device, timeout)?)))
}

#[cfg(not(feature = "nccl"))]
fn connect_nccl(
    env: &DistEnv,
    _device: &Device,
    _timeout: Duration,
) -> Result<Option<Box<dyn Communicator>>> {
    Err(Error::Invalid(format!(
        "rank {} of {}: this smelt binary was built without the `nccl` feature \
         (cargo build --release -p smelt-cli --features cuda,nccl)",
        env.rank, env.world_size
    )))
}

/// The seed of a stream that must differ across ranks (data order of rank-local
/// sources, dropout, rollout sampling): `seed` itself on rank 0 — so a single-process
/// run is unchanged — and a decorrelated SplitMix64 mix of `seed` and the rank elsewhere.
/// Streams that must be *identical* on every rank (parameter init) use `seed` directly.
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        crate::rng::mix64(seed ^ crate::rng::mix64(rank as u64))
    }
}

/// The device a recipe's `train.device` names: `cpu`, `cuda` (this rank's GPU) or `cuda:N`.
/// Under `smelt launch --gpus-per-node`, `CUDA_VISIBLE_DEVICES` shows each rank one GPU,
/// so `cuda` is ordinal 0; otherwise (torchrun, srun without a GPU binding) it is the
/// local rank.
pub fn device_for(spec: &str, env: &DistEnv) -> Result<Device> {
    let spec = spec.trim();
    let bad = |m: String| Error::config("train config", format!("`device`: {m}"));
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
            if !visible.is_empty() && !visible.contains(',') {
                0
            } else {
                env.local_rank
            }
        }
        s => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| bad(format!("`{s}`: expected cuda:N with N a GPU index")))?,
            None => return Err(bad(format!("`{s}`: expected cpu, cuda or cuda:N"))),
        },
    };
    Device::new_cuda(ordinal).map_err(|e| {
        bad(format!(
            "cannot open CUDA device {ordinal} ({e}); was smelt built with --features cuda?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_seeds_keep_rank_zero_and_differ_elsewhere() {
        assert_eq!(rank_seed(1234, 0), 1234);
        let seeds: Vec<u64> = (0..8).map(|r| rank_seed(1234, r)).collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8, "{seeds:?}");
        assert_eq!(rank_seed(1234, 3), rank_seed(1234, 3));
        assert_ne!(rank_seed(1234, 3), rank_seed(1235, 3));
    }

    #[test]
    fn device_specs() {
        let env = DistEnv::single();
        assert!(matches!(device_for("cpu", &env).unwrap(), Device::Cpu));
        assert!(device_for("tpu", &env)
            .unwrap_err()
            .to_string()
            .contains("`device`"));
        assert!(device_for("cuda:x", &env).is_err());
    }
}
