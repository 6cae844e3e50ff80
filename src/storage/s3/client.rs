//! The S3 client's settings: where the bucket is ([`S3Location`], parsed
//! from `BPF_REGISTRY_BLOB_STORE` by `storage::blob_store`), the access key
//! ([`S3Credentials`]), and the `object_store` client built from them.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::ClientOptions;

use crate::storage::{StorageError, StorageResult};

/// Where the store lives: parsed from `BPF_REGISTRY_BLOB_STORE`
/// (`storage::blob_store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix, `/`-separated components without leading or trailing
    /// `/`; empty for the bucket's root.
    pub prefix: String,
    /// e.g. `http://127.0.0.1:3900`; requests use path-style URLs.
    pub endpoint: String,
    pub region: String,
    /// Plain `http://` endpoint allowed (loopback, or asked for).
    pub allow_http: bool,
    /// Whether each request signs a SHA-256 of its body, so the store
    /// detects a body damaged on the way. Needed only for plain http to
    /// another host: TLS protects a body already, loopback cannot damage
    /// one, and hashing every byte costs a fifth of the write speed.
    pub sign_payload: bool,
}

/// The access key, from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
/// (and `AWS_SESSION_TOKEN` if set).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// Reads the standard variables; an error names the missing one.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `from_env` with the environment given as a lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("{name} must be set for an s3:// blob store")),
        };
        Ok(S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: get("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        })
    }
}

/// The client: path-style requests, the access key, timeouts for blob
/// streams.
pub fn build(location: &S3Location, credentials: &S3Credentials) -> StorageResult<AmazonS3> {
    let client = ClientOptions::new()
        .with_allow_http(location.allow_http)
        // A blob GET lasts as long as its client reads: no whole-request
        // timeout, but a stalled connection fails.
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(60));
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&location.bucket)
        .with_region(&location.region)
        .with_endpoint(&location.endpoint)
        .with_virtual_hosted_style_request(false)
        .with_unsigned_payload(!location.sign_payload)
        .with_allow_http(location.allow_http)
        .with_access_key_id(&credentials.access_key_id)
        .with_secret_access_key(&credentials.secret_access_key)
        .with_client_options(client);
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token);
    }
    builder.build().map_err(|e| StorageError::Remote {
        path: String::new(),
        detail: format!("cannot configure the S3 client: {e}"),
    })
}
