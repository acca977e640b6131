//! The `herald` binary as a child process for tests that run it as an operator would: in a scratch working
//! directory, with only the environment the test gives, its output collected line by line and its address read
//! from the "herald listening" line.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The longest herald may take to start and print its address (a debug build on a busy machine).
const STARTUP: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!(
            "herald-{label}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("creates a scratch directory");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writes a scratch file");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `herald <args>` in `dir` with `env` as its whole environment (plain text logs).
pub fn command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end, at most `within`; its exit status and output.
pub fn run(mut command: Command, within: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald starts");
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    output
        .recv_timeout(within)
        .expect("herald ended in time")
        .expect("herald's output")
}

/// The address in herald's "herald listening; open http://ADDR/ for the demo page" line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("herald listening") {
        return None;
    }
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest[..rest.find('/')?].parse().ok()
}

/// A running `herald`, killed on drop.
pub struct HeraldProcess {
    child: Child,
    /// The address herald reported (`0.0.0.0:port` when it listens on every interface).
    pub listen: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl HeraldProcess {
    /// Starts `command` and waits until herald reports the address it listens on.
    pub fn start(mut command: Command) -> HeraldProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let (log, found) = (Arc::clone(&log), found.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        let _ = found.send(addr);
                    }
                    log.lock().expect("the log lock").push(line);
                }
            });
        }
        let mut herald = HeraldProcess {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match address.recv_timeout(STARTUP) {
            Ok(addr) => herald.listen = addr,
            Err(e) => panic!(
                "herald did not report its address ({e}); exit: {:?}; log:\n{}",
                herald.child.try_wait(),
                herald.lines().join("\n")
            ),
        }
        herald
    }

    /// Where a client on this host reaches it: loopback for `0.0.0.0`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listen.port()))
    }

    /// Every line herald wrote so far, stdout and stderr.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("the log lock").clone()
    }

    /// Kills herald and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
