//! Private brokers for the tests that stop and start them: Mosquitto, NATS, Redis, PostgreSQL and RabbitMQ,
//! each on free ports of its own with its data in a temp directory, so stopping one disturbs no other test (the
//! shared services on the standard ports stay up). `restart` stops a broker as an operator would (SIGTERM;
//! SIGINT, the fast shutdown, for PostgreSQL), keeps it down for a while, and starts it again on the same port
//! and data. Dropping a `Broker` kills its process group and removes its directory. `start_redis_tls` starts a
//! Redis that speaks TLS only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// The longest a broker may take to start (RabbitMQ boots in about 5 s on an idle machine) or to stop.
const BOOT: Duration = Duration::from_secs(60);

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// With persistence on, so persistent sessions and their QoS 1 messages survive a restart; `$SYS` topics
    /// every second.
    Mosquitto,
    /// With JetStream, as the shared one runs.
    Nats,
    /// Without persistence, as the shared one runs.
    Redis,
    /// A cluster of its own (`initdb`), trust auth for user `postgres`.
    Postgres,
    /// A node of its own (its own name, ports, Mnesia directory and no plugins), user guest/guest.
    RabbitMq,
}

/// When a restart stopped and started the broker.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// The stop signal was sent.
    pub stopping: Instant,
    /// The process had exited.
    pub stopped: Instant,
    /// It answers again on its port.
    pub started: Instant,
}

/// One private broker process.
pub struct Broker {
    pub kind: Kind,
    pub port: u16,
    /// RabbitMQ's Erlang distribution port.
    dist_port: u16,
    dir: PathBuf,
    /// The user PostgreSQL runs as when the tests run as root (it refuses root).
    user: Option<(u32, u32)>,
    /// Redis only: its certificate and key, and the CA file; then its one port speaks TLS.
    tls: Option<(herald::config::TlsFiles, PathBuf)>,
    child: Option<Child>,
}

/// A port nothing listens on now: bound on 127.0.0.1:0, read, and released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}

/// A free port below the ephemeral range (32768–60999), which no `bind(0)` of a concurrent test can be handed
/// while the broker boots: for a port a broker binds seconds after it is picked (RabbitMQ's distribution port,
/// whose start refuses a port in use as `dist_port_already_used`).
pub fn free_port_below_ephemeral() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1")
}

impl Broker {
    /// Starts a broker of `kind` and waits until it answers on its port.
    pub async fn start(kind: Kind) -> Broker {
        Broker::start_with(kind, None).await
    }

    /// A Redis whose one port speaks TLS with `files` (no client certificates asked); `rediss://` in `url`.
    pub async fn start_redis_tls(files: &herald::config::TlsFiles, ca_file: &Path) -> Broker {
        Broker::start_with(Kind::Redis, Some((files.clone(), ca_file.to_owned()))).await
    }

    async fn start_with(kind: Kind, tls: Option<(herald::config::TlsFiles, PathBuf)>) -> Broker {
        let dir = std::env::temp_dir().join(format!(
            "herald-broker-{}-{:016x}",
            format!("{kind:?}").to_lowercase(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("the broker's directory");
        let mut broker = Broker {
            kind,
            // RabbitMQ binds its port seconds after it starts booting: long enough for a concurrent test's
            // `bind(0)` to be handed an ephemeral one.
            port: if kind == Kind::RabbitMq {
                free_port_below_ephemeral()
            } else {
                free_port()
            },
            dist_port: if kind == Kind::RabbitMq {
                free_port_below_ephemeral()
            } else {
                0
            },
            dir,
            user: None,
            tls,
            child: None,
        };
        broker.prepare();
        broker.spawn();
        broker.wait_ready().await;
        broker
    }

    /// The URL herald and the tests' clients use.
    pub fn url(&self) -> String {
        let port = self.port;
        match self.kind {
            Kind::Mosquitto => format!("mqtt://127.0.0.1:{port}"),
            Kind::Nats => format!("nats://127.0.0.1:{port}"),
            Kind::Redis if self.tls.is_some() => format!("rediss://127.0.0.1:{port}/"),
            Kind::Redis => format!("redis://127.0.0.1:{port}/"),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            Kind::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        }
    }

    /// Stops the broker gracefully, waits until it has exited, keeps it down for `down`, and starts it again on
    /// the same port and data.
    pub async fn restart(&mut self, down: Duration) -> Restart {
        let stopping = Instant::now();
        self.stop().await;
        let stopped = Instant::now();
        sleep(down).await;
        if self.kind == Kind::RabbitMq {
            // The stopped node's distribution port may still be held (TIME_WAIT of the stop command's
            // connection), which RabbitMQ's start refuses as `dist_port_already_used`; the node needs no fixed
            // one, so it takes another. Its AMQP port, which herald reconnects to, stays.
            self.dist_port = free_port_below_ephemeral();
        }
        self.spawn();
        self.wait_ready().await;
        Restart {
            stopping,
            stopped,
            started: Instant::now(),
        }
    }

    /// Writes the configuration and, for PostgreSQL, creates the cluster.
    fn prepare(&mut self) {
        match self.kind {
            Kind::Mosquitto => {
                let config = format!(
                    "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                     user root\nlog_dest stderr\nsys_interval 1\n",
                    self.port,
                    self.dir.display()
                );
                write(&self.dir.join("mosquitto.conf"), &config);
            }
            Kind::RabbitMq => {
                let config = format!(
                    "listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n",
                    self.port
                );
                write(&self.dir.join("rabbitmq.conf"), &config);
                write(&self.dir.join("enabled_plugins"), "[].\n");
            }
            Kind::Postgres => {
                self.user = postgres_user();
                if let Some((uid, gid)) = self.user {
                    std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
                        .expect("the cluster's directory for user postgres");
                }
                let mut initdb = Command::new(postgres_bin("initdb"));
                initdb
                    .args(["-A", "trust", "-U", "postgres", "-N", "-E", "UTF8", "-D"])
                    .arg(self.dir.join("data"))
                    .stdout(Stdio::null());
                as_user(&mut initdb, self.user);
                let status = initdb.status().expect("initdb runs");
                assert!(status.success(), "initdb failed: {status}");
            }
            Kind::Nats | Kind::Redis => {}
        }
    }

    /// Starts the broker's process, in a process group of its own (RabbitMQ's script starts the Erlang VM).
    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let port = self.port.to_string();
        let dir = &self.dir;
        let mut command = match self.kind {
            Kind::Mosquitto => {
                let mut command = Command::new("mosquitto");
                command.arg("-c").arg(dir.join("mosquitto.conf"));
                command
            }
            Kind::Nats => {
                let mut command = Command::new("nats-server");
                command
                    .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(dir.join("jetstream"));
                command
            }
            Kind::Redis => {
                let mut command = Command::new("redis-server");
                command.args(["--bind", "127.0.0.1", "--save", ""]);
                match &self.tls {
                    None => command.args(["--port", &port]),
                    Some((files, ca)) => command
                        .args([
                            "--port",
                            "0",
                            "--tls-port",
                            &port,
                            "--tls-auth-clients",
                            "no",
                        ])
                        .arg("--tls-cert-file")
                        .arg(&files.cert)
                        .arg("--tls-key-file")
                        .arg(&files.key)
                        .arg("--tls-ca-cert-file")
                        .arg(ca),
                };
                command
                    .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
                    .arg(dir);
                command
            }
            Kind::Postgres => {
                let mut command = Command::new(postgres_bin("postgres"));
                command
                    .arg("-D")
                    .arg(dir.join("data"))
                    .args(["-p", &port, "-c", "listen_addresses=127.0.0.1", "-k"])
                    .arg(dir)
                    .args(["-c", "fsync=off"]);
                as_user(&mut command, self.user);
                command
            }
            Kind::RabbitMq => {
                let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
                command
                    .env("HOME", dir)
                    .env("RABBITMQ_NODENAME", format!("herald-test-{port}@localhost"))
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
                    .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                    .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                    .env("RABBITMQ_LOG_BASE", dir.join("log"))
                    .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
                    .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
                    // A node that fails to boot writes its crash dump here, not into the crate.
                    .env("ERL_CRASH_DUMP", dir.join("erl_crash.dump"));
                command
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .expect("the broker's log file");
        let err = log.try_clone().expect("the broker's log file, twice");
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({e}): these tests need it installed",
                self.kind
            )
        });
        self.child = Some(child);
    }

    /// Waits until the broker accepts connections on its port; fails with its log if it exits or takes too long.
    async fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + BOOT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "{:?} did not start on port {} ({exited:?}): {}",
                    self.kind,
                    self.port,
                    self.log()
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the broker to stop as an operator would, and waits until it has exited (killed after `BOOT`).
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown, which ends them.
        let signal = if self.kind == Kind::Postgres {
            "-INT"
        } else {
            "-TERM"
        };
        signal_pid(signal, &child.id().to_string());
        let deadline = Instant::now() + BOOT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("{:?} did not stop in {BOOT:?}; killing it", self.kind);
                signal_pid("-KILL", &format!("-{}", child.id()));
            }
            sleep(Duration::from_millis(20)).await;
        }
        // The rest of its group (RabbitMQ's Erlang helpers) goes with it.
        signal_pid("-KILL", &format!("-{}", child.id()));
    }

    /// The end of the broker's log, for failures.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_pid("-KILL", &format!("-{}", child.id()));
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `kill SIGNAL TARGET` (a pid, or `-pgid` for a process group); a target already gone is no failure.
fn signal_pid(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A PostgreSQL server program: on the PATH, else in Debian's /usr/lib/postgresql/<version>/bin.
fn postgres_bin(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        return PathBuf::from(name);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|entry| entry.ok().map(|e| e.path().join("bin").join(name)))
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("{name} is not installed (PATH or /usr/lib/postgresql/*/bin): these tests need PostgreSQL")
    })
}

/// The uid and gid PostgreSQL runs as: `postgres` when the tests run as root (PostgreSQL refuses root), else
/// the tests' own user.
fn postgres_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // A file created now is owned by the effective user.
    let probe = std::env::temp_dir().join(format!("herald-uid-{:016x}", rand::random::<u64>()));
    write(&probe, "");
    let uid = std::fs::metadata(&probe).map(|m| m.uid()).unwrap_or(0);
    let _ = std::fs::remove_file(&probe);
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("running as root, PostgreSQL needs the user postgres");
    let fields: Vec<&str> = entry.split(':').collect();
    let id = |i: usize| -> u32 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .expect("a numeric id in /etc/passwd")
    };
    Some((id(2), id(3)))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}
