//! herald as a drop-in for crossroads: the real `herald` binary started with no flag in a directory holding
//! crossroads' `config.yml` and `sites.yml`, as crossroads was started, with crossroads' environment variables.
//! A socket.io client connects and gets what crossroads' `POST /send` publishes; a broken `config.yml` stops
//! herald in one line before any port is bound; `check-config` shows the environment over the file.

mod common;

use std::time::Duration;

use common::herald_process::{self, HeraldProcess, ScratchDir};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "shop-key-0123456789";

/// A crossroads `config.yml` with two environments; `production` holds keys herald has no use for.
const CONFIG_YML: &str = "\
development:
  port: 1
production:
  port: 80
  device_ttl: 120
  io:
    pingTimeout: 7000
    pingInterval: 3000
  flakeid:
    datacenter: 0
    worker: 0
  servers:
    - deployer@hidden-host.example.com
";

const SITES_YML: &str = "\
shop:
  apiKey: shop-key-0123456789
  publicChannel: news
";

#[tokio::test]
async fn crossroads_directory_with_port_from_the_environment() {
    let dir = ScratchDir::new("crossroads-dropin");
    dir.write("config.yml", CONFIG_YML);
    dir.write("sites.yml", SITES_YML);
    // PORT=0: any free port, chosen by the kernel; the address stays config.yml's (every interface).
    let herald = HeraldProcess::start(herald_process::command(dir.path(), &[("PORT", "0")], &[]));
    assert!(herald.listen.ip().is_unspecified(), "{}", herald.listen);
    let lines = herald.lines();
    let text = lines.join("\n");
    let ignored: Vec<_> = (lines.iter())
        .filter(|l| l.contains("herald has no use for"))
        .collect();
    assert_eq!(
        ignored.len(),
        1,
        "one warning for the ignored keys:\n{text}"
    );
    assert!(
        ignored[0].contains("WARN")
            && ignored[0].contains(
                "config.yml: herald has no use for production.flakeid, production.servers; ignored"
            ),
        "{text}"
    );
    assert!(
        !text.contains("hidden-host") && !text.contains("datacenter"),
        "{text}"
    );
    for note in [
        "config.yml: found in the working directory, read as crossroads' config.yml (section production)",
        "sites.yml: found in the working directory, read as crossroads' sites.yml",
        "config.yml: production.port is overridden by PORT",
    ] {
        assert!(text.contains(note), "no '{note}' in:\n{text}");
    }

    // A socket.io client: the engine's handshake carries config.yml's io settings.
    let addr = herald.addr();
    let mut ws = common::ws_open(addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    let open = common::ws_next_text(&mut ws).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("an open packet"))
        .expect("the open packet's JSON");
    assert_eq!(
        (open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()),
        (Some(3000), Some(7000)),
        "{open}"
    );
    ws.send(Message::text("40/shop,"))
        .await
        .expect("sends CONNECT");
    let connect = common::ws_next_text(&mut ws).await;
    assert!(connect.starts_with("40/shop,{\"sid\""), "{connect}");

    // crossroads' publish call reaches it in the site's public channel.
    let sent = common::http(
        addr,
        "POST",
        &format!("/send?site=shop&apiKey={KEY}"),
        &[("Content-Type", "application/json")],
        br#"{"rooms":["news"],"event":"headline","args":[{"n":1}]}"#,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let event = common::ws_next_text(&mut ws).await;
    assert!(
        event.starts_with(r#"42/shop,["headline",{"n":1}"#),
        "{event}"
    );

    // config.yml's device_ttl is the site's, as check-config shows in the same directory.
    let shown = herald_process::run(
        herald_process::command(dir.path(), &[("PORT", "0")], &["check-config"]),
        Duration::from_secs(30),
    );
    assert!(shown.status.success(), "{shown:?}");
    let config: Value = serde_yaml_ng::from_slice(&shown.stdout).expect("check-config prints YAML");
    assert_eq!(config["sites"][0]["name"], "shop");
    assert_eq!(config["sites"][0]["device_ttl_secs"], 120);
    assert_eq!(config["server"]["listen"], "0.0.0.0:0");
}

#[test]
fn a_broken_config_yml_stops_herald_in_one_line() {
    let dir = ScratchDir::new("crossroads-broken");
    dir.write(
        "config.yml",
        "production:\n  port: 80\n  redis:\n    url: http://user:s3cret@cache.example/\n",
    );
    let out = herald_process::run(
        herald_process::command(dir.path(), &[("PORT", "0")], &[]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        "herald: config.yml: production.redis.url: expected a redis:// or rediss:// URL\n"
    );
    // Nothing else was said: no log line, no address, no demo key.
    assert!(out.stdout.is_empty(), "{out:?}");

    // Named by the environment, the file is checked the same way.
    let elsewhere = ScratchDir::new("crossroads-named");
    let out = herald_process::run(
        herald_process::command(
            elsewhere.path(),
            &[
                (
                    "HERALD_CROSSROADS_CONFIG",
                    &dir.path().join("config.yml").display().to_string(),
                ),
                ("NODE_ENV", "staging"),
            ],
            &["check-config"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "herald: {}: no `staging` section (NODE_ENV picks the section, production by default); its \
             sections: production\n",
            dir.path().join("config.yml").display()
        )
    );
}

#[test]
fn environment_over_config_yml() {
    let dir = ScratchDir::new("crossroads-env");
    dir.write(
        "config.yml",
        "production:\n  port: 80\nstaging:\n  port: 8080\n  redis:\n    url: rediss://:s3cret@file-host:6380/0\n",
    );
    // A site of its own, so no demo key is generated and printed before the YAML.
    dir.write("sites.yml", SITES_YML);
    let check = |env: &[(&str, &str)]| {
        let out = herald_process::run(
            herald_process::command(dir.path(), env, &["check-config"]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{out:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("s3cret"), "{all}");
        serde_yaml_ng::from_slice::<Value>(&out.stdout).expect("check-config prints YAML")
    };
    let staging = check(&[("NODE_ENV", "staging")]);
    assert_eq!(staging["server"]["listen"], "0.0.0.0:8080");
    let redis = staging["server"]["redis_url"]
        .as_str()
        .expect("a Redis URL");
    assert!(
        redis.starts_with("rediss://") && redis.ends_with("@file-host:6380/0"),
        "{redis}"
    );

    // crossroads' variables win over its file, as `docker run -e PORT=… -e REDIS_URL=…` expects.
    let env = check(&[
        ("NODE_ENV", "staging"),
        ("PORT", "8081"),
        ("REDIS_URL", "redis://env-host:6379/1"),
    ]);
    assert_eq!(env["server"]["listen"], "0.0.0.0:8081");
    assert_eq!(env["server"]["redis_url"], "redis://env-host:6379/1");
}
