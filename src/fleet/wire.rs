//! The fleet's JSON on the wire: the bodies the REST layer reads and the
//! answers it writes (hosts are in `hosts`), and the serialization of a
//! desired set straight from its shared per-name resolutions.

use serde::{Deserialize, Serialize};

use super::hosts::rfc3339;
use super::resolve::{DesiredArtifact, Excluded};
use super::view::Resolved;
use crate::metadata::{ChannelMove, DeploymentRow, SelectorRow};

/// `GET /hosts/{host_id}/desired`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DesiredJson {
    pub host_id: String,
    /// Sorted by name.
    pub artifacts: Vec<DesiredArtifact>,
    /// Per name, the versions newer than the chosen one that were passed
    /// over (at most 10 per name).
    pub excluded: Vec<Excluded>,
}

/// The wire form of [`DesiredJson`], written from the shared per-name
/// resolutions (each artifact with this host's `via`) without copying.
pub(super) struct DesiredBody<'a, 's> {
    pub(super) host_id: &'a str,
    pub(super) resolved: &'a Resolved<'s>,
}

impl Serialize for DesiredBody<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        #[derive(Serialize)]
        struct Artifact<'a> {
            name: &'a str,
            version: &'a str,
            id: &'a str,
            architecture: &'a str,
            channel: Option<&'a str>,
            via: &'a [&'a str],
        }
        // Both lists are written straight from the resolution, with no
        // list of their own: a wake-up of many waiters allocates little
        // (the allocator's slow path was a third of such a wake-up).
        struct Artifacts<'a, 's>(&'a Resolved<'s>);
        impl Serialize for Artifacts<'_, '_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.artifacts().map(|(a, via)| Artifact {
                    name: &a.name,
                    version: &a.version,
                    id: &a.id,
                    architecture: &a.architecture,
                    channel: a.channel.as_deref(),
                    via,
                }))
            }
        }
        struct ExcludedList<'a, 's>(&'a Resolved<'s>);
        impl Serialize for ExcludedList<'_, '_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.excluded())
            }
        }
        let mut st = s.serialize_struct("DesiredJson", 3)?;
        st.serialize_field("host_id", self.host_id)?;
        st.serialize_field("artifacts", &Artifacts(self.resolved))?;
        st.serialize_field("excluded", &ExcludedList(self.resolved))?;
        st.end()
    }
}

/// A selector of an artifact.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SelectorJson {
    /// The digest of the selector's referrer manifest.
    pub selector_id: String,
    pub selector: String,
    pub channel: Option<String>,
    pub artifact_id: String,
    pub repository: String,
}

impl From<&SelectorRow> for SelectorJson {
    fn from(r: &SelectorRow) -> Self {
        SelectorJson {
            selector_id: r.digest.clone(),
            selector: r.selector.clone(),
            channel: r.channel.clone(),
            artifact_id: r.subject.clone(),
            repository: r.repo.clone(),
        }
    }
}

/// `PUT /hosts/{host_id}/deployments/{artifact_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeploymentBody {
    /// `loaded`, `failed` or `unloaded`.
    #[schema(value_type = String, required = true)]
    pub state: Option<String>,
    /// At most 1 KiB.
    #[serde(default)]
    pub message: Option<String>,
    /// e.g. `eth0/xdp`; at most 256 bytes.
    #[serde(default)]
    pub attach_point: Option<String>,
}

/// The states a report may give.
pub const STATES: [&str; 3] = ["loaded", "failed", "unloaded"];

/// One report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeploymentJson {
    pub host_id: String,
    pub artifact_id: String,
    /// The artifact's name (its repository).
    pub name: String,
    /// The artifact's version (`null` once the artifact is deleted).
    pub version: Option<String>,
    pub repository: String,
    pub state: String,
    pub message: Option<String>,
    pub attach_point: Option<String>,
    pub reported_at: String,
}

impl From<&DeploymentRow> for DeploymentJson {
    fn from(d: &DeploymentRow) -> Self {
        DeploymentJson {
            host_id: d.host_id.clone(),
            artifact_id: d.digest.clone(),
            name: d.repo.clone(),
            version: None,
            repository: d.repo.clone(),
            state: d.state.clone(),
            message: d.message.clone(),
            attach_point: d.attach_point.clone(),
            reported_at: rfc3339(d.reported_at),
        }
    }
}

/// `GET /hosts/{host_id}/deployments`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentsJson {
    pub host_id: String,
    /// The last report per artifact.
    pub deployments: Vec<DeploymentJson>,
    /// The last 100 reports, newest first.
    pub history: Vec<DeploymentJson>,
}

/// A host in a rollout.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutHost {
    pub host_id: String,
    /// Whether resolution assigns this artifact to the host.
    pub desired: bool,
    /// `loaded`, `failed`, `unloaded`, or `pending` (desired, no report).
    pub state: String,
    pub reported_at: Option<String>,
}

/// `GET /artifacts/{id}/rollout`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutJson {
    pub artifact_id: String,
    pub repository: String,
    pub desired: u64,
    pub loaded: u64,
    pub failed: u64,
    pub pending: u64,
    pub unloaded: u64,
    pub hosts: Vec<RolloutHost>,
    pub next_cursor: Option<String>,
}

/// `PUT /channels/{name}/{channel}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChannelBody {
    #[schema(value_type = String, required = true)]
    pub version: Option<String>,
}

/// A move in a channel's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelMoveJson {
    pub version: String,
    pub id: String,
    /// `move` or `rollback`.
    pub action: String,
    pub at: String,
    pub by: Option<String>,
}

/// A channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelJson {
    pub name: String,
    pub channel: String,
    /// The version the channel's tag points at (`null` when the tag was
    /// moved by an OCI client to something that is no version).
    pub version: Option<String>,
    /// The digest the tag points at.
    pub id: String,
    /// Newest first, at most 100.
    pub history: Vec<ChannelMoveJson>,
}

pub(super) fn move_json(m: &ChannelMove) -> ChannelMoveJson {
    ChannelMoveJson {
        version: m.version.clone(),
        id: m.digest.clone(),
        action: m.action.clone(),
        at: rfc3339(m.moved_at),
        by: m.moved_by.clone(),
    }
}
