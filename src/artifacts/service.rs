//! The service behind the REST facade: stores decoded artifacts as OCI
//! objects (layer, config, manifest, tag, and an index when a version has
//! several architectures), host associations as referrer manifests, and
//! answers reads from the index and the blob store. Every operation on an
//! existing artifact takes its resolved [`ArtifactKey`] (repository and
//! digest): which copy an id means is decided before the service is
//! called, and never again here. The create path lives in `create`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::build::{self, Platform, EMPTY_JSON};
use super::index::ArtifactIndex;
use super::list::{self, ListQuery};
use super::memory::CreateMemoryBudget;
use super::model::{ArtifactJson, ArtifactKey, ArtifactRecord, HostId};
use super::payload::PayloadLimits;
use super::ArtifactError;
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::{BlobRead, ByteRange, Registry, RegistryError};
use crate::signing::SigningService;

pub use create::CreateSettings;

mod create;

const LOCK_STRIPES: usize = 64;

pub struct ArtifactService {
    registry: Arc<Registry>,
    index: Arc<ArtifactIndex>,
    max_artifact_bytes: u64,
    payload_limits: PayloadLimits,
    spool_dir: PathBuf,
    memory: CreateMemoryBudget,
    /// Serializes creates/deletes per repository (striped by name hash), so
    /// two posts of one version cannot both build an index.
    locks: Vec<tokio::sync::Mutex<()>>,
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
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
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
    pub fn copies(&self, digest: &Digest) -> Vec<Arc<ArtifactRecord>> {
        self.index.copies(digest)
    }

    fn lock_for(&self, repo: &RepoName) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        repo.hash(&mut h);
        let i = (h.finish() as usize) % LOCK_STRIPES;
        &self.locks[i]
    }

    fn json(&self, r: &ArtifactRecord) -> ArtifactJson {
        let mut j = r.to_json(
            self.index
                .hosts_of(&r.key())
                .into_iter()
                .map(|h| h.to_string())
                .collect(),
        );
        j.signature = self
            .signing
            .as_ref()
            .and_then(|s| s.summary(&r.repo, &r.id));
        j
    }

    fn record(&self, key: &ArtifactKey) -> Result<Arc<ArtifactRecord>, ArtifactError> {
        self.index.get(key).ok_or_else(|| not_found(key))
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

    async fn resolve_optional(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, ArtifactError> {
        match self
            .registry
            .resolve(repo, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(d) => Ok(Some(d)),
            Err(RegistryError::ManifestUnknown(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Points `tag` at an image index of the given per-platform manifests.
    async fn put_version_index(
        &self,
        repo: &RepoName,
        tag: &Tag,
        children: &[Platform],
    ) -> Result<(), ArtifactError> {
        let bytes = build::version_index(children)?;
        self.store_manifest(repo, &Reference::Tag(tag.clone()), media::OCI_INDEX, bytes)
            .await
    }

    /// Stores the association manifest in the artifact's repository.
    /// Returns false when it already existed.
    async fn associate(&self, rec: &ArtifactRecord, host: &HostId) -> Result<bool, ArtifactError> {
        if self.index.association(&rec.key(), host).is_some() {
            return Ok(false);
        }
        let repo = &rec.repo;
        // Kept from garbage collection until the manifest references it.
        let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
        self.registry
            .put_small_blob(repo, Bytes::from_static(EMPTY_JSON))
            .await?;
        let subject_size = self.registry.manifest_bytes(&rec.id).await?.len() as u64;
        let bytes = build::association_manifest(&rec.id, subject_size, host)?;
        let digest = Digest::of(&bytes);
        self.registry
            .put_manifest(
                repo,
                &Reference::Digest(digest),
                Some(media::OCI_MANIFEST),
                bytes,
            )
            .await?;
        Ok(true)
    }

    /// `GET /artifacts/{id}`.
    pub fn get(&self, key: &ArtifactKey) -> Result<ArtifactJson, ArtifactError> {
        Ok(self.json(&*self.record(key)?))
    }

    /// `GET /artifacts/{id}/binary`: the layer, streamed, with its digest
    /// and download name.
    pub async fn binary(
        &self,
        key: &ArtifactKey,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Digest, String), ArtifactError> {
        let rec = self.record(key)?;
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
    pub fn binary_etag(&self, key: &ArtifactKey) -> Result<Digest, ArtifactError> {
        Ok(self.record(key)?.layer_digest.clone())
    }

    /// `POST /artifacts/{id}/hosts`.
    pub async fn add_host(
        &self,
        key: &ArtifactKey,
        host: &HostId,
    ) -> Result<Created<Vec<String>>, ArtifactError> {
        let rec = self.record(key)?;
        let created = self.associate(&rec, host).await?;
        Ok(Created {
            value: self.hosts(key)?,
            created,
        })
    }

    /// `DELETE /artifacts/{id}/hosts/{host_id}`.
    pub async fn remove_host(&self, key: &ArtifactKey, host: &HostId) -> Result<(), ArtifactError> {
        let rec = self.record(key)?;
        let assoc = self.index.association(key, host).ok_or_else(|| {
            ArtifactError::NotFound(format!("association of {} with host {host}", rec.id))
        })?;
        self.registry
            .delete_manifest(&rec.repo, &Reference::Digest(assoc))
            .await?;
        Ok(())
    }

    /// `GET /artifacts/{id}/hosts`.
    pub fn hosts(&self, key: &ArtifactKey) -> Result<Vec<String>, ArtifactError> {
        self.record(key)?;
        Ok(self
            .index
            .hosts_of(key)
            .into_iter()
            .map(|h| h.to_string())
            .collect())
    }

    /// `GET /artifacts/for-host/{host_id}`, keeping only artifacts whose
    /// repository passes `visible` (what the caller may pull).
    pub fn for_host(
        &self,
        host: &HostId,
        visible: &dyn Fn(&RepoName) -> bool,
    ) -> Vec<ArtifactJson> {
        let mut recs = self.index.artifacts_for_host(host);
        recs.retain(|r| visible(&r.repo));
        recs.sort_by(|a, b| list::sort_key(a).cmp(&list::sort_key(b)));
        recs.iter().map(|r| self.json(r)).collect()
    }

    /// `GET /artifacts`: one page of the artifacts matching `q` whose
    /// repository passes `visible`, filtered before paging; and the next
    /// page's cursor.
    pub fn list(
        &self,
        q: &ListQuery,
        visible: &dyn Fn(&RepoName) -> bool,
    ) -> (Vec<ArtifactJson>, Option<String>) {
        let host_set: Option<HashSet<ArtifactKey>> = q.host.as_ref().map(|h| {
            self.index
                .artifacts_for_host(h)
                .iter()
                .map(|r| r.key())
                .collect()
        });
        let (page, next) = list::page(self.index.all(), q, host_set.as_ref(), visible);
        (page.iter().map(|r| self.json(r)).collect(), next)
    }

    /// `DELETE /artifacts/{id}`: removes the manifest from its repository
    /// with its host associations, its signatures and its tag (or its
    /// entry in the version's index). Copies in other repositories are
    /// other artifacts and stay. Blobs stay until garbage collection.
    pub async fn delete(&self, key: &ArtifactKey) -> Result<(), ArtifactError> {
        let repo = &key.repo;
        let _held = self.lock_for(repo).lock().await;
        let rec = self.record(key)?;
        for host in self.index.hosts_of(key) {
            if let Some(assoc) = self.index.association(key, &host) {
                self.delete_if_present(repo, assoc).await?;
            }
        }
        if let Ok(tag) = Tag::parse(&rec.config.version) {
            self.drop_from_version_index(repo, &tag, &rec.id).await?;
        }
        if let Some(s) = &self.signing {
            s.delete_signatures(repo, &rec.id).await?;
        }
        self.registry
            .delete_manifest(repo, &Reference::Digest(rec.id.clone()))
            .await?;
        tracing::info!(repo = %repo, id = %rec.id, "artifact deleted");
        Ok(())
    }

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

    /// When `tag` names an index holding `id`, rewrites it without `id`
    /// (or removes the tag when `id` was its last platform).
    async fn drop_from_version_index(
        &self,
        repo: &RepoName,
        tag: &Tag,
        id: &Digest,
    ) -> Result<(), ArtifactError> {
        let Some(current) = self.resolve_optional(repo, tag).await? else {
            return Ok(());
        };
        if &current == id {
            return Ok(());
        }
        let bytes = self.registry.manifest_bytes(&current).await?;
        let parsed = ParsedManifest::parse(&bytes, None).map_err(RegistryError::from)?;
        if parsed.kind != ManifestKind::Index || !parsed.manifests.iter().any(|m| &m.digest == id) {
            return Ok(());
        }
        let rest: Vec<Platform> = parsed
            .manifests
            .iter()
            .filter(|m| &m.digest != id)
            .map(|m| {
                let arch = m
                    .platform
                    .as_ref()
                    .and_then(|p| p.get("architecture"))
                    .and_then(|a| a.as_str())
                    .unwrap_or_default()
                    .to_string();
                (m.digest.clone(), m.size, arch)
            })
            .collect();
        if rest.is_empty() {
            self.registry
                .delete_manifest(repo, &Reference::Tag(tag.clone()))
                .await?;
        } else {
            self.put_version_index(repo, tag, &rest).await?;
        }
        // The old index would reference a deleted manifest.
        if let Some(s) = &self.signing {
            s.delete_signatures(repo, &current).await?;
        }
        self.delete_if_present(repo, current).await
    }
}
