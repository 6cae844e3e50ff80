//! The signature views: (repository, signed manifest digest) → the
//! signature manifests in that repository that name it, answered by the
//! metadata store, whose rows the deriver below computes from every
//! manifest stored, in the manifest's own transaction. A signature counts
//! only in its own repository (its payload names the repository, and OCI
//! referrers are per repository), so a manifest signed in one repository
//! and copied into another is unsigned there until it is signed there. It
//! answers the artifact JSON's `signature` field and "is this already
//! signed?"; `/signatures` and `/verify` read the store itself.

use std::collections::HashMap;

use serde::Serialize;

use super::cosign::{self, annotations};
use crate::metadata::{DerivedRow, Metadata, SignatureRow};
use crate::oci::{Digest, ManifestKind, ParsedManifest, RepoName, Tag};
use crate::registry::{ManifestDeriver, ManifestStored, RegistryResult};

/// What the index keeps of one signature manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigEntry {
    pub manifest: Digest,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub algorithm: Option<String>,
    pub created: Option<String>,
}

/// The artifact JSON's `signature`: the newest signature by this
/// registry's key (or, failing that, any signature found).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SignatureSummary {
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub algorithm: Option<String>,
    /// The signature manifest.
    pub manifest_digest: String,
    /// cosign's tag for the signature, `sha256-<hex>.sig`.
    pub tag: String,
    pub signed_at: Option<String>,
}

pub struct SignatureIndex {
    meta: Metadata,
}

/// If `m` is a cosign signature manifest: the digest it signs and its entry.
/// A signature manifest has a simple-signing layer and either cosign's
/// `artifactType` with a `subject`, or a `sha256-<hex>.sig` tag.
pub fn classify(
    tag: Option<&Tag>,
    digest: &Digest,
    m: &ParsedManifest,
) -> Option<(Digest, SigEntry)> {
    if m.kind != ManifestKind::Image
        || !m
            .layers
            .iter()
            .any(|l| l.media_type == cosign::SIMPLE_SIGNING_MEDIA_TYPE)
    {
        return None;
    }
    let subject = match &m.subject {
        Some(s) if m.artifact_type.as_deref() == Some(cosign::SIGNATURE_ARTIFACT_TYPE) => {
            s.digest.clone()
        }
        _ => tag.and_then(|t| cosign::digest_of_signature_tag(t.as_str()))?,
    };
    let a = |k: &str| m.annotations.get(k).cloned();
    Some((
        subject,
        SigEntry {
            manifest: digest.clone(),
            key_id: a(annotations::KEY_ID),
            key_version: a(annotations::KEY_VERSION).and_then(|v| v.parse().ok()),
            algorithm: a(annotations::ALGORITHM),
            created: a(annotations::CREATED),
        },
    ))
}

fn entry_of(row: SignatureRow) -> Option<SigEntry> {
    Some(SigEntry {
        manifest: row.digest?,
        key_id: row.key_id,
        key_version: row.key_version,
        algorithm: row.algorithm,
        created: row.created,
    })
}

impl SignatureIndex {
    pub fn new(meta: Metadata) -> Self {
        SignatureIndex { meta }
    }

    /// The signature manifests of `subject` in `repo`, oldest first.
    pub async fn entries(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> RegistryResult<Vec<SigEntry>> {
        Ok(self
            .meta
            .signatures(repo, subject)
            .await?
            .into_iter()
            .filter_map(entry_of)
            .collect())
    }

    /// Whether `subject` has a signature made with `key_id` in `repo`.
    pub async fn signed_by(
        &self,
        repo: &RepoName,
        subject: &Digest,
        key_id: &str,
    ) -> RegistryResult<bool> {
        Ok(self
            .entries(repo, subject)
            .await?
            .iter()
            .any(|e| e.key_id.as_deref() == Some(key_id)))
    }

    /// The artifact JSON's `signature`: the newest signature in `repo` with
    /// `key_id` when given and present, else the newest one found.
    pub async fn summary(
        &self,
        repo: &RepoName,
        subject: &Digest,
        key_id: Option<&str>,
    ) -> RegistryResult<Option<SignatureSummary>> {
        let list = self.entries(repo, subject).await?;
        Ok(summarize(&list, subject, key_id))
    }

    /// [`summary`](Self::summary) of each of `keys`, in one query per
    /// 200 keys; a key without signatures is absent.
    pub async fn summaries(
        &self,
        keys: &[(RepoName, Digest)],
        key_id: Option<&str>,
    ) -> RegistryResult<HashMap<(RepoName, Digest), SignatureSummary>> {
        let rows = self.meta.signatures_of_many(keys).await?;
        let mut out = HashMap::new();
        for (repo, subject) in keys {
            let Some(list) = rows.get(&(repo.to_string(), subject.to_string())) else {
                continue;
            };
            let list: Vec<SigEntry> = list.iter().cloned().filter_map(entry_of).collect();
            if let Some(s) = summarize(&list, subject, key_id) {
                out.insert((repo.clone(), subject.clone()), s);
            }
        }
        Ok(out)
    }
}

/// The newest entry by `key_id`, else the newest with a key, else the
/// newest.
fn summarize(
    list: &[SigEntry],
    subject: &Digest,
    key_id: Option<&str>,
) -> Option<SignatureSummary> {
    let e = key_id
        .and_then(|k| list.iter().rev().find(|e| e.key_id.as_deref() == Some(k)))
        .or_else(|| list.iter().rev().find(|e| e.key_id.is_some()))
        .or_else(|| list.last())?;
    Some(SignatureSummary {
        key_id: e.key_id.clone(),
        key_version: e.key_version,
        algorithm: e.algorithm.clone(),
        manifest_digest: e.manifest.to_string(),
        tag: cosign::signature_tag(subject),
        signed_at: e.created.clone(),
    })
}

impl ManifestDeriver for SignatureIndex {
    fn derive(&self, e: &ManifestStored) -> Result<Vec<DerivedRow>, String> {
        Ok(derive_rows(e))
    }
}

/// The signature row of a manifest, if it is a signature.
fn derive_rows(e: &ManifestStored) -> Vec<DerivedRow> {
    {
        match classify(e.tag.as_ref(), &e.digest, &e.manifest) {
            Some((subject, entry)) => vec![DerivedRow::Signature(SignatureRow {
                digest: None,
                subject,
                key_id: entry.key_id,
                key_version: entry.key_version,
                algorithm: entry.algorithm,
                created: entry.created,
            })],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Descriptor;

    fn sig_manifest(subject: &Digest, key: &str) -> (Digest, ParsedManifest) {
        let layer = cosign::signature_layer(&Digest::of(b"p"), 1, "c2ln", None);
        let subj = Descriptor {
            media_type: crate::oci::media::OCI_MANIFEST.into(),
            digest: subject.clone(),
            size: 1,
            artifact_type: None,
            annotations: None,
            platform: None,
        };
        let note = cosign::SignerNote {
            key_id: key.into(),
            key_version: 3,
            algorithm: "ed25519",
            created: "t".into(),
        };
        let bytes = cosign::signature_manifest(&[layer], subj, &note);
        (
            Digest::of(&bytes),
            ParsedManifest::parse(&bytes, None).unwrap(),
        )
    }

    fn entry(d: &Digest, key: Option<&str>) -> SigEntry {
        SigEntry {
            manifest: d.clone(),
            key_id: key.map(str::to_string),
            key_version: Some(3),
            algorithm: None,
            created: None,
        }
    }

    fn stored(tag: Option<Tag>, digest: Digest, manifest: ParsedManifest) -> ManifestStored {
        ManifestStored {
            repo: RepoName::parse("r").unwrap(),
            size: 1,
            digest,
            manifest,
            tag,
        }
    }

    #[test]
    fn a_signature_manifest_derives_its_row() {
        let a = Digest::of(b"artifact");
        let (d1, m1) = sig_manifest(&a, "vault:transit/k");
        let rows = derive_rows(&stored(None, d1, m1));
        let [DerivedRow::Signature(row)] = rows.as_slice() else {
            panic!("one signature row expected: {rows:?}");
        };
        assert_eq!(row.subject, a);
        assert_eq!(row.key_id.as_deref(), Some("vault:transit/k"));
        assert_eq!(row.key_version, Some(3));
    }

    #[test]
    fn the_summary_prefers_the_newest_signature_by_the_key() {
        let a = Digest::of(b"artifact");
        let (d1, d2, d3) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
        let list = [
            entry(&d1, Some("k")),
            entry(&d2, Some("other")),
            entry(&d3, None),
        ];
        let s = summarize(&list, &a, Some("k")).unwrap();
        assert_eq!(s.manifest_digest, d1.to_string());
        assert_eq!(s.tag, cosign::signature_tag(&a));
        // No signature by the key: the newest with a key.
        let s = summarize(&list, &a, Some("absent")).unwrap();
        assert_eq!(s.manifest_digest, d2.to_string());
        assert!(summarize(&[], &a, None).is_none());
    }

    #[test]
    fn non_signatures_are_ignored() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"a","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        let m = ParsedManifest::parse(body, None).unwrap();
        let d = Digest::of(body);
        let tag = Tag::parse(&cosign::signature_tag(&d)).unwrap();
        assert!(derive_rows(&stored(Some(tag), d, m)).is_empty());
    }
}
