//! `veneer setup` and `veneer uninstall`: what Veneer may keep in the server, put there and taken
//! away by one command each.
//!
//! Setup installs, in every database that accepts connections (template1 included, so databases
//! created later have it too), an event trigger that writes each DDL command into the WAL with
//! `pg_logical_emit_message`. DDL is not otherwise in the logical replication stream; with the
//! trigger, the replication listener sees DDL made outside the proxy and invalidates what it changed
//! (see `veneer_invalidation::commit::DDL_PREFIX` for the message format). It needs a superuser once;
//! running it again replaces the trigger with the current version. Everything it creates carries the
//! comment [`MARK`], by which uninstall knows it.
//!
//! Uninstall removes, in every database, what setup created, the publication older Veneers created
//! (`veneer_invalidation::replication::LEGACY_PUBLICATION`, only while it is as they made it), and
//! the permanent slots of `replication_slot` that no stream uses. Anything else (a schema `veneer`
//! holding a user's objects, a publication someone made) is reported and left alone.

use tokio_postgres::Client;
use tokio_rustls::TlsConnector;
use veneer_config::Config;
use veneer_invalidation::replication::{LEGACY_PUBLICATION, LEGACY_PUBLICATION_AS_MADE};

use crate::error::Error;
use crate::upstream;

/// The comment on every object setup creates.
pub const MARK: &str = "created by veneer setup; removed by veneer uninstall";

/// Whether the schema `veneer` exists without setup's mark: then it is someone else's, and setup
/// must not put its function there nor uninstall drop it.
const FOREIGN_SCHEMA: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace \
     WHERE nspname = 'veneer' \
       AND pg_catalog.obj_description(oid, 'pg_namespace') IS DISTINCT FROM $1)";

/// The event trigger function and its two triggers. It runs as its owner (the superuser who ran the
/// setup), so any role's DDL can emit the message. Tables are named one per line; anything whose
/// reach on cached results cannot be told (a function replaced, a rename) adds a `*` line. A GRANT,
/// a REVOKE or a policy's DDL emits a message of its own (`veneer.privileges`), which has Veneer
/// check who may read what at once rather than at its next check. It never
/// fails the DDL it reports: an error of its own reports `*` instead, and if even that fails, nothing
/// (cached results then live up to their TTL, as without setup).
const INSTALL: &str = r#"
CREATE SCHEMA IF NOT EXISTS veneer;
CREATE OR REPLACE FUNCTION veneer.report_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    notice text := '';
    privileges boolean := false;
    r record;
BEGIN
    IF tg_event = 'sql_drop' THEN
        FOR r IN SELECT object_type, object_name FROM pg_event_trigger_dropped_objects() LOOP
            IF r.object_type = 'policy' THEN
                privileges := true;
            ELSIF r.object_type = 'table' THEN
                notice := notice || r.object_name || E'\n';
            ELSIF r.object_type NOT IN ('index', 'table column', 'table constraint', 'default value',
                    'sequence', 'type', 'trigger', 'rule', 'view', 'materialized view', 'toast table',
                    'schema', 'policy', 'statistics object') THEN
                notice := notice || E'*\n';
            END IF;
        END LOOP;
    ELSE
        FOR r IN SELECT command_tag, object_type, classid, objid FROM pg_event_trigger_ddl_commands() LOOP
            IF r.command_tag IN ('GRANT', 'REVOKE') OR r.object_type = 'policy' THEN
                privileges := true;
            ELSIF r.command_tag = 'ALTER DEFAULT PRIVILEGES' THEN
                -- Only objects created later are concerned.
                NULL;
            ELSIF r.object_type = 'table' AND r.classid = 'pg_class'::regclass THEN
                notice := notice || (SELECT relname FROM pg_class WHERE oid = r.objid) || E'\n';
            ELSIF r.object_type NOT IN ('index', 'sequence', 'schema', 'view', 'materialized view',
                    'statistics object', 'policy', 'table constraint') THEN
                notice := notice || E'*\n';
            END IF;
        END LOOP;
        -- A renamed table leaves results cached under its old name, which is gone by now; a table
        -- that joins an inheritance tree (ALTER TABLE ... INHERIT) brings its rows into reads of
        -- parents the command does not name.
        IF current_query() ~* '\m(rename|inherit)\M' THEN
            notice := notice || E'*\n';
        END IF;
    END IF;
    IF notice <> '' THEN
        PERFORM pg_logical_emit_message(true, 'veneer.ddl', notice);
    END IF;
    IF privileges THEN
        PERFORM pg_logical_emit_message(true, 'veneer.privileges', '');
    END IF;
EXCEPTION WHEN OTHERS THEN
    BEGIN
        PERFORM pg_logical_emit_message(true, 'veneer.ddl', E'*\n');
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
END
$fn$;
DROP EVENT TRIGGER IF EXISTS veneer_ddl_end;
CREATE EVENT TRIGGER veneer_ddl_end ON ddl_command_end EXECUTE FUNCTION veneer.report_ddl();
DROP EVENT TRIGGER IF EXISTS veneer_sql_drop;
CREATE EVENT TRIGGER veneer_sql_drop ON sql_drop EXECUTE FUNCTION veneer.report_ddl();
"#;

/// Setup's objects, each with its `COMMENT ON` target.
const MARKED: [&str; 4] = [
    "SCHEMA veneer",
    "FUNCTION veneer.report_ddl()",
    "EVENT TRIGGER veneer_ddl_end",
    "EVENT TRIGGER veneer_sql_drop",
];

/// What one database's setup or uninstall did, line by line, or why it failed.
pub type Outcome = Result<Vec<String>, Error>;

/// Installs the DDL event trigger in every database that accepts connections, as `service_user`
/// (which must be a superuser for this). Returns each database with what happened there.
pub async fn install(
    config: &Config,
    tls: Option<&TlsConnector>,
) -> Result<Vec<(String, Outcome)>, Error> {
    each_database(config, tls, "veneer setup", |client, database| {
        install_in(client, database, config)
    })
    .await
}

/// Removes what Veneer created in every database that accepts connections (see the module
/// documentation). Returns each database with what was removed or left there.
pub async fn uninstall(
    config: &Config,
    tls: Option<&TlsConnector>,
) -> Result<Vec<(String, Outcome)>, Error> {
    each_database(config, tls, "veneer uninstall", |client, database| {
        uninstall_in(client, database, config)
    })
    .await
}

/// Runs `work` in every database that accepts connections, over a login of `service_user` each.
async fn each_database<F, Fut>(
    config: &Config,
    tls: Option<&TlsConnector>,
    application: &str,
    work: F,
) -> Result<Vec<(String, Outcome)>, Error>
where
    F: Fn(Client, String) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let (client, driver) = upstream::service_login(config, tls, "postgres", application).await?;
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
        let outcome = match upstream::service_login(config, tls, &database, application).await {
            Ok((client, driver)) => {
                let outcome = work(client, database.clone()).await;
                let _ = driver.await;
                outcome
            }
            Err(e) => Err(e),
        };
        done.push((database, outcome));
    }
    Ok(done)
}

async fn install_in(client: Client, database: String, config: &Config) -> Outcome {
    let failed = |what: &str, e| Error::service(what, &config.service_user, &database, e);
    let foreign: bool = client
        .query_one(FOREIGN_SCHEMA, &[&MARK])
        .await
        .map_err(|e| failed("looking for a schema veneer", e))?
        .get(0);
    if foreign {
        return Ok(vec![
            "not installed: a schema veneer exists that veneer setup did not create; rename it \
             to let setup install its function there"
                .to_owned(),
        ]);
    }
    let comments: String = MARKED
        .iter()
        .map(|object| format!("COMMENT ON {object} IS '{MARK}';"))
        .collect();
    client
        // Two setups at once in one database would collide replacing the same objects.
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7311871346233118801);{INSTALL}{comments}COMMIT;"
        ))
        .await
        .map_err(|e| failed("installing the DDL event trigger", e))?;
    Ok(vec!["DDL event trigger installed".to_owned()])
}

async fn uninstall_in(client: Client, database: String, config: &Config) -> Outcome {
    let failed = |what: &str, e| Error::service(what, &config.service_user, &database, e);
    let mut done = Vec::new();
    // Setup's objects, each only if it carries the mark (the schema also only while empty).
    let marked = client
        .query(
            "SELECT 'EVENT TRIGGER ' || quote_ident(evtname) FROM pg_catalog.pg_event_trigger \
               WHERE pg_catalog.obj_description(oid, 'pg_event_trigger') = $1 \
             UNION ALL SELECT 'FUNCTION veneer.report_ddl()' FROM pg_catalog.pg_proc p \
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname = 'veneer' AND p.proname = 'report_ddl' \
                 AND pg_catalog.obj_description(p.oid, 'pg_proc') = $1",
            &[&MARK],
        )
        .await
        .map_err(|e| failed("listing what veneer setup created", e))?;
    for row in marked {
        let object: String = row.get(0);
        client
            .batch_execute(&format!("DROP {object}"))
            .await
            .map_err(|e| failed(&format!("dropping {object}"), e))?;
        done.push(format!("dropped {object}"));
    }
    let foreign: bool = client
        .query_one(FOREIGN_SCHEMA, &[&MARK])
        .await
        .map_err(|e| failed("looking for a schema veneer", e))?
        .get(0);
    let schema = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'veneer'",
            &[],
        )
        .await
        .map_err(|e| failed("looking for a schema veneer", e))?;
    if schema.is_some() && !foreign {
        match client.batch_execute("DROP SCHEMA veneer RESTRICT").await {
            Ok(()) => done.push("dropped SCHEMA veneer".to_owned()),
            Err(e) => done.push(format!(
                "left SCHEMA veneer: it holds objects veneer setup did not create ({})",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned())
            )),
        }
    }
    let legacy = client
        .query_opt(LEGACY_PUBLICATION_AS_MADE, &[])
        .await
        .map_err(|e| failed("looking for the publication of older Veneers", e))?;
    match legacy.map(|row| row.get::<_, String>(0)).as_deref() {
        Some("true") => {
            client
                .batch_execute(&format!("DROP PUBLICATION {LEGACY_PUBLICATION}"))
                .await
                .map_err(|e| failed("dropping the publication of older Veneers", e))?;
            done.push(format!(
                "dropped PUBLICATION {LEGACY_PUBLICATION} (FOR ALL TABLES, made by an older Veneer)"
            ));
        }
        Some(_) => done.push(format!(
            "left PUBLICATION {LEGACY_PUBLICATION}: not as older Veneers created it (or owned by \
             another role than service_user), so someone made or changed it"
        )),
        None => {}
    }
    if let Some(prefix) = config
        .cache
        .as_ref()
        .and_then(|c| c.replication_slot.as_deref())
    {
        let slot = crate::cache::permanent_slot(prefix, &database);
        let dropped = client
            .query(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1 AND database = current_database() AND NOT active",
                &[&slot],
            )
            .await
            .map_err(|e| failed("dropping the permanent replication slot", e))?;
        if !dropped.is_empty() {
            done.push(format!("dropped replication slot {slot}"));
        }
    }
    Ok(done)
}
