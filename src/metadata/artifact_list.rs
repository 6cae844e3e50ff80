//! The queries behind `GET /artifacts` and the artifact JSON: a filtered,
//! keyset-paged listing in the order of its cursor (repository, version,
//! architecture, digest; byte-wise on both engines, over the
//! `artifacts_listing` index), and the host and signature rows of a whole
//! page in one query each, not two per artifact.

use std::collections::HashMap;

use sqlx::Row;

use super::derived::{artifact_row, ArtifactRow, SignatureRow, ARTIFACT_COLUMNS};
use super::schema::bytewise;
use super::{digest_col, Metadata, MetadataResult};
use crate::oci::{Digest, RepoName};

/// The equality filters of a listing; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    pub repo: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub architecture: Option<String>,
    /// Each `(facet, value)` must be among the artifact's facets.
    pub facets: Vec<(String, String)>,
    /// Associated with this host (in the artifact's repository).
    pub host: Option<String>,
}

/// A position in the listing order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListingKey {
    pub repo: String,
    pub version: String,
    pub architecture: String,
    pub digest: String,
}

/// (repository, digest) of an artifact, as text.
pub type RowKey = (String, String);

/// How many `(repo, digest)` pairs go into one `OR` chain.
const KEYS_PER_QUERY: usize = 200;

impl Metadata {
    /// Up to `limit` artifacts matching `f`, after `after` in the listing
    /// order, each with its position.
    pub async fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        after: Option<&ListingKey>,
        limit: u32,
    ) -> MetadataResult<Vec<(ListingKey, ArtifactRow)>> {
        let c = bytewise(self.engine());
        let mut conds: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let arg = |binds: &mut Vec<String>, v: &str| {
            binds.push(v.to_string());
            format!("${}", binds.len())
        };
        for (column, value) in [
            ("a.repo", &f.repo),
            ("a.version", &f.version),
            ("a.kind", &f.kind),
            ("a.architecture", &f.architecture),
        ] {
            if let Some(v) = value {
                let p = arg(&mut binds, v);
                conds.push(format!("{column} = {p}"));
            }
        }
        for (facet, value) in &f.facets {
            let (pf, pv) = (arg(&mut binds, facet), arg(&mut binds, value));
            conds.push(format!(
                "EXISTS (SELECT 1 FROM artifact_facets x WHERE x.repo = a.repo
                   AND x.digest = a.digest AND x.facet = {pf} AND x.value = {pv})"
            ));
        }
        if let Some(h) = &f.host {
            let p = arg(&mut binds, h);
            conds.push(format!(
                "EXISTS (SELECT 1 FROM host_associations h WHERE h.repo = a.repo
                   AND h.subject = a.digest AND h.host = {p})"
            ));
        }
        if let Some(k) = after {
            let (r, v) = (arg(&mut binds, &k.repo), arg(&mut binds, &k.version));
            let (ar, d) = (arg(&mut binds, &k.architecture), arg(&mut binds, &k.digest));
            conds.push(format!(
                "(a.repo, a.version{c}, a.architecture{c}, a.digest) > ({r}, {v}, {ar}, {d})"
            ));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {ARTIFACT_COLUMNS}, a.version, a.architecture FROM artifacts a {filter}
             ORDER BY a.repo, a.version{c}, a.architecture{c}, a.digest LIMIT {limit}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let row = artifact_row(r)?;
                let key = ListingKey {
                    repo: row.repo.to_string(),
                    version: r.try_get(4)?,
                    architecture: r.try_get(5)?,
                    digest: row.digest.to_string(),
                };
                Ok((key, row))
            })
            .collect()
    }

    /// The hosts associated with each of `keys`, sorted, by key.
    pub async fn hosts_of_many(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> MetadataResult<HashMap<RowKey, Vec<String>>> {
        let mut out: HashMap<RowKey, Vec<String>> = HashMap::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT DISTINCT repo, subject, host FROM host_associations WHERE {}
                 ORDER BY repo, subject, host",
                pairs("repo", "subject", chunk.len())
            );
            let rows = bind_pairs(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                .fetch_all(self.pool())
                .await?;
            for r in &rows {
                out.entry((r.try_get(0)?, r.try_get(1)?))
                    .or_default()
                    .push(r.try_get(2)?);
            }
        }
        Ok(out)
    }

    /// The artifact rows of `keys` that exist, in no particular order:
    /// one primary-key lookup per key, 200 keys per query.
    pub async fn artifacts_of_many(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> MetadataResult<Vec<ArtifactRow>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE {}",
                pairs("a.repo", "a.digest", chunk.len())
            );
            let rows = bind_pairs(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                .fetch_all(self.pool())
                .await?;
            for r in &rows {
                out.push(artifact_row(r)?);
            }
        }
        Ok(out)
    }

    /// The signature rows of each of `keys`, oldest first, by key.
    pub async fn signatures_of_many(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> MetadataResult<HashMap<RowKey, Vec<SignatureRow>>> {
        let mut out: HashMap<RowKey, Vec<SignatureRow>> = HashMap::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT repo, subject, digest, key_id, key_version, algorithm, created
                 FROM signatures WHERE {} ORDER BY repo, subject, stored_at, digest",
                pairs("repo", "subject", chunk.len())
            );
            let rows = bind_pairs(sqlx::query(sqlx::AssertSqlSafe(sql)), chunk)
                .fetch_all(self.pool())
                .await?;
            for r in &rows {
                let subject = digest_col(&r.try_get::<String, _>(1)?)?;
                let row = SignatureRow {
                    digest: Some(digest_col(&r.try_get::<String, _>(2)?)?),
                    subject,
                    key_id: r.try_get(3)?,
                    key_version: r
                        .try_get::<Option<i64>, _>(4)?
                        .and_then(|v| u32::try_from(v).ok()),
                    algorithm: r.try_get(5)?,
                    created: r.try_get(6)?,
                };
                out.entry((r.try_get(0)?, r.try_get(1)?))
                    .or_default()
                    .push(row);
            }
        }
        Ok(out)
    }

    /// Up to `limit` artifact rows after `after` in (repository, digest)
    /// order: a walk over every artifact in bounded batches.
    pub async fn artifacts_after(
        &self,
        after: Option<&RowKey>,
        limit: u32,
    ) -> MetadataResult<Vec<ArtifactRow>> {
        let (repo, digest) = after.cloned().unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE (a.repo, a.digest) > ($1, $2)
             ORDER BY a.repo, a.digest LIMIT {limit}"
        )))
        .bind(repo)
        .bind(digest)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(artifact_row).collect()
    }

    /// Sets the facets of a batch of artifacts, in one transaction (rows
    /// of artifacts deleted meanwhile are skipped).
    pub async fn set_artifact_facets(
        &self,
        batch: &[(RowKey, Vec<(String, String)>)],
    ) -> MetadataResult<()> {
        let mut tx = self.begin_write().await?;
        for ((repo, digest), facets) in batch {
            let exists = sqlx::query("SELECT 1 FROM artifacts WHERE repo = $1 AND digest = $2")
                .bind(repo.clone())
                .bind(digest.clone())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if exists {
                super::derived::replace_facets(&mut tx, repo, digest, facets).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// `(a = $1 AND b = $2) OR (a = $3 AND b = $4) ...` for `n` pairs.
fn pairs(a: &str, b: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("({a} = ${} AND {b} = ${})", 2 * i + 1, 2 * i + 2))
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn bind_pairs<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    keys: &[(RepoName, Digest)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for (repo, digest) in keys {
        q = q.bind(repo.to_string()).bind(digest.to_string());
    }
    q
}
