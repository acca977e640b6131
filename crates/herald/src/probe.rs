//! `herald healthcheck`: one plain HTTP/1.1 GET over a std `TcpStream`, so that a container image without curl
//! or a shell (Docker's `HEALTHCHECK`) can ask a running herald whether it is alive.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The path herald answers `200 ok` on while the process runs (liveness).
pub const HEALTH_PATH: &str = "/healthcheck";

/// Why a probe failed; one line each, for the health check's log.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("'{0}' is not an http:// URL with a host")]
    Url(String),
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("no answer from {addr}: {error}")]
    Answer { addr: String, error: std::io::Error },
    #[error("{url} answered '{status}'")]
    Status { url: String, status: String },
}

/// The health URL of a herald listening on `listen`, reached from the same host: an unspecified address
/// (`0.0.0.0`, `::`) is asked on loopback.
pub fn local_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}{HEALTH_PATH}", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` and succeeds on a 200 answer, all within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let parsed = url::Url::parse(url).map_err(|_| ProbeError::Url(url.to_owned()))?;
    let host = match (parsed.scheme(), parsed.host_str()) {
        ("http", Some(host)) => host.to_owned(),
        _ => return Err(ProbeError::Url(url.to_owned())),
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|error| ProbeError::Resolve {
            host: host.clone(),
            error,
        })?
        .collect();
    let authority = format!("{host}:{port}");
    let mut stream = connect(&addrs, &authority, deadline)?;
    let target = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let answer = |error| ProbeError::Answer {
        addr: authority.clone(),
        error,
    };
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .map_err(answer)?;
    stream.write_all(request.as_bytes()).map_err(answer)?;
    stream
        .set_read_timeout(Some(remaining(deadline)))
        .map_err(answer)?;
    // Only the status line matters; it is short, so a bounded read of one line is enough.
    let mut status = String::new();
    BufReader::new(std::io::Read::take(&mut stream, 256))
        .read_line(&mut status)
        .map_err(answer)?;
    let status = status.trim_end().to_owned();
    if status.split(' ').nth(1) == Some("200") && status.starts_with("HTTP/1.") {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

/// A connection to the first of `addrs` that takes one before the deadline.
fn connect(
    addrs: &[SocketAddr],
    authority: &str,
    deadline: Instant,
) -> Result<TcpStream, ProbeError> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, remaining(deadline)) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(ProbeError::Connect {
        addr: authority.to_owned(),
        error: last,
    })
}

/// The time left until `deadline`, at least a millisecond (std refuses a zero timeout).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A one-shot server answering `answer` to the first request; returns its address and the request it read.
    fn serve_once(answer: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("an address");
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accepts");
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("reads");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(answer.as_bytes()).expect("answers");
            String::from_utf8(request).expect("text")
        });
        (addr, handle)
    }

    #[test]
    fn local_urls() {
        let cases = [
            ("0.0.0.0:3000", "http://127.0.0.1:3000/healthcheck"),
            ("[::]:80", "http://[::1]:80/healthcheck"),
            ("10.1.2.3:3000", "http://10.1.2.3:3000/healthcheck"),
        ];
        for (listen, url) in cases {
            assert_eq!(local_url(listen.parse().expect("an address")), url);
        }
    }

    #[test]
    fn a_200_passes_and_sends_a_plain_get() {
        let (addr, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        probe(
            &format!("http://{addr}/healthcheck"),
            Duration::from_secs(5),
        )
        .expect("healthy");
        let request = server.join().expect("the server ran");
        assert_eq!(
            request,
            format!("GET /healthcheck HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        );
    }

    #[test]
    fn anything_else_fails_in_one_line() {
        let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\ndraining");
        let err = probe(&format!("http://{addr}/readyz?x=1"), Duration::from_secs(5))
            .expect_err("503 is not healthy");
        assert_eq!(
            err.to_string(),
            format!("http://{addr}/readyz?x=1 answered 'HTTP/1.1 503 Service Unavailable'")
        );
        assert!(server
            .join()
            .expect("the server ran")
            .starts_with("GET /readyz?x=1 HTTP/1.1\r\n"));

        // Nothing listens on a port just released.
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let err = probe(&format!("http://{closed}/"), Duration::from_secs(5)).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {closed}: ")),
            "{err}"
        );
        for url in ["https://127.0.0.1/", "127.0.0.1:3000", "file:///etc/hosts"] {
            assert_eq!(
                probe(url, Duration::from_secs(1))
                    .expect_err(url)
                    .to_string(),
                format!("'{url}' is not an http:// URL with a host")
            );
        }
    }
}
