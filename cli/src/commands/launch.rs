//! `smelt launch --nproc N -- <smelt command>`: start N local ranks of a data-parallel job.
//!
//! Each child is this same binary running the given command with torchrun's variables
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`)
//! and, with `--gpus-per-node`, `CUDA_VISIBLE_DEVICES` = its local rank (one GPU each).
//! Output lines are prefixed with `[rank r]`. SIGINT / SIGTERM are forwarded. When a rank
//! exits non-zero (or is killed), the others are stopped (SIGTERM, then SIGKILL after a
//! grace period) and `smelt launch` exits non-zero naming that rank, so a dead rank never
//! leaves the job hanging. All children share one process group, which is what gets
//! signalled, and each child is told to die with the launcher (`PR_SET_PDEATHSIG`), so no
//! process outlives the job.
//!
//! Under SLURM no launcher is needed: `srun --ntasks-per-node=<gpus> smelt pretrain ...`
//! starts one task per GPU and each reads `SLURM_PROCID` / `SLURM_NTASKS` itself.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Arguments of `smelt launch`.
#[derive(clap::Args, Debug)]
pub struct LaunchArgs {
    /// Ranks (processes) to start on this node.
    #[arg(long)]
    pub nproc: usize,
    /// Rendezvous port rank 0 listens on (`MASTER_PORT`).
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// Rendezvous host (`MASTER_ADDR`).
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// GPUs on this node: give rank r `CUDA_VISIBLE_DEVICES=r` (needs nproc <= this).
    #[arg(long)]
    pub gpus_per_node: Option<usize>,
    /// Seconds the other ranks get to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 5)]
    pub grace_s: u64,
    /// The smelt command each rank runs, after `--` (e.g. `-- pretrain --config r.toml`).
    #[arg(last = true, required = true, value_name = "SMELT ARGS")]
    pub command: Vec<String>,
}

/// The signal received by the launcher (0 = none yet).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Starts the ranks and supervises them until all exit (see the module docs).
pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if let Some(g) = args.gpus_per_node {
        if args.nproc > g {
            bail!(
                "--nproc {} is more than --gpus-per-node {g}: each rank needs its own GPU",
                args.nproc
            );
        }
    }
    if args.command.first().is_some_and(|c| c == "launch") {
        bail!("`smelt launch -- launch ...` would nest launchers; give the training command");
    }
    let exe = std::env::current_exe().context("locating the smelt binary")?;
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut children: Vec<Child> = Vec::with_capacity(args.nproc);
    let mut pgid: i32 = 0;
    let mut pumps = Vec::new();
    for rank in 0..args.nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(pgid); // 0: the first child leads a new group; the rest join it
        if args.gpus_per_node.is_some() {
            cmd.env("CUDA_VISIBLE_DEVICES", rank.to_string());
        }
        unsafe {
            cmd.pre_exec(|| {
                // die with the launcher, even if it is SIGKILLed
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(pgid, &mut children, args.grace_s);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        };
        if rank == 0 {
            pgid = child.id() as i32;
        }
        eprintln!("smelt launch: rank {rank} pid {}", child.id());
        let prefix = format!("[rank {rank}] ");
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        pumps.push(pump(out, prefix.clone(), false));
        pumps.push(pump(err, prefix, true));
        children.push(child);
    }

    let mut statuses: Vec<Option<ExitStatus>> = vec![None; args.nproc];
    let mut forwarded = 0;
    let failure = loop {
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 && sig != forwarded {
            eprintln!("smelt launch: forwarding signal {sig} to every rank");
            unsafe { libc::killpg(pgid, sig) };
            forwarded = sig;
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if statuses[rank].is_none() {
                statuses[rank] = child.try_wait().context("waiting for a rank")?;
            }
        }
        // A rank killed by a signal is the cause; ranks that then lost it exit with errors.
        let failed = || {
            statuses
                .iter()
                .enumerate()
                .filter_map(|(r, s)| s.filter(|s| !s.success()).map(|s| (r, s)))
        };
        if let Some(first) = failed()
            .find(|(_, s)| s.signal().is_some())
            .or(failed().next())
        {
            break Some(first);
        }
        if statuses.iter().all(Option::is_some) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some((rank, status)) = failure {
        if forwarded == 0 {
            eprintln!(
                "smelt launch: rank {rank} (pid {}) {}; stopping the other ranks",
                children[rank].id(),
                describe(status)
            );
        }
        stop_all(pgid, &mut children, args.grace_s);
        for p in pumps {
            let _ = p.join();
        }
        bail!(
            "rank {rank} of {} {}{}",
            args.nproc,
            describe(status),
            if forwarded != 0 {
                format!(" after signal {forwarded}")
            } else {
                String::new()
            }
        );
    }
    for p in pumps {
        let _ = p.join();
    }
    if forwarded != 0 {
        bail!("stopped by signal {forwarded}");
    }
    Ok(())
}

/// "exited with status 3" / "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// SIGTERM to the group, SIGKILL after `grace_s`, then reaps every child.
fn stop_all(pgid: i32, children: &mut [Child], grace_s: u64) {
    if pgid <= 0 {
        return;
    }
    unsafe { libc::killpg(pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(grace_s);
    while Instant::now() < deadline
        && children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // the whole group, including anything a rank started
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Copies `src` line by line to our stdout or stderr with `prefix`.
fn pump(
    src: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    let mut buf = Vec::with_capacity(prefix.len() + text.len() + 1);
                    buf.extend_from_slice(prefix.as_bytes());
                    buf.extend_from_slice(text.as_bytes());
                    buf.push(b'\n');
                    let _ = if to_stderr {
                        std::io::stderr().lock().write_all(&buf)
                    } else {
                        std::io::stdout().lock().write_all(&buf)
                    };
                }
            }
        }
    })
}
