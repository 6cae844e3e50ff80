//! The media type a stored manifest is served with: the body's own
//! `mediaType`; for a body without one (allowed for Docker schema 2 and
//! OCI), the Content-Type it was pushed with to that repository, kept in a
//! small record beside its link (`paths::media_type_record`), else the OCI
//! type its shape implies. Also the bounded cache of verified manifest
//! bytes with their declared type.

use bytes::Bytes;

use crate::oci::{media, Digest, ManifestKind, ParsedManifest, RepoName};
use crate::storage::{paths, Backend, StorePath};

use super::RegistryResult;

/// Verified manifest bytes and their media type by digest. Content-
/// addressed, so an entry is never stale (whether a repository may serve it
/// is checked on every request; a type the body does not declare is looked
/// up per repository); bounded by total bytes, emptied when full.
#[derive(Default)]
pub struct ManifestCache {
    inner: std::sync::Mutex<CacheInner>,
}

/// Entries and their total size.
type CacheInner = (
    std::collections::HashMap<Digest, (StoredType, Bytes)>,
    usize,
);

const MANIFEST_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// A media type record is one media type; anything longer is damage.
const MEDIA_TYPE_MAX: u64 = 256;

impl ManifestCache {
    pub(super) fn get(&self, d: &Digest) -> Option<(StoredType, Bytes)> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(d).cloned()
    }

    pub(super) fn put(&self, d: &Digest, media_type: &StoredType, bytes: &Bytes) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1.saturating_add(bytes.len()) > MANIFEST_CACHE_BYTES {
            guard.0.clear();
            guard.1 = 0;
        }
        guard.1 = guard.1.saturating_add(bytes.len());
        guard
            .0
            .insert(d.clone(), (media_type.clone(), bytes.clone()));
    }
}

/// The media type of stored manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StoredType {
    /// The body's own `mediaType` field.
    Declared(String),
    /// No `mediaType` field: the repository's record of the pushed
    /// Content-Type decides, else the OCI type the shape implies.
    Undeclared { inferred: &'static str },
}

impl StoredType {
    /// Reads just the media type of a stored manifest (the body's own field,
    /// or the OCI type its shape implies).
    pub(super) fn of(bytes: &[u8]) -> StoredType {
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            manifests: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_slice::<Probe>(bytes) {
            Ok(Probe {
                media_type: Some(mt),
                ..
            }) => StoredType::Declared(mt),
            Ok(Probe {
                manifests: Some(_), ..
            }) => StoredType::Undeclared {
                inferred: media::OCI_INDEX,
            },
            _ => StoredType::Undeclared {
                inferred: media::OCI_MANIFEST,
            },
        }
    }
}

/// The media type recorded for an undeclared manifest in `repo`, if any
/// and if it fits the shape (an index type for an index).
pub(super) fn recorded(
    b: &dyn Backend,
    repo: &RepoName,
    digest: &Digest,
    inferred: &str,
) -> RegistryResult<Option<String>> {
    let Some(raw) = b.read_small(&paths::media_type_record(repo, digest), MEDIA_TYPE_MAX)? else {
        return Ok(None);
    };
    let mt = String::from_utf8_lossy(&raw).trim().to_string();
    let fits =
        media::is_manifest_type(&mt) && media::is_index_type(&mt) == media::is_index_type(inferred);
    Ok(fits.then_some(mt))
}

/// The record a manifest PUT writes (before the link), for a body without
/// `mediaType`.
pub(super) struct Record {
    path: StorePath,
    media_type: String,
    /// The type is the one the shape implies: no record is needed.
    inferred: bool,
}

impl Record {
    pub(super) fn for_put(repo: &RepoName, digest: &Digest, m: &ParsedManifest) -> Option<Record> {
        if m.media_type_declared {
            return None;
        }
        let inferred = match m.kind {
            ManifestKind::Index => media::OCI_INDEX,
            ManifestKind::Image => media::OCI_MANIFEST,
        };
        Some(Record {
            path: paths::media_type_record(repo, digest),
            media_type: m.media_type.clone(),
            inferred: m.media_type == inferred,
        })
    }

    /// Writes the record unless it is already there; an earlier push of
    /// the same bytes with another type is replaced.
    pub(super) fn write(&self, b: &dyn Backend) -> RegistryResult<()> {
        match b.read_small(&self.path, MEDIA_TYPE_MAX)? {
            Some(current) if current == self.media_type.as_bytes() => {}
            None if self.inferred => {}
            _ => b.write_atomic(&self.path, self.media_type.as_bytes())?,
        }
        Ok(())
    }
}
