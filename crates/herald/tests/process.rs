//! The `herald` binary as a process: each test starts its own `herald` on 127.0.0.1 (port 0, the bound address
//! read from the "herald listening" log line) with a scratch data directory and a server file, then drives it
//! over raw TCP. Covered here: the SIGTERM drain in steps within `shutdown_grace_ms`, the per-connection
//! deadlines (`header_read_timeout_ms`, `idle_timeout_ms`), and a polling POST cut short by a protocol violation.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest herald may take to start and print its address (a debug build on a busy machine).
const STARTUP: Duration = Duration::from_secs(30);
/// The longest one request of these tests may wait for its answer (long polls included).
const REQUEST: Duration = Duration::from_secs(10);
/// Packet separator of an Engine.IO v4 polling payload.
const SEPARATOR: u8 = 0x1e;

// ---------------------------------------------------------------------------------------------------------------
// A herald process
// ---------------------------------------------------------------------------------------------------------------

/// A running `herald`; dropping it kills the process (if still running) and removes its directory.
struct Herald {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    /// Every line herald wrote, stdout and stderr, as it arrives.
    log: Arc<Mutex<Vec<String>>>,
}

/// A fresh scratch directory under the system temp dir.
fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "herald-process-{name}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The address in herald's "herald listening; open http://ADDR/ for the demo page" line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("herald listening") {
        return None;
    }
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest[..rest.find('/')?].parse().ok()
}

impl Herald {
    /// Starts `herald --config <dir>/herald.yml --port 0 --data-dir <dir>/data --log-level <level>` with `config`
    /// as the server file, and waits until it listens.
    fn start(name: &str, config: &str, log_level: &str) -> Herald {
        let dir = scratch_dir(name);
        let config_path = dir.join("herald.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&config_path)
            .args(["--port", "0", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--log-level", log_level])
            // No HERALD_*, PORT, RUST_LOG, SITE_NAME... from the test's environment; plain text logs.
            .env_clear()
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, found) in [
            (Box::new(stdout) as Box<dyn Read + Send>, found.clone()),
            (Box::new(stderr), found),
        ] {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        let _ = found.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut herald = Herald {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            log,
        };
        match address.recv_timeout(STARTUP) {
            Ok(addr) => herald.addr = addr,
            Err(e) => panic!(
                "herald did not report its address ({e}); exit: {:?}; log:\n{}",
                herald.child.try_wait(),
                herald.log_text()
            ),
        }
        herald
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// The demo site's API key, generated into the data directory at start.
    fn demo_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("data").join("demo-api-key"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Sends SIGTERM with `kill -TERM <pid>`.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit status, once herald exits, or `None` if it still runs after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server file: the given `server:` settings (YAML lines, indented by two) and no site, so the embedded
/// default's public `demo` site (public channel `public`) is served.
fn server_file(settings: &[&str]) -> String {
    let mut text = String::from("server:\n");
    for line in settings {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

// ---------------------------------------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The packets of a v4 polling payload.
    fn packets(&self) -> Vec<String> {
        self.body
            .split(|&b| b == SEPARATOR)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = connect(addr)?;
    stream.set_read_timeout(Some(REQUEST))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{what} in {:?}", String::from_utf8_lossy(raw)),
        )
    };
    if raw.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the connection closed without an answer",
        ));
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        }
        if name.trim().eq_ignore_ascii_case("transfer-encoding")
            && value.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        match length {
            Some(len) if rest.len() >= len => rest[..len].to_vec(),
            Some(_) => return Err(bad("body cut short")),
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn get(addr: SocketAddr, target: &str) -> std::io::Result<Response> {
    request(addr, "GET", target, &[], b"")
}

fn polling_target(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// A polling handshake: the new session's sid.
fn handshake(addr: SocketAddr) -> String {
    let response = get(addr, "/socket.io/?EIO=4&transport=polling").unwrap();
    let text = response.text();
    assert_eq!(response.status, 200, "handshake: {text}");
    let open: serde_json::Value = serde_json::from_str(
        text.strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {text:?}")),
    )
    .unwrap();
    open["sid"].as_str().unwrap().to_string()
}

fn poll_post(addr: SocketAddr, sid: &str, body: &[u8]) -> std::io::Result<Response> {
    request(
        addr,
        "POST",
        &polling_target(sid),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        body,
    )
}

/// Reads `stream` until the peer closes it (EOF or an error such as a reset), or `limit` passes. Returns when
/// it closed, measured from `since`, and the bytes received before; `None` if it was still open after `limit`.
fn wait_closed(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = since + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (None, received);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (Some(since.elapsed()), received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (Some(since.elapsed()), received),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A polling client that keeps its session alive
// ---------------------------------------------------------------------------------------------------------------

/// How a pumped polling session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// A GET answered the close packet `1`: the server closed the session.
    ClosePacket,
    /// A GET answered 400 Session ID unknown.
    UnknownSid,
    /// The next GET could not connect: the listener is closed.
    Refused,
    /// The next GET's connection was reset before any answer: the kernel had queued it when the listener
    /// closed, before herald accepted it.
    Reset,
    /// Anything else.
    Other(String),
}

#[derive(Debug)]
struct PumpReport {
    /// When each ping arrived.
    pings: Vec<Instant>,
    end: End,
    ended_at: Instant,
}

/// Long-polls session `sid` in a thread, answering each ping with a pong, until the session or the connection
/// ends.
fn pump(addr: SocketAddr, sid: String) -> JoinHandle<PumpReport> {
    thread::spawn(move || {
        let started = Instant::now();
        let mut pings = Vec::new();
        let end = loop {
            if started.elapsed() > Duration::from_secs(30) {
                break End::Other("still polling after 30 s".into());
            }
            match get(addr, &polling_target(&sid)) {
                Ok(response) if response.status == 200 => {
                    let mut closed = false;
                    for packet in response.packets() {
                        match packet.as_str() {
                            "2" => {
                                pings.push(Instant::now());
                                // A failed pong shows in the next GET.
                                let _ = poll_post(addr, &sid, b"3");
                            }
                            "1" => closed = true,
                            _ => {}
                        }
                    }
                    if closed {
                        break End::ClosePacket;
                    }
                }
                Ok(response)
                    if response.status == 400 && response.text().contains("Session ID unknown") =>
                {
                    break End::UnknownSid
                }
                Ok(response) => {
                    break End::Other(format!("{} {}", response.status, response.text()))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break End::Refused,
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    break End::Reset
                }
                Err(e) => break End::Other(e.to_string()),
            }
        };
        PumpReport {
            pings,
            end,
            ended_at: Instant::now(),
        }
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

/// SIGTERM with sessions and odd connections open: for `drain_delay_ms` the listener stays open while
/// `/readyz` and new handshakes answer 503 and open sessions keep their heartbeat; then the sessions are closed
/// and the listener is gone; the process exits with success within `shutdown_grace_ms` (+1 s), even though a
/// connection holds half a request.
#[test]
fn sigterm_drains_in_two_steps_within_the_grace() {
    const DRAIN: Duration = Duration::from_millis(800);
    const GRACE: Duration = Duration::from_millis(3000);
    let mut herald = Herald::start(
        "drain",
        &server_file(&[
            "shutdown_grace_ms: 3000",
            "drain_delay_ms: 800",
            "engine: {ping_interval_ms: 300, ping_timeout_ms: 300}",
        ]),
        "info",
    );
    let addr = herald.addr;
    assert_eq!(get(addr, "/readyz").unwrap().status, 200, "ready before");

    // A session that joined the demo site, and one that joined nothing.
    let joined = handshake(addr);
    let answer = poll_post(addr, &joined, b"40/demo,").unwrap();
    assert_eq!(answer.status, 200, "joining /demo: {}", answer.text());
    let connected = get(addr, &polling_target(&joined)).unwrap();
    assert!(
        connected
            .packets()
            .iter()
            .any(|p| p.starts_with("40/demo,{\"sid\"")),
        "no CONNECT reply for /demo: {}",
        connected.text()
    );
    let bare = handshake(addr);
    let joined_pump = pump(addr, joined);
    let bare_pump = pump(addr, bare);

    // Half a request (no blank line ends its headers), and a connection that sends nothing.
    let mut half = connect(addr).unwrap();
    half.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: herald\r\nX-Half: abc")
        .unwrap();
    let mut idle = connect(addr).unwrap();
    thread::sleep(Duration::from_millis(400));

    let signalled = Instant::now();
    herald.sigterm();
    let half_watch =
        thread::spawn(move || wait_closed(&mut half, signalled, Duration::from_secs(8)));
    let idle_watch =
        thread::spawn(move || wait_closed(&mut idle, signalled, Duration::from_secs(8)));

    // Step 1, drain notice: the listener still accepts, /readyz answers 503, and so does a new handshake.
    let not_ready = loop {
        let response = get(addr, "/readyz").unwrap_or_else(|e| {
            panic!(
                "/readyz failed {:?} after SIGTERM, within the drain delay: {e}",
                signalled.elapsed()
            )
        });
        if response.status == 503 {
            break signalled.elapsed();
        }
        assert_eq!(response.status, 200, "/readyz: {}", response.text());
        assert!(
            signalled.elapsed() < DRAIN,
            "/readyz still answered 200 {:?} after SIGTERM",
            signalled.elapsed()
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(
        not_ready < DRAIN,
        "/readyz answered 503 only {not_ready:?} after SIGTERM, past the drain delay"
    );
    let refused = get(addr, "/socket.io/?EIO=4&transport=polling").unwrap_or_else(|e| {
        panic!(
            "a handshake {:?} after SIGTERM, within the drain delay, could not connect: {e}",
            signalled.elapsed()
        )
    });
    let refused_at = signalled.elapsed();
    assert!(
        refused_at < DRAIN,
        "the handshake was answered only {refused_at:?} after SIGTERM, past the drain delay"
    );
    assert_eq!(
        (refused.status, refused.text().contains("shutting down")),
        (503, true),
        "a handshake during the drain notice: {}",
        refused.text()
    );

    // Step 2, drain: both sessions end, not before the drain delay; the listener is closed.
    for (name, handle) in [("joined /demo", joined_pump), ("no namespace", bare_pump)] {
        let report = handle.join().unwrap();
        let ended = report.ended_at.saturating_duration_since(signalled);
        eprintln!(
            "session {name}: ended {ended:?} after SIGTERM with {:?}",
            report.end
        );
        assert!(
            // A GET in flight gets the close packet; a pump caught between two requests (sending a pong) finds
            // the listener closed.
            matches!(report.end, End::ClosePacket | End::Refused | End::Reset),
            "session {name} ended with {:?}, not a close packet (or a closed listener); log:\n{}",
            report.end,
            herald.log_text()
        );
        assert!(
            ended >= DRAIN - Duration::from_millis(50),
            "session {name} ended {ended:?} after SIGTERM, before the drain delay {DRAIN:?}"
        );
        assert!(
            ended < GRACE,
            "session {name} ended {ended:?} after SIGTERM, past the grace {GRACE:?}"
        );
        let pings_in_notice = report
            .pings
            .iter()
            .filter(|&&at| at > signalled && at < report.ended_at)
            .count();
        assert!(
            pings_in_notice >= 1,
            "session {name} got no heartbeat during the drain notice: its session did not go on"
        );
    }
    let wait_listener =
        (signalled + DRAIN + Duration::from_millis(300)).saturating_duration_since(Instant::now());
    thread::sleep(wait_listener);
    let late = connect(addr);
    assert!(
        late.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        "a connection {:?} after SIGTERM, past the drain delay, was not refused: {late:?}",
        signalled.elapsed()
    );

    // Step 3: the process exits with success within the grace, whatever the half request does.
    let status = herald.wait_exit(Duration::from_secs(10));
    let exited = signalled.elapsed();
    eprintln!("herald exited {exited:?} after SIGTERM: {status:?}");
    let status = status.unwrap_or_else(|| {
        panic!(
            "herald still runs {exited:?} after SIGTERM; log:\n{}",
            herald.log_text()
        )
    });
    assert!(
        status.success(),
        "herald exited with {status}; log:\n{}",
        herald.log_text()
    );
    assert!(
        exited < GRACE + Duration::from_secs(1),
        "herald exited {exited:?} after SIGTERM, over the {GRACE:?} grace + 1 s"
    );
    assert!(
        exited >= DRAIN,
        "herald exited {exited:?} after SIGTERM, before the drain delay {DRAIN:?}"
    );
    for (name, watch) in [("half-request", half_watch), ("idle", idle_watch)] {
        let (closed, received) = watch.join().unwrap();
        eprintln!(
            "{name} connection: closed {closed:?} after SIGTERM, received {:?}",
            String::from_utf8_lossy(&received)
        );
        let closed = closed.unwrap_or_else(|| panic!("the {name} connection was never closed"));
        assert!(
            closed < GRACE + Duration::from_secs(1),
            "the {name} connection was closed {closed:?} after SIGTERM, over the grace + 1 s"
        );
    }
    let log = herald.log_text();
    for expected in ["shutting down", "draining", "shut down"] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
}

/// The per-connection deadlines: a connection that sends nothing and a slowloris one are closed at
/// `header_read_timeout_ms`; a request whose body stalls is closed at `idle_timeout_ms`; meanwhile the server
/// answers others.
#[test]
fn slow_and_idle_connections_are_closed() {
    const HEADER: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_millis(1500);
    let herald = Herald::start(
        "deadlines",
        &server_file(&[
            "limits: {header_read_timeout_ms: 500, idle_timeout_ms: 1500}",
            "engine: {ping_interval_ms: 300, ping_timeout_ms: 300}",
        ]),
        "info",
    );
    let addr = herald.addr;
    let key = herald.demo_key();
    let limit = Duration::from_secs(6);

    // Clocks start before the connect, so that a measured time is never shorter than herald's own.
    let idle = thread::spawn(move || {
        let since = Instant::now();
        let mut stream = connect(addr).unwrap();
        wait_closed(&mut stream, since, limit)
    });
    let slowloris = thread::spawn(move || {
        let since = Instant::now();
        let mut stream = connect(addr).unwrap();
        let mut bytes = b"GET /healthcheck HTTP/1.1\r\nHost: herald\r\nX-Slow: "
            .iter()
            .copied()
            .chain(std::iter::repeat(b'a'));
        let mut sent = 0usize;
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while since.elapsed() < limit {
            if stream.write_all(&[bytes.next().unwrap()]).is_err() {
                return (Some(since.elapsed()), received, sent);
            }
            sent += 1;
            // Waits 100 ms for the server to close (or answer) before the next byte.
            match stream.read(&mut buf) {
                Ok(0) => return (Some(since.elapsed()), received, sent),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return (Some(since.elapsed()), received, sent),
            }
        }
        (None, received, sent)
    });
    let stalled = thread::spawn(move || {
        let mut stream = connect(addr).unwrap();
        let head = format!(
            "POST /api/v1/sites/demo/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"rooms\":"
        );
        stream.write_all(head.as_bytes()).unwrap();
        wait_closed(&mut stream, Instant::now(), limit)
    });

    // Meanwhile the server answers everyone else.
    let mut checks = 0;
    while !(idle.is_finished() && slowloris.is_finished() && stalled.is_finished()) {
        let response = get(addr, "/healthcheck").unwrap();
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "ok"),
            "/healthcheck while slow connections are open"
        );
        checks += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(checks >= 5, "only {checks} health checks ran meanwhile");

    let (idle_closed, idle_received) = idle.join().unwrap();
    let (slow_closed, slow_received, slow_sent) = slowloris.join().unwrap();
    let (stalled_closed, stalled_received) = stalled.join().unwrap();
    eprintln!(
        "idle connection closed after {idle_closed:?} (received {:?})",
        String::from_utf8_lossy(&idle_received)
    );
    eprintln!(
        "slowloris connection closed after {slow_closed:?}, {slow_sent} bytes sent (received {:?})",
        String::from_utf8_lossy(&slow_received)
    );
    eprintln!(
        "stalled body closed after {stalled_closed:?} (received {:?})",
        String::from_utf8_lossy(&stalled_received)
    );

    let within = |name: &str, closed: Option<Duration>, low: Duration, high: Duration| {
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "the {name} connection was still open after {limit:?}; log:\n{}",
                herald.log_text()
            )
        });
        assert!(
            closed >= low && closed <= high,
            "the {name} connection was closed after {closed:?}, expected between {low:?} and {high:?}"
        );
    };
    // The header deadline counts from the accept, bytes or not; the body deadline from the last byte.
    let second = Duration::from_secs(1);
    within(
        "idle",
        idle_closed,
        HEADER - Duration::from_millis(50),
        HEADER + second,
    );
    within(
        "slowloris",
        slow_closed,
        HEADER - Duration::from_millis(50),
        HEADER + second,
    );
    within(
        "stalled-body",
        stalled_closed,
        IDLE - Duration::from_millis(200),
        IDLE + second,
    );
    assert_eq!(
        get(addr, "/healthcheck").unwrap().status,
        200,
        "/healthcheck afterwards"
    );
}

/// A POST whose first packet is a socket.io protocol violation, followed by 20000 CONNECTs: the session closes
/// at the bad packet and the rest of the body is not handled (no CONNECT reply, no log line per packet).
#[test]
fn a_protocol_violation_stops_the_post() {
    const CONNECTS: usize = 20_000;
    // herald's own debug lines included: a CONNECT handled after the close would log one ("ignored a CONNECT").
    let herald = Herald::start(
        "violation",
        &server_file(&["engine: {ping_interval_ms: 300, ping_timeout_ms: 300}"]),
        "info,herald=debug",
    );
    let addr = herald.addr;
    let sid = handshake(addr);

    // `42[`: an EVENT whose data is not JSON.
    let mut body = b"42[".to_vec();
    for _ in 0..CONNECTS {
        body.push(SEPARATOR);
        body.extend_from_slice(b"40/demo,");
    }
    let lines_before = herald.log_lines().len();
    let posted = Instant::now();
    let answer = poll_post(addr, &sid, &body)
        .unwrap_or_else(|e| panic!("the POST got no answer: {e}; log:\n{}", herald.log_text()));
    eprintln!(
        "POST of {} bytes answered {} {:?} in {:?}",
        body.len(),
        answer.status,
        answer.text(),
        posted.elapsed()
    );

    // The session is closed: its GET tells with the close packet (nothing else queued, no CONNECT reply), or
    // it is already forgotten.
    let after = get(addr, &polling_target(&sid)).unwrap();
    let text = after.text();
    assert!(
        (after.status == 200 && text == "1")
            || (after.status == 400 && text.contains("Session ID unknown")),
        "a GET after the violation answered {} {text:?}, not the close packet",
        after.status
    );
    // ...and then forgotten.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = get(addr, &polling_target(&sid)).unwrap();
        if response.status == 400 {
            assert!(
                response.text().contains("Session ID unknown"),
                "{}",
                response.text()
            );
            break;
        }
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "1"),
            "a closed session answered a GET with something else than a close packet"
        );
        assert!(
            Instant::now() < deadline,
            "the closed session was not forgotten in 5 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(addr, "/healthcheck").unwrap().status,
        200,
        "/healthcheck afterwards"
    );

    // Let the log settle, then count.
    thread::sleep(Duration::from_millis(300));
    let lines = herald.log_lines();
    let new_lines = &lines[lines_before.min(lines.len())..];
    let about_sid: Vec<&String> = lines.iter().filter(|l| l.contains(sid.as_str())).collect();
    eprintln!(
        "{} log lines after the POST, {} mention the sid:\n{}",
        new_lines.len(),
        about_sid.len(),
        new_lines
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        about_sid.len() < 20,
        "{} log lines mention the session: the rest of the POST was handled; first ones:\n{}",
        about_sid.len(),
        about_sid
            .iter()
            .take(10)
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        new_lines.len() < 50,
        "{} log lines after the POST; first ones:\n{}",
        new_lines.len(),
        new_lines
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let violations = about_sid
        .iter()
        .filter(|l| l.contains("protocol violation"))
        .count();
    assert_eq!(
        violations,
        1,
        "expected one 'protocol violation' line for the session; log:\n{}",
        herald.log_text()
    );
}
