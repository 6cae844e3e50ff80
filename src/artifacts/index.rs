//! The artifact views of the REST API (artifacts, their copies, host
//! associations), answered by the metadata store, and the deriver that
//! computes their rows from every manifest stored (REST and OCI alike), in
//! the manifest's own transaction. So every replica answers the same the
//! moment a write is acknowledged, and nothing is rebuilt at start-up.
//! Every key is (repository, digest): a manifest copied into another
//! repository is another artifact, and a host-association referrer counts
//! only for the subject in its own repository (OCI referrers are per
//! repository).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::limits::MAX_CONFIG_BYTES;
use super::model::{ArtifactKey, ArtifactRecord, BpfConfig, HostId};
use crate::metadata::{ArtifactFilter, DerivedRow, ListingKey, Metadata, MetadataError};
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, RepoName};
use crate::registry::{ManifestDeriver, ManifestStored, RegistryResult};
use crate::storage::{paths, Backend};

/// Manifest annotation keys of the design.
pub mod annotations {
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const VERSION: &str = "org.opencontainers.image.version";
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
    pub const CREATED: &str = "org.opencontainers.image.created";
    pub const LICENSES: &str = "org.opencontainers.image.licenses";
    pub const AUTHORS: &str = "org.opencontainers.image.authors";
    pub const TYPE: &str = "io.aegisflux.bpf.type";
    pub const ARCHITECTURE: &str = "io.aegisflux.bpf.architecture";
    pub const KERNEL_VERSION: &str = "io.aegisflux.bpf.kernel-version";
    pub const HOST_ID: &str = "io.aegisflux.bpf.host-id";
    /// On a host association or selector: the channel the host follows.
    pub const CHANNEL: &str = "io.aegisflux.bpf.channel";
    /// On a host-selector referrer: the selector (label-selector syntax).
    pub const SELECTOR: &str = "io.aegisflux.bpf.selector";
    /// The artifact's requirements of a host, as compact JSON.
    pub const REQUIREMENTS: &str = "io.aegisflux.bpf.requirements";
}

pub struct ArtifactIndex {
    backend: Arc<dyn Backend>,
    meta: Metadata,
    /// What each id means, kept on SQLite (see `copies`).
    copies: super::copies::CopiesCache,
}

/// What a manifest means to the eBPF domain.
enum Classified {
    Artifact(Box<ArtifactRecord>),
    Association {
        host: HostId,
        subject: Digest,
        channel: Option<String>,
    },
    Selector {
        subject: Digest,
        selector: String,
        channel: Option<String>,
    },
    /// Of the domain's types but unusable: the manifest is refused.
    Refused(String),
    Other,
}

/// The part of a record kept as JSON in its row (the rest are columns).
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    manifest_size: u64,
    config: BpfConfig,
    layer_digest: Digest,
    layer_size: u64,
    layer_media_type: String,
}

/// The channel annotation of a referrer, when it is a valid tag.
fn channel_of(m: &ParsedManifest) -> Option<String> {
    let c = m.annotations.get(annotations::CHANNEL)?;
    crate::oci::Tag::parse(c).ok().map(|t| t.to_string())
}

/// Whether a manifest is one of our artifacts.
pub fn is_artifact_manifest(m: &ParsedManifest) -> bool {
    m.kind == ManifestKind::Image
        && (m.artifact_type.as_deref() == Some(media::BPF_ARTIFACT_TYPE)
            || m.config.as_ref().map(|c| c.media_type.as_str()) == Some(media::BPF_CONFIG))
}

fn record_of(row: crate::metadata::ArtifactRow) -> RegistryResult<Arc<ArtifactRecord>> {
    let stored: StoredRecord = serde_json::from_str(&row.record)
        .map_err(|e| MetadataError::Corrupt(format!("artifact record: {e}")))?;
    Ok(Arc::new(ArtifactRecord {
        id: row.digest,
        repo: row.repo,
        manifest_size: stored.manifest_size,
        config: stored.config,
        layer_digest: stored.layer_digest,
        layer_size: stored.layer_size,
        layer_media_type: stored.layer_media_type,
        linked_at: u64::try_from(row.linked_at).unwrap_or(0),
    }))
}

/// The multi-valued filters of `GET /artifacts` an artifact answers to.
fn facets_of(c: &BpfConfig) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = c
        .tags
        .iter()
        .map(|t| (FACET_TAG.to_string(), t.clone()))
        .collect();
    f.push((FACET_KERNEL_VERSION.to_string(), c.kernel_version.clone()));
    f
}

pub const FACET_TAG: &str = "tag";
pub const FACET_KERNEL_VERSION: &str = "kernel_version";

/// The `meta` key set once every artifact row has its facets (rows of a
/// version-1 schema have none).
const FACETS_FILLED: &str = "artifact_facets_filled";

/// Rows per batch when filling the facets of older rows.
const FILL_BATCH: u32 = 500;

fn records(rows: Vec<crate::metadata::ArtifactRow>) -> RegistryResult<Vec<Arc<ArtifactRecord>>> {
    rows.into_iter().map(record_of).collect()
}

impl ArtifactIndex {
    pub fn new(backend: Arc<dyn Backend>, meta: Metadata) -> Self {
        ArtifactIndex {
            backend,
            meta,
            copies: Default::default(),
        }
    }

    /// Reads the config blob; blocking, but configs are small.
    fn load_config(&self, m: &ParsedManifest) -> Option<BpfConfig> {
        let c = m.config.as_ref()?;
        if c.media_type != media::BPF_CONFIG {
            return None;
        }
        let raw = match self
            .backend
            .read_small(&paths::blob(&c.digest), MAX_CONFIG_BYTES)
        {
            Ok(raw) => raw?,
            Err(e) => {
                // Pushed through OCI (a REST create refuses it): answered
                // from the manifest's annotations instead.
                tracing::warn!(config = %c.digest, error = %e, "artifact config not read");
                return None;
            }
        };
        serde_json::from_slice(&raw).ok()
    }

    fn classify(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        m: &ParsedManifest,
    ) -> Classified {
        if m.artifact_type.as_deref() == Some(media::BPF_HOST_ASSOCIATION) {
            // Refused like a selector referrer: stored and ignored, it
            // would show in the referrers while no resolution counts it.
            let (Some(subject), Some(host)) = (&m.subject, m.annotations.get(annotations::HOST_ID))
            else {
                return Classified::Refused(format!(
                    "a {} referrer needs a subject and the annotation {}",
                    media::BPF_HOST_ASSOCIATION,
                    annotations::HOST_ID
                ));
            };
            let host = match HostId::parse(host) {
                Ok(host) => host,
                Err(e) => {
                    return Classified::Refused(format!(
                        "annotation {} is not a valid host id: {e}",
                        annotations::HOST_ID
                    ))
                }
            };
            return Classified::Association {
                host,
                subject: subject.digest.clone(),
                channel: channel_of(m),
            };
        }
        if m.artifact_type.as_deref() == Some(media::BPF_HOST_SELECTOR) {
            let (Some(subject), Some(selector)) =
                (&m.subject, m.annotations.get(annotations::SELECTOR))
            else {
                return Classified::Refused(format!(
                    "a {} referrer needs a subject and the annotation {}",
                    media::BPF_HOST_SELECTOR,
                    annotations::SELECTOR
                ));
            };
            if let Err(e) = crate::fleet::selector::Selector::parse(selector) {
                return Classified::Refused(format!(
                    "annotation {} is not a valid selector: {e}",
                    annotations::SELECTOR
                ));
            }
            return Classified::Selector {
                subject: subject.digest.clone(),
                selector: selector.clone(),
                channel: channel_of(m),
            };
        }
        if !is_artifact_manifest(m) {
            return Classified::Other;
        }
        let Some(layer) = m
            .layers
            .iter()
            .find(|l| l.media_type == media::OCI_LAYER_TAR_ZSTD)
            .or_else(|| m.layers.first())
        else {
            return Classified::Other;
        };
        let a = |k: &str| m.annotations.get(k).cloned().unwrap_or_default();
        let config = self.load_config(m).unwrap_or_else(|| BpfConfig {
            name: repo.to_string(),
            version: a(annotations::VERSION),
            description: a(annotations::DESCRIPTION),
            kind: m
                .annotations
                .get(annotations::TYPE)
                .cloned()
                .unwrap_or_else(|| "program".into()),
            architecture: a(annotations::ARCHITECTURE),
            kernel_version: a(annotations::KERNEL_VERSION),
            metadata: Default::default(),
            tags: Vec::new(),
            created_at: a(annotations::CREATED),
            ebpf: None,
            requirements: m
                .annotations
                .get(annotations::REQUIREMENTS)
                .and_then(|r| serde_json::from_str(r).ok()),
        });
        Classified::Artifact(Box::new(ArtifactRecord {
            id: digest.clone(),
            repo: repo.clone(),
            manifest_size: size,
            config,
            layer_digest: layer.digest.clone(),
            layer_size: layer.size,
            layer_media_type: layer.media_type.clone(),
            // Filled from the row when read back.
            linked_at: 0,
        }))
    }

    pub async fn get(&self, key: &ArtifactKey) -> RegistryResult<Option<Arc<ArtifactRecord>>> {
        self.meta
            .artifact(&key.repo, &key.digest)
            .await?
            .map(record_of)
            .transpose()
    }

    /// The artifacts of `keys` that exist, in no particular order (one
    /// query per 200 keys).
    pub async fn get_many(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> RegistryResult<Vec<Arc<ArtifactRecord>>> {
        records(self.meta.artifacts_of_many(keys).await?)
    }

    /// Every copy of a manifest that is an artifact, the first linked
    /// first (ties: by repository name); kept while no manifest write
    /// commits, on SQLite (see `copies`).
    pub async fn copies(&self, digest: &Digest) -> RegistryResult<Vec<Arc<ArtifactRecord>>> {
        self.copies
            .get(&self.meta, digest, || async {
                records(self.meta.artifact_copies(digest).await?)
            })
            .await
    }

    /// Hosts associated with an artifact, sorted.
    pub async fn hosts_of(&self, key: &ArtifactKey) -> RegistryResult<Vec<HostId>> {
        Ok(self
            .meta
            .hosts_of(&key.repo, &key.digest)
            .await?
            .into_iter()
            .filter_map(|(h, _)| HostId::parse(&h).ok())
            .collect())
    }

    /// The association manifest linking each host to an artifact.
    pub async fn associations(&self, key: &ArtifactKey) -> RegistryResult<Vec<(HostId, Digest)>> {
        Ok(self
            .meta
            .hosts_of(&key.repo, &key.digest)
            .await?
            .into_iter()
            .filter_map(|(h, d)| HostId::parse(&h).ok().map(|h| (h, d)))
            .collect())
    }

    /// The association manifest linking `host` to an artifact, if any.
    /// The metadata store the views read (the fleet service shares it).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    pub async fn association(
        &self,
        key: &ArtifactKey,
        host: &HostId,
    ) -> RegistryResult<Option<Digest>> {
        Ok(self
            .associations(key)
            .await?
            .into_iter()
            .find(|(h, _)| h == host)
            .map(|(_, d)| d))
    }

    /// Up to `limit` artifacts matching `f` after `after`, in the
    /// listing order, each with its position.
    pub async fn page(
        &self,
        f: &ArtifactFilter,
        after: Option<&ListingKey>,
        limit: u32,
    ) -> RegistryResult<Vec<(ListingKey, Arc<ArtifactRecord>)>> {
        self.meta
            .list_artifacts(f, after, limit)
            .await?
            .into_iter()
            .map(|(k, row)| Ok((k, record_of(row)?)))
            .collect()
    }

    /// The hosts of each of `keys`, sorted (a key without hosts is absent).
    pub async fn hosts_of_many(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> RegistryResult<std::collections::HashMap<(String, String), Vec<String>>> {
        Ok(self.meta.hosts_of_many(keys).await?)
    }

    /// Gives the rows of a version-1 schema their facets, once, in
    /// batches (idempotent: several replicas starting at once may all run
    /// it; a crash midway resumes from the start).
    pub async fn fill_facets(&self) -> RegistryResult<u64> {
        if crate::metadata::schema::meta_value(&self.meta, FACETS_FILLED)
            .await?
            .is_some()
        {
            return Ok(0);
        }
        let (mut after, mut filled) = (None, 0u64);
        loop {
            let rows = self
                .meta
                .artifacts_after(after.as_ref(), FILL_BATCH)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.repo.to_string(), last.digest.to_string()));
            let n = rows.len();
            let mut batch = Vec::with_capacity(n);
            for row in rows {
                let key = (row.repo.to_string(), row.digest.to_string());
                batch.push((key, facets_of(&record_of(row)?.config)));
            }
            self.meta.set_artifact_facets(&batch).await?;
            filled += n as u64;
            if n < FILL_BATCH as usize {
                break;
            }
        }
        crate::metadata::schema::set_meta_value(&self.meta, FACETS_FILLED, "1").await?;
        Ok(filled)
    }

    /// How many artifacts and host associations there are.
    pub async fn counts(&self) -> RegistryResult<(u64, u64)> {
        Ok(self.meta.artifact_counts().await?)
    }
}

impl ManifestDeriver for ArtifactIndex {
    fn derive(&self, e: &ManifestStored) -> Result<Vec<DerivedRow>, String> {
        Ok(
            match self.classify(&e.repo, &e.digest, e.size, &e.manifest) {
                Classified::Artifact(r) => {
                    let stored = StoredRecord {
                        manifest_size: r.manifest_size,
                        config: r.config.clone(),
                        layer_digest: r.layer_digest.clone(),
                        layer_size: r.layer_size,
                        layer_media_type: r.layer_media_type.clone(),
                    };
                    match serde_json::to_string(&stored) {
                        Ok(record) => vec![DerivedRow::Artifact {
                            name: r.config.name.clone(),
                            version: r.config.version.clone(),
                            kind: r.config.kind.clone(),
                            architecture: r.config.architecture.clone(),
                            facets: facets_of(&r.config),
                            record,
                        }],
                        Err(e) => {
                            tracing::error!(error = %e, "artifact record does not serialize");
                            Vec::new()
                        }
                    }
                }
                Classified::Association {
                    host,
                    subject,
                    channel,
                } => vec![DerivedRow::HostAssociation {
                    subject,
                    host: host.to_string(),
                    channel,
                }],
                Classified::Selector {
                    subject,
                    selector,
                    channel,
                } => vec![DerivedRow::Selector {
                    subject,
                    selector,
                    channel,
                }],
                Classified::Refused(reason) => return Err(reason),
                Classified::Other => Vec::new(),
            },
        )
    }
}
