//! The one wire error of the OCI API: every error code with its HTTP status,
//! in one table, serialized as the spec's `{"errors":[...]}` envelope.
//! Domain errors (`StorageError`, `RegistryError`) convert into it here.

use axum::http::StatusCode;
use serde::Serialize;

use crate::oci::{DigestError, ManifestError, NameError};
use crate::registry::RegistryError;
use crate::storage::StorageError;

/// Every error a `/v2` route can answer with. `status()` and `code()` are
/// the single table; a few variants share a spec code but need their own
/// status (range errors are 416, oversized bodies 413, full disk 507).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    /// `UNSUPPORTED` answered with 400: a query parameter given twice or
    /// not decodable.
    QueryInvalid,
    TooManyRequests,
    /// `PAGINATION_NUMBER_INVALID` (a distribution extension): bad `n`.
    PaginationNumberInvalid,
    /// `BLOB_UPLOAD_INVALID` answered with 416: a chunk or range out of order.
    RangeInvalid,
    /// `MANIFEST_INVALID` answered with 413: the manifest is over the cap.
    ManifestTooLarge,
    /// `SIZE_INVALID` answered with 413: a body over its cap.
    BodyTooLarge,
    /// `UNKNOWN` answered with 507: the store is out of space.
    StorageFull,
    /// `UNAVAILABLE` answered with 503.
    Unavailable,
    /// `UNKNOWN` answered with 500; the detail is logged, not returned.
    Unknown,
}

impl OciErrorCode {
    pub fn status(self) -> StatusCode {
        use OciErrorCode::*;
        match self {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => {
                StatusCode::NOT_FOUND
            }
            BlobUploadInvalid
            | DigestInvalid
            | ManifestBlobUnknown
            | ManifestInvalid
            | NameInvalid
            | SizeInvalid
            | QueryInvalid
            | PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ManifestTooLarge | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        use OciErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid | RangeInvalid => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid | ManifestTooLarge => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid | BodyTooLarge => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported | QueryInvalid => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Unavailable => "UNAVAILABLE",
            StorageFull | Unknown => "UNKNOWN",
        }
    }
}

/// An OCI error as sent on the wire.
#[derive(Debug, Clone)]
pub struct OciError {
    pub code: OciErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    errors: [EnvelopeEntry<'a>; 1],
}

#[derive(Serialize)]
struct EnvelopeEntry<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl OciError {
    pub fn new(code: OciErrorCode, message: impl Into<String>) -> Self {
        OciError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The spec's JSON envelope.
    pub fn body(&self) -> Vec<u8> {
        let env = Envelope {
            errors: [EnvelopeEntry {
                code: self.code.as_str(),
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        };
        serde_json::to_vec(&env)
            .unwrap_or_else(|_| br#"{"errors":[{"code":"UNKNOWN","message":"error"}]}"#.to_vec())
    }
}

impl From<NameError> for OciError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::InvalidName(_) => OciError::new(OciErrorCode::NameInvalid, e.to_string()),
            NameError::InvalidTag(_) => OciError::new(OciErrorCode::ManifestInvalid, e.to_string()),
            NameError::Digest(d) => d.into(),
        }
    }
}

impl From<DigestError> for OciError {
    fn from(e: DigestError) -> Self {
        OciError::new(OciErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<ManifestError> for OciError {
    fn from(e: ManifestError) -> Self {
        OciError::new(OciErrorCode::ManifestInvalid, e.to_string())
    }
}

impl From<StorageError> for OciError {
    fn from(e: StorageError) -> Self {
        if e.is_storage_full() {
            tracing::error!(error = %e, "storage full");
            return OciError::new(OciErrorCode::StorageFull, "the registry's storage is full");
        }
        tracing::error!(error = %e, "storage error");
        OciError::new(OciErrorCode::Unknown, "internal storage error")
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> Self {
        use OciErrorCode as C;
        use RegistryError as R;
        let e = match e {
            R::Storage(s) => return s.into(),
            R::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                return OciError::new(C::Unknown, "internal error");
            }
            other => other,
        };
        let code = match &e {
            R::Storage(_) | R::Body(_) => C::BlobUploadInvalid,
            R::Manifest(_) => C::ManifestInvalid,
            R::BlobUnknown(_) => C::BlobUnknown,
            R::NameUnknown(_) => C::NameUnknown,
            R::ManifestUnknown(_) | R::NotAcceptable { .. } => C::ManifestUnknown,
            R::ManifestBlobUnknown(_) | R::ManifestChildUnknown(_) => C::ManifestBlobUnknown,
            R::ManifestTooLarge { .. } => C::ManifestTooLarge,
            R::DigestMismatch { .. } | R::DigestInvalid(_) => C::DigestInvalid,
            R::UploadUnknown => C::BlobUploadUnknown,
            R::RangeInvalid { .. } | R::RangeNotSatisfiable { .. } => C::RangeInvalid,
            R::SizeInvalid(_) => C::SizeInvalid,
            R::BodyTooLarge { .. } => C::BodyTooLarge,
            R::TooManyUploads { .. } => C::TooManyRequests,
            R::Internal(_) => C::Unknown,
        };
        OciError::new(code, e.to_string())
    }
}
