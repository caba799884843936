//! `TcpTestComm`: **test infrastructure, not a production backend.** A loopback TCP
//! all-reduce through rank 0 as a hub, so N processes on a CPU (CI has no GPU) exercise
//! the data-parallel loop through the same [`Communicator`] trait NCCL implements.
//!
//! Rank 0 sums the buffers in rank order (rank 0 + rank 1 + ...) and sends the result
//! back, so every rank holds bit-identical results. Bandwidth is O(world × size) on
//! the hub: fine for tiny test models, never for real training (use NCCL there).

use super::comm::{check_root, Communicator};
use super::env::DistEnv;
use super::star::Star;
use crate::error::Result;
use std::time::Duration;

const OP_SUM_F32: u8 = 1;
const OP_SUM_F64: u8 = 2;
const OP_BROADCAST_F32: u8 = 3;
const OP_BARRIER: u8 = 4;

/// The test-only loopback TCP communicator (see the module docs).
pub struct TcpTestComm {
    star: Star,
    local_rank: usize,
}

impl TcpTestComm {
    /// Joins the job described by `env` (rank 0 listens at `MASTER_ADDR:MASTER_PORT`);
    /// waits up to `timeout` for the others and for each collective.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<Self> {
        Ok(TcpTestComm {
            star: Star::connect(env, timeout)?,
            local_rank: env.local_rank,
        })
    }

    /// The shared hub-and-spoke reduction over fixed-width little-endian elements.
    fn reduce<const W: usize>(
        &self,
        op: u8,
        bytes: &mut [u8],
        add: impl Fn(&mut [u8], &[u8]),
    ) -> Result<()> {
        if self.star.world_size() == 1 {
            return Ok(());
        }
        if self.star.rank() == 0 {
            for other in self.star.gather(op, bytes.len())? {
                for (a, b) in bytes.chunks_exact_mut(W).zip(other.chunks_exact(W)) {
                    add(a, b);
                }
            }
            self.star.scatter_same(op, bytes)
        } else {
            self.star.send_to_hub(op, bytes)?;
            bytes.copy_from_slice(&self.star.recv_from_hub(op, bytes.len())?);
            Ok(())
        }
    }
}

impl Communicator for TcpTestComm {
    fn rank(&self) -> usize {
        self.star.rank()
    }
    fn world_size(&self) -> usize {
        self.star.world_size()
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn backend(&self) -> &'static str {
        "tcp-test"
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let mut bytes: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.reduce::<4>(OP_SUM_F32, &mut bytes, |a, b| {
            let s = f32::from_le_bytes(a.try_into().expect("4"))
                + f32::from_le_bytes(b.try_into().expect("4"));
            a.copy_from_slice(&s.to_le_bytes());
        })?;
        for (x, c) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes(c.try_into().expect("4"));
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let mut bytes: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.reduce::<8>(OP_SUM_F64, &mut bytes, |a, b| {
            let s = f64::from_le_bytes(a.try_into().expect("8"))
                + f64::from_le_bytes(b.try_into().expect("8"));
            a.copy_from_slice(&s.to_le_bytes());
        })?;
        for (x, c) in buf.iter_mut().zip(bytes.chunks_exact(8)) {
            *x = f64::from_le_bytes(c.try_into().expect("8"));
        }
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world_size())?;
        if self.world_size() == 1 {
            return Ok(());
        }
        // Every rank sends its buffer to the hub, which answers everyone with root's.
        let mine: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let chosen = if self.rank() == 0 {
            let others = self.star.gather(OP_BROADCAST_F32, mine.len())?;
            let chosen = if root == 0 {
                mine
            } else {
                others.into_iter().nth(root - 1).expect("root checked")
            };
            self.star.scatter_same(OP_BROADCAST_F32, &chosen)?;
            chosen
        } else {
            self.star.send_to_hub(OP_BROADCAST_F32, &mine)?;
            self.star.recv_from_hub(OP_BROADCAST_F32, mine.len())?
        };
        for (x, c) in buf.iter_mut().zip(chosen.chunks_exact(4)) {
            *x = f32::from_le_bytes(c.try_into().expect("4"));
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.reduce::<1>(OP_BARRIER, &mut [], |_, _| {})
    }
}
