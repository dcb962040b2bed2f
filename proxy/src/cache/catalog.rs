//! What the names in a statement refer to, read from the upstream's catalog over Veneer's own login:
//! which relations are plain tables (a view's result depends on tables the query does not name), which
//! belong to the system catalogs, and how volatile each function is (`provolatile` in pg_proc).
//!
//! Names are looked up without their schema and every relation or function of that name counts, in any
//! schema: whatever the session's search_path resolves a name to, the verdict covers it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use veneer_config::Config;
use veneer_invalidation::rows::KeyType;
pub use veneer_invalidation::rows::RowKeys;
use veneer_invalidation::test_decoding::TableKeys;

use super::classify::{self, Analysis, Name};
use crate::error::Error;
use crate::upstream;

/// What a relation name can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Only permanent plain or partitioned tables, none in a system schema.
    Table,
    /// An unlogged table: its changes write no WAL, so the replication stream never reports them;
    /// cached only under a TTL rule or hint.
    Unlogged,
    /// A system catalog table or view (pg_catalog, information_schema): cached only under a TTL rule.
    System,
    /// A view, materialized view, foreign table, sequence or temporary table: never cached.
    Other,
}

/// What calling a function by this name can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Its result depends only on its arguments and the session's settings.
    Safe,
    /// Its result may change between calls; `may_write` when it may also change data (a volatile
    /// function outside pg_catalog, which the proxy cannot see into).
    Unsafe {
        /// Whether a call may change data.
        may_write: bool,
    },
}

/// A snapshot of one database's catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    relations: HashMap<String, Relation>,
    functions: HashMap<String, Function>,
    /// What each IMMUTABLE SQL function of a user's calls, for [`Catalog::settle_functions`].
    calls: HashMap<String, Vec<String>>,
    /// Tables whose writes may change what the proxy cannot name: they have triggers of their own
    /// (not those of foreign keys) or rules.
    opaque: HashSet<String>,
    /// Foreign keys that change the referencing rows (ON DELETE or ON UPDATE CASCADE, SET NULL or
    /// SET DEFAULT): each referenced table maps to its referencing ones.
    cascades: HashMap<String, Vec<String>>,
    /// How point lookups of each ordinary permanent table are keyed (`None` when they are not: no
    /// usable replica identity, or a name held by several tables).
    keys: HashMap<String, Option<Arc<RowKeys>>>,
    /// Partitioning and inheritance trees: each member's name maps to every member's. The stream
    /// reports a change under the partition (or the root) that holds the row, while a query may
    /// read any member, so a read of one depends on all of them.
    families: HashMap<String, Vec<String>>,
    /// The server's system identifier and timeline: the namespace of a remote tier's keys.
    pub server: (u64, u32),
}

/// Which server this is (readable by any role), for the namespace of a remote tier's keys.
const SERVER: &str =
    "SELECT system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint()) \
     FROM pg_control_system()";

/// Built-in STABLE functions whose result changes without any write: the clock, the session's own
/// identity, and the catalog (which writes through the proxy do not bump). Other stable built-ins
/// depend on their arguments and the settings, which the cache key holds.
const STABLE_BUT_CHANGING: &[&str] = &[
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "age",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "obj_description",
    "col_description",
    "shobj_description",
    "format_type",
    "mxid_age",
    "row_security_active",
];

/// Prefixes of the same kind: privilege checks, catalog lookups (reg* conversions), pg_* introspection,
/// transaction ids, and the *_to_xml functions that read tables named in a string.
const STABLE_BUT_CHANGING_PREFIXES: &[&str] = &[
    "has_",
    "pg_",
    "to_reg",
    "reg",
    "txid_",
    "database_to_xml",
    "schema_to_xml",
    "table_to_xml",
];

/// SQL-standard forms sqlparser reports as function calls though pg_proc has no entry by that name.
const SPECIAL_FORMS: &[(&str, Function)] = &[
    ("coalesce", Function::Safe),
    ("nullif", Function::Safe),
    ("greatest", Function::Safe),
    ("least", Function::Safe),
    ("current_user", Function::Safe),
    ("session_user", Function::Safe),
    ("current_role", Function::Safe),
    ("user", Function::Safe),
    ("current_catalog", Function::Safe),
    ("current_schema", Function::Safe),
    ("current_timestamp", Function::Unsafe { may_write: false }),
    ("current_date", Function::Unsafe { may_write: false }),
    ("current_time", Function::Unsafe { may_write: false }),
    ("localtime", Function::Unsafe { may_write: false }),
    ("localtimestamp", Function::Unsafe { may_write: false }),
];

const RELATIONS: &str = "SELECT c.relname, n.nspname, c.relkind::text, c.relpersistence::text, \
     c.relhasrules OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
       WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')";

/// Columns of ordinary tables: whether each is in the replica identity key, and whether its values
/// can key rows (a type with one text form and a deterministic collation, not generated — pgoutput
/// leaves generated columns out).
const COLUMNS: &str = "SELECT c.oid, c.relname, c.relreplident::text, a.attname, a.atttypid, \
       COALESCE(co.collisdeterministic, true) AND a.attgenerated = '', \
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid \
         AND a.attnum = ANY (i.indkey) AND CASE c.relreplident WHEN 'd' THEN i.indisprimary \
           WHEN 'i' THEN i.indisreplident ELSE false END) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
     ORDER BY c.oid, a.attname";

/// Referenced and referencing table of each foreign key whose actions change the referencing rows.
const CASCADES: &str = "SELECT DISTINCT f.relname, r.relname FROM pg_catalog.pg_constraint k \
     JOIN pg_catalog.pg_class f ON f.oid = k.confrelid JOIN pg_catalog.pg_class r ON r.oid = k.conrelid \
     WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))";

/// Parent and child of each inheritance or partitioning link.
const INHERITANCE: &str = "SELECT p.relname, c.relname FROM pg_catalog.pg_inherits i \
     JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid JOIN pg_catalog.pg_class p ON p.oid = i.inhparent";

const FUNCTIONS: &str = "SELECT p.proname, n.nspname, p.provolatile::text, l.lanname::text, \
       CASE WHEN n.nspname <> 'pg_catalog' AND l.lanname = 'sql' THEN p.prosrc END \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_language l ON l.oid = p.prolang";

impl Catalog {
    /// Reads the catalog of `database` over a login of `service_user`.
    pub async fn load(
        config: &Config,
        tls: Option<&tokio_rustls::TlsConnector>,
        database: &str,
    ) -> Result<Catalog, Error> {
        let (client, driver) =
            upstream::service_login(config, tls, database, "veneer catalog").await?;
        let read = async {
            let relations = client.query(RELATIONS, &[]).await?;
            let functions = client.query(FUNCTIONS, &[]).await?;
            let columns = client.query(COLUMNS, &[]).await?;
            let links = client.query(INHERITANCE, &[]).await?;
            let cascades = client.query(CASCADES, &[]).await?;
            let server = client.query_one(SERVER, &[]).await?;
            Ok::<_, tokio_postgres::Error>((relations, functions, columns, links, cascades, server))
        };
        let result = read.await;
        drop(client);
        let _ = driver.await;
        let (relations, functions, columns, links, cascades, server) = result
            .map_err(|e| Error::service("catalog read", &config.service_user, database, e))?;
        let mut catalog = Catalog::default();
        let system: String = server.get(0);
        let timeline: i32 = server.get(1);
        catalog.server = (system.parse().unwrap_or(0), timeline as u32);
        for row in relations {
            let (name, schema, kind, persistence): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if row.get::<_, bool>(4) {
                catalog.add_opaque(name.clone());
            }
            catalog.add_relation(name, &schema, &kind, &persistence);
        }
        for row in functions {
            let (name, schema, volatility, language): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let body: Option<String> = row.get(4);
            catalog.add_function(name, &schema, &volatility, &language, body.as_deref());
        }
        let mut table: Option<(u32, String, String, Vec<KeyColumn>)> = None;
        for row in columns {
            let oid: u32 = row.get(0);
            if table.as_ref().is_some_and(|(seen, ..)| *seen != oid) {
                let (_, name, identity, columns) = table.take().expect("checked");
                catalog.add_keys(name, &identity, &columns);
            }
            let (_, _, _, columns) =
                table.get_or_insert_with(|| (oid, row.get(1), row.get(2), Vec::new()));
            columns.push(KeyColumn {
                name: row.get(3),
                type_oid: row.get(4),
                usable: row.get(5),
                key: row.get(6),
            });
        }
        if let Some((_, name, identity, columns)) = table {
            catalog.add_keys(name, &identity, &columns);
        }
        catalog.settle_functions();
        for row in links {
            catalog.link(row.get(0), row.get(1));
        }
        for row in cascades {
            catalog.cascade(row.get(0), row.get(1));
        }
        Ok(catalog)
    }

    /// Adds how the rows of table `name` are keyed: `identity` is its relreplident, `columns` its
    /// columns in name order. A name held by several tables gets no keys.
    pub fn add_keys(&mut self, name: String, identity: &str, columns: &[KeyColumn]) {
        let usable = |c: &KeyColumn| {
            KeyType::of(c.type_oid)
                .filter(|_| c.usable)
                .map(|t| (c.name.clone(), t))
        };
        let keys = if identity == "f" {
            Some(RowKeys::Each(columns.iter().filter_map(usable).collect()))
        } else {
            let key: Vec<&KeyColumn> = columns.iter().filter(|c| c.key).collect();
            let typed: Option<Vec<_>> = key.iter().map(|c| usable(c)).collect();
            typed.filter(|t| !t.is_empty()).map(RowKeys::Together)
        }
        .map(Arc::new);
        let merged = if self.keys.contains_key(&name) {
            None
        } else {
            keys
        };
        self.keys.insert(name, merged);
    }

    /// Judges the IMMUTABLE SQL functions by what they call, now that every function is known: one
    /// that calls an unsafe function is unsafe too, repeated until nothing changes.
    pub fn settle_functions(&mut self) {
        loop {
            let unsafe_now: Vec<String> = self
                .calls
                .iter()
                .filter(|(caller, called)| {
                    self.functions.get(*caller) == Some(&Function::Safe)
                        && called.iter().any(|f| {
                            let name = Name {
                                schema: None,
                                name: f.clone(),
                            };
                            self.function(&name) != Function::Safe
                        })
                })
                .map(|(caller, _)| caller.clone())
                .collect();
            if unsafe_now.is_empty() {
                return;
            }
            for caller in unsafe_now {
                self.functions
                    .insert(caller, Function::Unsafe { may_write: false });
            }
        }
    }

    /// Records that `child` inherits from (or is a partition of) `parent`.
    pub fn link(&mut self, parent: String, child: String) {
        let mut members: Vec<String> = [&parent, &child]
            .iter()
            .flat_map(|n| {
                self.families
                    .get(n.as_str())
                    .cloned()
                    .unwrap_or_else(|| vec![n.to_string()])
            })
            .collect();
        members.sort();
        members.dedup();
        for member in &members {
            self.families.insert(member.clone(), members.clone());
        }
    }

    /// How point lookups of table `name` are keyed, if they can be.
    pub fn row_keys(&self, name: &Name) -> Option<&RowKeys> {
        self.keys.get(&name.name)?.as_deref()
    }

    /// How the rows of table `name` are keyed, as the replication stream's decoder asks: the same
    /// answer point lookups are planned from.
    pub fn table_keys(&self, name: &str) -> TableKeys {
        match self.keys.get(name) {
            None => TableKeys::Unknown,
            Some(None) => TableKeys::Unkeyed,
            Some(Some(keys)) => TableKeys::Keyed(Arc::clone(keys)),
        }
    }

    /// Every table whose changes can show in a read of `name`: itself, and the rest of its
    /// partitioning or inheritance tree.
    pub fn family<'a>(&'a self, name: &'a Name) -> &'a [String] {
        match self.families.get(&name.name) {
            Some(members) => members,
            None => std::slice::from_ref(&name.name),
        }
    }

    /// Adds one pg_class row (`kind` is relkind, `persistence` relpersistence); names held by several
    /// relations keep the least cacheable verdict.
    pub fn add_relation(&mut self, name: String, schema: &str, kind: &str, persistence: &str) {
        let this = if !matches!(kind, "r" | "p") || persistence == "t" {
            Relation::Other
        } else if is_system_schema(schema) {
            Relation::System
        } else if persistence == "u" {
            Relation::Unlogged
        } else {
            Relation::Table
        };
        let merged = match self.relations.get(&name) {
            None => this,
            Some(&seen) => worst_relation(seen, this),
        };
        self.relations.insert(name, merged);
    }

    /// Adds one pg_proc row (`volatility` is provolatile, `language` the function's, `body` its
    /// source when it is written in SQL); overloads keep the least safe verdict.
    ///
    /// An IMMUTABLE function of a user's may still read tables (Postgres does not check the
    /// declaration), and a cached result would then not depend on them: it counts as safe only when
    /// it cannot read tables (C or internal code) or its SQL body names no relation.
    pub fn add_function(
        &mut self,
        name: String,
        schema: &str,
        volatility: &str,
        language: &str,
        body: Option<&str>,
    ) {
        let builtin = schema == "pg_catalog";
        let mut reads_nothing = || {
            if builtin || matches!(language, "c" | "internal") {
                return true;
            }
            let Some(Analysis::Read {
                relations,
                functions,
                ..
            }) = body.map(classify::analyze)
            else {
                return false;
            };
            // What it calls is judged once every function is known (see `settle_functions`).
            self.calls
                .entry(name.clone())
                .or_default()
                .extend(functions.into_iter().map(|f| f.name));
            relations.is_empty()
        };
        let this = match volatility {
            "i" if reads_nothing() => Function::Safe,
            "i" => Function::Unsafe { may_write: false },
            "s" if builtin && !stable_but_changing(&name) => Function::Safe,
            "v" if !builtin => Function::Unsafe { may_write: true },
            _ => Function::Unsafe { may_write: false },
        };
        let merged = match self.functions.get(&name) {
            None => this,
            Some(&seen) => worst_function(seen, this),
        };
        self.functions.insert(name, merged);
    }

    /// What `name` can refer to; `None` when no relation has that name (yet).
    pub fn relation(&self, name: &Name) -> Option<Relation> {
        self.relations.get(&name.name).copied()
    }

    /// Records that a foreign key of `referencing` changes its rows when `referenced` changes.
    pub fn cascade(&mut self, referenced: String, referencing: String) {
        self.cascades
            .entry(referenced)
            .or_default()
            .push(referencing);
    }

    /// Records that writes to `name` may change what the proxy cannot name (triggers, rules).
    pub fn add_opaque(&mut self, name: String) {
        self.opaque.insert(name);
    }

    /// What a write to `relations` may change: the tables it names, the rest of their partitioning
    /// or inheritance trees, and the tables their foreign keys cascade into (and so on).
    pub fn reach(&self, relations: &BTreeSet<Name>) -> Reach {
        let named: BTreeSet<&str> = relations
            .iter()
            .flat_map(|r| self.family(r).iter().map(String::as_str))
            .collect();
        let mut tables = named.clone();
        let mut queue: Vec<&str> = named.iter().copied().collect();
        while let Some(table) = queue.pop() {
            let family = self.families.get(table).into_iter().flatten();
            let cascaded = self.cascades.get(table).into_iter().flatten();
            for next in family.chain(cascaded) {
                if tables.insert(next) {
                    queue.push(next);
                }
            }
        }
        Reach {
            cascades: tables.len() > named.len(),
            unseen: tables.iter().any(|t| self.opaque.contains(*t)),
            tables: tables.into_iter().map(str::to_owned).collect(),
        }
    }

    /// What calling `name` can do; a name the catalog does not know may be anything.
    pub fn function(&self, name: &Name) -> Function {
        if let Some(&(_, f)) = SPECIAL_FORMS.iter().find(|(n, _)| *n == name.name) {
            return f;
        }
        self.functions
            .get(&name.name)
            .copied()
            .unwrap_or(Function::Unsafe { may_write: true })
    }
}

/// What a write may change, by [`Catalog::reach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Every table it may change that the catalog can name, sorted.
    pub tables: Vec<String>,
    /// Some of them change through foreign keys, not because the write names them or their tree.
    pub cascades: bool,
    /// Some of them have triggers or rules, which may change anything.
    pub unseen: bool,
}

/// One column as [`Catalog::add_keys`] needs it.
#[derive(Debug, Clone)]
pub struct KeyColumn {
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Whether its values can key rows (deterministic collation, not generated).
    pub usable: bool,
    /// Whether it is in the replica identity key.
    pub key: bool,
}

fn is_system_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_toast")
}

fn stable_but_changing(name: &str) -> bool {
    STABLE_BUT_CHANGING.contains(&name)
        || STABLE_BUT_CHANGING_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

fn worst_relation(a: Relation, b: Relation) -> Relation {
    match (a, b) {
        (Relation::Other, _) | (_, Relation::Other) => Relation::Other,
        (Relation::System, _) | (_, Relation::System) => Relation::System,
        (Relation::Unlogged, _) | (_, Relation::Unlogged) => Relation::Unlogged,
        _ => Relation::Table,
    }
}

fn worst_function(a: Function, b: Function) -> Function {
    match (a, b) {
        (Function::Safe, Function::Safe) => Function::Safe,
        (Function::Unsafe { may_write: x }, Function::Unsafe { may_write: y }) => {
            Function::Unsafe { may_write: x || y }
        }
        (Function::Unsafe { may_write }, _) | (_, Function::Unsafe { may_write }) => {
            Function::Unsafe { may_write }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Name {
        Name {
            schema: None,
            name: n.into(),
        }
    }

    #[test]
    fn a_name_is_as_unsafe_as_its_worst_holder() {
        let mut c = Catalog::default();
        c.add_relation("t".into(), "public", "r", "p");
        c.add_relation("v".into(), "public", "v", "p");
        c.add_relation("both".into(), "a", "r", "p");
        c.add_relation("both".into(), "b", "v", "p");
        c.add_relation("scratch".into(), "pg_temp_3", "r", "t");
        c.add_relation("pg_class".into(), "pg_catalog", "r", "p");
        c.add_relation("scratch_log".into(), "public", "r", "u");
        c.add_relation("logged_too".into(), "a", "r", "u");
        c.add_relation("logged_too".into(), "b", "r", "p");
        assert_eq!(c.relation(&name("t")), Some(Relation::Table));
        assert_eq!(c.relation(&name("scratch_log")), Some(Relation::Unlogged));
        assert_eq!(c.relation(&name("logged_too")), Some(Relation::Unlogged));
        assert_eq!(c.relation(&name("v")), Some(Relation::Other));
        assert_eq!(c.relation(&name("both")), Some(Relation::Other));
        assert_eq!(c.relation(&name("scratch")), Some(Relation::Other));
        assert_eq!(c.relation(&name("pg_class")), Some(Relation::System));
        assert_eq!(c.relation(&name("nowhere")), None);
    }

    fn column(name: &str, type_oid: u32, usable: bool, key: bool) -> KeyColumn {
        KeyColumn {
            name: name.into(),
            type_oid,
            usable,
            key,
        }
    }

    #[test]
    fn rows_are_keyed_by_the_replica_identity() {
        let mut c = Catalog::default();
        let cols = [
            column("a", 23, true, true),
            column("b", 25, true, true),
            column("note", 25, false, false),
            column("price", 1700, true, false),
        ];
        c.add_keys("pk".into(), "d", &cols);
        c.add_keys("full".into(), "f", &cols);
        // With no identity, no column is in the key.
        let unkeyed: Vec<KeyColumn> = cols
            .iter()
            .map(|c| KeyColumn {
                key: false,
                ..c.clone()
            })
            .collect();
        c.add_keys("none".into(), "n", &unkeyed);
        c.add_keys("odd_key".into(), "d", &[column("at", 1184, true, true)]);
        c.add_keys("twice".into(), "d", &cols);
        c.add_keys("twice".into(), "d", &cols);
        let (int, text) = (KeyType::Int, KeyType::Text);
        assert_eq!(
            c.row_keys(&name("pk")),
            Some(&RowKeys::Together(vec![
                ("a".into(), int),
                ("b".into(), text)
            ]))
        );
        assert_eq!(
            c.row_keys(&name("full")),
            Some(&RowKeys::Each(vec![("a".into(), int), ("b".into(), text)]))
        );
        assert_eq!(c.row_keys(&name("none")), None);
        assert_eq!(c.row_keys(&name("odd_key")), None, "timestamptz key");
        assert_eq!(c.row_keys(&name("twice")), None, "one name, two tables");
    }

    #[test]
    fn a_family_is_every_table_linked_by_inheritance() {
        let mut c = Catalog::default();
        c.link("m".into(), "m_1".into());
        c.link("m_1".into(), "m_1a".into());
        c.link("m".into(), "m_2".into());
        assert_eq!(c.family(&name("m_1a")), ["m", "m_1", "m_1a", "m_2"]);
        assert_eq!(c.family(&name("m")), c.family(&name("m_2")));
        assert_eq!(c.family(&name("alone")), ["alone"]);
    }

    #[test]
    fn functions_are_judged_by_volatility_and_origin() {
        let mut c = Catalog::default();
        let mut add = |name: &str, schema, volatility, language, body| {
            c.add_function(name.into(), schema, volatility, language, body)
        };
        add("lower", "pg_catalog", "i", "internal", None);
        add("replace", "pg_catalog", "i", "internal", None);
        add("to_char", "pg_catalog", "s", "internal", None);
        add("now", "pg_catalog", "s", "internal", None);
        add("random", "pg_catalog", "v", "internal", None);
        add(
            "bump_counter",
            "public",
            "v",
            "sql",
            Some("UPDATE t SET n = n + 1 RETURNING n"),
        );
        add("lookup", "public", "s", "plpgsql", None);
        add("pure", "public", "i", "sql", Some("SELECT $1 * 2"));
        add("pure", "other", "v", "sql", Some("SELECT 1"));
        add(
            "slug",
            "public",
            "i",
            "sql",
            Some("SELECT lower(replace($1, ' ', '-'))"),
        );
        add("ext_hash", "public", "i", "c", None);
        // Declared IMMUTABLE, yet reading a table (Postgres does not check).
        add(
            "price_of",
            "public",
            "i",
            "sql",
            Some("SELECT price FROM items WHERE id = $1"),
        );
        add("pl_pure", "public", "i", "plpgsql", None);
        add(
            "wraps",
            "public",
            "i",
            "sql",
            Some("SELECT price_of($1) + 1"),
        );
        add(
            "wraps_wraps",
            "public",
            "i",
            "sql",
            Some("SELECT wraps($1)"),
        );
        add("wraps_slug", "public", "i", "sql", Some("SELECT slug($1)"));
        assert_eq!(c.function(&name("lower")), Function::Safe);
        assert_eq!(c.function(&name("to_char")), Function::Safe);
        assert_eq!(c.function(&name("coalesce")), Function::Safe);
        assert_eq!(c.function(&name("slug")), Function::Safe);
        assert_eq!(c.function(&name("ext_hash")), Function::Safe);
        let unsafe_ = |w| Function::Unsafe { may_write: w };
        assert_eq!(c.function(&name("now")), unsafe_(false));
        assert_eq!(c.function(&name("current_timestamp")), unsafe_(false));
        assert_eq!(c.function(&name("random")), unsafe_(false));
        assert_eq!(c.function(&name("lookup")), unsafe_(false));
        assert_eq!(c.function(&name("price_of")), unsafe_(false));
        assert_eq!(c.function(&name("pl_pure")), unsafe_(false));
        c.settle_functions();
        assert_eq!(c.function(&name("wraps")), unsafe_(false));
        assert_eq!(c.function(&name("wraps_wraps")), unsafe_(false));
        assert_eq!(c.function(&name("wraps_slug")), Function::Safe);
        assert_eq!(c.function(&name("bump_counter")), unsafe_(true));
        assert_eq!(c.function(&name("pure")), unsafe_(true));
        assert_eq!(c.function(&name("unknown_fn")), unsafe_(true));
    }
}
