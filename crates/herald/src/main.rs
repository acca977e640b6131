//! The `herald` binary: parses the command line, loads the config (reporting a bad one in one line, exit 64,
//! before any port is bound), and runs the library: `serve`, `check-config`, `send`, `token`, `healthcheck`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald::config::{self, Config, Notice, Overrides, Sources};

/// A configuration that cannot run: reported in one line before any port is bound.
const EXIT_CONFIG: u8 = 64;
/// A command used wrongly, as clap reports its own usage errors.
const EXIT_USAGE: u8 = 2;

/// mimalloc (v2, built without transparent huge pages) instead of glibc's malloc: it took 14 % of the
/// instructions of a connect and 11 % of a delivery, for the same memory per connection at 10 000 clients
/// (BENCHMARKS.md, seventh sitting). With huge pages it asks the kernel for 2 MiB pages, whose faults compact and
/// zero memory: more system time than the allocations saved, and a larger RSS. `herald::memory` hands its free
/// pages back after a burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "herald: a real-time push gateway speaking socket.io")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    sources: SourceFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run herald (the default).
    Serve,
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
    /// Publish through a running herald's API.
    Send(SendArgs),
    /// Mint a JWT for a site with a JWT secret, for testing.
    Token(TokenArgs),
    /// Exit 0 when the running herald answers 200 at /healthcheck, else 1 (a container's HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

/// Where the configuration comes from: files < environment < these flags. Without --config, crossroads'
/// config.yml and sites.yml are also read from the working directory, as crossroads read them.
#[derive(Debug, Args)]
struct SourceFlags {
    /// Server config file (YAML). Also HERALD_CONFIG.
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Sites file, crossroads' sites.yml format. Also HERALD_SITES.
    #[arg(long, global = true, env = "HERALD_SITES")]
    sites: Option<PathBuf>,
    /// crossroads' config.yml; NODE_ENV picks its section (default production). Also HERALD_CROSSROADS_CONFIG.
    #[arg(long, global = true, env = "HERALD_CROSSROADS_CONFIG")]
    crossroads_config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:3000.
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Port to listen on (keeps the configured host).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Directory for herald's state.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log one JSON object per line.
    #[arg(long, global = true)]
    log_json: bool,
    /// Log level filter, e.g. info or herald=debug.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The running herald's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    #[arg(long)]
    site: String,
    /// The site's API key. Also HERALD_API_KEY.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    key: String,
    /// A room to reach; repeat for more.
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// Reach every client of the site.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    event: String,
    /// The arguments as a JSON array; read from stdin when absent.
    #[arg(long)]
    args: Option<String>,
    /// A PEM bundle of CA certificates to trust besides the system's, for an https:// URL. Also HERALD_CA_FILE.
    #[arg(long, env = "HERALD_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    /// The URL to GET; default http://<the configured listen address>/healthcheck, on loopback for 0.0.0.0.
    #[arg(long)]
    url: Option<String>,
    /// Seconds the answer may take.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[arg(long)]
    site: String,
    /// The `sub` claim.
    #[arg(long)]
    user: String,
    /// A room for the `rooms` claim; repeat for more.
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.sources),
        Command::CheckConfig => check_config(&cli.sources),
        Command::Send(args) => send(args),
        Command::Token(args) => token(&cli.sources, args),
        // Docker reads any exit code but 0 and 1 as a fault of the check itself, so a check that cannot run
        // (a bad config, no answer) is 1: unhealthy.
        Command::Healthcheck(args) => {
            return match healthcheck(&cli.sources, &args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("herald healthcheck: {message}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("herald: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("herald: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Other(error)) => {
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(String),
    Usage(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Other(error)
    }
}

/// The sources the flags and the environment name, with crossroads' files from the working directory; read
/// again on a reload.
fn sources(flags: &SourceFlags) -> Sources {
    Sources {
        server_file: flags.config.clone(),
        sites_file: flags.sites.clone(),
        crossroads_file: flags.crossroads_config.clone(),
        found_in_cwd: Vec::new(),
        env: config::process_env(),
        flags: Overrides {
            listen: flags.listen,
            port: flags.port,
            data_dir: flags.data_dir.clone(),
            log_json: flags.log_json.then_some(true),
            log_level: flags.log_level.clone(),
        },
    }
    // The empty path is the working directory, and the files found are named `config.yml` in messages.
    .find_crossroads_files(Path::new(""))
}

/// The configuration to run, with the notices to log once logging is set up.
fn load(flags: &SourceFlags) -> Result<(Config, Vec<Notice>), Failure> {
    let loaded =
        config::load_with_notices(&sources(flags)).map_err(|e| Failure::Config(e.to_string()))?;
    let mut config = loaded.config;
    if let Some(key) =
        config::ensure_demo_key(&mut config).map_err(|e| Failure::Config(e.to_string()))?
    {
        // Printed once, to the terminal that started herald, never to the log.
        println!("demo site API key: {}", key.expose());
    }
    config::validate(&config).map_err(|e| Failure::Config(e.to_string()))?;
    Ok((config, loaded.notices))
}

fn check_config(flags: &SourceFlags) -> Result<(), Failure> {
    let (config, notices) = load(flags)?;
    for notice in notices {
        let kind = if notice.is_warning() {
            "warning"
        } else {
            "note"
        };
        eprintln!("herald: {kind}: {notice}");
    }
    // The certificate, key and CA files too, as `serve` would read them.
    herald::tls::load(&config.server).map_err(|e| Failure::Config(e.to_string()))?;
    print!("{}", config::render_masked(&config));
    Ok(())
}

fn serve(flags: &SourceFlags) -> Result<(), Failure> {
    let (config, notices) = load(flags)?;
    herald::logging::init(config.server.log.json, &config.server.log.level);
    for notice in notices {
        if notice.is_warning() {
            tracing::warn!("{notice}");
        } else {
            tracing::info!("{notice}");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(herald::memory::on_worker_park)
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // The mailbox store opens here, so a store that cannot open is reported before any port is bound.
        let gateway = herald::gateway::build(&config)
            .await
            .map_err(|e| Failure::Config(e.to_string()))?;
        gateway.set_sources(sources(flags));
        run(config, gateway).await.map_err(Failure::Other)
    })
}

async fn run(config: Config, gateway: herald::gateway::Gateway) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let listener =
        herald::listener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let sites: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
    let scheme = config.server.scheme();
    tracing::info!(%addr, ?sites, "herald listening; open {scheme}://{addr}/ for the demo page");
    if gateway.admin.is_some() {
        tracing::info!("the admin console is at {scheme}://{addr}/admin (server.admin_token)");
    }
    // The accept loop runs on a worker thread, not on the thread in `block_on`: connection tasks it spawns then
    // start on that worker's own queue instead of waking another thread for each accept.
    tokio::spawn(async move {
        herald::lifecycle::run(gateway, listener, &config, shutdown_signal()).await;
    })
    .await
    .context("the server task failed")?;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

fn send(args: SendArgs) -> Result<(), Failure> {
    let raw = match args.args {
        Some(raw) => raw,
        None => {
            let mut raw = String::new();
            std::io::stdin()
                .read_to_string(&mut raw)
                .context("reading the arguments from stdin")?;
            raw
        }
    };
    let parsed: serde_json::Value = serde_json::from_str(raw.trim())
        .map_err(|e| Failure::Usage(format!("--args is not JSON: {e}")))?;
    let args_list = match parsed {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let body = serde_json::json!({ "rooms": args.rooms, "all": args.all, "event": args.event, "args": args_list });
    let url = format!(
        "{}/api/v1/sites/{}/publish",
        args.url.trim_end_matches('/'),
        args.site
    );
    let trust = herald::tls::Trust::load(args.ca_file.as_deref())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let client = trust
        .http_client()
        .build()
        .context("creating the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let answer = runtime.block_on(async {
        let response = client
            .post(&url)
            .bearer_auth(&args.key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    });
    let (status, text) = answer.with_context(|| format!("cannot reach {url}"))?;
    println!("{text}");
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!("herald answered {status}")))
    }
}

/// Probes `--url`, or the address the configuration listens on: the same files and environment as the server
/// (a container's PORT included), without writing anything.
fn healthcheck(flags: &SourceFlags, args: &HealthcheckArgs) -> Result<(), String> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let config = config::load(&sources(flags)).map_err(|e| e.to_string())?;
            if config.server.listen.port() == 0 {
                return Err("the configured port is 0 (any free port): give --url".into());
            }
            herald::probe::local_url(config.server.listen)
        }
    };
    herald::probe::probe(&url, Duration::from_secs(args.timeout)).map_err(|e| e.to_string())
}

fn token(flags: &SourceFlags, args: TokenArgs) -> Result<(), Failure> {
    let (config, _) = load(flags)?;
    let site = config
        .sites
        .iter()
        .find(|s| s.name == args.site)
        .ok_or_else(|| Failure::Usage(format!("unknown site '{}'", args.site)))?;
    let herald::auth::AuthConfig::Jwt(jwt) = &site.auth else {
        return Err(Failure::Usage(format!(
            "site '{}' does not use JWT auth",
            args.site
        )));
    };
    let token =
        herald::auth::jwt::mint(jwt, &args.user, &args.rooms, Duration::from_secs(args.ttl))
            .map_err(|e| Failure::Usage(e.to_string()))?;
    println!("{token}");
    Ok(())
}
