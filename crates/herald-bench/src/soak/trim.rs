//! `malloc_trim(0)` in the server, through gdb (`--gdb-trim`): glibc keeps freed memory in its arenas, so RSS
//! shows the high-water mark of the heap. RSS right after a trim is close to what is in use, which tells a
//! leak from memory merely kept. gdb stops the server for about a second.

use std::process::{Command, Stdio};

use crate::procfs;

/// Trims the server's heap and returns its RSS in KiB after the trim; `None` when gdb failed.
pub async fn rss_after_trim(pid: u32) -> Option<u64> {
    let trimmed = tokio::task::spawn_blocking(move || {
        Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "call (int) malloc_trim(0)",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap_or(false);
    if !trimmed {
        eprintln!("[soak] gdb could not call malloc_trim in pid {pid}");
        return None;
    }
    procfs::rss_kib(pid).ok()
}
