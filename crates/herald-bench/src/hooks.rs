//! Commands run around a scenario's measured phase (`--measure-start`, `--measure-end`), for tools that count
//! what the server does in that phase alone: scripts/instructions.sh zeroes the callgrind counters of a server
//! running under valgrind when the fan-out's subscribers are connected, and dumps them once the last delivery
//! arrived, before the subscribers leave.

use anyhow::Context;

/// The shell commands run when a measured phase starts and ends; none by default.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub start: Option<String>,
    pub end: Option<String>,
}

impl Hooks {
    /// Runs the start command (if any) and waits for it; a command that fails fails the run.
    pub async fn start(&self) -> anyhow::Result<()> {
        run(self.start.as_deref(), "--measure-start").await
    }

    /// Runs the end command (if any) and waits for it.
    pub async fn end(&self) -> anyhow::Result<()> {
        run(self.end.as_deref(), "--measure-end").await
    }
}

/// `sh -c command` on a blocking thread, so that the clients keep answering meanwhile.
async fn run(command: Option<&str>, flag: &'static str) -> anyhow::Result<()> {
    let Some(command) = command else {
        return Ok(());
    };
    let owned = command.to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(owned)
            .status()
    })
    .await?
    .with_context(|| format!("running the {flag} command `{command}`"))?;
    anyhow::ensure!(
        status.success(),
        "the {flag} command `{command}` failed: {status}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_run_in_order_and_failures_fail() {
        let dir = std::env::temp_dir().join(format!("herald-bench-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("log");
        let hooks = Hooks {
            start: Some(format!("echo start >> {}", log.display())),
            end: Some(format!("echo end >> {}", log.display())),
        };
        hooks.start().await.expect("start");
        hooks.end().await.expect("end");
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "start\nend\n");
        Hooks::default().start().await.expect("no command is fine");
        let failing = Hooks {
            start: Some("exit 3".into()),
            end: None,
        };
        let error = failing.start().await.expect_err("exit 3 fails");
        assert!(error.to_string().contains("--measure-start"), "{error}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
