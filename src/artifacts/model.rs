//! The REST model: the create request, the config blob stored in the
//! registry, the artifact record the index keeps, and the artifact JSON
//! every REST response uses.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::elf::EbpfFacts;
use super::limits::{CappedList, CappedMetadata, MAX_HOSTS, MAX_TAGS};
use super::ArtifactError;
use crate::fleet::Requirements;
use crate::oci::{Digest, RepoName};

/// `POST /artifacts` body. `data` borrows from the request buffer so the
/// base64 text is not copied before it is decoded; the lists and
/// `metadata` are read bounded (see `limits`), so an oversized one costs
/// no more memory than its cap before it is refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "A new artifact version. Unknown fields are ignored.",
    example = json!({
        "name": "security_monitor",
        "version": "1.0.0",
        "description": "Security monitoring eBPF program",
        "type": "program",
        "architecture": "x86_64",
        "kernel_version": "5.4.0",
        "data": "dGVzdCBkYXRh"
    })
)]
pub struct CreateRequest<'a> {
    /// The repository: an OCI repository name (lower case, at most 255
    /// characters).
    #[schema(value_type = String, required = true, max_length = 255)]
    pub name: Option<String>,
    /// Becomes the OCI tag of the version.
    #[schema(value_type = String, required = true, max_length = 128)]
    pub version: Option<String>,
    /// At most 16 KiB.
    #[serde(default)]
    #[schema(max_length = 16384)]
    pub description: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = String, required = true)]
    pub kind: Option<String>,
    /// e.g. `x86_64`, `aarch64`.
    #[schema(value_type = String, required = true, max_length = 32)]
    pub architecture: Option<String>,
    /// At most 256 bytes.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub kernel_version: Option<String>,
    /// Free-form, at most 64 KiB as compact JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<CappedMetadata>,
    /// At most 64 tags of 1-128 bytes.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 64)]
    pub tags: Option<CappedList<String, MAX_TAGS>>,
    /// The payload, base64 (padded or not): an eBPF object, a pre-packed
    /// tar.zst, or any file.
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    #[schema(value_type = String, required = true)]
    pub data: Option<Cow<'a, str>>,
    /// Host ids to associate at once (at most 1,000).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 1000)]
    pub hosts: Option<CappedList<String, MAX_HOSTS>>,
    /// What a host needs to run the artifact. Read apart from the body
    /// (as raw JSON), so a bad object is `invalid_requirements`, not
    /// `invalid_json`; an eBPF object with CO-RE relocations gets
    /// `btf: required` when none is declared.
    #[serde(borrow, default)]
    #[schema(value_type = Option<Requirements>)]
    pub requirements: Option<&'a serde_json::value::RawValue>,
}

/// An optional string borrowed from the input when it has no escapes
/// (serde's own `Option<Cow<str>>` always copies: ~85 MiB for a large
/// `data`).
fn borrowed_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
    }
    d.deserialize_option(Text)
}

/// The artifact kinds of the seed API.
pub const KINDS: [&str; 3] = ["program", "map", "tracepoint"];

/// The config blob (`application/vnd.aegisflux.bpf.config.v1+json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BpfConfig {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    #[serde(default)]
    pub kernel_version: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub ebpf: Option<EbpfFacts>,
    /// Absent when none (so configs without requirements hash as
    /// before); a value that does not read as requirements (an OCI push
    /// can write anything) is taken as none rather than hiding the
    /// artifact.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_requirements"
    )]
    pub requirements: Option<Requirements>,
}

fn lenient_requirements<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Requirements>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Where an artifact lives: one manifest in one repository. Every derived
/// view is keyed by it; the same manifest copied into another repository
/// is another artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactKey {
    pub repo: RepoName,
    pub digest: Digest,
}

impl ArtifactKey {
    pub fn new(repo: RepoName, digest: Digest) -> Self {
        ArtifactKey { repo, digest }
    }
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo, self.digest)
    }
}

/// What the index knows of one artifact manifest.
#[derive(Debug, Clone)]
pub struct ArtifactRecord {
    pub id: Digest,
    pub repo: RepoName,
    /// Bytes of the manifest (what a referrer's `subject` states).
    pub manifest_size: u64,
    pub config: BpfConfig,
    pub layer_digest: Digest,
    pub layer_size: u64,
    pub layer_media_type: String,
    /// Unix seconds when the manifest was linked into `repo` (from the
    /// store, so a restart keeps the order of copies).
    pub linked_at: u64,
}

/// Where the artifact is in the OCI API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OciRef {
    pub repository: String,
    pub reference: String,
    pub manifest_digest: String,
    pub layer_digest: String,
    pub media_type: String,
}

/// The artifact JSON, the same shape in every REST response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Artifact)]
pub struct ArtifactJson {
    pub id: String,
    /// The repository (an id can live in several; this names the copy).
    pub name: String,
    pub version: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    pub kernel_version: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub tags: Vec<String>,
    /// Bytes of the layer (the tar.zst).
    pub size: u64,
    /// The layer digest.
    pub checksum: String,
    pub created_at: String,
    pub hosts: Vec<String>,
    /// The eBPF facts when the payload is an eBPF object; else `null`.
    #[schema(required = true)]
    pub ebpf: Option<EbpfFacts>,
    /// The newest signature by the registry's key; `null` when unsigned.
    #[schema(required = true)]
    pub signature: Option<crate::signing::SignatureSummary>,
    pub oci: OciRef,
    /// What a host needs to run it; absent when nothing is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
}

impl ArtifactRecord {
    pub fn key(&self) -> ArtifactKey {
        ArtifactKey::new(self.repo.clone(), self.id.clone())
    }

    /// The artifact JSON. `name` is the repository, never the config's
    /// `name` field (which anyone who can push anywhere can write).
    pub fn to_json(&self, hosts: Vec<String>) -> ArtifactJson {
        let c = &self.config;
        ArtifactJson {
            id: self.id.to_string(),
            name: self.repo.to_string(),
            version: c.version.clone(),
            description: c.description.clone(),
            kind: c.kind.clone(),
            architecture: c.architecture.clone(),
            kernel_version: c.kernel_version.clone(),
            metadata: c.metadata.clone(),
            tags: c.tags.clone(),
            size: self.layer_size,
            checksum: self.layer_digest.to_string(),
            created_at: c.created_at.clone(),
            hosts,
            ebpf: c.ebpf.clone(),
            signature: None,
            oci: OciRef {
                repository: self.repo.to_string(),
                reference: c.version.clone(),
                manifest_digest: self.id.to_string(),
                layer_digest: self.layer_digest.to_string(),
                media_type: self.layer_media_type.clone(),
            },
            requirements: c.requirements.clone(),
        }
    }
}

/// A host id: 1–253 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(String);

impl HostId {
    pub fn parse(s: &str) -> Result<Self, ArtifactError> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return Err(ArtifactError::InvalidHostId(format!(
                "invalid host id {:?}: expected 1-253 characters of [A-Za-z0-9._:-]",
                s.chars().take(300).collect::<String>()
            )));
        }
        Ok(HostId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// OCI platform architecture for a declared architecture.
pub fn oci_architecture(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" | "x86" => "386",
        other => other,
    }
}

/// Architectures whose byte order is known, and that byte order.
pub fn architecture_is_big_endian(arch: &str) -> Option<bool> {
    match arch {
        "x86_64" | "x86-64" | "amd64" | "aarch64" | "arm64" | "arm" | "armv7" | "i386" | "i686"
        | "386" | "x86" | "ppc64le" | "riscv64" | "mipsel" | "mips64el" | "loong64"
        | "loongarch64" => Some(false),
        "s390x" | "ppc64" | "mips" | "mips64" | "sparc64" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids() {
        assert!(HostId::parse("host-1.example.com").is_ok());
        assert!(HostId::parse("a:b_c").is_ok());
        assert!(HostId::parse(&"h".repeat(253)).is_ok());
        for bad in ["", "a b", "a/b", "..%", &"h".repeat(254)] {
            assert!(HostId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn architectures() {
        assert_eq!(oci_architecture("x86_64"), "amd64");
        assert_eq!(oci_architecture("aarch64"), "arm64");
        assert_eq!(architecture_is_big_endian("s390x"), Some(true));
        assert_eq!(architecture_is_big_endian("x86_64"), Some(false));
        assert_eq!(architecture_is_big_endian("weird"), None);
    }

    #[test]
    fn config_requirements_are_optional_and_lenient() {
        let base = serde_json::json!({
            "name": "a", "version": "1", "type": "map", "architecture": "x86_64",
        });
        let c: BpfConfig = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(c.requirements, None);
        // Without requirements the config serializes as before.
        assert!(serde_json::to_value(&c)
            .unwrap()
            .get("requirements")
            .is_none());
        let mut with = base.clone();
        with["requirements"] = serde_json::json!({"btf": "required"});
        let c: BpfConfig = serde_json::from_value(with).unwrap();
        assert_eq!(
            c.requirements.as_ref().and_then(|r| r.btf),
            Some(crate::fleet::BtfRequirement::Required)
        );
        let mut odd = base;
        odd["requirements"] = serde_json::json!({"gpu": 1});
        let c: BpfConfig = serde_json::from_value(odd).unwrap();
        assert_eq!(
            c.requirements, None,
            "an OCI-pushed oddity is none, not an error"
        );
    }
}
