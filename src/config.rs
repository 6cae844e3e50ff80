//! Typed configuration from `BPF_REGISTRY_*` environment variables, with
//! defaults and validation. An invalid value is reported with the
//! variable's name and stops the start-up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the metadata lives (`BPF_REGISTRY_METADATA`).
    pub metadata: crate::metadata::MetadataConfig,
    /// Where blobs and manifests live (`BPF_REGISTRY_BLOB_STORE`).
    pub blob_store: crate::storage::blob_store::BlobStoreConfig,
    /// The server's local cache of a remote store's large blobs
    /// (`BPF_REGISTRY_BLOB_CACHE_DIR`, `BPF_REGISTRY_BLOB_CACHE_BYTES`; 0
    /// turns it off); unused with the filesystem store.
    pub blob_cache_dir: PathBuf,
    pub blob_cache_bytes: u64,
    /// Upload files of the filesystem store written by direct I/O where
    /// the file system takes it (`BPF_REGISTRY_DIRECT_WRITES`, on).
    pub direct_writes: bool,
    pub log_level: LogLevel,
    pub max_manifest_bytes: u64,
    pub max_upload_sessions: usize,
    /// Upload sessions open at once per user (per source address for
    /// anonymous callers and when authentication is off).
    pub max_upload_sessions_per_user: usize,
    pub max_artifact_bytes: u64,
    /// Bytes all `POST /artifacts` together may hold (bodies being
    /// buffered and decoded); see `artifacts::memory`.
    pub create_memory_budget: u64,
    /// Longest a create waits for its share of that budget before 503.
    pub create_memory_wait: Duration,
    /// Time between online garbage collections; `None` (`0`) turns it off.
    pub gc_interval: Option<Duration>,
    /// Unreferenced blobs younger than this are kept.
    pub gc_grace: Duration,
    /// Upload sessions untouched for this long are purged.
    pub upload_ttl: Duration,
    /// Requests served at once; more get 429 `TOOMANYREQUESTS`.
    pub max_concurrent_requests: usize,
    /// Fleet long-polls (`?wait=`) held at once; more get 429
    /// `too_many_watchers`.
    pub max_watchers: usize,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest a request body may stall between two chunks (and a
    /// response write may make no progress).
    pub body_idle_timeout: Duration,
    /// Open connections at most; `None` derives it from `RLIMIT_NOFILE`.
    pub max_connections: Option<usize>,
    /// Longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// `?mount=` without `from` looks for the blob in the repositories the
    /// caller may pull (`BPF_REGISTRY_AUTOMATIC_MOUNT=on`, the default).
    pub automatic_mount: bool,
    /// Bytes/s a request body must deliver over each `body_rate_window`
    /// of waiting for it; 0 = no minimum.
    pub min_body_rate: u64,
    pub body_rate_window: Duration,
    /// htpasswd file (bcrypt); set = authentication on.
    pub auth_htpasswd: Option<PathBuf>,
    /// Authorization policy (TOML); none = authenticated users may do everything.
    pub auth_policy: Option<PathBuf>,
    /// ES256 token signing key (PEM); none = generated in the data dir.
    pub token_key: Option<PathBuf>,
    /// Access token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Public base URL (`https://registry.example`) for the token realm.
    pub external_url: Option<String>,
    /// TLS certificate chain (PEM); with `tls_key`, HTTPS is served.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Artifact signing (`BPF_REGISTRY_SIGNER` and its settings).
    pub signing: crate::signing::SigningConfig,
    /// `GET /metrics` and the recording behind it (`BPF_REGISTRY_METRICS`,
    /// on by default); off, the route is a 404 and nothing is recorded.
    pub metrics: bool,
    /// The bearer token that opens `/metrics` when authentication is on
    /// (besides users the policy grants `metrics`).
    pub metrics_token: Option<crate::signing::Secret>,
    /// Events to webhooks (`BPF_REGISTRY_EVENTS_*`); `None` without
    /// `BPF_REGISTRY_EVENTS_WEBHOOK`: no event is written or sent.
    pub events: Option<crate::events::EventsConfig>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// `(variable, default, meaning)` for `--help` and the README.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "BPF_REGISTRY_HTTP_ADDR",
        ":8084",
        "listen address; `:PORT` means all interfaces, or HOST:PORT",
    ),
    (
        "BPF_REGISTRY_DATA_DIR",
        "/data/artifacts",
        "store root (created if missing)",
    ),
    (
        "BPF_REGISTRY_METADATA",
        "sqlite",
        "metadata store: `sqlite` (<data dir>/metadata.db) or a postgres:// URL shared by replicas",
    ),
    (
        "BPF_REGISTRY_BLOB_STORE",
        "fs",
        "blob store: `fs` (under the data dir) or s3://BUCKET[/PREFIX]?endpoint=URL&region=R",
    ),
    (
        "BPF_REGISTRY_DIRECT_WRITES",
        "on",
        "on/off: pushes to the fs store bypass the page cache (direct I/O) where the file system allows",
    ),
    (
        "BPF_REGISTRY_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARN or ERROR",
    ),
    (
        "BPF_REGISTRY_MAX_MANIFEST_BYTES",
        "4194304",
        "largest manifest accepted (bytes)",
    ),
    (
        "BPF_REGISTRY_MAX_UPLOAD_SESSIONS",
        "1024",
        "upload sessions open at once; more get 429",
    ),
    (
        "BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER",
        "64",
        "upload sessions open at once per user (per source address for anonymous callers and when auth is off); more get 429",
    ),
    (
        "BPF_REGISTRY_MAX_ARTIFACT_BYTES",
        "67108864",
        "largest decoded `data` of POST /artifacts (bytes)",
    ),
    (
        "BPF_REGISTRY_CREATE_MEMORY_BUDGET",
        "268435456",
        "bytes all POST /artifacts together may hold: each reserves its body length plus 8 MiB before reading it (one larger than the budget runs alone)",
    ),
    (
        "BPF_REGISTRY_CREATE_MEMORY_WAIT",
        "30s",
        "longest a POST /artifacts waits for its share of that budget; then 503 `server_busy` with Retry-After",
    ),
    (
        "BPF_REGISTRY_GC_INTERVAL",
        "1h",
        "time between online garbage collections (`30s`, `10m`, `1h`); 0 = off",
    ),
    (
        "BPF_REGISTRY_GC_GRACE",
        "1h",
        "unreferenced blobs younger than this survive garbage collection",
    ),
    (
        "BPF_REGISTRY_UPLOAD_TTL",
        "24h",
        "upload sessions untouched this long are purged",
    ),
    (
        "BPF_REGISTRY_MAX_CONCURRENT_REQUESTS",
        "1024",
        "requests served at once; more get 429 with Retry-After",
    ),
    (
        "BPF_REGISTRY_MAX_WATCHERS",
        "20000",
        "fleet long-polls (?wait=) held at once; more get 429 too_many_watchers",
    ),
    (
        "BPF_REGISTRY_HEADER_READ_TIMEOUT",
        "30s",
        "longest a client may take to send request headers",
    ),
    (
        "BPF_REGISTRY_BODY_IDLE_TIMEOUT",
        "60s",
        "longest a request body may stall between two chunks, or a response write make no progress",
    ),
    (
        "BPF_REGISTRY_MIN_BODY_RATE",
        "4096",
        "bytes/s a request body must average over each rate window; slower gets 408; 0 = off",
    ),
    (
        "BPF_REGISTRY_BODY_RATE_WINDOW",
        "10s",
        "window of waiting over which the body rate is measured",
    ),
    (
        "BPF_REGISTRY_MAX_CONNECTIONS",
        "(derived)",
        "open connections at most; unset: RLIMIT_NOFILE minus a quarter (64 at least), at most 4096",
    ),
    (
        "BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT",
        "10s",
        "longest a TLS handshake may take",
    ),
    (
        "BPF_REGISTRY_AUTOMATIC_MOUNT",
        "on",
        "on/off: ?mount= without from mounts from a repository the caller may pull",
    ),
    (
        "BPF_REGISTRY_AUTH_HTPASSWD",
        "(unset)",
        "htpasswd file, bcrypt entries; setting it turns authentication on",
    ),
    (
        "BPF_REGISTRY_AUTH_POLICY",
        "(unset)",
        "policy file (TOML); unset: authenticated users may do everything",
    ),
    (
        "BPF_REGISTRY_TOKEN_KEY",
        "(generated)",
        "ES256 token key (PEM); unset: <data dir>/_auth/token-key.pem",
    ),
    (
        "BPF_REGISTRY_TOKEN_TTL",
        "300",
        "access token lifetime (seconds)",
    ),
    (
        "BPF_REGISTRY_EXTERNAL_URL",
        "(derived)",
        "public base URL; the token realm is <it>/token",
    ),
    (
        "BPF_REGISTRY_TLS_CERT",
        "(unset)",
        "TLS certificate chain (PEM); with TLS_KEY, HTTPS is served",
    ),
    ("BPF_REGISTRY_TLS_KEY", "(unset)", "TLS private key (PEM)"),
    // metrics (src/metrics, src/http/metrics.rs)
    (
        "BPF_REGISTRY_METRICS",
        "on",
        "on/off: GET /metrics (Prometheus text format); off = 404 and nothing recorded",
    ),
    (
        "BPF_REGISTRY_METRICS_TOKEN",
        "(unset)",
        "with authentication on, `Authorization: Bearer <it>` opens /metrics (16+ printable ASCII characters, no spaces; never logged)",
    ),
    // events (src/events, src/metadata/outbox.rs)
    (
        "BPF_REGISTRY_EVENTS_WEBHOOK",
        "(unset)",
        "comma-separated http(s) URLs that receive every change as a CloudEvent (POST, structured JSON); unset: no events",
    ),
    (
        "BPF_REGISTRY_EVENTS_SECRET",
        "(unset)",
        "HMAC-SHA256 key of the X-Registry-Signature header (16+ characters; required with a webhook; never logged)",
    ),
    (
        "BPF_REGISTRY_EVENTS_TIMEOUT",
        "10s",
        "longest one delivery attempt may take (connect, send, answer)",
    ),
    (
        "BPF_REGISTRY_EVENTS_RETENTION",
        "24h",
        "delivered events are pruned from the outbox after this",
    ),
    (
        "BPF_REGISTRY_EVENTS_MAX_AGE",
        "7d",
        "an event a webhook has not accepted after this long is given up (logged)",
    ),
    // artifact signing (src/signing)
    (
        "BPF_REGISTRY_SIGNER",
        "none",
        "none, vault (Vault/OpenBao Transit) or key (local key file): signs every artifact",
    ),
    (
        "BPF_REGISTRY_VAULT_ADDR",
        "$VAULT_ADDR",
        "Vault address, http(s)://host:port (SIGNER=vault)",
    ),
    (
        "BPF_REGISTRY_VAULT_TOKEN",
        "$VAULT_TOKEN",
        "Vault token with sign and read on the key (never logged)",
    ),
    (
        "BPF_REGISTRY_VAULT_TRANSIT_MOUNT",
        "transit",
        "Transit secrets engine mount path",
    ),
    (
        "BPF_REGISTRY_VAULT_KEY",
        "bpf-registry",
        "Transit key name (type ecdsa-p256 or ed25519)",
    ),
    (
        "BPF_REGISTRY_VAULT_CACERT",
        "$VAULT_CACERT",
        "extra CA certificate (PEM) to trust for an https Vault",
    ),
    (
        "BPF_REGISTRY_VAULT_TIMEOUT",
        "5s",
        "timeout of one Vault request (3 attempts at most)",
    ),
    (
        "BPF_REGISTRY_SIGNING_KEY",
        "(unset)",
        "PEM PKCS#8 ECDSA P-256 or Ed25519 private key, mode 0600 (SIGNER=key)",
    ),
];

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the config from any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let val = |var: &'static str| get(var).filter(|v| !v.trim().is_empty());
        let http_addr = match val("BPF_REGISTRY_HTTP_ADDR") {
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8084),
            Some(v) => parse_addr(v.trim()).ok_or_else(|| ConfigError {
                var: "BPF_REGISTRY_HTTP_ADDR",
                message: format!("invalid address {v:?}: expected :PORT or HOST:PORT"),
            })?,
        };
        let data_dir =
            PathBuf::from(val("BPF_REGISTRY_DATA_DIR").unwrap_or_else(|| "/data/artifacts".into()));
        let log_level = match val("BPF_REGISTRY_LOG_LEVEL").map(|v| v.trim().to_ascii_uppercase()) {
            None => LogLevel::Info,
            Some(v) => match v.as_str() {
                "DEBUG" => LogLevel::Debug,
                "INFO" => LogLevel::Info,
                "WARN" | "WARNING" => LogLevel::Warn,
                "ERROR" => LogLevel::Error,
                _ => {
                    return Err(ConfigError {
                        var: "BPF_REGISTRY_LOG_LEVEL",
                        message: format!(
                            "invalid level {v:?}: expected DEBUG, INFO, WARN or ERROR"
                        ),
                    })
                }
            },
        };
        let metadata = crate::metadata::MetadataConfig::parse(
            val("BPF_REGISTRY_METADATA").as_deref(),
            &data_dir,
        )
        .map_err(|message| ConfigError {
            var: "BPF_REGISTRY_METADATA",
            message,
        })?;
        let blob_store = crate::storage::blob_store::BlobStoreConfig::from_lookup(|k| get(k))
            .map_err(|e| ConfigError {
                var: "BPF_REGISTRY_BLOB_STORE",
                message: e.to_string(),
            })?;
        let blob_cache_dir = val("BPF_REGISTRY_BLOB_CACHE_DIR")
            .filter(|v| !v.trim().is_empty())
            .map(|v| PathBuf::from(v.trim()))
            .unwrap_or_else(|| data_dir.join(crate::storage::paths::BLOB_CACHE_DIR));
        Config {
            http_addr,
            blob_cache_bytes: number_or_zero(
                &val,
                "BPF_REGISTRY_BLOB_CACHE_BYTES",
                1024 * 1024 * 1024,
            )?,
            blob_cache_dir,
            direct_writes: switch(&val, "BPF_REGISTRY_DIRECT_WRITES", true)?,
            data_dir,
            metadata,
            blob_store,
            log_level,
            max_manifest_bytes: number(&val, "BPF_REGISTRY_MAX_MANIFEST_BYTES", 4 * 1024 * 1024)?,
            max_upload_sessions: number(&val, "BPF_REGISTRY_MAX_UPLOAD_SESSIONS", 1024)? as usize,
            max_upload_sessions_per_user: number(
                &val,
                "BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER",
                64,
            )? as usize,
            max_artifact_bytes: number(&val, "BPF_REGISTRY_MAX_ARTIFACT_BYTES", 64 * 1024 * 1024)?,
            create_memory_budget: number(
                &val,
                "BPF_REGISTRY_CREATE_MEMORY_BUDGET",
                256 * 1024 * 1024,
            )?,
            create_memory_wait: positive(
                duration(&val, "BPF_REGISTRY_CREATE_MEMORY_WAIT", 30 * SECOND)?,
                "BPF_REGISTRY_CREATE_MEMORY_WAIT",
            )?,
            gc_interval: Some(duration(&val, "BPF_REGISTRY_GC_INTERVAL", HOUR)?)
                .filter(|d| !d.is_zero()),
            gc_grace: duration(&val, "BPF_REGISTRY_GC_GRACE", HOUR)?,
            upload_ttl: positive(
                duration(&val, "BPF_REGISTRY_UPLOAD_TTL", 24 * HOUR)?,
                "BPF_REGISTRY_UPLOAD_TTL",
            )?,
            max_watchers: number(&val, "BPF_REGISTRY_MAX_WATCHERS", 20_000)? as usize,
            max_concurrent_requests: number(&val, "BPF_REGISTRY_MAX_CONCURRENT_REQUESTS", 1024)?
                as usize,
            header_read_timeout: positive(
                duration(&val, "BPF_REGISTRY_HEADER_READ_TIMEOUT", 30 * SECOND)?,
                "BPF_REGISTRY_HEADER_READ_TIMEOUT",
            )?,
            body_idle_timeout: positive(
                duration(&val, "BPF_REGISTRY_BODY_IDLE_TIMEOUT", 60 * SECOND)?,
                "BPF_REGISTRY_BODY_IDLE_TIMEOUT",
            )?,
            max_connections: match val("BPF_REGISTRY_MAX_CONNECTIONS") {
                None => None,
                Some(_) => Some(number(&val, "BPF_REGISTRY_MAX_CONNECTIONS", 1)? as usize),
            },
            tls_handshake_timeout: positive(
                duration(&val, "BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT", 10 * SECOND)?,
                "BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT",
            )?,
            automatic_mount: switch(&val, "BPF_REGISTRY_AUTOMATIC_MOUNT", true)?,
            min_body_rate: number_or_zero(&val, "BPF_REGISTRY_MIN_BODY_RATE", 4096)?,
            body_rate_window: positive(
                duration(&val, "BPF_REGISTRY_BODY_RATE_WINDOW", 10 * SECOND)?,
                "BPF_REGISTRY_BODY_RATE_WINDOW",
            )?,
            auth_htpasswd: None,
            auth_policy: None,
            token_key: None,
            token_ttl_secs: 300,
            external_url: None,
            tls_cert: None,
            tls_key: None,
            signing: crate::signing::SigningConfig::from_lookup(&|k: &str| {
                get(k).filter(|v| !v.trim().is_empty())
            })?,
            metrics: switch(&val, "BPF_REGISTRY_METRICS", true)?,
            metrics_token: None,
            events: None,
        }
        .with_auth_and_tls(&val)?
        .with_metrics_token(&val)?
        .with_events(&val)
    }

    /// Reads the `BPF_REGISTRY_EVENTS_*` variables.
    fn with_events(
        mut self,
        val: &impl Fn(&'static str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        const WEBHOOK: &str = "BPF_REGISTRY_EVENTS_WEBHOOK";
        const SECRET: &str = "BPF_REGISTRY_EVENTS_SECRET";
        let Some(list) = val(WEBHOOK) else {
            for var in [
                SECRET,
                "BPF_REGISTRY_EVENTS_TIMEOUT",
                "BPF_REGISTRY_EVENTS_RETENTION",
                "BPF_REGISTRY_EVENTS_MAX_AGE",
            ] {
                if val(var).is_some() {
                    return Err(ConfigError {
                        var,
                        message: format!("only meaningful with {WEBHOOK}"),
                    });
                }
            }
            return Ok(self);
        };
        let webhooks = crate::events::parse_webhooks(&list).map_err(|message| ConfigError {
            var: WEBHOOK,
            message,
        })?;
        let secret = val(SECRET)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if secret.len() < crate::events::MIN_SECRET_LEN {
            return Err(ConfigError {
                var: SECRET,
                message: format!(
                    "{WEBHOOK} is set: a secret of at least {} characters is needed to sign the events",
                    crate::events::MIN_SECRET_LEN
                ),
            });
        }
        self.events = Some(crate::events::EventsConfig {
            webhooks,
            secret: crate::signing::Secret::new(secret),
            timeout: positive(
                duration(val, "BPF_REGISTRY_EVENTS_TIMEOUT", 10 * SECOND)?,
                "BPF_REGISTRY_EVENTS_TIMEOUT",
            )?,
            retention: duration(val, "BPF_REGISTRY_EVENTS_RETENTION", 24 * HOUR)?,
            max_age: positive(
                duration(val, "BPF_REGISTRY_EVENTS_MAX_AGE", 7 * 24 * HOUR)?,
                "BPF_REGISTRY_EVENTS_MAX_AGE",
            )?,
        });
        Ok(self)
    }

    /// Reads `BPF_REGISTRY_METRICS_TOKEN`: only meaningful with metrics
    /// and authentication on (without authentication `/metrics` is open).
    fn with_metrics_token(
        mut self,
        val: &impl Fn(&'static str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        const VAR: &str = "BPF_REGISTRY_METRICS_TOKEN";
        /// Short tokens can be guessed; 16 characters is 2^90 and more
        /// even for a hex token.
        const MIN_LEN: usize = 16;
        let Some(token) = val(VAR) else {
            return Ok(self);
        };
        let token = token.trim().to_string();
        let problem = if !self.metrics {
            Some("only meaningful with BPF_REGISTRY_METRICS=on".to_string())
        } else if self.auth_htpasswd.is_none() {
            Some(
                "only meaningful with BPF_REGISTRY_AUTH_HTPASSWD (authentication is off: /metrics is open)"
                    .to_string(),
            )
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            Some("the token must be printable ASCII without spaces".to_string())
        } else if token.len() < MIN_LEN {
            Some(format!(
                "the token is {} characters: at least {MIN_LEN} are needed",
                token.len()
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(ConfigError { var: VAR, message });
        }
        self.metrics_token = Some(crate::signing::Secret::new(token));
        Ok(self)
    }

    /// Reads the authentication and TLS variables into `self`.
    fn with_auth_and_tls(
        mut self,
        val: &impl Fn(&'static str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = |var: &'static str| val(var).map(|v| PathBuf::from(v.trim()));
        self.auth_htpasswd = path("BPF_REGISTRY_AUTH_HTPASSWD");
        self.auth_policy = path("BPF_REGISTRY_AUTH_POLICY");
        self.token_key = path("BPF_REGISTRY_TOKEN_KEY");
        for (var, set) in [
            ("BPF_REGISTRY_AUTH_POLICY", self.auth_policy.is_some()),
            ("BPF_REGISTRY_TOKEN_KEY", self.token_key.is_some()),
        ] {
            if set && self.auth_htpasswd.is_none() {
                return Err(ConfigError {
                    var,
                    message:
                        "only meaningful with BPF_REGISTRY_AUTH_HTPASSWD (authentication is off)"
                            .into(),
                });
            }
        }
        self.token_ttl_secs = number(val, "BPF_REGISTRY_TOKEN_TTL", 300)?;
        if self.token_ttl_secs > 86_400 {
            return Err(ConfigError {
                var: "BPF_REGISTRY_TOKEN_TTL",
                message: format!(
                    "{} s is over a day: expected 1..=86400",
                    self.token_ttl_secs
                ),
            });
        }
        if let Some(v) = val("BPF_REGISTRY_EXTERNAL_URL") {
            let v = v.trim().trim_end_matches('/').to_string();
            let host = v
                .strip_prefix("https://")
                .or_else(|| v.strip_prefix("http://"))
                .unwrap_or("");
            let bad =
                |c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if host.is_empty() || host.contains(bad) {
                return Err(ConfigError {
                    var: "BPF_REGISTRY_EXTERNAL_URL",
                    message: format!(
                        "invalid URL {v:?}: expected http(s)://HOST[:PORT], without a path"
                    ),
                });
            }
            self.external_url = Some(v);
        }
        self.tls_cert = path("BPF_REGISTRY_TLS_CERT");
        self.tls_key = path("BPF_REGISTRY_TLS_KEY");
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(ConfigError {
                var: "BPF_REGISTRY_TLS_KEY",
                message: "BPF_REGISTRY_TLS_CERT is set: the private key is needed too".into(),
            }),
            (None, Some(_)) => Err(ConfigError {
                var: "BPF_REGISTRY_TLS_CERT",
                message: "BPF_REGISTRY_TLS_KEY is set: the certificate is needed too".into(),
            }),
            _ => Ok(self),
        }
    }
}

fn number(
    val: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match val(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError {
                var,
                message: format!("invalid value {v:?}: expected a positive integer"),
            }),
        },
    }
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
fn switch(
    val: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match val(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => Err(ConfigError {
                var,
                message: format!("invalid value {v:?}: expected on or off"),
            }),
        },
    }
}

/// Like [`number`], with 0 allowed (meaning "off").
fn number_or_zero(
    val: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match val(var) {
        None => Ok(default),
        Some(v) => v.trim().parse::<u64>().map_err(|_| ConfigError {
            var,
            message: format!("invalid value {v:?}: expected a non-negative integer"),
        }),
    }
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Parses a duration: `0`, a number of seconds, or a number with one of
/// the units `ms`, `s`, `m`, `h`, `d` (`500ms`, `30s`, `10m`, `1h`, `7d`).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

fn duration(
    val: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match val(var) {
        None => Ok(default),
        Some(v) => parse_duration(&v).ok_or_else(|| ConfigError {
            var,
            message: format!("invalid duration {v:?}: expected e.g. 0, 30s, 10m, 1h"),
        }),
    }
}

fn positive(d: Duration, var: &'static str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError {
            var,
            message: "must be greater than 0".into(),
        });
    }
    Ok(d)
}

fn parse_addr(v: &str) -> Option<SocketAddr> {
    if let Some(port) = v.strip_prefix(':') {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port.parse().ok()?,
        ));
    }
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Some(a);
    }
    // `localhost:PORT`
    let (host, port) = v.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host == "localhost" {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8084");
        assert_eq!(c.data_dir, PathBuf::from("/data/artifacts"));
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.create_memory_budget, 256 * 1024 * 1024);
        assert_eq!(c.create_memory_wait, Duration::from_secs(30));
    }

    #[test]
    fn create_memory_settings() {
        let c = cfg(&[
            ("BPF_REGISTRY_CREATE_MEMORY_BUDGET", "1048576"),
            ("BPF_REGISTRY_CREATE_MEMORY_WAIT", "2s"),
        ])
        .unwrap();
        assert_eq!(c.create_memory_budget, 1 << 20);
        assert_eq!(c.create_memory_wait, Duration::from_secs(2));
        for (var, bad) in [
            ("BPF_REGISTRY_CREATE_MEMORY_BUDGET", "0"),
            ("BPF_REGISTRY_CREATE_MEMORY_BUDGET", "lots"),
            ("BPF_REGISTRY_CREATE_MEMORY_WAIT", "0"),
        ] {
            assert_eq!(cfg(&[(var, bad)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            cfg(&[("BPF_REGISTRY_HTTP_ADDR", ":9000")])
                .unwrap()
                .http_addr
                .port(),
            9000
        );
        assert_eq!(
            cfg(&[("BPF_REGISTRY_HTTP_ADDR", "127.0.0.1:0")])
                .unwrap()
                .http_addr
                .to_string(),
            "127.0.0.1:0"
        );
        let e = cfg(&[("BPF_REGISTRY_HTTP_ADDR", "nonsense")]).unwrap_err();
        assert_eq!(e.var, "BPF_REGISTRY_HTTP_ADDR");
    }

    #[test]
    fn log_levels() {
        assert_eq!(
            cfg(&[("BPF_REGISTRY_LOG_LEVEL", "debug")])
                .unwrap()
                .log_level,
            LogLevel::Debug
        );
        assert_eq!(
            cfg(&[("BPF_REGISTRY_LOG_LEVEL", "LOUD")]).unwrap_err().var,
            "BPF_REGISTRY_LOG_LEVEL"
        );
        assert!(cfg(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "-1")]).is_err());
    }

    #[test]
    fn per_user_upload_sessions() {
        assert_eq!(cfg(&[]).unwrap().max_upload_sessions_per_user, 64);
        let c = cfg(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER", "5")]).unwrap();
        assert_eq!(c.max_upload_sessions_per_user, 5);
        for bad in ["0", "-1", "many", "1.5"] {
            let e = cfg(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER", bad)]).unwrap_err();
            assert_eq!(e.var, "BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER", "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "1x", "-1s", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let c = cfg(&[]).unwrap();
        assert_eq!(c.gc_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.gc_grace, Duration::from_secs(3600));
        assert_eq!(c.upload_ttl, Duration::from_secs(86400));
        assert_eq!(c.max_concurrent_requests, 1024);
        let c = cfg(&[
            ("BPF_REGISTRY_GC_INTERVAL", "0"),
            ("BPF_REGISTRY_GC_GRACE", "0"),
        ])
        .unwrap();
        assert_eq!(c.gc_interval, None);
        assert_eq!(c.gc_grace, Duration::ZERO);
        assert_eq!(
            cfg(&[("BPF_REGISTRY_GC_GRACE", "soon")]).unwrap_err().var,
            "BPF_REGISTRY_GC_GRACE"
        );
        assert_eq!(
            cfg(&[("BPF_REGISTRY_HEADER_READ_TIMEOUT", "0")])
                .unwrap_err()
                .var,
            "BPF_REGISTRY_HEADER_READ_TIMEOUT"
        );
    }

    #[test]
    fn events_settings() {
        assert!(cfg(&[]).unwrap().events.is_none());
        let secret = ("BPF_REGISTRY_EVENTS_SECRET", "0123456789abcdef");
        let c = cfg(&[
            (
                "BPF_REGISTRY_EVENTS_WEBHOOK",
                "http://127.0.0.1:9000/a, https://hooks.example/b",
            ),
            secret,
            ("BPF_REGISTRY_EVENTS_TIMEOUT", "3s"),
        ])
        .unwrap();
        let e = c.events.unwrap();
        assert_eq!(
            e.webhooks,
            ["http://127.0.0.1:9000/a", "https://hooks.example/b"]
        );
        assert_eq!(e.timeout, Duration::from_secs(3));
        assert_eq!(e.retention, 24 * HOUR);
        assert_eq!(e.max_age, 7 * 24 * HOUR);
        assert!(!format!("{e:?}").contains("0123456789abcdef"));
        for (pairs, var) in [
            (
                vec![("BPF_REGISTRY_EVENTS_WEBHOOK", "ftp://x/y"), secret],
                "BPF_REGISTRY_EVENTS_WEBHOOK",
            ),
            (
                vec![("BPF_REGISTRY_EVENTS_WEBHOOK", "localhost:9000"), secret],
                "BPF_REGISTRY_EVENTS_WEBHOOK",
            ),
            (
                vec![("BPF_REGISTRY_EVENTS_WEBHOOK", "http://h/x")],
                "BPF_REGISTRY_EVENTS_SECRET",
            ),
            (
                vec![
                    ("BPF_REGISTRY_EVENTS_WEBHOOK", "http://h/x"),
                    ("BPF_REGISTRY_EVENTS_SECRET", "short"),
                ],
                "BPF_REGISTRY_EVENTS_SECRET",
            ),
            (vec![secret], "BPF_REGISTRY_EVENTS_SECRET"),
            (
                vec![
                    ("BPF_REGISTRY_EVENTS_WEBHOOK", "http://h/x"),
                    secret,
                    ("BPF_REGISTRY_EVENTS_TIMEOUT", "0"),
                ],
                "BPF_REGISTRY_EVENTS_TIMEOUT",
            ),
        ] {
            assert_eq!(cfg(&pairs).unwrap_err().var, var, "{pairs:?}");
        }
    }

    #[test]
    fn metrics_settings() {
        let c = cfg(&[]).unwrap();
        assert!(c.metrics);
        assert!(c.metrics_token.is_none());
        assert!(!cfg(&[("BPF_REGISTRY_METRICS", "off")]).unwrap().metrics);
        let e = cfg(&[("BPF_REGISTRY_METRICS", "maybe")]).unwrap_err();
        assert_eq!(e.var, "BPF_REGISTRY_METRICS");
        let auth = ("BPF_REGISTRY_AUTH_HTPASSWD", "/etc/htpasswd");
        let good = "0123456789abcdef-token";
        let c = cfg(&[auth, ("BPF_REGISTRY_METRICS_TOKEN", good)]).unwrap();
        assert_eq!(c.metrics_token.as_ref().map(|t| t.expose()), Some(good));
        // The token never shows in the config's Debug.
        assert!(!format!("{c:?}").contains(good));
        for (extra, bad) in [
            (Some(auth), "short"),
            (Some(auth), "0123456789 abcdef-with-space"),
            (Some(auth), "0123456789abcdef\u{e9}"),
            (None, good),
            (Some(("BPF_REGISTRY_METRICS", "off")), good),
        ] {
            let mut vars = vec![("BPF_REGISTRY_METRICS_TOKEN", bad)];
            vars.extend(extra);
            let e = cfg(&vars).unwrap_err();
            assert_eq!(e.var, "BPF_REGISTRY_METRICS_TOKEN", "{vars:?}: {e}");
        }
    }

    #[test]
    fn connection_and_body_pace_settings() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.max_connections, None);
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.min_body_rate, 4096);
        assert_eq!(c.body_rate_window, Duration::from_secs(10));
        assert!(c.automatic_mount);
        assert!(c.direct_writes);
        assert!(
            !cfg(&[("BPF_REGISTRY_DIRECT_WRITES", "off")])
                .unwrap()
                .direct_writes
        );
        assert!(
            !cfg(&[("BPF_REGISTRY_AUTOMATIC_MOUNT", "off")])
                .unwrap()
                .automatic_mount
        );
        let c = cfg(&[
            ("BPF_REGISTRY_MAX_CONNECTIONS", "100"),
            ("BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT", "2s"),
            ("BPF_REGISTRY_MIN_BODY_RATE", "0"),
            ("BPF_REGISTRY_BODY_RATE_WINDOW", "500ms"),
        ])
        .unwrap();
        assert_eq!(c.max_connections, Some(100));
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.min_body_rate, 0);
        assert_eq!(c.body_rate_window, Duration::from_millis(500));
        for (var, bad) in [
            ("BPF_REGISTRY_MAX_CONNECTIONS", "0"),
            ("BPF_REGISTRY_MAX_CONNECTIONS", "many"),
            ("BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT", "0"),
            ("BPF_REGISTRY_MIN_BODY_RATE", "-1"),
            ("BPF_REGISTRY_BODY_RATE_WINDOW", "0"),
            ("BPF_REGISTRY_AUTOMATIC_MOUNT", "sometimes"),
            ("BPF_REGISTRY_DIRECT_WRITES", "maybe"),
        ] {
            assert_eq!(cfg(&[(var, bad)]).unwrap_err().var, var, "{var}={bad}");
        }
    }
}
