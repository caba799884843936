//! Sandbox tests: programs that hang, allocate without bound, flood output, or read
//! the parent's environment each fail their own sample within the timeout, and the
//! programs after them still run.

use smelt_evals::sandbox::{run_python, Outcome, SandboxLimits};
use std::time::{Duration, Instant};

fn limits() -> SandboxLimits {
    SandboxLimits {
        timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

#[test]
fn hostile_programs_fail_their_sample_and_the_run_continues() {
    // SAFETY of intent: a marker only this test sets; the child must not see it.
    std::env::set_var("SMELT_SANDBOX_SECRET", "hunter2");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let read_proc = if root {
        // As root the child runs as nobody and cannot read /proc/<parent>/environ.
        "assert 'hunter2' in open(f'/proc/{os.getppid()}/environ').read()\n"
    } else {
        ""
    };
    let env_probe = format!(
        "import os\nassert os.environ.get('SMELT_SANDBOX_SECRET') == 'hunter2' or 'HOME' in os.environ\n{read_proc}"
    );
    let cases: Vec<(&str, String, &[Outcome])> = vec![
        (
            "infinite loop",
            "while True:\n    pass\n".into(),
            &[Outcome::TimedOut, Outcome::Failed],
        ),
        (
            "unbounded allocation",
            "x = []\nwhile True:\n    x.append(bytearray(1 << 24))\n".into(),
            &[Outcome::Failed],
        ),
        (
            "huge output",
            "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n".into(),
            &[Outcome::TimedOut, Outcome::Failed],
        ),
        (
            "huge file",
            "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)\n".into(),
            &[Outcome::Failed],
        ),
        ("parent env", env_probe, &[Outcome::Failed]),
        (
            "good program",
            "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')\n".into(),
            &[Outcome::Passed],
        ),
    ];
    let lim = limits();
    let start = Instant::now();
    for (name, program, allowed) in &cases {
        let t = Instant::now();
        let r = run_python(program, &lim).unwrap();
        assert!(
            allowed.contains(&r.outcome),
            "{name}: {:?}, stderr {}",
            r.outcome,
            r.stderr
        );
        // Each sample ends within the timeout plus the kill/reap margin.
        assert!(
            t.elapsed() < lim.timeout + Duration::from_secs(2),
            "{name} took {:?}",
            t.elapsed()
        );
        assert!(
            r.stdout.len() <= lim.output_bytes,
            "{name}: output not capped"
        );
        if *name == "good program" {
            assert_eq!(r.stdout.trim(), "ok");
        }
        eprintln!(
            "{name}: {:?} in {:.2}s (network isolated: {})",
            r.outcome, r.seconds, r.network_isolated
        );
    }
    assert!(start.elapsed() < Duration::from_secs(6 * 4));
}

/// A failing test (assertion) is a failure, not an error of the run.
#[test]
fn failing_assertion_is_a_failed_sample() {
    let r = run_python("assert 1 == 2\n", &limits()).unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.stderr.contains("AssertionError"), "{}", r.stderr);
}
