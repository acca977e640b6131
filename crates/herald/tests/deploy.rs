//! The container and deployment files (`Dockerfile`, `.dockerignore`, `deploy/compose.yml`, `deploy/haproxy.cfg`,
//! `deploy/kubernetes/`) checked against herald itself, as no container engine or cluster runs the tests: the
//! image builds with README.md's cargo command, its HEALTHCHECK is a command of this binary that passes against a
//! herald started with the image's environment; the manifests name only variables herald reads, probe routes
//! herald serves (asked of a gateway in this process), load with herald's own config loader, and give herald's
//! drain the time it takes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::herald_process::{self, HeraldProcess, ScratchDir};
use herald::config::{Config, Overrides, Sources, ENVIRONMENT};
use serde::Deserialize;
use serde_yaml_ng::Value;

// -------------------------------------------------------------------------------------------------------------
// Reading the files
// -------------------------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    value
}

/// `value` at a dotted path (`spec.template.spec`, numbers index sequences); `Null` when absent.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => &v[index],
            Err(_) => &v[key],
        })
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(value, path)))
}

fn number(value: &Value, path: &str) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a whole number: {:?}", at(value, path)))
}

/// A scalar as the text a container's environment gets.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `90s`, `1h`, `250ms` in milliseconds.
fn duration_ms(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(split);
    let amount: u64 = amount.parse().unwrap_or_else(|_| panic!("duration {text}"));
    amount
        * match unit {
            "ms" => 1,
            "s" | "" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => panic!("duration unit in {text}"),
        }
}

/// Every variable name herald reads, from the list it documents.
fn herald_vars() -> BTreeSet<&'static str> {
    ENVIRONMENT.iter().map(|(name, _)| *name).collect()
}

/// Asserts that every variable set for herald is one herald reads, except those only used to build another's
/// value (`$(POD_IP)` in Kubernetes).
fn assert_herald_reads(env: &BTreeMap<String, String>, context: &str) {
    let known = herald_vars();
    for name in env.keys() {
        let helper = env.values().any(|v| v.contains(&format!("$({name})")));
        assert!(
            known.contains(name.as_str()) || helper,
            "{context}: herald reads no variable {name}"
        );
    }
}

/// The port of a `host:port` or `0.0.0.0:3000` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

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

// -------------------------------------------------------------------------------------------------------------
// Dockerfile
// -------------------------------------------------------------------------------------------------------------

/// One `FROM` stage: its base image, its name and its instructions (keyword in capitals, arguments).
#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        (self.instructions.iter())
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        match self.all(keyword).as_slice() {
            [one] => one,
            found => panic!(
                "expected one {keyword} in stage {:?}, found {found:?}",
                self.name
            ),
        }
    }

    /// The stage's `ENV` variables (`ENV A=1 B=2`, possibly over several lines).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            for pair in args.split_whitespace() {
                let (name, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {args}: write NAME=value"));
                env.insert(name.to_string(), value.trim_matches('"').to_string());
            }
        }
        env
    }
}

/// The Dockerfile's stages: comments dropped, continuation lines joined.
fn dockerfile() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(' ').unwrap_or((&line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            stages.push(Stage {
                base: words[0].to_string(),
                name: match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                },
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("FROM comes first")
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

/// The build stage (the first) and the runtime stage (the last).
fn build_and_runtime() -> (Stage, Stage) {
    let mut stages = dockerfile();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let runtime = stages.pop().expect("a last stage");
    (stages.swap_remove(0), runtime)
}

/// An exec-form command (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form array: {args}: {e}"))
}

/// HEALTHCHECK's options (`--timeout` → `5s`) and its command.
fn healthcheck(runtime: &Stage) -> (BTreeMap<String, String>, Vec<String>) {
    let args = runtime.one("HEALTHCHECK");
    let (options, command) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK {args}: CMD in exec form"));
    let options = (options.split_whitespace())
        .filter_map(|o| o.strip_prefix("--")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (options, exec_form(command.trim()))
}

/// README.md's command that runs herald (`cargo run …`), as words.
fn readme_run_command() -> Vec<String> {
    let readme = read("README.md");
    let line = (readme.lines())
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with("cargo run"))
        .expect("README.md shows a `cargo run` command");
    line.split_whitespace().map(String::from).collect()
}

/// The workspace's minimum Rust version (`rust-version = "1.90"`), as (major, minor).
fn workspace_rust_version() -> (u32, u32) {
    let manifest = read("Cargo.toml");
    let line = (manifest.lines())
        .find(|l| l.trim_start().starts_with("rust-version"))
        .expect("Cargo.toml sets rust-version");
    let version = line.split('"').nth(1).expect("a quoted version");
    parse_version(version)
}

fn parse_version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("not a version: {text}"),
    }
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

// -------------------------------------------------------------------------------------------------------------
// deploy/compose.yml and deploy/haproxy.cfg
// -------------------------------------------------------------------------------------------------------------

/// `${NAME:?message}` and `${NAME}` replaced from `vars`, as Compose interpolates.
fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        let name = rest[start + 2..end]
            .split([':', '-', '?'])
            .next()
            .expect("a name");
        out.push_str(
            vars.get(name)
                .unwrap_or_else(|| panic!("no value for ${{{name}}}")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// haproxy.cfg's sections (`backend herald` → its lines), comments dropped.
fn haproxy() -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in read("deploy/haproxy.cfg").lines() {
        let content = line.split('#').next().unwrap_or("");
        if content.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            current = content.trim().to_string();
            sections.entry(current.clone()).or_default();
        } else {
            sections
                .entry(current.clone())
                .or_default()
                .push(content.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    sections
}

#[tokio::test]
async fn compose_runs_three_nodes_on_redis_behind_round_robin() {
    let compose = yaml("deploy/compose.yml");
    let services = at(&compose, "services").as_mapping().expect("services");
    let name = |key: &Value| key.as_str().expect("a service name").to_string();
    let herald_nodes: Vec<String> = (services.iter())
        .filter(|(_, s)| at(s, "build.dockerfile").as_str() == Some("Dockerfile"))
        .map(|(k, _)| name(k))
        .collect();
    assert_eq!(
        herald_nodes.len(),
        3,
        "three herald nodes: {herald_nodes:?}"
    );
    let redis = (services.iter())
        .find(|(_, s)| text(s, "image").starts_with("redis:"))
        .map(|(k, _)| name(k))
        .expect("a Redis service");
    let balancer = (services.iter())
        .find(|(_, s)| text(s, "image").starts_with("haproxy:"))
        .map(|(k, _)| name(k))
        .expect("a HAProxy service");
    assert_eq!(services.len(), 5, "three nodes, Redis and the balancer");

    let (_, runtime) = build_and_runtime();
    let image_env = runtime.env();
    let (_, image_check) = healthcheck(&runtime);
    let api_key = "compose-key-0123456789";
    let vars = BTreeMap::from([("HERALD_API_KEY", api_key)]);
    let scratch = ScratchDir::new("deploy-compose");
    let mut configs = Vec::new();
    for node in &herald_nodes {
        let service = &compose["services"][node.as_str()];
        assert_eq!(
            text(service, "build.context"),
            "..",
            "{node} builds the repository's Dockerfile"
        );
        let mut env = image_env.clone();
        for (k, v) in at(service, "environment")
            .as_mapping()
            .expect("a map of variables")
        {
            env.insert(name(k), interpolate(&scalar(v), &vars));
        }
        assert_herald_reads(&env, node);
        let listen_port = port_of(&env["HERALD_LISTEN"]);
        // Redis by its service name; every node the same URL, database included.
        let redis_url = url::Url::parse(&env["REDIS_URL"]).expect("REDIS_URL is a URL");
        assert_eq!(redis_url.host_str(), Some(redis.as_str()), "{node}");
        assert_eq!(redis_url.port_or_known_default().or(Some(6379)), Some(6379));
        // Peers forward polling requests to the node at its service name.
        assert_eq!(
            env["HERALD_NODE_URL"],
            format!("http://{node}:{listen_port}")
        );
        assert_eq!(
            at(service, "depends_on")[redis.as_str()]["condition"],
            "service_healthy",
            "{node} waits for Redis"
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
            "{node} checks itself as the image does"
        );

        // The sites file the node mounts loads with herald's loader, with the environment given.
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
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([0, 0, 0, 0], listen_port))
        );
        let grace = at(service, "stop_grace_period")
            .as_str()
            .expect("stop_grace_period");
        assert!(
            duration_ms(grace) > config.server.shutdown_grace_ms,
            "{node}: stop_grace_period {grace} is not above shutdown_grace_ms"
        );
        configs.push(config);
    }
    // One demo site, one API key, one Redis for all nodes: a publish through the balancer reaches everyone.
    for config in &configs {
        assert_eq!(config.server.redis_url, configs[0].server.redis_url);
        assert_eq!(config.sites, configs[0].sites);
        let site = &config.sites[0];
        assert!(
            site.api_keys.iter().any(|k| k.matches(api_key)),
            "the key from HERALD_API_KEY"
        );
    }

    // The balancer: after the nodes are healthy, on the port it publishes.
    let lb = &compose["services"][balancer.as_str()];
    for node in &herald_nodes {
        assert_eq!(
            at(lb, "depends_on")[node.as_str()]["condition"],
            "service_healthy"
        );
    }
    let published = scalar(&at(lb, "ports")[0]);
    let lb_port = port_of(&published);
    assert!(
        (at(lb, "volumes").as_sequence().expect("volumes"))
            .iter()
            .any(|v| scalar(v).starts_with("./haproxy.cfg:")),
        "the balancer mounts haproxy.cfg"
    );

    let cfg = haproxy();
    let frontend = (cfg.iter())
        .find(|(k, _)| k.starts_with("frontend "))
        .map(|(_, v)| v)
        .expect("a frontend");
    assert!(
        frontend.iter().any(|l| l == &format!("bind :{lb_port}")),
        "the frontend binds the published port {lb_port}: {frontend:?}"
    );
    let backend = (cfg.iter())
        .find(|(k, _)| k.starts_with("backend "))
        .map(|(_, v)| v)
        .expect("a backend");
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
    let expected: BTreeSet<String> = (herald_nodes.iter())
        .map(|node| format!("{node}:{}", port_of(&image_env["HERALD_LISTEN"])))
        .collect();
    assert_eq!(servers, expected, "the balancer lists the three nodes");

    // Long-polling GETs wait up to the ping interval; the balancer must wait longer.
    let defaults = &cfg["defaults"];
    let timeout = |name: &str| {
        (defaults.iter())
            .find_map(|l| l.strip_prefix(&format!("timeout {name} ")))
            .map(duration_ms)
            .unwrap_or_else(|| panic!("timeout {name}"))
    };
    let ping_interval = configs[0].server.engine.ping_interval_ms;
    assert!(timeout("server") > ping_interval && timeout("client") > ping_interval);
    assert!(timeout("tunnel") > ping_interval, "WebSockets");

    // Its health check asks a route herald answers 200 while it serves.
    let check_path = (backend.iter())
        .find_map(|l| l.strip_prefix("http-check send meth GET uri "))
        .expect("http-check send meth GET uri <path>")
        .to_string();
    assert_eq!(check_path, "/readyz");
    // `docker compose stop` sends SIGTERM with no pause before it: the balancer must see /readyz fail (every
    // `inter`, down after `fall` failures) within herald's drain_delay_ms, while the listener is still open.
    let server_options: Vec<&str> = (backend.iter())
        .find_map(|l| l.strip_prefix("default-server "))
        .expect("default-server")
        .split_whitespace()
        .collect();
    let option = |name: &str| {
        (server_options.windows(2))
            .find(|w| w[0] == name)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("default-server {name}"))
    };
    assert!(server_options.contains(&"check"));
    let detect_ms = duration_ms(option("inter")) * option("fall").parse::<u64>().expect("fall N");
    assert!(
        detect_ms < configs[0].server.drain_delay_ms,
        "the balancer takes {detect_ms} ms to see a drain of {} ms",
        configs[0].server.drain_delay_ms
    );
    let answers = statuses(configs[0].clone(), &[&check_path]).await;
    assert_eq!(answers, [(check_path, 200)]);
}

// -------------------------------------------------------------------------------------------------------------
// deploy/kubernetes
// -------------------------------------------------------------------------------------------------------------

/// The resources kustomization.yaml lists, by kind.
fn kubernetes() -> BTreeMap<String, Value> {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let mut resources = BTreeMap::new();
    for file in at(&kustomization, "resources")
        .as_sequence()
        .expect("resources")
    {
        let file = file.as_str().expect("a file name");
        let path = format!("deploy/kubernetes/{file}");
        for document in serde_yaml_ng::Deserializer::from_str(&read(&path)) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            let kind = text(&value, "kind").to_string();
            assert!(
                resources.insert(kind.clone(), value).is_none(),
                "two of {kind}"
            );
        }
    }
    resources
}

#[tokio::test]
async fn kubernetes_manifests_fit_herald() {
    let resources = kubernetes();
    let kinds: Vec<&str> = resources.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    );
    let deployment = &resources["Deployment"];
    let pod = at(deployment, "spec.template.spec");
    let labels = at(deployment, "spec.template.metadata.labels");
    let selector = at(deployment, "spec.selector.matchLabels");
    for (k, v) in selector.as_mapping().expect("matchLabels") {
        assert_eq!(
            &labels[k.as_str().expect("a label")],
            v,
            "the pods carry the selector's labels"
        );
    }
    let containers = at(pod, "containers").as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The environment: only variables herald reads, secrets from the Secret, the node URL from the pod's IP.
    let mut env = BTreeMap::new();
    let mut from = BTreeMap::new();
    for var in at(container, "env").as_sequence().expect("env") {
        let name = text(var, "name").to_string();
        match at(var, "value") {
            Value::Null => {
                from.insert(name.clone(), at(var, "valueFrom").clone());
                env.insert(name, String::new());
            }
            value => {
                env.insert(name, scalar(value));
            }
        }
    }
    assert_herald_reads(&env, "the Deployment");
    for secret in ["REDIS_URL", "API_KEY"] {
        assert!(
            at(&from[secret], "secretKeyRef.key").as_str() == Some(secret),
            "{secret} comes from a Secret"
        );
    }
    assert_eq!(text(&from["POD_IP"], "fieldRef.fieldPath"), "status.podIP");
    let listen_port = port_of(&env["HERALD_LISTEN"]);
    assert!(env["HERALD_LISTEN"].starts_with("0.0.0.0:"));
    assert_eq!(
        env["HERALD_NODE_URL"],
        format!("http://$(POD_IP):{listen_port}")
    );

    // The ports: the container's, the probes', the Service's.
    let port = &at(container, "ports")[0];
    let port_name = text(port, "name");
    assert_eq!(number(port, "containerPort"), u64::from(listen_port));
    let names_the_port = |value: &Value| {
        value.as_str() == Some(port_name) || value.as_u64() == Some(u64::from(listen_port))
    };
    let service = &resources["Service"];
    assert!(names_the_port(at(service, "spec.ports.0.targetPort")));
    assert_eq!(at(service, "spec.selector"), selector);
    assert_eq!(text(service, "spec.sessionAffinity"), "None");
    let pdb = &resources["PodDisruptionBudget"];
    assert_eq!(at(pdb, "spec.selector.matchLabels"), selector);
    assert!(number(pdb, "spec.maxUnavailable") < number(deployment, "spec.replicas"));

    // Security: not root, a read-only root, a writable data directory.
    let (_, runtime) = build_and_runtime();
    let image_uid: u64 = (runtime.one("USER").split(':').next())
        .and_then(|u| u.parse().ok())
        .expect("the image's uid");
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert_eq!(number(pod, "securityContext.runAsUser"), image_uid);
    assert_eq!(
        at(container, "securityContext.readOnlyRootFilesystem").as_bool(),
        Some(true)
    );
    assert_eq!(
        at(container, "securityContext.allowPrivilegeEscalation").as_bool(),
        Some(false)
    );
    assert_eq!(at(container, "securityContext.capabilities.drop.0"), "ALL");
    for kind in ["requests.cpu", "requests.memory", "limits.memory"] {
        assert!(
            at(container, &format!("resources.{kind}")).is_string(),
            "resources.{kind}"
        );
    }
    let volumes = at(pod, "volumes").as_sequence().expect("volumes");
    let volume = |name: &str| {
        (volumes.iter())
            .find(|v| text(v, "name") == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = at(container, "volumeMounts")
        .as_sequence()
        .expect("volumeMounts");
    let mount_at = |path: &str| {
        (mounts.iter())
            .find(|m| {
                path.starts_with(&format!("{}/", text(m, "mountPath")))
                    || text(m, "mountPath") == path
            })
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
    };
    let data = mount_at(&env["HERALD_DATA_DIR"]);
    assert!(
        at(volume(text(data, "name")), "emptyDir").is_mapping(),
        "the data directory is writable"
    );

    // The ConfigMap, mounted where HERALD_CONFIG and HERALD_SITES point, loads with herald's loader.
    let config_map = &resources["ConfigMap"];
    let scratch = ScratchDir::new("deploy-kubernetes");
    let mut files = BTreeMap::new();
    for var in ["HERALD_CONFIG", "HERALD_SITES"] {
        let path = &env[var];
        let mount = mount_at(path);
        assert_eq!(at(mount, "readOnly").as_bool(), Some(true));
        assert_eq!(
            text(volume(text(mount, "name")), "configMap.name"),
            text(config_map, "metadata.name")
        );
        let key = path
            .strip_prefix(&format!("{}/", text(mount, "mountPath")))
            .expect("a file in the mount");
        // The key holds a dot: indexed, not a dotted path.
        let data = config_map["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));
        files.insert(var, scratch.write(key, data));
    }
    // As the kubelet gives it: secrets filled in, $(POD_IP) expanded.
    let pod_ip = "10.1.2.3";
    let mut node_env = env.clone();
    node_env.insert("POD_IP".into(), pod_ip.into());
    node_env.insert("REDIS_URL".into(), "redis://:pw@redis:6379/0".into());
    node_env.insert("API_KEY".into(), "kube-key-0123456789".into());
    let url = node_env["HERALD_NODE_URL"].replace("$(POD_IP)", pod_ip);
    node_env.insert("HERALD_NODE_URL".into(), url);
    let config = load(
        files.remove("HERALD_CONFIG"),
        files.remove("HERALD_SITES"),
        &node_env,
    );
    assert_eq!(
        config.server.node_url(),
        format!("http://{pod_ip}:{listen_port}")
    );
    assert_eq!(
        config.server.listen,
        SocketAddr::from(([0, 0, 0, 0], listen_port))
    );
    // SITE_NAME names the ConfigMap's site, so API_KEY is its key rather than a new site's.
    let names: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [env["SITE_NAME"].as_str()]);
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

    // The probes ask routes herald serves, on the container's port; herald answers 200 to each.
    let mut paths = Vec::new();
    for (probe, expected) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", herald::probe::HEALTH_PATH),
    ] {
        let get = at(container, &format!("{probe}.httpGet"));
        assert!(
            names_the_port(at(get, "port")),
            "{probe} asks the container's port"
        );
        assert_eq!(text(get, "path"), expected, "{probe}");
        paths.push(text(get, "path"));
    }
    let answers = statuses(config, &paths).await;
    assert_eq!(
        answers,
        paths
            .iter()
            .map(|p| (p.to_string(), 200))
            .collect::<Vec<_>>()
    );
}
