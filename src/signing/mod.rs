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
//!   [`index`] the in-memory signature index, keyed by (repository,
//!   digest): a signature counts only in its own repository.
//! - [`SigningService`] (`service`: signing and storing; `records`:
//!   listing and verifying) ties them to the registry. Every manifest with the
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
mod records;
mod service;
pub mod vault;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{parse_duration, ConfigError};
use crate::oci::{media, ManifestKind, ParsedManifest};
use crate::registry::RegistryError;

pub use index::{SignatureIndex, SignatureSummary};
pub use records::{CheckedSignature, SignatureRecord, Verification};
pub use service::{Prepared, SignReport, SigningService};
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

fn internal(e: impl std::fmt::Display) -> SigningError {
    SigningError::Registry(RegistryError::Internal(e.to_string()))
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
