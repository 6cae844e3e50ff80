//! The service behind the REST facade: stores decoded artifacts as OCI
//! objects (layer, config, manifest, tag, and an index when a version has
//! several architectures), host associations as referrer manifests, and
//! answers reads from the index and the blob store. Every operation on an
//! existing artifact takes its resolved [`ArtifactKey`] (repository and
//! digest): which copy an id means is decided before the service is
//! called, and never again here.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::build::{self, Platform, EMPTY_JSON};
use super::decode::NewArtifact;
use super::index::ArtifactIndex;
use super::limits::{Limit, MAX_HOSTS};
use super::list::{self, ListQuery};
use super::model::{oci_architecture, ArtifactJson, ArtifactKey, ArtifactRecord, HostId};
use super::ArtifactError;
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::{BlobRead, ByteRange, Registry, RegistryError};
use crate::signing::SigningService;

const LOCK_STRIPES: usize = 64;

/// Association manifests written (or deleted) at once for one request:
/// each is a few small files, each fsynced, so the time of many is the
/// device's flush latency shared, not summed.
const ASSOCIATION_WRITES_IN_FLIGHT: usize = 32;

pub struct ArtifactService {
    registry: Arc<Registry>,
    index: Arc<ArtifactIndex>,
    max_artifact_bytes: u64,
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
        max_artifact_bytes: u64,
    ) -> Self {
        ArtifactService {
            registry,
            index,
            max_artifact_bytes,
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

    /// `POST /artifacts`, for a request decoded (and authorized) by the
    /// caller: everything is written to `new.repository()`.
    pub async fn create(&self, new: NewArtifact) -> Result<Created<ArtifactJson>, ArtifactError> {
        let _held = self.lock_for(&new.repo).lock().await;
        let repo = &new.repo;
        let layer_digest = Digest::of(&new.layer);
        let platform_arch = oci_architecture(&new.config.architecture).to_string();

        // What the version tag already names decides: replay, conflict,
        // a new manifest, or a new platform in an index.
        let (siblings, stale_index) = match self
            .version_state(&new, &layer_digest, &platform_arch)
            .await?
        {
            VersionState::Replay(rec) => {
                self.associate_all(&rec, &new.hosts).await?;
                return Ok(Created {
                    value: self.json(&rec),
                    created: false,
                });
            }
            VersionState::New { siblings, stale } => (siblings, stale),
        };

        let layer_size = new.layer.len() as u64;
        let config_bytes = build::config_blob(&new.config)?;
        let config_digest = Digest::of(&config_bytes);
        let manifest_bytes = build::artifact_manifest(
            repo,
            &new.config,
            (&config_digest, config_bytes.len() as u64),
            (&layer_digest, layer_size),
        )?;
        let manifest_size = manifest_bytes.len() as u64;
        let max_manifest = self.registry.limits().max_manifest_bytes;
        if manifest_size > max_manifest {
            return Err(Limit::Manifest.refusal(max_manifest, Some(manifest_size)));
        }
        let manifest_digest = Digest::of(&manifest_bytes);
        let manifest_ref = match siblings {
            None => Reference::Tag(new.tag.clone()),
            Some(_) => Reference::Digest(manifest_digest.clone()),
        };
        // With a signer, the manifest is signed before anything is written:
        // when signing fails nothing is stored (503 `signing_unavailable`).
        let signed = match &self.signing {
            Some(s) => {
                s.prepare(
                    repo,
                    &manifest_ref,
                    Some(media::OCI_MANIFEST),
                    &manifest_bytes,
                )
                .await?
            }
            None => None,
        };
        // Kept from garbage collection until the manifest references them.
        let _pin = self
            .registry
            .pin_for_gc(vec![layer_digest.clone(), config_digest.clone()]);
        self.registry
            .put_small_blob(repo, Bytes::from(new.layer))
            .await?;
        self.registry
            .put_small_blob(repo, Bytes::from(config_bytes))
            .await?;
        match &self.signing {
            Some(s) => {
                s.put_prepared(
                    signed,
                    repo,
                    &manifest_ref,
                    Some(media::OCI_MANIFEST),
                    manifest_bytes,
                )
                .await?;
            }
            None => {
                self.registry
                    .put_manifest(
                        repo,
                        &manifest_ref,
                        Some(media::OCI_MANIFEST),
                        manifest_bytes,
                    )
                    .await?;
            }
        }
        if let Some(mut others) = siblings {
            others.push((manifest_digest.clone(), manifest_size, platform_arch));
            if let Err(e) = self.put_version_index(repo, &new.tag, &others).await {
                // Not under the version tag: take the new manifest back
                // out so nothing half-created stays visible.
                if let Some(s) = &self.signing {
                    let _ = s.delete_signatures(repo, &manifest_digest).await;
                }
                let _ = self
                    .registry
                    .delete_manifest(repo, &Reference::Digest(manifest_digest.clone()))
                    .await;
                return Err(e);
            }
        }
        if let Some(stale) = stale_index {
            self.remove_replaced_index(repo, stale).await?;
        }
        let key = ArtifactKey::new(repo.clone(), manifest_digest);
        let rec = self
            .index
            .get(&key)
            .ok_or_else(|| internal("artifact stored but not indexed"))?;
        self.associate_all(&rec, &new.hosts).await?;
        tracing::info!(repo = %repo, id = %key.digest, version = %new.tag, "artifact created");
        Ok(Created {
            value: self.json(&rec),
            created: true,
        })
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

    /// What the version tag names for a create of `new` (whose layer and
    /// OCI architecture are given). A platform of an index that is no
    /// longer linked (deleted through OCI by digest) counts as absent: the
    /// tag is then rewritten without it, and the old index removed.
    async fn version_state(
        &self,
        new: &NewArtifact,
        layer_digest: &Digest,
        platform_arch: &str,
    ) -> Result<VersionState, ArtifactError> {
        let repo = &new.repo;
        let Some(existing) = self.resolve_optional(repo, &new.tag).await? else {
            return Ok(VersionState::New {
                siblings: None,
                stale: None,
            });
        };
        let bytes = self.registry.manifest_bytes(&existing).await?;
        let parsed = ParsedManifest::parse(&bytes, None).map_err(RegistryError::from)?;
        let candidates: Vec<(Digest, u64)> = match parsed.kind {
            ManifestKind::Image => vec![(existing.clone(), bytes.len() as u64)],
            ManifestKind::Index => parsed
                .manifests
                .iter()
                .map(|d| (d.digest.clone(), d.size))
                .collect(),
        };
        let mut others = Vec::new();
        let mut dead_children = false;
        for (d, size) in candidates {
            let Some(rec) = self.index.get(&ArtifactKey::new(repo.clone(), d.clone())) else {
                if d != existing && !self.is_linked(repo, &d).await? {
                    dead_children = true;
                    continue;
                }
                return Err(conflict(new));
            };
            let arch = oci_architecture(&rec.config.architecture).to_string();
            if arch == platform_arch {
                if &rec.layer_digest == layer_digest {
                    return Ok(VersionState::Replay(rec));
                }
                return Err(conflict(new));
            }
            others.push((d, size, arch));
        }
        Ok(VersionState::New {
            siblings: (!others.is_empty()).then_some(others),
            stale: dead_children.then_some(existing),
        })
    }

    /// Whether a manifest is linked into `repo`.
    async fn is_linked(&self, repo: &RepoName, d: &Digest) -> Result<bool, ArtifactError> {
        match self
            .registry
            .resolve(repo, &Reference::Digest(d.clone()))
            .await
        {
            Ok(_) => Ok(true),
            Err(RegistryError::ManifestUnknown(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a version index the tag no longer names (with its
    /// signatures): it would reference a deleted manifest.
    async fn remove_replaced_index(
        &self,
        repo: &RepoName,
        index: Digest,
    ) -> Result<(), ArtifactError> {
        if let Some(s) = &self.signing {
            s.delete_signatures(repo, &index).await?;
        }
        self.delete_if_present(repo, index).await
    }

    /// Associates the artifact with every host of `hosts` it is not yet
    /// associated with; returns how many were new. Refused, with nothing
    /// written, when the artifact would have more than [`MAX_HOSTS`]. The
    /// empty blob is stored once, the subject's size comes from the index,
    /// and the association manifests are written concurrently.
    async fn associate_all(
        &self,
        rec: &ArtifactRecord,
        hosts: &[HostId],
    ) -> Result<usize, ArtifactError> {
        let key = rec.key();
        let missing: Vec<&HostId> = hosts
            .iter()
            .filter(|h| self.index.association(&key, h).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let total = self
            .index
            .hosts_of(&key)
            .len()
            .saturating_add(missing.len());
        if total > MAX_HOSTS {
            return Err(Limit::Hosts.refusal(MAX_HOSTS as u64, Some(total as u64)));
        }
        let repo = &rec.repo;
        // Kept from garbage collection until the manifests reference it.
        let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
        self.registry
            .put_small_blob(repo, Bytes::from_static(EMPTY_JSON))
            .await?;
        let writes: Vec<_> = missing
            .iter()
            .map(|host| self.put_association(rec, host))
            .collect();
        all_of(writes).await?;
        Ok(missing.len())
    }

    /// Stores one association manifest (the empty blob is already there).
    async fn put_association(
        &self,
        rec: &ArtifactRecord,
        host: &HostId,
    ) -> Result<(), ArtifactError> {
        let bytes = build::association_manifest(&rec.id, rec.manifest_size, host)?;
        let digest = Digest::of(&bytes);
        self.registry
            .put_manifest(
                &rec.repo,
                &Reference::Digest(digest),
                Some(media::OCI_MANIFEST),
                bytes,
            )
            .await?;
        Ok(())
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
        // Under the repository's lock: the host cap holds against
        // concurrent adds.
        let held = self.lock_for(&key.repo).lock().await;
        let rec = self.record(key)?;
        let created = self.associate_all(&rec, std::slice::from_ref(host)).await? > 0;
        drop(held);
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
        let associations: Vec<Digest> = self
            .index
            .hosts_of(key)
            .iter()
            .filter_map(|host| self.index.association(key, host))
            .collect();
        let deletes: Vec<_> = associations
            .into_iter()
            .map(|assoc| self.delete_if_present(repo, assoc))
            .collect();
        all_of(deletes).await?;
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
        // The other platforms still linked: one deleted through OCI by
        // digest is left out, not written back as a dangling entry.
        let mut rest: Vec<Platform> = Vec::new();
        for m in parsed.manifests.iter().filter(|m| &m.digest != id) {
            if !self.is_linked(repo, &m.digest).await? {
                continue;
            }
            let arch = m
                .platform
                .as_ref()
                .and_then(|p| p.get("architecture"))
                .and_then(|a| a.as_str())
                .unwrap_or_default()
                .to_string();
            rest.push((m.digest.clone(), m.size, arch));
        }
        if rest.is_empty() {
            self.registry
                .delete_manifest(repo, &Reference::Tag(tag.clone()))
                .await?;
        } else {
            self.put_version_index(repo, tag, &rest).await?;
        }
        // The old index would reference a deleted manifest.
        self.remove_replaced_index(repo, current).await
    }
}

/// What a version tag names, for a create of one platform.
enum VersionState {
    /// That platform with the same layer: a replay.
    Replay(Arc<ArtifactRecord>),
    /// A new manifest: under the tag (`siblings` is `None`), or by digest
    /// with the tag rewritten as the index of `siblings` and it. `stale`
    /// is the index the tag named when it listed deleted manifests: it is
    /// removed once the tag has moved.
    New {
        siblings: Option<Vec<Platform>>,
        stale: Option<Digest>,
    },
}

/// Runs association writes [`ASSOCIATION_WRITES_IN_FLIGHT`] at a time.
/// Every one runs to its end (none is cut off between the store and the
/// index), then the first failure is reported.
async fn all_of<F>(writes: Vec<F>) -> Result<(), ArtifactError>
where
    F: std::future::Future<Output = Result<(), ArtifactError>>,
{
    let results: Vec<Result<(), ArtifactError>> = futures_util::stream::iter(writes)
        .buffer_unordered(ASSOCIATION_WRITES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

fn conflict(new: &NewArtifact) -> ArtifactError {
    ArtifactError::VersionExists {
        name: new.repo.to_string(),
        version: new.config.version.clone(),
        architecture: new.config.architecture.clone(),
    }
}
