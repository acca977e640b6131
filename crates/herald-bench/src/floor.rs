//! The floor: what this machine charges to put one small frame on N loopback TCP sockets with no server in
//! between. One sender thread `write()`s the same frame to every socket per broadcast, paced as the fan-out
//! scenario paces publishes; a reader thread, on another core, drains every socket and times each frame from the
//! broadcast's start. herald's fan-out rows are read as ratios to these figures (BENCHMARKS.md).

use std::io::{IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::stats::{micros_histogram, now_us};
use crate::Outcome;

/// One run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Sockets each broadcast goes to.
    pub subs: usize,
    /// Broadcasts.
    pub messages: usize,
    /// Bytes per frame (at least 8: the broadcast's start time leads it).
    pub size: usize,
    /// Broadcasts per second; 0 sends them back to back.
    pub rate: f64,
    /// Cores the sender and the reader are pinned to.
    pub sender_core: usize,
    pub reader_core: usize,
    /// Each frame as two slices (a 2-byte head and the rest) in one `writev` instead of one `write`.
    pub writev: bool,
}

pub fn floor(plan: Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(plan.size >= 8, "--size must be at least 8 bytes");
    let (senders, readers) = pairs(plan.subs)?;
    let reader = std::thread::spawn(move || read_all(readers, plan));
    pin(plan.sender_core);
    let sent = send_all(&senders, plan)?;
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    let deliveries = (plan.subs * plan.messages) as f64;
    let cpu_per_delivery_us = sent.cpu.as_secs_f64() * 1e6 / deliveries;
    let broadcast = &sent.broadcast_us;
    let latency = &read.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let human = format!(
        "floor: {:.2} µs CPU per delivery; one broadcast to {} sockets p50 {:.2} ms, p99 {:.2} ms; delivery \
         p99 {:.2} ms, p99.9 {:.2} ms",
        cpu_per_delivery_us,
        plan.subs,
        ms(broadcast.value_at_quantile(0.5)),
        ms(broadcast.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
    );
    // Microseconds, as the fan-out scenario records them, so `report` reads both alike.
    let metrics = json!({
        "deliveries": deliveries,
        "received": read.received,
        "cpu_per_delivery_us": cpu_per_delivery_us,
        "broadcast_us": {
            "p50": broadcast.value_at_quantile(0.5),
            "p99": broadcast.value_at_quantile(0.99),
            "max": broadcast.max(),
        },
        "latency_us": {
            "p50": latency.value_at_quantile(0.5),
            "p99": latency.value_at_quantile(0.99),
            "p999": latency.value_at_quantile(0.999),
        },
    });
    Ok(Outcome { human, metrics })
}

/// `n` connected loopback pairs: the accepted ends (written) and the connecting ends (read).
fn pairs(n: usize) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the floor's listener")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let reader = TcpStream::connect(addr).context("connecting a floor socket")?;
        let (sender, _) = listener.accept()?;
        // As herald's sockets are: every frame leaves at once.
        sender.set_nodelay(true)?;
        readers.push(reader);
        senders.push(sender);
    }
    Ok((senders, readers))
}

struct Sent {
    cpu: Duration,
    broadcast_us: hdrhistogram::Histogram<u64>,
}

/// Sends every broadcast: the frame, stamped with the broadcast's start, written to each socket in turn.
fn send_all(senders: &[TcpStream], plan: Plan) -> anyhow::Result<Sent> {
    let mut frame = vec![b'x'; plan.size];
    let mut broadcast_us = micros_histogram();
    let start = Instant::now();
    let cpu_before = thread_cpu()?;
    for i in 0..plan.messages {
        if plan.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / plan.rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let began = now_us();
        frame[..8].copy_from_slice(&began.to_le_bytes());
        for mut socket in senders {
            if plan.writev {
                let (head, rest) = frame.split_at(2);
                let written = socket.write_vectored(&[IoSlice::new(head), IoSlice::new(rest)])?;
                socket.write_all(&frame[written..])
            } else {
                socket.write_all(&frame)
            }
            .context("writing a floor frame")?;
        }
        broadcast_us.record((now_us() - began).max(1))?;
    }
    let cpu = thread_cpu()? - cpu_before;
    Ok(Sent { cpu, broadcast_us })
}

struct Read {
    received: u64,
    latency_us: hdrhistogram::Histogram<u64>,
}

/// Reads every socket to the end of the run on one thread (a current-thread runtime: one epoll loop), and times
/// each frame from its broadcast's start.
fn read_all(readers: Vec<TcpStream>, plan: Plan) -> anyhow::Result<Read> {
    pin(plan.reader_core);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let limit = run_time(plan) + Duration::from_secs(30);
    let per_socket = runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for socket in readers {
            socket.set_nonblocking(true)?;
            let socket = tokio::net::TcpStream::from_std(socket)?;
            tasks.spawn(read_one(socket, plan));
        }
        let mut all = Vec::with_capacity(plan.subs);
        let joined = tokio::time::timeout(limit, async {
            while let Some(done) = tasks.join_next().await {
                all.push(done??);
            }
            anyhow::Ok(())
        });
        joined.await.context("the floor's reader timed out")??;
        anyhow::Ok(all)
    })?;
    let mut latency_us = micros_histogram();
    let mut received = 0u64;
    for latencies in per_socket {
        received += latencies.len() as u64;
        for us in latencies {
            latency_us.record(us.max(1))?;
        }
    }
    Ok(Read {
        received,
        latency_us,
    })
}

/// One socket's frames, as microseconds from their broadcast's start to their arrival.
async fn read_one(mut socket: tokio::net::TcpStream, plan: Plan) -> anyhow::Result<Vec<u64>> {
    use tokio::io::AsyncReadExt;
    let mut latencies = Vec::with_capacity(plan.messages);
    // A read may end mid-frame: the part read so far.
    let mut partial = Vec::with_capacity(plan.size);
    let mut buf = vec![0u8; 16 << 10];
    while latencies.len() < plan.messages {
        let n = socket.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "a floor socket closed early");
        let now = now_us();
        for stamp in frames(&mut partial, &buf[..n], plan.size) {
            latencies.push(now.saturating_sub(u64::from_le_bytes(stamp)));
        }
    }
    Ok(latencies)
}

/// The start stamps of the whole frames that `bytes` completes, keeping a trailing part in `partial`.
fn frames(partial: &mut Vec<u8>, mut bytes: &[u8], size: usize) -> Vec<[u8; 8]> {
    let mut stamps = Vec::new();
    while !bytes.is_empty() {
        let take = (size - partial.len()).min(bytes.len());
        partial.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if partial.len() == size {
            let mut stamp = [0u8; 8];
            stamp.copy_from_slice(&partial[..8]);
            stamps.push(stamp);
            partial.clear();
        }
    }
    stamps
}

fn run_time(plan: Plan) -> Duration {
    if plan.rate > 0.0 {
        Duration::from_secs_f64(plan.messages as f64 / plan.rate)
    } else {
        Duration::ZERO
    }
}

/// CPU time this thread has run.
fn thread_cpu() -> anyhow::Result<Duration> {
    let spec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .context("reading this thread's CPU clock")?;
    Ok(Duration::from(spec))
}

/// Pins this thread to `core`; where that fails it runs where the scheduler puts it, and says so.
fn pin(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(core)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        eprintln!("floor: cannot pin to core {core} ({e}); running unpinned");
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_size_across_reads() {
        let mut partial = Vec::new();
        let frame = |stamp: u64| {
            let mut f = stamp.to_le_bytes().to_vec();
            f.extend_from_slice(&[b'x'; 4]);
            f
        };
        let bytes: Vec<u8> = [frame(1), frame(2), frame(3)].concat();
        assert_eq!(frames(&mut partial, &bytes[..5], 12), Vec::<[u8; 8]>::new());
        assert_eq!(
            frames(&mut partial, &bytes[5..30], 12),
            vec![1u64.to_le_bytes(), 2u64.to_le_bytes()]
        );
        assert_eq!(
            frames(&mut partial, &bytes[30..], 12),
            vec![3u64.to_le_bytes()]
        );
        assert!(partial.is_empty());
    }

    #[test]
    fn a_small_run_delivers_every_frame_written_or_written_in_two_slices() {
        for writev in [false, true] {
            let plan = Plan {
                subs: 20,
                messages: 30,
                size: 100,
                rate: 0.0,
                sender_core: 0,
                reader_core: 0,
                writev,
            };
            let outcome = floor(plan).expect("a floor run");
            assert_eq!(outcome.metrics["received"], 600, "writev: {writev}");
            assert!(
                outcome.metrics["cpu_per_delivery_us"]
                    .as_f64()
                    .unwrap_or(0.0)
                    > 0.0
            );
        }
    }
}
