//! Registered hosts on the wire: the `PUT /hosts/{host_id}` body checked
//! into a row, and the host JSON every host answer uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resolve::{normalize_arch, HostFacts};
use super::selector::validate_labels;
use crate::artifacts::{ArtifactError, FleetRefusal, HostId};
use crate::metadata::HostRow;

/// Longest `architecture`, `kernel_release` and `agent_version`.
const MAX_FACT_BYTES: usize = 256;

/// `PUT /hosts/{host_id}`: what an agent says of its host.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "architecture": "x86_64",
    "kernel_release": "5.15.0-91-generic",
    "btf": true,
    "labels": {"env": "prod", "role": "edge"},
    "agent_version": "1.4.2"
}))]
pub struct HostBody {
    /// `x86_64`/`amd64` or `aarch64`/`arm64` (stored as the former).
    #[schema(value_type = String, required = true)]
    pub architecture: Option<String>,
    /// `uname -r`, e.g. `5.15.0-91-generic`.
    #[schema(value_type = String, required = true)]
    pub kernel_release: Option<String>,
    /// Whether the kernel exposes BTF (`/sys/kernel/btf/vmlinux`).
    #[serde(default)]
    pub btf: Option<bool>,
    /// At most 64 Kubernetes-style labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub agent_version: Option<String>,
}

/// A registered host.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostJson {
    pub host_id: String,
    pub architecture: String,
    pub kernel_release: String,
    pub btf: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub agent_version: Option<String>,
    /// RFC 3339, UTC.
    pub registered_at: String,
    /// RFC 3339, UTC: the last registration.
    pub last_seen: String,
}

/// `GET /hosts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostJson>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

fn invalid(m: impl Into<String>) -> ArtifactError {
    ArtifactError::fleet(FleetRefusal::InvalidHost, m)
}

fn fact(name: &str, v: Option<String>, required: bool) -> Result<Option<String>, ArtifactError> {
    match v.map(|s| s.trim().to_string()) {
        None if required => Err(invalid(format!("{name} is required"))),
        Some(s) if s.is_empty() && required => Err(invalid(format!("{name} is empty"))),
        Some(s) if s.len() > MAX_FACT_BYTES => {
            Err(invalid(format!("{name} is over {MAX_FACT_BYTES} bytes")))
        }
        Some(s) if s.chars().any(char::is_control) => {
            Err(invalid(format!("{name} holds control characters")))
        }
        v => Ok(v),
    }
}

impl HostBody {
    /// The row this body registers for `host` at `now` (Unix seconds).
    pub fn into_row(self, host: &HostId, now: i64) -> Result<HostRow, ArtifactError> {
        let architecture = fact("architecture", self.architecture, true)?.unwrap_or_default();
        let kernel_release = fact("kernel_release", self.kernel_release, true)?.unwrap_or_default();
        let agent_version = fact("agent_version", self.agent_version, false)?;
        let labels = self.labels.unwrap_or_default();
        validate_labels(&labels)
            .map_err(|m| ArtifactError::fleet(FleetRefusal::InvalidLabels, m))?;
        let labels = serde_json::to_string(&labels).map_err(|e| invalid(e.to_string()))?;
        Ok(HostRow {
            host_id: host.to_string(),
            architecture: normalize_arch(&architecture),
            kernel_release,
            btf: self.btf,
            agent_version,
            labels,
            registered_at: now,
            last_seen: now,
        })
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// A row's labels (an empty map for a row that does not parse: rows are
/// written from validated maps only).
pub fn labels_of(row: &HostRow) -> BTreeMap<String, String> {
    serde_json::from_str(&row.labels).unwrap_or_default()
}

/// What resolution needs of a host.
pub fn facts_of(row: &HostRow) -> HostFacts {
    HostFacts {
        architecture: row.architecture.clone(),
        kernel_release: row.kernel_release.clone(),
        btf: row.btf,
    }
}

impl From<&HostRow> for HostJson {
    fn from(row: &HostRow) -> Self {
        HostJson {
            host_id: row.host_id.clone(),
            architecture: row.architecture.clone(),
            kernel_release: row.kernel_release.clone(),
            btf: row.btf,
            labels: labels_of(row),
            agent_version: row.agent_version.clone(),
            registered_at: rfc3339(row.registered_at),
            last_seen: rfc3339(row.last_seen),
        }
    }
}
