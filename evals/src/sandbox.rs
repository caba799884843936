//! The code-execution sandbox for `code` tasks: one `python3` child per program.
//!
//! What it enforces (each a best effort of the OS, none a security boundary against
//! a determined attacker — run untrusted models' code in a VM or container too):
//! - a wall-clock timeout, after which the child's whole process group is killed;
//! - `RLIMIT_CPU` (timeout + 1 s), `RLIMIT_AS` (address space, default 1 GiB),
//!   `RLIMIT_FSIZE` (default 1 MiB per written file), `RLIMIT_CORE` = 0, set in
//!   `pre_exec` between fork and exec;
//! - an empty temporary working directory, removed afterwards;
//! - no inherited environment (`env_clear`, Python's isolated mode `-I`);
//! - stdout/stderr read through pipes and capped (default 64 KiB kept, the rest is
//!   drained and dropped), so a program that floods output cannot fill memory;
//! - no network where the OS allows: a new network namespace (`unshare(CLONE_NEWNET)`,
//!   which needs CAP_SYS_ADMIN, else tried inside a new user namespace); when running
//!   as root the child also drops to `nobody` (65534) so it cannot read the parent's
//!   `/proc/<pid>/environ`. [`SandboxReport::network_isolated`] says what was achieved.
//!
//! Key decision: a sample that hangs, crashes, or floods output *fails that sample*
//! ([`Outcome`]) and never fails the run; only failing to start python at all is an error.

use crate::error::{EvalError, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Limits of one sandboxed run.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Address-space limit in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file the program may write, in bytes (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Bytes of stdout and of stderr kept each.
    pub output_bytes: usize,
    /// The interpreter (default `python3` from the parent's `PATH`).
    pub python: String,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            timeout: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            file_bytes: 1 << 20,
            output_bytes: 64 << 10,
            python: "python3".into(),
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0: the tests passed.
    Passed,
    /// Non-zero exit (a failed assertion, an exception, an rlimit signal).
    Failed,
    /// Killed at the wall-clock timeout.
    TimedOut,
}

/// The result of one sandboxed run.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Captured stdout (capped).
    pub stdout: String,
    /// Captured stderr (capped).
    pub stderr: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Whether the child got its own (empty) network namespace.
    pub network_isolated: bool,
}

/// Runs `program` (Python source) in the sandbox.
pub fn run_python(program: &str, limits: &SandboxLimits) -> Result<SandboxReport> {
    let dir = tempfile::Builder::new()
        .prefix("smelt-sandbox-")
        .tempdir()
        .map_err(|e| EvalError::io(std::env::temp_dir(), e))?;
    let script = dir.path().join("program.py");
    std::fs::write(&script, program).map_err(|e| EvalError::io(&script, e))?;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).map_err(|e| EvalError::io(&work, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The child may run as `nobody`: it must read the script and write in `work`.
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644));
        let _ = std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777));
    }
    let python = resolve_python(&limits.python);
    let cpu = limits.timeout.as_secs() + 1;
    let (mem, fsize) = (limits.memory_bytes, limits.file_bytes);
    // A pipe byte reports whether the network namespace was created.
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe(2) on a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(EvalError::io("pipe", std::io::Error::last_os_error()));
    }
    let (net_r, net_w) = (fds[0], fds[1]);
    let mut cmd = Command::new(&python);
    cmd.arg("-I")
        .arg(&script)
        .current_dir(&work)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            let set = |res, v: u64| {
                let lim = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(res, &lim);
            };
            set(libc::RLIMIT_CPU, cpu);
            set(libc::RLIMIT_AS, mem);
            set(libc::RLIMIT_FSIZE, fsize);
            set(libc::RLIMIT_CORE, 0);
            let root = libc::geteuid() == 0;
            let mut isolated = libc::unshare(libc::CLONE_NEWNET) == 0;
            if !isolated && !root {
                isolated = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0;
            }
            let byte = [isolated as u8];
            libc::write(net_w, byte.as_ptr().cast(), 1);
            if root {
                libc::setgroups(0, std::ptr::null());
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let spawned = cmd.spawn();
    // SAFETY: closing our copy of the write end; the child has its own.
    unsafe { libc::close(net_w) };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            unsafe { libc::close(net_r) };
            return Err(EvalError::io(&python, e));
        }
    };
    let mut flag = [0u8; 1];
    // SAFETY: reading one byte from our pipe end, then closing it.
    let network_isolated = unsafe {
        let n = libc::read(net_r, flag.as_mut_ptr().cast(), 1);
        libc::close(net_r);
        n == 1 && flag[0] == 1
    };
    let cap = limits.output_bytes;
    let out = child
        .stdout
        .take()
        .map(|s| std::thread::spawn(move || capped_read(s, cap)));
    let err = child
        .stderr
        .take()
        .map(|s| std::thread::spawn(move || capped_read(s, cap)));
    let pid = child.id() as i32;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| EvalError::io(&python, e))? {
            break status;
        }
        if start.elapsed() >= limits.timeout {
            // SAFETY: kill the child's process group (it called setpgid(0, 0)).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            timed_out = true;
            break child.wait().map_err(|e| EvalError::io(&python, e))?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Grandchildren may still hold the pipes open: kill the group before joining readers.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (join(out), join(err));
    let outcome = if timed_out {
        Outcome::TimedOut
    } else if status.success() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    Ok(SandboxReport {
        outcome,
        exit_code: status.code(),
        stdout,
        stderr,
        seconds: start.elapsed().as_secs_f64(),
        network_isolated,
    })
}

/// Keeps the first `cap` bytes, drains the rest.
fn capped_read(mut r: impl Read, cap: usize) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// `python` as given if it is a path, else its location on the parent's `PATH` (the
/// child's environment is empty, so it cannot search one). As root the child runs as
/// `nobody`, so only interpreters that `nobody` can reach (every ancestor directory
/// world-searchable, e.g. not a shim in root's home) qualify.
fn resolve_python(python: &str) -> std::path::PathBuf {
    if python.contains('/') {
        return python.into();
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(python))
        .filter_map(|p| std::fs::canonicalize(&p).ok())
        .find(|p| p.is_file() && (!root || world_reachable(p)))
        .unwrap_or_else(|| python.into())
}

/// Every ancestor of `path` is world-searchable and `path` world-executable.
fn world_reachable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    mode(path) & 0o001 != 0 && path.ancestors().skip(1).all(|a| mode(a) & 0o001 != 0)
}
