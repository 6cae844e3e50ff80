//! Typed configuration from `BPF_REGISTRY_*` environment variables, with
//! defaults and validation. An invalid value is reported with the
//! variable's name and stops the start-up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

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
    pub log_level: LogLevel,
    pub max_manifest_bytes: u64,
    pub max_upload_sessions: usize,
    pub max_artifact_bytes: u64,
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
        "BPF_REGISTRY_MAX_ARTIFACT_BYTES",
        "67108864",
        "largest decoded `data` of POST /artifacts (bytes)",
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
        Ok(Config {
            http_addr,
            data_dir,
            log_level,
            max_manifest_bytes: number(&val, "BPF_REGISTRY_MAX_MANIFEST_BYTES", 4 * 1024 * 1024)?,
            max_upload_sessions: number(&val, "BPF_REGISTRY_MAX_UPLOAD_SESSIONS", 1024)? as usize,
            max_artifact_bytes: number(&val, "BPF_REGISTRY_MAX_ARTIFACT_BYTES", 64 * 1024 * 1024)?,
        })
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
}
