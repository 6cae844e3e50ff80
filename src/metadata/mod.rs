//! The metadata store: everything that is not content (repositories, tags,
//! which manifests and blobs belong to which repository, referrers, upload
//! sessions, and the rows the eBPF domain derives from manifests: artifacts,
//! host associations, signatures) in SQL. One schema and one set of queries
//! for two engines through sqlx's `Any` driver: SQLite embedded in the data
//! directory (the default) and PostgreSQL when several replicas share it.
//!
//! Blob and manifest bytes stay in the blob store. The ordering rule of
//! every write: the bytes are durable in the blob store before the
//! transaction that makes them visible commits, and the commit is the
//! acknowledgment. A crash before the commit leaves at most unreferenced
//! bytes, which garbage collection sweeps after its grace period.
//!
//! Serialization of writes that must not interleave (a tag write and a
//! delete by digest in one repository; a manifest that references blobs
//! and a collector deleting them) is done by the engine, so it holds across
//! replicas: SQLite runs one write transaction at a time (`BEGIN
//! IMMEDIATE`); on PostgreSQL each write transaction takes a transaction
//! advisory lock on its repository, and the collector an exclusive one on
//! which every reference-making write takes a shared hold (see [`locks`]).
//!
//! With webhooks configured, every change also writes its CloudEvents into
//! the outbox in its own transaction (see `outbox`), which the `events`
//! deliverer sends.

mod artifact_list;
pub mod changes;
mod deployments;
mod derived;
mod engine;
mod fleet;
pub mod gc;
mod lease;
mod manifests;
mod outbox;
pub mod schema;
mod uploads;

pub use artifact_list::{ArtifactFilter, ListingKey, RowKey};
pub use changes::{ChangeFeed, ScopeToken, Scopes};
pub use deployments::DeploymentWriter;
pub use derived::{ArtifactRow, DerivedRow, SignatureRow};
pub use engine::{Engine, MetadataConfig};
pub use fleet::*;
pub use lease::Lease;
pub use manifests::{ManifestPut, ManifestRow, PutRejected, TagPage};
pub use outbox::{ClaimedEvent, DeliveryOutcome, EventType, OutboxSettings, Pruned};
pub use uploads::{SessionCaps, UploadCapHit, UploadRow};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Any, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store: {0}")]
    Sql(#[from] sqlx::Error),
    /// A row that does not parse back (damage, or a newer schema).
    #[error("metadata store holds an invalid value: {0}")]
    Corrupt(String),
}

impl MetadataError {
    /// The engine's disk is full (SQLite `SQLITE_FULL`, PostgreSQL
    /// `disk_full`, or ENOSPC/EDQUOT from the driver): a 507 like a full
    /// blob store, not a generic 500.
    pub fn is_storage_full(&self) -> bool {
        match self {
            MetadataError::Sql(sqlx::Error::Database(db)) => {
                let code = db.code();
                let code = code.as_deref().unwrap_or("");
                // SQLite reports primary or extended codes; 13 is FULL.
                code == "13" || code == "53100" || db.message().contains("database or disk is full")
            }
            MetadataError::Sql(sqlx::Error::Io(e)) => {
                matches!(e.raw_os_error(), Some(28) | Some(122))
            }
            _ => false,
        }
    }
}

pub type MetadataResult<T> = Result<T, MetadataError>;

/// The metadata store of one process (a pool of connections).
#[derive(Clone)]
pub struct Metadata {
    pool: AnyPool,
    engine: Engine,
    /// PostgreSQL: the connections upload-session leases hold for the
    /// length of a request, apart from the query pool so that many
    /// uploads in flight never starve the queries.
    lease_pool: Option<AnyPool>,
    /// Set when events are on: changes write their events (see `outbox`).
    outbox: Option<std::sync::Arc<OutboxSettings>>,
    /// What this process knows of the fleet change counters (see
    /// `changes`).
    changes: std::sync::Arc<ChangeFeed>,
    /// PostgreSQL: the URL the change listener connects with.
    url: Option<String>,
    /// SQLite: the one write transaction at a time, queued in this
    /// process (first come, first served) instead of in SQLite's busy
    /// handler, which sleeps 1, 2, 5 ... 100 ms between tries and so made
    /// the tail of concurrent creates (see [`WriteTx`]).
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction, holding on SQLite this process's write gate until
/// it commits, rolls back or drops (the transaction first: a rollback on
/// drop runs before the next writer begins). `'c` is the connection's
/// borrow: `'static` for one of the pool, shorter for a kept connection
/// ([`Metadata::begin_sqlite_write_on`]).
pub(crate) struct WriteTx<'c> {
    tx: Transaction<'c, Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx<'_> {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

// The connection, as a `Transaction` derefs to it: `&mut *tx` executes.
impl std::ops::Deref for WriteTx<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Upload requests of one process that may hold a session lease at once
/// (PostgreSQL connections, opened on demand): with the query pool, a
/// replica uses at most 32 + 64 connections.
const LEASE_CONNECTIONS: u32 = 64;

/// Whole seconds since the Unix epoch (what every `*_at` column holds).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The advisory lock keys (PostgreSQL) of the collector and of
/// repositories; SQLite needs none (one writer at a time).
pub mod locks {
    /// Held exclusive by the collector's deletion batches and shared by
    /// every write that makes a blob or manifest referenced.
    pub const GC: i64 = 0x6270_6672_6567_0001;
    /// Held (session-level) by the one collector that runs at a time.
    pub const COLLECTOR: i64 = 0x6270_6672_6567_0002;
    /// Held by a new upload session's count-and-insert, so the caps hold
    /// across replicas.
    pub const UPLOAD_CAPS: i64 = 0x6270_6672_6567_0004;
}

impl Metadata {
    /// Opens (creating) the store and brings its schema up to date.
    pub async fn open(config: &MetadataConfig) -> MetadataResult<Metadata> {
        sqlx::any::install_default_drivers();
        let engine = config.engine();
        let url = config.url();
        let options = AnyPoolOptions::new()
            .max_connections(engine.pool_size())
            // A store that is down answers within a load balancer's probe.
            .acquire_timeout(std::time::Duration::from_secs(5));
        let options = match engine {
            Engine::Sqlite => options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never wait for the writer. FULL: a commit
                    // is on disk when it returns (the commit is the ack).
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 30000",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }),
            Engine::Postgres => options,
        };
        let pool = options.connect(&url).await?;
        let lease_pool = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(
                AnyPoolOptions::new()
                    .max_connections(LEASE_CONNECTIONS)
                    .min_connections(0)
                    // As long as an in-process upload slot may be waited for.
                    .acquire_timeout(std::time::Duration::from_secs(60))
                    .connect(&url)
                    .await?,
            ),
        };
        let m = Metadata {
            pool,
            engine,
            lease_pool,
            outbox: None,
            changes: std::sync::Arc::new(ChangeFeed::default()),
            url: (engine == Engine::Postgres).then(|| url.clone()),
            write_gate: std::sync::Arc::default(),
        };
        schema::apply(&m).await?;
        Ok(m)
    }

    /// The embedded store of a data directory (tools and tests).
    pub async fn open_in_dir(data_dir: &std::path::Path) -> MetadataResult<Metadata> {
        Self::open(&MetadataConfig::parse(None, data_dir).map_err(MetadataError::Corrupt)?).await
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn lease_pool(&self) -> Option<&AnyPool> {
        self.lease_pool.as_ref()
    }

    /// Starts a write transaction. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`: no upgrade deadlock between two writers
    /// that both read first); on PostgreSQL every write transaction holds
    /// the collector's lock shared, so a deletion batch never runs between
    /// a write's reference checks and its commit.
    pub(crate) async fn begin_write(&self) -> MetadataResult<WriteTx<'static>> {
        self.begin_locked("SELECT pg_advisory_xact_lock_shared($1)")
            .await
    }

    /// A write transaction from the pool: on SQLite in this process's
    /// queue of writers (`BEGIN IMMEDIATE` once its turn comes), on
    /// PostgreSQL holding the collector's lock by `lock_sql`.
    async fn begin_locked(&self, lock_sql: &'static str) -> MetadataResult<WriteTx<'static>> {
        match self.engine {
            Engine::Sqlite => {
                let gate = self.sqlite_write_gate().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx { tx, _gate: gate })
            }
            Engine::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(lock_sql)
                    .bind(locks::GC)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteTx { tx, _gate: None })
            }
        }
    }

    /// A SQLite write transaction on a connection the caller keeps (the
    /// fleet's report batches), in the same queue of writers as
    /// [`Metadata::begin_write`].
    pub(crate) async fn begin_sqlite_write_on<'c>(
        &self,
        conn: &'c mut sqlx::AnyConnection,
    ) -> MetadataResult<WriteTx<'c>> {
        let gate = self.sqlite_write_gate().await;
        let tx = sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _gate: gate })
    }

    /// SQLite: this process's turn to write (held until the transaction
    /// ends); `None` on PostgreSQL, whose writers lock rows, not the file.
    async fn sqlite_write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.engine {
            Engine::Sqlite => Some(self.write_gate.clone().lock_owned().await),
            Engine::Postgres => None,
        }
    }

    /// A write transaction that also serializes with every other write of
    /// `repo` (tag writes against deletes by digest).
    pub(crate) async fn begin_repo_write(&self, repo: &str) -> MetadataResult<WriteTx<'static>> {
        let mut tx = self.begin_write().await?;
        if self.engine == Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(repo.to_string())
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// The collector's exclusive section for one batch of deletions: no
    /// reference-making write is between its checks and its commit.
    pub(crate) async fn begin_gc_batch(&self) -> MetadataResult<WriteTx<'static>> {
        self.begin_locked("SELECT pg_advisory_xact_lock($1)").await
    }

    /// Whether the store answers (for `/healthz`).
    pub async fn ping(&self) -> MetadataResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// A digest column back into a digest.
pub(crate) fn digest_col(s: &str) -> MetadataResult<crate::oci::Digest> {
    crate::oci::Digest::parse(s).map_err(|_| MetadataError::Corrupt(format!("digest {s:?}")))
}

/// A repository column back into a name.
pub(crate) fn repo_col(s: &str) -> MetadataResult<crate::oci::RepoName> {
    crate::oci::RepoName::parse(s).map_err(|_| MetadataError::Corrupt(format!("repository {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// SQLite write transactions begin in the order they were asked for:
    /// four writers queue behind one that holds the write lock, each
    /// polled once (so it is waiting) before the next is made; when the
    /// first commits, they begin, write and commit in that order, none
    /// failing busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_begin_first_come_first_served() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open_in_dir(dir.path()).await.unwrap();
        sqlx::query("CREATE TABLE gate_order (n INTEGER NOT NULL)")
            .execute(meta.pool())
            .await
            .unwrap();
        let first = meta.begin_write().await.unwrap();
        let began = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for n in 1..=4i64 {
            let (m, began) = (meta.clone(), began.clone());
            let mut writer = Box::pin(async move {
                let mut tx = m.begin_write().await?;
                began.lock().unwrap().push(n);
                sqlx::query("INSERT INTO gate_order (n) VALUES ($1)")
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                MetadataResult::Ok(())
            });
            assert!(
                futures_util::poll!(writer.as_mut()).is_pending(),
                "writer {n} began while another held the write lock"
            );
            writers.push(tokio::spawn(writer));
        }
        first.commit().await.unwrap();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        assert_eq!(*began.lock().unwrap(), vec![1, 2, 3, 4]);
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM gate_order ORDER BY rowid")
            .fetch_all(meta.pool())
            .await
            .unwrap();
        assert_eq!(rows, vec![1, 2, 3, 4]);
    }
}
