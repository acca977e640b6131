//! herald: a real-time push gateway. This library holds the socket.io-compatible server (`engine` for
//! Engine.IO transports, `socketio` for namespaces, rooms and acks); the binary is a thin shell over it.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bridges;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod events;
/// Pure entry points for the fuzz targets in `crates/herald/fuzz`; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod kit;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod mailbox;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod plain;
mod prefetch;
pub mod probe;
pub mod publish;
pub mod rate;
mod recovery;
pub mod retained;
pub mod secret;
pub mod server;
pub mod sites;
pub mod socketio;
pub mod tls;

/// The wire codecs, re-exported so users of the engine need no second dependency.
pub use herald_protocol as protocol;
