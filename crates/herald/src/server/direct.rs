//! WebSocket upgrades the server answers itself, before hyper. On plain TCP, a connection whose first read holds
//! a whole request that opens a new WebSocket session (`GET <engine path>?…transport=websocket`, no `sid`) goes
//! straight to the engine: no hyper connection, no axum routing, no hyper upgrade hand-over, no second task.
//! Those were a quarter of the instructions of a socket.io connect (BENCHMARKS.md, "Close to the wire").
//!
//! Everything else goes to hyper with the bytes read so far: every other request, an upgrade whose head did not
//! come whole in the first read, a head hyper would refuse. So this answers only the one request that is most
//! of a reconnect storm, and only a well-formed one (httparse, the parser hyper uses, and the `http` crate's
//! checks of every header); a refusal (403, 400, 429, 503) is written here and closes the connection.
//!
//! The first read waits at most `header_read_timeout`. A head that began in it but did not finish gets hyper's
//! deadline afresh for the rest, so a slow head has at most twice that in all.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Phase, ServeConfig};
use crate::limits::Limit;

/// A route of upgrades the server answers itself: the engine's new WebSocket sessions.
pub trait DirectUpgrades: Send + Sync + 'static {
    /// Whether a request for `path` with `query` (the target split at `?`) is one this takes.
    fn takes(&self, path: &str, query: &str) -> bool;

    /// Takes the connection for the upgrade `request`; from here its session owns it. `early`: bytes the client
    /// sent after the request. A refusal gives the connection back with the answer to write.
    fn upgrade(
        &self,
        request: Request<Body>,
        stream: TcpStream,
        early: Bytes,
    ) -> Result<(), Refused>;
}

/// An upgrade refused: the answer, and the connection to write it on.
pub struct Refused {
    pub response: Box<Response<Body>>,
    pub stream: TcpStream,
}

/// Where a connection's first request went.
pub(super) enum First {
    /// Answered here (upgraded or refused), or the connection ended before a request came.
    Served,
    /// For hyper, with the bytes read so far (none when the server began to stop before any came).
    Http(TcpStream, Bytes),
}

/// The most headers a direct upgrade may have; a request with more goes to hyper. Browsers send about 15.
const MAX_HEADERS: usize = 32;
/// The largest head read here; a longer one goes to hyper, which applies `max_header_bytes`.
const HEAD_BYTES: usize = 4096;
/// The time a refusal's answer may take to leave.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// Reads the connection's first request, within the header deadline, and answers it when it is a direct upgrade.
pub(super) async fn first_request(
    stream: TcpStream,
    peer: SocketAddr,
    route: &dyn DirectUpgrades,
    config: &ServeConfig,
    phase: &mut watch::Receiver<Phase>,
) -> First {
    let reading = async {
        loop {
            if stream.readable().await.is_err() {
                return Read::Closed;
            }
            match read_head(&stream, route, peer) {
                Read::WouldBlock => continue,
                read => return read,
            }
        }
    };
    let read = tokio::select! {
        read = tokio::time::timeout(config.header_read_timeout, reading) => read,
        // hyper closes a connection with no request when the server drains, and drops it when it stops.
        _ = phase.wait_for(|p| *p != Phase::Running) => return First::Http(stream, Bytes::new()),
    };
    match read {
        Err(_) => {
            Limit::HeaderReadTimeout.hit();
            tracing::debug!("closed a connection whose request did not come in time");
            First::Served
        }
        Ok(Read::Closed | Read::WouldBlock) => First::Served,
        Ok(Read::Http(read)) => First::Http(stream, read),
        Ok(Read::Upgrade(request, early)) => {
            if let Err(refused) = route.upgrade(request, stream, early) {
                answer(refused).await;
            }
            First::Served
        }
    }
}

/// What one read of the first request found.
#[allow(clippy::large_enum_variant)] // a return value, moved once; boxing the request would cost every upgrade
enum Read {
    WouldBlock,
    /// The client closed, or the socket failed.
    Closed,
    /// Not a direct upgrade: the bytes read.
    Http(Bytes),
    /// A direct upgrade, and any bytes after its head.
    Upgrade(Request<Body>, Bytes),
}

/// One read. The buffer is not zeroed first (`try_read_buf` fills uninitialized memory), and it is freed once
/// the head is parsed unless the bytes in it go on: to hyper, or as a frame sent behind the request.
fn read_head(stream: &TcpStream, route: &dyn DirectUpgrades, peer: SocketAddr) -> Read {
    let mut buf = BytesMut::with_capacity(HEAD_BYTES);
    let room = buf.capacity();
    match super::try_read_draining(stream, room, || stream.try_read_buf(&mut buf)) {
        Ok(0) => return Read::Closed,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::WouldBlock,
        Err(_) => return Read::Closed,
    }
    match parse(&buf, route, peer) {
        Some((request, head)) if head == buf.len() => Read::Upgrade(request, Bytes::new()),
        Some((request, head)) => Read::Upgrade(request, buf.split_off(head).freeze()),
        None => Read::Http(buf.freeze()),
    }
}

/// The request and the length of its head, when `bytes` hold the whole head of a direct upgrade.
fn parse(
    bytes: &[u8],
    route: &dyn DirectUpgrades,
    peer: SocketAddr,
) -> Option<(Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = head.parse(bytes).ok()? else {
        return None;
    };
    if head.method != Some("GET") || head.version != Some(1) {
        return None;
    }
    let target = head.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !route.takes(path, query) {
        return None;
    }
    let mut map = HeaderMap::with_capacity(head.headers.len());
    for header in head.headers.iter() {
        // A request with a body is hyper's to frame.
        if header.name.eq_ignore_ascii_case("content-length")
            || header.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
        map.append(
            HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(header.value).ok()?,
        );
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = Uri::try_from(target).ok()?;
    *request.headers_mut() = map;
    request.extensions_mut().insert(ConnectInfo(peer));
    Some((request, len))
}

/// An HTTP/1.1 response head: the status line and `headers`, and with a body's length, `content-length` and
/// `connection: close`.
pub(crate) fn head_bytes(status: StatusCode, headers: &HeaderMap, body: Option<usize>) -> Vec<u8> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(64 + size);
    let reason = status.canonical_reason().unwrap_or("");
    // Writes to a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", status.as_str());
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = body {
        let _ = write!(out, "content-length: {len}\r\nconnection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes a refusal and closes the connection.
async fn answer(refused: Refused) {
    let Refused {
        response,
        mut stream,
    } = refused;
    let (parts, body) = (*response).into_parts();
    // The engine's refusals are short, whole bodies.
    let body = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let mut out = head_bytes(parts.status, &parts.headers, Some(body.len()));
    out.extend_from_slice(&body);
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(ANSWER_DEADLINE, write).await {
        tracing::debug!(error = %e, "a refused upgrade's answer did not leave in time");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Takes `/socket.io/` and `/socket.io` for new WebSocket sessions, and refuses every upgrade.
    struct Route;

    impl DirectUpgrades for Route {
        fn takes(&self, path: &str, query: &str) -> bool {
            (path == "/socket.io/" || path == "/socket.io") && query.contains("transport=websocket")
        }

        fn upgrade(&self, _: Request<Body>, stream: TcpStream, _: Bytes) -> Result<(), Refused> {
            let mut response = Response::new(Body::from("{\"code\":3}"));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            Err(Refused {
                response: Box::new(response),
                stream,
            })
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    const UPGRADE: &str = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nCookie: a=1\r\n\r\n";

    #[test]
    fn a_whole_upgrade_is_parsed_with_its_headers_and_peer() {
        let bytes = format!("{UPGRADE}\u{81}\u{2}40");
        let (request, head) = parse(bytes.as_bytes(), &Route, peer()).unwrap();
        assert_eq!(
            head,
            UPGRADE.len(),
            "the frame after the head is not part of it"
        );
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/socket.io/");
        assert_eq!(request.uri().query(), Some("EIO=4&transport=websocket"));
        assert_eq!(request.headers()["cookie"], "a=1");
        assert_eq!(request.headers()["sec-websocket-version"], "13");
        assert_eq!(
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .unwrap()
                .0,
            peer()
        );
    }

    #[test]
    fn everything_but_a_whole_well_formed_upgrade_of_the_route_is_left_to_hyper() {
        let cases = [
            // Not whole.
            &UPGRADE[..UPGRADE.len() - 2],
            "POST /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /other/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // A header value the http crate refuses (a DEL byte).
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nX-A: a\u{7f}b\r\n\r\n",
            "not http at all\r\n\r\n",
        ];
        for case in cases {
            assert!(parse(case.as_bytes(), &Route, peer()).is_none(), "{case:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: a\r\n")).collect();
        let crowded = format!("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n{many}\r\n");
        assert!(parse(crowded.as_bytes(), &Route, peer()).is_none());
    }

    #[test]
    fn a_head_has_its_status_headers_and_the_length_of_its_body() {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        let switch = head_bytes(StatusCode::SWITCHING_PROTOCOLS, &headers, None);
        assert_eq!(
            switch,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
        let refusal = head_bytes(StatusCode::FORBIDDEN, &HeaderMap::new(), Some(12));
        assert_eq!(
            refusal,
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
        );
    }

    /// What `first_request` makes of a connection whose client sent `bytes`, and the client's end.
    async fn first_request_of(bytes: &[u8]) -> (First, TcpStream) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        let (_phase_tx, mut phase) = watch::channel(Phase::Running);
        let config = ServeConfig::default();
        let first = first_request(server, peer, &Route, &config, &mut phase).await;
        (first, client)
    }

    #[tokio::test]
    async fn a_refusal_is_answered_whole_and_the_connection_closed() {
        use tokio::io::AsyncReadExt;
        let (served, mut client) = first_request_of(UPGRADE.as_bytes()).await;
        assert!(matches!(served, First::Served));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\nconnection: close\r\n\r\n{\"code\":3}"
        );
    }

    #[tokio::test]
    async fn other_requests_reach_hyper_with_the_bytes_read() {
        let post = "POST /api/send HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        match first_request_of(post.as_bytes()).await.0 {
            First::Http(_, read) => assert_eq!(read, post.as_bytes()),
            First::Served => panic!("a publish was not left to hyper"),
        }
    }
}
