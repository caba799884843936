//! Peak resident memory of this process, for the memory column of benchmarks.
//!
//! Key decision: read the kernel's own high-water mark (`VmHWM` in
//! `/proc/self/status`) rather than sampling RSS from a thread: it is exact, costs
//! one small file read, and catches a peak that lasts a microsecond (the moment a
//! backward pass holds every activation). It is the number `/usr/bin/time -v` reports
//! as "Maximum resident set size", so smelt and PyTorch runs compare directly.

/// Peak resident set size of this process in MiB (Linux `VmHWM`); `None` on other
/// systems or if `/proc` cannot be read.
pub fn peak_rss_mb() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_vm_hwm_kib(&status).map(|kib| kib as f64 / 1024.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The `VmHWM:  12345 kB` line of a `/proc/<pid>/status` text, in KiB.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    let mut parts = rest.split_whitespace();
    let value = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tsmelt\nVmPeak:\t  200000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(51200));
        assert_eq!(parse_vm_hwm_kib("VmRSS:\t 1 kB\n"), None);
    }
}
