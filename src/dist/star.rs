//! A TCP star between the ranks of a job: rank 0 listens at `MASTER_ADDR:MASTER_PORT`
//! and every other rank connects to it.
//!
//! Two users: the rendezvous that hands NCCL's unique id from rank 0 to the others
//! ([`rendezvous_bytes`]), and the test-only [`super::TcpTestComm`]. Messages are framed
//! as `op (u8) | count (u64) | payload`; a rank that disagrees about the collective (op
//! or length) is an error naming both, a rank that dies is an error (end of stream)
//! instead of a hang, and a silent one times out.

use super::env::DistEnv;
use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"SMELTDP1";

/// The open connections of one rank: rank 0 holds one stream per other rank (index
/// `r - 1`), every other rank one stream to rank 0.
pub(crate) struct Star {
    rank: usize,
    world_size: usize,
    streams: Vec<TcpStream>,
}

impl Star {
    /// Connects the star; waits up to `timeout` for every rank to arrive.
    pub(crate) fn connect(env: &DistEnv, timeout: Duration) -> Result<Star> {
        let streams = if env.world_size == 1 {
            vec![]
        } else if env.rank == 0 {
            accept_all(env, timeout)?
        } else {
            vec![connect_to_hub(env, timeout)?]
        };
        for s in &streams {
            s.set_read_timeout(Some(timeout)).map_err(io_err)?;
            s.set_nodelay(true).map_err(io_err)?;
        }
        Ok(Star {
            rank: env.rank,
            world_size: env.world_size,
            streams,
        })
    }

    /// This rank.
    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub(crate) fn world_size(&self) -> usize {
        self.world_size
    }

    /// Rank 0: receives one frame from every other rank, in rank order, checking that
    /// each is the same `op` with `len` payload bytes.
    pub(crate) fn gather(&self, op: u8, len: usize) -> Result<Vec<Vec<u8>>> {
        debug_assert_eq!(self.rank, 0);
        let mut out = Vec::with_capacity(self.streams.len());
        for (i, s) in self.streams.iter().enumerate() {
            let peer = i + 1;
            let (got_op, payload) = read_frame(s, peer)?;
            if got_op != op || payload.len() != len {
                return Err(Error::Invalid(format!(
                    "distributed: rank {peer} is in collective {} with {} bytes while rank 0 is in {} with {len} bytes (ranks out of step)",
                    op_name(got_op), payload.len(), op_name(op)
                )));
            }
            out.push(payload);
        }
        Ok(out)
    }

    /// Rank 0: sends `payload` to every other rank.
    pub(crate) fn scatter_same(&self, op: u8, payload: &[u8]) -> Result<()> {
        for (i, s) in self.streams.iter().enumerate() {
            write_frame(s, op, payload, i + 1)?;
        }
        Ok(())
    }

    /// Other ranks: sends one frame to rank 0.
    pub(crate) fn send_to_hub(&self, op: u8, payload: &[u8]) -> Result<()> {
        write_frame(&self.streams[0], op, payload, 0)
    }

    /// Other ranks: receives one frame from rank 0, checking op and length.
    pub(crate) fn recv_from_hub(&self, op: u8, len: usize) -> Result<Vec<u8>> {
        let (got_op, payload) = read_frame(&self.streams[0], 0)?;
        if got_op != op || payload.len() != len {
            return Err(Error::Invalid(format!(
                "distributed: rank 0 answered collective {} with {} bytes, rank {} expected {} with {len}",
                op_name(got_op),
                payload.len(),
                self.rank,
                op_name(op)
            )));
        }
        Ok(payload)
    }
}

/// Rank 0 sends `bytes` to every rank over a star at `MASTER_ADDR:MASTER_PORT`, which is
/// closed again; every rank returns rank 0's bytes (used for NCCL's unique id).
pub fn rendezvous_bytes(env: &DistEnv, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let star = Star::connect(env, timeout)?;
    const OP: u8 = 9;
    if env.rank == 0 {
        star.scatter_same(OP, bytes)?;
        Ok(bytes.to_vec())
    } else {
        star.recv_from_hub(OP, bytes.len())
    }
}

/// Names the collectives in error messages.
pub(crate) fn op_name(op: u8) -> &'static str {
    match op {
        1 => "all_reduce(f32)",
        2 => "all_reduce(f64)",
        3 => "broadcast(f32)",
        4 => "barrier",
        9 => "rendezvous",
        _ => "unknown",
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Invalid(format!("distributed: socket setup failed: {e}"))
}

fn accept_all(env: &DistEnv, timeout: Duration) -> Result<Vec<TcpStream>> {
    let addr = format!("0.0.0.0:{}", env.master_port);
    let listener = TcpListener::bind(&addr).map_err(|e| {
        Error::Invalid(format!(
            "distributed: rank 0 cannot listen on {addr} (MASTER_PORT): {e}"
        ))
    })?;
    listener.set_nonblocking(true).map_err(io_err)?;
    let deadline = Instant::now() + timeout;
    let mut slots: Vec<Option<TcpStream>> = (1..env.world_size).map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((s, from)) => {
                s.set_nonblocking(false).map_err(io_err)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(io_err)?;
                let mut hello = [0u8; 24];
                if (&s).read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
                    continue; // not one of ours (a port scanner, a stale client): ignore it
                }
                let rank = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes")) as usize;
                let world = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes")) as usize;
                if world != env.world_size {
                    return Err(Error::Invalid(format!(
                        "distributed: rank {rank} (from {from}) says WORLD_SIZE={world}, rank 0 has {}",
                        env.world_size
                    )));
                }
                if rank == 0 || rank >= env.world_size || slots[rank - 1].is_some() {
                    return Err(Error::Invalid(format!(
                        "distributed: a second rank {rank} (from {from}) joined; every process needs its own RANK"
                    )));
                }
                (&s).write_all(&[1]).map_err(io_err)?;
                slots[rank - 1] = Some(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .map(|(i, _)| i + 1)
                        .collect();
                    return Err(Error::Invalid(format!(
                        "distributed: ranks {missing:?} did not join rank 0 at {addr} within {}s",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(slots.into_iter().map(|s| s.expect("all joined")).collect())
}

fn connect_to_hub(env: &DistEnv, timeout: Duration) -> Result<TcpStream> {
    let target = format!("{}:{}", env.master_addr, env.master_port);
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = target
            .to_socket_addrs()
            .map_err(|e| {
                Error::Invalid(format!(
                    "distributed: cannot resolve MASTER_ADDR:MASTER_PORT `{target}`: {e}"
                ))
            })?
            .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
        if let Some(s) = attempt {
            let mut hello = Vec::with_capacity(24);
            hello.extend_from_slice(MAGIC);
            hello.extend_from_slice(&(env.rank as u64).to_le_bytes());
            hello.extend_from_slice(&(env.world_size as u64).to_le_bytes());
            s.set_read_timeout(Some(timeout)).map_err(io_err)?;
            let mut ok = [0u8; 1];
            if (&s).write_all(&hello).is_ok() && (&s).read_exact(&mut ok).is_ok() && ok[0] == 1 {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "distributed: rank {} could not reach rank 0 at {target} within {}s",
                env.rank,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_frame(mut s: &TcpStream, op: u8, payload: &[u8], peer: usize) -> Result<()> {
    let mut head = [0u8; 9];
    head[0] = op;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    s.write_all(&head)
        .and_then(|_| s.write_all(payload))
        .map_err(|e| peer_lost(peer, op, e))
}

fn read_frame(mut s: &TcpStream, peer: usize) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).map_err(|e| peer_lost(peer, 0, e))?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .map_err(|e| peer_lost(peer, head[0], e))?;
    Ok((head[0], payload))
}

fn peer_lost(peer: usize, op: u8, e: std::io::Error) -> Error {
    let what = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timed out waiting for".to_string(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            "lost the connection to".to_string()
        }
        _ => format!("socket error ({e}) with"),
    };
    Error::Invalid(format!(
        "distributed: {what} rank {peer} during {} (did it exit?)",
        op_name(op)
    ))
}
