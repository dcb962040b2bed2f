//! Remote cache tiers as real processes: `veneer-cache-node`s, a private `redis-server`, and a
//! three-primary Redis Cluster, each on free ports, stopped when dropped. Tests kill, pause and
//! restart them to see what the proxy does about it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::binary::{cache_node_bin, collect_lines};
use crate::TempDir;

/// A server speaking RESP, run as a child process.
#[derive(Debug)]
pub struct RespServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    /// The password clients must give, when it was started with one.
    password: Option<String>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RespServer {
    /// A `veneer-cache-node` on a free port, with `extra` arguments.
    pub async fn cache_node(extra: &[&str]) -> RespServer {
        let port = crate::free_port();
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--max-bytes".to_owned(),
            (64u64 << 20).to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        RespServer::start(cache_node_bin().await, port, args).await
    }

    /// A private `redis-server` on `port` (a free one when `None`), keeping nothing on disk, with
    /// `extra` arguments.
    pub async fn redis(port: Option<u16>, extra: &[String]) -> RespServer {
        let port = port.unwrap_or_else(crate::free_port);
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        RespServer::start(PathBuf::from("redis-server"), port, args).await
    }

    async fn start(program: PathBuf, port: u16, args: Vec<String>) -> RespServer {
        let password = args
            .iter()
            .position(|a| a == "--password")
            .and_then(|i| args.get(i + 1))
            .cloned();
        let mut server = RespServer {
            child: None,
            port,
            program,
            args,
            password,
            lines: Arc::default(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        collect_lines(child.stdout.take().expect("piped"), self.lines.clone());
        collect_lines(child.stderr.take().expect("piped"), self.lines.clone());
        self.child = Some(child);
        let port = self.port;
        let up = crate::wait_for(crate::STEP_TIMEOUT, || ping(port)).await;
        assert!(
            up,
            "{} on port {port} never answered PING; output:\n{}",
            self.program.display(),
            self.lines.lock().expect("lines").join("\n")
        );
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the server is running")
    }

    /// Sends signal `name` (`STOP`, `CONT`, `TERM`, `KILL`).
    pub async fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Ends the process with `signal` and waits for it to exit.
    pub async fn stop(&mut self, signal: &str) {
        self.signal(signal).await;
        let mut child = self.child.take().expect("running");
        crate::within("the server to exit", child.wait())
            .await
            .expect("wait for the server");
    }

    /// Starts the process again, on the same port with the same arguments.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn().await;
    }

    /// Runs `redis-cli -p <port> <args>`; its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args).await
    }

    /// Cached results the server holds: Veneer's keys but the proxies' own values (generations
    /// snapshots) and leases.
    pub async fn results(&self) -> u64 {
        self.keys_matching("veneer:*")
            .await
            .iter()
            .filter(|k| !k.windows(6).any(|w| w == b"fleet:") && !k.ends_with(b":lease"))
            .count() as u64
    }

    /// Keys the server holds (DBSIZE).
    pub async fn keys(&self) -> u64 {
        match self.command(&[b"DBSIZE"]).await {
            Reply::Integer(n) => n as u64,
            other => panic!("DBSIZE answered {other:?}"),
        }
    }
}

impl RespServer {
    /// Runs one command over a connection of its own (authenticated first when the server has a
    /// password), with binary-safe arguments (redis-cli's output cannot carry Veneer's binary
    /// keys); its reply.
    pub async fn command(&self, args: &[&[u8]]) -> Reply {
        let encode = |args: &[&[u8]]| {
            let mut request = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg);
                request.extend_from_slice(b"\r\n");
            }
            request
        };
        let exchange = async {
            let socket = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let mut socket = tokio::io::BufReader::new(socket);
            if let Some(password) = &self.password {
                socket
                    .get_mut()
                    .write_all(&encode(&[b"AUTH", password.as_bytes()]))
                    .await?;
                read_reply(&mut socket).await?;
            }
            socket.get_mut().write_all(&encode(args)).await?;
            read_reply(&mut socket).await
        };
        crate::within("a RESP reply", exchange)
            .await
            .unwrap_or_else(|e| panic!("RESP command on port {}: {e}", self.port))
    }

    /// Every key matching `pattern` (SCAN, binary-safe).
    pub async fn keys_matching(&self, pattern: &str) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let reply = self
                .command(&[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    pattern.as_bytes(),
                    b"COUNT",
                    b"1000",
                ])
                .await;
            let Reply::Array(parts) = reply else {
                panic!("SCAN answered {reply:?}")
            };
            let [Reply::Bulk(Some(next)), Reply::Array(found)] = &parts[..] else {
                panic!("SCAN answered {parts:?}")
            };
            keys.extend(found.iter().filter_map(|k| match k {
                Reply::Bulk(Some(k)) => Some(k.clone()),
                _ => None,
            }));
            if next == b"0" {
                return keys;
            }
            cursor = next.clone();
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`.
    Simple(String),
    /// `-message`.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n`.
    Array(Vec<Reply>),
}

fn read_reply<'a>(
    input: &'a mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = Vec::new();
        input.read_until(b'\n', &mut line).await?;
        let text = String::from_utf8_lossy(&line[1..line.len().saturating_sub(2)]).into_owned();
        let number = || {
            text.parse::<i64>()
                .map_err(|_| std::io::Error::other(format!("bad RESP line {text:?}")))
        };
        Ok(match line.first() {
            Some(b'+') => Reply::Simple(text),
            Some(b'-') => Reply::Error(text),
            Some(b':') => Reply::Integer(number()?),
            Some(b'$') => match number()? {
                -1 => Reply::Bulk(None),
                n => {
                    let mut bytes = vec![0; n as usize + 2];
                    input.read_exact(&mut bytes).await?;
                    bytes.truncate(n as usize);
                    Reply::Bulk(Some(bytes))
                }
            },
            Some(b'*') => {
                let mut items = Vec::new();
                for _ in 0..number()? {
                    items.push(read_reply(input).await?);
                }
                Reply::Array(items)
            }
            _ => return Err(std::io::Error::other(format!("bad RESP line {text:?}"))),
        })
    })
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output; fails the test if it fails.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = crate::within(
        "redis-cli",
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output(),
    )
    .await
    .expect("run redis-cli");
    assert!(
        output.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether a RESP server answers PING on `port` (within a second): with PONG, or by asking for
/// its password.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        socket.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        socket.read_exact(&mut reply).await.ok()?;
        (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A Redis Cluster of three primaries, each a private `redis-server` with its files in a temporary
/// directory.
#[derive(Debug)]
pub struct RedisCluster {
    /// The primaries.
    pub servers: Vec<RespServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three primaries and joins them into one cluster with `redis-cli --cluster create`;
    /// returns once the cluster reports state ok.
    pub async fn start() -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let mut servers = Vec::new();
        for n in 0..3 {
            let port = cluster_port();
            let files = dir.path().join(n.to_string());
            std::fs::create_dir_all(&files).expect("cluster node dir");
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
                files.to_str().expect("utf-8 temp dir"),
            ];
            let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            servers.push(RespServer::redis(Some(port), &extra).await);
        }
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(servers.iter().map(RespServer::address));
        create.push("--cluster-yes".to_owned());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        redis_cli(servers[0].port, &create).await;
        let first = servers[0].port;
        let ok = crate::wait_for(crate::STEP_TIMEOUT, || async move {
            redis_cli(first, &["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
        })
        .await;
        assert!(ok, "the cluster never reported state ok");
        RedisCluster { servers, _dir: dir }
    }

    /// The members' URLs, as cache_nodes lists them.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RespServer::url).collect()
    }
}

/// A free port whose cluster bus port (10000 higher) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = crate::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}
