//! Logging set-up shared by herald's binaries: `tracing` to stderr, as text or one JSON object per line,
//! filtered by `RUST_LOG` or else the configured level, coloured only on a terminal.

/// Installs the global subscriber; call once, first thing after the config is known.
pub fn init(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file, `docker logs` or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber instead of failing.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
