//! What a statement does, read from its syntax alone (sqlparser, PostgreSqlDialect): a read that may be
//! cacheable and what it reads, a write and what it touches, or something else and whether it may write.
//! What the names refer to (tables or views, which functions are volatile) is the catalog's business
//! (see [`super::catalog`]); this module never guesses it.
//!
//! Parsing costs tens of microseconds, so results are memoized by statement text (see
//! [`super::database`]); nothing here runs on a cache hit.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CopySource, DataType, Expr, FromTable, ObjectName, Query,
    Select, SetExpr, Statement, TableFactor, TableWithJoins, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::passthrough::Reason;

/// A relation as named in the statement: identifiers folded as Postgres folds them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    /// The schema, when the statement gave one.
    pub schema: Option<String>,
    /// The relation or function name.
    pub name: String,
}

/// What a statement is, from its syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    /// One read-only query with no locking clause: cacheable if every relation is a plain table and
    /// every function is safe, which only the catalog can tell.
    Read {
        /// Relations read (CTE names removed).
        relations: BTreeSet<Name>,
        /// Functions called, table functions included.
        functions: BTreeSet<Name>,
        /// When the query reads one table, with no join or subquery: the `column = value` terms its
        /// WHERE clause requires (top-level AND), which may make it a point lookup.
        equalities: Vec<Equality>,
    },
    /// Changes rows of the named relations (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM, or a
    /// query with a data-modifying CTE). Every relation the statement names is listed: bumping one it
    /// only read costs misses, never freshness.
    Write {
        /// Relations the statement names.
        relations: BTreeSet<Name>,
        /// Functions called: one that writes carries the write further.
        functions: BTreeSet<Name>,
        /// Which rows it changes, when its syntax pins them.
        rows: Option<RowWrite>,
    },
    /// Not a cacheable read. `may_write` when it could change data or schema in ways the proxy cannot
    /// place (DDL, CALL, DO, SELECT INTO, unparsable text), which then bumps the whole database.
    Other {
        /// Why it is not cached.
        reason: Reason,
        /// Whether running it may change what cached reads return.
        may_write: bool,
        /// Whether it may change the schema, functions or privileges the catalog describes.
        ddl: bool,
    },
}

/// A `column = value` term of a WHERE clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equality {
    /// The column, folded.
    pub column: String,
    /// The value it must equal.
    pub operand: Operand,
}

/// The rows a write of one table changes, as its syntax pins them: an UPDATE or DELETE whose WHERE
/// clause requires `equalities` (and, for an UPDATE, assigns `assigned`), or an INSERT of one row
/// whose listed columns get the values in `equalities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    /// `column = value` terms every changed row satisfies (before and, unless assigned, after).
    pub equalities: Vec<Equality>,
    /// Columns an UPDATE sets.
    pub assigned: Vec<String>,
}

/// A value in a statement's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// A literal (a number, or a plain single-quoted string) starting at this byte of the statement.
    Literal(usize),
    /// Parameter `$n`, as its 0-based index.
    Param(usize),
}

impl Analysis {
    fn other(reason: Reason, may_write: bool) -> Analysis {
        Analysis::Other {
            reason,
            may_write,
            ddl: false,
        }
    }

    fn ddl(reason: Reason) -> Analysis {
        Analysis::Other {
            reason,
            may_write: true,
            ddl: true,
        }
    }
}

/// Analyzes one statement text (which may hold several statements).
pub fn analyze(sql: &str) -> Analysis {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => return unparsable(sql),
    };
    match statements.as_slice() {
        [] => Analysis::other(Reason::EmptyQuery, false),
        [one] => analyze_statement(sql, one),
        many => several(many.iter().map(|s| analyze_statement(sql, s))),
    }
}

/// What several statements sent as one query do together, never cached: DDL if any is, a write of
/// every relation they name if any writes or calls a function (which may write), else nothing that
/// writes. So `BEGIN; UPDATE ...; COMMIT` bumps its tables, not the database, and has the catalog
/// read again only if it holds DDL: as DDL, a steady stream of such writes kept the catalog from
/// ever being read, and every read forwarded.
fn several(analyses: impl Iterator<Item = Analysis>) -> Analysis {
    const REASON: Reason = Reason::SeveralStatements;
    let (mut relations, mut functions) = (BTreeSet::new(), BTreeSet::new());
    let (mut writes, mut unplaced) = (false, false);
    for analysis in analyses {
        match analysis {
            Analysis::Read {
                relations: r,
                functions: f,
                ..
            } => {
                writes |= !f.is_empty();
                relations.extend(r);
                functions.extend(f);
            }
            Analysis::Write {
                relations: r,
                functions: f,
                ..
            } => {
                writes = true;
                relations.extend(r);
                functions.extend(f);
            }
            Analysis::Other { ddl: true, .. } => return Analysis::ddl(REASON),
            Analysis::Other { may_write, .. } => unplaced |= may_write,
        }
    }
    if unplaced {
        Analysis::other(REASON, true)
    } else if writes {
        Analysis::Write {
            relations,
            functions,
            rows: None,
        }
    } else {
        Analysis::other(REASON, false)
    }
}

fn analyze_statement(sql: &str, statement: &Statement) -> Analysis {
    let mut names = Names::default();
    let _ = statement.visit(&mut names);
    match statement {
        Statement::Query(query) => {
            if names.modifies {
                Analysis::Write {
                    relations: names.relations(),
                    functions: names.functions,
                    rows: None,
                }
            } else if names.select_into {
                Analysis::ddl(Reason::SelectInto)
            } else if !query.locks.is_empty() || names.locks {
                Analysis::other(Reason::LockingClause, false)
            } else if names.reg_cast {
                Analysis::other(Reason::CatalogCast, false)
            } else if names.time_word {
                Analysis::other(Reason::RuntimeDatetime, false)
            } else {
                let relations = names.relations();
                let equalities = if relations.len() == 1 && names.queries == 1 {
                    point_terms(sql, query)
                } else {
                    Vec::new()
                };
                Analysis::Read {
                    relations,
                    functions: names.functions,
                    equalities,
                }
            }
        }
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_) => Analysis::Write {
            relations: names.relations(),
            rows: row_write(sql, statement),
            functions: names.functions,
        },
        Statement::Copy {
            to: false, source, ..
        } => {
            let mut relations = names.relations();
            if let CopySource::Table { table_name, .. } = source {
                relations.insert(name_of(table_name));
            }
            Analysis::Write {
                relations,
                functions: names.functions,
                rows: None,
            }
        }
        Statement::Copy { to: true, .. } => {
            Analysis::other(Reason::CopyTo, !names.functions.is_empty())
        }
        Statement::Explain {
            analyze: false,
            statement,
            ..
        } if !matches!(**statement, Statement::Query(_)) || !names.modifies => {
            Analysis::other(Reason::Explain, false)
        }
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Prepare { .. }
        | Statement::Close { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. } => Analysis::other(Reason::SessionControl, false),
        _ => Analysis::ddl(Reason::Ddl),
    }
}

/// Text sqlparser cannot parse is forwarded. Whether it may write is judged from its first word, and
/// only words that cannot change data count as harmless.
fn unparsable(sql: &str) -> Analysis {
    const HARMLESS: &[&str] = &[
        "SHOW",
        "SET",
        "RESET",
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "LISTEN",
        "UNLISTEN",
        "DEALLOCATE",
        "DISCARD",
        "CLOSE",
        "TABLE",
        "VALUES",
    ];
    let first = first_word(sql);
    let harmless = HARMLESS.iter().any(|w| first.eq_ignore_ascii_case(w));
    if harmless {
        Analysis::other(Reason::Unparsable, false)
    } else {
        Analysis::ddl(Reason::Unparsable)
    }
}

/// The database a `DROP DATABASE [IF EXISTS] name ...` statement drops (options such as
/// `WITH (FORCE)` allowed), its name folded as Postgres folds it. Read from the tokens, since the
/// parser does not know every form; the statement cannot share its query with another.
pub fn dropped_database(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    // Words in order; any other token (an option list, a semicolon) is `None` and ends the match.
    let mut words = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .map(|t| match t {
            Token::Word(w) => Some(w),
            _ => None,
        });
    let mut next = move || words.next().flatten();
    let is = |w: &Word, k: Keyword| w.keyword == k && w.quote_style.is_none();
    next().filter(|w| is(w, Keyword::DROP))?;
    next().filter(|w| is(w, Keyword::DATABASE))?;
    let mut name = next()?;
    if is(&name, Keyword::IF) {
        next().filter(|w| is(w, Keyword::EXISTS))?;
        name = next()?;
    }
    match name.quote_style {
        None => Some(name.value.to_lowercase()),
        Some('"') => Some(name.value),
        Some(_) => None,
    }
}

/// The `column = value` terms of a query over one table with no join, CTE or set operation.
fn point_terms(sql: &str, query: &Query) -> Vec<Equality> {
    let mut terms = Vec::new();
    let SetExpr::Select(select) = &*query.body else {
        return terms;
    };
    let single = matches!(
        select.from.as_slice(),
        [one] if one.joins.is_empty() && matches!(one.relation, TableFactor::Table { args: None, .. })
    );
    if !single || query.with.is_some() {
        return terms;
    }
    if let Some(selection) = &select.selection {
        conjuncts(sql, selection, &mut terms);
    }
    terms
}

/// The rows a single-table UPDATE, DELETE or one-row INSERT changes, when its syntax pins them.
fn row_write(sql: &str, statement: &Statement) -> Option<RowWrite> {
    let single = |t: &TableWithJoins| {
        t.joins.is_empty() && matches!(t.relation, TableFactor::Table { args: None, .. })
    };
    let mut equalities = Vec::new();
    let mut assigned = Vec::new();
    match statement {
        Statement::Update(update) => {
            if !single(&update.table) || update.from.is_some() {
                return None;
            }
            for assignment in &update.assignments {
                match &assignment.target {
                    AssignmentTarget::ColumnName(c) => assigned.push(name_of(c).name),
                    AssignmentTarget::Tuple(columns) => {
                        assigned.extend(columns.iter().map(|c| name_of(c).name))
                    }
                }
            }
            conjuncts(sql, update.selection.as_ref()?, &mut equalities);
        }
        Statement::Delete(delete) => {
            let FromTable::WithFromKeyword(from) = &delete.from else {
                return None;
            };
            if !matches!(from.as_slice(), [one] if single(one)) || delete.using.is_some() {
                return None;
            }
            conjuncts(sql, delete.selection.as_ref()?, &mut equalities);
        }
        Statement::Insert(insert) => {
            let source = insert.source.as_ref()?;
            let SetExpr::Values(values) = &*source.body else {
                return None;
            };
            let [row] = values.rows.as_slice() else {
                return None;
            };
            if insert.on.is_some()
                || source.with.is_some()
                || row.content.len() != insert.columns.len()
            {
                return None;
            }
            for (column, value) in insert.columns.iter().zip(&row.content) {
                if let Some(operand) = operand(sql, value) {
                    equalities.push(Equality {
                        column: name_of(column).name,
                        operand,
                    });
                }
            }
        }
        _ => return None,
    }
    Some(RowWrite {
        equalities,
        assigned,
    })
}

/// Gathers the equalities among the terms `expr` ANDs together.
fn conjuncts(sql: &str, expr: &Expr, terms: &mut Vec<Equality>) {
    match expr {
        Expr::Nested(inner) => conjuncts(sql, inner, terms),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(sql, left, terms);
            conjuncts(sql, right, terms);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let term = match (column(left), operand(sql, right)) {
                (Some(c), Some(o)) => Some((c, o)),
                _ => column(right).zip(operand(sql, left)),
            };
            if let Some((column, operand)) = term {
                terms.push(Equality { column, operand });
            }
        }
        _ => {}
    }
}

/// The column an expression names (`col` or `t.col`).
fn column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(fold(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold),
        _ => None,
    }
}

/// The literal or parameter an expression is.
fn operand(sql: &str, expr: &Expr) -> Option<Operand> {
    let Expr::Value(v) = expr else {
        return None;
    };
    match &v.value {
        Value::Number(..) | Value::SingleQuotedString(_) => {
            offset(sql, v.span.start).map(Operand::Literal)
        }
        Value::Placeholder(p) => {
            let n: usize = p.strip_prefix('$')?.parse().ok()?;
            n.checked_sub(1).map(Operand::Param)
        }
        _ => None,
    }
}

/// The byte offset of a parser location (1-based line and character column).
fn offset(sql: &str, at: sqlparser::tokenizer::Location) -> Option<usize> {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == at.line && column == at.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    None
}

/// The first word of `sql`, after whitespace and comments.
fn first_word(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Gathers names and the features that rule caching out, in one walk of the syntax tree.
#[derive(Default)]
struct Names {
    relations: BTreeSet<Name>,
    ctes: BTreeSet<String>,
    table_functions: BTreeSet<Name>,
    functions: BTreeSet<Name>,
    modifies: bool,
    select_into: bool,
    locks: bool,
    reg_cast: bool,
    time_word: bool,
    depth: usize,
    /// Queries met, subqueries included.
    queries: usize,
}

impl Names {
    /// Relations read, CTE names and table functions removed.
    fn relations(&self) -> BTreeSet<Name> {
        self.relations
            .iter()
            .filter(|r| !(r.schema.is_none() && self.ctes.contains(&r.name)))
            .filter(|r| !self.table_functions.contains(r))
            .cloned()
            .collect()
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if self.depth > 0 && !matches!(statement, Statement::Query(_)) {
            self.modifies = true;
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.queries += 1;
        self.locks |= !query.locks.is_empty();
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(fold(&cte.alias.name));
            }
        }
        if matches!(
            *query.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            self.modifies = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.select_into |= select.into.is_some();
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.relations.insert(name_of(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                let name = name_of(name);
                self.table_functions.insert(name.clone());
                self.functions.insert(name);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => {
                self.functions.insert(name_of(&f.name));
            }
            Expr::Cast { data_type, .. } => self.reg_cast |= is_reg_type(data_type),
            Expr::Value(v) => {
                if let Value::SingleQuotedString(s) = &v.value {
                    self.time_word |= TIME_WORDS.contains(&s.trim().to_lowercase().as_str());
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Date/time input words Postgres evaluates when the statement runs ('now'::timestamptz).
const TIME_WORDS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// Casts to regclass, regproc and friends look names up in the catalog, which writes do not bump.
fn is_reg_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Regclass => true,
        DataType::Custom(name, _) => name_of(name).name.starts_with("reg"),
        _ => false,
    }
}

fn name_of(object: &ObjectName) -> Name {
    let mut parts: Vec<String> = object
        .0
        .iter()
        .map(|p| p.as_ident().map_or_else(|| p.to_string(), fold))
        .collect();
    let name = parts.pop().unwrap_or_default();
    Name {
        schema: parts.pop(),
        name,
    }
}

/// Postgres folds unquoted identifiers to lower case and keeps quoted ones as written.
fn fold(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> Name {
        match name.split_once('.') {
            Some((s, n)) => Name {
                schema: Some(s.into()),
                name: n.into(),
            },
            None => Name {
                schema: None,
                name: name.into(),
            },
        }
    }

    fn read(sql: &str) -> (Vec<Name>, Vec<Name>) {
        match analyze(sql) {
            Analysis::Read {
                relations,
                functions,
                ..
            } => (
                relations.into_iter().collect(),
                functions.into_iter().collect(),
            ),
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn reason(sql: &str) -> (Reason, bool) {
        match analyze(sql) {
            Analysis::Other {
                reason, may_write, ..
            } => (reason, may_write),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn reads_name_their_tables_and_functions() {
        assert_eq!(
            read("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            (vec![n("pgbench_accounts")], vec![])
        );
        assert_eq!(
            read("select count(*) from Public.T join \"Odd\" o on true where lower(x) = 'a'"),
            (vec![n("Odd"), n("public.t")], vec![n("count"), n("lower")])
        );
        assert_eq!(read("VALUES (1), (2)"), (vec![], vec![]));
        // sqlparser does not parse TABLE t: it is forwarded, and cannot write.
        assert_eq!(reason("TABLE t"), (Reason::Unparsable, false));
    }

    fn terms(sql: &str) -> Vec<(String, Operand)> {
        match analyze(sql) {
            Analysis::Read { equalities, .. } => equalities
                .into_iter()
                .map(|e| (e.column, e.operand))
                .collect(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn point_terms_are_equalities_anded_in_a_single_table_query() {
        let sql = "SELECT v FROM t WHERE id = 42 AND (t.Name = 'x' AND $2 = k) AND v > 1";
        assert_eq!(
            terms(sql),
            vec![
                ("id".into(), Operand::Literal(27)),
                (
                    "name".into(),
                    Operand::Literal(sql.find("'x'").expect("literal"))
                ),
                ("k".into(), Operand::Param(1)),
            ]
        );
        let multi_line = "SELECT v\nFROM t\nWHERE é = 'a' AND id = 7";
        let at = multi_line.find("7").expect("literal");
        assert!(terms(multi_line).contains(&("id".into(), Operand::Literal(at))));
        for none in [
            "SELECT v FROM t WHERE id = 1 OR id = 2",
            "SELECT v FROM t JOIN u ON true WHERE t.id = 1",
            "SELECT v FROM t WHERE id = 1 AND v = (SELECT max(v) FROM t)",
            "WITH x AS (SELECT 1) SELECT v FROM t WHERE id = 1",
            "SELECT v FROM t WHERE id = -1 AND w = E'a' AND x = 1 + 1",
            "SELECT v FROM t WHERE id = 1 UNION SELECT v FROM t WHERE id = 2",
        ] {
            assert_eq!(terms(none), vec![], "{none}");
        }
    }

    #[test]
    fn cte_names_and_table_functions_are_not_tables() {
        assert_eq!(
            read("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent, generate_series(1, 3) g"),
            (vec![n("orders")], vec![n("generate_series")])
        );
        let (_, functions) = read("SELECT now(), CURRENT_TIMESTAMP, random()");
        assert!(functions.contains(&n("now")) && functions.contains(&n("random")));
        assert!(functions.contains(&n("current_timestamp")), "{functions:?}");
    }

    #[test]
    fn locking_and_catalog_casts_are_not_cached() {
        assert_eq!(
            reason("SELECT * FROM t FOR UPDATE"),
            (Reason::LockingClause, false)
        );
        assert_eq!(
            reason("SELECT * FROM (SELECT * FROM t FOR SHARE) s"),
            (Reason::LockingClause, false)
        );
        assert_eq!(reason("SELECT 't'::regclass").0, Reason::CatalogCast);
    }

    #[test]
    fn writes_name_what_they_touch() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1 WHERE id = 2",
            "DELETE FROM t",
            "TRUNCATE t",
            "COPY t FROM STDIN",
            "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
        ] {
            match analyze(sql) {
                Analysis::Write { relations, .. } => assert!(relations.contains(&n("t")), "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    fn rows(sql: &str) -> Option<(Vec<String>, Vec<String>)> {
        match analyze(sql) {
            Analysis::Write { rows, .. } => rows.map(|r| {
                let columns = r.equalities.into_iter().map(|e| e.column).collect();
                (columns, r.assigned)
            }),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn writes_pin_their_rows_when_their_syntax_does() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rows("UPDATE t SET v = v + 1, (a, b) = (1, 2) WHERE id = $1 AND k = 'x'"),
            Some((s(&["id", "k"]), s(&["v", "a", "b"])))
        );
        assert_eq!(
            rows("DELETE FROM t WHERE id = 5"),
            Some((s(&["id"]), s(&[])))
        );
        assert_eq!(
            rows("INSERT INTO t (id, v, at) VALUES ($1, 'a', now())"),
            Some((s(&["id", "v"]), s(&[])))
        );
        for none in [
            "UPDATE t SET v = 1",
            "UPDATE t SET v = u.v FROM u WHERE t.id = 1",
            "DELETE FROM t USING u WHERE t.id = 1",
            "INSERT INTO t (id) VALUES (1), (2)",
            "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2",
            "INSERT INTO t (id) SELECT 1",
            "TRUNCATE t",
        ] {
            assert_eq!(rows(none), None, "{none}");
        }
    }

    #[test]
    fn ddl_and_unknown_text_may_write_and_control_does_not() {
        assert!(reason("CREATE TABLE x (a int)").1);
        assert!(reason("SELECT * INTO newtable FROM t").1);
        assert!(reason("CALL do_things()").1);
        assert!(reason("DO $$ BEGIN END $$").1);
        assert!(reason("SOMETHING odd").1);
        assert!(!reason("SET search_path = a").1);
        assert!(!reason("BEGIN").1);
        assert!(!reason("/* c */ SHOW whatever odd syntax (").1);
        assert!(!reason("EXPLAIN SELECT 1").1);
        assert!(reason("EXPLAIN ANALYZE DELETE FROM t").1);
        assert!(!reason("SELECT 1; SELECT 2").1);
        assert!(reason("SELECT 1; CALL do_things()").1);
    }

    /// Several statements in one query write what their statements write: a transaction of writes
    /// is not DDL (which has the catalog read again), and DDL among them still is.
    #[test]
    fn several_statements_write_what_each_writes() {
        let name = |n: &str| Name {
            schema: None,
            name: n.to_owned(),
        };
        match analyze(
            "BEGIN; UPDATE t SET v = v + 1 WHERE id = 1 RETURNING v; SELECT * FROM u; COMMIT",
        ) {
            Analysis::Write {
                relations, rows, ..
            } => {
                assert_eq!(relations, [name("t"), name("u")].into());
                assert_eq!(rows, None);
            }
            other => panic!("{other:?}"),
        }
        match analyze("SELECT 1; SELECT f(2)") {
            Analysis::Write { functions, .. } => assert_eq!(functions, [name("f")].into()),
            other => panic!("{other:?}"),
        }
        for ddl in [
            "BEGIN; UPDATE t SET v = 1; CREATE TABLE x (a int); COMMIT",
            "DELETE FROM t; SOMETHING odd",
            "DELETE FROM t; CALL do_things()",
        ] {
            assert!(
                matches!(analyze(ddl), Analysis::Other { ddl: true, .. }),
                "{ddl}"
            );
        }
    }

    #[test]
    fn dropped_databases_are_named_as_postgres_folds_them() {
        assert_eq!(dropped_database("DROP DATABASE Shop"), Some("shop".into()));
        assert_eq!(
            dropped_database("/* x */ drop database if exists \"Shop\" with (force);"),
            Some("Shop".into())
        );
        assert_eq!(dropped_database("DROP TABLE shop"), None);
        assert_eq!(dropped_database("DROP DATABASE"), None);
        assert_eq!(dropped_database("SELECT 'DROP DATABASE shop'"), None);
    }
}
