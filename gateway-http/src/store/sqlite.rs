//! The embedded store: one SQLite file (compiled in through `rusqlite`'s bundled SQLite, so no
//! system library is needed), the default for a single gateway.
//!
//! The file is created with mode 0600 (its directory, when the store creates it, 0700); SQLite
//! gives its `-wal` and `-shm` companions the same mode. The database runs in WAL mode with
//! `synchronous = NORMAL`: a crash of the gateway (even `kill -9`) loses no committed write.
//! Several gateways on one machine may share the file (writes wait up to five seconds for each
//! other); gateways on several machines share a PostgreSQL database instead.
//!
//! SQLite calls block, so each runs on tokio's blocking pool, one at a time over one connection.
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{
    Activity, KernelStore, Limits, MIGRATIONS, RawRow, Reservation, StoreError, StoredKernel,
    decode_all, schema_version, to_ms, ttl_ms,
};

/// How long a write waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of `kernels`, in the order [`RawRow`] binds and reads them.
const COLUMNS: &str = "id, kernelspec, username, record, env, cwd, restart_count, created_ms, \
                       last_activity_ms, execution_state, gateway, lease_until_ms";

/// A kernel store in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` and brings its schema up to date.
    /// A schema newer than this gateway's is refused.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || open_blocking(path))
            .await
            .map_err(|e| StoreError::Unavailable {
                store: shown,
                reason: format!("the opening task failed: {e}"),
            })?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let store = self.describe();
        let unavailable = |reason: String| StoreError::Unavailable {
            store: store.clone(),
            reason,
        };
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock();
            f(&mut conn)
        })
        .await
        .map_err(|e| unavailable(format!("the store task failed: {e}")))?;
        result.map_err(|e| unavailable(e.to_string()))
    }
}

fn open_blocking(path: PathBuf) -> Result<SqliteStore, StoreError> {
    let store = path.display().to_string();
    let unavailable = |reason: String| StoreError::Unavailable {
        store: store.clone(),
        reason,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Created owner-only before SQLite opens it; SQLite copies the mode to -wal and -shm.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| unavailable(format!("cannot open the file: {e}")))?;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(store = %store, mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the kernel store holds the kernels' keys but other users may read it; chmod 600 it");
    }
    drop(file);
    let mut conn = Connection::open(&path).map_err(|e| unavailable(e.to_string()))?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(store = %path.display(), mode, "the kernel store could not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
    };
    setup(&conn).map_err(|e| unavailable(e.to_string()))?;
    migrate(&mut conn, &store)?;
    Ok(SqliteStore {
        conn: Arc::new(Mutex::new(conn)),
        path,
    })
}

/// Applies the missing migrations in one transaction; refuses a newer schema.
fn migrate(conn: &mut Connection, store: &str) -> Result<(), StoreError> {
    let unavailable = |e: rusqlite::Error| StoreError::Unavailable {
        store: store.to_owned(),
        reason: format!("migrating the schema: {e}"),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
        [],
    )
    .map_err(unavailable)?;
    let found: Option<i64> = tx
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    let found = found.unwrap_or(0);
    let latest = schema_version();
    if found > latest {
        return Err(StoreError::NewerSchema {
            store: store.to_owned(),
            found,
            supported: latest,
        });
    }
    if found == latest {
        return Ok(());
    }
    for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(sql).map_err(unavailable)?;
    }
    tx.execute("DELETE FROM schema_version", [])
        .map_err(unavailable)?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [latest])
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    tracing::info!(
        store,
        from = found,
        to = latest,
        "kernel store schema migrated"
    );
    Ok(())
}

fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

fn insert(conn: &Connection, row: &RawRow) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "INSERT INTO kernels ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            row.id,
            row.kernelspec,
            row.username,
            row.record,
            row.env,
            row.cwd,
            row.restart_count,
            row.created_ms,
            row.last_activity_ms,
            row.execution_state,
            row.gateway,
            row.lease_until_ms
        ],
    )
}

/// Reads one row; a column of a foreign type makes the row unreadable, not the query.
fn read_row(row: &rusqlite::Row<'_>) -> Result<RawRow, String> {
    let bad = |e: rusqlite::Error| format!("unreadable column: {e}");
    Ok(RawRow {
        id: row.get(0).map_err(bad)?,
        kernelspec: row.get(1).map_err(bad)?,
        username: row.get(2).map_err(bad)?,
        record: row.get(3).map_err(bad)?,
        env: row.get(4).map_err(bad)?,
        cwd: row.get(5).map_err(bad)?,
        restart_count: row.get(6).map_err(bad)?,
        created_ms: row.get(7).map_err(bad)?,
        last_activity_ms: row.get(8).map_err(bad)?,
        execution_state: row.get(9).map_err(bad)?,
        gateway: row.get(10).map_err(bad)?,
        lease_until_ms: row.get(11).map_err(bad)?,
    })
}

fn count(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<usize> {
    let n: i64 = conn.query_row(sql, args, |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

#[async_trait]
impl KernelStore for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    async fn reserve(
        &self,
        kernel: &StoredKernel,
        limits: Limits,
        ttl: Duration,
    ) -> Result<Reservation, StoreError> {
        let mut row = RawRow::encode(kernel);
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if count(&tx, "SELECT count(*) FROM kernels WHERE id = ?1", [&row.id])? > 0 {
                return Ok(Reservation::Exists);
            }
            let total = count(&tx, "SELECT count(*) FROM kernels", [])?;
            let of_user = count(
                &tx,
                "SELECT count(*) FROM kernels WHERE username = ?1",
                [&row.username],
            )?;
            if limits.max_total.is_some_and(|max| total >= max)
                || limits.max_per_user.is_some_and(|max| of_user >= max)
            {
                return Ok(Reservation::Full { total, of_user });
            }
            row.lease_until_ms = now_ms().saturating_add(ttl_ms(ttl));
            insert(&tx, &row)?;
            tx.commit()?;
            Ok(Reservation::Reserved)
        })
        .await
    }

    async fn save(&self, kernel: &StoredKernel) -> Result<bool, StoreError> {
        let row = RawRow::encode(kernel);
        self.with(move |conn| {
            let changed = conn.execute(
                "UPDATE kernels SET kernelspec = ?2, username = ?3, record = ?4, env = ?5, cwd = ?6, \
                 restart_count = ?7, created_ms = ?8, last_activity_ms = ?9, execution_state = ?10 \
                 WHERE id = ?1 AND gateway = ?11",
                params![
                    row.id,
                    row.kernelspec,
                    row.username,
                    row.record,
                    row.env,
                    row.cwd,
                    row.restart_count,
                    row.created_ms,
                    row.last_activity_ms,
                    row.execution_state,
                    row.gateway
                ],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn touch(&self, gateway: &str, activity: &[Activity]) -> Result<(), StoreError> {
        if activity.is_empty() {
            return Ok(());
        }
        let gateway = gateway.to_owned();
        let rows: Vec<(String, i64, String)> = activity
            .iter()
            .map(|a| {
                (
                    a.id.clone(),
                    to_ms(a.last_activity),
                    a.execution_state.clone(),
                )
            })
            .collect();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut update = tx.prepare(
                    "UPDATE kernels SET last_activity_ms = ?2, execution_state = ?3 \
                     WHERE id = ?1 AND gateway = ?4",
                )?;
                for (id, at, state) in &rows {
                    update.execute(params![id, at, state, gateway])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn remove(&self, kernel_id: &str) -> Result<(), StoreError> {
        let id = kernel_id.to_owned();
        self.with(move |conn| conn.execute("DELETE FROM kernels WHERE id = ?1", [id]))
            .await
            .map(|_| ())
    }

    async fn load(&self) -> Result<Vec<StoredKernel>, StoreError> {
        let rows = self
            .with(|conn| {
                let mut select = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM kernels ORDER BY created_ms"
                ))?;
                let rows = select
                    .query_map([], |row| Ok(read_row(row)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        Ok(decode_all(&self.describe(), rows))
    }

    async fn get(&self, kernel_id: &str) -> Result<Option<StoredKernel>, StoreError> {
        let id = kernel_id.to_owned();
        let row = self
            .with(move |conn| {
                conn.query_row(
                    &format!("SELECT {COLUMNS} FROM kernels WHERE id = ?1"),
                    [id],
                    |row| Ok(read_row(row)),
                )
                .optional()
            })
            .await?;
        Ok(row.and_then(|row| decode_all(&self.describe(), vec![row]).pop()))
    }

    async fn renew(&self, gateway: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let gateway = gateway.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE kernels SET lease_until_ms = ?2 WHERE gateway = ?1",
                params![gateway, now_ms().saturating_add(ttl_ms(ttl))],
            )?;
            let ids = {
                let mut select = tx.prepare("SELECT id FROM kernels WHERE gateway = ?1")?;
                select
                    .query_map([&gateway], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    async fn claim(
        &self,
        kernel_id: &str,
        gateway: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (id, gateway) = (kernel_id.to_owned(), gateway.to_owned());
        self.with(move |conn| {
            let now = now_ms();
            let changed = conn.execute(
                "UPDATE kernels SET gateway = ?2, lease_until_ms = ?3 \
                 WHERE id = ?1 AND (gateway = ?2 OR lease_until_ms < ?4)",
                params![id, gateway, now.saturating_add(ttl_ms(ttl)), now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn take(
        &self,
        kernel_id: &str,
        gateway: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (id, gateway) = (kernel_id.to_owned(), gateway.to_owned());
        self.with(move |conn| {
            let changed = conn.execute(
                "UPDATE kernels SET gateway = ?2, lease_until_ms = ?3 WHERE id = ?1",
                params![id, gateway, now_ms().saturating_add(ttl_ms(ttl))],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release(&self, gateway: &str) -> Result<(), StoreError> {
        let gateway = gateway.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE kernels SET lease_until_ms = 0 WHERE gateway = ?1",
                [gateway],
            )
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::from_ms;

    fn kernel(user: &str, gateway: &str) -> StoredKernel {
        let now = from_ms(now_ms()).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        StoredKernel {
            id: uuid::Uuid::new_v4().to_string(),
            kernelspec: "python3".to_owned(),
            username: user.to_owned(),
            record: None,
            env: BTreeMap::new(),
            cwd: None,
            restart_count: 0,
            created: now,
            last_activity: now,
            execution_state: "starting".to_owned(),
            gateway: gateway.to_owned(),
            lease_until: now,
        }
    }

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn reserve_save_claim_and_limits() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Config(e.to_string()))?;
        let path = dir.path().join("sub/kernels.sqlite");
        let store = SqliteStore::open(&path).await?;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let limits = Limits {
            max_total: Some(2),
            max_per_user: Some(1),
        };
        let a = kernel("alice", "gw-a");
        assert_eq!(store.reserve(&a, limits, TTL).await?, Reservation::Reserved);
        assert_eq!(store.reserve(&a, limits, TTL).await?, Reservation::Exists);
        assert_eq!(
            store.reserve(&kernel("alice", "gw-b"), limits, TTL).await?,
            Reservation::Full {
                total: 1,
                of_user: 1
            }
        );
        let b = kernel("bob", "gw-b");
        assert_eq!(store.reserve(&b, limits, TTL).await?, Reservation::Reserved);
        assert!(matches!(
            store.reserve(&kernel("carol", "gw-b"), limits, TTL).await?,
            Reservation::Full { total: 2, .. }
        ));

        let mut saved = a.clone();
        saved.restart_count = 3;
        saved.execution_state = "idle".to_owned();
        assert!(store.save(&saved).await?);
        let mut foreign = b.clone();
        foreign.gateway = "gw-a".to_owned();
        assert!(!store.save(&foreign).await?, "b's lease is gw-b's");

        // A live lease is not taken; an expired one is, by exactly one claimant.
        assert!(!store.claim(&b.id, "gw-a", TTL).await?);
        assert!(store.claim(&b.id, "gw-b", TTL).await?);
        store.release("gw-b").await?;
        assert!(store.claim(&b.id, "gw-a", TTL).await?);
        assert!(!store.claim(&b.id, "gw-c", TTL).await?);
        let mut held = store.renew("gw-a", TTL).await?;
        held.sort();
        let mut expected = vec![a.id.clone(), b.id.clone()];
        expected.sort();
        assert_eq!(held, expected);

        let loaded = store.load().await?;
        assert_eq!(loaded.len(), 2);
        let got = store.get(&a.id).await?;
        assert_eq!(
            got.map(|k| (k.restart_count, k.execution_state)),
            Some((3, "idle".to_owned()))
        );
        store.remove(&a.id).await?;
        assert_eq!(store.get(&a.id).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn foreign_rows_are_skipped_and_newer_schemas_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("kernels.sqlite");
        let store = SqliteStore::open(&path).await?;
        let good = kernel("alice", "gw-a");
        store.reserve(&good, Limits::default(), TTL).await?;
        drop(store);
        {
            let conn = Connection::open(&path)?;
            conn.execute(
                &format!("INSERT INTO kernels ({COLUMNS}) VALUES ('not-a-uuid', 's', 'u', NULL, '{{}}', NULL, 0, 0, 0, 'idle', 'g', 0)"),
                [],
            )?;
            conn.execute(
                &format!("INSERT INTO kernels ({COLUMNS}) VALUES (?1, 's', 'u', 'garbage', '{{}}', NULL, 'x', 0, 0, 'idle', 'g', 0)"),
                [uuid::Uuid::new_v4().to_string()],
            )?;
        }
        let store = SqliteStore::open(&path).await?;
        let loaded = store.load().await?;
        assert_eq!(
            loaded.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
            vec![good.id.clone()]
        );
        drop(store);
        {
            let conn = Connection::open(&path)?;
            conn.execute("UPDATE schema_version SET version = 99", [])?;
        }
        let err = SqliteStore::open(&path)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("schema version 99") && err.contains("upgrade"),
            "{err}"
        );
        Ok(())
    }
}
