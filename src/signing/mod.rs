//! Signing of eBPF artifacts, cosign-compatible, with a key held in Vault
//! Transit (or OpenBao) or in a local key file.
//!
//! - [`Signer`] is the abstraction over where the private key lives:
//!   [`vault::VaultSigner`] (`BPF_REGISTRY_SIGNER=vault`) or
//!   [`local::LocalSigner`] (`BPF_REGISTRY_SIGNER=key`). It signs bytes and
//!   lists the public key of every key version.
//! - [`cosign`] is the stored layout: the simple-signing payload and the
//!   signature manifest, tagged `sha256-<hex>.sig` and a referrer of the
//!   signed manifest.
//! - [`verify`] holds public keys and the verdict on one signature;
//!   [`index`] the in-memory signature index.
//! - [`SigningService`] ties them to the registry. Every manifest with the
//!   eBPF `artifactType` (image manifests, and the per-version index of a
//!   multi-platform version) is signed **before** it is stored, whether it
//!   comes through `POST /artifacts` or an OCI push: the payload names the
//!   manifest digest, which is known from its bytes, so the order is sign →
//!   store the signature → store the manifest (and its tag). When the signer
//!   fails, the manifest is not stored and the caller answers 503 (fail
//!   closed): `POST /artifacts` signs (`prepare`) before it writes even the
//!   layer and config blobs; for an OCI push, the blobs the client uploaded
//!   before stay until garbage collection, as for any rejected push. When
//!   storing the manifest fails, the signature is removed.
//!
//! This module sits between `registry` (which it uses) and `artifacts`
//! (which uses it); it knows nothing of HTTP.

pub mod cli;
pub mod cosign;
pub mod index;
pub mod local;
pub mod vault;
pub mod verify;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use crate::config::{parse_duration, ConfigError};
use crate::oci::{
    media, Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag,
};
use crate::registry::{ManifestStored, Registry, RegistryError};

pub use index::{SignatureIndex, SignatureSummary};
pub use verify::{Algorithm, KeySet, PublicKey, Verdict};

/// A boxed `Send` future (the signer trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A secret string: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A signature as a signer returns it.
#[derive(Debug, Clone)]
pub struct RawSignature {
    pub bytes: Vec<u8>,
    /// The key version that signed (always 1 for a local key).
    pub key_version: u32,
}

/// Why a signer failed.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The signer could not be reached or answered with a server error
    /// (after the retries).
    #[error("{0}")]
    Unavailable(String),
    /// The signer refused (wrong token, missing policy, unknown key).
    #[error("{0}")]
    Refused(String),
    /// The signer answered something unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Where the private key lives.
pub trait Signer: Send + Sync {
    /// Stable id of the key, recorded with each signature
    /// (`vault:<mount>/<key>`, or `key:sha256:<fingerprint>`).
    fn key_id(&self) -> &str;
    /// Signs `payload` with the current key version.
    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<RawSignature, SignerError>>;
    /// The public keys of every version; `refresh` skips any cache.
    fn public_keys(&self, refresh: bool) -> BoxFuture<'_, Result<Arc<KeySet>, SignerError>>;
}

/// Errors of the signing service.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing is not configured on this registry (BPF_REGISTRY_SIGNER=none)")]
    Disabled,
    #[error("the signer is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<SignerError> for SigningError {
    fn from(e: SignerError) -> Self {
        SigningError::Unavailable(e.to_string())
    }
}

impl From<SigningError> for crate::error::OciError {
    fn from(e: SigningError) -> Self {
        use crate::error::{OciError, OciErrorCode};
        match e {
            SigningError::Registry(r) => r.into(),
            SigningError::NotFound(m) => OciError::new(OciErrorCode::ManifestUnknown, m),
            SigningError::Disabled | SigningError::Unavailable(_) => OciError::new(
                OciErrorCode::Unavailable,
                "eBPF artifact manifests are signed when stored and the signer is unavailable; nothing was stored, retry later",
            ),
        }
    }
}

impl From<SigningError> for crate::artifacts::ArtifactError {
    fn from(e: SigningError) -> Self {
        use crate::artifacts::ArtifactError;
        match e {
            SigningError::Registry(r) => ArtifactError::Registry(r),
            SigningError::NotFound(m) => ArtifactError::NotFound(m),
            SigningError::Disabled => ArtifactError::SigningUnavailable(e.to_string()),
            SigningError::Unavailable(m) => ArtifactError::SigningUnavailable(m),
        }
    }
}

// ---- configuration ---------------------------------------------------------

/// `BPF_REGISTRY_SIGNER` and what it needs.
#[derive(Debug, Clone, Default)]
pub enum SignerConfig {
    #[default]
    None,
    Vault(vault::VaultConfig),
    /// A PEM PKCS#8 private key file.
    Key(PathBuf),
}

/// The signing settings of [`crate::config::Config`].
#[derive(Debug, Clone, Default)]
pub struct SigningConfig {
    pub signer: SignerConfig,
}

fn is_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl SigningConfig {
    /// Reads the signing variables; `get` answers `None` for unset or empty.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<SigningConfig, ConfigError> {
        let err = |var: &'static str, message: String| ConfigError { var, message };
        let signer = match get("BPF_REGISTRY_SIGNER")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") => SignerConfig::None,
            Some("key") => {
                let path = get("BPF_REGISTRY_SIGNING_KEY").ok_or_else(|| {
                    err(
                        "BPF_REGISTRY_SIGNING_KEY",
                        "required when BPF_REGISTRY_SIGNER=key: the path of a PEM PKCS#8 private key".into(),
                    )
                })?;
                SignerConfig::Key(PathBuf::from(path.trim()))
            }
            Some("vault") => {
                let addr = get("BPF_REGISTRY_VAULT_ADDR")
                    .or_else(|| get("VAULT_ADDR"))
                    .ok_or_else(|| {
                        err(
                            "BPF_REGISTRY_VAULT_ADDR",
                            "required when BPF_REGISTRY_SIGNER=vault (or set VAULT_ADDR)".into(),
                        )
                    })?;
                let addr = addr.trim().trim_end_matches('/').to_string();
                let rest = addr
                    .strip_prefix("http://")
                    .or_else(|| addr.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(err(
                        "BPF_REGISTRY_VAULT_ADDR",
                        format!("invalid address {addr:?}: expected http(s)://host:port"),
                    ));
                }
                let token = get("BPF_REGISTRY_VAULT_TOKEN")
                    .or_else(|| get("VAULT_TOKEN"))
                    .map(|t| t.trim().to_string())
                    .ok_or_else(|| {
                        err(
                            "BPF_REGISTRY_VAULT_TOKEN",
                            "required when BPF_REGISTRY_SIGNER=vault (or set VAULT_TOKEN)".into(),
                        )
                    })?;
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err(
                        "BPF_REGISTRY_VAULT_TOKEN",
                        "the token must be printable ASCII without spaces".into(),
                    ));
                }
                let mount = get("BPF_REGISTRY_VAULT_TRANSIT_MOUNT")
                    .map(|m| m.trim().trim_matches('/').to_string())
                    .unwrap_or_else(|| "transit".into());
                if !mount.split('/').all(is_path_segment) {
                    return Err(err(
                        "BPF_REGISTRY_VAULT_TRANSIT_MOUNT",
                        format!(
                            "invalid mount path {mount:?}: expected segments of [A-Za-z0-9._-]"
                        ),
                    ));
                }
                let key = get("BPF_REGISTRY_VAULT_KEY")
                    .map(|k| k.trim().to_string())
                    .unwrap_or_else(|| "bpf-registry".into());
                if !is_path_segment(&key) {
                    return Err(err(
                        "BPF_REGISTRY_VAULT_KEY",
                        format!("invalid key name {key:?}: expected [A-Za-z0-9._-]"),
                    ));
                }
                let ca_cert = get("BPF_REGISTRY_VAULT_CACERT")
                    .or_else(|| get("VAULT_CACERT"))
                    .map(|p| PathBuf::from(p.trim()));
                let timeout = match get("BPF_REGISTRY_VAULT_TIMEOUT") {
                    None => Duration::from_secs(5),
                    Some(v) => parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                        err(
                            "BPF_REGISTRY_VAULT_TIMEOUT",
                            format!("invalid duration {v:?}: expected e.g. 500ms, 5s"),
                        )
                    })?,
                };
                SignerConfig::Vault(vault::VaultConfig {
                    addr,
                    token: Secret::new(token),
                    mount,
                    key,
                    ca_cert,
                    timeout,
                })
            }
            Some(other) => {
                return Err(err(
                    "BPF_REGISTRY_SIGNER",
                    format!("invalid signer {other:?}: expected none, vault or key"),
                ))
            }
        };
        Ok(SigningConfig { signer })
    }
}

/// `host[:port]` of a URL (`https://registry.example:8443/x` →
/// `registry.example:8443`), for the signed `docker-reference`.
pub fn registry_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    (!host.is_empty()).then(|| host.to_string())
}

/// Whether this registry signs a manifest: our eBPF artifacts (by
/// `artifactType` or config media type, as `artifacts::index` classifies
/// them) and the image index of a multi-platform version.
pub fn is_signable(m: &ParsedManifest) -> bool {
    match m.kind {
        ManifestKind::Image => {
            m.artifact_type.as_deref() == Some(media::BPF_ARTIFACT_TYPE)
                || m.config.as_ref().map(|c| c.media_type.as_str()) == Some(media::BPF_CONFIG)
        }
        ManifestKind::Index => m.artifact_type.as_deref() == Some(media::BPF_ARTIFACT_TYPE),
    }
}

// ---- the service -------------------------------------------------------------

/// One stored signature, as `GET /artifacts/{id}/signatures` lists it.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct CheckedSignature {
    #[serde(flatten)]
    pub record: SignatureRecord,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// `GET /artifacts/{id}/verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// True when at least one signature verifies with the configured key.
    pub verified: bool,
    pub key_id: Option<String>,
    pub signatures: Vec<CheckedSignature>,
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
    registry: Arc<Registry>,
    signer: Option<Arc<dyn Signer>>,
    index: Arc<SignatureIndex>,
    /// Put before the repository in the signed `docker-reference`.
    registry_host: Option<String>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn internal(e: impl std::fmt::Display) -> SigningError {
    SigningError::Registry(RegistryError::Body(format!("internal: {e}")))
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
        let index = Arc::new(SignatureIndex::new());
        let started = Instant::now();
        let found = index
            .rebuild(&registry)
            .await
            .map_err(|e| format!("cannot index the signatures in the store: {e}"))?;
        registry.add_listener(index.clone());
        let svc = SigningService {
            registry,
            signer,
            index,
            registry_host,
        };
        match &svc.signer {
            None => tracing::info!(signatures = found, "signing off"),
            Some(s) => match s.public_keys(false).await {
                Ok(k) => tracing::info!(
                    key_id = %k.key_id,
                    algorithm = k.algorithm.as_str(),
                    latest_version = k.latest,
                    signatures = found,
                    duration_ms = started.elapsed().as_millis() as u64,
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

    pub fn enabled(&self) -> bool {
        self.signer.is_some()
    }

    pub fn key_id(&self) -> Option<&str> {
        self.signer.as_deref().map(|s| s.key_id())
    }

    pub fn index(&self) -> &Arc<SignatureIndex> {
        &self.index
    }

    /// The artifact JSON's `signature` of a manifest.
    pub fn summary(&self, digest: &Digest) -> Option<SignatureSummary> {
        self.index.summary(digest, self.key_id())
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
            && !self.index.signed_by(&digest, signer.key_id());
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
        let sig = match signer.sign(&payload).await {
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
    /// manifest as a referrer of the signed manifest, tagged `.sig`.
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

    /// Undoes `store` after the signed manifest could not be stored.
    async fn detach(&self, repo: &RepoName, a: Attached) {
        if let Err(e) = self
            .registry
            .delete_manifest(repo, &Reference::Digest(a.signature.clone()))
            .await
        {
            tracing::warn!(repo = %repo, signature = %a.signature, error = %e, "cannot remove the signature of a manifest that was not stored");
        }
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
                if self.index.signed_by(&digest, signer.key_id()) {
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

    /// The signature manifests of `subject`: its cosign referrers and what
    /// its `.sig` tag names.
    async fn signature_manifests(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<SigningConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SigningConfig::from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn signer_none_by_default() {
        assert!(matches!(cfg(&[]).unwrap().signer, SignerConfig::None));
        assert_eq!(
            cfg(&[("BPF_REGISTRY_SIGNER", "pgp")]).unwrap_err().var,
            "BPF_REGISTRY_SIGNER"
        );
    }

    #[test]
    fn vault_settings_with_fallbacks() {
        let c = cfg(&[
            ("BPF_REGISTRY_SIGNER", "vault"),
            ("VAULT_ADDR", "http://127.0.0.1:8200/"),
            ("VAULT_TOKEN", "s.tok"),
        ])
        .unwrap();
        let SignerConfig::Vault(v) = c.signer else {
            panic!("vault")
        };
        assert_eq!(v.addr, "http://127.0.0.1:8200");
        assert_eq!(v.token.expose(), "s.tok");
        assert_eq!(
            (v.mount.as_str(), v.key.as_str()),
            ("transit", "bpf-registry")
        );
        assert_eq!(v.key_id(), "vault:transit/bpf-registry");
        assert_eq!(v.timeout, Duration::from_secs(5));
        let c = cfg(&[
            ("BPF_REGISTRY_SIGNER", "vault"),
            ("BPF_REGISTRY_VAULT_ADDR", "https://vault:8200"),
            ("VAULT_ADDR", "http://ignored"),
            ("BPF_REGISTRY_VAULT_TOKEN", "t"),
            ("BPF_REGISTRY_VAULT_TRANSIT_MOUNT", "/team/transit/"),
            ("BPF_REGISTRY_VAULT_KEY", "ebpf"),
            ("BPF_REGISTRY_VAULT_TIMEOUT", "750ms"),
        ])
        .unwrap();
        let SignerConfig::Vault(v) = c.signer else {
            panic!("vault")
        };
        assert_eq!(v.addr, "https://vault:8200");
        assert_eq!(v.key_id(), "vault:team/transit/ebpf");
        assert_eq!(v.timeout, Duration::from_millis(750));
        for (var, pairs) in [
            ("BPF_REGISTRY_VAULT_ADDR", vec![("VAULT_TOKEN", "t")]),
            ("BPF_REGISTRY_VAULT_TOKEN", vec![("VAULT_ADDR", "http://v")]),
            (
                "BPF_REGISTRY_VAULT_ADDR",
                vec![("VAULT_ADDR", "vault:8200"), ("VAULT_TOKEN", "t")],
            ),
            (
                "BPF_REGISTRY_VAULT_KEY",
                vec![
                    ("VAULT_ADDR", "http://v"),
                    ("VAULT_TOKEN", "t"),
                    ("BPF_REGISTRY_VAULT_KEY", "a/b"),
                ],
            ),
            (
                "BPF_REGISTRY_VAULT_TRANSIT_MOUNT",
                vec![
                    ("VAULT_ADDR", "http://v"),
                    ("VAULT_TOKEN", "t"),
                    ("BPF_REGISTRY_VAULT_TRANSIT_MOUNT", "a/../b"),
                ],
            ),
        ] {
            let mut p = pairs.clone();
            p.push(("BPF_REGISTRY_SIGNER", "vault"));
            assert_eq!(cfg(&p).unwrap_err().var, var, "{p:?}");
        }
        // The token never shows in the config's Debug.
        let c = cfg(&[
            ("BPF_REGISTRY_SIGNER", "vault"),
            ("VAULT_ADDR", "http://v"),
            ("VAULT_TOKEN", "hvs.very-secret"),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn key_settings() {
        assert_eq!(
            cfg(&[("BPF_REGISTRY_SIGNER", "key")]).unwrap_err().var,
            "BPF_REGISTRY_SIGNING_KEY"
        );
        let c = cfg(&[
            ("BPF_REGISTRY_SIGNER", "KEY"),
            ("BPF_REGISTRY_SIGNING_KEY", "/k.pem"),
        ])
        .unwrap();
        assert!(matches!(c.signer, SignerConfig::Key(p) if p == std::path::Path::new("/k.pem")));
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            registry_host("https://reg.example:8443/x").as_deref(),
            Some("reg.example:8443")
        );
        assert_eq!(registry_host("http://r").as_deref(), Some("r"));
        assert_eq!(registry_host("").as_deref(), None);
    }

    #[test]
    fn signable_matches_the_artifact_classifier() {
        let cases: [&[u8]; 4] = [
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.aegisflux.bpf.artifact.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.aegisflux.bpf.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.aegisflux.bpf.host-association.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
        ];
        for c in cases {
            let m = ParsedManifest::parse(c, None).unwrap();
            assert_eq!(
                is_signable(&m),
                crate::artifacts::index::is_artifact_manifest(&m),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","artifactType":"application/vnd.aegisflux.bpf.artifact.v1","manifests":[]}"#;
        assert!(is_signable(&ParsedManifest::parse(idx, None).unwrap()));
    }
}
