//! The derived in-memory index of artifacts and host associations. It is a
//! cache: rebuilt from the store at start-up and kept current by listening
//! to every manifest stored or deleted (REST and OCI alike), never the
//! source of truth.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::model::{ArtifactRecord, BpfConfig, HostId};
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, RepoName};
use crate::registry::{ManifestListener, ManifestStored, Registry, RegistryResult};
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
}

const CONFIG_MAX: u64 = 1024 * 1024;

#[derive(Default)]
struct Inner {
    artifacts: HashMap<Digest, Arc<ArtifactRecord>>,
    /// host → artifact digests associated with it
    by_host: HashMap<HostId, BTreeSet<Digest>>,
    /// artifact digest → host → association manifest digest
    by_artifact: HashMap<Digest, BTreeMap<HostId, Digest>>,
    /// association manifest digest → (host, artifact digest)
    associations: HashMap<Digest, (HostId, Digest)>,
}

pub struct ArtifactIndex {
    backend: Arc<dyn Backend>,
    inner: RwLock<Inner>,
}

/// What a manifest means to the eBPF domain.
enum Classified {
    Artifact(Box<ArtifactRecord>),
    Association { host: HostId, subject: Digest },
    Other,
}

/// Whether a manifest is one of our artifacts.
pub fn is_artifact_manifest(m: &ParsedManifest) -> bool {
    m.kind == ManifestKind::Image
        && (m.artifact_type.as_deref() == Some(media::BPF_ARTIFACT_TYPE)
            || m.config.as_ref().map(|c| c.media_type.as_str()) == Some(media::BPF_CONFIG))
}

impl ArtifactIndex {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        ArtifactIndex {
            backend,
            inner: RwLock::new(Inner::default()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the config blob; blocking, but configs are small and local.
    fn load_config(&self, m: &ParsedManifest) -> Option<BpfConfig> {
        let c = m.config.as_ref()?;
        if c.media_type != media::BPF_CONFIG {
            return None;
        }
        let raw = self
            .backend
            .read_small(&paths::blob(&c.digest), CONFIG_MAX)
            .ok()??;
        serde_json::from_slice(&raw).ok()
    }

    fn classify(&self, repo: &RepoName, digest: &Digest, m: &ParsedManifest) -> Classified {
        if m.artifact_type.as_deref() == Some(media::BPF_HOST_ASSOCIATION) {
            let (Some(subject), Some(host)) = (&m.subject, m.annotations.get(annotations::HOST_ID))
            else {
                return Classified::Other;
            };
            let Ok(host) = HostId::parse(host) else {
                return Classified::Other;
            };
            return Classified::Association {
                host,
                subject: subject.digest.clone(),
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
        });
        Classified::Artifact(Box::new(ArtifactRecord {
            id: digest.clone(),
            repo: repo.clone(),
            config,
            layer_digest: layer.digest.clone(),
            layer_size: layer.size,
            layer_media_type: layer.media_type.clone(),
        }))
    }

    pub fn get(&self, id: &Digest) -> Option<Arc<ArtifactRecord>> {
        self.read().artifacts.get(id).cloned()
    }

    /// Hosts associated with an artifact, sorted.
    pub fn hosts_of(&self, id: &Digest) -> Vec<HostId> {
        self.read()
            .by_artifact
            .get(id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The association manifest linking `host` to `id`, if any.
    pub fn association(&self, id: &Digest, host: &HostId) -> Option<Digest> {
        self.read()
            .by_artifact
            .get(id)
            .and_then(|m| m.get(host).cloned())
    }

    /// Artifacts associated with a host (only those that still exist).
    pub fn artifacts_for_host(&self, host: &HostId) -> Vec<Arc<ArtifactRecord>> {
        let inner = self.read();
        inner
            .by_host
            .get(host)
            .map(|set| {
                set.iter()
                    .filter_map(|d| inner.artifacts.get(d).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every artifact (unsorted).
    pub fn all(&self) -> Vec<Arc<ArtifactRecord>> {
        self.read().artifacts.values().cloned().collect()
    }
}

fn apply(inner: &mut Inner, c: Classified) {
    match c {
        Classified::Artifact(r) => {
            inner.artifacts.insert(r.id.clone(), Arc::from(r));
        }
        Classified::Association { .. } | Classified::Other => {}
    }
}

fn apply_association(inner: &mut Inner, assoc: Digest, host: HostId, subject: Digest) {
    inner
        .by_host
        .entry(host.clone())
        .or_default()
        .insert(subject.clone());
    inner
        .by_artifact
        .entry(subject.clone())
        .or_default()
        .insert(host.clone(), assoc.clone());
    inner.associations.insert(assoc, (host, subject));
}

fn remove_association(inner: &mut Inner, assoc: &Digest) {
    let Some((host, subject)) = inner.associations.remove(assoc) else {
        return;
    };
    let mut still_linked = false;
    let mut now_empty = false;
    if let Some(m) = inner.by_artifact.get_mut(&subject) {
        if m.get(&host) == Some(assoc) {
            m.remove(&host);
        }
        still_linked = m.contains_key(&host);
        now_empty = m.is_empty();
    }
    if now_empty {
        inner.by_artifact.remove(&subject);
    }
    if !still_linked {
        if let Some(set) = inner.by_host.get_mut(&host) {
            set.remove(&subject);
            if set.is_empty() {
                inner.by_host.remove(&host);
            }
        }
    }
}

impl ArtifactIndex {
    fn record(&self, repo: &RepoName, digest: &Digest, m: &ParsedManifest) {
        let c = self.classify(repo, digest, m);
        let mut inner = self.write();
        match c {
            Classified::Association { host, subject } => {
                apply_association(&mut inner, digest.clone(), host, subject)
            }
            other => apply(&mut inner, other),
        }
    }
}

impl ManifestListener for ArtifactIndex {
    fn manifest_stored(&self, e: &ManifestStored) {
        self.record(&e.repo, &e.digest, &e.manifest);
    }

    fn manifest_deleted(&self, _repo: &RepoName, digest: &Digest, _m: Option<&ParsedManifest>) {
        let mut inner = self.write();
        inner.artifacts.remove(digest);
        remove_association(&mut inner, digest);
    }
}

impl ArtifactIndex {
    /// Rebuilds the index from every manifest in the store; returns the
    /// number of artifacts and of host associations found.
    pub async fn rebuild(self: &Arc<Self>, registry: &Registry) -> RegistryResult<(usize, usize)> {
        let repos = registry.all_repositories().await?;
        let max = registry.limits().max_manifest_bytes;
        let this = self.clone();
        // One blocking job scans every repository, on as many threads as
        // there are cores: start-up time is file reads, not CPU.
        let fresh = tokio::task::spawn_blocking(move || {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8);
            let found: Vec<Vec<(Digest, Classified)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (this, repos) = (&this, &repos);
                        scope.spawn(move || this.scan(repos.iter().skip(t).step_by(threads), max))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            let mut fresh = Inner::default();
            for (digest, c) in found.into_iter().flatten() {
                match c {
                    Classified::Association { host, subject } => {
                        apply_association(&mut fresh, digest, host, subject)
                    }
                    other => apply(&mut fresh, other),
                }
            }
            fresh
        })
        .await
        .map_err(|e| crate::registry::RegistryError::Body(format!("index rebuild failed: {e}")))?;
        let counts = (fresh.artifacts.len(), fresh.associations.len());
        *self.write() = fresh;
        Ok(counts)
    }

    /// Classifies every manifest of some repositories (blocking).
    fn scan<'a>(
        &self,
        repos: impl Iterator<Item = &'a RepoName>,
        max: u64,
    ) -> Vec<(Digest, Classified)> {
        let mut out = Vec::new();
        for repo in repos {
            let Ok(entries) = self.backend.list(&paths::manifests_dir(repo)) else {
                continue;
            };
            for e in entries {
                let Some(digest) = Digest::from_hex(&e.name) else {
                    continue;
                };
                let Ok(Some(bytes)) = self.backend.read_small(&paths::blob(&digest), max) else {
                    continue;
                };
                let Ok(m) = ParsedManifest::parse(&bytes, None) else {
                    continue;
                };
                let c = self.classify(repo, &digest, &m);
                if !matches!(c, Classified::Other) {
                    out.push((digest, c));
                }
            }
        }
        out
    }
}
