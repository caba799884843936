//! `DistEnv`: which rank this process is, read from the launcher's environment.
//!
//! Two conventions are understood, torchrun's first (it also runs inside SLURM jobs):
//! - torchrun / `smelt launch`: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
//! - SLURM (`srun smelt pretrain ...`, one task per GPU): `SLURM_PROCID`, `SLURM_NTASKS`,
//!   `SLURM_LOCALID`; the rendezvous host is `MASTER_ADDR` or the first host of
//!   `SLURM_JOB_NODELIST` / `SLURM_NODELIST`, the port `MASTER_PORT` or one derived from
//!   `SLURM_JOB_ID` (so every task of a job agrees without being told).
//!
//! Neither present means a single process. Inconsistent values are errors naming the variable.

use crate::error::{Error, Result};

/// Default rendezvous port (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Where rank, world size and the rendezvous address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// No launcher variables: one process.
    Single,
    /// `RANK` / `WORLD_SIZE` (torchrun, `smelt launch`).
    Torchrun,
    /// `SLURM_PROCID` / `SLURM_NTASKS`.
    Slurm,
}

/// This process's place in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank within this node (selects the GPU).
    pub local_rank: usize,
    /// Host of rank 0's rendezvous listener.
    pub master_addr: String,
    /// Port of rank 0's rendezvous listener.
    pub master_port: u16,
    /// Which convention the values came from.
    pub source: EnvSource,
}

impl DistEnv {
    /// One process: rank 0 of 1.
    pub fn single() -> Self {
        DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            source: EnvSource::Single,
        }
    }

    /// Reads the process environment (see the module docs).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (the environment, or a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let rank = required(&get, "RANK", "WORLD_SIZE")?;
            let world_size = required(&get, "WORLD_SIZE", "RANK")?;
            let local_rank = optional(&get, "LOCAL_RANK")?.unwrap_or(rank);
            let master_port = port(&get, "MASTER_PORT")?.unwrap_or(DEFAULT_MASTER_PORT);
            DistEnv {
                rank,
                world_size,
                local_rank,
                master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port,
                source: EnvSource::Torchrun,
            }
        } else if get("SLURM_PROCID").is_some() {
            let rank = required(&get, "SLURM_PROCID", "SLURM_NTASKS")?;
            let world_size = required(&get, "SLURM_NTASKS", "SLURM_PROCID")?;
            let local_rank = optional(&get, "SLURM_LOCALID")?.unwrap_or(0);
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => match get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")) {
                    Some(list) => first_host(&list).map_err(|m| {
                        Error::config("SLURM_JOB_NODELIST", format!("`{list}`: {m}"))
                    })?,
                    None if world_size == 1 => "127.0.0.1".into(),
                    None => {
                        return Err(Error::config(
                            "SLURM_NODELIST",
                            "not set, and no MASTER_ADDR: cannot find rank 0's host",
                        ))
                    }
                },
            };
            let master_port = match port(&get, "MASTER_PORT")? {
                Some(p) => p,
                None => match optional(&get, "SLURM_JOB_ID")? {
                    // a per-job port in 20000..40000 so concurrent jobs on a node rarely collide
                    Some(job) => 20000 + (job % 20000) as u16,
                    None => DEFAULT_MASTER_PORT,
                },
            };
            DistEnv {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
                source: EnvSource::Slurm,
            }
        } else {
            return Ok(Self::single());
        };
        env.validate()?;
        Ok(env)
    }

    /// Whether more than one rank takes part.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    fn validate(&self) -> Result<()> {
        let (rank_var, world_var, local_var) = match self.source {
            EnvSource::Slurm => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
            _ => ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        };
        if self.world_size == 0 {
            return Err(Error::config(world_var, "must be at least 1, got 0"));
        }
        if self.rank >= self.world_size {
            return Err(Error::config(
                rank_var,
                format!(
                    "rank {} is not below {world_var}={}",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.local_rank >= self.world_size {
            return Err(Error::config(
                local_var,
                format!(
                    "local rank {} is not below {world_var}={}",
                    self.local_rank, self.world_size
                ),
            ));
        }
        if self.master_port == 0 && self.world_size > 1 {
            return Err(Error::config("MASTER_PORT", "must not be 0"));
        }
        Ok(())
    }
}

fn parse(var: &str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| Error::config(var, format!("`{value}` is not a non-negative integer")))
}

fn optional(get: &impl Fn(&str) -> Option<String>, var: &str) -> Result<Option<usize>> {
    get(var).map(|v| parse(var, &v)).transpose()
}

fn required(get: &impl Fn(&str) -> Option<String>, var: &str, because: &str) -> Result<usize> {
    match get(var) {
        Some(v) => parse(var, &v),
        None => Err(Error::config(
            var,
            format!("not set, but {because} is: set both (or neither, for one process)"),
        )),
    }
}

fn port(get: &impl Fn(&str) -> Option<String>, var: &str) -> Result<Option<u16>> {
    match get(var) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .map(Some)
            .map_err(|_| Error::config(var, format!("`{v}` is not a TCP port (0-65535)"))),
    }
}

/// The first host of a SLURM node list: `gpu[003-007,012],cpu01` → `gpu003`.
pub fn first_host(list: &str) -> std::result::Result<String, String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if prefix.is_empty() {
        return Err("empty node list".into());
    }
    if list[end..].starts_with('[') {
        let close = list[end..]
            .find(']')
            .ok_or_else(|| "unclosed `[`".to_string())?;
        let inner = &list[end + 1..end + close];
        let first = inner.split([',', '-']).next().unwrap_or("");
        if first.is_empty() {
            return Err("empty range in `[...]`".into());
        }
        return Ok(format!("{prefix}{first}"));
    }
    Ok(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<DistEnv> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_one_process() {
        let e = env(&[]).unwrap();
        assert_eq!((e.rank, e.world_size, e.source), (0, 1, EnvSource::Single));
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (3, 8, 1));
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node7", 1234));
        assert_eq!(e.source, EnvSource::Torchrun);
    }

    #[test]
    fn slurm_variables_and_nodelist() {
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "5"),
            ("SLURM_JOB_NODELIST", "gpu[012-013,020],login1"),
            ("SLURM_JOB_ID", "4242"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (5, 16, 5));
        assert_eq!(e.master_addr, "gpu012");
        assert_eq!(e.master_port, 20000 + 4242);
        assert_eq!(first_host("a1,b2").unwrap(), "a1");
        assert!(first_host("gpu[01").is_err());
    }

    #[test]
    fn inconsistent_values_name_the_variable() {
        let msg = |pairs: &[(&str, &str)]| env(pairs).unwrap_err().to_string();
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK"));
        assert!(msg(&[("RANK", "0")]).contains("WORLD_SIZE"));
        assert!(msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("`x`"));
        assert!(
            msg(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "5")]).contains("LOCAL_RANK")
        );
        assert!(msg(&[("SLURM_PROCID", "0")]).contains("SLURM_NTASKS"));
        assert!(
            msg(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")])
                .contains("MASTER_PORT")
        );
    }
}
