//! The write side of signing: [`SigningService`] signs eBPF artifact
//! manifests before they are stored (fail closed), stores each signature
//! as a cosign signature manifest under the subject's `sha256-<hex>.sig`
//! tag in the same repository, backfills unsigned artifacts, and removes
//! signatures with their artifact.
//!
//! The `.sig` tag is read, extended and written back (cosign keeps every
//! signature as a layer of one tagged manifest): that read-modify-write
//! runs under a per-(repository, subject) lock, together with
//! the "already signed?" check and the store of the signed manifest, so
//! concurrent pushes of one manifest sign it once and no signature written
//! is ever dropped from the tag.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use super::{
    cosign, internal, is_signable, local, vault, KeySet, SignatureIndex, SignatureSummary, Signer,
    SignerConfig, SigningConfig, SigningError,
};
use crate::keyed_locks::{KeyedLockGuard, KeyedLocks};
use crate::oci::{
    media, Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag,
};
use crate::registry::{ManifestStored, Registry, RegistryError};

/// See `SigningService::lock_tag`; released in field order (the lease
/// first).
struct TagHold {
    _lease: crate::metadata::Lease,
    _local: KeyedLockGuard<(RepoName, Digest)>,
}

/// What `bpf-registry sign` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SignReport {
    pub signed: Vec<String>,
    pub already_signed: usize,
    /// Set when signing stopped early.
    pub error: Option<String>,
}

/// A signature made by [`SigningService::prepare`], not stored yet.
pub struct Prepared {
    subject: Descriptor,
    payload: Vec<u8>,
    signature: Vec<u8>,
    note: cosign::SignerNote,
    sign_us: u64,
}

/// A signature stored by `SigningService::store`, to undo it.
struct Attached {
    signature: Digest,
    tag: Tag,
    /// The manifest the signature tag named before (cosign appends layers).
    previous: Option<Bytes>,
}

pub struct SigningService {
    pub(super) registry: Arc<Registry>,
    pub(super) signer: Option<Arc<dyn Signer>>,
    index: Arc<SignatureIndex>,
    /// Put before the repository in the signed `docker-reference`.
    registry_host: Option<String>,
    /// Serializes the `.sig` tag of one (repository, subject).
    tag_locks: KeyedLocks<(RepoName, Digest)>,
    /// Where each signature's duration and failures are recorded.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl SigningService {
    /// Builds the signer (reading and checking a local key file), rebuilds
    /// the signature index and registers it with the registry. A Vault that
    /// cannot be reached now is logged, not fatal: creates answer 503 until
    /// it can. The error is a sentence for the operator.
    pub async fn start(
        config: &SigningConfig,
        registry: Arc<Registry>,
        registry_host: Option<String>,
    ) -> Result<Arc<SigningService>, String> {
        let signer: Option<Arc<dyn Signer>> = match &config.signer {
            SignerConfig::None => None,
            SignerConfig::Key(path) => {
                let p = path.clone();
                let s = tokio::task::spawn_blocking(move || local::LocalSigner::load(&p))
                    .await
                    .map_err(|e| e.to_string())??;
                Some(Arc::new(s))
            }
            SignerConfig::Vault(v) => Some(Arc::new(vault::VaultSigner::new(v)?)),
        };
        // Its rows are derived by the deriver `open_registry` registers.
        let index = Arc::new(SignatureIndex::new(registry.metadata().clone()));
        let svc = SigningService {
            registry,
            signer,
            index,
            registry_host,
            tag_locks: KeyedLocks::default(),
            metrics: std::sync::OnceLock::new(),
        };
        match &svc.signer {
            None => tracing::info!("signing off"),
            Some(s) => match s.public_keys(false).await {
                Ok(k) => tracing::info!(
                    key_id = %k.key_id,
                    algorithm = k.algorithm.as_str(),
                    latest_version = k.latest,
                    "signing on"
                ),
                Err(e) => tracing::warn!(
                    key_id = s.key_id(),
                    error = %e,
                    "signing on but the signer cannot be reached: artifact creation answers 503 until it can"
                ),
            },
        }
        Ok(Arc::new(svc))
    }

    /// Records every signature from now on in `metrics`
    /// (`registry_signing_*`); the first call wins.
    pub fn record_metrics_in(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    pub fn enabled(&self) -> bool {
        self.signer.is_some()
    }

    pub fn key_id(&self) -> Option<&str> {
        self.signer.as_deref().map(|s| s.key_id())
    }

    pub fn index(&self) -> &Arc<SignatureIndex> {
        &self.index
    }

    /// The artifact JSON's `signature` of a manifest in `repo`.
    pub async fn summary(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> crate::registry::RegistryResult<Option<SignatureSummary>> {
        self.index.summary(repo, digest, self.key_id()).await
    }

    /// [`summary`](Self::summary) of many manifests at once.
    pub async fn summaries(
        &self,
        keys: &[(RepoName, Digest)],
    ) -> crate::registry::RegistryResult<
        std::collections::HashMap<(RepoName, Digest), SignatureSummary>,
    > {
        self.index.summaries(keys, self.key_id()).await
    }

    /// Holds the `.sig` tag of `subject` in `repo` (see the module doc).
    /// Across replicas too: the in-process lock, then a lease on the
    /// (repository, subject) pair (PostgreSQL), so "signed once" and the
    /// `.sig` read-modify-write hold however many replicas serve pushes.
    async fn lock_tag(&self, repo: &RepoName, subject: &Digest) -> Result<TagHold, SigningError> {
        let local = self.tag_locks.lock(&(repo.clone(), subject.clone())).await;
        let lease = self
            .registry
            .metadata()
            .lease(&format!("sig:{repo}@{subject}"))
            .await
            .map_err(RegistryError::from)?;
        Ok(TagHold {
            _lease: lease,
            _local: local,
        })
    }

    async fn signed_here(&self, repo: &RepoName, subject: &Digest) -> Result<bool, SigningError> {
        match &self.signer {
            Some(s) => Ok(self.index.signed_by(repo, subject, s.key_id()).await?),
            None => Ok(false),
        }
    }

    fn docker_reference(&self, repo: &RepoName) -> String {
        match &self.registry_host {
            Some(h) => format!("{h}/{repo}"),
            None => repo.to_string(),
        }
    }

    /// Stores a manifest like `Registry::put_manifest`, signing it first
    /// when it is an eBPF artifact and a signer is configured (and it is
    /// not already signed with this key). Nothing is stored when signing
    /// fails.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestStored, SigningError> {
        let pending = self.prepare(repo, reference, content_type, &body).await?;
        self.put_prepared(pending, repo, reference, content_type, body)
            .await
    }

    /// Signs a manifest that is about to be stored, without storing
    /// anything (so a caller can sign before it writes the manifest's
    /// blobs). `None` when there is nothing to sign: no signer, not an eBPF
    /// artifact, already signed with this key, or a manifest the registry
    /// will refuse anyway.
    pub async fn prepare(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Prepared>, SigningError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let size = body.len() as u64;
        let digest = Digest::of(body);
        let signable = size <= self.registry.limits().max_manifest_bytes
            && !matches!(reference, Reference::Digest(want) if want != &digest)
            && !self.index.signed_by(repo, &digest, signer.key_id()).await?;
        let parsed = if signable {
            ParsedManifest::parse(body, content_type)
                .ok()
                .filter(is_signable)
        } else {
            None
        };
        let Some(m) = parsed else {
            return Ok(None);
        };
        let subject = Descriptor {
            media_type: m.media_type.clone(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            platform: None,
        };
        Ok(Some(self.sign(signer.as_ref(), repo, subject).await?))
    }

    /// Stores a manifest signed by `prepare`: the signature first, then the
    /// manifest (the signature is removed again if that fails).
    pub async fn put_prepared(
        &self,
        pending: Option<Prepared>,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestStored, SigningError> {
        let Some(pending) = pending else {
            return Ok(self
                .registry
                .put_manifest(repo, reference, content_type, body)
                .await?);
        };
        if pending.subject.digest != Digest::of(&body) {
            return Err(internal("the prepared signature is for another manifest"));
        }
        // Signed once: a concurrent push of the same manifest may have
        // signed it while this one was signing.
        let _tag = self.lock_tag(repo, &pending.subject.digest).await?;
        if self.signed_here(repo, &pending.subject.digest).await? {
            return Ok(self
                .registry
                .put_manifest(repo, reference, content_type, body)
                .await?);
        }
        let attached = self.store(repo, pending).await?;
        match self
            .registry
            .put_manifest(repo, reference, content_type, body)
            .await
        {
            Ok(stored) => Ok(stored),
            Err(e) => {
                self.detach(repo, attached).await;
                Err(e.into())
            }
        }
    }

    /// Signs the simple-signing payload naming `subject`.
    async fn sign(
        &self,
        signer: &dyn Signer,
        repo: &RepoName,
        subject: Descriptor,
    ) -> Result<Prepared, SigningError> {
        let started = Instant::now();
        let payload =
            cosign::Payload::new(&self.docker_reference(repo), &subject.digest).to_bytes();
        let signed = signer.sign(&payload).await;
        if let Some(m) = self.metrics.get() {
            // The kind is the key id's prefix (`vault:...`, `key:...`).
            let kind = match signer.key_id().split(':').next() {
                Some("vault") => "vault",
                Some("key") => "key",
                _ => "other",
            };
            m.signing_attempt(kind, started.elapsed(), signed.is_ok());
        }
        let sig = match signed {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    repo = %repo,
                    digest = %subject.digest,
                    key_id = signer.key_id(),
                    error = %e,
                    "signing failed; the manifest is not stored"
                );
                return Err(e.into());
            }
        };
        let keys = signer.public_keys(false).await?;
        Ok(Prepared {
            subject,
            payload,
            signature: sig.bytes,
            note: cosign::SignerNote {
                key_id: signer.key_id().to_string(),
                key_version: sig.key_version,
                algorithm: keys.algorithm.as_str(),
                created: now_rfc3339(),
            },
            sign_us: started.elapsed().as_micros() as u64,
        })
    }

    /// Stores a signature: payload and config blobs, then the signature
    /// manifest as a referrer of the signed manifest, tagged `.sig`. The
    /// caller holds [`Self::lock_tag`] for the subject.
    async fn store(&self, repo: &RepoName, p: Prepared) -> Result<Attached, SigningError> {
        let started = Instant::now();
        let payload_size = p.payload.len() as u64;
        let payload_digest = self
            .registry
            .put_small_blob(repo, Bytes::from(p.payload))
            .await?;
        self.registry
            .put_small_blob(repo, Bytes::from_static(cosign::CONFIG_BYTES))
            .await?;
        let tag = Tag::parse(&cosign::signature_tag(&p.subject.digest)).map_err(internal)?;
        let signature_b64 = base64::engine::general_purpose::STANDARD.encode(&p.signature);
        // cosign keeps every signature of a manifest as a layer of the
        // tagged signature manifest: keep what is there, add ours.
        let mut layers = Vec::new();
        let mut previous = None;
        if let Ok(d) = self
            .registry
            .resolve(repo, &Reference::Tag(tag.clone()))
            .await
        {
            if let Ok(bytes) = self.registry.manifest_bytes(&d).await {
                if let Ok(m) = ParsedManifest::parse(&bytes, None) {
                    layers.extend(
                        m.layers
                            .into_iter()
                            .filter(|l| l.media_type == cosign::SIMPLE_SIGNING_MEDIA_TYPE),
                    );
                }
                previous = Some(bytes);
            }
        }
        layers.push(cosign::signature_layer(
            &payload_digest,
            payload_size,
            &signature_b64,
            Some(&p.note),
        ));
        let subject_digest = p.subject.digest.clone();
        let manifest = cosign::signature_manifest(&layers, p.subject, &p.note);
        let stored = self
            .registry
            .put_manifest(
                repo,
                &Reference::Tag(tag.clone()),
                Some(media::OCI_MANIFEST),
                Bytes::from(manifest),
            )
            .await?;
        tracing::info!(
            repo = %repo,
            digest = %subject_digest,
            signature = %stored.digest,
            key_id = %p.note.key_id,
            key_version = p.note.key_version,
            sign_us = p.sign_us,
            store_us = started.elapsed().as_micros() as u64,
            "manifest signed"
        );
        Ok(Attached {
            signature: stored.digest,
            tag,
            previous,
        })
    }

    /// Undoes `store` after the signed manifest could not be stored (the
    /// caller still holds the tag lock).
    async fn detach(&self, repo: &RepoName, a: Attached) {
        // The tag goes back to the previous signatures first: a crash
        // between the two steps must never leave them untagged (garbage
        // collection would take them); the new signature is then untagged
        // and deleted by digest.
        if let Some(bytes) = a.previous {
            if let Err(e) = self
                .registry
                .put_manifest(
                    repo,
                    &Reference::Tag(a.tag),
                    Some(media::OCI_MANIFEST),
                    bytes,
                )
                .await
            {
                tracing::warn!(repo = %repo, error = %e, "cannot restore the previous signature tag");
            }
        }
        if let Err(e) = self
            .registry
            .delete_manifest(repo, &Reference::Digest(a.signature.clone()))
            .await
        {
            tracing::warn!(repo = %repo, signature = %a.signature, error = %e, "cannot remove the signature of a manifest that was not stored");
        }
    }

    /// Signs every stored eBPF artifact (and tagged version index) that has
    /// no signature with the configured key. Stops at the first failure.
    pub async fn sign_unsigned(&self) -> Result<SignReport, SigningError> {
        let signer = self.signer.clone().ok_or(SigningError::Disabled)?;
        let mut report = SignReport::default();
        for repo in self.registry.all_repositories().await? {
            let tagged: HashSet<Digest> =
                self.registry.tag_map(&repo).await?.into_values().collect();
            for digest in self.registry.manifest_digests(&repo).await? {
                let Ok(bytes) = self.registry.manifest_bytes(&digest).await else {
                    continue;
                };
                let Ok(m) = ParsedManifest::parse(&bytes, None) else {
                    continue;
                };
                if !is_signable(&m) || (m.kind == ManifestKind::Index && !tagged.contains(&digest))
                {
                    continue;
                }
                let _tag = self.lock_tag(&repo, &digest).await?;
                if self
                    .index
                    .signed_by(&repo, &digest, signer.key_id())
                    .await?
                {
                    report.already_signed += 1;
                    continue;
                }
                let subject = Descriptor {
                    media_type: m.media_type.clone(),
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    artifact_type: None,
                    annotations: None,
                    platform: None,
                };
                let stored = match self.sign(signer.as_ref(), &repo, subject).await {
                    Ok(p) => self.store(&repo, p).await,
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(_) => report.signed.push(format!("{repo}@{digest}")),
                    Err(e) => {
                        report.error = Some(format!("{repo}@{digest}: {e}"));
                        return Ok(report);
                    }
                }
            }
        }
        Ok(report)
    }

    /// The public key of `version` (default: the latest) of the configured key.
    pub async fn public_key(
        &self,
        version: Option<u32>,
    ) -> Result<(Arc<KeySet>, u32), SigningError> {
        let signer = self.signer.as_ref().ok_or(SigningError::Disabled)?;
        let mut keys = signer.public_keys(false).await?;
        let want = version.unwrap_or(keys.latest);
        if !keys.versions.contains_key(&want) {
            keys = signer.public_keys(true).await?;
        }
        let want = version.unwrap_or(keys.latest);
        if !keys.versions.contains_key(&want) {
            return Err(SigningError::NotFound(format!(
                "key {} has no version {want}",
                keys.key_id
            )));
        }
        Ok((keys, want))
    }

    /// Removes the signature manifests of `subject` (and its `.sig` tag).
    pub async fn delete_signatures(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<(), SigningError> {
        let _tag = self.lock_tag(repo, subject).await?;
        let (manifests, _) = self.signature_manifests(repo, subject).await?;
        for d in manifests {
            match self
                .registry
                .delete_manifest(repo, &Reference::Digest(d))
                .await
            {
                Ok(()) | Err(RegistryError::ManifestUnknown(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
