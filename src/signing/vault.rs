//! The Vault Transit signer (`BPF_REGISTRY_SIGNER=vault`), for HashiCorp
//! Vault and OpenBao alike: the private key never leaves Vault.
//!
//! - sign: `POST /v1/<mount>/sign/<key>/sha2-256` (ECDSA P-256; Vault hashes
//!   the input with SHA-256 and returns an ASN.1 DER signature) or
//!   `POST /v1/<mount>/sign/<key>` (Ed25519, which signs the message
//!   itself), body `{"input": base64(payload)}`, answer
//!   `data.signature = "vault:v<N>:<base64>"`;
//! - public keys: `GET /v1/<mount>/keys/<key>`, `data.keys` maps every
//!   version to its `public_key` (PEM for ECDSA, base64 of the 32 raw bytes
//!   for Ed25519), `data.latest_version`, `data.type`.
//!
//! Every request has a connect timeout and a total timeout; failures that
//! may pass (connection refused, timeouts, 429, 5xx) are retried twice with
//! a short backoff, others (403 wrong token, 400 unknown key) are not. The
//! token is sent in `X-Vault-Token` and never logged or printed. Public
//! keys are cached for five minutes and re-read when a signature names a
//! version the cache does not know (after a rotation). Each signature is
//! checked against the public key before it is used.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use vault_http as reqwest;

use super::verify::{Algorithm, KeySet, PublicKey};
use super::{BoxFuture, RawSignature, Secret, Signer, SignerError};

const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(100);
const KEYS_TTL: Duration = Duration::from_secs(300);

/// Where and how to reach Vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `http(s)://host:port`, no trailing slash.
    pub addr: String,
    pub token: Secret,
    /// The Transit mount path (`transit`, or `a/b` for a nested mount).
    pub mount: String,
    pub key: String,
    /// Extra CA certificate (PEM) to trust, for a Vault with a private CA.
    pub ca_cert: Option<PathBuf>,
    /// Total time one HTTP request may take.
    pub timeout: Duration,
}

impl VaultConfig {
    /// The key id recorded with every signature: `vault:<mount>/<key>`.
    pub fn key_id(&self) -> String {
        format!("vault:{}/{}", self.mount, self.key)
    }
}

pub struct VaultSigner {
    client: reqwest::Client,
    /// `<addr>/v1/<mount>`
    base: String,
    mount: String,
    key: String,
    token: Secret,
    key_id: String,
    cached: RwLock<Option<(Arc<KeySet>, Instant)>>,
}

impl std::fmt::Debug for VaultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultSigner({} at {})", self.key_id, self.base)
    }
}

impl VaultSigner {
    pub fn new(cfg: &VaultConfig) -> Result<VaultSigner, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .timeout(cfg.timeout)
            .user_agent(concat!("bpf-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the Vault CA certificate {}: {e}",
                    path.display()
                )
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                format!(
                    "the Vault CA certificate {} is not PEM: {e}",
                    path.display()
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the Vault HTTP client: {e}"))?;
        Ok(VaultSigner {
            client,
            base: format!("{}/v1/{}", cfg.addr.trim_end_matches('/'), cfg.mount),
            mount: cfg.mount.clone(),
            key: cfg.key.clone(),
            token: cfg.token.clone(),
            key_id: cfg.key_id(),
            cached: RwLock::new(None),
        })
    }

    /// One Vault call with retries; the JSON answer's `data`.
    async fn call(
        &self,
        what: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SignerError> {
        let url = format!("{}/{path}", self.base);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(BACKOFF * 4u32.pow(attempt - 2)).await;
            }
            let req = match body {
                Some(b) => self.client.post(&url).json(b),
                None => self.client.get(&url),
            }
            .header("X-Vault-Token", self.token.expose())
            .header("X-Vault-Request", "true");
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("cannot reach Vault: {}", without_url(&e));
                    tracing::warn!(operation = what, attempt, error = %last, "vault request failed");
                    continue;
                }
            };
            let status = resp.status();
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("Vault's answer could not be read: {}", without_url(&e));
                    tracing::warn!(operation = what, attempt, error = %last, "vault request failed");
                    continue;
                }
            };
            if status.is_success() {
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    SignerError::Invalid(format!("Vault's {what} answer is not JSON: {e}"))
                })?;
                return Ok(v.get("data").cloned().unwrap_or(Value::Null));
            }
            let errors = vault_errors(&text);
            let retriable = status.as_u16() == 429 || status.is_server_error();
            last = format!("Vault answered {} to {what}: {errors}", status.as_u16());
            if !retriable {
                let hint = match status.as_u16() {
                    401 | 403 => {
                        "check BPF_REGISTRY_VAULT_TOKEN and that its policy allows this path"
                    }
                    400 | 404 => {
                        "check BPF_REGISTRY_VAULT_TRANSIT_MOUNT and BPF_REGISTRY_VAULT_KEY"
                    }
                    _ => "",
                };
                tracing::error!(
                    operation = what,
                    status = status.as_u16(),
                    vault_errors = %errors,
                    path = %format!("{}/{path}", self.mount),
                    hint,
                    "vault refused the request"
                );
                if !hint.is_empty() {
                    last = format!("{last} ({hint})");
                }
                return Err(SignerError::Refused(last));
            }
            tracing::warn!(operation = what, attempt, status = status.as_u16(), vault_errors = %errors, "vault request failed");
        }
        tracing::error!(operation = what, attempts = ATTEMPTS, error = %last, "vault unavailable");
        Err(SignerError::Unavailable(last))
    }

    async fn fetch_keys(&self) -> Result<Arc<KeySet>, SignerError> {
        let data = self
            .call("read keys", &format!("keys/{}", self.key), None)
            .await?;
        let keys = Arc::new(parse_keys(&self.key_id, &data)?);
        if let Ok(mut c) = self.cached.write() {
            *c = Some((keys.clone(), Instant::now()));
        }
        Ok(keys)
    }

    async fn keys(&self, refresh: bool) -> Result<Arc<KeySet>, SignerError> {
        if !refresh {
            if let Ok(c) = self.cached.read() {
                if let Some((k, at)) = c.as_ref() {
                    if at.elapsed() < KEYS_TTL {
                        return Ok(k.clone());
                    }
                }
            }
        }
        self.fetch_keys().await
    }

    async fn sign_payload(&self, payload: &[u8]) -> Result<RawSignature, SignerError> {
        let keys = self.keys(false).await?;
        let path = match keys.algorithm {
            Algorithm::EcdsaP256Sha256 => format!("sign/{}/sha2-256", self.key),
            Algorithm::Ed25519 => format!("sign/{}", self.key),
        };
        let body = serde_json::json!({
            "input": base64::engine::general_purpose::STANDARD.encode(payload)
        });
        let data = self.call("sign", &path, Some(&body)).await?;
        let (version, bytes) = data
            .get("signature")
            .and_then(Value::as_str)
            .and_then(parse_signature)
            .ok_or_else(|| {
                SignerError::Invalid(
                    "Vault's sign answer has no vault:v<N>:<base64> signature".into(),
                )
            })?;
        // Check the signature before it is stored: a rotated key is re-read
        // once; a signature that does not verify is an error, not a record.
        let mut keys = keys;
        if !keys.versions.contains_key(&version) {
            keys = self.keys(true).await?;
        }
        let ok = keys
            .versions
            .get(&version)
            .is_some_and(|k| k.verify(payload, &bytes));
        if !ok {
            return Err(SignerError::Invalid(format!(
                "Vault's signature (key version {version}) does not verify with the key's public key"
            )));
        }
        Ok(RawSignature {
            bytes,
            key_version: version,
        })
    }
}

impl Signer for VaultSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<RawSignature, SignerError>> {
        Box::pin(self.sign_payload(payload))
    }

    fn public_keys(&self, refresh: bool) -> BoxFuture<'_, Result<Arc<KeySet>, SignerError>> {
        Box::pin(self.keys(refresh))
    }
}

/// `vault:v<N>:<base64>` → (N, signature bytes).
fn parse_signature(s: &str) -> Option<(u32, Vec<u8>)> {
    let rest = s.strip_prefix("vault:v")?;
    let (version, b64) = rest.split_once(':')?;
    let version: u32 = version.parse().ok()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((version, bytes))
}

/// The `data` of `GET /v1/<mount>/keys/<key>` → every version's public key.
fn parse_keys(key_id: &str, data: &Value) -> Result<KeySet, SignerError> {
    let bad = |m: String| SignerError::Invalid(format!("Vault key {key_id}: {m}"));
    let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
    let algorithm = match kind {
        "ecdsa-p256" => Algorithm::EcdsaP256Sha256,
        "ed25519" => Algorithm::Ed25519,
        other => {
            return Err(bad(format!(
                "type {other:?} cannot sign cosign signatures; create the key with type ecdsa-p256 (or ed25519)"
            )))
        }
    };
    if data.get("derived").and_then(Value::as_bool) == Some(true) {
        return Err(bad("derived keys are not supported".into()));
    }
    let latest = data
        .get("latest_version")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("no latest_version".into()))?;
    let mut versions = std::collections::BTreeMap::new();
    for (v, entry) in data
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no keys".into()))?
    {
        let Ok(version) = v.parse::<u32>() else {
            continue;
        };
        let Some(pk) = entry.get("public_key").and_then(Value::as_str) else {
            continue;
        };
        let key = match algorithm {
            Algorithm::EcdsaP256Sha256 => PublicKey::from_pem(pk),
            Algorithm::Ed25519 => base64::engine::general_purpose::STANDARD
                .decode(pk.trim())
                .map_err(|e| e.to_string())
                .and_then(|raw| PublicKey::from_ed25519_raw(&raw)),
        }
        .map_err(|e| bad(format!("version {version}: {e}")))?;
        if key.algorithm() != algorithm {
            return Err(bad(format!("version {version} is not a {kind} key")));
        }
        versions.insert(version, key);
    }
    if !versions.contains_key(&latest) {
        return Err(bad(format!(
            "the public key of version {latest} is missing"
        )));
    }
    Ok(KeySet {
        key_id: key_id.to_string(),
        algorithm,
        latest,
        versions,
    })
}

/// Vault's `{"errors": [...]}` as one line (or the start of the body).
fn vault_errors(body: &str) -> String {
    match serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
    {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.chars().take(200).collect(),
    }
}

/// A reqwest error without its URL (which names the Vault address only,
/// but the message reads better without it).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_parse() {
        let (v, b) = parse_signature("vault:v12:AAEC").unwrap();
        assert_eq!((v, b), (12, vec![0, 1, 2]));
        for bad in ["v1:AAEC", "vault:vx:AAEC", "vault:v1:!!", "vault:v1"] {
            assert!(parse_signature(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn keys_parse() {
        let data = serde_json::json!({
            "type": "ecdsa-p256",
            "latest_version": 1,
            "keys": {"1": {"public_key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEE2ZrXnqn+b8YVfLPJk5zt8nr5Yrm\n8NgBLFUicqE6BA44dMPoVyRAm0PuucEC3pZ2J6irfEO/d8F2keGS1zrqcQ==\n-----END PUBLIC KEY-----\n"}}
        });
        let k = parse_keys("vault:transit/k", &data).unwrap();
        assert_eq!(k.latest, 1);
        assert_eq!(k.algorithm, Algorithm::EcdsaP256Sha256);
        let data = serde_json::json!({
            "type": "ed25519", "latest_version": 2,
            "keys": {"1": {"public_key": "e+yUNc/N3soKYkoVwgSQFNifPJJ1hQOnapYwkLUQFgg="},
                     "2": {"public_key": "e+yUNc/N3soKYkoVwgSQFNifPJJ1hQOnapYwkLUQFgg="}}
        });
        let k = parse_keys("vault:transit/k", &data).unwrap();
        assert_eq!(k.versions.len(), 2);
        let e = parse_keys("k", &serde_json::json!({"type": "aes256-gcm96"})).unwrap_err();
        assert!(e.to_string().contains("ecdsa-p256"), "{e}");
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            vault_errors(r#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
        assert_eq!(vault_errors("<html>"), "<html>");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let cfg = VaultConfig {
            addr: "http://127.0.0.1:1".into(),
            token: Secret::new("s.supersecret".into()),
            mount: "transit".into(),
            key: "k".into(),
            ca_cert: None,
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{cfg:?}").contains("supersecret"));
        let s = VaultSigner::new(&cfg).unwrap();
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
