//! Reading a server process's resident memory and CPU time from `/proc`.

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

/// User plus system CPU time in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc stat")?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields
        .get(11)
        .and_then(|f| f.parse().ok())
        .context("no utime")?;
    let stime: u64 = fields
        .get(12)
        .and_then(|f| f.parse().ok())
        .context("no stime")?;
    Ok(utime + stime)
}

/// Clock ticks per second; 100 on every Linux this runs on (CONFIG_HZ-independent USER_HZ).
pub fn ticks_per_second() -> u64 {
    100
}
