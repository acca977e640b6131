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

/// Threads of a process (`Threads` of /proc/<pid>/status).
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Threads line")
}

/// User plus system CPU seconds of a process, children not included.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU seconds of each process, in the order given.
pub fn cpu_secs_each(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|&pid| cpu_secs(pid)).collect()
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

/// Open file descriptors of a process: the entries of /proc/<pid>/fd.
pub fn fd_count(pid: u32) -> anyhow::Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading /proc fd")?;
    Ok(dir.count() as u64)
}

/// Seconds the threads of a process have spent waiting for a CPU while runnable (the run-queue delay, the
/// second field of each /proc/<pid>/task/<tid>/schedstat): how much a busy machine held the process back.
pub fn run_delay_secs(pid: u32) -> anyhow::Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("reading /proc task")?;
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        nanos += stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(nanos as f64 / 1e9)
}

/// User plus system CPU seconds of thread `tid` of this process.
pub fn thread_cpu_secs(tid: u32) -> anyhow::Result<f64> {
    cpu_secs_of(&format!("/proc/self/task/{tid}/stat"))
}

/// The id of the calling thread (`/proc/thread-self` links to `<pid>/task/<tid>`).
pub fn current_tid() -> anyhow::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .context("/proc/thread-self does not end in a thread id")
}

/// The process listening on 127.0.0.1 or any address at TCP `port`: the socket's inode in /proc/net/tcp{,6},
/// then the process holding it among /proc/<pid>/fd. `None` when nothing this user can see listens there.
pub fn listener_pid(port: u16) -> Option<u32> {
    let port = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st field 3 (0A: LISTEN), inode field 9.
            if fields.len() > 9 && fields[1].ends_with(&port) && fields[3] == "0A" {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|link| {
                    inodes
                        .iter()
                        .any(|inode| link.as_os_str() == inode.as_str())
                })
            })
        })
    })
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // After the command's closing parenthesis: state, then the parent's pid.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Every pid in /proc.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|name| name.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// CPUs of the machine (the `cpuN` lines of /proc/stat), whatever this process's affinity (scripts/bench.sh
/// pins it to one).
pub fn machine_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| {
            stat.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}
