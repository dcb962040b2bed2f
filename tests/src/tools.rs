//! The PostgreSQL command-line clients as subprocesses: `psql` and `pgbench`, the clients people and
//! scripts actually use, so the proxy is tested against libpq's behaviour and not only tokio-postgres's.
//!
//! Every run names its server explicitly in a conninfo string and starts from an environment cleared
//! of `PG*` variables, so a developer's `PGHOST` or `PGSSLMODE` cannot change what a test means.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::pg::{pg, DATABASE};

/// A `psql` or `pgbench` invocation being put together.
#[derive(Debug, Clone)]
pub struct PgTool {
    /// `psql` or `pgbench` (resolved in the server's bindir).
    program: &'static str,
    /// libpq keywords and values: host, port, user, dbname, then any the test adds.
    conninfo: Vec<(String, String)>,
    /// Sent as `PGPASSWORD`, never on the command line.
    password: Option<String>,
    /// Program arguments after the connection.
    args: Vec<String>,
    /// Bytes written to standard input, which is then closed.
    stdin: Vec<u8>,
    /// How long the program may run before the test fails.
    limit: Duration,
}

/// What a finished program printed and how it exited.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl ToolOutput {
    /// Fails the test with both streams if the program did not exit 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

impl PgTool {
    /// `psql -X -v ON_ERROR_STOP=1` against `addr` as `user`: no psqlrc, and any SQL error fails.
    pub fn psql(addr: SocketAddr, user: &str) -> PgTool {
        PgTool::new("psql", addr, user).args(["-X", "-v", "ON_ERROR_STOP=1"])
    }

    /// `pgbench` against `addr` as `user`.
    pub fn pgbench(addr: SocketAddr, user: &str) -> PgTool {
        PgTool::new("pgbench", addr, user)
    }

    fn new(program: &'static str, addr: SocketAddr, user: &str) -> PgTool {
        let conninfo = [
            ("host", addr.ip().to_string()),
            ("port", addr.port().to_string()),
            ("user", user.to_owned()),
            ("dbname", DATABASE.to_owned()),
            ("connect_timeout", "10".to_owned()),
        ];
        PgTool {
            program,
            conninfo: conninfo
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            password: None,
            args: Vec::new(),
            stdin: Vec::new(),
            limit: Duration::from_secs(60),
        }
    }

    /// Sets the password (passed as `PGPASSWORD`).
    pub fn password(mut self, password: &str) -> PgTool {
        self.password = Some(password.to_owned());
        self
    }

    /// Adds a libpq connection keyword (`sslmode`, `application_name`, …).
    pub fn conn(mut self, keyword: &str, value: &str) -> PgTool {
        self.conninfo.push((keyword.to_owned(), value.to_owned()));
        self
    }

    /// Adds program arguments.
    pub fn args<I, S>(mut self, args: I) -> PgTool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds `-c COMMAND` (psql).
    pub fn command(self, sql: &str) -> PgTool {
        self.args(["-c", sql])
    }

    /// Sets what is written to standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> PgTool {
        self.stdin = bytes.into();
        self
    }

    /// Sets how long the program may run.
    pub fn limit(mut self, limit: Duration) -> PgTool {
        self.limit = limit;
        self
    }

    /// The conninfo string libpq parses.
    pub fn conninfo(&self) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let parts: Vec<String> = self
            .conninfo
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        parts.join(" ")
    }

    fn command_line(&self) -> Command {
        let mut cmd = Command::new(pg().bin(self.program));
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("PG")) {
                cmd.env_remove(&name);
            }
        }
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        match self.program {
            // pgbench takes the database (which may be a conninfo string) as its last argument.
            "pgbench" => cmd.args(&self.args).arg(self.conninfo()),
            _ => cmd.arg("-d").arg(self.conninfo()).args(&self.args),
        };
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs the program to completion and collects its output.
    pub async fn run(self) -> ToolOutput {
        let mut child = self
            .command_line()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program));
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = self.stdin.clone();
        // Write concurrently with reading output, so a large input cannot deadlock on full pipes.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let what = format!("{} {:?}", self.program, self.args);
        let output = crate::within_for(self.limit, &what, child.wait_with_output())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let _ = writer.await;
        ToolOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts the program with piped standard streams, for interactive use (a psql session that
    /// waits for notifications). The child is killed when dropped.
    pub fn spawn(self) -> Child {
        self.command_line()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program))
    }
}
