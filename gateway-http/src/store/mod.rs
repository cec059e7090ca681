//! The kernel store: what a gateway must remember about each kernel so that it, after a restart
//! or a crash, or another gateway sharing the store, can re-attach to the kernel and supervise it.
//!
//! [`KernelStore`] is the small trait the kernel manager writes through; [`sqlite::SqliteStore`]
//! (one file, the default for a single gateway) and [`postgres::PostgresStore`] (several
//! gateways) implement it with the same versioned schema ([`MIGRATIONS`]).
//!
//! A row ([`StoredKernel`]) holds the kernel's id, kernelspec, owner, the backend's
//! [`KernelRecord`] (where the kernel runs and its connection info, **including the HMAC key**),
//! the environment it was given, its working directory, restart count, creation and last
//! activity times, its last execution state, and a *lease*: the gateway that supervises it and
//! until when. The key makes a row as sensitive as a connection file: the SQLite file is created
//! with mode 0600 in a directory only the gateway's user can enter, and a PostgreSQL table should
//! be readable by the gateways' role only.
//!
//! Writes happen when something changes (a start is reserved, a launch or restart finished, a
//! kernel went away, a lease is renewed or taken over, and activity in batches with the lease
//! renewal); never per message.
//!
//! Leases make exactly one gateway the supervisor of a kernel: [`KernelStore::claim`] is a
//! compare-and-set (the lease is free, expired or already the caller's), so of two gateways
//! racing to take over a kernel exactly one wins.
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use resource_managers::KernelRecord;
use time::OffsetDateTime;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The schema, one step per version: `MIGRATIONS[i]` brings a store from version `i` to `i + 1`.
/// The SQL is plain enough for both SQLite and PostgreSQL. A store whose `schema_version` is
/// newer than `MIGRATIONS.len()` is refused ([`StoreError::NewerSchema`]).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE kernels (
        id TEXT PRIMARY KEY,
        kernelspec TEXT NOT NULL,
        username TEXT NOT NULL,
        record TEXT,
        env TEXT NOT NULL,
        cwd TEXT,
        restart_count BIGINT NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL,
        last_activity_ms BIGINT NOT NULL,
        execution_state TEXT NOT NULL,
        gateway TEXT NOT NULL,
        lease_until_ms BIGINT NOT NULL
    )"];

/// The schema version this gateway writes.
pub fn schema_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// One kernel as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKernel {
    /// The kernel's UUID, the row's primary key.
    pub id: String,
    /// The kernelspec it was started from; a re-attaching gateway loads it again by this name.
    pub kernelspec: String,
    /// The owner (`KERNEL_USERNAME`).
    pub username: String,
    /// Where the kernel runs, from its backend; `None` while the start is in flight.
    pub record: Option<KernelRecord>,
    /// The environment the kernel was given (reused when it is restarted).
    pub env: BTreeMap<String, String>,
    /// The working directory it was started in.
    pub cwd: Option<PathBuf>,
    /// Restarts so far (API and automatic).
    pub restart_count: u32,
    /// When it was first started (a restart keeps it).
    pub created: OffsetDateTime,
    /// Its last iopub activity (what culling measures).
    pub last_activity: OffsetDateTime,
    /// The newest execution state written back (what a re-attaching gateway shows first).
    pub execution_state: String,
    /// The gateway holding the lease (its supervisor).
    pub gateway: String,
    /// Until when the lease holds unless renewed.
    pub lease_until: OffsetDateTime,
}

/// Limits checked when a start is reserved (across every gateway sharing the store).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `max_kernels`: counted over every row, starting kernels included.
    pub max_total: Option<usize>,
    /// `max_kernels_per_user`: counted over the owner's rows.
    pub max_per_user: Option<usize>,
}

/// What a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The row was inserted: the start may go on.
    Reserved,
    /// A kernel with this id exists already.
    Exists,
    /// A limit is reached; the counts (all kernels, the owner's) are those the store saw.
    Full {
        /// Kernels in the store, starting ones included.
        total: usize,
        /// Kernels of the owner.
        of_user: usize,
    },
}

/// A batch entry of [`KernelStore::touch`].
#[derive(Debug, Clone)]
pub struct Activity {
    /// Which row to update; a row gone meanwhile is skipped, not recreated.
    pub id: String,
    /// The newest iopub activity the supervisor saw.
    pub last_activity: OffsetDateTime,
    /// The execution state at that moment.
    pub execution_state: String,
}

/// Errors of a kernel store. Texts never contain a password or a kernel's key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or a call on it failed (the database is down, the file
    /// cannot be written).
    #[error("the kernel store ({store}) is unavailable: {reason}")]
    Unavailable {
        /// Which store (path or host, no credentials).
        store: String,
        /// What failed.
        reason: String,
    },
    /// The store was written by a newer gateway.
    #[error(
        "the kernel store ({store}) has schema version {found}, newer than the version {supported} this gateway knows; upgrade this gateway or point it at another store"
    )]
    NewerSchema {
        /// Which store.
        store: String,
        /// The version found.
        found: i64,
        /// The newest version this gateway knows.
        supported: i64,
    },
    /// The store's location is unusable (bad URL, bad path).
    #[error("{0}")]
    Config(String),
}

/// Where kernels are remembered. Implementations are cheap to share (`Arc<dyn KernelStore>`).
#[async_trait]
pub trait KernelStore: Send + Sync + Debug {
    /// The store for log lines and errors (a path, or host and database; never a password).
    fn describe(&self) -> String;
    /// Inserts a starting kernel (`record` `None`) with a lease of `ttl` for `kernel.gateway`,
    /// unless its id exists or a limit is reached; counting and inserting are one transaction.
    async fn reserve(
        &self,
        kernel: &StoredKernel,
        limits: Limits,
        ttl: Duration,
    ) -> Result<Reservation, StoreError>;
    /// Writes every field of `kernel` but the lease, if `kernel.gateway` still holds its lease.
    /// `false`: the row is gone or another gateway took it over.
    async fn save(&self, kernel: &StoredKernel) -> Result<bool, StoreError>;
    /// Updates activity and execution state of kernels leased by `gateway`.
    async fn touch(&self, gateway: &str, activity: &[Activity]) -> Result<(), StoreError>;
    /// Forgets a kernel.
    async fn remove(&self, kernel_id: &str) -> Result<(), StoreError>;
    /// Every readable row; unreadable ones are skipped with a log line.
    async fn load(&self) -> Result<Vec<StoredKernel>, StoreError>;
    /// One row, if it exists and is readable.
    async fn get(&self, kernel_id: &str) -> Result<Option<StoredKernel>, StoreError>;
    /// Extends the leases `gateway` holds by `ttl`; returns the ids it holds.
    async fn renew(&self, gateway: &str, ttl: Duration) -> Result<Vec<String>, StoreError>;
    /// Takes the lease of one kernel for `gateway` if it is expired or already `gateway`'s;
    /// `true` for the one caller that got it.
    async fn claim(
        &self,
        kernel_id: &str,
        gateway: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Takes the lease of one kernel for `gateway` whoever holds it (a restart or shutdown asked
    /// of a gateway that does not supervise the kernel); the previous holder lets go of it when
    /// its next renewal or its next look at the row shows the lease is gone. `false`: no such
    /// row.
    async fn take(&self, kernel_id: &str, gateway: &str, ttl: Duration)
    -> Result<bool, StoreError>;
    /// Lets the leases of `gateway` expire now (a clean stop that leaves kernels running), so
    /// another gateway may take them over without waiting.
    async fn release(&self, gateway: &str) -> Result<(), StoreError>;
}

/// Opens the store named by `location`: a `postgres://` or `postgresql://` URL (over TLS
/// checked against `ca_file` when one is given), else the path of a SQLite file.
pub async fn open(
    location: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<std::sync::Arc<dyn KernelStore>, StoreError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(match ca_file {
            Some(ca_file) => PostgresStore::connect_tls(location, ca_file).await?,
            None => PostgresStore::connect(location).await?,
        }))
    } else {
        Ok(std::sync::Arc::new(
            SqliteStore::open(std::path::Path::new(location)).await?,
        ))
    }
}

// === Rows as the databases hold them ===

/// A row in the databases' own types, before validation.
#[derive(Debug)]
pub(crate) struct RawRow {
    pub(crate) id: String,
    pub(crate) kernelspec: String,
    pub(crate) username: String,
    pub(crate) record: Option<String>,
    pub(crate) env: String,
    pub(crate) cwd: Option<String>,
    pub(crate) restart_count: i64,
    pub(crate) created_ms: i64,
    pub(crate) last_activity_ms: i64,
    pub(crate) execution_state: String,
    pub(crate) gateway: String,
    pub(crate) lease_until_ms: i64,
}

/// Milliseconds since the epoch (what the tables hold).
pub(crate) fn to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The instant `ms` milliseconds after the epoch, if representable.
pub(crate) fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl RawRow {
    /// The row of a kernel.
    pub(crate) fn encode(kernel: &StoredKernel) -> RawRow {
        RawRow {
            id: kernel.id.clone(),
            kernelspec: kernel.kernelspec.clone(),
            username: kernel.username.clone(),
            record: kernel
                .record
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
            env: serde_json::to_string(&kernel.env).unwrap_or_else(|_| "{}".to_owned()),
            cwd: kernel
                .cwd
                .as_ref()
                .map(|c| c.to_string_lossy().into_owned()),
            restart_count: i64::from(kernel.restart_count),
            created_ms: to_ms(kernel.created),
            last_activity_ms: to_ms(kernel.last_activity),
            execution_state: kernel.execution_state.clone(),
            gateway: kernel.gateway.clone(),
            lease_until_ms: to_ms(kernel.lease_until),
        }
    }

    /// Validates a row; the error says what is wrong with it (never its key).
    pub(crate) fn decode(self) -> Result<StoredKernel, String> {
        if uuid::Uuid::parse_str(&self.id).is_err() {
            return Err("its id is not a UUID".to_owned());
        }
        let record = match &self.record {
            None => None,
            Some(text) => {
                let record: KernelRecord = serde_json::from_str(text)
                    .map_err(|e| format!("its backend record does not parse: {e}"))?;
                if record.kernel_id != self.id {
                    return Err(format!(
                        "its backend record is of another kernel ({})",
                        record.kernel_id
                    ));
                }
                Some(record)
            }
        };
        let env: BTreeMap<String, String> = serde_json::from_str(&self.env)
            .map_err(|e| format!("its environment does not parse: {e}"))?;
        let time =
            |ms: i64, what: &str| from_ms(ms).ok_or_else(|| format!("its {what} is out of range"));
        Ok(StoredKernel {
            record,
            env,
            cwd: self.cwd.map(PathBuf::from),
            restart_count: u32::try_from(self.restart_count)
                .map_err(|_| "its restart count is out of range".to_owned())?,
            created: time(self.created_ms, "creation time")?,
            last_activity: time(self.last_activity_ms, "last activity")?,
            lease_until: time(self.lease_until_ms, "lease")?,
            id: self.id,
            kernelspec: self.kernelspec,
            username: self.username,
            execution_state: self.execution_state,
            gateway: self.gateway,
        })
    }
}

/// Decodes rows, skipping (with a log line) those that do not validate.
pub(crate) fn decode_all(store: &str, rows: Vec<Result<RawRow, String>>) -> Vec<StoredKernel> {
    rows.into_iter()
        .filter_map(|row| {
            match row.and_then(|r| {
                let id = r.id.clone();
                r.decode().map_err(|e| format!("row {id:?}: {e}"))
            }) {
                Ok(kernel) => Some(kernel),
                Err(why) => {
                    tracing::warn!(store, "skipping an unreadable kernel row: {why}");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> StoredKernel {
        let now = from_ms(to_ms(OffsetDateTime::now_utc())).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        StoredKernel {
            id: uuid::Uuid::new_v4().to_string(),
            kernelspec: "python3".to_owned(),
            username: "alice".to_owned(),
            record: None,
            env: BTreeMap::from([("KERNEL_USERNAME".to_owned(), "alice".to_owned())]),
            cwd: Some(PathBuf::from("/tmp")),
            restart_count: 2,
            created: now,
            last_activity: now,
            execution_state: "idle".to_owned(),
            gateway: "gw-a".to_owned(),
            lease_until: now,
        }
    }

    #[test]
    fn rows_round_trip_and_bad_rows_say_why() {
        let k = kernel();
        assert_eq!(RawRow::encode(&k).decode().as_ref(), Ok(&k));
        let mut bad = RawRow::encode(&k);
        bad.id = "../etc".to_owned();
        assert!(bad.decode().is_err_and(|e| e.contains("UUID")));
        let mut bad = RawRow::encode(&k);
        bad.env = "[1".to_owned();
        assert!(bad.decode().is_err_and(|e| e.contains("environment")));
        let mut bad = RawRow::encode(&k);
        bad.record = Some(r#"{"resource_manager":"local"}"#.to_owned());
        assert!(bad.decode().is_err_and(|e| e.contains("backend record")));
        let mut bad = RawRow::encode(&k);
        bad.restart_count = -1;
        assert!(bad.decode().is_err());
    }
}
