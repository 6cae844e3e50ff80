//! The OCI wire error: every error code with its HTTP status in one table
//! (`status()` and `as_str()`, single `match`es), the spec's
//! `{"errors":[...]}` envelope serialized with serde, and the conversion of
//! every domain error a `/v2` (or `/token`) request can meet.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{log_internal, public_message, ErrorHeaders};
use crate::http::auth::AuthRefusal;
use crate::http::limits::LimitRefusal;
use crate::http::BodyReadError;
use crate::oci::{DigestError, ManifestError, NameError};
use crate::registry::RegistryError;
use crate::signing::SigningError;
use crate::storage::StorageError;

/// Every error an OCI route can answer with. A few variants share a spec
/// code but need their own status (range errors are 416, oversized bodies
/// 413, slow bodies 408, a full disk 507).
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
    /// `UNSUPPORTED` answered with 405: the method is not supported there.
    Unsupported,
    /// `UNSUPPORTED` answered with 400: a parameter given twice, not
    /// decodable, or not one the endpoint accepts.
    ParameterInvalid,
    /// `UNSUPPORTED` answered with 415: a body of the wrong media type.
    MediaTypeUnsupported,
    TooManyRequests,
    /// `PAGINATION_NUMBER_INVALID` (a distribution extension): bad `n`.
    PaginationNumberInvalid,
    /// `BLOB_UPLOAD_INVALID` answered with 416: a chunk or range out of order.
    RangeInvalid,
    /// `MANIFEST_INVALID` answered with 413: the manifest is over the cap.
    ManifestTooLarge,
    /// `SIZE_INVALID` answered with 413: a body over its cap.
    BodyTooLarge,
    /// `BLOB_UPLOAD_INVALID` answered with 408: an upload body too slow
    /// (the client restarts from the acknowledged offset).
    UploadTooSlow,
    /// `SIZE_INVALID` answered with 408: another body too slow (fewer
    /// bytes came than declared).
    BodyTooSlow,
    /// `UNKNOWN` answered with 507: the store is out of space.
    StorageFull,
    /// `UNAVAILABLE` answered with 503: a service the request needs (the
    /// signer) failed.
    Unavailable,
    /// `UNKNOWN` answered with 500: a bug or a store fault.
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
            | ParameterInvalid
            | PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            MediaTypeUnsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ManifestTooLarge | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UploadTooSlow | BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        use OciErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid | RangeInvalid | UploadTooSlow => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid | ManifestTooLarge => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid | BodyTooLarge | BodyTooSlow => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported | ParameterInvalid | MediaTypeUnsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Unavailable => "UNAVAILABLE",
            StorageFull | Unknown => "UNKNOWN",
        }
    }

    /// An internal failure, not the client's mistake: logged with the
    /// request id, answered with a fixed message.
    pub fn is_internal(self) -> bool {
        use OciErrorCode::*;
        matches!(self, StorageFull | Unavailable | Unknown)
    }

    /// What the client is told of an internal failure.
    fn public_text(self) -> &'static str {
        match self {
            OciErrorCode::StorageFull => "the registry's storage is full",
            OciErrorCode::Unavailable => "a service the registry needs is unavailable; retry later",
            _ => "internal error",
        }
    }
}

/// An OCI error as sent on the wire.
#[derive(Debug, Clone)]
pub struct OciError {
    pub code: OciErrorCode,
    /// What the client reads: for an internal failure a fixed text and
    /// the request id.
    pub message: String,
    pub detail: Option<serde_json::Value>,
    headers: ErrorHeaders,
    /// An internal failure's cause, for the log only.
    cause: Option<String>,
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
    /// An error with its message. For an internal code the message is
    /// the cause, logged and not returned.
    pub fn new(code: OciErrorCode, message: impl Into<String>) -> Self {
        if code.is_internal() {
            return Self::failure(code, code.public_text(), message.into());
        }
        OciError {
            code,
            message: message.into(),
            detail: None,
            headers: ErrorHeaders::None,
            cause: None,
        }
    }

    /// An internal failure: `public` is what the client reads (with the
    /// request id), `cause` goes to the log.
    pub fn failure(code: OciErrorCode, public: &str, cause: impl Into<String>) -> Self {
        OciError {
            code,
            message: public_message(public),
            detail: None,
            headers: ErrorHeaders::None,
            cause: Some(cause.into()),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    fn with_headers(mut self, headers: ErrorHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The headers this error adds to its answer.
    pub fn headers(&self) -> &ErrorHeaders {
        &self.headers
    }

    /// An error of an upload session at `location`: a chunk out of order
    /// also says where the upload stands (`Location`, `Range`).
    pub fn of_upload(e: RegistryError, location: String) -> Self {
        let at = match &e {
            RegistryError::RangeInvalid { offset, .. } => Some(*offset),
            _ => None,
        };
        let err = OciError::from(e);
        match at {
            Some(offset) => err.with_headers(ErrorHeaders::UploadAt { location, offset }),
            None => err,
        }
    }

    /// A capped body that could not be read; `too_large` is the code for
    /// one over its `max` bytes.
    pub fn of_body(e: BodyReadError, too_large: OciErrorCode, max: u64) -> Self {
        match e {
            BodyReadError::TooLarge => {
                OciError::new(too_large, format!("body is over the {max}-byte cap"))
            }
            BodyReadError::Broken(m) => OciError::new(
                OciErrorCode::SizeInvalid,
                format!("body could not be read: {m}"),
            ),
        }
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

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if self.code.is_internal() {
            log_internal(self.code.as_str(), status.as_u16(), self.cause.as_deref());
        }
        let mut r = (status, self.body()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            crate::http::v2::API_VERSION_HEADER,
            HeaderValue::from_static("registry/2.0"),
        );
        self.headers
            .write(h, self.code == OciErrorCode::TooManyRequests);
        r
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
        let code = if e.is_storage_full() {
            OciErrorCode::StorageFull
        } else {
            OciErrorCode::Unknown
        };
        OciError::new(code, e.to_string())
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> Self {
        use OciErrorCode as C;
        use RegistryError as R;
        let e = match e {
            R::Storage(s) => return s.into(),
            other => other,
        };
        let code = match &e {
            R::Storage(_) | R::Internal(_) => C::Unknown,
            R::Body(_) => C::BlobUploadInvalid,
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
        };
        let headers = match &e {
            R::RangeNotSatisfiable { total } => ErrorHeaders::UnsatisfiedRange { total: *total },
            _ => ErrorHeaders::None,
        };
        OciError::new(code, e.to_string()).with_headers(headers)
    }
}

impl From<SigningError> for OciError {
    fn from(e: SigningError) -> Self {
        match e {
            SigningError::Registry(r) => r.into(),
            SigningError::NotFound(m) => OciError::new(OciErrorCode::ManifestUnknown, m),
            SigningError::Disabled | SigningError::Unavailable(_) => OciError::failure(
                OciErrorCode::Unavailable,
                "eBPF artifact manifests are signed when stored and the signer is unavailable; nothing was stored, retry later",
                e.to_string(),
            ),
        }
    }
}

impl From<AuthRefusal> for OciError {
    fn from(r: AuthRefusal) -> Self {
        let scope = |s: Option<String>| s.map(|s| serde_json::json!({ "scope": s }));
        match r {
            AuthRefusal::Unauthenticated {
                message,
                scope: s,
                challenges,
            } => OciError {
                detail: scope(s),
                ..OciError::new(OciErrorCode::Unauthorized, message)
            }
            .with_headers(ErrorHeaders::Challenge(challenges)),
            AuthRefusal::Denied { scope: s } => OciError {
                detail: scope(s),
                ..OciError::new(OciErrorCode::Denied, AuthRefusal::DENIED_MESSAGE)
            },
            AuthRefusal::Throttled { retry_after } => OciError::new(
                OciErrorCode::TooManyRequests,
                AuthRefusal::throttled_message(retry_after),
            )
            .with_headers(ErrorHeaders::RetryAfter(retry_after)),
        }
    }
}

impl From<LimitRefusal> for OciError {
    fn from(r: LimitRefusal) -> Self {
        match r {
            LimitRefusal::Busy => {
                OciError::new(OciErrorCode::TooManyRequests, LimitRefusal::BUSY_MESSAGE)
            }
            LimitRefusal::BodyCut {
                cut,
                upload,
                close_connection,
            } => {
                let code = if upload {
                    OciErrorCode::UploadTooSlow
                } else {
                    OciErrorCode::BodyTooSlow
                };
                let e = OciError::new(code, cut.to_string()).with_detail(cut.detail());
                if close_connection {
                    e.with_headers(ErrorHeaders::CloseConnection)
                } else {
                    e
                }
            }
        }
    }
}
