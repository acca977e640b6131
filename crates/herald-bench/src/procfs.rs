//! Reading a process's resident memory and CPU time from `/proc`.

use anyhow::Context;

/// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// User plus system CPU seconds of a process, children not included.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU seconds of this process (the load generator).
pub fn own_cpu_secs() -> anyhow::Result<f64> {
    cpu_secs_of("/proc/self/stat")
}

fn cpu_secs_of(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let field = |i: usize| -> anyhow::Result<u64> {
        after
            .split_whitespace()
            .nth(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {i} in {path}"))
    };
    // utime and stime, in USER_HZ ticks: 100 per second on every Linux, whatever CONFIG_HZ is.
    Ok((field(11)? + field(12)?) as f64 / 100.0)
}
