//! The `herald` binary with TLS: `curl --cacert` over HTTPS, a certificate replaced on disk and reloaded on
//! SIGHUP (new connections get it, a WebSocket opened before keeps working, a broken file keeps the certificate
//! in use), TLS settings that cannot work refused before any port is bound (exit 64), and an auth webhook on an
//! HTTPS backend of a private CA, trusted through `server.ca_file` and refused (with a log line saying why)
//! without it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::{Issued, TestCa};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The longest herald may take to start (a debug build on a busy machine) or to log a reload.
const STARTUP: Duration = Duration::from_secs(30);
const KEY: &str = "shop-key-0123456789";

/// A running `herald`, killed on drop.
struct Herald {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Herald {
    /// `herald --config <dir>/herald.yml --port 0`, with `config` as the server file; waits until it listens.
    fn start(dir: &Path, config: &str) -> Herald {
        let path = dir.join("herald.yml");
        std::fs::write(&path, config).expect("the server file");
        let mut child = herald(dir, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let outputs: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for output in outputs {
            let (log, found) = (Arc::clone(&log), found.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        let _ = found.send(addr);
                    }
                    log.lock().expect("the log").push(line);
                }
            });
        }
        let addr = address.recv_timeout(STARTUP).unwrap_or_else(|e| {
            panic!(
                "herald did not report its address ({e}): {}",
                log.lock().expect("the log").join("\n")
            )
        });
        Herald { child, addr, log }
    }

    fn sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// Waits until the log holds `count` lines containing `text`; returns the last of them.
    fn wait_log(&self, text: &str, count: usize) -> String {
        let deadline = Instant::now() + STARTUP;
        loop {
            let lines: Vec<String> = {
                let log = self.log.lock().expect("the log");
                log.iter().filter(|l| l.contains(text)).cloned().collect()
            };
            if lines.len() >= count {
                return lines[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line '{text}' (#{count}): {}",
                self.log.lock().expect("the log").join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `herald --config <config> --port 0 --data-dir <dir>/data`, without the test's environment.
fn herald(dir: &Path, config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("--config")
        .arg(config)
        .args(["--port", "0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--log-level", "info"])
        .env_clear()
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// The address in "herald listening; open http(s)://ADDR/ for the demo page".
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("herald listening; open ")?..];
    let rest = &rest[rest.find("://")? + 3..];
    rest[..rest.find('/')?].parse().ok()
}

/// A server file for TLS with `cert` and `key`, and the public site `shop`.
fn config(cert: &Path, key: &Path) -> String {
    format!(
        "server:\n  tls:\n    cert: {}\n    key: {}\nsites:\n  - name: shop\n    api_keys: [{KEY}]\n    \
         recovery_window_ms: 0\n",
        cert.display(),
        key.display()
    )
}

/// `curl -v --cacert <ca> https://ADDR/healthcheck`: its output, and the subject of the certificate it saw.
fn curl_health(ca: &Path, addr: SocketAddr) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}/healthcheck"))
        .output()
        .expect("curl runs (these tests need curl)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl failed: {stderr}");
    let subject = stderr
        .lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
        .unwrap_or_else(|| panic!("curl showed no subject: {stderr}"))
        .to_string();
    (String::from_utf8_lossy(&out.stdout).into_owned(), subject)
}

fn write_pair(files: &herald::config::TlsFiles, issued: &Issued) {
    common::tls::write(&files.cert, &issued.cert_pem);
    common::tls::write(&files.key, &issued.key_pem);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let ca = TestCa::new("reload");
    let ca_file = ca.ca_file();
    let files = ca.write("server", &ca.issue("herald-one"));
    let herald = Herald::start(&ca.dir, &config(&files.cert, &files.key));
    assert!(herald
        .wait_log("herald listening", 1)
        .contains("open https://"));
    let addr = herald.addr;
    let (body, subject) = curl_health(&ca_file, addr);
    assert_eq!((body.as_str(), subject.as_str()), ("ok", "CN=herald-one"));

    // A WebSocket opened before the reload, on the first certificate.
    let (mut ws, first_der, connected) =
        common::tls::wss_join(addr, ca.client_config(), "/shop").await;
    assert!(connected.starts_with("40/shop,{"), "{connected}");

    let second = ca.issue("herald-two");
    write_pair(&files, &second);
    herald.sighup();
    herald.wait_log("reloaded the TLS certificate", 1);
    let (_, subject) = curl_health(&ca_file, addr);
    assert_eq!(subject, "CN=herald-two");
    let fresh = common::tls::connect(addr, ca.client_config())
        .await
        .expect("a TLS connection after the reload");
    let second_der = common::tls::peer_certificate(&fresh);
    assert_eq!(second_der, second.der);
    assert_ne!(second_der, first_der);
    drop(fresh);

    // The WebSocket from before still gets what is published.
    let published = ca
        .http_client()
        .post(format!("https://{addr}/api/v1/sites/shop/publish"))
        .bearer_auth(KEY)
        .json(&json!({"all": true, "event": "news", "args": ["after the reload"]}))
        .send()
        .await
        .expect("a publish over HTTPS");
    assert_eq!(published.status(), 200);
    assert_eq!(
        common::tls::next_text(&mut ws).await,
        r#"42/shop,["news","after the reload"]"#
    );

    // A renewal that left a broken certificate: one line saying why, and the certificate in use stays.
    common::tls::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n");
    herald.sighup();
    let line = herald.wait_log("kept the TLS certificate in use", 1);
    assert!(line.contains(&files.cert.display().to_string()), "{line}");
    let (_, subject) = curl_health(&ca_file, addr);
    assert_eq!(subject, "CN=herald-two");
    ws.send(Message::text("3"))
        .await
        .expect("the old WebSocket still writes");
}

/// Runs herald to its exit with `config` (a server file) and `env`; it must not get as far as listening.
fn refused(dir: &Path, config: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("refused.yml");
    std::fs::write(&path, config).expect("the server file");
    let mut command = herald(dir, &path);
    command.envs(env.iter().copied());
    let out = command.output().expect("herald runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("herald listening"), "{stdout}");
    out
}

#[test]
fn tls_settings_that_cannot_work_stop_herald_before_it_listens() {
    let ca = TestCa::new("refused");
    let files = ca.write("server", &ca.issue("herald"));
    let missing: PathBuf = ca.dir.join("missing.key");
    let cases = [
        (
            config(&files.cert, &missing),
            vec![],
            format!(
                "herald: server.tls.key {}: cannot read: No such file or directory (os error 2)\n",
                missing.display()
            ),
        ),
        (
            String::new(),
            vec![("HERALD_TLS_CERT", files.cert.to_string_lossy().into_owned())],
            "herald: environment HERALD_TLS_CERT is set without HERALD_TLS_KEY: set both, or neither\n".into(),
        ),
        (
            config(&files.cert, &files.key),
            vec![("HERALD_CA_FILE", files.key.to_string_lossy().into_owned())],
            format!(
                "herald: server.ca_file {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)\n",
                files.key.display()
            ),
        ),
    ];
    for (config, env, expected) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = refused(&ca.dir, &config, &env);
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_webhook_over_https_is_trusted_through_the_ca_file() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let ca = TestCa::new("webhook");
    let ca_file = ca.ca_file();
    // The backend: herald's own server with a certificate of the private CA, answering the client's rooms.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let backend = axum::Router::new().route(
        "/auth",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { axum::Json(json!(["lobby"])) }
        }),
    );
    let tls = herald::tls::ServerTls::load(&ca.write("backend", &ca.issue("backend")))
        .expect("the backend's certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let backend_addr = listener.local_addr().expect("its address");
    let server =
        herald::server::Server::new(listener, backend, Default::default()).with_tls(Some(tls));
    tokio::spawn(server.run());

    let site = format!(
        "sites:\n  - name: shop\n    api_keys: [{KEY}]\n    auth: {{kind: webhook, url: \"https://{backend_addr}/auth\"}}\n"
    );
    for trusted in [true, false] {
        let server = if trusted {
            format!("server:\n  ca_file: {}\n", ca_file.display())
        } else {
            String::new()
        };
        let herald = Herald::start(&ca.dir, &format!("{server}{site}"));
        let before = calls.load(Ordering::Relaxed);
        let (_client, reply) = common::join_namespace(herald.addr, "/shop", "token=t-123").await;
        if trusted {
            assert!(reply.starts_with("40/shop,{"), "{reply}");
            assert_eq!(calls.load(Ordering::Relaxed), before + 1);
        } else {
            assert_eq!(
                reply,
                r#"44/shop,{"message":"authentication is unavailable"}"#
            );
            assert_eq!(
                calls.load(Ordering::Relaxed),
                before,
                "no request got past the handshake"
            );
            let line = herald.wait_log("its TLS certificate is not trusted", 1);
            assert!(
                line.contains("UnknownIssuer") && line.contains("server.ca_file"),
                "{line}"
            );
            assert!(!line.contains("/auth"), "no URL path in the log: {line}");
        }
    }
}
