//! Shared helpers of herald's integration tests: an in-process socket.io server on 127.0.0.1:0 with a recording
//! namespace handler, a hand-written HTTP/1.1 client, and raw WebSocket clients (with and without a pump task);
//! `broker`: private brokers that the tests can restart; `herald_process`: the `herald` binary as a process;
//! `tls`: a private CA and clients that trust it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod broker;
pub mod herald_process;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald::engine::{Engine, EngineConfig};
use herald::socketio::{self, IncomingEvent, NamespaceHandler, Socket, SocketIo, SocketIoConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// The engine settings most tests use: heartbeats slow enough not to interfere, the rest at defaults.
pub fn config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(1000),
        ping_timeout: Duration::from_millis(1000),
        max_payload: 1000,
        ..EngineConfig::default()
    }
}

/// [`config`] with short heartbeats, for the tests that wait for a ping timeout.
pub fn fast_heartbeat(ping_interval: Duration, ping_timeout: Duration) -> EngineConfig {
    EngineConfig {
        ping_interval,
        ping_timeout,
        ..config()
    }
}

/// A socket's departure from the namespace, as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub socket: String,
    pub reason: &'static str,
}

/// The namespace handler of these tests, like herald-conformance's e2e one: `message` is echoed as
/// `message-back`, `message-with-ack` is acknowledged with its arguments, and every disconnect is recorded.
pub struct Recorder {
    departures: mpsc::UnboundedSender<Departure>,
}

impl NamespaceHandler for Recorder {
    fn on_event(&self, socket: &Arc<Socket>, event: IncomingEvent) {
        match event.name.as_str() {
            "message" => {
                let _ = socket.emit_binary("message-back", &event.args, &event.binaries);
            }
            "message-with-ack" => {
                if let Some(ack) = event.ack {
                    ack.send(&event.args, &event.binaries);
                }
            }
            _ => {}
        }
    }

    fn on_disconnect(&self, socket: &Arc<Socket>, reason: &'static str) {
        let _ = self.departures.send(Departure {
            socket: socket.id().to_string(),
            reason,
        });
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub io: SocketIo,
    pub engine: Engine<SocketIo>,
    pub departures: mpsc::UnboundedReceiver<Departure>,
}

impl Server {
    pub async fn start(config: EngineConfig) -> Server {
        Server::start_with(config, SocketIoConfig::default()).await
    }

    pub async fn start_with(config: EngineConfig, sio: SocketIoConfig) -> Server {
        let (io, engine) = socketio::server(config, sio);
        let (tx, departures) = mpsc::unbounded_channel();
        io.add_namespace("/", Recorder { departures: tx });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // herald's own server, which answers new WebSocket sessions before hyper (server/direct.rs).
        let direct: Arc<dyn herald::server::DirectUpgrades> = Arc::new(engine.clone());
        let server = herald::server::Server::new(listener, engine.router(), Default::default())
            .with_direct_upgrades(Some(direct));
        tokio::spawn(server.run());
        Server {
            addr,
            io,
            engine,
            departures,
        }
    }

    /// The next socket to leave namespace `/`.
    pub async fn next_departure(&mut self) -> Departure {
        timeout(WAIT, self.departures.recv())
            .await
            .expect("no socket left the namespace in time")
            .unwrap()
    }

    /// Asserts that the next socket to leave namespace `/` is `socket`, for `reason`; `context` names the case.
    pub async fn expect_departure(&mut self, socket: &str, reason: &'static str, context: &str) {
        let expected = Departure {
            socket: socket.to_string(),
            reason,
        };
        assert_eq!(self.next_departure().await, expected, "{context}");
    }

    /// Sockets connected to namespace `/`.
    pub fn connected(&self) -> usize {
        self.io.namespace("/").unwrap().len()
    }

    /// Waits until the engine holds exactly `n` sessions.
    pub async fn wait_sessions(&self, n: usize) {
        timeout(WAIT, async {
            while self.engine.session_count() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the engine holds {} sessions, expected {n}",
                self.engine.session_count()
            )
        });
    }

    /// Asserts the server still serves: a fresh polling handshake and a fresh socket.io connection over
    /// WebSocket (connect, echo) both succeed.
    pub async fn assert_alive(&self) {
        let (sid, _) = self.handshake().await;
        assert!(!sid.is_empty());
        let mut client = WsClient::connect_sio(self.addr).await;
        client.assert_echo(7).await;
        client.close().await;
    }

    /// A polling handshake: returns the sid and the open packet's JSON.
    pub async fn handshake(&self) -> (String, Value) {
        let response = http(
            self.addr,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[],
            b"",
        )
        .await;
        assert_eq!(response.status, 200, "handshake: {response:?}");
        let body = response.text();
        let json = body
            .strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {body:?}"));
        let open: Value = serde_json::from_str(json).unwrap();
        (open["sid"].as_str().unwrap().to_string(), open)
    }

    pub async fn get(&self, sid: &str) -> Response {
        http(
            self.addr,
            "GET",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            &[],
            b"",
        )
        .await
    }

    pub async fn post(&self, sid: &str, body: &[u8]) -> Response {
        http(
            self.addr,
            "POST",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body,
        )
        .await
    }

    /// Asserts the polling session `sid` is gone: a GET answers 400 `Session ID unknown`. While the server is
    /// still cleaning up, a GET may first receive the close packet `1`; nothing else is accepted.
    pub async fn assert_session_gone(&self, sid: &str) {
        timeout(WAIT, async {
            loop {
                let response = self.get(sid).await;
                if response.status == 400 {
                    assert_eq!(response.text(), UNKNOWN_SID);
                    return;
                }
                assert_eq!(
                    (response.status, response.text().as_str()),
                    (200, "1"),
                    "a closed session answered a GET with something else than a close packet"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the session was not forgotten in time");
    }
}

pub const UNKNOWN_TRANSPORT: &str = r#"{"code":0,"message":"Transport unknown"}"#;
pub const UNKNOWN_SID: &str = r#"{"code":1,"message":"Session ID unknown"}"#;
pub const BAD_HANDSHAKE_METHOD: &str = r#"{"code":2,"message":"Bad handshake method"}"#;
pub const BAD_REQUEST: &str = r#"{"code":3,"message":"Bad request"}"#;
pub const UNSUPPORTED_VERSION: &str = r#"{"code":5,"message":"Unsupported protocol version"}"#;

/// An HTTP response read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` on the publish API with `Authorization: Bearer <key>` and `body` as JSON (none when null);
/// the status and the answer, as JSON when it is, else as a string.
pub async fn api_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let response = http(addr, method, path, &headers, body.as_bytes()).await;
    let text = response.text();
    let answer = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (response.status, answer)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    timeout(WAIT, http_unbounded(addr, method, target, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {target} got no answer in time"))
}

/// [`http`] without its time limit, for requests that are meant to wait (a long poll).
pub async fn http_unbounded(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    exchange(stream, addr, method, target, headers, body).await
}

/// [`http`] from the local address `source` (any of 127.0.0.0/8 reaches a server on 127.0.0.1), for tests
/// that need clients at different addresses.
pub async fn http_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    let stream = timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    timeout(WAIT, exchange(stream, addr, method, target, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {target} got no answer in time"))
}

/// Writes one request on `stream` and reads the answer to the end.
async fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (k, v) = line.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        match headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            Some((_, len)) => {
                let len: usize = len.parse().unwrap();
                assert!(rest.len() >= len, "body cut short");
                rest[..len].to_vec()
            }
            None => rest.to_vec(),
        }
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `target` (path and query) on a socket whose receive buffer is `recv_buffer` bytes,
/// when given.
pub async fn ws_open(addr: SocketAddr, target: &str, recv_buffer: Option<u32>) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
    let url = format!("ws://{addr}{target}");
    let (ws, response) = timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake failed");
    assert_eq!(response.status(), 101);
    ws
}

/// Opens a WebSocket to `target` with extra request headers (a `Cookie`, an `Origin`).
pub async fn ws_open_with(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut request = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let (ws, response) = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake failed");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message of a raw WebSocket, answering server pings (`2`) with pongs on the way.
pub async fn ws_next_text(ws: &mut Ws) -> String {
    timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    ws.send(Message::text("3")).await.unwrap();
                }
                Some(Ok(Message::Text(text))) => return text.as_str().to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    })
    .await
    .expect("no text message in time")
}

/// Opens a v4 WebSocket session and joins namespace `/` on a raw socket; returns the engine sid and the
/// socket id.
pub async fn ws_open_sio(addr: SocketAddr, recv_buffer: Option<u32>) -> (Ws, String, String) {
    let mut ws = ws_open(addr, "/socket.io/?EIO=4&transport=websocket", recv_buffer).await;
    let open = ws_next_text(&mut ws).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    ws.send(Message::text("40")).await.unwrap();
    let reply = ws_next_text(&mut ws).await;
    let connect: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    (
        ws,
        open["sid"].as_str().unwrap().to_string(),
        connect["sid"].as_str().unwrap().to_string(),
    )
}

/// What a pumped WebSocket client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(Bytes),
    /// A close frame, then the end of the stream.
    Closed,
    /// The stream ended without a close frame, or failed (e.g. reset).
    Ended,
}

/// A WebSocket client whose task reads all the time and answers server pings, so it never times out.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    received: mpsc::UnboundedReceiver<Received>,
    pub sid: String,
    /// The socket id in namespace `/`, once joined.
    pub socket: String,
}

impl WsClient {
    /// A v4 WebSocket session, not yet in any namespace.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        let ws = ws_open(addr, "/socket.io/?EIO=4&transport=websocket", None).await;
        let mut client = WsClient::pump(ws);
        let open = client.next_text().await;
        let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        client.sid = open["sid"].as_str().unwrap().to_string();
        client
    }

    /// A v4 WebSocket session joined to namespace `/`.
    pub async fn connect_sio(addr: SocketAddr) -> WsClient {
        let mut client = WsClient::connect(addr).await;
        client.send("40");
        let reply = client.next_text().await;
        let connect: Value = serde_json::from_str(
            reply
                .strip_prefix("40")
                .unwrap_or_else(|| panic!("not a CONNECT: {reply:?}")),
        )
        .unwrap();
        client.socket = connect["sid"].as_str().unwrap().to_string();
        client
    }

    /// Hands `ws` to a task that reads it continuously.
    pub fn pump(mut ws: Ws) -> WsClient {
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (received_tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(message) => {
                            if ws.send(message).await.is_err() {
                                // The read side reports how the connection ended.
                                continue;
                            }
                        }
                        None => {
                            let _ = ws.close(None).await;
                            return;
                        }
                    },
                    message = ws.next() => {
                        let item = match message {
                            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                                let _ = ws.send(Message::text("3")).await;
                                continue;
                            }
                            Some(Ok(Message::Text(text))) => Received::Text(text.as_str().to_string()),
                            Some(Ok(Message::Binary(data))) => Received::Binary(data),
                            Some(Ok(Message::Close(_))) => Received::Closed,
                            Some(Ok(_)) => continue,
                            Some(Err(_)) | None => {
                                let _ = received_tx.send(Received::Ended);
                                return;
                            }
                        };
                        if received_tx.send(item).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        WsClient {
            out,
            received,
            sid: String::new(),
            socket: String::new(),
        }
    }

    pub fn send(&self, text: &str) {
        self.out.send(Message::text(text)).unwrap();
    }

    pub fn send_message(&self, message: Message) {
        self.out.send(message).unwrap();
    }

    pub async fn next(&mut self) -> Received {
        timeout(WAIT, self.received.recv())
            .await
            .expect("nothing received in time")
            .expect("the pump task is gone")
    }

    /// The next thing received within `wait`, or `None`: for readers that wait longer than [`WAIT`] (a broker
    /// restarting).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        timeout(wait, self.received.recv()).await.ok().flatten()
    }

    pub async fn next_text(&mut self) -> String {
        match self.next().await {
            Received::Text(text) => text,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until the connection ends; returns the text messages received before (pings excluded) and
    /// whether a close frame came.
    pub async fn until_closed(&mut self) -> (Vec<String>, bool) {
        let mut texts = Vec::new();
        let mut close_frame = false;
        loop {
            match self.next().await {
                Received::Text(text) => texts.push(text),
                Received::Binary(data) => panic!("unexpected binary message {data:?}"),
                Received::Closed => close_frame = true,
                Received::Ended => return (texts, close_frame),
            }
        }
    }

    /// Asserts the server closed this session because of something the client did: it announces the close
    /// with a close packet `1`, then closes the WebSocket with a close frame.
    pub async fn assert_closed_by_server(&mut self) {
        let (texts, close_frame) = self.until_closed().await;
        assert_eq!(texts, ["1"], "texts before the close");
        assert!(close_frame, "the server sent no close frame");
    }

    /// Emits `message` with `n` and expects it echoed as `message-back`.
    pub async fn assert_echo(&mut self, n: u64) {
        self.send(&format!(r#"42["message",{n}]"#));
        assert_eq!(self.next_text().await, format!(r#"42["message-back",{n}]"#));
    }

    pub async fn close(self) {
        drop(self.out);
    }
}

/// Builds the gateway for `config`, its data directory in a fresh temp dir (mailboxes stay out of the source
/// tree), and serves it as `herald serve` does, with the configured limits (and TLS), on 127.0.0.1:0.
pub async fn start_gateway(
    mut config: herald::config::Config,
) -> (SocketAddr, herald::gateway::Gateway) {
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let gateway = herald::gateway::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(herald::lifecycle::server(&gateway, listener, &config).run());
    (addr, gateway)
}

/// A v4 WebSocket client with `query` on its handshake that sends CONNECT to namespace `nsp` (`/shop`);
/// returns it and the first packet the server sends for that namespace (the CONNECT or CONNECT_ERROR).
pub async fn join_namespace(addr: SocketAddr, nsp: &str, query: &str) -> (WsClient, String) {
    let ws = ws_open(
        addr,
        &format!("/socket.io/?EIO=4&transport=websocket&{query}"),
        None,
    )
    .await;
    let mut client = WsClient::pump(ws);
    assert!(client.next_text().await.starts_with("0{"));
    client.send(&format!("40{nsp},"));
    let prefix = format!("{nsp},");
    loop {
        let packet = client.next_text().await;
        if packet.starts_with('4') && packet.contains(&prefix) {
            return (client, packet);
        }
    }
}

/// A TCP relay to a local service that the test can cut: while cut, it closes every connection and each new
/// one, so herald's client fails at once, and connects again once the relay is restored. It counts the
/// connections it accepted while not cut.
pub struct Relay {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// A relay to 127.0.0.1:`port`.
    pub async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let (cut, _) = tokio::sync::watch::channel(false);
        let watch = cut.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = watch.subscribe();
                if *cut.borrow() {
                    continue;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(mut service) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut service) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            accepted,
        }
    }

    /// The relay's address as `scheme://[credentials@]host:port` followed by `rest`.
    pub fn url(&self, scheme_and_credentials: &str, rest: &str) -> String {
        format!("{scheme_and_credentials}{}{rest}", self.addr)
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// How many connections the relay passed on.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}
