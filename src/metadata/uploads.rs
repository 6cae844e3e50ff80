//! Upload session rows: which repository a session belongs to, whom it
//! counts against, how many bytes are acknowledged. Any replica serves any
//! request of a session from these rows; the acknowledged offset only ever
//! moves by compare-and-set, so of two replicas racing on one session
//! exactly one chunk is acknowledged.

use sqlx::Row;

use super::lease::Lease;
use super::{repo_col, unix_now, Metadata, MetadataResult};
use crate::oci::RepoName;

/// One session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    pub repo: RepoName,
    /// The owner (JSON of the registry's principal), if recorded.
    pub owner: Option<String>,
    /// Bytes acknowledged to the client.
    pub committed: u64,
    pub started_at: i64,
    /// The last change (for the session TTL).
    pub updated_at: i64,
}

fn upload_row(r: &sqlx::any::AnyRow) -> MetadataResult<UploadRow> {
    Ok(UploadRow {
        id: r.try_get(0)?,
        repo: repo_col(&r.try_get::<String, _>(1)?)?,
        owner: r.try_get(2)?,
        committed: r.try_get::<i64, _>(3)? as u64,
        started_at: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    })
}

const COLUMNS: &str = "id, repo, owner, committed, started_at, updated_at";

/// The caps a new session is counted against, over every replica's rows.
#[derive(Debug, Clone, Copy)]
pub struct SessionCaps {
    pub total: u64,
    pub per_owner: u64,
}

/// Which cap a new session would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadCapHit {
    Total,
    Owner,
}

impl Metadata {
    /// Records a new session.
    pub async fn insert_upload(&self, row: &UploadRow) -> MetadataResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO uploads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        )))
        .bind(row.id.clone())
        .bind(row.repo.to_string())
        .bind(row.owner.clone())
        .bind(row.committed as i64)
        .bind(row.started_at)
        .bind(row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records a new session unless the sessions already recorded (by
    /// every replica) reach a cap: counted and inserted in one
    /// transaction, serialized across replicas (PostgreSQL: an advisory
    /// lock; SQLite: `BEGIN IMMEDIATE`), so concurrent starts never exceed
    /// it together.
    pub async fn insert_upload_capped(
        &self,
        row: &UploadRow,
        caps: SessionCaps,
    ) -> MetadataResult<Result<(), UploadCapHit>> {
        let mut tx = self.begin_write().await?;
        if self.engine() == super::Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(super::locks::UPLOAD_CAPS)
                .execute(&mut *tx)
                .await?;
        }
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM uploads")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if u64::try_from(total).unwrap_or(0) >= caps.total {
            return Ok(Err(UploadCapHit::Total));
        }
        if let Some(owner) = &row.owner {
            let mine: i64 = sqlx::query("SELECT COUNT(*) FROM uploads WHERE owner = $1")
                .bind(owner.clone())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if u64::try_from(mine).unwrap_or(0) >= caps.per_owner {
                return Ok(Err(UploadCapHit::Owner));
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO uploads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        )))
        .bind(row.id.clone())
        .bind(row.repo.to_string())
        .bind(row.owner.clone())
        .bind(row.committed as i64)
        .bind(row.started_at)
        .bind(row.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// One session; `None` if it never existed or has ended.
    pub async fn upload(&self, id: &str) -> MetadataResult<Option<UploadRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM uploads WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(upload_row).transpose()
    }

    /// Moves the acknowledged offset from `from` to `to`; `false` (and no
    /// change) if the session ended or another request moved it first.
    pub async fn advance_upload(&self, id: &str, from: u64, to: u64) -> MetadataResult<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET committed = $1, updated_at = $2 WHERE id = $3 AND committed = $4",
        )
        .bind(to as i64)
        .bind(unix_now())
        .bind(id.to_string())
        .bind(from as i64)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends a session; `false` if it had already ended.
    pub async fn delete_upload(&self, id: &str) -> MetadataResult<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every session (counting the caps, purging the stale).
    pub async fn uploads(&self) -> MetadataResult<Vec<UploadRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM uploads ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(upload_row).collect()
    }
}

impl Metadata {
    /// Records a session found in an older version's data directory,
    /// unless it is recorded already (an import that is resumed).
    pub async fn import_upload(&self, row: &UploadRow) -> MetadataResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO uploads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(row.id.clone())
        .bind(row.repo.to_string())
        .bind(row.owner.clone())
        .bind(row.committed as i64)
        .bind(row.started_at)
        .bind(row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Metadata {
    /// Waits for the session's lease: two replicas never write one
    /// session's bytes at once (the loser of a race then finds the offset
    /// moved and is refused cleanly, never interleaving its bytes).
    pub async fn lease_upload(&self, id: &str) -> MetadataResult<Lease> {
        self.lease(&format!("upload:{id}")).await
    }
}
