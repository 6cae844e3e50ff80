//! The read side of signing: every signature stored for a manifest in
//! one repository (its cosign referrers and what its `.sig` tag names),
//! read from the store, and each one checked against every version of the
//! configured key.

use std::collections::HashSet;

use serde::Serialize;

use super::{cosign, internal, verify, SigningError, SigningService, Verdict};
use crate::oci::{Digest, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::RegistryError;

/// One stored signature, as `GET /artifacts/{id}/signatures` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SignatureRecord {
    /// The signature manifest holding it.
    pub manifest_digest: String,
    /// `sha256-<hex>.sig` when that tag points at this manifest.
    pub tag: Option<String>,
    /// Whether the manifest is a referrer (`subject`) of the artifact.
    pub referrer: bool,
    pub payload_digest: String,
    /// `critical.identity.docker-reference` of the payload.
    pub docker_reference: Option<String>,
    /// `critical.image.docker-manifest-digest` of the payload.
    pub signed_digest: Option<String>,
    /// Base64, as in the `dev.cosignproject.cosign/signature` annotation.
    pub signature: String,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub algorithm: Option<String>,
    pub signed_at: Option<String>,
    /// The payload bytes, or why they cannot be had.
    #[serde(skip)]
    payload: Result<Vec<u8>, String>,
}

/// One signature with its verdict.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckedSignature {
    #[serde(flatten)]
    pub record: SignatureRecord,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// `GET /artifacts/{id}/verify`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// True when at least one signature verifies with the configured key.
    pub verified: bool,
    pub key_id: Option<String>,
    pub signatures: Vec<CheckedSignature>,
}

impl SigningService {
    /// The signature manifests of `subject`: its cosign referrers and what
    /// its `.sig` tag names.
    pub(super) async fn signature_manifests(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<(Vec<Digest>, Option<Digest>), SigningError> {
        let mut list: Vec<Digest> = self
            .registry
            .referrers(repo, subject, Some(cosign::SIGNATURE_ARTIFACT_TYPE))
            .await?
            .into_iter()
            .map(|d| d.digest)
            .collect();
        let tag = Tag::parse(&cosign::signature_tag(subject)).map_err(internal)?;
        let tagged = self.registry.resolve(repo, &Reference::Tag(tag)).await.ok();
        if let Some(t) = &tagged {
            if !list.contains(t) {
                list.push(t.clone());
            }
        }
        Ok((list, tagged))
    }

    /// Every signature layer stored for `subject` (read from the store).
    pub async fn signatures(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<SignatureRecord>, SigningError> {
        let (manifests, tagged) = self.signature_manifests(repo, subject).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for d in manifests {
            let Ok(bytes) = self.registry.manifest_bytes(&d).await else {
                continue;
            };
            let Ok(m) = ParsedManifest::parse(&bytes, None) else {
                continue;
            };
            let referrer = m.subject.as_ref().is_some_and(|s| &s.digest == subject);
            if !referrer && tagged.as_ref() != Some(&d) {
                continue;
            }
            let single = m.layers.len() == 1;
            for layer in &m.layers {
                // Who signed: the layer's annotations; a one-layer manifest's
                // own annotations describe that layer too.
                let a = |k: &str| {
                    layer
                        .annotations
                        .as_ref()
                        .and_then(|la| la.get(k))
                        .or_else(|| single.then(|| m.annotations.get(k)).flatten())
                        .cloned()
                };
                if layer.media_type != cosign::SIMPLE_SIGNING_MEDIA_TYPE {
                    continue;
                }
                let Some(signature) = layer
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(cosign::SIGNATURE_ANNOTATION))
                    .cloned()
                else {
                    continue;
                };
                if !seen.insert((layer.digest.clone(), signature.clone())) {
                    continue;
                }
                let payload = match self.registry.manifest_bytes(&layer.digest).await {
                    Ok(b) => Ok(b.to_vec()),
                    Err(RegistryError::ManifestUnknown(_)) => {
                        Err("the payload blob is missing".to_string())
                    }
                    // The store refuses content that does not hash to its
                    // digest (damage on disk).
                    Err(e) => Err(format!("the payload blob cannot be read: {e}")),
                };
                let doc = payload.as_deref().ok().and_then(cosign::Payload::parse);
                out.push(SignatureRecord {
                    manifest_digest: d.to_string(),
                    tag: (tagged.as_ref() == Some(&d)).then(|| cosign::signature_tag(subject)),
                    referrer,
                    payload_digest: layer.digest.to_string(),
                    docker_reference: doc
                        .as_ref()
                        .map(|p| p.critical.identity.docker_reference.clone()),
                    signed_digest: doc
                        .as_ref()
                        .map(|p| p.critical.image.docker_manifest_digest.clone()),
                    signature,
                    key_id: a(cosign::annotations::KEY_ID),
                    key_version: a(cosign::annotations::KEY_VERSION).and_then(|v| v.parse().ok()),
                    algorithm: a(cosign::annotations::ALGORITHM),
                    signed_at: a(cosign::annotations::CREATED),
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// Checks every stored signature of `subject` against every version of
    /// the configured key.
    pub async fn verify(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Verification, SigningError> {
        let records = self.signatures(repo, subject).await?;
        let Some(signer) = &self.signer else {
            return Ok(Verification {
                verified: false,
                key_id: None,
                signatures: records
                    .into_iter()
                    .map(|record| CheckedSignature {
                        record,
                        verdict: Verdict::invalid("no signing key is configured on this registry"),
                    })
                    .collect(),
            });
        };
        let mut keys = signer.public_keys(false).await?;
        // A signature from a key version newer than the cache: re-read once.
        if records.iter().any(|r| {
            r.key_id.as_deref() == Some(signer.key_id())
                && r.key_version
                    .is_some_and(|v| !keys.versions.contains_key(&v))
        }) {
            keys = signer.public_keys(true).await?;
        }
        let signatures: Vec<CheckedSignature> = records
            .into_iter()
            .map(|record| {
                let verdict = match &record.payload {
                    Err(reason) => Verdict::invalid(reason.clone()),
                    Ok(p) if Digest::of(p).to_string() != record.payload_digest => {
                        Verdict::invalid("the payload blob does not match its digest")
                    }
                    Ok(p) => {
                        let hint = record
                            .key_version
                            .filter(|_| record.key_id.as_deref() == Some(signer.key_id()));
                        verify::check(subject, p, &record.signature, &keys, hint)
                    }
                };
                CheckedSignature { record, verdict }
            })
            .collect();
        Ok(Verification {
            verified: signatures.iter().any(|s| s.verdict.valid),
            key_id: Some(signer.key_id().to_string()),
            signatures,
        })
    }
}
