//! A connection of Veneer's own to one database, for the small queries that accompany its replication
//! stream (WAL positions for read-your-writes, the slot's retained WAL): opened on first use, and
//! again after a failure.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::Cache;
use crate::error::Error;
use crate::upstream;

/// Longest one of these queries may wait for its answer.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A lazily opened service login to one database.
pub struct Service<'a> {
    cache: &'a Cache,
    /// The database it logs in to.
    database: &'a str,
    /// Its application_name, which tells the server's views what it is for.
    application: &'static str,
    client: Option<Client>,
}

impl<'a> Service<'a> {
    /// A connection to `database` named `application`, not opened yet.
    pub fn new(cache: &'a Cache, database: &'a str, application: &'static str) -> Service<'a> {
        Service {
            cache,
            database,
            application,
            client: None,
        }
    }

    /// The rows of `sql`, on the connection (opened first if it is not).
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let client = match self.client.take() {
            Some(client) => client,
            None => {
                let (client, _driver) = upstream::service_login(
                    &self.cache.service,
                    self.cache.service_tls.as_ref(),
                    self.database,
                    self.application,
                )
                .await?;
                client
            }
        };
        // A query that gets no answer (a server stopped, a host gone) drops the connection.
        let rows = tokio::time::timeout(QUERY_TIMEOUT, client.query(sql, params))
            .await
            .map_err(|_| {
                self.failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {QUERY_TIMEOUT:?}"),
                ))
            })?
            .map_err(|e| self.failed(e))?;
        self.client = Some(client);
        Ok(rows)
    }

    fn failed(&self, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::service(
            self.application,
            &self.cache.service.service_user,
            self.database,
            cause,
        )
    }
}
