//! The server under test: where its socket.io endpoint and publish API are, and how a client proves who it is
//! (an HS256 JWT naming its rooms, as a backend would mint it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// Every server in the comparison offers the same site: namespace `/<site>`, JWT auth whose `rooms` claim lists
/// the rooms to join, and crossroads' `POST /send?site=&apiKey=`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub site: String,
    pub api_key: String,
    jwt_key: EncodingKey,
    /// Source addresses 127.0.0.1.. 127.0.0.<sources>, used round-robin so that more connections than one
    /// address has ephemeral ports (~28k) fit on one machine.
    sources: u8,
    pub transport: Transport,
    /// One HTTP client per source address, for polling clients.
    http: Vec<reqwest::Client>,
}

/// How subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// socket.io v5 over WebSocket.
    Websocket,
    /// socket.io v5 over HTTP long-polling.
    Polling,
    /// herald's plain WebSocket, `GET /ws/<site>`: JSON text frames, no socket.io.
    PlainWs,
    /// herald's Server-Sent Events, `GET /sse/<site>`.
    Sse,
}

impl Transport {
    /// Whether clients speak herald's plain protocol rather than socket.io (herald only).
    pub fn is_plain(self) -> bool {
        matches!(self, Transport::PlainWs | Transport::Sse)
    }

    /// How the transport is named in a variant, after the sizes (empty for socket.io over WebSocket).
    pub fn label(self) -> &'static str {
        match self {
            Transport::Websocket => "",
            Transport::Polling => ", polling",
            Transport::PlainWs => ", plain WebSocket",
            Transport::Sse => ", SSE",
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    rooms: &'a [String],
    exp: u64,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        site: String,
        api_key: String,
        jwt_secret: &str,
        sources: u8,
        transport: Transport,
    ) -> anyhow::Result<Self> {
        let sources = sources.max(1);
        let http = (1..=sources)
            .map(|host| {
                reqwest::Client::builder()
                    .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
                    .tcp_nodelay(true)
                    .build()
                    .context("building a polling HTTP client")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Target {
            addr,
            site,
            api_key,
            jwt_key: EncodingKey::from_secret(jwt_secret.as_bytes())
                .context("the JWT secret is not usable")?,
            sources,
            transport,
            http,
        })
    }

    /// The HTTP client bound to the source address of the `i`th connection.
    pub fn http(&self, i: usize) -> &reqwest::Client {
        &self.http[i % self.http.len()]
    }

    /// How many source addresses connections are spread over.
    pub fn source_count(&self) -> usize {
        usize::from(self.sources)
    }

    /// The source address of the `i`th connection.
    pub fn source(&self, i: usize) -> SocketAddr {
        let host = 1 + (i % usize::from(self.sources)) as u8;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0)
    }

    /// A token for user `sub` in `rooms`, valid for a day.
    pub fn token(&self, sub: &str, rooms: &[String]) -> anyhow::Result<String> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs()
            + 86_400;
        jsonwebtoken::encode(
            &Header::default(),
            &Claims { sub, rooms, exp },
            &self.jwt_key,
        )
        .context("signing a token")
    }

    pub fn namespace(&self) -> String {
        format!("/{}", self.site)
    }

    /// The path and query of a plain endpoint (`/ws/<site>` or `/sse/<site>`) for a client with `token`. A JWT
    /// is base64url and dots, so it goes in the query as it is.
    pub fn plain_path(&self, endpoint: &str, token: &str) -> String {
        format!("/{endpoint}/{}?token={token}", self.site)
    }

    pub fn send_url(&self) -> String {
        format!(
            "http://{}/send?site={}&apiKey={}",
            self.addr, self.site, self.api_key
        )
    }
}
