//! Why a request went upstream uncached: one enum for the statement's own reasons (a write, a
//! volatile function, a table the cache cannot follow) and the session's or cache's (a transaction
//! in progress, replication down), so that `SHOW VENEER STATUS` and `veneer_cache_bypasses_total`
//! count each by name.

/// Declares the reasons with their metric labels, in one place.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $label:literal,)+) => {
        /// Why a request was forwarded uncached.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, in declaration order (the index of each is its place here).
            pub const ALL: &[Reason] = &[$(Reason::$variant,)+];

            /// Its label in the metrics and the status.
            pub fn label(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)+
                }
            }
        }
    };
}

reasons! {
    /// An empty query string.
    EmptyQuery = "empty_query",
    /// Several statements in one query string.
    SeveralStatements = "several_statements",
    /// `SELECT ... INTO` creates a table.
    SelectInto = "select_into",
    /// `FOR UPDATE` and its kin take locks.
    LockingClause = "locking_clause",
    /// A cast to a catalog reference type (`'t'::regclass`), whose answer follows the catalog.
    CatalogCast = "catalog_reference_cast",
    /// A date/time literal such as `'now'`, evaluated when the query runs.
    RuntimeDatetime = "runtime_datetime_literal",
    /// `COPY ... TO`.
    CopyTo = "copy_to",
    /// `EXPLAIN`.
    Explain = "explain",
    /// SET, BEGIN, LISTEN and the other session or transaction control.
    SessionControl = "session_control",
    /// DDL, CALL, DO and what else may change data or schema where the proxy cannot place it.
    Ddl = "ddl_or_unplaced_change",
    /// Text the SQL parser does not understand.
    Unparsable = "unparsable",
    /// A statement that is not valid UTF-8.
    NotUtf8 = "not_utf8",
    /// A write (its tables are invalidated when it commits).
    Write = "write",
    /// The catalog has not been read (yet, or the service login fails).
    CatalogUnavailable = "catalog_unavailable",
    /// A view, sequence, foreign or temporary relation, or a name the catalog does not know.
    NotAPlainTable = "not_a_plain_table",
    /// A system catalog without a TTL rule.
    SystemCatalog = "system_catalog",
    /// An unlogged table (its changes are not in the replication stream) without a TTL rule.
    UnloggedTable = "unlogged_table",
    /// A function whose result may change between calls.
    VolatileFunction = "volatile_function",
    /// A rule or hint said never.
    RuleOrHint = "rule_or_hint",
    /// Inside a transaction block that is not READ ONLY (or with caching in them off).
    InTransaction = "in_transaction",
    /// The session ran something whose effect on its settings the proxy cannot follow.
    SessionSettingsUnknown = "session_settings_unknown",
    /// The session has temporary tables, which may shadow the tables a read names.
    SessionHasTempTables = "session_has_temp_tables",
    /// The database's replication stream is down (replication = required).
    ReplicationDown = "replication_down",
    /// Who may read the tables has not been checked yet.
    PrivilegesNotChecked = "privileges_not_checked",
    /// The role's settings changed on the server since the session started.
    RoleSettingsChanged = "role_settings_changed",
    /// The session's own write is not applied from the stream yet (effects only it reports).
    OwnWriteNotApplied = "own_write_not_applied",
    /// A miss inside a READ ONLY block, whose snapshot may be older than the generations.
    ReadOnlyTransactionMiss = "read_only_transaction_miss",
    /// An identical miss of another session took longer than the wait allowed.
    CoalescedMissTooSlow = "coalesced_miss_too_slow",
}

impl Reason {
    /// Its place in [`Reason::ALL`] (declaration order is discriminant order).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn indexes_follow_the_list() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
