//! Reference server for herald-bench, built on socketioxide.
//!
//! Behaves like herald's benchmark site (see bench/reference/README.md): namespace `/bench` admits a client whose
//! HS256 JWT verifies with `BENCH_JWT_SECRET` and joins it to the token's `rooms` before the CONNECT ack;
//! `POST /send?site=bench&apiKey=KEY` emits `{event, args}` to the union of `rooms`; `GET /healthcheck` answers 200.
//! Nothing is logged per connection or message, so logging does not weigh on the CPU figures.
//!
//! With `REDIS_URL` set it is one node of a cluster (scripts/bench-cluster.sh): socketioxide-redis's adapter on
//! the `redis` crate, so a `POST /send` on any node reaches the clients of every node through Redis pub/sub.
//! Engine.IO sessions stay on the node that opened them (polling needs sticky sessions).

use std::fmt;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use socketioxide_redis::drivers::redis::redis_client as redis;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

const NAMESPACE: &str = "/bench";
const SITE: &str = "bench";
/// Clock skew allowed on `exp`, the same as herald's JWT check.
const LEEWAY_SECS: u64 = 60;
/// Packets queued per socket before emits to it fail: herald's default outbox limit in frames.
const OUTBOX_FRAMES: usize = 1024;

/// What the `/bench` middleware and `/send` need; shared behind an `Arc`, so cloning is cheap.
struct Shared {
    key: DecodingKey,
    validation: Validation,
    api_key: String,
}

#[derive(Deserialize)]
struct Auth {
    token: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    rooms: Vec<String>,
}

/// Why a `/bench` connect is refused; the text is the CONNECT_ERROR message.
#[derive(Debug)]
enum Refusal {
    MissingToken,
    InvalidToken,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::MissingToken => "missing token",
            Refusal::InvalidToken => "invalid token",
        })
    }
}

/// Checks the token (auth payload first, then `?token=`) and joins its rooms; the socket is not in the
/// namespace yet, so a publish that follows the client's CONNECT ack always finds it in its rooms.
async fn authenticate<A: Adapter>(
    shared: Arc<Shared>,
    s: SocketRef<A>,
    auth: Option<Auth>,
) -> Result<(), Refusal> {
    let token = match auth.and_then(|a| a.token) {
        Some(token) => token,
        None => query_token(s.req_parts().uri.query()).ok_or(Refusal::MissingToken)?,
    };
    let claims = jsonwebtoken::decode::<Claims>(&token, &shared.key, &shared.validation)
        .map_err(|_| Refusal::InvalidToken)?
        .claims;
    s.join(claims.rooms);
    Ok(())
}

/// `token` from the handshake query. A JWT is base64url and dots, so it needs no percent-decoding.
fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

#[derive(Deserialize)]
struct SendQuery {
    site: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct SendBody {
    rooms: OneOrMany<String>,
    event: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// Serializes as a tuple, which socketioxide emits as that many separate socket.io arguments.
struct Args(Vec<Value>);

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for arg in &self.0 {
            tuple.serialize_element(arg)?;
        }
        tuple.end()
    }
}

struct AppState<A: Adapter> {
    shared: Arc<Shared>,
    io: SocketIo<A>,
}

impl<A: Adapter> Clone for AppState<A> {
    fn clone(&self) -> Self {
        AppState {
            shared: self.shared.clone(),
            io: self.io.clone(),
        }
    }
}

async fn send<A: Adapter>(
    State(state): State<AppState<A>>,
    Query(query): Query<SendQuery>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    if query.site.as_deref() != Some(SITE)
        || query.api_key.as_deref() != Some(&state.shared.api_key)
    {
        return (StatusCode::FORBIDDEN, "Forbidden");
    }
    let Ok(body) = serde_json::from_slice::<SendBody>(&body) else {
        return (StatusCode::BAD_REQUEST, "Bad Request");
    };
    let rooms = match body.rooms {
        OneOrMany::One(room) => vec![room],
        OneOrMany::Many(rooms) => rooms,
    };
    // No rooms means nobody: socketioxide would read an empty room list as the whole namespace.
    if rooms.is_empty() {
        return (StatusCode::OK, "OK");
    }
    let Some(ns) = state.io.of(NAMESPACE) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let ns = ns.to(rooms);
    // A broadcast error names sockets whose queue was full or closed; the others got the event, so it is
    // still a 200.
    let _ = match body.args {
        None | Some(Value::Null) => ns.emit(&body.event, &Args(Vec::new())).await,
        Some(Value::Array(args)) => ns.emit(&body.event, &Args(args)).await,
        Some(one) => ns.emit(&body.event, &one).await,
    };
    (StatusCode::OK, "OK")
}

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => {
            eprintln!("{name} must be set");
            std::process::exit(64);
        }
    }
}

/// Defines `/bench` on `$io`: the token middleware, then nothing (the server ignores client events). A macro
/// because the local adapter answers at once and the Redis adapter with a future to await.
macro_rules! bench_namespace {
    ($io:expr, $shared:expr) => {{
        let middleware_shared = $shared.clone();
        $io.ns(
            NAMESPACE,
            (async |_: SocketRef<_>| {}).with(move |s: SocketRef<_>, TryData(auth): TryData<Auth>| {
                let shared = middleware_shared.clone();
                async move { authenticate(shared, s, auth.ok()).await }
            }),
        )
    }};
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = env("PORT").parse().unwrap_or_else(|_| {
        eprintln!("PORT must be a port number");
        std::process::exit(64);
    });
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let shared = Arc::new(Shared {
        key: DecodingKey::from_secret(env("BENCH_JWT_SECRET").as_bytes()),
        validation,
        api_key: env("BENCH_API_KEY"),
    });

    // socketioxide's defaults otherwise (path, heartbeat 25 s / 20 s, both transports); its outbound queue
    // defaults to 128 packets per socket, raised to herald's outbox limit of 1024 frames.
    let builder = SocketIo::builder().max_buffer_size(OUTBOX_FRAMES);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    match std::env::var("REDIS_URL").ok().filter(|url| !url.is_empty()) {
        None => {
            let (layer, io) = builder.build_layer();
            // The local adapter's namespace is ready at once.
            bench_namespace!(io, shared);
            serve(layer, io, shared, listener).await
        }
        Some(url) => {
            // The adapter's drivers speak RESP3 (Redis 7+).
            let url = if url.contains("protocol=") {
                url
            } else {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}protocol=resp3")
            };
            let client = redis::Client::open(url)?;
            let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
            let (layer, io) = builder
                .with_adapter::<RedisAdapter<_>>(adapter)
                .build_layer();
            // The Redis adapter's namespace subscribes to its channels first.
            bench_namespace!(io, shared).await?;
            serve(layer, io, shared, listener).await
        }
    }
}

async fn serve<A: Adapter>(
    layer: SocketIoLayer<A>,
    io: SocketIo<A>,
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
) -> Result<(), Box<dyn std::error::Error>> {
    let app = Router::new()
        .route("/send", post(send::<A>))
        .route("/healthcheck", get(async || "OK"))
        .with_state(AppState { shared, io })
        .layer(layer);

    println!("listening on 127.0.0.1:{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}
