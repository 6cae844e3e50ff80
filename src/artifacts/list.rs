//! `GET /artifacts`: the typed query (filters, limit, cursor), the listing
//! order and its cursor. The query runs in the metadata store
//! (`metadata::artifact_list`); the service applies visibility before
//! paging, so neither a page nor a cursor says anything about artifacts
//! the caller may not pull.

use base64::Engine as _;

use super::index::{FACET_KERNEL_VERSION, FACET_TAG};
use super::model::{ArtifactRecord, HostId};
use super::ArtifactError;
use crate::metadata::{ArtifactFilter, ListingKey};

pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// The filters and page of `GET /artifacts`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The repository (the artifact's REST `name`).
    pub name: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub architecture: Option<String>,
    pub kernel_version: Option<String>,
    pub tag: Option<String>,
    pub host: Option<HostId>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            name: None,
            version: None,
            kind: None,
            architecture: None,
            kernel_version: None,
            tag: None,
            host: None,
            limit: DEFAULT_LIST_LIMIT,
            cursor: None,
        }
    }
}

impl ListQuery {
    /// Builds the query from its parameters (`get` answers one value per
    /// name; the caller has refused repeated ones).
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ArtifactError> {
        let limit = match get("limit").as_deref() {
            None | Some("") => DEFAULT_LIST_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ArtifactError::InvalidRequest(format!(
                        "invalid limit {:?}: expected 1..={MAX_LIST_LIMIT}",
                        v.chars().take(40).collect::<String>()
                    )))
                }
            },
        };
        let cursor = match get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(Cursor::decode(&c)?),
        };
        let host = get("host").as_deref().map(HostId::parse).transpose()?;
        Ok(ListQuery {
            name: get("name"),
            version: get("version"),
            kind: get("type"),
            architecture: get("architecture"),
            kernel_version: get("kernel_version"),
            tag: get("tag"),
            host,
            limit,
            cursor,
        })
    }

    /// The filters as the metadata store's query.
    pub fn filter(&self) -> ArtifactFilter {
        let mut facets = Vec::new();
        if let Some(t) = &self.tag {
            facets.push((FACET_TAG.to_string(), t.clone()));
        }
        if let Some(k) = &self.kernel_version {
            facets.push((FACET_KERNEL_VERSION.to_string(), k.clone()));
        }
        ArtifactFilter {
            repo: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
            architecture: self.architecture.clone(),
            facets,
            host: self.host.as_ref().map(|h| h.to_string()),
        }
    }

    /// The same filters over a record (the query's answer is checked
    /// again, so a row whose columns disagree with its record is never
    /// listed for a filter it does not match).
    pub fn matches(&self, r: &ArtifactRecord) -> bool {
        let c = &r.config;
        self.name.as_ref().is_none_or(|v| r.repo.as_str() == v)
            && self.version.as_ref().is_none_or(|v| &c.version == v)
            && self.kind.as_ref().is_none_or(|v| &c.kind == v)
            && self
                .architecture
                .as_ref()
                .is_none_or(|v| &c.architecture == v)
            && self
                .kernel_version
                .as_ref()
                .is_none_or(|v| &c.kernel_version == v)
            && self.tag.as_ref().is_none_or(|v| c.tags.contains(v))
    }
}

/// Listing order: repository, version, architecture, id.
type SortKey<'a> = (&'a str, &'a str, &'a str, String);

pub fn sort_key(r: &ArtifactRecord) -> SortKey<'_> {
    (
        r.repo.as_str(),
        r.config.version.as_str(),
        r.config.architecture.as_str(),
        r.id.to_string(),
    )
}

/// Where a page ends: the sort key of its last artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    name: String,
    version: String,
    architecture: String,
    id: String,
}

impl Cursor {
    pub fn of(r: &ArtifactRecord) -> Cursor {
        Cursor {
            name: r.repo.to_string(),
            version: r.config.version.clone(),
            architecture: r.config.architecture.clone(),
            id: r.id.to_string(),
        }
    }

    /// The position in the metadata store's listing order.
    pub fn key(&self) -> ListingKey {
        ListingKey {
            repo: self.name.clone(),
            version: self.version.clone(),
            architecture: self.architecture.clone(),
            digest: self.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let raw = format!(
            "{}\n{}\n{}\n{}",
            self.name, self.version, self.architecture, self.id
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(c: &str) -> Result<Cursor, ArtifactError> {
        let bad = || {
            ArtifactError::InvalidRequest(format!(
                "invalid cursor {:?}",
                c.chars().take(100).collect::<String>()
            ))
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = text.splitn(4, '\n');
        let (Some(name), Some(version), Some(architecture), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Cursor {
            name: name.into(),
            version: version.into(),
            architecture: architecture.into(),
            id: id.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ArtifactError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListQuery::parse(&|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn queries_are_validated() {
        assert_eq!(q(&[]).unwrap(), ListQuery::default());
        assert_eq!(q(&[("limit", "7")]).unwrap().limit, 7);
        for bad in ["0", "1001", "x", "-1"] {
            assert!(q(&[("limit", bad)]).is_err(), "{bad}");
        }
        assert!(q(&[("cursor", "!!")]).is_err());
        assert!(q(&[("host", "a b")]).is_err());
        let c = Cursor {
            name: "a/b".into(),
            version: "1".into(),
            architecture: "x86_64".into(),
            id: "sha256:0".into(),
        };
        assert_eq!(q(&[("cursor", &c.encode())]).unwrap().cursor, Some(c));
    }
}
