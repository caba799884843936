//! What the loop does differently under data parallelism, kept out of the loop body.
//!
//! Sharding: every rank builds the same [`BatchSource`] and draws the same
//! `grad_accumulation_steps × world_size` micro-batches per step, keeping those whose
//! index is `rank (mod world_size)`. The cursor is the same on every rank, so a resume
//! restores every rank with the one `data_cursor.json`, and N ranks × A accumulation
//! see exactly the micro-batches of 1 rank × N·A.
//!
//! Normalisation: the loop divides each micro-batch's summed loss by the loss units of
//! the whole step; here the units are summed over ranks *before* dividing, and the
//! gradients are then summed (not averaged) over ranks, which makes the update equal to
//! the single-process one up to float summation order.

use super::algorithm::{BatchSource, Metrics};
use crate::dist::Communicator;
use crate::error::{Error, Result};
use crate::model::Model;

/// This rank's micro-batches of one optimizer step, and how many the whole job drew.
pub(crate) struct Shard<B> {
    /// The micro-batches this rank trains on.
    pub local: Vec<B>,
    /// Micro-batches drawn over all ranks (fewer than asked when the data ended).
    pub global_count: usize,
}

/// Draws `accumulation × world` micro-batches and keeps this rank's share; from a
/// [`BatchSource::per_rank`] source, draws `accumulation` and agrees with the other
/// ranks on whether the data ended (the step needs at least one batch on every rank).
pub(crate) fn draw_shard<B>(
    data: &mut dyn BatchSource<B>,
    accumulation: usize,
    comm: Option<&dyn Communicator>,
) -> Result<Shard<B>> {
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    if let Some(comm) = comm.filter(|_| data.per_rank()) {
        let mut local = Vec::with_capacity(accumulation);
        while local.len() < accumulation {
            match data.next_batch()? {
                Some(b) => local.push(b),
                None => break,
            }
        }
        let mut counts = [local.len() as f64, f64::from(u8::from(local.is_empty()))];
        comm.all_reduce_sum_f64(&mut counts)?;
        let global_count = if counts[1] > 0.0 {
            0
        } else {
            counts[0] as usize
        };
        return Ok(Shard {
            local,
            global_count,
        });
    }
    let mut local = Vec::with_capacity(accumulation);
    let mut global_count = 0;
    for i in 0..accumulation * world {
        match data.next_batch()? {
            Some(b) => {
                if i % world == rank {
                    local.push(b);
                }
                global_count += 1;
            }
            None => break,
        }
    }
    Ok(Shard {
        local,
        global_count,
    })
}

/// Sums the step's metric sums and weights over ranks (every rank must report the
/// same metric names; a difference is an error naming this rank's).
pub(crate) fn reduce_metrics(comm: &dyn Communicator, metrics: &Metrics) -> Result<Metrics> {
    let names: Vec<&str> = metrics.iter().map(|(k, _, _)| k).collect();
    // Same names on every rank? Compare a small exact fingerprint of the sorted names.
    let fingerprint = names
        .iter()
        .fold(0u64, |h, k| crate::rng::mix64(h ^ fnv1a(k)))
        % (1 << 40);
    let mut check = vec![fingerprint as f64, 1.0];
    comm.all_reduce_sum_f64(&mut check)?;
    if check[0] != fingerprint as f64 * check[1] {
        return Err(Error::Invalid(format!(
            "distributed: rank {} reports metrics {names:?}, which differ from another rank's",
            comm.rank()
        )));
    }
    let mut buf: Vec<f64> = metrics.iter().flat_map(|(_, s, w)| [s, w]).collect();
    comm.all_reduce_sum_f64(&mut buf)?;
    let mut out = Metrics::new();
    for (k, sw) in names.iter().zip(buf.chunks_exact(2)) {
        out.add(k, sw[0], sw[1]);
    }
    Ok(out)
}

/// A stable hash of a metric name (FNV-1a), independent of the process.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Makes every rank's parameters rank 0's (a fresh run: whatever each rank's init did,
/// all ranks start from the same weights).
pub(crate) fn broadcast_parameters(comm: &dyn Communicator, model: &Model) -> Result<()> {
    for (_, var) in model.vars() {
        let t = comm.broadcast_tensor(var.as_tensor(), 0)?;
        var.set(&t)?;
    }
    Ok(())
}

/// The file a rank other than 0 keeps its [`BatchSource::per_rank`] cursor in, inside
/// the checkpoint rank 0 wrote (rank 0's is `data_cursor.json`).
pub(crate) fn rank_cursor_path(checkpoint: &std::path::Path, rank: usize) -> std::path::PathBuf {
    checkpoint.join(format!("data_cursor.rank{rank}.json"))
}

/// Writes this rank's cursor beside rank 0's checkpoint files (atomically).
pub(crate) fn save_rank_cursor(
    checkpoint: &std::path::Path,
    rank: usize,
    cursor: &serde_json::Value,
) -> Result<()> {
    let path = rank_cursor_path(checkpoint, rank);
    let text = serde_json::to_vec_pretty(cursor).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::checkpoint::write_bytes_atomically(&path, &text)
}

/// This rank's saved cursor, if the checkpoint has one.
pub(crate) fn load_rank_cursor(
    checkpoint: &std::path::Path,
    rank: usize,
) -> Result<Option<serde_json::Value>> {
    let path = rank_cursor_path(checkpoint, rank);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::checkpoint(&path, format!("not valid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Refuses to resume a checkpoint written by a job of another size.
pub(crate) fn check_world_size(
    saved: u64,
    world: usize,
    checkpoint: &std::path::Path,
) -> Result<()> {
    if saved != world as u64 {
        return Err(Error::checkpoint(
            checkpoint.join("trainer_state.json"),
            format!(
                "written by a data-parallel job of world size {saved}, but this job has world size {world}; \
                 resume with {saved} ranks (the data cursor is not resharded)"
            ),
        ));
    }
    Ok(())
}
