//! Everything between a replication session's login and its first change: the user's publication
//! (which tables it covers), the `FOR ALL TABLES` publication older Veneers created (dropped while
//! it is as they made it), the slot (resumed, or created), the timeline, and START_REPLICATION.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{parse_lsn, Login, Plugin, Resumed, Sink, INSERTED_END};
use crate::conn::{column, server_error, Conn, Error};

/// The publication older Veneers created `FOR ALL TABLES` when it was missing (their default
/// `publication`), which [`follow`] drops when it still is as they made it.
pub const LEGACY_PUBLICATION: &str = "veneer";

/// One row when [`LEGACY_PUBLICATION`] exists: `true` while it is as older Veneers created it (FOR
/// ALL TABLES, every kind of change, no comment, owned by the role asking), `false` when someone
/// made or changed it.
pub const LEGACY_PUBLICATION_AS_MADE: &str = "SELECT (p.puballtables AND p.pubinsert \
     AND p.pubupdate AND p.pubdelete AND p.pubtruncate AND NOT p.pubviaroot \
     AND pg_catalog.obj_description(p.oid, 'pg_publication') IS NULL \
     AND p.pubowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))::text \
     FROM pg_catalog.pg_publication p WHERE p.pubname = 'veneer'";

/// What the start of a stream found out.
pub(super) struct Started {
    pub(super) published: Option<Vec<String>>,
    pub(super) resumed: Option<Resumed>,
    pub(super) timeline: u32,
    /// Where the stream starts.
    pub(super) consistent: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Everything between the login and the first change: the publication, the slot, and
    /// START_REPLICATION up to the server's CopyBothResponse.
    pub(super) async fn start<K: Sink>(
        &mut self,
        login: &Login,
        sink: &mut K,
    ) -> Result<Started, Error> {
        let published = match &login.plugin {
            Plugin::TestDecoding => None,
            Plugin::Pgoutput { publication } => self.published_tables(publication, sink).await?,
        };
        self.drop_legacy_publication(login, sink).await?;
        let resumed = if login.permanent {
            self.existing_slot(login, sink).await?
        } else {
            None
        };
        let timeline = self.timeline().await?;
        let consistent = match resumed {
            Some(resumed) => resumed.confirmed,
            None => self.create_slot(login).await?,
        };
        let options = match &login.plugin {
            // Transactions come whole at their commit (test_decoding's streamed changes name no table),
            // each with its commit time.
            Plugin::TestDecoding => {
                "\"include-xids\" '0', \"include-timestamp\" '1', \"skip-empty-xacts\" '0'"
                    .to_owned()
            }
            // Protocol 2 (Postgres 14 and later) streams large transactions while they run, so the
            // server does not spill them to disk first, and passes on Veneer's DDL messages.
            Plugin::Pgoutput { publication } => format!(
                "{}, publication_names {}",
                if self.server_major >= 14 {
                    "proto_version '2', streaming 'on', messages 'true'"
                } else {
                    "proto_version '1'"
                },
                escape_literal(&escape_identifier(publication))
            ),
        };
        let start = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 ({options})",
            escape_identifier(&login.slot),
        );
        frontend::query(&start, &mut self.out)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'W' => break,
                b'E' => return Err(server_error(&body, "starting replication")),
                b'N' | b'S' => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "expected CopyBothResponse, got '{}'",
                        other as char
                    )))
                }
            }
        }
        Ok(Started {
            published,
            resumed,
            timeline,
            consistent,
        })
    }

    /// The server's timeline, from IDENTIFY_SYSTEM.
    async fn timeline(&mut self) -> Result<u32, Error> {
        let identity = self
            .rows("IDENTIFY_SYSTEM", "identifying the system")
            .await?;
        Ok(identity
            .first()
            .and_then(|row| column(row, 1))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0))
    }

    /// Creates the stream's slot; returns its consistent point. Transactions that committed before
    /// it are not streamed.
    async fn create_slot(&mut self, login: &Login) -> Result<u64, Error> {
        let created = self
            .rows(
                &format!(
                    "CREATE_REPLICATION_SLOT {}{} LOGICAL {} NOEXPORT_SNAPSHOT",
                    escape_identifier(&login.slot),
                    if login.permanent { "" } else { " TEMPORARY" },
                    login.plugin.name()
                ),
                "creating a replication slot",
            )
            .await?;
        created
            .first()
            .and_then(|row| column(row, 1))
            .as_deref()
            .and_then(parse_lsn)
            .ok_or_else(|| {
                Error::Protocol("CREATE_REPLICATION_SLOT gave no consistent point".into())
            })
    }

    /// The permanent slot of `login` as a previous stream left it, if it exists and can be resumed.
    /// A slot of this name that an older Veneer made with another plugin is dropped (it cannot be
    /// resumed with this one), as if it had not been there; so is one the server invalidated for
    /// keeping more WAL than `max_slot_wal_keep_size` allows (it can never be resumed, and the stream
    /// would be refused forever), which is reported.
    async fn existing_slot<K: Sink>(
        &mut self,
        login: &Login,
        sink: &mut K,
    ) -> Result<Option<Resumed>, Error> {
        let name = &login.slot;
        // wal_status is Postgres 13's; earlier servers cannot invalidate a slot.
        let wal_status = if self.server_major >= 13 {
            "wal_status"
        } else {
            "'reserved'"
        };
        let rows = self
            .rows(
                &format!(
                    "SELECT plugin, active::text, confirmed_flush_lsn::text, \
                       (pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8::text, \
                       (database = pg_catalog.current_database())::text, ({INSERTED_END})::text, \
                       {wal_status} \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                    escape_literal(name)
                ),
                "looking up the replication slot",
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let field = |n| column(row, n).unwrap_or_default();
        let plugin = field(0);
        let veneers = [Plugin::TestDecoding.name(), "pgoutput"];
        if !veneers.contains(&plugin.as_str()) || field(4) != "true" {
            return Err(Error::Setup(format!(
                "replication slot {name} exists but is not a slot of Veneer's in this database \
                 (plugin {plugin}): choose another replication_slot prefix"
            )));
        }
        if field(1) == "true" {
            return Err(Error::Setup(format!(
                "replication slot {name} is in use by another connection (another proxy with the \
                 same replication_slot prefix?)"
            )));
        }
        let lost = field(6) == "lost";
        if plugin != login.plugin.name() || lost {
            self.simple(
                &format!("DROP_REPLICATION_SLOT {}", escape_identifier(name)),
                "dropping a slot that cannot be resumed",
            )
            .await?;
            if lost {
                sink.note(
                    true,
                    format!(
                        "replication slot {name} was invalidated by the server (it kept more WAL \
                         than max_slot_wal_keep_size while no stream followed it): made again, and \
                         the cache of this database starts over"
                    ),
                );
            }
            return Ok(None);
        }
        let confirmed = parse_lsn(&field(2))
            .ok_or_else(|| Error::Protocol(format!("slot {name} has no confirmed position")))?;
        Ok(Some(Resumed {
            confirmed,
            retained: field(3).parse().unwrap_or(0),
            server: field(5).parse().unwrap_or(u64::MAX),
        }))
    }

    /// Drops the publication an older Veneer created ([`LEGACY_PUBLICATION`], `FOR ALL TABLES` with
    /// every kind of change, no comment, owned by the service user) unless the user chose to follow
    /// it; reports one of that name that someone else made or changed, and leaves it alone.
    async fn drop_legacy_publication<K: Sink>(
        &mut self,
        login: &Login,
        sink: &mut K,
    ) -> Result<(), Error> {
        let name = LEGACY_PUBLICATION;
        if matches!(&login.plugin, Plugin::Pgoutput { publication } if publication == name) {
            return Ok(());
        }
        let found = self
            .simple(
                LEGACY_PUBLICATION_AS_MADE,
                "looking for the publication of older Veneers",
            )
            .await?;
        match found.first().cloned().flatten().as_deref() {
            None => {}
            Some("true") => {
                self.simple(
                    &format!("DROP PUBLICATION {}", escape_identifier(name)),
                    "dropping the publication of older Veneers",
                )
                .await?;
                sink.note(
                    false,
                    format!(
                        "dropped publication {name}, which an older Veneer created FOR ALL TABLES: \
                         it made Postgres refuse UPDATE and DELETE on tables without a replica \
                         identity, and Veneer needs no publication"
                    ),
                );
            }
            Some(_) => sink.note(
                true,
                format!(
                    "publication {name} exists but is not as an older Veneer created it, so Veneer \
                     leaves it alone; Veneer needs no publication: if nothing else uses it, \
                     DROP PUBLICATION {name} (a publication that publishes updates and deletes \
                     makes Postgres refuse them on its tables without a replica identity)"
                ),
            ),
        }
        Ok(())
    }

    /// The tables the user's publication `name` covers, or `None` when it covers all tables. A
    /// publication that leaves out some kind of change (`publish` without insert, update, delete or
    /// truncate) covers none: the stream would miss those changes to any table; a table it lists
    /// with a row filter or a column list is not covered either. A FOR ALL TABLES
    /// one is reported, since it makes Postgres refuse writes to tables without a replica identity.
    async fn published_tables<K: Sink>(
        &mut self,
        name: &str,
        sink: &mut K,
    ) -> Result<Option<Vec<String>>, Error> {
        let coverage = self
            .simple(
                &format!(
                    "SELECT CASE WHEN NOT (pubinsert AND pubupdate AND pubdelete AND pubtruncate) \
                       THEN 'partial' WHEN puballtables THEN 'all' ELSE 'listed' END \
                     FROM pg_catalog.pg_publication WHERE pubname = {}",
                    escape_literal(name)
                ),
                "reading the publication",
            )
            .await?;
        match coverage.first().cloned().flatten().as_deref() {
            None => {
                return Err(Error::Setup(format!(
                    "publication {name} (the publication setting) does not exist: Veneer never \
                     creates one; create it, or leave publication unset to follow every table \
                     with test_decoding, which needs none"
                )))
            }
            Some("all") => {
                sink.note(
                    true,
                    format!(
                        "publication {name} is FOR ALL TABLES: Postgres refuses UPDATE and DELETE \
                         on every table without a replica identity, for every client; leave \
                         publication unset to follow writes with test_decoding, which needs none"
                    ),
                );
                return Ok(None);
            }
            Some("partial") => return Ok(Some(Vec::new())),
            _ => {}
        }
        // A row filter or a column list (Postgres 15 and later) leaves changes out of the stream:
        // such a table counts as not covered.
        let filtered = if self.server_major >= 15 {
            " AND t.rowfilter IS NULL AND t.attnames = ARRAY(SELECT a.attname \
               FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = pg_catalog.format('%I.%I', t.schemaname, t.tablename)::regclass \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)"
        } else {
            ""
        };
        let tables = self
            .simple(
                &format!(
                    "SELECT t.tablename FROM pg_catalog.pg_publication_tables t \
                     WHERE t.pubname = {}{filtered}",
                    escape_literal(name)
                ),
                "listing the publication's tables",
            )
            .await?;
        Ok(Some(tables.into_iter().flatten().collect()))
    }
}
