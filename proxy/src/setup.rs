//! `veneer setup`: installs, in every database that accepts connections (template1 included, so
//! databases created later have it too), an event trigger that writes each DDL command into the WAL
//! with `pg_logical_emit_message`. DDL is not otherwise in the logical replication stream; with the
//! trigger, the replication listener sees DDL made outside the proxy and invalidates what it changed
//! (see `veneer_invalidation::replication::DDL_PREFIX` for the message format). Needs a superuser once;
//! running it again replaces the trigger with the current version.

use tokio_rustls::TlsConnector;
use veneer_config::Config;

use crate::error::Error;
use crate::upstream;

/// The event trigger function and its two triggers. It runs as its owner (the superuser who ran the
/// setup), so any role's DDL can emit the message. Tables are named one per line; anything whose
/// reach on cached results cannot be told (a function replaced, a rename) adds a `*` line.
const INSTALL: &str = r#"
CREATE SCHEMA IF NOT EXISTS veneer;
CREATE OR REPLACE FUNCTION veneer.report_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    notice text := '';
    r record;
BEGIN
    IF tg_event = 'sql_drop' THEN
        FOR r IN SELECT object_type, object_name FROM pg_event_trigger_dropped_objects() LOOP
            IF r.object_type = 'table' THEN
                notice := notice || r.object_name || E'\n';
            ELSIF r.object_type NOT IN ('index', 'table column', 'table constraint', 'default value',
                    'sequence', 'type', 'trigger', 'rule', 'view', 'materialized view', 'toast table',
                    'schema', 'policy', 'statistics object') THEN
                notice := notice || E'*\n';
            END IF;
        END LOOP;
    ELSE
        FOR r IN SELECT object_type, classid, objid FROM pg_event_trigger_ddl_commands() LOOP
            IF r.object_type = 'table' AND r.classid = 'pg_class'::regclass THEN
                notice := notice || (SELECT relname FROM pg_class WHERE oid = r.objid) || E'\n';
            ELSIF r.object_type NOT IN ('index', 'sequence', 'schema', 'view', 'materialized view',
                    'statistics object', 'policy', 'table constraint') THEN
                notice := notice || E'*\n';
            END IF;
        END LOOP;
        -- A renamed table leaves results cached under its old name, which is gone by now.
        IF current_query() ~* '\mrename\M' THEN
            notice := notice || E'*\n';
        END IF;
    END IF;
    IF notice <> '' THEN
        PERFORM pg_logical_emit_message(true, 'veneer.ddl', notice);
    END IF;
END
$fn$;
DROP EVENT TRIGGER IF EXISTS veneer_ddl_end;
CREATE EVENT TRIGGER veneer_ddl_end ON ddl_command_end EXECUTE FUNCTION veneer.report_ddl();
DROP EVENT TRIGGER IF EXISTS veneer_sql_drop;
CREATE EVENT TRIGGER veneer_sql_drop ON sql_drop EXECUTE FUNCTION veneer.report_ddl();
"#;

/// Installs the DDL event trigger in every database that accepts connections, as `service_user`
/// (which must be a superuser for this). Returns each database with what happened there.
pub async fn install(
    config: &Config,
    tls: Option<&TlsConnector>,
) -> Result<Vec<(String, Result<(), Error>)>, Error> {
    let (client, driver) = upstream::service_login(config, tls, "postgres", "veneer setup").await?;
    let rows = client
        .query(
            "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| Error::service("listing databases", &config.service_user, "postgres", e))?;
    drop(client);
    let _ = driver.await;
    let mut done = Vec::new();
    for row in rows {
        let database: String = row.get(0);
        let result = install_in(config, tls, &database).await;
        done.push((database, result));
    }
    Ok(done)
}

async fn install_in(
    config: &Config,
    tls: Option<&TlsConnector>,
    database: &str,
) -> Result<(), Error> {
    let (client, driver) = upstream::service_login(config, tls, database, "veneer setup").await?;
    let result = client
        .batch_execute(&format!("BEGIN;{INSTALL}COMMIT;"))
        .await
        .map_err(|e| {
            Error::service(
                "installing the DDL event trigger",
                &config.service_user,
                database,
                e,
            )
        });
    drop(client);
    let _ = driver.await;
    result
}
