//! The shared store: a PostgreSQL database that several gateways use at once (`tokio-postgres`
//! through a `deadpool-postgres` connection pool).
//!
//! Times (leases, activity) come from the database's clock, so the gateways' clocks need not
//! agree. Starts are reserved under a transaction-scoped advisory lock, so the limits hold across
//! gateways; migrations run under another, so gateways starting together migrate once.
//!
//! The connection is TLS (rustls, the server's certificate checked against a CA file given with
//! [`PostgresStore::connect_tls`], the binary's `--store_ca_file`), or else plain TCP or a unix
//! socket (`host=/run/postgresql`) for a database on a trusted network. The table holds the
//! kernels' keys: grant it to the gateways' role only. While the database is down every call fails within a few seconds
//! ([`StoreError::Unavailable`]); the pool connects again by itself once it is back.
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::{
    Activity, KernelStore, Limits, MIGRATIONS, RawRow, Reservation, StoreError, StoredKernel,
    decode_all, schema_version, to_ms, ttl_ms,
};

/// Connections kept by one gateway.
const POOL_SIZE: usize = 8;
/// Bound on connecting, and on waiting for a free pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Advisory lock keys (arbitrary, fixed): migrations, reservations.
const MIGRATION_LOCK: i64 = 0x6567_5f6d_6967;
const RESERVE_LOCK: i64 = 0x6567_5f72_6573;
/// The database's clock in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// The columns of `kernels`, in the order [`RawRow`] binds and reads them.
const COLUMNS: &str = "id, kernelspec, username, record, env, cwd, restart_count, created_ms, \
                       last_activity_ms, execution_state, gateway, lease_until_ms";

/// A kernel store in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    shown: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("store", &self.shown)
            .finish_non_exhaustive()
    }
}

/// An error with its causes (the driver's texts say "error performing TLS handshake" and keep
/// why in the source chain).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A rustls connector trusting the PEM certificates of `ca_file`.
fn tls_connector(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad =
        |why: String| StoreError::Config(format!("--store_ca_file {}: {why}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".to_owned()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Host(s), port and database of a configuration, never its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "postgres {}{port}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl PostgresStore {
    /// Connects (`url`: `postgres://user[:password]@host[:port]/db` or key-value form) without
    /// TLS and brings the schema up to date; a schema newer than this gateway's is refused.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, None).await
    }

    /// Like [`PostgresStore::connect`], over TLS only (`sslmode=require` whatever the URL says),
    /// with the server's certificate checked against the PEM certificates in `ca_file` and the
    /// URL's host name.
    pub async fn connect_tls(url: &str, ca_file: &Path) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, Some(ca_file)).await
    }

    async fn connect_with(url: &str, ca_file: Option<&Path>) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("--store: not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("enterprise-gateway");
        }
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match ca_file {
            None => {
                let shown = describe(&config);
                (Manager::from_config(config, NoTls, recycling), shown)
            }
            Some(ca_file) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let shown = format!("{} (TLS)", describe(&config));
                let tls = tls_connector(ca_file)?;
                (Manager::from_config(config, tls, recycling), shown)
            }
        };
        let (manager, shown) = manager;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(format!("--store: {e}")))?;
        let store = PostgresStore { pool, shown };
        store.migrate().await?;
        Ok(store)
    }

    fn unavailable(&self, reason: impl std::error::Error) -> StoreError {
        StoreError::Unavailable {
            store: self.shown.clone(),
            reason: with_causes(&reason),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| self.unavailable(e))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let fail = |e: tokio_postgres::Error| StoreError::Unavailable {
            store: self.shown.clone(),
            reason: format!("migrating the schema: {}", with_causes(&e)),
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .map_err(fail)?;
        let found: Option<i64> = tx
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await
            .map_err(fail)?
            .try_get(0)
            .map_err(fail)?;
        let found = found.unwrap_or(0);
        let latest = schema_version();
        if found > latest {
            return Err(StoreError::NewerSchema {
                store: self.shown.clone(),
                found,
                supported: latest,
            });
        }
        if found == latest {
            return Ok(());
        }
        for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
            tx.batch_execute(sql).await.map_err(fail)?;
        }
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&latest],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(store = %self.shown, from = found, to = latest, "kernel store schema migrated");
        Ok(())
    }
}

/// Reads one row; a column of a foreign type makes the row unreadable, not the query.
fn read_row(row: &tokio_postgres::Row) -> Result<RawRow, String> {
    let bad = |e: tokio_postgres::Error| format!("unreadable column: {e}");
    Ok(RawRow {
        id: row.try_get(0).map_err(bad)?,
        kernelspec: row.try_get(1).map_err(bad)?,
        username: row.try_get(2).map_err(bad)?,
        record: row.try_get(3).map_err(bad)?,
        env: row.try_get(4).map_err(bad)?,
        cwd: row.try_get(5).map_err(bad)?,
        restart_count: row.try_get(6).map_err(bad)?,
        created_ms: row.try_get(7).map_err(bad)?,
        last_activity_ms: row.try_get(8).map_err(bad)?,
        execution_state: row.try_get(9).map_err(bad)?,
        gateway: row.try_get(10).map_err(bad)?,
        lease_until_ms: row.try_get(11).map_err(bad)?,
    })
}

fn count(row: &tokio_postgres::Row) -> Result<usize, tokio_postgres::Error> {
    let n: i64 = row.try_get(0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

#[async_trait]
impl KernelStore for PostgresStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn reserve(
        &self,
        kernel: &StoredKernel,
        limits: Limits,
        ttl: Duration,
    ) -> Result<Reservation, StoreError> {
        let row = RawRow::encode(kernel);
        let mut client = self.client().await?;
        let fail = |e: tokio_postgres::Error| self.unavailable(e);
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RESERVE_LOCK])
            .await
            .map_err(fail)?;
        let exists = tx
            .query_one("SELECT count(*) FROM kernels WHERE id = $1", &[&row.id])
            .await
            .and_then(|r| count(&r))
            .map_err(fail)?;
        if exists > 0 {
            return Ok(Reservation::Exists);
        }
        let total = tx
            .query_one("SELECT count(*) FROM kernels", &[])
            .await
            .and_then(|r| count(&r))
            .map_err(fail)?;
        let of_user = tx
            .query_one(
                "SELECT count(*) FROM kernels WHERE username = $1",
                &[&row.username],
            )
            .await
            .and_then(|r| count(&r))
            .map_err(fail)?;
        if limits.max_total.is_some_and(|max| total >= max)
            || limits.max_per_user.is_some_and(|max| of_user >= max)
        {
            return Ok(Reservation::Full { total, of_user });
        }
        let ttl = ttl_ms(ttl);
        tx.execute(
            &format!(
                "INSERT INTO kernels ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {NOW_MS} + $12)"
            ),
            &[
                &row.id,
                &row.kernelspec,
                &row.username,
                &row.record,
                &row.env,
                &row.cwd,
                &row.restart_count,
                &row.created_ms,
                &row.last_activity_ms,
                &row.execution_state,
                &row.gateway,
                &ttl,
            ],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(Reservation::Reserved)
    }

    async fn save(&self, kernel: &StoredKernel) -> Result<bool, StoreError> {
        let row = RawRow::encode(kernel);
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE kernels SET kernelspec = $2, username = $3, record = $4, env = $5, cwd = $6, \
                 restart_count = $7, created_ms = $8, last_activity_ms = $9, execution_state = $10 \
                 WHERE id = $1 AND gateway = $11",
                &[
                    &row.id,
                    &row.kernelspec,
                    &row.username,
                    &row.record,
                    &row.env,
                    &row.cwd,
                    &row.restart_count,
                    &row.created_ms,
                    &row.last_activity_ms,
                    &row.execution_state,
                    &row.gateway,
                ],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(changed > 0)
    }

    async fn touch(&self, gateway: &str, activity: &[Activity]) -> Result<(), StoreError> {
        if activity.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let fail = |e: tokio_postgres::Error| self.unavailable(e);
        let tx = client.transaction().await.map_err(fail)?;
        let update = tx
            .prepare(
                "UPDATE kernels SET last_activity_ms = $2, execution_state = $3 \
                 WHERE id = $1 AND gateway = $4",
            )
            .await
            .map_err(fail)?;
        for a in activity {
            let at = to_ms(a.last_activity);
            tx.execute(&update, &[&a.id, &at, &a.execution_state, &gateway])
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }

    async fn remove(&self, kernel_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM kernels WHERE id = $1", &[&kernel_id])
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    async fn load(&self) -> Result<Vec<StoredKernel>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM kernels ORDER BY created_ms"),
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(decode_all(&self.shown, rows.iter().map(read_row).collect()))
    }

    async fn get(&self, kernel_id: &str) -> Result<Option<StoredKernel>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM kernels WHERE id = $1"),
                &[&kernel_id],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(row.and_then(|row| decode_all(&self.shown, vec![read_row(&row)]).pop()))
    }

    async fn renew(&self, gateway: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let ttl = ttl_ms(ttl);
        let rows = client
            .query(
                &format!(
                    "UPDATE kernels SET lease_until_ms = {NOW_MS} + $2 WHERE gateway = $1 RETURNING id"
                ),
                &[&gateway, &ttl],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.unavailable(e))
    }

    async fn claim(
        &self,
        kernel_id: &str,
        gateway: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let ttl = ttl_ms(ttl);
        let changed = client
            .execute(
                &format!(
                    "UPDATE kernels SET gateway = $2, lease_until_ms = {NOW_MS} + $3 \
                     WHERE id = $1 AND (gateway = $2 OR lease_until_ms < {NOW_MS})"
                ),
                &[&kernel_id, &gateway, &ttl],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(changed == 1)
    }

    async fn take(
        &self,
        kernel_id: &str,
        gateway: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let ttl = ttl_ms(ttl);
        let changed = client
            .execute(
                &format!(
                    "UPDATE kernels SET gateway = $2, lease_until_ms = {NOW_MS} + $3 WHERE id = $1"
                ),
                &[&kernel_id, &gateway, &ttl],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(changed == 1)
    }

    async fn release(&self, gateway: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE kernels SET lease_until_ms = 0 WHERE gateway = $1",
                &[&gateway],
            )
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }
}
