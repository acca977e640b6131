//! Mailbox benchmark: entries persisted per second by a store (embedded redb, or Redis), and the time a device
//! takes to get 10k pending entries replayed to it through a real WebSocket, end to end.
//!
//! `cargo bench -p herald --bench mailbox -- [--redis redis://127.0.0.1:6379/] [--appends N] [--writers C]
//! [--pending N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use herald::auth::{AuthConfig, JwtConfig};
use herald::config::{Config, MailboxStoreKind, SiteConfig};
use herald::mailbox::embedded::EmbeddedStore;
use herald::mailbox::redis::RedisStore;
use herald::mailbox::store::{Caps, DeviceKey, MailboxStore, NewEntry};
use herald::secret::Secret;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-0123456789abcdef0123";
const PAYLOAD: &[u8] = br#"["n",{"seq":12345,"body":"a message of about one hundred bytes, as the benchmark issue asks..."}]"#;

struct Options {
    redis: Option<String>,
    appends: usize,
    writers: usize,
    pending: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        redis: None,
        appends: 20_000,
        writers: 64,
        pending: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a flag needs a value");
        match arg.as_str() {
            "--redis" => o.redis = Some(value()?),
            "--appends" => o.appends = value()?.parse()?,
            "--writers" => o.writers = value()?.parse()?,
            "--pending" => o.pending = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let dir = std::env::temp_dir().join(format!("herald-mailbox-bench-{}", std::process::id()));
    let store: Arc<dyn MailboxStore> = match &o.redis {
        Some(url) => Arc::new(RedisStore::connect(url, &herald::tls::Trust::system()).await?),
        None => Arc::new(EmbeddedStore::open(&dir.join("mailbox.redb"))?),
    };
    let kind = if o.redis.is_some() {
        "redis"
    } else {
        "embedded"
    };
    let per_second = appends_per_second(&store, o.appends, o.writers).await?;
    println!(
        "{kind}: {} appends by {} concurrent writers: {per_second:.0} entries persisted/s",
        o.appends, o.writers
    );
    drop(store);
    let took = replay(&o, &dir).await?;
    println!(
        "{kind}: replay of {} pending entries to one device over WebSocket: {:.1} ms",
        o.pending,
        took.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `writers` tasks append `appends` entries in all, each to its own user's one device.
async fn appends_per_second(
    store: &Arc<dyn MailboxStore>,
    appends: usize,
    writers: usize,
) -> anyhow::Result<f64> {
    let site = format!("bench{}", std::process::id());
    for w in 0..writers {
        store
            .connect(&DeviceKey::new(&site, &format!("user_{w}"), "d"), &[])
            .await?;
    }
    let caps = Caps {
        max_entries: u64::MAX,
        max_bytes: u64::MAX,
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = Arc::clone(store);
            let site = site.clone();
            let users = vec![format!("user_{w}")];
            let count = appends / writers + usize::from(w < appends % writers);
            tokio::spawn(async move {
                let entry = NewEntry {
                    event: "n",
                    payload: PAYLOAD,
                    resync: false,
                };
                for _ in 0..count {
                    store.append(&site, &users, entry, caps).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(appends as f64 / started.elapsed().as_secs_f64())
}

/// Fills one device's mailbox with `pending` entries, then times a WebSocket client from its CONNECT to the
/// ack of the last `_batch` page.
async fn replay(o: &Options, dir: &std::path::Path) -> anyhow::Result<Duration> {
    let mut config = Config::default();
    config.server.data_dir = dir.join("gateway");
    if let Some(url) = &o.redis {
        config.server.redis_url = Some(url.clone());
        config.server.mailbox.store = Some(MailboxStoreKind::Redis);
    }
    let jwt = JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new(SECRET)),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    };
    let mut site = SiteConfig::new("app".into());
    site.api_keys = vec![Secret::new("bench-key-0123456789")];
    site.auth = AuthConfig::Jwt(jwt.clone());
    site.user_room_prefix = Some("user_".into());
    config.sites = vec![site];
    let gateway = herald::gateway::build(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = gateway.router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let user = format!("r{}", std::process::id());
    let room = format!("user_{user}");
    let mailbox = gateway
        .sites
        .get("app")
        .and_then(|s| s.mailbox.clone())
        .context("the site keeps mailboxes")?;
    mailbox
        .store()
        .connect(&DeviceKey::new("app", &room, "phone"), &[])
        .await?;
    let users = vec![room.clone()];
    for _ in 0..o.pending {
        mailbox.deliver("app", &users, "n", PAYLOAD, false).await?;
    }
    let token = herald::auth::jwt::mint(&jwt, &user, &[room], Duration::from_secs(600))?;

    let stream = tokio::net::TcpStream::connect(addr).await?;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    ws.next().await.context("open packet")??;
    let started = Instant::now();
    let connect = format!(r#"40/app,{{"token":"{token}","deviceId":"phone"}}"#);
    ws.send(Message::text(connect)).await?;
    let mut received = 0;
    while received < o.pending {
        let frame = ws.next().await.context("server closed")??;
        let Message::Text(text) = frame else { continue };
        let Some(rest) = text.strip_prefix("42/app,") else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let body: serde_json::Value = serde_json::from_str(&rest[digits..])?;
        if body[0] == "_batch" {
            received += body[1].as_array().map_or(0, Vec::len);
            ws.send(Message::text(format!("43/app,{}[]", &rest[..digits])))
                .await?;
        }
    }
    Ok(started.elapsed())
}
