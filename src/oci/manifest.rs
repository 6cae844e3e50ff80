//! Manifest parsing and structural validation: image manifests and indexes
//! (OCI and Docker schema 2). Extracts what the registry needs: the media
//! type, the referenced descriptors, the `subject`, `artifactType` and
//! annotations. Unknown fields are kept as-is because the stored bytes are
//! the manifest; this only reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::media;

/// A content descriptor as it appears in manifests and referrers indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): config + layers.
    Image,
    /// An image index or Docker manifest list: child manifests.
    Index,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest mediaType {0:?} is not a manifest media type")]
    NotAManifest(String),
    #[error("manifest mediaType {body:?} disagrees with Content-Type {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("manifest has neither config nor manifests and no media type says which it is")]
    UnknownShape,
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry knows about a manifest after parsing it.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The body's own `mediaType`, else the PUT's Content-Type (checked
    /// against the shape), else the OCI type the shape implies.
    pub media_type: String,
    /// Whether the body has a `mediaType` field. When it has none the
    /// media type is not in the bytes, so the registry keeps the one it
    /// was pushed with beside the manifest.
    pub media_type_declared: bool,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl ParsedManifest {
    /// Parses a manifest body. `content_type` is the request's Content-Type,
    /// if any; it must agree with the body's own `mediaType` when both exist.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .filter(|c| media::is_manifest_type(c));
        let media_type = match (&raw.media_type, &header) {
            (Some(body_mt), _) if !media::is_manifest_type(body_mt) => {
                return Err(ManifestError::NotAManifest(body_mt.clone()))
            }
            (Some(body_mt), Some(h)) if body_mt != h => {
                return Err(ManifestError::MediaTypeMismatch {
                    body: body_mt.clone(),
                    header: h.clone(),
                })
            }
            (Some(body_mt), _) => body_mt.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => match (&raw.config, &raw.manifests) {
                (Some(_), None) => media::OCI_MANIFEST.to_string(),
                (None, Some(_)) => media::OCI_INDEX.to_string(),
                _ => return Err(ManifestError::UnknownShape),
            },
        };
        let kind = if media::is_index_type(&media_type) {
            ManifestKind::Index
        } else {
            ManifestKind::Image
        };
        match kind {
            ManifestKind::Image => {
                if raw.config.is_none() {
                    return Err(ManifestError::Invalid(
                        "image manifest requires a config descriptor".into(),
                    ));
                }
                if raw.manifests.is_some() {
                    return Err(ManifestError::Invalid(
                        "image manifest must not have a manifests field".into(),
                    ));
                }
            }
            ManifestKind::Index => {
                if raw.manifests.is_none() {
                    return Err(ManifestError::Invalid(
                        "image index requires a manifests array".into(),
                    ));
                }
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(ManifestError::Invalid(
                        "image index must not have config or layers".into(),
                    ));
                }
            }
        }
        if media_type.starts_with("application/vnd.docker.") && raw.subject.is_some() {
            return Err(ManifestError::Invalid(
                "docker manifests cannot carry a subject".into(),
            ));
        }
        if let Some(children) = &raw.manifests {
            if let Some(bad) = children
                .iter()
                .find(|c| !media::is_manifest_type(&c.media_type))
            {
                return Err(ManifestError::Invalid(format!(
                    "index entry {} has media type {:?}, which is not a manifest type",
                    bad.digest, bad.media_type
                )));
            }
        }
        Ok(ParsedManifest {
            media_type,
            media_type_declared: raw.media_type.is_some(),
            kind,
            artifact_type: raw.artifact_type,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations.unwrap_or_default(),
        })
    }

    /// The `artifactType` a referrers index reports for this manifest:
    /// the explicit field, else the config media type (image-spec rule).
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }

    /// Blobs (config and layers) this manifest needs in its repository.
    pub fn blob_references(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(mt: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/x-anything", "digest": D, "size": 0},
            "layers": [{"mediaType": "application/x-unknown-layer", "digest": D, "size": 0}],
            "subject": {"mediaType": media::OCI_MANIFEST, "digest": D, "size": 2},
        });
        if let Some(mt) = mt {
            v["mediaType"] = mt.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_image_with_subject_and_any_layer_type() {
        let m = ParsedManifest::parse(&image(Some(media::OCI_MANIFEST)), Some(media::OCI_MANIFEST))
            .unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blob_references().count(), 2);
        assert!(m.subject.is_some());
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/x-anything")
        );
    }

    #[test]
    fn infers_type_without_media_type() {
        let m = ParsedManifest::parse(&image(None), None).unwrap();
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert!(!m.media_type_declared);
        assert!(
            ParsedManifest::parse(&image(Some(media::OCI_MANIFEST)), None)
                .unwrap()
                .media_type_declared
        );
    }

    #[test]
    fn content_type_decides_without_media_type_if_it_fits_the_shape() {
        let body = br#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let m = ParsedManifest::parse(body, Some(media::DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.media_type, media::DOCKER_MANIFEST);
        assert!(matches!(
            ParsedManifest::parse(body, Some(media::DOCKER_MANIFEST_LIST)),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_mismatch_and_non_manifest_types() {
        assert!(matches!(
            ParsedManifest::parse(&image(Some(media::OCI_MANIFEST)), Some(media::OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            ParsedManifest::parse(&image(Some("application/json")), None),
            Err(ManifestError::NotAManifest(_))
        ));
        assert!(matches!(
            ParsedManifest::parse(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            ParsedManifest::parse(b"{\"schemaVersion\":1}", None),
            Err(ManifestError::SchemaVersion)
        ));
    }

    #[test]
    fn rejects_bad_descriptor_digest() {
        let body = br#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(matches!(
            ParsedManifest::parse(body, None),
            Err(ManifestError::Json(_))
        ));
    }
}
