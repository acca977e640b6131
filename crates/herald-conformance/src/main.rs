//! `herald-conformance`: serves exactly what the official socket.io and engine.io protocol test suites expect
//! (`--suite socket.io|engine.io`), or the handlers herald's own client tests use (`--suite e2e`).

mod e2e;
mod suites;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Suite {
    /// socketio/socket.io-protocol's test-suite.
    #[value(name = "socket.io")]
    SocketIo,
    /// socketio/engine.io-protocol's test-suite: an echo server on /engine.io/.
    #[value(name = "engine.io")]
    EngineIo,
    /// herald's own client tests (tests/js, tests/python): rooms, acks, binary, broadcast.
    E2e,
}

#[derive(Debug, Parser)]
#[command(about = "Serves herald's engine for the official protocol test suites")]
struct Args {
    /// TCP port on 127.0.0.1; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Which behaviour to serve.
    #[arg(long, value_enum, default_value = "socket.io")]
    suite: Suite,
    /// WebSocket read buffer in bytes (see EngineConfig::ws_read_buffer).
    #[arg(long)]
    ws_read_buffer: Option<usize>,
    /// WebSocket write buffer in bytes (see EngineConfig::ws_write_buffer).
    #[arg(long)]
    ws_write_buffer: Option<usize>,
}

/// The settings both official suites require.
///
/// Frames are written one per syscall, as Node's reference server does: the suites pin ws 8.5.0, which emits
/// two WebSocket messages that arrive in one TCP read in the same tick, before the suite listens for the second
/// (`40{sid}` then `42["auth",{}]`). herald's default coalesces them into one write; `--ws-write-buffer 8192`
/// shows that with ws 8.5.0 (6 of 32 socket.io tests then fail client-side) and ws 8.16.0 (all pass).
fn suite_engine_config(path: &str) -> herald::engine::EngineConfig {
    herald::engine::EngineConfig {
        path: path.into(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ws_write_buffer: 0,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald::logging::init(false, "info");
    let args = Args::parse();
    let mut config = match args.suite {
        Suite::EngineIo => suite_engine_config("/engine.io/"),
        Suite::SocketIo => suite_engine_config("/socket.io/"),
        Suite::E2e => herald::engine::EngineConfig::default(),
    };
    config.ws_read_buffer = args.ws_read_buffer.unwrap_or(config.ws_read_buffer);
    config.ws_write_buffer = args.ws_write_buffer.unwrap_or(config.ws_write_buffer);
    let (router, direct) = match args.suite {
        Suite::EngineIo => suites::engine_io(config),
        Suite::SocketIo => suites::socket_io(config),
        Suite::E2e => e2e::router(config),
    };
    let listener = herald::listener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], args.port)))
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, suite = ?args.suite, "herald-conformance listening");
    herald::server::Server::new(listener, router, herald::server::ServeConfig::default())
        .with_direct_upgrades(Some(direct))
        .run()
        .await;
    Ok(())
}
