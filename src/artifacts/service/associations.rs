//! Host associations of REST artifacts: adding (bounded by the host cap,
//! written concurrently), removing and listing them. An association is a
//! referrer manifest in the artifact's repository (see `build`).

use bytes::Bytes;

use super::{ArtifactService, Created};
use crate::artifacts::build::{self, EMPTY_JSON};
use crate::artifacts::limits::{Limit, MAX_HOSTS};
use crate::artifacts::model::{ArtifactKey, ArtifactRecord, HostId};
use crate::artifacts::ArtifactError;
use crate::oci::{media, Digest, Reference};

impl ArtifactService {
    /// Associates the artifact with every host of `hosts` it is not yet
    /// associated with; returns how many were new. Refused, with nothing
    /// written, when the artifact would have more than [`MAX_HOSTS`]. The
    /// empty blob is stored once, the subject's size comes from the index,
    /// and the association manifests are written concurrently.
    pub(super) async fn associate_all(
        &self,
        rec: &ArtifactRecord,
        hosts: &[HostId],
        channel: Option<&str>,
    ) -> Result<usize, ArtifactError> {
        if hosts.is_empty() {
            return Ok(0);
        }
        let key = rec.key();
        let existing: std::collections::HashSet<HostId> =
            self.index.hosts_of(&key).await?.into_iter().collect();
        let missing: Vec<&HostId> = hosts.iter().filter(|h| !existing.contains(*h)).collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let total = existing.len().saturating_add(missing.len());
        if total > MAX_HOSTS {
            return Err(Limit::Hosts.refusal(MAX_HOSTS as u64, Some(total as u64)));
        }
        let repo = &rec.repo;
        // Kept from garbage collection until the manifests reference it.
        let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
        self.registry
            .put_small_blob(repo, Bytes::from_static(EMPTY_JSON))
            .await?;
        // One transaction for all of them: every association, or none.
        let mut batch = Vec::with_capacity(missing.len());
        for host in &missing {
            let bytes = build::association_manifest(&rec.id, rec.manifest_size, host, channel)?;
            batch.push((
                Reference::Digest(Digest::of(&bytes)),
                media::OCI_MANIFEST,
                bytes,
            ));
        }
        self.registry.put_manifests(repo, batch).await?;
        Ok(missing.len())
    }

    /// `POST /artifacts/{id}/hosts`, optionally following a channel of the
    /// repository. An association of the host with another channel (or
    /// none) is replaced: the new one is stored before the old one goes,
    /// so the host is never unassigned in between.
    pub async fn add_host(
        &self,
        key: &ArtifactKey,
        host: &HostId,
        channel: Option<&crate::oci::Tag>,
    ) -> Result<Created<Vec<String>>, ArtifactError> {
        // Under the repository's lock: the host cap holds against
        // concurrent adds.
        let held = self.hold(&key.repo).await?;
        let rec = self.record(key).await?;
        let channel = channel.map(|c| c.to_string());
        let mut created = false;
        match self.index.association(key, host).await? {
            None => {
                created = self
                    .associate_all(&rec, std::slice::from_ref(host), channel.as_deref())
                    .await?
                    > 0;
            }
            Some(old) => {
                let old_channel = self
                    .index
                    .metadata()
                    .association_channel(key.repo.as_str(), &old.to_string())
                    .await
                    .map_err(crate::registry::RegistryError::from)?;
                if old_channel != channel {
                    let bytes = build::association_manifest(
                        &rec.id,
                        rec.manifest_size,
                        host,
                        channel.as_deref(),
                    )?;
                    let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
                    self.registry
                        .put_small_blob(&key.repo, Bytes::from_static(EMPTY_JSON))
                        .await?;
                    let new = Digest::of(&bytes);
                    self.registry
                        .put_manifests(
                            &key.repo,
                            vec![(Reference::Digest(new), media::OCI_MANIFEST, bytes)],
                        )
                        .await?;
                    self.registry
                        .delete_manifest(&key.repo, &Reference::Digest(old))
                        .await?;
                    created = true;
                }
            }
        }
        drop(held);
        Ok(Created {
            value: self.hosts(key).await?,
            created,
        })
    }

    /// `DELETE /artifacts/{id}/hosts/{host_id}`.
    pub async fn remove_host(&self, key: &ArtifactKey, host: &HostId) -> Result<(), ArtifactError> {
        let rec = self.record(key).await?;
        let assoc = self.index.association(key, host).await?.ok_or_else(|| {
            ArtifactError::NotFound(format!("association of {} with host {host}", rec.id))
        })?;
        self.registry
            .delete_manifest(&rec.repo, &Reference::Digest(assoc))
            .await?;
        Ok(())
    }

    /// `GET /artifacts/{id}/hosts`.
    pub async fn hosts(&self, key: &ArtifactKey) -> Result<Vec<String>, ArtifactError> {
        self.record(key).await?;
        Ok(self
            .index
            .hosts_of(key)
            .await?
            .into_iter()
            .map(|h| h.to_string())
            .collect())
    }

    /// The association manifests of an artifact (an artifact delete takes
    /// them in its one transaction).
    pub(super) async fn association_digests(
        &self,
        key: &ArtifactKey,
    ) -> Result<Vec<Digest>, ArtifactError> {
        Ok(self
            .index
            .associations(key)
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }
}
