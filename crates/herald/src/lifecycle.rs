//! herald's life as a process: serve the gateway until a signal, then stop in steps that all end within
//! `shutdown_grace_ms`, whatever the clients do.
//!
//! 1. Drain notice, `drain_delay_ms`: `/readyz` answers 503 and new sessions are refused, while the listener
//!    stays open so load balancers can see it.
//! 2. Drain: the listener closes, every session is closed (clients reconnect elsewhere), each HTTP
//!    connection ends after its current request, and the broker bridges stop (at most 3 s).
//! 3. Hard deadline, at `shutdown_grace_ms` from the signal: whatever is left is dropped.
//!
//! SIGHUP reloads what can change under a running herald (`reload`), and stops nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::gateway::{Gateway, ReloadError, ReloadReport};
use crate::server::{ServeConfig, Server};

/// The longest the bridges may take to stop.
const BRIDGE_STOP: Duration = Duration::from_secs(3);

/// The per-connection limits of `config`.
pub fn serve_config(config: &Config) -> ServeConfig {
    let limits = &config.server.limits;
    ServeConfig {
        header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
        max_connections: limits.max_http_connections,
        max_header_bytes: limits.max_header_bytes,
    }
}

/// The server of `gateway` on `listener`, as `herald serve` runs it: every route, the configured limits and TLS,
/// and the engine's new WebSocket sessions answered before hyper.
pub fn server(gateway: &Gateway, listener: TcpListener, config: &Config) -> Server {
    Server::new(listener, gateway.router(), serve_config(config))
        .with_tls(gateway.tls.clone())
        .with_direct_upgrades(Some(Arc::new(gateway.engine.clone())))
}

/// Serves `gateway` on `listener` until `signal` resolves, then shuts down in the steps above.
pub async fn run(
    gateway: Gateway,
    listener: TcpListener,
    config: &Config,
    signal: impl Future<Output = ()>,
) {
    let reloads = reload_on_hangup(&gateway);
    let server = server(&gateway, listener, config);
    let control = server.control();
    let mut serving = tokio::spawn(server.run());
    tokio::select! {
        () = signal => {}
        _ = &mut serving => {
            stop_reloads(reloads);
            return;
        }
    }
    let started = tokio::time::Instant::now();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let deadline = started + grace;
    tracing::info!(
        drain_delay_ms = config.server.drain_delay_ms,
        grace_ms = config.server.shutdown_grace_ms,
        "shutting down: /readyz answers 503, new sessions are refused"
    );
    gateway.set_draining();
    tokio::time::sleep(Duration::from_millis(config.server.drain_delay_ms)).await;
    tracing::info!("draining: the listener is closed, closing every session");
    control.drain();
    gateway.close_all();
    // No client is left to publish to: the bridges stop taking messages (and the MQTT bridge removes its
    // session from the broker, which would otherwise queue messages for this process).
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    gateway.stop_bridges(remaining.min(BRIDGE_STOP)).await;
    gateway
        .drained(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if tokio::time::timeout_at(deadline, &mut serving)
        .await
        .is_err()
    {
        control.stop();
        let _ = serving.await;
    }
    if let Some(registry) = &gateway.registry {
        registry.deregister().await;
    }
    stop_reloads(reloads);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shut down"
    );
}

/// Listens for SIGHUP and runs [`reload`] at each one; the one place herald listens to it. The handler is in
/// place when this returns, so a SIGHUP no longer ends the process (its default). `None` when it cannot be
/// installed (logged).
pub fn reload_on_hangup(gateway: &Gateway) -> Option<tokio::task::JoinHandle<()>> {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: nothing will reload");
            return None;
        }
    };
    let gateway = gateway.clone();
    Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            if let Err(e) = reload(&gateway).await {
                tracing::error!(reason = %e, "reload refused; the running configuration goes on");
            }
        }
    }))
}

/// Ends the SIGHUP task of a server that returned (it holds a clone of the gateway).
fn stop_reloads(reloads: Option<tokio::task::JoinHandle<()>>) {
    if let Some(reloads) = reloads {
        reloads.abort();
    }
}

/// Re-reads what can change without a restart: the TLS certificate, then the configuration and its sites
/// ([`Gateway::reload_from_sources`]). Each step logs its outcome in one line, and one that fails keeps what it
/// had. SIGHUP and `POST /api/v1/admin/reload` run it.
pub async fn reload(gateway: &Gateway) -> Result<ReloadReport, ReloadError> {
    reload_tls(gateway);
    gateway.reload_from_sources().await
}

/// The certificate and key files of `server.tls`: new handshakes get the new certificate, open connections
/// keep theirs.
fn reload_tls(gateway: &Gateway) {
    let Some(tls) = &gateway.tls else {
        return;
    };
    match tls.reload() {
        Ok(()) => tracing::info!(
            cert = %tls.files().cert.display(),
            "reloaded the TLS certificate: new connections get it"
        ),
        Err(error) => tracing::warn!(%error, "kept the TLS certificate in use"),
    }
}
