//! The `veneer` binary as a subprocess, for what only the binary does: signal handling, configuration
//! loading and its errors, `--help`, and log output.
//!
//! The binary belongs to another package, so cargo does not build it for this one's tests; it is built
//! once per test binary with the cargo that runs the tests, into the same target directory, so an
//! up-to-date build costs a second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::pg::pg;
use crate::tools::ToolOutput;

static BINARY: OnceLock<PathBuf> = OnceLock::new();
static CACHE_NODE: OnceLock<PathBuf> = OnceLock::new();
static EXAMPLE_APP: OnceLock<PathBuf> = OnceLock::new();

/// The path of an up-to-date `veneer` binary, built on first call.
pub async fn veneer_bin() -> PathBuf {
    built(&BINARY, "veneer-proxy", "veneer").await
}

/// The path of an up-to-date `veneer-cache-node` binary, built on first call.
pub async fn cache_node_bin() -> PathBuf {
    built(&CACHE_NODE, "veneer-cache-node", "veneer-cache-node").await
}

/// The path of an up-to-date `shop-latency` (the example application in `examples/app`), built on
/// first call.
pub async fn example_app_bin() -> PathBuf {
    built(&EXAMPLE_APP, "veneer-example-app", "shop-latency").await
}

/// Binary `bin` of `package`, built once per test process (`cell` keeps its path).
async fn built(
    cell: &'static OnceLock<PathBuf>,
    package: &'static str,
    bin: &'static str,
) -> PathBuf {
    tokio::task::spawn_blocking(move || cell.get_or_init(|| build(package, bin)).clone())
        .await
        .unwrap_or_else(|_| panic!("building {bin} panicked"))
}

/// Builds binary `bin` of `package`; returns its path.
fn build(package: &str, bin: &str) -> PathBuf {
    // Test executables live in <target>/<profile>/deps/; build into the same <target> and profile.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    // Selecting this package too makes cargo resolve features as for the test build (e.g. tokio's
    // "process"), so the binary reuses the test build's dependencies instead of compiling its own.
    cmd.args(["build", "-p", package, "-p", "veneer-tests", "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Cargo sets these for the test process; passed on, they would differ from what the outer build
    // saw (build scripts such as ring's watch CARGO_MANIFEST_DIR) and make each build redo the other's.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_tests = name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name);
        if set_for_tests {
            cmd.env_remove(name);
        }
    }
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        cmd.arg("--release");
    }
    let output = cmd.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = profile_dir.join(bin);
    assert!(
        binary.is_file(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

/// A `veneer` command with an environment cleared of `VENEER_*` variables (the binary rejects unknown
/// ones, and a developer's settings must not leak into a test) and of colour.
async fn veneer_command() -> Command {
    let mut cmd = Command::new(veneer_bin().await);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("VENEER_")) {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1").kill_on_drop(true);
    cmd
}

/// Runs `veneer` with `args` and extra environment variables to completion (for `--help` and for
/// configurations that must be refused).
pub async fn run_veneer(args: &[&str], env: &[(&str, &str)]) -> ToolOutput {
    let output = crate::within(
        &format!("veneer {args:?}"),
        veneer_command()
            .await
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("run veneer");
    ToolOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `veneer <command> [args]` (`setup`, `uninstall`) against the test server as its superuser, as
/// an operator would, and fails the test unless it succeeds.
pub async fn operate(command: &str, args: &[&str]) -> ToolOutput {
    let upstream = format!("127.0.0.1:{}", crate::pg().port());
    let mut all = vec![
        command,
        "--upstream",
        &upstream,
        "--service-user",
        crate::SUPERUSER,
    ];
    all.extend_from_slice(args);
    let output = run_veneer(&all, &[]).await;
    output.assert_success(&format!("veneer {command}"));
    output
}

/// A running `veneer` serving the test server, with its output collected line by line.
#[derive(Debug)]
pub struct VeneerProcess {
    /// The process; killed if the test ends without stopping it.
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
    /// Every line it printed so far, stdout and stderr interleaved as read.
    lines: Arc<Mutex<Vec<String>>>,
}

impl VeneerProcess {
    /// Starts `veneer --listen 127.0.0.1:<free port> --upstream <test server>` plus `args`, and waits
    /// until it accepts connections.
    pub async fn start(args: &[&str]) -> VeneerProcess {
        VeneerProcess::start_on(&pg().upstream().to_string(), args).await
    }

    /// Starts `veneer --listen 127.0.0.1:<free port> --upstream <upstream>` plus `args`, and waits
    /// until it accepts connections.
    pub async fn start_on(upstream: &str, args: &[&str]) -> VeneerProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let mut child = veneer_command()
            .await
            .args(["--listen", &addr.to_string(), "--upstream", upstream])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn veneer");
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().expect("piped stdout"), lines.clone());
        collect_lines(child.stderr.take().expect("piped stderr"), lines.clone());
        let mut process = VeneerProcess { child, addr, lines };
        let up = crate::wait_for(crate::STEP_TIMEOUT, || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        if !up {
            let exited = process.child.try_wait().ok().flatten();
            panic!(
                "veneer did not accept connections on {addr} (exit: {exited:?}); output:\n{}",
                process.output()
            );
        }
        process
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, to look at its file descriptors and memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("veneer is running")
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// Waits for a printed line satisfying `matches` and returns it; fails with the output so far.
    pub async fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        crate::wait_for(crate::STEP_TIMEOUT, || {
            found = self
                .lines
                .lock()
                .expect("lines lock")
                .iter()
                .find(|line| matches(line))
                .cloned();
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap_or_else(|| panic!("veneer never printed {what}; output:\n{}", self.output()))
    }

    /// Sends a signal by name (`TERM`, `INT`) with `kill`, as an operator or init system would.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("veneer is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        crate::within_for(limit, "veneer to exit", self.child.wait())
            .await
            .expect("wait for veneer")
    }
}

/// Copies each line `stream` prints into `lines`, until it ends.
pub(crate) fn collect_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().expect("lines lock").push(line);
        }
    });
}
