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
    pub(crate) async fn begin_write(&self) -> MetadataResult<Transaction<'static, Any>> {
        match self.engine {
            Engine::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Engine::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
                    .bind(locks::GC)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// A write transaction that also serializes with every other write of
    /// `repo` (tag writes against deletes by digest).
    pub(crate) async fn begin_repo_write(
        &self,
        repo: &str,
    ) -> MetadataResult<Transaction<'static, Any>> {
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
    pub(crate) async fn begin_gc_batch(&self) -> MetadataResult<Transaction<'static, Any>> {
        match self.engine {
            Engine::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Engine::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(locks::GC)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
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
