//! The derived in-memory index of artifacts and host associations. It is a
//! cache: rebuilt from the store at start-up and kept current by listening
//! to every manifest stored or deleted (REST and OCI alike), never the
//! source of truth. Every key is (repository, digest): a manifest copied
//! into another repository is another artifact, and a host-association
//! referrer counts only for the subject in its own repository (OCI
//! referrers are per repository).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::limits::MAX_CONFIG_BYTES;
use super::model::{ArtifactKey, ArtifactRecord, BpfConfig, HostId};
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

#[derive(Default)]
struct Inner {
    artifacts: HashMap<ArtifactKey, Arc<ArtifactRecord>>,
    /// manifest digest → the repositories holding it as an artifact
    copies: HashMap<Digest, BTreeSet<RepoName>>,
    /// host → artifacts associated with it
    by_host: HashMap<HostId, BTreeSet<ArtifactKey>>,
    /// artifact → host → association manifest digest
    by_artifact: HashMap<ArtifactKey, BTreeMap<HostId, Digest>>,
    /// association manifest (in its repository) → (host, subject digest).
    /// A referrer counts for the subject in its own repository only.
    associations: HashMap<ArtifactKey, (HostId, Digest)>,
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    /// When the manifest was linked into the repository, from the link's
    /// age in the store (whole seconds), so the order of copies survives a
    /// restart.
    fn linked_at(&self, repo: &RepoName, digest: &Digest) -> u64 {
        let now = unix_now();
        match self.backend.age_secs(&paths::manifest_link(repo, digest)) {
            Ok(Some(age)) => now.saturating_sub(age),
            _ => now,
        }
    }

    fn classify(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        m: &ParsedManifest,
    ) -> Classified {
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
            manifest_size: size,
            config,
            layer_digest: layer.digest.clone(),
            layer_size: layer.size,
            layer_media_type: layer.media_type.clone(),
            linked_at: self.linked_at(repo, digest),
        }))
    }

    pub fn get(&self, key: &ArtifactKey) -> Option<Arc<ArtifactRecord>> {
        self.read().artifacts.get(key).cloned()
    }

    /// Every copy of a manifest that is an artifact, the first linked
    /// first (ties: by repository name).
    pub fn copies(&self, digest: &Digest) -> Vec<Arc<ArtifactRecord>> {
        let inner = self.read();
        let mut out: Vec<Arc<ArtifactRecord>> = inner
            .copies
            .get(digest)
            .map(|repos| {
                repos
                    .iter()
                    .filter_map(|r| {
                        inner
                            .artifacts
                            .get(&ArtifactKey::new(r.clone(), digest.clone()))
                            .cloned()
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| (a.linked_at, &a.repo).cmp(&(b.linked_at, &b.repo)));
        out
    }

    /// Hosts associated with an artifact, sorted.
    pub fn hosts_of(&self, key: &ArtifactKey) -> Vec<HostId> {
        self.read()
            .by_artifact
            .get(key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The association manifest linking `host` to an artifact, if any.
    pub fn association(&self, key: &ArtifactKey, host: &HostId) -> Option<Digest> {
        self.read()
            .by_artifact
            .get(key)
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
                    .filter_map(|k| inner.artifacts.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every artifact (unsorted).
    pub fn all(&self) -> Vec<Arc<ArtifactRecord>> {
        self.read().artifacts.values().cloned().collect()
    }
}

fn apply(inner: &mut Inner, repo: &RepoName, digest: &Digest, c: Classified) {
    match c {
        Classified::Artifact(r) => {
            let key = r.key();
            // A manifest stored again keeps the time it was first linked.
            if inner.artifacts.contains_key(&key) {
                let linked_at = inner
                    .artifacts
                    .get(&key)
                    .map_or(r.linked_at, |old| old.linked_at);
                let mut r = *r;
                r.linked_at = linked_at;
                inner.artifacts.insert(key, Arc::new(r));
            } else {
                inner
                    .copies
                    .entry(digest.clone())
                    .or_default()
                    .insert(repo.clone());
                inner.artifacts.insert(key, Arc::from(r));
            }
        }
        Classified::Association { host, subject } => {
            let assoc = ArtifactKey::new(repo.clone(), digest.clone());
            let target = ArtifactKey::new(repo.clone(), subject.clone());
            inner
                .by_host
                .entry(host.clone())
                .or_default()
                .insert(target.clone());
            inner
                .by_artifact
                .entry(target)
                .or_default()
                .insert(host.clone(), digest.clone());
            inner.associations.insert(assoc, (host, subject));
        }
        Classified::Other => {}
    }
}

fn remove_artifact(inner: &mut Inner, key: &ArtifactKey) {
    if inner.artifacts.remove(key).is_none() {
        return;
    }
    if let Some(repos) = inner.copies.get_mut(&key.digest) {
        repos.remove(&key.repo);
        if repos.is_empty() {
            inner.copies.remove(&key.digest);
        }
    }
}

fn remove_association(inner: &mut Inner, assoc: &ArtifactKey) {
    let Some((host, subject)) = inner.associations.remove(assoc) else {
        return;
    };
    let target = ArtifactKey::new(assoc.repo.clone(), subject);
    let mut still_linked = false;
    let mut now_empty = false;
    if let Some(m) = inner.by_artifact.get_mut(&target) {
        if m.get(&host) == Some(&assoc.digest) {
            m.remove(&host);
        }
        still_linked = m.contains_key(&host);
        now_empty = m.is_empty();
    }
    if now_empty {
        inner.by_artifact.remove(&target);
    }
    if !still_linked {
        if let Some(set) = inner.by_host.get_mut(&host) {
            set.remove(&target);
            if set.is_empty() {
                inner.by_host.remove(&host);
            }
        }
    }
}

impl ManifestListener for ArtifactIndex {
    fn manifest_stored(&self, e: &ManifestStored) {
        let c = self.classify(&e.repo, &e.digest, e.size, &e.manifest);
        apply(&mut self.write(), &e.repo, &e.digest, c);
    }

    fn manifest_deleted(&self, repo: &RepoName, digest: &Digest, _m: Option<&ParsedManifest>) {
        let key = ArtifactKey::new(repo.clone(), digest.clone());
        let mut inner = self.write();
        remove_artifact(&mut inner, &key);
        remove_association(&mut inner, &key);
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
            // A scanner that panicked would leave artifacts out: fail.
            let found: Option<Vec<Vec<(RepoName, Digest, Classified)>>> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let (this, repos) = (&this, &repos);
                            scope.spawn(move || {
                                this.scan(repos.iter().skip(t).step_by(threads), max)
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().ok()).collect()
                });
            let mut fresh = Inner::default();
            for (repo, digest, c) in found?.into_iter().flatten() {
                apply(&mut fresh, &repo, &digest, c);
            }
            Some(fresh)
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            crate::registry::RegistryError::Internal(
                "index rebuild failed: a scanner panicked".into(),
            )
        })?;
        let counts = (fresh.artifacts.len(), fresh.associations.len());
        *self.write() = fresh;
        Ok(counts)
    }

    /// Classifies every manifest of some repositories (blocking).
    fn scan<'a>(
        &self,
        repos: impl Iterator<Item = &'a RepoName>,
        max: u64,
    ) -> Vec<(RepoName, Digest, Classified)> {
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
                let c = self.classify(repo, &digest, bytes.len() as u64, &m);
                if !matches!(c, Classified::Other) {
                    out.push((repo.clone(), digest, c));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn record(r: &str, id: &Digest, linked_at: u64) -> Classified {
        Classified::Artifact(Box::new(ArtifactRecord {
            id: id.clone(),
            repo: repo(r),
            manifest_size: 500,
            config: BpfConfig {
                name: "ignored/config-name".into(),
                version: "1".into(),
                description: String::new(),
                kind: "map".into(),
                architecture: "x86_64".into(),
                kernel_version: String::new(),
                metadata: Default::default(),
                tags: Vec::new(),
                created_at: String::new(),
                ebpf: None,
            },
            layer_digest: Digest::of(b"layer"),
            layer_size: 5,
            layer_media_type: media::OCI_LAYER_TAR_ZSTD.into(),
            linked_at,
        }))
    }

    fn host(h: &str) -> HostId {
        HostId::parse(h).unwrap()
    }

    #[test]
    fn copies_and_associations_are_per_repository() {
        let mut inner = Inner::default();
        let id = Digest::of(b"manifest");
        let (a, b) = (repo("team/a"), repo("sandbox/b"));
        apply(&mut inner, &b, &id, record("sandbox/b", &id, 20));
        apply(&mut inner, &a, &id, record("team/a", &id, 10));
        // Stored again later: keeps its first link time.
        apply(&mut inner, &a, &id, record("team/a", &id, 99));
        // b's referrer names the digest both copies share.
        let assoc = Digest::of(b"assoc");
        apply(
            &mut inner,
            &b,
            &assoc,
            Classified::Association {
                host: host("victim"),
                subject: id.clone(),
            },
        );
        let (ka, kb) = (
            ArtifactKey::new(a.clone(), id.clone()),
            ArtifactKey::new(b.clone(), id.clone()),
        );
        assert!(!inner.by_artifact.contains_key(&ka));
        assert_eq!(inner.by_host.get(&host("victim")).map(|s| s.len()), Some(1));
        assert!(inner.by_host[&host("victim")].contains(&kb));
        let dir = tempfile::tempdir().unwrap();
        let idx = ArtifactIndex {
            backend: Arc::new(crate::storage::FsBackend::open(dir.path()).unwrap()),
            inner: RwLock::new(inner),
        };
        let order: Vec<String> = idx.copies(&id).iter().map(|r| r.repo.to_string()).collect();
        assert_eq!(order, ["team/a", "sandbox/b"]);
        assert!(idx.hosts_of(&ka).is_empty());
        assert_eq!(idx.hosts_of(&kb), vec![host("victim")]);
        // Deleting b's copy and its referrer leaves a untouched.
        idx.manifest_deleted(&b, &assoc, None);
        idx.manifest_deleted(&b, &id, None);
        assert!(idx.get(&kb).is_none());
        assert!(idx.get(&ka).is_some());
        assert_eq!(idx.copies(&id).len(), 1);
        assert!(idx.artifacts_for_host(&host("victim")).is_empty());
    }

    #[test]
    fn a_config_at_the_create_cap_is_read_back_whole() {
        use crate::artifacts::build;
        use crate::artifacts::limits::MAX_CONFIG_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> =
            Arc::new(crate::storage::FsBackend::open(dir.path()).unwrap());
        let idx = ArtifactIndex::new(backend.clone());
        let mut config = BpfConfig {
            name: "a".into(),
            version: "1".into(),
            description: String::new(),
            kind: "map".into(),
            architecture: "x86_64".into(),
            kernel_version: String::new(),
            metadata: Default::default(),
            tags: vec!["t".into()],
            created_at: String::new(),
            ebpf: None,
        };
        let base = build::config_blob(&config).unwrap().len() as u64;
        config.description = "d".repeat((MAX_CONFIG_BYTES - base) as usize);
        let blob = build::config_blob(&config).unwrap();
        assert_eq!(blob.len() as u64, MAX_CONFIG_BYTES);
        let digest = Digest::of(&blob);
        backend.write_atomic(&paths::blob(&digest), &blob).unwrap();
        let layer = Digest::of(b"layer");
        let manifest = build::artifact_manifest(
            &repo("a"),
            &config,
            (&digest, blob.len() as u64),
            (&layer, 5),
        )
        .unwrap();
        let parsed = ParsedManifest::parse(&manifest, None).unwrap();
        let id = Digest::of(&manifest);
        let Classified::Artifact(r) = idx.classify(&repo("a"), &id, manifest.len() as u64, &parsed)
        else {
            panic!("not an artifact");
        };
        assert_eq!(r.config, config, "read back whole, tags included");
        assert_eq!(r.manifest_size, manifest.len() as u64);
        // One byte more is refused where it is built.
        config.description.push('d');
        assert!(matches!(
            build::config_blob(&config),
            Err(crate::artifacts::ArtifactError::OverLimit {
                limit: crate::artifacts::Limit::Config,
                ..
            })
        ));
    }
}
