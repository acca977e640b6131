//! The embedded default until sites exist: every client joins the `public` room of `/`, and a client's
//! `publish` event is broadcast to that room. Also `GET /healthcheck`.

use std::sync::Arc;

use crate::engine::EngineConfig;
use crate::socketio::{
    self, Accepted, ConnectRequest, Decision, IncomingEvent, NamespaceHandler, Socket, Target,
};

/// The room every demo client is in.
pub const PUBLIC_ROOM: &str = "public";

struct Demo;

impl NamespaceHandler for Demo {
    fn authorize(&self, _request: ConnectRequest) -> Decision {
        Decision::Now(Ok(Accepted {
            rooms: vec![PUBLIC_ROOM.into()],
            data: None,
        }))
    }

    fn on_event(&self, socket: &Arc<Socket>, event: IncomingEvent) {
        if event.name != "publish" {
            return;
        }
        let target = Target {
            rooms: &[PUBLIC_ROOM],
            ..Target::default()
        };
        let event_name = event
            .args
            .first()
            .and_then(|v| v.as_str())
            .unwrap_or("message")
            .to_string();
        let args = event.args.get(1..).unwrap_or_default();
        let matched = socket
            .namespace()
            .broadcast(&target, &event_name, args, &event.binaries)
            .unwrap_or(0);
        if let Some(ack) = event.ack {
            ack.send(&[serde_json::json!({ "matched": matched })], &[]);
        }
    }
}

/// The demo server's routes.
pub fn router() -> axum::Router {
    let (io, engine) =
        socketio::server(EngineConfig::default(), socketio::SocketIoConfig::default());
    io.add_namespace("/", Demo);
    engine
        .router()
        .route("/healthcheck", axum::routing::get(|| async { "ok" }))
}
