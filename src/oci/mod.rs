//! Pure OCI types: digests, repository names, references, media types and
//! manifest parsing. Nothing here does I/O; everything here is validated on
//! construction so the rest of the code can trust it.

pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{NameError, Reference, RepoName, Tag};
