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
}

/// The settings both official suites require.
fn suite_engine_config(path: &str) -> herald::engine::EngineConfig {
    herald::engine::EngineConfig {
        path: path.into(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let router = match args.suite {
        Suite::EngineIo => suites::engine_io(suite_engine_config("/engine.io/")),
        Suite::SocketIo => suites::socket_io(suite_engine_config("/socket.io/")),
        Suite::E2e => e2e::router(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, suite = ?args.suite, "herald-conformance listening");
    axum::serve(listener, router).await.context("serving")?;
    Ok(())
}
