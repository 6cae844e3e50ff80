//! The REST create (`POST /artifacts`): the memory budget share taken
//! before the body is read, the checks that need no payload, the one
//! payload decode on a blocking thread, then, under the repository's lock,
//! the version decision (replay, conflict, new manifest, new platform in
//! the version's index) and the writes: the layer streamed from its spool
//! file, the config, the signed manifest, the index and host associations.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use super::versions::VersionState;
use super::{internal, ArtifactService, Created};
use crate::artifacts::build;
use crate::artifacts::decode::CreateArtifact;
use crate::artifacts::limits::Limit;
use crate::artifacts::memory::CreateMemory;
use crate::artifacts::model::{oci_architecture, ArtifactJson, ArtifactKey};
use crate::artifacts::payload::Layer;
use crate::artifacts::ArtifactError;
use crate::oci::{media, Digest, Reference, RepoName};
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
        if self.held_by_foreign(repo, tag).await? {
            return Err(conflict(repo, tag.as_str(), request.architecture()));
        }
        let (limits, spool_dir) = (self.payload_limits, self.spool_dir.clone());
        // The budget share travels with the decode: a client that goes
        // away while it runs cannot free memory the worker still holds.
        let (new, memory) = tokio::task::spawn_blocking(move || {
            let decoded = request.into_artifact(&limits, &spool_dir);
            memory.release_payload();
            (decoded, memory)
        })
        .await
        .map_err(|e| internal(format!("payload worker failed: {e}")))?;
        let new = new?;
        let _memory = memory;

        let _held = self.hold(&new.repo).await?;
        let repo = &new.repo;
        // A channel's tag is moved by the channel API: a version of the
        // same name would be moved with it (see `fleet::service`).
        if self
            .index
            .metadata()
            .is_channel(repo.as_str(), &new.config.version)
            .await
            .map_err(RegistryError::from)?
        {
            return Err(ArtifactError::fleet(
                crate::artifacts::FleetRefusal::ChannelIsVersion,
                format!(
                    "{} is a channel of {repo}; a version cannot have its name",
                    new.config.version
                ),
            ));
        }
        let layer_digest = new.layer.digest().clone();
        let layer_size = new.layer.size();
        let platform_arch = oci_architecture(&new.config.architecture).to_string();

        // What the version tag names now decides: replay, conflict, a new
        // manifest, or a new platform in an index.
        let (siblings, stale_index) = match self
            .version_state(&new, &layer_digest, &platform_arch)
            .await?
        {
            VersionState::Replay(rec) => {
                self.associate_all(&rec, &new.hosts, None).await?;
                return Ok(Created {
                    value: self.json(&rec).await?,
                    created: false,
                });
            }
            VersionState::New { siblings, stale } => (siblings, stale),
        };

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
        if let Some(stale) = stale_index {
            self.remove_replaced_index(repo, stale).await?;
        }
        let key = ArtifactKey::new(repo.clone(), manifest_digest);
        let rec = self
            .index
            .get(&key)
            .await?
            .ok_or_else(|| internal("artifact stored but not indexed"))?;
        self.associate_all(&rec, &new.hosts, None).await?;
        tracing::info!(repo = %repo, id = %key.digest, version = %new.tag, "artifact created");
        Ok(Created {
            value: self.json(&rec).await?,
            created: true,
        })
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

fn conflict(repo: &RepoName, version: &str, architecture: &str) -> ArtifactError {
    ArtifactError::VersionExists {
        name: repo.to_string(),
        version: version.to_string(),
        architecture: architecture.to_string(),
    }
}
