//! The REST create (`POST /artifacts`): the memory budget share taken
//! before the body is read, the checks that need no payload, the one
//! payload decode on a blocking thread, then, under the repository's lock,
//! the version decision (replay, conflict, new manifest, new platform in
//! the version's index) and the writes: the layer streamed from its spool
//! file, the config, the signed manifest, the index and host associations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{internal, ArtifactService, Created};
use crate::artifacts::build::{self, Platform};
use crate::artifacts::decode::CreateArtifact;
use crate::artifacts::memory::CreateMemory;
use crate::artifacts::model::{oci_architecture, ArtifactJson, ArtifactKey, ArtifactRecord};
use crate::artifacts::payload::Layer;
use crate::artifacts::ArtifactError;
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::{reader_stream, RegistryError};

/// How REST creates are bounded (see `payload` and `memory`).
#[derive(Debug, Clone)]
pub struct CreateSettings {
    /// Decoded payload bytes (`BPF_REGISTRY_MAX_ARTIFACT_BYTES`).
    pub max_artifact_bytes: u64,
    /// The folder of payload temp files (`paths::spool_dir`), made and
    /// emptied at start-up.
    pub spool_dir: PathBuf,
    /// All creates together (`BPF_REGISTRY_CREATE_MEMORY_BUDGET`).
    pub memory_budget_bytes: u64,
    /// Longest wait for a share of it (`BPF_REGISTRY_CREATE_MEMORY_WAIT`).
    pub memory_wait: Duration,
}

impl ArtifactService {
    /// A create's share of the memory budget, for a body of `declared`
    /// bytes (`None`: not declared, the body cap is reserved). Taken before
    /// the body is buffered; 503 `server_busy` when it stays full.
    pub async fn reserve_create_memory(
        &self,
        declared: Option<u64>,
    ) -> Result<CreateMemory, ArtifactError> {
        let cap = self.max_body_bytes();
        self.memory.reserve(declared.unwrap_or(cap).min(cap)).await
    }

    /// `POST /artifacts`, for a request parsed (and authorized) by the
    /// caller: everything is written to `request.repository()`. The
    /// payload is decoded once, on a blocking thread, after the checks
    /// that need no payload; `memory` is the request's share of the
    /// budget, its payload part given back once the payload is decoded.
    pub async fn create(
        &self,
        request: CreateArtifact,
        mut memory: CreateMemory,
    ) -> Result<Created<ArtifactJson>, ArtifactError> {
        // Cheap first: a version tag naming anything but this
        // repository's artifacts is a conflict whatever the payload.
        let (repo, tag) = (request.repository(), request.tag());
        if let Some(members) = self.existing_version(repo, tag).await? {
            if members.iter().any(|m| m.record.is_none()) {
                return Err(conflict(repo, tag.as_str(), request.architecture()));
            }
        }
        let (limits, spool_dir) = (self.payload_limits, self.spool_dir.clone());
        let new = tokio::task::spawn_blocking(move || request.into_artifact(&limits, &spool_dir))
            .await
            .map_err(|e| internal(format!("payload worker failed: {e}")))??;
        memory.release_payload();

        let _held = self.lock_for(&new.repo).lock().await;
        let repo = &new.repo;
        let layer_digest = new.layer.digest().clone();
        let layer_size = new.layer.size();
        let platform_arch = oci_architecture(&new.config.architecture).to_string();
        let conflict_of_new = || conflict(&new.repo, &new.config.version, &new.config.architecture);

        // What the version tag names now decides: replay, conflict, a new
        // manifest, or a new platform in an index.
        let mut siblings: Option<Vec<Platform>> = None;
        if let Some(members) = self.existing_version(repo, &new.tag).await? {
            let mut others = Vec::new();
            for member in members {
                let Some(rec) = member.record else {
                    return Err(conflict_of_new());
                };
                let arch = oci_architecture(&rec.config.architecture).to_string();
                if arch == platform_arch {
                    if rec.layer_digest == layer_digest {
                        for h in &new.hosts {
                            self.associate(&rec, h).await?;
                        }
                        return Ok(Created {
                            value: self.json(&rec),
                            created: false,
                        });
                    }
                    return Err(conflict_of_new());
                }
                others.push((member.digest, member.size, arch));
            }
            siblings = Some(others);
        }

        let config_bytes = serde_json::to_vec(&new.config).map_err(internal)?;
        let config_digest = Digest::of(&config_bytes);
        let manifest_bytes = build::artifact_manifest(
            repo,
            &new.config,
            (&config_digest, config_bytes.len() as u64),
            (&layer_digest, layer_size),
        )?;
        let manifest_size = manifest_bytes.len() as u64;
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
        self.store_layer(repo, new.layer).await?;
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
        let key = ArtifactKey::new(repo.clone(), manifest_digest);
        let rec = self
            .index
            .get(&key)
            .ok_or_else(|| internal("artifact stored but not indexed"))?;
        for h in &new.hosts {
            self.associate(&rec, h).await?;
        }
        tracing::info!(repo = %repo, id = %key.digest, version = %new.tag, "artifact created");
        Ok(Created {
            value: self.json(&rec),
            created: true,
        })
    }

    /// The manifests the version tag names (itself, or the children of
    /// its index), each with its record when it is an artifact of `repo`.
    async fn existing_version(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Vec<VersionMember>>, ArtifactError> {
        let Some(existing) = self.resolve_optional(repo, tag).await? else {
            return Ok(None);
        };
        let bytes = self.registry.manifest_bytes(&existing).await?;
        let parsed = ParsedManifest::parse(&bytes, None).map_err(RegistryError::from)?;
        let members: Vec<(Digest, u64)> = match parsed.kind {
            ManifestKind::Image => vec![(existing, bytes.len() as u64)],
            ManifestKind::Index => parsed
                .manifests
                .iter()
                .map(|d| (d.digest.clone(), d.size))
                .collect(),
        };
        Ok(Some(
            members
                .into_iter()
                .map(|(digest, size)| VersionMember {
                    record: self
                        .index
                        .get(&ArtifactKey::new(repo.clone(), digest.clone())),
                    digest,
                    size,
                })
                .collect(),
        ))
    }

    /// Streams a spooled layer into `repo`'s blobs, or only links it when
    /// the store already holds it (its grace period restarts either way).
    async fn store_layer(&self, repo: &RepoName, layer: Layer) -> Result<(), ArtifactError> {
        let digest = layer.digest().clone();
        match self.registry.link_blob(repo, &digest).await {
            Ok(()) => return Ok(()),
            Err(RegistryError::BlobUnknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let size = layer.size();
        let reader = layer.into_reader().map_err(internal)?;
        let body = Box::pin(reader_stream(Box::new(reader), size));
        match self.registry.upload_monolithic(repo, &digest, body).await {
            Ok(_) => Ok(()),
            // The "body" is our own spool file and digest: a failure to
            // read it or a mismatch is a fault here, never the client's.
            Err(e @ (RegistryError::Body(_) | RegistryError::DigestMismatch { .. })) => {
                Err(internal(format!("storing the spooled layer: {e}")))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// One manifest a version tag names.
struct VersionMember {
    digest: Digest,
    size: u64,
    record: Option<Arc<ArtifactRecord>>,
}

fn conflict(repo: &RepoName, version: &str, architecture: &str) -> ArtifactError {
    ArtifactError::VersionExists {
        name: repo.to_string(),
        version: version.to_string(),
        architecture: architecture.to_string(),
    }
}
