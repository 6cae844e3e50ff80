//! The eBPF domain on top of the registry: the REST model of an artifact,
//! decoding create requests, packing payloads into a tar+zstd layer, ELF
//! inspection, the OCI objects a REST write becomes, the in-memory index
//! keyed by (repository, digest), listing, and the service behind the
//! REST facade. Every REST write becomes OCI objects; every REST read is
//! answered from them.

pub mod build;
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
    /// A bug or an unexpected state; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ArtifactError {
    pub fn code(&self) -> &'static str {
        match self {
            ArtifactError::InvalidRequest(_) => "invalid_request",
            ArtifactError::InvalidJson(_) => "invalid_json",
            ArtifactError::UnsupportedMediaType => "unsupported_media_type",
            ArtifactError::InvalidBase64(_) => "invalid_base64",
            ArtifactError::InvalidName(_) => "invalid_name",
            ArtifactError::InvalidEbpf(_) => "invalid_ebpf",
            ArtifactError::InvalidArtifact(_) => "invalid_artifact",
            ArtifactError::InvalidId(_) => "invalid_id",
            ArtifactError::InvalidHostId(_) => "invalid_host_id",
            ArtifactError::NotFound(_) => "not_found",
            ArtifactError::AmbiguousId { .. } => "ambiguous_id",
            ArtifactError::VersionExists { .. } => "version_exists",
            ArtifactError::TooLarge { .. } | ArtifactError::ArchiveTooLarge { .. } => {
                "payload_too_large"
            }
            ArtifactError::OverLimit { limit, .. } => limit.code(),
            ArtifactError::SigningUnavailable(_) => "signing_unavailable",
            ArtifactError::ServerBusy { .. } => "server_busy",
            ArtifactError::Registry(e) if is_storage_full(e) => "storage_full",
            ArtifactError::Registry(RegistryError::RangeNotSatisfiable { .. }) => {
                "range_not_satisfiable"
            }
            ArtifactError::Registry(RegistryError::Body(_)) => "invalid_request",
            ArtifactError::Registry(_) | ArtifactError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ArtifactError::InvalidRequest(_)
            | ArtifactError::InvalidJson(_)
            | ArtifactError::InvalidBase64(_)
            | ArtifactError::InvalidName(_)
            | ArtifactError::InvalidEbpf(_)
            | ArtifactError::InvalidArtifact(_)
            | ArtifactError::InvalidId(_)
            | ArtifactError::InvalidHostId(_) => 400,
            ArtifactError::UnsupportedMediaType => 415,
            ArtifactError::NotFound(_) => 404,
            ArtifactError::VersionExists { .. } | ArtifactError::AmbiguousId { .. } => 409,
            ArtifactError::TooLarge { .. } | ArtifactError::ArchiveTooLarge { .. } => 413,
            ArtifactError::OverLimit { limit, .. } => limit.status(),
            ArtifactError::SigningUnavailable(_) | ArtifactError::ServerBusy { .. } => 503,
            ArtifactError::Registry(e) if is_storage_full(e) => 507,
            ArtifactError::Registry(RegistryError::RangeNotSatisfiable { .. }) => 416,
            ArtifactError::Registry(RegistryError::Body(_)) => 400,
            ArtifactError::Registry(_) | ArtifactError::Internal(_) => 500,
        }
    }
}

fn is_storage_full(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Storage(s) if s.is_storage_full())
}
