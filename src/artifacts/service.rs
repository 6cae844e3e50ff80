//! The service behind the REST facade: stores decoded artifacts as OCI
//! objects (layer, config, manifest, tag, and an index when a version has
//! several architectures), host associations as referrer manifests, and
//! answers reads from the index and the blob store. Every operation on an
//! existing artifact takes its resolved [`ArtifactKey`] (repository and
//! digest): which copy an id means is decided before the service is
//! called, and never again here. The create path lives in `create`, the
//! version tag and its index in `versions`, host associations in
//! `associations`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::build;
use super::index::ArtifactIndex;
use super::list::{self, ListQuery};
use super::memory::CreateMemoryBudget;
use super::model::{ArtifactJson, ArtifactKey, ArtifactRecord};
use super::payload::PayloadLimits;
use super::ArtifactError;
use crate::keyed_locks::{KeyedLockGuard, KeyedLocks};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::registry::{BlobRead, ByteRange, Registry, RegistryError};
use crate::signing::SigningService;

/// See [`ArtifactService::hold`]; released in field order (the lease
/// first).
pub struct RepoHold {
    _lease: crate::metadata::Lease,
    _local: KeyedLockGuard<RepoName>,
}

/// Rows read per query while a listing skips what the caller may not see.
const LIST_BATCH: usize = 256;

pub use create::CreateSettings;

mod associations;
mod create;
mod selectors;
mod versions;

pub struct ArtifactService {
    registry: Arc<Registry>,
    index: Arc<ArtifactIndex>,
    max_artifact_bytes: u64,
    payload_limits: PayloadLimits,
    spool_dir: PathBuf,
    memory: CreateMemoryBudget,
    /// Serializes creates/deletes per repository, so two posts of one
    /// version cannot both build an index.
    locks: KeyedLocks<RepoName>,
    /// Signs artifact manifests before they are stored (see `signing`).
    signing: Option<Arc<SigningService>>,
}

/// Result of a create or an association: `created` is false when the
/// request matched what already existed (idempotent replay).
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

fn internal(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Internal(e.to_string())
}

fn not_found(key: &ArtifactKey) -> ArtifactError {
    ArtifactError::NotFound(key.digest.to_string())
}

impl ArtifactService {
    pub fn new(
        registry: Arc<Registry>,
        index: Arc<ArtifactIndex>,
        settings: CreateSettings,
    ) -> Self {
        ArtifactService {
            registry,
            index,
            max_artifact_bytes: settings.max_artifact_bytes,
            payload_limits: PayloadLimits::for_artifact_cap(settings.max_artifact_bytes),
            spool_dir: settings.spool_dir,
            memory: CreateMemoryBudget::new(settings.memory_budget_bytes, settings.memory_wait),
            locks: KeyedLocks::default(),
            signing: None,
        }
    }

    /// Stores artifact manifests through `signing` (signed first, fail
    /// closed) and reports their signatures in the artifact JSON.
    pub fn with_signing(mut self, signing: Arc<SigningService>) -> Self {
        self.signing = Some(signing);
        self
    }

    pub fn index(&self) -> &Arc<ArtifactIndex> {
        &self.index
    }

    /// How many artifacts and host associations there are now (for the
    /// metrics scrape: two count queries).
    pub async fn counts(&self) -> Result<(u64, u64), ArtifactError> {
        Ok(self.index.counts().await?)
    }

    pub fn max_artifact_bytes(&self) -> u64 {
        self.max_artifact_bytes
    }

    /// The largest JSON body `POST /artifacts` accepts: the base64 of the
    /// largest payload plus room for the other fields.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_artifact_bytes
            .div_ceil(3)
            .saturating_mul(4)
            .saturating_add(1024 * 1024)
    }

    /// Every copy of a manifest that is an artifact, the first linked
    /// first: what a REST id can mean.
    pub async fn copies(&self, digest: &Digest) -> Result<Vec<Arc<ArtifactRecord>>, ArtifactError> {
        Ok(self.index.copies(digest).await?)
    }

    /// Held while a write checks and then changes a repository's
    /// artifacts (a version's platforms, the host cap): the in-process
    /// lock, then the repository's lease across replicas (PostgreSQL),
    /// so two replicas never both pass a check the other's write breaks.
    pub async fn hold(&self, repo: &RepoName) -> Result<RepoHold, ArtifactError> {
        let local = self.locks.lock(repo).await;
        let lease = self
            .registry
            .metadata()
            .lease(&format!("artifacts:{repo}"))
            .await
            .map_err(RegistryError::from)?;
        Ok(RepoHold {
            _lease: lease,
            _local: local,
        })
    }

    async fn json(&self, r: &ArtifactRecord) -> Result<ArtifactJson, ArtifactError> {
        let hosts = self.index.hosts_of(&r.key()).await?;
        let mut j = r.to_json(hosts.into_iter().map(|h| h.to_string()).collect());
        j.signature = match &self.signing {
            Some(s) => s.summary(&r.repo, &r.id).await?,
            None => None,
        };
        Ok(j)
    }

    /// The JSON of many artifacts, with two queries per 200 artifacts
    /// (hosts, signatures) rather than two per artifact.
    pub(super) async fn json_many(
        &self,
        recs: &[Arc<ArtifactRecord>],
    ) -> Result<Vec<ArtifactJson>, ArtifactError> {
        let keys: Vec<(RepoName, Digest)> = recs
            .iter()
            .map(|r| (r.repo.clone(), r.id.clone()))
            .collect();
        let mut hosts = self.index.hosts_of_many(&keys).await?;
        let mut signatures = match &self.signing {
            Some(s) => s.summaries(&keys).await?,
            None => Default::default(),
        };
        Ok(recs
            .iter()
            .map(|r| {
                let hosts = hosts
                    .remove(&(r.repo.to_string(), r.id.to_string()))
                    .unwrap_or_default();
                let mut j = r.to_json(hosts);
                j.signature = signatures.remove(&(r.repo.clone(), r.id.clone()));
                j
            })
            .collect())
    }

    async fn record(&self, key: &ArtifactKey) -> Result<Arc<ArtifactRecord>, ArtifactError> {
        self.index.get(key).await?.ok_or_else(|| not_found(key))
    }

    /// A manifest PUT, through the signing service when there is one.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<(), ArtifactError> {
        match &self.signing {
            Some(s) => {
                s.put_manifest(repo, reference, Some(content_type), bytes)
                    .await?;
            }
            None => {
                self.registry
                    .put_manifest(repo, reference, Some(content_type), bytes)
                    .await?;
            }
        }
        Ok(())
    }

    /// `GET /artifacts/{id}`.
    pub async fn get(&self, key: &ArtifactKey) -> Result<ArtifactJson, ArtifactError> {
        let rec = self.record(key).await?;
        self.json(&rec).await
    }

    /// `GET /artifacts/{id}/binary`: the layer, streamed, with its digest
    /// and download name.
    pub async fn binary(
        &self,
        key: &ArtifactKey,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Digest, String), ArtifactError> {
        let rec = self.record(key).await?;
        let blob = self
            .registry
            .read_blob_unchecked(&rec.layer_digest, range)
            .await?;
        Ok((
            blob,
            rec.layer_digest.clone(),
            build::download_name(&rec.repo, &rec.config.version),
        ))
    }

    /// The layer digest, without opening the blob (for conditional
    /// requests).
    pub async fn binary_etag(&self, key: &ArtifactKey) -> Result<Digest, ArtifactError> {
        Ok(self.record(key).await?.layer_digest.clone())
    }

    /// `GET /artifacts`: one page of the artifacts matching `q` whose
    /// repository passes `visible`, filtered before paging; and the next
    /// page's cursor.
    pub async fn list(
        &self,
        q: &ListQuery,
        visible: &(dyn Fn(&RepoName) -> bool + Sync),
    ) -> Result<(Vec<ArtifactJson>, Option<String>), ArtifactError> {
        let filter = q.filter();
        let mut after = q.cursor.as_ref().map(|c| c.key());
        // One more than a page tells whether another page follows; rows
        // the caller may not see are skipped batch by batch (memory stays
        // bounded by the batch, whatever the store holds).
        let batch = u32::try_from(q.limit.saturating_add(1).max(LIST_BATCH)).unwrap_or(u32::MAX);
        let mut found: Vec<Arc<ArtifactRecord>> = Vec::new();
        'batches: loop {
            let rows = self.index.page(&filter, after.as_ref(), batch).await?;
            let n = rows.len();
            for (key, rec) in rows {
                after = Some(key);
                if visible(&rec.repo) && q.matches(&rec) {
                    found.push(rec);
                    if found.len() > q.limit {
                        break 'batches;
                    }
                }
            }
            if n < batch as usize {
                break;
            }
        }
        let more = found.len() > q.limit;
        found.truncate(q.limit);
        let next = match (more, found.last()) {
            (true, Some(last)) => Some(list::Cursor::of(last).encode()),
            _ => None,
        };
        Ok((self.json_many(&found).await?, next))
    }

    /// `DELETE /artifacts/{id}`: removes the manifest from its repository
    /// with its host associations, its signatures and its tag (or its
    /// entry in the version's index). Copies in other repositories are
    /// other artifacts and stay. Blobs stay until garbage collection.
    pub async fn delete(&self, key: &ArtifactKey) -> Result<(), ArtifactError> {
        let repo = &key.repo;
        let _held = self.hold(repo).await?;
        let rec = self.record(key).await?;
        if let Ok(tag) = Tag::parse(&rec.config.version) {
            self.drop_from_version_index(repo, &tag, &rec.id).await?;
        }
        if let Some(s) = &self.signing {
            s.delete_signatures(repo, &rec.id).await?;
        }
        // The host associations and the manifest go in one transaction: a
        // delete answered with an error never took the associations alone.
        let mut gone = self.association_digests(key).await?;
        gone.push(rec.id.clone());
        let deleted = self.registry.delete_manifests(repo, &gone).await?;
        if !deleted.contains(&rec.id) {
            return Err(ArtifactError::NotFound(key.digest.to_string()));
        }
        tracing::info!(repo = %repo, id = %rec.id, "artifact deleted");
        Ok(())
    }

    /// Deletes a manifest by digest; one already gone is no error.
    async fn delete_if_present(&self, repo: &RepoName, d: Digest) -> Result<(), ArtifactError> {
        match self
            .registry
            .delete_manifest(repo, &Reference::Digest(d))
            .await
        {
            Ok(()) | Err(RegistryError::ManifestUnknown(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
