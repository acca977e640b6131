//! The handlers herald's own client tests rely on (E2E_CONTRACT.md): rooms, broadcast, acks both ways, binary
//! and server-side disconnect, in every namespace.

use std::sync::Arc;
use std::time::Duration;

use herald::engine::EngineConfig;
use herald::socketio::{self, IncomingEvent, NamespaceHandler, Socket, SocketIoConfig, Target};
use serde_json::{json, Value};

pub fn router(config: EngineConfig) -> crate::suites::Served {
    let (io, engine) = socketio::server(config, SocketIoConfig::default());
    for nsp in ["/", "/custom", "/other"] {
        io.add_namespace(nsp, E2e);
    }
    crate::suites::served(engine)
}

struct E2e;

impl NamespaceHandler for E2e {
    fn authorize(&self, request: socketio::ConnectRequest) -> socketio::Decision {
        let auth = request.auth.unwrap_or_else(|| json!({}));
        socketio::Decision::Now(Ok(socketio::Accepted {
            recovery: None,
            rooms: vec![],
            data: Some(Box::new(auth)),
            ..Default::default()
        }))
    }

    fn on_connect(&self, socket: &Arc<Socket>) {
        let auth = socket.data::<Value>().cloned().unwrap_or_default();
        let _ = socket.emit("auth", &[auth]);
    }

    fn on_event(&self, socket: &Arc<Socket>, event: IncomingEvent) {
        let IncomingEvent {
            name,
            args,
            binaries,
            ack,
        } = event;
        let reply = |ack: Option<socketio::AckSender>, values: &[Value]| {
            if let Some(ack) = ack {
                ack.send(values, &[]);
            }
        };
        let first = args.first().cloned().unwrap_or(Value::Null);
        match name.as_str() {
            "message" => {
                let _ = socket.emit_binary("message-back", &args, &binaries);
            }
            "message-with-ack" | "binary-echo" => {
                if let Some(ack) = ack {
                    ack.send(&args, &binaries);
                }
            }
            "join" => {
                socket.join(first.as_str().unwrap_or_default());
                reply(ack, &[json!("ok")]);
            }
            "leave" => {
                socket.leave(first.as_str().unwrap_or_default());
                reply(ack, &[json!("ok")]);
            }
            "rooms" => reply(ack, &[json!(socket.rooms())]),
            "broadcast" => reply(ack, &[json!(broadcast(socket, &first, &binaries))]),
            "to-socket" => {
                let target = first["sid"]
                    .as_str()
                    .and_then(|sid| socket.namespace().socket(sid));
                let event = first["event"].as_str().unwrap_or("message");
                let found = target.is_some_and(|t| t.emit(event, &values(&first["args"])).is_ok());
                reply(ack, &[json!(found)]);
            }
            "ask" => ask(socket, first, ack),
            "disconnect-me" => socket.disconnect(),
            _ => {}
        }
    }
}

fn values(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn broadcast(socket: &Arc<Socket>, request: &Value, binaries: &[bytes::Bytes]) -> usize {
    let rooms: Vec<&str> = request["room"].as_str().into_iter().collect();
    let except_rooms = strings(&request["except"]);
    let include_self = request["includeSelf"].as_bool().unwrap_or(false);
    let except_sockets: Vec<&str> = if include_self {
        vec![]
    } else {
        vec![socket.id()]
    };
    let target = Target {
        rooms: &rooms,
        except_rooms: &except_rooms,
        except_sockets: &except_sockets,
        volatile: false,
    };
    let event = request["event"].as_str().unwrap_or("message");
    socket
        .namespace()
        .broadcast(&target, event, &values(&request["args"]), binaries)
        .unwrap_or(0)
}

fn ask(socket: &Arc<Socket>, request: Value, ack: Option<socketio::AckSender>) {
    let socket = Arc::clone(socket);
    tokio::spawn(async move {
        let event = request["event"].as_str().unwrap_or("ask");
        let timeout = Duration::from_millis(request["timeoutMs"].as_u64().unwrap_or(1000));
        let reply = socket
            .emit_with_ack(event, &values(&request["args"]), &[], timeout)
            .await;
        let (outcome, binaries) = match reply {
            Ok(reply) => (json!({ "ok": true, "reply": reply.args }), reply.binaries),
            Err(e) => {
                let error = match e {
                    socketio::AckError::Timeout => "timeout",
                    socketio::AckError::Disconnected => "disconnected",
                    socketio::AckError::NotSent => "not sent",
                };
                (json!({ "ok": false, "error": error }), Vec::new())
            }
        };
        if let Some(ack) = ack {
            ack.send(&[outcome], &binaries);
        }
    });
}
