//! The OCI objects a REST write becomes, built as bytes (no I/O): the
//! config blob (within the cap the index reads), the artifact manifest
//! with its annotations, the image index of a version with several
//! architectures, and the host-association referrer.

use std::collections::HashMap;

use bytes::Bytes;
use oci_spec::image::{
    Descriptor as SpecDescriptor, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    PlatformBuilder,
};

use super::index::annotations;
use super::limits::{Limit, MAX_CONFIG_BYTES};
use super::model::{BpfConfig, HostId};
use super::ArtifactError;
use crate::oci::{media, Digest, RepoName};

/// The 2-byte `{}` blob of the OCI empty descriptor.
pub const EMPTY_JSON: &[u8] = b"{}";

fn internal(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Internal(e.to_string())
}

fn spec_descriptor(
    media_type: &str,
    digest: &Digest,
    size: u64,
) -> Result<SpecDescriptor, ArtifactError> {
    let d: oci_spec::image::Digest = digest.to_string().parse().map_err(internal)?;
    Ok(SpecDescriptor::new(MediaType::from(media_type), size, d))
}

fn to_bytes(v: &impl serde::Serialize) -> Result<Bytes, ArtifactError> {
    Ok(Bytes::from(serde_json::to_vec(v).map_err(internal)?))
}

/// The config blob of an artifact; refused over the size the index reads
/// back, so a stored config is never silently ignored.
pub fn config_blob(config: &BpfConfig) -> Result<Vec<u8>, ArtifactError> {
    let bytes = serde_json::to_vec(config).map_err(internal)?;
    let size = bytes.len() as u64;
    if size > MAX_CONFIG_BYTES {
        return Err(Limit::Config.refusal(MAX_CONFIG_BYTES, Some(size)));
    }
    Ok(bytes)
}

/// The file name a downloaded artifact gets: `<repository>-<version>.tar.zst`
/// with `/` as `_`.
pub fn download_name(repo: &RepoName, version: &str) -> String {
    format!("{}-{version}.tar.zst", repo.as_str().replace('/', "_"))
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
        (
            annotations::REQUIREMENTS,
            c.requirements
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        ),
    ];
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
        .collect()
}

/// The artifact's image manifest: one tar+zstd layer titled for `oras
/// pull`, the BPF config, the design's annotations.
pub fn artifact_manifest(
    repo: &RepoName,
    config: &BpfConfig,
    config_blob: (&Digest, u64),
    layer: (&Digest, u64),
) -> Result<Bytes, ArtifactError> {
    let mut layer_desc = spec_descriptor(media::OCI_LAYER_TAR_ZSTD, layer.0, layer.1)?;
    layer_desc.set_annotations(Some(HashMap::from([(
        annotations::TITLE.to_string(),
        download_name(repo, &config.version),
    )])));
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(media::BPF_ARTIFACT_TYPE))
        .config(spec_descriptor(
            media::BPF_CONFIG,
            config_blob.0,
            config_blob.1,
        )?)
        .layers(vec![layer_desc])
        .annotations(manifest_annotations(config))
        .build()
        .map_err(internal)?;
    to_bytes(&manifest)
}

/// One platform of a version: (manifest digest, size, OCI architecture).
pub type Platform = (Digest, u64, String);

/// The image index a version tag names when it has several architectures.
pub fn version_index(children: &[Platform]) -> Result<Bytes, ArtifactError> {
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
    to_bytes(&index)
}

/// The host-association referrer of `subject` (deterministic, so a replay
/// has the same digest): empty config and layer, the host as annotation
/// (and the channel it follows, when one is given).
pub fn association_manifest(
    subject: &Digest,
    subject_size: u64,
    host: &HostId,
    channel: Option<&str>,
) -> Result<Bytes, ArtifactError> {
    let mut notes = HashMap::from([(annotations::HOST_ID.to_string(), host.to_string())]);
    if let Some(c) = channel {
        notes.insert(annotations::CHANNEL.to_string(), c.to_string());
    }
    referrer_manifest(subject, subject_size, media::BPF_HOST_ASSOCIATION, notes)
}

/// The host-selector referrer of `subject`: like an association, with the
/// selector (and an optional channel) as annotations.
pub fn selector_manifest(
    subject: &Digest,
    subject_size: u64,
    selector: &str,
    channel: Option<&str>,
) -> Result<Bytes, ArtifactError> {
    let mut notes = HashMap::from([(annotations::SELECTOR.to_string(), selector.to_string())]);
    if let Some(c) = channel {
        notes.insert(annotations::CHANNEL.to_string(), c.to_string());
    }
    referrer_manifest(subject, subject_size, media::BPF_HOST_SELECTOR, notes)
}

/// An empty referrer manifest of `subject` carrying `notes`.
fn referrer_manifest(
    subject: &Digest,
    subject_size: u64,
    artifact_type: &str,
    notes: HashMap<String, String>,
) -> Result<Bytes, ArtifactError> {
    let empty = Digest::of(EMPTY_JSON);
    let empty_desc = spec_descriptor(media::OCI_EMPTY, &empty, EMPTY_JSON.len() as u64)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(artifact_type))
        .config(empty_desc.clone())
        .layers(vec![empty_desc])
        .subject(spec_descriptor(media::OCI_MANIFEST, subject, subject_size)?)
        .annotations(notes)
        .build()
        .map_err(internal)?;
    to_bytes(&manifest)
}
