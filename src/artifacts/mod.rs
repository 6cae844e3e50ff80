//! The eBPF domain on top of the registry: the REST model of an artifact,
//! decoding create requests, packing payloads into a tar+zstd layer, ELF
//! inspection, the OCI objects a REST write becomes, the views over the
//! metadata store's rows keyed by (repository, digest), listing, and the service behind the
//! REST facade. Every REST write becomes OCI objects; every REST read is
//! answered from them.

pub mod build;
mod copies;
pub mod decode;
pub mod elf;
pub mod index;
pub mod limits;
pub mod list;
pub mod memory;
pub mod model;
pub mod pack;
pub mod payload;
pub mod service;

pub use decode::{CreateArtifact, NewArtifact};
pub use index::ArtifactIndex;
pub use limits::Limit;
pub use list::ListQuery;
pub use model::{ArtifactJson, ArtifactKey, HostId};
pub use service::{ArtifactService, Created};

use crate::oci::{Digest, RepoName};
use crate::registry::RegistryError;

/// Errors of the REST facade; `code()` and `status()` are its one table.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("data is not valid base64: {0}")]
    InvalidBase64(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidEbpf(String),
    /// A pre-packed archive breaks the archive rules (see `payload`).
    #[error("{0}")]
    InvalidArtifact(String),
    #[error("invalid artifact id {0:?}: expected sha256:<64 hex>")]
    InvalidId(String),
    #[error("{0}")]
    InvalidHostId(String),
    /// `requirements` of a create: an unknown key, a bad kernel bound,
    /// min above max, or `btf: optional` on an object with CO-RE
    /// relocations.
    #[error("invalid requirements: {0}")]
    InvalidRequirements(String),
    #[error("artifact {0} not found")]
    NotFound(String),
    /// A write by id when the caller may read several copies.
    #[error("artifact {id} is in {} repositories you may read; name one with ?repository=", repositories.len())]
    AmbiguousId {
        id: Digest,
        repositories: Vec<RepoName>,
    },
    #[error("{name} version {version} for {architecture} already exists with different content; versions are immutable")]
    VersionExists {
        name: String,
        version: String,
        architecture: String,
    },
    #[error(
        "payload is over the {max}-byte limit; push large artifacts with oras (chunked uploads)"
    )]
    TooLarge { max: u64 },
    /// A list, field or derived object of a request over its cap (see
    /// `limits`): nothing was stored.
    #[error("{}", .limit.describe(*.max, *.actual))]
    OverLimit {
        limit: Limit,
        max: u64,
        actual: Option<u64>,
    },
    #[error("the archive unpacks to more than {max} bytes, the artifact size limit")]
    ArchiveTooLarge { max: u64 },
    /// The create memory budget stayed full for the wait bound (see
    /// `memory`): nothing was read or stored; retry later.
    #[error("the registry is busy with other large creates; retry in {retry_after_secs} s")]
    ServerBusy { retry_after_secs: u64 },
    /// A signer is configured and could not sign: nothing was stored.
    #[error("the artifact could not be signed: {0}")]
    SigningUnavailable(String),
    /// A fleet request refused (hosts, selectors, channels, watching):
    /// `kind` picks the code.
    #[error("{message}")]
    Fleet { kind: FleetRefusal, message: String },
    /// A bug or an unexpected state; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Why a fleet request is refused (each its own REST code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetRefusal {
    InvalidSelector,
    InvalidLabels,
    InvalidHost,
    InvalidWait,
    HostNotFound,
    SelectorNotFound,
    ChannelNotFound,
    VersionNotFound,
    NoPreviousVersion,
    ChannelIsVersion,
    TooManyWatchers,
}

impl ArtifactError {
    /// A fleet refusal with its message.
    pub fn fleet(kind: FleetRefusal, message: impl Into<String>) -> Self {
        ArtifactError::Fleet {
            kind,
            message: message.into(),
        }
    }
}
