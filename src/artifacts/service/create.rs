//! The REST create (`POST /artifacts`): the memory budget share taken
//! before the body is read, the checks that need no payload, the one
//! payload decode on a blocking thread, the layer (from its spool file),
//! config and manifest made durable side by side before the repository's
//! hold (after signing, when there is a signer), then, under the hold, the
//! version decision (replay, conflict, new manifest, new platform in the
//! version's index) and one transaction that links the blobs and stores
//! the manifest; then the index and host associations.

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
use crate::registry::RegistryError;
use crate::storage::ObjectSource;

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
        let began = std::time::Instant::now();
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
        let decoded = began.elapsed();

        let layer_digest = new.layer.digest().clone();
        let layer_size = new.layer.size();
        let platform_arch = oci_architecture(&new.config.architecture).to_string();
        // The manifest's bytes do not depend on what the version tag names
        // (only where it is stored does), so all three blobs are built now.
        let config_bytes = Bytes::from(build::config_blob(&new.config)?);
        let config_digest = Digest::of(&config_bytes);
        let manifest_bytes = build::artifact_manifest(
            &new.repo,
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
        // Kept from garbage collection until the manifest references them.
        let _pin = self.registry.pin_for_gc(vec![
            layer_digest.clone(),
            config_digest.clone(),
            manifest_digest.clone(),
        ]);
        // Without a signer the bytes are made durable before the
        // repository's hold, side by side (no row names them until the
        // one commit below; a create refused under the hold leaves bytes
        // that garbage collection sweeps). With one, signing comes first:
        // when it fails nothing is written (503 `signing_unavailable`).
        let signs = self.signing.as_ref().is_some_and(|s| s.enabled());
        if !signs {
            self.store_blobs(&new.layer, &config_bytes, &manifest_bytes)
                .await?;
        }

        let stored = began.elapsed();
        let _held = self.hold(&new.repo).await?;
        let holding = began.elapsed();
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
        let manifest_ref = match siblings {
            None => Reference::Tag(new.tag.clone()),
            Some(_) => Reference::Digest(manifest_digest.clone()),
        };
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
        if signs {
            self.store_blobs(&new.layer, &config_bytes, &manifest_bytes)
                .await?;
        }
        match (&self.signing, signed) {
            (Some(s), Some(signed)) => {
                self.registry.link_blob(repo, &layer_digest).await?;
                self.registry.link_blob(repo, &config_digest).await?;
                s.put_prepared(
                    Some(signed),
                    repo,
                    &manifest_ref,
                    Some(media::OCI_MANIFEST),
                    manifest_bytes,
                )
                .await?;
            }
            // One transaction links the layer and the config and stores
            // the manifest (and its tag).
            _ => {
                self.registry
                    .put_manifest_linking(
                        repo,
                        &manifest_ref,
                        Some(media::OCI_MANIFEST),
                        manifest_bytes,
                        &[layer_digest.clone(), config_digest.clone()],
                    )
                    .await?;
            }
        }
        let committed = began.elapsed();
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
        drop(_held);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Where a create's time goes, from its start: the payload decoded
        // and packed, its blobs durable (without a signer), the
        // repository's hold taken, the manifest committed, all done.
        tracing::info!(repo = %repo, id = %key.digest, version = %new.tag,
            decoded_ms = ms(decoded), stored_ms = ms(stored), held_ms = ms(holding),
            committed_ms = ms(committed), total_ms = ms(began.elapsed()), "artifact created");
        let value = self.json(&rec).await?;
        Ok(Created {
            value,
            created: true,
        })
    }

    /// Makes the layer (from its spool file), the config and the manifest
    /// durable in the blob store, unlinked (see `Registry::store_unlinked`).
    async fn store_blobs(
        &self,
        layer: &Layer,
        config: &Bytes,
        manifest: &Bytes,
    ) -> Result<(), ArtifactError> {
        let (file, len) = layer.source_file().map_err(internal)?;
        self.registry
            .store_unlinked(vec![
                (layer.digest().clone(), ObjectSource::File { file, len }),
                (Digest::of(config), ObjectSource::Bytes(config.clone())),
                (Digest::of(manifest), ObjectSource::Bytes(manifest.clone())),
            ])
            .await?;
        Ok(())
    }
}

fn conflict(repo: &RepoName, version: &str, architecture: &str) -> ArtifactError {
    ArtifactError::VersionExists {
        name: repo.to_string(),
        version: version.to_string(),
        architecture: architecture.to_string(),
    }
}
