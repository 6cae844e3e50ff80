//! Host-selector associations of REST artifacts (adding, listing and
//! removing them: each is a referrer manifest in the artifact's
//! repository, see `build::selector_manifest`) and the records a fleet
//! view names by key.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArtifactService, Created};
use crate::artifacts::build::{self, EMPTY_JSON};
use crate::artifacts::model::{ArtifactJson, ArtifactKey, ArtifactRecord};
use crate::artifacts::ArtifactError;
use crate::metadata::SelectorRow;
use crate::oci::{media, Digest, Reference, RepoName, Tag};
use crate::registry::RegistryError;

/// Selectors one artifact may have: each costs every resolution a match.
pub const MAX_SELECTORS_PER_ARTIFACT: usize = 100;

impl ArtifactService {
    /// `POST /artifacts/{id}/selectors`: `selector` is the validated
    /// selector text. The same selector and channel again is the existing
    /// one (not created).
    pub async fn add_selector(
        &self,
        key: &ArtifactKey,
        selector: &str,
        channel: Option<&Tag>,
    ) -> Result<Created<SelectorRow>, ArtifactError> {
        let held = self.hold(&key.repo).await?;
        let rec = self.record(key).await?;
        let channel = channel.map(|c| c.to_string());
        let bytes =
            build::selector_manifest(&rec.id, rec.manifest_size, selector, channel.as_deref())?;
        let digest = Digest::of(&bytes);
        let existing = self.selectors(key).await?;
        if let Some(row) = existing.iter().find(|r| r.digest == digest.to_string()) {
            return Ok(Created {
                value: row.clone(),
                created: false,
            });
        }
        if existing.len() >= MAX_SELECTORS_PER_ARTIFACT {
            return Err(ArtifactError::InvalidRequest(format!(
                "artifact {} has {MAX_SELECTORS_PER_ARTIFACT} selectors, the most it may have",
                rec.id
            )));
        }
        let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
        self.registry
            .put_small_blob(&key.repo, Bytes::from_static(EMPTY_JSON))
            .await?;
        self.registry
            .put_manifests(
                &key.repo,
                vec![(
                    Reference::Digest(digest.clone()),
                    media::OCI_MANIFEST,
                    bytes,
                )],
            )
            .await?;
        drop(held);
        Ok(Created {
            value: SelectorRow {
                repo: key.repo.to_string(),
                digest: digest.to_string(),
                subject: rec.id.to_string(),
                selector: selector.to_string(),
                channel,
            },
            created: true,
        })
    }

    /// `GET /artifacts/{id}/selectors`.
    pub async fn selectors(&self, key: &ArtifactKey) -> Result<Vec<SelectorRow>, ArtifactError> {
        self.record(key).await?;
        Ok(self
            .index
            .metadata()
            .selectors_of(key.repo.as_str(), &key.digest.to_string())
            .await
            .map_err(RegistryError::from)?)
    }

    /// `DELETE /artifacts/{id}/selectors/{selector_id}`; `false` when the
    /// artifact has no such selector.
    pub async fn remove_selector(
        &self,
        key: &ArtifactKey,
        selector_id: &Digest,
    ) -> Result<bool, ArtifactError> {
        let known = self
            .selectors(key)
            .await?
            .iter()
            .any(|r| r.digest == selector_id.to_string());
        if !known {
            return Ok(false);
        }
        self.registry
            .delete_manifest(&key.repo, &Reference::Digest(selector_id.clone()))
            .await?;
        Ok(true)
    }

    /// The artifacts of `keys` that exist, each with its JSON, in no
    /// particular order: what `GET /artifacts/for-host/{host_id}` lists
    /// (three queries per 200 keys: rows, hosts, signatures).
    pub async fn entries_of(
        &self,
        keys: &[ArtifactKey],
    ) -> Result<Vec<(Arc<ArtifactRecord>, ArtifactJson)>, ArtifactError> {
        let pairs: Vec<(RepoName, Digest)> = keys
            .iter()
            .map(|k| (k.repo.clone(), k.digest.clone()))
            .collect();
        let recs = self.index.get_many(&pairs).await?;
        let json = self.json_many(&recs).await?;
        Ok(recs.into_iter().zip(json).collect())
    }

    /// The record a key names, if it is an artifact.
    pub async fn record_of(
        &self,
        key: &ArtifactKey,
    ) -> Result<Option<Arc<ArtifactRecord>>, ArtifactError> {
        Ok(self.index.get(key).await?)
    }
}
