//! cosign's storage layout for signatures (`specs/SIGNATURE_SPEC.md` of
//! sigstore/cosign): the "simple signing" payload that is signed, and the
//! signature manifest that carries it.
//!
//! One signature manifest per signed manifest, found both ways cosign-style
//! verifiers look:
//!
//! - tag-based discovery: tagged `sha256-<hex>.sig` in the same repository
//!   (what sigstore-rs, and so bpfman, reads);
//! - OCI 1.1 referrers: `subject` is the signed manifest and `artifactType`
//!   is `application/vnd.dev.cosign.artifact.sig.v1+json` (what cosign's
//!   referrers mode and `oras discover` list).
//!
//! ```json
//! {
//!   "schemaVersion": 2,
//!   "mediaType": "application/vnd.oci.image.manifest.v1+json",
//!   "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
//!   "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "<sha256 of {}>", "size": 2},
//!   "layers": [{
//!     "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
//!     "digest": "<sha256 of the payload>", "size": 234,
//!     "annotations": {"dev.cosignproject.cosign/signature": "<base64 signature over the payload bytes>",
//!                     "io.aegisflux.bpf.signature.key-id": "...", "...key-version": "1", "...": "..."}
//!   }],
//!   "subject": {"mediaType": "...", "digest": "<signed manifest>", "size": 1234},
//!   "annotations": {"io.aegisflux.bpf.signature.key-id": "...", "...key-version": "1", "...algorithm": "ecdsa-p256-sha256", "org.opencontainers.image.created": "..."}
//! }
//! ```
//!
//! The config is the `{}` blob with the OCI image config media type, as
//! sigstore-rs writes it. Several signatures of one manifest are several
//! layers of the tagged manifest (cosign appends; so do we), which is why
//! each layer says which key made it; the manifest's annotations repeat its
//! newest layer's (they show in the referrers list).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::{Descriptor, Digest};

/// Media type of the simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `artifactType` of a cosign signature manifest (referrers mode).
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// `critical.type` of a cosign container image signature.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Config media type of the signature manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The config blob.
pub const CONFIG_BYTES: &[u8] = b"{}";

/// Annotations this registry adds to its signature layers (each layer, as
/// cosign appends layers) and to the signature manifest (its newest layer).
/// Not signed: they say which key and version to try first.
pub mod annotations {
    pub const KEY_ID: &str = "io.aegisflux.bpf.signature.key-id";
    pub const KEY_VERSION: &str = "io.aegisflux.bpf.signature.key-version";
    pub const ALGORITHM: &str = "io.aegisflux.bpf.signature.algorithm";
    pub const CREATED: &str = "org.opencontainers.image.created";
}

/// The tag a signature of `digest` lives under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm(), digest.hex())
}

/// The signed digest named by a signature tag, if `tag` is one.
pub fn digest_of_signature_tag(tag: &str) -> Option<Digest> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    Digest::from_hex(hex)
}

/// cosign's simple-signing payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub critical: Critical,
    /// Optional claims; this registry writes `null`.
    #[serde(default)]
    pub optional: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Go's JSON decoder is case-insensitive, so early cosign payloads spell
    /// it `Docker-manifest-digest`.
    #[serde(rename = "docker-manifest-digest", alias = "Docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl Payload {
    pub fn new(docker_reference: &str, digest: &Digest) -> Payload {
        Payload {
            critical: Critical {
                identity: Identity {
                    docker_reference: docker_reference.to_string(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_string(),
                },
                kind: PAYLOAD_TYPE.to_string(),
            },
            optional: None,
        }
    }

    /// The bytes that are signed (compact JSON, cosign's field order).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<Payload> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Who signed, for the manifest annotations.
#[derive(Debug, Clone)]
pub struct SignerNote {
    pub key_id: String,
    pub key_version: u32,
    pub algorithm: &'static str,
    pub created: String,
}

impl SignerNote {
    fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (annotations::KEY_ID.to_string(), self.key_id.clone()),
            (
                annotations::KEY_VERSION.to_string(),
                self.key_version.to_string(),
            ),
            (
                annotations::ALGORITHM.to_string(),
                self.algorithm.to_string(),
            ),
            (annotations::CREATED.to_string(), self.created.clone()),
        ])
    }
}

/// One signature layer: the payload's descriptor with the signature (and,
/// when given, who signed).
pub fn signature_layer(
    payload_digest: &Digest,
    payload_size: u64,
    signature_b64: &str,
    note: Option<&SignerNote>,
) -> Descriptor {
    let mut a = note.map(SignerNote::annotations).unwrap_or_default();
    a.insert(SIGNATURE_ANNOTATION.to_string(), signature_b64.to_string());
    Descriptor {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_string(),
        digest: payload_digest.clone(),
        size: payload_size,
        artifact_type: None,
        annotations: Some(a),
        platform: None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    artifact_type: &'static str,
    config: Descriptor,
    layers: &'a [Descriptor],
    subject: Descriptor,
    annotations: BTreeMap<String, String>,
}

/// The signature manifest's bytes. `layers` are the signature layers
/// (earlier ones first, the new one last); `subject` the signed manifest.
pub fn signature_manifest(
    layers: &[Descriptor],
    subject: Descriptor,
    note: &SignerNote,
) -> Vec<u8> {
    let m = SignatureManifest {
        schema_version: 2,
        media_type: crate::oci::media::OCI_MANIFEST,
        artifact_type: SIGNATURE_ARTIFACT_TYPE,
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.to_string(),
            digest: Digest::of(CONFIG_BYTES),
            size: CONFIG_BYTES.len() as u64,
            artifact_type: None,
            annotations: None,
            platform: None,
        },
        layers,
        subject,
        annotations: note.annotations(),
    };
    serde_json::to_vec(&m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cosigns_shape() {
        let d = Digest::of(b"x");
        let p = Payload::new("registry.local/bpf/prog", &d);
        let text = String::from_utf8(p.to_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"registry.local/bpf/prog\"}},\"image\":{{\"docker-manifest-digest\":\"{d}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
            )
        );
        assert_eq!(Payload::parse(text.as_bytes()), Some(p));
        let old = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"\"}},\"image\":{{\"Docker-manifest-digest\":\"{d}\"}},\"type\":\"x\"}},\"optional\":null}}"
        );
        assert_eq!(
            Payload::parse(old.as_bytes())
                .unwrap()
                .critical
                .image
                .docker_manifest_digest,
            d.to_string()
        );
        assert!(Payload::parse(b"{}").is_none());
    }

    #[test]
    fn signature_tags() {
        let d = Digest::of(b"x");
        let t = signature_tag(&d);
        assert_eq!(t, format!("sha256-{}.sig", d.hex()));
        assert!(crate::oci::Tag::parse(&t).is_ok());
        assert_eq!(digest_of_signature_tag(&t), Some(d));
        assert_eq!(digest_of_signature_tag("v1"), None);
        assert_eq!(digest_of_signature_tag("sha256-abc.sig"), None);
    }

    #[test]
    fn manifest_parses_as_a_referrer() {
        let d = Digest::of(b"artifact");
        let p = Digest::of(b"payload");
        let subject = Descriptor {
            media_type: crate::oci::media::OCI_MANIFEST.into(),
            digest: d.clone(),
            size: 10,
            artifact_type: None,
            annotations: None,
            platform: None,
        };
        let note = SignerNote {
            key_id: "k".into(),
            key_version: 2,
            algorithm: "ed25519",
            created: "2026-01-01T00:00:00Z".into(),
        };
        let layer = signature_layer(&p, 7, "c2ln", Some(&note));
        let bytes = signature_manifest(&[layer], subject, &note);
        let m = crate::oci::ParsedManifest::parse(&bytes, None).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some(SIGNATURE_ARTIFACT_TYPE));
        assert_eq!(m.subject.unwrap().digest, d);
        assert_eq!(m.layers[0].media_type, SIMPLE_SIGNING_MEDIA_TYPE);
        assert_eq!(
            m.layers[0].annotations.as_ref().unwrap()[SIGNATURE_ANNOTATION],
            "c2ln"
        );
        assert_eq!(m.annotations[annotations::KEY_VERSION], "2");
        assert_eq!(
            m.layers[0].annotations.as_ref().unwrap()[annotations::KEY_ID],
            "k"
        );
        assert_eq!(m.config.unwrap().digest, Digest::of(b"{}"));
    }
}
