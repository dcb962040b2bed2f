//! The private PostgreSQL server each test binary starts on first use and shares between its tests.
//!
//! Tests must never depend on a server the machine happens to run (it may be absent, another version,
//! or configured differently), so the harness makes its own: `initdb` from the installed binaries into
//! a temp dir, a kernel-chosen port, `wal_level=logical` for the invalidation issues to come, and one
//! role per authentication method; roles a test creates for itself log in by `trust` over TCP. When
//! the tests run as root the server runs as `postgres`, since PostgreSQL refuses to run as root. The
//! server is stopped when the test process exits: statics are never dropped, so this is an `atexit`
//! handler, backed by a watchdog process for the case where the test process is killed and `atexit`
//! never runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use veneer_config::HostPort;

/// The bootstrap superuser; `trust` on every path, used for setup and for direct observation
/// (`pg_stat_activity`).
pub const SUPERUSER: &str = "postgres";
/// A role authenticated by `trust` over TCP.
pub const TRUST_USER: &str = "trust_user";
/// A role authenticated by `md5` (its password is stored as an MD5 hash, so the MD5 exchange is used
/// rather than PostgreSQL's silent upgrade to SCRAM).
pub const MD5_USER: &str = "md5_user";
/// [`MD5_USER`]'s password.
pub const MD5_PASSWORD: &str = "md5 secret";
/// A role authenticated by `password` (cleartext over the wire), the fourth method Postgres offers.
pub const PASSWORD_USER: &str = "password_user";
/// [`PASSWORD_USER`]'s password.
pub const PASSWORD_PASSWORD: &str = "plain secret";
/// A role `pg_hba.conf` admits only over TLS (`hostssl` trust, `hostnossl` reject): a session of it
/// through the proxy proves the proxy's upstream connection is encrypted.
pub const TLS_USER: &str = "tls_user";
/// A role authenticated by `scram-sha-256`.
pub const SCRAM_USER: &str = "scram_user";
/// [`SCRAM_USER`]'s password.
pub const SCRAM_PASSWORD: &str = "scram secret";
/// A role with LOGIN and REPLICATION and nothing else (no superuser), as a managed service grants
/// Veneer's own login: `trust` over TCP.
pub const SERVICE_USER: &str = "service_user";
/// The database every test uses; tests share it and keep their objects apart by name.
pub const DATABASE: &str = "postgres";

/// A running private PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    /// TCP port on 127.0.0.1, picked free at start.
    port: u16,
    /// Temp dir holding the data directory, the unix socket and the server log; removed at exit.
    base: PathBuf,
    /// Directory of `initdb`, `pg_ctl`, `psql`, `pgbench`, so every tool is the server's version.
    bindir: PathBuf,
    /// Whether server-side commands must be run as the `postgres` OS user (the tests run as root).
    as_postgres: bool,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();

/// A paused postmaster (see [`PgServer::pause`]), resumed when dropped, so a failing test never
/// leaves the server paused.
#[derive(Debug)]
pub struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The test binary's server, started on first call. A failure to start panics with the server log,
/// which names the cause (missing binaries, permissions, port).
pub fn pg() -> &'static PgServer {
    SERVER.get_or_init(PgServer::start)
}

impl PgServer {
    /// The server's TCP address, for direct connections and as the proxy's upstream.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server as a proxy upstream setting.
    pub fn upstream(&self) -> HostPort {
        HostPort::new("127.0.0.1", self.port)
    }

    /// Path of one of the PostgreSQL client or server programs matching the server's version.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The unix socket directory, for setup commands that must not go through TCP.
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The postmaster's process id, from its pid file.
    pub fn postmaster_pid(&self) -> i32 {
        let file = self.base.join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", file.display()))
    }

    /// Stops the postmaster with SIGSTOP until the returned guard is dropped: it then takes no new
    /// connection (the kernel still queues them) and answers none, as a hung or unreachable server.
    /// Running sessions go on. For test binaries of their own.
    pub fn pause(&self) -> Paused {
        let pid = self.postmaster_pid();
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Paused(pid)
    }

    /// The server log so far, to print when a test needs the server's side of a failure.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default()
    }

    fn start() -> PgServer {
        let bindir = find_bindir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let base = std::env::temp_dir().join(format!("veneer-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        if as_postgres {
            chown_to_postgres(&base);
        }
        let port = crate::free_port();
        let server = PgServer {
            port,
            base,
            bindir,
            as_postgres,
        };
        server.init_cluster();
        // Register the cleanup before starting, so a server that starts but fails later is stopped too.
        server.spawn_watchdog();
        unsafe {
            libc::atexit(stop_at_exit);
        }
        server.start_postmaster();
        server.create_roles();
        server
    }

    fn start_postmaster(&self) {
        self.pg_ctl_start(&["-w", "-t", "60"]);
    }

    /// `pg_ctl start` with the server log, plus `wait` (whether and how long to wait).
    fn pg_ctl_start(&self, wait: &[&str]) {
        let log = self.base.join("server.log");
        self.run_as_server_user(
            "pg_ctl start",
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(wait)
                .arg("start"),
        );
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// Stops the server (fast shutdown: sessions are ended), runs `offline` while it is down (to copy
    /// or replace its data directory, as a restore from a snapshot does), and starts it again on the
    /// same port. For test binaries of their own: every session of the binary is ended.
    pub fn restart_with(&self, offline: impl FnOnce(&Path)) {
        self.stop("fast");
        offline(&self.data_dir());
        self.start_postmaster();
    }

    /// Stops the server in `mode` (`fast`: sessions are ended and a checkpoint written; `immediate`:
    /// every process is killed and the next start recovers from the WAL, as after a crash) and starts
    /// it again without waiting, so the caller can see when it takes connections. For test binaries
    /// of their own: every session of the binary is ended.
    pub fn restart(&self, mode: &str) {
        self.stop(mode);
        self.pg_ctl_start(&["-W"]);
    }

    fn stop(&self, mode: &str) {
        self.run_as_server_user(
            &format!("pg_ctl stop -m {mode}"),
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
        );
    }

    fn init_cluster(&self) {
        let data = self.base.join("data");
        self.run_as_server_user(
            "initdb",
            self.server_command("initdb").arg("-D").arg(&data).args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
        );
        let conf = format!(
            "\n# veneer-tests\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{sock}'\nwal_level = logical\nmax_wal_senders = 100\n\
             max_replication_slots = 100\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\nssl = on\nmax_prepared_transactions = 10\n\
             # Small, so that transactions of a few thousand rows are streamed while in progress\n\
             # (pgoutput protocol 2) and the tests cover that path.\n\
             logical_decoding_work_mem = 64kB\n",
            port = self.port,
            sock = self.base.display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        self.install_server_certificate(&data);
        let hba = format!(
            "local all all trust\n\
             hostssl all {TLS_USER} 127.0.0.1/32 trust\n\
             hostnossl all {TLS_USER} 127.0.0.1/32 reject\n\
             host all {TRUST_USER} 127.0.0.1/32 trust\n\
             host all {MD5_USER} 127.0.0.1/32 md5\n\
             host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {PASSWORD_USER} 127.0.0.1/32 password\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\n\
             host all {SERVICE_USER} 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// The authority that signed the server's certificate, for verify-full tests.
    pub fn ca_cert(&self) -> PathBuf {
        self.base.join("server-ca.pem")
    }

    /// `ssl = on` needs `server.crt` and a `server.key` only the server's user can read; the signing
    /// authority is kept beside the data directory.
    fn install_server_certificate(&self, data: &Path) {
        let cert = crate::tls::TestCert::generate();
        std::fs::copy(&cert.ca, self.ca_cert()).expect("keep the server's CA certificate");
        for (from, name) in [(&cert.cert, "server.crt"), (&cert.key, "server.key")] {
            let to = data.join(name);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", to.display()));
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
            if self.as_postgres {
                chown_to_postgres(&to);
            }
        }
    }

    fn create_roles(&self) {
        let sql = format!(
            "SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n\
             SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';\n\
             CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD_PASSWORD}';\n\
             CREATE ROLE {TRUST_USER} LOGIN;\n\
             CREATE ROLE {TLS_USER} LOGIN;\n\
             CREATE ROLE {SERVICE_USER} LOGIN REPLICATION;\n\
             GRANT ALL ON SCHEMA public TO {TRUST_USER}, {MD5_USER}, {SCRAM_USER}, {PASSWORD_USER};\n"
        );
        let output = Command::new(self.bin("psql"))
            .arg("-X")
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(&self.base)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                DATABASE,
                "-c",
                &sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "creating roles failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// A command for a server-side program, run as `postgres` when the tests run as root.
    fn server_command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(self.bin(program));
            cmd
        } else {
            Command::new(self.bin(program))
        }
    }

    fn run_as_server_user(&self, what: &str, cmd: &mut Command) {
        // pg_ctl's postmaster writes to the -l log, never to these pipes, so capturing cannot hang.
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}\n{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// The shell command that stops the server at once and removes its directory.
    fn stop_script(&self) -> String {
        let pg_ctl = self.bin("pg_ctl");
        let runuser = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{runuser}'{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            pg_ctl.display(),
            self.base.join("data").display(),
            self.base.display()
        )
    }

    /// A shell that outlives a killed test process just long enough to stop its server, so an
    /// aborted run leaves no postmaster holding memory and a port. It polls once a second; it does not
    /// synchronize anything in the tests.
    fn spawn_watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}",
            pid = std::process::id(),
            stop = self.stop_script()
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("veneer-tests: no watchdog for the test server: {e}");
        }
    }
}

extern "C" fn stop_at_exit() {
    if let Some(server) = SERVER.get() {
        let _ = Command::new("sh")
            .args(["-c", &server.stop_script()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Finds the PostgreSQL programs: `VENEER_TEST_PG_BINDIR`, then `pg_config --bindir`, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps the server programs out of `PATH`).
fn find_bindir() -> PathBuf {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("VENEER_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path().join("bin");
            has_initdb(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => dir,
        None => panic!(
            "no PostgreSQL server programs found (initdb): install postgresql (apt-get install \
             postgresql) or set VENEER_TEST_PG_BINDIR"
        ),
    }
}

fn chown_to_postgres(path: &Path) {
    let name = c"postgres";
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs the `postgres` OS user to run the test server"
    );
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(text.as_bytes()).expect("append to config");
}
