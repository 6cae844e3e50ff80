//! Every storage path and every name the store makes for itself, built
//! here and nowhere else. The layout:
//!
//! ```text
//! <data dir>/
//!   blobs/sha256/<hex>                         every blob and manifest, stored once
//!   metadata.db                                the embedded SQLite metadata store (rows)
//!   _uploads/<uuid>/data                       bytes received so far (the session is a row)
//!   _uploads/<uuid>/.parts.data/<start>        the same on an object store, in parts
//!   repositories/<name>/                       the previous version's link tree, read once
//!     _tags/<tag>, _manifests/, _media_types/,   by the import (`registry::import`), never
//!     _layers/, _referrers/                      written by this version
//!   _uploads/<uuid>/state                      the previous version's session state (imported)
//!   _quarantine/sha256/<hex>                   blobs scrub found corrupt
//!   _auth/token-key.pem                        generated token signing key (0600)
//!   .lock                                      held exclusive by a server, `gc`, `scrub --repair`
//!   .spool/                                    a server's temp files of REST payloads (local disk)
//! ```
//!
//! **Internal names start with `.`** (temp files `.tmp-<32 hex>.<final
//! name>` in the folder of their final name, the lock file): no repository
//! component (`[a-z0-9]...`), tag (`[A-Za-z0-9_]...`), digest hex or upload
//! id can, so listings hide them by that rule alone and a client name never
//! looks internal. The `_` folders stay: at the top level they sit beside
//! `blobs` and `repositories`, never among repository names, and inside
//! `repositories/` a `_` cannot begin a component of a validated name, so
//! `_tags`-style folders never collide with nested repositories.
//!
//! **Leftovers of the previous version.** Its temp files were
//! `<final name>.tmp-<32 lowercase hex>`, which can be a valid tag or
//! repository component. Garbage collection removes such a file only where
//! its final name is a digest hex (`blobs/sha256`, the `_manifests`,
//! `_layers` and `_referrers` link folders) or an upload's `state`, so the
//! name itself is never a valid entry there and no tag or link can name it;
//! plus that writer's `_auth/token-key.tmp-<pid>` and `.probe-<32 hex>`.
//! In `_tags` a legacy-looking name is a valid tag, so it is never deleted:
//! at worst an old crash leaked one ~100-byte tag file, which lists as a tag
//! and can be deleted like one.
//!
//! **Parted objects (object stores).** An object store cannot append, so
//! there an appended object (an upload's `data`) is kept as parts in the
//! internal folder `.parts.<name>` beside it, one object per writer
//! session named by its start offset (`00000000000000000000`, 20 digits so
//! names sort by offset). Listings show the folder as the one file
//! `<name>`; the leading `.` keeps it off every client grammar (a
//! `<name>.parts` folder could be a repository called `foo.parts`).

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
pub const MEDIA_TYPES_DIR: &str = "_media_types";
pub const REFERRERS_DIR: &str = "_referrers";

pub fn blobs_dir() -> StorePath {
    StorePath("blobs/sha256".into())
}
pub fn blob(d: &Digest) -> StorePath {
    blobs_dir().join(d.hex())
}
/// The digest a blob path names (`blobs/sha256/<hex>`), if it is one.
pub fn blob_digest(p: &StorePath) -> Option<Digest> {
    let hex = p.0.strip_prefix("blobs/sha256/")?;
    Digest::from_hex(hex)
}
/// The local folder of the cache of a remote store's blobs, inside the
/// data directory (`BPF_REGISTRY_BLOB_CACHE_DIR` overrides it). Internal by
/// its leading `.`; emptied at start-up.
pub const BLOB_CACHE_DIR: &str = ".blob-cache";
pub fn quarantine(d: &Digest) -> StorePath {
    quarantine_dir().join(d.hex())
}
pub fn quarantine_dir() -> StorePath {
    StorePath("_quarantine/sha256".into())
}
/// The lock file a server, `gc` and `scrub --repair` hold exclusive.
pub fn lock_file() -> StorePath {
    StorePath(".lock".into())
}
/// The folder of a server's spooled REST payloads, inside the data
/// directory (local files, never store objects: each is unlinked as soon
/// as it is open). Internal by its leading `.`; emptied at start-up.
pub const SPOOL_DIR: &str = ".spool";
pub fn spool_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join(SPOOL_DIR)
}
/// The generated token key, relative to the data directory.
pub const GENERATED_TOKEN_KEY: &str = "_auth/token-key.pem";
pub fn generated_token_key() -> StorePath {
    StorePath(GENERATED_TOKEN_KEY.into())
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
pub fn media_types_dir(name: &RepoName) -> StorePath {
    repo_dir(name).join(MEDIA_TYPES_DIR).join("sha256")
}
/// The Content-Type a manifest without a `mediaType` field was pushed with
/// to this repository.
pub fn media_type_record(name: &RepoName, d: &Digest) -> StorePath {
    media_types_dir(name).join(d.hex())
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

/// The prefix of a parted object's parts folder (see the module doc).
const PARTS_PREFIX: &str = ".parts.";

/// The internal folder holding the parts of the parted object `p`
/// (`<folder of p>/.parts.<name of p>`).
pub fn parts_dir(p: &StorePath) -> StorePath {
    match p.0.rsplit_once('/') {
        Some((dir, name)) => StorePath(format!("{dir}/{PARTS_PREFIX}{name}")),
        None => StorePath(format!("{PARTS_PREFIX}{}", p.0)),
    }
}
/// The part of `p` that starts at byte `start`.
pub fn part(p: &StorePath, start: u64) -> StorePath {
    parts_dir(p).join(&format!("{start:020}"))
}
/// A temp object in `p`'s parts folder (for rewriting a part).
pub fn part_temp(p: &StorePath) -> StorePath {
    parts_dir(p).join(&temp_name("part"))
}
/// The start offset a part's name encodes; `None` for any other name.
pub fn part_start(name: &str) -> Option<u64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}
/// The object name whose parts a folder named `folder` holds, if it is a
/// parts folder.
pub fn parted_object_name(folder: &str) -> Option<&str> {
    folder
        .strip_prefix(PARTS_PREFIX)
        .filter(|n| !n.is_empty() && !is_internal(n))
}
/// A temp object beside `p` (in its folder), for a write that goes
/// through a second key.
pub fn temp_beside(p: &StorePath) -> StorePath {
    match p.0.rsplit_once('/') {
        Some((dir, name)) => StorePath(format!("{dir}/{}", temp_name(name))),
        None => StorePath(temp_name(&p.0)),
    }
}
/// A fresh object for the writability probe of an object store (internal,
/// at the root; a leftover is a temp leftover).
pub fn probe_object() -> StorePath {
    StorePath(temp_name("probe"))
}

/// Whether a file or folder name is the store's own (a temp file, the
/// lock): listings never show these.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('.')
}

const TEMP_PREFIX: &str = ".tmp-";

/// A fresh temp file name for a write whose final name is `final_name`
/// (in the same folder, so the rename is atomic).
pub fn temp_name(final_name: &str) -> String {
    format!(
        "{TEMP_PREFIX}{}.{final_name}",
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether a file in the folder `dir` (components relative to the store
/// root) was left by an interrupted write, of this version or of the
/// previous one (see the module doc for which names and why).
pub fn is_temp_leftover(dir: &[&str], name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) || is_legacy_temp(dir, name)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `<final>.tmp-<32 lowercase hex>` of the previous writer, only where
/// `final` is never a client-chosen name.
fn is_legacy_temp(dir: &[&str], name: &str) -> bool {
    let in_repo = |repo: &[&str]| !repo.is_empty() && RepoName::parse(&repo.join("/")).is_ok();
    if dir.is_empty() {
        if let Some(hex) = name.strip_prefix(".probe-") {
            return is_lower_hex(hex, 32);
        }
    }
    if let ["_auth"] = dir {
        if let Some(pid) = name.strip_prefix("token-key.tmp-") {
            return !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        }
    }
    let Some((final_name, suffix)) = name.rsplit_once(".tmp-") else {
        return false;
    };
    if !is_lower_hex(suffix, 32) {
        return false;
    }
    let digest_named = is_lower_hex(final_name, 64);
    match dir {
        ["blobs", "sha256"] => digest_named,
        [REPOSITORIES, repo @ .., MANIFESTS_DIR | LAYERS_DIR, "sha256"] => {
            digest_named && in_repo(repo)
        }
        [REPOSITORIES, repo @ .., REFERRERS_DIR, "sha256", subject] => {
            digest_named && is_lower_hex(subject, 64) && in_repo(repo)
        }
        ["_uploads", id] => final_name == "state" && UploadId::parse(id).is_some(),
        _ => false,
    }
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
    fn internal_names_are_outside_every_client_grammar() {
        let t = temp_name("v1");
        assert!(is_internal(&t) && is_internal(".lock") && is_internal(SPOOL_DIR));
        assert!(t.starts_with(".tmp-") && t.ends_with(".v1"));
        assert!(RepoName::parse(&t).is_err() && Tag::parse(&t).is_err());
        assert!(Digest::from_hex(&t).is_none());
        for client_name in ["foo.tmp-bar", "rel.tmp-1", "_x"] {
            assert!(!is_internal(client_name));
        }
    }

    #[test]
    fn legacy_temps_are_recognised_only_where_no_client_name_fits() {
        let hex = Digest::of(b"").hex().to_string();
        let old = format!("{hex}.tmp-0123456789abcdef0123456789abcdef");
        let leftover = |dir: &str, name: &str| {
            let comps: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
            is_temp_leftover(&comps, name)
        };
        assert!(leftover("blobs/sha256", &old));
        assert!(leftover("repositories/a/b/_manifests/sha256", &old));
        assert!(leftover("repositories/a/_layers/sha256", &old));
        assert!(leftover(
            &format!("repositories/a/_referrers/sha256/{hex}"),
            &old
        ));
        assert!(leftover(
            "_uploads/5f0c6c2e-8a51-4a8e-9a57-2d1b3c4d5e6f",
            "state.tmp-0123456789abcdef0123456789abcdef"
        ));
        assert!(leftover("_auth", "token-key.tmp-1"));
        assert!(leftover("", ".probe-0123456789abcdef0123456789abcdef"));
        assert!(leftover("repositories/a/_tags", ".tmp-0123.v1"));
        // Valid client names, or names the old writer never made: kept.
        assert!(!leftover(
            "repositories/a/_tags",
            "v1.tmp-0123456789abcdef0123456789abcdef"
        ));
        assert!(!leftover(
            "repositories",
            "foo.tmp-0123456789abcdef0123456789abcdef"
        ));
        assert!(!leftover("blobs/sha256", &format!("{hex}.tmp-0123")));
        assert!(!leftover("blobs/sha256", &old.to_uppercase()));
        assert!(!leftover(
            "blobs/sha256",
            "abc.tmp-0123456789abcdef0123456789abcdef"
        ));
        assert!(!leftover("repositories/_manifests/sha256", &old));
        assert!(!leftover("", ".lock"));
        assert!(!leftover("_auth", "token-key.pem"));
    }

    #[test]
    fn parts_sit_in_an_internal_folder_beside_their_object() {
        let id = UploadId::parse("5f0c6c2e-8a51-4a8e-9a57-2d1b3c4d5e6f").unwrap();
        let data = upload_data(&id);
        assert_eq!(
            parts_dir(&data).as_str(),
            "_uploads/5f0c6c2e-8a51-4a8e-9a57-2d1b3c4d5e6f/.parts.data"
        );
        assert_eq!(
            part(&data, 42).as_str(),
            "_uploads/5f0c6c2e-8a51-4a8e-9a57-2d1b3c4d5e6f/.parts.data/00000000000000000042"
        );
        assert!(is_internal(".parts.data"));
        assert_eq!(parted_object_name(".parts.data"), Some("data"));
        assert_eq!(parted_object_name(".parts."), None);
        assert_eq!(parted_object_name(".tmp-1.x"), None);
        assert_eq!(part_start("00000000000000000042"), Some(42));
        assert_eq!(part_start(&format!("{:020}", u64::MAX)), Some(u64::MAX));
        assert_eq!(part_start("42"), None);
        let temp = part_temp(&data);
        let name = temp.as_str().rsplit('/').next().unwrap();
        assert!(part_start(name).is_none() && is_temp_leftover(&[], name));
        let probe = probe_object();
        assert!(is_temp_leftover(&[], probe.as_str()));
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::new_random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        assert!(UploadId::parse("../x").is_none());
        assert!(UploadId::parse("A1B2C3D4-0000-0000-0000-000000000000").is_none());
    }
}
