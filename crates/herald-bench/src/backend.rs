//! The webhook backend of the `events` scenario: a tiny HTTP/1.1 server that answers `POST /events/<event>`
//! with `{"reply": [<args[0]>]}` at once, as a backend that only echoes would. It runs on its own thread with
//! its own runtime, so the socket.io clients of the generator do not delay its answers and its CPU time can be
//! read apart (`/proc/self/task/<tid>`). It counts calls whose body is not the shape herald documents
//! (`{"site", "event", "args", "socket": {"id", ...}}`), so a reference server that sends something else is
//! caught rather than measured.
//!
//! It is also the auth webhook of the `--webhook` idle and storm scenarios: `GET /auth` with `Authorization:
//! Bearer <token>` is answered as a crossroads auth webhook answers, `{"user": <sub>, "rooms": [..]}` from the
//! bench token's claims once its signature checks out, and 401 otherwise. It counts the TCP connections it
//! accepts and the most open at once, which is what a server's pool of connections to its webhook costs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::procfs;

/// What the backend saw.
#[derive(Debug, Default)]
pub struct Calls {
    pub answered: AtomicU64,
    /// Calls refused with 400: wrong path or method, or a body that is not the documented shape.
    pub bad: AtomicU64,
    /// `GET /auth` calls answered 200, and refused with 401.
    pub auth_answered: AtomicU64,
    pub auth_refused: AtomicU64,
    /// TCP connections accepted, open now, and the most open at once.
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub peak_open: AtomicU64,
}

/// Counts an open connection until dropped.
struct OpenConnection(Arc<Calls>);

impl OpenConnection {
    fn new(calls: Arc<Calls>) -> Self {
        calls.accepted.fetch_add(1, Ordering::Relaxed);
        let open = calls.open.fetch_add(1, Ordering::Relaxed) + 1;
        calls.peak_open.fetch_max(open, Ordering::Relaxed);
        OpenConnection(calls)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the auth webhook answers: it verifies the bench's HS256 client tokens, and takes `delay` to answer, as
/// a backend that looks the session up in its database does.
#[derive(Clone)]
pub struct AuthKey {
    key: Arc<jsonwebtoken::DecodingKey>,
    delay: std::time::Duration,
}

impl AuthKey {
    pub fn hs256(secret: &str, delay: std::time::Duration) -> anyhow::Result<Self> {
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes())
            .context("the JWT secret as an HS256 key")?;
        Ok(AuthKey {
            key: Arc::new(key),
            delay,
        })
    }
}

/// A running backend; dropping it stops it.
pub struct Backend {
    pub calls: Arc<Calls>,
    /// The backend thread, whose CPU time is the backend's.
    tid: u32,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Binds `addr` (here, so that a taken port fails the run at once) and serves it on a new thread.
    pub fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(addr, None)
    }

    /// [`Backend::start`], also answering `GET /auth` for tokens signed with `auth`.
    pub fn start_with(addr: SocketAddr, auth: Option<AuthKey>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the events backend to {addr}"))?;
        listener.set_nonblocking(true)?;
        let calls = Arc::new(Calls::default());
        let (stop, stopped) = oneshot::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let served = Arc::clone(&calls);
        let thread = std::thread::Builder::new()
            .name("events-backend".into())
            .spawn(move || {
                let _ = tid_tx.send(procfs::current_tid());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(serve(listener, served, auth, stopped)),
                    Err(e) => eprintln!("events backend: no runtime: {e}"),
                }
            })
            .context("starting the events backend thread")?;
        let tid = tid_rx
            .recv()
            .context("the events backend thread ended at once")??;
        Ok(Backend {
            calls,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU seconds the backend thread has used.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        procfs::thread_cpu_secs(self.tid)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    calls: Arc<Calls>,
    auth: Option<AuthKey>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("events backend: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        // Answers are one small write each; Nagle would hold them for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let calls = Arc::clone(&calls);
        let auth = auth.clone();
        let open = OpenConnection::new(Arc::clone(&calls));
        tokio::spawn(async move {
            let _open = open;
            let service = hyper::service::service_fn(move |request| {
                answer(request, Arc::clone(&calls), auth.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    calls: Arc<Calls>,
    auth: Option<AuthKey>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let (Some(key), true) = (
        auth,
        request.method() == Method::GET && request.uri().path() == "/auth",
    ) {
        let identity = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| identity_of(token, &key));
        if !key.delay.is_zero() {
            tokio::time::sleep(key.delay).await;
        }
        let (status, body) = match identity {
            Some(body) => {
                calls.auth_answered.fetch_add(1, Ordering::Relaxed);
                (StatusCode::OK, body)
            }
            None => {
                calls.auth_refused.fetch_add(1, Ordering::Relaxed);
                (StatusCode::UNAUTHORIZED, Bytes::from_static(b"{}"))
            }
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let routed = request.method() == Method::POST && request.uri().path().starts_with("/events/");
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let reply = if routed { reply_to(&body) } else { None };
    let (status, body) = match reply {
        Some(reply) => {
            calls.answered.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, reply)
        }
        None => {
            calls.bad.fetch_add(1, Ordering::Relaxed);
            (StatusCode::BAD_REQUEST, Bytes::from_static(b"{}"))
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A crossroads webhook's answer for a bench token: `{"user": <sub>, "rooms": <rooms>}`; `None` when the token
/// is not one signed with `key`.
fn identity_of(token: &str, key: &AuthKey) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        #[serde(default)]
        rooms: Vec<String>,
    }
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .ok()?
        .claims;
    let answer = json!({ "user": claims.sub, "rooms": claims.rooms });
    Some(Bytes::from(answer.to_string()))
}

/// `{"reply": [args[0]]}` for a body of the documented shape; `None` for any other body.
fn reply_to(body: &[u8]) -> Option<Bytes> {
    let call: Value = serde_json::from_slice(body).ok()?;
    let shaped = call["site"].is_string()
        && call["event"].is_string()
        && call["socket"]["id"].is_string()
        && call["socket"]["rooms"].is_array();
    let first = call["args"].as_array()?.first()?;
    let reply = json!({ "reply": [first] });
    shaped.then(|| Bytes::from(reply.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_the_first_argument() {
        let body = br#"{"site":"bench","event":"bid","args":[{"s":1,"t":2},3],
            "socket":{"id":"x","user":"u1","deviceId":null,"rooms":["x"]}}"#;
        let reply = reply_to(body).expect("a reply");
        assert_eq!(&reply[..], br#"{"reply":[{"s":1,"t":2}]}"#);
    }

    #[test]
    fn answers_as_an_auth_webhook() {
        let secret = "s3cret";
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "u1", "rooms": ["user_1"], "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("a key"),
        )
        .expect("a token");
        let answer = identity_of(
            &token,
            &AuthKey::hs256(secret, std::time::Duration::ZERO).expect("a key"),
        )
        .expect("an identity");
        assert_eq!(&answer[..], br#"{"rooms":["user_1"],"user":"u1"}"#);
        assert!(identity_of(
            &token,
            &AuthKey::hs256("other", std::time::Duration::ZERO).expect("a key")
        )
        .is_none());
        assert!(identity_of(
            "not.a.token",
            &AuthKey::hs256(secret, std::time::Duration::ZERO).expect("a key")
        )
        .is_none());
    }

    #[test]
    fn refuses_another_shape() {
        assert!(reply_to(br#"{"event":"bid","args":[1]}"#).is_none());
        assert!(reply_to(
            br#"{"site":"b","event":"bid","args":[],"socket":{"id":"x","rooms":[]}}"#
        )
        .is_none());
        assert!(reply_to(b"not json").is_none());
    }
}
