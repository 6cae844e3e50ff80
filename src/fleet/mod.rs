//! The fleet: registered hosts, selectors, requirements, what each host
//! should run, watching it, rollout reports and channels. The pure parts
//! (selectors, version order, requirements, resolution) need neither HTTP
//! nor a database; `view` reads assignments through validated caches,
//! `watch` holds long-polls, `service` is what the REST layer calls.

pub mod hosts;
pub mod listed;
pub mod reports;
pub mod requirements;
pub mod resolve;
pub mod selector;
pub mod service;
pub mod version;
pub mod view;
pub mod watch;
pub mod wire;

pub use requirements::{BtfRequirement, Requirements};
pub use resolve::{
    normalize_arch, resolve, Assignment, Candidate, Desired, DesiredArtifact, Excluded, HostFacts,
    NameCandidates,
};
pub use selector::{validate_labels, Selector, SelectorError};
pub use service::FleetService;
pub use version::{compare_versions, sort_newest_first, KernelVersion};
