//! Resolution of a host's desired artifacts: per assigned name, the
//! channel's version or the newest version with a platform for the host
//! whose requirements it meets, and why newer ones were passed over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::requirements::Requirements;
use super::version::sort_newest_first;
use crate::oci::Digest;

/// Most excluded versions reported per name.
pub const MAX_EXCLUDED_PER_NAME: usize = 10;

/// What resolution needs to know of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Normalised (`x86_64`, `aarch64`; see [`normalize_arch`]).
    pub architecture: String,
    pub kernel_release: String,
    /// Whether the kernel has BTF; `None` when the host did not say.
    pub btf: Option<bool>,
}

/// One platform of one version of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: String,
    /// The platform's artifact manifest digest.
    pub id: Digest,
    pub architecture: String,
    pub requirements: Option<Requirements>,
}

/// Everything of one name (repository) resolution chooses from.
#[derive(Debug, Clone, Default)]
pub struct NameCandidates {
    /// Any order, several per version (one per architecture).
    pub versions: Vec<Candidate>,
    /// Channel → the version it points at.
    pub channels: BTreeMap<String, String>,
}

/// Why a name is assigned to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The repository.
    pub name: String,
    /// `direct`, `selector:<id>` or `channel:<c>`.
    pub via: String,
    /// The channel this assignment follows, if any.
    pub channel: Option<String>,
}

/// One artifact the host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DesiredArtifact {
    pub name: String,
    pub version: String,
    pub id: String,
    pub architecture: String,
    pub channel: Option<String>,
    pub via: Vec<String>,
}

/// A version passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Excluded {
    pub name: String,
    pub version: Option<String>,
    pub id: Option<String>,
    pub architecture: Option<String>,
    pub reason: String,
}

/// The desired set of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// Sorted by name.
    pub artifacts: Vec<DesiredArtifact>,
    /// Sorted by name, then newest version first.
    pub excluded: Vec<Excluded>,
}

/// The architecture names hosts and artifacts are compared by:
/// `amd64` → `x86_64`, `arm64` → `aarch64` (the inverse of
/// [`crate::artifacts::model::oci_architecture`] for these), else as is.
pub fn normalize_arch(a: &str) -> String {
    match a {
        "amd64" | "x86-64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
    .to_string()
}

#[derive(Default)]
struct NameAssignments {
    via: BTreeSet<String>,
    channels: BTreeSet<String>,
}

/// Resolves a host's desired set from its assignments; `candidates` gives
/// what a name has (`None`: nothing).
pub fn resolve(
    host: &HostFacts,
    assignments: &[Assignment],
    candidates: &dyn Fn(&str) -> Option<Arc<NameCandidates>>,
) -> Desired {
    let mut names: BTreeMap<&str, NameAssignments> = BTreeMap::new();
    for a in assignments {
        let entry = names.entry(a.name.as_str()).or_default();
        entry.via.insert(a.via.clone());
        if let Some(c) = &a.channel {
            entry.channels.insert(c.clone());
        }
    }
    let arch = normalize_arch(&host.architecture);
    let mut desired = Desired::default();
    for (name, assigned) in names {
        let found = candidates(name).unwrap_or_default();
        let ctx = NameContext {
            name,
            host,
            arch: &arch,
            via: assigned.via.into_iter().collect(),
        };
        match assigned.channels.first() {
            Some(channel) => ctx.by_channel(&found, channel, &mut desired),
            None => ctx.newest(&found, &mut desired),
        }
    }
    desired
}

struct NameContext<'a> {
    name: &'a str,
    host: &'a HostFacts,
    arch: &'a str,
    via: Vec<String>,
}

/// A version's platforms for the host's architecture (by id), and the
/// first (by id) of its other platforms.
type Platforms<'c> = (Vec<&'c Candidate>, Option<&'c Candidate>);

/// The outcome for one version on this host.
enum Pick<'a> {
    Chosen(&'a Candidate),
    Rejected(Excluded),
}

impl NameContext<'_> {
    fn excluded(&self, c: Option<&Candidate>, version: Option<&str>, reason: String) -> Excluded {
        Excluded {
            name: self.name.to_string(),
            version: version.map(str::to_string),
            id: c.map(|c| c.id.to_string()),
            architecture: c.map(|c| normalize_arch(&c.architecture)),
            reason,
        }
    }

    fn chosen(&self, c: &Candidate, channel: Option<&str>) -> DesiredArtifact {
        DesiredArtifact {
            name: self.name.to_string(),
            version: c.version.clone(),
            id: c.id.to_string(),
            architecture: normalize_arch(&c.architecture),
            channel: channel.map(str::to_string),
            via: self.via.clone(),
        }
    }

    /// This version's platform for the host: the first (by id) whose
    /// requirements are met, else why the first is not.
    fn pick<'c>(&self, version: &str, platforms: &Platforms<'c>) -> Pick<'c> {
        let (platforms, other) = (&platforms.0, platforms.1);
        let mut first_unmet = None;
        for c in platforms {
            match c.requirements.as_ref().and_then(|r| r.unmet(self.host)) {
                None => return Pick::Chosen(c),
                Some(reason) => {
                    first_unmet.get_or_insert((*c, reason));
                }
            }
        }
        Pick::Rejected(match first_unmet {
            Some((c, reason)) => self.excluded(Some(c), Some(version), reason),
            // Named by a platform it has (the first by id), so the answer
            // says which manifest was passed over.
            None => self.excluded(other, Some(version), format!("no {} platform", self.arch)),
        })
    }

    /// Every version of the name, with its platforms for the host's
    /// architecture (possibly none), sorted by id.
    fn by_version<'c>(&self, found: &'c NameCandidates) -> BTreeMap<&'c str, Platforms<'c>> {
        let mut map: BTreeMap<&str, Platforms<'c>> = BTreeMap::new();
        for c in &found.versions {
            let platforms = map.entry(c.version.as_str()).or_default();
            if normalize_arch(&c.architecture) == self.arch {
                platforms.0.push(c);
            } else if platforms.1.is_none_or(|o| c.id.hex() < o.id.hex()) {
                platforms.1 = Some(c);
            }
        }
        for platforms in map.values_mut() {
            platforms.0.sort_by(|a, b| a.id.hex().cmp(b.id.hex()));
        }
        map
    }

    fn by_channel(&self, found: &NameCandidates, channel: &str, out: &mut Desired) {
        let versions = self.by_version(found);
        let target = found
            .channels
            .get(channel)
            .and_then(|v| versions.get_key_value(v.as_str()));
        let Some((version, platforms)) = target else {
            out.excluded
                .push(self.excluded(None, None, format!("channel {channel} not set")));
            return;
        };
        match self.pick(version, platforms) {
            Pick::Chosen(c) => out.artifacts.push(self.chosen(c, Some(channel))),
            Pick::Rejected(e) => out.excluded.push(e),
        }
    }

    fn newest(&self, found: &NameCandidates, out: &mut Desired) {
        let versions = self.by_version(found);
        if versions.is_empty() {
            out.excluded
                .push(self.excluded(None, None, "no versions".into()));
            return;
        }
        let mut rejected = Vec::new();
        for (version, platforms) in sort_newest_first(versions.into_iter().collect(), |(v, _)| v) {
            match self.pick(version, &platforms) {
                Pick::Chosen(c) => {
                    out.artifacts.push(self.chosen(c, None));
                    break;
                }
                Pick::Rejected(e) => {
                    if rejected.len() < MAX_EXCLUDED_PER_NAME {
                        rejected.push(e);
                    }
                }
            }
        }
        out.excluded.extend(rejected);
    }
}

#[cfg(test)]
mod tests;
