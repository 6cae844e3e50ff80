//! The in-memory index of signature manifests: (repository, signed
//! manifest digest) → the signature manifests in that repository that name
//! it. A signature counts only in its own repository (its payload names
//! the repository, and OCI referrers are per repository), so a manifest
//! signed in one repository and copied into another is unsigned there
//! until it is signed there. A cache like the artifact index:
//! kept current by listening to every manifest stored or deleted, rebuilt
//! at start-up from the `sha256-<hex>.sig` tags (cheap: one directory
//! listing per repository, one read per signature). It answers the
//! artifact JSON's `signature` field and "is this already signed?";
//! `/signatures` and `/verify` read the store itself.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use super::cosign::{self, annotations};
use crate::oci::{Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::registry::{ManifestListener, ManifestStored, Registry, RegistryResult};

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

/// A manifest in a repository.
type Key = (RepoName, Digest);

#[derive(Default)]
struct Inner {
    /// signed manifest → its signature manifests, oldest first
    by_subject: HashMap<Key, Vec<SigEntry>>,
    /// signature manifest → the digest it signs (in the same repository)
    subject_of: HashMap<Key, Digest>,
}

#[derive(Default)]
pub struct SignatureIndex {
    inner: RwLock<Inner>,
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

impl SignatureIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(inner: &mut Inner, repo: &RepoName, subject: Digest, entry: SigEntry) {
        inner
            .subject_of
            .insert((repo.clone(), entry.manifest.clone()), subject.clone());
        let list = inner.by_subject.entry((repo.clone(), subject)).or_default();
        list.retain(|e| e.manifest != entry.manifest);
        list.push(entry);
    }

    /// Records a manifest stored in `repo` if it is a signature.
    pub fn record(&self, repo: &RepoName, tag: Option<&Tag>, digest: &Digest, m: &ParsedManifest) {
        if let Some((subject, entry)) = classify(tag, digest, m) {
            Self::insert(&mut self.write(), repo, subject, entry);
        }
    }

    /// The signature manifests of `subject` in `repo`, oldest first.
    pub fn entries(&self, repo: &RepoName, subject: &Digest) -> Vec<SigEntry> {
        self.read()
            .by_subject
            .get(&(repo.clone(), subject.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `subject` has a signature made with `key_id` in `repo`.
    pub fn signed_by(&self, repo: &RepoName, subject: &Digest, key_id: &str) -> bool {
        self.read()
            .by_subject
            .get(&(repo.clone(), subject.clone()))
            .is_some_and(|l| l.iter().any(|e| e.key_id.as_deref() == Some(key_id)))
    }

    /// The artifact JSON's `signature`: the newest signature in `repo` with
    /// `key_id` when given and present, else the newest one found.
    pub fn summary(
        &self,
        repo: &RepoName,
        subject: &Digest,
        key_id: Option<&str>,
    ) -> Option<SignatureSummary> {
        let inner = self.read();
        let list = inner.by_subject.get(&(repo.clone(), subject.clone()))?;
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

    /// Rebuilds from the signature tags of every repository; returns the
    /// number of signature manifests found.
    pub async fn rebuild(&self, registry: &Registry) -> RegistryResult<usize> {
        let mut fresh = Inner::default();
        let mut found = 0;
        for repo in registry.all_repositories().await? {
            let tags = match registry.list_tags(&repo, None, None).await {
                Ok(page) => page.items,
                Err(_) => continue,
            };
            for t in tags {
                if cosign::digest_of_signature_tag(&t).is_none() {
                    continue;
                }
                let Ok(tag) = Tag::parse(&t) else { continue };
                let Some((digest, m)) =
                    read_manifest(registry, &repo, &Reference::Tag(tag.clone())).await
                else {
                    continue;
                };
                if let Some((subject, entry)) = classify(Some(&tag), &digest, &m) {
                    Self::insert(&mut fresh, &repo, subject, entry);
                    found += 1;
                }
            }
        }
        *self.write() = fresh;
        Ok(found)
    }
}

/// Resolves and parses a manifest; `None` when absent or unreadable.
pub(crate) async fn read_manifest(
    registry: &Registry,
    repo: &RepoName,
    reference: &Reference,
) -> Option<(Digest, ParsedManifest)> {
    let digest = registry.resolve(repo, reference).await.ok()?;
    let bytes = registry.manifest_bytes(&digest).await.ok()?;
    let m = ParsedManifest::parse(&bytes, None).ok()?;
    Some((digest, m))
}

impl ManifestListener for SignatureIndex {
    fn manifest_stored(&self, e: &ManifestStored) {
        self.record(&e.repo, e.tag.as_ref(), &e.digest, &e.manifest);
    }

    fn manifest_deleted(&self, repo: &RepoName, digest: &Digest, _m: Option<&ParsedManifest>) {
        let mut inner = self.write();
        if let Some(subject) = inner.subject_of.remove(&(repo.clone(), digest.clone())) {
            let subject = (repo.clone(), subject);
            let now_empty = match inner.by_subject.get_mut(&subject) {
                Some(list) => {
                    list.retain(|e| &e.manifest != digest);
                    list.is_empty()
                }
                None => false,
            };
            if now_empty {
                inner.by_subject.remove(&subject);
            }
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

    #[test]
    fn records_summarises_and_forgets() {
        let idx = SignatureIndex::new();
        let r = RepoName::parse("r").unwrap();
        let a = Digest::of(b"artifact");
        let (d1, m1) = sig_manifest(&a, "vault:transit/k");
        idx.record(&r, None, &d1, &m1);
        assert!(idx.signed_by(&r, &a, "vault:transit/k"));
        assert!(!idx.signed_by(&r, &a, "other"));
        let s = idx.summary(&r, &a, Some("vault:transit/k")).unwrap();
        assert_eq!(s.key_version, Some(3));
        assert_eq!(s.manifest_digest, d1.to_string());
        assert_eq!(s.tag, cosign::signature_tag(&a));
        idx.manifest_deleted(&r, &d1, None);
        assert!(idx.summary(&r, &a, None).is_none());
    }

    #[test]
    fn a_signature_counts_in_its_own_repository_only() {
        let idx = SignatureIndex::new();
        let (r, other) = (RepoName::parse("r").unwrap(), RepoName::parse("o").unwrap());
        let a = Digest::of(b"artifact");
        let (d1, m1) = sig_manifest(&a, "k");
        idx.record(&r, None, &d1, &m1);
        idx.record(&other, None, &d1, &m1);
        assert!(idx.signed_by(&other, &a, "k"));
        // Deleting the copy in `other` leaves `r` signed.
        idx.manifest_deleted(&other, &d1, None);
        assert!(!idx.signed_by(&other, &a, "k"));
        assert!(idx.signed_by(&r, &a, "k"));
        assert!(idx.summary(&r, &a, None).is_some());
    }

    #[test]
    fn non_signatures_are_ignored() {
        let idx = SignatureIndex::new();
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"a","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        let m = ParsedManifest::parse(body, None).unwrap();
        let d = Digest::of(body);
        let tag = Tag::parse(&cosign::signature_tag(&d)).unwrap();
        let r = RepoName::parse("r").unwrap();
        idx.record(&r, Some(&tag), &d, &m);
        assert!(idx.entries(&r, &d).is_empty());
    }
}
