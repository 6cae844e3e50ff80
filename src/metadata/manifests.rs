//! Queries of the OCI metadata: repositories, manifests (with their media
//! type and referrer descriptor), tags, blob links, references.

use crate::metadata::WriteTx;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::changes::{repo_scope, Scopes};
use super::derived::{self, DerivedRow};
use super::outbox;
use super::{digest_col, repo_col, unix_now, Metadata, MetadataError, MetadataResult};
use crate::oci::{Descriptor, Digest, Reference, RepoName, Tag};

/// A manifest linked into a repository, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub digest: Digest,
    /// The type it is served with in this repository.
    pub media_type: String,
    pub size: u64,
    /// Unix seconds when it was first linked into this repository.
    pub linked_at: i64,
}

/// Everything one manifest PUT writes, in one transaction.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    pub repo: RepoName,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// For a referrer: its subject and its descriptor (JSON) as the
    /// referrers API lists it.
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub descriptor: Option<String>,
    /// Blobs it references (config, layers): each must be linked into the
    /// repository.
    pub blobs: Vec<Digest>,
    /// Index children with their stated sizes: each must be a manifest of
    /// the repository of exactly that size.
    pub children: Vec<(Digest, u64)>,
    pub tag: Option<Tag>,
    pub derived: Vec<DerivedRow>,
}

/// Why a manifest PUT changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRejected {
    BlobUnknown(Digest),
    ChildUnknown(Digest),
    ChildSize {
        digest: Digest,
        stated: u64,
        actual: u64,
    },
}

/// One page of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    pub items: Vec<String>,
    /// Set when more follow: the `last` of the next request.
    pub next_last: Option<String>,
}

/// A row when `$2` is reachable from repository `$1`.
const REACHABLE: &str = "SELECT 1 FROM blob_links WHERE repo = $1 AND digest = $2
     UNION ALL SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2";

fn manifest_row(r: &AnyRow) -> MetadataResult<ManifestRow> {
    Ok(ManifestRow {
        digest: digest_col(&r.try_get::<String, _>(0)?)?,
        media_type: r.try_get(1)?,
        size: r.try_get::<i64, _>(2)? as u64,
        linked_at: r.try_get(3)?,
    })
}

/// Creates the repository row if it is missing.
pub(super) async fn ensure_repo(tx: &mut WriteTx<'_>, repo: &RepoName) -> MetadataResult<()> {
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(repo.to_string())
    .bind(unix_now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Metadata {
    /// The manifest a tag or digest names in `repo`.
    pub async fn resolve(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> MetadataResult<Option<ManifestRow>> {
        let row = match reference {
            Reference::Tag(t) => {
                sqlx::query(
                    "SELECT m.digest, m.media_type, m.size, m.linked_at FROM tags t
                     JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest
                     WHERE t.repo = $1 AND t.tag = $2",
                )
                .bind(repo.to_string())
                .bind(t.to_string())
                .fetch_optional(self.pool())
                .await?
            }
            Reference::Digest(d) => {
                sqlx::query(
                    "SELECT digest, media_type, size, linked_at FROM manifests
                     WHERE repo = $1 AND digest = $2",
                )
                .bind(repo.to_string())
                .bind(d.to_string())
                .fetch_optional(self.pool())
                .await?
            }
        };
        row.as_ref().map(manifest_row).transpose()
    }

    /// Stores a manifest's rows: checks its references, links it, records
    /// its derived rows and moves its tag, in one transaction that also
    /// holds the repository's write lock.
    pub async fn put_manifest(&self, put: &ManifestPut) -> MetadataResult<Result<(), PutRejected>> {
        self.put_manifests(&put.repo, std::slice::from_ref(put))
            .await
    }

    /// Stores several manifests of `repo` in one transaction: all, or
    /// (the first refusal returned) none.
    pub async fn put_manifests(
        &self,
        repo: &RepoName,
        puts: &[ManifestPut],
    ) -> MetadataResult<Result<(), PutRejected>> {
        self.put_manifests_linking(repo, &[], puts).await
    }

    /// [`put_manifests`](Self::put_manifests), linking `links` (blobs the
    /// caller stored and keeps from garbage collection) into `repo` in the
    /// same transaction, before the manifests' checks: a REST create's
    /// layer, config and manifest become visible with one commit.
    pub async fn put_manifests_linking(
        &self,
        repo: &RepoName,
        links: &[Digest],
        puts: &[ManifestPut],
    ) -> MetadataResult<Result<(), PutRejected>> {
        let mut tx = self.begin_repo_write(repo.as_str()).await?;
        if !links.is_empty() {
            ensure_repo(&mut tx, repo).await?;
            let now = unix_now();
            for d in links {
                sqlx::query(
                    "INSERT INTO blob_links (repo, digest, linked_at) VALUES ($1, $2, $3)
                     ON CONFLICT (repo, digest) DO NOTHING",
                )
                .bind(repo.to_string())
                .bind(d.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut scopes = Scopes::default();
        scopes.add(repo_scope(repo.as_str()));
        for put in puts {
            if put.repo != *repo {
                return Err(MetadataError::Corrupt(format!(
                    "a batch of {repo} holds a manifest of {}",
                    put.repo
                )));
            }
            if let Err(refused) = put_in(&mut tx, put, self.outbox.as_deref(), &mut scopes).await? {
                return Ok(Err(refused));
            }
        }
        self.commit_with_changes(tx, &scopes).await?;
        self.events_committed();
        Ok(Ok(()))
    }
}

/// One manifest's rows, in the caller's transaction.
async fn put_in(
    tx: &mut WriteTx<'_>,
    put: &ManifestPut,
    outbox: Option<&outbox::OutboxSettings>,
    scopes: &mut Scopes,
) -> MetadataResult<Result<(), PutRejected>> {
    {
        let repo = put.repo.to_string();
        for b in &put.blobs {
            let linked = sqlx::query(REACHABLE)
                .bind(repo.clone())
                .bind(b.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            if linked.is_none() {
                return Ok(Err(PutRejected::BlobUnknown(b.clone())));
            }
        }
        for (child, stated) in &put.children {
            let row = sqlx::query("SELECT size FROM manifests WHERE repo = $1 AND digest = $2")
                .bind(repo.clone())
                .bind(child.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                None => return Ok(Err(PutRejected::ChildUnknown(child.clone()))),
                Some(r) => {
                    let actual = r.try_get::<i64, _>(0)? as u64;
                    if actual != *stated {
                        return Ok(Err(PutRejected::ChildSize {
                            digest: child.clone(),
                            stated: *stated,
                            actual,
                        }));
                    }
                }
            }
        }
        if let Some(o) = outbox {
            outbox::record_put(tx, o, put).await?;
        }
        ensure_repo(tx, &put.repo).await?;
        let digest = put.digest.to_string();
        // Stored again: keeps the time it was first linked; a push of the
        // same bytes with another Content-Type changes the served type.
        sqlx::query(
            "INSERT INTO manifests
               (repo, digest, media_type, size, subject, artifact_type, descriptor, linked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (repo, digest) DO UPDATE SET media_type = excluded.media_type",
        )
        .bind(repo.clone())
        .bind(digest.clone())
        .bind(put.media_type.clone())
        .bind(put.size as i64)
        .bind(put.subject.as_ref().map(|d| d.to_string()))
        .bind(put.artifact_type.clone())
        .bind(put.descriptor.clone())
        .bind(unix_now())
        .execute(&mut **tx)
        .await?;
        let targets = put.blobs.iter().chain(put.children.iter().map(|(d, _)| d));
        for t in targets {
            sqlx::query(
                "INSERT INTO manifest_refs (repo, manifest, target) VALUES ($1, $2, $3)
                 ON CONFLICT (repo, manifest, target) DO NOTHING",
            )
            .bind(repo.clone())
            .bind(digest.clone())
            .bind(t.to_string())
            .execute(&mut **tx)
            .await?;
        }
        for row in &put.derived {
            derived::insert(tx, &put.repo, &put.digest, row, scopes).await?;
        }
        if let Some(tag) = &put.tag {
            sqlx::query(
                "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repo, tag) DO UPDATE
                 SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(repo.clone())
            .bind(tag.to_string())
            .bind(digest.clone())
            .bind(unix_now())
            .execute(&mut **tx)
            .await?;
        }
        Ok(Ok(()))
    }
}

impl Metadata {
    /// Deletes a tag; `false` if it did not exist.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> MetadataResult<bool> {
        let mut tx = self.begin_repo_write(&repo.to_string()).await?;
        if let Some(o) = &self.outbox {
            outbox::record_tag_delete(&mut tx, o, repo, tag).await?;
        }
        let done = sqlx::query("DELETE FROM tags WHERE repo = $1 AND tag = $2")
            .bind(repo.to_string())
            .bind(tag.to_string())
            .execute(&mut *tx)
            .await?;
        let mut scopes = Scopes::default();
        scopes.add(repo_scope(repo.as_str()));
        self.commit_with_changes(tx, &scopes).await?;
        self.events_committed();
        Ok(done.rows_affected() > 0)
    }

    /// Deletes manifests of `repo` with their tags, references and derived
    /// rows, in one transaction; returns those that were linked, in the
    /// order given (each once).
    pub async fn delete_manifests(
        &self,
        repo: &RepoName,
        digests: &[Digest],
    ) -> MetadataResult<Vec<Digest>> {
        let r = repo.to_string();
        let mut tx = self.begin_repo_write(&r).await?;
        let mut scopes = Scopes::default();
        scopes.add(repo_scope(&r));
        let mut deleted = Vec::new();
        for d in digests {
            if deleted.contains(d) {
                continue;
            }
            let text = d.to_string();
            let gone = sqlx::query("DELETE FROM manifests WHERE repo = $1 AND digest = $2")
                .bind(r.clone())
                .bind(text.clone())
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() == 0 {
                continue;
            }
            if let Some(o) = &self.outbox {
                outbox::record_delete(&mut tx, o, repo, d).await?;
            }
            for statement in [
                "DELETE FROM tags WHERE repo = $1 AND digest = $2",
                "DELETE FROM manifest_refs WHERE repo = $1 AND manifest = $2",
            ] {
                sqlx::query(statement)
                    .bind(r.clone())
                    .bind(text.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            derived::delete(&mut tx, &r, &text, &mut scopes).await?;
            deleted.push(d.clone());
        }
        self.commit_with_changes(tx, &scopes).await?;
        self.events_committed();
        Ok(deleted)
    }

    /// Whether a repository exists (anything was ever linked into it).
    pub async fn repo_exists(&self, repo: &RepoName) -> MetadataResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repo.to_string())
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }

    /// Tags of a repository in lexical order, after `last`, at most `n`.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> MetadataResult<TagPage> {
        // One more than asked: whether another page follows.
        let limit = n.map_or(i64::MAX, |n| (n as i64).saturating_add(1));
        let rows =
            sqlx::query("SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3")
                .bind(repo.to_string())
                .bind(last.unwrap_or("").to_string())
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
        let mut items = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        let next_last = match n {
            Some(n) if items.len() > n => {
                items.truncate(n);
                items.last().cloned()
            }
            _ => None,
        };
        Ok(TagPage { items, next_last })
    }

    /// Every tag of a repository and the digest it names.
    pub async fn tag_map(&self, repo: &RepoName) -> MetadataResult<Vec<(Tag, Digest)>> {
        let rows = sqlx::query("SELECT tag, digest FROM tags WHERE repo = $1 ORDER BY tag")
            .bind(repo.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let tag: String = r.try_get(0)?;
                let tag =
                    Tag::parse(&tag).map_err(|_| MetadataError::Corrupt(format!("tag {tag:?}")))?;
                Ok((tag, digest_col(&r.try_get::<String, _>(1)?)?))
            })
            .collect()
    }

    /// Referrers of `subject` in `repo` (optionally of one artifactType),
    /// ordered by digest.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> MetadataResult<Vec<Descriptor>> {
        let rows = sqlx::query(
            "SELECT descriptor FROM manifests
             WHERE repo = $1 AND subject = $2 AND ($3 = '' OR artifact_type = $3)
             ORDER BY digest",
        )
        .bind(repo.to_string())
        .bind(subject.to_string())
        .bind(artifact_type.unwrap_or("").to_string())
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(json): Option<String> = r.try_get(0)? else {
                continue;
            };
            let d: Descriptor = serde_json::from_str(&json)
                .map_err(|e| MetadataError::Corrupt(format!("referrer descriptor: {e}")))?;
            out.push(d);
        }
        Ok(out)
    }

    /// Every repository, sorted.
    pub async fn repositories(&self) -> MetadataResult<Vec<RepoName>> {
        let rows = sqlx::query("SELECT name FROM repositories ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| repo_col(&r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Up to `limit` repositories after `after`, in name order.
    pub async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> MetadataResult<Vec<RepoName>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT {limit}"
        )))
        .bind(after.unwrap_or_default().to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| repo_col(&r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Every manifest linked into `repo`.
    pub async fn manifests_of(&self, repo: &RepoName) -> MetadataResult<Vec<ManifestRow>> {
        let rows = sqlx::query(
            "SELECT digest, media_type, size, linked_at FROM manifests WHERE repo = $1
             ORDER BY digest",
        )
        .bind(repo.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(manifest_row).collect()
    }

    /// Whether `digest` is reachable from `repo`: linked as a blob, or a
    /// manifest of it.
    pub async fn reachable(&self, repo: &RepoName, digest: &Digest) -> MetadataResult<bool> {
        Ok(sqlx::query(REACHABLE)
            .bind(repo.to_string())
            .bind(digest.to_string())
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }

    /// Links a blob into a repository if `still_stored` (run inside the
    /// write transaction, so after any collector batch that could delete
    /// the bytes and before any later one) says its bytes are there and
    /// restarts their grace period; `false`, and no link, if not.
    pub async fn link_blob<F, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        still_stored: F,
    ) -> Result<bool, E>
    where
        F: AsyncFnOnce() -> Result<bool, E>,
        E: From<MetadataError>,
    {
        let sql = |e: sqlx::Error| E::from(MetadataError::Sql(e));
        let mut tx = self.begin_write().await?;
        if !still_stored().await? {
            return Ok(false);
        }
        ensure_repo(&mut tx, repo).await?;
        sqlx::query(
            "INSERT INTO blob_links (repo, digest, linked_at) VALUES ($1, $2, $3)
             ON CONFLICT (repo, digest) DO NOTHING",
        )
        .bind(repo.to_string())
        .bind(digest.to_string())
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(sql)?;
        tx.commit().await.map_err(sql)?;
        Ok(true)
    }

    /// Unlinks a blob from a repository; `false` if it was not linked.
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> MetadataResult<bool> {
        let done = sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
            .bind(repo.to_string())
            .bind(digest.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The repositories `digest` is reachable from, sorted.
    pub async fn blob_holders(&self, digest: &Digest) -> MetadataResult<Vec<RepoName>> {
        let rows = sqlx::query(
            "SELECT repo FROM blob_links WHERE digest = $1
             UNION SELECT repo FROM manifests WHERE digest = $1 ORDER BY repo",
        )
        .bind(digest.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| repo_col(&r.try_get::<String, _>(0)?))
            .collect()
    }
}

impl Metadata {
    /// Sets when a manifest was first linked into `repo` (an import keeps
    /// the older version's order of copies).
    pub async fn set_linked_at(
        &self,
        repo: &RepoName,
        digest: &Digest,
        linked_at: i64,
    ) -> MetadataResult<()> {
        let mut tx = self.begin_write().await?;
        for statement in [
            "UPDATE manifests SET linked_at = $1 WHERE repo = $2 AND digest = $3",
            "UPDATE artifacts SET linked_at = $1 WHERE repo = $2 AND digest = $3",
        ] {
            sqlx::query(statement)
                .bind(linked_at)
                .bind(repo.to_string())
                .bind(digest.to_string())
                .execute(&mut *tx)
                .await?;
        }
        // The for-host entries are cached per repository counter.
        let mut scopes = Scopes::default();
        scopes.add(repo_scope(repo.as_str()));
        self.commit_with_changes(tx, &scopes).await?;
        Ok(())
    }
}
