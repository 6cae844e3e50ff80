//! The service behind the REST facade: creates artifacts as OCI objects
//! (layer, config, manifest, tag, and an index when a version has several
//! architectures), host associations as referrer manifests, and answers
//! reads from the index and the blob store.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use oci_spec::image::{
    Descriptor as SpecDescriptor, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    PlatformBuilder,
};

use super::elf::{self, EbpfFacts, ElfError, Endianness};
use super::index::{annotations, ArtifactIndex};
use super::model::{
    architecture_is_big_endian, oci_architecture, ArtifactJson, ArtifactRecord, BpfConfig,
    CreateRequest, HostId, KINDS,
};
use super::pack;
use super::ArtifactError;
use crate::oci::{media, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::{BlobRead, ByteRange, Registry, RegistryError};
use crate::signing::SigningService;

/// The 2-byte `{}` blob of the OCI empty descriptor.
const EMPTY_JSON: &[u8] = b"{}";
const LOCK_STRIPES: usize = 64;
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

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

/// Filters of `GET /artifacts`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct ListQuery {
    pub name: Option<String>,
    pub version: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub architecture: Option<String>,
    pub kernel_version: Option<String>,
    pub tag: Option<String>,
    pub host: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Internal(e.to_string())
}

fn required(v: Option<String>, field: &str) -> Result<String, ArtifactError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ArtifactError::InvalidRequest(format!(
            "{field} is required and must not be empty"
        ))),
    }
}

fn spec_descriptor(
    media_type: &str,
    digest: &Digest,
    size: u64,
) -> Result<SpecDescriptor, ArtifactError> {
    let d: oci_spec::image::Digest = digest.to_string().parse().map_err(internal)?;
    Ok(SpecDescriptor::new(MediaType::from(media_type), size, d))
}

/// The file name a downloaded artifact gets.
pub fn download_name(record: &ArtifactRecord) -> String {
    let base = record.config.name.replace('/', "_");
    format!("{base}-{}.tar.zst", record.config.version)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks an ELF payload against what the request declares.
fn inspect_declared(
    bytes: &[u8],
    kind: &str,
    arch: &str,
) -> Result<Option<EbpfFacts>, ArtifactError> {
    match elf::inspect(bytes) {
        Ok(facts) => {
            if let Some(big) = architecture_is_big_endian(arch) {
                let object_big = facts.endianness == Endianness::Big;
                if big != object_big {
                    return Err(ArtifactError::InvalidEbpf(format!(
                        "the eBPF object is {}-endian but architecture {arch:?} is {}-endian",
                        if object_big { "big" } else { "little" },
                        if big { "big" } else { "little" },
                    )));
                }
            }
            if kind == "program" && facts.programs.is_empty() {
                return Err(ArtifactError::InvalidEbpf(
                    "type is program but the eBPF object has no program section".into(),
                ));
            }
            Ok(Some(facts))
        }
        Err(ElfError::NotBpf { machine }) if kind == "program" => Err(ArtifactError::InvalidEbpf(format!(
            "type is program but data is an ELF object for machine {machine}, not eBPF (e_machine 247)"
        ))),
        Err(ElfError::NotBpf { .. }) | Err(ElfError::NotElf) => Ok(None),
        Err(ElfError::Malformed(m)) => Err(ArtifactError::InvalidEbpf(format!(
            "data starts with the ELF magic but is not a valid ELF object: {m}"
        ))),
    }
}

/// The validated, decoded form of a create request.
struct NewArtifact {
    repo: RepoName,
    tag: Tag,
    config: BpfConfig,
    layer: Vec<u8>,
    hosts: Vec<HostId>,
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

    /// The repository and manifest digest of an artifact id.
    pub fn locate(&self, id: &str) -> Result<(RepoName, Digest), ArtifactError> {
        let rec = self.record(id)?;
        Ok((rec.repo.clone(), rec.id.clone()))
    }

    pub fn index(&self) -> &Arc<ArtifactIndex> {
        &self.index
    }

    /// The largest JSON body `POST /artifacts` accepts: the base64 of the
    /// largest payload plus room for the other fields.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_artifact_bytes
            .div_ceil(3)
            .saturating_mul(4)
            .saturating_add(1024 * 1024)
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
                .hosts_of(&r.id)
                .into_iter()
                .map(|h| h.to_string())
                .collect(),
        );
        j.signature = self.signing.as_ref().and_then(|s| s.summary(&r.id));
        j
    }

    fn parse_id(id: &str) -> Result<Digest, ArtifactError> {
        Digest::parse(id).map_err(|_| ArtifactError::InvalidId(id.chars().take(100).collect()))
    }

    fn record(&self, id: &str) -> Result<Arc<ArtifactRecord>, ArtifactError> {
        let digest = Self::parse_id(id)?;
        self.index
            .get(&digest)
            .ok_or_else(|| ArtifactError::NotFound(digest.to_string()))
    }

    /// Parses and validates a create body, decoding `data` once. The
    /// request buffer is dropped as soon as the payload is decoded.
    fn decode(&self, body: Bytes) -> Result<NewArtifact, ArtifactError> {
        let stripped: Vec<u8>;
        let req: CreateRequest<'_> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                // The seed README's own curl example sends a shell comment
                // inside the body; accept `#` line comments outside strings.
                stripped = strip_hash_comments(&body)
                    .ok_or_else(|| ArtifactError::InvalidJson(e.to_string()))?;
                serde_json::from_slice(&stripped)
                    .map_err(|_| ArtifactError::InvalidJson(e.to_string()))?
            }
        };
        let CreateRequest {
            name,
            version,
            description,
            kind,
            architecture,
            kernel_version,
            metadata,
            tags,
            data,
            hosts,
        } = req;
        let name = required(name, "name")?;
        let repo = RepoName::parse(&name).map_err(|e| ArtifactError::InvalidName(e.to_string()))?;
        let version = required(version, "version")?;
        let tag = Tag::parse(&version).map_err(|_| {
            ArtifactError::InvalidRequest(format!(
                "invalid version {version:?}: it becomes an OCI tag and must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
            ))
        })?;
        let kind = required(kind, "type")?;
        if !KINDS.contains(&kind.as_str()) {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid type {kind:?}: expected one of program, map, tracepoint"
            )));
        }
        let architecture = required(architecture, "architecture")?;
        if architecture.len() > 32
            || !architecture
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid architecture {architecture:?}: expected e.g. x86_64, aarch64"
            )));
        }
        let tags = tags.unwrap_or_default();
        if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.len() > 128) {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid tag {bad:?}: 1-128 characters"
            )));
        }
        let hosts = hosts
            .unwrap_or_default()
            .iter()
            .map(|h| HostId::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        let data = match data {
            Some(d) if !d.trim().is_empty() => d,
            _ => {
                return Err(ArtifactError::InvalidRequest(
                    "data is required and must not be empty".into(),
                ))
            }
        };
        let max = self.max_artifact_bytes;
        if (data.len() as u64 / 4).saturating_mul(3) > max.saturating_add(3) {
            return Err(ArtifactError::TooLarge { max });
        }
        let engine = &base64::engine::general_purpose::STANDARD;
        let payload = engine
            .decode(data.trim().as_bytes())
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(data.trim().as_bytes())
            })
            .map_err(|e| ArtifactError::InvalidBase64(e.to_string()))?;
        drop(data);
        drop(body);
        if payload.len() as u64 > max {
            return Err(ArtifactError::TooLarge { max });
        }
        let (layer, ebpf) = if pack::is_tar_zstd(&payload) {
            let facts = match pack::first_elf_in_tar_zstd(&payload, max) {
                Some(obj) => inspect_declared(&obj, &kind, &architecture)?,
                None => None,
            };
            (payload, facts)
        } else {
            let is_elf = pack::is_elf(&payload);
            let facts = if is_elf {
                inspect_declared(&payload, &kind, &architecture)?
            } else {
                None
            };
            let packed = pack::pack_tar_zstd(&pack::entry_name(&name, is_elf), &payload)
                .map_err(internal)?;
            (packed, facts)
        };
        let config = BpfConfig {
            name,
            version,
            description: description.unwrap_or_default(),
            kind,
            architecture,
            kernel_version: kernel_version.unwrap_or_default(),
            metadata: metadata.unwrap_or_default(),
            tags,
            created_at: now_rfc3339(),
            ebpf,
        };
        Ok(NewArtifact {
            repo,
            tag,
            config,
            layer,
            hosts,
        })
    }

    /// `POST /artifacts`.
    pub async fn create(&self, body: Bytes) -> Result<Created<ArtifactJson>, ArtifactError> {
        let new = self.decode(body)?;
        let _held = self.lock_for(&new.repo).lock().await;
        let layer_digest = Digest::of(&new.layer);
        let platform_arch = oci_architecture(&new.config.architecture).to_string();

        // What the version tag already names decides: replay, conflict,
        // a new manifest, or a new platform in an index.
        let mut siblings: Option<Vec<(Digest, u64, String)>> = None;
        if let Some(existing) = self.resolve_optional(&new.repo, &new.tag).await? {
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
            for (d, size) in candidates {
                let Some(rec) = self.index.get(&d) else {
                    return Err(self.conflict(&new));
                };
                if oci_architecture(&rec.config.architecture) == platform_arch {
                    if rec.layer_digest == layer_digest {
                        for h in &new.hosts {
                            self.associate(&rec, h).await?;
                        }
                        return Ok(Created {
                            value: self.json(&rec),
                            created: false,
                        });
                    }
                    return Err(self.conflict(&new));
                }
                others.push((
                    d,
                    size,
                    oci_architecture(&rec.config.architecture).to_string(),
                ));
            }
            siblings = Some(others);
        }

        let repo = &new.repo;
        let layer_size = new.layer.len() as u64;
        let config_bytes = serde_json::to_vec(&new.config).map_err(internal)?;
        let config_size = config_bytes.len() as u64;
        let config_digest = Digest::of(&config_bytes);

        let mut layer_desc = spec_descriptor(media::OCI_LAYER_TAR_ZSTD, &layer_digest, layer_size)?;
        let title = download_name_of(&new.config);
        layer_desc.set_annotations(Some(HashMap::from([(
            annotations::TITLE.to_string(),
            title,
        )])));
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::from(media::BPF_ARTIFACT_TYPE))
            .config(spec_descriptor(
                media::BPF_CONFIG,
                &config_digest,
                config_size,
            )?)
            .layers(vec![layer_desc])
            .annotations(manifest_annotations(&new.config))
            .build()
            .map_err(internal)?;
        let manifest_bytes = Bytes::from(serde_json::to_vec(&manifest).map_err(internal)?);
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
        match siblings {
            None => {}
            Some(mut others) => {
                others.push((
                    manifest_digest.clone(),
                    manifest_size,
                    platform_arch.clone(),
                ));
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
        }
        let rec = self
            .index
            .get(&manifest_digest)
            .ok_or_else(|| internal("artifact stored but not indexed"))?;
        for h in &new.hosts {
            self.associate(&rec, h).await?;
        }
        tracing::info!(repo = %repo, id = %manifest_digest, version = %new.tag, "artifact created");
        Ok(Created {
            value: self.json(&rec),
            created: true,
        })
    }

    fn conflict(&self, new: &NewArtifact) -> ArtifactError {
        ArtifactError::VersionExists {
            name: new.config.name.clone(),
            version: new.config.version.clone(),
            architecture: new.config.architecture.clone(),
        }
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
        children: &[(Digest, u64, String)],
    ) -> Result<(), ArtifactError> {
        let mut manifests = Vec::new();
        for (d, size, arch) in children {
            let mut desc = spec_descriptor(media::OCI_MANIFEST, d, *size)?;
            desc.set_artifact_type(Some(MediaType::from(media::BPF_ARTIFACT_TYPE)));
            let platform = PlatformBuilder::default()
                .architecture(arch.as_str())
                .os("linux")
                .build()
                .map_err(internal)?;
            desc.set_platform(Some(platform));
            manifests.push(desc);
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .artifact_type(MediaType::from(media::BPF_ARTIFACT_TYPE))
            .manifests(manifests)
            .build()
            .map_err(internal)?;
        let bytes = Bytes::from(serde_json::to_vec(&index).map_err(internal)?);
        self.store_manifest(repo, &Reference::Tag(tag.clone()), media::OCI_INDEX, bytes)
            .await
    }

    /// Stores the association manifest (deterministic, so a replay has the
    /// same digest). Returns false when it already existed.
    async fn associate(&self, rec: &ArtifactRecord, host: &HostId) -> Result<bool, ArtifactError> {
        if self.index.association(&rec.id, host).is_some() {
            return Ok(false);
        }
        let repo = &rec.repo;
        // Kept from garbage collection until the manifest references it.
        let _pin = self.registry.pin_for_gc(vec![Digest::of(EMPTY_JSON)]);
        let empty = self
            .registry
            .put_small_blob(repo, Bytes::from_static(EMPTY_JSON))
            .await?;
        let subject_size = self.registry.manifest_bytes(&rec.id).await?.len() as u64;
        let empty_desc = spec_descriptor(media::OCI_EMPTY, &empty, EMPTY_JSON.len() as u64)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::from(media::BPF_HOST_ASSOCIATION))
            .config(empty_desc.clone())
            .layers(vec![empty_desc])
            .subject(spec_descriptor(media::OCI_MANIFEST, &rec.id, subject_size)?)
            .annotations(HashMap::from([(
                annotations::HOST_ID.to_string(),
                host.to_string(),
            )]))
            .build()
            .map_err(internal)?;
        let bytes = Bytes::from(serde_json::to_vec(&manifest).map_err(internal)?);
        let digest = Digest::of(&bytes);
        self.registry
            .put_manifest(
                repo,
                &Reference::Digest(digest),
                Some(media::OCI_MANIFEST),
                bytes,
            )
            .await?;
        Ok(true)
    }

    /// `GET /artifacts/{id}`.
    pub fn get(&self, id: &str) -> Result<ArtifactJson, ArtifactError> {
        Ok(self.json(&*self.record(id)?))
    }

    /// `GET /artifacts/{id}/binary`: the layer, streamed.
    pub async fn binary(
        &self,
        id: &str,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Digest, String), ArtifactError> {
        let rec = self.record(id)?;
        let blob = self
            .registry
            .read_blob_unchecked(&rec.layer_digest, range)
            .await?;
        Ok((blob, rec.layer_digest.clone(), download_name(&rec)))
    }

    /// The layer digest and download name, without opening the blob (for
    /// conditional requests).
    pub fn binary_etag(&self, id: &str) -> Result<Digest, ArtifactError> {
        Ok(self.record(id)?.layer_digest.clone())
    }

    /// `POST /artifacts/{id}/hosts`.
    pub async fn add_host(
        &self,
        id: &str,
        host: &str,
    ) -> Result<Created<Vec<String>>, ArtifactError> {
        let rec = self.record(id)?;
        let host = HostId::parse(host)?;
        let created = self.associate(&rec, &host).await?;
        Ok(Created {
            value: self.hosts(id)?,
            created,
        })
    }

    /// `DELETE /artifacts/{id}/hosts/{host_id}`.
    pub async fn remove_host(&self, id: &str, host: &str) -> Result<(), ArtifactError> {
        let rec = self.record(id)?;
        let host = HostId::parse(host)?;
        let assoc = self.index.association(&rec.id, &host).ok_or_else(|| {
            ArtifactError::NotFound(format!("association of {} with host {host}", rec.id))
        })?;
        self.registry
            .delete_manifest(&rec.repo, &Reference::Digest(assoc))
            .await?;
        Ok(())
    }

    /// `GET /artifacts/{id}/hosts`.
    pub fn hosts(&self, id: &str) -> Result<Vec<String>, ArtifactError> {
        let rec = self.record(id)?;
        Ok(self
            .index
            .hosts_of(&rec.id)
            .into_iter()
            .map(|h| h.to_string())
            .collect())
    }

    /// `GET /artifacts/for-host/{host_id}`.
    pub fn for_host(&self, host: &str) -> Result<Vec<ArtifactJson>, ArtifactError> {
        self.for_host_visible(host, &|_| true)
    }

    /// `for_host`, keeping only artifacts whose repository passes
    /// `visible` (what the caller may pull).
    pub fn for_host_visible(
        &self,
        host: &str,
        visible: &dyn Fn(&RepoName) -> bool,
    ) -> Result<Vec<ArtifactJson>, ArtifactError> {
        let host = HostId::parse(host)?;
        let mut recs = self.index.artifacts_for_host(&host);
        recs.retain(|r| visible(&r.repo));
        recs.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        Ok(recs.iter().map(|r| self.json(r)).collect())
    }

    /// `GET /artifacts` with filters and a cursor.
    pub fn list(
        &self,
        q: &ListQuery,
    ) -> Result<(Vec<ArtifactJson>, Option<String>), ArtifactError> {
        self.list_visible(q, &|_| true)
    }

    /// `list`, keeping only artifacts whose repository passes `visible`
    /// (what the caller may pull), before paging.
    pub fn list_visible(
        &self,
        q: &ListQuery,
        visible: &dyn Fn(&RepoName) -> bool,
    ) -> Result<(Vec<ArtifactJson>, Option<String>), ArtifactError> {
        let limit = match q.limit.as_deref() {
            None | Some("") => DEFAULT_LIST_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ArtifactError::InvalidRequest(format!(
                        "invalid limit {v:?}: expected 1..={MAX_LIST_LIMIT}"
                    )))
                }
            },
        };
        let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        let host = q.host.as_deref().map(HostId::parse).transpose()?;
        let host_set: Option<std::collections::HashSet<Digest>> = host.as_ref().map(|h| {
            self.index
                .artifacts_for_host(h)
                .iter()
                .map(|r| r.id.clone())
                .collect()
        });
        let mut recs: Vec<Arc<ArtifactRecord>> = self
            .index
            .all()
            .into_iter()
            .filter(|r| {
                let c = &r.config;
                q.name.as_ref().is_none_or(|v| &c.name == v)
                    && q.version.as_ref().is_none_or(|v| &c.version == v)
                    && q.kind.as_ref().is_none_or(|v| &c.kind == v)
                    && q.architecture.as_ref().is_none_or(|v| &c.architecture == v)
                    && q.kernel_version
                        .as_ref()
                        .is_none_or(|v| &c.kernel_version == v)
                    && q.tag.as_ref().is_none_or(|v| c.tags.contains(v))
                    && host_set.as_ref().is_none_or(|s| s.contains(&r.id))
                    && visible(&r.repo)
            })
            .collect();
        recs.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        let start = match &after {
            Some(key) => recs.partition_point(|r| sort_key(r) <= key.as_ref_tuple()),
            None => 0,
        };
        let page: Vec<&Arc<ArtifactRecord>> = recs.iter().skip(start).take(limit).collect();
        let next = if start.saturating_add(limit) < recs.len() {
            page.last().map(|r| encode_cursor(r))
        } else {
            None
        };
        Ok((page.iter().map(|r| self.json(r)).collect(), next))
    }

    /// `DELETE /artifacts/{id}`: removes the manifest, its host
    /// associations and its tag (or its entry in the version's index).
    /// Blobs stay until garbage collection.
    pub async fn delete(&self, id: &str) -> Result<(), ArtifactError> {
        let rec = self.record(id)?;
        let repo = rec.repo.clone();
        let _held = self.lock_for(&repo).lock().await;
        for host in self.index.hosts_of(&rec.id) {
            if let Some(assoc) = self.index.association(&rec.id, &host) {
                self.registry
                    .delete_manifest(&repo, &Reference::Digest(assoc))
                    .await?;
            }
        }
        if let Ok(tag) = Tag::parse(&rec.config.version) {
            if let Some(current) = self.resolve_optional(&repo, &tag).await? {
                if current != rec.id {
                    let bytes = self.registry.manifest_bytes(&current).await?;
                    let parsed =
                        ParsedManifest::parse(&bytes, None).map_err(RegistryError::from)?;
                    if parsed.kind == ManifestKind::Index
                        && parsed.manifests.iter().any(|m| m.digest == rec.id)
                    {
                        let rest: Vec<(Digest, u64, String)> = parsed
                            .manifests
                            .iter()
                            .filter(|m| m.digest != rec.id)
                            .map(|m| {
                                let arch = m
                                    .platform
                                    .as_ref()
                                    .and_then(|p| p.get("architecture"))
                                    .and_then(|a| a.as_str())
                                    .unwrap_or_default()
                                    .to_string();
                                (m.digest.clone(), m.size, arch)
                            })
                            .collect();
                        if rest.is_empty() {
                            self.registry
                                .delete_manifest(&repo, &Reference::Tag(tag.clone()))
                                .await?;
                        } else {
                            self.put_version_index(&repo, &tag, &rest).await?;
                        }
                        // The old index would reference a deleted manifest.
                        if let Some(s) = &self.signing {
                            s.delete_signatures(&repo, &current).await?;
                        }
                        self.registry
                            .delete_manifest(&repo, &Reference::Digest(current))
                            .await?;
                    }
                }
            }
        }
        if let Some(s) = &self.signing {
            s.delete_signatures(&repo, &rec.id).await?;
        }
        self.registry
            .delete_manifest(&repo, &Reference::Digest(rec.id.clone()))
            .await?;
        tracing::info!(repo = %repo, id = %rec.id, "artifact deleted");
        Ok(())
    }
}

/// Removes `#`-to-end-of-line comments that stand outside JSON strings;
/// `None` when there is none (so the strict parse error stands).
fn strip_hash_comments(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped, mut in_comment, mut found) = (false, false, false, false);
    for &b in body {
        if in_comment {
            if b == b'\n' {
                in_comment = false;
                out.push(b);
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'#' {
            in_comment = true;
            found = true;
            continue;
        }
        out.push(b);
    }
    found.then_some(out)
}

fn download_name_of(c: &BpfConfig) -> String {
    format!("{}-{}.tar.zst", c.name.replace('/', "_"), c.version)
}

fn manifest_annotations(c: &BpfConfig) -> HashMap<String, String> {
    let meta = |k: &str| {
        c.metadata
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let license = meta("license").or_else(|| c.ebpf.as_ref().and_then(|e| e.license.clone()));
    let pairs = [
        (annotations::TITLE, Some(c.name.clone())),
        (annotations::VERSION, Some(c.version.clone())),
        (annotations::DESCRIPTION, Some(c.description.clone())),
        (annotations::CREATED, Some(c.created_at.clone())),
        (annotations::LICENSES, license),
        (annotations::AUTHORS, meta("author")),
        (annotations::TYPE, Some(c.kind.clone())),
        (annotations::ARCHITECTURE, Some(c.architecture.clone())),
        (annotations::KERNEL_VERSION, Some(c.kernel_version.clone())),
    ];
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
        .collect()
}

/// Listing order: name, version, architecture, id.
type SortKey<'a> = (&'a str, &'a str, &'a str, String);

fn sort_key(r: &ArtifactRecord) -> SortKey<'_> {
    (
        r.config.name.as_str(),
        r.config.version.as_str(),
        r.config.architecture.as_str(),
        r.id.to_string(),
    )
}

struct Cursor {
    name: String,
    version: String,
    architecture: String,
    id: String,
}

impl Cursor {
    fn as_ref_tuple(&self) -> SortKey<'_> {
        (
            self.name.as_str(),
            self.version.as_str(),
            self.architecture.as_str(),
            self.id.clone(),
        )
    }
}

fn encode_cursor(r: &ArtifactRecord) -> String {
    let raw = format!(
        "{}\n{}\n{}\n{}",
        r.config.name, r.config.version, r.config.architecture, r.id
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> Result<Cursor, ArtifactError> {
    let bad = || {
        ArtifactError::InvalidRequest(format!(
            "invalid cursor {:?}",
            c.chars().take(100).collect::<String>()
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '\n');
    let (Some(name), Some(version), Some(architecture), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(Cursor {
        name: name.into(),
        version: version.into(),
        architecture: architecture.into(),
        id: id.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::strip_hash_comments;

    #[test]
    fn hash_comments_outside_strings_are_stripped() {
        let body = b"{\"data\": \"a#b\"  # comment\n}";
        assert_eq!(
            strip_hash_comments(body).unwrap(),
            b"{\"data\": \"a#b\"  \n}"
        );
        assert_eq!(strip_hash_comments(b"{\"a\": \"x#y\\\"#\"}"), None);
        assert_eq!(strip_hash_comments(b"{}"), None);
    }
}
