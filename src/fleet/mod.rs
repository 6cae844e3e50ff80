//! Fleet logic without HTTP or a database: host label selectors, version
//! ordering, artifact kernel/BTF requirements, and the resolution of a
//! host's desired artifact set from its assignments.

pub mod requirements;
pub mod resolve;
pub mod selector;
pub mod version;

pub use requirements::{BtfRequirement, Requirements};
pub use resolve::{
    normalize_arch, resolve, Assignment, Candidate, Desired, DesiredArtifact, Excluded, HostFacts,
    NameCandidates,
};
pub use selector::{validate_labels, Selector, SelectorError};
pub use version::{compare_versions, sort_newest_first, KernelVersion};
