//! `bpf-registry migrate`: copies a whole store (blobs, then metadata
//! rows) into other engines, e.g. from the embedded fs + SQLite to S3 +
//! PostgreSQL. The ordering rule of every write holds for the copy as a
//! whole: every blob is durable in the target before the first row is
//! committed there. Upload sessions in progress are not copied (their
//! bytes are half a blob); clients restart them.
//!
//! Idempotent and resumable: blobs the target holds with the same size are
//! skipped, rows are upserts in bounded batches (equal rows are not
//! rewritten), so a rerun, or a run after a `kill -9` at any moment,
//! finishes with the same target. To tell a resumed copy from a target
//! that holds another store, the source gets a random `store_id` in its
//! `meta` table (the one write to the source) and the target records it
//! as `migrated_from` before anything is copied; `migrated_at` is written
//! last, when the copy is complete.

mod blobs;
mod rows;

use std::sync::Arc;

use serde::Serialize;

pub use blobs::{BlobCopyReport, CorruptBlob};
pub use rows::TableReport;

use super::{Registry, RegistryError};
use crate::metadata::schema::{self, TABLES};
use crate::metadata::{unix_now, Metadata, MetadataError};
use crate::storage::Backend;

/// The `meta` key naming a store (set on a store the first time it is the
/// source of a copy).
pub const STORE_ID: &str = "store_id";
/// The `meta` key naming the store a target is a copy of.
pub const MIGRATED_FROM: &str = "migrated_from";
/// The `meta` key recording when a copy into this store completed.
pub const MIGRATED_AT: &str = "migrated_at";
/// PostgreSQL: the session advisory lock a copy holds on its target, so
/// two copies never write one database at once (SQLite targets are kept
/// apart by their data dir's lock).
pub const TARGET_LOCK: i64 = 0x6270_6672_6567_0004;
/// `meta` rows that describe one store, never copied to another.
const PER_STORE_META: &[&str] = &[STORE_ID, MIGRATED_FROM, MIGRATED_AT];

/// Where the copy goes.
pub struct Target {
    pub metadata: Metadata,
    /// `None`: the target uses the source's blob store (only the rows
    /// move).
    pub blobs: Option<Arc<dyn Backend>>,
}

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Rows per batch (one transaction each).
    pub batch_rows: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions { batch_rows: 1000 }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateReport {
    /// The source's `store_id` (the target's `migrated_from`).
    pub source_store_id: String,
    /// The target already held a part (or all) of this copy.
    pub resumed: bool,
    /// `false` when the target shares the source's blob store.
    pub blobs_copied_between_stores: bool,
    pub blobs: BlobCopyReport,
    pub tables: Vec<TableReport>,
    /// Upload sessions in progress in the source, left behind.
    pub upload_sessions_not_copied: u64,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The target holds something else: it was not changed.
    #[error("{0}")]
    Refused(String),
    /// Source blobs whose bytes do not match their digest: no row was
    /// copied (`scrub` the source, then run again).
    #[error("{} source blobs do not match their digest; no rows were copied (run `bpf-registry scrub` on the source)", .0.corrupt.len())]
    CorruptBlobs(Box<BlobCopyReport>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<MetadataError> for MigrateError {
    fn from(e: MetadataError) -> Self {
        MigrateError::Registry(e.into())
    }
}

/// The source's id, created on its first copy.
async fn source_id(source: &Metadata) -> Result<String, MigrateError> {
    if let Some(id) = schema::meta_value(source, STORE_ID).await? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    schema::set_meta_value(source, STORE_ID, &id).await?;
    Ok(id)
}

/// On PostgreSQL, a connection of its own holding [`TARGET_LOCK`] until
/// it is dropped (closing it ends the session and the lock with it).
async fn lock_target(target: &Metadata) -> Result<Option<sqlx::AnyConnection>, MigrateError> {
    use sqlx::Row;
    if target.engine() != crate::metadata::Engine::Postgres {
        return Ok(None);
    }
    let mut conn = target
        .pool()
        .acquire()
        .await
        .map_err(MetadataError::from)?
        .detach();
    let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
        .bind(TARGET_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(MetadataError::from)?
        .try_get(0)
        .map_err(MetadataError::from)?;
    if !got {
        return Err(MigrateError::Refused(
            "another `bpf-registry migrate` is copying into this database now".into(),
        ));
    }
    Ok(Some(conn))
}

/// Whether the target is empty, a (partial) copy of `id`, or something
/// else (refused). Returns whether the copy resumes.
async fn check_target(target: &Metadata, id: &str) -> Result<bool, MigrateError> {
    if schema::meta_value(target, STORE_ID).await?.as_deref() == Some(id) {
        return Err(MigrateError::Refused(
            "the target metadata store is the source itself".into(),
        ));
    }
    match schema::meta_value(target, MIGRATED_FROM).await? {
        Some(from) if from == id => return Ok(true),
        Some(from) => {
            return Err(MigrateError::Refused(format!(
                "the target metadata store holds a copy of another store (migrated_from {from}, \
                 this source is {id}); use an empty database"
            )))
        }
        None => {}
    }
    for t in TABLES.iter().filter(|t| t.name != "meta") {
        if rows::has_rows(target, t).await? {
            return Err(MigrateError::Refused(format!(
                "the target metadata store already holds another store (its {} table has rows); \
                 use an empty database",
                t.name
            )));
        }
    }
    Ok(false)
}

/// Copies the store of `source` into `target`.
pub async fn migrate(
    source: &Registry,
    target: &Target,
    options: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    let started = std::time::Instant::now();
    let batch_rows = options.batch_rows.clamp(1, 4000);
    let src = source.metadata();
    let _held = lock_target(&target.metadata).await?;
    let id = source_id(src).await?;
    let resumed = check_target(&target.metadata, &id).await?;
    schema::set_meta_value(&target.metadata, MIGRATED_FROM, &id).await?;
    let mut report = MigrateReport {
        source_store_id: id,
        resumed,
        blobs_copied_between_stores: target.blobs.is_some(),
        ..MigrateReport::default()
    };
    // Every blob durable in the target before any row that names one.
    if let Some(to) = &target.blobs {
        let blobs = blobs::copy_blobs(source.backend().clone(), to.clone()).await?;
        if !blobs.corrupt.is_empty() {
            return Err(MigrateError::CorruptBlobs(Box::new(blobs)));
        }
        report.blobs = blobs;
    }
    for t in TABLES {
        if !t.copied {
            if t.name == "uploads" {
                report.upload_sessions_not_copied = rows::count(src, t).await?;
            }
            continue;
        }
        tracing::info!(table = t.name, "copying rows");
        let table = rows::copy_table(src, &target.metadata, t, batch_rows, |row| {
            t.name == "meta"
                && rows::text_of(t, row, "key").is_some_and(|k| PER_STORE_META.contains(&k))
        })
        .await?;
        report.tables.push(table);
    }
    schema::set_meta_value(&target.metadata, MIGRATED_AT, &unix_now().to_string()).await?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
