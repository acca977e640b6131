//! One client of herald's event stream (`--transport sse`), as cheap as a client can be: a raw HTTP/1.1
//! `GET /sse/<site>?token=…` over TCP, the chunked body undone as it arrives and cut into event blocks at each
//! blank line. The `welcome` block says the server has let the client into its rooms; each `m` block
//! (`event: m\ndata: [{"s":…,"t":…,"p":…}]`) is a delivery; `: ping` comments are skipped. herald ends lines
//! with `\n` only, which is all this reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::dial;
use crate::stats::{Deliveries, Order};
use crate::target::Target;

/// Bytes a read may fill at once: several event blocks, as a WebSocket client's 4 KiB read buffer.
const READ_BUFFER: usize = 4096;

/// Longest response head read before giving up.
const MAX_HEAD: usize = 16 << 10;

/// Opens an event stream as connection `i` with `token`, and returns the task that records its events once the
/// welcome has come.
pub async fn connect(
    target: &Target,
    i: usize,
    token: &str,
    deliveries: Arc<Deliveries>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tcp = dial(target.addr, target.source(i)).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.plain_path("sse", token),
        target.addr
    );
    tcp.write_all(request.as_bytes())
        .await
        .context("sending GET /sse")?;
    let mut subscriber = Subscriber {
        tcp,
        raw: Vec::with_capacity(READ_BUFFER),
        body: Vec::new(),
        chunks: None,
        deliveries,
        order: Order::default(),
        welcomed: false,
    };
    subscriber.head().await?;
    while !subscriber.welcomed {
        if !subscriber.read().await? {
            bail!("the event stream ended before its welcome");
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok(true) = subscriber.read().await {}
        subscriber
            .deliveries
            .disconnects
            .fetch_add(1, Ordering::Relaxed);
    }))
}

struct Subscriber {
    tcp: TcpStream,
    /// Bytes read and not yet taken out of their chunks.
    raw: Vec<u8>,
    /// The body, not yet cut into blocks: the start of a block that has not ended.
    body: Vec<u8>,
    /// The chunked coding being undone; `None` for a body sent as it is (until the connection closes).
    chunks: Option<Dechunk>,
    deliveries: Arc<Deliveries>,
    order: Order,
    welcomed: bool,
}

impl Subscriber {
    /// Reads the response head: an error unless it is 200. Whatever came after it stays in `raw`.
    async fn head(&mut self) -> anyhow::Result<()> {
        loop {
            if let Some(end) = find(&self.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                self.raw.drain(..end + 4);
                let status = head.lines().next().unwrap_or_default();
                if status.split(' ').nth(1) != Some("200") {
                    let body: String = String::from_utf8_lossy(&self.raw)
                        .chars()
                        .take(200)
                        .collect();
                    bail!("GET /sse answered {status}: {body}");
                }
                let chunked = head.lines().any(|line| {
                    let line = line.to_ascii_lowercase();
                    line.starts_with("transfer-encoding:") && line.contains("chunked")
                });
                self.chunks = chunked.then(Dechunk::default);
                return self.take().map(|_| ());
            }
            if self.raw.len() > MAX_HEAD {
                bail!("GET /sse: no end to the response head in {MAX_HEAD} bytes");
            }
            if self.fill().await? == 0 {
                bail!("the connection closed before the response to GET /sse");
            }
        }
    }

    /// Reads what came next and handles the blocks it completes; false once the stream is over.
    async fn read(&mut self) -> anyhow::Result<bool> {
        if self.fill().await? == 0 {
            return Ok(false);
        }
        self.take()
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.raw.capacity() - self.raw.len() < READ_BUFFER / 4 {
            self.raw.reserve(READ_BUFFER);
        }
        Ok(self.tcp.read_buf(&mut self.raw).await?)
    }

    /// Moves the body out of `raw` and handles every complete block; false once the body has ended.
    fn take(&mut self) -> anyhow::Result<bool> {
        let open = match &mut self.chunks {
            Some(chunks) => {
                let used = chunks
                    .feed(&self.raw, &mut self.body)
                    .map_err(|e| anyhow::anyhow!("malformed chunked body: {e}"))?;
                self.raw.drain(..used);
                !chunks.ended()
            }
            None => {
                self.body.extend_from_slice(&self.raw);
                self.raw.clear();
                true
            }
        };
        let mut start = 0;
        while let Some(end) = find(&self.body[start..], b"\n\n") {
            let block = &self.body[start..start + end];
            start += end + 2;
            match parse_block(block) {
                Some((b"m", data)) => match std::str::from_utf8(data) {
                    Ok(data) => self.deliveries.record(data, &mut self.order),
                    Err(_) => {
                        self.deliveries.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Some((b"welcome", _)) => self.welcomed = true,
                _ => {}
            }
        }
        self.body.drain(..start);
        Ok(open)
    }
}

/// Where `needle` (not empty) first starts in `haystack`: a scan for its first byte, which is rare here.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + at;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The event name and data of one block (its lines, without the blank line that ended it); `None` for a block
/// with no data, such as a comment.
fn parse_block(block: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut name: &[u8] = b"message";
    let mut data = None;
    for line in block.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"event: ") {
            name = value;
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            data = Some(value);
        }
    }
    data.map(|data| (name, data))
}

/// Undoes the chunked transfer coding as bytes arrive: `<hex size>\r\n<data>\r\n`, …, `0\r\n`, trailers,
/// `\r\n`.
#[derive(Debug, Default)]
struct Dechunk {
    state: Chunk,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Chunk {
    /// Before a size line.
    #[default]
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// After a chunk's data, before its `\r\n`.
    End,
    /// After the last chunk: trailer lines, up to an empty one.
    Trailers,
    /// The last chunk came.
    Ended,
}

impl Dechunk {
    /// Appends the data of `raw`'s complete parts to `body`; returns how many bytes of `raw` it used.
    fn feed(&mut self, raw: &[u8], body: &mut Vec<u8>) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            let rest = &raw[at..];
            match self.state {
                Chunk::Size => {
                    let Some(line_end) = find(rest, b"\r\n") else {
                        return Ok(at);
                    };
                    let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "size line")?;
                    let hex = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| "size line")?;
                    at += line_end + 2;
                    self.state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = left.min(rest.len());
                    body.extend_from_slice(&rest[..n]);
                    at += n;
                    self.state = if n == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::End => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("no CRLF after a chunk");
                    }
                    at += 2;
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line_end) = find(rest, b"\r\n") else {
                        return Ok(at);
                    };
                    at += line_end + 2;
                    if line_end == 0 {
                        self.state = Chunk::Ended;
                    }
                }
                Chunk::Ended => return Ok(at),
            }
        }
    }

    fn ended(&self) -> bool {
        self.state == Chunk::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_undone_across_any_split() {
        let body = b"event: welcome\ndata: {}\n\nevent: m\ndata: [{\"s\":1}]\n\n";
        let mut wire = Vec::new();
        for part in [&body[..25], &body[25..]] {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for split in 0..wire.len() {
            let mut dechunk = Dechunk::default();
            let mut out = Vec::new();
            let mut pending = wire[..split].to_vec();
            let used = dechunk.feed(&pending, &mut out).expect("first half");
            pending.drain(..used);
            pending.extend_from_slice(&wire[split..]);
            let used = dechunk.feed(&pending, &mut out).expect("second half");
            assert_eq!(used, pending.len(), "split at {split}");
            assert_eq!(out, body, "split at {split}");
            assert!(dechunk.ended());
        }
    }

    #[test]
    fn a_bad_size_line_is_an_error() {
        let mut out = Vec::new();
        assert!(Dechunk::default().feed(b"zz\r\n", &mut out).is_err());
        assert!(Dechunk::default().feed(b"1\r\nabc", &mut out).is_err());
    }

    #[test]
    fn find_finds_the_first_whole_needle() {
        assert_eq!(find(b"a\nb\n\nc\n\n", b"\n\n"), Some(3));
        assert_eq!(find(b"a\nb\n", b"\n\n"), None);
        assert_eq!(find(b"\r\n", b"\r\n"), Some(0));
    }

    #[test]
    fn blocks_give_their_event_and_data() {
        assert_eq!(
            parse_block(b"id: 7\nevent: m\ndata: [1]"),
            Some((&b"m"[..], &b"[1]"[..]))
        );
        assert_eq!(parse_block(b"data: x"), Some((&b"message"[..], &b"x"[..])));
        assert_eq!(parse_block(b": ping"), None);
    }
}
