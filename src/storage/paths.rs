//! Every storage path, built here and nowhere else. The layout:
//!
//! ```text
//! <data dir>/
//!   blobs/sha256/<hex>                         every blob and manifest, stored once
//!   repositories/<name>/                       <name> may have several components
//!     _tags/<tag>                              file holding a digest
//!     _manifests/sha256/<hex>                  link: the manifest belongs to this repo
//!     _layers/sha256/<hex>                     link: the blob is reachable from this repo
//!     _referrers/sha256/<subject>/<referrer>   link per referrer (holds its descriptor)
//!   _uploads/<uuid>/data                       bytes received so far
//!   _uploads/<uuid>/state                      JSON: repository, acknowledged offset
//!   _quarantine/sha256/<hex>                   blobs scrub found corrupt
//!   .lock                                      held by a server (shared) and gc (exclusive)
//! ```
//!
//! A `_` cannot begin a component of a validated repository name, so the
//! `_tags`-style folders never collide with nested repositories.

use std::fmt;

use crate::oci::{Digest, RepoName, Tag};

/// A path relative to the store root. Only this module constructs one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath(String);

impl StorePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name reported in errors about the writability probe.
    pub fn probe() -> StorePath {
        StorePath(".probe".into())
    }
    /// A child of a folder path; `name` must be a single validated component
    /// (a hex digest, a tag, an upload id), never user text with `/`.
    fn join(&self, name: &str) -> StorePath {
        StorePath(format!("{}/{}", self.0, name))
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub const REPOSITORIES: &str = "repositories";
pub const TAGS_DIR: &str = "_tags";
pub const MANIFESTS_DIR: &str = "_manifests";
pub const LAYERS_DIR: &str = "_layers";
pub const REFERRERS_DIR: &str = "_referrers";

pub fn blobs_dir() -> StorePath {
    StorePath("blobs/sha256".into())
}
pub fn blob(d: &Digest) -> StorePath {
    blobs_dir().join(d.hex())
}
pub fn quarantine(d: &Digest) -> StorePath {
    quarantine_dir().join(d.hex())
}
pub fn quarantine_dir() -> StorePath {
    StorePath("_quarantine/sha256".into())
}
/// The lock file a server holds shared and `gc`/`scrub --repair` exclusive.
pub fn lock_file() -> StorePath {
    StorePath(".lock".into())
}
pub fn repositories_root() -> StorePath {
    StorePath(REPOSITORIES.into())
}
/// A folder under `repositories/` from already-split name components (used
/// when walking the catalog).
pub fn repositories_child(components: &[String]) -> StorePath {
    let mut p = repositories_root();
    for c in components {
        p = p.join(c);
    }
    p
}
pub fn repo_dir(name: &RepoName) -> StorePath {
    StorePath(format!("{REPOSITORIES}/{}", name.as_str()))
}
pub fn tags_dir(name: &RepoName) -> StorePath {
    repo_dir(name).join(TAGS_DIR)
}
pub fn tag(name: &RepoName, tag: &Tag) -> StorePath {
    tags_dir(name).join(tag.as_str())
}
pub fn manifests_dir(name: &RepoName) -> StorePath {
    repo_dir(name).join(MANIFESTS_DIR).join("sha256")
}
pub fn manifest_link(name: &RepoName, d: &Digest) -> StorePath {
    manifests_dir(name).join(d.hex())
}
pub fn layers_dir(name: &RepoName) -> StorePath {
    repo_dir(name).join(LAYERS_DIR).join("sha256")
}
pub fn layer_link(name: &RepoName, d: &Digest) -> StorePath {
    layers_dir(name).join(d.hex())
}
pub fn referrers_root(name: &RepoName) -> StorePath {
    repo_dir(name).join(REFERRERS_DIR).join("sha256")
}
pub fn referrers_dir(name: &RepoName, subject: &Digest) -> StorePath {
    referrers_root(name).join(subject.hex())
}
pub fn referrer_link(name: &RepoName, subject: &Digest, referrer: &Digest) -> StorePath {
    referrers_dir(name, subject).join(referrer.hex())
}
pub fn uploads_dir() -> StorePath {
    StorePath("_uploads".into())
}
pub fn upload_dir(id: &UploadId) -> StorePath {
    uploads_dir().join(id.as_str())
}
pub fn upload_data(id: &UploadId) -> StorePath {
    upload_dir(id).join("data")
}
pub fn upload_state(id: &UploadId) -> StorePath {
    upload_dir(id).join("state")
}

/// An upload session id: a hyphenated lowercase UUID, validated.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UploadId(String);

impl UploadId {
    pub fn new_random() -> Self {
        UploadId(uuid::Uuid::new_v4().hyphenated().to_string())
    }
    pub fn parse(s: &str) -> Option<Self> {
        let u = uuid::Uuid::try_parse(s).ok()?;
        let canonical = u.hyphenated().to_string();
        (canonical == s).then_some(UploadId(canonical))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let n = RepoName::parse("team/tools").unwrap();
        let d = Digest::of(b"");
        assert_eq!(blob(&d).as_str(), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(
            tag(&n, &Tag::parse("v1").unwrap()).as_str(),
            "repositories/team/tools/_tags/v1"
        );
        assert_eq!(
            referrer_link(&n, &d, &d).as_str(),
            format!(
                "repositories/team/tools/_referrers/sha256/{}/{}",
                d.hex(),
                d.hex()
            )
        );
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::new_random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        assert!(UploadId::parse("../x").is_none());
        assert!(UploadId::parse("A1B2C3D4-0000-0000-0000-000000000000").is_none());
    }
}
