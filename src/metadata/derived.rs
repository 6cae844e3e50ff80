//! The rows the eBPF domain derives from manifests (artifacts, host
//! associations, signatures), written in the transaction of the manifest
//! they come from and deleted with it, and the queries the REST API's
//! views are made of. Every key is (repository, manifest digest): a copy
//! in another repository is another artifact, and a referrer counts only
//! for the subject in its own repository.

use crate::metadata::WriteTx;
use sqlx::Row;

use super::changes::{host_scope, Scopes, SELECTORS};
use super::{digest_col, repo_col, unix_now, Metadata, MetadataResult};
use crate::oci::{Digest, RepoName};

/// What a manifest means to the eBPF domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivedRow {
    /// An artifact: indexed columns and the whole record (JSON, owned by
    /// the artifacts module).
    Artifact {
        name: String,
        version: String,
        kind: String,
        architecture: String,
        /// The multi-valued filters (`("tag", t)`, `("kernel_version", k)`).
        facets: Vec<(String, String)>,
        record: String,
    },
    /// A host-association referrer of `subject`; with a channel, the host
    /// follows that channel of the repository.
    HostAssociation {
        subject: Digest,
        host: String,
        channel: Option<String>,
    },
    /// A host-selector referrer of `subject`.
    Selector {
        subject: Digest,
        selector: String,
        channel: Option<String>,
    },
    /// A cosign signature manifest of `subject`.
    Signature(SignatureRow),
}

/// A signature manifest as the views need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRow {
    /// The signature manifest itself (filled when read back).
    pub digest: Option<Digest>,
    pub subject: Digest,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub algorithm: Option<String>,
    pub created: Option<String>,
}

/// An artifact row read back.
#[derive(Debug, Clone)]
pub struct ArtifactRow {
    pub repo: RepoName,
    pub digest: Digest,
    pub record: String,
    pub linked_at: i64,
}

pub(super) async fn insert(
    tx: &mut WriteTx<'_>,
    repo: &RepoName,
    digest: &Digest,
    row: &DerivedRow,
    scopes: &mut Scopes,
) -> MetadataResult<()> {
    let (repo, digest) = (repo.to_string(), digest.to_string());
    match row {
        DerivedRow::Artifact {
            name,
            version,
            kind,
            architecture,
            facets,
            record,
        } => {
            // Stored again: keeps the time it was first linked.
            sqlx::query(
                "INSERT INTO artifacts
                   (repo, digest, name, version, kind, architecture, linked_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (repo, digest) DO UPDATE SET record = excluded.record",
            )
            .bind(repo.clone())
            .bind(digest.clone())
            .bind(name.clone())
            .bind(version.clone())
            .bind(kind.clone())
            .bind(architecture.clone())
            .bind(unix_now())
            .bind(record.clone())
            .execute(&mut **tx)
            .await?;
            replace_facets(tx, &repo, &digest, facets).await?;
        }
        DerivedRow::HostAssociation {
            subject,
            host,
            channel,
        } => {
            sqlx::query(
                "INSERT INTO host_associations (repo, digest, subject, host) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repo, digest) DO NOTHING",
            )
            .bind(repo.clone())
            .bind(digest.clone())
            .bind(subject.to_string())
            .bind(host.clone())
            .execute(&mut **tx)
            .await?;
            if let Some(channel) = channel {
                sqlx::query(
                    "INSERT INTO association_channels (repo, digest, channel) VALUES ($1, $2, $3)
                     ON CONFLICT (repo, digest) DO NOTHING",
                )
                .bind(repo)
                .bind(digest)
                .bind(channel.clone())
                .execute(&mut **tx)
                .await?;
            }
            scopes.add(host_scope(host));
        }
        DerivedRow::Selector {
            subject,
            selector,
            channel,
        } => {
            sqlx::query(
                "INSERT INTO host_selectors (repo, digest, subject, selector, channel)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (repo, digest) DO NOTHING",
            )
            .bind(repo)
            .bind(digest)
            .bind(subject.to_string())
            .bind(selector.clone())
            .bind(channel.clone())
            .execute(&mut **tx)
            .await?;
            scopes.add(SELECTORS.to_string());
        }
        DerivedRow::Signature(s) => {
            sqlx::query(
                "INSERT INTO signatures
                   (repo, digest, subject, key_id, key_version, algorithm, created, stored_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (repo, digest) DO NOTHING",
            )
            .bind(repo)
            .bind(digest)
            .bind(s.subject.to_string())
            .bind(s.key_id.clone())
            .bind(s.key_version.map(i64::from))
            .bind(s.algorithm.clone())
            .bind(s.created.clone())
            .bind(unix_now())
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Sets the facet rows of one artifact.
pub(super) async fn replace_facets(
    tx: &mut WriteTx<'_>,
    repo: &str,
    digest: &str,
    facets: &[(String, String)],
) -> MetadataResult<()> {
    sqlx::query("DELETE FROM artifact_facets WHERE repo = $1 AND digest = $2")
        .bind(repo.to_string())
        .bind(digest.to_string())
        .execute(&mut **tx)
        .await?;
    for (facet, value) in facets {
        sqlx::query(
            "INSERT INTO artifact_facets (repo, digest, facet, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(repo.to_string())
        .bind(digest.to_string())
        .bind(facet.clone())
        .bind(value.clone())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub(super) async fn delete(
    tx: &mut WriteTx<'_>,
    repo: &str,
    digest: &str,
    scopes: &mut Scopes,
) -> MetadataResult<()> {
    let hosts =
        sqlx::query("DELETE FROM host_associations WHERE repo = $1 AND digest = $2 RETURNING host")
            .bind(repo.to_string())
            .bind(digest.to_string())
            .fetch_all(&mut **tx)
            .await?;
    for h in hosts {
        scopes.add(host_scope(&h.try_get::<String, _>(0)?));
    }
    let selectors =
        sqlx::query("DELETE FROM host_selectors WHERE repo = $1 AND digest = $2 RETURNING digest")
            .bind(repo.to_string())
            .bind(digest.to_string())
            .fetch_all(&mut **tx)
            .await?;
    if !selectors.is_empty() {
        scopes.add(SELECTORS.to_string());
    }
    for statement in [
        "DELETE FROM artifacts WHERE repo = $1 AND digest = $2",
        "DELETE FROM artifact_facets WHERE repo = $1 AND digest = $2",
        "DELETE FROM association_channels WHERE repo = $1 AND digest = $2",
        "DELETE FROM signatures WHERE repo = $1 AND digest = $2",
    ] {
        sqlx::query(statement)
            .bind(repo.to_string())
            .bind(digest.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) fn artifact_row(r: &sqlx::any::AnyRow) -> MetadataResult<ArtifactRow> {
    Ok(ArtifactRow {
        repo: repo_col(&r.try_get::<String, _>(0)?)?,
        digest: digest_col(&r.try_get::<String, _>(1)?)?,
        record: r.try_get(2)?,
        linked_at: r.try_get(3)?,
    })
}

pub(super) const ARTIFACT_COLUMNS: &str = "a.repo, a.digest, a.record, a.linked_at";

impl Metadata {
    /// One artifact.
    pub async fn artifact(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetadataResult<Option<ArtifactRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.repo = $1 AND a.digest = $2"
        )))
        .bind(repo.to_string())
        .bind(digest.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(artifact_row).transpose()
    }

    /// Every repository's copy of one manifest as an artifact, the oldest
    /// link first.
    pub async fn artifact_copies(&self, digest: &Digest) -> MetadataResult<Vec<ArtifactRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.digest = $1
             ORDER BY a.linked_at, a.repo"
        )))
        .bind(digest.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(artifact_row).collect()
    }

    /// The artifacts associated with a host (each subject in the
    /// repository of its association).
    pub async fn artifacts_for_host(&self, host: &str) -> MetadataResult<Vec<ArtifactRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT {ARTIFACT_COLUMNS} FROM host_associations h
             JOIN artifacts a ON a.repo = h.repo AND a.digest = h.subject
             WHERE h.host = $1"
        )))
        .bind(host.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(artifact_row).collect()
    }

    /// The hosts associated with an artifact, each with its association
    /// manifest (the oldest one when there are several), sorted by host.
    pub async fn hosts_of(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> MetadataResult<Vec<(String, Digest)>> {
        let rows = sqlx::query(
            "SELECT host, MIN(digest) FROM host_associations WHERE repo = $1 AND subject = $2
             GROUP BY host ORDER BY host",
        )
        .bind(repo.to_string())
        .bind(subject.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    digest_col(&r.try_get::<String, _>(1)?)?,
                ))
            })
            .collect()
    }

    /// The signature manifests of `subject` in `repo`, oldest first.
    pub async fn signatures(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> MetadataResult<Vec<SignatureRow>> {
        let rows = sqlx::query(
            "SELECT digest, key_id, key_version, algorithm, created FROM signatures
             WHERE repo = $1 AND subject = $2 ORDER BY stored_at, digest",
        )
        .bind(repo.to_string())
        .bind(subject.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SignatureRow {
                    digest: Some(digest_col(&r.try_get::<String, _>(0)?)?),
                    subject: subject.clone(),
                    key_id: r.try_get(1)?,
                    key_version: r
                        .try_get::<Option<i64>, _>(2)?
                        .and_then(|v| u32::try_from(v).ok()),
                    algorithm: r.try_get(3)?,
                    created: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// How many artifacts and host associations the store holds.
    pub async fn artifact_counts(&self) -> MetadataResult<(u64, u64)> {
        let a = sqlx::query("SELECT COUNT(*) FROM artifacts")
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        let h = sqlx::query("SELECT COUNT(*) FROM host_associations")
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        Ok((a as u64, h as u64))
    }
}
