//! The servers the official suites test: an Engine.IO echo server, and the socket.io-protocol suite's
//! namespaces and handlers.

use std::sync::Arc;

use herald::engine::{CloseReason, Engine, EngineConfig, EngineHandler, Message, Session};
use herald::socketio::{self, IncomingEvent, NamespaceHandler, Socket, SocketIoConfig};
use herald_protocol_frames::echo_frame;

/// Echoes every message back, text as text and binary as binary.
struct Echo;

impl EngineHandler for Echo {
    type Conn = ();

    fn new_conn(
        &self,
        _request: &http::request::Parts,
        _version: herald_protocol_frames::Version,
        _transport: herald::engine::Transport,
    ) {
    }

    fn on_open(&self, _session: &Arc<Session<()>>) {}

    fn on_message(&self, session: &Arc<Session<()>>, message: Message<'_>) {
        let _ = session.send(echo_frame(message));
    }

    fn on_close(&self, _session: &Arc<Session<()>>, _reason: CloseReason) {}
}

/// What a suite serves: the engine's routes, and its new WebSocket sessions, which herald's server answers
/// before hyper as `herald serve` does.
pub type Served = (axum::Router, Arc<dyn herald::server::DirectUpgrades>);

/// `engine`'s routes and direct upgrades.
pub fn served<H: EngineHandler>(engine: Engine<H>) -> Served {
    (engine.router(), Arc::new(engine))
}

pub fn engine_io(config: EngineConfig) -> Served {
    served(Engine::new(config, Echo))
}

/// `/` and `/custom` of the socket.io-protocol suite (its README's reference server, connectTimeout 1000 ms):
/// both greet with the `auth` payload; `/` echoes.
struct SuiteNamespace {
    echo: bool,
}

impl NamespaceHandler for SuiteNamespace {
    fn authorize(&self, request: socketio::ConnectRequest) -> socketio::Decision {
        let auth = request.auth.unwrap_or_else(|| serde_json::json!({}));
        socketio::Decision::Now(Ok(socketio::Accepted {
            recovery: None,
            rooms: vec![],
            data: Some(Box::new(auth)),
            ..Default::default()
        }))
    }

    fn on_connect(&self, socket: &Arc<Socket>) {
        let auth = socket
            .data::<serde_json::Value>()
            .cloned()
            .unwrap_or_default();
        let _ = socket.emit("auth", &[auth]);
    }

    fn on_event(&self, socket: &Arc<Socket>, event: IncomingEvent) {
        if !self.echo {
            return;
        }
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
}

pub fn socket_io(config: EngineConfig) -> Served {
    let (io, engine) = socketio::server(
        config,
        SocketIoConfig {
            connect_timeout: std::time::Duration::from_millis(1000),
            ..Default::default()
        },
    );
    io.add_namespace("/", SuiteNamespace { echo: true });
    io.add_namespace("/custom", SuiteNamespace { echo: false });
    served(engine)
}

mod herald_protocol_frames {
    //! The one conversion the echo server needs: a received message back into a frame.
    use herald::engine::Message;
    use herald::protocol::engineio::OutFrame;
    pub use herald::protocol::engineio::Version;

    pub fn echo_frame(message: Message<'_>) -> OutFrame {
        match message {
            Message::Text(text) => OutFrame::text(format!("4{text}")),
            Message::Binary(data) => OutFrame::Binary(data),
        }
    }
}
