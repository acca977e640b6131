//! The `herald` binary: parses the command line, loads the config (reporting a bad one in one line, exit 64,
//! before any port is bound), and runs the library: `serve`, `check-config`, `send`, `token`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald::config::{self, Config, Overrides, Sources};

/// A configuration that cannot run: reported in one line before any port is bound.
const EXIT_CONFIG: u8 = 64;
/// A command used wrongly, as clap reports its own usage errors.
const EXIT_USAGE: u8 = 2;

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
}

/// Where the configuration comes from: file < environment < these flags.
#[derive(Debug, Args)]
struct SourceFlags {
    /// Server config file (YAML). Also HERALD_CONFIG.
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Sites file, crossroads' sites.yml format. Also HERALD_SITES.
    #[arg(long, global = true, env = "HERALD_SITES")]
    sites: Option<PathBuf>,
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

fn load(flags: &SourceFlags) -> Result<Config, Failure> {
    let sources = Sources {
        server_file: flags.config.clone(),
        sites_file: flags.sites.clone(),
        env: config::process_env(),
        flags: Overrides {
            listen: flags.listen,
            port: flags.port,
            data_dir: flags.data_dir.clone(),
            log_json: flags.log_json.then_some(true),
            log_level: flags.log_level.clone(),
        },
    };
    let mut config = config::load(&sources).map_err(|e| Failure::Config(e.to_string()))?;
    if let Some(key) =
        config::ensure_demo_key(&mut config).map_err(|e| Failure::Config(e.to_string()))?
    {
        // Printed once, to the terminal that started herald, never to the log.
        println!("demo site API key: {}", key.expose());
    }
    config::validate(&config).map_err(|e| Failure::Config(e.to_string()))?;
    Ok(config)
}

fn check_config(flags: &SourceFlags) -> Result<(), Failure> {
    let config = load(flags)?;
    // The certificate, key and CA files too, as `serve` would read them.
    herald::tls::load(&config.server).map_err(|e| Failure::Config(e.to_string()))?;
    print!("{}", config::render_masked(&config));
    Ok(())
}

fn serve(flags: &SourceFlags) -> Result<(), Failure> {
    let config = load(flags)?;
    herald::logging::init(config.server.log.json, &config.server.log.level);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        // The mailbox store opens here, so a store that cannot open is reported before any port is bound.
        let gateway = herald::gateway::build(&config)
            .await
            .map_err(|e| Failure::Config(e.to_string()))?;
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

fn token(flags: &SourceFlags, args: TokenArgs) -> Result<(), Failure> {
    let config = load(flags)?;
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
