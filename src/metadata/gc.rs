//! The queries of garbage collection: the mark (every digest a manifest
//! row names or references), the per-repository graph for
//! `delete_untagged`, the deletion batches with their re-checks, and the
//! lease that lets one collector run at a time across replicas.

use std::collections::HashSet;

use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};

use super::{digest_col, locks, Engine, Metadata, MetadataError, MetadataResult};
use crate::oci::{Digest, RepoName};

/// The manifests of one repository as the untagged walk needs them.
#[derive(Debug, Default)]
pub struct RepoGraph {
    /// (digest, linked_at, subject)
    pub manifests: Vec<(Digest, i64, Option<Digest>)>,
    pub tagged: Vec<Digest>,
    /// (manifest, referenced digest)
    pub refs: Vec<(Digest, Digest)>,
}

/// Held by the one collector that runs (PostgreSQL: a session advisory
/// lock on a connection of its own, closed rather than returned to the
/// pool, so the lock can never outlive the run).
pub struct CollectorLease {
    _conn: Option<PoolConnection<Any>>,
}

/// A row when `$1` is named by a manifest row or referenced by one.
const REFERENCED: &str = "SELECT 1 FROM manifests WHERE digest = $1
     UNION ALL SELECT 1 FROM manifest_refs WHERE target = $1";

impl Metadata {
    /// The collector's lease; `None` when another replica holds it.
    pub async fn collector_lease(&self) -> MetadataResult<Option<CollectorLease>> {
        if self.engine() == Engine::Sqlite {
            // One process per data directory (its lock file).
            return Ok(Some(CollectorLease { _conn: None }));
        }
        let mut conn = self.pool().acquire().await?;
        conn.close_on_drop();
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(locks::COLLECTOR)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        Ok(got.then_some(CollectorLease { _conn: Some(conn) }))
    }

    /// Every digest the metadata keeps alive: each manifest and what each
    /// references (config, layers, index children).
    pub async fn marked_digests(&self) -> MetadataResult<HashSet<Digest>> {
        let rows =
            sqlx::query("SELECT digest FROM manifests UNION SELECT target FROM manifest_refs")
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| digest_col(&r.try_get::<String, _>(0)?))
            .collect()
    }

    /// How many (repository, manifest) links there are.
    pub async fn manifest_count(&self) -> MetadataResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM manifests")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every (repository, blob) link.
    pub async fn blob_links(&self) -> MetadataResult<Vec<(RepoName, Digest)>> {
        let rows = sqlx::query("SELECT repo, digest FROM blob_links ORDER BY digest")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    super::repo_col(&r.try_get::<String, _>(0)?)?,
                    digest_col(&r.try_get::<String, _>(1)?)?,
                ))
            })
            .collect()
    }

    /// The manifests, tags and references of one repository.
    pub async fn repo_graph(&self, repo: &RepoName) -> MetadataResult<RepoGraph> {
        let r = repo.to_string();
        let mut g = RepoGraph::default();
        for row in sqlx::query("SELECT digest, linked_at, subject FROM manifests WHERE repo = $1")
            .bind(r.clone())
            .fetch_all(self.pool())
            .await?
        {
            let subject: Option<String> = row.try_get(2)?;
            g.manifests.push((
                digest_col(&row.try_get::<String, _>(0)?)?,
                row.try_get(1)?,
                subject.as_deref().map(digest_col).transpose()?,
            ));
        }
        for row in sqlx::query("SELECT digest FROM tags WHERE repo = $1")
            .bind(r.clone())
            .fetch_all(self.pool())
            .await?
        {
            g.tagged.push(digest_col(&row.try_get::<String, _>(0)?)?);
        }
        for row in sqlx::query("SELECT manifest, target FROM manifest_refs WHERE repo = $1")
            .bind(r)
            .fetch_all(self.pool())
            .await?
        {
            g.refs.push((
                digest_col(&row.try_get::<String, _>(0)?)?,
                digest_col(&row.try_get::<String, _>(1)?)?,
            ));
        }
        Ok(g)
    }

    /// One deletion batch of unreferenced blobs, in one exclusive section
    /// (no reference-making write of any replica runs inside it): each
    /// digest is re-checked (still unreferenced, and `still_deletable`: its
    /// age, writes in flight in this process), its links are deleted and
    /// that is committed, then `delete_bytes` removes the bytes. Rows
    /// first: a crash or a failed deletion in between leaves bytes no row
    /// names (swept next time), never a link to bytes that are gone. On
    /// PostgreSQL the section is the collector's lock held exclusive at
    /// session level on a connection of its own (closed, never pooled, so
    /// the lock dies with it), across both steps; on SQLite the caller's
    /// in-process exclusive lock spans them (one process per store).
    /// Returns the digests deleted and how many were skipped.
    pub async fn sweep_blobs<C, D, E>(
        &self,
        candidates: &[Digest],
        still_deletable: C,
        delete_bytes: D,
    ) -> Result<(Vec<(Digest, u64)>, u64), E>
    where
        C: Fn(&Digest) -> bool,
        D: AsyncFnOnce(Vec<Digest>) -> Result<Vec<(Digest, u64)>, E>,
        E: From<MetadataError>,
    {
        let sql = |e: sqlx::Error| E::from(MetadataError::Sql(e));
        let (doomed, skipped, _section) = match self.engine() {
            Engine::Postgres => {
                let mut conn = self.pool().acquire().await.map_err(sql)?;
                conn.close_on_drop();
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(locks::GC)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql)?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(sql)?;
                let (doomed, skipped) = unlink_unreferenced(&mut tx, candidates, &still_deletable)
                    .await
                    .map_err(sql)?;
                tx.commit().await.map_err(sql)?;
                (doomed, skipped, Some(conn))
            }
            Engine::Sqlite => {
                let mut tx = self.begin_gc_batch().await?;
                let (doomed, skipped) = unlink_unreferenced(&mut tx, candidates, &still_deletable)
                    .await
                    .map_err(sql)?;
                tx.commit().await.map_err(sql)?;
                (doomed, skipped, None)
            }
        };
        let deleted = delete_bytes(doomed).await?;
        Ok((deleted, skipped))
    }

    /// Removes links whose blob is gone (the bytes were lost or swept by
    /// an older collector); returns how many.
    pub async fn remove_blob_links(&self, links: &[(RepoName, Digest)]) -> MetadataResult<u64> {
        let mut tx = self.begin_gc_batch().await?;
        let mut n = 0;
        for (repo, d) in links {
            n += sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
                .bind(repo.to_string())
                .bind(d.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }
}

/// The candidates still unreferenced and deletable, their links deleted
/// in `conn`'s transaction; and how many were skipped.
async fn unlink_unreferenced<C: Fn(&Digest) -> bool>(
    conn: &mut sqlx::AnyConnection,
    candidates: &[Digest],
    still_deletable: &C,
) -> Result<(Vec<Digest>, u64), sqlx::Error> {
    let mut doomed = Vec::new();
    let mut skipped = 0u64;
    for d in candidates {
        let referenced = sqlx::query(REFERENCED)
            .bind(d.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if referenced || !still_deletable(d) {
            skipped += 1;
            continue;
        }
        sqlx::query("DELETE FROM blob_links WHERE digest = $1")
            .bind(d.to_string())
            .execute(&mut *conn)
            .await?;
        doomed.push(d.clone());
    }
    Ok((doomed, skipped))
}
