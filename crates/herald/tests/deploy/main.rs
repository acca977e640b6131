//! The container and deployment files (`Dockerfile`, `.dockerignore`, `deploy/compose.yml`, `deploy/haproxy.cfg`,
//! `deploy/kubernetes/`) checked against herald itself, as no container engine or cluster runs the tests: the
//! image builds with README.md's cargo command, its HEALTHCHECK is a command of this binary that passes against a
//! herald started with the image's environment; the manifests name only variables herald reads, probe routes
//! herald serves (asked of a gateway in this process), load with herald's own config loader, and give herald's
//! drain the time it takes.

#[path = "../common/mod.rs"]
mod common;
mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::herald_process::{self, HeraldProcess, ScratchDir};
use herald::config::{Config, Overrides, Sources};
use manifests::{
    assert_herald_reads, at, build_and_runtime, duration_ms, exec_form, haproxy, healthcheck,
    interpolate, kubernetes, number, parse_version, port_of, read, readme_run_command, scalar,
    text, workspace_rust_version, yaml,
};
use serde_yaml_ng::Value;

/// Loads herald's configuration as a node would: `env` as the environment, and the given files.
fn load(
    server_file: Option<PathBuf>,
    sites_file: Option<PathBuf>,
    env: &BTreeMap<String, String>,
) -> Config {
    let sources = Sources {
        server_file,
        sites_file,
        env: env.clone(),
        flags: Overrides::default(),
        ..Sources::default()
    };
    herald::config::load(&sources).unwrap_or_else(|e| panic!("herald refuses the config: {e}"))
}

/// Starts a gateway of `config` in this process (no Redis) and answers the status of `GET path` for each path.
async fn statuses(mut config: Config, paths: &[&str]) -> Vec<(String, u16)> {
    config.server.redis_url = None;
    let (addr, _gateway) = common::start_gateway(config).await;
    let mut out = Vec::new();
    for path in paths {
        let response = common::http(addr, "GET", path, &[], b"").await;
        out.push((path.to_string(), response.status));
    }
    out
}

#[test]
fn the_build_stage_runs_the_readme_command_as_a_build() {
    let (build, runtime) = build_and_runtime();
    // The image's toolchain: the official Rust image, at least the workspace's rust-version, on the Debian
    // release whose glibc the runtime image has.
    let tag = build.base.strip_prefix("rust:").unwrap_or_else(|| {
        panic!(
            "the build stage uses the official rust image, not {}",
            build.base
        )
    });
    let (version, distro) = tag
        .split_once('-')
        .expect("rust:<version>-<debian release>");
    assert!(
        parse_version(version) >= workspace_rust_version(),
        "{tag} is older than the workspace's rust-version"
    );
    assert_eq!(distro, "bookworm");
    assert!(
        runtime.base.contains("debian12") || runtime.base.contains("bookworm"),
        "the runtime image {} has bookworm's glibc",
        runtime.base
    );

    // `cargo run ARGS` in README.md is `cargo build ARGS` here, word for word.
    let mut expected = readme_run_command();
    assert_eq!(expected[..2], ["cargo", "run"]);
    expected[1] = "build".into();
    let runs = build.all("RUN");
    let cargo: Vec<Vec<String>> = (runs.iter())
        .flat_map(|run| run.split("&&"))
        .map(|command| {
            (command.split_whitespace())
                .filter(|w| !w.starts_with("--mount="))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|words| words.first().map(String::as_str) == Some("cargo"))
        .collect();
    assert_eq!(
        cargo,
        [expected.clone()],
        "the build stage's cargo commands"
    );

    // Dependencies and the target directory are cached between builds.
    let build_run = (runs.iter())
        .find(|run| run.contains(&expected.join(" ")))
        .expect("the RUN with the cargo command");
    for target in ["/usr/local/cargo/registry", "/src/target"] {
        assert!(
            build_run.contains(&format!("--mount=type=cache,target={target}")),
            "no cache mount for {target}: {build_run}"
        );
    }
    assert_eq!(build.one("WORKDIR"), "/src");
    // The binary leaves the cached target directory in the same step, for the runtime stage to copy.
    let stage = build.name.as_deref().expect("a named build stage");
    let copies = runtime.all("COPY");
    let binary = (copies.iter())
        .find(|c| {
            c.starts_with(&format!("--from={stage} ")) && c.ends_with("/usr/local/bin/herald")
        })
        .expect("COPY --from=<build> <binary> /usr/local/bin/herald");
    let source = binary.split_whitespace().nth(1).expect("a source path");
    assert!(
        build_run.contains(&format!("target/release/herald {source}")),
        "{source} is not where the build puts target/release/herald"
    );
}

#[test]
fn the_runtime_image_runs_herald_as_non_root_on_every_interface() {
    let (_, runtime) = build_and_runtime();
    let env = runtime.env();
    assert_eq!(
        env.get("HERALD_LISTEN").map(String::as_str),
        Some("0.0.0.0:3000")
    );
    assert_herald_reads(&env, "Dockerfile ENV");
    let listen_port = port_of(&env["HERALD_LISTEN"]);
    assert_eq!(runtime.one("EXPOSE"), listen_port.to_string());

    // A numeric user, so Kubernetes' runAsNonRoot can check it, and not root.
    let user = runtime.one("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user}: a numeric uid"));
    assert_ne!(uid, 0, "USER {user}");
    // The data directory belongs to that user.
    let data_dir = env.get("HERALD_DATA_DIR").expect("HERALD_DATA_DIR");
    let copies = runtime.all("COPY");
    let data = (copies.iter())
        .find(|c| c.ends_with(&format!(" {data_dir}")))
        .unwrap_or_else(|| panic!("no COPY makes {data_dir}"));
    assert!(data.contains(&format!("--chown={user}")), "{data}");

    let entrypoint = exec_form(runtime.one("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/herald"]);
    let (options, command) = healthcheck(&runtime);
    assert_eq!(command, ["/usr/local/bin/herald", "healthcheck"]);
    for option in ["interval", "timeout", "start-period", "retries"] {
        assert!(options.contains_key(option), "HEALTHCHECK --{option}");
    }
}

#[test]
fn the_image_answers_crossroads_docker_run() {
    // `docker run -p 80:80 -e PORT=80 -e REDIS_URL=… herald`: the image's environment and those two.
    let (_, runtime) = build_and_runtime();
    let mut env = runtime.env();
    env.insert("PORT".into(), "80".into());
    env.insert(
        "REDIS_URL".into(),
        "rediss://:pw@cache.example:6380/0".into(),
    );
    let config = load(None, None, &env);
    assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 80)));
    assert_eq!(
        config.server.redis_url.as_deref(),
        Some("rediss://:pw@cache.example:6380/0")
    );
    assert_eq!(
        config.server.data_dir,
        PathBuf::from(&env["HERALD_DATA_DIR"])
    );
}

#[test]
fn the_healthcheck_passes_against_herald_run_with_the_image_environment() {
    let (_, runtime) = build_and_runtime();
    let (options, command) = healthcheck(&runtime);
    let dir = ScratchDir::new("deploy-image");
    let data = dir.path().join("data").display().to_string();
    // The image's environment, with a data directory this test may write; the port is chosen by the kernel
    // (PORT=0), then given to the check as `docker run -e PORT=…` gives it to both.
    let image_env = runtime.env();
    let mut env: Vec<(&str, &str)> = (image_env.iter())
        .filter(|(name, _)| *name != "HERALD_DATA_DIR")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("HERALD_DATA_DIR", &data));
    let mut server_env = env.clone();
    server_env.push(("PORT", "0"));
    let mut herald = HeraldProcess::start(herald_process::command(dir.path(), &server_env, &[]));
    assert!(herald.listen.ip().is_unspecified(), "{}", herald.listen);

    let port = herald.listen.port().to_string();
    let mut check_env = env.clone();
    check_env.push(("PORT", &port));
    let check = |env: &[(&str, &str)]| {
        let started = Instant::now();
        let out = herald_process::run(
            herald_process::command(
                dir.path(),
                env,
                &command[1..].iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            Duration::from_secs(30),
        );
        (out, started.elapsed())
    };
    let (out, _) = check(&check_env);
    assert!(out.status.success(), "{out:?}");

    herald.kill();
    let (out, _) = check(&check_env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("herald healthcheck: cannot connect to 127.0.0.1:"),
        "{out:?}"
    );

    // A herald that accepts and never answers fails the check (1, not Docker's reserved 2) within Docker's
    // --timeout, so Docker records it as unhealthy rather than as a check it had to kill.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let silent_port = silent.local_addr().expect("an address").port().to_string();
    let mut silent_env = env.clone();
    silent_env.push(("PORT", &silent_port));
    let (out, took) = check(&silent_env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let docker_timeout = Duration::from_millis(duration_ms(&options["timeout"]));
    assert!(
        took < docker_timeout,
        "the check took {took:?}, Docker waits {docker_timeout:?}"
    );
}

#[test]
fn dockerignore_keeps_local_state_out_and_the_sources_in() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = (ignore.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["**/target", "**/node_modules", "**/.venv", "**/herald-data"] {
        assert!(patterns.contains(&needed), ".dockerignore lacks {needed}");
    }
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "crates",
        "crates/*",
        "*.rs",
        "README.md",
    ] {
        assert!(
            !patterns.contains(&kept),
            ".dockerignore must not drop {kept}"
        );
    }
}

/// The demo site's key the compose tests give as `HERALD_API_KEY`.
const COMPOSE_KEY: &str = "compose-key-0123456789";

/// deploy/compose.yml as Compose runs it: merge keys applied, `${…}` filled in.
struct Compose {
    file: Value,
    nodes: Vec<Node>,
    redis: String,
    balancer: String,
}

/// One herald service: its name, its environment (the image's, then the service's) and the configuration herald
/// loads from them and the sites file it mounts.
struct Node {
    name: String,
    env: BTreeMap<String, String>,
    config: Config,
}

impl Compose {
    fn service(&self, name: &str) -> &Value {
        &self.file["services"][name]
    }
}

fn compose() -> Compose {
    let file = yaml("deploy/compose.yml");
    let services = at(&file, "services").as_mapping().expect("services");
    let name = |key: &Value| key.as_str().expect("a service name").to_string();
    let find = |image: &str| {
        (services.iter())
            .find(|(_, s)| text(s, "image").starts_with(image))
            .map(|(k, _)| name(k))
            .unwrap_or_else(|| panic!("no {image} service"))
    };
    let (redis, balancer) = (find("redis:"), find("haproxy:"));
    let (_, runtime) = build_and_runtime();
    let vars = BTreeMap::from([("HERALD_API_KEY", COMPOSE_KEY)]);
    let scratch = ScratchDir::new("deploy-compose");
    let nodes = (services.iter())
        .filter(|(_, s)| at(s, "build.dockerfile").as_str() == Some("Dockerfile"))
        .map(|(key, service)| {
            let node = name(key);
            let mut env = runtime.env();
            for (k, v) in (at(service, "environment").as_mapping()).expect("a map of variables") {
                env.insert(name(k), interpolate(&scalar(v), &vars));
            }
            // The sites file the node mounts at HERALD_SITES.
            let mount = (at(service, "volumes").as_sequence().expect("volumes"))
                .iter()
                .map(scalar)
                .find(|v| v.contains(&format!(":{}", env["HERALD_SITES"])))
                .expect("the sites file is mounted at HERALD_SITES");
            let source = mount.split(':').next().expect("a source");
            let sites = scratch.write(
                &format!("{node}-sites.yml"),
                &read(&format!("deploy/{source}")),
            );
            let config = load(None, Some(sites), &env);
            Node {
                name: node,
                env,
                config,
            }
        })
        .collect();
    Compose {
        file,
        nodes,
        redis,
        balancer,
    }
}

#[test]
fn compose_runs_three_nodes_on_one_redis() {
    let compose = compose();
    let names: Vec<&str> = compose.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 3, "three herald nodes: {names:?}");
    let services = at(&compose.file, "services")
        .as_mapping()
        .expect("services");
    assert_eq!(services.len(), 5, "three nodes, Redis and the balancer");
    let (_, runtime) = build_and_runtime();
    let (_, image_check) = healthcheck(&runtime);
    let first = &compose.nodes[0].config;
    for Node { name, env, config } in &compose.nodes {
        let service = compose.service(name);
        assert_eq!(
            text(service, "build.context"),
            "..",
            "{name} builds the repository's Dockerfile"
        );
        assert_herald_reads(env, name);
        // Redis by its service name; every node the same URL, database included.
        let redis_url = url::Url::parse(&env["REDIS_URL"]).expect("REDIS_URL is a URL");
        assert_eq!(redis_url.host_str(), Some(compose.redis.as_str()), "{name}");
        assert_eq!(redis_url.port().unwrap_or(6379), 6379, "{name}");
        assert_eq!(config.server.redis_url, first.server.redis_url);
        let depends = &at(service, "depends_on")[compose.redis.as_str()];
        assert_eq!(
            depends["condition"], "service_healthy",
            "{name} waits for Redis"
        );
        // Peers forward polling requests to the node at its service name, on the port it listens on.
        let listen_port = port_of(&env["HERALD_LISTEN"]);
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([0, 0, 0, 0], listen_port))
        );
        assert_eq!(
            config.server.node_url(),
            format!("http://{name}:{listen_port}")
        );
        // One demo site and one key on every node, so a publish through the balancer works anywhere.
        assert_eq!(config.sites, first.sites);
        assert!(
            config.sites[0]
                .api_keys
                .iter()
                .any(|k| k.matches(COMPOSE_KEY)),
            "the key from HERALD_API_KEY"
        );
        let check: Vec<String> = (at(service, "healthcheck.test")
            .as_sequence()
            .expect("a test"))
        .iter()
        .map(scalar)
        .collect();
        assert_eq!(check[0], "CMD");
        assert_eq!(
            check[1..],
            image_check[..],
            "{name} checks itself as the image does"
        );
        let grace = text(service, "stop_grace_period");
        assert!(
            duration_ms(grace) > config.server.shutdown_grace_ms,
            "{name}: stop_grace_period {grace} is not above shutdown_grace_ms"
        );
    }
}

#[tokio::test]
async fn the_balancer_round_robins_over_the_nodes_without_affinity() {
    let compose = compose();
    let lb = compose.service(&compose.balancer);
    for node in &compose.nodes {
        assert_eq!(
            at(lb, "depends_on")[node.name.as_str()]["condition"],
            "service_healthy"
        );
    }
    let lb_port = port_of(&scalar(&at(lb, "ports")[0]));
    assert!(
        (at(lb, "volumes").as_sequence().expect("volumes"))
            .iter()
            .any(|v| scalar(v).starts_with("./haproxy.cfg:")),
        "the balancer mounts haproxy.cfg"
    );

    let cfg = haproxy();
    let section = |kind: &str| {
        (cfg.iter())
            .find(|(k, _)| k.starts_with(kind))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {kind} section"))
    };
    let frontend = section("frontend ");
    assert!(
        frontend.contains(&format!("bind :{lb_port}")),
        "the frontend binds the published port {lb_port}: {frontend:?}"
    );
    let backend = section("backend ");
    assert!(
        backend.contains(&"balance roundrobin".to_string()),
        "{backend:?}"
    );
    // No affinity of any kind: herald forwards what lands on the wrong node.
    for sticky in [
        "stick",
        "cookie",
        "balance source",
        "balance uri",
        "balance hdr",
        "hash-type",
    ] {
        assert!(
            !backend.iter().any(|l| l.starts_with(sticky)),
            "{sticky} in {backend:?}"
        );
    }
    let servers: BTreeSet<String> = (backend.iter())
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .expect("server NAME ADDR")
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = (compose.nodes.iter())
        .map(|node| format!("{}:{}", node.name, node.config.server.listen.port()))
        .collect();
    assert_eq!(servers, expected, "the balancer lists the three nodes");

    // Long-polling GETs wait up to the ping interval: the balancer waits longer.
    let server = &compose.nodes[0].config.server;
    let defaults = section("defaults");
    let timeout = |name: &str| {
        (defaults.iter())
            .find_map(|l| l.strip_prefix(&format!("timeout {name} ")))
            .map(duration_ms)
            .unwrap_or_else(|| panic!("timeout {name}"))
    };
    for name in ["server", "client", "tunnel"] {
        assert!(
            timeout(name) > server.engine.ping_interval_ms,
            "timeout {name}"
        );
    }

    // `docker compose stop` sends SIGTERM with no pause before it: the balancer must see /readyz fail (every
    // `inter`, down after `fall` failures) within herald's drain_delay_ms, while the listener is still open.
    let check_path = (backend.iter())
        .find_map(|l| l.strip_prefix("http-check send meth GET uri "))
        .expect("http-check send meth GET uri <path>")
        .to_string();
    assert_eq!(check_path, "/readyz");
    let options: Vec<&str> = (backend.iter())
        .find_map(|l| l.strip_prefix("default-server "))
        .expect("default-server")
        .split_whitespace()
        .collect();
    let option = |name: &str| {
        (options.windows(2))
            .find(|w| w[0] == name)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("default-server {name}"))
    };
    assert!(options.contains(&"check"));
    let detect_ms = duration_ms(option("inter")) * option("fall").parse::<u64>().expect("fall N");
    assert!(
        detect_ms < server.drain_delay_ms,
        "the balancer takes {detect_ms} ms to see a drain of {} ms",
        server.drain_delay_ms
    );
    // And herald answers that route 200 while it serves.
    let answers = statuses(compose.nodes[0].config.clone(), &[&check_path]).await;
    assert_eq!(answers, [(check_path, 200)]);
}

// -------------------------------------------------------------------------------------------------------------
// deploy/kubernetes
// -------------------------------------------------------------------------------------------------------------

/// The Kubernetes resources by kind, with the herald container's environment: plain values, and the sources of
/// the others (`valueFrom`).
struct Kube {
    resources: BTreeMap<String, Value>,
    env: BTreeMap<String, String>,
    value_from: BTreeMap<String, Value>,
}

impl Kube {
    fn deployment(&self) -> &Value {
        &self.resources["Deployment"]
    }

    fn pod(&self) -> &Value {
        at(self.deployment(), "spec.template.spec")
    }

    fn container(&self) -> &Value {
        let containers = at(self.pod(), "containers")
            .as_sequence()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn listen_port(&self) -> u16 {
        port_of(&self.env["HERALD_LISTEN"])
    }

    /// Whether a probe's or the Service's `port` is the container's (by name or number).
    fn is_container_port(&self, port: &Value) -> bool {
        let declared = &at(self.container(), "ports")[0];
        port.as_str() == Some(text(declared, "name"))
            || port.as_u64() == Some(u64::from(self.listen_port()))
    }

    fn volume(&self, name: &str) -> &Value {
        (at(self.pod(), "volumes").as_sequence().expect("volumes"))
            .iter()
            .find(|v| text(v, "name") == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The mount that holds `path`.
    fn mount_at(&self, path: &str) -> &Value {
        (at(self.container(), "volumeMounts")
            .as_sequence()
            .expect("volumeMounts"))
        .iter()
        .find(|m| {
            let at = text(m, "mountPath");
            path == at || path.starts_with(&format!("{at}/"))
        })
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
    }

    /// The configuration herald loads in a pod: the ConfigMap's files where HERALD_CONFIG and HERALD_SITES point,
    /// the environment as the kubelet gives it (secrets filled in, `$(POD_IP)` expanded).
    fn load(&self, pod_ip: &str, api_key: &str) -> Config {
        let config_map = &self.resources["ConfigMap"];
        let scratch = ScratchDir::new("deploy-kubernetes");
        let mut files = BTreeMap::new();
        for var in ["HERALD_CONFIG", "HERALD_SITES"] {
            let path = &self.env[var];
            let mount = self.mount_at(path);
            assert_eq!(at(mount, "readOnly").as_bool(), Some(true), "{var}'s mount");
            let volume = self.volume(text(mount, "name"));
            assert_eq!(
                text(volume, "configMap.name"),
                text(config_map, "metadata.name")
            );
            let key = (path.strip_prefix(&format!("{}/", text(mount, "mountPath"))))
                .expect("a file in the mount");
            // The key holds a dot: indexed, not a dotted path.
            let data = (config_map["data"][key].as_str())
                .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));
            files.insert(var, scratch.write(key, data));
        }
        let mut env = self.env.clone();
        env.insert("POD_IP".into(), pod_ip.into());
        env.insert("REDIS_URL".into(), "redis://:pw@redis:6379/0".into());
        env.insert("API_KEY".into(), api_key.into());
        let url = env["HERALD_NODE_URL"].replace("$(POD_IP)", pod_ip);
        env.insert("HERALD_NODE_URL".into(), url);
        load(
            files.remove("HERALD_CONFIG"),
            files.remove("HERALD_SITES"),
            &env,
        )
    }
}

fn kube() -> Kube {
    let resources = kubernetes();
    let mut kube = Kube {
        resources,
        env: BTreeMap::new(),
        value_from: BTreeMap::new(),
    };
    for var in at(kube.container(), "env")
        .as_sequence()
        .expect("env")
        .clone()
    {
        let name = text(&var, "name").to_string();
        match at(&var, "value") {
            Value::Null => {
                kube.value_from
                    .insert(name.clone(), at(&var, "valueFrom").clone());
                kube.env.insert(name, String::new());
            }
            value => {
                kube.env.insert(name, scalar(value));
            }
        }
    }
    kube
}

#[test]
fn kubernetes_wires_labels_ports_and_variables() {
    let kube = kube();
    let kinds: Vec<&str> = kube.resources.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    );
    let deployment = kube.deployment();
    let labels = at(deployment, "spec.template.metadata.labels");
    let selector = at(deployment, "spec.selector.matchLabels");
    for (k, v) in selector.as_mapping().expect("matchLabels") {
        let label = &labels[k.as_str().expect("a label")];
        assert_eq!(label, v, "the pods carry the selector's labels");
    }
    let service = &kube.resources["Service"];
    assert_eq!(at(service, "spec.selector"), selector);
    assert!(kube.is_container_port(at(service, "spec.ports.0.targetPort")));
    assert_eq!(text(service, "spec.sessionAffinity"), "None");
    let pdb = &kube.resources["PodDisruptionBudget"];
    assert_eq!(at(pdb, "spec.selector.matchLabels"), selector);
    assert!(number(pdb, "spec.maxUnavailable") < number(deployment, "spec.replicas"));

    // Only variables herald reads; secrets from the Secret; the node URL from the pod's IP.
    assert_herald_reads(&kube.env, "the Deployment");
    for secret in ["REDIS_URL", "API_KEY"] {
        let key = at(&kube.value_from[secret], "secretKeyRef.key");
        assert_eq!(key.as_str(), Some(secret), "{secret} comes from a Secret");
    }
    assert_eq!(
        text(&kube.value_from["POD_IP"], "fieldRef.fieldPath"),
        "status.podIP"
    );
    let port = kube.listen_port();
    assert!(kube.env["HERALD_LISTEN"].starts_with("0.0.0.0:"));
    assert_eq!(
        kube.env["HERALD_NODE_URL"],
        format!("http://$(POD_IP):{port}")
    );
    assert_eq!(
        number(&at(kube.container(), "ports")[0], "containerPort"),
        u64::from(port)
    );
}

#[test]
fn kubernetes_runs_herald_as_non_root_on_a_read_only_root() {
    let kube = kube();
    let (pod, container) = (kube.pod(), kube.container());
    let (_, runtime) = build_and_runtime();
    let image_uid: u64 = (runtime.one("USER").split(':').next())
        .and_then(|u| u.parse().ok())
        .expect("the image's uid");
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert_eq!(number(pod, "securityContext.runAsUser"), image_uid);
    let security = at(container, "securityContext");
    assert_eq!(at(security, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(
        at(security, "allowPrivilegeEscalation").as_bool(),
        Some(false)
    );
    assert_eq!(at(security, "capabilities.drop.0"), "ALL");
    for kind in ["requests.cpu", "requests.memory", "limits.memory"] {
        assert!(
            at(container, &format!("resources.{kind}")).is_string(),
            "resources.{kind}"
        );
    }
    // The data directory is a volume of its own, writable.
    let data = kube.mount_at(&kube.env["HERALD_DATA_DIR"]);
    assert_ne!(at(data, "readOnly").as_bool(), Some(true));
    assert!(at(kube.volume(text(data, "name")), "emptyDir").is_mapping());
}

#[tokio::test]
async fn kubernetes_config_loads_and_probes_and_drain_fit_herald() {
    let kube = kube();
    let (pod, container) = (kube.pod(), kube.container());
    let config = kube.load("10.1.2.3", "kube-key-0123456789");
    let port = kube.listen_port();
    assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], port)));
    assert_eq!(config.server.node_url(), format!("http://10.1.2.3:{port}"));
    // SITE_NAME names the ConfigMap's site, so API_KEY is its key rather than a new site's.
    let names: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [kube.env["SITE_NAME"].as_str()]);
    assert!(config.sites[0]
        .api_keys
        .iter()
        .any(|k| k.matches("kube-key-0123456789")));

    // The drain: the preStop pause, then herald's own SIGTERM drain, all inside the grace period.
    let pre_stop_ms = number(container, "lifecycle.preStop.sleep.seconds") * 1000;
    let grace_ms = number(pod, "terminationGracePeriodSeconds") * 1000;
    assert!(
        pre_stop_ms >= config.server.drain_delay_ms,
        "preStop covers drain_delay_ms"
    );
    assert!(
        grace_ms > pre_stop_ms + config.server.shutdown_grace_ms,
        "terminationGracePeriodSeconds ({grace_ms} ms) is above preStop ({pre_stop_ms} ms) + \
         shutdown_grace_ms ({} ms)",
        config.server.shutdown_grace_ms
    );

    // The probes ask routes herald serves, on the container's port, and herald answers each 200.
    let mut paths = Vec::new();
    for (probe, expected) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", herald::probe::HEALTH_PATH),
    ] {
        let get = at(container, &format!("{probe}.httpGet"));
        assert!(
            kube.is_container_port(at(get, "port")),
            "{probe} asks the container's port"
        );
        assert_eq!(text(get, "path"), expected, "{probe}");
        paths.push(text(get, "path"));
    }
    let answers = statuses(config, &paths).await;
    let expected: Vec<(String, u16)> = paths.iter().map(|p| (p.to_string(), 200)).collect();
    assert_eq!(answers, expected);
}
