//! HTTP-free registry services: blobs, upload sessions, manifests, tags,
//! referrers and the catalog, on top of a storage `Backend`. Nothing here
//! knows about axum; request bodies arrive as byte streams and answers
//! leave as plain values.

mod blobs;
pub mod gc;
pub mod import;
mod io;
mod manifest_cache;
mod manifests;
pub mod migrate;
mod resolve_cache;
pub mod scrub;
mod upload_table;
mod uploads;

use std::sync::Arc;

pub use blobs::{BlobRead, ByteRange};
pub use io::reader_stream;
pub use manifests::{ManifestDeriver, ManifestRead, ManifestStored, Page};
pub use upload_table::{Principal, UploadCap};
pub use uploads::UploadStatus;

use crate::metadata::{Metadata, MetadataError};
use crate::oci::{Digest, ManifestError, RepoName};
use crate::storage::{Backend, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The metadata store failed (unreachable, or a row that does not
    /// parse): a 500, never a client mistake.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error("repository {0} is not known to the registry")]
    NameUnknown(RepoName),
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error("manifest references blob {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("index references manifest {0}, which is not in this repository")]
    ManifestChildUnknown(Digest),
    #[error("manifest is {size} bytes, over the {max}-byte cap")]
    ManifestTooLarge { size: u64, max: u64 },
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("upload session not found")]
    UploadUnknown,
    #[error("chunk starts at {got} but the upload is at offset {offset}")]
    RangeInvalid { offset: u64, got: u64 },
    #[error("requested range is not satisfiable for a blob of {total} bytes")]
    RangeNotSatisfiable { total: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("body is over the {max}-byte cap")]
    BodyTooLarge { max: u64 },
    #[error("request body could not be read: {0}")]
    Body(String),
    #[error("{}", .cap.describe(*.limit))]
    TooManyUploads { cap: UploadCap, limit: usize },
    /// An internal fault (a worker thread that died, a value that did not
    /// serialize): a 500, never a client mistake.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("manifest {digest} has media type {media_type}, which the request's Accept header does not allow")]
    NotAcceptable { digest: Digest, media_type: String },
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// Sizes the services enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    /// Upload sessions open at once, registry-wide.
    pub max_upload_sessions: usize,
    /// Upload sessions open at once per [`Principal`].
    pub max_upload_sessions_per_principal: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_upload_sessions: 1024,
            max_upload_sessions_per_principal: 64,
        }
    }
}

/// The registry: one per process, shared by every request.
pub struct Registry {
    backend: Arc<dyn Backend>,
    meta: Metadata,
    limits: Limits,
    uploads: uploads::Sessions,
    derivers: std::sync::RwLock<Vec<Arc<dyn ManifestDeriver>>>,
    /// Orders writes against garbage collection (see `gc`).
    gc: gc::Coordinator,
    manifest_cache: manifest_cache::ManifestCache,
    /// Resolutions by reference; only on the embedded store (see the
    /// module).
    resolve_cache: Option<resolve_cache::ResolveCache>,
}

impl Registry {
    pub fn new(backend: Arc<dyn Backend>, meta: Metadata, limits: Limits) -> Self {
        Registry {
            backend,
            limits,
            uploads: uploads::Sessions::default(),
            derivers: std::sync::RwLock::new(Vec::new()),
            gc: gc::Coordinator::default(),
            manifest_cache: manifest_cache::ManifestCache::default(),
            resolve_cache: (meta.engine() == crate::metadata::Engine::Sqlite)
                .then(resolve_cache::ResolveCache::new),
            meta,
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The metadata store (repositories, tags, links, sessions, derived
    /// rows).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registers a deriver of domain rows, asked about every manifest
    /// stored (REST and OCI alike).
    pub fn add_deriver(&self, d: Arc<dyn ManifestDeriver>) {
        if let Ok(mut v) = self.derivers.write() {
            v.push(d);
        }
    }

    fn derivers(&self) -> Vec<Arc<dyn ManifestDeriver>> {
        self.derivers.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Upload sessions open now (for the metrics; sessions a previous run
    /// left on disk count from the first upload request on).
    pub fn upload_sessions(&self) -> usize {
        self.uploads.open_count()
    }

    /// Whether the store accepts writes (for `/healthz`).
    pub async fn probe_writable(&self) -> RegistryResult<()> {
        let b = self.backend.clone();
        io::blocking(move || b.probe_writable().map_err(Into::into)).await?;
        Ok(self.meta.ping().await?)
    }
}
