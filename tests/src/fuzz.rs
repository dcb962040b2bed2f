//! The differential staleness fuzzer: a random schema (logged and unlogged tables, partitions,
//! foreign keys that cascade, triggers, tables with and without primary keys) in a database of its
//! own, then random reads through Veneer (point lookups, ranges, joins, aggregates, in the simple and
//! the extended protocol) interleaved with random writes and DDL made directly and through Veneer.
//! After each write, once the replication stream has applied it (at once for a write through Veneer
//! by the reading session), every read seen so far must return through Veneer what it returns
//! directly. DDL made directly without `veneer setup` is not in the stream: then a read may differ
//! only until the TTL bound (`cache_default_ttl` and `catalog_refresh`) has passed.
//!
//! Runs are seeded; a failure names its seed and the shortest sequence of steps found to reproduce
//! it, so that it can go into a test's regression list.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use veneer_config::Millis;

use crate::cache::{on, own_database, status, wait_database_cached};
use crate::{connect, Conn, ProxyHandle};

/// The proxy's TTL and catalog refresh where DDL goes directly to the server without setup: the bound
/// within which reads may differ after it. Elsewhere results live an hour, so that a stale one shows.
const SHORT_TTL: Duration = Duration::from_secs(2);
const LONG_TTL: Duration = Duration::from_secs(3600);
const CATALOG_REFRESH: Duration = Duration::from_secs(1);

/// Reads compared after each write: the most recent ones (a run keeps adding new ones).
const CHECKED_READS: usize = 24;

/// A small, fast, seedable generator (splitmix64): runs must replay exactly from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, share: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= share
    }
}

/// How a run is made.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// `veneer setup` is installed: DDL made directly reaches the stream.
    pub setup: bool,
    /// Without setup, whether DDL is also made directly: results then live a short TTL, and reads
    /// are checked against that bound. (With long-lived results, a stale one shows plainly.)
    pub unfollowed_ddl: bool,
}

impl Mode {
    fn ttl(self) -> Duration {
        if !self.setup && self.unfollowed_ddl {
            SHORT_TTL
        } else {
            LONG_TTL
        }
    }
}

/// A table of the generated schema.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    /// Its primary key: on `id`, on `(id, k)`, or none.
    key: Key,
    partitioned: bool,
    unlogged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Id,
    IdK,
    None,
}

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Step {
    /// A read, compared with the same read made directly.
    Read(Read),
    /// A write (DML), made directly or through Veneer.
    Write {
        /// The statement.
        sql: String,
        /// Made directly on the server (else through Veneer, by the reading session).
        direct: bool,
    },
    /// DDL, made directly or through Veneer.
    Ddl {
        /// The statement.
        sql: String,
        /// Made directly on the server.
        direct: bool,
    },
}

/// A read: its text with literals (simple protocol) or with parameters (extended protocol, one
/// prepared statement reused, as drivers do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The statement, with `$n` for `params` in the extended protocol.
    sql: String,
    params: Vec<i32>,
    extended: bool,
}

impl Read {
    fn text(&self) -> String {
        let mut text = self.sql.clone();
        for (i, p) in self.params.iter().enumerate().rev() {
            text = text.replace(&format!("${}", i + 1), &p.to_string());
        }
        text
    }
}

/// The schema and steps of a run, generated from its seed.
#[derive(Debug, Clone)]
pub struct Case {
    /// The seed it came from.
    pub seed: u64,
    /// Statements creating the schema and its rows.
    pub schema: Vec<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// A read that answered through Veneer what the server does not answer.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// The step after which it was found.
    pub step: usize,
    /// The read, as text.
    pub read: String,
    /// What Veneer answered.
    pub veneer: String,
    /// What the server answered.
    pub direct: String,
}

/// The rows (or the error) of one read.
type Answer = Result<Vec<Vec<Option<String>>>, String>;

impl Case {
    /// The case of `seed`, with `steps` steps.
    pub fn generate(seed: u64, steps: usize, mode: Mode) -> Case {
        let mut rng = Rng::new(seed);
        let (schema, tables) = schema(&mut rng);
        let steps = (0..steps).map(|_| step(&mut rng, &tables, mode)).collect();
        Case {
            seed,
            schema,
            steps,
        }
    }

    /// Runs the case on a database of its own behind a proxy of its own; the first mismatch, if any.
    pub async fn run(&self, mode: Mode) -> Option<Mismatch> {
        Runner::start(self, mode).await.play(self, mode).await
    }

    /// The case with as few steps as still give a mismatch, trying for at most `budget`.
    pub async fn shrink(&self, mode: Mode, budget: Duration) -> Case {
        let deadline = Instant::now() + budget;
        let mut best = self.clone();
        let mut chunk = best.steps.len().div_ceil(2).max(1);
        while chunk >= 1 && Instant::now() < deadline {
            let mut at = 0;
            let mut removed = false;
            while at < best.steps.len() && Instant::now() < deadline {
                let mut trial = best.clone();
                let end = (at + chunk).min(trial.steps.len());
                trial.steps.drain(at..end);
                if trial.run(mode).await.is_some() {
                    best = trial;
                    removed = true;
                } else {
                    at += chunk;
                }
            }
            if !removed {
                if chunk == 1 {
                    break;
                }
                chunk /= 2;
            }
        }
        best
    }

    /// The case as a report: seed, schema and steps.
    pub fn describe(&self) -> String {
        let mut out = format!("seed {}\nschema:\n", self.seed);
        for sql in &self.schema {
            let _ = writeln!(out, "  {sql};");
        }
        out.push_str("steps:\n");
        for (i, step) in self.steps.iter().enumerate() {
            let line = match step {
                Step::Read(r) => format!(
                    "read ({}): {}",
                    if r.extended { "extended" } else { "simple" },
                    r.text()
                ),
                Step::Write { sql, direct } | Step::Ddl { sql, direct } => format!(
                    "{} {}: {sql}",
                    if matches!(step, Step::Ddl { .. }) {
                        "ddl"
                    } else {
                        "write"
                    },
                    if *direct {
                        "directly"
                    } else {
                        "through Veneer"
                    }
                ),
            };
            let _ = writeln!(out, "  {i:3} {line}");
        }
        out
    }
}

/// The seeds of `regression`, then fresh ones until `budget` has passed (from `VENEER_FUZZ_SEED`,
/// else the clock), each run with `steps` steps; the first case that finds a stale read.
pub async fn find(
    mode: Mode,
    regression: &[u64],
    steps: usize,
    budget: Duration,
) -> Option<(Case, Mismatch)> {
    let fresh = std::env::var("VENEER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fuzz ({mode:?}): regression seeds {regression:?}, then fresh seeds from {fresh}");
    let deadline = Instant::now() + budget;
    let seeds = regression
        .iter()
        .copied()
        .chain((0..).map(|n| fresh.wrapping_add(n)));
    for (n, seed) in seeds.enumerate() {
        if n >= regression.len() && Instant::now() >= deadline {
            eprintln!("fuzz ({mode:?}): {n} runs, no stale read");
            return None;
        }
        let case = Case::generate(seed, steps, mode);
        if let Some(mismatch) = case.run(mode).await {
            return Some((case, mismatch));
        }
    }
    unreachable!("the seeds never end")
}

/// [`find`], and on a stale read, the shortest case found that reproduces it, in a panic.
pub async fn fuzz(mode: Mode, regression: &[u64], steps: usize, budget: Duration) {
    let Some((case, mismatch)) = find(mode, regression, steps, budget).await else {
        return;
    };
    let small = case.shrink(mode, Duration::from_secs(90)).await;
    let again = small.run(mode).await;
    panic!(
        "stale read (seed {}): after step {} {} returned through Veneer {} and directly {}\n\
         shortest case found{}:\n{}",
        case.seed,
        mismatch.step,
        mismatch.read,
        mismatch.veneer,
        mismatch.direct,
        if again.is_some() {
            ""
        } else {
            " (flaky: it did not fail again)"
        },
        small.describe()
    );
}

/// The time a fuzz test may take: `VENEER_FUZZ_SECONDS`, else `default`.
pub fn budget(default: Duration) -> Duration {
    std::env::var("VENEER_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// Names of runs' databases: unique within the process.
fn next_database() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("fuzz_{}_{n}", std::process::id())
}

fn schema(rng: &mut Rng) -> (Vec<String>, Vec<Table>) {
    let mut statements = vec!["CREATE TABLE fuzz_sync (id int PRIMARY KEY, n int)".to_owned()];
    statements.push("INSERT INTO fuzz_sync VALUES (1, 0)".to_owned());
    let mut tables: Vec<Table> = Vec::new();
    for i in 0..3 + rng.below(3) {
        let name = format!("t{i}");
        let key = [Key::Id, Key::Id, Key::IdK, Key::None][rng.below(4)];
        let partitioned = key == Key::Id && rng.chance(0.2);
        let unlogged = !partitioned && rng.chance(0.2);
        let pk = match key {
            Key::Id => ", PRIMARY KEY (id)",
            Key::IdK => ", PRIMARY KEY (id, k)",
            Key::None => "",
        };
        // A foreign key to an earlier table keyed by id alone, deleting in cascade.
        let parent = tables
            .iter()
            .filter(|t| t.key == Key::Id && !t.partitioned && !t.unlogged)
            .map(|t| t.name.clone())
            .next()
            .filter(|_| !unlogged && rng.chance(0.4));
        let fk = parent
            .map(|p| format!(", FOREIGN KEY (k) REFERENCES {p} (id) ON DELETE CASCADE"))
            .unwrap_or_default();
        statements.push(format!(
            "CREATE {}TABLE {name} (id int NOT NULL, k int, v text, g int{pk}{fk}){}",
            if unlogged { "UNLOGGED " } else { "" },
            if partitioned {
                " PARTITION BY RANGE (id)"
            } else {
                ""
            }
        ));
        if partitioned {
            statements.push(format!(
                "CREATE TABLE {name}_low PARTITION OF {name} FOR VALUES FROM (MINVALUE) TO (50)"
            ));
            statements.push(format!(
                "CREATE TABLE {name}_high PARTITION OF {name} FOR VALUES FROM (50) TO (MAXVALUE)"
            ));
        }
        if key == Key::None && rng.chance(0.5) {
            statements.push(format!("ALTER TABLE {name} REPLICA IDENTITY FULL"));
        }
        // Keys 0..60; k points at an existing id of a parent (0..20) when there is one.
        statements.push(format!(
            "INSERT INTO {name} SELECT g, g % 20, 'v' || g, g * 3 FROM generate_series(0, 59) g"
        ));
        tables.push(Table {
            name,
            key,
            partitioned,
            unlogged,
        });
    }
    // A trigger that writes to another table: only the stream reports its effect.
    if tables.len() >= 2 && rng.chance(0.6) {
        let (from, to) = (&tables[rng.below(tables.len())], &tables[0]);
        if from.name != to.name {
            statements.push(
                "CREATE FUNCTION fuzz_count() RETURNS trigger LANGUAGE plpgsql AS \
                 'BEGIN UPDATE t0 SET g = g + 1 WHERE id = 0; RETURN NULL; END'"
                    .to_owned(),
            );
            statements.push(format!(
                "CREATE TRIGGER fuzz_count AFTER INSERT OR UPDATE OR DELETE ON {} \
                 FOR EACH ROW EXECUTE FUNCTION fuzz_count()",
                from.name
            ));
        }
    }
    (statements, tables)
}

fn step(rng: &mut Rng, tables: &[Table], mode: Mode) -> Step {
    let t = &tables[rng.below(tables.len())];
    let name = &t.name;
    let id = rng.below(70) as i32;
    match rng.below(100) {
        0..=49 => {
            let extended = rng.chance(0.5);
            let cols = "id::text, k::text, v, g::text";
            let (sql, params) = match rng.below(5) {
                0 | 1 => (format!("SELECT {cols} FROM {name} WHERE id = $1"), vec![id]),
                2 if t.key == Key::IdK => (
                    format!("SELECT {cols} FROM {name} WHERE id = $1 AND k = $2"),
                    vec![id, id % 20],
                ),
                2 => (
                    format!(
                        "SELECT {cols} FROM {name} WHERE id BETWEEN $1 AND $2 ORDER BY id, k, v, g"
                    ),
                    vec![id, id + 10],
                ),
                3 => (
                    format!("SELECT count(*)::text, coalesce(sum(g), 0)::text FROM {name}"),
                    vec![],
                ),
                _ => {
                    let other = &tables[rng.below(tables.len())].name;
                    (
                        format!(
                            "SELECT a.id::text, b.id::text, b.g::text FROM {name} a \
                             JOIN {other} b ON b.k = a.id WHERE a.id < $1 ORDER BY 1, 2, 3"
                        ),
                        vec![id % 30],
                    )
                }
            };
            let read = Read {
                sql,
                params,
                extended,
            };
            Step::Read(read)
        }
        50..=92 => {
            let g = rng.below(1000);
            let sql = match rng.below(7) {
                0 => format!(
                    "INSERT INTO {name} VALUES ({id}, {}, 'n{g}', {g}) ON CONFLICT DO NOTHING",
                    id % 20
                ),
                1 | 2 => format!("UPDATE {name} SET g = g + {g}, v = 'u{g}' WHERE id = {id}"),
                3 => format!(
                    "UPDATE {name} SET g = g * 2 WHERE id BETWEEN {id} AND {}",
                    id + 5
                ),
                4 => format!("DELETE FROM {name} WHERE id = {id}"),
                5 => format!("UPDATE {name} SET id = id + 100 WHERE id = {id}"),
                _ if rng.chance(0.2) => format!("TRUNCATE {name} CASCADE"),
                _ => format!("UPDATE {name} SET k = {} WHERE id = {id}", g % 20),
            };
            Step::Write {
                sql,
                direct: rng.chance(0.6),
            }
        }
        _ => {
            let n = rng.below(1000);
            let sql = match rng.below(7) {
                0 => format!("ALTER TABLE {name} ADD COLUMN c{n} int DEFAULT {n}"),
                1 => format!("ALTER TABLE {name} REPLICA IDENTITY FULL"),
                2 => format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT"),
                3 => format!("ALTER TABLE {name} SET UNLOGGED"),
                4 => format!("ALTER TABLE {name} SET LOGGED"),
                5 => format!("ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {name}_pkey"),
                _ => format!("CREATE INDEX ON {name} (g)"),
            };
            // Without setup, DDL made directly is only bounded by the TTL (see `Mode`).
            let direct = (mode.setup || mode.unfollowed_ddl) && rng.chance(0.5);
            Step::Ddl { sql, direct }
        }
    }
}

/// A run in progress.
struct Runner {
    /// Keeps the proxy running.
    _proxy: ProxyHandle,
    database: String,
    veneer: Conn,
    direct: Conn,
    prepared: [HashMap<String, Statement>; 2],
    reads: Vec<Read>,
    /// When DDL last went directly to the server without setup: reads may differ until the TTL
    /// bound after it.
    unfollowed_ddl: Option<Instant>,
}

impl Runner {
    async fn start(case: &Case, mode: Mode) -> Runner {
        let database = next_database();
        let direct = own_database(&database).await;
        for sql in &case.schema {
            direct
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("schema: {sql}: {e:?}"));
        }
        direct
            .batch_execute("SET synchronous_commit = on")
            .await
            .unwrap();
        let proxy = ProxyHandle::start_with(|s| {
            s.cache_default_ttl = Some(Millis(mode.ttl()));
            s.catalog_refresh = Some(Millis(CATALOG_REFRESH));
        })
        .await;
        let veneer = connect(&on(proxy.addr(), &database)).await.unwrap();
        wait_database_cached(&veneer, &database).await;
        Runner {
            _proxy: proxy,
            database,
            veneer,
            direct,
            prepared: [HashMap::new(), HashMap::new()],
            reads: Vec::new(),
            unfollowed_ddl: None,
        }
    }

    async fn play(mut self, case: &Case, mode: Mode) -> Option<Mismatch> {
        for (i, step) in case.steps.iter().enumerate() {
            match step {
                Step::Read(read) => {
                    // Twice, so that the second is a hit when it can be one.
                    let _ = self.answer(true, read).await;
                    if let Some(m) = self.compare(read, i).await {
                        return Some(m);
                    }
                    if !self.reads.contains(read) {
                        self.reads.push(read.clone());
                    }
                }
                Step::Write { sql, direct: true } => self.direct_write(sql).await,
                Step::Write { sql, direct: false } | Step::Ddl { sql, direct: false } => {
                    let _ = self.veneer.batch_execute(sql).await;
                }
                Step::Ddl { sql, direct: true } if mode.setup => self.direct_write(sql).await,
                Step::Ddl { sql, direct: true } => {
                    if self.direct.batch_execute(sql).await.is_ok() {
                        self.unfollowed_ddl = Some(Instant::now());
                    }
                }
            }
            if !matches!(step, Step::Read(_)) {
                let start = self.reads.len().saturating_sub(CHECKED_READS);
                for at in start..self.reads.len() {
                    let read = self.reads[at].clone();
                    if let Some(m) = self.compare(&read, i).await {
                        return Some(m);
                    }
                }
            }
        }
        None
    }

    /// Makes `sql` directly in a transaction that also moves the sync row, then waits until the
    /// stream has applied that transaction.
    async fn direct_write(&mut self, sql: &str) {
        let before = self.applied().await;
        let batch = format!("BEGIN; {sql}; UPDATE fuzz_sync SET n = n + 1 WHERE id = 1; COMMIT");
        if self.direct.batch_execute(&batch).await.is_err() {
            let _ = self.direct.batch_execute("ROLLBACK").await;
            return;
        }
        let applied = crate::wait_for(Duration::from_secs(20), || async {
            self.applied().await > before
        })
        .await;
        assert!(applied, "the stream did not apply {sql}");
    }

    /// Transactions the stream of the run's database has applied.
    async fn applied(&self) -> u64 {
        let status = status(&self.veneer).await;
        status
            .get(&format!("replication {}", self.database))
            .and_then(|row| row.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Compares `read` through Veneer and directly; within the TTL bound of DDL made directly
    /// without setup, waits for them to agree.
    async fn compare(&mut self, read: &Read, step: usize) -> Option<Mismatch> {
        let mut veneer = self.answer(true, read).await;
        let mut direct = self.answer(false, read).await;
        if let Some(at) = self.unfollowed_ddl {
            let bound = at + SHORT_TTL + CATALOG_REFRESH + Duration::from_secs(2);
            while veneer != direct && Instant::now() < bound {
                tokio::time::sleep(Duration::from_millis(100)).await;
                veneer = self.answer(true, read).await;
                direct = self.answer(false, read).await;
            }
        }
        (veneer != direct).then(|| Mismatch {
            step,
            read: read.text(),
            veneer: format!("{veneer:?}"),
            direct: format!("{direct:?}"),
        })
    }

    /// The answer to `read` through Veneer (`veneer`) or directly.
    async fn answer(&mut self, veneer: bool, read: &Read) -> Answer {
        let client: &Client = if veneer { &self.veneer } else { &self.direct };
        if !read.extended {
            let messages = client
                .simple_query(&read.text())
                .await
                .map_err(|e| code(&e))?;
            return Ok(crate::client::simple_rows(&messages));
        }
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = read
            .params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        // A statement prepared before DDL may need preparing again: once.
        for attempt in 0..2 {
            let statements = &mut self.prepared[usize::from(veneer)];
            let statement = match statements.get(&read.sql) {
                Some(s) => s.clone(),
                None => {
                    let s = client.prepare(&read.sql).await.map_err(|e| code(&e))?;
                    statements.insert(read.sql.clone(), s.clone());
                    s
                }
            };
            match client.query(&statement, &params).await {
                Ok(rows) => {
                    return Ok(rows
                        .iter()
                        .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
                        .collect())
                }
                Err(e) if attempt == 0 => {
                    let _ = e;
                    statements.remove(&read.sql);
                }
                Err(e) => return Err(code(&e)),
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// An error as its SQLSTATE (messages may name objects by OIDs that differ).
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| e.to_string(), |c| c.code().to_owned())
}
