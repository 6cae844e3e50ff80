//! Writing deployment reports: a batch of reports (of concurrent
//! requests, see `fleet::reports`) in one transaction that first checks
//! their hosts are registered, then writes each one's current state and
//! history entry with multi-row statements. On SQLite the writer keeps
//! one connection for its batches, so its page cache stays warm (another
//! pool connection's cache is dropped whenever a write changed the file).

use std::collections::{BTreeSet, HashMap};

use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};

use super::changes::host_scope;
use super::fleet::{DeploymentRow, HISTORY_PER_HOST};
use super::{Engine, Metadata, MetadataResult, WriteTx};

/// Writes batches of reports; see [`DeploymentWriter::put`].
pub struct DeploymentWriter {
    meta: Metadata,
    /// SQLite: the connection kept for the batches (dropped after an
    /// error, taken again from the pool for the next one).
    conn: Option<PoolConnection<Any>>,
}

impl Metadata {
    /// A writer of report batches (one per process is enough: see
    /// `fleet::reports`).
    pub fn deployment_writer(&self) -> DeploymentWriter {
        DeploymentWriter {
            meta: self.clone(),
            conn: None,
        }
    }

    /// [`DeploymentWriter::put`] on a connection of the pool.
    pub async fn put_deployments(&self, rows: &[DeploymentRow]) -> MetadataResult<Vec<bool>> {
        let mut tx = self.begin_write().await?;
        let written = put_batch(&mut tx, self.engine, rows).await?;
        finish(tx, &written).await?;
        Ok(written)
    }
}

impl DeploymentWriter {
    /// Records deployment reports: for each whose host is registered, the
    /// current state of (host, artifact) and an entry of the host's
    /// history (the oldest beyond [`HISTORY_PER_HOST`] dropped), all in
    /// one transaction. Returns, per report in order, whether it was
    /// written: `false` when its host is not registered. The hosts are
    /// checked inside the transaction (on PostgreSQL after each host's
    /// lock, the one `upsert_host` and `delete_host` take), so a report is
    /// never written for a host deleted before its commit.
    pub async fn put(&mut self, rows: &[DeploymentRow]) -> MetadataResult<Vec<bool>> {
        if self.meta.engine != Engine::Sqlite {
            return self.meta.put_deployments(rows).await;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.meta.pool().acquire().await?,
        };
        let written = {
            let mut tx = self.meta.begin_sqlite_write_on(&mut conn).await?;
            let written = put_batch(&mut tx, Engine::Sqlite, rows).await?;
            finish(tx, &written).await?;
            written
        };
        // Kept only after a batch that went through.
        self.conn = Some(conn);
        Ok(written)
    }
}

/// Commits a batch's transaction, or rolls it back when it wrote nothing.
async fn finish(tx: WriteTx<'_>, written: &[bool]) -> MetadataResult<()> {
    if written.iter().any(|w| *w) {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(())
}

/// The batch's statements in `tx`; per report, whether it is written.
async fn put_batch(
    tx: &mut sqlx::AnyConnection,
    engine: Engine,
    rows: &[DeploymentRow],
) -> MetadataResult<Vec<bool>> {
    let hosts: BTreeSet<&str> = rows.iter().map(|d| d.host_id.as_str()).collect();
    if engine == Engine::Postgres {
        // Serializes the reports of one host across replicas (the
        // history's sequence) and with the host's registration and
        // deletion, in a fixed order: no deadlock.
        for h in &hosts {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(host_scope(h))
                .execute(&mut *tx)
                .await?;
        }
    }
    let hosts: Vec<&str> = hosts.into_iter().collect();
    let registered = registered_in(tx, &hosts).await?;
    let written: Vec<bool> = rows
        .iter()
        .map(|d| registered.contains_key(d.host_id.as_str()))
        .collect();
    let kept: Vec<DeploymentRow> = rows
        .iter()
        .zip(&written)
        .filter(|(_, w)| **w)
        .map(|(d, _)| d.clone())
        .collect();
    if !kept.is_empty() {
        put_deployments_in(tx, &kept, registered).await?;
    }
    Ok(written)
}

/// Reports per multi-row statement (8 binds each: under every engine's
/// bind limit).
const ROWS_PER_STATEMENT: usize = 64;

/// `($1, ..., $cols), ($cols+1, ...)`: the placeholders of `rows` rows.
fn placeholder_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of `hosts` are registered, each with its last history position
/// (0 for none), read in the caller's transaction in one query.
async fn registered_in(
    tx: &mut sqlx::AnyConnection,
    hosts: &[&str],
) -> MetadataResult<HashMap<String, i64>> {
    let mut out = HashMap::with_capacity(hosts.len());
    for chunk in hosts.chunks(200) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT h.host_id,
               (SELECT MAX(d.seq) FROM deployment_history d WHERE d.host_id = h.host_id)
             FROM hosts h WHERE h.host_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for h in chunk {
            q = q.bind(h.to_string());
        }
        for r in q.fetch_all(&mut *tx).await? {
            out.insert(r.try_get(0)?, r.try_get::<Option<i64>, _>(1)?.unwrap_or(0));
        }
    }
    Ok(out)
}

/// A batch of reports' rows, in the caller's transaction, given each
/// host's last history position (`next`, from [`registered_in`]):
/// multi-row statements (a batch costs a few statements, not four per
/// report); each host's history is trimmed
/// when its sequence passes a multiple of 16, so it holds at most
/// [`HISTORY_PER_HOST`] + 16 rows (reads return the newest 100).
async fn put_deployments_in(
    tx: &mut sqlx::AnyConnection,
    rows: &[DeploymentRow],
    mut next: HashMap<String, i64>,
) -> MetadataResult<()> {
    // The last report per (host, artifact) in the batch is its state.
    let mut current: std::collections::BTreeMap<(&str, &str, &str), &DeploymentRow> =
        std::collections::BTreeMap::new();
    for d in rows {
        current.insert((&d.host_id, &d.repo, &d.digest), d);
    }
    let current: Vec<&DeploymentRow> = current.into_values().collect();
    for chunk in current.chunks(ROWS_PER_STATEMENT) {
        let values = placeholder_rows(chunk.len(), 7);
        let sql = format!(
            "INSERT INTO deployments
               (host_id, repo, digest, state, message, attach_point, reported_at)
             VALUES {values}
             ON CONFLICT (host_id, repo, digest) DO UPDATE SET
               state = excluded.state, message = excluded.message,
               attach_point = excluded.attach_point, reported_at = excluded.reported_at"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q
                .bind(d.host_id.clone())
                .bind(d.repo.clone())
                .bind(d.digest.clone())
                .bind(d.state.clone())
                .bind(d.message.clone())
                .bind(d.attach_point.clone())
                .bind(d.reported_at);
        }
        q.execute(&mut *tx).await?;
    }
    let mut trim: Vec<(String, i64)> = Vec::new();
    let mut entries = Vec::with_capacity(rows.len());
    for d in rows {
        let seq = next.entry(d.host_id.clone()).or_insert(0);
        *seq += 1;
        if *seq % 16 == 0 {
            trim.push((d.host_id.clone(), *seq - HISTORY_PER_HOST));
        }
        entries.push((*seq, d));
    }
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let values = placeholder_rows(chunk.len(), 8);
        let sql = format!(
            "INSERT INTO deployment_history
               (host_id, seq, repo, digest, state, message, attach_point, reported_at)
             VALUES {values}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (seq, d) in chunk {
            q = q
                .bind(d.host_id.clone())
                .bind(*seq)
                .bind(d.repo.clone())
                .bind(d.digest.clone())
                .bind(d.state.clone())
                .bind(d.message.clone())
                .bind(d.attach_point.clone())
                .bind(d.reported_at);
        }
        q.execute(&mut *tx).await?;
    }
    for (host, below) in trim {
        sqlx::query("DELETE FROM deployment_history WHERE host_id = $1 AND seq <= $2")
            .bind(host)
            .bind(below)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
