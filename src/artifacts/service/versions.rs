//! The version tag of a REST artifact: what it names for a create
//! (nothing, a replay, a conflict, other platforms), the image index of a
//! version with several platforms, and rewriting that index when a
//! platform is deleted. A platform deleted through OCI by digest (the
//! index left naming a missing manifest) counts as absent everywhere
//! here: a REST delete of another platform and a re-post of that one both
//! rewrite the index from the platforms still linked, and the old index
//! is removed.

use std::sync::Arc;

use super::ArtifactService;
use crate::artifacts::build::{self, Platform};
use crate::artifacts::decode::NewArtifact;
use crate::artifacts::model::{oci_architecture, ArtifactKey, ArtifactRecord};
use crate::artifacts::ArtifactError;
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::RegistryError;

/// What a version tag names, for a create of one platform.
pub(super) enum VersionState {
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

impl ArtifactService {
    /// The manifest `tag` names in `repo`, if any.
    pub(super) async fn resolve_optional(
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
    pub(super) async fn put_version_index(
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
    pub(super) async fn version_state(
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
            let Some(rec) = self
                .index
                .get(&ArtifactKey::new(repo.clone(), d.clone()))
                .await?
            else {
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

    /// The check of a create that needs no payload: whether `tag` names a
    /// manifest of `repo` that is not one of its artifacts (or an index
    /// holding one), which makes any create of that version a conflict.
    /// Children deleted through OCI count as absent, as in
    /// `version_state`.
    pub(super) async fn held_by_foreign(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<bool, ArtifactError> {
        let Some(existing) = self.resolve_optional(repo, tag).await? else {
            return Ok(false);
        };
        let bytes = self.registry.manifest_bytes(&existing).await?;
        let parsed = ParsedManifest::parse(&bytes, None).map_err(RegistryError::from)?;
        let members: Vec<Digest> = match parsed.kind {
            ManifestKind::Image => vec![existing.clone()],
            ManifestKind::Index => parsed.manifests.iter().map(|d| d.digest.clone()).collect(),
        };
        for d in members {
            if self
                .index
                .get(&ArtifactKey::new(repo.clone(), d.clone()))
                .await?
                .is_some()
            {
                continue;
            }
            if d != existing && !self.is_linked(repo, &d).await? {
                continue;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a manifest is linked into `repo`.
    pub(super) async fn is_linked(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<bool, ArtifactError> {
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
    pub(super) async fn remove_replaced_index(
        &self,
        repo: &RepoName,
        index: Digest,
    ) -> Result<(), ArtifactError> {
        if let Some(s) = &self.signing {
            s.delete_signatures(repo, &index).await?;
        }
        self.delete_if_present(repo, index).await
    }

    /// When `tag` names an index holding `id`, rewrites it without `id`
    /// (or removes the tag when `id` was its last platform).
    pub(super) async fn drop_from_version_index(
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

pub(super) fn conflict(new: &NewArtifact) -> ArtifactError {
    ArtifactError::VersionExists {
        name: new.repo.to_string(),
        version: new.config.version.clone(),
        architecture: new.config.architecture.clone(),
    }
}
